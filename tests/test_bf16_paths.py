"""The trainer runs under bf16 autocast on CUDA only, so CI never took those paths (the methods'
losses, histories and weights from bf16 logits). Here every method trains under the CPU's bf16
autocast instead."""
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import engine
from engine.methods import METHODS
from engine.trainer import Trainer


# The parts the short-budget presets leave off on augmented batches (memorization guards), on
# here so that they meet bf16 logits too: NLNL's and JNPL's selective stages, PMNAR's history and
# peer weights.
GUARDED_ON = {"nlnl": {"selective": True}, "jnpl": {"selective": True}, "pmnar": {"reweighting": True, "history": True}}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_under_bf16_autocast(method, monkeypatch):
    logit_dtypes = set()

    @contextmanager
    def bf16_autocast(self):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield

    def record_linear_outputs(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            logit_dtypes.add(output.dtype)

    monkeypatch.setattr(Trainer, "autocast", bf16_autocast)
    handle = torch.nn.modules.module.register_module_forward_hook(record_linear_outputs)
    try:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(64, 16, 16, 3), dtype=np.uint8)
        labels = np.arange(64) % 4
        # 12 epochs: past BLDR's 10-epoch warm-up, and NLNL's warm-up and four stages. L2B and
        # PU-distillation take the first 16 samples (4 of each class) as their clean subset.
        result = engine.fit(x, labels, method=method, epochs=12, clean_indices=np.arange(16), seed=0,
                            **GUARDED_ON.get(method, {}))
    finally:
        handle.remove()
    assert torch.bfloat16 in logit_dtypes  # the heads ran in bf16
    assert set(result.metrics["stage"]) == {stage.kind.value for stage in result.method.stages()}, "every stage ran"
    assert np.isfinite(result.metrics["train_loss"]).all()
    assert result.pred_probs.shape == (64, 4) and np.isfinite(result.pred_probs).all()
    np.testing.assert_allclose(result.pred_probs.sum(1), 1, atol=1e-3)
