// The CPU kernels checked outside XLA: attention's forward and backward per (batch, head) and the dense
// layers' weight-gradient product, against float64 references. No Python, no jaxlib at run time (only
// XLA's FFI headers to compile), so a cross compiler and an emulator can check a CPU this host is not:
// tests/test_cpu_kernels.py runs it natively, and for AArch64 (NEON, 4-float vectors, 8-row tiles) under
// qemu when both are installed. Prints the largest errors; exits 1 if any is above tolerance.
//
//   g++ -O3 -std=c++17 -march=native -I <jax.ffi.include_dir()> tests/kernel_check.cc -o kernel_check
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../monl/models/attention_cpu.cc"
#include "../monl/models/matmul_cpu.cc"

namespace {

std::vector<float> normal(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist;
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

// max |got - want| / max(1, max |want|): float32 rounding is ~1e-6 of the values' scale.
struct Error {
  double worst = 0, scale = 1;
  void add(double got, double want) {
    worst = std::max(worst, std::abs(got - want));
    scale = std::max(scale, std::abs(want));
  }
  double relative() const { return worst / scale; }
};

constexpr double kTolerance = 2e-5;
int failures = 0;

void report(const char* what, const Error& e) {
  const bool ok = e.relative() <= kTolerance;
  failures += !ok;
  std::printf("%-58s max error %.2e %s\n", what, e.relative(), ok ? "ok" : "FAIL");
}

// Attention over the packed qkv [B, L, 3, H, K], optional bias [H, L, L], kept probabilities or not.
void check_attention(int B, int L, int H, int K, bool with_bias, bool keep_probs, std::mt19937& rng) {
  const Packed d{B, L, H, K};
  const float scale = 1.0f / std::sqrt(float(K));
  auto qkv = normal(size_t(B) * L * 3 * H * K, rng), dout = normal(size_t(B) * L * H * K, rng);
  auto bias = normal(size_t(H) * L * L, rng);
  std::vector<float> out(dout.size()), lse(size_t(B) * H * L), dqkv(qkv.size()), dbias(bias.size(), 0.0f);
  std::vector<float> probs(keep_probs ? size_t(B) * H * L * L : 0);
  const float* b_ptr = with_bias ? bias.data() : nullptr;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int64_t i = int64_t(b) * H + h;
      Head fwd(L, K), bwd(L, K);
      float* p = keep_probs ? &probs[size_t(i) * L * L] : nullptr;
      forward_head(fwd, head_args(d, qkv.data(), b, h, b_ptr, scale), &out[d.out_offset(b, h)], d.os(),
                   &lse[size_t(i) * L], p);
      float* dq = &dqkv[d.qkv_offset(b, h)];
      backward_head(bwd, head_args(d, qkv.data(), b, h, b_ptr, scale), &out[d.out_offset(b, h)],
                    &dout[d.out_offset(b, h)], d.os(), &lse[size_t(i) * L], p, dq, dq + H * K, dq + 2 * H * K,
                    with_bias ? &dbias[size_t(h) * L * L] : nullptr);
    }
  Error e_out, e_lse, e_dq, e_dk, e_dv, e_dbias;
  std::vector<double> dbias_ref(bias.size(), 0.0);
  auto at = [&](const std::vector<float>& x, int b, int l, int which, int h, int k) {
    return double(x[((size_t(b) * L + l) * 3 + which) * H * K + size_t(h) * K + k]);
  };
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      std::vector<double> p(size_t(L) * L), dp(size_t(L) * L);
      for (int i = 0; i < L; ++i) {  // forward: softmax(scale q k^T + bias) v
        double m = -INFINITY, sum = 0;
        for (int j = 0; j < L; ++j) {
          double s = 0;
          for (int k = 0; k < K; ++k) s += at(qkv, b, i, 0, h, k) * at(qkv, b, j, 1, h, k);
          s = s * scale + (with_bias ? bias[(size_t(h) * L + i) * L + j] : 0.0);
          p[size_t(i) * L + j] = s;
          m = std::max(m, s);
        }
        for (int j = 0; j < L; ++j) sum += p[size_t(i) * L + j] = std::exp(p[size_t(i) * L + j] - m);
        for (int j = 0; j < L; ++j) p[size_t(i) * L + j] /= sum;
        e_lse.add(lse[(size_t(b) * H + h) * L + i], m + std::log(sum));
        for (int k = 0; k < K; ++k) {
          double o = 0;
          for (int j = 0; j < L; ++j) o += p[size_t(i) * L + j] * at(qkv, b, j, 2, h, k);
          e_out.add(out[(size_t(b) * L + i) * H * K + size_t(h) * K + k], o);
        }
      }
      auto g = [&](int i, int k) { return double(dout[(size_t(b) * L + i) * H * K + size_t(h) * K + k]); };
      for (int i = 0; i < L; ++i) {  // dS = P (dO V^T - rowsum(dO V^T P))
        double delta = 0;
        for (int j = 0; j < L; ++j) {
          double t = 0;
          for (int k = 0; k < K; ++k) t += g(i, k) * at(qkv, b, j, 2, h, k);
          dp[size_t(i) * L + j] = t;
          delta += t * p[size_t(i) * L + j];
        }
        for (int j = 0; j < L; ++j) {
          dp[size_t(i) * L + j] = p[size_t(i) * L + j] * (dp[size_t(i) * L + j] - delta);
          dbias_ref[(size_t(h) * L + i) * L + j] += dp[size_t(i) * L + j];
        }
      }
      for (int i = 0; i < L; ++i)
        for (int k = 0; k < K; ++k) {
          double dq = 0, dk = 0, dv = 0;
          for (int j = 0; j < L; ++j) {
            dq += dp[size_t(i) * L + j] * at(qkv, b, j, 1, h, k);
            dk += dp[size_t(j) * L + i] * at(qkv, b, j, 0, h, k);
            dv += p[size_t(j) * L + i] * g(j, k);
          }
          e_dq.add(at(dqkv, b, i, 0, h, k), dq * scale);
          e_dk.add(at(dqkv, b, i, 1, h, k), dk * scale);
          e_dv.add(at(dqkv, b, i, 2, h, k), dv);
        }
    }
  for (size_t j = 0; j < dbias.size() && with_bias; ++j) e_dbias.add(dbias[j], dbias_ref[j]);
  char name[128];
  const char* parts[] = {"out", "lse", "dq", "dk", "dv", "dbias"};
  const Error* errors[] = {&e_out, &e_lse, &e_dq, &e_dk, &e_dv, &e_dbias};
  for (int n = 0; n < (with_bias ? 6 : 5); ++n) {
    std::snprintf(name, sizeof(name), "attention [B %d L %d H %d K %d]%s%s %s", B, L, H, K,
                  with_bias ? " bias" : "", keep_probs ? " kept probs" : "", parts[n]);
    report(name, *errors[n]);
  }
}

