"""Noise-robust training engine: fused loss ops (engine.losses), training methods
(engine.methods), and the Python API:

    import engine
    result = engine.fit(x, labels, method="jnpl")
    mask = engine.find_label_issues(x, labels, method="pmnar")

The API's names are imported on first use, so `import engine.losses` stays light.
"""
import importlib

_EXPORTS = {
    "fit": "engine.api", "find_label_issues": "engine.api", "FitResult": "engine.api",
    "Method": "engine.methods.base", "Stage": "engine.methods.base", "Phase": "engine.methods.base",
    "CleanSubset": "engine.methods.base", "MethodConfig": "engine.config", "WarmupConfig": "engine.config",
    "option": "engine.config", "Trainer": "engine.trainer", "Diverged": "engine.methods.base",
    "RunNote": "engine.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
