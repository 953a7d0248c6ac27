"""Reasoning vectors for mergekit: target + λ·(GRPO − SFT)."""

__version__ = "0.1.0"
