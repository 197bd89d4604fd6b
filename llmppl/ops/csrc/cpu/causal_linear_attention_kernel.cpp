// Causal FAVOR+ linear attention on the CPU.
//
// Per sequence (parallel over batch*heads), chunks of C positions: inside a chunk a
// masked [C, C] product, between chunks a running [M, D+1] state (the last column
// holds the normaliser) updated with BLAS-3 products. Every exponent is <= 0: key s
// enters output t with weight exp(l_s - c_t), c_t = max_{r<=t} l_r, so a large key
// later in the sequence can never underflow an earlier output.
//
// Backward recomputes the running state chunk by chunk (forward scan for dq, reverse
// scan for dk and dv); it never recovers a state by subtraction.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../favor_common.h"
#include "causal_scan.h"

namespace llmppl {
namespace {

using at::Tensor;

struct Views {
  Tensor q, k, v, l, c;  // [L, M], [L, M], [L, D] (forward) or [L, D+1] (backward: [v, 1]), [L], [L]
};

using namespace scan;

template <typename T>
void backward_sequence(
    const Views& x,
    const Tensor& g /* [L, D] */,
    const Tensor& o /* [L, D] */,
    Tensor& dq,
    Tensor& dk,
    Tensor& dv,
    Tensor& dl,
    int64_t C) {
  const int64_t L = x.q.size(0), M = x.q.size(1), D1 = x.v.size(1), D = D1 - 1;
  auto opts = x.q.options();
  const T* l = x.l.data_ptr<T>();
  const T* c = x.c.data_ptr<T>();
  const T tiny = std::numeric_limits<T>::min();
  Tensor ga = at::empty({L, D1}, opts);  // [g/den, -(g.out)/den]: gradient of (num, den)
  Tensor S = at::zeros({M, D1}, opts);
  Tensor w = at::empty({C, C}, opts);
  Tensor b = at::empty({C, C}, opts);
  Tensor tmp = at::empty({C, std::max(M, D1)}, opts);
  Tensor kw = at::empty({C, M}, opts);
  Tensor qz = at::empty({C}, opts);
  std::vector<T> decay(C), key_scratch(C);
  T c_prev = -std::numeric_limits<T>::infinity();
  // forward scan: denominators, the gradient of (num, den), dq
  for (int64_t t0 = 0; t0 < L; t0 += C) {
    const int64_t len = std::min(C, L - t0);
    Tensor qc = x.q.narrow(0, t0, len), kc = x.k.narrow(0, t0, len), vc = x.v.narrow(0, t0, len);
    Tensor wc = w.narrow(0, 0, len).narrow(1, 0, len), bc = b.narrow(0, 0, len).narrow(1, 0, len);
    at::mm_out(wc, qc, kc.t());
    apply_causal_decay<T>(wc.data_ptr<T>(), C, len, l + t0, c + t0, key_scratch);
    Tensor qzc = qz.narrow(0, 0, len);
    at::mv_out(qzc, qc, S.select(1, D));
    for (int64_t i = 0; i < len; ++i) decay[i] = exp_diff(c_prev, c[t0 + i]);
    const T* wp = wc.data_ptr<T>();
    const T* gp = g.data_ptr<T>() + t0 * D;
    const T* op = o.data_ptr<T>() + t0 * D;
    T* gap = ga.data_ptr<T>() + t0 * D1;
    const T* qzp = qzc.data_ptr<T>();
    for (int64_t i = 0; i < len; ++i) {
      T den = decay[i] * qzp[i];
      for (int64_t j = 0; j <= i; ++j) den += wp[i * C + j];
      if (!(den > 0)) {
        // no key has weight yet: the output is the constant 0 and gets no gradient
        // (g / tiny would overflow, and inf times a zero weight is NaN)
        for (int64_t d = 0; d <= D; ++d) gap[i * D1 + d] = 0;
        continue;
      }
      den = std::max(den, tiny);
      T dot = 0;
      for (int64_t d = 0; d < D; ++d) {
        gap[i * D1 + d] = gp[i * D + d] / den;
        dot += gp[i * D + d] * op[i * D + d];
      }
      gap[i * D1 + D] = -dot / den;
    }
    Tensor gc = ga.narrow(0, t0, len);
    at::mm_out(bc, gc, vc.t());
    apply_causal_decay<T>(bc.data_ptr<T>(), C, len, l + t0, c + t0, key_scratch);
    Tensor dqc = dq.narrow(0, t0, len);
    at::mm_out(dqc, bc, kc);
    if (t0 > 0) {
      Tensor tc = tmp.narrow(0, 0, len).narrow(1, 0, M);
      at::mm_out(tc, gc, S.t());
      scale_rows<T>(tc.data_ptr<T>(), tmp.size(1), len, M, decay.data());
      dqc.add_(tc);
    }
    const T c_end = c[t0 + len - 1];
    Tensor kwc = kw.narrow(0, 0, len);
    kwc.copy_(kc);
    for (int64_t i = 0; i < len; ++i) decay[i] = exp_diff(l[t0 + i], c_end);
    scale_rows<T>(kwc.data_ptr<T>(), M, len, M, decay.data());
    S.mul_(exp_diff(c_prev, c_end));
    S.addmm_(kwc.t(), vc);
    c_prev = c_end;
  }
  // reverse scan: U_t = sum_{r >= t} exp(c_t - c_r) q_r ga_r^T, kept at the scale of
  // the first position after the current chunk
  Tensor U = at::zeros({M, D1}, opts);
  T c_next = -std::numeric_limits<T>::infinity();
  const int64_t last = ((L - 1) / C) * C;
  for (int64_t t0 = last; t0 >= 0; t0 -= C) {
    const int64_t len = std::min(C, L - t0);
    Tensor qc = x.q.narrow(0, t0, len), kc = x.k.narrow(0, t0, len), vc = x.v.narrow(0, t0, len);
    Tensor gc = ga.narrow(0, t0, len);
    Tensor wc = w.narrow(0, 0, len).narrow(1, 0, len), bc = b.narrow(0, 0, len).narrow(1, 0, len);
    at::mm_out(wc, qc, kc.t());
    apply_causal_decay<T>(wc.data_ptr<T>(), C, len, l + t0, c + t0, key_scratch);
    at::mm_out(bc, gc, vc.t());
    apply_causal_decay<T>(bc.data_ptr<T>(), C, len, l + t0, c + t0, key_scratch);
    Tensor dkc = dk.narrow(0, t0, len), dvc = dv.narrow(0, t0, len);
    at::mm_out(dkc, bc.t(), qc);
    at::mm_out(dvc, wc.t(), gc.narrow(1, 0, D));
    if (t0 != last) {
      for (int64_t i = 0; i < len; ++i) decay[i] = exp_diff(l[t0 + i], c_next);
      Tensor tk = tmp.narrow(0, 0, len).narrow(1, 0, M);
      at::mm_out(tk, vc, U.t());
      scale_rows<T>(tk.data_ptr<T>(), tmp.size(1), len, M, decay.data());
      dkc.add_(tk);
      Tensor tv = tmp.narrow(0, 0, len).narrow(1, 0, D);
      at::mm_out(tv, kc, U.narrow(1, 0, D));
      scale_rows<T>(tv.data_ptr<T>(), tmp.size(1), len, D, decay.data());
      dvc.add_(tv);
    }
    const T c_first = c[t0];
    Tensor qwc = kw.narrow(0, 0, len);
    qwc.copy_(qc);
    for (int64_t i = 0; i < len; ++i) decay[i] = exp_diff(c_first, c[t0 + i]);
    scale_rows<T>(qwc.data_ptr<T>(), M, len, M, decay.data());
    U.mul_(exp_diff(c_first, c_next));
    U.addmm_(qwc.t(), gc);
    c_next = c_first;
  }
  // d l_s = k_s . dk_s: scaling a key's feature by exp(l) scales its weight
  at::sum_out(dl, x.k * dk, {1});
}

Views sequence_views(
    const Tensor& q, const Tensor& k, const Tensor& va, const Tensor& l, const Tensor& c, int64_t i) {
  return Views{q[i], k[i], va[i], l[i], c[i]};
}

struct Prepared {
  Tensor q, k, v, l, c;  // [B, L, M], [B, L, M], [B, L, D] or [B, L, D+1], [B, L], [B, L] in the accumulation dtype
};

// with_ones: append a column of ones to v, whose running sums are the normaliser (backward)
Prepared prepare(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_scale, const AttnShape& s, bool with_ones) {
  const auto acc = accumulate_type(q.scalar_type());
  Prepared p;
  p.q = q.reshape({s.batch, s.L, s.M}).to(acc).contiguous();
  p.k = k.reshape({s.batch, s.L, s.M}).to(acc).contiguous();
  auto vv = v.reshape({s.batch, s.L, s.D}).to(acc);
  p.v = with_ones ? at::cat({vv, at::ones({s.batch, s.L, 1}, vv.options())}, 2).contiguous() : vv.contiguous();
  p.l = log_scale.reshape({s.batch, s.L}).to(acc).contiguous();
  p.c = std::get<0>(at::cummax(p.l, 1)).contiguous();
  return p;
}

Tensor causal_linear_attention_cpu(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_scale, int64_t chunk) {
  const auto s = check_attention_inputs(q, k, v, log_scale, chunk, "causal_linear_attention");
  TORCH_CHECK(q.device().is_cpu(), "causal_linear_attention (CPU kernel): expected CPU tensors, got ", q.device());
  auto out_shape = v.sizes().vec();
  if (s.batch == 0 || s.L == 0 || s.D == 0) return at::zeros(out_shape, v.options());
  auto p = prepare(q, k, v, log_scale, s, /*with_ones=*/false);
  Tensor out = at::empty({s.batch, s.L, s.D}, p.q.options());
  AT_DISPATCH_FLOATING_TYPES(p.q.scalar_type(), "causal_linear_attention_cpu", [&] {
    at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        Tensor o = out[i];
        const Views x = sequence_views(p.q, p.k, p.v, p.l, p.c, i);
        const scalar_t* l = x.l.data_ptr<scalar_t>();
        const scalar_t* c = x.c.data_ptr<scalar_t>();
        auto given = [&](int64_t t0, int64_t len) {
          return ChunkInputs<scalar_t>{x.q.narrow(0, t0, len), x.k.narrow(0, t0, len), l + t0, c + t0};
        };
        forward_scan<scalar_t>(given, x.v, o, s.M, chunk);
      }
    });
  });
  return out.to(v.scalar_type()).reshape(out_shape);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> causal_linear_attention_backward_cpu(
    const Tensor& grad_out,
    const Tensor& q,
    const Tensor& k,
    const Tensor& v,
    const Tensor& log_scale,
    const Tensor& out,
    int64_t chunk) {
  const auto s = check_attention_inputs(q, k, v, log_scale, chunk, "causal_linear_attention_backward");
  TORCH_CHECK(
      grad_out.sizes() == v.sizes() && out.sizes() == v.sizes(),
      "causal_linear_attention_backward: expected grad_out and out of the shape of v ", v.sizes(),
      ", got ", grad_out.sizes(), " and ", out.sizes());
  const auto acc = accumulate_type(q.scalar_type());
  Tensor dq = at::zeros({s.batch, s.L, s.M}, q.options().dtype(acc));
  Tensor dk = at::zeros_like(dq);
  Tensor dv = at::zeros({s.batch, s.L, s.D}, q.options().dtype(acc));
  Tensor dl = at::zeros({s.batch, s.L}, q.options().dtype(acc));
  if (s.batch > 0 && s.L > 0 && s.M > 0) {
    auto p = prepare(q, k, v, log_scale, s, /*with_ones=*/true);
    Tensor g = grad_out.reshape({s.batch, s.L, s.D}).to(acc).contiguous();
    Tensor o = out.reshape({s.batch, s.L, s.D}).to(acc).contiguous();
    AT_DISPATCH_FLOATING_TYPES(p.q.scalar_type(), "causal_linear_attention_backward_cpu", [&] {
      at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          Tensor dqi = dq[i], dki = dk[i], dvi = dv[i], dli = dl[i];
          backward_sequence<scalar_t>(
              sequence_views(p.q, p.k, p.v, p.l, p.c, i), g[i], o[i], dqi, dki, dvi, dli, chunk);
        }
      });
    });
  }
  return {
      dq.to(q.scalar_type()).reshape(q.sizes()),
      dk.to(k.scalar_type()).reshape(k.sizes()),
      dv.to(v.scalar_type()).reshape(v.sizes()),
      dl.to(log_scale.scalar_type()).reshape(log_scale.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(llmppl, CPU, m) {
  m.impl("causal_linear_attention", &causal_linear_attention_cpu);
  m.impl("causal_linear_attention_backward", &causal_linear_attention_backward_cpu);
}

}  // namespace llmppl
