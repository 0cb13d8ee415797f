"""Which backends this installation has, and which one serves a given tensor."""

from __future__ import annotations

import importlib
import os
from functools import cache

import torch

BACKENDS = ("torch", "cpu", "cuda", "triton")


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@cache
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """The backends usable in this process, in preference order of `backend="auto"`.

    `torch` is always there; `cpu` needs the compiled farzi_fast._C; `cuda` needs
    farzi_fast._C_cuda and a CUDA device; `triton` needs triton and either a CUDA device or
    TRITON_INTERPRET=1 (then it runs on CPU tensors).
    """
    found = ["torch"]
    if _importable("farzi_fast._C"):
        found.append("cpu")
    cuda = torch.cuda.is_available()
    if cuda and _importable("farzi_fast._C_cuda"):
        found.append("cuda")
    if (cuda or triton_interpreting()) and _importable("triton"):
        found.append("triton")
    return found


@cache
def backend_module(name: str):
    return importlib.import_module(f"farzi_fast.ops.{name}_backend")


def resolve(backend, device: torch.device):
    """The backend module for `backend` on `device`, or a ValueError saying what is possible."""
    if not isinstance(backend, str) or backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {', '.join(repr(b) for b in BACKENDS)} or "
                         f"'auto', got {backend!r}")
    available = available_backends()
    if backend == "auto":
        preference = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpu", "torch")
        backend = next(b for b in preference if b in available)
    if backend not in available:
        raise ValueError(f"backend {backend!r} is not available here (available: "
                         f"{', '.join(available)}); see README: Installation")
    allowed = {"cpu": ("cpu",), "cuda": ("cuda",),
               "triton": ("cuda", "cpu") if triton_interpreting() else ("cuda",)}
    if backend in allowed and device.type not in allowed[backend]:
        raise ValueError(f"backend {backend!r} needs tensors on "
                         f"{' or '.join(allowed[backend])}, got tensors on {device}")
    return backend_module(backend)
