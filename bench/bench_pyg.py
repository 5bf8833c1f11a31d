"""Benchmark: PyTorch Geometric batches against cadstore's plain batches, same items.

Issue 18 asks for ``torch_geometric.data.Batch`` objects straight from the dataset at the
speed of the plain batches (within 10%). This script merges ``--items`` realistic items
(``cadstore.synthetic.write_workload``, cached in ``--workdir``) and times epochs of
``CADDataset.batches()`` (2 decoding threads, batches of 32) with the default
:class:`~cadstore.dataset.torch_support.GraphCollate` and with
:class:`~cadstore.dataset.pyg.PygCollate`, with every group and graph-only (a loader made
with ``groups=["faces", "edges", "graph"]``). The two collates alternate epoch by epoch;
medians of ``--repeats`` epochs each.

Run from the repository root (``pip install -e '.[pyg,bench]'``)::

    python bench/bench_pyg.py --json bench/results/pyg.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import cadstore
from cadstore.dataset import DatasetLoader
from cadstore.dataset.pyg import PygCollate
from cadstore.dataset.torch_support import GraphCollate
from cadstore.synthetic import write_workload

GRAPH_GROUPS = ["faces", "edges", "graph"]


def build(workdir: str, n_items: int) -> str:
    """Merge the workload's first ``n_items`` items once; return the manifest."""
    flow = os.path.join(workdir, f"pyg-{n_items}", "parts.flow")
    if not os.path.exists(flow):
        files = write_workload(os.path.join(workdir, "items"), n_items)
        cadstore.merge(files, flow[: -len(".flow")] + ".dataset", overwrite=True)
    return flow


def epoch_rate(subset: Any, collate: Any, threads: int) -> float:
    """Items per second over one epoch of ``subset.batches()`` with ``collate``."""
    start = time.perf_counter()
    n = 0
    for batch in subset.batches(32, seed=0, threads=threads, collate_fn=collate):
        n += int(batch["file_id_code"].shape[0]) if isinstance(batch, dict) else batch.num_graphs
        del batch
    return n / (time.perf_counter() - start)


def measure(flow: str, repeats: int, threads: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, groups, pairs in (("all groups", None, None), ("graph only", GRAPH_GROUPS, ())):
        with DatasetLoader(flow_output_file=flow, groups=groups) as loader:
            loader.split("random", train=0.8, validation=0.1, test=0.1, random_state=0)
            train = loader.get_dataset("train")
            collates = {"plain": GraphCollate(), "pyg": PygCollate(pair_arrays=pairs)}
            for collate in collates.values():  # the page cache, and torch_geometric's import
                epoch_rate(train, collate, threads)
            rates: dict[str, list[float]] = {"plain": [], "pyg": []}
            for turn in range(repeats):
                order = ["plain", "pyg"] if turn % 2 == 0 else ["pyg", "plain"]
                for name in order:
                    rates[name].append(epoch_rate(train, collates[name], threads))
            plain = statistics.median(rates["plain"])
            pyg = statistics.median(rates["pyg"])
            out[label] = {
                "items": len(train),
                "plain_items_per_s": plain,
                "pyg_items_per_s": pyg,
                "pyg_vs_plain": pyg / plain,
                "rates": rates,
            }
            print(
                f"{label}: plain {plain:,.0f} items/s, PyG {pyg:,.0f} items/s ({pyg / plain:.2f}x)"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    # Outside the checkout: the merged dataset and its items are 120 MB of cache.
    parser.add_argument(
        "--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "cadstore-bench")
    )
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    flow = build(args.workdir, args.items)
    results = {
        "benchmark": "bench/bench_pyg.py",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "load_average": list(os.getloadavg()),
        "threads": args.threads,
        "repeats": args.repeats,
        "results": measure(flow, args.repeats, args.threads),
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
