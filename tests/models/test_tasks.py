"""The task generators: exact formats, determinism, held-out split."""

import itertools
import random
import re

import pytest

from llmppl.models import tasks as T


def test_contract_formats():
    assert T.addition_work(4721, 385) == "1+5=6 c0; 2+8+0=10 c1; 7+3+1=11 c1; 4+0+1=5 c0"
    assert T.addition_work(5, 7) == "5+7=12 c1"
    assert T.addition_work(0, 0) == "0+0=0 c0"
    p = T.sample_problem("scratchpad", split="train", seed=0, index=0)
    a, b = p.meta["a"], p.meta["b"]
    assert p.text == f"Q: {a}+{b}\nWork: {T.addition_work(a, b)}\nA: {a + b}\n"
    d = T.sample_problem("direct", split="test", seed=0, index=0)
    assert d.text == f"Q: {d.meta['a']}+{d.meta['b']}\nA: {d.meta['a'] + d.meta['b']}\n"


def test_scratchpad_work_is_correct_for_many_pairs():
    rng = random.Random(0)
    for _ in range(500):
        a, b = rng.randrange(10**6), rng.randrange(10**6)
        steps = T.parse_addition_work(T.addition_work(a, b))
        digits = [s % 10 for _, _, _, s, _ in steps]
        if steps[-1][4]:
            digits.append(1)
        assert int("".join(map(str, reversed(digits)))) == a + b


@pytest.mark.parametrize("task", T.TASKS)
def test_deterministic_and_prompt_prefix(task):
    p1 = T.sample_problem(task, split="train", seed=3, index=7)
    p2 = T.sample_problem(task, split="train", seed=3, index=7)
    assert p1 == p2
    assert p1.text.startswith(p1.prompt) and p1.text.endswith("\n")


@pytest.mark.parametrize("task", ["direct", "scratchpad", "verifier", "calculator", "selection_inference"])
def test_held_out_never_in_training(task):
    train = {T.sample_problem(task, split="train", seed=0, index=i).text for i in range(400)}
    test = {T.sample_problem(task, split="test", seed=0, index=i).text for i in range(100)}
    assert not train & test


def test_held_out_additions_are_not_trained_as_calculator_calls():
    for i in range(3000):
        p = T.sample_problem("calculator", split="train", seed=0, index=i)
        a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)", p.meta["expr"]).groups()
        assert not (op == "+" and T.is_held_out(f"{a}+{b}")), p.meta["expr"]


def test_addition_split_by_operands():
    for i in range(200):
        p = T.sample_problem("scratchpad", split="test", seed=1, index=i, digits=3)
        assert T.is_held_out(f"{p.meta['a']}+{p.meta['b']}")
        assert len(str(p.meta["a"])) == 3 and len(str(p.meta["b"])) == 3


def test_twenty_answerer_held_out_phrasing_never_trained():
    seen = {T.sample_problem("twenty_answerer", split="train", seed=0, index=i).prompt for i in range(3000)}
    for i in range(200):
        p = T.sample_problem("twenty_answerer", split="test", seed=0, index=i)
        assert p.prompt not in seen
        assert p.target == ("yes" if T.KNOWLEDGE_BASE[p.meta["object"]][p.meta["attribute"]] else "no")


def test_twenty_answerer_trains_more_phrasings_and_keeps_the_test_set():
    more = {q for qs in T._MORE_QUESTIONS.values() for q in qs}
    held_out = {q for qs in T._QUESTIONS.values() for q in qs}
    assert not more & held_out and all(len(qs) == 3 for qs in T._MORE_QUESTIONS.values())
    asked = [T.sample_problem("twenty_answerer", split="train", seed=0, index=i) for i in range(1000)]
    questions = [(p.prompt.split(" Q: ", 1)[1].removesuffix(" A:"), p.meta["attribute"]) for p in asked]
    extra = [(q, attr) for q, attr in questions if q in more]
    assert 400 < len(extra) < 600
    assert all(q in T._MORE_QUESTIONS[attr] for q, attr in extra)  # it asks about the attribute it names
    for i in range(100):  # the test split asks only the held-out phrasing of the pair
        p = T.sample_problem("twenty_answerer", split="test", seed=0, index=i)
        k = T._held_out_phrasing(p.meta["object"], p.meta["attribute"])
        assert p.prompt.endswith(f" Q: {T._QUESTIONS[p.meta['attribute']][k]} A:")


