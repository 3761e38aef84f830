"""The training CLI end to end: outputs, exact resume after a kill, bad input, every method's
ablation switches, config.yaml reruns, a user's own method, and 20-epoch mnist5k runs where
every method must beat CE under 30% asymmetric noise with the same budget, and NLNL beat it under 40%
symmetric noise without augmentation (marked slow)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import engine
from engine.checkpoint import read_checkpoint
from engine.data.datasets import load_dataset
from engine.models import build_model
from engine.outputs import OUTPUT_FILES, FolderInUse
from run_testing import assert_resume_repeats, built_once, read_metrics, wait_for_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUTS = ["config.yaml", "metrics.csv", "summary.json", "label_issues.csv", "separation.png", "checkpoint.pt"]


def train(*args, check=True):
    command = [sys.executable, "-m", "engine.train", "--device", "cpu", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def config_of(out):
    with open(os.path.join(out, "config.yaml")) as f:
        return yaml.safe_load(f)


def test_help_documents_every_option():
    result = train("--help")
    for option in ("--method", "--dataset", "--data-dir", "--noise", "--noise-rate", "--noise-variant", "--epochs",
                   "--seed", "--out", "--resume", "--device", "--clean-size", "--clean-fraction"):
        assert option in result.stdout


def test_help_gives_the_preset_rule_and_each_methods_whole_description():
    """The help gave the preset rule without its 50-epoch half, and only each method's first
    docstring line: PMNAR's ablation recipe stopped before --pmnar-no-consistency."""
    from engine.methods import METHODS
    from engine.train import build_parser

    groups = {group.title: group.description for group in build_parser(METHODS.values())._action_groups}
    assert any(title.startswith("training") and "at most 50 epochs" in title for title in groups)
    assert "PM = --pmnar-single-network --pmnar-no-reweighting --pmnar-no-consistency, PM+AR" in groups["pmnar"]
    assert groups["l2b"].endswith("5% on small data).")


# PU-distillation's preparation (clean-set augmentation and teachers), made quick for the tests.
PUDISTILL_QUICK = ["--pudistill-rounds", "2", "--pudistill-trunk-epochs", "2", "--pudistill-teachers", "2",
                   "--pudistill-teacher-epochs", "2", "--pudistill-filter-steps", "50"]


# BLDR: per-sample SOP parameters in the optimizer, an EMA model and weights outside the model;
# PU-distillation: state computed before the first epoch.
@pytest.mark.slow
@pytest.mark.parametrize("method", [["--method", "jnpl"], ["--method", "bldr", "--warmup-epochs", "3"],
                                    ["--method", "pudistill", *PUDISTILL_QUICK]])
