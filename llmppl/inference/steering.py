r"""Token-level steering: SMC over tokens inside ``LM`` sites that carry a ``potential``.

Particles stopped at such sites (same model, decoding settings and potential) are
extended together through the model's token tier: each distinct prompt is prefilled
once, then every step draws one token per particle from the same step distribution as
:meth:`LanguageModel.sample` (temperature, top-k, special tokens removed), and stops at
the first stop string, at EOS or after ``max_tokens`` tokens. With :math:`s_t` the text
after step :math:`t` the weight gets the telescoping twist

.. math:: f(s_0) + \sum_t \bigl(f(s_t) - f(s_{t-1})\bigr) = f(x), \qquad s_0 = \text{""},

so the finished string's target is :math:`\mathrm{LM}(x)\,e^{f(x)}` and intermediate
potentials only guide resampling (which happens among the group when its ESS is low;
the group's weights are replaced by their mean, so estimates stay unbiased).
While the text ends with the beginning of a stop string, the potential sees the text
without it (``"12\n"`` with ``stop="\n\n"`` is scored as ``"12"``).

For unbiasedness with a hard constraint, ``f(prefix)`` may be ``-inf`` only when no
completion of ``prefix`` is acceptable (e.g. "digits only", "at most 12 words").

>>> import pyro
>>> from llmppl.distributions import LM
>>> from llmppl.models import ToyLM
>>> from llmppl.inference.engine import Engine, Particle
>>> lm = ToyLM(alphabet="ab")
>>> def model():
...     return pyro.sample("x", LM("", model=lm, max_tokens=4, potential=lambda s: 0.0 if "b" not in s else -math.inf))
>>> pyro.set_rng_seed(0)
>>> ps = Engine(model).run([Particle() for _ in range(8)])
>>> all("b" not in p.ret for p in ps if not p.dead)
True
"""

from __future__ import annotations

import math

import torch

from llmppl.models.base import find_stop

from .engine import Engine, Particle, call_potential
from .resampling import get_resampler

__all__ = ["steer", "trim_partial_stop"]


def trim_partial_stop(text: str, stops: tuple[str, ...]) -> str:
    """``text`` without the longest suffix that begins a stop string.

    >>> trim_partial_stop("12\\n", ("\\n\\n",)), trim_partial_stop("ab", ("bc", "x"))
    ('12', 'a')
    """
    cut = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), cut, -1):
            if text.endswith(s[:k]):
                cut = k
                break
    return text[: len(text) - cut] if cut else text


def _ess(lw: torch.Tensor) -> float:
    if not bool(torch.isfinite(lw).any()):
        return 0.0
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))


def steer(engine: Engine, particles: list[Particle], idx: list[int]) -> None:
    """Extend the particles ``particles[i] for i in idx`` (stopped at potential sites) token by token.

    Writes the finished values (or kills the particles) in place; resampling replaces
    list items with copies of their ancestors.

    >>> callable(steer)
    True
    """
    fn0 = particles[idx[0]].stop.fn
    site0 = particles[idx[0]].stop.name
    model = fn0.model
    try:
        if model.tokenizer is None:
            raise model._local_only("tokenizer")
        state = engine._timed(model.prefill_prompts, [particles[i].stop.fn.prompt for i in idx])
    except NotImplementedError as err:
        raise NotImplementedError(
            f"site {site0!r}: token-level steering (LM(..., potential=...)) needs a local model with the token tier "
            f"(prefill/next_logprobs/advance); {type(model).__name__} implements only sample/score. "
            "Use a local model (PerformerLM, HFCausalLM) or drop the potential and add a pyro.factor instead"
        ) from err
    tokenizer = model.tokenizer
    eos = tokenizer.eos_id
    stops = tuple(fn0.stop)
    max_tokens = fn0.max_tokens
    resampler = get_resampler(engine.resampling)
    n = len(idx)
    slots = list(idx)
    cache: dict[str, float] = {}

    def potential(text: str, name: str) -> float:
        v = cache.get(text)
        if v is None:
            v = cache[text] = call_potential(fn0, text, name)
        return v

    generated: list[list[int]] = [[] for _ in range(n)]
    values: list[str | None] = [None] * n
    current = [0.0] * n  # f at the current text: what has been added to the weight
    for j in range(n):
        p = particles[slots[j]]
        f0 = potential("", p.stop.name)
        current[j] = f0
        if f0 == -math.inf:
            engine._kill(p, p.stop.name)
        else:
            p.log_weight += f0
    rows = [j for j in range(n) if not particles[slots[j]].dead]  # state row -> slot
    if len(rows) < n:
        state = state.select(torch.tensor(rows, dtype=torch.long))
    gen = engine.generator()
    for _ in range(max_tokens):
        if not rows:
            break
        lp = engine._timed(model.step_logprobs, state, temperature=fn0.temperature, top_k=fn0.top_k)
        probs = lp.exp().to(gen.device)
        tokens = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        token_list = tokens.tolist()
        keep: list[int] = []
        for r, j in enumerate(rows):
            p = particles[slots[j]]
            t = token_list[r]
            generated[j].append(t)
            finished = True
            if t == eos:
                text = tokenizer.decode(generated[j][:-1])
            else:
                text = tokenizer.decode(generated[j])
                cut = find_stop(text, stops) if stops else None
                if cut is not None:
                    text = text[:cut]
                elif len(generated[j]) < max_tokens:
                    finished = False
            f = potential(text if finished or not stops else trim_partial_stop(text, stops), p.stop.name)
            if f == -math.inf:
                engine._kill(p, p.stop.name)
                continue
            p.log_weight += f - current[j]
            current[j] = f
            if finished:
                values[j] = text
            else:
                keep.append(r)
        if keep and len(keep) < len(rows):
            keep_t = torch.tensor(keep, dtype=torch.long)
            state = state.select(keep_t)
            tokens = tokens[keep_t]
        if keep:
            state = engine._timed(model.advance, state, tokens.to(torch.long))
        rows = [rows[r] for r in keep]

        lw = torch.tensor([particles[s].log_weight for s in slots], dtype=torch.float64)
        if n > 1 and rows and _ess(lw) < engine.ess_threshold * n:
            ancestors = resampler(lw, n).tolist()
            mean = float(torch.logsumexp(lw, 0)) - math.log(n)
            row_of = {j: r for r, j in enumerate(rows)}
            copies = [particles[slots[a]].copy() for a in ancestors]
            for j, c in enumerate(copies):
                c.log_weight = mean
                particles[slots[j]] = c
            generated = [list(generated[a]) for a in ancestors]
            values = [values[a] for a in ancestors]
            current = [current[a] for a in ancestors]
            new_rows = [j for j, a in enumerate(ancestors) if a in row_of]
            if new_rows:
                state = state.select(torch.tensor([row_of[ancestors[j]] for j in new_rows], dtype=torch.long))
            rows = new_rows
            engine.num_steering_resamples += 1
    for j in range(n):
        p = particles[slots[j]]
        if p.dead:
            continue
        assert values[j] is not None
        name = p.stop.name
        p.values[name] = values[j]
        p.site_logp[name] = current[j]  # already in the weight
        p.stop = None
