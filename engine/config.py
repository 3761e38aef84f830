"""Typed configuration of a run: every hyper-parameter is a dataclass field, defined and
validated in one place, written to and read from YAML, and turned into a command-line flag.

- `MethodConfig`: the training hyper-parameters every method has (epochs, batch size, SGD,
  model, the held-out clean subset); each method subclasses it with its own options and its
  two presets (`preset("paper" | "small", num_classes)`, next to the paper's arXiv id).
- `DataConfig`: the data set and its label noise (command line only; `engine.fit` takes arrays).
- `RunConfig`: the method (a name or `module:Class`), seed, device, output folder, data and the
  method's config, as written to `config.yaml` with every value a run actually used.
"""
import dataclasses
import math
import numbers
import os
import types
import typing

from engine.data.datasets import (BUILT_IN, DATASETS, FILE_IMAGE_SIZE, HOLDS_OUT, IMAGE_FILES, OWN_LABELS, STREAM_ABOVE,
                                  TEST_FRACTION)
from engine.models import MODELS

SMALL_DATA = 20_000  # training sets below this size get the methods' "small" presets,
SHORT_BUDGET = 50    # and so does a budget of at most this many epochs (the papers train for hundreds)
# At a short budget a data set of SMALL_DATA images or more, at most this many pixels a side,
# gets small_cnn_dense where the presets' small_cnn would underfit it (engine.methods.with_model_for).
DENSE_MODEL_SIDE = 64
NOISE_KINDS = ("none", "symmetric", "asymmetric", "file", "cifar10n", "cifar100n")
CIFAR10N_VARIANTS = ("aggre", "random1", "random2", "random3", "worst")
# The noise kinds each noise option acts on: a flag given for another kind is refused.
NOISE_OPTIONS = {"noise_rate": ("symmetric", "asymmetric"), "noise_include_true": ("symmetric",),
                 "noise_variant": ("cifar10n",), "noise_file": ("file",)}


class ConfigError(ValueError):
    """A bad value of one field: `owner` (the config class), `field` and what is wrong (`text`).
    The command line reports it under the field's flag, the Python API under its name."""

    def __init__(self, owner, field, text):
        self.owner, self.field, self.text = owner, field, text
        super().__init__(f"{owner.__name__}.{field} {text}")


def option(default, help, **metadata):
    """A config field with its help text (the flag's help on the command line)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def size_class(num_samples):
    return "small" if num_samples < SMALL_DATA else "paper"


def short_budget(epochs):
    """Whether `epochs` (an option, None where not given) asks for the "small" preset on any data."""
    return isinstance(epochs, numbers.Real) and epochs <= SHORT_BUDGET  # another type: refused by the Config


class Validated:
    """Checks every field against its annotated type (numpy numbers become Python ones, ints in
    float fields floats), then the subclass's `validate()`."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _coerced(getattr(self, field.name), hints[field.name])
            if not _matches(value, hints[field.name]):
                self.fail(field.name, f"must be {_describe(hints[field.name])}, got {value!r:.80}")
            if isinstance(value, float) and not math.isfinite(value):
                self.fail(field.name, f"must be finite, got {value}")
            object.__setattr__(self, field.name, value)
        self.validate()

    def validate(self):
        """Cross-field and range checks; raise with self.fail(field, text)."""

    def fail(self, field, text):
        raise ConfigError(type(self), field, text)

    def require(self, field, condition, text):
        if not condition:
            self.fail(field, f"{text}, got {getattr(self, field)!r:.80}")

    def to_dict(self):
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value):
    return value.to_dict() if isinstance(value, Validated) else value


def _allows(annotation, kind):
    return annotation is kind or kind in typing.get_args(annotation)


def _coerced(value, annotation):
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    if _allows(annotation, float) and isinstance(value, numbers.Real):
        return float(value)
    if _allows(annotation, int) and isinstance(value, numbers.Integral):
        return int(value)
    return value


def _matches(value, annotation):
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, annotation)


