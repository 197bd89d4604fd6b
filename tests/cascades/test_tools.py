"""Tool use: the calculator's evaluation and refusals, the sites, and the exact prompts."""

import builtins
import math
import random

import pytest
from pyro import poutine

from llmppl import LM
from llmppl.cascades import ToolError, evaluate_expression, safe_calculator, tool_use, tools
from llmppl.distributions import Delta
from llmppl.models import tasks


@pytest.mark.parametrize(
    ("expr", "value"),
    [("12*3", 36), ("7-9", -2), ("1+2*3", 7), ("(1+2)*3", 9), ("-4+10", 6), (" 100 - 1 ", 99), ("0*999999", 0)],
)
def test_evaluation(expr, value):
    assert evaluate_expression(expr) == value
    assert safe_calculator(f"calc({expr})") == str(value)


def test_agrees_with_the_training_calculator():
    rng = random.Random(0)
    for _ in range(200):
        expr = f"{rng.randrange(10**6)}{rng.choice('+-*')}{rng.randrange(10**6)}"
        assert safe_calculator(f"calc({expr})") == tasks.calculator(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('echo hi')",
        "2**10",
        "10/2",
        "10//2",
        "7%3",
        "1 if 1 else 2",
        "a+b",
        "().__class__",
        "1+",
        "",
        "1e3+1",
        "1_000+1",
        "9" * 13,
        "(" * 40 + "1" + ")" * 40,  # too long
        "*".join(["999999999999"] * 4),  # result too large
        "1<<8",
    ],
)
def test_refuses_unsafe_or_unsupported_input(expr):
    with pytest.raises(ToolError):
        evaluate_expression(expr)
    assert safe_calculator(f"calc({expr})") == "error"


def test_refuses_text_that_is_not_a_call():
    assert safe_calculator("print(1+2)") == "error"
    assert safe_calculator("calc(1+2) and more") == "error"
    with pytest.raises(TypeError, match="expr"):
        evaluate_expression(3)


def test_never_calls_eval(monkeypatch):
    def no_eval(*args, **kwargs):
        raise AssertionError("eval was called")

    monkeypatch.setattr(builtins, "eval", no_eval)
    assert evaluate_expression("6*7") == 42


def test_prompts_reproduce_the_training_text():
    p = tasks.sample_problem("calculator", split="test", seed=0, index=0)
    question = p.prompt[len("Q: ") : -len("\nCall:")]
    assert tools.call_prompt(question) == p.prompt + " "
    result = safe_calculator(p.target)
    assert result == p.meta["result"]
    assert tools.answer_prompt(question, p.target, result) + result + "\n" == p.text


def test_sites_kinds_and_prompts(scripted):
    model = scripted({"Call: ": "calc(12+30)", "Result: 42\nA: ": "42"}, p=1 - 1e-9)
    q = "What is 12 plus 30?"
    tr = poutine.trace(tool_use).get_trace(q, model=model)
    assert [n for n in tr.nodes if not n.startswith("_")] == ["call", "result", "answer"]
    assert isinstance(tr.nodes["call"]["fn"], LM) and isinstance(tr.nodes["answer"]["fn"], LM)
    assert isinstance(tr.nodes["result"]["fn"], Delta)
    assert tr.nodes["call"]["value"] == "calc(12+30)"
    assert tr.nodes["result"]["value"] == "42"
    assert tr.nodes["call"]["fn"].prompt == f"Q: {q}\nCall: "
    assert tr.nodes["answer"]["fn"].prompt == f"Q: {q}\nCall: calc(12+30)\nResult: 42\nA: "
    assert tr.nodes["_RETURN"]["value"] == "42"


def test_result_site_is_the_tool_applied_to_the_call(lm):
    r = tools.run_example("What is 2 plus 3?", model=lm, num_particles=4, max_call_tokens=6, max_answer_tokens=2)
    for trace in r["posterior"].traces:
        assert trace.nodes["result"]["value"] == safe_calculator(trace.nodes["call"]["value"])
    assert math.isclose(sum(r["answers"].values()), 1.0)


def test_run_example_with_a_model_that_calls_the_tool(scripted):
    model = scripted({"Call: ": "calc(12+30)", "Result: 42\nA: ": "42"}, p=0.99)
    r = tools.run_example(model=model, num_particles=4, max_call_tokens=16, max_answer_tokens=4)
    assert r["calls"].get("calc(12+30)") == "42"
    assert r["answer"] == "42"


def test_question_and_call_must_be_strings(lm):
    with pytest.raises(TypeError, match=r"tool_use: question: expected a str, got int"):
        tool_use(7, model=lm)
    with pytest.raises(TypeError, match=r"safe_calculator: call: expected a str, got NoneType"):
        safe_calculator(None)
