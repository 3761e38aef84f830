"""Forward + backward of each fused loss against its plain-PyTorch reference, eager and
torch.compile'd, at several batch x class sizes.

    pytest bench/ --benchmark-only --benchmark-group-by=param:size,param:loss

The 65536x1000 size runs on CUDA only. Compare rows of one group (same loss, size, device).
test_copy times a device-to-device copy of the logits, the bandwidth the fused ops are held
to; `python bench/report.py results.json` prints the table with both.
"""
import pytest
import torch

from engine import losses as L
from engine import reference as R

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = ["128x10", "1024x100", "4096x100", "65536x1000"]
LOSSES = ["nl", "nl_plus", "nl_plus_k110", "pm", "ce", "pl_plus"]
IMPLS = ["fused", "eager", "compiled"]


def loss_functions(module):
    return {
        "nl": lambda z, b: module.nl_loss(z, b["comp"]),
        "nl_plus": lambda z, b: module.nl_loss(z, b["comp"], plus=True),
        "nl_plus_k110": lambda z, b: module.nl_loss(z, b["comp110"], plus=True),  # JNPL on CIFAR-100
        "pm": lambda z, b: module.pm_loss(z, b["labels"], b["exclude"]),
        "ce": lambda z, b: module.weighted_ce(z, b["labels"], weight=b["weight"]),
        "pl_plus": lambda z, b: module.pl_plus_loss(z, b["labels"]),
    }


FUSED = loss_functions(L)
REFERENCE = loss_functions(R)
_compiled = {}


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def batch_size_and_classes(size):
    B, C = map(int, size.split("x"))
    if B * C > 4096 * 100 and DEVICE != "cuda":
        pytest.skip("GPU-only size")
    return B, C


def logits_and_batch(B, C, dtype):
    """Random logits (requiring grad) of a B x C batch and the side inputs of every loss."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C, (B,), generator=g)
    batch = {
        "labels": labels.to(DEVICE),
        "comp": L.sample_complementary(labels, C, seed=1, offset=0).to(DEVICE),
        "comp110": L.sample_complementary(labels, C, k=110, seed=2, offset=0).to(DEVICE),  # with replacement: repeats
        "exclude": (torch.rand(B, C, generator=g) < 0.1).to(DEVICE),
        "weight": torch.rand(B, generator=g).to(DEVICE),
    }
    z = torch.randn(B, C, generator=g).to(DEVICE, getattr(torch, dtype)).requires_grad_(True)
    return z, batch


@pytest.mark.parametrize("size", SIZES)
def test_copy(benchmark, size):
    B, C = batch_size_and_classes(size)
    source = torch.randn(B, C, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    target = torch.empty_like(source)

    def copy():
        target.copy_(source)
        sync()

    copy()
    benchmark.extra_info.update(size=size, impl="copy", device=DEVICE, dtype="float32")
    benchmark.pedantic(copy, rounds=30, iterations=5, warmup_rounds=2)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", ["float32"] + (["bfloat16"] if DEVICE == "cuda" else []))
def test_forward_backward(benchmark, loss, size, impl, dtype):
    z, batch = logits_and_batch(*batch_size_and_classes(size), dtype)
    if impl == "fused":
        fn = FUSED[loss]
    elif impl == "eager":
        fn = REFERENCE[loss]
    else:
        fn = _compiled.setdefault(loss, torch.compile(REFERENCE[loss], dynamic=False))

    def step():
        z.grad = None
        fn(z, batch).backward()
        sync()

    step()  # warm-up (compiles the compiled variant)
    benchmark.extra_info.update(loss=loss, size=size, impl=impl, device=DEVICE, dtype=dtype)
    benchmark.pedantic(step, rounds=30, iterations=5, warmup_rounds=2)
