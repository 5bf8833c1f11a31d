"""``DatasetInfo``: the ``.infoset`` and ``.attribset`` Parquet files of a merged dataset.

Every cadstore item carries a metadata document: ``files_summary/<name>.json`` written by
``OptStorage.close()``, and the same document as ``metadata.json`` inside the item's
``.data`` file. ``DatasetInfo`` reads either (so a merge never depends on
``files_summary/`` existing), routes each field and writes two tables. A ``.data`` file
another writer made (zarr-python's ``ZipStore``) may have no ``metadata.json``: it is an
item without metadata, as the merge's scan and ``OptStorage.load_metadata`` read it,
unless a member of a damaged name stands in its place (an error).

``.infoset``, one row per item code, sorted by ``id``:

==================  =========  ===========================================================
column              type       content
==================  =========  ===========================================================
``name``            string     the item name (``<name>`` of ``<name>.zarr.data``)
``id``              int64      the item code, equal to ``file_id_code_*`` in the dataset
``description``     string     the ``"Item"`` metadata value (the source CAD path), or ``""``
*file-level*        varies     one column per file-level field: int64 when every value is
                               an integer (float64 when the schema declares a float dtype),
                               float64 for other numbers, bool, or string; null if missing
*categorical*       varies     one column per categorical field, holding the item's value
                               (int64, bool or string); see below
``subset``          string     ``"N/A"`` until a split is recorded
``table_name``      string     ``"file_info"`` unless another name is given
==================  =========  ===========================================================

Field names become lower snake case columns (``"Flow name"`` gives ``flow_name``, nested
``"a/b"`` gives ``a_b``); a name that clashes with a fixed column gets a ``meta_`` prefix and
one that clashes with another field a ``_2``, ``_3``... suffix. The Parquet schema metadata
key ``cadstore`` maps every column back to its field and route.

Categorical per-item values are columns of the infoset too, a deliberate addition to the
vendor layout: explorers filter items by label, and without the column the only link from
an item to its label would be lost. The same fields also get their tables in the attribset.

``.attribset``, one long table with columns ``id`` (int64), ``name``, ``description``
(``"not set"`` when unknown) and ``table_name``:

* description tables, the ``descriptions`` metadata section (``{table: {code: label}}``,
  e.g. ``face_types``) merged across items; a code given two labels keeps the first, with a
  warning naming the items that give each label;
* one table per categorical field, with a row per distinct value seen. Integer (and bool)
  values are their own ids, named by the schema's ``labels`` when
  ``define_categorical_metadata(values=, labels=)`` gives one, else ``str(value)``. Other
  values are strings numbered 0..k-1 in sorted order (an append keeps the codes the
  dataset has and numbers new values after them, see :func:`extend_attribset`); a schema
  label for one of them goes to ``description``. When a description table has the
  field's name, its rows come first and the field adds only the codes it lacks.

Routing of one field, first match wins: the route recorded in the document's
``_metadata_routing`` (what the storage decided when the value was saved), then the schema
rules (:meth:`cadstore.schema.Schema.route_metadata`: definition, pattern, type). When
neither a definition nor a pattern matches the key but one matches its snake-case column name,
that match is used, so ``"Flow name"`` follows the ``flow_name`` pattern as the vendor's
``flow_name`` column does. The storage's own keys (``_storage_schema``,
``_metadata_routing``, ``file_sizes_KB``) are never routed; ``"Item"`` fills
``description``; nested sections are flattened into ``/``-joined fields. A field routed two
ways by different items keeps its first route, with a warning.

Nothing is ever deleted unless ``delete_info_files=True``, and then only ``.json`` inputs
whose rows were written, once both Parquet files exist: a failed write loses nothing, and the
JSON of an item without a ``.data`` stays as evidence of the failure (it is listed in
:attr:`DatasetInfo.errors`).

Examples
--------
>>> info = DatasetInfo(json_files, "out/flow.infoset", "out/flow.attribset")  # doctest: +SKIP
>>> info.parse_info_files()                                                     # doctest: +SKIP
>>> info.build_code_mappings(data_files)                                        # doctest: +SKIP
>>> info.store_info_to_parquet()                                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cadstore.errors import CorruptStoreError, MergeError, SchemaError, os_problem
from cadstore.format.hierarchy import ReadHierarchy
from cadstore.format.jsoncodec import decode_metadata, parse_document
from cadstore.format.limits import DEFAULT_LIMITS, Limits
from cadstore.io.location import Location, resolve
from cadstore.io.parquet import write_table
from cadstore.io.publish import write_atomic
from cadstore.io.sources import open_source
from cadstore.merging.scan import reading_item
from cadstore.schema import Schema, SchemaBuilder
from cadstore.storage.base import (
    ROUTING_METADATA_KEY,
    SCHEMA_METADATA_KEY,
    SIZES_METADATA_KEY,
)
from cadstore.storage.opt import METADATA_FILE

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "ATTRIBSET_COLUMNS",
    "DESCRIPTIONS_KEY",
    "FIXED_INFOSET_COLUMNS",
    "NOT_SET",
    "PARQUET_METADATA_KEY",
    "SOURCE_KEY",
    "DatasetInfo",
    "build_info",
    "column_name",
    "extend_attribset",
    "extend_table",
    "item_name_from_path",
    "item_tables",
    "tables_summary",
]

FILE_LEVEL = "file_level"
CATEGORICAL = "categorical"
#: Metadata key of the item's source CAD path; it fills the ``description`` column.
SOURCE_KEY = "Item"
#: Metadata section of description tables (``{table: {code: label}}``).
DESCRIPTIONS_KEY = "descriptions"
#: ``description`` of an attribute row nobody described.
NOT_SET = "not set"
#: ``subset`` of an item no split has been recorded for.
NO_SUBSET = "N/A"
#: Infoset columns that are not metadata fields.
FIXED_INFOSET_COLUMNS = ("name", "id", "description", "subset", "table_name")
#: Columns of the attribset, in order.
ATTRIBSET_COLUMNS = ("id", "name", "description", "table_name")
#: Parquet schema metadata key holding what each column was made from.
PARQUET_METADATA_KEY = b"cadstore"

# Keys the storage writes for itself: never data about the part.
_INTERNAL_KEYS = frozenset((SCHEMA_METADATA_KEY, ROUTING_METADATA_KEY, SIZES_METADATA_KEY))
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_DTYPES = frozenset(("float16", "float32", "float64"))
# Orphans and similar lists are summarised in warnings; past this many names, only a count.
_NAMES_SHOWN = 5


class _Unreadable(Exception):
    """One input that cannot be used; the message is the reason recorded in ``errors``."""


def item_name_from_path(path: str | os.PathLike[str]) -> str:
    """Return the item name of a ``.data``, ``.zarr`` or summary ``.json`` path.

    ``dir/<name>.zarr.data``, ``dir/<name>.data``, ``dir/<name>.zarr`` and
    ``files_summary/<name>.json`` all give ``<name>``.

    Parameters
    ----------
    path
        The file or directory.

    Returns
    -------
    str
        The item name.
    """
    base = os.path.basename(os.fspath(path).rstrip("/\\"))
    for suffix in (".json", ".data", ".zarr"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_WORD = re.compile(r"[^0-9a-z]+")


def column_name(key: str) -> str:
    """Return the lower snake case column name of metadata field ``key``.

    Parameters
    ----------
    key
        A field name, possibly ``/``-nested (``"Flow name"``, ``"processingTime"``, ``"a/b"``).

    Returns
    -------
    str
        ``"flow_name"``, ``"processing_time"``, ``"a_b"``; ``"field"`` if nothing is left.
    """
    snake = _CAMEL_BOUNDARY.sub("_", key).lower()
    return _NOT_WORD.sub("_", snake).strip("_") or "field"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _float_holds(value: int) -> bool:
    """Whether a float64 holds the integer ``value`` exactly (``float()`` of one beyond
    its range raises)."""
    try:
        return float(value) == value
    except OverflowError:
        return False


def _file_level_kind(values: Sequence[Any], declared_float: bool) -> tuple[str, Any]:
    """The column type of a file-level field holding ``values`` (``None`` skipped), and
    why it holds strings when numbers are among them: the integer no column type holds
    exactly beside the others, or ``"mixed"``.

    ``declared_float``: the schema declares the field a float, so integers make float64,
    unless one of them is beyond what float64 holds exactly: that field's column holds
    strings, as it does when the integer is beside floats (it was rounded, unannounced).
    """
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool", None
    if (
        present
        and not declared_float
        and all(_is_int(v) and _INT64_MIN <= v <= _INT64_MAX for v in present)
    ):
        return "int64", None
    # A field declared float stays float even when every value happens to be whole.
    if all(isinstance(v, int | float) for v in present):
        inexact = next((v for v in present if _is_int(v) and not _float_holds(v)), None)
        return ("float64", None) if inexact is None else ("string", inexact)
    if not all(isinstance(v, str) for v in present):
        return "string", "mixed"
    return "string", None


def _categorical_value_kind(values: Sequence[Any]) -> str:
    """``"bool"``, ``"int"`` (values are their own codes) or ``"str"`` (values numbered)
    for a categorical field holding ``values`` (``None`` skipped)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if all(isinstance(v, int) and _INT64_MIN <= v <= _INT64_MAX for v in present):
        return "int"
    return "str"


