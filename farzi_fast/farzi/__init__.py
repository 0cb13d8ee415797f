"""Farzi Data (Sachdeva et al., arXiv 2310.09983) on top of the engine."""

from .students import CausalTransformer, sasrec, transformer_lm

__all__ = ["CausalTransformer", "sasrec", "transformer_lm"]
