"""Merging items into a .dataset: layout, provenance, offsets, robustness, readers."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from cadstore import DatasetMerger, OptStorage, SchemaBuilder
from cadstore.dataset.reader import DatasetReader
from cadstore.errors import MergeError
from cadstore.format.hierarchy import ReadHierarchy
from cadstore.format.sharding import ITEMS_PER_INNER, MIN_INNER_BYTES, shard_layout
from cadstore.io.sources import ZipSource
from cadstore.lifecycle import read_commit
from cadstore.merging import merge_items
from cadstore.merging.options import DEFAULT_INNER_BYTES
from conftest import OS_ERROR_KINDS, write_arrays, write_items
from datasets import assert_same_dataset

FACEFACE = ("a3_distance", "d2_distance", "extended_adjacency", "face_pair_edges_path")


_STORES: list[zarr.storage.ZipStore] = []


def _store(path: Path) -> zarr.storage.ZipStore:
    store = zarr.storage.ZipStore(path, mode="r")
    _STORES.append(store)
    return store


def _open(path: Path) -> zarr.Group:
    return zarr.open_group(_store(path), mode="r")


@pytest.fixture(autouse=True)
def _close_stores() -> Any:
    yield
    while _STORES:
        _STORES.pop().close()


def _expected(items: list[tuple[Path, Any, Any]], key: str) -> np.ndarray:
    parts = []
    for _, item, _ in items:
        value = item["graph"][key.split("/")[1]] if key.startswith("graph/") else item[key]
        if key in FACEFACE:
            value = value.reshape(value.shape[0] * value.shape[1], *value.shape[2:])
        parts.append(value)
    return np.concatenate(parts)


def _face_pairs_via_zarr(g: zarr.Group, name: str) -> np.ndarray:
    """A face-pair array's full rows as zarr-python reads them: from ``faceface`` when
    stored in full, else rebuilt from ``faceface_upper`` by the documented row formula."""
    if name in g["faceface"]:
        return np.asarray(g[f"faceface/{name}"][...])
    tri = np.asarray(g[f"faceface_upper/{name}"][...])
    full_offsets = np.asarray(g["faceface/item_offsets"][...])
    tri_offsets = np.asarray(g["faceface_upper/item_offsets"][...])
    parts = []
    for c in range(len(full_offsets) - 1):
        n = int(np.sqrt(full_offsets[c + 1] - full_offsets[c]))
        i, j = np.divmod(np.arange(n * n), n)
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        parts.append(tri[tri_offsets[c] + lo * n - lo * (lo - 1) // 2 + (hi - lo)])
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def merged(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "flow.dataset"
    merge_items([p for p, _, _ in realistic_items], out)
    return out


def test_rows_and_values_match_the_items(merged: Path, realistic_items: list[Any]) -> None:
    g = _open(merged)
    # The symmetric face-pair arrays are stored as upper triangles, in a group of their own.
    assert sorted(g.group_keys()) == ["edges", "faceface", "faceface_upper", "faces", "graph"]
    for group, keys in {
        "faces": (
            "face_areas",
            "face_types",
            "face_centroids",
            "face_discretization",
            "face_loops",
            "face_indices",
            "face_neighborscount",
        ),
        "edges": ("edge_lengths", "edge_types", "edge_u_grids", "edge_convexities"),
        "faceface": FACEFACE,
        "graph": ("graph/edges_source", "graph/edges_destination"),
    }.items():
        for key in keys:
            name = key.split("/")[-1]
            if group == "faceface":
                got = _face_pairs_via_zarr(g, name)
            else:
                got = g[f"{group}/{name}"][...]
            expected = _expected(realistic_items, key)
            assert got.dtype == expected.dtype, key
            np.testing.assert_array_equal(got, expected, err_msg=key)


def test_offsets_and_file_id_codes(merged: Path, realistic_items: list[Any]) -> None:
    g = _open(merged)
    n = len(realistic_items)
    faces = [len(item["face_indices"]) for _, item, _ in realistic_items]
    for group, per_item in {
        "faces": faces,
        "faceface": [f * f for f in faces],
        "edges": [len(item["edge_indices"]) for _, item, _ in realistic_items],
        "graph": [len(item["graph"]["edges_source"]) for _, item, _ in realistic_items],
    }.items():
        offsets = g[f"{group}/item_offsets"][...]
        assert offsets.dtype == np.int64 and len(offsets) == n + 1
        np.testing.assert_array_equal(np.diff(offsets), per_item)
        codes = g[f"{group}/file_id_code_{group}"][...]
        assert codes.dtype == np.int64
        np.testing.assert_array_equal(codes, np.repeat(np.arange(n), per_item))
        assert g[f"{group}/face_indices" if group == "faces" else f"{group}/item_offsets"]


def test_facepair_rows_are_row_major(merged: Path, realistic_items: list[Any]) -> None:
    g = _open(merged)
    offsets = g["faceface/item_offsets"][...]
    code = 3
    item = realistic_items[code][1]
    n = len(item["face_indices"])
    rows = g["faceface/face_pair_edges_path"][offsets[code] : offsets[code + 1]]
    i, j = 2, 5
    np.testing.assert_array_equal(rows[i * n + j], item["face_pair_edges_path"][i, j])
    # A triangle-stored array: pair (i, j), i <= j, at row i * n - i * (i - 1) // 2 + (j - i).
    upper = g["faceface_upper/item_offsets"][...]
    tri = g["faceface_upper/d2_distance"][upper[code] : upper[code + 1]]
    assert len(tri) == n * (n + 1) // 2
    np.testing.assert_array_equal(
        tri[i * n - i * (i - 1) // 2 + (j - i)], item["d2_distance"][i, j]
    )


def test_per_item_scalars_are_stored_once(merged: Path, realistic_items: list[Any]) -> None:
    g = _open(merged)
    num_nodes = g["graph/num_nodes"]
    assert num_nodes.shape == (len(realistic_items),)
    assert num_nodes.metadata.dimension_names == ("item",)
    np.testing.assert_array_equal(
        num_nodes[...], [item["graph"]["num_nodes"] for _, item, _ in realistic_items]
    )
    names = g["item_names"][...]
    assert names.tolist() == [p.name[: -len(".zarr.data")] for p, _, _ in realistic_items]


def test_xarray_opens_every_group_with_named_dims(merged: Path) -> None:
    store = _store(merged)
    faces = xr.open_zarr(store, group="faces")
    assert faces["face_areas"].dims == ("face",)
    assert faces["file_id_code_faces"].dims == ("face",)
    faceface = xr.open_zarr(store, group="faceface")
    assert faceface["face_pair_edges_path"].dims[0] == "facepair"
    upper = xr.open_zarr(store, group="faceface_upper")
    assert upper["d2_distance"].dims[0] == "facepair_upper"
    assert upper["d2_distance"].attrs["cadstore_layout"] == "upper_triangle"
    graph = xr.open_zarr(store, group="graph")
    assert graph["edges_source"].dims == ("edge",)
    assert graph["num_nodes"].dims == ("item",)


def test_our_reader_agrees_with_zarr(merged: Path) -> None:
    source = ZipSource(str(merged))
    try:
        hier = ReadHierarchy(source)
        g = _open(merged)
        for path in (
            "faces/face_discretization",
            "faceface_upper/a3_distance",
            "faceface/face_pair_edges_path",
            "graph/num_nodes",
            "edges/file_id_code_edges",
        ):
            np.testing.assert_array_equal(hier.read_array(path), g[path][...])
    finally:
        source.close()


def test_inner_chunks_hold_a_few_items(merged: Path, realistic_items: list[Any]) -> None:
    """Small rows get inner chunks of a few items' rows, not 256 KiB of them; face pairs,
    hundreds of kilobytes per item, get the whole byte target."""
    g = _open(merged)

    def rows(key: str) -> list[int]:
        return [len(item[key]) for _, item, _ in realistic_items]

    def upper(n: int) -> int:  # an item's face pairs are N x N: N (N + 1) / 2 stored rows
        return n * (n + 1) // 2

    for path, typical, row_bytes in (
        ("faces/face_areas", np.median(rows("face_areas")), 4),
        ("edges/edge_u_grids", np.median(rows("edge_u_grids")), 120),
        ("faceface_upper/d2_distance", np.median([upper(r) for r in rows("d2_distance")]), 256),
    ):
        wanted = max(ITEMS_PER_INNER * int(typical), MIN_INNER_BYTES // row_bytes)
        assert g[path].chunks[0] == min(DEFAULT_INNER_BYTES // row_bytes, wanted), path
    assert DEFAULT_INNER_BYTES == 256 * 1024


def test_shard_layout_caps_inner_chunks_by_item_rows() -> None:
    mib16 = 16 * 1024 * 1024
    assert shard_layout(4, 65536, mib16) == (16384, 16384 * 256)
    # 25 faces per item: four items are 100 rows, below the 16 KiB floor of 4096 rows.
    assert shard_layout(4, 65536, mib16, item_rows=25)[0] == MIN_INNER_BYTES // 4
    assert shard_layout(120, 65536, mib16, item_rows=65)[0] == ITEMS_PER_INNER * 65
    assert shard_layout(256, 65536, mib16, item_rows=625)[0] == 256
    inner, shard = shard_layout(4, 65536, mib16, shard_rows=500, item_rows=25)
    assert (inner, shard % inner) == (500, 0)


def test_schema_gives_dims_and_groups(tmp_path: Path) -> None:
    builder = SchemaBuilder(domain="CAD").from_template("cad_advanced")
    items = write_items(tmp_path / "enc", 4, seed=3, schema=builder.build())
    out = tmp_path / "s.dataset"
    merger = DatasetMerger([p for p, _, _ in items], out)
    merger.merge_data()
    ds = xr.open_zarr(_store(out), group="faces")
    assert ds["face_centroids"].dims[0] == "face"
    groups = merger.get_discovered_groups()
    assert "face_areas" in groups["faces"]["arrays"]


@pytest.mark.parametrize("layout", ["auto", "full"])
def test_a_dimension_declared_with_two_lengths_in_a_group_is_qualified_by_each_array(
    tmp_path: Path, layout: str
) -> None:
    """The schema names dimensions per group, and the encoder declares both histograms on
    ``bin`` with a ``num_bins`` each: D2 on 64 bins and A3 on 32 made a group in which
    ``bin`` had two lengths, which neither xarray (open_zarr, open_datatree) nor the
    explorer could open ("conflicting sizes for dimension 'bin'"). Such a name is now
    qualified by each array, as items qualify theirs; a name of one length stays."""
    from cadstore.dataset import DatasetExplorer
    from cadstore.merging import append_items

    schema = SchemaBuilder(domain="CAD").from_template("cad_advanced").build()
    rng = np.random.default_rng(0)
    files = []
    for n, faces in enumerate((2, 3, 0, 4)):
        arrays: dict[str, Any] = {"face_areas": rng.random(faces).astype(np.float32)}
        for key, bins in (("d2_distance", 64), ("a3_distance", 32)):
            half = rng.random((faces, faces, bins)).astype(np.float32)
            arrays[key] = half + half.transpose(1, 0, 2)
        arrays["face_pair_edges_path"] = rng.integers(-1, 9, (faces, faces, 5)).astype(np.int32)
        path = tmp_path / f"p{n}.zarr"
        storage = OptStorage(path)
        storage.set_schema(schema)
        for key, value in arrays.items():
            storage.save_data(key, value)
        storage.compress_store()
        storage.close()
        files.append(f"{path}.data")
    out = tmp_path / "x.dataset"
    merge_items(files[:3], out, face_pair_layout=layout)
    append_items(out, files[3:])
    pairs = "faceface_upper" if layout == "auto" else "faceface"
    with _store(out) as store:
        ds = xr.open_zarr(store, group=pairs)
        assert ds["d2_distance"].dims[1:] == ("d2_distance_bin",)
        assert ds["a3_distance"].dims[1:] == ("a3_distance_bin",)
        assert xr.open_zarr(store, group="faceface")["face_pair_edges_path"].dims[1:] == (
            "dim_path",
        )
        xr.open_datatree(store, engine="zarr")
    with DatasetExplorer(merged_store_path=out) as explorer:
        view = explorer.get_group_data("faceface")
        assert view["d2_distance"].shape == (4 + 9 + 0 + 16, 64)
        assert view["a3_distance"].shape == (29, 32)


@pytest.mark.parametrize("layout", ["auto", "full"])
def test_a_qualified_dimension_name_never_takes_a_name_the_group_declares(
    tmp_path: Path, layout: str
) -> None:
    """``bin`` of two lengths is qualified by each array (``d2_distance_bin``), but a
    group may declare that very name itself: here ``face_pair_edges_path`` is on
    ``d2_distance_bin`` (5 long). The merger gave D2's 64 bins the same name, and xarray
    and the explorer refused the group ("conflicting sizes for dimension
    'd2_distance_bin'"). A qualified name that is taken gets the first free ``_2``,
    ``_3``, ...; the declared name stays with its array."""
    from cadstore.dataset import DatasetExplorer

    schema = SchemaBuilder(domain="CAD").from_template("cad_advanced").build()
    path_spec = schema["groups"]["faceface"]["arrays"]["face_pair_edges_path"]
    path_spec["dims"] = ["facepair", "d2_distance_bin"]
    rng = np.random.default_rng(1)
    files, items = [], []
    for n, faces in enumerate((2, 0, 3)):
        arrays: dict[str, Any] = {"face_areas": rng.random(faces).astype(np.float32)}
        for key, bins in (("d2_distance", 64), ("a3_distance", 32)):
            half = rng.random((faces, faces, bins)).astype(np.float32)
            arrays[key] = half + half.transpose(1, 0, 2)
        arrays["face_pair_edges_path"] = rng.integers(-1, 9, (faces, faces, 5)).astype(np.int32)
        path = tmp_path / f"p{n}.zarr"
        with OptStorage(path) as storage:
            storage.set_schema(schema)
            for key, value in arrays.items():
                storage.save_data(key, value)
            storage.compress_store()
        files.append(f"{path}.data")
        items.append(arrays)
    out = tmp_path / "x.dataset"
    merge_items(files, out, face_pair_layout=layout)
    pairs = "faceface_upper" if layout == "auto" else "faceface"
    with _store(out) as store:
        ds = xr.open_zarr(store, group=pairs)
        assert ds["d2_distance"].dims[1:] == ("d2_distance_bin_2",)
        assert ds["a3_distance"].dims[1:] == ("a3_distance_bin",)
        path_dims = xr.open_zarr(store, group="faceface")["face_pair_edges_path"].dims
        assert path_dims[1:] == ("d2_distance_bin",)
        xr.open_datatree(store, engine="zarr")
    with DatasetExplorer(merged_store_path=out) as explorer:
        view = explorer.get_group_data("faceface")
        assert view["d2_distance"].dims == ("facepair", "d2_distance_bin_2")
        assert view["face_pair_edges_path"].dims == ("facepair", "d2_distance_bin")
        assert view.sizes["d2_distance_bin_2"] == 64 and view.sizes["d2_distance_bin"] == 5
        for code, arrays in enumerate(items):
            rows = explorer.file_dataset(code, "faceface")
            for key in ("d2_distance", "a3_distance", "face_pair_edges_path"):
                n, _, width = arrays[key].shape
                expected = arrays[key].reshape(n * n, width)
                np.testing.assert_array_equal(rows[key].values, expected, f"{key} of {code}")


def test_qualified_dimension_names_are_distinct_in_any_order() -> None:
    """Two qualified names can meet too: ``a`` on ``b_c`` and ``a_b`` on ``c`` (each name
    of two lengths) were both ``a_b_c``, of lengths 2 and 4. Every qualified name is now
    one no other dimension has, the same whatever order the arrays come in (the merger
    and the reader list them in different orders)."""
    from cadstore.format.layout import qualify_dims

    arrays = [
        ("a", ["row", "b_c"], (2,)),
        ("x", ["row", "b_c"], (3,)),
        ("a_b", ["row", "c"], (4,)),
        ("y", ["row", "c"], (5,)),
    ]
    named = dict(zip([a for a, _, _ in arrays], qualify_dims(arrays, ["row"]), strict=True))
    assert named == {
        "a": ["row", "a_b_c"],
        "a_b": ["row", "a_b_c_2"],
        "x": ["row", "x_b_c"],
        "y": ["row", "y_c"],
    }
    backwards = arrays[::-1]
    again = dict(zip([a for a, _, _ in backwards], qualify_dims(backwards, ["row"]), strict=True))
    assert again == named


def _coordinate_items(
    tmp_path: Path, counts: tuple[int, ...], seed: int, prefix: str = "p"
) -> tuple[list[str], list[dict[str, np.ndarray]]]:
    """Items of a schema declaring ``face_centroids`` on ``face`` and ``coordinate`` (3
    long) beside arrays ``coordinate`` and ``face`` along ``face``, of ``counts`` faces:
    their paths and their arrays."""
    builder = SchemaBuilder(domain="CAD")
    faces = builder.create_group("faces", "face", "Face data")
    faces.create_array("face_centroids", ["face", "coordinate"], "float32")
    faces.create_array("coordinate", ["face"], "float32")
    faces.create_array("face", ["face"], "int32")
    schema = builder.build()
    rng = np.random.default_rng(seed)
    files, rows = [], []
    for n, count in enumerate(counts):
        arrays = {
            "face_centroids": rng.random((count, 3)).astype(np.float32),
            "coordinate": rng.random(count).astype(np.float32),
            "face": np.arange(count, dtype=np.int32) + 10 * n + 100 * seed,
        }
        rows.append(arrays)
        files.append(_schema_item(tmp_path / f"{prefix}{n}.zarr", schema, arrays))
    return files, rows


def _schema_item(path: Path, schema: Any, arrays: dict[str, np.ndarray]) -> str:
    """Publish ``arrays`` with ``schema`` as the item ``path`` (``<path>.data``)."""
    with OptStorage(path) as storage:
        storage.set_schema(schema)
        for key, value in arrays.items():
            storage.save_data(key, value)
        storage.compress_store()
    return f"{path}.data"


def test_an_array_named_as_a_trailing_dimension_keeps_it_for_itself(tmp_path: Path) -> None:
    """xarray takes a variable named as a dimension of its group for a coordinate. The
    schema declares ``face_centroids`` on ``coordinate`` (3 long) and an array
    ``coordinate`` along ``face``: the merger kept the name ``coordinate`` for both, and
    xarray listed the array among the coordinates, not the data. A trailing name spelt as
    an array of the group is qualified by its array (``face_centroids_coordinate``), as a
    name of two lengths is. An array named as the primary dimension is a coordinate by
    xarray's rule, an index when it is 1-D along it (``face``), values as stored; the
    reader and the explorer present the names the file has."""
    from cadstore.dataset import DatasetExplorer

    files, rows = _coordinate_items(tmp_path, (3, 2), seed=1)
    out = tmp_path / "x.dataset"
    merge_items(files, out)
    expected = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
    with _store(out) as store:
        ds = xr.open_zarr(store, group="faces")
        assert ds["face_centroids"].dims == ("face", "face_centroids_coordinate")
        assert "coordinate" in ds.data_vars and "face_centroids" in ds.data_vars
        assert list(ds.indexes) == ["face"]
        for key, value in expected.items():
            np.testing.assert_array_equal(ds[key].values, value, err_msg=key)
    with DatasetExplorer(merged_store_path=out) as explorer:
        view = explorer.get_group_data("faces")
        assert view["face_centroids"].dims == ("face", "face_centroids_coordinate")
        assert "coordinate" in view.data_vars
        for key, value in expected.items():
            np.testing.assert_array_equal(view[key].values, value, err_msg=key)


def test_a_trailing_dimension_spelt_as_a_bookkeeping_array_is_qualified(tmp_path: Path) -> None:
    """A schema declaring ``face_centroids`` on ``item_offsets`` (4 long) and ``face_ids`` on
    ``file_id_code_faces``: the merger kept both names, which are those of the arrays every
    group keeps, so ``xr.open_zarr`` listed ``item_offsets`` and ``file_id_code_faces``
    among the coordinates, dimensions of a length they do not have, while the reader and
    the explorer presented the names qualified. They are qualified by their array, as a
    name spelt as an array of the group is, and the file, the reader and xarray agree."""
    from cadstore.dataset import DatasetExplorer

    builder = SchemaBuilder(domain="CAD")
    faces = builder.create_group("faces", "face", "Face data")
    faces.create_array("face_centroids", ["face", "item_offsets"], "float32")
    faces.create_array("face_ids", ["face", "file_id_code_faces"], "int32")
    schema = builder.build()
    rng = np.random.default_rng(7)
    files, rows = [], []
    for n, count in enumerate((3, 2)):
        arrays = {
            "face_centroids": rng.random((count, 4)).astype(np.float32),
            "face_ids": rng.integers(0, 100, (count, 2)).astype(np.int32),
        }
        rows.append(arrays)
        files.append(_schema_item(tmp_path / f"p{n}.zarr", schema, arrays))
    out = tmp_path / "x.dataset"
    merge_items(files, out)
    expected = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
    expected["item_offsets"] = np.array([0, 3, 5])
    expected["file_id_code_faces"] = np.array([0, 0, 0, 1, 1])
    qualified = {
        "face_centroids": ("face", "face_centroids_item_offsets"),
        "face_ids": ("face", "face_ids_file_id_code_faces"),
    }
    with _store(out) as store:
        ds = xr.open_zarr(store, group="faces")
        for key, dims in qualified.items():
            assert ds[key].dims == dims
        assert list(ds.coords) == []
        assert set(ds.data_vars) == set(expected)
        assert ds["item_offsets"].dims == ("item_boundary",)
        for key, value in expected.items():
            np.testing.assert_array_equal(ds[key].values, value, err_msg=key)
    with DatasetReader(out) as reader:
        for key, dims in qualified.items():
            assert reader.stored_dims("faces", key) == dims
            assert reader.array_meta("faces", key).dims == dims
    with DatasetExplorer(merged_store_path=out) as explorer:
        view = explorer.get_group_data("faces")
        for key, dims in qualified.items():
            assert view[key].dims == dims
            np.testing.assert_array_equal(view[key].values, expected[key], err_msg=key)


def test_a_dataset_group_opens_in_xarray_without_a_warning(tmp_path: Path) -> None:
    """``xr.open_zarr(store, group=...)`` on a dataset, as docs/format.md calls it
    (``consolidated=False``) and as the explorer does (the default, which reads the root's
    consolidated metadata), opens with no warning and every value. xarray before 2025.3
    (pyproject's floor) warned for the default with a group and read the group's own
    documents; this checks the installed version."""
    from cadstore.dataset import DatasetExplorer

    files, rows = _coordinate_items(tmp_path, (3, 2), seed=3)
    out = tmp_path / "x.dataset"
    merge_items(files, out)
    expected = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
    for options in ({"consolidated": False}, {}):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with zarr.storage.ZipStore(out, mode="r") as store:
                ds = xr.open_zarr(store, group="faces", **options)
                values = {key: ds[key].values for key in expected}
        assert [str(w.message) for w in caught] == [], options
        for key, value in expected.items():
            np.testing.assert_array_equal(values[key], value, err_msg=key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with DatasetExplorer(merged_store_path=out) as explorer:
            view = explorer.get_group_data("faces")
            values = {key: view[key].values for key in expected}
    assert [str(w.message) for w in caught] == []
    for key, value in expected.items():
        np.testing.assert_array_equal(values[key], value, err_msg=key)


def _metadata_documents(dataset: Path) -> dict[str, bytes]:
    """Every ``zarr.json`` of ``dataset`` (a zip or a directory), by its key."""
    if dataset.is_dir():
        return {str(p.relative_to(dataset)): p.read_bytes() for p in dataset.rglob("zarr.json")}
    with zipfile.ZipFile(dataset) as archive:
        return {n: archive.read(n) for n in archive.namelist() if n.endswith("zarr.json")}


def _stored_dim_names(dataset: Path) -> dict[str, dict[str, list[str]]]:
    """Each array's dimension names as ``dataset`` stores them, by where:
    ``"consolidated"`` (the root's consolidated metadata) and ``"own"`` (the array's
    ``zarr.json``)."""
    found: dict[str, dict[str, list[str]]] = {"consolidated": {}, "own": {}}
    for key, data in _metadata_documents(dataset).items():
        doc = json.loads(data)
        if key == "zarr.json":
            for path, meta in doc["consolidated_metadata"]["metadata"].items():
                if meta.get("node_type") == "array":
                    found["consolidated"][path] = meta.get("dimension_names")
        elif doc.get("node_type") == "array":
            found["own"][key.rpartition("/")[0]] = doc.get("dimension_names")
    return found


def _as_merged_before_285460e(dataset: Path) -> None:
    """Rewrite ``dataset`` (a zip or a directory) as the merger wrote it before 285460e:
    ``face_centroids`` on ``coordinate``, the name of an array of its group, in the
    consolidated metadata and in the array's own. That merger's output for these items
    differs from the current one in these two names only (compared once with a worktree
    of 285460e^)."""
    qualified, old = ["face", "face_centroids_coordinate"], ["face", "coordinate"]
    changed = {}
    for key, data in _metadata_documents(dataset).items():
        doc = json.loads(data)
        if key == "zarr.json":
            meta = doc["consolidated_metadata"]["metadata"]["faces/face_centroids"]
        elif key == "faces/face_centroids/zarr.json":
            meta = doc
        else:
            continue
        assert meta["dimension_names"] == qualified
        meta["dimension_names"] = old
        changed[key] = json.dumps(doc).encode()
    assert len(changed) == 2
    if dataset.is_dir():
        for key, data in changed.items():
            (dataset / key).write_bytes(data)
        return
    with zipfile.ZipFile(dataset) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(dataset, "w") as archive:
        for info, data in members:
            archive.writestr(info, changed.get(info.filename, data))


@pytest.mark.parametrize(("form", "via"), [("zip", "api"), ("directory", "cli")])
def test_a_dataset_merged_with_a_trailing_name_spelt_as_an_array_reads_and_appends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str, via: str
) -> None:
    """A dataset merged before 285460e stores ``face_centroids`` on ``coordinate`` beside an
    array ``coordinate``. The reader and the explorer present it qualified, as the merger
    now stores it (``face_centroids_coordinate``), with every value; an append (the API's
    or ``cadstore merge --append``) continues the names the file stores, so its metadata
    stays one name per dimension of an array (the consolidated copy agreeing with each
    array's own), and the explorer and ``xr.open_zarr`` read every row, old and new, with
    its values."""
    import cadstore
    from cadstore.cli import main
    from cadstore.dataset import DatasetExplorer

    files, rows = _coordinate_items(tmp_path, (3, 2), seed=1)
    out = tmp_path / "x.dataset"
    merge_items(files, out, directory=form == "directory")
    _as_merged_before_285460e(out)
    stored = _stored_dim_names(out)
    assert stored["own"]["faces/face_centroids"] == ["face", "coordinate"]
    qualified = ("face", "face_centroids_coordinate")

    def check(rows: list[dict[str, np.ndarray]]) -> None:
        expected = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
        with DatasetReader(out) as reader:
            assert reader.n_items == len(rows)
            assert reader.array_meta("faces", "face_centroids").dims == qualified
            assert reader.stored_dims("faces", "face_centroids") == ("face", "coordinate")
            for code, item in enumerate(rows):
                got = reader.read_item(code)["faces"]
                for key, value in item.items():
                    np.testing.assert_array_equal(got[key], value, err_msg=f"{key} of {code}")
        with DatasetExplorer(merged_store_path=out) as explorer:
            view = explorer.get_group_data("faces")
            assert view["face_centroids"].dims == qualified
            assert "coordinate" in view.data_vars
            for key, value in expected.items():
                np.testing.assert_array_equal(view[key].values, value, err_msg=key)
            for code, item in enumerate(rows):
                one = explorer.file_dataset(code, "faces")
                assert one["face_centroids"].dims == qualified
                for key, value in item.items():
                    np.testing.assert_array_equal(one[key].values, value, err_msg=key)
        store = (
            zarr.storage.LocalStore(out, read_only=True)
            if form == "directory"
            else zarr.storage.ZipStore(out, mode="r")
        )
        with store:
            ds = xr.open_zarr(store, group="faces")
            assert ds["face_centroids"].dims == ("face", "coordinate")
            for key, value in expected.items():
                np.testing.assert_array_equal(ds[key].values, value, err_msg=key)

    check(rows)
    new_files, new_rows = _coordinate_items(tmp_path, (4, 0, 1), seed=2, prefix="q")
    if via == "api":
        result = cadstore.merge(new_files, str(out), append=True)
        assert not result.errors and len(result.items) == 3
    else:
        capsys.readouterr()
        assert main(["merge", *new_files, "-o", str(out), "--append", "--workers", "0"]) == 0
        assert capsys.readouterr().err == ""
    check(rows + new_rows)
    after = _stored_dim_names(out)
    assert after["consolidated"] == after["own"] == stored["own"]
    assert after["own"]["faces/face_centroids"] == ["face", "coordinate"]


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_parallel_merge_is_byte_identical(
    realistic_items: list[Any], merged: Path, tmp_path: Path, executor: str
) -> None:
    out = tmp_path / "parallel.dataset"
    merge_items([p for p, _, _ in realistic_items], out, workers=2, executor=executor)
    assert_same_dataset(out, merged)


def _scan_warning(location: Any, limits: Any) -> Any:
    """scan_item, warning in the process that scans (a merge worker, below)."""
    from cadstore.merging import scan

    warnings.warn(f"scanned {location.name} in process {os.getpid()}", UserWarning, stacklevel=1)
    return scan._real_scan_item(location, limits)  # type: ignore[attr-defined]


def test_a_process_merge_workers_warning_reaches_the_caller(
    realistic_items: list[Any], merged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warning issued in a worker of a merge with executor="process" was printed on the
    worker's stderr (or, under the caller's filters, raised in the worker) and never
    reached the caller, which records or filters the warnings of a thread merge. The
    worker's warning is issued again in the caller, as an encode worker's is."""
    from cadstore.merging import run, scan

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    # Forked workers inherit the patched scan.
    monkeypatch.setattr(run, "mp_context", lambda: multiprocessing.get_context("fork"))
    monkeypatch.setattr(scan, "_real_scan_item", scan.scan_item, raising=False)
    monkeypatch.setattr(scan, "scan_item", _scan_warning)
    files = [p for p, _, _ in realistic_items]
    out = tmp_path / "process.dataset"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merge_items(files, out, workers=2, executor="process")
    seen = [str(w.message) for w in caught if w.category is UserWarning]
    scanned = [text for text in seen if text.startswith("scanned ")]
    assert sorted(t.split(" in process ")[0] for t in scanned) == sorted(
        f"scanned {f.name}" for f in files
    )
    assert str(os.getpid()) not in {t.split(" in process ")[1] for t in scanned}
    assert_same_dataset(out, merged)


def test_directory_output(realistic_items: list[Any], tmp_path: Path) -> None:
    out = tmp_path / "dir.dataset"
    DatasetMerger([p for p, _, _ in realistic_items[:5]], out).merge_data(force_compression=False)
    assert out.is_dir()
    g = zarr.open_group(zarr.storage.LocalStore(out, read_only=True), mode="r")
    np.testing.assert_array_equal(
        g["faces/face_areas"][...], _expected(realistic_items[:5], "face_areas")
    )


def test_bad_items_are_skipped_and_listed(realistic_items: list[Any], tmp_path: Path) -> None:
    files = [p for p, _, _ in realistic_items[:6]]
    broken = tmp_path / "broken.zarr.data"
    broken.write_bytes(files[2].read_bytes()[:500])
    flipped = tmp_path / "flipped.zarr.data"
    raw = bytearray(files[3].read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    not_a_store = tmp_path / "text.zarr.data"
    not_a_store.write_text("hello")
    missing = tmp_path / "missing.zarr.data"
    result = merge_items(
        [files[0], broken, files[1], flipped, not_a_store, missing, files[4]],
        tmp_path / "out.dataset",
    )
    assert len(result.items) == 3
    assert {Path(e["file"]).name for e in result.errors} == {
        "broken.zarr.data",
        "flipped.zarr.data",
        "text.zarr.data",
        "missing.zarr.data",
    }
    g = _open(tmp_path / "out.dataset")
    kept = [realistic_items[i] for i in (0, 1, 4)]
    np.testing.assert_array_equal(g["faces/face_areas"][...], _expected(kept, "face_areas"))


def test_missing_arrays_zero_faces_and_dtype_promotion(tmp_path: Path) -> None:
    def item(path: Path, n_faces: int, area_dtype: str, with_types: bool) -> Path:
        s = OptStorage(path)
        s.save_data("face_areas", np.arange(n_faces, dtype=area_dtype))
        if with_types:
            s.save_data("face_types", np.ones(n_faces, dtype=np.int32))
        s.save_data(
            "graph", {"edges_source": np.arange(2 * n_faces, dtype=np.int16), "num_nodes": n_faces}
        )
        s.compress_store()
        s.close()
        return Path(str(path) + ".data")

    files = [
        item(tmp_path / "a.zarr", 3, "float32", True),
        item(tmp_path / "b.zarr", 0, "float64", True),
        item(tmp_path / "c.zarr", 2, "float32", False),
    ]
    merge_items(files, tmp_path / "out.dataset")
    g = _open(tmp_path / "out.dataset")
    areas = g["faces/face_areas"][...]
    assert areas.dtype == np.float64  # float32 and float64 promote safely
    np.testing.assert_array_equal(areas, [0, 1, 2, 0, 1])
    types = g["faces/face_types"][...]
    np.testing.assert_array_equal(types, [1, 1, 1, 0, 0])  # c lacks it: filled with 0
    np.testing.assert_array_equal(g["faces/item_offsets"][...], [0, 3, 3, 5])
    assert g["graph/edges_source"].dtype == np.int16


def test_incompatible_dtypes_name_the_array(tmp_path: Path) -> None:
    a = OptStorage(tmp_path / "a.zarr")
    a.save_data("labels", np.array([1, 2]))
    a.compress_store()
    a.close()
    b = OptStorage(tmp_path / "b.zarr")
    b.save_data("labels", np.array(["x", "y"]))
    b.compress_store()
    b.close()
    result = merge_items([tmp_path / "a.zarr.data"], tmp_path / "ok.dataset")
    assert result.items == ["a"]
    c = OptStorage(tmp_path / "c.zarr")
    c.save_data("labels", np.array([1 + 1j, 2]))
    c.compress_store()
    c.close()
    with pytest.raises(MergeError, match=r"labels.*'a'.*'c'|labels.*'c'.*'a'"):
        merge_items([tmp_path / "a.zarr.data", tmp_path / "c.zarr.data"], tmp_path / "bad.dataset")
    assert not (tmp_path / "bad.dataset").exists()


def test_duplicate_names_and_existing_output(realistic_items: list[Any], tmp_path: Path) -> None:
    first = realistic_items[0][0]
    copy = tmp_path / "other" / first.name
    copy.parent.mkdir()
    shutil.copy(first, copy)
    with pytest.raises(MergeError, match="duplicate item name"):
        merge_items([first, copy], tmp_path / "dup.dataset")
    out = tmp_path / "exists.dataset"
    out.write_text("precious")
    with pytest.raises(MergeError, match="already exists"):
        merge_items([first], out)
    assert out.read_text() == "precious"


def test_sources_are_kept_unless_asked(realistic_items: list[Any], tmp_path: Path) -> None:
    files = []
    for p, _, _ in realistic_items[:3]:
        shutil.copy(p, tmp_path / p.name)
        files.append(tmp_path / p.name)
    DatasetMerger(files, tmp_path / "keep.dataset").merge_data()
    assert all(f.exists() for f in files)
    DatasetMerger(files, tmp_path / "delete.dataset", delete_source_files=True).merge_data()
    assert not any(f.exists() for f in files)
    assert (tmp_path / "delete.dataset").exists()


def test_merger_refuses_one_path_for_its_list_of_files(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    # A string is iterable: DatasetMerger("items", ...) took its characters for files
    # and failed with "duplicate item name 'o': o and o" (or merged what they named).
    folder = realistic_items[0][0].parent
    for given in (str(folder), folder):
        with pytest.raises(MergeError, match=r"zip_files must be a list of \.data files"):
            DatasetMerger(given, tmp_path / "x.dataset")  # type: ignore[arg-type]
    assert not (tmp_path / "x.dataset").exists()


def test_a_merge_of_only_unreadable_items_names_each_in_one_sentence(tmp_path: Path) -> None:
    # The message held a Python list of dicts: [{'file': ..., 'error': ...}, ...].
    bad = []
    for n in range(5):
        bad.append(tmp_path / f"bad{n}.zarr.data")
        bad[-1].write_text("not a zip")
    with pytest.raises(MergeError) as refused:
        merge_items(bad, tmp_path / "x.dataset")
    message = str(refused.value)
    assert message.startswith(f"no readable item among 5 file(s): {bad[0]}: ")
    assert f"; {bad[2]}: " in message and message.endswith(" (and 2 more)")
    assert "{" not in message and str(bad[3]) not in message


def test_file_id_codes_order(realistic_items: list[Any], tmp_path: Path) -> None:
    files = [p for p, _, _ in realistic_items[:3]]
    names = [p.name[: -len(".zarr.data")] for p in files]
    codes = {names[0]: 2, names[1]: 0, names[2]: 1}
    result = DatasetMerger(files, tmp_path / "o.dataset", codes).merge_data()
    assert result.items == [names[1], names[2], names[0]]
    with pytest.raises(MergeError, match=r"0\.\.N-1"):
        DatasetMerger(files, tmp_path / "x.dataset", dict.fromkeys(names, 5)).merge_data()


def test_one_call_merge_writes_dataset_tables_and_manifest(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    import json

    import pandas as pd

    from cadstore import merge

    files = [p for p, _, _ in realistic_items[:8]]
    bad = tmp_path / "bad.zarr.data"
    bad.write_text("not a zip")
    result = merge([*files, bad], str(tmp_path / "flow.dataset"))
    assert len(result.items) == 8
    info = pd.read_parquet(tmp_path / "flow.infoset")
    assert info["id"].tolist() == list(range(8))
    assert info["name"].tolist() == result.items
    assert {"description", "subset", "table_name", "size_cadfile"} <= set(info.columns)
    attrs = pd.read_parquet(tmp_path / "flow.attribset")
    assert list(attrs.columns) == ["id", "name", "description", "table_name"]
    manifest = json.loads((tmp_path / "flow.flow").read_text())
    assert manifest["flow_data"] == "flow.dataset"
    assert manifest["flow_info"] == "flow.infoset"
    assert manifest["file_count"] == 8
    assert [Path(e["file"]).name for e in manifest["errors"]] == ["bad.zarr.data"]
    with pytest.raises(MergeError, match="already exists"):
        merge(files, str(tmp_path / "flow.dataset"))
    merge(files[:2], str(tmp_path / "flow.dataset"), overwrite=True)
    assert json.loads((tmp_path / "flow.flow").read_text())["file_count"] == 2


def test_append_equals_full_merge_and_is_idempotent(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    from cadstore.dataset import DatasetReader
    from cadstore.merging import append_items

    files = [p for p, _, _ in realistic_items[:12]]
    small = {"inner_bytes": 2048, "shard_bytes": 16384}
    merge_items(files[:7], tmp_path / "inc.dataset", **small)
    before = (tmp_path / "inc.dataset").read_bytes()
    result = append_items(tmp_path / "inc.dataset", files[5:])  # 5 and 6 are already in
    assert len(result.items) == 5
    assert sum("already in the dataset" in w for w in result.warnings) == 2
    merge_items(files, tmp_path / "full.dataset", **small)
    with (
        DatasetReader(tmp_path / "inc.dataset") as inc,
        DatasetReader(tmp_path / "full.dataset") as full,
    ):
        assert inc.item_names == full.item_names
        for group in full.groups:
            for array in full.arrays(group):
                np.testing.assert_array_equal(
                    inc.read_array(group, array), full.read_array(group, array)
                )
    again = append_items(tmp_path / "inc.dataset", files)
    assert again.items == []
    assert (tmp_path / "inc.dataset").read_bytes() != before


def test_append_refuses_what_does_not_fit(realistic_items: list[Any], tmp_path: Path) -> None:
    from cadstore.merging import append_items

    merge_items([realistic_items[0][0]], tmp_path / "d.dataset")
    before = (tmp_path / "d.dataset").read_bytes()
    odd = OptStorage(tmp_path / "odd.zarr")
    odd.save_data("face_areas", np.ones((3, 2), dtype=np.float32))  # wrong trailing shape
    odd.compress_store()
    odd.close()
    with pytest.raises(MergeError, match="face_areas"):
        append_items(tmp_path / "d.dataset", [tmp_path / "odd.zarr.data"])
    assert (tmp_path / "d.dataset").read_bytes() == before


def test_append_continues_a_per_item_string_array(tmp_path: Path) -> None:
    """An item's own string (a title, one per item) appends as it merges: appending to a
    dataset holding one raised "data type 'string' not understood". Numbers where the
    dataset holds strings, or the other way round, are refused, naming the array."""
    from cadstore.dataset import DatasetReader
    from cadstore.merging import append_items
    from cadstore.synthetic import iter_items, write_item

    files = []
    for index, (_, item, meta) in enumerate(iter_items(5, seed=1)):
        item = dict(item)
        item["title"] = np.array(f"part {index}", dtype=object) if index < 4 else np.float64(4)
        files.append(write_item(tmp_path / f"i{index}.zarr", item, meta))
    merge_items(files[:2], tmp_path / "inc.dataset")
    append_items(tmp_path / "inc.dataset", files[2:3])
    append_items(tmp_path / "inc.dataset", files[3:4])
    merge_items(files[:4], tmp_path / "full.dataset")
    with (
        DatasetReader(tmp_path / "inc.dataset") as inc,
        DatasetReader(tmp_path / "full.dataset") as full,
    ):
        assert [inc.read_item(c)["title"]["title"] for c in range(4)] == [
            f"part {c}" for c in range(4)
        ]
        for group in full.groups:
            for array in full.arrays(group):
                np.testing.assert_array_equal(
                    inc.read_array(group, array), full.read_array(group, array)
                )
    before = (tmp_path / "inc.dataset").read_bytes()
    with pytest.raises(MergeError, match="title: new items hold float64, the dataset holds str"):
        append_items(tmp_path / "inc.dataset", files[4:])
    assert (tmp_path / "inc.dataset").read_bytes() == before
    merge_items([files[4]], tmp_path / "numbers.dataset")
    with pytest.raises(MergeError, match="title: new items hold strings, the dataset holds f"):
        append_items(tmp_path / "numbers.dataset", files[:1])


def _item_of(path: Path, **arrays: Any) -> str:
    """A ``.data`` item holding ``arrays`` (``a__b`` is the key ``a/b``)."""
    return write_arrays(path, {key.replace("__", "/"): value for key, value in arrays.items()})


def test_items_whose_arrays_cannot_be_stored_as_they_are_are_dropped_and_named(
    tmp_path: Path,
) -> None:
    """Two keys of an item that meet in one dataset array (``g/b_c`` and ``g/b/c``: the
    second silently replaced the first), keys taking a name the dataset keeps for itself
    (a raw "duplicate zip member" error), and an array that is one value in some items
    and rows in others (a numpy error naming nothing): each item is left out and named
    in the merge's errors, with what is wrong; the other items merge."""
    good = _item_of(tmp_path / "good.zarr", faces__x=np.arange(3), q=1.0)
    cases = {
        "meet": ({"g__b_c": np.arange(3), "g__b__c": np.ones(3)}, "'g/b_c' and 'g/b/c' would"),
        "offsets": ({"faces__item_offsets": np.arange(3)}, "faces/item_offsets, a name"),
        "codes": ({"faces__file_id_code_faces": np.arange(3)}, "faces/file_id_code_faces, a"),
        "rows": ({"q": np.array([1.0, 2.0])}, "'q' (q/q): this item holds rows, other"),
    }
    for name, (arrays, problem) in cases.items():
        odd = _item_of(tmp_path / f"{name}.zarr", **arrays)
        result = merge_items([good, odd], tmp_path / f"{name}.dataset")
        assert result.items == ["good"], name
        assert [e["file"] for e in result.errors] == [odd], name
        assert problem in result.errors[0]["error"], (name, result.errors)
    with DatasetReader(tmp_path / "meet.dataset") as reader:
        np.testing.assert_array_equal(reader.read_item(0)["faces"]["x"], np.arange(3))


@pytest.mark.parametrize("directory", [False, True])
@pytest.mark.parametrize("name", ["commit.json", "infoset.parquet", "attribset.parquet"])
def test_items_taking_the_name_of_a_dataset_member_are_dropped_and_named(
    tmp_path: Path, name: str, directory: bool
) -> None:
    """A group named like a member the dataset keeps at its root (``commit.json``, its
    tables): the directory form failed the whole merge with a raw FileExistsError, and
    the zip form held ``commit.json`` both as a file and as a folder, which no directory
    store (nor ``unzip``) can hold. The item is left out and named, the others merge."""
    good = _item_of(tmp_path / "good.zarr", faces__x=np.arange(3))
    rows = _item_of(tmp_path / "rows.zarr", faces__x=np.arange(2), **{name: np.arange(4.0)})
    one = _item_of(tmp_path / "one.zarr", faces__x=np.arange(2), **{f"{name}__v": 1.5})
    out = tmp_path / "x.dataset"
    result = merge_items([good, rows, one], out, directory=directory)
    assert result.items == ["good"]
    assert sorted(e["file"] for e in result.errors) == sorted([rows, one])
    for error in result.errors:
        assert "a name the dataset keeps for itself" in error["error"], result.errors
    with DatasetReader(out) as reader:
        np.testing.assert_array_equal(reader.read_item(0)["faces"]["x"], np.arange(3))
    if not directory:
        with zipfile.ZipFile(out) as zf:
            members = zf.namelist()
        prefixes = {m.rsplit("/", 1)[0] for m in members if "/" in m}
        assert not prefixes & set(members)


def test_items_with_integers_a_floating_point_array_cannot_hold_exactly_are_skipped(
    tmp_path: Path,
) -> None:
    """Items of int64 beside items of float32 make a float64 array, which holds integers
    exactly only up to 2**53: 2**53 + 1 came back as 2**53, uint64 2**64 - 1 beside
    int64 as 1.8e19, without a word (rows, per-item values, appends). Then one such item
    aborted the whole merge, after the work, with a MergeError. Now the item is skipped
    and listed in the merge's errors, naming its key and the value, as other items that do
    not fit are, and the other items merge; values the array holds exactly still merge.
    An append still refuses such an item, as it refuses any that does not fit the
    dataset, leaving it unchanged."""
    from cadstore.merging import append_items

    floats = _item_of(tmp_path / "floats.zarr", faces__x=np.array([0.5], np.float32), q=0.5)
    signed = _item_of(tmp_path / "signed.zarr", faces__x=np.array([-1]), q=2.0)
    cases = {
        "rows": (
            {"faces__x": np.array([3, 2**53 + 1]), "q": 1.0},
            r"'faces/x' \(faces/x\): the integer 9007199254740993",
        ),
        "u64": ({"faces__x": np.array([2**64 - 1], np.uint64)}, "18446744073709551615"),
        "one": (
            {"faces__x": np.array([1.5]), "q": np.int64(2**63 - 1)},
            r"'q' \(q/q\): the integer 9223372036854775807",
        ),
    }
    for name, (arrays, message) in cases.items():
        big = _item_of(tmp_path / f"{name}.zarr", **arrays)
        others = [signed] if name == "u64" else [floats, signed]
        out = tmp_path / f"{name}.dataset"
        result = merge_items([big, *others], out)
        assert [e["file"] for e in result.errors] == [big], result.errors
        assert re.search(message, result.errors[0]["error"]), result.errors
        assert "float64" in result.errors[0]["error"]
        assert result.items == [Path(o).name.removesuffix(".zarr.data") for o in others]
        with DatasetReader(out) as reader:
            assert reader.n_items == len(others)
            got = [reader.read_item(c)["faces"]["x"].tolist() for c in range(len(others))]
        assert got == ([[-1]] if name == "u64" else [[0.5], [-1.0]])
    # Every item skipped: the merge is refused, naming them, and a dataset already at the
    # output is left as it was.
    kept = tmp_path / "kept.dataset"
    merge_items([floats], kept)
    before = kept.read_bytes()
    rows = _item_of(tmp_path / "rows2.zarr", faces__x=np.array([2**53 + 1]))
    u64 = _item_of(tmp_path / "u642.zarr", faces__x=np.array([2**64 - 1], np.uint64))
    with pytest.raises(MergeError, match="no item could be merged") as info:
        merge_items([rows, u64], kept, overwrite=True)
    assert rows in str(info.value) and u64 in str(info.value)
    assert kept.read_bytes() == before
    exact = _item_of(tmp_path / "exact.zarr", faces__x=np.array([2**53, -(2**63), 7]))
    merge_items([exact, floats], tmp_path / "exact.dataset")
    with DatasetReader(tmp_path / "exact.dataset") as reader:
        got = reader.read_item(0)["faces"]["x"]
        assert got.dtype == np.float64 and got.tolist() == [2**53, -(2**63), 7]
    # A float64 dataset takes int64 items ("safe" in numpy's rules), 2**53 + 1 aside.
    doubles = _item_of(tmp_path / "doubles.zarr", faces__x=np.array([0.5]), q=0.5)
    merge_items([doubles], tmp_path / "appended.dataset")
    before = (tmp_path / "appended.dataset").read_bytes()
    big = _item_of(tmp_path / "big.zarr", faces__x=np.array([2**53 + 1]), q=1.0)
    with pytest.raises(MergeError, match="the integer 9007199254740993 cannot be stored"):
        append_items(tmp_path / "appended.dataset", [big])
    assert (tmp_path / "appended.dataset").read_bytes() == before


def test_string_arrays_left_out_take_no_name_and_missing_strings_are_empty(
    tmp_path: Path,
) -> None:
    """A string array of rows is left out of a merge (with a warning) before names are
    checked, so it does not make its item collide with another key; an item without a
    per-item string gets "" (it got "0", the fill value of numbers)."""
    both = {"faces__x": np.arange(3), "faces__n__m": np.array(["a", "b", "c"])}
    first = _item_of(tmp_path / "a.zarr", **both, faces__n_m=np.arange(3.0), title="one")
    second = _item_of(tmp_path / "b.zarr", **both, faces__n_m=np.arange(3.0))
    result = merge_items([first, second], tmp_path / "s.dataset")
    assert result.items == ["a", "b"] and result.errors == []
    assert any("'faces/n/m' is not merged" in w for w in result.warnings)
    with DatasetReader(tmp_path / "s.dataset") as reader:
        assert reader.read_array("title", "title").tolist() == ["one", ""]


def test_append_refuses_one_value_where_the_dataset_holds_rows(tmp_path: Path) -> None:
    """The new item's ``q`` is one value, the dataset's rows: the append read back an
    empty array for it, without a word. Both ways round it is a MergeError, and the
    dataset is unchanged."""
    from cadstore.merging import append_items

    rows = _item_of(tmp_path / "rows.zarr", q=np.array([1.0, 2.0]))
    one = _item_of(tmp_path / "one.zarr", q=3.0)
    for first, new, message in (
        (rows, one, "q/q: new items hold one value per item, the dataset holds rows"),
        (one, rows, "q/q: new items hold rows, the dataset holds one value per item"),
    ):
        out = tmp_path / f"{Path(first).name}.dataset"
        merge_items([first], out)
        before = out.read_bytes()
        with pytest.raises(MergeError, match=message):
            append_items(out, [new])
        assert out.read_bytes() == before


def test_merge_append_extends_tables(realistic_items: list[Any], tmp_path: Path) -> None:
    import json

    import pandas as pd

    from cadstore import merge

    files = [p for p, _, _ in realistic_items[:6]]
    merge(files[:4], str(tmp_path / "f.dataset"))
    merge(files[2:], str(tmp_path / "f.dataset"), append=True)
    info = pd.read_parquet(tmp_path / "f.infoset")
    assert info["id"].tolist() == list(range(6))
    assert info["name"].tolist() == [p.name[: -len(".zarr.data")] for p in files]
    manifest = json.loads((tmp_path / "f.flow").read_text())
    assert manifest["file_count"] == 6 and manifest["appended"] == 2


def test_an_appended_manifest_gives_the_dataset_raw_bytes(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """After an append the manifest's ``raw_bytes`` was this run's decoded bytes, beside
    a ``file_count`` and a ``stored_bytes`` of the whole dataset: its ratio read as a
    dataset larger stored than decoded. It is the dataset's now, as a merge of the same
    items gives it, and this run's is ``appended_raw_bytes``."""
    import json

    from cadstore import merge

    files = [p for p, _, _ in realistic_items[:6]]
    first = merge(files[:4], str(tmp_path / "f.dataset"))
    more = merge(files[4:], str(tmp_path / "f.dataset"), append=True)
    whole = merge(files, str(tmp_path / "all.dataset"))
    manifest = json.loads((tmp_path / "f.flow").read_text())
    assert manifest["file_count"] == 6 and manifest["appended"] == 2
    assert manifest["appended_raw_bytes"] == more.raw_bytes > 0
    assert manifest["raw_bytes"] == first.raw_bytes + more.raw_bytes == whole.raw_bytes
    assert manifest["stored_bytes"] == (tmp_path / "f.dataset").stat().st_size


def test_an_append_after_one_of_an_older_cadstore_records_no_dataset_raw_bytes(
    realistic_items: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append before appended_raw_bytes existed recorded its run's bytes as
    ``raw_bytes``; the next append took that for the dataset's and added its own, and
    every later version carried the wrong total. After such a version the total is not
    known: ``None``, as the format says, never a wrong number."""
    import json

    from cadstore import merge
    from cadstore.merging import append as append_module

    files = [p for p, _, _ in realistic_items[:6]]
    merge(files[:2], str(tmp_path / "f.dataset"))
    fields = append_module.summary_fields

    def older(result: Any, info: Any, extra: dict[str, Any]) -> Any:
        # What an older cadstore recorded for an append: the run's bytes only.
        extra = {k: v for k, v in extra.items() if k != "appended_raw_bytes"}
        return fields(result, info, {**extra, "raw_bytes": result.raw_bytes})

    with monkeypatch.context() as patched:
        patched.setattr(append_module, "summary_fields", older)
        older_append = merge(files[2:4], str(tmp_path / "f.dataset"), append=True)
    manifest = json.loads((tmp_path / "f.flow").read_text())
    assert manifest["raw_bytes"] == older_append.raw_bytes
    assert "appended_raw_bytes" not in manifest
    last = merge(files[4:5], str(tmp_path / "f.dataset"), append=True)
    manifest = json.loads((tmp_path / "f.flow").read_text())
    assert manifest["file_count"] == 5 and manifest["appended"] == 1
    assert manifest["appended_raw_bytes"] == last.raw_bytes > 0
    assert manifest["raw_bytes"] is None
    # And it stays unknown in the versions after it.
    merge(files[5:], str(tmp_path / "f.dataset"), append=True)
    manifest = json.loads((tmp_path / "f.flow").read_text())
    assert manifest["file_count"] == 6 and manifest["raw_bytes"] is None


def test_the_manifest_info_section_states_the_tables_written(tmp_path: Path) -> None:
    """The ``.flow``'s ``info`` said ``infoset_rows: 0`` and ``infoset: null`` (and no
    ``attribset``) after a merge or an append that wrote both tables: it was the summary
    of a builder that had written nothing itself (the tables are written with the
    version). It gives the rows of the tables written (an append's all of them) and the
    paths of their copies, also when recovery publishes it again; the dataset's own
    record names no path (it is the same bytes wherever it is published)."""
    import json

    import pyarrow.parquet as pq

    from cadstore import merge
    from cadstore.lifecycle import repair

    files = _items_with_metadata(
        tmp_path, [{"category": "bolt"}, {"category": "nut"}, {"category": "gear"}]
    )
    for step, (chosen, append) in enumerate([(files[:2], False), (files[2:], True)]):
        merge(chosen, str(tmp_path / "x.dataset"), append=append)
        info = json.loads((tmp_path / "x.flow").read_text())["info"]
        infoset = pq.read_table(tmp_path / "x.infoset")
        attribset = pq.read_table(tmp_path / "x.attribset")
        assert infoset.num_rows == 2 + step
        assert info["infoset_rows"] == infoset.num_rows
        assert info["attribute_rows"] == attribset.num_rows > 0
        assert info["attribute_tables"] == {"category": attribset.num_rows}
        assert info["infoset"] == str(tmp_path / "x.infoset")
        assert info["attribset"] == str(tmp_path / "x.attribset")
    (tmp_path / "x.flow").unlink()
    assert repair(tmp_path / "x.dataset")  # publishes the manifest again
    again = json.loads((tmp_path / "x.flow").read_text())["info"]
    assert again["infoset_rows"] == 3 and again["infoset"] == str(tmp_path / "x.infoset")
    merge_items(files, tmp_path / "bare.dataset")  # tables stored, no copies
    for dataset in ("x.dataset", "bare.dataset"):
        with DatasetReader(tmp_path / dataset) as reader:
            record = read_commit(reader)
        assert record is not None and record.summary["info"]["infoset_rows"] == 3
        assert record.summary["info"]["infoset"] is None


def test_the_manifest_info_section_of_an_append_is_of_the_whole_dataset(
    tmp_path: Path,
) -> None:
    """After an append, the ``.flow``'s ``info`` counted the rows of the whole dataset
    but listed the fields, documents, codes and warnings of the appended items alone
    (``file_level_fields: []`` beside an ``.infoset`` with a ``mass`` column). Every
    entry is now of the whole dataset, and what the appended items brought is under
    ``appended_items``; a merge's section is unchanged (it saw every item)."""
    import json

    import pyarrow.parquet as pq

    from cadstore import merge

    files = _items_with_metadata(
        tmp_path,
        [{"mass": 2.5}, {"mass": "heavy"}, {"category": "bolt"}, {"category": "nut", "size": [1]}],
    )
    merge(files[:2], str(tmp_path / "x.dataset"))
    merged = json.loads((tmp_path / "x.flow").read_text())["info"]
    assert "appended_items" not in merged
    assert merged["codes"] == merged["infoset_rows"] == 2
    assert merged["file_level_fields"] == ["mass"] and merged["categorical_fields"] == []
    assert any("'mass' mixes strings" in w for w in merged["warnings"])

    result = merge(files[2:], str(tmp_path / "x.dataset"), append=True)
    manifest = json.loads((tmp_path / "x.flow").read_text())
    info = manifest["info"]
    infoset = pq.read_table(tmp_path / "x.infoset")
    attribset = pq.read_table(tmp_path / "x.attribset")
    assert manifest["file_count"] == info["codes"] == info["infoset_rows"] == 4
    assert infoset.num_rows == 4 and info["attribute_rows"] == attribset.num_rows == 2
    assert info["file_level_fields"] == ["mass"]  # the earlier items' field is still there
    assert info["categorical_fields"] == ["category"]
    assert {"mass", "category"} <= set(infoset.column_names)
    # Nothing of the appended items alone sits beside the whole dataset's entries.
    assert not {"items", "info_files", "errors", "warnings"} & set(info)
    new = info["appended_items"]
    assert new["codes"] == new["items"] == new["info_files"] == 2
    assert new["file_level_fields"] == [] and new["categorical_fields"] == ["category"]
    listed = "field 'size' holds a list (item 'p3')"
    assert len(new["warnings"]) == 1 and listed in new["warnings"][0]
    assert new["warnings"][0] in result.warnings and new["errors"] == []
    with DatasetReader(tmp_path / "x.dataset") as reader:
        record = read_commit(reader)
    assert record is not None
    assert record.summary["info"] == {**info, "infoset": None, "attribset": None}


def test_vendor_layout_items_merge(tmp_path: Path) -> None:
    import json

    from cadstore.dataset import DatasetReader

    fixtures = Path(__file__).parent / "fixtures" / "vendor_v2"
    files = sorted(fixtures.glob("item_*.zarr.data"))
    result = merge_items(files, tmp_path / "v.dataset")
    assert result.errors == []
    assert any("part_tags" in w for w in result.warnings)  # string arrays are reported
    expected = json.loads((fixtures / "item_basic.expected.json").read_text())
    with DatasetReader(tmp_path / "v.dataset") as reader:
        code = reader.code_of("item_basic")
        item = reader.read_item(code, groups=["faces", "graph"])
        assert list(item["faces"]["face_areas"].shape) == expected["arrays"]["face_areas"]["shape"]
        assert item["graph"]["num_nodes"] == expected["scalars"]["graph/num_nodes"]


# ---------------------------------------------------------------------------- output paths
def _listing(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_overwrite_does_not_replace_the_folder_of_the_items(tmp_path: Path) -> None:
    """A directory merge whose output was the items' own folder (``overwrite`` is the
    specified default of ``merge_data``) swapped the folder for the dataset and deleted
    it: every item, merged or not, and the user's own files."""
    from cadstore.errors import OutputExistsError

    encoded = tmp_path / "encoded"
    files = [
        write_arrays(encoded / f"p{i}.zarr", {"face_areas": np.ones(3, np.float32)})
        for i in range(3)
    ]
    (encoded / "notes.txt").write_text("the user's own file")
    before = _listing(encoded)
    with pytest.raises(
        OutputExistsError, match="encoded: is a folder that is not a cadstore dataset"
    ):
        DatasetMerger(files[:2], str(encoded)).merge_data(force_compression=False)
    assert _listing(encoded) == before


def test_overwrite_does_not_replace_one_of_the_inputs(tmp_path: Path) -> None:
    """``merge([a, b], a, overwrite=True)`` replaced item ``a`` with the dataset. An item's
    name is refused as a dataset's whatever is there; any other file that is not a
    dataset is refused by what it holds."""
    import cadstore
    from cadstore.errors import OutputExistsError

    a = write_arrays(tmp_path / "a.zarr", {"face_areas": np.arange(3, dtype=np.float32)})
    b = write_arrays(tmp_path / "b.zarr", {"face_areas": np.ones(2, np.float32)})
    (tmp_path / "notes.bin").write_bytes(b"mine")
    (tmp_path / "notes.dataset").write_bytes(b"mine too")
    before = _listing(tmp_path)
    with pytest.raises(MergeError, match=r"a\.zarr\.data: a dataset cannot be named with"):
        cadstore.merge([a, b], a, overwrite=True)
    # merge() adds .dataset to "notes": the file refused is notes.dataset.
    with pytest.raises(OutputExistsError, match=r"notes\.dataset: is a file that is not a"):
        cadstore.merge([a, b], str(tmp_path / "notes"), overwrite=True)
    # The specified merger writes the path it is given.
    with pytest.raises(OutputExistsError, match=r"notes\.bin: is a file that is not a cadstore"):
        DatasetMerger([a, b], str(tmp_path / "notes.bin")).merge_data()
    assert _listing(tmp_path) == before


def test_overwrite_replaces_an_earlier_dataset_an_empty_file_or_folder(tmp_path: Path) -> None:
    import cadstore

    files = [
        write_arrays(tmp_path / f"p{i}.zarr", {"face_areas": np.ones(i + 1)}) for i in range(2)
    ]
    for name, make in (
        ("earlier.dataset", lambda p: cadstore.merge(files[:1], p)),
        ("empty.dataset", lambda p: Path(p).touch()),
        ("folder.dataset", lambda p: Path(p).mkdir()),
    ):
        out = str(tmp_path / name)
        make(out)
        merge_items(files, out, overwrite=True, directory=name == "folder.dataset")
        with DatasetReader(out) as reader:
            assert reader.n_items == 2


def test_a_table_copy_is_not_written_over_a_file_of_another_kind(tmp_path: Path) -> None:
    import cadstore
    from cadstore.errors import OutputExistsError

    files = [
        write_arrays(tmp_path / f"p{i}.zarr", {"face_areas": np.ones(i + 1)}) for i in range(2)
    ]
    notes = tmp_path / "parts.infoset"
    notes.write_text("not a table")
    with pytest.raises(OutputExistsError, match=r"parts\.infoset: exists and is not an \.infoset"):
        cadstore.merge(files, tmp_path / "parts.dataset")
    assert notes.read_text() == "not a table"
    assert not (tmp_path / "parts.dataset").exists()


def test_one_odd_item_first_does_not_drop_the_consistent_items(tmp_path: Path) -> None:
    """The first item decided what every array held: an odd item first had the five
    consistent items after it all dropped as disagreeing. What most items hold decides."""
    odd = write_arrays(
        tmp_path / "a_odd.zarr",
        {"face_centroids": np.zeros((4, 2), np.float32), "part_mass": np.float32(1.0)},
    )
    rest = [
        write_arrays(
            tmp_path / f"p{i}.zarr",
            {"face_centroids": np.full((4, 3), i, np.float32), "part_mass": np.ones(2)},
        )
        for i in range(5)
    ]
    result = merge_items([odd, *rest], tmp_path / "x.dataset")
    assert [Path(e["file"]).name for e in result.errors] == ["a_odd.zarr.data"]
    assert "other items have (3,)" in result.errors[0]["error"]
    assert "other items rows" in result.errors[0]["error"]
    with DatasetReader(tmp_path / "x.dataset") as reader:
        assert reader.n_items == 5
        centroids = reader.read_item(2, None)
        assert centroids["faces"]["face_centroids"].shape == (4, 3)


def test_a_dataset_changes_layout_when_merged_again(tmp_path: Path) -> None:
    """A zip merged over a directory-layout dataset failed, after all the work, with a
    raw IsADirectoryError naming a temporary file; a directory merged over a zip left the
    old zip beside it as a temporary file."""
    files = [
        write_arrays(tmp_path / f"p{i}.zarr", {"face_areas": np.ones(i + 1)}) for i in range(3)
    ]
    out = tmp_path / "out" / "x.dataset"
    merge_items(files[:1], out, directory=True)
    merge_items(files[:2], out, overwrite=True)  # a zip over the folder
    assert out.is_file()
    with DatasetReader(out) as reader:
        assert reader.n_items == 2
    merge_items(files, out, directory=True, overwrite=True)  # a folder over the zip
    assert out.is_dir()
    with DatasetReader(out) as reader:
        assert reader.n_items == 3
    assert [p.name for p in out.parent.iterdir()] == ["x.dataset"]


def test_output_paths_a_merge_cannot_write_are_refused_before_the_work(tmp_path: Path) -> None:
    """``x.dataset/`` failed with NotADirectoryError naming a temporary file after the
    whole merge; an output below a file with a bare FileExistsError."""
    from cadstore.errors import OutputExistsError

    files = [write_arrays(tmp_path / "a.zarr", {"face_areas": np.ones(3)})]
    result = merge_items(files, f"{tmp_path / 'x.dataset'}/")
    assert result.path == str(tmp_path / "x.dataset") and (tmp_path / "x.dataset").is_file()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"notes\.txt is a file, not a folder"):
        merge_items(files, tmp_path / "notes.txt" / "sub" / "x.dataset")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # A link to a folder that is not there (a drive not mounted) is named as such.
    (tmp_path / "drive").symlink_to(tmp_path / "unmounted")
    with pytest.raises(OutputExistsError, match=r"drive is a link to a missing folder"):
        merge_items(files, tmp_path / "drive" / "x.dataset")
    assert not (tmp_path / "unmounted").exists()


def test_a_dataset_named_like_an_item_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    """``merge(items, "x.data")`` wrote a dataset named like an item: a later merge of its
    folder took it for one (and dropped it, its arrays clashing with the dataset's own
    names). Every entry point now refuses ``.data`` for a dataset, naming the path, before
    a lock or a byte is written; an existing ``x.data`` is left as it was."""
    import cadstore
    from cadstore.merging import append_items

    files = [
        write_arrays(tmp_path / "items" / f"p{i}.zarr", {"face_areas": np.ones(i + 1)})
        for i in range(2)
    ]
    (tmp_path / "kept.data").write_bytes(b"not mine to replace")
    outputs = ["x.data", "x.data/", "kept.data"]
    calls = {
        "merge_items": lambda out: merge_items(files, out, overwrite=True),
        "merge": lambda out: cadstore.merge(files, out, overwrite=True),
        "merge_append": lambda out: cadstore.merge(files, out, append=True),
        "append_items": lambda out: append_items(out, files, create=True),
        "DatasetMerger": lambda out: DatasetMerger(files, out).merge_data(),
    }
    for name, call in calls.items():
        for output in outputs:
            with pytest.raises(MergeError, match=r"x\.data|kept\.data") as info:
                call(str(tmp_path / output))
            message = str(info.value)
            assert str(tmp_path / output.rstrip("/")) in message, (name, message)
            assert "'.data'" in message and ".dataset" in message, (name, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items", "kept.data"]
    assert (tmp_path / "kept.data").read_bytes() == b"not mine to replace"
    # Other names, with or without .dataset, still merge.
    assert merge_items(files, tmp_path / "x.data.dataset").total_items == 2
    assert merge_items(files, tmp_path / "plain").total_items == 2


def test_a_dataset_named_like_its_manifest_or_tables_is_refused(tmp_path: Path) -> None:
    """``merge(items, "x.flow")`` wrote the dataset's zip as ``x.flow`` and its manifest as
    ``x.flow.flow``: the explorer, given ``x.flow`` as its manifest, then failed to parse
    a zip, and a later ``merge(items, "x")`` was refused for its manifest ``x.flow``.
    Names ending with ``.flow``, ``.infoset`` or ``.attribset`` are refused by every
    entry point, naming the path and the name to use, before anything is written."""
    import cadstore
    from cadstore.merging import append_items

    files = [
        write_arrays(tmp_path / "items" / f"p{i}.zarr", {"face_areas": np.ones(i + 1)})
        for i in range(2)
    ]
    calls = {
        "merge_items": lambda out: merge_items(files, out, overwrite=True),
        "merge": lambda out: cadstore.merge(files, out, overwrite=True),
        "merge_append": lambda out: cadstore.merge(files, out, append=True),
        "append_items": lambda out: append_items(out, files, create=True),
        "DatasetMerger": lambda out: DatasetMerger(files, out).merge_data(),
    }
    for name, call in calls.items():
        for suffix in (".flow", ".infoset", ".attribset"):
            for output in (f"x{suffix}", f"x{suffix}/"):
                with pytest.raises(MergeError) as info:
                    call(str(tmp_path / output))
                message = str(info.value)
                assert str(tmp_path / f"x{suffix}") in message, (name, message)
                assert repr(suffix) in message, (name, message)
                assert str(tmp_path / "x.dataset") in message, (name, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items"]


def test_without_a_schema_durations_and_sizes_go_to_the_file_group(tmp_path: Path) -> None:
    """The specified name rules send ``*duration*`` and ``*size*`` to ``file``; each such
    array got a group of its own."""
    files = [
        write_arrays(
            tmp_path / f"p{i}.zarr",
            {
                "face_areas": np.ones(2, np.float32),
                "encode_duration": np.float64(0.5 + i),
                "model_size": np.int64(100 * i),
                "edge_size": np.ones(3),  # *edge* comes first
            },
        )
        for i in range(2)
    ]
    merge_items(files, tmp_path / "x.dataset")
    with DatasetReader(tmp_path / "x.dataset") as reader:
        item = reader.read_item(1, None)
    assert sorted(item) == ["edges", "faces", "file"]
    assert item["file"]["encode_duration"] == 1.5 and item["file"]["model_size"] == 100
    assert item["edges"]["edge_size"].shape == (3,)


def test_rows_named_like_sizes_keep_groups_of_their_own(tmp_path: Path) -> None:
    """The file group is for one value per item: rows of sizes of different lengths
    (``bbox_size`` (3,), ``voxel_size`` (N,)) in one group would disagree on rows, and
    every item was dropped. An append keeps a file-level value where the dataset has it
    (a dataset merged by an earlier cadstore gave each a group of its own)."""
    files = [
        write_arrays(
            tmp_path / f"p{i}.zarr",
            {"bbox_size": np.ones(3), "voxel_size": np.ones(10 + i), "mesh_size": 0.5 + i},
        )
        for i in range(3)
    ]
    result = merge_items(files, tmp_path / "x.dataset")
    assert len(result.items) == 3 and result.errors == []
    assert sorted(result.groups) == ["bbox_size", "file", "voxel_size"]
    # An earlier layout: mesh_size in a group of its own (here by its nested key).
    old = [write_arrays(tmp_path / f"o{i}.zarr", {"mesh_size/mesh_size": 1.5}) for i in range(2)]
    merge_items(old[:1], tmp_path / "old.dataset")
    new = write_arrays(tmp_path / "n.zarr", {"mesh_size": 2.5})
    from cadstore.merging import append_items

    appended = append_items(tmp_path / "old.dataset", [new])
    assert appended.errors == [] and sorted(appended.groups) == ["mesh_size"]
    with DatasetReader(tmp_path / "old.dataset") as reader:
        assert reader.read_item(1, None) == {"mesh_size": {"mesh_size": 2.5}}


def test_merger_append_data_publishes_the_copies_beside_the_dataset(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """``DatasetMerger.append_data()`` committed the new version but left the ``.flow``,
    ``.infoset`` and ``.attribset`` beside it at the previous one (``file_count`` 2 for a
    4-item dataset), as ``cadstore.merge(append=True)`` does not. It publishes the copies
    that exist; a dataset without copies (``merge_data()`` writes none) gets none."""
    import json
    import warnings

    import pandas as pd

    from cadstore import merge

    files = [str(p) for p, _, _ in realistic_items[:4]]
    merge(files[:2], str(tmp_path / "x.dataset"))
    result = DatasetMerger(files, str(tmp_path / "x.dataset")).append_data(files[2:])
    manifest = json.loads((tmp_path / "x.flow").read_text())
    assert manifest["file_count"] == 4 and manifest["commit"] == result.commit
    assert pd.read_parquet(tmp_path / "x.infoset")["id"].tolist() == [0, 1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a copy of another version would warn
        with DatasetReader(tmp_path / "x.dataset") as reader:
            assert len(reader.item_names) == 4
    DatasetMerger(files[:2], str(tmp_path / "bare.dataset")).merge_data()
    DatasetMerger(files, str(tmp_path / "bare.dataset")).append_data(files[2:])
    assert sorted(p.name for p in tmp_path.glob("bare.*")) == ["bare.dataset"]


def test_append_lists_the_items_it_skipped_in_the_manifest(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """An append that skipped an unreadable item listed it in ``result.errors`` only: its
    ``.flow`` said ``errors: []`` and ``error_distribution: {}``, where a merge's lists
    them. The manifest lists the skipped items (and the append's warnings: an item already
    in the dataset), as a merge's does."""
    import json

    from cadstore import merge

    files = [str(p) for p, _, _ in realistic_items[:3]]
    bad = tmp_path / "bad.zarr.data"
    bad.write_bytes(Path(files[2]).read_bytes()[:-50])  # truncated
    merge(files[:1], str(tmp_path / "x.dataset"))
    result = merge([*files[:2], str(bad)], str(tmp_path / "x.dataset"), append=True)
    assert [Path(e["file"]).name for e in result.errors] == ["bad.zarr.data"]
    manifest = json.loads((tmp_path / "x.flow").read_text())
    assert manifest["errors"] == result.errors
    assert sum(manifest["error_distribution"].values()) == 1
    assert any("already in the dataset" in w for w in manifest["warnings"])


def _items_with_metadata(folder: Path, metadata: list[dict[str, Any]]) -> list[str]:
    """One small ``.data`` item per ``{field: value}``, named ``p0``, ``p1``..."""
    files = []
    for index, fields in enumerate(metadata):
        with OptStorage(folder / f"p{index}.zarr") as item:
            item.save_data("face_areas", np.ones(2, dtype=np.float32))
            for key, value in fields.items():
                item.save_metadata(key, value)
            item.compress_store()
        files.append(str(folder / f"p{index}.zarr.data"))
    return files


def test_description_table_warnings_reach_the_result_naming_the_items(tmp_path: Path) -> None:
    """The warnings on description tables named no item: a code labelled two ways by
    the items named only the path of one of them (once per item), a categorical field of
    strings beside a description table of its name and a description label against the
    schema's named none. Each names the items now, once, and reaches
    ``MergeResult.warnings``; the first label is kept, as before."""
    import pyarrow.parquet as pq

    from cadstore import merge

    files = _items_with_metadata(
        tmp_path,
        [
            {"descriptions": {"face_types": {"0": "plane", "1": "cylinder"}}, "grade": "A"},
            {
                "descriptions": {"face_types": {"0": "flat"}, "grade": {"0": "good"}},
                "grade": "B",
                "kind": 1,
            },
            {"descriptions": {"face_types": {"0": "flat"}, "kind": {"0": "screw"}}, "kind": 0},
            {"kind": 0},
        ],
    )
    schema = SchemaBuilder()
    schema.define_categorical_metadata("kind", "int64", values=[0, 1], labels=["bolt", "nut"])
    result = merge(files, str(tmp_path / "x.dataset"), schema=schema)
    expected = [
        "description table 'face_types': code 0 is 'plane' (item 'p0') and 'flat' (2 items, "
        "first 'p1'); keeping 'plane'",
        "categorical field 'grade' holds strings (2 items, first 'p0') but a description "
        "table of the same name exists (item 'p1'); the table is kept and the field's "
        "values are only in the infoset column",
        "attribute table 'kind': code 0 is 'screw' in the description table (item 'p2') "
        "and 'bolt' in the schema labels (the value of 2 items, first 'p2'); keeping "
        "'screw'",
    ]
    for warning in expected:
        assert result.warnings.count(warning) == 1, (warning, result.warnings)
    rows = pq.read_table(tmp_path / "x.attribset").to_pylist()
    labels = {(r["table_name"], r["id"]): r["name"] for r in rows}
    assert labels[("face_types", 0)] == "plane" and labels[("face_types", 1)] == "cylinder"
    assert labels[("grade", 0)] == "good" and labels[("kind", 0)] == "screw"
    assert labels[("kind", 1)] == "nut"


def _stored_tables(dataset: Path) -> dict[str, Any]:
    """The ``.infoset`` and ``.attribset`` beside ``dataset``, without their commit stamp."""
    import pyarrow.parquet as pq

    from cadstore.format.commit import STAMP_KEY

    tables = {}
    for kind in ("infoset", "attribset"):
        table = pq.read_table(dataset.with_suffix(f".{kind}"))
        metadata = dict(table.schema.metadata or {})
        metadata.pop(STAMP_KEY, None)
        tables[kind] = table.replace_schema_metadata(metadata)
    return tables


def _assert_same_tables(appended: Path, full: Path) -> None:
    got, expected = _stored_tables(appended), _stored_tables(full)
    for kind in expected:
        assert got[kind].schema.equals(expected[kind].schema, check_metadata=True), kind
        assert got[kind].to_pylist() == expected[kind].to_pylist(), kind


def test_the_tables_warnings_reach_the_result_naming_the_items(tmp_path: Path) -> None:
    """A warning on how the ``.infoset`` holds a field ("field 'mass' mixes strings and
    numbers across items") reached only the ``.flow``'s ``info.warnings``, not
    ``MergeResult.warnings``, and named no item. A merge's and an append's result carry
    them, naming the items; the manifest keeps them in its info section."""
    import json

    from cadstore import merge

    files = _items_with_metadata(
        tmp_path, [{"mass": 2.5}, {"mass": "heavy"}, {"mass": 1.5}, {"size": [1, 2]}]
    )
    mixed = "field 'mass' mixes strings (item 'p1') and numbers (item 'p0')"
    result = merge(files[:2], str(tmp_path / "x.dataset"))
    assert any(mixed in w for w in result.warnings), result.warnings
    manifest = json.loads((tmp_path / "x.flow").read_text())
    assert [w for w in result.warnings if "'mass'" in w] == manifest["info"]["warnings"]
    appended = merge(files[2:], str(tmp_path / "x.dataset"), append=True)
    assert any("field 'size' holds a list (item 'p3')" in w for w in appended.warnings)
    bare = merge_items(files[:2], tmp_path / "bare.dataset")  # tables in the dataset only
    assert any(mixed in w for w in bare.warnings)


def test_append_keeps_integer_columns_of_the_infoset(tmp_path: Path) -> None:
    """An append turned the int64 ``part_id`` column into float64 (pandas widens an
    integer column with a null), rounding 2**60 + 1 to 1.152921504606847e+18. The
    appended tables equal those of a full merge of the same items: types, values, column
    order and the ``cadstore`` column descriptions."""
    from cadstore import merge

    files = _items_with_metadata(
        tmp_path, [{"part_id": 2**60 + 1}, {"part_id": 7, "mass": 2.5}, {"label": 3}]
    )
    merge(files, str(tmp_path / "full.dataset"))
    merge(files[:2], str(tmp_path / "inc.dataset"))
    merge(files[2:], str(tmp_path / "inc.dataset"), append=True)
    _assert_same_tables(tmp_path / "inc.dataset", tmp_path / "full.dataset")
    infoset = _stored_tables(tmp_path / "inc.dataset")["infoset"]
    assert infoset.column("part_id").to_pylist() == [2**60 + 1, 7, None]


def test_append_of_a_field_of_another_type_gives_the_merged_column(tmp_path: Path) -> None:
    """``revision`` 3 in the dataset, ``"B"`` in the new item: the append failed with a
    raw ``pyarrow.lib.ArrowInvalid`` where a full merge stores the column as strings. It
    writes the tables the full merge writes. Where the stored column cannot give the
    merged one (float64 turning into strings: 2.0 may have been the integer 2, which a
    merge writes "2"; a categorical field of integers, their own codes, turning into
    numbered strings), a MergeError names the item and the field, and nothing changes."""
    import json

    from cadstore import merge

    cases = {
        "revision": [{"revision": 3, "mass": 2**60 + 1}, {"revision": "B", "mass": 0.5}],
        "numbers": [{"w": 3}, {"w": 2.5}, {"w": True}],
    }
    for name, metadata in cases.items():
        files = _items_with_metadata(tmp_path / name, metadata)
        merge(files, str(tmp_path / name / "full.dataset"))
        merge(files[:1], str(tmp_path / name / "inc.dataset"))
        merge(files[1:], str(tmp_path / name / "inc.dataset"), append=True)
        _assert_same_tables(tmp_path / name / "inc.dataset", tmp_path / name / "full.dataset")
    infoset = _stored_tables(tmp_path / "revision" / "inc.dataset")["infoset"]
    assert infoset.column("revision").to_pylist() == ["3", "B"]
    assert infoset.column("mass").to_pylist() == [str(2**60 + 1), "0.5"]
    refused = {
        "floats": ([{"w": 2.0}, {"w": "B"}], r"item 'p1': field 'w' holds 'B'; .*float64"),
        "codes": (
            [{"category": 1}, {"category": 2}, {"category": "B"}],
            r"item 'p2': field 'category' holds 'B'; .*own codes",
        ),
    }
    for name, (metadata, message) in refused.items():
        files = _items_with_metadata(tmp_path / name, metadata)
        out = tmp_path / name / "inc.dataset"
        merge(files[:1], str(out))
        before = {p.name: p.read_bytes() for p in out.parent.glob("inc.*")}
        with pytest.raises(MergeError, match=message):
            merge(files[1:], str(out), append=True)
        assert {p.name: p.read_bytes() for p in out.parent.glob("inc.*")} == before
        assert json.loads((out.parent / "inc.flow").read_text())["file_count"] == 1


def test_append_keeps_the_codes_of_categorical_strings(tmp_path: Path) -> None:
    """The new items' values of a categorical string field were numbered 0..k-1 on their
    own, and the rows of codes the dataset had were dropped as duplicates: ``material``
    steel, zinc then alu, brass, zinc became ``[(0, steel), (1, zinc), (2, zinc)]``, alu
    and brass lost. Earlier values keep their codes, new ones take the next codes (in
    sorted order); each item's value and the table's values are a full merge's."""
    from cadstore import merge

    materials = ["steel", "zinc", "alu", "brass", "zinc", "copper"]
    files = _items_with_metadata(tmp_path, [{"material": m} for m in materials])
    merge(files[:5], str(tmp_path / "full.dataset"))
    merge(files[:2], str(tmp_path / "inc.dataset"))

    def codes(dataset: str) -> list[tuple[int, str]]:
        table = _stored_tables(tmp_path / dataset)["attribset"].to_pylist()
        return [(r["id"], r["name"]) for r in table if r["table_name"] == "material"]

    def values(dataset: str) -> list[str]:
        return _stored_tables(tmp_path / dataset)["infoset"].column("material").to_pylist()

    assert codes("inc.dataset") == [(0, "steel"), (1, "zinc")]
    merge(files[2:5], str(tmp_path / "inc.dataset"), append=True)
    assert codes("inc.dataset") == [(0, "steel"), (1, "zinc"), (2, "alu"), (3, "brass")]
    assert values("inc.dataset") == values("full.dataset") == materials[:5]
    assert {n for _, n in codes("inc.dataset")} == {n for _, n in codes("full.dataset")}
    merge(files[5:], str(tmp_path / "inc.dataset"), append=True)
    assert codes("inc.dataset")[4:] == [(4, "copper")]
    assert values("inc.dataset") == materials


def test_appends_do_not_write_copies_over_a_users_files(tmp_path: Path) -> None:
    """The check that keeps a merge's table and manifest copies off files of another kind
    was a merge's only: DatasetMerger.append_data() replaced a user's own x.flow beside
    the dataset, and merge(append=True) creating the dataset a user's y.flow."""
    import cadstore
    from cadstore.errors import OutputExistsError

    files = [
        write_arrays(tmp_path / f"p{i}.zarr", {"face_areas": np.ones(i + 1)}) for i in range(3)
    ]
    notes = b"my own flow notes, not JSON\n"
    merger = DatasetMerger(files[:2], str(tmp_path / "x.dataset"), delete_source_files=False)
    merger.merge_data()
    (tmp_path / "x.flow").write_bytes(notes)
    before = (tmp_path / "x.dataset").read_bytes()
    with pytest.raises(OutputExistsError, match=r"x\.flow: exists and is not a \.flow manifest"):
        DatasetMerger(
            files[2:], str(tmp_path / "x.dataset"), delete_source_files=False
        ).append_data()
    assert (tmp_path / "x.flow").read_bytes() == notes
    assert (tmp_path / "x.dataset").read_bytes() == before
    (tmp_path / "y.flow").write_bytes(notes)
    with pytest.raises(OutputExistsError, match=r"y\.flow: exists and is not a \.flow manifest"):
        cadstore.merge(files, str(tmp_path / "y.dataset"), append=True)
    assert (tmp_path / "y.flow").read_bytes() == notes
    assert not (tmp_path / "y.dataset").exists()


def test_merge_names_a_bare_output_as_the_command_line_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``merge(items, "out")`` wrote the dataset at ``out`` where ``cadstore merge -o out``
    wrote ``out.dataset``: the library and the command line share one naming rule
    (:func:`~cadstore.merging.api.dataset_output_path`) and write the same files. A
    dataset stored under a bare name (as ``merge`` wrote it before) is not silently left
    beside a new ``out.dataset`` whose tables would take its copies' names: the merge is
    refused naming both paths, and nothing stored changes."""
    import json

    import cadstore
    from cadstore.cli import main

    files = [
        write_arrays(tmp_path / "items" / f"p{i}.zarr", {"face_areas": np.ones(i + 1)})
        for i in range(3)
    ]
    (tmp_path / "lib").mkdir()
    (tmp_path / "cli").mkdir()
    result = cadstore.merge(files[:2], str(tmp_path / "lib" / "out"))
    assert result.path == str(tmp_path / "lib" / "out.dataset")
    assert main(["merge", *files[:2], "-o", str(tmp_path / "cli" / "out")]) == 0
    assert str(tmp_path / "cli" / "out.dataset") in capsys.readouterr().out
    expected = [f"out.{kind}" for kind in ("attribset", "dataset", "flow", "infoset")]
    for side in ("lib", "cli"):
        assert sorted(p.name for p in (tmp_path / side).iterdir()) == expected, side
        manifest = json.loads((tmp_path / side / "out.flow").read_text())
        assert manifest["flow_data"] == "out.dataset" and manifest["file_count"] == 2
    appended = cadstore.merge(files[2:], tmp_path / "lib" / "out", append=True)
    assert appended.path == str(tmp_path / "lib" / "out.dataset")
    assert appended.total_items == 3
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == expected

    old = tmp_path / "old"
    old.mkdir()
    merge_items(files[:2], old / "parts")  # a dataset stored under a bare name
    cadstore.merge(files[:2], str(old / "kept.dataset"))
    before = _listing(old)
    for call in (
        lambda: cadstore.merge(files[2:], str(old / "parts"), append=True),
        lambda: cadstore.merge(files, str(old / "parts"), overwrite=True),
        lambda: cadstore.merge(files, str(old / "parts")),
    ):
        with pytest.raises(MergeError) as info:
            call()
        message = str(info.value)
        assert f"{old / 'parts'}: is a dataset named without the .dataset suffix" in message
        assert f"rename it to {old / 'parts.dataset'}" in message
        assert _listing(old) == before
    assert main(["merge", *files[2:], "-o", str(old / "parts"), "--append"]) == 2
    assert f"{old / 'parts'}: is a dataset named without" in capsys.readouterr().err
    assert _listing(old) == before
    with DatasetReader(old / "parts") as reader:
        assert reader.item_names == ["p0", "p1"]
    # A bare name that is not a dataset (a folder of items, here) is no obstacle.
    assert cadstore.merge(files, str(tmp_path / "items")).total_items == 3
    assert (tmp_path / "items.dataset").is_file()


def test_an_append_takes_the_output_paths_a_merge_takes(tmp_path: Path) -> None:
    """``x.dataset/`` failed an append after all its work with a raw NotADirectoryError,
    and an output below a file was not refused first."""
    import cadstore
    from cadstore.errors import OutputExistsError

    files = [
        write_arrays(tmp_path / f"p{i}.zarr", {"face_areas": np.ones(i + 1)}) for i in range(3)
    ]
    out = tmp_path / "out" / "x.dataset"
    cadstore.merge(files[:2], f"{out}/")
    result = cadstore.merge(files[2:], f"{out}/", append=True)
    assert result.total_items == 3 and out.is_file()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"notes\.txt is a file, not a folder"):
        cadstore.merge(files, str(tmp_path / "notes.txt" / "x.dataset"), append=True)


def test_a_key_held_as_one_value_by_most_items_stays_one_array(tmp_path: Path) -> None:
    """``file_size`` as one value in two items and as rows (shape (1,)) in a third was
    split, silently, into file/file_size and a group of its own (one value per item
    decides the group under the name rules); the odd item is dropped and named."""
    files = [
        write_arrays(tmp_path / f"p{i}.zarr", {"face_areas": np.ones(2), "file_size": value})
        for i, value in enumerate([1.0, 2.0, np.array([5.0])])
    ]
    result = merge_items(files, tmp_path / "x.dataset")
    assert sorted(result.groups) == ["faces", "file"]
    assert [Path(e["file"]).name for e in result.errors] == ["p2.zarr.data"]
    assert "this item holds rows, other items one value per item" in result.errors[0]["error"]


def test_a_dataset_given_as_an_item_says_what_it_is(tmp_path: Path) -> None:
    """``cadstore merge parts.dataset -o x`` (a dataset among the inputs) refused it with
    a MergeError listing, as Python dicts, every array of the dataset under "a name the
    dataset keeps for itself". The dataset is skipped as "a merged dataset, not an
    item", naming the append that adds items to it; the refusal of a merge with no item
    left lists "file: reason", as the one with no readable item does."""
    import cadstore

    files = [
        write_arrays(tmp_path / "items" / f"p{i}.zarr", {"face_areas": np.ones(i + 1)})
        for i in range(2)
    ]
    dataset = tmp_path / "d.dataset"
    cadstore.merge(files, str(dataset))
    before = dataset.read_bytes()
    with pytest.raises(MergeError) as info:
        cadstore.merge([str(dataset)], str(tmp_path / "e.dataset"))
    assert str(info.value) == (
        f"no readable item among 1 file(s): {dataset}: a merged dataset, not an item: "
        "merge the items it was made from, or add items to it by giving it as the output "
        "with append=True (--append)"
    )
    result = cadstore.merge([str(dataset), *files], str(tmp_path / "f.dataset"))
    assert len(result.items) == 2
    assert [e["file"] for e in result.errors] == [str(dataset)]
    assert "a merged dataset, not an item" in result.errors[0]["error"]
    assert dataset.read_bytes() == before
    # Items that scan but cannot be planned: the refusal lists file: reason, not dicts.
    taken = write_arrays(tmp_path / "taken.zarr", {"faces/item_offsets": np.ones(2)})
    with pytest.raises(MergeError, match="no item could be merged") as info:
        cadstore.merge([taken], str(tmp_path / "g.dataset"))
    message = str(info.value)
    assert f"no item could be merged: {taken}: " in message and "{" not in message


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("step", ["scan", "copy", "tables"])
@pytest.mark.parametrize(("code", "kind", "problem"), OS_ERROR_KINDS)
def test_an_os_error_reading_an_item_in_one_process_names_the_item(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    step: str,
    code: str,
    kind: str,
    problem: str,
) -> None:
    """A read the file system refuses once the item is open (EIO on a shared disk, as
    ``os.pread`` raises it, naming no file) stopped a one-process merge with that bare
    OSError, '[Errno 5] Input/output error', naming no item, in the scan, in the copy
    of the rows and in the tables' read of its metadata alike; a Dask merge named the
    item in its scan and copy. It is the StorageError of its kind (a PermissionError
    stays one) naming the item, the problem in words; nothing is published and the
    items are unchanged."""
    import errno
    import os

    from cadstore import errors
    from cadstore.merging import run

    items = [p for p, _, _ in write_items(tmp_path / "items", 4, seed=3)]
    before = {p: p.read_bytes() for p in items}
    failing = items[2]
    number = getattr(errno, code)
    armed = step == "scan"
    real_get = ZipSource.get
    # The stage after which the step reads the item again: the plan (the copy of its rows,
    # key .../c/...), or the tables (its metadata.json).
    stage = "item_tables" if step == "tables" else "plan_merge"
    real_stage = getattr(run, stage)

    def staged(*args: Any, **kwargs: Any) -> Any:
        nonlocal armed
        armed = True
        return real_stage(*args, **kwargs)

    def refused(self: ZipSource, key: str) -> bytes | None:
        read = key == "metadata.json" if step == "tables" else "/c/" in key
        if armed and self.location == str(failing) and read:
            raise OSError(number, os.strerror(number))
        return real_get(self, key)

    monkeypatch.setattr(run, stage, staged)
    monkeypatch.setattr(ZipSource, "get", refused)
    out = tmp_path / "out" / "flow.dataset"
    out.parent.mkdir()
    with pytest.raises(errors.StorageError) as caught:
        merge_items(items, out, workers=workers)
    assert type(caught.value) is getattr(errors, kind)
    assert isinstance(caught.value, type(OSError(number, "x")))  # PermissionError...
    assert caught.value.path == str(failing)
    assert str(caught.value) == f"{failing}: reading it: {problem}"
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == []
    assert {p: p.read_bytes() for p in items} == before


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("step", ["stat", "open", "read"])
@pytest.mark.parametrize(("code", "kind", "problem"), OS_ERROR_KINDS[:2])
def test_an_os_error_opening_an_item_stops_the_merge_naming_the_item(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    step: str,
    code: str,
    kind: str,
    problem: str,
) -> None:
    """An OSError the file system raised while the item was opened (its ``stat``, the
    open of its zip file, the read of its bytes: EACCES, EIO) was reported as a corrupt
    item ("cannot read: ...", "not a readable zip file (input/output error)"), and the
    merge skipped it, publishing a dataset without it, while the same error once the
    item was open stopped the merge naming it. Opening agrees with reading: the merge
    stops with the StorageError of its kind naming the item; nothing is published and
    the items are unchanged."""
    import errno

    from cadstore import errors
    from conftest import refuse_opening

    items = [p for p, _, _ in write_items(tmp_path / "items", 4, seed=3)]
    before = {p: p.read_bytes() for p in items}
    failing = items[2]
    number = getattr(errno, code)
    refuse_opening(monkeypatch, failing, step, number)
    out = tmp_path / "out" / "flow.dataset"
    out.parent.mkdir()
    with pytest.raises(errors.StorageError) as caught:
        merge_items(items, out, workers=workers)
    assert type(caught.value) is getattr(errors, kind)
    assert isinstance(caught.value, type(OSError(number, "x")))  # PermissionError...
    assert caught.value.path == str(failing)
    assert str(caught.value) == f"{failing}: opening it: {problem}"
    monkeypatch.undo()
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == []
    assert {p: p.read_bytes() for p in items} == before


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_item_is_still_skipped_as_corrupt(tmp_path: Path, workers: int) -> None:
    """Bytes that do not parse are the item's fault: it is skipped and listed, the others
    merged (an OSError opening an item, by contrast, stops the merge)."""
    items = [p for p, _, _ in write_items(tmp_path / "items", 4, seed=3)]
    damaged = items[2]
    damaged.write_bytes(damaged.read_bytes()[:500])
    before = {p: p.read_bytes() for p in items}
    result = merge_items(items, tmp_path / "flow.dataset", workers=workers)
    assert len(result.items) == 3
    (error,) = result.errors
    assert error["file"] == str(damaged) and "not a readable zip file" in error["error"]
    assert {p: p.read_bytes() for p in items} == before


@pytest.mark.parametrize("name", [b"metadata.jsoo", b"metadata.js\xf6n"], ids=["o", "high-byte"])
def test_an_item_whose_metadata_json_was_renamed_in_both_headers_is_skipped(
    tmp_path: Path, name: bytes
) -> None:
    """Found by review: an item whose ``metadata.json`` name was damaged alike in the
    central directory and its local header (``metadata.jsoo``) was scanned as an item
    without metadata and merged. Its absence beside a member of a name of its length that
    belongs to no node is the damaged name (ReadHierarchy.check_absent): the item is
    skipped and listed, naming both names, the others merged, no item changed. A byte
    damaged above 127 (read as cp437: ``metadata.js÷n``, a name of another length as
    text) was still merged as an item without metadata (found by review)."""
    items = [p for p, _, _ in write_items(tmp_path / "items", 3, seed=5)]
    damaged = items[1]
    raw = damaged.read_bytes()
    assert raw.count(b"metadata.json") == 2 and len(name) == len(b"metadata.json")
    damaged.write_bytes(raw.replace(b"metadata.json", name))
    before = {p: p.read_bytes() for p in items}
    result = merge_items(items, tmp_path / "out.dataset")
    assert len(result.items) == 2
    (error,) = result.errors
    assert error["file"] == str(damaged)
    listed = re.escape(name.decode("cp437"))
    assert re.search(rf"'metadata\.json' is missing.*'{listed}'", error["error"])
    assert {p: p.read_bytes() for p in items} == before


def test_the_scan_reads_another_writers_item_without_metadata(tmp_path: Path) -> None:
    """An item another writer made (zarr-python) has no ``metadata.json``: the scan reads
    it, with no metadata, beside a member no node holds whose name is of another length."""
    from cadstore.io.location import resolve
    from cadstore.merging.scan import ItemScan, scan_item

    path = tmp_path / "other.zarr.data"
    with zarr.storage.ZipStore(path, mode="w") as store:
        group = zarr.open_group(store, mode="w")
        group.create_array("values", shape=(4,), chunks=(4,), dtype="int64")[:] = np.arange(4)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("notes.txt", b"written by hand")
    scan = scan_item(resolve(str(path)))
    assert isinstance(scan, ItemScan)
    assert scan.metadata == {} and scan.arrays == {"values": ((4,), "<i8")}


def _zarr_python_item(path: Path, values: np.ndarray) -> None:
    """An item zarr-python writes itself into a ``ZipStore``: array ``values``, no
    ``metadata.json`` (which only cadstore's writers add)."""
    with zarr.storage.ZipStore(path, mode="w") as store:
        group = zarr.open_group(store, mode="w")
        group.create_array("values", shape=values.shape, chunks=values.shape, dtype="int64")[:] = (
            values
        )
    with zipfile.ZipFile(path) as zf:
        assert "metadata.json" not in zf.namelist()


def test_another_writers_item_without_metadata_merges_with_an_empty_row(tmp_path: Path) -> None:
    """Found by review: the scan accepts another writer's item without ``metadata.json``
    (as ``OptStorage.load_metadata`` reads it, ``{}``), but the tables refused the same
    item: the merge's summary listed it among the info errors ("the .data file has no
    metadata.json") and warned it had no metadata, for an item it merged. The tables read
    it as an item with no metadata: its row holds its name and id, and nothing is an
    error. Nothing stored changes."""
    import pyarrow.parquet as pq

    from cadstore import merge
    from cadstore.io.location import resolve
    from cadstore.merging.scan import ItemScan, scan_item

    other = tmp_path / "items" / "other.zarr.data"
    other.parent.mkdir()
    _zarr_python_item(other, np.arange(4))
    ours = tmp_path / "items" / "ours.zarr"
    with OptStorage(str(ours)) as storage:
        storage.save_data("values", np.arange(4, 7))
        storage.save_metadata("label", 3)
        storage.compress_store()
    items = [other, Path(f"{ours}.data")]
    before = {p: p.read_bytes() for p in items}
    assert isinstance(scan_item(resolve(str(other))), ItemScan)
    result = merge([str(p) for p in items], str(tmp_path / "x.dataset"))
    assert result.items == ["other", "ours"] and not result.errors
    assert not [w for w in result.warnings if "metadata" in w]
    info = json.loads((tmp_path / "x.flow").read_text())["info"]
    assert info["errors"] == [] and info["items"] == 2
    assert not [w for w in info["warnings"] if "metadata" in w]
    rows = pq.read_table(tmp_path / "x.infoset").to_pylist()
    assert [(r["name"], r["id"], r["description"], r["label"]) for r in rows] == [
        ("other", 0, "", None),
        ("ours", 1, "", 3),
    ]
    with DatasetReader(tmp_path / "x.dataset") as reader:
        np.testing.assert_array_equal(reader.read_item(0)["values"]["values"], np.arange(4))
    assert {p: p.read_bytes() for p in items} == before


def test_the_tables_refuse_an_item_whose_metadata_name_was_damaged(tmp_path: Path) -> None:
    """An item without ``metadata.json`` beside a member no node holds, of a name of its
    length (``metadata.jsoo``), had its name damaged: the tables list it as an error
    naming the file and both names, as the scan skips it, rather than read it as an item
    without metadata. Nothing stored changes."""
    from cadstore.merging.tables import build_info

    path = tmp_path / "other.zarr.data"
    _zarr_python_item(path, np.arange(4))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("metadata.jsoo", b"{}")
    raw = path.read_bytes()
    info = build_info([path], tmp_path / "x.infoset", tmp_path / "x.attribset")
    (error,) = info.errors
    assert error["file"] == str(path)
    assert re.search(r"'metadata\.json' is missing.*'metadata\.jsoo'", error["error"])
    assert path.read_bytes() == raw
