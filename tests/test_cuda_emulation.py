"""The CUDA kernels' code run on host threads by tests/cuda_emulation.cpp (a warp of 32 lanes
per row; a block of threads for normalize_weights) gives the CPU kernels' losses, gradients,
selections, history and normalized weights.

This checks the lane-strided loops and butterfly reductions of csrc/include/noisy/lane_group.h,
the block reduction of normalize_block and the per-row bodies the CUDA kernels run, on any
machine; test_cuda_matches_cpu.py checks the real kernels when a GPU is present.
"""
import math

import pytest
import torch

from conftest import strided_copy, tolerances
from engine import losses as L
from engine.ops import ops

# LossSpec fields (csrc/include/noisy/loss_row.h), as csrc/ops.cpp sets them for each op.
POSITIVE = {"none": 0, "ce": 1, "pl_plus": 2}
NEGATIVES = {"none": 0, "listed": 1, "all_but_label": 2}
NORM_MODES = {"sub_min": 0, "min_max": 1, "max": 2, "rectify_sum": 3, "sigmoid": 4, "softmax": 5}  # normalize.h

FLOAT_MAX = torch.finfo(torch.float32).max


def logits_with_edge_rows(C, generator):
    """Random rows and rows that stress the cross-lane reductions (float64; cast by the caller)."""
    z = 3 * torch.randn(7, C, generator=generator, dtype=torch.float64)
    z[1, 0] += 1000  # one class takes all the mass; arg-max in lane 0
    z[2, C - 1] += 60  # arg-max in the last lane that has a column
    z[3, [j for j in (1, 33, 65, C - 1) if j < C]] = z[3].max() + 1  # a tie across lanes: the first index wins
    z[4, : C // 2] = -math.inf  # half the classes impossible
    z[5, C // 3] = math.nan  # NaN policy: this row's loss and gradient are NaN
    return z


def row_loss_pairs(emulated, z, labels, comp, exclude):
    """name -> ((loss, grad) of the CPU op, (loss, grad) of the emulated warps) for each loss."""

    def spec(positive, negatives, plus=False, clamp_eps=0.0, n=0):
        return POSITIVE[positive], n, NEGATIVES[negatives], plus, clamp_eps

    return {
        "nl": (ops.nl_forward(z, comp, False, 0.0, True), emulated.row_loss(z, None, comp, None, *spec("none", "listed"))),
        "nl_plus_clamped": (
            ops.nl_forward(z, comp, True, 1e-5, True),
            emulated.row_loss(z, None, comp, None, *spec("none", "listed", plus=True, clamp_eps=1e-5)),
        ),
        "pm_exclude": (
            ops.pm_forward(z, labels, exclude, True, True),
            emulated.row_loss(z, labels, None, exclude, *spec("ce", "all_but_label")),
        ),
        "ml": (
            ops.pm_forward(z, labels, None, False, True),
            emulated.row_loss(z, labels, None, None, *spec("none", "all_but_label")),
        ),
        "ce": (ops.ce_forward(z, labels, True), emulated.row_loss(z, labels, None, None, *spec("ce", "none"))),
        "pl_plus": (
            ops.pl_plus_forward(z, labels, 3, True),
            emulated.row_loss(z, labels, None, None, *spec("pl_plus", "none", n=3)),
        ),
    }


@pytest.mark.parametrize(
    "C,dtype,layout",
    [
        (2, torch.float32, "contiguous"),
        (10, torch.float32, "contiguous"),
        (37, torch.float32, "contiguous"),
        (100, torch.float32, "contiguous"),
        (1000, torch.float32, "contiguous"),
        (37, torch.float64, "contiguous"),
        (37, torch.bfloat16, "contiguous"),
        (37, torch.float32, "strided"),
    ],
)
def test_losses_and_gradients_match_cpu(emulated, C, dtype, layout):
    g = torch.Generator().manual_seed(C)
    z = logits_with_edge_rows(C, g).to(dtype)
    B = z.shape[0]
    if layout == "strided":
        z = strided_copy(z)
        assert z.stride() == (2, 2 * B)
    labels = torch.randint(0, C, (B,), generator=g)
    labels[4] = C - 1  # a possible class in the row with -inf logits
    comp = L.sample_complementary(labels, C, k=3, seed=C, offset=0)
    exclude = torch.rand(B, C, generator=g) < 0.3
    rtol, atol = tolerances(dtype)
    for name, ((cpu_loss, cpu_grad), (lane_loss, lane_grad)) in row_loss_pairs(emulated, z, labels, comp, exclude).items():
        assert lane_loss.dtype == cpu_loss.dtype and lane_grad.dtype == cpu_grad.dtype, name
        assert cpu_loss[5].isnan() and lane_grad[5].isnan().all(), name
        assert torch.isfinite(lane_loss[[0, 1, 2, 3, 4, 6]]).all(), name
        torch.testing.assert_close(lane_loss, cpu_loss, rtol=rtol, atol=atol, equal_nan=True, msg=name)
        torch.testing.assert_close(lane_grad.double(), cpu_grad.double(), rtol=rtol, atol=atol, equal_nan=True,
                                   msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C,k", [(100, 110), (37, 300)])
def test_classes_listed_many_times_match_cpu(emulated, C, k, dtype):
    """Each lane counts its columns' listings in their stored gradients (loss_row.h,
    rewrite_listed); bf16 with k = 300 counts per listing instead."""
    g = torch.Generator().manual_seed(k)
    z = logits_with_edge_rows(C, g).to(dtype)
    comp = L.sample_complementary(torch.randint(0, C, (len(z),), generator=g), C, k=k, seed=k, offset=0)
    rtol, atol = tolerances(dtype)
    for plus in (False, True):
        cpu = ops.nl_forward(z, comp, plus, 0.0, True)
        lanes = emulated.row_loss(z, None, comp, None, POSITIVE["none"], 0, NEGATIVES["listed"], plus, 0.0)
        for cpu_part, lane_part in zip(cpu, lanes):
            torch.testing.assert_close(lane_part.double(), cpu_part.double(), rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("C", [2, 10, 100])
def test_jnpl_select_and_history_match_cpu(emulated, C):
    g = torch.Generator().manual_seed(C)
    z = torch.cat([logits_with_edge_rows(C, g), 2 * torch.randn(205, C, generator=g, dtype=torch.float64)])
    z[7:107, 0] += 8  # confident rows: PL+ candidates
    # Rows without a softmax, their NaN / +inf in the last lane: torch.argmax's column
    z[207, C - 1], z[208, 0], z[208, C - 1], z[209] = math.nan, math.inf, math.nan, -math.inf
    # +inf after the largest float (their keys tie); the lowest float among -inf
    z[210, 0], z[210, C - 1], z[211], z[211, C - 1] = FLOAT_MAX, math.inf, -math.inf, -FLOAT_MAX
    z = z.float()
    keep, yhat = ops.jnpl_select(z, 11, 12)
    lane_keep, lane_yhat = emulated.jnpl_select(z, 11, 12, 0)
    assert torch.equal(lane_yhat, yhat)
    assert yhat[3] == 1  # the tie across lanes went to the first index
    assert 0 < int(keep.sum()) < len(keep)
    # p_yhat comes from a different exp on each side, so a draw within an ulp of it may differ.
    assert (lane_keep != keep).sum() <= 2

    assert torch.equal(yhat, z.argmax(1))  # torch's arg-max, also where a NaN leaves no softmax
    assert yhat[210] == yhat[211] == C - 1
    indices = torch.randint(0, 50, (len(z),), generator=g)
    history = L.update_history(torch.zeros(50, C, dtype=torch.bool), indices, z)
    lane_history = torch.zeros(50, C, dtype=torch.bool)
    emulated.update_history(lane_history, indices, z)
    assert history.any() and torch.equal(lane_history, history)


@pytest.mark.parametrize("split", [0, 37, 150])
def test_jnpl_select_shards_on_lanes_select_what_the_whole_batch_selects(emulated, split):
    """The warp's rows with first_row: a shard [a, B) passed with first_row=a, as the CPU does."""
    g = torch.Generator().manual_seed(split)
    z = 2 * torch.randn(150, 10, generator=g)
    z[:100, 0] += 6  # candidates
    whole = emulated.jnpl_select(z, 11, 12, 0)
    shards = emulated.jnpl_select(z[:split], 11, 12, 0), emulated.jnpl_select(z[split:], 11, 12, split)
    for i in range(2):
        assert torch.equal(torch.cat([shard[i] for shard in shards]), whole[i])
    keep, yhat = ops.jnpl_select(z[split:], 11, 12, split)
    assert torch.equal(shards[1][1], yhat)
    assert (shards[1][0] != keep).sum() <= 2  # as in test_jnpl_select_and_history_match_cpu


@pytest.mark.parametrize("size", [1, 5, 64, 1000, 4097])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_normalize_weights_block_matches_cpu(emulated, size, dtype):
    """Fewer elements than threads leave some threads' statistics empty; their merge must not count."""
    g = torch.Generator().manual_seed(size)
    x = (3 * torch.randn(2 * size, generator=g, dtype=torch.float64) - 1).to(dtype)[::2]  # strided
    rtol, atol = tolerances(dtype)
    for mode, value in NORM_MODES.items():
        for temperature in (10.0, 0.5) if mode == "softmax" else (10.0,):
            expected = L.normalize_weights(x, mode, temperature)
            result = emulated.normalize_weights(x, value, temperature)
            assert result.dtype == expected.dtype
            torch.testing.assert_close(result, expected, rtol=rtol, atol=atol, msg=f"{mode}, t = {temperature}")


def test_normalize_weights_block_gives_minus_inf_zero_of_the_softmax(emulated):
    """Every thread's statistics start at -inf: a -inf among its first elements made them NaN."""
    x = torch.randn(2000, dtype=torch.float64)
    x[[0, 3, 700]] = -math.inf
    result = emulated.normalize_weights(x, NORM_MODES["softmax"], 10.0)
    torch.testing.assert_close(result, torch.softmax(x / 10.0, 0))
