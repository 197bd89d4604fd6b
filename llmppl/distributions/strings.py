"""Distributions whose values are Python strings: the base class, ``Delta`` and ``Categorical``.

Pyro's handlers treat a value as opaque; only ``log_prob`` has to return a tensor of
the distribution's ``batch_shape``. A :class:`StringDistribution` has empty batch and
event shapes, so it works in sequential plates (``expand(())`` returns itself); in one
vectorised plate ``expand((n,))`` gives :class:`IIDStrings`, whose value is a list of
``n`` strings.

>>> import pyro
>>> from llmppl.distributions import Categorical
>>> pyro.set_rng_seed(0)
>>> pyro.sample("colour", Categorical(["red", "blue"], probs=[0.9, 0.1])) in {"red", "blue"}
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

__all__ = ["Categorical", "Delta", "IIDStrings", "StringDistribution", "string"]

_NEG_INF = float("-inf")


def _short(text: str, width: int = 40) -> str:
    """``repr`` of ``text``, shortened in the middle to about ``width`` characters."""
    if len(text) > width:
        text = text[: width // 2] + "…" + text[-(width // 2 - 1) :]
    return repr(text)


class _StringConstraint(constraints.Constraint):
    """The support of a string distribution: any ``str``.

    >>> string.check("abc"), string.check(3)
    (tensor(True), tensor(False))
    """

    is_discrete = True
    event_dim = 0

    def check(self, value):
        return torch.tensor(isinstance(value, str))

    def __repr__(self) -> str:
        return "string"


string = _StringConstraint()


class StringDistribution(TorchDistribution):
    """Base class of distributions over ``str`` values (batch and event shape ``()``).

    Subclasses implement ``sample()`` returning a ``str`` and ``log_prob(value)``
    returning a 0-dim tensor (``-inf`` for an impossible value), calling
    ``self._validate_sample(value)`` first. ``log_prob_batch(values)`` scores a list of
    values; override it with a batched path where one exists.

    >>> d = Delta("yes")
    >>> d.batch_shape, d.event_shape, d.expand(()) is d, d.expand((2,)).batch_shape
    (torch.Size([]), torch.Size([]), True, torch.Size([2]))
    """

    arg_constraints: ClassVar[dict] = {}
    support = string
    has_rsample = False
    has_enumerate_support = False

    def __init__(self, *, validate_args=None):
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size(), validate_args=validate_args)

    def _describe(self) -> str:
        return type(self).__name__

    def _validate_sample(self, value) -> None:
        if not isinstance(value, str):
            raise TypeError(
                f"{self._describe()}.log_prob: value: expected a str, got {type(value).__name__} ({value!r})"
            )

    def _check_sample_shape(self, sample_shape) -> torch.Size:
        sample_shape = torch.Size(sample_shape)
        if len(sample_shape) > 1:
            raise NotImplementedError(
                f"{self._describe()}.sample: sample_shape {tuple(sample_shape)}: "
                "only () or (n,) is supported for strings"
            )
        return sample_shape

    def log_prob_batch(self, values: Sequence[str]) -> torch.Tensor:
        """``Tensor[len(values)]`` of log-probabilities (default: one ``log_prob`` each).

        >>> Delta("a").log_prob_batch(["a", "b"])
        tensor([0., -inf])
        """
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise TypeError(
                f"{self._describe()}.log_prob_batch: values: expected a list of str, got {type(values).__name__}"
            )
        if not values:
            return torch.zeros(0)
        return torch.stack([self.log_prob(v) for v in values])

    def sample_batch(self, n: int) -> list[str]:
        """``n`` independent draws (default: one ``sample`` each)."""
        return [self.sample() for _ in range(n)]

    def expand(self, batch_shape, _instance=None):
        """``()`` gives ``self``; a shape with one non-unit dimension gives :class:`IIDStrings`."""
        batch_shape = torch.Size(batch_shape)
        if len(batch_shape) == 0:
            return self
        return IIDStrings(self, batch_shape)

    def enumerate_support(self, expand=True):
        raise NotImplementedError(f"{self._describe()}: strings cannot be enumerated as a tensor")

    def __repr__(self) -> str:
        return self._describe()


class IIDStrings(TorchDistribution):
    """``batch_shape.numel()`` independent draws of a :class:`StringDistribution`, as a list.

    Made by ``expand`` inside one vectorised ``pyro.plate``; the value is a flat list of
    strings and ``log_prob`` a tensor of ``batch_shape``. Only one dimension may exceed
    one (a plate within a plate is not supported).

    >>> d = Delta("x").expand((3,))
    >>> d.sample(), d.log_prob(["x", "x", "y"])
    (['x', 'x', 'x'], tensor([0., 0., -inf]))
    """

    arg_constraints: ClassVar[dict] = {}
    support = string
    has_rsample = False
    has_enumerate_support = False

    def __init__(self, base: StringDistribution, batch_shape, *, validate_args=None):
        batch_shape = torch.Size(batch_shape)
        if sum(1 for s in batch_shape if s != 1) > 1:
            raise NotImplementedError(
                f"{base._describe()}.expand({tuple(batch_shape)}): string distributions support one vectorised "
                "pyro.plate; nest plates sequentially (for i in pyro.plate(...)) instead"
            )
        self.base_dist = base
        self.n = batch_shape.numel()
        super().__init__(batch_shape=batch_shape, event_shape=torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        return self.base_dist.expand(batch_shape)

    def sample(self, sample_shape=()) -> list[str]:
        if torch.Size(sample_shape):
            raise NotImplementedError(f"IIDStrings.sample: sample_shape must be () inside a plate, got {sample_shape}")
        return self.base_dist.sample_batch(self.n)

    def _validate_sample(self, value) -> None:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(
                f"{self.base_dist._describe()}.log_prob: value: expected a list of {self.n} str inside a plate, "
                f"got {type(value).__name__}"
            )
        if len(value) != self.n:
            raise ValueError(
                f"{self.base_dist._describe()}.log_prob: value: expected {self.n} strings (the plate size), "
                f"got {len(value)}"
            )

    def log_prob(self, value) -> torch.Tensor:
        self._validate_sample(value)
        return self.base_dist.log_prob_batch(list(value)).reshape(self.batch_shape)

    def enumerate_support(self, expand=True):
        raise NotImplementedError("IIDStrings: strings cannot be enumerated as a tensor")

    def __repr__(self) -> str:
        return f"IIDStrings({self.base_dist!r}, batch_shape={tuple(self.batch_shape)})"


def _as_str(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {type(value).__name__} ({value!r})")
    return value


class Delta(StringDistribution):
    """A point mass on one string: deterministic sites that rendering can show.

    :param str value: the only possible value.
    :param float log_density: the log-probability it reports for ``value`` (default 0).

    >>> d = Delta("42")
    >>> d.sample(), d.log_prob("42"), d.log_prob("41")
    ('42', tensor(0.), tensor(-inf))
    """

    def __init__(self, value: str, *, log_density: float = 0.0, validate_args=None):
        self.v = _as_str(value, "Delta: value")
        if isinstance(log_density, bool) or not isinstance(log_density, (int, float)):
            raise TypeError(f"Delta: log_density: expected a float, got {type(log_density).__name__}")
        self.log_density = float(log_density)
        super().__init__(validate_args=validate_args)

    def sample(self, sample_shape=()):
        if self._check_sample_shape(sample_shape):
            return [self.v] * sample_shape[0]
        return self.v

    def log_prob(self, value) -> torch.Tensor:
        self._validate_sample(value)
        return torch.tensor(self.log_density if value == self.v else _NEG_INF)

    def _describe(self) -> str:
        return f"Delta({_short(self.v)})"


class Categorical(StringDistribution):
    """A choice among a list of strings (multiple choice), with ``probs`` or ``logits``.

    Repeated strings add their probabilities; with neither ``probs`` nor ``logits`` the
    choice is uniform.

    :param list values: the strings.
    :param probs: non-negative weights (normalised), one per value.
    :param logits: unnormalised log-weights, one per value.

    >>> d = Categorical(["yes", "no"], logits=[0.0, 0.0])
    >>> d.log_prob("yes").exp(), d.log_prob("maybe")
    (tensor(0.5000), tensor(-inf))
    """

    def __init__(self, values: Sequence[str], *, probs=None, logits=None, validate_args=None):
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise TypeError(f"Categorical: values: expected a list of str, got {type(values).__name__}")
        if not values:
            raise ValueError("Categorical: values: expected at least one string, got an empty list")
        for i, v in enumerate(values):
            _as_str(v, f"Categorical: values[{i}]")
        if probs is not None and logits is not None:
            raise ValueError("Categorical: expected probs or logits, not both")
        n = len(values)
        if probs is not None:
            p = torch.as_tensor(probs, dtype=torch.get_default_dtype())
            if p.shape != (n,):
                raise ValueError(f"Categorical: probs: expected shape ({n},) to match values, got {tuple(p.shape)}")
            if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or float(p.sum()) <= 0:
                raise ValueError(
                    f"Categorical: probs: expected finite non-negative weights with a positive sum, got {p}"
                )
            log_w = (p / p.sum()).log()
        elif logits is not None:
            lg = torch.as_tensor(logits, dtype=torch.get_default_dtype())
            if lg.shape != (n,):
                raise ValueError(f"Categorical: logits: expected shape ({n},) to match values, got {tuple(lg.shape)}")
            if bool(torch.isnan(lg).any()) or bool((lg == math.inf).any()) or not bool(torch.isfinite(lg).any()):
                raise ValueError(f"Categorical: logits: expected no NaN or +inf and at least one finite, got {lg}")
            log_w = lg.log_softmax(-1)
        else:
            log_w = torch.full((n,), -math.log(n))
        self.values = list(values)
        self.logits = log_w
        self._log_prob_of: dict[str, torch.Tensor] = {}
        for v, lw in zip(self.values, log_w, strict=True):
            self._log_prob_of[v] = torch.logaddexp(self._log_prob_of[v], lw) if v in self._log_prob_of else lw
        super().__init__(validate_args=validate_args)

    @property
    def probs(self) -> torch.Tensor:
        """Normalised probabilities, one per entry of ``values``."""
        return self.logits.exp()

    def sample(self, sample_shape=()):
        shape = self._check_sample_shape(sample_shape)
        n = shape[0] if shape else 1
        idx = torch.multinomial(self.probs, n, replacement=True).tolist()
        out = [self.values[i] for i in idx]
        return out if shape else out[0]

    def sample_batch(self, n: int) -> list[str]:
        return self.sample((n,))

    def log_prob(self, value) -> torch.Tensor:
        self._validate_sample(value)
        lp = self._log_prob_of.get(value)
        return lp.clone() if lp is not None else torch.tensor(_NEG_INF)

    def _describe(self) -> str:
        shown = ", ".join(_short(v, 16) for v in self.values[:4])
        more = ", …" if len(self.values) > 4 else ""
        return f"Categorical([{shown}{more}])"
