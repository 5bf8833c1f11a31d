"""Items store their symmetric face-pair arrays as upper triangles.

``OptStorage`` stores a face-pair array (``d2_distance``, ``a3_distance``,
``extended_adjacency``, ``face_pair_edges_path``, or an array of a schema group with
``matrix_flattening``) that equals its transpose bit for bit as its upper triangle, and
gives it back ``N x N (x k)``; zarr-python reads the triangle with the attributes that
map it to pairs ``(i, j)``. Checked here: the values (every bit, NaN payloads and signed
zeros included) for items of 0, 1 and many faces, the Zarr view, what stays in full,
appending to an item, merges of triangle items against merges of full ones, and files
whose layout attributes lie.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadstore import MemoryStorage, OptStorage
from cadstore.errors import CorruptStoreError, LimitExceededError
from cadstore.format.limits import Limits
from cadstore.format.triangle import triangle_count, triangle_row
from cadstore.merging import merge_items
from cadstore.merging.scan import scan_item
from cadstore.synthetic import make_item, write_item
from datasets import assert_same_dataset

zarr = pytest.importorskip("zarr")

SYMMETRIC = ("d2_distance", "a3_distance", "extended_adjacency")


def _item(index: int, faces: int) -> dict[str, Any]:
    """A generated item of ``faces`` faces; with none, its face arrays are empty."""
    if faces:
        return make_item(index, n_faces=faces)
    one = make_item(index, n_faces=1)
    return {
        "face_areas": one["face_areas"][:0],
        **{key: one[key][:0, :0] for key in (*SYMMETRIC, "face_pair_edges_path")},
    }


def _write(path: Path, item: dict[str, Any], **options: Any) -> Path:
    return Path(write_item(path, item, {"name": path.name}, summary_dir=False, **options))


def _zarr_group(data: Path) -> Any:
    return zarr.open_group(zarr.storage.ZipStore(data, mode="r"), mode="r")


def _bits(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).tobytes()


def _assert_same(got: Any, value: Any, key: str) -> None:
    if isinstance(value, dict):
        assert set(got) == set(value), key
        for name in value:
            _assert_same(got[name], value[name], f"{key}/{name}")
    elif isinstance(value, np.ndarray):
        assert got.shape == value.shape and got.dtype == value.dtype, key
        assert _bits(got) == _bits(value), key
    else:
        assert got == value, key


@pytest.mark.parametrize("faces", [0, 1, 2, 29, 140])
def test_face_pair_arrays_read_back_bit_for_bit(tmp_path: Path, faces: int) -> None:
    item = _item(3, faces)
    data = _write(tmp_path / "part.zarr", item)
    with OptStorage(tmp_path / "part.zarr", mode="r") as storage:
        for key, value in item.items():
            _assert_same(storage.load_data(key), value, key)
        # The names the array is read with, not those of the stored triangle.
        assert storage.get_array_dims("d2_distance") == (
            "d2_distance_dim_0",
            "d2_distance_dim_1",
            "d2_distance_dim_2",
        )
    stored = _zarr_group(data)
    for key in SYMMETRIC:
        shape = list(item[key].shape)
        if faces > 1:
            assert stored[key].shape == (triangle_count(faces), *shape[2:]), key
            assert stored[key].attrs["cadstore_layout"] == "upper_triangle"
            assert stored[key].attrs["cadstore_shape"] == shape
        else:  # 0 or 1 faces: the triangle is the matrix, stored as it is
            assert list(stored[key].shape) == shape, key
    # face_pair_edges_path is not symmetric: stored in full.
    assert stored["face_pair_edges_path"].shape == item["face_pair_edges_path"].shape


def test_zarr_python_reads_pairs_through_the_documented_row(tmp_path: Path) -> None:
    """Pair ``(i, j)`` is row ``t(min, max)`` of the stored triangle, as the ``pair_row``
    attribute says and docs/format.md documents."""
    item = make_item(5, n_faces=23)
    data = _write(tmp_path / "part.zarr", item)
    tri = _zarr_group(data)["a3_distance"]
    assert "i * N - i * (i - 1) // 2" in tri.attrs["pair_row"]
    values = tri[:]
    full = item["a3_distance"]
    n = full.shape[0]
    for i in range(n):
        for j in range(n):
            assert np.array_equal(values[triangle_row(i, j, n)], full[i, j])
    # The dimension names xarray would use: one for the triangle rows, then the rest.
    assert tri.metadata.dimension_names == ("a3_distance_upper", "a3_distance_dim_2")


def test_nan_payloads_and_signed_zeros_survive(tmp_path: Path) -> None:
    n = 6
    mat = np.zeros((n, n, 4), dtype=np.float32)
    mat[1, 2] = mat[2, 1] = np.frombuffer(b"\x01\x00\xc0\x7f" * 4, dtype=np.float32)
    mat[3, 3] = -0.0
    with OptStorage(tmp_path / "nan.zarr", allow_nan=True) as storage:
        storage.save_data("d2_distance", mat)
        # Read back before publishing (from the item being written) and after.
        assert _bits(storage.load_data("d2_distance")) == _bits(mat)
        storage.compress_store()
    with OptStorage(tmp_path / "nan.zarr", mode="r") as storage:
        assert _bits(storage.load_data("d2_distance")) == _bits(mat)
    assert _zarr_group(tmp_path / "nan.zarr.data")["d2_distance"].shape == (21, 4)


def test_what_stays_in_full(tmp_path: Path) -> None:
    item = make_item(1, n_faces=12)
    sym = np.eye(3, dtype=np.float64)  # symmetric, but not a face-pair array
    asym = item["d2_distance"].copy()
    asym[0, 1, 0] += 1.0  # one value off the mirror
    with OptStorage(tmp_path / "mixed.zarr") as storage:
        storage.save_data("inertia", sym)
        storage.save_data("d2_distance", asym)
        storage.save_data("a3_distance", item["a3_distance"])
        storage.compress_store()
    group = _zarr_group(tmp_path / "mixed.zarr.data")
    assert group["inertia"].shape == (3, 3)
    assert group["d2_distance"].shape == asym.shape
    assert "cadstore_layout" not in group["d2_distance"].attrs
    assert group["a3_distance"].shape == (triangle_count(12), 64)
    # Opted out, or Zarr format 2 (the layout the specified system reads): all in full.
    for name, options in (("full", {"face_pair_layout": "full"}), ("v2", {"zarr_format": 2})):
        data = _write(tmp_path / f"{name}.zarr", item, **options)
        with zipfile.ZipFile(data) as archive:
            names = archive.namelist()
            doc = json.loads(
                archive.read("a3_distance/zarr.json" if name == "full" else "a3_distance/.zarray")
            )
        assert doc["shape"] == [12, 12, 64], names
        with OptStorage(tmp_path / f"{name}.zarr", mode="r") as storage:
            assert _bits(storage.load_data("a3_distance")) == _bits(item["a3_distance"])
    with pytest.raises(ValueError, match="face_pair_layout"):
        OptStorage(tmp_path / "bad.zarr", face_pair_layout="upper")  # type: ignore[arg-type]


def test_schema_face_pair_group_of_another_name(tmp_path: Path) -> None:
    """A schema group with matrix_flattening makes its arrays face-pair arrays, whatever
    they are called; an array of another group is stored as saved."""
    schema = {
        "groups": {
            "pairs": {
                "primary_dimension": "pair",
                "special_processing": "matrix_flattening",
                "arrays": {"closeness": {"dims": ["pair"], "dtype": "float32"}},
            },
            "faces": {
                "primary_dimension": "face",
                "arrays": {"d2_distance": {"dims": ["face", "pair", "bin"], "dtype": "float32"}},
            },
        }
    }
    mat = np.arange(49, dtype=np.float32).reshape(7, 7)
    mat = mat + mat.T
    with OptStorage(tmp_path / "s.zarr") as storage:
        storage.set_schema(schema)
        storage.save_data("closeness", mat)
        storage.save_data("d2_distance", np.ones((7, 7, 2), dtype=np.float32))
        storage.compress_store()
    group = _zarr_group(tmp_path / "s.zarr.data")
    assert group["closeness"].shape == (28,)
    assert group["d2_distance"].shape == (7, 7, 2)
    with OptStorage(tmp_path / "s.zarr", mode="r") as storage:
        assert np.array_equal(storage.load_data("closeness"), mat)


def test_appending_to_a_triangle_item_keeps_it(tmp_path: Path) -> None:
    item = make_item(2, n_faces=17)
    data = _write(tmp_path / "part.zarr", item)
    stored_before = zipfile.ZipFile(data).read("d2_distance/c/0/0")
    with OptStorage(tmp_path / "part.zarr", mode="a") as storage:
        storage.save_data("extra", np.arange(3))
        assert _bits(storage.load_data("d2_distance")) == _bits(item["d2_distance"])
        storage.compress_store()
    with OptStorage(tmp_path / "part.zarr", mode="r") as storage:
        assert _bits(storage.load_data("d2_distance")) == _bits(item["d2_distance"])
        assert storage.load_data("extra").tolist() == [0, 1, 2]
    # Its chunks were carried over as stored, not decoded and encoded again.
    assert zipfile.ZipFile(data).read("d2_distance/c/0/0") == stored_before


def test_memory_storage_copy_is_full(tmp_path: Path) -> None:
    item = make_item(4, n_faces=9)
    _write(tmp_path / "part.zarr", item)
    with OptStorage(tmp_path / "part.zarr", mode="r") as storage:
        memory = MemoryStorage()
        for key in storage.get_keys():
            memory.save_data(key, storage.load_data(key))
    assert _bits(memory.load_data("extended_adjacency")) == _bits(item["extended_adjacency"])


def test_scan_knows_triangles_are_symmetric(tmp_path: Path) -> None:
    item = make_item(6, n_faces=15)
    data = _write(tmp_path / "part.zarr", item)
    from cadstore.io.location import resolve

    scan = scan_item(resolve(str(data)))
    assert not isinstance(scan, tuple), scan
    assert set(SYMMETRIC) <= scan.symmetric
    assert "face_pair_edges_path" not in scan.symmetric
    assert scan.arrays["d2_distance"][0] == (15, 15, 64)


def test_merge_of_triangle_items_equals_merge_of_full_items(tmp_path: Path) -> None:
    """The dataset does not depend on how its items stored their face pairs."""
    faces = [0, 1, 5, 31, 12, 2]
    for layout in ("auto", "full"):
        folder = tmp_path / layout
        folder.mkdir()
        for index, n in enumerate(faces):
            _write(folder / f"item{index}.zarr", _item(index, n), face_pair_layout=layout)
    triangles, full = tmp_path / "tri.dataset", tmp_path / "full.dataset"
    for folder, output in ((tmp_path / "auto", triangles), (tmp_path / "full", full)):
        merge_items(sorted(str(p) for p in folder.glob("*.data")), str(output))
    assert_same_dataset(triangles, full)
    sizes = {
        layout: sum(p.stat().st_size for p in (tmp_path / layout).glob("*.data"))
        for layout in ("auto", "full")
    }
    # zstd finds most mirrored rows of a small item's one chunk itself: the triangles
    # save a few percent here, about a quarter on the item benchmark's workload.
    assert sizes["auto"] < sizes["full"], sizes


# ------------------------------------------------------------------------- hostile files
def _edit_attributes(src: Path, dst: Path, key: str, edit: dict[str, Any]) -> Path:
    """Copy item ``src`` to ``dst`` with ``edit`` applied to the attributes of ``key``,
    in its own document and in the consolidated copy of the root."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == f"{key}/zarr.json":
                doc = json.loads(data)
                doc["attributes"].update(edit)
                data = json.dumps(doc).encode()
            elif info.filename == "zarr.json":
                doc = json.loads(data)
                doc["consolidated_metadata"]["metadata"][key]["attributes"].update(edit)
                data = json.dumps(doc).encode()
            zout.writestr(info.filename, data)
    return dst


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"cadstore_shape": [10, 10, 64]}, "not the upper triangle"),
        ({"cadstore_shape": [9, 8, 64]}, "not N x N"),
        ({"cadstore_shape": "9x9"}, "not a list"),
        ({"cadstore_shape": [9, 9, -64]}, "not a list"),
        ({"cadstore_layout": "lower_triangle"}, "cadstore_layout"),
        ({"cadstore_dims": ["a"]}, "cadstore_dims"),
    ],
)
def test_layout_attributes_that_lie(tmp_path: Path, edit: dict[str, Any], problem: str) -> None:
    data = _write(tmp_path / "good.zarr", make_item(0, n_faces=9))
    bad = _edit_attributes(data, tmp_path / "bad.zarr.data", "d2_distance", edit)
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    with OptStorage(tmp_path / "bad.zarr", mode="r") as storage:
        assert storage.load_data("face_areas").shape == (9,)  # the rest reads
        with pytest.raises(CorruptStoreError, match=problem) as caught:
            storage.load_data("d2_distance")
    assert "bad.zarr.data" in str(caught.value) and "d2_distance" in str(caught.value)
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == digest


