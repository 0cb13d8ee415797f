// Runs the emulated CUDA launchers (csrc/cuda_kernels.cu behind cuda_runtime.h) against a
// serial loop over adam_math.h and sgd_math.h, the same elementwise math the kernels call:
// every element must match bit for bit (float and double; the host build does not contract
// into FMA), the dF/dlr (and dF/dmomentum) sums to 1e-12 (their blocks add in another
// order), nothing outside [0, n) may change.
// Built and run by tests/test_emulation.py, also under AddressSanitizer + UBSan and, with
// real threads, ThreadSanitizer; applying a mutation to the kernel source must make it fail.
//
//   check_kernels fibers|threads [SIZES [DEVICES [first]]]
// SIZES: comma-separated element counts (default: every boundary below, up to 65539);
// DEVICES: emulated devices, "01" (default) = the H100 and the small GPU;
// first: stop at the first failing case (the planted-bug checks need only that one).
// Exit 0 when everything matches; otherwise prints the first mismatch and exits 1.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "adam_math.h"
#include "cuda_kernels.h"
#include "cuda_runtime.h"
#include "sgd_math.h"

namespace {

constexpr int kGuard = 16;         // elements checked on both sides of every buffer
constexpr int kPartials = 4096;    // as ops/cuda_backend.py allocates
constexpr double kLr = 3e-2, kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8, kDecay = 0.1;
constexpr int64_t kStep = 5;

template <typename T>
struct Buffer {  // n elements at `offset` elements past a 64-byte boundary, guarded
  std::vector<T> storage;
  int offset;
  int64_t n;
  Buffer(int64_t n_, int offset_) : offset(offset_), n(n_) {
    storage.assign(static_cast<size_t>(n + 2 * kGuard + 64), T(-7.25));
  }
  T* data() {
    auto base = reinterpret_cast<uintptr_t>(storage.data() + kGuard);
    base = (base + 63) / 64 * 64;
    return reinterpret_cast<T*>(base) + offset;
  }
  uintptr_t address() { return reinterpret_cast<uintptr_t>(data()); }
  bool guards_intact() {
    for (int i = 1; i <= kGuard; ++i)
      if (data()[-i] != T(-7.25) || data()[n - 1 + i] != T(-7.25)) return false;
    return true;
  }
};

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }
bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

int failures = 0;

template <typename T>
void fail(const char* what, int64_t n, int offset, bool hvp, int device, int64_t i, T got,
          T want) {
  if (failures++ < 5)
    std::printf("MISMATCH %s: %s n=%lld offset=%d hvp=%d device=%d at %lld: got %.17g want %.17g\n",
                what, sizeof(T) == 8 ? "double" : "float", static_cast<long long>(n), offset,
                int(hvp), device, static_cast<long long>(i), double(got), double(want));
}

// `count` guarded buffers of n elements and their reference copies, drawn from a normal
// distribution and passed through draw(buffer index, element index, value).
template <typename T, typename Draw>
void fill_random(std::vector<Buffer<T>>& buf, std::vector<std::vector<T>>& ref, int count,
                 int64_t n, int offset, std::mt19937_64& rng, Draw draw) {
  std::normal_distribution<double> normal;
  for (int k = 0; k < count; ++k) buf.emplace_back(n, offset);
  ref.assign(count, std::vector<T>(n));
  for (int k = 0; k < count; ++k) {
    for (int64_t i = 0; i < n; ++i)
      buf[k].data()[i] = ref[k][i] = static_cast<T>(draw(k, i, normal(rng)));
  }
}

