// The bf16 matrix-vector kernel (owl2/model/bf16_gemv.h): against a float64 product of the same bf16 inputs,
// rounded to bf16, over odd shapes, bias or none and a strided input; and the dispatch that keeps at::linear
// where the kernel does not apply.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <cstring>

#include "owl2/model/bf16_gemv.h"
#include "owl2/model/layers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_bf16_gemv {

using namespace owl2;

namespace {

// Distance in bf16 units in the last place between two bf16 tensors of one shape (sign-magnitude bits mapped to
// a monotonic integer line, so -0 and +0 are one apart and neighbours across zero are counted).
int64_t max_ulp_distance(const torch::Tensor& a, const torch::Tensor& b) {
  const auto ac = a.contiguous(), bc = b.contiguous();
  const auto* pa = reinterpret_cast<const uint16_t*>(ac.data_ptr<at::BFloat16>());
  const auto* pb = reinterpret_cast<const uint16_t*>(bc.data_ptr<at::BFloat16>());
  auto line = [](uint16_t u) -> int64_t { return (u & 0x8000) ? -static_cast<int64_t>(u & 0x7fff) : (u & 0x7fff); };
  int64_t worst = 0;
  for (int64_t i = 0; i < ac.numel(); ++i) worst = std::max(worst, std::abs(line(pa[i]) - line(pb[i])));
  return worst;
}

// x.double() @ w.double().t() + b, rounded once to bf16: what an exact kernel would return.
torch::Tensor exact_bf16(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  auto y = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
  if (b.defined()) y = y + b.to(torch::kFloat64);
  return y.to(torch::kBFloat16);
}

}  // namespace

TEST_CASE("bf16_gemv is within one bf16 ulp of the float64 product for odd shapes, with and without bias",
          "[bf16_gemv]") {
#if !defined(__x86_64__)
  WARN("not x86-64: the kernel is not built here");
#else
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    WARN("this CPU has no AVX2/FMA: the kernel is not used here");
    return;
  }
  torch::manual_seed(0);
  int64_t outputs = 0, exact = 0;
  for (int64_t M : {1, 2, 3, 4, 5, 6, 7, 8, 9}) {
    for (int64_t K : {1, 7, 33, 130}) {
      for (int64_t N : {1, 5, 129}) {
        for (bool with_bias : {false, true}) {
          INFO("M=" << M << " K=" << K << " N=" << N << " bias=" << with_bias);
          const auto x = torch::randn({M, K}).to(torch::kBFloat16);
          const auto w = torch::randn({N, K}).to(torch::kBFloat16);
          const auto b = with_bias ? torch::randn({N}).to(torch::kBFloat16) : torch::Tensor();
          const auto y = bf16_gemv(x, w, b);
          REQUIRE(y.scalar_type() == torch::kBFloat16);
          REQUIRE(y.sizes() == torch::IntArrayRef({M, N}));
          const auto expected = exact_bf16(x, w, b);
          CHECK(max_ulp_distance(y, expected) <= 1);
          outputs += y.numel();
          exact += (y == expected).sum().item<int64_t>();
        }
      }
    }
  }
  // Not a rounding-blind comparison: nearly all outputs are the correctly rounded value itself.
  CHECK(exact > outputs * 9 / 10);
#endif
}

TEST_CASE("bf16_gemv takes strided inputs and leading batch dimensions, and a wrong weight is refused",
          "[bf16_gemv]") {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return;
  torch::manual_seed(1);
  const auto w = torch::randn({129, 33}).to(torch::kBFloat16);
  const auto b = torch::randn({129}).to(torch::kBFloat16);
  // [2, 3, 33] viewed from a wider buffer: neither the rows nor the features are contiguous.
  const auto big = torch::randn({3, 2, 66}).to(torch::kBFloat16);
  const auto x = big.transpose(0, 1).slice(2, 0, 66, 2);
  REQUIRE_FALSE(x.is_contiguous());
  const auto y = bf16_gemv(x, w, b);
  REQUIRE(y.sizes() == torch::IntArrayRef({2, 3, 129}));
  CHECK(max_ulp_distance(y, exact_bf16(x, w, b)) <= 1);
  // The result differs from a perturbed input's by far more than an ulp: the comparison can fail.
  CHECK(max_ulp_distance(y, exact_bf16(x + 1.0, w, b)) > 8);

  CHECK_THROWS_WITH(bf16_gemv(x, w.t(), b), Catch::Matchers::Contains("expected a contiguous [N,K] weight"));
  CHECK_THROWS_WITH(bf16_gemv(x.to(torch::kFloat), w, b), Catch::Matchers::Contains("expected bf16 x and weight"));
#endif
}

