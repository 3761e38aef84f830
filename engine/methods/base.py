"""The interface between the shared trainer and one training method.

A method says only what differs: its stages (each with its own learning-rate schedule),
the module it trains (one network by default; two networks or extra heads for some methods),
its loss for a batch, what it reads from one pass over the training set, its per-epoch update
of per-sample state, and its clean score for label-noise detection. The trainer does everything
else (data, loop, optimizer, evaluation, checkpoints, outputs).
"""
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.losses import weighted_ce


@dataclass
class Stage:
    """A run of epochs with one loss regime and one SGD schedule: lr x0.1 at each milestone,
    or with cosine=True a cosine decay from lr to min_lr over the stage."""

    name: str
    epochs: int
    lr: float
    milestones: tuple = ()      # fractions of the stage's epochs at which lr drops 10x
    reset_optimizer: bool = False
    cosine: bool = False
    min_lr: float = 0.0

    def lr_at(self, epoch_in_stage):
        if self.cosine:
            return self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * epoch_in_stage / self.epochs)) / 2
        drops = sum(epoch_in_stage >= round(m * self.epochs) for m in self.milestones)
        return self.lr * 0.1**drops


@dataclass
class Defaults:
    """A method's hyper-parameters for a data-set size class (paper or small)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    complementary_labels: int | None = 1   # NL methods, per sample and step; None: every other class
    pseudo_lr: float = 0.1          # methods ending with a pseudo-labeling stage
    warmup_epochs: int = 0          # CE epochs before the method's own stages (early learning)
    warmup_lr: float = 0.05
    model: dict = field(default_factory=lambda: {"small": "small_cnn", "paper": "preact_resnet18"})
    options: dict = field(default_factory=dict)  # method-specific hyper-parameters for this size class


@dataclass
class Batch:
    images: torch.Tensor      # normalized [B, C, H, W]
    indices: torch.Tensor     # int64 [B], positions in the training set
    labels: torch.Tensor      # int64 [B], the given (possibly noisy) labels
    step: int                 # global optimizer step: the offset of the samplers' random streams
    second_view: torch.Tensor | None = None  # another augmentation of the same images (Method.second_view)
    clean_images: torch.Tensor | None = None  # a batch of the clean subset (Method.uses_clean_batches)
    clean_labels: torch.Tensor | None = None  # and its true labels


@dataclass
class Preparation:
    """What Method.prepare may use: the clean subset with its true labels, the rest of the
    training set (whose labels it must read from the method's given_labels, if at all),
    new networks, and loaders over training images."""

    clean_indices: np.ndarray     # int64, positions in the training set
    clean_labels: torch.Tensor    # their true labels, on the device
    noisy_indices: np.ndarray     # the noisy training set
    make_network: Callable[[], torch.nn.Module]   # a new classifier on the device
    make_optimizer: Callable      # (parameters, lr) -> SGD with the run's momentum and weight decay
    lr: float                     # the run's learning rate
    # loader(indices, shuffle=False, augment=False, seed=0, epoch=0) -> (images on the device,
    # indices) batches of training images `indices` (None: all, in order)
    loader: Callable
    autocast: Callable            # () -> the run's autocast context
    # over_training_set(network, output) -> float32 output(network, images) for every training
    # image (unaugmented, in order, eval mode, no gradient)
    over_training_set: Callable


def split_epochs(total, fractions):
    """Whole epochs per stage, in proportion to `fractions`, each >= 1, summing to `total`."""
    if total < len(fractions):
        raise ValueError(f"--epochs must be >= {len(fractions)} for this method's {len(fractions)} stages")
    counts = [max(1, int(round(total * f / sum(fractions)))) for f in fractions]
    counts[-1] = total - sum(counts[:-1])
    if counts[-1] < 1:
        counts[-2] += counts[-1] - 1
        counts[-1] = 1
    return counts


def confidence_on_labels(probs, labels):
    return probs.gather(1, labels[:, None]).squeeze(1)


def kl_to_softmax(target_probs, logits, temperature=1.0):
    """KL(target || softmax(logits / T)), the mean over the batch (consistency, distillation)."""
    return torch.nn.functional.kl_div(torch.log_softmax(logits.float() / temperature, 1), target_probs,
                                      reduction="batchmean")


class Method:
    """Plain CE on the given labels; subclasses override what differs.

    "outputs" below is what `predict` returns, concatenated over the whole (unaugmented)
    training set in its order: a dict of tensors whose "probs" [N, C] is the class prediction.
    """

    name = "ce"
    # Defaults per data-set size: "paper" for CIFAR-scale data, "small" for mnist5k / digits.
    DEFAULTS = {
        "paper": Defaults(epochs=120, batch_size=128, lr=0.02),
        "small": Defaults(epochs=30, batch_size=128, lr=0.05),
    }
    second_view = None  # None, "weak" or "strong": a second augmentation in Batch.second_view
    needs_clean_subset = False  # True: the run holds out a clean subset (default size in DEFAULTS options)
    uses_clean_batches = False  # True: each Batch carries an augmented batch of the clean subset
    trains_on_clean_subset = False  # True: the clean subset joins the training batches (true labels)
    grad_clip = None  # max gradient norm of the model's parameters, or None

    @classmethod
    def add_arguments(cls, parser):
        """Adds the method's own command-line options (an argument group)."""

    def __init__(self, args, num_classes, given_labels, device, defaults):
        self.args = args
        self.defaults = defaults
        self.num_classes = num_classes
        self.given_labels = given_labels.to(device)   # [N] the noisy training labels
        self.device = device

    def option(self, name):
        """--<method>-<name> when given on the command line, else the size class's default
        (DEFAULTS[...].options[name])."""
        value = getattr(self.args, f"{self.name}_{name}")
        return self.defaults.options[name] if value is None else value

    def build_model(self, make_network):
        """The module the trainer optimizes; make_network() builds one classifier."""
        return make_network()

    def use_optimizer(self, optimizer):
        """Called with every optimizer the trainer creates (e.g. to emulate its next step)."""

    def param_groups(self):
        """Extra optimizer parameter groups (per-sample parameters, ...). A group with
        "fixed_lr": True keeps its lr; the others follow the stage's schedule."""
        return []

    def stages(self, epochs, lr):
        return [Stage("ce", epochs, lr, milestones=(0.5, 0.75))]

    def prepare(self, ctx):
        """Work before the first epoch of a new run (not of a resumed one: what it computes
        must be in state_dict), with what a Preparation gives."""

    def start_stage(self, stage, outputs):
        """Called before a stage's first epoch with the current training-set outputs, e.g. to
        fix pseudo-labels."""

    def batch_loss(self, model, batch, stage):
        return weighted_ce(model(batch.images), batch.labels)

    @torch.no_grad()
    def predict(self, model, images):
        return {"probs": torch.softmax(model(images).float(), 1)}

    def eval_model(self, model):
        """The module whose predictions are evaluated on the test set (e.g. an EMA copy)."""
        return model

    def end_epoch(self, epoch, stage, outputs):
        """Per-sample state update from the outputs on the whole training set."""

    def clean_scores(self, outputs):
        """(clean_score [N] in [0, 1], lower = more likely mislabeled; flagged_noisy [N] bool)."""
        probs = outputs["probs"]
        score = confidence_on_labels(probs, self.given_labels)
        return score, probs.argmax(1) != self.given_labels

    def summary(self, true_labels):
        """Extra entries for summary.json; true_labels [N] (CPU) only for reporting."""
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass
