"""BLDR's pieces on small hand-made inputs: reweighting, corrected-label exclusion, the loss's
terms, SOP parameters, EMA, schedules, and its state (EMA included) in state_dict."""
import pytest
import torch
from torch import nn

from engine import reference as R
from engine.methods.base import Batch, CEStage, Phase, Stage
from engine.methods.bldr import BLDR, BLDRStage, class_balance, ema_update, sop_loss
from engine.models.mlp import MLP
from method_testing import N, C, assert_same_state, make_method, random_probs, step_at


def make_bldr(warmup=2, **options):
    """BLDR as the old tests built it: SOP at 50 r^2 (the paper-scale value)."""
    return make_method(BLDR, warmup=warmup, **{"sop_scale": 50.0, **options})


@pytest.mark.parametrize("detection", ["negative", "positive"])
def test_bldr_weights_are_the_min_max_normalized_negative_head_probability(detection):
    method = make_bldr(warmup=2, detection=detection)
    negative, positive = random_probs(N, C), random_probs(N, C, seed=3)
    outputs = {"probs": positive, "negative_probs": negative}
    method.end_epoch(step_at(method, 0), outputs)
    assert torch.equal(method.weights, torch.ones(N)), "all 1 during the warm-up"
    assert method.sop_weight.item() == 0.0, "no SOP during the warm-up"
    method.end_epoch(step_at(method, 1), outputs)
    q = negative[torch.arange(N), method.given_labels]
    expected = (q - q.min()) / (q.max() - q.min())
    torch.testing.assert_close(method.weights, expected)
    score, flagged = method.clean_scores(outputs)
    if detection == "negative":  # the paper's label issues: the weights below h
        torch.testing.assert_close(score, expected)
        assert torch.equal(flagged, expected < 0.3)
    else:  # the positive head's, as CE's
        torch.testing.assert_close(score, positive[torch.arange(N), method.given_labels])
        assert torch.equal(flagged, positive.argmax(1) != method.given_labels)
        assert not torch.equal(flagged, expected < 0.3), "the inputs must tell the two rules apart"
    # r, and with it SOP's weight, is the negative head's estimate under either rule.
    assert method.noise_rate.item() == pytest.approx((expected < 0.3).float().mean().item())
    assert method.sop_weight.item() == pytest.approx(50.0 * method.noise_rate.item()**2)

    by_max = make_bldr(warmup=0, weight_norm="max")
    by_max.end_epoch(step_at(by_max, 0), outputs)
    torch.testing.assert_close(by_max.weights, q / q.max())


