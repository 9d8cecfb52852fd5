// The AVX2 bf16 matrix-vector kernel and the dispatch in front of at::linear; see bf16_gemv.h.
// Legend: M rows of x, K input features, N output features (rows of the weight).
#include "owl2/model/bf16_gemv.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <c10/util/BFloat16.h>

#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace owl2 {
namespace {

#if defined(__x86_64__)
// The kernel is compiled for AVX2 + FMA whatever the project's flags, and only called after a run-time check.
#define OWL2_BF16_GEMV_TARGET __attribute__((target("avx2,fma")))

OWL2_BF16_GEMV_TARGET inline float bf16_gemv_hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float bf16_gemv_scalar(uint16_t bits) { return c10::detail::f32_from_bits(bits); }

// A bf16 is the high half of the fp32 with the same bits, so interleaving 16 weights with zeros widens them in
// two instructions: unpacklo gives weights 0-3 and 8-11 (one 128-bit lane each), unpackhi 4-7 and 12-15. x is
// stored in that order once per call (bf16_gemv_permute), so the products pair up.
void bf16_gemv_permute(const float* x, int64_t K, float* xp) {
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    for (int i = 0; i < 4; ++i) {
      xp[k + i] = x[k + i];
      xp[k + 4 + i] = x[k + 8 + i];
      xp[k + 8 + i] = x[k + 4 + i];
      xp[k + 12 + i] = x[k + 12 + i];
    }
  }
  for (; k < K; ++k) xp[k] = x[k];
}

// R weight rows against MB rows of x (permuted as above, row stride K), each weight vector loaded once for all MB
// rows: out_MR[m * R + r] = sum_k x[m][k] * w[r][k]. With one row of x, the two halves accumulate apart so that
// eight FMA chains are in flight.
template <int R, int MB>
OWL2_BF16_GEMV_TARGET void bf16_gemv_block(const float* xp, const uint16_t* w, int64_t K, float* out_MR) {
  constexpr int A = MB == 1 ? 2 : 1;
  __m256 acc[MB][R][A];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r)
      for (int a = 0; a < A; ++a) acc[m][r][a] = _mm256_setzero_ps();
  const __m256i zero = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m256 xlo[MB], xhi[MB];
    for (int m = 0; m < MB; ++m) {
      xlo[m] = _mm256_loadu_ps(xp + m * K + k);
      xhi[m] = _mm256_loadu_ps(xp + m * K + k + 8);
    }
    for (int r = 0; r < R; ++r) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * K + k));
      const __m256 lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v));
      const __m256 hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v));
      for (int m = 0; m < MB; ++m) {
        acc[m][r][0] = _mm256_fmadd_ps(xlo[m], lo, acc[m][r][0]);
        acc[m][r][A - 1] = _mm256_fmadd_ps(xhi[m], hi, acc[m][r][A - 1]);
      }
    }
  }
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < R; ++r) {
      float s = bf16_gemv_hsum(A == 2 ? _mm256_add_ps(acc[m][r][0], acc[m][r][A - 1]) : acc[m][r][0]);
      for (int64_t t = k; t < K; ++t) s += xp[m * K + t] * bf16_gemv_scalar(w[r * K + t]);  // tail: not permuted
      out_MR[m * R + r] = s;
    }
  }
}

// Output features [n_begin, n_end) of all M rows: y_MN = round_bf16(x_MK w_NK^T + b_N).
OWL2_BF16_GEMV_TARGET void bf16_gemv_range(const float* x_MK, int64_t M, const uint16_t* w_NK, const uint16_t* b_N,
                                           int64_t K, int64_t N, int64_t n_begin, int64_t n_end, c10::BFloat16* y_MN) {
  constexpr int R = 4;
  float out[2 * R];
  auto store = [&](int64_t m0, int mb, int64_t n0, int r_count) {
    for (int i = 0; i < mb; ++i) {
      for (int r = 0; r < r_count; ++r) {
        const float bias = b_N ? bf16_gemv_scalar(b_N[n0 + r]) : 0.0f;
        y_MN[(m0 + i) * N + n0 + r] = c10::BFloat16(out[i * r_count + r] + bias);  // round to nearest even
      }
    }
  };
  int64_t n = n_begin;
  for (; n + R <= n_end; n += R) {
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) {
      bf16_gemv_block<R, 2>(x_MK + m * K, w_NK + n * K, K, out);
      store(m, 2, n, R);
    }
    if (m < M) {
      bf16_gemv_block<R, 1>(x_MK + m * K, w_NK + n * K, K, out);
      store(m, 1, n, R);
    }
  }
  for (; n < n_end; ++n) {
    for (int64_t m = 0; m < M; ++m) {
      bf16_gemv_block<1, 1>(x_MK + m * K, w_NK + n * K, K, out);
      store(m, 1, n, 1);
    }
  }
}
#undef OWL2_BF16_GEMV_TARGET
#endif  // __x86_64__

bool bf16_gemv_has_avx2() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

}  // namespace

