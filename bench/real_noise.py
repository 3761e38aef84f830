"""CE and every method on CIFAR-10 with the CIFAR-10N human labels, at a stated budget.

    python bench/real_noise.py --data-dir ../shared/data --epochs 20 --out runs/real_noise

runs `python -m engine.train --dataset cifar10 --noise cifar10n --noise-variant V` for each
method, label set (`worst`: 40.2% wrong, `aggre`: 9.0%) and seed (`--seeds`), `--jobs` runs at a
time with `--threads` threads each, and writes `table.md` (test accuracy, best test accuracy,
the difference to CE's of the same labels and seed, detection precision / recall / F1 against
the true CIFAR-10 labels, training minutes: the sum of the epochs' times in metrics.csv; with
several seeds also their means) into `--out`, next to each run's own folder. A run whose folder
already holds a summary.json of the same epochs and seed is not trained again, so an
interrupted benchmark continues where it stopped, and more seeds add to the same `--out` (a run
of other epochs in a run's folder is an error). Options after `--` go to every run (e.g.
`-- --model small_cnn --device cuda`; `-- --model small_cnn_dense --no-augment`: a model that
memorizes the `worst` labels within 20 epochs, the README's "Where CE memorizes" table).
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
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="a run per seed (default: 0)")
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


def command(args, method, variant, seed):
    return [sys.executable, "-m", "engine.train", "--method", method, "--dataset", "cifar10", "--data-dir",
            args.data_dir, "--noise", "cifar10n", "--noise-variant", variant, "--epochs", str(args.epochs),
            "--seed", str(seed), "--out", run_folder(args, method, variant, seed), *args.extra]


def run_folder(args, method, variant, seed):
    return os.path.join(os.path.abspath(args.out), f"{variant}_{method}_seed{seed}")


def finished(args, method, variant, seed):
    """Whether the run's folder holds a finished run of these epochs and seed (another is an error)."""
    folder = run_folder(args, method, variant, seed)
    if not os.path.exists(os.path.join(folder, "summary.json")):
        return False
    with open(os.path.join(folder, "config.yaml")) as f:
        config = yaml.safe_load(f)
    if (config["hyperparameters"]["epochs"], config["seed"]) != (args.epochs, seed):
        raise SystemExit(f"{folder} holds a run of {config['hyperparameters']['epochs']} epochs, seed "
                         f"{config['seed']}: use another --out for {args.epochs} epochs, seed {seed}")
    return True


def run_all(args):
    """Runs what has no summary yet, `--jobs` at a time."""
    environment = dict(os.environ)
    if args.threads:
        environment["OMP_NUM_THREADS"] = environment["MKL_NUM_THREADS"] = str(args.threads)
    waiting = [(m, v, s) for s in args.seeds for v in args.variants for m in args.methods if not finished(args, m, v, s)]
    running = {}
    while waiting or running:
        while waiting and len(running) < args.jobs:
            key = waiting.pop(0)
            os.makedirs(run_folder(args, *key), exist_ok=True)
            log = open(os.path.join(run_folder(args, *key), "stdout.log"), "w")
            running[key] = (subprocess.Popen(command(args, *key), cwd=REPO, env=environment, stdout=log,
                                             stderr=subprocess.STDOUT), log, time.time())
            print(f"started {key[1]} {key[0]} seed {key[2]}", flush=True)
        time.sleep(1)
        for key, (process, log, began) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[key]
            if process.returncode != 0:
                raise SystemExit(f"{key[1]} {key[0]} seed {key[2]} failed (exit {process.returncode}): see "
                                 f"{os.path.join(run_folder(args, *key), 'stdout.log')}")
            print(f"finished {key[1]} {key[0]} seed {key[2]} in {(time.time() - began) / 60:.1f} min", flush=True)


def result(args, method, variant, seed):
    """A finished run's numbers: its summary.json and the training minutes."""
    folder = run_folder(args, method, variant, seed)
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(folder, "metrics.csv"), newline="") as f:
        summary["minutes"] = sum(float(row["seconds"]) for row in csv.DictReader(f)) / 60
    return summary


def table(args):
    results = {(m, v, s): result(args, m, v, s) for s in args.seeds for v in args.variants for m in args.methods}

    def row(variant, method, seed, runs):
        """One table row: the mean of `runs`, a list of (result, CE's result of its labels and seed or None)."""
        mean = {key: sum(r[key] for r, _ in runs) / len(runs)
                for key in ("test_acc", "best_test_acc", "det_precision", "det_recall", "det_f1", "minutes")}
        versus = ""
        if method != "ce" and runs[0][1] is not None:
            versus = f"{100 * sum(r['test_acc'] - ce['test_acc'] for r, ce in runs) / len(runs):+.1f}"
        return (f"| {variant} | {method} | {seed} | {runs[0][0]['model']} | {mean['test_acc']:.1%} / "
                f"{mean['best_test_acc']:.1%} | {versus} | {mean['det_precision']:.3f} / {mean['det_recall']:.3f} / "
                f"{mean['det_f1']:.3f} | {mean['minutes']:.0f} |")

    lines = [f"CIFAR-10 with CIFAR-10N labels, {args.epochs} epochs"
             + (f", options `{' '.join(args.extra)}`" if args.extra else "") + ":", "",
             "| labels | method | seed | model | test acc (final / best) | vs CE (points) | detection precision / "
             "recall / F1 | train minutes |", "|---|---|---|---|---|---|---|---|"]
    for variant in args.variants:
        for method in args.methods:
            runs = [(results[method, variant, s], results.get(("ce", variant, s))) for s in args.seeds]
            lines += [row(variant, method, s, [run]) for s, run in zip(args.seeds, runs)]
            if len(args.seeds) > 1:
                lines.append(row(variant, method, f"mean of {len(args.seeds)}", runs))
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
