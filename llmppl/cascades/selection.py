r"""Selection-inference: alternate a selection LM and an inference LM for k steps (Language Model Cascades, §3.4).

Creswell et al.'s selection-inference as a cascade: at step :math:`i` a selection
:math:`S_i` (facts and one rule) is drawn given the problem and the steps so far, then
an inference :math:`I_i` (one new fact) given the selection; after :math:`k` steps the
answer is drawn given everything:

.. math:: p(A, S_{1:k}, I_{1:k} \mid P) = \prod_{i=1}^k p(S_i \mid P, S_{<i}, I_{<i})\, p(I_i \mid S_i, \ldots)
          \; p(A \mid P, S_{1:k}, I_{1:k}).

Sites: ``"select_0"``, ``"infer_0"``, ..., ``"select_{k-1}"``, ``"infer_{k-1}"``, ``"answer"``.
The prompts follow the ``selection_inference`` training format of
:mod:`llmppl.models.tasks` (``Facts: ...\nRules: ...\nQuestion: Is Ann happy?\n`` then
``Select: ...\nInfer: ...\n`` lines and ``A: yes``). The selection and inference calls
may use different models (``model`` and ``inference_model``), as in the paper.

>>> import string, pyro
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet=string.printable)
>>> pyro.set_rng_seed(0)
>>> tr = pyro.poutine.trace(selection_inference).get_trace(
...     "Facts: Ann is red.\nRules: If red then kind.\nQuestion: Is Ann kind?\n", k=1, model=lm, max_step_tokens=3)
>>> [n for n in tr.nodes if not n.startswith("_")]
['select_0', 'infer_0', 'answer']
"""

from __future__ import annotations

import pyro

import llmppl
from llmppl import LM
from llmppl.models import tasks

from ._common import answer_probs, check_str, example_model, seed_everything
from .prompts import PromptStyle, resolve_style

__all__ = ["problem_prompt", "run_example", "selection_inference"]


def problem_prompt(facts: str, rules: str, question: str) -> str:
    """The problem block: ``"Facts: {facts}\\nRules: {rules}\\nQuestion: {question}\\n"``.

    >>> problem_prompt("Ann is red.", "If red then kind.", "Is Ann kind?")
    'Facts: Ann is red.\\nRules: If red then kind.\\nQuestion: Is Ann kind?\\n'
    """
    return f"Facts: {facts}\nRules: {rules}\nQuestion: {question}\n"


def selection_inference(
    problem: str,
    *,
    k: int,
    model=None,
    inference_model=None,
    max_step_tokens: int = 96,
    max_answer_tokens: int = 4,
    style: PromptStyle | None = None,
    inference_style: PromptStyle | None = None,
):
    """The selection-inference cascade on a problem block (see :func:`problem_prompt`).

    :param str problem: the ``Facts/Rules/Question`` block, ending with a newline.
    :param int k: number of selection-inference steps (``>= 0``).
    :param model: the selection LM (and the answer LM); default: ``llmppl.use_model``'s.
    :param inference_model: the inference LM (default: ``model``).
    :param style: a :class:`~llmppl.cascades.prompts.PromptStyle` of ``model``, whose prefix
        (e.g. worked problems) goes before every selection and answer prompt (default: the model's).
    :param inference_style: the same for ``inference_model`` (default: ``style`` when the
        inference LM is ``model``, else its default style).
    :returns: the answer string (``"yes"``/``"no"`` for a trained model).

    >>> import string, pyro
    >>> from llmppl.models import ToyLM
    >>> lm = ToyLM(alphabet=string.printable)
    >>> pyro.set_rng_seed(0)
    >>> problem = problem_prompt("Ann is red.", "If red then kind. If kind then happy.", "Is Ann happy?")
    >>> tr = pyro.poutine.trace(selection_inference).get_trace(problem, k=2, model=lm, max_step_tokens=3)
    >>> [n for n in tr.nodes if not n.startswith("_")]
    ['select_0', 'infer_0', 'select_1', 'infer_1', 'answer']
    >>> selection_inference(problem, k=-1, model=lm)
    Traceback (most recent call last):
    ...
    ValueError: selection_inference: k: expected an int >= 0, got -1
    """
    check_str(problem, "selection_inference", "problem")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"selection_inference: k: expected an int >= 0, got {k!r}")
    style = resolve_style(style, model)
    if inference_style is None:
        inference_style = style if inference_model is None else resolve_style(None, inference_model)
    inference_style = resolve_style(inference_style)
    inference_model = model if inference_model is None else inference_model
    context = problem
    for i in range(k):
        selection = pyro.sample(
            f"select_{i}",
            LM(style.prompt(context + style.label("Select:")), model=model, stop="\n", max_tokens=max_step_tokens),
        )
        context += f"{style.label('Select:')}{selection}\n"
        prompt = inference_style.prompt(context + inference_style.label("Infer:"))
        inference = pyro.sample(f"infer_{i}", LM(prompt, model=inference_model, stop="\n", max_tokens=max_step_tokens))
        context += f"{inference_style.label('Infer:')}{inference}\n"
    return pyro.sample(
        "answer", LM(style.prompt(context + style.label("A:")), model=model, stop="\n", max_tokens=max_answer_tokens)
    )


