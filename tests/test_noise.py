import math
import os
import re

import numpy as np
import pytest
import torch

from engine.data.noise import (CIFAR10_ASYMMETRIC, SYNTHETIC_NOISE, asymmetric_noise, clean_subset, make_noisy_labels,
                               noise_from_file, noise_report, pair_flip_map, superclass_ring_map, symmetric_noise)

NUM_SAMPLES = 50_000
NUM_CLASSES = 10
# chi2.ppf(0.999, df=80): the off-diagonal cells of a 10-class transition matrix, each row
# compared with a uniform spread over its 9 other classes (10 rows x 8 degrees of freedom).
CHI2_CRITICAL_DF80 = 124.839


def read_only(array):
    """Inputs are passed read-only, so any in-place write by the code under test raises."""
    array = np.array(array, dtype=np.int64)
    array.setflags(write=False)
    return array


@pytest.fixture
def labels():
    return read_only(np.random.default_rng(123).integers(0, NUM_CLASSES, NUM_SAMPLES))


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.333, 0.8])
def test_symmetric_exact_rate_and_never_true_label(labels, rate):
    noisy = symmetric_noise(labels, rate, NUM_CLASSES, seed=0)
    changed = noisy != labels
    assert changed.sum() == round(rate * NUM_SAMPLES)
    assert noise_report(labels, noisy)["noise_rate"] == round(rate * NUM_SAMPLES) / NUM_SAMPLES
    assert noisy.dtype == np.int64 and noisy.min() >= 0 and noisy.max() < NUM_CLASSES


@pytest.mark.parametrize("count, rate, moved", [(7, 0.4, 3), (9, 0.3, 3), (6, 0.45, 3)])
def test_symmetric_moves_the_rounded_count(count, rate, moved):
    """round(rate * N), not the count rounded down: 7 labels at 40% move 3 (2.8), not 2."""
    labels = read_only(np.arange(count) % NUM_CLASSES)
    assert (symmetric_noise(labels, rate, NUM_CLASSES, seed=0) != labels).sum() == moved


def test_symmetric_include_true_rate(labels):
    rate = 0.6
    resampled = round(rate * NUM_SAMPLES)
    keep_probability = 1 / NUM_CLASSES
    noisy = symmetric_noise(labels, rate, NUM_CLASSES, seed=1, include_true=True)
    realized = np.mean(noisy != labels)
    expected = rate * (NUM_CLASSES - 1) / NUM_CLASSES
    standard_error = math.sqrt(resampled * keep_probability * (1 - keep_probability)) / NUM_SAMPLES
    assert abs(realized - expected) < 3 * standard_error


@pytest.mark.parametrize("include_true", [False, True])
def test_symmetric_new_labels_uniform_over_other_classes(labels, include_true):
    """A moved label goes to each other class alike, also where the draw is over every class."""
    noisy = symmetric_noise(labels, 0.5, NUM_CLASSES, seed=2, include_true=include_true)
    transition = np.array(noise_report(labels, noisy)["transition"], dtype=np.float64)
    off_diagonal = ~np.eye(NUM_CLASSES, dtype=bool)
    expected = (transition * off_diagonal).sum(axis=1, keepdims=True) / (NUM_CLASSES - 1)
    chi_square = (((transition - expected) ** 2 / expected)[off_diagonal]).sum()
    assert chi_square < CHI2_CRITICAL_DF80


@pytest.mark.parametrize("include_true", [False, True])
def test_symmetric_seeded(labels, include_true):
    first = symmetric_noise(labels, 0.4, NUM_CLASSES, seed=7, include_true=include_true)
    again = symmetric_noise(labels, 0.4, NUM_CLASSES, seed=7, include_true=include_true)
    other = symmetric_noise(labels, 0.4, NUM_CLASSES, seed=8, include_true=include_true)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_asymmetric_cifar10_map(labels):
    rate = 0.3
    noisy = asymmetric_noise(labels, rate, NUM_CLASSES, seed=3, mapping=CIFAR10_ASYMMETRIC)
    changed = noisy != labels
    assert set(np.unique(labels[changed])) == set(CIFAR10_ASYMMETRIC)
    for source, target in CIFAR10_ASYMMETRIC.items():
        in_class = labels == source
        assert np.all(noisy[in_class & changed] == target)
        flip_rate = changed[in_class].mean()
        standard_error = math.sqrt(rate * (1 - rate) / in_class.sum())
        assert abs(flip_rate - rate) < 3 * standard_error


