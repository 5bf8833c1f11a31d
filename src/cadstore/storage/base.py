"""The ``DataStorage`` contract, and the one implementation of it every backend shares.

A storage maps *keys* (``/``-separated paths, see :mod:`cadstore.storage.keys`) to *values*
(arrays, scalars, strings, lists and nested dicts, see :mod:`cadstore.storage.values`), and
keeps a separate nested *metadata* document.

:class:`DataStorage` is the specified abstract base class: a storage of a user's own
implements its abstract methods (``save_data``, ``load_data``, ``save_metadata``,
``load_metadata``, ``get_keys``, ``get_file_path``, ``close``, ``format``) and inherits
``compress_store`` (0), the schema methods (``set_schema`` saves the schema as the metadata
``_storage_schema``, as specified; ``get_schema``, ``get_group_for_array``,
``validate_data_against_schema`` read it back) and the context manager. Such a storage
works wherever the specification takes one (an encoder's ``storage_handler``, a flow's
own code).

:class:`NodeStorage` implements every public method once, for cadstore's backends
(``OptStorage``, ``MemoryStorage``, ``JsonStorageHandler``), so that all of them validate
keys, convert values, track sizes, apply the schema and route metadata the same way. A
backend supplies a handful of primitives on already-validated keys and normalised values:

``_get_node(key)``
    Return the node stored at ``key`` (a leaf, or a dict for a group); raise ``KeyError``
    when nothing is stored there.
``_put_node(key, node)``
    Store ``node`` at ``key``, replacing whatever was stored at ``key`` (a whole subtree).
    The base class has checked that no ancestor of ``key`` holds a leaf.
``_delete_node(key)``
    Remove the subtree at ``key``; raise ``KeyError`` when nothing is stored there.
``_node_kind(key)``
    ``"leaf"``, ``"group"`` or ``None``.
``_top_level_keys()``
    The names at the root.
``_stored_nbytes(key)``
    The bytes the backend used for ``key`` (what size tracking records).
``_read_metadata_document()`` / ``_write_metadata_document(doc)``
    Load the metadata document when the storage opens, persist it after a change.
``get_file_path(key)``, ``_close()``
    Backend-specific; ``compress_store()`` returns 0 unless overridden.

Semantics every backend shares (and :mod:`cadstore.testing.conformance` checks):

* saving overwrites the whole subtree at a key; saving ``"a/b"`` creates group ``a``;
  saving below a key that holds a leaf is a :class:`~cadstore.errors.KeyConflictError`;
* loading a group returns a nested dict; a missing key raises
  :class:`~cadstore.errors.KeyNotFoundError`, which is a ``KeyError``;
* ``save_data`` records the stored size in metadata ``file_sizes_KB/<key>``;
* metadata keys nest with ``/``; saving a dict merges into an existing section;
* ``close()`` is idempotent and thread-safe; any other call after it raises
  :class:`~cadstore.errors.StorageClosedError`.
"""

from __future__ import annotations

import copy
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, TypeGuard

from cadstore.errors import (
    InvalidKeyError,
    KeyConflictError,
    KeyNotFoundError,
    ReadOnlyStorageError,
    SchemaError,
    SchemaValidationError,
    StorageClosedError,
)
from cadstore.format.jsoncodec import as_metadata_section, encode_metadata, metadata_section
from cadstore.storage.keys import check_storable, validate_key
from cadstore.storage.values import Node, contains_nan, normalize_value

if TYPE_CHECKING:
    from cadstore.schema import Schema

__all__ = ["DataStorage", "NodeKind", "NodeStorage"]

NodeKind = Literal["leaf", "group"]

