"""CE baseline: cross-entropy on the given labels (engine/methods/base.py's Method)."""
from engine.methods.base import Method as CE

__all__ = ["CE"]
