"""A CE epoch of the engine against a hand-written PyTorch loop doing the same work with the same
model, measured side by side in one process: mnist5k, the small CNN, batch 128, SGD.

    python bench/bench_epoch.py [--epochs 6] [--rounds 3] [--threads 2]

The work of one epoch, in both: a training pass with per-sample random crops (zero padding 3,
the engine's), BatchNorm recalibration (one forward pass over the training set, as the trainer
does after every epoch), a prediction pass over the training set and one over the test set.
The loop holds the images as one uint8 tensor, crops them by indexing and runs the same model
with F.cross_entropy. The engine's epoch is `Trainer.run`'s per-epoch time (metrics.csv's
`seconds`: data loading through DALI, the fused CE op, the method's per-epoch outputs and
detection; not the checkpoint write). The two alternate epoch by epoch (the loop's epoch runs
when the engine logs the end of one of its own), so the machine's drift, which moved the same
epoch from 1.1 s to 1.4 s within an hour, reaches both alike; each pair gives a ratio. The
first epoch of each run (pipeline start-up, warm-up) is left out; every round is a new run of
both.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from engine.models.base import recalibrate_batchnorm  # noqa: E402
from engine.train import parse_args, trainer_for  # noqa: E402
from engine.trainer import EVAL_BATCH  # noqa: E402


class HandWritten:
    """The loop a user would write: the data as tensors, crops by indexing, plain SGD steps."""

    def __init__(self, trainer):
        data, config = trainer.data, trainer.config
        self.model = trainer.make_network()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.batch_size = config.batch_size
        self.mean = torch.tensor(data.mean, dtype=torch.float32)
        self.std = torch.tensor(data.std, dtype=torch.float32)
        x = torch.from_numpy(data.x_train[trainer.train_indices])  # uint8 NHWC
        self.height, self.width = x.shape[1:3]
        self.pad = max(1, self.height // 8)  # the engine's padding (engine/data/pipeline.py, DaliLoader)
        self.padded = F.pad(x, (0, 0, self.pad, self.pad, self.pad, self.pad))
        self.labels = torch.from_numpy(data.given_labels[trainer.train_indices])
        self.train_x = self.normalize(x)
        self.test_x = self.normalize(torch.from_numpy(data.x_test))

    def normalize(self, images):
        """uint8 NHWC images as float NCHW views of NHWC memory (channels_last, as the engine feeds the model)."""
        return ((images.float() - self.mean) / self.std).permute(0, 3, 1, 2)

    def crops(self, index):
        count = len(index)
        top = torch.randint(0, 2 * self.pad + 1, (count, 1))
        left = torch.randint(0, 2 * self.pad + 1, (count, 1))
        rows = (top + torch.arange(self.height))[:, :, None]
        cols = (left + torch.arange(self.width))[:, None, :]
        return self.normalize(self.padded[index[:, None, None], rows, cols])

    def predict(self, x):
        self.model.eval()
        with torch.no_grad():
            return torch.cat([torch.softmax(self.model(x[i:i + EVAL_BATCH]), 1) for i in range(0, len(x), EVAL_BATCH)])

    def epoch(self):
        self.model.train()
        order = torch.randperm(len(self.labels))
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            if len(index) < 2:
                continue
            loss = F.cross_entropy(self.model(self.crops(index)), self.labels[index])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        recalibrate_batchnorm(self.model, (self.train_x[i:i + EVAL_BATCH] for i in range(0, len(self.train_x),
                                                                                          EVAL_BATCH)))
        train_probs = self.predict(self.train_x)
        test_probs = self.predict(self.test_x)
        return train_probs, test_probs

    def timed_epoch(self):
        began = time.time()
        self.epoch()
        return time.time() - began


def paired_epochs(epochs):
    """(engine seconds, hand-written seconds) of each epoch after the first, alternating."""
    with tempfile.TemporaryDirectory() as out:
        run, method, _ = parse_args(["--method", "ce", "--epochs", str(epochs), "--device", "cpu", "--out", out])
        trainer = trainer_for(run, method)
        loop = HandWritten(trainer)
        loop_seconds = []
        engine_log = trainer.log

        def log(line):  # the trainer logs each epoch after timing it: the loop's epoch runs here
            engine_log(line)
            if line.startswith("epoch "):
                loop_seconds.append(loop.timed_epoch())

        trainer.log = log
        trainer.run()
    engine_seconds = [row["seconds"] for row in trainer.metrics]
    return list(zip(engine_seconds, loop_seconds))[1:], trainer


def quartiles(values):
    low, median, high = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return low, median, high


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (DALI keeps its own 2)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: each run's first epoch is left out")
    torch.set_num_threads(args.threads)
    pairs = []
    for round_ in range(args.rounds):
        round_pairs, trainer = paired_epochs(args.epochs)
        pairs += round_pairs
        ratios = [engine / loop for engine, loop in round_pairs]
        print(f"round {round_ + 1}: epoch ratios " + " ".join(f"{ratio:.3f}" for ratio in ratios), flush=True)
    engine, loop = (statistics.median(column) for column in zip(*pairs))
    low, ratio, high = quartiles([engine / loop for engine, loop in pairs])
    print(f"\nmnist5k CE epoch ({len(trainer.train_indices)} training, {len(trainer.data.y_test)} test images, "
          f"{args.threads} torch threads), medians of {len(pairs)} epoch pairs over {args.rounds} rounds:")
    print("| loop | epoch s | ratio to hand-written (quartiles) |\n|---|---|---|")
    print(f"| engine (`python -m engine.train --method ce`) | {engine:.3f} | {ratio:.3f} ({low:.3f}-{high:.3f}) |")
    print(f"| hand-written PyTorch | {loop:.3f} | 1.000 |")


if __name__ == "__main__":
    main()
