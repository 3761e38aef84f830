"""Bad inputs raise a clear exception that names the offending argument."""
import pytest
import torch

from engine import losses as L

Z = torch.randn(4, 5)
Y = torch.tensor([0, 1, 2, 3])
COMP = torch.tensor([[1], [2], [3], [4]])


@pytest.mark.parametrize(
    "call,error,pattern",
    [
        (lambda: L.weighted_ce(Z, torch.tensor([0, 1, 2, 5])), ValueError, r"weighted_ce\(\): labels must lie in \[0, 5\)"),
        (lambda: L.pm_loss(Z, torch.tensor([0, -1, 2, 3])), ValueError, r"pm_loss\(\): labels must lie in \[0, 5\)"),
        (lambda: L.nl_loss(Z, torch.tensor([[7], [0], [0], [0]])), ValueError, r"nl_loss\(\): comp_labels must lie"),
        (lambda: L.pl_plus_loss(Z, Y.float()), TypeError, r"pl_plus_loss\(\): target must be int64"),
        (lambda: L.weighted_ce(Z[0], Y), ValueError, r"logits must be 2-D"),
        (lambda: L.weighted_ce(Z, Y[:3]), ValueError, r"labels has 3 rows but logits has 4"),
        (lambda: L.nl_loss(Z, COMP[:2]), ValueError, r"comp_labels has 2 rows but logits has 4"),
        (lambda: L.nl_loss(Z, COMP.view(4, 1, 1)), ValueError, r"comp_labels must be 2-D"),
        (lambda: L.nl_loss(Z, torch.empty(4, 0, dtype=torch.long)), ValueError, r"comp_labels needs at least one column"),
        (lambda: L.weighted_ce(torch.randn(4, 1), torch.zeros(4, dtype=torch.long)), ValueError, r"at least 2 classes"),
        (lambda: L.weighted_ce(Z.long(), Y), TypeError, r"logits must be float32, float64, bfloat16 or float16"),
        (lambda: L.pm_loss(Z, Y, exclude=torch.zeros(4, 5)), TypeError, r"exclude must be bool"),
        (lambda: L.ml_loss(Z, torch.tensor([0, 1, 2, 5])), ValueError, r"ml_loss\(\): labels must lie in \[0, 5\)"),
        (lambda: L.pm_loss(Z, Y, exclude=torch.zeros(4, 4, dtype=torch.bool)), ValueError, r"exclude must have shape \[4, 5\]"),
        (lambda: L.weighted_ce(Z, Y, weight=torch.ones(3)), ValueError, r"weight must be a tensor of shape \(4,\)"),
        (lambda: L.weighted_ce(Z, Y, weight=torch.ones(4, dtype=torch.long)), TypeError, r"weight must be floating"),
        (lambda: L.weighted_ce(Z, Y, reduction="avg"), ValueError, r"reduction must be one of"),
        (lambda: L.nl_loss(Z, COMP, clamp_eps=1.5), ValueError, r"clamp_eps must be in \[0, 1\)"),
        (lambda: L.pl_plus_loss(Z, Y, n=-1), ValueError, r"n must be in \[0, 16\]"),
        (lambda: L.sample_complementary(Y, 1), ValueError, r"num_classes must be >= 2"),
        (lambda: L.sample_complementary(Y, 5, k=0), ValueError, r"k must be >= 1"),
        (lambda: L.sample_complementary(Y, 3), ValueError, r"labels must lie in \[0, 3\)"),
        (lambda: L.sample_complementary(Y, 5, k=5, replacement=False), ValueError, r"k = 5 > num_classes - 1 = 4"),
        (lambda: L.sample_complementary(Y, 5, exclude=torch.ones(4, 5, dtype=torch.bool)), ValueError,
         r"row 0 has 0 allowed classes"),
        (lambda: L.sample_complementary(Y, 5, k=4, replacement=False, exclude=torch.eye(4, 5, dtype=torch.bool).roll(1, 1)),
         ValueError, r"row \d has 3 allowed classes .* but 4 are needed"),
        (lambda: L.sample_complementary(Y.view(2, 2), 5), ValueError, r"labels must be 1-D"),
        (lambda: L.normalize_weights(torch.ones(2, 2), "max"), ValueError, r"x must be 1-D"),
        (lambda: L.normalize_weights(torch.ones(3), "median"), ValueError, r"mode must be one of"),
        (lambda: L.normalize_weights(torch.ones(3), "softmax", temperature=0), ValueError, r"temperature must be > 0"),
        (lambda: L.normalize_weights(torch.ones(3, dtype=torch.long), "max"), TypeError, r"x must be a floating-point"),
        (lambda: L.update_history(torch.zeros(3, 5, dtype=torch.bool), torch.tensor([0, 1, 2, 3]), Z), ValueError,
         r"indices must lie in \[0, 3\)"),
        (lambda: L.update_history(torch.zeros(9, 4, dtype=torch.bool), Y, Z), ValueError, r"history must have shape"),
        (lambda: L.update_history(torch.zeros(9, 5), Y, Z), TypeError, r"history must be bool"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_backward_without_forward_gradient_is_refused():
    from engine.ops import ops

    z = torch.randn(3, 4, requires_grad=True)
    loss, _ = ops.ce_forward(z, torch.zeros(3, dtype=torch.long), False)
    with pytest.raises(RuntimeError, match="compute_grad=False"):
        loss.sum().backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU for a device mix")
def test_device_mix_raises():
    with pytest.raises(ValueError, match=r"labels is on cpu but logits is on cuda"):
        L.weighted_ce(Z.cuda(), Y)
