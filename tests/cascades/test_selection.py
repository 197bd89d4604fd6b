"""Selection-inference: alternating sites, exact prompts, the step checks of run_example."""

import math

import pyro
import pytest
from pyro import poutine

from llmppl import LM
from llmppl.cascades import selection, selection_inference
from llmppl.models import tasks


def _problem_with_steps(min_steps=2):
    for index in range(200):
        p = tasks.sample_problem("selection_inference", split="test", seed=0, index=index)
        if len(p.meta["steps"]) >= min_steps:
            return p
    raise AssertionError("no problem with enough steps")  # pragma: no cover


def test_gold_steps_reproduce_the_training_text(lm):
    p = _problem_with_steps()
    person = p.meta["person"]
    gold = {}
    for i, (sel, rule, new) in enumerate(p.meta["steps"]):
        gold[f"select_{i}"] = " ".join([*sel, rule])
        gold[f"infer_{i}"] = f"{person} is {new}."
    k = len(p.meta["steps"])
    tr = poutine.trace(pyro.condition(selection_inference, data=gold)).get_trace(p.prompt, k=k, model=lm)
    answer_lm = tr.nodes["answer"]["fn"]
    assert answer_lm.prompt + p.target + "\n" == p.text
    for i in range(k):
        assert tr.nodes[f"select_{i}"]["fn"].prompt.endswith("Select: ")
        assert tr.nodes[f"infer_{i}"]["fn"].prompt == tr.nodes[f"select_{i}"]["fn"].prompt + gold[f"select_{i}"] + (
            "\nInfer: "
        )


def test_problem_prompt_matches_the_task_format():
    p = tasks.sample_problem("selection_inference", split="test", seed=0, index=0)
    facts, rules, question = (line.split(": ", 1)[1] for line in p.prompt.splitlines())
    assert selection.problem_prompt(facts, rules, question) == p.prompt


def test_sites_alternate(lm):
    tr = poutine.trace(selection_inference).get_trace("Facts: x\n", k=3, model=lm, max_step_tokens=3)
    names = [n for n in tr.nodes if not n.startswith("_")]
    assert names == ["select_0", "infer_0", "select_1", "infer_1", "select_2", "infer_2", "answer"]
    assert all(isinstance(tr.nodes[n]["fn"], LM) and not tr.nodes[n]["is_observed"] for n in names)


def test_separate_inference_model(lm, scripted):
    other = scripted({"Infer: ": "Ann is kind."}, p=1 - 1e-9)
    tr = poutine.trace(selection_inference).get_trace("Facts: x\n", k=1, model=lm, inference_model=other)
    assert tr.nodes["infer_0"]["fn"].model is other and tr.nodes["select_0"]["fn"].model is lm
    assert tr.nodes["infer_0"]["value"] == "Ann is kind."


def test_bad_k(lm):
    with pytest.raises(ValueError, match="k"):
        selection_inference("Facts: x\n", k=-1, model=lm)


def test_run_example(lm):
    r = selection.run_example(model=lm, num_particles=2, k=2, max_step_tokens=4)
    assert r["k"] == 2 and len(r["valid_steps"]) == 2 and not any(r["valid_steps"])  # random text is never valid
    assert math.isclose(sum(r["answers"].values()), 1.0)
    assert r["prompt"].startswith("Facts: ") and r["target"] in ("yes", "no")


def test_run_example_default_k_is_the_gold_length(lm):
    r = selection.run_example(model=lm, num_particles=2, index=0, max_step_tokens=2)
    p = tasks.sample_problem("selection_inference", split="test", seed=0, index=0)
    assert r["k"] == len(p.meta["steps"])


def test_problem_must_be_a_string(lm):
    with pytest.raises(TypeError, match=r"selection_inference: problem: expected a str, got NoneType"):
        selection_inference(None, k=1, model=lm)


def test_run_example_default_problem_runs_steps(lm):
    r = selection.run_example(model=lm, num_particles=1, max_step_tokens=1)
    assert r["k"] >= 1 and len(r["valid_steps"]) == r["k"]
    assert "select_0" in r["posterior"].traces[0].nodes
