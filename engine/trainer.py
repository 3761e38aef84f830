"""The trainer shared by every method: data and label noise, model, SGD schedule per stage,
evaluation, label-noise detection metrics, atomic per-epoch checkpoints with exact resume,
and the run's output files."""
import csv
import dataclasses
import json
import os
import time
from contextlib import nullcontext

import numpy as np
import torch
from tqdm import tqdm

from engine.data.datasets import load_dataset
from engine.data.noise import (CIFAR10_ASYMMETRIC, clean_subset, make_noisy_labels, noise_from_file, pair_flip_map,
                               superclass_ring_map)
from engine.data.pipeline import DaliLoader
from engine.methods import METHODS
from engine.methods.base import Batch, Preparation
from engine.models import build_model

SMALL_DATA = 20_000  # training sets below this size get the methods' "small" defaults
METRIC_FIELDS = ["epoch", "stage", "train_loss", "test_acc", "det_precision", "det_recall", "det_f1", "seconds"]
# Arguments that may differ when --resume continues a run; all the others must match.
NOT_RUN_IDENTITY = ("out", "resume", "device", "data_dir", "noise_file")


def asymmetric_map(dataset):
    if dataset.name == "cifar10":
        return CIFAR10_ASYMMETRIC
    if dataset.fine_to_coarse is not None:
        return superclass_ring_map(dataset.fine_to_coarse)
    return pair_flip_map(dataset.num_classes)


def noisy_labels_for(args, dataset, clean_indices):
    """The given label of every training sample. Synthetic noise corrupts only the samples
    outside the clean subset, so --noise-rate is the noise rate of the set the method trains
    on; per-sample labels (a file, CIFAR-N) are taken as they are. The clean subset keeps its
    true labels."""
    true = dataset.y_train
    if args.noise in ("cifar10n", "cifar100n"):
        from engine.data.cifar_n import load_cifar_n_labels

        given = load_cifar_n_labels(args.noise, args.noise_variant, true)
    elif args.noise == "file":
        given = noise_from_file(args.noise_file, len(true), dataset.num_classes)
    else:
        given = true.copy()
        noisy_set = np.setdiff1d(np.arange(len(true)), clean_indices)
        given[noisy_set] = make_noisy_labels(true[noisy_set], args.noise, args.noise_rate, dataset.num_classes,
                                             args.seed, asym_mapping=asymmetric_map(dataset),
                                             include_true=args.noise_include_true)
    given[clean_indices] = true[clean_indices]
    return given


def detection_metrics(flagged, truly_noisy):
    true_positive = (flagged & truly_noisy).sum()
    precision = true_positive / max(flagged.sum(), 1)
    recall = true_positive / max(truly_noisy.sum(), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)


