// Schemas of the FAVOR+ ops. Kernels register per backend in cpu/ and cuda/,
// the way torchvision lays out its ops.
//
// Shapes (any leading dims are flattened into one batch dim by the kernels):
//   q_feat, k_feat: Tensor[..., L, M]   positive random features
//   v:              Tensor[..., L, D]
//   k_log_scale:    Tensor[..., L]      float32; the true key feature is k_feat * exp(k_log_scale)
#include <torch/library.h>

TORCH_LIBRARY(llmppl, m) {
  m.def(
      "causal_linear_attention(Tensor q_feat, Tensor k_feat, Tensor v, "
      "Tensor k_log_scale, int chunk=64) -> Tensor");
  m.def(
      "causal_linear_attention_backward(Tensor grad_out, Tensor q_feat, "
      "Tensor k_feat, Tensor v, Tensor k_log_scale, Tensor out, int chunk=64) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("favor_features(Tensor x, Tensor projection) -> (Tensor, Tensor)");
  // features and causal attention fused (q, k: [..., L, d], projection: [m, d])
  m.def(
      "favor_causal_attention(Tensor q, Tensor k, Tensor v, Tensor projection, "
      "int chunk=64) -> Tensor");
}