TEST_CASE("linear_forward takes the kernel only for few bf16 rows without autograd, at::linear otherwise",
          "[bf16_gemv]") {
  torch::manual_seed(2);
  const auto w = torch::randn({64, 48}).to(torch::kBFloat16);
  const auto b = torch::randn({64}).to(torch::kBFloat16);
  const auto x1 = torch::randn({1, 1, 48}).to(torch::kBFloat16);
  const bool native = bf16_gemv_cpu_supported();  // AVX2 without native bf16: the machines the kernel is for

  CHECK(bf16_gemv_applies(x1, w, b) == native);
  CHECK(bf16_gemv_applies(x1, w, {}) == native);
  CHECK(bf16_gemv_applies(torch::randn({kBf16GemvMaxRows, 48}).to(torch::kBFloat16), w, b) == native);
  // fp32, too many rows, a transposed weight, a mismatched bias: at::linear.
  CHECK_FALSE(bf16_gemv_applies(x1.to(torch::kFloat), w.to(torch::kFloat), b.to(torch::kFloat)));
  CHECK_FALSE(bf16_gemv_applies(x1, w.to(torch::kFloat), b));
  CHECK_FALSE(bf16_gemv_applies(torch::randn({kBf16GemvMaxRows + 1, 48}).to(torch::kBFloat16), w, b));
  CHECK_FALSE(bf16_gemv_applies(torch::randn({1, 64}).to(torch::kBFloat16), w.t(), {}));
  CHECK_FALSE(bf16_gemv_applies(x1, w, b.to(torch::kFloat)));
  // Autograd wanted: at::linear, and the gradient flows.
  const auto wg = w.clone().requires_grad_(true);
  CHECK_FALSE(bf16_gemv_applies(x1, wg, b));
  {
    torch::NoGradGuard no_grad;
    CHECK(bf16_gemv_applies(x1, wg, b) == native);
  }
  const auto loss = linear_forward(x1, wg, b).to(torch::kFloat).sum();
  loss.backward();
  REQUIRE(wg.grad().defined());
  CHECK(wg.grad().abs().sum().item<float>() > 0);

  // Whatever path is taken, the answer is at::linear's to one ulp (both round a float32 accumulation).
  for (int64_t M : {int64_t{1}, int64_t{3}, kBf16GemvMaxRows + 1}) {
    const auto x = torch::randn({M, 48}).to(torch::kBFloat16);
    CHECK(max_ulp_distance(linear_forward(x, w, b), at::linear(x, w, b)) <= 1);
  }
  const auto xf = torch::randn({2, 48});
  CHECK(torch::equal(linear_forward(xf, w.to(torch::kFloat), b.to(torch::kFloat)),
                     at::linear(xf, w.to(torch::kFloat), b.to(torch::kFloat))));

  // The model's Linear goes through the dispatch.
  Linear lin(48, 64);
  {
    torch::NoGradGuard no_grad;
    lin->weight.copy_(w.to(torch::kFloat));
    lin->bias.copy_(b.to(torch::kFloat));
  }
  lin->to(torch::kBFloat16);
  torch::NoGradGuard no_grad;
  CHECK(max_ulp_distance(lin(x1), exact_bf16(x1, w, b)) <= 1);
}

TEST_CASE("attention_forward widens bf16 attention to fp32 on the kernel's CPUs and is SDPA everywhere else",
          "[bf16_gemv]") {
  torch::manual_seed(3);
  const auto q = torch::randn({2, 4, 5, 32}).to(torch::kBFloat16);
  const auto k = torch::randn({2, 4, 7, 32}).to(torch::kBFloat16);
  const auto v = torch::randn({2, 4, 7, 32}).to(torch::kBFloat16);
  const bool widen = bf16_gemv_cpu_supported();
  CHECK(bf16_widen_on_cpu(q) == widen);
  CHECK_FALSE(bf16_widen_on_cpu(q.to(torch::kFloat)));
  CHECK_FALSE(bf16_widen_on_cpu(torch::Tensor()));
  const auto widened =
      at::scaled_dot_product_attention(q.to(torch::kFloat), k.to(torch::kFloat), v.to(torch::kFloat)).to(torch::kBFloat16);
  const auto out = attention_forward(q, k, v);
  CHECK(out.scalar_type() == torch::kBFloat16);
  CHECK(torch::equal(out, widen ? widened : at::scaled_dot_product_attention(q, k, v)));
  // Within one bf16 rounding of the float64 attention of the same inputs either way.
  const auto exact = at::scaled_dot_product_attention(q.to(torch::kFloat64), k.to(torch::kFloat64), v.to(torch::kFloat64));
  CHECK((out.to(torch::kFloat64) - exact).abs().max().item<double>() <= 1e-2 * exact.abs().max().item<double>());
  // fp32 is untouched, and autograd keeps ATen's bf16 path (its backward).
  const auto qf = q.to(torch::kFloat), kf = k.to(torch::kFloat), vf = v.to(torch::kFloat);
  CHECK(torch::equal(attention_forward(qf, kf, vf), at::scaled_dot_product_attention(qf, kf, vf)));
  const auto qg = q.clone().requires_grad_(true);
  CHECK_FALSE(bf16_widen_on_cpu(qg));
  const auto og = attention_forward(qg, k, v);
  CHECK(torch::equal(og.detach(), at::scaled_dot_product_attention(q, k, v)));
  og.to(torch::kFloat).sum().backward();
  CHECK(qg.grad().defined());
}

}  // namespace owl2_test_bf16_gemv
