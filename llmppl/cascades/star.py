r"""STaR's rationale generation and filtering step (Language Model Cascades, §3.6, "STaR").

Self-Taught Reasoner (Zelikman et al.) as a cascade: for a problem with a known answer
:math:`a^*`, sample rationales from the scratchpad model and keep those whose answer is
correct. Keeping a rationale :math:`T` only when the sampled answer equals :math:`a^*` is
rejection sampling from

.. math:: p(T \mid Q, A{=}a^*) \propto p(T \mid Q)\, p(A{=}a^* \mid Q, T),

so here the scratchpad's ``"answer"`` site is observed at :math:`a^*` and
:class:`~llmppl.inference.Rejection` draws the rationales. The kept rationales become
training documents in the ``scratchpad`` format of :mod:`llmppl.models.tasks`.

:func:`star_loop` repeats generate → filter → fine-tune → evaluate. By default (a
:class:`~llmppl.models.PerformerLM`) the fine-tuning step is
:func:`llmppl.models.train.fine_tune` on the kept rationales, as ``(prompt, completion)``
pairs weighted as in training (:func:`star_pair`); any ``fine_tune(model, documents) ->
model`` can replace it (e.g. for ``HFCausalLM``). With ``save_dir`` the improved model is
written after every iteration (``iteration_<i>/`` and ``final/``: ``config.json`` +
``model.safetensors``, loadable with :func:`llmppl.load_pretrained`) with the history in
``history.json``.

Where STaR shows: a model that is sometimes right at a length. From a checkpoint that
sampled a correct 8-digit scratchpad 29 % of the time, three iterations of 400 problems
(``llmppl star --digits 8 --train-problems 400 --steps 120 --lr 1e-4 --restart``) reached
67 % (BENCHMARKS.md). A model trained with worked scratchpads only up to 3 digits
(``--max-digits '{"scratchpad": 3, "verifier": 3}'``), the regime the issue names, solves
no 4-digit problem in 64 attempts, so it has no rationale to keep.

>>> import string, pyro
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet=string.printable)
>>> pyro.set_rng_seed(0)
>>> docs = star_rationales([("1+1", "2")], model=lm, num_rationales=1, max_attempts=4, max_work_tokens=3)
>>> all(d.startswith("Q: 1+1\nWork: ") and d.endswith("\nA: 2\n") for d in docs)
True
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Callable, Sequence

import pyro

import llmppl
from llmppl import InferenceError
from llmppl.distributions import get_default_model
from llmppl.models import PerformerLM, tasks

from ._common import answer_probs, check_pairs, example_model, seed_everything
from .prompts import PromptStyle, resolve_style
from .scratchpads import answer_prompt, scratchpad, work_prompt

__all__ = [
    "DEFAULT_FINE_TUNE",
    "accuracy",
    "addition_problems",
    "run_example",
    "star_document",
    "star_loop",
    "star_pair",
    "star_rationales",
]

#: the default fine-tuning settings of :func:`star_loop` (``llmppl.models.train.fine_tune`` keywords)
DEFAULT_FINE_TUNE = {"steps": 100, "lr": 3e-4, "batch_tokens": 3072, "warmup": 10}


def star_document(question: str, work: str, answer: str) -> str:
    """A training document in the ``scratchpad`` format.

    ``work`` is taken as sampled under a style with ``space=" "``; strip a BPE model's
    leading space first.

    >>> star_document("12+34", "2+4=6 c0; 1+3+0=4 c0", "46")
    'Q: 12+34\\nWork: 2+4=6 c0; 1+3+0=4 c0\\nA: 46\\n'
    """
    return f"Q: {question}\nWork: {work}\nA: {answer}\n"


def star_pair(document: str) -> tuple[str, str]:
    """A :func:`star_document` as ``(prompt, completion)``, split where training splits it (after ``Work:``).

    >>> star_pair("Q: 12+34\\nWork: 2+4=6 c0; 1+3+0=4 c0\\nA: 46\\n")
    ('Q: 12+34\\nWork:', ' 2+4=6 c0; 1+3+0=4 c0\\nA: 46\\n')
    """
    head, sep, rest = document.partition("\nWork:")
    if not sep:
        raise ValueError(f"star_pair: document: expected a scratchpad document with '\\nWork:', got {document!r:.60}")
    return head + sep, rest


def addition_problems(n: int, digits, *, split: str, seed: int = 0, start: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct additions ``("a+b", "sum")`` of ``split`` (``"train"`` or ``"test"``, never overlapping).

    Drawn in a seeded order, repeats skipped: a ``ValueError`` when the split has fewer than
    ``n`` of that length (one digit: 4 held-out pairs of 100).

    :param digits: operand length, or a list of lengths used in turn.

    >>> addition_problems(2, [1, 2], split="test")
    [('5+8', '13'), ('15+66', '81')]
    """
    lengths = [digits] if isinstance(digits, int) else list(digits)
    out, seen = [], set()
    i = start
    misses = 0
    while len(out) < n:
        d = lengths[len(out) % len(lengths)]
        p = tasks.sample_problem("scratchpad", split=split, seed=seed, index=i, digits=d)
        i += 1
        q = f"{p.meta['a']}+{p.meta['b']}"
        if q in seen:
            misses += 1
            if misses > 1000 + 20 * n:
                raise ValueError(
                    f"addition_problems: n: expected at most the distinct {split}-split additions of "
                    f"{lengths} digits, got n={n}; {len(out)} found"
                )
            continue
        seen.add(q)
        out.append((q, p.target))
    return out


