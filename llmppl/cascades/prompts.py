"""Prompts written for the chosen model: :class:`PromptStyle` and :func:`few_shot`.

Every cascade writes its prompts in the training formats of :mod:`llmppl.models.tasks`
(``Q: 12+34\\nWork: ...\\nA: 46``). Two things depend on the model:

- **the space after a label.** The byte-level Performer was trained on ``"Work: "``
  followed by the value, so its prompts end with the space and its values carry none.
  A BPE model (``HFCausalLM``) writes the space as part of the next token (``" 2"``), so
  a prompt ending in a space is out of distribution: its prompts end at ``"Work:"`` and
  its values start with the space. :attr:`PromptStyle.space` is ``" "`` or ``""``.
- **a few-shot prefix.** A model that was not trained on the formats (SmolLM2) needs
  worked examples before the question: :attr:`PromptStyle.prefix` is prepended to every
  prompt of the cascade; :func:`few_shot` writes one from the task generators.

Cascades take ``style=None`` meaning :func:`default_style` of their model: no prefix,
and the space chosen from the model's tokenizer.

>>> style = PromptStyle(prefix="Q: 1+1\\nA: 2\\n\\n", space="")
>>> style.prompt("Q: 2+2\\nA:"), style.value("4")
('Q: 1+1\\nA: 2\\n\\nQ: 2+2\\nA:', ' 4')
"""

from __future__ import annotations

from dataclasses import dataclass

from llmppl.distributions import get_default_model
from llmppl.models import tasks
from llmppl.models.hf import HFTokenizer

__all__ = ["PromptStyle", "default_style", "few_shot", "resolve_style"]


@dataclass(frozen=True)
class PromptStyle:
    """How a cascade's prompts are written for one model.

    :ivar str prefix: prepended to every prompt (few-shot examples, an instruction).
    :ivar str space: written after a label (``"Work:"``, ``"A:"``) that ends a prompt:
        ``" "`` for byte-level models, ``""`` for BPE models whose values start with the space.

    >>> PromptStyle().label("A:"), PromptStyle(space="").label("A:")
    ('A: ', 'A:')
    """

    prefix: str = ""
    space: str = " "

    def __post_init__(self):
        if not isinstance(self.prefix, str):
            raise TypeError(f"PromptStyle: prefix: expected a str, got {type(self.prefix).__name__}")
        if self.space not in (" ", ""):
            raise ValueError(f"PromptStyle: space: expected ' ' or '', got {self.space!r}")

    def prompt(self, text: str) -> str:
        """``prefix + text``.

        >>> PromptStyle(prefix="Hi.\\n").prompt("Q: 1+2\\nA: ")
        'Hi.\\nQ: 1+2\\nA: '
        """
        return self.prefix + text

    def label(self, label: str) -> str:
        """A label that ends a prompt: ``label + space``.

        >>> PromptStyle().label("Work:")
        'Work: '
        """
        return label + self.space

    def value(self, text: str) -> str:
        """``text`` as the model writes it after a :meth:`label` (with the leading space when ``space`` is ``""``).

        >>> PromptStyle().value("yes"), PromptStyle(space="").value("yes")
        ('yes', ' yes')
        """
        return text if self.space else " " + text

    def unvalue(self, text: str) -> str:
        """The inverse of :meth:`value`: ``text`` without the one leading space a BPE model writes.

        >>> PromptStyle(space="").unvalue(" yes"), PromptStyle().unvalue(" yes")
        ('yes', ' yes')
        """
        return text[1:] if not self.space and text.startswith(" ") else text

    def with_prefix(self, prefix: str) -> PromptStyle:
        """The same style with another prefix.

        >>> PromptStyle(space="").with_prefix("x\\n")
        PromptStyle(prefix='x\\n', space='')
        """
        return PromptStyle(prefix=prefix, space=self.space)


def default_style(model=None) -> PromptStyle:
    """No prefix; ``space=""`` when the model (default: ``llmppl.use_model``'s) has a BPE (Hugging Face) tokenizer.

    >>> from llmppl.models import ToyLM
    >>> default_style(ToyLM())
    PromptStyle(prefix='', space=' ')
    """
    if model is None:
        model = get_default_model(required=False)
    bpe = isinstance(getattr(model, "tokenizer", None), HFTokenizer)
    return PromptStyle(space="" if bpe else " ")


def resolve_style(style: PromptStyle | None, model=None) -> PromptStyle:
    """``style``, or :func:`default_style` of ``model`` when it is ``None``.

    >>> resolve_style(None).space, resolve_style(PromptStyle(space="")).space
    (' ', '')
    """
    if style is None:
        return default_style(model)
    if not isinstance(style, PromptStyle):
        raise TypeError(f"style: expected a PromptStyle or None, got {type(style).__name__}")
    return style


def few_shot(task: str, k: int = 3, *, seed: int = 0, separator: str = "\n", **task_kwargs) -> str:
    """``k`` worked training-split examples of ``task``, each followed by ``separator``: a :attr:`PromptStyle.prefix`.

    The examples are training documents of :mod:`llmppl.models.tasks` (never held-out
    problems), so a few-shot prompt never shows the answer to a held-out question.

    :param str task: a task of :data:`llmppl.models.tasks.TASKS`, e.g. ``"scratchpad"``.
    :param int k: examples.
    :param task_kwargs: e.g. ``digits=3`` for the addition tasks.

    >>> print(few_shot("direct", 2, digits=2), end="")
    Q: 39+15
    A: 54
    <BLANKLINE>
    Q: 60+34
    A: 94
    <BLANKLINE>
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"few_shot: k: expected an int >= 0, got {k!r}")
    docs = [tasks.sample_problem(task, split="train", seed=seed, index=i, **task_kwargs).text for i in range(k)]
    return "".join(d + separator for d in docs)
