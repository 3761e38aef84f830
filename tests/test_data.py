"""Data sets (built-in and users' formats), the DALI CPU pipeline, CIFAR-N human labels."""
import gzip
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from engine.data import datasets
from engine.data.datasets import channel_stats, encoded_image, load_dataset
from engine.data.loaders import ImageArrayLoader, TensorLoader
from engine.data.training_data import TrainingData
from engine.train import main
from engine.data.pipeline import (RAND_AUGMENT_OPS, DaliLoader, decode_images, rand_augment_choices, rand_augment_suite,
                                  sample_uniforms)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_JPEG = os.path.join(REPO, "..", "shared", "data", "cifar10_jpeg_ordered.npz")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist (CI installs it)


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist5k")


def test_mnist5k_is_a_fixed_4000_1000_split(mnist5k):
    assert mnist5k.x_train.shape == (4000, 28, 28, 1) and mnist5k.x_test.shape == (1000, 28, 28, 1)
    assert mnist5k.x_train.dtype == np.uint8 and mnist5k.num_classes == 10
    counts = np.bincount(np.concatenate([mnist5k.y_train, mnist5k.y_test]))
    assert counts.tolist() == [500] * 10  # the whole 5k subset, 500 per class
    assert mnist5k.train_paths is None, "not read from files: label_issues.csv has no path"
    again = load_dataset("mnist5k")
    assert np.array_equal(again.y_train, mnist5k.y_train) and np.array_equal(again.x_test, mnist5k.x_test)


def test_digits():
    digits = load_dataset("digits")
    assert digits.x_train.shape[1:] == (8, 8, 1) and len(digits.y_train) + len(digits.y_test) == 1797
    assert not digits.flip


def test_unknown_dataset_and_missing_dir():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cifar10", "/nonexistent/cifar")


def test_pipeline_batches_cover_each_sample_once_per_epoch(mnist5k):
    loader = DaliLoader(mnist5k.x_train, 128, mnist5k.mean, mnist5k.std, shuffle=True, augment=True, seed=3)
    assert len(loader) == 32
    orders = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen = []
        for images, indices in loader:
            assert images.dtype == torch.float32 and images.shape == (len(indices), 1, 28, 28)
            assert indices.dtype == torch.int64
            seen.append(indices)
        seen = torch.cat(seen)
        assert sorted(seen.tolist()) == list(range(4000))
        orders.append(seen)
    assert not torch.equal(orders[0], orders[1]), "a new permutation every epoch"
    loader.set_epoch(0)
    assert torch.equal(torch.cat([i for _, i in loader]), orders[0]), "same (seed, epoch), same batches"


def test_feature_batches_are_standardized_and_their_own_second_view():
    """Feature vectors get no augmentation: the second view a method asks for is the batch itself."""
    features = np.random.default_rng(0).normal(size=(10, 3)) * [1, 10, 100] + 5
    mean, std = features.mean(0), features.std(0)
    loader = TensorLoader(features, 4, mean, std, shuffle=True, seed=3, indices=np.arange(1, 10), second_view="weak",
                          augment=True)
    batches = list(loader)
    assert [len(indices) for _, indices, _ in batches] == [4, 4, 1]
    assert sorted(torch.cat([indices for _, indices, _ in batches]).tolist()) == list(range(1, 10))
    for inputs, indices, second in batches:
        np.testing.assert_allclose(inputs.numpy(), (features[indices.numpy()] - mean) / std, rtol=1e-5, atol=1e-5)
        assert torch.equal(second, inputs)


