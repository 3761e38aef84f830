"""Shared helpers of the tests that train in other processes as a user would (the command line,
torchrun): reading a run's metrics, waiting for a checkpoint before a kill, and building what
several tests share once per session under pytest-xdist."""
import csv
import os
import shutil
import time

from filelock import FileLock

from engine.checkpoint import read_checkpoint


def read_metrics(out):
    """metrics.csv of the run in `out`, without the times (which differ between runs)."""
    with open(os.path.join(out, "metrics.csv")) as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def wait_for_checkpoint(process, checkpoint, epoch, timeout=300):
    """Returns once `checkpoint` holds epoch `epoch` or later, or `process` has ended."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        # The rename is atomic: a checkpoint that exists is complete.
        if os.path.exists(checkpoint) and read_checkpoint(checkpoint)["epoch"] >= epoch:
            return
        time.sleep(0.05)


def assert_resume_repeats(killed, whole, resume, earliest, latest):
    """The run in `killed`, interrupted after an epoch in [earliest, latest) (0-based) before
    its end, continues with `resume()` (returning the finished CompletedProcess) to the
    metrics of the uninterrupted run in `whole`."""
    checkpoint = os.path.join(killed, "checkpoint.pt")
    interrupted_at = read_checkpoint(checkpoint)["epoch"]
    assert earliest <= interrupted_at < latest, "the kill must land mid-run"
    assert not os.path.exists(os.path.join(killed, "summary.json"))
    result = resume()
    assert f"resumed from {checkpoint} after epoch {interrupted_at + 1}" in result.stdout
    assert read_metrics(killed) == read_metrics(whole)


def session_folder(tmp_path_factory, name):
    """A folder of this test session that every pytest-xdist worker (the README's `-n 2`) sees."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the workers' base folders are its children
    (base / name).mkdir(exist_ok=True)
    return base / name


def built_once(tmp_path_factory, name, build):
    """session_folder(name) filled by build(folder) once: the first worker to get here builds it
    while the others wait on a lock, instead of each building its own copy at the same time."""
    folder = session_folder(tmp_path_factory, name)
    done = folder.with_suffix(".done")
    with FileLock(folder.with_suffix(".lock")):
        if not done.exists():
            shutil.rmtree(folder)  # and what a failed build left in it
            folder.mkdir()
            build(folder)
            done.touch()
    return folder
