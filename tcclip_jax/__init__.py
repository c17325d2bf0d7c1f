"""tcclip_jax: TC-CLIP (ECCV 2024) in JAX/Flax."""

__version__ = "0.1.0"
