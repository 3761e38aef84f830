"""What a run trains on and is measured against: the training inputs with their given (noisy)
labels, the true labels where known, the held-out clean subset, an optional test split, and how
inputs become batches (DALI for augmented uint8 images and for image files streamed from disk,
plain tensors for evaluation passes over uint8 images and for float feature vectors)."""
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.data.datasets import (MAX_CLASSES, TRUSTED_LABELS, ImageFiles, as_features, channel_stats,
                                  check_sample_shape, check_test_classes, feature_stats, require_classes,
                                  require_distinct_names, trusted_positions)
from engine.data.loaders import ImageArrayLoader, TensorLoader
from engine.safe_loading import not_dense


@dataclass
class TrainingData:
    name: str
    x_train: np.ndarray               # uint8 [N, H, W, C] images, float32 [N, D] feature vectors or ImageFiles
    given_labels: np.ndarray          # int64 [N], the labels training sees
    num_classes: int
    mean: np.ndarray                  # per channel (images, 0-255 scale) or per feature
    std: np.ndarray
    true_labels: np.ndarray | None = None   # int64 [N] when known (detection metrics)
    clean_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # trusted labels
    x_test: np.ndarray | None = None  # like x_train
    y_test: np.ndarray | None = None
    flip: bool = False                # horizontal flips keep the label (images)
    class_names: list | None = None
    train_paths: np.ndarray | None = None  # str [N]: the training images' files, when read from files
    train_rows: np.ndarray | None = None   # int64 [N]: their positions in the data as given, where a test share
                                           # was held out of it (ImageDataset.train_rows); else 0..N-1

    @property
    def features(self):
        """True for feature vectors [N, D], False for images."""
        return self.x_train.ndim == 2

    @property
    def train_indices(self):
        """The samples outside the clean subset (the noisy training set)."""
        return np.setdiff1d(np.arange(len(self.given_labels)), self.clean_indices)

    def fingerprint(self, before_classes=False):
        """sha256 (hex) of everything a run's state and outputs depend on: the training inputs,
        given labels, clean subset, test split (of image files: their paths, sizes and mtimes),
        classes and their names, and the true labels (scored each epoch). --resume refuses a
        checkpoint of other data. before_classes: the fingerprint of checkpoints written before
        2026-12-08, without the classes and true labels (--resume still takes them)."""
        digest = hashlib.sha256(b"" if before_classes else repr((self.num_classes, self.class_names)).encode())
        arrays = (self.x_train, self.given_labels, self.clean_indices, self.x_test, self.y_test)
        for array in arrays if before_classes else (*arrays, self.true_labels):
            if isinstance(array, ImageFiles):
                array = np.frombuffer(array.fingerprint(), dtype=np.uint8)
            if array is not None:
                array = np.ascontiguousarray(array)
                digest.update(f"{array.dtype.str}{array.shape}".encode())
                digest.update(memoryview(array.reshape(-1)).cast("B"))
        return digest.hexdigest()

    @property
    def input_shape(self):
        return self.x_train.shape[1:]

    def loader(self, x, batch_size, device, **options):
        """Batches (inputs, indices[, second view]) of `x` (this data's kind, normalized like the
        training inputs); options: shuffle, augment, seed, indices, drop_last, second_view."""
        if self.features:
            return TensorLoader(x, batch_size, self.mean, self.std, device=device, **options)
        if isinstance(x, ImageFiles):
            from engine.data.streaming import StreamingLoader

            return StreamingLoader(x, batch_size, self.mean, self.std, device=device, flip=self.flip, **options)
        if not options.get("augment") and not options.get("second_view"):
            return ImageArrayLoader(x, batch_size, self.mean, self.std, device=device, **options)
        from engine.data.pipeline import DaliLoader

        return DaliLoader(x, batch_size, self.mean, self.std, device=device, flip=self.flip, **options)

    def check_inputs(self, x, argument="x"):
        """`x` as the array kind the model was trained on, or a clear error. A model trained on
        image files streamed predicts image files (ImageFiles of the same size: decoded, resized
        and center-cropped as its test images were); image files for a model trained on decoded
        images are decoded as a data set not streamed decodes them."""
        if isinstance(x, ImageFiles) and not isinstance(self.x_train, ImageFiles):
            x = x.decoded()
        elif isinstance(self.x_train, ImageFiles):
            if not isinstance(x, ImageFiles) or x.size != self.x_train.size:
                raise ValueError(f"{argument}: the model trained on image files at {self.x_train.size} px: give image "
                                 f"files, ImageFiles(folder, paths, {self.x_train.size}) (engine.data.datasets), e.g. "
                                 f"a loaded data set's x_test; got {type(x).__name__}"
                                 f"{f' at {x.size} px' if isinstance(x, ImageFiles) else ''}")
            return x
        x = as_inputs(x, argument)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"{argument}: expected inputs of shape [M, {', '.join(map(str, self.input_shape))}] "
                             f"like the training data, got {list(x.shape)}")
        return x


