"""What a merge is asked to do (:class:`MergeOptions`) and what it reports (:class:`MergeResult`).

The options travel as one value through the stages of a merge (scan, plan, write, append,
the Dask tasks), instead of a dozen parameters handed from function to function.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cadstore.format.limits import DEFAULT_LIMITS, Limits
from cadstore.io.lock import check_wait

__all__ = [
    "DEFAULT_INNER_BYTES",
    "DEFAULT_LEVEL",
    "DEFAULT_SHARD_BYTES",
    "FACE_PAIR_LEVEL",
    "MergeOptions",
    "MergeResult",
]

#: Target uncompressed size of an inner chunk. Arrays of small rows get fewer (a few
#: typical items' worth, see :func:`cadstore.format.sharding.shard_layout`); this is the
#: size of the face-pair arrays' chunks, where one item holds hundreds of kilobytes. Their
#: item frames (one per item and chunk) are cut at chunk ends: at 256 KiB an item is cut
#: less often than at 64 KiB, so zstd finds more of its repeats and decodes faster, and
#: the dataset is smaller (1,200 realistic items: 132 MB against 156 MB, face pairs
#: decoded about 25% faster, the same merge time; ``docs/benchmarks.md``).
DEFAULT_INNER_BYTES = 256 * 1024
#: Target uncompressed size of a shard (one zip member).
DEFAULT_SHARD_BYTES = 16 * 1024 * 1024
#: zstd level of the dataset's chunks.
DEFAULT_LEVEL = 3
#: The lowest zstd level of face-pair arrays (see :attr:`MergeOptions.face_pair_level`).
#: On the face-pair histograms of 1,200 realistic items, in 256 KiB item-framed chunks,
#: level 5 against 3 stored ``a3_distance`` in 36% fewer bytes and decoded it 1.6x
#: faster (``d2_distance`` 1.2x, ``face_pair_edges_path`` 1.15x): fewer literals to
#: decode. Level 7 decodes them in 10% less time again than level 5 (level 9 12%), for
#: 30% longer compressing them and a merge 5-12% longer (level 9 20-40%, level 12 twice
#: as long): every epoch of training reads them, a dataset is merged once
#: (``docs/benchmarks.md``).
FACE_PAIR_LEVEL = 7
#: The zstd levels there are (negative levels trade ratio for speed).
MIN_LEVEL, MAX_LEVEL = -(1 << 17), 22
#: Arrays of rows of at most this many bytes (a face's area or type, an edge's length, a
#: centroid) outside the face-pair groups, of which items have a few hundred bytes each,
#: are written at :data:`SMALL_ROWS_LEVEL` (:func:`cadstore.merging.plan.small_rows`).
#: An item's rows of them lie in inner chunks that hold a hundred items' rows
#: (:data:`cadstore.format.sharding.MIN_INNER_BYTES`), so a read that does not find such
#: a chunk cached would decode all of it for those bytes (13 of the 19 chunks a random
#: realistic item decoded, for a few percent of a dataset's bytes): stored as they are, the
#: item's rows are copied out of the chunk instead (``docs/benchmarks.md``).
SMALL_ROW_BYTES = 16
#: The zstd level of arrays of small rows (:data:`SMALL_ROW_BYTES`): the fastest there is,
#: at which zstd stores the bytes as they are, decoded at the speed of a copy.
SMALL_ROWS_LEVEL = MIN_LEVEL


@dataclass(frozen=True)
class MergeOptions:
    """How to merge: the layout and compression of the output, and the work in parallel.

    Attributes
    ----------
    compression_level
        zstd level of the output (``None``: uncompressed). Unless ``None``, arrays of a
        few small rows per item (at most :data:`SMALL_ROW_BYTES` a row, outside the
        face-pair groups) are written at :data:`SMALL_ROWS_LEVEL`: see
        :func:`cadstore.merging.plan.small_rows`.
    face_pair_level
        zstd level of the face-pair groups' arrays (``N x N`` per item, most of a
        dataset's bytes, decoded for every item a model reads); ``None`` (default):
        ``compression_level``, but at least :data:`FACE_PAIR_LEVEL`. Unused when
        ``compression_level`` is ``None``.
    inner_bytes, shard_bytes
        Target uncompressed sizes of inner chunks and shards; inner chunks of small rows
        are cut to a few typical items' rows (:func:`cadstore.format.sharding.shard_layout`).
    shard_rows
        Fixed shard lengths per group (``{"faces": 500000}``), as the specified
        ``face_chunk``/``edge_chunk``/``faceface_flat_chunk`` arguments give them.
    directory
        Write a directory store (a prefix of objects on an object store) instead of a zip.
    workers
        Workers decoding items and encoding shards: 0 or 1 work in the calling thread,
        ``None`` uses every core.
    executor
        ``"thread"`` (default) or ``"process"``; only the calling thread writes, whole
        shards, so no two workers ever touch the same chunk. A worker process's warnings
        are issued again in the calling process (:class:`cadstore.workers.ProcessPool`),
        as the threads' are.
    progress
        Show progress bars (needs tqdm).
    limits
        Safety limits for reading items.
    lock_timeout
        Seconds to wait for another writer of the same dataset to finish (0: fail at once
        with :class:`~cadstore.errors.DatasetLockedError`).
    face_pair_layout
        ``"auto"`` (default): a face-pair array that is symmetric in every item is stored
        as its upper triangle (see :mod:`cadstore.format.triangle`); ``"full"``: every
        face-pair array keeps its ``N x N`` rows, the layout of datasets written before.
    """

    compression_level: int | None = DEFAULT_LEVEL
    inner_bytes: int = DEFAULT_INNER_BYTES
    shard_bytes: int = DEFAULT_SHARD_BYTES
    shard_rows: Mapping[str, int] = field(default_factory=dict)
    directory: bool = False
    workers: int | None = 0
    executor: str = "thread"
    progress: bool = False
    limits: Limits = DEFAULT_LIMITS
    lock_timeout: float = 0.0
    face_pair_layout: str = "auto"
    face_pair_level: int | None = None

    def __post_init__(self) -> None:
        if self.face_pair_layout not in ("auto", "full"):
            raise ValueError(
                f"face_pair_layout must be 'auto' or 'full', got {self.face_pair_layout!r}"
            )
        check_wait(self.lock_timeout, "lock_timeout")
        if self.workers is not None:
            try:
                count = -1 if isinstance(self.workers, bool) else operator.index(self.workers)
            except TypeError:
                count = -1
            if count < 0:
                raise ValueError(f"workers must be None or an int >= 0, got {self.workers!r}")
        if self.executor not in ("thread", "process"):
            raise ValueError(f"executor must be 'thread' or 'process', got {self.executor!r}")
        for name in ("compression_level", "face_pair_level"):
            level = getattr(self, name)
            if level is not None and (
                isinstance(level, bool)
                or not isinstance(level, int)
                or not MIN_LEVEL <= level <= MAX_LEVEL
            ):
                raise ValueError(
                    f"{name} must be a zstd level from {MIN_LEVEL} to {MAX_LEVEL} or None, "
                    f"got {level!r}"
                )

    @property
    def face_pairs_level(self) -> int | None:
        """The zstd level face-pair arrays are written with (``None``: uncompressed)."""
        if self.compression_level is None:
            return None
        if self.face_pair_level is not None:
            return self.face_pair_level
        return max(self.compression_level, FACE_PAIR_LEVEL)

    @property
    def n_workers(self) -> int:
        """The number of workers ``workers`` stands for."""
        return (os.cpu_count() or 1) if self.workers is None else int(self.workers)


@dataclass
class MergeResult:
    """What a merge produced.

    Attributes
    ----------
    path
        The ``.dataset``.
    items
        Names of the merged items, by code.
    errors
        ``{"file": path, "error": reason}`` for every item that was skipped.
    groups
        ``{group: {"rows": n, "arrays": [...]}}``.
    raw_bytes, stored_bytes
        Bytes of decoded item arrays read, and size of the output.
    seconds
        Wall time.
    warnings
        Notes on arrays that were not merged, and on item metadata the ``.infoset`` and
        ``.attribset`` do not hold as the items do (naming the items).
    total_items
        Items in the dataset after this merge or append, old ones included.
    version, commit
        The version this merge or append published and its commit id (``None`` when it
        published none: nothing new to append).
    recovered
        What was finished or undone of an earlier writer that was interrupted (see
        :mod:`cadstore.lifecycle`); also among :attr:`warnings`.
    """

    path: str
    items: list[str]
    errors: list[dict[str, str]]
    groups: dict[str, dict[str, Any]]
    raw_bytes: int
    stored_bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    total_items: int = 0
    version: int | None = None
    commit: str | None = None
    recovered: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible summary."""
        return {
            "path": self.path,
            "item_count": len(self.items),
            "errors": self.errors,
            "warnings": self.warnings,
            "groups": self.groups,
            "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
            "seconds": self.seconds,
            "version": self.version,
            "commit": self.commit,
            "recovered": self.recovered,
        }
