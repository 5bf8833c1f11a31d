"""Benchmark: training reads of a merged dataset against Lance, Hugging Face and raw ``.npy``.

Issue 18 asks how fast a merged dataset feeds training compared with what an engineer
would otherwise store CAD graphs in. This script builds the same items into every
contender, checks that every contender returns the same arrays bit for bit, and measures,
in one run, alternating the contenders:

1. **random item**: one random whole item in one thread (median ms over ``--samples``
   distinct random items per repeat). cadstore twice: with its decoded-chunk cache (the
   default) and with it off (``cache_bytes=0``, every read decodes).
2. **batch of 32**: 32 random items read together, ms per item (median over batches).
3. **DataLoader**: items/s through ``torch.utils.data.DataLoader(num_workers=2,
   batch_size=32, shuffle=True)`` over one epoch of the training split (80% of the
   items), worker start-up included, and the CPU time per item of the training process
   and its workers (far steadier than the rate on a shared machine), batches collated
   by cadstore's ``GraphCollate`` for every contender (same batch content: rows
   concatenated, ``edge_index`` shifted; in a worker it also reuses the batch's shared
   memory once the training process lets it go, for every contender alike:
   ``cadstore.dataset.worker_memory``). The training process keeps the largest of those
   blocks for later epochs' workers, whichever contender's workers made them, so before
   the repeats each contender runs one epoch with none kept (``dataloader_first``, a
   training run's first epoch): left to the repeats, the first contender of the first
   repeat made the blocks that every other one then reused. An epoch with none kept is
   slower for every contender (in a probe alternating the two, cadstore 651-787 items/s
   against 759-1,066 with blocks kept, HF 287-638 against 381-731); cadstore, first in
   the first repeat, had read 263 items/s there in the run recorded at 9b11ea4
   (736-1,313 in the other repeats), 388 in a run that was not recorded. An untimed
   epoch of a few items comes before them all: the process's first ``DataLoader`` sets
   up what torch's workers share for every later one (measured first, cadstore's
   graph-only epoch had read 1,539 items/s against 2,500-3,914 in the repeats, HF's,
   second, 3,238 against 2,029-3,530).
4. **in-process, 2 threads**: items/s of the second of two epochs decoded by two threads
   of the training process: cadstore's :class:`~cadstore.dataset.training.BatchLoader`
   (its readers, and what they cached, kept between epochs); for the peers a two-thread
   pool doing batch reads and the same collate, with the same prefetch depth. The first
   epoch is kept in the JSON.
5. **worker processes**: items/s of the second of two epochs through two worker processes
   kept between epochs: cadstore's ``BatchLoader(processes=2)`` (shared-memory batch
   buffers reused), the peers' ``DataLoader(num_workers=2, persistent_workers=True)``;
   the first epoch (start-up included) is kept in the JSON.

Every measure is taken with every group and without the quadratic ``faceface`` group
("graph only"). Also recorded: each contender's size on disk and build time.

The contenders and the choices made for them
---------------------------------------------
``cadstore``
    Items written by :func:`cadstore.synthetic.write_workload`, merged with
    :func:`cadstore.merge` (build time = the merge). Reads: ``DatasetReader.read_item`` /
    ``read_items``; DataLoader over ``to_torch_with_collate()`` of the ``train`` subset
    (see :func:`cadstore_torch`);
    in-process ``BatchLoader``.
``lance``
    pylance, one row per item, one column per array. Row arrays are flattened to 1-D
    ``list<primitive>`` columns (Arrow offsets give the rows, zero copy); the trailing
    dimensions of an array are the same in every item (``(25, 7)`` for
    ``face_discretization``), so they are kept once in the layout, not per row; per-item
    values are scalar columns. Written in batches of 16 rows with
    ``data_storage_version=--lance-version`` (default ``2.0``: in a 20-item probe its
    ``take`` was about twice as fast as ``2.1``'s, which is smaller; the size of the
    chosen version is what the table shows). Reads: ``LanceDataset.take(indices,
    columns=...)`` (Lance's random-access call), the Arrow result turned into numpy
    views. For the DataLoader, a map-style dataset whose ``__getitems__`` does one
    ``take`` per batch (``lance.torch``'s iterable datasets read in storage order or
    sample fragments; they cannot give ``shuffle=True`` over the same items).
``hf``
    Hugging Face ``datasets``: the same columns (``Sequence(Value(dtype))`` features),
    written with ``Dataset.from_generator`` and ``save_to_disk``, opened with
    ``load_from_disk`` (memory-mapped Arrow). Reads use ``with_format("arrow")``:
    ``ds[i]`` and ``ds[list]`` (what ``__getitems__`` calls) return Arrow tables, turned
    into numpy views as for Lance. ``with_format("numpy")`` was not used because its
    formatter widens every integer array to int64 and every float array to float32
    (``NumpyFormatter._tensorize``), so it cannot return the stored int32 arrays bit
    for bit, and it copies each column.
``npy``
    The floor: one ``.npy`` file per item per array (``<code>/<group>.<array>.npy``),
    read with ``numpy.load``; no container, no compression, no index.

The peers are built from the items as cadstore's ``DatasetReader.read_item`` returns them
(the items already decoded are handed to the peer's writer); the time spent reading them
is measured and left out of the peers' build time. Everything is cached in ``--workdir``
between runs (the build times recorded when each was built are reported again).

Honesty rules: every contender's files are read once before measuring (page cache warm
for all alike); within each repeat the contenders take turns, the first one rotating
from repeat to repeat; the result of a measure is the median over ``--repeats`` repeats
(every repeat is kept in the JSON); the load average is recorded before and after.

Run from the repository root (``pip install -e '.[bench]'`` and ``torch==2.13.0``)::

    python bench/bench_training.py --json bench/results/training.json
    python bench/bench_training.py --items 200 --repeats 1        # smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

import cadstore
from cadstore.dataset.loader import DatasetLoader
from cadstore.dataset.reader import DatasetReader
from cadstore.dataset.torch_support import GraphCollate
from cadstore.dataset.training import BatchLoader
from cadstore.dataset.worker_memory import release_kept_blocks
from cadstore.merging.options import FACE_PAIR_LEVEL
from cadstore.synthetic import write_workload

try:
    from bench._cpu import EpochCpu, total
except ImportError:  # run as a script: bench/ itself is sys.path[0]
    from _cpu import EpochCpu, total  # type: ignore[no-redef]

# Only the peers' DataLoader workers use Lance (spawned); forked workers of the others don't.
warnings.filterwarnings("ignore", message="lance is not fork-safe")

FACEFACE = "faceface"
CONTENDERS = ("cadstore", "lance", "hf", "npy")
SEP = "__"  # group SEP array: a column name (Lance reads "." as a nested field)
BATCH = 32
MEASURES = ("item", "batch", "dataloader", "inprocess", "workers")
THREADS = 2
PREFETCH = 4  # BatchLoader's default, used for the peers' pools too


class BenchError(RuntimeError):
    """A contender does not return what cadstore returns (the run is void)."""


# ---------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Column:
    """One array of the items, as a column of the peers."""

    group: str
    array: str
    dtype: str
    trailing: tuple[int, ...]  # dimensions after the rows, the same in every item
    per_item: bool  # one value per item (a scalar column)

    @property
    def name(self) -> str:
        return f"{self.group}{SEP}{self.array}"


def layout_of(reader: DatasetReader) -> list[Column]:
    """The columns of the peers, from the arrays of the dataset's first item."""
    columns = []
    for group, arrays in reader.read_item(0).items():
        for array, value in arrays.items():
            value = np.asarray(value)
            per_item = value.ndim == 0
            trailing = () if per_item else tuple(int(d) for d in value.shape[1:])
            columns.append(Column(group, array, value.dtype.str, trailing, per_item))
    return columns


