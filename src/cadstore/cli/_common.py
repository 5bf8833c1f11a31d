"""Helpers shared by the ``cadstore`` subcommands.

* :func:`open_target` decides what a ``PATH`` argument is (an item, a merged dataset, a
  JSON store, or a ``.flow`` manifest naming a dataset), on local disk or at a URL such as
  ``s3://bucket/parts/p1.zarr.data``, and opens it read-only;
* :func:`add_storage_option` and :func:`parse_storage_options` give every command that
  takes paths the repeatable ``--storage-option KEY=VALUE`` for URLs;
* :func:`print_json` / :func:`to_jsonable` write the ``--json`` documents;
* :func:`format_table`, :func:`format_tree`, :func:`format_value` and :func:`format_bytes`
  lay out the human output;
* :func:`progress` shows a progress bar on long work when a person is watching.

Errors meant for the user are :class:`CommandError`; the framework in
:mod:`cadstore.cli` prints them as one line and exits with status 2.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from cadstore.errors import (
    CadstoreError,
    CorruptStoreError,
    SchemaError,
)
from cadstore.fs import is_url
from cadstore.storage.base import (
    ROUTING_METADATA_KEY,
    SCHEMA_METADATA_KEY,
    SIZES_METADATA_KEY,
)

if TYPE_CHECKING:
    import argparse

    from cadstore.format.hierarchy import ReadHierarchy
    from cadstore.format.sources import KeySource
    from cadstore.schema import Schema
    from cadstore.storage.base import DataStorage

__all__ = [
    "DATASET",
    "EXPECTED",
    "ITEM",
    "JSON_STORE",
    "CommandError",
    "NodeInfo",
    "SCHEMA_KEY",
    "STORAGE_METADATA",
    "Target",
    "add_json_option",
    "add_storage_option",
    "format_bytes",
    "format_ratio",
    "format_table",
    "format_tree",
    "format_value",
    "hierarchy_nodes",
    "iter_leaves",
    "leaf_dtype_shape",
    "open_target",
    "parse_storage_options",
    "print_json",
    "print_lines",
    "progress",
    "sized_totals",
    "storage_nodes",
    "to_jsonable",
]

Kind = Literal["item", "dataset", "json"]
ITEM: Kind = "item"
DATASET: Kind = "dataset"
JSON_STORE: Kind = "json"

#: What a PATH argument may be, for error messages.
EXPECTED = "an item (.data file or item directory), a dataset (.dataset) or a JSON store directory"

#: Prefix of the root ``cadstore`` attribute of every dataset format, current or future.
_DATASET_FAMILY = "cadstore-dataset/"
#: Metadata the storages write for themselves: the schema (commands show a summary of it),
#: the routing of each field, and the stored size of each key.
SCHEMA_KEY = SCHEMA_METADATA_KEY
STORAGE_METADATA = frozenset((SCHEMA_METADATA_KEY, ROUTING_METADATA_KEY, SIZES_METADATA_KEY))
#: Elements above which arrays are summarised (numpy's own default threshold).
SUMMARY_THRESHOLD = 1000
#: Longest inline rendering of a list in a tree before it is shortened.
_INLINE_WIDTH = 100

T = TypeVar("T")


class CommandError(CadstoreError, ValueError):
    """Bad input to a command: an unknown path, key, item or option combination.

    Deriving from ``ValueError`` makes the framework exit with status 2 (bad input).
    """


# ---------------------------------------------------------------------------- opening
@dataclass
class Target:
    """A ``PATH`` argument, opened read-only.

    Attributes
    ----------
    kind
        ``"item"``, ``"dataset"`` or ``"json"``.
    path
        The path as the user gave it.
    location
        The file or directory actually opened (the ``.data`` file for an item given by its
        store path, the dataset a ``.flow`` manifest names, ...).
    storage
        The item's ``OptStorage`` or the ``JsonStorageHandler``; ``None`` for a dataset.
    hierarchy
        The Zarr hierarchy of an item or dataset; ``None`` for a JSON store.
    source
        The key source under ``hierarchy``.
    storage_options
        The fsspec options that opened ``location`` when it is a URL, for commands that
        open it again (``None`` for a local path).
    """

    kind: Kind
    path: str
    location: str
    storage: DataStorage | None = None
    hierarchy: ReadHierarchy | None = None
    source: KeySource | None = None
    storage_options: dict[str, Any] | None = None
    _dataset_metadata: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """What the target is, in words (``"item"``, ``"dataset"``, ``"JSON store"``)."""
        return "JSON store" if self.kind == JSON_STORE else self.kind

    @property
    def a_label(self) -> str:
        """:attr:`label` with its article (``"an item"``, ``"a dataset"``)."""
        return f"an {self.label}" if self.kind == ITEM else f"a {self.label}"

    def require_storage(self, command: str) -> DataStorage:
        """Return the storage of an item or JSON store.

        Parameters
        ----------
        command
            The command name, for the error message.

        Raises
        ------
        CommandError
            If the target is a dataset.
        """
        if self.storage is None:
            raise CommandError(
                f"{command} takes an item or a JSON store; {self.path} is {self.a_label}"
            )
        return self.storage

    def dataset_metadata(self) -> dict[str, Any]:
        """Return a dataset's ``metadata.json`` (``{}`` when it has none)."""
        if self._dataset_metadata is None:
            raw = self.source.get("metadata.json") if self.source is not None else None
            doc: Any = {}
            if raw:
                try:
                    doc = json.loads(raw)
                except (ValueError, RecursionError) as exc:
                    raise CorruptStoreError(
                        self.location, f"metadata.json is not valid JSON: {exc}"
                    ) from exc
            if not isinstance(doc, dict):
                raise CorruptStoreError(self.location, "metadata.json is not a JSON object")
            self._dataset_metadata = doc
        return self._dataset_metadata

    def metadata(self) -> dict[str, Any]:
        """Return the metadata document: the item's, or the dataset's ``metadata.json``."""
        if self.storage is not None:
            doc = self.storage.load_metadata()
            return doc if isinstance(doc, dict) else {}
        return dict(self.dataset_metadata())

    def schema(self) -> Schema | None:
        """Return the schema stored with the target, or ``None``."""
        if self.storage is not None:
            return self.storage.schema
        stored = self.dataset_metadata().get(SCHEMA_KEY)
        if not isinstance(stored, Mapping) or not stored:
            return None
        from cadstore.schema import Schema

        try:
            return Schema.from_any(stored)
        except SchemaError:
            # A damaged schema must not stop a user from looking at the data.
            return None

    def close(self) -> None:
        """Release the open files. Idempotent."""
        try:
            if self.storage is not None:
                self.storage.close()
        finally:
            if self.source is not None:
                self.source.close()
                self.source = None

    def __enter__(self) -> Target:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _not_a_store(path: str, why: str) -> CommandError:
    return CommandError(f"{path} is not {EXPECTED}: {why}")


