"""Data sets, label-noise models and input pipelines."""