def star_rationales(
    problems: Sequence[tuple[str, str]],
    *,
    model=None,
    num_rationales: int = 4,
    max_attempts: int = 256,
    max_work_tokens: int = 96,
    stats: dict | None = None,
    style: PromptStyle | None = None,
) -> list[str]:
    """Sample rationales for problems with known answers; keep those that reach the answer.

    :param problems: ``(question, answer)`` pairs, e.g. ``[("4721+385", "5106")]``.
    :param model: the language model (default: ``llmppl.use_model``'s).
    :param int num_rationales: accepted rationales wanted per problem.
    :param int max_attempts: rejection-sampling runs per problem; a problem with fewer
        accepted runs contributes nothing.
    :param dict stats: if given, filled with ``{"solved", "attempts"}`` per ``(question, answer)``.
    :param style: the scratchpad's :class:`~llmppl.cascades.prompts.PromptStyle` (default:
        the model's); the documents never include its prefix.
    :returns: distinct training documents (see :func:`star_document`), in problem order.

    >>> import string, pyro
    >>> from llmppl.models import ToyLM
    >>> pyro.set_rng_seed(0)
    >>> stats = {}
    >>> docs = star_rationales([("1+1", "2"), ("2+2", "4")], model=ToyLM(alphabet=string.printable),
    ...                        num_rationales=1, max_attempts=3, max_work_tokens=2, stats=stats)
    >>> isinstance(docs, list), len(docs) <= 2, list(stats), sorted(stats["1+1", "2"])
    (True, True, [('1+1', '2'), ('2+2', '4')], ['attempts', 'solved'])
    """
    problems = check_pairs(problems, "star_rationales", "problems")
    style = resolve_style(style, model)
    documents: list[str] = []
    for question, answer in problems:
        conditioned = pyro.condition(scratchpad, data={"answer": style.value(answer)})
        sampler = llmppl.infer.Rejection(
            conditioned, num_samples=num_rationales, max_attempts=max_attempts, progress=False
        )
        try:
            post = sampler.run(
                question, model=model, max_work_tokens=max_work_tokens, max_answer_tokens=len(answer) + 1, style=style
            )
        except InferenceError:
            post = None
        if stats is not None:
            stats[question, answer] = {"solved": post is not None, "attempts": sampler.num_attempts}
        if post is None:
            continue
        for trace in post.traces:
            assert trace.nodes["answer"]["value"] == style.value(answer)  # observed: only exact matches kept
            doc = star_document(question, style.unvalue(trace.nodes["work"]["value"]), answer)
            if doc not in documents:
                documents.append(doc)
    return documents


def _resolve_model(model):
    return get_default_model() if model is None else model