def groups_of(layout: Sequence[Column]) -> list[str]:
    return list(dict.fromkeys(c.group for c in layout))


def _selected(layout: Sequence[Column], groups: Sequence[str] | None) -> list[Column]:
    return list(layout) if groups is None else [c for c in layout if c.group in groups]


def _nest(layout: Sequence[Column], values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    item: dict[str, dict[str, Any]] = {}
    for column in layout:
        item.setdefault(column.group, {})[column.array] = values[column.name]
    return item


def items_from_arrow(table: Any, layout: Sequence[Column]) -> list[dict[str, dict[str, Any]]]:
    """The items of an Arrow table (one row per item), arrays as numpy views of it."""
    n = table.num_rows
    per_column: dict[str, list[Any]] = {}
    for column in layout:
        data = table.column(column.name).combine_chunks()
        dtype = np.dtype(column.dtype)
        if column.per_item:
            values = data.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
            per_column[column.name] = [values[i] for i in range(n)]
            continue
        offsets = data.offsets.to_numpy()
        flat = data.values.to_numpy(zero_copy_only=False)
        width = int(np.prod(column.trailing, dtype=np.int64)) if column.trailing else 1
        per_column[column.name] = [
            flat[offsets[i] : offsets[i + 1]].reshape(-1, *column.trailing)
            if width
            else np.empty((0, *column.trailing), dtype)
            for i in range(n)
        ]
    return [_nest(layout, {k: v[i] for k, v in per_column.items()}) for i in range(n)]


def _flat_row(item: dict[str, dict[str, Any]], layout: Sequence[Column]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column in layout:
        value = item[column.group][column.array]
        row[column.name] = value if column.per_item else np.ascontiguousarray(value).reshape(-1)
    return row


def _arrow_schema(layout: Sequence[Column]) -> Any:
    import pyarrow as pa

    fields = [pa.field("name", pa.string())]
    for column in layout:
        scalar = pa.from_numpy_dtype(np.dtype(column.dtype))
        fields.append(pa.field(column.name, scalar if column.per_item else pa.list_(scalar)))
    return pa.schema(fields)


# ---------------------------------------------------------------------------- building
def _tree_bytes(path: str) -> dict[str, int]:
    """Bytes of the files under ``path`` (or of the file), and bytes allocated on disk."""
    paths = [path] if os.path.isfile(path) else []
    for root, _, files in os.walk(path):
        paths.extend(os.path.join(root, f) for f in files)
    stats = [os.stat(p) for p in paths]
    return {
        "bytes": sum(s.st_size for s in stats),
        "allocated_bytes": sum(s.st_blocks * 512 for s in stats),
        "files": len(stats),
    }


class _SourceItems:
    """The dataset's items in code order, timing the reads (left out of build times)."""

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self.read_s = 0.0
        with DatasetReader(dataset) as reader:
            self.n_items = reader.n_items

    def __iter__(self) -> Iterator[tuple[int, str, dict[str, dict[str, Any]]]]:
        with DatasetReader(self.dataset, cache_bytes=0) as reader:
            for code in range(reader.n_items):
                t = time.perf_counter()
                item = reader.read_item(code)
                self.read_s += time.perf_counter() - t
                yield code, reader.item_names[code], item


def build_lance(source: _SourceItems, layout: Sequence[Column], out: str, version: str) -> None:
    import lance
    import pyarrow as pa

    schema = _arrow_schema(layout)

    def batches() -> Iterator[Any]:
        rows: list[dict[str, Any]] = []
        for _, name, item in source:
            rows.append({"name": name, **_flat_row(item, layout)})
            if len(rows) == 16:
                yield pa.RecordBatch.from_pylist(rows, schema=schema)
                rows = []
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=schema)

    reader = pa.RecordBatchReader.from_batches(schema, batches())
    lance.write_dataset(reader, out, data_storage_version=version)


def _hf_features(layout: Sequence[Column]) -> Any:
    import datasets

    features: dict[str, Any] = {"name": datasets.Value("string")}
    for column in layout:
        value = datasets.Value(np.dtype(column.dtype).name)
        features[column.name] = value if column.per_item else datasets.Sequence(value)
    return datasets.Features(features)


def _hf_rows(source: _SourceItems, layout: Sequence[Column]) -> Iterator[dict[str, Any]]:
    for _, name, item in source:
        yield {"name": name, **_flat_row(item, layout)}


def build_hf(source: _SourceItems, layout: Sequence[Column], out: str) -> None:
    import datasets

    datasets.disable_progress_bars()  # type: ignore[no-untyped-call]
    cache = out + ".cache"
    try:
        ds = datasets.Dataset.from_generator(
            _hf_rows,
            features=_hf_features(layout),
            cache_dir=cache,
            # A list in gen_kwargs would be split into shards, one element each.
            gen_kwargs={"source": source, "layout": tuple(layout)},
            # Rows are held as Python lists until written: the default (1,000 rows) took
            # 24 GB for 1,200 items and was killed for want of memory.
            writer_batch_size=16,
        )
        if len(ds) != source.n_items:
            raise BenchError(f"Hugging Face wrote {len(ds)} rows for {source.n_items} items")
        ds.save_to_disk(out)
        del ds
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def build_npy(source: _SourceItems, layout: Sequence[Column], out: str) -> None:
    names = []
    for code, name, item in source:
        names.append(name)
        folder = os.path.join(out, f"{code:07d}")
        os.makedirs(folder)
        for column in layout:
            path = os.path.join(folder, f"{column.group}.{column.array}.npy")
            np.save(path, np.asarray(item[column.group][column.array]))
    with open(os.path.join(out, "names.json"), "w") as fh:
        json.dump(names, fh)


@dataclass
class Built:
    """Where the contenders are, and what building them took."""

    root: str
    flow: str
    dataset: str
    layout: list[Column]
    builds: dict[str, dict[str, Any]]

    def path(self, contender: str) -> str:
        return {
            "cadstore": os.path.dirname(self.dataset),
            "lance": os.path.join(self.root, "lance"),
            "hf": os.path.join(self.root, "hf"),
            "npy": os.path.join(self.root, "npy"),
        }[contender]


#: The merged layout the cached cadstore dataset was written with: a dataset cached by an
#: earlier layout is merged again (the peers, built from the decoded items, are kept).
CADSTORE_LAYOUT = f"inner-256k-face-pairs-zstd{FACE_PAIR_LEVEL}-small-rows-stored"


def build(workdir: str, n_items: int, seed: int, lance_version: str) -> Built:
    """Build (or reuse) every contender from the same items."""
    root = os.path.join(workdir, f"training-seed{seed}-n{n_items}-lance{lance_version}")
    os.makedirs(root, exist_ok=True)
    record = os.path.join(root, "builds.json")
    builds: dict[str, dict[str, Any]] = {}
    if os.path.exists(record):
        with open(record) as fh:
            builds = json.load(fh)
    out_dir = os.path.join(root, "cadstore")
    flow = os.path.join(out_dir, "parts.flow")
    dataset = os.path.join(out_dir, "parts.dataset")
    stale = builds.get("cadstore", {}).get("layout") != CADSTORE_LAYOUT
    if "cadstore" not in builds or stale or not os.path.exists(flow):
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        files = write_workload(os.path.join(workdir, f"items-seed{seed}"), n_items, seed)
        t = time.perf_counter()
        cadstore.merge(files, dataset, workers=None, overwrite=True)
        builds["cadstore"] = {
            "build_s": time.perf_counter() - t,
            "how": "cadstore.merge",
            "layout": CADSTORE_LAYOUT,
        }
        raw = sum(os.path.getsize(f) for f in files)
        builds["cadstore"]["item_files_bytes"] = raw
    with DatasetReader(dataset) as reader:
        layout = layout_of(reader)
    builders: dict[str, Callable[[_SourceItems, str], None]] = {
        "lance": lambda s, o: build_lance(s, layout, o, lance_version),
        "hf": lambda s, o: build_hf(s, layout, o),
        "npy": lambda s, o: build_npy(s, layout, o),
    }
    built = Built(root, flow, dataset, layout, builds)
    for name, make in builders.items():
        out = built.path(name)
        if name in builds and os.path.exists(out):
            continue
        shutil.rmtree(out, ignore_errors=True)
        source = _SourceItems(dataset)
        print(f"building {name} ...", file=sys.stderr)
        t = time.perf_counter()
        make(source, out)
        total = time.perf_counter() - t
        builds[name] = {
            "build_s": total - source.read_s,
            "source_read_s": source.read_s,
            "how": "written from the decoded items (their reading left out)",
        }
    for name in CONTENDERS:
        builds[name].update(_tree_bytes(built.path(name)))
    with open(record, "w") as fh:
        json.dump(builds, fh, indent=1)
    return built


def warm(built: Built) -> None:
    """Read every file of every contender once: the page cache then holds all alike."""
    for name in CONTENDERS:
        for root, _, files in os.walk(built.path(name)):
            for f in files:
                with open(os.path.join(root, f), "rb") as fh:
                    while fh.read(1 << 24):
                        pass


# ---------------------------------------------------------------------------- readers
class Reader:
    """One contender's reads: whole items, batches of items, collated batches."""

    name = ""

    def read_item(self, code: int, groups: Sequence[str] | None) -> dict[str, Any]:
        raise NotImplementedError

    def read_items(self, codes: Sequence[int], groups: Sequence[str] | None) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CadstoreReader(Reader):
    name = "cadstore"

    def __init__(self, dataset: str, cache_bytes: int | None = None) -> None:
        kwargs = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
        self.reader = DatasetReader(dataset, **kwargs)

    def read_item(self, code: int, groups: Sequence[str] | None) -> dict[str, Any]:
        return self.reader.read_item(code, groups)

    def read_items(self, codes: Sequence[int], groups: Sequence[str] | None) -> list[Any]:
        return list(self.reader.read_items(list(codes), groups))

    def close(self) -> None:
        self.reader.close()


class LanceReader(Reader):
    name = "lance"

    def __init__(self, path: str, layout: Sequence[Column]) -> None:
        import lance

        self.ds = lance.dataset(path)
        self.layout = list(layout)

    def read_items(self, codes: Sequence[int], groups: Sequence[str] | None) -> list[Any]:
        layout = _selected(self.layout, groups)
        table = self.ds.take(list(codes), columns=[c.name for c in layout])
        return items_from_arrow(table, layout)

    def read_item(self, code: int, groups: Sequence[str] | None) -> dict[str, Any]:
        item: dict[str, Any] = self.read_items([code], groups)[0]
        return item


class HFReader(Reader):
    name = "hf"

    def __init__(self, path: str, layout: Sequence[Column]) -> None:
        import datasets

        self.full = datasets.load_from_disk(path).with_format("arrow")
        self.layout = list(layout)
        self._views: dict[Any, Any] = {}

    def _view(self, groups: Sequence[str] | None) -> tuple[Any, list[Column]]:
        key = None if groups is None else tuple(groups)
        layout = _selected(self.layout, groups)
        if key not in self._views:
            self._views[key] = self.full.select_columns([c.name for c in layout])
        return self._views[key], layout

    def read_items(self, codes: Sequence[int], groups: Sequence[str] | None) -> list[Any]:
        ds, layout = self._view(groups)
        return items_from_arrow(ds[list(codes)], layout)

    def read_item(self, code: int, groups: Sequence[str] | None) -> dict[str, Any]:
        ds, layout = self._view(groups)
        item: dict[str, Any] = items_from_arrow(ds[int(code)], layout)[0]
        return item


class NpyReader(Reader):
    name = "npy"

    def __init__(self, path: str, layout: Sequence[Column]) -> None:
        self.path = path
        self.layout = list(layout)

    def read_item(self, code: int, groups: Sequence[str] | None) -> dict[str, Any]:
        folder = os.path.join(self.path, f"{code:07d}")
        item: dict[str, dict[str, Any]] = {}
        for column in _selected(self.layout, groups):
            value = np.load(os.path.join(folder, f"{column.group}.{column.array}.npy"))
            item.setdefault(column.group, {})[column.array] = (
                value[()] if column.per_item else value
            )
        return item

    def read_items(self, codes: Sequence[int], groups: Sequence[str] | None) -> list[Any]:
        return [self.read_item(c, groups) for c in codes]


def open_reader(built: Built, name: str, **kwargs: Any) -> Reader:
    if name == "cadstore":
        return CadstoreReader(built.dataset, **kwargs)
    cls = {"lance": LanceReader, "hf": HFReader, "npy": NpyReader}[name]
    reader: Reader = cls(built.path(name), built.layout)
    return reader


def _names(built: Built) -> list[str]:
    with open(os.path.join(built.path("npy"), "names.json")) as fh:
        names: list[str] = json.load(fh)
    return names


# ---------------------------------------------------------------------------- torch paths
def cadstore_torch(flow: str, groups: Sequence[str] | None) -> tuple[Any, Any, Any]:
    """The ``train`` subset's torch dataset and collate: ``(loader, dataset, collate)``.

    Uses ``CADDataset.to_torch_with_collate()`` (the form that decodes whole batches into
    one tensor per array); leave ``loader``'s context (``__exit__``) when done.
    """
    loader = DatasetLoader(flow_output_file=flow, groups=groups, labels=[])
    loader.split("face_types", "faces", 0.8, 0.1, 0.1, random_state=0)
    dataset, collate = loader.get_dataset("train").to_torch_with_collate()
    return loader, dataset, collate


class PeerTorchDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A map-style torch dataset over a peer; ``__getitems__`` reads a batch at once.

    It pickles as paths and codes; each process opens the peer on first read.
    """

    def __init__(
        self,
        kind: str,
        path: str,
        layout: list[Column],
        codes: np.ndarray,
        groups: Sequence[str] | None,
        names: list[str],
    ) -> None:
        self.kind, self.path, self.layout = kind, path, layout
        self.codes = np.asarray(codes, dtype=np.int64)
        self.groups = groups
        self.names = names
        self._reader: Reader | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None, "_pid": -1}

    def _open(self) -> Reader:
        if self._reader is None or self._pid != os.getpid():
            cls = {"lance": LanceReader, "hf": HFReader, "npy": NpyReader}[self.kind]
            self._reader = cls(self.path, self.layout)
            self._pid = os.getpid()
        return self._reader

    def __len__(self) -> int:
        return len(self.codes)

    def read_codes(self, codes: Sequence[int]) -> list[Any]:
        """The items of ``codes`` (item codes, not positions), as a batch."""
        items = self._open().read_items(codes, self.groups)
        return [
            {"file_id_code": c, "name": self.names[c], **item}
            for c, item in zip(codes, items, strict=True)
        ]

    def __getitems__(self, positions: Sequence[int]) -> list[Any]:
        return self.read_codes([int(self.codes[p]) for p in positions])

    def __getitem__(self, position: int) -> Any:
        return self.__getitems__([position])[0]


# ---------------------------------------------------------------------------- measures
def time_random_items(reader: Reader, codes: Iterable[int], groups: Any) -> list[float]:
    """ms per read of each item, one read each."""
    out = []
    for code in codes:
        t = time.perf_counter()
        reader.read_item(int(code), groups)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def time_batches(reader: Reader, batches: Iterable[Sequence[int]], groups: Any) -> list[float]:
    """ms per item of each batch read."""
    out = []
    for codes in batches:
        t = time.perf_counter()
        reader.read_items(list(codes), groups)
        out.append((time.perf_counter() - t) * 1e3 / len(codes))
    return out


def _count(batch: Any) -> int:
    return len(batch["file_id_code"])


def dataloader_rate(
    dataset: Any, collate: Any, seed: int, context: str | None = None
) -> dict[str, Any]:
    """Items/s of one epoch through DataLoader(num_workers=2, batch 32, shuffle).

    Wall time from creating the loader to the last batch (worker start-up included), and
    the rate after the first batch. ``context`` is the workers' start method (default:
    fork on Linux; Lance, not fork-safe once used in the parent, needs spawn).

    Also the user and system CPU time the epoch took per item, of this process (its
    threads) and of the workers (:class:`EpochCpu`): on a machine whose speed varies
    from one epoch to the next, what each item costs varies far less than the rate
    (``docs/benchmarks.md``).
    """
    clock = EpochCpu()
    t = time.perf_counter()
    batches = peer_worker_loader(dataset, collate, seed, context, persistent=False)
    seen = 0
    first = 0.0
    for batch in batches:
        if not seen:
            first = time.perf_counter() - t
        seen += _count(batch)
    seconds = time.perf_counter() - t
    cpu = clock.per_item(seen)  # the epoch's end joined (reaped) its workers
    return {
        "items": seen,
        "seconds": seconds,
        "items_per_s": seen / seconds,
        "first_batch_s": first,
        "items_per_s_after_first_batch": (seen - BATCH) / max(seconds - first, 1e-9),
        **cpu,
    }


def worker_epochs_rate(make: Callable[[], Any]) -> dict[str, float]:
    """Items/s of the second of two epochs through worker processes kept between epochs.

    ``make()`` gives the batches (an iterable that starts its workers on first use and
    keeps them: cadstore's ``BatchLoader(processes=2)``, a peer's ``DataLoader`` with
    ``persistent_workers=True``). Training runs many epochs; the first (worker start-up,
    buffers created) is recorded too.
    """
    batches = make()
    try:
        return two_epochs(batches, batches)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def start_method(contender: str) -> str | None:
    """The start method of ``contender``'s ``DataLoader`` workers: spawn for Lance (not
    fork-safe once used in the parent), the platform's default (fork) for the others."""
    return "spawn" if contender == "lance" else None


