r"""FAVOR+ random features (Performers, Choromanski et al. 2021).

The softmax kernel :math:`\exp(q \cdot k / \sqrt{d})` is approximated without bias by
:math:`\phi(q) \cdot \phi(k)` with the *positive* random features

.. math::

    \phi(x)_j = \frac{1}{\sqrt{m}} \exp\!\left(\omega_j \cdot \tilde x - \frac{\lVert \tilde x \rVert^2}{2}\right),
    \qquad \tilde x = x\, d^{-1/4},

where the rows :math:`\omega_j` are blocks of orthogonal Gaussian directions
(:func:`orthogonal_random_features`).
"""

from __future__ import annotations

import math

import torch

from . import _extension, _reference

__all__ = ["favor_features", "orthogonal_random_features"]

_SCALINGS = ("chi", "sqrt_dim")


def orthogonal_random_features(
    num_features: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    scaling: str = "chi",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""A ``[num_features, dim]`` projection of blocks of orthogonal Gaussian rows.

    Each block of ``dim`` rows is orthonormal (QR of a Gaussian matrix); rows are then
    rescaled so their norms are distributed as those of Gaussian vectors
    (``scaling="chi"``, which keeps the estimator unbiased) or all equal to
    :math:`\sqrt{d}` (``scaling="sqrt_dim"``, a lower-variance, slightly biased choice).

    :param int num_features: ``m``, the number of features (rows).
    :param int dim: ``d``, the head dimension (columns).
    :param torch.Generator generator: source of randomness, for reproducible projections.
    :param str scaling: ``"chi"`` or ``"sqrt_dim"``.
    :returns: ``Tensor[m, d]``.

    >>> w = orthogonal_random_features(8, 4, generator=torch.Generator().manual_seed(0))
    >>> w.shape
    torch.Size([8, 4])
    >>> blk = w[:4] / w[:4].norm(dim=1, keepdim=True)
    >>> torch.allclose(blk @ blk.T, torch.eye(4), atol=1e-5)
    True
    """
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"orthogonal_random_features: expected num_features >= 1, got {num_features!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"orthogonal_random_features: expected dim >= 1, got {dim!r}")
    if scaling not in _SCALINGS:
        raise ValueError(f"orthogonal_random_features: expected scaling in {_SCALINGS}, got {scaling!r}")
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        gauss = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gauss)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # a uniformly random rotation
        blocks.append(q.T)  # rows orthonormal
    rows = torch.cat(blocks, 0)[:num_features]
    if scaling == "chi":
        norms = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=1)
    else:
        norms = torch.full((num_features,), math.sqrt(dim), dtype=torch.float64)
    return (rows * norms.unsqueeze(1)).to(dtype=dtype, device=device)


def favor_features(x: torch.Tensor, projection: torch.Tensor, *, is_query: bool):
    r"""Positive random features of queries or keys.

    ``exp(ω·x̃ − ‖x̃‖²/2 − c)/√m`` with ``x̃ = x·d^{-1/4}`` and the stabiliser
    ``c = max_j(ω_j·x̃ − ‖x̃‖²/2)`` taken per position, so the largest feature of every
    row is exactly ``1/√m``: nothing overflows and no position borrows a scale from
    another.

    - Queries (``is_query=True``): returns the features. ``c`` cancels between the
      numerator and the denominator of attention, so it is dropped.
    - Keys (``is_query=False``): returns ``(features, log_scale)`` with
      ``log_scale = c`` (``Tensor[..., L]``, float32). Pass it on as ``k_log_scale``:
      the attention ops weigh key ``s`` by ``exp(log_scale[s] - running max)``, which
      keeps a causal output independent of every later key.

    The stabiliser is a constant for autograd (``features * exp(log_scale)`` does not
    depend on it). Half-precision inputs are computed in float32 and returned in their
    own dtype.

    :param Tensor x: ``Tensor[..., L, d]`` queries or keys.
    :param Tensor projection: ``Tensor[m, d]`` from :func:`orthogonal_random_features`.
    :param bool is_query: whether ``x`` holds queries.

    >>> g = torch.Generator().manual_seed(0)
    >>> w = orthogonal_random_features(16, 4, generator=g)
    >>> x = torch.randn(2, 3, 4, generator=g)
    >>> favor_features(x, w, is_query=True).shape
    torch.Size([2, 3, 16])
    >>> feats, log_scale = favor_features(x, w, is_query=False)
    >>> log_scale.shape
    torch.Size([2, 3])
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"favor_features: expected x to be a floating Tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 1:
        raise ValueError("favor_features: expected x of shape [..., d], got a 0-dim tensor")
    if (
        not isinstance(projection, torch.Tensor)
        or projection.dim() != 2
        or projection.shape[1] != x.shape[-1]
        or projection.shape[0] < 1
    ):
        got = tuple(projection.shape) if isinstance(projection, torch.Tensor) else type(projection).__name__
        raise ValueError(f"favor_features: expected projection of shape [m >= 1, {x.shape[-1]}], got {got}")
    if x.device.type == "cpu" and _extension.load():
        feats, log_scale = torch.ops.llmppl.favor_features(x, projection)
    else:
        feats, log_scale = _reference.favor_features(x, projection)
    return feats if is_query else (feats, log_scale)