def accuracy(
    problems: Sequence[tuple[str, str]],
    *,
    model=None,
    num_samples: int = 1,
    max_work_tokens: int = 96,
    max_answer_tokens: int = 16,
    temperature: float = 1.0,
    style: PromptStyle | None = None,
    batch_size: int = 64,
    correct: list | None = None,
) -> float:
    """The fraction of ``(question, answer)`` problems whose scratchpad answer is right.

    Each problem's answer is the mode of ``num_samples`` sampled scratchpads, whitespace
    ignored. With ``num_samples=1`` (one sampled scratchpad at ``temperature``) the
    problems are decoded together, ``batch_size`` at a time, through the model's batched
    ``sample`` (the same distribution as running :func:`scratchpad` once per problem);
    otherwise each problem is one :class:`~llmppl.inference.Importance` run.

    :param list correct: if given, one bool per problem is appended.

    >>> accuracy([], model=None)
    0.0
    """
    problems = check_pairs(problems, "accuracy", "problems")
    if not problems:
        return 0.0
    model = _resolve_model(model)
    style = resolve_style(style, model)
    right: list[bool] = []
    if num_samples == 1:
        decode = {"stop": "\n", "temperature": temperature}
        for i in range(0, len(problems), batch_size):
            chunk = problems[i : i + batch_size]
            works = model.sample([work_prompt(q, style) for q, _ in chunk], max_tokens=max_work_tokens, **decode)
            prompts = [answer_prompt(q, w.text, style) for (q, _), w in zip(chunk, works, strict=True)]
            answers = model.sample(prompts, max_tokens=max_answer_tokens, **decode)
            right += [c.text.strip() == a for (_, a), c in zip(chunk, answers, strict=True)]
    else:
        sizes = {"max_work_tokens": max_work_tokens, "max_answer_tokens": max_answer_tokens}
        for question, answer in problems:
            post = llmppl.infer.Importance(scratchpad, num_samples=num_samples, progress=False).run(
                question, model=model, temperature=temperature, style=style, **sizes
            )
            right.append(next(iter(answer_probs(post.marginal("answer")))) == answer)
    if correct is not None:
        correct.extend(right)
    return sum(right) / len(problems)


_ADDITION = re.compile(r"(\d+)\+(\d+)")


def _by_digits(problems, correct) -> dict[int, float] | None:
    """Accuracy per operand length when every question is an addition ``a+b``."""
    groups: dict[int, list[bool]] = {}
    for (question, _), ok in zip(problems, correct, strict=True):
        m = _ADDITION.fullmatch(question)
        if m is None:
            return None
        groups.setdefault(max(len(m.group(1)), len(m.group(2))), []).append(ok)
    return {d: sum(v) / len(v) for d, v in sorted(groups.items())}


def _default_fine_tune(settings: dict):
    from llmppl.models.train import document_loss
    from llmppl.models.train import fine_tune as train_fine_tune

    def fine_tune(model, documents):
        pairs = [star_pair(d) for d in documents]
        before = document_loss(model, pairs)
        train_fine_tune(model, pairs, **settings)
        fine_tune.last = {"loss_before": round(before, 4), "loss_after": round(document_loss(model, pairs), 4)}
        return model

    fine_tune.last = None
    return fine_tune


