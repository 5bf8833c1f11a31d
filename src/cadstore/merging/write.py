"""Stage 3 of a merge: stream the items' rows into shards and the metadata around them.

The items are decoded in code order (in a pool of workers when given, with the decoded
bytes in flight bounded) and their rows appended to one :class:`RowBuffer` per output
array; every time a buffer holds a whole shard, the shard is encoded (in the pool) and
added to the :class:`~cadstore.io.publish.Sink` by the one :class:`ShardWriter`, in a fixed
order, so the dataset is the same bytes whatever the number of workers. Memory holds one
shard per array and the items in flight, whatever the number of items. Per-item values,
provenance codes, offsets, item names, every ``zarr.json`` and ``metadata.json`` follow.

Every chunk of a new dataset ends with the standard ``crc32c`` codec (shards' inner chunks
and indexes too; see :mod:`cadstore.format.sharding`), which every reader verifies. An
append continues a dataset as it was written: :meth:`ShardWriter.continuing` takes over
the existing dataset's checksum setting and provenance layout, so that the arrays it
extends keep their codecs and chunk grids.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cadstore.errors import MergeError
from cadstore.format import jsoncodec
from cadstore.format.codecs import (
    append_crc32c,
    encode_vlen_utf8,
    long_distance_for,
    zstd_compress,
)
from cadstore.format.layout import (
    BOUNDARY_DIM,
    DATASET_FORMAT,
    ITEM_DIM,
    ITEM_NAMES,
    OFFSETS,
    file_id_code_name,
)
from cadstore.format.sharding import CRC32C, encode_shard, shard_layout, sharding_codec
from cadstore.format.triangle import UPPER_TRIANGLE, symmetric_upper_rows
from cadstore.io.publish import Sink
from cadstore.merging.options import (
    DEFAULT_INNER_BYTES,
    DEFAULT_LEVEL,
    DEFAULT_SHARD_BYTES,
    SMALL_ROWS_LEVEL,
    MergeOptions,
)
from cadstore.merging.plan import ArrayPlan, GroupPlan, MergePlan, small_rows
from cadstore.merging.scan import ItemScan, decode_item
from cadstore.progress import progress
from cadstore.schema import Schema

if TYPE_CHECKING:
    from cadstore.dataset.reader import DatasetReader
    from cadstore.format.limits import Limits
    from cadstore.io.location import Location

__all__ = [
    "CHECKSUMS",
    "RowBuffer",
    "ShardWriter",
    "array_doc",
    "array_levels",
    "inner_zstd_level",
    "group_summary",
    "inexact_items",
    "item_rows",
    "shard_key",
    "stream_items",
    "finish_dataset",
    "per_item_values",
    "stream_plan",
    "write_plain_array",
    "write_root",
    "write_structure",
]


def dump_json(doc: Any) -> bytes:
    """Compact UTF-8 JSON of a metadata document."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class RowBuffer:
    """Rows of one output array waiting to fill a shard, and where its items begin.

    A shard is cut from the front of the queued parts; only the rows of that one shard
    are ever copied together, so a huge item does not get concatenated whole. The rows at
    which items begin go with each shard (see :func:`~cadstore.format.sharding.encode_shard`,
    which frames inner chunks by item).
    """

    def __init__(self, plan: ArrayPlan) -> None:
        self.plan = plan
        self.parts: deque[np.ndarray] = deque()
        self.count = 0
        self.next_shard = 0
        self.starts: deque[int] = deque()

    def append(self, rows: np.ndarray, starts: Iterable[int] | None = None) -> None:
        """Queue one item's rows; or, with ``starts`` (array rows at which items begin),
        rows of several items."""
        if rows.shape[0]:
            at = self.next_shard * self.plan.shard_rows + self.count
            self.starts.extend([at] if starts is None else starts)
            self.parts.append(rows)
            self.count += rows.shape[0]

    def _take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        base = self.next_shard * self.plan.shard_rows
        first = self.parts[0]
        if first.shape[0] >= n:
            # Common for large items: a view, no copy.
            block = first[:n]
            if first.shape[0] > n:
                self.parts[0] = first[n:]
            else:
                self.parts.popleft()
        else:
            pieces = []
            need = n
            while need:
                part = self.parts[0]
                if part.shape[0] <= need:
                    pieces.append(self.parts.popleft())
                    need -= part.shape[0]
                else:
                    pieces.append(part[:need])
                    self.parts[0] = part[need:]
                    need = 0
            block = np.concatenate(pieces)
        self.count -= n
        starts = []
        while self.starts and self.starts[0] < base + n:
            starts.append(self.starts.popleft() - base)
        self.next_shard += 1
        return block, np.asarray(starts, dtype=np.int64)

    def take_full_shards(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(shard, rows, item starts)`` of every full shard queued."""
        size = self.plan.shard_rows
        while self.count >= size:
            index = self.next_shard
            yield index, *self._take(size)

    def take_rest(self) -> tuple[int, np.ndarray, np.ndarray] | None:
        """``(shard, rows, item starts)`` of the partial last shard, if any rows are left."""
        if not self.count:
            return None
        index = self.next_shard
        return index, *self._take(self.count)


#: Whether new datasets carry a ``crc32c`` checksum on every chunk. Always, for users: it
#: is how a flipped bit is caught on read. The benchmarks turn it off to measure its cost.
CHECKSUMS = True


def inner_zstd_level(codecs: Sequence[Mapping[str, Any]]) -> int | None:
    """The zstd level of a ``sharding_indexed`` array's inner chunks, as its codec list
    (``zarr.json`` ``codecs``) names it; ``None`` for chunks without zstd."""
    inner = (codecs[0].get("configuration") or {}).get("codecs") or ()
    return next(
        (
            int((c.get("configuration") or {}).get("level", DEFAULT_LEVEL))
            for c in inner
            if c.get("name") == "zstd"
        ),
        None,
    )


def array_levels(
    groups: Mapping[str, GroupPlan], options: MergeOptions
) -> dict[tuple[str, str], int | None]:
    """``{(group, array): zstd level}`` of the arrays not written at the dataset's level:
    the rows of face-pair groups, full or triangle (see
    :attr:`MergeOptions.face_pair_level`), and arrays of small rows, stored as they are
    (:data:`~cadstore.merging.options.SMALL_ROWS_LEVEL`, see
    :func:`~cadstore.merging.plan.small_rows`)."""
    if options.compression_level is None:
        return {}
    level = options.face_pairs_level
    levels: dict[tuple[str, str], int | None] = {}
    for group in groups.values():
        for plan in group.arrays.values():
            if group.holds_face_pairs and not plan.per_item and level != options.compression_level:
                levels[(group.name, plan.name)] = level
            elif small_rows(group, plan):
                levels[(group.name, plan.name)] = SMALL_ROWS_LEVEL
    return levels


def encode_shard_job(
    rows: np.ndarray,
    inner_rows: int,
    shard_rows: int,
    level: int | None,
    checksum: bool,
    starts: np.ndarray | None,
) -> bytes:
    return encode_shard(rows, inner_rows, shard_rows, level, checksum, starts)


class ShardWriter:
    """Encodes shards (in a pool when given) and adds them to the sink, in order.

    Only this writer adds members, from the calling thread, and whole shards at a time: no
    two workers ever touch the same chunk (partial-chunk writes from several writers lose
    data silently; see ``reliability-and-scale.md``).
    """

    def __init__(
        self,
        sink: Sink,
        pool: cf.Executor | None,
        options: MergeOptions,
        *,
        checksum: bool | None = None,
        code_layouts: Mapping[str, tuple[int, int]] | None = None,
        levels: Mapping[tuple[str, str], int | None] | None = None,
    ) -> None:
        self.sink = sink
        self.pool = pool
        #: The dataset's zstd level: of every array not in ``levels``.
        self.level = options.compression_level
        #: ``{(group, array): zstd level}`` of the arrays written at another level (the
        #: face-pair arrays and arrays of small rows, see :func:`array_levels`).
        self.levels = dict(levels or {})
        #: Whether chunks carry a crc32c checksum (:data:`CHECKSUMS` by default).
        self.checksum = CHECKSUMS if checksum is None else checksum
        #: ``{group: (inner_rows, shard_rows)}`` of existing provenance arrays (appends).
        self.code_layouts = dict(code_layouts or {})
        self.pending: deque[tuple[str, cf.Future[bytes] | bytes]] = deque()
        self.window = max(2, 2 * options.n_workers)
        self.stored = 0

    @classmethod
    def continuing(
        cls,
        sink: Sink,
        pool: cf.Executor | None,
        options: MergeOptions,
        reader: DatasetReader,
    ) -> ShardWriter:
        """A writer that continues the dataset ``reader`` reads, as it was written.

        Its chunks carry checksums only if the dataset's do (a dataset written before
        checksums stays without, or the shards copied from it would contradict their
        metadata), each group's provenance array keeps its chunk grid and each array its
        zstd level.
        """
        checksum = False
        layouts: dict[str, tuple[int, int]] = {}
        levels: dict[tuple[str, str], int | None] = {}
        for group in reader.groups:
            for array in reader.arrays(group):
                meta = reader.array_meta(group, array)
                if not meta.codecs or meta.codecs[0].get("name") != "sharding_indexed":
                    continue
                config = meta.codecs[0].get("configuration") or {}
                names = [c.get("name") for c in config.get("codecs") or ()]
                checksum = checksum or CRC32C["name"] in names
                if array == file_id_code_name(group):
                    layouts[group] = (int(config["chunk_shape"][0]), int(meta.chunks[0]))
                levels[(group, array)] = inner_zstd_level(meta.codecs)
        return cls(sink, pool, options, checksum=checksum, code_layouts=layouts, levels=levels)

    def level_of(self, plan: ArrayPlan) -> int | None:
        """The zstd level of ``plan``'s chunks (``None``: uncompressed)."""
        return self.levels.get((plan.group, plan.name), self.level)

    def shard(
        self, key: str, rows: np.ndarray, plan: ArrayPlan, starts: np.ndarray | None = None
    ) -> None:
        """Encode and add shard ``key`` of ``rows``; ``starts`` are the rows at which its
        items begin (item frames, see :func:`~cadstore.format.sharding.encode_shard`)."""
        if self.pool is None:
            self._write(
                key,
                encode_shard(
                    rows,
                    plan.inner_rows,
                    plan.shard_rows,
                    self.level_of(plan),
                    self.checksum,
                    starts,
                ),
            )
            return
        future = self.pool.submit(
            encode_shard_job,
            np.ascontiguousarray(rows),
            plan.inner_rows,
            plan.shard_rows,
            self.level_of(plan),
            self.checksum,
            starts,
        )
        self.pending.append((key, future))
        while len(self.pending) > self.window:
            self._drain_one()

    def _drain_one(self) -> None:
        key, job = self.pending.popleft()
        self._write(key, job if isinstance(job, bytes) else job.result())

    def _write(self, key: str, data: bytes) -> None:
        self.sink.add(key, data)
        self.stored += len(data)

    def put_encoded(self, key: str, data: bytes) -> None:
        """Write a shard encoded elsewhere (by a Dask worker), after those queued here."""
        self.flush()
        self._write(key, data)

    def add(self, key: str, data: bytes, *, deflate: bool = False) -> None:
        self.flush()
        self.sink.add(key, data, deflate=deflate)
        self.stored += len(data)

    def flush(self) -> None:
        while self.pending:
            self._drain_one()


