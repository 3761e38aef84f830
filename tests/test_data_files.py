"""Bad data files: each is refused with a ValueError / FileNotFoundError naming the file (and a
list's line), which the command line prints as one line."""
import io
import json
import os
import re
import shutil
import struct
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import engine
from engine.data import pipeline
from engine.data.datasets import MAX_CLASSES, DataFileError, ImageFiles, LeftOut, load_dataset
from engine.train import main
from test_data import write_bmp

# Three ways an image file can be bad: no bytes, cut after its header, not an image at all.
BAD_IMAGES = {"empty": lambda good: b"", "truncated": lambda good: good[:60], "garbage": lambda good: bytes(100)}


def image_folder(root, classes=("cat", "dog"), count=3, seed=0):
    """root/<class>/<i>.bmp, 8x8 images; returns {path: image}."""
    rng = np.random.default_rng(seed)
    images = {}
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(count):
            images[str(root / cls / f"{i}.bmp")] = image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            write_bmp(root / cls / f"{i}.bmp", image)
    return images


def spoil(path, how):
    with open(path, "rb") as f:
        good = f.read()
    with open(path, "wb") as f:
        f.write(BAD_IMAGES[how](good))


def write_list(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))


@pytest.mark.parametrize("how", sorted(BAD_IMAGES))
def test_an_undecodable_image_in_a_folder_is_named(tmp_path, how):
    image_folder(tmp_path)
    spoil(tmp_path / "dog" / "1.bmp", how)
    with pytest.raises(ValueError, match=rf"^{tmp_path}/dog/1.bmp: not a decodable image "
                                         r"\(empty, truncated or corrupt\)$"):
        load_dataset("folder", str(tmp_path))


def test_an_undecodable_image_in_a_file_list_is_named_with_its_line(tmp_path):
    image_folder(tmp_path / "img")
    write_list(tmp_path / "train.txt", [f"img/{cls}/{i}.bmp {c}" for c, cls in enumerate(["cat", "dog"])
                                        for i in range(3)])
    write_list(tmp_path / "test.txt", ["img/cat/0.bmp 0", "", "img/dog/2.bmp 1"])
    assert load_dataset("filelist", str(tmp_path)).x_test.shape == (2, 32, 32, 3)
    spoil(tmp_path / "img" / "dog" / "2.bmp", "truncated")
    with pytest.raises(ValueError, match=rf"^{tmp_path}/train.txt:6: {tmp_path}/img/dog/2.bmp: not a decodable image"):
        load_dataset("filelist", str(tmp_path))


def test_decoding_finds_the_bad_image_in_any_batch(tmp_path, monkeypatch):
    images = image_folder(tmp_path, classes=("a",), count=10)
    encoded = [np.fromfile(path, dtype=np.uint8) for path in images]
    read = lambda i: (encoded[i], 8 * 8)  # noqa: E731
    monkeypatch.setattr(pipeline, "DECODE_BATCH", 4)  # the bad image in the second of three batches
    assert np.array_equal(pipeline.decode_images(10, read), np.stack(list(images.values())))
    encoded[6] = encoded[6][:60]
    with pytest.raises(ValueError, match=r"^image #6: not a decodable image"):
        pipeline.decode_images(10, read)
    with pytest.raises(ValueError, match=r"^seven: not a decodable image"):
        pipeline.decode_images(10, read, name=lambda i: "seven" if i == 6 else str(i))


def test_chunks_hold_at_most_the_pixel_budget_unless_one_image_exceeds_it(monkeypatch):
    monkeypatch.setattr(pipeline, "DECODE_PIXELS", 100)
    monkeypatch.setattr(pipeline, "DECODE_BATCH", 3)
    pixels = [40, 60, 1, 150, 30, None, 10, 10, 10, 10]  # None: a header that does not tell the size
    taken = []

    def images():  # (encoded, pixels) pairs: here the encoded image is its position
        for i, count in enumerate(pixels):
            taken.append(i)
            yield i, count

    chunks = []
    for chunk in pipeline.pixel_chunks(images()):
        assert len(taken) <= chunk[-1] + 2, "taken as needed: the chunk's images and the one after it"
        chunks.append(chunk)
    assert chunks == [[0, 1], [2], [3], [4], [5], [6, 7, 8], [9]]


