// CUDA kernels of the Adam forward step and its reverse. Memory-bound elementwise work:
// each thread moves 16-byte packs (float4 / double2) when every buffer is 16-byte aligned,
// and single elements otherwise; grid-stride loops over a grid sized to fill the device.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "adam_math.h"
#include "cuda_kernels.h"
#include "sgd_math.h"

namespace farzi_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxDevices = 64;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("farzi_fast CUDA: ") + what + ": " +
                             cudaGetErrorString(status));
  }
}

// Resident blocks of kThreads that fill the current device; cached per device.
int max_resident_blocks() {
  static int cache[kMaxDevices] = {0};
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  if (device >= kMaxDevices) device = kMaxDevices - 1;
  if (cache[device] == 0) {
    int sms = 0, threads_per_sm = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
          "multiprocessor count");
    check(cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor,
                                 device),
          "threads per multiprocessor");
    cache[device] = sms * (threads_per_sm / kThreads);
  }
  return cache[device];
}

int grid_for(int64_t work_items, int64_t cap) {
  const int64_t wanted = (work_items + kThreads - 1) / kThreads;
  const int64_t grid = wanted < cap ? wanted : cap;
  return static_cast<int>(grid > 0 ? grid : 1);
}

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T x[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load(const T* base, int64_t pack) {
  return reinterpret_cast<const Pack<T, VEC>*>(base)[pack];
}

template <typename T, int VEC>
__device__ __forceinline__ void store(T* base, int64_t pack, const Pack<T, VEC>& value) {
  reinterpret_cast<Pack<T, VEC>*>(base)[pack] = value;
}

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_threads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

template <typename T, int VEC>
__global__ void adam_step_kernel(T* w, const T* g, T* m, T* v, int64_t n,
                                 AdamCoefficients<T> c) {
  const int64_t packs = n / VEC;
  for (int64_t p = global_thread(); p < packs; p += grid_threads()) {
    Pack<T, VEC> W = load<T, VEC>(w, p), G = load<T, VEC>(g, p), M = load<T, VEC>(m, p),
                 V = load<T, VEC>(v, p);
#pragma unroll
    for (int k = 0; k < VEC; ++k) adam_forward(W.x[k], G.x[k], M.x[k], V.x[k], c);
    store<T, VEC>(w, p, W);
    store<T, VEC>(m, p, M);
    store<T, VEC>(v, p, V);
  }
  const int64_t tail = packs * VEC + global_thread();
  if (tail < n) adam_forward(w[tail], g[tail], m[tail], v[tail], c);
}

__device__ __forceinline__ double block_sum(double value) {
  __shared__ double warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1)
    value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  value = threadIdx.x < blockDim.x / 32 ? warp_sums[threadIdx.x] : 0.0;
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1)
      value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;  // valid in thread 0
}

template <typename T, int VEC, bool kHasHvp>
__global__ void reverse_params_kernel(T* w, const T* m, const T* v, T* w_bar, T* m_bar,
                                      T* v_bar, const T* hvp, int64_t n,
                                      AdamCoefficients<T> c, double* partials) {
  double lr_grad = 0.0;
  const int64_t packs = n / VEC;
  for (int64_t p = global_thread(); p < packs; p += grid_threads()) {
    Pack<T, VEC> W = load<T, VEC>(w, p), M = load<T, VEC>(m, p), V = load<T, VEC>(v, p),
                 WB = load<T, VEC>(w_bar, p), MB = load<T, VEC>(m_bar, p),
                 VB = load<T, VEC>(v_bar, p), H;
    if (kHasHvp) H = load<T, VEC>(hvp, p);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      lr_grad += static_cast<double>(adam_reverse_params(
          W.x[k], M.x[k], V.x[k], WB.x[k], MB.x[k], VB.x[k], kHasHvp ? H.x[k] : T(0),
          kHasHvp, c));
    }
    store<T, VEC>(w, p, W);
    store<T, VEC>(w_bar, p, WB);
    store<T, VEC>(m_bar, p, MB);
    store<T, VEC>(v_bar, p, VB);
  }
  const int64_t tail = packs * VEC + global_thread();
  if (tail < n) {
    lr_grad += static_cast<double>(adam_reverse_params(
        w[tail], m[tail], v[tail], w_bar[tail], m_bar[tail], v_bar[tail],
        kHasHvp ? hvp[tail] : T(0), kHasHvp, c));
  }
  const double total = block_sum(lr_grad);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// One block adds the per-block partial sums in a fixed order: deterministic, no atomics.
