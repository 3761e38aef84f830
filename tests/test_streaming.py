"""Image files streamed from disk (engine/data/streaming.py): shapes, every sample once per epoch
and per process share, augmentation by sample index, exact resume, bad files named, the CLI end to
end, and memory that does not grow with the number of images."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from engine.config import ConfigError, DataConfig
from engine.data import datasets, pipeline, streaming
from engine.data.datasets import DataFileError, ImageFiles, load_dataset
from engine.data.pipeline import DaliLoader
from engine.data.streaming import AREA, CROP_DRAWS, RATIO, StreamingLoader, crop_draws, crop_window
from engine.data.training_data import TrainingData
from engine.distributed import Processes
from engine.train import main
from test_data import by_index

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("ant", "bee", "cat")
SIZE = 64
PLAIN = ((0.0,) * 3, (1.0,) * 3)  # mean, std: no normalization


def write_jpegs(root, count=20, seed=0):
    """root/<class>/<i>.jpg: CIFAR-like 12x12 (every third 12x9) random images upscaled 8x, so
    96x96 or 96x72; returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for i in range(count):
            small = rng.integers(0, 256, (9 if i % 3 == 0 else 12, 12, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((small.shape[1] * 8, small.shape[0] * 8), Image.BICUBIC)
            paths.append(str(root / cls / f"{i}.jpg"))
            image.save(paths[-1], quality=90)
    return paths


def write_lists(root, paths):
    """root/train.txt and root/test.txt listing the images (every fifth in test)."""
    for split, keep in (("train", lambda i: i % 5), ("test", lambda i: not i % 5)):
        lines = [f"{os.path.relpath(p, root)} {CLASSES.index(p.split(os.sep)[-2])}\n"
                 for i, p in enumerate(paths) if keep(i)]
        (root / f"{split}.txt").write_text("".join(lines))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    write_lists(root, write_jpegs(root))
    return root


@pytest.fixture(scope="module")
def files(tree):
    return load_dataset("folder", str(tree), image_size=SIZE, stream=True).x_train


def loader(files, batch_size=16, **options):
    options = dict(augment=True, flip=True, shuffle=True, seed=3) | options
    return StreamingLoader(files, batch_size, *PLAIN, **options)


def test_image_size_decides_streaming(tree):
    data = load_dataset("folder", str(tree), image_size=SIZE, stream=True)
    assert isinstance(data.x_train, ImageFiles) and isinstance(data.x_test, ImageFiles)
    assert len(data.x_train) == 48 and len(data.x_test) == 12 and data.image_shape == (SIZE, SIZE, 3)
    assert min([*data.x_train.paths, *data.x_test.paths]) == "ant/0.jpg", "relative paths: the folder can move"
    assert len(data.mean) == len(data.std) == 3 and all(50 < m < 200 for m in data.mean)
    assert isinstance(load_dataset("folder", str(tree), image_size=96).x_train, ImageFiles), "streams above 64 px"
    held = load_dataset("folder", str(tree), image_size=SIZE)
    assert held.x_train.shape == (48, SIZE, SIZE, 3) and np.array_equal(held.y_train, data.y_train)
    assert load_dataset("folder", str(tree)).x_train.shape == (48, 32, 32, 3), "in memory at 32 px by default"
    listed = load_dataset("filelist", str(tree), image_size=SIZE, stream=True)
    assert len(listed.x_train) == 48 and listed.x_train.lines[:2].tolist() == [1, 2]
    training = TrainingData("folder", data.x_train, data.y_train, 3, data.mean, data.std, x_test=data.x_test,
                            y_test=data.y_test, flip=True)
    assert training.input_shape == (SIZE, SIZE, 3) and not training.features


@pytest.mark.parametrize("options, error", [
    (dict(dataset="folder", image_size=4), r"image_size must be >= 8, got 4"),
    (dict(dataset="mnist5k", image_size=64), r"image_size applies to image files \(dataset folder or filelist\), "
                                             r"not to dataset mnist5k"),
    (dict(dataset="mnist5k", stream=True), r"stream applies to image files"),
    (dict(dataset="mnist5k", stream=False), r"stream applies to image files")])  # --no-stream: not ignored either
def test_data_config_checks_image_size_and_stream(tree, options, error):
    assert DataConfig(dataset="folder", data_dir=str(tree), image_size=224, stream=False).image_size == 224
    with pytest.raises(ConfigError, match=rf"^DataConfig.{error}"):
        DataConfig(data_dir=str(tree), **options)


def test_batches_have_the_shapes_and_types_of_the_in_memory_loader(files):
    images, indices = next(iter(loader(files)))
    assert images.dtype == torch.float32 and images.shape == (16, 3, SIZE, SIZE) and indices.dtype == torch.int64
    images, indices = next(iter(loader(files, 20, augment=False, shuffle=False)))
    assert images.shape == (20, 3, SIZE, SIZE) and indices.tolist() == list(range(20))
    first, indices, second = next(iter(loader(files, second_view="weak")))
    assert first.shape == second.shape == (16, 3, SIZE, SIZE) and not torch.equal(first, second)
    *_, strong = next(iter(loader(files, second_view="strong")))
    assert strong.shape == first.shape


def test_without_augmentation_a_second_view_is_the_evaluation_view(files):
    """augment=False (--no-augment) with a method's second view (PMNAR, BLDR): the evaluation's
    resize and center crop, RandAugment on a strong one, as the in-memory pipeline gives (there was
    none: the methods failed on a missing view)."""
    plain, _ = next(iter(loader(files, augment=False, shuffle=False)))
    first, _, weak = next(iter(loader(files, augment=False, shuffle=False, second_view="weak")))
    assert torch.equal(first, plain) and torch.equal(weak, plain)
    first, indices, strong = next(iter(loader(files, augment=False, shuffle=False, second_view="strong")))
    assert torch.equal(first, plain) and strong.shape == plain.shape and indices.tolist() == list(range(16))
    changed = (strong - plain).abs().flatten(1).amax(1) > 0.1
    assert changed.float().mean() > 0.5, "RandAugment changes most images"


def numpy_crops(seed, indices, aspect, flip=True):
    """(start [B, 2] as (x, y), size [B, 2] as (width, height), mirror) of the crops the pipeline
    takes from images of height / width `aspect`."""
    from engine.data.pipeline import sample_uniforms

    *draws, mirror = crop_draws(sample_uniforms(seed, 0, indices, 1, CROP_DRAWS)[0], flip)
    start_x, start_y, width, height = crop_window(*draws, np.float32(aspect), np.sqrt, np.minimum)
    return np.stack([start_x, start_y], 1), np.stack([width, height], 1), mirror


@pytest.mark.parametrize("aspect", [1.0, 0.5, 4 / 3])
def test_crops_are_random_resized_crops_inside_the_image(aspect):
    start, size, mirror = numpy_crops(1, np.arange(10_000), aspect)
    assert start.dtype == size.dtype == np.float32
    assert (start >= 0).all() and (start + size <= 1).all() and (size <= 1).all()
    area, ratio = size.prod(1), size[:, 0] / size[:, 1] / aspect  # width / height in pixels, for every crop
    assert np.allclose(area.min(), AREA[0], atol=0.01) and area.max() <= AREA[1] + 1e-6
    assert ratio.min() > RATIO[0] - 1e-4 and ratio.max() < RATIO[1] + 1e-4
    assert np.allclose([ratio.min(), ratio.max()], RATIO, atol=0.01)
    assert np.allclose(np.median(np.log(ratio)), 0, atol=0.02) and abs(mirror.mean() - 0.5) < 0.02


def gradient_png(path, width, height):
    """Red = 2 x column, green = 2 x row: a view's pixel values tell where in the image it lies."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    Image.fromarray(np.stack([2 * x, 2 * y, 0 * x], -1).astype(np.uint8)).save(path)


def test_views_land_where_their_crops_say(tmp_path):
    gradient_png(tmp_path / "wide.png", 120, 60)
    files = ImageFiles(str(tmp_path), np.array(["wide.png"] * 8), SIZE)
    (evaluation, _), = loader(files, 8, augment=False, shuffle=False)
    # Evaluation: the shorter side 60 -> 73 (64 * 8/7, so 120 x 60 -> 146 x 73), then the center 64 x 64
    # (from column 41 and row 4.5): pixel centers at columns 33.6 to 85.4 and rows 3.7 to 55.5 of the image.
    assert np.allclose(evaluation[0, 0, 0, [0, -1]], [2 * 33.6, 2 * 85.4], atol=2)
    assert np.allclose(evaluation[0, 1, [0, -1], 0], [2 * 3.7, 2 * 55.5], atol=2)
    (train, indices), = loader(files, 8, flip=False, shuffle=False)
    start, shape, _ = numpy_crops(3, indices.numpy(), 60 / 120, flip=False)
    first, last = (start + shape / (2 * SIZE)) * (120, 60), (start + shape - shape / (2 * SIZE)) * (120, 60)
    assert np.allclose(train[:, 0, 0, [0, -1]], 2 * np.stack([first[:, 0], last[:, 0]], 1) - 1, atol=3)
    assert np.allclose(train[:, 1, [0, -1], 0], 2 * np.stack([first[:, 1], last[:, 1]], 1) - 1, atol=3)


def test_every_sample_once_per_epoch_and_per_process_share(files):
    whole = loader(files, 10)
    shares = [loader(files, 10, processes=Processes(rank, 2)) for rank in range(2)]
    for epoch in range(2):
        for batches in (whole, *shares):
            batches.set_epoch(epoch)
        seen = [(x, i) for x, i in whole]
        assert sorted(torch.cat([i for _, i in seen]).tolist()) == list(range(48))
        parts = list(zip(*shares))
        assert len(parts) == len(seen) == 5
        for (x, i), ((x0, i0), (x1, i1)) in zip(seen, parts):
            assert torch.equal(torch.cat([i0, i1]), i) and torch.equal(torch.cat([x0, x1]), x)
    evaluation = [loader(files, 7, augment=False, shuffle=False, processes=Processes(rank, 2)) for rank in range(2)]
    assert torch.cat([i for share in evaluation for _, i in share]).tolist() == list(range(48))


def test_a_samples_augmentation_depends_on_its_index_not_its_batch(files):
    one = loader(files, 16, second_view="weak")
    other = loader(files, 10, shuffle=False, indices=np.arange(20, 48), second_view="weak")
    for view in (0, 1):
        a, b = by_index(one, view), by_index(other, view)
        assert all(torch.equal(a[i], b[i]) for i in range(20, 48))
    first, alone = by_index(one), by_index(loader(files, 48))
    assert all(torch.equal(first[i], alone[i]) for i in range(48)), "view 0 is the same with or without a second view"
    one.set_epoch(1)
    later = by_index(one)
    assert sum(not torch.equal(first[i], later[i]) for i in range(48)) >= 46, "new crops each epoch"


def test_epoch_two_of_a_fresh_loader_repeats_epoch_two_after_epochs_zero_and_one(files):
    ran = loader(files, 16, second_view="strong")
    for epoch in range(3):
        ran.set_epoch(epoch)
        batches = list(ran)
    fresh = loader(files, 16, second_view="strong")
    fresh.set_epoch(2)
    for a, b in zip(batches, fresh, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("in_memory", [False, True])
def test_a_batch_size_beyond_the_samples_gives_one_batch_of_them_all(files, in_memory):
    images = np.random.default_rng(0).integers(0, 256, (48, 8, 8, 3), dtype=np.uint8)
    huge = 3_000_000_000  # more than DALI's int32 batch size holds
    batches = DaliLoader(images, huge, *PLAIN, shuffle=True, augment=True) if in_memory else loader(files, huge)
    (x, indices), = list(batches)
    assert len(x) == 48 and sorted(indices.tolist()) == list(range(48))


@pytest.mark.parametrize("in_memory", [False, True])
def test_an_iteration_left_early_leaves_the_next_one_whole(files, in_memory):
    images = np.random.default_rng(0).integers(0, 256, (48, 8, 8, 3), dtype=np.uint8)
    batches = DaliLoader(images, 8, *PLAIN, shuffle=True, augment=True) if in_memory else loader(files, 8)
    whole = list(batches)
    next(iter(batches))  # left with batches in flight
    again = list(batches)
    assert all(torch.equal(x, y) for a, b in zip(whole, again, strict=True) for x, y in zip(a, b))


@pytest.mark.parametrize("in_memory", [False, True])
def test_batches_kept_by_the_caller_stay_whole(files, in_memory):
    # CPU batches are views of DALI's outputs (no copy): DALI must not reuse their memory.
    images = np.random.default_rng(0).integers(0, 256, (48, 8, 8, 3), dtype=np.uint8)
    batches = DaliLoader(images, 8, *PLAIN, shuffle=True, augment=True) if in_memory else loader(files, 8)
    kept = [(x, x.clone()) for x, _ in batches]
    list(batches)
    assert all(torch.equal(x, copy) for x, copy in kept)


@pytest.mark.parametrize("augment, second_view", [(False, None), (True, None), (True, "strong")])
def test_batches_decode_in_pieces_of_bounded_pixels_and_come_out_whole(files, monkeypatch, augment, second_view):
    whole = list(loader(files, 16, augment=augment, second_view=second_view))
    monkeypatch.setattr(pipeline, "DECODE_PIXELS", 20_000)  # two images of 96 x 96 or 96 x 72 at most
    pieces = []

    def pixel_chunks(images):
        for chunk in pipeline.pixel_chunks(images):
            pieces.append(len(chunk))
            yield chunk

    monkeypatch.setattr(streaming, "pixel_chunks", pixel_chunks)
    again = list(loader(files, 16, augment=augment, second_view=second_view))
    assert sum(pieces) == len(files) and max(pieces) == 2
    assert all(torch.equal(x, y) for a, b in zip(whole, again, strict=True) for x, y in zip(a, b, strict=True))


def test_an_undecodable_or_missing_file_is_named(tmp_path):
    paths = write_jpegs(tmp_path, count=10)
    write_lists(tmp_path, paths)
    listed = load_dataset("filelist", str(tmp_path), image_size=SIZE, stream=True).x_train
    every = ImageFiles(str(tmp_path), np.array([os.path.relpath(p, tmp_path) for p in paths]), SIZE)
    with open(paths[13], "r+b") as f:
        f.truncate(100)  # bee/3.jpg (line 11 of train.txt): its header survives, its data do not
    for files, where in ((every, ""), (listed, rf"{tmp_path}/train.txt:11: ")):
        with pytest.raises(DataFileError, match=rf"^{where}{tmp_path}/bee/3.jpg: not a decodable image \(empty, "
                                             r"truncated or corrupt\)$"):
            list(loader(files, 8))
    with pytest.raises(ValueError, match=rf"^{tmp_path}/train.txt:11: {tmp_path}/bee/3.jpg: not a decodable image"):
        load_dataset("filelist", str(tmp_path), image_size=SIZE, stream=True)  # its statistics decode a sample
    files = ImageFiles(str(tmp_path), np.array(["ant/0.jpg", "ant/gone.jpg"]), SIZE)
    with pytest.raises(DataFileError, match=rf"^{tmp_path}/ant/gone.jpg: cannot be read \(No such file or "
                                            r"directory\)$"):
        list(loader(files, 2, augment=False))


def test_a_bad_file_met_while_training_stops_the_command_line_with_one_line(tmp_path, monkeypatch, capsys):
    paths = write_jpegs(tmp_path / "data", count=5)
    with open(paths[7], "r+b") as f:
        f.truncate(100)
    # Only a sample of a large streamed data set is decoded before training: here one without the bad file.
    monkeypatch.setattr(datasets, "channel_stats", lambda x: PLAIN)
    code = main(["--device", "cpu", "--method", "ce", "--dataset", "folder", "--data-dir", str(tmp_path / "data"),
                 "--image-size", "16", "--stream", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err == (f"python -m engine.train: error: {tmp_path}/data/bee/2.jpg: not a decodable "
                                       f"image (empty, truncated or corrupt); training stopped: fix or remove the "
                                       f"file and start the run again with --overwrite\n")
    os.remove(paths[7])
    # The stopped run's checkpoint is of other data: continuing it is refused, starting over is not.
    args = ["--device", "cpu", "--method", "ce", "--dataset", "folder", "--data-dir", str(tmp_path / "data"),
            "--image-size", "16", "--stream", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 2 and "holds the checkpoint of a run that did not finish" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_the_fingerprint_follows_the_files_not_their_folder(tmp_path):
    paths = write_jpegs(tmp_path / "a", count=4)
    fingerprint = ImageFiles(str(tmp_path / "a"), np.array(["ant/0.jpg", "bee/1.jpg"]), SIZE).fingerprint()
    os.rename(tmp_path / "a", tmp_path / "b")
    moved = ImageFiles(str(tmp_path / "b"), np.array(["ant/0.jpg", "bee/1.jpg"]), SIZE)
    assert moved.fingerprint() == fingerprint
    assert moved[np.array([1, 0])].fingerprint() != fingerprint
    os.utime(paths[0].replace("/a/", "/b/"), ns=(0, 0))
    assert moved.fingerprint() != fingerprint


def test_the_command_line_trains_on_streamed_files(tree, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "engine.train", "--device", "cpu", "--method", "ce", "--dataset", "folder",
               "--data-dir", str(tree), "--image-size", str(SIZE), "--stream", "--model", "small_cnn", "--epochs", "1",
               "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "label_issues.csv")
    assert len(table) == 48 and table.columns[1] == "path" and table["path"].is_unique
    assert (table["given_label"].map(CLASSES.__getitem__) == table["path"].str.split("/").str[0]).all()
    assert "image_size: 64\n  stream: true" in (out / "config.yaml").read_text()


# One epoch of the training loader over `count` paths (the tree's 60 files, repeated), in a fresh
# process: the growth of its peak resident memory (kB) from before the epoch.
MEMORY_SCRIPT = """
import sys
import numpy as np
from engine.data.datasets import ImageFiles
from engine.data.streaming import StreamingLoader

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

root, count = sys.argv[1], int(sys.argv[2])
paths = np.array(sorted(f"{c}/{f}" for c in ("ant", "bee", "cat") for f in __import__("os").listdir(f"{root}/{c}")))
files = ImageFiles(root, np.resize(paths, count), 64)
loader = StreamingLoader(files, 50, (0.0,) * 3, (1.0,) * 3, shuffle=True, augment=True, flip=True, num_threads=2)
start = status("VmRSS")
for _ in loader:
    pass
print(status("VmHWM") - start)
"""


def test_memory_does_not_grow_with_the_number_of_images(tree):
    def growth(count):
        result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tree), str(count)], cwd=REPO,
                                capture_output=True, text=True, timeout=600, check=True)
        return int(result.stdout.split()[-1]) / 1024  # MiB

    # The pipeline's buffers and the allocator's first batches take about 50 MiB either way; 4,000
    # more images of 64 x 64 x 3 held in memory would take 47 MiB more.
    small, large = growth(1000), growth(5000)
    assert large < small + 16, f"peak memory grew {small:.1f} MiB over 1,000 images, {large:.1f} MiB over 5,000"
