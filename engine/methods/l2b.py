"""L2B, "L2B: Learning to Bootstrap Robust Models for Combating Label Noise" (arXiv:2202.04291):
meta-learned per-sample weights on the given label (alpha) and on the model's own prediction
(beta), from a small clean set.

Per batch after the warm-up (Alg. 1): pseudo-labels = the current model's arg-max; a virtual
SGD step on sum_i eps_a,i CE(x_i, y_i) + eps_b,i CE(x_i, pseudo_i), emulating the real optimizer
(its lr, momentum buffers and weight decay, as the released code does); the clean batch's mean
CE after that step; its gradient with respect to (eps_a, eps_b) at 0 (torch.func: grad of a
functional_call, second order through the virtual step); weights = normalize_weights(-gradient)
over alpha and beta together ("rectify_sum": max(., 0) / sum, so they sum to 1 per batch;
"sigmoid" / "softmax" (with a temperature) as options); then the real step on
sum_i alpha_i CE(y_i) + beta_i CE(pseudo_i), its gradient norm clipped (grad_clip; off in the
short-budget preset).
Ablation (the paper's Table 7): weights "alpha" (beta = 0: L2RW), beta (alpha = 0), or
sum_to_one (alpha_i + beta_i = 1 per sample, then the batch mean), the short-budget preset's
choice on augmented batches (a memorization guard, Method.configure).
Clean score: the model's confidence on the given label, flagged noisy where its arg-max is another
class, as for CE and PMNAR (the paper detects nothing). The meta-weights make a worse detector:
a sample that the model predicts as labeled gets alpha = beta, so its share alpha / (alpha +
beta) is 1/2 whatever its label, and one clean batch's meta-gradient per step is noisy
(docs/methods.md has the measurements).
"""
import enum
import typing
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad
from torch.nn import functional as F

from engine.config import WarmupConfig, option
from engine.distributed import unwrap
from engine.losses import normalize_weights, weighted_ce
from engine.methods.base import CleanSubset, Method, Phase, Stage


def virtual_sgd_step(params, grads, momentum_buffers, lr, momentum, weight_decay):
    """torch.optim.SGD's update (no dampening, no Nesterov) as a function of the gradients."""
    stepped = {}
    for name, p in params.items():
        direction = grads[name] + weight_decay * p
        if momentum and momentum_buffers.get(name) is not None:
            direction = momentum * momentum_buffers[name] + direction
        stepped[name] = p - lr * direction
    return stepped


def meta_gradients(model, images, labels, pseudo_labels, clean_images, clean_labels, step):
    """d(clean loss after a virtual step) / d(eps_a, eps_b) at eps = 0, each [B].

    step: dict(params={name: detached tensor}, momentum_buffers={name: tensor or None}, lr,
    momentum, weight_decay) describing the optimizer the virtual step emulates.
    """
    buffers = {name: b for name, b in model.named_buffers()}

    def training_loss(params, eps_a, eps_b, buffer_copies):
        # Plain cross_entropy: the weights must carry a gradient here (weighted_ce detaches them).
        logits = functional_call(model, (params, buffer_copies), (images,)).float()
        return (eps_a * F.cross_entropy(logits, labels, reduction="none")
                + eps_b * F.cross_entropy(logits, pseudo_labels, reduction="none")).sum()

    def clean_loss(eps_a, eps_b):
        # BatchNorm updates its running statistics in train mode: give it copies to write to.
        buffer_copies = {name: b.clone() for name, b in buffers.items()}
        grads = grad(training_loss)(step["params"], eps_a, eps_b, buffer_copies)
        stepped = virtual_sgd_step(step["params"], grads, step["momentum_buffers"], step["lr"], step["momentum"],
                                   step["weight_decay"])
        logits = functional_call(model, (stepped, buffer_copies), (clean_images,))
        return F.cross_entropy(logits.float(), clean_labels)

    zeros = torch.zeros(len(labels), dtype=images.dtype, device=images.device)
    return grad(clean_loss, argnums=(0, 1))(zeros, zeros.clone())


def normalized(scores, mode, temperature):
    """Weights that sum to 1 (0 when every rectified score is 0): normalize_weights, and for
    "sigmoid" (each in (0, 1)) a division by the sum, so every mode keeps the loss scale."""
    weights = normalize_weights(scores, mode, temperature)
    return weights / weights.sum() if mode == "sigmoid" else weights


def balance_weights(alpha_scores, beta_scores, rule, mode, temperature):
    """(alpha, beta) [B] each from the negated meta-gradients, by the weights `rule`:
    "both" normalizes the 2B scores together (see `normalized`); "alpha" / "beta" keep one kind (the
    other is 0); "sum_to_one" rectifies both, then alpha_i + beta_i = 1 per sample (0.5 each
    when both are 0) and the loss becomes the batch mean (weights divided by B)."""
    size = len(alpha_scores)
    if rule == "alpha":
        return normalized(alpha_scores, mode, temperature), torch.zeros_like(beta_scores)
    if rule == "beta":
        return torch.zeros_like(alpha_scores), normalized(beta_scores, mode, temperature)
    if rule == "sum_to_one":
        alpha, beta = alpha_scores.clamp(min=0), beta_scores.clamp(min=0)
        total = alpha + beta
        alpha = torch.where(total > 0, alpha / total.clamp(min=1e-30), torch.full_like(alpha, 0.5))
        return alpha / size, (1 - alpha) / size
    both = normalized(torch.cat([alpha_scores, beta_scores]), mode, temperature)
    return both[:size], both[size:]


