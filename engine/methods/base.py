"""The interface between the trainer and one training method.

A method is an `nn.Module`: its per-sample state (weights, label histories, pseudo-labels, ...)
are buffers and parameters created in `setup()`, so they move between devices with `.to()` and
are checkpointed by `state_dict()` without code of their own. It says only what differs from
plain CE: its hyper-parameters (`Config`, a `MethodConfig` subclass with the paper's presets),
its stages, the module it trains, its loss for a batch, its per-epoch update from the outputs on
the whole training set, and its clean score for label-noise detection. The trainer does the
rest (data, loop, optimizer, evaluation, checkpoints, outputs).

A method written outside this package trains the same way:

    class GCE(Method):
        name = "gce"
        Config = GCEConfig          # @dataclass(frozen=True) class GCEConfig(MethodConfig): q: float = 0.7
        def loss(self, model, batch, step): ...

    engine.fit(x, labels, method=GCE(q=0.5))        # or: --method my_module:GCE --gce-q 0.5
"""
import dataclasses
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.config import ConfigError, MethodConfig, check_fields, short_budget, with_overrides
from engine.distributed import Processes
from engine.losses import weighted_ce

CLEAN_THRESHOLD = 0.5  # a sample is taken as clean from this confidence on its given label (clean_selection)


class Phase(enum.Enum):
    """Stage kinds more than one method has; a method's own kinds are its own Enum."""

    WARMUP = "warmup"    # plain CE (or the method's loss with all weights 1) before the method's regime
    PSEUDO = "pseudo"    # CE on labels fixed at the start of the stage


CE_MILESTONES = (0.5, 0.75)   # plain cross-entropy's lr x0.1 points, as fractions of the epochs


class CEStage(enum.Enum):
    CE = "ce"


class CleanSubset(enum.Enum):
    """What a method does with the held-out clean subset (samples with trusted labels)."""

    NOT_NEEDED = "not needed"   # one, where given, is trained on with its labels like any sample
    BATCHES = "batches"         # needed, kept out of the training batches: each Batch carries an augmented
    #                             batch of it for the meta-step (L2B)
    TRAINED_ON = "trained on"   # needed, and it joins the training batches with its labels (PU-distillation)


@dataclass
class Stage:
    """A run of epochs with one loss regime and one SGD schedule: lr x0.1 at each milestone,
    or with cosine=True a cosine decay from lr to min_lr over the stage. `kind` is an Enum
    member; its value names the stage in metrics.csv."""

    kind: enum.Enum
    epochs: int
    lr: float
    milestones: tuple = ()      # fractions of the stage's epochs at which lr drops 10x (never before its 2nd)
    reset_optimizer: bool = False
    cosine: bool = False
    min_lr: float = 0.0

    @classmethod
    def decaying(cls, kind, epochs, lr, milestones, cosine):
        """The step schedule at `milestones`, or with `cosine` a cosine to 0 in its place (the
        methods' `cosine` option)."""
        return cls(kind, epochs, lr, cosine=True) if cosine else cls(kind, epochs, lr, milestones=milestones)

    @property
    def name(self):
        return self.kind.value

    def lr_at(self, epoch_in_stage):
        if self.cosine:
            return self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * epoch_in_stage / self.epochs)) / 2
        # A milestone that rounds to the first epoch (40% of a 1-epoch stage) would leave no epoch at lr.
        drops = sum(epoch_in_stage >= max(1, round(m * self.epochs)) for m in self.milestones)
        return self.lr * 0.1**drops


@dataclass
class Step:
    """Where training is when the loss is asked for."""

    epoch: int                  # 0-based over the whole run
    stage: Stage
    epoch_in_stage: int
    step: int                   # global optimizer step: the offset of the samplers' random streams
    optimizer: torch.optim.Optimizer


@dataclass
class Batch:
    images: torch.Tensor      # normalized [B, C, H, W] images or [B, D] feature vectors
    indices: torch.Tensor     # int64 [B], positions in the training set
    labels: torch.Tensor      # int64 [B], the given (possibly noisy) labels
    second_view: torch.Tensor | None = None  # another augmentation of the same images (Method.second_view)
    clean_images: torch.Tensor | None = None  # a batch of the clean subset (CleanSubset.BATCHES)
    clean_labels: torch.Tensor | None = None  # and its true labels
    first_row: int = 0        # where this process's part starts in the global batch (random streams)
    share: float = 1.0        # this part's rows x processes / the global batch's: the trainer scales a mean loss by it


