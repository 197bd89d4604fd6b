"""Decoding and training speed: the Performer LM vs a same-size softmax transformer, in one run.

The softmax model is a randomly initialised ``transformers`` GPT-2 with the same
layers, width and heads, decoding with its KV cache (``DynamicCache``). Rows:

1. per-token decoding cost at context position 4096 vs 64, batch 1 (real prefill):
   the Performer's ratio should be flat (<= 1.2); the softmax model's grows;
2. decoding throughput (tokens/s) with 1, 64 and 256 sequences at context 2048.
   A step's cost depends only on shapes, so the caches are filled with random keys and
   values of the right size (the GPT-2 cache holds 2048 positions per sequence; the
   Performer state is its fixed-size sums) rather than prefilling 256x2048 tokens;
3. training throughput (tokens/s, forward + backward + AdamW step).

Every figure is the median of ``--repeats`` timings, and both models run in the
same process, one after the other, so the ratios compare like with like.

    python benchmarks/decode.py            # the full table
    python benchmarks/decode.py --quick    # small sizes, a smoke test
    python benchmarks/decode.py --device cuda   # on a GPU (TF32 off: float32 both)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llmppl.models import PerformerConfig, PerformerLM
from llmppl.ops import FavorState

DEVICE = torch.device("cpu")  # set by --device


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _gpt2(cfg: PerformerConfig, n_positions: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    g = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=n_positions,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.mlp_ratio * cfg.d_model,
        attn_implementation="sdpa",
        bos_token_id=256,
        eos_token_id=257,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(g).eval().to(DEVICE)


def _gpt2_cache(model, batch: int, ctx: int):
    from transformers import DynamicCache

    c = model.config
    cache = DynamicCache(config=c)
    hd = c.n_embd // c.n_head
    for layer in range(c.n_layer):
        k = torch.randn(batch, c.n_head, ctx, hd, device=DEVICE)
        cache.update(k, torch.randn_like(k), layer)
    return cache


def _gpt2_step(model, cache, batch: int, ctx: int):
    ids = torch.randint(0, 256, (batch, 1), device=DEVICE)
    mask = torch.ones(batch, ctx + 1, dtype=torch.long, device=DEVICE)
    pos = torch.full((batch, 1), ctx, dtype=torch.long, device=DEVICE)

    def step():
        with torch.no_grad():
            out = model(input_ids=ids, cache=cache, attention_mask=mask, position_ids=pos, use_cache=True)
        out.logits.log_softmax(-1)
        cache.crop(-1)  # drop the new position: the context stays fixed across repeats

    return step


def _performer_state(lm: PerformerLM, batch: int, ctx: int):
    """A state of ``batch`` sequences at position ``ctx`` with random (valid) sums."""
    c = lm.config
    st = lm.prefill([lm.encode_prompt("warm")] * batch)
    st.layers = [
        FavorState(
            torch.rand(batch, c.n_heads, c.num_features, c.head_dim, device=DEVICE),
            torch.rand(batch, c.n_heads, c.num_features, device=DEVICE) + 1.0,
            torch.zeros(batch, c.n_heads, device=DEVICE),
        )
        for _ in range(c.n_layers)
    ]
    st.positions = torch.full((batch,), ctx, dtype=torch.long, device=DEVICE)
    return st


def _performer_step(lm, state, batch):
    tokens = torch.randint(0, 256, (batch,), device=DEVICE)
    return lambda: lm.advance(state, tokens)


def context_rows(lm, gpt, contexts, repeats):
    """Per-token cost at each context for batch 1, from a real prefill."""
    rows = {}
    for ctx in contexts:
        ids = torch.randint(0, 256, (1, ctx))
        st = lm.prefill([[256, *ids[0, 1:].tolist()]])
        t_perf = _median_time(_performer_step(lm, st, 1), repeats)
        with torch.no_grad():
            out = gpt(input_ids=ids.to(DEVICE), use_cache=True)
        t_gpt = _median_time(_gpt2_step(gpt, out.cache, 1, ctx), repeats)
        rows[ctx] = (t_perf, t_gpt)
    return rows


def throughput_rows(lm, gpt, batches, ctx, repeats):
    rows = {}
    for b in batches:
        t_perf = _median_time(_performer_step(lm, _performer_state(lm, b, ctx), b), repeats)
        cache = _gpt2_cache(gpt, b, ctx)
        t_gpt = _median_time(_gpt2_step(gpt, cache, b, ctx), repeats)
        del cache
        rows[b] = (b / t_perf, b / t_gpt)
    return rows


def training_rows(lm, gpt, batch, seq, repeats):
    ids = torch.randint(0, 256, (batch, seq), device=DEVICE)

    perf_opt = torch.optim.AdamW(lm.parameters(), 1e-4)
    gpt_opt = torch.optim.AdamW(gpt.parameters(), 1e-4)

    def perf_step():
        perf_opt.zero_grad()
        lm.loss(ids).backward()
        perf_opt.step()

    def gpt_step():
        gpt_opt.zero_grad()
        gpt(input_ids=ids, labels=ids).loss.backward()
        gpt_opt.step()

    lm.train()
    gpt.train()
    try:
        return ids.numel() / _median_time(perf_step, repeats), ids.numel() / _median_time(gpt_step, repeats)
    finally:
        lm.eval()
        gpt.eval()


def _device_name() -> str:
    return torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    p.add_argument("--pretrained", action="store_true", help="time the shipped checkpoint (same speed as random)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both models run")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.pretrained:
        from llmppl.models import load_pretrained

        lm = load_pretrained(device=DEVICE)
    else:
        lm = PerformerLM(PerformerConfig()).eval().to(DEVICE)
    cfg = lm.config
    contexts, ctx, batches = ((16, 64), 64, (1, 4)) if args.quick else ((64, 4096), 2048, (1, 64, 256))
    train_shape = (2, 32) if args.quick else (16, 256)
    if DEVICE.type == "cuda" and not args.quick:  # a GPU has room for far more sequences
        batches, train_shape = (1, 64, 256, 1024), (64, 512)
    gpt = _gpt2(cfg, n_positions=max(*contexts, ctx) + 16)
    n_perf = lm.num_parameters()
    n_gpt = sum(q.numel() for q in gpt.parameters())
    print(
        f"# Performer {cfg.n_layers}x{cfg.d_model} ({cfg.n_heads} heads, M={cfg.num_features}) "
        f"{n_perf / 1e6:.2f}M params;"
        f" GPT-2 same layers/width {n_gpt / 1e6:.2f}M params; torch threads={args.threads}; "
        f"median of {args.repeats}; device {_device_name()}"
    )
    print(
        f"# Performer state per sequence: {_performer_state(lm, 1, ctx).nbytes_per_sequence() / 1024:.1f} KiB;"
        f" GPT-2 KV cache per sequence at {ctx}: {2 * cfg.n_layers * ctx * cfg.d_model * 4 / 1024:.0f} KiB"
    )

    rows = context_rows(lm, gpt, contexts, args.repeats)
    lo, hi = contexts
    print("\n## per-token decoding cost, batch 1 (ms)\n| context | Performer | GPT-2 (KV cache) |\n|---|---|---|")
    for c, (a, b) in rows.items():
        print(f"| {c} | {a * 1e3:.2f} | {b * 1e3:.2f} |")
    print(f"| ratio {hi}/{lo} | {rows[hi][0] / rows[lo][0]:.2f} | {rows[hi][1] / rows[lo][1]:.2f} |")

    rows = throughput_rows(lm, gpt, batches, ctx, args.repeats)
    print(f"\n## decoding throughput at context {ctx} (tokens/s)\n| sequences | Performer | GPT-2 (KV cache) | ratio |")
    print("|---|---|---|---|")
    for b, (a, g) in rows.items():
        print(f"| {b} | {a:,.0f} | {g:,.0f} | {a / g:.2f}x |")

    a, g = training_rows(lm, gpt, *train_shape, repeats=max(3, args.repeats // 2))
    print(
        f"\n## training throughput, batch {train_shape[0]}x{train_shape[1]} (tokens/s)\n"
        f"| Performer | GPT-2 | ratio |\n|---|---|---|\n| {a:,.0f} | {g:,.0f} | {a / g:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
