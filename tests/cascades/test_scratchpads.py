"""Scratchpad and self-consistency: sites, exact prompts, normalised answer distributions."""

import math

import pytest
from pyro import poutine

from llmppl import LM
from llmppl.cascades import EXAMPLES, consistency, scratchpad, scratchpads, self_consistency
from llmppl.models import tasks


def test_sites_and_prompts(lm):
    tr = poutine.trace(scratchpad).get_trace("12+34", model=lm, max_work_tokens=5, max_answer_tokens=3)
    names = [n for n in tr.nodes if not n.startswith("_")]
    assert names == ["work", "answer"]
    for n in names:
        assert tr.nodes[n]["type"] == "sample" and not tr.nodes[n]["is_observed"]
        assert isinstance(tr.nodes[n]["fn"], LM) and tr.nodes[n]["fn"].stop == ("\n",)
    work = tr.nodes["work"]["value"]
    assert "\n" not in work
    assert tr.nodes["work"]["fn"].prompt == "Q: 12+34\nWork: "
    assert tr.nodes["answer"]["fn"].prompt == f"Q: 12+34\nWork: {work}\nA: "
    assert tr.nodes["_RETURN"]["value"] == tr.nodes["answer"]["value"]


def test_prompts_reproduce_the_training_text():
    p = tasks.sample_problem("scratchpad", split="test", seed=0, index=0)
    q = f"{p.meta['a']}+{p.meta['b']}"
    work = tasks.addition_work(p.meta["a"], p.meta["b"])
    assert scratchpads.answer_prompt(q, work) + p.target + "\n" == p.text
    assert p.text.startswith(scratchpads.work_prompt(q) + work + "\n")


def test_run_example_is_normalised(lm):
    r = scratchpads.run_example("12+34", model=lm, num_particles=4, max_work_tokens=4, max_answer_tokens=2)
    assert r["posterior"].num_particles == 4
    assert math.isclose(sum(r["answers"].values()), 1.0)
    assert r["answer"] == max(r["answers"], key=r["answers"].get)
    assert r["sample"].strip() in r["answers"]


def test_self_consistency_is_the_mode_of_the_answer_marginal(scripted):
    # the model tends to write the right work and answers "46" after any work
    model = scripted({"Work: ": "2+4=6 c0; 1+3+0=4 c0", "A: ": "46"}, p=0.9)
    answer, post = self_consistency("12+34", model=model, num_samples=8, max_work_tokens=24, max_answer_tokens=3)
    assert answer == "46"
    # recompute the mode from the weighted traces
    totals = {}
    for trace, w in zip(post.traces, post.weights.tolist(), strict=True):
        a = trace.nodes["answer"]["value"].strip()
        totals[a] = totals.get(a, 0.0) + w
    assert answer == max(totals, key=totals.get)
    r = consistency.run_example("12+34", model=model, num_particles=4, max_work_tokens=24, max_answer_tokens=3)
    assert r["answer"] == "46" and math.isclose(sum(r["answers"].values()), 1.0) and r["num_thoughts"] >= 1


def test_examples_registry_lists_every_cascade():
    assert set(EXAMPLES) == {
        "scratchpad",
        "self_consistency",
        "verifier",
        "tool_use",
        "selection_inference",
        "twenty_questions",
        "star",
        "long_addition",
    }
    assert all(callable(f) for f in EXAMPLES.values())


@pytest.mark.integration
def test_scratchpad_on_the_shipped_checkpoint():
    r = scratchpads.run_example("12+34", num_particles=2, max_work_tokens=12, max_answer_tokens=3)
    assert math.isclose(sum(r["answers"].values()), 1.0)
    assert r["posterior"].num_particles == 2


@pytest.mark.parametrize("program", [scratchpad, scratchpads.direct])
@pytest.mark.parametrize("question", [None, 5])
def test_question_must_be_a_string(lm, program, question):
    with pytest.raises(TypeError, match=r"question: expected a str, got"):
        program(question, model=lm)
