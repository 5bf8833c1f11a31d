"""Random access to a merged ``.dataset``: one item's rows in O(1), without Dask.

The specified explorer finds an item's rows by materialising a whole group and scanning
``file_id_code_<group>``; its authors had to write a bulk reader around it. Here the
per-group ``item_offsets`` give the row range at once, and only the shard index and the
inner chunks covering those rows are read and decoded. Decoded inner chunks are kept in a
small LRU cache, so neighbouring items share work.

The dataset may be a URL (``s3://bucket/flows/demo.dataset``): the zip is then read in
place through HTTP range requests (:class:`cadstore.io.sources.ZipSource` over the
location's file system), so reading one item fetches its shard indexes and inner chunks,
not the dataset.

A :class:`DatasetReader` can be pickled (PyTorch ``DataLoader`` workers do): it carries
only its location (path and storage options) and settings, and reopens the file in each
process on first use. :meth:`DatasetReader.close` is final: afterwards every read raises
:class:`~cadstore.errors.StorageClosedError` instead of quietly reopening the file, and a
copy pickled from a closed reader is closed too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import math
import operator
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from cadstore.errors import (
    CorruptStoreError,
    DatasetError,
    KeyNotFoundError,
    StorageClosedError,
    StorageError,
)
from cadstore.forking import renew_lock
from cadstore.format.codecs import (
    ChunkDecodeError,
    FrameBounds,
    FrameDecodeError,
    copy_stored_range,
    decode_frames,
    decode_frames_range,
    decode_into,
    decode_zstd_into,
    direct_codec,
    frame_at,
    is_item_framed,
    open_item_frames,
    strip_crc32c,
)
from cadstore.format.hierarchy import ReadHierarchy
from cadstore.format.jsoncodec import load_document
from cadstore.format.layout import (
    DATASET_FORMAT,
    ITEM_NAMES,
    OFFSETS,
    file_id_code_name,
    qualify_dims,
)
from cadstore.format.limits import DEFAULT_LIMITS, Limits
from cadstore.format.manifest import folder_hint
from cadstore.format.sharding import MISSING, decode_inner, index_trailer, read_index
from cadstore.format.triangle import UPPER_TRIANGLE, expand_into, triangle_count
from cadstore.io.location import Location, resolve
from cadstore.io.native import zstd_decoder
from cadstore.io.sources import KeySource, open_source

__all__ = ["Allocator", "DatasetReader", "ItemBatch", "whole_number"]


# Gap allowed between inner chunks read together (bytes read and thrown away).
_SPAN_SLACK = 64 * 1024

_T = TypeVar("_T")

#: What one remembered frame of an item-framed chunk, or one part of a remembered read,
#: is counted as against ``cache_bytes`` (a dict entry and a small tuple, rounded up).
_ENTRY_BYTES = 256

#: The largest scratch buffer a reader keeps for decoding triangles (``_scratch``): the
#: triangle of a 700-face item's 64-bin histogram.
SCRATCH_BYTES = 64 * 1024 * 1024
#: Scratch buffers a reader keeps (the largest): as many as reads decoding at once.
SCRATCH_KEPT = 4

# The dataset's own document (item count, groups, schema) at the root of the store.
_METADATA = "metadata.json"


#: How numpy and torch name their boolean types (``str(dtype)``).
_BOOL_DTYPES = frozenset(("bool", "torch.bool"))


def whole_number(value: Any, what: str) -> int:
    """``value`` as an ``int``, when it is a whole number: an integer (Python, numpy, a
    one-element integer tensor), a float with no fraction, or decimal text.

    The one rule for an item code or position, wherever one is given (a reader's code,
    the explorer's ``file_id_code``, a subset's or a torch wrapper's position, the
    positions of ``remove_indices``): ``int()`` alone truncated ``2.7`` (and
    ``np.float32(2.7)``) to item 2, and took ``True`` (or a boolean array) for item 1.

    Parameters
    ----------
    value
        The code or position given.
    what
        What it is, for the message (``"item code"``).

    Raises
    ------
    DatasetError
        Naming ``what`` and ``value``, for a boolean, a fraction or anything else.
    """
    if type(value) is int:  # the common cases first: every read of an item asks
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, bool | np.bool_) or str(getattr(value, "dtype", "")) in _BOOL_DTYPES:
        raise DatasetError(f"{what} {value!r} is a boolean, not an integer")
    try:
        return operator.index(value)
    except TypeError:
        pass
    try:
        number = int(value)
        whole = isinstance(value, str) or bool(number == value)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise DatasetError(f"{what} {value!r} is not an integer")
    return number


_PROCESS_ID = [os.getpid()]
#: Every open reader of this process, which a forked child takes over (``_forked``).
_READERS: weakref.WeakSet[DatasetReader] = weakref.WeakSet()
#: Readers to warm before this process next forks: ``reader -> (groups, arrays)``.
_WARM_AT_FORK: weakref.WeakKeyDictionary[
    DatasetReader, tuple[tuple[str, ...] | None, dict[str, tuple[str, ...]] | None]
] = weakref.WeakKeyDictionary()


def _before_fork() -> None:
    busy = []
    while _WARM_AT_FORK:
        reader, spec = _WARM_AT_FORK.popitem()
        try:
            if not reader.warm(*spec, wait=False):
                busy.append((reader, spec))  # read by another thread: at the next fork
        except Exception:  # noqa: S110 - a head start only, in the middle of a fork
            pass  # the reads report whatever it met (a closed reader, a damaged file)
    for reader, spec in busy:
        _WARM_AT_FORK[reader] = spec


def _after_fork() -> None:
    parent = _PROCESS_ID[0]
    _PROCESS_ID[0] = os.getpid()
    for reader in list(_READERS):
        reader._forked(parent)


# Item reads check which process they run in (a forked DataLoader worker must reopen the
# file); asking the kernel on every read is a system call, the fork hook is not.
os.register_at_fork(before=_before_fork, after_in_child=_after_fork)


def _items_digest(names: list[str], count: int) -> str:
    """A digest of the first ``count`` item names, in order: what a reader's user learned
    of a version (item codes, and through them a split's labels) holds in another version
    exactly when its first items are these.

    Computed only when a reader is pickled (and when a copy opens the file again): opening
    a dataset of a million items does not hash a million names.
    """
    joined = "\0".join(names[:count]).encode("utf-8", "surrogatepass")
    return hashlib.sha256(joined).hexdigest()


def _first_items_are(names: Sequence[str], first: Sequence[str]) -> bool:
    """Whether ``names`` begins with ``first``, in order: what a version's item codes (and
    a split's labels) need to hold in another version; an append keeps them."""
    return len(names) >= len(first) and list(names[: len(first)]) == list(first)


class _DatasetReplaced(StorageError):
    """A reader opened again after its dataset was replaced (a :class:`StorageError`; its
    own class only so that unpickling can tell it from other failures to open)."""


def _replaced_error(path: str) -> StorageError:
    """The error of a reader opened again after its dataset was replaced."""
    return _DatasetReplaced(
        path,
        "was replaced by another version whose first items are not those this reader "
        "opened (a merge with overwrite), and this process cannot read the version it "
        "opened (it opens the file again: a DataLoader worker, a forked process); open "
        "the dataset again to read the version now in place",
    )


class DatasetReader:
    """Read a merged dataset item by item.

    Parameters
    ----------
    path
        The ``.dataset`` (zip or directory), a local path or a URL such as
        ``s3://bucket/flows/demo.dataset``.
    storage_options
        fsspec options for a URL (for S3: ``key``, ``secret``,
        ``client_kwargs={"endpoint_url": ...}``); without them credentials and endpoint
        come from the fsspec and environment configuration. Ignored for a local path.
    limits
        Safety limits for reading.
    cache_bytes
        Budget of the decoded-chunk cache. Each within a budget of the same size (counted
        per entry), the reader also remembers the frame tables of item-framed chunks it
        has verified and how it read each item's rows, so that an item read again fetches
        and decodes its own frames only: a chunk's checksum is verified when it is first
        read, not at each later read of one of its frames. Within half of it, batch reads
        (:meth:`read_items`) keep arrays of small rows decoded whole (each at most
        :data:`SMALL_ARRAY_BYTES`), the decoded chunks making room for them. With ``0``
        nothing is remembered and every read verifies whole chunks.
    stored_layout
        Present the arrays as stored. By default a face-pair array stored as its upper
        triangle (a group with ``cadstore_layout="upper_triangle"``, see
        :mod:`cadstore.format.triangle`) is presented in its source group with its full
        ``N x N`` rows, as every dataset stored it before, and the triangle group is not
        listed. A trailing dimension name with two lengths among the arrays so presented
        together (``bin`` in ``d2_distance`` and ``a3_distance`` of a dataset merged
        before 1c9d8a3) is presented qualified by each array, as the merger names it now
        (:func:`~cadstore.format.layout.qualify_dims`). With ``stored_layout=True`` (what
        an append needs to continue the dataset) the reader shows the groups, arrays and
        dimension names as they are.

    Raises
    ------
    CorruptStoreError
        If ``path`` is not a readable cadstore dataset: not a regular file or directory
        (refused before anything is read), not a zip or Zarr store, or its root
        ``metadata.json`` is not a JSON object (see
        :func:`cadstore.format.jsoncodec.load_document`) or its name was damaged (see
        :meth:`cadstore.format.hierarchy.ReadHierarchy.check_absent`). On an object store its
        subclasses say why: :class:`~cadstore.errors.StorageAccessError` for refused
        credentials, :class:`~cadstore.errors.StorageUnavailableError` for an unreachable
        store.

    Notes
    -----
    After :meth:`close` every read raises :class:`~cadstore.errors.StorageClosedError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | Location,
        *,
        storage_options: dict[str, Any] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        cache_bytes: int = 64 * 1024 * 1024,
        stored_layout: bool = False,
    ) -> None:
        self.location = resolve(path, storage_options, shared=True)
        self.stored_layout = stored_layout
        self.path = self.location.path
        self.storage_options = self.location.storage_options
        self.limits = limits
        self.cache_bytes = cache_bytes
        self._pid = -1
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._closed = False
        #: The items this reader opened: their count and a digest of their names, in
        #: order (see _items_digest; None until the reader is pickled: the names are
        #: still at hand until then), checked when it opens the file again.
        self._version: tuple[int, str | None] | None = None
        #: Opened again (unpickled, or in a forked child) after its dataset was replaced by
        #: a version with other first items: every read says so, opening nothing.
        self._replaced = False
        self._open()

    # ------------------------------------------------------------------ lifecycle
    def _open(self) -> None:
        source = self._open_source()
        try:
            # The merger stores every chunk holding rows: one missing is damage.
            try:
                hier = ReadHierarchy(source, self.limits, item_layouts=False, complete=True)
            except CorruptStoreError as exc:
                hint = folder_hint(self.location) if self.location.isdir() else ""
                if not hint:
                    raise
                raise CorruptStoreError(self.path, f"{exc.problem}; {hint}") from exc
            if hier.group_attributes.get("", {}).get("cadstore") != DATASET_FORMAT:
                raise CorruptStoreError(
                    self.path,
                    f"not a cadstore dataset (no {DATASET_FORMAT!r} marker in its root zarr.json)",
                )
            # Written by every merge: asked for by name if a listing lacked it; absent
            # beside a member of a name of its length that is no node's, a damaged name.
            raw = source.get(_METADATA) if source.locate(_METADATA) is not None else None
            if raw is None:
                hier.check_absent(_METADATA, "document")
            self.metadata: dict[str, Any] = (
                load_document(
                    raw,
                    path=self.path,
                    member=_METADATA,
                    max_bytes=self.limits.max_metadata_bytes,
                )
                if raw
                else {}
            )
            # Decoded here, so that a damaged chunk of it closes the file too.
            names = hier.read_array(ITEM_NAMES) if ITEM_NAMES in hier.arrays else np.array([])
            item_names = [str(n) for n in names.tolist()]
            opened: tuple[int, str | None] | None = getattr(self, "_version", None)
            if opened is None:
                version: tuple[int, str | None] = (len(item_names), None)
            else:
                # Opened again (in a worker process, or after a fork), by path: another
                # writer may have replaced the dataset since. An append keeps the items
                # this reader knew as the first ones, under the same codes; any other
                # version would pair what this reader's user learned of the version it
                # opened (item codes, a split's labels) with other items.
                count, digest = opened
                if len(item_names) < count or (
                    not _first_items_are(item_names, getattr(self, "item_names", [])[:count])
                    if digest is None  # a forked copy: the names it opened are at hand
                    else _items_digest(item_names, count) != digest
                ):
                    raise _replaced_error(self.path)
                version = opened
        except BaseException:
            source.close()
            raise
        self._version = version
        self._source = source
        self._hier = hier
        self._pid = _PROCESS_ID[0]
        self._offsets: dict[str, np.ndarray] = {}
        self._whole: dict[str, np.ndarray] = {}
        # Small sharded arrays decoded whole for batch reads (see _small_array): path ->
        # the array, or None when it is too large to keep.
        self._small: dict[str, np.ndarray | None] = {}
        self._small_bytes = 0
        self._indexes: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self._chunks: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self._cached = 0
        # Frame tables of item-framed chunks already read and verified: (path, shard,
        # inner) -> (shard key, chunk offset, {first byte: (stored start, stored stop,
        # last byte)}), so that later items of the chunk fetch and decode their own frame;
        # None for a chunk found not to be item-framed.
        self._frames: OrderedDict[tuple[str, int, int], _FrameTable | None] = OrderedDict()
        self._frame_count = 0
        # How rows (path, start, stop) were last read, when every byte of them came from
        # whole zstd chunks and remembered frames: the ranges to fetch and where each
        # frame decodes to (see _recipe). An item read again costs a lookup and the fetches.
        self._recipes: OrderedDict[tuple[str, int, int], _Recipe] = OrderedDict()
        self._recipe_parts = 0
        # Bytes fetched ahead in one batch for the read under way (object stores only).
        self._prefetched: dict[str, list[tuple[int, bytes]]] = {}
        # Scratch buffers for triangles (see _take_scratch), smallest first.
        self._scratch_free: list[np.ndarray] = []
        # Batch reads under way, which close() waits for (they let the lock go between
        # arrays); per thread, those of the thread itself.
        self._reading = 0
        self._local = threading.local()
        self.item_names: list[str] = item_names
        self._codes = {name: code for code, name in enumerate(self.item_names)}
        self._groups = [g for g in hier.children("") if g in hier.groups]
        # Triangle-stored face-pair arrays: "source/array" -> (triangle group, array).
        self._virtual: dict[str, tuple[str, str]] = {}
        self._hidden: set[str] = set()
        if not self.stored_layout:
            self._find_triangles(hier)
        # (group, array) -> (metadata, per-item?) resolved once: item reads are hot.
        self._arrays: dict[tuple[str, str], tuple[Any, bool]] = {}
        # group -> {array: dims as presented} (see _presented_dims).
        self._dims: dict[str, dict[str, tuple[str, ...]]] = {}
        self._geometries: dict[str, tuple[Any, ...]] = {}
        self._plans: dict[tuple[str, tuple[str, ...] | None], list[tuple[str, Any, bool, str]]] = {}
        _READERS.add(self)

    def _find_triangles(self, hier: ReadHierarchy) -> None:
        """Register the triangle groups and the full arrays they stand for.

        Raises
        ------
        CorruptStoreError
            If a triangle group names no face-pair group of the dataset as its source.
        """
        for group in self._groups:
            attrs = hier.group_attributes.get(group, {})
            if attrs.get("cadstore_layout") != UPPER_TRIANGLE:
                continue
            source = attrs.get("source_group")
            if not isinstance(source, str) or source not in self._groups or source == group:
                raise CorruptStoreError(
                    self.path, f"triangle group {group!r} has no valid source_group ({source!r})"
                )
            self._hidden.add(group)
            for array in hier.children(group):
                if array in (OFFSETS, file_id_code_name(group)):
                    continue
                if f"{source}/{array}" in hier.arrays:
                    raise CorruptStoreError(
                        self.path, f"{source}/{array} is stored both in full and in {group!r}"
                    )
                self._virtual[f"{source}/{array}"] = (group, array)

    def _open_source(self) -> KeySource:
        return open_source(self.location, self.limits, what="dataset")

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosedError(
                f"{self.path}: the dataset reader is closed; open a new DatasetReader to "
                "read it again"
            )
        if self._replaced:
            raise _replaced_error(self.path)

    def _forked(self, parent: int) -> None:
        """Take over, in a child process just forked, the reader open in the parent.

        The locks are made the child's own. When the parent's reader was at rest (no
        other thread of the parent inside it as the process forked) and its source can be
        read from the child as it is (:meth:`KeySource.after_fork`: a local file read by
        position), the child keeps what the parent learned (small arrays decoded whole,
        frame tables, shard indexes; see :meth:`warm`), shared copy-on-write: the
        ``DataLoader`` workers of every epoch start where the training process got to,
        instead of each learning it again. Otherwise the file is opened again on the
        child's first read.
        """
        self._lock, free = renew_lock(self._lock, threading.RLock)
        self._idle = threading.Condition(self._lock)
        self._local = threading.local()
        self._reading = 0
        source = getattr(self, "_source", None)
        if (
            free
            and not self._closed
            and source is not None
            and self._pid == parent
            and source.after_fork()
        ):
            self._pid = _PROCESS_ID[0]

    def _ensure(self) -> None:
        # Closing is final: without this check the next read would reopen the file and
        # leave it open, since nothing would close it again.
        self._check_open()
        # A reader inherited through fork and not taken over (_forked), or unpickled in a
        # worker, opens the file in this process.
        if self._pid != _PROCESS_ID[0]:
            self._release()
            try:
                self._open()
            except _DatasetReplaced:
                # Replaced by a version whose first items are others: said at every read
                # from now on (by _check_open), as to a copy unpickled after it, without
                # opening the file again (each read opened it and decoded its item names
                # only to refuse once more).
                self._replaced = True
                raise

    def _release(self) -> None:
        # The source may have been opened in a parent process: after a fork this process
        # holds its own copy of the file descriptor, which it must close itself (closing
        # it does not touch the parent's), or it leaks and warns when collected.
        source = getattr(self, "_source", None)
        self._source = None  # type: ignore[assignment]
        self._pid = -1
        if source is not None:
            source.close()

    def close(self) -> None:
        """Close the file, for good: later reads raise ``StorageClosedError``. Idempotent.

        Reads under way in other threads finish first.
        """
        with self._lock:
            local = getattr(self, "_local", None)
            own = getattr(local, "reading", 0)
            while getattr(self, "_reading", 0) > own:
                self._idle.wait()
            self._closed = True
            self._release()

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "limits": self.limits,
            "cache_bytes": self.cache_bytes,
            "closed": self._closed,
            "stored_layout": self.stored_layout,
            "version": self._version_record(),
        }

    def _version_record(self) -> tuple[int, str] | None:
        """:attr:`_version` with its digest, computed (once) for a copy of this reader,
        which has not the names at hand."""
        version = getattr(self, "_version", None)
        if version is None:
            return None
        count, digest = version
        if digest is None:
            digest = _items_digest(self.item_names, count)
            self._version = (count, digest)
        return count, digest

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.location = state["location"]
        self.path = self.location.path
        self.storage_options = self.location.storage_options
        self.limits = state["limits"]
        self.cache_bytes = state["cache_bytes"]
        self.stored_layout = bool(state.get("stored_layout", False))
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._pid = -1
        self._closed = bool(state.get("closed", False))
        version = state.get("version")
        self._version = None if version is None else (int(version[0]), str(version[1]))
        self._replaced = False
        if not self._closed:
            try:
                self._open()
                return
            except _DatasetReplaced:
                # Replaced since it was pickled: said at every read, as to a reader
                # open across the replacement, not while unpickling (a DataLoader worker
                # dying as it starts says nothing of why).
                self._replaced = True
        # A copy of a closed (or replaced) reader opens nothing.
        self._source = None  # type: ignore[assignment]
        self.metadata = {}
        self.item_names = []
        self._codes = {}
        self._arrays = {}
        self._dims = {}
        self._virtual = {}
        self._hidden = set()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<DatasetReader {self.path!r} items={len(self.item_names)}{state}>"

    # ------------------------------------------------------------------ structure
    @property
    def n_items(self) -> int:
        """Number of items."""
        return len(self.item_names)

    def keeps_items_of(self, other: DatasetReader) -> bool:
        """Whether this version of the dataset holds ``other``'s items first, in order,
        so that ``other``'s item codes (and a split computed on them) still name the same
        items here: an append keeps them, a merge with overwrite need not."""
        return _first_items_are(self.item_names, other.item_names)

    @property
    def shares_threads(self) -> bool:
        """Whether threads can share this reader and decode at the same time.

        They can for a dataset on disk: a batch read holds the lock to plan its reads
        (and to decode a chunk met for the first time, which the reader keeps) and
        decodes the planned frames after letting it go, and the threads share what the
        reader has learned (the verified frame tables, the read plans, the decoded chunks)
        instead of each learning it again. On an object store a batch read holds the
        reader while it fetches its bytes ahead: threads there are better off with a
        reader each.
        """
        with self._lock:
            self._ensure()
            return not self._source.batches_reads

    @property
    def consolidated(self) -> bool:
        """Whether the dataset's metadata is read from the consolidated copy in its root
        ``zarr.json`` (every merge writes one), rather than from each node's own document
        (a dataset whose root lost its copy), so that another reader of the store
        (zarr-python, for the explorer's views) can be told to read the same."""
        self._ensure()
        return self._hier.consolidated

    @property
    def stored_bytes(self) -> int:
        """Size of the dataset as stored (the zip, or every file below the directory)."""
        with self._lock:
            self._ensure()
            return self._source.total_bytes()

    def members(self) -> list[str]:
        """The keys of every member of the store (zip members, or files below it)."""
        with self._lock:
            self._ensure()
            return list(self._source.keys())

    def member(self, key: str) -> bytes | None:
        """The stored bytes of member ``key`` (``None`` if absent), as they are on disk."""
        with self._lock:
            self._ensure()
            return self._source.get(key)

    def group_attributes(self, group: str) -> dict[str, Any]:
        """The Zarr attributes of ``group`` (``primary_dimension``, ``special_processing``)."""
        self._check_group(group)
        return dict(self._hier.group_attributes.get(group, {}))

    def stored_nbytes(self, group: str, array: str) -> int:
        """Bytes the chunks (shards) of ``group/array`` occupy as stored, metadata excluded.

        Raises
        ------
        DatasetError
            If the group or array is unknown.
        """
        with self._lock:
            self._ensure()
            self._check_array(group, array)
            path = f"{group}/{array}"
            stored = self._virtual.get(path)
            return self._hier.stored_nbytes("/".join(stored) if stored else path)

    @property
    def groups(self) -> list[str]:
        """Names of the data groups (triangle groups left out unless ``stored_layout``)."""
        self._ensure()
        return [
            g for g in self._hier.children("") if g in self._hier.groups and g not in self._hidden
        ]

    def _check_group(self, group: str) -> None:
        # A triangle group is not listed, but can be read as stored.
        if group not in self.groups and group not in self._hidden:
            raise DatasetError(f"unknown group {group!r}; the dataset has {sorted(self.groups)}")

    def arrays(self, group: str) -> list[str]:
        """Names of the arrays in ``group`` (including ``file_id_code_*`` and offsets);
        those stored as triangles are listed in their source group."""
        self._check_group(group)
        names = self._hier.children(group)
        virtual = [p.split("/", 1)[1] for p in self._virtual if p.startswith(f"{group}/")]
        if not virtual:
            return names
        data = [n for n in names if n not in (OFFSETS, file_id_code_name(group))]
        # In the order the arrays had before some moved to a triangle group.
        order = self._hier.group_attributes.get(group, {}).get("array_order")
        rank = {str(n): i for i, n in enumerate(order)} if isinstance(order, list) else {}
        listed = sorted([*data, *virtual], key=lambda n: (rank.get(n, len(rank)), n))
        return [*listed, *(n for n in names if n not in data)]

    def primary_dimension(self, group: str) -> str:
        """The group's primary dimension."""
        self._check_group(group)
        return str(self._hier.group_attributes[group].get("primary_dimension", ""))

    def array_meta(self, group: str, array: str) -> Any:
        """Validated Zarr metadata of ``group/array`` (shape, dtype, dims, ...)."""
        self._check_open()
        return self._resolve(group, array)[0]

    def _resolve(self, group: str, array: str) -> tuple[Any, bool]:
        found = self._arrays.get((group, array))
        if found is None:
            meta, per_item = self._unqualified(group, array)
            if not self.stored_layout and meta.dims:
                dims = self._presented_dims(group).get(array, meta.dims)
                if dims != meta.dims:
                    meta = dataclasses.replace(meta, dims=dims)
            found = (meta, per_item)
            self._arrays[(group, array)] = found
        return found

    def _unqualified(self, group: str, array: str) -> tuple[Any, bool]:
        """Metadata of ``group/array`` and whether it is per item, its dimension names as
        stored (a triangle-stored array's first one its source group's primary)."""
        self._check_array(group, array)
        stored = self._virtual.get(f"{group}/{array}")
        if stored is None:
            meta = self._hier.meta(f"{group}/{array}")
            per_item = bool(meta.dims and meta.dims[0] == "item")
            self._check_length(group, array, meta, per_item)
            return meta, per_item
        # The full array it stands for: the source group's rows and dimension.
        meta = self._hier.meta("/".join(stored))
        self._check_length(*stored, meta, per_item=False)
        primary = self.primary_dimension(group)
        meta = dataclasses.replace(
            meta,
            shape=(int(self.offsets(group)[-1]), *meta.shape[1:]),
            chunks=(max(1, int(self.offsets(group)[-1])), *meta.chunks[1:]),
            dims=(primary, *(meta.dims or ())[1:]) if meta.dims else None,
        )
        return meta, False

    def _check_length(self, group: str, array: str, meta: Any, per_item: bool) -> None:
        """Check that stored ``group/array`` is as long as its group says: a value per
        item, or the group's rows (the last of its ``item_offsets``).

        Every array's metadata is resolved through here, so the reader's reads and the
        explorer's views (which ask the reader first) meet one check: a shape in the
        metadata that disagrees with the group (no checksum covers a directory dataset's
        ``zarr.json``) was read as that many rows, fill values past the group's end.

        Raises
        ------
        CorruptStoreError
            Naming the dataset and the array, its length and the group's.
        """
        if array == OFFSETS:
            return  # its length is checked with its values (offsets)
        length = int(meta.shape[0]) if meta.shape else 0
        expected = self.n_items if per_item else int(self.offsets(group)[-1])
        if length != expected or not meta.shape:
            unit, of = ("values", "items") if per_item else ("rows", f"rows in {group!r}")
            raise CorruptStoreError(
                self.path,
                f"{group}/{array} holds {length} {unit} (shape {tuple(meta.shape)}), where "
                f"the dataset has {expected} {of}",
            )

    def _presented_dims(self, group: str) -> dict[str, tuple[str, ...]]:
        """The dimension names of ``group``'s arrays as presented, by array.

        The arrays of a group and of its triangle group are presented as one group: a
        trailing name with two lengths among them is qualified by its array
        (``d2_distance_bin``; ``d2_distance_bin_2`` where the group declares that name
        itself), as :func:`~cadstore.format.layout.qualify_dims` names it,
        which the merger does since 1c9d8a3. A dataset merged before may store ``bin``
        with 64 values in ``d2_distance`` and 32 in ``a3_distance`` in one group, which
        xarray refuses; it is presented as a dataset merged now stores it. The file is
        not changed.
        """
        found = self._dims.get(group)
        if found is None:
            named = []
            for array in self.arrays(group):
                try:
                    meta = self._unqualified(group, array)[0]
                except CorruptStoreError:
                    # Damaged metadata is reported when that array is read, not when a
                    # sibling is: its names are left out of the qualification.
                    continue
                if meta.dims:
                    named.append((array, meta.dims, meta.shape[1:]))
            primaries, family = [self.primary_dimension(group)], [group]
            for triangle in sorted(self._hidden):
                attrs = self._hier.group_attributes.get(triangle, {})
                if attrs.get("source_group") == group:
                    primaries.append(self.primary_dimension(triangle))
                    family.append(triangle)
            dims = qualify_dims(named, primaries, family)
            found = {array: tuple(d) for (array, _, _), d in zip(named, dims, strict=True)}
            self._dims[group] = found
        return found

    def _check_array(self, group: str, array: str) -> None:
        self._check_group(group)
        path = f"{group}/{array}"
        if path not in self._hier.arrays and path not in self._virtual:
            raise DatasetError(
                f"unknown array {array!r} in group {group!r}; it has {sorted(self.arrays(group))}"
            )

    def stored_as(self, group: str, array: str) -> tuple[str, str]:
        """Where ``group/array`` is stored: itself, or for a face-pair array stored as an
        upper triangle, ``(triangle group, array)``, whose rows are the pairs ``i <= j``
        (see :mod:`cadstore.format.triangle`)."""
        self._check_array(group, array)
        return self._virtual.get(f"{group}/{array}", (group, array))

    def stored_dims(self, group: str, array: str) -> tuple[str, ...] | None:
        """The dimension names of ``group/array`` as the file stores them (those of the
        triangle-stored array for one :meth:`stored_as` names elsewhere); :meth:`array_meta`
        gives them as presented, which may qualify a name (see ``_presented_dims``)."""
        self._check_open()
        dims: tuple[str, ...] | None = self._hier.meta("/".join(self.stored_as(group, array))).dims
        return dims

    def is_per_item(self, group: str, array: str) -> bool:
        """Whether ``group/array`` holds one value per item rather than rows."""
        self._check_open()
        return self._resolve(group, array)[1]

    def code_of(self, name: str) -> int:
        """Return the code of the item called ``name``."""
        self._check_open()
        try:
            return self._codes[name]
        except KeyError:
            raise KeyNotFoundError(name, f"no item named {name!r} in {self.path}") from None

    def _check_code(self, code: int) -> int:
        self._check_open()
        code = whole_number(code, "item code")
        if not 0 <= code < self.n_items:
            raise DatasetError(
                f"item code {code} is out of range: valid codes are 0..{self.n_items - 1}"
            )
        return code

    # ------------------------------------------------------------------ offsets
    def offsets(self, group: str) -> np.ndarray:
        """``item_offsets`` of ``group``: item ``c`` owns rows ``[o[c], o[c + 1])``."""
        with self._lock:
            self._ensure()
            found = self._offsets.get(group)
            if found is None:
                self._check_array(group, OFFSETS)
                found = self._hier.read_array(f"{group}/{OFFSETS}")
                if len(found) != self.n_items + 1 or np.any(np.diff(found) < 0):
                    raise CorruptStoreError(self.path, f"{group}/{OFFSETS} is inconsistent")
                found.setflags(write=False)
                self._offsets[group] = found
            return found

    def item_range(self, group: str, code: int) -> tuple[int, int]:
        """Row range ``(start, stop)`` of item ``code`` in ``group``."""
        code = self._check_code(code)
        o = self.offsets(group)
        return int(o[code]), int(o[code + 1])

    # ------------------------------------------------------------------ warming
    def warm(
        self,
        groups: Iterable[str] | None = None,
        arrays: Mapping[str, Iterable[str]] | None = None,
        *,
        wait: bool = True,
    ) -> bool:
        """Learn now what item reads of ``groups`` (default: all) look up as they go.

        That is the groups' offsets and shard indexes, the arrays of small rows decoded
        whole (see :data:`SMALL_ARRAY_BYTES`), the frame table of every item-framed
        chunk, each chunk read once and its checksum verified, and how a batch reads
        each item's rows of the other arrays (its read plans): within the cache's budget
        (``cache_bytes``), at most :data:`WARM_READ_BYTES` of chunks read, and only for a
        dataset on a local disk. Item reads would learn the same one by one; warming is for
        a process that forks readers. A ``DataLoader`` without ``persistent_workers``
        starts new worker processes every epoch, and each learned it all again; forked
        from a warm reader, they share it copy-on-write (see :meth:`warm_before_fork`).

        Parameters
        ----------
        groups, arrays
            What to warm, as :meth:`read_item` takes them.
        wait
            If false, return ``False`` at once when another thread is reading.

        Returns
        -------
        bool
            ``False`` when ``wait`` is false and another thread was reading: nothing was
            done. A damaged chunk or shard index is skipped, left for the read that needs
            it to report.

        Raises
        ------
        DatasetError
            If a group or array is not in the dataset.
        StorageClosedError
            If the reader is closed.
        """
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            self._ensure()
            # Looked up here, before a fork, rather than by every forked worker.
            zstd_decoder()
            if not self.cache_bytes or self._source.batches_reads:
                return True
            allowance = WARM_READ_BYTES
            for group in list(groups) if groups is not None else self.groups:
                self.offsets(group)
                for _, meta, per_item, path in self._item_plan(group, _selected(arrays, group)):
                    rows_of = group
                    stored = self._virtual.get(path)
                    if stored is not None:
                        path = "/".join(stored)
                        meta = self._hier.meta(path)
                        rows_of = stored[0]
                    if not _is_sharded(meta) or meta.is_string:
                        continue
                    # Batch reads take the rows of small arrays from the whole array,
                    # single items' reads from their frames: both are learned.
                    try:
                        small = self._small_array(path, meta)
                        read = self._learn_frames(path, meta, allowance)
                        if read is None:
                            return True  # the tables fill the cache, or enough was read
                        allowance -= read
                        # And how a batch reads each item's rows of the other arrays.
                        if (
                            small is None
                            and not per_item
                            and not self._learn_plans(path, meta, self.offsets(rows_of))
                        ):
                            return True
                    except CorruptStoreError:
                        continue  # damaged: the read that needs it says so
            return True
        finally:
            self._lock.release()

    def warm_before_fork(
        self,
        groups: Iterable[str] | None = None,
        arrays: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Have this reader :meth:`warm` ``groups`` (default: all) just before this process
        next forks, so that every child forked from then on starts warm.

        What ``TorchCADDataset`` and ``TorchGraphDataset`` ask for: the training process
        itself seldom reads, its ``DataLoader`` workers do, and they are forked anew each
        epoch. Warmed once, in an ``os.register_at_fork`` hook, when this process next
        forks, whatever forks it (errors are left for the reads to report); nothing
        happens in a process that never forks, nor under ``spawn`` or ``forkserver``,
        which fork nothing from it.
        """
        picked = {g: tuple(a) for g, a in arrays.items()} if arrays is not None else None
        spec = (tuple(groups) if groups is not None else None, picked)
        pending = _WARM_AT_FORK.get(self)
        # Asked for by two datasets over the reader (train and validation): what either reads.
        _WARM_AT_FORK[self] = spec if pending is None else _either(pending, spec)

    def _learn_plans(self, path: str, meta: Any, offsets: np.ndarray) -> bool:
        """Work out how a batch reads each item's rows of sharded ``path`` (item ``c``
        owning rows ``offsets[c]:offsets[c + 1]``) and keep it (:meth:`_recipe`), as the
        batch itself would on its first read of the item; return ``False`` once the
        cache's budget for read plans is full. Forked ``DataLoader`` workers start every
        epoch from what the training process learned: worked out in each worker, the plans
        of a graph-only batch had cost about a tenth of its time. Callers hold the lock,
        after :meth:`_learn_frames` of ``path``."""
        limit = self.cache_bytes // _ENTRY_BYTES
        row_bytes = math.prod(meta.shape[1:]) * meta.dtype.itemsize
        bounds = offsets.tolist()
        for start, stop in itertools.pairwise(bounds):
            if self._recipe_parts >= limit:
                return False
            rows = (path, start, stop)
            if not 0 <= start < stop <= meta.shape[0] or rows in self._recipes:
                continue
            recipe = self._recipe(path, meta, start, stop, row_bytes)
            if recipe is not None:
                self._keep_recipe(rows, recipe)
        return True

    def _learn_frames(self, path: str, meta: Any, allowance: int) -> int | None:
        """Read every item-framed chunk of sharded ``path`` once and keep its frame table
        (:meth:`_keep_frames`); return the bytes read, or ``None`` when the cache's
        budget for tables is full or ``allowance`` bytes were read. Callers hold the
        lock."""
        _, inner_shape, _, shard_rows, n_inner, suffix, direct, trailer = self._geometry(path, meta)
        if direct is None:
            return 0
        limit = self.cache_bytes // _ENTRY_BYTES
        expected = math.prod(inner_shape) * meta.dtype.itemsize
        read = 0
        for shard in range(-(-meta.shape[0] // shard_rows)):
            key = f"{path}/c/{shard}{suffix}"
            for inner, (offset, nbytes) in enumerate(self._shard_index(key, n_inner, trailer)):
                cache_key = (path, shard, inner)
                if offset == MISSING or cache_key in self._frames:
                    continue
                if self._frame_count >= limit or read >= allowance:
                    return None
                data = self._get_range(key, offset, nbytes)
                read += len(data)
                try:
                    framed = open_item_frames(direct, data, expected)
                except ChunkDecodeError:
                    continue  # damaged: the read that needs it says so
                if framed is None:
                    # Not item-framed (one item's rows, an older writer, another tool):
                    # remembered, so that reads go straight to decoding it whole.
                    self._remember_frames(cache_key, None)
                else:
                    self._keep_frames(cache_key, key, offset, framed[1], framed[2])
        return read

    # ------------------------------------------------------------------ reading
    def read_array(self, group: str, array: str) -> np.ndarray:
        """Read a whole array."""
        self._check_array(group, array)
        with self._lock:
            self._ensure()
            if f"{group}/{array}" in self._virtual:
                meta = self._resolve(group, array)[0]
                out = np.empty(meta.shape, dtype=meta.dtype)
                self._read_into(f"{group}/{array}", meta, 0, meta.shape[0], out)
                return out
            return self._hier.read_array(f"{group}/{array}")

    def read_rows(
        self, group: str, array: str, start: int, stop: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Read rows ``[start, stop)`` of ``group/array``, decoding only what they touch.

        Parameters
        ----------
        group, array
            The array.
        start, stop
            The row range.
        out
            Where to put the rows (shape ``(stop - start, ...)`` and the array's dtype);
            inner chunks that lie wholly inside the range are decoded straight into it.
            A new array by default.

        Returns
        -------
        numpy.ndarray
            ``out``, or the new array.
        """
        meta = self.array_meta(group, array)
        path = f"{group}/{array}"
        total = meta.shape[0] if meta.shape else 0
        if not 0 <= start <= stop <= total:
            raise DatasetError(f"rows {start}:{stop} are outside {path} (0:{total})")
        dtype = _numpy_dtype(meta)
        if out is None:
            out = np.empty((stop - start, *meta.shape[1:]), dtype=dtype)
        elif out.shape != (stop - start, *meta.shape[1:]) or out.dtype != dtype:
            raise ValueError(
                f"out has shape {out.shape} and dtype {out.dtype}; rows {start}:{stop} of "
                f"{path} need {(stop - start, *meta.shape[1:])} and {dtype}"
            )
        self._read_into(path, meta, start, stop, out)
        return out

    def _read_into(
        self,
        path: str,
        meta: Any,
        start: int,
        stop: int,
        out: np.ndarray,
        plan: _Plan | None = None,
    ) -> None:
        """:meth:`read_rows` without the argument checks (the caller made ``out``).

        The rows asked for come from the offsets index; an array whose own shape does not
        hold them (metadata edited or written by another tool) is a corrupt store, never
        rows of fill values or a broadcasting error. With ``plan``, zstd frames that decode
        straight into ``out`` are added to it, for the caller to decode together
        (:func:`decode_frames`), instead of being decoded now.
        """
        shape = meta.shape
        if not shape or stop > shape[0] or out.shape[1:] != shape[1:]:
            raise CorruptStoreError(
                self.path,
                f"{path}: rows {start}..{stop} of shape {out.shape[1:]} do not fit its "
                f"shape {shape}",
            )
        if not out.size:
            return  # no values (no rows, or rows of a zero-length axis): nothing to read
        with self._lock:
            self._ensure()
            if path in self._virtual:
                self._read_triangle(path, start, stop, out)
            elif not _is_sharded(meta):
                out[...] = self._whole_array(path)[start:stop]
            elif stop > start:
                self._read_sharded(path, meta, start, stop, out, plan)

    def _triangle_items(
        self, path: str, start: int, stop: int
    ) -> Iterator[tuple[int, int, int, int, int]]:
        """The items whose full rows ``[start, stop)`` of triangle-stored ``path`` touch.

        Yields ``(n, full_start, full_stop, tri_start, tri_stop)`` per item with rows: its
        matrix side, and its rows in the full and in the triangle array.

        Raises
        ------
        CorruptStoreError
            If an item's full rows are not ``N²`` or its triangle rows not ``N (N + 1) / 2``.
        """
        source = path.split("/", 1)[0]
        group = self._virtual[path][0]
        full, tri = self.offsets(source), self.offsets(group)
        code = max(0, int(np.searchsorted(full, start, side="right")) - 1)
        while code < self.n_items and int(full[code]) < stop:
            lo, hi = int(full[code]), int(full[code + 1])
            t0, t1 = int(tri[code]), int(tri[code + 1])
            n = math.isqrt(hi - lo)
            if n * n != hi - lo or t1 - t0 != triangle_count(n):
                raise CorruptStoreError(
                    self.path,
                    f"item {code} has {hi - lo} rows in {source!r} and {t1 - t0} in "
                    f"{group!r}: not N x N and its upper triangle",
                )
            if hi > start:
                yield n, lo, hi, t0, t1
            code += 1

    def _take_scratch(
        self, shape: tuple[int, ...], dtype: np.dtype
    ) -> tuple[np.ndarray, np.ndarray]:
        """An array of ``shape`` and ``dtype`` in this reader's scratch memory, for
        triangles being decoded, and the byte buffer it lives in, to give back with
        :meth:`_give_scratch`.

        A triangle is decoded, expanded into the caller's array and dropped, item after
        item; a fresh array for each large one costs the kernel its pages (every
        allocation past malloc's mmap threshold is new memory). Up to
        :data:`SCRATCH_BYTES`, buffers given back are kept (the :data:`SCRATCH_KEPT`
        largest) and lent again: one per read decoding at once, since threads sharing
        the reader expand their triangles after letting the lock go. Callers hold the
        lock.
        """
        need = math.prod(shape) * dtype.itemsize
        free = self._scratch_free
        fits = [i for i, buffer in enumerate(free) if buffer.nbytes >= need]  # smallest first
        if fits:
            buffer = free.pop(fits[0])
        elif need > SCRATCH_BYTES:
            buffer = np.empty(need, np.uint8)
        else:
            largest = free[-1].nbytes if free else 0
            buffer = np.empty(min(max(need, 2 * largest), SCRATCH_BYTES), np.uint8)
        return buffer[:need].view(dtype).reshape(shape), buffer

    def _give_scratch(self, buffer: np.ndarray) -> None:
        """Keep ``buffer`` (from :meth:`_take_scratch`) for later reads. Callers hold the
        lock."""
        if buffer.nbytes > SCRATCH_BYTES:
            return
        free = self._scratch_free
        free.append(buffer)
        free.sort(key=lambda b: b.nbytes)
        del free[:-SCRATCH_KEPT]

    def _read_triangle(self, path: str, start: int, stop: int, out: np.ndarray) -> None:
        """Full rows ``[start, stop)`` of triangle-stored ``path``, rebuilt into ``out``."""
        group, name = self._virtual[path]
        stored = f"{group}/{name}"
        meta = self._resolve(group, name)[0]
        for n, lo, hi, t0, t1 in self._triangle_items(path, start, stop):
            tri, buffer = self._take_scratch((t1 - t0, *meta.shape[1:]), meta.dtype)
            self._read_into(stored, meta, t0, t1, tri)
            a, b = max(start, lo), min(stop, hi)
            expand_into(tri, n, out[a - start : b - start], a - lo, b - lo)
            self._give_scratch(buffer)

    def _stored_reads(
        self, reads: Iterable[tuple[str, Any, int, int]]
    ) -> Iterator[tuple[str, Any, int, int]]:
        """``reads`` of full rows as the reads of the stored rows they come from."""
        for path, meta, start, stop in reads:
            stored = self._virtual.get(path)
            if stored is None:
                yield path, meta, start, stop
                continue
            spans = [(t0, t1) for *_, t0, t1 in self._triangle_items(path, start, stop)]
            if spans:
                yield "/".join(stored), self._resolve(*stored)[0], spans[0][0], spans[-1][1]

    def _geometry(self, path: str, meta: Any) -> tuple[Any, ...]:
        """The sharding layout of ``path``, checked: cadstore reads row-sharded arrays.

        Raises
        ------
        CorruptStoreError
            If the inner chunks do not span every axis but the first, do not divide the
            shard, or would decode to more than ``limits.max_chunk_bytes``.
        """
        geometry = self._geometries.get(path)
        if geometry is None:
            if meta.is_string:
                raise CorruptStoreError(self.path, f"{path}: a sharded string array")
            # Metadata parsing checked the configuration (zarr_nodes._check_sharding).
            config = meta.codecs[0]["configuration"]
            shard_rows = meta.chunks[0]
            inner_shape = tuple(config["chunk_shape"])
            if math.prod(inner_shape) * meta.dtype.itemsize > self.limits.max_chunk_bytes:
                raise CorruptStoreError(
                    self.path,
                    f"{path}: inner chunks {inner_shape} would decode to more than "
                    f"max_chunk_bytes={self.limits.max_chunk_bytes}",
                )
            if inner_shape[1:] != tuple(meta.chunks[1:]) or shard_rows % inner_shape[0]:
                raise CorruptStoreError(
                    self.path,
                    f"{path}: inner chunks {inner_shape} do not split shards {meta.chunks} "
                    "along rows only",
                )
            geometry = (
                config,
                inner_shape,
                inner_shape[0],
                shard_rows,
                shard_rows // inner_shape[0],
                "/0" * (len(meta.shape) - 1),
                direct_codec(config["codecs"], meta.dtype),
                # Bytes after the index entries: its crc32c checksum, when it has one.
                index_trailer(config["index_codecs"]),
            )
            self._geometries[path] = geometry
        return geometry

    def _shard_spans(
        self, path: str, meta: Any, start: int, stop: int
    ) -> Iterator[tuple[int, str, int, int, int, range]]:
        """The shards that rows ``[start, stop)`` touch, in order.

        Yields ``(shard, key, base, lo, hi, inners)``: the shard's number, its member key,
        its first row, the rows ``lo:hi`` wanted from it (array coordinates) and the
        inner chunks holding them.
        """
        _, _, inner_rows, shard_rows, _, suffix, _, _ = self._geometry(path, meta)
        for shard in range(start // shard_rows, (stop - 1) // shard_rows + 1):
            base = shard * shard_rows
            lo, hi = max(start, base), min(stop, base + shard_rows)
            inners = range((lo - base) // inner_rows, (hi - 1 - base) // inner_rows + 1)
            yield shard, f"{path}/c/{shard}{suffix}", base, lo, hi, inners

    def _read_sharded(
        self,
        path: str,
        meta: Any,
        start: int,
        stop: int,
        out: np.ndarray,
        plan: _Plan | None = None,
    ) -> None:
        _, _, inner_rows, shard_rows, n_inner, suffix, direct, trailer = self._geometry(path, meta)
        # The rows asked for, decoded into ``out``: within what the file may decode to.
        self._source.budget.check_rows(path, start, stop, out.nbytes)
        one = _one_chunk(inner_rows, shard_rows, start, stop)
        if one is not None:
            # The common case for one item: a single inner chunk holds every row.
            shard, inner, r0 = one
            key = f"{path}/c/{shard}{suffix}"
            index = self._shard_index(key, n_inner, trailer)
            self._read_part(key, shard, inner, index, meta, path, r0, start, out, plan)
            return
        for shard, key, base, lo, hi, inners in self._shard_spans(path, meta, start, stop):
            index = self._shard_index(key, n_inner, trailer)
            # Inner chunks wholly inside the rows belong to this item alone: decode them
            # straight into the output (no cache entry, no copy), from one read of their
            # contiguous bytes. Chunks shared with neighbours go through the cache.
            whole = (
                [
                    i
                    for i in inners
                    if lo <= base + i * inner_rows
                    and base + (i + 1) * inner_rows <= hi
                    and index[i][0] != MISSING
                    and (path, shard, i) not in self._chunks
                ]
                if direct is not None
                else []
            )
            fetched = self._fetch_span(key, index, whole)
            for inner in inners:
                r0 = base + inner * inner_rows
                a, b = max(lo, r0), min(hi, r0 + inner_rows)
                raw = fetched.get(inner)
                target = out[a - start : b - start]
                if raw is not None:
                    if plan is None or not self._plan_chunk(raw, target, direct, key, inner, plan):
                        self._decode_into(raw, target, direct, key, inner)
                    continue
                self._read_part(key, shard, inner, index, meta, path, r0, a, target, plan)

    def _recipe(
        self, path: str, meta: Any, start: int, stop: int, row_bytes: int
    ) -> _Recipe | None:
        """How to read rows ``[start, stop)`` of sharded ``path`` as zstd frames alone.

        A tuple of fetches ``(key, offset, nbytes, parts)``, each part ``(a, b, checked,
        d0, d1)`` a frame at bytes ``a:b`` of the fetched range (``checked``: a whole inner
        chunk ending with its crc32c, verified at every read) decoding to bytes ``d0:d1``
        of the rows. ``None`` when some rows cannot be read so: a missing chunk, another
        codec, or part of an item-framed chunk whose table is not known yet (the first
        read verifies the chunk and remembers its table, in :meth:`_read_part`);
        ``_NEVER`` when they never can be (another codec, a chunk that is not
        item-framed).
        """
        _, _, inner_rows, _, n_inner, _, direct, trailer = self._geometry(path, meta)
        if direct not in _ZSTD_KINDS:
            return _NEVER
        checked = direct != "zstd"
        fetches: list[tuple[str, int, int, tuple[tuple[int, int, bool, int, int], ...]]] = []
        for shard, key, base, lo, hi, inners in self._shard_spans(path, meta, start, stop):
            index = self._shard_index(key, n_inner, trailer)
            whole: list[tuple[int, int, int, int]] = []
            for inner in inners:
                r0 = base + inner * inner_rows
                a, b = max(lo, r0), min(hi, r0 + inner_rows)
                offset, nbytes = index[inner]
                if offset == MISSING:
                    return None
                d0, d1 = (a - start) * row_bytes, (b - start) * row_bytes
                if a == r0 and b == r0 + inner_rows:
                    whole.append((offset, nbytes, d0, d1))
                    continue
                found = self._frames.get((path, shard, inner), _UNSEEN)
                if found is None:
                    return _NEVER  # rows of a chunk decoded whole, through the cache
                hit = found[2].get((a - r0) * row_bytes) if found is not _UNSEEN else None
                if hit is None or hit[2] != (b - r0) * row_bytes:
                    return None
                n = hit[1] - hit[0]
                fetches.append((key, offset + hit[0], n, ((0, n, False, d0, d1),)))
            # Whole chunks lying together are fetched in one range, as _prefetch does.
            for first, end, run in _coalesce([(o, n, (d0, d1)) for o, n, d0, d1 in whole]):
                parts = tuple((o - first, o - first + n, checked, d0, d1) for o, n, (d0, d1) in run)
                fetches.append((key, first, end - first, parts))
        return tuple(fetches)

    def _keep_recipe(self, rows: tuple[str, int, int], recipe: _Recipe) -> None:
        """Remember ``recipe`` for ``rows`` within the chunk cache's budget."""
        parts = 1 if recipe is _NEVER else sum(len(fetch[3]) for fetch in recipe) + 1
        limit = self.cache_bytes // _ENTRY_BYTES
        if parts > limit or rows in self._recipes:
            return
        self._recipes[rows] = recipe
        self._recipe_parts += parts
        while self._recipe_parts > limit:
            _, old = self._recipes.popitem(last=False)
            self._recipe_parts -= 1 if old is _NEVER else sum(len(f[3]) for f in old) + 1

    def _run_recipe(self, recipe: _Recipe, out: memoryview, plan: _Plan) -> None:
        """Fetch a :meth:`_recipe`'s ranges and add its frames, decoding into ``out``, to
        ``plan`` (checksums of whole chunks verified now)."""
        for key, at, n, parts in recipe:
            data = memoryview(self._get_range(key, at, n))
            if len(data) != n:
                raise CorruptStoreError(
                    self.path, f"{key!r}: {len(data)} bytes at {at}, its index says {n}"
                )
            for a, b, checked, d0, d1 in parts:
                frame = data[a:b]
                target = out[d0:d1]
                try:
                    if checked:
                        frame = strip_crc32c(frame, "chunk")
                    if is_item_framed(frame):
                        decode_into("zstd", frame, target)
                        continue
                except ChunkDecodeError as exc:
                    raise CorruptStoreError(self.path, f"{key!r}: {exc}") from exc
                plan.add(frame, target, key)

    def _read_part(
        self,
        key: str,
        shard: int,
        inner: int,
        index: list[tuple[int, int]],
        meta: Any,
        path: str,
        r0: int,
        first: int,
        target: np.ndarray,
        plan: _Plan | None = None,
    ) -> None:
        """Rows ``first:first + len(target)`` of inner chunk ``inner`` (whose first row is
        ``r0``) into ``target``.

        An item-framed chunk decodes only the frames of those rows, straight into
        ``target``; any other goes through the decoded-chunk cache, decoded whole. Once an
        item-framed chunk has been read (its checksum verified, its table remembered in
        ``_frames``), rows that are one of its frames are fetched alone: into ``plan``
        when there is one, else decoded now.
        """
        cache_key = (path, shard, inner)
        found = self._frames.get(cache_key)
        if found is not None and len(target) and target.flags.c_contiguous:
            row_bytes = target.nbytes // len(target)
            hit = found[2].get((first - r0) * row_bytes)
            if hit is not None and hit[2] == (first - r0 + len(target)) * row_bytes:
                self._frames.move_to_end(cache_key)
                frame = self._get_range(found[0], found[1] + hit[0], hit[1] - hit[0])
                if len(frame) != hit[1] - hit[0]:
                    raise CorruptStoreError(
                        self.path,
                        f"{key!r} inner chunk {inner}: {len(frame)} bytes of a "
                        f"{hit[1] - hit[0]}-byte frame",
                    )
                if plan is not None:
                    plan.add(frame, target.data.cast("B"), key)
                    return
                # One frame alone: python-zstandard decodes a frame of tens of KiB (a grid
                # of an item) and copies it into place faster than a call into libzstd
                # through ctypes decodes it there (13.5 against 17.4 us for 15 KB).
                try:
                    decode_zstd_into(frame, target.data.cast("B"))
                except ChunkDecodeError as exc:
                    raise CorruptStoreError(self.path, f"{key!r}: {exc}") from exc
                return
        block = self._chunks.get(cache_key)
        if block is None:
            data = None
            offset, nbytes = index[inner]
            _, inner_shape, *_, direct, _ = self._geometry(path, meta)
            if (
                direct is not None
                and offset != MISSING
                and len(target)
                and target.flags.c_contiguous
            ):
                data = self._get_range(key, offset, nbytes)
                begin = (first - r0) * (target.nbytes // len(target))
                chunk_bytes = math.prod(inner_shape) * meta.dtype.itemsize
                copied = False
                try:
                    framed = open_item_frames(direct, data, chunk_bytes)
                    if framed is None:
                        self._remember_frames(cache_key, None)
                        # Stored as it is (small rows), and no cache to keep it in: the
                        # rows copied from the stored bytes, nothing decoded.
                        copied = chunk_bytes > self.cache_bytes and copy_stored_range(
                            direct, data, target.data.cast("B"), begin, chunk_bytes
                        )
                    else:
                        body, raw, stored = framed
                        self._keep_frames(cache_key, key, offset, raw, stored)
                        hit = frame_at(raw, stored, begin)
                        if plan is not None and hit is not None and hit[2] == begin + target.nbytes:
                            # The rows are one frame: decoded with the batch's others.
                            own = memoryview(body)[hit[0] : hit[1]]
                            plan.add(own, target.data.cast("B"), key)
                        else:
                            decode_frames_range(body, (raw, stored), target.data.cast("B"), begin)
                except ChunkDecodeError as exc:
                    raise CorruptStoreError(
                        self.path, f"{key!r} inner chunk {inner}: {exc}"
                    ) from exc
                if framed is not None or copied:
                    return
            block = self._inner_chunk(key, shard, inner, index, meta, path, data)
        else:
            self._chunks.move_to_end(cache_key)
        target[...] = block[first - r0 : first - r0 + len(target)]

    def _keep_frames(
        self,
        cache_key: tuple[str, int, int],
        key: str,
        offset: int,
        raw: FrameBounds,
        stored: FrameBounds,
    ) -> None:
        """Remember the frame table of a chunk just read and verified (see ``_frames``):
        ``{first byte: (stored start, stored stop, last byte)}`` per frame.

        A table longer than the cache's budget is not kept, and no entry of it is built:
        a hostile chunk can list a million frames in a few megabytes, which as Python
        objects would be hundreds.
        """
        if len(raw) - 1 > self.cache_bytes // _ENTRY_BYTES or cache_key in self._frames:
            return
        starts = raw.tolist() if isinstance(raw, np.ndarray) else raw
        stops = stored.tolist() if isinstance(stored, np.ndarray) else stored
        table = {
            starts[k]: (stops[k], stops[k + 1], starts[k + 1])
            for k in range(len(starts) - 1)
            if starts[k + 1] > starts[k]
        }
        self._remember_frames(cache_key, (key, offset, table))

    def _remember_frames(self, cache_key: tuple[str, int, int], entry: _FrameTable | None) -> None:
        """Keep ``entry`` (``None``: the chunk is not item-framed) in ``_frames``.

        Kept within the chunk cache's budget (an entry per frame of about
        :data:`_ENTRY_BYTES`): with ``cache_bytes=0`` every read decodes from the
        file, verifying the chunk's checksum each time.
        """
        limit = self.cache_bytes // _ENTRY_BYTES
        count = len(entry[2]) if entry is not None else 1
        if count > limit or cache_key in self._frames:
            return
        self._frames[cache_key] = entry
        self._frame_count += count
        while self._frame_count > limit:
            _, old = self._frames.popitem(last=False)
            self._frame_count -= len(old[2]) if old is not None else 1

    def _read_spans(
        self, path: str, meta: Any, spans: Sequence[tuple[int, int]], out: np.ndarray
    ) -> None:
        """Rows ``[start, stop)`` of each span, one after the other, into ``out``.

        What :meth:`read_items` does per array: the zstd frames that decode straight into
        ``out`` (whole inner chunks, and items' frames of item-framed chunks already
        verified) are gathered over every span and decoded in one call
        (:func:`decode_frames`). The reads are planned under the reader's lock; the
        decoding, and the rebuilding of triangle-stored rows, happen after it is released
        (they touch only ``out`` and bytes already read), so that threads sharing a
        reader decode at the same time and share what it has learned.
        """
        with self._lock:
            self._ensure()
            plan = _Plan()
            self._plan_spans(path, meta, spans, out, plan)
        self._decode_plan(plan)

    def _plan_spans(
        self, path: str, meta: Any, spans: Sequence[tuple[int, int]], out: np.ndarray, plan: _Plan
    ) -> None:
        """Add to ``plan`` what :meth:`_read_spans` decodes (rows that need no zstd call
        of their own, such as cached ones, are copied now). Callers hold the lock."""
        if path in self._virtual:
            self._plan_triangle_spans(path, spans, out, plan)
            return
        shape = meta.shape
        if self.cache_bytes and out.shape[1:] == tuple(shape[1:]):
            small = self._small_array(path, meta)
            if small is not None and _gather_rows(small, spans, out):
                return
        recipes = self._recipes
        # Read plans are kept for sharded arrays decoded into a plain buffer (and not
        # at all without a cache).
        whole = (
            out.data.cast("B")
            if self.cache_bytes and _is_sharded(meta) and out.flags.c_contiguous and out.size
            else None
        )
        row_bytes = out.nbytes // len(out) if len(out) else 0
        # Rows of a chunk decoded whole and still in the cache (small rows shared by
        # many items) are copied from it here: through _read_into, each item's rows of
        # each array went through five calls to the same lookup.
        cached = (
            self._geometry(path, meta)
            if self._chunks
            and _is_sharded(meta)
            and out.shape[1:] == tuple(shape[1:])
            and any(start < stop for start, stop in spans)
            else None
        )
        at = 0
        for start, stop in spans:
            rows = (path, start, stop)
            recipe = recipes.get(rows) if whole is not None else _NEVER
            if recipe is None and 0 <= start < stop <= shape[0]:
                recipe = self._recipe(path, meta, start, stop, row_bytes)
                if recipe is not None:
                    self._keep_recipe(rows, recipe)
            elif recipe is not None and recipe is not _NEVER:
                recipes.move_to_end(rows)
            if recipe is None or recipe is _NEVER:
                target = out[at : at + stop - start]
                if not (
                    recipe is _NEVER
                    and cached is not None
                    and 0 <= start < stop <= shape[0]
                    and self._copy_cached(path, cached, start, stop, target)
                ):
                    self._read_into(path, meta, start, stop, target, plan)
            else:
                assert whole is not None
                nbytes = (stop - start) * row_bytes
                self._source.budget.check_rows(path, start, stop, nbytes)
                self._run_recipe(recipe, whole[at * row_bytes : at * row_bytes + nbytes], plan)
            at += stop - start

    def _whole_array(self, path: str) -> np.ndarray:
        """Unsharded array ``path``, read whole once and kept. Callers hold the lock."""
        whole = self._whole.get(path)
        if whole is None:
            whole = self._whole[path] = self._hier.read_array(path)
        return whole

    def _small_array(self, path: str, meta: Any) -> np.ndarray | None:
        """Sharded array ``path`` decoded whole, when it is small enough to keep whole
        (memoised); ``None`` otherwise.

        Arrays of small rows (a face's area, an edge's type: a few bytes per row) are
        most of an item's arrays but few of its bytes, and a batch's items lie all over
        them: copied item by item from their inner chunks, they cost a batch of 32 items
        hundreds of lookups and numpy calls, more than its bytes. Kept whole, each is one
        gather per batch. An array is kept when it decodes to at most
        :data:`SMALL_ARRAY_BYTES` and the arrays kept stay within
        ``cache_bytes // SMALL_ARRAYS_SHARE``, and the dataset is not on an object store;
        it is decoded through the hierarchy (every chunk's checksum verified), once.
        Callers hold the lock.
        """
        if not _is_sharded(meta):
            return self._whole_array(path)
        found = self._small.get(path, _UNSEEN)
        if found is not _UNSEEN:
            return found  # type: ignore[no-any-return]
        nbytes = math.prod(meta.shape) * meta.dtype.itemsize
        small: np.ndarray | None = None
        # Not on an object store: there a batch fetches what it needs in a few requests,
        # and a whole array would cost a request per shard.
        if (
            not self._source.batches_reads
            and not meta.is_string
            and nbytes <= SMALL_ARRAY_BYTES
            and self._small_bytes + nbytes <= self.cache_bytes // SMALL_ARRAYS_SHARE
        ):
            try:
                small = self._hier.read_stored(path)
            except CorruptStoreError:
                # A damaged chunk: read chunk by chunk instead, so that the items it does
                # not hold still read and those it holds report it.
                small = None
            if small is not None and (
                small.shape != tuple(meta.shape) or small.dtype != meta.dtype
            ):
                small = None
            if small is not None:
                self._small_bytes += nbytes
                self._cached += nbytes
                self._trim_chunks(keep=0)
        self._small[path] = small
        return small

    def _copy_cached(
        self, path: str, geometry: tuple[Any, ...], start: int, stop: int, out: np.ndarray
    ) -> bool:
        """Copy rows ``[start, stop)`` of sharded ``path`` into ``out`` from the decoded
        inner chunk that holds them all, if it is in the cache; ``False`` if it is not
        (nothing copied). ``geometry`` is :meth:`_geometry`'s. Callers hold the lock."""
        one = _one_chunk(geometry[2], geometry[3], start, stop)
        if one is None:
            return False
        shard, inner, r0 = one
        cache_key = (path, shard, inner)
        block = self._chunks.get(cache_key)
        if block is None:
            return False
        self._chunks.move_to_end(cache_key)
        self._source.budget.check_rows(path, start, stop, out.nbytes)
        out[...] = block[start - r0 : stop - r0]
        return True

    def _plan_chunk(
        self, raw: memoryview, target: np.ndarray, codec: str, key: str, inner: int, plan: _Plan
    ) -> bool:
        """Add a whole inner chunk of one zstd frame to ``plan``, its checksum verified now;
        ``False`` (nothing added) for any other chunk, which the caller decodes itself."""
        if codec not in _ZSTD_KINDS or not target.flags.c_contiguous:
            return False
        try:
            frame = strip_crc32c(raw, "chunk") if codec != "zstd" else raw
        except ChunkDecodeError as exc:
            raise CorruptStoreError(self.path, f"{key!r} inner chunk {inner}: {exc}") from exc
        if is_item_framed(frame):
            return False
        plan.add(frame, target.data.cast("B"), key)
        return True

    def _decode_plan(self, plan: _Plan) -> None:
        """Decode every frame of ``plan`` into its place (see :func:`decode_frames`), then
        run its steps after decoding."""
        if plan.frames:
            try:
                decode_frames(plan.frames, plan.targets)
            except FrameDecodeError as exc:
                raise CorruptStoreError(self.path, f"{plan.keys[exc.position]!r}: {exc}") from exc
        for step in plan.after:
            step()

    def _plan_triangle_spans(
        self, path: str, spans: Sequence[tuple[int, int]], out: np.ndarray, plan: _Plan
    ) -> None:
        """:meth:`_plan_spans` of a triangle-stored array: every item's triangle read in
        one go into the thread's scratch memory, then (a step after decoding) each expanded
        to its full rows."""
        group, name = self._virtual[path]
        stored = f"{group}/{name}"
        meta = self._resolve(group, name)[0]
        pieces: list[tuple[int, int, int, int, int, int]] = []
        triangles: list[tuple[int, int]] = []
        at = rows = 0
        for start, stop in spans:
            for n, lo, hi, t0, t1 in self._triangle_items(path, start, stop):
                a, b = max(start, lo), min(stop, hi)
                pieces.append((n, rows, t1 - t0, at + a - start, a - lo, b - lo))
                triangles.append((t0, t1))
                rows += t1 - t0
            at += stop - start
        tri, buffer = self._take_scratch((rows, *meta.shape[1:]), meta.dtype)
        self._plan_spans(stored, meta, triangles, tri, plan)

        def expand() -> None:
            for n, first, count, place, a, b in pieces:
                expand_into(tri[first : first + count], n, out[place : place + b - a], a, b)
            with self._lock:
                self._give_scratch(buffer)

        plan.after.append(expand)

    def _fetch_span(
        self, key: str, index: list[tuple[int, int]], inners: list[int]
    ) -> dict[int, memoryview]:
        """Bytes of the listed inner chunks, by one ranged read when they lie together."""
        if not inners:
            return {}
        first = min(index[i][0] for i in inners)
        end = max(index[i][0] + index[i][1] for i in inners)
        wanted = sum(index[i][1] for i in inners)
        if end - first > wanted + _SPAN_SLACK:
            # Scattered (a shard written by another tool): one read per chunk.
            return {i: memoryview(self._get_range(key, index[i][0], index[i][1])) for i in inners}
        span = memoryview(self._get_range(key, first, end - first))
        return {i: span[index[i][0] - first : index[i][0] - first + index[i][1]] for i in inners}

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)`` of member ``key``: fetched ahead, or read now."""
        if self._prefetched:
            for at, data in self._prefetched.get(key, ()):
                if at <= start and start + length <= at + len(data):
                    return data[start - at : start - at + length]
        return self._source.get_range(key, start, length) or b""

    def _prefetch(self, reads: Iterable[tuple[str, Any, int, int]]) -> None:
        """Fetch, in batches, every byte that reading ``(path, meta, start, stop)`` needs.

        On an object store each read is a round trip: an item's two dozen arrays read one
        after another cost two dozen. The shard indexes not known yet come first, in one
        batch; then the chunk bytes not in the decoded-chunk cache, in another, adjacent
        chunks of a shard merged into one range (a zip source adds one batch before these
        for the member headers it has not read yet). The reads themselves then run as usual and
        find their bytes in :attr:`_prefetched`; anything this missed is read on demand, so
        it changes how many requests a read makes, never what it returns.
        """
        shards: list[tuple[str, str, int, int, int, range]] = []
        for path, meta, start, stop in self._stored_reads(reads):
            if stop > start and _is_sharded(meta):
                geometry = self._geometry(path, meta)
                n_inner, trailer = geometry[4], geometry[7]
                for shard, key, _, _, _, inners in self._shard_spans(path, meta, start, stop):
                    shards.append((key, path, shard, n_inner, trailer, inners))
        tails = {}
        for key, _, _, n_inner, trailer, _ in shards:
            size = self._source.size_of(key)
            n = 16 * n_inner + trailer
            if (key, n_inner) not in self._indexes and size is not None and size >= n:
                tails[key] = (key, size - n, n)
        self._fetch_ahead(list(tails.values()))
        wanted: dict[str, set[tuple[int, int]]] = {}
        for key, path, shard, n_inner, trailer, inners in shards:
            index = self._shard_index(key, n_inner, trailer)
            for inner in inners:
                offset, nbytes = index[inner]
                if offset != MISSING and (path, shard, inner) not in self._chunks:
                    wanted.setdefault(key, set()).add((offset, nbytes))
        requests = [
            (key, at, end - at)
            for key, chunks in wanted.items()
            for at, end, _ in _coalesce([(offset, nbytes, None) for offset, nbytes in chunks])
        ]
        self._fetch_ahead(requests)

    def _fetch_ahead(self, requests: list[tuple[str, int, int]]) -> None:
        if not requests:
            return
        for (key, start, _), data in zip(requests, self._source.get_ranges(requests), strict=True):
            if data is not None:
                self._prefetched.setdefault(key, []).append((start, data))

    @contextlib.contextmanager
    def _batched(self, reads: Callable[[], Iterable[tuple[str, Any, int, int]]]) -> Iterator[None]:
        """Within the block, reads on an object store find their bytes fetched ahead.

        The lock is held for the whole block there (the bytes fetched ahead are this
        reader's, for this read); elsewhere each read takes it for itself, and threads
        sharing the reader decode side by side (see :meth:`_read_spans`).
        """
        with self._lock:
            self._ensure()
            if self._source.batches_reads:
                try:
                    self._prefetch(reads())
                    yield
                finally:
                    self._prefetched.clear()
                return
            local = self._local
            self._reading += 1
            local.reading = getattr(local, "reading", 0) + 1
        try:
            yield
        finally:
            with self._lock:
                local.reading -= 1
                if local is self._local:  # not a reader reopened meanwhile (after a fork)
                    self._reading -= 1
                    if not self._reading:
                        self._idle.notify_all()

    def _decode_into(
        self, raw: memoryview, target: np.ndarray, codec: str, key: str, inner: int
    ) -> None:
        """Decode an inner chunk straight into ``target``, its checksum verified first."""
        try:
            decode_into(codec, raw, target.data.cast("B"))
        except ChunkDecodeError as exc:
            raise CorruptStoreError(self.path, f"{key!r} inner chunk {inner}: {exc}") from exc

    def _shard_index(self, key: str, n_inner: int, trailer: int = 0) -> list[tuple[int, int]]:
        """The ``(offset, nbytes)`` of each inner chunk of shard ``key``, checked.

        ``trailer`` is 4 when the index ends with its crc32c (what cadstore and
        zarr-python write), which is verified: a flipped bit in an index would otherwise
        send the reader to the wrong bytes.
        """
        cached = self._indexes.get((key, n_inner))
        if cached is not None:
            return cached
        size = self._source.locate(key)
        if size is None:
            # Shards are asked for by the rows they hold, and the merger stores every
            # shard holding rows: one missing was lost (reading it as fill values would
            # hand out zeros as data).
            raise CorruptStoreError(self.path, f"shard {key!r} is missing")
        n = 16 * n_inner + trailer
        if size < n:
            raise CorruptStoreError(self.path, f"shard {key!r} is shorter than its index")
        tail = self._get_range(key, size - n, n)
        try:
            table = strip_crc32c(tail, "shard index") if trailer else tail
            # Offsets are checked against the body: the shard less its index.
            index = read_index(table, n_inner, size - trailer)
        except ChunkDecodeError as exc:
            raise CorruptStoreError(self.path, f"shard {key!r}: {exc}") from exc
        self._indexes[(key, n_inner)] = index
        return index

    def _inner_chunk(
        self,
        key: str,
        shard: int,
        inner: int,
        index: list[tuple[int, int]],
        meta: Any,
        path: str,
        data: bytes | memoryview | None = None,
    ) -> np.ndarray:
        """Inner chunk ``inner`` of shard ``key``, decoded whole, through the cache
        (``data``: its stored bytes, when already read)."""
        cache_key = (path, shard, inner)
        block = self._chunks.get(cache_key)
        if block is not None:
            self._chunks.move_to_end(cache_key)
            return block
        config, inner_shape, *_, direct, _ = self._geometry(path, meta)
        # Decoded next to the cached chunks: within what the file may decode to.
        need = self._cached + math.prod(inner_shape) * meta.dtype.itemsize
        budget = self._source.budget
        if not budget.fits(need):
            budget.check(f"{key!r} inner chunk {inner}", need)
        offset, nbytes = index[inner]
        if offset == MISSING:
            # Asked for by the rows it holds: the merger stores every such inner chunk.
            raise CorruptStoreError(self.path, f"{key!r} inner chunk {inner} is missing")
        else:
            if data is None:
                data = self._get_range(key, offset, nbytes)
            try:
                block = decode_inner(
                    data,
                    config["codecs"],
                    meta.dtype,
                    inner_shape,
                    self.limits.max_chunk_bytes,
                    direct=direct,  # worked out once (_geometry), not for every chunk
                )
            except ChunkDecodeError as exc:
                raise CorruptStoreError(self.path, f"{key!r} inner chunk {inner}: {exc}") from exc
        self._chunks[cache_key] = block
        self._cached += block.nbytes
        self._trim_chunks(keep=1)
        return block

    def _trim_chunks(self, keep: int) -> None:
        """Drop the least recently used decoded chunks until the cache is within
        ``cache_bytes`` (the ``keep`` most recent stay regardless). Callers hold the lock."""
        while self._cached > self.cache_bytes and len(self._chunks) > keep:
            _, old = self._chunks.popitem(last=False)
            self._cached -= old.nbytes

    def _item_plan(
        self, group: str, selected: tuple[str, ...] | None
    ) -> list[tuple[str, Any, bool, str]]:
        """``(array, meta, per_item, path)`` per array an item read returns (memoised)."""
        key = (group, selected)
        plan = self._plans.get(key)
        if plan is None:
            names = (
                selected
                if selected is not None
                else [a for a in self.arrays(group) if a not in (OFFSETS, file_id_code_name(group))]
            )
            plan = [(name, *self._resolve(group, name), f"{group}/{name}") for name in names]
            self._plans[key] = plan
        return plan

    def read_item(
        self,
        code: int,
        groups: Iterable[str] | None = None,
        arrays: Mapping[str, Iterable[str]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Read every array of item ``code``: ``{group: {array: rows or value}}``.

        Parameters
        ----------
        code
            The item code.
        groups
            Groups to read (default: all).
        arrays
            ``{group: [array, ...]}`` to read only some arrays of some groups.

        The provenance and offsets arrays are left out; per-item arrays give the item's
        value.
        """
        code = self._check_code(code)
        wanted = list(groups) if groups is not None else self.groups

        def reads() -> Iterator[tuple[str, Any, int, int]]:
            for group in wanted:
                offsets = self.offsets(group)
                start, stop = int(offsets[code]), int(offsets[code + 1])
                for _, meta, per_item, path in self._item_plan(group, _selected(arrays, group)):
                    yield (path, meta, code, code + 1) if per_item else (path, meta, start, stop)

        out: dict[str, dict[str, Any]] = {}
        with self._batched(reads):
            for group in wanted:
                offsets = self.offsets(group)
                start, stop = int(offsets[code]), int(offsets[code + 1])
                values: dict[str, Any] = {}
                with self._lock:  # once for the group's arrays, not for each
                    self._ensure()
                    plan = self._item_plan(group, _selected(arrays, group))
                    for array, meta, per_item, path in plan:
                        if per_item:
                            row = np.empty((1,), dtype=_numpy_dtype(meta))
                            self._read_into(path, meta, code, code + 1, row)
                            values[array] = row[0]
                        else:
                            shape = (stop - start, *meta.shape[1:])
                            rows = np.empty(shape, dtype=_numpy_dtype(meta))
                            # An array of small rows: its chunk is most often cached,
                            # copied from without the steps of a read from the file.
                            cached = self._geometries.get(path)
                            if not (
                                cached is not None
                                and start < stop <= meta.shape[0]
                                and self._copy_cached(path, cached, start, stop, rows)
                            ):
                                self._read_into(path, meta, start, stop, rows)
                            values[array] = rows
                out[group] = values
        return out

    def read_items(
        self,
        codes: Sequence[int],
        groups: Iterable[str] | None = None,
        arrays: Mapping[str, Iterable[str]] | None = None,
        allocate: Allocator | None = None,
    ) -> ItemBatch:
        """Read several items into one buffer per array.

        Each array of the batch is allocated once, holding the items' rows one after the
        other (as a collate function concatenates them), and every item's rows are decoded
        straight into their place: no per-item arrays, no second copy.

        Parameters
        ----------
        codes
            Item codes, in batch order (repeats allowed).
        groups, arrays
            As for :meth:`read_item`.
        allocate
            ``allocate(group, array, shape, dtype) -> ndarray`` makes each batch buffer
            (``numpy.empty`` by default); a PyTorch worker passes one that allocates in
            shared memory, so the batch needs no copy on its way to the main process. One
            with a ``reserve(specs)`` method is first given ``(group, array, shape,
            dtype)`` of every buffer of the batch, in the order it is then asked for them,
            so that it can place them all in one block.

        Returns
        -------
        ItemBatch
            A list of items (``{group: {array: rows or value}}``, rows being views of the
            batch buffers) with ``buffers`` (``{(group, array): ndarray}``) and ``counts``
            (``{group: rows of each item}``).
        """
        codes = [self._check_code(c) for c in codes]
        make = allocate or _allocate
        batch = ItemBatch({} for _ in codes)
        index = np.asarray(codes, dtype=np.int64)
        wanted = list(groups) if groups is not None else self.groups

        def reads() -> Iterator[tuple[str, Any, int, int]]:
            for group in wanted:
                offsets = self.offsets(group)
                for _, meta, per_item, path in self._item_plan(group, _selected(arrays, group)):
                    for code in codes:
                        if per_item:
                            yield path, meta, code, code + 1
                        else:
                            yield path, meta, int(offsets[code]), int(offsets[code + 1])

        layouts = {
            group: self._batch_layout(group, index, _selected(arrays, group)) for group in wanted
        }
        reserve = getattr(make, "reserve", None)
        if reserve is not None:
            reserve(
                [
                    (group, array, shape, dtype)
                    for group, (_, _, entries) in layouts.items()
                    for array, _, _, _, shape, dtype in entries
                ]
            )
        with self._batched(reads):
            for group, layout in layouts.items():
                self._read_group_batch(batch, group, index, layout, make)
        return batch

    def _batch_layout(
        self, group: str, index: np.ndarray, selected: tuple[str, ...] | None
    ) -> _BatchLayout:
        """Where each item of a batch (``index``: its codes) starts and stops in ``group``,
        and ``(array, meta, per_item, path, shape, dtype)`` of each batch buffer."""
        offsets = self.offsets(group)
        starts, stops = offsets[index], offsets[index + 1]
        total = int((stops - starts).sum())
        entries = []
        for array, meta, per_item, path in self._item_plan(group, selected):
            shape = (len(index),) if per_item else (total, *meta.shape[1:])
            entries.append((array, meta, per_item, path, shape, _numpy_dtype(meta)))
        return starts, stops, entries

    def _read_group_batch(
        self, batch: ItemBatch, group: str, index: np.ndarray, layout: _BatchLayout, make: Allocator
    ) -> None:
        """Decode one group of :meth:`read_items` into its batch buffers (``index``: the
        items' codes; ``layout``: the group's :meth:`_batch_layout`)."""
        starts, stops, entries = layout
        batch.counts[group] = stops - starts
        spans = _Spans(starts, stops)
        one_each = _Spans(index, index + 1)
        for item in batch:
            item[group] = {}
        for array, meta, per_item, path, shape, dtype in entries:
            views: list[Any]
            buffer = make(group, array, shape, dtype)
            if per_item:
                self._read_spans(path, meta, one_each, buffer)
                views = [buffer[i] for i in range(len(index))]
            else:
                views = []
                at = 0
                for start, stop in spans:
                    views.append(buffer[at : at + stop - start])
                    at += stop - start
                self._read_spans(path, meta, spans, buffer)
            for item, view in zip(batch, views, strict=True):
                item[group][array] = view
            batch.buffers[(group, array)] = buffer
            batch.views[(group, array)] = views


class _Plan:
    """zstd frames gathered to be decoded in one call, each with the memory it fills and
    the member it came from (for errors)."""

    __slots__ = ("after", "frames", "keys", "targets")

    def __init__(self) -> None:
        self.frames: list[bytes | memoryview] = []
        self.targets: list[memoryview] = []
        self.keys: list[str] = []
        # What to do once the frames are decoded (rebuild triangle-stored rows), in order.
        self.after: list[Callable[[], None]] = []

    def add(self, frame: bytes | memoryview, target: memoryview, key: str) -> None:
        self.frames.append(frame)
        self.targets.append(target)
        self.keys.append(key)


#: How to read some rows as zstd frames alone (see ``DatasetReader._recipe``).
_Recipe = tuple[tuple[str, int, int, tuple[tuple[int, int, bool, int, int], ...]], ...]

#: A verified item-framed chunk: (shard key, chunk offset, {first byte: (stored start,
#: stored stop, last byte)}).
_FrameTable = tuple[str, int, dict[int, tuple[int, int, int]]]

#: The recipe of rows that are never read as frames alone (remembered, not retried);
#: told apart by identity, never run.
_NEVER: _Recipe = (("", -1, -1, ()),)

#: Not in ``DatasetReader._frames`` (a chunk not read yet).
_UNSEEN: Any = object()

#: The direct codec kinds whose chunks are one zstd frame (with or without a checksum).
_ZSTD_KINDS = frozenset({"zstd", "zstd+crc32c"})


def _coalesce(
    ranges: list[tuple[int, int, _T]],
) -> list[tuple[int, int, list[tuple[int, int, _T]]]]:
    """Byte ranges ``(offset, nbytes, tag)`` grouped into runs read as one range each.

    Ranges no more than :data:`_SPAN_SLACK` apart join a run (the gap is read and
    dropped: one request instead of two). Returns ``(start, stop, members)`` per run, in
    file order.
    """
    runs: list[tuple[int, int, list[tuple[int, int, _T]]]] = []
    for offset, nbytes, tag in sorted(ranges, key=lambda r: (r[0], r[1])):
        if runs and offset - runs[-1][1] <= _SPAN_SLACK:
            start, stop, members = runs[-1]
            members.append((offset, nbytes, tag))
            runs[-1] = (start, max(stop, offset + nbytes), members)
        else:
            runs.append((offset, offset + nbytes, [(offset, nbytes, tag)]))
    return runs


#: ``allocate(group, array, shape, dtype) -> ndarray`` for :meth:`DatasetReader.read_items`.
Allocator = Callable[[str, str, tuple[int, ...], np.dtype], np.ndarray]

#: A batch's rows in one group, as :meth:`DatasetReader._batch_layout` gives them: where
#: each item's rows start and stop (offsets), then ``(array, meta, per_item, path, shape,
#: dtype)`` of each batch buffer.
_BatchLayout = tuple[
    np.ndarray, np.ndarray, list[tuple[str, Any, bool, str, tuple[int, ...], np.dtype]]
]


_WarmSpec = tuple[tuple[str, ...] | None, dict[str, tuple[str, ...]] | None]


def _either(a: _WarmSpec, b: _WarmSpec) -> _WarmSpec:
    """The groups and arrays that reads of ``a`` or of ``b`` look up (``None``: all)."""
    (groups_a, arrays_a), (groups_b, arrays_b) = a, b
    groups = (
        None
        if groups_a is None or groups_b is None
        else tuple(dict.fromkeys([*groups_a, *groups_b]))
    )
    if arrays_a is None or arrays_b is None:
        return groups, None
    arrays: dict[str, tuple[str, ...]] = {}
    for group in dict.fromkeys([*arrays_a, *arrays_b]):
        # A group one side reads without naming its arrays is read whole.
        whole = any(
            group not in picked and (read is None or group in read)
            for read, picked in ((groups_a, arrays_a), (groups_b, arrays_b))
        )
        if not whole:
            names = [*arrays_a.get(group, ()), *arrays_b.get(group, ())]
            arrays[group] = tuple(dict.fromkeys(names))
    return groups, arrays


def _selected(arrays: Mapping[str, Iterable[str]] | None, group: str) -> tuple[str, ...] | None:
    """The arrays of ``group`` that ``arrays`` asks for (``None``: all of them)."""
    return tuple(arrays[group]) if arrays is not None and group in arrays else None


#: The largest sharded array a reader decodes whole for batch reads (see
#: ``DatasetReader._small_array``): the per-face and per-edge arrays of tens of thousands
#: of items, not their grids or face pairs.
SMALL_ARRAY_BYTES = 8 * 1024 * 1024
#: The most chunk bytes :meth:`DatasetReader.warm` reads to learn frame tables: enough
#: for a dataset of a few thousand items, read from the page cache in a fraction of a
#: second; a larger dataset's first fork does not wait for gigabytes to be read, its
#: workers learn the rest as they go.
WARM_READ_BYTES = 256 * 1024 * 1024
#: The arrays kept whole stay within ``cache_bytes // SMALL_ARRAYS_SHARE``, counted in the
#: cache's bytes (the decoded chunks make room for them).
SMALL_ARRAYS_SHARE = 2


def _gather_rows(source: np.ndarray, spans: Sequence[tuple[int, int]], out: np.ndarray) -> bool:
    """Rows ``[start, stop)`` of ``source`` for each span, one after the other, into
    ``out`` in one gather; ``False`` (nothing copied) when the spans do not fit ``source``
    or fill ``out`` exactly. :class:`_Spans` bring their gather index, worked out once."""
    if not out.flags.c_contiguous or out.shape[1:] != source.shape[1:] or out.dtype != source.dtype:
        return False
    if not spans:
        return not len(out)
    if isinstance(spans, _Spans):
        index = spans.gather_index
    else:
        bounds = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        index = _gather_index(bounds[:, 0], bounds[:, 1])
    if index is None:
        return False
    rows, lowest, highest = index
    if len(rows) != len(out) or lowest < 0 or highest > len(source):
        return False
    # Every row was just checked to lie in ``source``: "clip" gathers straight into
    # ``out`` ("raise" gathers into a copy first).
    np.take(source, rows, axis=0, out=out, mode="clip")
    return True


def _gather_index(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """The rows of spans ``starts[i]:stops[i]`` one after the other (for ``np.take``), the
    lowest start and the highest stop; ``None`` if a span ends before it starts."""
    if not len(starts):
        return np.zeros(0, dtype=np.int64), 0, 0
    lengths = stops - starts
    if (lengths < 0).any():
        return None
    first = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=first[1:])
    total = int(first[-1] + lengths[-1])
    rows = np.repeat(starts - first, lengths) + np.arange(total, dtype=np.int64)
    return rows, int(starts.min()), int(stops.max())


class _Spans(list[tuple[int, int]]):
    """A batch's row spans ``(start, stop)`` in one group, one per item, as
    :meth:`DatasetReader._read_spans` takes them.

    Every array of the group is read with the same spans; those kept whole are gathered
    with one index (:func:`_gather_rows`), worked out here once for all of them instead
    of once per array (a dozen numpy calls each, under the interpreter lock the decoding
    threads share).
    """

    def __init__(self, starts: np.ndarray, stops: np.ndarray) -> None:
        super().__init__(zip(starts.tolist(), stops.tolist(), strict=True))
        self._bounds = (np.asarray(starts, dtype=np.int64), np.asarray(stops, dtype=np.int64))

    @functools.cached_property
    def gather_index(self) -> tuple[np.ndarray, int, int] | None:
        """:func:`_gather_index` of these spans (worked out on first use)."""
        return _gather_index(*self._bounds)


def _one_chunk(
    inner_rows: int, shard_rows: int, start: int, stop: int
) -> tuple[int, int, int] | None:
    """``(shard, inner chunk, its first row)`` of the one inner chunk that holds rows
    ``[start, stop)`` (``start < stop``), or ``None`` when they span several."""
    shard = start // shard_rows
    base = shard * shard_rows
    inner = (start - base) // inner_rows
    if (stop - 1) // shard_rows != shard or (stop - 1 - base) // inner_rows != inner:
        return None
    return shard, inner, base + inner * inner_rows


def _is_sharded(meta: Any) -> bool:
    """Whether an array is stored with ``sharding_indexed`` (read chunk by chunk)."""
    return meta.codecs[0].get("name") == "sharding_indexed" if meta.codecs else False


def _numpy_dtype(meta: Any) -> np.dtype:
    """The numpy dtype of an array's values (``object`` for strings)."""
    return np.dtype(object) if meta.is_string else meta.dtype


def _allocate(group: str, array: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


class ItemBatch(list):  # type: ignore[type-arg]
    """Items read together by :meth:`DatasetReader.read_items`.

    A list of item dicts whose row arrays are views of one buffer per array.

    Attributes
    ----------
    buffers : dict
        ``{(group, array): ndarray}``: each array of the batch, items' rows concatenated in
        batch order (per-item arrays: one value per item).
    counts : dict
        ``{group: ndarray}``: the number of rows of each item in each group.
    views : dict
        ``{(group, array): [each item's value]}``, the very objects placed in the items, so
        that a consumer can check that the items still hold them before using
        ``buffers`` in their place.
    """

    def __init__(self, items: Iterable[dict[str, Any]] = ()) -> None:
        super().__init__(items)
        self.buffers: dict[tuple[str, str], np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.views: dict[tuple[str, str], list[Any]] = {}
