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
see :func:`cadstore.format.hierarchy.schema_item_dims`), so that xarray opens every item;
two arrays' names spelt alike are told apart when the item is published
(:func:`cadstore.format.hierarchy.item_dim_names`).
The item's metadata is ``metadata.json`` at the root of the zip.

Arrays are encoded by cadstore itself (see :mod:`cadstore.format.zarr_nodes`) and every zip
member is written exactly once, when the item is published: the file is written to a
temporary name, fsynced and renamed, so a ``.data`` file is either absent, the previous
complete version, or the new complete version.

If ``close()`` is called without ``compress_store()``, the item is kept as a standard Zarr
directory at ``store_path`` (with ``metadata.json``), which a later ``OptStorage`` on the
same path reopens for writing. That directory is published whole too: it is assembled
under a temporary name beside ``store_path`` and swapped in (two renames), so a reader, or
a writer killed at any moment, finds the previous complete store, the new one, or (killed
between the two renames) none; never a mix. A directory store is complete only with both
its root document and ``metadata.json``, which cadstore writes with every store; one that
lacks either (torn by a writer of an earlier cadstore, or a prefix of objects whose
publication stopped before its root) is a :class:`~cadstore.errors.CorruptStoreError`
naming the store and the missing file, and ``mode="w"`` starts over on it.

Two writers of one item name at once (``.data`` or directory) each either succeed, the
last complete version winning, or get a :class:`~cadstore.errors.StorageError` saying
that another writer published the item meanwhile.

``store_path`` may be a URL such as ``s3://bucket/parts/p1.zarr`` (see
:func:`cadstore.io.resolve`): the ``.data`` object is then published with a single
upload, so it is just as atomic, and read back with ranged requests. The summary and
visualisation directories follow the store onto the object store unless given elsewhere.