def test_files_decode_in_chunks_of_bounded_pixels_read_as_needed(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    shapes = [(8, 8), (16, 12), (4, 20), (30, 30), (8, 8), (12, 16), (2, 2)]
    for i, shape in enumerate(shapes):
        write_bmp(tmp_path / f"{i}.bmp", rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    files = ImageFiles(str(tmp_path), [f"{i}.bmp" for i in range(len(shapes))], 8)
    whole = files.decoded()  # one chunk
    monkeypatch.setattr(pipeline, "DECODE_PIXELS", 400)
    reads, chunks, decode = [], [], pipeline._decode_batch
    monkeypatch.setattr(files, "read", lambda i: reads.append(i) or ImageFiles.read(files, i))

    def decode_chunk(pipe, encoded):
        chunks.append((len(encoded), len(reads)))
        return decode(pipe, encoded)

    monkeypatch.setattr(pipeline, "_decode_batch", decode_chunk)
    assert np.array_equal(files.decoded(), whole)
    assert [count for count, _ in chunks] == [3, 1, 3]  # 336 pixels, 900 alone, 260
    decoded = 0
    for count, read in chunks:
        pixels = sum(height * width for height, width in shapes[decoded:decoded + count])
        assert pixels <= 400 or count == 1
        decoded += count
        assert read <= decoded + 1, "a chunk's files are read when it is decoded, not before"


def gif_image(rgb):
    data = io.BytesIO()
    Image.fromarray(rgb).save(data, format="GIF")
    return data.getvalue()


def png_without_end(rgb):
    data = io.BytesIO()
    Image.fromarray(rgb).save(data, format="PNG")
    return data.getvalue()[:-12]  # its IEND chunk


def tiff_without_bits_per_sample(rgb):
    """A 1-bit TIFF whose directory leaves out BitsPerSample (tag 258; the TIFF default is 1)."""
    data = io.BytesIO()
    Image.fromarray(rgb[..., 0] > 127).save(data, format="TIFF")
    data = data.getvalue()
    start = struct.unpack("<I", data[4:8])[0]  # Pillow writes little-endian ("II"): the first directory
    count = struct.unpack("<H", data[start:start + 2])[0]
    entries = [data[start + 2 + 12 * i:start + 14 + 12 * i] for i in range(count)]
    kept = b"".join(entry for entry in entries if struct.unpack("<H", entry[:2])[0] != 258)
    end = start + 2 + 12 * count  # the offset of the next directory follows; 12 bytes left unused keep every offset
    return data[:start] + struct.pack("<H", count - 1) + kept + data[end:end + 4] + bytes(12) + data[end + 4:]


# Images that Pillow reads and DALI's decoder does not: (file name, bytes from RGB pixels)
PILLOW_ONLY = {"GIF": ("gif.jpg", gif_image), "PNG": ("no-end.png", png_without_end),
               "TIFF": ("one-bit.tif", tiff_without_bits_per_sample)}


@pytest.mark.parametrize("kind", sorted(PILLOW_ONLY))
def test_an_image_the_decoder_does_not_read_is_named_with_its_kind(tmp_path, kind):
    image_folder(tmp_path)
    name, write = PILLOW_ONLY[kind]
    (tmp_path / "dog" / name).write_bytes(write(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    with pytest.raises(DataFileError, match=rf"^{tmp_path}/dog/{name}: a {kind} image the decoder does not read; "
                                            r"re-save it as JPEG or PNG \(Pillow reads it\)$"):
        load_dataset("folder", str(tmp_path))


def test_a_missing_file_in_a_file_list_is_named_with_its_line(tmp_path):
    image_folder(tmp_path / "img")
    write_list(tmp_path / "train.txt", ["img/cat/0.bmp 0", "img/cat/9.bmp 0"])
    write_list(tmp_path / "test.txt", ["img/dog/0.bmp 1"])
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path}/train.txt:2: {tmp_path}/img/cat/9.bmp is missing$"):
        load_dataset("filelist", str(tmp_path))
    write_list(tmp_path / "train.txt", ["img/cat/0.bmp 0", "img/cat 0"])
    with pytest.raises(ValueError, match=rf"^{tmp_path}/train.txt:2: {tmp_path}/img/cat is not a regular file \(a "
                                         r"folder, pipe, device or socket\)$"):
        load_dataset("filelist", str(tmp_path))


def test_an_image_listed_twice_in_a_file_list_is_refused_naming_both_lines(tmp_path):
    image_folder(tmp_path / "img")
    write_list(tmp_path / "test.txt", ["img/dog/0.bmp 1"])
    for again in ("img/cat/0.bmp 1", "./img//cat/0.bmp 0"):  # two annotators' labels; the same file spelled anew
        write_list(tmp_path / "train.txt", ["img/cat/0.bmp 0", "img/dog/1.bmp 1", again])
        with pytest.raises(ValueError, match=rf"^{tmp_path}/train.txt:3: {re.escape(again.split()[0])} is listed "
                                             r"again \(first on line 1\); give each image one line with one label"):
            load_dataset("filelist", str(tmp_path))


@pytest.mark.parametrize("listed", ["../outside/cat/0.bmp", "img/../../outside/cat/0.bmp", "ABSOLUTE",
                                    "link/../outside/cat/0.bmp"])
def test_file_list_paths_must_stay_inside_the_data_dir(tmp_path, listed):
    image_folder(tmp_path / "outside")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    listed = listed.replace("ABSOLUTE", str(tmp_path / "outside" / "cat" / "0.bmp"))
    write_list(data_dir / "train.txt", ["link/cat/1.bmp 0", f"{listed} 0"])
    write_list(data_dir / "test.txt", ["link/dog/0.bmp 1"])
    os.symlink(tmp_path / "outside", data_dir / "link")  # the way to use files stored elsewhere
    with pytest.raises(ValueError, match=rf"^{data_dir}/train.txt:2: {listed} is outside --data-dir {data_dir}; "
                                         r"list paths must be relative and inside it"):
        load_dataset("filelist", str(data_dir))
    write_list(data_dir / "train.txt", ["link/cat/1.bmp 0", "link/dog/1.bmp 1"])
    assert load_dataset("filelist", str(data_dir)).y_train.tolist() == [0, 1]


OUT_OF_RANGE = r"label {label} is not a class index in \[0, %d\)$" % MAX_CLASSES
NOT_DIGITS = r"expected 'path label', got 'img/dog/0.bmp {escaped}'$"


# int() would read '1_0' as 10, '+1' and an Arabic-Indic digit as 1: a label is plain digits.
@pytest.mark.parametrize("label, problem", [(label, OUT_OF_RANGE) for label in (-1, MAX_CLASSES, 10**9)]
                         + [(label, NOT_DIGITS) for label in ("1_0", "+1", "\u0661", "1.0", "--1", "0x1")])
def test_file_list_labels_must_be_class_indices(tmp_path, label, problem):
    image_folder(tmp_path / "img")
    write_list(tmp_path / "train.txt", ["img/cat/0.bmp 0", f"img/dog/0.bmp {label}"])
    write_list(tmp_path / "test.txt", ["img/dog/1.bmp 1"])
    problem = problem.format(label=label, escaped=re.escape(str(label)))
    with pytest.raises(ValueError, match=rf"^{tmp_path}/train.txt:2: {problem}"):
        load_dataset("filelist", str(tmp_path))


@pytest.mark.parametrize("split", [False, True])
def test_a_class_folder_without_images_is_refused(tmp_path, split):
    train = tmp_path / "train" if split else tmp_path
    image_folder(train, classes=("ant", "cat", "dog"))
    if split:
        image_folder(tmp_path / "test", classes=("ant", "dog"), count=1)  # test/ may lack a class
        assert load_dataset("folder", str(tmp_path)).y_test.tolist() == [0, 2]
    for file in os.listdir(train / "cat"):
        os.rename(train / "cat" / file, train / "cat" / f"{file}.txt")  # files, but no images
    with pytest.raises(ValueError, match=rf"^folder {train}/cat: a class folder without images \(.png, "):
        load_dataset("folder", str(tmp_path))


@pytest.mark.parametrize("name", ["folder", "npz"])
def test_data_of_one_class_are_refused_before_a_run_starts(tmp_path, capsys, name):
    """One class leaves a classifier nothing to learn: refused in one line, and no checkpoint is
    left behind to block the next run in that folder (the run used to fail in its first step)."""
    if name == "folder":
        image_folder(tmp_path / "data", classes=("cat",), count=6)
        data, named = tmp_path / "data", " (cat)"
    else:
        data, named = tmp_path / "data.npz", ""
        np.savez(data, x=np.zeros((6, 8, 8), np.uint8), y=np.zeros(6, np.int64))
    code = main(["--device", "cpu", "--dataset", name, "--data-dir", str(data), "--epochs", "1", "--out",
                 str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run" / "checkpoint.pt").exists()
    assert capsys.readouterr().err.strip().endswith(f"error: {name}: 1 class{named} in the training labels; a "
                                                    f"classifier needs at least 2")
    if name == "npz":  # labels of one class other than 0 (the class count, the largest label + 1, is then 2 or more)
        np.savez(data, x=np.zeros((6, 8, 8), np.uint8), y=np.ones(6, np.int64), x_test=np.zeros((2, 8, 8), np.uint8),
                 y_test=np.array([0, 1]))
        assert main(["--device", "cpu", "--dataset", name, "--data-dir", str(data), "--epochs", "1", "--out",
                     str(tmp_path / "run")]) == 2
        assert capsys.readouterr().err.strip().endswith("error: npz: the training labels: every label is 1; a "
                                                        "classifier needs samples of at least 2 classes")


def small_file_list(root):
    """root/train.txt and root/test.txt over root/img's two classes (cat 0, dog 1)."""
    image_folder(root / "img")
    write_list(root / "train.txt", [f"img/{cls}/{i}.bmp {c}" for c, cls in enumerate(["cat", "dog"])
                                    for i in range(3)])
    write_list(root / "test.txt", ["img/cat/0.bmp 0", "img/dog/0.bmp 1"])


def test_a_blank_line_in_a_file_list_with_per_line_values_is_refused(tmp_path):
    """clean_indices.npy and train_true_labels.npy have a value per line of train.txt: a blank line
    among its entries would shift them onto the next file, so it is refused naming the line."""
    small_file_list(tmp_path)
    lines = (tmp_path / "train.txt").read_text().splitlines()
    write_list(tmp_path / "train.txt", lines[:2] + [""] + lines[2:] + [""])
    assert len(load_dataset("filelist", str(tmp_path)).y_train) == 6  # a blank line alone is skipped
    for name, values in (("clean_indices.npy", np.array([3])), ("train_true_labels.npy", np.zeros(6, np.int64))):
        np.save(tmp_path / name, values)
        with pytest.raises(ValueError, match=f"^{tmp_path / 'train.txt'}:3: a blank line, but "
                                             f"{tmp_path / name} has a value per line of train.txt"):
            load_dataset("filelist", str(tmp_path))
        os.remove(tmp_path / name)
    write_list(tmp_path / "train.txt", lines + ["", ""])  # blank lines after the last entry shift nothing
    np.save(tmp_path / "clean_indices.npy", np.array([3]))
    assert load_dataset("filelist", str(tmp_path)).trusted_train.tolist() == [3]


def test_class_names_drop_surrounding_whitespace_and_trailing_blank_lines(tmp_path):
    small_file_list(tmp_path)
    (tmp_path / "classes.txt").write_bytes(b"cat \r\ndog\r\n\n  \n")
    data = load_dataset("filelist", str(tmp_path))
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2  # no phantom class after dog
    (tmp_path / "classes.txt").write_text("cat\n\ndog\n")
    with pytest.raises(ValueError, match=rf"^{tmp_path}/classes.txt:2: an empty class name \(line 2 names class 1\)$"):
        load_dataset("filelist", str(tmp_path))


def test_a_test_class_that_train_lacks_is_refused(tmp_path):
    image_folder(tmp_path / "train", classes=("ant", "cat"))
    image_folder(tmp_path / "test", classes=("ant", "bee"), count=1)  # bee's images would never be tested
    with pytest.raises(ValueError, match=rf"^folder {tmp_path}/test/bee: a class that {tmp_path}/train does not "
                                         r"have; rename it to one of train/'s classes or remove it$"):
        load_dataset("folder", str(tmp_path))


def test_a_file_list_test_label_that_train_lacks_is_refused_unless_classes_txt_names_it(tmp_path):
    image_folder(tmp_path / "img")
    write_list(tmp_path / "train.txt", ["img/cat/0.bmp 0", "img/dog/0.bmp 1"])
    write_list(tmp_path / "test.txt", ["img/cat/1.bmp 0", "img/dog/1.bmp 2"])  # 1-based by mistake
    with pytest.raises(ValueError, match=rf"^{tmp_path}/test.txt:2: {tmp_path}/img/dog/1.bmp: label 2 is no class of "
                                         r"train.txt's labels \(0..1\); the test set may lack a class, not have "
                                         r"another \(classes.txt names every class\)$"):
        load_dataset("filelist", str(tmp_path))
    write_list(tmp_path / "classes.txt", ["cat", "dog", "cat"])
    with pytest.raises(ValueError, match=rf"^{tmp_path}/classes.txt: classes 0 and 2 are both named 'cat'$"):
        load_dataset("filelist", str(tmp_path))
    write_list(tmp_path / "classes.txt", ["cat", "dog", "bird"])
    assert load_dataset("filelist", str(tmp_path)).num_classes == 3


def test_train_and_test_folders_of_images_are_classes(tmp_path):
    """train/ and test/ are a split when they hold class folders; holding images they are classes
    like any other (CIFAR-100 has a class train): such a folder was refused for having train/
    without test/, and with classes bus, test and train it found no images in train/."""
    image_folder(tmp_path / "one", classes=("apple", "train"), count=5)
    assert load_dataset("folder", str(tmp_path / "one")).class_names == ["apple", "train"]
    image_folder(tmp_path / "three", classes=("bus", "test", "train"), count=5)
    data = load_dataset("folder", str(tmp_path / "three"), test_fraction=0.0)
    assert data.class_names == ["bus", "test", "train"] and data.y_train.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert data.train_paths[5] == "test/0.bmp" and data.train_rows.tolist() == list(range(15))


@pytest.mark.parametrize("split, other", [("train", "missing"), ("test", "missing"), ("train", "a class"),
                                          ("test", "a class"), ("train", "empty"), ("test", "both")])
def test_a_tree_that_is_neither_split_nor_classes_is_refused_naming_what_was_found(tmp_path, split, other):
    """A folder of class folders named train or test is a split, which needs the other beside it;
    one of images and folders (a split with a stray image, or a class with sub-folders) is neither."""
    twin = "test" if split == "train" else "train"
    image_folder(tmp_path / split)
    if other == "a class":
        image_folder(tmp_path, classes=(twin,))
    elif other == "empty":
        (tmp_path / twin).mkdir()
    elif other == "both":
        image_folder(tmp_path / twin)
        write_bmp(tmp_path / twin / "stray.bmp", np.zeros((8, 8, 3), np.uint8))
    if other == "missing":
        message = (f"folder {tmp_path}: has {split}/ holding class folders (a split) but no {twin}/; give both, a "
                   f"sub-folder per class in each, or only class folders (a share of the images is then held out as "
                   f"the test set; a class named {split} holds its images directly inside)")
    elif other == "both":
        message = (f"folder {tmp_path / twin}: holds images and folders directly inside, neither a split (class "
                   f"folders only) nor clearly a class; move the images into their class folders, or rename the "
                   f"folder if it is a class")
    else:
        holds = "images directly inside (a class)" if other == "a class" else "no class folders"
        message = (f"folder {tmp_path}: {split}/ holds class folders (a split) but {twin}/ holds {holds}; give both "
                   f"as splits, a sub-folder per class in each, or only class folders")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_dataset("folder", str(tmp_path))


def test_entries_beside_train_and_test_are_named_not_dropped_silently(tmp_path):
    """With train/ and test/, only they are read: a val/ split or a class folder beside them was
    left out without a word."""
    for split in ("train", "val", "test"):
        image_folder(tmp_path / split, count=2)
    image_folder(tmp_path, classes=("extra_class",), count=2)
    write_bmp(tmp_path / "stray.bmp", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("where the photos came from")
    (tmp_path / "clean_paths.txt").write_text("train/dog/1.bmp\n")  # read: no note
    (tmp_path / "__MACOSX").mkdir()  # hidden: no note
    with pytest.warns(LeftOut) as notes:
        data = load_dataset("folder", str(tmp_path))
    assert [str(note.message) for note in notes] == [
        f"folder {tmp_path}: 4 entries beside train/ and test/ left out (with them, only they are read): "
        f"extra_class/, notes.txt, stray.bmp, ..."]
    assert data.train_paths.tolist() == ["train/cat/0.bmp", "train/cat/1.bmp", "train/dog/0.bmp", "train/dog/1.bmp"]
    assert data.y_test.tolist() == [0, 0, 1, 1] and data.trusted_train.tolist() == [3]
    os.remove(tmp_path / "notes.txt")
    os.remove(tmp_path / "stray.bmp")
    shutil.rmtree(tmp_path / "extra_class")
    with pytest.warns(LeftOut, match=rf"^folder {tmp_path}: 1 entry beside train/ and test/ left out \(with them, "
                                     r"only they are read\): val/$"):
        load_dataset("folder", str(tmp_path))


@pytest.mark.parametrize("split", [False, True])
def test_hidden_entries_are_not_data(tmp_path, split):
    image_folder(tmp_path / "train" if split else tmp_path, count=5)
    if split:
        image_folder(tmp_path / "test", count=1)
    top = tmp_path / "train" if split else tmp_path
    image_folder(top / ".ipynb_checkpoints", classes=("cat",))  # a class folder's worth of copies
    (top / "cat" / "._0.bmp").write_bytes(b"macOS metadata, not an image")
    for macosx in (tmp_path, top, top / "cat"):  # unzipping a macOS archive leaves __MACOSX/<its path>/._<file>
        (macosx / "__MACOSX" / "cat").mkdir(parents=True, exist_ok=True)
        (macosx / "__MACOSX" / "cat" / "._0.bmp").write_bytes(b"macOS metadata, not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeftOut)  # no note either: __MACOSX was a class folder without images
        data = load_dataset("folder", str(tmp_path))
    assert data.class_names == ["cat", "dog"] and len(data.y_train) + len(data.y_test) == 10 + 2 * split


def test_a_class_folders_sub_folders_are_part_of_the_class(tmp_path):
    """As in torchvision's ImageFolder: images at any depth of a class folder are its images
    (they were left out before 2026-12-06), through a linked folder too; a hidden sub-folder is
    not data, and a link to a folder above does not loop."""
    root = tmp_path / "data"
    image_folder(root, count=3)
    nested = image_folder(root / "cat", classes=("2019",), count=2, seed=1)
    image_folder(root / "dog", classes=(".thumbnails",), count=1, seed=2)
    image_folder(tmp_path / "more", classes=("x",), count=2, seed=3)
    os.symlink(tmp_path / "more" / "x", root / "dog" / "linked")
    os.symlink(root / "dog", root / "dog" / "again")
    (root / "clean_paths.txt").write_text("cat/2019/1.bmp\n")
    data = load_dataset("folder", str(root), test_fraction=0.0, image_size=8)
    paths = data.train_paths.tolist()  # in the held-out split's order
    assert sorted(paths) == ["cat/0.bmp", "cat/1.bmp", "cat/2.bmp", "cat/2019/0.bmp", "cat/2019/1.bmp",
                             "dog/0.bmp", "dog/1.bmp", "dog/2.bmp", "dog/linked/0.bmp", "dog/linked/1.bmp"]
    assert data.y_train.tolist() == [path.startswith("dog") for path in paths]
    (trusted,) = data.trusted_train
    assert paths[trusted] == "cat/2019/1.bmp"
    assert np.array_equal(data.x_train[trusted], nested[str(root / "cat" / "2019" / "1.bmp")])


def test_a_link_to_a_folder_holding_the_class_folder_is_refused(tmp_path):
    """cat/up -> .. would read every dog image a second time, as a cat."""
    image_folder(tmp_path, count=3)
    os.symlink("..", tmp_path / "cat" / "up")
    with pytest.raises(ValueError, match=rf"^folder {tmp_path}/cat/up: links to {tmp_path}, a folder holding its "
                                         rf"class folder {tmp_path}/cat; its images \(other classes' too\) would be "
                                         r"read as this class: remove the link$"):
        load_dataset("folder", str(tmp_path), test_fraction=0.0)


def test_images_outside_the_class_folders_are_named_not_dropped_silently(tmp_path):
    image_folder(tmp_path, count=3)
    write_bmp(tmp_path / "stray.bmp", np.zeros((8, 8, 3), np.uint8))
    with pytest.warns(LeftOut, match=rf"^folder {tmp_path}: 1 image outside the class folders left out: stray.bmp$"):
        assert len(load_dataset("folder", str(tmp_path), test_fraction=0.0).y_train) == 6


def test_files_of_no_image_kind_are_named_not_dropped_silently(tmp_path, capsys):
    """iPhone photos (.heic) are not read: a class folder of them would lose them without a word."""
    root = tmp_path / "data"
    image_folder(root, count=3)
    for name in ("cat/4.heic", "cat/5.HEIC", "dog/Thumbs.db", "dog/notes/a.txt"):
        os.makedirs(os.path.dirname(root / name), exist_ok=True)
        (root / name).write_bytes(b"not read")
    with pytest.warns(LeftOut, match=rf"^folder {root}: 4 files in class folders left out, not of an image kind "
                                     r"read \(.png .jpg .jpeg .bmp .tif .tiff .webp\): cat/4.heic, cat/5.HEIC, "
                                     r"dog/Thumbs.db, \.\.\.$"):
        assert len(load_dataset("folder", str(root), test_fraction=0.0).y_train) == 6
    assert main(["--dataset", "folder", "--data-dir", str(root), "--test-fraction", "0", "--epochs", "1",
                 "--batch-size", "4", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert f"python -m engine.train: note: folder {root}: 4 files in class folders left out" in err
    assert "UserWarning" not in err and "LeftOut" not in err


def test_an_npz_of_feature_vectors_trains_the_mlp_from_the_command_line(tmp_path, capsys):
    """Feature vectors (e.g. embeddings of images or text) in an npz: the MLP, standardized
    features, label issues; an image model is refused."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "features.npz", x=x[:1400], y=y[:1400], x_test=x[1400:], y_test=y[1400:])
    common = ["--dataset", "npz", "--data-dir", str(tmp_path / "features.npz"), "--noise", "symmetric",
              "--noise-rate", "0.3", "--epochs", "12"]
    assert main(["--method", "pmnar", *common, "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == "mlp" and summary["test_acc"] > 0.85 and summary["det_f1"] > 0.85, summary
    assert len(pd.read_csv(tmp_path / "run" / "label_issues.csv")) == 1400
    data = load_dataset("npz", str(tmp_path / "features.npz"))
    assert data.x_train.dtype == np.float32 and np.allclose(data.mean, x[:1400].mean(0), atol=1e-4)
    capsys.readouterr()
    assert main(["--method", "ce", *common, "--model", "small_cnn", "--out", str(tmp_path / "cnn")]) == 2
    assert "model 'small_cnn' does not fit feature vectors: use mlp" in capsys.readouterr().err


def test_lists_may_start_with_a_byte_order_mark(tmp_path):
    small_file_list(tmp_path)
    for name in ("train.txt", "classes.txt"):
        text = (tmp_path / name).read_text() if name != "classes.txt" else "chat\nchien\n"
        (tmp_path / name).write_text(text, encoding="utf-8-sig")
    data = load_dataset("filelist", str(tmp_path))
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1] and data.class_names == ["chat", "chien"]


@pytest.mark.parametrize("name", ["train.txt", "classes.txt", "clean_paths.txt"])
def test_a_list_that_is_not_utf8_is_named_with_its_line(tmp_path, name):
    """A list saved in another encoding (here Latin-1's "é" on line 2) is refused by file and
    line, where it used to end the run with Python's decoding error alone."""
    if name == "clean_paths.txt":
        image_folder(tmp_path)
        lines = ["cat/0.bmp", "caf\u00e9/1.bmp"]
    else:
        small_file_list(tmp_path)
        lines = (tmp_path / "train.txt").read_text().splitlines()[:1] + ["caf\u00e9/0.bmp 0"] if name == "train.txt" \
            else ["cat", "caf\u00e9"]
    (tmp_path / name).write_bytes("\r\n".join(lines).encode("latin-1"))
    with pytest.raises(ValueError, match=rf"^{tmp_path / name}:2: not UTF-8 text \(byte 0xe9\); save the list as "
                                         r"UTF-8"):
        load_dataset("folder" if name == "clean_paths.txt" else "filelist", str(tmp_path))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("where", ["image", "class folder"])
def test_a_file_name_that_is_not_utf8_is_refused_naming_it(tmp_path, where, stream):
    """A Latin-1 "café" (as zip archives made on Windows unpack) used to decode and train, then
    end the run with an encoding traceback at the first checkpoint or at label_issues.csv."""
    image_folder(tmp_path)
    old, new = (b"cat/0.bmp", b"cat/caf\xe9.bmp") if where == "image" else (b"cat", b"caf\xe9")
    os.rename(os.fsencode(tmp_path) + b"/" + old, os.fsencode(tmp_path) + b"/" + new)
    folder = tmp_path / "cat" if where == "image" else tmp_path
    with pytest.raises(ValueError, match=rf"^{folder}: 1 file name\(s\) are not UTF-8, e.g. "
                                         rf"{re.escape(repr(new.split(b'/')[-1]))}; rename them"):
        load_dataset("folder", str(tmp_path), stream=stream)


def png_header(width, height):
    """A PNG of no pixel data that declares width x height (its IHDR chunk, then IEND)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("stream", [False, True])
def test_an_image_declaring_a_huge_size_is_refused_before_decoding(tmp_path, stream):
    """A 400 KB PNG of 20000 x 20000 black pixels was decoded: 2.7 GB."""
    image_folder(tmp_path)
    (tmp_path / "dog" / "huge.png").write_bytes(png_header(20000, 20000))
    message = rf"^{tmp_path / 'dog' / 'huge.png'}: Image size \(400000000 pixels\) exceeds limit of 178956970 pixels"
    with pytest.raises(DataFileError, match=message):  # streamed: as its channel statistics' sample reads it
        load_dataset("folder", str(tmp_path), stream=stream, test_fraction=0.0)
    (tmp_path / "dog" / "huge.png").write_bytes(png_header(12000, 12000))  # 144M pixels: decoded (here: no data)
    with pytest.raises(DataFileError, match=r"huge.png: not a decodable image"):
        load_dataset("folder", str(tmp_path), stream=stream, test_fraction=0.0)


@pytest.mark.parametrize("where", ["image", "train.txt"])
def test_a_pipe_in_place_of_a_file_is_refused_not_waited_on(tmp_path, where):
    """A named pipe (a tar archive can carry one) blocked the run forever at its first read."""
    if where == "image":
        image_folder(tmp_path)
        os.mkfifo(tmp_path / "dog" / "zz.bmp")
    else:
        small_file_list(tmp_path)
        os.remove(tmp_path / "train.txt")
        os.mkfifo(tmp_path / "train.txt")
    pipe = tmp_path / ("dog/zz.bmp" if where == "image" else "train.txt")
    with pytest.raises(ValueError, match=rf"^{pipe}: not a regular file \(a pipe, device or socket\)"):
        load_dataset("folder" if where == "image" else "filelist", str(tmp_path))


X = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
Y = np.arange(10) % 3


def broken_zip(path):
    np.savez(path, x=X, y=Y)
    path.write_bytes(path.read_bytes()[:-100])


def corrupt_member(path):
    """A whole zip whose x.npy bytes are flipped: it opens, and fails when x is read."""
    np.savez(path, x=X, y=Y)
    data = bytearray(path.read_bytes())
    at = data.index(b"NUMPY") + 200
    data[at:at + 20] = bytes(255 - b for b in data[at:at + 20])
    path.write_bytes(bytes(data))


def npy_file(path):
    with open(path, "wb") as f:
        np.save(f, X)


# A bad .npz: how to write it, and the error after "npz <path>: ".
NPZ_CASES = {
    "float images in [0, 1]": (lambda p: np.savez(p, x=X / 255, y=Y),
                               r"x must be an integer array, got float64; store uint8 pixels"),
    "pixels above 255": (lambda p: np.savez(p, x=X.astype(np.int64) + 45, y=Y),
                         r"x must lie in \[0, 256\), got values from \d+ to 300; store uint8 pixels"),
    "float labels": (lambda p: np.savez(p, x=X, y=Y + 0.5), r"y must be an integer array, got float64"),
    "feature vectors with a NaN": (lambda p: np.savez(p, x=np.r_[np.ones((9, 5)), np.full((1, 5), np.nan)], y=Y),
                                   r"x: feature vectors hold NaN or infinite values \(in float32\)$"),
    "features beyond float32": (lambda p: np.savez(p, x=np.full((10, 5), 1e300), y=Y),
                                r"x: feature vectors hold NaN or infinite values \(in float32\)$"),
    "feature vectors of strings": (lambda p: np.savez(p, x=np.full((10, 5), "a"), y=Y),
                                   r"x: feature vectors \[N, D\] must be numbers, got <U1$"),
    "x_test of other features": (lambda p: np.savez(p, x=np.ones((10, 5)), y=Y, x_test=np.ones((2, 4)), y_test=Y[:2]),
                                 r"x_test feature vectors are \[4\], x feature vectors \[5\]; both must have the "
                                 r"same D$"),
    "a huge label": (lambda p: np.savez(p, x=X, y=np.r_[Y[:-1], 10**9]),
                     rf"y must lie in \[0, {MAX_CLASSES}\), got values from 0 to 1000000000"),
    "a negative label": (lambda p: np.savez(p, x=X, y=Y - 1), r"y must lie in \[0, 100000\), got values from -1 to 1"),
    "no y": (lambda p: np.savez(p, x=X, labels=Y),
             r"needs arrays x and y \(and x_test with y_test\), missing y; it has x, labels$"),
    "x_test without y_test": (lambda p: np.savez(p, x=X, y=Y, x_test=X),
                              r"needs .* missing y_test; it has x, y, x_test$"),
    "x and y differ in length": (lambda p: np.savez(p, x=X, y=Y[:-1]),
                                 r"x must be \[N, H, W\] or \[N, H, W, C\] and y \[N\] with the same N > 0, "
                                 r"got x \[10, 8, 8\] and y \[9\]$"),
    "test arrays differ in length": (lambda p: np.savez(p, x=X, y=Y, x_test=X, y_test=Y[:3]),
                                     r"x_test must be .* got x_test \[10, 8, 8\] and y_test \[3\]$"),
    "x_test grayscale, x colour": (lambda p: np.savez(p, x=np.stack([X] * 3, -1), y=Y, x_test=X, y_test=Y),
                                   r"x_test images are \[8, 8, 1\], x images \[8, 8, 3\]; both must have the same "
                                   r"\[H, W, C\]$"),
    "x_test larger": (lambda p: np.savez(p, x=X, y=Y, x_test=np.zeros((2, 16, 16), np.uint8), y_test=Y[:2]),
                      r"x_test images are \[16, 16, 1\], x images \[8, 8, 1\]"),
    "too few to hold out a test set": (lambda p: np.savez(p, x=X[:4], y=Y[:4]),
                                       r"4 samples, too few to hold out a share 0.2 of them as the test set and "
                                       r"train on the rest; add samples or give x_test and y_test$"),
    "0 x 0 images": (lambda p: np.savez(p, x=np.zeros((10, 0, 0), np.uint8), y=Y),
                     r"x: samples of shape \[0, 0, 1\] hold no values$"),
    "0 features": (lambda p: np.savez(p, x=np.zeros((10, 0)), y=Y), r"x: samples of shape \[0\] hold no values$"),
    "2 channels": (lambda p: np.savez(p, x=np.zeros((10, 8, 8, 2), np.uint8), y=Y),
                   r"x: images \[N, H, W, C\] need C in \(1, 3\) \(channels last\), got shape \[10, 8, 8, 2\]$"),
    "a test class that y lacks": (lambda p: np.savez(p, x=X, y=Y, x_test=X[:2], y_test=np.array([0, 3])),
                                  r"y_test: label 3 is no class of y \(0..2\); the test set may lack a class, not "
                                  r"have another$"),
    "an empty file": (lambda p: p.write_bytes(b""), r"not a readable .npz archive \(No data left in file\)$"),
    "a broken zip": (broken_zip, r"not a readable .npz archive \(File is not a zip file\)$"),
    "a corrupt member": (corrupt_member, r"not a readable .npz archive \("),
    "a .npy array": (npy_file,
                     r"not a readable .npz archive \(a single .npy array, not named arrays\)$"),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_a_bad_npz_is_refused_naming_the_file_and_the_array(tmp_path, case):
    path = tmp_path / "data.npz"
    write, pattern = NPZ_CASES[case]
    write(path)
    with pytest.raises(ValueError, match=rf"^npz {path}: {pattern}"):
        load_dataset("npz", str(path))


def test_npz_integer_images_in_range_are_kept_exactly(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (6, 8, 8, 3)), rng.integers(0, 2, 6)  # int64, as numpy draws them
    np.savez(tmp_path / "data.npz", x=x, y=y, x_test=x[:2].astype(np.int16), y_test=np.array([0, 1], np.uint8))
    data = load_dataset("npz", str(tmp_path / "data.npz"))
    assert data.x_train.dtype == np.uint8 and np.array_equal(data.x_train, x) and data.num_classes == 2
    np.savez(tmp_path / "small.npz", x=x[:5], y=y[:5])  # the fewest that hold a test sample out
    assert len(load_dataset("npz", str(tmp_path / "small.npz")).y_test) == 1


def test_a_folder_too_small_to_hold_out_a_test_set_is_refused(tmp_path):
    image_folder(tmp_path, count=2)
    with pytest.raises(ValueError, match=rf"^folder {tmp_path}: 4 samples, too few to hold out a share 0.2 of them as "
                                         r"the test set and train on the rest; add images or give train/ and test/ "
                                         r"folders$"):
        load_dataset("folder", str(tmp_path))
    image_folder(tmp_path / "more", classes=("ant",), count=1)
    os.rename(tmp_path / "more" / "ant", tmp_path / "ant")  # a fifth image
    os.rmdir(tmp_path / "more")
    assert len(load_dataset("folder", str(tmp_path)).y_test) == 1


def test_an_npz_member_of_another_name_is_not_read(tmp_path):
    """Every member was read, one that decompresses to gigabytes included; here one of objects,
    which the loader refuses (it would need pickle), stands in for it."""
    x, y = X[..., None].repeat(3, -1), Y
    np.savez(tmp_path / "data.npz", x=x, y=y, notes=np.array([{"a": 1}], dtype=object))
    assert np.array_equal(load_dataset("npz", str(tmp_path / "data.npz"), test_fraction=0.0).x_train, x)


def test_an_npz_names_its_trusted_labels_and_keeps_them_in_training(tmp_path):
    """clean_indices: positions in x; the held-out test set is drawn from the other samples."""
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 256, (10, 8, 8), dtype=np.uint8), np.arange(10) % 2
    np.savez(tmp_path / "data.npz", x=x, y=y, clean_indices=np.array([7, 0, 9, 4, 5]))
    for fraction, held_out in ((None, 2), (0.5, 5), (0.0, 0)):
        data = load_dataset("npz", str(tmp_path / "data.npz"), test_fraction=fraction)
        assert len(data.y_test) == held_out and len(data.trusted_train) == 5
        kept = [np.flatnonzero((x == image).all((1, 2)))[0] for image in data.x_train[data.trusted_train, ..., 0]]
        assert sorted(kept) == [0, 4, 5, 7, 9]
    np.savez(tmp_path / "split.npz", x=x, y=y, x_test=x[:2], y_test=y[:2], clean_indices=np.array([3]))
    assert load_dataset("npz", str(tmp_path / "split.npz")).trusted_train.tolist() == [3]
    np.savez(tmp_path / "mask.npz", x=x, y=y, x_test=x[:2], y_test=y[:2], clean_indices=np.arange(10) % 4 == 1)
    assert load_dataset("npz", str(tmp_path / "mask.npz")).trusted_train.tolist() == [1, 5, 9]
    np.savez(tmp_path / "few.npz", x=x, y=y, clean_indices=np.arange(9))
    with pytest.raises(ValueError, match=rf"^npz {tmp_path / 'few.npz'}: 10 samples \(1 without a trusted label\), too "
                                         r"few to hold out a share 0.2"):
        load_dataset("npz", str(tmp_path / "few.npz"))
    np.savez(tmp_path / "twice.npz", x=x, y=y, x_test=x[:2], y_test=y[:2], clean_indices=np.array([6, 2, 6]))
    assert load_dataset("npz", str(tmp_path / "twice.npz")).trusted_train.tolist() == [2, 6]  # as engine.fit counts
    for bad, message in ((np.array([0, 10]), r"must lie in \[0, 10\), found 0..10"),
                         (np.array([0.0]), r"expected a 1-D array of integer sample indices or a boolean mask \[10\], "
                                           r"got shape \[1\] of float64"),
                         (np.array([[1]]), r"expected a 1-D array of integer sample indices"),
                         (np.ones(9, bool), r"a boolean mask needs one value per sample \(10\), got shape \[9\]"),
                         (np.arange(10), r"all 10 samples are in the clean subset")):
        np.savez(tmp_path / "bad.npz", x=x, y=y, x_test=x[:2], y_test=y[:2], clean_indices=bad)
        with pytest.raises(ValueError, match=rf"^npz {tmp_path / 'bad.npz'}: clean_indices \(of x\): {message}"):
            load_dataset("npz", str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("name", ["npz", "folder"])
def test_the_held_out_share_is_a_choice(tmp_path, name):
    """test_fraction: the share held out where the data have no test split (rounded down), none
    at 0 (every sample trains); refused where the data have their own split."""
    if name == "npz":
        rng = np.random.default_rng(2)
        np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (29, 8, 8), dtype=np.uint8), y=np.arange(29) % 2)
        data_dir = str(tmp_path / "data.npz")
    else:
        image_folder(tmp_path / "data", classes=("ant", "bee", "cat", "dog", "emu"), count=6)
        os.remove(tmp_path / "data" / "ant" / "0.bmp")
        data_dir = str(tmp_path / "data")
    loaded = {fraction: load_dataset(name, data_dir, test_fraction=fraction) for fraction in (None, 0.29, 0.5, 0.0)}
    sizes = {fraction: (len(data.y_train), len(data.y_test), len(data.x_test)) for fraction, data in loaded.items()}
    assert sizes == {None: (24, 5, 5), 0.29: (21, 8, 8), 0.5: (15, 14, 14), 0.0: (29, 0, 0)}
    whole = loaded[0.0]
    for data in loaded.values():  # both parts in the samples' own order; train_rows: where each came from
        rows, held_out = data.train_rows, np.setdiff1d(np.arange(29), data.train_rows)
        assert (np.diff(rows) > 0).all() and len(held_out) == len(data.y_test)
        assert (data.x_train == whole.x_train[rows]).all() and (data.y_train == whole.y_train[rows]).all()
        assert (data.x_test == whole.x_train[held_out]).all() and (data.y_test == whole.y_train[held_out]).all()
        if name == "folder":
            assert (data.train_paths == whole.train_paths[rows]).all()
    if name == "npz":
        np.savez(tmp_path / "split.npz", x=np.zeros((4, 8, 8), np.uint8), y=[0, 1, 0, 1], x_test=np.zeros((2, 8, 8),
                 np.uint8), y_test=[0, 1])
        split = str(tmp_path / "split.npz")
    else:
        for part in ("train", "test"):
            image_folder(tmp_path / "split" / part, classes=("ant", "bee"), count=2)
        split = str(tmp_path / "split")
    assert len(load_dataset(name, split).y_test) == {"npz": 2, "folder": 4}[name]  # its own split, not a share
    with pytest.raises(ValueError, match=f"^--test-fraction: {name} {split} has its own test split"):
        load_dataset(name, split, test_fraction=0.0)
    with pytest.raises(ValueError, match="^test_fraction applies to the data sets that may lack a test split "
                                         r"\(npz, folder\), not to digits$"):
        load_dataset("digits", test_fraction=0.0)


def test_the_held_out_test_set_is_drawn_per_class(tmp_path):
    """A share drawn from all samples at once could hold a rare class out whole: of 16 a, 16 b and
    one c, c went to the test set, so the model never trained on c and its label went unchecked.
    Each class now gives about its share (seeded), keeps a training sample, and a class of one
    sample stays in training."""
    image_folder(tmp_path / "data", classes=("a", "b"), count=16)
    image_folder(tmp_path / "data", classes=("c",), count=1)
    data = load_dataset("folder", str(tmp_path / "data"))
    assert (len(data.y_train), len(data.y_test)) == (27, 6)  # a share 0.2 of the 33, rounded down, as before
    assert sorted(data.y_test.tolist()) == [0, 0, 0, 1, 1, 1] and "c/0.bmp" in data.train_paths
    rng = np.random.default_rng(5)
    sizes, y = [50, 30, 15, 4, 1], np.repeat(np.arange(5), [50, 30, 15, 4, 1])
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (100, 8, 8), dtype=np.uint8), y=rng.permutation(y))
    for fraction, test in ((None, [10, 6, 3, 1, 0]), (0.5, [25, 15, 8, 2, 0]), (0.9, [46, 27, 14, 3, 0])):
        data = load_dataset("npz", str(tmp_path / "data.npz"), test_fraction=fraction)
        assert np.bincount(data.y_test, minlength=5).tolist() == test
        assert np.bincount(data.y_train, minlength=5).tolist() == [size - n for size, n in zip(sizes, test)]
        again = load_dataset("npz", str(tmp_path / "data.npz"), test_fraction=fraction)
        assert np.array_equal(again.train_rows, data.train_rows)  # the same split on each load
    np.savez(tmp_path / "few.npz", x=np.zeros((11, 8, 8), np.uint8), y=[0, 0] + list(range(1, 10)))
    with pytest.raises(ValueError, match=rf"^npz {tmp_path / 'few.npz'}: 11 samples \(1 may be held out: each class "
                                         r"keeps a training sample\), too few to hold out a share 0.2 of them as the "
                                         r"test set and train on the rest; add samples or give x_test and y_test$"):
        load_dataset("npz", str(tmp_path / "few.npz"))


def test_the_label_issues_index_is_the_row_of_x_when_a_test_share_is_held_out(tmp_path, capsys):
    """An npz without a test split: label_issues.csv's index names each sample's row in x (it
    used to be its place in a shuffled training part, naming another sample), and --noise file
    gives a label per row of x, the held-out ones included."""
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 256, (30, 8, 8), dtype=np.uint8), np.arange(30) % 3
    np.savez(tmp_path / "data.npz", x=x, y=y)
    data = load_dataset("npz", str(tmp_path / "data.npz"))
    noisy = (y + rng.integers(0, 3, 30)) % 3
    np.save(tmp_path / "noisy.npy", noisy)
    assert main(["--device", "cpu", "--dataset", "npz", "--data-dir", str(tmp_path / "data.npz"), "--method", "ce",
                 "--noise", "file", "--noise-file", str(tmp_path / "noisy.npy"), "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 0
    table = pd.read_csv(tmp_path / "run" / "label_issues.csv")
    assert table["index"].tolist() == data.train_rows.tolist() and len(table) == 24
    assert (table["given_label"] == noisy[table["index"]]).all() and (table["true_label"] == y[table["index"]]).all()
    # the API's ranked indices are the table's: rows of x
    ranked = engine.find_label_issues(data, noisy[data.train_rows], method="ce", epochs=1,
                                      return_indices_ranked_by="label_quality")
    assert len(ranked) and sorted(ranked) == table["index"][table["is_label_issue"]].tolist()
    np.save(tmp_path / "short.npy", noisy[:24])
    capsys.readouterr()
    assert main(["--device", "cpu", "--dataset", "npz", "--data-dir", str(tmp_path / "data.npz"), "--noise", "file",
                 "--noise-file", str(tmp_path / "short.npy"), "--epochs", "1", "--out", str(tmp_path / "short")]) == 2
    assert capsys.readouterr().err == (f"python -m engine.train: error: noise file {tmp_path / 'short.npy'}: has 24 "
                                       f"labels but the data set has 30 samples\n")


def test_a_file_where_a_folder_is_read_is_named(tmp_path, capsys):
    np.savez(tmp_path / "data.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.arange(4) % 2)
    for name, message in (("folder", f"--data-dir {tmp_path / 'data.npz'}: a file; --dataset folder reads a folder"),
                          ("filelist", f"--data-dir {tmp_path / 'data.npz'}: a file; --dataset filelist reads a "
                                       f"folder"),
                          ("cifar10", f"cifar10 {tmp_path / 'data.npz'}: not the CIFAR-10 JPEG archive "
                                      r"\(cifar10_jpeg_ordered.npz\), which has train_jpeg, train_offsets, y_train "
                                      "and their test_ arrays; missing train_jpeg, train_offsets, y_train, test_jpeg, "
                                      "test_offsets, y_test")):
        with pytest.raises(ValueError, match=f"^{message}$"):
            load_dataset(name, str(tmp_path / "data.npz"))
        assert main(["--dataset", name, "--data-dir", str(tmp_path / "data.npz"), "--out", str(tmp_path / "run")]) == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_the_command_line_prints_one_line_naming_the_file(tmp_path, capsys):
    image_folder(tmp_path / "data")
    spoil(tmp_path / "data" / "cat" / "2.bmp", "garbage")
    assert main(["--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == f"python -m engine.train: error: {tmp_path}/data/cat/2.bmp: not a decodable image " \
                  "(empty, truncated or corrupt)\n"


def test_a_streamed_test_image_gone_before_training_is_named(tmp_path, capsys):
    """Streamed test images are first touched by the run's fingerprint of its data (a broken link
    here): one line naming the file, not an OSError's traceback."""
    image_folder(tmp_path / "data" / "train")
    image_folder(tmp_path / "data" / "test", count=1)
    os.symlink(tmp_path / "gone.bmp", tmp_path / "data" / "test" / "cat" / "9.bmp")
    assert main(["--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--stream", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"python -m engine.train: error: {tmp_path}/data/test/cat/9.bmp: cannot be " \
                                      "read (No such file or directory); training stopped: fix or remove the file " \
                                      "and start the run again with --overwrite\n"
