// Causal FAVOR+ linear attention on CUDA: the same functions as
// cpu/causal_linear_attention_kernel.cpp, computed as a per-step scan.
//
// Forward and backward are all one recurrence over time on an [M, D+1] state,
//   R_t = decay_t * R_{t-1} + in_t * a_t b_t^T,     out_t = out_scale_t * R_t p_t,
// run forwards (running sum S, for out, den and dq) or backwards (U, for dk and dv).
// The state rows are independent, so one generic kernel does all four: each warp
// takes one sequence, 32 indices i of the "own" vector a (one per lane) and a 32-wide
// tile of the "loop" dimension; each lane keeps its row R[i, tile] in registers, so
// the product with p is a sum inside the lane (no shuffles), and the partial sums of
// the loop tiles meet through a float32 (float64 for float64 inputs) atomicAdd into
// a zeroed buffer. A scan is latency-bound with few warps in all, so each block is
// one warp: the warps spread over every SM.
//
// Every exponent is <= 0: key s enters step t as exp(l_s - c_s) * prod exp(c_{r-1} - c_r)
// = exp(l_s - c_t) with c the running maximum of l, so no weight can overflow, and a
// weight with c = -inf (nothing but masked keys so far) is 0, never NaN. The backward
// recomputes every running sum with its own scan; no state is recovered by subtraction.
//
// `chunk` is a speed knob of the CPU kernel; it is checked here but not used.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../favor_common.h"

namespace llmppl {
namespace {

using at::Tensor;

constexpr int kTile = 32;         // loop-dimension entries of the state per thread (registers)
constexpr int kSteps = 32;        // time steps staged in shared memory per __syncthreads pair
constexpr int kThreads = 32;      // own-dimension entries per block: one warp
constexpr int64_t kMaxGridYZ = 65535;

// Rows of an [B, L, stride] contiguous tensor read as vectors of length size():
// the first `width` columns, then, with ones_col, a virtual column of ones. That
// gives va = [v, 1] (whose last column accumulates the denominator) without a copy,
// a "den only" operand (width 0, ones_col), and ga[:, :D] (width D of stride D+1).
template <typename T>
struct Operand {
  const T* data;
  int64_t stride;
  int64_t width;
  bool ones_col;

  __host__ __device__ int64_t size() const { return width + (ones_col ? 1 : 0); }