// c [I, O] = a^T b for a [N, I], b [N, O].
void check_transposed_product(int N, int I, int O, std::mt19937& rng) {
  auto a = normal(size_t(N) * I, rng), b = normal(size_t(N) * O, rng);
  std::vector<float> c(size_t(I) * O);
  transposed_product(a.data(), b.data(), N, I, O, c.data());
  Error e;
  for (int i = 0; i < I; ++i)
    for (int o = 0; o < O; ++o) {
      double want = 0;
      for (int n = 0; n < N; ++n) want += double(a[size_t(n) * I + i]) * b[size_t(n) * O + o];
      e.add(c[size_t(i) * O + o], want);
    }
  char name[128];
  std::snprintf(name, sizeof(name), "weight gradient a^T b [N %d I %d O %d]", N, I, O);
  report(name, e);
}

}  // namespace

int main() {
  std::printf("vectors of %d floats, register tiles of %d rows\n", monl::W, monl::TR);
  std::mt19937 rng(0);
  // L and K off the vector width and the 32-row backward blocks; K = 64 as in the paper's model.
  for (bool with_bias : {false, true})
    for (bool keep_probs : {false, true}) check_attention(2, 37, 3, 20, with_bias, keep_probs, rng);
  check_attention(1, 96, 2, 64, false, true, rng);
  // N across a 256-row chunk, I across a 512-column block and partial tiles, O partial tiles.
  check_transposed_product(300, 37, 70, rng);
  check_transposed_product(600, 520, 33, rng);
  std::printf(failures ? "%d FAILED\n" : "all ok\n", failures);
  return failures ? 1 : 0;
}
