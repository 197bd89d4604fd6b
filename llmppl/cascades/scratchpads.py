r"""Scratchpads / chain of thought: ``question → thought → answer`` (Language Model Cascades, §3.1).

The paper's figure 2 model: a thought :math:`T` drawn from the LM given the question
:math:`Q`, then the answer :math:`A` drawn given both,

.. math:: p(A \mid Q) = \sum_T p(A \mid Q, T)\, p(T \mid Q).

Prompts follow the ``scratchpad`` training format of :mod:`llmppl.models.tasks`
(``Q: 4721+385\nWork: 1+5=6 c0; ...\nA: 5106\n``). The prompts end with the space that
follows ``Work:`` and ``A:``, so sampled values carry no leading space; with the
byte-level tokenizer this is the same token sequence as the training text. For another
model pass ``style=`` (:class:`~llmppl.cascades.prompts.PromptStyle`: a few-shot prefix,
and no trailing space for BPE models, whose default style it is already).

>>> import string, pyro
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet=string.printable)
>>> pyro.set_rng_seed(0)
>>> isinstance(scratchpad("1+2", model=lm, max_work_tokens=4, max_answer_tokens=2), str)
True
"""

from __future__ import annotations

import pyro

import llmppl
from llmppl import LM

from ._common import answer_probs, check_str, example_model, seed_everything
from .prompts import PromptStyle, resolve_style

__all__ = ["answer_prompt", "direct", "direct_prompt", "run_example", "scratchpad", "work_prompt"]

_DEFAULT = PromptStyle()


def work_prompt(question: str, style: PromptStyle = _DEFAULT) -> str:
    """The prompt of the thought site: ``"Q: {question}\\nWork: "`` (after ``style.prefix``).

    >>> work_prompt("12+34"), work_prompt("12+34", PromptStyle(space=""))
    ('Q: 12+34\\nWork: ', 'Q: 12+34\\nWork:')
    """
    return style.prompt(f"Q: {question}\n{style.label('Work:')}")


def answer_prompt(question: str, work: str, style: PromptStyle = _DEFAULT) -> str:
    """The prompt of the answer site: ``"Q: {question}\\nWork: {work}\\nA: "`` (after ``style.prefix``).

    ``work`` is the sampled value, so with ``space=""`` it brings its own leading space.

    >>> answer_prompt("12+34", "2+4=6 c0; 1+3+0=4 c0")
    'Q: 12+34\\nWork: 2+4=6 c0; 1+3+0=4 c0\\nA: '
    """
    return style.prompt(f"Q: {question}\n{style.label('Work:')}{work}\n{style.label('A:')}")


def direct_prompt(question: str, style: PromptStyle = _DEFAULT) -> str:
    """The prompt of a direct answer: ``"Q: {question}\\nA: "`` (after ``style.prefix``).

    >>> direct_prompt("12+34")
    'Q: 12+34\\nA: '
    """
    return style.prompt(f"Q: {question}\n{style.label('A:')}")


def direct(question: str, *, model=None, max_answer_tokens: int = 16, temperature=1.0, style=None):
    """The baseline without a thought: one LM site ``"answer"`` after ``"Q: {question}\\nA: "``.

    >>> import string, pyro
    >>> from llmppl.models import ToyLM
    >>> isinstance(direct("1+2", model=ToyLM(alphabet=string.printable), max_answer_tokens=2), str)
    True
    """
    check_str(question, "direct", "question")
    style = resolve_style(style, model)
    prompt = direct_prompt(question, style)
    return pyro.sample(
        "answer", LM(prompt, model=model, stop="\n", max_tokens=max_answer_tokens, temperature=temperature)
    )


def scratchpad(
    question: str,
    *,
    model=None,
    max_work_tokens: int = 96,
    max_answer_tokens: int = 16,
    temperature=1.0,
    style: PromptStyle | None = None,
):
    """The scratchpad cascade: sample the thought (site ``"work"``), then the answer (site ``"answer"``).

    :param str question: e.g. ``"4721+385"``.
    :param model: the language model (default: ``llmppl.use_model``'s).
    :param int max_work_tokens: length limit of the thought.
    :param int max_answer_tokens: length limit of the answer.
    :param float temperature: sampling temperature of both sites.
    :param style: a :class:`~llmppl.cascades.prompts.PromptStyle` (default: the model's).
    :returns: the answer string.

    >>> import string, pyro
    >>> from llmppl.models import ToyLM
    >>> pyro.set_rng_seed(0)
    >>> tr = pyro.poutine.trace(scratchpad).get_trace(
    ...     "1+2", model=ToyLM(alphabet=string.printable), max_work_tokens=3, max_answer_tokens=2)
    >>> [n for n in tr.nodes if not n.startswith("_")], tr.nodes["_RETURN"]["value"] == tr.nodes["answer"]["value"]
    (['work', 'answer'], True)
    """
    check_str(question, "scratchpad", "question")
    style = resolve_style(style, model)
    work = pyro.sample(
        "work",
        LM(work_prompt(question, style), model=model, stop="\n", max_tokens=max_work_tokens, temperature=temperature),
    )
    return pyro.sample(
        "answer",
        LM(
            answer_prompt(question, work, style),
            model=model,
            stop="\n",
            max_tokens=max_answer_tokens,
            temperature=temperature,
        ),
    )


def run_example(
    question: str = "12+34",
    *,
    model=None,
    num_particles: int = 8,
    max_work_tokens: int = 48,
    max_answer_tokens: int = 8,
    seed: int = 0,
    style: PromptStyle | None = None,
) -> dict:
    """Importance-sample the scratchpad cascade on one question.

    :param model: a language model; default: the shipped Performer checkpoint.
    :param style: prompts for ``model`` (default: its :func:`~llmppl.cascades.prompts.default_style`).
    :returns: ``{"question", "posterior", "sample", "answer", "answers"}``: the
        :class:`~llmppl.inference.Posterior`, one sampled trace's answer, the mode of the
        answer marginal and the (whitespace-stripped) answer distribution.

    >>> import string
    >>> from llmppl.models import ToyLM
    >>> out = run_example("1+2", model=ToyLM(alphabet=string.printable), num_particles=2, max_work_tokens=3,
    ...                   max_answer_tokens=2)
    >>> sorted(out), out["answer"] == next(iter(out["answers"])), out["posterior"].num_particles
    (['answer', 'answers', 'posterior', 'question', 'sample'], True, 2)
    """
    seed_everything(seed)
    lm = example_model(model)
    post = llmppl.infer.Importance(scratchpad, num_samples=num_particles, progress=False).run(
        question, model=lm, max_work_tokens=max_work_tokens, max_answer_tokens=max_answer_tokens, style=style
    )
    answers = answer_probs(post.marginal("answer"))
    return {
        "question": question,
        "posterior": post,
        "sample": post.sample(),
        "answer": next(iter(answers)),
        "answers": answers,
    }
