"""Inner-chunk size and face-pair zstd level of a merged dataset, chosen by measurement.

Issue 18 asks for the layout that reads what an item needs and nothing else, and the codec
per array group, by measurement. This script merges the same items
(``cadstore.synthetic.write_workload(dir, 1200)``, the items of ``bench_training.py``) in
several layouts, then reads them alternately, layout after layout, ``--repeats`` times:

* **random item, cache off**: one whole random item (every group) with a reader whose
  decoded-chunk cache is off (``cache_bytes=0``): what a first read decodes;
* **CPU per item**: CPU time of one thread (``time.thread_time``) per item, reading an
  epoch of 960 random items in batches of 32 with one reader after a first epoch: the
  cost of a read without the noise of a shared machine's wall clock;
* **2 threads**: items/s of two threads, each with its own reader (default cache), reading
  batches of 32 random items, over two epochs of 960 items; the second epoch is reported
  (the first, when the readers learn the chunks' frame tables, is kept in the JSON).

Also recorded: the dataset's size, its face-pair arrays' stored bytes and the merge time
(every core, the median of two merges). The load average is recorded before and after.

Usage::

    python bench/bench_chunking.py --json bench/results/chunking.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from cadstore.dataset import DatasetReader
from cadstore.merging import merge_items
from cadstore.merging.options import DEFAULT_INNER_BYTES, FACE_PAIR_LEVEL
from cadstore.synthetic import write_workload

try:
    from bench.bench_triangle import face_pair_bytes, loadavg
except ImportError:  # run as a script: bench/ itself is sys.path[0]
    from bench_triangle import face_pair_bytes, loadavg  # type: ignore[no-redef]

KIB = 1024
#: ``name: (inner bytes, face-pair zstd level)``; every other array at level 3.
LAYOUTS: dict[str, tuple[int, int]] = {
    "64 KiB, face pairs level 3 (before)": (64 * KIB, 3),
    **{
        f"{DEFAULT_INNER_BYTES // KIB} KiB, face pairs level {level}"
        + (" (default)" if level == FACE_PAIR_LEVEL else ""): (DEFAULT_INNER_BYTES, level)
        for level in sorted({5, 7, 9, 12, FACE_PAIR_LEVEL})
    },
}
BATCH = 32
EPOCH = 960


def random_item_ms(path: Path, codes: np.ndarray) -> list[float]:
    """ms per whole random item, the decoded-chunk cache off."""
    out = []
    with DatasetReader(path, cache_bytes=0) as reader:
        for code in codes:
            start = time.perf_counter()
            reader.read_item(int(code))
            out.append((time.perf_counter() - start) * 1e3)
    return out


def two_thread_rates(path: Path, n_items: int, seed: int) -> list[float]:
    """items/s of two threads (a reader each) over two epochs of random batches."""
    readers = [DatasetReader(path) for _ in range(2)]
    rates = []
    try:
        for epoch in range(2):
            order = np.random.default_rng(seed * 10 + epoch).permutation(n_items)[:EPOCH]
            halves = [order[k::2] for k in range(2)]

            def work(k: int, codes: np.ndarray) -> None:
                for i in range(0, len(codes), BATCH):
                    readers[k].read_items(codes[i : i + BATCH].tolist())

            threads = [threading.Thread(target=work, args=(k, h)) for k, h in enumerate(halves)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rates.append(EPOCH / (time.perf_counter() - start))
    finally:
        for reader in readers:
            reader.close()
    return rates


def cpu_ms_per_item(path: Path, n_items: int, seed: int) -> float:
    """CPU ms per item of one thread reading a second epoch of random batches."""
    with DatasetReader(path) as reader:
        for epoch in range(2):
            order = np.random.default_rng(seed * 10 + epoch).permutation(n_items)[:EPOCH]
            start = time.thread_time()
            for i in range(0, EPOCH, BATCH):
                reader.read_items(order[i : i + BATCH].tolist())
            spent = time.thread_time() - start
    return spent * 1e3 / EPOCH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=200, help="random items per repeat")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-chunking-"))
    files = write_workload(root / f"items-seed0-n{args.items}", args.items, 0)
    load_before = loadavg()
    paths = {name: root / f"layout{i}.dataset" for i, name in enumerate(LAYOUTS)}
    merge_s: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    for _ in range(2):
        for name, (inner, level) in LAYOUTS.items():
            start = time.perf_counter()
            merge_items(
                files,
                paths[name],
                inner_bytes=inner,
                face_pair_level=level,
                workers=None,
                overwrite=True,
            )
            merge_s[name].append(time.perf_counter() - start)
    rng = np.random.default_rng(0)
    item_ms: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    first: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    second: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    cpu: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    names = list(LAYOUTS)
    for turn in range(args.repeats):
        codes = rng.choice(args.items, args.samples, replace=False)
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            item_ms[name].extend(random_item_ms(paths[name], codes))
            cpu[name].append(cpu_ms_per_item(paths[name], args.items, turn))
            rates = two_thread_rates(paths[name], args.items, turn)
            first[name].append(rates[0])
            second[name].append(rates[1])
    rows: dict[str, Any] = {}
    for name, (inner, level) in LAYOUTS.items():
        rows[name] = {
            "inner_bytes": inner,
            "face_pair_level": level,
            "dataset_bytes": os.path.getsize(paths[name]),
            "face_pair_bytes": face_pair_bytes(paths[name]),
            "merge_s": statistics.median(merge_s[name]),
            "random_item_ms": statistics.median(item_ms[name]),
            "random_item_p95_ms": float(np.percentile(item_ms[name], 95)),
            "cpu_ms_per_item": statistics.median(cpu[name]),
            "cpu_ms_per_item_runs": cpu[name],
            "two_threads_items_per_s": statistics.median(second[name]),
            "two_threads_runs": second[name],
            "two_threads_first_epoch_runs": first[name],
        }
    doc = {
        "items": args.items,
        "repeats": args.repeats,
        "samples": args.samples,
        "epoch_items": EPOCH,
        "batch_size": BATCH,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "layouts": rows,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
