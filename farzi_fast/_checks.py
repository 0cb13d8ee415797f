"""Argument checks shared by the engine and Farzi layers."""

from __future__ import annotations

import numbers


def require_int(name: str, value, minimum: int = 1, meaning: str = "") -> int:
    """`value` as an int >= `minimum` (bools refused), or a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        detail = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be {expected}{detail}, got {value!r}")
    return int(value)
