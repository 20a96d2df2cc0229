// The LTC's fused semi-implicit step on CPU: forward and backward for a batch held batch-minor,
// called from JAX through the XLA FFI (liquidjax/_native/__init__.py, cells/_ltc_batched.py).
//
// The arithmetic is that of liquidjax/cells/_ltc_sparse.py (_forward, _backward), on the same
// padded fan-in layout: slot (r, k) is the synapse pre[r, k] -> posts[r]; padding slots carry
// zero weight. Every synapse loop runs along the batch (contiguous, vectorised); the batch is
// split into chunks shared out over XLA's intra-op pool (common.h: parallel_chunks); the
// parameter gradients are summed per group of consecutive chunks, the groups' sums added in order
// at the end (the same bits whichever worker took which group).
//
// Arguments (row-major, batch last):
//   forward:  w sigma mu erev (P,K) | sw ssigma smu serev (Ps,Ks) | gleak vleak cm (N)
//             | pre (P,K) posts (P) spre (Ps,Ks) sposts (Ps) int32 | x (I,B) v0 (N,B) dt (B)
//             -> v (N,B), vs (U+1,N,B), dens (U,N,B)
//   backward: the 11 parameters, the 4 index arrays, x (I,B), dt (B), vs, dens, g (N,B)
//             -> the 11 parameter gradients (summed over the batch), dx (I,B), dv0 (N,B),
//                ddt (B)
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common.h"

namespace ffi = xla::ffi;

namespace {

using namespace liquidjax_native;

// One block of synapses in slot layout.
template <typename T>
struct Block {
  const T *w, *sigma, *mu, *erev;
  const int32_t *pre, *posts;
  int64_t rows, k;
};

template <typename T>
struct Params {
  Block<T> rec, sen;
  const T *gleak, *vleak, *cm;
  int64_t n, inputs;
};

// Slot arrays precomputed once per call for the forward's tanh form
// s = h + h tanh(a (u - mu)), h = w/2, a = sigma/2.
template <typename T>
struct TanhForm {
  std::vector<T> a, h, he, const_num, const_den;  // const_*: per neuron
  TanhForm(const Block<T>& b, int64_t n) : a(b.rows * b.k), h(b.rows * b.k), he(b.rows * b.k),
                                          const_num(n, T(0)), const_den(n, T(0)) {
    for (int64_t r = 0; r < b.rows; ++r) {
      T cn = 0, cd = 0;
      for (int64_t k = 0; k < b.k; ++k) {
        int64_t s = r * b.k + k;
        a[s] = T(0.5) * b.sigma[s];
        h[s] = T(0.5) * b.w[s];
        he[s] = h[s] * b.erev[s];
        cd += h[s];
        cn += he[s];
      }
      const_num[b.posts[r]] += cn;
      const_den[b.posts[r]] += cd;
    }
  }
};

// num[j] += Σ_slots he tanh(a (u[pre] - mu)), den[j] += Σ h tanh(...) over lanes [0, L) of a
// chunk; u, num, den point at the chunk (row stride `ld`).
template <typename T>
inline void tanh_sums(const Block<T>& b, const TanhForm<T>& f, const T* u, int64_t ld,
                      T* num, T* den, int64_t L) {
  T acc_n[kChunk], acc_d[kChunk];
  for (int64_t r = 0; r < b.rows; ++r) {
    std::fill(acc_n, acc_n + L, T(0));
    std::fill(acc_d, acc_d + L, T(0));
    for (int64_t k = 0; k < b.k; ++k) {
      const int64_t s = r * b.k + k;
      const T a = f.a[s], m = b.mu[s], h = f.h[s], he = f.he[s];
      const T* ui = u + b.pre[s] * ld;
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) {
        const T th = tanh_(a * (ui[l] - m));
        acc_n[l] += he * th;
        acc_d[l] += h * th;
      }
    }
    T* nj = num + b.posts[r] * ld;
    T* dj = den + b.posts[r] * ld;
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
      nj[l] += acc_n[l];
      dj[l] += acc_d[l];
    }
  }
}

