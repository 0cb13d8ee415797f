// Elementwise math of the Adam forward step and its exact reverse, shared by the
// CPU (cpu_ops.cpp) and CUDA (cuda_kernels.cu) backends so the two cannot drift apart.
// farzi_fast/ops/torch_backend.py is the specification; every formula here mirrors it
// term for term (same order of operations), which is what lets the tests compare
// backends to the reference at float64 round-off.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FF_HOST_DEVICE inline
#endif

namespace farzi_fast {

// Per-step coefficients, derived once on the host in double precision and cast to the
// element type, exactly like torch.optim.Adam derives step_size and bias_correction2_sqrt
// as Python floats.
template <typename T>
struct AdamCoefficients {
  T beta1, beta2, one_minus_beta1, one_minus_beta2, eps;
  T step_size;      // lr / (1 - beta1^t)
  T bias2_sqrt;     // sqrt(1 - beta2^t)
  T inv_bias1;      // 1 / (1 - beta1^t)
  T decay;          // 1 - lr * weight_decay (decoupled, AdamW)
  T weight_decay;
};

template <typename T>
AdamCoefficients<T> make_coefficients(double lr, double beta1, double beta2, double eps,
                                      double weight_decay, int64_t step) {
  const double bias1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  AdamCoefficients<T> c;
  c.beta1 = static_cast<T>(beta1);
  c.beta2 = static_cast<T>(beta2);
  c.one_minus_beta1 = static_cast<T>(1.0 - beta1);
  c.one_minus_beta2 = static_cast<T>(1.0 - beta2);
  c.eps = static_cast<T>(eps);
  c.step_size = static_cast<T>(lr / bias1);
  c.bias2_sqrt = static_cast<T>(std::sqrt(bias2));
  c.inv_bias1 = static_cast<T>(1.0 / bias1);
  c.decay = static_cast<T>(1.0 - lr * weight_decay);
  c.weight_decay = static_cast<T>(weight_decay);
  return c;
}

// Single-precision sqrt for float on the host too (plain ::sqrt would round-trip via double).
template <typename T>
FF_HOST_DEVICE T square_root(T x) {
#if defined(__CUDA_ARCH__)
  return sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// Adam denominator d_t = sqrt(v_t) / sqrt(1 - beta2^t) + eps, as torch.optim.Adam computes it.
template <typename T>
FF_HOST_DEVICE T adam_denominator(T v, const AdamCoefficients<T>& c) {
  return square_root(v) / c.bias2_sqrt + c.eps;
}

// One forward step: w <- w (1 - lr wd) - step_size m_t / d_t.
template <typename T>
FF_HOST_DEVICE void adam_forward(T& w, T g, T& m, T& v, const AdamCoefficients<T>& c) {
  m = c.beta1 * m + c.one_minus_beta1 * g;
  v = c.beta2 * v + c.one_minus_beta2 * (g * g);
  w = w * c.decay - c.step_size * (m / adam_denominator(v, c));
}

// Reverse, first half (before the gradient at w_{t-1} is recomputed).
// When `has_hvp`, first completes the previous reverse step: w_bar += hvp and the moment
// adjoints decay by beta (deferred to here so the second half need not write them).
// Then reconstructs w_{t-1} in place, adds w_bar's contributions to m_bar and v_bar,
// scales w_bar by the decay factor, and returns this element's dF/dlr term.
template <typename T>
FF_HOST_DEVICE T adam_reverse_params(T& w, T m, T v, T& w_bar, T& m_bar, T& v_bar, T hvp,
                                     bool has_hvp, const AdamCoefficients<T>& c) {
  if (has_hvp) {
    w_bar = w_bar + hvp;
    m_bar = c.beta1 * m_bar;
    v_bar = c.beta2 * v_bar;
  }
  const T d = adam_denominator(v, c);
  const T direction = m / d;  // (m_t / d_t); the update is step_size * direction
  const T w_prev = (w + c.step_size * direction) / c.decay;
  m_bar = m_bar + w_bar * (-c.step_size / d);
  // dd/dv = 1 / (2 sqrt(v) sqrt(1 - beta2^t)); v == 0 only where g was 0 at every step, and
  // there the derivative's limit through d = eps is 0 as well.
  if (v > T(0)) {
    v_bar = v_bar + w_bar * (c.step_size * m / (d * d * (T(2) * square_root(v) * c.bias2_sqrt)));
  }
  const T lr_term = w_bar * (-c.weight_decay * w_prev - direction * c.inv_bias1);
  w_bar = w_bar * c.decay;
  w = w_prev;
  return lr_term;
}

// Reverse, second half (given the recomputed gradient g_t at w_{t-1}): reconstructs m_{t-1},
// v_{t-1} in place and writes g_bar, the vector the Hessian-vector product is taken with.
// v_{t-1} is clamped at 0: rounding can leave a tiny negative where the true value is 0.
template <typename T>
FF_HOST_DEVICE void adam_reverse_moments(T& m, T& v, T g, T m_bar, T v_bar, T& g_bar,
                                         const AdamCoefficients<T>& c) {
  g_bar = c.one_minus_beta1 * m_bar + T(2) * c.one_minus_beta2 * (g * v_bar);
  m = (m - c.one_minus_beta1 * g) / c.beta1;
  const T v_prev = (v - c.one_minus_beta2 * (g * g)) / c.beta2;
  v = v_prev > T(0) ? v_prev : T(0);
}

}  // namespace farzi_fast
