"""Model registry. Every model follows engine.models.base.ClassifierBase: forward, forward_features,
forward_stages, feature_dim, stage_channels, fc, num_classes."""
import torch

from engine.models.base import ClassifierBase
from engine.models.heads import MultiHead, stage_heads
from engine.models.mlp import MLP
from engine.models.preact_resnet import preact_resnet18, preact_resnet34
from engine.models.pretrained import load_pretrained
from engine.models.resnet import resnet18, resnet50
from engine.models.small_cnn import SmallCNN, small_cnn_dense

MODELS = {
    "preact_resnet18": preact_resnet18,
    "preact_resnet34": preact_resnet34,
    "resnet18": resnet18,  # ImageNet-sized images; torchvision's names (--pretrained)
    "resnet50": resnet50,
    "small_cnn": SmallCNN,
    "small_cnn_dense": small_cnn_dense,
    "mlp": MLP,
}


def build_model(
    name: str, num_classes: int, in_channels: int = 3, image_size: int | tuple = 32, **options
) -> torch.nn.Module:
    """Build a registered model; image_size: the side of square images or (height, width);
    `options` (e.g. dropout=0.3) go to its constructor."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, in_channels=in_channels, image_size=image_size, **options)


__all__ = ["MODELS", "build_model", "load_pretrained", "ClassifierBase", "MultiHead", "stage_heads"]
