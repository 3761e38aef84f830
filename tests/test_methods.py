"""The pieces of PMNAR and BLDR on small hand-made inputs: peer weights, history exclusion,
corrected-label exclusion, SOP parameters, EMA, schedules."""
import pytest
import torch
from torch import nn

from engine import reference as R
from engine.methods.base import Batch, Defaults, Stage
from engine.methods.bldr import BLDR, class_balance, ema_update, sop_loss
from engine.methods.pmnar import PMNAR
from engine.train import parse_args

N, C = 12, 5


def make_method(cls, *options, warmup=2):
    args = parse_args(["--method", cls.name, *options])
    labels = torch.arange(N) % C
    defaults = Defaults(epochs=10, batch_size=4, lr=0.1, warmup_epochs=warmup, options={"sop_scale": 50.0})
    return cls(args, C, labels, torch.device("cpu"), defaults)


class FixedLogits(nn.Module):
    """Stands in for a network: returns stored logits for the images' sample indices."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, images):
        return self.logits[images.long()[:, 0, 0, 0]] + self.anchor


def index_images(indices):
    return indices.float().view(-1, 1, 1, 1)


def random_probs(*shape, seed=0):
    return torch.softmax(3 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), -1)


# ---------------------------------------------------------------- PMNAR

def test_pmnar_weights_come_from_the_peer_network_after_the_warmup():
    method = make_method(PMNAR, warmup=2)
    probs = random_probs(N, 2, C)
    outputs = {"probs": probs.mean(1), "network_probs": probs}
    method.end_epoch(0, None, outputs)  # epoch 1 of a 2-epoch warm-up: nothing changes
    assert torch.equal(method.weights, torch.ones(2, N)) and not method.history.any()
    method.end_epoch(1, None, outputs)
    confidence = probs[torch.arange(N), :, method.given_labels]  # [N, 2]
    torch.testing.assert_close(method.weights[0], confidence[:, 1] - confidence[:, 1].min())
    torch.testing.assert_close(method.weights[1], confidence[:, 0] - confidence[:, 0].min())


def test_pmnar_single_network_is_weighted_by_itself_and_switches_work():
    method = make_method(PMNAR, "--pmnar-single-network", warmup=0)
    probs = random_probs(N, 1, C)
    method.end_epoch(0, None, {"probs": probs[:, 0], "network_probs": probs})
    confidence = probs[torch.arange(N), 0, method.given_labels]
    torch.testing.assert_close(method.weights[0], confidence - confidence.min())

    off = make_method(PMNAR, "--pmnar-no-reweighting", "--pmnar-no-history", "--pmnar-no-consistency", warmup=0)
    probs = random_probs(N, 2, C)
    off.end_epoch(0, None, {"probs": probs.mean(1), "network_probs": probs})
    assert torch.equal(off.weights, torch.ones(2, N)) and not off.history.any()
    assert off.second_view is None and make_method(PMNAR).second_view == "strong"


def test_pmnar_history_accumulates_arg_maxes_and_is_excluded_from_the_loss():
    method = make_method(PMNAR, "--pmnar-no-consistency", warmup=0)
    first, second = random_probs(N, 2, C, seed=1), random_probs(N, 2, C, seed=2)
    method.end_epoch(0, None, {"probs": first.mean(1), "network_probs": first})
    method.end_epoch(1, None, {"probs": second.mean(1), "network_probs": second})
    expected = torch.zeros(N, C, dtype=torch.bool)
    for probs in (first, second):  # the first network's arg-max, ever
        expected[torch.arange(N), probs[:, 0].argmax(1)] = True
    assert torch.equal(method.history, expected)

    logits = [torch.randn(N, C), torch.randn(N, C)]
    model = nn.ModuleList([FixedLogits(z) for z in logits])
    indices = torch.tensor([3, 7, 0, 11])
    batch = Batch(index_images(indices), indices, method.given_labels[indices], step=0)
    loss = method.batch_loss(lambda x: [net(x) for net in model], batch, None)
    expected_loss = sum(R.pm_loss(z[indices], batch.labels, expected[indices], weight=method.weights[k, indices])
                        for k, z in enumerate(logits))
    torch.testing.assert_close(loss, expected_loss.float())


def test_pmnar_consistency_is_the_kl_from_the_mean_prediction_to_each_augmented_view():
    method = make_method(PMNAR, "--pmnar-no-history", "--pmnar-beta", "0.5", warmup=5)
    clean, augmented = [torch.randn(N, C) for _ in range(2)], [torch.randn(N, C) for _ in range(2)]
    indices = torch.arange(4)
    batch = Batch(index_images(indices), indices, method.given_labels[indices], 0, index_images(indices + N))
    table = [torch.cat([a, b]) for a, b in zip(clean, augmented)]
    loss = method.batch_loss(lambda x: [FixedLogits(t)(x) for t in table], batch, None)
    target = torch.stack([torch.softmax(z[indices], 1) for z in clean]).mean(0)
    kl = [(target * (target.log() - torch.log_softmax(a[indices], 1))).sum(1).mean() for a in augmented]
    expected = sum(R.pm_loss(z[indices], batch.labels) for z in clean) + 0.5 * sum(kl)
    torch.testing.assert_close(loss, expected.float())


# ---------------------------------------------------------------- BLDR

def test_bldr_weights_are_the_min_max_normalized_negative_head_probability():
    method = make_method(BLDR, warmup=2)
    negative = random_probs(N, C)
    outputs = {"probs": random_probs(N, C, seed=3), "negative_probs": negative}
    method.end_epoch(0, None, outputs)
    assert torch.equal(method.weights, torch.ones(N)), "all 1 during the warm-up"
    assert method.sop_weight == 0.0, "no SOP during the warm-up"
    method.end_epoch(1, None, outputs)
    q = negative[torch.arange(N), method.given_labels]
    expected = (q - q.min()) / (q.max() - q.min())
    torch.testing.assert_close(method.weights, expected)
    score, flagged = method.clean_scores(outputs)
    assert torch.equal(flagged, expected < 0.3)
    assert method.noise_rate == pytest.approx((expected < 0.3).float().mean().item())
    assert method.sop_weight == pytest.approx(50.0 * method.noise_rate**2)

    by_max = make_method(BLDR, "--bldr-weight-norm", "max", warmup=0)
    by_max.end_epoch(0, None, outputs)
    torch.testing.assert_close(by_max.weights, q / q.max())


@pytest.mark.parametrize("rule", ["negative", "sum"])
def test_bldr_never_samples_the_given_or_the_corrected_label(rule):
    method = make_method(BLDR, "--bldr-negatives", "sampled", "--bldr-corrected-label", rule)
    labels = torch.arange(200) % C
    out = {"main": torch.randn(200, C), "negative": torch.randn(200, C)}
    assert torch.equal(method.corrected_labels(out, labels, Stage("warmup", 1, 0.1)),
                       labels if rule == "negative" else (torch.softmax(out["main"], 1) + torch.softmax(out["negative"], 1)).argmax(1))
    corrected = method.corrected_labels(out, labels, Stage("bldr", 1, 0.1))
    if rule == "negative":
        assert torch.equal(corrected, out["negative"].argmax(1))
    else:
        assert torch.equal(corrected, (torch.softmax(out["main"], 1) + torch.softmax(out["negative"], 1)).argmax(1))
    drawn = torch.cat([method.complementary_labels(labels, corrected, step) for step in range(50)], 1)
    assert not (drawn == labels[:, None]).any() and not (drawn == corrected[:, None]).any()
    allowed = 5 - 1 - (corrected != labels).long()
    seen = torch.stack([torch.bincount(row, minlength=C) > 0 for row in drawn]).sum(1)
    assert torch.equal(seen, allowed), "every allowed class is drawn at some step"


def test_bldr_multi_negative_loss_leaves_out_the_corrected_label():
    method = make_method(BLDR)
    z, labels = torch.randn(8, C), torch.arange(8) % C
    corrected = (labels + 1) % C
    loss = method.negative_loss(z, labels, corrected, step=0, weight=None)
    exclude = nn.functional.one_hot(corrected, C).bool()
    torch.testing.assert_close(loss, R.ml_loss(z, labels, exclude).float())


def test_sop_parameters_have_per_sample_shapes_and_learn_the_noise():
    method = make_method(BLDR)
    u, v = method.sop["u"], method.sop["v"]
    assert u.shape == (N, 1) and v.shape == (N, C) and u.abs().max() < 1e-6
    groups = method.param_groups()
    assert [g["lr"] for g in groups] == [1.0, 10.0] and all(g["fixed_lr"] and g["momentum"] == 0 for g in groups)
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]}, *groups], lr=0.1)
    u.data.fill_(0.1)
    v.data.fill_(0.1)
    before_u, before_v = u.detach().clone(), v.detach().clone()
    indices = torch.tensor([0, 1])
    labels = torch.tensor([0, 1])
    logits = torch.tensor([[5.0, 0, 0, 0, 0], [0, 0, 5.0, 0, 0]])  # sample 1 looks like class 2, labeled 1
    for _ in range(20):
        optimizer.zero_grad()
        sop_loss(logits, labels, u[indices], v[indices]).backward()
        optimizer.step()
    assert torch.equal(u[2:], before_u[2:]) and torch.equal(v[2:], before_v[2:]), "rows outside the batch stay"
    assert u[1] ** 2 > 0.5 and v[1, 2] ** 2 > 0.5, "the mislabeled sample's u and v absorb the disagreement"
    assert u[0] ** 2 < before_u[0] ** 2 and v[0, 1:].pow(2).max() < 0.01, "the clean sample's shrink toward 0"


def test_sop_loss_matches_its_formula():
    z, y = torch.randn(6, C), torch.randint(0, C, (6,))
    u, v = torch.rand(6, 1), torch.rand(6, C)
    e = nn.functional.one_hot(y, C).float()
    s = (u**2 * e).clamp(0, 1) - (v**2 * (1 - e)).clamp(0, 1)
    p = (torch.softmax(z, 1) + s).clamp(min=1e-4)
    p = p / p.sum(1, keepdim=True)
    hard = nn.functional.one_hot(z.argmax(1), C).float()
    expected = -(e * p.log()).sum(1).mean() + ((hard + s - e) ** 2).sum(1).mean()
    torch.testing.assert_close(sop_loss(z, y, u, v), expected)


def test_class_balance_is_the_kl_from_uniform_to_the_batch_mean_prediction():
    z = 4 * torch.randn(16, C)
    mean = torch.softmax(z, 1).mean(0)
    torch.testing.assert_close(class_balance(z), (torch.log((1 / C) / mean) / C).sum())
    assert class_balance(torch.zeros(16, C)).abs() < 1e-6


def test_ema_update_averages_parameters_and_copies_buffers():
    model, ema = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(2.0)
        ema.weight.fill_(1.0)
        model.running_mean.fill_(5.0)
    ema_update(ema, model, decay=0.9)
    torch.testing.assert_close(ema.weight, torch.full((3,), 1.1))
    torch.testing.assert_close(ema.running_mean, torch.full((3,), 5.0))


def test_bldr_schedule_is_constant_in_the_warmup_then_cosine():
    method = make_method(BLDR, warmup=2)
    warmup, main = method.stages(12, 0.04)
    assert (warmup.name, warmup.epochs, main.epochs) == ("warmup", 2, 10)
    assert warmup.lr_at(1) == 0.04 and main.lr_at(0) == pytest.approx(0.04)
    assert main.lr_at(5) == pytest.approx((0.04 + 2e-4) / 2)
    assert all(main.lr_at(e) > main.lr_at(e + 1) > 2e-4 for e in range(9))


def test_step_schedule_drops_tenfold_at_milestones():
    stage = Stage("s", 10, 0.1, milestones=(0.5, 0.8))
    assert [round(stage.lr_at(e), 6) for e in (0, 4, 5, 7, 8, 9)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
