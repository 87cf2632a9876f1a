// Shared by monl's C++ kernels for XLA:CPU (attention_cpu.cc, matmul_cpu.cc; built by cpu_kernels.py):
// 16-float vectors through GCC's vector extensions (AVX-512, AVX2 or NEON, as -march=native allows) and a
// parallel loop on XLA's intra-op thread pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace monl {

namespace ffi = xla::ffi;

constexpr int W = 16;  // floats per vector
typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));

// {x, ..., x} compiles to one broadcast; `vf{} + x` would add an addition (x + 0 is not x for -0).
inline vf splat(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
static_assert(W == 16, "splat spells out 16 lanes");
inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof(vf)); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }

// Runs fn(i) for i in [0, n) on the pool and the calling thread; returns when all are done.
inline void parallel_for(ffi::ThreadPool& pool, int64_t n, const std::function<void(int64_t)>& fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &fn] {
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      fn(i);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  // A helper that starts after all items are taken returns without touching `fn` (it owns `state`).
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state, work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

}  // namespace monl
