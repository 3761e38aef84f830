"""The real-world noisy data sets of the papers, converted to the `filelist` layout.

    python -m engine.data.layouts NAME SRC DST [options]

reads the data set NAME as its publishers distribute it in SRC and writes DST/train.txt and
DST/test.txt ('relative/path label' lines: `--dataset filelist --data-dir DST`), links SRC's
image folders into DST (so the list paths are relative and inside DST; SRC is not copied nor
changed), and where the data set has them the class names (classes.txt: line i names class i)
and per-sample extras (train_true_labels.npy, train_verified.npy, clean_indices.npy), with a
README.txt that says what each file holds. NAME is one of:

- clothing1m: Clothing1M (noisy_label_kv.txt, clean_label_kv.txt, the *_key_list.txt files,
  category_names_eng.txt, images/); trains on the noisy training keys with their noisy labels,
  tests on the clean test keys. `--clean-train` adds the clean training keys as a trusted subset.
- webvision: WebVision 1.0 (info/*.txt, google/, flickr/, val_images_256/); `--classes 50` (the
  default) keeps the first 50 classes: mini-WebVision.
- tiny_imagenet: Tiny ImageNet (tiny-imagenet-200: wnids.txt, train/, val/); clean labels.
- isic2019: the ISIC 2019 training set (ISIC_2019_Training_Input/, the ground-truth csv); clean
  labels, a seeded class-stratified hold-out as test set (`--test-fraction`, `--seed`).
- food101n: Food-101N (meta/imagelist.tsv, meta/verified_*.tsv, images/); its test set is
  Food-101's (`--food101 FOLDER`).
- animal10n: ANIMAL-10N (training/, testing/ with files '<label>_<id>.jpg').

Every list is written atomically; bad input (a missing file, a malformed line, a key without
label) stops the conversion with one line naming the file and line. Each list entry's image is
checked to exist (`--skip-missing` leaves missing ones out instead); an image a list names again
keeps its first line (a note counts the others).
"""
import argparse
import csv
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from engine.data.datasets import IMAGE_SUFFIXES, LIST_ENCODING, class_index, image_names, not_utf8
from engine.outputs import write_atomically

PROG = "python -m engine.data.layouts"
ANIMAL10N_CLASSES = ["cat", "lynx", "wolf", "coyote", "cheetah", "jaguar", "chimpanzee", "orangutan", "hamster",
                     "guinea pig"]


class LayoutError(ValueError):
    """Bad or missing input; the command prints it as one line."""


class Entry(NamedTuple):
    path: str    # relative to DST, '/'-separated
    label: int
    where: str   # how errors name it: 'list:line' or the image file


@dataclass
class Conversion:
    """What a layout reads from SRC: the lists, the folders to link, the extras."""
    name: str
    method: str                     # the method of the printed training command
    train: list                     # [Entry]
    test: list | None               # None: the data set has no test split of its own
    links: dict                     # name in DST -> folder it links to
    noisy: bool = True              # train labels are the given noisy ones (else clean: add noise)
    classes: list | None = None
    classes_from: str = ""          # the file the class names come from (for errors)
    per_sample: dict = field(default_factory=dict)  # npy name -> (values aligned with train, dtype, description)
    clean: list | None = None       # per train entry: a trusted label (clean_indices.npy)
    notes: list = field(default_factory=list)       # lines for README.txt and the terminal


# ---------------------------------------------------------------- reading SRC's files

def _need_file(path, what):
    if not os.path.isfile(path):
        raise LayoutError(f"{path} is missing ({what})")
    return path


def _need_dir(path, what):
    if not os.path.isdir(path):
        raise LayoutError(f"{path} is missing ({what})")
    return path


def _lines(path, what):
    """(where, stripped text) of each non-blank line of a text file (UTF-8, a byte-order mark
    allowed, as the engine reads its lists)."""
    _need_file(path, what)
    try:
        with open(path, encoding=LIST_ENCODING) as f:
            return [(f"{path}:{number}", line.strip()) for number, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError as error:
        raise LayoutError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start}) ({what})") from None


