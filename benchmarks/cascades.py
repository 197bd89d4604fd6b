"""The cascades of the paper on held-out additions: accuracy and compute per method (issue 6's results table).

Sections (``--sections``, default all but ``star``):

- ``arithmetic``: on the Performer (shipped or ``--checkpoint``), held-out additions at
  each ``--digits``, ``--n`` problems per row, every site sampled at temperature 1:
  direct, one scratchpad, self-consistency, scratchpad + verifier with SMC and with
  rejection, tool use (:mod:`llmppl.cascades.addition`). Per row: accuracy, LM tokens
  per problem (prompt tokens prefilled + tokens decoded, prefix cache included) and time.
- ``twenty``: twenty questions, the Performer as questioner and answerer, one game per
  hidden object (``--games``, cycling through the knowledge base): success (the guess is
  the object) within 20 turns, mean turns, and how often the posterior's mode given the
  transcript is the object (the exact posterior, :func:`~llmppl.cascades.object_posterior`).
- ``hf``: the same direct and scratchpad cascades on SmolLM2-135M-Instruct through
  ``HFCausalLM`` (``llmppl.load_smollm2()``, local files only) at ``--hf-digits`` digits,
  with few-shot prompts written for it (:class:`~llmppl.cascades.PromptStyle`: worked
  training-split examples, no space after the labels for its BPE tokenizer).
- ``star``: STaR's held-out accuracy per iteration from ``--star-init`` (see ``llmppl star``).

Writes a markdown table to stdout and everything to ``--json`` (default ``build/cascades.json``).

    python benchmarks/cascades.py --n 500                     # the issue's size
    python benchmarks/cascades.py --n 20 --sections arithmetic --methods direct scratchpad
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import time

import pyro
import torch

import llmppl
from llmppl.cascades import PromptStyle, few_shot, star_loop
from llmppl.cascades.addition import METHODS, compare, held_out_additions
from llmppl.cascades.star import addition_problems
from llmppl.cascades.twenty import OBJECTS, object_posterior, play

SECTIONS = ("arithmetic", "twenty", "hf", "star")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50, help="held-out problems per row (the issue asks for 500; default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD")
    p.add_argument("--digits", type=int, nargs="+", default=[5, 8])
    p.add_argument("--particles", type=int, default=12, help="self-consistency and SMC particles")
    p.add_argument("--rejection-samples", type=int, default=3, help="accepted runs wanted by rejection")
    p.add_argument("--max-attempts", type=int, default=None, help="rejection's most runs (default 16 x particles)")
    p.add_argument("--sections", nargs="+", default=["arithmetic", "twenty", "hf"], choices=SECTIONS)
    p.add_argument("--checkpoint", default=None, help="Performer checkpoint folder (default: the shipped one)")
    p.add_argument("--games", type=int, default=36, help="twenty-questions games (default: one per object)")
    p.add_argument("--hf-n", type=int, default=None, help="problems per SmolLM2 row (default: --n)")
    p.add_argument("--hf-digits", type=int, nargs="+", default=[2])
    p.add_argument("--hf-methods", nargs="+", default=["direct", "scratchpad"], choices=METHODS)
    p.add_argument("--hf-shots", type=int, default=4, help="worked examples in SmolLM2's prompts")
    p.add_argument("--star-init", default=None, help="STaR's starting checkpoint (default: --checkpoint)")
    p.add_argument("--star-iterations", type=int, default=3)
    p.add_argument("--star-train", type=int, default=32, help="known-answer problems per STaR iteration")
    p.add_argument("--star-held-out", type=int, default=None, help="STaR's held-out problems (default: --n)")
    p.add_argument("--star-digits", type=int, nargs="+", default=[4, 5, 6])
    p.add_argument("--star-steps", type=int, default=100, help="fine-tuning steps per STaR iteration")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="build/cascades.json")
    return p


def _arith_table(title: str, results: dict, digits, methods) -> str:
    lines = [f"### {title}", ""]
    head = "| method |" + "".join(f" {d} digits | tokens/problem | s/problem |" for d in digits)
    lines += [head, "|---|" + "---|---|---|" * len(digits)]
    for m in methods:
        cells = ""
        for d in digits:
            r = results[d][m]
            fail = f" ({r['failures']} rejected)" if r["failures"] else ""
            cells += f" {r['accuracy']:.1%}{fail} | {r['tokens_per_problem']:,.0f} | {r['seconds'] / r['n']:.2f} |"
        lines.append(f"| {m} |{cells}")
    return "\n".join(lines)


def _rows(lm, args, n: int, digits, methods, label: str, styles=lambda d: {}, problems=None) -> dict:
    """``{digits: compare(...)}``, printing each row as it lands; ``problems(n, d)`` (default:
    :func:`held_out_additions`) gives each row's distinct questions."""
    results = {}
    for d in digits:
        results[d] = compare(
            lm,
            (problems or (lambda n, d: held_out_additions(n, d, seed=args.seed)))(n, d),
            methods,
            digits=d,
            seed=args.seed,
            particles=args.particles,
            rejection_samples=args.rejection_samples,
            max_attempts=args.max_attempts,
            progress=True,
            **styles(d),
        )
        for m, r in results[d].items():
            print(f"  {label} {d} digits {m:<18} {r['accuracy']:6.1%}  {r['seconds']:7.1f} s", flush=True)
    return results


