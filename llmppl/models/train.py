"""Train a :class:`~llmppl.models.performer.PerformerLM` on the task mixture of :mod:`llmppl.models.tasks`.

``python -m llmppl.models.train --out runs/performer --steps 4000`` (also ``llmppl train``).
CPU by default (``--device cuda`` when present); a tqdm progress bar; a held-out
evaluation every ``--eval-every`` steps; a resumable checkpoint (``train_state.pt``,
weights, optimiser, step) every ``--save-every`` steps, resumed automatically from
``--out``; the batches are a pure function of ``--seed`` and the step, so a run resumed
from a checkpoint sees the same data as an uninterrupted one.

>>> args = build_parser().parse_args(["--out", "x", "--steps", "10"])
>>> args.steps, args.seed
(10, 0)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import torch

from . import tasks as T
from .performer import PerformerConfig, PerformerLM

__all__ = ["build_parser", "evaluate", "main", "make_batch", "train"]

# typical document lengths in bytes, for sizing batches by tokens
_TYPICAL_LENGTH = {
    "direct": 24,
    "scratchpad": 90,
    "verifier": 100,
    "calculator": 90,
    "selection_inference": 260,
    "twenty_answerer": 48,
    "twenty_questioner": 206,
}
PROMPT_WEIGHT = 0.1  # loss weight of prompt tokens (random operands, facts: mostly noise)
TARGET_WEIGHT = {"verifier": 3.0}  # loss weight of the completion; default 1


def make_batch(step: int, *, seed: int, batch_tokens: int, weights: dict[str, float], tokenizer, max_len: int = 512):
    """The training batch of ``step``: documents of one task, padded, with loss weights.

    A pure function of ``(step, seed)``: resuming replays the same data.

    :returns: ``(ids LongTensor[B, L], weights Tensor[B, L], task)``.

    >>> from llmppl.models.tokenizer import ByteTokenizer
    >>> ids, w, task = make_batch(0, seed=0, batch_tokens=256, weights={"direct": 1.0}, tokenizer=ByteTokenizer())
    >>> ids.shape[0] == w.shape[0] and task
    'direct'
    """
    rng = random.Random(f"batch:{seed}:{step}")
    tasks, w = list(weights), list(weights.values())
    task = rng.choices(tasks, w)[0]
    n = max(1, batch_tokens // _TYPICAL_LENGTH.get(task, 100))
    docs, wts = [], []
    for j in range(n):
        p = T.sample_problem(task, split="train", seed=seed, index=step * 4096 + j)
        prompt = [tokenizer.bos_id, *tokenizer.encode(p.prompt)]
        rest = [*tokenizer.encode(p.text[len(p.prompt) :]), tokenizer.eos_id]
        ids = (prompt + rest)[:max_len]
        wt = ([PROMPT_WEIGHT] * len(prompt) + [TARGET_WEIGHT.get(task, 1.0)] * len(rest))[:max_len]
        docs.append(ids)
        wts.append(wt)
    L = max(len(d) for d in docs)
    ids = torch.full((n, L), tokenizer.pad_id, dtype=torch.long)
    weight = torch.zeros(n, L)
    for i, (d, wt) in enumerate(zip(docs, wts, strict=True)):
        ids[i, : len(d)] = torch.tensor(d)
        weight[i, : len(wt)] = torch.tensor(wt)
    return ids, weight, task


def _weighted_loss(model: PerformerLM, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="none"
    )
    w = weight[:, 1:].reshape(-1)
    return (ce * w).sum() / w.sum().clamp_min(1e-6)


# ------------------------------------------------------------------ evaluation


def _greedy(model, prompts, max_tokens, batch=64):
    out = []
    for i in range(0, len(prompts), batch):
        out += model.generate(prompts[i : i + batch], max_tokens=max_tokens, stop="\n")
    return out


def _problems(task, n, seed, **kw):
    return [T.sample_problem(task, split="test", seed=seed, index=i, **kw) for i in range(n)]


def evaluate(model: PerformerLM, metric: str, n: int = 100, *, seed: int = 1234, batch: int = 64) -> float:
    """Greedy held-out accuracy of one metric on ``n`` problems.

    Metrics: ``scratchpad_<d>`` and ``direct_<d>`` (``d`` digits per operand; the
    scratchpad runs as the two-step cascade: work up to the newline, then the answer),
    ``verifier``, ``calculator_call`` (well-formed call exactly as expected),
    ``calculator_answer`` (answer given the tool's result), ``si_step`` (single
    Select/Infer steps valid, from gold prefixes), ``si_answer``, ``twenty_answerer``,
    ``twenty_questioner`` (the policy's next question or guess).

    >>> lm = PerformerLM(PerformerConfig.tiny())
    >>> 0.0 <= evaluate(lm, "direct_2", n=2) <= 1.0
    True
    """
    model.eval()
    kind, _, arg = metric.partition("_")
    if kind in ("scratchpad", "direct") and arg.isdigit():
        d = int(arg)
        probs = _problems(kind, n, seed, digits=d)
        if kind == "direct":
            answers = _greedy(model, [p.prompt for p in probs], d + 4, batch)
        else:
            works = _greedy(model, [p.prompt for p in probs], 14 * d + 8, batch)
            answers = _greedy(model, [f"{p.prompt}{w}\nA:" for p, w in zip(probs, works, strict=True)], d + 4, batch)
        return sum(a.strip() == p.target for a, p in zip(answers, probs, strict=True)) / n
    if metric in ("verifier", "twenty_answerer", "si_answer"):
        task = {"si_answer": "selection_inference"}.get(metric, metric)
        probs = _problems(task, n, seed)
        prompts = [p.prompt + ("A:" if task == "selection_inference" else "") for p in probs]
        if task == "selection_inference":  # the answer after the gold steps
            prompts = [p.text[: p.text.rindex("A:") + 2] for p in probs]
        answers = _greedy(model, prompts, 6, batch)
        return sum(a.strip() == p.target for a, p in zip(answers, probs, strict=True)) / n
    if metric == "calculator_call":
        probs = _problems("calculator", n, seed)
        calls = _greedy(model, [p.prompt for p in probs], 40, batch)
        return sum(c.strip() == p.target for c, p in zip(calls, probs, strict=True)) / n
    if metric == "calculator_answer":
        probs = _problems("calculator", n, seed)
        prompts = [p.text[: p.text.rindex("A:") + 2] for p in probs]
        answers = _greedy(model, prompts, 16, batch)
        return sum(a.strip() == p.meta["result"] for a, p in zip(answers, probs, strict=True)) / n
    if metric == "twenty_questioner":
        probs = _problems("twenty_questioner", n, seed)
        moves = _greedy(model, [p.prompt for p in probs], 40, batch)
        return sum(m.strip() == p.target for m, p in zip(moves, probs, strict=True)) / n
    if metric == "si_step":
        cases = []  # (problem, known, prompt)
        i = 0
        while len(cases) < n:
            p = T.sample_problem("selection_inference", split="test", seed=seed, index=i)
            i += 1
            steps = p.meta["steps"]
            if not steps:
                continue
            j = random.Random(f"si_step:{seed}:{i}").randrange(len(steps))
            person = p.meta["person"]
            known = [f"{a} is {b}." for a, b in p.meta["facts"]] + [f"{person} is {s[2]}." for s in steps[:j]]
            prefix = p.prompt + "".join(
                f"Select: {' '.join([*sel, rule])}\nInfer: {person} is {new}.\n" for sel, rule, new in steps[:j]
            )
            cases.append((p, known, prefix + "Select:"))
        sels = _greedy(model, [c[2] for c in cases], 120, batch)
        infs = _greedy(model, [f"{c[2]}{s}\nInfer:" for c, s in zip(cases, sels, strict=True)], 40, batch)
        return sum(T.check_selection_step(c[0], c[1], s, f) for c, s, f in zip(cases, sels, infs, strict=True)) / n
    raise ValueError(f"evaluate: unknown metric {metric!r}")


QUICK_METRICS = (
    "scratchpad_3",
    "scratchpad_5",
    "direct_2",
    "verifier",
    "calculator_call",
    "si_step",
    "twenty_answerer",
)


# ------------------------------------------------------------------ training


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m llmppl.models.train``."""
    p = argparse.ArgumentParser(prog="llmppl train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="run folder: checkpoints, log, final weights")
    p.add_argument("--steps", type=int, default=4000, help="optimiser steps (cosine schedule length)")
    p.add_argument("--batch-tokens", type=int, default=3072, help="tokens per batch (approximate)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--d-model", type=int, default=192)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=6)
    p.add_argument("--num-features", type=int, default=64)
    p.add_argument("--mlp-ratio", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=500, help="steps between held-out evaluations (0: never)")
    p.add_argument("--eval-n", type=int, default=48, help="held-out problems per metric at each evaluation")
    p.add_argument("--save-every", type=int, default=200, help="steps between resumable checkpoints")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", default=None, help="task mixture as JSON, e.g. '{\"scratchpad\": 1}'")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines only)")
    return p


