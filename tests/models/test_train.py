"""Training: a tiny run learns, checkpoints resume deterministically, the CLI forwards."""

import json

import pytest
import torch

from llmppl.cli import main as cli_main
from llmppl.models import PerformerConfig, PerformerLM
from llmppl.models.tokenizer import ByteTokenizer
from llmppl.models.train import (
    build_parser,
    document_loss,
    evaluate,
    fine_tune,
    make_batch,
    read_documents,
    train,
)

TINY = [
    "--d-model",
    "16",
    "--n-heads",
    "2",
    "--n-layers",
    "1",
    "--num-features",
    "8",
    "--batch-tokens",
    "96",
    "--eval-every",
    "0",
    "--no-progress",
    "--warmup",
    "2",
]


def test_batches_are_deterministic():
    tok = ByteTokenizer()
    a = make_batch(5, seed=1, batch_tokens=200, weights={"direct": 1, "scratchpad": 1}, tokenizer=tok)
    b = make_batch(5, seed=1, batch_tokens=200, weights={"direct": 1, "scratchpad": 1}, tokenizer=tok)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    ids, weight, _ = a
    assert (ids[:, 0] == tok.bos_id).all()
    assert ((weight == 0) == (ids == tok.pad_id)).all()


def test_resume_equals_uninterrupted(tmp_path):
    full = train(build_parser().parse_args(["--out", str(tmp_path / "a"), "--steps", "4", *TINY]))
    train(build_parser().parse_args(["--out", str(tmp_path / "b"), "--steps", "2", "--save-every", "2", *TINY]))
    resumed = train(build_parser().parse_args(["--out", str(tmp_path / "b"), "--steps", "4", *TINY]))
    for (n, p), (_, q) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(p, q, msg=n)
    final = PerformerLM.from_pretrained(tmp_path / "b" / "final")
    assert json.loads((tmp_path / "b" / "final" / "config.json").read_text())["training"]["step"] == 4
    assert final.config.d_model == 16


def test_cli_forwards_to_train(tmp_path):
    assert cli_main(["train", "--out", str(tmp_path), "--steps", "1", *TINY]) == 0
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert (tmp_path / "train_state.pt").exists()


def test_evaluate_metrics_run():
    lm = PerformerLM(PerformerConfig.tiny())
    for metric in ["scratchpad_2", "verifier", "calculator_answer", "si_step", "twenty_questioner"]:
        assert 0.0 <= evaluate(lm, metric, n=2) <= 1.0


# ------------------------------------------------------------------ fine-tuning on documents

DOCS = [
    ("Q: 12+34\nWork:", " 2+4=6 c0; 1+3+0=4 c0\nA: 46\n"),
    ("Q: 5+7\nWork:", " 5+7=12 c1; 0+0+1=1 c0\nA: 12\n"),
    "Twenty questions.\nQ: Is it an animal? A: yes\n",
]


def test_fine_tune_lowers_the_loss_on_its_documents():
    torch.manual_seed(0)
    lm = PerformerLM(PerformerConfig.tiny())
    before = document_loss(lm, DOCS)
    log = []
    assert fine_tune(lm, DOCS, steps=30, lr=3e-3, batch_tokens=64, warmup=2, log=log) is lm
    after = document_loss(lm, DOCS)
    assert after < before - 1.0, (before, after)
    assert [r["step"] for r in log] == list(range(1, 31)) and not lm.training


def test_fine_tune_clears_the_prefix_cache_and_weighs_prompts_like_training():
    lm = PerformerLM(PerformerConfig.tiny())
    lm.sample(["Q: 1+1\nA:"], max_tokens=2)
    assert lm._prefix_cache()
    fine_tune(lm, DOCS[:1], steps=1)
    assert not lm._prefix_cache()
    # prompt tokens count 0.1: a document's loss is dominated by its completion
    only_prompt = document_loss(lm, [("x" * 40, "")], prompt_weight=0.0)  # EOS alone
    assert only_prompt > 0


def test_fine_tune_rejects_bad_arguments():
    lm = PerformerLM(PerformerConfig.tiny())
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        fine_tune(lm, ["ok", 3], steps=1)
    with pytest.raises(ValueError, match="steps"):
        fine_tune(lm, ["ok"], steps=0)
    with pytest.raises(ValueError, match="at least one"):
        fine_tune(lm, [], steps=1)
    with pytest.raises(TypeError, match="PerformerLM"):
        fine_tune(object(), ["ok"], steps=1)


def test_finetune_command_writes_a_loadable_checkpoint(tmp_path):
    init = tmp_path / "init"
    PerformerLM(PerformerConfig.tiny()).save_pretrained(init)
    data = tmp_path / "docs.jsonl"
    lines = [{"prompt": p, "completion": c} for p, c in DOCS[:2]] + [{"text": DOCS[2]}]
    data.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "ft"
    argv = ["train", "finetune", "--init", str(init), "--data", str(data), "--out", str(out)]
    assert cli_main([*argv, "--steps", "3", "--no-progress"]) == 0
    tuned = PerformerLM.from_pretrained(out)
    record = json.loads((out / "config.json").read_text())["fine_tune"]
    assert record["documents"] == 3 and record["steps"] == 3 and record["loss_after"] < record["loss_before"]
    before = PerformerLM.from_pretrained(init)
    assert not torch.equal(tuned.embed.weight, before.embed.weight)


def test_read_documents_names_the_bad_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"prompt": "no completion"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_documents(bad)


