"""Typed configuration: presets, validation where a value is defined, overrides, YAML, and a
command line generated from the config fields."""
import dataclasses
import typing

import numpy as np
import pytest
import torch
import yaml

from engine.config import (DENSE_MODEL_SIDE, SHARED_FIELDS, SHORT_BUDGET, SMALL_DATA, ConfigError, DataConfig,
                           MethodConfig, RunConfig, size_class, with_overrides)
from engine.methods import METHODS, method_class, with_model_for
from engine.train import build_parser, flag, main, parse_args


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("size", ["small", "paper"])
def test_every_preset_is_valid_and_every_field_is_a_flag(name, size):
    cls = METHODS[name]
    config = cls.Config.preset(size, 10)
    assert isinstance(config, MethodConfig) and type(config) is cls.Config
    flags = build_parser(METHODS.values()).format_help()
    for field in dataclasses.fields(config):
        expected = flag(field.name) if field.name in SHARED_FIELDS else flag(field.name, name)
        assert expected in flags, expected


@pytest.mark.parametrize("name", sorted(name for name, cls in METHODS.items() if cls.memorization_guards))
def test_memorization_guards_are_resolved_by_the_training_batches_augmentation(name):
    cls = METHODS[name]
    hints = typing.get_type_hints(cls.Config)
    for guard, values in cls.memorization_guards.items():
        assert type(None) in typing.get_args(hints[guard]), f"{guard}: a preset must be able to leave it unset"
        assert len(set(values)) == 2, (guard, values)
        assert getattr(cls.Config.preset("paper", 10), guard) is not None, "the papers' own choice"
        assert getattr(cls.Config.preset("small", 10), guard) is None, "left to the augmentation"
    for augment, column in ((False, 0), (True, 1)):  # the resolved values are type-checked by the config
        config = cls(augment=augment).configure("small", 10)
        assert {guard: getattr(config, guard) for guard in cls.memorization_guards} == {
            guard: values[column] for guard, values in cls.memorization_guards.items()}, (augment, config)
    method = cls()  # bound to a config not made by configure: resolved there (augmented by default)
    method.bind(cls.Config.preset("small", 10), torch.arange(20) % 10, 10, seed=0, device="cpu")
    assert {guard: getattr(method.config, guard) for guard in cls.memorization_guards} == {
        guard: augmented for guard, (_, augmented) in cls.memorization_guards.items()}
    given = {guard: not_augmented for guard, (not_augmented, _) in cls.memorization_guards.items()}
    config = cls(**given).configure("small", 10)  # an option given wins
    assert {guard: getattr(config, guard) for guard in given} == given


def test_presets_differ_by_size_and_class_count():
    assert METHODS["jnpl"].Config.preset("small", 10).complementary_labels == 9
    assert METHODS["jnpl"].Config.preset("paper", 10).complementary_labels == 1
    assert METHODS["nlnl"].Config.preset("paper", 100).complementary_labels == 110
    assert METHODS["pmnar"].Config.preset("small", 100).beta == 0.1
    assert METHODS["l2b"].Config.preset("paper", 10).clean_size == 1000


def test_the_small_presets_are_for_training_sets_below_20000_samples():
    """The rule of the README and the presets: the paper's settings from 20,000 training samples up."""
    assert size_class(19_999) == "small" and size_class(20_000) == "paper"


@pytest.mark.parametrize("name", list(METHODS))
def test_a_short_budget_on_paper_scale_data_takes_the_small_preset(name):
    short = METHODS[name](epochs=SHORT_BUDGET).configure("paper", 10)
    assert short == METHODS[name](epochs=SHORT_BUDGET).configure("small", 10), "every value of the small preset"
    assert short.lr == METHODS[name].Config.preset("small", 10).lr
    long = METHODS[name](epochs=SHORT_BUDGET + 1).configure("paper", 10)
    assert long == with_overrides(METHODS[name].Config.preset("paper", 10), {"epochs": SHORT_BUDGET + 1})
    assert METHODS[name]().configure("paper", 10) == METHODS[name].Config.preset("paper", 10)


