"""``cadstore export-json PATH -o DIR``: copy an item into a JSON store.

The export itself is :func:`cadstore.export.export_json`'s: atomic, and it never deletes
anything but a JSON store's own files (only with ``--overwrite``).
"""

from __future__ import annotations

import argparse
from typing import Any

from cadstore.artefacts import open_artefact
from cadstore.cli._common import (
    add_json_option,
    format_bytes,
    format_table,
    print_json,
    print_lines,
)
from cadstore.export import export_json

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``export-json`` subcommand.

    Parameters
    ----------
    sub
        The subparsers object of the ``cadstore`` parser.
    """
    parser = sub.add_parser(
        "export-json",
        help="copy an item's data and metadata into a JSON store directory",
        description=(
            "Copy every key, the metadata and the schema of PATH (an item .data file or "
            "directory, or a JSON store) into a JSON store at DIR, one JSON file per key."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="the item or JSON store to export")
    parser.add_argument(
        "-o", "--output", metavar="DIR", required=True, help="the JSON store directory to write"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the JSON store already in DIR (only JSON store files are removed)",
    )
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``export-json``.

    Parameters
    ----------
    args
        The parsed arguments.

    Returns
    -------
    int
        0.
    """
    with open_artefact(
        args.path, args.storage_options, trust_manifest=args.trust_manifest
    ) as target:
        result = export_json(target, args.output, overwrite=args.overwrite)
        label = target.label
    if args.json:
        print_json(
            {
                "path": args.path,
                "output": result.output,
                "keys": result.keys,
                "metadata_fields": result.metadata_fields,
                "schema": result.schema,
                "files": result.files,
                "bytes": result.total_bytes,
            }
        )
        return 0
    rows = []
    for entry in result.keys:
        what = "group" if entry["type"] == "group" else f"{entry['dtype']} {tuple(entry['shape'])}"
        rows.append([entry["key"], what, entry["file"], format_bytes(entry["bytes"])])
    lines = [f"exported {label} {args.path} to JSON store {result.output}", ""]
    lines.extend(format_table(["KEY", "VALUE", "FILE", "SIZE"], rows, right={3}))
    lines.append("")
    fields = len(result.metadata_fields)
    lines.append(
        f"metadata: {fields} field{'s' if fields != 1 else ''} "
        + ("and the schema " if result.schema else "")
        + "in metadata.json"
    )
    lines.append(
        f"{len(result.keys)} keys, {len(result.files)} files, "
        f"{format_bytes(result.total_bytes)} written"
    )
    print_lines(lines)
    return 0
