"""Fused noise-robust losses: functions and torch.nn modules.

Every loss takes logits [B, C] (float32/float64/bfloat16/float16, any strides; computed in
float32, float64 for float64 input) and returns a float32 (float64) loss. An optional
per-sample `weight` [B] is detached. reduction: "none" -> [B]; "sum"; "mean" -> sum(w_i l_i) / B,
which is 0 (not NaN) for an empty batch. Formulas: each function's docstring, the papers
(docs/methods.md) and engine.reference. The fused losses have first derivatives only: double
backward, forward-mode AD and torch.func transforms raise (the plain-PyTorch engine.reference
functions support them all).
"""
import numbers

import numpy as np
import torch
from torch.autograd import forward_ad

from engine.ops import check_same_device, ops

REDUCTIONS = ("none", "mean", "sum")

# What each kind of argument accepts. Ints refuse bool and float (int() would turn True into 1
# and 1.7 into 1); torch.SymInt / SymFloat are what torch.compile traces a Python number as.
_KINDS = {
    "tensor": (torch.Tensor,),
    "int": (numbers.Integral, torch.SymInt),
    "bool": (bool, np.bool_),
    "float": (numbers.Real, torch.SymFloat, torch.SymInt),
    "str": (str,),
}


def _arg(api, name, value, kind, optional=False, bits=False):
    """`value`, checked: a TypeError naming the argument unless it is of `kind` (a key of _KINDS)
    or, if `optional`, None. An int must fit the op's int64; with `bits` (seeds and offsets,
    whose 64 bits key Philox) it may also be an unsigned 64-bit int, passed on as the int64 of
    the same bits."""
    if value is None and optional:
        return value
    if not isinstance(value, _KINDS[kind]) or (kind != "bool" and isinstance(value, (bool, np.bool_))):
        raise TypeError(f"{api}(): {name} must be {'an int' if kind == 'int' else 'a ' + kind}"
                        f"{' or None' if optional else ''}, got {type(value).__name__} {value!r:.40}")
    if kind == "bool":
        return bool(value)  # numpy's bool_: to the Python bool the op takes
    if kind == "int":
        if not isinstance(value, torch.SymInt):  # a traced int stays symbolic
            value = int(value)  # numpy integers: to the Python int the op takes
        high, text = (2**64, "[-2**63, 2**64)") if bits else (2**63, "[-2**63, 2**63)")
        if not -(2**63) <= value < high:
            raise ValueError(f"{api}(): {name} must be in {text}, got {value}")
        return value - 2**64 if value >= 2**63 else value
    return value


def _per_sample(api, op, logits, *args):
    """The per-row loss of the loss op `op(logits, *args, compute_grad)`."""
    _arg(api, "logits", logits, "tensor")
    # Forward-mode AD passes the op by (no tangent comes out): refuse it rather than return 0.
    if forward_ad.unpack_dual(logits).tangent is not None:
        raise NotImplementedError(f"{api}(): forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) is not "
                                  f"supported by the fused {op._qualified_op_name}; use engine.reference.{api}")
    # Under vmap the batched logits report requires_grad=False (the op then stores no gradient
    # and a later backward fails); torch.func.grad / vjp cannot see through the C++ autograd.
    # (torch.compile traces plain tensors, and cannot trace this check.)
    if not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(logits):
        raise NotImplementedError(f"{api}(): torch.func transforms (vmap, grad, vjp, jacrev) are not supported by "
                                  f"the fused {op._qualified_op_name}; use engine.reference.{api}")
    per_sample, _ = op(logits, *args, logits.requires_grad and torch.is_grad_enabled())
    return per_sample