def array_doc(
    shape: Sequence[int],
    dtype: np.dtype,
    dims: Sequence[str],
    chunk_shape: Sequence[int],
    codecs: list[dict[str, Any]],
    attributes: Mapping[str, Any],
) -> dict[str, Any]:
    fill: Any = False if dtype.kind == "b" else (0.0 if dtype.kind == "f" else 0)
    if dtype.kind == "c":
        fill = [0.0, 0.0]
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(shape),
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk_shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": codecs,
        "attributes": dict(attributes),
        "dimension_names": list(dims),
    }


def plain_codecs(dtype: np.dtype, level: int | None, checksum: bool = True) -> list[dict[str, Any]]:
    codecs: list[dict[str, Any]] = [
        {"name": "bytes", "configuration": {"endian": "little"}}
        if dtype.itemsize > 1
        else {"name": "bytes"}
    ]
    if level is not None:
        codecs.append({"name": "zstd", "configuration": {"level": level, "checksum": False}})
    if checksum:
        codecs.append(dict(CRC32C))
    return codecs


def write_plain_array(
    writer: ShardWriter,
    path: str,
    arr: np.ndarray,
    dims: Sequence[str],
    level: int | None,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a small array as one chunk (with the writer's checksum setting); return its
    metadata document."""
    attributes = attributes or {}
    checksum = writer.checksum
    if arr.dtype.kind in "OU":
        values = ["" if v is None else str(v) for v in arr.ravel().tolist()]
        payload = encode_vlen_utf8(values)
        codecs: list[dict[str, Any]] = [{"name": "vlen-utf8", "configuration": {}}]
        if level is not None:
            payload = zstd_compress(payload, level)
            codecs.append({"name": "zstd", "configuration": {"level": level, "checksum": False}})
        if checksum:
            codecs.append(dict(CRC32C))
        doc = array_doc(
            arr.shape, np.dtype("int8"), dims, [max(1, s) for s in arr.shape], codecs, attributes
        )
        doc["data_type"] = "string"
        doc["fill_value"] = ""
    else:
        arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False))
        payload = arr.tobytes()
        if level is not None:
            payload = zstd_compress(payload, level, long_distance=long_distance_for(arr.dtype))
        doc = array_doc(
            arr.shape,
            arr.dtype,
            dims,
            [max(1, s) for s in arr.shape],
            plain_codecs(arr.dtype, level, checksum),
            attributes,
        )
    if checksum:
        payload = append_crc32c(payload)
    if arr.size:
        key = "c" if arr.ndim == 0 else "c/" + "/".join("0" for _ in arr.shape)
        writer.add(f"{path}/{key}", payload)
    return doc


def stream_items(
    scans: Sequence[ItemScan],
    planned: Mapping[str, GroupPlan],
    groups: Mapping[str, GroupPlan],
    buffers: dict[tuple[str, str], RowBuffer],
    per_item: dict[tuple[str, str], list[Any]],
    writer: ShardWriter,
    options: MergeOptions,
    label: str,
) -> int:
    """Decode the items in code order and stream their rows into shards.

    ``planned`` holds the arrays the items bring (what to decode); ``groups`` every output
    group and array (items lacking one get fill rows). Full shards are written as they
    fill, the partial rest of every buffer at the end. Returns the raw bytes decoded.
    """
    needed = sorted(
        {k for g in planned.values() for p in g.arrays.values() for k in p.sources.values()}
    )
    triangles = frozenset(
        k
        for g in planned.values()
        for p in g.arrays.values()
        if p.triangle
        for k in p.sources.values()
    )
    raw_total = 0
    decoded = decode_all(scans, needed, writer.pool, options, triangles)
    shown = progress(decoded, total=len(scans), desc=label, unit="item", enabled=options.progress)
    for code, arrays in enumerate(shown):
        for group in groups.values():
            n_rows = group.rows.get(code, 0)
            for plan in group.arrays.values():
                key = plan.sources.get(code)
                arr = arrays.get(key) if key is not None else None
                if arr is not None and key is not None:
                    # The decoded size of the item's array, triangle or not.
                    shape, _ = scans[code].arrays[key]
                    raw_total += math.prod(shape) * arr.itemsize
                if plan.per_item:
                    if arr is not None and arr.dtype.kind in "iu" and plan.dtype.kind in "fc":
                        what = f"item {scans[code].path}: {key!r} ({group.name}/{plan.name})"
                        arr = exact_cast(arr, plan.dtype, what)
                    per_item[(group.name, plan.name)].append(
                        arr[()] if arr is not None else plan.fill_value
                    )
                    continue
                buf = buffers[(group.name, plan.name)]
                if arr is None or key is None:
                    rows = np.full((n_rows, *plan.trailing), plan.fill_value, dtype=plan.dtype)
                else:
                    rows = item_rows(arr, plan, n_rows, scans[code].path, key)
                buf.append(rows)
                for index, block, starts in buf.take_full_shards():
                    writer.shard(shard_key(group, plan, index), block, plan, starts)
    for (group_name, _), buf in buffers.items():
        rest = buf.take_rest()
        if rest is not None:
            index, block, starts = rest
            writer.shard(shard_key(groups[group_name], buf.plan, index), block, buf.plan, starts)
    return raw_total


def exact_cast(arr: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """``arr`` in ``dtype``, the type its dataset array takes to hold every item's values.

    Items of integers beside items of floats make a floating-point array (numpy's
    promotion), which holds integers exactly only up to ``2**53`` (float64; ``2**24``
    for float32): a larger one would come back as another number. A merge skips the items
    holding one before it writes (:func:`inexact_items`); here the check guards what is
    written (an item changed since, an append, values from a Dask merge's scans).

    Parameters
    ----------
    arr
        An item's values (or every item's, for a per-item array).
    dtype
        The dataset array's dtype.
    what
        The item and array, for the message.

    Returns
    -------
    numpy.ndarray
        ``arr`` as ``dtype`` (``arr`` itself when it has that dtype already).

    Raises
    ------
    MergeError
        Naming ``what`` and a value that ``dtype`` cannot hold exactly.
    """
    if arr.dtype == dtype:
        return arr
    out = arr.astype(dtype, copy=False)
    if arr.dtype.kind in "iu" and dtype.kind in "fc" and arr.size:
        limit = 2 ** (np.finfo(dtype).nmant + 1)
        for value in arr[(arr > limit) | (arr < -limit)].tolist():
            if int(dtype.type(value).real) != value:
                raise MergeError(
                    f"{what}: the integer {value} cannot be stored exactly as {dtype}, the "
                    "type of its dataset array (integers beside floating-point numbers, or "
                    "signed beside unsigned 64-bit integers, make floating point); store "
                    "the array with one dtype in every item"
                )
    return out


def _may_round(stored: str, dtype: np.dtype) -> bool:
    """Whether integers of the dtype ``stored`` can be beyond what ``dtype`` (floating
    point) holds exactly: int64 in float64, int32 in float32, not int16 in float32."""
    try:
        source = np.dtype(stored)
    except TypeError:
        return False
    if source.kind not in "iu" or dtype.kind not in "fc":
        return False
    value_bits = source.itemsize * 8 - (source.kind == "i")
    return value_bits > np.finfo(dtype).nmant + 1


def _inexact(arr: np.ndarray, dtype: np.dtype, what: str) -> str | None:
    """What :func:`exact_cast` would refuse in ``arr``, or ``None``."""
    try:
        exact_cast(arr, dtype, what)
    except MergeError as error:
        return str(error)
    return None


def _inexact_problems(
    location: Location, checks: Sequence[tuple[str, str, str]], limits: Limits
) -> list[str]:
    """Decode the arrays ``checks`` names (``(key, dtype, what)``) of one item and say
    which hold an integer ``dtype`` cannot hold exactly."""
    arrays = decode_item(location, [key for key, _, _ in checks], limits)
    found = (
        _inexact(arrays[key], np.dtype(dtype), what) for key, dtype, what in checks if key in arrays
    )
    return [problem for problem in found if problem is not None]


def inexact_items(
    plan: MergePlan, run_map: Callable[..., Iterable[list[str]]], options: MergeOptions
) -> dict[int, str]:
    """The items holding an integer that their dataset array's floating-point dtype
    cannot hold exactly, ``{code: what is wrong}``, found before any row is written.

    Items of integers beside items of floating-point numbers make a floating-point array
    (see :func:`exact_cast`). Whether one of an item's integers is beyond what it holds
    exactly is a property of that item's values, which the scan does not read: the
    arrays that can hold such integers (int64 in float64, int32 in float32) are decoded
    here, for those items only, so that such an item is skipped and listed like any
    other item that does not fit, instead of failing the merge midway.

    Parameters
    ----------
    plan
        The merge plan.
    run_map
        How the items are decoded, a ``map``: :func:`map` (this thread), a pool's
        ``map``, or :func:`~cadstore.merging.distributed.dask_map` (on a cluster's
        workers, so that the driver decodes no item).
    options
        The merge's options (its limits).

    Returns
    -------
    dict
        ``{code: message}`` in code order, the message naming each key, its dataset array
        and a value the array cannot hold exactly; empty when every item fits.
    """
    found: dict[int, list[str]] = {}
    checks: dict[int, list[tuple[str, str, str]]] = {}
    for group in plan.groups.values():
        for array in group.arrays.values():
            if array.dtype.kind not in "fc":
                continue
            for code, key in array.sources.items():
                scan = plan.scans[code]
                if not _may_round(scan.arrays.get(key, ((), "string"))[1], array.dtype):
                    continue
                what = f"{key!r} ({group.name}/{array.name})"
                if array.per_item and key in scan.scalars:
                    # A Dask merge's scan holds the value already: nothing to decode.
                    problem = _inexact(np.asarray(scan.scalars[key]), array.dtype, what)
                    if problem is not None:
                        found.setdefault(code, []).append(problem)
                    continue
                checks.setdefault(code, []).append((key, array.dtype.str, what))
    codes = sorted(checks)
    locations = [plan.scans[code].location for code in codes]
    arguments = (locations, [checks[code] for code in codes], [options.limits] * len(codes))
    results = run_map(_inexact_problems, *arguments) if codes else ()
    for code, problems in zip(codes, results, strict=True):
        if problems:
            found.setdefault(code, []).extend(problems)
    return {code: "; ".join(found[code]) for code in sorted(found)}


def item_rows(arr: np.ndarray, plan: ArrayPlan, n_rows: int, path: str, key: str) -> np.ndarray:
    """An item array as the rows of ``plan``: flattened, its upper triangle for a
    triangle-stored array, in the output dtype.

    Raises
    ------
    MergeError
        If a triangle-stored array is not symmetric: the scan found it symmetric, so the
        item changed since (storing its triangle would lose the other half); or if the
        output dtype cannot hold its values exactly (see :func:`exact_cast`).
    """
    if plan.triangle:
        # The item's triangle rows as it stores them (decode_item), or its full matrix.
        tri = arr if arr.ndim == 1 + len(plan.trailing) else symmetric_upper_rows(arr)
        if tri is None:
            raise MergeError(
                f"item {path} changed during the merge: its {key!r} was symmetric when "
                "scanned and is not now"
            )
        arr = tri
    what = f"item {path}: {key!r} ({plan.group}/{plan.name})"
    return exact_cast(arr.reshape((n_rows, *plan.trailing)), plan.dtype, what)


def triangle_attributes(group: GroupPlan, plan: ArrayPlan) -> dict[str, Any]:
    """The attributes declaring a triangle-stored array (see :mod:`cadstore.format.triangle`)."""
    pair = group.primary_dim.removesuffix("_upper")
    return {
        "cadstore_layout": UPPER_TRIANGLE,
        "source_group": group.source,
        "source_dims": [pair, *plan.dims[1:]],
        "pair_dims": [f"{pair}_i", f"{pair}_j"],
        "pair_row": "i * N - i * (i - 1) // 2 + (j - i) for i <= j; (j, i) for i > j",
    }


def shard_key(group: GroupPlan, plan: ArrayPlan, index: int) -> str:
    """The member name of shard ``index`` of an array (``faces/face_areas/c/3``)."""
    zeros = "".join("/0" for _ in plan.trailing)
    return f"{group.name}/{plan.name}/c/{index}{zeros}"


#: Decoded bytes the merge keeps in flight when decoding in parallel.
IN_FLIGHT_BYTES = 256 * 1024 * 1024


def decode_all(
    scans: Sequence[ItemScan],
    needed: Sequence[str],
    pool: cf.Executor | None,
    options: MergeOptions,
    triangles: frozenset[str] = frozenset(),
) -> Iterator[dict[str, np.ndarray]]:
    """Yield each item's decoded arrays in code order (``triangles``: see
    :func:`~cadstore.merging.scan.decode_item`).

    In parallel, items are submitted ahead while their decoded size (known from the
    scan) stays below :data:`IN_FLIGHT_BYTES`, and never more than a few per worker:
    memory is bounded by bytes, not by a count that a few huge items would defeat.
    """

    def wanted(scan: ItemScan) -> list[str]:
        return [k for k in needed if k in scan.arrays]

    if pool is None:
        for scan in scans:
            yield decode_item(scan.location, wanted(scan), options.limits, triangles)
        return
    max_items = max(4, 4 * options.n_workers)
    pending: deque[tuple[int, cf.Future[dict[str, np.ndarray]]]] = deque()
    in_flight = 0
    it = iter(scans)
    nxt: ItemScan | None = next(it, None)
    while nxt is not None or pending:
        while (
            nxt is not None
            and len(pending) < max_items
            and (not pending or in_flight + nxt.decoded_bytes <= IN_FLIGHT_BYTES)
        ):
            pending.append(
                (
                    nxt.decoded_bytes,
                    pool.submit(decode_item, nxt.location, wanted(nxt), options.limits, triangles),
                )
            )
            in_flight += nxt.decoded_bytes
            nxt = next(it, None)
        size, future = pending.popleft()
        in_flight -= size
        yield future.result()


def write_structure(
    writer: ShardWriter,
    groups: dict[str, GroupPlan],
    offsets: dict[str, np.ndarray],
    per_item: dict[tuple[str, str], list[Any]],
    names: Sequence[str],
    code_start: Mapping[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Write per-item arrays, provenance, offsets and item names; return every zarr.json.

    ``code_start`` (per group) skips provenance shards that hold only rows below it:
    when appending, those were copied from the existing dataset.
    """
    level = writer.level
    docs: dict[str, dict[str, Any]] = {}
    for group in groups.values():
        total = int(offsets[group.name][-1])
        attrs: dict[str, Any] = {"primary_dimension": group.primary_dim}
        if group.special:
            attrs["special_processing"] = group.special
        if group.order:
            attrs["array_order"] = list(group.order)
        if group.source is not None:
            attrs["cadstore_layout"] = UPPER_TRIANGLE
            attrs["source_group"] = group.source
        docs[group.name] = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
        for plan in group.arrays.values():
            path = f"{group.name}/{plan.name}"
            if plan.per_item:
                values = per_item[(group.name, plan.name)]
                if plan.dtype.kind in "fc":
                    # Values that came from elsewhere (a Dask merge's scans) are checked
                    # here: integers the float dtype cannot hold exactly are refused.
                    for value in values:
                        if isinstance(value, int | np.integer) and not isinstance(
                            value, bool | np.bool_
                        ):
                            exact_cast(np.asarray(value), plan.dtype, path)
                arr = (
                    np.array(values, dtype=plan.dtype)
                    if values
                    else np.zeros((0, *plan.trailing), dtype=plan.dtype)
                )
                docs[path] = write_plain_array(writer, path, arr, plan.dims, level)
            else:
                docs[path] = array_doc(
                    (total, *plan.trailing),
                    plan.dtype,
                    plan.dims,
                    (plan.shard_rows, *[max(1, t) for t in plan.trailing]),
                    [
                        sharding_codec(
                            (plan.inner_rows, *[max(1, t) for t in plan.trailing]),
                            writer.level_of(plan),
                            writer.checksum,
                        )
                    ],
                    triangle_attributes(group, plan) if plan.triangle else {},
                )
        # Provenance: the item code of every row, written shard by shard.
        code_plan = ArrayPlan(
            group=group.name,
            name=file_id_code_name(group.name),
            per_item=False,
            dtype=np.dtype("int64"),
            trailing=(),
        )
        # Sized to the group's rows (a small group gets a small shard and index), or as
        # the dataset being continued has it.
        code_plan.inner_rows, code_plan.shard_rows = writer.code_layouts.get(
            group.name
        ) or shard_layout(
            8,
            DEFAULT_INNER_BYTES,
            DEFAULT_SHARD_BYTES,
            total_rows=total,
            compressed=level is not None,
        )
        bounds = offsets[group.name]
        first = (code_start or {}).get(group.name, 0) // code_plan.shard_rows
        for start in range(first * code_plan.shard_rows, total, code_plan.shard_rows):
            stop = min(total, start + code_plan.shard_rows)
            rows = np.arange(start, stop, dtype=np.int64)
            codes = np.searchsorted(bounds, rows, side="right") - 1
            writer.shard(
                f"{group.name}/{code_plan.name}/c/{start // code_plan.shard_rows}",
                codes.astype(np.int64),
                code_plan,
            )
        docs[f"{group.name}/{code_plan.name}"] = array_doc(
            (total,),
            np.dtype("int64"),
            [group.primary_dim],
            (code_plan.shard_rows,),
            [sharding_codec((code_plan.inner_rows,), writer.level_of(code_plan), writer.checksum)],
            {},
        )
        docs[f"{group.name}/{OFFSETS}"] = write_plain_array(
            writer, f"{group.name}/{OFFSETS}", bounds, [BOUNDARY_DIM], level
        )
    docs[ITEM_NAMES] = write_plain_array(
        writer, ITEM_NAMES, np.array(list(names), dtype=object), [ITEM_DIM], level
    )
    return docs


def write_root(
    writer: ShardWriter,
    docs: dict[str, dict[str, Any]],
    n_items: int,
    groups: Mapping[str, GroupPlan],
    offsets: Mapping[str, np.ndarray],
    schema: Schema | None,
) -> None:
    """Write every node's zarr.json, the consolidated root and ``metadata.json``."""
    for path, doc in docs.items():
        writer.add(f"{path}/zarr.json", dump_json(doc), deflate=True)
    root = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {"cadstore": DATASET_FORMAT},
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": docs},
    }
    writer.add("zarr.json", dump_json(root), deflate=True)
    metadata = {
        "format": DATASET_FORMAT,
        "item_count": n_items,
        "groups": {
            name: {
                "primary_dimension": g.primary_dim,
                "special_processing": g.special,
                "rows": int(offsets[name][-1]),
                **({"source_group": g.source, "arrays": sorted(g.arrays)} if g.source else {}),
            }
            for name, g in groups.items()
        },
    }
    if schema is not None:
        metadata["_storage_schema"] = _declare_layouts(schema.to_dict(), groups)
    writer.add("metadata.json", jsoncodec.dumps(metadata).encode("utf-8"), deflate=True)


