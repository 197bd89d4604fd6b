"""Scoring and sampling throughput of the sequence tier: batching and the prefix cache.

Two measurements, each a ratio taken in one run on one machine:

1. ``score``: 1,000 candidate strings under one prompt, scored in one batched call
   (``LanguageModel.score``, the path ``LM.log_prob_batch`` takes) versus one call per
   candidate (the prompt's prefill is cached in both, so the ratio is the batching).
2. prefix cache: N draws of ``LM(prompt).sample()`` one at a time (the way a Pyro
   program run N times draws them), with the LRU prefix cache on and off. Without the
   cache every draw prefills the prompt; with it, only the first does.

Runs on a ``PerformerLM`` of the default size (random weights) when
``llmppl.models.performer`` is importable, else on a tiny random GPT-2 via
``HFCausalLM``. Example::

    python benchmarks/score.py --candidates 1000 --repeats 3 --samples 32
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch

from llmppl.distributions import LM


def build_model(kind: str):
    if kind in ("auto", "performer"):
        try:
            from llmppl.models.performer import PerformerConfig, PerformerLM
        except ImportError:
            if kind == "performer":
                raise
        else:
            torch.manual_seed(0)
            return "PerformerLM (default config, random weights)", PerformerLM(PerformerConfig()).eval()
    import transformers

    from llmppl.models import ByteTokenizer, HFCausalLM

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=259, n_positions=4096, n_embd=256, n_layer=4, n_head=8, bos_token_id=256, eos_token_id=257
    )
    return "HF GPT-2 (4x256, random weights)", HFCausalLM(transformers.GPT2LMHeadModel(config), ByteTokenizer())


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["auto", "performer", "gpt2"], default="auto")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the batched call (median)")
    parser.add_argument(
        "--one-by-one", type=int, default=0, help="score only this many candidates one at a time and scale up (0: all)"
    )
    parser.add_argument("--samples", type=int, default=32, help="sequential draws for the prefix-cache row")
    parser.add_argument("--prompt-chars", type=int, default=2000, help="prompt length for the prefix-cache row")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    name, lm = build_model(args.model)
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz 0123456789"
    prompt = "Q: name a word that rhymes with cat.\nA:"
    candidates = ["".join(rng.choice(alphabet) for _ in range(rng.randint(4, 16))) for _ in range(args.candidates)]
    kw = dict(max_tokens=32, stop="\n")

    lm.score(prompt, candidates[:8], **kw)  # warm-up; the prompt's prefill is now cached
    batched_times = []
    for _ in range(args.repeats):
        t, batched = timed(lambda: lm.score(prompt, candidates, **kw))
        batched_times.append(t)
    one_times = []

    singles = candidates[: args.one_by_one] if args.one_by_one else candidates

    def one_by_one():
        out = []
        for c in singles:
            t0 = time.perf_counter()
            out.append(lm.score(prompt, [c], **kw))
            one_times.append(time.perf_counter() - t0)
        return torch.cat(out)

    t_one, single = timed(one_by_one)
    lm.clear_prefix_cache()
    t_dist, via_lm = timed(lambda: LM(prompt, model=lm, **kw).log_prob_batch(candidates))
    max_diff = float((batched[: len(singles)] - single).abs().max())
    t_one *= len(candidates) / len(singles)  # the loop's cost is linear in the number of candidates
    t_batched = statistics.median(batched_times)

    long_prompt = "".join(rng.choice(alphabet) for _ in range(args.prompt_chars))
    draw_kw = dict(max_tokens=8, stop="\n")

    def draws():
        torch.manual_seed(1)
        return [LM(long_prompt, model=lm, **draw_kw).sample() for _ in range(args.samples)]

    lm.clear_prefix_cache()
    lm.prefix_cache_size = 0
    t_nocache, a = timed(draws)
    lm.prefix_cache_size = 16
    lm.clear_prefix_cache()
    t_cache, b = timed(draws)
    assert a == b, "the cache must not change what is sampled"

    n = args.candidates
    print(f"model: {name}; torch threads: {torch.get_num_threads()}; {platform.processor() or platform.machine()}")
    print(f"score: {n} candidates (4-16 chars) under one prompt, max_tokens=32, stop='\\n'")
    print(f"| {'path':<44} | {'seconds':>8} | {'per candidate ms':>16} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 18}|")
    label = (
        "one call per candidate (total)"
        if len(singles) == n
        else f"one call per candidate ({len(singles)} timed, x{n / len(singles):g})"
    )
    print(f"| {label:<44} | {t_one:8.2f} | {1000 * statistics.median(one_times):16.2f} |")
    print(f"| {f'one batched call (median of {args.repeats})':<44} | {t_batched:8.2f} | {1000 * t_batched / n:16.3f} |")
    t_min = min(batched_times)
    print(f"| {f'one batched call (min of {args.repeats})':<44} | {t_min:8.2f} | {1000 * t_min / n:16.3f} |")
    print(f"| {'LM.log_prob_batch (cold: prefill included)':<44} | {t_dist:8.2f} | {1000 * t_dist / n:16.3f} |")
    print(
        f"batched speed-up: {t_one / t_batched:.1f}x with the median, {t_one / t_min:.1f}x with the min "
        f"(max |batched - one-by-one| = {max_diff:.2e})"
    )
    print()
    print(
        f"prefix cache: {args.samples} sequential LM(prompt).sample() draws, "
        f"prompt {args.prompt_chars} chars, max_tokens=8"
    )
    print(f"| {'prefix cache':<44} | {'seconds':>8} | {'per draw ms':>16} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 18}|")
    print(f"| {'off (prefix_cache_size=0)':<44} | {t_nocache:8.2f} | {1000 * t_nocache / args.samples:16.1f} |")
    print(f"| {'on (default, 16 entries)':<44} | {t_cache:8.2f} | {1000 * t_cache / args.samples:16.1f} |")
    print(f"prefix-cache speed-up: {t_nocache / t_cache:.1f}x")
    del via_lm


if __name__ == "__main__":
    main()
