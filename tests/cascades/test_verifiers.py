"""Scratchpad + verifier: the verifier as an observation and as a factor, with Rejection and SMC."""

import math

import pytest
from pyro import poutine

from llmppl import LM
from llmppl.cascades import verified_scratchpad, verifiers
from llmppl.models import tasks


def test_verifier_prompt_reproduces_the_training_text():
    p = tasks.sample_problem("verifier", split="test", seed=0, index=0, label=True)
    a, b = p.meta["a"], p.meta["b"]
    prompt = verifiers.verifier_prompt(f"{a}+{b}", tasks.addition_work(a, b), str(a + b))
    assert prompt + "yes\n" == p.text


def test_observe_mode_sites(lm):
    tr = poutine.trace(verified_scratchpad).get_trace("1+2", model=lm, max_work_tokens=3, max_answer_tokens=2)
    assert [n for n in tr.nodes if not n.startswith("_")] == ["work", "answer", "verified"]
    node = tr.nodes["verified"]
    assert node["is_observed"] and node["value"] == "yes" and isinstance(node["fn"], LM)
    work, answer = tr.nodes["work"]["value"], tr.nodes["answer"]["value"]
    assert node["fn"].prompt == f"Verify: 1+2\nWork: {work}\nA: {answer}\nOK: "


def test_factor_mode_is_beta_times_the_log_probability_of_yes(lm):
    tr = poutine.trace(verified_scratchpad).get_trace(
        "1+2", model=lm, mode="factor", beta=0.5, max_work_tokens=3, max_answer_tokens=2
    )
    work, answer = tr.nodes["work"]["value"], tr.nodes["answer"]["value"]
    expected = 0.5 * LM(verifiers.verifier_prompt("1+2", work, answer), model=lm, stop="\n", max_tokens=4).log_prob(
        "yes"
    )
    tr.compute_log_prob()
    assert math.isclose(float(tr.nodes["verified"]["log_prob_sum"]), float(expected), rel_tol=1e-5)


def test_bad_mode_and_beta(lm):
    with pytest.raises(ValueError, match="mode"):
        verified_scratchpad("1+2", model=lm, mode="vote")
    with pytest.raises(ValueError, match="beta"):
        verified_scratchpad("1+2", model=lm, mode="factor", beta=-1.0)


@pytest.fixture
def generator_and_verifier(scripted):
    # the generator answers "46" about one time in three; the verifier says "yes" only to "46"
    generator = scripted({"Work: ": "2+4=6 c0", "A: ": "46"}, p=0.7)
    verifier = scripted({"A: 46\nOK: ": "yes"}, p=0.95)
    return generator, verifier


@pytest.mark.parametrize("algorithm", ["rejection", "smc"])
def test_conditioning_on_yes_keeps_verified_answers(generator_and_verifier, algorithm):
    generator, verifier = generator_and_verifier
    r = verifiers.run_example(
        "12+34",
        model=generator,
        verifier_model=verifier,
        algorithm=algorithm,
        num_particles=16,
        max_work_tokens=10,
        max_answer_tokens=3,
        max_attempts=2000,
    )
    assert math.isclose(sum(r["answers"].values()), 1.0)
    assert r["answer"] == "46" and r["answers"]["46"] > 0.99
    if algorithm == "rejection":
        assert 0 < r["posterior"].diagnostics["acceptance_rate"] < 1


def test_factor_mode_with_rejection(generator_and_verifier):
    generator, verifier = generator_and_verifier
    r = verifiers.run_example(
        "12+34",
        model=generator,
        verifier_model=verifier,
        algorithm="rejection",
        mode="factor",
        num_particles=2,
        max_work_tokens=10,
        max_answer_tokens=3,
        max_attempts=2000,
    )
    assert r["answers"] == {"46": 1.0}


def test_question_must_be_a_string(lm):
    with pytest.raises(TypeError, match=r"verified_scratchpad: question: expected a str, got NoneType"):
        verified_scratchpad(None, model=lm)
