"""JNPL (jnpl.txt): NL+ + 0.01 PL+ in one stage, then pseudo-labeling.

Stage "jnpl": k complementary labels per sample and step (distinct, uniform over the classes
that are not the given label; k = 1 in the paper), L = NL+ + lambda * PL+ where PL+ is applied
to the rows that jnpl_select keeps (the mean over those rows; 0 when none is kept).
An optional CE "warmup" stage comes first (small-data defaults).
Stage "pseudo": samples whose confidence on the given label is >= clean_threshold keep their
label, the others take the model's arg-max at the start of the stage; CE on these labels.
The paper trains 1000 + 480 epochs on CIFAR; `--epochs` keeps that 1000:480 ratio.
Our pseudo stage continues the same network instead of training a new one (document in README).
"""
import torch

from engine.losses import jnpl_select, nl_plus_loss, pl_plus_loss, sample_complementary, weighted_ce
from engine.methods.base import Defaults, Method, Stage, confidence_on_labels, split_epochs


class JNPL(Method):
    name = "jnpl"
    DEFAULTS = {
        # jnpl.txt: SGD m 0.9, wd 1e-4, batch 128, lr 0.01 (x0.1 at 800 of 1000), pseudo lr 0.1.
        "paper": Defaults(epochs=1480, batch_size=128, lr=0.01, weight_decay=1e-4,
                          model={"paper": "preact_resnet34", "small": "small_cnn"}),
        # Small data (mnist5k, digits; a few dozen epochs on a CPU): one complementary label
        # per step learns too slowly, so every other class is a complementary label (k = C - 1),
        # after 3 CE warm-up epochs (the early-learning phase, before CE memorizes noise);
        # PL+ on a random network makes it collapse onto a few classes, the warm-up avoids it.
        "small": Defaults(epochs=30, batch_size=64, lr=0.02, weight_decay=1e-4, complementary_labels=None,
                          pseudo_lr=0.05, warmup_epochs=3),
    }
    pl_weight = 0.01
    clean_threshold = 0.5

    def __init__(self, args, num_classes, given_labels, device, defaults):
        super().__init__(args, num_classes, given_labels, device, defaults)
        self.pseudo_labels = self.given_labels.clone()
        self.k = self.complementary_count(num_classes)
        self.replacement = self.k > num_classes - 1  # distinct labels whenever that is possible

    def complementary_count(self, num_classes):
        k = self.defaults.complementary_labels
        return num_classes - 1 if k is None else k

    def warmup_stages(self):
        warmup = self.defaults.warmup_epochs
        return [Stage("warmup", warmup, self.defaults.warmup_lr)] if warmup else []

    def stages(self, epochs, lr):
        warmup = self.warmup_stages()
        first, second = split_epochs(epochs - self.defaults.warmup_epochs, (1000, 480))
        return warmup + [Stage("jnpl", first, lr, milestones=(0.8,), reset_optimizer=bool(warmup)),
                         Stage("pseudo", second, self.defaults.pseudo_lr, milestones=(0.4, 0.6), reset_optimizer=True)]

    def start_stage(self, stage, outputs):
        if stage.name == "pseudo":
            clean = confidence_on_labels(outputs["probs"], self.given_labels) >= self.clean_threshold
            self.pseudo_labels = torch.where(clean, self.given_labels, outputs["probs"].argmax(1))

    def batch_loss(self, model, batch, stage):
        logits = model(batch.images)
        if stage.name == "warmup":
            return weighted_ce(logits, batch.labels)
        if stage.name == "pseudo":
            return weighted_ce(logits, self.pseudo_labels[batch.indices])
        comp = sample_complementary(batch.labels, self.num_classes, k=self.k, replacement=self.replacement,
                                    seed=self.args.seed, offset=batch.step)
        keep, yhat = jnpl_select(logits, seed=self.args.seed, offset=batch.step)
        return nl_plus_loss(logits, comp) + self.pl_weight * pl_plus_loss(logits[keep], yhat[keep])

    def clean_scores(self, outputs):
        score = confidence_on_labels(outputs["probs"], self.given_labels)
        return score, score < self.clean_threshold

    def state_dict(self):
        return {"pseudo_labels": self.pseudo_labels.cpu()}

    def load_state_dict(self, state):
        self.pseudo_labels = state["pseudo_labels"].to(self.device)
