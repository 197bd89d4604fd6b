r"""Twenty questions: a questioner LM and an answerer LM who knows a hidden object (Language Model Cascades, §3.5).

The paper's multi-agent example: a hidden object :math:`O` is drawn from a prior, a
questioner asks :math:`Q_t` given the dialogue so far, an answerer who sees :math:`O`
replies :math:`A_t`, for up to 20 turns or until the questioner guesses:

.. math:: p(O, Q_{1:T}, A_{1:T}) = p(O) \prod_t p_\text{ask}(Q_t \mid Q_{<t}, A_{<t})\, p_\text{ans}(A_t \mid O, Q_t).

Conditioning on a played game's transcript (the questions and answers are observed)
gives the posterior over the hidden object,
:math:`p(O \mid Q, A) \propto p(O) \prod_t p_\text{ans}(A_t \mid O, Q_t)`.

Sites: ``"object"`` (string :class:`~llmppl.distributions.Categorical` over the
knowledge base of :mod:`llmppl.models.tasks`, uniform), then per turn ``"question_t"``
(questioner LM; its value is the whole line, ``"Q: Can it fly?"`` or
``"Guess: penguin"``) and ``"answer_t"`` (answerer LM), and ``"guess"`` (a ``Delta``)
when the questioner guesses. Prompts follow the ``twenty_questioner``
(``Twenty questions.\nQ: Is it an animal? A: yes\n...``) and ``twenty_answerer``
(``Object: penguin. Q: Can it fly? A: no``) training formats.

The answerer decodes greedily by default (``answerer_top_k=1``): it *knows* the object,
so its answer is a function of it, and the posterior puts mass only on objects for which
the answerer would have given every answer in the transcript. ``answerer_top_k=None``
makes it a noisy answerer (every object keeps some mass).

>>> import string, pyro
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet=string.printable)
>>> pyro.set_rng_seed(0)
>>> game = play("cat", model=lm, objects=["cat", "dog"], max_turns=2, max_question_tokens=4)
>>> game["object"], len(game["transcript"]) <= 2
('cat', True)
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch

import llmppl
from llmppl import LM
from llmppl.distributions import Categorical, Delta, get_default_model
from llmppl.models import tasks

from ._common import check_pairs, check_str, check_strings, example_model, seed_everything
from .prompts import PromptStyle, resolve_style

__all__ = [
    "OBJECTS",
    "answerer_prompt",
    "infer_object",
    "object_posterior",
    "play",
    "questioner_prompt",
    "run_example",
    "twenty_questions",
]

OBJECTS: tuple[str, ...] = tuple(tasks.KNOWLEDGE_BASE)


_DEFAULT = PromptStyle()


def questioner_prompt(history: Sequence[tuple[str, str]], style: PromptStyle = _DEFAULT) -> str:
    """The questioner's prompt after ``(question, answer)`` turns (after ``style.prefix``).

    >>> questioner_prompt([("Is it an animal?", "yes")])
    'Twenty questions.\\nQ: Is it an animal? A: yes\\n'
    """
    return style.prompt("Twenty questions.\n" + "".join(f"Q: {q} A: {a}\n" for q, a in history))


def answerer_prompt(obj: str, question: str, style: PromptStyle = _DEFAULT) -> str:
    """The answerer's prompt: ``"Object: {obj}. Q: {question} A: "`` (after ``style.prefix``).

    >>> answerer_prompt("penguin", "Can it fly?")
    'Object: penguin. Q: Can it fly? A: '
    """
    return style.prompt(f"Object: {obj}. Q: {question} {style.label('A:')}")


def twenty_questions(
    transcript: Sequence[tuple[str, str]] | None = None,
    *,
    model=None,
    answerer_model=None,
    objects: Sequence[str] = OBJECTS,
    max_turns: int = 20,
    answerer_top_k: int | None = 1,
    max_question_tokens: int = 48,
    style: PromptStyle | None = None,
    answerer_style: PromptStyle | None = None,
):
    """The game as a Pyro model; returns the hidden object.

    :param transcript: ``None`` to play freely, or ``(question, answer)`` pairs to condition
        on (the sites ``question_t``/``answer_t`` are then observed; the game has
        ``len(transcript)`` turns; more than ``max_turns`` is a ``ValueError``).
    :param model: the questioner LM (default: ``llmppl.use_model``'s).
    :param answerer_model: the answerer LM (default: ``model``).
    :param objects: the prior's support (uniform), default the whole knowledge base.
    :param int max_turns: at most this many questions (default: 20, the game's; more is allowed).
    :param answerer_top_k: the answerer's ``top_k`` (``1``: greedy, it knows the object).
    :param style: the questioner's :class:`~llmppl.cascades.prompts.PromptStyle`, e.g. a
        prefix with a played game (default: the model's).
    :param answerer_style: the answerer's, e.g. a prefix of ``Object: ... A: yes`` lines
        (default: the answerer model's). Transcripts hold answers without the leading space
        a BPE answerer writes.

    >>> import string, pyro
    >>> from llmppl.models import ToyLM
    >>> pyro.set_rng_seed(0)
    >>> tr = pyro.poutine.trace(twenty_questions).get_trace(
    ...     [("Can it fly?", "no")], model=ToyLM(alphabet=string.printable), objects=["dog", "eagle"],
    ...     answerer_top_k=None)
    >>> [n for n in tr.nodes if not n.startswith("_")], tr.nodes["_RETURN"]["value"] in ("dog", "eagle")
    (['object', 'question_0', 'answer_0'], True)
    """
    if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
        raise ValueError(f"twenty_questions: max_turns: expected an int >= 1, got {max_turns!r}")
    objects = check_strings(objects, "twenty_questions", "objects")
    if transcript is not None:
        transcript = check_pairs(transcript, "twenty_questions", "transcript")
    if transcript is not None and len(transcript) > max_turns:
        raise ValueError(
            f"twenty_questions: transcript: expected at most max_turns={max_turns} turns, got {len(transcript)}"
        )
    style = resolve_style(style, model)
    answerer_model = model if answerer_model is None else answerer_model
    answerer_style = resolve_style(answerer_style, answerer_model)
    obj = pyro.sample("object", Categorical(objects))
    history: list[tuple[str, str]] = []
    for t in range(max_turns):
        observed_question = observed_answer = None
        if transcript is not None:
            if t >= len(transcript):
                break
            observed_question = f"Q: {transcript[t][0]}"
            observed_answer = answerer_style.value(transcript[t][1])
        move = pyro.sample(
            f"question_{t}",
            LM(questioner_prompt(history, style), model=model, stop=[" A:", "\n"], max_tokens=max_question_tokens),
            obs=observed_question,
        )
        if not move.startswith("Q: "):
            pyro.sample("guess", Delta(move.removeprefix("Guess:").strip()))
            break
        question = move[len("Q: ") :]
        answer = pyro.sample(
            f"answer_{t}",
            LM(
                answerer_prompt(obj, question, answerer_style),
                model=answerer_model,
                stop="\n",
                max_tokens=4,
                top_k=answerer_top_k,
            ),
            obs=observed_answer,
        )
        history.append((question, answerer_style.unvalue(answer)))
    return obj


def play(hidden_object: str, **game_kwargs) -> dict:
    """Play one game with ``hidden_object`` known to the answerer.

    :param str hidden_object: one of ``objects`` (default: :data:`OBJECTS`).
    :param game_kwargs: passed to :func:`twenty_questions` (not ``transcript``).
    :returns: ``{"object", "transcript", "guess", "turns"}``; ``guess`` is ``None`` when the
        questioner never guessed.

    >>> import string, pyro
    >>> from llmppl.models import ToyLM
    >>> pyro.set_rng_seed(0)
    >>> game = play("dog", model=ToyLM(alphabet=string.printable), objects=["cat", "dog"], max_turns=2,
    ...             max_question_tokens=4)
    >>> sorted(game), game["turns"] == len(game["transcript"]) <= 2
    (['guess', 'object', 'transcript', 'turns'], True)
    >>> play("cow", objects=["cat", "dog"])
    Traceback (most recent call last):
    ...
    ValueError: play: hidden_object: expected one of objects (cat, dog), got 'cow'
    """
    objects = check_strings(game_kwargs.get("objects", OBJECTS), "play", "objects")
    if check_str(hidden_object, "play", "hidden_object") not in objects:
        shown = ", ".join(objects[:5]) + (", ..." if len(objects) > 5 else "")
        raise ValueError(f"play: hidden_object: expected one of objects ({shown}), got {hidden_object!r}")
    answerer_model = game_kwargs.get("answerer_model")
    answerer_style = resolve_style(
        game_kwargs.get("answerer_style"), game_kwargs.get("model") if answerer_model is None else answerer_model
    )
    conditioned = pyro.condition(twenty_questions, data={"object": hidden_object})
    trace = pyro.poutine.trace(conditioned).get_trace(**game_kwargs)
    transcript = []
    for t in range(game_kwargs.get("max_turns", 20)):
        if f"answer_{t}" not in trace.nodes:
            break
        question = trace.nodes[f"question_{t}"]["value"][len("Q: ") :]
        transcript.append((question, answerer_style.unvalue(trace.nodes[f"answer_{t}"]["value"])))
    guess = trace.nodes["guess"]["value"] if "guess" in trace.nodes else None
    return {"object": hidden_object, "transcript": transcript, "guess": guess, "turns": len(transcript)}


def object_posterior(
    transcript: Sequence[tuple[str, str]],
    *,
    model=None,
    answerer_model=None,
    objects: Sequence[str] = OBJECTS,
    answerer_top_k: int | None = 1,
    answerer_style: PromptStyle | None = None,
) -> dict[str, float]:
    """The exact posterior over the hidden object given a transcript, by enumerating ``objects``.

    The questioner does not know the object, so its questions carry no evidence about it:
    p(object | transcript) is proportional to p(object) times the product over turns of
    p_answerer(answer_t | object, question_t),
    one batched :meth:`score` call for every object and turn. Unlike :func:`infer_object`
    (importance sampling from the prior), it cannot miss the one object a greedy answerer
    (``answerer_top_k=1``) is consistent with. ``ValueError`` if no object can give the answers.

    :returns: object -> probability, most probable first.

    >>> import string
    >>> from llmppl.models import ToyLM
    >>> lm = ToyLM(alphabet=string.printable)
    >>> probs = object_posterior([("Can it fly?", "no")], model=lm, objects=["dog", "eagle"],
    ...                          answerer_top_k=None)
    >>> sorted(probs), round(sum(probs.values()), 6)
    (['dog', 'eagle'], 1.0)
    """
    lm = answerer_model if answerer_model is not None else model
    if lm is None:
        lm = get_default_model()
    style = resolve_style(answerer_style, lm)
    objects = check_strings(objects, "object_posterior", "objects")
    transcript = check_pairs(transcript, "object_posterior", "transcript")
    prompts = [answerer_prompt(o, q, style) for o in objects for q, _ in transcript]
    values = [style.value(a) for _ in objects for _, a in transcript]
    if prompts:
        lp = lm.score(prompts, values, max_tokens=4, stop="\n", top_k=answerer_top_k).double()
        lp = lp.view(len(objects), len(transcript)).sum(1)
    else:
        lp = torch.zeros(len(objects), dtype=torch.float64)
    if not torch.isfinite(lp).any():
        raise ValueError(
            f"object_posterior: no object in {objects[:5]}{'...' if len(objects) > 5 else ''} gives every answer of "
            f"the transcript under the answerer (answerer_top_k={answerer_top_k}); "
            "expected at least one consistent object"
        )
    probs = torch.softmax(lp, 0).tolist()
    return dict(sorted(zip(objects, probs, strict=True), key=lambda kv: -kv[1]))


def infer_object(transcript: Sequence[tuple[str, str]], *, num_particles: int = 256, **game_kwargs):
    """The posterior over the hidden object given a transcript, by importance sampling from the prior.

    The whole game as one Pyro program under :class:`~llmppl.inference.Importance`. With
    a greedy answerer usually one object gives every answer, and ``num_particles`` draws
    from the prior may all miss it (``InferenceError``: every particle has zero weight):
    :func:`object_posterior` enumerates the objects exactly.

    :returns: ``(probs, posterior)``: object -> probability (sums to 1) and the
        :class:`~llmppl.inference.Posterior`.

    >>> import string, pyro
    >>> from llmppl.models import ToyLM
    >>> pyro.set_rng_seed(0)
    >>> probs, post = infer_object([("Can it fly?", "no")], num_particles=8, model=ToyLM(alphabet=string.printable),
    ...                            objects=["dog", "eagle"], answerer_top_k=None)
    >>> set(probs) <= {"dog", "eagle"}, round(sum(probs.values()), 6), post.num_particles
    (True, 1.0, 8)
    """
    post = llmppl.infer.Importance(twenty_questions, num_samples=num_particles, progress=False).run(
        list(transcript), **game_kwargs
    )
    return post.marginal("object").probs, post


def run_example(
    hidden_object: str = "penguin",
    *,
    model=None,
    num_particles: int = 64,
    objects: Sequence[str] = OBJECTS,
    max_turns: int = 20,
    max_question_tokens: int = 48,
    seed: int = 0,
    style: PromptStyle | None = None,
    answerer_style: PromptStyle | None = None,
) -> dict:
    """Play a game with ``hidden_object``, then infer the hidden object from the transcript.

    :param model: questioner and answerer; default: the shipped Performer checkpoint.
    :returns: ``{"object", "transcript", "guess", "turns", "posterior", "map_object", "log_evidence"}``;
        ``posterior`` maps objects to probabilities.

    >>> import string
    >>> from llmppl.models import ToyLM
    >>> out = run_example("cat", model=ToyLM(alphabet=string.printable), objects=["cat", "dog"], num_particles=16,
    ...                   max_turns=2, max_question_tokens=4)
    >>> sorted(out)
    ['guess', 'log_evidence', 'map_object', 'object', 'posterior', 'transcript', 'turns']
    >>> out["object"], out["map_object"] in ("cat", "dog"), round(sum(out["posterior"].values()), 6)
    ('cat', True, 1.0)
    """
    seed_everything(seed)
    kwargs = {
        "model": example_model(model),
        "objects": list(objects),
        "max_turns": max_turns,
        "max_question_tokens": max_question_tokens,
        "style": style,
        "answerer_style": answerer_style,
    }
    game = play(hidden_object, **kwargs)
    probs, post = infer_object(game["transcript"], num_particles=num_particles, **kwargs)
    return {**game, "posterior": probs, "map_object": next(iter(probs)), "log_evidence": post.log_evidence}