__global__ void sum_partials_kernel(const double* partials, int count, double* out) {
  double value = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) value += partials[i];
  value = block_sum(value);
  if (threadIdx.x == 0) out[0] = value;
}

template <typename T, int VEC>
__global__ void reverse_moments_kernel(T* m, T* v, const T* g, const T* m_bar, const T* v_bar,
                                       T* g_bar, int64_t n, AdamCoefficients<T> c) {
  const int64_t packs = n / VEC;
  for (int64_t p = global_thread(); p < packs; p += grid_threads()) {
    Pack<T, VEC> M = load<T, VEC>(m, p), V = load<T, VEC>(v, p), G = load<T, VEC>(g, p),
                 MB = load<T, VEC>(m_bar, p), VB = load<T, VEC>(v_bar, p), GB;
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      adam_reverse_moments(M.x[k], V.x[k], G.x[k], MB.x[k], VB.x[k], GB.x[k], c);
    store<T, VEC>(m, p, M);
    store<T, VEC>(v, p, V);
    store<T, VEC>(g_bar, p, GB);
  }
  const int64_t tail = packs * VEC + global_thread();
  if (tail < n)
    adam_reverse_moments(m[tail], v[tail], g[tail], m_bar[tail], v_bar[tail], g_bar[tail], c);
}

// SGD. Without momentum the buffer pointers are null and never read (Pack loads skipped).
template <typename T, int VEC>
__global__ void sgd_step_kernel(T* w, const T* g, T* b, int64_t n, SgdCoefficients<T> c) {
  const int64_t packs = n / VEC;
  for (int64_t p = global_thread(); p < packs; p += grid_threads()) {
    Pack<T, VEC> W = load<T, VEC>(w, p), G = load<T, VEC>(g, p), B;
    if (c.has_momentum) B = load<T, VEC>(b, p);
#pragma unroll
    for (int k = 0; k < VEC; ++k) sgd_forward(W.x[k], G.x[k], B.x[k], c);
    store<T, VEC>(w, p, W);
    if (c.has_momentum) store<T, VEC>(b, p, B);
  }
  const int64_t tail = packs * VEC + global_thread();
  if (tail < n) {
    // values, not a reference chosen between global and local memory (that puts the local
    // on the stack)
    T buffer = c.has_momentum ? b[tail] : T(0);
    sgd_forward(w[tail], g[tail], buffer, c);
    if (c.has_momentum) b[tail] = buffer;
  }
}

template <typename T, int VEC, bool kHasHvp>
__global__ void sgd_reverse_kernel(const T* w, const T* g, const T* b, T* w_bar, T* b_bar,
                                   T* g_bar, const T* hvp, int64_t n, SgdCoefficients<T> c,
                                   double* lr_partials, double* momentum_partials) {
  double lr_grad = 0.0, momentum_grad = 0.0;
  const int64_t packs = n / VEC;
  for (int64_t p = global_thread(); p < packs; p += grid_threads()) {
    Pack<T, VEC> W = load<T, VEC>(w, p), G = load<T, VEC>(g, p), WB = load<T, VEC>(w_bar, p),
                 B, BB, GB, H;
    if (c.has_momentum) {
      B = load<T, VEC>(b, p);
      BB = load<T, VEC>(b_bar, p);
    }
    if (kHasHvp) H = load<T, VEC>(hvp, p);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      double lr_term, momentum_term;
      sgd_reverse(W.x[k], G.x[k], c.has_momentum ? B.x[k] : T(0), WB.x[k], BB.x[k], GB.x[k],
                  kHasHvp ? H.x[k] : T(0), kHasHvp, c, lr_term, momentum_term);
      lr_grad += lr_term;
      momentum_grad += momentum_term;
    }
    store<T, VEC>(w_bar, p, WB);
    store<T, VEC>(g_bar, p, GB);
    if (c.has_momentum) store<T, VEC>(b_bar, p, BB);
  }
  const int64_t tail = packs * VEC + global_thread();
  if (tail < n) {
    T buffer_bar = c.has_momentum ? b_bar[tail] : T(0);
    double lr_term, momentum_term;
    sgd_reverse(w[tail], g[tail], c.has_momentum ? b[tail] : T(0), w_bar[tail], buffer_bar,
                g_bar[tail], kHasHvp ? hvp[tail] : T(0), kHasHvp, c, lr_term, momentum_term);
    if (c.has_momentum) b_bar[tail] = buffer_bar;
    lr_grad += lr_term;
    momentum_grad += momentum_term;
  }
  // Two block reductions in turn: block_sum's shared scratch is reused, so the first
  // result is read back by every thread before the second starts.
  const double lr_total = block_sum(lr_grad);
  __syncthreads();  // before the second sum rewrites the scratch
  const double momentum_total = block_sum(momentum_grad);
  if (threadIdx.x == 0) {
    lr_partials[blockIdx.x] = lr_total;
    momentum_partials[blockIdx.x] = momentum_total;
  }
}

