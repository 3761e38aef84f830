"""A multi-layer perceptron for feature vectors (tabular data), on the same interface as the
image models: three Linear-BatchNorm-ReLU stages whose last output is the pooled feature."""
from torch import nn

from engine.models.base import ClassifierBase

STAGE_WIDTHS = (128, 128, 128)


class MLP(ClassifierBase):
    def __init__(self, num_classes, in_channels, image_size=1, dropout=0.0):
        """in_channels: the number of input features (D); image_size: unused."""
        del image_size
        stages, width_in = [], in_channels
        for width in STAGE_WIDTHS:
            stages.append(nn.Sequential(nn.Linear(width_in, width, bias=False), nn.BatchNorm1d(width),
                                        nn.ReLU(inplace=True)))
            width_in = width
        super().__init__(stages, STAGE_WIDTHS, num_classes, dropout)