#: Metadata key under which the schema is kept (the name the specified module uses).
SCHEMA_METADATA_KEY = "_storage_schema"
#: Metadata key under which the routing of each metadata field is recorded.
ROUTING_METADATA_KEY = "_metadata_routing"
#: Metadata section holding the stored size of every data key, in KiB.
SIZES_METADATA_KEY = "file_sizes_KB"
_RESERVED_METADATA = frozenset((SCHEMA_METADATA_KEY, ROUTING_METADATA_KEY))
# Metadata the storage writes itself: never routed to .infoset / .attribset.
_UNROUTED_METADATA = frozenset((SIZES_METADATA_KEY, *_RESERVED_METADATA))


def size_in_kb(nbytes: int) -> float:
    """``nbytes`` as :data:`SIZES_METADATA_KEY` records it: KiB, to three decimals."""
    return round(nbytes / 1024.0, 3)


def is_size(value: Any) -> bool:
    """Whether ``value`` is a size record of one key: a plain number (not a bool).

    Parameters
    ----------
    value
        A value found in :data:`SIZES_METADATA_KEY`.
    """
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_size_section(value: Any) -> TypeGuard[dict[str, Any]]:
    """Whether ``value`` is a size record of a group of keys: a dict of size records.

    A dict that is a tagged value (a key starting with ``__``, such as the
    ``{"__float__": "NaN"}`` of a NaN saved as metadata, or a complex number's
    ``{"_numpy_complex": true, ...}``) is not: no data key starts with ``__``.

    Parameters
    ----------
    value
        A value found in :data:`SIZES_METADATA_KEY`.
    """
    if not isinstance(value, dict) or value.get("_numpy_complex") is True:
        return False
    return not any(isinstance(k, str) and k.startswith("__") for k in value)


def set_nested_size(sizes: dict[str, Any], key: str, kb: float) -> None:
    """Record the size ``kb`` of data key ``key`` in the sizes section ``sizes``.

    The one way a size is set at a ``/``-nested key: each part above the key becomes a
    section (see :func:`is_size_section`). Anything else found there (a number, the
    size of a former leaf, or a tagged value or other damage) is replaced by a new
    section, never written into.

    Parameters
    ----------
    sizes
        The :data:`SIZES_METADATA_KEY` section, a dict of size records.
    key
        The data key, ``/``-separated.
    kb
        Its size, as :func:`size_in_kb` gives it.
    """
    parts = key.split("/")
    node = sizes
    for part in parts[:-1]:
        child = node.get(part)
        if not is_size_section(child):
            child = node[part] = {}
        node = child
    node[parts[-1]] = kb


def sizes_section(doc: dict[str, Any]) -> dict[str, Any]:
    """Return the :data:`SIZES_METADATA_KEY` section of metadata document ``doc``,
    creating it (or replacing what is not a section, see :func:`is_size_section`)."""
    sizes = doc.get(SIZES_METADATA_KEY)
    if is_size_section(sizes):
        return sizes
    fresh: dict[str, Any] = {}
    doc[SIZES_METADATA_KEY] = fresh
    return fresh


