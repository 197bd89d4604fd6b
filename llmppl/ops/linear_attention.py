r"""Linear attention over positive features: non-causal and causal.

Both take query features, key features with an optional per-key log-scale, and values:

.. math::

    \mathrm{out}_t = \frac{\sum_{s \in S(t)} (q_t \cdot k_s)\, e^{\ell_s} v_s}
                          {\sum_{s \in S(t)} (q_t \cdot k_s)\, e^{\ell_s}}

with :math:`S(t)` all positions (non-causal) or :math:`s \le t` (causal). The
log-scale :math:`\ell` is what :func:`~llmppl.ops.favor_features` returns for keys; the
causal op stabilises it with a running maximum, so nothing after ``t`` can change
``out_t``, not even through floating-point underflow.
"""

from __future__ import annotations

import torch

from . import _extension, _reference

__all__ = ["DEFAULT_CHUNK", "causal_linear_attention", "linear_attention"]

DEFAULT_CHUNK = _reference.DEFAULT_CHUNK


def _log_scale_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(name: str, q_feat, k_feat, v, k_log_scale) -> torch.Tensor:
    for arg, t in (("q_feat", q_feat), ("k_feat", k_feat), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected {arg} to be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected {arg} of a floating dtype, got {t.dtype}")
    if not (q_feat.dtype == k_feat.dtype == v.dtype):
        raise TypeError(
            f"{name}: expected q_feat, k_feat and v of one floating dtype, "
            f"got {q_feat.dtype}, {k_feat.dtype}, {v.dtype}"
        )
    if q_feat.dim() < 2 or k_feat.shape != q_feat.shape:
        raise ValueError(
            f"{name}: expected q_feat and k_feat of one shape [..., L, M], got "
            f"{tuple(q_feat.shape)} and {tuple(k_feat.shape)}"
        )
    if v.dim() != q_feat.dim() or v.shape[:-1] != q_feat.shape[:-1]:
        raise ValueError(
            f"{name}: expected v of shape [..., L, D] = {tuple(q_feat.shape[:-1])} + (D,), got {tuple(v.shape)}"
        )
    if k_log_scale is None:
        return torch.zeros(q_feat.shape[:-1], dtype=_log_scale_dtype(q_feat), device=q_feat.device)
    if not isinstance(k_log_scale, torch.Tensor) or k_log_scale.shape != q_feat.shape[:-1]:
        got = tuple(k_log_scale.shape) if isinstance(k_log_scale, torch.Tensor) else type(k_log_scale).__name__
        raise ValueError(f"{name}: expected k_log_scale of shape {tuple(q_feat.shape[:-1])}, got {got}")
    return k_log_scale.to(_log_scale_dtype(q_feat))


def _kernel_ok(x: torch.Tensor) -> bool:
    if x.device.type == "cpu":
        return _extension.load()
    if x.device.type == "cuda":
        return _extension.has_cuda_kernels()
    return False


def linear_attention(q_feat, k_feat, v, k_log_scale=None):
    r"""Non-causal linear attention.

    :param Tensor q_feat: ``Tensor[..., L, M]`` query features (positive).
    :param Tensor k_feat: ``Tensor[..., L, M]`` key features (positive).
    :param Tensor v: ``Tensor[..., L, D]`` values.
    :param Tensor k_log_scale: optional ``Tensor[..., L]``; key ``s`` counts as
        ``k_feat[s] * exp(k_log_scale[s])``.
    :returns: ``Tensor[..., L, D]``, in the dtype of ``v`` (accumulated in float32).

    It is two products, ``q (kᵀ v)`` and ``q (Σ k)``: BLAS-3 already, so it is written
    with torch ops and differentiates through them.

    >>> q, k, v = torch.rand(1, 2, 5, 8), torch.rand(1, 2, 5, 8), torch.randn(1, 2, 5, 4)
    >>> linear_attention(q, k, v).shape
    torch.Size([1, 2, 5, 4])
    """
    k_log_scale = _check("linear_attention", q_feat, k_feat, v, k_log_scale)
    return _reference.linear_attention(q_feat, k_feat, v, k_log_scale)


def causal_linear_attention(q_feat, k_feat, v, k_log_scale=None, *, chunk: int = DEFAULT_CHUNK):
    r"""Causal linear attention: position ``t`` attends to positions ``s <= t``.

    :param Tensor q_feat: ``Tensor[..., L, M]`` query features (positive).
    :param Tensor k_feat: ``Tensor[..., L, M]`` key features (positive).
    :param Tensor v: ``Tensor[..., L, D]`` values.
    :param Tensor k_log_scale: optional ``Tensor[..., L]``; key ``s`` counts as
        ``k_feat[s] * exp(k_log_scale[s])``; ``-inf`` masks a key out.
    :param int chunk: positions per chunk of the kernel (a speed knob, not a result knob).
    :returns: ``Tensor[..., L, D]`` in the dtype of ``v``; float32 accumulation.

    Runs the C++ (CPU) or CUDA kernel when the extension is built, else the
    pure-PyTorch reference. Differentiable: the backward is its own op, which
    recomputes the running state.

    >>> q, k, v = torch.rand(1, 2, 5, 8), torch.rand(1, 2, 5, 8), torch.randn(1, 2, 5, 4)
    >>> out = causal_linear_attention(q, k, v)
    >>> torch.allclose(out[..., 0, :], v[..., 0, :], atol=1e-6)  # the first token sees itself only
    True
    """
    k_log_scale = _check("causal_linear_attention", q_feat, k_feat, v, k_log_scale)
    if chunk < 1:
        raise ValueError(f"causal_linear_attention: expected chunk >= 1, got {chunk}")
    if _kernel_ok(q_feat):
        return torch.ops.llmppl.causal_linear_attention(q_feat, k_feat, v, k_log_scale, chunk)
    return _reference.causal_linear_attention(q_feat, k_feat, v, k_log_scale, chunk=chunk)