def test_asymmetric_seeded(labels):
    first = asymmetric_noise(labels, 0.2, NUM_CLASSES, seed=4, mapping=CIFAR10_ASYMMETRIC)
    assert np.array_equal(first, asymmetric_noise(labels, 0.2, NUM_CLASSES, seed=4, mapping=CIFAR10_ASYMMETRIC))
    assert not np.array_equal(first, asymmetric_noise(labels, 0.2, NUM_CLASSES, seed=5, mapping=CIFAR10_ASYMMETRIC))


def test_pair_flip_map():
    assert pair_flip_map(4) == {0: 1, 1: 2, 2: 3, 3: 0}


def test_superclass_ring_map():
    assert superclass_ring_map(np.array([0, 1, 0, 1, 0, 1])) == {0: 2, 2: 4, 4: 0, 1: 3, 3: 5, 5: 1}
    # Super-classes of different sizes, in no particular order.
    assert superclass_ring_map([1, 0, 0, 1, 0]) == {1: 2, 2: 4, 4: 1, 0: 3, 3: 0}


def test_make_noisy_labels_asymmetric_defaults_to_pair_flip(labels):
    noisy = make_noisy_labels(labels, "asymmetric", 0.4, NUM_CLASSES, seed=0)
    changed = noisy != labels
    assert changed.any()
    assert np.all(noisy[changed] == (labels[changed] + 1) % NUM_CLASSES)


def test_make_noisy_labels_none_and_symmetric(labels):
    clean = make_noisy_labels(labels, "none", 0.0, NUM_CLASSES, seed=0)
    assert np.array_equal(clean, labels) and clean is not labels
    assert np.array_equal(make_noisy_labels(labels, "symmetric", 0.2, NUM_CLASSES, seed=9, include_true=True),
                          symmetric_noise(labels, 0.2, NUM_CLASSES, seed=9, include_true=True))


@pytest.mark.parametrize("rate", [1.0, -0.1])
def test_make_noisy_labels_rejects_rate(labels, rate):
    with pytest.raises(ValueError, match="rate"):
        make_noisy_labels(labels, "symmetric", rate, NUM_CLASSES, seed=0)


def test_make_noisy_labels_rejects_unknown_kind(labels):
    with pytest.raises(ValueError) as error:
        make_noisy_labels(labels, "pairflip", 0.2, NUM_CLASSES, seed=0)
    assert all(kind in str(error.value) for kind in SYNTHETIC_NOISE)


def test_noise_from_file_round_trips(tmp_path):
    stored = np.random.default_rng(0).integers(0, NUM_CLASSES, 100)
    np.save(tmp_path / "labels.npy", stored)
    torch.save(torch.from_numpy(stored), tmp_path / "tensor.pt")
    torch.save({"noisy_label": stored, "note": "human labels"}, tmp_path / "dict.pt")
    for name in ["labels.npy", "tensor.pt", "dict.pt"]:
        loaded = noise_from_file(tmp_path / name, 100, NUM_CLASSES)
        assert loaded.dtype == np.int64 and np.array_equal(loaded, stored)


@pytest.mark.parametrize("content, problem", [
    (np.zeros(99, dtype=np.int64), "99 labels"),
    (np.full(100, NUM_CLASSES, dtype=np.int64), r"\[0, 10\)"),
    (np.full(100, -1, dtype=np.int64), r"\[0, 10\)"),
    (np.zeros((100, 1), dtype=np.int64), "1-D"),
    (np.zeros(100, dtype=np.float32), "integers"),
])
def test_noise_from_file_rejects(tmp_path, content, problem):
    path = tmp_path / "bad.npy"
    np.save(path, content)
    with pytest.raises(ValueError, match=problem) as error:
        noise_from_file(path, 100, NUM_CLASSES)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("name", ["labels.npy", "labels.pt"])
@pytest.mark.parametrize("damage", ["empty", "truncated", "missing"])
def test_an_unreadable_noise_file_is_refused_naming_it(tmp_path, name, damage):
    path = tmp_path / name
    stored = np.zeros(100, dtype=np.int64)
    if name.endswith(".npy"):
        np.save(path, stored)
    else:
        torch.save(torch.from_numpy(stored), path)
    size = {"empty": 0, "truncated": path.stat().st_size // 2, "missing": None}[damage]
    if size is None:
        path.unlink()
    else:
        with open(path, "r+b") as f:
            f.truncate(size)
    kind = re.escape(os.path.splitext(name)[1])
    reason = r"No such file or directory" if damage == "missing" else r".+"
    with pytest.raises(ValueError, match=rf"^noise file {path}: not a readable {kind} file( of plain numbers)? "
                                         rf"\({reason}\)$"):
        noise_from_file(path, 100, NUM_CLASSES)


def test_a_noise_file_too_large_or_sparse_is_refused_naming_it(tmp_path):
    """A header declaring 8 TB ended in a MemoryError traceback, a sparse tensor in a TypeError."""
    with open(tmp_path / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (10**12,)})
    with pytest.raises(ValueError, match=rf"^noise file {tmp_path / 'huge.npy'}: declares an array too large"):
        noise_from_file(tmp_path / "huge.npy", 10, NUM_CLASSES)
    torch.save(torch.tensor([0, 1, 2]).to_sparse(), tmp_path / "sparse.pt")
    with pytest.raises(ValueError, match=r"sparse.pt: a torch.sparse_coo tensor; save the labels as a dense one"):
        noise_from_file(tmp_path / "sparse.pt", 3, NUM_CLASSES)