def star_loop(
    train_problems: Sequence[tuple[str, str]],
    held_out: Sequence[tuple[str, str]],
    *,
    model,
    fine_tune: Callable | None = None,
    iterations: int = 3,
    num_rationales: int = 4,
    max_attempts: int = 256,
    max_work_tokens: int = 96,
    eval_samples: int = 1,
    style: PromptStyle | None = None,
    fine_tune_kwargs: dict | None = None,
    restart: bool = False,
    save_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[object, list[dict]]:
    """STaR's outer loop: rationales → filter → fine-tune → held-out accuracy, ``iterations`` times.

    Every iteration samples rationales from the *current* model. The fine-tuning step is
    ``fine_tune(model, documents) -> model``; by default, for a
    :class:`~llmppl.models.PerformerLM`, :func:`llmppl.models.train.fine_tune` with
    :data:`DEFAULT_FINE_TUNE` updated by ``fine_tune_kwargs``, on a copy of ``model`` (the
    model passed in is left unchanged). An iteration without documents does not fine-tune.

    :param train_problems: ``(question, answer)`` pairs with known answers.
    :param held_out: ``(question, answer)`` pairs for the accuracy after each iteration
        (one sampled scratchpad per problem with ``eval_samples=1``, see :func:`accuracy`).
    :param model: the starting language model.
    :param callable fine_tune: ``(model, documents) -> model``; default: see above.
    :param int iterations: how many, at least 1 (as ``llmppl star --iterations``).
    :param style: the scratchpad's :class:`~llmppl.cascades.prompts.PromptStyle` (default: the model's).
    :param bool restart: fine-tune a fresh copy of the *starting* model every iteration (the
        STaR paper's choice) instead of continuing from the last one.
    :param save_dir: write ``iteration_<i>/``, ``final/`` (the model's ``save_pretrained``)
        and ``history.json`` there.
    :param log: called with one line per iteration (e.g. ``print``).
    :returns: ``(final_model, history)``; ``history[0]`` is the starting model's accuracy,
        then one ``{"iteration", "documents", "solved", "accuracy", "accuracy_by_digits",
        "seconds"}`` per iteration (and ``"fine_tune"``: the loss on the documents before
        and after, with the default fine-tuning).

    >>> from llmppl.models import PerformerConfig, PerformerLM
    >>> lm = PerformerLM(PerformerConfig.tiny())
    >>> final, history = star_loop([("1+1", "2")], [("2+2", "4")], model=lm, iterations=1,
    ...     max_attempts=2, max_work_tokens=4, fine_tune_kwargs={"steps": 1})
    >>> [h["iteration"] for h in history], final is not lm
    ([0, 1], True)
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"star_loop: iterations: expected an int >= 1, got {iterations!r}")
    default = fine_tune is None
    if default:
        if not isinstance(model, PerformerLM):
            raise TypeError(
                "star_loop: fine_tune: the default fine-tunes a PerformerLM; for a "
                f"{type(model).__name__} pass fine_tune=(model, documents) -> model"
            )
        unknown = sorted(set(fine_tune_kwargs or {}) - {*DEFAULT_FINE_TUNE, "seed", "prompt_weight", "progress"})
        if unknown:
            raise ValueError(f"star_loop: fine_tune_kwargs: unknown keys {unknown}; expected fine_tune keywords")
        fine_tune = _default_fine_tune({**DEFAULT_FINE_TUNE, **(fine_tune_kwargs or {})})
        model = copy.deepcopy(model)
        model.clear_prefix_cache()
    elif not callable(fine_tune):
        raise TypeError(f"star_loop: fine_tune: expected a callable (model, documents) -> model, got {fine_tune!r}")
    if save_dir is not None and not hasattr(model, "save_pretrained"):
        raise TypeError(f"star_loop: save_dir: {type(model).__name__} has no save_pretrained to write the model with")
    style = resolve_style(style, model)
    base = copy.deepcopy(model) if restart else None
    score = {"num_samples": eval_samples, "max_work_tokens": max_work_tokens, "style": style}

    def evaluate(entry: dict) -> dict:
        correct: list = []
        entry["accuracy"] = accuracy(held_out, model=model, correct=correct, **score)
        entry["accuracy_by_digits"] = _by_digits(held_out, correct)
        return entry

    def save(i: int) -> None:
        if save_dir is None:
            return
        os.makedirs(save_dir, exist_ok=True)
        extra = {"star": {"iteration": i, "history": history}}
        for name in (f"iteration_{i}", "final"):
            model.save_pretrained(os.path.join(save_dir, name), extra=extra)
        with open(os.path.join(save_dir, "history.json"), "w") as f:
            json.dump(history, f, indent=2)

    t0 = time.perf_counter()
    history = [evaluate({"iteration": 0, "documents": 0})]
    history[0]["seconds"] = round(time.perf_counter() - t0, 1)
    if log is not None:
        log(f"STaR iteration 0: held-out accuracy {history[0]['accuracy']:.1%}")
    for i in range(1, iterations + 1):
        t0 = time.perf_counter()
        stats: dict = {}
        documents = star_rationales(
            train_problems,
            model=model,
            num_rationales=num_rationales,
            max_attempts=max_attempts,
            max_work_tokens=max_work_tokens,
            stats=stats,
            style=style,
        )
        entry = {"iteration": i, "documents": len(documents), "solved": sum(v["solved"] for v in stats.values())}
        if documents or not default:
            start = copy.deepcopy(base) if restart else model
            model = fine_tune(start, documents)
            if default:
                entry["fine_tune"] = fine_tune.last
        history.append(evaluate(entry))
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        save(i)
        if log is not None:
            log(
                f"STaR iteration {i}: {entry['solved']}/{len(train_problems)} problems solved, "
                f"{entry['documents']} rationales, held-out accuracy {entry['accuracy']:.1%} ({entry['seconds']} s)"
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

    >>> import string
    >>> from llmppl.models import ToyLM
    >>> out = run_example(model=ToyLM(alphabet=string.printable), num_problems=1, num_particles=1, max_attempts=2,
    ...                   digits=1, max_work_tokens=3)
    >>> sorted(out), len(out["problems"]), list(out["stats"]) == out["problems"]
    (['documents', 'problems', 'stats'], 1, True)
    """
    seed_everything(seed)
    problems = addition_problems(num_problems, digits, split="train", seed=seed)
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
