"""Merges on a Dask cluster: items scanned and shards encoded by the workers.

What runs where
---------------
* **Workers** open the items themselves, from a path every worker can read (shared disk)
  or a URL (``s3://...``; a location travels with its ``storage_options``). They
  scan items (metadata, per-item scalars, the CRC of every member) and encode *whole
  output shards*: each task owns a set of shards and gathers the rows of every item that
  overlaps them, so no two tasks ever produce the same chunk (partial-shard writes from
  several writers lose data silently; see ``reliability-and-scale.md``). A task returns
  its encoded shards, compressed, as bytes; decoded arrays never leave the worker.
* **The driver** plans (groups, dtypes, offsets), writes the encoded shards into the
  output in the exact order of the single-process merge, adds the small arrays
  (offsets, item codes, per-item values, names) and publishes the dataset once. The
  output is therefore byte for byte the dataset the single-process merge writes.

Tasks are pure functions of their inputs, so a task whose worker dies is simply run again
elsewhere (Dask does this up to ``distributed.scheduler.allowed-failures`` times). When a
task cannot be completed (its workers kept dying, or the cluster was lost) the merge stops
with a :class:`~cadstore.errors.MergeError` and nothing is published; an error a task
raised itself stops it as that error; an OSError reading an item comes back as a
:class:`~cadstore.errors.StorageError` naming the item, of the same kind
(:class:`~cadstore.errors.StorageAccessError` is a ``PermissionError``,
:class:`~cadstore.errors.StorageNotFoundError` a ``FileNotFoundError``), since the error a
worker raised may name no file (EIO on a shared disk): the item readers report it so
(:func:`~cadstore.merging.scan.reading_item`), as in one process.

Dask is optional: install ``cadstore[dask]``.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cadstore.cluster import require_distributed, worker_threads
from cadstore.errors import (
    CadstoreError,
    CorruptStoreError,
    LimitExceededError,
    MergeError,
    StorageAccessError,
    StorageError,
    StorageNotFoundError,
    StorageUnavailableError,
)
from cadstore.format.limits import Limits
from cadstore.format.sharding import encode_shard
from cadstore.io.location import Location
from cadstore.merging.plan import ArrayPlan, GroupPlan, MergePlan
from cadstore.merging.scan import ItemScan, decode_item, reading_item, scan_item
from cadstore.merging.write import ShardWriter, item_rows, shard_key

__all__ = ["scan_on_dask", "write_shards_on_dask"]
#: Items scanned by one task: enough to amortise a task's overhead (about 1 ms).
SCAN_BATCH = 16
#: Bounds of the decoded input bytes one shard task covers.
MIN_TASK_BYTES = 2 * 1024 * 1024
MAX_TASK_BYTES = 128 * 1024 * 1024


# ---------------------------------------------------------------------------- failures
@dataclass(frozen=True)
class _Failure:
    """A cadstore error raised in a task, carried back as plain data.

    cadstore's path-and-problem errors do not survive pickling by their arguments, so a
    task returns this instead and the driver raises the error again.
    """

    kind: str
    path: str
    problem: str
    message: str


_PATH_ERRORS: dict[str, type[StorageError]] = {
    cls.__name__: cls
    for cls in (
        StorageError,
        CorruptStoreError,
        LimitExceededError,
        StorageAccessError,
        StorageNotFoundError,
        StorageUnavailableError,
    )
}


def _let_go(futures: Iterable[Any], cancel: bool = False) -> None:
    """Release (or cancel) ``futures``, whatever the state of the cluster: once it is
    lost, the client refuses to (``ClosedClientError``), and that must not take the
    place of the error that ended the work."""
    for future in futures:
        with contextlib.suppress(Exception):
            if cancel:
                future.cancel()
            else:
                future.release()


def _captured(run: Callable[[], Any]) -> Any:
    try:
        return run()
    except CadstoreError as exc:
        return _Failure(
            type(exc).__name__,
            getattr(exc, "path", ""),
            getattr(exc, "problem", ""),
            str(exc),
        )


def _raise_failure(failure: _Failure) -> None:
    cls = _PATH_ERRORS.get(failure.kind)
    if cls is not None:
        raise cls(failure.path, failure.problem)
    raise MergeError(failure.message)


def _result(future: Any, what: str) -> Any:
    """The result of ``future``, with cluster failures turned into a MergeError.

    An error the task raised itself (the future's status is ``"error"``; an OSError
    among them) is raised as it is: only the loss of the scheduler or the workers (a
    cancelled future, a closed connection) is reported as a lost cluster.
    """
    distributed = require_distributed()
    try:
        out = future.result()
    except CadstoreError:
        raise
    except distributed.KilledWorker as exc:
        raise MergeError(
            f"{what}: Dask workers died running the same task repeatedly ({exc}); nothing "
            "was published. Check the workers' memory limit and logs, then run again"
        ) from exc
    except (OSError, TimeoutError, distributed.client.FutureCancelledError) as exc:
        if future.status == "error":
            raise  # the task's own error, not the cluster's
        raise MergeError(
            f"{what}: lost the Dask cluster ({type(exc).__name__}: {exc}); nothing was "
            "published, run the merge again"
        ) from exc
    if isinstance(out, _Failure):
        _raise_failure(out)
    return out


def _call_batch(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Any:
    """Task: ``fn(*args)`` for each call, in order, each reading the item ``args[0]``."""

    def call(args: tuple[Any, ...]) -> Any:
        with reading_item(args[0]):
            return fn(*args)

    return _captured(lambda: [call(args) for args in calls])


def dask_map(client: Any, what: str) -> Callable[..., list[Any]]:
    """A ``map`` that runs each call on the cluster's workers, for work the driver must
    not do itself (it may not be able to read the items the workers read).

    The returned function takes ``(fn, *iterables)`` like :func:`map` and returns the
    results in order; the first iterable holds the items the calls read, as
    :class:`~cadstore.io.location.Location`. Calls go to the cluster :data:`SCAN_BATCH`
    to a task, as scans do (a task per call would load the scheduler with one per item);
    a cadstore error in a call is raised again here, an OSError as the
    :class:`~cadstore.errors.StorageError` of its kind naming the call's item, as a scan's
    (:func:`~cadstore.merging.scan.reading_item`: the worker's error may name no file),
    and cluster failures as a :class:`~cadstore.errors.MergeError` naming ``what``.

    Raises
    ------
    TypeError
        If a call's first argument is not a Location (the item an error would name).
    """

    def run(fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[Any]:
        calls = list(zip(*iterables, strict=True))
        for args in calls:
            if not args or not isinstance(args[0], Location):
                raise TypeError(
                    f"dask_map({what!r}): each call's first argument must be the Location "
                    f"of the item it reads, not {type(args[0] if args else None).__name__}"
                )
        batches = [calls[i : i + SCAN_BATCH] for i in range(0, len(calls), SCAN_BATCH)]
        futures = [client.submit(_call_batch, fn, batch, pure=False) for batch in batches]
        try:
            return [out for future in futures for out in _result(future, what)]
        finally:
            _let_go(futures)

    return run


# ---------------------------------------------------------------------------- scan
def _scan_batch(locations: Sequence[Location], limits: Limits) -> Any:
    def scan(location: Location) -> ItemScan | tuple[str, str]:
        # An OSError reading the item comes back as a StorageError naming it (reading_item).
        return scan_item(location, limits, scalars=True)

    return _captured(lambda: [scan(location) for location in locations])


def scan_on_dask(
    client: Any, files: Sequence[Location], limits: Limits
) -> Iterator[ItemScan | tuple[str, str]]:
    """Scan ``files`` on the cluster; yield each scan (or ``(path, reason)``) in order.

    Scans carry the items' 0-d values (:attr:`ItemScan.scalars`), so the driver never
    decodes an item.
    """
    batches = [files[i : i + SCAN_BATCH] for i in range(0, len(files), SCAN_BATCH)]
    futures = [client.submit(_scan_batch, batch, limits, pure=False) for batch in batches]
    try:
        for future in futures:
            yield from _result(future, "scanning items")
    finally:
        _let_go(futures)


# ---------------------------------------------------------------------------- shards
@dataclass(frozen=True)
class _Unit:
    """One output shard and the item rows that fill it.

    ``pieces`` are ``(item code, item key or None for fill rows, first row, stop row,
    item rows)``, in output order. ``group`` and ``name`` are the dataset array's, for
    error messages (an item whose rows do not fit names the array, as a local merge does).
    """

    key: str
    group: str
    name: str
    dtype: str
    trailing: tuple[int, ...]
    inner_rows: int
    shard_rows: int
    pieces: tuple[tuple[int, str | None, int, int, int], ...]
    #: The items' arrays are stored as their upper triangles.
    triangle: bool = False
    #: zstd level of the shard (``None``: uncompressed).
    level: int | None = None


def _encode_units(
    units: Sequence[_Unit],
    items: Mapping[int, Location],
    limits: Limits,
    checksum: bool = True,
) -> Any:
    """Task: decode the items ``units`` need, each once, and encode every unit's shard."""

    def run() -> list[tuple[str, bytes]]:
        wanted: dict[int, set[str]] = {}
        last_use: dict[int, int] = {}
        for i, unit in enumerate(units):
            for code, key, _, _, _ in unit.pieces:
                if key is not None:
                    wanted.setdefault(code, set()).add(key)
                    last_use[code] = i
        triangles = frozenset(
            key for unit in units if unit.triangle for _, key, _, _, _ in unit.pieces if key
        )
        decoded: dict[int, dict[str, np.ndarray]] = {}
        out: list[tuple[str, bytes]] = []
        for i, unit in enumerate(units):
            dtype = np.dtype(unit.dtype)
            layout = ArrayPlan(
                unit.group, unit.name, False, dtype, unit.trailing, triangle=unit.triangle
            )
            fill = layout.fill_value
            parts: list[np.ndarray] = []
            starts: list[int] = []  # where items begin in the shard (item frames)
            at = 0
            for code, key, lo, hi, n_rows in unit.pieces:
                if lo == 0 and hi > 0:
                    starts.append(at)
                at += hi - lo
                if key is None:
                    parts.append(np.full((hi - lo, *unit.trailing), fill, dtype=dtype))
                    continue
                arrays = decoded.get(code)
                if arrays is None:
                    location = items[code]
                    arrays = decoded[code] = decode_item(
                        location, sorted(wanted[code]), limits, triangles
                    )
                arr = item_rows(arrays[key], layout, n_rows, items[code].path, key)
                parts.append(arr[lo:hi])
            rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
            data = encode_shard(
                np.ascontiguousarray(rows),
                unit.inner_rows,
                unit.shard_rows,
                unit.level,
                checksum,
                np.asarray(starts, dtype=np.int64),
            )
            out.append((unit.key, data))
            for code in [c for c, last in last_use.items() if last == i]:
                # Past its last use in this task: free the item's arrays.
                decoded.pop(code, None)
                del last_use[code]
        return out

    return _captured(run)


def _plan_units(
    scans: Sequence[ItemScan],
    groups: Mapping[str, GroupPlan],
    offsets: Mapping[str, np.ndarray],
    level_of: Callable[[ArrayPlan], int | None],
) -> list[tuple[tuple[int, ...], _Unit]]:
    """Every output shard with the position at which the single-process merge writes it.

    The single-process merge writes a full shard as soon as the item completing it has
    been streamed (items in code order, then groups, arrays and shards in order), and
    every partial last shard at the end. Sorting by these keys reproduces its order, and
    with it the bytes of the zip.
    """
    n_items = len(scans)
    units: list[tuple[tuple[int, ...], _Unit]] = []
    for gi, group in enumerate(groups.values()):
        bounds = offsets[group.name]
        total = int(bounds[-1])
        for pi, plan in enumerate(group.arrays.values()):
            if plan.per_item:
                continue
            size = plan.shard_rows
            for index, start in enumerate(range(0, total, size)):
                stop = min(total, start + size)
                if stop - start == size:
                    done_at = int(np.searchsorted(bounds[1:], stop, side="left"))
                    order: tuple[int, ...] = (0, done_at, gi, pi, index)
                else:
                    order = (1, 0, gi, pi, index)
                pieces = []
                code = int(np.searchsorted(bounds, start, side="right")) - 1
                while code < n_items and bounds[code] < stop:
                    first, end = int(bounds[code]), int(bounds[code + 1])
                    lo, hi = max(start, first), min(stop, end)
                    if hi > lo:
                        pieces.append(
                            (code, plan.sources.get(code), lo - first, hi - first, end - first)
                        )
                    code += 1
                unit = _Unit(
                    key=shard_key(group, plan, index),
                    group=plan.group,
                    name=plan.name,
                    dtype=plan.dtype.str,
                    trailing=tuple(plan.trailing),
                    inner_rows=plan.inner_rows,
                    shard_rows=plan.shard_rows,
                    pieces=tuple(pieces),
                    triangle=plan.triangle,
                    level=level_of(plan),
                )
                units.append((order, unit))
    return units


def _bundle(
    units: Sequence[tuple[tuple[int, ...], _Unit]], scans: Sequence[ItemScan], n_threads: int
) -> list[list[_Unit]]:
    """Group shards into tasks by the items they start in, a few tasks per thread.

    Items are cut into consecutive windows of about the same decoded size; a shard goes to
    the window of its first item. A task reads each of its items once, and only items
    under a shard that crosses a window edge are read by two tasks.
    """
    sizes = np.array([max(1, s.decoded_bytes) for s in scans], dtype=np.int64)
    target = int(np.clip(sizes.sum() // (4 * n_threads), MIN_TASK_BYTES, MAX_TASK_BYTES))
    window = np.cumsum(sizes) // target
    tasks: dict[int, list[_Unit]] = {}
    for _, unit in sorted(units, key=lambda u: (u[1].pieces[0][0], u[0])):
        tasks.setdefault(int(window[unit.pieces[0][0]]), []).append(unit)
    return [tasks[w] for w in sorted(tasks)]


def _raw_bytes(scans: Sequence[ItemScan], groups: Mapping[str, GroupPlan]) -> int:
    """Decoded bytes of the merged arrays, as the single-process merge counts them."""
    total = 0
    for group in groups.values():
        for plan in group.arrays.values():
            for code, key in plan.sources.items():
                shape, dtype = scans[code].arrays[key]
                # A decoded string array holds object pointers.
                itemsize = 8 if dtype == "string" else np.dtype(dtype).itemsize
                total += int(np.prod(shape, dtype=np.int64)) * itemsize
    return total


def write_shards_on_dask(
    client: Any,
    plan: MergePlan,
    per_item: dict[tuple[str, str], list[Any]],
    writer: ShardWriter,
    limits: Limits,
) -> int:
    """Encode every output shard on the cluster and write them in merge order.

    Fills ``per_item`` from the scans' scalars; returns the raw bytes merged. At most a
    few tasks per worker thread are outstanding, so the encoded shards waiting at the
    driver or on the workers stay few whatever the size of the dataset (nor do workers
    ever spill them to disk).
    """
    scans, groups = plan.scans, plan.groups
    for group in groups.values():
        for array in group.arrays.values():
            if array.per_item:
                values = per_item[(group.name, array.name)]
                for code, scan in enumerate(scans):
                    key = array.sources.get(code)
                    values.append(
                        scan.scalars[key]
                        if key is not None and key in scan.scalars
                        else array.fill_value
                    )
    planned = _plan_units(scans, groups, plan.offsets, writer.level_of)
    if not planned:
        return _raw_bytes(scans, groups)
    n_threads = worker_threads(client)
    tasks = _bundle(planned, scans, n_threads)
    owner = {unit.key: t for t, task in enumerate(tasks) for unit in task}
    remaining = [len(task) for task in tasks]
    emission = [unit.key for _, unit in sorted(planned, key=lambda u: u[0])]
    limit = 2 * n_threads + 2
    token = secrets.token_hex(4)
    futures: dict[int, Any] = {}
    results: dict[int, dict[str, bytes]] = {}
    submitted = finished = 0

    def submit(t: int) -> None:
        task = tasks[t]
        items = {c: scans[c].location for unit in task for c, k, *_ in unit.pieces if k is not None}
        futures[t] = client.submit(
            _encode_units,
            task,
            items,
            limits,
            writer.checksum,
            key=f"cadstore-shards-{token}-{t}",
        )

    try:
        for key in emission:
            need = owner[key]
            # The task holding the next shard is always submitted; others up to the limit.
            while submitted <= need or (submitted < len(tasks) and submitted - finished < limit):
                submit(submitted)
                submitted += 1
            if need not in results:
                where = f"merging into {writer.sink.location}"
                results[need] = dict(_result(futures.pop(need), where))
            writer.put_encoded(key, results[need].pop(key))
            remaining[need] -= 1
            if not remaining[need]:
                del results[need]
                finished += 1
    finally:
        _let_go(futures.values(), cancel=True)
    return _raw_bytes(scans, groups)
