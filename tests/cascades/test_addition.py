"""The methods compared by `llmppl demo` and benchmarks/cascades.py: answers, accuracy, compute."""

import pytest

from llmppl.cascades.addition import METHODS, compare, count_tokens, held_out_additions, make_methods
from llmppl.models import tasks


def test_problems_are_held_out_and_right():
    problems = held_out_additions(5, 3, seed=1)
    for q, a in problems:
        x, y = q.split("+")
        assert tasks.is_held_out(q) and len(x) == len(y) == 3 and int(x) + int(y) == int(a)


def test_every_method_answers_and_is_counted(lm):
    rows = compare(lm, held_out_additions(2, 1), METHODS, digits=1, particles=2, rejection_samples=1, max_attempts=4)
    assert list(rows) == list(METHODS)
    for method, r in rows.items():
        assert r["n"] == 2 and 0 <= r["correct"] <= 2 and r["seconds"] > 0, method
        assert r["prefill_tokens"] > 0 and r["tokens_per_problem"] > 0, method
    # a random model never gets every run through the verifier: rejection failures count as wrong
    assert rows["verifier+rejection"]["failures"] + rows["verifier+rejection"]["correct"] <= 2
    # more particles, more tokens
    assert rows["self-consistency"]["tokens_per_problem"] > rows["scratchpad"]["tokens_per_problem"]


def test_a_model_that_knows_the_answers_scores_one(scripted):
    ((q, a),) = held_out_additions(1, 2)
    model = scripted({f"Q: {q}\nA: ": a, "Work: ": "x", "\nA: ": a, "OK: ": "yes"}, p=0.999)
    rows = compare(model, [(q, a)], ["direct", "scratchpad", "verifier+SMC"], digits=2, particles=2)
    assert all(r["accuracy"] == 1.0 for r in rows.values()), rows


def test_count_tokens_restores_the_model(lm):
    before = lm.prefill
    with count_tokens(lm, lm) as count:
        lm.sample(["abc", "abc", "xy"], max_tokens=2)
    assert count.prefill == len(lm.encode_prompt("abc")) + len(lm.encode_prompt("xy"))  # one prefill per prompt
    assert count.decode <= 2 * 3 and "prefill" not in lm.__dict__ and lm.prefill == before


def test_unknown_methods_are_named(lm):
    with pytest.raises(ValueError, match="nope"):
        compare(lm, [], ["nope"], digits=1)
    assert set(make_methods(lm, 1)) == set(METHODS)