def save_atomically(obj, path):
    """Write to a temporary file, then rename: a killed run never leaves a torn checkpoint."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.checkpoint_path = os.path.join(self.out, "checkpoint.pt")

        self.data = load_dataset(args.dataset, args.data_dir)
        method_cls = METHODS[args.method]
        size_class = "small" if len(self.data.y_train) < SMALL_DATA else "paper"
        defaults = method_cls.DEFAULTS[size_class]
        if args.warmup_epochs is not None:
            defaults = dataclasses.replace(defaults, warmup_epochs=args.warmup_epochs)
        self.epochs = args.epochs or defaults.epochs
        self.batch_size = args.batch_size or defaults.batch_size
        self.lr = args.lr or defaults.lr
        self.momentum = defaults.momentum
        self.weight_decay = defaults.weight_decay if args.weight_decay is None else args.weight_decay
        self.model_name = args.model or defaults.model[size_class]

        true = self.data.y_train
        self.clean_indices = np.zeros(0, dtype=np.int64)
        clean_size, clean_fraction = args.clean_size, args.clean_fraction
        if method_cls.needs_clean_subset and clean_size is None and clean_fraction is None:
            clean_size, clean_fraction = defaults.options.get("clean_size"), defaults.options.get("clean_fraction")
        if clean_size or clean_fraction:
            self.clean_indices = clean_subset(true, size=clean_size, fraction=clean_fraction, seed=args.seed)
        if method_cls.needs_clean_subset and len(self.clean_indices) == 0:
            raise ValueError(f"--method {args.method} needs a clean subset (--clean-size or --clean-fraction > 0)")
        missing = np.setdiff1d(np.arange(self.data.num_classes), true[self.clean_indices])
        if method_cls.needs_clean_subset and len(missing):
            raise ValueError(f"--method {args.method} needs clean samples of every class; the clean subset of "
                             f"{len(self.clean_indices)} has none of class {missing[0]}: raise --clean-size or "
                             f"--clean-fraction")
        self.train_indices = np.setdiff1d(np.arange(len(true)), self.clean_indices)
        self.true_labels = torch.from_numpy(true)
        self.given_labels = torch.from_numpy(noisy_labels_for(args, self.data, self.clean_indices))

        torch.manual_seed(args.seed)
        height, width, channels = self.data.image_shape
        self.method = method_cls(args, self.data.num_classes, self.given_labels, self.device, defaults)
        # channels_last: faster convolutions on CUDA and on the CPU too (oneDNN: about 1.4x a
        # training step and 2x an evaluation pass of the small CNN).
        self.make_network = lambda: build_model(self.model_name, self.data.num_classes, in_channels=channels,
                                                image_size=height).to(self.device, memory_format=torch.channels_last)
        self.model = self.method.build_model(self.make_network)
        self.stages = self.method.stages(self.epochs, self.lr)

        loader = dict(mean=self.data.mean, std=self.data.std, device=self.device)
        trained = np.arange(len(true)) if method_cls.trains_on_clean_subset else self.train_indices
        self.train_loader = DaliLoader(self.data.x_train, self.batch_size, shuffle=True, augment=True,
                                       flip=self.data.flip, seed=args.seed, indices=trained,
                                       second_view=self.method.second_view, **loader)
        self.clean_loader = None
        if self.method.uses_clean_batches:
            self.clean_loader = DaliLoader(self.data.x_train, min(self.batch_size, len(self.clean_indices)), shuffle=True,
                                           augment=True, flip=self.data.flip, seed=args.seed + 1,
                                           indices=self.clean_indices, drop_last=True, **loader)
        self.train_eval_loader = DaliLoader(self.data.x_train, 512, **loader)
        self.test_loader = DaliLoader(self.data.x_test, 512, **loader)
        self.optimizer = None
        self.step = 0
        self.metrics = []

    # ------------------------------------------------------------------ helpers

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def new_optimizer(self):
        optimizer = torch.optim.SGD([{"params": self.model.parameters()}, *self.method.param_groups()], lr=self.lr,
                                    momentum=self.momentum, weight_decay=self.weight_decay)
        self.method.use_optimizer(optimizer)
        return optimizer

    def preparation(self):
        def loader(indices, shuffle=False, augment=False, seed=0, epoch=0):
            images = DaliLoader(self.data.x_train, self.batch_size if augment else 512, shuffle=shuffle,
                                augment=augment, flip=self.data.flip, seed=seed, indices=indices,
                                mean=self.data.mean, std=self.data.std, device=self.device)
            images.set_epoch(epoch)
            return ((self.to_device(batch), batch_indices) for batch, batch_indices in images)

        def make_optimizer(parameters, lr):
            return torch.optim.SGD(parameters, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)

        def over_training_set(network, output):
            return torch.cat([part.float() for part in self.evaluate(self.train_eval_loader, network, output)])

        return Preparation(self.clean_indices, self.true_labels[self.clean_indices].to(self.device),
                           self.train_indices, self.make_network, make_optimizer, self.lr, loader, self.autocast,
                           over_training_set)

    def clean_batches(self, epoch):
        """Endless augmented batches of the clean subset with their true labels; each pass over
        it is seeded by (epoch, pass), so a resumed run draws the same ones."""
        for round_ in range(1_000_000):
            self.clean_loader.set_epoch(epoch * 1000 + round_)
            for images, indices in self.clean_loader:
                yield self.to_device(images), self.true_labels[indices].to(self.device)

    def to_device(self, images):
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def evaluate(self, loader, network, output):
        """[output(network, images) for each batch of `loader`], in eval mode."""
        network.eval()
        parts = []
        for images, _ in loader:
            with self.autocast():
                parts.append(output(network, self.to_device(images)))
        return parts

    def predict(self, loader, model):
        """The method's outputs over a whole split, in the split's order (a dict of tensors on
        the device; "probs" is the float32 [N, C] class prediction)."""
        parts = self.evaluate(loader, model, self.method.predict)
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def stage_at(self, epoch):
        start = 0
        for stage in self.stages:
            if epoch < start + stage.epochs:
                return stage, epoch - start
            start += stage.epochs
        raise IndexError(epoch)

    # ------------------------------------------------------------------ checkpoints

    def identity(self):
        return {key: value for key, value in vars(self.args).items() if key not in NOT_RUN_IDENTITY}

    def save_checkpoint(self, epoch):
        save_atomically({
            "epoch": epoch, "step": self.step, "identity": self.identity(),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(), "metrics": self.metrics,
        }, self.checkpoint_path)

    def load_checkpoint(self):
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        if state["identity"] != self.identity():
            raise ValueError(f"--resume: {self.checkpoint_path} belongs to a different run: {state['identity']} "
                             f"vs {self.identity()}")
        self.model.load_state_dict(state["model"])
        self.optimizer = self.new_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        self.step, self.metrics = state["step"], state["metrics"]
        return state["epoch"] + 1

    # ------------------------------------------------------------------ loop

    def train_epoch(self, epoch, stage, epoch_in_stage):
        self.model.train()
        for group in self.optimizer.param_groups:
            if not group.get("fixed_lr", False):
                group["lr"] = stage.lr_at(epoch_in_stage)
        self.train_loader.set_epoch(epoch)
        torch.manual_seed(self.args.seed * 100_003 + epoch)  # model-side randomness, per epoch
        total, batches = torch.zeros((), device=self.device), 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.epochs} [{stage.name}]", leave=False, disable=None)
        clean = self.clean_batches(epoch) if self.clean_loader is not None else None
        for images, indices, *second_view in bar:
            indices = indices.to(self.device)
            batch = Batch(self.to_device(images), indices, self.method.given_labels[indices], self.step,
                          self.to_device(second_view[0]) if second_view else None, *(next(clean) if clean else ()))
            with self.autocast():
                loss = self.method.batch_loss(self.model, batch, stage)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.method.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.method.grad_clip)
            self.optimizer.step()
            self.step += 1
            total += loss.detach()
            batches += 1
        return (total / max(batches, 1)).item()

    def run(self):
        start_epoch = 0
        resumed = self.args.resume and os.path.exists(self.checkpoint_path)
        if resumed:
            start_epoch = self.load_checkpoint()
            print(f"resumed from {self.checkpoint_path} after epoch {start_epoch}")
        else:
            self.optimizer = self.new_optimizer()
            self.method.prepare(self.preparation())
            self.save_checkpoint(-1)  # a run killed from here on keeps what prepare computed
        truly_noisy = (self.given_labels != self.true_labels).numpy()
        train_outputs = None
        for epoch in range(start_epoch, self.epochs):
            began = time.time()
            stage, epoch_in_stage = self.stage_at(epoch)
            if epoch_in_stage == 0 and epoch > 0:
                if stage.reset_optimizer:
                    self.optimizer = self.new_optimizer()
                self.method.start_stage(stage, train_outputs if train_outputs is not None else self.predict(
                    self.train_eval_loader, self.model))
            train_loss = self.train_epoch(epoch, stage, epoch_in_stage)
            train_outputs = self.predict(self.train_eval_loader, self.model)
            self.method.end_epoch(epoch, stage, train_outputs)
            test_probs = self.predict(self.test_loader, self.method.eval_model(self.model))["probs"]
            test_acc = (test_probs.argmax(1).cpu() == torch.from_numpy(self.data.y_test)).float()
            _, flagged = self.method.clean_scores(train_outputs)
            precision, recall, f1 = detection_metrics(flagged.cpu().numpy()[self.train_indices],
                                                      truly_noisy[self.train_indices])
            self.metrics.append({"epoch": epoch + 1, "stage": stage.name, "train_loss": train_loss,
                                 "test_acc": test_acc.mean().item(), "det_precision": precision,
                                 "det_recall": recall, "det_f1": f1, "seconds": time.time() - began})
            self.save_checkpoint(epoch)
            row = self.metrics[-1]
            print(f"epoch {epoch + 1}/{self.epochs} [{stage.name}] loss {train_loss:.4f} "
                  f"test_acc {row['test_acc']:.4f} det_f1 {f1:.3f} ({row['seconds']:.1f}s)", flush=True)
        if train_outputs is None:
            train_outputs = self.predict(self.train_eval_loader, self.model)
        return self.write_outputs(train_outputs, truly_noisy)

    # ------------------------------------------------------------------ outputs

    def write_outputs(self, train_outputs, truly_noisy):
        score, flagged = (t.cpu().numpy() for t in self.method.clean_scores(train_outputs))
        suggested = train_outputs["probs"].argmax(1).cpu().numpy()
        given, true = self.given_labels.numpy(), self.true_labels.numpy()
        with open(os.path.join(self.out, "metrics.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(self.metrics)
        with open(os.path.join(self.out, "label_scores.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "given_label", "true_label", "clean_score", "flagged_noisy", "suggested_label"])
            for i in self.train_indices:
                writer.writerow([i, given[i], true[i], f"{score[i]:.6f}", int(flagged[i]), suggested[i]])
        train = self.train_indices
        precision, recall, f1 = detection_metrics(flagged[train], truly_noisy[train])
        test_accs = [row["test_acc"] for row in self.metrics]
        summary = {
            "method": self.args.method, "dataset": self.data.name, "model": self.model_name,
            "epochs": self.epochs, "test_acc": test_accs[-1], "best_test_acc": max(test_accs),
            "det_precision": precision, "det_recall": recall, "det_f1": f1,
            "estimated_noise_rate": float(flagged[train].mean()), "true_noise_rate": float(truly_noisy[train].mean()),
            "clean_subset_size": int(len(self.clean_indices)),
            **self.method.summary(self.true_labels),
            "args": {k: v for k, v in vars(self.args).items()},
        }
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        plot_separation(score[train], truly_noisy[train], os.path.join(self.out, "separation.png"),
                        f"{self.args.method} on {self.data.name}")
        return summary


def plot_separation(score, truly_noisy, path, title):
    """Histogram of clean_score for correctly and wrongly labeled samples (the papers' figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(score[~truly_noisy], bins=bins, alpha=0.6, label=f"clean labels ({(~truly_noisy).sum()})")
    ax.hist(score[truly_noisy], bins=bins, alpha=0.6, label=f"mislabeled ({truly_noisy.sum()})")
    ax.set_xlabel("clean_score (model confidence in the given label)")
    ax.set_ylabel("training samples")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
