"""FAVOR+ features and attention: the numerics the Performer relies on."""

import math

import pytest
import torch

from llmppl import ops
from llmppl.ops import _reference as ref

pytestmark = pytest.mark.filterwarnings("ignore:llmppl. could not build:RuntimeWarning")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_orthogonal_random_features_blocks_are_orthogonal():
    w = ops.orthogonal_random_features(20, 8, generator=gen(0), dtype=torch.float64)
    assert w.shape == (20, 8)
    for start in (0, 8):
        block = w[start : start + 8]
        unit = block / block.norm(dim=1, keepdim=True)
        torch.testing.assert_close(unit @ unit.T, torch.eye(8, dtype=torch.float64))
    w2 = ops.orthogonal_random_features(20, 8, generator=gen(0), dtype=torch.float64)
    assert torch.equal(w, w2)
    flat = ops.orthogonal_random_features(12, 8, generator=gen(1), scaling="sqrt_dim")
    torch.testing.assert_close(flat.norm(dim=1), torch.full((12,), math.sqrt(8)))


def test_chi_scaling_has_gaussian_row_norms():
    w = ops.orthogonal_random_features(4096, 16, generator=gen(2), dtype=torch.float64)
    # E‖g‖² = d for a Gaussian vector; the mean over 4096 rows is within a few standard errors
    sq = w.norm(dim=1) ** 2
    assert abs(sq.mean().item() - 16) < 4 * math.sqrt(2 * 16 / 4096)


@pytest.mark.parametrize(
    "bad", [dict(num_features=0, dim=4), dict(num_features=4, dim=0), dict(num_features=4, dim=4, scaling="x")]
)
def test_orthogonal_random_features_bad_arguments(bad):
    with pytest.raises(ValueError, match="orthogonal_random_features"):
        ops.orthogonal_random_features(**bad)


def test_features_kernel_matches_reference():
    w = ops.orthogonal_random_features(96, 32, generator=gen(3))
    x = torch.randn(2, 3, 50, 32, generator=gen(4)) * 2
    feats, log_scale = ops.favor_features(x, w, is_query=False)
    rfeats, rlog = ref.favor_features(x, w)
    torch.testing.assert_close(feats, rfeats, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(log_scale, rlog, rtol=1e-5, atol=1e-5)
    assert feats.amax(-1).sub(96**-0.5).abs().max() < 1e-6  # the largest feature of a row is 1/√m
    assert torch.equal(ops.favor_features(x, w, is_query=True), feats)


def test_features_are_an_unbiased_softmax_kernel_estimate():
    d, trials = 8, 400
    g = gen(5)
    q, k = (
        torch.randn(d, generator=g, dtype=torch.float64) * 0.5,
        torch.randn(d, generator=g, dtype=torch.float64) * 0.5,
    )
    exact = math.exp(q @ k / math.sqrt(d))
    estimates = []
    for _ in range(trials):
        w = ops.orthogonal_random_features(16, d, generator=g, dtype=torch.float64)
        fq, lq = ops.favor_features(q[None], w, is_query=False)
        fk, lk = ops.favor_features(k[None], w, is_query=False)
        estimates.append(((fq * fk).sum() * torch.exp(lq + lk).squeeze()).item())
    est = torch.tensor(estimates)
    se = est.std() / math.sqrt(trials)
    assert abs(est.mean().item() - exact) < 4 * se, (est.mean().item(), exact, se.item())


def test_features_gradcheck_float64():
    w = ops.orthogonal_random_features(16, 8, generator=gen(6), dtype=torch.float64)
    x = torch.randn(2, 5, 8, generator=gen(7), dtype=torch.float64, requires_grad=True)

    def true_features(x):  # feats·exp(log_scale) does not depend on the stabiliser
        feats, log_scale = ops.favor_features(x, w, is_query=False)
        return feats * log_scale.exp().unsqueeze(-1)

    assert torch.autograd.gradcheck(true_features, (x,))


def test_features_opcheck():
    if not ops.extension_available():
        pytest.skip("C++ extension not built")
    w = ops.orthogonal_random_features(16, 8, generator=gen(8))
    x = torch.randn(3, 5, 8, generator=gen(9))
    torch.library.opcheck(torch.ops.llmppl.favor_features.default, (x, w))
    torch.library.opcheck(torch.ops.llmppl.favor_features.default, (x.requires_grad_(), w))


def softmax_attention(q, k, v, causal):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)


