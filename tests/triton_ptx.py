"""Compile farzi_fast's Triton kernels for NVIDIA GPUs without one, and print what
tests/test_gpu_code.py checks, as JSON: per (kernel, dtype, arch, n divisible by 16) the PTX
and the resource usage cuobjdump reads from the cubin. Run in a process of its own: the test
session sets TRITON_INTERPRET=1, under which kernels cannot be compiled.

    python tests/triton_ptx.py OUT.json
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from farzi_fast.ops import triton_backend

KERNELS = {"adam_step": (triton_backend._adam_step_kernel, {}),
           "reverse_params": (triton_backend._reverse_params_kernel, {"HAS_HVP": True}),
           "reverse_params_no_hvp": (triton_backend._reverse_params_kernel, {"HAS_HVP": False}),
           "reverse_moments": (triton_backend._reverse_moments_kernel, {}),
           **{f"sgd_step_{name}": (triton_backend._sgd_step_kernel, flags)
              for name, flags in {"momentum": dict(HAS_MOMENTUM=True, NESTEROV=False,
                                                   FIRST=False),
                                  "nesterov": dict(HAS_MOMENTUM=True, NESTEROV=True,
                                                   FIRST=False),
                                  "plain": dict(HAS_MOMENTUM=False, NESTEROV=False,
                                                FIRST=False)}.items()},
           **{f"sgd_reverse_{name}": (triton_backend._sgd_reverse_kernel, dict(HAS_HVP=True,
                                                                              **flags))
              for name, flags in {"momentum": dict(HAS_MOMENTUM=True, NESTEROV=False,
                                                   FIRST=False),
                                  "nesterov": dict(HAS_MOMENTUM=True, NESTEROV=True,
                                                   FIRST=False),
                                  "plain": dict(HAS_MOMENTUM=False, NESTEROV=False,
                                                FIRST=False)}.items()}}
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def compile_one(kernel, constants, dtype, arch, n_divisible):
    """The kernel as the backend launches it: pointers 16-byte aligned (torch allocations),
    partial sums float64, scalars float64, IEEE float32 math, FMA contraction off."""
    names = kernel.arg_names
    signature, attrs = {}, {}
    for i, name in enumerate(names):
        if name.endswith("partials_ptr"):
            signature[name] = "*fp64"
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype}"
        elif name == "n":
            signature[name] = "i32"
        elif name in ("BLOCK", "IEEE_FP32", "HAS_HVP", "HAS_MOMENTUM", "NESTEROV", "FIRST"):
            signature[name] = "constexpr"
            continue
        else:
            signature[name] = "fp64"
        if name.endswith("_ptr") or (name == "n" and n_divisible):
            attrs[(i,)] = [["tt.divisibility", 16]]
    constexprs = {"BLOCK": triton_backend._BLOCK, **constants}
    if "IEEE_FP32" in names:
        constexprs["IEEE_FP32"] = dtype == "fp32"
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options=dict(triton_backend._ROUNDING))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(CUOBJDUMP), "-res-usage", cubin.name], capture_output=True,
                               text=True, check=True).stdout
    return {"ptx": compiled.asm["ptx"], "usage": usage}


def main():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: the interpreter cannot compile kernels")
    out = []
    for name, (kernel, constants) in KERNELS.items():
        for dtype in ("fp32", "fp64"):
            for arch in (80, 90):
                for divisible in ((False, True) if arch == 90 else (False,)):
                    out.append(dict(kernel=name, dtype=dtype, arch=arch, n_divisible=divisible,
                                    **compile_one(kernel, constants, dtype, arch, divisible)))
    Path(sys.argv[1]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
