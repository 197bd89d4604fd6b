r"""A scratchpad checked by an LM verifier (Language Model Cascades, §3.2, "Verifiers").

The paper adds a Boolean node :math:`V` after the thought and answer, drawn from a
verifier LM, and conditions on :math:`V = \text{yes}`:

.. math:: p(T, A \mid Q, V{=}\text{yes}) \propto p(T \mid Q)\, p(A \mid Q, T)\, p_\text{ver}(\text{yes} \mid Q, T, A).

Two ways to write the evidence:

- ``mode="observe"``: an observed site ``pyro.sample("verified", LM(...), obs="yes")``:
  the exact string ``"yes"`` must be what the verifier writes (usable with
  :class:`~llmppl.inference.Rejection`, :class:`~llmppl.inference.SMC`,
  :class:`~llmppl.inference.Importance`);
- ``mode="factor"``: ``pyro.factor("verified", beta * log p_ver("yes"))``, a tempered
  version (``beta=1`` is the same weight as observing; ``beta<1`` trusts the verifier
  less). The factor is ``<= 0``, so ``Rejection`` works with its default bound. It is
  scored inside the program, one particle at a time; the observed site is scored by the
  engine in one batch across particles, so prefer ``"observe"`` when ``beta`` is 1.

The verifier prompt follows the ``verifier`` training format of
:mod:`llmppl.models.tasks`: ``Verify: 4721+385\nWork: ...\nA: 5106\nOK: yes\n``.

>>> import string, pyro
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet=string.printable)
>>> pyro.set_rng_seed(0)
>>> tr = pyro.poutine.trace(verified_scratchpad).get_trace("1+2", model=lm, max_work_tokens=2, max_answer_tokens=2)
>>> [n for n in tr.nodes if not n.startswith("_")], tr.nodes["verified"]["is_observed"]
(['work', 'answer', 'verified'], True)
"""

from __future__ import annotations

import pyro

import llmppl
from llmppl import LM

from ._common import answer_probs, check_str, example_model, seed_everything
from .prompts import PromptStyle, resolve_style
from .scratchpads import answer_prompt, work_prompt

__all__ = ["MODES", "run_example", "verified_scratchpad", "verifier_prompt"]

MODES = ("observe", "factor")


_DEFAULT = PromptStyle()


def verifier_prompt(question: str, work: str, answer: str, style: PromptStyle = _DEFAULT) -> str:
    """The verifier's prompt: ``"Verify: {question}\\nWork: {work}\\nA: {answer}\\nOK: "`` (after ``style.prefix``).

    ``work`` and ``answer`` are sampled values: with ``style.space == ""`` they bring their
    own leading space.

    >>> verifier_prompt("12+34", "2+4=6 c0; 1+3+0=4 c0", "46")
    'Verify: 12+34\\nWork: 2+4=6 c0; 1+3+0=4 c0\\nA: 46\\nOK: '
    """
    lab = style.label
    return style.prompt(f"Verify: {question}\n{lab('Work:')}{work}\n{lab('A:')}{answer}\n{lab('OK:')}")


