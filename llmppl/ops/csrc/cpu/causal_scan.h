// The causal scan shared by the CPU kernels: chunks of C positions, a masked [C, C]
// product inside a chunk, a running [M, D] state (and [M] normaliser) between chunks,
// every key weighted by exp(l_s - c_t) with c_t the running maximum of the key
// log-scales, so every exponent is <= 0.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <vector>

namespace llmppl {
namespace scan {

using at::Tensor;

template <typename T>
inline T exp_diff(T a, T b) {
  // exp(a - b) for a <= b; b = -inf means "nothing seen yet": weight 0, never NaN.
  if (std::isinf(b) && b < 0) return T(0);
  return std::exp(a - b);
}

// Weights of one chunk, in place: w[i, j] *= exp(l_j - c_i) for j <= i, 0 above.
// Row i is split at the chunk's first running maximum c_0, which no later key affects:
// exp(l_j - c_i) = exp(l_j - c_0) * exp(c_0 - c_i), about 2*len exps instead of
// len^2/2. It is used for the rows whose own maximum c_i is less than kFactorSpan nats
// above c_0, where neither factor overflows (l_j <= c_i for j <= i); other rows take
// exp(l_j - c_i) pair by pair. Both the split and the choice depend only on positions
// <= i, so no future key changes row i, not even through underflow.
template <typename T>
void apply_causal_decay(T* w, int64_t ld, int64_t len, const T* l, const T* c, std::vector<T>& scratch) {
  constexpr T kFactorSpan = T(30);
  const T c0 = c[0];
  T* key = scratch.data();
  bool keys_ready = false;
  for (int64_t i = 0; i < len; ++i) {
    T* row = w + i * ld;
    const bool dead = std::isinf(c[i]) && c[i] < 0;
    if (!dead && c[i] - c0 < kFactorSpan) {  // false when c0 = -inf (nothing seen at the chunk's start)
      if (!keys_ready) {
        for (int64_t j = 0; j < len; ++j) key[j] = std::exp(l[j] - c0);  // used only where finite
        keys_ready = true;
      }
      const T r = std::exp(c0 - c[i]);
      for (int64_t j = 0; j <= i; ++j) row[j] *= key[j] * r;
    } else {
      for (int64_t j = 0; j <= i; ++j) row[j] = dead ? T(0) : row[j] * std::exp(l[j] - c[i]);
    }
    for (int64_t j = i + 1; j < len; ++j) row[j] = T(0);
  }
}

// rows[i, :] *= scale_i
template <typename T>
void scale_rows(T* rows, int64_t ld, int64_t n, int64_t cols, const T* scale) {
  for (int64_t i = 0; i < n; ++i) {
    T* r = rows + i * ld;
    const T s = scale[i];
    for (int64_t j = 0; j < cols; ++j) r[j] *= s;
  }
}

// What the scan needs of one chunk: features [len, M] and, per position, the key
// log-scale and its running maximum.
template <typename T>
struct ChunkInputs {
  Tensor q, k;
  const T* l;
  const T* c;
};

// Writes the normalised output rows of one sequence into out [L, D]; no [L, D+1]
// temporary, so an op's peak memory is little more than its output. `chunk_inputs(t0,
// len)` returns the chunk's ChunkInputs (views of given features, or features computed
// on the spot by the fused op).
template <typename T, typename Provider>
void forward_scan(Provider&& chunk_inputs, const Tensor& v, Tensor& out, int64_t M, int64_t C) {
  const int64_t L = v.size(0), D = v.size(1);
  auto opts = v.options();
  Tensor S = at::zeros({M, D}, opts);
  Tensor z = at::zeros({M}, opts);
  Tensor w = at::empty({C, C}, opts);
  Tensor inter = at::empty({C, D}, opts);
  Tensor qz = at::empty({C}, opts);
  Tensor kw = at::empty({C, M}, opts);
  std::vector<T> decay(C), key_scratch(C), den(C);
  const T tiny = std::numeric_limits<T>::min();
  T c_prev = -std::numeric_limits<T>::infinity();
  for (int64_t t0 = 0; t0 < L; t0 += C) {
    const int64_t len = std::min(C, L - t0);
    const ChunkInputs<T> in = chunk_inputs(t0, len);
    const T* l = in.l;
    const T* c = in.c;
    const Tensor& qc = in.q;
    const Tensor& kc = in.k;
    Tensor vc = v.narrow(0, t0, len);
    Tensor wc = w.narrow(0, 0, len).narrow(1, 0, len);
    Tensor oc = out.narrow(0, t0, len);
    // inside the chunk
    at::mm_out(wc, qc, kc.t());
    apply_causal_decay<T>(wc.data_ptr<T>(), C, len, l, c, key_scratch);
    at::mm_out(oc, wc, vc);
    const T* wp = wc.data_ptr<T>();
    for (int64_t i = 0; i < len; ++i) {
      T sum = 0;
      for (int64_t j = 0; j <= i; ++j) sum += wp[i * C + j];
      den[i] = sum;
    }
    T* op = oc.data_ptr<T>();
    // from the chunks before: exp(c_prev - c_t) * (q_t S, q_t z)
    if (t0 > 0) {
      Tensor ic = inter.narrow(0, 0, len), qzc = qz.narrow(0, 0, len);
      at::mm_out(ic, qc, S);
      at::mv_out(qzc, qc, z);
      const T* ip = ic.data_ptr<T>();
      const T* qzp = qzc.data_ptr<T>();
      for (int64_t i = 0; i < len; ++i) {
        const T r = exp_diff(c_prev, c[i]);
        den[i] += r * qzp[i];
        for (int64_t d = 0; d < D; ++d) op[i * D + d] += r * ip[i * D + d];
      }
    }
    for (int64_t i = 0; i < len; ++i) {
      const T inv = T(1) / std::max(den[i], tiny);
      for (int64_t d = 0; d < D; ++d) op[i * D + d] *= inv;
    }
    // state to the scale of this chunk's last running maximum
    const T c_end = c[len - 1];
    Tensor kwc = kw.narrow(0, 0, len);
    kwc.copy_(kc);
    for (int64_t i = 0; i < len; ++i) decay[i] = exp_diff(l[i], c_end);
    scale_rows<T>(kwc.data_ptr<T>(), M, len, M, decay.data());
    const T r_end = exp_diff(c_prev, c_end);
    S.mul_(r_end).addmm_(kwc.t(), vc);
    z.mul_(r_end).add_(kwc.sum(0));
    c_prev = c_end;
  }
}

}  // namespace scan
}  // namespace llmppl
