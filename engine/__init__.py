"""Noise-robust training engine: fused loss ops (engine.losses) and training methods."""
