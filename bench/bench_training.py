"""One training epoch of a method, fed by its DALI pipeline vs by the same batches already
augmented and on the device (the difference is the loader's cost), and the share of the step
time spent in the fused ops (losses, complementary sampling, reweighting, history).

    pytest bench/bench_training.py --benchmark-only --benchmark-json=training.json
    NOISY_BENCH_CIFAR10=../shared/data/cifar10_jpeg_ordered.npz pytest bench/bench_training.py ...

Without NOISY_BENCH_CIFAR10: mnist5k and the small CNN (what a CPU can do). With it: CIFAR-10
and PreAct ResNet-18 (the paper-scale setting; on CUDA bf16 autocast and channels_last, as
the trainer runs). Each round is one epoch of the method's own stage (after its warm-up); L2B's
clean batches come from DALI in both feeds. `python bench/report.py training.json` prints
the table.
"""
import os

import pytest
import torch

from engine.methods.base import Phase
from engine.train import parse_args, trainer_for

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CIFAR10 = os.environ.get("NOISY_BENCH_CIFAR10")
METHODS = ["ce", "jnpl", "pmnar", "bldr", "l2b"]
BATCH_SIZES = [128, 512] if DEVICE == "cuda" else [128]
FEEDS = ["dali", "on_device"]


class OnDevice:
    """The batches of one DALI epoch, kept on the device and replayed as the loader."""

    def __init__(self, loader, to_device):
        loader.set_epoch(0)
        self.batches = [(to_device(images), indices, *(to_device(v) for v in view))
                        for images, indices, *view in loader]
        self.first_row = loader.first_row  # where this process's part of a global batch starts

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(self.batches)


def prepared_epoch(method, batch_size, tmp_path):
    """The trainer of a run of `method` and a function that trains one epoch of its own stage."""
    data = ["--dataset", "cifar10", "--data-dir", CIFAR10, "--model", "preact_resnet18"] if CIFAR10 else []
    run, method, _ = parse_args(["--method", method, *data, "--noise", "symmetric", "--noise-rate", "0.4",
                                 "--batch-size", str(batch_size), "--device", DEVICE, "--out", str(tmp_path)])
    trainer = trainer_for(run, method)
    trainer.optimizer = trainer.new_optimizer()
    first_stage = trainer.stages[0]
    epoch = first_stage.epochs if first_stage.kind is Phase.WARMUP and len(trainer.stages) > 1 else 0
    stage, epoch_in_stage = trainer.stage_at(epoch)
    if epoch:
        trainer.method.start_stage(stage, trainer.predict(trainer.train_eval_loader, trainer.model))
    return trainer, lambda: trainer.train_epoch(epoch, stage, epoch_in_stage)


def fused_op_share(run_epoch):
    """Time in the noisy:: ops (forward calls and their backward nodes) over the epoch's wall
    time, from the profiler: their device time on CUDA, their CPU time otherwise."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if DEVICE == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        run_epoch()
    events = profile.events()
    fused = [e for e in events if e.name.startswith("noisy::")
             or (e.name.startswith("GeneratedBackwardFor_noisy_") and e.name.endswith("Backward"))]
    fused_time = sum(e.device_time_total if DEVICE == "cuda" else e.cpu_time_total for e in fused)
    wall = max(e.time_range.end for e in events) - min(e.time_range.start for e in events)
    return fused_time / wall


@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("method", METHODS)
def test_epoch(benchmark, method, batch_size, feed, tmp_path):
    trainer, run_epoch = prepared_epoch(method, batch_size, tmp_path)
    if feed == "on_device":
        trainer.train_loader = OnDevice(trainer.train_loader, trainer.to_device)
    run_epoch()  # warm-up: allocator, oneDNN / cuDNN algorithm choice
    share = fused_op_share(run_epoch) if feed == "on_device" else None
    benchmark.extra_info.update(method=method, batch_size=batch_size, feed=feed, device=DEVICE,
                                data="cifar10" if CIFAR10 else "mnist5k", steps=len(trainer.train_loader),
                                fused_op_share=share)
    benchmark.pedantic(run_epoch, rounds=2, iterations=1)
