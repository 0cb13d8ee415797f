// A stand-in for <cuda_runtime.h> that lets csrc/cuda_kernels.cu, unchanged, compile as host
// C++ (after rewrite_launches.py turns `k<<<grid, block, shmem, stream>>>(args)` into
// `farzi_fast_emu::launch(k, farzi_fast_emu::Config{grid, block, shmem, stream})(args)`).
// Every CUDA thread of a block runs, either as a cooperative fiber (deterministic order) or as
// a real thread (so ThreadSanitizer sees the block's real concurrency); blocks run one after
// another, so `__shared__` is a static shared by the block's threads.
//
// The subset of CUDA supported, all the kernels use:
//   __global__ / __device__ / __host__ / __forceinline__ / __shared__; 1-D launches;
//   threadIdx / blockIdx / blockDim / gridDim (.x); __syncthreads(); __shfl_down_sync on
//   values of up to 8 bytes with a full mask; cudaGetDevice, cudaDeviceGetAttribute
//   (multiprocessor count, max threads per multiprocessor), cudaGetLastError,
//   cudaGetErrorString, cudaStream_t.
// Emulated devices (set_device): 0 = an H100 (132 SMs x 2048 threads, 1056 resident blocks
// of 256), 1 = a small GPU (2 SMs x 2048 threads, 16 blocks), so grids are sized as on real
// devices and the grid-stride and tail paths both run.
#pragma once

#include <ucontext.h>

#include <barrier>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9 };
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerMultiProcessor = 39,
  cudaDevAttrMultiProcessorCount = 16,
};

namespace farzi_fast_emu {

struct DeviceModel {
  int sms, threads_per_sm;
};
inline constexpr DeviceModel kDevices[] = {{132, 2048}, {2, 2048}};  // H100, a small GPU
inline int current_device = 0;
inline cudaError_t last_error = cudaSuccess;

inline void set_device(int device) {
  if (device < 0 || device >= 2) throw std::invalid_argument("emulated device must be 0 or 1");
  current_device = device;
}

enum class Mode { kFibers, kThreads };
inline Mode mode = Mode::kFibers;

// What a CUDA thread reads as threadIdx etc. One per OS thread; in fiber mode the scheduler
// rewrites it before resuming each fiber.
struct ThreadState {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
};
inline thread_local ThreadState state;

struct Config {
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;
  Config(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr)
      : grid(g), block(b), shared_bytes(s), stream(st) {}
};

constexpr unsigned kWarp = 32;

// ---- fibers: one OS thread, a round-robin scheduler, busy barriers that yield ----
struct FiberBlock {
  unsigned count;
  std::vector<ucontext_t> contexts;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<bool> done;
  ucontext_t scheduler;
  unsigned running = 0;
  uint64_t events = 0;  // barrier arrivals and completions: progress, to detect deadlock
};
inline FiberBlock* fibers = nullptr;

inline void yield_fiber() { swapcontext(&fibers->contexts[fibers->running], &fibers->scheduler); }

struct FiberBarrier {
  unsigned expected = 0, arrived = 0;
  uint64_t generation = 0;
  void wait() {
    const uint64_t mine = generation;
    ++fibers->events;
    if (++arrived == expected) {
      arrived = 0;
      ++generation;
      return;
    }
    while (generation == mine) yield_fiber();
  }
};

// ---- the block's synchronisation, for whichever mode runs it ----
struct BlockSync {
  unsigned threads;
  // fibers
  FiberBarrier block_fiber;
  std::vector<FiberBarrier> warp_fiber;
  // threads
  std::unique_ptr<std::barrier<>> block_thread;
  std::vector<std::unique_ptr<std::barrier<>>> warp_thread;
  // __shfl_down_sync exchange: one 8-byte slot per thread
  std::vector<uint64_t> slots;

