"""CE baseline: cross-entropy on the given labels (engine/methods/base.py's Method)."""
from dataclasses import dataclass

from engine.config import MethodConfig, option
from engine.methods.base import CE_MILESTONES, CEStage, Method, Stage


@dataclass(frozen=True)
class CEConfig(MethodConfig):
    """Plain cross-entropy: SGD, lr x0.1 at 50% and 75% of the epochs, or a cosine decay."""

    cosine: bool = option(False, "a cosine decay of the lr to 0 instead of x0.1 at 50% and 75% of the epochs")

    @classmethod
    def preset(cls, size, num_classes):
        if size == "paper":
            return cls(epochs=120, batch_size=128, lr=0.02, model="preact_resnet18")
        # The other methods' short-budget schedule, a cosine from lr 0.1 (a fair baseline: one
        # held back would credit a method with what its schedule wins). A short budget's last
        # quarter at lr / 100 learns little: on CIFAR-10 with the CIFAR-10N `worst` labels (small
        # CNN, 20 epochs) the steps from 0.05 ended at 58.9%, a cosine from 0.05 at 60.3%, from
        # 0.1 at 61.3% (docs/methods.md has the other seeds and mnist5k).
        return cls(epochs=30, batch_size=128, lr=0.1, cosine=True)


class CE(Method):
    name = "ce"
    Config = CEConfig

    def stages(self):
        return [Stage.decaying(CEStage.CE, self.config.epochs, self.config.lr, CE_MILESTONES, self.config.cosine)]
