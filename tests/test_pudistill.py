"""PU-distillation's pieces: the vmapped filter ensemble equals separately trained models, the
bootstrap sets follow Alg. 1 line 6, acceptance needs theta votes of exactly one class, the
student targets follow eqs. 4-6, mixup mixes images and targets alike, the student's loss is the
soft-target CE, what prepare computes is in state_dict, and bad options raise a ConfigError that
names the field."""
import re

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from engine.config import ConfigError
from engine.methods.base import Batch, Stage, Step
from engine.methods.pudistill import (FILTER_BATCH, FILTER_LR, BinaryEnsemble, BinaryFilter, PUDistill,
                                      PUDistillConfig, PUDistillStage, accept, bootstrap_sets, fit_network, mixup)


def test_vmap_ensemble_equals_separately_trained_models():
    torch.manual_seed(0)
    members, feature_dim, steps = 4, 6, 5
    features = torch.randn(300, feature_dim)
    samples = torch.stack([torch.randperm(300)[:150] for _ in range(members)])  # each member its own rows
    targets = (torch.rand(members, 150) < 0.5).float()
    models = [BinaryFilter(feature_dim) for _ in range(members)]
    separate = [BinaryFilter(feature_dim) for _ in range(members)]
    for model, copy in zip(models, separate):
        copy.load_state_dict(model.state_dict())

    ensemble = BinaryEnsemble(models)
    ensemble.fit(features, samples, targets, steps, torch.Generator().manual_seed(3))

    generator = torch.Generator().manual_seed(3)  # the same mini-batch positions, step by step
    optimizers = [torch.optim.Adam(model.parameters(), lr=FILTER_LR) for model in separate]
    for _ in range(steps):
        positions = torch.randint(0, 150, (FILTER_BATCH,), generator=generator)
        for k, (model, optimizer) in enumerate(zip(separate, optimizers)):
            loss = F.binary_cross_entropy_with_logits(model(features[samples[k, positions]]), targets[k, positions])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    for k, model in enumerate(separate):
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(ensemble.params[name][k], parameter.detach(), rtol=1e-5, atol=1e-6)
    expected = torch.stack([torch.sigmoid(model(features)) for model in separate]).detach()
    torch.testing.assert_close(ensemble.probabilities(features), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected[0], expected[1])  # the members did train differently