def _lr(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _log(out: str, record: dict) -> None:
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def train(args) -> PerformerLM:
    """Run (or resume) training as configured by ``args`` (from :func:`build_parser`).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     a = build_parser().parse_args(["--out", d, "--steps", "2", "--d-model", "16", "--n-heads", "2",
    ...         "--n-layers", "1", "--num-features", "8", "--batch-tokens", "64", "--eval-every", "0", "--no-progress"])
    ...     train(a).config.d_model
    16
    """
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    weights = json.loads(args.weights) if args.weights else dict(T.DEFAULT_WEIGHTS)
    config = PerformerConfig(
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        num_features=args.num_features,
        mlp_ratio=args.mlp_ratio,
        projection_seed=args.seed,
    )
    model = PerformerLM(config).to(args.device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    ckpt_path = os.path.join(args.out, "train_state.pt")
    step, elapsed = 0, 0.0
    if os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location=args.device, weights_only=False)
        if ckpt["config"] != config.to_dict():
            raise ValueError(
                f"train: --out {args.out} holds a run with config {ckpt['config']}, got {config.to_dict()}"
            )
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed = ckpt["step"], ckpt.get("elapsed", 0.0)
        print(f"resumed from {ckpt_path} at step {step}", file=sys.stderr)
    tok = model.tokenizer
    meta = {"command": " ".join(sys.argv), "args": vars(args), "params": model.num_parameters()}

    def save():
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "config": config.to_dict(),
                "elapsed": elapsed,
            },
            ckpt_path + ".tmp",
        )
        os.replace(ckpt_path + ".tmp", ckpt_path)
        model.save_pretrained(
            os.path.join(args.out, "final"), extra={"training": {**meta, "step": step, "train_seconds": round(elapsed)}}
        )

    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, dynamic_ncols=True)
    ema, tokens = None, 0
    t_last = time.time()
    while step < args.steps:
        model.train()
        ids, w, task = make_batch(step, seed=args.seed, batch_tokens=args.batch_tokens, weights=weights, tokenizer=tok)
        ids, w = ids.to(args.device), w.to(args.device)
        for g in opt.param_groups:
            g["lr"] = _lr(step, args)
        loss = _weighted_loss(model, ids, w)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train: non-finite loss at step {step} (task {task})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += ids.numel()
        now = time.time()
        elapsed += now - t_last
        t_last = now
        lv = loss.item()
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}", task=task[:10])
        if step % 50 == 0:
            _log(
                args.out,
                {
                    "step": step,
                    "loss_ema": round(ema, 4),
                    "lr": _lr(step, args),
                    "elapsed": round(elapsed, 1),
                    "tokens": tokens,
                },
            )
        if step % args.save_every == 0 or step == args.steps:
            save()
        if args.eval_every and (step % args.eval_every == 0 or step == args.steps):
            t0 = time.time()
            scores = {m: evaluate(model, m, args.eval_n) for m in QUICK_METRICS}
            _log(args.out, {"step": step, "eval": scores, "eval_seconds": round(time.time() - t0, 1)})
            bar.write(f"step {step} eval: " + " ".join(f"{k}={v:.2f}" for k, v in scores.items()))
            t_last = time.time()  # evaluation time is not training time
    bar.close()
    save()
    return model


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m llmppl.models.train`` and ``llmppl train``."""
    train(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
