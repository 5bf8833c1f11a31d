"""Benchmark: exploring and loading a merged dataset (DatasetExplorer, DatasetLoader).

Builds a realistic workload (``cadstore.synthetic`` items written with
``OptStorage``, merged with ``cadstore.merge(workers=None)``; cached in ``--workdir``
between runs), then measures against the targets of issue 5:

* **random item**: all arrays of a random item (``DatasetReader.read_item``), over a
  sample of ``--samples`` items: read again right after a first read (the decoded-chunk
  cache is warm), and read after one warm-up pass over the whole sample (file pages in the
  OS cache, but the 64 MiB decoded-chunk cache is smaller than the sample, so the chunks
  are decoded again); and the same without the quadratic ``faceface`` group. Median, mean
  and p95; target <= 1 ms.
* **DataLoader**: items per second through ``torch.utils.data.DataLoader(num_workers=2,
  batch_size=32, shuffle=True)`` over one epoch of the training subset, with every group,
  and without the quadratic ``faceface`` group; wall time including worker start-up;
  target >= 1,000 items/s. For context, the rate at which a process fills fresh shared
  memory (where every worker batch must travel) and the items/s that alone allows.
* **file_dataset**: ``DatasetExplorer.file_dataset(code, "faces")`` against the approach of
  the specified system (vendor-system.md §3, "Read performance"): materialise the group
  with xarray/zarr-python and scan ``file_id_code_faces`` with numpy for the item's rows.
  Reported as a ratio of median times; target >= 50x. The bulk variant, where the group is
  already in memory and only the scan is paid per item, is shown for context.
* **create_distribution** over all items: ``face_areas`` with 10 bins, ``face_types``
  categorical, and the infoset column ``file_label``; target < 0.5 s.

Unless ``--cold`` is given, the dataset file is read once before measuring, so that the OS
page cache holds it and the numbers are CPU costs rather than disk reads.

Run from the repository root (``pip install -e '.[bench]'`` and ``torch==2.13.0``)::

    python bench/bench_dataset.py --items 10000 --json bench/results/dataset.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import cadstore
from cadstore.dataset.explorer import DatasetExplorer
from cadstore.dataset.loader import DatasetLoader
from cadstore.dataset.reader import DatasetReader
from cadstore.synthetic import write_workload

try:
    from bench._cpu import EpochCpu
except ImportError:  # run as a script: bench/ itself is sys.path[0]
    from _cpu import EpochCpu  # type: ignore[no-redef]

TARGET_ITEM_MS = 1.0
TARGET_ITEMS_PER_S = 1000.0
TARGET_RATIO = 50.0
TARGET_DISTRIBUTION_S = 0.5


# ---------------------------------------------------------------------------- workload
def build(workdir: str, n_items: int, seed: int) -> str:
    """Write the items and merge them (or reuse an earlier run); return the ``.flow``."""
    out_dir = os.path.join(workdir, f"dataset-seed{seed}-n{n_items}")
    flow = os.path.join(out_dir, "parts.flow")
    if os.path.exists(flow):
        print(f"reusing {flow}", file=sys.stderr)
        return flow
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    files = write_workload(os.path.join(workdir, f"items-seed{seed}"), n_items, seed)
    t1 = time.perf_counter()
    print(f"wrote {len(files)} items in {t1 - t0:.0f} s", file=sys.stderr)
    cadstore.merge(files, os.path.join(out_dir, "parts.dataset"), workers=None, overwrite=True)
    print(f"merged in {time.perf_counter() - t1:.0f} s", file=sys.stderr)
    return flow


# ---------------------------------------------------------------------------- measures
def _time_each(fn: Callable[[int], Any], codes: np.ndarray) -> list[float]:
    out = []
    for code in codes:
        t = time.perf_counter()
        fn(int(code))
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _summary(ms: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(ms),
        "mean_ms": statistics.fmean(ms),
        "p95_ms": float(np.percentile(ms, 95)),
    }


def _nbytes(item: dict[str, dict[str, Any]]) -> int:
    return sum(np.asarray(a).nbytes for arrays in item.values() for a in arrays.values())


def measure_random_item(dataset: str, n_items: int, samples: int, seed: int) -> dict[str, Any]:
    """Time reading random items: repeated, first read, and without the face pairs."""
    codes = np.random.default_rng(seed).integers(0, n_items, samples)
    light = ["faces", "edges", "graph"]
    with DatasetReader(dataset) as reader:
        sizes = [_nbytes(reader.read_item(int(c))) for c in codes]
        # The decoded-chunk cache (64 MiB) is smaller than the sample: mostly decoding.
        first = _time_each(reader.read_item, codes)
        repeat = []
        for code in codes:
            reader.read_item(int(code))
            t = time.perf_counter()
            reader.read_item(int(code))
            repeat.append((time.perf_counter() - t) * 1e3)
        _time_each(lambda c: reader.read_item(c, groups=light), codes)
        without = _time_each(lambda c: reader.read_item(c, groups=light), codes)
    return {
        "mean_item_mb": statistics.fmean(sizes) / 1e6,
        "median_item_mb": statistics.median(sizes) / 1e6,
        "repeat": _summary(repeat),
        "first": _summary(first),
        "without_faceface": _summary(without),
    }


def measure_dataloader(
    flow: str, groups: list[str] | None, batch_size: int, max_items: int
) -> dict[str, Any]:
    """Items per second through a DataLoader with two workers, one epoch."""
    import torch

    with DatasetLoader(flow_output_file=flow, groups=groups) as loader:
        loader.split("face_types", "faces", 0.8, 0.1, 0.1, random_state=0)
        train = loader.get_dataset("train")
        if len(train) > max_items:
            train.remove_indices(range(max_items, len(train)))
        dataset, collate = train.to_torch_with_collate()
        batches = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            num_workers=2,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(0),
        )
        clock = EpochCpu()
        t = time.perf_counter()
        seen = 0
        first = None
        for batch in batches:
            if first is None:
                first = time.perf_counter() - t
            seen += len(batch["name"])
        seconds = time.perf_counter() - t
        # The workers end with the epoch; once reaped, their CPU time is the children's.
        del batch, batches
        cpu = clock.per_item(seen)

    return {
        "items": seen,
        "seconds": seconds,
        "items_per_s": seen / seconds,
        "first_batch_s": first,
        "items_per_s_after_first_batch": (seen - batch_size) / (seconds - (first or 0.0)),
        **cpu,
    }


def measure_shared_memory(
    mean_item_bytes: float, batch_size: int, rounds: int = 20
) -> dict[str, float]:
    """How fast a worker can fill fresh shared memory: a ceiling for any DataLoader.

    A worker's batch travels to the main process in shared memory, which the kernel must
    allocate and zero page by page for every batch. This times allocating a batch of the
    mean item size there (the call ``default_collate`` makes) and writing it, with no
    decoding at all.
    """
    import torch

    like = torch.empty(0, dtype=torch.float32)
    numel = max(1, int(mean_item_bytes * batch_size) // 4)
    source = torch.ones(numel)
    start = time.perf_counter()
    for _ in range(rounds):
        storage = like._typed_storage()._new_shared(numel, device=like.device)
        like.new(storage).resize_(numel).copy_(source)
        del storage
    rate = rounds * numel * 4 / (time.perf_counter() - start)
    return {
        "fill_gb_per_s": rate / 1e9,
        "ceiling_items_per_s_2_workers": 2 * rate / mean_item_bytes,
    }


def _spec_file_dataset(explorer: DatasetExplorer, code: int, group: str) -> Any:
    """The specified system's way: materialise the group, scan its provenance array."""
    ds = explorer.get_group_data(group).load()
    primary = ds.attrs["primary_dimension"]
    codes = ds[f"file_id_code_{group}"].values
    rows = np.flatnonzero(codes == code)
    return ds.isel({primary: rows})