def test_triangle_of_fill_values_declaring_a_huge_matrix(tmp_path: Path) -> None:
    """A tiny file whose triangle (no chunk: all fill values) declares a matrix far
    beyond its decode budget is refused before anything that size is allocated."""
    n = 4000  # 4000 x 4000 x 64 float32: 4 GB
    with zipfile.ZipFile(tmp_path / "huge.zarr.data", "w") as archive:
        doc = {
            "zarr_format": 3,
            "node_type": "array",
            "shape": [triangle_count(n), 64],
            "data_type": "float32",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1024, 64]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0.0,
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "attributes": {"cadstore_layout": "upper_triangle", "cadstore_shape": [n, n, 64]},
        }
        archive.writestr("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group"}))
        archive.writestr("d2_distance/zarr.json", json.dumps(doc))
        archive.writestr("metadata.json", "{}")
    storage = OptStorage(tmp_path / "huge.zarr", mode="r", limits=Limits())
    with storage, pytest.raises(LimitExceededError, match=r"huge\.zarr\.data.*d2_distance"):
        storage.load_data("d2_distance")


def test_an_item_its_triangles_would_make_unreadable_is_stored_in_full(tmp_path: Path) -> None:
    """600 faces: as triangles, a file of about 9 MB decoding to 232 MB, more than the
    flat budget of files under 10 MiB; so it is stored in full (15 MB, within its
    budget), and reads, and merges, under the default limits."""
    item = make_item(0, n_faces=600)
    data = _write(tmp_path / "big.zarr", item)
    assert _zarr_group(data)["d2_distance"].shape == (600, 600, 64)
    with OptStorage(tmp_path / "big.zarr", mode="r") as storage:
        for key in ("d2_distance", "a3_distance", "face_pair_edges_path"):
            assert _bits(storage.load_data(key)) == _bits(item[key])
    small = _write(tmp_path / "small.zarr", make_item(0, n_faces=300))
    assert _zarr_group(small)["d2_distance"].shape == (triangle_count(300), 64)
    result = merge_items([str(data), str(small)], str(tmp_path / "two.dataset"))
    assert result.errors == [] and result.total_items == 2


