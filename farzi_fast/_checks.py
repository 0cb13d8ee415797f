"""Argument checks shared by the engine and Farzi layers."""

from __future__ import annotations

import math
import numbers


def require_int(name: str, value, minimum: int = 1, meaning: str = "") -> int:
    """`value` as an int >= `minimum` (bools refused), or a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        detail = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be {expected}{detail}, got {value!r}")
    return int(value)


def require_positive(name: str, value, zero_ok: bool = False) -> float:
    """`value` as a finite real number > 0 (>= 0 if `zero_ok`; bools refused), or a
    ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be a finite number {'>=' if zero_ok else '>'} 0, "
                         f"got {value!r}")
    return float(value)