def _without_header(lines, header):
    """The lines after a first line that starts with `header` (the .tsv files' column names)."""
    return lines[1:] if lines and lines[0][1].startswith(header) else lines


def _checked_path(path, where):
    """A list's path: relative, without '..'."""
    if path.startswith("/") or os.path.isabs(path) or os.pardir in path.split("/"):
        raise LayoutError(f"{where}: {path} must be a relative path inside the data set's folder")
    return path


def _key_label_lines(path, what):
    """(where, key, label) of each 'key label' line."""
    pairs = []
    for where, text in _lines(path, what):
        parts = text.rsplit(maxsplit=1)
        if len(parts) != 2 or class_index(parts[1]) is None:
            raise LayoutError(f"{where}: expected 'path label' with a class index 0, 1, ..., got {text!r}")
        pairs.append((where, _checked_path(parts[0], where), class_index(parts[1])))
    return pairs


def _label_map(path, what):
    """{key: (label, where)} of a 'key label' file; a key with two different labels is refused."""
    labels = {}
    for where, key, label in _key_label_lines(path, what):
        earlier = labels.setdefault(key, (label, where))
        if earlier[0] != label:
            raise LayoutError(f"{where}: {key} has label {label} here but {earlier[0]} at {earlier[1]}")
    return labels


def _keys(path, what):
    """(where, key) of each line of a key list (one image path a line)."""
    keys = []
    for where, text in _lines(path, what):
        if len(text.split()) != 1:
            raise LayoutError(f"{where}: expected one image path, got {text!r}")
        keys.append((where, _checked_path(text, where)))
    return keys


def _labelled(keys, labels, labels_path):
    """Entries of the keys with their labels from `labels` (read from labels_path); an entry
    is named by the line that gives its label."""
    entries = []
    for where, key in keys:
        if key not in labels:
            raise LayoutError(f"{where}: {key} has no label in {labels_path}")
        entries.append(Entry(key, *labels[key]))
    return entries


def _names(path, what, header=None):
    """The class names of a file, one a line (after a header line when it starts with `header`)."""
    lines = _lines(path, what)
    return [text for _, text in (_without_header(lines, header) if header else lines)]


def _folders_of(entries, root):
    """{top folder: its path under root} for the entries' paths (the folders to link)."""
    links = {}
    for entry in entries:
        top, inside, _ = entry.path.partition("/")
        if not inside:
            raise LayoutError(f"{entry.where}: {entry.path} is not inside an image folder of the data set")
        if top not in links:
            links[top] = _need_dir(os.path.join(root, top), f"the image folder of {entry.where}: {entry.path}")
    return links


# ---------------------------------------------------------------- the layouts

def _clothing1m_file(src, name):
    """SRC/name, or SRC/annotations/name as some copies keep them."""
    nested = os.path.join(src, "annotations", name)
    return nested if os.path.isfile(nested) and not os.path.isfile(os.path.join(src, name)) else os.path.join(src, name)


def convert_clothing1m(src, clean_train=False, clean_val=False):
    path = lambda name: _clothing1m_file(src, name)  # noqa: E731
    noisy_path, clean_path = path("noisy_label_kv.txt"), path("clean_label_kv.txt")
    noisy, clean = _label_map(noisy_path, "the noisy labels"), _label_map(clean_path, "the clean labels")
    train = _labelled(_keys(path("noisy_train_key_list.txt"), "the noisy training keys"), noisy, noisy_path)
    test = _labelled(_keys(path("clean_test_key_list.txt"), "the clean test keys"), clean, clean_path)
    true = [clean.get(entry.path, (-1,))[0] for entry in train]
    conversion = Conversion("clothing1m", "jnpl", train, test, {})
    conversion.per_sample["train_true_labels.npy"] = (
        true, np.int64, f"the clean label of each train.txt line where {os.path.basename(clean_path)} has one, "
                        f"-1 elsewhere")
    names_path = path("category_names_eng.txt")
    if os.path.isfile(names_path):
        conversion.classes, conversion.classes_from = _names(names_path, "the class names"), names_path
    for chosen, split, flag in ((clean_train, "train", "--clean-train"), (clean_val, "val", "--clean-val")):
        if chosen:
            keys = _keys(path(f"clean_{split}_key_list.txt"), f"the clean {split} keys ({flag})")
            _add_trusted(conversion, _labelled(keys, clean, clean_path), flag)
    conversion.links = _folders_of(conversion.train + test, src)
    return conversion