bool all_aligned(std::initializer_list<uintptr_t> addresses) {
  for (uintptr_t a : addresses)
    if (a % 16 != 0) return false;
  return true;
}

template <typename T>
T* as(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

template <typename T>
void launch_adam_step(uintptr_t w, uintptr_t g, uintptr_t m, uintptr_t v, int64_t n,
                      AdamCoefficients<T> c, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int cap = max_resident_blocks();
  if (all_aligned({w, g, m, v})) {
    adam_step_kernel<T, kVec><<<grid_for(n / kVec + 1, cap), kThreads, 0, stream>>>(
        as<T>(w), as<T>(g), as<T>(m), as<T>(v), n, c);
  } else {
    adam_step_kernel<T, 1><<<grid_for(n, cap), kThreads, 0, stream>>>(
        as<T>(w), as<T>(g), as<T>(m), as<T>(v), n, c);
  }
  check(cudaGetLastError(), "adam_step launch");
}

template <typename T, int VEC>
void launch_reverse_params_vec(uintptr_t w, uintptr_t m, uintptr_t v, uintptr_t w_bar,
                               uintptr_t m_bar, uintptr_t v_bar, uintptr_t hvp, int64_t n,
                               AdamCoefficients<T> c, double* partials, int grid,
                               cudaStream_t stream) {
  if (hvp != 0) {
    reverse_params_kernel<T, VEC, true><<<grid, kThreads, 0, stream>>>(
        as<T>(w), as<T>(m), as<T>(v), as<T>(w_bar), as<T>(m_bar), as<T>(v_bar), as<T>(hvp),
        n, c, partials);
  } else {
    reverse_params_kernel<T, VEC, false><<<grid, kThreads, 0, stream>>>(
        as<T>(w), as<T>(m), as<T>(v), as<T>(w_bar), as<T>(m_bar), as<T>(v_bar), nullptr, n,
        c, partials);
  }
}

template <typename T>
void launch_reverse_params(uintptr_t w, uintptr_t m, uintptr_t v, uintptr_t w_bar,
                           uintptr_t m_bar, uintptr_t v_bar, uintptr_t hvp, int64_t n,
                           AdamCoefficients<T> c, uintptr_t partials, int64_t capacity,
                           uintptr_t out, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  int64_t cap = max_resident_blocks();
  if (capacity < cap) cap = capacity;
  const bool aligned = all_aligned({w, m, v, w_bar, m_bar, v_bar}) && hvp % 16 == 0;
  const int grid = grid_for(aligned ? n / kVec + 1 : n, cap);
  if (aligned) {
    launch_reverse_params_vec<T, kVec>(w, m, v, w_bar, m_bar, v_bar, hvp, n, c,
                                       as<double>(partials), grid, stream);
  } else {
    launch_reverse_params_vec<T, 1>(w, m, v, w_bar, m_bar, v_bar, hvp, n, c,
                                    as<double>(partials), grid, stream);
  }
  check(cudaGetLastError(), "adam_reverse_params launch");
  sum_partials_kernel<<<1, kThreads, 0, stream>>>(as<double>(partials), grid, as<double>(out));
  check(cudaGetLastError(), "adam_reverse_params reduction launch");
}

template <typename T>
void launch_reverse_moments(uintptr_t m, uintptr_t v, uintptr_t g, uintptr_t m_bar,
                            uintptr_t v_bar, uintptr_t g_bar, int64_t n, AdamCoefficients<T> c,
                            cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int cap = max_resident_blocks();
  if (all_aligned({m, v, g, m_bar, v_bar, g_bar})) {
    reverse_moments_kernel<T, kVec><<<grid_for(n / kVec + 1, cap), kThreads, 0, stream>>>(
        as<T>(m), as<T>(v), as<T>(g), as<T>(m_bar), as<T>(v_bar), as<T>(g_bar), n, c);
  } else {
    reverse_moments_kernel<T, 1><<<grid_for(n, cap), kThreads, 0, stream>>>(
        as<T>(m), as<T>(v), as<T>(g), as<T>(m_bar), as<T>(v_bar), as<T>(g_bar), n, c);
  }
  check(cudaGetLastError(), "adam_reverse_moments launch");
}

template <typename T>
void launch_sgd_step(uintptr_t w, uintptr_t g, uintptr_t b, int64_t n, SgdCoefficients<T> c,
                     cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int cap = max_resident_blocks();
  if (all_aligned({w, g, b})) {
    sgd_step_kernel<T, kVec><<<grid_for(n / kVec + 1, cap), kThreads, 0, stream>>>(
        as<T>(w), as<T>(g), as<T>(b), n, c);
  } else {
    sgd_step_kernel<T, 1><<<grid_for(n, cap), kThreads, 0, stream>>>(as<T>(w), as<T>(g),
                                                                      as<T>(b), n, c);
  }
  check(cudaGetLastError(), "sgd_step launch");
}

template <typename T, int VEC>
void launch_sgd_reverse_vec(uintptr_t w, uintptr_t g, uintptr_t b, uintptr_t w_bar,
                            uintptr_t b_bar, uintptr_t g_bar, uintptr_t hvp, int64_t n,
                            SgdCoefficients<T> c, double* partials, int grid,
                            int64_t capacity, cudaStream_t stream) {
  if (hvp != 0) {
    sgd_reverse_kernel<T, VEC, true><<<grid, kThreads, 0, stream>>>(
        as<T>(w), as<T>(g), as<T>(b), as<T>(w_bar), as<T>(b_bar), as<T>(g_bar), as<T>(hvp), n,
        c, partials, partials + capacity);
  } else {
    sgd_reverse_kernel<T, VEC, false><<<grid, kThreads, 0, stream>>>(
        as<T>(w), as<T>(g), as<T>(b), as<T>(w_bar), as<T>(b_bar), as<T>(g_bar), nullptr, n, c,
        partials, partials + capacity);
  }
}

template <typename T>
void launch_sgd_reverse(uintptr_t w, uintptr_t g, uintptr_t b, uintptr_t w_bar,
                        uintptr_t b_bar, uintptr_t g_bar, uintptr_t hvp, int64_t n,
                        SgdCoefficients<T> c, uintptr_t partials, int64_t capacity,
                        uintptr_t out, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  int64_t cap = max_resident_blocks();
  if (capacity < cap) cap = capacity;
  const bool aligned = all_aligned({w, g, b, w_bar, b_bar, g_bar}) && hvp % 16 == 0;
  const int grid = grid_for(aligned ? n / kVec + 1 : n, cap);
  if (aligned) {
    launch_sgd_reverse_vec<T, kVec>(w, g, b, w_bar, b_bar, g_bar, hvp, n, c,
                                    as<double>(partials), grid, capacity, stream);
  } else {
    launch_sgd_reverse_vec<T, 1>(w, g, b, w_bar, b_bar, g_bar, hvp, n, c,
                                 as<double>(partials), grid, capacity, stream);
  }
  check(cudaGetLastError(), "sgd_reverse launch");
  sum_partials_kernel<<<1, kThreads, 0, stream>>>(as<double>(partials), grid, as<double>(out));
  sum_partials_kernel<<<1, kThreads, 0, stream>>>(as<double>(partials) + capacity, grid,
                                                  as<double>(out) + 1);
  check(cudaGetLastError(), "sgd_reverse reduction launch");
}

}  // namespace

