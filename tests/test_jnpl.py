"""JNPL on small hand-made inputs: its stages and epoch split, presets, the loss of each stage
(NL+ + lambda PL+ on the rows jnpl_select keeps), the pseudo-label rule, clean scores, and its
per-sample state in state_dict."""
import math

import pytest
import torch

from engine import losses as L
from engine import reference as R
from engine.methods.base import Batch, Phase, clean_selection, confidence_on_labels
from engine.methods.jnpl import COMPLEMENTARY_STREAM, JNPL, JNPLConfig, JNPLStage
from engine.methods.nlnl import NLNL, NLNLConfig, NLNLStage
from method_testing import (N, C, FixedLogits, assert_same_state, class_weight, first_epoch_of, index_images,
                            make_method, preset_method, probs_with_confidence, step_at)


def all_other_classes(labels, num_classes):
    """[B, C - 1]: every class but the label, per row."""
    classes = torch.arange(num_classes).expand(len(labels), num_classes)
    return classes[classes != labels[:, None]].view(len(labels), num_classes - 1)


def test_small_preset_stages_warmup_then_the_1000_to_480_split():
    method = preset_method(JNPL, "small", 10, selective=True)
    config = method.config
    assert (config.epochs, config.warmup_epochs, config.complementary_labels) == (30, 3, 10 - 1)
    warmup, jnpl, pseudo = method.stages()
    assert [s.kind for s in (warmup, jnpl, pseudo)] == [Phase.WARMUP, JNPLStage.JNPL, Phase.PSEUDO]
    first = round(27 * 1000 / 1480)  # the 27 epochs after the warm-up, in the paper's 1000:480 ratio
    assert (warmup.epochs, jnpl.epochs, pseudo.epochs) == (3, first, 27 - first)
    assert (warmup.lr, jnpl.lr, pseudo.lr) == (config.warmup_lr, config.lr, config.pseudo_lr)
    assert (jnpl.milestones, pseudo.milestones) == ((0.8,), (0.4, 0.6))
    assert jnpl.reset_optimizer and pseudo.reset_optimizer, "new SGD after the CE warm-up and for the pseudo stage"


@pytest.mark.parametrize("cls,config,alone,lr", [(JNPL, JNPLConfig, JNPLStage.JNPL, 0.1),
                                                (NLNL, NLNLConfig, NLNLStage.NL, 0.1)])
def test_short_budget_preset_leaves_the_selective_stages_to_the_augmentation(cls, config, alone, lr):
    """A memorization guard: unset in the short-budget preset, then off where the training
    batches are augmented (negative learning alone after the warm-up, decayed along a cosine)
    and on where they are not; the paper presets keep the papers' stages."""
    assert config.preset("small", 10).selective is None
    augmented = preset_method(cls, "small", 10)
    assert augmented.config.selective is False
    warmup, only = augmented.stages()
    assert (warmup.kind, warmup.epochs, only.kind, only.epochs) == (Phase.WARMUP, 3, alone, 27)
    assert only.cosine and only.reset_optimizer and only.lr_at(0) == lr
    assert only.lr_at(26) == pytest.approx(lr / 2 * (1 + math.cos(math.pi * 26 / 27)))
    plain = preset_method(cls, "small", 10, augment=False)
    assert plain.config.selective is True and Phase.PSEUDO in [stage.kind for stage in plain.stages()]
    assert preset_method(cls, "paper", 10).config.selective is True


@pytest.mark.parametrize("cls", [JNPL, NLNL])
def test_without_the_selective_stages_samples_are_flagged_where_the_arg_max_is_another_class(cls):
    """Below 0.5 on the given label but still its arg-max: kept without the selective stages,
    half of them flagged with them (each class's less confident half); elsewhere: flagged."""
    labels = torch.arange(N) % C
    probs = probs_with_confidence(labels, torch.full((N,), 0.4), C)  # 0.15 on each other class
    elsewhere = torch.arange(N) % 3 == 0
    probs[elsewhere] = probs_with_confidence((labels[elsewhere] + 1) % C, torch.full((int(elsewhere.sum()),), 0.9), C)
    score, flagged = make_method(cls, selective=False).clean_scores({"probs": probs})
    torch.testing.assert_close(score, confidence_on_labels(probs, labels))
    assert torch.equal(flagged, elsewhere)
    _, flagged_by_selection = make_method(cls, selective=True).clean_scores({"probs": probs})
    assert flagged_by_selection[elsewhere].all() and flagged_by_selection[~elsewhere].sum() > 0


