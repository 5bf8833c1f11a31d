"""Benchmark: merging beyond one machine, against the local single-process merge.

In one run, on the same ``--items`` realistic items (``cadstore.synthetic``, the
items of ``bench_merge.py``, cached in ``--workdir``):

* ``local``: inputs and output on local disk, one process (``workers=0``);
* ``s3``: inputs and output on a local SeaweedFS server (``weed mini`` on loopback, started
  here as in the tests), one process: every item is read with ranged GETs and the dataset
  published with one upload;
* ``dask``: inputs and output on local disk, on a ``LocalCluster`` with 2 worker
  processes of 1 thread (scan and shard encoding on the workers, the driver writes);
* ``dask_s3``: the same cluster, inputs and output on the SeaweedFS server (the workers
  read the items from S3 themselves).

Every cluster merge is checked byte for byte against the local one. Throughput is raw
(decoded) item bytes per second of wall time, end to end including the scan. Then the
latency of reading one item from S3 through ``OptStorage`` on a warm connection: opening
it (central directory and metadata) plus one small array, and the whole item (also with
``mode="r"``, which looks for no working directory); medians.
Last, random items of the merged dataset on S3 through ``DatasetReader``, with its reads
batched (the default) and, in the same run, one request after another (batching switched
off here, as before it existed): median ms per item, and per item of batches of 32; for
the zip dataset and for the same items merged as a directory (one object per shard).

Run from the repository root (needs the ``test`` and ``dask`` extras)::

    python bench/bench_scale.py --items 300 --json bench/results/scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cadstore import OptStorage
from cadstore.dataset.reader import DatasetReader
from cadstore.io.sources import PrefixSource, ZipSource
from cadstore.merging import MergeResult, merge_items
from cadstore.synthetic import write_workload

BUCKET = "cadstore-bench"


def _row(name: str, result: MergeResult, seconds: float, **extra: Any) -> dict[str, Any]:
    row = {
        "merge": name,
        "items": len(result.items),
        "seconds": round(seconds, 3),
        "raw_mb": round(result.raw_bytes / 1e6, 1),
        "mb_per_s": round(result.raw_bytes / 1e6 / seconds, 1),
        "stored_mb": round(result.stored_bytes / 1e6, 1),
        **extra,
    }
    print(json.dumps(row), flush=True)
    return row


def _timed(files: list[str], out: str, **kwargs: Any) -> tuple[MergeResult, float]:
    started = time.perf_counter()
    result = merge_items(files, out, overwrite=True, **kwargs)
    return result, time.perf_counter() - started


def _read_latency(url: str, options: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median ms to open one item on S3 and read a small array, and to read all of it."""
    with OptStorage(url, storage_options=options) as storage:
        keys = storage.get_keys()
    one, whole, read_only = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        with OptStorage(url, storage_options=options) as storage:
            storage.load_data("face_areas")
        one.append(time.perf_counter() - t)
        t = time.perf_counter()
        with OptStorage(url, storage_options=options) as storage:
            for key in keys:
                storage.load_data(key)
        whole.append(time.perf_counter() - t)
        t = time.perf_counter()
        with OptStorage(url, storage_options=options, mode="r") as storage:
            for key in keys:
                storage.load_data(key)
        read_only.append(time.perf_counter() - t)
    return {
        "open_and_read_one_ms": round(statistics.median(one) * 1e3, 2),
        "read_whole_item_ms": round(statistics.median(whole) * 1e3, 2),
        "read_whole_item_mode_r_ms": round(statistics.median(read_only) * 1e3, 2),
        "repeats": repeats,
    }


@contextlib.contextmanager
def _one_request_at_a_time() -> Iterator[None]:
    """Make remote sources say they cannot batch reads: the reader then reads in turn."""
    saved = {cls: cls.__dict__["batches_reads"] for cls in (ZipSource, PrefixSource)}
    for cls in saved:
        cls.batches_reads = property(lambda self: False)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        for cls, batches in saved.items():
            cls.batches_reads = batches  # type: ignore[method-assign]