def _describe(annotation):
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    if origin is not None:
        return " or ".join(_describe(arg) for arg in typing.get_args(annotation))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "None"}
    return names.get(annotation, f"a {annotation.__name__}")


@dataclasses.dataclass(frozen=True)
class MethodConfig(Validated):
    """What every method trains with. A method's presets set these; any field can be overridden
    (flags `--epochs`, `--lr`, ...; keyword arguments of `engine.fit` and of a method)."""

    epochs: int = option(30, "total epochs over all stages")
    batch_size: int = option(128, "training batch size")
    lr: float = option(0.05, "initial learning rate of the first stage")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "SGD weight decay")
    model: str = option("small_cnn", "network: small_cnn, small_cnn_dense, preact_resnet18, preact_resnet34 (small "
                                     "images), resnet18, resnet50 (ImageNet-sized images) or mlp (feature vectors; "
                                     "their default); the short-budget presets' small_cnn becomes small_cnn_dense "
                                     f"from {SMALL_DATA:,} training images of at most {DENSE_MODEL_SIDE} pixels a side",
                        choices=tuple(MODELS))
    pretrained: str | None = option(None, "start every network from the weights in this file (.safetensors or "
                                          "a torch state dict, e.g. torchvision's ImageNet resnet18 / resnet50); "
                                          "the classifier fc starts new when its number of classes differs")
    augment: bool = option(True, "random crops (in-memory images: zero padding of 1/8 of the side; image files: "
                                 "random-resized crops) and, where a flip keeps the label, horizontal flips of "
                                 "the training batches; off: the images as given (a consistency term's second "
                                 "view keeps its RandAugment)")
    clean_size: int | None = option(None, "the clean subset: this many samples of a benchmark keep their true labels "
                                          "(the noise spares them); your own data name their trusted samples instead: "
                                          "a folder's clean_paths.txt, an npz's clean_indices, a filelist's "
                                          "clean_indices.npy")
    clean_fraction: float | None = option(None, "the clean subset as this fraction of a benchmark's samples")

    @classmethod
    def preset(cls, size, num_classes):
        """The config for data of size class `size` ("paper": >= 20,000 training samples, else
        "small") with `num_classes` classes; the field defaults unless a method says otherwise."""
        del size, num_classes
        return cls()

    @property
    def augments_training(self):
        """Whether the training batches get augmented: with `augment`, and never for feature
        vectors, whose model is the mlp (the trainer pairs them)."""
        return self.augment and self.model != "mlp"

    def validate(self):
        self.require("epochs", self.epochs >= 1, "must be >= 1")
        self.require("batch_size", self.batch_size >= 1, "must be >= 1")
        self.require("lr", self.lr > 0, "must be > 0")
        self.require("momentum", 0 <= self.momentum < 1, "must be in [0, 1)")
        self.require("weight_decay", self.weight_decay >= 0, "must be >= 0")
        self.require("model", self.model in MODELS, f"must be one of {', '.join(sorted(MODELS))}")
        if self.pretrained is not None and not os.path.isfile(self.pretrained):
            self.fail("pretrained", f"{self.pretrained} " + ("is not a file" if os.path.exists(self.pretrained)
                                                             else "does not exist"))
        if self.clean_size is not None and self.clean_fraction is not None:
            self.fail("clean_size", "and clean_fraction exclude each other: give one")
        if self.clean_size is not None:
            self.require("clean_size", self.clean_size >= 0, "must be >= 0")
        if self.clean_fraction is not None:
            self.require("clean_fraction", 0 < self.clean_fraction < 1, "must be in (0, 1)")


@dataclasses.dataclass(frozen=True)
class WarmupConfig(MethodConfig):
    """A method that starts with warm-up epochs (plain CE, or its loss with all weights 1)."""

    warmup_epochs: int = option(0, "warm-up epochs before the method's own regime")

    def validate(self):
        super().validate()
        self.require("warmup_epochs", 0 <= self.warmup_epochs < self.epochs,
                     f"must be >= 0 and leave at least one of the {self.epochs} epochs after it")


