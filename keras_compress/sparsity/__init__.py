"""Magnitude, RB and movement sparsity."""
