"""Fake (meta) kernels and autograd for the torch.ops.noisy custom ops.

The C++ library (engine._C) registers the schemas and the CPU / CUDA kernels. Each loss
op returns the per-row loss and, in the same pass, its gradient wrt the logits; backward
only scales that stored gradient by the incoming per-row gradient. So the losses have no
second derivative (double backward raises) and no forward-mode AD (engine.losses raises).
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


def _register_loss_op(name, num_other_inputs):
    """Fake kernel and autograd of a loss op `(logits, <num_other_inputs>..., compute_grad)`
    -> (per-row loss, gradient wrt logits or an empty placeholder)."""

    def fake(logits, *others):
        _check_devices(name, (logits, *others))
        compute_grad = others[-1]
        loss_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        grad = logits.new_empty(logits.shape) if compute_grad else logits.new_empty((0,))
        return logits.new_empty(logits.shape[:1], dtype=loss_dtype), grad

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])
        # The stored gradient never receives one: without this, autograd would fill a zero
        # tensor of its size for backward's second argument on every call.
        ctx.set_materialize_grads(False)
        ctx.api = api_name(name, inputs)

    def backward(ctx, grad_loss, _grad_of_grad):
        if torch.is_grad_enabled():
            # create_graph=True: the gradient is to be differentiated again. The op stores
            # the gradient only, a constant to autograd: the second derivative would silently
            # come out as zero.
            raise NotImplementedError(
                f"{ctx.api}(): double backward (create_graph=True: gradgradcheck, gradient penalties, "
                f"meta-gradients) is not supported by the fused noisy::{name}; use engine.reference.{ctx.api}")
        (grad,) = ctx.saved_tensors
        if grad_loss is None:  # only the (non-differentiable) gradient output was used
            return (None,) * (1 + num_other_inputs)
        if grad.dim() != 2:  # an empty placeholder: the forward ran with compute_grad=False
            raise RuntimeError(f"noisy::{name} was called with compute_grad=False, so it cannot backpropagate")
        # Computed in the promoted dtype and rounded once on the store into out: the same values
        # as (grad * grad_loss).to(grad.dtype), without a float32 [B, C] copy for bf16 / fp16.
        scaled = torch.mul(grad, grad_loss.unsqueeze(1), out=torch.empty_like(grad))
        return (scaled,) + (None,) * num_other_inputs

    torch.library.register_fake(f"noisy::{name}")(fake)
    torch.library.register_autograd(f"noisy::{name}", backward, setup_context=setup_context)


# The number of inputs after `logits` of each loss op (they get no gradient).
_register_loss_op("nl_forward", 4)
_register_loss_op("pm_forward", 4)
_register_loss_op("ce_forward", 2)
_register_loss_op("pl_plus_forward", 3)
