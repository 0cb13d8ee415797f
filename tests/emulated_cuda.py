"""The CUDA backend's kernels (csrc/cuda_kernels.cu) compiled for the host behind a stand-in
CUDA runtime (csrc/emulation) and launched on CPU tensors exactly as farzi_fast.ops.cuda_backend
launches them on a GPU. Test-only: `backend_device` offers it as "cuda-emulated-<device>"."""

from __future__ import annotations

import contextlib

from farzi_fast.ops.cuda_backend import CudaLaunchers

# The emulated devices: grids are sized from their SM counts, as on real hardware.
DEVICES = {"h100": 0, "small": 1}  # 1056 and 16 resident blocks of 256 threads


def module():
    from farzi_fast import _C_cuda_emu

    return _C_cuda_emu


def backend(device: str) -> CudaLaunchers:
    """The backend module stand-in for one emulated device (selected before every launch)."""

    def selected():
        emu = module()
        emu.set_device(DEVICES[device])
        return emu

    return CudaLaunchers(selected, lambda tensor: 0, lambda device: contextlib.nullcontext())
