"""Stage 1 of a merge: scan the items, keeping what the plan needs and refusing bad items.

Scanning an item opens it (:func:`cadstore.io.sources.open_source`, which refuses
anything but a regular file or a directory before reading a byte), reads its array
metadata (shapes and dtypes), verifies the CRC of every member and parses its
``metadata.json`` (a JSON object nested at most
:data:`~cadstore.format.jsoncodec.MAX_NESTING` levels; absent, as in another writer's
item, only if no member of a name of its length belongs to nothing: see
:meth:`~cadstore.format.hierarchy.ReadHierarchy.check_absent`), so a damaged item is caught before
its rows are planned into the dataset and its metadata copied into the tables. An item
directory holding anything but regular files and directories (a named pipe, a socket, a
device) is refused too: the later stages would block reading it. An unreadable item is not an error
of the merge: it is skipped and listed with its reason. A store that refuses access or
cannot be reached is: it stops the merge (skipping every item of an unreachable bucket
would publish an empty or partial dataset), so the merge can simply be run again.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import math
import os
import stat
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cadstore.errors import (
    CadstoreError,
    CorruptStoreError,
    MergeError,
    os_problem,
    os_storage_error,
)
from cadstore.format.hierarchy import ReadHierarchy
from cadstore.format.jsoncodec import load_document
from cadstore.format.layout import dataset_marker
from cadstore.format.limits import DEFAULT_LIMITS, Limits
from cadstore.format.triangle import is_symmetric
from cadstore.io.location import Location
from cadstore.io.sources import DirectorySource, open_source
from cadstore.progress import progress

__all__ = [
    "ItemScan",
    "check_buckets",
    "decode_item",
    "item_name_of",
    "keep_scans",
    "reading_item",
    "scan_all",
    "scan_item",
]

#: The key of the schema in an item's ``metadata.json``.
_SCHEMA_KEY = "_storage_schema"

#: The item's metadata document.
_METADATA = "metadata.json"


def item_name_of(path: str | Location) -> str:
    """Return an item's name from its file: ``dir/<name>.zarr.data`` gives ``<name>``."""
    base = path.name if isinstance(path, Location) else str(path).rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".data", ".zarr"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


@dataclass
class ItemScan:
    """What the scan learned about one item.

    Attributes
    ----------
    location
        Where the item is.
    name
        Its name (:func:`item_name_of`).
    arrays
        ``{key: (shape, dtype string or "string")}`` of every array.
    metadata
        The item's schema only (``{"_storage_schema": ...}``): the tables read the rest.
    nbytes, decoded_bytes
        Stored bytes of its members, and decoded bytes of its arrays.
    scalars
        Values of the item's 0-d arrays, when the scan was asked for them (Dask merges
        take per-item values from the scan instead of decoding items on the driver).
    symmetric
        Keys of its ``N x N (x k)`` arrays that equal their transpose over the first two
        axes bit for bit: a merge stores a face-pair array as an upper triangle only when
        every item's is (:mod:`cadstore.format.triangle`).
    """

    location: Location
    name: str
    arrays: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    nbytes: int = 0
    decoded_bytes: int = 0
    scalars: dict[str, Any] = field(default_factory=dict)
    symmetric: set[str] = field(default_factory=set)

    @property
    def path(self) -> str:
        """The item's path or URL."""
        return self.location.path


def scan_item(
    location: Location, limits: Limits = DEFAULT_LIMITS, *, scalars: bool = False
) -> ItemScan | tuple[str, str]:
    """Scan one item; return an :class:`ItemScan`, or ``(path, reason)`` if it is unreadable.

    Parameters
    ----------
    location
        The item: a ``.data`` file or an item directory.
    limits
        Safety limits for reading.
    scalars
        Also decode the item's 0-d arrays into :attr:`ItemScan.scalars`.

    Raises
    ------
    StorageAccessError, StorageUnavailableError
        When the object store refuses or cannot be reached: the item is not at fault.
    StorageError
        When the file system refuses to open the item (:func:`~cadstore.io.sources.open_source`)
        or to read it (:func:`reading_item`): it is not skipped as corrupt.
    """
    with reading_item(location):
        return _scan_item(location, limits, scalars)