@pytest.mark.parametrize("name", list(METHODS))
def test_a_short_budget_on_many_small_images_takes_the_dense_small_cnn(name):
    """The small CNN underfits tens of thousands of images: at a short budget they get
    small_cnn_dense (its dense stage sized by the image side, so only up to DENSE_MODEL_SIDE)."""
    def model(shape, samples, **options):
        method = with_model_for(METHODS[name](**options), shape, samples, 10)
        return method.configure(size_class(samples), 10).model

    cifar = (32, 32, 3)
    assert model(cifar, SMALL_DATA, epochs=20) == "small_cnn_dense"
    assert model((DENSE_MODEL_SIDE, DENSE_MODEL_SIDE // 2, 1), SMALL_DATA, epochs=SHORT_BUDGET) == "small_cnn_dense"
    assert model(cifar, SMALL_DATA - 1, epochs=20) == "small_cnn", "small data keep the small CNN"
    assert model((DENSE_MODEL_SIDE + 1, 8, 3), SMALL_DATA, epochs=20) == "small_cnn", "its dense stage would be huge"
    paper = METHODS[name].Config.preset("paper", 10).model
    assert model(cifar, SMALL_DATA, epochs=SHORT_BUDGET + 1) == model(cifar, SMALL_DATA) == paper != "small_cnn_dense"
    assert model(cifar, SMALL_DATA, epochs=20, model="small_cnn") == "small_cnn", "a model given is kept"
    assert model((64,), SMALL_DATA, epochs=20) == "mlp"


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("model", ["small_cnn", "mlp"])
def test_a_preset_warm_up_that_fits_the_epochs_is_kept(name, model):
    for epochs in (None, 20, SHORT_BUDGET + 1):
        options = {"model": model} | ({} if epochs is None else {"epochs": epochs})
        config = METHODS[name](**options).configure("small" if epochs != SHORT_BUDGET + 1 else "paper", 10)
        preset = METHODS[name].Config.preset("small" if epochs != SHORT_BUDGET + 1 else "paper", 10)
        assert getattr(config, "warmup_epochs", None) == getattr(preset, "warmup_epochs", None)


@pytest.mark.parametrize("name,model,epochs,warmup", [
    ("bldr", "small_cnn", 10, 3),     # the preset's 10 of 30 epochs: floor(10 * 10 / 30)
    ("bldr", "small_cnn", 2, 0), ("pmnar", "small_cnn", 5, 0), ("l2b", "mlp", 4, 0),
    ("jnpl", "small_cnn", 3, 0),      # negative learning alone on augmented batches: one epoch after it
    ("jnpl", "mlp", 4, 0),            # and its two selective stages on feature vectors: two
    ("nlnl", "mlp", 6, 0), ("nlnl", "small_cnn", 4, 3),
])
def test_epochs_alone_shrink_a_preset_warm_up_that_would_not_fit(name, model, epochs, warmup):
    config = METHODS[name](epochs=epochs, model=model).configure("small", 10)
    assert (config.epochs, config.warmup_epochs) == (epochs, warmup)
    method = METHODS[name](epochs=epochs, model=model)
    method.config = config
    assert sum(stage.epochs for stage in method.stages()) == epochs and all(s.epochs for s in method.stages())


@pytest.mark.parametrize("method,epochs,warmup", [("jnpl", 3, 0), ("bldr", 10, 3), ("bldr", 20, 10)])
def test_the_command_line_shrinks_a_preset_warm_up_alike_and_records_it(tmp_path, method, epochs, warmup):
    from engine.train import trainer_for

    run, chosen, _ = parse_args(["--method", method, "--epochs", str(epochs), "--dataset", "digits", "--device", "cpu",
                                 "--out", str(tmp_path)])
    assert trainer_for(run, chosen).run_config.hyperparameters.warmup_epochs == warmup


@pytest.mark.parametrize("name,epochs,smallest", [("jnpl", 1, 2), ("nlnl", 3, 4)])
def test_epochs_too_few_for_the_method_name_the_smallest(name, epochs, smallest):
    with pytest.raises(ConfigError, match=f"epochs must be at least {smallest} for method {name}"):
        METHODS[name](epochs=epochs, model="mlp").configure("small", 10)


def test_a_warm_up_the_user_sets_is_never_changed():
    with pytest.raises(ConfigError, match="warmup_epochs must be >= 0 and leave at least one of the 10 epochs"):
        METHODS["bldr"](epochs=10, warmup_epochs=10).configure("small", 10)
    assert METHODS["bldr"](epochs=10, warmup_epochs=7).configure("small", 10).warmup_epochs == 7


@pytest.mark.parametrize("field,value,text", [
    ("lr", 0.0, "must be > 0"), ("lr", float("nan"), "must be finite"), ("lr", float("inf"), "must be finite"),
    ("weight_decay", -1e-4, "must be >= 0"), ("batch_size", 0, "must be >= 1"), ("epochs", 0, "must be >= 1"),
    ("momentum", 1.0, "must be in [0, 1)"), ("model", "resnet9000", "must be one of"),
    ("warmup_epochs", 30, "leave at least one"), ("batch_size", 12.5, "must be an integer"),
    ("lr", "0.1", "must be a number"),
    ("clean_fraction", 1.5, "must be in (0, 1)"),
    ("pretrained", "/missing/weights.pt", "/missing/weights.pt does not exist"), ("pretrained", "/", "is not a file"),
])
def test_bad_values_are_refused_where_they_are_defined(field, value, text):
    preset = METHODS["jnpl"].Config.preset("small", 10)
    with pytest.raises(ConfigError, match="JNPLConfig") as caught:
        with_overrides(preset, {field: value})
    assert caught.value.field == field and text in caught.value.text


def test_an_override_of_zero_is_kept_and_unknown_options_are_refused():
    config = with_overrides(METHODS["jnpl"].Config.preset("small", 10), {"weight_decay": 0.0, "warmup_epochs": 0})
    assert config.weight_decay == 0.0 and config.warmup_epochs == 0
    numpy_values = with_overrides(config, {"epochs": np.int64(12), "lr": np.float32(0.5), "momentum": 0})
    assert (type(numpy_values.epochs), type(numpy_values.lr), type(numpy_values.momentum)) == (int, float, float)
    with pytest.raises(ValueError, match="has no option 'gamma'"):
        METHODS["jnpl"](gamma=1.0)
    # A given clean_size replaces the preset's clean_fraction.
    l2b = with_overrides(METHODS["l2b"].Config.preset("small", 10), {"clean_size": 100})
    assert (l2b.clean_size, l2b.clean_fraction) == (100, None)


def test_run_config_round_trips_through_yaml(tmp_path):
    run = RunConfig(method="pmnar", seed=3, device="cpu", out=str(tmp_path), data=DataConfig(dataset="digits"),
                    hyperparameters=METHODS["pmnar"].Config.preset("small", 10))
    text = yaml.safe_dump(run.to_dict(), sort_keys=False)
    back = yaml.safe_load(text)
    assert back == run.to_dict() and back["hyperparameters"]["view"] == "strong"


def test_command_line_flags_and_config_file(tmp_path):
    run, method, start = parse_args(["--method", "pmnar", "--dataset", "digits", "--pmnar-no-consistency",
                                     "--lr", "0.3", "--seed", "4", "--device", "cpu", "--resume"])
    assert (run.method, run.seed, run.data.dataset, start) == ("pmnar", 4, "digits", {"resume": True,
                                                                                      "overwrite": False,
                                                                                      "recorded": []})
    assert method.options == {"consistency": False, "lr": 0.3}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"method": "pmnar", "seed": 7, "device": "cpu", "out": str(tmp_path / "x"),
                                      "data": {"dataset": "digits", "noise": "asymmetric", "noise_rate": 0.2},
                                      "hyperparameters": {"epochs": 4, "beta": 0.5}}))
    run, method, _ = parse_args(["--config", str(config), "--pmnar-beta", "0.25", "--noise-rate", "0.3"])
    assert (run.seed, run.data.noise, run.data.noise_rate) == (7, "asymmetric", 0.3)
    assert method.options == {"epochs": 4, "beta": 0.25}