def peer_worker_loader(
    dataset: Any, collate: Any, seed: int, context: str | None, *, persistent: bool = True
) -> Any:
    """``DataLoader(num_workers=2, batch 32, shuffle)``, its workers kept between epochs
    unless ``persistent`` is false."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
        multiprocessing_context=context,
        persistent_workers=persistent,
        timeout=300,  # a stuck worker fails the run instead of hanging it
    )


def pool_batches(make: Callable[[np.ndarray], Any], plan: Sequence[np.ndarray]) -> Iterator[Any]:
    """Batches of ``plan`` made by ``THREADS`` threads, ``PREFETCH`` ahead, in order."""
    with cf.ThreadPoolExecutor(THREADS) as pool:
        pending: deque[cf.Future[Any]] = deque()
        todo = iter(plan)
        for codes in todo:
            pending.append(pool.submit(make, codes))
            if len(pending) >= THREADS + PREFETCH:
                break
        while pending:
            batch = pending.popleft().result()
            following = next(todo, None)
            if following is not None:
                pending.append(pool.submit(make, following))
            yield batch


def two_epochs(first: Iterable[Any], second: Iterable[Any]) -> dict[str, float]:
    """Items/s of the second of two epochs read one after the other (training runs many;
    the first, whose reads find nothing cached yet, is kept as ``first_epoch_items_per_s``)."""
    before = inprocess_rate(first)
    return {**inprocess_rate(second), "first_epoch_items_per_s": before["items_per_s"]}


def inprocess_rate(batches: Iterable[Any]) -> dict[str, float]:
    t = time.perf_counter()
    seen = sum(_count(b) for b in batches)
    seconds = time.perf_counter() - t
    return {"items": seen, "seconds": seconds, "items_per_s": seen / seconds}


def epoch_plan(codes: np.ndarray, seed: int) -> list[np.ndarray]:
    order = codes[np.random.default_rng(seed).permutation(len(codes))]
    return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]


# ---------------------------------------------------------------------------- checks
def _same(expected: Any, actual: Any, where: str) -> None:
    a, b = np.asarray(expected), np.asarray(actual)
    if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
        raise BenchError(f"{where}: {b.dtype}{b.shape} differs from cadstore's {a.dtype}{a.shape}")


def _same_item(expected: dict[str, Any], actual: dict[str, Any], where: str) -> None:
    groups = [g for g in expected if isinstance(expected[g], dict)]
    mine = [g for g in actual if isinstance(actual[g], dict)]
    if sorted(groups) != sorted(mine):
        raise BenchError(f"{where}: groups {sorted(mine)}, cadstore has {sorted(groups)}")
    for group in groups:
        if sorted(expected[group]) != sorted(actual[group]):
            raise BenchError(f"{where}: arrays of {group} differ from cadstore's")
        for array in expected[group]:
            _same(expected[group][array], actual[group][array], f"{where} {group}/{array}")


def _same_batch(expected: dict[str, Any], actual: dict[str, Any], where: str) -> None:
    for key, value in expected.items():
        if isinstance(value, dict) and key not in ("ptr", "labels"):
            for array, tensor in value.items():
                _same(tensor.numpy(), actual[key][array].numpy(), f"{where} {key}/{array}")
    for key in ("edge_index", "batch", "num_nodes", "file_id_code"):
        if key in expected:
            _same(expected[key].numpy(), actual[key].numpy(), f"{where} {key}")


def verify(built: Built, readers: dict[str, Reader], codes: Sequence[int]) -> int:
    """Check every peer's items and collated batches against cadstore's; return the count."""
    reference = CadstoreReader(built.dataset)
    collate = GraphCollate()
    names = _names(built)
    checked = 0
    try:
        for name, reader in readers.items():
            for code in codes:
                want = reference.read_item(code, None)
                _same_item(want, reader.read_item(code, None), f"{name} item {code}")
                checked += 1
            got = reader.read_items(codes, None)
            for code, item in zip(codes, got, strict=True):
                _same_item(reference.read_item(code, None), item, f"{name} batch item {code}")
            want_batch = collate(
                [
                    {"file_id_code": c, "name": names[c], **reference.read_item(c, None)}
                    for c in codes
                ]
            )
            got_batch = collate(
                [
                    {"file_id_code": c, "name": names[c], **it}
                    for c, it in zip(codes, got, strict=True)
                ]
            )
            _same_batch(want_batch, got_batch, f"{name} collated batch")
    finally:
        reference.close()
    return checked


# ---------------------------------------------------------------------------- run
def _rotated(names: Sequence[str], turn: int) -> list[str]:
    k = turn % len(names)
    return [*names[k:], *names[:k]]


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _cpu_summary(epochs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Medians over ``DataLoader`` epochs of the CPU ms per item (:class:`EpochCpu`): in
    all (training process and workers), of the workers, and of their user and system
    time apart (the user time is the decoding or copying, the system time mostly the
    kernel's cost for shared memory, which varies with the machine)."""

    def median(cpu: Callable[[dict[str, Any]], float]) -> float:
        return _median([cpu(epoch) for epoch in epochs])

    workers = "worker_cpu_ms_per_item"
    return {
        "cpu_per_item_ms": median(lambda e: total(e["main_cpu_ms_per_item"]) + total(e[workers])),
        "workers_cpu_per_item_ms": median(lambda e: total(e[workers])),
        "workers_user_cpu_per_item_ms": median(lambda e: e[workers]["user"]),
        "workers_system_cpu_per_item_ms": median(lambda e: e[workers]["system"]),
    }


