"""Benchmark: do filters pay off for the integer arrays of an encoded CAD item?

The specified design applies a Delta filter to every integer array. For each integer array
of the realistic workload (``cadstore.synthetic``) this compresses the array as
OptStorage stores it, at the default level, with:

* ``zstd``: no filter (what Zarr v3 items hold: v3 has no standard delta codec, and
  zarr-python warns about numcodecs codecs);
* ``delta + zstd``: numcodecs' Delta (first value, then differences), standard in Zarr v2;
* ``blosc shuffle`` / ``blosc bitshuffle``: Zarr v3's standard ``blosc`` codec with zstd
  inside, the only standard v3 way to filter typed data;
* ``chosen (v2)``: the filter OptStorage picks in Zarr v2, which keeps Delta for an array
  only where its first chunk compresses smaller with it.

Arrays under 512 bytes are stored raw either way and are left out. Sizes are summed over
the items.

Run from the repository root::

    python bench/bench_int_filters.py --items 200 --json bench/results/int_filters.json
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from numcodecs import blosc

from cadstore.format.codecs import long_distance_for, zstd_compress
from cadstore.format.zarr_nodes import MIN_COMPRESS_BYTES, delta_encode, encode_array
from cadstore.storage.opt import DEFAULT_COMPRESSION_LEVEL
from cadstore.synthetic import iter_items

MODES = ("zstd", "delta + zstd", "blosc shuffle", "blosc bitshuffle", "chosen (v2)")


def _integer_arrays(item: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in item.items():
        if isinstance(value, Mapping):
            yield from _integer_arrays(value, f"{prefix}{key}/")
            continue
        arr = np.asarray(value)
        if arr.ndim and arr.dtype.kind in "iu" and arr.nbytes >= MIN_COMPRESS_BYTES:
            yield prefix + key, np.ascontiguousarray(arr)


def measure(n_items: int, seed: int, level: int) -> dict[str, Any]:
    """Bytes per array and mode, summed over ``n_items`` items."""
    blosc.set_nthreads(1)
    sizes: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(MODES, 0))
    raw: dict[str, int] = defaultdict(int)
    chosen: dict[str, int] = defaultdict(int)
    for _name, item, _metadata in iter_items(n_items, seed=seed):
        for key, arr in _integer_arrays(item):
            row = sizes[key]
            raw[key] += arr.nbytes
            # Compressed as the writer compresses them (long-distance matching by dtype).
            ldm = long_distance_for(arr.dtype)
            row_plain = len(zstd_compress(memoryview(arr).cast("B"), level, long_distance=ldm))
            row_delta = len(zstd_compress(delta_encode(arr).data, level, long_distance=ldm))
            row["zstd"] += row_plain
            row["delta + zstd"] += row_delta
            row["blosc shuffle"] += len(blosc.compress(arr, b"zstd", level, blosc.SHUFFLE))
            row["blosc bitshuffle"] += len(blosc.compress(arr, b"zstd", level, blosc.BITSHUFFLE))
            # What the v2 writer decides for this array (its chunking aside: the sizes
            # are those of the whole array with or without the filter).
            docs, _, _ = encode_array(
                arr,
                dims=[f"d{i}" for i in range(arr.ndim)],
                attributes={},
                level=level,
                zarr_format=2,
            )
            uses_delta = bool(docs[".zarray"]["filters"])
            row["chosen (v2)"] += row_delta if uses_delta else row_plain
            chosen[key] += uses_delta
    arrays = {
        key: {
            "raw_bytes": raw[key],
            **{mode: row[mode] for mode in MODES},
            "delta_chosen_in_items": chosen[key],
        }
        for key, row in sizes.items()
    }
    totals = {mode: sum(row[mode] for row in sizes.values()) for mode in MODES}
    return {"items": n_items, "level": level, "arrays": arrays, "totals": totals}


def render(result: dict[str, Any]) -> str:
    """A Markdown table: bytes per mode relative to plain zstd, and per item."""
    lines = [
        "| integer array | zstd bytes per item | " + " | ".join(MODES) + " |",
        "|---|---|" + "---|" * len(MODES),
    ]
    rows = [*result["arrays"].items(), ("all integer arrays", result["totals"])]
    for key, row in rows:
        base = row["zstd"] or 1
        cells = [f"{row[m] / base:.2f}" for m in MODES]
        per_item = row["zstd"] / result["items"]
        lines.append(f"| {key} | {per_item:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="bench/results/int_filters.json")
    args = parser.parse_args()
    result = measure(args.items, args.seed, DEFAULT_COMPRESSION_LEVEL)
    print(render(result))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
