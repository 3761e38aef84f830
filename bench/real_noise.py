"""CE and every method on CIFAR-10 with the CIFAR-10N human labels, at a stated budget.

    python bench/real_noise.py --data-dir ../shared/data --epochs 20 --out runs/real_noise

runs `python -m engine.train --dataset cifar10 --noise cifar10n --noise-variant V` for each
method, label set (`worst`: 40.2% wrong, `aggre`: 9.0%) and seed (`--seeds`), `--jobs` runs at a
time with `--threads` threads each, and writes `table.md` (test accuracy, best test accuracy,
the difference to CE's of the same labels and seed, detection precision / recall / F1 against
the true CIFAR-10 labels, wall-clock minutes of the run, a method's preparation such as
PU-distillation's teachers included; with several seeds also their means) into `--out`, next to
each run's own folder. A run whose folder already holds a summary.json of the same epochs, seed
and options is not trained again, and one its checkpoint.pt left unfinished is resumed, so an
interrupted benchmark continues where it stopped, and more seeds add to the same `--out` (a run
of other epochs or options in a run's folder is an error). Each run's folder keeps in
driver.json the options it was run with and its minutes. Options after `--` go to every run (e.g.
`-- --model small_cnn --device cuda`; `-- --model small_cnn_dense --no-augment`: a model that
memorizes the `worst` labels within 20 epochs, the README's "Where CE memorizes" table).
"""
import argparse
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
    resume = ["--resume"] if run_state(args, method, variant, seed) == "unfinished" else []
    return [sys.executable, "-m", "engine.train", "--method", method, "--dataset", "cifar10", "--data-dir",
            args.data_dir, "--noise", "cifar10n", "--noise-variant", variant, "--epochs", str(args.epochs),
            "--seed", str(seed), "--out", run_folder(args, method, variant, seed), *args.extra, *resume]


def run_folder(args, method, variant, seed):
    return os.path.join(os.path.abspath(args.out), f"{variant}_{method}_seed{seed}")


def driver_record(folder):
    """The folder's driver.json: the options after `--` its run was started with and its minutes."""
    path = os.path.join(folder, "driver.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_driver_record(folder, record):
    write_atomically(os.path.join(folder, "driver.json"), lambda f: f.write(json.dumps(record, indent=2).encode()))


def run_state(args, method, variant, seed):
    """"finished" (a summary.json), "unfinished" (a checkpoint.pt without one: resumed) or "new".
    A run of other epochs, seed or options in the folder is an error: its numbers would stand
    under this benchmark's header."""
    folder = run_folder(args, method, variant, seed)
    state = ("finished" if os.path.exists(os.path.join(folder, "summary.json")) else
             "unfinished" if os.path.exists(os.path.join(folder, "checkpoint.pt")) else "new")
    if state == "new":
        return state
    with open(os.path.join(folder, "config.yaml")) as f:
        config = yaml.safe_load(f)
    if (config["hyperparameters"]["epochs"], config["seed"]) != (args.epochs, seed):
        raise SystemExit(f"{folder} holds a run of {config['hyperparameters']['epochs']} epochs, seed "
                         f"{config['seed']}: use another --out for {args.epochs} epochs, seed {seed}")
    record = driver_record(folder)
    if record is None or record["options"] != args.extra:
        given = "no record of its options (driver.json)" if record is None else f"options {record['options']}"
        raise SystemExit(f"{folder} holds a run with {given}: use another --out for options {args.extra}")
    return state


def add_seconds(args, key, began, record):
    """Adds the time since `began` to the run's driver.json (its record)."""
    record["seconds"] += time.time() - began
    write_driver_record(run_folder(args, *key), record)


def run_all(args):
    """Runs what has no summary yet, `--jobs` at a time; on a failure the other runs are stopped
    (their checkpoints let the next call resume them)."""
    environment = dict(os.environ)
    if args.threads:
        environment["OMP_NUM_THREADS"] = environment["MKL_NUM_THREADS"] = str(args.threads)
    waiting = [(m, v, s) for s in args.seeds for v in args.variants for m in args.methods
               if run_state(args, m, v, s) != "finished"]
    running = {}
    try:
        while waiting or running:
            while waiting and len(running) < args.jobs:
                key = waiting.pop(0)
                folder = run_folder(args, *key)
                os.makedirs(folder, exist_ok=True)
                run = command(args, *key)
                record = driver_record(folder) or {"options": args.extra, "seconds": 0.0}
                write_driver_record(folder, record)
                log = open(os.path.join(folder, "stdout.log"), "a")  # a resumed run's log goes on
                running[key] = (subprocess.Popen(run, cwd=REPO, env=environment, stdout=log,
                                                 stderr=subprocess.STDOUT), log, time.time(), record)
                print(f"{'resumed' if '--resume' in run else 'started'} {key[1]} {key[0]} seed {key[2]}", flush=True)
            time.sleep(1)
            for key, (process, log, began, record) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[key]
                add_seconds(args, key, began, record)
                if process.returncode != 0:
                    raise SystemExit(f"{key[1]} {key[0]} seed {key[2]} failed (exit {process.returncode}): see "
                                     f"{os.path.join(run_folder(args, *key), 'stdout.log')}")
                print(f"finished {key[1]} {key[0]} seed {key[2]} in {(time.time() - began) / 60:.1f} min", flush=True)
    finally:
        for key, (process, log, began, record) in running.items():  # a failure or Ctrl-C: no run left behind
            process.terminate()
            process.wait()
            log.close()
            add_seconds(args, key, began, record)


def result(args, method, variant, seed):
    """A finished run's numbers: its summary.json and its minutes (driver.json)."""
    folder = run_folder(args, method, variant, seed)
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    summary["minutes"] = driver_record(folder)["seconds"] / 60
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
             "recall / F1 | minutes |", "|---|---|---|---|---|---|---|---|"]
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
