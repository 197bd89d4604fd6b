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
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--out", "x", "--max-digits", '{"calculator": 2}'])
    args = build_parser().parse_args(["--out", "x"])
    args.max_digits = '{"calculator": 2}'  # a Namespace built by hand is checked by train itself
    with pytest.raises(ValueError, match="max-digits"):
        train(args)


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


# ------------------------------------------------------------------ checks of the command line and of resuming


def test_resume_warns_of_changed_arguments_and_an_ignored_init(tmp_path, capsys):
    out = str(tmp_path / "run")
    train(build_parser().parse_args(["--out", out, "--steps", "2", *TINY]))
    capsys.readouterr()
    train(build_parser().parse_args(["--out", out, "--steps", "3", *TINY]))  # the same arguments but --steps
    err = capsys.readouterr().err
    assert "--steps 2 -> 3" in err and "--lr" not in err and "--init" not in err
    weights = '{"direct": 1}'
    args = ["--out", out, "--steps", "4", "--lr", "0.001", "--weights", weights, "--init", f"{out}/final", *TINY]
    train(build_parser().parse_args(args))
    err = capsys.readouterr().err
    assert "--steps 3 -> 4" in err and "--lr 0.002 -> 0.001" in err and f"--weights None -> '{weights}'" in err
    assert f"--init {out}/final is ignored: the run resumes from {out}/train_state.pt" in err
    # the saved state records the new arguments: resuming again with them warns of nothing
    train(build_parser().parse_args([*args[: -len(TINY) - 2], *TINY]))
    assert "warning" not in capsys.readouterr().err


def test_resume_from_a_state_without_saved_arguments_still_works(tmp_path, capsys):
    out = tmp_path / "run"
    train(build_parser().parse_args(["--out", str(out), "--steps", "2", *TINY]))
    state = torch.load(out / "train_state.pt", weights_only=False)
    for key in ("args", "loss_ema", "tokens"):
        del state[key]
    torch.save(state, out / "train_state.pt")
    train(build_parser().parse_args(["--out", str(out), "--steps", "3", "--lr", "1e-3", *TINY]))
    assert "resumed" in capsys.readouterr().err
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and last["tokens"] > 0


def test_another_seed_is_refused_naming_the_field(tmp_path):
    train(build_parser().parse_args(["--out", str(tmp_path), "--steps", "1", *TINY]))
    with pytest.raises(ValueError, match=r"another model config: projection_seed \(--seed\): saved 0, got 1$"):
        train(build_parser().parse_args(["--out", str(tmp_path), "--steps", "2", "--seed", "1", *TINY]))


def test_log_after_a_resume_goes_on_like_an_uninterrupted_run(tmp_path):
    train(build_parser().parse_args(["--out", str(tmp_path / "a"), "--steps", "4", *TINY]))
    train(build_parser().parse_args(["--out", str(tmp_path / "b"), "--steps", "2", "--save-every", "2", *TINY]))
    train(build_parser().parse_args(["--out", str(tmp_path / "b"), "--steps", "4", *TINY]))
    a, b = ([json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in "ab")
    assert a[-1]["step"] == b[-1]["step"] == 4
    assert (a[-1]["tokens"], a[-1]["loss_ema"]) == (b[-1]["tokens"], b[-1]["loss_ema"])
    # resuming a finished run trains nothing and logs nothing more
    train(build_parser().parse_args(["--out", str(tmp_path / "b"), "--steps", "4", *TINY]))
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == len(b)


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--steps", "0", "expected an int >= 1, got 0"),
        ("--steps", "-3", "expected an int >= 1, got -3"),
        ("--save-every", "0", "expected an int >= 1, got 0"),
        ("--eval-every", "-1", "expected an int >= 0, got -1"),
        ("--threads", "0", "expected an int >= 1, got 0"),
        ("--weights", "[1]", "expected a JSON object mapping tasks in"),
        ("--weights", '{"direct": 0}', "numbers >= 0, not all 0, got"),
        ("--weights", '{"foo": 1}', "got '{\"foo\": 1}'"),
        ("--weights", '{"direct": -1, "scratchpad": 2}', "numbers >= 0"),
        ("--weights", "{bad", "not JSON"),
        ("--max-digits", "{bad", "not JSON"),
    ],
)
def test_bad_arguments_are_usage_errors_before_anything_is_written(tmp_path, capsys, option, value, expected):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--out", str(out), option, value, *TINY])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected " in err and expected in err
    assert not out.exists()


