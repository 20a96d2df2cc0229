// The CfC's recurrence over a held-input sequence on CPU, with or without mixed memory (an LSTM
// step in front of the CfC): the forward (the states, and for training the LSTM gate, backbone
// and head pre-activations) and the backward (the whole VJP but the input's cotangent), for a
// batch held batch-major and time-major, called from JAX through the XLA FFI
// (liquidjax/_native/__init__.py, cells/_cfc_sequence.py).
//
// The arithmetic is that of liquidjax/cells/_cfc_sequence.py, its definition (_scan with save;
// _grads): per step [with mixed memory z = [x_t | h] W_l^T + b_l, (c', h~) = the LSTM's update]
// u = [x_t | h~] W_in^T + b (h~ = h without mixed memory), p = act(u) W_heads^T + b_heads,
// h' = the gate of p's heads. The backward computes each step's local derivatives from the saved
// pre-activations and accumulates every weight gradient step by step, per chunk of rows, the
// chunks' sums added in order at the end (the same bits whichever worker took which chunk); the
// input's cotangent (dus W_in + dzs W_l) is JAX's, where it is wanted.
//
// Why a kernel: the batch's rows are independent through the whole sequence, so each worker (a
// pinned helper thread, common.h) runs every step of its own rows (no synchronisation per step,
// which XLA:CPU pays for every small product of its scan), with the weights packed once per call
// and held in cache, through a register-tiled product (kTileRows rows x kNV SIMD vectors).
//
// Arguments (row-major; "or (0)": an empty array for an absent operand), W = H, with mixed
// memory 2H (the state [h | c]), Z = 4H (the LSTM's gates), P = 3H (unit steps: no dts, the
// time heads summed) or 4H:
//   forward:  x (T,B,I) h0 (B,H) c0 (B,H) or (0) w_in (Z+U,I) (the LSTM's input map's rows
//             first) b_in (Z+U) w_h (U,H) w_lstm (Z,H) or (0) w_heads (P,U) b_heads (P)
//             dts (T,B) or (0) mask (T,B) uint8 or (0)
//             -> hs (T,B,W) or with `last` (1,B,W), us (T,B,U) or (0), ps (T,B,P) or (0),
//                zs (T,B,Z) or (0)
//   backward: ct (T,B,W) or with `last` (B,W), x, h0, c0, hs, us, ps, zs, dts, mask as above,
//             w_heads, w_h, w_lstm
//             -> dus (T,B,U), d_dts (T,B) or (0), dh0 (B,H), the weight gradients summed over
//                time and batch: d_w_in (Z+U,I), d_w_h (U,H), d_b_in (Z+U), d_w_heads (P,U),
//                d_b_heads (P); and with mixed memory dzs (T,B,Z), d_w_lstm (Z,H), dc0 (B,H)
#include <cstring>
#include <type_traits>
#include <vector>

#include "common.h"

namespace {

using namespace liquidjax_native;

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(64)));
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
};
template <typename T>
constexpr int64_t kLanes = 64 / static_cast<int64_t>(sizeof(T));
constexpr int kNV = 2;        // SIMD vectors per column block of a product
constexpr int kTileRows = 8;  // rows per register tile
template <typename T>
constexpr int64_t kCols = kNV * kLanes<T>;  // columns per block

