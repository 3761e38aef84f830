"""What the ops do with inputs beyond the usual: tensors on mixed devices (meta included),
arguments of the wrong Python type, seeds at the ends of the 64-bit range, very many classes,
and derivatives the fused kernels do not compute (double backward, forward-mode AD)."""
import math

import numpy as np
import pytest
import torch
from torch.autograd import forward_ad

from conftest import tolerances
from engine import losses as L
from engine import reference as R
from engine.ops import ops
from test_cuda_emulation import logits_with_edge_rows, row_loss_pairs

Z = torch.randn(4, 5, dtype=torch.float64)
Y = torch.tensor([0, 1, 2, 3])
COMP = torch.tensor([[1], [2], [3], [4]])
EXCLUDE = torch.eye(4, 5, dtype=torch.bool).roll(2, 1)  # never the label
HISTORY = torch.zeros(9, 5, dtype=torch.bool)

# public function -> (function, its arguments by name); the first tensor is the reference the
# device messages compare with.
CALLS = {
    "nl_loss": (L.nl_loss, dict(logits=Z, comp_labels=COMP)),
    "nl_plus_loss": (L.nl_plus_loss, dict(logits=Z, comp_labels=COMP)),
    "pl_plus_loss": (L.pl_plus_loss, dict(logits=Z, target=Y)),
    "pm_loss": (L.pm_loss, dict(logits=Z, labels=Y, exclude=EXCLUDE)),
    "ml_loss": (L.ml_loss, dict(logits=Z, labels=Y, exclude=EXCLUDE)),
    "weighted_ce": (L.weighted_ce, dict(logits=Z, labels=Y, weight=torch.ones(4, dtype=torch.float64))),
    "sample_complementary": (L.sample_complementary, dict(labels=Y, num_classes=5, exclude=EXCLUDE)),
    "update_history": (L.update_history, dict(history=HISTORY, indices=Y, logits=Z)),
}
LOSSES = ["nl_loss", "nl_plus_loss", "pl_plus_loss", "pm_loss", "ml_loss", "weighted_ce"]
LOSS_OPS = {"nl_loss": "nl_forward", "nl_plus_loss": "nl_forward", "pl_plus_loss": "pl_plus_forward",
            "pm_loss": "pm_forward", "ml_loss": "pm_forward", "weighted_ce": "ce_forward"}


def call(api, **changes):
    fn, kwargs = CALLS[api]
    return fn(**{**kwargs, **changes})


# ---------------------------------------------------------------- devices

DEVICE_CASES = [(api, name) for api, (_, kwargs) in CALLS.items() for name, value in kwargs.items()
                if isinstance(value, torch.Tensor)]


@pytest.mark.parametrize("api,name", DEVICE_CASES, ids=[f"{api}-{name}" for api, name in DEVICE_CASES])
def test_a_tensor_on_another_device_raises_naming_it(api, name):
    """A meta tensor among CPU tensors sends the call to the fake kernel, which used to return
    uninitialized memory (weighted_ce gave values like 1e252; update_history did nothing)."""
    tensors = [n for n, v in CALLS[api][1].items() if isinstance(v, torch.Tensor)]
    first = tensors[0]
    pattern = (rf"{api}\(\): {tensors[1]} is on cpu but {first} is on meta" if name == first
               else rf"{api}\(\): {name} is on meta but {first} is on cpu")
    with pytest.raises(ValueError, match=pattern):
        call(api, **{name: CALLS[api][1][name].to("meta")})


def test_the_ops_themselves_refuse_a_meta_tensor_among_cpu_tensors():
    with pytest.raises(ValueError, match=r"weighted_ce\(\): labels is on meta but logits is on cpu"):
        ops.ce_forward(Z, Y.to("meta"), False)
    with pytest.raises(ValueError, match=r"ml_loss\(\): exclude is on meta but logits is on cpu"):
        ops.pm_forward(Z, Y, EXCLUDE.to("meta"), False, False)


def test_all_tensors_on_meta_still_give_meta_results():
    out = L.pm_loss(Z.to("meta"), Y.to("meta"), EXCLUDE.to("meta"), reduction="none")
    assert out.device.type == "meta" and out.shape == (4,)
    out = L.sample_complementary(Y.to("meta"), 5, k=2, exclude=EXCLUDE.to("meta"))
    assert out.device.type == "meta" and out.shape == (4, 2)


