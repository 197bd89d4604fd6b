// Input checks and shape helpers shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

namespace llmppl {

struct AttnShape {
  int64_t batch;  // product of the leading dims
  int64_t L;
  int64_t M;
  int64_t D;
};

inline AttnShape check_attention_inputs(
    const at::Tensor& q,
    const at::Tensor& k,
    const at::Tensor& v,
    const at::Tensor& log_scale,
    int64_t chunk,
    const char* op) {
  TORCH_CHECK(q.dim() >= 2, op, ": expected q_feat of shape [..., L, M], got ", q.sizes());
  TORCH_CHECK(
      k.sizes() == q.sizes(), op, ": expected k_feat of the same shape as q_feat ", q.sizes(),
      ", got ", k.sizes());
  TORCH_CHECK(
      v.dim() == q.dim() && v.sizes().slice(0, v.dim() - 1) == q.sizes().slice(0, q.dim() - 1),
      op, ": expected v of shape [..., L, D] with the leading dims and L of q_feat ", q.sizes(),
      ", got ", v.sizes());
  TORCH_CHECK(
      log_scale.sizes() == q.sizes().slice(0, q.dim() - 1), op,
      ": expected k_log_scale of shape [..., L] = ", q.sizes().slice(0, q.dim() - 1), ", got ",
      log_scale.sizes());
  TORCH_CHECK(
      at::isFloatingType(q.scalar_type()) && q.scalar_type() == k.scalar_type() &&
          q.scalar_type() == v.scalar_type(),
      op, ": expected q_feat, k_feat and v of one floating dtype, got ", q.scalar_type(), ", ",
      k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(
      log_scale.scalar_type() == at::kFloat || log_scale.scalar_type() == at::kDouble, op,
      ": expected k_log_scale of dtype float32 or float64, got ", log_scale.scalar_type());
  TORCH_CHECK(
      q.device() == k.device() && q.device() == v.device() && q.device() == log_scale.device(),
      op, ": expected all inputs on one device, got ", q.device(), ", ", k.device(), ", ",
      v.device(), ", ", log_scale.device());
  TORCH_CHECK(chunk >= 1, op, ": expected chunk >= 1, got ", chunk);
  AttnShape s;
  s.L = q.size(-2);
  s.M = q.size(-1);
  s.D = v.size(-1);
  s.batch = 1;
  for (int64_t i = 0; i < q.dim() - 2; ++i) s.batch *= q.size(i);
  return s;
}

// float32 accumulation for float/half/bfloat16, float64 for float64 (gradcheck).
inline at::ScalarType accumulate_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace llmppl
