"""The causal and non-causal linear-attention ops against their definitions."""

import math

import pytest
import torch

from llmppl import ops
from llmppl.ops import _reference as ref

pytestmark = pytest.mark.filterwarnings("ignore:llmppl. could not build:RuntimeWarning")


def naive_causal(q, k, v, log_scale):
    """The definition, quadratic in L: weight (q_t·k_s)·exp(ℓ_s − c_t) for s ≤ t."""
    c = torch.cummax(log_scale, -1).values
    w = (q @ k.transpose(-1, -2)) * torch.exp(log_scale.unsqueeze(-2) - c.unsqueeze(-1)).tril()
    return (w @ v) / w.sum(-1, keepdim=True)


def inputs(*shape, D=5, dtype=torch.float32, scale=3.0, generator=None):
    *lead, L, M = shape
    g = generator or torch.Generator().manual_seed(hash(shape) % 2**31)
    q = torch.rand(*lead, L, M, generator=g, dtype=torch.float64) + 0.01
    k = torch.rand(*lead, L, M, generator=g, dtype=torch.float64) + 0.01
    v = torch.randn(*lead, L, D, generator=g, dtype=torch.float64)
    ls = torch.randn(*lead, L, generator=g, dtype=torch.float64) * scale
    return (q.to(dtype), k.to(dtype), v.to(dtype), ls.to(torch.float64 if dtype == torch.float64 else torch.float32))


def assert_close_rel(actual, expected, rtol):
    scale = expected.abs().max().clamp_min(1e-30)
    err = (actual.double() - expected.double()).abs().max() / scale
    assert err <= rtol, f"max relative error {err:.3g} > {rtol}"


@pytest.fixture(scope="module")
def kernel():
    if not ops.extension_available():
        pytest.skip("C++ extension not built")
    return torch.ops.llmppl.causal_linear_attention


@pytest.mark.parametrize("L", [1, 7, 63, 64, 65, 200])
@pytest.mark.parametrize("chunk", [16, 64])
def test_reference_matches_definition(L, chunk):
    q, k, v, ls = inputs(2, 3, L, 16, dtype=torch.float64)
    torch.testing.assert_close(ref.causal_linear_attention(q, k, v, ls, chunk=chunk), naive_causal(q, k, v, ls))


