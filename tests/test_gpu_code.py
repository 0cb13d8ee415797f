"""Static checks of the GPU code no GPU here can run: nvcc's PTX and ptxas' resource usage for
csrc/cuda_kernels.cu (sm_80, sm_90), and the PTX Triton compiles for its kernels (no GPU
needed), float32 and float64. What a kernel must show: no register spills or stack, 16-byte
vector accesses where the buffers allow them (and, in CUDA, only on the aligned path), IEEE
division and square root, no FMA contraction (the reference rounds products and sums apart),
and one barrier per block reduction. Skipped where nvcc or triton is missing."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "csrc" / "cuda_kernels.cu"
ARCHS = (80, 90)

VECTOR_ACCESS = re.compile(r"\b(?:ld|st)\.global(?:\.nc)?\.v[24]\.[bfu](?:32|64)\b")
FMA = re.compile(r"\bfma\.rn\b")
APPROXIMATE = re.compile(r"\b(?:div\.(?:approx|full)|sqrt\.approx|rcp\.approx)\b")
BARRIER = re.compile(r"\b(?:bar|barrier)\.sync\b")
# Triton's cross-warp tl.sum: partials to shared memory, a barrier, the read, and a second
# barrier before the scratch can be reused. Pinned so that a change in codegen shows.
TRITON_REDUCTION_BARRIERS = 2


def _nvcc():
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _entries(ptx: str) -> dict:
    """Kernel name -> its PTX text."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"\.entry\s+([\w$]+)\s*\(", ptx)]
    return {name: ptx[start:(starts[i + 1][0] if i + 1 < len(starts) else len(ptx))]
            for i, (start, name) in enumerate(starts)}


def _cuda_kernel(mangled: str):
    """(kind, element type, VEC, has_hvp) from a mangled name of cuda_kernels.cu."""
    m = re.search(r"(adam_step|reverse_params|reverse_moments|sum_partials|sgd_step|"
                  r"sgd_reverse)_kernel"
                  r"(?:I([fd])Li(\d+)E(?:Lb([01])E)?E)?", mangled)
    assert m, f"unexpected kernel {mangled}"
    kind, t, vec, hvp = m.groups()
    return kind, t, int(vec) if vec else None, hvp == "1"


@pytest.fixture(scope="module")
def nvcc_build(tmp_path_factory):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit)")
    flags = re.search(r"set\(FARZI_FAST_NVCC_ROUNDING ([^)]*)\)",
                      (ROOT / "CMakeLists.txt").read_text()).group(1).split()
    out = tmp_path_factory.mktemp("nvcc")
    builds = {}
    for arch in ARCHS:
        ptx, cubin = out / f"sm_{arch}.ptx", out / f"sm_{arch}.cubin"
        subprocess.run([nvcc, "-std=c++17", "-O3", *flags, f"-arch=sm_{arch}", "-ptx",
                        f"-I{ROOT / 'csrc'}", str(KERNELS), "-o", str(ptx)],
                       check=True, capture_output=True, text=True)
        ptxas = Path(nvcc).with_name("ptxas")
        info = subprocess.run([str(ptxas), f"-arch=sm_{arch}", "-v", str(ptx), "-o", str(cubin)],
                              check=True, capture_output=True, text=True).stderr
        builds[arch] = dict(ptx=ptx.read_text(), ptxas=info)
    return builds


@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_kernels_do_not_spill(nvcc_build, arch):
    info = nvcc_build[arch]["ptxas"]
    functions = re.findall(r"Function properties for (\S+)\n\s*(.*)", info)
    assert functions, info
    for name, line in functions:
        assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in line, (name, line)


