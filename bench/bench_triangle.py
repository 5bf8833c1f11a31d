"""Upper-triangle storage of symmetric face-pair arrays against the full layout.

One run, same items (``cadstore.synthetic.write_workload(dir, 600)``): both layouts are
merged, then read alternately (full, triangle, full, ...) ``--repeats`` times: a random
item with a fresh reader (every group), and batches of 32 random items
(``read_items``). Medians over the repeats; the load average is recorded before and after,
since the machine's cores are shared.

Usage::

    PYTHONPATH=src python bench/bench_triangle.py --json bench/results/triangle.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import cadstore
from cadstore.dataset import DatasetReader
from cadstore.synthetic import write_workload

LAYOUTS = ("full", "auto")


def loadavg() -> list[float]:
    with open("/proc/loadavg") as fh:
        return [float(v) for v in fh.read().split()[:3]]


def face_pair_bytes(path: Path) -> int:
    """Stored bytes of a dataset's face-pair groups (``faceface`` and ``faceface_upper``)."""
    with DatasetReader(path, stored_layout=True) as reader:
        return sum(
            reader.stored_nbytes(g, a)
            for g in reader.groups
            if g.startswith("faceface")
            for a in reader.arrays(g)
        )


def _random_item_ms(path: Path, codes: np.ndarray) -> float:
    """Median ms to read one whole random item, each with a fresh reader (cold caches)."""
    times = []
    for code in codes:
        with DatasetReader(path) as reader:
            start = time.perf_counter()
            reader.read_item(int(code))
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _batch_ms_per_item(path: Path, batches: np.ndarray) -> float:
    """ms per item reading batches of random items with one reader."""
    with DatasetReader(path) as reader:
        start = time.perf_counter()
        for batch in batches:
            reader.read_items([int(c) for c in batch])
        return (time.perf_counter() - start) * 1e3 / batches.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-triangle-"))
    files = write_workload(root / "items", args.items)
    load_before = loadavg()
    merge_s: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    paths = {layout: root / f"{layout}.dataset" for layout in LAYOUTS}
    for _ in range(2):
        for layout in LAYOUTS:
            start = time.perf_counter()
            cadstore.merge(files, str(paths[layout]), face_pair_layout=layout, overwrite=True)
            merge_s[layout].append(time.perf_counter() - start)
    rng = np.random.default_rng(0)
    item_ms: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    batch_ms: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    for _ in range(args.repeats):
        codes = rng.integers(0, args.items, 200)
        batches = rng.integers(0, args.items, (20, 32))
        for layout in LAYOUTS:
            item_ms[layout].append(_random_item_ms(paths[layout], codes))
            batch_ms[layout].append(_batch_ms_per_item(paths[layout], batches))
    rows: dict[str, Any] = {}
    for layout in LAYOUTS:
        rows["triangle" if layout == "auto" else "full"] = {
            "dataset_bytes": os.path.getsize(paths[layout]),
            "face_pair_bytes": face_pair_bytes(paths[layout]),
            "merge_s": statistics.median(merge_s[layout]),
            "random_item_ms": statistics.median(item_ms[layout]),
            "batch32_ms_per_item": statistics.median(batch_ms[layout]),
            "random_item_ms_runs": item_ms[layout],
            "batch32_ms_per_item_runs": batch_ms[layout],
        }
    doc = {
        "items": args.items,
        "repeats": args.repeats,
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
