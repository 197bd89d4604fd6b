"""Helpers shared by the cascades: the default model of ``run_example`` and answer tallies.

>>> from llmppl.inference import Marginal
>>> answer_probs(Marginal({" 46": 1.0, "46": 1.0, "47 ": 2.0}))
{'47': 0.5, '46': 0.5}
"""

from __future__ import annotations

import functools

import pyro

import llmppl
from llmppl.inference import Marginal

__all__ = ["answer_probs", "example_model", "seed_everything"]


@functools.lru_cache(maxsize=1)
def _pretrained():
    return llmppl.load_pretrained()


def example_model(model=None):
    """``model``, or the shipped Performer checkpoint (loaded once) when ``model`` is ``None``."""
    return _pretrained() if model is None else model


def seed_everything(seed: int) -> None:
    """Seed torch's RNG (the only randomness the inference engine uses)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    pyro.set_rng_seed(seed)


def answer_probs(marginal: Marginal) -> dict[str, float]:
    """A marginal over answer strings with surrounding whitespace ignored, most probable first."""
    out: dict[str, float] = {}
    for value, p in marginal.items():
        key = value.strip() if isinstance(value, str) else value
        out[key] = out.get(key, 0.0) + p
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
