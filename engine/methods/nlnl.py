"""NLNL, "NLNL: Negative Learning for Noisy Labels" (arXiv:1908.07387): NL -> SelNL -> SelPL ->
pseudo-labeling.

NL: k complementary labels per sample and step, -log(1 - p). SelNL: NL only on samples whose
mean confidence on the given label over the last `window` epochs is > 1/C. SelPL: CE only on
the samples that mean takes as clean (>= 0.5, and each class's `clean_class_share` most
confident: `clean_selection`). Warm-up and pseudo stages: as JNPL's (engine/methods/jnpl.py),
except that a pseudo stage without `relabel` continues SelPL (CE on its selection, updated
every epoch) at the pseudo stage's learning rate.
As in the NLNL code, each sample's loss is weighted by max_n / n_c of its given class (the given
labels' class counts; `class_weights`). SelNL's and SelPL's losses are divided by the whole batch,
where the NLNL code divides by the samples selected: that division's larger steps at a short
budget's lr made test accuracy fall 4.3 points when SelNL began (docs/methods.md). An empty
selection gives a zero loss, never NaN. Stage lengths: 40/20/20/20 % of the epochs after the
warm-up.
Without `selective` (the short-budget preset on augmented batches): NL alone after the warm-up,
as JNPL's stage alone (JNPL.negative_learning_only; flagged as CE's): a briefly trained model's
selection costs accuracy where a short run with augmentation does not memorize (docs/methods.md).
"""
import enum
from dataclasses import dataclass

import torch

from engine.config import option
from engine.losses import nl_loss
from engine.methods.base import Phase, Stage, confidence_on_labels, split_epochs
from engine.methods.jnpl import JNPL, JNPLConfig, NegativeLearningConfig, paper_complementary_labels


@dataclass(frozen=True)
class NLNLConfig(NegativeLearningConfig):
    """NLNL options: complementary labels, the confidence window of the selective stages, the warm-up and
    pseudo-labeling stages' learning rates."""

    window: int = option(10, "epochs of confidence history behind SelNL / SelPL's selections")

    @classmethod
    def preset(cls, size, num_classes):
        if size == "paper":
            # The NLNL code: lr 0.02, wd 1e-4, class weights.
            return cls(epochs=1000, batch_size=128, lr=0.02, weight_decay=1e-4, model="preact_resnet34",
                       complementary_labels=paper_complementary_labels(num_classes), class_weights=True)
        small = JNPLConfig.preset(size, num_classes).to_dict()  # the same short-budget choices (docs/methods.md)
        del small["pl_weight"], small["class_balanced"]  # JNPL's own options (NLNL has no NL+)
        # with JNPL's lr 0.1 (at 0.02 NLNL stayed below CE: mnist5k, 40% symmetric, 20 epochs,
        # 92.7% against 94.3%; 0.05: 94.5%; 0.1: 95.3%), but the pseudo-label stage at 0.05.
        # The selective stages, a memorization guard as JNPL's: on CIFAR-10N worst with the small
        # CNN and crops (20 epochs), where CE does not memorize, SelPL's CE on each class's most
        # confident half cost 5.7 points in its first epoch and NLNL ended 3.8 below CE (from lr
        # 0.05); NL alone with a cosine ended 1.2 above it (0.2 above CE from 0.1). Under mnist5k's
        # pair flips, which get memorized, they win 2.7 points (docs/methods.md).
        return cls(**{**small, "pseudo_lr": 0.05})

    def validate(self):
        super().validate()
        self.require("window", self.window >= 1, "must be >= 1")


class NLNLStage(enum.Enum):
    NL = "nl"
    SELNL = "selnl"
    SELPL = "selpl"


class NLNL(JNPL):
    name = "nlnl"
    Config = NLNLConfig
    selective_shares = (2, 1, 1, 1)  # NL, SelNL, SelPL, pseudo-labeling

    def setup(self):
        self.setup_negative_learning()
        if not self.config.selective:  # NL alone selects nothing: no history to keep
            return
        # Confidence on the given label over the last `window` epochs (ring buffer).
        self.register_buffer("history", torch.full((len(self.given_labels), self.config.window), float("nan"),
                                                   device=self.device))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.int64))

    def stages(self):
        warmup = self.warmup_stages(self.config.warmup_lr)
        if not self.config.selective:
            return warmup + [self.negative_learning_only(NLNLStage.NL)]
        nl, sel_nl, sel_pl, pseudo = split_epochs(self.config.epochs - self.config.warmup_epochs, self.selective_shares)
        lr = self.config.lr
        return warmup + [Stage(NLNLStage.NL, nl, lr, reset_optimizer=bool(warmup)),
                         Stage(NLNLStage.SELNL, sel_nl, lr), Stage(NLNLStage.SELPL, sel_pl, lr),
                         self.pseudo_stage(pseudo, milestones=(0.5,))]

    def mean_confidence(self):
        filled = ~torch.isnan(self.history)
        return torch.where(filled, self.history, 0).sum(1) / filled.sum(1).clamp(min=1)

    def loss(self, model, batch, step):
        kind = step.stage.kind
        if kind in (Phase.WARMUP, Phase.PSEUDO):
            return super().loss(model, batch, step)
        logits = model(batch.images)
        if kind is NLNLStage.SELPL:
            return self.sel_pl_loss(logits, batch)
        complementary, weight = self.complementary(batch, step), self.class_weight[batch.labels]
        if kind is NLNLStage.NL:
            return nl_loss(logits, complementary, weight=weight)
        keep = (self.mean_confidence()[batch.indices] > 1.0 / self.num_classes).float()  # SelNL
        return nl_loss(logits, complementary, weight=keep * weight)

    def pseudo_loss(self, logits, batch, step):
        """Without relabeling: CE on the samples taken as clean only, as SelPL. NL on the others
        pushes them away from their true class where their label is wrong (NL is NL+ without its
        robustness weight): with it, test accuracy fell 3.1 points within the stage under
        mnist5k's pair-flip noise, and ended 2.6 points lower."""
        if self.config.relabel:
            return super().pseudo_loss(logits, batch, step)
        return self.sel_pl_loss(logits, batch)

    def start_stage(self, stage, outputs):
        if self.config.relabel:  # else the pseudo stage keeps SelPL's `selected` (end_epoch)
            super().start_stage(stage, outputs)

    def end_epoch(self, step, outputs):
        if not self.config.selective:
            return
        self.history[:, int(self.epochs_seen) % self.config.window] = confidence_on_labels(outputs["probs"],
                                                                                          self.given_labels)
        self.epochs_seen += 1
        self.selected = self.clean_selection(self.mean_confidence())