inline int64_t padded(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// C[MR rows, kCols] = init + sum_k A(r, k) B[k, kCols], one register tile: A(r, k) is
// A[r * ar + k * ak] (a row-major A: ar = lda, ak = 1; a transposed one: ar = 1, ak = lda); init is
// `bias` (null: zero), or with `accumulate` C itself.
template <typename T, int MR>
inline void tile(int64_t K, const T* A, int64_t ar, int64_t ak, const T* B, int64_t ldb, T* C,
                 int64_t ldc, const T* bias, bool accumulate) {
  using V = typename Simd<T>::V;
  V acc[MR][kNV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) {
      acc[r][v] = V{};
      const T* from = accumulate ? C + r * ldc + v * kLanes<T> : bias ? bias + v * kLanes<T>
                                                                      : nullptr;
      if (from) std::memcpy(&acc[r][v], from, sizeof(V));
    }
  for (int64_t k = 0; k < K; ++k) {
    V b[kNV];
    for (int v = 0; v < kNV; ++v) std::memcpy(&b[v], B + k * ldb + v * kLanes<T>, sizeof(V));
    for (int r = 0; r < MR; ++r) {
      const T a = A[r * ar + k * ak];
      for (int v = 0; v < kNV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) std::memcpy(C + r * ldc + v * kLanes<T>, &acc[r][v], sizeof(V));
}

// C (M, N) = init + A B, A(i, k) = A[i * ar + k * ak] (M, K), B (K, N) with row stride ldb; N and
// ldc multiples of kCols<T>, bias (if any) padded to N; init as for tile.
template <typename T>
void product(int64_t M, int64_t K, int64_t N, const T* A, int64_t ar, int64_t ak, const T* B,
             int64_t ldb, T* C, int64_t ldc, const T* bias, bool accumulate) {
  for (int64_t j = 0; j < N; j += kCols<T>) {
    const T* biasj = bias ? bias + j : nullptr;
    int64_t i = 0;
    for (; i + kTileRows <= M; i += kTileRows)
      tile<T, kTileRows>(K, A + i * ar, ar, ak, B + j, ldb, C + i * ldc + j, ldc, biasj,
                         accumulate);
    for (; i + 4 <= M; i += 4)
      tile<T, 4>(K, A + i * ar, ar, ak, B + j, ldb, C + i * ldc + j, ldc, biasj, accumulate);
    for (; i < M; ++i)
      tile<T, 1>(K, A + i * ar, ar, ak, B + j, ldb, C + i * ldc + j, ldc, biasj, accumulate);
  }
}

// C (M, N) = bias + A (M, K) B (K, N); B packed with row stride N.
template <typename T>
void matmul(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda, const T* B, T* C,
            int64_t ldc, const T* bias) {
  product(M, K, N, A, lda, 1, B, N, C, ldc, bias, false);
}

// C (M, N) += A (K, M)^T B (K, N): a product contracting over the rows of both.
template <typename T>
void matmul_t_acc(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda, const T* B,
                  int64_t ldb, T* C, int64_t ldc) {
  product(M, K, N, A, 1, lda, B, ldb, C, ldc, static_cast<const T*>(nullptr), true);
}

// The backbone activations, as liquidjax.cells._cfc.ACTIVATIONS (same order as
// liquidjax._native.CFC_ACTIVATIONS).
enum Activation : int64_t { kLecunTanh = 0, kSilu = 1, kRelu = 2, kTanh = 3, kGelu = 4 };

// Runs run(std::integral_constant<int64_t, A>{}) for the activation id A.
template <typename F>
ffi::Error by_activation(int64_t activation, F&& run) {
  switch (activation) {
    case kLecunTanh: run(std::integral_constant<int64_t, kLecunTanh>{}); break;
    case kSilu: run(std::integral_constant<int64_t, kSilu>{}); break;
    case kRelu: run(std::integral_constant<int64_t, kRelu>{}); break;
    case kTanh: run(std::integral_constant<int64_t, kTanh>{}); break;
    case kGelu: run(std::integral_constant<int64_t, kGelu>{}); break;
    default: return ffi::Error::InvalidArgument("liquidjax CfC kernel: unknown activation");
  }
  return ffi::Error::Success();
}

template <typename T, int64_t A>
inline T activate(T x) {
  if constexpr (A == kLecunTanh) return T(1.7159) * tanh_(T(0.666) * x);
  if constexpr (A == kSilu) return x * sigmoid_(x);
  if constexpr (A == kRelu) return x > T(0) ? x : T(0);
  if constexpr (A == kTanh) return tanh_(x);
  return x * (std::erf(x * T(0.70710678118654752440)) + T(1)) / T(2);  // kGelu (exact)
}

template <typename T, int64_t A>
inline T activate_grad(T x) {
  if constexpr (A == kLecunTanh) {
    const T t = tanh_(T(0.666) * x);
    return T(1.7159) * (T(1) - t * t) * T(0.666);
  }
  if constexpr (A == kSilu) {
    const T s = sigmoid_(x);
    return s * (T(1) + x * (T(1) - s));
  }
  if constexpr (A == kRelu) return x > T(0) ? T(1) : T(0);
  if constexpr (A == kTanh) {
    const T t = tanh_(x);
    return T(1) - t * t;
  }
  return (std::erf(x * T(0.70710678118654752440)) + T(1)) / T(2) +  // kGelu (exact)
         x * std::exp(-x * x / T(2)) * T(0.39894228040143267794);
}

// The new state h (H) of one example from its head pre-activations p = [f1 | f2 | t] (unit
// steps) or [f1 | f2 | ta | tb] (timed: t = ta dt + tb); `pre` is H of scratch.
template <typename T>
inline void gate(const T* __restrict__ p, T dt, bool timed, int64_t H, bool no_gate,
                 T* __restrict__ pre, T* __restrict__ h) {
  const T* t = p + 2 * H;
  if (timed) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) pre[j] = p[2 * H + j] * dt + p[3 * H + j];
    t = pre;
  }
  if (no_gate) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) h[j] = tanh_(p[j]) + sigmoid_(t[j]) * tanh_(p[H + j]);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T sg = sigmoid_(t[j]);
      h[j] = tanh_(p[j]) * (T(1) - sg) + sg * tanh_(p[H + j]);
    }
  }
}