void sgd_step(uintptr_t w, uintptr_t g, uintptr_t b, int64_t n, bool is_double, double lr,
              double momentum, double dampening, double weight_decay, bool nesterov,
              int64_t step, uintptr_t stream) {
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (is_double) {
    launch_sgd_step<double>(w, g, b, n,
                            make_sgd_coefficients<double>(lr, momentum, dampening, weight_decay,
                                                          nesterov, step),
                            s);
  } else {
    launch_sgd_step<float>(w, g, b, n,
                           make_sgd_coefficients<float>(lr, momentum, dampening, weight_decay,
                                                        nesterov, step),
                           s);
  }
}

void sgd_reverse(uintptr_t w, uintptr_t g, uintptr_t b, uintptr_t w_bar, uintptr_t b_bar,
                 uintptr_t g_bar, uintptr_t hvp, int64_t n, bool is_double, double lr,
                 double momentum, double dampening, double weight_decay, bool nesterov,
                 int64_t step, uintptr_t partials, int64_t partials_capacity,
                 uintptr_t grads_out, uintptr_t stream) {
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (is_double) {
    launch_sgd_reverse<double>(
        w, g, b, w_bar, b_bar, g_bar, hvp, n,
        make_sgd_coefficients<double>(lr, momentum, dampening, weight_decay, nesterov, step),
        partials, partials_capacity, grads_out, s);
  } else {
    launch_sgd_reverse<float>(
        w, g, b, w_bar, b_bar, g_bar, hvp, n,
        make_sgd_coefficients<float>(lr, momentum, dampening, weight_decay, nesterov, step),
        partials, partials_capacity, grads_out, s);
  }
}

