"""``cadstore validate PATH [--schema FILE]``: check stored data against a schema.

Without ``--schema`` the target is checked against the schema stored with it (an item's
own schema, or the schema a dataset was merged with); ``cadstore schema PATH -o FILE``
exports that schema to a file to edit or to check other targets against.

Every array is checked with :meth:`cadstore.schema.Schema.validate_array` (dimensions,
dtype family, ``min_value`` / ``max_value``, ``values``) and every metadata field the
schema defines with :meth:`~cadstore.schema.Schema.validate_metadata`; a field marked
``required`` that the item lacks is a problem. Schemas are extensible, so arrays and
metadata the schema does not mention, and declared arrays an item does not hold, are only
reported, unless ``--strict`` makes them problems too.

A merged dataset is checked array by array (its ``metadata.json`` is not an item's
metadata, so metadata is not checked). A per-item array (one value per item on the
``item`` dimension) whose schema entry is a scalar is checked one item at a time.

Exit status: 0 when valid, 1 when problems were found, 2 when the schema file is not a
schema, ``PATH`` cannot be read, or ``PATH`` stores no schema and none was given.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cadstore.cli import EXIT_OK, EXIT_PROBLEMS
from cadstore.cli._common import (
    DATASET,
    STORAGE_METADATA,
    CommandError,
    Target,
    add_json_option,
    iter_leaves,
    open_target,
    print_json,
    print_lines,
    progress,
)
from cadstore.errors import SchemaError
from cadstore.fs import is_url

if TYPE_CHECKING:
    from cadstore.schema import Schema

__all__ = [
    "Problem",
    "Validation",
    "load_schema",
    "load_schema_builder",
    "register",
    "run",
    "validate_target",
]

#: Problems listed per per-item array before the rest are only counted.
_MAX_ITEM_PROBLEMS = 10


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
            "FILE'). Exit status 0: valid; 1: problems found; 2: bad schema file, "
            "unreadable PATH, or no schema to check against."
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


@dataclass
class Problem:
    """One thing wrong with the data.

    Attributes
    ----------
    key
        The array or metadata key.
    kind
        ``"array"``, ``"metadata"``, ``"missing"`` (declared, absent) or ``"undeclared"``.
    message
        What is wrong, starting with the key.
    """

    key: str
    kind: str
    message: str


@dataclass
class Validation:
    """The outcome of checking one target against one schema.

    Attributes
    ----------
    arrays_checked
        Arrays read.
    arrays_declared
        Of those, arrays the schema declares (the ones actually validated).
    metadata_checked
        Metadata fields the schema defines that were validated.
    problems
        Everything wrong.
    undeclared
        Arrays the schema does not mention.
    undeclared_metadata
        Top-level metadata fields (or sections) the schema does not mention.
    missing
        Arrays the schema declares that the target lacks (``group/array``).
    """

    arrays_checked: int = 0
    arrays_declared: int = 0
    metadata_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    undeclared: list[str] = field(default_factory=list)
    undeclared_metadata: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Whether no problem was found."""
        return not self.problems


def load_schema(path: str, storage_options: dict[str, Any] | None = None) -> Schema:
    """Read a schema JSON file.

    Parameters
    ----------
    path
        The file, a local path or a URL.
    storage_options
        fsspec options for a URL.

    Returns
    -------
    Schema
        The parsed schema.

    Raises
    ------
    CommandError
        If the file cannot be read.
    SchemaError
        If it is not JSON or not a schema; the message names the file and the bad field.
    """
    from cadstore.schema import Schema

    return Schema.from_any(load_schema_builder(path, storage_options))


def load_schema_builder(path: str, storage_options: dict[str, Any] | None = None) -> Any:
    """Read a schema JSON file into a ``SchemaBuilder``; as :func:`load_schema`."""
    from cadstore.schema import SchemaBuilder

    if not is_url(path):
        if not os.path.exists(path):
            raise CommandError(f"schema file {path}: no such file")
        if os.path.isdir(path):
            raise CommandError(f"schema file {path} is a directory, not a JSON file")
        try:
            return SchemaBuilder.load_from_file(path)
        except UnicodeDecodeError as exc:
            raise CommandError(f"schema file {path} is not UTF-8 JSON text ({exc.reason})") from exc
    from cadstore.dataset.access import dataset_filesystem

    fs, located = dataset_filesystem(path, storage_options)
    try:
        text = fs.read_bytes(located).decode("utf-8")
    except FileNotFoundError:
        raise CommandError(f"schema file {path}: no such object") from None
    except UnicodeDecodeError as exc:
        raise CommandError(f"schema file {path} is not UTF-8 JSON text ({exc.reason})") from exc
    # The messages of SchemaBuilder.load_from_file, naming the URL.
    try:
        return SchemaBuilder.from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}: not a valid JSON schema file: {exc}") from exc
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from exc


