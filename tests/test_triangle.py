"""Symmetric face-pair arrays stored as upper triangles, read back as full N x N rows."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import cadstore
from cadstore import OptStorage
from cadstore.cli import main
from cadstore.dataset import DatasetExplorer, DatasetLoader, DatasetReader
from cadstore.errors import MergeError
from cadstore.format.triangle import triangle_row
from cadstore.merging import merge_items
from datasets import assert_same_dataset

FACEFACE = ("a3_distance", "d2_distance", "extended_adjacency", "face_pair_edges_path")
SYMMETRIC = ("a3_distance", "d2_distance", "extended_adjacency")


def _source(path: Path, key: str) -> np.ndarray:
    """An item's array as its .data file holds it, read by zarr-python: a triangle-stored
    one rebuilt from its attributes with the formula docs/format.md gives."""
    with zarr.storage.ZipStore(path, mode="r") as store:
        arr = zarr.open_group(store, mode="r")[key]
        stored = np.asarray(arr[...])
        if arr.attrs.get("cadstore_layout") != "upper_triangle":
            return stored
        shape = arr.attrs["cadstore_shape"]
    n = shape[0]
    i, j = np.divmod(np.arange(n * n), n)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    return stored[lo * n - lo * (lo - 1) // 2 + (hi - lo)].reshape(shape)


def _same(got: Any, expected: np.ndarray, what: str) -> None:
    """Bit for bit: dtype, element count and bytes."""
    got = np.asarray(got)
    assert got.dtype == expected.dtype, what
    assert got.size == expected.size, what
    assert np.ascontiguousarray(got).tobytes() == expected.tobytes(), what


@pytest.fixture(scope="module")
def merged(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triangle") / "parts.dataset"
    cadstore.merge([str(p) for p, _, _ in realistic_items], str(out))
    return out


def test_triangle_row_formula_matches_numpy() -> None:
    for n in (0, 1, 2, 7):
        iu, ju = np.triu_indices(n)
        assert [triangle_row(int(i), int(j), n) for i, j in zip(iu, ju, strict=True)] == list(
            range(n * (n + 1) // 2)
        )
        if n > 1:
            assert triangle_row(n - 1, 0, n) == triangle_row(0, n - 1, n)


def test_symmetric_face_pairs_are_stored_as_declared_upper_triangles(
    merged: Path, realistic_items: list[Any], tmp_path: Path
) -> None:
    with zarr.storage.ZipStore(merged, mode="r") as store:
        g = zarr.open_group(store, mode="r")
        assert set(g["faceface"].array_keys()) == {
            "face_pair_edges_path",
            "file_id_code_faceface",
            "item_offsets",
        }
        assert g["faceface_upper"].attrs["cadstore_layout"] == "upper_triangle"
        assert g["faceface_upper"].attrs["source_group"] == "faceface"
        offsets = np.asarray(g["faceface_upper/item_offsets"][...])
        codes = np.asarray(g["faceface_upper/file_id_code_faceface_upper"][...])
        for name in SYMMETRIC:
            arr = g[f"faceface_upper/{name}"]
            assert arr.attrs["cadstore_layout"] == "upper_triangle"
            assert arr.attrs["source_group"] == "faceface"
            assert arr.metadata.dimension_names[0] == "facepair_upper"
            stored = np.asarray(arr[...])
            for code, (path, _, _) in enumerate(realistic_items):
                full = _source(path, name)
                n = full.shape[0]
                rows = stored[offsets[code] : offsets[code + 1]]
                assert len(rows) == n * (n + 1) // 2
                iu, ju = np.triu_indices(n)
                _same(rows, np.ascontiguousarray(full[iu, ju]), f"{name} item {code}")
                assert (codes[offsets[code] : offsets[code + 1]] == code).all()
    with zipfile.ZipFile(merged) as zf:
        meta = json.loads(zf.read("metadata.json"))
    assert meta["groups"]["faceface_upper"]["source_group"] == "faceface"
    assert meta["groups"]["faceface_upper"]["arrays"] == sorted(SYMMETRIC)
    # The old layout of the same items (what cadstore wrote before) is larger.
    full = tmp_path / "full.dataset"
    cadstore.merge([str(p) for p, _, _ in realistic_items], str(full), face_pair_layout="full")
    assert merged.stat().st_size < full.stat().st_size


def test_the_schema_declares_the_layout(tmp_path: Path) -> None:
    builder = cadstore.SchemaBuilder(domain="t")
    ff = builder.create_group(
        "faceface", "facepair", "pairs", special_processing="matrix_flattening"
    )
    ff.create_array("d2_distance", ["facepair", "bin"], "float32")
    ff.create_array("face_pair_edges_path", ["facepair", "step"], "int32")
    rng = np.random.default_rng(0)
    for k in range(2):
        with OptStorage(str(tmp_path / f"p{k}.zarr")) as item:
            item.set_schema(builder.build())
            d2 = rng.random((4, 4, 3), dtype=np.float32)
            item.save_data("d2_distance", d2 + d2.transpose(1, 0, 2))
            item.save_data("face_pair_edges_path", rng.integers(0, 9, (4, 4, 2), dtype=np.int32))
            item.compress_store()
    out = tmp_path / "s.dataset"
    merge_items([tmp_path / f"p{k}.zarr.data" for k in range(2)], out)
    with DatasetReader(out) as reader:
        specs = reader.metadata["_storage_schema"]["groups"]["faceface"]["arrays"]
        assert specs["d2_distance"]["storage_layout"] == "upper_triangle"
        assert specs["d2_distance"]["stored_as"] == "faceface_upper/d2_distance"
        assert "storage_layout" not in specs["face_pair_edges_path"]
        assert reader.stored_as("faceface", "d2_distance") == ("faceface_upper", "d2_distance")
        assert reader.array_meta("faceface", "d2_distance").dims == ("facepair", "bin")
    with zarr.storage.ZipStore(out, mode="r") as store:
        dims = zarr.open_group(store, mode="r")["faceface_upper/d2_distance"].metadata
        assert dims.dimension_names == ("facepair_upper", "bin")


def test_every_read_api_returns_the_items_full_face_pairs(
    merged: Path, realistic_items: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    sources = {
        (code, name): _source(path, name)
        for code, (path, _, _) in enumerate(realistic_items)
        for name in FACEFACE
    }

    def check(code: int, name: str, got: Any, api: str) -> None:
        _same(got, sources[(code, name)], f"{api}: {name} of item {code}")

    n_items = len(realistic_items)
    with DatasetReader(merged) as reader:
        for code in range(n_items):
            item = reader.read_item(code)
            for name in FACEFACE:
                check(code, name, item["faceface"][name], "read_item")
        codes = [5, 0, 5, n_items - 1, 2]
        batch = reader.read_items(codes)
        for i, code in enumerate(codes):
            for name in FACEFACE:
                check(code, name, batch[i]["faceface"][name], "read_items")
        whole = reader.read_array("faceface", "d2_distance")
        offsets = reader.offsets("faceface")
        for code in range(n_items):
            check(code, "d2_distance", whole[offsets[code] : offsets[code + 1]], "read_array")
        # Rows that cut items in the middle.
        lo, hi = int(offsets[3]) + 7, int(offsets[6]) - 5
        _same(
            reader.read_rows("faceface", "a3_distance", lo, hi),
            reader.read_array("faceface", "a3_distance")[lo:hi],
            "read_rows",
        )
    with DatasetExplorer(flow_output_file=merged.with_suffix(".flow")) as explorer:
        group = explorer.get_group_data("faceface")
        for name in FACEFACE:
            values = group[name].values
            lazy = explorer.get_array_data("faceface", name).values
            for code in range(n_items):
                check(code, name, values[offsets[code] : offsets[code + 1]], "get_group_data")
                check(code, name, lazy[offsets[code] : offsets[code + 1]], "get_array_data")
        for code in range(n_items):
            ds = explorer.file_dataset(code, "faceface")
            for name in FACEFACE:
                check(code, name, ds[name].values, "file_dataset")
    flow = merged.with_suffix(".flow")
    with DatasetLoader(flow_output_file=flow) as loader:
        for code in range(n_items):
            item = loader.item_source.read(code)
            for name in FACEFACE:
                check(code, name, item["faceface"][name], "loader")
        loader.split("random", train=0.5, validation=0.25, test=0.25, random_state=0)
        train = loader.get_dataset("train")
        seen = 0
        for got in train.batches(batch_size=4, shuffle=False, collate_fn=list):
            for item in got:
                for name in FACEFACE:
                    check(item["file_id_code"], name, item["faceface"][name], "batches")
                seen += 1
        assert seen == len(train)
    for code in (0, 7):
        assert (
            main(["cat", str(merged), "faceface/d2_distance", "--item", str(code), "--json"]) == 0
        )
        doc = json.loads(capsys.readouterr().out)
        check(code, "d2_distance", np.asarray(doc["value"], dtype=np.float32), "cadstore cat")


def test_torch_paths_give_full_face_pairs(merged: Path, realistic_items: list[Any]) -> None:
    torch = pytest.importorskip("torch")
    flow = merged.with_suffix(".flow")

    def numpy(value: Any) -> np.ndarray:
        return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)

    with DatasetLoader(flow_output_file=flow) as loader:
        loader.split("random", train=0.5, validation=0.25, test=0.25, random_state=0)
        subset = loader.get_dataset("train")
        dataset = subset.to_torch()
        for index in range(len(dataset)):
            item = dataset[index]
            code = int(item["id"])
            for name in FACEFACE:
                got = numpy(item["graph"].item["faceface"][name])
                _same(got, _source(realistic_items[code][0], name), f"to_torch {name} {code}")
        dataset, collate = subset.to_torch_with_collate()
        batch = collate([dataset[i] for i in range(4)])
        codes = [int(c) for c in numpy(batch["file_id_code"])]
        for name in FACEFACE:
            expected = np.concatenate(
                [_source(realistic_items[c][0], name).reshape(-1) for c in codes]
            )
            _same(numpy(batch["faceface"][name]).reshape(-1), expected, f"collate {name}")


def test_an_asymmetric_item_keeps_the_array_full(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    odd = tmp_path / "odd.zarr"
    with OptStorage(str(odd)) as item:
        d2 = np.arange(3 * 3 * 64, dtype=np.float32).reshape(3, 3, 64)  # not symmetric
        item.save_data("d2_distance", d2)
        item.save_data("a3_distance", np.ones((3, 3, 64), dtype=np.float32))
        item.compress_store()
    files = [p for p, _, _ in realistic_items[:4]] + [tmp_path / "odd.zarr.data"]
    out = tmp_path / "mixed.dataset"
    merge_items(files, out)
    with DatasetReader(out, stored_layout=True) as stored:
        assert "d2_distance" in stored.arrays("faceface")
        assert "a3_distance" in stored.arrays("faceface_upper")
    with DatasetReader(out) as reader:
        _same(reader.read_item(4)["faceface"]["d2_distance"], d2, "asymmetric d2")


def test_items_with_zero_or_one_face(tmp_path: Path) -> None:
    files = []
    for n in (0, 1, 3, 0, 1):
        path = tmp_path / f"n{len(files)}.zarr"
        with OptStorage(str(path)) as item:
            m = np.arange(n * n * 2, dtype=np.float64).reshape(n, n, 2)
            item.save_data("d2_distance", m + m.transpose(1, 0, 2))
            item.compress_store()
        files.append(tmp_path / f"n{len(files)}.zarr.data")
    out = tmp_path / "small.dataset"
    merge_items(files, out)
    with DatasetReader(out) as reader:
        assert reader.stored_as("faceface", "d2_distance")[0] == "faceface_upper"
        # Twice: a second batch takes the read plans the first one left.
        for round in range(2):
            batch = reader.read_items([4, *range(5), 2])
            for code, path in enumerate(files):
                expected = _source(path, "d2_distance")
                _same(reader.read_item(code)["faceface"]["d2_distance"], expected, f"item {code}")
                _same(batch[code + 1]["faceface"]["d2_distance"], expected, f"batch {round}")
            _same(batch[0]["faceface"]["d2_distance"], _source(files[4], "d2_distance"), "4")


def test_append_keeps_the_triangles_and_refuses_an_asymmetric_item(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    files = [p for p, _, _ in realistic_items[:10]]
    small = {"inner_bytes": 2048, "shard_bytes": 16384}
    merge_items(files[:6], tmp_path / "inc.dataset", **small)
    cadstore.merge([str(f) for f in files[6:]], str(tmp_path / "inc.dataset"), append=True)
    merge_items(files, tmp_path / "all.dataset", **small)
    with (
        DatasetReader(tmp_path / "inc.dataset") as inc,
        DatasetReader(tmp_path / "all.dataset") as full,
    ):
        assert inc.stored_as("faceface", "d2_distance") == ("faceface_upper", "d2_distance")
        for group in full.groups:
            for array in full.arrays(group):
                _same(inc.read_array(group, array), full.read_array(group, array), array)
    odd = tmp_path / "odd.zarr"
    with OptStorage(str(odd)) as item:
        for name in FACEFACE:
            item.save_data(name, _source(files[0], name))
        d2 = _source(files[0], "d2_distance").copy()
        d2[0, 1, 0] += 1.0
        item.save_data("d2_distance", d2)
        item.compress_store()
    before = (tmp_path / "inc.dataset").read_bytes()
    with pytest.raises(MergeError, match=r"not symmetric.*faceface_upper/d2_distance"):
        cadstore.merge(
            [str(tmp_path / "odd.zarr.data")], str(tmp_path / "inc.dataset"), append=True
        )
    assert (tmp_path / "inc.dataset").read_bytes() == before


def test_full_layout_datasets_stay_readable_and_appendable(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """A dataset in the layout written before triangles (forced here) reads and appends
    as before, and keeps its layout."""
    files = [p for p, _, _ in realistic_items[:9]]
    old = tmp_path / "old.dataset"
    merge_items(files[:5], old, face_pair_layout="full")
    with zarr.storage.ZipStore(old, mode="r") as store:
        assert sorted(zarr.open_group(store, mode="r").group_keys()) == [
            "edges",
            "faceface",
            "faces",
            "graph",
        ]
    cadstore.merge([str(f) for f in files[5:]], str(old), append=True)
    with zarr.storage.ZipStore(old, mode="r") as store:
        g = zarr.open_group(store, mode="r")
        assert "faceface_upper" not in g
        assert g["faceface/d2_distance"].shape[0] == g["faceface/item_offsets"][-1]
    with DatasetReader(old) as reader:
        for code, path in enumerate(files):
            item = reader.read_item(code)
            for name in FACEFACE:
                _same(item["faceface"][name], _source(path, name), f"{name} of {code}")


def test_merge_is_the_same_bytes_whatever_the_workers(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    files = [p for p, _, _ in realistic_items[:12]]
    merge_items(files, tmp_path / "w0.dataset", workers=0)
    merge_items(files, tmp_path / "w2.dataset", workers=2)
    merge_items(files, tmp_path / "p2.dataset", workers=2, executor="process")
    with zipfile.ZipFile(tmp_path / "w0.dataset") as zf:
        assert any(n.startswith("faceface_upper/") for n in zf.namelist())
    assert_same_dataset(tmp_path / "w2.dataset", tmp_path / "w0.dataset")
    assert_same_dataset(tmp_path / "p2.dataset", tmp_path / "w0.dataset")
