// farzi_fast._C_cuda: pybind11 bindings of the CUDA launchers. Compiled by the host compiler;
// the CUDA runtime is linked statically, so importing this module needs only the driver.
// Built with FARZI_FAST_CUDA_EMULATED, the same bindings make farzi_fast._C_cuda_emu: the
// kernels compiled for the host behind csrc/emulation/cuda_runtime.h, for the tests only.
#include <pybind11/pybind11.h>

#include "cuda_kernels.h"
#if defined(FARZI_FAST_CUDA_EMULATED)
#include "cuda_runtime.h"
#define FARZI_FAST_CUDA_MODULE _C_cuda_emu
#else
#define FARZI_FAST_CUDA_MODULE _C_cuda
#endif

namespace py = pybind11;

PYBIND11_MODULE(FARZI_FAST_CUDA_MODULE, module) {
  module.doc() = "farzi_fast CUDA kernels over raw device pointers and a caller's stream";
  const auto release_gil = py::call_guard<py::gil_scoped_release>();
  module.def("adam_step", &farzi_fast::cuda::adam_step, release_gil);
  module.def("adam_reverse_params", &farzi_fast::cuda::adam_reverse_params, release_gil);
  module.def("adam_reverse_moments", &farzi_fast::cuda::adam_reverse_moments, release_gil);
  module.def("sgd_step", &farzi_fast::cuda::sgd_step, release_gil);
  module.def("sgd_reverse", &farzi_fast::cuda::sgd_reverse, release_gil);
#if defined(FARZI_FAST_CUDA_EMULATED)
  module.def("set_device", &farzi_fast_emu::set_device,
             "0: an H100 (1056 resident blocks), 1: a small GPU (16 blocks)");
  module.def("set_threads", [](bool threads) {
    farzi_fast_emu::mode = threads ? farzi_fast_emu::Mode::kThreads : farzi_fast_emu::Mode::kFibers;
  }, "run each CUDA thread as a real thread (True) or a cooperative fiber (False, default)");
#endif
}
