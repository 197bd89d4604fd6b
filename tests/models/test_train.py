"""Training: a tiny run learns, checkpoints resume deterministically, the CLI forwards."""

import json

import torch

from llmppl.cli import main as cli_main
from llmppl.models import PerformerConfig, PerformerLM
from llmppl.models.tokenizer import ByteTokenizer
from llmppl.models.train import build_parser, evaluate, make_batch, train

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