def as_numpy(array, argument):
    """A numpy or torch array (or a list) as a numpy array; torch's bfloat16, which numpy lacks,
    becomes float32 (exactly). A meta or sparse tensor is refused naming `argument`."""
    if isinstance(array, torch.Tensor):
        if not_dense(array):
            raise ValueError(f"{argument}: a {not_dense(array)} tensor; give a dense one with values")
        array = array.detach().cpu()
        array = (array.float() if array.dtype == torch.bfloat16 else array).numpy()
    return np.asarray(array)


def as_inputs(x, argument="x"):
    """numpy / torch inputs as uint8 images [N, H, W, C] (a [N, H, W] array gets one channel) or
    float32 feature vectors [N, D]; anything else is a clear error."""
    x = as_numpy(x, argument)
    if x.ndim == 2:
        check_sample_shape(x, argument)
        return as_features(x, argument)
    if x.ndim in (3, 4) and x.dtype != np.uint8:  # e.g. scikit-learn's digits.images: floats 0-16
        raise ValueError(f"{argument}: images [N, H, W(, C)] must be uint8 (0-255), got {x.dtype}; convert them, "
                         f"e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1], or pass feature vectors "
                         f"x.reshape(len(x), -1)")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim == 4:
        check_sample_shape(x, argument)
        return x
    raise ValueError(f"{argument}: expected uint8 images [N, H, W, C] or float feature vectors [N, D], got shape "
                     f"{list(x.shape)} of {x.dtype}")


def as_labels(labels, count, argument, lowest=0):
    """Integer class labels [count] in [lowest, MAX_CLASSES) as int64, or a clear error
    (true_labels: lowest -1, unknown)."""
    labels = as_numpy(labels, argument)
    if labels.ndim != 1 or len(labels) != count:
        raise ValueError(f"{argument}: expected {count} labels (one per sample, 1-D), got shape {list(labels.shape)}")
    if count and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{argument}: labels must be integer class indices 0, 1, ..., got {labels.dtype}"
                         f"{label_hint(labels)}")
    labels = labels.astype(np.int64)
    if count and labels.min() < lowest:
        raise ValueError(f"{argument}: labels must be >= {lowest}, found {labels.min()}")
    if count and labels.max() >= MAX_CLASSES:  # the class count is the largest label + 1: it sizes the model
        raise ValueError(f"{argument}: labels must be < {MAX_CLASSES} (class indices 0, 1, ...), found {labels.max()}")
    return labels


def label_hint(labels):
    """How to turn labels of another kind into class indices: booleans and whole floats by a
    cast, names (strings, objects) by one mapping for every label argument."""
    if labels.dtype.kind == "b" or (labels.dtype.kind == "f" and np.isfinite(labels).all()
                                    and (labels == np.round(labels)).all()):
        return " (pass labels.astype(int))"
    if labels.dtype.kind in "USO":
        return (" (class names: map them to indices, e.g. names, labels = np.unique(labels, return_inverse=True), "
                "and pass class_names=list(names); map y_test and true_labels by the same names)")
    return ""


def from_dataset(dataset, given, true_labels, clean_indices):
    """TrainingData of a loaded data set (engine.data.datasets.load_dataset) with the labels
    training sees, the true ones where known (else None) and the clean subset; its test split
    unless it held none out (test_fraction 0)."""
    held_out = len(dataset.y_test) > 0
    return TrainingData(dataset.name, dataset.x_train, given, dataset.num_classes, dataset.mean, dataset.std,
                        true_labels=true_labels, clean_indices=clean_indices,
                        x_test=dataset.x_test if held_out else None, y_test=dataset.y_test if held_out else None,
                        flip=dataset.flip, class_names=dataset.class_names, train_paths=dataset.train_paths,
                        train_rows=dataset.train_rows)


def from_loaded(dataset, labels=None, true_labels=None, clean_indices=None):
    """engine.fit's TrainingData of a loaded data set: its labels (or `labels`, e.g. noise added
    to a benchmark's), its known true labels (or `true_labels`) and its trusted samples (or, where
    it has none, `clean_indices`)."""
    count, classes = len(dataset.y_train), dataset.num_classes
    given = dataset.y_train if labels is None else as_labels(labels, count, "labels")
    true = dataset.true_train if true_labels is None else as_labels(true_labels, count, "true_labels", lowest=-1)
    for argument, values in (("labels", given), ("true_labels", true)):
        if values is not None and count and values.max() >= classes:
            raise ValueError(f"{argument}: the data set has {classes} classes, found label {values.max()}")
    require_classes(given, "labels")
    clean = dataset.trusted_train
    if clean_indices is not None:
        if clean is not None:
            where = TRUSTED_LABELS[dataset.name][0]
            raise ValueError(f"clean_indices: the data set has its own clean subset ({where}, {len(clean)} samples), "
                             f"which the run uses")
        clean = trusted_training_samples(dataset, as_numpy(clean_indices, "clean_indices"))
    return from_dataset(dataset, given, true, np.zeros(0, dtype=np.int64) if clean is None else clean)


