"""Complementary-label sampling and PL+ selection: exactness, uniformity, determinism."""
import math

import pytest
import torch

from conftest import strided_copy
from engine import losses as L
from engine import reference as R
from philox_model import Stream, philox4x32_10


def test_philox_known_answers():
    """Known-answer vectors of Philox4x32-10 (Random123's kat_vectors)."""
    assert philox4x32_10([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox4x32_10([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert philox4x32_10([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("seed,offset,first_row", [(0, 0, 0), (123, 7, 0), (-5, 2**40 + 3, 0), (123, 7, 1000),
                                                   (-5, 2**40 + 3, 2**32 - 6)])  # up to the last 32-bit row
def test_draws_follow_the_philox_stream_exactly(seed, offset, first_row, device):
    labels = torch.tensor([0, 3, 9, 5, 2, 2])
    C, k = 10, 5
    out = L.sample_complementary(labels.to(device), C, k=k, seed=seed, offset=offset, first_row=first_row).cpu()
    for row, y in enumerate(labels.tolist()):
        rng = Stream(seed, offset, first_row + row)
        expected = []
        for _ in range(k):
            r = rng.below(C - 1)
            expected.append(r if r < y else r + 1)
        assert out[row].tolist() == expected


def test_excluded_draws_follow_the_stream(device):
    labels = torch.tensor([1, 4])
    exclude = torch.zeros(2, 8, dtype=torch.bool)
    exclude[0, [0, 5]] = True
    exclude[1, [4, 6, 7]] = True  # the label itself may be excluded too
    out = L.sample_complementary(labels.to(device), 8, k=6, exclude=exclude.to(device), seed=9, offset=4).cpu()
    for row in range(2):
        allowed = [c for c in range(8) if c != labels[row] and not exclude[row, c]]
        rng = Stream(9, 4, row)
        assert out[row].tolist() == [allowed[rng.below(len(allowed))] for _ in range(6)]


def test_never_the_label_nor_excluded(device):
    g = torch.Generator().manual_seed(0)
    B, C = 2000, 12
    labels = torch.randint(0, C, (B,), generator=g)
    exclude = torch.rand(B, C, generator=g) < 0.5
    three = (labels[:, None] + torch.tensor([1, 2, 3])) % C
    exclude[:100] = True  # exactly three allowed classes in these rows, at least three in the others
    exclude.scatter_(1, three, False)
    for replacement, k in [(True, 4), (False, 1), (False, 3)]:
        out = L.sample_complementary(labels.to(device), C, k=k, exclude=exclude.to(device), replacement=replacement,
                                     seed=1, offset=0).cpu()
        assert not (out == labels[:, None]).any()
        assert not exclude.gather(1, out).any()
        if not replacement:
            assert (out.sort(1).values.diff(dim=1) > 0).all(), "labels of a row must be distinct"
        if not replacement and k == 3:
            assert torch.equal(out[:100].sort(1).values, three[:100].sort(1).values)


def test_uniform_chi_square(device):
    """Counts over 99 allowed classes pass a chi-square test (p > 0.001)."""
    B, C = 100_000, 100
    labels = torch.full((B,), 17)
    out = L.sample_complementary(labels.to(device), C, k=1, seed=42, offset=0).cpu().flatten()
    counts = torch.bincount(out, minlength=C).double()
    assert counts[17] == 0
    observed = torch.cat([counts[:17], counts[18:]])
    expected = B / (C - 1)
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 148.2  # 0.999 quantile of chi-square with 98 degrees of freedom


def test_uniform_with_exclusions_chi_square(device):
    B, C = 60_000, 10
    labels = torch.zeros(B, dtype=torch.long)
    exclude = torch.zeros(B, C, dtype=torch.bool)
    exclude[:, [3, 7]] = True
    out = L.sample_complementary(labels.to(device), C, k=2, exclude=exclude.to(device), seed=3, offset=0).cpu().flatten()
    counts = torch.bincount(out, minlength=C).double()
    assert counts[[0, 3, 7]].sum() == 0
    observed = counts[[1, 2, 4, 5, 6, 8, 9]]
    expected = 2 * B / 7
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 22.46  # 0.999 quantile, 6 degrees of freedom


def test_without_replacement_is_a_uniform_random_ordered_subset(device):
    B, C, k = 30_000, 6, 3
    labels = torch.zeros(B, dtype=torch.long)
    out = L.sample_complementary(labels.to(device), C, k=k, replacement=False, seed=5, offset=0).cpu()
    assert ((out >= 1) & (out < C)).all()
    assert (out.sort(1).values.diff(dim=1) > 0).all(), "labels of a row must be distinct"
    # every column is uniform over the 5 allowed classes (the order is random, not sorted)
    for column in range(k):
        counts = torch.bincount(out[:, column], minlength=C)[1:].double()
        chi2 = ((counts - B / 5) ** 2 / (B / 5)).sum().item()
        assert chi2 < 18.47  # 0.999 quantile, 4 degrees of freedom
    assert L.sample_complementary(labels[:1], C, k=C - 1, replacement=False, offset=0).sort().values.tolist() == [[1, 2, 3, 4, 5]]


def test_same_seed_and_offset_repeat_other_offsets_differ(device):
    labels = torch.randint(0, 50, (500,)).to(device)
    a = L.sample_complementary(labels, 50, k=3, seed=7, offset=11)
    assert torch.equal(a, L.sample_complementary(labels, 50, k=3, seed=7, offset=11))
    assert (a != L.sample_complementary(labels, 50, k=3, seed=7, offset=12)).float().mean() > 0.9
    assert (a != L.sample_complementary(labels, 50, k=3, seed=8, offset=11)).float().mean() > 0.9


def test_jnpl_select_keeps_only_candidates_with_probability_p(device):
    g = torch.Generator().manual_seed(1)
    B, C = 4000, 10
    z = torch.randn(B, C, generator=g)
    z[: B // 2, 0] += torch.linspace(0, 8, B // 2)  # a range of confident rows
    candidate, yhat_ref, p_top = R.jnpl_candidates(z)
    keep_rate = torch.zeros(B)
    draws = 50
    for offset in range(draws):
        keep, yhat = L.jnpl_select(z.to(device), seed=3, offset=offset)
        keep, yhat = keep.cpu(), yhat.cpu()
        assert torch.equal(yhat, yhat_ref)
        assert not (keep & ~candidate).any()
        keep_rate += keep.float()
    keep_rate /= draws
    # Over the candidates, the mean keep rate equals the mean p_yhat (Bernoulli(p_yhat)).
    mean_p = p_top[candidate].mean().item()
    assert candidate.sum() > 500
    assert abs(keep_rate[candidate].mean().item() - mean_p) < 0.01


@pytest.mark.parametrize("first_row", [0, 7, 2**32 - 3])
def test_jnpl_select_follows_the_philox_stream(first_row, device):
    z = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.1, 5.0, 0.2]])
    keep, yhat = L.jnpl_select(z.to(device), seed=11, offset=5, first_row=first_row)
    p = torch.softmax(z, 1).max(1).values
    expected = [Stream(11, 5, first_row + row).uniform() < p[row].item() for row in range(3)]
    expected[1] = False  # a uniform row is no candidate (its other classes have p = 1/C)
    assert keep.cpu().tolist() == expected
    assert yhat.cpu().tolist() == [0, 0, 1]


def confident_and_ordinary_logits(B, C, generator):
    # Small spreads and gaps near log C give candidates with a low p_yhat too. No spread near 0:
    # its p_second is 1/C to a few float32 ulps, where either side of the candidate test is right.
    spread = 0.05 + 2 * torch.rand(B, 1, generator=generator, dtype=torch.float64) ** 2
    z = torch.randn(B, C, generator=generator, dtype=torch.float64) * spread
    top = torch.randint(0, C, (B,), generator=generator)
    gap = math.log(C) - 1 + 6 * torch.rand(B, generator=generator, dtype=torch.float64)
    gap[B // 2:] = 0  # the rest are ordinary rows
    z[torch.arange(B), top] += gap
    z[:20, 1] = z[:20, 0] = z[:20].max(1).values + 0.5  # tied maxima: the first index, never a candidate
    return z


@pytest.mark.parametrize("C", [2, 10, 100, 1000])
@pytest.mark.parametrize("dtype,strided", [(torch.float32, False), (torch.float64, False), (torch.bfloat16, False),
                                           (torch.float16, False), (torch.float32, True)])
def test_jnpl_select_equals_the_reference_row_by_row(C, dtype, strided, device):
    g = torch.Generator().manual_seed(C)
    B, seed, offset = 300, 21, C + 4
    z = confident_and_ordinary_logits(B, C, g).to(dtype)
    logits = z.to(device)
    if strided:
        logits = strided_copy(z, device)
        assert not logits.is_contiguous() and torch.equal(logits.cpu(), z)
    keep, yhat = L.jnpl_select(logits, seed=seed, offset=offset)
    keep, yhat = keep.cpu(), yhat.cpu()

    values = z.double()  # the values the kernel computes with (float32 holds every 16-bit value)
    p = torch.softmax(values, 1)
    p_yhat = p.max(1).values
    candidate = p.topk(2, dim=1).values[:, 1] < 1.0 / C
    u = torch.tensor([Stream(seed, offset, row).uniform() for row in range(B)], dtype=torch.float64)
    expected = candidate & (u < p_yhat)

    assert torch.equal(yhat, z.float().argmax(1))
    assert yhat[:20].eq(0).all()
    ties = (u - p_yhat).abs() < 1e-6  # an ulp-level tie of u and the float32 p_yhat may go either way
    assert not ((keep != expected) & ~ties).any()
    assert (expected & ~ties).any() and (candidate & ~expected & ~ties).any() and (~candidate).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_rows_without_a_softmax_take_torchs_arg_max_and_are_never_kept(dtype, device):
    """A NaN or +inf logit leaves a row without a softmax: jnpl_select gives it torch.argmax's
    column (the first NaN, else the first +inf; column 0 of a row of -inf) and never keeps it,
    and update_history records that column, as the references do. Both used to take the
    arg-max of the other columns, passing the NaN by."""
    C, nan, inf, largest = 40, math.nan, math.inf, torch.finfo(dtype).max
    z = torch.zeros(8, C, dtype=torch.float64)
    z[:, 5] = 9  # confident rows: PL+ candidates
    z[0, 30] = nan
    z[1, 20], z[1, 33] = inf, nan
    z[2, 20], z[2, 25] = inf, inf
    z[3] = -inf
    z[4, 35], z[4, 36] = nan, inf
    z[6, 10], z[6, 12] = largest, inf  # the largest finite value before +inf, the lowest among -inf:
    z[7], z[7, 8] = -inf, -largest     # they used to tie with the infinities, the first column winning
    z = z.to(device, dtype)
    expected = torch.tensor([30, 33, 20, 0, 35, 5, 12, 8])
    assert torch.equal(z.argmax(1).cpu(), expected)
    kept = torch.zeros(8, dtype=torch.bool)
    for offset in range(20):
        keep, yhat = L.jnpl_select(z, seed=1, offset=offset)
        assert torch.equal(yhat.cpu(), expected)
        kept |= keep.cpu()
    assert kept.tolist() == [False] * 5 + [True, False, True]
    history = L.update_history(torch.zeros(8, C, dtype=torch.bool, device=device), torch.arange(8, device=device), z)
    assert torch.equal(history, R.update_history(torch.zeros_like(history), torch.arange(8, device=device), z))
    assert torch.equal(history.nonzero()[:, 1].cpu(), expected)


def test_strided_labels_and_exclude_equal_their_contiguous_copies(device):
    g = torch.Generator().manual_seed(4)
    B, C = 500, 9
    # made strided on the device: .to() would copy a gapped view into a contiguous tensor
    labels = torch.randint(0, C, (2 * B,), generator=g).to(device)[::2]
    exclude = (torch.rand(C, B, generator=g) < 0.3).to(device).t()  # column-major
    rows = torch.arange(B, device=device)
    exclude[rows, (labels + 1) % C] = False
    exclude[rows, (labels + 2) % C] = False
    assert not labels.is_contiguous() and not exclude.is_contiguous()
    for mask in (None, exclude):
        for replacement, k in [(True, 3), (False, 2)]:
            a, b = [L.sample_complementary(y, C, k=k, exclude=m, replacement=replacement, seed=6, offset=1)
                    for y, m in [(labels, mask), (labels.contiguous(), None if mask is None else mask.contiguous())]]
            assert torch.equal(a, b)


def test_two_classes_always_draw_the_other_label(device):
    labels = torch.randint(0, 2, (1000,), generator=torch.Generator().manual_seed(2))
    exclude = torch.nn.functional.one_hot(labels, 2).bool()  # excluding the label itself changes nothing
    for mask in (None, exclude):
        m = None if mask is None else mask.to(device)
        for replacement, k in [(True, 1), (True, 5), (False, 1)]:
            out = L.sample_complementary(labels.to(device), 2, k=k, exclude=m, replacement=replacement, seed=8, offset=0).cpu()
            assert torch.equal(out, (1 - labels)[:, None].expand(-1, k))


SHARD_CASES = [(1, 2, 0), (1, 2, 1), (2, 2, 1), (7, 5, 3), (300, 10, 150), (300, 10, 299), (1000, 100, 401)]


@pytest.mark.parametrize("B,C,split", SHARD_CASES)
def test_shards_of_a_batch_sample_what_the_whole_batch_samples(B, C, split, device):
    """Distributed training: a process holding rows [a, b) of the global batch passes first_row=a."""
    g = torch.Generator().manual_seed(B + C + split)
    labels = torch.randint(0, C, (B,), generator=g)
    k = min(3, C - 1)
    exclude = torch.rand(B, C, generator=g) < 0.3
    for j in range(1, k + 1):  # k allowed classes per row at least, for draws without replacement
        exclude[torch.arange(B), (labels + j) % C] = False
    labels, exclude = labels.to(device), exclude.to(device)
    for mask in (None, exclude):
        for replacement in (True, False):
            def draw(rows, first_row):
                return L.sample_complementary(labels[rows], C, k=k, exclude=None if mask is None else mask[rows],
                                              replacement=replacement, seed=3, offset=8, first_row=first_row)
            shards = torch.cat([draw(slice(0, split), 0), draw(slice(split, B), split)])
            assert torch.equal(shards, draw(slice(0, B), 0))


@pytest.mark.parametrize("B,C,split", SHARD_CASES)
def test_shards_of_a_batch_select_what_the_whole_batch_selects(B, C, split, device):
    g = torch.Generator().manual_seed(B + C + split)
    z = (2 * torch.randn(B, C, generator=g)).to(device)
    z[: B // 2, 0] += 3 + math.log(C)  # candidates, some kept
    whole = L.jnpl_select(z, 4, 9)
    shards = L.jnpl_select(z[:split], 4, 9, first_row=0), L.jnpl_select(z[split:], 4, 9, first_row=split)
    for i in range(2):
        assert torch.equal(torch.cat([shard[i] for shard in shards]), whole[i])


def test_without_an_offset_each_call_draws_anew_and_torch_manual_seed_repeats_them():
    """A fixed default offset gave the same labels at every step of a loop that forgot to pass one."""
    labels = torch.arange(64) % 10
    torch.manual_seed(7)
    first, second = (L.sample_complementary(labels, 10, k=3) for _ in range(2))
    assert (first != second).float().mean() > 0.5
    torch.manual_seed(7)
    assert torch.equal(L.sample_complementary(labels, 10, k=3), first)
