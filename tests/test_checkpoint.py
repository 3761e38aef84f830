"""Checkpoints: a saved state reads back exactly; an empty, truncated, random, bit-flipped,
foreign or incomplete file, or a folder in its place, is refused with a CheckpointError that
names the file and says to delete it, never a traceback from inside torch."""
import hashlib
import io
import os
import re

import numpy as np
import pytest
import torch

from engine.checkpoint import FORMAT, CheckpointError, RunNote, read_checkpoint, save_checkpoint
from engine.train import main

STATE = {"epoch": 3, "step": 120, "identity": {"seed": 0}, "model": {"w": torch.arange(1000.0)},
         "optimizer": {"state": {}}, "method": {}, "metrics": [{"epoch": 1, "test_acc": 0.5}]}


def saved(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(str(path), STATE)
    return path


def test_a_saved_state_reads_back(tmp_path):
    state = read_checkpoint(str(saved(tmp_path)))
    assert state["epoch"] == 3 and state["metrics"] == STATE["metrics"]
    assert torch.equal(state["model"]["w"], STATE["model"]["w"])


def damaged_files(tmp_path):
    good = saved(tmp_path).read_bytes()
    rng = np.random.default_rng(0)
    yield "empty", b""
    yield "truncated", good[: len(good) // 2]
    for seed in range(30):
        yield f"random {seed}", np.random.default_rng(seed).integers(0, 256, int(rng.integers(1, 3000)),
                                                                       dtype=np.uint8).tobytes()
    for position in (len(good) // 3, len(good) // 2, 2 * len(good) // 3):
        flipped = bytearray(good)
        flipped[position] ^= 0x10
        yield f"bit flipped at {position}", bytes(flipped)


def test_damaged_files_are_refused_naming_the_file(tmp_path):
    for name, content in list(damaged_files(tmp_path)):
        path = tmp_path / "damaged.pt"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{path} .*; delete it to start over"):
            read_checkpoint(str(path))


@pytest.mark.parametrize("content", [[1, 2], {"epoch": 1}, STATE])
def test_torch_files_that_are_not_checkpoints_are_refused(tmp_path, content):
    path = tmp_path / "other.pt"
    torch.save(content, path)  # STATE itself: the raw state without the digest around it
    with pytest.raises(CheckpointError, match="is not a checkpoint of this engine"):
        read_checkpoint(str(path))


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def wrapper(payload):
    """A checkpoint built by hand in this engine's format around `payload` (bytes) and its digest."""
    return {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
            "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}


def hand_built(tmp_path):
    """Files in the wrapper format whose state is missing, of another kind, or no torch file:
    they ended in a KeyError, AttributeError or torch's UnpicklingError with a traceback."""
    buffer = io.BytesIO()
    torch.save({"x": Payload(tmp_path / "ran")}, buffer)
    yield "no state", {"format": FORMAT, "sha256": "0" * 64}, "lacks the state's bytes or their digest"
    yield "no digest", {"format": FORMAT, "payload": torch.zeros(3, dtype=torch.uint8)}, "lacks the state's"
    yield "a list for the state", {"format": FORMAT, "sha256": "0" * 64, "payload": [1, 2]}, "lacks the state's"
    yield "float bytes", {**wrapper(b"x"), "payload": torch.zeros(1)}, "lacks the state's"
    yield "not a torch file", wrapper(b"not a torch file"), "holds a state that cannot be read"
    yield "code", wrapper(buffer.getvalue()), "holds a state that cannot be read"


def test_a_hand_built_checkpoint_is_refused_not_a_traceback(tmp_path):
    for name, content, problem in list(hand_built(tmp_path)):
        path = tmp_path / "built.pt"
        torch.save(content, path)
        with pytest.raises(CheckpointError, match=f"{path} .*{problem}.*; delete it to start over"):
            read_checkpoint(str(path))
    assert not (tmp_path / "ran").exists(), "no code ran"


def test_a_folder_in_place_of_the_file_is_refused(tmp_path):
    os.mkdir(tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(str(tmp_path / "checkpoint.pt"))


@pytest.mark.parametrize("change", ["a weight's shape", "the step", "the optimizer"])
def test_a_state_changed_by_hand_to_misfit_the_run_is_refused_on_resume(tmp_path, change):
    """Its identity and digest fit (recomputed): the state's own misfit ended in a traceback."""
    import engine

    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    labels = np.arange(40) % 2
    engine.fit(x, labels, method="ce", epochs=2, out=tmp_path)
    state = read_checkpoint(str(tmp_path / "checkpoint.pt"))
    if change == "a weight's shape":
        name = next(iter(state["model"]))
        state["model"][name] = torch.zeros(7, 7)
    elif change == "the step":
        state["step"] = "x"
    else:
        state["optimizer"]["param_groups"] = []
    save_checkpoint(str(tmp_path / "checkpoint.pt"), state)
    os.remove(tmp_path / "summary.json")
    with pytest.raises(CheckpointError, match=r"checkpoint.pt holds a state that does not fit this run \(.+\); "
                                              r"delete it to start over$"):
        engine.fit(x, labels, method="ce", epochs=2, out=tmp_path, resume=True)


def test_a_resume_says_when_it_starts_anew_or_continues_another_number_of_processes(tmp_path, capsys):
    import engine

    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    labels = np.arange(40) % 2
    assert engine.RunNote is RunNote
    with pytest.warns(RunNote, match=f"^no checkpoint to resume in {tmp_path / 'a'}: a new run$"):
        engine.fit(x, labels, method="ce", epochs=2, out=tmp_path / "a", resume=True)  # shown without verbose
    state = read_checkpoint(str(tmp_path / "a" / "checkpoint.pt"))
    assert state["processes"] == 1
    save_checkpoint(str(tmp_path / "a" / "checkpoint.pt"), {**state, "epoch": 0, "processes": 2})
    os.remove(tmp_path / "a" / "summary.json")
    with pytest.warns(RunNote, match=re.escape(
            f"{tmp_path / 'a' / 'checkpoint.pt'} was written by 2 process(es), this run has 1: it continues, and ends "
            f"near, not exactly at, an uninterrupted run's result on either")):
        engine.fit(x, labels, method="ce", epochs=2, out=tmp_path / "a", resume=True)
    assert main(["--method", "ce", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "b"),
                 "--resume"]) == 0
    assert f"python -m engine.train: note: no checkpoint to resume in {tmp_path / 'b'}: a new run\n" in \
        capsys.readouterr().err
