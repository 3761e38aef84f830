"""Where a fused loss's time goes on CUDA: the device time of each kernel of one forward +
backward, fused and eager, from torch.profiler (bench/bench_losses.py times the whole step).

    python bench/kernel_times.py [BxC] [float32|bfloat16]     (default 65536x1000 float32)
"""
import sys
from collections import defaultdict

import torch

from bench_losses import DEVICE, FUSED, REFERENCE, logits_and_batch

STEPS = 10


def kernel_times(fn, z, batch):
    """Mean device microseconds per step of each kernel (and memset / memcpy) name."""
    def step():
        z.grad = None
        fn(z, batch).backward()

    for _ in range(3):  # warm-up: allocator, first launches
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        for _ in range(STEPS):
            step()
        torch.cuda.synchronize()
    times = defaultdict(float)
    for event in profile.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            times[event.name] += event.time_range.elapsed_us() / STEPS
    return times


def main(size="65536x1000", dtype="float32"):
    if DEVICE != "cuda":
        sys.exit("kernel_times.py needs a CUDA device")
    z, batch = logits_and_batch(*map(int, size.split("x")), dtype)
    print(f"| loss | impl | kernel | us per step |  ({size}, {dtype})")
    print("|---|---|---|---|")
    for loss in FUSED:
        for impl, fn in (("fused", FUSED[loss]), ("eager", REFERENCE[loss])):
            times = kernel_times(fn, z, batch)
            for name, us in sorted(times.items(), key=lambda item: -item[1]):
                print(f"| {loss} | {impl} | {name[:90]} | {us:.1f} |")
            print(f"| {loss} | {impl} | total | {sum(times.values()):.1f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
