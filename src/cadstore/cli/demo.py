"""``cadstore demo``: the main job on an embedded default."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = sub.add_parser(
        "demo",
        help="build a demo dataset end to end",
        description="Encode realistic items, store them, read them back and check them.",
    )
    parser.add_argument("-o", "--output", default="demo_output", help="output directory")
    parser.add_argument("-n", "--items", type=int, default=200, help="number of items")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    from cadstore.demo import run_demo

    run_demo(args.output, args.items, args.seed)
    return 0
