"""farzi_fast: cheap exact meta-gradients through optimizer training loops, and Farzi data
distillation built on them.

Layers, each knowing nothing of the ones above it: :mod:`farzi_fast.ops` (fused kernels),
:mod:`farzi_fast.engine` (meta-gradients for any nn.Module), :mod:`farzi_fast.distillation`
(Farzi data distillation). Beside them: :mod:`farzi_fast.data` (loaders),
:mod:`farzi_fast.models` (sequence students), :mod:`farzi_fast.training` (training and the
evaluation protocol), :mod:`farzi_fast.cli` (the `farzi-fast` command).

The names below are imported on first use, so that `import farzi_fast.cli` (and
`farzi-fast --help`) does not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {"unroll": "farzi_fast.engine", "meta_gradient": "farzi_fast.engine",
            "distill": "farzi_fast.distillation.outer_loop",
            "DistillConfig": "farzi_fast.distillation.config",
            "RunOptions": "farzi_fast.distillation.config",
            "FarziData": "farzi_fast.distillation.summary",
            "available_backends": "farzi_fast.ops"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'farzi_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
