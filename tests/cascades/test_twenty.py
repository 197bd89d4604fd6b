"""Twenty questions: exact prompts, a game, and the posterior over the hidden object."""

import math

import pytest
from pyro import poutine

from llmppl import LM
from llmppl.cascades import infer_object, object_posterior, play, twenty, twenty_questions
from llmppl.distributions import Categorical
from llmppl.models import tasks

OBJECTS = ["penguin", "eagle", "dog", "car"]
QUESTIONS = {"Is it an animal?": "animal", "Can it fly?": "fly", "Does it bark?": "bark"}
DETERMINISTIC = 1 - 1e-9


def _questioner_script():
    """Ask animal, fly, bark in that order whatever the answers, then guess "dog"."""
    order = list(QUESTIONS)
    script = {"Twenty questions.\n": f"Q: {order[0]}"}
    for q, nxt in zip(order, [*[f"Q: {x}" for x in order[1:]], "Guess: dog"], strict=True):
        for a in ("yes", "no"):
            script[f"Q: {q} A: {a}\n"] = nxt
    return script


def _answerer_script():
    """Answer from the knowledge base."""
    script = {}
    for obj in OBJECTS:
        for q, attr in QUESTIONS.items():
            script[twenty.answerer_prompt(obj, q)] = "yes" if tasks.KNOWLEDGE_BASE[obj][attr] else "no"
    return script


@pytest.fixture
def questioner(scripted):
    return scripted(_questioner_script(), p=DETERMINISTIC)


@pytest.fixture
def kb_answerer(scripted):
    return scripted(_answerer_script(), p=0.99)


def test_prompts_reproduce_the_training_text():
    p = tasks.sample_problem("twenty_answerer", split="test", seed=0, index=0)
    question = p.prompt.split(" Q: ", 1)[1][: -len(" A:")]
    assert twenty.answerer_prompt(p.meta["object"], question) + p.target + "\n" == p.text
    for index in range(20):
        p = tasks.sample_problem("twenty_questioner", split="train", seed=0, index=index)
        lines = p.text.splitlines()
        history = [tuple(line[len("Q: ") :].split(" A: ")) for line in lines[1:-1]]
        assert twenty.questioner_prompt(history) + lines[-1] + "\n" == p.text


def test_sites_and_kinds(questioner, kb_answerer):
    tr = poutine.trace(twenty_questions).get_trace(model=questioner, answerer_model=kb_answerer, objects=OBJECTS)
    names = [n for n in tr.nodes if not n.startswith("_")]
    turns = [f"{kind}_{t}" for t in range(3) for kind in ("question", "answer")]
    assert names == ["object", *turns, "question_3", "guess"]
    assert tr.nodes["question_3"]["value"] == "Guess: dog" and tr.nodes["guess"]["value"] == "dog"
    assert isinstance(tr.nodes["object"]["fn"], Categorical) and tr.nodes["object"]["value"] in OBJECTS
    assert all(isinstance(tr.nodes[n]["fn"], LM) for n in names[1:-1])
    obj = tr.nodes["object"]["value"]
    assert tr.nodes["answer_0"]["fn"].prompt == f"Object: {obj}. Q: Is it an animal? A: "
    assert (
        tr.nodes["question_1"]["fn"].prompt
        == f"Twenty questions.\nQ: Is it an animal? A: {tr.nodes['answer_0']['value']}\n"
    )
    assert tr.nodes["answer_0"]["fn"].top_k == 1


def test_a_game_and_its_posterior(questioner, kb_answerer):
    game = play("dog", model=questioner, answerer_model=kb_answerer, objects=OBJECTS)
    assert game["transcript"] == [("Is it an animal?", "yes"), ("Can it fly?", "no"), ("Does it bark?", "yes")]
    assert game["guess"] == "dog" and game["turns"] == 3
    probs, post = infer_object(
        game["transcript"], num_particles=16, model=questioner, answerer_model=kb_answerer, objects=OBJECTS
    )
    assert probs == {"dog": 1.0}
    assert math.isclose(post.log_evidence, math.log(1 / 4), abs_tol=0.7)  # prior mass of the one consistent object
    # one answer: every animal stays possible, the car does not
    probs, _ = infer_object(
        [("Is it an animal?", "yes")], num_particles=32, model=questioner, answerer_model=kb_answerer, objects=OBJECTS
    )
    assert set(probs) == {"penguin", "eagle", "dog"} and math.isclose(sum(probs.values()), 1.0)


