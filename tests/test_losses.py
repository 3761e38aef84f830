"""Fused losses against the plain-PyTorch reference: values, gradients, dtypes, strides,
reductions, weights, exclusions, extreme logits, gradcheck, opcheck, torch.compile."""
import pytest
import torch

from conftest import FLOAT_DTYPES, tolerances
from engine import losses as L
from engine import reference as R
from engine.ops import ops

LOSS_NAMES = ["nl", "nl_plus", "nl_k3", "pm", "pm_exclude", "ml", "ml_exclude", "ce", "pl_plus"]


def make_case(name, B, C, device, generator):
    """(fused fn, reference fn, extra args) for a loss on random labels of a B x C problem."""
    labels = torch.randint(0, C, (B,), generator=generator).to(device)
    if name.startswith("nl"):
        k = 3 if name == "nl_k3" else 1
        comp = L.sample_complementary(labels, C, k=k, seed=int(torch.randint(0, 1 << 30, (1,), generator=generator)), offset=0)
        plus = name == "nl_plus"
        return (lambda z, **kw: L.nl_loss(z, comp, plus=plus, **kw)), (lambda z, **kw: R.nl_loss(z, comp, plus=plus, **kw))
    if name.startswith(("pm", "ml")):
        exclude = None
        if name.endswith("_exclude"):
            exclude = (torch.rand(B, C, generator=generator) < 0.3).to(device)
        fused, reference = (L.pm_loss, R.pm_loss) if name.startswith("pm") else (L.ml_loss, R.ml_loss)
        return (lambda z, **kw: fused(z, labels, exclude, **kw)), (lambda z, **kw: reference(z, labels, exclude, **kw))
    if name == "ce":
        return (lambda z, **kw: L.weighted_ce(z, labels, **kw)), (lambda z, **kw: R.weighted_ce(z, labels, **kw))
    return (lambda z, **kw: L.pl_plus_loss(z, labels, **kw)), (lambda z, **kw: R.pl_plus_loss(z, labels, **kw))


def value_and_grad(fn, z, **kwargs):
    z = z.detach().requires_grad_(True)
    out = fn(z, **kwargs)
    (grad,) = torch.autograd.grad(out.sum(), z)
    return out.detach(), grad


