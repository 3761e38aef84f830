"""JNPL, "Joint Negative and Positive Learning for Noisy Labels" (arXiv:2104.06574): NL+ +
0.01 PL+ in one stage, then pseudo-labeling.

Stage "jnpl": k complementary labels per sample and step (distinct, uniform over the classes
that are not the given label; k = 1 in the paper, 110 on CIFAR-100), L = NL+ + lambda * PL+ where PL+ is applied
to the rows that jnpl_select keeps (the mean over those rows; 0 when none is kept).
An optional CE "warmup" stage comes first (small-data preset).
Stage "pseudo": the samples taken as clean at the start of the stage (confidence on the given
label >= CLEAN_THRESHOLD, and each class's `clean_class_share` most confident: `clean_selection`)
keep their label, the others take the model's arg-max; CE on these labels (`relabel`, the paper).
Without `relabel` (the short-budget preset) no label changes: CE on the samples taken as clean,
NL+ on the others (NLNL: engine/methods/nlnl.py).
`class_balanced` (short-budget preset, k = C - 1): NL+'s implicit weight p_y is scaled to mean 1
within each given class of the batch (computed as that weighted CE: `negative_loss`).
`class_weights` (short-budget preset; both of NLNL's presets, as its authors' code): the losses on the
given labels (NL+, the pseudo stage's CE without `relabel`) are multiplied by max_n / n_c of the
sample's given class, n_c the training samples given class c; PL+ (on arg-maxes) and the
warm-up's CE are not.
The paper trains 1000 + 480 epochs on CIFAR; `epochs` keeps that 1000:480 ratio.
Without `selective` (the short-budget preset on augmented batches): the JNPL stage alone after
the warm-up, its lr decayed to 0 along a cosine, and samples flagged where the arg-max is
another class (as CE's). The selection-based stages guard against memorization, which a short
run with augmentation may not reach (docs/methods.md).
Our pseudo stage continues the same network instead of training a new one (docs/methods.md, "Defaults").
"""
import enum
from dataclasses import dataclass

import torch

from engine.config import WarmupConfig, option
from engine.losses import jnpl_select, nl_plus_loss, pl_plus_loss, sample_complementary, weighted_ce
from engine.methods.base import (Method, Phase, Stage, class_mean_one, clean_selection, confidence_on_labels,
                                 split_epochs)

# The complementary labels' Philox offsets: the step plus this, above every step number (< 2**32), so
# that they are drawn apart from jnpl_select's, keyed by the step itself, in the same rows.
COMPLEMENTARY_STREAM = 1 << 32


def paper_complementary_labels(num_classes):
    """The papers' complementary labels per sample and step: 1 on CIFAR-10, 110 (drawn with
    replacement) on CIFAR-100 (JNPL, section 6.1, after NLNL; the NLNL code)."""
    return 1 if num_classes <= 10 else 110


@dataclass(frozen=True)
class NegativeLearningConfig(WarmupConfig):
    """What JNPL and NLNL share: complementary labels, the warm-up and pseudo-labeling stages."""

    complementary_labels: int = option(1, "complementary labels per sample and step (distinct while < C)")
    warmup_lr: float = option(0.05, "learning rate of the CE warm-up")
    pseudo_lr: float = option(0.1, "learning rate of the pseudo-labeling stage")
    clean_class_share: float = option(0.0, "share of each class's most confident samples that the selective "
                                           "stages take as clean whatever their confidence (0: the paper's "
                                           "threshold alone; set it to the labels' share of right labels when "
                                           "that is known, README)")
    relabel: bool = option(True, "pseudo-label stage: the samples not taken as clean take the model's arg-max (the "
                                 "papers); off: no label changes (docs/methods.md)")
    class_weights: bool = option(False, "weigh each sample's loss on its given label by max_n / n_c of its given "
                                        "class (the given labels' class counts), as the NLNL code does; the papers' "
                                        "equations have none")
    selective: bool | None = option(True, "the stages that train on a selection after negative learning (JNPL: "
                                          "pseudo-labeling; NLNL: SelNL, SelPL, pseudo-labeling), as the papers; off: "
                                          "negative learning alone after the warm-up with a cosine decay of the lr; "
                                          "unset (the short-budget preset): on where the training batches are not "
                                          "augmented")

    def validate(self):
        super().validate()
        self.require("complementary_labels", self.complementary_labels >= 1, "must be >= 1")
        self.require("warmup_lr", self.warmup_lr > 0, "must be > 0")
        self.require("pseudo_lr", self.pseudo_lr > 0, "must be > 0")
        self.require("clean_class_share", 0 <= self.clean_class_share <= 1, "must be in [0, 1]")


