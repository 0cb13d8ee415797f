// Elementwise math of the torch.optim.SGD step and its reverse, shared by the CPU
// (cpu_ops.cpp) and CUDA (cuda_kernels.cu) backends. farzi_fast/ops/torch_backend.py is the
// specification; every formula mirrors it term for term (same order of operations).
#pragma once

#include <cstdint>

#include "adam_math.h"  // FF_HOST_DEVICE

namespace farzi_fast {

// One step's constants, cast once on the host from the double hyperparameters.
template <typename T>
struct SgdCoefficients {
  T lr, momentum, one_minus_dampening, weight_decay;
  bool has_momentum;  // momentum != 0: a buffer exists
  bool nesterov;
  bool first;         // torch's first momentum step: the buffer becomes the gradient
};

template <typename T>
SgdCoefficients<T> make_sgd_coefficients(double lr, double momentum, double dampening,
                                         double weight_decay, bool nesterov, int64_t step) {
  SgdCoefficients<T> c;
  c.lr = static_cast<T>(lr);
  c.momentum = static_cast<T>(momentum);
  c.one_minus_dampening = static_cast<T>(1.0 - dampening);
  c.weight_decay = static_cast<T>(weight_decay);
  c.has_momentum = momentum != 0.0;
  c.nesterov = nesterov;
  c.first = step == 1;
  return c;
}

// The direction d of w_t = w_{t-1} - lr d; with momentum, b is updated to b_t in place.
template <typename T>
FF_HOST_DEVICE T sgd_direction(T w, T g, T& b, const SgdCoefficients<T>& c) {
  const T g_hat = g + c.weight_decay * w;
  if (!c.has_momentum) return g_hat;
  b = c.first ? g_hat : c.momentum * b + c.one_minus_dampening * g_hat;
  return c.nesterov ? g_hat + c.momentum * b : b;
}

template <typename T>
FF_HOST_DEVICE void sgd_forward(T& w, T g, T& b, const SgdCoefficients<T>& c) {
  const T d = sgd_direction(w, g, b, c);
  w = w - c.lr * d;
}

// Reverse of one step from the state before it (w = w_{t-1}, b = b_{t-1}) and g = g_t.
// Sets this element's dF/dlr and dF/dmomentum terms (each product rounded in T, as the
// reference does, then widened for the caller's double sums), writes
// g_bar (the Hessian-vector product's vector), b_bar <- dF/db_{t-1}, and
// w_bar <- dF/dw_{t-1} apart from that product (after first adding the previous reverse
// step's product `hvp` when `has_hvp`).
template <typename T>
FF_HOST_DEVICE void sgd_reverse(T w, T g, T b, T& w_bar, T& b_bar, T& g_bar, T hvp,
                                bool has_hvp, const SgdCoefficients<T>& c, double& lr_term,
                                double& momentum_term) {
  const T w_bar_in = has_hvp ? w_bar + hvp : w_bar;
  const T b_prev = b;
  T b_new = b;
  const T d = sgd_direction(w, g, b_new, c);
  const T d_bar = -c.lr * w_bar_in;
  lr_term = static_cast<double>(-(w_bar_in * d));
  momentum_term = 0.0;
  T g_hat_bar;
  if (c.has_momentum) {
    const T b_bar_total = b_bar + (c.nesterov ? c.momentum * d_bar : d_bar);
    g_hat_bar = (c.nesterov ? d_bar : T(0)) +
                (c.first ? b_bar_total : c.one_minus_dampening * b_bar_total);
    if (c.nesterov) momentum_term = static_cast<double>(d_bar * b_new);
    if (!c.first) momentum_term += static_cast<double>(b_bar_total * b_prev);
    b_bar = c.first ? T(0) : c.momentum * b_bar_total;
  } else {
    g_hat_bar = d_bar;
  }
  w_bar = w_bar_in + c.weight_decay * g_hat_bar;
  g_bar = g_hat_bar;
}

}  // namespace farzi_fast
