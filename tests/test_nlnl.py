"""NLNL on small hand-made inputs: its stages (warm-up, then NL : SelNL : SelPL : pseudo as
2 : 1 : 1 : 1), presets, the confidence history (a ring buffer of `window` epochs, the mean over
the filled entries), SelNL's and SelPL's selections from it, and its state in state_dict."""
import torch

from engine import reference as R
from engine.methods.base import Batch, Phase, clean_selection
from engine.methods.nlnl import NLNL, NLNLStage
from method_testing import (N, C, FixedLogits, assert_same_state, class_weight, first_epoch_of, index_images,
                            make_method, preset_method, probs_with_confidence, step_at)

KINDS = [Phase.WARMUP, NLNLStage.NL, NLNLStage.SELNL, NLNLStage.SELPL, Phase.PSEUDO]


def all_other_classes(labels, num_classes):
    classes = torch.arange(num_classes).expand(len(labels), num_classes)
    return classes[classes != labels[:, None]].view(len(labels), num_classes - 1)


def end_epochs(method, confidences):
    """end_epoch after each epoch whose confidence on the given labels is a row of `confidences`."""
    for epoch, confidence in enumerate(confidences):
        method.end_epoch(step_at(method, epoch), {"probs": probs_with_confidence(method.given_labels, confidence, C)})


def test_small_preset_stages_split_2_1_1_1_after_the_warmup():
    method = preset_method(NLNL, "small", 10, selective=True)
    config = method.config
    assert (config.epochs, config.warmup_epochs, config.complementary_labels, config.window) == (30, 3, 9, 10)
    assert (config.lr, config.pseudo_lr) == (0.1, 0.05)
    stages = method.stages()
    assert [stage.kind for stage in stages] == KINDS
    rest = 27  # after the 3 warm-up epochs
    nl, selected = round(rest * 2 / 5), round(rest / 5)
    assert [stage.epochs for stage in stages] == [3, nl, selected, selected, rest - nl - 2 * selected]
    assert [stage.lr for stage in stages] == [config.warmup_lr, config.lr, config.lr, config.lr, config.pseudo_lr]
    assert [stage.reset_optimizer for stage in stages] == [False, True, False, False, True]
    assert stages[-1].milestones == (0.5,)


def test_every_stage_gets_an_epoch_down_to_one_per_stage():
    """4 epochs after the warm-up (the fewest): one per stage. 2 : 1 : 1 : 1 rounds to 2, 1, 1 and
    leaves the last none; it used to take that from SelPL, which then never ran."""
    for epochs in range(5, 40):
        stages = preset_method(NLNL, "small", 10, selective=True, epochs=epochs, warmup_epochs=1).stages()
        assert [stage.kind for stage in stages] == KINDS and min(stage.epochs for stage in stages) >= 1
        assert sum(stage.epochs for stage in stages) == epochs
    fewest = preset_method(NLNL, "small", 10, selective=True, epochs=5, warmup_epochs=1).stages()
    assert [stage.epochs for stage in fewest] == [1, 1, 1, 1, 1]


def test_paper_preset_complementary_labels_and_stages():
    ten, hundred = preset_method(NLNL, "paper", 10), preset_method(NLNL, "paper", 100)
    assert ten.config.complementary_labels == 1 and not ten.replacement
    assert hundred.config.complementary_labels == 110 and hundred.replacement, "110 of 99 classes: with replacement"
    stages = ten.stages()
    assert [stage.kind for stage in stages] == KINDS[1:]
    assert [stage.epochs for stage in stages] == [400, 200, 200, 200]
    assert not stages[0].reset_optimizer, "no warm-up: the first stage keeps the initial optimizer"
    assert preset_method(NLNL, "small", 100).config.complementary_labels == 100 - 1


def test_confidence_history_is_a_ring_buffer_averaged_over_its_filled_entries():
    method = make_method(NLNL, window=3, selective=True)
    assert method.history.shape == (N, 3) and method.history.isnan().all()
    torch.testing.assert_close(method.mean_confidence(), torch.zeros(N))  # nothing filled yet
    generator = torch.Generator().manual_seed(0)
    confidences = torch.rand(5, N, generator=generator)
    for seen in range(1, 6):
        method = make_method(NLNL, window=3, selective=True)
        end_epochs(method, confidences[:seen])
        assert int(method.epochs_seen) == seen
        torch.testing.assert_close(method.mean_confidence(), confidences[max(0, seen - 3):seen].mean(0))
    assert torch.equal(method.history[:, 0], confidences[3]), "epoch 4 overwrote epoch 1's slot"