@pytest.mark.parametrize("L", [1, 7, 63, 64, 65, 200])
@pytest.mark.parametrize("chunk", [16, 64])
def test_kernel_matches_definition_float64(kernel, L, chunk):
    q, k, v, ls = inputs(2, 3, L, 16, dtype=torch.float64)
    torch.testing.assert_close(kernel(q, k, v, ls, chunk), naive_causal(q, k, v, ls), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_kernel_matches_reference_float32_fresh_inputs(kernel, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    L = int(torch.randint(1, 300, (1,), generator=g))
    M = int(torch.randint(1, 80, (1,), generator=g))
    q, k, v, ls = inputs(2, 2, L, M, D=int(torch.randint(1, 40, (1,), generator=g)), generator=g)
    expected = naive_causal(q.double(), k.double(), v.double(), ls.double())
    assert_close_rel(kernel(q, k, v, ls, 64), expected, 1e-5)
    assert_close_rel(ref.causal_linear_attention(q, k, v, ls), expected, 1e-5)


def test_leading_dims_are_flattened(kernel):
    q, k, v, ls = inputs(2, 3, 4, 20, 8)
    out = ops.causal_linear_attention(q, k, v, ls)
    assert out.shape == v.shape
    torch.testing.assert_close(out[1, 2], ops.causal_linear_attention(q[1, 2], k[1, 2], v[1, 2], ls[1, 2]))


def test_empty_batch_and_empty_length(kernel):
    q, k, v, ls = inputs(0, 2, 9, 8)
    assert ops.causal_linear_attention(q, k, v, ls).shape == (0, 2, 9, 5)
    q, k, v, ls = inputs(1, 2, 0, 8)
    assert ops.causal_linear_attention(q, k, v, ls).shape == (1, 2, 0, 5)


def test_neg_inf_log_scale_masks_keys_without_nan(kernel):
    q, k, v, ls = inputs(1, 2, 70, 8, dtype=torch.float64)
    ls[..., :5] = -math.inf  # leading padding: nothing to attend to yet
    ls[..., 30:40] = -math.inf
    out = kernel(q, k, v, ls, 16)
    assert torch.isfinite(out).all()
    assert (out[..., :5, :] == 0).all()
    # same as zeroing those keys (with a harmless finite log-scale)
    keep = torch.isfinite(ls)
    expected = naive_causal(q, k * keep.unsqueeze(-1), v, torch.where(keep, ls, torch.full_like(ls, -50.0)))
    torch.testing.assert_close(out[..., 5:, :], expected[..., 5:, :])


def test_gradcheck_float64(kernel):
    q, k, v, ls = (t.requires_grad_() for t in inputs(1, 2, 37, 8, D=3, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda *a: ops.causal_linear_attention(*a, chunk=8), (q, k, v, ls))


def test_backward_matches_reference_autograd(kernel):
    q, k, v, ls = inputs(2, 2, 150, 24, D=7, dtype=torch.float64)
    grads = []
    for fn in (
        lambda *a: ops.causal_linear_attention(*a, chunk=32),
        lambda *a: ref.causal_linear_attention(*a, chunk=16),
    ):
        xs = [t.clone().requires_grad_() for t in (q, k, v, ls)]
        (fn(*xs) * torch.linspace(-1, 1, 7, dtype=torch.float64)).sum().backward()
        grads.append([x.grad for x in xs])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_opcheck(kernel):
    q, k, v, ls = inputs(1, 2, 20, 8, D=3)
    torch.library.opcheck(torch.ops.llmppl.causal_linear_attention.default, (q, k, v, ls, 8))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    torch.library.opcheck(torch.ops.llmppl.causal_linear_attention.default, (qg, kg, vg, ls, 8))
    out = torch.ops.llmppl.causal_linear_attention(q, k, v, ls, 8)
    torch.library.opcheck(
        torch.ops.llmppl.causal_linear_attention_backward.default, (torch.randn_like(out), q, k, v, ls, out, 8)
    )
    # transposed (non-contiguous) inputs: the fake kernels give the real outputs' strides
    qt, vt = q.mT.contiguous().mT, v.mT.contiguous().mT
    torch.library.opcheck(torch.ops.llmppl.causal_linear_attention.default, (qt, k, vt, ls, 8))
    torch.library.opcheck(
        torch.ops.llmppl.causal_linear_attention_backward.default, (torch.randn_like(out), qt, k, vt, ls, out, 8)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_float32(dtype):
    q, k, v, ls = inputs(1, 4, 300, 32, D=16)
    expected = ops.causal_linear_attention(q, k, v, ls)
    got = ops.causal_linear_attention(q.to(dtype), k.to(dtype), v.to(dtype), ls)
    assert got.dtype == dtype
    assert_close_rel(got.float(), expected, 1e-2)


def test_non_causal_matches_definition():
    q, k, v, ls = inputs(2, 3, 33, 16, dtype=torch.float64)
    w = (q @ k.transpose(-1, -2)) * ls.exp().unsqueeze(-2)
    torch.testing.assert_close(ops.linear_attention(q, k, v, ls), (w @ v) / w.sum(-1, keepdim=True))


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda q, k, v, ls: (q, k[..., :-1], v, ls), "k_feat"),
        (lambda q, k, v, ls: (q, k, v[..., :-1, :], ls), "v of shape"),
        (lambda q, k, v, ls: (q, k, v, ls[..., :-1]), "k_log_scale"),
        (lambda q, k, v, ls: (q.long(), k, v, ls), "q_feat of a floating dtype"),
        (lambda q, k, v, ls: (q, [1.0], v, ls), "k_feat to be a Tensor"),
    ],
)
def test_bad_input_is_named(bad, match):
    q, k, v, ls = inputs(1, 2, 9, 8)
    with pytest.raises((TypeError, ValueError), match=match):
        ops.causal_linear_attention(*bad(q, k, v, ls))


def test_kernel_checks_its_inputs(kernel):
    q, k, v, ls = inputs(1, 2, 9, 8)
    with pytest.raises(RuntimeError, match="k_log_scale"):
        kernel(q, k, v, ls[..., :-1], 64)
    with pytest.raises(RuntimeError, match="chunk >= 1"):
        kernel(q, k, v, ls, 0)


def test_masked_leading_keys_give_finite_gradients_under_large_upstream_gradients():
    q, k, v, ls = inputs(1, 2, 40, 8, dtype=torch.float32)
    ls[..., :6] = -math.inf
    for fn in (ops.causal_linear_attention, ref.causal_linear_attention):
        xs = [t.clone().requires_grad_() for t in (q, k, v, ls)]
        (fn(*xs) * torch.randn(1, 2, 40, 5, generator=torch.Generator().manual_seed(0)) * 1e6).sum().backward()
        for x in xs[:3]:
            assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("chunk", [4, 64])
def test_a_future_key_never_changes_a_past_output_not_even_by_underflow(chunk):
    # a later key that raises the running maximum must leave every earlier output and
    # gradient bitwise unchanged, whatever the chunking (the stabiliser's promise)
    q = torch.tensor([[[0.5, 0.5], [1.0, 1e-36], [0.5, 0.5]]], requires_grad=True)
    k = torch.tensor([[[1e-36, 1.0], [1.0, 1e-36], [0.5, 0.5]]])
    v = torch.tensor([[[0.0], [1.0], [0.0]]])
    outs, grads = [], []
    for future in (0.0, 29.0):
        q.grad = None
        out = ops.causal_linear_attention(q, k, v, torch.tensor([[0.0, -80.0, future]]), chunk=chunk)
        out[0, 1, 0].backward()
        outs.append(out[0, :2].detach().clone())
        grads.append(q.grad[0, :2].clone())
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    assert outs[0][1, 0] > 0.5  # the value of key 1 is what position 1 reads

    g = torch.Generator().manual_seed(0)
    q, k, v, ls = inputs(2, 48, 8, generator=g)
    base = ops.causal_linear_attention(q, k, v, ls, chunk=chunk)
    for t in (0, 5, 20, 46):
        ls2, k2, v2 = ls.clone(), k.clone(), v.clone()
        ls2[:, t + 1] += 29.0
        k2[:, t + 1] *= 7.0
        v2[:, t + 1] = -v2[:, t + 1]
        changed = ops.causal_linear_attention(q, k2, v2, ls2, chunk=chunk)
        assert torch.equal(changed[:, : t + 1], base[:, : t + 1]), t


@pytest.mark.parametrize("op", [ops.linear_attention, ops.causal_linear_attention])
def test_mixed_dtypes_are_an_error_naming_them_on_every_path(op):
    q, k, v, ls = inputs(1, 6, 4, D=2)
    with pytest.raises(TypeError, match="q_feat, k_feat and v of one floating dtype"):
        op(q.double(), k, v, ls)
    with pytest.raises(TypeError, match="q_feat, k_feat and v of one floating dtype"):
        op(q, k, v.half(), ls)
