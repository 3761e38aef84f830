"""NLNL (jnpl.txt section 3): NL -> SelNL -> SelPL -> pseudo-labeling.

NL: k complementary labels per sample and step, -log(1 - p). SelNL: NL only on samples whose
mean confidence on the given label over the last `window` epochs is > 1/C. SelPL: CE only on
samples with that mean >= 0.5. Warm-up and pseudo stages: as JNPL's (engine/methods/jnpl.py).
Empty selections give a zero loss, never NaN. Stage lengths: 40/20/20/20 % of the epochs
after the warm-up.
"""
import torch

from engine.losses import nl_loss, sample_complementary, weighted_ce
from engine.methods.base import Defaults, Stage, confidence_on_labels, split_epochs
from engine.methods.jnpl import JNPL


class NLNL(JNPL):
    name = "nlnl"
    DEFAULTS = {
        "paper": Defaults(epochs=1000, batch_size=128, lr=0.02, weight_decay=1e-4,
                          model={"paper": "preact_resnet34", "small": "small_cnn"}),
        "small": JNPL.DEFAULTS["small"],  # the same short-budget choices (README)
    }
    window = 10

    def __init__(self, args, num_classes, given_labels, device, defaults):
        super().__init__(args, num_classes, given_labels, device, defaults)
        # Confidence on the given label over the last `window` epochs (ring buffer).
        self.history = torch.full((len(given_labels), self.window), float("nan"), device=device)
        self.epochs_seen = 0

    def complementary_count(self, num_classes):
        # The NLNL code draws 110 labels per sample (with replacement) on CIFAR-100, 1 on CIFAR-10.
        if self.defaults.complementary_labels == 1 and num_classes > 10:
            return 110
        return super().complementary_count(num_classes)

    def stages(self, epochs, lr):
        warmup = self.warmup_stages()
        nl, sel_nl, sel_pl, pseudo = split_epochs(epochs - self.defaults.warmup_epochs, (2, 1, 1, 1))
        return warmup + [Stage("nl", nl, lr, reset_optimizer=bool(warmup)), Stage("selnl", sel_nl, lr),
                         Stage("selpl", sel_pl, lr),
                         Stage("pseudo", pseudo, self.defaults.pseudo_lr, milestones=(0.5,), reset_optimizer=True)]

    def mean_confidence(self):
        filled = ~torch.isnan(self.history)
        return torch.where(filled, self.history, 0).sum(1) / filled.sum(1).clamp(min=1)

    def batch_loss(self, model, batch, stage):
        if stage.name in ("warmup", "pseudo"):
            return super().batch_loss(model, batch, stage)
        logits = model(batch.images)
        if stage.name == "selpl":
            keep = self.mean_confidence()[batch.indices] >= 0.5
            return weighted_ce(logits, batch.labels, weight=keep.float())
        comp = sample_complementary(batch.labels, self.num_classes, k=self.k, replacement=self.replacement,
                                    seed=self.args.seed, offset=batch.step)
        weight = None
        if stage.name == "selnl":
            weight = (self.mean_confidence()[batch.indices] > 1.0 / self.num_classes).float()
        return nl_loss(logits, comp, weight=weight)

    def end_epoch(self, epoch, stage, outputs):
        self.history[:, self.epochs_seen % self.window] = confidence_on_labels(outputs["probs"], self.given_labels)
        self.epochs_seen += 1

    def state_dict(self):
        return {**super().state_dict(), "history": self.history.cpu(), "epochs_seen": self.epochs_seen}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.history = state["history"].to(self.device)
        self.epochs_seen = state["epochs_seen"]