def _example_problem(seed: int, index: int | None):
    def get(i):
        return tasks.sample_problem("selection_inference", split="test", seed=seed, index=i)

    if index is not None:
        return get(index)
    return next(p for p in map(get, range(1000)) if p.meta["steps"])


def run_example(
    *,
    model=None,
    num_particles: int = 4,
    k: int | None = None,
    index: int | None = None,
    max_step_tokens: int = 96,
    seed: int = 0,
    style: PromptStyle | None = None,
) -> dict:
    """Selection-inference on held-out problem ``index`` of the ``selection_inference`` task.

    :param model: a language model; default: the shipped Performer checkpoint.
    :param k: steps; default: as many as the gold solution has.
    :param index: the problem; default: the first one whose gold solution has at least one
        step (many problems are answered "no" with none, which would run no step).
    :returns: ``{"prompt", "k", "target", "answer", "answers", "valid_steps", "posterior"}``;
        ``valid_steps`` says, for the most probable particle, whether each step is valid
        (:func:`llmppl.models.tasks.check_selection_step`).

    >>> import string
    >>> from llmppl.models import ToyLM
    >>> out = run_example(model=ToyLM(alphabet=string.printable), num_particles=2, k=1, max_step_tokens=3)
    >>> sorted(out)
    ['answer', 'answers', 'k', 'posterior', 'prompt', 'target', 'valid_steps']
    >>> out["k"], len(out["valid_steps"]), out["target"] in ("yes", "no"), out["prompt"].startswith("Facts: ")
    (1, 1, True, True)
    """
    seed_everything(seed)
    problem = _example_problem(seed, index)
    k = len(problem.meta["steps"]) if k is None else k
    post = llmppl.infer.Importance(selection_inference, num_samples=num_particles, progress=False).run(
        problem.prompt, k=k, model=example_model(model), max_step_tokens=max_step_tokens, style=style
    )
    best = post.traces[int(post.weights.argmax())]
    known = [f"{p} is {a}." for p, a in problem.meta["facts"]]
    valid = []
    for i in range(k):
        selection, inference = best.nodes[f"select_{i}"]["value"], best.nodes[f"infer_{i}"]["value"]
        valid.append(tasks.check_selection_step(problem, known, selection, inference))
        known.append(inference.strip())
    answers = answer_probs(post.marginal("answer"))
    return {
        "prompt": problem.prompt,
        "k": k,
        "target": problem.target,
        "answer": next(iter(answers)),
        "answers": answers,
        "valid_steps": valid,
        "posterior": post,
    }
