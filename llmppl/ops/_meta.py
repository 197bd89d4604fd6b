"""Autograd formulas and fake (meta) kernels of the compiled ops.

Registered from Python with :mod:`torch.library` once the extension has defined the
ops: the backward of ``causal_linear_attention`` is its own compiled op; the fake
kernels give shapes to ``torch.compile`` without running anything.
"""

from __future__ import annotations

import torch

from ._reference import DEFAULT_CHUNK


def _log_scale_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


_registered = False


def register() -> None:
    """Register autograd formulas and fake kernels once the extension has defined the ops."""
    global _registered
    if _registered:
        return
    _registered = True

    @torch.library.register_fake("llmppl::causal_linear_attention")
    def _(q_feat, k_feat, v, k_log_scale, chunk=DEFAULT_CHUNK):
        return torch.empty_like(v, memory_format=torch.contiguous_format)

    @torch.library.register_fake("llmppl::causal_linear_attention_backward")
    def _(grad_out, q_feat, k_feat, v, k_log_scale, out, chunk=DEFAULT_CHUNK):
        return (
            torch.empty_like(q_feat, memory_format=torch.contiguous_format),
            torch.empty_like(k_feat, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format),
            torch.empty_like(k_log_scale, memory_format=torch.contiguous_format),
        )

    def setup_context(ctx, inputs, output):
        q_feat, k_feat, v, k_log_scale, chunk = inputs
        ctx.save_for_backward(q_feat, k_feat, v, k_log_scale, output)
        ctx.chunk = chunk

    def backward(ctx, grad_out):
        q_feat, k_feat, v, k_log_scale, out = ctx.saved_tensors
        dq, dk, dv, dl = torch.ops.llmppl.causal_linear_attention_backward(
            grad_out.contiguous(), q_feat, k_feat, v, k_log_scale, out, ctx.chunk
        )
        return dq, dk, dv, dl, None

    torch.library.register_autograd("llmppl::causal_linear_attention", backward, setup_context=setup_context)

    @torch.library.register_fake("llmppl::favor_features")
    def _(x, projection):
        lead = x.shape[:-1]
        feats = x.new_empty((*lead, projection.shape[0]))
        return feats, x.new_empty(lead, dtype=_log_scale_dtype(x))

    def features_setup(ctx, inputs, output):
        x, projection = inputs
        ctx.save_for_backward(x, projection, output[0])

    def features_backward(ctx, grad_feats, grad_log_scale):
        # The stabiliser is a constant: feats * exp(log_scale) does not depend on it,
        # so the log-scale output carries no gradient (see favor_features).
        x, projection, feats = ctx.saved_tensors
        d = x.shape[-1]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xs = x.to(acc) * d**-0.25
        ga = grad_feats.to(acc) * feats.to(acc)  # d/d(logits - |x~|^2/2)
        dx = (ga @ projection.to(acc) - ga.sum(-1, keepdim=True) * xs) * d**-0.25
        dproj = ga.reshape(-1, ga.shape[-1]).transpose(0, 1) @ xs.reshape(-1, d)
        return dx.to(x.dtype), dproj.to(projection.dtype)

    torch.library.register_autograd("llmppl::favor_features", features_backward, setup_context=features_setup)

    @torch.library.register_fake("llmppl::favor_causal_attention")
    def _(q, k, v, projection, chunk=DEFAULT_CHUNK):
        return torch.empty_like(v, memory_format=torch.contiguous_format)

    def fused_setup(ctx, inputs, output):
        q, k, v, projection, chunk = inputs
        ctx.save_for_backward(q, k, v, projection)
        ctx.chunk = chunk

    def fused_backward(ctx, grad_out):
        # Recompute through the unfused ops (features, then the causal op with its own
        # backward): the fused kernel is a forward-only fast path of the same function.
        from .favor import unfused_favor_attention

        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(n) for t, n in zip(saved, needs, strict=True)]
            out = unfused_favor_attention(*inputs, causal=True, chunk=ctx.chunk)
            wanted = [t for t, n in zip(inputs, needs, strict=True) if n]
            grads = iter(torch.autograd.grad(out, wanted, grad_out) if wanted else ())
        return (*(next(grads) if n else None for n in needs), None)

    torch.library.register_autograd("llmppl::favor_causal_attention", fused_backward, setup_context=fused_setup)
