r"""Self-consistency: marginalise the thought, answer with the posterior mode (Language Model Cascades, §3.1).

Sampling several scratchpads and taking the majority answer (Wang et al.) is, in the
cascades view, the mode of the marginal :math:`p(A \mid Q) = \sum_T p(A \mid Q, T)\, p(T \mid Q)`
of the :func:`~llmppl.cascades.scratchpads.scratchpad` model, estimated by importance
sampling over the thought.

>>> import string, pyro
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet=string.printable)
>>> pyro.set_rng_seed(0)
>>> answer, post = self_consistency("1+2", model=lm, num_samples=4, max_work_tokens=3, max_answer_tokens=2)
>>> isinstance(answer, str), post.num_particles
(True, 4)
"""

from __future__ import annotations

import llmppl

from ._common import answer_probs, example_model, seed_everything
from .scratchpads import scratchpad

__all__ = ["run_example", "self_consistency"]


def self_consistency(question: str, *, model=None, num_samples: int = 16, **scratchpad_kwargs):
    """The most probable answer after marginalising the thought, and the posterior it came from.

    :param str question: e.g. ``"4721+385"``.
    :param model: the language model (default: ``llmppl.use_model``'s).
    :param int num_samples: sampled thoughts.
    :param scratchpad_kwargs: passed to :func:`~llmppl.cascades.scratchpads.scratchpad` (e.g. ``style=``).
    :returns: ``(answer, posterior)``; the answer with surrounding whitespace stripped.

    >>> import string, pyro
    >>> from llmppl.models import ToyLM
    >>> pyro.set_rng_seed(0)
    >>> answer, post = self_consistency("1+2", model=ToyLM(alphabet=string.printable), num_samples=3,
    ...                                 max_work_tokens=3, max_answer_tokens=2)
    >>> answer == next(iter(answer_probs(post.marginal("answer")))), post.num_particles
    (True, 3)
    """
    post = llmppl.infer.Importance(scratchpad, num_samples=num_samples, progress=False).run(
        question, model=model, **scratchpad_kwargs
    )
    return next(iter(answer_probs(post.marginal("answer")))), post


def run_example(
    question: str = "12+34",
    *,
    model=None,
    num_particles: int = 8,
    max_work_tokens: int = 48,
    max_answer_tokens: int = 8,
    seed: int = 0,
    style=None,
) -> dict:
    """Self-consistency on one question.

    :param model: a language model; default: the shipped Performer checkpoint.
    :param style: a :class:`~llmppl.cascades.prompts.PromptStyle` for ``model`` (default: its own).
    :returns: ``{"question", "answer", "answers", "posterior", "num_thoughts"}``:
        the mode, the answer distribution (sums to 1), the posterior and the number of
        distinct thoughts sampled.

    >>> import string
    >>> from llmppl.models import ToyLM
    >>> out = run_example("1+2", model=ToyLM(alphabet=string.printable), num_particles=2, max_work_tokens=3,
    ...                   max_answer_tokens=2)
    >>> sorted(out), round(sum(out["answers"].values()), 6), 1 <= out["num_thoughts"] <= 2
    (['answer', 'answers', 'num_thoughts', 'posterior', 'question'], 1.0, True)
    """
    seed_everything(seed)
    answer, post = self_consistency(
        question,
        model=example_model(model),
        num_samples=num_particles,
        max_work_tokens=max_work_tokens,
        max_answer_tokens=max_answer_tokens,
        style=style,
    )
    return {
        "question": question,
        "answer": answer,
        "answers": answer_probs(post.marginal("answer")),
        "posterior": post,
        "num_thoughts": len(post.marginal("work")),
    }
