"""Command line: train a classifier on noisy labels with one method.

    python -m engine.train --method jnpl --dataset mnist5k --noise symmetric --noise-rate 0.4 \\
        --epochs 30 --seed 0 --out runs/x [--resume | --overwrite] [--device cpu|cuda]
    python -m engine.train --config runs/x/config.yaml [flags that override it]

Every flag is a field of a config dataclass (engine/config.py, the methods' Config classes);
a method's own options carry its name (`--pmnar-beta`), the training ones do not (`--lr`).
"""
import argparse
import dataclasses
import os
import sys
import tempfile
import types
import typing
import warnings

import torch

from engine.config import (NOISE_OPTIONS, SHARED_FIELDS, SHORT_BUDGET, SMALL_DATA, ConfigError, DataConfig, RunConfig,
                           WarmupConfig, check_fields, load_yaml, size_class, with_overrides)
from engine.checkpoint import CheckpointError, RunNote
from engine.data.datasets import DataFileError, LeftOut
from engine.distributed import ProcessesDiffer
from engine.methods import METHODS, method_class, with_model_for
from engine.methods.base import CleanSubset, Diverged
from engine.outputs import OUTPUT_FILES, FolderInUse

PROG = "python -m engine.train"
RUN_FIELDS = ("method", "seed", "device", "out", "sync_bn")
SECTIONS = ("data", "hyperparameters")


def flag(field, method_name=None, negative=False):
    """The command-line flag of a config field: --field-name, or --method-field-name for a
    method's own option (a trailing underscore, as in lambda_, is dropped); negative=True gives
    the off switch of a boolean field, --no-field-name / --method-no-field-name."""
    name = ("no-" if negative else "") + field.rstrip("_").replace("_", "-")
    return f"--{name}" if method_name is None else f"--{method_name}-{name}"


def config_flag(error, method):
    """The flag behind a ConfigError of a run with `method`."""
    own = error.owner not in (DataConfig, RunConfig) and error.field not in SHARED_FIELDS
    return flag(error.field, method.name if own else None)


def add_field(group, field, config_class, dest, method_name=None, note=""):
    """The flag (or on / off pair) of one config field, its kind taken from the annotation."""
    annotation = typing.get_type_hints(config_class)[field.name]
    kwargs = dict(dest=dest, default=argparse.SUPPRESS,
                  help=(field.metadata.get("help", "") + note).replace("%", "%%"))
    base = annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None: a flag of type X
        base = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if base is bool:  # an on and an off switch, e.g. --pmnar-consistency / --pmnar-no-consistency
        group.add_argument(flag(field.name, method_name, negative=True), dest=dest, default=argparse.SUPPRESS,
                           action="store_false", help=argparse.SUPPRESS)
        kwargs["action"] = "store_true"
        kwargs["help"] += f" (off: {flag(field.name, method_name, negative=True)})"
    elif typing.get_origin(base) is typing.Literal:
        kwargs["choices"] = typing.get_args(base)
    else:
        kwargs["type"] = base
        kwargs["metavar"] = field.name.upper().rstrip("_")
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
            del kwargs["metavar"]
    group.add_argument(flag(field.name, method_name), **kwargs)


def preset_hint(config_class, field):
    """The presets' values of `field`, for 10 and 100 classes where those differ (k = C - 1, ...)."""
    def value(size):
        ten, hundred = (getattr(config_class.preset(size, classes), field) for classes in (10, 100))
        return str(ten) if ten == hundred else f"{ten} for 10 classes, {hundred} for 100"

    small, paper = value("small"), value("paper")
    return f" (short budget or small data: {small}" + ("" if small == paper else f"; paper scale: {paper}") + ")"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, but under torchrun an error is one line per process naming its rank (failed()),
    not every process's copy of the whole usage text."""

    def error(self, message):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            sys.exit(failed(message, 2))
        super().error(message)


def build_parser(methods):
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config.yaml of an earlier run: repeat it (flags given with it override "
                                         "its values)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", default=argparse.SUPPRESS,
                       help="continue from --out/checkpoint.pt if it exists (else a new run, with a note)")
    start.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                       help="start a new run in --out even where a run that did not finish left its checkpoint "
                            "(deleting it; without this flag that is refused)")
    run = parser.add_argument_group("run")
    for field in dataclasses.fields(RunConfig):
        if field.name in RUN_FIELDS:
            add_field(run, field, RunConfig, field.name)
    data = parser.add_argument_group("data and label noise")
    for field in dataclasses.fields(DataConfig):
        add_field(data, field, DataConfig, f"data:{field.name}")
    training = parser.add_argument_group(f"training (default: the method's preset: the short-budget one below "
                                         f"{SMALL_DATA:,} training samples or for at most {SHORT_BUDGET} epochs, "
                                         f"else the paper's)")
    for field in dataclasses.fields(WarmupConfig):  # SHARED_FIELDS
        add_field(training, field, WarmupConfig, f"hyperparameters:{field.name}")
    for cls in methods:
        doc = " ".join((cls.Config.__doc__ or "").split("\n\n")[0].split())  # its first paragraph, whole
        group = parser.add_argument_group(cls.name, doc or None)
        for field in dataclasses.fields(cls.Config):
            if field.name not in SHARED_FIELDS:
                add_field(group, field, cls.Config, f"{cls.name}:{field.name}", cls.name,
                          preset_hint(cls.Config, field.name))
    return parser


