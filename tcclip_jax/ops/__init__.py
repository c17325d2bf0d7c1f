"""Functional ops usable by any JAX code (token merging, dense contractions)."""