// The LSTM's update of one example (cells/_lstm.py: lstm_gates) from its gate pre-activations
// z = [i | ig | fg | og] and cell state c: the new cell state and the output h~.
template <typename T>
inline void lstm_update(const T* __restrict__ z, const T* __restrict__ c, int64_t H,
                        T* __restrict__ c_new, T* __restrict__ h_in) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T cn = c[j] * sigmoid_(z[2 * H + j] + T(1)) + tanh_(z[j]) * sigmoid_(z[H + j]);
    c_new[j] = cn;
    h_in[j] = tanh_(cn) * sigmoid_(z[3 * H + j]);
  }
}

// Sizes, shared read-only by the workers. With mixed memory (`memory`) the state is [h | c]
// (width W = 2H) and an LSTM step (4H gates, Zp padded) comes first.
// Up, Pp, Hp, Zp, Kp: U, P, H, 4H and I + H padded to whole column blocks.
struct Shape {
  int64_t T_, B, I, H, U, P, Up, Pp, Hp, Kp;
  bool memory = false;
  int64_t Zp = 0;
  int64_t W() const { return memory ? 2 * H : H; }
};

// Rows per chunk: the batch split evenly over the workers, in whole register tiles.
inline int64_t rows_per_chunk(ffi::ThreadPool* pool, int64_t B) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(workers_for(pool, B),
                                                                (B + kTileRows - 1) / kTileRows));
  return padded((B + chunks - 1) / chunks, kTileRows);
}

template <typename T, int64_t A>
void forward(const Shape& s, const T* x, const T* h0, const T* c0, const T* win,
             const T* bin, const T* wl, const T* bl, const T* wp, const T* bp, const T* dts,
             const uint8_t* mask, bool no_gate, bool last, T* hs, T* us, T* ps, T* zs,
             ffi::ThreadPool* pool) {
  const int64_t B = s.B, I = s.I, H = s.H, U = s.U, P = s.P, Up = s.Up, Pp = s.Pp, Zp = s.Zp;
  const int64_t Kin = I + H, cs = rows_per_chunk(pool, B), chunks = (B + cs - 1) / cs;
  const int64_t W = s.W();
  const bool memory = s.memory;
  auto body = [&](int, int64_t c) {
    const int64_t r0 = c * cs, L = std::min(cs, B - r0);
    // z = [x_t | h]; with mixed memory zm = [x_t | h~] (the backbone's input), lz the LSTM's
    // gates, cc its cell state and cn the new one.
    std::vector<T> z(L * Kin), u(L * Up), a(L * Up), p(L * Pp), pre(H);
    std::vector<T> zm(memory ? L * Kin : 0), lz(memory ? L * Zp : 0), cc(memory ? L * H : 0),
        cn(memory ? L * H : 0);
    for (int64_t r = 0; r < L; ++r) {
      std::memcpy(&z[r * Kin + I], h0 + (r0 + r) * H, H * sizeof(T));
      if (memory) std::memcpy(&cc[r * H], c0 + (r0 + r) * H, H * sizeof(T));
    }
    for (int64_t t = 0; t < s.T_; ++t) {
      const int64_t row0 = t * B + r0;  // this chunk's first row in the (T, B, .) arrays
      for (int64_t r = 0; r < L; ++r) {
        std::memcpy(&z[r * Kin], x + (row0 + r) * I, I * sizeof(T));
        if (memory) std::memcpy(&zm[r * Kin], x + (row0 + r) * I, I * sizeof(T));
      }
      const T* zin = z.data();
      if (memory) {
        matmul<T>(L, Kin, Zp, z.data(), Kin, wl, lz.data(), Zp, bl);
        for (int64_t r = 0; r < L; ++r) {
          if (zs) std::memcpy(zs + (row0 + r) * 4 * H, &lz[r * Zp], 4 * H * sizeof(T));
          lstm_update(&lz[r * Zp], &cc[r * H], H, &cn[r * H], &zm[r * Kin + I]);
        }
        zin = zm.data();
      }
      matmul<T>(L, Kin, Up, zin, Kin, win, u.data(), Up, bin);
      for (int64_t e = 0; e < L * Up; ++e) a[e] = activate<T, A>(u[e]);
      matmul<T>(L, U, Pp, a.data(), Up, wp, p.data(), Pp, bp);
      for (int64_t r = 0; r < L; ++r) {
        if (us) std::memcpy(us + (row0 + r) * U, &u[r * Up], U * sizeof(T));
        if (ps) std::memcpy(ps + (row0 + r) * P, &p[r * Pp], P * sizeof(T));
        T* h = &z[r * Kin + I];
        if (!mask || mask[row0 + r]) {
          gate(&p[r * Pp], dts ? dts[row0 + r] : T(0), dts, H, no_gate, pre.data(), h);
          if (memory) std::memcpy(&cc[r * H], &cn[r * H], H * sizeof(T));
        }
        if (!last) {
          std::memcpy(hs + (row0 + r) * W, h, H * sizeof(T));
          if (memory) std::memcpy(hs + (row0 + r) * W + H, &cc[r * H], H * sizeof(T));
        }
      }
    }
    if (last)
      for (int64_t r = 0; r < L; ++r) {
        std::memcpy(hs + (r0 + r) * W, &z[r * Kin + I], H * sizeof(T));
        if (memory) std::memcpy(hs + (r0 + r) * W + H, &cc[r * H], H * sizeof(T));
      }
  };
  parallel_chunks(nullptr, chunks, workers_for(pool, chunks), body);
}

