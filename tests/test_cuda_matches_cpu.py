"""With a GPU: the CUDA kernels give the CPU kernels' samples exactly and their losses within 1e-5."""
import pytest
import torch

from conftest import strided_copy
from engine import losses as L

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# (rtol of the gradient, its atol) per dtype: the loss is computed in float32 (float64) on both
# devices, each with its own exp; the gradient is then rounded to the logits' dtype.
GRAD_TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-12), torch.bfloat16: (1e-2, 1e-5),
                   torch.float16: (2e-3, 1e-5)}


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("B,C", [(333, 2), (128, 10), (1024, 100), (256, 1000), (64, 5000)])
def test_losses_and_gradients_match(B, C, layout):
    g = torch.Generator().manual_seed(C)
    z = 4 * torch.randn(B, C, generator=g)

    def logits_on(device, dtype):
        return z.to(device, dtype) if layout == "contiguous" else strided_copy(z.to(dtype), device)

    y = torch.randint(0, C, (B,), generator=g)
    exclude = torch.rand(B, C, generator=g) < 0.2
    comp = L.sample_complementary(y, C, k=3, seed=1, offset=0)
    w = torch.rand(B, generator=g)
    calls = [
        lambda z, d: L.nl_loss(z, comp.to(d), weight=w.to(d), reduction="none"),
        lambda z, d: L.nl_plus_loss(z, comp.to(d), reduction="sum"),
        lambda z, d: L.pm_loss(z, y.to(d), exclude.to(d), reduction="none"),
        lambda z, d: L.ml_loss(z, y.to(d), exclude.to(d), reduction="none"),
        lambda z, d: L.weighted_ce(z, y.to(d), weight=w.to(d)),
        lambda z, d: L.pl_plus_loss(z, y.to(d), reduction="none"),
    ]
    loss_tolerance = {torch.float64: 1e-10}
    for dtype, (grad_rtol, grad_atol) in GRAD_TOLERANCES.items():
        for call in calls:
            results = []
            for d in ("cpu", "cuda"):
                x = logits_on(d, dtype).requires_grad_(True)
                out = call(x, d)
                (grad,) = torch.autograd.grad(out.sum(), x)
                results.append((out.detach().cpu(), grad.double().cpu()))
            (cpu_out, cpu_grad), (cuda_out, cuda_grad) = results
            tol = loss_tolerance.get(dtype, 1e-5)
            torch.testing.assert_close(cuda_out, cpu_out, rtol=tol, atol=tol)
            torch.testing.assert_close(cuda_grad, cpu_grad, rtol=grad_rtol, atol=grad_atol)


def test_samples_are_identical():
    y = torch.randint(0, 100, (5000,))
    exclude = torch.rand(5000, 100) < 0.3
    for kwargs in (dict(k=1), dict(k=110), dict(k=5, exclude=exclude), dict(k=20, replacement=False, exclude=exclude)):
        kw_cuda = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        cpu = L.sample_complementary(y, 100, seed=3, offset=9, **kwargs)
        cuda = L.sample_complementary(y.cuda(), 100, seed=3, offset=9, **kw_cuda)
        assert torch.equal(cpu, cuda.cpu())


def test_jnpl_select_normalize_and_history_match():
    z = 3 * torch.randn(4000, 10)
    keep_cpu, yhat_cpu = L.jnpl_select(z, 5, 6)
    keep_cuda, yhat_cuda = L.jnpl_select(z.cuda(), 5, 6)
    assert torch.equal(yhat_cpu, yhat_cuda.cpu())
    # p_yhat is computed with each device's expf, so a draw within an ulp of it may differ.
    assert (keep_cpu != keep_cuda.cpu()).sum() <= 2
    x = torch.randn(100_000)
    for mode in ("sub_min", "min_max", "max", "rectify_sum", "sigmoid", "softmax"):
        torch.testing.assert_close(L.normalize_weights(x.cuda(), mode).cpu(), L.normalize_weights(x, mode))
    idx = torch.randint(0, 500, (4000,))
    h_cpu = L.update_history(torch.zeros(500, 10, dtype=torch.bool), idx, z)
    h_cuda = L.update_history(torch.zeros(500, 10, dtype=torch.bool, device="cuda"), idx.cuda(), z.cuda())
    assert torch.equal(h_cpu, h_cuda.cpu())