def run(
    built: Built,
    *,
    repeats: int,
    samples: int,
    batches: int,
    seed: int,
    measures: Sequence[str] = MEASURES,
    worker_context: str | None = None,
) -> dict[str, Any]:
    """Every measure for every contender, ``repeats`` times, contenders taking turns.

    ``worker_context`` is the start method of cadstore's worker processes (``None``: the
    platform's, fork on Linux).
    """
    all_groups = groups_of(built.layout)
    variants: dict[str, list[str] | None] = {
        "all": None,
        "graph": [g for g in all_groups if g != FACEFACE],
    }
    names = _names(built)
    n_items = len(names)
    readers: dict[str, Reader] = {name: open_reader(built, name) for name in CONTENDERS}
    readers["cadstore (cache off)"] = CadstoreReader(built.dataset, cache_bytes=0)
    raw: dict[str, dict[str, dict[str, list[Any]]]] = {}

    def record(measure: str, variant: str, contender: str, value: Any) -> None:
        raw.setdefault(measure, {}).setdefault(variant, {}).setdefault(contender, []).append(value)

    rng = np.random.default_rng(seed)
    check_codes = rng.choice(n_items, min(8, n_items), replace=False).tolist()
    checked = verify(built, {k: v for k, v in readers.items() if k != "cadstore"}, check_codes)

    torch_sets: dict[str, dict[str, tuple[Any, Any, Any]]] = {}
    for variant, groups in variants.items():
        loader, dataset, collate = cadstore_torch(built.flow, groups)
        torch_sets[variant] = {"cadstore": (loader, dataset, collate)}
        for name in ("lance", "hf", "npy"):
            peer = PeerTorchDataset(
                name, built.path(name), built.layout, dataset.indices, groups, names
            )
            torch_sets[variant][name] = (None, peer, GraphCollate())
    train_codes = torch_sets["all"]["cadstore"][1].indices

    try:
        if "dataloader" in measures:
            # The process's first DataLoader sets up torch's worker machinery (the thread
            # that shares memory with workers, the kept blocks' board) for every later
            # one: an untimed epoch of a few items, so that the contender measured first
            # does not pay for it.
            few_codes = torch_sets["graph"]["npy"][1].codes[: 2 * BATCH]
            few = PeerTorchDataset(
                "npy", built.path("npy"), built.layout, few_codes, variants["graph"], names
            )
            dataloader_rate(few, GraphCollate(), seed - 2)
            # Each contender's first epoch in this process, with no blocks kept (see the
            # module docstring). Graph-only batches first: their blocks are too small to
            # be kept, so that the last epoch, of whole items, leaves kept the blocks every
            # repeat then finds.
            for variant in sorted(variants, key=lambda v: v != "graph"):
                for name in CONTENDERS:
                    release_kept_blocks()
                    _, dataset, collate = torch_sets[variant][name]
                    rate = dataloader_rate(dataset, collate, seed - 1, start_method(name))
                    record("dataloader_first", variant, name, rate)
        for turn in range(repeats):
            print(f"repeat {turn + 1} of {repeats}", file=sys.stderr)
            codes = rng.choice(n_items, min(samples, n_items), replace=False)
            batch_plan = [
                rng.choice(n_items, BATCH, replace=n_items < BATCH) for _ in range(batches)
            ]
            plan_seed = seed + turn
            for variant, groups in variants.items():
                if "item" in measures:
                    for name in _rotated([*CONTENDERS, "cadstore (cache off)"], turn):
                        ms = time_random_items(readers[name], codes, groups)
                        record("item", variant, name, ms)
                if "batch" in measures:
                    for name in _rotated(CONTENDERS, turn):
                        ms = time_batches(readers[name], batch_plan, groups)
                        record("batch", variant, name, ms)
                if "dataloader" in measures:
                    for name in _rotated(CONTENDERS, turn):
                        _, dataset, collate = torch_sets[variant][name]
                        rate = dataloader_rate(dataset, collate, plan_seed, start_method(name))
                        record("dataloader", variant, name, rate)
                if "inprocess" in measures:
                    plan = epoch_plan(train_codes, plan_seed)
                    for name in _rotated(CONTENDERS, turn):
                        if name == "cadstore":
                            dataset = torch_sets[variant]["cadstore"][1]
                            loader = BatchLoader(
                                dataset.source,
                                dataset.indices,
                                batch_size=BATCH,
                                threads=THREADS,
                                prefetch=PREFETCH,
                                seed=plan_seed,
                            )
                            with loader:  # its readers closed at the end
                                record("inprocess", variant, name, two_epochs(loader, loader))
                            # Its batch buffers (hundreds of MB) must not stay alive during
                            # the measures that follow (nor be inherited by forked workers).
                            del loader
                            continue
                        peer = torch_sets[variant][name][1]
                        collate = GraphCollate()

                        def make(
                            codes: np.ndarray, peer: Any = peer, collate: Any = collate
                        ) -> Any:
                            return collate(peer.read_codes(codes.tolist()))

                        again = epoch_plan(train_codes, plan_seed + 1)
                        record(
                            "inprocess",
                            variant,
                            name,
                            two_epochs(pool_batches(make, plan), pool_batches(make, again)),
                        )
                if "workers" in measures:
                    for name in _rotated(CONTENDERS, turn):
                        _, dataset, collate = torch_sets[variant][name]
                        make_workers: Callable[[], Any]
                        if name == "cadstore":
                            make_workers = functools.partial(
                                BatchLoader,
                                dataset.source,
                                dataset.indices,
                                batch_size=BATCH,
                                processes=THREADS,
                                prefetch=PREFETCH,
                                seed=plan_seed,
                                multiprocessing_context=worker_context,
                            )
                        else:
                            make_workers = functools.partial(
                                peer_worker_loader,
                                dataset,
                                collate,
                                plan_seed,
                                start_method(name),
                            )
                        record("workers", variant, name, worker_epochs_rate(make_workers))
    finally:
        for reader in readers.values():
            reader.close()
        for sets in torch_sets.values():
            loader = sets["cadstore"][0]
            loader.__exit__(None, None, None)
    return {"raw": raw, "verified_items": checked, "train_items": len(train_codes)}


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians over repeats of each repeat's median (ms) or rate (items/s)."""
    out: dict[str, Any] = {}
    for measure, variants in raw.items():
        for variant, contenders in variants.items():
            for name, repeats in contenders.items():
                cell = out.setdefault(measure, {}).setdefault(variant, {})
                if measure in ("item", "batch"):
                    medians = [_median(ms) for ms in repeats]
                    cell[name] = {
                        "median_ms": _median(medians),
                        "p95_ms": _median([float(np.percentile(ms, 95)) for ms in repeats]),
                        "repeat_medians_ms": medians,
                    }
                else:
                    rates = [r["items_per_s"] for r in repeats]
                    cell[name] = {"items_per_s": _median(rates), "repeat_items_per_s": rates}
                    if measure == "dataloader":
                        after = [r["items_per_s_after_first_batch"] for r in repeats]
                        cell[name]["items_per_s_after_first_batch"] = _median(after)
                        cell[name].update(_cpu_summary(repeats))
                    if measure in ("workers", "inprocess"):
                        first = [r["first_epoch_items_per_s"] for r in repeats]
                        cell[name]["first_epoch_items_per_s"] = _median(first)
    # Ratios: cadstore against each peer, > 1 where cadstore is faster.
    for measure, variants in out.items():
        for cells in variants.values():
            base = cells["cadstore"]
            for cell in cells.values():
                if measure in ("item", "batch"):
                    cell["cadstore_speedup"] = cell["median_ms"] / base["median_ms"]
                else:
                    cell["cadstore_speedup"] = base["items_per_s"] / cell["items_per_s"]
    return out


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for module in ("torch", "lance", "datasets", "pyarrow"):
        with contextlib.suppress(ImportError):
            out[module] = __import__(module).__version__
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out["cadstore_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    return out


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def report(results: dict[str, Any]) -> str:
    """A plain-text summary of the results."""
    lines = []
    s = results["summary"]
    rows = [
        ("random item, ms", "item", "median_ms"),
        ("batch of 32, ms per item", "batch", "median_ms"),
        ("DataLoader(2 workers), items/s", "dataloader", "items_per_s"),
        ("DataLoader, 1st epoch, items/s", "dataloader_first", "items_per_s"),
        ("in-process 2 threads, 2nd epoch, items/s", "inprocess", "items_per_s"),
        ("in-process 2 threads, 1st epoch, items/s", "inprocess", "first_epoch_items_per_s"),
        ("2 worker processes, 2nd epoch, items/s", "workers", "items_per_s"),
        ("2 worker processes, 1st epoch, items/s", "workers", "first_epoch_items_per_s"),
    ]
    names = [*CONTENDERS, "cadstore (cache off)"]
    lines.append(f"{'':42}" + "".join(f"{n:>22}" for n in names))
    for variant in ("all", "graph"):
        for label, measure, key in rows:
            cells = s.get(measure, {}).get(variant, {})
            text = "".join(f"{cells[n][key]:>22.2f}" if n in cells else f"{'':>22}" for n in names)
            lines.append(f"{label + ' (' + variant + ')':42}{text}")
    builds = results["builds"]
    lines.append(
        "size MB: "
        + ", ".join(f"{n} {builds[n]['bytes'] / 1e6:,.0f}" for n in CONTENDERS)
        + "; build s: "
        + ", ".join(f"{n} {builds[n]['build_s']:.1f}" for n in CONTENDERS)
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=300, help="random items per repeat")
    parser.add_argument("--batches", type=int, default=20, help="random batches per repeat")
    parser.add_argument("--lance-version", default="2.0", help="Lance data_storage_version")
    parser.add_argument(
        "--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "cadstore-bench")
    )
    parser.add_argument(
        "--measures",
        default=",".join(MEASURES),
        help="comma-separated subset of %(default)s (the tests use fewer)",
    )
    parser.add_argument(
        "--worker-context",
        choices=["fork", "spawn", "forkserver"],
        help="start method of cadstore's worker processes (default: the platform's)",
    )
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    measures = [m for m in args.measures.split(",") if m]
    if not set(measures) <= set(MEASURES):
        parser.error(f"--measures: choose among {', '.join(MEASURES)}")

    built = build(args.workdir, args.items, args.seed, args.lance_version)
    warm(built)
    load_before = _loadavg()
    started = time.time()
    measured = run(
        built,
        repeats=args.repeats,
        samples=args.samples,
        batches=args.batches,
        seed=args.seed,
        measures=measures,
        worker_context=args.worker_context,
    )
    results: dict[str, Any] = {
        "items": args.items,
        "train_items": measured["train_items"],
        "repeats": args.repeats,
        "samples": args.samples,
        "batches": args.batches,
        "batch_size": BATCH,
        "worker_context": args.worker_context,
        "threads": THREADS,
        "seed": args.seed,
        "lance_version": args.lance_version,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "versions": _versions(),
        "load_average_before": load_before,
        "load_average_after": _loadavg(),
        "seconds": time.time() - started,
        "os_cache_warmed": True,
        "verified_items": measured["verified_items"],
        "columns": [asdict(c) for c in built.layout],
        "builds": built.builds,
        "summary": summarise(measured["raw"]),
        "raw": measured["raw"],
    }
    print(report(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
