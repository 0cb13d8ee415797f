// Runs the emulated CUDA launchers (csrc/cuda_kernels.cu behind cuda_runtime.h) against a
// serial loop over adam_math.h, the same elementwise math the kernels call: every element
// must match bit for bit (float and double; the host build does not contract into FMA), the
// dF/dlr sum to 1e-12 (its blocks add in another order), nothing outside [0, n) may change.
// Built and run by tests/test_emulation.py, also under AddressSanitizer + UBSan and, with
// real threads, ThreadSanitizer; applying a mutation to the kernel source must make it fail.
//
//   check_kernels fibers|threads [SIZES [DEVICES]]
// SIZES: comma-separated element counts (default: every boundary below, up to 65539);
// DEVICES: emulated devices, "01" (default) = the H100 and the small GPU.
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

template <typename T>
void check_case(int64_t n, int offset, bool with_hvp, int device, std::mt19937_64& rng) {
  farzi_fast_emu::set_device(device);
  std::normal_distribution<double> normal;
  enum { W, G, M, V, WB, MB, VB, H, GB, kCount };
  std::vector<Buffer<T>> buf;
  for (int k = 0; k < kCount; ++k) buf.emplace_back(n, offset);
  std::vector<std::vector<T>> ref(kCount, std::vector<T>(n));
  for (int k = 0; k < kCount; ++k) {
    for (int64_t i = 0; i < n; ++i) {
      double x = normal(rng);
      if (k == V) x = (i % 7 == 0) ? 0.0 : 0.1 * x * x;  // exact zeros: never-updated params
      if (k == GB) x = std::nan("");                      // output only: poisoned
      buf[k].data()[i] = ref[k][i] = static_cast<T>(x);
    }
  }
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

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "fibers" && mode != "threads") {
    std::fprintf(stderr, "usage: check_kernels fibers|threads [SIZES [DEVICES]]\n");
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
  std::mt19937_64 rng(12345);
  int cases = 0;
  for (char d : devices) {
    for (int64_t n : sizes) {
      for (int offset : {0, 1, 2}) {
        for (bool hvp : {true, false}) {
          check_case<float>(n, offset, hvp, d - '0', rng);
          check_case<double>(n, offset, hvp, d - '0', rng);
          cases += 2;
        }
      }
    }
  }
  std::printf("%d cases, %d failures (%s)\n", cases, failures, mode.c_str());
  return failures == 0 ? 0 : 1;
}