def test_max_digits_caps_the_addition_tasks_only_when_asked():
    tok = ByteTokenizer()
    weights = {"scratchpad": 1.0, "verifier": 1.0}
    for step in range(6):
        ids, *_ = make_batch(
            step, seed=0, batch_tokens=400, weights=weights, tokenizer=tok, max_digits={"scratchpad": 3, "verifier": 3}
        )
        for row in ids.tolist():
            text = tok.decode([t for t in row if t < 256])
            a, b = text.split("\n")[0].split(" ")[-1].split("+")
            assert len(a) <= 3 and len(b) <= 3, text
    uncapped = [make_batch(s, seed=0, batch_tokens=400, weights=weights, tokenizer=tok)[0] for s in range(6)]
    longest = max(len(tok.decode([t for t in r if t < 256]).split("\n")[0]) for ids in uncapped for r in ids.tolist())
    assert longest > len("Verify: 999+999")
    with pytest.raises(ValueError, match="max-digits"):
        train(build_parser().parse_args(["--out", "x", "--max-digits", '{"calculator": 2}']))


def test_max_digits_until_is_a_curriculum(tmp_path, monkeypatch):
    import llmppl.models.train as train_module

    seen = {}
    real = train_module.make_batch

    def spy(step, **kwargs):
        seen[step] = kwargs["max_digits"]
        return real(step, **kwargs)

    monkeypatch.setattr(train_module, "make_batch", spy)
    cap = '{"scratchpad": 2}'
    args = ["--out", str(tmp_path), "--steps", "4", "--max-digits", cap, "--max-digits-until", "2", *TINY]
    train(build_parser().parse_args(args))
    assert seen == {0: {"scratchpad": 2}, 1: {"scratchpad": 2}, 2: None, 3: None}
    with pytest.raises(ValueError, match=r"--max-digits-until: expected a step >= 0 together with --max-digits"):
        train(build_parser().parse_args(["--out", str(tmp_path / "x"), "--max-digits-until", "5", *TINY]))


def test_init_goes_on_from_a_checkpoints_weights(tmp_path):
    first = train(build_parser().parse_args(["--out", str(tmp_path / "a"), "--steps", "2", *TINY]))
    # lr 0: one step changes nothing, so the run must start exactly where the checkpoint ended;
    # the architecture is the checkpoint's whatever --d-model says
    args = ["--out", str(tmp_path / "b"), "--steps", "1", "--lr", "0", "--init", str(tmp_path / "a" / "final")]
    again = train(build_parser().parse_args([*args, *TINY, "--d-model", "32"]))
    assert again.config == first.config
    for (n, p), (_, q) in zip(first.state_dict().items(), again.state_dict().items(), strict=True):
        torch.testing.assert_close(p, q, msg=n)
    fresh = train(build_parser().parse_args(["--out", str(tmp_path / "c"), "--steps", "1", "--lr", "0", *TINY]))
    assert not torch.equal(fresh.state_dict()["embed.weight"], first.state_dict()["embed.weight"])
    with pytest.raises(FileNotFoundError, match=r"--init: expected 'pretrained' or a checkpoint folder"):
        train(build_parser().parse_args(["--out", str(tmp_path / "d"), "--init", str(tmp_path), *TINY]))


def test_loader_workers_train_on_the_same_batches(tmp_path):
    # two worker processes build the batches ahead; the stream, and so the weights, are the same
    inline = train(build_parser().parse_args(["--out", str(tmp_path / "a"), "--steps", "5", *TINY]))
    ahead = train(build_parser().parse_args(["--out", str(tmp_path / "b"), "--steps", "5", "--workers", "2", *TINY]))
    for (n, p), (_, q) in zip(inline.state_dict().items(), ahead.state_dict().items(), strict=True):
        torch.testing.assert_close(p, q, msg=n)


def test_max_seconds_stops_early_and_saves(tmp_path):
    train(build_parser().parse_args(["--out", str(tmp_path), "--steps", "50", "--max-seconds", "0", *TINY]))
    saved = json.loads((tmp_path / "final" / "config.json").read_text())["training"]
    assert saved["step"] == 0 and saved["args"]["steps"] == 50


def test_reading_losses_ten_at_a_time_trains_the_same_and_still_stops_on_nan(tmp_path, monkeypatch):
    import llmppl.models.train as train_module

    every_step = train(build_parser().parse_args(["--out", str(tmp_path / "a"), "--steps", "12", *TINY]))
    monkeypatch.setattr(train_module, "_loss_read_every", lambda device: 10)  # as on a GPU
    batched = train(build_parser().parse_args(["--out", str(tmp_path / "b"), "--steps", "12", *TINY]))
    for (n, p), (_, q) in zip(every_step.state_dict().items(), batched.state_dict().items(), strict=True):
        torch.testing.assert_close(p, q, msg=n)
    losses = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert losses[-1]["step"] == 12 and losses[-1]["loss_ema"] > 0

    real = train_module._weighted_loss
    monkeypatch.setattr(
        train_module, "_weighted_loss", lambda m, ids, w: real(m, ids, w) * (float("nan") if m.training else 1.0)
    )
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 0"):
        train(build_parser().parse_args(["--out", str(tmp_path / "c"), "--steps", "30", "--save-every", "5", *TINY]))
    assert not (tmp_path / "c" / "train_state.pt").exists()  # read before the step-5 save: nothing saved
