"""``cadstore report DATASET [-o report.html]``: a self-contained page with plots.

Without ``-o`` the page is written beside the dataset, as ``<stem>.report.html``, so it
lands with the data it describes whatever folder the command runs from.
"""

from __future__ import annotations

import argparse
import os
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


def dataset_of(
    path: str, storage_options: dict[str, Any] | None = None, *, trust_manifest: bool = False
) -> str:
    """The ``.dataset`` that ``path`` names: itself, or the one a ``.flow`` manifest lists.

    Parameters
    ----------
    path
        A ``.dataset`` or a ``.flow`` manifest, a path or a URL.
    storage_options
        fsspec options for a URL.
    trust_manifest
        Follow a manifest's path outside its own folder (``--trust-manifest``).

    Returns
    -------
    str
        The dataset's path or URL, spelled as given when it is the ``.dataset`` beside
        the manifest. For a manifest that is not there, or that is not readable JSON
        (torn), that ``.dataset``: what a repair mends, from the tables the dataset
        carries (a killed first merge may have left it, with its lock). The table
        copies the manifest lists are not checked: one that is gone is what a repair
        publishes again.

    Raises
    ------
    CorruptStoreError
        If the manifest is there and unusable (see
        :func:`cadstore.format.manifest.read_manifest`) and no ``.dataset`` is beside it,
        or if it lists a dataset it may not (outside its folder, not trusted).
    """
    path = path.rstrip("/\\") or path
    if not path.endswith(".flow"):
        return path
    from cadstore.format.manifest import manifest_dataset
    from cadstore.io.location import resolve

    beside = path[: -len(".flow")] + ".dataset"
    where = resolve(path, storage_options, shared=True)
    if not where.exists():
        return beside
    listed = manifest_dataset(
        where, resolve(beside, storage_options, shared=True), trust_paths=trust_manifest
    ).path
    # The dataset beside the manifest, as it usually is, keeps the spelling given.
    same = listed == beside or (
        not where.remote and os.path.abspath(listed) == os.path.abspath(beside)
    )
    return beside if same else listed


def default_output(dataset: str) -> str:
    """``<stem>.report.html`` in the dataset's folder (or prefix, for a URL)."""
    stem = dataset[: -len(".dataset")] if dataset.endswith(".dataset") else dataset
    return stem + REPORT_SUFFIX


def run(args: argparse.Namespace) -> int:
    """Write the report."""
    try:
        import matplotlib  # noqa: F401 - checked here for a clear message

        from cadstore.dataset.report import check_report_output, write_report
    except ImportError as exc:
        raise ValueError("the report needs matplotlib: pip install 'cadstore[report]'") from exc
    if args.output:  # before the manifest is read (write_report checks it again)
        check_report_output(args.output, args.storage_options)
    dataset = dataset_of(args.dataset, args.storage_options, trust_manifest=args.trust_manifest)
    output = args.output or default_output(dataset)
    path = write_report(dataset, output, title=args.title, storage_options=args.storage_options)
    print(f"wrote {path}")
    return 0
