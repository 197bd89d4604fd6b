r"""Tool use: the LM writes a calculator call, a program evaluates it (Language Model Cascades, §3.3, "Tool use").

The paper's tool-use cascade has a deterministic node between two LM nodes: the LM
writes an expression, an external program evaluates it, and the LM answers given the
result. Here:

1. site ``"call"``: the LM writes ``calc(<expr>)`` after ``Q: <question>\nCall: ``;
2. site ``"result"``: a string :class:`~llmppl.distributions.Delta` records what
   :func:`safe_calculator` returns for the call (``"error"`` when refused);
3. site ``"answer"``: the LM answers after ``...\nResult: <result>\nA: ``.

The format is the ``calculator`` training format of :mod:`llmppl.models.tasks`
(``Q: What is 12 times 3?\nCall: calc(12*3)\nResult: 36\nA: 36\n``). The tool never
``eval``\ s text: :func:`evaluate_expression` parses it with :mod:`ast` and walks a
whitelist (integer literals, binary ``+ - *``, unary ``-``), with limits on length,
digits and result size.

>>> import string, pyro
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet=string.printable)
>>> pyro.set_rng_seed(0)
>>> tr = pyro.poutine.trace(tool_use).get_trace("What is 2 plus 3?", model=lm, max_call_tokens=4, max_answer_tokens=2)
>>> [n for n in tr.nodes if not n.startswith("_")]
['call', 'result', 'answer']
"""

from __future__ import annotations

import ast
import operator
import re

import pyro

import llmppl
from llmppl import LM
from llmppl.distributions import Delta

from ._common import answer_probs, check_str, example_model, seed_everything
from .prompts import PromptStyle, resolve_style

__all__ = [
    "ToolError",
    "answer_prompt",
    "call_prompt",
    "evaluate_expression",
    "parse_call",
    "run_example",
    "safe_calculator",
    "tool_use",
]

MAX_EXPRESSION_LENGTH = 64
MAX_LITERAL_DIGITS = 12
MAX_RESULT_DIGITS = 40
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_CALL = re.compile(r"calc\((.*)\)")


class ToolError(ValueError):
    """The calculator refused an expression (not integers with ``+ - *``, or too large).

    A ``ValueError``; :func:`safe_calculator` turns it into the result ``"error"``.

    >>> try:
    ...     parse_call("12*3")
    ... except ToolError as err:
    ...     print(isinstance(err, ValueError), err)
    True parse_call: expected 'calc(<expression>)', got '12*3'
    """