def _scan_item(location: Location, limits: Limits, scalars: bool) -> ItemScan | tuple[str, str]:
    try:
        source = open_source(location, limits, what="item")
    except CorruptStoreError as exc:
        return location.path, str(exc)
    try:
        if isinstance(source, DirectorySource):
            _check_entries(location.path)
            if _METADATA not in source:
                # cadstore publishes a directory item whole, metadata.json included: one
                # without it was torn by a writer that stopped (or written by another tool
                # as an incomplete store).
                return location.path, (
                    f"incomplete directory store: {_METADATA} is missing, so its writer "
                    "stopped before finishing it"
                )
        hier = ReadHierarchy(source, limits)
        if dataset_marker(hier.group_attributes.get("")) is not None:
            # Its arrays would be taken for one item's, each refused for a name the
            # dataset keeps (item_offsets, file_id_code_<group>): say what it is instead.
            return location.path, (
                "a merged dataset, not an item: merge the items it was made from, or add "
                "items to it by giving it as the output with append=True (--append)"
            )
        scan = ItemScan(location=location, name=item_name_of(location))
        for key in hier.arrays:
            meta = hier.meta(key)
            dtype = "string" if meta.is_string else meta.dtype.str
            shape = meta.read_shape
            scan.arrays[key] = (shape, dtype)
            scan.decoded_bytes += math.prod(shape) * meta.itemsize
            if scalars and not shape:
                scan.scalars[key] = hier.read_array(key)[()]
            if meta.item_shape is not None:
                # Stored as its upper triangle: symmetric by construction.
                scan.symmetric.add(key)
        # Arrays declaring more than the file may decode to (cadstore.format.limits) would
        # stop the merge when decoded: the item is listed and skipped now instead.
        source.budget.check(f"its {len(hier.arrays)} arrays", scan.decoded_bytes)
        for key, (shape, dtype) in scan.arrays.items():
            # Square arrays only (face pairs): decoded here, so that the plan knows which
            # arrays may be stored as a triangle before a row is written.
            square = dtype != "string" and len(shape) >= 2 and shape[0] == shape[1]
            if square and key not in scan.symmetric and is_symmetric(hier.read_array(key)):
                scan.symmetric.add(key)
        for key in source:
            # Reading every member checks its CRC: a damaged item is caught here, before
            # its rows are planned into the dataset.
            data = source.get(key)
            scan.nbytes += len(data or b"")
            if key == _METADATA and data:
                # Checked whole here, so that the tables, which copy it into the dataset,
                # only ever see documents every reader accepts.
                doc = load_document(
                    data,
                    path=location.path,
                    member=_METADATA,
                    max_bytes=limits.max_metadata_bytes,
                )
                # Only the schema is needed from an item's metadata (the tables read the
                # rest); keeping whole documents for every item would grow with the count.
                if isinstance(doc.get(_SCHEMA_KEY), dict):
                    scan.metadata = {_SCHEMA_KEY: doc[_SCHEMA_KEY]}
        if _METADATA not in source:
            # Another writer's item may have none; one whose name was damaged is corrupt.
            hier.check_absent(_METADATA, "document")
        return scan
    except CorruptStoreError as exc:
        return location.path, str(exc)
    except (ValueError, KeyError, RecursionError) as exc:
        # Malformed data the readers let through (invalid JSON, a bad value): the item's.
        return location.path, f"unreadable: {exc}"
    finally:
        source.close()


def _check_entries(root: str) -> None:
    """Refuse an item directory holding anything but regular files and directories.

    The directory source skips such entries, but the tables read ``metadata.json`` by its
    path: a named pipe there would block the merge forever, a device feed it forever.
    Symbolic links are judged by their targets; linked directories are not entered.

    Raises
    ------
    CorruptStoreError
        Naming the directory and the first such entry.
    """
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise CorruptStoreError(root, f"cannot list {directory}: {os_problem(exc)}") from exc
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
                continue
            try:
                mode = os.stat(entry.path).st_mode
            except OSError:
                continue  # a dangling link: the member is absent, as the source sees it
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                relative = os.path.relpath(entry.path, root)
                raise CorruptStoreError(
                    root, f"{relative!r} is not a regular file or directory; not reading it"
                )


