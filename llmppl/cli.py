"""The ``llmppl`` command line (layer L5): ``llmppl train ...``.

>>> args, rest = build_parser().parse_known_args(["train", "--out", "runs/x"])
>>> args.command, rest
('train', ['--out', 'runs/x'])
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; each subcommand forwards its remaining arguments."""
    parser = argparse.ArgumentParser(
        prog="llmppl", description="Language-model calls as Pyro distributions over strings."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train the Performer LM (see `llmppl train --help`)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser().parse_known_args(argv)
    if args.command == "train":
        from .models.train import main as train_main

        return train_main(rest)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