def add_storage_option(
    parser: argparse.ArgumentParser, *, dest: str = "storage_option", explain: bool = False
) -> None:
    """Add the repeatable ``--storage-option KEY=VALUE`` for paths that are URLs.

    Parameters
    ----------
    parser
        The ``cadstore`` parser (options before the command) or a subcommand's parser.
    dest
        Where the raw ``KEY=VALUE`` strings go; :func:`parse_storage_options` reads them.
    explain
        Give the whole explanation (the top-level help, where it appears once); the
        subcommands' help points there.
    """
    text = (
        "fsspec option for paths that are URLs (s3://...), repeatable; VALUE is read "
        "as JSON when it parses (true, 3, {...}), else as text; dots nest keys, e.g. "
        "client_kwargs.endpoint_url=http://127.0.0.1:8333. Without it, credentials and "
        "endpoint come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_ENDPOINT_URL, AWS_PROFILE, FSSPEC_S3_*)"
        if explain
        else "fsspec option for URL paths, repeatable (see 'cadstore --help')"
    )
    parser.add_argument(
        "--storage-option", dest=dest, action="append", default=None, metavar="KEY=VALUE", help=text
    )


def parse_storage_options(pairs: Iterable[str] | None) -> dict[str, Any] | None:
    """Turn ``KEY=VALUE`` strings into fsspec storage options.

    Parameters
    ----------
    pairs
        The ``--storage-option`` values, in order; a later one replaces an earlier one.

    Returns
    -------
    dict or None
        ``None`` when there are none, so the environment configuration applies.

    Raises
    ------
    CommandError
        If a pair has no ``=`` or an empty key segment, or a key is both a value and a
        parent of other keys.
    """
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise CommandError(
                f"--storage-option {pair!r}: expected KEY=VALUE, e.g. "
                "client_kwargs.endpoint_url=http://127.0.0.1:8333"
            )
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        node = options
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CommandError(
                    f"--storage-option {pair!r}: {'.'.join(parts[: depth + 1])} is already "
                    "set to a value, so it cannot also hold keys"
                )
            node = child
        node[parts[-1]] = value
    return options or None