def _declare_layouts(schema: dict[str, Any], groups: Mapping[str, GroupPlan]) -> dict[str, Any]:
    """The schema with each triangle-stored array declared as such (``storage_layout`` and
    ``stored_as`` in its spec), so that a reader of the schema alone knows the layout."""
    declared = schema.get("groups") or {}
    for group in groups.values():
        if group.source is None:
            continue
        specs = (declared.get(group.source) or {}).get("arrays") or {}
        for name in group.arrays:
            spec = specs.get(name)
            if isinstance(spec, dict):
                spec["storage_layout"] = UPPER_TRIANGLE
                spec["stored_as"] = f"{group.name}/{name}"
    return schema


def group_summary(
    groups: Mapping[str, GroupPlan], offsets: Mapping[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """``MergeResult.groups``: rows, primary dimension and arrays of every group."""
    return {
        name: {
            "rows": int(offsets[name][-1]),
            "primary_dimension": g.primary_dim,
            "arrays": sorted(g.arrays),
        }
        for name, g in groups.items()
    }


def per_item_values(plan: MergePlan) -> dict[tuple[str, str], list[Any]]:
    """Empty lists for the values of every per-item array, filled while streaming."""
    return {
        (g.name, p.name): [] for g in plan.groups.values() for p in g.arrays.values() if p.per_item
    }


def stream_plan(
    plan: MergePlan,
    per_item: dict[tuple[str, str], list[Any]],
    writer: ShardWriter,
    options: MergeOptions,
) -> int:
    """Stream every planned item into shards here (and in the writer's pool); raw bytes."""
    buffers = {
        (g.name, p.name): RowBuffer(p)
        for g in plan.groups.values()
        for p in g.arrays.values()
        if not p.per_item
    }
    groups = plan.groups
    return stream_items(plan.scans, groups, groups, buffers, per_item, writer, options, "merge")


def finish_dataset(
    writer: ShardWriter, plan: MergePlan, per_item: dict[tuple[str, str], list[Any]]
) -> None:
    """After the shards: per-item arrays, provenance, offsets, names and metadata."""
    writer.flush()
    names = [s.name for s in plan.scans]
    docs = write_structure(writer, plan.groups, plan.offsets, per_item, names)
    write_root(writer, docs, len(names), plan.groups, plan.offsets, plan.schema)
    writer.flush()
