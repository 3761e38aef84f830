"""No code runs from a file a user is given: a label file, a CIFAR batch or a checkpoint whose
pickle would call a function (here: create a marker file) is refused with an error naming the
file, and the marker never appears; plain files of the same formats still load."""
import codecs
import os
import pathlib
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.data.datasets import load_dataset
from engine.data.noise import noise_from_file
from engine.safe_loading import torch_load, unpickle_arrays

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Payload:
    """Unpickling it creates `marker` (what an attacker's file would do with os.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_a_label_file_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "labels.pt"
    torch.save({"noisy_label": np.zeros(10, dtype=np.int64), "note": Payload(marker)}, path)
    with pytest.raises(ValueError, match=f"noise file {path}: refused"):
        noise_from_file(str(path), 10, 10)
    assert not marker.exists()


def test_torch_files_of_tensors_and_numpy_arrays_load():
    for value in (torch.arange(5), np.arange(5, dtype=np.int64), np.linspace(0, 1, 5, dtype=np.float32)):
        buffer = __import__("io").BytesIO()
        torch.save({"labels": value, "count": 5, "name": "x", "list": [1, 2.0]}, buffer)
        buffer.seek(0)
        loaded = torch_load(buffer, "buffer")
        assert np.array_equal(np.asarray(loaded["labels"]), np.asarray(value)) and loaded["list"] == [1, 2.0]


def write_cifar10_batches(root, first_batch):
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = first_batch if name == "data_batch_1" else {
            "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [1, 2, 3, 4]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    root = tmp_path / "cifar-10-batches-py"
    write_cifar10_batches(root, {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3],
                                 "batch_label": Payload(marker)})
    with pytest.raises(ValueError, match="data_batch_1: refused, a CIFAR batch holds only arrays"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_load(tmp_path, protocol):
    batch = {"data": np.arange(8 * 3072, dtype=np.uint8).reshape(8, 3072), "labels": [np.int64(3), 1] * 4,
             b"batch_label": b"training batch 1 of 5", "filenames": ["a.png"] * 8}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    loaded = unpickle_arrays(str(path))
    assert np.array_equal(loaded["data"], batch["data"]) and loaded["labels"] == batch["labels"]
    assert loaded[b"batch_label"] == batch[b"batch_label"] and loaded["filenames"] == batch["filenames"]


@pytest.mark.parametrize("batch, problem", [
    ([1, 2], "not a CIFAR batch (a dict with data, labels)"),
    ({"data": np.zeros((4, 3072), np.uint8)}, "not a CIFAR batch (a dict with data, labels)"),
    ({"data": np.full((4, 3072), 300.7), "labels": [0, 1, 2, 3]}, "data must be integer pixels 0..255 of shape"),
    ({"data": np.full((4, 3072), -1), "labels": [0, 1, 2, 3]}, "data must be integer pixels 0..255 of shape"),
    ({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}, "data must be integer pixels 0..255 of shape"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": [[0, 1], [2, 3]]}, "labels must be 4 class indices"),
])
def test_a_cifar_batch_of_another_structure_is_refused_naming_it(tmp_path, batch, problem):
    """They raised KeyError or TypeError, or float and negative pixels were wrapped into 0..255."""
    write_cifar10_batches(tmp_path / "cifar-10-batches-py", batch)
    with pytest.raises(ValueError, match=rf"cifar-10-batches-py/data_batch_1: {re.escape(problem)}"):
        load_dataset("cifar10", str(tmp_path))


class Reduced:
    """Pickles as the call `function(*args)`: an admitted global called as no array pickle calls it."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("call, refused", [
    (Reduced(codecs.encode, "00" * 8, "hex"), "_codecs.encode with the codec 'hex'"),  # each level doubles the data
    (Reduced(np._core.multiarray._reconstruct, np.ndarray, (10**9,), b"b"),
     "numpy _reconstruct of shape (1000000000,)"),
])
def test_a_cifar_batch_that_would_allocate_what_it_does_not_hold_is_refused(tmp_path, call, refused):
    """A kilobyte batch grew to gigabytes: the codec and the array shape are checked, not only the names."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": call, "labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=rf"data_batch_1: refused, .* this one calls {re.escape(refused)}"):
        unpickle_arrays(str(path))


def test_a_truncated_cifar_batch_names_the_file(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.uint8)}, protocol=2)[:50])
    with pytest.raises(ValueError, match="data_batch_1: not a readable CIFAR batch"):
        unpickle_arrays(str(path))


def test_a_checkpoint_that_would_run_code_is_refused_on_resume(tmp_path):
    marker, out = tmp_path / "ran", tmp_path / "run"
    out.mkdir()
    torch.save({"identity": {}, "model": Payload(marker)}, out / "checkpoint.pt")
    result = subprocess.run([sys.executable, "-m", "engine.train", "--method", "ce", "--dataset", "digits",
                             "--epochs", "1", "--out", str(out), "--resume"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and f"resuming (--resume, engine.fit's resume=True): {out / 'checkpoint.pt'} cannot be read" in result.stderr
    assert not marker.exists()
