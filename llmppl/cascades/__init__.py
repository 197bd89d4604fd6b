"""The cascades of the Language Model Cascades paper (layer L4), written with llmppl's public API.

One module per cascade, each with the cascade as a Pyro model (or a function built on
one) and a ``run_example(...)`` that the tests call at tiny sizes (all listed in
:data:`EXAMPLES`):

- :mod:`~llmppl.cascades.scratchpads`: :func:`scratchpad`, ``question → thought → answer``;
- :mod:`~llmppl.cascades.consistency`: :func:`self_consistency`, the answer's posterior mode;
- :mod:`~llmppl.cascades.verifiers`: :func:`verified_scratchpad`, conditioned on an LM verifier;
- :mod:`~llmppl.cascades.tools`: :func:`tool_use`, a calculator call evaluated by :func:`safe_calculator`;
- :mod:`~llmppl.cascades.decomposition`: :func:`long_addition`, additions longer than the
  model's scratchpads, by blocks: the program cuts and pastes, the LM adds;
- :mod:`~llmppl.cascades.selection`: :func:`selection_inference`, k selection/inference steps;
- :mod:`~llmppl.cascades.twenty`: :func:`twenty_questions`, questioner and answerer LMs;
- :mod:`~llmppl.cascades.star`: :func:`star_rationales`, STaR's rationale generation and filtering,
  and :func:`star_loop`, which fine-tunes the Performer on them (or calls a fine-tuning step you pass).

Prompts follow the Performer's training formats; :class:`PromptStyle` (module
:mod:`~llmppl.cascades.prompts`) writes them for another model: a few-shot prefix
(:func:`few_shot`) and the spacing of BPE tokenizers. Every cascade takes ``style=``.
:mod:`~llmppl.cascades.addition` holds the held-out-addition methods that ``llmppl demo``
and ``benchmarks/cascades.py`` compare.

>>> import string, pyro, llmppl
>>> from llmppl.cascades import scratchpad
>>> lm = llmppl.models.ToyLM(alphabet=string.printable)
>>> post = llmppl.infer.Importance(scratchpad, num_samples=2, progress=False).run(
...     "1+2", model=lm, max_work_tokens=3, max_answer_tokens=2)
>>> sorted(post.site_names())
['answer', 'work']
>>> sorted(EXAMPLES)[:4]
['long_addition', 'scratchpad', 'selection_inference', 'self_consistency']
"""

from . import addition, consistency, decomposition, prompts, scratchpads, selection, star, tools, twenty, verifiers
from .consistency import self_consistency
from .decomposition import long_addition
from .prompts import PromptStyle, default_style, few_shot
from .scratchpads import direct, scratchpad
from .selection import selection_inference
from .star import star_document, star_loop, star_pair, star_rationales
from .tools import ToolError, evaluate_expression, safe_calculator, tool_use
from .twenty import infer_object, object_posterior, play, twenty_questions
from .verifiers import verified_scratchpad

EXAMPLES = {
    "scratchpad": scratchpads.run_example,
    "self_consistency": consistency.run_example,
    "verifier": verifiers.run_example,
    "tool_use": tools.run_example,
    "long_addition": decomposition.run_example,
    "selection_inference": selection.run_example,
    "twenty_questions": twenty.run_example,
    "star": star.run_example,
}

__all__ = [
    "EXAMPLES",
    "PromptStyle",
    "ToolError",
    "addition",
    "consistency",
    "decomposition",
    "default_style",
    "direct",
    "evaluate_expression",
    "few_shot",
    "infer_object",
    "long_addition",
    "object_posterior",
    "play",
    "prompts",
    "safe_calculator",
    "scratchpad",
    "scratchpads",
    "selection",
    "selection_inference",
    "self_consistency",
    "star",
    "star_document",
    "star_loop",
    "star_pair",
    "star_rationales",
    "tool_use",
    "tools",
    "twenty",
    "twenty_questions",
    "verified_scratchpad",
    "verifiers",
]
