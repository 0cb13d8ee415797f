"""Shared fixtures. Without a GPU the Triton kernels run under TRITON_INTERPRET=1, which must
be set before triton is first imported, so it is set here, at collection."""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from farzi_fast.ops import available_backends  # noqa: E402  (after TRITON_INTERPRET)
from farzi_fast.ops.dispatch import _importable, triton_interpreting  # noqa: E402

DATA_DIR = Path(os.environ.get("FARZI_FAST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# The compiled backends on the devices they serve; the interpreter also runs Triton on the CPU,
# and the CUDA kernels run on the CPU compiled for the host (tests/emulated_cuda.py), with the
# grids of an H100 and of a small GPU.
EMULATED = {"cuda-emulated-h100": "h100", "cuda-emulated-small": "small"}
BACKEND_DEVICES = [("cpu", "cpu"), ("cuda", "cuda"), ("triton", "cuda"), ("triton", "cpu"),
                   *((name, "cpu") for name in EMULATED)]


def backend_params():
    params = []
    for backend, device in BACKEND_DEVICES:
        marks = [pytest.mark.cuda] if device == "cuda" else []
        params.append(pytest.param((backend, device), id=f"{backend}-{device}", marks=marks))
    return params


@pytest.fixture(params=backend_params())
def backend_device(request, monkeypatch):
    """(backend, device) pairs; skipped with the reason when this machine lacks them. An
    emulated CUDA backend is served to farzi_fast.ops under its test-only name."""
    backend, device = request.param
    if backend in EMULATED:
        from farzi_fast import ops

        if not _importable("farzi_fast._C_cuda_emu"):
            pytest.skip("farzi_fast._C_cuda_emu not built (FARZI_FAST_NO_EMULATION=1)")

        from .emulated_cuda import backend as emulated

        launchers, resolve = emulated(EMULATED[backend]), ops.resolve
        monkeypatch.setattr(ops, "resolve", lambda name, dev: launchers if name == backend
                            else resolve(name, dev))
        return backend, torch.device(device)
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    if device == "cpu" and backend == "triton" and not triton_interpreting():
        pytest.skip("Triton runs on CPU tensors only under TRITON_INTERPRET=1")
    if backend not in available_backends():
        pytest.skip(f"backend {backend!r} not built here (available: {available_backends()})")
    return backend, torch.device(device)


@pytest.fixture
def data_dir():
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared data not found at {DATA_DIR} (set FARZI_FAST_DATA)")
    return DATA_DIR


@pytest.fixture(scope="session")
def movielens():
    """MovieLens-100K from the shared data, loaded once."""
    from farzi_fast.data import load_movielens_100k

    if not (DATA_DIR / "ml-100k" / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found under {DATA_DIR}")
    return load_movielens_100k(DATA_DIR)
