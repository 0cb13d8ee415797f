// Host-side launchers of the CUDA kernels (cuda_kernels.cu). This header needs no CUDA
// headers, so the pybind11 bindings compile with the host compiler alone.
// Every launcher runs on `stream` (a cudaStream_t passed as an integer), needs the tensors'
// device to be current, and throws std::runtime_error with the CUDA error string on failure.
#pragma once

#include <cstdint>

namespace farzi_fast {
namespace cuda {

void adam_step(uintptr_t w, uintptr_t g, uintptr_t m, uintptr_t v, int64_t n, bool is_double,
               double lr, double beta1, double beta2, double eps, double weight_decay,
               int64_t step, uintptr_t stream);

// Writes this step's dF/dlr into lr_grad_out[0] (a float64 scalar on the device); block
// partial sums go to `partials` (float64, at least `partials_capacity` long), then one block
// adds them in a fixed order, so the result is deterministic.
void adam_reverse_params(uintptr_t w, uintptr_t m, uintptr_t v, uintptr_t w_bar,
                         uintptr_t m_bar, uintptr_t v_bar, uintptr_t hvp, int64_t n,
                         bool is_double, double lr, double beta1, double beta2, double eps,
                         double weight_decay, int64_t step, uintptr_t partials,
                         int64_t partials_capacity, uintptr_t lr_grad_out, uintptr_t stream);

void adam_reverse_moments(uintptr_t m, uintptr_t v, uintptr_t g, uintptr_t m_bar,
                          uintptr_t v_bar, uintptr_t g_bar, int64_t n, bool is_double,
                          double beta1, double beta2, uintptr_t stream);

void sgd_step(uintptr_t w, uintptr_t g, uintptr_t b, int64_t n, bool is_double, double lr,
              double momentum, double dampening, double weight_decay, bool nesterov,
              int64_t step, uintptr_t stream);

// Writes this step's dF/dlr and dF/dmomentum into grads_out[0] and grads_out[1] (float64 on
// the device), reduced like adam_reverse_params's; `partials` holds 2 * partials_capacity
// doubles. b and b_bar are 0 (null) when momentum == 0.
void sgd_reverse(uintptr_t w, uintptr_t g, uintptr_t b, uintptr_t w_bar, uintptr_t b_bar,
                 uintptr_t g_bar, uintptr_t hvp, int64_t n, bool is_double, double lr,
                 double momentum, double dampening, double weight_decay, bool nesterov,
                 int64_t step, uintptr_t partials, int64_t partials_capacity,
                 uintptr_t grads_out, uintptr_t stream);

}  // namespace cuda
}  // namespace farzi_fast