def _add_trusted(conversion, trusted, flag):
    """The trusted entries as a clean subset: a key already in train.txt takes its trusted
    label there, another is appended; clean_indices.npy lists them."""
    position = _first_lines(entry.path for entry in conversion.train)
    if conversion.clean is None:
        conversion.clean = [False] * len(conversion.train)
    true = conversion.per_sample["train_true_labels.npy"][0]
    relabeled = appended = 0
    for entry in trusted:
        i = position.get(entry.path)
        if i is None:
            i = position[entry.path] = len(conversion.train)
            conversion.train.append(entry)
            conversion.clean.append(False)
            true.append(entry.label)
            appended += 1
        elif conversion.train[i].label != entry.label:
            conversion.train[i] = entry
            relabeled += 1
        conversion.clean[i] = True
    conversion.notes.append(f"{flag}: {len(trusted)} clean-labelled keys join the trusted subset (clean_indices.npy) "
                            f"with their clean labels in train.txt: {appended} appended, {len(trusted) - appended} "
                            f"already in it ({relabeled} relabeled)")


def convert_webvision(src, classes=50, sources=("google",)):
    if classes < 1:
        raise LayoutError(f"--classes must be >= 1, got {classes}")
    info = os.path.join(src, "info")
    sources = list(dict.fromkeys(sources))  # each once
    train = []
    for source in sources:
        listed = _key_label_lines(os.path.join(info, f"train_filelist_{source}.txt"), f"the {source} training list")
        train += [Entry(key, label, where) for where, key, label in listed if label < classes]
    val_path = os.path.join(info, "val_filelist.txt")
    test = []
    for where, key, label in _key_label_lines(val_path, "the validation list, the test set"):
        if label < classes:
            test.append(Entry(_checked_path(f"val_images_256/{key}", where), label, where))
    conversion = Conversion("webvision", "pmnar", train, test, _folders_of(train + test, src))
    synsets = os.path.join(info, "synsets.txt")
    if os.path.isfile(synsets):
        conversion.classes, conversion.classes_from = _names(synsets, "the class names")[:classes], synsets
    conversion.notes.append(f"classes 0-{classes - 1} of the {' + '.join(sources)} training images; test = the "
                            f"WebVision validation images of those classes")
    return conversion


def convert_tiny_imagenet(src):
    wnids_path = os.path.join(src, "wnids.txt")
    wnids, label_of = [], {}
    for where, wnid in _lines(wnids_path, "the class ids"):
        if label_of.setdefault(wnid, len(wnids)) != len(wnids):
            raise LayoutError(f"{where}: class id {wnid} is listed twice")
        wnids.append(wnid)
    train = []
    for label, wnid in enumerate(wnids):
        folder = _need_dir(os.path.join(src, "train", wnid, "images"), f"the training images of class {wnid}")
        files = image_names(folder)
        if not files:
            raise LayoutError(f"{folder}: no images of class {wnid}")
        train += [Entry(f"train/{wnid}/images/{name}", label, os.path.join(folder, name)) for name in files]
    test = []
    for where, text in _lines(os.path.join(src, "val", "val_annotations.txt"), "the validation labels, the test set"):
        fields = text.split()
        if len(fields) < 2:
            raise LayoutError(f"{where}: expected 'file<TAB>class id<TAB>box', got {text!r}")
        if fields[1] not in label_of:
            raise LayoutError(f"{where}: class id {fields[1]} is not in {wnids_path}")
        test.append(Entry(_checked_path(f"val/images/{fields[0]}", where), label_of[fields[1]], where))
    conversion = Conversion("tiny_imagenet", "pmnar", train, test, _folders_of(train + test, src), noisy=False)
    words_path = os.path.join(src, "words.txt")
    words = {}
    if os.path.isfile(words_path):  # 'wnid<TAB>names' for all of ImageNet
        words = dict(text.split("\t", 1) for _, text in _lines(words_path, "the class words") if "\t" in text)
    conversion.classes = [f"{wnid} {words[wnid]}" if wnid in words else wnid for wnid in wnids]
    conversion.classes_from = wnids_path
    return conversion