The default compression is zstd level 1. Symmetric face-pair arrays are stored as their
upper triangles (:mod:`cadstore.format.triangle`), which removes the mirror image that
made them worth zstd's long-distance matching; items are written without it. Item files
are the encoder's output, written once each and read once by the merger (which compresses
the dataset itself), so the default is the fastest setting that keeps them within 1.1x
the size of the specified design's (Zstd 12 with Delta filters); ``compression_level=3``
makes them smaller for more time. ``bench/bench_item.py`` measures both, and
``docs/benchmarks.md`` says why. Integer arrays of a Zarr v2 item get numcodecs' Delta
filter where it shrinks them (index arrays); v3 has no standard delta codec
(``bench/bench_int_filters.py``).
"""

from __future__ import annotations

import errno
import fnmatch
import json
import math
import os
import stat
from collections.abc import Callable, Collection, Iterator
from typing import IO, Any, Literal, TypeVar

from cadstore.errors import CorruptStoreError, ReadOnlyStorageError, StorageError
from cadstore.format import jsoncodec
from cadstore.format.hierarchy import (
    BuildHierarchy,
    Hierarchy,
    ReadHierarchy,
    default_dims,
    schema_item_dims,
)
from cadstore.format.layout import FACEFACE_ARRAYS, MATRIX_FLATTENING
from cadstore.format.limits import DEFAULT_LIMITS, Limits
from cadstore.io.location import Location, resolve
from cadstore.io.publish import (
    TEMP_PREFIX,
    DirectorySink,
    Sink,
    copy_file,
    open_sink,
    set_aside_name,
    sweep_dead_temporaries,
    write_atomic,
    write_bytes_atomic,
    write_error,
)
from cadstore.io.sources import KeySource, open_source
from cadstore.io.zipwriter import write_stored_zip
from cadstore.storage.base import NodeKind, NodeStorage
from cadstore.storage.values import Node

__all__ = ["DEFAULT_COMPRESSION_LEVEL", "METADATA_FILE", "OptStorage"]

#: zstd level used unless another is given (chosen by ``bench/bench_item.py``: the fastest
#: level whose files stay within 1.1x the size of the specified design's Zstd-12 files).
DEFAULT_COMPRESSION_LEVEL = 1
#: Name of the metadata document inside a store.
METADATA_FILE = "metadata.json"
#: The root documents of a Zarr hierarchy (format 3, format 2).
_ROOT_FILES = frozenset(("zarr.json", ".zgroup"))
#: What a store directory holding an item (complete or not) has at its top.
_ITEM_FILES = _ROOT_FILES | {METADATA_FILE}
#: What the directory of an array or a group holds.
_NODE_FILES = frozenset(("zarr.json", ".zarray", ".zgroup", ".zattrs"))
#: How often a step another writer of the same item can disturb (creating the store
#: directory, loading it while it is swapped) is tried before giving up.
_RACE_ATTEMPTS = 5
#: Rename failures that mean another writer moved the store (ENOENT) or put its own in
#: place (ENOTEMPTY, EEXIST) while this one published.
_RACE_ERRNOS = frozenset((errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST))
_T = TypeVar("_T")
#: The problem another writer of the same item name causes.
_PUBLISHED_MEANWHILE = (
    "another writer published this item meanwhile; its complete version was kept and "
    "this one was not written (write it again to replace that one)"
)


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


class OptStorage(NodeStorage):
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
        empty item whose ``compress_store()`` atomically replaces any existing ``.data``
        (and whose ``close()`` replaces any directory store, complete or left incomplete
        by a killed writer, at ``store_path``: it stays as it was until then).
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
        fsync published files and directories (default). Turn it off for scratch data,
        or to make many items durable at once afterwards
        (:func:`cadstore.io.publish.sync_file_system`, as the encoder does).
    face_pair_layout
        ``"auto"`` (default): a face-pair array (``d2_distance``, ``a3_distance``,
        ``extended_adjacency``, ``face_pair_edges_path``, or an array of a schema group
        with ``matrix_flattening``) that equals its transpose over its first two axes,
        bit for bit, is stored as its upper triangle, which halves what is compressed
        and stored; it is read back ``N x N (x k)`` by cadstore, and zarr-python sees the
        triangle (``docs/format.md``). ``"full"``: every array saved is stored as saved
        (those carried over from an item reopened with ``mode="a"`` keep the layout they
        were read with). Zarr format 2 items, the layout the specified system reads, are
        always stored in full.
    working_directory
        Create the working directory (``store_path``) when a writable storage opens, as
        specified, for files such as ``visu*`` previews that ``close()`` copies to
        ``stream_cache_dir``; ``close()`` removes it once the item is published. ``False``
        creates nothing there: the item is published all the same (as a ``.data`` by
        ``compress_store()``, as a directory store by ``close()`` without it), and a
        directory found at ``store_path`` on closing is handled as with ``True``. Writers
        that put no files of their own in the store directory, as the encoder, save a
        directory creation and removal per item (about a tenth of a small item's write).

    Raises
    ------
    CorruptStoreError
        If the ``.data`` file or the directory exists and is not a readable store (a
        directory store lacking its root document or ``metadata.json`` is incomplete:
        the message names the missing file), or the bucket of a URL does not exist.
    cadstore.errors.LimitExceededError
        With ``mode="a"``, if the chunks of the ``.data`` would inflate out of proportion
        to its size when republished (see
        :func:`cadstore.format.hierarchy.BuildHierarchy.from_hierarchy`).
    cadstore.errors.StorageError
        If other writers of the same item keep replacing its directory store while it is
        being opened.
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
        face_pair_layout: Literal["auto", "full"] = "auto",
        working_directory: bool = True,
    ) -> None:
        if mode not in (None, "r", "a", "w"):
            raise ValueError(f"mode must be None, 'r', 'a' or 'w', got {mode!r}")
        if face_pair_layout not in ("auto", "full"):
            raise ValueError(f"face_pair_layout must be 'auto' or 'full', got {face_pair_layout!r}")
        self._triangles = face_pair_layout == "auto"
        self._store, self._published = _item_locations(
            resolve(store_path, storage_options), compress_extension
        )
        self._extension = compress_extension
        self._durable = durable
        self._working_directory = working_directory
        self._limits = limits
        self._level = compression_level
        self.allows_nan = allow_nan
        self._compressed_size = 0
        self._dirty = False
        self._modified = False
        self._source: KeySource | None = None
        # The identity of a directory store opened read-only (see _unchanged).
        self._opened_as: tuple[int, int] | None = None
        self._preloaded_metadata: dict[str, Any] | None = None
        self._summary = self._beside(summary_dir, "files_summary", storage_options)
        self._stream_cache = self._beside(stream_cache_dir, "stream_cache", storage_options)
        zip_exists, dir_exists = self._what_exists(mode)
        if mode is None and zip_exists and dir_exists and self._store_contents() is None:
            # A working directory holding no item beside a .data (a writer killed between
            # compress_store() and close()): the .data is the item, opened as if alone.
            # Opened writable and empty, it would replace the item when published.
            dir_exists = False
        read_only = mode == "r" or (mode is None and zip_exists and not dir_exists)
        super().__init__(read_only=read_only)
        self._mode = mode
        self._hier: Hierarchy
        if read_only:
            self._open_read_only(zip_exists, dir_exists)
        else:
            self._open_writable(mode, zip_exists, dir_exists, zarr_format)
        self._open_metadata()

    def _how_to_write(self) -> str:  # docstring inherited
        path = repr(self._store.path)
        if self._mode == "r":
            why = "it was opened with mode='r'"
        else:
            # Opened without a mode: read-only because only the published file exists.
            why = f"{self._published.path} is published"
        return (
            f"{why}; OptStorage({path}, mode='a') adds to the item and mode='w' starts "
            "it anew, each published again by compress_store() in place of the file; or "
            "write at a new path"
        )

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
        if published_wins:
            return zip_exists, False
        if not self._store.remote:
            # One stat answers both questions at once: a directory that another writer of
            # the same item creates or removes meanwhile is there or not, never "not a
            # directory" (two checks, isdir() then exists(), could see it appear between).
            try:
                kind = os.stat(self._store.path).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return zip_exists, False
            if stat.S_ISDIR(kind):
                return zip_exists, True
            raise CorruptStoreError(self._store.path, "exists and is not a directory")
        dir_exists = self._store.isdir()
        # On an object store, "exists and is not a directory" is one HEAD: isfile(). A
        # published item is opened read-only whatever else sits at store_path, so the
        # check (a request) only matters when there is no .data.
        if not dir_exists and not (zip_exists and mode is None) and self._store.isfile():
            raise CorruptStoreError(self._store.path, "exists and is not a directory")
        return zip_exists, dir_exists

    def _open_read_only(self, zip_exists: bool, dir_exists: bool) -> None:
        # The published file wins over a working directory left by an interrupted writer.
        if zip_exists:
            source = open_source(self._published, self._limits, kind="zip")
        elif dir_exists:
            self._opened_as = self._identity()
            source = open_source(self._store, self._limits, kind="directory")
        else:
            raise CorruptStoreError(self._published.path, "no such store to open read-only")
        self._source = source
        try:
            self._hier = self._unchanged(lambda: ReadHierarchy(source, self._limits))
            # The root document is there (or ReadHierarchy said so): metadata.json, which
            # cadstore writes with every directory store, must be there too. One stat (on
            # an object store, the listing the source holds already).
            if not zip_exists and not self._has_metadata_file(source):
                raise self._incomplete(METADATA_FILE)
        except BaseException:
            source.close()
            raise

    def _unchanged(self, read: Callable[[], _T]) -> _T:
        """``read()``, from a directory store opened read-only that no other writer of the
        item has replaced since it was opened.

        A directory store is read file by file, as it is asked for; another writer
        publishing its version swaps a new directory in at the same path and removes the
        old one. Files read after the swap would belong to the new version and those read
        before to the old: a torn item. Any read that meets a file gone, or finds the
        directory no longer the one opened, is refused instead. (A ``.data`` file is read
        through the file it opened, which a new version replaces without changing.)

        Raises
        ------
        StorageError
            If the store was replaced: open it again to read the version now there.
        """
        if self._opened_as is None:
            return read()
        try:
            value = read()
        except (FileNotFoundError, NotADirectoryError):
            pass
        else:
            if self._identity() == self._opened_as:
                return value
        raise StorageError(
            self._store.path,
            "another writer replaced this item while it was being read; open it again to "
            "read the version now in place",
        )

    def _open_writable(
        self, mode: str | None, zip_exists: bool, dir_exists: bool, zarr_format: int
    ) -> None:
        self._hier = BuildHierarchy(zarr_format, self._level, self._store.path, self._limits)
        if mode == "w":
            # Whatever a killed writer left (a store, torn or not, or its temporaries) is
            # started over: not removed now, which a kill could interrupt half-way, but
            # replaced whole when this item is published. A directory holding files that
            # are not an item's is refused.
            if dir_exists:
                self._store_contents()
        else:
            found = self._load_directory(zarr_format, zip_exists) if dir_exists else "none"
            if found == "published" or (found == "none" and mode == "a" and zip_exists):
                self._load_existing(open_source(self._published, self._limits, kind="zip"))
        if self._working_directory:
            self._make_store_directory()

    def _store_contents(self) -> set[str] | None:
        """Return the names in the store directory if it holds an item's files.

        ``None`` when it holds none (or is gone): nothing, visualisation files, or the
        temporaries of a killed writer; the directory is then a fresh working directory.

        Raises
        ------
        CorruptStoreError
            If it holds other files: not a store of cadstore's, so not one to write into.
        """
        try:
            names = set(self._store.listdir())
        except (FileNotFoundError, NotADirectoryError):
            return None  # removed meanwhile by another writer of the same item
        if names & _ITEM_FILES:
            return names
        others = [
            n for n in names if not (fnmatch.fnmatch(n, "visu*") or n.startswith(TEMP_PREFIX))
        ]
        if others and all(self._is_node_directory(n) for n in others):
            # Arrays and groups without a root: what a removal of a store that was killed
            # half-way (by cadstore before this version) leaves. An incomplete store.
            return names
        if others:
            raise CorruptStoreError(
                self._store.path,
                "directory exists and is not a Zarr store (no zarr.json or "
                ".zgroup); choose another store_path",
            )
        return None

    def _is_node_directory(self, name: str) -> bool:
        """Whether entry ``name`` of the store is a directory holding a Zarr node."""
        node = self._store.child(name)
        try:
            return node.isdir() and not _NODE_FILES.isdisjoint(node.listdir())
        except (FileNotFoundError, NotADirectoryError):
            return False

    def _check_complete(self, names: Collection[str]) -> None:
        """Refuse a directory store that lacks its root document or ``metadata.json``.

        cadstore writes both with every directory store, the root first and
        ``metadata.json`` last before this version (which publishes the store whole), so
        a store with one and not the other was torn by a writer that stopped.
        """
        has_root = not _ROOT_FILES.isdisjoint(names)
        if has_root and METADATA_FILE in names:
            return
        raise self._incomplete(METADATA_FILE if has_root else "the root zarr.json (or .zgroup)")

    def _incomplete(self, missing: str) -> CorruptStoreError:
        return CorruptStoreError(
            self._store.path,
            f"incomplete directory store: {missing} is missing, so the writer of this "
            "store stopped before finishing it; open it with mode='w' to start over",
        )

    def _has_metadata_file(self, source: KeySource) -> bool:
        """Whether the directory store holds ``metadata.json`` now (one stat locally; on an
        object store, the listing ``source`` made when it was opened)."""
        if self._store.remote:
            return METADATA_FILE in source
        return self._store.child(METADATA_FILE).isfile()

    def _identity(self) -> tuple[int, int] | None:
        """The store directory's device and inode (a swap changes them); ``None`` if gone.

        On an object store, where a prefix has no identity, always ``(0, 0)``.
        """
        if self._store.remote:
            return (0, 0)
        try:
            found = os.stat(self._store.path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (found.st_dev, found.st_ino)

    def _load_directory(
        self, zarr_format: int, published: bool
    ) -> Literal["loaded", "none", "published"]:
        """Load the directory store at ``store_path`` for writing.

        Another writer of the same item may swap its new version in meanwhile. The store
        is loaded again if its directory changed under the load, so what is loaded is one
        version, never a mix of two; likewise if ``metadata.json``, which a removal of the
        store deletes first and the load reads last, is gone once the chunks are read.

        Parameters
        ----------
        zarr_format
            The format of a new item, should the directory turn out to hold none.
        published
            Whether a ``.data`` exists. A directory store beside it that is incomplete, or
            older than it, is what a writer killed while removing its working directory
            after publishing left (:meth:`_remove_working_directory`): the ``.data`` is
            then the item, and this returns ``"published"`` instead of refusing or loading
            the directory.

        Returns
        -------
        str
            ``"loaded"``, ``"none"`` (the directory holds no item) or ``"published"``.
        """
        for attempt in range(_RACE_ATTEMPTS):
            if attempt:
                published = published or self._published.isfile()
            before = self._identity()
            names = self._store_contents() if before is not None else None
            if names is None:
                return "none"
            try:
                try:
                    self._check_complete(names)
                except CorruptStoreError:
                    if published and self._identity() == before:
                        return "published"
                    raise
                if published and self._published_after_directory():
                    return "published"
                source = open_source(self._store, self._limits, kind="directory")
                self._load_existing(source)
            except CorruptStoreError:
                if self._identity() == before:
                    raise
            except (FileNotFoundError, NotADirectoryError):
                # A file listed a moment before is gone: another writer swapped its version
                # in (or removed the store) under the load. Loaded again, as a swap is.
                pass
            else:
                if self._identity() == before and self._has_metadata_file(source):
                    return "loaded"
            # Swapped meanwhile: start again on the version now in place.
            self._hier = BuildHierarchy(zarr_format, self._level, self._store.path, self._limits)
            self._preloaded_metadata = None
        raise StorageError(
            self._store.path,
            "other writers kept publishing this item while it was being opened; open it "
            "again once they are done",
        )

    def _published_after_directory(self) -> bool:
        """Whether the ``.data`` was published after the directory store was written.

        ``close()`` removes the working directory once the ``.data`` is published; a
        directory store older than the ``.data`` is one whose removal a kill prevented.
        (Writing a directory store over an older ``.data`` makes the directory newer.) On
        an object store, which keeps no usable times here, the directory is taken.
        """
        if self._store.remote:
            return False
        try:
            published = os.stat(self._published.path).st_mtime_ns
            written = os.stat(self._store.child(METADATA_FILE).path).st_mtime_ns
        except OSError:
            return False
        return published >= written

    def _make_store_directory(self) -> None:
        """Create the working directory, again if another writer removes it meanwhile."""
        for _ in range(_RACE_ATTEMPTS):
            try:
                self._store.makedirs()
                return
            except FileExistsError:
                # os.makedirs found the directory, then not: another writer (mode "w")
                # removed it in between. Something that is not a directory is an error.
                if self._store.exists() and not self._store.isdir():
                    raise CorruptStoreError(
                        self._store.path, "exists and is not a directory"
                    ) from None
        self._store.makedirs()

    def _remove_working_directory(self) -> None:
        """Remove the store directory; one that another writer is filling is left to it.

        Removing a directory takes many steps. ``metadata.json`` goes first and the root
        document last, so a store whose removal a kill interrupts is an incomplete one
        (see :meth:`_check_complete`), never one that opens with chunks missing, nor a
        directory of arrays without a root that is no store at all.
        """
        try:
            self._store.child(METADATA_FILE).remove()
            if not self._store.remote:
                # An object store deletes a prefix in a few batched requests instead.
                for name in self._listdir() or ():
                    if name not in _ROOT_FILES:
                        entry = self._store.child(name)
                        if entry.isdir():
                            entry.rmtree()
                        else:
                            entry.remove()
            self._store.rmtree()
        except OSError as exc:
            if exc.errno not in _RACE_ERRNOS:
                raise

    def _listdir(self) -> list[str] | None:
        """The names in the store directory, ``None`` if it is not (or no longer) there."""
        try:
            return self._store.listdir() if self._store.isdir() else None
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _load_existing(self, source: KeySource) -> None:
        try:
            # A store without a root document is refused here as when reading it.
            stored = ReadHierarchy(source, self._limits)
            self._hier = BuildHierarchy.from_hierarchy(stored, self._level)
            self._source = source
            self._preloaded_metadata = self._metadata_from(stored)
        finally:
            source.close()
            self._source = None

    def _metadata_from(self, hier: ReadHierarchy) -> dict[str, Any]:
        """The item's metadata document as stored with the hierarchy ``hier``: ``{}`` for
        an item without ``metadata.json`` (another writer's), unless its name was damaged
        (:meth:`~cadstore.format.hierarchy.ReadHierarchy.read_document`).

        Raises
        ------
        CorruptStoreError
            Naming the file, if the document is damaged, too large, not JSON or not an
            object.
        """
        source = hier.source
        raw = hier.read_document(METADATA_FILE)
        if raw is None:
            return {}
        if len(raw) > self._limits.max_metadata_bytes:
            raise CorruptStoreError(source.location, "metadata.json exceeds max_metadata_bytes")
        try:
            # Files written by other tools may hold NaN tokens; accept them when reading.
            doc = json.loads(raw)
            # Bounded depth: the recursive code downstream (deepcopy, the codecs) must
            # not exhaust the interpreter's stack on a hostile document.
            jsoncodec.check_nesting(doc)
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            raise CorruptStoreError(
                source.location, f"metadata.json is not valid JSON: {exc}"
            ) from exc
        if not isinstance(doc, dict):
            raise CorruptStoreError(source.location, "metadata.json is not a JSON object")
        return doc

    # ------------------------------------------------------------------ primitives
    def _get_node(self, key: str) -> Node:
        return self._unchanged(lambda: self._hier.read_node(key))

    def _put_node(self, key: str, node: Node) -> None:
        assert isinstance(self._hier, BuildHierarchy)
        self._hier.put(key, node, self._dims_for, self._is_face_pair if self._triangles else None)
        self._dirty = self._modified = True

    def _is_face_pair(self, path: str) -> bool:
        """Whether the array at ``path`` is a face-pair matrix: declared in a schema group
        with ``matrix_flattening``, or, undeclared, one of the specified encoder's."""
        if self._schema is not None:
            group = self._schema.group_for_array(path)
            if group is not None:
                return self._schema.special_processing(group) == MATRIX_FLATTENING
        return path in FACEFACE_ARRAYS

    def _dims_for(self, path: str, ndim: int) -> tuple[list[str], int]:
        """The dimension names of the array at ``path`` and how many are shared (see
        :data:`cadstore.format.hierarchy.DimsFor`): the declared primary dimension is."""
        if self._schema is not None:
            dims = self._schema.dims_for(path)
            if dims is not None and len(dims) == ndim:
                return schema_item_dims(path, dims), min(ndim, 1)
        return default_dims(path, ndim), 0

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
        pre = self._preloaded_metadata
        if pre is not None:
            return pre
        if self._source is not None:
            hier = self._hier
            assert isinstance(hier, ReadHierarchy)  # opened read-only
            return self._unchanged(lambda: self._metadata_from(hier))
        return {}

    def _write_metadata_document(self, doc: dict[str, Any]) -> None:
        if self._read_only:
            raise ReadOnlyStorageError(f"{self!r} is read-only")
        # Metadata is published with the data by compress_store() or close().
        self._dirty = self._modified = True

    # ------------------------------------------------------------------ publishing
    def _members(self) -> Iterator[tuple[str, bytes]]:
        assert isinstance(self._hier, BuildHierarchy)
        self._keep_readable()
        yield from self._hier.members()
        yield METADATA_FILE, jsoncodec.dumps(self._metadata).encode("utf-8")

    def _keep_readable(self) -> None:
        """Store the triangles in full if the item would otherwise decode to more than
        its file's size lets a reader decode (:meth:`Limits.decoded_budget
        <cadstore.format.limits.Limits.decoded_budget>`, a tenth kept for the metadata
        documents, which readers charge too).

        Triangles make a large item's file about a quarter smaller for the same decoded
        size: a file of 7 to 11 MB could then decode beyond the flat allowance files under
        10 MiB get, and be refused. Stored in full, it is larger and within its budget.
        Only the arrays saved in this session are converted: those carried over from the
        file an item was reopened from keep the layout it was read with.
        """
        assert isinstance(self._hier, BuildHierarchy)
        hier = self._hier
        if not hier.triangles_put:
            return
        # A triangle is decoded a chunk at a time into its full matrix: one chunk on top.
        metas = [hier.meta(path) for path in hier.triangles_put]
        chunk = max(math.prod(meta.chunks) * meta.itemsize for meta in metas)
        decoded = hier.decoded_nbytes() + chunk
        if decoded <= 0.9 * self._limits.expansion_allowance:
            return  # within what any file may decode to, whatever its size
        if decoded > 0.9 * self._limits.decoded_budget(hier.stored_nbytes("")):
            for path in hier.store_triangles_in_full():
                # metadata.json records what each array stores.
                self._record_size(path, hier.stored_nbytes(path))

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
            sweep_dead_temporaries(self._published.parent, once=True)
            self._compressed_size = write_atomic(
                self._published, self._write_zip, durable=self._durable
            )
            self._dirty = False
            return self._compressed_size

    def _write_directory(self) -> None:
        """Publish the item as a Zarr directory store at ``store_path``, whole.

        The store is assembled under a temporary name beside ``store_path`` and swapped in
        (:func:`cadstore.io.publish.open_sink`); on an object store its root ``zarr.json``
        is uploaded last. The ``visu*`` files of the working directory move along.

        Raises
        ------
        StorageError
            Naming the file being written, if it cannot be (disk full, permissions); or
            saying that another writer published the item meanwhile. The previous store
            stays as it was in either case.
        """
        sweep_dead_temporaries(self._store.parent, once=True)
        try:
            sink = open_sink(self._store, directory=True, durable=self._durable)
        except StorageError:
            raise
        except OSError as exc:
            raise write_error(self._store.path, exc) from exc
        try:
            for name, data in self._members():
                self._add_member(sink, name, data)
            for name in self._listdir() or ():
                if fnmatch.fnmatch(name, "visu*") and self._store.child(name).isfile():
                    self._add_member(sink, name, self._store.child(name).read_bytes())
        except BaseException:
            sink.abort()
            raise
        self._commit(sink)

    def _add_member(self, sink: Sink, name: str, data: bytes) -> None:
        target = self._store.child(*name.split("/")).path
        try:
            sink.add(name, data)
        except StorageError as exc:
            # The sink names the store; the file being written is more use.
            if type(exc) is not StorageError:
                raise  # an object store that refuses or is gone: its own error
            raise write_error(target, exc) from exc
        except OSError as exc:
            raise write_error(target, exc) from exc

    def _commit(self, sink: Sink) -> None:
        """Swap the assembled store in; tell a race with another writer from a failure."""
        try:
            sink.commit()
        except OSError as exc:
            if not isinstance(sink, DirectorySink):
                if isinstance(exc, StorageError):
                    raise
                raise write_error(self._store.path, exc) from exc
            sink.abort()
            set_aside = self._store.with_path(set_aside_name(sink.tmp))
            if exc.errno not in _RACE_ERRNOS:
                error = write_error(self._store.path, exc)
                if set_aside.exists():
                    # Failed after moving the previous store aside: say where it is.
                    error = StorageError(
                        error.path, f"{error.problem}; the previous store is at {set_aside}"
                    )
                raise error from exc
            # Another writer moved the store away (ENOENT) or put its own in place
            # (ENOTEMPTY, EEXIST) between this one's renames. The store set aside (the
            # sink's "-old" directory), if any, is superseded by the one now in place.
            if not _ROOT_FILES.isdisjoint(self._listdir() or ()):
                set_aside.rmtree()
            raise StorageError(self._store.path, _PUBLISHED_MEANWHILE) from exc

    def _close(self) -> None:
        if self._read_only:
            if self._source is not None:
                self._source.close()
            return
        if self._compressed_size and self._dirty:
            self.compress_store()
        elif not self._compressed_size and self._modified:
            self._write_directory()
        if self._modified:
            self.write_summary()
        # Whoever made it (this storage, a killed writer, a caller putting visu* files in
        # it with working_directory=False), a directory at store_path is copied from and,
        # once the item is published as a .data, removed: left beside the .data it would
        # make the next OptStorage(store_path) open a writable, empty item instead.
        names = self._listdir()
        if names is None:
            return
        self._copy_visualisations(names)
        if self._compressed_size or (not self._modified and names == []):
            # Published as a .data; or an unused storage, which leaves nothing behind.
            self._remove_working_directory()

    def abandon(self) -> None:
        """Close without publishing what was saved: for a writer that failed half-way
        (an encoder that raised), whose item must not look done. Nothing at the store
        path is replaced; an empty working directory this storage made is removed."""
        with self._lock:
            if not self._read_only:
                self._modified = self._dirty = False
                self._compressed_size = 0
        self.close()

    def write_summary(self) -> None:
        """Export the item's metadata to ``files_summary/<item name>.json``.

        :meth:`close` does it for an item it wrote; called on an item opened read-only,
        it writes the summary again from the metadata stored in the item (the encoder
        does so when a crash lost a summary but not its item). The summary duplicates
        ``metadata.json`` inside the item, so it is written atomically but not fsynced:
        losing it to a power cut loses nothing. Nothing is written with
        ``summary_dir=False``.
        """
        if self._summary is None:
            return
        self._summary.makedirs()
        write_bytes_atomic(
            self._summary.child(f"{self.item_name}.json"),
            jsoncodec.dumps(self._metadata, indent=1).encode("utf-8"),
            durable=False,
        )

    def _copy_visualisations(self, names: list[str]) -> None:
        """Copy the ``visu*`` files among ``names`` (the store directory's) to the cache."""
        visu = [n for n in names if fnmatch.fnmatch(n, "visu*")]
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
            A data key, or ``""`` for the item itself: the store path given to the
            constructor (``.../part.zarr``), before and after :meth:`compress_store`, as
            specified. The specified users' tasks return it and their merge tasks append
            ``compress_extension`` to find the published file; :attr:`compressed_path` is
            that file.
        """
        self._check_open()
        if not data_key:
            return self._store.path
        return self._store.child(*data_key.split("/")).path

    def get_array_dims(self, data_key: str) -> tuple[str, ...] | None:
        """Return the dimension names stored for array ``data_key``."""
        with self._lock:
            self._check_open()
            if data_key not in self._hier.arrays:
                return None
            return self._hier.meta(data_key).read_dims

    def _describe(self) -> str:
        return repr(self._published.path if self._read_only else self._store.path)