def selpl_reference(logits, labels, selected):
    """SelPL's CE: on the selected rows, times the class weights, divided by the whole batch."""
    return R.weighted_ce(logits, labels, weight=selected * class_weight(labels)[labels]).float()


def nlnl_batch(method):
    indices = torch.arange(N)
    return Batch(index_images(indices), indices, method.given_labels)


def test_selnl_trains_nl_only_on_samples_above_one_over_c():
    method = make_method(NLNL, selective=True, complementary_labels=C - 1)
    history = torch.rand(2, N, generator=torch.Generator().manual_seed(1)) * 0.4  # around 1/C = 0.2
    history[:, :2] = 1 / C  # at 1/C, not over it: left out
    end_epochs(method, history)
    selected = history.mean(0) > 1 / C
    assert selected.any() and not selected[:2].any()
    logits = torch.randn(N, C, generator=torch.Generator().manual_seed(2))
    batch = nlnl_batch(method)
    others = all_other_classes(batch.labels, C)  # k = C - 1 distinct labels: every other class

    sel_nl = step_at(method, first_epoch_of(method, NLNLStage.SELNL))
    loss = method.loss(FixedLogits(logits), batch, sel_nl)
    # NL times the class weights on the selected rows, divided by the whole batch
    weight = class_weight(batch.labels)[batch.labels]
    assert torch.equal(weight.unique(), torch.tensor([1.0, 1.5])), "labels i mod 5 of 12: counts 3, 3, 2, 2, 2"
    torch.testing.assert_close(loss, R.nl_loss(logits, others, weight=selected * weight).float())
    moved = logits.clone()
    moved[~selected] += torch.randn(int((~selected).sum()), C)
    torch.testing.assert_close(method.loss(FixedLogits(moved), batch, sel_nl), loss,
                               msg="the unselected rows do not count")

    nl = step_at(method, first_epoch_of(method, NLNLStage.NL))
    torch.testing.assert_close(method.loss(FixedLogits(logits), batch, nl),
                               R.nl_loss(logits, others, weight=weight).float())
    unweighted = make_method(NLNL, selective=True, complementary_labels=C - 1, class_weights=False)
    torch.testing.assert_close(unweighted.loss(FixedLogits(logits), batch, nl), R.nl_loss(logits, others).float())


def test_selpl_trains_ce_only_on_samples_with_mean_confidence_at_least_one_half():
    method = make_method(NLNL, selective=True, clean_class_share=0.0)  # the paper's rule alone
    first = torch.tensor([0.5, 0.9, 0.2, 0.6, 0.4, 0.5, 1.0, 0.0, 0.7, 0.3, 0.8, 0.55])
    second = torch.tensor([0.5, 0.3, 0.9, 0.2, 0.6, 0.4, 1.0, 0.1, 0.2, 0.8, 0.9, 0.4])
    end_epochs(method, [first, second])
    mean = (first + second) / 2
    selected = mean >= 0.5  # 0.5 exactly is kept
    assert selected[0] and selected.any() and not selected.all()
    logits = torch.randn(N, C, generator=torch.Generator().manual_seed(3))
    batch = nlnl_batch(method)
    sel_pl = step_at(method, first_epoch_of(method, NLNLStage.SELPL))
    loss = method.loss(FixedLogits(logits), batch, sel_pl)
    torch.testing.assert_close(loss, selpl_reference(logits, batch.labels, selected))


def test_selpl_adds_each_classes_most_confident_share_from_the_mean_confidence():
    method = make_method(NLNL, selective=True)  # the short-budget preset: clean_class_share 0.5
    confidence = torch.linspace(0.0, 0.4, N)  # none passes 0.5: SelPL trains on each class's top half
    end_epochs(method, [confidence, confidence])
    expected = clean_selection(confidence, method.given_labels, C, 0.5)
    assert torch.equal(method.selected, expected) and int(expected.sum()) == 7
    logits = torch.randn(N, C, generator=torch.Generator().manual_seed(5))
    batch = nlnl_batch(method)
    loss = method.loss(FixedLogits(logits), batch, step_at(method, first_epoch_of(method, NLNLStage.SELPL)))
    torch.testing.assert_close(loss, selpl_reference(logits, batch.labels, expected))