// The cotangent of one example's head pre-activations dp (P) from that of its new state dh (H) and
// its saved pre-activations p; returns the timespan's cotangent (timed steps). The two flags are
// template parameters, so that the loop vectorises.
template <typename T, bool kTimed, bool kNoGate>
inline T head_cotangents(const T* __restrict__ p, const T* __restrict__ dh, T dt, int64_t H,
                         T* __restrict__ dp) {
  T d_dt = T(0);
#pragma omp simd reduction(+ : d_dt)
  for (int64_t j = 0; j < H; ++j) {
    const T f1 = tanh_(p[j]), f2 = tanh_(p[H + j]);
    const T pre = kTimed ? p[2 * H + j] * dt + p[3 * H + j] : p[2 * H + j];
    const T sg = sigmoid_(pre);
    dp[j] = dh[j] * ((T(1) - f1 * f1) * (kNoGate ? T(1) : T(1) - sg));
    dp[H + j] = dh[j] * ((T(1) - f2 * f2) * sg);
    const T d_pre = dh[j] * ((kNoGate ? f2 : f2 - f1) * sg * (T(1) - sg));
    if constexpr (kTimed) {
      dp[2 * H + j] = d_pre * dt;
      dp[3 * H + j] = d_pre;
      d_dt += d_pre * p[2 * H + j];
    } else {
      dp[2 * H + j] = d_pre;
    }
  }
  return d_dt;
}

template <typename T>
inline T head_cotangents(const T* p, const T* dh, T dt, bool timed, int64_t H, bool no_gate,
                         T* dp) {
  if (timed)
    return no_gate ? head_cotangents<T, true, true>(p, dh, dt, H, dp)
                   : head_cotangents<T, true, false>(p, dh, dt, H, dp);
  return no_gate ? head_cotangents<T, false, true>(p, dh, dt, H, dp)
                 : head_cotangents<T, false, false>(p, dh, dt, H, dp);
}

// The LSTM's part of one example's backward step (the scan of cells/_cfc_sequence.py:
// _cotangents with mixed memory): from the cotangent dhi of its output h~ and its gates z, cell
// states c (this step's, after the mask) and c_prev, updates the carried dc and writes the gates'
// cotangent dz (4H) and h~ itself (the backbone's input, for its weight gradient). A masked step
// passes dc through and gives dz = 0.
template <typename T>
inline void lstm_cotangents(const T* __restrict__ z, const T* __restrict__ c,
                            const T* __restrict__ c_prev, const T* __restrict__ dhi, bool on,
                            int64_t H, T* __restrict__ dc, T* __restrict__ dz,
                            T* __restrict__ h_in) {
  const T keep = on ? T(1) : T(0);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T ti = tanh_(z[j]), s_i = sigmoid_(z[H + j]), f = sigmoid_(z[2 * H + j] + T(1));
    const T s_o = sigmoid_(z[3 * H + j]), tc = tanh_(c[j]);
    h_in[j] = tc * s_o;
    const T dcr = dc[j] + dhi[j] * (keep * (s_o * (T(1) - tc * tc)));
    dz[j] = dcr * (keep * (s_i * (T(1) - ti * ti)));
    dz[H + j] = dcr * (keep * (ti * s_i * (T(1) - s_i)));
    dz[2 * H + j] = dcr * (keep * (c_prev[j] * f * (T(1) - f)));
    dz[3 * H + j] = dhi[j] * (keep * (tc * s_o * (T(1) - s_o)));
    dc[j] = on ? dcr * f : dcr;
  }
}

