"""The interface between the shared trainer and one training method.

A method says only what differs: its stages (each with its own learning-rate schedule),
its loss for a batch, its per-epoch update of per-sample state, and its clean score for
label-noise detection. The trainer does everything else (data, loop, optimizer, evaluation,
checkpoints, outputs).
"""
from dataclasses import dataclass, field

import torch

from engine.losses import weighted_ce


@dataclass
class Stage:
    """A run of epochs with one loss regime and one SGD schedule (lr x0.1 at each milestone)."""

    name: str
    epochs: int
    lr: float
    milestones: tuple = ()      # fractions of the stage's epochs at which lr drops 10x
    reset_optimizer: bool = False


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


@dataclass
class Batch:
    images: torch.Tensor      # normalized [B, C, H, W]
    indices: torch.Tensor     # int64 [B], positions in the training set
    labels: torch.Tensor      # int64 [B], the given (possibly noisy) labels
    step: int                 # global optimizer step: the offset of the samplers' random streams


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


class Method:
    """Plain CE on the given labels; subclasses override what differs."""

    name = "ce"
    # Defaults per data-set size: "paper" for CIFAR-scale data, "small" for mnist5k / digits.
    DEFAULTS = {
        "paper": Defaults(epochs=120, batch_size=128, lr=0.02),
        "small": Defaults(epochs=30, batch_size=128, lr=0.05),
    }

    def __init__(self, args, num_classes, given_labels, device, defaults):
        self.args = args
        self.defaults = defaults
        self.num_classes = num_classes
        self.given_labels = given_labels.to(device)   # [N] the noisy training labels
        self.device = device

    def stages(self, epochs, lr):
        return [Stage("ce", epochs, lr, milestones=(0.5, 0.75))]

    def start_stage(self, stage, train_probs):
        """Called before a stage's first epoch with the model's current softmax on the
        (unaugmented) training set, e.g. to fix pseudo-labels."""

    def batch_loss(self, model, batch, stage):
        return weighted_ce(model(batch.images), batch.labels)

    def end_epoch(self, epoch, stage, train_probs):
        """Per-sample state update from the model's softmax on the whole training set."""

    def clean_scores(self, train_probs):
        """(clean_score [N] in [0, 1], lower = more likely mislabeled; flagged_noisy [N] bool)."""
        score = confidence_on_labels(train_probs, self.given_labels)
        return score, train_probs.argmax(1) != self.given_labels

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass
