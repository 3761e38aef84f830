"""Bad inputs raise a clear exception that names the offending argument."""
import pytest
import torch

from engine import losses as L

Z = torch.randn(4, 5)
Y = torch.tensor([0, 1, 2, 3])
COMP = torch.tensor([[1], [2], [3], [4]])
Z1 = torch.randn(4, 1)


@pytest.mark.parametrize(
    "call,error,pattern",
    [
        (lambda: L.weighted_ce(Z, torch.tensor([0, 1, 2, 5])), ValueError, r"weighted_ce\(\): labels must lie in \[0, 5\)"),
        (lambda: L.pm_loss(Z, torch.tensor([0, -1, 2, 3])), ValueError, r"pm_loss\(\): labels must lie in \[0, 5\)"),
        (lambda: L.nl_loss(Z, torch.tensor([[7], [0], [0], [0]])), ValueError, r"nl_loss\(\): comp_labels must lie"),
        (lambda: L.pl_plus_loss(Z, Y.float()), TypeError, r"pl_plus_loss\(\): target must be int64"),
        (lambda: L.weighted_ce(Z[0], Y), ValueError, r"weighted_ce\(\): logits must be 2-D"),
        (lambda: L.weighted_ce(Z, Y[:3]), ValueError, r"weighted_ce\(\): labels has 3 rows but logits has 4"),
        (lambda: L.nl_loss(Z, COMP[:2]), ValueError, r"nl_loss\(\): comp_labels has 2 rows but logits has 4"),
        (lambda: L.nl_loss(Z, COMP.view(4, 1, 1)), ValueError, r"nl_loss\(\): comp_labels must be 2-D"),
        (lambda: L.nl_loss(Z, torch.empty(4, 0, dtype=torch.long)), ValueError, r"nl_loss\(\): comp_labels needs at least one column"),
        (lambda: L.weighted_ce(torch.randn(4, 1), torch.zeros(4, dtype=torch.long)), ValueError, r"weighted_ce\(\): logits needs at least 2 classes"),
        (lambda: L.weighted_ce(Z.long(), Y), TypeError, r"weighted_ce\(\): logits must be float32, float64, bfloat16 or float16"),
        (lambda: L.pm_loss(Z, Y, exclude=torch.zeros(4, 5)), TypeError, r"pm_loss\(\): exclude must be bool"),
        (lambda: L.ml_loss(Z, torch.tensor([0, 1, 2, 5])), ValueError, r"ml_loss\(\): labels must lie in \[0, 5\)"),
        (lambda: L.pm_loss(Z, Y, exclude=torch.zeros(4, 4, dtype=torch.bool)), ValueError, r"pm_loss\(\): exclude must have shape \[4, 5\]"),
        (lambda: L.weighted_ce(Z, Y, weight=torch.ones(3)), ValueError, r"weighted_ce\(\): weight must be a tensor of shape \(4,\)"),
        (lambda: L.weighted_ce(Z, Y, weight=torch.ones(4, dtype=torch.long)), TypeError, r"weighted_ce\(\): weight must be floating"),
        (lambda: L.weighted_ce(Z, Y, reduction="avg"), ValueError, r"weighted_ce\(\): reduction must be one of"),
        (lambda: L.nl_loss(Z, COMP, clamp_eps=1.5), ValueError, r"nl_loss\(\): clamp_eps must be in \[0, 1\)"),
        (lambda: L.pl_plus_loss(Z, Y, n=-1), ValueError, r"pl_plus_loss\(\): n must be in \[0, 16\]"),
        (lambda: L.sample_complementary(Y, 1), ValueError, r"sample_complementary\(\): num_classes must be >= 2"),
        (lambda: L.sample_complementary(Y, 5, k=0), ValueError, r"sample_complementary\(\): k must be >= 1"),
        (lambda: L.sample_complementary(Y, 3), ValueError, r"sample_complementary\(\): labels must lie in \[0, 3\)"),
        (lambda: L.sample_complementary(Y, 5, k=5, replacement=False), ValueError, r"sample_complementary\(\): k = 5 > num_classes - 1 = 4"),
        (lambda: L.sample_complementary(Y, 5, exclude=torch.ones(4, 5, dtype=torch.bool)), ValueError,
         r"sample_complementary\(\): row 0 has 0 allowed classes"),
        (lambda: L.sample_complementary(Y, 5, k=4, replacement=False, exclude=torch.eye(4, 5, dtype=torch.bool).roll(1, 1)),
         ValueError, r"sample_complementary\(\): row \d has 3 allowed classes .* but 4 are needed"),
        (lambda: L.sample_complementary(Y.view(2, 2), 5), ValueError, r"sample_complementary\(\): labels must be 1-D"),
        (lambda: L.normalize_weights(torch.ones(2, 2), "max"), ValueError, r"normalize_weights\(\): x must be 1-D"),
        (lambda: L.normalize_weights(torch.ones(3), "median"), ValueError, r"normalize_weights\(\): mode must be one of"),
        (lambda: L.normalize_weights(torch.ones(3), "softmax", temperature=0), ValueError, r"normalize_weights\(\): temperature must be > 0"),
        (lambda: L.normalize_weights(torch.ones(3, dtype=torch.long), "max"), TypeError, r"normalize_weights\(\): x must be a floating-point"),
        (lambda: L.update_history(torch.zeros(3, 5, dtype=torch.bool), torch.tensor([0, 1, 2, 3]), Z), ValueError,
         r"update_history\(\): indices must lie in \[0, 3\)"),
        (lambda: L.update_history(torch.zeros(9, 4, dtype=torch.bool), Y, Z), ValueError, r"update_history\(\): history must have shape"),
        (lambda: L.update_history(torch.zeros(9, 5), Y, Z), TypeError, r"update_history\(\): history must be bool"),
        (lambda: L.update_history(torch.zeros(1, 5, dtype=torch.bool).expand(9, 5), Y, Z), ValueError,
         r"update_history\(\): history has rows that share memory \(e.g. an expanded tensor\)"),
        (lambda: L.pl_plus_loss(Z, torch.tensor([0, 1, 2, 5])), ValueError, r"pl_plus_loss\(\): target must lie in \[0, 5\)"),
        (lambda: L.nl_plus_loss(Z, torch.tensor([[-1], [0], [0], [0]])), ValueError,
         r"nl_plus_loss\(\): comp_labels must lie in \[0, 5\), got values in \[-1, 0\]"),
        (lambda: L.weighted_ce(Z, Y.int()), TypeError, r"weighted_ce\(\): labels must be int64, got Int"),
        (lambda: L.pm_loss(Z, Y.int()), TypeError, r"pm_loss\(\): labels must be int64, got Int"),
        (lambda: L.nl_loss(Z, COMP.int()), TypeError, r"nl_loss\(\): comp_labels must be int64, got Int"),
        (lambda: L.update_history(torch.zeros(9, 5, dtype=torch.bool), Y.int(), Z), TypeError,
         r"update_history\(\): indices must be int64, got Int"),
        (lambda: L.pm_loss(Z, Y.view(4, 1)), ValueError, r"pm_loss\(\): labels must be 1-D"),
        (lambda: L.ml_loss(Z, Y[:3]), ValueError, r"ml_loss\(\): labels has 3 rows but logits has 4"),
        (lambda: L.pl_plus_loss(Z, Y[:3]), ValueError, r"pl_plus_loss\(\): target has 3 rows but logits has 4"),
        (lambda: L.update_history(torch.zeros(9, 5, dtype=torch.bool), Y[:3], Z), ValueError,
         r"update_history\(\): indices has 3 rows but logits has 4"),
        (lambda: L.nl_loss(Z1, COMP.clamp(max=0)), ValueError, r"nl_loss\(\): logits needs at least 2 classes, got 1"),
        (lambda: L.pl_plus_loss(Z1, Y.clamp(max=0)), ValueError, r"pl_plus_loss\(\): logits needs at least 2 classes"),
        (lambda: L.jnpl_select(Z1, 0, 0), ValueError, r"jnpl_select\(\): logits needs at least 2 classes"),
        (lambda: L.update_history(torch.zeros(9, 1, dtype=torch.bool), Y, Z1), ValueError,
         r"update_history\(\): logits needs at least 2 classes"),
        (lambda: L.jnpl_select(Z[0], 0, 0), ValueError, r"jnpl_select\(\): logits must be 2-D"),
        (lambda: L.jnpl_select(Z.long(), 0, 0), TypeError, r"jnpl_select\(\): logits must be float32, float64"),
        (lambda: L.sample_complementary(Y, 5, exclude=torch.zeros(4, 5)), TypeError,
         r"sample_complementary\(\): exclude must be bool, got Float"),
        (lambda: L.sample_complementary(Y, 5, exclude=torch.zeros(4, 4, dtype=torch.bool)), ValueError,
         r"sample_complementary\(\): exclude must have shape \[4, 5\], got \[4, 4\]"),
        # Row 2 excludes every class but its label: nothing is left to draw from.
        (lambda: L.sample_complementary(Y, 5, exclude=(Y.view(4, 1) == 2) & (torch.arange(5) != 2)), ValueError,
         r"sample_complementary\(\): row 2 has 0 allowed classes \(not its label, not excluded\)"),
        (lambda: L.update_history(torch.zeros(9, dtype=torch.bool), Y, Z), ValueError,
         r"update_history\(\): history must have shape \[num_samples, 5\], got \[9\]"),
        (lambda: L.update_history(torch.zeros(9, 5, dtype=torch.bool), Y, Z.view(4, 5, 1)), ValueError,
         r"update_history\(\): logits must be 2-D"),
        (lambda: L.sample_complementary(Y, 5, first_row=-1), ValueError,
         r"sample_complementary\(\): first_row must be >= 0, got -1"),
        (lambda: L.jnpl_select(Z, 0, 0, first_row=-(2**63)), ValueError,
         r"jnpl_select\(\): first_row must be >= 0, got -9223372036854775808"),
        # Philox rows are 32-bit: the last row of a shard, first_row + 3, must be below 2^32.
        (lambda: L.sample_complementary(Y, 5, first_row=2**32 - 3), ValueError,
         r"sample_complementary\(\): first_row \+ rows must be <= 2\^32 \(Philox rows are 32-bit\), "
         r"got first_row = 4294967293 and 4 rows"),
        (lambda: L.jnpl_select(Z, 0, 0, first_row=2**63 - 1), ValueError,
         r"jnpl_select\(\): first_row \+ rows must be <= 2\^32 .*, got first_row = 9223372036854775807 and 4 rows"),
        (lambda: L.NLLoss(reduction="avg"), ValueError, r"NLLoss\(\): reduction must be one of \('none', 'mean', 'sum'\), got 'avg'"),
        # A module's options are checked when it is built, not at its first forward.
        (lambda: L.NLLoss(clamp_eps=5), ValueError, r"nl_loss\(\): clamp_eps must be in \[0, 1\), got 5"),
        (lambda: L.NLPlusLoss(clamp_eps="0.1"), TypeError, r"nl_loss\(\): clamp_eps must be a float, got str"),
        (lambda: L.PLPlusLoss(n=17), ValueError, r"pl_plus_loss\(\): n must be in \[0, 16\], got 17"),
        (lambda: L.nl_plus_loss(Z, COMP, reduction="avg"), ValueError, r"nl_plus_loss\(\): reduction must be one of"),
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


def test_weight_on_another_device_raises():
    with pytest.raises(ValueError, match=r"weighted_ce\(\): weight is on meta but logits is on cpu"):
        L.weighted_ce(Z, Y, weight=torch.ones(4, device="meta"))
