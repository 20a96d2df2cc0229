// The CfC's recurrence over a held-input sequence on CPU: the forward (states, and for training
// the backbone and head pre-activations) and the backward scan (the cotangents of those
// pre-activations), for a batch held batch-major and time-major, called from JAX through the
// XLA FFI (liquidjax/_native/__init__.py, cells/_cfc_sequence.py).
//
// The arithmetic is that of liquidjax/cells/_cfc_sequence.py (_scan with save, the scan in
// _cotangents): per step u = [x_t | h] W_in^T + b, p = act(u) W_heads^T + b_heads, h' = the
// gate of p's heads; backward dp = [dh]*k * coef, du = (dp W_heads) * act'(u),
// dh_prev = du W_h. Everything before and after the two scans (the local derivatives, every
// weight gradient as one product over time x batch) stays in JAX.
//
// Why a kernel: the batch's rows are independent through the whole sequence, so each worker (a
// pinned helper thread, common.h) runs every step of its own rows (no synchronisation per step,
// which XLA:CPU pays for every small product of its scan), with the weights packed once per call
// and held in cache, through a register-tiled product (kTileRows rows x kNV SIMD vectors).
//
// Arguments (row-major):
//   forward:  x (T,B,I) h0 (B,H) w_in (U,I) b_in (U) w_h (U,H) w_heads (P,U) b_heads (P)
//             dts (T,B) or (0) mask (T,B) uint8 or (0)
//             -> hs (T,B,H) or with `last` (1,B,H), us (T,B,U) or (0), ps (T,B,P) or (0)
//             P = 3H (unit steps: no dts, the time heads summed) or 4H
//   backward: ct (T,B,H) or with `last` (B,H), coef (T,B,P), dact (T,B,U), w_heads (P,U),
//             w_h (U,H), mask (T,B) uint8 or (0)  ->  dps (T,B,P), dus (T,B,U), dh0 (B,H)
#include <cstring>
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