def arithmetic(lm, args, report: dict) -> str:
    results = report["arithmetic"] = _rows(lm, args, args.n, args.digits, args.methods, "Performer")
    title = f"Performer, held-out additions, {args.n} per row, temperature 1"
    return _arith_table(title, results, args.digits, args.methods)


def twenty(lm, args, report: dict) -> str:
    """Games and the exact posterior over the object. With a greedy answerer every object's
    likelihood is 0 or 1, so the posterior is uniform over the consistent objects: the
    mode is a set, and "mode = object" is counted only when the object is the one mode;
    with ties broken at random it is right as often as the mean posterior of the object."""
    games, start = [], time.perf_counter()
    pyro.set_rng_seed(args.seed)
    for i in range(args.games):
        obj = OBJECTS[i % len(OBJECTS)]
        game = play(obj, model=lm, max_turns=20)
        probs = object_posterior(game["transcript"], model=lm)  # exact, by enumeration
        top = max(probs.values())
        game["modes"] = [o for o, p in probs.items() if p >= top * (1 - 1e-9)]
        game["p_object"] = probs.get(obj, 0.0)
        games.append(game)
    seconds = time.perf_counter() - start
    n = len(games)
    won = sum(g["guess"] == g["object"] for g in games)
    guessed = sum(g["guess"] in OBJECTS for g in games)
    unique = sum(g["modes"] == [g["object"]] for g in games)
    turns = sum(g["turns"] for g in games) / n
    p_object = sum(g["p_object"] for g in games) / n
    report["twenty"] = {
        "games": n,
        "success": won / n,
        "guessed_an_object": guessed / n,
        "mean_turns": turns,
        "posterior_unique_mode_right": unique / n,
        "mean_posterior_of_object": p_object,
        "seconds": seconds,
        "transcripts": games,
    }
    return "\n".join(
        [
            f"### Twenty questions, Performer as questioner and answerer, {n} games",
            "",
            "| success within 20 turns | guessed an object | mean turns | object is the one posterior mode "
            "| mean posterior of the object (= mode right, ties at random) | s/game |",
            "|---|---|---|---|---|---|",
            f"| {won / n:.1%} | {guessed / n:.1%} | {turns:.1f} | {unique / n:.1%} | {p_object:.1%} "
            f"| {seconds / n:.1f} |",
        ]
    )