def test_resume_after_a_kill_repeats_the_uninterrupted_run(tmp_path, method):
    common = [*method, "--dataset", "digits", "--epochs", "8", "--seed", "1"]
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    train(*common, "--out", whole)

    process = subprocess.Popen([sys.executable, "-m", "engine.train", "--device", "cpu", *common, "--out", killed],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(killed, "checkpoint.pt")
    wait_for_checkpoint(process, checkpoint, 3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert_resume_repeats(killed, whole, lambda: train(*common, "--out", killed, "--resume"), 3, 7)
    for key in ("test_acc", "det_f1", "det_precision", "det_recall", "estimated_noise_rate"):
        assert summary(killed)[key] == summary(whole)[key]


def test_resume_refuses_a_different_run_and_a_corrupt_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    train("--method", "ce", "--dataset", "digits", "--epochs", "1", "--out", out)
    before = {name: open(os.path.join(out, name), "rb").read() for name in OUTPUTS}
    result = train("--method", "ce", "--dataset", "digits", "--epochs", "1", "--seed", "5", "--out", out, "--resume",
                   check=False)
    # another seed draws other noisy labels
    differs = ("belongs to a different run (what differs: the training data, labels, test split, classes or true "
               "labels; seed 0 in the checkpoint, 5 in this run);")
    assert result.returncode == 2 and differs in result.stderr
    assert "Traceback" not in result.stderr
    result = train("--method", "ce", "--dataset", "digits", "--epochs", "2", "--lr", "1e-3", "--out", out, "--resume",
                   check=False)
    assert result.returncode == 2 and ("belongs to a different run (what differs: epochs 1 in the checkpoint, 2 in "
                                       "this run; lr 0.1 in the checkpoint, 0.001 in this run);") in result.stderr
    assert before == {name: open(os.path.join(out, name), "rb").read() for name in OUTPUTS}, "nothing rewritten"
    with open(os.path.join(out, "checkpoint.pt"), "r+b") as f:
        f.truncate(100)
    result = train("--method", "ce", "--dataset", "digits", "--epochs", "1", "--out", out, "--resume", check=False)
    assert result.returncode == 2 and "checkpoint.pt cannot be read" in result.stderr and "delete it" in result.stderr


def test_a_diverged_run_stops_with_a_clear_error_and_keeps_its_last_finite_checkpoint(tmp_path):
    """JNPL's stage at lr 1e30 after three warm-up epochs at 0.05: its epoch's loss is NaN
    (test_api.py has a loss that fails on the NaN outputs first)."""
    out = str(tmp_path / "run")
    result = train("--method", "jnpl", "--dataset", "digits", "--epochs", "5", "--lr", "1e30", "--out", out,
                   check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (f"python -m engine.train: error: epoch 4 [jnpl]: the training loss is nan: "
                                     f"the run diverged and stopped; {out}/checkpoint.pt keeps the run as "
                                     f"it was before this epoch; try a lower learning rate (lr, now 1e+30)")
    state = read_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert state["epoch"] == 2 and len(state["metrics"]) == 3
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())


def test_a_diverged_sub_training_stops_the_run_naming_it(tmp_path):
    """PU-distillation's trunk trains on the small clean subset (10%, two batches per epoch): its
    first step at lr 1e30 breaks the weights, and its second batch's loss is NaN."""
    result = train("--method", "pudistill", *PUDISTILL_QUICK, "--dataset", "digits", "--epochs", "3", "--lr", "1e30",
                   "--out", str(tmp_path / "run"), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.fullmatch(r"python -m engine.train: error: pudistill's preparation, trunk epoch 1: the training loss "
                        r"is nan: the run diverged and stopped; try a lower learning rate \(lr, now \S+\)",
                        result.stderr.strip()), result.stderr


def test_resume_refuses_a_checkpoint_of_other_data(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (60, 8, 8), dtype=np.uint8), np.arange(60) % 3
    np.savez(tmp_path / "a.npz", x=x, y=y)
    np.savez(tmp_path / "b.npz", x=x[::-1], y=y)  # same shapes and labels, other images
    out = str(tmp_path / "run")
    common = ["--method", "ce", "--dataset", "npz", "--epochs", "1", "--out", out]
    train(*common, "--data-dir", str(tmp_path / "a.npz"))
    result = train(*common, "--data-dir", str(tmp_path / "b.npz"), "--resume", check=False)
    assert result.returncode == 2 and "belongs to a different run (what differs: the training data, labels, test " \
                                      "split, classes or true labels);" in result.stderr
    assert "resumed" in train(*common, "--data-dir", str(tmp_path / "a.npz"), "--resume").stdout


def test_a_second_run_on_a_live_runs_folder_is_refused_and_a_killed_run_leaves_no_lock_but_its_checkpoint(
        tmp_path):
    out = str(tmp_path / "run")
    common = ["--method", "ce", "--dataset", "digits", "--epochs", "200", "--out", out]
    first = subprocess.Popen([sys.executable, "-m", "engine.train", "--device", "cpu", *common], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "epoch 1/200" in first.stdout.readline(), "the first run is training (and holds the folder)"
        second = train(*common, check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"output folder {out} is in use by another run (pid {first.pid})" in second.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The dead run's lock went with it; what it trained stays until a run resumes it or overwrites it.
    trained = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    new = ["--method", "ce", "--dataset", "digits", "--epochs", "1", "--out", out]
    refused = train(*new, check=False)
    assert refused.returncode == 2 and refused.stderr.splitlines() == [
        f"python -m engine.train: error: output folder {out} holds the checkpoint of a run that did not finish: resume "
        f"it (--resume, engine.fit's resume=True) or start a new run there, deleting it (--overwrite, overwrite=True)"]
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == trained
    train(*new, "--overwrite")
    assert summary(out)["epochs"] == 1


def stopped_after_its_first_epoch(out, stop):
    """A 200-epoch digits run in `out`, stopped by stop(process) once it printed its first epoch:
    (exit status, stderr). SIGINT has its default handler there, whatever pytest was started with."""
    run = subprocess.Popen([sys.executable, "-m", "engine.train", "--device", "cpu", "--method", "ce", "--dataset",
                            "digits", "--epochs", "200", "--out", out], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert "epoch 1/200" in run.stdout.readline()
        stop(run)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    return run.returncode, stderr


def test_ctrl_c_stops_a_run_with_one_line_saying_how_to_resume_it(tmp_path):
    out = str(tmp_path / "run")
    # SIGINT as the terminal's Ctrl-C sends it
    returncode, stderr = stopped_after_its_first_epoch(out, lambda run: run.send_signal(signal.SIGINT))
    assert returncode == 130 and stderr.splitlines() == [
        f"python -m engine.train: error: interrupted; {out}/checkpoint.pt keeps the run as it was after its last "
        f"finished epoch: continue it with the same options and --resume"]
    epoch = read_checkpoint(os.path.join(out, "checkpoint.pt"))["epoch"]
    assert epoch >= 0, "the checkpoint it names is whole"
    finished = list(range(1, epoch + 2))  # the last one's row unless the signal came between the two writes
    assert pd.read_csv(os.path.join(out, "metrics.csv"))["epoch"].tolist() in (finished, finished[:-1]), \
        "metrics.csv holds the epochs it finished"


def test_a_run_whose_output_reader_quits_stops_with_one_line_saying_how_to_resume_it(tmp_path):
    """`python -m engine.train ... | head -1`: the next line's write fails (EPIPE)."""
    out = str(tmp_path / "run")
    returncode, stderr = stopped_after_its_first_epoch(out, lambda run: run.stdout.close())
    assert returncode == 1 and stderr.splitlines() == [
        f"python -m engine.train: error: stopped: the reader of its output closed the pipe; {out}/checkpoint.pt keeps "
        f"the run as it was after its last finished epoch: continue it with the same options and --resume"]


def test_a_new_run_in_a_finished_runs_folder_leaves_none_of_its_files(tmp_path):
    out = tmp_path / "run"
    train("--method", "ce", "--dataset", "digits", "--epochs", "1", "--out", str(out))
    assert {name for name in os.listdir(out) if not name.startswith(".")} == set(OUTPUT_FILES)
    finished, finished_loss = (out / "checkpoint.pt").read_bytes(), pd.read_csv(out / "metrics.csv")["train_loss"]
    (out / "notes.txt").write_text("the user's own file")
    new = subprocess.Popen([sys.executable, "-m", "engine.train", "--device", "cpu", "--method", "ce", "--dataset",
                            "digits", "--epochs", "200", "--seed", "1", "--out", str(out)], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "epoch 1/200" in new.stdout.readline()
    finally:
        new.send_signal(signal.SIGKILL)
        new.wait()
    # killed before its results: the finished run's summary, label issues and plot are gone with it, its
    # metrics replaced by the new run's of the epochs it finished
    assert {name for name in os.listdir(out) if not name.startswith(".")} == {"config.yaml", "checkpoint.pt",
                                                                             "metrics.csv", "notes.txt"}
    assert pd.read_csv(out / "metrics.csv")["train_loss"].iloc[0] != finished_loss.iloc[0], "the new run's (seed 1)"
    assert (out / "checkpoint.pt").read_bytes() != finished and config_of(out)["seed"] == 1
    digits = load_dataset("digits")
    with pytest.raises(FolderInUse, match="holds the checkpoint of a run that did not finish"):
        engine.fit(digits.x_train, digits.y_train, method="ce", epochs=1, out=str(out))
    train("--method", "ce", "--dataset", "digits", "--epochs", "1", "--out", str(out), "--overwrite")
    # engine.fit without true labels writes no separation.png: the earlier run's one goes
    engine.fit(digits.x_train, digits.y_train, method="ce", epochs=1, out=str(out))
    assert {name for name in os.listdir(out) if not name.startswith(".")} == set(OUTPUT_FILES) - {
        "separation.png"} | {"notes.txt"}
    assert (out / "notes.txt").read_text() == "the user's own file"


@pytest.mark.parametrize(
    "options",
    [
        ["--method", "pmnar", "--pmnar-single-network", "--pmnar-no-reweighting", "--pmnar-no-consistency"],  # PM
        ["--method", "pmnar", "--pmnar-single-network", "--pmnar-no-consistency", "--pmnar-no-history"],  # PM+AR
        ["--method", "pmnar", "--pmnar-view", "weak", "--pmnar-beta", "0.1"],
        ["--method", "bldr", "--bldr-no-sop", "--bldr-no-consistency", "--bldr-no-self-distillation", "--bldr-no-ema",
         "--bldr-no-reweighting"],
        ["--method", "bldr", "--bldr-negatives", "sampled", "--bldr-corrected-label", "sum", "--bldr-weight-norm",
         "max", "--bldr-threshold", "0.5"],
        ["--method", "l2b", "--l2b-weights", "alpha", "--clean-size", "100"],  # L2RW
        ["--method", "l2b", "--l2b-weights", "sum_to_one", "--l2b-normalize", "softmax", "--l2b-temperature", "5",
         "--l2b-grad-clip", "0"],
        ["--method", "l2b", "--l2b-weights", "beta", "--l2b-normalize", "sigmoid"],
    ],
)
def test_ablation_switches_run(tmp_path, options):
    out = str(tmp_path / "run")
    train(*options, "--dataset", "digits", "--epochs", "3", "--warmup-epochs", "1", "--out", out)
    assert config_of(out)["hyperparameters"]["warmup_epochs"] == 1 and len(read_metrics(out)) == 3


@pytest.mark.parametrize("options", [
    [*PUDISTILL_QUICK, "--pudistill-targets", "hard", "--pudistill-no-mixup", "--pudistill-entropy", "0"],
    [*PUDISTILL_QUICK, "--pudistill-targets", "hard_bootstrap", "--pudistill-lambda", "0.8", "--pudistill-eta", "0.5",
     "--pudistill-filters", "5", "--pudistill-agree", "4"],
])
def test_pudistill_switches_run(tmp_path, options):
    out = str(tmp_path / "run")
    train("--method", "pudistill", *options, "--dataset", "digits", "--epochs", "2", "--out", out)
    assert config_of(out)["hyperparameters"]["rounds"] == 2 and len(read_metrics(out)) == 2


@pytest.mark.parametrize("method, model", [("pmnar", "preact_resnet18"), ("bldr", "preact_resnet18"),
                                           ("l2b", "preact_resnet18"), ("pudistill", "preact_resnet18"),
                                           ("bldr", "small_cnn_dense")])
def test_methods_on_colour_images(tmp_path, method, model):
    """The paper-scale path: colour images (RandAugment's colour ops, flips), PreAct ResNet stage
    heads / peer networks; BLDR's stage heads on the dense CNN, whose last stage is a feature
    vector. 16 x 16 pixels: a quarter of CIFAR's ResNet compute, the same code."""
    rng = np.random.default_rng(0)
    data = str(tmp_path / "colour.npz")
    np.savez(data, x=rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8), y=np.arange(64) % 10)
    out = str(tmp_path / "run")
    options = PUDISTILL_QUICK if method == "pudistill" else ["--warmup-epochs", "1"]
    train("--method", method, "--dataset", "npz", "--data-dir", data, "--model", model, "--epochs", "2",
          "--batch-size", "16", "--noise", "symmetric", "--clean-size", "20", *options, "--out", out)
    assert summary(out)["model"] == model and len(read_metrics(out)) == 2


def test_resnet18_starts_from_pretrained_weights(tmp_path):
    """--pretrained: a 1-channel resnet18's weights with 5 classes (the data have 10: fc starts
    new) train on 64 grayscale 16 x 16 images (the ImageNet stem takes them); a missing file, and
    RGB weights for grayscale data, are refused before any training with one line."""
    data = str(tmp_path / "gray.npz")
    np.savez(data, x=np.random.default_rng(0).integers(0, 256, (64, 16, 16), dtype=np.uint8), y=np.arange(64) % 10)
    weights, rgb, missing = tmp_path / "gray.pt", tmp_path / "rgb.pt", tmp_path / "missing.pt"
    torch.save(build_model("resnet18", 5, in_channels=1).state_dict(), weights)
    torch.save(build_model("resnet18", 10).state_dict(), rgb)
    out = str(tmp_path / "run")
    common = ["--method", "ce", "--dataset", "npz", "--data-dir", data, "--model", "resnet18", "--epochs", "1",
              "--batch-size", "16", "--out", out]
    train(*common, "--pretrained", str(weights))
    assert config_of(out)["hyperparameters"]["pretrained"] == str(weights) and summary(out)["model"] == "resnet18"
    for path, error in [(missing, f"--pretrained {missing} does not exist"),
                        (rgb, f"pretrained weights {rgb} do not fit the resnet18 network; of another shape: "
                              "conv1.weight [64, 3, 7, 7] in the file, [64, 1, 7, 7] in the network")]:
        result = train(*common, "--pretrained", str(path), check=False)
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"python -m engine.train: error: "
                                                                                  f"{error}"]


def test_config_yaml_reruns_the_run_exactly_and_flags_override_it(tmp_path):
    """L2B's default clean subset is a fraction: config.yaml records the count it gave."""
    first, again, changed = (str(tmp_path / name) for name in ("first", "again", "changed"))
    train("--method", "l2b", "--dataset", "digits", "--noise", "asymmetric", "--noise-rate", "0.3", "--epochs", "3",
          "--warmup-epochs", "1", "--seed", "2", "--out", first)
    recorded = config_of(first)
    assert recorded["hyperparameters"]["clean_size"] == 70 and recorded["hyperparameters"]["clean_fraction"] is None
    assert recorded["hyperparameters"]["lr"] == 0.1 and recorded["data"]["noise"] == "asymmetric"
    train("--config", os.path.join(first, "config.yaml"), "--out", again)
    assert read_metrics(again) == read_metrics(first)
    assert {k: v for k, v in summary(again).items()} == summary(first)
    assert config_of(again) == {**recorded, "out": again}
    train("--config", os.path.join(first, "config.yaml"), "--out", changed, "--epochs", "2", "--l2b-temperature", "5")
    expected = {**recorded, "out": changed,
                "hyperparameters": {**recorded["hyperparameters"], "epochs": 2, "temperature": 5.0}}
    assert config_of(changed) == expected and len(read_metrics(changed)) == 2
    # Without --out a variant would replace the run it came from.
    result = train("--config", os.path.join(first, "config.yaml"), "--seed", "3", check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"python -m engine.train: error: --out: --config {first}/config.yaml records the folder of its finished run, "
        f"{first}; give --out for this run (--overwrite replaces that run's outputs)")
    assert summary(first) == summary(again)


def test_a_method_defined_in_a_user_file_trains_through_the_cli(tmp_path):
    """README's GCE example, saved as gce.py in the working directory."""
    from test_api import readme_block

    (tmp_path / "gce.py").write_text(readme_block("## Your own method"))
    out = str(tmp_path / "run")
    command = [sys.executable, "-m", "engine.train", "--device", "cpu", "--method", "gce:GCE", "--gce-q", "0.5",
               "--dataset", "digits", "--epochs", "2", "--out", out]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    recorded = config_of(out)
    assert recorded["method"] == "gce:GCE" and recorded["hyperparameters"]["q"] == 0.5
    assert len(read_metrics(out)) == 2 and summary(out)["method"] == "gce"
    command[command.index("0.5")] = "1.5"
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--gce-q must be in (0, 1], got 1.5" in result.stderr


MNIST5K_30_ASYMMETRIC = ["--dataset", "mnist5k", "--noise", "asymmetric", "--noise-rate", "0.3", "--epochs", "20",
                         "--seed", "0"]
# 40% symmetric noise on batches without augmentation, where the small CNN fits the wrong labels
# (CE's test accuracy peaks and slides) and NLNL runs its selective stages (issue item 3).
MNIST5K_40_SYMMETRIC_UNAUGMENTED = ["--dataset", "mnist5k", "--noise", "symmetric", "--noise-rate", "0.4",
                                    "--epochs", "20", "--seed", "0", "--no-augment"]
# The runs compared, each a method's preset, its extra switches and its setting; the longest first (L2B about
# 4 min). "pmnar_adaptive" is PMNAR with the adaptive parts that its short-budget preset leaves
# off on augmented batches, "jnpl_selective" / "nlnl_selective" JNPL / NLNL with their selective
# stages (off there too). BLDR's label issues come from its negative head, the paper's rule, which
# its preset uses where the batches are not augmented (a memorization guard that changes only the
# label issues, not training): that head's detection is what test_bldr_detects_better_than_ce checks.
COMPARED = {name: [*switches, *MNIST5K_30_ASYMMETRIC] for name, switches in {
    "l2b": ["--method", "l2b"],
    "pmnar_adaptive": ["--method", "pmnar", "--pmnar-reweighting", "--pmnar-history"],
    "pmnar": ["--method", "pmnar"], "bldr": ["--method", "bldr", "--bldr-detection", "negative"],
    "pudistill": ["--method", "pudistill"],
    "jnpl": ["--method", "jnpl"], "jnpl_selective": ["--method", "jnpl", "--jnpl-selective"],
    "nlnl": ["--method", "nlnl"], "nlnl_selective": ["--method", "nlnl", "--nlnl-selective"],
    "ce": ["--method", "ce"]}.items()}
COMPARED.update({f"{method}_unaugmented": ["--method", method, *MNIST5K_40_SYMMETRIC_UNAUGMENTED]
                 for method in ("nlnl", "ce")})
# Pair-flip noise, where CE memorizes the flipped labels and the methods do not. Measured on
# 2026-12-06 with these 20 epochs (docs/methods.md has the runs of earlier presets): CE 89.3%,
# PMNAR 91.7% without its adaptive parts (its short-budget preset on augmented batches) and 97.1%
# with them, NLNL 93.3% without its selective stages and 96.7% with them (2026-12-07, its class
# weights), BLDR 95.1%, PU-distillation 96.9% (2026-12-07, with its paper's 10% clean), L2B 96.4%,
# JNPL 96.8% (97.0% with its pseudo stage; 2026-12-07, with the NLNL code's class weights):
# margins of 5.8-7.8 points over CE, 4.0 for NLNL's preset and 2.4 for PMNAR's. Code changes that
# move float results have moved these runs by up to 0.8 points (an FMA build; 0.6 in the reruns of
# 2026-12-06), so PMNAR's preset is held to 1 point and the others to 2: a last-bit change cannot
# flip a comparison.
MIN_MARGIN_OVER_CE = 0.02
SMALLER_MARGIN_OVER_CE = {"pmnar": 0.01}
# Detection F1 floors (measured 0.884-0.971 on 2026-12-06, NLNL without its selective stages 0.922 on 2026-12-07;
# CE 0.849; flagging every sample gives 0.46).
MIN_DETECTION_F1 = {"pmnar_adaptive": 0.93, "pmnar": 0.86, "l2b": 0.88, "bldr": 0.9, "pudistill": 0.85, "jnpl": 0.88,
                    "jnpl_selective": 0.88, "nlnl": 0.88, "nlnl_selective": 0.88}


@pytest.fixture(scope="module")
def compared_runs(tmp_path_factory):
    """Every method and CE with the same budget (L2B's clean subset comes out of the same
    training set), trained once per test session (`built_once`). Returns {method: (output
    folder, stdout)}."""
    root = built_once(tmp_path_factory, "compared", train_compared)
    return {method: (str(root / method), (root / f"{method}.log").read_text()) for method in COMPARED}


def train_compared(root):
    """Two single-threaded runs at a time: on 2 cores that finishes sooner than one two-threaded
    run after another."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    waiting, running = list(COMPARED), {}
    while waiting or running:
        while waiting and len(running) < 2:
            method = waiting.pop(0)
            command = [sys.executable, "-m", "engine.train", "--device", "cpu", *COMPARED[method], "--out",
                       str(root / method)]
            with open(root / f"{method}.log", "w") as log:  # a file, not a pipe nobody reads meanwhile
                running[method] = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log,
                                                   stderr=subprocess.STDOUT)
        time.sleep(1)
        for method, process in list(running.items()):
            if process.poll() is not None:
                assert process.returncode == 0, f"{method} failed:\n{(root / f'{method}.log').read_text()}"
                del running[method]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pmnar", "pmnar_adaptive", "bldr", "l2b", "pudistill", "jnpl", "jnpl_selective",
                                    "nlnl", "nlnl_selective"])
def test_method_beats_ce_on_mnist5k_with_30_percent_asymmetric_noise(method, compared_runs):
    out, stdout = compared_runs[method]
    assert f"outputs in {os.path.abspath(out)}" in stdout
    for name in OUTPUTS:
        assert os.path.getsize(os.path.join(out, name)) > 0
    run, ce = summary(out), summary(compared_runs["ce"][0])
    margin = SMALLER_MARGIN_OVER_CE.get(method, MIN_MARGIN_OVER_CE)
    assert run["test_acc"] > ce["test_acc"] + margin, (method, run["test_acc"], ce["test_acc"])
    assert run["det_f1"] > MIN_DETECTION_F1[method], run["det_f1"]


@pytest.mark.slow
def test_bldr_detects_better_than_ce(compared_runs):
    """BLDR's negative head against CE's own arg-max (measured F1 0.964 against 0.849, 2026-12-06):
    its class balance keeps every class alive in the head (docs/methods.md)."""
    bldr, ce = summary(compared_runs["bldr"][0]), summary(compared_runs["ce"][0])
    assert bldr["det_f1"] > ce["det_f1"] + 0.05 and bldr["det_precision"] > 0.9, (bldr, ce)


@pytest.mark.slow
@pytest.mark.parametrize("guarded,preset,guard,margin", [("pmnar_adaptive", "pmnar", "reweighting", 0.03),
                                                         ("nlnl_selective", "nlnl", "selective", 0.015)])
def test_memorization_guards_win_where_ce_memorizes(guarded, preset, guard, margin, compared_runs):
    """The parts that the short-budget presets leave off on augmented batches are what the
    methods gain by where the labels get memorized (measured on 2026-12-06: PMNAR 97.1% with
    its adaptive parts, 91.7% without; NLNL on 2026-12-07 96.7% with its selective stages, 93.3% without)."""
    with_guard, without = (summary(compared_runs[name][0]) for name in (guarded, preset))
    assert not config_of(compared_runs[preset][0])["hyperparameters"][guard]
    assert with_guard["test_acc"] > without["test_acc"] + margin, (with_guard["test_acc"], without["test_acc"])


@pytest.mark.slow
def test_nlnl_beats_ce_at_40_percent_symmetric_noise_without_augmentation(compared_runs):
    """NLNL's regime (issue item 3): without augmentation CE fits the wrong labels and NLNL's
    selective stages, on there by its preset, leave them out. Measured on seeds 0, 1 and 2 (NLNL
    2026-12-07, CE 2026-12-06): NLNL 96.4%, 96.0%, 95.4%, CE 92.8%, 93.2%, 92.8%. With crops neither
    fits them in 20 epochs and NLNL ties CE (docs/methods.md)."""
    nlnl, ce = (compared_runs[f"{method}_unaugmented"][0] for method in ("nlnl", "ce"))
    assert config_of(nlnl)["hyperparameters"]["selective"]
    assert summary(nlnl)["test_acc"] > summary(ce)["test_acc"] + MIN_MARGIN_OVER_CE, (summary(nlnl), summary(ce))


def largest_fall_at_stage_changes(metrics, warmup_epochs):
    """(points, epoch): the largest fall of test accuracy, in a stage entered after the warm-up,
    below the best since the warm-up ended (a warm-up at its high lr is not a result the method
    keeps, and the first stage after it starts the method's regime)."""
    rows, best, fall = metrics[warmup_epochs:], 0.0, (0.0, None)
    for row in rows:
        accuracy = float(row["test_acc"])
        if row["stage"] != rows[0]["stage"]:
            fall = max(fall, (best - accuracy, int(row["epoch"])), key=lambda item: item[0])
        best = max(best, accuracy)
    return fall


def test_largest_fall_at_stage_changes():
    rows = [("w", 0.9), ("a", 0.5), ("a", 0.8), ("a", 0.7), ("b", 0.79), ("b", 0.75), ("c", 0.81), ("c", 0.78)]
    metrics = [{"epoch": str(e + 1), "stage": stage, "test_acc": str(acc)} for e, (stage, acc) in enumerate(rows)]
    assert largest_fall_at_stage_changes(metrics, 1) == (pytest.approx(0.05), 6)
    assert largest_fall_at_stage_changes(metrics, 0) == (pytest.approx(0.4), 2)
    assert largest_fall_at_stage_changes(metrics[:4], 1) == (0.0, None), "no stage change after the warm-up"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["jnpl_selective", "nlnl_selective", "nlnl_unaugmented"])
def test_no_collapse_at_stage_changes(method, compared_runs):
    """JNPL's and NLNL's selective stages (SelNL, SelPL, pseudo-labeling) keep test accuracy
    within 3 points of its best so far (measured: JNPL 0.5 points on 2026-12-07, NLNL with its
    class weights 0.8 under pair flips and 1.2 at 40% symmetric noise without augmentation on
    2026-12-07)."""
    out = compared_runs[method][0]
    warmup_epochs = config_of(out)["hyperparameters"].get("warmup_epochs", 0)
    fall, epoch = largest_fall_at_stage_changes(read_metrics(out), warmup_epochs)
    assert fall <= 0.03, f"{method}: {fall:.3f} below the best so far at epoch {epoch}"


@pytest.mark.slow
def test_run_outputs_agree_with_each_other(compared_runs):
    out = compared_runs["jnpl_selective"][0]
    jnpl = summary(out)
    table = pd.read_csv(os.path.join(out, "label_issues.csv"))
    assert list(table.columns) == ["index", "given_label", "predicted_label", "label_quality", "is_label_issue",
                                   "true_label"]
    assert len(table) == 4000 and table["index"].tolist() == list(range(4000))
    flagged = table[table["is_label_issue"]]
    assert (flagged["given_label"] != flagged["true_label"]).mean() == pytest.approx(jnpl["det_precision"])
    assert ((table["label_quality"] < 0.5) == table["is_label_issue"]).all(), "JNPL flags below 0.5"
    metrics = read_metrics(out)
    assert [row["stage"] for row in metrics][:4] == ["warmup", "warmup", "warmup", "jnpl"]
    assert metrics[-1]["stage"] == "pseudo" and len(metrics) == 20
    for method, size in (("l2b", 200), ("pudistill", 400)):  # by default 5% and 10% (the paper's) of mnist5k
        out = compared_runs[method][0]
        assert summary(out)["clean_subset_size"] == size
        table = pd.read_csv(os.path.join(out, "label_issues.csv"))
        assert table["clean_subset"].sum() == size and not table["is_label_issue"][table["clean_subset"]].any()
        assert config_of(out)["hyperparameters"]["clean_size"] == size


@pytest.mark.slow
def test_pudistill_augmented_clean_set_is_precise(compared_runs):
    """The paper's Table I on mnist5k at 30% asymmetric noise: the noisy-set samples that joined the clean
    set carry the right class; the teachers' targets go to samples whose teacher arg-max is right
    more often than on the whole training set."""
    augmented = summary(compared_runs["pudistill"][0])["augmented_clean_set"]
    assert augmented["precision"] > 0.9 and augmented["size"] > 1000, augmented
    assert sum(row["size"] for row in augmented["per_class"]) == augmented["size"]
    targets = summary(compared_runs["pudistill"][0])["teacher_targets"]
    assert targets["size"] > 1000 and targets["accuracy"] > max(0.9, targets["teacher_accuracy"]), targets
