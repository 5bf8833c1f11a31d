"""The main job on an embedded default: encode a batch of realistic items end to end.

``python3 -m cadstore demo`` generates realistic encoded CAD items (see
:mod:`cadstore.testing.workload`), stores each with :class:`~cadstore.OptStorage` under a
schema, publishes one ``.data`` file per item, reads every item back, checks it against
what was written, and, when zarr-python is installed, opens one item with it as an
independent reader.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from cadstore.schema import SchemaBuilder
from cadstore.storage.opt import OptStorage
from cadstore.storage.values import values_equal
from cadstore.testing.workload import iter_items, raw_nbytes

__all__ = ["run_demo"]


def _schema() -> dict[str, object]:
    builder = SchemaBuilder(domain="CAD_demo").from_template("cad_advanced")
    builder.define_file_metadata("size_cadfile", "int64", "Size of the source CAD file")
    builder.define_file_metadata("processing_time", "float32", "Encoding time in seconds")
    builder.define_categorical_metadata("file_label", "int32", "Part class")
    builder.set_metadata_routing_rules(
        file_level_patterns=["size_*", "processing_*"], categorical_patterns=["*_label", "category"]
    )
    return builder.build()


def run_demo(output: str, n_items: int = 200, seed: int = 0) -> dict[str, float]:
    """Write ``n_items`` realistic items under ``output/encoded`` and verify them.

    Returns
    -------
    dict
        Timings and sizes, also printed.
    """
    encoded = os.path.join(output, "encoded")
    os.makedirs(encoded, exist_ok=True)
    schema = _schema()
    write_ms: list[float] = []
    raw = stored = 0
    items = list(iter_items(n_items, seed=seed))
    for name, item, metadata in items:
        t0 = time.perf_counter()
        storage = OptStorage(os.path.join(encoded, f"{name}.zarr"))
        storage.set_schema(schema)
        for key, value in item.items():
            storage.save_data(key, value)
        for key, value in metadata.items():
            storage.save_metadata(key, value)
        stored += storage.compress_store()
        storage.close()
        write_ms.append((time.perf_counter() - t0) * 1e3)
        raw += raw_nbytes(item)
    read_ms: list[float] = []
    for name, item, _ in items:
        t0 = time.perf_counter()
        with OptStorage(os.path.join(encoded, f"{name}.zarr")) as storage:
            loaded = {key: storage.load_data(key) for key in storage.get_keys()}
        read_ms.append((time.perf_counter() - t0) * 1e3)
        if not values_equal(loaded, item):
            raise SystemExit(f"item {name} did not read back identically")
    report = {
        "items": float(n_items),
        "write_ms_median": statistics.median(write_ms),
        "read_ms_median": statistics.median(read_ms),
        "raw_MB": raw / 1e6,
        "stored_MB": stored / 1e6,
        "ratio": raw / max(stored, 1),
    }
    print(f"wrote {n_items} items to {encoded}")
    print(
        f"  write (save_data x{len(items[0][1])} + metadata + compress + close): "
        f"median {report['write_ms_median']:.2f} ms/item"
    )
    print(f"  read back whole item: median {report['read_ms_median']:.2f} ms/item, all identical")
    print(
        f"  {report['raw_MB']:.1f} MB raw -> {report['stored_MB']:.1f} MB stored "
        f"(compression ratio {report['ratio']:.2f}x)"
    )
    _check_with_zarr(os.path.join(encoded, f"{items[0][0]}.zarr.data"), items[0][1])
    return report


def _check_with_zarr(path: str, item: dict[str, object]) -> None:
    try:
        import zarr
    except ImportError:
        print("  (zarr-python not installed: skipping the independent read)")
        return
    group = zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")
    same = all(
        np.array_equal(group[k][...], v) for k, v in item.items() if isinstance(v, np.ndarray)
    )
    print(
        f"  zarr-python {zarr.__version__} opens {os.path.basename(path)}: "
        f"{len(list(group.array_keys()))} arrays, values {'match' if same else 'DIFFER'}"
    )
    if not same:
        raise SystemExit("zarr-python read different values")
