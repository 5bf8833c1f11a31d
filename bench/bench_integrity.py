"""Benchmark: what checksums cost, and how the merge's output follows its input.

Three measurements (issue 16, findings 12 and 11c):

* **Checksums.** Every chunk of a merged dataset carries a ``crc32c`` checksum, verified on
  every read. The same ``--items`` realistic items (``cadstore.synthetic``, cached in
  ``--workdir``) are merged twice, with checksums and without (``cadstore.merging.write.
  CHECKSUMS`` switched off in the child process, as datasets written before checksums
  are), each merge in a fresh process; then both datasets are read the ways training
  reads them: random items one at a time (``DatasetReader.read_item``) and batches of 32
  (``read_items``, the DataLoader path). Merges alternate between the two, reads
  alternate in blocks of 100 within one process, and the median of ``--rounds`` is kept,
  so that drift on a shared machine hits both alike.
* **Alternatives.** What verifying zstd's own frame checksum would add to decompressing a
  64 KiB inner chunk, against a crc32c of its stored bytes.
* **Amplification.** Ten items of forty 1-byte arrays, merged (zstd level 3 and
  uncompressed): the bytes of the dataset against the bytes of the items, with the
  arrays in one group and with a group each.

Run from the repository root::

    python bench/bench_integrity.py --items 300 --json bench/results/integrity.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from cadstore import OptStorage
from cadstore.merging import merge_items
from cadstore.synthetic import write_workload

CHILD_MERGE = textwrap.dedent(
    """
    import json, sys, time
    import cadstore.merging.write as write
    from cadstore.merging import merge_items
    files = json.load(open(sys.argv[1]))
    write.CHECKSUMS = sys.argv[3] == "1"
    t = time.perf_counter()
    result = merge_items(files, sys.argv[2], overwrite=True)
    print(json.dumps({"seconds": time.perf_counter() - t, "raw_bytes": result.raw_bytes,
                      "stored": result.stored_bytes}))
    """
)

CHILD_READ = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from cadstore.dataset.reader import DatasetReader
    paths, reads = sys.argv[1:3], int(sys.argv[3])
    readers = [DatasetReader(p) for p in paths]
    n = readers[0].n_items
    rng = np.random.default_rng(0)
    codes = rng.integers(0, n, reads).tolist()
    order = rng.permutation(n).tolist()
    for reader in readers:  # warm the file cache and the shard indexes
        for code in codes[:50]:
            reader.read_item(code)
    item = [0.0, 0.0]
    batch = [0.0, 0.0]
    # Blocks of reads alternate between the datasets (which one goes first too), so that
    # whatever else the machine does meanwhile slows both alike.
    batches = 0
    for block in range(0, reads, 100):
        first = (block // 100) % 2
        for i in (first, 1 - first):
            reader = readers[i]
            t = time.perf_counter()
            for code in codes[block : block + 100]:
                reader.read_item(code)
            item[i] += time.perf_counter() - t
            t = time.perf_counter()
            for k in range(4):
                start = (block + 32 * k) % max(1, n - 32)
                reader.read_items(order[start : start + 32])
            batch[i] += time.perf_counter() - t
        batches += 4
    print(json.dumps([
        {"item_ms": item[i] / reads * 1e3, "batch_item_ms": batch[i] / (32 * batches) * 1e3}
        for i in range(2)
    ]))
    """
)