def _lookup(doc: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    # Metadata keys nest on "/" (save_metadata("a/b", v) stores {"a": {"b": v}}).
    node: Any = doc
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _dataset_paths(target: Target) -> list[str]:
    from cadstore.dataset.layout import ITEM_NAMES, OFFSETS, file_id_code_name

    hierarchy = target.hierarchy
    assert hierarchy is not None
    paths = []
    for path in hierarchy.arrays:
        group, _, name = path.rpartition("/")
        # Bookkeeping the merge adds: no schema declares it, and strict mode must not
        # call it undeclared.
        if path == ITEM_NAMES or name in (OFFSETS, file_id_code_name(group)):
            continue
        paths.append(path)
    return paths


def _per_item_problems(schema: Schema, key: str, values: np.ndarray) -> list[Problem]:
    problems: list[Problem] = []
    failing = 0
    for code in range(len(values)):
        found = schema.validate_array(key, values[code])
        if found:
            failing += 1
            if failing <= _MAX_ITEM_PROBLEMS:
                problems.extend(Problem(key, "array", f"item {code}: {m}") for m in found)
    if failing > _MAX_ITEM_PROBLEMS:
        problems.append(
            Problem(key, "array", f"{key}: {failing - _MAX_ITEM_PROBLEMS} more items fail")
        )
    return problems


def _check_arrays(target: Target, schema: Schema, result: Validation) -> None:
    from cadstore.dataset.layout import ITEM_DIM

    is_dataset = target.kind == DATASET
    total: int | None = None
    leaves: Iterable[tuple[str, Any]]
    if is_dataset:
        hierarchy = target.hierarchy
        assert hierarchy is not None
        paths = _dataset_paths(target)
        # Whole dataset arrays can be large: read them one at a time, as checked.
        leaves = ((path, hierarchy.read_leaf(path)) for path in paths)
        total = len(paths)
    else:
        leaves = iter_leaves(target.require_storage("validate"))
    covered: set[tuple[str, str]] = set()
    for key, value in progress(leaves, total=total, desc="validating"):
        result.arrays_checked += 1
        spec = schema.array_spec(key)
        if spec is None:
            result.undeclared.append(key)
            continue
        group, name, declared = spec
        covered.add((group, name))
        result.arrays_declared += 1
        if is_dataset and isinstance(value, np.ndarray):
            assert target.hierarchy is not None
            dims = target.hierarchy.meta(key).dims
            if dims and dims[0] == ITEM_DIM and len(declared["dims"]) == value.ndim - 1:
                # The merge gathers an item's 0-d value into one row per item; the schema
                # describes the item's value, so check each item's.
                result.problems.extend(_per_item_problems(schema, key, value))
                continue
        result.problems.extend(Problem(key, "array", m) for m in schema.validate_array(key, value))
    result.missing = [
        f"{group}/{name}"
        for group in schema.groups
        for name in schema.array_names(group)
        if (group, name) not in covered
    ]


def _check_metadata(target: Target, schema: Schema, result: Validation) -> None:
    doc = target.metadata()
    fields = schema.metadata_fields()
    defined = [*fields["file_level"], *fields["categorical"]]
    for name in defined:
        found, value = _lookup(doc, name)
        if not found:
            definition = schema.metadata_definition(name) or {}
            if definition.get("required"):
                result.problems.append(
                    Problem(name, "metadata", f"{name}: required metadata field is missing")
                )
            continue
        result.metadata_checked += 1
        result.problems.extend(
            Problem(name, "metadata", m) for m in schema.validate_metadata(name, value)
        )
    for key in doc:
        if key in STORAGE_METADATA:
            continue
        # Metadata nests, so a top-level section counts as declared when a defined field
        # lies inside it ("processing/duration" declares "processing").
        if not any(d == key or d.startswith(key + "/") for d in defined):
            result.undeclared_metadata.append(key)


def validate_target(target: Target, schema: Schema, *, strict: bool = False) -> Validation:
    """Check an opened target against a schema.

    Parameters
    ----------
    target
        From :func:`~cadstore.cli._common.open_target`.
    schema
        The schema.
    strict
        Count undeclared arrays and metadata, and absent declared arrays, as problems.

    Returns
    -------
    Validation
        Counts and problems.
    """
    result = Validation()
    _check_arrays(target, schema, result)
    if target.kind != DATASET:
        _check_metadata(target, schema, result)
    if strict:
        result.problems.extend(
            Problem(key, "missing", f"{key}: declared in the schema but absent")
            for key in result.missing
        )
        result.problems.extend(
            Problem(key, "undeclared", f"{key}: array not declared in the schema")
            for key in result.undeclared
        )
        result.problems.extend(
            Problem(key, "undeclared", f"{key}: metadata field not defined in the schema")
            for key in result.undeclared_metadata
        )
    return result


def _render(
    args: argparse.Namespace, target: Target, schema: Schema, result: Validation
) -> list[str]:
    source = args.schema or f"stored in the {target.label}"
    lines = [
        f"{target.label} {target.path} against schema {schema.domain} {schema.version} "
        f"({source})" + (", strict" if args.strict else "")
    ]
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
    if result.valid:
        lines.append("valid")
    else:
        count = len(result.problems)
        lines.append(f"{count} problem{'s' if count != 1 else ''}:")
        lines.extend(f"  {p.message}" for p in result.problems)
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
    with open_target(args.path, args.storage_options) as target:
        schema = given or target.schema()
        if schema is None:
            raise CommandError(
                f"{args.path} stores no schema to check against; pass --schema FILE "
                "(a schema JSON file, e.g. one exported from another item with "
                "'cadstore schema ITEM -o schema.json')"
            )
        result = validate_target(target, schema, strict=args.strict)
        if args.json:
            print_json(
                {
                    "path": args.path,
                    "kind": target.kind,
                    "schema": {
                        "file": args.schema,
                        "stored": args.schema is None,
                        "domain": schema.domain,
                        "version": schema.version,
                    },
                    "strict": args.strict,
                    "valid": result.valid,
                    "arrays_checked": result.arrays_checked,
                    "arrays_declared": result.arrays_declared,
                    "metadata_checked": None if target.kind == DATASET else result.metadata_checked,
                    "problems": [vars(p) for p in result.problems],
                    "undeclared": result.undeclared,
                    "undeclared_metadata": result.undeclared_metadata,
                    "missing": result.missing,
                }
            )
        else:
            print_lines(_render(args, target, schema, result))
    return EXIT_OK if result.valid else EXIT_PROBLEMS
