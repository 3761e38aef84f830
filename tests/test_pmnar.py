"""PMNAR's pieces on small hand-made inputs: peer weights, the ablation switches, history
exclusion, the consistency term, and its per-sample state in state_dict."""
import torch
from torch import nn

from engine import reference as R
from engine.methods.base import Batch, class_mean_one
from engine.methods.pmnar import PMNAR, PMNARStage
from method_testing import N, C, FixedLogits, assert_same_state, index_images, make_method, random_probs, step_at


ADAPTIVE = {"reweighting": True, "history": True}  # off in the short-budget preset on augmented images


def outputs_of(probs):
    """PMNAR.predict's outputs over the training set from per-network probabilities [N, networks, C]."""
    return {"probs": probs.mean(1), "network_probs": probs}


def test_pmnar_weights_come_from_the_peer_network_after_the_warmup():
    method = make_method(PMNAR, warmup=2, class_balanced=False, **ADAPTIVE)  # eq. 4 as written
    probs = random_probs(N, 2, C)
    outputs = outputs_of(probs)
    method.end_epoch(step_at(method, 0), outputs)  # epoch 1 of a 2-epoch warm-up: nothing changes
    assert torch.equal(method.weights, torch.ones(2, N)) and not method.history.any()
    method.end_epoch(step_at(method, 1), outputs)
    confidence = probs[torch.arange(N), :, method.given_labels]  # [N, 2]
    torch.testing.assert_close(method.weights[0], confidence[:, 1] - confidence[:, 1].min())
    torch.testing.assert_close(method.weights[1], confidence[:, 0] - confidence[:, 0].min())


def test_pmnar_single_network_is_weighted_by_itself_and_switches_work():
    method = make_method(PMNAR, warmup=0, single_network=True, class_balanced=False, **ADAPTIVE)
    probs = random_probs(N, 1, C)
    method.end_epoch(step_at(method, 0), outputs_of(probs))
    confidence = probs[torch.arange(N), 0, method.given_labels]
    torch.testing.assert_close(method.weights[0], confidence - confidence.min())

    off = make_method(PMNAR, warmup=0, reweighting=False, history=False, consistency=False)
    probs = random_probs(N, 2, C)
    off.end_epoch(step_at(off, 0), outputs_of(probs))
    assert torch.equal(off.weights, torch.ones(2, N)) and not off.history.any()
    assert off.second_view is None and make_method(PMNAR).second_view == "strong"


def test_short_budget_weights_are_scaled_to_mean_one_per_given_class():
    method = make_method(PMNAR, warmup=0, **ADAPTIVE)
    assert method.config.class_balanced
    probs = random_probs(N, 2, C, seed=3)
    method.end_epoch(step_at(method, 0), outputs_of(probs))
    labels = method.given_labels
    for k, peer in ((0, 1), (1, 0)):
        confidence = probs[torch.arange(N), peer, labels]
        plain = confidence - confidence.min()
        for c in range(C):
            members = labels == c
            torch.testing.assert_close(method.weights[k, members], plain[members] / plain[members].mean())

def test_class_mean_one_divides_by_the_class_mean_and_gives_an_all_zero_class_ones():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    weights = torch.tensor([[1.0, 3.0, 0.0, 0.0, 0.0, 0.5], [2.0, 2.0, 1.0, 2.0, 3.0, 4.0]])
    expected = torch.tensor([[0.5, 1.5, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.5, 1.0, 1.5, 1.0]])
    torch.testing.assert_close(class_mean_one(weights, labels, 4), expected)
    torch.testing.assert_close(class_mean_one(weights[1], labels, 4), expected[1])  # one row: the same


def test_pmnar_history_accumulates_arg_maxes_and_is_excluded_from_the_loss():
    method = make_method(PMNAR, warmup=0, consistency=False, **ADAPTIVE)
    first, second = random_probs(N, 2, C, seed=1), random_probs(N, 2, C, seed=2)
    method.end_epoch(step_at(method, 0), outputs_of(first))
    method.end_epoch(step_at(method, 1), outputs_of(second))
    expected = torch.zeros(N, C, dtype=torch.bool)
    for probs in (first, second):  # the first network's arg-max, ever
        expected[torch.arange(N), probs[:, 0].argmax(1)] = True
    assert torch.equal(method.history, expected)

    logits = [torch.randn(N, C), torch.randn(N, C)]
    model = nn.ModuleList([FixedLogits(z) for z in logits])
    indices = torch.tensor([3, 7, 0, 11])
    batch = Batch(index_images(indices), indices, method.given_labels[indices])
    loss = method.loss(lambda x: [net(x) for net in model], batch, step_at(method, 2))
    expected_loss = sum(R.pm_loss(z[indices], batch.labels, expected[indices], weight=method.weights[k, indices])
                        for k, z in enumerate(logits))
    torch.testing.assert_close(loss, expected_loss.float())