void adam_step(uintptr_t w, uintptr_t g, uintptr_t m, uintptr_t v, int64_t n, bool is_double,
               double lr, double beta1, double beta2, double eps, double weight_decay,
               int64_t step, uintptr_t stream) {
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (is_double) {
    launch_adam_step<double>(w, g, m, v, n,
                             make_coefficients<double>(lr, beta1, beta2, eps, weight_decay, step),
                             s);
  } else {
    launch_adam_step<float>(w, g, m, v, n,
                            make_coefficients<float>(lr, beta1, beta2, eps, weight_decay, step),
                            s);
  }
}

void adam_reverse_params(uintptr_t w, uintptr_t m, uintptr_t v, uintptr_t w_bar,
                         uintptr_t m_bar, uintptr_t v_bar, uintptr_t hvp, int64_t n,
                         bool is_double, double lr, double beta1, double beta2, double eps,
                         double weight_decay, int64_t step, uintptr_t partials,
                         int64_t partials_capacity, uintptr_t lr_grad_out, uintptr_t stream) {
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (is_double) {
    launch_reverse_params<double>(
        w, m, v, w_bar, m_bar, v_bar, hvp, n,
        make_coefficients<double>(lr, beta1, beta2, eps, weight_decay, step), partials,
        partials_capacity, lr_grad_out, s);
  } else {
    launch_reverse_params<float>(
        w, m, v, w_bar, m_bar, v_bar, hvp, n,
        make_coefficients<float>(lr, beta1, beta2, eps, weight_decay, step), partials,
        partials_capacity, lr_grad_out, s);
  }
}

void adam_reverse_moments(uintptr_t m, uintptr_t v, uintptr_t g, uintptr_t m_bar,
                          uintptr_t v_bar, uintptr_t g_bar, int64_t n, bool is_double,
                          double beta1, double beta2, uintptr_t stream) {
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (is_double) {
    launch_reverse_moments<double>(m, v, g, m_bar, v_bar, g_bar, n,
                                   make_coefficients<double>(0.0, beta1, beta2, 0.0, 0.0, 1), s);
  } else {
    launch_reverse_moments<float>(m, v, g, m_bar, v_bar, g_bar, n,
                                  make_coefficients<float>(0.0, beta1, beta2, 0.0, 0.0, 1), s);
  }
}

}  // namespace cuda
}  // namespace farzi_fast