ISIC_CSV, ISIC_IMAGES = "ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Input"


def convert_isic2019(src, test_fraction=0.2, seed=0):
    if not 0 < test_fraction < 1:
        raise LayoutError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    csv_path = _need_file(os.path.join(src, ISIC_CSV), "the one-hot diagnoses")
    try:
        with open(csv_path, newline="", encoding=LIST_ENCODING) as f:  # Excel writes UTF-8 csv with a byte-order mark
            rows = [row for row in csv.reader(f) if row]
    except (UnicodeDecodeError, csv.Error) as error:
        raise LayoutError(f"{csv_path}: not a readable csv file ({error})") from None
    if not rows or rows[0][0] != "image" or len(rows[0]) < 3:
        got = ",".join(rows[0]) if rows else ""
        raise LayoutError(f"{csv_path}:1: expected the header 'image,MEL,NV,...', got {got!r}")
    classes = rows[0][1:]
    entries = []
    for number, row in enumerate(rows[1:], 2):
        where = f"{csv_path}:{number}"
        try:
            values = [float(value) for value in row[1:]]
        except ValueError:
            values = None
        if values is None or len(values) != len(classes) or sorted(values) != [0.0] * (len(classes) - 1) + [1.0]:
            raise LayoutError(f"{where}: expected an image id and a one-hot row of {len(classes)} values (one 1, "
                              f"the rest 0), got {','.join(row)!r}")
        entries.append(Entry(_checked_path(f"{ISIC_IMAGES}/{row[0]}.jpg", where), values.index(1.0), where))
    if not entries:
        raise LayoutError(f"{csv_path}: no images listed")
    labels = np.array([entry.label for entry in entries])
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(entries), dtype=bool)
    for label in np.unique(labels):  # class-stratified: the rare classes keep their share in both splits
        members = rng.permutation(np.flatnonzero(labels == label))
        held_out[members[:int(round(test_fraction * len(members)))]] = True
    train = [entry for entry, out in zip(entries, held_out) if not out]
    test = [entry for entry, out in zip(entries, held_out) if out]
    conversion = Conversion("isic2019", "l2b", train, test, _folders_of(entries, src), noisy=False,
                            classes=classes, classes_from=csv_path)
    conversion.notes.append(f"test = {len(test)} of the {len(entries)} training images (fraction {test_fraction} of "
                            f"each class, seed {seed}); the challenge's own test labels are not public")
    return conversion


def _food101n_class(key, where, label_of, classes_from):
    cls = key.split("/")[0]
    if cls not in label_of:
        raise LayoutError(f"{where}: class {cls!r} of {key} is not in {classes_from}")
    return label_of[cls]