@dataclass
class Preparation:
    """What Method.prepare may use: the clean subset with its true labels, the rest of the
    training set (whose labels it must read from the method's given_labels, if at all),
    new networks, and loaders over training images."""

    clean_indices: np.ndarray     # int64, positions in the training set
    clean_labels: torch.Tensor    # their true labels, on the device
    noisy_indices: np.ndarray     # the noisy training set
    make_network: Callable[[], torch.nn.Module]   # a new classifier on the device
    make_optimizer: Callable      # (parameters, lr) -> SGD with the run's momentum and weight decay
    # loader(indices, shuffle=False, augment=False, seed=0, epoch=0) -> (inputs on the device,
    # indices) batches of training samples `indices` (None: all, in order)
    loader: Callable
    autocast: Callable            # () -> the run's autocast context
    # over_training_set(network, output) -> float32 output(network, inputs) for every training
    # sample (unaugmented, in order, eval mode, no gradient)
    over_training_set: Callable
    # recalibrate_batchnorm(network): its BatchNorm statistics from the training set (after training it)
    recalibrate_batchnorm: Callable
    log: Callable = print         # (line) -> the run's progress output


class Diverged(RuntimeError):
    """A training loss, or a model's outputs, became NaN or infinite: the run stops there."""

    @classmethod
    def at(cls, where, what, lr, kept=""):
        return cls(f"{where}: {what}: the run diverged and stopped{kept}; try a lower learning rate (lr, now {lr:g})")


def epoch_seed(seed, epoch):
    """The torch seed of model-side randomness (initial draws, mixup partners) in epoch `epoch`
    of a training seeded `seed`: the run's loop and a method's own sub-trainings."""
    return seed * 100_003 + epoch


def sub_training_seed(seed, part):
    """The seed of a method's own sub-training number `part` (a feature trunk, a teacher)."""
    return seed * 1000 + part


def split_epochs(total, fractions):
    """Whole epochs per stage, in proportion to `fractions`, each >= 1, summing to `total`."""
    if total < len(fractions):
        raise ValueError(f"epochs (after any warm-up) must be at least {len(fractions)} for this method's "
                         f"{len(fractions)} stages, got {total}")
    counts = [max(1, int(round(total * f / sum(fractions)))) for f in fractions]
    counts[-1] = total - sum(counts[:-1])
    for stage in reversed(range(len(counts) - 1)):  # a last stage rounded to < 1 epoch takes from the stages
        while counts[-1] < 1 and counts[stage] > 1:  # before it that have more than one, the latest first
            counts[stage] -= 1
            counts[-1] += 1
    return counts


def confidence_on_labels(probs, labels):
    return probs.gather(1, labels[:, None]).squeeze(1)


def class_mean_one(weights, labels, num_classes):
    """weights [..., N] divided by the mean weight of each sample's given class (`labels` [N]) over
    the last dimension; a class whose weights are all 0 gets 1s: nothing ranks its samples. A
    weight that a whole class shares then only ranks the class's samples and no class is
    starved. No device sync (torch.bincount would wait for the GPU)."""
    sums = weights.new_zeros(*weights.shape[:-1], num_classes).index_add_(-1, labels, weights)
    counts = weights.new_zeros(num_classes).index_add_(0, labels, weights.new_ones(labels.shape))
    means = (sums / counts.clamp(min=1))[..., labels]
    return torch.where(means > 0, weights / means.clamp(min=torch.finfo(weights.dtype).tiny), 1.0)


def clean_selection(confidence, labels, num_classes, class_share):
    """bool [N]: the samples taken as clean, those with `confidence` on their given `labels` >=
    CLEAN_THRESHOLD (the papers' rule) and, whatever their confidence, the `class_share` most
    confident of each given class. A model still weak (a short budget on hard data) passes 0.5
    on few samples, most of a few easy classes (CIFAR-10N worst, small CNN, 20 epochs of CE: 16%
    of the samples, 41 of one class), and CE on them alone starves the other classes."""
    selected = confidence >= CLEAN_THRESHOLD
    for label in range(num_classes) if class_share > 0 else ():
        members = (labels == label).nonzero().squeeze(1)
        count = round(class_share * len(members))
        selected[members[confidence[members].topk(count).indices]] = True
    return selected


