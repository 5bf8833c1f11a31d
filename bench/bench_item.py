"""Benchmark: write and read one encoded CAD item, cadstore against its peers, in one run.

Contenders (same items, taken in blocks of ten by each contender in turn, each block
starting with the next contender, so that machine noise hits all alike):

* ``cadstore-L<n>``: :class:`cadstore.OptStorage` at zstd level ``n``, long-distance
  matching on chunks of 128 KiB or more (all ``save_data``, metadata, ``compress_store``,
  ``close``), each item fsynced as it is published;
* ``cadstore-L<default> batch-synced``: the same at the default level the way
  ``cadstore encode`` writes: no working directory made per item
  (``working_directory=False``), published without fsync, and one ``syncfs`` after each
  block of ten makes them durable, its time shared among the block's items (the encoder
  syncs once per 512 items);
* ``spec_zarr2``: the specified design on the library the specification names,
  zarr-python 2.18 (``DirectoryStore``, Zstd 12, Delta on integers, ``_ARRAY_DIMENSIONS``,
  ``metadata.json``, then ``copy_store`` into a ``ZipStore``), run in a throwaway venv as
  a subprocess (``bench/_spec_zarr2.py``) that times each write itself; the reference of
  the headline ratios. Without the venv it is skipped, with the command that makes it
  (``--make-zarr2-env`` makes it);
* ``spec_design``: an emulation of the same design on zarr-python 3 writing format 2
  (kept for continuity with the earlier recorded runs);
* ``zarr_v3``: zarr-python 3 used directly (ZipStore, zstd 3);
* ``h5py``: one HDF5 file; ``npz``: ``numpy.savez_compressed``.

Items come from ``--source``: ``generated`` (:mod:`cadstore.synthetic`, realistic sizes)
or ``real`` (parametric parts built with OpenCascade and encoded by ``cadstore encode``,
see ``bench/_real_items.py``; cached in ``--cache`` between runs). Every contender writes
the same arrays and the same metadata.

For each it reports the median over items of: write time, whole-item read time, open and
read one array (``face_areas``), file size; and for cadstore the metadata and container
overhead (file bytes that are not chunk bytes, relative to chunk bytes). Ratios are to
``spec_zarr2`` (``*_vs_spec_zarr2``) and to ``spec_design`` (``*_vs_spec``) measured in the
same run.

Run from the repository root (``pip install -e '.[bench]'``)::

    python bench/bench_item.py --make-zarr2-env        # once: the zarr 2.18 venv
    python bench/bench_item.py --items 60 --runs 5 --json bench/results/item.json
    python bench/bench_item.py --source real --items 300 --json bench/results/item-real.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cadstore import OptStorage
from cadstore.io.publish import sync_file_system
from cadstore.storage.opt import DEFAULT_COMPRESSION_LEVEL
from cadstore.synthetic import iter_items, raw_nbytes, write_item

try:
    from bench import _peers
except ImportError:  # run as a script: bench/ itself is sys.path[0]
    import _peers  # type: ignore[no-redef]

READ_ONE_KEY = "face_areas"
#: Items each contender handles in a row before the next contender takes the same items.
BLOCK = 10
#: The fair reference: the specified design on zarr-python 2.18, in its own venv.
SPEC_ZARR2 = "spec_zarr2"
ZARR2_ENV = "/tmp/zarr2env"
ZARR2_PACKAGES = ("zarr==2.18.*", "numcodecs<0.16", "msgpack", "numpy")
ZARR2_SCRIPT = Path(__file__).resolve().parent / "_spec_zarr2.py"
DEFAULT_CACHE = os.path.join(tempfile.gettempdir(), "cadstore-bench-cache")


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
    #: Makes a block's writes durable at once (the encoder's batch durability), timed and
    #: shared among the block's items; ``None``: each write is durable by itself.
    sync: Callable[[str], None] | None = None


class Zarr2Contender(Contender):
    """The specified design on zarr-python 2.18, in a subprocess of the venv's Python.

    The subprocess (``bench/_spec_zarr2.py``) reads each block's items from the ``.npz`` and
    JSON inputs this process prepared, and times each write, read and read-one itself, so
    neither the pipe nor the loading is in its times.
    """

    def __init__(self, python: str, inputs: Mapping[int, tuple[str, str]]) -> None:
        super().__init__(SPEC_ZARR2, self._unused, self._unused, self._unused)
        self.inputs = inputs
        self.process = subprocess.Popen(
            [python, str(ZARR2_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.versions = self.ask({"op": "versions"})

    @staticmethod
    def _unused(*args: Any) -> Any:
        raise AssertionError("spec_zarr2 runs in its subprocess")

    def ask(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request, return the reply."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{ZARR2_SCRIPT.name} stopped (exit {self.process.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def run_block(self, block: Sequence[tuple[int, str]], workdir: str) -> list[str]:
        """Write, read and read one of each item of ``block``; record the times."""
        entries = [
            {
                "input": self.inputs[index][0],
                "meta": self.inputs[index][1],
                "stem": os.path.join(workdir, f"{self.name}-{index}-{name}"),
            }
            for index, name in block
        ]
        reply = self.ask({"op": "block", "items": entries, "read_one": READ_ONE_KEY})
        self.write_ms += reply["write_ms"]
        self.size += reply["size"]
        self.read_ms += reply["read_ms"]
        self.read_one_ms += reply["read_one_ms"]
        paths: list[str] = reply["paths"]
        return paths

    def verify(self, index: int, path: str) -> None:
        """Check with zarr 2 that ``path`` holds the arrays of input ``index``."""
        reply = self.ask({"op": "verify", "input": self.inputs[index][0], "path": path})
        if not reply.get("ok"):
            raise AssertionError(f"{SPEC_ZARR2}: {reply.get('error')}")

    def close(self) -> None:
        """End the subprocess."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


