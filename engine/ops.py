"""Fake (meta) kernels for the torch.ops.noisy custom ops.

The C++ library (engine._C) registers the schemas, the CPU / CUDA kernels and the losses'
autograd. Each loss op returns the per-row loss and, in the same pass, its gradient wrt the
logits; backward only scales that stored gradient by the incoming per-row gradient. So the
losses have no second derivative (double backward raises) and no forward-mode AD
(engine.losses raises).
"""
import torch

import engine._C  # noqa: F401  (registers torch.ops.noisy)

ops = torch.ops.noisy


def api_name(op_name, args):
    """The public function (engine.losses, engine.reference) that calls `op_name` with `args`:
    the name error messages give, as the C++ checks do."""
    if op_name == "nl_forward":
        return "nl_plus_loss" if args[2] else "nl_loss"
    if op_name == "pm_forward":
        return "pm_loss" if args[3] else "ml_loss"
    return {"ce_forward": "weighted_ce", "pl_plus_forward": "pl_plus_loss"}.get(op_name, op_name)


def check_same_device(api, named_tensors):
    """ValueError naming the argument unless the tensors of `named_tensors` ((name, tensor or
    None) pairs) all lie on the first one's device."""
    (ref_name, ref), *others = [(name, t) for name, t in named_tensors if t is not None]
    for name, t in others:
        if t.device != ref.device:
            raise ValueError(f"{api}(): {name} is on {t.device} but {ref_name} is on {ref.device}")


def _check_devices(op_name, args):
    """check_same_device on the tensor arguments of op `op_name`. The C++ kernels check devices,
    but a call with any meta tensor comes to the fake kernel instead, whatever device the other
    tensors are on: unchecked, it returned uninitialized memory (update_history did nothing)."""
    schema = getattr(ops, op_name).default._schema
    tensors = [(arg.name, value) for arg, value in zip(schema.arguments, args) if isinstance(value, torch.Tensor)]
    check_same_device(api_name(op_name, args), tensors)


@torch.library.register_fake("noisy::jnpl_select")
def _jnpl_select_fake(logits, seed, offset, first_row=0):
    rows = logits.shape[:1]
    return logits.new_empty(rows, dtype=torch.bool), logits.new_empty(rows, dtype=torch.int64)


@torch.library.register_fake("noisy::sample_complementary")
def _sample_complementary_fake(labels, num_classes, k, exclude, replacement, seed, offset, first_row=0):
    _check_devices("sample_complementary", (labels, num_classes, k, exclude, replacement, seed, offset, first_row))
    return labels.new_empty((labels.shape[0], k))


@torch.library.register_fake("noisy::normalize_weights")
def _normalize_weights_fake(x, mode, temperature):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("noisy::update_history")
def _update_history_fake(history, indices, logits):
    _check_devices("update_history", (history, indices, logits))
    return None


def _register_loss_fake(name):
    """Fake kernel of a loss op `(logits, ..., compute_grad)` -> (per-row loss, gradient wrt
    logits or an empty placeholder; float32 for float16 logits, csrc/problems.h). Its autograd is
    registered in C++ (csrc/ops.cpp)."""

    @torch.library.register_fake(f"noisy::{name}")
    def fake(logits, *others):
        _check_devices(name, (logits, *others))
        compute_grad = others[-1]
        loss_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        grad_dtype = torch.float32 if logits.dtype == torch.float16 else logits.dtype
        grad = logits.new_empty(logits.shape if compute_grad else (0,), dtype=grad_dtype)
        return logits.new_empty(logits.shape[:1], dtype=loss_dtype), grad


for _name in ("nl_forward", "pm_forward", "ce_forward", "pl_plus_forward"):
    _register_loss_fake(_name)