def parse_args(argv=None):
    """(RunConfig without hyperparameters, the Method with its options, trainer_for's resume and
    overwrite) from the command line and an optional --config file; argparse errors exit with
    status 2."""
    first = ArgumentParser(prog=PROG, add_help=False)
    first.add_argument("--config")
    first.add_argument("--method")
    known, _ = first.parse_known_args(argv)
    try:
        base = load_yaml(known.config) if known.config else {}
        spec = known.method or base.get("method", RunConfig.method)
        if not isinstance(spec, str):
            raise ValueError(f"--config {known.config}: method must be a name or module:Class, got {spec!r:.80}")
        if not known.method and spec not in METHODS:  # module:Class imports code: only from the command line
            raise ValueError(f"--config {known.config}: method {spec!r:.80} is no built-in method, and a config "
                             f"file does not import code; to run your own, give it as --method {spec:.80}")
        chosen = method_class(spec)
    except ValueError as error:
        first.error(str(error))
    methods = list(METHODS.values()) + ([chosen] if chosen not in METHODS.values() else [])
    parser = build_parser(methods)
    given = vars(parser.parse_args(argv))
    try:
        return assemble(spec, chosen, given, base, known.config)
    except ConfigError as error:
        parser.error(f"{config_flag(error, chosen)} {error.text}")
    except ValueError as error:
        parser.error(str(error))


def assemble(spec, chosen, given, base, config_path):
    unknown = set(base) - set(RUN_FIELDS) - set(SECTIONS)
    if "data" in base and base["data"] is None:  # engine.fit's config.yaml: its data were arrays
        if "data:dataset" not in given:
            raise ValueError(f"--config {config_path}: data: null, an engine.fit run's config (its data were "
                             f"arrays): give the data set to train on, --dataset (and --data-dir)")
        base = {**base, "data": {}}
    for section in SECTIONS:
        if section in base and not isinstance(base[section], dict):
            raise ValueError(f"--config {config_path}: {section} must be a mapping")
    if unknown:
        raise ValueError(f"--config {config_path}: unknown entry {sorted(unknown)[0]!r}")
    if config_path and base.get("method", spec) != spec:
        raise ValueError(f"--method {spec} differs from the method of --config {config_path} ({base.get('method')})")
    run = {name: given.get(name, base.get(name)) for name in RUN_FIELDS if name in given or name in base}
    run["method"] = spec
    run["device"] = run.get("device") or default_device()
    data = dict(base.get("data") or {})
    try:
        check_fields(DataConfig, data)
    except ValueError as error:  # a misspelt entry of the file's data section: name the file
        raise ValueError(f"--config {config_path}: data: {error}") from None
    recorded = dict(base.get("hyperparameters") or {})  # the values --config's run used
    flags = {}
    for dest, value in given.items():
        section, _, field = dest.partition(":")
        if section == "data":
            data[field] = value
        elif section == "hyperparameters":
            flags[field] = value
        elif section in METHODS or section == chosen.name:
            if section != chosen.name:
                raise ValueError(f"{flag(field, section)} is an option of --method {section}, not of {spec}")
            flags[field] = value
    # One of clean_size / clean_fraction given replaces the other; --epochs no more than the
    # recorded warm-up fits it again, as for a new run (more keep it: the method refuses one that
    # leaves too few epochs after it, naming --warmup-epochs).
    for asked, replaced in (("clean_size", "clean_fraction"), ("clean_fraction", "clean_size")):
        if asked in flags and replaced not in flags:
            recorded.pop(replaced, None)
    warmup = recorded.get("warmup_epochs")
    if "warmup_epochs" not in flags and isinstance(warmup, int) and flags.get("epochs", warmup + 1) <= warmup:
        del recorded["warmup_epochs"]
    hyper = {**recorded, **flags}
    known = {f.name for f in dataclasses.fields(chosen.Config)}
    for field in hyper:
        if field not in known:
            where = flag(field) if field in flags else f"--config {config_path}: hyperparameters: {field!r}"
            raise ValueError(f"{where}: method {chosen.name} has no such option")
    check_device(run["device"], "--device")
    out = run.setdefault("out", RunConfig.out)
    if not isinstance(out, str) or not out:
        raise ValueError(f"--out must name a folder, got {out!r}")
    if (config_path and "out" not in given and not {"resume", "overwrite"} & set(given)
            and os.path.exists(os.path.join(out, "summary.json"))):  # a variant would silently replace its origin
        raise ValueError(f"--out: --config {config_path} records the folder of its finished run, {out}; give --out "
                         f"for this run (--overwrite replaces that run's outputs)")
    config = RunConfig(**run, data=DataConfig(**data))
    check_noise_options(config.data, [dest.partition(":")[2] for dest in given if dest.startswith("data:")],
                        defaulted="noise" not in data)
    check_writable(out)
    return config, chosen(**hyper), {"resume": given.get("resume", False), "overwrite": given.get("overwrite", False),
                                     "recorded": sorted(set(recorded) - set(flags))}


