"""STaR's filtering step: only rationales that reach the known answer become documents."""

from llmppl.cascades import star, star_document, star_loop, star_rationales
from llmppl.models import tasks

RIGHT_WORK = "1+2=3 c0"


def test_document_is_the_scratchpad_training_format():
    p = tasks.sample_problem("scratchpad", split="train", seed=0, index=0)
    a, b = p.meta["a"], p.meta["b"]
    assert star_document(f"{a}+{b}", tasks.addition_work(a, b), p.target) == p.text


def test_keeps_only_rationales_that_reach_the_answer(scripted):
    # right work (likely) leads to "3"; any other work leads to "4"
    model = scripted({"Work: ": RIGHT_WORK, f"Work: {RIGHT_WORK}\nA: ": "3", "A: ": "4"}, p=0.8)
    stats = {}
    docs = star_rationales(
        [("1+2", "3"), ("1+2", "9")], model=model, num_rationales=3, max_attempts=400, max_work_tokens=12, stats=stats
    )
    assert docs == [f"Q: 1+2\nWork: {RIGHT_WORK}\nA: 3\n"]
    assert stats["1+2", "3"]["solved"] and not stats["1+2", "9"]["solved"]
    assert stats["1+2", "9"]["attempts"] == 400


def test_unreachable_answer_gives_no_documents(scripted):
    model = scripted({"Work: ": RIGHT_WORK, "A: ": "4"}, p=0.9)
    stats = {}
    assert star_rationales([("1+2", "3")], model=model, max_attempts=32, max_work_tokens=10, stats=stats) == []
    assert stats == {("1+2", "3"): {"solved": False, "attempts": 32}}


def test_run_example_structure(lm):
    r = star.run_example(model=lm, num_problems=2, num_particles=1, max_attempts=8, max_work_tokens=4)
    assert len(r["problems"]) == 2 and set(r["stats"]) == set(r["problems"])
    for doc in r["documents"]:
        assert any(doc.startswith(f"Q: {q}\nWork: ") and doc.endswith(f"\nA: {a}\n") for q, a in r["problems"])


def test_loop_fine_tunes_on_the_filtered_documents_and_reports_accuracy(scripted):
    # the weak model writes the right work about one time in a hundred (then answers "3", else "4");
    # "fine-tuning" swaps in a model that writes it, once it has been shown it
    weak = scripted({"Work: ": RIGHT_WORK, f"Work: {RIGHT_WORK}\nA: ": "3", "A: ": "4"}, p=0.6)
    strong = scripted({"Work: ": RIGHT_WORK, f"Work: {RIGHT_WORK}\nA: ": "3", "A: ": "4"}, p=0.999)
    seen = []

    def fine_tune(model, documents):
        seen.append(list(documents))
        return strong if f"Q: 1+2\nWork: {RIGHT_WORK}\nA: 3\n" in documents else model

    final, history = star_loop(
        [("1+2", "3")],
        [("1+2", "3")],
        model=weak,
        fine_tune=fine_tune,
        iterations=2,
        num_rationales=1,
        max_attempts=1000,
        max_work_tokens=10,
    )
    assert [h["iteration"] for h in history] == [0, 1, 2]
    assert seen[0] and all(d.endswith("\nA: 3\n") for d in seen[0])
    assert final is strong and history[0]["accuracy"] == 0.0 and history[-1]["accuracy"] == 1.0