def kl_to_softmax(target_probs, logits, temperature=1.0):
    """KL(target || softmax(logits / T)), the mean over the batch (consistency, distillation)."""
    return torch.nn.functional.kl_div(torch.log_softmax(logits.float() / temperature, 1), target_probs,
                                      reduction="batchmean")


class PeerNetworks(nn.Module):
    """Networks trained together on the same batches; forward returns their logits as a list."""

    def __init__(self, networks):
        super().__init__()
        self.networks = nn.ModuleList(networks)

    def forward(self, x):
        return [network(x) for network in self.networks]


class Method(nn.Module):
    """Plain CE on the given labels; subclasses override what differs.

    "outputs" below is what `predict` returns, concatenated over the whole (unaugmented)
    training set in its order: a dict of tensors whose "probs" [N, C] is the class prediction.
    """

    name = "ce"
    Config = MethodConfig
    clean_subset = CleanSubset.NOT_NEEDED
    # Config fields that guard against memorizing the labels and that a preset may leave unset
    # (None), each with its two values: (where the training batches are not augmented, where
    # they are). Without augmentation networks memorize within a few epochs and the guard wins;
    # with it a short run may not memorize at all and the guard costs accuracy (docs/methods.md,
    # "Defaults"). A switch is (True, False): on where the batches are not augmented.
    memorization_guards = {}
    # Under DDP a loss is this process's mean over its rows of the global batch, which the
    # trainer scales by the process's share of a last batch that does not divide evenly. A loss
    # that is already this process's part of the global batch's (L2B's) sets it False.
    loss_is_a_mean_over_the_rows = True

    def __init__(self, **options):
        """options: fields of `Config` that replace the preset's values."""
        super().__init__()
        check_fields(self.Config, options)
        self.options = options
        self.config = None

    # ------------------------------------------------------------ set-up by the trainer

    def configure(self, size, num_classes):
        """self.config: the preset for data of size class `size` ("paper" or "small") with
        `num_classes` classes, with the options given replacing its values. Options asking for
        at most SHORT_BUDGET epochs get the "small" preset whatever the size: the paper presets
        squeezed into a short budget learn too slowly (docs/methods.md). Memorization guards left
        unset are resolved here, so the config records the values used."""
        if short_budget(self.options.get("epochs")):
            size = "small"
        preset, options = self.Config.preset(size, num_classes), self.options
        if "warmup_epochs" not in options and getattr(preset, "warmup_epochs", 0):
            options = {**options, "warmup_epochs": self.fitted_warmup(preset)}
        self.config = self.with_guards_resolved(with_overrides(preset, options))
        self.check_epochs_after_warmup(self.config)
        return self.config

    def fitted_warmup(self, preset):
        """The preset's warm-up where it leaves the epochs asked for enough after it (the
        method's epochs_after_warmup); else a shorter one, the preset's share of the epochs
        rounded down, shorter still if the method needs it. A warm-up the user sets is never
        changed; epochs too few even without a warm-up are refused naming the smallest."""
        config = self.with_guards_resolved(with_overrides(preset, {**self.options, "warmup_epochs": 0}))
        needed = self.epochs_after_warmup(config)
        if config.epochs - preset.warmup_epochs >= needed:
            return preset.warmup_epochs
        self.check_epochs_after_warmup(config)
        return min(config.epochs * preset.warmup_epochs // preset.epochs, config.epochs - needed)

    def check_epochs_after_warmup(self, config):
        """Refuses a `config` that leaves the method fewer epochs after its warm-up than it needs
        (epochs_after_warmup), naming the warm-up where it has one (the user's: a fitted one
        leaves enough), else the epochs."""
        needed, warmup = self.epochs_after_warmup(config), getattr(config, "warmup_epochs", 0)
        if config.epochs - warmup >= needed:
            return
        if warmup:
            raise ConfigError(type(config), "warmup_epochs", f"must leave at least {needed} of the {config.epochs} "
                                                             f"epochs after it for method {self.name} with these "
                                                             f"options (one per stage after it), got {warmup}")
        raise ConfigError(type(config), "epochs", f"must be at least {needed} for method {self.name} with these "
                                                  f"options, got {config.epochs}")

    def epochs_after_warmup(self, config):
        """The fewest epochs `config` must leave after its warm-up (one per stage that follows it)."""
        del config
        return 1

    def with_guards_resolved(self, config):
        """`config` with its memorization guards left unset given their value for the training
        batches' augmentation."""
        unset = {name: augmented if config.augments_training else not_augmented
                 for name, (not_augmented, augmented) in self.memorization_guards.items()
                 if getattr(config, name) is None}
        return dataclasses.replace(config, **unset)

    def bind(self, config, given_labels, num_classes, seed, device, processes=Processes()):
        """Called once before training: the resolved config, the given labels [N] of the whole
        training set, the run's seed and device, and the processes of the job (a loss that
        normalizes over the batch needs the global batch's totals); then `setup()`. A config
        not made by `configure` gets its unset memorization guards resolved here."""
        self.config = self.with_guards_resolved(config)
        self.num_classes, self.seed, self.device = num_classes, seed, torch.device(device)
        self.processes = processes
        self.register_buffer("given_labels", given_labels.to(self.device), persistent=False)
        self.setup()

    def setup(self):
        """Creates the per-sample state (buffers / parameters on self.device)."""

    @property
    def second_view(self):
        """None, "weak" or "strong": a second augmentation in Batch.second_view."""
        return None

    @property
    def grad_clip(self):
        """Max gradient norm of the model's parameters, or None."""
        return None

    def warmup_stages(self, lr=None):
        """[a CE warm-up Stage of config.warmup_epochs at `lr` (default: the run's)], or []."""
        epochs = getattr(self.config, "warmup_epochs", 0)
        return [Stage(Phase.WARMUP, epochs, self.config.lr if lr is None else lr)] if epochs else []

    # ------------------------------------------------------------ training

    def build_model(self, make_network):
        """The module the trainer optimizes; make_network() builds one classifier."""
        return make_network()

    def param_groups(self):
        """Extra optimizer parameter groups (per-sample parameters, ...). A group with
        "fixed_lr": True keeps its lr; the others follow the stage's schedule."""
        return []

    def sample_parameters(self):
        """Parameters with one row per training sample that the optimizer updates each step
        (kept out of DDP: on several processes, the rows of each step's batch are synced)."""
        return []

    def stages(self):
        return [Stage(CEStage.CE, self.config.epochs, self.config.lr, milestones=CE_MILESTONES)]

    def prepare(self, ctx):
        """Work before the first epoch of a new run (not of a resumed one: what it computes
        must be in buffers), with what a Preparation gives."""

    def start_stage(self, stage, outputs):
        """Called before a stage's first epoch with the current training-set outputs, e.g. to
        fix pseudo-labels."""

    def loss(self, model, batch, step):
        """The training loss of `batch` (a Batch) at `step` (a Step)."""
        return weighted_ce(model(batch.images), batch.labels)

    @torch.no_grad()
    def predict(self, model, images):
        return {"probs": torch.softmax(model(images).float(), 1)}

    def eval_model(self, model):
        """The module whose predictions are evaluated on the test set (e.g. an EMA copy)."""
        return model

    def end_epoch(self, step, outputs):
        """Per-sample state update from the outputs on the whole training set after the epoch
        `step.epoch` (its last Step)."""

    # ------------------------------------------------------------ label issues

    def issue_probs(self, outputs):
        """The class probabilities [N, C] on the training set that the label issues are scored
        from (the table's predicted_label, FitResult.pred_probs): the trained network's."""
        return outputs["probs"]

    def clean_scores(self, outputs):
        """(label_quality [N] in [0, 1], lower = more likely mislabeled; is_label_issue [N] bool).
        CE, PMNAR, L2B, PU-distillation: confidence_scores of issue_probs."""
        return self.confidence_scores(self.issue_probs(outputs))

    def confidence_scores(self, probs):
        """The confidence on the given label, flagged where the arg-max is another class. A
        threshold on the confidence (0.5, PMNAR's paper) flags the same samples where the model
        is sure of its arg-maxes, and many clean ones too where it is not (docs/methods.md)."""
        return confidence_on_labels(probs, self.given_labels), probs.argmax(1) != self.given_labels

    def summary(self, true_labels):
        """Extra entries for summary.json; true_labels [N] (CPU) only for reporting."""
        return {}