def test_twenty_answerer_is_balanced_and_takes_a_label():
    probs = [T.sample_problem("twenty_answerer", split="train", seed=0, index=i) for i in range(600)]
    assert 240 < sum(p.target == "yes" for p in probs) < 360
    assert len({p.meta["object"] for p in probs}) == len(T.KNOWLEDGE_BASE)
    for label, word in ((True, "yes"), (False, "no")):
        p = T.sample_problem("twenty_answerer", split="test", seed=0, index=1, label=label)
        assert p.target == word == ("yes" if T.KNOWLEDGE_BASE[p.meta["object"]][p.meta["attribute"]] else "no")


def test_verifier_balanced_with_each_corruption():
    probs = [T.sample_problem("verifier", split="train", seed=0, index=i) for i in range(600)]
    yes = sum(p.target == "yes" for p in probs)
    assert 240 < yes < 360
    kinds = {p.meta["corruption"] for p in probs if p.target == "no"}
    assert kinds == {"step", "carry", "answer", "operand"}
    for p in probs:
        if p.target == "no":
            a, b = p.meta["a"], p.meta["b"]
            assert p.text != f"Verify: {a}+{b}\nWork: {T.addition_work(a, b)}\nA: {a + b}\nOK: no\n"
        if p.meta["corruption"] == "operand":
            # a misread digit: every step adds up and the answer follows from the work, but
            # the digits of some step are not the question's
            work, answer = p.prompt.split("Work: ")[1].split("\nA: ")
            answer = answer.split("\n")[0]
            steps = T.parse_addition_work(work)
            assert all(x + y + (c or 0) == s and co == s // 10 for x, y, c, s, co in steps)
            digits = "".join(str(s % 10) for *_, s, _ in reversed(steps))
            assert int(str(steps[-1][-1]) + digits) == int(answer) != a + b
            assert work != T.addition_work(a, b)


def test_calculator_tool():
    assert T.calculator("12+30") == "42"
    assert T.calculator("3*-1") == "error"
    p = T.sample_problem("calculator", split="train", seed=0, index=4)
    assert f"Result: {T.calculator(p.meta['expr'])}\nA: {p.meta['result']}\n" in p.text


def test_selection_inference_gold_steps_are_valid():
    for i in range(100):
        p = T.sample_problem("selection_inference", split="train", seed=0, index=i)
        person = p.meta["person"]
        known = [f"{a} is {b}." for a, b in p.meta["facts"]]
        for sel, rule, new in p.meta["steps"]:
            assert T.check_selection_step(p, known, " ".join([*sel, rule]), f"{person} is {new}.")
            assert not T.check_selection_step(p, known, " ".join([*sel, rule]), f"{person} is purple.")
            known.append(f"{person} is {new}.")
        assert p.target == ("yes" if f"{person} is {p.meta['goal']}." in known else "no")


def test_questioner_guesses_the_object():
    for i in range(50):
        p = T.sample_problem("twenty_questioner", split="train", seed=0, index=i)
        assert p.text.endswith(f"Guess: {p.meta['object']}\n")


def test_mixture_is_deterministic():
    a = [p.text for p in itertools.islice(T.mixture(seed=5), 20)]
    b = [p.text for p in itertools.islice(T.mixture(seed=5), 20)]
    assert a == b and len({p.split(":")[0] for p in a}) > 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="task"):
        T.sample_problem("nope", split="train", seed=0, index=0)
    with pytest.raises(ValueError, match="split"):
        T.sample_problem("direct", split="dev", seed=0, index=0)
    with pytest.raises(ValueError, match="steps like"):
        T.parse_addition_work("1+2=3")