def decode_item(
    location: Location,
    keys: Sequence[str],
    limits: Limits = DEFAULT_LIMITS,
    triangles: Collection[str] = (),
) -> dict[str, np.ndarray]:
    """Decode the arrays ``keys`` of one scanned item (raw arrays, no value-kind conversion).

    An array of ``triangles`` (those the dataset stores as upper triangles) that the item
    stores as its triangle too is given as its triangle rows, ``N (N + 1) / 2 (x k)``,
    not rebuilt into the full matrix only to be cut back.

    Raises
    ------
    MergeError
        If the item no longer reads: the scan verified every CRC, so data that fails now
        changed meanwhile or was crafted to pass them.
    StorageError
        When the file system refuses to open the item (:func:`~cadstore.io.sources.open_source`)
        or to read it (:func:`reading_item`), naming it.
    """
    with reading_item(location):
        try:
            source = open_source(location, limits, what="item")
            try:
                hier = ReadHierarchy(source, limits)
                return {
                    key: hier.read_stored(key)
                    if key in triangles and hier.meta(key).item_shape is not None
                    else hier.read_array(key)
                    for key in keys
                    if key in hier.arrays
                }
            finally:
                source.close()
        except CorruptStoreError as exc:
            raise MergeError(
                f"item {location} changed or is corrupt beyond its checksums: {exc}"
            ) from exc


@contextlib.contextmanager
def reading_item(location: Location) -> Iterator[None]:
    """Report an OSError raised reading the item at ``location`` as the
    :class:`~cadstore.errors.StorageError` of its kind naming the item
    (:func:`~cadstore.errors.os_storage_error`).

    A read the file system refuses after the item was opened (EIO on a shared disk, a
    member file of a directory item that may not be read) raises an OSError naming no
    file, or only a member: the merge stops naming the item instead, in one process as
    on a Dask worker (whose errors must travel back as cadstore errors). The item is not
    skipped as unreadable: the same file may read once the disk is back. cadstore's own
    errors pass unchanged.
    """
    try:
        yield
    except CadstoreError:
        raise
    except OSError as exc:
        raise os_storage_error(location.path, exc, "reading it") from exc


def check_buckets(locations: Sequence[Location]) -> None:
    """Raise a clear error, naming a location, if the bucket of a URL among them is missing.

    Checked before any item is read: otherwise every item of a misspelt bucket would be
    skipped as unreadable, one by one.
    """
    seen: set[str] = set()
    for location in locations:
        if location.remote:
            bucket = location.path.split("://", 1)[1].split("/", 1)[0]
            if bucket not in seen:
                seen.add(bucket)
                # On an object store makedirs() creates nothing; it checks the bucket.
                location.makedirs()


def scan_all(
    locations: Sequence[Location],
    limits: Limits,
    pool: cf.Executor | None,
    errors: list[dict[str, str]],
    show_progress: bool,
) -> list[ItemScan]:
    """Scan every item (in ``pool`` when given); keep the readable ones, in order.

    The unreadable ones are appended to ``errors`` as ``{"file", "error"}``.
    """
    results: Iterable[ItemScan | tuple[str, str]]
    if pool is None:
        results = (scan_item(location, limits) for location in locations)
    else:
        results = pool.map(scan_item, locations, [limits] * len(locations), chunksize=16)
    shown = progress(results, total=len(locations), desc="scan", unit="item", enabled=show_progress)
    return keep_scans(shown, errors)


def keep_scans(
    results: Iterable[ItemScan | tuple[str, str]], errors: list[dict[str, str]]
) -> list[ItemScan]:
    """Keep the readable scans in order and record the rest in ``errors``."""
    scans: list[ItemScan] = []
    schemas: dict[str, dict[str, Any]] = {}
    for res in results:
        if isinstance(res, ItemScan):
            schema = res.metadata.get(_SCHEMA_KEY)
            if schema is not None:
                # Items usually share one schema: keep a single copy.
                res.metadata[_SCHEMA_KEY] = schemas.setdefault(
                    json.dumps(schema, sort_keys=True), schema
                )
            scans.append(res)
        else:
            errors.append({"file": res[0], "error": res[1]})
    return scans
