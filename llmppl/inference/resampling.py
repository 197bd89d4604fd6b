"""Resampling schemes: a small registry of functions ``(log_weights, num) -> ancestor indices``.

Every scheme draws from torch's global RNG (so ``pyro.set_rng_seed`` reproduces it) and
is unbiased: the expected number of copies of particle ``i`` is ``num * w_i`` with
``w`` the normalised weights. Zero-weight (``-inf``) particles are never chosen.

>>> import torch
>>> lw = torch.tensor([0.0, float("-inf"), 0.0])
>>> sorted(set(resample("systematic", lw, 4).tolist()))
[0, 2]
>>> get_resampler("sorted")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: resampling: expected one of 'multinomial', 'residual', 'stratified', 'systematic' or a callable, got...
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["RESAMPLERS", "get_resampler", "multinomial", "resample", "residual", "stratified", "systematic"]


def _normalized(log_weights: torch.Tensor) -> torch.Tensor:
    lw = torch.as_tensor(log_weights, dtype=torch.float64)
    if lw.dim() != 1 or lw.numel() == 0:
        raise ValueError(f"log_weights: expected a non-empty 1-d tensor, got shape {tuple(lw.shape)}")
    if torch.isnan(lw).any():
        raise ValueError("log_weights: expected no NaN")
    if not bool(torch.isfinite(lw).any()) and not bool((lw == float("inf")).any()):
        raise ValueError("log_weights: expected at least one particle with positive weight, got all -inf")
    return torch.softmax(lw, dim=0)


def _inverse_cdf(weights: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    cdf = weights.cumsum(0)
    cdf = cdf / cdf[-1]  # exactly 1 at the end, so every point in [0, 1) lands on a positive weight
    return torch.searchsorted(cdf, points, right=True).clamp_(max=len(weights) - 1)


def multinomial(log_weights: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` independent draws from the normalised weights.

    >>> multinomial(torch.tensor([0.0, float("-inf")]), 3).tolist()
    [0, 0, 0]
    """
    w = _normalized(log_weights)
    return torch.multinomial(w, num, replacement=True).sort().values


def stratified(log_weights: torch.Tensor, num: int) -> torch.Tensor:
    """One uniform draw in each of ``num`` equal strata of ``[0, 1)``.

    >>> stratified(torch.zeros(4), 4).tolist()
    [0, 1, 2, 3]
    """
    w = _normalized(log_weights)
    points = (torch.arange(num, dtype=torch.float64) + torch.rand(num, dtype=torch.float64)) / num
    return _inverse_cdf(w, points)


def systematic(log_weights: torch.Tensor, num: int) -> torch.Tensor:
    """One uniform offset shared by ``num`` evenly spaced points.

    >>> systematic(torch.zeros(3), 3).tolist()
    [0, 1, 2]
    """
    w = _normalized(log_weights)
    points = (torch.arange(num, dtype=torch.float64) + torch.rand((), dtype=torch.float64)) / num
    return _inverse_cdf(w, points)


def residual(log_weights: torch.Tensor, num: int) -> torch.Tensor:
    """``floor(num * w_i)`` copies of each particle, the remainder drawn multinomially.

    >>> residual(torch.log(torch.tensor([0.5, 0.25, 0.25])), 4).tolist()
    [0, 0, 1, 2]
    """
    w = _normalized(log_weights)
    expected = num * w
    counts = (expected + 1e-9).floor().clamp_(max=num)  # 0.9999999 from rounding is one copy
    rest = num - int(counts.sum())
    if rest > 0:
        residue = (expected - counts).clamp_(min=0) * (w > 0)
        if float(residue.sum()) <= 0:  # rounding left nothing: fall back on the weights
            residue = w
        counts += torch.bincount(torch.multinomial(residue, rest, replacement=True), minlength=len(w)).double()
    return torch.repeat_interleave(torch.arange(len(w)), counts.long())


RESAMPLERS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "multinomial": multinomial,
    "residual": residual,
    "stratified": stratified,
    "systematic": systematic,
}


def get_resampler(name) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The resampler called ``name`` (or ``name`` itself when it is a callable).

    >>> get_resampler("residual").__name__
    'residual'
    """
    if callable(name):
        return name
    if isinstance(name, str) and name in RESAMPLERS:
        return RESAMPLERS[name]
    valid = ", ".join(repr(k) for k in sorted(RESAMPLERS))
    raise ValueError(f"resampling: expected one of {valid} or a callable, got {name!r}")


def resample(name, log_weights: torch.Tensor, num: int | None = None) -> torch.Tensor:
    """Ancestor indices (``LongTensor[num]``, default ``num = len(log_weights)``).

    >>> resample("multinomial", torch.tensor([float("-inf"), 1.0])).tolist()
    [1, 1]
    """
    lw = torch.as_tensor(log_weights, dtype=torch.float64)
    n = lw.shape[0] if num is None else num
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num: expected an int >= 1, got {n!r}")
    index = get_resampler(name)(lw, n)
    assert index.shape == (n,), index.shape
    return index.long()
