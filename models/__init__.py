"""Backbones and the MAE model (no Ray, no parallelism)."""
