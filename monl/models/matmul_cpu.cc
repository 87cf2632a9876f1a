// The weight gradient of a dense layer for XLA:CPU (an XLA FFI custom call): c [I, O] = a^T b for
// a [N, I] (the layer's input) and b [N, O] (the gradient of its output), both row-major as XLA holds them.
//
// XLA:CPU gives a product contracting both operands' first axis to Eigen (60-75 % of YNNPACK's rate);
// feeding YNNPACK instead needs b transposed first, a pass over [N, O] that costs as much as a fifth of
// the product itself (benchmarks/PERF_LOG.md sections 14 and 17). Here the transpose never happens: rows
// of a and b are packed into panels as the product reads them, and a register tile of TR rows x TV
// vectors (cpu_kernels.h; 8 x 32 floats, 16 accumulators, on AVX-512) sums over N.
//
// Blocking: N in chunks of NC rows; per chunk, a's columns in blocks of IC (a packed [IC/MI][NC][MI], at
// most 512 KiB: it stays in L2 while every MO-column panel of b ([NC][MO], 32 KiB on AVX-512) runs
// against it).
// Threads split N, each into its own [I, O] partial sum (added at the end), so that no two threads write
// the same output and each packs only its rows.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"

namespace ffi = xla::ffi;
using monl::load;
using monl::splat;
using monl::store;
using monl::TV;
using monl::vf;
using monl::W;

namespace {

constexpr int MI = monl::TR;  // rows of c per register tile
constexpr int MO = TV * W;    // columns of c per register tile
constexpr int64_t NC = 256;   // rows of a and b per packed chunk
constexpr int64_t IC = 512;   // columns of a per packed block

// c[mi, mo] (+)= sum_k a[k, 0:mi] b[k, 0:mo] for a packed [n][MI] and b packed [n][MO] (zero padded);
// `first`: c is written, not added to.
inline void tile(const float* a, const float* b, int64_t n, float* c, int64_t ldc, int mi, int mo, bool first) {
  float edge[MI * MO];
  float* dst = c;
  int64_t ld = ldc;
  if (mi < MI || mo < MO) {  // a partial tile: run a full one on a copy
    std::memset(edge, 0, sizeof(edge));
    if (!first)
      for (int i = 0; i < mi; ++i) std::memcpy(edge + i * MO, c + i * ldc, mo * sizeof(float));
    dst = edge, ld = MO, first = false;
  }
  vf acc[MI][TV];
  for (int i = 0; i < MI; ++i)
    for (int v = 0; v < TV; ++v) acc[i][v] = first ? vf{} : load(dst + i * ld + v * W);
  for (int64_t k = 0; k < n; ++k) {
    vf bv[TV];
    for (int v = 0; v < TV; ++v) monl::in_register(bv[v] = load(b + k * MO + v * W));
    for (int i = 0; i < MI; ++i) {
      const vf x = splat(a[k * MI + i]);
      for (int v = 0; v < TV; ++v) acc[i][v] += x * bv[v];
    }
  }
  for (int i = 0; i < MI; ++i)
    for (int v = 0; v < TV; ++v) store(dst + i * ld + v * W, acc[i][v]);
  if (dst == edge)
    for (int i = 0; i < mi; ++i) std::memcpy(c + i * ldc, edge + i * MO, mo * sizeof(float));
}

// rows [n, cols] of src (row stride ld) -> dst [n][width], zero padded to `width` columns.
inline void pack(const float* src, int64_t ld, int64_t n, int cols, int width, float* dst) {
  for (int64_t k = 0; k < n; ++k) {
    std::memcpy(dst + k * width, src + k * ld, cols * sizeof(float));
    if (cols < width) std::memset(dst + k * width + cols, 0, (width - cols) * sizeof(float));
  }
}

// c [I, O] = a^T b over a's and b's first n rows (a [n, I], b [n, O]), single-threaded.
void transposed_product(const float* a, const float* b, int64_t n, int64_t I, int64_t O, float* c) {
  std::vector<float> ap(size_t(NC * IC)), bp(size_t(NC * MO));
  for (int64_t n0 = 0; n0 < n; n0 += NC) {
    const int64_t nc = std::min(NC, n - n0);
    for (int64_t i0 = 0; i0 < I; i0 += IC) {
      const int64_t ic = std::min(IC, I - i0);
      for (int64_t ib = 0; ib < ic; ib += MI)
        pack(a + n0 * I + i0 + ib, I, nc, int(std::min<int64_t>(MI, ic - ib)), MI, &ap[ib * nc]);
      for (int64_t o0 = 0; o0 < O; o0 += MO) {
        const int mo = int(std::min<int64_t>(MO, O - o0));
        pack(b + n0 * O + o0, O, nc, mo, MO, bp.data());
        for (int64_t ib = 0; ib < ic; ib += MI)
          tile(&ap[ib * nc], bp.data(), nc, c + (i0 + ib) * O + o0, O, int(std::min<int64_t>(MI, ic - ib)),
               mo, n0 == 0);
      }
    }
  }
}

ffi::Error TransposedProduct(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                             ffi::ResultBuffer<ffi::F32> c) {
  const auto da = a.dimensions(), db = b.dimensions(), dc = c->dimensions();
  if (da.size() != 2 || db.size() != 2 || dc.size() != 2 || da[0] != db[0] || dc[0] != da[1] || dc[1] != db[1])
    return ffi::Error::InvalidArgument("matmul_cpu: expected a [N, I], b [N, O] -> c [I, O]");
  const int64_t N = da[0], I = da[1], O = db[1];
  float* out = c->typed_data();
  if (N == 0) {
    std::memset(out, 0, sizeof(float) * I * O);
    return ffi::Error::Success();
  }
  // One slice of N (at least a chunk) per thread of XLA's intra-op pool (one more, for the calling thread,
  // was slower on 2 cores).
  const int64_t T = std::clamp<int64_t>(N / NC, 1, std::max<int64_t>(pool.num_threads(), 1));
  std::vector<float> partial(size_t((T - 1) * I * O));
  monl::parallel_for(pool, T, [&](int64_t t) {
    const int64_t lo = N * t / T, hi = N * (t + 1) / T;
    transposed_product(a.typed_data() + lo * I, b.typed_data() + lo * O, hi - lo, I, O,
                       t == 0 ? out : &partial[(t - 1) * I * O]);
  });
  for (int64_t t = 1; t < T; ++t) {
    const float* p = &partial[(t - 1) * I * O];
    for (int64_t j = 0; j < I * O; ++j) out[j] += p[j];
  }
  return ffi::Error::Success();
}

}  // namespace

// XLA's thread pool, a [N, I], b [N, O] -> c [I, O] = a^T b (float32).
XLA_FFI_DEFINE_HANDLER_SYMBOL(MonlTransposedProduct, TransposedProduct,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());

// The vector width and register-tile rows the library was built with (cpu_kernels.vector_shape()).
extern "C" int MonlVectorWidth() { return monl::W; }
extern "C" int MonlTileRows() { return monl::TR; }
