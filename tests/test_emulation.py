"""The CUDA kernels (csrc/cuda_kernels.cu) compiled for the host behind csrc/emulation's
stand-in CUDA runtime, checked by csrc/emulation/check_kernels.cpp against a serial loop over
adam_math.h and sgd_math.h: with cooperative fibers and with real threads, under
AddressSanitizer + UBSan, and (the block reductions, with real threads) under ThreadSanitizer.
Then each of seven typical kernel bugs is planted in a copy of the source, and the check that
should catch it must fail. The same kernels also run in test_ops.py and test_ops_sgd.py against
the torch reference ("cuda-emulated-*")."""

import concurrent.futures
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CXX = os.environ.get("CXX", "g++")

BASE_FLAGS = ["-std=c++20", "-O1", "-g", "-ffp-contract=off", "-pthread", "-Wno-unknown-pragmas",
              f"-I{CSRC / 'emulation'}", f"-I{CSRC}"]
SANITIZERS = {"plain": [], "asan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
              "tsan": ["-fsanitize=thread"]}
RUN_ENV = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
               TSAN_OPTIONS="halt_on_error=1:exitcode=66")

# (sanitizer, runs of the check binary: launcher, sizes, devices) per check; sizes bounded
# where each CUDA thread is an OS thread. Under ASan the H100 runs the tails and packs only:
# its grid covers 65539 floats without striding, which the small GPU reaches at 32771 (two
# strides of floats, four of doubles).
CHECKS = {
    "fibers": ("plain", [["fibers"]]),                                 # every boundary size
    "threads": ("plain", [["threads", "1,300,2100", "01"]]),
    "asan-ubsan": ("asan", [["fibers", "1,3,5,7,257,1025,4099", "0"],
                            ["fibers", "1,3,5,7,257,1025,4099,32771", "1"]]),
    "tsan-block-reduction": ("tsan", [["threads", "300,2100", "1"]]),
}

# Seven bugs a GPU kernel typically ships with, each with the check that catches it.
MUTATIONS = {
    "tail bound": ("if (tail < n) adam_forward(", "if (tail <= n) adam_forward(", "fibers"),
    "alignment test": ("if (a % 16 != 0) return false;", "if (a % 8 != 0) return false;",
                       "asan-ubsan"),
    "missing __syncthreads": ("  __syncthreads();\n", "\n", "tsan-block-reduction"),
    "shuffle offset": ("for (int offset = 16; offset > 0; offset >>= 1)\n    value +=",
                       "for (int offset = 8; offset > 0; offset >>= 1)\n    value +=", "fibers"),
    "grid stride": ("for (int64_t p = global_thread(); p < packs; p += grid_threads()) {\n"
                    "    Pack<T, VEC> W = load<T, VEC>(w, p), G = load<T, VEC>(g, p), M",
                    "for (int64_t p = global_thread(); p < packs; p += blockDim.x) {\n"
                    "    Pack<T, VEC> W = load<T, VEC>(w, p), G = load<T, VEC>(g, p), M",
                    "fibers"),
    "tail index": ("const int64_t tail = packs * VEC + global_thread();\n  if (tail < n) adam_forward",
                   "const int64_t tail = packs * VEC + threadIdx.x;\n  if (tail < n) adam_forward",
                   "fibers"),
    "second sum's barrier": ("__syncthreads();  // before the second sum", "//",
                             "tsan-block-reduction"),
}
# The mutants' checks on sizes that reach every path (tails, 16-byte packs, striding), each
# ending at its first failing case.
MUTANT_SIZES = {"fibers": ["fibers", "7,65539", "01", "first"],
                "asan-ubsan": ["fibers", "65539", "1", "first"],
                "tsan-block-reduction": [*CHECKS["tsan-block-reduction"][1][0], "first"]}


def _kernel_source(mutation=None) -> str:
    source = (CSRC / "cuda_kernels.cu").read_text()
    if mutation is not None:
        old, new, _ = MUTATIONS[mutation]
        assert source.count(old) == 1, f"mutation {mutation!r} no longer applies"
        source = source.replace(old, new)
    sys.path.insert(0, str(CSRC / "emulation"))
    try:
        from rewrite_launches import rewrite
    finally:
        sys.path.pop(0)
    return rewrite(source)


def _build(directory: Path, sanitizer: str, mutation=None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    kernels = directory / "kernels.cpp"
    kernels.write_text(_kernel_source(mutation))
    binary = directory / f"check_{sanitizer}"
    subprocess.run([CXX, *BASE_FLAGS, *SANITIZERS[sanitizer], str(kernels),
                    str(CSRC / "emulation" / "check_kernels.cpp"), "-o", str(binary)],
                   check=True, capture_output=True, text=True)
    return binary


def _run(binary: Path, args) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, env=RUN_ENV,
                          timeout=600)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    if shutil.which(CXX) is None:
        pytest.skip(f"no C++ compiler ({CXX}) to build the emulated kernels")
    root = tmp_path_factory.mktemp("emulated")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = {name: pool.submit(_build, root / name, name) for name in SANITIZERS}
        try:
            return {name: job.result() for name, job in jobs.items()}
        except subprocess.CalledProcessError as error:
            if "sanitize" in " ".join(error.cmd):  # e.g. libtsan not installed
                pytest.skip(f"sanitizer runtime missing: {error.stderr.strip()[-200:]}")
            raise


@pytest.mark.parametrize("check", list(CHECKS))
def test_emulated_kernels_match_the_serial_math(builds, check):
    sanitizer, runs = CHECKS[check]
    for args in runs:
        result = _run(builds[sanitizer], args)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        assert " 0 failures" in result.stdout


@pytest.fixture(scope="module")
def mutants(builds, tmp_path_factory):
    """Every mutant's check binary, built two at a time (the builds are most of this file's
    time, and the CI machine has two cores)."""
    root = tmp_path_factory.mktemp("mutants")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = {mutation: pool.submit(_build, root / f"mutant{i}",
                                      CHECKS[MUTATIONS[mutation][2]][0], mutation)
                for i, mutation in enumerate(MUTATIONS)}
        return {mutation: job.result() for mutation, job in jobs.items()}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_each_planted_kernel_bug_is_caught(mutants, mutation):
    check = MUTATIONS[mutation][2]
    result = _run(mutants[mutation], MUTANT_SIZES[check])
    assert result.returncode != 0, f"{mutation} went unnoticed by {check}:\n{result.stdout[-1000:]}"