def _child(script: str, *args: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checksums(files: list[str], workdir: str, rounds: int, reads: int) -> dict[str, Any]:
    """Merge and read the same items with and without checksums; medians of ``rounds``."""
    listing = os.path.join(workdir, "files.json")
    with open(listing, "w") as fh:
        json.dump(files, fh)
    paths = {flag: os.path.join(workdir, f"crc{flag}.dataset") for flag in ("1", "0")}
    merges: dict[str, list[dict[str, Any]]] = {"1": [], "0": []}
    read: dict[str, list[dict[str, Any]]] = {"1": [], "0": []}
    for _ in range(rounds):
        for flag in ("1", "0"):
            merges[flag].append(_child(CHILD_MERGE, listing, paths[flag], flag))
        both = _child(CHILD_READ, paths["1"], paths["0"], str(reads))
        read["1"].append(both[0])
        read["0"].append(both[1])
    out: dict[str, Any] = {"items": len(files), "rounds": rounds, "reads": reads}
    for flag, label in (("1", "with"), ("0", "without")):
        out[label] = {
            "merge_seconds": statistics.median(m["seconds"] for m in merges[flag]),
            "merge_mb_per_s": statistics.median(
                m["raw_bytes"] / 1e6 / m["seconds"] for m in merges[flag]
            ),
            "stored_bytes": merges[flag][0]["stored"],
            "item_ms": statistics.median(r["item_ms"] for r in read[flag]),
            "batch_item_ms": statistics.median(r["batch_item_ms"] for r in read[flag]),
        }
    with_, without = out["with"], out["without"]
    out["overhead"] = {
        "merge": with_["merge_seconds"] / without["merge_seconds"] - 1,
        "item_read": with_["item_ms"] / without["item_ms"] - 1,
        "batch_read": with_["batch_item_ms"] / without["batch_item_ms"] - 1,
        "size": with_["stored_bytes"] / without["stored_bytes"] - 1,
    }
    return out


def alternatives(repeat: int = 3000) -> dict[str, Any]:
    """Per 64 KiB inner chunk of realistic arrays: decompression time, and what verifying
    zstd's own frame checksum (XXH64 of the decoded bytes) or a crc32c of the stored bytes
    adds to it."""
    import timeit

    import zstandard

    from cadstore.format.codecs import crc32c
    from cadstore.synthetic import make_item

    item = make_item(3, n_faces=200)
    rows: dict[str, Any] = {}
    decompressor = zstandard.ZstdDecompressor()
    for key in ("face_discretization", "d2_distance", "face_pair_edges_path"):
        raw = np.ascontiguousarray(item[key]).reshape(-1).view(np.uint8)[: 64 * 1024].tobytes()
        plain = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(raw)
        framed = zstandard.ZstdCompressor(
            level=3, write_content_size=True, write_checksum=True
        ).compress(raw)

        def best(fn: Any) -> float:
            return min(timeit.repeat(fn, number=repeat, repeat=5)) / repeat * 1e6

        base = best(lambda plain=plain: decompressor.decompress(plain))
        rows[key] = {
            "raw_bytes": len(raw),
            "stored_bytes": len(plain),
            "decompress_us": base,
            "zstd_checksum_us": best(lambda framed=framed: decompressor.decompress(framed)) - base,
            "crc32c_us": best(lambda plain=plain: crc32c(plain)),
        }
    return rows


def amplification(workdir: str) -> dict[str, Any]:
    """Bytes out over bytes in, merging many 1-byte arrays."""
    rows: dict[str, Any] = {}
    for label, names in (("one group", "face_{i}_{j}"), ("a group each", "a{i}_{j}")):
        directory = tempfile.mkdtemp(dir=workdir)
        paths = []
        for i in range(10):
            with OptStorage(os.path.join(directory, f"tiny{i}.zarr")) as storage:
                for j in range(40):
                    storage.save_data(names.format(i=i, j=j), np.array([j], dtype=np.uint8))
                storage.compress_store()
            paths.append(os.path.join(directory, f"tiny{i}.zarr.data"))
        bytes_in = sum(os.path.getsize(p) for p in paths)
        for level in (3, None):
            out = os.path.join(directory, f"out{level}.dataset")
            merge_items(paths, out, compression_level=level)
            bytes_out = os.path.getsize(out)
            rows[f"{label}, {'zstd 3' if level else 'uncompressed'}"] = {
                "arrays": 400,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "ratio": bytes_out / bytes_in,
            }
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/cadstore-bench-integrity")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.perf_counter()
    files = write_workload(os.path.join(args.workdir, f"items-seed{args.seed}"), args.items)
    print(f"{len(files)} items ready in {time.perf_counter() - t0:.0f} s", flush=True)
    crc = checksums(files, args.workdir, args.rounds, args.reads)
    print("\n| | merge s | merge MB/s | item read ms | batch ms/item | dataset bytes |")
    print("|---|---|---|---|---|---|")
    for label in ("with", "without"):
        r = crc[label]
        print(
            f"| {label} checksums | {r['merge_seconds']:.2f} | {r['merge_mb_per_s']:.0f} | "
            f"{r['item_ms']:.3f} | {r['batch_item_ms']:.3f} | {r['stored_bytes']:,} |"
        )
    print("overhead: " + ", ".join(f"{k} {v:+.1%}" for k, v in crc["overhead"].items()))
    alt = alternatives()
    print("\n| 64 KiB chunk | stored | decompress us | + zstd checksum | + crc32c |")
    print("|---|---|---|---|---|")
    for key, r in alt.items():
        print(
            f"| {key} | {r['stored_bytes']:,} | {r['decompress_us']:.1f} | "
            f"{r['zstd_checksum_us']:+.2f} | {r['crc32c_us']:+.2f} |"
        )
    amp = amplification(args.workdir)
    print("\n| tiny arrays | bytes in | bytes out | out / in |")
    print("|---|---|---|---|")
    for label, r in amp.items():
        print(f"| {label} | {r['bytes_in']:,} | {r['bytes_out']:,} | {r['ratio']:.2f} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        machine = f"{os.uname().machine} {os.cpu_count()} cores, Python {sys.version.split()[0]}"
        with open(args.json, "w") as fh:
            json.dump(
                {"machine": machine, "checksums": crc, "alternatives": alt, "amplification": amp},
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
