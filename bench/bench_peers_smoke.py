"""Smoke benchmark: round-trip a small generated workload through every peer storage.

For each peer in ``bench/_peers.py`` this writes every item, reads it back whole and
reads one array, checks that arrays (dtype, shape, bytes), scalars and metadata come
back exactly, and prints the median write, read-all and read-one times and file sizes.

Run from the repository root, with cadstore importable (``pip install -e .[bench]``)::

    python bench/bench_peers_smoke.py [--items 20] [--seed 0] [--key face_areas]

Times are single-threaded wall clock with a warm page cache and include opening and
closing the file; one untimed warm-up round per peer keeps import costs out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from cadstore.synthetic import iter_items, raw_nbytes

try:
    from bench import _peers
except ImportError:  # run as a script: bench/ itself is sys.path[0]
    import _peers  # type: ignore[no-redef]


def _lookup(item: dict[str, Any], key: str) -> Any:
    """Return the value at a ``/``-joined key of a nested item."""
    node: Any = item
    for part in key.split("/"):
        node = node[part]
    return node


def run(n_items: int, seed: int, key: str, out: Any = sys.stdout) -> dict[str, dict[str, float]]:
    """Round-trip and time ``n_items`` generated items through every peer.

    Parameters
    ----------
    n_items : int
        Number of items to generate (with :func:`cadstore.synthetic.iter_items`).
    seed : int
        Workload seed.
    key : str
        Array read by ``read_one`` (``/``-joined for nested arrays).
    out : file-like
        Where the table is printed.

    Returns
    -------
    dict
        Peer name to ``{"write_ms", "read_ms", "read_one_ms", "file_kib", "ratio"}``
        medians (``ratio`` is raw bytes over file bytes).

    Raises
    ------
    AssertionError
        If a peer does not return an item, array or metadata exactly.
    """
    items = list(iter_items(n_items, seed=seed))
    faces = [int(item["face_indices"].shape[0]) for _, item, _ in items]
    raw = [raw_nbytes(item) for _, item, _ in items]
    print(
        f"{n_items} items, seed {seed}: faces median {statistics.median(faces):g} "
        f"(min {min(faces)}, max {max(faces)}), raw median {statistics.median(raw) / 1024:.1f} "
        f"KiB (total {sum(raw) / 2**20:.1f} MiB); read_one key {key!r}",
        file=out,
    )
    header = (
        f"{'peer':<12} {'write ms':>9} {'read ms':>9} {'read_one ms':>12} "
        f"{'file KiB':>9} {'raw/file':>9}  description"
    )
    print(header, file=out)
    print("-" * len(header), file=out)
    results: dict[str, dict[str, float]] = {}
    for peer in _peers.PEERS.values():
        with tempfile.TemporaryDirectory(prefix=f"peer-{peer.name}-") as tmp:
            # Warm-up: imports, codec registries and zarr's event loop start lazily.
            _, warm_item, warm_meta = items[0]
            peer.read(peer.write(os.path.join(tmp, "warmup"), warm_item, warm_meta))
            writes, reads, ones, sizes, ratios = [], [], [], [], []
            for (name, item, metadata), raw_bytes in zip(items, raw, strict=True):
                base = os.path.join(tmp, name)
                t0 = time.perf_counter()
                path = peer.write(base, item, metadata)
                t1 = time.perf_counter()
                back = peer.read(path)
                t2 = time.perf_counter()
                one = peer.read_one(path, key)
                t3 = time.perf_counter()
                _peers.assert_items_equal(item, back, f"{peer.name}:{name}:")
                want = np.asarray(_lookup(item, key))
                if one.dtype != want.dtype or one.tobytes() != want.tobytes():
                    raise AssertionError(f"{peer.name}:{name}: read_one({key!r}) differs")
                if peer.read_metadata(path) != metadata:
                    raise AssertionError(f"{peer.name}:{name}: metadata differs")
                size = os.path.getsize(path)
                writes.append(t1 - t0)
                reads.append(t2 - t1)
                ones.append(t3 - t2)
                sizes.append(size)
                ratios.append(raw_bytes / size)
        row = {
            "write_ms": statistics.median(writes) * 1e3,
            "read_ms": statistics.median(reads) * 1e3,
            "read_one_ms": statistics.median(ones) * 1e3,
            "file_kib": statistics.median(sizes) / 1024,
            "ratio": statistics.median(ratios),
        }
        results[peer.name] = row
        print(
            f"{peer.name:<12} {row['write_ms']:9.2f} {row['read_ms']:9.2f} "
            f"{row['read_one_ms']:12.2f} {row['file_kib']:9.1f} {row['ratio']:9.2f}  "
            f"{peer.description}",
            file=out,
        )
    print("all peers round-tripped every item exactly (arrays, scalars, metadata)", file=out)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the smoke benchmark.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        Process exit status, 0 on success.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20, help="items to generate (20)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (0)")
    parser.add_argument("--key", default="face_areas", help="array for read_one (face_areas)")
    args = parser.parse_args(argv)
    run(args.items, args.seed, args.key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
