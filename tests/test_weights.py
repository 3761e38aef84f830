"""normalize_weights and update_history against their plain-PyTorch references."""
import pytest
import torch

from conftest import FLOAT_DTYPES
from engine import losses as L
from engine import reference as R

MODES = ["sub_min", "min_max", "max", "rectify_sum", "sigmoid", "softmax"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("size", [1, 7, 50_000])
def test_normalize_matches_reference(mode, dtype, size, device):
    g = torch.Generator().manual_seed(size)
    x = (torch.randn(size, generator=g) * 3).to(device, dtype)
    out = L.normalize_weights(x, mode, temperature=2.5)
    assert out.dtype == dtype and out.shape == x.shape
    expected = R.normalize_weights(x.double(), mode, temperature=2.5)
    rtol, atol = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-6)}.get(dtype, (1e-2, 1e-3))
    torch.testing.assert_close(out.double(), expected, rtol=rtol, atol=atol)


def test_normalize_strided_input_and_no_gradient():
    x = torch.randn(40, requires_grad=True)
    out = L.normalize_weights(x[::2], "min_max")
    assert not out.requires_grad
    torch.testing.assert_close(out, R.normalize_weights(x.detach()[::2], "min_max"))


@pytest.mark.parametrize("mode", ["rectify_sum", "softmax"])
def test_normalize_sums_a_whole_training_set_exactly(mode):
    """A float32 running sum stops growing at 2^24 terms of 1: 2^25 equal weights came out 2^-24
    each (summing to 2). The sums run in double."""
    x = torch.ones(2**25)
    out = L.normalize_weights(x, mode)
    assert torch.equal(out[:3], torch.full((3,), 2.0**-25))
    assert abs(out.double().sum().item() - 1) < 1e-6


def test_normalize_degenerate_vectors():
    const = torch.full((5,), 0.7)
    assert torch.equal(L.normalize_weights(const, "min_max"), torch.ones(5))
    assert torch.equal(L.normalize_weights(-const, "max"), torch.ones(5))
    assert torch.equal(L.normalize_weights(-const, "rectify_sum"), torch.zeros(5))
    assert torch.equal(L.normalize_weights(const, "sub_min"), torch.zeros(5))
    assert L.normalize_weights(torch.empty(0), "softmax").shape == (0,)


def test_a_minus_inf_weight_is_zero_of_the_softmax_wherever_it_stands(device):
    """exp(-inf) = 0, as torch's softmax gives it; a -inf before any finite value (or an x / t that
    overflows to -inf) made every weight NaN."""
    inf = float("inf")
    for x, temperature in (([-inf, 0.0, 1.0], 10.0), ([0.0, -inf, 1.0], 10.0), ([-1e37, 0.0, 1.0], 0.01)):
        x = torch.tensor(x, device=device)
        torch.testing.assert_close(L.normalize_weights(x, "softmax", temperature), torch.softmax(x / temperature, 0))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_a_nan_weight_is_refused_with_its_index(mode, dtype, device):
    """NaN has no place in the min, max or sum that normalize the other weights (the modes gave
    NaN everywhere, NaN in its place only, or 0 there): refused, naming where it stands."""
    x = torch.tensor([0.5, -1.0, 2.0, float("nan"), float("nan")], device=device, dtype=dtype)
    with pytest.raises(ValueError, match=r"normalize_weights\(\): x must not hold NaN, got NaN at index 3 of 5"):
        L.normalize_weights(x, mode)


def test_normalize_mode_properties():
    x = torch.randn(1000, dtype=torch.float64)
    r = L.normalize_weights(x, "rectify_sum")
    assert (r >= 0).all() and abs(r.sum().item() - 1) < 1e-12 and (r[x <= 0] == 0).all()
    s = L.normalize_weights(x, "softmax", temperature=10.0)
    assert abs(s.sum().item() - 1) < 1e-12
    m = L.normalize_weights(x, "min_max")
    assert m.min() == 0 and m.max() == 1


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_update_history_matches_reference(dtype, device):
    g = torch.Generator().manual_seed(2)
    N, B, C = 30, 64, 9
    history = (torch.rand(N, C, generator=g) < 0.2).to(device)
    indices = torch.randint(0, N, (B,), generator=g).to(device)  # with repeats
    logits = torch.randn(B, C, generator=g).to(device, dtype)
    expected = R.update_history(history.clone(), indices, logits.float())
    out = L.update_history(history, indices, logits)
    assert out is history
    assert torch.equal(history, expected)


def test_update_history_non_contiguous_history():
    base = torch.zeros(6, 20, dtype=torch.bool)
    history = base[:, ::2]
    logits = torch.eye(10)[[3, 7]]
    L.update_history(history, torch.tensor([1, 4]), logits)
    assert history[1, 3] and history[4, 7] and history.sum() == 2 and base.sum() == 2