def convert_food101n(src, food101=None):
    meta = os.path.join(src, "meta")
    list_path = os.path.join(meta, "imagelist.tsv")
    keys = [(where, _checked_path(text, where))
            for where, text in _without_header(_lines(list_path, "the training images"), "class_name")]
    classes_path = os.path.join(meta, "classes.txt")
    if os.path.isfile(classes_path):
        classes = _names(classes_path, "the class names", header="class_name")
    else:
        classes, classes_path = sorted({key.split("/")[0] for _, key in keys}), list_path
    label_of = {name: label for label, name in enumerate(classes)}
    train = [Entry(f"images/{key}", _food101n_class(key, where, label_of, classes_path), where) for where, key in keys]
    conversion = Conversion("food101n", "jnpl", train, None, {"images": _need_dir(os.path.join(src, "images"),
                                                                                  "the images")},
                            classes=classes, classes_from=classes_path)
    _add_verification(conversion, meta, _first_lines(entry.path[len("images/"):] for entry in train))
    if food101 is not None:
        conversion.test = _food101_test(food101, label_of, classes_path)
        conversion.links["food-101-images"] = os.path.join(food101, "images")
    else:
        conversion.notes.append("no test.txt: Food-101N has no test split of its own; its papers test on Food-101's "
                                "(give --food101 FOLDER, the unpacked food-101 archive); the engine needs DST/test.txt")
    return conversion


def _add_verification(conversion, meta, index):
    """train_verified.npy from meta/verified_train.tsv and verified_val.tsv ('key<TAB>0|1')."""
    verified = [-1] * len(conversion.train)
    unknown = 0
    for name in ("verified_train.tsv", "verified_val.tsv"):
        path = os.path.join(meta, name)
        if not os.path.isfile(path):
            continue
        for where, text in _without_header(_lines(path, "the verification labels"), "class_name"):
            fields = text.split("\t")
            if len(fields) != 2 or fields[1].strip() not in ("0", "1"):
                raise LayoutError(f"{where}: expected 'class/key<TAB>0 or 1', got {text!r}")
            i = index.get(fields[0].strip())
            if i is None:  # listed under another class in imagelist.tsv (the data set has a few)
                unknown += 1
                continue
            verified[i] = int(fields[1])
    count = sum(v >= 0 for v in verified)
    if count:
        conversion.per_sample["train_verified.npy"] = (
            verified, np.int8, "1 where a person verified the train.txt label as right, 0 as wrong, -1 not verified")
    if unknown:
        conversion.notes.append(f"{unknown} verified keys are not in meta/imagelist.tsv under that class: ignored")


def _food101_test(folder, label_of, classes_from):
    """Food-101's test split: FOLDER/meta/test.txt lines 'class/id', images FOLDER/images/class/id.jpg."""
    _need_dir(os.path.join(folder, "images"), "the images of --food101")
    test = []
    for where, text in _lines(os.path.join(folder, "meta", "test.txt"), "the test split of --food101"):
        key = _checked_path(text, where)
        test.append(Entry(f"food-101-images/{key}.jpg", _food101n_class(key, where, label_of, classes_from), where))
    return test


ANIMAL10N_NAME = re.compile(r"([0-9]+)_[^/]+")


def convert_animal10n(src):
    splits = {}
    for split, folder_name in (("train", "training"), ("test", "testing")):
        folder = _need_dir(os.path.join(src, folder_name), f"the {split} images")
        entries = []
        for name in image_names(folder):
            match = ANIMAL10N_NAME.fullmatch(name)
            if not match or int(match.group(1)) >= len(ANIMAL10N_CLASSES):
                raise LayoutError(f"{os.path.join(folder, name)}: expected a file named '<label>_<id>.<ext>' with a "
                                  f"label 0-{len(ANIMAL10N_CLASSES) - 1}")
            entries.append(Entry(f"{folder_name}/{name}", int(match.group(1)), os.path.join(folder, name)))
        if not entries:
            raise LayoutError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        splits[split] = entries
    return Conversion("animal10n", "jnpl", splits["train"], splits["test"],
                      {"training": os.path.join(src, "training"), "testing": os.path.join(src, "testing")},
                      classes=list(ANIMAL10N_CLASSES), classes_from="ANIMAL-10N's label list")


# ---------------------------------------------------------------- writing DST

