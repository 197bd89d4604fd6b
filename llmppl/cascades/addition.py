"""Held-out additions answered by the cascades: the methods that ``llmppl demo`` and ``benchmarks/cascades.py`` compare.

Each method maps a question ``"a+b"`` to one answer string:

- ``direct``: one sampled answer after ``Q: a+b\\nA:`` (:func:`~llmppl.cascades.scratchpads.direct`);
- ``scratchpad``: one sampled scratchpad (:func:`~llmppl.cascades.scratchpads.scratchpad`);
- ``self-consistency``: the answer marginal's mode over ``particles`` scratchpads;
- ``verifier+SMC``: :func:`~llmppl.cascades.verifiers.verified_scratchpad` with
  :class:`~llmppl.inference.SMC` over ``particles``, the answer marginal's mode;
- ``verifier+rejection``: the same model with :class:`~llmppl.inference.Rejection`
  (``rejection_samples`` accepted runs out of at most ``max_attempts``), the mode;
- ``tool use``: :func:`~llmppl.cascades.tools.tool_use` on ``"What is a plus b?"``, one sample;
- ``by blocks``: :func:`~llmppl.cascades.decomposition.long_addition`, scratchpads on blocks
  of ``block`` digits stitched by the program, one sample, no verifier;
- ``by blocks+SMC``: the same with the verifier observed after every block's scratchpad,
  :class:`~llmppl.inference.SMC` over ``particles``, the answer marginal's mode.

Every LM site samples at temperature 1. :func:`count_tokens` measures compute: the
prompt tokens the model prefilled (after its prefix cache) and the tokens it decoded
(generated or scored, one per row per step). :func:`compare` runs methods over problems
and returns accuracy, time and tokens per method.

>>> import string
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet=string.printable)
>>> rows = compare(lm, held_out_additions(2, 2), ["direct"], digits=2)
>>> rows["direct"]["n"], 0.0 <= rows["direct"]["accuracy"] <= 1.0, rows["direct"]["decode_tokens"] > 0
(2, True, True)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import llmppl
from llmppl import InferenceError

from ._common import answer_probs, seed_everything
from .consistency import self_consistency
from .decomposition import long_addition
from .prompts import PromptStyle, resolve_style
from .scratchpads import direct, scratchpad
from .star import addition_problems
from .tools import tool_use
from .verifiers import verified_scratchpad

__all__ = ["METHODS", "TokenCount", "compare", "count_tokens", "held_out_additions", "make_methods"]

METHODS = (
    "direct",
    "scratchpad",
    "self-consistency",
    "verifier+SMC",
    "verifier+rejection",
    "tool use",
    "by blocks",
    "by blocks+SMC",
)


def held_out_additions(n: int, digits: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` held-out additions of two ``digits``-digit operands: ``[("a+b", "sum"), ...]``.

    Held out by :func:`llmppl.models.tasks.is_held_out`: never in any training batch.

    >>> held_out_additions(1, 3)
    [('175+781', '956')]
    """
    return addition_problems(n, digits, split="test", seed=seed)


@dataclass
class TokenCount:
    """Token positions a model ran: ``prefill`` (prompt tokens) and ``decode`` (tokens fed back, one per row per step).

    >>> TokenCount(10, 5).total
    15
    """

    prefill: int = 0
    decode: int = 0

    @property
    def total(self) -> int:
        return self.prefill + self.decode


@contextlib.contextmanager
def count_tokens(*models):
    """Count the tokens ``models`` process inside the block (their ``prefill`` and ``advance`` calls).

    The same model listed twice is counted once. The count sees every path, the prefix
    cache and continuation reuse included: a cached prompt costs nothing.

    >>> from llmppl.models import ToyLM
    >>> lm = ToyLM(alphabet="ab")
    >>> with count_tokens(lm) as count:
    ...     _ = lm.sample(["ab"], max_tokens=3)
    >>> count.prefill, count.decode <= 2  # BOS + "ab"; the last drawn token is never fed back
    (3, True)
    """
    count = TokenCount()
    patched = []
    for model in {id(m): m for m in models}.values():
        prefill, advance = model.prefill, model.advance

        def counted_prefill(prompts, _inner=prefill):
            count.prefill += sum(len(p) for p in prompts)
            return _inner(prompts)

        def counted_advance(state, tokens, _inner=advance):
            count.decode += int(tokens.numel()) if hasattr(tokens, "numel") else len(tokens)
            return _inner(state, tokens)

        model.__dict__["prefill"], model.__dict__["advance"] = counted_prefill, counted_advance
        patched.append(model)
    try:
        yield count
    finally:
        for model in patched:
            model.__dict__.pop("prefill", None)
            model.__dict__.pop("advance", None)


def _mode(post) -> str:
    return next(iter(answer_probs(post.marginal("answer"))))