def verified_scratchpad(
    question: str,
    *,
    model=None,
    verifier_model=None,
    mode: str = "observe",
    beta: float = 1.0,
    max_work_tokens: int = 96,
    max_answer_tokens: int = 16,
    style: PromptStyle | None = None,
    verifier_style: PromptStyle | None = None,
):
    """Scratchpad (sites ``"work"``, ``"answer"``) then the verifier's evidence (site ``"verified"``).

    :param str question: e.g. ``"4721+385"``.
    :param model: the generator LM (default: ``llmppl.use_model``'s).
    :param verifier_model: the verifier LM (default: ``model``).
    :param str mode: ``"observe"`` (observed site, ``obs="yes"``) or ``"factor"``.
    :param float beta: the factor's temperature (``mode="factor"`` only), ``>= 0``.
    :param style: prompts of the generator (default: ``model``'s
        :func:`~llmppl.cascades.prompts.default_style`).
    :param verifier_style: prompts of the verifier, e.g. with few-shot verdicts as prefix
        (default: ``style`` without its prefix when the verifier is ``model``, else the
        verifier's default style). The evidence is the verifier writing ``"yes"``.
    :returns: the answer string.

    >>> import string, pyro
    >>> from llmppl.models import ToyLM
    >>> lm = ToyLM(alphabet=string.printable)
    >>> pyro.set_rng_seed(0)
    >>> tr = pyro.poutine.trace(verified_scratchpad).get_trace(
    ...     "1+2", model=lm, mode="factor", beta=0.5, max_work_tokens=2, max_answer_tokens=2)
    >>> float(tr.nodes["verified"]["fn"].log_factor) <= 0  # beta * log p_ver("yes")
    True
    >>> verified_scratchpad("1+2", model=lm, mode="vote")
    Traceback (most recent call last):
    ...
    ValueError: verified_scratchpad: mode: expected one of ('observe', 'factor'), got 'vote'
    """
    check_str(question, "verified_scratchpad", "question")
    if mode not in MODES:
        raise ValueError(f"verified_scratchpad: mode: expected one of {MODES}, got {mode!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
        raise ValueError(f"verified_scratchpad: beta: expected a float >= 0, got {beta!r}")
    style = resolve_style(style, model)
    if verifier_style is None:
        verifier_style = style.with_prefix("") if verifier_model is None else resolve_style(None, verifier_model)
    verifier_style = resolve_style(verifier_style)
    work = pyro.sample("work", LM(work_prompt(question, style), model=model, stop="\n", max_tokens=max_work_tokens))
    answer = pyro.sample(
        "answer", LM(answer_prompt(question, work, style), model=model, stop="\n", max_tokens=max_answer_tokens)
    )
    if verifier_style.space != style.space:  # the sampled values carry the generator's spacing
        work, answer = work.strip(), answer.strip()
        if not verifier_style.space:
            work, answer = " " + work, " " + answer
    verifier = LM(
        verifier_prompt(question, work, answer, verifier_style),
        model=model if verifier_model is None else verifier_model,
        stop="\n",
        max_tokens=4,
    )
    yes = verifier_style.value("yes")
    if mode == "observe":
        pyro.sample("verified", verifier, obs=yes)
    else:
        pyro.factor("verified", beta * verifier.log_prob(yes))
    return answer


def run_example(
    question: str = "12+34",
    *,
    model=None,
    verifier_model=None,
    num_particles: int = 8,
    algorithm: str = "smc",
    mode: str = "observe",
    max_work_tokens: int = 48,
    max_answer_tokens: int = 8,
    max_attempts: int = 1000,
    seed: int = 0,
    style: PromptStyle | None = None,
    verifier_style: PromptStyle | None = None,
) -> dict:
    """Scratchpad + verifier on one question with SMC (default), rejection or importance sampling.

    :param model: the generator (and verifier); default: the shipped Performer checkpoint.
    :param verifier_model: the verifier, if not ``model``.
    :param str algorithm: ``"smc"``, ``"rejection"`` or ``"importance"``.
    :param str mode: ``"observe"`` or ``"factor"``.
    :param int max_attempts: for ``"rejection"``.
    :param style: prompts of the generator; ``verifier_style``: of the verifier (see :func:`verified_scratchpad`).
    :returns: ``{"question", "answer", "answers", "posterior", "algorithm", "mode"}``.

    >>> import string
    >>> from llmppl.models import ToyLM
    >>> out = run_example("1+2", model=ToyLM(alphabet=string.printable), num_particles=2, algorithm="importance",
    ...                   max_work_tokens=2, max_answer_tokens=2)
    >>> sorted(out)
    ['algorithm', 'answer', 'answers', 'mode', 'posterior', 'question']
    >>> out["algorithm"], out["mode"], out["answer"] == next(iter(out["answers"]))
    ('importance', 'observe', True)
    """
    seed_everything(seed)
    lm = example_model(model)
    kwargs = {
        "model": lm,
        "verifier_model": verifier_model,
        "mode": mode,
        "max_work_tokens": max_work_tokens,
        "max_answer_tokens": max_answer_tokens,
        "style": style,
        "verifier_style": verifier_style,
    }
    if algorithm == "smc":
        infer = llmppl.infer.SMC(verified_scratchpad, num_particles=num_particles, progress=False)
    elif algorithm == "rejection":
        infer = llmppl.infer.Rejection(
            verified_scratchpad, num_samples=num_particles, max_attempts=max_attempts, progress=False
        )
    elif algorithm == "importance":
        infer = llmppl.infer.Importance(verified_scratchpad, num_samples=num_particles, progress=False)
    else:
        raise ValueError(f"run_example: algorithm: expected 'smc', 'rejection' or 'importance', got {algorithm!r}")
    post = infer.run(question, **kwargs)
    answers = answer_probs(post.marginal("answer"))
    return {
        "question": question,
        "answer": next(iter(answers)),
        "answers": answers,
        "posterior": post,
        "algorithm": algorithm,
        "mode": mode,
    }