template <typename T>
void check_case(int64_t n, int offset, bool with_hvp, int device, std::mt19937_64& rng) {
  farzi_fast_emu::set_device(device);
  enum { W, G, M, V, WB, MB, VB, H, GB, kCount };
  std::vector<Buffer<T>> buf;
  std::vector<std::vector<T>> ref;
  fill_random(buf, ref, kCount, n, offset, rng, [](int k, int64_t i, double x) {
    if (k == V) return (i % 7 == 0) ? 0.0 : 0.1 * x * x;  // exact zeros: never-updated params
    return k == GB ? std::nan("") : x;                    // output only: poisoned
  });
  const auto c = farzi_fast::make_coefficients<T>(kLr, kBeta1, kBeta2, kEps, kDecay, kStep);
  const auto cm = farzi_fast::make_coefficients<T>(0.0, kBeta1, kBeta2, 0.0, 0.0, 1);
  const bool is_double = sizeof(T) == 8;

  // reference: the three ops, one element at a time
  double lr_want = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    farzi_fast::adam_forward(ref[W][i], ref[G][i], ref[M][i], ref[V][i], c);
    lr_want += static_cast<double>(farzi_fast::adam_reverse_params(
        ref[W][i], ref[M][i], ref[V][i], ref[WB][i], ref[MB][i], ref[VB][i],
        with_hvp ? ref[H][i] : T(0), with_hvp, c));
    farzi_fast::adam_reverse_moments(ref[M][i], ref[V][i], ref[G][i], ref[MB][i], ref[VB][i],
                                     ref[GB][i], cm);
  }

  std::vector<double> partials(kPartials, std::nan(""));
  double lr_got = std::nan("");
  farzi_fast::cuda::adam_step(buf[W].address(), buf[G].address(), buf[M].address(),
                              buf[V].address(), n, is_double, kLr, kBeta1, kBeta2, kEps, kDecay,
                              kStep, 0);
  farzi_fast::cuda::adam_reverse_params(
      buf[W].address(), buf[M].address(), buf[V].address(), buf[WB].address(),
      buf[MB].address(), buf[VB].address(), with_hvp ? buf[H].address() : 0, n, is_double, kLr,
      kBeta1, kBeta2, kEps, kDecay, kStep, reinterpret_cast<uintptr_t>(partials.data()),
      kPartials, reinterpret_cast<uintptr_t>(&lr_got), 0);
  farzi_fast::cuda::adam_reverse_moments(buf[M].address(), buf[V].address(), buf[G].address(),
                                         buf[MB].address(), buf[VB].address(),
                                         buf[GB].address(), n, is_double, kBeta1, kBeta2, 0);

  static const char* names[kCount] = {"w", "g", "m", "v", "w_bar", "m_bar", "v_bar", "hvp",
                                      "g_bar"};
  for (int k = 0; k < kCount; ++k) {
    if (!buf[k].guards_intact() && failures++ < 5)
      std::printf("MISMATCH %s: %s n=%lld offset=%d hvp=%d device=%d: written outside [0, n)\n",
                  names[k], is_double ? "double" : "float", static_cast<long long>(n), offset,
                  int(with_hvp), device);
    for (int64_t i = 0; i < n; ++i) {
      if (!same_bits(buf[k].data()[i], ref[k][i])) {
        fail(names[k], n, offset, with_hvp, device, i, buf[k].data()[i], ref[k][i]);
        break;
      }
    }
  }
  const double scale = std::fabs(lr_want) + 1e-300;
  if (!(std::fabs(lr_got - lr_want) <= 1e-12 * scale + 1e-14 * n))
    fail("lr_grad", n, offset, with_hvp, device, 0, lr_got, lr_want);
}

