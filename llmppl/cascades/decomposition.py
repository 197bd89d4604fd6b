r"""Additions longer than the model's scratchpads, by blocks: a program around short LM calls.

A scratchpad model trained on operands of up to 6 digits copies the wrong digits beyond
that, so no amount of sampling finds a right 8-digit thought. The Language Model Cascades
paper's point is that the program around the LM calls is ours to write (§2: a cascade is
a probabilistic program whose random variables are strings). This one writes the long
addition the way one does it by hand, in blocks:

1. split both operands into blocks of ``block`` digits, least significant first (the
   program's bookkeeping: slicing strings, no arithmetic);
2. for each pair of blocks, from the right, the LM adds them with a scratchpad (sites
   ``b{i}/work``, ``b{i}/answer``), checked by the LM verifier when ``verify`` (observed
   site ``b{i}/verified``, ``obs="yes"``);
3. when the block before it carried, the LM adds that 1 to the block's sum with another
   scratchpad (sites ``b{i}-carry/...``), checked the same way;
4. the block's sum, as the LM wrote it, gives the block's digits and its carry out: the
   digits past the block's width (the program reads the string's length);
5. the answer is the blocks' digits joined (a ``Delta`` site ``answer``).

Every digit the LM writes is an LM sample; the program only cuts and pastes, and pads a
block's sum with leading zeros to the block's width (``0046`` for an LM's ``46``, the
operands' zeros having been dropped from the question, which the training format writes
without them). With
:class:`~llmppl.inference.SMC`, the particles are resampled at each verifier observation,
so a wrong block is usually dropped before the next one is written.

>>> parts("123456789+98765", 4)
[('6789', '8765'), ('2345', '9'), ('1', '')]
"""

from __future__ import annotations

import re

import pyro
import pyro.contrib.autoname

import llmppl
from llmppl.distributions import Delta

from ._common import answer_probs, example_model, seed_everything
from .prompts import PromptStyle, resolve_style
from .scratchpads import scratchpad
from .verifiers import verified_scratchpad

__all__ = ["long_addition", "parts", "run_example"]

_QUESTION = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*$")


def parts(question: str, block: int) -> list[tuple[str, str]]:
    """The operands of ``"a+b"`` cut into blocks of ``block`` digits, least significant first.

    A block past the end of the shorter operand is ``""``.

    >>> parts("4721+385", 2)
    [('21', '85'), ('47', '3')]
    """
    m = _QUESTION.match(question) if isinstance(question, str) else None
    if m is None:
        raise ValueError(f"long_addition: question: expected 'a+b' with decimal digits, got {question!r}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"long_addition: block: expected an int >= 1, got {block!r}")
    a, b = m.groups()

    def cut(x: str, i: int) -> str:
        return x[max(0, len(x) - (i + 1) * block) : max(0, len(x) - i * block)]

    return [(cut(a, i), cut(b, i)) for i in range(-(-max(len(a), len(b)) // block))]


def _operand(digits: str) -> str:
    """A block as the training format writes an operand: no leading zeros ("0" for none)."""
    return digits.lstrip("0") or "0"


def long_addition(
    question: str,
    *,
    model=None,
    block: int = 4,
    verify: bool = True,
    verifier_model=None,
    max_work_tokens: int | None = None,
    max_answer_tokens: int | None = None,
    style: PromptStyle | None = None,
    verifier_style: PromptStyle | None = None,
):
    """Add ``"a+b"`` of any length with LM scratchpads on blocks of ``block`` digits (module docstring).

    :param str question: e.g. ``"12345678+87654321"``.
    :param model: the LM (default: ``llmppl.use_model``'s).
    :param int block: digits per block; keep it within the model's training lengths.
    :param bool verify: observe the verifier's ``"yes"`` after every scratchpad.
    :param verifier_model: the verifier, if not ``model``.
    :param max_work_tokens: limit of each thought (default ``16 * block + 16``).
    :param max_answer_tokens: limit of each block's sum (default ``block + 4``).
    :param style: prompts of the scratchpads; ``verifier_style``: of the verifier
        (see :func:`~llmppl.cascades.verifiers.verified_scratchpad`).
    :returns: the answer string (also the ``Delta`` site ``"answer"``).

    >>> import string, pyro
    >>> from llmppl.models import ToyLM
    >>> lm = ToyLM(alphabet=string.printable)
    >>> tr = pyro.poutine.trace(long_addition).get_trace("123+45", model=lm, block=2, max_work_tokens=2)
    >>> [n for n in tr.nodes if n.startswith("b0/")]
    ['b0/work', 'b0/answer', 'b0/verified']
    """
    blocks = parts(question, block)
    style = resolve_style(style, model)
    work_tokens = 16 * block + 16 if max_work_tokens is None else max_work_tokens
    answer_tokens = block + 4 if max_answer_tokens is None else max_answer_tokens
    kwargs = {"model": model, "max_work_tokens": work_tokens, "max_answer_tokens": answer_tokens, "style": style}
    if verify:
        kwargs.update(verifier_model=verifier_model, verifier_style=verifier_style)
    step = verified_scratchpad if verify else scratchpad

    def add(name: str, x: str, y: str) -> str:
        with pyro.contrib.autoname.scope(prefix=name):
            return step(f"{x}+{y}", **kwargs).strip()

    digits, carry = [], False
    for i, (x, y) in enumerate(blocks):
        width = max(len(x), len(y))
        # a block with digits on one side only is that operand's digits; the LM adds the rest
        total = add(f"b{i}", _operand(x), _operand(y)) if x and y else _operand(x or y)
        if carry and total.isdigit():  # a malformed sum is not a question to put to the LM
            total = add(f"b{i}-carry", total, "1")
        if not total.isdigit():  # a malformed sum stays in the answer, which is then wrong
            digits.append(total)
            carry = False
            continue
        last = i == len(blocks) - 1
        carry = not last and len(total) > width
        digits.append(total if last else total[-width:].rjust(width, "0"))
    answer = "".join(reversed(digits)).lstrip("0") or "0"
    return pyro.sample("answer", Delta(answer))


def run_example(
    question: str = "12345678+87654321",
    *,
    model=None,
    block: int = 4,
    num_particles: int = 8,
    seed: int = 0,
    style: PromptStyle | None = None,
) -> dict:
    """SMC on :func:`long_addition` for one question (default: an 8-digit one).

    :returns: ``{"question", "answer", "answers", "posterior"}``.

    >>> import string
    >>> from llmppl.models import ToyLM
    >>> out = run_example("123+45", model=ToyLM(alphabet=string.printable), block=2, num_particles=2)
    >>> sorted(out), out["answer"] in out["answers"], out["posterior"].num_particles
    (['answer', 'answers', 'posterior', 'question'], True, 2)
    """
    seed_everything(seed)
    lm = example_model(model)
    post = llmppl.infer.SMC(long_addition, num_particles=num_particles, progress=False).run(
        question, model=lm, block=block, style=style
    )
    answers = answer_probs(post.marginal("answer"))
    return {"question": question, "answer": next(iter(answers)), "answers": answers, "posterior": post}
