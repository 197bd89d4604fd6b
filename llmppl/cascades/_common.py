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

__all__ = ["answer_probs", "check_pairs", "check_str", "check_strings", "example_model", "seed_everything"]


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


def check_str(value, where: str, name: str) -> str:
    """``value`` when it is a ``str``; else ``TypeError`` naming ``where: name``.

    >>> check_str("12+34", "scratchpad", "question")
    '12+34'
    """
    if not isinstance(value, str):
        raise TypeError(f"{where}: {name}: expected a str, got {type(value).__name__} {value!r:.40}")
    return value


def check_strings(values, where: str, name: str) -> list[str]:
    """``values`` as a list when it is a non-empty sequence of ``str`` (not a ``str``); else an error naming it.

    >>> check_strings(("cat", "dog"), "twenty_questions", "objects")
    ['cat', 'dog']
    """
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise TypeError(f"{where}: {name}: expected a list of str, got {type(values).__name__} {values!r:.40}")
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{where}: {name}: expected a list of str, got an item {bad[0]!r:.40}")
    if not values:
        raise ValueError(f"{where}: {name}: expected at least one item, got none")
    return list(values)


def check_pairs(pairs, where: str, name: str, labels: str = "(question, answer)") -> list[tuple[str, str]]:
    """``pairs`` as a list of tuples when it is a sequence of ``(str, str)`` pairs; else ``TypeError`` naming it.

    >>> check_pairs([("1+2", "3")], "star_rationales", "problems")
    [('1+2', '3')]
    """
    if isinstance(pairs, str) or not isinstance(pairs, (list, tuple)):
        raise TypeError(f"{where}: {name}: expected a list of {labels} str pairs, got {type(pairs).__name__}")
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise TypeError(f"{where}: {name}: expected {labels} pairs of str, got {pair!r:.60}")
    return [tuple(pair) for pair in pairs]
