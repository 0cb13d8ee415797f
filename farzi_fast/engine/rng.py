"""Per-step random-number-generator states, so that the reverse pass recomputes each inner
gradient with the same dropout masks as the forward pass."""

from __future__ import annotations

import contextlib

import torch


def capture(device: torch.device):
    """The global generator states that an inner step on `device` may draw from: the CPU one
    (a few KB) and, for CUDA, that device's (16 bytes of Philox seed and offset)."""
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda_state


def restore(state, device: torch.device) -> None:
    cpu_state, cuda_state = state
    torch.set_rng_state(cpu_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)


@contextlib.contextmanager
def preserved(device: torch.device):
    """Leave the caller's generators as they were, whatever the block replays."""
    saved = capture(device)
    try:
        yield
    finally:
        restore(saved, device)
