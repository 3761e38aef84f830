"""Extra classifier heads sharing one trunk pass: e.g. a negative-learning head next to the main
one, or per-stage classifiers for self-distillation."""
import re

from torch import nn

from engine.models.base import global_pool


class StageHead(nn.Module):
    """A shallow classifier on an intermediate stage map (self-distillation, Zhang et al. 2019):
    global average pool, a linear + ReLU bottleneck to the deepest feature's width (so a feature
    loss can compare the two), then a linear classifier. forward -> (features, logits)."""

    def __init__(self, channels, feature_dim, num_classes):
        super().__init__()
        self.bottleneck = nn.Sequential(nn.Linear(channels, feature_dim), nn.ReLU(inplace=True))
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, stage_map):
        features = self.bottleneck(global_pool(stage_map))
        return features, self.fc(features)


def stage_heads(model, num_classes):
    """One StageHead per intermediate stage map (all but the last, which the model's own head
    already classifies)."""
    return nn.ModuleList(StageHead(channels, model.feature_dim, num_classes) for channels in model.stage_channels[:-1])


class MultiHead(nn.Module):
    """Wraps a model from engine.models and runs its trunk once per forward.

    forward(x) returns a dict:
      "main"              -> the wrapped model's logits (its own `fc`),
      <name>              -> a linear head on the same pooled feature, for each name in extra_heads
                             (a mapping name -> number of outputs),
    and with with_stage_heads=True also
      "stage0", "stage1"  -> logits of the stage_heads classifiers, one per intermediate stage,
      "stage0_features"   -> their bottleneck features [B, model.feature_dim],
      "features"          -> the pooled feature [B, model.feature_dim].
    """

    def __init__(self, model, extra_heads=None, with_stage_heads=False):
        super().__init__()
        extra_heads = dict(extra_heads or {})
        for name in extra_heads:
            if name in ("main", "features") or re.fullmatch(r"stage\d+(_features)?", name):
                raise ValueError(f"head name {name!r} is reserved (main, features, stage<N>, stage<N>_features)")
        self.model = model
        self.heads = nn.ModuleDict(
            {name: nn.Linear(model.feature_dim, size) for name, size in extra_heads.items()}
        )
        self.stage_heads = stage_heads(model, model.num_classes) if with_stage_heads else None
        # The new heads where the wrapped model already is (e.g. on the GPU), in its dtype.
        first = next(model.parameters())
        self.to(device=first.device, dtype=first.dtype)

    def forward(self, x):
        maps = self.model.forward_stages(x)
        features = self.model.pool_features(maps[-1])
        outputs = {"main": self.model.fc(features)}
        outputs.update({name: head(features) for name, head in self.heads.items()})
        if self.stage_heads is not None:
            for index, (head, stage_map) in enumerate(zip(self.stage_heads, maps)):
                outputs[f"stage{index}_features"], outputs[f"stage{index}"] = head(stage_map)
            outputs["features"] = features
        return outputs