def _url_filesystem(path: str, storage_options: dict[str, Any] | None) -> Any:
    from cadstore.dataset.access import dataset_filesystem

    return dataset_filesystem(path, storage_options)[0]


def open_target(
    path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> Target:
    """Open ``path`` read-only, whatever kind of store it is.

    Parameters
    ----------
    path
        An item ``.data`` file, an item's store path without ``.data``, an uncompressed
        item directory, a ``.dataset`` zip or directory, a JSON store directory, or a
        ``.flow`` manifest (which opens the dataset it names); local or a URL.
    storage_options
        fsspec options for a URL (ignored for a local path).

    Returns
    -------
    Target
        The opened target; close it (or use it as a context manager) when done.

    Raises
    ------
    CommandError
        If ``path`` does not exist or is none of the above; the message names the path and
        what was expected.
    CorruptStoreError
        If ``path`` is a store of a known kind that cannot be read.
    """
    given = os.fspath(path)
    # "dir/" and "dir" are the same store; a bare "/" must stay as it is.
    clean = given.rstrip("/") or given
    if is_url(clean):
        target = _open_url(given, clean, storage_options)
        target.storage_options = storage_options if is_url(target.location) else None
        return target
    if os.path.isdir(clean):
        return _open_directory(given, clean)
    if os.path.isfile(clean):
        if clean.endswith(".flow"):
            return _open_flow(given, clean)
        return _open_zip(given, clean)
    if os.path.isfile(clean + ".data"):
        # The item's store path, as OptStorage takes it.
        return _open_zip(given, clean + ".data")
    if os.path.lexists(clean):
        raise _not_a_store(given, "neither a regular file nor a directory")
    raise CommandError(f"{given}: no such file or directory; expected {EXPECTED}")


def _open_url(given: str, url: str, storage_options: dict[str, Any] | None) -> Target:
    """Open a URL: the same kinds as on disk, found with object-store queries."""
    fs = _url_filesystem(url, storage_options)
    if fs.isfile(url):
        if url.endswith(".flow"):
            return _open_flow(given, url, storage_options)
        return _open_zip(given, url, storage_options)
    if fs.isfile(url + ".data"):
        return _open_zip(given, url + ".data", storage_options)
    if fs.isdir(url):
        return _open_directory(given, url, storage_options)
    raise CommandError(f"{given}: no such object or prefix; expected {EXPECTED}")


def _open_zip(given: str, file: str, storage_options: dict[str, Any] | None = None) -> Target:
    from cadstore.format.sources import ZipSource

    fs = _url_filesystem(file, storage_options)
    try:
        source = ZipSource(file, fs=fs)
    except CorruptStoreError as exc:
        raise _not_a_store(given, exc.problem) from exc
    return _open_hierarchy(given, file, source, is_zip=True, storage_options=storage_options)


def _open_directory(
    given: str, directory: str, storage_options: dict[str, Any] | None = None
) -> Target:
    fs = _url_filesystem(directory, storage_options)
    names = set(fs.listdir(directory))
    remote = is_url(directory)
    if names & {"zarr.json", ".zgroup", ".zmetadata"}:
        if remote:
            from cadstore.dataset.access import prefix_source

            source: KeySource = prefix_source(fs, directory)
        else:
            from cadstore.format.sources import DirectorySource

            source = DirectorySource(directory)
        return _open_hierarchy(
            given, directory, source, is_zip=False, storage_options=storage_options
        )
    if any(n.endswith(".json") for n in names):
        from cadstore.storage import JsonStorageHandler

        storage = JsonStorageHandler(
            directory, read_only=True, storage_options=storage_options if remote else None
        )
        return Target(JSON_STORE, given, directory, storage=storage)
    raise _not_a_store(given, "the directory holds no zarr.json, .zgroup or .json files")


def _open_hierarchy(
    given: str,
    location: str,
    source: KeySource,
    *,
    is_zip: bool,
    storage_options: dict[str, Any] | None = None,
) -> Target:
    from cadstore.dataset.merge import DATASET_FORMAT
    from cadstore.format.hierarchy import ReadHierarchy

    try:
        try:
            hierarchy = ReadHierarchy(source)
        except CorruptStoreError as exc:
            raise _not_a_store(given, exc.problem) from exc
        marker = hierarchy.group_attributes.get("", {}).get("cadstore")
        if isinstance(marker, str) and marker.startswith(_DATASET_FAMILY):
            if marker != DATASET_FORMAT:
                raise CommandError(
                    f"{given} is a dataset of format {marker!r}; this cadstore reads "
                    f"{DATASET_FORMAT!r}"
                )
            return Target(DATASET, given, location, hierarchy=hierarchy, source=source)
        fs = _url_filesystem(location, storage_options)
        if not is_zip and fs.isfile(location + ".data"):
            # OptStorage reads a published .data in preference to the directory next to
            # it; show the same file, so the tree and the values agree.
            source.close()
            return _open_zip(given, location + ".data", storage_options)
        storage = _open_item(given, location, is_zip=is_zip, storage_options=storage_options)
        return Target(ITEM, given, location, storage=storage, hierarchy=hierarchy, source=source)
    except BaseException:
        source.close()
        raise


def _open_item(
    given: str, location: str, *, is_zip: bool, storage_options: dict[str, Any] | None = None
) -> DataStorage:
    from cadstore.storage.opt import OptStorage

    options = storage_options if is_url(location) else None
    if not is_zip:
        return OptStorage(location, mode="r", summary_dir=False, storage_options=options)
    stem, extension = os.path.splitext(location)
    if not extension or "/" in extension:
        raise _not_a_store(
            given, "an item file needs an extension (such as .data) after its store path"
        )
    return OptStorage(stem, extension, mode="r", summary_dir=False, storage_options=options)


def _open_flow(given: str, manifest: str, storage_options: dict[str, Any] | None = None) -> Target:
    from cadstore.dataset.merger import FLOW_FORMAT

    fs = _url_filesystem(manifest, storage_options)
    try:
        doc = json.loads(fs.read_bytes(manifest))
    except (ValueError, RecursionError) as exc:
        raise _not_a_store(given, f"the .flow manifest is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FLOW_FORMAT:
        raise _not_a_store(given, f"not a {FLOW_FORMAT!r} manifest")
    data = doc.get("flow_data")
    if not isinstance(data, str) or not data:
        raise CommandError(f"manifest {given} names no dataset (its 'flow_data' is {data!r})")
    if is_url(data) or os.path.isabs(data):
        dataset = data
    elif is_url(manifest):
        dataset = fs.join(fs.dirname(manifest), data)
    else:
        dataset = os.path.join(os.path.dirname(os.path.abspath(manifest)), data)
    data_fs = _url_filesystem(dataset, storage_options)
    if not data_fs.exists(dataset):
        raise CommandError(f"manifest {given} lists the dataset {data!r}, which does not exist")
    target = open_target(dataset, storage_options)
    if target.kind != DATASET:
        target.close()
        raise CommandError(f"manifest {given} lists {data!r}, which is {target.a_label}")
    target.path = given
    return target


# ---------------------------------------------------------------------------- structure
@dataclass
class NodeInfo:
    """One group or array of a store, as ``inspect`` shows it.

    Attributes
    ----------
    path
        ``/``-separated path from the root.
    type
        ``"group"`` or ``"array"``.
    depth
        Nesting level (0 at the root).
    shape, dtype, dims, chunks, codecs
        Array layout (``None`` where unknown or for groups).
    stored_bytes
        Bytes the node's chunks occupy on disk (``None`` where not separable).
    raw_bytes
        Uncompressed bytes (``None`` for variable-length strings); for a group, the sum
        over the arrays below it whose size is known.
    sized_stored_bytes
        For a group, the stored bytes of the arrays counted in ``raw_bytes``, so that the
        ratio compares like with like.
    attributes
        Zarr attributes (for groups: ``primary_dimension`` and friends).
    """

    path: str
    type: Literal["group", "array"]
    depth: int
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    dims: tuple[str, ...] | None = None
    chunks: tuple[int, ...] | None = None
    codecs: list[str] | None = None
    stored_bytes: int | None = None
    raw_bytes: int | None = None
    sized_stored_bytes: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The last path segment."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def ratio(self) -> float | None:
        """Compression ratio, raw over stored bytes (``None`` when either is unknown)."""
        stored = self.stored_bytes if self.sized_stored_bytes is None else self.sized_stored_bytes
        if not self.raw_bytes or not stored:
            return None
        return self.raw_bytes / stored

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (``--json`` output)."""
        doc: dict[str, Any] = {"path": self.path, "type": self.type}
        if self.type == "array":
            doc.update(
                shape=None if self.shape is None else list(self.shape),
                dtype=self.dtype,
                dims=None if self.dims is None else list(self.dims),
                chunks=None if self.chunks is None else list(self.chunks),
                codecs=self.codecs,
            )
        doc.update(
            stored_bytes=self.stored_bytes,
            raw_bytes=self.raw_bytes,
            ratio=None if self.ratio is None else round(self.ratio, 4),
            attributes=self.attributes,
        )
        return doc


def _codec_names(codecs: Iterable[Mapping[str, Any]]) -> list[str]:
    names = []
    for codec in codecs:
        # v3 codecs carry "name"; v2 compressors and filters carry "id".
        name = codec.get("name") or codec.get("id")
        names.append(str(name) if name is not None else "?")
    return names


def sized_totals(arrays: Iterable[NodeInfo]) -> tuple[int | None, int | None]:
    """Return ``(raw, stored)`` over the arrays whose raw and stored sizes are both known.

    Variable-length strings have no fixed raw size; leaving them out of both sums keeps
    the ratio of the rest meaningful.

    Parameters
    ----------
    arrays
        Array nodes.

    Returns
    -------
    tuple
        ``(None, None)`` when no array qualifies.
    """
    sized = [a for a in arrays if a.raw_bytes is not None and a.stored_bytes is not None]
    if not sized:
        return None, None
    return sum(a.raw_bytes or 0 for a in sized), sum(a.stored_bytes or 0 for a in sized)


def _fill_group_totals(nodes: list[NodeInfo]) -> None:
    for group in (n for n in nodes if n.type == "group"):
        prefix = group.path + "/"
        below = [n for n in nodes if n.type == "array" and n.path.startswith(prefix)]
        group.raw_bytes, group.sized_stored_bytes = sized_totals(below)


def hierarchy_nodes(hierarchy: ReadHierarchy) -> list[NodeInfo]:
    """Return the groups and arrays of a Zarr hierarchy, depth first, in stored order.

    Parameters
    ----------
    hierarchy
        An item's or a dataset's hierarchy.

    Returns
    -------
    list of NodeInfo
        Parents come before their children.
    """
    nodes: list[NodeInfo] = []

    def visit(group: str, depth: int) -> None:
        for name in hierarchy.children(group):
            path = f"{group}/{name}" if group else name
            if path in hierarchy.arrays:
                meta = hierarchy.meta(path)
                dtype = meta.dtype
                raw = (
                    int(np.prod(meta.shape, dtype=np.int64)) * dtype.itemsize
                    if isinstance(dtype, np.dtype)
                    else None
                )
                nodes.append(
                    NodeInfo(
                        path,
                        "array",
                        depth,
                        shape=tuple(meta.shape),
                        dtype=str(dtype),
                        dims=None if meta.dims is None else tuple(meta.dims),
                        chunks=tuple(meta.chunks),
                        codecs=_codec_names([*meta.filters, *meta.codecs]),
                        stored_bytes=hierarchy.stored_nbytes(path),
                        raw_bytes=raw,
                        attributes=dict(meta.attributes),
                    )
                )
            else:
                nodes.append(
                    NodeInfo(
                        path,
                        "group",
                        depth,
                        stored_bytes=hierarchy.stored_nbytes(path),
                        attributes=dict(hierarchy.group_attributes.get(path, {})),
                    )
                )
                visit(path, depth + 1)

    visit("", 0)
    _fill_group_totals(nodes)
    return nodes


def iter_leaves(storage: DataStorage) -> Iterator[tuple[str, Any]]:
    """Yield ``(key, value)`` for every leaf of a storage, groups flattened with ``/``.

    Parameters
    ----------
    storage
        An open storage.
    """

    def walk(key: str, value: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(value, Mapping):
            for name, child in value.items():
                yield from walk(f"{key}/{name}", child)
        else:
            yield key, value

    for top in storage.get_keys():
        yield from walk(top, storage.load_data(top))


def leaf_dtype_shape(value: Any) -> tuple[str, tuple[int, ...]]:
    """Return the dtype name and shape of a stored leaf, whatever its Python type.

    Parameters
    ----------
    value
        An array, numpy or Python scalar, ``str`` or list of ``str``.

    Returns
    -------
    tuple
        ``(dtype, shape)``; strings report ``"str"``.
    """
    if isinstance(value, np.ndarray | np.generic):
        dtype = "str" if value.dtype.kind in "UO" else str(value.dtype)
        return dtype, tuple(value.shape)
    if isinstance(value, str):
        return "str", ()
    if isinstance(value, list):
        return "str", (len(value),)
    return type(value).__name__, ()


def _leaf_raw_bytes(value: Any) -> int | None:
    if isinstance(value, np.ndarray | np.generic):
        return None if value.dtype.kind in "UO" else int(value.nbytes)
    if isinstance(value, bool | int | float | complex):
        return int(np.asarray(value).nbytes)
    return None


def storage_nodes(storage: DataStorage) -> list[NodeInfo]:
    """Return the groups and leaves of a storage that has no Zarr hierarchy (JSON stores).

    A leaf's stored size is the size of its file when the file holds that leaf alone;
    leaves saved together inside one dict file share it, so only their group has a size.

    Parameters
    ----------
    storage
        An open storage whose ``get_file_path`` names real files.

    Returns
    -------
    list of NodeInfo
        Parents come before their children.
    """
    leaves = list(iter_leaves(storage))
    files = {key: storage.get_file_path(key) for key, _ in leaves}
    users: dict[str, int] = {}
    for file in files.values():
        users[file] = users.get(file, 0) + 1

    def size(file: str) -> int | None:
        return os.path.getsize(file) if os.path.isfile(file) else None

    nodes: list[NodeInfo] = []
    seen_groups: set[str] = set()
    for key, value in leaves:
        parts = key.split("/")
        for depth in range(len(parts) - 1):
            group = "/".join(parts[: depth + 1])
            if group not in seen_groups:
                seen_groups.add(group)
                group_files = {f for k, f in files.items() if k.startswith(group + "/")}
                sizes = [size(f) for f in group_files]
                nodes.append(
                    NodeInfo(
                        group,
                        "group",
                        depth,
                        stored_bytes=None if None in sizes else sum(s or 0 for s in sizes),
                    )
                )
        dtype, shape = leaf_dtype_shape(value)
        file = files[key]
        nodes.append(
            NodeInfo(
                key,
                "array",
                len(parts) - 1,
                shape=shape,
                dtype=dtype,
                stored_bytes=size(file) if users[file] == 1 else None,
                raw_bytes=_leaf_raw_bytes(value),
            )
        )
    _fill_group_totals(nodes)
    return nodes


# ---------------------------------------------------------------------------- JSON output
def _json_float(x: float) -> float | str:
    # Standard JSON has no NaN or infinities; jsoncodec spells them as these strings.
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def _json_array(arr: np.ndarray) -> Any:
    kind = arr.dtype.kind
    if kind == "f":
        if np.isfinite(arr).all():
            return arr.tolist()
        return np.vectorize(_json_float, otypes=[object])(arr).tolist() if arr.size else []
    if kind == "c":
        return np.vectorize(
            lambda z: {"real": _json_float(z.real), "imag": _json_float(z.imag)},
            otypes=[object],
        )(arr).tolist()
    if kind in "biu":
        return arr.tolist()
    # Strings, objects, bytes from other writers: element by element.
    return to_jsonable(arr.tolist())


def to_jsonable(value: Any) -> Any:
    """Convert a value to plain JSON types.

    Arrays become nested lists, numpy scalars Python ones, non-finite floats the strings
    ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (the convention of
    :mod:`cadstore.format.jsoncodec`), complex numbers ``{"real", "imag"}`` objects.

    Parameters
    ----------
    value
        Anything a storage returns, or a document built from such values.

    Returns
    -------
    object
        A value ``json.dumps(..., allow_nan=False)`` accepts.
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _json_array(value)
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return _json_float(value)
    if isinstance(value, complex):
        return {"real": _json_float(value.real), "imag": _json_float(value.imag)}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def print_json(doc: Any, *, indent: int | None = 2) -> None:
    """Print ``doc`` as one strictly valid JSON document on stdout.

    Parameters
    ----------
    doc
        Anything :func:`to_jsonable` accepts.
    indent
        Indentation; ``None`` prints one compact line (for documents holding big arrays,
        which indentation would spread over a line per element).
    """
    _write(json.dumps(to_jsonable(doc), indent=indent, allow_nan=False) + "\n")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """Add the ``--json`` flag every command shares.

    Parameters
    ----------
    parser
        The subcommand's parser.
    """
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of text"
    )


# ---------------------------------------------------------------------------- text output
def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``cadstore cat ... | head``): stop quietly as Unix tools
        # do, and keep the interpreter's final flush from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def print_lines(lines: Iterable[str]) -> None:
    """Print lines to stdout.

    Parameters
    ----------
    lines
        The lines, without newlines.
    """
    text = "\n".join(lines)
    _write(text + "\n")


