"""Synthetic label-noise models (METHODS.md, "Noise models") and the held-out clean subset.

Everything is seeded explicitly and returns new arrays: the true labels are kept untouched so
detection precision / recall can be measured against them.
"""
import os

import numpy as np

from engine.data.datasets import require_classes
from engine.safe_loading import load_npy, torch_load

SYNTHETIC_NOISE = ("none", "symmetric", "asymmetric")  # drawn here; a file's or CIFAR-N's labels are read

# Patrini et al.'s CIFAR-10 map: truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_ASYMMETRIC = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def _as_labels(labels, num_classes, what="labels"):
    """`labels` as a 1-D int64 array with values in [0, num_classes)."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"{what} must lie in [0, {num_classes}), found values in "
                         f"[{array.min()}, {array.max()}]")
    return array


def _check_rate(rate):
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must be in [0, 1), got rate={rate}")


def symmetric_noise(labels, rate, num_classes, seed, include_true=False):
    """Relabel exactly round(rate * N) samples chosen at random. By default the new label is
    drawn from the OTHER classes (JNPL's convention: the realized noise rate is `rate`); with
    `include_true` it is drawn from all classes (transition-matrix convention: the realized
    rate is about rate * (C - 1) / C)."""
    _check_rate(rate)
    labels = _as_labels(labels, num_classes)
    if num_classes < 2:
        raise ValueError(f"symmetric noise needs at least 2 classes, got num_classes={num_classes}")
    rng = np.random.default_rng(seed)
    num_noisy = int(round(rate * len(labels)))
    chosen = rng.choice(len(labels), size=num_noisy, replace=False)
    noisy = labels.copy()
    if include_true:
        noisy[chosen] = rng.integers(0, num_classes, size=num_noisy)
    else:
        # A shift in 1..C-1 is uniform over the other classes and never gives the true one back.
        shift = rng.integers(1, num_classes, size=num_noisy)
        noisy[chosen] = (labels[chosen] + shift) % num_classes
    return noisy


def asymmetric_noise(labels, rate, num_classes, seed, mapping):
    """Flip each sample whose class is a key of `mapping` (source -> target class) to its target,
    independently with probability `rate`; other classes never change."""
    _check_rate(rate)
    labels = _as_labels(labels, num_classes)
    sources = _as_labels(list(mapping.keys()), num_classes, "mapping sources")
    targets = _as_labels(list(mapping.values()), num_classes, "mapping targets")
    target_of = np.arange(num_classes, dtype=np.int64)
    target_of[sources] = targets
    rng = np.random.default_rng(seed)
    flip = (rng.random(len(labels)) < rate) & np.isin(labels, sources)
    noisy = labels.copy()
    noisy[flip] = target_of[labels[flip]]
    return noisy


def pair_flip_map(num_classes):
    """The default asymmetric map for data sets without a known one: class i -> i + 1 mod C."""
    return {i: (i + 1) % num_classes for i in range(num_classes)}


def superclass_ring_map(fine_to_coarse):
    """CIFAR-100's asymmetric map: each fine class -> the next fine class (in increasing class
    order) of its own super-class, the last one wrapping to the first."""
    fine_to_coarse = np.asarray(fine_to_coarse)
    mapping = {}
    for coarse in np.unique(fine_to_coarse):
        ring = np.flatnonzero(fine_to_coarse == coarse)
        for position, fine in enumerate(ring):
            mapping[int(fine)] = int(ring[(position + 1) % len(ring)])
    return mapping


def _load_label_array(path):
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        return load_npy(path, f"noise file {path}")
    if suffix == ".pt":
        import torch  # only .pt files need torch

        content = torch_load(path, f"noise file {path}")
        if isinstance(content, dict):
            arrays = {key: value for key, value in content.items()
                      if isinstance(value, (np.ndarray, torch.Tensor))}
            if len(arrays) != 1:
                raise ValueError(f"noise file {path}: expected a dict holding exactly one label array, "
                                 f"found {sorted(map(str, arrays)) or 'none'} among keys {sorted(map(str, content))}")
            content = next(iter(arrays.values()))
        if isinstance(content, torch.Tensor):
            if content.layout != torch.strided:
                raise ValueError(f"noise file {path}: a {content.layout} tensor; save the labels as a dense one")
            return content.numpy()
        return np.asarray(content)
    raise ValueError(f"noise file {path}: unsupported format {suffix!r} (use .npy or .pt)")


def noise_from_file(path, num_samples, num_classes):
    """Per-sample noisy labels (e.g. human labels) stored as .npy or .pt, validated against the
    data set they are meant for."""
    path = os.fspath(path)
    array = _load_label_array(path)
    if array.ndim == 1 and len(array) != num_samples:  # checked before a conversion copies it
        raise ValueError(f"noise file {path}: has {len(array)} labels but the data set has {num_samples} samples")
    labels = _as_labels(array, num_classes, f"noise file {path}: labels")
    require_classes(labels, f"noise file {path}")
    return labels


def make_noisy_labels(true_labels, kind, rate, num_classes, seed, asym_mapping=None, include_true=False):
    """The noisy training labels for synthetic noise `kind` (one of SYNTHETIC_NOISE); a new array."""
    _check_rate(rate)
    true_labels = _as_labels(true_labels, num_classes, "true labels")
    if kind == "none":
        return true_labels.copy()
    if kind == "symmetric":
        return symmetric_noise(true_labels, rate, num_classes, seed, include_true=include_true)
    if kind == "asymmetric":
        mapping = pair_flip_map(num_classes) if asym_mapping is None else asym_mapping
        return asymmetric_noise(true_labels, rate, num_classes, seed, mapping)
    raise ValueError(f"unknown synthetic noise kind {kind!r}; valid kinds: {', '.join(SYNTHETIC_NOISE)}")


def clean_subset(true_labels, size=None, fraction=None, seed=0, balanced=True):
    """Sorted indices of a held-out clean subset of `size` samples (or `fraction` of them).
    Balanced: floor(size / C) per class over the classes present, the remainder going to
    randomly chosen classes that still have samples to spare."""
    true_labels = np.asarray(true_labels, dtype=np.int64)
    if (size is None) == (fraction is None):
        raise ValueError("give exactly one of size and fraction")
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        size = int(round(fraction * len(true_labels)))
        if size == 0:  # asked for a subset: none at all would train as if not asked
            raise ValueError(f"fraction {fraction:g} of the {len(true_labels)} samples is no sample (one is "
                             f"{1 / len(true_labels):.2g} of them)")
    if not 0 <= size <= len(true_labels):
        raise ValueError(f"size must be in [0, {len(true_labels)}], got {size}")
    rng = np.random.default_rng(seed)
    if not balanced:
        return np.sort(rng.choice(len(true_labels), size=size, replace=False)).astype(np.int64)

    classes, counts = np.unique(true_labels, return_counts=True)
    quota = np.full(len(classes), size // len(classes))
    short = counts < quota
    if short.any():
        raise ValueError(f"class {classes[short][0]} has {counts[short][0]} samples, fewer than the "
                         f"{quota[0]} per class that a balanced subset of {size} needs")
    remainder = size % len(classes)
    spare = np.flatnonzero(counts > quota)
    if len(spare) < remainder:
        raise ValueError(f"a balanced subset of {size} needs {remainder} classes with more than "
                         f"{quota[0]} samples, only {len(spare)} have")
    quota[rng.choice(spare, size=remainder, replace=False)] += 1
    chosen = [rng.choice(np.flatnonzero(true_labels == cls), size=take, replace=False)
              for cls, take in zip(classes, quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def noise_report(true_labels, noisy_labels, num_classes=None):
    """Realized noise: overall rate, rate per true class (0 for an absent class) and the C x C
    count matrix transition[true][noisy]."""
    true_labels = np.asarray(true_labels, dtype=np.int64)
    noisy_labels = np.asarray(noisy_labels, dtype=np.int64)
    if true_labels.shape != noisy_labels.shape or true_labels.ndim != 1:
        raise ValueError(f"true and noisy labels must be 1-D of the same length, got shapes "
                         f"{true_labels.shape} and {noisy_labels.shape}")
    if num_classes is None:
        num_classes = int(max(true_labels.max(initial=-1), noisy_labels.max(initial=-1))) + 1
    _as_labels(true_labels, num_classes, "true labels")
    _as_labels(noisy_labels, num_classes, "noisy labels")
    transition = np.bincount(true_labels * num_classes + noisy_labels,
                             minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    per_class_total = transition.sum(axis=1)
    per_class_kept = np.diag(transition)
    per_class_rate = np.where(per_class_total > 0, 1.0 - per_class_kept / np.maximum(per_class_total, 1), 0.0)
    noise_rate = float(np.mean(true_labels != noisy_labels)) if len(true_labels) else 0.0
    return {"noise_rate": noise_rate, "per_class_rate": per_class_rate.tolist(), "transition": transition.tolist()}
