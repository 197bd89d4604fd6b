"""Sequence-tier sampling cost per step for short and long completions (``LanguageModel.sample``).

The Performer's decoding step costs the same at every position; this checks that the
Python around it does too: stop strings are looked for in the last tokens only
(``llmppl.models.base.stop_in_prefix``), not by decoding the whole completion every step.
A tiny random Performer, EOS banned so that every completion runs to ``max_tokens``, a
stop string that never occurs; median of ``--repeats`` runs.

    OMP_NUM_THREADS=1 python benchmarks/long_sample.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llmppl.models import PerformerConfig, PerformerLM


def ms_per_step(lm: PerformerLM, batch: int, steps: int, repeats: int) -> float:
    times = []
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        start = time.perf_counter()
        cs = lm.sample(["x"] * batch, max_tokens=steps, stop="\x00\x01\x02", generator=g)
        times.append(time.perf_counter() - start)
        assert all(len(c.tokens) == steps for c in cs)
    return 1000 * statistics.median(times) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--short", type=int, default=256)
    p.add_argument("--long", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    lm = PerformerLM(PerformerConfig.tiny()).eval()
    lm.continuation_cache_rows = 0
    eos = lm.tokenizer.eos_id
    lm.banned_token_ids = lambda: [*PerformerLM.banned_token_ids(lm), eos]
    short = ms_per_step(lm, args.batch, args.short, args.repeats)
    long = ms_per_step(lm, args.batch, args.long, args.repeats)
    print(f"{args.batch} sequences, ms per decoding step (median of {args.repeats})")
    print(f"  {args.short:>5} tokens: {short:6.2f}")
    print(f"  {args.long:>5} tokens: {long:6.2f}   ratio {long / short:.2f} (flat: ~1)")


if __name__ == "__main__":
    main()
