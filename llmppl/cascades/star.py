r"""STaR's rationale generation and filtering step (Language Model Cascades, §3.6, "STaR").

Self-Taught Reasoner (Zelikman et al.) as a cascade: for a problem with a known answer
:math:`a^*`, sample rationales from the scratchpad model and keep those whose answer is
correct. Keeping a rationale :math:`T` only when the sampled answer equals :math:`a^*` is
rejection sampling from

.. math:: p(T \mid Q, A{=}a^*) \propto p(T \mid Q)\, p(A{=}a^* \mid Q, T),

so here the scratchpad's ``"answer"`` site is observed at :math:`a^*` and
:class:`~llmppl.inference.Rejection` draws the rationales. The kept rationales become
training documents in the ``scratchpad`` format of :mod:`llmppl.models.tasks`.

:func:`star_loop` repeats generate → filter → fine-tune → evaluate, with the
fine-tuning step passed in as a function ``fine_tune(model, documents) -> model``:
``llmppl.models.train`` exposes no fine-tuning entry point (its only training function,
``train(args)``, builds a fresh model from the task mixture), so the loop does not
fine-tune the Performer by itself.

>>> import string, pyro
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet=string.printable)
>>> pyro.set_rng_seed(0)
>>> docs = star_rationales([("1+1", "2")], model=lm, num_rationales=1, max_attempts=4, max_work_tokens=3)
>>> all(d.startswith("Q: 1+1\nWork: ") and d.endswith("\nA: 2\n") for d in docs)
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro

import llmppl
from llmppl import InferenceError
from llmppl.models import tasks

from ._common import example_model, seed_everything
from .scratchpads import scratchpad

__all__ = ["accuracy", "run_example", "star_document", "star_loop", "star_rationales"]


def star_document(question: str, work: str, answer: str) -> str:
    """A training document in the ``scratchpad`` format.

    >>> star_document("12+34", "2+4=6 c0; 1+3+0=4 c0", "46")
    'Q: 12+34\\nWork: 2+4=6 c0; 1+3+0=4 c0\\nA: 46\\n'
    """
    return f"Q: {question}\nWork: {work}\nA: {answer}\n"


def star_rationales(
    problems: Sequence[tuple[str, str]],
    *,
    model=None,
    num_rationales: int = 4,
    max_attempts: int = 256,
    max_work_tokens: int = 96,
    stats: dict | None = None,
) -> list[str]:
    """Sample rationales for problems with known answers; keep those that reach the answer.

    :param problems: ``(question, answer)`` pairs, e.g. ``[("4721+385", "5106")]``.
    :param model: the language model (default: ``llmppl.use_model``'s).
    :param int num_rationales: accepted rationales wanted per problem.
    :param int max_attempts: rejection-sampling runs per problem; a problem with fewer
        accepted runs contributes nothing.
    :param dict stats: if given, filled with ``{"solved", "attempts"}`` per ``(question, answer)``.
    :returns: distinct training documents (see :func:`star_document`), in problem order.
    """
    documents: list[str] = []
    for question, answer in problems:
        conditioned = pyro.condition(scratchpad, data={"answer": answer})
        sampler = llmppl.infer.Rejection(
            conditioned, num_samples=num_rationales, max_attempts=max_attempts, progress=False
        )
        try:
            post = sampler.run(
                question, model=model, max_work_tokens=max_work_tokens, max_answer_tokens=len(answer) + 1
            )
        except InferenceError:
            post = None
        if stats is not None:
            stats[question, answer] = {"solved": post is not None, "attempts": sampler.num_attempts}
        if post is None:
            continue
        for trace in post.traces:
            assert trace.nodes["answer"]["value"] == answer  # observed: Rejection keeps only exact matches
            doc = star_document(question, trace.nodes["work"]["value"], answer)
            if doc not in documents:
                documents.append(doc)
    return documents


def accuracy(problems: Sequence[tuple[str, str]], *, model=None, num_samples: int = 1, **scratchpad_kwargs) -> float:
    """The fraction of ``(question, answer)`` problems whose scratchpad answer is right.

    Each problem's answer is the mode of ``num_samples`` sampled scratchpads (``1``: one
    sampled scratchpad at temperature 1), whitespace ignored.

    >>> accuracy([], model=None)
    0.0
    """
    if not problems:
        return 0.0
    right = 0
    for question, answer in problems:
        post = llmppl.infer.Importance(scratchpad, num_samples=num_samples, progress=False).run(
            question, model=model, **scratchpad_kwargs
        )
        right += post.marginal("answer").mode().strip() == answer
    return right / len(problems)


def star_loop(
    train_problems: Sequence[tuple[str, str]],
    held_out: Sequence[tuple[str, str]],
    *,
    model,
    fine_tune: Callable,
    iterations: int = 3,
    num_rationales: int = 4,
    max_attempts: int = 256,
    max_work_tokens: int = 96,
    eval_samples: int = 1,
) -> tuple[object, list[dict]]:
    """STaR's outer loop: rationales → filter → ``fine_tune`` → held-out accuracy, ``iterations`` times.

    As in the paper, every iteration samples rationales from the *current* model;
    ``fine_tune(model, documents)`` returns the model for the next iteration (the paper
    restarts from the base model each time; a ``fine_tune`` that closes over it does that).

    :param train_problems: ``(question, answer)`` pairs with known answers.
    :param held_out: ``(question, answer)`` pairs for the accuracy after each iteration.
    :param model: the starting language model.
    :param callable fine_tune: ``(model, documents) -> model``.
    :returns: ``(final_model, history)``; ``history[0]`` is the starting model's accuracy,
        then one ``{"iteration", "documents", "accuracy"}`` per iteration.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"star_loop: iterations: expected an int >= 0, got {iterations!r}")
    if not callable(fine_tune):
        raise TypeError(f"star_loop: fine_tune: expected a callable (model, documents) -> model, got {fine_tune!r}")
    score = {"num_samples": eval_samples, "max_work_tokens": max_work_tokens}
    history = [{"iteration": 0, "documents": 0, "accuracy": accuracy(held_out, model=model, **score)}]
    for i in range(1, iterations + 1):
        documents = star_rationales(
            train_problems,
            model=model,
            num_rationales=num_rationales,
            max_attempts=max_attempts,
            max_work_tokens=max_work_tokens,
        )
        model = fine_tune(model, documents)
        history.append(
            {"iteration": i, "documents": len(documents), "accuracy": accuracy(held_out, model=model, **score)}
        )
    return model, history


def run_example(
    *,
    model=None,
    num_problems: int = 2,
    num_particles: int = 2,
    max_attempts: int = 64,
    digits: int = 2,
    max_work_tokens: int = 48,
    seed: int = 0,
) -> dict:
    """The filtering step on training-split additions of ``digits`` digits.

    :param model: a language model; default: the shipped Performer checkpoint.
    :param int num_particles: accepted rationales wanted per problem.
    :returns: ``{"problems", "documents", "stats"}``.
    """
    seed_everything(seed)
    problems = []
    for i in range(num_problems):
        p = tasks.sample_problem("scratchpad", split="train", seed=seed, index=i, digits=digits)
        problems.append((f"{p.meta['a']}+{p.meta['b']}", p.target))
    stats: dict = {}
    documents = star_rationales(
        problems,
        model=example_model(model),
        num_rationales=num_particles,
        max_attempts=max_attempts,
        max_work_tokens=max_work_tokens,
        stats=stats,
    )
    return {"problems": problems, "documents": documents, "stats": stats}