def _eval_node(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        if len(str(node.value)) > MAX_LITERAL_DIGITS:
            raise ToolError(f"integer literal with more than {MAX_LITERAL_DIGITS} digits")
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_node(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _eval_node(node.left), _eval_node(node.right)
        value = _OPERATORS[type(node.op)](left, right)
        if len(str(abs(value))) > MAX_RESULT_DIGITS:
            raise ToolError(f"a result with more than {MAX_RESULT_DIGITS} digits")
        return value
    raise ToolError(f"{type(node).__name__} is not allowed (only integers, + - * and parentheses)")


def evaluate_expression(expr: str) -> int:
    """The value of an integer expression with ``+ - *`` and parentheses; :class:`ToolError` otherwise.

    :param str expr: e.g. ``"12*3 - 4"``.

    >>> evaluate_expression("12*3 - 4"), evaluate_expression("-(2+3)*4")
    (32, -20)
    >>> evaluate_expression("__import__('os')")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    llmppl.cascades.tools.ToolError: evaluate_expression: characters [...] are not allowed ...
    """
    if not isinstance(expr, str):
        raise TypeError(f"evaluate_expression: expr: expected a str, got {type(expr).__name__}")
    if len(expr) > MAX_EXPRESSION_LENGTH:
        raise ToolError(f"evaluate_expression: expected at most {MAX_EXPRESSION_LENGTH} characters, got {len(expr)}")
    if not re.fullmatch(r"[0-9+\-*() ]+", expr):
        bad = sorted(set(re.sub(r"[0-9+\-*() ]", "", expr)))
        raise ToolError(f"evaluate_expression: characters {bad} are not allowed (only digits, + - * and parentheses)")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as err:
        raise ToolError(f"evaluate_expression: expected an arithmetic expression, got {expr!r} ({err.msg})") from None
    try:
        return _eval_node(tree.body)
    except ToolError as err:
        raise ToolError(f"evaluate_expression: {err}") from None


def parse_call(call: str) -> str:
    """The expression inside ``calc(...)``; :class:`ToolError` when ``call`` is not a calculator call.

    >>> parse_call("calc(12*3)")
    '12*3'
    """
    m = _CALL.fullmatch(check_str(call, "parse_call", "call").strip())
    if m is None:
        raise ToolError(f"parse_call: expected 'calc(<expression>)', got {call!r}")
    return m.group(1)


def safe_calculator(call: str) -> str:
    """The tool: the value of a ``calc(<expr>)`` call as a string, ``"error"`` when it is refused.

    >>> safe_calculator("calc(12*3)"), safe_calculator("calc(7-9)"), safe_calculator("calc(2**99)")
    ('36', '-2', 'error')
    """
    check_str(call, "safe_calculator", "call")
    try:
        return str(evaluate_expression(parse_call(call)))
    except ToolError:
        return "error"


_DEFAULT = PromptStyle()


def call_prompt(question: str, style: PromptStyle = _DEFAULT) -> str:
    """``"Q: {question}\\nCall: "`` (after ``style.prefix``).

    >>> call_prompt("What is 2 plus 3?")
    'Q: What is 2 plus 3?\\nCall: '
    """
    return style.prompt(f"Q: {question}\n{style.label('Call:')}")


def answer_prompt(question: str, call: str, result: str, style: PromptStyle = _DEFAULT) -> str:
    """``"Q: {question}\\nCall: {call}\\nResult: {result}\\nA: "`` (after ``style.prefix``).

    ``call`` is the sampled value (with its leading space when ``style.space == ""``);
    the tool writes ``result``, always after one space.

    >>> answer_prompt("What is 2 plus 3?", "calc(2+3)", "5")
    'Q: What is 2 plus 3?\\nCall: calc(2+3)\\nResult: 5\\nA: '
    """
    return style.prompt(f"Q: {question}\n{style.label('Call:')}{call}\nResult: {result}\n{style.label('A:')}")


def tool_use(
    question: str,
    *,
    model=None,
    max_call_tokens: int = 40,
    max_answer_tokens: int = 24,
    style: PromptStyle | None = None,
):
    """The tool-use cascade: sites ``"call"`` (LM), ``"result"`` (``Delta``), ``"answer"`` (LM).

    :param str question: a word problem, e.g. ``"What is 12 times 3?"``.
    :param model: the language model (default: ``llmppl.use_model``'s).
    :param style: a :class:`~llmppl.cascades.prompts.PromptStyle` (default: the model's).
    :returns: the answer string.

    >>> import string, pyro
    >>> from llmppl.models import ToyLM
    >>> pyro.set_rng_seed(0)
    >>> given_call = pyro.condition(tool_use, data={"call": "calc(2+3)"})
    >>> tr = pyro.poutine.trace(given_call).get_trace(
    ...     "What is 2 plus 3?", model=ToyLM(alphabet=string.printable), max_answer_tokens=2)
    >>> tr.nodes["result"]["value"], isinstance(tr.nodes["answer"]["value"], str)
    ('5', True)
    """
    check_str(question, "tool_use", "question")
    style = resolve_style(style, model)
    call = pyro.sample("call", LM(call_prompt(question, style), model=model, stop="\n", max_tokens=max_call_tokens))
    result = pyro.sample("result", Delta(safe_calculator(call)))
    return pyro.sample(
        "answer",
        LM(answer_prompt(question, call, result, style), model=model, stop="\n", max_tokens=max_answer_tokens),
    )


def run_example(
    question: str = "What is 12 plus 30?",
    *,
    model=None,
    num_particles: int = 4,
    max_call_tokens: int = 24,
    max_answer_tokens: int = 8,
    seed: int = 0,
    style: PromptStyle | None = None,
) -> dict:
    """Importance-sample the tool-use cascade on one question.

    :param model: a language model; default: the shipped Performer checkpoint.
    :returns: ``{"question", "answer", "answers", "calls", "posterior"}``; ``calls`` maps
        each sampled call to the tool's result.

    >>> import string
    >>> from llmppl.models import ToyLM
    >>> out = run_example("What is 2 plus 3?", model=ToyLM(alphabet=string.printable), num_particles=2,
    ...                   max_call_tokens=4, max_answer_tokens=2)
    >>> sorted(out), all(result == safe_calculator(call) for call, result in out["calls"].items())
    (['answer', 'answers', 'calls', 'posterior', 'question'], True)
    """
    seed_everything(seed)
    lm = example_model(model)
    post = llmppl.infer.Importance(tool_use, num_samples=num_particles, progress=False).run(
        question, model=lm, max_call_tokens=max_call_tokens, max_answer_tokens=max_answer_tokens, style=style
    )
    answers = answer_probs(post.marginal("answer"))
    calls = {t.nodes["call"]["value"]: t.nodes["result"]["value"] for t in post.traces}
    return {"question": question, "answer": next(iter(answers)), "answers": answers, "calls": calls, "posterior": post}
