"""farzi_fast: cheap exact meta-gradients through Adam training loops, and Farzi data
distillation built on them.

Layers: :mod:`farzi_fast.ops` (fused kernels), :mod:`farzi_fast.engine` (meta-gradients for
any nn.Module), :mod:`farzi_fast.farzi` (Farzi data distillation; data sets in
:mod:`farzi_fast.data`).
"""

from .engine import meta_gradient, unroll
from .farzi.distill import distill
from .farzi.summary import FarziData
from .ops import available_backends

__version__ = "0.1.0"
__all__ = ["FarziData", "available_backends", "distill", "meta_gradient", "unroll"]
