// FAVOR+ positive random features on the CPU: one GEMM, then in place on its output a
// row maximum, one subtraction and ATen's vectorised exp. The ||x~||^2/2 term is the
// same for every feature of a row, so it cancels against the row maximum and goes
// only into the returned log-scale; the 1/sqrt(m) factor rides in the subtraction.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

namespace llmppl {
namespace {

using at::Tensor;

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
  Tensor log_scale = at::empty({rows}, xs.options());
  if (rows > 0 && M > 0) {
    Tensor top = std::get<0>(logits.max(1, /*keepdim=*/true));  // (rows, 1)
    // exp(logits - top) / sqrt(m) = exp(logits - (top + log(m)/2))
    logits.sub_(top + 0.5 * std::log(double(M))).exp_();
    at::sub_out(log_scale, top.squeeze(1), 0.5 * (xs * xs).sum(1));
  }
  // the log-scale stays float32 (float64 for float64 inputs): it must not round the key weights
  return {logits.to(x.scalar_type()).reshape(feat_shape), log_scale.reshape(lead)};
}

}  // namespace

TORCH_LIBRARY_IMPL(llmppl, CPU, m) {
  m.impl("favor_features", &favor_features_cpu);
}

}  // namespace llmppl