bool bf16_gemv_cpu_supported() {
#if defined(__x86_64__)
  // With AVX512-BF16 or AMX, at::linear's oneDNN kernels use the native bf16 dot products.
  static const bool ok =
      bf16_gemv_has_avx2() && !__builtin_cpu_supports("avx512bf16") && !__builtin_cpu_supports("amx-bf16");
  return ok;
#else
  return false;
#endif
}

bool bf16_gemv_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const auto bf16 = at::kBFloat16;
  const auto plain_cpu = [&](const at::Tensor& t) {
    return t.scalar_type() == bf16 && t.device().is_cpu() && t.layout() == at::kStrided;
  };
  if (!x.defined() || !weight.defined() || !plain_cpu(x) || !plain_cpu(weight)) return false;
  if (weight.dim() != 2 || !weight.is_contiguous() || x.dim() < 1 || x.size(-1) != weight.size(1)) return false;
  if (bias.defined() && (!plain_cpu(bias) || bias.dim() != 1 || bias.size(0) != weight.size(0))) return false;
  const int64_t K = weight.size(1);
  if (K == 0 || weight.size(0) == 0) return false;
  const int64_t M = x.numel() / K;
  if (M < 1 || M > kBf16GemvMaxRows) return false;
  // The kernel records no autograd graph.
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()))) {
    return false;
  }
  return bf16_gemv_cpu_supported();
}

at::Tensor bf16_gemv(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(bf16_gemv_has_avx2(), "bf16_gemv: this CPU has no AVX2/FMA (use at::linear)");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16,
              "bf16_gemv: expected bf16 x and weight, got ", x.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "bf16_gemv: expected a contiguous [N,K] weight, got ",
              weight.sizes(), " with strides ", weight.strides());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "bf16_gemv: x ", x.sizes(), " does not match weight ",
              weight.sizes());
  TORCH_CHECK(!bias.defined() || (bias.scalar_type() == at::kBFloat16 && bias.numel() == weight.size(0)),
              "bf16_gemv: expected a bf16 bias of ", weight.size(0), " values");
  const int64_t N = weight.size(0), K = weight.size(1);
  auto out_shape = x.sizes().vec();
  out_shape.back() = N;
  auto y = at::empty(out_shape, x.options());
  const int64_t M = K == 0 ? 0 : x.numel() / K;
  if (y.numel() == 0) return y;
  if (K == 0) return bias.defined() ? y.copy_(bias.expand_as(y)) : y.zero_();
#if defined(__x86_64__)
  const auto x_MK = x.reshape({M, K}).to(at::kFloat).contiguous();  // widened once, read N/4 times from cache
  auto xp_MK = at::empty_like(x_MK);
  for (int64_t m = 0; m < M; ++m) bf16_gemv_permute(x_MK.data_ptr<float>() + m * K, K, xp_MK.data_ptr<float>() + m * K);
  const auto b_N = bias.defined() ? bias.contiguous() : bias;
  const float* xp = xp_MK.data_ptr<float>();
  const auto* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  const auto* bp = b_N.defined() ? reinterpret_cast<const uint16_t*>(b_N.data_ptr<at::BFloat16>()) : nullptr;
  auto* yp = y.data_ptr<at::BFloat16>();
  // Blocks of 4 output features; a task reads at least ~64 KB of weights so that threads pay off.
  const int64_t blocks = (N + 3) / 4;
  const int64_t grain = std::max<int64_t>(1, (32 * 1024) / (4 * K));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    bf16_gemv_range(xp, M, wp, bp, K, N, b0 * 4, std::min(N, b1 * 4), yp);
  });
#endif
  return y;
}

bool bf16_widen_on_cpu(const at::Tensor& t) {
  return t.defined() && t.scalar_type() == at::kBFloat16 && t.device().is_cpu() &&
         !(at::GradMode::is_enabled() && t.requires_grad()) && bf16_gemv_cpu_supported();
}

at::Tensor attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (!bf16_widen_on_cpu(q) || k.requires_grad() || v.requires_grad()) return at::scaled_dot_product_attention(q, k, v);
  return at::scaled_dot_product_attention(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat)).to(q.scalar_type());
}

at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (bf16_gemv_applies(x, weight, bias)) return bf16_gemv(x, weight, bias);
  // More rows (a prefill, the ViT) on the same CPUs: ATen's bf16 matrix product there is ~6x slower than fp32
  // (measured TTFT, docs/generation.md); widening the weight costs one pass over it, the product M passes.
  if (bf16_gemv_cpu_supported() && x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16 &&
      x.device().is_cpu() && weight.device().is_cpu() && weight.dim() == 2 &&
      (!bias.defined() || bias.scalar_type() == at::kBFloat16) &&
      !(at::GradMode::is_enabled() &&
        (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad())))) {
    const auto b32 = bias.defined() ? bias.to(at::kFloat) : bias;
    return at::linear(x.to(at::kFloat), weight.to(at::kFloat), b32).to(at::kBFloat16);
  }
  return at::linear(x, weight, bias);
}

}  // namespace owl2
