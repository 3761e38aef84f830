"""Markdown tables from pytest-benchmark JSON files of bench/ (python bench/report.py a.json ...).

Losses: mean forward + backward time of fused / eager / compiled, the fused op's speed-ups,
and its achieved bandwidth next to a device-to-device copy of the same logits. Bytes counted
for a fused loss (what its two passes must move): forward reads the logits and writes the
stored gradient, backward reads it and writes the scaled one (4 B C bytes-per-element), plus
the label / exclusion inputs and the per-row vectors. Training: epoch time with the DALI feed
and with batches already on the device, the loader's share, and the fused ops' share of an
epoch.
"""
import json
import sys
from collections import defaultdict

ELEMENT_BYTES = {"float32": 4, "bfloat16": 2}


def fused_bytes(loss, B, C, dtype):
    side_inputs = {"pm": B * 8 + B * C, "ce": B * 8 + B * 4, "pl_plus": B * 8}.get(loss, B * 8)  # labels, weights, exclude
    return 4 * B * C * ELEMENT_BYTES[dtype] + side_inputs + 3 * B * 4


def loss_table(runs):
    means = {(e["loss"], e["size"], e["impl"], e["dtype"]): mean for e, mean in runs if e.get("impl") != "copy"}
    copies = {e["size"]: mean for e, mean in runs if e.get("impl") == "copy"}
    print("| loss | B x C | dtype | fused ms | eager ms | compiled ms | vs eager | vs compiled | fused GB/s | copy GB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for loss, size, impl, dtype in sorted(means, key=lambda k: (int(k[1].split("x")[0]), k[3], k[0])):
        if impl != "fused":
            continue
        B, C = map(int, size.split("x"))
        fused, eager, compiled = (means.get((loss, size, i, dtype)) for i in ("fused", "eager", "compiled"))
        copy_rate = f"{2 * B * C * 4 / copies[size] / 1e9:.0f}" if size in copies else "-"
        print(f"| {loss} | {size} | {dtype} | {fused * 1e3:.3f} | {milliseconds(eager)} | {milliseconds(compiled)} | "
              f"{speedup(eager, fused)} | {speedup(compiled, fused)} | {fused_bytes(loss, B, C, dtype) / fused / 1e9:.0f} | "
              f"{copy_rate} |")


# A partial run (e.g. -k "not compiled") leaves some columns without a time.
def milliseconds(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def speedup(baseline, fused):
    return "-" if baseline is None else f"{baseline / fused:.2f}x"


def training_table(runs):
    epochs = defaultdict(dict)
    for e, median in runs:
        epochs[(e["method"], e["batch_size"], e["data"], e["device"])][e["feed"]] = (median, e.get("fused_op_share"))
    print("| method | data | batch | epoch, DALI (s) | epoch, on device (s) | loader share | fused ops share |")
    print("|---|---|---|---|---|---|---|")
    for (method, batch, data, device), feeds in epochs.items():
        dali, (on_device, share) = feeds["dali"][0], feeds["on_device"]
        print(f"| {method} | {data} ({device}) | {batch} | {dali:.2f} | {on_device:.2f} | {1 - on_device / dali:.0%} | "
              f"{share:.1%} |")


def main(paths):
    losses, training = [], []
    for path in paths:
        with open(path) as f:
            for bench in json.load(f)["benchmarks"]:
                info = bench["extra_info"]
                if "feed" in info:
                    training.append((info, bench["stats"]["median"]))
                else:
                    losses.append((info, bench["stats"]["mean"]))
    if losses:
        loss_table(losses)
    if training:
        print()
        training_table(training)


if __name__ == "__main__":
    main(sys.argv[1:])