def _dataset_read_latency(
    url: str, options: dict[str, Any], n_items: int, samples: int, seed: int
) -> dict[str, Any]:
    """Random items of a merged dataset on S3: batched reads against one at a time."""
    codes = [int(c) for c in np.random.default_rng(seed).integers(0, n_items, samples)]
    out: dict[str, Any] = {}
    for label, mode in (
        ("one request at a time", _one_request_at_a_time),
        ("batched", contextlib.nullcontext),
    ):
        with mode(), DatasetReader(url, storage_options=options) as reader:
            reader.read_item(0)  # item names, offsets: read whole once either way
            each = []
            for code in codes:
                t = time.perf_counter()
                reader.read_item(code)
                each.append(time.perf_counter() - t)
        with mode(), DatasetReader(url, storage_options=options) as reader:
            reader.read_item(0)
            t = time.perf_counter()
            for start in range(0, samples, 32):
                reader.read_items(codes[start : start + 32])
            per_item = (time.perf_counter() - t) / samples
        out[label] = {
            "read_item_median_ms": round(statistics.median(each) * 1e3, 2),
            "read_items_32_ms_per_item": round(per_item * 1e3, 2),
        }
    out["speedup_read_item"] = round(
        out["one request at a time"]["read_item_median_ms"] / out["batched"]["read_item_median_ms"],
        2,
    )
    out["speedup_read_items"] = round(
        out["one request at a time"]["read_items_32_ms_per_item"]
        / out["batched"]["read_items_32_ms_per_item"],
        2,
    )
    out["samples"] = samples
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cadstore-bench"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", default="bench/results/scale.json")
    args = parser.parse_args()

    import distributed
    import s3fs

    from s3server import start_weed

    items_dir = os.path.join(args.workdir, f"items-seed{args.seed}")
    files = write_workload(items_dir, args.items, args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="cadstore-scale-"))
    server = start_weed(scratch / "weed")
    rows = []
    try:
        options = server.storage_options()
        client_fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        client_fs.mkdir(BUCKET)
        urls = []
        for path in files:
            url = f"s3://{BUCKET}/encoded/{os.path.basename(path)}"
            client_fs.put_file(path, url)
            urls.append(url)

        local_out = str(scratch / "local.dataset")
        result, seconds = _timed(files, local_out)
        rows.append(_row("local disk, 1 process", result, seconds))

        result, seconds = _timed(urls, f"s3://{BUCKET}/s3.dataset", storage_options=options)
        rows.append(_row("SeaweedFS in and out, 1 process", result, seconds))
        client_fs.get_file(f"s3://{BUCKET}/s3.dataset", str(scratch / "s3.dataset"))
        assert filecmp.cmp(scratch / "s3.dataset", local_out, shallow=False)

        started = time.perf_counter()
        with (
            distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",
                silence_logs=40,
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            startup = time.perf_counter() - started
            dask_out = str(scratch / "dask.dataset")
            result, seconds = _timed(files, dask_out, client=client)
            rows.append(
                _row(
                    "LocalCluster 2 workers, local disk",
                    result,
                    seconds,
                    startup_s=round(startup, 2),
                )
            )
            assert filecmp.cmp(dask_out, local_out, shallow=False)
            result, seconds = _timed(
                urls, f"s3://{BUCKET}/dask.dataset", storage_options=options, client=client
            )
            rows.append(_row("LocalCluster 2 workers, SeaweedFS in and out", result, seconds))

        latency = _read_latency(urls[len(urls) // 2][: -len(".data")], options, args.repeats)
        print(json.dumps(latency), flush=True)
        dataset_read = _dataset_read_latency(
            f"s3://{BUCKET}/s3.dataset", options, len(files), 128, args.seed
        )
        # The same items merged as a directory (one object per shard), uploaded as is.
        merge_items(files, str(scratch / "dir.dataset"), directory=True)
        client_fs.put(str(scratch / "dir.dataset"), f"s3://{BUCKET}/dir.dataset", recursive=True)
        dataset_read["directory layout"] = _dataset_read_latency(
            f"s3://{BUCKET}/dir.dataset", options, len(files), 128, args.seed
        )
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    doc = {
        "benchmark": "bench/bench_scale.py",
        "items": args.items,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": os.getloadavg(),
        "merges": rows,
        "s3_item_read": latency,
        "s3_dataset_item_read": dataset_read,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