// One chunk's sums of the weight gradients, padded as the products write them. Per chunk, not per
// worker, so that the result does not depend on which worker took which chunk: summed over the
// chunks in order at the end, it is the same from one call to the next.
template <typename T>
struct Grads {
  // (P, Up), (P), (U, Kp): [W_in | W_h], (U); with mixed memory (4H, Kp): [W_x | W_lstm], (4H)
  std::vector<T> w_heads, b_heads, w_z, b_in, w_l, b_l;
  Grads(int64_t P, int64_t Up, int64_t U, int64_t Kp, int64_t Z)
      : w_heads(P * Up, T(0)), b_heads(P, T(0)), w_z(U * Kp, T(0)), b_in(U, T(0)),
        w_l(Z * Kp, T(0)), b_l(Z, T(0)) {}
};

template <typename T, int64_t A>
void backward(const Shape& s, const T* ct, const T* x, const T* h0, const T* c0, const T* hs,
              const T* us, const T* ps, const T* zs, const T* dts, const uint8_t* mask,
              const T* wp2, const T* wh2, const T* wl2, bool no_gate, bool last, T* dus, T* ddts,
              T* dh0, T* dzs, T* dc0, std::vector<Grads<T>>& grads, int64_t chunks, int64_t cs,
              ffi::ThreadPool* pool) {
  const int64_t B = s.B, I = s.I, H = s.H, U = s.U, P = s.P, Up = s.Up, Hp = s.Hp, Kp = s.Kp;
  const int64_t W = s.W(), Z = 4 * H;
  const bool memory = s.memory;
  auto body = [&](int, int64_t c) {
    Grads<T>& g = grads[c];
    const int64_t r0 = c * cs, L = std::min(cs, B - r0);
    // z: what the backbone's weights multiplied, [x_t | h_{t-1}] (with mixed memory
    // [x_t | h~_t]); zl: what the LSTM's did, [x_t | h_{t-1}].
    std::vector<T> dh(L * H, T(0)), dp(L * P), du(L * Up), dhp(L * Hp), a(L * Up, T(0)),
        z(L * Kp, T(0));
    std::vector<T> dc(memory ? L * H : 0, T(0)), dz(memory ? L * Z : 0), zl(memory ? L * Kp : 0),
        dhl(memory ? L * Hp : 0);
    for (int64_t t = s.T_ - 1; t >= 0; --t) {
      const int64_t row0 = t * B + r0;  // this chunk's first row in the (T, B, .) arrays
      const T* ctt = last ? (t == s.T_ - 1 ? ct + r0 * W : nullptr) : ct + row0 * W;
      for (int64_t r = 0; r < L; ++r) {
        T* dhr = &dh[r * H];
        if (ctt) {
          for (int64_t j = 0; j < H; ++j) dhr[j] += ctt[r * W + j];
          if (memory)
            for (int64_t j = 0; j < H; ++j) dc[r * H + j] += ctt[r * W + H + j];
        }
        T* dpr = &dp[r * P];
        T d_dt = T(0);
        if (!mask || mask[row0 + r])
          d_dt = head_cotangents(ps + (row0 + r) * P, dhr, dts ? dts[row0 + r] : T(0),
                                 dts != nullptr, H, no_gate, dpr);
        else  // a masked step passes dh straight through, to nothing else
          std::fill(dpr, dpr + P, T(0));
        if (ddts) ddts[row0 + r] = d_dt;
      }
      matmul<T>(L, P, Up, dp.data(), P, wp2, du.data(), Up, nullptr);
      for (int64_t r = 0; r < L; ++r) {
        const T* ur = us + (row0 + r) * U;
        T* dur = &du[r * Up];
        T* ar = &a[r * Up];
#pragma omp simd
        for (int64_t j = 0; j < U; ++j) {
          ar[j] = activate<T, A>(ur[j]);
          dur[j] *= activate_grad<T, A>(ur[j]);
        }
        std::memcpy(dus + (row0 + r) * U, dur, U * sizeof(T));
        std::memcpy(&z[r * Kp], x + (row0 + r) * I, I * sizeof(T));
        const T* hp = t > 0 ? hs + (row0 - B + r) * W : h0 + (r0 + r) * H;
        std::memcpy(memory ? &zl[r * Kp + I] : &z[r * Kp + I], hp, H * sizeof(T));
        if (memory) std::memcpy(&zl[r * Kp], x + (row0 + r) * I, I * sizeof(T));
        T* __restrict__ gbp = g.b_heads.data();
        T* __restrict__ gbi = g.b_in.data();
        const T* dpr = &dp[r * P];
#pragma omp simd
        for (int64_t q = 0; q < P; ++q) gbp[q] += dpr[q];
#pragma omp simd
        for (int64_t j = 0; j < U; ++j) gbi[j] += dur[j];
      }
      matmul<T>(L, U, Hp, du.data(), Up, wh2, dhp.data(), Hp, nullptr);
      if (memory) {
        for (int64_t r = 0; r < L; ++r) {
          const T* c_t = hs + (row0 + r) * W + H;
          const T* c_prev = t > 0 ? hs + (row0 - B + r) * W + H : c0 + (r0 + r) * H;
          lstm_cotangents(zs + (row0 + r) * Z, c_t, c_prev, &dhp[r * Hp],
                          !mask || mask[row0 + r], H, &dc[r * H], &dz[r * Z], &z[r * Kp + I]);
          std::memcpy(dzs + (row0 + r) * Z, &dz[r * Z], Z * sizeof(T));
          T* __restrict__ gbl = g.b_l.data();
          const T* dzr = &dz[r * Z];
#pragma omp simd
          for (int64_t q = 0; q < Z; ++q) gbl[q] += dzr[q];
        }
        matmul<T>(L, Z, Hp, dz.data(), Z, wl2, dhl.data(), Hp, nullptr);
        matmul_t_acc<T>(Z, L, Kp, dz.data(), Z, zl.data(), Kp, g.w_l.data(), Kp);
      }
      matmul_t_acc<T>(P, L, Up, dp.data(), P, a.data(), Up, g.w_heads.data(), Up);
      matmul_t_acc<T>(U, L, Kp, du.data(), Up, z.data(), Kp, g.w_z.data(), Kp);
      const T* dprev = memory ? dhl.data() : dhp.data();
      for (int64_t r = 0; r < L; ++r)
        if (!mask || mask[row0 + r]) std::memcpy(&dh[r * H], &dprev[r * Hp], H * sizeof(T));
    }
    std::memcpy(dh0 + r0 * H, dh.data(), L * H * sizeof(T));
    if (memory) std::memcpy(dc0 + r0 * H, dc.data(), L * H * sizeof(T));
  };
  parallel_chunks(nullptr, chunks, workers_for(pool, chunks), body);
}