def default_device():
    """Where a run trains when no device is named: CUDA when torch sees a GPU, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device_type, argument):
    """A run on CUDA needs a CUDA device (the command line's --device, engine.fit's device)."""
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{argument} cuda: no CUDA device is available")


def check_noise_options(data, flags, defaulted):
    """A noise option given as a flag (`flags`: the data fields given) must act on the run's
    noise: a --noise-rate with no --noise on the user's own data would be ignored silently."""
    for field in flags:
        kinds = NOISE_OPTIONS.get(field)
        if kinds and data.noise not in kinds:
            why = (f", the default on dataset {data.dataset}" + (", whose labels are trained on as given"
                                                                 if data.labels_as_given else "")) if defaulted else ""
            raise ValueError(f"{flag(field)} applies to --noise {' or '.join(kinds)}, not to --noise {data.noise}{why}")


def check_writable(out, argument="--out"):
    """Creates the output folder `out` and writes a file in it, before any data is read: a folder
    that cannot hold the run's files fails now, not after the training."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{argument} {out} is a file, not a folder")
    try:
        os.makedirs(out, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as error:
        raise ValueError(f"{argument} {out} cannot be written ({error.strerror or error})") from None


def trainer_for(run, method, resume=False, overwrite=False, recorded=()):
    """The Trainer of a command-line run: the data set with its label noise and clean subset,
    the method configured for its size; `run` gets the resolved hyper-parameters. `recorded`:
    the method's options that come from --config's file, not from flags."""
    from engine.data.datasets import TRUSTED_LABELS, load_dataset
    from engine.data.training_data import from_dataset
    from engine.labels import choose_clean_subset, noisy_labels_for
    from engine.trainer import Trainer

    dataset = load_dataset(run.data.dataset, run.data.data_dir, image_size=run.data.image_size,
                           stream=run.data.stream, test_fraction=run.data.test_fraction)
    method = with_model_for(method, dataset.x_train.shape[1:], len(dataset.y_train), dataset.num_classes)
    config = method.configure(size_class(len(dataset.y_train)), dataset.num_classes)
    # the clean subset's sizes asked for (a size --config's file recorded is that of its run's subset, not a request)
    asked = [name for name in ("clean_size", "clean_fraction")
             if method.options.get(name) is not None and name not in recorded]
    if dataset.trusted_train is not None:  # the data set's own clean subset replaces the preset's held-out one
        if asked:
            raise ValueError(f"--clean-size / --clean-fraction: --data-dir {run.data.data_dir} has its own clean "
                             f"subset ({TRUSTED_LABELS[dataset.name][0]}, {len(dataset.trusted_train)} samples), "
                             f"which the run uses")
        clean = dataset.trusted_train
    else:
        try:
            clean = choose_clean_subset(config, dataset.y_train, run.seed)
        except ValueError as error:  # a size the training set cannot give, said of the flag that asked for it
            raise ValueError(f"{flag('clean_size' if config.clean_size else 'clean_fraction')}: {error}") from None
        needed = len(clean) or method.clean_subset is not CleanSubset.NOT_NEEDED
        if needed and (dataset.true_train is not None or run.data.labels_as_given):
            why = ("it has train_true_labels.npy" if dataset.true_train is not None else
                   f"--noise {run.data.noise} trains on them as given")
            reason = (f"the labels of --data-dir {run.data.data_dir} are its noisy ones ({why}), so a held-out subset "
                      f"would not have trusted labels; name the samples whose labels you trust with "
                      f"{TRUSTED_LABELS[dataset.name][1]}")
            # the preset's subset (no size asked for) or none: the method's need, not a flag the user gave
            needs = method.clean_subset is not CleanSubset.NOT_NEEDED and not (asked and len(clean))
            raise ValueError(f"--method {method.name} needs a clean subset, but {reason}" if needs else
                             f"--clean-size / --clean-fraction: {reason}")
    if config.clean_fraction is not None or dataset.trusted_train is not None:  # recorded as the count it gave
        config = with_overrides(config, {"clean_size": len(clean)})
    method.config = config
    given = noisy_labels_for(run.data, dataset, clean, run.seed)
    data = from_dataset(dataset, given, true_labels_of(dataset, run.data), clean)
    run = dataclasses.replace(run, hyperparameters=config)
    return Trainer(method, data, seed=run.seed, device=run.device, out=run.out, resume=resume, overwrite=overwrite,
                   run_config=run, sync_bn=run.sync_bn)


def true_labels_of(dataset, data_config):
    """The training samples' true labels where known (-1 elsewhere), None where none is: a
    real noisy data set's own (train_true_labels.npy); none of the user's labels trained on as
    given; else (a benchmark, or labels the run adds noise to) the data set's labels."""
    if dataset.true_train is not None:
        return dataset.true_train
    return None if data_config.labels_as_given else dataset.y_train


