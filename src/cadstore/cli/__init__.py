"""The ``cadstore`` command line.

Subcommands:

``demo``
    The main job on an embedded default (see :mod:`cadstore.demo`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="cadstore", description="Storage for CAD machine learning."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "demo", help="encode, store and verify a batch of realistic items", add_help=False
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from cadstore.demo import main as demo_main

        return demo_main(rest)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2