# ------------------------------------------------------------- review regressions
PAIR_SCHEMA = {
    "groups": {
        "faceface": {
            "primary_dimension": "pair",
            "special_processing": "matrix_flattening",
            "arrays": {"extended_adjacency": {"dims": ["face_a", "face_b"], "dtype": "int8"}},
        }
    }
}


def test_the_dims_read_back_are_the_items_own(tmp_path: Path) -> None:
    """Array documents are cached per process by what makes them: an item whose schema
    names the axes does not get the names of an earlier item saved without one."""
    adjacency = np.zeros((5, 5), np.int8)
    adjacency[1, 2] = adjacency[2, 1] = 1
    with OptStorage(tmp_path / "plain.zarr") as storage:
        storage.save_data("extended_adjacency", adjacency)
        storage.compress_store()
    with OptStorage(tmp_path / "named.zarr") as storage:
        storage.set_schema(PAIR_SCHEMA)
        storage.save_data("extended_adjacency", adjacency)
        storage.compress_store()
    for name, dims in (
        ("plain", ("extended_adjacency_dim_0", "extended_adjacency_dim_1")),
        ("named", ("face_a", "extended_adjacency_face_b")),
    ):
        with OptStorage(tmp_path / f"{name}.zarr", mode="r") as storage:
            assert storage.get_array_dims("extended_adjacency") == dims, name
        stored = _zarr_group(tmp_path / f"{name}.zarr.data")["extended_adjacency"]
        assert tuple(stored.attrs["cadstore_dims"]) == dims, name