@dataclass(frozen=True)
class JNPLConfig(NegativeLearningConfig):
    """JNPL options: complementary labels, PL+ weight, the warm-up and pseudo-labeling stages' learning rates."""

    pl_weight: float = option(0.01, "lambda: weight of PL+ next to NL+")
    class_balanced: bool = option(False, "with k = C - 1 complementary labels: NL+'s implicit weight p_y scaled "
                                         "to mean 1 within each given class of the batch (docs/methods.md)")

    @classmethod
    def preset(cls, size, num_classes):
        if size == "paper":
            # The paper: SGD m 0.9, wd 1e-4, batch 128, lr 0.01 (x0.1 at 800 of 1000), pseudo lr 0.1.
            return cls(epochs=1480, batch_size=128, lr=0.01, weight_decay=1e-4, model="preact_resnet34",
                       complementary_labels=paper_complementary_labels(num_classes))
        # Small data (mnist5k, digits; a few dozen epochs on a CPU): one complementary label
        # per step learns too slowly, so every other class is a complementary label (k = C - 1),
        # after 3 CE warm-up epochs (the early-learning phase, before CE memorizes noise);
        # PL+ on a random network makes it collapse onto a few classes, the warm-up avoids it.
        # The pseudo-label stage restarts at 0.02: from 0.05 test accuracy fell 2.9 points when it
        # began (mnist5k, 30% asymmetric, 20 epochs), from 0.02 1.7.
        # A model trained this briefly on hard data is weak (CIFAR-10N, small CNN, 20 epochs:
        # about 60% right): it passes 0.5 on few samples, most of a few classes, so half of each
        # class is taken as clean whatever its confidence (base.clean_selection). Its arg-maxes
        # cannot replace labels: on the aggre labels (9% wrong) they changed 18,035 labels, 10%
        # of them rightly, and test accuracy fell from 59.6% to 51.1%. So no label changes: CE
        # on the samples taken as clean, NL+ on the rest (59.0% at the end against 52.3%).
        # CE on every given label instead fell 15 points under mnist5k's pair-flip noise, where
        # the arg-maxes were right (docs/methods.md has the table).
        # NL+ over every other class has CE's gradient times p_y, and a weak model is unsure of
        # whole classes: scaled to mean 1 per class in the batch, p_y only ranks within a class
        # (CIFAR-10N worst, 20 epochs: 60.2% against 54.6% unscaled, where CE has 60.3%).
        # The pseudo stage trains on a selection, a memorization guard (Method.memorization_guards,
        # NLNL's selective stages too): on augmented batches the JNPL stage alone with a cosine
        # ended level with it and without its restart's dip (CIFAR-10N worst: 60.3% against 60.2%,
        # falls 1.7 and 3.4 points; mnist5k: 96.1% and 96.2% against 95.5% and 96.1%).
        # These were measured with the JNPL stage at lr 0.02; at 0.1, the other short-budget
        # presets', it ended higher: 61.3% on CIFAR-10N worst; on mnist5k (40% symmetric, 30%
        # pair flips) 96.3% and 96.8%, without augmentation (with the pseudo stage) 95.7% and
        # 96.4% against 95.2% and 94.7% (docs/methods.md).
        # The class weights of NLNL's code (JNPL's paper, by NLNL's authors, adopts NLNL's techniques
        # and has no code): where the given labels' classes are skewed (CIFAR-10N worst: 4,040 to 6,053
        # samples) they lifted JNPL above CE on each seed (62.7%, 63.2%, 63.2% against 60.8%, 62.0%, 61.4%).
        return cls(epochs=30, batch_size=64, lr=0.1, weight_decay=1e-4, complementary_labels=num_classes - 1,
                   pseudo_lr=0.02, warmup_epochs=3, clean_class_share=0.5, relabel=False, class_balanced=True,
                   selective=None, class_weights=True)

    def validate(self):
        super().validate()
        self.require("pl_weight", self.pl_weight >= 0, "must be >= 0")


class JNPLStage(enum.Enum):
    JNPL = "jnpl"


