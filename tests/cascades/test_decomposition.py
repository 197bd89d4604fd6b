"""Additions by blocks (`llmppl.cascades.decomposition`): cutting, carries, sites, inference."""

import pyro
import pytest

import llmppl
from llmppl.cascades import EXAMPLES, long_addition
from llmppl.cascades.decomposition import parts


def test_parts_cut_from_the_right():
    assert parts("123456789+98765", 4) == [("6789", "8765"), ("2345", "9"), ("1", "")]
    assert parts("12+3456", 2) == [("12", "56"), ("", "34")]
    assert parts(" 7 + 8 ", 3) == [("7", "8")]
    for question in ("12+", "1-2", "a+b", 12, "1+2+3"):
        with pytest.raises(ValueError, match="question"):
            parts(question, 2)
    for block in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="block"):
            parts("1+2", block)


def _sums(pairs, work="w"):
    """A script: each block's question gets the sum written in ``pairs``, and the verifier says yes."""
    script = {"OK: ": "yes"}
    for question, total in pairs.items():
        script[f"Q: {question}\nWork: "] = work
        script[f"Q: {question}\nWork: {work}\nA: "] = total
    return script


def test_the_program_carries_between_blocks(scripted):
    # 123456789 + 98765 = 123555554: blocks 6789+8765 (carry out), 2345+9 (+1 carried in), 1
    model = scripted(_sums({"6789+8765": "15554", "2345+9": "2354", "2354+1": "2355"}), p=0.9999)
    tr = pyro.poutine.trace(long_addition).get_trace("123456789+98765", model=model)
    assert tr.nodes["_RETURN"]["value"] == "123555554"
    sites = [n for n in tr.nodes if not n.startswith("_")]
    assert sites == [
        *("b0/work", "b0/answer", "b0/verified"),
        *("b1/work", "b1/answer", "b1/verified"),
        *("b1-carry/work", "b1-carry/answer", "b1-carry/verified"),
        "answer",
    ]
    assert tr.nodes["b0/verified"]["is_observed"] and tr.nodes["answer"]["value"] == "123555554"


def test_blocks_keep_their_leading_zeros_and_the_last_carry_grows_the_answer(scripted):
    # 90000012 + 10000099: blocks 0012+0099 -> "12"+"99" = 111 -> "0111"; 9000+1000 = 10000 (last)
    model = scripted(_sums({"12+99": "111", "9000+1000": "10000"}), p=0.9999)
    out = long_addition("90000012+10000099", model=model, verify=False)
    assert out == "100000111" == str(90000012 + 10000099)


def test_a_malformed_sum_makes_a_wrong_answer_not_an_error(scripted):
    # 34+78 carries into a block whose sum is malformed: no carry question is asked of it
    model = scripted(_sums({"34+78": "112", "12+56": "x"}), p=0.9999)
    tr = pyro.poutine.trace(long_addition).get_trace("1234+5678", model=model, block=2, verify=False)
    out = tr.nodes["_RETURN"]["value"]
    assert not out.isdigit() and out.startswith("x") and out.endswith("12")
    assert not any(n.startswith("b1-carry") for n in tr.nodes)


def test_smc_drops_the_blocks_the_verifier_rejects(scripted):
    # The generator writes each block's right sum only with probability 0.9 per token;
    # the verifier says yes to the right sums only. Without it about a third of the
    # answers are right; SMC, resampling at each verdict, puts nearly all mass on the truth.
    truth = str(56781234 + 43215678)  # blocks 1234+5678 = 6912 (no carry), 5678+4321 = 9999
    generator = scripted(_sums({"1234+5678": "6912", "5678+4321": "9999"}), p=0.9)
    verifier = scripted({"A: 6912\nOK: ": "yes", "A: 9999\nOK: ": "yes"}, p=0.99)
    pyro.set_rng_seed(0)
    prior = llmppl.infer.Importance(long_addition, num_samples=32, progress=False).run(
        "56781234+43215678", model=generator, verify=False
    )
    post = llmppl.infer.SMC(long_addition, num_particles=16, progress=False).run(
        "56781234+43215678", model=generator, verifier_model=verifier
    )
    assert dict(prior.marginal("answer").items()).get(truth, 0.0) < 0.8
    assert dict(post.marginal("answer").items()).get(truth, 0.0) > 0.95


def test_run_example_at_a_tiny_size(lm):
    r = EXAMPLES["long_addition"]("123+45", model=lm, block=2, num_particles=2)
    assert r["question"] == "123+45" and isinstance(r["answer"], str) and r["answers"]


def test_the_graph_shows_the_carry_depends_on_the_block_before(scripted):
    model = scripted(_sums({"6789+8765": "15554", "2345+9": "2354", "2354+1": "2355"}), p=0.9999)
    g = llmppl.model_graph(long_addition, model_args=("123456789+98765",), model_kwargs={"model": model})
    assert ("b0/answer", "b1-carry/work") in g.edges and ("b1/answer", "b1-carry/work") in g.edges
    assert ("b0/answer", "b1/work") not in g.edges  # the next block's own sum does not read it
    assert {"b0/answer", "b1-carry/answer"} <= set(g.predecessors("answer"))
