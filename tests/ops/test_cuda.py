"""The CUDA kernels of the causal linear-attention op against the CPU kernel.

The CPU kernel is tested against the definition in ``test_linear_attention.py``; here
the CUDA kernel must compute the same functions: forward and backward, float64,
float32 and half precision, ragged sizes, empty inputs and ``-inf`` log-scales.
Everything skips without a GPU.
"""

import math

import pytest
import torch

from llmppl import ops
from llmppl.ops import _extension

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.filterwarnings("ignore:llmppl. could not build:RuntimeWarning"),
]

# (lead, L, M, D): lengths and widths that are multiples of nothing, one and two tiles
# of 32 state entries, D + 1 across a tile boundary, L across the 32 staged steps.
SHAPES = [
    ((1, 1), 1, 1, 1),
    ((2, 3), 7, 5, 3),
    ((1, 2), 33, 32, 31),
    ((2, 2), 65, 33, 32),
    ((3,), 100, 70, 64),
    ((1, 1), 257, 17, 65),
]


def inputs(lead, L, M, D, *, dtype=torch.float32, scale=3.0, seed=0):
    """CPU inputs built in float64 from one seed, then cast (log-scales stay float32/64)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(*lead, L, M, generator=g, dtype=torch.float64) + 0.01
    k = torch.rand(*lead, L, M, generator=g, dtype=torch.float64) + 0.01
    v = torch.randn(*lead, L, D, generator=g, dtype=torch.float64)
    ls = torch.randn(*lead, L, generator=g, dtype=torch.float64) * scale
    return q.to(dtype), k.to(dtype), v.to(dtype), ls.to(torch.float64 if dtype == torch.float64 else torch.float32)


def cuda(*tensors):
    return tuple(t.cuda() for t in tensors)


def assert_close_rel(actual, expected, rtol, atol=1e-6):
    """Max error at most ``rtol`` times the largest entry of ``expected``, plus ``atol``.

    ``atol`` is for gradients that are exactly 0 in exact arithmetic (one key: the output
    does not depend on q, k or the log-scale), where the CPU gets 0 and the GPU 5e-8.
    """
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "non-finite values"
    scale = expected.double().abs().max()
    err = (actual.double().cpu() - expected.double().cpu()).abs().max()
    assert err <= rtol * scale + atol, f"max error {err:.3g} > {rtol} x {scale:.3g} + {atol}"


@pytest.fixture(scope="module")
def ops_cuda():
    """The compiled ops, with the CUDA kernels: a GPU without them is a failure, not a skip."""
    if not ops.extension_available():
        pytest.skip("C++ extension not built")
    if not _extension.has_cuda_kernels():
        pytest.fail("a GPU is present but the extension was built without its CUDA kernels (is nvcc on PATH?)")
    return torch.ops.llmppl


def backward_both(op, g, q, k, v, ls, chunk=16):
    """The backward op on the CPU and on CUDA, from the CPU forward's output."""
    out = op.causal_linear_attention(q, k, v, ls, chunk)
    cpu = op.causal_linear_attention_backward(g, q, k, v, ls, out, chunk)
    gpu = op.causal_linear_attention_backward(*cuda(g, q, k, v, ls, out), chunk)
    return cpu, gpu


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_float32_matches_cpu(ops_cuda, shape):
    q, k, v, ls = inputs(*shape)
    expected = ops_cuda.causal_linear_attention(q, k, v, ls, 16)
    got = ops_cuda.causal_linear_attention(*cuda(q, k, v, ls), 16)
    assert got.is_cuda and got.dtype == torch.float32
    assert_close_rel(got, expected, 1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_float64_matches_cpu(ops_cuda, shape):
    q, k, v, ls = inputs(*shape, dtype=torch.float64)
    expected = ops_cuda.causal_linear_attention(q, k, v, ls, 16)
    torch.testing.assert_close(
        ops_cuda.causal_linear_attention(*cuda(q, k, v, ls), 16).cpu(), expected, rtol=1e-12, atol=1e-12
    )


def test_public_wrapper_runs_the_cuda_kernel(ops_cuda):
    q, k, v, ls = inputs((2, 2), 50, 20, 8)
    got = ops.causal_linear_attention(*cuda(q, k, v, ls))
    assert got.is_cuda
    assert_close_rel(got, ops.causal_linear_attention(q, k, v, ls), 1e-5)
    # no log-scale: the wrapper makes zeros on the inputs' device
    assert_close_rel(ops.causal_linear_attention(*cuda(q, k, v)), ops.causal_linear_attention(q, k, v), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_float32(ops_cuda, dtype):
    q, k, v, ls = inputs((1, 4), 300, 32, 16)
    expected = ops_cuda.causal_linear_attention(q, k, v, ls, 64)
    got = ops_cuda.causal_linear_attention(*cuda(q.to(dtype), k.to(dtype), v.to(dtype), ls), 64)
    assert got.dtype == dtype
    assert_close_rel(got.float(), expected, 1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_backward_matches_float32(ops_cuda, dtype):
    q, k, v, ls = inputs((1, 2), 120, 40, 16)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    g = torch.randn(v.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    # the float32 truth from the same rounded inputs
    up = [t.float() for t in (g, q, k, v)]
    out32 = ops_cuda.causal_linear_attention(*up[1:], ls, 16)
    expected = ops_cuda.causal_linear_attention_backward(*up, ls, out32, 16)
    out = ops_cuda.causal_linear_attention(*cuda(q, k, v, ls), 16)
    got = ops_cuda.causal_linear_attention_backward(*cuda(g, q, k, v, ls), out, 16)
    rtol = 1e-2 if dtype == torch.float16 else 4e-2
    for a, b, x in zip(got, expected, (q, k, v, ls), strict=True):
        assert a.dtype == x.dtype
        assert_close_rel(a.float(), b, rtol)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_cpu(ops_cuda, shape):
    q, k, v, ls = inputs(*shape)
    g = torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
    cpu, gpu = backward_both(ops_cuda, g, q, k, v, ls)
    for a, b, name in zip(gpu, cpu, ("dq", "dk", "dv", "dl"), strict=True):
        assert a.is_cuda and a.dtype == b.dtype, name
        assert_close_rel(a, b, 1e-4)


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_backward_float64_matches_cpu(ops_cuda, shape):
    q, k, v, ls = inputs(*shape, dtype=torch.float64)
    g = torch.randn(v.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cpu, gpu = backward_both(ops_cuda, g, q, k, v, ls)
    for a, b in zip(gpu, cpu, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-10)


def test_autograd_gradients_match_cpu(ops_cuda):
    # Both float32 results against a float64 CPU reference: the GPU may be off by more
    # than the CPU (other summation order), but not by much more.
    q, k, v, ls = inputs((2, 2), 90, 40, 7)
    weights = torch.linspace(-1, 1, 7, dtype=torch.float64)

    def grads(device, dtype):
        # a copy each time: `t.to(...)` of a tensor already there is `t` itself, and a
        # leaf of one call would collect the next call's gradients (and `.to("cuda")` of
        # it would be no leaf at all: the first H200 run's failure, `.grad` None)
        xs = [t.detach().to(device, dtype, copy=True).requires_grad_() for t in (q, k, v, ls)]
        (ops.causal_linear_attention(*xs, chunk=16) * weights.to(device, dtype)).sum().backward()
        return [x.grad.double().cpu() for x in xs]

    exact, cpu, gpu = grads("cpu", torch.float64), grads("cpu", torch.float32), grads("cuda", torch.float32)
    for name, e, c, g in zip(("q", "k", "v", "log_scale"), exact, cpu, gpu, strict=True):
        assert torch.isfinite(g).all(), f"d/d{name}: non-finite on the GPU"
        scale = e.abs().max().item()
        err_cpu, err_gpu = (c - e).abs().max().item(), (g - e).abs().max().item()
        assert err_gpu <= 10 * err_cpu + 1e-5 * scale + 1e-6, (
            f"d/d{name}: GPU error {err_gpu:.3g}, CPU error {err_cpu:.3g} (vs float64; largest entry {scale:.3g})"
        )


def test_gradcheck_float64(ops_cuda):
    # M > 32 and D + 1 > 32: two state tiles each way, so the atomic path is checked too
    q, k, v, ls = inputs((1, 1), 37, 35, 33, dtype=torch.float64)
    ls[..., 10:12] = -math.inf
    xs = [t.cuda().requires_grad_() for t in (q, k, v, ls)]
    assert torch.autograd.gradcheck(lambda *a: ops.causal_linear_attention(*a, chunk=8), xs, fast_mode=True)
    small = [t.cuda().requires_grad_() for t in inputs((1, 2), 13, 6, 3, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: ops.causal_linear_attention(*a, chunk=4), small)


def test_opcheck(ops_cuda):
    q, k, v, ls = cuda(*inputs((1, 2), 20, 8, 3))
    torch.library.opcheck(ops_cuda.causal_linear_attention.default, (q, k, v, ls, 8))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    torch.library.opcheck(ops_cuda.causal_linear_attention.default, (qg, kg, vg, ls, 8))
    out = ops_cuda.causal_linear_attention(q, k, v, ls, 8)
    torch.library.opcheck(
        ops_cuda.causal_linear_attention_backward.default, (torch.randn_like(out), q, k, v, ls, out, 8)
    )


@pytest.mark.parametrize(
    "lead, L, M, D",
    [((0, 2), 9, 8, 5), ((1, 2), 0, 8, 5), ((1, 2), 9, 0, 5), ((1, 2), 9, 8, 0)],
    ids=["empty-batch", "empty-length", "no-features", "no-values"],
)
def test_empty_inputs_match_cpu(ops_cuda, lead, L, M, D):
    q, k, v, ls = inputs(lead, L, M, D)
    expected = ops_cuda.causal_linear_attention(q, k, v, ls, 64)
    got = ops_cuda.causal_linear_attention(*cuda(q, k, v, ls), 64)
    assert got.shape == v.shape and got.is_cuda
    torch.testing.assert_close(got.cpu(), expected)
    g = torch.ones_like(v)
    cpu, gpu = backward_both(ops_cuda, g, q, k, v, ls, chunk=64)
    for a, b in zip(gpu, cpu, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a.cpu(), b)


def test_neg_inf_log_scales_mask_keys_without_nan(ops_cuda):
    q, k, v, ls = inputs((1, 2), 70, 40, 8)
    ls[..., :5] = -math.inf  # leading padding: nothing to attend to yet
    ls[..., 30:40] = -math.inf
    q_, k_, v_, ls_ = cuda(q, k, v, ls)
    out = ops_cuda.causal_linear_attention(q_, k_, v_, ls_, 16)
    assert torch.isfinite(out).all()
    assert (out[..., :5, :] == 0).all()
    assert_close_rel(out, ops_cuda.causal_linear_attention(q, k, v, ls, 16), 1e-5)
    # a large upstream gradient at the fully masked positions must not become NaN
    g = torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) * 100
    dq, dk, dv, dl = ops_cuda.causal_linear_attention_backward(g.cuda(), q_, k_, v_, ls_, out, 16)
    for grad in (dq, dk, dv, dl):
        assert torch.isfinite(grad).all()
    assert (dq[..., :5, :] == 0).all()  # a masked-out prefix does not depend on the queries
    for masked in (slice(0, 5), slice(30, 40)):
        assert (dk[..., masked, :] == 0).all() and (dv[..., masked, :] == 0).all() and (dl[..., masked] == 0).all()


def test_neg_inf_log_scales_backward_matches_cpu(ops_cuda):
    q, k, v, ls = inputs((2, 1), 70, 40, 8)
    ls[0, :, :3] = -math.inf
    ls[..., 30:40] = -math.inf
    g = torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) * 0.1  # keeps the CPU finite
    cpu, gpu = backward_both(ops_cuda, g, q, k, v, ls)
    for a, b in zip(gpu, cpu, strict=True):
        assert_close_rel(a, b, 1e-4)


def test_growing_log_scales_stay_accurate(ops_cuda):
    # the running maximum grows at every step: the decays multiply up over the whole sequence
    q, k, v, ls = inputs((1, 2), 1000, 24, 8, scale=0.1)
    ls = ls + torch.linspace(0, 5, 1000)
    expected = ops_cuda.causal_linear_attention(q.double(), k.double(), v.double(), ls.double(), 64)
    assert_close_rel(ops_cuda.causal_linear_attention(*cuda(q, k, v, ls), 64), expected, 1e-4)


def test_non_contiguous_inputs(ops_cuda):
    q, k, v, ls = cuda(*inputs((3, 2), 40, 16, 8))
    qt, kt, vt = (t.transpose(0, 1) for t in (q, k, v))  # (2, 3, L, *) views
    lst = ls.transpose(0, 1)
    got = ops_cuda.causal_linear_attention(qt, kt, vt, lst, 16)
    expected = ops_cuda.causal_linear_attention(qt.contiguous(), kt.contiguous(), vt.contiguous(), lst.contiguous(), 16)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_float64_log_scale_with_float32_features(ops_cuda):
    q, k, v, ls = inputs((1, 2), 30, 8, 4)
    expected = ops_cuda.causal_linear_attention(q, k, v, ls.double(), 16)
    assert_close_rel(ops_cuda.causal_linear_attention(*cuda(q, k, v, ls.double()), 16), expected, 1e-5)


def test_kernel_checks_its_inputs(ops_cuda):
    q, k, v, ls = cuda(*inputs((1, 2), 9, 8, 4))
    with pytest.raises(RuntimeError, match="k_log_scale"):
        ops_cuda.causal_linear_attention(q, k, v, ls[..., :-1], 64)
    with pytest.raises(RuntimeError, match="chunk >= 1"):
        ops_cuda.causal_linear_attention(q, k, v, ls, 0)
    with pytest.raises(RuntimeError, match="one device"):
        ops_cuda.causal_linear_attention(q, k, v.cpu(), ls, 64)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_runs_on_the_inputs_device(ops_cuda):
    q, k, v, ls = (t.to("cuda:1") for t in inputs((1, 2), 40, 16, 8))
    with torch.cuda.device(0):
        got = ops_cuda.causal_linear_attention(q, k, v, ls, 16)
    assert got.device == torch.device("cuda:1")
    assert_close_rel(got, ops_cuda.causal_linear_attention(q.cpu(), k.cpu(), v.cpu(), ls.cpu(), 16), 1e-5)
