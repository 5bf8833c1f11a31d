"""``cadstore encode``: encode CAD files into per-body ``.data`` items, optionally merged.

The command line of :func:`cadstore.encode.encode_files`::

    cadstore encode parts/ -o out --workers 8 --merge
    cadstore encode 'parts/**/*.step' -o out --json > report.json

Exit codes: 0 when every file was encoded (or skipped as already encoded), 1 when some
items failed (they are listed in ``OUT/error_summary.json``), 2 for bad usage, missing
inputs or a missing ``cad`` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from cadstore.cli import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from cadstore.cli._common import (
    add_progress_option,
    non_negative_int,
    positive_seconds,
    show_progress,
)

if TYPE_CHECKING:
    from cadstore.encode import EncodeReport

# At most this many failures are printed; the rest are in error_summary.json.
_SHOWN_FAILURES = 20


def register(sub: Any) -> None:
    """Add the ``encode`` subcommand to ``sub``.

    Parameters
    ----------
    sub
        The subparsers object of the ``cadstore`` parser.
    """
    parser = sub.add_parser(
        "encode",
        help="encode CAD files (STEP, IGES, BREP) into .data items",
        description=(
            "Encode every body of every CAD file into OUT/encoded/<hash>_<body>.zarr.data, "
            "in parallel worker processes with a time limit and a memory cap per file. "
            "Failures are listed in OUT/error_summary.json; items already encoded are "
            "skipped, so an interrupted run can simply be started again."
        ),
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT_DIR_OR_GLOB",
        help="a directory (searched recursively), a quoted glob pattern, or files",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output dir")
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="worker processes (default: cores)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=None,
        metavar="S",
        help="seconds allowed per file read and per body (default: 120)",
    )
    parser.add_argument(
        "--memory-limit",
        type=non_negative_int,
        default=None,
        metavar="MB",
        help="address-space cap per worker in MiB, 0 for none (default: 4096 MiB more "
        "than a worker maps when it starts)",
    )
    parser.add_argument(
        "--no-histograms",
        action="store_true",
        help="skip the face-pair distance and angle histograms",
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="re-encode items that already exist"
    )
    parser.add_argument(
        "--merge", action="store_true", help="merge the items into OUT/<OUT name>.dataset"
    )
    parser.add_argument(
        "--durability",
        choices=("batch", "item"),
        default="batch",
        help="sync items to disk once per batch (default; a resumed run checks the items "
        "a crash may have left unsynced) or fsync every item as it is written",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_progress_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``cadstore encode``.

    Parameters
    ----------
    args
        The parsed arguments.

    Returns
    -------
    int
        0 if every item was encoded or skipped, 1 if some failed, 2 without the kernel.
    """
    try:
        from cadstore.encode import DEFAULT_TIMEOUT, encode_files
    except ImportError as exc:
        print(f"cadstore: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    inputs = args.inputs[0] if len(args.inputs) == 1 else args.inputs
    report = encode_files(
        inputs,
        args.output,
        workers=args.workers,
        timeout=DEFAULT_TIMEOUT if args.timeout is None else args.timeout,
        memory_limit_mb=args.memory_limit,
        histograms=not args.no_histograms,
        resume=not args.no_resume,
        merge=args.merge,
        progress=show_progress(args),
        durability=args.durability,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, default=str))
    else:
        _print_summary(report)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _print_summary(report: EncodeReport) -> None:
    encoded, skipped, failed = len(report.encoded), len(report.skipped), len(report.failed)
    print(
        f"encoded {encoded} item{'s' * (encoded != 1)} from {report.files} "
        f"file{'s' * (report.files != 1)} in {report.seconds:.1f} s "
        f"({skipped} skipped as already encoded, {failed} failed)"
    )
    if report.damaged:
        count, again = len(report.damaged), len(set(report.damaged) & set(report.encoded))
        print(
            f"{count} item{'s' * (count != 1)} left damaged by an earlier run (not yet "
            f"synced when it stopped); {again} encoded again"
        )
    print(f"items: {report.output_dir}/encoded")
    for failure in report.failed[:_SHOWN_FAILURES]:
        where = failure["item"]
        if failure.get("body_index") is not None:
            where += f" body {failure['body_index']}"
        print(f"  FAILED {where}: [{failure['reason']}] {failure['error']}")
    if failed > _SHOWN_FAILURES:
        print(f"  ... and {failed - _SHOWN_FAILURES} more")
    if failed:
        print(f"failures and their logs: {report.error_summary}")
    if report.dataset:
        print(f"dataset: {report.dataset}")
