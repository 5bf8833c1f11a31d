"""Benchmark: merging realistic items into one dataset, against the specified approach.

Generates ``--items`` realistic items (``cadstore.synthetic``, written with
``OptStorage``; cached in ``--workdir`` between runs), then in one run:

* ``cadstore`` merge in one thread (``workers=0``) and with two worker threads
  (``workers=2``, the default thread executor);
* the specified approach on zarr-python: open each item with ``zarr.open_group`` on a
  ``ZipStore``, read every array (face-pair arrays the items store as upper triangles
  are rebuilt to their full matrices with numpy, as ``docs/format.md`` describes),
  concatenate per group (flattening the face-pair matrices) and write the groups with
  zarr-python into a zip. It is run on the first
  ``--baseline-items`` items only, since it is slow; its throughput is still MB/s of raw
  item data, comparable with cadstore's.

Every merge runs in a child process so that its peak resident memory can be measured
(``ru_maxrss`` of the child and of its own workers). Throughput is raw (decoded) item
bytes per second of wall time, end to end including the scan.

Run from the repository root::

    python bench/bench_merge.py --items 10000 --json bench/results/merge.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any

from cadstore.synthetic import write_workload

CHILD_CADSTORE = textwrap.dedent(
    """
    import json, sys, time, resource
    from cadstore.merging import merge_items
    files = json.load(open(sys.argv[1]))
    out, workers = sys.argv[2], int(sys.argv[3])
    t = time.perf_counter()
    result = merge_items(files, out, workers=workers, overwrite=True)
    seconds = time.perf_counter() - t
    print(json.dumps({
        "seconds": seconds, "raw_bytes": result.raw_bytes, "stored": result.stored_bytes,
        "items": len(result.items),
        "self_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))
    """
)

CHILD_ZARR = textwrap.dedent(
    """
    import json, sys, time, resource, warnings
    import numpy as np, zarr
    warnings.simplefilter("ignore")
    FACEFACE = {"a3_distance", "d2_distance", "extended_adjacency", "face_pair_edges_path"}
    files = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    t = time.perf_counter()
    groups = {}
    raw = 0
    for code, path in enumerate(files):
        store = zarr.storage.ZipStore(path, mode="r")
        g = zarr.open_group(store, mode="r")
        for key, arr in g.arrays():
            data = arr[...]
            if arr.attrs.get("cadstore_layout") == "upper_triangle":
                # Stored once per pair (docs/format.md): the full matrix, as the
                # specified approach flattens it, is rebuilt from the upper triangle.
                n = arr.attrs["cadstore_shape"][0]
                upper = np.triu_indices(n)
                full = np.empty((n, n, *data.shape[1:]), dtype=data.dtype)
                full[upper] = data
                full[upper[1], upper[0]] = data
                data = full
            raw += data.nbytes
            group = ("faceface" if key in FACEFACE else "faces" if "face" in key
                     else "edges" if "edge" in key else key)
            if key in FACEFACE:
                data = data.reshape(data.shape[0] * data.shape[1], *data.shape[2:])
            groups.setdefault(group, {}).setdefault(key, []).append(data)
        for key, arr in g["graph"].arrays():
            data = arr[...]
            raw += data.nbytes
            if data.ndim:
                groups.setdefault("graph", {}).setdefault(key, []).append(data)
        store.close()
    dest = zarr.storage.ZipStore(out, mode="w")
    root = zarr.open_group(dest, mode="w")
    for group, arrays in groups.items():
        grp = root.create_group(group)
        for key, parts in arrays.items():
            data = np.concatenate(parts)
            grp.create_array(key, data=data, chunks=(max(1, min(len(data), 500000)),
                                                     *data.shape[1:]))
    dest.close()
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "raw_bytes": raw, "items": len(files),
                      "self_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "workers_rss_mb": 0}))
    """
)


def run_child(script: str, files: list[str], out: str, *extra: str) -> dict[str, Any]:
    """Run one merge in a fresh interpreter and return its measurements."""
    listing = out + ".files.json"
    with open(listing, "w") as fh:
        json.dump(files, fh)
    proc = subprocess.run(
        [sys.executable, "-c", script, listing, out, *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--baseline-items", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/cadstore-bench-merge")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.perf_counter()
    items_dir = os.path.join(args.workdir, f"items-seed{args.seed}")
    files = write_workload(items_dir, args.items, args.seed)
    print(f"{len(files)} items ready in {time.perf_counter() - t0:.0f} s", flush=True)
    rows: dict[str, dict[str, Any]] = {}
    out = os.path.join(args.workdir, "out")
    os.makedirs(out, exist_ok=True)
    rows[f"cadstore, 1 thread, {len(files)} items"] = run_child(
        CHILD_CADSTORE, files, os.path.join(out, "a.dataset"), "0"
    )
    rows[f"cadstore, 2 worker threads, {len(files)} items"] = run_child(
        CHILD_CADSTORE, files, os.path.join(out, "b.dataset"), "2"
    )
    small = files[: min(len(files), 1000)]
    if len(small) < len(files):
        rows[f"cadstore, 1 thread, {len(small)} items"] = run_child(
            CHILD_CADSTORE, small, os.path.join(out, "c.dataset"), "0"
        )
    base = files[: args.baseline_items]
    rows[f"cadstore, 1 thread, {len(base)} items"] = run_child(
        CHILD_CADSTORE, base, os.path.join(out, "d.dataset"), "0"
    )
    rows[f"zarr-python read + concatenate, {len(base)} items"] = run_child(
        CHILD_ZARR, base, os.path.join(out, "z.zip")
    )
    print("\n| merge | items | seconds | MB/s raw | peak RSS MB (driver / workers) |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        r["mb_per_s"] = r["raw_bytes"] / 1e6 / r["seconds"]
        print(
            f"| {name} | {r['items']} | {r['seconds']:.1f} | {r['mb_per_s']:.0f} | "
            f"{r['self_rss_mb']:.0f} / {r['workers_rss_mb']:.0f} |"
        )
    zarr_rate = rows[f"zarr-python read + concatenate, {len(base)} items"]["mb_per_s"]
    ours = rows[f"cadstore, 1 thread, {len(base)} items"]["mb_per_s"]
    print(
        f"\ncadstore / zarr-python throughput on the same {len(base)} items: "
        f"{ours / zarr_rate:.1f}x"
    )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"items": len(files), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