template <typename T>
void forward(const Params<T>& p, const T* x, const T* v0, const T* dt, T* v, T* vs, T* dens,
             int64_t B, int64_t U, T eps, ffi::ThreadPool* pool) {
  const int64_t N = p.n;
  const TanhForm<T> fr(p.rec, N), fs(p.sen, N);
  const int64_t cs = chunk_size(pool, B), chunks = (B + cs - 1) / cs;
  auto body = [&](int, int64_t c) {
    const int64_t b0 = c * cs, L = std::min(cs, B - b0);
    // Per-chunk work arrays, row stride kChunk.
    std::vector<T> cmt(N * kChunk), bnum(N * kChunk, T(0)), bden(N * kChunk, T(0)),
        num(N * kChunk), dn(N * kChunk), cur(N * kChunk), xin(p.inputs * kChunk);
    for (int64_t i = 0; i < p.inputs; ++i)
      std::memcpy(&xin[i * kChunk], x + i * B + b0, L * sizeof(T));
    tanh_sums(p.sen, fs, xin.data(), kChunk, bnum.data(), bden.data(), L);
    for (int64_t j = 0; j < N; ++j) {
      const T gv = p.gleak[j] * p.vleak[j] + fs.const_num[j] + fr.const_num[j];
      for (int64_t l = 0; l < L; ++l) {
        const T ct = p.cm[j] / (dt[b0 + l] / T(U));
        cmt[j * kChunk + l] = ct;
        bnum[j * kChunk + l] += gv;
        bden[j * kChunk + l] += ct + p.gleak[j] + fs.const_den[j] + fr.const_den[j] + eps;
      }
      std::memcpy(&cur[j * kChunk], v0 + j * B + b0, L * sizeof(T));
      if (vs) std::memcpy(vs + j * B + b0, v0 + j * B + b0, L * sizeof(T));
    }
    for (int64_t u = 0; u < U; ++u) {
      for (int64_t j = 0; j < N; ++j)
        for (int64_t l = 0; l < L; ++l) {
          num[j * kChunk + l] = cmt[j * kChunk + l] * cur[j * kChunk + l] + bnum[j * kChunk + l];
          dn[j * kChunk + l] = bden[j * kChunk + l];
        }
      tanh_sums(p.rec, fr, cur.data(), kChunk, num.data(), dn.data(), L);
      for (int64_t j = 0; j < N; ++j) {
        for (int64_t l = 0; l < L; ++l) cur[j * kChunk + l] = num[j * kChunk + l] / dn[j * kChunk + l];
        if (vs) std::memcpy(vs + ((u + 1) * N + j) * B + b0, &cur[j * kChunk], L * sizeof(T));
        if (dens) std::memcpy(dens + (u * N + j) * B + b0, &dn[j * kChunk], L * sizeof(T));
      }
    }
    for (int64_t j = 0; j < N; ++j) std::memcpy(v + j * B + b0, &cur[j * kChunk], L * sizeof(T));
  };
  parallel_chunks(pool, chunks, workers_for(pool, chunks), body);
}

// Gradients of one synapse block given the per-neuron cotangents gn (d/d numerator) and gd
// (d/d denominator) over a chunk: accumulates the slot gradients (summed over lanes) and the
// cotangent of the pre-synaptic values `u` into du.
template <typename T, int64_t FixedL>
inline void block_backward_impl(const Block<T>& b, const T* u, int64_t ld, const T* gn,
                                const T* gd, T* du, T* d_w, T* d_sigma, T* d_mu, T* d_erev,
                                int64_t dynamic_l) {
  const int64_t L = FixedL > 0 ? FixedL : dynamic_l;
  for (int64_t r = 0; r < b.rows; ++r) {
    const int64_t j = b.posts[r];
    const T* gnj = gn + j * ld;
    const T* gdj = gd + j * ld;
    for (int64_t k = 0; k < b.k; ++k) {
      const int64_t s = r * b.k + k;
      const T w = b.w[s], sig = b.sigma[s], m = b.mu[s], e = b.erev[s];
      const T* ui = u + b.pre[s] * ld;
      T* dui = du + b.pre[s] * ld;
      // The four parameter gradients are combinations of four lane sums.
      T a_gn = 0, a_gd = 0, a_dzu = 0, a_dz = 0;
#pragma omp simd reduction(+ : a_gn, a_gd, a_dzu, a_dz)
      for (int64_t l = 0; l < L; ++l) {
        const T sg = sigmoid_(sig * (ui[l] - m));
        const T ds = gnj[l] * e + gdj[l];
        const T dz = ds * w * sg * (T(1) - sg);
        dui[l] += dz * sig;
        a_gn += gnj[l] * sg;
        a_gd += gdj[l] * sg;
        a_dzu += dz * ui[l];
        a_dz += dz;
      }
      d_w[s] += e * a_gn + a_gd;           // Σ ds sg
      d_sigma[s] += a_dzu - m * a_dz;      // Σ dz (u − μ)
      d_mu[s] -= a_dz * sig;               // −Σ dz σ
      d_erev[s] += w * a_gn;               // Σ gn w sg
    }
  }
}