def measure_file_dataset(flow: str, n_items: int, samples: int, seed: int) -> dict[str, Any]:
    """``file_dataset`` against materialise-and-scan, and against the in-memory scan."""
    group = "faces"
    codes = np.random.default_rng(seed + 1).integers(0, n_items, samples)
    with DatasetExplorer(flow_output_file=flow) as explorer:
        explorer.file_dataset(0, group)
        ours = _time_each(lambda c: explorer.file_dataset(c, group), codes)
        # Check both ways agree before timing the slow one.
        want = explorer.file_dataset(int(codes[0]), group)
        got = _spec_file_dataset(explorer, int(codes[0]), group)
        np.testing.assert_array_equal(got["face_areas"].values, want["face_areas"].values)
        spec_codes = codes[: max(3, samples // 100)]
        spec = []
        for code in spec_codes:
            explorer._group_data.clear()  # each call materialises the group afresh
            t = time.perf_counter()
            _spec_file_dataset(explorer, int(code), group)
            spec.append((time.perf_counter() - t) * 1e3)
        # The vendor's bulk reader: the group is in memory, each item pays only the scan.
        whole = explorer.get_group_data(group).load()
        provenance = whole[f"file_id_code_{group}"].values

        def scan(code: int) -> Any:
            rows = np.flatnonzero(provenance == code)
            return whole.isel(face=rows)

        in_memory = _time_each(scan, codes)
    ours_med = statistics.median(ours)
    return {
        "group": group,
        "ours": _summary(ours),
        "spec_materialise_and_scan": _summary(spec),
        "spec_in_memory_scan": _summary(in_memory),
        "ratio_vs_materialise": statistics.median(spec) / ours_med,
        "ratio_vs_in_memory_scan": statistics.median(in_memory) / ours_med,
    }


def measure_distribution(flow: str) -> dict[str, Any]:
    """Seconds for create_distribution over all items (median of three, fresh explorer)."""
    cases = {
        "face_areas, 10 bins": ("face_areas", 10),
        "face_types, categorical": ("face_types", None),
        "file_label (infoset), categorical": ("file_label", None),
    }
    out = {}
    for label, (key, bins) in cases.items():
        times = []
        with DatasetExplorer(flow_output_file=flow) as explorer:
            for _ in range(3):
                t = time.perf_counter()
                explorer.create_distribution(key, bins=bins, group="faces")
                times.append(time.perf_counter() - t)
        out[label] = {"first_s": times[0], "median_s": statistics.median(times)}
    return out


# ---------------------------------------------------------------------------- report
def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def report(results: dict[str, Any]) -> str:
    """Return the Markdown table of the results."""
    item = results["random_item"]
    rows = [
        "| Measure | Result | Target | Met |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("repeat", "Random item, all arrays, read again (decoded cache warm)"),
        ("first", "Random item, all arrays, first read (OS cache warm, decoding)"),
        ("without_faceface", "Random item without `faceface`, first read"),
    ):
        m = item[key]
        rows.append(
            f"| {label} | median {m['median_ms']:.3f} ms, mean {m['mean_ms']:.3f} ms, "
            f"p95 {m['p95_ms']:.3f} ms | <= {TARGET_ITEM_MS:g} ms | "
            f"{_mark(m['median_ms'] <= TARGET_ITEM_MS)} |"
        )
    for label, loader in results["dataloader"].items():
        rows.append(
            f"| DataLoader, 2 workers, {label} | {loader['items_per_s']:,.0f} items/s "
            f"({loader['items']} items in {loader['seconds']:.1f} s; "
            f"{loader['items_per_s_after_first_batch']:,.0f}/s after the first batch) | >= "
            f"{TARGET_ITEMS_PER_S:,.0f} items/s | "
            f"{_mark(loader['items_per_s'] >= TARGET_ITEMS_PER_S)} |"
        )
        cpu = loader.get("worker_cpu_ms_per_item")
        if cpu:
            rows.append(
                f"| (context) {label}: worker CPU per item | {cpu['user']:.2f} ms user "
                f"(decoding, Python) + {cpu['system']:.2f} ms system (shared memory); two "
                f"cores allow {2e3 / (cpu['user'] + cpu['system']):,.0f} items/s | - | - |"
            )
    shm = results.get("shared_memory")
    if shm:
        rows.append(
            f"| (context) ceiling from shared memory alone: fresh pages filled at "
            f"{shm['fill_gb_per_s']:.2f} GB/s per process | "
            f"{shm['ceiling_items_per_s_2_workers']:,.0f} items/s with 2 workers at the mean "
            f"item size ({item['mean_item_mb']:.2f} MB), before any decoding | - | - |"
        )
    fd = results["file_dataset"]
    rows.append(
        f"| `file_dataset(code, 'faces')` vs materialise + scan (§3) | "
        f"{fd['ours']['median_ms']:.3f} ms vs "
        f"{fd['spec_materialise_and_scan']['median_ms']:,.1f} ms: "
        f"**{fd['ratio_vs_materialise']:,.0f}x** | >= {TARGET_RATIO:g}x | "
        f"{_mark(fd['ratio_vs_materialise'] >= TARGET_RATIO)} |"
    )
    rows.append(
        f"| (context) vs scan of a group already in memory | "
        f"{fd['spec_in_memory_scan']['median_ms']:.3f} ms per item: "
        f"{fd['ratio_vs_in_memory_scan']:.1f}x | - | - |"
    )
    for label, dist in results["create_distribution"].items():
        rows.append(
            f"| `create_distribution` {label}, all items | median {dist['median_s']:.3f} s "
            f"(first {dist['first_s']:.3f} s) | < {TARGET_DISTRIBUTION_S:g} s | "
            f"{_mark(dist['median_s'] < TARGET_DISTRIBUTION_S)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1000, help="random items timed")
    parser.add_argument("--loader-items", type=int, default=4000, help="items per epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "cadstore-bench")
    )
    parser.add_argument(
        "--cold", action="store_true", help="do not read the dataset once into the OS cache first"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    flow = build(args.workdir, args.items, args.seed)
    with DatasetExplorer(flow_output_file=flow) as explorer:
        n_items = explorer.n_items
        dataset = explorer.merged_store_path
    dataset_bytes = os.path.getsize(dataset)
    if not args.cold:
        # Every measure is then about CPU cost, not about which pages a previous step
        # happened to touch; the dataset fits in memory on the machines we run this on.
        with open(dataset, "rb") as fh:
            while fh.read(1 << 24):
                pass
    results: dict[str, Any] = {
        "items": n_items,
        "dataset_mb": dataset_bytes / 1e6,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "os_cache_warmed": not args.cold,
    }
    results["random_item"] = measure_random_item(dataset, n_items, args.samples, args.seed)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch is not installed: skipping the DataLoader measure", file=sys.stderr)
        results["dataloader"] = {}
    else:
        results["shared_memory"] = measure_shared_memory(
            results["random_item"]["mean_item_mb"] * 1e6, args.batch_size
        )
        results["dataloader"] = {
            "all groups": measure_dataloader(flow, None, args.batch_size, args.loader_items),
            "without faceface": measure_dataloader(
                flow, ["faces", "edges", "graph"], args.batch_size, args.loader_items
            ),
        }
    results["file_dataset"] = measure_file_dataset(flow, n_items, args.samples, args.seed)
    results["create_distribution"] = measure_distribution(flow)
    print(
        f"\n{n_items:,} items, dataset {results['dataset_mb']:,.0f} MB, items of "
        f"{results['random_item']['mean_item_mb']:.2f} MB raw on average (median "
        f"{results['random_item']['median_item_mb']:.2f} MB), Python {results['python']}, "
        f"{results['machine']}, load average before the run {results['load_average']}, "
        f"OS cache {'warmed' if results['os_cache_warmed'] else 'cold'}\n"
    )
    print(report(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