def _link(link, target):
    """link -> target (a folder), unless link already resolves to it; replaces an older link,
    never a real file or folder."""
    if os.path.lexists(link):
        if os.path.realpath(link) == os.path.realpath(target):
            return
        if not os.path.islink(link):
            raise LayoutError(f"{link} exists and is not a link to {target}: move it away or choose another DST")
    temporary = f"{link}.link.tmp"
    if os.path.lexists(temporary):
        os.remove(temporary)
    os.symlink(os.path.abspath(target), temporary, target_is_directory=True)
    os.replace(temporary, link)


def _drop_missing(conversion, dst, skip_missing):
    """Checks every listed image exists under DST; drops the missing ones with skip_missing."""
    dropped = []
    for split in ("train", "test"):
        entries = getattr(conversion, split)
        if entries is None:
            continue
        present = [os.path.isfile(os.path.join(dst, entry.path)) for entry in entries]
        missing = [entry for entry, here in zip(entries, present) if not here]
        if not missing:
            continue
        if not skip_missing:
            raise LayoutError(f"{missing[0].where}: image {os.path.join(dst, missing[0].path)} is missing "
                              f"({len(missing)} of the {len(entries)} {split} images are; --skip-missing leaves "
                              f"them out)")
        dropped.append(f"{len(missing)} missing {split} images left out (--skip-missing), e.g. {missing[0].where}")
        _keep(conversion, split, present)
    conversion.notes += dropped


def _first_lines(keys):
    """{key: the position of its first line}: an image listed again keeps its first line
    (_drop_repeats), so what is added to it per image (trusted, verified) goes there."""
    first = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    return first


def _drop_repeats(conversion):
    """Leaves out an image's later lines in a list (a sample per image: the engine refuses a list
    naming one twice), keeping its first line's label; the notes count them."""
    for split in ("train", "test"):
        entries, first = getattr(conversion, split) or [], {}
        kept = [first.setdefault(entry.path, entry) is entry for entry in entries]
        repeats = [entry for entry, keep in zip(entries, kept) if not keep]
        if repeats:
            other = sum(entry.label != first[entry.path].label for entry in repeats)
            conversion.notes.append(f"{len(repeats)} {split} lines naming an image listed before left out (its first "
                                    f"line's label kept; {other} of them gave another label), e.g. {repeats[0].path}")
            _keep(conversion, split, kept)


def _keep(conversion, split, kept):
    """Keeps the entries of `split` where `kept` is True, and of train their per-sample values."""
    keep = lambda values: [value for value, chosen in zip(values, kept) if chosen]  # noqa: E731
    setattr(conversion, split, keep(getattr(conversion, split)))
    if split == "train":
        conversion.per_sample = {name: (keep(values), dtype, text)
                                 for name, (values, dtype, text) in conversion.per_sample.items()}
        conversion.clean = keep(conversion.clean) if conversion.clean is not None else None


def _check_labels(conversion):
    if not conversion.train:
        raise LayoutError(f"{conversion.name}: no training images")
    if conversion.test is not None and not conversion.test:
        raise LayoutError(f"{conversion.name}: no test images")
    if conversion.classes is None:
        return
    for entry in conversion.train + (conversion.test or []):
        if entry.label >= len(conversion.classes):
            raise LayoutError(f"{entry.where}: label {entry.label} is not one of the {len(conversion.classes)} classes "
                              f"of {conversion.classes_from}")


def _list_text(entries):
    for entry in entries:
        if entry.path != entry.path.strip() or "\n" in entry.path:
            raise LayoutError(f"{entry.where}: {entry.path!r} cannot stand in a list (leading / trailing space)")
        if not_utf8(entry.path):  # named by its bytes: the name cannot be printed as text
            raise LayoutError(f"{os.fsencode(entry.where)!r}: the file name is not UTF-8; rename it (a list is UTF-8 "
                              f"text)")
    return "".join(f"{entry.path} {entry.label}\n" for entry in entries)


OUTPUTS = ("train.txt", "test.txt", "classes.txt", "clean_indices.npy", "train_true_labels.npy", "train_verified.npy")


