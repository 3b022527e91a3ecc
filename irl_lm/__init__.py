"""Inverse-RL fine-tuning of language models in JAX/Flax."""
