"""STaR: only rationales that reach the known answer become documents; the loop fine-tunes on them."""

import json

import pytest
import torch

import llmppl.cascades.star as star_module
from llmppl.cascades import PromptStyle, star, star_document, star_loop, star_pair, star_rationales
from llmppl.cascades.star import DEFAULT_FINE_TUNE, accuracy, addition_problems
from llmppl.models import PerformerConfig, PerformerLM, load_pretrained, tasks
from llmppl.models.train import document_loss

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


# ------------------------------------------------------------------ the loop with the default fine-tuning


def test_pairs_split_where_training_splits():
    p = tasks.sample_problem("scratchpad", split="train", seed=0, index=3)
    assert star_pair(p.text) == (p.prompt, p.text[len(p.prompt) :])
    with pytest.raises(ValueError, match="Work:"):
        star_pair("Q: 1+1\nA: 2\n")


def test_loop_fine_tunes_a_performer_reports_accuracy_per_iteration_and_saves_it(tmp_path):
    torch.manual_seed(0)
    lm = PerformerLM(PerformerConfig.tiny())
    start = {k: v.clone() for k, v in lm.state_dict().items()}
    train = addition_problems(3, 1, split="train")
    held = addition_problems(4, [1, 2], split="test")
    lines = []
    final, history = star_loop(
        train,
        held,
        model=lm,
        iterations=3,
        num_rationales=1,
        max_attempts=3,
        max_work_tokens=4,
        fine_tune_kwargs={"steps": 2},
        save_dir=tmp_path,
        log=lines.append,
    )
    assert [h["iteration"] for h in history] == [0, 1, 2, 3] and len(lines) == 4
    for h in history:
        assert 0.0 <= h["accuracy"] <= 1.0 and set(h["accuracy_by_digits"]) == {1, 2}
    assert final is not lm and all(torch.equal(v, lm.state_dict()[k]) for k, v in start.items())
    saved = load_pretrained(tmp_path / "final")
    for k, v in final.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[k], v)
    assert (tmp_path / "iteration_3" / "model.safetensors").exists()
    assert json.loads((tmp_path / "history.json").read_text()) == json.loads(json.dumps(history))
    assert json.loads((tmp_path / "final" / "config.json").read_text())["star"]["iteration"] == 3


def test_loop_trains_on_the_kept_rationales(monkeypatch):
    # the rationale filter is stubbed; the fine-tuning is the real one, on a tiny Performer
    documents = [f"Q: 1+2\nWork: {RIGHT_WORK}\nA: 3\n"]
    monkeypatch.setattr(star_module, "star_rationales", lambda *a, **k: list(documents))
    lm = PerformerLM(PerformerConfig.tiny())
    before = document_loss(lm, [star_pair(d) for d in documents])
    final, history = star_loop(
        [("1+2", "3")], [], model=lm, iterations=2, fine_tune_kwargs={"steps": 10, "lr": 3e-3, "warmup": 1}
    )
    after = document_loss(final, [star_pair(d) for d in documents])
    assert after < before
    first = history[1]["fine_tune"]
    assert history[1]["documents"] == 1 and first["loss_after"] < first["loss_before"]
    assert history[2]["fine_tune"]["loss_before"] <= history[1]["fine_tune"]["loss_after"] + 1e-3  # continues


def test_restart_fine_tunes_the_starting_model_each_time(monkeypatch):
    monkeypatch.setattr(star_module, "star_rationales", lambda *a, **k: [f"Q: 1+2\nWork: {RIGHT_WORK}\nA: 3\n"])
    lm = PerformerLM(PerformerConfig.tiny())
    _, history = star_loop([("1+2", "3")], [], model=lm, iterations=2, restart=True, fine_tune_kwargs={"steps": 3})
    assert history[1]["fine_tune"] == history[2]["fine_tune"]  # same start, same documents, same seed


def test_loop_needs_a_fine_tune_for_other_models(lm):
    with pytest.raises(TypeError, match="fine_tune"):
        star_loop([("1+1", "2")], [("1+1", "2")], model=lm)
    with pytest.raises(ValueError, match="fine_tune_kwargs"):
        star_loop([], [], model=PerformerLM(PerformerConfig.tiny()), fine_tune_kwargs={"stpes": 3})
    assert set(DEFAULT_FINE_TUNE) >= {"steps", "lr"}


def test_loop_needs_at_least_one_iteration_like_the_command_line(tmp_path):
    # zero iterations would write nothing to save_dir although its docstring promises final/ and history.json
    for bad in (0, -1):
        with pytest.raises(ValueError, match=rf"star_loop: iterations: expected an int >= 1, got {bad}"):
            star_loop([("1+1", "2")], [], model=PerformerLM(PerformerConfig.tiny()), iterations=bad, save_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_batched_accuracy_counts_right_answers(scripted):
    model = scripted({"Work: ": RIGHT_WORK, f"Work: {RIGHT_WORK}\nA: ": "3"}, p=0.999)
    correct = []
    assert accuracy([("1+2", "3"), ("1+2", "4")], model=model, max_work_tokens=10, correct=correct) == 0.5
    assert correct == [True, False]


def test_rationales_under_a_bpe_style_carry_no_extra_space(scripted):
    # with space="" the model writes " 1+2=3 c0" and " 3"; the documents are still the training format
    model = scripted({"Work:": " " + RIGHT_WORK, f"Work: {RIGHT_WORK}\nA:": " 3"}, p=0.95)
    docs = star_rationales(
        [("1+2", "3")], model=model, num_rationales=1, max_attempts=200, max_work_tokens=12, style=PromptStyle(space="")
    )
    assert docs == [f"Q: 1+2\nWork: {RIGHT_WORK}\nA: 3\n"]


def test_sampled_accuracy_ignores_whitespace_before_taking_the_mode(monkeypatch, lm):
    import llmppl
    from llmppl.inference import Marginal

    class Posterior:  # " 46" and "46" together (0.6) beat "47" (0.4)
        def marginal(self, name):
            return Marginal({" 46": 0.3, "46": 0.3, "47": 0.4})

    class Importance:
        def __init__(self, *args, **kwargs):
            pass

        def run(self, *args, **kwargs):
            return Posterior()

    monkeypatch.setattr(llmppl.infer, "Importance", Importance)
    assert accuracy([("12+34", "46")], model=lm, num_samples=4) == 1.0


@pytest.mark.parametrize("problems", [[("1+1", 2)], [("1+1",)], "1+1"])
def test_problems_must_be_question_answer_strings(lm, problems):
    with pytest.raises(TypeError, match=r"star_rationales: problems: expected"):
        star_rationales(problems, model=lm, max_attempts=1)
    with pytest.raises(TypeError, match=r"accuracy: problems: expected"):
        accuracy(problems, model=lm)


def test_addition_problems_are_distinct_or_a_clear_error():
    from llmppl.cascades.star import addition_problems

    probs = addition_problems(100, 2, split="test")
    assert len(set(probs)) == 100
    with pytest.raises(ValueError, match="distinct test-split additions"):
        addition_problems(10, 1, split="test")  # 4 held-out pairs of one digit exist
