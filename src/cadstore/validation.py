"""Checking stored data against a schema: every array, every metadata field it defines.

Every array is checked with :meth:`cadstore.schema.Schema.validate_array` (dimensions,
dtype family, ``min_value`` / ``max_value``, ``values``) and every metadata field the
schema defines with :meth:`~cadstore.schema.Schema.validate_metadata`; a field marked
``required`` that the item lacks is a problem. Schemas are extensible, so arrays and
metadata the schema does not mention, and declared arrays an item does not hold, are only
reported, unless ``strict`` makes them problems too.

A merged dataset is checked array by array (its ``metadata.json`` is not an item's
metadata, so metadata is not checked). A per-item array (one value per item on the
``item`` dimension) whose schema entry is a scalar is checked one item at a time.

The store itself is checked too: each node's own metadata document (``x/zarr.json``) must
agree with its copy in the consolidated metadata, which cadstore reads and a reader not
using consolidated metadata does not
(:meth:`~cadstore.format.hierarchy.ReadHierarchy.copy_problems`); that costs a read of
every document, so opening a store does not do it. It needs no schema: without one, only
the store is checked, and :attr:`Validation.skipped` says what was not. A store without
consolidated metadata (zarr-python writes none unless asked) has no copy to compare its
documents with: its check compares nothing, and ``skipped`` says so too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cadstore.artefacts import DATASET, Artefact
from cadstore.format.layout import ITEM_DIM, ITEM_NAMES, OFFSETS, file_id_code_name
from cadstore.progress import progress
from cadstore.storage.base import ROUTING_METADATA_KEY, SCHEMA_METADATA_KEY, SIZES_METADATA_KEY
from cadstore.tree import iter_leaves

if TYPE_CHECKING:
    from cadstore.schema import Schema

__all__ = [
    "SCHEMA_CHECKS",
    "SKIPPED_WHY",
    "STORE_CHECK",
    "Problem",
    "Validation",
    "load_schema",
    "load_schema_builder",
    "validate_artefact",
]

#: Problems listed per per-item array before the rest are only counted.
_MAX_ITEM_PROBLEMS = 10
#: What only a schema lets :func:`validate_artefact` check (:attr:`Validation.skipped`).
SCHEMA_CHECKS = ("arrays", "metadata")
#: The check of each node's document against its consolidated copy, in
#: :attr:`Validation.skipped` when the store has no copy to compare with.
STORE_CHECK = "store"
#: Why each check :attr:`Validation.skipped` may list was left out, as the reports say it.
SKIPPED_WHY = {
    **dict.fromkeys(SCHEMA_CHECKS, "no schema"),
    STORE_CHECK: "no consolidated metadata, so no copy to compare the nodes' documents with",
}
#: Metadata the storages write for themselves, never data to validate.
_STORAGE_METADATA = frozenset((SCHEMA_METADATA_KEY, ROUTING_METADATA_KEY, SIZES_METADATA_KEY))


@dataclass
class Problem:
    """One thing wrong with the data.

    Attributes
    ----------
    key
        The array or metadata key.
    kind
        ``"array"``, ``"metadata"``, ``"missing"`` (declared, absent), ``"undeclared"``,
        or ``"store"`` (a node's metadata document and its consolidated copy disagree).
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
    skipped
        What was not checked: :data:`SCHEMA_CHECKS` for want of a schema (an item's;
        a dataset's metadata, in its tables, is never checked against one), and
        :data:`STORE_CHECK` when the store has no consolidated metadata (its check
        compared nothing); :data:`SKIPPED_WHY` says why. Empty when everything was.
    """

    arrays_checked: int = 0
    arrays_declared: int = 0
    metadata_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    undeclared: list[str] = field(default_factory=list)
    undeclared_metadata: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Whether no problem was found."""
        return not self.problems


def load_schema(path: str, storage_options: Mapping[str, Any] | None = None) -> Schema:
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
    StorageNotFoundError, UnknownFormatError, CorruptStoreError
        If the file is absent, a directory or not text, or not a regular file (see
        ``SchemaBuilder.load_from_file``).
    SchemaError
        If it is not JSON or not a schema; the message names the file and the bad field.
    """
    from cadstore.schema import Schema

    return Schema.from_any(load_schema_builder(path, storage_options))


def load_schema_builder(path: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """Read a schema JSON file into a ``SchemaBuilder``: ``SchemaBuilder.load_from_file``."""
    from cadstore.schema import SchemaBuilder

    return SchemaBuilder.load_from_file(path, storage_options)


def _lookup(doc: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    # Metadata keys nest on "/" (save_metadata("a/b", v) stores {"a": {"b": v}}).
    node: Any = doc
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _dataset_paths(target: Artefact) -> list[str]:
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


def _check_arrays(target: Artefact, schema: Schema, result: Validation) -> None:
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
    for key, value in progress(leaves, total=total, desc="validating", unit="array"):
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


def _check_metadata(target: Artefact, schema: Schema, result: Validation) -> None:
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
        if key in _STORAGE_METADATA:
            continue
        # Metadata nests, so a top-level section counts as declared when a defined field
        # lies inside it ("processing/duration" declares "processing").
        if not any(d == key or d.startswith(key + "/") for d in defined):
            result.undeclared_metadata.append(key)


def validate_artefact(
    target: Artefact, schema: Schema | None, *, strict: bool = False
) -> Validation:
    """Check an opened target's store and, given a schema, its arrays and metadata.

    Parameters
    ----------
    target
        From :func:`~cadstore.artefacts.open_artefact`.
    schema
        The schema, or ``None`` when there is none (none stored, none given): then only
        the store is checked (a Zarr store's documents against their consolidated copy;
        a JSON store has nothing to check without one), and :attr:`Validation.skipped`
        lists the checks left out (the arrays, and an item's metadata). A Zarr store
        without consolidated metadata has no copy to compare: :data:`STORE_CHECK` is
        listed in ``skipped``, whatever the schema.
    strict
        Count undeclared arrays and metadata, and absent declared arrays, as problems.

    Returns
    -------
    Validation
        Counts and problems.
    """
    result = Validation()
    if schema is None:
        # A dataset's metadata is its tables', which no schema check reads.
        result.skipped.extend(SCHEMA_CHECKS if target.kind != DATASET else SCHEMA_CHECKS[:1])
    if target.hierarchy is not None:
        if target.hierarchy.consolidated:
            result.problems.extend(
                Problem(key, "store", message) for key, message in target.hierarchy.copy_problems()
            )
        else:
            result.skipped.append(STORE_CHECK)
    if schema is None:
        return result
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
