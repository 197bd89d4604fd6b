// Causal FAVOR+ attention from queries and keys, fused on the CPU.
//
// The random features of each chunk are computed into a cache-sized scratch right
// before the causal scan uses them, so no [L, M] feature tensor is ever written to
// memory: at long L the unfused path spends more time moving features through memory
// than multiplying them. Same stabilisers as the unfused ops (per-row for queries, a
// per-key log-scale with its running maximum for keys); the 1/sqrt(m) factor and the
// query stabiliser cancel between numerator and denominator and are left out.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../favor_common.h"
#include "causal_scan.h"

namespace llmppl {
namespace {

using at::Tensor;
using namespace scan;

// rows of x [len, M] -> exp(x - rowmax) in place; returns the row maxima in `top`
template <typename T>
void exp_minus_row_max(Tensor& x, T* top) {
  const int64_t len = x.size(0), M = x.size(1);
  T* p = x.data_ptr<T>();
  for (int64_t i = 0; i < len; ++i) {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < M; ++j) m = std::max(m, p[i * M + j]);
    for (int64_t j = 0; j < M; ++j) p[i * M + j] -= m;
    top[i] = m;
  }
  x.exp_();  // ATen's vectorised exp
}

template <typename T>
void favor_sequence(
    const Tensor& q /* [L, d] */,
    const Tensor& k /* [L, d] */,
    const Tensor& v /* [L, D] */,
    const Tensor& proj_t /* [d, M], scaled by d^{-1/4} */,
    Tensor& out,
    int64_t C) {
  const int64_t M = proj_t.size(1);
  const T half_scale = T(0.5) / std::sqrt(T(q.size(1)));  // ||x~||^2 / 2 = ||x||^2 / (2 sqrt(d))
  auto opts = q.options();
  Tensor qf = at::empty({C, M}, opts), kf = at::empty({C, M}, opts);
  std::vector<T> l(C), c(C), top(C);
  const T* kp = k.data_ptr<T>();
  const int64_t d = k.size(1);
  T running = -std::numeric_limits<T>::infinity();
  auto computed = [&](int64_t t0, int64_t len) {
    Tensor qc = qf.narrow(0, 0, len), kc = kf.narrow(0, 0, len);
    at::mm_out(qc, q.narrow(0, t0, len), proj_t);
    exp_minus_row_max<T>(qc, top.data());
    at::mm_out(kc, k.narrow(0, t0, len), proj_t);
    exp_minus_row_max<T>(kc, top.data());
    for (int64_t i = 0; i < len; ++i) {
      const T* row = kp + (t0 + i) * d;
      T sq = 0;
      for (int64_t j = 0; j < d; ++j) sq += row[j] * row[j];
      l[i] = top[i] - half_scale * sq;
      running = std::max(running, l[i]);
      c[i] = running;
    }
    return ChunkInputs<T>{qc, kc, l.data(), c.data()};
  };
  forward_scan<T>(computed, v, out, M, C);
}

Tensor favor_causal_attention_cpu(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& projection, int64_t chunk) {
  TORCH_CHECK(q.dim() >= 2, "favor_causal_attention: expected q of shape [..., L, d], got ", q.sizes());
  TORCH_CHECK(
      k.sizes() == q.sizes(), "favor_causal_attention: expected k of the shape of q ", q.sizes(), ", got ",
      k.sizes());
  TORCH_CHECK(
      v.dim() == q.dim() && v.sizes().slice(0, v.dim() - 1) == q.sizes().slice(0, q.dim() - 1),
      "favor_causal_attention: expected v of shape [..., L, D] with the leading dims and L of q ", q.sizes(),
      ", got ", v.sizes());
  TORCH_CHECK(
      projection.dim() == 2 && projection.size(1) == q.size(-1),
      "favor_causal_attention: expected projection of shape [m, ", q.size(-1), "], got ", projection.sizes());
  TORCH_CHECK(
      at::isFloatingType(q.scalar_type()) && q.scalar_type() == k.scalar_type() &&
          q.scalar_type() == v.scalar_type(),
      "favor_causal_attention: expected q, k and v of one floating dtype, got ", q.scalar_type(), ", ",
      k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(q.device().is_cpu(), "favor_causal_attention (CPU kernel): expected CPU tensors, got ", q.device());
  TORCH_CHECK(chunk >= 1, "favor_causal_attention: expected chunk >= 1, got ", chunk);
  const int64_t L = q.size(-2), d = q.size(-1), D = v.size(-1), M = projection.size(0);
  int64_t batch = 1;
  for (int64_t i = 0; i < q.dim() - 2; ++i) batch *= q.size(i);
  auto out_shape = v.sizes().vec();
  if (batch == 0 || L == 0 || D == 0) return at::zeros(out_shape, v.options());
  TORCH_CHECK(M >= 1, "favor_causal_attention: expected at least one random feature, got ", M);
  const auto acc = accumulate_type(q.scalar_type());
  Tensor qa = q.reshape({batch, L, d}).to(acc).contiguous();
  Tensor ka = k.reshape({batch, L, d}).to(acc).contiguous();
  Tensor va = v.reshape({batch, L, D}).to(acc).contiguous();
  Tensor proj_t = (projection.to(acc) * std::pow(double(d), -0.25)).t().contiguous();  // (d, M)
  Tensor out = at::empty({batch, L, D}, va.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "favor_causal_attention_cpu", [&] {
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        Tensor o = out[i];
        favor_sequence<scalar_t>(qa[i], ka[i], va[i], proj_t, o, chunk);
      }
    });
  });
  return out.to(v.scalar_type()).reshape(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(llmppl, CPU, m) {
  m.impl("favor_causal_attention", &favor_causal_attention_cpu);
}

}  // namespace llmppl
