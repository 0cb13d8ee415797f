"""Build of farzi_fast: CMake + ninja make the compiled backends, setuptools packages them.

Environment switches (flash-attention style):
  FARZI_FAST_NO_EXTENSIONS=1   build no compiled module; the torch and triton backends remain.
  FARZI_FAST_NO_CUDA=1         skip farzi_fast._C_cuda even when a CUDA toolkit is found.
  FARZI_FAST_NO_EMULATION=1    skip farzi_fast._C_cuda_emu, the CUDA kernels compiled for the
                               host that the tests run (needs a C++20 compiler: g++ >= 11).
  FARZI_FAST_CUDA_ARCHS="90"   CMAKE_CUDA_ARCHITECTURES for _C_cuda (default "80-real;90").
  MAX_JOBS=N                   parallel compile jobs.
The CUDA module is built when nvcc is found on PATH or under CUDA_HOME / CUDA_PATH.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _find_nvcc():
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


class CMakeExtension(Extension):
    def __init__(self, name, target):
        super().__init__(name, sources=[])
        self.target = target


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        nvcc = _find_nvcc() if BUILD_CUDA else None
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DFARZI_FAST_BUILD_CUDA={'ON' if nvcc else 'OFF'}",
        ]
        if nvcc:
            configure.append(f"-DCMAKE_CUDA_COMPILER={Path(nvcc).resolve()}")
            if os.environ.get("FARZI_FAST_CUDA_ARCHS"):
                configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['FARZI_FAST_CUDA_ARCHS']}")
        try:
            import pybind11

            configure.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError:
            pass
        build = ["cmake", "--build", str(build_dir), "--target", ext.target]
        if os.environ.get("MAX_JOBS"):
            build += ["--parallel", os.environ["MAX_JOBS"]]
        subprocess.run(configure, check=True)
        subprocess.run(build, check=True)


BUILD_EXTENSIONS = not _flag("FARZI_FAST_NO_EXTENSIONS")
BUILD_CUDA = BUILD_EXTENSIONS and not _flag("FARZI_FAST_NO_CUDA") and _find_nvcc() is not None

ext_modules = []
if BUILD_EXTENSIONS:
    ext_modules.append(CMakeExtension("farzi_fast._C", target="_C"))
if BUILD_EXTENSIONS and not _flag("FARZI_FAST_NO_EMULATION"):
    # the CUDA kernels emulated on the host, for the tests (csrc/emulation)
    ext_modules.append(CMakeExtension("farzi_fast._C_cuda_emu", target="_C_cuda_emu"))
if BUILD_CUDA:
    ext_modules.append(CMakeExtension("farzi_fast._C_cuda", target="_C_cuda"))

setup(ext_modules=ext_modules, cmdclass={"build_ext": CMakeBuild})