@pytest.mark.parametrize("causal", [True, False])
def test_favor_attention_approximates_softmax_better_with_more_features(causal):
    g = gen(10)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=g, dtype=torch.float64) * 0.5 for _ in range(3))
    exact = softmax_attention(q, k, v, causal)
    errors = []
    for m in (16, 1024):
        errs = []
        for _ in range(5):
            w = ops.orthogonal_random_features(m, 16, generator=g, dtype=torch.float64)
            errs.append((ops.favor_attention(q, k, v, w, causal=causal) - exact).pow(2).mean().sqrt())
        errors.append(torch.stack(errs).mean().item())
    assert errors[1] < errors[0] / 3, errors
    assert errors[1] < 0.05, errors


def large_then_small_keys():
    g = gen(11)
    w = ops.orthogonal_random_features(64, 16, generator=g)
    q, k, v = (torch.randn(1, 2, 300, 16, generator=g) for _ in range(3))
    k[..., :150, :] *= 40 / k[..., :150, :].norm(dim=-1, keepdim=True)  # log-scales near -120
    k[..., -1, :] *= 100 / k[..., -1, :].norm(dim=-1, keepdim=True)  # and one key of norm 100
    return q, k, v, w


def test_prefix_consistency_with_large_keys():
    """Output at t must not depend on tokens after t, even through underflow.

    A stabiliser taken over the whole sequence (the flaw of popular Performer code) lets
    the later, much larger key log-scales underflow every earlier key, changing earlier
    outputs; the running maximum does not.
    """
    q, k, v, w = large_then_small_keys()
    full = ops.favor_attention(q, k, v, w, causal=True)
    for t in (1, 37, 64, 200, 299):
        prefix = ops.favor_attention(q[..., :t, :], k[..., :t, :], v[..., :t, :], w, causal=True)
        torch.testing.assert_close(full[..., :t, :], prefix, rtol=1e-5, atol=1e-6)


def test_global_stabiliser_would_fail_the_prefix_test():
    """The test above can fail: the flawed global stabiliser changes earlier outputs."""
    q, k, v, w = large_then_small_keys()
    qf = ops.favor_features(q, w, is_query=True)
    kf, ls = ops.favor_features(k, w, is_query=False)
    flawed_k = kf * torch.exp(ls - ls.amax(dim=-1, keepdim=True)).unsqueeze(-1)  # one max over all positions
    flawed = ops.causal_linear_attention(qf, flawed_k, v)
    good = ops.causal_linear_attention(qf, kf, v, ls)
    assert not torch.allclose(flawed[..., :200, :], good[..., :200, :], rtol=1e-3, atol=1e-3)


def test_recurrent_step_equals_parallel_causal():
    g = gen(12)
    H, M, d, L, N = 3, 32, 8, 40, 2
    w = ops.orthogonal_random_features(M, d, generator=g)
    q, k, v = (torch.randn(N, H, L, d, generator=g) * 1.5 for _ in range(3))
    parallel = ops.favor_attention(q, k, v, w, causal=True)
    state = ops.FavorState.zeros(N, heads=H, num_features=M, head_dim=d)
    steps = []
    for t in range(L):
        out, state = ops.favor_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state, projection=w)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 2), parallel, rtol=1e-5, atol=1e-5)
    # the state after the sequence is what a prefill computes in one product
    kf, ls = ops.favor_features(k, w, is_query=False)
    pre = ops.FavorState.from_sequence(kf, ls, v)
    torch.testing.assert_close(pre.log_scale, state.log_scale)
    torch.testing.assert_close(pre.S, state.S, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pre.z, state.z, rtol=1e-5, atol=1e-6)


def test_recurrent_step_with_grad_returns_new_state():
    w = ops.orthogonal_random_features(16, 8, generator=gen(13))
    state = ops.FavorState.zeros(2, heads=1, num_features=16, head_dim=8)
    x = torch.randn(2, 1, 8, requires_grad=True)
    out, new = ops.favor_attention_step(x, x, x, state, projection=w)
    out.sum().backward()
    assert x.grad is not None and new is not state and (state.z == 0).all()


def test_state_select_copies():
    state = ops.FavorState.zeros(3, heads=1, num_features=4, head_dim=2)
    picked = state.select(torch.tensor([2, 2]))
    picked.S.add_(1)
    assert (state.S == 0).all() and picked.S.shape == (2, 1, 4, 2)


@pytest.mark.parametrize("norm", [1.0, 10.0, 100.0])
def test_no_inf_or_nan_for_large_norms(norm):
    g = gen(14)
    w = ops.orthogonal_random_features(64, 32, generator=g)
    q, k, v = (torch.randn(1, 2, 257, 32, generator=g) for _ in range(3))
    q, k = (x * norm / x.norm(dim=-1, keepdim=True) for x in (q, k))
    for causal in (True, False):
        assert torch.isfinite(ops.favor_attention(q, k, v, w, causal=causal)).all()


