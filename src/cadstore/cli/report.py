"""``cadstore report DATASET [-o report.html]``: a self-contained page with plots.

Without ``-o`` the page is written beside the dataset, as ``<stem>.report.html``, so it
lands with the data it describes whatever folder the command runs from.
"""

from __future__ import annotations

import argparse
from typing import Any

#: What the default output file is called, after the dataset's stem.
REPORT_SUFFIX = ".report.html"


def register(sub: Any) -> None:
    """Add the ``report`` subcommand."""
    parser = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a dataset",
        description="Plots of item sizes, geometry, labels per split, part thumbnails and "
        "storage, in one HTML file.",
    )
    parser.add_argument(
        "dataset",
        help="the .dataset or its .flow manifest (its .infoset/.attribset are used too); "
        "a path or a URL",
    )
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        help=f"HTML file to write, a path or a URL (default: <stem>{REPORT_SUFFIX} beside "
        "the dataset, e.g. parts.dataset -> parts.report.html)",
    )
    parser.add_argument("--title", help="page title (default: the dataset's name)")
    parser.set_defaults(func=run)


def dataset_of(path: str) -> str:
    """The ``.dataset`` that ``path`` names: itself, or the one beside a ``.flow``."""
    path = path.rstrip("/\\") or path
    return path[: -len(".flow")] + ".dataset" if path.endswith(".flow") else path


def default_output(dataset: str) -> str:
    """``<stem>.report.html`` in the dataset's folder (or prefix, for a URL)."""
    stem = dataset[: -len(".dataset")] if dataset.endswith(".dataset") else dataset
    return stem + REPORT_SUFFIX


def run(args: argparse.Namespace) -> int:
    """Write the report."""
    try:
        import matplotlib  # noqa: F401 - checked here for a clear message

        from cadstore.dataset.report import write_report
    except ImportError as exc:
        raise ValueError("the report needs matplotlib: pip install 'cadstore[report]'") from exc
    dataset = dataset_of(args.dataset)
    output = args.output or default_output(dataset)
    path = write_report(dataset, output, title=args.title, storage_options=args.storage_options)
    print(f"wrote {path}")
    return 0
