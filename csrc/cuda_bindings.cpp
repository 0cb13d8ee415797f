// farzi_fast._C_cuda: pybind11 bindings of the CUDA launchers. Compiled by the host compiler;
// the CUDA runtime is linked statically, so importing this module needs only the driver.
#include <pybind11/pybind11.h>

#include "cuda_kernels.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, module) {
  module.doc() = "farzi_fast CUDA kernels over raw device pointers and a caller's stream";
  const auto release_gil = py::call_guard<py::gil_scoped_release>();
  module.def("adam_step", &farzi_fast::cuda::adam_step, release_gil);
  module.def("adam_reverse_params", &farzi_fast::cuda::adam_reverse_params, release_gil);
  module.def("adam_reverse_moments", &farzi_fast::cuda::adam_reverse_moments, release_gil);
}
