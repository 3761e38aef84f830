"""PMNAR, "PMNAR: Positive and Multi-Negative Learning from Noisy Labels with Adaptive
Reweighting" (an anonymous CVPR submission; no arXiv version and no public code).

Two networks are trained side by side, each on
    w_i * PM(f(x_i), y_i, history_i) + beta * KL((f(x_i) + f'(x_i)) / 2 || f(Aug(x_i)))
(eq. 10). PM = -log p_y - sum of log(1 - p_k) over the classes k != y that the sample's
history does not exclude (eq. 7); the history is every class that was ever the first network's
arg-max on the sample after the warm-up (Alg. 1 line 8, one history shared by both networks).
The weights come from the PEER network: w_i = f'_y(x_i) - min_j f'_y(x_j) over the whole
training set (eq. 4, normalize_weights "sub_min"), recomputed after every epoch from the
warm-up on, all 1 before; they are not rescaled (eq. 4 as written), except in the short-budget
preset, where each given class's weights are scaled to mean 1 (`class_balanced`); that preset
uses the weights and the history only where the training batches are not augmented. The KL
target is the two networks' mean prediction on the training view, detached; Aug(x) is a
second, strong (RandAugment) view of the same batch.
Evaluation: the mean of the two networks' softmax. Clean score: the mean of the two networks'
confidence on the given label (each is the other's weight source); flagged noisy where
their mean softmax's arg-max is another class (the paper: below 0.5, the same samples where the
networks are sure of their arg-maxes).
Every component can be switched off for the paper's ablation (Table 5).
"""
import enum
import typing
from dataclasses import dataclass

import torch

from engine.config import WarmupConfig, option
from engine.losses import normalize_weights, pm_loss, update_history
from engine.methods.base import Method, PeerNetworks, Stage, class_mean_one, confidence_on_labels, kl_to_softmax


@dataclass(frozen=True)
class PMNARConfig(WarmupConfig):
    """PMNAR options; the paper's ablation: PM = --pmnar-single-network --pmnar-no-reweighting
    --pmnar-no-consistency, PM+AR = --pmnar-single-network --pmnar-no-consistency."""

    beta: float = option(1.0, "weight of the KL consistency term (1.0 up to 10 classes, else 0.1)")
    single_network: bool = option(False, "train one network whose own confidences give its weights (no peer)")
    reweighting: bool | None = option(True, "adaptive reweighting (AR); off: all weights 1; unset (the short-budget "
                                            "preset): on where the training batches are not augmented")
    consistency: bool = option(True, "the KL consistency term")
    history: bool | None = option(True, "exclude past predictions from the multi-negative term; off: every class "
                                        "but y; unset (the short-budget preset): on where the training batches "
                                        "are not augmented")
    view: typing.Literal["weak", "strong"] = option("strong", "augmentation of the consistency view Aug(x)")
    class_balanced: bool = option(False, "scale each given class's weights to mean 1")
    cosine: bool = option(False, "a cosine decay of the lr to 0 instead of x0.1 at 40% and 80% of the epochs")

    @classmethod
    def preset(cls, size, num_classes):
        beta = 1.0 if num_classes <= 10 else 0.1
        if size == "paper":
            # Section 4: PreAct ResNet-18, SGD lr 0.02 (/10 every 120 epochs), wd 5e-4, batch 128,
            # 300 epochs; 10 warm-up epochs (the supplementary's choice).
            return cls(epochs=300, batch_size=128, lr=0.02, weight_decay=5e-4, warmup_epochs=10,
                       model="preact_resnet18", beta=beta)
        # The adaptive parts judge samples by the networks' confidence. They win where the networks
        # memorize the labels, as they do within a short budget without augmentation (CIFAR-10N
        # worst, a 1M-parameter CNN: 72.4% with them, 62.6% without; CE 53.9%), and lose where they
        # do not: on CIFAR-10N with the small CNN and crops, 20 epochs, a briefly trained network
        # is unsure of clean samples of whole hard classes, and the weights and the history cost
        # 9.3 points on `worst` and 9.9 on `aggre`, each part alone too. So they are left unset
        # here, memorization guards that follow the training batches' augmentation (Method.
        # configure; docs/methods.md). On, the weights are scaled to mean 1 per given class so
        # that they only rank within a class (unscaled they starved CIFAR's hard classes: 53.2%
        # -> 48.4% within two epochs). A cosine ended 2.0 points above the paper's x0.1 steps,
        # which leave 8 of 20 epochs at the full lr.
        return cls(epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, warmup_epochs=5, beta=beta,
                   reweighting=None, history=None, class_balanced=True, cosine=True)

    def validate(self):
        super().validate()
        self.require("beta", self.beta >= 0, "must be >= 0")


class PMNARStage(enum.Enum):
    PMNAR = "pmnar"


class PMNAR(Method):
    name = "pmnar"
    Config = PMNARConfig
    memorization_guards = {"reweighting": (True, False), "history": (True, False)}

    def setup(self):
        self.num_networks = 1 if self.config.single_network else 2
        self.consistency = self.config.consistency and self.config.beta > 0
        n = len(self.given_labels)
        self.register_buffer("weights", torch.ones(self.num_networks, n, device=self.device))  # row k: network k's
        self.register_buffer("history", torch.zeros(n, self.num_classes, dtype=torch.bool, device=self.device))

    @property
    def second_view(self):
        return self.config.view if self.consistency else None

    def build_model(self, make_network):
        return PeerNetworks([make_network() for _ in range(self.num_networks)])

    def stages(self):
        return [Stage.decaying(PMNARStage.PMNAR, self.config.epochs, self.config.lr, (0.4, 0.8), self.config.cosine)]

    def loss(self, model, batch, step):
        logits = model(batch.images)
        exclude = self.history[batch.indices] if self.config.history else None
        total = 0.0
        if self.consistency:
            with torch.no_grad():
                target = network_probs(logits).mean(1)
            augmented = model(batch.second_view)
        for k, z in enumerate(logits):
            total = total + pm_loss(z, batch.labels, exclude, weight=self.weights[k, batch.indices])
            if self.consistency:
                total = total + self.config.beta * kl_to_softmax(target, augmented[k])
        return total

    @torch.no_grad()
    def predict(self, model, images):
        probs = network_probs(model(images))
        return {"probs": probs.mean(1), "network_probs": probs}

    def end_epoch(self, step, outputs):
        if step.epoch + 1 < self.config.warmup_epochs:
            return
        probs = outputs["network_probs"]
        if self.config.history:
            everyone = torch.arange(len(self.given_labels), device=self.device)
            update_history(self.history, everyone, probs[:, 0])
        if self.config.reweighting:
            confidence = torch.stack([confidence_on_labels(probs[:, k], self.given_labels)
                                      for k in range(self.num_networks)])
            peer = confidence.flip(0)  # network 0 is weighted by network 1 and vice versa (itself when alone)
            weights = torch.stack([normalize_weights(c, "sub_min") for c in peer])
            self.weights = class_mean_one(weights, self.given_labels, self.num_classes) \
                if self.config.class_balanced else weights


def network_probs(logits):
    """Each network's softmax, [B, networks, C]: their mean is PMNAR's prediction and its consistency target."""
    return torch.stack([torch.softmax(z.float(), 1) for z in logits], 1)
