"""``cadstore schema PATH [-o FILE]``: export the schema stored with an item or dataset.

The schema comes out as the JSON document ``SchemaBuilder.build()`` returns (the form
``SchemaBuilder.load_from_file``, ``storage.set_schema`` and ``cadstore validate --schema``
read), so a schema taken from one encoded item can be edited, set on new items, or used to
check other items and datasets.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cadstore.artefacts import open_artefact
from cadstore.cli import EXIT_OK
from cadstore.cli._common import CommandError, print_lines
from cadstore.io.location import resolve
from cadstore.io.publish import check_replaceable, write_bytes_atomic


def register(sub: Any) -> None:
    """Add the ``schema`` subcommand.

    Parameters
    ----------
    sub
        The subparsers object of the ``cadstore`` parser.
    """
    parser = sub.add_parser(
        "schema",
        help="export the schema stored in an item or dataset as a JSON file",
        description=(
            "Print the schema stored in PATH (an item, a dataset, its .flow, or a JSON "
            "store) as JSON, or write it to FILE: the file SchemaBuilder.load_from_file "
            "and 'cadstore validate --schema' read."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="the item, dataset or JSON store")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the schema to FILE (folders are created) instead of printing it "
        "(default: print it)",
    )
    parser.set_defaults(func=run)


def _is_schema(head: bytes) -> bool:
    """Whether a file's first bytes are those of a schema's JSON (``domain`` and
    ``groups`` are in the first lines of every schema cadstore writes)."""
    return head.lstrip().startswith(b"{") and b'"domain"' in head and b'"groups"' in head


def run(args: argparse.Namespace) -> int:
    """Export the schema.

    Parameters
    ----------
    args
        The parsed arguments.

    Returns
    -------
    int
        0; a target without a schema is a :class:`CommandError` (exit status 2).
    """
    with open_artefact(
        args.path, args.storage_options, trust_manifest=args.trust_manifest
    ) as target:
        schema = target.schema()
        if schema is None:
            raise CommandError(f"{args.path} stores no schema")
        text = json.dumps(schema.to_dict(), indent=2) + "\n"
    if args.output is None:
        print_lines([text.rstrip("\n")])
        return EXIT_OK
    out = resolve(args.output, args.storage_options, shared=True)
    # Never over the item or dataset read, nor any file but a schema written before.
    check_replaceable(out, "a schema JSON file", _is_schema)
    write_bytes_atomic(out, text.encode())
    print(f"wrote the schema of {args.path} to {args.output}")
    return EXIT_OK