// dst (rows, cols_p) = src (rows, cols) zero-padded to cols_p columns; with `transpose` src is
// (cols, rows) and dst[i][j] = src[j][i].
template <typename T>
void pack(const T* src, int64_t rows, int64_t cols, int64_t cols_p, bool transpose, T* dst,
          int64_t dst_row0 = 0) {
  for (int64_t i = 0; i < rows; ++i) {
    T* d = dst + (dst_row0 + i) * cols_p;
    for (int64_t j = 0; j < cols; ++j) d[j] = transpose ? src[j * rows + i] : src[i * cols + j];
    for (int64_t j = cols; j < cols_p; ++j) d[j] = T(0);
  }
}

template <typename T>
const T* data_or_null(ffi::AnyBuffer b) {
  return b.element_count() ? b.typed_data<T>() : nullptr;
}

// The sizes from the arguments (w_lstm empty: no mixed memory).
template <typename T>
ffi::ErrorOr<Shape> shape_of(ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer w_h,
                                ffi::AnyBuffer w_heads, ffi::AnyBuffer dts,
                                ffi::AnyBuffer w_lstm) {
  Shape s{};
  s.T_ = x.dimensions()[0];
  s.B = x.dimensions()[1];
  s.I = x.dimensions()[2];
  s.H = h0.dimensions()[1];
  s.U = w_h.dimensions()[0];
  s.P = w_heads.dimensions()[0];
  s.Up = padded(s.U, kCols<T>);
  s.Pp = padded(s.P, kCols<T>);
  s.Hp = padded(s.H, kCols<T>);
  s.Kp = padded(s.I + s.H, kCols<T>);
  s.memory = w_lstm.element_count() > 0;
  s.Zp = s.memory ? padded(4 * s.H, kCols<T>) : 0;
  if (s.P != (dts.element_count() ? 4 : 3) * s.H)
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("liquidjax CfC kernel: heads must be 3H (unit steps) or 4H"));
  return s;
}

template <typename T>
T* out_or_null(ffi::Result<ffi::AnyBuffer>& r) {
  return r->element_count() ? r->typed_data<T>() : nullptr;
}