class JNPL(Method):
    name = "jnpl"
    Config = JNPLConfig
    memorization_guards = {"selective": (True, False)}
    selective_shares = (1000, 480)  # the epochs after the warm-up, with `selective`: JNPL stage, pseudo stage

    def setup(self):
        self.setup_negative_learning()
        if self.config.class_balanced and self.k != self.num_classes - 1:
            raise ValueError(f"jnpl: class_balanced needs complementary_labels = num_classes - 1 = "
                             f"{self.num_classes - 1} (NL+ is then CE times p_y), got {self.k}; "
                             f"turn it off (class_balanced=False, --jnpl-no-class-balanced) for other k")

    def setup_negative_learning(self):
        """What JNPL and NLNL keep: pseudo-labels, the selection, complementary-label draws."""
        self.register_buffer("pseudo_labels", self.given_labels.clone())
        # The samples taken as clean, which the pseudo stage trains with CE when it does not relabel.
        self.register_buffer("selected", torch.zeros(len(self.given_labels), dtype=torch.bool, device=self.device))
        # The NLNL code's class balance of the given labels: the most frequent class weighs 1.
        counts = torch.bincount(self.given_labels, minlength=self.num_classes).clamp(min=1).float()
        self.register_buffer("class_weight", counts.max() / counts if self.config.class_weights
                             else torch.ones_like(counts), persistent=False)
        self.k = self.config.complementary_labels
        self.replacement = self.k > self.num_classes - 1  # distinct labels whenever that is possible

    def stages(self):
        warmup = self.warmup_stages(self.config.warmup_lr)
        if not self.config.selective:
            return warmup + [self.negative_learning_only(JNPLStage.JNPL)]
        first, second = split_epochs(self.config.epochs - self.config.warmup_epochs, self.selective_shares)
        return warmup + [Stage(JNPLStage.JNPL, first, self.config.lr, milestones=(0.8,), reset_optimizer=bool(warmup)),
                         self.pseudo_stage(second, milestones=(0.4, 0.6))]

    def epochs_after_warmup(self, config):
        return len(self.selective_shares) if config.selective else 1

    def negative_learning_only(self, kind):
        """Without the selective stages: stage `kind` for every epoch after the warm-up, its lr
        decayed along a cosine to 0."""
        return Stage(kind, self.config.epochs - self.config.warmup_epochs, self.config.lr, cosine=True,
                     reset_optimizer=self.config.warmup_epochs > 0)

    def pseudo_stage(self, epochs, milestones):
        return Stage(Phase.PSEUDO, epochs, self.config.pseudo_lr, milestones=milestones, reset_optimizer=True)

    def start_stage(self, stage, outputs):
        if stage.kind is Phase.PSEUDO:
            probs = outputs["probs"]
            clean = self.clean_selection(confidence_on_labels(probs, self.given_labels))
            if self.config.relabel:
                self.pseudo_labels = torch.where(clean, self.given_labels, probs.argmax(1))
            else:
                self.selected = clean

    def clean_selection(self, confidence):
        return clean_selection(confidence, self.given_labels, self.num_classes, self.config.clean_class_share)

    def complementary(self, batch, step):
        return sample_complementary(batch.labels, self.num_classes, k=self.k, replacement=self.replacement,
                                    seed=self.seed, offset=COMPLEMENTARY_STREAM + step.step, first_row=batch.first_row)

    def select(self, logits, batch, step):
        """PL+'s rows and their arg-max (jnpl_select), drawn apart from the complementary labels."""
        return jnpl_select(logits, seed=self.seed, offset=step.step, first_row=batch.first_row)

    def loss(self, model, batch, step):
        logits = model(batch.images)
        if step.stage.kind is Phase.WARMUP:
            return weighted_ce(logits, batch.labels)
        if step.stage.kind is Phase.PSEUDO:
            return self.pseudo_loss(logits, batch, step)
        keep, yhat = self.select(logits, batch, step)
        # PL+'s mean over the global batch's kept rows as a masked sum (indexing by the mask would wait
        # for the GPU): DDP averages the processes' gradients, and the trainer scales by the share.
        kept = self.processes.all_reduce(keep.sum().float()).clamp_min(1)
        pl_plus = (pl_plus_loss(logits, yhat, weight=keep.float(), reduction="sum")
                   * (self.processes.world / batch.share) / kept)
        return self.negative_loss(logits, batch, step) + self.config.pl_weight * pl_plus

    def negative_loss(self, logits, batch, step, weight=None):
        """NL+ over the step's complementary labels. class_balanced (k = C - 1, where NL+'s gradient
        is CE's times the detached p_y): CE weighted by p_y / the mean p_y of the sample's given class
        in the batch, NL+'s gradient rescaled per class with loss values on CE's scale (NL+ divided
        by a tiny class mean would not be). Under DDP the mean is over the process's rows. Both forms
        times the class weights (`class_weights`) and `weight`."""
        weight = self.class_weight[batch.labels] * (1 if weight is None else weight)
        if not self.config.class_balanced:
            return nl_plus_loss(logits, self.complementary(batch, step), weight=weight)
        confidence = confidence_on_labels(torch.softmax(logits.detach().float(), 1), batch.labels)
        balanced = class_mean_one(confidence, batch.labels, self.num_classes)
        return weighted_ce(logits, batch.labels, weight=balanced * weight)

    def pseudo_loss(self, logits, batch, step):
        if self.config.relabel:
            return weighted_ce(logits, self.pseudo_labels[batch.indices])
        clean = self.selected[batch.indices].float()
        return self.sel_pl_loss(logits, batch) + self.negative_loss(logits, batch, step, 1 - clean)

    def sel_pl_loss(self, logits, batch):
        """CE on the given labels of the samples taken as clean (the selection), class-weighted."""
        return weighted_ce(logits, batch.labels, weight=self.selected[batch.indices] * self.class_weight[batch.labels])

    def clean_scores(self, outputs):
        """The confidence on the given label, flagged where the pseudo-label stage would not
        take the sample as clean; without the selective stages, where the arg-max is another
        class (as CE's: there is no selection to follow)."""
        if not self.config.selective:
            return self.confidence_scores(outputs["probs"])
        score = confidence_on_labels(outputs["probs"], self.given_labels)
        return score, ~self.clean_selection(score)