// Gradients of one synapse block given the per-neuron cotangents gn (d/d numerator) and gd
// (d/d denominator) over a chunk: accumulates the slot gradients (summed over lanes) and the
// cotangent of the pre-synaptic values `u` into du. Full chunks get a fixed trip count.
template <typename T>
inline void block_backward(const Block<T>& b, const T* u, int64_t ld, const T* gn, const T* gd,
                           T* du, T* d_w, T* d_sigma, T* d_mu, T* d_erev, int64_t L) {
  if (L == 64)
    block_backward_impl<T, 64>(b, u, ld, gn, gd, du, d_w, d_sigma, d_mu, d_erev, L);
  else if (L == 32)
    block_backward_impl<T, 32>(b, u, ld, gn, gd, du, d_w, d_sigma, d_mu, d_erev, L);
  else if (L == 16)
    block_backward_impl<T, 16>(b, u, ld, gn, gd, du, d_w, d_sigma, d_mu, d_erev, L);
  else
    block_backward_impl<T, 0>(b, u, ld, gn, gd, du, d_w, d_sigma, d_mu, d_erev, L);
}

template <typename T>
struct Grads {
  std::vector<T> w, sigma, mu, erev, sw, ssigma, smu, serev, gleak, vleak, cm;
  Grads(const Params<T>& p)
      : w(p.rec.rows * p.rec.k, T(0)), sigma(w.size(), T(0)), mu(w.size(), T(0)),
        erev(w.size(), T(0)), sw(p.sen.rows * p.sen.k, T(0)), ssigma(sw.size(), T(0)),
        smu(sw.size(), T(0)), serev(sw.size(), T(0)), gleak(p.n, T(0)), vleak(p.n, T(0)),
        cm(p.n, T(0)) {}
  std::vector<T>* all() { return &w; }
};

