"""The specified design on zarr-python 2.18, run by ``bench_item.py`` in a throwaway venv.

The specification names zarr-python 2's API: each item is written into a
``zarr.DirectoryStore`` (Zarr v2, Zstd level 12, chunks of about 1M elements, numcodecs'
``Delta`` filter on integer arrays, ``MsgPack`` for strings, dimension names in the
``_ARRAY_DIMENSIONS`` attribute, the metadata with ``file_sizes_KB`` in
``metadata.json``), then ``compress_store()`` copies the directory into a
``zarr.ZipStore`` (``zarr.copy_store``) and removes it. This is that design, written with
zarr-python 2.18 and numcodecs as a user of them would, so that ``bench_item.py`` can
compare cadstore with the real library of the specification instead of an emulation on
zarr-python 3.

zarr-python 2 and 3 cannot share an environment: this script runs as a subprocess in a
venv holding zarr 2.18 (``bench_item.py --make-zarr2-env`` makes it)::

    python3 -m venv /tmp/zarr2env
    /tmp/zarr2env/bin/pip install "zarr==2.18.*" "numcodecs<0.16" msgpack numpy

It imports nothing of cadstore. Protocol: one JSON request per line on stdin, one JSON
reply per line on stdout.

``{"op": "block", "items": [{"input": ".../3.npz", "meta": ".../3.json", "stem": ...}],
"read_one": "face_areas", "sync": true}``
    Load every input of the block (untimed), then write each item (timed: from the arrays
    in memory to the published ``<stem>.zarr.data``, ``os.sync()`` before each write,
    untimed, as the parent does for its own contenders), then read each item whole, then
    open each item and read one array. Replies ``{"write_ms": [...], "size": [...],
    "read_ms": [...], "read_one_ms": [...], "paths": [...]}``.
``{"op": "verify", "input": ..., "path": ...}``
    Read ``path`` back with zarr 2 and compare every array with the input (dtype, shape,
    bytes); replies ``{"ok": true}`` or ``{"ok": false, "error": "..."}``.
``{"op": "versions"}``
    Replies the versions of zarr, numcodecs, numpy and Python.

Inputs are ``.npz`` files (``numpy.savez``, uncompressed) whose member names are the
``/``-joined item keys (``graph/edges_source``), and JSON files holding the metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any

import numpy as np
import zarr
from numcodecs import Delta, MsgPack, Zstd

if not zarr.__version__.startswith("2."):
    sys.exit(f"_spec_zarr2.py needs zarr-python 2.x, found {zarr.__version__}")

ZSTD_LEVEL = 12
CHUNK_ELEMENTS = 1_000_000
METADATA_FILE = "metadata.json"


def chunk_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """About 1M elements per chunk along the first axis, whole along the others."""
    if not shape:
        return ()
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    rows = min(max(1, CHUNK_ELEMENTS // max(1, row)), max(1, shape[0]))
    return (rows, *(max(1, s) for s in shape[1:]))


def dims_for(key: str, ndim: int) -> list[str]:
    base = key.strip("/").replace("/", "_")
    return [f"{base}_dim_{i}" for i in range(ndim)]


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


class SpecStorage:
    """The specified ``OptStorage`` write path on zarr-python 2's API."""

    def __init__(self, store_path: str) -> None:
        self.store_path = store_path
        self.store = zarr.DirectoryStore(store_path)
        self.root = zarr.group(store=self.store, overwrite=True)
        self.metadata: dict[str, Any] = {}

    def save_data(self, key: str, data: Any) -> None:
        self._save(key, data)
        # The specified save_data records the stored size (the chunk files) of each key.
        size = zarr.storage.getsize(self.store, key)
        self.metadata.setdefault("file_sizes_KB", {})[key] = round(size / 1024, 4)

    def _save(self, key: str, data: Any) -> None:
        if isinstance(data, dict):
            self.root.require_group(key)
            for name, value in data.items():
                self._save(f"{key}/{name}", value)
            return
        arr = np.asarray(data)
        if arr.dtype.kind == "f" and np.isnan(arr).any():
            raise ValueError(f"NaN in {key}")
        kwargs: dict[str, Any] = {
            "data": arr,
            "chunks": chunk_shape(arr.shape),
            "compressor": Zstd(level=ZSTD_LEVEL),
            "overwrite": True,
        }
        if arr.dtype == object:
            kwargs.update(dtype=object, object_codec=MsgPack())
        elif arr.dtype.kind in "iu":
            kwargs["filters"] = [Delta(dtype=arr.dtype.str)]
        array = self.root.create_dataset(key, **kwargs)
        array.attrs["_ARRAY_DIMENSIONS"] = dims_for(key, arr.ndim)

    def save_metadata(self, key: str, value: Any) -> None:
        *parents, leaf = key.strip("/").split("/")
        node = self.metadata
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value

    def compress_store(self) -> str:
        with open(os.path.join(self.store_path, METADATA_FILE), "w", encoding="utf-8") as fh:
            json.dump(self.metadata, fh, indent=4)
        target = self.store_path + ".data"
        zip_store = zarr.ZipStore(target, mode="w")
        try:
            zarr.copy_store(self.store, zip_store)
        finally:
            zip_store.close()
        shutil.rmtree(self.store_path)
        return target


