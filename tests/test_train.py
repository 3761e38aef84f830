"""The training CLI end to end: outputs, exact resume after a kill, bad input, every method's
ablation switches, and short real runs where JNPL, PMNAR and BLDR must beat CE under 40%
symmetric noise with the same budget."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUTS = ["metrics.csv", "summary.json", "label_scores.csv", "separation.png", "checkpoint.pt"]


def train(*args, check=True):
    command = [sys.executable, "-m", "engine.train", "--device", "cpu", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def read_metrics(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "coteaching"], "invalid choice: 'coteaching'"),
        (["--noise-rate", "1.0"], "--noise-rate must be in [0, 1)"),
        (["--noise-rate", "-0.1"], "--noise-rate must be in [0, 1)"),
        (["--dataset", "cifar10"], "--dataset cifar10 needs --data-dir"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "--data-dir /nonexistent/cifar does not exist"),
        (["--noise", "file"], "--noise file needs --noise-file"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0"),
        (["--method", "bldr", "--bldr-negatives", "some"], "invalid choice: 'some'"),
        (["--method", "bldr", "--dataset", "digits", "--epochs", "8"], "--epochs (8) must exceed the 10 warm-up"),
        (["--method", "pmnar", "--dataset", "digits", "--pmnar-beta", "-1"], "--pmnar-beta must be >= 0, got -1.0"),
    ],
)
def test_bad_cli_input_exits_nonzero_with_a_message(args, message):
    result = train(*args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_help_documents_every_option():
    result = train("--help")
    for option in ("--method", "--dataset", "--data-dir", "--noise", "--noise-rate", "--noise-variant", "--epochs",
                   "--seed", "--out", "--resume", "--device", "--clean-size", "--clean-fraction"):
        assert option in result.stdout


# BLDR: per-sample SOP parameters in the optimizer, an EMA model and weights outside the model.
@pytest.mark.parametrize("method", [["--method", "jnpl"], ["--method", "bldr", "--warmup-epochs", "3"]])
def test_resume_after_a_kill_repeats_the_uninterrupted_run(tmp_path, method):
    common = [*method, "--dataset", "digits", "--epochs", "8", "--seed", "1"]
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    train(*common, "--out", whole)

    process = subprocess.Popen([sys.executable, "-m", "engine.train", "--device", "cpu", *common, "--out", killed],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(killed, "checkpoint.pt")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        # The rename is atomic: a checkpoint that exists is complete.
        if os.path.exists(checkpoint) and torch.load(checkpoint, weights_only=False)["epoch"] >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = torch.load(checkpoint, weights_only=False)["epoch"]
    assert 3 <= interrupted_at < 7, "the kill must land mid-run"
    assert not os.path.exists(os.path.join(killed, "summary.json"))

    result = train(*common, "--out", killed, "--resume")
    assert f"resumed from {checkpoint} after epoch {interrupted_at + 1}" in result.stdout
    assert read_metrics(killed) == read_metrics(whole)
    for key in ("test_acc", "det_f1", "det_precision", "det_recall", "estimated_noise_rate"):
        assert summary(killed)[key] == summary(whole)[key]


def test_resume_refuses_a_different_run(tmp_path):
    out = str(tmp_path / "run")
    train("--method", "ce", "--dataset", "digits", "--epochs", "1", "--out", out)
    result = train("--method", "ce", "--dataset", "digits", "--epochs", "1", "--seed", "5", "--out", out, "--resume",
                   check=False)
    assert result.returncode != 0 and "belongs to a different run" in result.stderr


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
    ],
)
def test_ablation_switches_run(tmp_path, options):
    out = str(tmp_path / "run")
    train(*options, "--dataset", "digits", "--epochs", "3", "--warmup-epochs", "1", "--out", out)
    assert summary(out)["args"]["warmup_epochs"] == 1 and len(read_metrics(out)) == 3


@pytest.mark.parametrize("method", ["pmnar", "bldr"])
def test_preact_resnet_on_cifar_shaped_data(tmp_path, method):
    """The paper-scale path: colour 32 x 32 images (RandAugment's colour ops, flips), PreAct
    ResNet stage heads / peer networks."""
    rng = np.random.default_rng(0)
    data = str(tmp_path / "cifar_shaped.npz")
    np.savez(data, x=rng.integers(0, 256, (160, 32, 32, 3), dtype=np.uint8), y=np.arange(160) % 10)
    out = str(tmp_path / "run")
    train("--method", method, "--dataset", "npz", "--data-dir", data, "--model", "preact_resnet18", "--epochs", "2",
          "--warmup-epochs", "1", "--batch-size", "32", "--out", out)
    assert summary(out)["model"] == "preact_resnet18" and len(read_metrics(out)) == 2


MNIST5K_40_SYMMETRIC = ["--dataset", "mnist5k", "--noise", "symmetric", "--noise-rate", "0.4", "--epochs", "30",
                        "--seed", "0"]


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory):
    """CE with the budget every method must beat, trained once for the tests below."""
    out = str(tmp_path_factory.mktemp("ce"))
    train("--method", "ce", *MNIST5K_40_SYMMETRIC, "--out", out)
    return summary(out)


def run_against_ce(tmp_path, method, ce_run):
    out = str(tmp_path / method)
    result = train("--method", method, *MNIST5K_40_SYMMETRIC, "--out", out)
    assert f"outputs in {os.path.abspath(out)}" in result.stdout
    for name in OUTPUTS:
        assert os.path.getsize(os.path.join(out, name)) > 0
    run = summary(out)
    assert run["test_acc"] > ce_run["test_acc"], (method, run["test_acc"], ce_run["test_acc"])
    assert abs(run["true_noise_rate"] - 0.4) < 1e-9
    return run


@pytest.mark.parametrize("method", ["pmnar", "bldr"])
def test_method_beats_ce_on_mnist5k_with_40_percent_symmetric_noise(tmp_path, method, ce_run):
    run = run_against_ce(tmp_path, method, ce_run)
    assert run["det_f1"] > {"pmnar": 0.9, "bldr": 0.7}[method], run["det_f1"]


def test_jnpl_beats_ce_on_mnist5k_with_40_percent_symmetric_noise(tmp_path, ce_run):
    jnpl = run_against_ce(tmp_path, "jnpl", ce_run)
    assert jnpl["det_f1"] > 0.8

    with open(tmp_path / "jnpl" / "label_scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4000
    assert set(rows[0]) == {"index", "given_label", "true_label", "clean_score", "flagged_noisy", "suggested_label"}
    flagged = [r for r in rows if r["flagged_noisy"] == "1"]
    mislabeled = sum(r["given_label"] != r["true_label"] for r in flagged)
    assert mislabeled / len(flagged) == pytest.approx(jnpl["det_precision"])
    metrics = read_metrics(str(tmp_path / "jnpl"))
    assert [row["stage"] for row in metrics][:4] == ["warmup", "warmup", "warmup", "jnpl"]
    assert metrics[-1]["stage"] == "pseudo" and len(metrics) == 30