def make_methods(
    model,
    digits: int,
    *,
    particles: int = 12,
    rejection_samples: int = 3,
    max_attempts: int | None = None,
    style: PromptStyle | None = None,
    verifier_style: PromptStyle | None = None,
    direct_style: PromptStyle | None = None,
    tool_style: PromptStyle | None = None,
    block: int = 4,
) -> dict[str, Callable[[str], str]]:
    """One function per method of :data:`METHODS`: question ``"a+b"`` -> answer string.

    :param int digits: operand length (sizes the token limits: ``16 * digits + 16`` for the thought).
    :param int particles: for self-consistency and SMC.
    :param int rejection_samples: accepted runs wanted by ``verifier+rejection``.
    :param max_attempts: its most runs (default ``16 * particles``); fewer accepted is a wrong answer.
    :param int block: digits per block of the ``by blocks`` methods.
    :param style: prompts of the scratchpad sites; ``verifier_style``: of the verifier;
        ``direct_style``: of the direct answer; ``tool_style``: of tool use (each default: the
        model's :func:`~llmppl.cascades.prompts.default_style`, so give each its own few-shot prefix).

    >>> import string
    >>> from llmppl.models import ToyLM
    >>> sorted(make_methods(ToyLM(alphabet=string.printable), 2)) == sorted(METHODS)
    True
    """
    style = resolve_style(style, model)
    sizes = {"model": model, "max_work_tokens": 16 * digits + 16, "max_answer_tokens": digits + 4, "style": style}
    verified = {**sizes, "verifier_style": verifier_style}
    attempts = 16 * particles if max_attempts is None else max_attempts

    def once(program, *args, **kwargs):
        return llmppl.infer.Importance(program, num_samples=1, progress=False).run(*args, **kwargs).sample()

    def smc(q):
        return _mode(llmppl.infer.SMC(verified_scratchpad, num_particles=particles, progress=False).run(q, **verified))

    def rejection(q):
        sampler = llmppl.infer.Rejection(
            verified_scratchpad, num_samples=rejection_samples, max_attempts=attempts, progress=False
        )
        return _mode(sampler.run(q, **verified))

    by_blocks = {"model": model, "block": block, "style": style}

    def blocks_smc(q):
        sampler = llmppl.infer.SMC(long_addition, num_particles=particles, progress=False)
        return _mode(sampler.run(q, verifier_style=verifier_style, **by_blocks))

    def tool(q):
        a, b = q.split("+")
        return once(tool_use, f"What is {a} plus {b}?", model=model, max_answer_tokens=digits + 4, style=tool_style)

    return {
        "direct": lambda q: once(direct, q, model=model, max_answer_tokens=digits + 4, style=direct_style),
        "scratchpad": lambda q: once(scratchpad, q, **sizes),
        "self-consistency": lambda q: self_consistency(q, num_samples=particles, **sizes)[0],
        "verifier+SMC": smc,
        "verifier+rejection": rejection,
        "tool use": tool,
        "by blocks": lambda q: once(long_addition, q, verify=False, **by_blocks),
        "by blocks+SMC": blocks_smc,
    }


def compare(
    model,
    problems: Sequence[tuple[str, str]],
    methods: Sequence[str] = METHODS,
    *,
    digits: int,
    seed: int = 0,
    progress: bool = False,
    counted=(),
    **method_kwargs,
) -> dict[str, dict]:
    """Answer ``problems`` with each method; accuracy, time and compute per method.

    Each method's row starts from ``seed``, so rows do not depend on which others ran.
    A run whose every particle is rejected (:class:`~llmppl.InferenceError`) is a wrong answer.

    :param problems: ``(question, answer)`` pairs, e.g. from :func:`held_out_additions`.
    :param methods: names from :data:`METHODS`.
    :param counted: further models whose tokens count (e.g. a separate verifier).
    :param method_kwargs: passed to :func:`make_methods`.
    :returns: ``{method: {"accuracy", "correct", "n", "failures", "seconds", "prefill_tokens",
        "decode_tokens", "tokens_per_problem"}}``.

    >>> import string
    >>> from llmppl.models import ToyLM
    >>> rows = compare(ToyLM(alphabet=string.printable), [("1+2", "3")], ["scratchpad"], digits=1)
    >>> sorted(rows["scratchpad"])[:3]
    ['accuracy', 'correct', 'decode_tokens']
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"compare: methods: expected names from {METHODS}, got {unknown}")
    from tqdm.auto import tqdm

    runners = make_methods(model, digits, **method_kwargs)
    rows: dict[str, dict] = {}
    for method in methods:
        seed_everything(seed)
        for m in (model, *counted):  # a row pays for its own prompts
            m.clear_prefix_cache()
        correct = failures = 0
        start = time.perf_counter()
        with count_tokens(model, *counted) as count:
            for question, truth in tqdm(problems, desc=f"{digits} digits, {method}", leave=False, disable=not progress):
                try:
                    correct += runners[method](question).strip() == truth
                except InferenceError:
                    failures += 1
        n = len(problems)
        rows[method] = {
            "accuracy": correct / n if n else 0.0,
            "correct": correct,
            "n": n,
            "failures": failures,
            "seconds": time.perf_counter() - start,
            "prefill_tokens": count.prefill,
            "decode_tokens": count.decode,
            "tokens_per_problem": count.total / n if n else 0.0,
        }
    return rows