def format_bytes(n: int | None) -> str:
    """Return a byte count for people: ``"512 B"``, ``"29.4 KiB"``, ``"-"`` for ``None``.

    Parameters
    ----------
    n
        The count.
    """
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_ratio(ratio: float | None) -> str:
    """Return a compression ratio as ``"3.21x"`` (``"-"`` when unknown).

    Parameters
    ----------
    ratio
        Raw over stored bytes.
    """
    return "-" if ratio is None else f"{ratio:.2f}x"


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> list[str]:
    """Lay out rows in aligned columns.

    Parameters
    ----------
    headers
        Column titles.
    rows
        Cells, one sequence per row, as many as ``headers``.
    right
        Indices of columns to right-align (numbers).

    Returns
    -------
    list of str
        The header line and one line per row, trailing spaces removed.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _terminal_width() -> int:
    return max(40, shutil.get_terminal_size((100, 24)).columns)


def _inline(value: Any, *, full: bool) -> str:
    """Render a short value on one line (metadata values, scalars)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        text = json.dumps(to_jsonable(value))
        if full or len(text) <= _INLINE_WIDTH:
            return text
        head = json.dumps(to_jsonable(value[:5]))[:-1]
        return f"{head}, ...] ({len(value)} items)"
    if isinstance(value, np.generic):
        return str(value.item())
    if value is None:
        # Metadata documents are JSON; show their null as JSON does.
        return "null"
    return str(value)


