"""The ``llmppl`` command line (layer L5): ``llmppl demo``, ``llmppl star``, ``llmppl train ...``.

>>> args, rest = build_parser().parse_known_args(["train", "--out", "runs/x"])
>>> args.command, rest
('train', ['--out', 'runs/x'])
>>> build_parser().parse_args(["demo", "--problems", "3"]).problems
3
>>> build_parser().parse_args(["star", "--iterations", "4"]).iterations
4
"""

from __future__ import annotations

import argparse
import os
import sys

from .models.train import _int_at_least

__all__ = ["build_parser", "demo", "main", "star"]

METHODS = ("direct", "scratchpad", "self-consistency", "verifier+SMC", "tool use", "by blocks+SMC")  # the demo's


def _folder(text: str) -> str:
    """An argparse ``type``: a folder that exists or can be created (no file in the way).

    >>> _folder("build/demo")
    'build/demo'
    """
    path = os.path.abspath(text)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"expected a folder, but {path!r} is a file")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; ``train`` forwards its remaining arguments.

    ``parser.subcommands`` maps each command to its parser (for its usage errors).

    >>> parser = build_parser()
    >>> sorted(parser.subcommands)
    ['demo', 'star', 'train']
    >>> args = parser.parse_args(["demo", "--digits", "3", "4"])
    >>> args.command, args.digits, args.problems
    ('demo', [3, 4], 12)
    """
    parser = argparse.ArgumentParser(
        prog="llmppl", description="Language-model calls as Pyro distributions over strings."
    )
    positive = _int_at_least(1)  # an argparse type: argparse names the option in its usage error
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "train",
        help="train the Performer LM (`llmppl train --help`), or fine-tune one (`llmppl train finetune --help`)",
        add_help=False,
    )
    d = sub.add_parser(
        "demo",
        help="answer held-out additions with six cascades on the shipped model",
        description=(
            "Answer held-out additions on the shipped Performer six ways — one direct sample, one "
            "sampled scratchpad, self-consistency over scratchpads, scratchpad + LM verifier with SMC, "
            "a calculator tool, and scratchpads on 4-digit blocks with the verifier and SMC (for operands "
            "longer than the model's training) — at each number of digits; print accuracy and time per "
            "method and write the scratchpad+verifier model graph as SVG."
        ),
    )
    d.add_argument("--problems", type=positive, default=12, help="held-out problems per digit count (default: 12)")
    d.add_argument("--digits", type=positive, nargs="+", default=[5, 8], help="operand lengths (default: 5 8)")
    d.add_argument(
        "--particles", type=positive, default=12, help="particles for self-consistency and SMC (default: 12)"
    )
    d.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    d.add_argument("--out", type=_folder, default="build/demo", help="folder for the graph (default: build/demo)")
    st = sub.add_parser(
        "star",
        help="STaR: bootstrap longer scratchpads from known answers by fine-tuning the Performer",
        description=(
            "Self-Taught Reasoner on additions: each iteration samples scratchpads for training-split "
            "problems with known answers, keeps those that reach the answer (rejection sampling), fine-tunes "
            "the Performer on them, and measures held-out accuracy (one sampled scratchpad per problem, "
            "temperature 1). Saves every iteration's model and history.json under --out. STaR needs a "
            "model that is sometimes right at --digits (one that never is keeps nothing) and a few hundred "
            "problems an iteration: from 29 % at 8 digits, --train-problems 400 --steps 120 --lr 1e-4 "
            "--restart reached 67 % in three iterations (BENCHMARKS.md)."
        ),
    )
    st.add_argument("--init", default=None, help="checkpoint folder to start from (default: the shipped one)")
    st.add_argument(
        "--out", type=_folder, default="runs/star", help="folder for the models and history (default: runs/star)"
    )
    st.add_argument("--iterations", type=positive, default=3, help="STaR iterations, >= 1 (default: 3)")
    st.add_argument(
        "--train-problems", type=positive, default=64, help="known-answer problems per iteration (default: 64)"
    )
    st.add_argument("--held-out", type=positive, default=32, help="held-out problems per evaluation (default: 32)")
    st.add_argument("--digits", type=positive, nargs="+", default=[4, 5, 6], help="operand lengths (default: 4 5 6)")
    st.add_argument(
        "--rationales", type=positive, default=2, help="accepted rationales wanted per problem (default: 2)"
    )
    st.add_argument("--max-attempts", type=positive, default=64, help="rejection runs per problem (default: 64)")
    st.add_argument("--steps", type=positive, default=100, help="fine-tuning steps per iteration (default: 100)")
    st.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (default: 3e-4)")
    st.add_argument("--restart", action="store_true", help="fine-tune the starting model each time (STaR paper)")
    st.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    st.add_argument("--threads", type=positive, default=None, help="torch CPU threads (default: torch's)")
    parser.subcommands = sub.choices
    return parser


def demo(problems: int = 12, digits=(5, 8), particles: int = 12, seed: int = 0, out: str = "build/demo") -> dict:
    """Run the demo; returns ``{digits: {method: (accuracy, seconds)}}`` and prints a table.

    The methods are :data:`METHODS`, run by :func:`llmppl.cascades.addition.compare`. The sizes
    are checked before anything is loaded or run:

    >>> demo(problems=0)
    Traceback (most recent call last):
    ...
    ValueError: demo: problems: expected >= 1, got 0
    """
    import pyro

    import llmppl
    from llmppl.cascades import addition, verified_scratchpad

    for name, value in (("problems", problems), ("particles", particles), *(("digits", d) for d in digits)):
        if value < 1:
            raise ValueError(f"demo: {name}: expected >= 1, got {value}")
    os.makedirs(out, exist_ok=True)  # before the long run: fail now if a file is in the way
    asked = {d: addition.held_out_additions(problems, d, seed=seed) for d in digits}  # too few: a ValueError now
    lm = llmppl.load_pretrained()
    results: dict = {}
    for d in digits:
        questions = asked[d]
        rows = addition.compare(lm, questions, METHODS, digits=d, seed=seed, particles=particles, progress=True)
        results[d] = {m: (r["accuracy"], r["seconds"]) for m, r in rows.items()}
    graph_file = os.path.join(out, "verifier_graph.svg")
    pyro.set_rng_seed(seed)
    llmppl.render_model(
        verified_scratchpad,
        model_args=(questions[0][0],),
        model_kwargs=dict(model=lm, max_work_tokens=16, max_answer_tokens=4),
        filename=graph_file,
    )
    per_row = f"{problems} problem{'s' if problems != 1 else ''} per row"
    print(f"\nheld-out additions, {per_row}, sampling at temperature 1, seed {seed}")
    header = f"{'method':<18}" + "".join(f" | {f'{d} digits':>10} {'time s':>7}" for d in digits)
    print(header)
    print("-" * len(header))
    for method in METHODS:
        row = "".join(f" | {results[d][method][0]:>10.0%} {results[d][method][1]:>7.1f}" for d in digits)
        print(f"{method:<18}{row}")
    print(f"\nscratchpad + verifier model graph: {os.path.abspath(graph_file)}")
    return results


def star(args: argparse.Namespace) -> list[dict]:
    """Run ``llmppl star`` as configured by ``args`` (from :func:`build_parser`); returns the history.

    >>> import tempfile
    >>> from llmppl.models import PerformerConfig, PerformerLM
    >>> with tempfile.TemporaryDirectory() as d:
    ...     PerformerLM(PerformerConfig.tiny()).save_pretrained(f"{d}/init")
    ...     sizes = ["--iterations", "1", "--train-problems", "1", "--held-out", "1", "--digits", "1"]
    ...     args = build_parser().parse_args(["star", "--init", f"{d}/init", "--out", f"{d}/star", *sizes,
    ...         "--max-attempts", "1", "--steps", "1"])
    ...     [h["iteration"] for h in star(args)]  # doctest: +ELLIPSIS
    STaR iteration 0: ...
    [0, 1]
    """
    import torch

    import llmppl
    from llmppl.cascades import star_loop
    from llmppl.cascades.star import addition_problems

    for name in ("iterations", "train_problems", "held_out", "rationales", "max_attempts", "steps", "digits"):
        for value in getattr(args, name) if name == "digits" else [getattr(args, name)]:
            if value < 1:
                raise ValueError(f"star: --{name.replace('_', '-')}: expected a positive number, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    _pyro_seed(args.seed)
    lm = llmppl.load_pretrained(args.init)
    train_problems = addition_problems(args.train_problems, args.digits, split="train", seed=args.seed)
    held_out = addition_problems(args.held_out, args.digits, split="test", seed=args.seed)
    _, history = star_loop(
        train_problems,
        held_out,
        model=lm,
        iterations=args.iterations,
        num_rationales=args.rationales,
        max_attempts=args.max_attempts,
        max_work_tokens=16 * max(args.digits) + 16,
        fine_tune_kwargs={"steps": args.steps, "lr": args.lr, "seed": args.seed},
        restart=args.restart,
        save_dir=args.out,
        log=print,
    )
    print(f"\nmodels and history.json in {os.path.abspath(args.out)} (final/ is the last iteration's model)")
    return history


def _pyro_seed(seed: int) -> None:
    """Seed Pyro and torch."""
    import pyro

    pyro.set_rng_seed(seed)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    A usage error exits with status 2 and names the command and the option on stderr;
    ``train ...`` is forwarded to :func:`llmppl.models.train.main`.

    >>> import contextlib, io
    >>> def usage_error(argv):
    ...     err = io.StringIO()
    ...     with contextlib.redirect_stderr(err):
    ...         try:
    ...             main(argv)
    ...         except SystemExit as stop:
    ...             return stop.code, err.getvalue().splitlines()[-1]
    >>> usage_error(["demo", "--problems", "0"])
    (2, 'llmppl demo: error: argument --problems: expected an int >= 1, got 0')
    >>> usage_error(["train"])
    (2, 'llmppl train: error: the following arguments are required: --out')
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        from .models.train import main as train_main

        return train_main(rest)
    if rest:
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "star":
            star(args)
        else:
            demo(args.problems, args.digits, args.particles, args.seed, args.out)
    except ValueError as err:  # an impossible size (more held-out problems than exist): a usage error
        if "addition_problems" not in str(err):
            raise
        parser.subcommands[args.command].error(str(err))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
