// What the compiled CPU kernels share (ltc_cpu.cc, cfc_cpu.cc): the work split over XLA's
// intra-op thread pool and the float tanh XLA:CPU uses.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace liquidjax_native {

namespace ffi = xla::ffi;

// Batch lanes processed together: up to kChunk (a few SIMD vectors; also the row stride of the
// per-chunk work arrays), fewer when that leaves a thread idle (chunk_size).
constexpr int64_t kChunk = 64;

// Runs body(worker, chunk) for every chunk in [0, chunks): the calling thread and up to
// `workers - 1` tasks on XLA's intra-op thread pool take chunks from a shared counter until none
// are left, so a worker that is descheduled (or a pool that is busy) delays at most the chunk it
// holds. Returns when every chunk is done. A task that starts after that finds no chunk and
// touches nothing but the shared counters.
template <typename F>
void parallel_chunks(ffi::ThreadPool* pool, int64_t chunks, int workers, F& body) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::atomic<int> worker{1};
  };
  auto st = std::make_shared<State>();
  auto work = [st, chunks, &body](int w) {
    for (;;) {
      const int64_t c = st->next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return;
      body(w, c);
      st->done.fetch_add(1, std::memory_order_release);
    }
  };
  if (pool != nullptr)
    for (int t = 1; t < workers; ++t)
      pool->Schedule([st, work] { work(st->worker.fetch_add(1)); });
  work(0);
  while (st->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// The chunk size for a batch of B: kChunk, halved (down to 16 lanes) while that gives fewer chunks
// than the pool has threads.
inline int64_t chunk_size(ffi::ThreadPool* pool, int64_t B) {
  const int64_t threads = pool == nullptr ? 1 : std::max<int64_t>(1, pool->num_threads());
  int64_t cs = kChunk;
  while (cs > 16 && (B + cs - 1) / cs < threads) cs /= 2;
  return cs;
}

inline int workers_for(ffi::ThreadPool* pool, int64_t chunks) {
  int64_t n = pool == nullptr ? 1 : std::max<int64_t>(1, pool->num_threads());
  if (const char* env = std::getenv("LIQUIDJAX_NATIVE_THREADS")) n = std::max(1, std::atoi(env));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n, chunks)));
}

// tanh: for float the rational approximation Eigen and XLA:CPU use (clamped, exact for tiny
// arguments), which vectorises; for double the C library's.
inline float tanh_(float a) {
  const float c = 7.90531110763549805f;
  float x = a > c ? c : (a < -c ? -c : a);
  float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  float r = p / q;
  return std::fabs(a) < 0.0004f ? a : r;
}
inline double tanh_(double a) { return std::tanh(a); }

template <typename T>
inline T sigmoid_(T z) {
  return T(0.5) * tanh_(T(0.5) * z) + T(0.5);
}

}  // namespace liquidjax_native