def test_bldr_flags_a_score_below_h_not_at_it():
    method = make_bldr(threshold=0.5, detection="negative")
    negative = torch.full((N, C), 0.0)
    confidence = torch.tensor([0.25, 0.5, 0.75]).repeat(N // 3)  # min-max normalized: 0, 0.5 and 1 exactly
    negative[torch.arange(N), method.given_labels] = confidence
    negative[torch.arange(N), (method.given_labels + 1) % C] = 1 - confidence
    score, flagged = method.clean_scores({"probs": negative, "negative_probs": negative})
    assert score[:3].tolist() == [0.0, 0.5, 1.0] and torch.equal(flagged, confidence == 0.25)


@pytest.mark.parametrize("rule", ["negative", "sum", "negative_balanced"])
def test_bldr_never_samples_the_given_or_the_corrected_label(rule):
    method = make_bldr(negatives="sampled", corrected_label=rule)
    labels = torch.arange(200) % C
    out = {"main": torch.randn(200, C), "negative": torch.randn(200, C)}
    both_heads = (torch.softmax(out["main"], 1) + torch.softmax(out["negative"], 1)).argmax(1)
    assert torch.equal(method.corrected_labels(out, labels, Stage(Phase.WARMUP, 1, 0.1)),
                       both_heads if rule == "sum" else labels)
    corrected = method.corrected_labels(out, labels, Stage(BLDRStage.BLDR, 1, 0.1))
    negative = torch.softmax(out["negative"], 1)
    expected = {"negative": negative.argmax(1), "sum": both_heads,
                "negative_balanced": (negative / negative.mean(0)).argmax(1)}[rule]
    assert torch.equal(corrected, expected)
    drawn = torch.cat([method.complementary_labels(labels, corrected, step) for step in range(50)], 1)
    assert not (drawn == labels[:, None]).any() and not (drawn == corrected[:, None]).any()
    allowed = 5 - 1 - (corrected != labels).long()
    seen = torch.stack([torch.bincount(row, minlength=C) > 0 for row in drawn]).sum(1)
    assert torch.equal(seen, allowed), "every allowed class is drawn at some step"


def test_bldr_balanced_corrected_label_is_not_the_class_the_head_parks_its_mass_on():
    """A head that puts most of every sample's mass on class 0 and singles out each sample's
    own class a little: the plain arg-max is 0 for all, the balanced one the singled-out class."""
    labels = torch.arange(40) % C
    negative_logits = torch.zeros(40, C)
    negative_logits[:, 0] = 4.0
    negative_logits[torch.arange(40), labels] += 1.0
    out = {"main": torch.randn(40, C), "negative": negative_logits}
    stage = Stage(BLDRStage.BLDR, 1, 0.1)
    plain = make_bldr(corrected_label="negative").corrected_labels(out, labels, stage)
    assert torch.equal(plain, torch.zeros(40, dtype=torch.long))
    assert torch.equal(make_bldr(corrected_label="negative_balanced").corrected_labels(out, labels, stage), labels)


def test_bldr_multi_negative_loss_leaves_out_the_corrected_label():
    method = make_bldr()
    z, labels = torch.randn(8, C), torch.arange(8) % C
    corrected = (labels + 1) % C
    loss = method.negative_loss(z, labels, corrected, step=0, weight=None)
    exclude = nn.functional.one_hot(corrected, C).bool()
    torch.testing.assert_close(loss, R.ml_loss(z, labels, exclude).float())


class TwoHeadLogits(nn.Module):
    """Stands in for BLDR's two-head model: stored logits per image id (first pixel)."""

    def __init__(self, main, negative):
        super().__init__()
        self.main, self.negative = nn.Parameter(main), nn.Parameter(negative)

    def forward(self, images):
        rows = images.long()[:, 0, 0, 0]
        return {"main": self.main[rows], "negative": self.negative[rows]}


@pytest.mark.parametrize("rule", ["negative", "negative_balanced"])
def test_bldr_loss_is_both_views_head_losses_plus_each_heads_consistency_and_class_balance(rule):
    method = make_bldr(warmup=0, sop=False, self_distillation=False, corrected_label=rule)
    generator = torch.Generator().manual_seed(4)
    model = TwoHeadLogits(torch.randn(2 * N, C, generator=generator), torch.randn(2 * N, C, generator=generator))
    indices = torch.tensor([0, 3, 5, 8, 10])
    method.weights[indices] = torch.tensor([1.0, 0.5, 0.0, 0.25, 0.75])
    ids = indices.float()[:, None, None, None].expand(-1, 1, 2, 2)
    batch = Batch(ids, indices, method.given_labels[indices], second_view=ids + N)
    loss = method.loss(model, batch, step_at(method, 0))

    labels, weight = batch.labels, method.weights[indices]
    views = [{head: getattr(model, head)[indices + offset] for head in ("main", "negative")} for offset in (0, N)]
    negative = torch.softmax(views[0]["negative"], 1)
    corrected = (negative if rule == "negative" else negative / negative.mean(0)).argmax(1)
    exclude = nn.functional.one_hot(corrected, C).bool()
    expected = sum(R.weighted_ce(view["main"], labels, weight=weight)
                   + R.ml_loss(view["negative"], labels, exclude, weight=weight)
                   for view in views) / 2
    for head in ("main", "negative"):
        train, strong = torch.softmax(views[0][head], 1), torch.softmax(views[1][head], 1)
        target = train.detach()  # the training view's prediction is the consistency term's target, not trained by it
        expected = expected + 0.9 * (target * (target.log() - strong.log())).sum(1).mean()
        mean = train.mean(0)
        expected = expected + 0.1 * (torch.log((1 / C) / mean) / C).sum()
    torch.testing.assert_close(loss, expected.float())
    heads = [model.main, model.negative]
    for found, wanted in zip(torch.autograd.grad(loss, heads), torch.autograd.grad(expected, heads)):
        torch.testing.assert_close(found, wanted.float())


def test_sop_parameters_have_per_sample_shapes_and_learn_the_noise():
    method = make_bldr()
    u, v = method.sop_u, method.sop_v
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


def test_bldr_loss_adds_sop_times_its_weight():
    """The SOP term enters the loss times sop_weight (sop_scale r^2, set by end_epoch), on the
    batch's rows of u and v."""
    method = make_bldr(warmup=0, consistency=False, self_distillation=False)
    generator = torch.Generator().manual_seed(5)
    model = TwoHeadLogits(torch.randn(N, C, generator=generator), torch.randn(N, C, generator=generator))
    method.sop_u.data = 0.3 * torch.randn(N, 1, generator=generator)
    method.sop_v.data = 0.3 * torch.randn(N, C, generator=generator)
    indices = torch.tensor([1, 2, 7, 11])
    batch = Batch(indices.float()[:, None, None, None].expand(-1, 1, 2, 2), indices, method.given_labels[indices])
    step = step_at(method, 0)
    without = method.loss(model, batch, step)
    method.sop_weight.fill_(2.5)
    term = sop_loss(model.main[indices], batch.labels, method.sop_u[indices], method.sop_v[indices])
    assert term > 0.01
    torch.testing.assert_close(method.loss(model, batch, step) - without, 2.5 * term)


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


def test_ema_update_averages_parameters_and_leaves_buffers_to_the_recalibration():
    model, ema = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(2.0)
        ema.weight.fill_(1.0)
        model.running_mean.fill_(5.0)
    ema_update(ema, model, decay=0.9)
    torch.testing.assert_close(ema.weight, torch.full((3,), 1.1))
    torch.testing.assert_close(ema.running_mean, torch.zeros(3))


def test_bldr_schedule_is_constant_in_the_warmup_then_cosine():
    method = make_bldr(warmup=2, epochs=12, lr=0.04)
    warmup, main = method.stages()
    assert (warmup.name, warmup.epochs, main.epochs) == ("warmup", 2, 10)
    assert warmup.lr_at(1) == 0.04 and main.lr_at(0) == pytest.approx(0.04)
    assert main.lr_at(5) == pytest.approx((0.04 + 2e-4) / 2)
    assert all(main.lr_at(e) > main.lr_at(e + 1) > 2e-4 for e in range(9))


def test_paper_preset_warms_up_40_of_340_epochs_above_10_classes():
    """The paper: 320 epochs with 20 of warm-up on CIFAR-10N, 340 with 40 on CIFAR-100N; the
    preset gave 100 classes CIFAR-10's, whose weights then start 20 epochs early."""
    ten, hundred = BLDR().configure("paper", 10), BLDR().configure("paper", 100)
    assert (ten.epochs, ten.warmup_epochs) == (320, 20) and (hundred.epochs, hundred.warmup_epochs) == (340, 40)
    method = BLDR()
    method.bind(method.configure("paper", 100), torch.arange(N) % 100, 100, seed=0, device="cpu")
    warmup, main = method.stages()
    assert (warmup.epochs, main.epochs) == (40, 300), "the cosine spans the same 300 epochs (T_max 300)"


def test_step_schedule_drops_tenfold_at_milestones():
    stage = Stage(CEStage.CE, 10, 0.1, milestones=(0.5, 0.8))
    assert [round(stage.lr_at(e), 6) for e in (0, 4, 5, 7, 8, 9)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_bldr_state_holds_weights_sop_and_the_ema_but_not_the_trained_model():
    def build(method):
        torch.manual_seed(0)
        return method.build_model(lambda: MLP(C, in_channels=4))

    method = make_bldr(warmup=1)
    model = build(method)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # a training step moved the model away from its EMA
        method.sop_u.add_(0.5)
    outputs = {"probs": random_probs(N, C, seed=3), "negative_probs": random_probs(N, C, seed=4)}
    method.end_epoch(step_at(method, 0), outputs)
    state = method.state_dict()
    assert {"weights", "noise_rate", "sop_weight", "sop_u", "sop_v"} <= set(state)
    assert any(key.startswith("ema.") for key in state)
    assert not any(key.startswith("trained") for key in state) and "given_labels" not in state
    ema_weight = state["ema.model.fc.weight"]
    torch.testing.assert_close(ema_weight, model.model.fc.weight.detach() - 0.1,
                               msg="after epoch 0 the EMA's decay is 0.1: 0.9 of the way to the model")

    fresh = make_bldr(warmup=1)
    build(fresh)
    assert not torch.equal(fresh.weights, method.weights)
    sop_u = fresh.sop_u
    fresh.load_state_dict(state)
    assert_same_state(fresh.state_dict(), state)
    assert fresh.sop_u is sop_u, "loaded in place: an optimizer holds these very parameters"
    assert fresh.sop_weight.item() > 0
    assert fresh.sop_weight.item() == pytest.approx(50.0 * method.noise_rate.item()**2)


def test_bldr_self_distillation_trains_the_stage_heads_only():
    """The teacher (the two heads' mean) and the deepest features are targets: the distillation
    terms send no gradient to the main and negative heads or to the deepest features."""
    method = make_bldr(warmup=0)
    method.stage_head_count = 2
    generator = torch.Generator().manual_seed(1)
    shapes = {"main": C, "negative": C, "features": 5, "stage0": C, "stage1": C, "stage0_features": 5,
              "stage1_features": 5}
    out = {name: 3 * torch.randn(N, size, generator=generator, requires_grad=True) for name, size in shapes.items()}
    loss = method.distillation_loss(out, torch.arange(N) % C, torch.rand(N, generator=generator))
    grads = dict(zip(out, torch.autograd.grad(loss, list(out.values()), allow_unused=True)))
    for name in ("main", "negative", "features"):
        assert grads[name] is None or not grads[name].any(), name
    assert all(grads[name].abs().max() > 0 for name in ("stage0", "stage1", "stage0_features", "stage1_features"))


def test_bldr_self_distillation_on_two_processes_gives_the_one_process_gradient():
    """What DDP's average of two processes' gradients makes of the parts of a batch, each loss
    scaled by its share as the trainer scales it: the one process's gradient, for the mean terms
    and for the feature term, a sum over the rows (which weighed half as much on two processes,
    and was scaled by the share on an uneven last batch). Batches of 8 (4 + 4) and 7 (4 + 3)."""
    from engine.distributed import Processes

    method = make_bldr(warmup=0)
    method.stage_head_count = 2
    generator, rows, width = torch.Generator().manual_seed(0), 8, 5
    shapes = {"main": C, "negative": C, "features": width, "stage0": C, "stage1": C, "stage0_features": width,
              "stage1_features": width}
    out = {name: 10 * torch.randn(rows, size, generator=generator, requires_grad=True) for name, size in shapes.items()}
    labels, weight = torch.arange(rows) % C, torch.rand(rows, generator=generator)

    def gradients(part, processes, share=1.0):
        method.processes = processes
        loss = share * method.distillation_loss({name: z[part] for name, z in out.items()}, labels[part],
                                                weight[part], share)
        found = torch.autograd.grad(loss, list(out.values()), allow_unused=True)
        return [torch.zeros_like(z) if g is None else g for z, g in zip(out.values(), found)]

    for size in (8, 7):
        whole = gradients(slice(size), Processes())
        parts = [slice(0, 4), slice(4, size)]
        halves = [gradients(part, Processes(rank, 2), (part.stop - part.start) * 2 / size)
                  for rank, part in enumerate(parts)]
        for name, one, first, second in zip(out, whole, *halves):
            torch.testing.assert_close((first + second) / 2, one, msg=f"{name}, batch of {size}")
        assert whole[list(out).index("stage0_features")].abs().max() > 0
