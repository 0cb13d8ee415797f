"""farzi_fast: cheap exact meta-gradients through Adam training loops, and Farzi data
distillation built on them.

Layers: :mod:`farzi_fast.ops` (fused kernels), :mod:`farzi_fast.engine` (meta-gradients for
any nn.Module).
"""

from .engine import meta_gradient, unroll
from .ops import available_backends

__version__ = "0.1.0"
__all__ = ["available_backends", "meta_gradient", "unroll"]
