"""The CE baseline: its presets and schedules, its loss, and its clean-score rule (flagged where
the arg-max is not the given label)."""
import math

import torch

from engine import reference as R
from engine.methods.base import Batch, CEStage
from engine.methods.ce import CE
from method_testing import N, C, FixedLogits, index_images, make_method, preset_method, step_at


def test_presets_and_schedules():
    small, paper = preset_method(CE, "small", 10), preset_method(CE, "paper", 10)
    assert (small.config.epochs, small.config.lr, small.config.model, small.config.cosine) == (30, 0.1, "small_cnn", True)
    assert (paper.config.epochs, paper.config.lr, paper.config.model, paper.config.cosine) == (120, 0.02, "preact_resnet18",
                                                                                              False)
    assert [(stage.kind, stage.epochs, stage.lr) for stage in small.stages()] == [(CEStage.CE, 30, 0.1)]
    (stage,) = preset_method(CE, "small", 10, epochs=40).stages()  # a cosine from lr to 0
    assert [round(stage.lr_at(e), 6) for e in (0, 20, 39)] == [0.1, 0.05, round(0.05 * (1 + math.cos(math.pi * 39 / 40)), 6)]
    (stage,) = preset_method(CE, "paper", 10, epochs=60).stages()  # x0.1 at 50% and 75% of the epochs
    assert [round(stage.lr_at(e), 6) for e in (0, 29, 30, 44, 45, 59)] == [0.02, 0.02, 0.002, 0.002, 0.0002, 0.0002]
    assert CE(lr=0.2).configure("paper", 10).lr == 0.2, "an option replaces the preset's value"
    assert not CE(cosine=False).configure("small", 10).cosine


def test_loss_is_cross_entropy_on_the_given_labels():
    method = make_method(CE, warmup=None)
    logits = torch.randn(N, C, generator=torch.Generator().manual_seed(0))
    indices = torch.tensor([5, 0, 11])
    loss = method.loss(FixedLogits(logits), Batch(index_images(indices), indices, method.given_labels[indices]),
                       step_at(method, 0))
    torch.testing.assert_close(loss, R.weighted_ce(logits[indices], method.given_labels[indices]))


def test_clean_scores_flag_where_the_arg_max_is_another_class():
    method = make_method(CE, warmup=None)
    labels = method.given_labels
    probs = torch.full((N, C), 0.7 / (C - 1))
    probs[torch.arange(N), labels] = 0.3             # arg-max on the label despite confidence < 0.5 ...
    wrong = torch.arange(N) % 3 == 0
    probs[wrong] = 0.1
    probs[wrong, labels[wrong]] = 0.3
    probs[wrong, (labels[wrong] + 1) % C] = 0.4      # ... except where another class has more
    torch.testing.assert_close(probs.sum(1), torch.ones(N))
    score, flagged = method.clean_scores({"probs": probs})
    torch.testing.assert_close(score, torch.full((N,), 0.3))
    assert torch.equal(flagged, wrong)
    assert method.state_dict() == {}, "no per-sample state"
