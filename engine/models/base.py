"""The interface every model shares, so training methods can reach features and stage maps
without knowing the architecture."""
import torch
from torch import nn


def global_pool(stage_map):
    """[B, C, H, W] maps averaged to [B, C]; [B, C] features (an MLP's stages) stay as they are."""
    if stage_map.ndim == 2:
        return stage_map
    return torch.flatten(nn.functional.adaptive_avg_pool2d(stage_map, 1), 1)


@torch.no_grad()
def recalibrate_batchnorm(model, batches):
    """Sets every BatchNorm's running statistics of `model` to their average over `batches` (an
    iterable of inputs) under the current weights ("precise BN"); the rest of the model runs in
    eval mode (no dropout). The running averages kept during training lag the weights: after a
    change of loss they made test accuracy look 10-20 points lower for an epoch or two than the
    same weights give with recalibrated statistics (measured on mnist5k, JNPL's pseudo-label
    stage: 72.0% against 92.0%). Returns the number of batches averaged."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    was_training, momenta = model.training, [m.momentum for m in norms]
    model.eval()
    used = 0
    for inputs in batches:
        if len(inputs) < 2:
            continue  # one sample has no batch statistics (BatchNorm1d refuses it)
        if not used:  # reset only once there is something to replace the statistics with
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the batches
                m.train()
        model(inputs)
        used += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return used


class ClassifierBase(nn.Module):
    """A stack of stages, a global average pool and a linear head `fc`.

    Subclasses only build their stages and pass them in. Then:
      forward_stages(x)   -> list of the maps (or feature vectors) after each stage; the last is the
                           one pooled,
      forward_features(x) -> pooled feature [B, feature_dim], exactly what `fc` consumes,
      forward(x)          -> logits [B, num_classes] == fc(forward_features(x)).
    Dropout (if any, default none) is applied inside the pooled feature, so `fc` never sees
    anything other than what forward_features returns; in eval mode it is the identity.
    """

    def __init__(self, stages, stage_channels, num_classes, dropout=0.0):
        super().__init__()
        if len(stages) != len(stage_channels):
            raise ValueError(f"got {len(stages)} stages but {len(stage_channels)} stage channel counts")
        self.stages = nn.ModuleList(stages)
        self.build_head(stage_channels, num_classes, dropout)

    def build_head(self, stage_channels, num_classes, dropout):
        """Everything after the stages. A subclass that registers its stages under names of its
        own (and overrides forward_stages) calls nn.Module.__init__ and this, not __init__."""
        self.stage_channels = list(stage_channels)
        self.feature_dim = self.stage_channels[-1]
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def forward_stages(self, x):
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def pool_features(self, last_map):
        """Pooled feature of the last stage map; lets wrappers reuse maps they already computed."""
        return self.dropout(global_pool(last_map))

    def forward_features(self, x):
        return self.pool_features(self.forward_stages(x)[-1])

    def forward(self, x):
        return self.fc(self.forward_features(x))