def test_empty_selections_give_a_zero_loss():
    method = make_method(NLNL, selective=True, clean_class_share=0.0)
    end_epochs(method, [torch.zeros(N)])
    logits = torch.randn(N, C)
    batch = nlnl_batch(method)
    for kind in (NLNLStage.SELNL, NLNLStage.SELPL):
        loss = method.loss(FixedLogits(logits), batch, step_at(method, first_epoch_of(method, kind)))
        assert torch.isfinite(loss) and loss.item() == 0.0, kind


def test_pseudo_stage_keeps_confident_labels_and_relabels_the_rest():
    method = make_method(NLNL, selective=True, clean_class_share=0.0, relabel=True)
    confidence = torch.linspace(0.0, 1.0, N)
    probs = probs_with_confidence(method.given_labels, confidence, C)
    probs[confidence < 0.5] = probs_with_confidence((method.given_labels[confidence < 0.5] + 1) % C,
                                                    torch.full((int((confidence < 0.5).sum()),), 0.9), C)
    method.start_stage(step_at(method, first_epoch_of(method, Phase.PSEUDO)).stage, {"probs": probs})
    expected = torch.where(confidence >= 0.5, method.given_labels, (method.given_labels + 1) % C)
    assert torch.equal(method.pseudo_labels, expected)


def test_short_budget_pseudo_stage_continues_selpl_without_changing_labels():
    method = make_method(NLNL, selective=True)
    assert not method.config.relabel
    confidence = torch.linspace(0.0, 0.4, N)
    end_epochs(method, [confidence])
    selected = clean_selection(confidence, method.given_labels, C, 0.5)
    assert torch.equal(method.selected, selected) and selected.any() and not selected.all()
    confident_elsewhere = probs_with_confidence((method.given_labels + 1) % C, torch.full((N,), 0.9), C)
    pseudo = step_at(method, first_epoch_of(method, Phase.PSEUDO))
    method.start_stage(pseudo.stage, {"probs": confident_elsewhere})
    assert torch.equal(method.pseudo_labels, method.given_labels) and torch.equal(method.selected, selected)

    logits = torch.randn(N, C, generator=torch.Generator().manual_seed(6))
    batch = nlnl_batch(method)
    torch.testing.assert_close(method.loss(FixedLogits(logits), batch, pseudo), selpl_reference(logits, batch.labels,
                                                                                               selected))
    later = [torch.linspace(0.4, 0.0, N)] * 2  # the selection follows the mean confidence, as in SelPL
    end_epochs(method, later)
    assert torch.equal(method.selected, clean_selection(method.mean_confidence(), method.given_labels, C, 0.5))
    assert not torch.equal(method.selected, selected)


def test_history_and_pseudo_labels_are_state_and_round_trip():
    method = make_method(NLNL, window=3, selective=True)
    confidences = torch.rand(4, N, generator=torch.Generator().manual_seed(4))
    end_epochs(method, confidences[:2])  # one slot still empty (NaN)
    method.pseudo_labels = (method.given_labels + 1) % C
    state = method.state_dict()
    assert set(state) == {"pseudo_labels", "history", "epochs_seen", "selected"}
    assert state["history"][:, 2].isnan().all() and int(state["epochs_seen"]) == 2

    fresh = make_method(NLNL, window=3, selective=True)
    fresh.load_state_dict(state)
    assert_same_state(fresh.state_dict(), state)
    torch.testing.assert_close(fresh.mean_confidence(), method.mean_confidence())
    for resumed in (method, fresh):  # a resumed run continues the ring where it stopped
        end_epochs(resumed, confidences[2:])
    assert_same_state(fresh.state_dict(), method.state_dict())


def test_without_selective_stages_no_confidence_history_is_kept():
    method = make_method(NLNL, selective=False)
    assert set(method.state_dict()) == {"pseudo_labels", "selected"}
    end_epochs(method, torch.rand(2, N, generator=torch.Generator().manual_seed(5)))
    assert not method.selected.any(), "NL alone selects nothing"
    assert set(method.state_dict()) == {"pseudo_labels", "selected"}