  template <typename acc_t>
  __device__ acc_t load(int64_t row, int64_t j) const {
    if (j < width) return static_cast<acc_t>(data[row * stride + j]);
    return (ones_col && j == width) ? acc_t(1) : acc_t(0);
  }
};

template <typename T>
Operand<T> operand(const Tensor& t /* [B, L, stride] contiguous */, int64_t width, bool ones_col) {
  TORCH_INTERNAL_ASSERT(t.is_contiguous() && t.dim() == 3 && width <= t.size(2));
  return Operand<T>{t.data_ptr<T>(), t.size(2), width, ones_col};
}

// One block of kThreads: one sequence b (blockIdx.x), kThreads own indices
// (blockIdx.y), one tile of kTile loop indices (blockIdx.z). Steps run t = 0..L-1,
// or L-1..0 if reverse. out [B, L, own.size()] must be zeroed when gridDim.z > 1
// (the tiles add up).
template <typename acc_t, typename own_t, typename b_t, typename p_t>
__global__ void scan_kernel(
    Operand<own_t> own,
    Operand<b_t> lb,
    Operand<p_t> lp,
    const acc_t* __restrict__ decay,      // [B, L] factor on the state before step t adds to it
    const acc_t* __restrict__ in_scale,   // [B, L] or null: factor on a_t b_t^T
    const acc_t* __restrict__ out_scale,  // [B, L] or null: factor on the output at t
    acc_t* __restrict__ out,
    int64_t L,
    bool reverse) {
  __shared__ acc_t b_s[kSteps][kTile];
  __shared__ acc_t p_s[kSteps][kTile];
  __shared__ acc_t own_s[kSteps][kThreads];
  __shared__ acc_t decay_s[kSteps];
  __shared__ acc_t in_s[kSteps];
  __shared__ acc_t out_s[kSteps];

  const int64_t b = blockIdx.x;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  const int64_t j0 = static_cast<int64_t>(blockIdx.z) * kTile;
  const int64_t n_own = own.size();
  const int64_t n_loop = lb.size();
  // Lanes past the end still help stage shared memory and reach every barrier.
  const bool active = i < n_own;
  const bool accumulate = gridDim.z > 1;

  acc_t R[kTile];
#pragma unroll
  for (int r = 0; r < kTile; ++r) R[r] = acc_t(0);

  for (int64_t n0 = 0; n0 < L; n0 += kSteps) {
    const int steps = static_cast<int>(L - n0 < kSteps ? L - n0 : kSteps);
    __syncthreads();  // everyone is done with the previous steps' shared memory
    for (int idx = threadIdx.x; idx < kSteps * kTile; idx += kThreads) {
      const int tt = idx / kTile;
      const int r = idx % kTile;
      const int64_t j = j0 + r;
      acc_t bv = acc_t(0), pv = acc_t(0);  // zero padding keeps the tail tile exact
      if (tt < steps && j < n_loop) {
        const int64_t t = reverse ? L - 1 - (n0 + tt) : n0 + tt;
        bv = lb.template load<acc_t>(b * L + t, j);
        pv = lp.template load<acc_t>(b * L + t, j);
      }
      b_s[tt][r] = bv;
      p_s[tt][r] = pv;
    }
    for (int tt = threadIdx.x; tt < steps; tt += kThreads) {
      const int64_t row = b * L + (reverse ? L - 1 - (n0 + tt) : n0 + tt);
      decay_s[tt] = decay[row];
      in_s[tt] = in_scale != nullptr ? in_scale[row] : acc_t(1);
      out_s[tt] = out_scale != nullptr ? out_scale[row] : acc_t(1);
    }
    // This lane's own entries for all the steps, loaded up front so that the loads
    // overlap instead of stalling the scan one step at a time.
    for (int tt = 0; tt < steps; ++tt) {
      const int64_t row = b * L + (reverse ? L - 1 - (n0 + tt) : n0 + tt);
      own_s[tt][threadIdx.x] = active ? own.template load<acc_t>(row, i) : acc_t(0);
    }
    __syncthreads();

    for (int tt = 0; tt < steps; ++tt) {
      const int64_t row = b * L + (reverse ? L - 1 - (n0 + tt) : n0 + tt);
      const acc_t a = own_s[tt][threadIdx.x] * in_s[tt];
      const acc_t d = decay_s[tt];
      acc_t sum = acc_t(0);
#pragma unroll
      for (int r = 0; r < kTile; ++r) {
        R[r] = d * R[r] + a * b_s[tt][r];
        sum += p_s[tt][r] * R[r];
      }
      if (active) {
        acc_t* dst = out + row * n_own + i;
        sum *= out_s[tt];
        if (accumulate) {
          atomicAdd(dst, sum);
        } else {
          *dst = sum;
        }
      }
    }
  }
}

template <typename acc_t, typename own_t, typename b_t, typename p_t>
void launch_scan(
    const Operand<own_t>& own,
    const Operand<b_t>& lb,
    const Operand<p_t>& lp,
    const Tensor& decay,
    const Tensor* in_scale,
    const Tensor* out_scale,
    Tensor& out /* [B, L, own.size()], zeroed */,
    bool reverse) {
  const int64_t batch = decay.size(0), L = decay.size(1);
  const int64_t n_own = own.size(), n_loop = lb.size();
  TORCH_INTERNAL_ASSERT(lp.size() == n_loop);
  TORCH_INTERNAL_ASSERT(out.is_contiguous() && out.numel() == batch * L * n_own);
  if (batch == 0 || L == 0 || n_own == 0 || n_loop == 0) return;  // nothing to add: out stays 0
  const int64_t own_blocks = (n_own + kThreads - 1) / kThreads;
  const int64_t loop_tiles = (n_loop + kTile - 1) / kTile;
  TORCH_CHECK(
      batch <= std::numeric_limits<int32_t>::max() && own_blocks <= kMaxGridYZ && loop_tiles <= kMaxGridYZ,
      "causal_linear_attention (CUDA kernel): sizes too large for one launch: batch ", batch, ", ",
      n_own, " x ", n_loop, " state");
  const dim3 grid(
      static_cast<unsigned>(batch), static_cast<unsigned>(own_blocks), static_cast<unsigned>(loop_tiles));
  scan_kernel<acc_t, own_t, b_t, p_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      own,
      lb,
      lp,
      decay.data_ptr<acc_t>(),
      in_scale != nullptr ? in_scale->data_ptr<acc_t>() : nullptr,
      out_scale != nullptr ? out_scale->data_ptr<acc_t>() : nullptr,
      out.data_ptr<acc_t>(),
      L,
      reverse);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out[row, d] = numden[row, d] / max(numden[row, D], tiny), cast to the output dtype;
// tiny is the smallest normal number of the accumulation dtype, as on the CPU.
template <typename scalar_t, typename acc_t>
__global__ void normalise_kernel(
    const acc_t* __restrict__ numden /* [rows, D+1] */,
    scalar_t* __restrict__ out /* [rows, D] */,
    int64_t rows,
    int64_t D,
    acc_t tiny) {
  const int64_t n = rows * D;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += step) {
    const int64_t row = idx / D, d = idx % D;
    acc_t den = numden[row * (D + 1) + D];
    den = den > tiny ? den : tiny;
    out[idx] = static_cast<scalar_t>(numden[row * (D + 1) + d] / den);
  }
}

// Per-position scalars of the scans, in the accumulation dtype, [B, L] each.
struct Scales {
  Tensor c;            // c_t = max_{s<=t} l_s
  Tensor w;            // exp(l_t - c_t): a key's weight at its own step
  Tensor decay_fwd;    // exp(c_{t-1} - c_t), 0 at t = 0
  Tensor decay_rev;    // exp(c_t - c_{t+1}), 0 at t = L-1
};

// exp(a - b) with b = -inf giving 0: where() keeps the NaN of (-inf) - (-inf) out.
Tensor exp_diff(const Tensor& a, const Tensor& b) {
  return at::where(at::isneginf(b), at::zeros_like(a), (a - b).exp());
}

Scales scales(const Tensor& l /* [B, L] acc dtype */) {
  const int64_t B = l.size(0), L = l.size(1);
  const Tensor c = std::get<0>(at::cummax(l, 1));
  const auto inf = std::numeric_limits<double>::infinity();
  Scales s;
  s.c = c;
  s.w = exp_diff(l, c).contiguous();
  const Tensor c_prev = at::cat({at::full({B, 1}, -inf, c.options()), c.narrow(1, 0, L - 1)}, 1);
  s.decay_fwd = exp_diff(c_prev, c).contiguous();
  // +inf after the end: exp(c - inf) = 0 ends the reverse scan's (empty) state.
  const Tensor c_next = at::cat({c.narrow(1, 1, L - 1), at::full({B, 1}, inf, c.options())}, 1);
  s.decay_rev = exp_diff(c, c_next).contiguous();
  return s;
}

void check_cuda(const Tensor& q, const char* op) {
  TORCH_CHECK(q.is_cuda(), op, " (CUDA kernel): expected CUDA tensors, got ", q.device());
}

Tensor causal_linear_attention_cuda(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_scale, int64_t chunk) {
  const auto s = check_attention_inputs(q, k, v, log_scale, chunk, "causal_linear_attention");
  check_cuda(q, "causal_linear_attention");
  const c10::cuda::CUDAGuard guard(q.device());
  if (s.batch == 0 || s.L == 0 || s.D == 0) return at::zeros(v.sizes(), v.options());

  const auto acc = accumulate_type(q.scalar_type());
  const Tensor qc = q.reshape({s.batch, s.L, s.M}).contiguous();
  const Tensor kc = k.reshape({s.batch, s.L, s.M}).contiguous();
  const Tensor vc = v.reshape({s.batch, s.L, s.D}).contiguous();
  const Scales sc = scales(log_scale.reshape({s.batch, s.L}).to(acc).contiguous());
  Tensor numden = at::zeros({s.batch, s.L, s.D + 1}, q.options().dtype(acc));
  Tensor out = at::empty({s.batch, s.L, s.D}, v.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "causal_linear_attention_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    TORCH_INTERNAL_ASSERT(c10::CppTypeToScalarType<acc_t>::value == acc);
    // S_t[m, j] = sum_{s<=t} exp(l_s - c_t) k_s[m] va_s[j];  numden_t[j] = sum_m q_t[m] S_t[m, j]
    launch_scan<acc_t>(
        operand<scalar_t>(vc, s.D, /*ones_col=*/true),
        operand<scalar_t>(kc, s.M, false),
        operand<scalar_t>(qc, s.M, false),
        sc.decay_fwd,
        &sc.w,
        nullptr,
        numden,
        /*reverse=*/false);
    const int64_t n = s.batch * s.L * s.D;
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535);
    normalise_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        numden.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), s.batch * s.L, s.D, std::numeric_limits<acc_t>::min());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.reshape(v.sizes());
}

