"""``cadstore validate PATH [--schema FILE]``: check stored data against a schema.

Without ``--schema`` the target is checked against the schema stored with it (an item's
own schema, or the schema a dataset was merged with); ``cadstore schema PATH -o FILE``
exports that schema to a file to edit or to check other targets against. A Zarr item or
dataset that stores none (another writer's) gets the check that needs no schema, of its
store, and the output says the arrays and metadata were not checked. A Zarr store without
consolidated metadata has no copy to check its documents against: the output says its
store check compared nothing, and why. What is checked is :mod:`cadstore.validation`'s;
this module handles the arguments and the output.

Exit status: 0 when valid, 1 when problems were found, 2 when the schema file is not a
schema, ``PATH`` cannot be read, or ``PATH`` is a JSON store that stores no schema and
none was given (nothing could be checked).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from cadstore.artefacts import DATASET, Artefact, open_artefact
from cadstore.cli import EXIT_OK, EXIT_PROBLEMS
from cadstore.cli._common import CommandError, add_json_option, print_json, print_lines
from cadstore.validation import (
    SKIPPED_WHY,
    STORE_CHECK,
    Validation,
    load_schema,
    validate_artefact,
)

if TYPE_CHECKING:
    from cadstore.schema import Schema

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``validate`` subcommand.

    Parameters
    ----------
    sub
        The subparsers object of the ``cadstore`` parser.
    """
    parser = sub.add_parser(
        "validate",
        help="check an item, dataset or JSON store against its schema or a schema file",
        description=(
            "Check every array of PATH against a schema (dims, dtype, value rules) and "
            "every metadata field the schema defines: the schema in FILE, or without "
            "--schema the one stored in PATH (export it with 'cadstore schema PATH -o "
            "FILE'). A Zarr item or dataset without a schema gets its store checked "
            "only (each node's document against its consolidated copy, when it has "
            "consolidated metadata). Exit status 0: valid; 1: problems found; 2: bad schema file, "
            "unreadable PATH, or a JSON store with no schema to check against."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="the item, dataset or JSON store")
    parser.add_argument(
        "--schema",
        metavar="FILE",
        help="the schema, a JSON file (default: the schema stored in PATH)",
    )
    add_json_option(parser)
    parser.add_argument(
        "--strict",
        action="store_true",
        help=(
            "also count as problems arrays and metadata the schema does not declare, and "
            "declared arrays that are absent"
        ),
    )
    parser.set_defaults(func=run)


def _render(
    args: argparse.Namespace, target: Artefact, schema: Schema | None, result: Validation
) -> list[str]:
    if schema is None:
        done = (
            "and it has no consolidated metadata: nothing was compared"
            if STORE_CHECK in result.skipped
            else "so only its store was checked"
        )
        lines = [
            f"{target.label} {target.path}: no schema (none stored, none given with "
            f"--schema FILE), {done}"
            # Strict mode counts what a schema declares, or does not.
            + ("; --strict counts nothing more without a schema" if args.strict else ""),
        ]
    else:
        source = args.schema or f"stored in the {target.label}"
        lines = [
            f"{target.label} {target.path} against schema {schema.domain} {schema.version} "
            f"({source})" + (", strict" if args.strict else ""),
            *_render_checks(args, target, result),
        ]
    if result.skipped:
        lines.append(_render_skipped(result.skipped))
    if result.valid:
        lines.append("valid")
    else:
        count = len(result.problems)
        lines.append(f"{count} problem{'s' if count != 1 else ''}:")
        lines.extend(f"  {p.message}" for p in result.problems)
    return lines


def _render_skipped(skipped: list[str]) -> str:
    """The line naming the checks left out, by why (:data:`~cadstore.validation.SKIPPED_WHY`):
    ``not checked: arrays, metadata (no schema); store (no consolidated metadata, ...)``."""
    by_why: dict[str, list[str]] = {}
    for name in skipped:
        by_why.setdefault(SKIPPED_WHY[name], []).append(name)
    return "  not checked: " + "; ".join(
        f"{', '.join(names)} ({why})" for why, names in by_why.items()
    )


def _render_checks(args: argparse.Namespace, target: Artefact, result: Validation) -> list[str]:
    """The lines on what the schema checks read and what they only noted."""
    lines = []
    checked = (
        f"  {result.arrays_checked} arrays read, {result.arrays_declared} declared in the schema"
    )
    if target.kind != DATASET:
        fields = result.metadata_checked
        checked += f"; {fields} metadata field{'' if fields == 1 else 's'} checked"
    lines.append(checked)
    if not args.strict:
        # Informational only: schemas are extensible and items may omit arrays.
        if result.undeclared:
            lines.append(f"  arrays not in the schema: {', '.join(result.undeclared)}")
        if result.undeclared_metadata:
            lines.append(f"  metadata not in the schema: {', '.join(result.undeclared_metadata)}")
        if result.missing:
            lines.append(f"  declared but absent: {', '.join(result.missing)}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Run ``validate``.

    Parameters
    ----------
    args
        The parsed arguments.

    Returns
    -------
    int
        0 when valid, 1 when problems were found.
    """
    # The schema first: a bad schema file is the cheaper mistake to report.
    given = None if args.schema is None else load_schema(args.schema, args.storage_options)
    with open_artefact(
        args.path, args.storage_options, trust_manifest=args.trust_manifest
    ) as target:
        schema = given or target.schema()
        if schema is None and target.hierarchy is None:
            # A JSON store: without a schema there is nothing to check.
            raise CommandError(
                f"{args.path} stores no schema to check against; pass --schema FILE "
                "(a schema JSON file, e.g. one exported from another item with "
                "'cadstore schema ITEM -o schema.json')"
            )
        result = validate_artefact(target, schema, strict=args.strict)
        if args.json:
            print_json(
                {
                    "path": args.path,
                    "kind": target.kind,
                    "schema": None
                    if schema is None
                    else {
                        "file": args.schema,
                        "stored": args.schema is None,
                        "domain": schema.domain,
                        "version": schema.version,
                    },
                    "skipped": result.skipped,
                    "skipped_why": {name: SKIPPED_WHY[name] for name in result.skipped},
                    "strict": args.strict,
                    "valid": result.valid,
                    "arrays_checked": result.arrays_checked,
                    "arrays_declared": result.arrays_declared,
                    "metadata_checked": None
                    if target.kind == DATASET or schema is None
                    else result.metadata_checked,
                    "problems": [vars(p) for p in result.problems],
                    "undeclared": result.undeclared,
                    "undeclared_metadata": result.undeclared_metadata,
                    "missing": result.missing,
                }
            )
        else:
            print_lines(_render(args, target, schema, result))
    return EXIT_OK if result.valid else EXIT_PROBLEMS
