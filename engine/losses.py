"""Fused noise-robust losses: functions and torch.nn modules.

Every loss takes logits [B, C] (float32/float64/bfloat16/float16, any strides; computed in
float32, float64 for float64 input) and returns a float32 (float64) loss. An optional
per-sample `weight` [B] is detached. reduction: "none" -> [B]; "sum"; "mean" -> sum(w_i l_i) / B,
which is 0 (not NaN) for an empty batch. Formulas: ../shared/METHODS.md and engine.reference.
"""
import torch

from engine.ops import ops

REDUCTIONS = ("none", "mean", "sum")


def _needs_grad(logits):
    return logits.requires_grad and torch.is_grad_enabled()


def _reduce(api, per_sample, weight, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{api}(): reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or weight.shape != per_sample.shape:
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(f"{api}(): weight must be a tensor of shape {tuple(per_sample.shape)}, got {shape}")
        if not weight.is_floating_point():
            raise TypeError(f"{api}(): weight must be floating point, got {weight.dtype}")
        if weight.device != per_sample.device:
            raise ValueError(f"{api}(): weight is on {weight.device} but logits are on {per_sample.device}")
        per_sample = per_sample * weight.detach().to(per_sample.dtype)
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    return total if reduction == "sum" else total / max(per_sample.shape[0], 1)


def nl_loss(logits, comp_labels, weight=None, plus=False, reduction="mean", clamp_eps=None):
    """Negative learning: sum over the k complementary labels of -a_k log(1 - p_k).

    comp_labels: int64 [B, k] (or [B] for k = 1). a_k = 1 (NL) or the detached 1 - p_k
    (NL+, plus=True). clamp_eps: use log(max(1 - p, eps)) as the NLNL code does (default:
    exact, computed without cancellation).
    """
    if isinstance(comp_labels, torch.Tensor) and comp_labels.dim() == 1:
        comp_labels = comp_labels.unsqueeze(1)
    per_sample, _ = ops.nl_forward(logits, comp_labels, plus, 0.0 if clamp_eps is None else float(clamp_eps),
                                   _needs_grad(logits))
    return _reduce("nl_plus_loss" if plus else "nl_loss", per_sample, weight, reduction)


def nl_plus_loss(logits, comp_labels, weight=None, reduction="mean", clamp_eps=None):
    """NL+ (jnpl.txt eq. 5): nl_loss with plus=True."""
    return nl_loss(logits, comp_labels, weight=weight, plus=True, reduction=reduction, clamp_eps=clamp_eps)


def pl_plus_loss(logits, target, n=3, weight=None, reduction="mean"):
    """PL+ (jnpl.txt eq. 7): -prod_{i=0..n} (1 + p_t^(2^i)) log p_t, the product detached.

    Pass only the selected rows (see jnpl_select); the mean is over the rows passed.
    """
    per_sample, _ = ops.pl_plus_forward(logits, target, int(n), _needs_grad(logits))
    return _reduce("pl_plus_loss", per_sample, weight, reduction)


def pm_loss(logits, labels, exclude=None, weight=None, reduction="mean"):
    """PM (pmnar.txt eq. 7): -log p_y - sum over k != y, not exclude[i, k] of log(1 - p_k).

    exclude: optional bool [B, C], e.g. PMNAR's "ever predicted" history rows.
    """
    per_sample, _ = ops.pm_forward(logits, labels, exclude, True, _needs_grad(logits))
    return _reduce("pm_loss", per_sample, weight, reduction)


def ml_loss(logits, labels, exclude=None, weight=None, reduction="mean"):
    """Multi-negative learning (pmnar.txt eq. 6), PM without its -log p_y term:
    -sum over k != y, not exclude[i, k] of log(1 - p_k). BLDR's negative head uses it with
    the corrected label excluded."""
    per_sample, _ = ops.pm_forward(logits, labels, exclude, False, _needs_grad(logits))
    return _reduce("ml_loss", per_sample, weight, reduction)


def weighted_ce(logits, labels, weight=None, reduction="mean"):
    """Cross-entropy -log p_y with an optional per-sample weight."""
    per_sample, _ = ops.ce_forward(logits, labels, _needs_grad(logits))
    return _reduce("weighted_ce", per_sample, weight, reduction)


def jnpl_select(logits, seed, offset):
    """PL+ selection (jnpl.txt Alg. 1) -> (mask bool [B], yhat int64 [B]).

    yhat = arg-max; a row is a candidate when every other class has p < 1/C, and a
    candidate is kept with probability p_yhat, drawn from Philox(seed, offset, row).
    """
    return ops.jnpl_select(logits.detach(), int(seed), int(offset))


def sample_complementary(labels, num_classes, k=1, exclude=None, replacement=True, seed=0, offset=0):
    """k labels per row [B, k], uniform over the classes that are not the label and not excluded.

    exclude: optional bool [B, num_classes]. Without replacement the k labels are distinct
    (k <= allowed classes). Draws come from Philox(seed, offset, row): the same on CPU and
    CUDA; use a new offset (e.g. the step number) for new draws.
    """
    return ops.sample_complementary(labels, int(num_classes), int(k), exclude, bool(replacement), int(seed),
                                    int(offset))


def normalize_weights(x, mode, temperature=10.0):
    """Normalize a 1-D weight vector; modes: sub_min, min_max, max, rectify_sum, sigmoid, softmax.

    See csrc/include/noisy/normalize.h for each formula and its degenerate case
    (e.g. min_max of a constant vector is all ones). temperature is used by softmax only.
    The result carries no gradient.
    """
    return ops.normalize_weights(x.detach(), mode, float(temperature))


def update_history(history, indices, logits):
    """In place: history[indices[i], argmax(logits[i])] = True (PMNAR's "ever predicted" set)."""
    ops.update_history(history, indices, logits.detach())
    return history


class _Loss(torch.nn.Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__}(): reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class NLLoss(_Loss):
    """nl_loss as a module: forward(logits, comp_labels, weight=None)."""

    plus = False

    def __init__(self, reduction="mean", clamp_eps=None):
        super().__init__(reduction)
        self.clamp_eps = clamp_eps

    def forward(self, logits, comp_labels, weight=None):
        return nl_loss(logits, comp_labels, weight, self.plus, self.reduction, self.clamp_eps)


class NLPlusLoss(NLLoss):
    """NL+ as a module: forward(logits, comp_labels, weight=None)."""

    plus = True


class PLPlusLoss(_Loss):
    """pl_plus_loss as a module: forward(logits, target, weight=None)."""

    def __init__(self, n=3, reduction="mean"):
        super().__init__(reduction)
        self.n = n

    def forward(self, logits, target, weight=None):
        return pl_plus_loss(logits, target, self.n, weight, self.reduction)


class MLLoss(_Loss):
    """ml_loss as a module: forward(logits, labels, exclude=None, weight=None)."""

    def forward(self, logits, labels, exclude=None, weight=None):
        return ml_loss(logits, labels, exclude, weight, self.reduction)


class PMLoss(_Loss):
    """pm_loss as a module: forward(logits, labels, exclude=None, weight=None)."""

    def forward(self, logits, labels, exclude=None, weight=None):
        return pm_loss(logits, labels, exclude, weight, self.reduction)


class WeightedCELoss(_Loss):
    """weighted_ce as a module: forward(logits, labels, weight=None)."""

    def forward(self, logits, labels, weight=None):
        return weighted_ce(logits, labels, weight, self.reduction)