# ---------------------------------------------------------------- argument types

TYPE_CASES = [
    (lambda: L.sample_complementary(Y, 5, k=1.7), r"sample_complementary\(\): k must be an int, got float 1.7"),
    (lambda: L.sample_complementary(Y, 5, k=True), r"sample_complementary\(\): k must be an int, got bool True"),
    (lambda: L.sample_complementary(Y, 5, k="2"), r"sample_complementary\(\): k must be an int, got str '2'"),
    (lambda: L.sample_complementary(Y, 5.0), r"sample_complementary\(\): num_classes must be an int, got float 5.0"),
    (lambda: L.sample_complementary(Y, 5, seed=0.5), r"sample_complementary\(\): seed must be an int, got float"),
    (lambda: L.sample_complementary(Y, 5, offset="3"), r"sample_complementary\(\): offset must be an int, got str"),
    (lambda: L.sample_complementary(Y, 5, replacement="no"), r"sample_complementary\(\): replacement must be a bool"),
    (lambda: L.sample_complementary([0, 1], 5), r"sample_complementary\(\): labels must be a tensor, got list"),
    (lambda: L.sample_complementary(Y, 5, exclude=EXCLUDE.numpy()),
     r"sample_complementary\(\): exclude must be a tensor or None, got ndarray"),
    (lambda: L.jnpl_select(Z, 1.5, 0), r"jnpl_select\(\): seed must be an int, got float 1.5"),
    (lambda: L.jnpl_select(Z, 0, True), r"jnpl_select\(\): offset must be an int, got bool"),
    (lambda: L.jnpl_select(Z.numpy(), 0, 0), r"jnpl_select\(\): logits must be a tensor, got ndarray"),
    (lambda: L.jnpl_select(Z, 0, 0, first_row=1.0), r"jnpl_select\(\): first_row must be an int, got float 1.0"),
    (lambda: L.sample_complementary(Y, 5, first_row=True),
     r"sample_complementary\(\): first_row must be an int, got bool True"),
    (lambda: L.pl_plus_loss(Z, Y, n=1.7), r"pl_plus_loss\(\): n must be an int, got float 1.7"),
    (lambda: L.pl_plus_loss(Z, Y.tolist()), r"pl_plus_loss\(\): target must be a tensor, got list"),
    (lambda: L.weighted_ce(Z, [0, 1, 2, 3]), r"weighted_ce\(\): labels must be a tensor, got list"),
    (lambda: L.weighted_ce(Z.numpy(), Y), r"weighted_ce\(\): logits must be a tensor, got ndarray"),
    (lambda: L.weighted_ce(Z, Y, weight=[1.0] * 4), r"weighted_ce\(\): weight must be a tensor or None, got list"),
    (lambda: L.nl_loss(Z, COMP.tolist()), r"nl_loss\(\): comp_labels must be a tensor, got list"),
    (lambda: L.nl_loss(Z, COMP, plus=1), r"nl_loss\(\): plus must be a bool, got int 1"),
    (lambda: L.nl_loss(Z, COMP, clamp_eps="1e-5"), r"nl_loss\(\): clamp_eps must be a float, got str"),
    (lambda: L.pm_loss(Z, Y.numpy()), r"pm_loss\(\): labels must be a tensor, got ndarray"),
    (lambda: L.ml_loss(Z, Y, exclude=EXCLUDE.tolist()), r"ml_loss\(\): exclude must be a tensor or None, got list"),
    (lambda: L.normalize_weights([1.0, 2.0], "max"), r"normalize_weights\(\): x must be a tensor, got list"),
    (lambda: L.normalize_weights(Z[0], "softmax", temperature="2"),
     r"normalize_weights\(\): temperature must be a float, got str"),
    (lambda: L.update_history(HISTORY.numpy(), Y, Z), r"update_history\(\): history must be a tensor, got ndarray"),
    (lambda: L.update_history(HISTORY, Y.tolist(), Z), r"update_history\(\): indices must be a tensor, got list"),
    (lambda: L.normalize_weights(Z[0], None), r"normalize_weights\(\): mode must be a str, got NoneType"),
    (lambda: L.sample_complementary(Y, 5, k=np.True_), r"sample_complementary\(\): k must be an int, got bool np.True_"),
]


