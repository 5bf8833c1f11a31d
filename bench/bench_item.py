"""Benchmark: write and read one encoded CAD item, cadstore against its peers, in one run.

Contenders (same items, taken in blocks of ten by each contender in turn, so that machine
noise hits all alike):

* ``cadstore-L<n>``: :class:`cadstore.OptStorage` at zstd level ``n``, long-distance
  matching on chunks of 128 KiB or more (all ``save_data``, metadata, ``compress_store``,
  ``close``);
* ``spec_design``: the specified design on zarr-python (Zarr v2 directory store, Zstd 12,
  Delta on integers, then copied into a zip);
* ``zarr_v3``: zarr-python 3 used directly (ZipStore, zstd 3);
* ``h5py``: one HDF5 file; ``npz``: ``numpy.savez_compressed``.

For each it reports the median over items of: write time, whole-item read time, open and
read one array (``face_areas``), file size; and for cadstore the metadata and container
overhead (file bytes that are not chunk bytes, relative to chunk bytes). Ratios are to
``spec_design`` measured in the same run.

Run from the repository root (``pip install -e '.[bench]'``)::

    python bench/bench_item.py --items 60 --json bench/results/item.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cadstore import OptStorage
from cadstore.storage.opt import DEFAULT_COMPRESSION_LEVEL
from cadstore.synthetic import iter_items, raw_nbytes, write_item

try:
    from bench import _peers
except ImportError:  # run as a script: bench/ itself is sys.path[0]
    import _peers  # type: ignore[no-redef]

READ_ONE_KEY = "face_areas"
#: Items each contender handles in a row before the next contender takes the same items.
BLOCK = 10


@dataclass
class Contender:
    """A storage under test and the measurements collected for it."""

    name: str
    write: Callable[[str, dict[str, Any], dict[str, Any]], str]
    read: Callable[[str], dict[str, Any]]
    read_one: Callable[[str, str], Any]
    write_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)
    read_one_ms: list[float] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    overhead: list[int] = field(default_factory=list)
    chunk_bytes: list[int] = field(default_factory=list)


def cadstore_contender(level: int) -> Contender:
    """Return OptStorage at zstd ``level`` as a contender."""

    def write(stem: str, item: dict[str, Any], metadata: dict[str, Any]) -> str:
        store = stem + ".zarr"
        return write_item(store, item, metadata, compression_level=level, summary_dir=False)

    def read(path: str) -> dict[str, Any]:
        with OptStorage(path[: -len(".data")]) as storage:
            return {key: storage.load_data(key) for key in storage.get_keys()}

    def read_one(path: str, key: str) -> Any:
        with OptStorage(path[: -len(".data")]) as storage:
            return storage.load_data(key)

    default = " (default)" if level == DEFAULT_COMPRESSION_LEVEL else ""
    return Contender(f"cadstore-L{level}{default}", write, read, read_one)


_METADATA_NAMES = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata", "metadata.json")


def _chunk_bytes(path: str) -> int:
    """Bytes of chunk members in a cadstore zip: everything but metadata documents."""
    with zipfile.ZipFile(path) as zf:
        return sum(
            i.compress_size
            for i in zf.infolist()
            if i.filename.rsplit("/", 1)[-1] not in _METADATA_NAMES
        )


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def run(n_items: int, levels: Sequence[int], seed: int, workdir: str) -> dict[str, Any]:
    """Run the benchmark and return the summary."""
    contenders = [cadstore_contender(level) for level in levels]
    contenders += [Contender(p.name, p.write, p.read, p.read_one) for p in _peers.PEERS.values()]
    items = list(iter_items(n_items, seed=seed))
    # Warm-up: imports, first-call costs and the page cache are not what we measure.
    for c in contenders:
        name, item, meta = items[0]
        path = c.write(os.path.join(workdir, f"warm-{c.name}"), item, meta)
        c.read(path)
        c.read_one(path, READ_ONE_KEY)
    # Items go in blocks of BLOCK: each contender writes a block, reads it back whole, then
    # opens each item for one array, before the next contender takes the same block. Every
    # contender meets the same machine noise, and runs its own code in a loop as a
    # pipeline would, rather than after another library has churned the CPU caches.
    for first in range(0, len(items), BLOCK):
        block = list(enumerate(items))[first : first + BLOCK]
        for c in contenders:
            paths = []
            for index, (name, item, meta) in block:
                stem = os.path.join(workdir, f"{c.name}-{index}-{name}")
                # Flush what earlier writers left dirty, untimed: otherwise an fsync pays
                # for the journal commit of files other contenders wrote without syncing.
                os.sync()
                ms, path = _timed(lambda c=c, stem=stem, i=item, m=meta: c.write(stem, i, m))
                c.write_ms.append(ms)
                c.size.append(os.path.getsize(path))
                paths.append(path)
                if c.name.startswith("cadstore"):
                    chunks = _chunk_bytes(path)
                    c.chunk_bytes.append(chunks)
                    c.overhead.append(os.path.getsize(path) - chunks)
            for path in paths:
                c.read_ms.append(_timed(lambda c=c, path=path: c.read(path))[0])
            for path in paths:
                c.read_one_ms.append(
                    _timed(lambda c=c, path=path: c.read_one(path, READ_ONE_KEY))[0]
                )
    # Check once per contender that what was read is what was written.
    for c in contenders:
        _, item, _ = items[-1]
        path = os.path.join(workdir, f"{c.name}-{len(items) - 1}-{items[-1][0]}")
        ext = ".zarr.data" if c.name.startswith(("cadstore", "spec")) else None
        if ext:
            _peers.assert_items_equal(c.read(path + ext), item)
    raw = [raw_nbytes(item) for _, item, _ in items]
    spec = next(c for c in contenders if c.name == "spec_design")
    summary: dict[str, Any] = {
        "items": n_items,
        "seed": seed,
        "raw_bytes_median": statistics.median(raw),
        "faces_median": statistics.median(len(item["face_indices"]) for _, item, _ in items),
        "machine": (
            f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "results": {},
    }
    for c in contenders:
        entry = {
            "write_ms": statistics.median(c.write_ms),
            "read_ms": statistics.median(c.read_ms),
            "read_one_ms": statistics.median(c.read_one_ms),
            "file_kib": statistics.median(c.size) / 1024,
            "total_bytes": sum(c.size),
            "write_speedup_vs_spec": statistics.median(
                s / w for s, w in zip(spec.write_ms, c.write_ms, strict=True)
            ),
            "size_vs_spec": sum(c.size) / sum(spec.size),
            "compression_ratio": sum(raw) / sum(c.size),
        }
        if c.chunk_bytes:
            entry["overhead_vs_chunks"] = sum(c.overhead) / sum(c.chunk_bytes)
            entry["overhead_vs_chunks_median_item"] = statistics.median(
                o / max(b, 1) for o, b in zip(c.overhead, c.chunk_bytes, strict=True)
            )
        summary["results"][c.name] = entry
    return summary


def publish_floor_ms(workdir: str, n: int = 60, size: int = 50_000) -> float:
    """Median ms of the file-system steps of one atomic publish, with no encoding at all.

    The steps every durable writer of a ``.data`` file takes: create the store directory,
    create a temporary file, write ``size`` bytes, fsync, rename, fsync the directory,
    remove the store directory. It is the floor under any item write on this disk.
    """
    payload = os.urandom(size)
    times = []
    for i in range(n):
        store, tmp, final = (os.path.join(workdir, f"floor-{i}{s}") for s in (".d", ".t", ".f"))
        t0 = time.perf_counter()
        os.mkdir(store)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, final)
        dfd = os.open(workdir, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        os.rmdir(store)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def render(summary: dict[str, Any]) -> str:
    """Format the summary as a Markdown table."""
    lines = [
        f"{summary['items']} realistic items (median {summary['faces_median']:.0f} faces, "
        f"{summary['raw_bytes_median'] / 1024:.0f} KiB raw), {summary['machine']}",
        "",
        "| storage | write ms | read all ms | open + read one ms | file KiB | "
        "write speed-up vs spec | total size vs spec | compression ratio | overhead |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if "fs_floor_ms" in summary:
        lines.insert(
            1,
            f"work directory {summary['workdir']}; file-system floor of one atomic publish "
            f"(mkdir, create, write 50 KB, fsync, rename, fsync dir, rmdir): "
            f"{summary['fs_floor_ms']:.2f} ms",
        )
    for name, r in summary["results"].items():
        overhead = f"{100 * r['overhead_vs_chunks']:.1f}%" if "overhead_vs_chunks" in r else ""
        lines.append(
            f"| {name} | {r['write_ms']:.2f} | {r['read_ms']:.2f} | {r['read_one_ms']:.2f} | "
            f"{r['file_kib']:.1f} | {r['write_speedup_vs_spec']:.1f}x | "
            f"{r['size_vs_spec']:.3f} | {r['compression_ratio']:.1f} | {overhead} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--levels", type=int, nargs="+", default=[DEFAULT_COMPRESSION_LEVEL, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the summary to this file")
    parser.add_argument(
        "--dir",
        help="where to put the work directory (default: the system temp dir); /dev/shm "
        "takes the disk out of the measure",
    )
    args = parser.parse_args(argv)
    np.seterr(all="ignore")
    with tempfile.TemporaryDirectory(prefix="cadstore-bench-", dir=args.dir) as workdir:
        summary = run(args.items, args.levels, args.seed, workdir)
        summary["workdir"] = workdir
        summary["fs_floor_ms"] = publish_floor_ms(workdir)
    print(render(summary))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
