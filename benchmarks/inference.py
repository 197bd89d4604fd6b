"""Benchmark of the batched replay engine, side by side in one run.

(a) ``llmppl.infer.Importance`` with N particles vs ``pyro.infer.Importance`` with N
    samples (one execution, so one batch-of-1 generation per site, at a time) on the
    two-site scratchpad cascade of DESIGN.md; goal: >= 8x faster at N = 256;
(b) ``SMC`` with 1,024 particles on the same cascade plus a length factor
    (``-0.5`` per character of the scratchpad, so it resamples): it finishes, and its time;
(c) at N = 256, the fraction of Importance's time spent outside model computation
    (re-execution and bookkeeping; everything but ``LanguageModel`` calls); goal <= 20%.

The model is ``llmppl.load_pretrained()`` when a checkpoint is shipped, else a randomly
initialised ``PerformerLM`` of the shipped size, else ``ToyLM``; the output says which.
Times are process CPU time (with one torch thread, the work done) as well as wall
time: on a shared machine other jobs inflate wall time but not CPU time. The model's
own batching gain (one batch of N samples vs N batch-of-1 samples) is printed too: it
bounds what any engine can gain by batching.

    python benchmarks/inference.py                 # the full run
    python benchmarks/inference.py --quick         # a smoke run (small sizes)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pyro
import torch

from llmppl.distributions import LM
from llmppl.inference import SMC, Importance

GOALS = {"speedup_256": 8.0, "overhead_256": 0.20}


def load_model():
    try:
        from llmppl.models.pretrained import load_pretrained

        return load_pretrained(), "llmppl.load_pretrained() (shipped Performer checkpoint)"
    except Exception as err:  # no checkpoint shipped yet
        reason = f"{type(err).__name__}: {str(err)[:80]}"
    try:
        from llmppl.models.performer import PerformerConfig, PerformerLM

        torch.manual_seed(0)
        lm = PerformerLM(PerformerConfig()).eval()
        return lm, f"randomly initialised PerformerLM (shipped size; no checkpoint: {reason})"
    except Exception as err:
        from llmppl.models import ToyLM

        return ToyLM(alphabet="0123456789+:AQWork \n"), f"ToyLM (PerformerLM unavailable: {type(err).__name__})"


def make_cascade(lm, work_tokens: int, answer_tokens: int, length_factor: float = 0.0):
    def scratchpad(question):
        work = pyro.sample("work", LM(f"Q: {question}\nWork:", model=lm, stop="\n", max_tokens=work_tokens))
        if length_factor:
            pyro.factor("concise", torch.tensor(-length_factor * len(work)))
        return pyro.sample(
            "answer", LM(f"Q: {question}\nWork:{work}\nA:", model=lm, stop="\n", max_tokens=answer_tokens)
        )

    return scratchpad


def time_it(fn):
    """(wall seconds, process CPU seconds, result): CPU time is robust to other jobs pausing this one."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=256)
    parser.add_argument("--smc-particles", type=int, default=1024)
    parser.add_argument("--work-tokens", type=int, default=8)
    parser.add_argument("--answer-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = work done)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.particles, args.smc_particles, args.work_tokens, args.answer_tokens = 16, 32, 6, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    lm, which = load_model()
    question = "123+456"
    cascade = make_cascade(lm, args.work_tokens, args.answer_tokens)
    n = args.particles
    print(f"model: {which}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"cascade: work ≤ {args.work_tokens} tokens, answer ≤ {args.answer_tokens} tokens, stop '\\n'")

    with torch.inference_mode():
        pyro.set_rng_seed(0)
        Importance(cascade, num_samples=4, progress=False).run(question)  # warm-up (prefix cache, allocator)

        pyro.set_rng_seed(0)
        ours = Importance(cascade, num_samples=n, progress=False)
        t_ours, c_ours, post = time_it(lambda: ours.run(question))
        engine = ours.engine
        print(f"llmppl Importance: {t_ours:.2f} s wall, {c_ours:.2f} s CPU", flush=True)

        # the same run without resuming the second site from the first one's states
        kept = lm.continuation_cache_rows
        lm.continuation_cache_rows = 0
        lm.clear_prefix_cache()
        pyro.set_rng_seed(0)
        t_nocont, c_nocont, _ = time_it(lambda: Importance(cascade, num_samples=n, progress=False).run(question))
        lm.continuation_cache_rows = kept
        print(f"llmppl Importance, continuation cache off: {t_nocont:.2f} s wall, {c_nocont:.2f} s CPU", flush=True)

        pyro.set_rng_seed(0)
        baseline = pyro.infer.Importance(cascade, num_samples=n)
        t_pyro, c_pyro, _ = time_it(lambda: baseline.run(question))
        print(f"pyro.infer.Importance: {t_pyro:.2f} s wall, {c_pyro:.2f} s CPU", flush=True)

        pyro.set_rng_seed(0)
        concise = make_cascade(lm, args.work_tokens, args.answer_tokens, 0.5)
        smc = SMC(concise, num_particles=args.smc_particles, progress=False)
        t_smc, c_smc, smc_post = time_it(lambda: smc.run(question))
        print(f"SMC: {t_smc:.2f} s wall, {c_smc:.2f} s CPU", flush=True)

        # the model's own batching gain on the first site: a ceiling for any engine's speed-up
        prompt = f"Q: {question}\nWork:"
        kw = {"max_tokens": args.work_tokens, "stop": "\n", "generator": torch.Generator().manual_seed(0)}
        probe = max(1, n // 8)
        _, c_one, _ = time_it(lambda: [lm.sample([prompt], **kw) for _ in range(probe)])
        _, c_batch, _ = time_it(lambda: lm.sample([prompt] * n, **kw))
        ceiling = (c_one / probe * n) / c_batch

    speedup_cpu, speedup_wall = c_pyro / c_ours, t_pyro / t_ours
    overhead_cpu = 1.0 - engine.model_cpu_seconds / c_ours
    overhead_wall = 1.0 - engine.model_seconds / t_ours
    figures = {
        "model": which,
        "threads": torch.get_num_threads(),
        "particles": n,
        "work_tokens": args.work_tokens,
        "answer_tokens": args.answer_tokens,
        "llmppl_importance_wall_s": t_ours,
        "llmppl_importance_cpu_s": c_ours,
        "llmppl_importance_no_continuations_cpu_s": c_nocont,
        "pyro_importance_wall_s": t_pyro,
        "pyro_importance_cpu_s": c_pyro,
        "speedup_cpu": speedup_cpu,
        "speedup_wall": speedup_wall,
        "overhead_fraction_cpu": overhead_cpu,
        "overhead_fraction_wall": overhead_wall,
        "smc_particles": args.smc_particles,
        "smc_wall_s": t_smc,
        "smc_cpu_s": c_smc,
        "smc_resamples": smc.num_resamples,
        "smc_ess": smc_post.ess,
        "model_batching_ratio": ceiling,
        "llmppl_calls": {"sample": engine.num_sample_calls, "score": engine.num_score_calls},
    }
    print(
        f"\n(a) Importance, {n} particles: llmppl {c_ours:.2f} s vs pyro.infer.Importance {c_pyro:.2f} s CPU "
        f"-> {speedup_cpu:.1f}x faster (wall: {speedup_wall:.1f}x; goal >= {GOALS['speedup_256']:.0f}x) "
        f"[{engine.num_sample_calls} batched sample calls vs {2 * n} batch-of-1 calls]"
    )
    print(
        f"    with the continuation cache off (every prompt prefilled from scratch): llmppl {c_nocont:.2f} s CPU "
        f"-> {c_pyro / c_nocont:.1f}x"
    )
    print(
        f"    the model alone: one batch of {n} samples of the first site vs {n} batch-of-1 samples "
        f"(CPU, {probe} timed): {ceiling:.1f}x, the ceiling for batching on this machine"
    )
    print(
        f"(b) SMC, {args.smc_particles} particles: {c_smc:.2f} s CPU ({t_smc:.2f} s wall), "
        f"{smc.num_resamples} resampling steps, final ESS {smc_post.ess:.0f}; {c_smc / c_ours:.2f}x the time of (a) "
        f"for {args.smc_particles / n:.0f}x the particles"
    )
    print(
        f"(c) time outside model computation at {n} particles: {100 * overhead_cpu:.1f}% of CPU time "
        f"({100 * overhead_wall:.1f}% of wall time; goal <= {100 * GOALS['overhead_256']:.0f}%)"
    )
    print(f"    posterior: ESS {post.ess:.0f}, top answers {post.marginal('answer').top(2)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


if __name__ == "__main__":
    main()
