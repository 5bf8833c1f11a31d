"""``cadstore merge INPUTS... -o OUT``: merge items into a dataset with its tables."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cadstore.cli._common import (
    add_progress_option,
    non_negative_int,
    show_progress,
    wait_seconds,
    zstd_level,
)


def register(sub: Any) -> None:
    """Add the ``merge`` subcommand."""
    parser = sub.add_parser(
        "merge",
        help="merge .data items into a .dataset with .infoset, .attribset and .flow",
        description="Merge item files (or directories of them) into one dataset. Unreadable "
        "items are skipped and listed; the .flow manifest is written last.",
    )
    parser.add_argument(
        "inputs", nargs="+", help=".data files or directories holding them (paths or URLs)"
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="the .dataset to write (a path or a URL; .dataset is added to a name without it)",
    )
    parser.add_argument("--schema", help="schema JSON file (default: the items' own schema)")
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        help="threads decoding and encoding (0: this thread only; default: every core)",
    )
    parser.add_argument(
        "--append", action="store_true", help="add the inputs to an existing dataset"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument(
        "--wait",
        type=wait_seconds,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another merge, append or split of the same dataset to "
        "finish (0: fail at once)",
    )
    parser.add_argument(
        "--level",
        type=zstd_level,
        default=3,
        help="zstd level of the dataset (arrays of a few small rows per item are stored as "
        "they are, at zstd's fastest level)",
    )
    parser.add_argument(
        "--face-pair-level",
        type=zstd_level,
        help="zstd level of the face-pair arrays (default: --level, at least 7)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_progress_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Merge and print the summary; exit 1 if some items were skipped."""
    from cadstore.merging import merge

    schema = None
    if args.schema:
        from cadstore.validation import load_schema_builder

        schema = load_schema_builder(args.schema, args.storage_options).build()
    # Only when given: a merge of local paths needs no options and must not receive them.
    remote: dict[str, Any] = (
        {"storage_options": args.storage_options} if args.storage_options else {}
    )
    result = merge(
        args.inputs,
        args.output,  # merge() names the dataset (adds .dataset), as it does for everyone
        schema=schema,
        workers=args.workers,
        overwrite=args.overwrite,
        append=args.append,
        compression_level=args.level,
        face_pair_level=args.face_pair_level,
        progress=show_progress(args),
        lock_timeout=args.wait,
        **remote,
    )
    summary = result.to_dict()
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(
            f"merged {len(result.items)} item(s) into {result.path} in {result.seconds:.1f} s "
            f"({result.raw_bytes / 1e6:.1f} MB raw -> {result.stored_bytes / 1e6:.1f} MB)"
        )
        for name, group in result.groups.items():
            print(
                f"  {name}: {group['rows']} rows along {group['primary_dimension']!r}, "
                f"{len(group['arrays'])} arrays"
            )
        for warning in result.warnings:
            print(f"  warning: {warning}")
        for error in result.errors:
            # Errors usually start with the file they name: say it once.
            reason = error["error"].removeprefix(f"{error['file']}: ")
            print(f"  skipped {error['file']}: {reason}")
    return 1 if result.errors else 0