// C[MR rows, kCols] = bias + A[MR, K] B[K, kCols] (bias null: zero); one register tile.
template <typename T, int MR>
inline void tile(int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                 const T* bias) {
  using V = typename Simd<T>::V;
  V acc[MR][kNV];
  for (int v = 0; v < kNV; ++v) {
    V b0 = V{};
    if (bias) std::memcpy(&b0, bias + v * kLanes<T>, sizeof(V));
    for (int r = 0; r < MR; ++r) acc[r][v] = b0;
  }
  for (int64_t k = 0; k < K; ++k) {
    V b[kNV];
    for (int v = 0; v < kNV; ++v) std::memcpy(&b[v], B + k * ldb + v * kLanes<T>, sizeof(V));
    for (int r = 0; r < MR; ++r) {
      const T a = A[r * lda + k];
      for (int v = 0; v < kNV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) std::memcpy(C + r * ldc + v * kLanes<T>, &acc[r][v], sizeof(V));
}

// C (M, N) = bias + A (M, K) B (K, N), B packed with row stride N; N and ldc multiples of
// kCols<T>, bias (if any) padded to N.
template <typename T>
void matmul(int64_t M, int64_t K, int64_t N, const T* A, int64_t lda, const T* B, T* C,
            int64_t ldc, const T* bias) {
  for (int64_t j = 0; j < N; j += kCols<T>) {
    const T* bj = B + j;
    const T* biasj = bias ? bias + j : nullptr;
    int64_t i = 0;
    for (; i + kTileRows <= M; i += kTileRows)
      tile<T, kTileRows>(K, A + i * lda, lda, bj, N, C + i * ldc + j, ldc, biasj);
    for (; i + 4 <= M; i += 4) tile<T, 4>(K, A + i * lda, lda, bj, N, C + i * ldc + j, ldc, biasj);
    for (; i < M; ++i) tile<T, 1>(K, A + i * lda, lda, bj, N, C + i * ldc + j, ldc, biasj);
  }
}

// The backbone activations, as liquidjax.cells._cfc.ACTIVATIONS (same order as
// liquidjax._native.CFC_ACTIVATIONS).
enum Activation : int64_t { kLecunTanh = 0, kSilu = 1, kRelu = 2, kTanh = 3, kGelu = 4 };

template <typename T, int64_t A>
inline T activate(T x) {
  if constexpr (A == kLecunTanh) return T(1.7159) * tanh_(T(0.666) * x);
  if constexpr (A == kSilu) return x * sigmoid_(x);
  if constexpr (A == kRelu) return x > T(0) ? x : T(0);
  if constexpr (A == kTanh) return tanh_(x);
  return x * (std::erf(x * T(0.70710678118654752440)) + T(1)) / T(2);  // kGelu (exact)
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

// Sizes and the per-call packed weights, shared read-only by the workers.
template <typename T>
struct Shape {
  int64_t T_, B, I, H, U, P, Up, Pp, Hp;
};

// Rows per chunk: the batch split evenly over the workers, in whole register tiles.
inline int64_t rows_per_chunk(ffi::ThreadPool* pool, int64_t B) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(workers_for(pool, B),
                                                                (B + kTileRows - 1) / kTileRows));
  return padded((B + chunks - 1) / chunks, kTileRows);
}

template <typename T, int64_t A>
void forward(const Shape<T>& s, const T* x, const T* h0, const T* win, const T* bin,
             const T* wp, const T* bp, const T* dts, const uint8_t* mask, bool no_gate,
             bool last, T* hs, T* us, T* ps, ffi::ThreadPool* pool) {
  const int64_t B = s.B, I = s.I, H = s.H, U = s.U, P = s.P, Up = s.Up, Pp = s.Pp;
  const int64_t Kin = I + H, cs = rows_per_chunk(pool, B), chunks = (B + cs - 1) / cs;
  auto body = [&](int, int64_t c) {
    const int64_t r0 = c * cs, L = std::min(cs, B - r0);
    std::vector<T> z(L * Kin), u(L * Up), a(L * Up), p(L * Pp), pre(H);
    for (int64_t r = 0; r < L; ++r) std::memcpy(&z[r * Kin + I], h0 + (r0 + r) * H, H * sizeof(T));
    for (int64_t t = 0; t < s.T_; ++t) {
      const int64_t row0 = t * B + r0;  // this chunk's first row in the (T, B, .) arrays
      for (int64_t r = 0; r < L; ++r)
        std::memcpy(&z[r * Kin], x + (row0 + r) * I, I * sizeof(T));
      matmul<T>(L, Kin, Up, z.data(), Kin, win, u.data(), Up, bin);
      for (int64_t e = 0; e < L * Up; ++e) a[e] = activate<T, A>(u[e]);
      matmul<T>(L, U, Pp, a.data(), Up, wp, p.data(), Pp, bp);
      for (int64_t r = 0; r < L; ++r) {
        if (us) std::memcpy(us + (row0 + r) * U, &u[r * Up], U * sizeof(T));
        if (ps) std::memcpy(ps + (row0 + r) * P, &p[r * Pp], P * sizeof(T));
        T* h = &z[r * Kin + I];
        if (!mask || mask[row0 + r]) gate(&p[r * Pp], dts ? dts[row0 + r] : T(0), dts, H, no_gate,
                                          pre.data(), h);
        if (!last) std::memcpy(hs + (row0 + r) * H, h, H * sizeof(T));
      }
    }
    if (last)
      for (int64_t r = 0; r < L; ++r)
        std::memcpy(hs + (r0 + r) * H, &z[r * Kin + I], H * sizeof(T));
  };
  parallel_chunks(nullptr, chunks, workers_for(pool, chunks), body);
}

template <typename T>
void backward(const Shape<T>& s, const T* ct, const T* coef, const T* dact, const T* wp2,
              const T* wh2, const uint8_t* mask, bool last, T* dps, T* dus, T* dh0,
              ffi::ThreadPool* pool) {
  const int64_t B = s.B, H = s.H, U = s.U, P = s.P, Up = s.Up, Hp = s.Hp, k = P / H;
  const int64_t cs = rows_per_chunk(pool, B), chunks = (B + cs - 1) / cs;
  auto body = [&](int, int64_t c) {
    const int64_t r0 = c * cs, L = std::min(cs, B - r0);
    std::vector<T> dh(L * H, T(0)), du(L * Up), dhp(L * Hp);
    for (int64_t t = s.T_ - 1; t >= 0; --t) {
      const int64_t row0 = t * B + r0;
      const T* ctt = last ? (t == s.T_ - 1 ? ct + r0 * H : nullptr) : ct + row0 * H;
      T* dp = dps + row0 * P;  // this step's rows of dps, contiguous
      for (int64_t r = 0; r < L; ++r) {
        T* dhr = &dh[r * H];
        if (ctt)
          for (int64_t j = 0; j < H; ++j) dhr[j] += ctt[r * H + j];
        const T* cf = coef + (row0 + r) * P;
        for (int64_t q = 0; q < k; ++q)
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) dp[r * P + q * H + j] = dhr[j] * cf[q * H + j];
      }
      matmul<T>(L, P, Up, dp, P, wp2, du.data(), Up, nullptr);
      for (int64_t r = 0; r < L; ++r) {
        const T* da = dact + (row0 + r) * U;
        T* dur = &du[r * Up];
#pragma omp simd
        for (int64_t j = 0; j < U; ++j) dur[j] *= da[j];
        std::memcpy(dus + (row0 + r) * U, dur, U * sizeof(T));
      }
      matmul<T>(L, U, Hp, du.data(), Up, wh2, dhp.data(), Hp, nullptr);
      for (int64_t r = 0; r < L; ++r)
        if (!mask || mask[row0 + r]) std::memcpy(&dh[r * H], &dhp[r * Hp], H * sizeof(T));
    }
    std::memcpy(dh0 + r0 * H, dh.data(), L * H * sizeof(T));
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

template <typename T>
ffi::Error forward_impl(ffi::ThreadPool* pool, ffi::AnyBuffer x, ffi::AnyBuffer h0,
                        ffi::AnyBuffer w_in, ffi::AnyBuffer b_in, ffi::AnyBuffer w_h,
                        ffi::AnyBuffer w_heads, ffi::AnyBuffer b_heads, ffi::AnyBuffer dts,
                        ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> hs,
                        ffi::Result<ffi::AnyBuffer> us, ffi::Result<ffi::AnyBuffer> ps,
                        int64_t activation, bool no_gate, bool last) {
  Shape<T> s{};
  s.T_ = x.dimensions()[0];
  s.B = x.dimensions()[1];
  s.I = x.dimensions()[2];
  s.H = h0.dimensions()[1];
  s.U = w_h.dimensions()[0];
  s.P = w_heads.dimensions()[0];
  s.Up = padded(s.U, kCols<T>);
  s.Pp = padded(s.P, kCols<T>);
  if (s.P != (dts.element_count() ? 4 : 3) * s.H)
    return ffi::Error::InvalidArgument("liquidjax CfC kernel: heads must be 3H (unit steps) or 4H");
  const int64_t Kin = s.I + s.H;
  std::vector<T> win(Kin * s.Up), bin(s.Up), wp(s.U * s.Pp), bp(s.Pp);
  pack(w_in.typed_data<T>(), s.I, s.U, s.Up, true, win.data());
  pack(w_h.typed_data<T>(), s.H, s.U, s.Up, true, win.data(), s.I);
  pack(b_in.typed_data<T>(), 1, s.U, s.Up, false, bin.data());
  pack(w_heads.typed_data<T>(), s.U, s.P, s.Pp, true, wp.data());
  pack(b_heads.typed_data<T>(), 1, s.P, s.Pp, false, bp.data());
  const uint8_t* m = mask.element_count() ? mask.typed_data<uint8_t>() : nullptr;
  T* us_data = us->element_count() ? us->typed_data<T>() : nullptr;
  T* ps_data = ps->element_count() ? ps->typed_data<T>() : nullptr;
  auto run = [&](auto f) {
    f(s, x.typed_data<T>(), h0.typed_data<T>(), win.data(), bin.data(), wp.data(), bp.data(),
      data_or_null<T>(dts), m, no_gate, last, hs->typed_data<T>(), us_data, ps_data, pool);
  };
  switch (activation) {
    case kLecunTanh: run(forward<T, kLecunTanh>); break;
    case kSilu: run(forward<T, kSilu>); break;
    case kRelu: run(forward<T, kRelu>); break;
    case kTanh: run(forward<T, kTanh>); break;
    case kGelu: run(forward<T, kGelu>); break;
    default: return ffi::Error::InvalidArgument("liquidjax CfC kernel: unknown activation");
  }
  return ffi::Error::Success();
}

template <typename T>
ffi::Error backward_impl(ffi::ThreadPool* pool, ffi::AnyBuffer ct, ffi::AnyBuffer coef,
                         ffi::AnyBuffer dact, ffi::AnyBuffer w_heads, ffi::AnyBuffer w_h,
                         ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> dps,
                         ffi::Result<ffi::AnyBuffer> dus, ffi::Result<ffi::AnyBuffer> dh0,
                         bool last) {
  Shape<T> s{};
  s.T_ = coef.dimensions()[0];
  s.B = coef.dimensions()[1];
  s.P = coef.dimensions()[2];
  s.U = w_h.dimensions()[0];
  s.H = w_h.dimensions()[1];
  s.Up = padded(s.U, kCols<T>);
  s.Hp = padded(s.H, kCols<T>);
  if (s.P % s.H != 0)
    return ffi::Error::InvalidArgument("liquidjax CfC kernel: heads must be a multiple of H");
  std::vector<T> wp2(s.P * s.Up), wh2(s.U * s.Hp);
  pack(w_heads.typed_data<T>(), s.P, s.U, s.Up, false, wp2.data());
  pack(w_h.typed_data<T>(), s.U, s.H, s.Hp, false, wh2.data());
  const uint8_t* m = mask.element_count() ? mask.typed_data<uint8_t>() : nullptr;
  backward<T>(s, ct.typed_data<T>(), coef.typed_data<T>(), dact.typed_data<T>(), wp2.data(),
              wh2.data(), m, last, dps->typed_data<T>(), dus->typed_data<T>(),
              dh0->typed_data<T>(), pool);
  return ffi::Error::Success();
}

ffi::Error wrong_dtype() {
  return ffi::Error::InvalidArgument("liquidjax CfC kernel: float32 or float64 only");
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer w_in,
                   ffi::AnyBuffer b_in, ffi::AnyBuffer w_h, ffi::AnyBuffer w_heads,
                   ffi::AnyBuffer b_heads, ffi::AnyBuffer dts, ffi::AnyBuffer mask,
                   ffi::Result<ffi::AnyBuffer> hs, ffi::Result<ffi::AnyBuffer> us,
                   ffi::Result<ffi::AnyBuffer> ps, int64_t activation, bool no_gate,
                   bool last) {
  switch (x.element_type()) {
    case ffi::DataType::F32:
      return forward_impl<float>(&pool, x, h0, w_in, b_in, w_h, w_heads, b_heads, dts, mask, hs,
                                 us, ps, activation, no_gate, last);
    case ffi::DataType::F64:
      return forward_impl<double>(&pool, x, h0, w_in, b_in, w_h, w_heads, b_heads, dts, mask, hs,
                                  us, ps, activation, no_gate, last);
    default: return wrong_dtype();
  }
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::AnyBuffer ct, ffi::AnyBuffer coef,
                    ffi::AnyBuffer dact, ffi::AnyBuffer w_heads, ffi::AnyBuffer w_h,
                    ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> dps,
                    ffi::Result<ffi::AnyBuffer> dus, ffi::Result<ffi::AnyBuffer> dh0, bool last) {
  switch (coef.element_type()) {
    case ffi::DataType::F32:
      return backward_impl<float>(&pool, ct, coef, dact, w_heads, w_h, mask, dps, dus, dh0, last);
    case ffi::DataType::F64:
      return backward_impl<double>(&pool, ct, coef, dact, w_heads, w_h, mask, dps, dus, dh0, last);
    default: return wrong_dtype();
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LiquidjaxCfcForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // w_in
                                  .Arg<ffi::AnyBuffer>()  // b_in
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // w_heads
                                  .Arg<ffi::AnyBuffer>()  // b_heads
                                  .Arg<ffi::AnyBuffer>()  // dts
                                  .Arg<ffi::AnyBuffer>()  // mask
                                  .Ret<ffi::AnyBuffer>()  // hs
                                  .Ret<ffi::AnyBuffer>()  // us
                                  .Ret<ffi::AnyBuffer>()  // ps
                                  .Attr<int64_t>("activation")
                                  .Attr<bool>("no_gate")
                                  .Attr<bool>("last"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LiquidjaxCfcBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // ct
                                  .Arg<ffi::AnyBuffer>()  // coef
                                  .Arg<ffi::AnyBuffer>()  // dact
                                  .Arg<ffi::AnyBuffer>()  // w_heads
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // mask
                                  .Ret<ffi::AnyBuffer>()  // dps
                                  .Ret<ffi::AnyBuffer>()  // dus
                                  .Ret<ffi::AnyBuffer>()  // dh0
                                  .Attr<bool>("last"));
