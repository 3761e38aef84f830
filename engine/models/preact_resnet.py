"""Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks"), in the
CIFAR form used by noisy-label papers: 3x3 stem, no max-pool, four stages of 64/128/256/512."""
from torch import nn
from torch.nn import functional as F

from engine.models.base import ClassifierBase

STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


class PreActBlock(nn.Module):
    """(BN-ReLU-conv3x3) twice plus a shortcut: the identity, or a strided 1x1 conv applied to
    the pre-activated input when the block changes width or resolution."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False) if needs_projection else None
        )

    def forward(self, x):
        activated = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(ClassifierBase):
    """Stage 0 includes the stem; the last stage ends with the final BN-ReLU, because blocks
    output un-normalized sums and the pooled feature must be the activated map."""

    def __init__(self, blocks_per_stage, num_classes, in_channels=3, dropout=0.0):
        stages = []
        channels = STAGE_WIDTHS[0]
        for index, (width, stride, num_blocks) in enumerate(
            zip(STAGE_WIDTHS, STAGE_STRIDES, blocks_per_stage)
        ):
            layers = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)] if index == 0 else []
            for block in range(num_blocks):
                layers.append(PreActBlock(channels, width, stride if block == 0 else 1))
                channels = width
            if index == len(STAGE_WIDTHS) - 1:
                layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*layers))
        super().__init__(stages, STAGE_WIDTHS, num_classes, dropout)


def preact_resnet18(num_classes, in_channels=3, image_size=32, dropout=0.0):
    del image_size  # any size >= 8 works: the head pools adaptively
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, dropout)


def preact_resnet34(num_classes, in_channels=3, image_size=32, dropout=0.0):
    del image_size  # any size >= 8 works: the head pools adaptively
    return PreActResNet((3, 4, 6, 3), num_classes, in_channels, dropout)