@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_kernels_vectorise_only_the_aligned_path(nvcc_build, arch):
    kinds = set()
    for name, body in _entries(nvcc_build[arch]["ptx"]).items():
        kind, element, vec, _ = _cuda_kernel(name)
        kinds.add((kind, element, vec))
        if kind == "sum_partials":
            continue
        vector = VECTOR_ACCESS.findall(body)
        if vec == 1:
            assert not vector, (name, vector[:3])
        else:  # float4 / double2: 16-byte loads and stores
            width = "v4.f32" if element == "f" else "v2.f64"
            assert any(width in v and v.startswith("ld") for v in vector), (name, vector[:3])
            assert any(width in v and v.startswith("st") for v in vector), (name, vector[:3])
    expected = {(k, t, v) for k in ("adam_step", "reverse_params", "reverse_moments",
                                    "sgd_step", "sgd_reverse")
                for t, v in (("f", 4), ("f", 1), ("d", 2), ("d", 1))}
    assert expected <= kinds, expected - kinds


@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_kernels_round_like_the_reference(nvcc_build, arch):
    for name, body in _entries(nvcc_build[arch]["ptx"]).items():
        kind, element, _, _ = _cuda_kernel(name)
        assert not FMA.search(body), (name, "FMA contraction: build with --fmad=false")
        assert not APPROXIMATE.search(body), (name, APPROXIMATE.findall(body)[:3])
        if kind in ("adam_step", "reverse_params", "reverse_moments"):
            suffix = "f32" if element == "f" else "f64"
            assert f"div.rn.{suffix}" in body, name
        if kind in ("adam_step", "reverse_params"):
            assert f"sqrt.rn.{'f32' if element == 'f' else 'f64'}" in body, name


@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_block_reduction_has_one_barrier(nvcc_build, arch):
    for name, body in _entries(nvcc_build[arch]["ptx"]).items():
        kind = _cuda_kernel(name)[0]
        # sgd_reverse: two block sums, and the barrier between them
        expected = {"reverse_params": 1, "sum_partials": 1, "sgd_reverse": 3}.get(kind, 0)
        assert len(BARRIER.findall(body)) == expected, (name, BARRIER.findall(body))


@pytest.fixture(scope="module")
def triton_build(tmp_path_factory):
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("triton") / "kernels.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_ptx.py"), str(out)],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_triton_kernels_static_checks(triton_build):
    for k in triton_build:
        where = (k["kernel"], k["dtype"], k["arch"], "n % 16 == 0" if k["n_divisible"] else "any n")
        ptx, usage = k["ptx"], k["usage"]
        assert re.search(r"STACK:0\b", usage) and re.search(r"LOCAL:0\b", usage), (where, usage)
        assert not FMA.search(ptx), (where, "FMA contraction: launch with enable_fp_fusion=False")
        assert not APPROXIMATE.search(ptx), (where, APPROXIMATE.findall(ptx)[:3])
        suffix = k["dtype"].replace("fp", "f")
        if not k["kernel"].startswith("sgd"):  # SGD neither divides nor takes roots
            assert f"div.rn.{suffix}" in ptx, where
        if k["kernel"] in ("adam_step", "reverse_params", "reverse_params_no_hvp"):
            assert f"sqrt.rn.{suffix}" in ptx, where
        # full blocks skip the mask, so vectors survive an n that is not a multiple of 16
        width = "v4.b32" if k["dtype"] == "fp32" else "v2.b64"
        assert re.search(rf"\bld\.global(?:\.nc)?\.{re.escape(width)}\b", ptx), where
        assert re.search(rf"\bst\.global\.{re.escape(width)}\b", ptx), where
        if k["kernel"].startswith("reverse_params"):
            assert len(BARRIER.findall(ptx)) == TRITON_REDUCTION_BARRIERS, (where, "barriers")
        if k["kernel"].startswith("sgd_reverse"):
            # two block sums (dF/dlr, dF/dmomentum), each with its own barriers and one to
            # reuse the shared scratch: 6 seen for sm_80 and sm_90
            assert 0 < len(BARRIER.findall(ptx)) <= 3 * TRITON_REDUCTION_BARRIERS, (
                where, "barriers", len(BARRIER.findall(ptx)))
