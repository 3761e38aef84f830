"""PMNAR (pmnar.txt): positive and multi-negative learning with adaptive reweighting.

Two networks are trained side by side, each on
    w_i * PM(f(x_i), y_i, history_i) + beta * KL((f(x_i) + f'(x_i)) / 2 || f(Aug(x_i)))
(eq. 10). PM = -log p_y - sum of log(1 - p_k) over the classes k != y that the sample's
history does not exclude (eq. 7); the history is every class that was ever the first network's
arg-max on the sample after the warm-up (Alg. 1 line 8, one history shared by both networks).
The weights come from the PEER network: w_i = f'_y(x_i) - min_j f'_y(x_j) over the whole
training set (eq. 4, normalize_weights "sub_min"), recomputed after every epoch from the
warm-up on, all 1 before; they are not rescaled (eq. 4 as written). The KL target is the
two networks' mean prediction on the training view, detached; Aug(x) is a second, strong
(RandAugment) view of the same batch.
Evaluation: the mean of the two networks' softmax. Clean score: the mean of the two networks'
confidence on the given label (each is the other's weight source); flagged noisy below 0.5.
Every component can be switched off from the command line for the paper's ablation (Table 5).
"""
import torch
from torch import nn

from engine.losses import normalize_weights, pm_loss, update_history
from engine.methods.base import Defaults, Method, Stage, confidence_on_labels, kl_to_softmax

CLEAN_THRESHOLD = 0.5


class PeerNetworks(nn.Module):
    """Networks trained together on the same batches; forward returns their logits as a list."""

    def __init__(self, networks):
        super().__init__()
        self.networks = nn.ModuleList(networks)

    def forward(self, x):
        return [network(x) for network in self.networks]


class PMNAR(Method):
    name = "pmnar"
    DEFAULTS = {
        # pmnar.txt section 4: PreAct ResNet-18, SGD lr 0.02 (/10 every 120 epochs), wd 5e-4,
        # batch 128, 300 epochs; 10 warm-up epochs (the supplementary's choice).
        "paper": Defaults(epochs=300, batch_size=128, lr=0.02, weight_decay=5e-4, warmup_epochs=10,
                          model={"paper": "preact_resnet18", "small": "small_cnn"}),
        "small": Defaults(epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, warmup_epochs=5),
    }

    @classmethod
    def add_arguments(cls, parser):
        group = parser.add_argument_group("pmnar", "PMNAR options; the paper's ablation: PM = --pmnar-single-network "
                                                   "--pmnar-no-reweighting --pmnar-no-consistency, PM+AR = "
                                                   "--pmnar-single-network --pmnar-no-consistency")
        group.add_argument("--pmnar-beta", type=float,
                           help="weight of the KL consistency term (default: 1.0 up to 10 classes, else 0.1)")
        group.add_argument("--pmnar-single-network", action="store_true",
                           help="train one network whose own confidences give its weights (no peer)")
        group.add_argument("--pmnar-no-reweighting", action="store_true", help="all weights 1 (no AR)")
        group.add_argument("--pmnar-no-consistency", action="store_true", help="no KL consistency term")
        group.add_argument("--pmnar-no-history", action="store_true",
                           help="multi-negative learning on every class but y (no exclusion of past predictions)")
        group.add_argument("--pmnar-view", choices=["weak", "strong"], default="strong",
                           help="augmentation of the consistency view Aug(x)")

    def __init__(self, args, num_classes, given_labels, device, defaults):
        super().__init__(args, num_classes, given_labels, device, defaults)
        self.num_networks = 1 if args.pmnar_single_network else 2
        self.beta = args.pmnar_beta if args.pmnar_beta is not None else (1.0 if num_classes <= 10 else 0.1)
        if self.beta < 0:
            raise ValueError(f"--pmnar-beta must be >= 0, got {self.beta}")
        self.consistency = not args.pmnar_no_consistency and self.beta > 0
        self.second_view = args.pmnar_view if self.consistency else None
        self.reweighting = not args.pmnar_no_reweighting
        self.use_history = not args.pmnar_no_history
        n = len(given_labels)
        self.weights = torch.ones(self.num_networks, n, device=device)          # row k: network k's weights
        self.history = torch.zeros(n, num_classes, dtype=torch.bool, device=device)  # ever predicted, per sample

    def build_model(self, make_network):
        return PeerNetworks([make_network() for _ in range(self.num_networks)])

    def stages(self, epochs, lr):
        return [Stage("pmnar", epochs, lr, milestones=(0.4, 0.8))]

    def batch_loss(self, model, batch, stage):
        logits = model(batch.images)
        exclude = self.history[batch.indices] if self.use_history else None
        total = 0.0
        if self.consistency:
            with torch.no_grad():
                target = torch.stack([torch.softmax(z.float(), 1) for z in logits]).mean(0)
            augmented = model(batch.second_view)
        for k, z in enumerate(logits):
            total = total + pm_loss(z, batch.labels, exclude, weight=self.weights[k, batch.indices])
            if self.consistency:
                total = total + self.beta * kl_to_softmax(target, augmented[k])
        return total

    @torch.no_grad()
    def predict(self, model, images):
        probs = torch.stack([torch.softmax(z.float(), 1) for z in model(images)], 1)  # [B, networks, C]
        return {"probs": probs.mean(1), "network_probs": probs}

    def end_epoch(self, epoch, stage, outputs):
        if epoch + 1 < self.defaults.warmup_epochs:
            return
        network_probs = outputs["network_probs"]
        if self.use_history:
            everyone = torch.arange(len(self.given_labels), device=self.device)
            update_history(self.history, everyone, network_probs[:, 0])
        if self.reweighting:
            confidence = torch.stack([confidence_on_labels(network_probs[:, k], self.given_labels)
                                      for k in range(self.num_networks)])
            peer = confidence.flip(0)  # network 0 is weighted by network 1 and vice versa (itself when alone)
            self.weights = torch.stack([normalize_weights(c, "sub_min") for c in peer])

    def clean_scores(self, outputs):
        score = confidence_on_labels(outputs["probs"], self.given_labels)
        return score, score < CLEAN_THRESHOLD

    def state_dict(self):
        return {"weights": self.weights.cpu(), "history": self.history.cpu()}

    def load_state_dict(self, state):
        self.weights = state["weights"].to(self.device)
        self.history = state["history"].to(self.device)
