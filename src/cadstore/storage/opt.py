"""``OptStorage``: the production backend, one standard Zarr hierarchy per item in one file.

Lifecycle of an item::

    storage = OptStorage("encoded/part_001.zarr")   # writable, in memory + working dir
    storage.save_data("face_areas", areas)           # encoded and compressed right away
    storage.save_metadata("size_cadfile", 1024)
    storage.compress_store()                         # -> encoded/part_001.zarr.data
    storage.close()                                  # summary JSON, visu* files, cleanup

    OptStorage("encoded/part_001.zarr")              # only the .data exists: read-only

The ``.data`` file is a zip (members stored, since chunks are already zstd-compressed) of a
standard Zarr hierarchy, format 3 by default and format 2 on request: zarr-python opens it
with ``zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")`` and xarray with
``xarray.open_zarr(zarr.storage.ZipStore(path, mode="r"))``. Every array carries dimension
names (``dimension_names`` in v3, ``_ARRAY_DIMENSIONS`` in v2): ``<key>_dim_<i>`` for an
array the schema does not declare; for one it declares, the declared primary dimension and
the other declared names qualified by the key (``face``, ``face_discretization_sample``,
see :func:`cadstore.format.hierarchy.schema_item_dims`), so that xarray opens every item.
The item's metadata is ``metadata.json`` at the root of the zip.

Arrays are encoded by cadstore itself (see :mod:`cadstore.format.zarr_nodes`) and every zip
member is written exactly once, when the item is published: the file is written to a
temporary name, fsynced and renamed, so a ``.data`` file is either absent, the previous
complete version, or the new complete version.

If ``close()`` is called without ``compress_store()``, the item is kept as a standard Zarr
directory at ``store_path`` (with ``metadata.json``), which a later ``OptStorage`` on the
same path reopens for writing.

``store_path`` may be a URL such as ``s3://bucket/parts/p1.zarr`` (see
:func:`cadstore.io.resolve`): the ``.data`` object is then published with a single
upload, so it is just as atomic, and read back with ranged requests. The summary and
visualisation directories follow the store onto the object store unless given elsewhere.

The default compression is zstd level 1 with long-distance matching for floating-point
chunks of 128 KiB or more (see :func:`cadstore.format.codecs.long_distance_for`). Face-pair
arrays repeat themselves a whole matrix row apart, which only long-distance matching finds
at a fast level: on the realistic workload plain level 3 writes files about 15% larger than
the specified design (Zstd 12 with Delta filters), level 1 with long-distance matching
about 4% larger and level 3 with it about 5% smaller. Item files are the encoder's output,
written once each and read once by the merger (which compresses the dataset itself), so
the default is the fastest level within the 1.1x size budget: level 1 compresses the
median item in about two thirds of level 3's time. ``compression_level=3`` trades that for 9%
smaller files; ``bench/bench_item.py`` measures both. Integer arrays of a Zarr v2 item get
numcodecs' Delta filter where it shrinks them (index arrays); v3 has no standard delta
codec (``bench/bench_int_filters.py``).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator
from typing import IO, Any, Literal

from cadstore.errors import CorruptStoreError, ReadOnlyStorageError
from cadstore.format import jsoncodec
from cadstore.format.hierarchy import (
    BuildHierarchy,
    Hierarchy,
    ReadHierarchy,
    default_dims,
    schema_item_dims,
)
from cadstore.format.limits import DEFAULT_LIMITS, Limits
from cadstore.io.location import Location, resolve
from cadstore.io.publish import copy_file, sweep_temporaries, write_atomic, write_bytes_atomic
from cadstore.io.sources import KeySource, open_source
from cadstore.io.zipwriter import write_stored_zip
from cadstore.storage.base import DataStorage, NodeKind
from cadstore.storage.values import Node

__all__ = ["DEFAULT_COMPRESSION_LEVEL", "METADATA_FILE", "OptStorage"]

#: zstd level used unless another is given (chosen by ``bench/bench_item.py``: the fastest
#: level whose files stay within 1.1x the size of the specified design's Zstd-12 files).
DEFAULT_COMPRESSION_LEVEL = 1
#: Name of the metadata document inside a store.
METADATA_FILE = "metadata.json"


def _item_locations(given: Location, extension: str) -> tuple[Location, Location]:
    """Return the item's store (working directory) and its published file.

    The specified argument is the store path (``part.zarr``); a user handing over the
    published file itself (``part.zarr.data``) means the same item, so that is accepted.
    """
    store = given.with_path(given.path.rstrip("/") or given.path)
    if extension and store.path.endswith(extension) and store.isfile():
        return store.with_path(store.path[: -len(extension)]), store
    return store, store.with_suffix(extension)


def _is_json_member(name: str) -> bool:
    # Metadata documents are small, repetitive JSON: deflating them shrinks an item's
    # container overhead by more than half. Chunks are zstd frames already.
    return name.endswith(
        ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata", METADATA_FILE)
    )


class OptStorage(DataStorage):
    """Store one item as a Zarr hierarchy in a single compressed ``.data`` file.

    Parameters
    ----------
    store_path
        The working directory of the item, e.g. ``"out/part_001.zarr"``. The published file
        is ``store_path + compress_extension``.
    compress_extension
        Extension of the published file.
    zarr_format
        3 (default) or 2, the layout zarr-python 2.x and the specified system use.
    compression_level
        zstd level for chunks (``None`` stores them uncompressed). The default, 1, is the
        fastest to write within 1.1x of the specified design's file size; 3 writes files
        9% smaller in about 1.5x the compression time.
    allow_nan
        Accept NaN in floating arrays. The specified behaviour, and the default, is to
        refuse them with an :class:`~cadstore.errors.InvalidDataError` naming the key.
    mode
        ``None`` follows the specification: read-only when only the ``.data`` file exists,
        writable otherwise. ``"r"`` forces read-only, ``"a"`` loads an existing ``.data``
        into a writable storage that ``compress_store()`` publishes again, ``"w"`` starts an
        empty item whose ``compress_store()`` atomically replaces any existing ``.data``.
    summary_dir
        Where ``close()`` exports the metadata as ``<name>.json``; defaults to
        ``files_summary/`` next to the store. ``False`` disables the export.
    stream_cache_dir
        Where ``close()`` copies ``visu*`` files found in the store directory; defaults to
        ``stream_cache/`` next to the store.
    limits
        Safety limits for reading (see :class:`~cadstore.format.limits.Limits`).
    storage_options
        Options for a URL ``store_path`` (and URL summary or cache directories), passed
        to fsspec: for S3, e.g. ``{"key": ..., "secret": ...,
        "client_kwargs": {"endpoint_url": ...}}``. Without them, credentials and endpoint
        come from fsspec's configuration and the environment.
    durable
        fsync published files and directories (default). Turning it off is only for
        scratch data.

    Raises
    ------
    CorruptStoreError
        If the ``.data`` file or the directory exists and is not a readable store, or the
        bucket of a URL does not exist.
    cadstore.errors.StorageAccessError
        If an object store refuses the credentials.
    cadstore.errors.StorageUnavailableError
        If an object store cannot be reached.
    """

    format_name = "zarr"
    _copy_on_save = False  # arrays are encoded (copied into chunks) on save_data

    def __init__(
        self,
        store_path: str | os.PathLike[str] | Location,
        compress_extension: str = ".data",
        *,
        zarr_format: int = 3,
        compression_level: int | None = DEFAULT_COMPRESSION_LEVEL,
        allow_nan: bool = False,
        mode: Literal["r", "a", "w"] | None = None,
        summary_dir: str | os.PathLike[str] | bool | None = None,
        stream_cache_dir: str | os.PathLike[str] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        storage_options: dict[str, Any] | None = None,
        durable: bool = True,
    ) -> None:
        if mode not in (None, "r", "a", "w"):
            raise ValueError(f"mode must be None, 'r', 'a' or 'w', got {mode!r}")
        self._store, self._published = _item_locations(
            resolve(store_path, storage_options), compress_extension
        )
        self._extension = compress_extension
        self._durable = durable
        self._limits = limits
        self._level = compression_level
        self.allows_nan = allow_nan
        self._compressed_size = 0
        self._dirty = False
        self._modified = False
        self._source: KeySource | None = None
        self._summary = self._beside(summary_dir, "files_summary", storage_options)
        self._stream_cache = self._beside(stream_cache_dir, "stream_cache", storage_options)
        zip_exists, dir_exists = self._what_exists(mode)
        read_only = mode == "r" or (mode is None and zip_exists and not dir_exists)
        super().__init__(read_only=read_only)
        self._hier: Hierarchy
        if read_only:
            self._open_read_only(zip_exists, dir_exists)
        else:
            self._open_writable(mode, zip_exists, dir_exists, zarr_format)
        self._open_metadata()

    # ------------------------------------------------------------------ opening
    def _beside(
        self,
        where: str | os.PathLike[str] | bool | None,
        default: str,
        storage_options: dict[str, Any] | None,
    ) -> Location | None:
        """A summary or cache directory: ``default`` next to the store, unless given."""
        if where is False:
            return None
        if where is None or where is True:
            return self._store.parent.child(default)
        return resolve(where, storage_options, shared=True)

    def _what_exists(self, mode: str | None) -> tuple[bool, bool]:
        """Return whether the published file and the working directory exist.

        Raises
        ------
        CorruptStoreError
            If something that is not a directory sits at the store path.
        """
        zip_exists = self._published.isfile()
        # Read-only, a published file wins over whatever sits at store_path, so there is
        # nothing to look for there (on an object store, a listing saved per open).
        published_wins = mode == "r" and zip_exists
        dir_exists = not published_wins and self._store.isdir()
        # On an object store, "exists and is not a directory" is one HEAD: isfile(). A
        # published item is opened read-only whatever else sits at store_path, so the
        # check (a request on an object store) only matters when there is no .data.
        remote = self._store.remote
        needs_probe = (
            not dir_exists and not published_wins and not (remote and zip_exists and mode is None)
        )
        if needs_probe and (self._store.isfile() if remote else self._store.exists()):
            raise CorruptStoreError(self._store.path, "exists and is not a directory")
        return zip_exists, dir_exists

    def _open_read_only(self, zip_exists: bool, dir_exists: bool) -> None:
        # The published file wins over a working directory left by an interrupted writer.
        if zip_exists:
            self._source = open_source(self._published, self._limits, kind="zip")
        elif dir_exists:
            self._source = open_source(self._store, self._limits, kind="directory")
        else:
            raise CorruptStoreError(self._published.path, "no such store to open read-only")
        try:
            self._hier = ReadHierarchy(self._source, self._limits)
        except BaseException:
            self._source.close()
            raise

    def _open_writable(
        self, mode: str | None, zip_exists: bool, dir_exists: bool, zarr_format: int
    ) -> None:
        self._hier = BuildHierarchy(zarr_format, self._level, self._store.path, self._limits)
        if mode == "w":
            if dir_exists and self._dir_holds_store():
                self._store.rmtree()
        elif dir_exists and self._dir_holds_store():
            self._load_existing(open_source(self._store, self._limits, kind="directory"))
        elif mode == "a" and zip_exists:
            self._load_existing(open_source(self._published, self._limits, kind="zip"))
        self._store.makedirs()

    def _dir_holds_store(self) -> bool:
        names = set(self._store.listdir())
        if names & {"zarr.json", ".zgroup", METADATA_FILE}:
            return True
        others = [n for n in names if not fnmatch.fnmatch(n, "visu*")]
        if others:
            raise CorruptStoreError(
                self._store.path,
                "directory exists and is not a Zarr store (no zarr.json or "
                ".zgroup); choose another store_path",
            )
        return False

    def _load_existing(self, source: KeySource) -> None:
        try:
            stored = (
                ReadHierarchy(source, self._limits)
                if ("zarr.json" in source or ".zgroup" in source)
                else None
            )
            if stored is not None:
                level = self._level
                self._hier = BuildHierarchy.from_hierarchy(stored, level)
            self._source = source
            self._preloaded_metadata = self._metadata_from(source)
        finally:
            source.close()
            self._source = None

    def _metadata_from(self, source: KeySource) -> dict[str, Any]:
        raw = source.get(METADATA_FILE)
        if raw is None:
            return {}
        if len(raw) > self._limits.max_metadata_bytes:
            raise CorruptStoreError(source.location, "metadata.json exceeds max_metadata_bytes")
        try:
            # Files written by other tools may hold NaN tokens; accept them when reading.
            doc = json.loads(raw)
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            raise CorruptStoreError(
                source.location, f"metadata.json is not valid JSON: {exc}"
            ) from exc
        if not isinstance(doc, dict):
            raise CorruptStoreError(source.location, "metadata.json is not a JSON object")
        return doc

    # ------------------------------------------------------------------ primitives
    def _get_node(self, key: str) -> Node:
        return self._hier.read_node(key)

    def _put_node(self, key: str, node: Node) -> None:
        assert isinstance(self._hier, BuildHierarchy)
        self._hier.put(key, node, self._dims_for)
        self._dirty = self._modified = True

    def _dims_for(self, path: str, ndim: int) -> list[str]:
        if self._schema is not None:
            dims = self._schema.dims_for(path)
            if dims is not None and len(dims) == ndim:
                return schema_item_dims(path, dims)
        return default_dims(path, ndim)

    def _delete_node(self, key: str) -> None:
        assert isinstance(self._hier, BuildHierarchy)
        self._hier.delete(key)
        self._dirty = self._modified = True

    def _node_kind(self, key: str) -> NodeKind | None:
        kind = self._hier.kind(key)
        return kind  # type: ignore[return-value]

    def _top_level_keys(self) -> list[str]:
        return self._hier.children("")

    def _stored_nbytes(self, key: str) -> int:
        return self._hier.stored_nbytes(key)

    def _read_metadata_document(self) -> dict[str, Any]:
        pre: dict[str, Any] | None = getattr(self, "_preloaded_metadata", None)
        if pre is not None:
            return pre
        if self._source is not None:
            return self._metadata_from(self._source)
        return {}

    def _write_metadata_document(self, doc: dict[str, Any]) -> None:
        if self._read_only:
            raise ReadOnlyStorageError(f"{self!r} is read-only")
        # Metadata is published with the data by compress_store() or close().
        self._dirty = self._modified = True

    # ------------------------------------------------------------------ publishing
    def _members(self) -> Iterator[tuple[str, bytes]]:
        assert isinstance(self._hier, BuildHierarchy)
        yield from self._hier.members()
        yield METADATA_FILE, jsoncodec.dumps(self._metadata).encode("utf-8")

    def _write_zip(self, fh: IO[bytes]) -> None:
        write_stored_zip(fh, list(self._members()), deflate=_is_json_member)

    def compress_store(self) -> int:
        """Publish the item as a single ``.data`` file, atomically.

        Returns
        -------
        int
            The size of the ``.data`` file in bytes.
        """
        with self._lock:
            self._check_open()
            if self._read_only:
                return self._published.size() if self._published.isfile() else 0
            sweep_temporaries(self._published.parent)
            self._compressed_size = write_atomic(
                self._published, self._write_zip, durable=self._durable
            )
            self._dirty = False
            return self._compressed_size

    def _write_directory(self) -> None:
        """Persist the item as a Zarr directory store at ``store_path``."""
        for name, data in self._members():
            target = self._store.child(*name.split("/"))
            target.parent.makedirs()
            write_bytes_atomic(target, data, durable=self._durable)

    def _close(self) -> None:
        if self._read_only:
            if self._source is not None:
                self._source.close()
            return
        name = self.item_name
        if self._compressed_size and self._dirty:
            self.compress_store()
        elif not self._compressed_size and self._modified:
            self._write_directory()
        if self._modified and self._summary is not None:
            # The summary duplicates metadata.json inside the .data file, so it is written
            # atomically but not fsynced: losing it to a power cut loses nothing.
            self._summary.makedirs()
            write_bytes_atomic(
                self._summary.child(f"{name}.json"),
                jsoncodec.dumps(self._metadata, indent=1).encode("utf-8"),
                durable=False,
            )
        self._copy_visualisations()
        if self._compressed_size:
            self._store.rmtree()
        elif not self._modified and self._store.isdir() and not self._store.listdir():
            # An unused storage leaves nothing behind.
            self._store.rmtree()

    def _copy_visualisations(self) -> None:
        if not self._store.isdir():
            return
        visu = [n for n in self._store.listdir() if fnmatch.fnmatch(n, "visu*")]
        if not visu:
            return
        assert self._stream_cache is not None
        self._stream_cache.makedirs()
        for name in visu:
            src = self._store.child(name)
            if src.isfile():
                copy_file(src, self._stream_cache.child(name), durable=self._durable)

    # ------------------------------------------------------------------ public
    @property
    def item_name(self) -> str:
        """The item's name: the store's file name without ``.zarr``."""
        base = self._store.name
        return base[: -len(".zarr")] if base.endswith(".zarr") else base

    @property
    def store_path(self) -> str:
        """The working directory of the item."""
        return self._store.path

    @property
    def compressed_path(self) -> str:
        """The published ``.data`` file."""
        return self._published.path

    @property
    def zarr_format(self) -> int:
        """The Zarr format written (or read)."""
        return self._hier.zarr_format

    def get_file_path(self, data_key: str) -> str:
        """Return the path of ``data_key`` inside the store.

        Parameters
        ----------
        data_key
            A data key, or ``""`` for the item itself: the ``.data`` file once published
            (or when opened read-only), the store directory otherwise.
        """
        self._check_open()
        if not data_key:
            if self._compressed_size or self._read_only or self._published.isfile():
                return self._published.path
            return self._store.path
        return self._store.child(*data_key.split("/")).path

    def get_array_dims(self, data_key: str) -> tuple[str, ...] | None:
        """Return the dimension names stored for array ``data_key``."""
        with self._lock:
            self._check_open()
            if data_key not in self._hier.arrays:
                return None
            return self._hier.meta(data_key).dims

    def _describe(self) -> str:
        return repr(self._published.path if self._read_only else self._store.path)
