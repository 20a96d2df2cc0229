// What the compiled CPU kernels share (ltc_cpu.cc, cfc_cpu.cc): the work split over threads
// (XLA's intra-op pool, or pinned helper threads of our own), the dispatch on the float type,
// and the float tanh XLA:CPU uses.
#pragma once

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace liquidjax_native {

namespace ffi = xla::ffi;

// Batch lanes processed together: up to kChunk (a few SIMD vectors; also the row stride of the
// per-chunk work arrays), fewer when that leaves a thread idle (chunk_size).
constexpr int64_t kChunk = 64;

// Helper threads of our own, one pinned to each CPU this process may use: created at first use
// (and again in a forked child, which has none of its parent's threads), never destroyed.
//
// Why not XLA's intra-op pool: a pool thread that has slept for a few milliseconds (between two
// calls of a training loop that does anything else, or after another library ran) is woken by
// Linux on the waking thread's own CPU (wake-affine placement); the two then share that CPU and
// the kernel runs at one core's speed, about 2x its time with both, for the whole call (measured
// on this project's 2-core VM: the woken thread landed on the caller's CPU 36 times in 40 after a
// 5 ms gap). A thread pinned to another CPU is woken there (≈ 60 µs).
class Helpers {
 public:
  Helpers() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return;  // no helpers: single-threaded
    for (int c = 0; c < CPU_SETSIZE && helpers_.size() < 64; ++c) {
      if (!CPU_ISSET(c, &set)) continue;
      helpers_.push_back(new Helper{c, {}, {}, {}});
      std::thread(&Helpers::loop, helpers_.back()).detach();
    }
  }

  // Gives `task` to up to n helpers pinned to CPUs other than the caller's.
  void wake(int n, const std::function<void()>& task) {
    const int here = sched_getcpu();
    int woken = 0;
    for (Helper* h : helpers_) {
      if (woken >= n) break;
      if (h->cpu == here) continue;
      {
        std::lock_guard<std::mutex> lock(h->mu);
        h->tasks.push_back(task);
      }
      h->cv.notify_one();
      ++woken;
    }
  }

 private:
  struct Helper {
    int cpu;
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::function<void()>> tasks;
  };

  static void loop(Helper* h) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(h->cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);  // if refused: runs unpinned
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(h->mu);
        h->cv.wait(lock, [h] { return !h->tasks.empty(); });
        task = std::move(h->tasks.front());
        h->tasks.pop_front();
      }
      task();
    }
  }

  std::vector<Helper*> helpers_;
};

// Calls of parallel_chunks on the helpers running now (one counter for every kernel).
inline std::atomic<int> helper_calls_in_flight{0};

inline Helpers& helpers() {
  static std::mutex mu;
  static Helpers* h = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (h == nullptr || owner != getpid()) {  // first use, or a forked child
    h = new Helpers();
    owner = getpid();
  }
  return *h;
}

// Runs body(worker, chunk) for every chunk in [0, chunks): the calling thread and up to
// `workers - 1` other workers take chunks from a shared counter until none are left, so a worker
// that is descheduled delays at most the chunk it holds. Returns when every chunk is done. A
// worker that starts after that finds no chunk and touches nothing but the shared state. Worker
// indices are 0 (the caller) .. workers - 1.
//
// The other workers are tasks on XLA's intra-op pool (`pool`), or with `pool` null the pinned
// helpers above. The LTC's kernel, called at every step of a scan, uses the pool, whose threads
// are awake there (the long-sequence LTC's forward, 256 calls of batch 32: 13.6 ms on the pool,
// 19.3 ms on the helpers); the CfC's, called once or twice per sequence after other work, uses
// the helpers (its row-wise forward after a torch call: 2.6 ms on the pool, 1.6 ms on them).
template <typename F>
void parallel_chunks(ffi::ThreadPool* pool, int64_t chunks, int workers, F& body) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::atomic<int> worker{1};
    std::function<void(int, int64_t)> body;
  };
  auto st = std::make_shared<State>();
  st->body = [&body](int w, int64_t c) { body(w, c); };
  auto work = [st, chunks](int w) {
    for (;;) {
      const int64_t c = st->next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return;
      st->body(w, c);
      st->done.fetch_add(1, std::memory_order_release);
    }
  };
  // On the helpers: only while no other such call runs. Two at once (a program sharded over
  // several XLA CPU devices, each running its shard's kernel) already use the CPUs, and helpers
  // would only crowd them (measured: the row-wise CfC train step over 2 host devices took 9.0 ms
  // with helpers, against 3.5 ms on one device). A helper that starts after another call began
  // leaves the work to its caller.
  const bool on_helpers = pool == nullptr;
  const bool alone =
      on_helpers && helper_calls_in_flight.fetch_add(1, std::memory_order_acq_rel) == 0;
  if (workers > 1 && !on_helpers)
    for (int t = 1; t < workers; ++t) pool->Schedule([st, work] { work(st->worker.fetch_add(1)); });
  else if (workers > 1 && alone)
    helpers().wake(workers - 1, [st, work] {
      if (helper_calls_in_flight.load(std::memory_order_acquire) == 1)
        work(st->worker.fetch_add(1));
    });
  work(0);
  while (st->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
  if (on_helpers) helper_calls_in_flight.fetch_sub(1, std::memory_order_acq_rel);
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

// Runs run(T{}) for the float type `type` (float32 or float64); `kernel` names the kernel in the
// error otherwise.
template <typename F>
ffi::Error by_dtype(ffi::DataType type, const char* kernel, F&& run) {
  switch (type) {
    case ffi::DataType::F32: return run(float{});
    case ffi::DataType::F64: return run(double{});
    default:
      return ffi::Error::InvalidArgument(std::string("liquidjax ") + kernel +
                                         " kernel: float32 or float64 only");
  }
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