def hf(args, report: dict) -> str:
    lm = llmppl.load_smollm2()
    n = args.hf_n or args.n

    def styles(d):  # few-shot prompts for SmolLM2's BPE tokenizer: no space after the labels
        shots = {"style": "scratchpad", "direct_style": "direct", "verifier_style": "verifier"}
        out = {k: PromptStyle(few_shot(t, args.hf_shots, seed=args.seed, digits=d), space="") for k, t in shots.items()}
        out["tool_style"] = PromptStyle(few_shot("calculator", args.hf_shots, seed=args.seed), space="")
        return out

    def problems(n, d):
        # SmolLM2 never saw our corpus, so any addition is new to it except the few-shot
        # ones; at one digit the held-out split has 4 pairs, so every pair is used
        try:
            return held_out_additions(n, d, seed=args.seed)
        except ValueError:
            shown = "".join(styles(d)[k].prefix for k in ("style", "direct_style", "verifier_style", "tool_style"))
            pairs = [(a, b) for a in range(10 ** (d - 1) if d > 1 else 0, 10**d) for b in range(10**d)]
            random.Random(f"hf:{args.seed}:{d}").shuffle(pairs)
            fresh = [(f"{a}+{b}", str(a + b)) for a, b in pairs if not re.search(rf"\b{a}\+{b}\b", shown)]
            return fresh[:n]

    results = _rows(lm, args, n, args.hf_digits, args.hf_methods, "SmolLM2", styles, problems)
    report["hf"] = {"model": "SmolLM2-135M-Instruct (HFCausalLM)", "shots": args.hf_shots, "results": results}
    title = f"SmolLM2-135M-Instruct via HFCausalLM, {args.hf_shots}-shot prompts, {n} per row, temperature 1"
    return _arith_table(title, results, args.hf_digits, args.hf_methods) + (
        "\n\n(tokens/problem includes the few-shot prefix, prefilled once per distinct prompt)"
    )


def star(args, report: dict) -> str:
    lm = llmppl.load_pretrained(args.star_init or args.checkpoint)
    train = addition_problems(args.star_train, args.star_digits, split="train", seed=args.seed)
    held = addition_problems(args.star_held_out or args.n, args.star_digits, split="test", seed=args.seed)
    pyro.set_rng_seed(args.seed)
    _, history = star_loop(
        train,
        held,
        model=lm,
        iterations=args.star_iterations,
        max_work_tokens=16 * max(args.star_digits) + 16,
        num_rationales=2,
        max_attempts=64,
        fine_tune_kwargs={"steps": args.star_steps, "seed": args.seed},
        log=lambda line: print("  " + line, flush=True),
    )
    report["star"] = history
    lines = [
        f"### STaR from {args.star_init or args.checkpoint or 'the shipped checkpoint'}, digits {args.star_digits}",
        "",
        "| iteration | rationales kept | held-out accuracy | by digits | s |",
        "|---|---|---|---|---|",
    ]
    for h in history:
        by = h.get("accuracy_by_digits") or {}
        per = ", ".join(f"{d}: {a:.0%}" for d, a in by.items())
        lines.append(f"| {h['iteration']} | {h['documents']} | {h['accuracy']:.1%} | {per} | {h.get('seconds', '')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict = {
        "args": vars(args),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "seconds": {},
    }
    tables = []
    lm = None
    if {"arithmetic", "twenty"} & set(args.sections):
        lm = llmppl.load_pretrained(args.checkpoint)
    runners = {
        "arithmetic": lambda: arithmetic(lm, args, report),
        "twenty": lambda: twenty(lm, args, report),
        "hf": lambda: hf(args, report),
        "star": lambda: star(args, report),
    }
    for section in SECTIONS:
        if section not in args.sections:
            continue
        print(f"[{section}]", flush=True)
        t0 = time.perf_counter()
        tables.append(runners[section]())
        report["seconds"][section] = time.perf_counter() - t0
        print(tables[-1] + "\n", flush=True)
    print(f"## Cascades (seed {args.seed}, {args.threads} torch thread(s))\n")
    print("\n\n".join(tables))
    print("\nsection times: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items()))
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"JSON: {os.path.abspath(args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
