"""Distributed training on 2 CPU processes (torchrun, gloo): every method runs to the end with
its per-sample state equal on both processes after every epoch, the two processes' parts of
each step are the one-process batch, label_issues.csv holds every sample once, a resume after
kill -9 of one process is exact, and bad set-ups give clear errors. The sharding itself is
tested without processes."""
import copy
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from engine.data.loaders import BatchOrder
from engine.distributed import Processes, local_batch_statistics
from run_testing import assert_resume_repeats, wait_for_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "distributed_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
DIGITS_TRAIN = 1400
COMMON = ["--dataset", "digits", "--noise", "symmetric", "--noise-rate", "0.4", "--batch-size", "64", "--device",
          "cpu", "--seed", "3"]
# The runs also made on one process: CE, and L2B (weights normalized over the global batch).
COMPARED_WITH_ONE = ("ce", "l2b")
# Each method's quick run (epochs, options): its stage changes and per-epoch updates inside.
METHODS = {
    "ce": (4, []),
    "nlnl": (5, ["--warmup-epochs", "1", "--nlnl-window", "1", "--nlnl-selective"]),  # off on augmented batches
    "jnpl": (4, ["--warmup-epochs", "1", "--jnpl-selective"]),  # off on augmented batches
    "pmnar": (4, ["--warmup-epochs", "1", "--pmnar-reweighting", "--pmnar-history"]),  # off on augmented batches
    "bldr": (4, ["--warmup-epochs", "1"]),
    "l2b": (4, ["--warmup-epochs", "1"]),
    "pudistill": (4, ["--pudistill-rounds", "1", "--pudistill-trunk-epochs", "1", "--pudistill-teachers", "2",
                      "--pudistill-teacher-epochs", "1", "--pudistill-filter-steps", "20"]),
}


# ------------------------------------------------------------------ sharding, without processes