# Fields whose flags carry no method prefix (`--epochs`, not `--jnpl-epochs`).
SHARED_FIELDS = tuple(f.name for f in dataclasses.fields(WarmupConfig))


def with_overrides(config, overrides):
    """`config` with the fields in `overrides` replaced (validated). Giving one of clean_size /
    clean_fraction drops the preset's other one."""
    overrides = dict(overrides)
    if "clean_size" in overrides and "clean_fraction" not in overrides:
        overrides["clean_fraction"] = None
    if "clean_fraction" in overrides and "clean_size" not in overrides:
        overrides["clean_size"] = None
    check_fields(type(config), overrides)
    return dataclasses.replace(config, **overrides)


def check_fields(config_class, names):
    known = [f.name for f in dataclasses.fields(config_class)]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"{config_class.__name__} has no option {unknown[0]!r}; its options: {', '.join(known)}")


@dataclasses.dataclass(frozen=True)
class DataConfig(Validated):
    """The data set and its label noise (the command line's data options)."""

    dataset: str = option("mnist5k", "data set: mnist5k and digits are built in; the others read --data-dir",
                          choices=tuple(DATASETS))
    data_dir: str | None = option(None, "folder (or .npz file) of a data set given by the user")
    noise: typing.Literal[NOISE_KINDS] | None = option(
        None, "label noise: synthetic (symmetric, asymmetric), per-sample labels from --noise-file, the human "
              f"CIFAR-10N / CIFAR-100N labels, or none (default: none on your own data, {' / '.join(OWN_LABELS)}, "
              "whose labels are trained on as given; symmetric on the benchmark data sets)")
    noise_rate: float = option(0.4, "fraction of labels corrupted, in [0, 1)")
    noise_variant: typing.Literal[CIFAR10N_VARIANTS] = option("worst", "which CIFAR-10N label set (CIFAR-100N "
                                                                       "has one)")
    noise_file: str | None = option(None, ".npy / .pt array of per-sample noisy labels (with --noise file)")
    noise_include_true: bool = option(False, "symmetric noise draws from ALL classes (transition-matrix "
                                             "convention) instead of the others")
    image_size: int = option(FILE_IMAGE_SIZE, "size (pixels, square) images from files (folder, filelist) are "
                                              "decoded to")
    stream: bool | None = option(None, "read and decode image files per batch, holding only their paths, instead "
                                       f"of decoding them once into memory (default: when --image-size > "
                                       f"{STREAM_ABOVE})")
    test_fraction: float | None = option(
        None, f"share of the samples held out as the test set where the data set has no test split (an npz "
              f"without x_test, a folder without train/ and test/; default {TEST_FRACTION}); 0: none, so every sample "
              f"is trained on and gets a label score, without test accuracy")

    def __post_init__(self):
        if self.noise is None:  # recorded resolved, so config.yaml says what the run did
            object.__setattr__(self, "noise", "none" if self.dataset in OWN_LABELS else "symmetric")
        super().__post_init__()

    @property
    def labels_as_given(self):
        """The training labels are the user's own, trained on as they are: none of them is known
        to be right (unless the data set says so: filelist's train_true_labels.npy)."""
        return self.dataset in OWN_LABELS and self.noise == "none"

    def validate(self):
        self.require("dataset", self.dataset in DATASETS, f"must be one of {', '.join(sorted(DATASETS))}")
        self.require("noise_rate", 0.0 <= self.noise_rate < 1.0, "must be in [0, 1)")
        self.require("image_size", self.image_size >= 8, "must be >= 8")
        if self.dataset not in IMAGE_FILES and (self.image_size != FILE_IMAGE_SIZE or self.stream is not None):
            self.fail("image_size" if self.image_size != FILE_IMAGE_SIZE else "stream",
                      f"applies to image files (dataset {' or '.join(IMAGE_FILES)}), not to dataset {self.dataset}")
        if self.test_fraction is not None:
            self.require("test_fraction", 0.0 <= self.test_fraction < 1.0, "must be in [0, 1)")
            self.require("test_fraction", self.dataset in HOLDS_OUT, f"applies to the data sets that may lack a test "
                                                                     f"split ({', '.join(HOLDS_OUT)})")
        if self.dataset not in BUILT_IN and self.data_dir is None:
            self.fail("data_dir", f"is needed by dataset {self.dataset}")
        if self.dataset in BUILT_IN and self.data_dir is not None:  # read nowhere: a user meant other data
            self.fail("data_dir", f"{self.data_dir}: dataset {self.dataset} is built in and reads no folder (for your "
                                  f"own data: --dataset npz, folder or filelist)")
        if self.data_dir is not None and not os.path.exists(self.data_dir):
            self.fail("data_dir", f"{self.data_dir} does not exist")
        if self.noise == "file" and not self.noise_file:
            self.fail("noise_file", "is needed by noise 'file'")