@dataclass(frozen=True)
class L2BConfig(WarmupConfig):
    """L2B options (needs a clean subset: clean_size / clean_fraction, 1,000 images by default, 5% on small
    data)."""

    weights: typing.Literal["both", "alpha", "beta", "sum_to_one"] | None = option(
        "both", "meta-learn alpha and beta (L2B), alpha only (= L2RW), beta only, or alpha + beta = 1 per sample; "
                "unset (the short-budget preset): both where the training batches are not augmented, else "
                "sum_to_one")
    normalize: typing.Literal["rectify_sum", "sigmoid", "softmax"] = option(
        "rectify_sum", "normalize_weights mode for the negated meta-gradients")
    temperature: float = option(10.0, "softmax's temperature (sigmoid takes none)")
    grad_clip: float = option(0.25, "max gradient norm (the released code's: 0.25 up to 10 classes, 0.8 above; 0: off)")

    @classmethod
    def preset(cls, size, num_classes):
        if size == "paper":
            # Section 4.1: PreAct ResNet-18, SGD lr 0.15 (cosine), wd 5e-4, batch 512 (CIFAR-10; 256 on
            # CIFAR-100), 300 epochs, 10 warm-up; 1,000 clean images; gradient clipping 0.25 (0.8 on
            # CIFAR-100; the released code).
            few = num_classes <= 10
            return cls(epochs=300, batch_size=512 if few else 256, lr=0.15, weight_decay=5e-4, warmup_epochs=10,
                       model="preact_resnet18", clean_size=1000, grad_clip=0.25 if few else 0.8)
        # Small data: lr 0.1 and 5 warm-up epochs (at lr 0.05 and 3, measured on mnist5k at 40%
        # noise, the pseudo-labels came from a 62%-accurate model and L2B ended at 92.3%); no
        # clipping (at 0.25 the small CNN learned slowly: 66.5% after the warm-up where CE had
        # 77.3%, 95.2% at the end; unclipped 96.9%). The weights are a memorization guard
        # (Method.memorization_guards): the paper's, rectified over the whole batch, leave many
        # samples out of a step, which is what L2B gains by where the network memorizes
        # (CIFAR-10N worst, 1M-parameter CNN without augmentation: 66.9% against 56.8% with
        # sum_to_one), and what a run that still underfits cannot spare (the small CNN with
        # crops, 20 epochs: sum_to_one 1.2-1.5 points above them on worst seeds 0-2, 1.8 on aggre).
        return cls(epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, warmup_epochs=5, clean_fraction=0.05,
                   grad_clip=0.0, weights=None)

    def validate(self):
        super().validate()
        self.require("temperature", self.temperature > 0, "must be > 0")
        self.require("grad_clip", self.grad_clip >= 0, "must be >= 0")


class L2BStage(enum.Enum):
    L2B = "l2b"


class L2B(Method):
    name = "l2b"
    Config = L2BConfig
    clean_subset = CleanSubset.BATCHES
    memorization_guards = {"weights": ("both", "sum_to_one")}
    loss_is_a_mean_over_the_rows = False  # a weighted sum, normalized over the global batch

    @property
    def grad_clip(self):
        return self.config.grad_clip or None

    def stages(self):
        config = self.config
        return self.warmup_stages() + [Stage(L2BStage.L2B, config.epochs - config.warmup_epochs, config.lr,
                                             cosine=True)]

    def loss(self, model, batch, step):
        logits = model(batch.images)
        if step.stage.kind is Phase.WARMUP:
            # A mean over this process's rows: scaled by their share here (the trainer does not, for L2B).
            return weighted_ce(logits, batch.labels) * batch.share
        pseudo = logits.detach().argmax(1)
        network = unwrap(model)  # the meta-gradient's functional calls bypass DDP
        grad_alpha, grad_beta = meta_gradients(network, batch.images, batch.labels, pseudo, batch.clean_images,
                                               batch.clean_labels, virtual_step(network, step.optimizer))
        # The weights are normalized over the global batch: its scores gathered from every
        # process (a no-op on one), this process's rows taken back out.
        scores = self.processes.gather_rows(torch.stack([-grad_alpha, -grad_beta], 1))
        alpha, beta = balance_weights(scores[:, 0], scores[:, 1], self.config.weights, self.config.normalize,
                                      self.config.temperature)
        rows = slice(batch.first_row, batch.first_row + len(batch.labels))
        # DDP averages the processes' gradients; the weighted sum is over the global batch.
        return self.processes.world * (weighted_ce(logits, batch.labels, weight=alpha[rows], reduction="sum")
                                       + weighted_ce(logits, pseudo, weight=beta[rows], reduction="sum"))


def virtual_step(model, optimizer):
    """What the real optimizer would do, for meta_gradients: its current lr, momentum buffers
    and weight decay on the model's parameters (group 0)."""
    group = optimizer.param_groups[0]
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: optimizer.state.get(p, {}).get("momentum_buffer") for name, p in model.named_parameters()}
    return dict(params=params, momentum_buffers=buffers, lr=group["lr"], momentum=group["momentum"],
                weight_decay=group["weight_decay"])