def test_cuda_without_a_gpu_is_refused_up_front(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    expected = "argument --device: expected cpu, or cuda with a CUDA GPU present; got 'cuda', and "
    expected += "torch.cuda.is_available() is False"
    out = tmp_path / "run"
    for argv in (["train", "--out", str(out), *TINY], ["train", "finetune", "--data", "d.jsonl", "--out", str(out)]):
        with pytest.raises(SystemExit):
            cli_main([*argv, "--device", "cuda"])
        assert expected in capsys.readouterr().err
        assert not out.exists()
    args = build_parser().parse_args(["--out", str(out), *TINY])
    args.device = "cuda"
    with pytest.raises(ValueError, match=r"--device: expected cpu, or cuda with a CUDA GPU present"):
        train(args)
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b'{"text": "a"}\n{"text": "a"}\n\n{"text": b}\n',
            r"bad\.jsonl line 4: expected a JSON object, got '\{\"text\": b\}'",
        ),
        (b"", r"bad\.jsonl: expected at least one document \(a JSON line\), got none"),
        (b"\n  \n", r"bad\.jsonl: expected at least one document"),
        (b'{"text": "a"}\n\xff\xfe{"text": "a"}\n', r"bad\.jsonl line 2: expected UTF-8 text, got byte 0xff"),
    ],
)
def test_read_documents_names_the_file_and_line_of_any_bad_input(tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=expected):
        read_documents(bad)
    with pytest.raises(SystemExit):  # the command line: a usage error naming --data
        cli_main(["train", "finetune", "--data", str(bad), "--out", str(tmp_path / "ft")])
    assert "error: --data: read_documents: " in capsys.readouterr().err


def test_batches_of_more_than_4096_documents_never_reuse_another_steps_problems(monkeypatch):
    import types

    import llmppl.models.train as train_module

    seen = []
    problem = types.SimpleNamespace(prompt="Q: 1+1\nA:", text="Q: 1+1\nA: 2\n")
    monkeypatch.setattr(train_module.T, "sample_problem", lambda *a, index, **k: seen.append(index) or problem)
    tok = ByteTokenizer()
    for step in range(3):  # 24 bytes per direct document: 5000 documents a step
        make_batch(step, seed=0, batch_tokens=24 * 5000, weights={"direct": 1}, tokenizer=tok)
    assert len(seen) == 15000 and len(set(seen)) == 15000
    seen.clear()  # up to 4096 documents the problems are those of the shipped recipe
    make_batch(7, seed=0, batch_tokens=24 * 4096, weights={"direct": 1}, tokenizer=tok)
    assert seen == [7 * 4096 + j for j in range(4096)]


def test_progress_bars_are_tqdm_auto(tmp_path, monkeypatch):
    import tqdm.auto

    made = []
    real = tqdm.auto.tqdm
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda *a, **k: made.append(k.get("desc")) or real(*a, **k))
    train(build_parser().parse_args(["--out", str(tmp_path), "--steps", "1", *TINY]))
    fine_tune(PerformerLM(PerformerConfig.tiny()), ["hi"], steps=1)
    assert made == [None, "fine-tune"]


def test_evaluation_problems_are_distinct_and_the_answerer_balanced():
    from llmppl.models import tasks as T
    from llmppl.models.train import _balanced_facts, _problems

    probs = _problems("twenty_questioner", 100, 1234)
    assert len({p.prompt for p in probs}) == len(probs) == 100
    assert len(_problems("direct", 600, 1234, digits=2)) <= 502  # the held-out 2-digit pairs
    facts = _balanced_facts(500, 1234)
    assert len({p.prompt for p in facts}) == len(facts) == 500
    assert sum(p.target == "yes" for p in facts) == sum(p.target == "yes" for p in T.held_out_facts())  # all 125
    phrasing = {(p.meta["object"], p.meta["attribute"]): p.prompt for p in T.held_out_facts()}
    assert all(phrasing[p.meta["object"], p.meta["attribute"]] == p.prompt for p in facts)