@dataclasses.dataclass(frozen=True)
class RunConfig(Validated):
    """Everything a run used: `python -m engine.train --config config.yaml` repeats it."""

    method: str = option("jnpl", "training method: ce, nlnl, jnpl, pmnar, bldr, l2b, pudistill, or module:Class "
                                 "(a Method subclass of your own)")
    seed: int = option(0, "seeds noise, initialization, shuffling and augmentation")
    device: typing.Literal["cpu", "cuda"] | None = option(None, "where to train (default: cuda when available)")
    out: str | None = option("runs/latest", "output folder")
    sync_bn: bool = option(False, "under torchrun on CUDA: BatchNorm statistics over the global batch "
                                  "(SyncBatchNorm) instead of each process's part")
    data: DataConfig | None = None
    hyperparameters: MethodConfig | None = None

    def validate(self):
        # 32 bits: per-epoch and sub-training seeds are derived from it by multiplication (int64)
        self.require("seed", 0 <= self.seed < 2**32, "must be in [0, 2**32)")
        self.require("sync_bn", not self.sync_bn or self.device == "cuda", "runs on CUDA only (SyncBatchNorm has no "
                                                                            "CPU kernel); leave it off on the CPU")


def save_yaml(config, path):
    """config.yaml: the run's every value, in a file a person can read and edit."""
    import yaml

    from engine.outputs import write_atomically

    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    write_atomically(path, lambda f: f.write(text.encode()))


# YAML 1.2 floats in exponent form without a dot (1e-2, 5E+3): PyYAML's YAML 1.1 reads them as
# strings, so a hand-edited lr: 1e-2 was refused as not a number.
EXPONENT_FLOAT = r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"


def load_yaml(path):
    """The plain dict of a config.yaml (safe loader: no object tags); checked by the caller."""
    import re
    from collections.abc import Hashable

    import yaml

    class Loader(yaml.SafeLoader):  # a subclass: adding a resolver copies the table, SafeLoader's stays
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):  # a config needs none; nested ones expand to gigabytes
                raise yaml.composer.ComposerError(None, None, "an alias (*name): a config takes none",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):  # a key given twice: PyYAML keeps the last, silently
            self.flatten_mapping(node)
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):  # the base constructor refuses it
                    continue
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{key!r:.80} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(EXPONENT_FLOAT), list("-+0123456789."))
    try:
        with open(path) as f:
            content = yaml.load(f, Loader=Loader)
    except OSError as error:
        raise ValueError(f"--config {path}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError as error:  # PyYAML decodes UTF-8 (or UTF-16 with a byte-order mark)
        raise ValueError(f"--config {path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                         f"{error.start})") from None
    except yaml.YAMLError as error:  # one line: the problem and its line, not PyYAML's several
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ValueError(f"--config {where}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
    if not isinstance(content, dict):
        raise ValueError(f"--config {path}: expected a mapping of options, got {type(content).__name__}")
    return content