def test_an_item_near_its_budget_reads_back_under_the_same_limits(tmp_path: Path) -> None:
    """A triangle is decoded a chunk at a time into its full matrix: an item that needs
    that chunk on top of its arrays to read is published in full, and reads."""
    limits = Limits(expansion_allowance=8 * 1024**2)
    rng = np.random.default_rng(0)
    half = rng.random((500, 500, 2)).astype(np.float32)
    d2 = half + half.transpose(1, 0, 2)  # 2 MB in full, 1 MB as a triangle (one chunk)
    features = [rng.random(275_000).astype(np.float32) for _ in range(5)]  # 5 x 1.1 MB
    with OptStorage(tmp_path / "near.zarr", limits=limits) as storage:
        for i, values in enumerate(features):
            storage.save_data(f"face_f{i}", values)
        storage.save_data("d2_distance", d2)
        storage.compress_store()
    with OptStorage(tmp_path / "near.zarr", mode="r", limits=limits) as storage:
        for i in range(5):
            storage.load_data(f"face_f{i}")
        assert _bits(storage.load_data("d2_distance")) == _bits(d2)
        # What metadata.json records is what the file stores: here the full array.
        recorded = storage.load_metadata()["file_sizes_KB"]["d2_distance"]
    with zipfile.ZipFile(tmp_path / "near.zarr.data") as archive:
        stored = sum(
            i.file_size for i in archive.infolist() if i.filename.startswith("d2_distance/c")
        )
    assert recorded == round(stored / 1024, 3)