def trusted_training_samples(dataset, indices):
    """The training positions of a loaded data set's trusted samples, named as the label-issues
    table's index and find_label_issues name them: by position in the data as given, where a test
    share was held out of it (dataset.train_rows), as the npz's own clean_indices does."""
    count = len(dataset.y_train)
    if dataset.train_rows is None:
        return trusted_positions(indices, count, "clean_indices")
    given_count = count + len(dataset.y_test)
    indices = np.asarray(indices)
    if (indices.shape == (count,) and count > 2 and np.issubdtype(indices.dtype, np.integer)
            and np.isin(indices, (0, 1)).all()):  # a 0/1 mask of the training part
        raise ValueError(f"clean_indices: {count} values of 0 and 1, one per training sample: give a mask of one value "
                         f"per sample as given ({given_count}, a test share held out of them), as bool, or the "
                         f"positions in the data as given (the label-issues table's index)")
    rows = trusted_positions(indices, given_count, "clean_indices (positions in the data as given)")
    position = np.full(given_count, -1, dtype=np.int64)
    position[dataset.train_rows] = np.arange(count)
    held_out = rows[position[rows] < 0]
    if len(held_out):
        raise ValueError(f"clean_indices: sample {held_out[0]} is in the test share held out of the data "
                         f"({len(dataset.y_test)} samples); trust training samples only (load_dataset's "
                         f"test_fraction=0 holds none out)")
    if len(rows) == count:
        raise ValueError(f"clean_indices: all {count} training samples are in the clean subset; leave out those whose "
                         f"labels the method should train on and score")
    return np.sort(position[rows])


def from_arrays(x, labels, x_test=None, y_test=None, true_labels=None, clean_indices=None, class_names=None,
                name="arrays"):
    """TrainingData from a user's arrays (engine.fit): images are normalized per channel,
    feature vectors standardized per feature, both with the training set's statistics."""
    x = as_inputs(x)
    given = as_labels(labels, len(x), "labels")
    if len(x) < 2:
        raise ValueError(f"x: need at least 2 training samples, got {len(x)}")
    true = None if true_labels is None else as_labels(true_labels, len(x), "true_labels", lowest=-1)
    if (x_test is None) != (y_test is None):
        raise ValueError("x_test and y_test go together: give both or neither")
    if x_test is not None:
        x_test = as_inputs(x_test, "x_test")
        if not len(x_test):
            raise ValueError("x_test: no samples; give at least one, or leave x_test and y_test out")
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(f"x_test: samples of shape {list(x_test.shape[1:])} differ from x's "
                             f"{list(x.shape[1:])}")
        y_test = as_labels(y_test, len(x_test), "y_test")
    num_classes = int(given.max()) + 1
    if y_test is not None and y_test.max() >= num_classes:
        if class_names is None:
            check_test_classes(y_test, num_classes - 1, lambda i: "y_test", "the training labels",
                               " (class_names names every class)")
        num_classes = int(y_test.max()) + 1
    if class_names is not None:
        # A dict would give its keys and a string its letters as the names.
        if isinstance(class_names, (str, bytes, Mapping)) or not isinstance(class_names, Iterable):
            hint = " (a dict {label: name}: pass [d[i] for i in range(num_classes)])"
            raise ValueError(f"class_names: expected a list of names in label order, got {type(class_names).__name__}"
                             f"{hint if isinstance(class_names, Mapping) else ''}")
        class_names = require_distinct_names([str(name) for name in class_names], "class_names")
        if not num_classes <= len(class_names) <= MAX_CLASSES:
            raise ValueError(f"class_names: {len(class_names)} names for labels up to {num_classes - 1} (at most "
                             f"{MAX_CLASSES} classes)")
        num_classes = len(class_names)
    if true is not None and true.max() >= num_classes:  # the true labels never size the model
        raise ValueError(f"true_labels: label {int(true.max())} is no class of the given labels or y_test "
                         f"(0..{num_classes - 1}); class_names names every class")
    require_classes(given, "labels")
    clean = np.zeros(0, dtype=np.int64)
    if clean_indices is not None:
        clean = trusted_positions(as_numpy(clean_indices, "clean_indices"), len(x), "clean_indices")
    mean, std = feature_stats(x) if x.ndim == 2 else channel_stats(x)
    return TrainingData(name, x, given, num_classes, mean, std, true_labels=true, clean_indices=clean, x_test=x_test,
                        y_test=y_test, flip=False, class_names=class_names)