def zarr2_python(env: str) -> str | None:
    """The Python of the zarr 2.18 venv ``env``, or ``None`` (saying how to make it)."""
    python = os.path.join(env, "bin", "python")
    check = [python, "-c", "import zarr, numcodecs; assert zarr.__version__.startswith('2.18')"]
    if os.path.exists(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    packages = " ".join(f'"{p}"' for p in ZARR2_PACKAGES)
    print(
        f"{SPEC_ZARR2} skipped: no zarr-python 2.18 venv at {env}. Make it with\n"
        f"  python3 -m venv {env} && {env}/bin/pip install {packages}\n"
        "or run this bench with --make-zarr2-env.",
        file=sys.stderr,
    )
    return None


def make_zarr2_env(env: str) -> None:
    """Create the throwaway venv holding zarr-python 2.18."""
    subprocess.run([sys.executable, "-m", "venv", env], check=True)
    subprocess.run([os.path.join(env, "bin", "pip"), "install", *ZARR2_PACKAGES], check=True)


def prepare_inputs(
    items: Sequence[tuple[str, dict[str, Any], dict[str, Any]]], directory: str
) -> dict[int, tuple[str, str]]:
    """Write each item as ``<i>.npz`` (arrays, ``/``-joined keys) and ``<i>.json`` (metadata)."""
    os.makedirs(directory, exist_ok=True)
    inputs = {}
    for index, (_, item, metadata) in enumerate(items):
        npz, meta = (os.path.join(directory, f"{index}{ext}") for ext in (".npz", ".json"))
        np.savez(npz, **_peers.flatten(item))
        with open(meta, "w", encoding="utf-8") as fh:
            json.dump(metadata, fh)
        inputs[index] = (npz, meta)
    return inputs


#: Name suffix of the contender whose items are made durable per block, not per item.
BATCH_SYNCED = " batch-synced"


def cadstore_contender(level: int, batch: bool = False) -> Contender:
    """Return OptStorage at zstd ``level`` as a contender.

    With ``batch`` each item is written as ``cadstore encode`` writes it: without a
    working directory, published without fsync, and one ``syncfs`` after each block of
    :data:`BLOCK` items makes them durable (the encoder does once per 512 items): its time
    is shared among the block's items.
    """

    def write(stem: str, item: dict[str, Any], metadata: dict[str, Any]) -> str:
        store = stem + ".zarr"
        return write_item(
            store,
            item,
            metadata,
            compression_level=level,
            summary_dir=False,
            durable=not batch,
            working_directory=not batch,
        )

    def read(path: str) -> dict[str, Any]:
        with OptStorage(path[: -len(".data")]) as storage:
            return {key: storage.load_data(key) for key in storage.get_keys()}

    def read_one(path: str, key: str) -> Any:
        with OptStorage(path[: -len(".data")]) as storage:
            return storage.load_data(key)

    if batch:
        return Contender(
            f"cadstore-L{level}{BATCH_SYNCED}", write, read, read_one, sync=sync_file_system
        )
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


def run(
    items: Sequence[tuple[str, dict[str, Any], dict[str, Any]]],
    levels: Sequence[int],
    workdir: str,
    zarr2: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark on ``items`` and return the summary.

    ``zarr2`` is the Python of a zarr-python 2.18 venv: with it, ``spec_zarr2`` runs too.
    """
    contenders = [cadstore_contender(level) for level in levels]
    contenders.append(cadstore_contender(DEFAULT_COMPRESSION_LEVEL, batch=True))
    contenders += [Contender(p.name, p.write, p.read, p.read_one) for p in _peers.PEERS.values()]
    zarr2_contender = None
    if zarr2 is not None:
        inputs = prepare_inputs(items, os.path.join(workdir, "inputs"))
        zarr2_contender = Zarr2Contender(zarr2, inputs)
        contenders.insert(len(levels), zarr2_contender)
    try:
        _measure(contenders, items, workdir)
        # Check once per contender that what was read is what was written.
        last = len(items) - 1
        for c in contenders:
            _, item, _ = items[last]
            path = os.path.join(workdir, f"{c.name}-{last}-{items[last][0]}.zarr.data")
            if c is zarr2_contender:
                zarr2_contender.verify(last, path)
            elif c.name.startswith(("cadstore", "spec")):
                _peers.assert_items_equal(_plain(c.read(path)), _plain(item))
    finally:
        if zarr2_contender is not None:
            zarr2_contender.close()
    return _summary(contenders, items, zarr2_contender)


def _plain(item: Mapping[str, Any]) -> dict[str, Any]:
    """``item`` with numpy scalars as Python scalars (the encoder stores ``np.int32``
    scalars, which zarr-python reads back as Python ints)."""
    return {
        k: _plain(v) if isinstance(v, Mapping) else v.item() if isinstance(v, np.generic) else v
        for k, v in item.items()
    }


def _measure(
    contenders: Sequence[Contender],
    items: Sequence[tuple[str, dict[str, Any], dict[str, Any]]],
    workdir: str,
) -> None:
    # Warm-up: imports, first-call costs and the page cache are not what we measure.
    for c in contenders:
        if isinstance(c, Zarr2Contender):
            c.ask(
                {
                    "op": "block",
                    "items": [
                        {
                            "input": c.inputs[0][0],
                            "meta": c.inputs[0][1],
                            "stem": os.path.join(workdir, f"warm-{c.name}"),
                        }
                    ],
                    "read_one": READ_ONE_KEY,
                }
            )
            continue
        name, item, meta = items[0]
        path = c.write(os.path.join(workdir, f"warm-{c.name}"), item, meta)
        c.read(path)
        c.read_one(path, READ_ONE_KEY)
    # Items go in blocks of BLOCK: each contender writes a block, reads it back whole, then
    # opens each item for one array, before the next contender takes the same block. Every
    # contender meets the same machine noise, and runs its own code in a loop as a
    # pipeline would, rather than after another library has churned the CPU caches.
    # Contenders take turns going first (block k starts with contender k): on a disk, the
    # first writer after the others' blocks is slower through its whole block, and a fixed
    # order would charge that to one contender.
    for number, first in enumerate(range(0, len(items), BLOCK)):
        block = list(enumerate(items))[first : first + BLOCK]
        turn = number % len(contenders)
        for c in [*contenders[turn:], *contenders[:turn]]:
            if isinstance(c, Zarr2Contender):
                # Its subprocess syncs before each write too.
                c.run_block([(index, name) for index, (name, _, _) in block], workdir)
                continue
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
            sync = c.sync
            if sync is not None:
                ms, _ = _timed(lambda sync=sync: sync(workdir))
                share = ms / len(paths)
                c.write_ms[-len(paths) :] = [w + share for w in c.write_ms[-len(paths) :]]
            for path in paths:
                c.read_ms.append(_timed(lambda c=c, path=path: c.read(path))[0])
            for path in paths:
                c.read_one_ms.append(
                    _timed(lambda c=c, path=path: c.read_one(path, READ_ONE_KEY))[0]
                )


def _ratios(c: Contender, ref: Contender) -> dict[str, float]:
    """Per-item write speed-up (median of ratios) and total size, against ``ref``."""
    return {
        "speedup": statistics.median(r / w for r, w in zip(ref.write_ms, c.write_ms, strict=True)),
        "size": sum(c.size) / sum(ref.size),
    }


def _summary(
    contenders: Sequence[Contender],
    items: Sequence[tuple[str, dict[str, Any], dict[str, Any]]],
    zarr2: Zarr2Contender | None,
) -> dict[str, Any]:
    raw = [raw_nbytes(item) for _, item, _ in items]
    spec = next(c for c in contenders if c.name == "spec_design")
    summary: dict[str, Any] = {
        "items": len(items),
        "raw_bytes_median": statistics.median(raw),
        "faces_median": statistics.median(len(item["face_indices"]) for _, item, _ in items),
        "machine": (
            f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "reference": SPEC_ZARR2 if zarr2 is not None else "spec_design",
        "results": {},
    }
    if zarr2 is not None:
        summary["zarr2_versions"] = zarr2.versions
    for c in contenders:
        to_spec = _ratios(c, spec)
        entry = {
            "write_ms": statistics.median(c.write_ms),
            "write_ms_p90": float(np.percentile(c.write_ms, 90)),
            "write_ms_mean": statistics.fmean(c.write_ms),
            "read_ms": statistics.median(c.read_ms),
            "read_one_ms": statistics.median(c.read_one_ms),
            "file_kib": statistics.median(c.size) / 1024,
            "total_bytes": sum(c.size),
            "write_speedup_vs_spec": to_spec["speedup"],
            "size_vs_spec": to_spec["size"],
            "compression_ratio": sum(raw) / sum(c.size),
        }
        if zarr2 is not None:
            to_zarr2 = _ratios(c, zarr2)
            entry["write_speedup_vs_spec_zarr2"] = to_zarr2["speedup"]
            entry["size_vs_spec_zarr2"] = to_zarr2["size"]
            # Total time over total time: what a whole encode run would see.
            entry["total_write_speedup_vs_spec_zarr2"] = sum(zarr2.write_ms) / sum(c.write_ms)
        if c.chunk_bytes:
            entry["overhead_vs_chunks"] = sum(c.overhead) / sum(c.chunk_bytes)
            entry["overhead_vs_chunks_median_item"] = statistics.median(
                o / max(b, 1) for o, b in zip(c.overhead, c.chunk_bytes, strict=True)
            )
        summary["results"][c.name] = entry
    return summary


# Each run's figures kept beside the median run's (``runs`` in the JSON): enough to show
# how far the headline ratios move from one run to the next on the same items.
RUN_KEYS = (
    "write_ms",
    "write_speedup_vs_spec",
    "write_speedup_vs_spec_zarr2",
    "total_write_speedup_vs_spec_zarr2",
    "size_vs_spec_zarr2",
)


def median_run(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary of the run whose headline speed-up is the median of ``summaries``,
    with every run's :data:`RUN_KEYS` figures under ``runs``.

    The headline is the default level's batch-synced contender (as ``cadstore encode``
    writes) against the reference of the runs. The reference's own write time moves by a
    third from one run to the next on this VM while cadstore's stays steady, so a single
    run can land on either side of a target: the runs say how far. With an even number of
    runs the lower of the two middle ones is taken.
    """
    if len(summaries) == 1:
        return summaries[0]
    reference = summaries[0]["reference"]
    key = "write_speedup_vs_spec_zarr2" if reference == SPEC_ZARR2 else "write_speedup_vs_spec"
    headline = f"cadstore-L{DEFAULT_COMPRESSION_LEVEL}{BATCH_SYNCED}"
    order = sorted(range(len(summaries)), key=lambda i: summaries[i]["results"][headline][key])
    chosen = order[(len(order) - 1) // 2]
    summary = dict(summaries[chosen])
    summary["runs"] = [
        {
            "loadavg": s["loadavg"],
            "results": {
                name: {k: entry[k] for k in RUN_KEYS if k in entry}
                for name, entry in s["results"].items()
            },
        }
        for s in summaries
    ]
    summary["run_chosen"] = chosen
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
    ref = summary.get("reference", "spec_design")
    zarr2 = ref == SPEC_ZARR2
    lines = [
        f"{summary['items']} {summary.get('source', 'generated')} items (median "
        f"{summary['faces_median']:.0f} faces, {summary['raw_bytes_median'] / 1024:.0f} KiB "
        f"raw), {summary['machine']}",
        "",
        "| storage | write ms | read all ms | open + read one ms | file KiB | "
        + ("write speed-up vs spec_zarr2 | total size vs spec_zarr2 | " if zarr2 else "")
        + "write speed-up vs spec_design | total size vs spec_design | compression ratio | "
        "overhead |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if zarr2 else ""),
    ]
    if "fs_floor_ms" in summary:
        lines.insert(
            1,
            f"work directory {summary['workdir']}; file-system floor of one atomic publish "
            f"(mkdir, create, write 50 KB, fsync, rename, fsync dir, rmdir): "
            f"{summary['fs_floor_ms']:.2f} ms; load average before {summary.get('loadavg')}",
        )
    for name, r in summary["results"].items():
        overhead = f"{100 * r['overhead_vs_chunks']:.1f}%" if "overhead_vs_chunks" in r else ""
        headline = (
            f"{r['write_speedup_vs_spec_zarr2']:.1f}x | {r['size_vs_spec_zarr2']:.3f} | "
            if zarr2
            else ""
        )
        lines.append(
            f"| {name} | {r['write_ms']:.2f} | {r['read_ms']:.2f} | {r['read_one_ms']:.2f} | "
            f"{r['file_kib']:.1f} | {headline}{r['write_speedup_vs_spec']:.1f}x | "
            f"{r['size_vs_spec']:.3f} | {r['compression_ratio']:.1f} | {overhead} |"
        )
    return "\n".join(lines)


def load_items(
    source: str, n_items: int, seed: int, cache: str
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """The items of ``source``: ``generated`` (cadstore.synthetic) or ``real`` (encoder)."""
    if source == "generated":
        return list(iter_items(n_items, seed=seed))
    try:
        from bench import _real_items
    except ImportError:  # run as a script
        import _real_items  # type: ignore[no-redef]
    return _real_items.real_items(cache, n_items, seed=seed)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--source", choices=("generated", "real"), default="generated")
    parser.add_argument("--levels", type=int, nargs="+", default=[DEFAULT_COMPRESSION_LEVEL, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the summary to this file")
    parser.add_argument(
        "--dir",
        help="where to put the work directory (default: the system temp dir); /dev/shm "
        "takes the disk out of the measure",
    )
    parser.add_argument(
        "--cache",
        default=DEFAULT_CACHE,
        help="where --source real keeps its STEP files and encoded items between runs",
    )
    parser.add_argument("--zarr2-env", default=ZARR2_ENV, help="the zarr-python 2.18 venv")
    parser.add_argument(
        "--make-zarr2-env", action="store_true", help="create the zarr 2.18 venv first"
    )
    parser.add_argument(
        "--no-zarr2", action="store_true", help="leave the spec_zarr2 contender out"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="run the whole comparison this many times (each in a fresh work directory); "
        "the summary is the run of median speed-up, with every run's ratios kept",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be 1 or more")
    np.seterr(all="ignore")
    if args.make_zarr2_env:
        make_zarr2_env(args.zarr2_env)
    zarr2 = None if args.no_zarr2 else zarr2_python(args.zarr2_env)
    items = load_items(args.source, args.items, args.seed, args.cache)
    summaries = []
    for number in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="cadstore-bench-", dir=args.dir) as workdir:
            loadavg = os.getloadavg()
            summary = run(items, args.levels, workdir, zarr2)
            summary["source"] = args.source
            summary["seed"] = args.seed
            summary["loadavg"] = [round(v, 2) for v in loadavg]
            summary["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
            summary["workdir"] = workdir
            summary["fs_floor_ms"] = publish_floor_ms(workdir)
        if args.runs > 1:
            print(f"run {number + 1} of {args.runs}:\n{render(summary)}\n")
        summaries.append(summary)
    summary = median_run(summaries)
    print(render(summary))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