def assert_matches(fused, reference, z, dtype, **kwargs):
    """Fused on z against the float64 reference on the same values."""
    rtol, atol = tolerances(dtype)
    value, grad = value_and_grad(fused, z, **kwargs)
    ref_value, ref_grad = value_and_grad(reference, z.double(), **kwargs)
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == z.dtype
    torch.testing.assert_close(value.double(), ref_value, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("C,k", [(100, 110), (10, 40), (10, 300), (1000, 999)])
def test_complementary_labels_listed_many_times(C, k, plus, dtype, device):
    """k drawn with replacement (JNPL's 110 on CIFAR-100): a class listed up to dozens of times per
    row; with 16-bit gradients k = 300 takes the per-listing count (loss_row.h, rewrite_listed)."""
    g = torch.Generator().manual_seed(C * k)
    labels = torch.randint(0, C, (64,), generator=g)
    comp = L.sample_complementary(labels, C, k=k, seed=k, offset=0).to(device)
    counts = torch.zeros(64, C).scatter_add_(1, comp.cpu(), torch.ones(comp.shape))
    assert counts.max() >= (2 if C > k else k // C)  # repeats, and the arg-max listed in some rows
    z = (2 * torch.randn(64, C, generator=g)).to(device, dtype)
    assert (counts.gather(1, z.float().argmax(1, keepdim=True).cpu()) > 0).any()
    value, grad = value_and_grad(lambda x: L.nl_loss(x, comp, plus=plus, reduction="none"), z)
    ref_value, ref_grad = value_and_grad(lambda x: R.nl_loss(x, comp, plus=plus, reduction="none"), z.double())
    rtol, atol = tolerances(dtype)
    # Each term of a row's hundreds is rounded at the scale of the row's largest (a gradient up to ~40)
    scale = ref_grad.abs().amax(1, keepdim=True).clamp(min=1)
    torch.testing.assert_close(value.double(), ref_value, rtol=rtol, atol=atol * k)
    torch.testing.assert_close(grad.double() / scale, ref_grad / scale, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("B,C", [(1, 2), (257, 2), (4096, 2), (33, 10), (4096, 10), (128, 100), (16, 1000), (4096, 1000)])
def test_matches_reference_fp32(name, B, C, device):
    g = torch.Generator().manual_seed(B * 1000 + C)
    fused, reference = make_case(name, B, C, device, g)
    z = (3 * torch.randn(B, C, generator=g)).to(device)
    assert_matches(fused, reference, z, torch.float32, reduction="none")


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_dtypes_reductions_and_weights(name, dtype, reduction, device):
    g = torch.Generator().manual_seed(7)
    B, C = 64, 37
    fused, reference = make_case(name, B, C, device, g)
    z = (2 * torch.randn(B, C, generator=g)).to(device, dtype)
    weight = torch.rand(B, generator=g).to(device)
    assert_matches(fused, reference, z, dtype, reduction=reduction)
    assert_matches(fused, reference, z, dtype, reduction=reduction, weight=weight)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_non_contiguous_inputs(name, device):
    g = torch.Generator().manual_seed(3)
    B, C = 48, 20
    base = torch.randn(C, 2 * B, generator=g).to(device)
    z = base.t()[::2]  # strides (2, 2B): neither rows nor columns contiguous
    assert not z.is_contiguous()
    fused, reference = make_case(name, B, C, device, g)
    assert_matches(fused, reference, z, torch.float32, reduction="none")


def test_non_contiguous_labels_and_masks(device):
    g = torch.Generator().manual_seed(4)
    B, C = 40, 12
    z = torch.randn(B, C, generator=g).to(device)
    labels = torch.randint(0, C, (2 * B,), generator=g).to(device)[::2]
    comp = torch.randint(0, C, (3, B), generator=g).to(device).t()
    exclude = (torch.rand(C, B, generator=g) < 0.4).to(device).t()
    assert not (labels.is_contiguous() or comp.is_contiguous() or exclude.is_contiguous())
    assert_matches(lambda x, **k: L.nl_loss(x, comp, **k), lambda x, **k: R.nl_loss(x, comp, **k), z, torch.float32)
    assert_matches(lambda x, **k: L.pm_loss(x, labels, exclude, **k), lambda x, **k: R.pm_loss(x, labels, exclude, **k),
                   z, torch.float32)
    assert_matches(lambda x, **k: L.weighted_ce(x, labels, **k), lambda x, **k: R.weighted_ce(x, labels, **k), z,
                   torch.float32)


@pytest.mark.parametrize("gap", [50.0, 100.0, 1000.0])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_confident_rows_stay_finite_and_accurate(name, gap, device):
    """p_k -> 1: log(1 - p_k) must neither cancel to -inf nor lose its gradient."""
    g = torch.Generator().manual_seed(5)
    B, C = 32, 10
    z = torch.randn(B, C, generator=g)
    z[torch.arange(B), torch.randint(0, C, (B,), generator=g)] += gap
    fused, reference = make_case(name, B, C, device, g)
    z = z.to(device)
    value, grad = value_and_grad(fused, z, reduction="none")
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    # fp64 reference of the same fp32 inputs: the fused fp32 result must be accurate, not just finite.
    ref_value, ref_grad = value_and_grad(reference, z.double(), reduction="none")
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("gap", [50.0, 1000.0])
@pytest.mark.parametrize("plus", [False, True])
def test_complementary_label_on_the_confident_class(plus, gap, dtype, device):
    """NL / NL+ on the class that takes (almost) all the mass: -log(1 - p) is about the gap."""
    g = torch.Generator().manual_seed(12)
    B, C = 32, 10
    z = torch.randn(B, C, generator=g)
    confident = torch.randint(0, C, (B,), generator=g)
    z[torch.arange(B), confident] += gap
    comp = torch.randint(0, C, (B, 2), generator=g)
    comp[: B // 2, 0] = confident[: B // 2]
    z, comp = z.to(device, dtype), comp.to(device)
    fused = lambda x, **k: L.nl_loss(x, comp, plus=plus, **k)  # noqa: E731
    reference = lambda x, **k: R.nl_loss(x, comp, plus=plus, **k)  # noqa: E731
    assert_matches(fused, reference, z, dtype, reduction="none")
    if not plus:  # NL+ weighs the term by 1 - p ~ e^-gap
        assert (fused(z, reduction="none")[: B // 2] > gap - 10).all()


@pytest.mark.parametrize("offset", [1e3, 1e5])
@pytest.mark.parametrize("name", ["ce", "pm", "pl_plus"])
def test_positive_term_is_shift_invariant(name, offset, device):
    """-log p_y of logits near 1e5 equals that of the same logits shifted to 0: it used to be
    LSE(z) - z_y, which rounds at the logits' magnitude (an error of 1e-3 at 1e5)."""
    g = torch.Generator().manual_seed(21)
    fused, _ = make_case(name, 16, 5, device, g)
    z = (torch.randn(16, 5, generator=g) * 8).round().div(8).to(device)  # z + 1e5 is exact in float32
    shifted, plain = value_and_grad(fused, z + offset, reduction="none"), value_and_grad(fused, z, reduction="none")
    torch.testing.assert_close(shifted[0], plain[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(shifted[1], plain[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_float16_gradients_survive_a_loss_scale(name, device):
    """float16 logits under a loss scale (GradScaler): the gradient is stored in float32 and rounded
    to float16 once, after backward's scale, as the float32 reference's would be. Stored in float16,
    entries below 6e-8 became 0 before the scale (e.g. p = 1e-8 of an unlikely class)."""
    g = torch.Generator().manual_seed(22)
    fused, reference = make_case(name, 8, 6, device, g)
    z = torch.randn(8, 6, generator=g) * 3
    z[torch.arange(8), torch.arange(8) % 6] += 20  # confident rows: the other classes get p ~ 1e-9
    z = z.to(device, torch.float16)
    scale = 65536.0
    _, grad = value_and_grad(lambda x, **k: fused(x, **k) * scale, z, reduction="sum")
    _, ref_grad = value_and_grad(lambda x, **k: reference(x, **k) * scale, z.double(), reduction="sum")
    expected = ref_grad.half()
    assert grad.dtype == torch.float16 and ((expected != 0) & (expected.abs() < 1e-3)).any()
    torch.testing.assert_close(grad, expected, rtol=2e-3, atol=0)


def test_log1m_of_the_arg_max_class_is_exact_for_huge_gaps():
    z = torch.tensor([[0.0, 60.0, 1.0]])
    loss = L.nl_loss(z, torch.tensor([[1]]), reduction="none")
    # -log(1 - p_1) = 60 - log(e^0 + e^1) + log1p(e^-60 (1 + e)) to fp32 accuracy
    expected = 60.0 - torch.log(torch.tensor(1.0 + torch.e).double()) + torch.log1p(torch.tensor(1 + torch.e).double() * torch.exp(torch.tensor(-60.0).double()))
    torch.testing.assert_close(loss.double(), expected.reshape(1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("plus", [False, True])
def test_clamp_eps_matches_reference_clamp(plus, device):
    g = torch.Generator().manual_seed(6)
    B, C = 64, 5
    z = torch.randn(B, C, generator=g)
    comp = torch.randint(0, C, (B, 2), generator=g)
    z[torch.arange(B // 2), comp[: B // 2, 0]] += 20.0  # half the rows have 1 - p < 1e-5
    z, comp = z.to(device), comp.to(device)
    fused = lambda x, **k: L.nl_loss(x, comp, plus=plus, clamp_eps=1e-5, **k)  # noqa: E731
    reference = lambda x, **k: R.nl_loss(x, comp, plus=plus, clamp_eps=1e-5, **k)  # noqa: E731
    assert_matches(fused, reference, z, torch.float32, reduction="none")


def test_nl_plus_gradient_is_minus_p_comp_times_p():
    """JNPL, arXiv:2104.06574, eq. 6: dNL+/dz_i = -p_yb p_i for i != yb."""
    z = torch.randn(16, 7, dtype=torch.float64, requires_grad=True)
    comp = torch.randint(0, 7, (16,))
    (grad,) = torch.autograd.grad(L.nl_plus_loss(z, comp, reduction="sum"), z)
    p = torch.softmax(z.detach(), 1)
    expected = -p.gather(1, comp[:, None]) * p
    expected[torch.arange(16), comp] = (p * (1 - p)).gather(1, comp[:, None]).squeeze(1)
    torch.testing.assert_close(grad, expected)


def test_nl_plus_on_every_other_class_is_ce_scaled_by_the_labels_probability():
    """NL+ summed over all C - 1 complementary labels (the short-budget preset's k) has CE's
    gradient times the detached p_y: it learns a sample at p_y times CE's rate, slowly where
    the model is unsure of its label, clean or not (docs/methods.md)."""
    B, C = 16, 7
    z = torch.randn(B, C, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, C, (B,))
    comp = L.sample_complementary(labels, C, k=C - 1, replacement=False, seed=3, offset=0)
    (grad,) = torch.autograd.grad(L.nl_plus_loss(z, comp, reduction="sum"), z)
    p_y = torch.softmax(z.detach(), 1).gather(1, labels[:, None])
    (ce_grad,) = torch.autograd.grad(L.weighted_ce(z, labels, reduction="none"), z, torch.ones(B, dtype=z.dtype))
    torch.testing.assert_close(grad, p_y * ce_grad)


def test_pl_plus_weight_is_the_geometric_sum():
    """With N = 3, prod_{n=0..3}(1 + p^(2^n)) = sum_{k=0..15} p^k."""
    z = torch.randn(32, 5, dtype=torch.float64)
    t = torch.randint(0, 5, (32,))
    p = torch.softmax(z, 1).gather(1, t[:, None]).squeeze(1)
    expected = sum(p**k for k in range(16)) * -torch.log(p)
    torch.testing.assert_close(L.pl_plus_loss(z, t, reduction="none"), expected)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_a_weight_is_detached(name):
    """The module docstring's contract: a weight computed from the logits (JNPL's class-balanced p_y)
    scales each row's gradient and gets none itself, nor passes any back to the logits."""
    g = torch.Generator().manual_seed(8)
    fused, _ = make_case(name, 16, 5, "cpu", g)
    z = torch.randn(16, 5, generator=g, requires_grad=True)
    weight = torch.softmax(2 * z, 1)[:, 0]
    (grad,) = torch.autograd.grad(fused(z, weight=weight), z)
    (expected,) = torch.autograd.grad(fused(z, weight=weight.detach()), z)
    torch.testing.assert_close(grad, expected)
    leaf = weight.detach().requires_grad_()
    assert not fused(z.detach(), weight=leaf).requires_grad


def test_empty_batch_gives_zero_loss_and_zero_grad():
    z = torch.randn(0, 10, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    for loss in (L.nl_loss(z, labels.view(0, 1)), L.pm_loss(z, labels), L.ml_loss(z, labels), L.weighted_ce(z, labels),
                 L.pl_plus_loss(z, labels)):
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, z)
        assert grad.shape == (0, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_a_batch_of_incoming_gradients_backpropagates(name, dtype, device):
    """A first derivative taken for many incoming gradients at once (autograd.grad's
    is_grads_batched, jacobian(vectorize=True): the backward under vmap): each row of the result
    is the vector-Jacobian product of its incoming gradient. The backward's out= product raised
    'Batching rule not implemented for aten::mul.out'."""
    g = torch.Generator().manual_seed(14)
    fused, reference = make_case(name, 5, 7, device, g)
    z = torch.randn(5, 7, generator=g).to(device=device, dtype=dtype)
    incoming = torch.randn(3, 5, generator=g).to(device)
    results = []
    for fn, logits in ((fused, z), (reference, z.double())):
        leaf = logits.detach().requires_grad_(True)
        loss = fn(leaf, reduction="none")
        (grad,) = torch.autograd.grad(loss, leaf, incoming.to(loss.dtype), is_grads_batched=True)
        results.append(grad)
    assert results[0].shape == (3, 5, 7) and results[0].dtype == dtype
    rtol, atol = tolerances(dtype)
    torch.testing.assert_close(results[0].double(), results[1], rtol=rtol, atol=atol)


def test_no_grad_forward_skips_the_gradient_buffer():
    z = torch.randn(8, 4, requires_grad=True)
    with torch.no_grad():
        _, grad = ops.ce_forward(z, torch.zeros(8, dtype=torch.long), torch.is_grad_enabled())
    assert grad.numel() == 0


def test_modules_match_functions():
    z = torch.randn(16, 6)
    y = torch.randint(0, 6, (16,))
    comp = L.sample_complementary(y, 6, k=2, seed=3, offset=0)
    w = torch.rand(16)
    assert torch.equal(L.NLLoss()(z, comp, weight=w), L.nl_loss(z, comp, weight=w))
    assert torch.equal(L.NLPlusLoss(reduction="sum")(z, comp), L.nl_plus_loss(z, comp, reduction="sum"))
    assert torch.equal(L.PLPlusLoss(n=2)(z, y), L.pl_plus_loss(z, y, n=2))
    assert torch.equal(L.PMLoss(reduction="none")(z, y), L.pm_loss(z, y, reduction="none"))
    exclude = torch.rand(16, 6) < 0.3
    assert torch.equal(L.MLLoss()(z, y, exclude, weight=w), L.ml_loss(z, y, exclude, weight=w))
    assert torch.equal(L.WeightedCELoss()(z, y, weight=w), L.weighted_ce(z, y, weight=w))
    with pytest.raises(TypeError):  # F.cross_entropy's third argument is a per-class weight: never taken for this one
        L.weighted_ce(z, y, w)


# NL+ and PL+ detach their weights by definition, so their analytic gradient is not the
# numerical one; they are checked against the reference's autograd above instead.
GRADCHECK_NAMES = ["nl", "nl_k3", "pm", "pm_exclude", "ml", "ml_exclude", "ce"]


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("name", GRADCHECK_NAMES)
def test_gradcheck_fp64(name, reduction, device):
    g = torch.Generator().manual_seed(8)
    fused, _ = make_case(name, 6, 5, device, g)
    z = torch.randn(6, 5, dtype=torch.float64, generator=g).to(device).requires_grad_(True)
    weight = torch.rand(6, dtype=torch.float64, generator=g).to(device)
    assert torch.autograd.gradcheck(lambda x: fused(x, weight=weight, reduction=reduction), (z,))


@pytest.mark.filterwarnings("ignore:Input #0 requires gradient and is not a double")
@pytest.mark.parametrize("name", GRADCHECK_NAMES)
def test_gradcheck_fp32_with_relaxed_tolerance(name, device):
    g = torch.Generator().manual_seed(9)
    fused, _ = make_case(name, 4, 5, device, g)
    z = torch.randn(4, 5, generator=g).to(device).requires_grad_(True)
    weight = torch.rand(4, generator=g).to(device)
    assert torch.autograd.gradcheck(lambda x: fused(x, weight=weight, reduction="sum"), (z,), eps=1e-2, atol=5e-3,
                                    rtol=5e-3)


def opcheck_cases(device):
    g = torch.Generator().manual_seed(10)
    B, C = 12, 7
    z = torch.randn(B, C, generator=g).to(device).requires_grad_(True)
    y = torch.randint(0, C, (B,), generator=g).to(device)
    comp = torch.randint(0, C, (B, 2), generator=g).to(device)
    exclude = (torch.rand(B, C, generator=g) < 0.3).to(device)
    history = torch.zeros(20, C, dtype=torch.bool, device=device)
    indices = torch.randint(0, 20, (B,), generator=g).to(device)
    strided = torch.randn(C, 2 * B, generator=g).to(device).t()[::2].requires_grad_(True)
    return [
        (ops.nl_forward, (z, comp, False, 0.0, True)),
        (ops.nl_forward, (z, comp, True, 1e-5, True)),
        (ops.pm_forward, (z, y, exclude, True, True)),
        (ops.pm_forward, (z, y, None, True, True)),
        (ops.pm_forward, (z, y, exclude, False, True)),
        (ops.ce_forward, (z, y, True)),
        (ops.ce_forward, (z.detach(), y, False)),
        (ops.ce_forward, (z.detach().bfloat16().requires_grad_(True), y, True)),
        (ops.pl_plus_forward, (z, y, 3, True)),
        (ops.pl_plus_forward, (strided, y, 0, True)),
        (ops.jnpl_select, (z.detach(), 1, 2)),
        (ops.jnpl_select, (strided.detach(), 1, 2)),
        (ops.sample_complementary, (y, C, 3, torch.nn.functional.one_hot((y + 1) % C, C).bool(), False, 5, 6)),
        (ops.sample_complementary, (y, C, 4, None, True, 5, 6)),
        (ops.jnpl_select, (z.detach(), 1, 2, 2**32 - B)),
        (ops.sample_complementary, (y, C, 2, exclude & (torch.arange(C, device=device) < 3), True, 5, 6, 1000)),
        (ops.normalize_weights, (torch.rand(B, generator=g).to(device), "min_max", 10.0)),
        (ops.update_history, (history, indices, z.detach())),
    ]


def test_update_history_is_an_in_place_change_autograd_and_inference_mode_see():
    """As history[i, j] = True would be: a graph that saved the old history refuses to backpropagate
    (it gave a silently wrong gradient), and an inference tensor is changed in inference mode only."""
    x, history = torch.randn(2, 3, requires_grad=True), torch.zeros(2, 3, dtype=torch.bool)
    kept = x.masked_fill(history, 0.0)  # saves history for its backward
    L.update_history(history, torch.tensor([0]), torch.tensor([[0.0, 0.0, 1.0]]))
    assert history._version == 1 and history[0].tolist() == [False, False, True]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        kept.sum().backward()
    with torch.inference_mode():
        frozen = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        L.update_history(frozen, torch.tensor([1]), torch.tensor([[0.0, 1.0, 0.0]]))
    with torch.inference_mode():
        L.update_history(frozen, torch.tensor([1]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert frozen.tolist() == [[False, False, False], [False, True, False]]


def test_opcheck_every_op(device):
    checked = set()
    for op, args in opcheck_cases(device):
        torch.library.opcheck(op, args)
        checked.add(op._qualified_op_name)
    registered = {schema.name for schema in torch._C._jit_get_all_schemas() if schema.name.startswith("noisy::")}
    assert checked == registered


def test_torch_compile_fullgraph_matches_eager(device):
    nl_module = L.NLLoss(clamp_eps=1e-5)

    def step(z, labels, exclude, history, indices, seed, step):
        comp = L.sample_complementary(labels, z.shape[1], k=2, exclude=exclude, seed=seed, offset=step)
        keep, yhat = L.jnpl_select(z, seed, step)
        weight = L.normalize_weights(torch.softmax(z.detach(), 1).gather(1, labels[:, None]).squeeze(1), "min_max")
        L.update_history(history, indices, z)
        return (L.nl_plus_loss(z, comp, weight=weight) + nl_module(z, comp) + L.nl_loss(z, comp, reduction="sum")
                + 0.01 * L.pl_plus_loss(z, yhat, weight=keep.float()) + L.pm_loss(z, labels, exclude)
                + L.ml_loss(z, labels) + L.ml_loss(z, labels, exclude, reduction="sum")
                + L.weighted_ce(z, labels, weight=weight))

    compiled = torch.compile(step, fullgraph=True)
    g = torch.Generator().manual_seed(13)
    z = torch.randn(32, 10, generator=g).to(device).requires_grad_(True)
    labels = torch.randint(0, 10, (32,), generator=g).to(device)
    exclude = (torch.rand(32, 10, generator=g) < 0.2).to(device)
    indices = torch.randint(0, 8, (32,), generator=g).to(device)
    eager_history, history = (torch.zeros(8, 10, dtype=torch.bool, device=device) for _ in range(2))
    eager = step(z, labels, exclude, eager_history, indices, 0, 3)
    (eager_grad,) = torch.autograd.grad(eager, z)
    out = compiled(z, labels, exclude, history, indices, 0, 3)
    (grad,) = torch.autograd.grad(out, z)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(grad, eager_grad)
    assert eager_history.any() and torch.equal(history, eager_history)


def test_torch_compile_fullgraph_runs_the_readmes_loop_without_recompiling(device):
    """The README's drop-in loop: PL+ on the rows a mask keeps (a batch of data-dependent size,
    whose backward failed to trace: it allocated the gradient by concrete sizes) and a new
    offset every step (each value compiled the ops again; fullgraph failed at the 8th)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    def step_loss(logits, labels, step):
        comp = L.sample_complementary(labels, num_classes=10, k=1, seed=0, offset=step)
        keep, yhat = L.jnpl_select(logits, seed=1, offset=step, first_row=step)
        return L.nl_plus_loss(logits, comp) + 0.01 * L.pl_plus_loss(logits[keep], yhat[keep])

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step_loss, backend=counter, fullgraph=True)
    g = torch.Generator().manual_seed(3)
    for step in range(10):
        z = (torch.randn(16, 10, generator=g) * 3).to(device)
        labels = torch.randint(0, 10, (16,), generator=g).to(device)
        results = []
        for fn in (compiled, step_loss):
            leaf = z.clone().requires_grad_()
            loss = fn(leaf, labels, step)
            results.append((loss, *torch.autograd.grad(loss, leaf)))
        assert 0 < L.jnpl_select(z, seed=1, offset=step, first_row=step)[0].sum() < 16
        for out, eager in zip(*results):
            torch.testing.assert_close(out, eager)
    assert counter.frame_count <= 2, "the first step, then one graph with the step as a symbol"


def test_the_readmes_drop_in_loop_draws_its_pl_plus_rows_apart_from_its_complementary_labels():
    """The README's drop-in loop as printed, on a batch where every row is a PL+ candidate kept with
    probability 1/2: which rows are kept must not depend on their complementary labels. With one
    (seed, offset) for both calls, jnpl_select's uniform was sample_complementary's draw: a row was
    kept exactly when its complementary label was one of the lower half of the classes."""
    from test_api import readme_block

    B, C = 4000, 10
    z = torch.zeros(B, C)
    z[:, 3] = torch.tensor(9.0).log()  # p = 1/2 on class 3, 1/18 < 1/C on each other class
    z.requires_grad_(True)
    namespace = {"C": C, "model": lambda x: x, "loader": [(z, torch.zeros(B, dtype=torch.long))],
                 "optimizer": torch.optim.SGD([z], lr=0.0)}
    exec(compile(readme_block("## Drop-in losses"), "README.md", "exec"), namespace)
    keep, comp = namespace["keep"], namespace["comp"][:, 0]
    low, high = keep[comp <= 4].float().mean(), keep[comp >= 6].float().mean()
    assert 0.45 < keep.float().mean() < 0.55 and abs(low - high) < 0.1, (low, high)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_nan_logits_give_nan_rows_only(name, bad, device):
    """NaN policy: a NaN or +inf logit (an overflow) makes its row's loss and gradient NaN, as
    torch's softmax does; other rows are untouched. +inf used to give the negative terms p = 1
    exactly: PM and ML returned 0 with a zero gradient, where CE gave NaN."""
    g = torch.Generator().manual_seed(11)
    fused, reference = make_case(name, 4, 6, device, g)
    z = torch.randn(4, 6, generator=g)
    z[1, 2] = bad
    z = z.to(device)
    value, grad = value_and_grad(fused, z, reduction="none")
    assert torch.isnan(value[1]) and torch.isnan(grad[1]).all()
    ref_value, ref_grad = value_and_grad(reference, z.double(), reduction="none")
    rows = [0, 2, 3]
    torch.testing.assert_close(value[rows].double(), ref_value[rows], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad[rows].double(), ref_grad[rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_minus_inf_logits_are_classes_of_probability_zero(name, device):
    """A -inf logit is a class of p = 0, in the fused op and the reference alike: a row whose only
    finite logit is its label has loss 0 and gradient 0 for PM and ML too (the reference gave NaN
    there: -inf * 0 for the label's own log(1 - p) and the logsumexp of an all -inf row)."""
    labels = torch.randint(0, 6, (4,), generator=torch.Generator().manual_seed(5))  # make_case's draw
    fused, reference = make_case(name, 4, 6, device, torch.Generator().manual_seed(5))
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(6))
    z[1, (labels[1] + 1) % 6] = float("-inf")
    z[2] = float("-inf")
    z[2, labels[2]] = 1.5
    value, grad = value_and_grad(fused, z.to(device), reduction="none")
    ref_value, ref_grad = value_and_grad(reference, z.double().to(device), reduction="none")
    assert torch.isfinite(ref_value).all() and torch.isfinite(ref_grad).all()
    assert value[2] == 0 and not grad[2].any()
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("plus", [False, True])
def test_a_negative_on_the_only_possible_class_has_a_finite_gradient(plus, device):
    """Every other logit -inf: p = 1 on a negative class. -log(1 - p) is inf with gradient n_k p = n_k
    on it; NL+'s -(1 - p) log(1 - p) has limit 0 and gradient 0 (0 / 0 and 0 * -inf gave NaN)."""
    inf = float("inf")
    z = torch.full((3, 4), -inf)
    z[:, 2] = 5.0
    comp = torch.tensor([[2, 0], [2, 2], [1, 3]])  # row 2 lists only impossible classes
    value, grad = value_and_grad(lambda x: L.nl_loss(x, comp.to(device), plus=plus, reduction="none"), z.to(device))
    expected = torch.zeros(3, 4)
    expected[0, 2], expected[1, 2] = (0.0, 0.0) if plus else (1.0, 2.0)
    assert value.tolist() == ([0.0, 0.0, 0.0] if plus else [inf, inf, 0.0])
    assert torch.equal(grad.cpu(), expected)
    labels = torch.tensor([0, 2, 1])  # ML: every class but the label is a negative
    value, grad = value_and_grad(lambda x: L.ml_loss(x, labels.to(device), reduction="none"), z.to(device))
    assert value.tolist() == [inf, 0.0, inf]
    assert torch.equal(grad.cpu(), torch.tensor([[0.0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0]]))


def test_cpu_results_do_not_depend_on_the_number_of_threads():
    """The CPU kernels split rows among threads (at::parallel_for, 3,276 rows of 10 classes a
    chunk), each with its own row buffer. The test workers run one thread each (conftest), so
    the split is checked here: 1 and 3 threads give the same bits."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 10, generator=g, dtype=torch.float64).float().requires_grad_()
    y = torch.randint(0, 10, (20_000,), generator=g)
    before, results = torch.get_num_threads(), []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            loss = L.pm_loss(z, y, reduction="none")
            (grad,) = torch.autograd.grad(loss.sum(), z)
            results.append((loss, grad, L.sample_complementary(y, 10, k=3, seed=1, offset=0), *L.jnpl_select(z, 1, 2),
                            L.normalize_weights(loss.detach(), "softmax")))
    finally:
        torch.set_num_threads(before)
    for one, three in zip(*results):
        assert torch.equal(one, three)
