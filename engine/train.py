"""Command line: train a classifier on noisy labels with one method.

    python -m engine.train --method jnpl --dataset mnist5k --noise symmetric --noise-rate 0.4 \\
        --epochs 30 --seed 0 --out runs/x [--resume] [--device cpu|cuda]
"""
import argparse
import os
import sys

import torch

from engine.data.datasets import DATASETS
from engine.methods import METHODS
from engine.models import MODELS

NOISE_KINDS = ["none", "symmetric", "asymmetric", "file", "cifar10n", "cifar100n"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", default="jnpl", choices=sorted(METHODS), help="training method")
    p.add_argument("--dataset", default="mnist5k", choices=sorted(DATASETS),
                   help="data set: mnist5k and digits are built in; the others read --data-dir")
    p.add_argument("--data-dir", help="folder (or .npz file) of a data set given by the user")
    p.add_argument("--noise", default="symmetric", choices=NOISE_KINDS,
                   help="label noise: synthetic (symmetric, asymmetric), per-sample labels from --noise-file, "
                        "or the human CIFAR-10N / CIFAR-100N labels")
    p.add_argument("--noise-rate", type=float, default=0.4, help="fraction of labels corrupted, in [0, 1)")
    p.add_argument("--noise-variant", default="worst", choices=["aggre", "random1", "random2", "random3", "worst"],
                   help="which CIFAR-10N label set (CIFAR-100N has one)")
    p.add_argument("--noise-file", help=".npy / .pt array of per-sample noisy labels (with --noise file)")
    p.add_argument("--noise-include-true", action="store_true",
                   help="symmetric noise draws from ALL classes (transition-matrix convention) instead of the others")
    p.add_argument("--clean-size", type=int, help="hold out this many samples with true labels (clean subset)")
    p.add_argument("--clean-fraction", type=float, help="hold out this fraction of samples with true labels")
    p.add_argument("--epochs", type=int, help="total epochs over all stages (default: the method's)")
    p.add_argument("--batch-size", type=int, help="default: the method's")
    p.add_argument("--lr", type=float, help="initial learning rate of the first stage (default: the method's)")
    p.add_argument("--weight-decay", type=float, help="default: the method's")
    p.add_argument("--warmup-epochs", type=int, help="CE / unweighted epochs before the method's own regime "
                                                     "(methods that have one; default: the method's)")
    p.add_argument("--model", choices=sorted(MODELS), help="default: small_cnn for small data, else the paper's")
    p.add_argument("--seed", type=int, default=0, help="seeds noise, initialization, shuffling and augmentation")
    p.add_argument("--out", default="runs/latest", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt if it exists")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"],
                   help="where to train")
    for method in sorted(METHODS):
        METHODS[method].add_arguments(p)
    args = p.parse_args(argv)
    if not 0.0 <= args.noise_rate < 1.0:
        p.error(f"--noise-rate must be in [0, 1), got {args.noise_rate}")
    if args.data_dir is not None and not os.path.exists(args.data_dir):
        p.error(f"--data-dir {args.data_dir} does not exist")
    if args.dataset not in ("mnist5k", "digits") and args.data_dir is None:
        p.error(f"--dataset {args.dataset} needs --data-dir")
    if args.noise == "file" and not args.noise_file:
        p.error("--noise file needs --noise-file")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.warmup_epochs is not None and args.warmup_epochs < 0:
        p.error("--warmup-epochs must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def main(argv=None):
    args = parse_args(argv)
    from engine.trainer import Trainer  # after parsing: --help and errors stay fast

    try:
        trainer = Trainer(args)
    except (ValueError, FileNotFoundError) as error:  # a bad configuration: say what, no traceback
        print(f"python -m engine.train: error: {error}", file=sys.stderr)
        return 2
    summary = trainer.run()
    print(f"test_acc {summary['test_acc']:.4f} (best {summary['best_test_acc']:.4f}), "
          f"noise detection precision {summary['det_precision']:.3f} recall {summary['det_recall']:.3f} "
          f"F1 {summary['det_f1']:.3f}")
    print(f"outputs in {os.path.abspath(args.out)}: metrics.csv summary.json label_scores.csv separation.png "
          f"checkpoint.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