template <typename T>
ffi::Error forward_impl(ffi::ThreadPool* pool, ffi::AnyBuffer x, ffi::AnyBuffer h0,
                        ffi::AnyBuffer c0, ffi::AnyBuffer w_in, ffi::AnyBuffer b_in,
                        ffi::AnyBuffer w_h, ffi::AnyBuffer w_lstm, ffi::AnyBuffer w_heads,
                        ffi::AnyBuffer b_heads, ffi::AnyBuffer dts, ffi::AnyBuffer mask,
                        ffi::Result<ffi::AnyBuffer> hs, ffi::Result<ffi::AnyBuffer> us,
                        ffi::Result<ffi::AnyBuffer> ps, ffi::Result<ffi::AnyBuffer> zs,
                        int64_t activation, bool no_gate, bool last) {
  auto shape = shape_of<T>(x, h0, w_h, w_heads, dts, w_lstm);
  if (!shape.has_value()) return shape.error();
  const Shape s = *shape;
  const int64_t Kin = s.I + s.H, Z = s.memory ? 4 * s.H : 0;
  // w_in (Z + U, I): with mixed memory the LSTM's input map's rows first.
  std::vector<T> win(Kin * s.Up), bin(s.Up), wp(s.U * s.Pp), bp(s.Pp), wl(Kin * s.Zp),
      bl(s.Zp);
  const T* w_in_d = w_in.typed_data<T>();
  const T* b_in_d = b_in.typed_data<T>();
  pack(w_in_d + Z * s.I, s.I, s.U, s.Up, true, win.data());
  pack(w_h.typed_data<T>(), s.H, s.U, s.Up, true, win.data(), s.I);
  pack(b_in_d + Z, 1, s.U, s.Up, false, bin.data());
  pack(w_heads.typed_data<T>(), s.U, s.P, s.Pp, true, wp.data());
  pack(b_heads.typed_data<T>(), 1, s.P, s.Pp, false, bp.data());
  if (s.memory) {
    pack(w_in_d, s.I, Z, s.Zp, true, wl.data());
    pack(w_lstm.typed_data<T>(), s.H, Z, s.Zp, true, wl.data(), s.I);
    pack(b_in_d, 1, Z, s.Zp, false, bl.data());
  }
  return by_activation(activation, [&](auto a) {
    forward<T, decltype(a)::value>(
        s, x.typed_data<T>(), h0.typed_data<T>(), data_or_null<T>(c0), win.data(), bin.data(),
        wl.data(), bl.data(), wp.data(), bp.data(), data_or_null<T>(dts),
        data_or_null<uint8_t>(mask), no_gate, last, hs->typed_data<T>(), out_or_null<T>(us),
        out_or_null<T>(ps), out_or_null<T>(zs), pool);
  });
}

