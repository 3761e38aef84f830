"""Outputs are written atomically: a write that fails or is killed (kill -9, in a loop) leaves
the previous complete file or the new complete one, never a cut-off file; the files get the
usual permissions; the next run on the folder removes what a killed write left, and nothing
that no run of the engine wrote."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

import engine
from engine.outputs import FILE_MODE, LOCK_NAME, FolderInUse, folder_lock, label_issues_table, write_atomically, \
    write_label_issues
from engine.train import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = 200_000  # a label_issues.csv of CIFAR size takes a while to write: kills land mid-write


def version(number):
    return b"".join(b"%d,%d\n" % (number, row) for row in range(ROWS)) + b"end\n"


def test_label_issues_csv_keeps_every_score_and_so_the_ranking(tmp_path):
    """The most likely mislabeled samples score far below 1e-6 (6 decimals wrote them all as 0)."""
    quality = np.array([5e-23, 3e-12, 4e-10, 0.123456789, 1 - 2e-7, 1.0], dtype=np.float32)
    probs = np.full((6, 2), 0.5, dtype=np.float32)
    table = label_issues_table(np.zeros(6, dtype=np.int64), probs, quality, quality < 0.5)
    write_label_issues(table, tmp_path / "label_issues.csv")
    written = pd.read_csv(tmp_path / "label_issues.csv")
    assert np.array_equal(written["label_quality"].to_numpy().astype(np.float32), quality)


def test_a_failing_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "metrics.csv"
    write_atomically(str(path), lambda f: f.write(b"old\n"))

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(str(path), fail)
    assert path.read_bytes() == b"old\n" and os.listdir(tmp_path) == ["metrics.csv"]
    assert path.stat().st_mode & 0o777 == FILE_MODE  # like open(), not mkstemp's 0600


WRITER = """
import sys
from engine.outputs import write_atomically
from tests.test_outputs import version
number = 0
while True:
    number += 1
    write_atomically(sys.argv[1], lambda f: f.write(version(number)))
    print(number, flush=True)
"""


def test_kill_9_during_writes_leaves_a_complete_file(tmp_path):
    path = tmp_path / "label_issues.csv"
    for kill in range(8):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE)
        writer.stdout.readline()  # one complete write done
        time.sleep(0.01 + 0.03 * kill)  # then somewhere in a later write
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        content = path.read_bytes()
        number = int(content.split(b",", 1)[0])
        assert content == version(number), f"kill {kill}: a cut-off file"
    assert any(name.endswith(".engine.tmp") for name in os.listdir(tmp_path)), "no kill landed mid-write"
    with folder_lock(str(tmp_path)):  # a new run on the folder
        assert sorted(os.listdir(tmp_path)) == [".noisy-engine.lock", "label_issues.csv"]


def test_an_out_through_a_link_and_dot_dot_writes_where_the_system_resolves_it(tmp_path):
    """--out d/link/../x is x beside the link's target; abspath would make it d/x, where the
    lock is not and the temporary files could not be renamed from."""
    (tmp_path / "d").mkdir()
    (tmp_path / "elsewhere" / "target").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere" / "target", tmp_path / "d" / "link")
    out = tmp_path / "d" / "link" / ".." / "x"
    assert main(["--dataset", "digits", "--method", "ce", "--epochs", "1", "--out", str(out)]) == 0
    assert (tmp_path / "elsewhere" / "x" / "summary.json").exists() and not (tmp_path / "d" / "x").exists()


def test_the_lock_follows_no_link_and_leaves_another_tools_lock_alone(tmp_path):
    """A .lock linked to a user's file had it truncated to the run's pid."""
    victim = tmp_path / "notes.txt"
    victim.write_text("mine")
    (tmp_path / ".lock").write_text("another tool's")
    (tmp_path / "draft.engine.tmp").write_text("not hidden: no leftover of a write")
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(victim, out / LOCK_NAME)
    with pytest.raises(FolderInUse, match=rf"cannot open its lock file {LOCK_NAME} \(.*a link there is refused\)"):
        with folder_lock(str(out)):
            pass
    with folder_lock(str(tmp_path)):
        pass
    assert victim.read_text() == "mine" and (tmp_path / ".lock").read_text() == "another tool's"
    assert (tmp_path / "draft.engine.tmp").exists()


def test_a_new_run_deletes_only_outputs_a_run_of_the_engine_wrote(tmp_path):
    """Another project's config.yaml and metrics.csv in --out were deleted by a new run."""
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    labels = np.arange(40) % 2
    (tmp_path / "config.yaml").write_text("# my project\nname: survey\n")
    (tmp_path / "metrics.csv").write_text("week,score\n1,3\n")
    with pytest.raises(FolderInUse, match=r"holds config.yaml, metrics.csv, which no run of this engine wrote: "
                                          r"choose another folder, or .*\(--overwrite, overwrite=True\)"):
        engine.fit(x, labels, method="ce", epochs=1, out=tmp_path)
    assert (tmp_path / "config.yaml").read_text() == "# my project\nname: survey\n"
    engine.fit(x, labels, method="ce", epochs=1, out=tmp_path, overwrite=True)
    engine.fit(x, labels, method="ce", epochs=1, out=tmp_path, seed=1)  # the engine's own: replaced
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == 1
