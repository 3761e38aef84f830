"""ResNet-18 and ResNet-50 for ImageNet-sized images (He et al. 2016, "Deep Residual Learning
for Image Recognition"), in torchvision's form: a 7x7 stride-2 stem conv and a 3x3 stride-2
max-pool, four stages of basic blocks (18) or bottlenecks (50, stride on the 3x3 conv: "v1.5").
Parameters and buffers carry torchvision's names (conv1, bn1, layer1.0.conv1, ...,
layer2.0.downsample.0, fc), so torchvision's ImageNet weights load as they are (--pretrained).

These are models for real resolution: the stem is kept at every image size, so a 32x32 image
reaches the last stage as a 1x1 map; for CIFAR-sized data use preact_resnet18 / 34."""
from torch import nn

from engine.models.base import ClassifierBase

STAGE_WIDTHS = (64, 128, 256, 512)


def downsample(in_channels, out_channels, stride):
    """The shortcut's strided 1x1 conv + BN where a block changes width or resolution; None
    (the identity, and no parameters, as in torchvision) where it does not."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class Residual(nn.Module):
    """relu(residual(x) + shortcut(x)); subclasses build the residual branch."""

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + shortcut)


class BasicBlock(Residual):
    """Two 3x3 conv-BN, the first strided."""

    expansion = 1

    def __init__(self, in_channels, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample(in_channels, width, stride)

    def residual(self, x):
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Bottleneck(Residual):
    """1x1 conv down to `width`, a strided 3x3 conv, 1x1 conv up to 4 * width; each with BN."""

    expansion = 4

    def __init__(self, in_channels, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample(in_channels, width * self.expansion, stride)

    def residual(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(ClassifierBase):
    """Stage 0 is the stem and layer1; stages 1-3 are layer2-4, each starting at stride 2."""

    def __init__(self, block, blocks_per_stage, num_classes, in_channels=3, dropout=0.0):
        nn.Module.__init__(self)  # not ClassifierBase's: torchvision's names, not stages.<i>
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = STAGE_WIDTHS[0]
        for index, (width, num_blocks) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage)):
            blocks = []
            for number in range(num_blocks):
                blocks.append(block(channels, width, 2 if index > 0 and number == 0 else 1))
                channels = width * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.build_head([width * block.expansion for width in STAGE_WIDTHS], num_classes, dropout)

    def forward_stages(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps


def resnet18(num_classes, in_channels=3, image_size=224, dropout=0.0):
    del image_size  # the ImageNet stem at any size (module docstring); the head pools adaptively
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, dropout)


def resnet50(num_classes, in_channels=3, image_size=224, dropout=0.0):
    del image_size  # the ImageNet stem at any size (module docstring); the head pools adaptively
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, dropout)