def test_paper_preset_has_no_warmup_and_one_complementary_label():
    method = preset_method(JNPL, "paper", 10)
    assert method.config.complementary_labels == 1 and not method.replacement
    jnpl, pseudo = method.stages()
    assert (jnpl.kind, jnpl.epochs, pseudo.kind, pseudo.epochs) == (JNPLStage.JNPL, 1000, Phase.PSEUDO, 480)
    assert not jnpl.reset_optimizer
    assert preset_method(JNPL, "small", 100).config.complementary_labels == 100 - 1
    # NLNL's code weighs by the given labels' class counts, JNPL's paper does not (it has no code)
    assert not method.config.class_weights and preset_method(JNPL, "small", 10).config.class_weights
    assert all(preset_method(NLNL, size, 10).config.class_weights for size in ("paper", "small"))


def test_paper_preset_draws_110_complementary_labels_on_100_classes():
    """The paper gives CIFAR-100 110 complementary labels per sample (section 6.1, as NLNL);
    the preset had 1, which learns about 100 times more slowly there."""
    hundred = preset_method(JNPL, "paper", 100)
    assert hundred.config.complementary_labels == 110 and hundred.replacement, "110 of 99 classes: with replacement"


def test_a_short_pseudo_stage_starts_at_its_own_lr():
    """A milestone that rounds to the stage's first epoch (40% of 1 epoch) dropped the lr before
    any epoch ran at it: JNPL's pseudo stage of 6 epochs without augmentation (3 warm-up, 2 JNPL,
    1 pseudo) ran wholly at pseudo_lr / 10, NLNL's of 8 likewise."""
    for cls, epochs in ((JNPL, 6), (NLNL, 8)):
        pseudo = preset_method(cls, "small", 10, epochs=epochs, selective=True).stages()[-1]
        assert (pseudo.kind, pseudo.epochs) == (Phase.PSEUDO, 1)
        assert pseudo.lr_at(0) == pseudo.lr > 0
    two = preset_method(JNPL, "small", 10, epochs=8, selective=True).stages()[-1]  # x0.1 at 40% and 60%: both at 1
    assert (two.epochs, two.lr_at(0)) == (2, two.lr) and two.lr_at(1) == pytest.approx(two.lr / 100)


def test_pseudo_labels_are_fixed_at_the_start_of_the_pseudo_stage():
    method = make_method(JNPL, selective=True, clean_class_share=0.0, relabel=True)  # the paper's rule alone
    labels = method.given_labels
    confidence = torch.tensor([0.9, 0.5, 0.49, 0.1, 0.6, 0.3, 0.2, 0.7, 0.5, 0.0, 0.45, 1.0])
    probs = probs_with_confidence(labels, confidence, C)
    other = (labels + 2) % C  # the rest of a low-confidence row's mass, its arg-max
    low = confidence < 0.5
    probs[low] = 0.0
    probs[low, labels[low]] = confidence[low]
    probs[low, other[low]] = 1 - confidence[low]
    tie = confidence == 0.5  # the rest on class 0, the arg-max of a tie: only ">= 0.5" keeps the label
    assert (labels[tie] > 0).all()
    probs[tie] = 0.0
    probs[tie, labels[tie]] = 0.5
    probs[tie, 0] = 0.5
    assert torch.equal(probs[torch.arange(N), labels], confidence)
    assert (probs.argmax(1)[tie] == 0).all()
    outputs = {"probs": probs}

    jnpl_stage = step_at(method, first_epoch_of(method, JNPLStage.JNPL)).stage
    method.start_stage(jnpl_stage, outputs)
    assert torch.equal(method.pseudo_labels, labels), "only the pseudo stage fixes labels"

    pseudo = step_at(method, first_epoch_of(method, Phase.PSEUDO))
    method.start_stage(pseudo.stage, outputs)
    expected = torch.where(confidence >= 0.5, labels, probs.argmax(1))
    assert torch.equal(method.pseudo_labels, expected)
    assert torch.equal(method.pseudo_labels[low], other[low]) and torch.equal(method.pseudo_labels[~low], labels[~low])

    logits = torch.randn(N, C, generator=torch.Generator().manual_seed(0))
    indices = torch.tensor([2, 3, 9, 0])
    batch = Batch(index_images(indices), indices, labels[indices])
    loss = method.loss(FixedLogits(logits), batch, pseudo)
    torch.testing.assert_close(loss, R.weighted_ce(logits[indices], expected[indices]))
    warmup = step_at(method, 0)
    assert warmup.stage.kind is Phase.WARMUP
    torch.testing.assert_close(method.loss(FixedLogits(logits), batch, warmup),
                               R.weighted_ce(logits[indices], labels[indices]))