def _reduce(api, per_sample, weight, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{api}(): reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if _arg(api, "weight", weight, "tensor", optional=True) is not None:
        if weight.shape != per_sample.shape:
            raise ValueError(f"{api}(): weight must be a tensor of shape {tuple(per_sample.shape)}, "
                             f"got {tuple(weight.shape)}")
        if not weight.is_floating_point():
            raise TypeError(f"{api}(): weight must be floating point, got {weight.dtype}")
        check_same_device(api, [("logits", per_sample), ("weight", weight)])
        per_sample = per_sample * weight.detach().to(per_sample.dtype)
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    return total if reduction == "sum" else total / max(per_sample.shape[0], 1)


def nl_loss(logits, comp_labels, *, weight=None, plus=False, reduction="mean", clamp_eps=None):
    """Negative learning: sum over the k complementary labels of -a_k log(1 - p_k).

    comp_labels: int64 [B, k] (or [B] for k = 1). a_k = 1 (NL) or the detached 1 - p_k
    (NL+, plus=True). clamp_eps: use log(max(1 - p, eps)) as the NLNL code does (default:
    exact, computed without cancellation).
    """
    plus = _arg("nl_loss", "plus", plus, "bool")
    api = "nl_plus_loss" if plus else "nl_loss"
    if _arg(api, "comp_labels", comp_labels, "tensor").dim() == 1:
        comp_labels = comp_labels.unsqueeze(1)
    clamp_eps = 0.0 if clamp_eps is None else _arg(api, "clamp_eps", clamp_eps, "float")
    per_sample = _per_sample(api, ops.nl_forward, logits, comp_labels, plus, clamp_eps)
    return _reduce(api, per_sample, weight, reduction)


def nl_plus_loss(logits, comp_labels, *, weight=None, reduction="mean", clamp_eps=None):
    """NL+ (JNPL, arXiv:2104.06574, eq. 5): nl_loss with plus=True."""
    return nl_loss(logits, comp_labels, weight=weight, plus=True, reduction=reduction, clamp_eps=clamp_eps)


def pl_plus_loss(logits, target, *, n=3, weight=None, reduction="mean"):
    """PL+ (JNPL, arXiv:2104.06574, eq. 7): -prod_{i=0..n} (1 + p_t^(2^i)) log p_t, the product detached.

    Pass only the selected rows (see jnpl_select); the mean is over the rows passed.
    """
    api = "pl_plus_loss"
    per_sample = _per_sample(api, ops.pl_plus_forward, logits, _arg(api, "target", target, "tensor"),
                             _arg(api, "n", n, "int"))
    return _reduce(api, per_sample, weight, reduction)


def pm_loss(logits, labels, exclude=None, *, weight=None, reduction="mean"):
    """PM (PMNAR, eq. 7): -log p_y - sum over k != y, not exclude[i, k] of log(1 - p_k).

    exclude: optional bool [B, C], e.g. PMNAR's "ever predicted" history rows.
    """
    return _multi_negative("pm_loss", logits, labels, exclude, True, weight, reduction)


def ml_loss(logits, labels, exclude=None, *, weight=None, reduction="mean"):
    """Multi-negative learning (PMNAR, eq. 6), PM without its -log p_y term:
    -sum over k != y, not exclude[i, k] of log(1 - p_k). BLDR's negative head uses it with
    the corrected label excluded."""
    return _multi_negative("ml_loss", logits, labels, exclude, False, weight, reduction)


def _multi_negative(api, logits, labels, exclude, positive, weight, reduction):
    per_sample = _per_sample(api, ops.pm_forward, logits, _arg(api, "labels", labels, "tensor"),
                             _arg(api, "exclude", exclude, "tensor", optional=True), positive)
    return _reduce(api, per_sample, weight, reduction)


def weighted_ce(logits, labels, *, weight=None, reduction="mean"):
    """Cross-entropy -log p_y with an optional per-sample weight [B] (keyword-only: not
    F.cross_entropy's per-class weight; for one, pass weight=class_weight[labels])."""
    api = "weighted_ce"
    per_sample = _per_sample(api, ops.ce_forward, logits, _arg(api, "labels", labels, "tensor"))
    return _reduce(api, per_sample, weight, reduction)


def jnpl_select(logits, seed, offset, first_row=0):
    """PL+ selection (JNPL, arXiv:2104.06574, Alg. 1) -> (mask bool [B], yhat int64 [B]).

    yhat = arg-max; a row is a candidate when every other class has p < 1/C, and a
    candidate is kept with probability p_yhat, drawn from Philox(seed, offset, first_row + row).
    first_row: a shard of a batch passes its first row's position in the global batch, so that
    its rows draw what they draw in the whole batch. sample_complementary reads the same streams:
    give it another seed (or offset), or its labels and these draws are the same numbers.
    """
    api = "jnpl_select"
    return ops.jnpl_select(_arg(api, "logits", logits, "tensor").detach(), _arg(api, "seed", seed, "int", bits=True),
                           _arg(api, "offset", offset, "int", bits=True), _arg(api, "first_row", first_row, "int"))


def sample_complementary(labels, num_classes, k=1, exclude=None, replacement=True, seed=0, offset=None, first_row=0):
    """k labels per row [B, k], uniform over the classes that are not the label and not excluded.

    exclude: optional bool [B, num_classes]. Without replacement the k labels are distinct
    (k <= allowed classes). Draws come from Philox(seed, offset, first_row + row): the same on
    CPU and CUDA. offset None draws one from torch's default generator (new labels each call,
    repeated by torch.manual_seed; under torch.compile a graph break); a loop that resumes exactly
    passes its own, e.g. the step number, and another seed than jnpl_select's (the same streams).
    first_row: as in jnpl_select (a shard of a batch passes its first row's position in the global
    batch).
    """
    api = "sample_complementary"
    if offset is None:  # a fixed default drew the same labels at every step of a loop that forgot it
        offset = int(torch.randint(0, 1 << 62, ()))
    return ops.sample_complementary(
        _arg(api, "labels", labels, "tensor"), _arg(api, "num_classes", num_classes, "int"), _arg(api, "k", k, "int"),
        _arg(api, "exclude", exclude, "tensor", optional=True), _arg(api, "replacement", replacement, "bool"),
        _arg(api, "seed", seed, "int", bits=True), _arg(api, "offset", offset, "int", bits=True),
        _arg(api, "first_row", first_row, "int"))


def normalize_weights(x, mode, temperature=10.0):
    """Normalize a 1-D weight vector; modes: sub_min, min_max, max, rectify_sum, sigmoid, softmax.

    See csrc/include/noisy/normalize.h for each formula and its degenerate case
    (e.g. min_max of a constant vector is all ones). temperature is used by softmax only.
    The result carries no gradient.
    """
    api = "normalize_weights"
    return ops.normalize_weights(_arg(api, "x", x, "tensor").detach(), _arg(api, "mode", mode, "str"),
                                 _arg(api, "temperature", temperature, "float"))


def update_history(history, indices, logits):
    """In place: history[indices[i], argmax(logits[i])] = True (PMNAR's "ever predicted" set)."""
    api = "update_history"
    ops.update_history(_arg(api, "history", history, "tensor"), _arg(api, "indices", indices, "tensor"),
                       _arg(api, "logits", logits, "tensor").detach())
    return history


# One row of logits and a label: the modules run their options through the op once when built,
# so a bad option fails at construction rather than at the first forward.
_PROBE = (torch.zeros(1, 2), torch.ones(1, 1, dtype=torch.long))


class _Loss(torch.nn.Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__}(): reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class NLLoss(_Loss):
    """nl_loss as a module: forward(logits, comp_labels, *, weight=None)."""

    plus = False

    def __init__(self, reduction="mean", clamp_eps=None):
        super().__init__(reduction)
        nl_loss(*_PROBE, clamp_eps=clamp_eps)  # the op's own argument checks, at construction
        self.clamp_eps = clamp_eps

    def extra_repr(self):
        return f"{super().extra_repr()}, clamp_eps={self.clamp_eps!r}"

    def forward(self, logits, comp_labels, *, weight=None):
        return nl_loss(logits, comp_labels, weight=weight, plus=self.plus, reduction=self.reduction,
                       clamp_eps=self.clamp_eps)


class NLPlusLoss(NLLoss):
    """NL+ as a module: forward(logits, comp_labels, *, weight=None)."""

    plus = True


class PLPlusLoss(_Loss):
    """pl_plus_loss as a module: forward(logits, target, *, weight=None)."""

    def __init__(self, n=3, reduction="mean"):
        super().__init__(reduction)
        pl_plus_loss(_PROBE[0], _PROBE[1][:, 0], n=n)  # the op's own argument checks, at construction
        self.n = n

    def extra_repr(self):
        return f"{super().extra_repr()}, n={self.n!r}"

    def forward(self, logits, target, *, weight=None):
        return pl_plus_loss(logits, target, n=self.n, weight=weight, reduction=self.reduction)


class MLLoss(_Loss):
    """ml_loss as a module: forward(logits, labels, exclude=None, *, weight=None)."""

    def forward(self, logits, labels, exclude=None, *, weight=None):
        return ml_loss(logits, labels, exclude, weight=weight, reduction=self.reduction)


class PMLoss(_Loss):
    """pm_loss as a module: forward(logits, labels, exclude=None, *, weight=None)."""

    def forward(self, logits, labels, exclude=None, *, weight=None):
        return pm_loss(logits, labels, exclude, weight=weight, reduction=self.reduction)


class WeightedCELoss(_Loss):
    """weighted_ce as a module: forward(logits, labels, *, weight=None)."""

    def forward(self, logits, labels, *, weight=None):
        return weighted_ce(logits, labels, weight=weight, reduction=self.reduction)