def test_numpy_bools_are_bools():
    """np.bool_ (e.g. from a numpy comparison) was refused as 'plus must be a bool, got bool'."""
    torch.testing.assert_close(L.nl_loss(Z, COMP, plus=np.True_), L.nl_plus_loss(Z, COMP))
    assert L.sample_complementary(Y, 5, k=2, replacement=np.False_).shape == (4, 2)


@pytest.mark.parametrize("call_,pattern", TYPE_CASES, ids=[str(i) for i in range(len(TYPE_CASES))])
def test_an_argument_of_the_wrong_type_raises_naming_it(call_, pattern):
    """int() used to truncate 1.7 to 1 and take True as 1; lists gave an AttributeError."""
    with pytest.raises(TypeError, match=pattern):
        call_()


@pytest.mark.parametrize(
    "call_,pattern",
    [
        (lambda: L.sample_complementary(Y, 5, seed=2**64),
         r"sample_complementary\(\): seed must be in \[-2\*\*63, 2\*\*64\), got 18446744073709551616"),
        (lambda: L.sample_complementary(Y, 5, seed=-(2**63) - 1),
         r"sample_complementary\(\): seed must be in \[-2\*\*63, 2\*\*64\), got -9223372036854775809"),
        (lambda: L.sample_complementary(Y, 5, offset=2**70),
         r"sample_complementary\(\): offset must be in \[-2\*\*63, 2\*\*64\)"),
        (lambda: L.jnpl_select(Z, 0, 2**64), r"jnpl_select\(\): offset must be in \[-2\*\*63, 2\*\*64\)"),
        (lambda: L.sample_complementary(Y, 5, k=2**63),
         r"sample_complementary\(\): k must be in \[-2\*\*63, 2\*\*63\)"),
        (lambda: L.jnpl_select(Z, 0, 0, first_row=2**63), r"jnpl_select\(\): first_row must be in \[-2\*\*63, 2\*\*63\)"),
    ],
)
def test_an_int_beyond_64_bits_raises_naming_it(call_, pattern):
    with pytest.raises(ValueError, match=pattern):
        call_()


def test_seeds_take_signed_and_unsigned_64_bit_ints():
    """The kernels key Philox with the seed's 64 bits: 2**64 - 1 and -1 are the same seed."""
    top = L.sample_complementary(Y, 5, k=3, seed=2**64 - 1, offset=2**63)
    assert torch.equal(top, ops.sample_complementary(Y, 5, 3, None, True, -1, -(2**63)))
    keep, yhat = L.jnpl_select(Z, np.uint64(2**64 - 1), np.int64(7))  # numpy integers are ints too
    assert all(torch.equal(a, b) for a, b in zip((keep, yhat), ops.jnpl_select(Z, -1, 7)))


# ---------------------------------------------------------------- many classes

def row_float32_sums_lose():
    """Two rows of 2^20 logits whose sums a float32 running sum gets wrong: 65 tied maxima first
    (the arg-max and 64 terms of 1, some in every SIMD lane), then 2^20 - 65 terms of 2^-22,
    each below half an ulp of a lane's sum: such a sum dropped all of them (0.25 of 64.25)."""
    C = 2**20
    z = torch.full((2, C), -22 * math.log(2))
    z[:, :65] = 0.0
    return z


