"""L2B's pieces: the virtual step equals torch.optim.SGD's step (also as read from a live
optimizer by virtual_step), the meta-gradient equals a finite-difference check on a tiny
model, the weights' normalization and ablation rules, and the method's loss and clean score."""
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from engine.methods.base import Batch, Phase
from engine.methods.l2b import L2B, L2BStage, balance_weights, meta_gradients, virtual_sgd_step, virtual_step
from method_testing import N, make_method, step_at

LR, MOMENTUM, WEIGHT_DECAY = 0.3, 0.9, 5e-3


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double().train()


def test_virtual_step_is_the_sgd_optimizers_step():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    for _ in range(2):  # the second step has momentum buffers
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        buffers = {name: (optimizer.state[p]["momentum_buffer"].clone() if p in optimizer.state else None)
                   for name, p in model.named_parameters()}
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        expected = virtual_sgd_step(before, grads, buffers, LR, MOMENTUM, WEIGHT_DECAY)
        optimizer.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), expected[name])


def clean_loss_after_step(model, x, y, pseudo, eps_a, eps_b, momentum_buffers, xv, yv):
    """The same quantity as meta_gradients differentiates, by plain autograd on a model copy."""
    params = dict(model.named_parameters())
    logits = model(x)
    loss = (eps_a * F.cross_entropy(logits, y, reduction="none") + eps_b * F.cross_entropy(logits, pseudo,
                                                                                            reduction="none")).sum()
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    stepped = virtual_sgd_step({k: p.detach() for k, p in params.items()}, grads, momentum_buffers, LR, MOMENTUM,
                               WEIGHT_DECAY)
    return F.cross_entropy(torch.func.functional_call(model, stepped, (xv,)), yv)


def test_meta_gradient_matches_finite_differences():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
    pseudo = torch.randint(0, 3, (6,), generator=g)
    xv, yv = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g)
    momentum_buffers = {name: 0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64)
                        for name, p in model.named_parameters()}
    step = dict(params={name: p.detach() for name, p in model.named_parameters()},
                momentum_buffers=momentum_buffers, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    grad_alpha, grad_beta = meta_gradients(model, x, y, pseudo, xv, yv, step)

    h = 1e-5
    for which, analytic in (("alpha", grad_alpha), ("beta", grad_beta)):
        for i in range(len(y)):
            bump = torch.zeros(len(y), dtype=torch.float64)
            bump[i] = h
            zero = torch.zeros(len(y), dtype=torch.float64)
            plus = (bump, zero) if which == "alpha" else (zero, bump)
            minus = (-bump, zero) if which == "alpha" else (zero, -bump)
            numeric = (clean_loss_after_step(model, x, y, pseudo, *plus, momentum_buffers, xv, yv)
                       - clean_loss_after_step(model, x, y, pseudo, *minus, momentum_buffers, xv, yv)) / (2 * h)
            assert analytic[i].item() == pytest.approx(numeric.item(), rel=1e-4, abs=1e-8), (which, i)
    assert grad_alpha.abs().sum() > 0 and not torch.allclose(grad_alpha, grad_beta)


SCORES = (torch.tensor([0.3, -0.2, 0.0, 1.0]), torch.tensor([-0.5, 0.4, 0.1, -1.0]))


@pytest.mark.parametrize("mode", ["rectify_sum", "sigmoid", "softmax"])
def test_weights_are_non_negative_and_sum_to_one(mode):
    alpha, beta = balance_weights(*SCORES, "both", mode, 10.0)
    assert (alpha >= 0).all() and (beta >= 0).all()
    assert (alpha.sum() + beta.sum()).item() == pytest.approx(1.0)
    if mode == "rectify_sum":  # max(-grad, 0) / sum: negative scores get no weight
        torch.testing.assert_close(alpha, torch.tensor([0.3, 0.0, 0.0, 1.0]) / 1.8)
        torch.testing.assert_close(beta, torch.tensor([0.0, 0.4, 0.1, 0.0]) / 1.8)


def test_ablation_rules():
    alpha, beta = balance_weights(*SCORES, "alpha", "rectify_sum", 10.0)  # L2RW
    assert torch.equal(beta, torch.zeros(4)) and alpha.sum().item() == pytest.approx(1.0)
    alpha, beta = balance_weights(*SCORES, "beta", "rectify_sum", 10.0)
    assert torch.equal(alpha, torch.zeros(4)) and beta.sum().item() == pytest.approx(1.0)
    alpha, beta = balance_weights(*SCORES, "sum_to_one", "rectify_sum", 10.0)
    torch.testing.assert_close(alpha + beta, torch.full((4,), 0.25))  # alpha_i + beta_i = 1, batch mean
    torch.testing.assert_close(alpha * 4, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert balance_weights(torch.zeros(3), torch.zeros(3), "sum_to_one", "rectify_sum", 10.0)[0].mul(3).tolist() == [
        0.5, 0.5, 0.5]


def test_virtual_step_reads_the_optimizers_current_state():
    """virtual_step(model, optimizer): group 0's current lr, momentum and weight decay and the
    momentum buffers, so that the virtual step is exactly the optimizer's next step."""
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    step = virtual_step(model, optimizer)
    assert all(buffer is None for buffer in step["momentum_buffers"].values()), "no buffers before the first step"
    assert (step["lr"], step["momentum"], step["weight_decay"]) == (LR, MOMENTUM, WEIGHT_DECAY)
    for lr in (LR, 0.05):  # the second step: momentum buffers, and the lr a schedule set
        optimizer.param_groups[0]["lr"] = lr
        step = virtual_step(model, optimizer)
        assert step["lr"] == lr and not any(p.requires_grad for p in step["params"].values())
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        expected = virtual_sgd_step(step["params"], grads, step["momentum_buffers"], step["lr"], step["momentum"],
                                    step["weight_decay"])
        expected = {name: t.clone() for name, t in expected.items()}
        optimizer.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), expected[name])
    assert all(buffer is not None for buffer in virtual_step(model, optimizer)["momentum_buffers"].values())


