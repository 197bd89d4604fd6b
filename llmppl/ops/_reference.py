r"""Pure-PyTorch reference of every FAVOR+ op.

These are the definitions the C++/CUDA kernels are tested against, and the fallback
the wrappers use where the extension cannot be built. They are written for clarity
first; the causal op is still chunked (one batched product per chunk pair, a short
Python loop over chunks) so the fallback stays usable at long lengths.

Keys carry a *log-scale* ``ℓ`` per position: the true key feature is
``k_feat * exp(ℓ)``. The causal ops stabilise with the running maximum
``c_t = max_{s<=t} ℓ_s``, so every exponent they take is ``<= 0`` and nothing after
position ``t`` can touch the output at ``t``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "DEFAULT_CHUNK",
    "causal_linear_attention",
    "favor_features",
    "linear_attention",
]

DEFAULT_CHUNK = 64


def _exp_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``exp(a - b)`` for ``a <= b``, with ``b = -inf`` (nothing seen yet) giving 0, not NaN."""
    diff = torch.where(torch.isneginf(b), torch.full_like(a, -math.inf), a - b)
    return diff.exp()


def safe_den(den: torch.Tensor) -> torch.Tensor:
    """The denominator, with 1 where no key has weight (the numerator is 0 there too):
    the output is then 0 and its gradient finite, where ``g / tiny`` would overflow."""
    return torch.where(den > 0, den, torch.ones_like(den)).clamp_min(torch.finfo(den.dtype).tiny)


def favor_features(x: torch.Tensor, projection: torch.Tensor):
    """Positive random features with a per-row stabiliser.

    Returns ``(features, log_scale)`` with
    ``features = exp(ω·x̃ − ‖x̃‖²/2 − c) / √m``, ``x̃ = x·d^{-1/4}``, ``c = max_j(ω_j·x̃ − ‖x̃‖²/2)``
    (detached), and ``log_scale = c``; ``features * exp(log_scale)`` is the unstabilised map.
    Computed in float32 for half-precision inputs.
    """
    dtype = x.dtype
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    proj = projection.to(xf.dtype)
    d = xf.shape[-1]
    m = proj.shape[0]
    xs = xf * d**-0.25  # x̃
    logits = xs @ proj.transpose(-1, -2) - 0.5 * (xs * xs).sum(-1, keepdim=True)  # (..., L, M)
    stab = logits.detach().amax(-1, keepdim=True)
    feats = torch.exp(logits - stab) * m**-0.5
    return feats.to(dtype), stab.squeeze(-1)  # float32, or float64 for float64 inputs


def linear_attention(q_feat, k_feat, v, k_log_scale=None):
    """Non-causal ``out_t = Σ_s (q_t·k_s e^{ℓ_s}) v_s / Σ_s q_t·k_s e^{ℓ_s}``."""
    dtype = v.dtype
    q, k, vv = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (q_feat, k_feat, v))
    if k_log_scale is not None:
        ls = k_log_scale.to(k.dtype)
        top = ls.detach().amax(-1, keepdim=True)
        k = k * _exp_diff(ls, top).unsqueeze(-1)
    kv = k.transpose(-1, -2) @ vv  # (..., M, D)
    num = q @ kv  # (..., L, D)
    den = q @ k.sum(-2).unsqueeze(-1)  # (..., L, 1)
    return (num / safe_den(den)).to(dtype)


def causal_linear_attention(q_feat, k_feat, v, k_log_scale=None, *, chunk: int = DEFAULT_CHUNK):
    r"""Causal ``out_t = Σ_{s≤t} (q_t·k_s e^{ℓ_s}) v_s / Σ_{s≤t} q_t·k_s e^{ℓ_s}``.

    Chunked: inside a chunk a masked ``[C, C]`` product, between chunks a running
    ``[M, D+1]`` state rescaled whenever the running maximum of ``ℓ`` grows.
    """
    dtype = v.dtype
    q, k, vv = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (q_feat, k_feat, v))
    *lead, L, M = q.shape
    D = vv.shape[-1]
    if k_log_scale is None:
        k_log_scale = torch.zeros(k.shape[:-1], dtype=q.dtype, device=q.device)
    ls = k_log_scale.to(q.dtype)
    if L == 0 or q.numel() == 0 or vv.numel() == 0:
        return torch.zeros((*lead, L, D), dtype=dtype, device=v.device)
    n = -(-L // chunk)
    pad = n * chunk - L
    ones = torch.ones((*lead, L, 1), dtype=q.dtype, device=q.device)
    va = torch.cat([vv, ones], -1)  # (..., L, D+1): the last column accumulates the denominator
    if pad:
        q = torch.nn.functional.pad(q, (0, 0, 0, pad))
        k = torch.nn.functional.pad(k, (0, 0, 0, pad))
        va = torch.nn.functional.pad(va, (0, 0, 0, pad))
        ls = torch.nn.functional.pad(ls, (0, pad), value=-math.inf)
    run_max = torch.cummax(ls.detach(), dim=-1).values  # c_t, a constant for autograd
    qc = q.reshape(*lead, n, chunk, M)
    kc = k.reshape(*lead, n, chunk, M)
    vc = va.reshape(*lead, n, chunk, D + 1)
    lc = ls.reshape(*lead, n, chunk)
    cc = run_max.reshape(*lead, n, chunk)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    # inside each chunk: weight (q_t·k_s)·exp(ℓ_s − c_t) for s <= t
    expo = lc.unsqueeze(-2) - cc.unsqueeze(-1)  # (..., n, C_t, C_s)
    expo = expo.masked_fill(~causal, -math.inf).masked_fill(torch.isneginf(cc).unsqueeze(-1), -math.inf)
    scores = (qc @ kc.transpose(-1, -2)) * expo.exp()
    out = scores @ vc  # (..., n, C, D+1)
    # between chunks: states at the scale of each chunk's last running maximum
    c_end = cc[..., -1]  # (..., n)
    k_end = kc * _exp_diff(lc, c_end.unsqueeze(-1)).unsqueeze(-1)
    contrib = k_end.transpose(-1, -2) @ vc  # (..., n, M, D+1)
    state = torch.zeros_like(contrib[..., 0, :, :])
    prev = torch.full_like(c_end[..., 0], -math.inf)
    inter = []
    for j in range(n):
        inter.append(state)
        state = state * _exp_diff(prev, c_end[..., j]).unsqueeze(-1).unsqueeze(-1) + contrib[..., j, :, :]
        prev = c_end[..., j]
    states = torch.stack(inter, -3)  # (..., n, M, D+1): state before chunk j
    prev_end = torch.cat([torch.full_like(c_end[..., :1], -math.inf), c_end[..., :-1]], -1)
    decay = _exp_diff(prev_end.unsqueeze(-1), cc)  # (..., n, C)
    out = out + (qc @ states) * decay.unsqueeze(-1)
    out = out.reshape(*lead, n * chunk, D + 1)[..., :L, :]
    num, den = out[..., :D], out[..., D:]
    return (num / safe_den(den)).to(dtype)
