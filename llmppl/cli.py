"""The ``llmppl`` command line (layer L5): ``llmppl demo``, ``llmppl train ...``.

>>> args, rest = build_parser().parse_known_args(["train", "--out", "runs/x"])
>>> args.command, rest
('train', ['--out', 'runs/x'])
>>> build_parser().parse_args(["demo", "--problems", "3"]).problems
3
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["build_parser", "demo", "main"]

METHODS = ("direct", "scratchpad", "self-consistency", "verifier+SMC", "tool use")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; ``train`` forwards its remaining arguments."""
    parser = argparse.ArgumentParser(
        prog="llmppl", description="Language-model calls as Pyro distributions over strings."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train the Performer LM (see `llmppl train --help`)", add_help=False)
    d = sub.add_parser(
        "demo",
        help="answer held-out additions with five cascades on the shipped model",
        description=(
            "Answer held-out additions on the shipped Performer five ways — one direct sample, one "
            "sampled scratchpad, self-consistency over scratchpads, scratchpad + LM verifier with SMC, "
            "and a calculator tool — at each number of digits; print accuracy and time per method and "
            "write the scratchpad+verifier model graph as SVG."
        ),
    )
    d.add_argument("--problems", type=int, default=12, help="held-out problems per digit count (default: 12)")
    d.add_argument("--digits", type=int, nargs="+", default=[5, 8], help="operand lengths (default: 5 8)")
    d.add_argument("--particles", type=int, default=12, help="particles for self-consistency and SMC (default: 12)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    d.add_argument("--out", default="build/demo", help="folder for the graph (default: build/demo)")
    return parser


def _runners(lm, d: int, particles: int) -> dict:
    """One function per method: question ``"a+b"`` -> answer string (one draw, or a posterior mode)."""
    import pyro

    import llmppl
    from llmppl.cascades import scratchpad, self_consistency, tool_use, verified_scratchpad

    sizes = dict(model=lm, max_work_tokens=16 * d + 16, max_answer_tokens=d + 4)

    def direct(q):
        return pyro.sample("answer", llmppl.LM(f"Q: {q}\nA: ", model=lm, stop="\n", max_tokens=d + 4))

    def once(program, *args, **kwargs):
        return llmppl.infer.Importance(program, num_samples=1, progress=False).run(*args, **kwargs).sample()

    def verifier_smc(q):
        post = llmppl.infer.SMC(verified_scratchpad, num_particles=particles, progress=False).run(q, **sizes)
        return max(post.marginal("answer").items(), key=lambda kv: kv[1])[0]

    return {
        "direct": lambda q: once(direct, q),
        "scratchpad": lambda q: once(scratchpad, q, **sizes),
        "self-consistency": lambda q: self_consistency(q, num_samples=particles, **sizes)[0],
        "verifier+SMC": verifier_smc,
        "tool use": lambda q: once(tool_use, f"What is {q.replace('+', ' plus ')}?", model=lm),
    }


def demo(problems: int = 12, digits=(5, 8), particles: int = 12, seed: int = 0, out: str = "build/demo") -> dict:
    """Run the demo; returns ``{digits: {method: (accuracy, seconds)}}`` and prints a table."""
    import pyro
    from tqdm.auto import tqdm

    import llmppl
    from llmppl.cascades import verified_scratchpad
    from llmppl.models import tasks

    for name, value in (("problems", problems), ("particles", particles)):
        if value < 1:
            raise ValueError(f"demo: {name}: expected >= 1, got {value}")
    lm = llmppl.load_pretrained()
    pyro.set_rng_seed(seed)
    results: dict = {}
    for d in digits:
        # held-out additions only: is_held_out keys never appear in training
        probs = [
            tasks.sample_problem("scratchpad", split="test", seed=seed, index=i, digits=d) for i in range(problems)
        ]
        questions = [f"{p.meta['a']}+{p.meta['b']}" for p in probs]
        truths = [p.target for p in probs]
        runners = _runners(lm, d, particles)
        results[d] = {}
        for method, run in runners.items():
            start = time.perf_counter()
            correct = 0
            for q, truth in tqdm(list(zip(questions, truths, strict=True)), desc=f"{d} digits, {method}", leave=False):
                try:
                    correct += run(q).strip() == truth
                except llmppl.InferenceError:
                    pass  # every particle rejected: counts as wrong
            results[d][method] = (correct / problems, time.perf_counter() - start)
    os.makedirs(out, exist_ok=True)
    graph_file = os.path.join(out, "verifier_graph.svg")
    pyro.set_rng_seed(seed)
    llmppl.render_model(
        verified_scratchpad,
        model_args=(questions[0],),
        model_kwargs=dict(model=lm, max_work_tokens=16, max_answer_tokens=4),
        filename=graph_file,
    )
    print(f"\nheld-out additions, {problems} problems per row, sampling at temperature 1, seed {seed}")
    header = f"{'method':<18}" + "".join(f" | {f'{d} digits':>10} {'time s':>7}" for d in digits)
    print(header)
    print("-" * len(header))
    for method in METHODS:
        row = "".join(f" | {results[d][method][0]:>10.0%} {results[d][method][1]:>7.1f}" for d in digits)
        print(f"{method:<18}{row}")
    print(f"\nscratchpad + verifier model graph: {os.path.abspath(graph_file)}")
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser().parse_known_args(argv)
    if args.command == "train":
        from .models.train import main as train_main

        return train_main(rest)
    if rest:
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    demo(args.problems, args.digits, args.particles, args.seed, args.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