def l2b_batch(method, generator):
    indices = torch.tensor([1, 4, 6, 9])
    images = torch.randn(4, 4, generator=generator)
    clean_images = torch.randn(3, 4, generator=generator)
    return Batch(images, indices, method.given_labels[indices], clean_images=clean_images,
                 clean_labels=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("weights", ["both", "sum_to_one"])
def test_l2b_loss_weights_the_batch_by_its_meta_gradients(weights):
    method = make_method(L2B, warmup=1, num_classes=3, weights=weights)
    assert [stage.kind for stage in method.stages()] == [Phase.WARMUP, L2BStage.L2B]
    model = tiny_model().float()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    batch = l2b_batch(method, torch.Generator().manual_seed(2))

    warmup = step_at(method, 0, optimizer=optimizer)
    torch.testing.assert_close(method.loss(model, batch, warmup), F.cross_entropy(model(batch.images), batch.labels))
    # A process's part of an uneven last batch under DDP: the trainer leaves L2B's loss as it is, so the
    # warm-up's mean is scaled by the part's share here (2 processes differed from 1 by 1.8e-4 in weights).
    torch.testing.assert_close(method.loss(model, replace(batch, share=0.75), warmup),
                               0.75 * F.cross_entropy(model(batch.images), batch.labels))

    step = step_at(method, 1, optimizer=optimizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = method.loss(model, batch, step)
    logits = model(batch.images)
    pseudo = logits.argmax(1)
    grad_alpha, grad_beta = meta_gradients(model, batch.images, batch.labels, pseudo, batch.clean_images,
                                           batch.clean_labels, virtual_step(model, optimizer))
    alpha, beta = balance_weights(-grad_alpha, -grad_beta, weights, "rectify_sum", 10.0)
    assert alpha.sum() + beta.sum() == pytest.approx(1.0) and (alpha > 0).any()
    expected = (alpha * F.cross_entropy(logits, batch.labels, reduction="none")
                + beta * F.cross_entropy(logits, pseudo, reduction="none")).sum()
    torch.testing.assert_close(loss, expected)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), "the virtual step leaves the model as it was"



def test_l2b_loss_on_two_processes_weights_each_part_by_its_own_rows():
    """Each process gathers the global batch's scores, normalizes them together and weights its
    own rows by their part of the weights (at its first_row): the parts' losses then average to
    the one process's loss. A model without BatchNorm, so a row's meta-gradient is its own."""
    from engine.distributed import Processes

    method = make_method(L2B, warmup=1, num_classes=3, weights="both")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    batch = l2b_batch(method, torch.Generator().manual_seed(2))
    step = step_at(method, 1, optimizer=optimizer)
    whole = method.loss(model, batch, step)
    parts = [replace(batch, images=batch.images[rows], indices=batch.indices[rows], labels=batch.labels[rows],
                     first_row=rows.start) for rows in (slice(0, 1), slice(1, 4))]
    scores = []

    class Recording(Processes):
        def gather_rows(self, tensor):
            scores.append(tensor)
            return tensor

    class TwoProcesses(Processes):  # every process gathers both parts' scores, in rank order
        def gather_rows(self, tensor):
            return torch.cat(scores)

    method.processes = Recording()
    for part in parts:  # each part's scores, as its process computes them
        method.loss(model, replace(part, first_row=0), step)
    losses = []
    for rank, part in enumerate(parts):
        method.processes = TwoProcesses(rank, 2)
        losses.append(method.loss(model, part, step))
    torch.testing.assert_close((losses[0] + losses[1]) / 2, whole)


def test_l2b_clean_score_is_the_confidence_on_the_given_label():
    method = make_method(L2B, warmup=0, num_classes=3)
    probs = torch.softmax(torch.randn(N, 3, generator=torch.Generator().manual_seed(3)), 1)
    score, flagged = method.clean_scores({"probs": probs})
    expected = probs[torch.arange(N), method.given_labels]
    torch.testing.assert_close(score, expected)
    assert torch.equal(flagged, probs.argmax(1) != method.given_labels) and flagged.any() and not flagged.all()
    assert (flagged != (expected < 0.5)).any(), "some samples are below 0.5 on their arg-max: not flagged"
    assert not method.state_dict(), "no per-sample state"


def test_paper_preset_follows_the_paper_on_100_classes():
    """The paper trains CIFAR-100 with batch 256 (512 on CIFAR-10), and the released code clips
    its gradients at 0.8 there (0.25 on CIFAR-10); the preset gave every data set CIFAR-10's."""
    ten, hundred = L2B().configure("paper", 10), L2B().configure("paper", 100)
    assert (ten.batch_size, ten.grad_clip) == (512, 0.25)
    assert (hundred.batch_size, hundred.grad_clip) == (256, 0.8)
    assert L2B(batch_size=128).configure("paper", 100).batch_size == 128, "an option replaces the preset's value"


def test_l2b_options():
    assert make_method(L2B).grad_clip is None, "no clipping on small data"
    assert make_method(L2B, grad_clip=0.25).grad_clip == 0.25
    assert L2B().configure("paper", 10).clean_size == 1000 and L2B().configure("small", 10).clean_fraction == 0.05
    method = make_method(L2B, warmup=0, weights="alpha")
    assert method.config.weights == "alpha"
    assert L2B().configure("small", 10).weights == "sum_to_one" and L2B().configure("paper", 10).weights == "both"
    assert L2B(augment=False).configure("small", 10).weights == "both", "the paper's where the network memorizes"