def test_noise_from_file_rejects_ambiguous_dict_and_format(tmp_path):
    torch.save({"a": np.zeros(10), "b": np.zeros(10)}, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="exactly one"):
        noise_from_file(tmp_path / "two.pt", 10, NUM_CLASSES)
    with pytest.raises(ValueError, match="unsupported"):
        noise_from_file(tmp_path / "labels.csv", 10, NUM_CLASSES)


def unbalanced_labels():
    """Class c has 200 + 30 c samples, shuffled."""
    labels = np.repeat(np.arange(NUM_CLASSES), 200 + 30 * np.arange(NUM_CLASSES))
    return read_only(np.random.default_rng(0).permutation(labels))


@pytest.mark.parametrize("size", [1000, 1003])
def test_clean_subset_balanced(size):
    labels = unbalanced_labels()
    subset = clean_subset(labels, size=size, seed=0)
    assert subset.dtype == np.int64 and len(subset) == size
    assert np.all(np.diff(subset) > 0)
    per_class = np.bincount(labels[subset], minlength=NUM_CLASSES)
    assert per_class.min() == size // NUM_CLASSES
    assert np.sum(per_class > size // NUM_CLASSES) == size % NUM_CLASSES


def test_clean_subset_fraction_and_unbalanced():
    labels = unbalanced_labels()
    assert len(clean_subset(labels, fraction=0.1, seed=0)) == round(0.1 * len(labels))
    assert len(clean_subset(labels, size=500, seed=0, balanced=False)) == 500


def test_clean_subset_fraction_is_rounded_to_the_nearest_count():
    labels = read_only(np.arange(10) % 2)
    assert len(clean_subset(labels, fraction=0.29, seed=0)) == 3  # 2.9 samples
    assert len(clean_subset(labels, fraction=0.29, seed=0, balanced=False)) == 3


@pytest.mark.parametrize("seed", range(4))
def test_clean_subset_remainder_goes_to_classes_with_samples_to_spare(seed):
    """Classes 0-2 have exactly the 2 per class that a balanced 12 of 5 classes needs: the 2 extra
    samples go to classes 3 and 4, the only ones with samples to spare."""
    labels = read_only(np.random.default_rng(seed).permutation(np.repeat(np.arange(5), [2, 2, 2, 5, 5])))
    per_class = np.bincount(labels[clean_subset(labels, size=12, seed=seed)], minlength=5)
    assert per_class.tolist() == [2, 2, 2, 3, 3]


def test_clean_subset_seeded():
    labels = unbalanced_labels()
    assert np.array_equal(clean_subset(labels, size=300, seed=1), clean_subset(labels, size=300, seed=1))
    assert not np.array_equal(clean_subset(labels, size=300, seed=1), clean_subset(labels, size=300, seed=2))


def test_clean_subset_rejects():
    labels = unbalanced_labels()
    with pytest.raises(ValueError, match="exactly one"):
        clean_subset(labels, size=100, fraction=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        clean_subset(labels)
    with pytest.raises(ValueError, match="class 0"):
        clean_subset(labels, size=2010)  # 201 per class, class 0 has only 200


def test_noise_report():
    report = noise_report([0, 0, 1, 1, 2], [0, 1, 1, 1, 0])
    assert report["noise_rate"] == pytest.approx(0.4)
    assert report["per_class_rate"] == pytest.approx([0.5, 0.0, 1.0])
    assert report["transition"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # Class 1 occurs in neither: its rate is 0, not 1 - 0 / 1.
    absent = noise_report([0, 0, 2, 2], [0, 2, 2, 2], num_classes=3)
    assert absent["per_class_rate"] == pytest.approx([0.5, 0.0, 0.0]) and absent["noise_rate"] == 0.25


def test_inputs_not_mutated(tmp_path):
    """Writable inputs (read-only ones are covered above) keep their values."""
    labels = np.random.default_rng(5).integers(0, NUM_CLASSES, 1000)
    mapping = dict(CIFAR10_ASYMMETRIC)
    fine_to_coarse = np.array([0, 1, 0, 1, 0, 1])
    before = labels.copy(), dict(mapping), fine_to_coarse.copy()
    symmetric_noise(labels, 0.5, NUM_CLASSES, seed=0)
    symmetric_noise(labels, 0.5, NUM_CLASSES, seed=0, include_true=True)
    asymmetric_noise(labels, 0.5, NUM_CLASSES, seed=0, mapping=mapping)
    for kind in ["none", "symmetric", "asymmetric"]:
        make_noisy_labels(labels, kind, 0.5, NUM_CLASSES, seed=0)
    superclass_ring_map(fine_to_coarse)
    clean_subset(labels, size=100)
    noise_report(labels, labels[::-1])
    assert np.array_equal(labels, before[0]) and mapping == before[1]
    assert np.array_equal(fine_to_coarse, before[2])


@pytest.mark.parametrize("clean_size", [0, 97])
def test_noisy_labels_for_corrupts_only_the_set_outside_the_clean_subset(clean_size):
    """A run's given labels (engine.labels.noisy_labels_for): noise_rate (--noise-rate) is the
    realized rate of the noisy training set; the clean subset keeps its true labels."""
    from engine.config import DataConfig
    from engine.data.datasets import load_dataset
    from engine.labels import noisy_labels_for

    data = load_dataset("digits")
    clean = clean_subset(data.y_train, size=clean_size, seed=0) if clean_size else np.zeros(0, dtype=np.int64)
    data_config = DataConfig(dataset="digits", noise="symmetric", noise_rate=0.4)
    given = noisy_labels_for(data_config, data, clean, seed=0)
    noisy_set = np.setdiff1d(np.arange(len(given)), clean)
    assert np.array_equal(given[clean], data.y_train[clean])
    assert (given[noisy_set] != data.y_train[noisy_set]).sum() == round(0.4 * len(noisy_set))


def test_noise_from_a_file_leaves_the_clean_subset_its_true_labels(tmp_path):
    """Per-sample labels from a file are taken as they are, except on the trusted clean subset."""
    from engine.config import DataConfig
    from engine.data.datasets import load_dataset
    from engine.labels import noisy_labels_for

    data = load_dataset("digits")
    stored = (data.y_train + 1) % data.num_classes  # every label of the file wrong
    np.save(tmp_path / "labels.npy", stored)
    clean = clean_subset(data.y_train, size=50, seed=0)
    config = DataConfig(dataset="digits", noise="file", noise_file=str(tmp_path / "labels.npy"))
    given = noisy_labels_for(config, data, clean, seed=0)
    assert np.array_equal(given[clean], data.y_train[clean])
    outside = np.setdiff1d(np.arange(len(given)), clean)
    assert np.array_equal(given[outside], stored[outside])


def test_asymmetric_noise_follows_each_data_sets_map():
    """CIFAR-10: Patrini's map; CIFAR-100: the ring within each super-class; others: i -> i + 1."""
    from types import SimpleNamespace

    from engine.labels import asymmetric_map

    fine_to_coarse = np.array([1, 0, 1, 0, 1, 0])
    assert asymmetric_map(SimpleNamespace(name="cifar10", fine_to_coarse=None, num_classes=10)) == CIFAR10_ASYMMETRIC
    cifar100 = SimpleNamespace(name="cifar100", fine_to_coarse=fine_to_coarse, num_classes=6)
    assert asymmetric_map(cifar100) == {1: 3, 3: 5, 5: 1, 0: 2, 2: 4, 4: 0}
    assert asymmetric_map(SimpleNamespace(name="digits", fine_to_coarse=None, num_classes=4)) == pair_flip_map(4)


def test_each_cifar_n_variant_reads_its_own_label_set():
    """The human label sets' noise rates against the archive's clean labels, as Wei et al. (ICLR
    2022) give them: CIFAR-10N aggre 9.03%, random1-3 17.23%, 18.12%, 17.64%, worst 40.21%;
    CIFAR-100N 40.20% (its fine labels)."""
    from engine.data.cifar_n import _read_member, load_cifar_n_labels

    published = {"aggre": 0.0903, "random1": 0.1723, "random2": 0.1812, "random3": 0.1764, "worst": 0.4021}
    clean = np.asarray(_read_member("CIFAR-10_human.pt")["clean_label"], dtype=np.int64)
    for variant, rate in published.items():
        assert abs(np.mean(load_cifar_n_labels("cifar10n", variant, clean) != clean) - rate) < 0.0005, variant
    clean = np.asarray(_read_member("CIFAR-100_human.pt")["clean_label"], dtype=np.int64)
    assert abs(np.mean(load_cifar_n_labels("cifar100n", "worst", clean) != clean) - 0.4020) < 0.0005