template <typename T>
void backward(const Params<T>& p, const T* x, const T* dt, const T* vs, const T* dens,
              const T* g, T* const outs[11], T* dx, T* dv0, T* ddt, int64_t B, int64_t U,
              ffi::ThreadPool* pool) {
  const int64_t N = p.n, I = p.inputs;
  const int64_t cs = chunk_size(pool, B), chunks = (B + cs - 1) / cs;
  // The chunks in groups of consecutive chunks, each group summing its own parameter gradients
  // in chunk order, the groups' sums added in group order at the end: the same result whichever
  // worker takes which group (per worker, it depended on that from one call to the next). A
  // few groups per worker keep the load balanced.
  const int nthreads = workers_for(pool, chunks);
  const int64_t groups = std::min<int64_t>(chunks, 4 * nthreads);
  std::vector<Grads<T>> partial;
  partial.reserve(groups);
  for (int64_t t = 0; t < groups; ++t) partial.emplace_back(p);
  auto chunk_body = [&](Grads<T>& G, int64_t c) {
    std::vector<T> cmt(N * kChunk), gc(N * kChunk), gprev(N * kChunk), gn(N * kChunk),
        gd(N * kChunk), dnum(N * kChunk), dden(N * kChunk), dcmt(N * kChunk),
        v(N * kChunk), xin(I * kChunk), dxc(I * kChunk);
    {
      const int64_t b0 = c * cs, L = std::min(cs, B - b0);
      for (int64_t j = 0; j < N; ++j) {
        for (int64_t l = 0; l < L; ++l) {
          cmt[j * kChunk + l] = p.cm[j] / (dt[b0 + l] / T(U));
          dnum[j * kChunk + l] = dden[j * kChunk + l] = dcmt[j * kChunk + l] = T(0);
        }
        std::memcpy(&gc[j * kChunk], g + j * B + b0, L * sizeof(T));
      }
      for (int64_t u = U - 1; u >= 0; --u) {
        for (int64_t j = 0; j < N; ++j) {
          const T* vj = vs + (u * N + j) * B + b0;
          const T* vnj = vs + ((u + 1) * N + j) * B + b0;
          const T* dj = dens + (u * N + j) * B + b0;
          for (int64_t l = 0; l < L; ++l) {
            const int64_t q = j * kChunk + l;
            v[q] = vj[l];
            gn[q] = gc[q] / dj[l];
            gd[q] = -gn[q] * vnj[l];
            gprev[q] = gn[q] * cmt[q];
            dnum[q] += gn[q];
            dden[q] += gd[q];
            dcmt[q] += gn[q] * v[q] + gd[q];
          }
        }
        block_backward(p.rec, v.data(), kChunk, gn.data(), gd.data(), gprev.data(),
                       G.w.data(), G.sigma.data(), G.mu.data(), G.erev.data(), L);
        gc.swap(gprev);
      }
      // Sensory synapses: the summed numerator / denominator cotangents.
      for (int64_t i = 0; i < I; ++i) {
        std::memcpy(&xin[i * kChunk], x + i * B + b0, L * sizeof(T));
        std::fill(&dxc[i * kChunk], &dxc[i * kChunk] + L, T(0));
      }
      block_backward(p.sen, xin.data(), kChunk, dnum.data(), dden.data(), dxc.data(),
                     G.sw.data(), G.ssigma.data(), G.smu.data(), G.serev.data(), L);
      for (int64_t i = 0; i < I; ++i)
        std::memcpy(dx + i * B + b0, &dxc[i * kChunk], L * sizeof(T));
      for (int64_t j = 0; j < N; ++j) {
        std::memcpy(dv0 + j * B + b0, &gc[j * kChunk], L * sizeof(T));
        T agl = 0, avl = 0, acm = 0;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t q = j * kChunk + l;
          agl += dnum[q] * p.vleak[j] + dden[q];
          avl += dnum[q] * p.gleak[j];
          acm += dcmt[q] * (T(U) / dt[b0 + l]);
        }
        G.gleak[j] += agl;
        G.vleak[j] += avl;
        G.cm[j] += acm;
      }
      for (int64_t l = 0; l < L; ++l) {
        T a = 0;
        for (int64_t j = 0; j < N; ++j) a += dcmt[j * kChunk + l] * cmt[j * kChunk + l];
        ddt[b0 + l] = -a / dt[b0 + l];
      }
    }
  };
  auto body = [&](int, int64_t group) {
    for (int64_t c = group * chunks / groups; c < (group + 1) * chunks / groups; ++c)
      chunk_body(partial[group], c);
  };
  parallel_chunks(pool, groups, nthreads, body);
  for (int a = 0; a < 11; ++a) {
    const std::vector<T>& first = partial[0].all()[a];
    std::copy(first.begin(), first.end(), outs[a]);
    for (int64_t t = 1; t < groups; ++t) {
      const std::vector<T>& more = partial[t].all()[a];
      for (size_t s = 0; s < more.size(); ++s) outs[a][s] += more[s];
    }
  }
}

template <typename T>
ffi::ErrorOr<Params<T>> read_params(const ffi::RemainingArgs& args) {
  std::vector<ffi::AnyBuffer> b;
  for (size_t i = 0; i < 15; ++i) {
    auto a = args.get<ffi::AnyBuffer>(i);
    if (!a.has_value()) return ffi::Unexpected(a.error());
    b.push_back(*a);
  }
  auto data = [&](int i) { return b[i].typed_data<T>(); };
  auto idx = [&](int i) { return b[i].typed_data<int32_t>(); };
  auto dims = b[0].dimensions();
  auto sdims = b[4].dimensions();
  Params<T> p;
  p.rec = Block<T>{data(0), data(1), data(2), data(3), idx(11), idx(12), dims[0], dims[1]};
  p.sen = Block<T>{data(4), data(5), data(6), data(7), idx(13), idx(14), sdims[0], sdims[1]};
  p.gleak = data(8);
  p.vleak = data(9);
  p.cm = data(10);
  p.n = b[8].dimensions()[0];
  return p;
}

