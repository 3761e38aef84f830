"""CE baseline: cross-entropy on the given labels (engine/methods/base.py's Method)."""
from dataclasses import dataclass

from engine.config import MethodConfig
from engine.methods.base import Method


@dataclass(frozen=True)
class CEConfig(MethodConfig):
    """Plain cross-entropy: SGD, lr x0.1 at 50% and 75% of the epochs."""

    @classmethod
    def preset(cls, size, num_classes):
        if size == "paper":
            return cls(epochs=120, batch_size=128, lr=0.02, model="preact_resnet18")
        return cls(epochs=30, batch_size=128, lr=0.05)


class CE(Method):
    name = "ce"
    Config = CEConfig
