"""Shared helpers of the per-method tests (test_<method>.py): a method built and bound the way
the trainer does it, Steps of its stages, and stand-ins for networks on hand-made logits."""
import torch
from torch import nn

from engine.methods.base import Step

N, C = 12, 5


def make_method(cls, warmup=2, labels=None, num_classes=C, seed=0, **options):
    """`cls` with a short schedule (10 epochs, batch 4, lr 0.1, `warmup` warm-up epochs; None:
    the Config has no warm-up field) and `options`, configured for small data and bound to
    `labels` (default: sample i has label i mod num_classes) on the CPU."""
    base = {"epochs": 10, "batch_size": 4, "lr": 0.1}
    if warmup is not None:
        base["warmup_epochs"] = warmup
    method = cls(**{**base, **options})
    config = method.configure("small", num_classes)
    labels = torch.arange(N) % num_classes if labels is None else labels
    method.bind(config, labels, num_classes, seed=seed, device="cpu")
    return method


def stage_at(method, epoch):
    """(stage, epoch_in_stage) of `epoch` in method.stages(), as the trainer finds them."""
    start = 0
    for stage in method.stages():
        if epoch < start + stage.epochs:
            return stage, epoch - start
        start += stage.epochs
    raise IndexError(epoch)


def step_at(method, epoch, step=0, optimizer=None):
    """The Step of global optimizer step `step` in epoch `epoch` (0-based) of `method`'s schedule."""
    stage, epoch_in_stage = stage_at(method, epoch)
    return Step(epoch, stage, epoch_in_stage, step, optimizer=optimizer)


def first_epoch_of(method, kind):
    """The first epoch of the (first) stage of kind `kind`."""
    start = 0
    for stage in method.stages():
        if stage.kind is kind:
            return start
        start += stage.epochs
    raise KeyError(kind)


class FixedLogits(nn.Module):
    """Stands in for a network: returns stored logits for the images' sample indices."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, images):
        return self.logits[images.long()[:, 0, 0, 0]] + self.anchor


def index_images(indices):
    """Images that carry their sample index (what FixedLogits reads)."""
    return indices.float().view(-1, 1, 1, 1)


def random_probs(*shape, seed=0):
    return torch.softmax(3 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), -1)


def assert_same_state(first, second):
    """Two state_dicts with the same keys and equal tensors (NaN equal to NaN)."""
    assert first.keys() == second.keys()
    for key, value in first.items():
        torch.testing.assert_close(value, second[key], rtol=0, atol=0, equal_nan=True, msg=key)


def preset_method(cls, size, num_classes, num_samples=N, **options):
    """`cls` with its `size` preset for `num_classes` classes (and `options`), bound to labels
    i mod num_classes."""
    method = cls(**options)
    method.bind(method.configure(size, num_classes), torch.arange(num_samples) % num_classes, num_classes, seed=0,
                device="cpu")
    return method


def probs_with_confidence(labels, confidence, num_classes):
    """Probabilities [N, C] whose mass on labels[i] is confidence[i], spread evenly over the rest."""
    confidence = torch.as_tensor(confidence, dtype=torch.float32)
    probs = ((1 - confidence) / (num_classes - 1))[:, None].repeat(1, num_classes)
    probs[torch.arange(len(labels)), labels] = confidence
    return probs


def class_weight(labels):
    """The NLNL code's class weights of `labels`: max_n / n_c (the most frequent class weighs 1)."""
    counts = torch.bincount(labels, minlength=C).float()
    return counts.max() / counts