def test_a_null_layout_shape_is_a_corrupt_item_and_a_merge_lists_it(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.zarr", make_item(0, n_faces=6))
    bad = _edit_attributes(
        good, tmp_path / "bad.zarr.data", "d2_distance", {"cadstore_shape": None}
    )
    storage = OptStorage(tmp_path / "bad.zarr", mode="r")
    with storage, pytest.raises(CorruptStoreError, match=r"bad\.zarr\.data.*d2_dist.*not a list"):
        storage.load_data("d2_distance")
    result = merge_items([str(good), str(bad)], str(tmp_path / "one.dataset"))
    assert result.total_items == 1
    assert [e["file"] for e in result.errors] == [str(bad)]


def _fill_only_triangle(path: Path, n: int, trailing: list[int], dtype: str) -> Path:
    """An item whose ``d2_distance`` declares an ``n x n`` triangle and stores no chunk."""
    doc = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [triangle_count(n), *trailing],
        "data_type": dtype,
        "chunk_grid": {
            "name": "regular",
            "configuration": {"chunk_shape": [1024, *[max(1, t) for t in trailing]]},
        },
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": {"cadstore_layout": "upper_triangle", "cadstore_shape": [n, n, *trailing]},
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group"}))
        archive.writestr("d2_distance/zarr.json", json.dumps(doc))
        archive.writestr("metadata.json", "{}")
    return path


def test_expanding_builds_no_index_larger_than_the_matrix(tmp_path: Path) -> None:
    """A 1 KB file declaring a 1,000,000 x 1,000,000 matrix of empty rows reads as that
    (0 bytes), and one of 3,000 x 3,000 int8 (9 MB, within the budget) reads without
    an index of 8 bytes per pair; nothing is kept in the index memo."""
    from cadstore.format import triangle

    _fill_only_triangle(tmp_path / "empty.zarr.data", 1_000_000, [0], "float32")
    with OptStorage(tmp_path / "empty.zarr", mode="r") as storage:
        assert storage.load_data("d2_distance").shape == (1_000_000, 1_000_000, 0)
    _fill_only_triangle(tmp_path / "bytes.zarr.data", 3000, [], "int8")
    before = triangle._INDEXES.sides()
    with OptStorage(tmp_path / "bytes.zarr", mode="r") as storage:
        values = storage.load_data("d2_distance")
    assert values.shape == (3000, 3000) and not values.any()
    assert triangle._INDEXES.sides() == before


def test_appending_to_a_hostile_triangle_item_allocates_nothing_first(tmp_path: Path) -> None:
    """Opened for appending, a 1 KB item declaring a 41 GB matrix: reading it is refused
    before any allocation, and the item can still be appended to (its chunks are copied,
    never decoded)."""
    _fill_only_triangle(tmp_path / "h.zarr.data", 9000, [64], "float64")
    with OptStorage(tmp_path / "h.zarr", mode="a") as storage:
        with pytest.raises(LimitExceededError, match=r"h\.zarr.*d2_distance"):
            storage.load_data("d2_distance")
        storage.save_data("extra", np.arange(3))
        storage.compress_store()
    with zipfile.ZipFile(tmp_path / "h.zarr.data") as archive:
        doc = json.loads(archive.read("d2_distance/zarr.json"))
    assert doc["attributes"]["cadstore_shape"] == [9000, 9000, 64]


def test_a_dataset_array_claiming_an_item_layout_is_corrupt(tmp_path: Path) -> None:
    from cadstore.dataset.reader import DatasetReader

    # 1 + 2 faces: faces/face_areas has 3 rows, the triangle of a 2 x 2 matrix.
    items = [_write(tmp_path / f"i{n}.zarr", make_item(n, n_faces=1 + n)) for n in range(2)]
    merge_items([str(p) for p in items], str(tmp_path / "d.dataset"))
    bad = _edit_attributes(
        tmp_path / "d.dataset",
        tmp_path / "bad.dataset",
        "faces/face_areas",
        {"cadstore_shape": [2, 2]},
    )
    with (
        DatasetReader(str(bad)) as reader,
        pytest.raises(CorruptStoreError, match=r"bad\.dataset.*face_areas.*a dataset's cannot"),
    ):
        reader.read_array("faces", "face_areas")


def test_pair_indexes_are_kept_within_their_byte_bound() -> None:
    from cadstore.format import triangle

    for n in range(600, 640):
        sym = np.zeros((n, n), np.int8)
        assert triangle.symmetric_upper_rows(sym) is not None
    kept = sum(a.nbytes + b.nbytes for a, b in triangle._PAIRS.values())
    assert kept == triangle._PAIRS.nbytes <= triangle._PAIRS.max_bytes


def test_a_symmetric_array_beyond_the_read_limits_saves_as_in_full(tmp_path: Path) -> None:
    """Saving is not bound by the read limits (the full layout saves the same array);
    reading it back under those limits is refused, naming the array."""
    limits = Limits(max_array_bytes=1000)
    sym = np.ones((20, 20, 4), dtype=np.float32)
    with OptStorage(tmp_path / "big.zarr", limits=limits) as storage:
        storage.save_data("d2_distance", sym)
        storage.compress_store()
    assert _zarr_group(tmp_path / "big.zarr.data")["d2_distance"].shape == (210, 4)
    with (
        OptStorage(tmp_path / "big.zarr", mode="r", limits=limits) as storage,
        pytest.raises(CorruptStoreError, match="d2_distance"),
    ):
        storage.load_data("d2_distance")