  explicit BlockSync(unsigned n) : threads(n), warp_fiber((n + kWarp - 1) / kWarp), slots(n) {
    block_fiber.expected = n;
    for (unsigned w = 0; w < warp_fiber.size(); ++w) warp_fiber[w].expected = lanes(w);
    if (mode == Mode::kThreads) {
      block_thread = std::make_unique<std::barrier<>>(n);
      for (unsigned w = 0; w < warp_fiber.size(); ++w)
        warp_thread.push_back(std::make_unique<std::barrier<>>(lanes(w)));
    }
  }
  unsigned lanes(unsigned warp) const {
    const unsigned rest = threads - warp * kWarp;
    return rest < kWarp ? rest : kWarp;
  }
  void block() {
    if (mode == Mode::kThreads) block_thread->arrive_and_wait();
    else block_fiber.wait();
  }
  void warp(unsigned w) {
    if (mode == Mode::kThreads) warp_thread[w]->arrive_and_wait();
    else warp_fiber[w].wait();
  }
};
inline BlockSync* sync = nullptr;

inline void run_fibers(const Config& c, const std::function<void()>& body) {
  const unsigned n = c.block.x;
  FiberBlock block;
  block.count = n;
  block.contexts.resize(n);
  block.done.assign(n, false);
  constexpr size_t kStack = 256 * 1024;
  for (unsigned i = 0; i < n; ++i) block.stacks.emplace_back(new char[kStack]);
  fibers = &block;
  static const std::function<void()>* current_body;
  current_body = &body;
  for (unsigned b = 0; b < c.grid.x; ++b) {
    BlockSync block_sync(n);
    sync = &block_sync;
    for (unsigned i = 0; i < n; ++i) {
      getcontext(&block.contexts[i]);
      block.contexts[i].uc_stack.ss_sp = block.stacks[i].get();
      block.contexts[i].uc_stack.ss_size = kStack;
      block.contexts[i].uc_link = &block.scheduler;
      makecontext(&block.contexts[i], +[] {
        (*current_body)();
        fibers->done[fibers->running] = true;
        ++fibers->events;
      }, 0);
      block.done[i] = false;
    }
    unsigned finished = 0;
    while (finished < n) {
      const uint64_t before = block.events;
      finished = 0;
      for (unsigned i = 0; i < n; ++i) {
        if (block.done[i]) {
          ++finished;
          continue;
        }
        block.running = i;
        state = ThreadState{dim3(i), dim3(b), c.block, c.grid};
        swapcontext(&block.scheduler, &block.contexts[i]);
      }
      if (finished < n && block.events == before)
        throw std::runtime_error("emulated CUDA: deadlock (a barrier some threads never reach)");
    }
  }
  fibers = nullptr;
  sync = nullptr;
}

inline void run_threads(const Config& c, const std::function<void()>& body) {
  const unsigned n = c.block.x;
  BlockSync block_sync(n);
  sync = &block_sync;
  std::vector<std::thread> workers;
  for (unsigned i = 0; i < n; ++i) {
    workers.emplace_back([&, i] {
      for (unsigned b = 0; b < c.grid.x; ++b) {
        state = ThreadState{dim3(i), dim3(b), c.block, c.grid};
        body();
        block_sync.block();  // the next block starts when every thread left this one
      }
    });
  }
  for (auto& w : workers) w.join();
  sync = nullptr;
}

template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  Config config;
  template <typename... Args>
  void operator()(Args&&... args) const {
    if (config.grid.x == 0 || config.block.x == 0 || config.block.x > 1024 ||
        config.grid.y != 1 || config.block.y != 1) {
      last_error = cudaErrorInvalidConfiguration;
      return;
    }
    const std::function<void()> body = [&] { kernel(static_cast<Params>(args)...); };
    static std::mutex one_launch_at_a_time;  // like one stream; callers may drop the GIL
    const std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    if (mode == Mode::kThreads) run_threads(config, body);
    else run_fibers(config, body);
  }
};

template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), Config config) {
  return Launch<Params...>{kernel, config};
}

}  // namespace farzi_fast_emu

#define threadIdx (::farzi_fast_emu::state.thread_idx)
#define blockIdx (::farzi_fast_emu::state.block_idx)
#define blockDim (::farzi_fast_emu::state.block_dim)
#define gridDim (::farzi_fast_emu::state.grid_dim)

inline void __syncthreads() { farzi_fast_emu::sync->block(); }

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned offset) {
  static_assert(sizeof(T) <= 8, "emulated shuffles carry up to 8 bytes");
  if (mask != 0xffffffffu) throw std::logic_error("emulated __shfl_down_sync: full mask only");
  auto* s = farzi_fast_emu::sync;
  const unsigned me = threadIdx.x, warp = me / farzi_fast_emu::kWarp;
  const unsigned lane = me % farzi_fast_emu::kWarp;
  std::memcpy(&s->slots[me], &value, sizeof(T));
  s->warp(warp);  // every lane has published
  T result = value;  // a lane whose source is outside the warp keeps its own value
  if (lane + offset < s->lanes(warp)) std::memcpy(&result, &s->slots[me + offset], sizeof(T));
  s->warp(warp);  // every lane has read before the slots are written again
  return result;
}

inline cudaError_t cudaGetDevice(int* device) {
  *device = farzi_fast_emu::current_device;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  const auto& d = farzi_fast_emu::kDevices[device];
  *value = attr == cudaDevAttrMultiProcessorCount ? d.sms : d.threads_per_sm;
  return cudaSuccess;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = farzi_fast_emu::last_error;
  farzi_fast_emu::last_error = cudaSuccess;
  return e;
}

inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "invalid configuration argument";
}