def write_item(stem: str, item: dict[str, Any], metadata: dict[str, Any]) -> str:
    storage = SpecStorage(stem + ".zarr")
    for key, value in item.items():
        storage.save_data(key, value)
    for key, value in metadata.items():
        storage.save_metadata(key, value)
    return storage.compress_store()


def _read_group(group: zarr.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, node in group.items():
        out[name] = _read_group(node) if isinstance(node, zarr.Group) else node[...]
    return out


def read_item(path: str) -> dict[str, Any]:
    store = zarr.ZipStore(path, mode="r")
    try:
        return _read_group(zarr.open_group(store, mode="r"))
    finally:
        store.close()


def read_one(path: str, key: str) -> np.ndarray:
    store = zarr.ZipStore(path, mode="r")
    try:
        return np.asarray(zarr.open_group(store, mode="r")[key][...])
    finally:
        store.close()


def load_input(npz: str, meta: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with np.load(npz, allow_pickle=False) as data:
        flat = {key: data[key] for key in data.files}
    with open(meta, encoding="utf-8") as fh:
        metadata = json.load(fh)
    return unflatten(flat), metadata


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def run_block(request: dict[str, Any]) -> dict[str, Any]:
    loaded = [(e["stem"], *load_input(e["input"], e["meta"])) for e in request["items"]]
    reply: dict[str, list[Any]] = {"write_ms": [], "size": [], "read_ms": [], "read_one_ms": []}
    paths = []
    for stem, item, metadata in loaded:
        if request.get("sync", True):
            os.sync()
        t0 = time.perf_counter()
        path = write_item(stem, item, metadata)
        reply["write_ms"].append(_ms(t0))
        reply["size"].append(os.path.getsize(path))
        paths.append(path)
    for path in paths:
        t0 = time.perf_counter()
        read_item(path)
        reply["read_ms"].append(_ms(t0))
    for path in paths:
        t0 = time.perf_counter()
        read_one(path, request["read_one"])
        reply["read_one_ms"].append(_ms(t0))
    reply["paths"] = paths
    return reply


def verify(request: dict[str, Any]) -> dict[str, Any]:
    with np.load(request["input"], allow_pickle=False) as data:
        expected = {key: data[key] for key in data.files}
    got = read_item(request["path"])
    for key, want in expected.items():
        node: Any = got
        for part in key.split("/"):
            if not isinstance(node, dict) or part not in node:
                return {"ok": False, "error": f"{key}: missing"}
            node = node[part]
        value = np.asarray(node)
        if value.dtype != want.dtype or value.shape != want.shape:
            return {
                "ok": False,
                "error": f"{key}: {value.dtype}{value.shape}, expected {want.dtype}{want.shape}",
            }
        if value.tobytes() != want.tobytes():
            return {"ok": False, "error": f"{key}: values differ"}
    return {"ok": True, "arrays": len(expected)}


def main() -> int:
    import warnings

    warnings.simplefilter("ignore")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request["op"]
        if op == "block":
            reply = run_block(request)
        elif op == "verify":
            reply = verify(request)
        elif op == "versions":
            import numcodecs

            reply = {
                "zarr": zarr.__version__,
                "numcodecs": numcodecs.__version__,
                "numpy": np.__version__,
                "python": sys.version.split()[0],
            }
        else:
            reply = {"error": f"unknown op {op!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