def _is_scalar(value: object) -> bool:
    return isinstance(value, bool | int | float | str)


def _flatten(key: str, value: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for sub, inner in value.items():
            yield from _flatten(f"{key}/{sub}", inner)
    else:
        yield key, value


def _items_text(names: Sequence[str]) -> str:
    """The items a warning is about: ``item 'p0'``, or ``3 items, first 'p0'``."""
    if len(names) == 1:
        return f"item {names[0]!r}"
    return f"{len(names)} items, first {names[0]!r}"


def _labels_clash_text(labels: Sequence[tuple[_Attribute, str]]) -> str:
    """What a warning says of a code given several labels, the first kept: ``is ...;
    keeping ...``.

    ``labels`` are ``(label, whose)``, ``whose`` saying where each comes from (``(item
    'p0')``, ``from set_attributes``; may be empty). Labels of different names are named;
    one name with different descriptions is named once, with the descriptions quoted
    (``is 'plane' with different descriptions, 'Flat face' (item 'p0') and 'Planar'
    (item 'p1'); keeping 'Flat face'``); when some names differ and some are alike, each
    label is named with its description.
    """

    def listed(parts: list[str]) -> str:
        return f"{', '.join(parts[:-1])} and {parts[-1]}"

    def placed(text: str, whose: str) -> str:
        return f"{text} {whose}" if whose else text

    def description(attribute: _Attribute) -> str:
        return "none" if attribute.description == NOT_SET else repr(attribute.description)

    def described(attribute: _Attribute) -> str:
        if attribute.description == NOT_SET:
            return f"{attribute.name!r} with no description"
        return f"{attribute.name!r} described {attribute.description!r}"

    first = labels[0][0]
    names = {attribute.name for attribute, _ in labels}
    if len(names) == len(labels):
        held = [placed(repr(attribute.name), whose) for attribute, whose in labels]
        return f"is {listed(held)}; keeping {first.name!r}"
    if len(names) == 1:
        held = [placed(description(attribute), whose) for attribute, whose in labels]
        return (
            f"is {first.name!r} with different descriptions, {listed(held)}; "
            f"keeping {description(first)}"
        )
    held = [placed(described(attribute), whose) for attribute, whose in labels]
    return f"is {listed(held)}; keeping {described(first)}"


def _is_code(value: Any, code: int) -> bool:
    """Whether an integer or bool ``value`` of a categorical field is its own ``code``."""
    return (isinstance(value, int) or _is_numpy_int(value)) and int(value) == code


def _names_text(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_NAMES_SHOWN])
    more = f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else ""
    return shown + more


@dataclass
class _Item:
    """One parsed metadata document."""

    name: str
    path: str
    description: str
    # True when ``path`` is a summary JSON file (the only kind of input that may be deleted).
    from_json: bool
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Field:
    """A routed metadata field and how its column is typed."""

    key: str
    route: str
    column: str = ""


@dataclass
class _Attribute:
    name: str
    description: str = NOT_SET


