"""Labels of a run: the held-out clean subset, the given (noisy) labels of the training set from
the data config's noise, and how well a method's flags find the wrong ones."""
import numpy as np

from engine.data.noise import (CIFAR10_ASYMMETRIC, clean_subset, make_noisy_labels, noise_from_file, pair_flip_map,
                               superclass_ring_map)
from engine.methods.base import CleanSubset


def asymmetric_map(dataset):
    if dataset.name == "cifar10":
        return CIFAR10_ASYMMETRIC
    if dataset.fine_to_coarse is not None:
        return superclass_ring_map(dataset.fine_to_coarse)
    return pair_flip_map(dataset.num_classes)


def choose_clean_subset(config, true_labels, seed):
    """Sorted indices of the class-balanced clean subset that `config` (clean_size or
    clean_fraction) holds out (the Trainer checks it against what the method needs)."""
    if config.clean_size or config.clean_fraction:
        return clean_subset(true_labels, size=config.clean_size, fraction=config.clean_fraction, seed=seed)
    return np.zeros(0, dtype=np.int64)


def check_clean_subset(method, clean_indices, given_labels, num_classes):
    """The clean subset a method needs holds samples of every class that occurs in the labels
    (L2B: a class without any sample needs none). The command line sizes it, engine.fit names it:
    the errors say what to change in both."""
    if method.clean_subset is CleanSubset.NOT_NEEDED:
        return
    if len(clean_indices) == 0:
        raise ValueError(f"method {method.name} needs a clean subset (clean_size or clean_fraction > 0; "
                         f"engine.fit: clean_indices)")
    # PU-distillation grows the clean set of every class index with its own binary filters
    absent = np.setdiff1d(np.arange(num_classes), given_labels)
    if method.clean_subset is CleanSubset.TRAINED_ON and len(absent):
        raise ValueError(f"method {method.name} needs samples of every class 0..{num_classes - 1}; class "
                         f"{absent[0]} has none: number the classes 0, 1, ... without gaps")
    missing = np.setdiff1d(given_labels, given_labels[clean_indices])
    if len(missing):
        raise ValueError(f"method {method.name} needs clean samples of every class; the clean subset of "
                         f"{len(clean_indices)} has none of class {missing[0]}: raise clean_size or clean_fraction "
                         f"(engine.fit: add samples of class {missing[0]} to clean_indices)")


def noisy_labels_for(data_config, dataset, clean_indices, seed):
    """The given label of every training sample. Synthetic noise corrupts only the samples
    outside the clean subset, so the noise rate is that of the samples a method scores;
    per-sample labels (a file, CIFAR-N) are taken as they are. The clean subset keeps its
    true labels."""
    true = dataset.y_train
    if data_config.noise in ("cifar10n", "cifar100n"):
        from engine.data.cifar_n import load_cifar_n_labels

        given = load_cifar_n_labels(data_config.noise, data_config.noise_variant, true)
    elif data_config.noise == "file":  # a label per sample as given: a held-out test share's too
        rows = dataset.train_rows
        count = len(true) if rows is None else len(true) + len(dataset.y_test)
        given = noise_from_file(data_config.noise_file, count, dataset.num_classes)
        given = given if rows is None else given[rows]
    else:
        given = true.copy()
        noisy_set = np.setdiff1d(np.arange(len(true)), clean_indices)
        given[noisy_set] = make_noisy_labels(true[noisy_set], data_config.noise, data_config.noise_rate,
                                             dataset.num_classes, seed, asym_mapping=asymmetric_map(dataset),
                                             include_true=data_config.noise_include_true)
    given[clean_indices] = true[clean_indices]
    return given


def detection_metrics(flagged, truly_noisy):
    """(precision, recall, F1) of the flags against the truly mislabeled samples."""
    true_positive = (flagged & truly_noisy).sum()
    precision = true_positive / max(flagged.sum(), 1)
    recall = true_positive / max(truly_noisy.sum(), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)
