// y = x W^T + b in bf16 for a few rows of x on CPUs without native bf16: batch-1 decoding reads every weight
// once per token, and there ATen's bf16 matrix-vector product runs at a quarter of the fp32 one's bandwidth
// (docs/generation.md, "bf16 on CPU"). The AVX2 kernel reads bf16 weights, accumulates in fp32 and rounds the
// output to bf16 (nearest even) after adding the bias in fp32.
#pragma once
#include <ATen/core/Tensor.h>

namespace owl2 {

// Rows of x (all leading dimensions together) up to which the kernel is used; measured in docs/generation.md.
inline constexpr int64_t kBf16GemvMaxRows = 8;

// Whether this CPU takes the kernel: x86-64 with AVX2 and FMA, and neither AVX512-BF16 nor AMX-BF16 (where
// at::linear's oneDNN path uses them). False on every other architecture.
bool bf16_gemv_cpu_supported();

// Whether linear_forward() takes the kernel for these tensors: bf16 CPU tensors, weight [N,K] contiguous, bias [N] or
// undefined, 1..kBf16GemvMaxRows rows, no autograd wanted, and bf16_gemv_cpu_supported().
bool bf16_gemv_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// The kernel itself, whatever the row count (tests call it directly): x [..., K] bf16 (any strides), weight
// [N,K] bf16 contiguous, bias [N] bf16 or undefined; returns [..., N] bf16. Throws when the CPU lacks AVX2/FMA.
at::Tensor bf16_gemv(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// Whether `t` is a bf16 CPU tensor on a CPU that takes the kernel, with no autograd wanted: there ATen's bf16
// matrix products (linear beyond kBf16GemvMaxRows rows, attention) are slower than widening to fp32, so the model
// computes those in fp32 and rounds once; the decoder's KV cache then holds fp32 (the bf16 keys and values widened
// exactly). Always false for fp32 / fp64 models, on CUDA and on CPUs with native bf16.
bool bf16_widen_on_cpu(const at::Tensor& t);

// at::scaled_dot_product_attention(q, k, v) with no mask; where bf16_widen_on_cpu(q), in fp32 and rounded once.
at::Tensor attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// at::linear(x, weight, bias), through the kernel where bf16_gemv_applies(); on the same CPUs, more bf16 rows
// without autograd are computed in fp32 (x, weight and bias widened) and rounded to bf16 once.
at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace owl2
