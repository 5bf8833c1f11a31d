"""``cadstore repair DATASET``: finish or undo what an interrupted writer left."""

from __future__ import annotations

import argparse
from typing import Any

from cadstore.cli._common import wait_seconds


def register(sub: Any) -> None:
    """Add the ``repair`` subcommand."""
    parser = sub.add_parser(
        "repair",
        help="finish or undo an interrupted merge, append or split of a dataset",
        description="Take the dataset's lock and finish or undo what a merge, append or "
        "split that was killed left behind: staged files are removed (rolled back), or the "
        ".infoset, .attribset and .flow are published again from the dataset (rolled "
        "forward). Any later merge, append or split does the same first; this does only "
        "that. A path that is not a dataset (missing, unreadable, not a cadstore dataset) "
        "is an error, unless a killed writer's lock is beside it.",
    )
    parser.add_argument("dataset", help="the .dataset (or its .flow manifest)")
    parser.add_argument(
        "--wait",
        type=wait_seconds,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for a writer still at work (0: fail at once)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Repair and say what was done."""
    from cadstore.cli.report import dataset_of
    from cadstore.lifecycle import repair

    dataset = dataset_of(args.dataset, args.storage_options, trust_manifest=args.trust_manifest)
    done = repair(dataset, timeout=args.wait, storage_options=args.storage_options)
    for sentence in done:
        print(sentence)
    if not done:
        print(f"{dataset}: nothing to repair")
    return 0
