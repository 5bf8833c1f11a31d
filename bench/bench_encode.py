"""Benchmark: encoding the sample parts, per push method, and the share spent in storage.

Writes ``--parts`` parametric parts (brackets, plates with holes, shafts; see
:func:`cadstore.cad.samples.write_sample_set`) as STEP files to a temporary directory, then:

1. encodes them **in this process** (``encode_files(workers=0)``), which gives a clean
   per-step profile: reading the STEP file, building the body's topology, each push method
   (computation only) and the storage (schema, ``save_data``, ``save_metadata``,
   ``compress_store``, ``close``), each timed from inside the run. The pass runs four
   times, in turns: items made durable per batch (the default, one ``syncfs`` per run
   here) and each fsynced (``durability="item"``), twice each; the profile is the first
   batch pass, and the writes per part of each mode, syncing included, are the best of
   its two;
2. encodes them again with ``--workers`` worker processes (the ``cadstore encode`` path,
   process start-up, supervision and error summary included) for the end-to-end rate.

It prints a Markdown table. "parts/s" of the encoder counts topology, pushes and storage;
"end to end" counts everything, file reading and worker processes included.

Run from the repository root (``pip install -e '.[cad]'``)::

    python bench/bench_encode.py --parts 40 --workers 2 --json bench/results/encode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cadstore.cad import OCP_VERSION
from cadstore.cad.samples import write_sample_set
from cadstore.encode import PUSH_METHODS, encode_files

# The storage calls that write the item; the others are schema and metadata bookkeeping.
WRITE_CALLS = ("save_data", "compress_store", "close")


def _rows(timings: dict[str, float], parts: int) -> list[tuple[str, float, float, float]]:
    """Return ``(step, seconds, ms per part, % of total)`` rows, in pipeline order."""
    order = ["load", "brep", *PUSH_METHODS, "storage"]
    total = sum(timings.get(step, 0.0) for step in order)
    return [
        (step, timings[step], 1e3 * timings[step] / parts, 100.0 * timings[step] / total)
        for step in order
        if step in timings
    ]


def run(parts: int, workers: int, seed: int, histograms: bool) -> dict[str, Any]:
    """Run both passes and return the measurements."""
    with tempfile.TemporaryDirectory(prefix="bench_encode_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        files = write_sample_set(root / "parts", count=parts, seed=seed)
        generate = time.perf_counter() - t0

        # Pass 1 twice, items made durable per batch (the default) and one by one, in
        # turns, so that the two durability modes meet the same machine.
        profiles: dict[str, list[Any]] = {"batch": [], "item": []}
        for turn in range(2):
            for mode in ("batch", "item") if turn == 0 else ("item", "batch"):
                report = encode_files(
                    root / "parts",
                    root / f"inproc-{mode}-{turn}",
                    workers=0,
                    histograms=histograms,
                    progress=False,
                    durability=mode,
                )
                if not report.ok:
                    raise SystemExit(f"in-process encoding failed: {report.failed[:2]}")
                profiles[mode].append(report)
        profile = profiles["batch"][0]
        parallel = encode_files(
            root / "parts", root / "pool", workers=workers, histograms=histograms
        )
        if not parallel.ok:
            raise SystemExit(f"parallel encoding failed: {parallel.failed[:2]}")

    timings = profile.timings
    calls = profile.storage_timings
    items = len(profile.encoded)
    encode = sum(timings[s] for s in ("brep", *PUSH_METHODS) if s in timings)
    storage = timings["storage"]
    writes = sum(calls.get(c, 0.0) for c in WRITE_CALLS)
    return {
        "parts": parts,
        "files": len(files),
        "items": items,
        "workers": parallel.workers,
        "histograms": histograms,
        "generate_seconds": generate,
        "timings": timings,
        "storage_timings": calls,
        "encoder_parts_per_second": items / (encode + storage),
        "storage_share": storage / (encode + storage),
        "write_share": writes / (encode + storage),
        "write_share_of_all": writes / sum(timings.values()),
        "load_share": timings["load"] / sum(timings.values()),
        "inprocess_seconds": profile.seconds,
        "inprocess_parts_per_second": items / profile.seconds,
        "parallel_seconds": parallel.seconds,
        "parallel_parts_per_second": len(parallel.encoded) / parallel.seconds,
        "bytes_per_item": profile.bytes_written / items,
        # Per part, the best of the two turns: storage writes (save_data, compress_store,
        # close) plus the supervisor's syncing and logging.
        "durability_write_ms": {
            mode: min(
                1e3
                * (sum(r.storage_timings.get(c, 0.0) for c in WRITE_CALLS) + r.sync_seconds)
                / len(r.encoded)
                for r in reports
            )
            for mode, reports in profiles.items()
        },
        "durability_sync_ms": {
            mode: min(1e3 * r.sync_seconds / len(r.encoded) for r in reports)
            for mode, reports in profiles.items()
        },
        "machine": {
            "python": platform.python_version(),
            "ocp": OCP_VERSION,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
    }


def render(result: dict[str, Any]) -> str:
    """Return the Markdown report."""
    items = result["items"]
    lines = [
        f"Encoding {items} sample parts ({result['files']} STEP files, histograms "
        f"{'on' if result['histograms'] else 'off'}), Python {result['machine']['python']}, "
        f"OCP {result['machine']['ocp']}, {result['machine']['cpus']} CPUs",
        "",
        "| step | total s | ms / part | share |",
        "|---|---:|---:|---:|",
    ]
    for step, seconds, per_part, share in _rows(result["timings"], items):
        lines.append(f"| `{step}` | {seconds:.3f} | {per_part:.2f} | {share:.1f}% |")
    total = sum(result["timings"].values())
    lines.append(f"| **total** | {total:.3f} | {1e3 * total / items:.2f} | 100% |")
    calls = result["storage_timings"]
    storage = result["timings"]["storage"]
    lines += ["", "| `storage` by call | total s | ms / part | share of storage |"]
    lines.append("|---|---:|---:|---:|")
    for call, seconds in sorted(calls.items(), key=lambda kv: -kv[1]):
        lines.append(
            f"| `{call}` | {seconds:.3f} | {1e3 * seconds / items:.2f} "
            f"| {100 * seconds / storage:.1f}% |"
        )
    lines += [
        "",
        "| measure | value |",
        "|---|---:|",
        f"| encoder parts/s (topology + pushes + storage, 1 process) "
        f"| {result['encoder_parts_per_second']:.1f} |",
        f"| storage share of encoder time, all storage calls "
        f"| {100 * result['storage_share']:.1f}% |",
        f"| storage share of encoder time, writes only (save_data + compress_store + close) "
        f"| {100 * result['write_share']:.1f}% |",
        f"| writes' share of all time (STEP reading included) "
        f"| {100 * result['write_share_of_all']:.1f}% |",
        f"| STEP reading share of all time | {100 * result['load_share']:.1f}% |",
        f"| end to end, in process: parts/s | {result['inprocess_parts_per_second']:.1f} |",
        f"| end to end, {result['workers']} worker processes: parts/s "
        f"| {result['parallel_parts_per_second']:.1f} |",
        f"| item size, KiB | {result['bytes_per_item'] / 1024:.1f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=int, default=40, help="number of sample parts")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes for pass 2"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-histograms", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    result = run(args.parts, args.workers, args.seed, not args.no_histograms)
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