def test_clean_selection_adds_each_classes_most_confident_share_to_the_threshold():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    confidence = torch.tensor([0.9, 0.8, 0.1, 0.2, 0.3, 0.05, 0.2, 0.4, 0.6, 0.01])
    assert torch.equal(clean_selection(confidence, labels, 4, 0.0), confidence >= 0.5)  # the paper's rule
    # class 0's two above 0.5 are its top half; class 1 (none above 0.5) keeps its top two;
    # class 2 its one; class 3 has no samples
    half = torch.tensor([1, 1, 0, 0, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    assert torch.equal(clean_selection(confidence, labels, 4, 0.5), half)
    quarter = torch.tensor([1, 1, 0, 0, 0, 0, 0, 1, 1, 0], dtype=torch.bool)  # one of four; class 2's 0.6 passes
    assert torch.equal(clean_selection(confidence, labels, 4, 0.25), quarter)
    assert clean_selection(confidence, labels, 4, 1.0).all()


def test_pseudo_stage_relabels_all_but_each_classes_most_confident_half():
    # the short-budget preset's selection, the paper's relabeling
    method = make_method(JNPL, selective=True, relabel=True)
    assert method.config.clean_class_share == 0.5
    labels = method.given_labels  # i mod 5: classes of 3, 3, 2, 2, 2 samples
    confidence = torch.linspace(0.05, 0.3, N)  # none passes 0.5
    probs = probs_with_confidence((labels + 1) % C, 1 - confidence, C)
    probs[torch.arange(N), labels] = confidence
    probs /= probs.sum(1, keepdim=True)
    method.start_stage(step_at(method, first_epoch_of(method, Phase.PSEUDO)).stage, {"probs": probs})
    kept = torch.arange(N) >= 5  # each class's round(0.5 * size) most confident: 2 of 3, 1 of 2 (samples 5-11)
    assert torch.equal(method.pseudo_labels, torch.where(kept, labels, (labels + 1) % C))
    batch = Batch(index_images(torch.arange(N)), torch.arange(N), labels)
    logits = torch.randn(N, C, generator=torch.Generator().manual_seed(2))
    loss = method.loss(FixedLogits(logits), batch, step_at(method, first_epoch_of(method, Phase.PSEUDO)))
    torch.testing.assert_close(loss, R.weighted_ce(logits, method.pseudo_labels).float())


def class_balanced_confidence(logits, labels):
    """p_y / the mean p_y of the row's given class, class by class."""
    confidence = torch.softmax(logits.double(), 1).gather(1, labels[:, None]).squeeze(1)
    balanced = torch.empty_like(confidence)
    for c in labels.unique():
        members = labels == c
        balanced[members] = confidence[members] / confidence[members].mean()
    return balanced


@pytest.mark.parametrize("class_balanced", [False, True])
def test_short_budget_pseudo_stage_changes_no_label_and_keeps_nl_plus_on_the_unselected(class_balanced):
    method = make_method(JNPL, selective=True, complementary_labels=C - 1, class_balanced=class_balanced)
    assert not method.config.relabel and preset_method(JNPL, "paper", 10).config.relabel
    labels, rows = method.given_labels, torch.arange(N)
    confident = torch.full((N,), 0.9)
    probs = probs_with_confidence((labels + 1) % C, confident, C)  # the model's arg-max: another class
    probs[:6] = probs_with_confidence(labels[:6], confident[:6], C)  # samples 0-5: their given label
    on_label = confidence_on_labels(probs, labels)
    pseudo = step_at(method, first_epoch_of(method, Phase.PSEUDO), step=5)
    method.start_stage(pseudo.stage, {"probs": probs})
    assert torch.equal(method.pseudo_labels, labels), "no label changes"
    selected = clean_selection(on_label, labels, C, 0.5)
    assert torch.equal(method.selected, selected) and selected[:6].all() and not selected.all()

    logits = torch.randn(N, C, generator=torch.Generator().manual_seed(4))
    batch = Batch(index_images(rows), rows, labels)
    loss = method.loss(FixedLogits(logits), batch, pseudo)
    weight, by_class = selected.double(), class_weight(labels)[labels].double()  # and the class weights
    if class_balanced:  # NL+ as CE times p_y scaled per class (over the whole batch), on the unselected
        negative = R.weighted_ce(logits, labels,
                                 weight=(1 - weight) * by_class * class_balanced_confidence(logits, labels))
    else:
        negative = R.nl_loss(logits, all_other_classes(labels, C), plus=True, weight=(1 - weight) * by_class)
    torch.testing.assert_close(loss, (R.weighted_ce(logits, labels, weight=weight * by_class) + negative).float())


def jnpl_logits():
    """Half the rows confident (PL+ candidates: every other class below 1/C), half split
    between two classes (never candidates)."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(N, C, generator=generator) * 0.3
    rows = torch.arange(N)
    top = torch.randint(0, C, (N,), generator=generator)
    logits[rows[::2], top[::2]] += 6.0
    logits[rows[1::2], top[1::2]] += 3.0
    logits[rows[1::2], (top[1::2] + 1) % C] += 3.0
    return logits


@pytest.mark.parametrize("pl_weight", [None, 0.5])
def test_jnpl_loss_is_nl_plus_and_weighted_pl_plus_on_the_selected_rows(pl_weight):
    options = {} if pl_weight is None else {"pl_weight": pl_weight}
    method = make_method(JNPL, complementary_labels=C - 1, class_balanced=False, class_weights=False, **options)
    weight = 0.01 if pl_weight is None else pl_weight
    assert method.config.pl_weight == weight
    logits = jnpl_logits()
    indices = torch.arange(N)
    batch = Batch(index_images(indices), indices, method.given_labels)
    step = step_at(method, first_epoch_of(method, JNPLStage.JNPL), step=17)
    loss = method.loss(FixedLogits(logits), batch, step)

    keep, yhat = L.jnpl_select(logits, seed=0, offset=17)
    comp = L.sample_complementary(batch.labels, C, k=C - 1, replacement=False, seed=0,
                                  offset=COMPLEMENTARY_STREAM + 17)
    torch.testing.assert_close(loss, L.nl_plus_loss(logits, comp) + weight * L.pl_plus_loss(logits[keep], yhat[keep]))

    candidates, top, _ = R.jnpl_candidates(logits)
    assert keep.any() and not keep.all() and not (keep & ~candidates).any(), "PL+ only on (some) candidates"
    assert torch.equal(yhat[keep], top[keep])
    # k = C - 1 distinct labels: every class but the given one, whatever the draw.
    others = all_other_classes(batch.labels, C)
    expected = R.nl_loss(logits, others, plus=True) + weight * R.pl_plus_loss(logits[keep], yhat[keep])
    torch.testing.assert_close(loss, expected.float())

    # The gradient too: PL+ reaches the kept rows alone (the engine masks instead of indexing).
    leaf = logits.clone().requires_grad_()
    (grad,) = torch.autograd.grad(method.loss(FixedLogits(leaf), batch, step), leaf)
    leaf = logits.double().requires_grad_()
    (expected_grad,) = torch.autograd.grad(
        R.nl_loss(leaf, others, plus=True) + weight * R.pl_plus_loss(leaf[keep], yhat[keep]), leaf)
    torch.testing.assert_close(grad, expected_grad.float())
    leaf = logits.clone().requires_grad_()
    (nl_grad,) = torch.autograd.grad(L.nl_plus_loss(leaf, others), leaf)
    torch.testing.assert_close(grad[~keep], nl_grad[~keep])
    assert not torch.allclose(grad[keep], nl_grad[keep])


def test_pl_plus_selection_and_complementary_labels_are_drawn_apart():
    """With one complementary label (the paper's preset) a row's complementary label and whether PL+
    keeps it are independent: they used to share a row's first Philox draw, so here the kept rows
    drew the lowest allowed class half of the time and the others never (1/4 each expected)."""
    method = make_method(JNPL, complementary_labels=1, class_balanced=False)
    rows = 20_000
    logits = torch.zeros(rows, C)
    logits[:, 0] = math.log(C - 1)  # every row a PL+ candidate (the others' p < 1 / C), kept with p_0 = 1/2
    labels = torch.arange(rows) % (C - 1) + 1
    batch = Batch(torch.zeros(rows, 1), torch.arange(rows), labels)
    step = step_at(method, first_epoch_of(method, JNPLStage.JNPL), step=5)
    keep, _ = method.select(logits, batch, step)
    lowest = method.complementary(batch, step)[:, 0] == torch.where(labels == 0, 1, 0)
    assert 0.45 < keep.float().mean() < 0.55
    for part in (keep, ~keep):
        assert abs(lowest[part].float().mean().item() - 1 / (C - 1)) < 0.02


@pytest.mark.parametrize("rows", [N, N - 1])
def test_pl_plus_on_two_processes_is_the_mean_over_the_global_batchs_kept_rows(rows):
    """What DDP's average of two processes' gradients makes of the parts of a batch (the trainer
    scaling each loss by its share): the one process's gradient. PL+ was a mean over each
    process's own kept rows, so pl_weight weighed differently on two processes."""
    from engine.distributed import Processes

    class TwoProcesses(Processes):  # the sum over both processes of what all_reduce is given
        def all_reduce(self, tensor):
            return tensor.new_tensor(float(whole_keep.sum()))

    method = make_method(JNPL, complementary_labels=C - 1, class_balanced=False)
    logits, labels = jnpl_logits()[:rows], method.given_labels[:rows]
    step = step_at(method, first_epoch_of(method, JNPLStage.JNPL), step=17)

    def gradient(part, processes, share=1.0):
        method.processes = processes
        leaf = logits.clone().requires_grad_()  # FixedLogits reads the part's rows of it
        batch = Batch(index_images(torch.arange(rows)[part]), torch.arange(rows)[part], labels[part],
                      first_row=part.start, share=share)
        (grad,) = torch.autograd.grad(share * method.loss(FixedLogits(leaf), batch, step), leaf)
        return grad

    whole_keep = method.select(logits, Batch(None, torch.arange(rows), labels), step)[0]
    assert 0 < whole_keep.sum() < rows
    whole = gradient(slice(0, rows), Processes())
    parts = [slice(0, N // 2), slice(N // 2, rows)]
    halves = [gradient(part, TwoProcesses(rank, 2), (part.stop - part.start) * 2 / rows)
              for rank, part in enumerate(parts)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)


def test_jnpl_loss_without_a_kept_row_is_nl_plus_alone():
    method = make_method(JNPL, complementary_labels=C - 1, class_balanced=False)
    logits = torch.zeros(N, C)  # uniform rows: no class stands out, so no PL+ candidate
    indices = torch.arange(N)
    batch = Batch(index_images(indices), indices, method.given_labels)
    step = step_at(method, first_epoch_of(method, JNPLStage.JNPL), step=3)
    assert not L.jnpl_select(logits, seed=0, offset=3)[0].any()
    loss = method.loss(FixedLogits(logits), batch, step)
    by_class = class_weight(batch.labels)[batch.labels]  # NL+ on the given labels: times the class weights
    assert torch.equal(by_class.unique(), torch.tensor([1.0, 1.5])), "labels i mod 5 of 12: counts 3, 3, 2, 2, 2"
    torch.testing.assert_close(loss, L.nl_plus_loss(logits, all_other_classes(batch.labels, C), weight=by_class))
    assert torch.isfinite(loss)
    unweighted = make_method(JNPL, complementary_labels=C - 1, class_balanced=False, class_weights=False)
    torch.testing.assert_close(unweighted.loss(FixedLogits(logits), batch, step),
                               L.nl_plus_loss(logits, all_other_classes(batch.labels, C)))


def test_class_balanced_jnpl_stage_has_nl_plus_gradient_over_the_class_mean_confidence():
    method = make_method(JNPL, complementary_labels=C - 1)
    assert method.config.class_balanced, "the short-budget preset"
    logits = jnpl_logits()
    indices = torch.arange(N)
    batch = Batch(index_images(indices), indices, method.given_labels)
    step = step_at(method, first_epoch_of(method, JNPLStage.JNPL), step=17)
    leaf = logits.clone().requires_grad_()
    loss = method.loss(FixedLogits(leaf), batch, step)
    (grad,) = torch.autograd.grad(loss, leaf)

    keep, yhat = L.jnpl_select(logits, seed=0, offset=17)
    labels = batch.labels
    balanced = class_balanced_confidence(logits, labels) * class_weight(labels)[labels]  # PL+ (arg-maxes): unweighted
    expected = R.weighted_ce(logits, labels, weight=balanced) + 0.01 * R.pl_plus_loss(logits[keep], yhat[keep])
    torch.testing.assert_close(loss, expected.float())
    # The same gradient as NL+ over every other class, each row divided by its class's mean p_y.
    reference = logits.double().requires_grad_()
    confidence = torch.softmax(logits.double(), 1).gather(1, labels[:, None]).squeeze(1)
    scale = balanced / confidence
    expected_loss = (R.nl_loss(reference, all_other_classes(labels, C), plus=True, weight=scale)
                     + 0.01 * R.pl_plus_loss(reference[keep], yhat[keep]))
    (expected_grad,) = torch.autograd.grad(expected_loss, reference)
    torch.testing.assert_close(grad, expected_grad.float())
    assert scale.max() > 2 * scale.min(), "the classes' mean confidences differ"


def test_class_balanced_needs_every_other_class_as_complementary_label():
    with pytest.raises(ValueError, match="class_balanced needs complementary_labels = num_classes - 1 = 4.*got 1"):
        make_method(JNPL, complementary_labels=1)
    assert preset_method(JNPL, "small", 10).config.class_balanced
    assert not preset_method(JNPL, "paper", 10).config.class_balanced


def test_one_complementary_label_per_step_is_redrawn_and_never_the_given_label():
    method = make_method(JNPL, selective=True, complementary_labels=1, class_balanced=False)
    assert method.k == 1 and not method.replacement
    labels = torch.arange(200) % C
    batch = Batch(index_images(torch.arange(200)), torch.arange(200), labels)
    epoch = first_epoch_of(method, JNPLStage.JNPL)
    drawn = torch.cat([method.complementary(batch, step_at(method, epoch, step=s)) for s in range(30)], 1)
    assert drawn.shape == (200, 30) and not (drawn == labels[:, None]).any()
    assert not torch.equal(drawn[:, 0], drawn[:, 1]), "a new draw at every step"
    assert torch.equal(drawn[:, 3], method.complementary(batch, step_at(method, epoch, step=3))[:, 0]), "seeded"


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_clean_scores_flag_what_the_pseudo_stage_would_not_take_as_clean(share):
    method = make_method(JNPL, selective=True, clean_class_share=share)
    confidence = torch.linspace(0.0, 1.0, N)
    score, flagged = method.clean_scores({"probs": probs_with_confidence(method.given_labels, confidence, C)})
    torch.testing.assert_close(score, confidence)
    assert torch.equal(flagged, ~clean_selection(confidence, method.given_labels, C, share))
    assert torch.equal(flagged, confidence < 0.5) == (share == 0.0), "sample 5 (0.45) is its class's 2nd of 3"


@pytest.mark.parametrize("relabel", [True, False])
def test_pseudo_labels_and_selection_are_state_and_round_trip(relabel):
    method = make_method(JNPL, selective=True, clean_class_share=0.0, relabel=relabel)
    probs = probs_with_confidence((method.given_labels + 1) % C, torch.full((N,), 0.9), C)
    probs[:4] = probs_with_confidence(method.given_labels[:4], torch.full((4,), 0.9), C)
    method.start_stage(step_at(method, first_epoch_of(method, Phase.PSEUDO)).stage, {"probs": probs})
    state = method.state_dict()
    assert set(state) == {"pseudo_labels", "selected"}
    relabeled = torch.where(torch.arange(N) < 4, method.given_labels, (method.given_labels + 1) % C)
    assert torch.equal(state["pseudo_labels"], relabeled if relabel else method.given_labels)
    assert int(state["selected"].sum()) == (0 if relabel else 4)

    fresh = make_method(JNPL, selective=True, relabel=relabel)
    assert torch.equal(fresh.pseudo_labels, fresh.given_labels) and not fresh.selected.any()
    fresh.load_state_dict(state)
    assert_same_state(fresh.state_dict(), state)