@pytest.mark.parametrize("length", [0, 1, 5, 64, 65])
def test_each_process_takes_a_contiguous_part_and_together_they_take_everything(length):
    parts = [Processes(rank, 3).part(length) for rank in range(3)]
    assert parts[0][0] == 0 and parts[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert max(stop - start for start, stop in parts) - min(stop - start for start, stop in parts) <= 1


@pytest.mark.parametrize("count,batch", [(130, 64), (128, 64), (7, 4)])
def test_training_batches_are_split_into_parts_of_the_one_process_batch(count, batch):
    whole = BatchOrder(count, batch, shuffle=True, seed=5)
    shards = [BatchOrder(count, batch, shuffle=True, seed=5, processes=Processes(rank, 2)) for rank in range(2)]
    for loader in (whole, *shards):
        loader.set_epoch(3)
    assert len(shards[0]) == len(shards[1]) == len(whole)
    for number, (batch_whole, part0, part1) in enumerate(zip(whole.batches(), *(s.batches() for s in shards))):
        assert list(part0) + list(part1) == list(batch_whole)
        assert shards[0].first_row(number) == 0 and shards[1].first_row(number) == len(part0)


@pytest.mark.parametrize("count,batch,world", [(1001, 128, 2), (1001, 128, 3), (7, 4, 2), (134, 64, 4)])
def test_mean_losses_scaled_by_each_process_share_average_to_the_global_batch_mean(count, batch, world):
    """What DDP's gradient average makes of the trainer's scaled losses: the global batch's mean,
    also for an uneven last batch (3 and 2 rows, ...)."""
    losses = np.random.default_rng(0).random(count)
    whole = BatchOrder(count, batch, shuffle=True, seed=5)
    loaders = [BatchOrder(count, batch, shuffle=True, seed=5, processes=Processes(rank, world)) for rank in range(world)]
    shares = []
    for number, (global_batch, *parts) in enumerate(zip(whole.batches(), *(loader.batches() for loader in loaders))):
        shares += [loader.share(number) for loader in loaders]
        averaged = np.mean([loader.share(number) * losses[part].mean() for loader, part in zip(loaders, parts)])
        assert averaged == pytest.approx(losses[global_batch].mean(), rel=1e-12)
    assert any(share != 1 for share in shares) and whole.share(0) == 1


def test_passes_over_a_split_give_each_process_a_contiguous_run_of_samples():
    loaders = [BatchOrder(1000, 128, indices=np.arange(5, 1005), processes=Processes(rank, 2)) for rank in range(2)]
    seen = [index for loader in loaders for batch in loader.batches() for index in batch]
    assert seen == list(range(5, 1005))
    assert [len(loader) for loader in loaders] == [4, 4]


# ------------------------------------------------------------------ runs on 2 processes

def launch(out, args, world, env=None):
    """Runs the worker on `world` processes (with `env` added to the environment); returns each
    process's record."""
    os.makedirs(out, exist_ok=True)
    command = (TORCHRUN if world == 2 else [sys.executable]) + [WORKER, str(out), *args, "--out", str(out / "run")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return [json.load(open(out / f"rank{rank}.json")) for rank in range(world)]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_two_processes_in_step_with_one(tmp_path, method):
    epochs, options = METHODS[method]
    args = [*COMMON, "--method", method, "--epochs", str(epochs), *options]
    first, second = launch(tmp_path / "two", args, world=2)

    # The per-sample state each process computed from the gathered outputs, and the weights.
    assert len(first["epochs"]) == epochs
    assert first["epochs"] == second["epochs"]
    assert len(first["steps"]) == len(second["steps"]) > 0
    for (row0, part0), (row1, part1) in zip(first["steps"], second["steps"]):
        assert row0 == 0 and row1 == len(part0) and len(part0) == len(part1)
    # Outputs once, from rank 0, over every sample.
    table = pd.read_csv(tmp_path / "two" / "run" / "label_issues.csv")
    assert sorted(table["index"]) == list(range(DIGITS_TRAIN))
    assert first["summary"] == second["summary"]
    if method not in COMPARED_WITH_ONE:
        return
    (alone,) = launch(tmp_path / "one", args, world=1)
    # Each step's global batch is the one-process batch, cut in two contiguous parts.
    assert len(first["steps"]) == len(alone["steps"])
    for (_, part0), (_, part1), (_, whole) in zip(first["steps"], second["steps"], alone["steps"]):
        assert part0 + part1 == whole
    print(f"{method}: test accuracy on 2 processes {first['summary']['test_acc']:.4f}, on 1 "
          f"{alone['summary']['test_acc']:.4f}")
    # A few epochs on 1,400 digits, BatchNorm over half batches: close, not equal (the 20-epoch
    # mnist5k comparison of every method is bench/distributed.py's, in the README).
    assert abs(first["summary"]["test_acc"] - alone["summary"]["test_acc"]) <= 0.06


API_SCRIPT = """
import json, os, sys
import numpy as np
import engine

rng = np.random.default_rng(0)
centers = rng.normal(size=(4, 16)) * 2
y = rng.integers(0, 4, 600)
x = (centers[y] + rng.normal(size=(600, 16))).astype(np.float32)
given = np.where(rng.random(600) < 0.3, rng.integers(0, 4, 600), y)
result = engine.fit(x, given, method="bldr", true_labels=y, epochs=4, warmup_epochs=1, batch_size=64,
                    out=sys.argv[1], device="cpu")
with open(os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".json"), "w") as f:
    json.dump({"summary": result.summary, "pred_probs": result.pred_probs.tolist(),
               "issues": len(result.label_issues()),
               "new": [result.predict_proba(x[:rows]).tolist() for rows in (3, 1)]}, f)
"""


def test_a_script_calling_the_python_api_trains_on_two_processes(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(API_SCRIPT)
    out = tmp_path / "run"
    result = subprocess.run([*TORCHRUN, str(script), str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (json.load(open(out / f"rank{rank}.json")) for rank in range(2))
    assert first == second
    assert first["issues"] == 600 and len(first["pred_probs"]) == 600
    three, one = map(np.array, first["new"])  # 1 row for 2 processes: it had ended the job with an IndexError
    assert three.shape == (3, 4) and np.allclose(one, three[:1], atol=1e-6) and np.allclose(three.sum(1), 1)
    assert len(pd.read_csv(out / "label_issues.csv")) == 600


def torchrun_train(*args, check=True):
    command = [*TORCHRUN, "-m", "engine.train", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def test_resume_after_kill_of_one_process_repeats_the_uninterrupted_run(tmp_path):
    # BLDR: per-sample SOP parameters synced each step, an EMA model, per-epoch weights.
    common = [*COMMON, "--method", "bldr", "--warmup-epochs", "1", "--epochs", "8"]
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    torchrun_train(*common, "--out", whole)

    agent = subprocess.Popen([*TORCHRUN, "-m", "engine.train", *common, "--out", killed], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(killed, "checkpoint.pt")
    wait_for_checkpoint(agent, checkpoint, 2)
    workers = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, "torchrun runs two worker processes"
    os.kill(int(max(workers, key=int)), signal.SIGKILL)  # one process; torchrun ends the job
    assert agent.wait(timeout=120) != 0
    assert_resume_repeats(killed, whole, lambda: torchrun_train(*common, "--out", killed, "--resume"), 2, 7)


def test_a_late_process_does_not_mistake_the_new_runs_checkpoint_for_an_unfinished_runs(tmp_path):
    """Every process checks the folder for an unfinished run's checkpoint before rank 0 writes
    the new run's first one: CE has no state to broadcast before it, so without that order a
    process starting 5 s late found rank 0's fresh checkpoint and refused to train."""
    first, second = launch(tmp_path, [*COMMON, "--method", "ce", "--epochs", "1"], world=2,
                           env={"LATE_RANK_SECONDS": "5"})
    assert first["summary"] == second["summary"] and first["summary"]["epochs"] == 1


def ranks_reporting(stderr, message):
    """The ranks whose one-line error `message` stderr holds, each naming itself (an error can be
    one process's alone). Torchrun stops the other process once one fails: a slower one may be
    stopped before it prints, so at least one, not both."""
    found = re.findall(rf"^python -m engine\.train: error \(rank (\d) of 2\): {re.escape(message)}", stderr, re.M)
    assert found, stderr
    return {int(rank) for rank in found}


def test_a_global_batch_that_does_not_divide_among_the_processes_is_refused(tmp_path):
    result = torchrun_train(*COMMON, "--method", "ce", "--epochs", "1", "--batch-size", "63", "--out",
                            str(tmp_path / "run"), check=False)
    assert result.returncode != 0
    assert ranks_reporting(result.stderr, "batch size 63 is the global batch: it must be divisible by the 2 processes")


def test_a_bad_flag_is_one_line_per_process_not_the_usage_text(tmp_path):
    result = torchrun_train(*COMMON, "--method", "ce", "--lr", "-1", "--out", str(tmp_path / "run"), check=False)
    assert result.returncode != 0 and "usage:" not in result.stderr
    assert ranks_reporting(result.stderr, "--lr must be > 0, got -1.0")


def test_sync_bn_on_the_cpu_is_refused(tmp_path):
    command = [sys.executable, "-m", "engine.train", *COMMON, "--method", "ce", "--sync-bn", "--out",
               str(tmp_path / "run")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--sync-bn runs on CUDA only" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_split_smaller_than_the_number_of_processes_is_refused(monkeypatch):
    import torch

    import engine.trainer
    from engine.data.training_data import from_arrays
    from engine.methods import METHODS as BUILT_IN

    monkeypatch.setattr(engine.trainer, "from_environment", lambda device: (Processes(0, 2), torch.device("cpu")))
    rng = np.random.default_rng(0)
    data = from_arrays(rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), np.arange(40) % 2,
                       x_test=rng.integers(0, 256, (1, 8, 8), dtype=np.uint8), y_test=np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="the test split has 1 samples for 2 processes: each needs at least one"):
        engine.trainer.Trainer(BUILT_IN["ce"](batch_size=8), data)


def test_batchnorm_recalibration_under_sync_bn_runs_no_collective(tmp_path):
    """A recalibration pass runs over each process's part of the training set, whose batch
    counts can differ: SyncBatchNorm's collective would wait forever for a batch another process
    never runs. Inside local_batch_statistics its layers compute plain BatchNorm's statistics
    without a collective: on the CPU, where the collective path refuses to run, the pass goes
    through and gives what plain BatchNorm gives."""
    import torch
    import torch.distributed as dist

    from engine.models.base import recalibrate_batchnorm

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.BatchNorm1d(64))
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    layers = [m for m in synced.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert len(layers) == 2
    batches = [torch.randn(5, 3, 6, 6), torch.randn(3, 3, 6, 6), torch.randn(1, 3, 6, 6)]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            recalibrate_batchnorm(copy.deepcopy(synced), batches)  # the collective path
        with local_batch_statistics(synced):
            assert recalibrate_batchnorm(synced, batches) == 2  # the batch of one is skipped
        assert all("forward" not in layer.__dict__ for layer in layers), "the layers are SyncBatchNorm again"
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            synced.train()(batches[0])
    finally:
        dist.destroy_process_group()
    assert recalibrate_batchnorm(plain, batches) == 2
    plain_norms = [m for m in plain.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for ours, reference in zip(layers, plain_norms):
        torch.testing.assert_close(ours.running_mean, reference.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(ours.running_var, reference.running_var, rtol=0, atol=0)
        assert ours.running_var.sub(1).abs().max() > 0.01, "the statistics changed from their initial values"


def test_a_folder_another_run_holds_is_refused_by_every_process_with_its_reason(tmp_path):
    """Rank 0 takes the folder's lock; the others learn its refusal (rank 1 had looked on its
    own and taken the other run's checkpoint for an unfinished run of its own)."""
    from engine.outputs import folder_lock

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"the other run's")
    with folder_lock(str(out)):
        result = torchrun_train(*COMMON, "--method", "ce", "--epochs", "1", "--out", str(out), check=False)
    assert result.returncode != 0 and "did not finish" not in result.stderr  # rank 1's own advice, before
    assert ranks_reporting(result.stderr, f"output folder {out} is in use by another run (pid {os.getpid()})")
    assert (out / "checkpoint.pt").read_bytes() == b"the other run's"


MISMATCH_SCRIPT = """
import os, sys
import torch
import engine
from sklearn.datasets import load_digits

x, y = load_digits(return_X_y=True)
if os.environ["RANK"] == "1":
    y = (y + 1) % 10  # e.g. noise drawn with an unseeded generator: other labels on each process
try:
    engine.fit(x, y, method="ce", epochs=1)
except ValueError as error:
    with open(os.path.join(sys.argv[1], "rank" + os.environ["RANK"]), "w") as f:
        f.write(str(error))
torch.distributed.destroy_process_group()  # an exit with gloo's threads still up could abort
"""


def test_processes_given_other_data_by_their_scripts_are_refused(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(MISMATCH_SCRIPT)
    result = subprocess.run([*TORCHRUN, str(script), str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(2):  # each refused, none trained on its own labels
        assert (tmp_path / f"rank{rank}").read_text() == (
            "process 1 of 2 has other data or options than process 0 (their fingerprint or configuration differ); "
            "every process must be given the same (e.g. noise added with a seeded generator)")


def test_a_process_stopped_by_a_bad_streamed_image_stops_the_other_with_one_line(tmp_path):
    """A test image read by one process only: that one names the file, the other, left waiting
    in a collective, says so in one line instead of gloo's traceback."""
    from test_data_files import image_folder, spoil

    data = tmp_path / "data"
    image_folder(data / "train", count=8)
    image_folder(data / "test", count=2)
    spoil(data / "test" / "dog" / "1.bmp", "garbage")
    result = torchrun_train("--dataset", "folder", "--data-dir", str(data), "--stream", "--batch-size", "4",
                            "--epochs", "1", "--device", "cpu", "--method", "ce", "--out", str(tmp_path / "run"),
                            check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("python -m engine.train: error")]
    assert len(lines) == 2, result.stderr[-3000:]
    assert sum(f"{data}/test/dog/1.bmp: not a decodable image" in line for line in lines) == 1
    assert sum("stopped where the processes exchange data, most likely because another process stopped (see its "
               "error)" in line for line in lines) == 1