@pytest.mark.slow
def test_no_inf_or_nan_at_16k_tokens():
    g = gen(15)
    w = ops.orthogonal_random_features(64, 32, generator=g)
    q, k, v = (torch.randn(1, 2, 16384, 32, generator=g) * 3 for _ in range(3))
    out = ops.favor_attention(q, k, v, w, causal=True)
    assert torch.isfinite(out).all()
    # and the last position still matches the definition computed in float64
    ref_out = ref.causal_linear_attention(
        *(
            t.double()
            for t in (ops.favor_features(q, w, is_query=True), *ops.favor_features(k, w, is_query=False)[:1], v)
        ),
        ops.favor_features(k, w, is_query=False)[1].double(),
    )
    # float32 sums over 16k tokens: errors of ~1e-5 of the output scale
    assert (out.double() - ref_out).abs().max() / ref_out.abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_attention_matches_float32(dtype):
    g = gen(16)
    w = ops.orthogonal_random_features(64, 32, generator=g)
    q, k, v = (torch.randn(1, 4, 300, 32, generator=g) for _ in range(3))
    expected = ops.favor_attention(q, k, v, w, causal=True)
    got = ops.favor_attention(q.to(dtype), k.to(dtype), v.to(dtype), w, causal=True)
    assert got.dtype == dtype and torch.isfinite(got).all()
    err = (got.float() - expected).abs().max() / expected.abs().max()
    assert err < 1e-2, err


def test_module_twin_and_torch_compile_traces_the_ops():
    attn = ops.FavorAttention(head_dim=8, num_features=32, causal=True, generator=gen(17))
    x = torch.randn(1, 2, 20, 8, requires_grad=True)
    eager = attn(x, x, x)
    torch.testing.assert_close(eager, ops.favor_attention(x, x, x, attn.projection, causal=True))
    compiled = torch.compile(attn, backend="aot_eager", fullgraph=True)
    out = compiled(x, x, x)
    torch.testing.assert_close(out, eager)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert "projection" in attn.state_dict()
    before = attn.projection.clone()
    attn.redraw(gen(18))
    assert not torch.equal(before, attn.projection)


@pytest.fixture()
def fused():
    if not ops.extension_available():
        pytest.skip("C++ extension not built")
    return torch.ops.llmppl.favor_causal_attention


@pytest.mark.parametrize("L", [0, 1, 31, 64, 129, 500])
def test_fused_kernel_matches_unfused_ops(fused, L):
    g = gen(100 + L)
    w = ops.orthogonal_random_features(48, 16, generator=g)
    q, k, v = (torch.randn(2, 3, L, 16, generator=g) * 2 for _ in range(3))
    expected = ops.unfused_favor_attention(q.double(), k.double(), v.double(), w.double(), causal=True)
    got = fused(q, k, v, w, 32)
    assert got.shape == v.shape
    if L:
        assert (got - expected).abs().max() / expected.abs().max() < 1e-5


def test_fused_kernel_with_large_keys_is_prefix_consistent(fused):
    q, k, v, w = large_then_small_keys()
    full = fused(q, k, v, w, 64)
    torch.testing.assert_close(full[..., :150, :], fused(q[..., :150, :], k[..., :150, :], v[..., :150, :], w, 64))
    # keys of norm 40 put logits near 400: float32 rounds them by ~1e-5, so compare loosely
    exact = ops.unfused_favor_attention(q.double(), k.double(), v.double(), w.double(), causal=True)
    assert (full.double() - exact).abs().max() / exact.abs().max() < 1e-3


def test_fused_kernel_gradients_and_opcheck(fused):
    g = gen(101)
    w = ops.orthogonal_random_features(16, 8, generator=g, dtype=torch.float64)
    q, k, v = (torch.randn(1, 2, 13, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: fused(q, k, v, w, 4), (q, k, v))
    torch.library.opcheck(torch.ops.llmppl.favor_causal_attention.default, (q, k, v, w, 4))
    with torch.no_grad():
        torch.library.opcheck(
            torch.ops.llmppl.favor_causal_attention.default, (q.float(), k.float(), v.float(), w.float(), 4)
        )
        vt = v.detach().mT.contiguous().mT  # non-contiguous: the fake kernel's strides are the real ones
        torch.library.opcheck(torch.ops.llmppl.favor_causal_attention.default, (q.detach(), k.detach(), vt, w, 4))


def test_feature_arguments_are_checked():
    with pytest.raises(ValueError, match=r"projection of shape \[m >= 1, 4\]"):
        ops.favor_features(torch.randn(3, 4), torch.empty(0, 4), is_query=False)
    with pytest.raises(ValueError, match="0-dim"):
        ops.favor_features(torch.tensor(1.0), torch.randn(2, 1), is_query=True)
    with pytest.raises(ValueError, match="num_features"):
        ops.orthogonal_random_features(True, 4)