def test_pipeline_normalizes_and_keeps_indices_aligned(mnist5k):
    loader = DaliLoader(mnist5k.x_train, 500, mnist5k.mean, mnist5k.std)
    images, indices = next(iter(loader))
    expected = (mnist5k.x_train[indices.numpy(), :, :, 0].astype(np.float32) - mnist5k.mean[0]) / mnist5k.std[0]
    np.testing.assert_allclose(images[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_evaluation_batches_are_the_normalized_images_in_order(mnist5k):
    """Un-augmented batches of in-memory images (the trainer's evaluation passes) are gathered
    and normalized by torch: the images of their indices in order, channels_last, the values
    DALI's pipeline gives."""
    data = TrainingData("mnist5k", mnist5k.x_train, mnist5k.y_train, 10, mnist5k.mean, mnist5k.std)
    subset = np.arange(100, 1300)
    loader = data.loader(data.x_train, 500, "cpu", indices=subset, augment=False)
    assert isinstance(loader, ImageArrayLoader)
    batches = list(loader)
    assert [len(i) for _, i in batches] == [500, 500, 200]
    assert torch.cat([i for _, i in batches]).tolist() == subset.tolist()
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in batches)
    images = torch.cat([x for x, _ in batches])
    expected = (mnist5k.x_train[subset, :, :, 0].astype(np.float32) - mnist5k.mean[0]) / mnist5k.std[0]
    np.testing.assert_allclose(images[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    dali = torch.cat([x for x, _ in DaliLoader(mnist5k.x_train, 500, mnist5k.mean, mnist5k.std, indices=subset)])
    torch.testing.assert_close(images, dali, rtol=0, atol=1e-6)
    assert not isinstance(data.loader(data.x_train, 500, "cpu", augment=True), ImageArrayLoader)
    with pytest.raises(ValueError, match="uint8"):
        ImageArrayLoader(mnist5k.x_train.astype(np.float32), 500, mnist5k.mean, mnist5k.std)


def test_augmentation_is_a_padded_random_crop(mnist5k):
    plain = DaliLoader(mnist5k.x_train, 256, (0.0,), (1.0,))
    augmented = DaliLoader(mnist5k.x_train, 256, (0.0,), (1.0,), augment=True, seed=1)
    (x, i), (xa, ia) = next(iter(plain)), next(iter(augmented))
    assert torch.equal(i, ia)
    shifted = 0
    for a, b in zip(x[:, 0], xa[:, 0]):
        # Each augmented image is the original shifted by at most pad = 3 pixels, zeros filled in.
        matches = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
                   if torch.equal(b, shift(a, dy, dx))]
        assert matches, "an augmented image must be a shifted copy of its original"
        shifted += matches[0] != (0, 0)
    assert shifted > 128


def is_shifted_copy(original, view, pad=3):
    return any(torch.equal(view, shift(original, dy, dx)) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1))


def test_weak_second_view_is_another_independent_crop(mnist5k):
    plain = DaliLoader(mnist5k.x_train, 128, (0.0,), (1.0,))
    loader = DaliLoader(mnist5k.x_train, 128, (0.0,), (1.0,), augment=True, seed=2, second_view="weak")
    (x, i), (first, ia, second) = next(iter(plain)), next(iter(loader))
    assert torch.equal(i, ia) and second.shape == first.shape
    assert all(is_shifted_copy(a, b) for a, b in zip(x[:, 0], second[:, 0]))
    differ = sum(not torch.equal(a, b) for a, b in zip(first, second))
    assert differ > 64, "the two views are drawn independently"


@pytest.mark.parametrize("channels", [1, 3])
def test_strong_second_view_is_rand_augmented_and_reproducible(channels):
    images = np.random.default_rng(0).integers(0, 256, (64, 16, 16, channels), dtype=np.uint8)
    plain = DaliLoader(images, 64, (0.0,) * channels, (1.0,) * channels)
    loader = DaliLoader(images, 64, (0.0,) * channels, (1.0,) * channels, augment=True, seed=4, second_view="strong")
    (x, _), (first, _, strong) = next(iter(plain)), next(iter(loader))
    assert strong.shape == first.shape == x.shape
    # The first view is only cropped; RandAugment changes pixel values or geometry beyond a shift.
    assert all(is_shifted_copy(a[0], b[0]) for a, b in zip(x, first))
    assert sum(not is_shifted_copy(a[0], b[0]) for a, b in zip(x, strong)) > 32
    (_, _, again) = next(iter(loader))
    assert torch.equal(strong, again), "same (seed, epoch), same augmentation"
    loader.set_epoch(1)
    (_, _, later) = next(iter(loader))
    assert sum(not torch.equal(a, b) for a, b in zip(strong, later)) > 48, "each epoch draws new ops"


def test_rand_augment_choices_pick_every_op_and_sign_evenly():
    suite = rand_augment_suite(3)
    assert len(rand_augment_suite(1)) == len(suite) - 1 and "color" not in [op.name for op in rand_augment_suite(1)]
    choices = rand_augment_choices(3, 0, np.arange(20_000), len(suite))
    assert len(choices) == 2 * RAND_AUGMENT_OPS and all(c.dtype == np.int32 and c.shape == (20_000,) for c in choices)
    for op, sign in zip(choices[0::2], choices[1::2]):
        counts = np.bincount(op, minlength=len(suite))
        assert len(counts) == len(suite) and np.abs(counts / 20_000 * len(suite) - 1).max() < 0.1
        assert set(np.unique(sign)) == {0, 1} and abs(sign.mean() - 0.5) < 0.02
    assert (choices[0] != choices[2]).mean() > 0.9, "the ops applied in turn are drawn independently"
    assert all(np.array_equal(a[[7, 3]], b) for a, b in zip(choices, rand_augment_choices(3, 0, [7, 3], len(suite))))


def by_index(loader, view=0):
    """{sample index: its image in view `view`} over one epoch of `loader`."""
    return {int(i): x for batch in loader for x, i in zip(batch[0 if view == 0 else 2], batch[1])}


def test_sample_uniforms_hash_only_seed_epoch_index_and_view():
    u = sample_uniforms(7, 3, np.arange(10_000), views=2)
    assert u.shape == (2, 3, 10_000) and u.dtype == np.float32 and 0 <= u.min() and u.max() < 1
    assert np.allclose(u.mean(axis=2), 0.5, atol=0.01)
    assert np.abs(np.corrcoef(u.reshape(6, -1)) - np.eye(6)).max() < 0.03, "the 2 views x 3 draws are independent"
    assert np.array_equal(sample_uniforms(7, 3, [9_999, 42]), u[:1, :, [9_999, 42]]), "the batch does not matter"
    assert (sample_uniforms(8, 3, np.arange(10_000), 2) != u).mean() > 0.99
    assert (sample_uniforms(7, 4, np.arange(10_000), 2) != u).mean() > 0.99


@pytest.mark.parametrize("second_view", ["weak", "strong"])
def test_a_samples_augmentation_does_not_depend_on_its_batch(mnist5k, second_view):
    # The same seed, other batch sizes, order and neighbours: the same crops and flips of both
    # views, and the same RandAugment ops of a strong one.
    options = dict(augment=True, flip=True, seed=5, second_view=second_view)
    one = DaliLoader(mnist5k.x_train, 32, (0.0,), (1.0,), shuffle=True, indices=np.arange(100), **options)
    other = DaliLoader(mnist5k.x_train, 20, (0.0,), (1.0,), indices=np.arange(50, 150), **options)
    for view in (0, 1):
        a, b = by_index(one, view), by_index(other, view)
        assert all(torch.equal(a[i], b[i]) for i in range(50, 100))
    alone = DaliLoader(mnist5k.x_train, 100, (0.0,), (1.0,), augment=True, flip=True, seed=5, indices=np.arange(100))
    a, b = by_index(one), by_index(alone)
    assert all(torch.equal(a[i], b[i]) for i in range(100)), "view 0 is the same with or without a second view"


def test_each_epoch_has_new_crops_and_an_epoch_repeats(mnist5k):
    loader = DaliLoader(mnist5k.x_train, 128, (0.0,), (1.0,), augment=True, flip=True, seed=6, indices=np.arange(500))
    epoch0 = by_index(loader)
    loader.set_epoch(1)
    epoch1 = by_index(loader)
    assert sum(not torch.equal(epoch0[i], epoch1[i]) for i in epoch0) > 450
    loader.set_epoch(0)
    assert all(torch.equal(epoch0[i], x) for i, x in by_index(loader).items()), "the reused pipeline keeps no state"


def test_flips_take_half_the_samples_and_crops_take_every_position():
    images = np.random.default_rng(1).integers(0, 256, (1000, 16, 16, 1), dtype=np.uint8)  # no two alike
    loader = DaliLoader(images, 128, (0.0,), (1.0,), augment=True, flip=True, seed=7)
    views = by_index(loader)
    views = np.stack([views[i][0].numpy() for i in range(1000)])
    padded = np.pad(images[..., 0].astype(np.float32), ((0, 0), (2, 2), (2, 2)))  # pad = 16 // 8
    found = np.full(1000, -1)
    for k, (flipped, dy, dx) in enumerate(np.ndindex(2, 5, 5)):
        window = padded[:, dy:dy + 16, dx:dx + 16]
        found[((window[:, :, ::-1] if flipped else window) == views).all(axis=(1, 2))] = k
    assert (found >= 0).all(), "each view is a padded crop of its image, flipped or not"
    assert abs((found >= 25).mean() - 0.5) < 0.05
    assert len(np.unique(found % 25)) == 25


def test_second_view_must_be_known(mnist5k):
    with pytest.raises(ValueError, match="second_view must be one of"):
        DaliLoader(mnist5k.x_train, 128, (0.0,), (1.0,), second_view="medium")


def shift(image, dy, dx):
    out = torch.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h - max(dy, 0),
                                                                      max(-dx, 0):w - max(dx, 0)]
    return out


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    parts = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28)),
             "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 20),
             "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (5, 28, 28)),
             "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 5)}
    (tmp_path / "raw").mkdir()
    for name, array in parts.items():
        write_idx(tmp_path / "raw" / name, array)
    data = load_dataset("fashion_mnist", str(tmp_path))
    assert np.array_equal(data.x_train[..., 0], parts["train-images-idx3-ubyte.gz"])
    assert np.array_equal(data.y_test, parts["t10k-labels-idx1-ubyte.gz"])
    # A file that is not gzip, and one cut short, are named (a BadGzipFile traceback, a reshape error before)
    labels = tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=rf"^{labels}: not a gzipped idx file \(Not a gzipped file"):
        load_dataset("fashion_mnist", str(tmp_path))
    write_idx(labels, parts["t10k-labels-idx1-ubyte.gz"])
    images = tmp_path / "raw" / "t10k-images-idx3-ubyte.gz"
    with gzip.open(images, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + np.asarray([5, 28, 28], dtype=">u4").tobytes() + bytes(100))
    with pytest.raises(ValueError, match=rf"^{images}: not a gzipped idx file \(100 values for the shape \[5, 28, "
                                         r"28\] its header gives\)"):
        load_dataset("fashion_mnist", str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_the_debian_package():
    data = load_dataset("fashion_mnist", FASHION_MNIST)
    assert data.x_train.shape == (60000, 28, 28, 1) and data.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(data.y_train).tolist() == [6000] * 10


def test_cifar_pickle_folders(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, 4))}
        batches.append(batch)
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    data = load_dataset("cifar10", str(tmp_path))
    assert data.x_train.shape == (20, 32, 32, 3) and data.flip
    # channel-planar rows -> HWC: pixel (0, 0) of image 0 has R, G, B at offsets 0, 1024, 2048
    assert data.x_train[0, 0, 0].tolist() == [batches[0]["data"][0][k] for k in (0, 1024, 2048)]

    root100 = tmp_path / "c100" / "cifar-100-python"
    root100.mkdir(parents=True)
    fine = np.arange(100)
    for name in ("train", "test"):
        with open(root100 / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (100, 3072), dtype=np.uint8), "fine_labels": list(fine),
                         "coarse_labels": list(fine // 5)}, f)
    data100 = load_dataset("cifar100", str(tmp_path / "c100"))
    assert data100.num_classes == 100 and data100.fine_to_coarse.tolist() == (fine // 5).tolist()
    assert data.class_names[3] == "cat" and data100.class_names is None
    with open(root100 / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine{c}" for c in fine]}, f)
    assert load_dataset("cifar100", str(tmp_path / "c100")).class_names[7] == "fine7"


def test_npz_arrays(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "data.npz"
    np.savez(path, x=rng.integers(0, 256, (50, 16, 16), dtype=np.uint8), y=rng.integers(0, 3, 50))
    data = load_dataset("npz", str(path))
    assert data.x_train.shape == (40, 16, 16, 1) and len(data.y_test) == 10 and data.num_classes == 3


@pytest.mark.skipif(not os.path.exists(CIFAR10_JPEG), reason="needs ../shared/data beside the checkout")
def test_cifar10_jpeg_archive_decodes_and_matches_cifar10n():
    from engine.data.cifar_n import load_cifar_n_labels

    archive = np.load(CIFAR10_JPEG)
    offsets = archive["train_offsets"]
    jpeg = archive["train_jpeg"]
    images = decode_images(16, lambda i: encoded_image(jpeg[offsets[i]:offsets[i + 1]], f"#{i}"))
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.uint8 and images.std() > 20
    y_train = archive["y_train"]
    rates = {v: (load_cifar_n_labels("cifar10n", v, y_train) != y_train).mean() for v in ("aggre", "worst")}
    assert abs(rates["aggre"] - 0.090) < 0.001 and abs(rates["worst"] - 0.402) < 0.001
    with pytest.raises(ValueError, match="original order"):
        load_cifar_n_labels("cifar10n", "aggre", y_train[::-1].copy())


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (9, 5, 7, 3), (300, 32, 32, 3), (3, 200, 300, 1)])
def test_channel_stats_match_numpy_chunk_by_chunk(monkeypatch, shape):
    x = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    x[0] = 255  # the largest squares
    channels = [x[..., c].astype(np.float64) for c in range(shape[-1])]
    for pixels in (datasets.STATS_PIXELS, 50):  # one chunk or more, and many (chunks cut through images)
        monkeypatch.setattr(datasets, "STATS_PIXELS", pixels)
        mean, std = channel_stats(x)
        np.testing.assert_allclose(mean, [c.mean() for c in channels], rtol=1e-12, atol=0)
        np.testing.assert_allclose(std, [c.std() + 1e-6 for c in channels], rtol=1e-12, atol=0)
    assert channel_stats(np.full((4, 3, 3, 3), 255, np.uint8)) == ((255.0,) * 3, (1e-6,) * 3)


def test_cifar10_finds_the_jpeg_archive_in_the_data_folder(tmp_path, monkeypatch):
    from engine.data import datasets

    opened = []
    monkeypatch.setattr(datasets, "load_cifar10_jpeg", opened.append)
    (tmp_path / "cifar10_jpeg_ordered.npz").write_bytes(b"")
    datasets.load_cifar10(str(tmp_path))
    datasets.load_cifar10(str(tmp_path / "cifar10_jpeg_ordered.npz"))
    assert opened == [str(tmp_path / "cifar10_jpeg_ordered.npz")] * 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        datasets.load_cifar10(str(tmp_path / "empty"))


def test_a_cifar10_jpeg_archive_that_does_not_fit_together_is_refused_naming_it(tmp_path):
    """Float offsets raised a TypeError, labels 10 and up or floats passed, and a bad image was
    named "image #0" without the archive."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    blobs = []
    for i, image in enumerate(images):
        write_bmp(tmp_path / f"{i}.bmp", image)
        blobs.append((tmp_path / f"{i}.bmp").read_bytes())
    jpeg, offsets = np.frombuffer(b"".join(blobs), np.uint8), np.cumsum([0] + [len(b) for b in blobs])
    good = dict(train_jpeg=jpeg, train_offsets=offsets, y_train=np.array([1, 2, 3]), test_jpeg=jpeg,
                test_offsets=offsets, y_test=np.array([4, 5, 6]))
    path = tmp_path / "cifar10_jpeg_ordered.npz"
    np.savez(path, **good)
    assert np.array_equal(load_dataset("cifar10", str(path)).x_test, images)
    for change in ({"train_offsets": offsets.astype(float)}, {"y_test": np.array([4, 5, 10])},
                   {"y_train": np.array([1.0, 2.0, 3.0])}, {"test_offsets": offsets[::-1]}):
        np.savez(path, **(good | change))
        with pytest.raises(ValueError, match=rf"^cifar10 {path}: (train|test)_jpeg .* do not fit together"):
            load_dataset("cifar10", str(path))
    np.savez(path, **(good | {"test_jpeg": np.concatenate([jpeg[:offsets[1]], np.zeros(len(jpeg) - offsets[1],
                                                                                          np.uint8)])}))
    with pytest.raises(ValueError, match=rf"^cifar10 {path}: test image #1: not a decodable image"):
        load_dataset("cifar10", str(path))


def write_bmp(path, rgb):
    """A 24-bit BMP (rows bottom-up, BGR, rows padded to 4 bytes): an encoded image written
    without any imaging library."""
    height, width, _ = rgb.shape
    row_size = (width * 3 + 3) & ~3
    rows = b"".join(rgb[y, :, ::-1].tobytes() + b"\0" * (row_size - width * 3) for y in reversed(range(height)))
    header = b"BM" + np.array([54 + len(rows), 0, 54], dtype="<u4").tobytes()
    info = np.array([40, width, height], dtype="<i4").tobytes() + np.array([1, 24], dtype="<u2").tobytes()
    info += np.array([0, len(rows), 2835, 2835, 0, 0], dtype="<u4").tobytes()
    with open(path, "wb") as f:
        f.write(header + info + rows)


def test_image_folder_and_file_list(tmp_path):
    rng = np.random.default_rng(4)
    images = {}
    for split, count in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog", "emu"):
            (tmp_path / "folder" / split / cls).mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                path = tmp_path / "folder" / split / cls / f"{i}.bmp"
                write_bmp(path, image)
                images[str(path)] = image
    data = load_dataset("folder", str(tmp_path / "folder"))
    assert data.x_train.shape == (12, 32, 32, 3) and data.num_classes == 3
    assert data.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and data.class_names == ["cat", "dog", "emu"]
    assert np.array_equal(data.x_train[4], images[str(tmp_path / "folder" / "train" / "dog" / "0.bmp")])

    for split in ("train", "test"):
        with open(tmp_path / "folder" / f"{split}.txt", "w") as f:
            for path in images:
                if f"/{split}/" in path:
                    f.write(f"{os.path.relpath(path, tmp_path / 'folder')} {'cat dog emu'.split().index(path.split('/')[-2])}\n")
    listed = load_dataset("filelist", str(tmp_path / "folder"))
    assert np.array_equal(listed.x_test, data.x_test) and np.array_equal(listed.y_train, data.y_train)
    with open(tmp_path / "folder" / "test.txt", "a") as f:
        f.write("no-label-here.bmp\n")
    with pytest.raises(ValueError, match=r"test.txt:7: expected 'path label'"):
        load_dataset("filelist", str(tmp_path / "folder"))


def bmp_tree(root, layout):
    """8x8 BMPs of three classes in `layout`: "folder" (root/<class>/, 1 in 5 held out),
    "splits" (root/train/<class>/ and root/test/<class>/) or "filelist" (train.txt listing them
    in a shuffled order); returns {path relative to root: image} of the training candidates."""
    rng = np.random.default_rng(5)
    images = {}
    for split in ("train", "test") if layout == "splits" else ("",):
        for cls in ("cat", "dog", "emu"):
            os.makedirs(root / split / cls)
            for i in range(5):
                images[os.path.join(split, cls, f"{i}.bmp")] = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                write_bmp(root / split / cls / f"{i}.bmp", images[os.path.join(split, cls, f"{i}.bmp")])
    if layout == "filelist":
        listed = rng.permutation(sorted(images))
        for split, paths in (("train", listed[3:]), ("test", listed[:3])):
            (root / f"{split}.txt").write_text("".join(f"{p} {'cat dog emu'.split().index(p.split('/')[0])}\n"
                                                       for p in paths))
        (root / "classes.txt").write_text("cat\ndog\nemu\n")
        images = {path: images[path] for path in listed[3:]}
    return {path: image for path, image in images.items() if not path.startswith("test/")}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("layout", ["folder", "splits", "filelist"])
def test_the_label_issues_name_each_training_samples_file(tmp_path, layout, stream):
    """train_paths (the label-issues table's path) follow the samples through the held-out split
    and the in-memory decoding: each names its sample's file, each training file once."""
    images = bmp_tree(tmp_path, layout)
    data = load_dataset("filelist" if layout == "filelist" else "folder", str(tmp_path), image_size=8, stream=stream)
    paths = data.train_paths.tolist()
    assert len(paths) == len(set(paths)) == len(data.y_train) == {"folder": 12, "splits": 15, "filelist": 12}[layout]
    assert set(paths) <= set(images) and (layout == "folder" or set(paths) == set(images))
    assert [data.class_names[label] for label in data.y_train] == [path.split("/")[-2] for path in paths]
    if stream:
        assert data.x_train.paths.tolist() == paths
    else:
        assert all(np.array_equal(x, images[path]) for x, path in zip(data.x_train, paths))


def folder_run(tmp_path, *flags):
    """The command line on a folder of 15 BMPs (12 for training): its exit code."""
    return main(["--device", "cpu", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--image-size", "8",
                 "--model", "small_cnn", "--epochs", "1", "--out", str(tmp_path / "run"), *flags])


def test_the_command_line_trains_on_a_users_folder_as_labeled(tmp_path, capsys):
    """The user's own labels are what is checked: by default the run adds no noise to them and
    takes none as known to be right, so no true_label and no detection scores (nor their plot);
    each row names its file."""
    images = bmp_tree(tmp_path / "data", "folder")
    assert folder_run(tmp_path) == 0
    table = pd.read_csv(tmp_path / "run" / "label_issues.csv")
    result, outputs = capsys.readouterr().out.strip().splitlines()[-2:]
    assert result.endswith(f", {table['is_label_issue'].mean():.1%} of the training labels flagged as issues")
    assert outputs == f"outputs in {tmp_path / 'run'}: config.yaml metrics.csv summary.json label_issues.csv " \
                      "checkpoint.pt"
    assert list(table.columns[:3]) == ["index", "path", "given_label"] and "true_label" not in table
    assert set(table["path"]) <= set(images) and table["path"].is_unique and len(table) == 12
    assert (table["given_class"] == table["path"].str.split("/").str[0]).all()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["true_labels_known"] == 0 and summary["det_f1"] is None and summary["true_noise_rate"] is None
    assert "  noise: none\n" in (tmp_path / "run" / "config.yaml").read_text()


def test_every_label_of_a_folder_is_scored_when_none_is_held_out(tmp_path):
    """--test-fraction 0: all 15 images are trained on and get a row; there is no test accuracy."""
    images = bmp_tree(tmp_path / "data", "folder")
    assert folder_run(tmp_path, "--test-fraction", "0") == 0
    table = pd.read_csv(tmp_path / "run" / "label_issues.csv")
    assert sorted(table["path"]) == sorted(images) and len(images) == 15
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test_acc"] is None
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["test_acc"].isna().all()


def test_synthetic_noise_on_a_users_folder_is_asked_for_and_measured(tmp_path):
    """--noise symmetric takes the folder's labels as the true ones and corrupts half of them."""
    bmp_tree(tmp_path / "data", "folder")
    assert folder_run(tmp_path, "--noise", "symmetric", "--noise-rate", "0.5") == 0
    table = pd.read_csv(tmp_path / "run" / "label_issues.csv")
    assert (table["true_label"].map("cat dog emu".split().__getitem__) == table["path"].str.split("/").str[0]).all()
    assert (table["given_label"] != table["true_label"]).sum() == 6
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["true_noise_rate"] == 0.5


def test_a_folders_clean_paths_give_l2b_its_trusted_labels(tmp_path, capsys):
    """clean_paths.txt names the images whose folder labels were checked: L2B meta-learns on
    them, the hold-out leaves them in training, the table marks them and flags none of them; a
    held-out subset is then refused."""
    bmp_tree(tmp_path / "data", "folder")
    trusted = ["cat/1.bmp", "dog/0.bmp", "emu/4.bmp", "emu/2.bmp"]
    (tmp_path / "data" / "clean_paths.txt").write_text(f"{trusted[0]}\n\n./{trusted[1]}\n{trusted[2]}\n"
                                                       f"{trusted[3]}\n{trusted[0]}\n")
    for fraction in (None, 0.5, 0.0):  # 3, 7 and 0 of the 11 untrusted images held out
        data = load_dataset("folder", str(tmp_path / "data"), test_fraction=fraction)
        assert sorted(data.train_paths[data.trusted_train]) == sorted(trusted)
        assert len(data.y_test) == {None: 3, 0.5: 7, 0.0: 0}[fraction]
    assert folder_run(tmp_path, "--method", "l2b", "--warmup-epochs", "0", "--batch-size", "4") == 0
    table = pd.read_csv(tmp_path / "run" / "label_issues.csv")
    assert sorted(table.loc[table["clean_subset"], "path"]) == sorted(trusted)
    assert not table.loc[table["clean_subset"], "is_label_issue"].any() and len(table) == 12
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["clean_subset_size"] == 4
    # config.yaml records the subset's size (clean_size 4): rerunning it is the same run
    assert main(["--config", str(tmp_path / "run" / "config.yaml"), "--out", str(tmp_path / "rerun")]) == 0
    assert json.loads((tmp_path / "rerun" / "summary.json").read_text()) == summary
    capsys.readouterr()
    assert folder_run(tmp_path, "--method", "l2b", "--clean-size", "3", "--overwrite") == 2
    assert "has its own clean subset (clean_paths.txt, 4 samples), which the run uses" in capsys.readouterr().err


@pytest.mark.parametrize("layout, line", [("folder", "test/cat/0.bmp"), ("splits", "test/cat/0.bmp"),
                                          ("splits", "cat/0.bmp"), ("folder", "/cat/0.bmp")])
def test_a_clean_path_that_is_no_training_image_is_named(tmp_path, layout, line):
    """A test image, a path without its train/ folder or an absolute one is refused by its line."""
    bmp_tree(tmp_path, layout)
    (tmp_path / "clean_paths.txt").write_text(f"{'train/' if layout == 'splits' else ''}dog/1.bmp\n{line}\n")
    example = os.path.join("train" if layout == "splits" else "", "cat", "0.bmp")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'clean_paths.txt'}:2: {line} is not a training image of the "
                                         f"folder; list training images by their paths relative to {tmp_path}, as "
                                         f"{example}$"):
        load_dataset("folder", str(tmp_path))


@pytest.mark.parametrize("layout", ["folder", "splits"])
def test_a_clean_subset_of_every_training_image_is_refused(tmp_path, layout):
    """Nothing would be left to train on and score (engine.fit refuses such clean_indices alike)."""
    images = bmp_tree(tmp_path, layout)
    (tmp_path / "clean_paths.txt").write_text("".join(f"{path}\n" for path in images))
    with pytest.raises(ValueError, match=f"^{tmp_path / 'clean_paths.txt'}: all 15 samples are in the clean subset"):
        load_dataset("folder", str(tmp_path), test_fraction=0.0 if layout == "folder" else None)


@pytest.mark.parametrize("layout, other", [("folder", "clean_indices.npy"), ("filelist", "clean_paths.txt")])
def test_the_other_layouts_file_of_trusted_labels_is_refused_not_ignored(tmp_path, layout, other):
    bmp_tree(tmp_path, layout)
    (tmp_path / other).write_bytes(b"")
    own = {"folder": "clean_paths.txt", "filelist": "clean_indices.npy"}[layout]
    with pytest.raises(ValueError, match=f"^{layout} {tmp_path / other}: a {layout} names its trusted labels in "
                                         f"{own} in the folder .*, not in {other}$"):
        load_dataset(layout, str(tmp_path))


@pytest.mark.parametrize("flags, message", [
    (["--noise-rate", "0.2"], "--noise-rate applies to --noise symmetric or asymmetric, not to --noise none, the "
                              "default on dataset folder, whose labels are trained on as given"),
    (["--noise", "asymmetric", "--noise-include-true"], "--noise-include-true applies to --noise symmetric, not to "
                                                        "--noise asymmetric"),
    (["--noise-file", "labels.npy"], "--noise-file applies to --noise file, not to --noise none, the default"),
    (["--method", "l2b", "--clean-size", "6"],
     "--clean-size / --clean-fraction: the labels of --data-dir {data} are its noisy ones (--noise none trains on "
     "them as given), so a held-out subset would not have trusted labels; name the samples whose labels you trust "
     "with clean_paths.txt in the folder (the images' paths relative to it, one per line)"),
    (["--method", "l2b"],  # the preset's clean subset: the method's need, not a flag the user gave
     "--method l2b needs a clean subset, but the labels of --data-dir {data} are its noisy ones"),
    (["--method", "l2b", "--clean-size", "0"],  # what L2B's own error asks for, the folder's way
     "--method l2b needs a clean subset, but the labels of --data-dir {data} are its noisy ones (--noise none trains "
     "on them as given), so a held-out subset would not have trusted labels; name the samples whose labels you trust "
     "with clean_paths.txt in the folder"),
])
def test_noise_options_that_a_users_folder_would_ignore_are_refused(tmp_path, capsys, flags, message):
    """A noise option the run's noise would not use, and a "clean" subset held out of labels
    that no one has checked, end the run before training with one line naming the flag."""
    bmp_tree(tmp_path / "data", "folder")
    try:
        code = folder_run(tmp_path, *flags)
    except SystemExit as exit_:  # argparse's error
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("python -m engine.train: error: ")
    assert message.format(data=tmp_path / "data") in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
