#!/usr/bin/env python3
"""Generate golden vendor-layout fixtures (Zarr v2 ``.zarr.data`` zips) for cadstore tests.

The commercial system's ``OptStorage`` writes each item with **zarr-python 2.x** into a
``zarr.DirectoryStore`` and then copies every file of that directory into a zip
(``compress_store()`` -> ``<name>.zarr.data``). This script does the same with the real
zarr 2.18 / numcodecs code, so the bytes inside the zip are exactly what zarr 2 emits.

It MUST run in a throwaway virtualenv with zarr 2.18 (never the project / system python,
which has zarr 3)::

    python3 -m venv /tmp/zarr2env
    /tmp/zarr2env/bin/pip install "zarr==2.18.*" "numcodecs<0.16" msgpack numpy
    /tmp/zarr2env/bin/python scripts/make_vendor_fixtures.py            # write + verify
    /tmp/zarr2env/bin/python scripts/make_vendor_fixtures.py --verify   # verify only

Output (default ``tests/fixtures/vendor_v2/``, next to this repo's ``scripts/``):

* ``item_basic.zarr.data``   + ``item_basic.expected.json``
* ``item_empty.zarr.data``   + ``item_empty.expected.json``
* ``item_chunked.zarr.data`` + ``item_chunked.expected.json``

Everything is deterministic: fixed RNG seeds, sorted zip entries (zarr 2's ``copy_store``
also iterates ``sorted(source.keys())``) and a fixed zip timestamp. zarr's own
``ZipStore.__setitem__`` stamps entries with the wall clock; apart from ``date_time`` the
zip written here is checked, entry by entry, against a genuine
``zarr.copy_store(DirectoryStore, ZipStore)`` copy (names, order, bytes, compress_type,
external_attr, create_system, flag bits).

The layout of the ``*.expected.json`` files is described in
``tests/fixtures/vendor_v2/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections import deque
from pathlib import Path

# --------------------------------------------------------------------------------------
# Environment guard: zarr 2 only.
# --------------------------------------------------------------------------------------
try:
    import zarr
except ImportError:  # pragma: no cover - guard
    sys.exit(
        "make_vendor_fixtures.py needs zarr-python 2.18 in a throwaway venv:\n"
        "  python3 -m venv /tmp/zarr2env && /tmp/zarr2env/bin/pip install "
        '"zarr==2.18.*" "numcodecs<0.16" msgpack numpy\n'
        "  /tmp/zarr2env/bin/python scripts/make_vendor_fixtures.py"
    )

_ZARR_MAJOR = int(zarr.__version__.split(".")[0])
if _ZARR_MAJOR >= 3:
    sys.exit(
        f"make_vendor_fixtures.py: refusing to run with zarr {zarr.__version__} "
        f"(from {sys.executable}).\n"
        "The vendor fixtures must be written by zarr-python 2.18 (Zarr v2 + numcodecs "
        "MsgPack object arrays), which zarr 3 cannot produce.\n"
        "Use a throwaway venv:\n"
        "  python3 -m venv /tmp/zarr2env && /tmp/zarr2env/bin/pip install "
        '"zarr==2.18.*" "numcodecs<0.16" msgpack numpy\n'
        "  /tmp/zarr2env/bin/python scripts/make_vendor_fixtures.py"
    )
if not zarr.__version__.startswith("2.18."):
    print(
        f"warning: expected zarr 2.18.x, found {zarr.__version__}; fixtures may differ",
        file=sys.stderr,
    )

import msgpack  # noqa: E402
import numcodecs  # noqa: E402
import numpy as np  # noqa: E402
from numcodecs import Delta, MsgPack, Zstd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "fixtures" / "vendor_v2"

# What the vendor's OptStorage uses (spec: "Zstd level 12", "~1M elements per chunk",
# "Delta filter for integer arrays", "object arrays with MsgPack codec").
ZSTD_LEVEL = 12
CHUNK_ELEMENTS = 1_000_000
# zarr's ZipStore stamps entries with time.localtime(); we use a fixed stamp instead.
ZIP_DATE_TIME = (2024, 1, 1, 0, 0, 0)
# expected.json carries a literal "values" list for arrays with at most this many elements.
SMALL_VALUES_MAX = 64


# --------------------------------------------------------------------------------------
# A minimal re-enactment of the vendor's OptStorage write path (zarr 2 API).
# --------------------------------------------------------------------------------------
def chunk_shape(shape: tuple[int, ...], clamp: bool) -> tuple[int, ...]:
    """~1M elements per chunk along axis 0, full extent along the other axes.

    ``clamp=True`` caps the row count at ``max(shape[0], 1)`` (so a 6-row array gets
    chunks ``[6]``); ``clamp=False`` keeps the raw ``1M // row_elements`` value, which is
    larger than the array (zarr 2 allows that; a reader must handle chunk > shape).
    A chunk length of 0 is never used: zarr 2.18 raises ZeroDivisionError on it.
    """
    if len(shape) == 0:
        return ()
    row_elems = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    rows = max(1, CHUNK_ELEMENTS // max(1, row_elems))
    if clamp:
        rows = min(rows, max(1, shape[0]))
    return (rows, *tuple(max(1, s) for s in shape[1:]))


def dims_for(key: str, ndim: int) -> list[str]:
    base = key.strip("/").replace("/", "_")
    return [f"{base}_dim_{i}" for i in range(ndim)]


def to_array(data) -> np.ndarray:
    """How Python values become arrays (see README: strings are stored with shape (1,))."""
    if isinstance(data, np.ndarray):
        return data
    if isinstance(data, str):
        # A 0-d object array cannot be written with numcodecs MsgPack in zarr 2.18
        # (MsgPack.encode calls ndarray.tolist().extend -> AttributeError on a str), so a
        # single string is stored as a 1-element object array.
        return np.array([data], dtype=object)
    if isinstance(data, (list, tuple)) and data and all(isinstance(x, str) for x in data):
        return np.array(list(data), dtype=object)
    if isinstance(data, (bool, int, float, np.generic)):
        return np.array(data)  # 0-d
    return np.asarray(data)


class VendorLikeStorage:
    """DirectoryStore writer mimicking OptStorage.save_data/save_metadata/compress_store."""

    def __init__(self, dir_path: Path, clamp_chunks: bool = True):
        self.dir_path = Path(dir_path)
        if self.dir_path.exists():
            shutil.rmtree(self.dir_path)
        self.store = zarr.DirectoryStore(str(self.dir_path))
        self.root = zarr.group(store=self.store, overwrite=True)
        self.clamp_chunks = clamp_chunks
        self.metadata: dict = {}
        self.written: dict[str, np.ndarray] = {}  # path -> array as written
        self.source_values: dict[str, object] = {}  # path -> original python value
        self._flush_metadata()

    # -- metadata -------------------------------------------------------------------
    def save_metadata(self, key: str, value) -> None:
        parts = key.strip("/").split("/")
        d = self.metadata
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
        self._flush_metadata()

    def _flush_metadata(self) -> None:
        with open(self.dir_path / "metadata.json", "w", encoding="utf-8") as f:
            json.dump(self.metadata, f, indent=4)

    # -- data -----------------------------------------------------------------------
    def save_data(self, key: str, data) -> None:
        before = self._chunk_bytes(key)
        self._save(key.strip("/"), data)
        size_kb = (self._chunk_bytes(key) - before) / 1024.0
        self.save_metadata(f"file_sizes_KB/{key.strip('/').replace('/', '_')}", round(size_kb, 4))

    def _save(self, key: str, data) -> None:
        if isinstance(data, dict):
            self.root.require_group(key)
            for k, v in data.items():
                self._save(f"{key}/{k}", v)
            return
        arr = to_array(data)
        if arr.dtype.kind == "f" and np.isnan(arr).any():
            raise ValueError(f"NaN in {key}")
        kwargs = {
            "data": arr,
            "chunks": chunk_shape(arr.shape, self.clamp_chunks),
            "compressor": Zstd(level=ZSTD_LEVEL),
            "overwrite": True,
        }
        if arr.dtype == object:
            kwargs.update(dtype=object, object_codec=MsgPack())
        elif arr.dtype.kind in "iu":
            kwargs.update(filters=[Delta(dtype=arr.dtype.str)])
        z = self.root.create_dataset(key, **kwargs)
        z.attrs["_ARRAY_DIMENSIONS"] = dims_for(key, arr.ndim)
        self.written[key] = arr
        self.source_values[key] = data

    def _chunk_bytes(self, key: str) -> int:
        """'Actual disk usage (sum of Zarr chunk files)' under ``key``."""
        p = self.dir_path / key
        if not p.exists():
            return 0
        total = 0
        for root, _dirs, files in os.walk(p):
            for f in files:
                if not f.startswith(".z"):
                    total += os.path.getsize(os.path.join(root, f))
        return total

    # -- zip --------------------------------------------------------------------------
    def directory_files(self) -> list[str]:
        out = []
        for root, _dirs, files in os.walk(self.dir_path):
            for f in files:
                rel = os.path.relpath(os.path.join(root, f), self.dir_path)
                out.append(rel.replace(os.sep, "/"))
        return sorted(out)

    def compress_store(self, zip_path: Path) -> int:
        """Copy every file of the DirectoryStore into a ZIP_STORED zip, like zarr 2's
        ``copy_store(DirectoryStore, ZipStore)`` does (same ZipInfo fields), but with a
        fixed timestamp."""
        zip_path = Path(zip_path)
        if zip_path.exists():
            zip_path.unlink()
        with zipfile.ZipFile(
            zip_path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True
        ) as zf:
            for key in self.directory_files():
                info = zipfile.ZipInfo(filename=key, date_time=ZIP_DATE_TIME)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16  # same as zarr.ZipStore.__setitem__
                zf.writestr(info, (self.dir_path / key).read_bytes())
        self._check_against_real_zipstore(zip_path)
        return zip_path.stat().st_size

    def _check_against_real_zipstore(self, zip_path: Path) -> None:
        with tempfile.TemporaryDirectory() as td:
            ref = Path(td) / "ref.zip"
            zs = zarr.ZipStore(str(ref), mode="w")
            zarr.copy_store(self.store, zs)
            zs.close()
            with zipfile.ZipFile(ref) as a, zipfile.ZipFile(zip_path) as b:
                ia, ib = a.infolist(), b.infolist()
                assert [i.filename for i in ia] == [i.filename for i in ib], (
                    [i.filename for i in ia],
                    [i.filename for i in ib],
                )
                for x, y in zip(ia, ib, strict=False):
                    for attr in (
                        "compress_type",
                        "external_attr",
                        "create_system",
                        "flag_bits",
                        "file_size",
                    ):
                        assert getattr(x, attr) == getattr(y, attr), (x.filename, attr)
                    assert a.read(x) == b.read(y), x.filename


# --------------------------------------------------------------------------------------
# Fixture contents.
# --------------------------------------------------------------------------------------
FACE_TYPE_DESCRIPTIONS = {
    "0": "Plane",
    "1": "Cylinder",
    "2": "Cone",
    "3": "Sphere",
    "4": "Torus",
    "5": "Nurbs",
    "13": "Revolution",
    "14": "Extrusion",
}
EDGE_TYPE_DESCRIPTIONS = {"0": "Line", "1": "Circle"}


def _bfs_paths(n_faces: int, src: np.ndarray, dst: np.ndarray):
    """All-pairs hop counts and co-edge paths on the directed face graph."""
    nbrs: dict[int, list[tuple[int, int]]] = {i: [] for i in range(n_faces)}
    for e, (s, d) in enumerate(zip(src.tolist(), dst.tolist(), strict=False)):
        nbrs[s].append((d, e))
    hops = np.zeros((n_faces, n_faces), dtype=np.float32)
    paths: dict[tuple[int, int], list[int]] = {}
    for i in range(n_faces):
        prev = {i: None}
        q = deque([i])
        while q:
            u = q.popleft()
            for v, e in sorted(nbrs[u]):
                if v not in prev:
                    prev[v] = (u, e)
                    q.append(v)
        for j in range(n_faces):
            edges = []
            k = j
            while prev.get(k) is not None:
                u, e = prev[k]
                edges.append(e)
                k = u
            edges.reverse()
            paths[(i, j)] = edges
            hops[i, j] = len(edges)
    return hops, paths


def _sym_histograms(rng, n: int, bins: int) -> np.ndarray:
    h = np.zeros((n, n, bins), dtype=np.float32)
    for i in range(n):
        for j in range(i, n):
            v = rng.dirichlet(np.full(bins, 0.6)).astype(np.float32)
            h[i, j] = v
            h[j, i] = v
    return h


def build_item_basic(workdir: Path):
    rng = np.random.default_rng(1001)
    n_f = 6
    # A small bracket: 0 top plane, 1 bottom plane, 2 rounded side (cylinder),
    # 3 flat side (plane), 4 hole (cylinder), 5 countersink (cone).
    face_types = np.array([0, 0, 1, 0, 1, 2], dtype=np.int32)
    face_areas = np.array([1834.25, 1834.25, 942.4778, 600.0, 235.6194, 70.68583], dtype=np.float32)
    face_centroids = np.array(
        [
            [20.0, 15.0, 10.0],
            [20.0, 15.0, 0.0],
            [40.0, 15.0, 5.0],
            [0.0, 15.0, 5.0],
            [20.0, 15.0, 4.0],
            [20.0, 15.0, 9.0],
        ],
        dtype=np.float32,
    )
    face_loops = np.array([2, 2, 1, 1, 1, 1], dtype=np.int32)
    # 8 B-rep edges -> 16 co-edges (2k: a->b, 2k+1: b->a)
    undirected = [(0, 2), (0, 3), (0, 5), (1, 2), (1, 3), (1, 4), (2, 3), (4, 5)]
    ukind = [1, 0, 1, 1, 0, 1, 0, 1]  # 0 Line, 1 Circle
    ulen = [47.12389, 30.0, 37.699112, 47.12389, 30.0, 18.849556, 10.0, 18.849556]
    uangle = [1.5707964, 1.5707964, -0.7853982, 1.5707964, 1.5707964, -1.5707964, 0.0, 2.3561945]
    uconv = [2, 2, 1, 2, 2, 1, 3, 1]
    src, dst, etype, elen, eang, econv = [], [], [], [], [], []
    for (a, b), k, ln, an, cv in zip(undirected, ukind, ulen, uangle, uconv, strict=False):
        for s, d in ((a, b), (b, a)):
            src.append(s)
            dst.append(d)
            etype.append(k)
            elen.append(ln)
            eang.append(an)
            econv.append(cv)
    n_e = len(src)
    assert n_e == 16
    edges_source = np.array(src, dtype=np.int32)
    edges_destination = np.array(dst, dtype=np.int32)

    # face_discretization (N_f, 25, 7): xyz, normal, inside flag
    fd = np.zeros((n_f, 25, 7), dtype=np.float32)
    fd[:, :, 0:3] = face_centroids[:, None, :] + rng.normal(0, 3.0, (n_f, 25, 3)).astype(np.float32)
    nrm = rng.normal(size=(n_f, 25, 3))
    fd[:, :, 3:6] = (nrm / np.linalg.norm(nrm, axis=-1, keepdims=True)).astype(np.float32)
    fd[:, :, 6] = (rng.random((n_f, 25)) > 0.2).astype(np.float32)
    # edge_u_grids (N_e, 5, 6): xyz along the edge + unit tangent
    ug = np.zeros((n_e, 5, 6), dtype=np.float32)
    t = np.linspace(0.0, 1.0, 5, dtype=np.float32)
    for e in range(n_e):
        p0 = face_centroids[src[e]]
        p1 = face_centroids[dst[e]]
        ug[e, :, 0:3] = p0[None, :] + t[:, None] * (p1 - p0)[None, :]
        d = (p1 - p0).astype(np.float64)
        ug[e, :, 3:6] = (d / np.linalg.norm(d)).astype(np.float32)

    hops, paths = _bfs_paths(n_f, edges_source, edges_destination)
    path_arr = np.full((n_f, n_f, 32), -1, dtype=np.int32)
    for (i, j), p in paths.items():
        path_arr[i, j, : len(p)] = p

    a3 = _sym_histograms(rng, n_f, 64)
    d2 = _sym_histograms(rng, n_f, 64)

    st = VendorLikeStorage(workdir / "item_basic.zarr", clamp_chunks=True)
    st.save_metadata("Item", "C:/parts/bracket.step")
    st.save_metadata("size_cadfile", 1024000)
    st.save_data("face_indices", np.arange(n_f, dtype=np.int32))
    st.save_data("face_types", face_types)
    st.save_data("face_areas", face_areas)
    st.save_data("face_centroids", face_centroids)
    st.save_data("face_loops", face_loops)
    st.save_metadata("descriptions/face_types", FACE_TYPE_DESCRIPTIONS)
    st.save_data("face_discretization", fd)
    st.save_data("edge_indices", np.arange(n_e, dtype=np.int32))
    st.save_data("edge_types", np.array(etype, dtype=np.int32))
    st.save_data("edge_lengths", np.array(elen, dtype=np.float32))
    st.save_data("edge_dihedral_angles", np.array(eang, dtype=np.float32))
    st.save_data("edge_convexities", np.array(econv, dtype=np.int32))
    st.save_metadata("descriptions/edge_types", EDGE_TYPE_DESCRIPTIONS)
    st.save_data("edge_u_grids", ug)
    st.save_data(
        "graph",
        {
            "edges_source": edges_source,
            "edges_destination": edges_destination,
            "num_nodes": np.int64(n_f),
        },
    )
    st.save_data("extended_adjacency", hops)
    st.save_data("face_pair_edges_path", path_arr)
    st.save_data("a3_distance", a3)
    st.save_data("d2_distance", d2)
    st.save_data("description", "Bracket, 6 faces, countersunk Ø6 hole")
    st.save_data("part_tags", ["bracket", "steel", "Übergröße Ø12 \u2013 試作"])
    st.save_data("processing_scale", 0.001)
    st.save_metadata("processing_time", 1.5)
    st.save_metadata("file_label", 2)
    return st


def build_item_empty(workdir: Path):
    """A 2-face, 0-co-edge body: all edge and graph-edge arrays have length 0.

    Written with ``clamp_chunks=False`` so every chunk is larger than its array (e.g.
    ``face_areas`` shape [2] with chunks [1000000]); empty arrays have no chunk files.
    Also holds ``extras/empty_f32`` (0,) float32 and ``extras/empty_f32x3`` (0, 3).
    """
    n_f = 2
    st = VendorLikeStorage(workdir / "item_empty.zarr", clamp_chunks=False)
    st.save_metadata("Item", "C:/parts/two_face_sheet.step")
    st.save_metadata("size_cadfile", 20480)
    st.save_data("face_indices", np.arange(n_f, dtype=np.int32))
    st.save_data("face_types", np.array([0, 5], dtype=np.int32))
    st.save_data("face_areas", np.array([12.5, 3.25], dtype=np.float32))
    st.save_data(
        "face_centroids", np.array([[0.5, 0.25, 0.0], [2.0, -1.0, 0.125]], dtype=np.float32)
    )
    st.save_data("face_loops", np.array([1, 1], dtype=np.int32))
    st.save_metadata("descriptions/face_types", FACE_TYPE_DESCRIPTIONS)
    st.save_data("edge_indices", np.zeros((0,), dtype=np.int32))
    st.save_data("edge_types", np.zeros((0,), dtype=np.int32))
    st.save_data("edge_lengths", np.zeros((0,), dtype=np.float32))
    st.save_data("edge_dihedral_angles", np.zeros((0,), dtype=np.float32))
    st.save_data("edge_convexities", np.zeros((0,), dtype=np.int32))
    st.save_metadata("descriptions/edge_types", EDGE_TYPE_DESCRIPTIONS)
    st.save_data("edge_u_grids", np.zeros((0, 5, 6), dtype=np.float32))
    st.save_data(
        "graph",
        {
            "edges_source": np.zeros((0,), dtype=np.int32),
            "edges_destination": np.zeros((0,), dtype=np.int32),
            "num_nodes": np.int64(n_f),
        },
    )
    st.save_data("extras/empty_f32", np.zeros((0,), dtype=np.float32))
    st.save_data("extras/empty_f32x3", np.zeros((0, 3), dtype=np.float32))
    st.save_metadata("processing_time", 0.25)
    st.save_metadata("file_label", 0)
    return st


def build_item_chunked(workdir: Path):
    rng = np.random.default_rng(3003)
    n = 2_500_000
    ids = np.arange(n, dtype=np.int64) * 3 + 1_000_000_000_000  # > int32 range
    pos = np.sort(rng.choice(n, 2500, replace=False))
    ids[pos] += rng.integers(-5, 6, size=pos.size)
    m = 300_000
    i = np.arange(m)
    block = rng.standard_normal(1000).astype(np.float32)
    pc = np.stack(
        [
            (i % 1000).astype(np.float32) * np.float32(0.001),
            np.tile(block, m // 1000),
            (i // 50_000).astype(np.float32),
            ((i % 8) == 0).astype(np.float32),
        ],
        axis=1,
    ).astype(np.float32)
    assert pc.shape == (m, 4) and pc.flags.c_contiguous

    st = VendorLikeStorage(workdir / "item_chunked.zarr", clamp_chunks=True)
    st.save_metadata("Item", "C:/parts/large_casting.step")
    st.save_metadata("size_cadfile", 73400320)
    st.save_data("vertex_ids", ids)
    st.save_data("samples/point_cloud", pc)
    st.save_data("num_points", m)
    st.save_metadata("processing_time", 12.75)
    st.save_metadata("file_label", 7)
    return st


FIXTURES = {
    "item_basic": build_item_basic,
    "item_empty": build_item_empty,
    "item_chunked": build_item_chunked,
}


# --------------------------------------------------------------------------------------
# expected.json
# --------------------------------------------------------------------------------------
def le_sha256(arr: np.ndarray) -> str:
    a = np.ascontiguousarray(arr)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(a.tobytes(order="C")).hexdigest()


def build_expected(st: VendorLikeStorage, zip_path: Path) -> dict:
    with zipfile.ZipFile(zip_path) as zf:
        entries = [i.filename for i in zf.infolist()]
        zinfo_dir = any(i.is_dir() for i in zf.infolist())
        zarrays = {
            e[: -len("/.zarray")]: json.loads(zf.read(e)) for e in entries if e.endswith("/.zarray")
        }
        groups = sorted(
            ("" if e == ".zgroup" else e[: -len("/.zgroup")])
            for e in entries
            if e.endswith(".zgroup")
        )
        metadata = json.loads(zf.read("metadata.json"))
    arrays, strings, scalars = {}, {}, {}
    for path in sorted(st.written):
        arr = st.written[path]
        za = zarrays[path]
        chunk_keys = [
            e
            for e in entries
            if e.startswith(path + "/")
            and "/" not in e[len(path) + 1 :]
            and not e[len(path) + 1 :].startswith(".z")
        ]
        rec = {
            "dtype": arr.dtype.str,
            "shape": list(arr.shape),
            "dims": dims_for(path, arr.ndim),
            "chunks": za["chunks"],
            "compressor": za["compressor"],
            "filters": za["filters"],
            "fill_value": za["fill_value"],
            "chunk_keys": chunk_keys,
            "sha256": None if arr.dtype == object else le_sha256(arr),
        }
        if arr.dtype != object and 0 < arr.size <= SMALL_VALUES_MAX:
            rec["values"] = arr.tolist()  # convenience copy for tiny arrays
        arrays[path] = rec
        src = st.source_values[path]
        if arr.dtype == object:
            strings[path] = src if isinstance(src, str) else list(arr.tolist())
        elif arr.ndim == 0:
            scalars[path] = arr.item()
    return {
        "fixture": zip_path.name,
        "produced_by": {
            "zarr": zarr.__version__,
            "numcodecs": numcodecs.__version__,
            "numpy": np.__version__,
            "msgpack": ".".join(map(str, msgpack.version)),
            "python": sys.version.split()[0],
        },
        "zip": {
            "entries": entries,
            "has_directory_entries": zinfo_dir,
            "compression": "ZIP_STORED",
        },
        "groups": groups,
        "arrays": arrays,
        "strings": strings,
        "scalars": scalars,
        "metadata": metadata,
    }


# --------------------------------------------------------------------------------------
# Verification (reads back through zarr 2's ZipStore, independent of build state)
# --------------------------------------------------------------------------------------
def verify(out_dir: Path) -> None:
    for name in FIXTURES:
        zpath = out_dir / f"{name}.zarr.data"
        exp = json.loads((out_dir / f"{name}.expected.json").read_text(encoding="utf-8"))
        store = zarr.ZipStore(str(zpath), mode="r")
        try:
            g = zarr.open_group(store, mode="r")
            # every array present, nothing extra
            found = []
            g.visititems(
                lambda p, o, found=found: found.append(p) if isinstance(o, zarr.Array) else None
            )
            assert sorted(found) == sorted(exp["arrays"]), (
                name,
                sorted(found),
                sorted(exp["arrays"]),
            )
            for path, rec in exp["arrays"].items():
                a = g[path]
                assert a.dtype.str == rec["dtype"], (name, path, a.dtype.str)
                assert list(a.shape) == rec["shape"], (name, path)
                assert list(a.chunks) == rec["chunks"], (name, path)
                assert a.attrs["_ARRAY_DIMENSIONS"] == rec["dims"], (name, path)
                data = a[...]
                if rec["sha256"] is not None:
                    assert le_sha256(data) == rec["sha256"], (name, path)
                    if "values" in rec:
                        assert np.array_equal(np.array(rec["values"], dtype=rec["dtype"]), data), (
                            name,
                            path,
                        )
                else:
                    val = exp["strings"][path]
                    got = data.tolist()
                    if isinstance(val, str):
                        assert got == [val], (name, path, got)
                    else:
                        assert got == val, (name, path, got)
            for path, val in exp["scalars"].items():
                assert g[path][()] == val, (name, path)
            assert json.loads(store["metadata.json"]) == exp["metadata"], name
            with zipfile.ZipFile(zpath) as zf:
                assert [i.filename for i in zf.infolist()] == exp["zip"]["entries"], name
                assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        finally:
            store.close()
        print(f"verified {zpath.name}: {len(exp['arrays'])} arrays OK (zarr {zarr.__version__})")


# --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--verify", action="store_true", help="only verify existing fixtures")
    args = ap.parse_args(argv)
    out_dir: Path = args.out
    if not args.verify:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="vendor_fixtures_") as td:
            for name, build in FIXTURES.items():
                st = build(Path(td))
                zpath = out_dir / f"{name}.zarr.data"
                size = st.compress_store(zpath)
                exp = build_expected(st, zpath)
                (out_dir / f"{name}.expected.json").write_text(
                    json.dumps(exp, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
                )
                print(f"wrote {zpath} ({size} bytes)")
    verify(out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
