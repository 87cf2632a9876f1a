// Shared by monl's C++ kernels for XLA:CPU (attention_cpu.cc, matmul_cpu.cc; built by cpu_kernels.py):
// vectors of the host's native width through GCC's vector extensions (-march=native: 16 floats on
// AVX-512, 8 on AVX2, 4 on SSE or NEON), the register tile's shape for its register file, and a parallel
// loop on XLA's intra-op thread pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace monl {

namespace ffi = xla::ffi;

// A vector wider than the hardware's is split by GCC into several, and a register tile of them no
// longer fits in the registers: with 16-float vectors on AVX2 every product spilled and the kernels ran
// 5x slower than XLA's own attention (benchmarks/PERF_LOG.md section 18).
#if defined(__AVX512F__)
constexpr int W = 16;  // floats per vector
#elif defined(__AVX__)
constexpr int W = 8;
#else
constexpr int W = 4;
#endif
// Register tiles are TR rows x TV vectors: 2 TR accumulators, TV loaded vectors and a broadcast. Eight
// rows (19 registers) fit the 32 of AVX-512 and AArch64; x86 below AVX-512 has 16, and takes four rows
// (11 registers: 4 x 2 ran 7-11 % faster than 8 x 1 on AVX2, PERF_LOG section 18).
#if defined(__AVX512F__) || defined(__aarch64__)
constexpr int TR = 8;
#else
constexpr int TR = 4;
#endif
constexpr int TV = 2;

typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));

// {x, ..., x} (W times) compiles to one broadcast. Setting the lanes in a loop compiles to W inserts;
// `vf{} + x` adds an addition (x + 0 is not x for -0).
template <size_t... I>
inline vf splat_lanes(float x, std::index_sequence<I...>) { return vf{((void)I, x)...}; }
inline vf splat(float x) { return splat_lanes(x, std::make_index_sequence<W>()); }
// Keeps a loaded vector in a register: without it GCC folds the load into every FMA that uses it (as a
// memory operand), and with 16 registers a tile's loop is bound by those loads.
inline void in_register(vf& v) {
#if defined(__x86_64__)
  asm("" : "+v"(v));
#elif defined(__aarch64__)
  asm("" : "+w"(v));
#endif
}
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
