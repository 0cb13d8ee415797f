"""Farzi Data (Sachdeva et al., arXiv 2310.09983) on top of the engine: the summary
(`FarziData`), its configuration (`DistillConfig`, `RunOptions`, presets) and `distill()`.

`config` and `presets` import no torch; the rest is imported on first use."""

from __future__ import annotations

import importlib

from ..student_spec import StudentSizes
from .config import DistillConfig, RunOptions
from .presets import Preset, preset

_LAZY = {"distill": ".outer_loop", "FarziData": ".summary"}
__all__ = ["DistillConfig", "FarziData", "Preset", "RunOptions", "StudentSizes", "distill",
           "preset"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