class DataStorage(ABC):
    """The specified storage contract: what every storage provides.

    Subclass it for a storage of your own: implement the abstract methods below; the
    schema methods, ``compress_store`` and the context manager come with the class. A
    schema is kept in the storage's own metadata (``_storage_schema``), so it is saved
    and loaded with the rest of the storage's metadata.

    cadstore's backends derive from :class:`NodeStorage`, which implements all of this.
    """

    # ------------------------------------------------------------------ the contract
    @abstractmethod
    def save_data(self, data_key: str, data: Any) -> None:
        """Store ``data`` under ``data_key``, replacing what was there."""

    @abstractmethod
    def load_data(self, data_key: str) -> Any:
        """Return the value stored under ``data_key``; raise ``KeyError`` if there is none."""

    @abstractmethod
    def save_metadata(self, key: str, value: Any) -> None:
        """Store a metadata value under ``key`` (``/`` nests)."""

    @abstractmethod
    def load_metadata(self, key: str) -> Any:
        """Return the metadata value under ``key``; raise ``KeyError`` if there is none."""

    @abstractmethod
    def get_keys(self) -> list[str]:
        """Return the top-level data keys."""

    @abstractmethod
    def get_file_path(self, data_key: str) -> str:
        """Return where ``data_key`` lives on disk, or a message for in-memory storage.

        Parameters
        ----------
        data_key
            The data key.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the storage's resources."""

    @abstractmethod
    def format(self) -> str:
        """Return the storage format identifier (``"zarr"``, ``"memory"``, ``"json"``, ...)."""

    # ------------------------------------------------------------------ defaults
    def compress_store(self) -> int:
        """Compress the storage into a single file if the backend supports it.

        Returns
        -------
        int
            The size of the compressed file in bytes, or 0 when not applicable (this
            default).
        """
        return 0

    def set_schema(self, schema: Any) -> None:
        """Apply a schema, saved as the metadata ``_storage_schema`` (as specified).

        Parameters
        ----------
        schema
            What ``SchemaBuilder.build()`` returns (or a ``SchemaBuilder`` or ``Schema``).

        Raises
        ------
        SchemaError
            If the schema has the wrong shape; the message names the bad field. Nothing is
            saved then.
        """
        from cadstore.schema import Schema

        self.save_metadata(SCHEMA_METADATA_KEY, Schema.from_any(schema).to_dict())

    def get_schema(self) -> dict[str, Any]:
        """Return the schema in the ``SchemaBuilder.build()`` form, or ``{}`` if none is set."""
        try:
            stored = self.load_metadata(SCHEMA_METADATA_KEY)
        except KeyError:
            return {}
        return dict(stored) if isinstance(stored, Mapping) else {}

    def _parsed_schema(self) -> Schema | None:
        from cadstore.schema import Schema

        stored = self.get_schema()
        return Schema.from_any(stored) if stored else None

    def get_group_for_array(self, array_name: str) -> str | None:
        """Return the schema group that declares ``array_name``, or ``None``."""
        schema = self._parsed_schema()
        return None if schema is None else schema.group_for_array(array_name)

    def validate_data_against_schema(self, data_key: str, data: Any) -> bool:
        """Check ``data`` against the schema entry for ``data_key``.

        Returns
        -------
        bool
            ``True`` when valid, when no schema is set, or when the key is not in the schema.
            The rules are those of :meth:`cadstore.schema.Schema.validate_array`.
        """
        schema = self._parsed_schema()
        return schema is None or not schema.validate_array(data_key, data)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NodeStorage(DataStorage):
    """Every public method of :class:`DataStorage`, implemented once for cadstore's backends.

    Subclasses implement the primitives listed in the module docstring; everything public
    is implemented here, so every backend validates keys, converts values, tracks sizes,
    applies the schema and routes metadata the same way.

    Attributes
    ----------
    format_name
        What :meth:`format` returns (``"zarr"``, ``"memory"``, ``"json"``).
    allows_nan
        Whether NaN may be stored. OptStorage refuses it by default, as specified.
    """

    format_name: ClassVar[str] = "abstract"
    allows_nan: bool = True
    #: Whether :meth:`close` ends the storage. A backend whose every call stands alone
    #: (nothing held open, nothing pending) may stay usable after it.
    close_is_final: ClassVar[bool] = True
    # Backends that encode a value as soon as it is saved, keeping only the encoded bytes,
    # set this to False to skip copying every array first.
    _copy_on_save: ClassVar[bool] = True
    # Behind the _metadata and _schema properties (see _open_metadata).
    _metadata_doc: dict[str, Any] | None
    _schema_pending: Mapping[str, Any] | None
    _schema_value: Schema | None

    def __init__(self, *, read_only: bool = False) -> None:
        self._lock = threading.RLock()
        self._closed = False
        self._read_only = read_only
        self._schema: Schema | None = None
        self._strict = False
        self._metadata: dict[str, Any] = {}

    # ------------------------------------------------------------------ primitives
    @abstractmethod
    def _get_node(self, key: str) -> Node:
        """Return the node at ``key``; raise ``KeyError`` if absent."""

    @abstractmethod
    def _put_node(self, key: str, node: Node) -> None:
        """Store ``node`` at ``key``, replacing the subtree there."""

    @abstractmethod
    def _delete_node(self, key: str) -> None:
        """Remove the subtree at ``key``; raise ``KeyError`` if absent."""

    def _delete_writes_metadata(self, key: str) -> bool:
        """Whether :meth:`_delete_node` of ``key`` writes the metadata document itself,
        before it changes any data.

        For a deletion that changes other sizes too (a key inside a file holding others,
        see :class:`~cadstore.storage.JsonStorageHandler`): the dropped size record and
        those changes then go in one write, still ahead of the data. ``False`` here:
        :meth:`delete_data` writes the document, then deletes.
        """
        return False

    @abstractmethod
    def _node_kind(self, key: str) -> NodeKind | None:
        """Return ``"leaf"``, ``"group"`` or ``None``."""

    @abstractmethod
    def _top_level_keys(self) -> list[str]:
        """Return the names stored at the root."""

    @abstractmethod
    def _stored_nbytes(self, key: str) -> int:
        """Return the bytes used to store ``key``."""

    @abstractmethod
    def _read_metadata_document(self) -> dict[str, Any]:
        """Load the persisted metadata document (empty if none)."""

    @abstractmethod
    def _write_metadata_document(self, doc: dict[str, Any]) -> None:
        """Persist the metadata document (a backend may defer this to close)."""

    @abstractmethod
    def get_file_path(self, data_key: str) -> str:
        """Return where ``data_key`` lives on disk, or a message for in-memory storage.

        Parameters
        ----------
        data_key
            The data key.
        """

    def _close(self) -> None:
        """Release backend resources; called once, under the lock."""

    # ------------------------------------------------------------------ lifecycle
    def _open_metadata(self) -> None:
        """Mark the stored metadata document (and the schema kept in it) to be loaded on
        first use; backends call this once they can read it.

        Opening an item to read one array should not pay for parsing a metadata document
        and validating a schema it never consults.
        """
        self._metadata_doc = None

    # Both are parsed on first use. ``_metadata_doc`` is None until the document is read;
    # reading it may find a stored schema, kept in ``_schema_pending`` until asked for.
    @property
    def _metadata(self) -> dict[str, Any]:
        doc = self._metadata_doc
        if doc is None:
            doc = self._metadata_doc = self._read_metadata_document()
            stored = doc.get(SCHEMA_METADATA_KEY)
            if isinstance(stored, Mapping) and stored:
                self._schema_pending = stored
        return doc

    @_metadata.setter
    def _metadata(self, value: dict[str, Any]) -> None:
        self._metadata_doc = value

    @property
    def _schema(self) -> Schema | None:
        if self._metadata_doc is None:
            self._metadata  # noqa: B018 - loading the document finds the stored schema
        pending = self._schema_pending
        if pending is not None:
            from cadstore.schema import Schema

            self._schema_pending = None
            try:
                self._schema_value = Schema.from_any(pending)
            except SchemaError:
                # A broken schema must not make the data unreadable; it can be set again.
                self._schema_value = None
        return self._schema_value

    @_schema.setter
    def _schema(self, value: Schema | None) -> None:
        self._schema_pending = None
        self._schema_value = value

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def read_only(self) -> bool:
        """Whether writes are refused."""
        return self._read_only

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosedError(f"{self!r} is closed; open a new storage to use it again")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise ReadOnlyStorageError(f"{self!r} is read-only; {self._how_to_write()}")

    def _how_to_write(self) -> str:
        """How to write what this read-only storage holds: the end of the message
        refusing a write. Backends that know why they are read-only say more."""
        return "open it at a new path to write, or reopen the uncompressed store"

    def close(self) -> None:
        """Release resources. Idempotent and safe to call from several threads.

        Any other call after it raises :class:`~cadstore.errors.StorageClosedError`,
        unless the backend's ``close_is_final`` is false (``JsonStorageHandler``, whose
        close the specification makes a no-op).
        """
        with self._lock:
            if self._closed:
                return
            try:
                self._close()
            finally:
                self._closed = self.close_is_final

    def format(self) -> str:
        """Return the storage format identifier (``"zarr"``, ``"memory"`` or ``"json"``)."""
        return self.format_name

    def compress_store(self) -> int:
        """Compress the storage into a single file if the backend supports it.

        Returns
        -------
        int
            The size of the compressed file in bytes, or 0 when not applicable.
        """
        self._check_open()
        return 0

    # ------------------------------------------------------------------ data
    def save_data(self, data_key: str, data: Any) -> None:
        """Store ``data`` under ``data_key``, replacing what was there.

        Parameters
        ----------
        data_key
            A key such as ``"face_areas"`` or ``"graph/edges_source"``.
        data
            An array, scalar, string, list or nested dict (see :mod:`cadstore.storage.values`).

        Raises
        ------
        InvalidKeyError, UnsupportedTypeError, InvalidDataError, KeyConflictError
            For a bad key, an unrepresentable value, refused data (NaN), or a key below a
            stored leaf. Nothing is written in any of these cases.
        SchemaValidationError
            In strict schema mode, when the data contradicts the schema.
        """
        with self._lock:
            self._check_writable()
            key = validate_key(data_key)
            node = normalize_value(key, data, copy=self._copy_on_save)
            check_storable(key, node)
            if not self.allows_nan:
                contains_nan(key, node)
            if self._strict and self._schema is not None:
                problems = self._schema.validate_array(key, node)
                if problems:
                    expected = self._describe_spec(key)
                    raise SchemaValidationError(key, expected, "; ".join(problems))
            self._check_ancestors(key)
            self._put_node(key, node)
            self._record_size(key, self._stored_nbytes(key))

    def load_data(self, data_key: str) -> Any:
        """Return the value stored under ``data_key`` (a dict for a group).

        Raises
        ------
        KeyNotFoundError
            If nothing is stored there (a ``KeyError``).
        """
        with self._lock:
            self._check_open()
            key = validate_key(data_key)
            try:
                return self._get_node(key)
            except KeyError:
                raise KeyNotFoundError(
                    key, f"data key {key!r} does not exist in {self!r}{self._hint(key)}"
                ) from None

    def delete_data(self, data_key: str) -> None:
        """Remove ``data_key`` and everything below it, and its size record.

        Raises
        ------
        KeyNotFoundError
            If nothing is stored there.
        """
        with self._lock:
            self._check_writable()
            key = validate_key(data_key)
            missing = KeyNotFoundError(key, f"data key {key!r} does not exist in {self!r}")
            if self._node_kind(key) is None:
                raise missing
            # The size record goes first: a writer killed between the two steps leaves the
            # data without a size (which a storage that checks its sizes on open gives back,
            # see JsonStorageHandler), never a size for data that is gone.
            sizes = self._metadata.get(SIZES_METADATA_KEY)
            dropped = isinstance(sizes, dict) and self._pop_nested(sizes, key.split("/"))
            if dropped and not self._delete_writes_metadata(key):
                self._write_metadata_document(self._metadata)
            try:
                self._delete_node(key)
            except KeyError:
                raise missing from None

    def get_keys(self) -> list[str]:
        """Return the top-level data keys (arrays and groups)."""
        with self._lock:
            self._check_open()
            return list(self._top_level_keys())

    def __contains__(self, data_key: object) -> bool:
        with self._lock:
            self._check_open()
            try:
                key = validate_key(data_key)
            except (InvalidKeyError, TypeError):
                return False
            return self._node_kind(key) is not None

    def _check_ancestors(self, key: str) -> None:
        parts = key.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if self._node_kind(prefix) == "leaf":
                raise KeyConflictError(
                    f"cannot save {key!r}: {prefix!r} holds data, not a group; delete "
                    f"{prefix!r} first or choose another key"
                )

    def _hint(self, key: str) -> str:
        top = self._top_level_keys()
        if not top:
            return " (the storage is empty)"
        shown = ", ".join(repr(k) for k in sorted(top)[:8])
        more = ", ..." if len(top) > 8 else ""
        return f"; top-level keys are {shown}{more}"

    # ------------------------------------------------------------------ sizes
    def _record_size(self, key: str, nbytes: int) -> None:
        set_nested_size(sizes_section(self._metadata), key, size_in_kb(nbytes))
        self._write_metadata_document(self._metadata)

    @staticmethod
    def _pop_nested(doc: dict[str, Any], parts: list[str]) -> bool:
        node: Any = doc
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                return False
        if isinstance(node, dict) and parts[-1] in node:
            del node[parts[-1]]
            return True
        return False

    # ------------------------------------------------------------------ metadata
    def save_metadata(self, key: str, value: Any) -> None:
        """Store a metadata value, nesting on ``/`` and merging dicts into existing sections.

        Parameters
        ----------
        key
            A key such as ``"size_cadfile"`` or ``"processing/duration"``.
        value
            ``bool``, ``int``, ``float``, ``str``, ``None``, a list, an array or a dict of
            these. Arrays are kept as lists.

        Raises
        ------
        KeyConflictError
            If an ancestor of ``key`` holds a value rather than a section.
        InvalidKeyError
            For a bad key or one of the reserved names ``_storage_schema`` and
            ``_metadata_routing`` (use :meth:`set_schema`).
        """
        with self._lock:
            self._check_writable()
            validate_key(key, what="metadata key")
            if key.split("/")[0] in _RESERVED_METADATA:
                raise InvalidKeyError(key, "this metadata key is reserved by the storage")
            encoded = encode_metadata(key, value)
            self._set_metadata(key, encoded)
            if self._schema is not None and key.split("/")[0] not in _UNROUTED_METADATA:
                route = self._schema.route_metadata(key, value)
                self._metadata.setdefault(ROUTING_METADATA_KEY, {})[key] = route
            self._write_metadata_document(self._metadata)

    def _set_metadata(self, key: str, encoded: Any) -> None:
        parts = key.split("/")
        node = self._metadata
        for i, part in enumerate(parts[:-1]):
            child = metadata_section(node.setdefault(part, {}))
            if child is None:
                where = "/".join(parts[: i + 1])
                raise KeyConflictError(
                    f"cannot save metadata {key!r}: {where!r} holds a value, not a section"
                )
            node = child
        last = parts[-1]
        node[last] = _merged(node.get(last), encoded)

    def load_metadata(self, key: str | None = None) -> Any:
        """Return the metadata value (or section, as a dict) stored under ``key``.

        Parameters
        ----------
        key
            A ``/``-nested key; ``None`` returns the whole metadata document.

        Raises
        ------
        KeyNotFoundError
            If the key does not exist.
        """
        from cadstore.format.jsoncodec import decode_metadata

        with self._lock:
            self._check_open()
            if key is None:
                return decode_metadata(copy.deepcopy(self._metadata))
            validate_key(key, what="metadata key")
            node: Any = self._metadata
            for part in key.split("/"):
                # Through a section's keys, wrapped or not (see metadata_section).
                section = metadata_section(node)
                if section is None or part not in section:
                    raise KeyNotFoundError(key, f"metadata key {key!r} does not exist in {self!r}")
                node = section[part]
            return decode_metadata(copy.deepcopy(node))

    def get_metadata_routing(self, key: str | None = None) -> Any:
        """Return where each metadata field saved under a schema is routed.

        Parameters
        ----------
        key
            A metadata key; ``None`` returns the whole ``{key: route}`` mapping.

        Returns
        -------
        str or dict
            ``"file_level"`` (to ``.infoset``) or ``"categorical"`` (to ``.attribset``).
        """
        with self._lock:
            self._check_open()
            routing = dict(self._metadata.get(ROUTING_METADATA_KEY, {}))
            if key is None:
                return routing
            if key not in routing:
                raise KeyNotFoundError(key, f"no routing recorded for metadata key {key!r}")
            return routing[key]

    # ------------------------------------------------------------------ schema
    def set_schema(self, schema: Any, *, strict: bool = False) -> None:
        """Apply a schema: validation, group lookup and metadata routing.

        Parameters
        ----------
        schema
            What ``SchemaBuilder.build()`` returns, the same dict after a JSON round trip,
            a dict with single-nested ``metadata``, a ``SchemaBuilder`` or a ``Schema``.
        strict
            When true, :meth:`save_data` refuses data that contradicts the schema with a
            :class:`~cadstore.errors.SchemaValidationError`.

        Raises
        ------
        SchemaError
            If the schema has the wrong shape; the message names the bad field.
        """
        from cadstore.schema import Schema

        with self._lock:
            self._check_writable()
            parsed = Schema.from_any(schema)
            self._schema = parsed
            self._strict = bool(strict)
            self._metadata[SCHEMA_METADATA_KEY] = parsed.to_dict()
            self._write_metadata_document(self._metadata)

    def get_schema(self) -> dict[str, Any]:
        """Return the schema in the ``SchemaBuilder.build()`` form, or ``{}`` if none is set."""
        with self._lock:
            self._check_open()
            return {} if self._schema is None else self._schema.to_dict()

    @property
    def schema(self) -> Schema | None:
        """The parsed schema, or ``None``."""
        return self._schema

    @property
    def strict(self) -> bool:
        """Whether :meth:`save_data` enforces the schema."""
        return self._strict

    def get_group_for_array(self, array_name: str) -> str | None:
        """Return the schema group that declares ``array_name``, or ``None``."""
        with self._lock:
            self._check_open()
            return None if self._schema is None else self._schema.group_for_array(array_name)

    def validate_data_against_schema(self, data_key: str, data: Any) -> bool:
        """Check ``data`` against the schema entry for ``data_key``.

        Returns
        -------
        bool
            ``True`` when valid, when no schema is set, or when the key is not in the schema.
            The rules are those of :meth:`cadstore.schema.Schema.validate_array`.
        """
        with self._lock:
            self._check_open()
            if self._schema is None:
                return True
            return not self._schema.validate_array(data_key, data)

    def _describe_spec(self, key: str) -> str:
        assert self._schema is not None
        found = self._schema.array_spec(key)
        if found is None:
            return "data matching the schema"
        group, name, spec = found
        return (
            f"{group}/{name} with dims {list(spec.get('dims', []))} and dtype {spec.get('dtype')}"
        )

    # ------------------------------------------------------------------ display
    def _describe(self) -> str:
        return ""

    def __repr__(self) -> str:
        where = self._describe()
        state = "closed" if self._closed else ("read-only" if self._read_only else "open")
        return f"<{type(self).__name__}{' ' + where if where else ''} {state}>"


def _merged(stored: Any, encoded: Any) -> Any:
    """An encoded metadata value saved over ``stored``: sections (dicts) merge key by key,
    anything else replaces. Sections are merged as the keys they hold, whether wrapped
    for keys like ``"__build__"`` or not (see :func:`metadata_section`), and the result
    is wrapped as its keys need."""
    old, new = metadata_section(stored), metadata_section(encoded)
    if old is None or new is None:
        return encoded
    for k, v in new.items():
        old[k] = _merged(old.get(k), v)
    return as_metadata_section(old)
