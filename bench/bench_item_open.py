"""Benchmark: opening an item of many arrays for appending (``OptStorage(mode="a")``).

Opening in mode ``"a"`` loads a published ``.data`` into a writable storage: every array's
metadata and chunks are carried over as they are stored. This was quadratic in the number
of arrays (each array looked through every key of the file); it is linear now, which
``tests/test_item_crash_safety.py`` checks by counting keys listed and members read.

For each size (``--arrays``, default 2,000, 4,000 and 8,000 arrays of 16 int32 values, in
one item published once) it times, as medians over ``--repeats`` runs:

* ``open_append_ms``: ``OptStorage(path, mode="a")`` and ``close()`` (nothing changed, so
  nothing is written);
* ``open_read_ms``: ``OptStorage(path, mode="r")``, reading nothing, for comparison;

and reports ``append_us_per_array`` (``open_append_ms`` per array: flat when opening is
linear) and the growth of ``open_append_ms`` from one size to the next (2.0 when linear for
sizes that double).

Run from the repository root::

    python bench/bench_item_open.py --json bench/results/item-open.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from cadstore import OptStorage


def write_item(directory: str, n_arrays: int) -> str:
    """Publish an item of ``n_arrays`` small arrays; return its store path."""
    store = os.path.join(directory, f"arrays{n_arrays}.zarr")
    with OptStorage(store, summary_dir=False, durable=False) as storage:
        for i in range(n_arrays):
            storage.save_data(f"a{i}", np.arange(16, dtype=np.int32) + i)
        storage.compress_store()
    return store


def time_open(store: str, mode: str, repeats: int) -> float:
    """Median milliseconds of opening ``store`` in ``mode`` and closing it."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        OptStorage(store, mode=mode, summary_dir=False).close()  # type: ignore[arg-type]
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrays", type=int, nargs="+", default=[2000, 4000, 8000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="bench/results/item-open.json")
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cadstore-item-open-") as scratch:
        for n in args.arrays:
            store = write_item(scratch, n)
            append_ms = time_open(store, "a", args.repeats)
            read_ms = time_open(store, "r", args.repeats)
            row = {
                "arrays": n,
                "file_kib": round(os.path.getsize(store + ".data") / 1024, 1),
                "open_append_ms": round(append_ms, 2),
                "open_read_ms": round(read_ms, 2),
                "append_us_per_array": round(1000.0 * append_ms / n, 2),
            }
            if rows:
                row["append_growth"] = round(append_ms / rows[-1]["open_append_ms"], 2)
            rows.append(row)
            print(row, flush=True)
    result = {
        "benchmark": "bench/bench_item_open.py",
        "repeats": args.repeats,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": f"{platform.machine()} {platform.system()}",
        },
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