def _string_lines(items: Sequence[Any], *, full: bool) -> list[str]:
    texts = [str(x) for x in items]
    if full or len(texts) <= SUMMARY_THRESHOLD:
        return texts
    edge = 5
    return [*texts[:edge], f"... ({len(texts) - 2 * edge} more)", *texts[-edge:]]


def format_value(value: Any, *, full: bool = False, width: int | None = None) -> list[str]:
    """Render a stored leaf as text lines.

    Strings print raw, lists of strings and 1-d string arrays one element per line,
    other arrays with numpy's printing. Unless ``full``, arrays of more than
    :data:`SUMMARY_THRESHOLD` elements are summarised, and a first line says so.

    Parameters
    ----------
    value
        A leaf (not a dict; see :func:`format_tree`).
    full
        Print every element.
    width
        Line width for arrays; defaults to the terminal's.

    Returns
    -------
    list of str
        The lines.
    """
    if isinstance(value, str):
        return value.splitlines() or [""]
    if isinstance(value, list):
        return _string_lines(value, full=full)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "UO" and value.ndim == 1:
            return _string_lines(value.tolist(), full=full)
        summarised = not full and value.size > SUMMARY_THRESHOLD
        text = np.array2string(
            value,
            max_line_width=width or _terminal_width(),
            threshold=SUMMARY_THRESHOLD if not full else sys.maxsize,
            separator=" ",
        )
        lines = text.splitlines()
        if summarised:
            note = (
                f"# {value.dtype} array of shape {tuple(value.shape)}, summarised "
                "(--full prints every value)"
            )
            lines.insert(0, note)
        return lines
    return [_inline(value, full=full)]


