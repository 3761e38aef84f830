"""Where a fused loss's time goes on CUDA, per forward + backward, fused and eager, from
torch.profiler (bench/bench_losses.py times the whole step): the device time of each kernel,
and the host time of each op (self CPU time: at small sizes a call costs more on the host
than on the device).

    python bench/kernel_times.py [BxC] [float32|bfloat16]     (default 65536x1000 float32)
"""
import sys
from collections import defaultdict

import torch

from bench_losses import DEVICE, FUSED, REFERENCE, logits_and_batch

STEPS = 10
HOST_OPS_SHOWN = 8


def step_times(fn, z, batch):
    """Mean microseconds per step: device time of each kernel (and memset / memcpy) name,
    and self host time of each op name."""
    def step():
        z.grad = None
        fn(z, batch).backward()

    for _ in range(3):  # warm-up: allocator, first launches
        step()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(STEPS):
            step()
        torch.cuda.synchronize()
    device, host = defaultdict(float), defaultdict(float)
    for event in profile.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            device[event.name] += event.time_range.elapsed_us() / STEPS
        else:
            host[event.name] += event.self_cpu_time_total / STEPS
    return device, host


def print_rows(loss, impl, kind, times, limit=None):
    rows = sorted(times.items(), key=lambda item: -item[1])
    for name, us in rows[:limit]:
        print(f"| {loss} | {impl} | {kind} | {name[:90]} | {us:.1f} |")
    print(f"| {loss} | {impl} | {kind} | total | {sum(times.values()):.1f} |")


def main(size="65536x1000", dtype="float32"):
    if DEVICE != "cuda":
        sys.exit("kernel_times.py needs a CUDA device")
    z, batch = logits_and_batch(*map(int, size.split("x")), dtype)
    print(f"| loss | impl | time | kernel or op | us per step |  ({size}, {dtype})")
    print("|---|---|---|---|---|")
    for loss in FUSED:
        for impl, fn in (("fused", FUSED[loss]), ("eager", REFERENCE[loss])):
            device, host = step_times(fn, z, batch)
            print_rows(loss, impl, "device", device)
            print_rows(loss, impl, "host", host, HOST_OPS_SHOWN)


if __name__ == "__main__":
    main(*sys.argv[1:])