// SGD's two ops on one state: sgd_step on (w, b), then sgd_reverse from (w, g, b) as they
// were; `variant` 0 plain SGD, 1 heavy-ball with dampening, 2 Nesterov; `step` 1 is torch's
// first momentum step.
template <typename T>
void check_sgd_case(int64_t n, int offset, bool with_hvp, int device, int variant,
                    int64_t step, std::mt19937_64& rng) {
  farzi_fast_emu::set_device(device);
  enum { W, G, B, WN, BN, WB, BB, H, GB, kCount };
  std::vector<Buffer<T>> buf;
  std::vector<std::vector<T>> ref;
  fill_random(buf, ref, kCount, n, offset, rng, [](int k, int64_t, double x) {
    return k == GB ? std::nan("") : x;  // output only: poisoned
  });
  for (int64_t i = 0; i < n; ++i) {  // the step's inputs, copied to where it writes
    buf[WN].data()[i] = ref[WN][i] = ref[W][i];
    buf[BN].data()[i] = ref[BN][i] = ref[B][i];
  }
  const double momentum = variant == 0 ? 0.0 : (variant == 1 ? 0.9 : 0.8);
  const double dampening = variant == 1 ? 0.3 : 0.0;
  const bool nesterov = variant == 2, has_b = variant != 0;
  const auto c = farzi_fast::make_sgd_coefficients<T>(kLr, momentum, dampening, kDecay,
                                                      nesterov, step);
  const bool is_double = sizeof(T) == 8;

  double lr_want = 0.0, momentum_want = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    farzi_fast::sgd_forward(ref[WN][i], ref[G][i], ref[BN][i], c);
    double lr_term, momentum_term;
    farzi_fast::sgd_reverse(ref[W][i], ref[G][i], ref[B][i], ref[WB][i], ref[BB][i],
                            ref[GB][i], with_hvp ? ref[H][i] : T(0), with_hvp, c, lr_term,
                            momentum_term);
    lr_want += lr_term;
    momentum_want += momentum_term;
  }
  if (!has_b) ref[BN] = ref[B];  // plain SGD: no buffer, untouched

  std::vector<double> partials(2 * kPartials, std::nan(""));
  double got[2] = {std::nan(""), std::nan("")};
  farzi_fast::cuda::sgd_step(buf[WN].address(), buf[G].address(),
                             has_b ? buf[BN].address() : 0, n, is_double, kLr, momentum,
                             dampening, kDecay, nesterov, step, 0);
  farzi_fast::cuda::sgd_reverse(
      buf[W].address(), buf[G].address(), has_b ? buf[B].address() : 0, buf[WB].address(),
      has_b ? buf[BB].address() : 0, buf[GB].address(), with_hvp ? buf[H].address() : 0, n,
      is_double, kLr, momentum, dampening, kDecay, nesterov, step,
      reinterpret_cast<uintptr_t>(partials.data()), kPartials,
      reinterpret_cast<uintptr_t>(got), 0);

  static const char* names[kCount] = {"sgd w", "sgd g", "sgd b", "sgd w_t", "sgd b_t",
                                      "sgd w_bar", "sgd b_bar", "sgd hvp", "sgd g_bar"};
  for (int k = 0; k < kCount; ++k) {
    if (!has_b && k == BB) continue;  // the kernel never sees it; the reference wrote it
    if (!buf[k].guards_intact() && failures++ < 5)
      std::printf("MISMATCH %s: n=%lld offset=%d: written outside [0, n)\n", names[k],
                  static_cast<long long>(n), offset);
    for (int64_t i = 0; i < n; ++i) {
      if (!same_bits(buf[k].data()[i], ref[k][i])) {
        fail(names[k], n, offset, with_hvp, device, i, buf[k].data()[i], ref[k][i]);
        break;
      }
    }
  }
  const double sums[2][2] = {{got[0], lr_want}, {got[1], momentum_want}};
  for (const auto& pair : sums) {
    if (!(std::fabs(pair[0] - pair[1]) <= 1e-12 * (std::fabs(pair[1]) + 1e-300) + 1e-14 * n))
      fail("sgd sum", n, offset, with_hvp, device, 0, pair[0], pair[1]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "fibers" && mode != "threads") {
    std::fprintf(stderr, "usage: check_kernels fibers|threads [SIZES [DEVICES [first]]]\n");
    return 2;
  }
  farzi_fast_emu::mode =
      mode == "threads" ? farzi_fast_emu::Mode::kThreads : farzi_fast_emu::Mode::kFibers;
  // Sizes around every boundary: a pack (4 floats / 2 doubles), a block (256 threads), a
  // small GPU's resident grid (16 blocks x 256 x 4 = 16384 floats: beyond it threads stride).
  std::vector<int64_t> sizes = {1,    2,    3,     4,     5,     7,     8,     255,  256,
                                257,  1023, 1025,  4099,  16383, 16384, 16385, 32771, 65539};
  if (argc > 2) {
    sizes.clear();
    for (const char* p = argv[2]; *p;) {
      char* end = nullptr;
      sizes.push_back(std::strtoll(p, &end, 10));
      p = *end == ',' ? end + 1 : end;
      if (end == p && *p) return 2;
    }
  }
  const std::string devices = argc > 3 ? argv[3] : "01";
  const bool stop_at_first_failure = argc > 4 && std::string(argv[4]) == "first";
  std::mt19937_64 rng(12345);
  int cases = 0, sgd_cases = 0;
  for (char d : devices) {
    for (int64_t n : sizes) {
      for (int offset : {0, 1, 2}) {
        for (bool hvp : {true, false}) {
          check_case<float>(n, offset, hvp, d - '0', rng);
          check_case<double>(n, offset, hvp, d - '0', rng);
          cases += 2;
          // SGD beside the aligned and one unaligned offset, with the next step's hvp (the
          // Python tests run the emulated kernels without it too); the variants, steps and
          // types take turns across the sizes
          if (offset == 2 || !hvp) continue;
          const int turn = sgd_cases++;
          const int variant = turn % 3;
          const int64_t step = turn % 2 == 0 ? 1 : kStep;
          if (turn % 4 < 2) {
            check_sgd_case<float>(n, offset, hvp, d - '0', variant, step, rng);
          } else {
            check_sgd_case<double>(n, offset, hvp, d - '0', variant, step, rng);
          }
          ++cases;
        }
        if (stop_at_first_failure && failures > 0) {
          std::printf("%d cases, stopped at the first failure (%s)\n", cases, mode.c_str());
          return 1;
        }
      }
    }
  }
  std::printf("%d cases, %d failures (%s)\n", cases, failures, mode.c_str());
  return failures == 0 ? 0 : 1;
}