def _converted(dst):
    """Whether an earlier conversion wrote dst's files (its README.txt says so)."""
    try:
        with open(os.path.join(dst, "README.txt"), encoding="utf-8") as f:
            return PROG in f.readline()
    except (OSError, UnicodeDecodeError):
        return False


def _refuse_foreign(dst):
    """A LayoutError where dst (SRC itself, when converted in place) holds files of the names a
    conversion writes that no conversion wrote, e.g. the publisher's README.txt: they would be replaced."""
    present = [name for name in (*OUTPUTS, "README.txt") if os.path.lexists(os.path.join(dst, name))]
    if present and not _converted(dst):
        raise LayoutError(f"DST {dst} holds {', '.join(present)}, which no conversion wrote: choose another DST "
                          f"(a conversion writes these files)")


def _remove_stale(dst, written):
    """Removes the files an earlier conversion into dst wrote (its README.txt says so) that
    this one does not write (e.g. clean_indices.npy when --clean-train is no longer given)."""
    if not _converted(dst):
        return []
    stale = [name for name in OUTPUTS if name not in written and os.path.isfile(os.path.join(dst, name))]
    for name in stale:
        os.remove(os.path.join(dst, name))
    return stale


def write_layout(conversion, dst, skip_missing=False, invocation=""):
    """Links the image folders into dst, checks the images, writes the lists and extras;
    returns [(file name, description)] of what was written."""
    if os.path.exists(dst) and not os.path.isdir(dst):  # makedirs' own error reads "File exists"
        raise LayoutError(f"DST {dst} is a file, not a folder")
    os.makedirs(dst, exist_ok=True)
    _refuse_foreign(dst)
    for name, target in conversion.links.items():
        _link(os.path.join(dst, name), target)
    _drop_missing(conversion, dst, skip_missing)
    _drop_repeats(conversion)
    _check_labels(conversion)
    written = []

    def write(name, data, description):
        write_atomically(os.path.join(dst, name), lambda f: data(f) if callable(data) else f.write(data.encode()))
        written.append((name, description))

    for name, (values, dtype, description) in conversion.per_sample.items():
        array = np.asarray(values, dtype=dtype)
        write(name, lambda f, array=array: np.save(f, array),
              f"{dtype.__name__} [{len(array)}], {(array >= 0).sum()} known: {description}")
    if conversion.clean is not None:
        indices = np.flatnonzero(conversion.clean).astype(np.int64)
        write("clean_indices.npy", lambda f: np.save(f, indices),
              f"int64 [{len(indices)}]: the train.txt lines (0-based) whose label is trusted (a clean subset)")
    labels = [entry.label for entry in conversion.train + (conversion.test or [])]
    if conversion.classes is not None:
        classes = conversion.classes[:max(labels) + 1]  # the engine counts largest label + 1 classes
        write("classes.txt", "".join(f"{name}\n" for name in classes),
              f"the {len(classes)} class names, line i naming class i (from {conversion.classes_from})")
    if conversion.test is not None:
        write("test.txt", _list_text(conversion.test), f"{len(conversion.test)} test images with clean labels")
    kind = "noisy labels as the data set gives them" if conversion.noisy else "clean labels (add synthetic noise)"
    write("train.txt", _list_text(conversion.train), f"{len(conversion.train)} training images, {kind}")
    stale = _remove_stale(dst, [name for name, _ in written])
    if stale:
        conversion.notes.append(f"removed {', '.join(stale)} of an earlier conversion into {dst}")
    readme = [f"{conversion.name}, written by {invocation or PROG}", ""]
    readme += [f"{name}: {description}" for name, description in written]
    readme += [f"{name}/: link to {os.path.abspath(target)}" for name, target in conversion.links.items()]
    readme += ([""] + conversion.notes if conversion.notes else []) + ["", "train on it:",
                                                                       "  " + train_command(conversion, dst)]
    write_atomically(os.path.join(dst, "README.txt"), lambda f: f.write("\n".join(readme).encode() + b"\n"))
    return written + [("README.txt", "what each file holds")]


