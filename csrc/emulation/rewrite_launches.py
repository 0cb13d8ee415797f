"""Rewrite CUDA launches `kernel<<<grid, block, shmem, stream>>>(args)` in a .cu file into
`farzi_fast_emu::launch(kernel, farzi_fast_emu::Config(grid, block, shmem, stream))(args)`,
so that the file compiles as host C++ behind csrc/emulation/cuda_runtime.h. Nothing else in
the source changes.

    python rewrite_launches.py IN.cu OUT.cpp
"""

import re
import sys

# A kernel name, optionally with template arguments without nested angle brackets, then the
# launch configuration up to the first ">>>".
LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;{}]*>)?)\s*<<<(.*?)>>>\s*\(", re.DOTALL)


def rewrite(source: str) -> str:
    out, count = LAUNCH.subn(
        lambda m: f"farzi_fast_emu::launch({m.group(1)}, farzi_fast_emu::Config({m.group(2)}))(",
        source)
    if count == 0 or "<<<" in out:
        raise SystemExit("rewrite_launches: no launch found, or one left unrewritten")
    return out


if __name__ == "__main__":
    src, dst = sys.argv[1:]
    with open(src) as f:
        text = rewrite(f.read())
    with open(dst, "w") as f:
        f.write(text)