std::tuple<Tensor, Tensor, Tensor, Tensor> causal_linear_attention_backward_cuda(
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
  TORCH_CHECK(
      grad_out.device() == q.device() && out.device() == q.device(),
      "causal_linear_attention_backward: expected grad_out and out on ", q.device(), ", got ",
      grad_out.device(), " and ", out.device());
  check_cuda(q, "causal_linear_attention_backward");
  const c10::cuda::CUDAGuard guard(q.device());

  const auto acc = accumulate_type(q.scalar_type());
  Tensor dq = at::zeros({s.batch, s.L, s.M}, q.options().dtype(acc));
  Tensor dk = at::zeros_like(dq);
  Tensor dv = at::zeros({s.batch, s.L, s.D}, q.options().dtype(acc));
  Tensor dl = at::zeros({s.batch, s.L}, q.options().dtype(acc));
  if (s.batch > 0 && s.L > 0 && s.M > 0) {
    const Tensor qc = q.reshape({s.batch, s.L, s.M}).contiguous();
    const Tensor kc = k.reshape({s.batch, s.L, s.M}).contiguous();
    const Tensor vc = v.reshape({s.batch, s.L, s.D}).contiguous();
    const Scales sc = scales(log_scale.reshape({s.batch, s.L}).to(acc).contiguous());
    Tensor den = at::zeros({s.batch, s.L, 1}, q.options().dtype(acc));

    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, q.scalar_type(), "causal_linear_attention_backward_cuda", [&] {
          using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
          TORCH_INTERNAL_ASSERT(c10::CppTypeToScalarType<acc_t>::value == acc);
          const auto va = operand<scalar_t>(vc, s.D, /*ones_col=*/true);  // [v, 1]
          const auto qo = operand<scalar_t>(qc, s.M, false);
          const auto ko = operand<scalar_t>(kc, s.M, false);

          // den_t, recomputed by the forward scan restricted to the ones column.
          launch_scan<acc_t>(
              operand<scalar_t>(vc, 0, /*ones_col=*/true), ko, qo, sc.decay_fwd, &sc.w, nullptr, den, false);

          // ga_t = [g_t / den_t, -(g_t . out_t) / den_t]: the gradient of (num_t, den_t).
          const Tensor den_c = den.clamp_min(std::numeric_limits<acc_t>::min());
          const Tensor g = grad_out.reshape({s.batch, s.L, s.D}).to(acc);
          const Tensor o = out.reshape({s.batch, s.L, s.D}).to(acc);
          // Where c_t = -inf every key so far is masked: out_t is the constant 0, so ga_t
          // is 0, not g_t / FLT_MIN, which may overflow and turn 0 weights into NaN.
          const Tensor ga = at::where(
                                at::isneginf(sc.c).unsqueeze(2),
                                at::zeros({}, g.options()),
                                at::cat({g / den_c, -(g * o).sum(2, /*keepdim=*/true) / den_c}, 2))
                                .contiguous();
          const auto gao = operand<acc_t>(ga, s.D + 1, false);

          // dq_t[m] = sum_j ga_t[j] S_t[m, j]  (forward scan, thread per feature m)
          launch_scan<acc_t>(ko, va, gao, sc.decay_fwd, &sc.w, nullptr, dq, false);
          // U_s[m, j] = sum_{t>=s} exp(c_s - c_t) q_t[m] ga_t[j]  (reverse scans)
          // dk_s[m] = exp(l_s - c_s) sum_j U_s[m, j] va_s[j]
          launch_scan<acc_t>(qo, gao, va, sc.decay_rev, nullptr, &sc.w, dk, true);
          // dv_s[j] = exp(l_s - c_s) sum_m k_s[m] U_s[m, j], j < D
          launch_scan<acc_t>(
              operand<acc_t>(ga, s.D, false), qo, ko, sc.decay_rev, nullptr, &sc.w, dv, true);
        });
    // d l_s = k_s . dk_s: scaling a key's feature by exp(l) scales its weight
    dl = (kc.to(acc) * dk).sum(2);
  }
  return {
      dq.to(q.scalar_type()).reshape(q.sizes()),
      dk.to(k.scalar_type()).reshape(k.sizes()),
      dv.to(v.scalar_type()).reshape(v.sizes()),
      dl.to(log_scale.scalar_type()).reshape(log_scale.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(llmppl, CUDA, m) {
  m.impl("causal_linear_attention", &causal_linear_attention_cuda);
  m.impl("causal_linear_attention_backward", &causal_linear_attention_backward_cuda);
}

}  // namespace llmppl
