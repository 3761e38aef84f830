"""CE and every method on CIFAR-10 with the CIFAR-10N human labels, at a stated budget.

    python bench/real_noise.py --data-dir ../shared/data --epochs 20 --out runs/real_noise

runs `python -m engine.train --dataset cifar10 --noise cifar10n --noise-variant V` for each
method and label set (`worst`: 40.2% wrong, `aggre`: 9.0%), `--jobs` runs at a time with
`--threads` threads each, and writes `table.md` (test accuracy, best test accuracy, detection
precision / recall / F1 against the true CIFAR-10 labels, training minutes: the sum of the
epochs' times in metrics.csv) into `--out`, next to each run's own folder. A run whose folder
already holds a summary.json of the same epochs and seed is not trained again, so an
interrupted benchmark continues where it stopped (one of other epochs or another seed is an
error). Options after `--` go to every run (e.g. `-- --model small_cnn --device cuda`).
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from engine.methods import METHODS  # noqa: E402
from engine.outputs import write_atomically  # noqa: E402

VARIANTS = ("worst", "aggre")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder with cifar10_jpeg_ordered.npz or the CIFAR-10 "
                                                          "python batches")
    parser.add_argument("--epochs", type=int, required=True, help="epochs of every run (the stated budget)")
    parser.add_argument("--out", required=True, help="folder for the runs and table.md")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of each run (0: as inherited)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options for every run")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    args.extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    args.data_dir = os.path.abspath(args.data_dir)  # the runs start in the repository
    return args


def command(args, method, variant):
    return [sys.executable, "-m", "engine.train", "--method", method, "--dataset", "cifar10", "--data-dir",
            args.data_dir, "--noise", "cifar10n", "--noise-variant", variant, "--epochs", str(args.epochs),
            "--seed", str(args.seed), "--out", run_folder(args, method, variant), *args.extra]


def run_folder(args, method, variant):
    return os.path.join(os.path.abspath(args.out), f"{variant}_{method}")


def finished(args, method, variant):
    """Whether the run's folder holds a finished run of these epochs and seed (another is an error)."""
    folder = run_folder(args, method, variant)
    if not os.path.exists(os.path.join(folder, "summary.json")):
        return False
    with open(os.path.join(folder, "config.yaml")) as f:
        config = yaml.safe_load(f)
    if (config["hyperparameters"]["epochs"], config["seed"]) != (args.epochs, args.seed):
        raise SystemExit(f"{folder} holds a run of {config['hyperparameters']['epochs']} epochs, seed "
                         f"{config['seed']}: use another --out for {args.epochs} epochs, seed {args.seed}")
    return True


def run_all(args):
    """Runs what has no summary yet, `--jobs` at a time."""
    environment = dict(os.environ)
    if args.threads:
        environment["OMP_NUM_THREADS"] = environment["MKL_NUM_THREADS"] = str(args.threads)
    waiting = [(m, v) for v in args.variants for m in args.methods if not finished(args, m, v)]
    running = {}
    while waiting or running:
        while waiting and len(running) < args.jobs:
            key = waiting.pop(0)
            os.makedirs(run_folder(args, *key), exist_ok=True)
            log = open(os.path.join(run_folder(args, *key), "stdout.log"), "w")
            running[key] = (subprocess.Popen(command(args, *key), cwd=REPO, env=environment, stdout=log,
                                             stderr=subprocess.STDOUT), log, time.time())
            print(f"started {key[1]} {key[0]}", flush=True)
        time.sleep(1)
        for key, (process, log, began) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[key]
            if process.returncode != 0:
                raise SystemExit(f"{key[1]} {key[0]} failed (exit {process.returncode}): see "
                                 f"{os.path.join(run_folder(args, *key), 'stdout.log')}")
            print(f"finished {key[1]} {key[0]} in {(time.time() - began) / 60:.1f} min", flush=True)


def table(args):
    lines = [f"CIFAR-10 with CIFAR-10N labels, {args.epochs} epochs, seed {args.seed}"
             + (f", options `{' '.join(args.extra)}`" if args.extra else "") + ":", "",
             "| labels | method | model | test acc (final / best) | detection precision / recall / F1 | train minutes |",
             "|---|---|---|---|---|---|"]
    for variant in args.variants:
        for method in args.methods:
            folder = run_folder(args, method, variant)
            with open(os.path.join(folder, "summary.json")) as f:
                summary = json.load(f)
            with open(os.path.join(folder, "metrics.csv"), newline="") as f:
                minutes = sum(float(row["seconds"]) for row in csv.DictReader(f)) / 60
            lines.append(f"| {variant} | {method} | {summary['model']} | {summary['test_acc']:.1%} / "
                         f"{summary['best_test_acc']:.1%} | {summary['det_precision']:.3f} / "
                         f"{summary['det_recall']:.3f} / {summary['det_f1']:.3f} | {minutes:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    run_all(args)
    text = table(args)
    write_atomically(os.path.join(args.out, "table.md"), lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