template <typename T>
ffi::Error backward_impl(ffi::ThreadPool* pool, ffi::AnyBuffer ct, ffi::AnyBuffer x,
                         ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::AnyBuffer hs,
                         ffi::AnyBuffer us, ffi::AnyBuffer ps, ffi::AnyBuffer zs,
                         ffi::AnyBuffer dts, ffi::AnyBuffer mask, ffi::AnyBuffer w_heads,
                         ffi::AnyBuffer w_h, ffi::AnyBuffer w_lstm, ffi::RemainingRets rets,
                         int64_t activation, bool no_gate, bool last) {
  auto shape = shape_of<T>(x, h0, w_h, w_heads, dts, w_lstm);
  if (!shape.has_value()) return shape.error();
  const Shape s = *shape;
  const int64_t Z = s.memory ? 4 * s.H : 0, I = s.I, H = s.H, U = s.U, P = s.P, Kp = s.Kp;
  std::vector<T> wp2(P * s.Up), wh2(U * s.Hp), wl2(Z * s.Hp);
  pack(w_heads.typed_data<T>(), P, U, s.Up, false, wp2.data());
  pack(w_h.typed_data<T>(), U, H, s.Hp, false, wh2.data());
  if (s.memory) pack(w_lstm.typed_data<T>(), Z, H, s.Hp, false, wl2.data());
  // dus d_dts dh0 d_w_in d_w_h d_b_in d_w_heads d_b_heads dzs d_w_lstm dc0
  T* out[11];
  for (int i = 0; i < 11; ++i) {
    auto r = rets.get<ffi::AnyBuffer>(i);
    if (!r.has_value()) return r.error();
    out[i] = (*r)->element_count() ? (*r)->typed_data<T>() : nullptr;
  }
  const int64_t cs = rows_per_chunk(pool, s.B), chunks = (s.B + cs - 1) / cs;
  std::vector<Grads<T>> grads(chunks, Grads<T>(P, s.Up, U, Kp, Z));
  ffi::Error done = by_activation(activation, [&](auto a) {
    backward<T, decltype(a)::value>(
        s, ct.typed_data<T>(), x.typed_data<T>(), h0.typed_data<T>(), data_or_null<T>(c0),
        hs.typed_data<T>(), us.typed_data<T>(), ps.typed_data<T>(), data_or_null<T>(zs),
        data_or_null<T>(dts), data_or_null<uint8_t>(mask), wp2.data(), wh2.data(), wl2.data(),
        no_gate, last, out[0], out[1], out[2], out[8], out[10], grads, chunks, cs, pool);
  });
  if (done.failure()) return done;
  // The chunks' sums, in chunk order, unpadded: d_w_in (Z + U, I), d_w_h (U, H), d_b_in (Z + U),
  // d_w_heads (P, U), d_b_heads (P), d_w_lstm (Z, H).
  std::fill(out[3], out[3] + (Z + U) * I, T(0));
  std::fill(out[4], out[4] + U * H, T(0));
  std::fill(out[5], out[5] + Z + U, T(0));
  std::fill(out[6], out[6] + P * U, T(0));
  std::fill(out[7], out[7] + P, T(0));
  if (s.memory) std::fill(out[9], out[9] + Z * H, T(0));
  for (const Grads<T>& g : grads) {
    for (int64_t u = 0; u < U; ++u) {
      for (int64_t i = 0; i < I; ++i) out[3][(Z + u) * I + i] += g.w_z[u * Kp + i];
      for (int64_t k = 0; k < H; ++k) out[4][u * H + k] += g.w_z[u * Kp + I + k];
      out[5][Z + u] += g.b_in[u];
    }
    for (int64_t q = 0; q < P; ++q) {
      for (int64_t u = 0; u < U; ++u) out[6][q * U + u] += g.w_heads[q * s.Up + u];
      out[7][q] += g.b_heads[q];
    }
    for (int64_t q = 0; q < Z; ++q) {
      for (int64_t i = 0; i < I; ++i) out[3][q * I + i] += g.w_l[q * Kp + i];
      for (int64_t k = 0; k < H; ++k) out[9][q * H + k] += g.w_l[q * Kp + I + k];
      out[5][q] += g.b_l[q];
    }
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer c0,
                   ffi::AnyBuffer w_in, ffi::AnyBuffer b_in, ffi::AnyBuffer w_h,
                   ffi::AnyBuffer w_lstm, ffi::AnyBuffer w_heads, ffi::AnyBuffer b_heads,
                   ffi::AnyBuffer dts, ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> hs,
                   ffi::Result<ffi::AnyBuffer> us, ffi::Result<ffi::AnyBuffer> ps,
                   ffi::Result<ffi::AnyBuffer> zs, int64_t activation, bool no_gate, bool last) {
  return by_dtype(x.element_type(), "CfC", [&](auto zero) {
    return forward_impl<decltype(zero)>(&pool, x, h0, c0, w_in, b_in, w_h, w_lstm, w_heads,
                                        b_heads, dts, mask, hs, us, ps, zs, activation, no_gate,
                                        last);
  });
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::AnyBuffer ct, ffi::AnyBuffer x, ffi::AnyBuffer h0,
                    ffi::AnyBuffer c0, ffi::AnyBuffer hs, ffi::AnyBuffer us, ffi::AnyBuffer ps,
                    ffi::AnyBuffer zs, ffi::AnyBuffer dts, ffi::AnyBuffer mask,
                    ffi::AnyBuffer w_heads, ffi::AnyBuffer w_h, ffi::AnyBuffer w_lstm,
                    ffi::RemainingRets rets, int64_t activation, bool no_gate, bool last) {
  return by_dtype(x.element_type(), "CfC", [&](auto zero) {
    return backward_impl<decltype(zero)>(&pool, ct, x, h0, c0, hs, us, ps, zs, dts, mask, w_heads,
                                         w_h, w_lstm, rets, activation, no_gate, last);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LiquidjaxCfcForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // w_in
                                  .Arg<ffi::AnyBuffer>()  // b_in
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // w_lstm
                                  .Arg<ffi::AnyBuffer>()  // w_heads
                                  .Arg<ffi::AnyBuffer>()  // b_heads
                                  .Arg<ffi::AnyBuffer>()  // dts
                                  .Arg<ffi::AnyBuffer>()  // mask
                                  .Ret<ffi::AnyBuffer>()  // hs
                                  .Ret<ffi::AnyBuffer>()  // us
                                  .Ret<ffi::AnyBuffer>()  // ps
                                  .Ret<ffi::AnyBuffer>()  // zs
                                  .Attr<int64_t>("activation")
                                  .Attr<bool>("no_gate")
                                  .Attr<bool>("last"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LiquidjaxCfcBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // ct
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // hs
                                  .Arg<ffi::AnyBuffer>()  // us
                                  .Arg<ffi::AnyBuffer>()  // ps
                                  .Arg<ffi::AnyBuffer>()  // zs
                                  .Arg<ffi::AnyBuffer>()  // dts
                                  .Arg<ffi::AnyBuffer>()  // mask
                                  .Arg<ffi::AnyBuffer>()  // w_heads
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // w_lstm
                                  .RemainingRets()        // see backward_impl
                                  .Attr<int64_t>("activation")
                                  .Attr<bool>("no_gate")
                                  .Attr<bool>("last"));
