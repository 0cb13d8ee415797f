"""Meta-gradients through T steps of the user's Adam, AdamW or SGD on any nn.Module, memory
that does not grow with T beyond the anchors.

:func:`unroll` returns differentiable trained parameters (keep your ``.backward()``);
:func:`meta_gradient` does forward, meta-objective and reverse in one call;
:func:`unrolled_meta_gradient` is the unrolled-autograd baseline, for checks and benchmarks.
"""

from .api import DEFAULT_ANCHOR_EVERY, MetaGradient, Trained, meta_gradient, unroll
from .inner import DriftReport, NonFiniteError
from .unrolled import unrolled_meta_gradient

__all__ = ["DEFAULT_ANCHOR_EVERY", "DriftReport", "MetaGradient", "NonFiniteError", "Trained",
           "meta_gradient", "unroll", "unrolled_meta_gradient"]