def test_bootstrap_sets_follow_algorithm_1():
    rng = np.random.default_rng(0)
    clean_by_class = [np.arange(0, 11), np.arange(11, 18), np.arange(18, 30)]  # class 0: m + |clean| odd
    noisy = np.arange(30, 200)
    accepted_by_class = [np.arange(30, 34), np.arange(34, 80), np.array([], dtype=np.int64)]
    filters = 3
    samples, targets = bootstrap_sets(clean_by_class, accepted_by_class, noisy, filters, rng)
    assert samples.shape == targets.shape and samples.shape[0] == 3 * filters
    for member in range(3 * filters):
        cls = member // filters
        clean, accepted = set(clean_by_class[cls]), set(accepted_by_class[cls])
        other_clean = set(np.concatenate([c for i, c in enumerate(clean_by_class) if i != cls]))
        positives = set(samples[member][targets[member] == 1].tolist())
        negatives = set(samples[member][targets[member] == 0].tolist())
        m = min(len(clean), len(accepted))
        m_negative = -(-(m + len(clean)) // 2)
        assert clean <= positives and positives <= clean | accepted
        assert len(positives - clean) == m  # P' has m accepted samples (the padding only repeats)
        assert len(negatives & other_clean) == m_negative
        assert len(negatives - other_clean) == m_negative and not (negatives - other_clean) & accepted
        assert (negatives - other_clean) <= set(noisy)


def test_accept_needs_theta_votes_of_exactly_one_class():
    filters = 4
    probabilities = torch.zeros(3 * filters, 5)  # 3 classes x 4 members, 5 samples
    probabilities[0:4, 0] = 0.95                 # sample 0: all of class 0 -> class 0
    probabilities[4:7, 1] = 0.95                 # sample 1: 3 of class 1 -> class 1 at theta 3
    probabilities[8:10, 2] = 0.95                # sample 2: 2 votes -> none
    probabilities[0:4, 3] = probabilities[8:12, 3] = 0.99  # sample 3: two classes -> none
    probabilities[4:8, 4] = 0.875                # sample 4: below alpha -> none
    assert accept(probabilities, filters, alpha=0.9, agree=3).tolist() == [0, 1, -1, -1, -1]
    assert accept(probabilities, filters, alpha=0.8, agree=3).tolist() == [0, 1, -1, -1, 1]
    assert accept(probabilities, filters, alpha=0.875, agree=3).tolist() == [0, 1, -1, -1, 1], "sigmoid >= alpha"


def make_method(targets="soft", lam=0.5, eta=0.9):
    method = PUDistill(epochs=3, batch_size=8, lr=0.05, rounds=1, trunk_epochs=1, teachers=2, teacher_epochs=1,
                       cosine=True, filters=20, agree=19, alpha=0.9, filter_steps=10, targets=targets, lambda_=lam,
                       eta=eta, mixup=True, entropy=0.1)
    config = method.configure("small", 3)
    method.bind(config, torch.tensor([0, 1, 2, 0]), 3, seed=0, device="cpu")
    return method


@pytest.mark.parametrize("kind", ["soft", "hard_bootstrap", "hard"])
def test_student_targets(kind):
    method = make_method(kind, lam=0.3)  # lambda_ != 1 - lambda_: the teacher's share is lambda_
    method.accepted_class = torch.tensor([-1, 2, -1, -1])      # sample 1 joined class 2
    method.clean_mask = torch.tensor([False, False, False, True])
    method.teacher_probs = torch.tensor([[0.05, 0.95, 0.0], [0.1, 0.2, 0.7], [0.0, 0.05, 0.95], [0.0, 0.95, 0.05]])
    targets = method.student_targets()
    corrected = F.one_hot(torch.tensor([0, 2, 2, 0]), 3).float()
    confident_teacher = {"soft": 0.3 * method.teacher_probs[[0, 2]] + 0.7 * corrected[[0, 2]],
                         "hard_bootstrap": 0.3 * F.one_hot(torch.tensor([1, 2]), 3).float() + 0.7 * corrected[[0, 2]],
                         "hard": F.one_hot(torch.tensor([1, 2]), 3).float()}[kind]
    torch.testing.assert_close(targets[[0, 2]], confident_teacher)
    torch.testing.assert_close(targets[1], corrected[1])  # teacher below eta: the corrected label
    torch.testing.assert_close(targets[3], corrected[3])  # the clean subset keeps its true label
    torch.testing.assert_close(targets.sum(1), torch.ones(4))


def test_mixup_mixes_images_and_targets_with_one_coefficient():
    torch.manual_seed(0)
    images, targets = torch.randn(16, 1, 4, 4), F.one_hot(torch.arange(16) % 3, 3).float()
    torch.manual_seed(1)
    mixed_images, mixed_targets = mixup(images, targets)
    torch.testing.assert_close(mixed_targets.sum(1), torch.ones(16))
    torch.manual_seed(1)  # the same draws: one Beta(2, 2) coefficient, then the partners
    lam = torch.distributions.Beta(2.0, 2.0).sample().item()
    order = torch.randperm(16)
    torch.testing.assert_close(mixed_images, lam * images + (1 - lam) * images[order])
    torch.testing.assert_close(mixed_targets, lam * targets + (1 - lam) * targets[order])
    assert 0 < lam < 1


@pytest.mark.parametrize("option,value,message", [
    ("agree", 21, "PUDistillConfig.agree must be in [1, filters = 20], got 21"),
    ("lambda_", 1.5, "PUDistillConfig.lambda_ must be in [0, 1], got 1.5"),
    ("teachers", 0, "PUDistillConfig.teachers must be >= 1, got 0"),
    ("entropy", -1.0, "PUDistillConfig.entropy must be >= 0, got -1.0"),
])
def test_bad_options_name_the_option(option, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        PUDistill(**{option: value}).configure("small", 3)
    assert error.value.field == option and error.value.owner is PUDistillConfig


def test_what_prepare_computes_is_state_and_round_trips():
    """A resumed run skips prepare: the accepted classes, teacher probabilities, clean mask and
    student targets must all come back from state_dict."""
    method = make_method("soft")
    method.accepted_class = torch.tensor([-1, 2, -1, -1])
    method.clean_mask = torch.tensor([False, False, False, True])
    method.teacher_probs = torch.tensor([[0.05, 0.95, 0.0], [0.1, 0.2, 0.7], [0.0, 0.05, 0.95], [0.0, 0.95, 0.05]])
    method.targets = method.student_targets()
    state = method.state_dict()
    assert set(state) == {"accepted_class", "teacher_probs", "clean_mask", "targets"}

    fresh = make_method("soft")
    assert not torch.equal(fresh.targets, method.targets)
    fresh.load_state_dict(state)
    for name, value in state.items():
        assert torch.equal(getattr(fresh, name), value), name
    torch.testing.assert_close(fresh.student_targets(), method.targets)


@pytest.mark.parametrize("detection", ["teachers", "student"])
def test_label_issues_come_from_the_teachers_or_the_student(detection):
    """detection="teachers": the teachers' confidence on the given label, flagged where their
    arg-max is another class; "student": the same from the trainer's outputs (the student's)."""
    method = PUDistill(epochs=3, batch_size=8, detection=detection)
    method.bind(method.configure("small", 3), torch.tensor([0, 1, 2, 0]), 3, seed=0, device="cpu")
    method.teacher_probs = torch.tensor([[0.05, 0.95, 0.0], [0.1, 0.2, 0.7], [0.0, 0.05, 0.95], [0.35, 0.4, 0.25]])
    # Sample 1: the student is unsure (0.4), but the given label is its arg-max: not flagged.
    student = {"probs": torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.5, 0.4], [0.35, 0.4, 0.25]])}
    score, flagged = method.clean_scores(student)
    expected = {"teachers": ([0.05, 0.2, 0.95, 0.35], [True, True, False, True]),
                "student": ([0.7, 0.4, 0.4, 0.35], [False, False, True, True])}[detection]
    torch.testing.assert_close(score, torch.tensor(expected[0]))
    assert flagged.tolist() == expected[1]
    assert method.issue_probs(student) is (method.teacher_probs if detection == "teachers" else student["probs"])