def failed(message, exit_code):
    """Print the error in one line and return the exit code. Under torchrun every process prints
    its own, naming its rank: an error can be one process's alone (its shard's bad file, a rank
    without a GPU), and printing only rank 0's would hide it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    process = f" (rank {os.environ.get('RANK')} of {world})" if world > 1 else ""
    print(f"python -m engine.train: error{process}: {message}", file=sys.stderr)
    return exit_code


def show_notes(show):
    """warnings.showwarning with a data set's LeftOut and a run's RunNote as one-line notes on stderr."""
    def showwarning(message, category, *where):
        if issubclass(category, (LeftOut, RunNote)):
            print(f"python -m engine.train: note: {message}", file=sys.stderr)
        else:
            show(message, category, *where)
    return showwarning


def main(argv=None):
    run, method, start = parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = show_notes(warnings.showwarning)
        try:
            return run_main(run, method, start)
        except KeyboardInterrupt:  # Ctrl-C: one line saying how to go on, not a traceback
            return failed(interrupted(run.out, "interrupted"), 130)
        except BrokenPipeError:  # the reader of its piped output quit (| head): stopped, as by SIGPIPE
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error flushing it at exit
            return failed(interrupted(run.out, "stopped: the reader of its output closed the pipe"), 1)


def interrupted(out, what):
    """The message of a run stopped before its end: its checkpoint, where it left one, continues it."""
    checkpoint = os.path.join(out, "checkpoint.pt")
    if os.path.exists(checkpoint) and not os.path.exists(os.path.join(out, "summary.json")):
        return (f"{what}; {checkpoint} keeps the run as it was after its last finished epoch: continue it "
                f"with the same options and --resume")
    return what


def run_main(run, method, start):
    """main's run once its arguments are parsed: the exit code."""
    try:
        trainer = trainer_for(run, method, **start)
    except ConfigError as error:  # a bad value found once the data are known: name its flag
        return failed(f"{config_flag(error, method)} {error.text}", 2)
    except (ValueError, FileNotFoundError) as error:  # a bad configuration: say what, no traceback
        return failed(error, 2)
    try:
        summary = trainer.run()
    except (CheckpointError, FolderInUse, ProcessesDiffer) as error:  # nothing written: --resume of an unreadable
        # or another run's checkpoint, an --out that a live run writes to, processes given other data
        return failed(error, 2)
    except Diverged as error:  # a NaN epoch loss is all-reduced, so every process stops at the same epoch
        return failed(error, 1)
    except DataFileError as error:  # a streamed image is read when a batch needs it (only a sample is checked
        # up front); a fixed or removed file changes the data's fingerprint, which --resume would refuse
        return failed(f"{error}; training stopped: fix or remove the file and start the run again with --overwrite", 2)
    except RuntimeError as error:
        if not trainer.processes.distributed:
            raise
        # gloo / NCCL report a peer that stopped (its own error printed above) as a failed collective
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        return failed(f"stopped where the processes exchange data, most likely because another process stopped (see "
                      f"its error): {reason}", 1)
    if not trainer.processes.main:  # rank 0 reports for the job
        return 0
    line = []
    if summary["test_acc"] is not None:
        line.append(f"test_acc {summary['test_acc']:.4f} (best {summary['best_test_acc']:.4f})")
    if summary["det_f1"] is not None:
        line.append(f"noise detection precision {summary['det_precision']:.3f} recall {summary['det_recall']:.3f} "
                    f"F1 {summary['det_f1']:.3f}")
    line.append(f"{summary['estimated_noise_rate']:.1%} of the training labels flagged as issues")
    print(", ".join(line))
    # Without known true labels there is no separation.png to list.
    written = [name for name in OUTPUT_FILES if os.path.exists(os.path.join(run.out, name))]
    print(f"outputs in {os.path.realpath(run.out)}: {' '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