def test_a_config_file_does_not_import_the_module_its_method_names(tmp_path, monkeypatch, capsys):
    """A handed-over folder's config.yaml with method: its_module:X ran its_module (the README's one
    exception to "no file runs code" is the --method flag)."""
    (tmp_path / "helpers.py").write_text("open('ran', 'w').close()\n")
    (tmp_path / "config.yaml").write_text("method: helpers:Anything\ndata:\n  dataset: digits\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--config", "config.yaml"])
    assert stopped.value.code == 2 and not (tmp_path / "ran").exists(), "no code ran"
    assert ("method 'helpers:Anything' is no built-in method, and a config file does not import code; to run your "
            "own, give it as --method helpers:Anything") in capsys.readouterr().err


def test_a_user_method_whose_config_is_no_dataclass_is_refused_naming_it(tmp_path, monkeypatch):
    """Its fields are the method's options: argparse met a plain class with a TypeError."""
    (tmp_path / "mine.py").write_text("from engine import Method\n\n\nclass Plain(Method):\n"
                                      "    class Config:\n        lr = 0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"^method mine:Plain: its Config must be a dataclass \(a MethodConfig "
                                         r"subclass decorated @dataclass\(frozen=True\)\), got <class "):
        method_class("mine:Plain")


def test_a_config_with_aliases_is_refused_before_they_expand(tmp_path, capsys):
    """Nested aliases of a few hundred bytes expanded to gigabytes (and into the error message)."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]"
                                                             for i in range(1, 9)]
    (tmp_path / "config.yaml").write_text("\n".join(levels) + "\nmethod: *a8\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "config.yaml")])
    err = capsys.readouterr().err
    assert f"--config {tmp_path / 'config.yaml'}:2: not valid YAML (an alias (*name): a config takes none)" in err
    assert len(err) < 1000


def test_a_hand_edited_config_takes_floats_written_with_an_exponent(tmp_path):
    """lr: 1e-2 is a float in YAML 1.2; PyYAML's 1.1 rules read it as a string, refused as not a number."""
    config = tmp_path / "config.yaml"
    config.write_text("method: ce\nseed: 2\ndata:\n  dataset: digits\n  noise_rate: 2E-1\n"
                      "hyperparameters:\n  lr: 1e-2\n  weight_decay: .5e-3\n  epochs: 3\n")
    run, method, _ = parse_args(["--config", str(config)])
    assert method.options == {"lr": 0.01, "weight_decay": 0.0005, "epochs": 3} and run.data.noise_rate == 0.2
    assert yaml.safe_load("lr: 1e-2") == {"lr": "1e-2"} and yaml.safe_load("x: 1e") == {"x": "1e"}


def test_a_flag_given_with_config_replaces_what_it_pairs_with(tmp_path):
    """Every run's config.yaml records its clean subset as clean_size and its warm-up: --clean-fraction
    replaces the one (they exclude each other), and --epochs too few for the other fits it again, as
    for a new run; values the file recorded are not requests of the user."""
    from engine.train import trainer_for

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"method": "bldr", "device": "cpu", "out": str(tmp_path / "x"),
                                      "data": {"dataset": "digits"},
                                      "hyperparameters": {"epochs": 30, "warmup_epochs": 10, "clean_size": 70,
                                                          "lr": 0.05}}))
    run, method, start = parse_args(["--config", str(config), "--clean-fraction", "0.1", "--epochs", "10"])
    assert method.options == {"lr": 0.05, "clean_fraction": 0.1, "epochs": 10} and start["recorded"] == ["lr"]
    resolved = trainer_for(run, method).run_config.hyperparameters
    assert (resolved.epochs, resolved.warmup_epochs, resolved.clean_size) == (10, 3, 140)  # as --epochs 10 alone
    run, method, start = parse_args(["--config", str(config), "--epochs", "20", "--warmup-epochs", "4"])
    assert method.options == {"epochs": 20, "warmup_epochs": 4, "clean_size": 70, "lr": 0.05}
    _, method, start = parse_args(["--config", str(config), "--epochs", "11"])  # the recorded warm-up still fits
    assert method.options["warmup_epochs"] == 10 and start["recorded"] == ["clean_size", "lr", "warmup_epochs"]


