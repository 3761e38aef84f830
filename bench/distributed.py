"""Epoch time, samples/s and test accuracy of `python -m engine.train` on 1 process and under
`torchrun --nproc_per_node=N`, measured side by side in one run.

    python bench/distributed.py --out runs/distributed [--processes 1 2] [--methods ce bldr]
        [--epochs 5] [--cores 2] [-- options for every run, e.g. --dataset cifar10 --data-dir ...]

Each run uses the same total number of CPU threads (`--cores`, split evenly among the
processes: OMP_NUM_THREADS). The epoch time is the median of metrics.csv's per-epoch seconds
after the first epoch (which includes start-up work); samples/s: training samples (rows of
label_issues.csv) per epoch second. Writes `table.md` into `--out`. Options after `--` replace
the default ones (mnist5k, 40% symmetric noise, on the CPU).
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from engine.outputs import write_atomically  # noqa: E402

DEFAULT_OPTIONS = ["--dataset", "mnist5k", "--noise", "symmetric", "--noise-rate", "0.4", "--device", "cpu"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the runs and table.md")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--methods", nargs="+", default=["ce"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU threads of each run in all")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options for every run")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is not timed)")
    if any(n < 1 or args.cores % n for n in args.processes):
        parser.error(f"--processes must divide --cores {args.cores}, got {args.processes}")
    args.extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    return args


def train(args, method, processes):
    out = os.path.join(os.path.abspath(args.out), f"{method}-{processes}p")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    command = [*launcher, "-m", "engine.train", "--method", method, "--epochs", str(args.epochs), "--out", out,
               *(args.extra or DEFAULT_OPTIONS)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.cores // processes)}
    subprocess.run(command, cwd=REPO, env=environment, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "metrics.csv")) as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "label_issues.csv")) as f:
        samples = sum(1 for _ in csv.DictReader(f))
    epoch = statistics.median(seconds[1:])
    return {"epoch_s": epoch, "samples_per_s": samples / epoch, "test_acc": summary["test_acc"]}


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    lines = [f"{args.epochs} epochs, {args.cores} CPU threads per run in all, options: "
             f"`{' '.join(args.extra or DEFAULT_OPTIONS)}`", "",
             "| method | processes | epoch (s) | samples/s | speed-up | test acc |", "|---|---|---|---|---|---|"]
    for method in args.methods:
        base = None
        for processes in args.processes:
            result = train(args, method, processes)
            base = base or result
            lines.append(f"| {method} | {processes} | {result['epoch_s']:.2f} | {result['samples_per_s']:.0f} | "
                         f"{base['epoch_s'] / result['epoch_s']:.2f}x | {100 * result['test_acc']:.1f}% |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    write_atomically(os.path.join(args.out, "table.md"), lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
