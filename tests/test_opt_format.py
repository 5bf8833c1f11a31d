"""OptStorage's files: standard Zarr that zarr-python and xarray read, and its lifecycle."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from cadstore import OptStorage, SchemaBuilder
from cadstore.errors import InvalidKeyError, ReadOnlyStorageError
from cadstore.storage.opt import DEFAULT_COMPRESSION_LEVEL
from cadstore.synthetic import write_item
from cadstore.testing.conformance import assert_same

FIXTURES = Path(__file__).parent / "fixtures" / "vendor_v2"


def _item() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    return {
        "face_areas": rng.random(6).astype(np.float32),
        "face_types": np.array([0, 0, 1, 1, 0, 13], dtype=np.int32),
        "face_centroids": rng.random((6, 3)).astype(np.float32),
        "flags": np.array([True, False, True]),
        "small": np.arange(3, dtype=np.int8),
        "wide": np.arange(4, dtype=np.uint64),
        "half": np.array([0.5, 1.5], dtype=np.float16),
        "cplx": np.array([1 + 2j], dtype=np.complex128),
        "num_faces": 6,
        "scale": 0.001,
        "description": "High-complexity CAD part",
        "tags": ["bracket", "Größe"],
        "empty": np.zeros((0, 3), dtype=np.float32),
        "big": rng.standard_normal((400_000, 3)).astype(np.float32),
        "graph": {
            "edges_source": np.array([0, 1, 2, 3], dtype=np.int32),
            "edges_destination": np.array([1, 2, 3, 0], dtype=np.int32),
            "num_nodes": 4,
        },
    }


def _write(path: Path, fmt: int = 3, schema: dict[str, Any] | None = None) -> Path:
    storage = OptStorage(path, zarr_format=fmt)
    if schema is not None:
        storage.set_schema(schema)
    for key, value in _item().items():
        storage.save_data(key, value)
    storage.save_metadata("size_cadfile", 1024)
    storage.compress_store()
    storage.close()
    return Path(str(path) + ".data")


def _zarr_value(node: Any) -> Any:
    value = node[...]
    return np.asarray(value)


@pytest.mark.parametrize("fmt", [3, 2])
def test_zarr_python_reads_every_array(tmp_path: Path, fmt: int) -> None:
    data = _write(tmp_path / "part.zarr", fmt)
    group = zarr.open_group(zarr.storage.ZipStore(data, mode="r"), mode="r")
    assert group.metadata.zarr_format == fmt
    item = _item()
    assert sorted(group.group_keys()) == ["graph"]
    assert sorted(group.array_keys()) == sorted(k for k in item if k != "graph")
    for key, value in item.items():
        if key == "graph":
            for sub, arr in value.items():
                np.testing.assert_array_equal(_zarr_value(group[f"graph/{sub}"]), arr)
            continue
        got = _zarr_value(group[key])
        if isinstance(value, str | list):
            assert got.tolist() == value
        else:
            expected = np.asarray(value)
            np.testing.assert_array_equal(got, expected)
            if isinstance(value, np.ndarray):
                assert got.dtype == value.dtype
        arr = group[key]
        dims = arr.metadata.dimension_names if fmt == 3 else arr.attrs["_ARRAY_DIMENSIONS"]
        assert list(dims) == [f"{key}_dim_{i}" for i in range(np.ndim(value))]


@pytest.mark.parametrize("fmt", [3, 2])
def test_xarray_reads_named_dimensions(tmp_path: Path, fmt: int) -> None:
    builder = SchemaBuilder(domain="CAD")
    faces = builder.create_group("faces", "face", "Face data")
    faces.create_array("face_areas", ["face"], "float32")
    faces.create_array("face_types", ["face"], "int32")
    faces.create_array("face_centroids", ["face", "coordinate"], "float32")
    data = _write(tmp_path / "part.zarr", fmt, schema=builder.build())
    ds = xr.open_zarr(zarr.storage.ZipStore(data, mode="r"))
    assert ds["face_areas"].dims == ("face",)
    # The primary dimension as declared; the others qualified by the array, so that arrays
    # of several groups side by side in an item never give one name two lengths.
    assert ds["face_centroids"].dims == ("face", "face_centroids_coordinate")
    assert ds.sizes["face"] == 6
    assert ds["big"].dims == ("big_dim_0", "big_dim_1")
    for key in ("face_areas", "face_types", "flags", "small", "wide", "half", "big"):
        assert ds[key].dtype == _item()[key].dtype, key
    np.testing.assert_array_equal(ds["face_types"].values, _item()["face_types"])
    tree = xr.open_datatree(zarr.storage.ZipStore(data, mode="r"), engine="zarr")
    np.testing.assert_array_equal(tree["graph"]["edges_source"].values, [0, 1, 2, 3])
    assert tree["graph"]["edges_source"].dims == ("graph_edges_source_dim_0",)


def _meeting_names_schema() -> dict[str, Any]:
    """``face`` on ``discretization_component`` and ``face_discretization`` on
    ``component``: both qualify to ``face_discretization_component``."""
    builder = SchemaBuilder(domain="CAD")
    faces = builder.create_group("faces", "face", "Face data")
    faces.create_array("face", ["face", "discretization_component"], "float32")
    faces.create_array("face_discretization", ["face", "component"], "float32")
    faces.create_array("face_centroids", ["face", "coordinate"], "float32")
    # A primary dimension of another group spelt as face_grid's qualified "x".
    marks = builder.create_group("marks", "face_grid_x", "Marks")
    marks.create_array("mark", ["face_grid_x"], "int32")
    builder.create_group("grid", "cell", "Grid").create_array("face_grid", ["cell", "x"], "int32")
    return builder.build()


def _dims(data: Path, key: str, fmt: int) -> list[str]:
    arr = zarr.open_group(zarr.storage.ZipStore(data, mode="r"), mode="r")[key]
    return list(arr.metadata.dimension_names if fmt == 3 else arr.attrs["_ARRAY_DIMENSIONS"])


@pytest.mark.parametrize("fmt", [3, 2])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("component", [6, 7])
def test_qualified_item_dimensions_never_meet(
    tmp_path: Path, fmt: int, reverse: bool, component: int
) -> None:
    """Two arrays' qualified names may be spelt alike (``face`` on ``discretization_component``
    and ``face_discretization`` on ``component``; an undeclared ``a_b`` and ``a/b``): xarray
    refused the item when the lengths differed and took both for one dimension when they
    did not. The first claimant in key order keeps the name, the next takes ``_2``; a
    declared primary dimension keeps its name; items without such a meeting keep theirs,
    whatever order the arrays were saved in."""
    arrays: dict[str, np.ndarray] = {
        "face": np.arange(3 * 7, dtype=np.float32).reshape(3, 7),
        "face_discretization": np.arange(3 * component, dtype=np.float32).reshape(3, component),
        "face_centroids": np.zeros((3, 3), np.float32),
        "mark": np.arange(4, dtype=np.int32),
        "face_grid": np.ones((2, 5), np.int32),
        "a_b": np.arange(2),
        "a/b": np.arange(5),
    }
    storage = OptStorage(tmp_path / "part.zarr", zarr_format=fmt)
    storage.set_schema(_meeting_names_schema())
    for key in sorted(arrays, reverse=reverse):
        storage.save_data(key, arrays[key])
    storage.compress_store()
    storage.close()
    data = tmp_path / "part.zarr.data"
    expected = {
        "face": ["face", "face_discretization_component"],
        "face_discretization": ["face", "face_discretization_component_2"],
        "face_centroids": ["face", "face_centroids_coordinate"],
        "mark": ["face_grid_x"],  # a primary dimension keeps its name
        "face_grid": ["cell", "face_grid_x_2"],
        "a_b": ["a_b_dim_0_2"],  # "a/b" comes first in key order
        "a/b": ["a_b_dim_0"],
    }
    assert {key: _dims(data, key, fmt) for key in expected} == expected
    ds = xr.open_zarr(zarr.storage.ZipStore(data, mode="r"))
    assert ds.sizes["face_discretization_component"] == 7
    assert ds.sizes["face_discretization_component_2"] == component
    assert ds.sizes["face"] == 3
    assert ds.sizes["face_grid_x"] == 4
    assert ds.sizes["face_grid_x_2"] == 5
    for key in ("face", "face_discretization", "face_centroids", "mark", "face_grid", "a_b"):
        np.testing.assert_array_equal(ds[key].values, arrays[key], err_msg=key)
    tree = xr.open_datatree(zarr.storage.ZipStore(data, mode="r"), engine="zarr")
    np.testing.assert_array_equal(tree["a"]["b"].values, arrays["a/b"])
    with OptStorage(tmp_path / "part.zarr") as item:
        for key, value in arrays.items():
            assert_same(item.load_data(key), value, key)


@pytest.mark.parametrize("fmt", [3, 2])
def test_no_dimension_of_an_arrays_own_is_spelt_as_an_array(tmp_path: Path, fmt: int) -> None:
    """xarray lists an array spelt as a dimension of its group among the coordinates. An
    item named ``extra``'s dimension ``extra_dim_0`` beside an array ``extra_dim_0`` (and
    ``g_a_dim_0`` of ``g/a`` beside ``g/g_a_dim_0``), so that array was no data variable;
    such a name of an array's own now gives way (``extra_dim_0_2``), also in an array
    carried over from the file reopened. A declared primary dimension keeps its name: an
    array spelt as it is a coordinate by xarray's rule, an index when 1-D along it
    (``face``), else not (``edge``), its values as stored."""
    builder = SchemaBuilder(domain="CAD")
    faces = builder.create_group("faces", "face", "Face data")
    faces.create_array("face_areas", ["face"], "float32")
    faces.create_array("face", ["face"], "int32")
    builder.create_group("edges", "edge", "Edges").create_array("edge_length", ["edge"], "float32")
    schema = builder.build()
    arrays: dict[str, np.ndarray] = {
        "face_areas": np.array([1.0, 2.5, 4.0], np.float32),
        "face": np.array([7, 8, 9], np.int32),
        "edge_length": np.ones(4, np.float32),
        "edge": np.arange(6).reshape(2, 3),  # undeclared: edge_dim_0, edge_dim_1
        "extra": np.arange(4),
        "extra_dim_0": np.arange(2.0),
        "g/a": np.arange(5),
        "g/g_a_dim_0": np.arange(3),
    }
    with OptStorage(tmp_path / "part.zarr", zarr_format=fmt) as storage:
        storage.set_schema(schema)
        for key in sorted(arrays):
            if key != "extra_dim_0":
                storage.save_data(key, arrays[key])
        storage.compress_store()
    data = tmp_path / "part.zarr.data"
    assert _dims(data, "extra", fmt) == ["extra_dim_0"]
    with OptStorage(tmp_path / "part.zarr", mode="a") as storage:
        storage.save_data("extra_dim_0", arrays["extra_dim_0"])  # extra is carried over
        storage.compress_store()
    assert _dims(data, "extra", fmt) == ["extra_dim_0_2"]
    assert _dims(data, "extra_dim_0", fmt) == ["extra_dim_0_dim_0"]
    assert _dims(data, "g/a", fmt) == ["g_a_dim_0_2"]
    ds = xr.open_zarr(zarr.storage.ZipStore(data, mode="r"))
    assert sorted(ds.coords) == ["edge", "face"]
    assert list(ds.indexes) == ["face"]
    assert ds["edge"].dims == ("edge_dim_0", "edge_dim_1")
    for key in ("face_areas", "face", "edge_length", "edge", "extra", "extra_dim_0"):
        np.testing.assert_array_equal(ds[key].values, arrays[key], err_msg=key)
    assert "extra_dim_0" in ds.data_vars
    tree = xr.open_datatree(zarr.storage.ZipStore(data, mode="r"), engine="zarr")
    assert sorted(tree["g"].to_dataset(inherit=False).data_vars) == ["a", "g_a_dim_0"]
    np.testing.assert_array_equal(tree["g"]["a"].values, arrays["g/a"])
    with OptStorage(tmp_path / "part.zarr") as item:
        for key, value in arrays.items():
            assert_same(item.load_data(key), value, key)


def test_a_triangle_meeting_another_arrays_names_is_read_with_its_own(tmp_path: Path) -> None:
    """A face-pair array stored as its triangle is told apart too: in its stored names
    and in the names it is read with (``cadstore_dims``)."""
    sym = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    sym = sym + sym.transpose(1, 0, 2)
    with OptStorage(tmp_path / "part.zarr") as storage:
        storage.save_data("d2_distance", sym)  # d2_distance_dim_<i>, stored as a triangle
        storage.save_data("d2/distance", np.zeros((1, 1, 3), np.float32))  # the same names
        storage.compress_store()
    data = tmp_path / "part.zarr.data"
    assert _dims(data, "d2/distance", 3) == [f"d2_distance_dim_{i}" for i in range(3)]
    group = zarr.open_group(zarr.storage.ZipStore(data, mode="r"), mode="r")
    assert group["d2_distance"].attrs["cadstore_dims"] == [
        f"d2_distance_dim_{i}_2" for i in range(3)
    ]
    assert _dims(data, "d2_distance", 3) == ["d2_distance_upper", "d2_distance_dim_2_2"]
    tree = xr.open_datatree(zarr.storage.ZipStore(data, mode="r"), engine="zarr")
    assert tree["d2"].sizes["d2_distance_dim_2"] == 3
    assert tree.sizes["d2_distance_dim_2_2"] == 2
    with OptStorage(tmp_path / "part.zarr") as item:
        assert_same(item.load_data("d2_distance"), sym, "d2_distance")


def test_an_item_reopened_keeps_its_arrays_names(tmp_path: Path) -> None:
    """Arrays carried over from the file an item is reopened from keep their names; a
    new array whose name meets one of theirs takes the suffix, and one re-saved is named
    anew."""
    schema = _meeting_names_schema()
    with OptStorage(tmp_path / "part.zarr") as storage:
        storage.set_schema(schema)
        storage.save_data("face_discretization", np.zeros((3, 6), np.float32))
        storage.compress_store()
    data = tmp_path / "part.zarr.data"
    with OptStorage(tmp_path / "part.zarr", mode="a") as storage:
        storage.set_schema(schema)
        storage.save_data("face", np.zeros((3, 7), np.float32))
        storage.compress_store()
    assert _dims(data, "face_discretization", 3) == ["face", "face_discretization_component"]
    assert _dims(data, "face", 3) == ["face", "face_discretization_component_2"]
    assert xr.open_zarr(zarr.storage.ZipStore(data, mode="r")).sizes == {
        "face": 3,
        "face_discretization_component": 6,
        "face_discretization_component_2": 7,
    }
    with OptStorage(tmp_path / "part.zarr", mode="a") as storage:
        storage.set_schema(schema)
        storage.save_data("face_discretization", np.zeros((3, 6), np.float32))
        storage.compress_store()
    # Both new or both carried over: key order decides again.
    assert _dims(data, "face", 3) == ["face", "face_discretization_component_2"]
    assert _dims(data, "face_discretization", 3) == ["face", "face_discretization_component"]
    with OptStorage(tmp_path / "part.zarr", mode="w") as storage:
        storage.set_schema(schema)
        storage.save_data("face", np.zeros((3, 7), np.float32))
        storage.save_data("face_discretization", np.zeros((3, 6), np.float32))
        storage.compress_store()
        assert _dims(data, "face_discretization", 3) == ["face", "face_discretization_component_2"]
        storage.delete_data("face")  # no longer met: the name it was saved with
    assert _dims(data, "face_discretization", 3) == ["face", "face_discretization_component"]


@pytest.mark.parametrize("fmt", [3, 2])
def test_a_reopened_items_own_name_gives_way_to_a_new_primary(tmp_path: Path, fmt: int) -> None:
    """A carried-over array's own name spelt as a new array's declared primary dimension
    is renamed (its documents rewritten), the primary never: both kept it, and xarray
    refused the item (two lengths for ``face_grid_x``). The names are those of the item
    saved in one session; the new array deleted in that session, the old name comes back,
    and an item reopened keeps the names it was stored with."""
    schema = _meeting_names_schema()
    grid = np.arange(2 * 3, dtype=np.int32).reshape(2, 3)
    face = np.arange(3 * 7, dtype=np.float32).reshape(3, 7)
    mark = np.arange(4, dtype=np.int32)
    with OptStorage(tmp_path / "part.zarr", zarr_format=fmt) as storage:
        storage.set_schema(schema)
        storage.save_data("face_grid", grid)
        storage.save_data("face", face)
        storage.compress_store()
    data = tmp_path / "part.zarr.data"
    assert _dims(data, "face_grid", fmt) == ["cell", "face_grid_x"]
    with OptStorage(tmp_path / "part.zarr", mode="a") as storage:
        storage.set_schema(schema)
        storage.save_data("mark", mark)
        storage.compress_store()
        assert _dims(data, "face_grid", fmt) == ["cell", "face_grid_x_2"]
        storage.delete_data("mark")  # no longer met: the name it was stored with
        storage.compress_store()
        assert _dims(data, "face_grid", fmt) == ["cell", "face_grid_x"]
        storage.save_data("mark", mark)
        storage.compress_store()
    assert _dims(data, "mark", fmt) == ["face_grid_x"]
    assert _dims(data, "face_grid", fmt) == ["cell", "face_grid_x_2"]
    assert _dims(data, "face", fmt) == ["face", "face_discretization_component"]
    ds = xr.open_zarr(zarr.storage.ZipStore(data, mode="r"))
    assert ds.sizes["face_grid_x"] == 4
    assert ds.sizes["face_grid_x_2"] == 3
    expected = {"face_grid": grid, "face": face, "mark": mark}
    for key, value in expected.items():
        np.testing.assert_array_equal(ds[key].values, value, err_msg=key)
    with OptStorage(tmp_path / "part.zarr", mode="a") as storage:
        storage.set_schema(schema)
        storage.save_data("face", face)  # a further session: the names stay
        storage.compress_store()
        assert _dims(data, "face_grid", fmt) == ["cell", "face_grid_x_2"]
    with OptStorage(tmp_path / "part.zarr") as item:
        for key, value in expected.items():
            assert_same(item.load_data(key), value, key)
    with OptStorage(tmp_path / "part.zarr", mode="a") as storage:
        storage.set_schema(schema)
        storage.delete_data("mark")
        storage.save_data("face", face)
        storage.compress_store()
    # Stored as face_grid_x_2 when reopened: the name it keeps.
    assert _dims(data, "face_grid", fmt) == ["cell", "face_grid_x_2"]


def test_a_reopened_items_triangle_gives_way_to_a_new_primary(tmp_path: Path) -> None:
    """A carried-over triangle's own names give way to a new array's primary dimension
    too: in its stored names and in those it is read with (``cadstore_dims``)."""
    sym = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    sym = sym + sym.transpose(1, 0, 2)
    with OptStorage(tmp_path / "part.zarr") as storage:
        storage.save_data("d2_distance", sym)  # d2_distance_dim_<i>, stored as a triangle
        storage.compress_store()
    builder = SchemaBuilder(domain="CAD")
    builder.create_group("bins", "d2_distance_dim_2", "Bins").create_array(
        "bin_width", ["d2_distance_dim_2"], "float32"
    )
    width = np.ones(5, np.float32)
    with OptStorage(tmp_path / "part.zarr", mode="a") as storage:
        storage.set_schema(builder.build())
        storage.save_data("bin_width", width)
        storage.compress_store()
    data = tmp_path / "part.zarr.data"
    assert _dims(data, "bin_width", 3) == ["d2_distance_dim_2"]
    assert _dims(data, "d2_distance", 3) == ["d2_distance_upper", "d2_distance_dim_2_2"]
    group = zarr.open_group(zarr.storage.ZipStore(data, mode="r"), mode="r")
    assert group["d2_distance"].attrs["cadstore_dims"] == [
        "d2_distance_dim_0",
        "d2_distance_dim_1",
        "d2_distance_dim_2_2",
    ]
    tree = xr.open_datatree(zarr.storage.ZipStore(data, mode="r"), engine="zarr")
    assert tree.sizes["d2_distance_dim_2"] == 5
    assert tree.sizes["d2_distance_dim_2_2"] == 2
    with OptStorage(tmp_path / "part.zarr") as item:
        assert_same(item.load_data("d2_distance"), sym, "d2_distance")
        assert_same(item.load_data("bin_width"), width, "bin_width")


def test_items_of_the_same_shapes_keep_their_own_documents(tmp_path: Path) -> None:
    """Array documents made once per process are shared by items of the same shapes; what
    differs between such items (declared names, a triangle or not, a scalar's kind) must
    not carry over from one item's file to the next."""
    builder = SchemaBuilder(domain="CAD")
    builder.create_group("faces", "face", "Face data").create_array(
        "face_areas", ["face"], "float32"
    )
    sym = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    sym = sym + sym.transpose(1, 0, 2)
    asym = sym.copy()
    asym[0, 1, 0] += 1
    values: list[dict[str, Any]] = [
        {"face_areas": np.ones(5, np.float32), "d2_distance": sym, "n": 3},
        {"face_areas": np.ones(5, np.float32), "d2_distance": asym, "n": np.int64(3)},
    ]
    for name, item, schema in (("a", values[0], builder.build()), ("b", values[1], None)):
        write_item(tmp_path / f"{name}.zarr", item, {}, schema=schema, summary_dir=False)
    a = zarr.open_group(zarr.storage.ZipStore(tmp_path / "a.zarr.data", mode="r"), mode="r")
    b = zarr.open_group(zarr.storage.ZipStore(tmp_path / "b.zarr.data", mode="r"), mode="r")
    assert a["face_areas"].metadata.dimension_names == ("face",)
    assert b["face_areas"].metadata.dimension_names == ("face_areas_dim_0",)
    assert a["d2_distance"].shape == (10, 2)  # the upper triangle, pairs (i <= j)
    assert b["d2_distance"].shape == (4, 4, 2)
    assert "cadstore_layout" in a["d2_distance"].attrs
    assert "cadstore_layout" not in b["d2_distance"].attrs
    assert a["n"].attrs.asdict() != b["n"].attrs.asdict()  # int and numpy scalar kinds
    for name, item in (("a", values[0]), ("b", values[1])):
        with OptStorage(tmp_path / f"{name}.zarr") as again:
            assert_same(again.load_data("d2_distance"), item["d2_distance"])
            assert type(again.load_data("n")) is type(item["n"])


def test_a_full_document_cache_starts_over_and_writes_the_same_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cadstore.format import hierarchy
    from cadstore.storage import keys

    def write(name: str) -> bytes:
        return Path(
            write_item(tmp_path / f"{name}.zarr", _item(), {}, summary_dir=False)
        ).read_bytes()

    reference = write("plenty")
    monkeypatch.setattr(hierarchy, "_ENCODED_DOCS", {})
    monkeypatch.setattr(hierarchy, "_ENCODED_DOCS_KEPT", 2)
    monkeypatch.setattr(keys, "_ACCEPTED", set())
    monkeypatch.setattr(keys, "_ACCEPTED_KEPT", 2)
    assert write("first") == write("again") == reference
    assert len(hierarchy._ENCODED_DOCS) <= 2 and len(keys._ACCEPTED) <= 2
    with pytest.raises(InvalidKeyError, match=re.escape("'..' segment")):
        keys.validate_key("face_areas/../x")


def test_array_documents_spliced_from_their_family_are_the_serialised_documents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Documents of new shapes are made from the text their family shares (the shape and
    # chunk shape spliced in): every zarr.json must be the document itself, serialised,
    # for items of sizes met first, met again, and with the families made by other sizes.
    from cadstore.format import hierarchy

    def item(n: int) -> dict[str, Any]:
        rng = np.random.default_rng(n)
        pairs = rng.random((n, n, 4)).astype(np.float32)
        return {
            **_item(),
            "face_areas": rng.random(n).astype(np.float32),
            "face_centroids": rng.random((n, 3)).astype(np.float32),
            "face_pairs": pairs + pairs.transpose(1, 0, 2),  # stored as a triangle
            "names": np.array([f"f{i}" for i in range(n)]),
            "Größe": np.arange(n, dtype=np.int64),
            "scalar": np.float64(n),
            "big": rng.standard_normal((n * 9_000, 3)).astype(np.float32),
        }

    def write(name: str, n: int) -> bytes:
        hierarchy._ENCODED_DOCS.clear()
        return Path(
            write_item(tmp_path / f"{name}.zarr", item(n), {}, summary_dir=False)
        ).read_bytes()

    monkeypatch.setattr(hierarchy, "_ENCODED_DOCS", {})
    monkeypatch.setattr(hierarchy, "_ARRAY_JSON_PARTS", {})
    sizes = (1, 7, 30, 7, 2)
    spliced = [write(f"spliced-{i}", n) for i, n in enumerate(sizes)]
    families = hierarchy._ARRAY_JSON_PARTS
    assert families  # the families were made and used
    # A triangle's document holds its item shape: written whole, making no family; and
    # the families are bounded.
    assert not any((7, 7, 4) in family for family in families), list(families)
    monkeypatch.setattr(hierarchy, "_ARRAY_JSON_PARTS", {})
    monkeypatch.setattr(hierarchy, "_ARRAY_JSON_PARTS_KEPT", 3)
    assert write("bounded", 7) == spliced[1]
    assert 0 < len(hierarchy._ARRAY_JSON_PARTS) <= 3
    assert spliced[1] == spliced[3]
    monkeypatch.setattr(hierarchy, "_array_json_parts", lambda doc: ())
    for i, n in enumerate(sizes):
        assert write(f"whole-{i}", n) == spliced[i]
    with zipfile.ZipFile(tmp_path / "spliced-2.zarr.data") as zf:
        documents = [name for name in zf.namelist() if name.endswith("zarr.json")]
        assert "face_pairs/zarr.json" in documents and "names/zarr.json" in documents
        for name in documents:
            text = zf.read(name)
            assert text == json.dumps(
                json.loads(text), separators=(",", ":"), ensure_ascii=False
            ).encode("utf-8")
    assert json.loads(
        zipfile.ZipFile(tmp_path / "spliced-2.zarr.data").read("face_areas/zarr.json")
    )["shape"] == [30]


def _int_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "face_indices": np.arange(300, dtype=np.int32),  # an index: delta pays
        "edges_source": np.sort(rng.integers(0, 50_000, 800)).astype(np.int64),  # sorted ids
        "codes": rng.integers(-(2**30), 2**30, 800).astype(np.int32),  # noise: it does not
        "wrap": (np.arange(2000) * 37 % 256).astype(np.uint8),  # differences wrap around
        "down": -np.arange(3000, dtype=np.int16) * 11,
        # Several chunks: the first decides, every chunk carries the filter.
        "long": np.repeat(np.arange(1_500_000 // 4, dtype=np.int32), 4),
        "floats": np.linspace(0, 1, 500, dtype=np.float32),
    }


@pytest.mark.parametrize("fmt", [2, 3])
def test_delta_filter_on_integer_arrays_where_it_pays(tmp_path: Path, fmt: int) -> None:
    arrays = _int_arrays()
    with OptStorage(tmp_path / "ints.zarr", zarr_format=fmt, summary_dir=False) as storage:
        for key, value in arrays.items():
            storage.save_data(key, value)
        storage.compress_store()
    data = tmp_path / "ints.zarr.data"
    with zipfile.ZipFile(data) as zf:
        if fmt == 2:
            filters = {k: json.loads(zf.read(f"{k}/.zarray"))["filters"] for k in arrays}
            delta = {k for k, f in filters.items() if f}
            assert delta == {"face_indices", "edges_source", "wrap", "down", "long"}
            assert filters["face_indices"] == [{"id": "delta", "dtype": "<i4", "astype": "<i4"}]
            # It pays: an index of 300 values compresses to a handful of bytes.
            assert zf.getinfo("face_indices/0").file_size < 40
            assert len([n for n in zf.namelist() if n.startswith("long/")]) > 2
        else:
            # Zarr v3 has no standard delta codec: bytes and zstd only, on every array.
            for key in arrays:
                codecs = json.loads(zf.read(f"{key}/zarr.json"))["codecs"]
                assert [c["name"] for c in codecs] in (["bytes", "zstd"], ["bytes"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the standard readers read it without a warning
        group = zarr.open_group(zarr.storage.ZipStore(data, mode="r"), mode="r")
        ds = xr.open_zarr(zarr.storage.ZipStore(data, mode="r"))
        for key, value in arrays.items():
            np.testing.assert_array_equal(group[key][...], value, err_msg=key)
            np.testing.assert_array_equal(ds[key].values, value, err_msg=key)
            assert ds[key].dtype == value.dtype
    with OptStorage(tmp_path / "ints.zarr") as storage:
        for key, value in arrays.items():
            got = storage.load_data(key)
            np.testing.assert_array_equal(got, value, err_msg=key)
            assert got.dtype == value.dtype


def test_array_documents_follow_each_array(tmp_path: Path) -> None:
    # Serialised array documents are reused across items with equal arrays: whatever
    # differs (dims, level, dtype, scalar kind, shape) must still reach each file.
    builder = SchemaBuilder(domain="CAD")
    builder.create_group("faces", "face", "Face data").create_array(
        "face_areas", ["face"], "float32"
    )
    schema = builder.build()
    cases = [
        ({}, {"face_areas": np.ones(300, np.float32)}),
        ({"compression_level": 5}, {"face_areas": np.ones(300, np.float32)}),
        ({}, {"face_areas": np.ones(300, np.float64)}),
        ({}, {"face_areas": np.ones(301, np.float32)}),
        ({}, {"face_areas": np.float32(1.0)}),
        ({}, {"face_areas": 1.0}),
        ({"schema": schema}, {"face_areas": np.ones(300, np.float32)}),
    ]
    seen = []
    for i, (options, item) in enumerate(cases):
        # "schema" among the options goes to write_item's schema, the rest to OptStorage.
        write_item(tmp_path / f"p{i}.zarr", item, {}, summary_dir=False, **options)
        with zipfile.ZipFile(tmp_path / f"p{i}.zarr.data") as zf:
            doc = json.loads(zf.read("face_areas/zarr.json"))
            root = json.loads(zf.read("zarr.json"))
        assert root["consolidated_metadata"]["metadata"]["face_areas"] == doc
        value = np.asarray(item["face_areas"])
        assert doc["shape"] == list(value.shape)
        assert doc["data_type"] == value.dtype.name
        level = [c for c in doc["codecs"] if c["name"] == "zstd"]
        assert level == (
            []
            if value.nbytes < 512
            else [
                {
                    "name": "zstd",
                    "configuration": {
                        "level": options.get("compression_level", DEFAULT_COMPRESSION_LEVEL),
                        "checksum": False,
                    },
                }
            ]
        )
        seen.append(json.dumps(doc, sort_keys=True))
        with OptStorage(tmp_path / f"p{i}.zarr") as reopened:
            assert_same(reopened.load_data("face_areas"), item["face_areas"])
    assert json.loads(seen[-1])["dimension_names"] == ["face"]
    assert json.loads(seen[0])["dimension_names"] == ["face_areas_dim_0"]
    assert json.loads(seen[4])["attributes"] != json.loads(seen[5])["attributes"]
    assert len(set(seen)) == len(cases)


@pytest.mark.parametrize("fmt", [3, 2])
def test_zip_is_clean(tmp_path: Path, fmt: int) -> None:
    data = _write(tmp_path / "part.zarr", fmt)
    with zipfile.ZipFile(data) as zf:
        names = zf.namelist()
        assert len(names) == len(set(names))
        assert "metadata.json" in names
        for info in zf.infolist():
            is_doc = info.filename.rsplit("/", 1)[-1] in (
                "zarr.json",
                ".zarray",
                ".zattrs",
                ".zgroup",
                ".zmetadata",
                "metadata.json",
            )
            # Chunks are zstd frames, stored as they are; JSON documents are deflated.
            expected = (
                (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED) if is_doc else (zipfile.ZIP_STORED,)
            )
            assert info.compress_type in expected, info.filename
        assert zf.testzip() is None
        meta = json.loads(zf.read("metadata.json"))
    assert meta["size_cadfile"] == 1024
    assert meta["file_sizes_KB"]["big"] > 1000


def test_same_item_gives_same_bytes(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.zarr")
    b = _write(tmp_path / "b.zarr")
    assert a.read_bytes() == b.read_bytes()


def test_reopen_reads_back_exactly(tmp_path: Path) -> None:
    _write(tmp_path / "part.zarr")
    with OptStorage(tmp_path / "part.zarr") as storage:
        assert storage.read_only
        for key, value in _item().items():
            assert_same(storage.load_data(key), value, key)
        with pytest.raises(ReadOnlyStorageError):
            storage.save_data("x", 1)
        # As specified: the store path; the published file is compressed_path.
        assert storage.get_file_path("") == str(tmp_path / "part.zarr")
        assert storage.compressed_path == str(tmp_path / "part.zarr.data")


def test_size_tracking_reports_stored_bytes(tmp_path: Path) -> None:
    storage = OptStorage(tmp_path / "part.zarr")
    zeros = np.zeros(1_000_000, dtype=np.float64)
    storage.save_data("zeros", zeros)
    # 8 MB of zeros compress to almost nothing; the record reflects the stored chunk.
    assert storage.load_metadata("file_sizes_KB/zeros") < 10
    storage.close()


def test_close_exports_summary_and_visualisations(tmp_path: Path) -> None:
    encoded = tmp_path / "encoded"
    store = encoded / "part_001.zarr"
    storage = OptStorage(store)
    storage.save_data("face_areas", np.ones(3, dtype=np.float32))
    storage.save_metadata("size_cadfile", 10)
    (store / "visu_preview.png").write_bytes(b"png")
    size = storage.compress_store()
    assert size == (encoded / "part_001.zarr.data").stat().st_size
    assert store.is_dir()  # the directory remains until close()
    storage.close()
    assert not store.exists()
    summary = json.loads((encoded / "files_summary" / "part_001.json").read_text())
    assert summary["size_cadfile"] == 10
    assert (encoded / "stream_cache" / "visu_preview.png").read_bytes() == b"png"


def test_close_without_compress_keeps_a_zarr_directory(tmp_path: Path) -> None:
    storage = OptStorage(tmp_path / "part.zarr")
    storage.save_data("face_areas", np.ones(3, dtype=np.float32))
    storage.close()
    group = zarr.open_group(
        zarr.storage.LocalStore(tmp_path / "part.zarr", read_only=True), mode="r"
    )
    np.testing.assert_array_equal(group["face_areas"][...], np.ones(3))
    assert not (tmp_path / "part.zarr.data").exists()


def test_without_working_directory_nothing_is_made_at_store_path(tmp_path: Path) -> None:
    store = tmp_path / "part.zarr"
    storage = OptStorage(store, working_directory=False)
    storage.save_data("face_areas", np.ones(3, dtype=np.float32))
    assert not store.exists()
    storage.compress_store()
    storage.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files_summary", "part.zarr.data"]
    with zipfile.ZipFile(tmp_path / "part.zarr.data") as zf:
        group = zarr.open_group(zarr.storage.ZipStore(zf.filename, mode="r"), mode="r")
        np.testing.assert_array_equal(group["face_areas"][...], np.ones(3))
    # Closed without compress_store(), the item is published as a directory store.
    storage = OptStorage(tmp_path / "other.zarr", working_directory=False)
    storage.save_data("face_areas", np.ones(3, dtype=np.float32))
    assert not (tmp_path / "other.zarr").exists()
    storage.close()
    group = zarr.open_group(
        zarr.storage.LocalStore(tmp_path / "other.zarr", read_only=True), mode="r"
    )
    np.testing.assert_array_equal(group["face_areas"][...], np.ones(3))


def test_without_working_directory_a_directory_made_meanwhile_is_handled(tmp_path: Path) -> None:
    store = tmp_path / "part.zarr"
    storage = OptStorage(store, working_directory=False, stream_cache_dir=tmp_path / "cache")
    storage.save_data("face_areas", np.ones(3, dtype=np.float32))
    store.mkdir()  # a caller putting a preview where get_file_path("") says
    (store / "visu_preview.png").write_bytes(b"png")
    storage.compress_store()
    storage.close()
    assert (tmp_path / "cache" / "visu_preview.png").read_bytes() == b"png"
    assert not store.exists()  # else the next open would find a writable, empty item
    with OptStorage(store) as again:
        assert again.read_only and again.get_keys() == ["face_areas"]


def test_without_working_directory_a_killed_writers_store_is_replaced(tmp_path: Path) -> None:
    store = tmp_path / "part.zarr"
    storage = OptStorage(store, summary_dir=False)
    storage.save_data("old", np.arange(3))
    storage.close()  # a directory store, as a writer killed before compress_store() leaves
    (store / "metadata.json").unlink()  # ... torn
    before = sorted(p.name for p in store.iterdir())
    storage = OptStorage(store, mode="w", working_directory=False, summary_dir=False)
    storage.save_data("new", np.arange(4))
    assert sorted(p.name for p in store.iterdir()) == before  # untouched until published
    storage.compress_store()
    storage.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.zarr.data"]
    with OptStorage(store) as again:
        assert again.get_keys() == ["new"]


def test_unused_storage_leaves_nothing(tmp_path: Path) -> None:
    OptStorage(tmp_path / "part.zarr").close()
    assert list(tmp_path.iterdir()) == []


def test_changes_after_compress_are_published_on_close(tmp_path: Path) -> None:
    storage = OptStorage(tmp_path / "part.zarr")
    storage.save_data("a", 1)
    storage.compress_store()
    storage.save_data("b", 2)
    storage.close()
    with OptStorage(tmp_path / "part.zarr") as again:
        assert again.load_data("b") == 2


def test_append_mode_republishes(tmp_path: Path) -> None:
    _write(tmp_path / "part.zarr")
    with OptStorage(tmp_path / "part.zarr", mode="a") as storage:
        assert not storage.read_only
        storage.save_data("extra", np.arange(3))
        storage.compress_store()
    with OptStorage(tmp_path / "part.zarr") as storage:
        assert_same(storage.load_data("extra"), np.arange(3))
        assert_same(storage.load_data("graph"), _item()["graph"])


def test_concurrent_close_and_compress(tmp_path: Path) -> None:
    for attempt in range(5):
        storage = OptStorage(tmp_path / f"p{attempt}.zarr")
        storage.save_data("a", np.arange(1000))
        storage.compress_store()
        errors: list[BaseException] = []

        def close(s: OptStorage = storage, errors: list[BaseException] = errors) -> None:
            try:
                s.close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=close) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with OptStorage(tmp_path / f"p{attempt}.zarr") as again:
            assert_same(again.load_data("a"), np.arange(1000))


def test_spec_example_optstorage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = OptStorage(
        store_path="./flow_output/flows/my_flow/encoded/part_001.zarr",
        compress_extension=".data",
    )
    storage.save_data("num_faces", 42)
    storage.save_data("face_areas", np.array([1.5, 2.3, 4.1], dtype=np.float32))
    storage.save_data("face_normals", np.random.randn(100, 3).astype(np.float32))
    storage.save_data(
        "graph",
        {
            "edges_source": np.array([0, 1, 2]),
            "edges_destination": np.array([1, 2, 3]),
            "num_nodes": 4,
        },
    )
    storage.save_data("description", "High-complexity CAD part")
    face_areas = storage.load_data("face_areas")
    assert isinstance(face_areas, np.ndarray)
    graph = storage.load_data("graph")
    assert graph["num_nodes"] == 4
    assert storage.load_data("num_faces") == 42
    assert storage.load_data("description") == "High-complexity CAD part"
    compressed_size = storage.compress_store()
    assert Path("flow_output/flows/my_flow/encoded/part_001.zarr.data").stat().st_size == (
        compressed_size
    )
    storage.close()
    assert storage.format() == "zarr"


# ---------------------------------------------------------------------- vendor files
def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(
        np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    ).hexdigest()


@pytest.mark.parametrize("name", ["item_basic", "item_empty", "item_chunked"])
def test_reads_vendor_zarr2_items(name: str) -> None:
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    storage = OptStorage(FIXTURES / f"{name}.zarr")
    try:
        assert storage.read_only and storage.zarr_format == 2
        for key, spec in expected["arrays"].items():
            if key in expected.get("strings", {}):
                continue
            arr = np.asarray(storage.load_data(key))
            assert arr.dtype == np.dtype(spec["dtype"]), key
            assert list(arr.shape) == spec["shape"], key
            assert _sha(arr) == spec["sha256"], key
            assert list(storage.get_array_dims(key) or ()) == spec["dims"], key
        for key, value in expected.get("strings", {}).items():
            # A string saved from a str (shape (1,) in the file) reads back as that str.
            got = storage.load_data(key)
            assert (got if isinstance(value, str) else np.asarray(got).tolist()) == value, key
        for key, value in expected.get("scalars", {}).items():
            assert np.asarray(storage.load_data(key)).item() == value, key
        assert storage.load_metadata() == expected["metadata"]
        assert set(storage.get_keys()) == {k.split("/")[0] for k in expected["arrays"]}
    finally:
        storage.close()


def test_zarr2_codecs_are_an_extra_named_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # MsgPack strings appear only in files zarr-python 2 wrote: msgpack is the zarr2 extra,
    # imported when such a file is read, and its absence is an error naming the extra.
    expected = json.loads((FIXTURES / "item_basic.expected.json").read_text())
    key = next(iter(expected["strings"]))
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with OptStorage(FIXTURES / "item_basic.zarr") as storage:
        with pytest.raises(ImportError, match=r"needs msgpack: pip install 'cadstore\[zarr2\]'"):
            storage.load_data(key)
        # The rest of the item reads without it.
        assert storage.load_data("face_areas").shape == tuple(
            expected["arrays"]["face_areas"]["shape"]
        )


def test_write_mode_replaces_an_item(tmp_path: Path) -> None:
    _write(tmp_path / "part.zarr")
    with OptStorage(tmp_path / "part.zarr", mode="w") as storage:
        assert storage.get_keys() == []
        storage.save_data("only", 1)
        storage.compress_store()
    with OptStorage(tmp_path / "part.zarr") as storage:
        assert storage.get_keys() == ["only"]