def test_posterior_is_consistent_with_a_toy_answerer(questioner, lm):
    game = play("eagle", model=questioner, answerer_model=lm, objects=OBJECTS, max_turns=3)
    probs, _ = infer_object(game["transcript"], num_particles=32, model=questioner, answerer_model=lm, objects=OBJECTS)
    assert math.isclose(sum(probs.values()), 1.0) and "eagle" in probs

    def greedy(obj, q):
        return LM(twenty.answerer_prompt(obj, q), model=lm, stop="\n", max_tokens=4, top_k=1).sample()

    consistent = {o for o in OBJECTS if all(greedy(o, q) == a for q, a in game["transcript"])}
    assert set(probs) <= consistent


def test_object_posterior_enumerates_exactly(questioner, lm):
    # a greedy toy answerer: the posterior is uniform over exactly the consistent objects,
    # however few there are (importance sampling from the prior can miss them all)
    objects = [*OBJECTS, "shark", "apple", "robot", "drone"]
    game = play("eagle", model=questioner, answerer_model=lm, objects=objects, max_turns=3)
    probs = object_posterior(game["transcript"], answerer_model=lm, objects=objects)

    def greedy(obj, q):
        return LM(twenty.answerer_prompt(obj, q), model=lm, stop="\n", max_tokens=4, top_k=1).sample()

    consistent = {o for o in objects if all(greedy(o, q) == a for q, a in game["transcript"])}
    assert "eagle" in consistent
    assert {o for o, p in probs.items() if p > 0} == consistent
    assert all(math.isclose(p, 1 / len(consistent)) for o, p in probs.items() if o in consistent)
    # a sampling answerer: the posterior is prior x likelihood, normalised
    soft = object_posterior(game["transcript"], answerer_model=lm, objects=objects, answerer_top_k=None)
    lik = {
        o: sum(
            float(LM(twenty.answerer_prompt(o, q), model=lm, stop="\n", max_tokens=4).log_prob(a))
            for q, a in game["transcript"]
        )
        for o in objects
    }
    z = math.log(sum(math.exp(v) for v in lik.values()))
    assert all(math.isclose(soft[o], math.exp(lik[o] - z), rel_tol=1e-4) for o in objects)
    with pytest.raises(ValueError, match=r"no object in .* gives every answer"):
        object_posterior([("Is it an animal?", "maybe-not-a-word")], answerer_model=lm, objects=objects)


def test_run_example_with_one_model_in_both_roles(scripted):
    both = scripted({**_questioner_script(), **_answerer_script()}, p=DETERMINISTIC)
    r = twenty.run_example("eagle", model=both, num_particles=32, objects=OBJECTS)
    assert r["transcript"] == [("Is it an animal?", "yes"), ("Can it fly?", "yes"), ("Does it bark?", "no")]
    assert r["posterior"] == {"eagle": 1.0} and r["map_object"] == "eagle" and r["guess"] == "dog"


def test_max_turns(questioner, kb_answerer):
    game = play("car", model=questioner, answerer_model=kb_answerer, objects=OBJECTS, max_turns=1)
    assert game["turns"] == 1 and game["guess"] is None
    with pytest.raises(ValueError, match="max_turns"):
        twenty_questions(max_turns=0)
    with pytest.raises(ValueError, match="transcript"):
        twenty_questions([("Is it an animal?", "yes")] * 2, max_turns=1)


def test_objects_must_be_a_list_of_strings(lm):
    with pytest.raises(TypeError, match=r"twenty_questions: objects: expected a list of str, got str"):
        twenty_questions(model=lm, objects="cat", max_turns=1)
    with pytest.raises(TypeError, match=r"object_posterior: objects: expected a list of str"):
        object_posterior([], model=lm, objects=["cat", 3])


@pytest.mark.parametrize("transcript", ["ab", [("q",)], [("q", 1)]])
def test_malformed_transcript_is_named(lm, transcript):
    with pytest.raises(TypeError, match=r"twenty_questions: transcript: expected"):
        twenty_questions(transcript, model=lm, objects=["cat"], max_turns=2)


def test_play_rejects_an_object_outside_objects(lm):
    with pytest.raises(ValueError, match=r"play: hidden_object: expected one of objects \(cat\), got 'zebra'"):
        play("zebra", model=lm, objects=["cat"], max_turns=1)
