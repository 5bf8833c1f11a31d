"""``cadstore report DATASET -o report.html``: a self-contained page with plots."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``report`` subcommand."""
    parser = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a dataset",
        description="Plots of item sizes, labels, metadata and storage, in one HTML file.",
    )
    parser.add_argument(
        "dataset",
        help="the .dataset (its .infoset/.attribset are used too); a path or a URL",
    )
    parser.add_argument(
        "-o", "--output", default="report.html", help="HTML file to write (a path or a URL)"
    )
    parser.add_argument("--title", help="page title")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report."""
    try:
        import matplotlib  # noqa: F401 - checked here for a clear message

        from cadstore.dataset.report import write_report
    except ImportError as exc:
        raise ValueError("the report needs matplotlib: pip install 'cadstore[report]'") from exc
    dataset = args.dataset
    if dataset.endswith(".flow"):
        dataset = dataset[: -len(".flow")] + ".dataset"
    path = write_report(
        dataset, args.output, title=args.title, storage_options=args.storage_options
    )
    print(f"wrote {path}")
    return 0