def format_tree(
    mapping: Mapping[str, Any], *, full: bool = False, indent: int = 0, arrays: bool = True
) -> list[str]:
    """Render a nested dict as an indented tree.

    Groups end with ``/``; scalars and strings sit on their key's line; arrays get a
    ``name: dtype shape`` line with their values indented below.

    Parameters
    ----------
    mapping
        The dict.
    full
        Print every element of arrays and lists.
    indent
        Starting indentation level.
    arrays
        Print array values (otherwise only their dtype and shape).

    Returns
    -------
    list of str
        The lines.
    """
    lines: list[str] = []
    pad = "  " * indent
    for name, value in mapping.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{name}/")
            lines.extend(format_tree(value, full=full, indent=indent + 1, arrays=arrays))
        elif isinstance(value, np.ndarray) and value.ndim > 0:
            lines.append(f"{pad}{name}: {value.dtype} {tuple(value.shape)}")
            if arrays:
                inner = pad + "    "
                width = max(40, _terminal_width() - len(inner))
                lines.extend(inner + line for line in format_value(value, full=full, width=width))
        elif isinstance(value, str) and "\n" in value:
            lines.append(f"{pad}{name}:")
            lines.extend(f"{pad}    {line}" for line in value.splitlines())
        else:
            lines.append(f"{pad}{name}: {_inline(value, full=full)}")
    return lines


# ---------------------------------------------------------------------------- progress
def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    """Iterate with a progress bar on stderr when it is a terminal and tqdm is installed.

    Scripts and tests (stderr not a terminal) see no bar, so their output stays clean.

    Parameters
    ----------
    iterable
        The work items.
    total
        Number of items, if ``iterable`` has no length.
    desc
        Label of the bar.

    Yields
    ------
    object
        The items of ``iterable``.
    """
    if not sys.stderr.isatty():
        yield from iterable
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield from iterable
        return
    yield from tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr)