@pytest.mark.parametrize("args,message", [
    (["--lr", "nan"], "--lr must be finite"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
    (["--seed", str(2**63)], "--seed must be in [0, 2**32), got 9223372036854775808"),
    (["--out", "/proc/version/run"], "--out /proc/version/run cannot be written (Not a directory)"),
    (["--out", "/proc/no/run"], "--out /proc/no/run cannot be written (No such file or directory)"),
    (["--bldr-threshold", "0.2"], "--bldr-threshold is an option of --method bldr, not of jnpl"),
    (["--method", "ce", "--warmup-epochs", "2"], "--warmup-epochs: method ce has no such option"),
    (["--method", "nosuch_module:Thing"], "cannot import 'nosuch_module'"),
    (["--method", ":"], "method :: cannot import '' (Empty module name)"),
    (["--method", "coteaching"], "unknown method 'coteaching'"),
    (["--noise-rate", "1.0"], "--noise-rate must be in [0, 1), got 1.0"),
    (["--noise-rate", "-0.1"], "--noise-rate must be in [0, 1)"),
    (["--dataset", "cifar10"], "--data-dir is needed by dataset cifar10"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "--data-dir /nonexistent/cifar does not exist"),
    (["--dataset", "digits", "--data-dir", "/tmp"], "--data-dir /tmp: dataset digits is built in and reads no folder "
                                                     "(for your own data: --dataset npz, folder or filelist)"),
    (["--noise", "file"], "--noise-file is needed by noise 'file'"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0"),
    (["--method", "bldr", "--bldr-negatives", "some"], "invalid choice: 'some'"),
    (["--method", "bldr", "--epochs", "8", "--warmup-epochs", "8"],
     "--warmup-epochs must be >= 0 and leave at least one of the 8 epochs after it, got 8"),
    (["--method", "nlnl", "--dataset", "digits", "--no-augment", "--nlnl-selective", "--epochs", "3"],
     "--epochs must be at least 4 for method nlnl with these options, got 3"),
    (["--method", "jnpl", "--jnpl-selective", "--epochs", "4", "--warmup-epochs", "3"],
     "--warmup-epochs must leave at least 2 of the 4 epochs after it for method jnpl with these options (one per "
     "stage after it), got 3"),
    (["--method", "nlnl", "--nlnl-selective", "--epochs", "3", "--warmup-epochs", "0"],
     "--epochs must be at least 4 for method nlnl with these options, got 3"),
    (["--method", "pmnar", "--pmnar-beta", "-1"], "--pmnar-beta must be >= 0, got -1.0"),
    (["--method", "l2b", "--clean-size", "0"], "method l2b needs a clean subset"),
    (["--method", "l2b", "--clean-size", "5000"], "--clean-size: size must be in [0, 1400], got 5000"),
    (["--method", "l2b", "--clean-fraction", "0.999"], "--clean-fraction: class 0 has 126 samples, fewer than the 139 "
                                                       "per class that a balanced subset of 1399 needs"),
    (["--clean-fraction", "0.0001"], "--clean-fraction: fraction 0.0001 of the 1400 samples is no sample (one is "
                                     "0.00071 of them)"),
    (["--method", "pudistill", "--pudistill-agree", "25"],
     "--pudistill-agree must be in [1, filters = 20], got 25"),
    (["--method", "pudistill", "--clean-size", "5"],
     "method pudistill needs clean samples of every class; the clean subset of 5 has none of class"),
    (["--method", "pudistill", "--warmup-epochs", "1"], "--warmup-epochs: method pudistill has no such option"),
    (["--test-fraction", "0"], "--test-fraction applies to the data sets that may lack a test split (npz, folder), "
                               "got 0.0"),
    (["--test-fraction", "1"], "--test-fraction must be in [0, 1), got 1.0"),
    (["--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
])
def test_bad_flags_name_the_flag(args, message, capsys, tmp_path):
    """Values are checked where their config defines them: names and kinds while parsing, ranges
    once the data set's size has picked the preset (before any training)."""
    try:
        code = main(["--device", "cpu", "--dataset", "digits", "--out", str(tmp_path / "run"), *args])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("content,message", [
    (None, "config.yaml: cannot read it (No such file or directory)"),
    ("- a list", "expected a mapping"),
    ("method: jnpl\nbogus: 1\n", "unknown entry 'bogus'"),
    ("method: [unclosed\n", "config.yaml:2: not valid YAML (expected ',' or ']', but got '<stream end>')"),
    ("method: jnpl\nhyperparameters: {beta: 1}\n", "config.yaml: hyperparameters: 'beta': method jnpl has no such "
                                                   "option"),
    (b"method: jnpl\n\xff\n", "config.yaml: not UTF-8 text (byte 0xff at offset 13)"),
    ("!!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
    ("method: jnpl\ndata: {bogus: 1}\n", "config.yaml: data: DataConfig has no option 'bogus'"),
    ("method: 5\n", "method must be a name or module:Class"),
    ("method: null\n", "method must be a name or module:Class, got None"),
    ("method: jnpl\nseed: abc\n", "--seed must be an integer"),
    ("method: jnpl\nout: null\n", "--out must name a folder"),
    ("method: jnpl\nhyperparameters:\n  lr: 0.1\n  lr: 0.2\n", "config.yaml:4: not valid YAML ('lr' is given twice)"),
    ("method: jnpl\nseed: 1\nseed: 2\n", "config.yaml:3: not valid YAML ('seed' is given twice)"),
])
def test_bad_config_files_get_clear_errors(tmp_path, content, message, capsys):
    path = tmp_path / "config.yaml"
    if content is not None:  # None: no such file
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SystemExit) as caught:  # argparse's error: usage and one line, exit status 2
        parse_args(["--config", str(path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.splitlines()[-1].startswith("python -m engine.train: error: ")
    assert message in err.splitlines()[-1]


@pytest.mark.parametrize("value", ["'1'", "1.0"])
def test_a_config_value_of_another_type_is_refused_naming_its_flag(tmp_path, capsys, value):
    path = tmp_path / "config.yaml"
    path.write_text(f"method: ce\ndata: {{dataset: digits}}\nhyperparameters: {{epochs: {value}}}\n")
    assert main(["--config", str(path), "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"python -m engine.train: error: --epochs must be an integer, got {value}\n"


@pytest.mark.parametrize("flags, noise", [(["--noise-file", "labels.npy"], "symmetric"),
                                          (["--noise-variant", "aggre"], "symmetric")])
def test_a_noise_option_the_benchmarks_default_noise_ignores_names_that_default(flags, noise, capsys, tmp_path):
    """A benchmark's default noise is synthetic: its labels are not trained on as given."""
    try:
        code = main(["--device", "cpu", "--dataset", "digits", "--out", str(tmp_path / "run"), *flags])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"not to --noise {noise}, the default on dataset digits")


def test_engine_fits_config_yaml_runs_on_the_data_set_the_command_line_names(tmp_path, capsys):
    """fit's config.yaml records data: null (arrays); --config took it as a broken file, 'data
    must be a mapping', whatever --dataset said."""
    import engine

    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    engine.fit(x, np.arange(60) % 3, method="ce", epochs=1, lr=0.03, out=tmp_path / "fit")
    config = str(tmp_path / "fit" / "config.yaml")
    with pytest.raises(SystemExit):
        parse_args(["--config", config, "--out", str(tmp_path / "run")])
    assert "data: null, an engine.fit run's config (its data were arrays): give the data set to train on, " \
           "--dataset (and --data-dir)" in capsys.readouterr().err
    run, method, _ = parse_args(["--config", config, "--dataset", "digits", "--out", str(tmp_path / "run")])
    assert run.data.dataset == "digits" and method.options["lr"] == 0.03 and method.options["model"] == "mlp"


def test_the_help_gives_the_presets_values_that_depend_on_the_number_of_classes():
    """The hints were the presets' for 10 classes alone: '9' for JNPL's k = C - 1 on CIFAR-100 too."""
    text = " ".join(build_parser(METHODS.values()).format_help().split())
    hint = "(short budget or small data: 9 for 10 classes, 99 for 100; paper scale: 1 for 10 classes, 110 for 100)"
    assert text.count(hint) == 2, "JNPL's and NLNL's complementary labels"
    assert "(short budget or small data: 1.0 for 10 classes, 0.1 for 100)" in text  # PMNAR's beta