@pytest.mark.parametrize("api", LOSSES)
def test_many_classes_sum_accurately(api):
    """weighted_ce(torch.zeros(1, 2**28), [0]) gave log(2^27): each lane of the CPU's float32
    SIMD sum stopped at 2^24. Sums over a row now add float blocks of 1024 columns in double."""
    z = row_float32_sums_lose().requires_grad_(True)
    labels, comp = torch.tensor([0, 70]), torch.tensor([[70], [1]])
    fused, reference = getattr(L, api), getattr(R, api)
    second = comp if api.startswith("nl") else labels
    value = fused(z, second, reduction="none")
    (grad,) = torch.autograd.grad(value.sum(), z)
    z64 = z.detach().double().requires_grad_(True)
    expected = reference(z64, second, reduction="none")
    (expected_grad,) = torch.autograd.grad(expected.sum(), z64)
    rtol, atol = tolerances(torch.float32)
    torch.testing.assert_close(value.double(), expected.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("rows", ["edge", "float32_sums_lose"])
def test_the_cuda_kernels_code_sums_many_classes_as_the_cpu(emulated, rows):
    """The warp's block loops (the CUDA kernels' code, on host threads) over several blocks."""
    if rows == "edge":
        z = logits_with_edge_rows(2 * 1024 + 37, torch.Generator().manual_seed(3)).float()
    else:
        z = row_float32_sums_lose()
    B, C = z.shape
    labels = torch.arange(B) * 70 % C
    comp = L.sample_complementary(labels, C, k=3, seed=C)
    exclude = torch.rand(B, C, generator=torch.Generator().manual_seed(4)) < 0.3
    rtol, atol = tolerances(torch.float32)
    pairs = row_loss_pairs(emulated, z, labels, comp, exclude)
    for name, ((cpu_loss, cpu_grad), (lane_loss, lane_grad)) in pairs.items():
        torch.testing.assert_close(lane_loss, cpu_loss, rtol=rtol, atol=atol, equal_nan=True, msg=name)
        torch.testing.assert_close(lane_grad, cpu_grad, rtol=rtol, atol=atol, equal_nan=True, msg=name)


# ---------------------------------------------------------------- derivatives not computed

def loss_of(api):
    """api's fused loss and its reference as functions of the logits, reduction='sum'."""
    second = COMP if api.startswith("nl") else Y
    fused, reference = getattr(L, api), getattr(R, api)
    return (lambda z: fused(z, second, reduction="sum")), (lambda z: reference(z, second, reduction="sum"))


@pytest.mark.parametrize("api", LOSSES)
def test_double_backward_raises_naming_the_op(api):
    """The op stores only the gradient, a constant to autograd: differentiating the gradient
    again used to give zero second-order terms, silently."""
    fused, _ = loss_of(api)
    pattern = (rf"{api}\(\): double backward \(create_graph=True.*\) is not supported by the fused "
               rf"noisy::{LOSS_OPS[api]}; use engine.reference.{api}")
    z = Z.clone().requires_grad_(True)
    with pytest.raises(NotImplementedError, match=pattern):  # as a gradient penalty's first step
        torch.autograd.grad(fused(z), z, create_graph=True)
    with pytest.raises(NotImplementedError, match=pattern):
        torch.autograd.gradgradcheck(fused, (z,))


@pytest.mark.parametrize("api", LOSSES)
def test_forward_mode_ad_raises_naming_the_op(api):
    """The op passed forward-mode AD by: jvp returned 0 and a dual tensor lost its tangent."""
    fused, _ = loss_of(api)
    pattern = (rf"{api}\(\): forward-mode AD \(torch.func.jvp, torch.autograd.forward_ad\) is not supported by "
               rf"the fused noisy::{LOSS_OPS[api]}; use engine.reference.{api}")
    with pytest.raises(NotImplementedError, match=pattern):
        torch.func.jvp(fused, (Z,), (torch.ones_like(Z),))
    with forward_ad.dual_level(), pytest.raises(NotImplementedError, match=pattern):
        fused(forward_ad.make_dual(Z, torch.ones_like(Z)))


@pytest.mark.parametrize("api", LOSSES)
def test_torch_func_transforms_raise_naming_the_op(api):
    """Under vmap the op ran without storing a gradient and a later backward failed with an
    internal message; torch.func.grad failed with torch's generic one."""
    fused, _ = loss_of(api)
    pattern = (rf"{api}\(\): torch.func transforms \(vmap, grad, vjp, jacrev\) are not supported by the fused "
               rf"noisy::{LOSS_OPS[api]}; use engine.reference.{api}")
    z = Z.clone().requires_grad_(True)
    with pytest.raises(NotImplementedError, match=pattern):
        torch.func.vmap(fused)(z[None].expand(3, *z.shape))
    with pytest.raises(NotImplementedError, match=pattern):
        torch.func.grad(fused)(Z)


# nl_plus_loss and pl_plus_loss detach their weights (as the papers define them): finite
# differences of their gradient see more than autograd's second derivative.
@pytest.mark.parametrize("api", ["nl_loss", "pm_loss", "ml_loss", "weighted_ce"])
def test_the_reference_the_messages_point_to_has_both(api):
    _, reference = loss_of(api)
    z = Z.clone().requires_grad_(True)
    assert torch.autograd.gradgradcheck(reference, (z,))
    _, tangent = torch.func.jvp(reference, (Z,), (torch.ones_like(Z),))
    (grad,) = torch.autograd.grad(reference(z), z)
    torch.testing.assert_close(tangent, grad.sum())