def test_pmnar_consistency_is_the_kl_from_the_mean_prediction_to_each_augmented_view():
    method = make_method(PMNAR, warmup=5, history=False, beta=0.5)
    clean, augmented = [torch.randn(N, C) for _ in range(2)], [torch.randn(N, C) for _ in range(2)]
    indices = torch.arange(4)
    batch = Batch(index_images(indices), indices, method.given_labels[indices], index_images(indices + N))
    table = [torch.cat([a, b]) for a, b in zip(clean, augmented)]
    loss = method.loss(lambda x: [FixedLogits(t)(x) for t in table], batch, step_at(method, 0))
    target = torch.stack([torch.softmax(z[indices], 1) for z in clean]).mean(0)
    kl = [(target * (target.log() - torch.log_softmax(a[indices], 1))).sum(1).mean() for a in augmented]
    expected = sum(R.pm_loss(z[indices], batch.labels) for z in clean) + 0.5 * sum(kl)
    torch.testing.assert_close(loss, expected.float())


def test_pmnar_stage_and_options():
    method = make_method(PMNAR, warmup=3)
    (stage,) = method.stages()  # the warm-up is PMNAR's own loss with all weights 1: one stage
    # the short-budget preset: a cosine from lr to 0 over the run
    assert (stage.kind, stage.epochs, stage.lr, stage.cosine) == (PMNARStage.PMNAR, 10, 0.1, True)
    assert [round(stage.lr_at(e), 6) for e in (0, 5)] == [0.1, 0.05]
    (steps,) = make_method(PMNAR, warmup=3, cosine=False).stages()  # the paper's x0.1 at 40% and 80%
    assert (steps.cosine, steps.milestones) == (False, (0.4, 0.8)) and not PMNAR().configure("paper", 10).cosine
    assert method.config.beta == 1.0 and PMNAR().configure("small", 100).beta == 0.1
    assert make_method(PMNAR, view="weak").second_view == "weak"
    assert make_method(PMNAR, beta=0.0).second_view is None, "beta 0 switches the consistency view off"


def test_short_budget_uses_the_adaptive_parts_where_training_batches_are_not_augmented():
    assert PMNAR.Config.preset("small", 10).reweighting is None and PMNAR.Config.preset("small", 10).history is None
    parts = lambda config: (config.reweighting, config.history)  # noqa: E731
    assert parts(PMNAR().configure("small", 10)) == (False, False), "augmented images"
    assert parts(PMNAR(augment=False).configure("small", 10)) == (True, True)
    assert parts(PMNAR(model="mlp").configure("small", 10)) == (True, True), "feature vectors are never augmented"
    assert parts(PMNAR(augment=False, reweighting=False).configure("small", 10)) == (False, True), "an option wins"
    assert parts(PMNAR(history=True).configure("small", 10)) == (False, True)
    assert parts(PMNAR().configure("paper", 10)) == (True, True), "the paper's 300 epochs memorize"
    assert parts(PMNAR(epochs=20).configure("paper", 10)) == (False, False), "a short budget on paper-scale data"


def test_pmnar_state_round_trips_through_state_dict():
    method = make_method(PMNAR, warmup=0, **ADAPTIVE)
    for epoch in range(2):
        method.end_epoch(step_at(method, epoch), outputs_of(random_probs(N, 2, C, seed=epoch)))
    state = method.state_dict()
    assert set(state) == {"weights", "history"}, "per-sample state only (given labels are not state)"
    assert state["history"].any() and not torch.equal(state["weights"], torch.ones(2, N))

    fresh = make_method(PMNAR, warmup=0, **ADAPTIVE)
    assert not torch.equal(fresh.weights, method.weights)
    fresh.load_state_dict(state)
    assert_same_state(fresh.state_dict(), state)


def test_pmnar_flags_where_the_mean_prediction_is_another_class():
    method = make_method(PMNAR, warmup=0)
    labels = method.given_labels
    network_probs = torch.full((N, 2, C), 0.6 / (C - 1))
    network_probs[torch.arange(N), :, labels] = 0.4   # unsure (below the paper's 0.5), arg-max on the label
    wrong = torch.arange(N) % 4 == 0
    network_probs[wrong, 0] = 0.1
    network_probs[wrong, 0, (labels[wrong] + 1) % C] = 1.0 - 0.1 * (C - 1)  # network 0 sure of another class
    score, flagged = method.clean_scores(outputs_of(network_probs))
    torch.testing.assert_close(score, network_probs.mean(1)[torch.arange(N), labels])
    assert torch.equal(flagged, wrong) and (score[~wrong] < 0.5).all()
