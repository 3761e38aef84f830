"""engine.data.layouts: each real-world data set's layout, built tiny in tmp_path, converts to a
file list the engine loads; bad input stops the command with one line naming the file."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from engine.data.datasets import load_dataset
from engine.data.layouts import main

PROG = "python -m engine.data.layouts"


def image(path, shade=0):
    """An 8x8 image; the format follows the suffix (JPEG, PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (40 * shade % 256, 120, 200)).save(path)


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def convert(capsys, name, src, dst, *options):
    code = main([name, str(src), str(dst), *map(str, options)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def refused(capsys, name, src, dst, *options):
    """The one-line error of a conversion that must fail."""
    assert main([name, str(src), str(dst), *map(str, options)]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"{PROG}: error: ")
    return err[len(f"{PROG}: error: "):].rstrip("\n")


def listed(dst, split):
    """(path, label) of each line of dst/split.txt."""
    pairs = [line.rsplit(maxsplit=1) for line in (dst / f"{split}.txt").read_text().splitlines()]
    return [(path, int(label)) for path, label in pairs]


def assert_lists(dst, split, expected):
    """dst/split.txt lists `expected` ([(file under SRC, label)]): relative paths inside dst that
    resolve to those files."""
    pairs = listed(dst, split)
    for path, _ in pairs:
        assert not os.path.isabs(path) and ".." not in path.split("/")
    assert [(os.path.realpath(dst / path), label) for path, label in pairs] == \
           [(os.path.realpath(file), label) for file, label in expected]


# ------------------------------------------------------------------ Clothing1M

NOISY = {i: i % 4 for i in range(8)}           # keys 0-7 form the noisy training set
CLEAN = {0: 1, 6: 3, 7: 3, 8: 0, 9: 1, 10: 2, 11: 3, 12: 2}


def key(i):
    return f"images/{i % 2}/{i:02d}/{i}.jpg"


def clothing1m(root):
    for i in range(13):
        image(root / key(i), i)
    write(root / "noisy_label_kv.txt", [f"{key(i)} {label}" for i, label in NOISY.items()])
    write(root / "clean_label_kv.txt", [f"{key(i)} {label}" for i, label in CLEAN.items()])
    write(root / "noisy_train_key_list.txt", [key(i) for i in range(8)])
    write(root / "clean_train_key_list.txt", [key(i) for i in (6, 7, 8)])
    write(root / "clean_val_key_list.txt", [key(12)])
    write(root / "clean_test_key_list.txt", [key(i) for i in (9, 10, 11)])
    write(root / "category_names_eng.txt", ["T-Shirt", "Shirt", "Knitwear", "Chiffon"])
    return root


def test_clothing1m(tmp_path, capsys):
    src, dst = clothing1m(tmp_path / "src"), tmp_path / "dst"
    out = convert(capsys, "clothing1m", src, dst)
    assert_lists(dst, "train", [(src / key(i), NOISY[i]) for i in range(8)])
    assert_lists(dst, "test", [(src / key(i), CLEAN[i]) for i in (9, 10, 11)])
    assert np.load(dst / "train_true_labels.npy").tolist() == [1, -1, -1, -1, -1, -1, 3, 3]
    assert (dst / "classes.txt").read_text().splitlines() == ["T-Shirt", "Shirt", "Knitwear", "Chiffon"]
    assert os.path.islink(dst / "images") and not (dst / "clean_indices.npy").exists()
    readme = (dst / "README.txt").read_text()
    assert "train.txt: 8 training images, noisy labels" in readme and "train_true_labels.npy" in readme
    assert f"--dataset filelist --data-dir {dst} --noise none" in out and "no --noise-file is needed" in out
    data = load_dataset("filelist", str(dst))
    assert data.y_train.tolist() == [NOISY[i] for i in range(8)] and data.y_test.tolist() == [1, 2, 3]
    assert data.x_train.shape == (8, 32, 32, 3)


def test_training_on_clothing1m_measures_detection_where_the_true_label_is_known(tmp_path, capsys):
    src, dst, out = clothing1m(tmp_path / "src"), tmp_path / "dst", tmp_path / "run"
    convert(capsys, "clothing1m", src, dst)
    data = load_dataset("filelist", str(dst))
    assert data.true_train.tolist() == [1, -1, -1, -1, -1, -1, 3, 3] and data.class_names[0] == "T-Shirt"
    command = [sys.executable, "-m", "engine.train", "--method", "ce", "--dataset", "filelist", "--data-dir",
               str(dst), "--noise", "none", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    # Keys 0, 6 and 7 have clean labels: 0 and 6 differ from their noisy ones, 7 agrees.
    assert summary["true_labels_known"] == 3 and summary["true_noise_rate"] == pytest.approx(2 / 3)
    assert summary["det_f1"] is not None
    table = pd.read_csv(out / "label_issues.csv")
    assert table["true_label"].isna().tolist() == [False, True, True, True, True, True, False, False]
    assert table["given_class"].tolist()[:4] == ["T-Shirt", "Shirt", "Knitwear", "Chiffon"]


def test_clothing1m_clean_train_is_a_trusted_subset(tmp_path, capsys):
    src, dst = clothing1m(tmp_path / "src"), tmp_path / "dst"
    out = convert(capsys, "clothing1m", src, dst, "--clean-train")
    # key 6 (noisy 2, clean 3) takes its clean label, 7 has it already, 8 is appended
    expected = [(src / key(i), NOISY[i]) for i in range(6)] + [(src / key(i), CLEAN[i]) for i in (6, 7, 8)]
    assert_lists(dst, "train", expected)
    assert np.load(dst / "clean_indices.npy").tolist() == [6, 7, 8]
    assert np.load(dst / "train_true_labels.npy").tolist() == [1, -1, -1, -1, -1, -1, 3, 3, 0]
    assert "--clean-train: 3 clean-labelled keys join the trusted subset (clean_indices.npy) with their clean " \
           "labels in train.txt: 1 appended, 2 already in it (1 relabeled)" in out
    convert(capsys, "clothing1m", src, dst)  # again, without: no trusted subset left behind
    assert len(listed(dst, "train")) == 8 and not (dst / "clean_indices.npy").exists()


def test_clothing1m_clean_val_joins_the_trusted_subset(tmp_path, capsys):
    src, dst = clothing1m(tmp_path / "src"), tmp_path / "dst"
    convert(capsys, "clothing1m", src, dst, "--clean-train", "--clean-val")
    assert listed(dst, "train")[-2:] == [(key(8), CLEAN[8]), (key(12), CLEAN[12])]
    assert np.load(dst / "clean_indices.npy").tolist() == [6, 7, 8, 9]
    assert len(np.load(dst / "train_true_labels.npy")) == 10


def test_training_takes_the_clean_subset_from_clean_indices(tmp_path, capsys):
    """L2B trains with the converted trusted subset as its clean subset; a held-out one is refused."""
    from engine.train import main as train

    src, dst, out = clothing1m(tmp_path / "src"), tmp_path / "dst", tmp_path / "run"
    write(src / "clean_train_key_list.txt", [key(i) for i in (0, 6, 7, 8, 12)])  # every class once or more
    convert(capsys, "clothing1m", src, dst, "--clean-train")
    trusted = [0, 6, 7, 8, 9]  # key 8 and key 12 appended
    assert load_dataset("filelist", str(dst)).trusted_train.tolist() == trusted
    common = ["--dataset", "filelist", "--data-dir", str(dst), "--noise", "none", "--epochs", "1", "--warmup-epochs",
              "0", "--batch-size", "4", "--device", "cpu"]
    assert train(["--method", "l2b", *common, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clean_subset_size"] == len(trusted)
    assert "clean_size: 5" in (out / "config.yaml").read_text()
    table = pd.read_csv(out / "label_issues.csv")
    assert np.flatnonzero(table["clean_subset"]).tolist() == trusted and not table["is_label_issue"][trusted].any()
    capsys.readouterr()
    assert train(["--method", "l2b", *common, "--clean-size", "2", "--out", str(tmp_path / "run2")]) == 2
    assert "has its own clean subset (clean_indices.npy, 5 samples)" in capsys.readouterr().err
    # The run's config.yaml on a conversion with another trusted subset: its recorded size is no request.
    labels = load_dataset("filelist", str(dst)).y_train
    one_per_class = [trusted[list(labels[trusted]).index(c)] for c in sorted(set(labels[trusted]))]
    assert len(one_per_class) < len(trusted)
    np.save(dst / "clean_indices.npy", np.array(one_per_class))
    assert train(["--config", str(out / "config.yaml"), "--out", str(tmp_path / "run3")]) == 0
    assert f"clean_size: {len(one_per_class)}" in (tmp_path / "run3" / "config.yaml").read_text()


@pytest.mark.parametrize("indices, dtype, message", [
    ([0, 9], np.int64, r"must lie in \[0, 8\), found 0..9"),
    (range(8), np.int64, r"all 8 samples are in the clean subset"),
    ([0.0], np.float32, r"expected a 1-D array of integer sample indices or a boolean mask \[8\]"),
])
def test_a_bad_clean_indices_file_is_named(tmp_path, capsys, indices, dtype, message):
    src, dst = clothing1m(tmp_path / "src"), tmp_path / "dst"
    convert(capsys, "clothing1m", src, dst)
    np.save(dst / "clean_indices.npy", np.asarray(indices, dtype=dtype))
    with pytest.raises(ValueError, match=r"clean_indices.npy \(lines of train.txt\): " + message):
        load_dataset("filelist", str(dst))


def test_clothing1m_reads_an_annotations_folder(tmp_path, capsys):
    src = clothing1m(tmp_path / "src")
    (src / "annotations").mkdir()
    for name in ("noisy_label_kv.txt", "clean_label_kv.txt", "noisy_train_key_list.txt", "clean_test_key_list.txt"):
        os.rename(src / name, src / "annotations" / name)
    convert(capsys, "clothing1m", src, tmp_path / "dst")
    assert len(listed(tmp_path / "dst", "train")) == 8


def spoil_line(path, number, text):
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    write(path, lines)


@pytest.mark.parametrize("spoil, message", [
    (lambda src: os.remove(src / "noisy_train_key_list.txt"),
     "{src}/noisy_train_key_list.txt is missing (the noisy training keys)"),
    (lambda src: spoil_line(src / "noisy_label_kv.txt", 3, f"{key(2)} two"),
     "{src}/noisy_label_kv.txt:3: expected 'path label' with a class index 0, 1, ..., got '" + key(2) + " two'"),
    (lambda src: spoil_line(src / "noisy_label_kv.txt", 3, "2"),
     "{src}/noisy_label_kv.txt:3: expected 'path label' with a class index 0, 1, ..., got '2'"),
    (lambda src: spoil_line(src / "noisy_label_kv.txt", 3, f"{key(3)} 1"),
     "{src}/noisy_label_kv.txt:4: " + key(3) + " has label 3 here but 1 at {src}/noisy_label_kv.txt:3"),
    (lambda src: spoil_line(src / "noisy_label_kv.txt", 3, f"{key(2)} 7"),
     "{src}/noisy_label_kv.txt:3: label 7 is not one of the 4 classes of {src}/category_names_eng.txt"),
    (lambda src: spoil_line(src / "noisy_train_key_list.txt", 5, key(9)),
     "{src}/noisy_train_key_list.txt:5: " + key(9) + " has no label in {src}/noisy_label_kv.txt"),
    (lambda src: spoil_line(src / "clean_test_key_list.txt", 2, "../elsewhere/x.jpg"),
     "{src}/clean_test_key_list.txt:2: ../elsewhere/x.jpg must be a relative path inside the data set's folder"),
    (lambda src: spoil_line(src / "clean_test_key_list.txt", 2, f"{key(9)} {key(10)}"),
     "{src}/clean_test_key_list.txt:2: expected one image path, got '" + f"{key(9)} {key(10)}'"),
    (lambda src: [spoil_line(src / name, 1, text) for name, text in (("noisy_train_key_list.txt", "loose.jpg"),
                                                                     ("noisy_label_kv.txt", "loose.jpg 0"))],
     "{src}/noisy_label_kv.txt:1: loose.jpg is not inside an image folder of the data set"),
    (lambda src: os.remove(src / key(4)),
     "{src}/noisy_label_kv.txt:5: image {dst}/" + key(4) + " is missing (1 of the 8 train images are; "
     "--skip-missing leaves them out)"),
])
def test_clothing1m_bad_input_is_named(tmp_path, capsys, spoil, message):
    src, dst = clothing1m(tmp_path / "src"), tmp_path / "dst"
    spoil(src)
    assert refused(capsys, "clothing1m", src, dst) == message.format(src=src, dst=dst)
    assert not (dst / "train.txt").exists()


def test_clothing1m_missing_clean_train_list_only_matters_with_the_option(tmp_path, capsys):
    src = clothing1m(tmp_path / "src")
    os.remove(src / "clean_train_key_list.txt")
    convert(capsys, "clothing1m", src, tmp_path / "dst")
    assert refused(capsys, "clothing1m", src, tmp_path / "dst", "--clean-train") == \
           f"{src}/clean_train_key_list.txt is missing (the clean train keys (--clean-train))"


def test_missing_images_can_be_left_out(tmp_path, capsys):
    src, dst = clothing1m(tmp_path / "src"), tmp_path / "dst"
    os.remove(src / key(0))
    os.remove(src / key(10))
    out = convert(capsys, "clothing1m", src, dst, "--skip-missing")
    assert_lists(dst, "train", [(src / key(i), NOISY[i]) for i in range(1, 8)])
    assert np.load(dst / "train_true_labels.npy").tolist() == [-1, -1, -1, -1, -1, 3, 3]  # still aligned
    assert [label for _, label in listed(dst, "test")] == [1, 3]
    assert "1 missing train images left out (--skip-missing)" in out


def test_an_image_listed_again_keeps_its_first_line(tmp_path, capsys):
    src, dst = clothing1m(tmp_path / "src"), tmp_path / "dst"
    write(src / "noisy_train_key_list.txt", [key(i) for i in (0, 1, 6, 2, 6, 3, 4, 5, 7, 1)])
    out = convert(capsys, "clothing1m", src, dst, "--clean-train")
    # key 6's first line takes its clean label and stays the trusted one; its second line is left out
    expected = [(src / key(i), NOISY[i]) for i in (0, 1)] + [(src / key(6), CLEAN[6])] + \
               [(src / key(i), NOISY[i]) for i in (2, 3, 4, 5)] + [(src / key(i), CLEAN[i]) for i in (7, 8)]
    assert_lists(dst, "train", expected)
    assert np.load(dst / "clean_indices.npy").tolist() == [2, 7, 8]
    assert np.load(dst / "train_true_labels.npy").tolist() == [1, -1, 3, -1, -1, -1, -1, 3, 0]
    assert "2 train lines naming an image listed before left out (its first line's label kept; 1 of them gave " \
           f"another label), e.g. {key(6)}" in out
    assert len(load_dataset("filelist", str(dst)).y_train) == 9


def test_dst_folders_are_never_replaced(tmp_path, capsys):
    src, dst = clothing1m(tmp_path / "src"), tmp_path / "dst"
    (dst / "images").mkdir(parents=True)
    assert refused(capsys, "clothing1m", src, dst) == \
           f"{dst}/images exists and is not a link to {src}/images: move it away or choose another DST"
    (tmp_path / "a file").write_text("mine")
    assert refused(capsys, "clothing1m", src, tmp_path / "a file") == f"DST {tmp_path}/a file is a file, not a folder"
    os.rmdir(dst / "images")
    os.symlink(tmp_path, dst / "images")  # a link elsewhere (an older SRC) is replaced
    convert(capsys, "clothing1m", src, dst)
    assert os.path.realpath(dst / "images") == os.path.realpath(src / "images")


def test_the_command_line_prints_one_line_for_bad_input(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine.data.layouts", "clothing1m", str(tmp_path / "none"),
                             str(tmp_path / "dst")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == f"{PROG}: error: SRC {tmp_path}/none is not a folder\n"


# ------------------------------------------------------------------ WebVision

def webvision(root):
    google = [(f"google/q{label + 1:04d}/g{i}.jpg", label) for i, label in enumerate([0, 1, 2, 3, 0, 2])]
    flickr = [(f"flickr/q{label + 1:04d}/f{i}.jpg", label) for i, label in enumerate([1, 3])]
    val = [(f"val{i:06d}.jpg", label) for i, label in enumerate([0, 1, 2, 3], 1)]
    for i, (path, _) in enumerate(google + flickr):
        image(root / path, i)
    for i, (name, _) in enumerate(val):
        image(root / "val_images_256" / name, i)
    for name, pairs in (("train_filelist_google", google), ("train_filelist_flickr", flickr), ("val_filelist", val)):
        write(root / "info" / f"{name}.txt", [f"{path} {label}" for path, label in pairs])
    write(root / "info" / "synsets.txt", ["n01440764 tench", "n01443537 goldfish", "n01484850 great white shark",
                                          "n01491361 tiger shark"])
    return root, google, flickr, val


def test_webvision(tmp_path, capsys):
    (src, google, flickr, val), dst = webvision(tmp_path / "src"), tmp_path / "dst"
    out = convert(capsys, "webvision", src, dst)
    assert_lists(dst, "train", [(src / path, label) for path, label in google])
    assert_lists(dst, "test", [(src / "val_images_256" / name, label) for name, label in val])
    assert sorted(os.listdir(dst)) == ["README.txt", "classes.txt", "google", "test.txt", "train.txt",
                                       "val_images_256"]
    assert "--noise none" in out
    data = load_dataset("filelist", str(dst))
    assert data.y_train.tolist() == [label for _, label in google] and data.num_classes == 4

    mini = tmp_path / "mini"
    convert(capsys, "webvision", src, mini, "--classes", 3, "--sources", "google", "flickr")
    kept = [(src / path, label) for path, label in google + flickr if label < 3]
    assert_lists(mini, "train", kept)
    assert [label for _, label in listed(mini, "test")] == [0, 1, 2]
    assert (mini / "classes.txt").read_text().splitlines() == ["n01440764 tench", "n01443537 goldfish",
                                                               "n01484850 great white shark"]
    assert os.path.islink(mini / "flickr")


def test_webvision_bad_input_is_named(tmp_path, capsys):
    src = webvision(tmp_path / "src")[0]
    assert refused(capsys, "webvision", src, tmp_path / "dst", "--sources", "flickr", "--classes", 0) == \
           "--classes must be >= 1, got 0"
    os.remove(src / "info" / "train_filelist_flickr.txt")
    assert refused(capsys, "webvision", src, tmp_path / "dst", "--sources", "flickr") == \
           f"{src}/info/train_filelist_flickr.txt is missing (the flickr training list)"
    spoil_line(src / "info" / "val_filelist.txt", 2, "val000002.jpg")
    assert refused(capsys, "webvision", src, tmp_path / "dst") == \
           f"{src}/info/val_filelist.txt:2: expected 'path label' with a class index 0, 1, ..., got 'val000002.jpg'"


# ------------------------------------------------------------------ Tiny ImageNet

WNIDS = ["n01443537", "n01629819", "n01641577"]


def tiny_imagenet(root):
    write(root / "wnids.txt", WNIDS)
    write(root / "words.txt", ["n01443537\tgoldfish, Carassius auratus", "n01629819\tEuropean fire salamander",
                               "n00000001\tsomething else"])
    for label, wnid in enumerate(WNIDS):
        for i in range(2):
            image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", label)
        write(root / "train" / wnid / f"{wnid}_boxes.txt", [f"{wnid}_0.JPEG\t0\t0\t8\t8"])
    annotations = [("val_0.JPEG", WNIDS[2]), ("val_1.JPEG", WNIDS[0]), ("val_2.JPEG", WNIDS[1])]
    for i, (name, _) in enumerate(annotations):
        image(root / "val" / "images" / name, i)
    write(root / "val" / "val_annotations.txt", [f"{name}\t{wnid}\t0\t0\t8\t8" for name, wnid in annotations])
    return root


def test_tiny_imagenet(tmp_path, capsys):
    src, dst = tiny_imagenet(tmp_path / "tiny-imagenet-200"), tmp_path / "dst"
    out = convert(capsys, "tiny_imagenet", src, dst)
    assert_lists(dst, "train", [(src / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", label)
                                for label, wnid in enumerate(WNIDS) for i in range(2)])
    assert_lists(dst, "test", [(src / "val" / "images" / f"val_{i}.JPEG", label) for i, label in enumerate([2, 0, 1])])
    assert (dst / "classes.txt").read_text().splitlines() == [
        "n01443537 goldfish, Carassius auratus", "n01629819 European fire salamander", "n01641577"]
    assert "--noise symmetric --noise-rate 0.2" in out and "train.txt holds clean labels" in out
    assert load_dataset("filelist", str(dst)).y_test.tolist() == [2, 0, 1]


def test_tiny_imagenet_bad_input_is_named(tmp_path, capsys):
    src = tiny_imagenet(tmp_path / "src")
    spoil_line(src / "val" / "val_annotations.txt", 2, "val_1.JPEG\tn09999999\t0\t0\t8\t8")
    assert refused(capsys, "tiny_imagenet", src, tmp_path / "dst") == \
           f"{src}/val/val_annotations.txt:2: class id n09999999 is not in {src}/wnids.txt"
    write(src / "wnids.txt", WNIDS + ["n09999999"])
    assert refused(capsys, "tiny_imagenet", src, tmp_path / "dst") == \
           f"{src}/train/n09999999/images is missing (the training images of class n09999999)"


# ------------------------------------------------------------------ ISIC 2019

ISIC_HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
ISIC_LABELS = [0] * 10 + [1] * 5 + [2] * 5  # MEL, NV, BCC


def isic2019(root):
    rows = [ISIC_HEADER]
    for i, label in enumerate(ISIC_LABELS):
        image(root / "ISIC_2019_Training_Input" / f"ISIC_{i:07d}.jpg", i)
        rows.append(f"ISIC_{i:07d}," + ",".join("1.0" if c == label else "0.0" for c in range(9)))
    write(root / "ISIC_2019_Training_GroundTruth.csv", rows)
    return root


def test_isic2019(tmp_path, capsys):
    src = isic2019(tmp_path / "src")
    out = convert(capsys, "isic2019", src, tmp_path / "a")
    train, test = listed(tmp_path / "a", "train"), listed(tmp_path / "a", "test")
    assert sorted(label for _, label in test) == [0, 0, 1, 2]  # 20% of each class
    everything = sorted(train + test)
    assert everything == [(f"ISIC_2019_Training_Input/ISIC_{i:07d}.jpg", label) for i, label in enumerate(ISIC_LABELS)]
    assert_lists(tmp_path / "a", "test", [(src / path, label) for path, label in test])
    assert (tmp_path / "a" / "classes.txt").read_text().splitlines() == ["MEL", "NV", "BCC"]
    assert "--method l2b" in out and "--noise symmetric" in out
    convert(capsys, "isic2019", src, tmp_path / "b")
    assert listed(tmp_path / "b", "test") == test  # seeded
    convert(capsys, "isic2019", src, tmp_path / "c", "--seed", 1)
    assert listed(tmp_path / "c", "test") != test
    convert(capsys, "isic2019", src, tmp_path / "d", "--test-fraction", 0.4)
    assert sorted(label for _, label in listed(tmp_path / "d", "test")) == [0, 0, 0, 0, 1, 1, 2, 2]
    data = load_dataset("filelist", str(tmp_path / "a"))
    assert data.num_classes == 3 and len(data.y_train) == 16


def test_isic2019_test_fraction_of_the_docs_gives_l2bs_split_sizes(tmp_path):
    """docs/datasets.md: on the published class counts (25,331 images), --test-fraction 0.1694
    holds out L2B's 4,291 test images and leaves 20,400 + 640 (it said 0.17, which holds out 4,307)."""
    from engine.data.layouts import convert_isic2019

    counts = [4522, 12875, 3323, 867, 2624, 239, 253, 628]  # MEL, NV, BCC, AK, BKL, DF, VASC, SCC
    rows = [ISIC_HEADER] + [f"ISIC_{i:07d}," + ",".join("1.0" if c == label else "0.0" for c in range(9))
                            for i, label in enumerate(np.repeat(np.arange(8), counts))]
    write(tmp_path / "ISIC_2019_Training_GroundTruth.csv", rows)
    (tmp_path / "ISIC_2019_Training_Input").mkdir()  # the images are looked for when the lists are written
    for fraction, test in ((0.1694, 4291), (0.17, 4307)):
        conversion = convert_isic2019(str(tmp_path), test_fraction=fraction, seed=0)
        assert (len(conversion.test), len(conversion.train)) == (test, 25331 - test)


@pytest.mark.parametrize("row, what", [
    ("ISIC_0000003,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0", "two ones"),
    ("ISIC_0000003,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0", "none"),
    ("ISIC_0000003,1.0,0.0,0.0", "short"),
    ("ISIC_0000003,one,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0", "not a number"),
])
def test_isic2019_rows_must_be_one_hot(tmp_path, capsys, row, what):
    src = isic2019(tmp_path / "src")
    spoil_line(src / "ISIC_2019_Training_GroundTruth.csv", 5, row)
    assert refused(capsys, "isic2019", src, tmp_path / "dst") == (
        f"{src}/ISIC_2019_Training_GroundTruth.csv:5: expected an image id and a one-hot row of 9 values (one 1, "
        f"the rest 0), got {row!r}"), what


def test_isic2019_options_and_header_are_checked(tmp_path, capsys):
    src = isic2019(tmp_path / "src")
    assert refused(capsys, "isic2019", src, tmp_path / "dst", "--test-fraction", 1) == \
           "--test-fraction must be in (0, 1), got 1.0"
    spoil_line(src / "ISIC_2019_Training_GroundTruth.csv", 1, "id,MEL,NV")
    assert refused(capsys, "isic2019", src, tmp_path / "dst") == \
           f"{src}/ISIC_2019_Training_GroundTruth.csv:1: expected the header 'image,MEL,NV,...', got 'id,MEL,NV'"


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path, capsys):
    """Windows editors and Excel start UTF-8 text with a byte-order mark: it made the first key
    of a Clothing1M list 'has no label' and ISIC's csv header unrecognized."""
    src = clothing1m(tmp_path / "clothing1m")
    for name in ("noisy_label_kv.txt", "noisy_train_key_list.txt", "category_names_eng.txt"):
        (src / name).write_bytes(b"\xef\xbb\xbf" + (src / name).read_bytes())
    convert(capsys, "clothing1m", src, tmp_path / "a")
    assert_lists(tmp_path / "a", "train", [(src / key(i), NOISY[i]) for i in range(8)])
    assert (tmp_path / "a" / "classes.txt").read_text().splitlines() == ["T-Shirt", "Shirt", "Knitwear", "Chiffon"]
    src = isic2019(tmp_path / "isic")
    ground_truth = src / "ISIC_2019_Training_GroundTruth.csv"
    ground_truth.write_bytes(b"\xef\xbb\xbf" + ground_truth.read_bytes())
    convert(capsys, "isic2019", src, tmp_path / "b")
    assert sorted(listed(tmp_path / "b", "train") + listed(tmp_path / "b", "test")) == [
        (f"ISIC_2019_Training_Input/ISIC_{i:07d}.jpg", label) for i, label in enumerate(ISIC_LABELS)]
    assert (tmp_path / "b" / "classes.txt").read_text().splitlines() == ["MEL", "NV", "BCC"]


# ------------------------------------------------------------------ Food-101N

FOOD_CLASSES = ["apple_pie", "beet_salad", "churros"]
FOOD_KEYS = [("apple_pie/a1.jpg", 0), ("apple_pie/a2.jpg", 0), ("beet_salad/b1.jpg", 1), ("churros/c1.jpg", 2)]


def food101n(root):
    write(root / "meta" / "classes.txt", ["class_name"] + FOOD_CLASSES)
    write(root / "meta" / "imagelist.tsv", ["class_name/key"] + [path for path, _ in FOOD_KEYS])
    write(root / "meta" / "verified_train.tsv", ["class_name/key\tverification_label", "apple_pie/a2.jpg\t1",
                                                 "beet_salad/b1.jpg\t0", "churros/a1.jpg\t1"])
    write(root / "meta" / "verified_val.tsv", ["class_name/key\tverification_label", "churros/c1.jpg\t1"])
    for i, (path, _) in enumerate(FOOD_KEYS):
        image(root / "images" / path, i)
    return root


def food101(root):
    write(root / "meta" / "test.txt", ["apple_pie/100", "churros/300", "beet_salad/200"])
    for i, name in enumerate(["apple_pie/100", "churros/300", "beet_salad/200"]):
        image(root / "images" / f"{name}.jpg", i)
    return root


def test_food101n(tmp_path, capsys):
    src, dst = food101n(tmp_path / "Food-101N_release"), tmp_path / "dst"
    out = convert(capsys, "food101n", src, dst)
    assert_lists(dst, "train", [(src / "images" / path, label) for path, label in FOOD_KEYS])
    assert not (dst / "test.txt").exists() and "--food101 FOLDER" in out
    assert np.load(dst / "train_verified.npy").tolist() == [-1, 1, 0, 1]
    assert "1 verified keys are not in meta/imagelist.tsv under that class: ignored" in out
    assert (dst / "classes.txt").read_text().splitlines() == FOOD_CLASSES

    test_root = food101(tmp_path / "food-101")
    convert(capsys, "food101n", src, dst, "--food101", test_root)
    assert_lists(dst, "test", [(test_root / "images" / f"{name}.jpg", label)
                               for name, label in [("apple_pie/100", 0), ("churros/300", 2), ("beet_salad/200", 1)]])
    assert load_dataset("filelist", str(dst)).y_train.tolist() == [0, 0, 1, 2]
    out = convert(capsys, "food101n", src, dst)  # without --food101 again: no test.txt of before
    assert not (dst / "test.txt").exists() and f"removed test.txt of an earlier conversion into {dst}" in out
    write(src / "meta" / "imagelist.tsv", ["class_name/key"] + [path for path, _ in FOOD_KEYS] + ["apple_pie/a2.jpg"])
    out = convert(capsys, "food101n", src, dst)  # an image listed again keeps its first line and its verification
    assert np.load(dst / "train_verified.npy").tolist() == [-1, 1, 0, 1] and "1 train lines naming an image" in out


def test_food101n_bad_input_is_named(tmp_path, capsys):
    src = food101n(tmp_path / "src")
    spoil_line(src / "meta" / "imagelist.tsv", 3, "burrito/x.jpg")
    assert refused(capsys, "food101n", src, tmp_path / "dst") == \
           f"{src}/meta/imagelist.tsv:3: class 'burrito' of burrito/x.jpg is not in {src}/meta/classes.txt"
    src = food101n(tmp_path / "src2")
    spoil_line(src / "meta" / "verified_train.tsv", 2, "apple_pie/a2.jpg\tyes")
    assert refused(capsys, "food101n", src, tmp_path / "dst") == \
           f"{src}/meta/verified_train.tsv:2: expected 'class/key<TAB>0 or 1', got 'apple_pie/a2.jpg\\tyes'"
    src = food101n(tmp_path / "src3")
    assert refused(capsys, "food101n", src, tmp_path / "dst", "--food101", tmp_path / "nowhere") == \
           f"{tmp_path}/nowhere/images is missing (the images of --food101)"


# ------------------------------------------------------------------ ANIMAL-10N

def animal10n(root):
    train = [("0_00001.jpg", 0), ("1_00002.png", 1), ("2_00003.jpg", 2), ("3_00004.png", 3), ("1_00005.jpg", 1)]
    test = [("0_10001.jpg", 0), ("3_10002.png", 3)]
    for folder, files in (("training", train), ("testing", test)):
        for i, (name, _) in enumerate(files):
            image(root / folder / name, i)
    (root / "training" / "Thumbs.db").write_bytes(b"not an image")  # other files are passed over
    (root / "training" / "._0_00001.jpg").write_bytes(b"macOS metadata")  # and so are hidden ones
    return root, train, test


def test_animal10n(tmp_path, capsys):
    (src, train, test), dst = animal10n(tmp_path / "src"), tmp_path / "dst"
    out = convert(capsys, "animal10n", src, dst)
    assert_lists(dst, "train", [(src / "training" / name, label) for name, label in sorted(train)])
    assert_lists(dst, "test", [(src / "testing" / name, label) for name, label in sorted(test)])
    assert (dst / "classes.txt").read_text().splitlines() == ["cat", "lynx", "wolf", "coyote"]
    assert "--noise none" in out
    assert load_dataset("filelist", str(dst)).y_test.tolist() == [0, 3]
    convert(capsys, "animal10n", src, src)  # in place: the folders are already there
    assert listed(src, "train") == listed(dst, "train") and not os.path.islink(src / "training")


@pytest.mark.parametrize("in_place", [False, True])
def test_files_no_conversion_wrote_are_not_replaced(tmp_path, capsys, in_place):
    """The publisher's README.txt and the user's classes.txt were overwritten (in SRC too, in place)."""
    src = animal10n(tmp_path / "src")[0]
    dst = src if in_place else tmp_path / "dst"
    dst.mkdir(exist_ok=True)
    (dst / "README.txt").write_text("ANIMAL-10N, by its authors\n")
    (dst / "classes.txt").write_text("mine\n")
    assert refused(capsys, "animal10n", src, dst) == (f"DST {dst} holds classes.txt, README.txt, which no conversion "
                                                      f"wrote: choose another DST (a conversion writes these files)")
    assert (dst / "README.txt").read_text() == "ANIMAL-10N, by its authors\n" and (dst / "classes.txt").read_text() \
        == "mine\n"


def test_a_file_name_that_is_not_utf8_is_named_not_a_traceback(tmp_path, capsys):
    src = animal10n(tmp_path / "src")[0]
    os.rename(os.fsencode(src / "training" / "0_00001.jpg"), os.fsencode(src / "training") + b"/0_caf\xe9.jpg")
    assert refused(capsys, "animal10n", src, tmp_path / "dst") == (
        f"b'{src}/training/0_caf\\xe9.jpg': the file name is not UTF-8; rename it (a list is UTF-8 text)")


@pytest.mark.parametrize("name", ["cat_00001.jpg", "10_00001.jpg", "7.jpg"])
def test_animal10n_file_names_carry_the_label(tmp_path, capsys, name):
    src = animal10n(tmp_path / "src")[0]
    image(src / "testing" / name)
    assert refused(capsys, "animal10n", src, tmp_path / "dst") == (
        f"{src}/testing/{name}: expected a file named '<label>_<id>.<ext>' with a label 0-9")
