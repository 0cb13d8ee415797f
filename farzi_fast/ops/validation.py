"""Checks on the tensors handed to the ops: all of them run before any buffer is written."""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def check_buffers(op: str, **tensors) -> torch.Tensor:
    """Require contiguous float32/float64 tensors of one shape, dtype and device that do not
    overlap in memory. Returns the first tensor (the reference for shape, dtype, device).
    `None` values (optional inputs) are skipped."""
    named = [(name, t) for name, t in tensors.items() if t is not None]
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    ref_name, ref = named[0]
    if ref.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: {ref_name} must be float32 or float64, got {ref.dtype}")
    for name, t in named:
        if t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}, expected {ref.dtype} like "
                            f"{ref_name}")
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device}, expected {ref.device} like "
                             f"{ref_name}")
        if t.shape != ref.shape:
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected "
                             f"{tuple(ref.shape)} like {ref_name}")
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous (a flat buffer); call "
                             f".contiguous() or use farzi_fast.engine's flat parameters")
        if t.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{op}: {name} requires grad; the ops write buffers in place, "
                             f"pass a detached tensor (x.detach())")
    _check_no_overlap(op, named)
    return ref


def _check_no_overlap(op: str, named) -> None:
    spans = []
    for name, t in named:
        if t.numel() == 0:
            continue
        start = t.data_ptr()
        spans.append((start, start + t.numel() * t.element_size(), name))
    spans.sort()
    for (_, e0, n0), (s1, _, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ValueError(f"{op}: {n0} and {n1} overlap in memory; every buffer must be "
                             f"its own storage")
