// Fused self-attention for XLA:CPU (an XLA FFI custom call): softmax(q k^T * scale + bias) v and its
// gradient, one (batch, head) at a time, eight query rows at a time, so that a row block's logits
// (8 x L floats) stay in the L1/L2 cache instead of XLA's [B, H, L, L] round trips through memory.
// The backward reads the probabilities where the caller kept them (the forward writes them, [B, H, L, L]),
// else recomputes them from the saved log-sum-exp (as FlashAttention does).
//
// Built on first use by monl/models/cpu_kernels.py (g++ -O3 -march=native); GCC vector extensions of
// the host's width (cpu_kernels.h) compile to AVX-512, AVX2, SSE or NEON.
//
// Shapes (float32, row-major): qkv, dqkv [B, L, 3, H, K] (q, k, v packed as one projection writes them, so
// that no head transposes are needed around the call); out, dout [B, L, H, K]; lse [B, H, L]; probs
// [B, H, L, L] or empty (not kept); bias, dbias [H, L, L] (the "Bias" handlers). Work items (one per batch
// and head) run on XLA's intra-op thread pool.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "cpu_kernels.h"

namespace ffi = xla::ffi;
using monl::in_register;
using monl::load;
using monl::parallel_for;
using monl::splat;
using monl::store;
using monl::TV;
using monl::vf;
using monl::vi;
using monl::W;

namespace {

constexpr int R = monl::TR;  // query rows per block (a register tile's rows)
constexpr int RB = 32; // query rows per backward block: dK, dV are read and written once per RB rows

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }
inline float hsum(vf v) {
  float t = 0.0f;
  for (int i = 0; i < W; ++i) t += v[i];
  return t;
}