def train_command(conversion, dst):
    noise = "--noise none" if conversion.noisy else "--noise symmetric --noise-rate 0.2"
    extra = " --clean-size 640" if conversion.method == "l2b" else ""
    return (f"python -m engine.train --method {conversion.method} --dataset filelist --data-dir {shlex.quote(dst)} "
            f"{noise}{extra} --out runs/{conversion.name}")


# ---------------------------------------------------------------- command line

LAYOUTS = {
    "clothing1m": (convert_clothing1m, "Clothing1M: noisy training keys with their noisy labels, the clean test keys"),
    "webvision": (convert_webvision, "WebVision 1.0; --classes 50: mini-WebVision"),
    "tiny_imagenet": (convert_tiny_imagenet, "Tiny ImageNet (tiny-imagenet-200): clean labels, val = test"),
    "isic2019": (convert_isic2019, "ISIC 2019 training set: clean labels, a seeded stratified test hold-out"),
    "food101n": (convert_food101n, "Food-101N (test set: Food-101's, with --food101)"),
    "animal10n": (convert_animal10n, "ANIMAL-10N: training/ and testing/ with '<label>_<id>' file names"),
}
OPTIONS = {  # layout -> [(flag, argparse keywords)]; the dest is the converter's keyword
    "clothing1m": [("--clean-train", dict(action="store_true", help="add clean_train_key_list.txt to the training "
                                                                     "set as a trusted subset (clean_indices.npy)")),
                   ("--clean-val", dict(action="store_true", help="add clean_val_key_list.txt likewise (L2B's meta "
                                                                   "set)"))],
    "webvision": [("--classes", dict(type=int, default=50, help="keep the classes below this (default 50)")),
                  ("--sources", dict(nargs="+", choices=("google", "flickr"), default=["google"],
                                     help="the training images' sources (default google)"))],
    "isic2019": [("--test-fraction", dict(type=float, default=0.2, help="share of each class held out as the test "
                                                                       "set (default 0.2)")),
                 ("--seed", dict(type=int, default=0, help="seeds the hold-out (default 0)"))],
    "food101n": [("--food101", dict(metavar="FOLDER", help="the unpacked food-101 archive (meta/test.txt, images/): "
                                                           "its test split becomes test.txt"))],
}


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    names = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, (_, description) in LAYOUTS.items():
        sub = names.add_parser(name, help=description, description=description)
        sub.add_argument("src", metavar="SRC", help="the data set's folder as distributed")
        sub.add_argument("dst", metavar="DST", help="the folder to write (the engine's --data-dir)")
        sub.add_argument("--skip-missing", action="store_true", help="leave out listed images that are missing "
                                                                     "(default: stop at the first)")
        for flag, keywords in OPTIONS.get(name, []):
            sub.add_argument(flag, **keywords)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = vars(build_parser().parse_args(argv))
    name, src, dst, skip_missing = args.pop("name"), args.pop("src"), args.pop("dst"), args.pop("skip_missing")
    try:
        if not os.path.isdir(src):
            raise LayoutError(f"SRC {src} is not a folder")
        conversion = LAYOUTS[name][0](src, **args)
        written = write_layout(conversion, dst, skip_missing, f"{PROG} {shlex.join(argv)}")
    except (LayoutError, OSError) as error:  # bad input or an unwritable DST: one line, no traceback
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    print(f"{name}: wrote {dst}: " + ", ".join(file for file, _ in written))
    for note in conversion.notes:
        print(f"  {note}")
    if conversion.noisy:
        print("train on it (train.txt holds the given noisy labels, so --noise none; no --noise-file is needed):")
    else:
        print("train on it (train.txt holds clean labels: the papers add synthetic noise, as here):")
    print(f"  {train_command(conversion, dst)}")
    print("the papers' settings (model, image size, schedule): docs/datasets.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