def test_a_sub_trained_network_gets_the_batchnorm_statistics_of_the_training_set():
    """Teachers and the feature trunk are evaluated like the trainer's model: with BatchNorm
    statistics of the whole training set, not the momentum average of their last batches."""
    from engine.data.training_data import from_arrays
    from engine.methods import CE
    from engine.models.base import recalibrate_batchnorm
    from engine.trainer import Trainer

    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32) * 3
    trainer = Trainer(CE(epochs=1, batch_size=8, model="mlp"), from_arrays(x, np.arange(40) % 2))
    ctx = trainer.preparation()
    network = ctx.make_network()
    fit_network(network, ctx, lambda epoch: np.arange(10), torch.arange(40) % 2, Stage(PUDistillStage.TEACHER, 2, 0.1),
                seed=0, mixup_images=False, entropy=0.0)
    recalibrated = {name: value.clone() for name, value in network.state_dict().items() if "running" in name}
    assert recalibrated
    recalibrate_batchnorm(network, [inputs for inputs, _ in ctx.loader(None)])
    for name, value in recalibrated.items():
        torch.testing.assert_close(network.state_dict()[name], value, msg=name)


def soft_ce(logits, targets, entropy_weight):
    """Soft-target CE plus entropy_weight x the mean entropy of the prediction."""
    log_probs = torch.log_softmax(logits, 1)
    entropy = -(log_probs.exp() * log_probs).sum(1)
    return (-(targets * log_probs).sum(1) + entropy_weight * entropy).mean()


@pytest.mark.parametrize("with_mixup", [False, True])
def test_student_loss_is_the_soft_target_ce_to_its_targets(with_mixup):
    method = PUDistill(epochs=3, mixup=with_mixup, entropy=0.1)
    method.bind(method.configure("small", 3), torch.arange(10) % 3, 3, seed=0, device="cpu")
    generator = torch.Generator().manual_seed(0)
    method.targets = torch.softmax(torch.randn(10, 3, generator=generator), 1)
    weight, inputs = torch.randn(5, 3, generator=generator), torch.randn(6, 5, generator=generator)
    indices = torch.tensor([2, 0, 3, 9, 7, 5])
    batch = Batch(inputs, indices, method.given_labels[indices])
    step = Step(0, method.stages()[0], 0, 0, optimizer=None)

    torch.manual_seed(5)
    loss = method.loss(lambda x: x @ weight, batch, step)
    images, targets = inputs, method.targets[indices]
    if with_mixup:
        torch.manual_seed(5)  # the same draws: one coefficient and the partners
        images, targets = mixup(images, targets)
        assert not torch.equal(images, inputs)
    torch.testing.assert_close(loss, soft_ce(images @ weight, targets, 0.1))