class DatasetInfo:
    """Build the ``.infoset`` and ``.attribset`` of a merged dataset from item metadata.

    Parameters
    ----------
    info_files
        Metadata inputs: ``files_summary/<name>.json`` files, ``.data`` files (their
        ``metadata.json`` is read), Zarr directory stores, or one directory of ``.json``
        files. Order matters only for which duplicate or conflicting value wins.
    merged_store_path
        The ``.infoset`` file to write.
    attribute_file_path
        The ``.attribset`` file to write.
    schema
        Anything :meth:`cadstore.schema.Schema.from_any` accepts, or ``None``: then the
        ``_storage_schema`` of the first document that has one, else the default routing
        rules of ``SchemaBuilder()``.
    delete_info_files
        Delete the ``.json`` inputs whose rows were written, once both Parquet files are
        written. Off by default (the vendor deletes them in ``parse_info_files``).
    limits
        Size limits for reading metadata (``max_metadata_bytes``).
    storage_options
        fsspec options (credentials, endpoint) for inputs and outputs given as URLs
        (``s3://bucket/...``); otherwise fsspec's configuration and the environment apply.

    Attributes
    ----------
    errors
        ``{"file": path, "error": reason}`` for every input skipped and every item without a
        matching ``.data``.
    warnings
        Human-readable notes on conflicts and values that could not be exported.
    code_mappings
        ``{item name: code}``, from :meth:`build_code_mappings` or :meth:`set_code_mappings`.
    deleted_files
        The inputs deleted because ``delete_info_files=True``.

    Raises
    ------
    SchemaError
        If ``schema`` is given and is not a valid schema.
    """

    def __init__(
        self,
        info_files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
        merged_store_path: str | os.PathLike[str],
        attribute_file_path: str | os.PathLike[str],
        schema: Any = None,
        *,
        delete_info_files: bool = False,
        limits: Limits = DEFAULT_LIMITS,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.storage_options = dict(storage_options) if storage_options else None
        self.info_files: list[str] = _expand_inputs(info_files, self.storage_options)
        self.merged_store_path = os.fspath(merged_store_path)
        self.attribute_file_path = os.fspath(attribute_file_path)
        self.delete_info_files = bool(delete_info_files)
        self.limits = limits
        self._given_schema: Schema | None = None if schema is None else Schema.from_any(schema)
        self._schema: Schema | None = self._given_schema
        self.code_mappings: dict[str, int] = {}
        self.errors: list[dict[str, str]] = []
        self._error_keys: set[tuple[str, str]] = set()
        self.warnings: list[str] = []
        # The warnings of set_attributes: its tables outlive parse_info_files, which starts
        # the warnings over, so its warnings must too.
        self._given_warnings: list[str] = []
        self.deleted_files: list[str] = []
        self._items: dict[str, _Item] = {}
        self._fields: dict[str, _Field] = {}
        self._descriptions: dict[str, dict[int, _Attribute]] = {}
        self._explicit_tables: dict[str, dict[int, _Attribute]] = {}
        self._warned_fields: set[tuple[str, str]] = set()
        # Items holding what a field's warning is about, by field: collected while parsing,
        # warned of once every input is read (see _warn_parsed_fields).
        self._unexported: dict[str, tuple[str, list[str]]] = {}
        self._rerouted: dict[str, list[str]] = {}
        # The items giving each label of a description table, by (table, code), and the
        # codes items label two ways (warned of once every input is read).
        self._labelled: dict[tuple[str, int], dict[tuple[str, str], list[str]]] = {}
        self._clashes: dict[tuple[str, int], None] = {}
        self._route_cache: dict[tuple[str, type], str] = {}
        self._infoset_written: str | None = None
        self._attribset_written: str | None = None
        self._rows_written = 0
        self._attribute_rows_written = 0

    # ------------------------------------------------------------------ bookkeeping
    @property
    def schema(self) -> Schema | None:
        """The schema routing uses (``None`` before :meth:`parse_info_files` picks one)."""
        return self._schema

    def _warn(self, message: str) -> None:
        # Several calls may meet the same conflict (summary() recomputes tables): keep one.
        if message not in self.warnings:
            self.warnings.append(message)

    def _warn_given(self, message: str) -> None:
        # A warning about what set_attributes was given: kept when parsing starts over.
        if message not in self._given_warnings:
            self._given_warnings.append(message)
        self._warn(message)

    def _error(self, path: str, reason: str) -> None:
        # A set beside the list: thousands of orphans must not make this quadratic.
        if (path, reason) not in self._error_keys:
            self._error_keys.add((path, reason))
            self.errors.append({"file": path, "error": reason})

    def _warn_field_once(self, key: str, kind: str, message: str) -> None:
        if (key, kind) not in self._warned_fields:
            self._warned_fields.add((key, kind))
            self._warn(message)

    # ------------------------------------------------------------------ parsing
    def parse_info_files(self) -> None:
        """Load every input and route its fields.

        An input that is missing, unreadable or not a JSON object is skipped and listed in
        :attr:`errors`; an item name seen twice keeps its first input. Calling this again
        starts over, the tables of :meth:`set_attributes` and their warnings kept. Inputs are
        never deleted here.

        Raises
        ------
        StorageError
            If the file system refuses to read an input (an I/O error, a permission): of
            the kind of that error (:class:`~cadstore.errors.StorageAccessError` for a
            permission), naming the input (:func:`~cadstore.merging.scan.reading_item`).
        """
        self._items = {}
        self._fields = {}
        self._descriptions = {}
        self._warned_fields = set()
        self._unexported = {}
        self._rerouted = {}
        self._labelled = {}
        self._clashes = {}
        self.errors = []
        self._error_keys = set()
        self.warnings = list(self._given_warnings)
        self._schema = self._given_schema
        self._route_cache = {}
        documents: list[tuple[str, str, dict[str, Any]]] = []
        names: set[str] = set()
        for path in self.info_files:
            name = item_name_from_path(path)
            try:
                doc = self._load_document(path)
            except _Unreadable as exc:
                self._error(path, str(exc))
                continue
            if name in names:
                self._error(path, f"duplicate item name {name!r}; the first input is kept")
                continue
            names.add(name)
            if self._schema is None:
                self._schema = self._schema_from(doc, path)
            # The storage's own bulky keys are of no further use: drop them early.
            doc.pop(SCHEMA_METADATA_KEY, None)
            doc.pop(SIZES_METADATA_KEY, None)
            documents.append((name, path, doc))
        if self._schema is None:
            self._schema = Schema.from_any(SchemaBuilder())
        for name, path, doc in documents:
            self._ingest(name, path, doc)
        self._warn_parsed_fields()

    def _warn_parsed_fields(self) -> None:
        """Warn of the fields some items hold in a way that is not exported as it is,
        naming those items (how many, and the first)."""
        for key, (kind, names) in self._unexported.items():
            self._warn(
                f"field {key!r} holds a {kind} ({_items_text(names)}), which is not exported "
                "(only numbers, strings and booleans become columns or attribute rows)"
            )
        for key, names in self._rerouted.items():
            fld = self._fields[key]
            other = CATEGORICAL if fld.route == FILE_LEVEL else FILE_LEVEL
            moved = set(names)
            kept = self._holders(key, lambda _: True)
            kept = [name for name in kept if name not in moved]
            self._warn(
                f"field {key!r} is routed {fld.route!r} ({_items_text(kept)}) and "
                f"{other!r} ({_items_text(names)}); keeping {fld.route!r}"
            )
        for table, code in self._clashes:
            labels = self._labelled[(table, code)]
            held = [
                (_Attribute(name, description), f"({_items_text(items)})")
                for (name, description), items in labels.items()
            ]
            self._warn(f"description table {table!r}: code {code} {_labels_clash_text(held)}")

    def _where(self, path: str) -> Location:
        return resolve(path, self.storage_options, shared=True)

    def _load_document(self, path: str) -> dict[str, Any]:
        location = self._where(path)
        if not location.exists():
            raise _Unreadable("no such file")
        # A read the file system refuses (EIO, EACCES) is not the input's fault: it stops
        # the work naming the input, rather than dropping the input's rows from the tables.
        with reading_item(location):
            raw = self._read_raw(location)
        if len(raw) > self.limits.max_metadata_bytes:
            raise _Unreadable(
                f"metadata is {len(raw)} bytes, more than max_metadata_bytes="
                f"{self.limits.max_metadata_bytes}"
            )
        try:
            # Lenient parse: files written by other tools may hold NaN tokens.
            doc = parse_document(raw)
        except ValueError as exc:
            raise _Unreadable(f"not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise _Unreadable(f"not a JSON object (a JSON {type(doc).__name__})")
        try:
            decoded = decode_metadata(doc)
        except ValueError as exc:
            raise _Unreadable(f"not a metadata document: {exc}") from None
        if not isinstance(decoded, dict):  # a lone tagged float
            raise _Unreadable(f"not a JSON object (a {type(decoded).__name__})")
        return decoded

    def _read_raw(self, location: Location) -> bytes:
        if location.isdir():
            return self._read_head(location.child(METADATA_FILE), "store without a readable")
        if location.path.endswith(".json"):
            return self._read_head(location, "cannot read")
        try:
            source = open_source(location, self.limits, kind="zip", what="item")
        except CorruptStoreError as exc:
            raise _Unreadable(f"not a readable .data file: {exc}") from None
        try:
            raw = source.get(METADATA_FILE)
            if raw is None:
                # Another writer's item (zarr-python's own) may have none, as the scan and
                # OptStorage.load_metadata read it: an item without metadata, whose row
                # holds its name and id. One whose name was damaged is corrupt.
                ReadHierarchy(source, self.limits).check_absent(METADATA_FILE, "document")
                return b"{}"
        except CorruptStoreError as exc:
            raise _Unreadable(f"{METADATA_FILE} is unreadable: {exc}") from None
        finally:
            source.close()
        return raw

    def _read_head(self, location: Location, failure: str) -> bytes:
        # At most one byte past the limit: enough to tell an oversized document. Never a
        # pipe or a device: reading one would block, or never end.
        if not location.remote and location.exists() and not location.isfile():
            raise _Unreadable(f"{failure} {location.name}: not a regular file")
        try:
            with location.open_read() as fh:
                return fh.read(self.limits.max_metadata_bytes + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise _Unreadable(f"{failure} {location.name}: {os_problem(exc)}") from None

    def _schema_from(self, doc: Mapping[str, Any], path: str) -> Schema | None:
        stored = doc.get(SCHEMA_METADATA_KEY)
        if not isinstance(stored, Mapping) or not stored:
            return None
        try:
            return Schema.from_any(stored)
        except SchemaError as exc:
            self._warn(f"{path}: ignoring its invalid {SCHEMA_METADATA_KEY} ({exc})")
            return None

    def _ingest(self, name: str, path: str, doc: dict[str, Any]) -> None:
        source = doc.get(SOURCE_KEY)
        item = _Item(
            name=name,
            path=path,
            description="" if source is None else str(source),
            from_json=path.endswith(".json") and not os.path.isdir(path),
        )
        recorded = doc.get(ROUTING_METADATA_KEY)
        if not isinstance(recorded, Mapping):
            recorded = {}
        for key, value in doc.items():
            if key in _INTERNAL_KEYS or key == SOURCE_KEY:
                continue
            if key == DESCRIPTIONS_KEY:
                self._merge_descriptions(value, path, name)
                continue
            for leaf, leaf_value in _flatten(key, value):
                self._ingest_value(item, leaf, leaf_value, recorded)
        self._items[name] = item

    def _ingest_value(self, item: _Item, key: str, value: Any, recorded: Mapping[str, Any]) -> None:
        if value is None:
            return
        if not _is_scalar(value):
            self._unexported.setdefault(key, (type(value).__name__, []))[1].append(item.name)
            return
        route = self._route(key, value, recorded)
        fld = self._fields.get(key)
        if fld is None:
            fld = self._fields[key] = _Field(key, route)
        elif fld.route != route:
            self._rerouted.setdefault(key, []).append(item.name)
        item.values[key] = value

    def _route(self, key: str, value: Any, recorded: Mapping[str, Any]) -> str:
        recorded_route = recorded.get(key)
        if recorded_route in (FILE_LEVEL, CATEGORICAL):
            return str(recorded_route)
        # Only the name and the value's type decide a route, so one lookup per pair will do.
        cache_key = (key, type(value))
        route = self._route_cache.get(cache_key)
        if route is not None:
            return route
        schema = self._schema
        assert schema is not None
        route = schema.route_metadata(key, value)
        snake = column_name(key)
        if (
            snake != key
            and route == self._type_route(value)
            and schema.metadata_definition(key) is None
        ):
            # Neither a definition nor a pattern decided on the key: its column name may
            # match one ("Flow name" -> the "flow_name" pattern).
            route = schema.route_metadata(snake, value)
        self._route_cache[cache_key] = route
        return route

    def _type_route(self, value: Any) -> str:
        assert self._schema is not None
        rules = self._schema.routing_rules
        # The schema router's step 3, repeated here because the router does not say
        # whether a name or the type decided.
        if isinstance(value, bool):
            return str(rules["default_categorical"])
        if isinstance(value, str):
            return str(rules["default_string"])
        if isinstance(value, int | float):
            return str(rules["default_numeric"])
        return str(rules["default_categorical"])

    def _merge_descriptions(self, section: Any, path: str, item: str) -> None:
        if not isinstance(section, Mapping):
            self._warn(
                f"{path}: {DESCRIPTIONS_KEY!r} is a {type(section).__name__}, not a section "
                "of tables; ignored"
            )
            return
        for table, entries in section.items():
            self._merge_table(self._descriptions, str(table), entries, path, item)

    def _merge_table(
        self,
        tables: dict[str, dict[int, _Attribute]],
        table: str,
        entries: Any,
        where: str,
        item: str | None = None,
    ) -> None:
        """Add ``entries`` to ``tables[table]``, the first label of a code winning.

        ``item`` names the item whose descriptions they are (``None``: given by
        :meth:`set_attributes`, ``where``): the items giving each label are recorded, and
        a code labelled two ways is warned of once every input is read, naming the items
        of each label (:meth:`_warn_parsed_fields`).
        """
        warn = self._warn if item is not None else self._warn_given
        if isinstance(entries, Mapping):
            pairs = list(entries.items())
        elif isinstance(entries, list | tuple):
            # A list of labels: the position is the code.
            pairs = list(enumerate(entries))
        else:
            warn(
                f"{where}: description table {table!r} is a {type(entries).__name__}, not "
                "{code: label}; ignored"
            )
            return
        rows = tables.setdefault(table, {})
        for code_raw, label in pairs:
            code = _as_code(code_raw)
            if code is None:
                warn(
                    f"{where}: description table {table!r} has code {code_raw!r}, which is "
                    "not an integer; ignored"
                )
                continue
            attribute = _as_attribute(label)
            if item is not None:
                labels = self._labelled.setdefault((table, code), {})
                labels.setdefault((attribute.name, attribute.description), []).append(item)
            known = rows.get(code)
            if known is None:
                rows[code] = attribute
            elif known != attribute and item is not None:
                self._clashes[(table, code)] = None
            elif known != attribute:
                clash = _labels_clash_text([(known, ""), (attribute, f"(in {where})")])
                warn(f"description table {table!r}: code {code} {clash}")

    # ------------------------------------------------------------------ codes
    def build_code_mappings(self, zip_files: Iterable[str | os.PathLike[str]]) -> dict[str, int]:
        """Number the items 0..N-1 in the order of their ``.data`` files.

        Parameters
        ----------
        zip_files
            The ``.data`` files of the merge, in merge order.

        Returns
        -------
        dict
            ``{item name: code}``; also kept as :attr:`code_mappings`.

        Raises
        ------
        MergeError
            If two files have the same item name (they would share one code).
        """
        paths = [os.fspath(p) for p in zip_files]
        seen: dict[str, list[str]] = {}
        for path in paths:
            seen.setdefault(item_name_from_path(path), []).append(path)
        duplicates = {name: where for name, where in seen.items() if len(where) > 1}
        if duplicates:
            described = "; ".join(
                f"{name!r} ({', '.join(where)})" for name, where in duplicates.items()
            )
            raise MergeError(
                f"duplicate item names in the merge: {described}; every item needs a unique "
                "name, so rename or drop the duplicates"
            )
        self.code_mappings = {name: code for code, name in enumerate(seen)}
        return dict(self.code_mappings)

    def set_code_mappings(self, mapping: Mapping[str, int]) -> None:
        """Use an existing ``{item name: code}`` mapping (e.g. the merger's).

        Parameters
        ----------
        mapping
            Item names to integer codes; codes must be unique.

        Raises
        ------
        MergeError
            If a code is not an integer or two names share a code.
        """
        by_code: dict[int, list[str]] = {}
        for name, code in mapping.items():
            if not _is_int(code) and not _is_numpy_int(code):
                raise MergeError(f"code of item {name!r} is {code!r}, not an integer")
            by_code.setdefault(int(code), []).append(str(name))
        shared = {code: names for code, names in by_code.items() if len(names) > 1}
        if shared:
            described = "; ".join(f"{code}: {', '.join(names)}" for code, names in shared.items())
            raise MergeError(f"several items share a code ({described}); codes must be unique")
        self.code_mappings = {str(name): int(code) for name, code in mapping.items()}

    # ------------------------------------------------------------------ infoset
    def _ordered_fields(self) -> list[_Field]:
        """Fields in column order (file-level, then categorical), with column names set."""
        ordered = [f for f in self._fields.values() if f.route == FILE_LEVEL]
        ordered += [f for f in self._fields.values() if f.route == CATEGORICAL]
        taken = set(FIXED_INFOSET_COLUMNS)
        for fld in ordered:
            base = column_name(fld.key)
            if base in FIXED_INFOSET_COLUMNS:
                base = f"meta_{base}"
            col, n = base, 2
            while col in taken:
                col, n = f"{base}_{n}", n + 1
            taken.add(col)
            fld.column = col
        return ordered

    def _values_of(self, key: str) -> list[Any]:
        return [item.values[key] for item in self._items.values() if key in item.values]

    def _label_source(self, table: str, code: int, attribute: _Attribute) -> str:
        """Who gave ``attribute`` as the label of ``code`` in description table ``table``:
        ``set_attributes`` and/or the items whose descriptions hold it."""
        sources = []
        if self._explicit_tables.get(table, {}).get(code) == attribute:
            sources.append("set_attributes")
        labels = self._labelled.get((table, code), {})
        items = labels.get((attribute.name, attribute.description), [])
        if items:
            sources.append(_items_text(items))
        return " and ".join(sources) or "no item"

    def _table_source(self, table: str) -> str:
        """Who gave description table ``table``: ``set_attributes`` and/or its items."""
        sources = ["set_attributes"] if table in self._explicit_tables else []
        items: dict[str, None] = {}  # ordered, each once (a list's `in` made it quadratic)
        for (name, _code), labels in self._labelled.items():
            if name == table:
                for held in labels.values():
                    items.update(dict.fromkeys(held))
        if items:
            sources.append(_items_text(list(items)))
        return " and ".join(sources) or "no item"

    def _holders(self, key: str, holds: Callable[[Any], bool]) -> list[str]:
        """The items whose value of field ``key`` ``holds`` says yes to, in input order."""
        return [
            item.name
            for item in self._items.values()
            if key in item.values and holds(item.values[key])
        ]

    def _column_kind(self, fld: _Field) -> str:
        """``"int64"``, ``"float64"``, ``"bool"`` or ``"string"`` for the field's column."""
        values = self._values_of(fld.key)
        if fld.route == CATEGORICAL:
            kind = self._categorical_kind(fld.key, values)
            return {"int": "int64", "bool": "bool"}.get(kind, "string")
        assert self._schema is not None
        spec = self._schema.metadata_definition(fld.key) or {}
        kind, why = _file_level_kind(values, spec.get("dtype") in _FLOAT_DTYPES)
        if isinstance(why, int):
            # A float64 column would round it (beyond 2**53, or beyond int64 alone).
            inexact = self._holders(fld.key, lambda v: _is_int(v) and not _float_holds(v))
            held = f"the integer {why}" if len(inexact) == 1 else f"integers such as {why}"
            self._warn_field_once(
                fld.key,
                "inexact",
                f"field {fld.key!r} holds {held} ({_items_text(inexact)}), which neither an "
                "int64 nor a float64 column holds exactly beside its other values; its "
                ".infoset column holds them as strings",
            )
        elif why is not None:
            strings = self._holders(fld.key, lambda v: isinstance(v, str))
            numbers = self._holders(fld.key, lambda v: not isinstance(v, str))
            self._warn_field_once(
                fld.key,
                "mixed",
                f"field {fld.key!r} mixes strings ({_items_text(strings)}) and numbers "
                f"({_items_text(numbers)}) across items; its .infoset column holds them as "
                "strings",
            )
        return kind

    def _categorical_kind(self, key: str, values: list[Any]) -> str:
        kind = _categorical_value_kind(values)
        if kind == "str" and not all(isinstance(v, str) for v in values):
            by_type: dict[str, list[str]] = {}
            for item in self._items.values():
                if item.values.get(key) is not None:
                    by_type.setdefault(type(item.values[key]).__name__, []).append(item.name)
            held = "; ".join(f"{name}: {_items_text(items)}" for name, items in by_type.items())
            self._warn_field_once(
                key,
                "mixed",
                f"categorical field {key!r} mixes value types across items ({held}); its "
                "values are coded as strings",
            )
        return kind

    def categorical_fields(self) -> list[str]:
        """The fields routed to the ``.attribset``, in column order."""
        return [f.key for f in self._fields.values() if f.route == CATEGORICAL]

    def description_tables(self) -> set[str]:
        """The attribute tables given as descriptions (items' or :meth:`set_attributes`)."""
        return set(self._descriptions) | set(self._explicit_tables)

    def field_values(self, key: str) -> list[Any]:
        """The values of field ``key`` in the infoset's row order (``None`` where an item
        lacks it), as the items hold them: an append joins them to the stored column."""
        codes = sorted(self.code_mappings.items(), key=lambda kv: kv[1])
        rows = [self._items.get(name) for name, _ in codes]
        return [None if item is None else item.values.get(key) for item in rows]

    def _require_codes(self) -> None:
        if not self.code_mappings:
            raise MergeError(
                "no item codes: call build_code_mappings(data_files) or set_code_mappings() "
                "before writing the infoset"
            )

    def infoset_table(self, table_name: str = "file_info") -> pa.Table:
        """Return the ``.infoset`` as a pyarrow table, without writing it (appends extend it)."""
        pa = _pyarrow()
        self._require_codes()
        for item in self._items.values():
            if item.name not in self.code_mappings:
                self._error(
                    item.path,
                    f"no matching .data: item {item.name!r} has no code, so it has no row",
                )
        codes = sorted(self.code_mappings.items(), key=lambda kv: kv[1])
        missing = [name for name, _ in codes if name not in self._items]
        if missing:
            self._warn(
                f"{len(missing)} item(s) with a code have no metadata, so their rows hold "
                f"only name and id: {_names_text(missing)}"
            )
        rows = [self._items.get(name) for name, _ in codes]
        arrays: dict[str, Any] = {  # pyarrow arrays
            "name": pa.array([name for name, _ in codes], pa.string()),
            "id": pa.array([code for _, code in codes], pa.int64()),
            "description": pa.array(
                ["" if item is None else item.description for item in rows], pa.string()
            ),
        }
        described: dict[str, dict[str, str]] = {}
        for fld in self._ordered_fields():
            kind = self._column_kind(fld)
            raw = [None if item is None else item.values.get(fld.key) for item in rows]
            arrays[fld.column] = _column_array(raw, kind)
            described[fld.column] = {"field": fld.key, "route": fld.route}
        arrays["subset"] = pa.array([NO_SUBSET] * len(rows), pa.string())
        arrays["table_name"] = pa.array([table_name] * len(rows), pa.string())
        note = {"format": "cadstore.infoset", "version": 1, "fields": described}
        return pa.table(arrays).replace_schema_metadata(
            {PARQUET_METADATA_KEY: json.dumps(note).encode("utf-8")}
        )

    def store_info_to_parquet(
        self, table_name: str = "file_info", *, write_attributes: bool = True
    ) -> str:
        """Write the ``.infoset`` atomically (and, by default, the ``.attribset``).

        Parameters
        ----------
        table_name
            Value of the ``table_name`` column.
        write_attributes
            Also write the ``.attribset``, as the vendor's single call does.

        Returns
        -------
        str
            The ``.infoset`` path.

        Raises
        ------
        MergeError
            If no item codes were set.
        """
        table = self.infoset_table(table_name)
        _write_table_atomic(self.merged_store_path, table, self.storage_options)
        self._infoset_written = self.merged_store_path
        self._rows_written = table.num_rows
        if write_attributes:
            self.store_attributes_to_parquet()
        else:
            self._delete_inputs_if_done()
        return self.merged_store_path

    # ------------------------------------------------------------------ attribset
    def set_attributes(self, metadata: Mapping[Any, Any] | Sequence[Any], table_name: str) -> None:
        """Add an attribute table, e.g. class descriptions that no item carries.

        Parameters
        ----------
        metadata
            ``{code: label}`` (codes may be integer strings), ``{code: {"name": ...,
            "description": ...}}``, or a list of labels whose positions are the codes.
        table_name
            The table; rows merge with a description table or categorical field of the same
            name, the first label of a code winning (with a warning on a conflict).

        Notes
        -----
        The specified call writes the table. Called after the ``.attribset`` was written
        (by :meth:`store_info_to_parquet`), it writes the ``.attribset`` again, atomically,
        so that the table is not silently left out of it.
        """
        self._merge_table(self._explicit_tables, table_name, metadata, "set_attributes")
        if self._attribset_written:
            self.store_attributes_to_parquet()

    def _attribute_tables(self) -> dict[str, dict[int, _Attribute]]:
        tables: dict[str, dict[int, _Attribute]] = {
            name: dict(rows) for name, rows in self._explicit_tables.items()
        }
        for name, rows in self._descriptions.items():
            target = tables.setdefault(name, {})
            for code, attribute in rows.items():
                known = target.get(code)
                if known is None:
                    target[code] = attribute
                elif known != attribute:
                    items = self._label_source(name, code, attribute)
                    clash = _labels_clash_text(
                        [
                            (known, "from set_attributes"),
                            (attribute, f"in the items' descriptions ({items})"),
                        ]
                    )
                    self._warn(f"attribute table {name!r}: code {code} {clash}")
        for fld in self._fields.values():
            if fld.route == CATEGORICAL:
                self._add_categorical_table(tables, fld.key)
        return tables

    def _add_categorical_table(self, tables: dict[str, dict[int, _Attribute]], key: str) -> None:
        values = self._values_of(key)
        assert self._schema is not None
        spec = self._schema.metadata_definition(key) or {}
        labels: dict[Any, str] = {}
        if isinstance(spec.get("values"), list) and isinstance(spec.get("labels"), list):
            labels = {
                _label_key(v): str(lab)
                for v, lab in zip(spec["values"], spec["labels"], strict=False)
            }
        kind = self._categorical_kind(key, values)
        rows: dict[int, _Attribute] = {}
        if kind in ("int", "bool"):
            for value in sorted(set(values)):
                label = labels.get(_label_key(value))
                rows[int(value)] = _Attribute(label if label is not None else str(value))
        else:
            for code, text in enumerate(sorted({str(v) for v in values})):
                rows[code] = _Attribute(text, labels.get(text, NOT_SET))
        existing = tables.get(key)
        if existing is None:
            tables[key] = rows
            return
        if kind == "str":
            # A description table numbers these values its own way; positional codes would
            # contradict it.
            strings = self._holders(key, lambda v: isinstance(v, str))
            self._warn(
                f"categorical field {key!r} holds strings ({_items_text(strings)}) but a "
                f"description table of the same name exists ({self._table_source(key)}); "
                "the table is kept and the field's values are only in the infoset column"
            )
            return
        for code, attribute in rows.items():
            known = existing.get(code)
            if known is None:
                existing[code] = attribute
            elif known.name != attribute.name and attribute.name != str(code):
                valued = self._holders(key, functools.partial(_is_code, code=code))
                self._warn(
                    f"attribute table {key!r}: code {code} is {known.name!r} in the "
                    f"description table ({self._label_source(key, code, known)}) and "
                    f"{attribute.name!r} in the schema labels (the value of "
                    f"{_items_text(valued)}); keeping {known.name!r}"
                )

    def attribset_table(self) -> pa.Table:
        """Return the ``.attribset`` as a pyarrow table, without writing it."""
        pa = _pyarrow()
        ids: list[int] = []
        names: list[str] = []
        descriptions: list[str] = []
        table_names: list[str] = []
        for table, rows in self._attribute_tables().items():
            for code in sorted(rows):
                ids.append(code)
                names.append(rows[code].name)
                descriptions.append(rows[code].description)
                table_names.append(table)
        note = {"format": "cadstore.attribset", "version": 1}
        return pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "name": pa.array(names, pa.string()),
                "description": pa.array(descriptions, pa.string()),
                "table_name": pa.array(table_names, pa.string()),
            }
        ).replace_schema_metadata({PARQUET_METADATA_KEY: json.dumps(note).encode("utf-8")})

    def store_attributes_to_parquet(self) -> str:
        """Write the ``.attribset`` atomically.

        Returns
        -------
        str
            The ``.attribset`` path.
        """
        table = self.attribset_table()
        _write_table_atomic(self.attribute_file_path, table, self.storage_options)
        self._attribset_written = self.attribute_file_path
        self._attribute_rows_written = table.num_rows
        self._delete_inputs_if_done()
        return self.attribute_file_path

    # ------------------------------------------------------------------ cleanup
    def _delete_inputs_if_done(self) -> None:
        if not self.delete_info_files or not (self._infoset_written and self._attribset_written):
            return
        parents: set[str] = set()
        for item in self._items.values():
            # Only summary JSONs whose rows were written: the .data files belong to the
            # merge, and an orphan JSON is the record of a failed item.
            if not item.from_json or item.name not in self.code_mappings:
                continue
            if item.path in self.deleted_files:
                continue
            location = self._where(item.path)
            if not location.isfile():
                continue
            try:
                location.remove()
            except OSError as exc:
                self._warn(f"could not delete {item.path}: {os_problem(exc)}")
                continue
            self.deleted_files.append(item.path)
            if not location.remote:  # object stores have no directories to tidy
                parents.add(os.path.dirname(os.path.abspath(item.path)))
        for parent in parents:
            # rmdir only succeeds on an empty directory: anything else left there stays.
            with contextlib.suppress(OSError):
                os.rmdir(parent)

    # ------------------------------------------------------------------ report
    def summary(self) -> dict[str, Any]:
        """Return counts, errors and warnings, JSON-serialisable (for the ``.flow`` manifest).

        Returns
        -------
        dict
            ``info_files``, ``items`` (documents parsed), ``codes``, ``infoset_rows``,
            ``file_level_fields``, ``categorical_fields``, ``attribute_tables``
            (``{table: rows}``), ``attribute_rows``, ``infoset`` / ``attribset`` (the paths
            written, or ``None``), ``deleted_info_files``, ``errors``, ``warnings``.
        """
        tables = self._attribute_tables()
        return {
            "info_files": len(self.info_files),
            "items": len(self._items),
            "codes": len(self.code_mappings),
            "infoset_rows": self._rows_written,
            "file_level_fields": [f.key for f in self._fields.values() if f.route == FILE_LEVEL],
            "categorical_fields": [f.key for f in self._fields.values() if f.route == CATEGORICAL],
            "attribute_tables": {name: len(rows) for name, rows in tables.items()},
            "attribute_rows": sum(len(rows) for rows in tables.values()),
            "infoset": self._infoset_written,
            "attribset": self._attribset_written,
            "deleted_info_files": len(self.deleted_files),
            "errors": [dict(e) for e in self.errors],
            "warnings": list(self.warnings),
        }

    def __repr__(self) -> str:
        return (
            f"<DatasetInfo {len(self.info_files)} inputs, {len(self._items)} parsed, "
            f"{len(self.code_mappings)} codes -> {self.merged_store_path!r}>"
        )


def build_info(
    data_files: Iterable[str | os.PathLike[str]],
    infoset_path: str | os.PathLike[str],
    attribset_path: str | os.PathLike[str],
    schema: Any = None,
    *,
    codes: Mapping[str, int] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> DatasetInfo:
    """Write the ``.infoset`` and ``.attribset`` of ``.data`` files in one call.

    Metadata is read from each file's ``metadata.json``, so ``files_summary/`` is not needed;
    nothing is deleted.

    Parameters
    ----------
    data_files
        The items, in merge order (codes 0..N-1 follow it).
    infoset_path, attribset_path
        The files to write.
    schema
        As for :class:`DatasetInfo`.
    codes
        An existing ``{item name: code}`` mapping (e.g. the merger's) instead of the order.
    storage_options
        fsspec options for URLs, as for :class:`DatasetInfo`.

    Returns
    -------
    DatasetInfo
        The finished builder; see :meth:`DatasetInfo.summary`.

    Raises
    ------
    MergeError
        If two files have the same item name.
    """
    paths = [os.fspath(p) for p in data_files]
    info = DatasetInfo(paths, infoset_path, attribset_path, schema, storage_options=storage_options)
    if codes is None:
        info.build_code_mappings(paths)
    else:
        info.set_code_mappings(codes)
    info.parse_info_files()
    info.store_info_to_parquet()
    return info


def item_tables(
    items: Sequence[Location],
    codes: Mapping[str, int],
    schema: Any = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[DatasetInfo, pa.Table, pa.Table]:
    """The ``.infoset`` and ``.attribset`` rows of ``items`` with the given codes, in memory.

    What a merge or an append stores in the version it commits (see
    :mod:`cadstore.lifecycle`); the builder is returned for its summary, errors and
    warnings.
    """
    options = items[0].storage_options if items else None
    info = DatasetInfo(
        [item.path for item in items],
        os.devnull,
        os.devnull,
        schema=schema,
        limits=limits,
        storage_options=options,
    )
    info.set_code_mappings(codes)
    info.parse_info_files()
    return info, info.infoset_table("file_info"), info.attribset_table()


def tables_summary(
    info: DatasetInfo, tables: Mapping[str, pa.Table], *, appended: bool = False
) -> dict[str, Any]:
    """The ``info`` section of a merge's or an append's summary: the tables it stores.

    :meth:`DatasetInfo.summary` counts what the builder wrote itself; a merge or an
    append builds the tables in memory (:func:`item_tables`, and for an append
    :func:`extend_table`) and stores them in its version, so the counts are taken from
    those tables instead. Where their copies are published is not the version's to say:
    ``infoset`` and ``attribset`` stay ``None`` here, and the ``.flow`` manifest gives
    the paths (see :mod:`cadstore.lifecycle`).

    Every entry but ``appended_items`` is of the whole dataset. A merge's builder saw
    every item, so its summary is the section. An append's builder saw only the new
    items: the section gives the whole dataset's counts and fields (from the tables
    stored, whose ``cadstore`` metadata routes every column) and puts the builder's
    summary, the new items' documents, fields, errors and warnings, under
    ``appended_items``; a count the version cannot know of the earlier items (documents
    parsed, inputs deleted) is only there.

    Parameters
    ----------
    info
        The builder of the items' rows (their fields, errors and warnings): every item's
        for a merge, the new items' for an append.
    tables
        The tables the version stores, by kind (``"infoset"``, ``"attribset"``); a kind
        left out is not stored.
    appended
        Whether ``info`` built only the rows an append adds to ``tables``.

    Returns
    -------
    dict
        For a merge, :meth:`DatasetInfo.summary` with ``infoset_rows``,
        ``attribute_tables`` and ``attribute_rows`` those of the tables stored. For an
        append, ``codes`` (items with a code), ``infoset_rows``, ``file_level_fields``,
        ``categorical_fields``, ``attribute_tables``, ``attribute_rows``, ``infoset``,
        ``attribset`` of the whole dataset, and ``appended_items``:
        :meth:`DatasetInfo.summary` of the new items alone.
    """
    summary = info.summary()
    infoset = tables.get("infoset")
    attribset = tables.get("attribset")
    counts: dict[str, int] = {}
    if attribset is not None:
        for name in attribset.column("table_name").to_pylist():
            counts[name] = counts.get(name, 0) + 1
    stored = {
        "infoset_rows": 0 if infoset is None else infoset.num_rows,
        "attribute_tables": counts,
        "attribute_rows": 0 if attribset is None else attribset.num_rows,
        "infoset": None,
        "attribset": None,
    }
    if not appended:
        return {**summary, **stored}
    routes: dict[str, list[str]] = {FILE_LEVEL: [], CATEGORICAL: []}
    if infoset is not None:
        described = _described_columns(infoset)
        for column in infoset.column_names:
            entry = described.get(column)
            if isinstance(entry, Mapping) and entry.get("route") in routes:
                routes[str(entry["route"])].append(str(entry.get("field")))
    for key in ("infoset", "attribset", "infoset_rows", "attribute_tables", "attribute_rows"):
        summary.pop(key, None)
    return {
        "codes": stored["infoset_rows"],
        "infoset_rows": stored["infoset_rows"],
        "file_level_fields": routes[FILE_LEVEL],
        "categorical_fields": routes[CATEGORICAL],
        "attribute_tables": counts,
        "attribute_rows": stored["attribute_rows"],
        "infoset": None,
        "attribset": None,
        "appended_items": summary,
    }


def extend_table(
    old: pa.Table | None,
    new: pa.Table,
    keys: Sequence[str],
    values: Callable[[str], list[Any]] | None = None,
) -> pa.Table:
    """``old`` followed by the rows of ``new`` whose ``keys`` it lacks (an append's tables).

    What a merge of every item would write, when the rows of ``new`` are those of the
    items after the ones of ``old``: columns in a merge's order (the fixed ones, then the
    file-level fields, then the categorical ones, the earlier items' fields first, then
    ``subset`` and ``table_name``), a column missing on one side null there, and the
    column types kept. The types are kept because the tables are joined with Arrow, not
    pandas: pandas turns an int64 column with a null into float64, which rounds integers
    beyond 2**53. The ``cadstore`` schema metadata describes the columns of both sides;
    other metadata of ``new`` wins over ``old``'s.

    A field whose values make the two sides' columns differ in type (``revision`` 3 in
    the earlier items, ``"B"`` in the new ones) gets the column a merge of every item
    gives (strings here), from the stored values and the new items' own ``values(field)``
    (in the rows' order; the column of ``new`` when not given).

    Raises
    ------
    MergeError
        If that column cannot be made from what is stored, naming the field and the first
        new item that makes it change: float64 values turning into strings (a merge writes
        an integer ``3`` as ``"3"`` but ``3.0`` as ``"3.0"``, and the stored 3.0 can be
        either), or a categorical field of integers (their own codes in the
        ``.attribset``) turning into strings (numbered, which would renumber the earlier
        items).
    """
    if old is None:
        return new
    pa = _pyarrow()
    old, new = _plain_strings(old), _plain_strings(new)
    fields = {**_described_columns(new), **_described_columns(old)}
    order = _column_order(
        [*old.column_names, *(c for c in new.column_names if c not in old.column_names)], fields
    )
    columns: dict[str, Any] = {}
    for name in order:
        first = old.column(name) if name in old.column_names else None
        second = new.column(name) if name in new.column_names else None
        if first is not None and second is not None and first.type != second.type:
            field = fields.get(name) or {}
            key = str(field.get("field", name))
            given = values(key) if values is not None else second.to_pylist()
            columns[name] = _retyped_column(
                key, field.get("route") == CATEGORICAL, first, second, given, new
            )
        else:
            columns[name] = _joined_column(first, second, old.num_rows, new.num_rows)
    table = pa.table(columns)
    table = table.filter(pa.array(_first_of_each_key(table, keys, old.num_rows), pa.bool_()))
    metadata = dict(old.schema.metadata or {})
    metadata.update(new.schema.metadata or {})
    metadata.pop(b"pandas", None)
    if fields:
        note = _note(new) or _note(old)
        note["fields"] = {name: fields[name] for name in order if name in fields}
        metadata[PARQUET_METADATA_KEY] = json.dumps(note).encode("utf-8")
    return table.combine_chunks().replace_schema_metadata(metadata)


def extend_attribset(
    old: pa.Table | None, new: pa.Table, infoset: pa.Table, info: DatasetInfo
) -> pa.Table:
    """The ``.attribset`` of an append: ``old`` extended with ``new``, the new items'
    table (built by ``info``), in a merge's order (tables as a merge orders them, rows by
    code).

    ``infoset`` is the appended ``.infoset`` (from :func:`extend_table`): its column
    descriptions say how each field is routed over all the items, the earlier items'
    route winning as in a merge. A field the new items alone route to the attribset but
    the dataset to the infoset (``revision`` 3 earlier, ``"B"`` now) adds no rows.

    The codes of a categorical field of strings are kept: the new items' table numbers
    their values 0..k-1 on its own, which would give the codes of earlier values to new
    ones. A value the dataset has keeps its code, and new values get the next codes, in
    sorted order. A merge of every item numbers all values in sorted order, so the codes
    of an append differ from a merge's where a new value sorts before an earlier one;
    each item's value (the infoset column) and the table's values are the same.
    """
    if old is None:
        return new
    pa = _pyarrow()
    described_columns = _described_columns(infoset)
    routes = {str(f.get("field")): f.get("route") for f in described_columns.values()}
    described = info.description_tables()
    remade = {
        key
        for key in info.categorical_fields()
        if routes.get(key) != CATEGORICAL and key not in described
    }
    added: list[dict[str, Any]] = []
    new_ids = set(info.code_mappings.values())
    ids = infoset.column("id").to_pylist()
    old_rows = old.to_pylist()
    new_rows = new.to_pylist()
    for column, described_field in described_columns.items():
        key = str(described_field.get("field"))
        if described_field.get("route") != CATEGORICAL or key in described:
            continue
        if infoset.schema.field(column).type != pa.string():
            continue
        remade.add(key)
        values = infoset.column(column).to_pylist()
        earlier = {
            v for v, i in zip(values, ids, strict=True) if v is not None and i not in new_ids
        }
        later = sorted(
            {v for v, i in zip(values, ids, strict=True) if v is not None and i in new_ids}
        )
        rows = [r for r in old_rows if r["table_name"] == key]
        codes = {r["name"]: r["id"] for r in rows}
        if rows and (set(codes) != earlier or sorted(codes.values()) != list(range(len(rows)))):
            continue  # a description table of the field's name: a merge adds nothing either
        labels = {r["name"]: r["description"] for r in new_rows if r["table_name"] == key}
        code = len(rows)
        for text in later:
            if text not in codes:
                added.append(
                    {
                        "id": code,
                        "name": text,
                        "description": labels.get(text, NOT_SET),
                        "table_name": key,
                    }
                )
                code += 1
    if remade:
        tables = new.column("table_name").to_pylist()
        new = new.filter(pa.array([t not in remade for t in tables], pa.bool_()))
    if added:
        new = pa.concat_tables([new, pa.Table.from_pylist(added, schema=new.schema)])
    joined = extend_table(old, new, ["table_name", "id"])
    # A merge writes the description tables, then the categorical fields', each by code.
    fields = set(info.categorical_fields()) | {
        k for k, route in routes.items() if route == CATEGORICAL
    }
    order: dict[str, tuple[int, int]] = {}
    for name in joined.column("table_name").to_pylist():
        order.setdefault(name, (int(name in fields and name not in described), len(order)))
    rank = [
        (order[t], i)
        for t, i in zip(
            joined.column("table_name").to_pylist(), joined.column("id").to_pylist(), strict=True
        )
    ]
    return joined.take(pa.array(sorted(range(len(rank)), key=rank.__getitem__), pa.int64()))


def _note(table: pa.Table) -> dict[str, Any]:
    """The table's ``cadstore`` schema metadata (``{}`` if it has none, or not a mapping)."""
    raw = (table.schema.metadata or {}).get(PARQUET_METADATA_KEY)
    try:
        note = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return note if isinstance(note, dict) else {}


def _described_columns(table: pa.Table) -> dict[str, Any]:
    """``{column: {"field": key, "route": route}}`` of an infoset (``{}`` otherwise)."""
    fields = _note(table).get("fields")
    return dict(fields) if isinstance(fields, Mapping) else {}


def _column_order(names: list[str], fields: Mapping[str, Any]) -> list[str]:
    """``names`` in the order a merge writes an infoset's columns (stable otherwise)."""
    if not fields:
        return names

    def rank(name: str) -> int:
        route = (fields.get(name) or {}).get("route")
        if route == FILE_LEVEL:
            return 1
        if route == CATEGORICAL:
            return 2
        return 0 if name in FIXED_INFOSET_COLUMNS[:3] else 3

    return sorted(names, key=rank)


def _plain_strings(table: pa.Table) -> pa.Table:
    """``table`` with ``large_string`` columns (written through pandas) as ``string``."""
    pa = _pyarrow()
    for i, column in enumerate(table.schema):
        if pa.types.is_large_string(column.type):
            table = table.set_column(
                i, column.with_type(pa.string()), table.column(i).cast(pa.string())
            )
    return table


def _joined_column(
    first: pa.ChunkedArray | None, second: pa.ChunkedArray | None, n1: int, n2: int
) -> pa.ChunkedArray:
    """A column of an appended table: ``first`` (``n1`` rows, or ``None``: nulls) then
    ``second`` (``n2`` rows, or ``None``), of one type."""
    pa = _pyarrow()
    if first is None:
        assert second is not None
        first = pa.chunked_array([pa.nulls(n1, second.type)])
    if second is None:
        second = pa.chunked_array([pa.nulls(n2, first.type)])
    return pa.chunked_array([*first.chunks, *second.chunks], first.type)


_KINDS = {"int": "int64", "bool": "bool", "str": "string"}


def _retyped_column(
    key: str,
    categorical: bool,
    first: pa.ChunkedArray,
    second: pa.ChunkedArray,
    given: list[Any],
    new: pa.Table,
) -> pa.Array:
    """Field ``key``'s column over the stored rows (``first``) and the new items' (whose
    values are ``given``), when the two sides' types differ: the type a merge of every
    item gives (see :func:`extend_table` for when none can be made)."""
    pa = _pyarrow()
    stored = first.to_pylist()
    values = [*stored, *given]
    declared_float = pa.float64() in (first.type, second.type)
    if categorical:
        kind = _KINDS[_categorical_value_kind(values)]
    else:
        kind = _file_level_kind(values, declared_float)[0]
    names = new.column("name").to_pylist() if "name" in new.column_names else []
    first_kind = {pa.int64(): "int64", pa.float64(): "float64", pa.bool_(): "bool"}.get(
        first.type, "string"
    )
    problem = None
    if kind == "string" and categorical and first_kind in ("int64", "bool"):
        problem = (
            f"the dataset's items hold {first_kind} values, which are their own codes in "
            "the .attribset; strings are numbered, which would renumber the earlier items"
        )
    elif (
        kind == "string"
        and first_kind == "float64"
        and any(isinstance(v, float) and v.is_integer() for v in stored)
    ):
        problem = (
            "its column would hold strings, and the dataset's float64 column cannot "
            "tell which of its whole numbers were integers (a merge writes 3 as '3', "
            "3.0 as '3.0')"
        )
    if problem is not None:
        at = next((i for i, v in enumerate(given) if v is not None and not _fits(v, first_kind)), 0)
        item = names[at] if at < len(names) else "?"
        raise MergeError(
            f"item {item!r}: field {key!r} holds {given[at]!r}; {problem}; merge all "
            "items again, without append, to store it"
        )
    return _column_array(values, kind)


def _fits(value: Any, kind: str) -> bool:
    """Whether ``value`` is of the kind a column of type ``kind`` holds as it is."""
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int64":
        return isinstance(value, int)
    if kind == "float64":
        return isinstance(value, float) or (_is_int(value) and _float_holds(value))
    return isinstance(value, str)


def _first_of_each_key(table: pa.Table, keys: Sequence[str], n_old: int) -> list[bool]:
    """Whether each row is the first with its ``keys`` (the rows of ``old`` all are)."""
    keep = [True] * n_old
    seen = set(zip(*(table.column(k).slice(0, n_old).to_pylist() for k in keys), strict=True))
    added = zip(*(table.column(k).slice(n_old).to_pylist() for k in keys), strict=True)
    for key in added:
        keep.append(key not in seen)
        seen.add(key)
    return keep


# ---------------------------------------------------------------------------- helpers
def _expand_inputs(
    info_files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    if isinstance(info_files, str | os.PathLike):
        where = resolve(info_files, storage_options, shared=True)
        if where.isdir() and not where.child(METADATA_FILE).exists():
            # A files_summary/ directory: every JSON in it, in name order.
            return sorted(where.child(n).path for n in where.listdir() if n.endswith(".json"))
        return [where.path]
    return [os.fspath(p) for p in info_files]


def _is_numpy_int(value: object) -> bool:
    import numpy as np

    return isinstance(value, np.integer)


def _as_code(raw: Any) -> int | None:
    if _is_int(raw):
        return int(raw)
    if isinstance(raw, str) and re.fullmatch(r"\s*-?\d+\s*", raw):
        code = int(raw)
        return code if _INT64_MIN <= code <= _INT64_MAX else None
    return None


def _as_attribute(label: Any) -> _Attribute:
    if isinstance(label, Mapping):
        name = label.get("name", label.get("label"))
        description = label.get("description")
        return _Attribute(
            "" if name is None else str(name),
            NOT_SET if description in (None, "") else str(description),
        )
    return _Attribute(str(label))


def _label_key(value: Any) -> Any:
    # bool is an int in Python (True == 1); keep labels for True and 1 apart.
    return ("bool", value) if isinstance(value, bool) else value


def _column_array(values: list[Any], kind: str) -> pa.Array:
    pa = _pyarrow()
    if kind == "string":
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    if kind == "float64":
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kind == "int64":
        return pa.array([None if v is None else int(v) for v in values], pa.int64())
    return pa.array([None if v is None else bool(v) for v in values], pa.bool_())


def _write_table_atomic(
    path: str, table: pa.Table, storage_options: Mapping[str, Any] | None = None
) -> None:
    location = resolve(path, storage_options, shared=True)
    # Locally this creates the directory; on an object store it checks the bucket.
    location.parent.makedirs()
    write_atomic(location, functools.partial(write_table, table))


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "writing .infoset/.attribset files needs pyarrow: pip install 'cadstore[dataset]'"
        ) from exc
    return pyarrow
