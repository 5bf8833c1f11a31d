"""``cadstore demo``: the main job on an embedded default."""

from __future__ import annotations

import argparse
from typing import Any

from cadstore.cli._common import non_negative_int, positive_int


def register(sub: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = sub.add_parser(
        "demo",
        help="run the pipeline end to end on built-in data",
        description="Encode sample CAD parts (or generate realistic items), merge them, "
        "explore, split, iterate a PyTorch DataLoader epoch and write a report.",
    )
    parser.add_argument("-o", "--output", default="demo_output", help="output directory")
    parser.add_argument(
        "-n",
        "--items",
        type=positive_int,
        default=200,
        help="generated items when CAD is not used",
    )
    parser.add_argument("--parts", type=positive_int, default=24, help="sample CAD parts to encode")
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="random seed of generated data and split",
    )
    parser.add_argument(
        "--workers", type=non_negative_int, default=None, help="default: every core"
    )
    cad = parser.add_mutually_exclusive_group()
    cad.add_argument(
        "--cad",
        dest="cad",
        action="store_true",
        default=None,
        help="use OpenCascade sample parts (default when installed)",
    )
    cad.add_argument(
        "--no-cad",
        dest="cad",
        action="store_false",
        default=None,  # store_false's own default, True, showed as '(default: True)'
        help="use generated realistic items (default without OpenCascade)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    from cadstore.pipeline import run_demo

    run_demo(
        args.output, args.items, args.seed, cad=args.cad, parts=args.parts, workers=args.workers
    )
    return 0
