"""Complementary-label sampling and PL+ selection: exactness, uniformity, determinism."""
import pytest
import torch

from engine import losses as L
from engine import reference as R
from philox_model import Stream, philox4x32_10


def test_philox_known_answers():
    """Known-answer vectors of Philox4x32-10 (Random123's kat_vectors)."""
    assert philox4x32_10([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox4x32_10([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert philox4x32_10([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("seed,offset", [(0, 0), (123, 7), (-5, 2**40 + 3)])
def test_draws_follow_the_philox_stream_exactly(seed, offset, device):
    labels = torch.tensor([0, 3, 9, 5, 2, 2])
    C, k = 10, 5
    out = L.sample_complementary(labels.to(device), C, k=k, seed=seed, offset=offset).cpu()
    for row, y in enumerate(labels.tolist()):
        rng = Stream(seed, offset, row)
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
    exclude[torch.arange(B), (labels + 1) % C] = False  # keep at least one allowed class per row
    for replacement, k in [(True, 4), (False, 1)]:
        out = L.sample_complementary(labels.to(device), C, k=k, exclude=exclude.to(device), replacement=replacement,
                                     seed=1).cpu()
        assert not (out == labels[:, None]).any()
        assert not exclude.gather(1, out).any()


def test_uniform_chi_square(device):
    """Counts over 99 allowed classes pass a chi-square test (p > 0.001)."""
    B, C = 100_000, 100
    labels = torch.full((B,), 17)
    out = L.sample_complementary(labels.to(device), C, k=1, seed=42).cpu().flatten()
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
    out = L.sample_complementary(labels.to(device), C, k=2, exclude=exclude.to(device), seed=3).cpu().flatten()
    counts = torch.bincount(out, minlength=C).double()
    assert counts[[0, 3, 7]].sum() == 0
    observed = counts[[1, 2, 4, 5, 6, 8, 9]]
    expected = 2 * B / 7
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 22.46  # 0.999 quantile, 6 degrees of freedom


def test_without_replacement_is_a_uniform_random_ordered_subset(device):
    B, C, k = 30_000, 6, 3
    labels = torch.zeros(B, dtype=torch.long)
    out = L.sample_complementary(labels.to(device), C, k=k, replacement=False, seed=5).cpu()
    assert ((out >= 1) & (out < C)).all()
    assert (out.sort(1).values.diff(dim=1) > 0).all(), "labels of a row must be distinct"
    # every column is uniform over the 5 allowed classes (the order is random, not sorted)
    for column in range(k):
        counts = torch.bincount(out[:, column], minlength=C)[1:].double()
        chi2 = ((counts - B / 5) ** 2 / (B / 5)).sum().item()
        assert chi2 < 18.47  # 0.999 quantile, 4 degrees of freedom
    assert L.sample_complementary(labels[:1], C, k=C - 1, replacement=False).sort().values.tolist() == [[1, 2, 3, 4, 5]]


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


def test_jnpl_select_follows_the_philox_stream(device):
    z = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.1, 5.0, 0.2]])
    keep, yhat = L.jnpl_select(z.to(device), seed=11, offset=5)
    p = torch.softmax(z, 1).max(1).values
    expected = [Stream(11, 5, row).uniform() < p[row].item() for row in range(3)]
    expected[1] = False  # a uniform row is no candidate (its other classes have p = 1/C)
    assert keep.cpu().tolist() == expected
    assert yhat.cpu().tolist() == [0, 0, 1]
