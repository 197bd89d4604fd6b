// FAVOR+ positive random features on the CPU, fused: one GEMM, then one pass per row
// that subtracts ||x~||^2/2, finds the row maximum (the stabiliser, returned as the
// log-scale) and exponentiates in place.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "fast_exp.h"

namespace llmppl {
namespace {

using at::Tensor;

template <typename T>
void finish_rows(T* logits, const T* sqnorm, T* log_scale, int64_t rows, int64_t M) {
  const T inv_sqrt_m = T(1) / std::sqrt(T(M));
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* row = logits + r * M;
      const T half = T(0.5) * sqnorm[r];
      T top = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < M; ++j) top = std::max(top, row[j]);
      // logits - ||x~||^2/2 - max(logits - ||x~||^2/2) = logits - max(logits)
      exp_shifted_scaled(row, M, top, inv_sqrt_m);
      log_scale[r] = top - half;
    }
  });
}

std::tuple<Tensor, Tensor> favor_features_cpu(const Tensor& x, const Tensor& projection) {
  TORCH_CHECK(x.dim() >= 1, "favor_features: expected x of shape [..., d], got ", x.sizes());
  TORCH_CHECK(
      projection.dim() == 2 && projection.size(1) == x.size(-1),
      "favor_features: expected projection of shape [m, d] with d = ", x.size(-1), ", got ",
      projection.sizes());
  TORCH_CHECK(
      at::isFloatingType(x.scalar_type()), "favor_features: expected a floating x, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu(), "favor_features (CPU kernel): expected CPU tensors, got ", x.device());
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t d = x.size(-1), M = projection.size(0);
  auto lead = x.sizes().slice(0, x.dim() - 1).vec();
  auto feat_shape = lead;
  feat_shape.push_back(M);
  Tensor xs = x.reshape({-1, d}).to(acc) * std::pow(double(d), -0.25);  // x~ = x d^{-1/4}
  const int64_t rows = xs.size(0);
  Tensor logits = at::mm(xs, projection.to(acc).t()).contiguous();  // (rows, M)
  Tensor sqnorm = (xs * xs).sum(1).contiguous();
  Tensor log_scale = at::empty({rows}, xs.options());
  if (rows > 0 && M > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "favor_features_cpu", [&] {
      finish_rows<scalar_t>(
          logits.data_ptr<scalar_t>(), sqnorm.data_ptr<scalar_t>(), log_scale.data_ptr<scalar_t>(),
          rows, M);
    });
  }
  // the log-scale stays float32 (float64 for float64 inputs): it must not round the key weights
  return {logits.to(x.scalar_type()).reshape(feat_shape), log_scale.reshape(lead)};
}

}  // namespace

TORCH_LIBRARY_IMPL(llmppl, CPU, m) {
  m.impl("favor_features", &favor_features_cpu);
}

}  // namespace llmppl