template <typename T>
ffi::Error forward_impl(ffi::ThreadPool* pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                        int64_t unfolds, double epsilon) {
  auto pp = read_params<T>(args);
  if (!pp.has_value()) return pp.error();
  Params<T> p = *pp;
  auto x = *args.get<ffi::AnyBuffer>(15);
  auto v0 = *args.get<ffi::AnyBuffer>(16);
  auto dt = *args.get<ffi::AnyBuffer>(17);
  p.inputs = x.dimensions()[0];
  const int64_t B = v0.dimensions()[1];
  auto v = *rets.get<ffi::AnyBuffer>(0);
  auto vs = *rets.get<ffi::AnyBuffer>(1);
  auto dens = *rets.get<ffi::AnyBuffer>(2);
  // Without AD the caller asks for no residuals: zero-sized vs / dens, nothing written.
  T* vs_data = vs->element_count() ? vs->typed_data<T>() : nullptr;
  T* dens_data = dens->element_count() ? dens->typed_data<T>() : nullptr;
  forward<T>(p, x.typed_data<T>(), v0.typed_data<T>(), dt.typed_data<T>(), v->typed_data<T>(),
             vs_data, dens_data, B, unfolds, T(epsilon), pool);
  return ffi::Error::Success();
}

template <typename T>
ffi::Error backward_impl(ffi::ThreadPool* pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                         int64_t unfolds) {
  auto pp = read_params<T>(args);
  if (!pp.has_value()) return pp.error();
  Params<T> p = *pp;
  auto x = *args.get<ffi::AnyBuffer>(15);
  auto dt = *args.get<ffi::AnyBuffer>(16);
  auto vs = *args.get<ffi::AnyBuffer>(17);
  auto dens = *args.get<ffi::AnyBuffer>(18);
  auto g = *args.get<ffi::AnyBuffer>(19);
  p.inputs = x.dimensions()[0];
  const int64_t B = g.dimensions()[1];
  T* outs[11];
  for (int a = 0; a < 11; ++a) outs[a] = (*rets.get<ffi::AnyBuffer>(a))->typed_data<T>();
  backward<T>(p, x.typed_data<T>(), dt.typed_data<T>(), vs.typed_data<T>(),
              dens.typed_data<T>(), g.typed_data<T>(), outs,
              (*rets.get<ffi::AnyBuffer>(11))->typed_data<T>(),
              (*rets.get<ffi::AnyBuffer>(12))->typed_data<T>(),
              (*rets.get<ffi::AnyBuffer>(13))->typed_data<T>(), B, unfolds, pool);
  return ffi::Error::Success();
}

// Runs run(T{}) for the arguments' float type T.
template <typename F>
ffi::Error by_dtype(const ffi::RemainingArgs& args, F&& run) {
  auto first = args.get<ffi::AnyBuffer>(0);
  if (!first.has_value()) return first.error();
  return liquidjax_native::by_dtype(first->element_type(), "LTC", run);
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                   int64_t unfolds, double epsilon) {
  return by_dtype(args, [&](auto zero) {
    return forward_impl<decltype(zero)>(&pool, args, rets, unfolds, epsilon);
  });
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                    int64_t unfolds, double /*epsilon: in the stored denominators*/) {
  return by_dtype(args, [&](auto zero) {
    return backward_impl<decltype(zero)>(&pool, args, rets, unfolds);
  });
}

// Both handlers: XLA's thread pool, the arrays, and the two attributes.
auto binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .RemainingArgs()
      .RemainingRets()
      .Attr<int64_t>("unfolds")
      .Attr<double>("epsilon");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LiquidjaxLtcForward, Forward, binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LiquidjaxLtcBackward, Backward, binding());