// exp on a vector: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6 polynomial (rel. error < 2e-7).
// AVX-512 rounds n in one instruction and scales by 2^n in another (vscalefps, which also underflows to 0
// and overflows to inf): 12 instructions instead of 20.
inline vf vexp(vf x) {
#if defined(__AVX512F__)
  x = x < splat(-104.0f) ? splat(-104.0f) : x;  // exp(-104) is 0 in float32; -inf would give NaN below
  vf n = (vf)_mm512_roundscale_ps((__m512)(x * 1.44269504088896341f),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  vf n = x * 1.44269504088896341f;
  vi ni = __builtin_convertvector(n + (vf)(n >= 0 ? splat(0.5f) : splat(-0.5f)), vi);
  n = __builtin_convertvector(ni, vf);
#endif
  vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf p = splat(1.0f / 720) * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
#if defined(__AVX512F__)
  return (vf)_mm512_scalef_ps((__m512)p, (__m512)n);
#else
  vi bits = (ni + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(vf));
  return p * scale;
#endif
}

// Per-thread scratch for one (batch, head): padded copies and transposes.
struct Head {
  // Lp: keys padded to W; Kp: head dim padded to W; Lq: rows padded to RB; Lt: the transposes' row stride,
  // Lp plus a cache line, so that a column of them (Lp a multiple of 2 KiB apart) does not fall into two
  // L1 sets (AVX2 -5 %)
  int L, K, Lp, Kp, Lq, Lt;
  std::vector<float> q, kt, krow, vt, vrow, o, d;
  Head(int L_, int K_)
      : L(L_), K(K_), Lp(round_up(L_, W)), Kp(round_up(K_, W)), Lq(round_up(L_, RB)),
        Lt(Lp + 64 / int(sizeof(float))) {}

  // rows [L, K] (row i at src + i * stride) -> [Lr, Kp] zero padded
  static void rows(const float* src, int64_t stride, int L, int K, int Lr, int Kp, std::vector<float>& dst) {
    dst.assign(size_t(Lr) * Kp, 0.0f);
    for (int i = 0; i < L; ++i) std::memcpy(&dst[size_t(i) * Kp], src + i * stride, K * sizeof(float));
  }
  // rows [L, K] (row i at src + i * stride) -> [Kp, Lt] zero padded. In blocks of W rows, so that each
  // destination row is written a cache line at a time.
  static void cols(const float* src, int64_t stride, int L, int K, int Lt, int Kp, std::vector<float>& dst) {
    dst.assign(size_t(Kp) * Lt, 0.0f);
    for (int i0 = 0; i0 < L; i0 += W) {
      const int n = std::min(W, L - i0);
      for (int c = 0; c < K; ++c) {
        float* d = &dst[size_t(c) * Lt + i0];
        for (int i = 0; i < n; ++i) d[i] = src[(i0 + i) * stride + c];
      }
    }
  }
};

// s[r, j] = sum_c a[r, c] * bt[c, j] for R rows of a ([., Kp]) and all Lp columns of bt ([Kp, Lt]).
void rows_times_cols(const float* a, const float* bt, int Kp, int Lp, int Lt, float* s) {
  int j = 0;
  for (; j + TV * W <= Lp; j += TV * W) {
    vf acc[R][TV] = {};
    for (int c = 0; c < Kp; ++c) {
      vf b[TV];
      for (int v = 0; v < TV; ++v) in_register(b[v] = load(bt + size_t(c) * Lt + j + v * W));
      for (int r = 0; r < R; ++r) {
        vf x = splat(a[size_t(r) * Kp + c]);
        for (int v = 0; v < TV; ++v) acc[r][v] += x * b[v];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < TV; ++v) store(s + size_t(r) * Lp + j + v * W, acc[r][v]);
  }
  for (; j < Lp; j += W) {
    vf acc[R] = {};
    for (int c = 0; c < Kp; ++c) {
      vf b0 = load(bt + size_t(c) * Lt + j);
      for (int r = 0; r < R; ++r) acc[r] += splat(a[size_t(r) * Kp + c]) * b0;
    }
    for (int r = 0; r < R; ++r) store(s + size_t(r) * Lp + j, acc[r]);
  }
}

// The products use register tiles of R rows x 2 vectors (cpu_kernels.h), in which every loaded vector
// feeds R FMAs and every broadcast 2: on AVX-512 (R = 8) one load per 1.6 FMAs keeps them FMA-bound.
// (Tiles of 4 x 4, each vector feeding 4 FMAs as a memory operand, ran at half that rate on AVX-512:
// loads rather than FMAs were the limit.)

// o[r, c0 : c0 + NV W] = sum_j p[r, j] * b[j, c0 : ...] for R rows of p ([., Lp], first L columns).
// NV is a template argument so that the accumulators stay in registers.
template <int NV>
void rows_times_rows_part(const float* p, const float* b, int L, int Lp, int Kp, int c0, float* o) {
  vf acc[R][NV] = {};
  for (int j = 0; j < L; ++j) {
    vf bv[NV];
    for (int v = 0; v < NV; ++v) in_register(bv[v] = load(b + size_t(j) * Kp + c0 + v * W));
    for (int r = 0; r < R; ++r) {
      vf x = splat(p[size_t(r) * Lp + j]);
      for (int v = 0; v < NV; ++v) acc[r][v] += x * bv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) store(o + size_t(r) * Kp + c0 + v * W, acc[r][v]);
}

// o = p b for R rows of p ([., Lp], first L columns) and b [Lp, Kp]: o [R, Kp].
void rows_times_rows(const float* p, const float* b, int L, int Lp, int Kp, float* o) {
  int c0 = 0;
  for (; c0 + TV * W <= Kp; c0 += TV * W) rows_times_rows_part<TV>(p, b, L, Lp, Kp, c0, o);
  if (c0 < Kp) rows_times_rows_part<1>(p, b, L, Lp, Kp, c0, o);
}

// acc[j, c0 : c0 + NV W] += sum_r g[r, j] * a[r, c0 : ...] for NJ rows j from j0.
template <int NV, int NJ>
inline void cols_times_rows_part(const float* g, const float* a, int rows, int Lp, int Kp, int c0, int j0,
                                 float* acc) {
  vf t[NJ][NV];
  for (int j = 0; j < NJ; ++j)
    for (int v = 0; v < NV; ++v) t[j][v] = load(acc + size_t(j0 + j) * Kp + c0 + v * W);
  for (int r = 0; r < rows; ++r) {
    vf av[NV];
    for (int v = 0; v < NV; ++v) in_register(av[v] = load(a + size_t(r) * Kp + c0 + v * W));
    for (int j = 0; j < NJ; ++j) {
      vf x = splat(g[size_t(r) * Lp + j0 + j]);
      for (int v = 0; v < NV; ++v) t[j][v] += x * av[v];
    }
  }
  for (int j = 0; j < NJ; ++j)
    for (int v = 0; v < NV; ++v) store(acc + size_t(j0 + j) * Kp + c0 + v * W, t[j][v]);
}

template <int NV>
void cols_times_rows_cols(const float* g, const float* a, int rows, int L, int Lp, int Kp, int c0, float* acc) {
  int j0 = 0;
  for (; j0 + R <= L; j0 += R) cols_times_rows_part<NV, R>(g, a, rows, Lp, Kp, c0, j0, acc);
  for (; j0 < L; ++j0) cols_times_rows_part<NV, 1>(g, a, rows, Lp, Kp, c0, j0, acc);
}

// acc[j, :] += sum_r g[r, j] * a[r, :] for the first `rows` rows; g [., Lp], a [., Kp], acc [Lp, Kp].
void cols_times_rows_acc(const float* g, const float* a, int rows, int L, int Lp, int Kp, float* acc) {
  int c0 = 0;
  for (; c0 + TV * W <= Kp; c0 += TV * W) cols_times_rows_cols<TV>(g, a, rows, L, Lp, Kp, c0, acc);
  if (c0 < Kp) cols_times_rows_cols<1>(g, a, rows, L, Lp, Kp, c0, acc);
}

// The largest of row[0 : L].
float row_max(const float* row, int L) {
  vf m = splat(-INFINITY);
  int j = 0;
  for (; j + W <= L; j += W) {
    vf x = load(row + j);
    m = x > m ? x : m;
  }
  float best = -INFINITY;
  for (int v = 0; v < W; ++v) best = std::max(best, m[v]);
  for (; j < L; ++j) best = std::max(best, row[j]);
  return best;
}

// logits of R rows starting at i0: s = scale * q k^T (+ bias[h]); columns >= L are never read.
void logits(const Head& hd, int i0, float scale, const float* bias, float* s) {
  rows_times_cols(&hd.q[size_t(i0) * hd.Kp], hd.kt.data(), hd.Kp, hd.Lp, hd.Lt, s);
  for (int r = 0; r < R; ++r) {
    float* row = s + size_t(r) * hd.Lp;
    const float* b = (bias && i0 + r < hd.L) ? bias + size_t(i0 + r) * hd.L : nullptr;
    for (int j = 0; j < hd.L; ++j) row[j] = row[j] * scale + (b ? b[j] : 0.0f);
  }
}

// p = exp(s - m) over the first L columns, zero beyond; returns the row sum.
float exp_row(float* row, int L, int Lp, float m) {
  vf sum = {};
  int j = 0;
  for (; j + W <= L; j += W) {
    vf e = vexp(load(row + j) - m);
    store(row + j, e);
    sum += e;
  }
  float total = hsum(sum);
  for (; j < L; ++j) total += row[j] = std::exp(row[j] - m);
  for (; j < Lp; ++j) row[j] = 0.0f;
  return total;
}

// dst[0 : L] = row[0 : L] * c. On AVX with dst aligned, non-temporal stores: the kept probabilities
// ([B, H, L, L], far beyond the caches) are read back only by the backward, so they skip the read for
// ownership and the caches (forward -3 % on AVX-512). The caller fences (`store_fence`) before another
// thread reads.
inline void scale_row(const float* row, int L, float c, float* dst) {
  int j = 0;
#if defined(__AVX512F__)
  if (reinterpret_cast<uintptr_t>(dst) % 64 == 0)
    for (; j + W <= L; j += W) _mm512_stream_ps(dst + j, (__m512)(load(row + j) * c));
#elif defined(__AVX__)
  if (reinterpret_cast<uintptr_t>(dst) % 32 == 0)
    for (; j + W <= L; j += W) _mm256_stream_ps(dst + j, (__m256)(load(row + j) * c));
#endif
  for (; j + W <= L; j += W) store(dst + j, load(row + j) * c);
  for (; j < L; ++j) dst[j] = row[j] * c;
}

// Orders scale_row's non-temporal stores before the stores that follow (the work item's completion).
inline void store_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

// One (batch, head): q, k, v, dq, dk, dv rows are `qs` floats apart (3 H K in the packed [B, L, 3, H, K]),
// out and dout rows `os` apart (H K in [B, L, H, K]); lse [L]; bias [L, L] or null.
struct HeadArgs {
  const float *q, *k, *v;
  int64_t qs;
  const float* bias;
  float scale;
};

// probs (may be null): the normalised probabilities [L, L] are written there, for the backward to read.
void forward_head(Head& hd, const HeadArgs& a, float* out, int64_t os, float* lse, float* probs) {
  const int L = hd.L, K = hd.K, Lp = hd.Lp, Kp = hd.Kp;
  Head::rows(a.q, a.qs, L, K, hd.Lq, Kp, hd.q);
  Head::cols(a.k, a.qs, L, K, hd.Lt, Kp, hd.kt);
  Head::rows(a.v, a.qs, L, K, Lp, Kp, hd.vrow);
  std::vector<float> s(size_t(R) * Lp), o(size_t(R) * Kp);
  for (int i0 = 0; i0 < L; i0 += R) {
    logits(hd, i0, a.scale, a.bias, s.data());
    float inv[R];
    for (int r = 0; r < R; ++r) {
      float* row = &s[size_t(r) * Lp];
      float m = row_max(row, L);
      float sum = exp_row(row, L, Lp, m);
      inv[r] = 1.0f / sum;
      if (i0 + r < L) lse[i0 + r] = m + std::log(sum);
      if (probs && i0 + r < L) scale_row(row, L, inv[r], probs + size_t(i0 + r) * L);
    }
    rows_times_rows(s.data(), hd.vrow.data(), L, Lp, Kp, o.data());
    for (int r = 0; r < R && i0 + r < L; ++r)
      for (int c = 0; c < K; ++c) out[(i0 + r) * os + c] = o[size_t(r) * Kp + c] * inv[r];
  }
  if (probs) store_fence();
}

// dq, dk, dv are written (rows `qs` apart); dbias (may be null) is accumulated (+=).
void backward_head(Head& hd, const HeadArgs& a, const float* out, const float* dout, int64_t os, const float* lse,
                   const float* probs, float* dq, float* dk, float* dv, float* dbias) {
  const int L = hd.L, K = hd.K, Lp = hd.Lp, Kp = hd.Kp;
  const float scale = a.scale;
  Head::rows(a.q, a.qs, L, K, hd.Lq, Kp, hd.q);
  if (!probs) Head::cols(a.k, a.qs, L, K, hd.Lt, Kp, hd.kt);  // for the logits
  Head::rows(a.k, a.qs, L, K, Lp, Kp, hd.krow);
  Head::cols(a.v, a.qs, L, K, hd.Lt, Kp, hd.vt);
  Head::rows(dout, os, L, K, hd.Lq, Kp, hd.o);  // dO, padded
  std::vector<float> delta(hd.Lq, 0.0f);       // rowsum(dO * O)
  for (int i = 0; i < L; ++i) {
    const float *d_o = &hd.o[size_t(i) * Kp], *o = out + i * os;
    vf acc = {};
    int c = 0;
    for (; c + W <= K; c += W) acc += load(d_o + c) * load(o + c);
    float t = hsum(acc);
    for (; c < K; ++c) t += d_o[c] * o[c];
    delta[i] = t;
  }
  std::vector<float> p(size_t(RB) * Lp), dp(size_t(RB) * Lp), g(size_t(RB) * Kp);
  std::vector<float> dk_acc(size_t(Lp) * Kp, 0.0f), dv_acc(size_t(Lp) * Kp, 0.0f);
  for (int i0 = 0; i0 < L; i0 += RB) {
    const int rows = std::min(RB, L - i0);
    for (int s0 = 0; s0 < RB; s0 += R) {
      if (!probs) logits(hd, i0 + s0, scale, a.bias, &p[size_t(s0) * Lp]);
      // dP = dO V^T
      rows_times_cols(&hd.o[size_t(i0 + s0) * Kp], hd.vt.data(), Kp, Lp, hd.Lt, &dp[size_t(s0) * Lp]);
    }
    // P: the kept rows in place when they need no padding, else padded in p (recomputed or copied).
    const float* pb = p.data();
    if (probs && L == Lp && rows == RB) {
      pb = probs + size_t(i0) * L;
    } else {
      for (int r = 0; r < RB; ++r) {
        float* row = &p[size_t(r) * Lp];
        if (r < rows && probs) {
          std::memcpy(row, probs + size_t(i0 + r) * L, L * sizeof(float));
          std::fill(row + L, row + Lp, 0.0f);
        } else if (r < rows) {
          exp_row(row, L, Lp, lse[i0 + r]);
        } else {
          std::fill(row, row + Lp, 0.0f);
        }
      }
    }
    for (int r = 0; r < RB; ++r) {  // dS = P (dP - delta), into dp; padded rows are 0 since P is
      const float* pr = pb + size_t(r) * Lp;
      float* dr = &dp[size_t(r) * Lp];
      const float dl = delta[i0 + r];
      for (int j = 0; j < L; ++j) dr[j] = pr[j] * (dr[j] - dl);
      for (int j = L; j < Lp; ++j) dr[j] = 0.0f;
      if (dbias && r < rows) {
        float* db = dbias + size_t(i0 + r) * L;
        for (int j = 0; j < L; ++j) db[j] += dr[j];
      }
    }
    // dV += P^T dO, after dS: that pass streams P in from memory row by row, so that these column reads
    // find it in the cache (backward -4 %).
    cols_times_rows_acc(pb, &hd.o[size_t(i0) * Kp], rows, L, Lp, Kp, dv_acc.data());
    for (int s0 = 0; s0 < RB; s0 += R)  // dQ = dS K
      rows_times_rows(&dp[size_t(s0) * Lp], hd.krow.data(), L, Lp, Kp, &g[size_t(s0) * Kp]);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < K; ++c) dq[(i0 + r) * a.qs + c] = g[size_t(r) * Kp + c] * scale;
    cols_times_rows_acc(dp.data(), &hd.q[size_t(i0) * Kp], rows, L, Lp, Kp, dk_acc.data());  // dK += dS^T Q
  }
  for (int j = 0; j < L; ++j)
    for (int c = 0; c < K; ++c) {
      dk[j * a.qs + c] = dk_acc[size_t(j) * Kp + c] * scale;
      dv[j * a.qs + c] = dv_acc[size_t(j) * Kp + c];
    }
}

// Dimensions of the packed qkv [B, L, 3, H, K] and where (batch b, head h) starts in it and in [B, L, H, K].
struct Packed {
  int64_t B, L, H, K;
  int64_t qs() const { return 3 * H * K; }
  int64_t os() const { return H * K; }
  int64_t qkv_offset(int64_t b, int64_t h) const { return b * L * qs() + h * K; }
  int64_t out_offset(int64_t b, int64_t h) const { return b * L * os() + h * K; }
};

std::optional<Packed> packed_dims(const ffi::Buffer<ffi::F32>& qkv) {
  auto d = qkv.dimensions();
  if (d.size() != 5 || d[2] != 3) return std::nullopt;
  return Packed{d[0], d[1], d[3], d[4]};
}

HeadArgs head_args(const Packed& d, const float* qkv, int64_t b, int64_t h, const float* bias, float scale) {
  const float* base = qkv + d.qkv_offset(b, h);
  return {base, base + d.H * d.K, base + 2 * d.H * d.K, d.qs(), bias ? bias + h * d.L * d.L : nullptr, scale};
}

// The probabilities, when the caller keeps them ([B, H, L, L]), or null (an empty array: the backward
// recomputes them from lse); nullopt for any other size.
std::optional<float*> kept_probs(const Packed& d, float* data, size_t elements) {
  if (elements == 0) return nullptr;
  if (elements != size_t(d.B * d.H * d.L * d.L)) return std::nullopt;
  return data;
}
constexpr char kBadProbs[] = "attention_cpu: probs must be [B, H, L, L] or empty";

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, const float* bias, float scale,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse,
                   ffi::ResultBuffer<ffi::F32> probs_buf) {
  auto d = packed_dims(qkv);
  if (!d) return ffi::Error::InvalidArgument("attention_cpu: qkv must be [B, L, 3, H, K]");
  auto probs = kept_probs(*d, probs_buf->typed_data(), probs_buf->element_count());
  if (!probs) return ffi::Error::InvalidArgument(kBadProbs);
  parallel_for(pool, d->B * d->H, [&](int64_t i) {
    const int64_t b = i / d->H, h = i % d->H;
    Head hd(int(d->L), int(d->K));
    forward_head(hd, head_args(*d, qkv.typed_data(), b, h, bias, scale), out->typed_data() + d->out_offset(b, h),
                 d->os(), lse->typed_data() + i * d->L, *probs ? *probs + i * d->L * d->L : nullptr);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> out,
                    ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> probs_buf, ffi::Buffer<ffi::F32> dout,
                    const float* bias, float scale, ffi::ResultBuffer<ffi::F32> dqkv, float* dbias) {
  auto d = packed_dims(qkv);
  if (!d) return ffi::Error::InvalidArgument("attention_cpu: qkv must be [B, L, 3, H, K]");
  auto probs = kept_probs(*d, const_cast<float*>(probs_buf.typed_data()), probs_buf.element_count());
  if (!probs) return ffi::Error::InvalidArgument(kBadProbs);
  auto one = [&](int64_t b, int64_t h, float* db) {
    Head hd(int(d->L), int(d->K));
    const int64_t o = d->out_offset(b, h), g = d->qkv_offset(b, h), hk = d->H * d->K, i = b * d->H + h;
    float* dq = dqkv->typed_data() + g;
    backward_head(hd, head_args(*d, qkv.typed_data(), b, h, bias, scale), out.typed_data() + o,
                  dout.typed_data() + o, d->os(), lse.typed_data() + i * d->L,
                  *probs ? *probs + i * d->L * d->L : nullptr, dq, dq + hk, dq + 2 * hk, db);
  };
  if (!dbias) {
    parallel_for(pool, d->B * d->H, [&](int64_t i) { one(i / d->H, i % d->H, nullptr); });
  } else {  // one work item per head, so that only one thread adds into dbias[h]
    std::memset(dbias, 0, sizeof(float) * d->H * d->L * d->L);
    parallel_for(pool, d->H, [&](int64_t h) {
      for (int64_t b = 0; b < d->B; ++b) one(b, h, dbias + h * d->L * d->L);
    });
  }
  return ffi::Error::Success();
}

ffi::Error ForwardNoBias(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, float scale,
                         ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse,
                         ffi::ResultBuffer<ffi::F32> probs) {
  return Forward(pool, qkv, nullptr, scale, out, lse, probs);
}

ffi::Error ForwardBias(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> bias, float scale,
                       ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse,
                       ffi::ResultBuffer<ffi::F32> probs) {
  return Forward(pool, qkv, bias.typed_data(), scale, out, lse, probs);
}

ffi::Error BackwardNoBias(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> out,
                          ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> probs, ffi::Buffer<ffi::F32> dout,
                          float scale, ffi::ResultBuffer<ffi::F32> dqkv) {
  return Backward(pool, qkv, out, lse, probs, dout, nullptr, scale, dqkv, nullptr);
}

ffi::Error BackwardBias(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> out,
                        ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> probs, ffi::Buffer<ffi::F32> dout,
                        ffi::Buffer<ffi::F32> bias, float scale, ffi::ResultBuffer<ffi::F32> dqkv,
                        ffi::ResultBuffer<ffi::F32> dbias) {
  return Backward(pool, qkv, out, lse, probs, dout, bias.typed_data(), scale, dqkv, dbias->typed_data());
}

using F32 = ffi::Buffer<ffi::F32>;

}  // namespace

// XLA's thread pool, the float32 buffers, the "scale" attribute, the float32 results. probs is
// [B, H, L, L] when the caller keeps the probabilities for the backward, else empty.
XLA_FFI_DEFINE_HANDLER_SYMBOL(MonlAttentionFwd, ForwardNoBias,  // qkv -> out, lse, probs
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Attr<float>("scale")
                                  .Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MonlAttentionFwdBias, ForwardBias,  // qkv, bias -> out, lse, probs
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Attr<float>("scale")
                                  .Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MonlAttentionBwd, BackwardNoBias,  // qkv, out, lse, probs, dout -> dqkv
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Attr<float>("scale").Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MonlAttentionBwdBias, BackwardBias,  // qkv, out, lse, probs, dout, bias -> dqkv, dbias
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Attr<float>("scale").Ret<F32>().Ret<F32>());
