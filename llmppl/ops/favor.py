r"""FAVOR+ attention: parallel (training, prefill) and recurrent (decoding) forms.

:func:`favor_attention` maps queries and keys to random features and runs linear
attention over them. :func:`favor_attention_step` is the same causal attention one
token at a time over a fixed-size :class:`FavorState` per sequence — the running sums

.. math::

    S = \sum_s e^{\ell_s - c}\, \phi(k_s) v_s^\top, \qquad
    z = \sum_s e^{\ell_s - c}\, \phi(k_s), \qquad c = \max_s \ell_s,

so a decoding step costs the same at position 10 and at position 10,000, and forking a
particle copies ``H·M·(D+1)`` floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import _extension
from ._reference import safe_den
from .features import favor_features, orthogonal_random_features
from .linear_attention import DEFAULT_CHUNK, causal_linear_attention, linear_attention

__all__ = ["FavorAttention", "FavorState", "favor_attention", "favor_attention_step"]


def favor_attention(q, k, v, projection, *, causal: bool, chunk: int = DEFAULT_CHUNK):
    r"""FAVOR+ attention: random features of ``q`` and ``k``, then linear attention.

    Approximates ``softmax(q kᵀ/√d) v`` (masked causally when ``causal``) in
    ``O(L·M·D)`` time and ``O(M·D)`` state per sequence.

    :param Tensor q: ``Tensor[B, H, L, d]`` queries.
    :param Tensor k: ``Tensor[B, H, L, d]`` keys.
    :param Tensor v: ``Tensor[B, H, L, D]`` values.
    :param Tensor projection: ``Tensor[M, d]`` (:func:`orthogonal_random_features`).
    :param bool causal: position ``t`` attends only to ``s <= t``.
    :returns: ``Tensor[B, H, L, D]``.

    >>> g = torch.Generator().manual_seed(0)
    >>> w = orthogonal_random_features(64, 8, generator=g)
    >>> q, k, v = (torch.randn(1, 2, 6, 8, generator=g) for _ in range(3))
    >>> out = favor_attention(q, k, v, w, causal=True)
    >>> out.shape
    torch.Size([1, 2, 6, 8])
    """
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, projection))
    if causal and not needs_grad and q.device.type == "cpu" and _extension.load():
        # fused: each chunk's features are computed in cache, never written to memory
        # (forward only; for training the unfused ops with their own backward are faster)
        return torch.ops.llmppl.favor_causal_attention(q, k, v, projection, chunk)
    return unfused_favor_attention(q, k, v, projection, causal=causal, chunk=chunk)


def unfused_favor_attention(q, k, v, projection, *, causal: bool, chunk: int = DEFAULT_CHUNK):
    """:func:`favor_attention` as two steps, features then linear attention (the reference
    the fused CPU kernel is tested against, and its backward).

    >>> w = orthogonal_random_features(16, 4, generator=torch.Generator().manual_seed(0))
    >>> x = torch.randn(1, 1, 3, 4)
    >>> torch.allclose(unfused_favor_attention(x, x, x, w, causal=True), favor_attention(x, x, x, w, causal=True))
    True
    """
    q_feat = favor_features(q, projection, is_query=True)
    k_feat, k_log_scale = favor_features(k, projection, is_query=False)
    if causal:
        return causal_linear_attention(q_feat, k_feat, v, k_log_scale, chunk=chunk)
    return linear_attention(q_feat, k_feat, v, k_log_scale)


class FavorAttention(nn.Module):
    r"""Module twin of :func:`favor_attention` holding a frozen random projection.

    The projection is a buffer (saved in the state dict, moved by ``.to``), drawn once
    from ``generator`` and shared by every sequence; :meth:`redraw` draws a new one.

    :param int head_dim: ``d``, the query/key dimension.
    :param int num_features: ``M``, the number of random features.
    :param bool causal: causal masking.

    >>> attn = FavorAttention(head_dim=8, num_features=32, causal=True,
    ...                       generator=torch.Generator().manual_seed(0))
    >>> x = torch.randn(1, 2, 5, 8)
    >>> attn(x, x, x).shape
    torch.Size([1, 2, 5, 8])
    """

    def __init__(
        self,
        head_dim: int,
        num_features: int = 256,
        *,
        causal: bool = True,
        generator: torch.Generator | None = None,
        chunk: int = DEFAULT_CHUNK,
    ):
        super().__init__()
        self.head_dim, self.num_features, self.causal, self.chunk = head_dim, num_features, causal, chunk
        self.register_buffer("projection", orthogonal_random_features(num_features, head_dim, generator=generator))

    @torch.no_grad()
    def redraw(self, generator: torch.Generator | None = None) -> None:
        """Draw a new projection in place."""
        new = orthogonal_random_features(self.num_features, self.head_dim, generator=generator)
        self.projection.copy_(new.to(self.projection))

    def forward(self, q, k, v):
        return favor_attention(q, k, v, self.projection, causal=self.causal, chunk=self.chunk)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_features={self.num_features}, causal={self.causal}"


@dataclass
class FavorState:
    r"""Fixed-size causal FAVOR+ state of ``N`` sequences (float32).

    :ivar Tensor S: ``Tensor[N, H, M, D]``, ``Σ_s e^{ℓ_s − c} φ(k_s) v_sᵀ``.
    :ivar Tensor z: ``Tensor[N, H, M]``, ``Σ_s e^{ℓ_s − c} φ(k_s)``.
    :ivar Tensor log_scale: ``Tensor[N, H]``, ``c``, the running maximum of the key
        log-scales (``-inf`` before the first key).

    >>> st = FavorState.zeros(3, heads=2, num_features=16, head_dim=8)
    >>> st.select(torch.tensor([0, 0, 2])).S.shape
    torch.Size([3, 2, 16, 8])
    """

    S: torch.Tensor
    z: torch.Tensor
    log_scale: torch.Tensor

    @classmethod
    def zeros(cls, n: int, *, heads: int, num_features: int, head_dim: int, device=None) -> FavorState:
        """The state of ``n`` empty sequences."""
        return cls(
            torch.zeros(n, heads, num_features, head_dim, device=device),
            torch.zeros(n, heads, num_features, device=device),
            torch.full((n, heads), -math.inf, device=device),
        )

    @classmethod
    def from_sequence(cls, k_feat, k_log_scale, v) -> FavorState:
        r"""The state after a whole sequence, in one product (for prefill).

        :param Tensor k_feat: ``Tensor[N, H, L, M]``.
        :param Tensor k_log_scale: ``Tensor[N, H, L]``; ``-inf`` marks padding.
        :param Tensor v: ``Tensor[N, H, L, D]``.

        >>> k, v = torch.rand(2, 1, 4, 8), torch.randn(2, 1, 4, 3)
        >>> FavorState.from_sequence(k, torch.zeros(2, 1, 4), v).z.shape
        torch.Size([2, 1, 8])
        """
        ls = k_log_scale.float()
        top = ls.amax(-1)  # (N, H)
        safe_top = torch.where(torch.isneginf(top), torch.zeros_like(top), top)
        w = torch.exp(ls - safe_top.unsqueeze(-1))  # (N, H, L); 0 for -inf keys
        kw = k_feat.float() * w.unsqueeze(-1)
        return cls(kw.transpose(-1, -2) @ v.float(), kw.sum(-2), top)

    def select(self, index: torch.Tensor) -> FavorState:
        """The states of sequences ``index`` (for resampling and forking particles); copies."""
        return FavorState(
            self.S.index_select(0, index), self.z.index_select(0, index), self.log_scale.index_select(0, index)
        )

    def nbytes(self) -> int:
        """Bytes held per all sequences."""
        return sum(t.numel() * t.element_size() for t in (self.S, self.z, self.log_scale))


def favor_attention_step(q_t, k_t, v_t, state: FavorState, *, projection) -> tuple[torch.Tensor, FavorState]:
    r"""One causal decoding step for ``N`` sequences at once.

    Adds key ``k_t`` and value ``v_t`` to each sequence's state, then attends with
    ``q_t``. Equals the parallel causal op at the same position (a test checks it).
    Updates ``state`` in place when no gradient is needed, else returns a new one.

    :param Tensor q_t: ``Tensor[N, H, d]``.
    :param Tensor k_t: ``Tensor[N, H, d]``.
    :param Tensor v_t: ``Tensor[N, H, D]``.
    :param FavorState state: the sequences' states.
    :param Tensor projection: ``Tensor[M, d]``.
    :returns: ``(out_t, state)`` with ``out_t: Tensor[N, H, D]`` in the dtype of ``v_t``.

    >>> w = orthogonal_random_features(16, 8, generator=torch.Generator().manual_seed(0))
    >>> st = FavorState.zeros(2, heads=1, num_features=16, head_dim=8)
    >>> x = torch.randn(2, 1, 8)
    >>> out, st = favor_attention_step(x, x, x, st, projection=w)
    >>> torch.allclose(out, x, atol=1e-5)  # a first token attends only to itself
    True
    """
    q_feat = favor_features(q_t, projection, is_query=True).float()  # (N, H, M)
    k_feat, ls = favor_features(k_t, projection, is_query=False)
    k_feat, ls = k_feat.float(), ls.float()
    new_top = torch.maximum(state.log_scale, ls)
    rescale = torch.exp(state.log_scale - new_top).nan_to_num(0.0)  # -inf - -inf: empty state
    w = torch.exp(ls - new_top).unsqueeze(-1) * k_feat  # (N, H, M)
    vf = v_t.float()
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q_t, k_t, v_t, state.S))
    if grad:
        S = state.S * rescale[..., None, None] + w.unsqueeze(-1) * vf.unsqueeze(-2)
        z = state.z * rescale.unsqueeze(-1) + w
        state = FavorState(S, z, new_top)
    else:
        # one fused pass each, no [N, H, M, D] temporary
        state.S.mul_(rescale[..., None, None]).addcmul_(w.unsqueeze(-1), vf.unsqueeze(-2))
        state.z.mul_(rescale.unsqueeze(-1)).add_(w)
        state.log_scale.copy_(new_top)
    num = (q_feat.unsqueeze(-2) @ state.S).squeeze(-2)  # (N, H, D)
    den = (q_feat * state.z).sum(-1, keepdim=True)
    return (num / safe_den(den)).to(v_t.dtype), state
