"""Does the attention learn to copy digits? FAVOR+ vs exact softmax on the same small model.

The shipped Performer writes well-formed scratchpads with correct sums of the digits it
picks, but picks the wrong digits of the operands (see BENCHMARKS.md). This probe trains
small copies of the same architecture on scratchpad additions of at most 3 digits, with
the attention swapped, and reports after each stage:

* ``digit_acc``: the fraction of the work's digits predicted right under teacher forcing
  (a digit is copied or computed from copied digits);
* ``exact``: greedy scratchpad-then-answer exact match on held-out problems.

Variants: ``favor`` (FAVOR+ with ``M`` random features, the shipped design),
``favor256`` (``M = 256``), ``softmax`` (exact causal softmax attention on the same
rotary queries and keys, the issue's feasibility baseline). Same data, seed, steps.

    python benchmarks/copy_probe.py --steps 1500 --variants favor softmax
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from llmppl.models import tasks as T
from llmppl.models.performer import PerformerBlock, PerformerConfig, PerformerLM
from llmppl.models.train import _weighted_loss, make_batch


def softmax_forward(self, x, cos, sin, key_mask=None):
    """PerformerBlock.forward with exact causal softmax attention (training and scoring only)."""
    B, L, C = x.shape
    q, k, v = self._qkv(x, cos, sin)
    att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    h = x + self.out(att.transpose(1, 2).reshape(B, L, C))
    return self._mlp(h), None


def train_step(lm: PerformerLM, opt: torch.optim.Optimizer, ids, weight, lr: float) -> torch.Tensor:
    """One optimiser step at learning rate ``lr`` on training's weighted loss, gradients clipped at 1."""
    for g in opt.param_groups:
        g["lr"] = lr
    loss = _weighted_loss(lm, ids, weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
    opt.step()
    return loss


def train_probe(
    lm: PerformerLM, *, steps: int, lr: float, weight_decay: float, eval_every: int, next_batch, measure, label: str
) -> list[dict]:
    """Train ``lm`` from a fresh AdamW for ``steps`` steps, warming up linearly over 100.

    ``next_batch(step) -> (ids, weights)`` gives each batch; every ``eval_every`` steps and
    at the end, ``measure() -> dict`` adds a row ``{"step", "loss", **measure(), "seconds"}``,
    printed as it comes. Returns the rows.
    """
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    t0, rows = time.perf_counter(), []
    for step in range(1, steps + 1):
        lm.train()
        ids, w = next_batch(step)
        loss = train_step(lm, opt, ids, w, lr * min(1.0, step / 100))
        if step % eval_every == 0 or step == steps:
            row = {"step": step, "loss": round(loss.item(), 4), **measure(), "seconds": round(time.perf_counter() - t0)}
            rows.append(row)
            print(f"{label:9s} {json.dumps(row)}", flush=True)
    return rows


def build(variant: str, args) -> PerformerLM:
    m = 256 if variant == "favor256" else args.num_features
    cfg = PerformerConfig(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, num_features=m)
    torch.manual_seed(args.seed)
    lm = PerformerLM(cfg)
    if variant == "softmax":
        for blk in lm.blocks:
            blk.forward = softmax_forward.__get__(blk, PerformerBlock)
    return lm


@torch.no_grad()
def greedy_full(lm: PerformerLM, prompts: list[str], max_tokens: int, stop: str = "\n") -> list[str]:
    """Greedy decoding by re-running the whole sequence (works for every variant)."""
    tok = lm.tokenizer
    seqs = [lm.encode_prompt(p) for p in prompts]
    out = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max_tokens):
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), tok.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        logits = lm(ids)
        for i, s in enumerate(seqs):
            if done[i]:
                continue
            t = int(logits[i, len(s) - 1, :256].argmax())
            s.append(t)
            out[i].append(t)
            if tok.decode(out[i]).endswith(stop):
                done[i] = True
        if all(done):
            break
    return [tok.decode(o).split(stop)[0] for o in out]


@torch.no_grad()
def measure(lm: PerformerLM, n: int, digits: int) -> dict:
    lm.eval()
    probs = [T.sample_problem("scratchpad", split="test", seed=99, index=i, digits=digits) for i in range(n)]
    # teacher-forced digit accuracy on the work line
    right = total = 0
    tok = lm.tokenizer
    for p in probs:
        ids = torch.tensor([lm.encode_prompt(p.text)])
        pred = lm(ids)[0, :-1].argmax(-1)
        start = len(lm.encode_prompt(p.prompt))
        work_end = start + len(tok.encode(p.text[len(p.prompt) :].split("\n")[0]))
        for j in range(start, work_end):
            target = int(ids[0, j])
            if chr(target).isdigit() if target < 128 else False:
                total += 1
                right += int(pred[j - 1]) == target
    works = greedy_full(lm, [p.prompt for p in probs], 14 * digits + 8)
    answers = greedy_full(lm, [f"{p.prompt}{w}\nA:" for p, w in zip(probs, works, strict=True)], digits + 4)
    exact = sum(a.strip() == p.target for a, p in zip(answers, probs, strict=True)) / n
    lm.train()
    return {"digit_acc": right / max(total, 1), "exact": exact}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["favor", "softmax"], choices=["favor", "favor256", "softmax"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-n", type=int, default=64)
    parser.add_argument("--digits", type=int, default=3, help="largest training operand")
    parser.add_argument("--eval-digits", type=int, default=3, help="operand length of the held-out problems")
    parser.add_argument("--batch-tokens", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--d-model", type=int, default=96)
    parser.add_argument("--n-layers", type=int, default=3)
    parser.add_argument("--n-heads", type=int, default=3)
    parser.add_argument("--num-features", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for variant in args.variants:
        lm = build(variant, args)

        def next_batch(step, lm=lm):
            ids, w, _ = make_batch(
                step,
                seed=args.seed,
                batch_tokens=args.batch_tokens,
                weights={"scratchpad": 1.0},
                tokenizer=lm.tokenizer,
                max_digits={"scratchpad": args.digits},
            )
            return ids, w

        results[variant] = train_probe(
            lm,
            steps=args.steps,
            lr=args.lr,
            weight_decay=0.05,
            eval_every=args.eval_every,
            next_batch=next_batch,
            measure=lambda lm=lm: measure(lm, args.eval_n, args.eval_digits),
            label=variant,
        )
    print("\n| variant | steps | teacher-forced digit accuracy | greedy exact match |")
    print("|---|---|---|---|")
    for variant, rows in results.items():
        r = rows[-1]
        print(f"| {variant} | {r['step']} | {100 * r['digit_acc']:.1f}% | {100 * r['exact']:.1f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
