"""Datasets written before issue 18's layout still read, with the values they were given.

The fixtures in ``tests/fixtures/old_format/`` were written by cadstore at commit 4254135
(``scripts/make_old_format_fixtures.py``, see its README): four items of 3, 0, 1 and 5
faces with every face-pair array, merged into the zip form (with a recorded split) and
the directory form. That layout has no item frames and keeps every face-pair array in
full in ``faceface`` (no ``faceface_upper``). The items' generated arrays are stored
beside them in ``expected.npz``: the generator changed after that commit, so the same
seed no longer gives the same items.

The fixtures in ``tests/fixtures/old_format_bins/`` were written by cadstore at 02ba2f1
(``scripts/make_old_format_bins_fixtures.py``), before 1c9d8a3 qualified a dimension name
declared with two lengths in one group: ``bin`` is 64 long in ``d2_distance`` and 32 in
``a3_distance``, in ``faceface`` or ``faceface_upper``. Their tests copy them to their own
``tmp_path``.

Every test reads a copy of the fixtures, and checks after it ran that reading left the
copy as it was; the append writes to a copy of its own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import cadstore
from cadstore import OptStorage
from cadstore.dataset import CADDataset, DatasetExplorer, DatasetLoader, DatasetReader
from cadstore.errors import CorruptStoreError
from cadstore.synthetic import WorkloadConfig, make_item, make_item_metadata, write_item

FIXTURES = Path(__file__).parent / "fixtures" / "old_format"
OLD_COMMIT = "42541351c2eddef40114c82fbad9b6ff8b57923f"
FACE_PAIRS = ("d2_distance", "a3_distance", "extended_adjacency", "face_pair_edges_path")
EDGES = ("edge_indices", "edge_types", "edge_lengths", "edge_dihedral_angles")
EDGES += ("edge_convexities", "edge_u_grids")
FACES = ("face_indices", "face_types", "face_areas", "face_centroids", "face_loops")
FACES += ("face_discretization", "face_neighborscount")
FORMS = {"zip": Path("zip/old.dataset"), "directory": Path("directory/old.dataset")}

EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
NAMES = sorted(EXPECTED["items"])


def _arrays() -> dict[str, dict[str, np.ndarray]]:
    with np.load(FIXTURES / "expected.npz", allow_pickle=False) as npz:
        out: dict[str, dict[str, np.ndarray]] = {name: {} for name in NAMES}
        for key in npz.files:
            name, rest = key.split("/", 1)
            out[name][rest] = npz[key]
    return out


ARRAYS = _arrays()


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def copied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("old") / "old_format"
    shutil.copytree(FIXTURES, folder)
    return folder


@pytest.fixture(autouse=True)
def _unchanged(copied: Path) -> Iterator[None]:
    """Reading an old dataset writes nothing: the copy is the checked-in fixture after."""
    yield
    assert _digest(copied) == _digest(FIXTURES)


def _same(got: Any, expected: np.ndarray, what: str) -> None:
    got = got.numpy() if hasattr(got, "numpy") else np.asarray(got)
    assert got.dtype == expected.dtype, (what, got.dtype, expected.dtype)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert np.ascontiguousarray(got).tobytes() == expected.tobytes(), what


def _expected_rows(name: str, group: str) -> dict[str, np.ndarray]:
    """An item's rows of ``group`` as the dataset presents them (face pairs flattened)."""
    item = ARRAYS[name]
    n = int(EXPECTED["items"][name]["faces"])
    if group == "faces":
        return {a: item[a] for a in FACES}
    if group == "edges":
        return {a: item[a] for a in EDGES}
    if group == "graph":
        return {a: item[f"graph/{a}"] for a in ("edges_source", "edges_destination")}
    assert group == "faceface"
    return {a: item[a].reshape(n * n, *item[a].shape[2:]) for a in FACE_PAIRS}


def _assert_item(read: dict[str, Any], name: str) -> None:
    for group in ("faces", "edges", "faceface", "graph"):
        for array, expected in _expected_rows(name, group).items():
            _same(read[group][array], expected, f"{group}/{array} of {name}")
    assert int(read["graph"]["num_nodes"]) == int(ARRAYS[name]["graph/num_nodes"]), name


# ------------------------------------------------------------------ the fixtures


def test_the_fixtures_are_the_old_layout(copied: Path) -> None:
    assert EXPECTED["written_by"].startswith(f"cadstore {OLD_COMMIT}")
    assert [EXPECTED["items"][n]["faces"] for n in NAMES] == [3, 0, 1, 5]
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 200_000
    for form in FORMS.values():
        with DatasetReader(copied / form, stored_layout=True) as reader:
            assert sorted(reader.groups) == ["edges", "faceface", "faces", "graph"]
            stored = set(reader.arrays("faceface"))
            assert stored == {*FACE_PAIRS, "item_offsets", "file_id_code_faceface"}
            assert "cadstore_layout" not in reader.group_attributes("faceface")


def test_old_items_read_with_their_values(copied: Path) -> None:
    for name in NAMES:
        with OptStorage(copied / "items" / f"{name}.zarr") as item:
            for key, expected in ARRAYS[name].items():
                if key == "graph/num_nodes":
                    assert int(item.load_data(key)) == int(expected), name
                else:
                    _same(item.load_data(key), expected, f"{key} of {name}")
            for key, value in EXPECTED["items"][name]["metadata"].items():
                assert item.load_metadata(key) == value, (name, key)


# ------------------------------------------------------------------ readers


@pytest.mark.parametrize("form", FORMS)
def test_the_reader_gives_every_item(copied: Path, form: str) -> None:
    with DatasetReader(copied / FORMS[form]) as reader:
        assert reader.item_names == NAMES
        assert sorted(reader.groups) == ["edges", "faceface", "faces", "graph"]
        for code, name in enumerate(NAMES):
            _assert_item(reader.read_item(code), name)
        order = [3, 1, 2, 0, 1]
        batch = reader.read_items(order)
        for k, code in enumerate(order):
            _assert_item(batch[k], NAMES[code])


@pytest.mark.parametrize("form", FORMS)
def test_zarr_python_reads_the_arrays(copied: Path, form: str) -> None:
    path = copied / FORMS[form]
    store = zarr.storage.ZipStore(path, mode="r") if form == "zip" else path
    root = zarr.open_group(store, mode="r")
    try:
        assert [str(n) for n in root["item_names"][...]] == NAMES
        for group in ("faces", "edges", "faceface", "graph"):
            offsets = root[f"{group}/item_offsets"][...]
            for array in _expected_rows(NAMES[0], group):
                values = root[f"{group}/{array}"][...]
                for code, name in enumerate(NAMES):
                    rows = values[offsets[code] : offsets[code + 1]]
                    _same(rows, _expected_rows(name, group)[array], f"{group}/{array} {name}")
        counts = [int(ARRAYS[n]["graph/num_nodes"]) for n in NAMES]
        assert root["graph/num_nodes"][...].tolist() == counts
    finally:
        if form == "zip":
            store.close()


def test_xarray_reads_a_group(copied: Path) -> None:
    xr = pytest.importorskip("xarray")
    faces = xr.open_zarr(copied / FORMS["directory"], group="faces", consolidated=False)
    offsets = faces["item_offsets"].values
    for code, name in enumerate(NAMES):
        rows = faces["face_discretization"].values[offsets[code] : offsets[code + 1]]
        _same(rows, ARRAYS[name]["face_discretization"], name)


# ------------------------------------------------------------------ loader and batches


def _loader(copied: Path, form: str) -> DatasetLoader:
    if form == "zip":
        return DatasetLoader(flow_output_file=copied / "zip" / "old.flow")
    return DatasetLoader(copied / FORMS[form])


def _assert_dataset_item(item: dict[str, Any], code: int) -> None:
    name = NAMES[code]
    assert item["file_id_code"] == code and item["name"] == name
    _assert_item(item, name)
    metadata = EXPECTED["items"][name]["metadata"]
    assert item["labels"]["file_label"] == metadata["file_label"], name


@pytest.mark.parametrize("form", FORMS)
def test_cad_dataset_gives_every_item(copied: Path, form: str) -> None:
    with _loader(copied, form) as loader:
        dataset = CADDataset(loader, range(len(NAMES)))
        for code in range(len(NAMES)):
            _assert_dataset_item(dataset[code], code)


def test_the_recorded_split_is_loaded(copied: Path) -> None:
    with _loader(copied, "zip") as loader:
        for part, codes in EXPECTED["split"]["codes"].items():
            subset = loader.get_dataset(part)
            assert subset.indices.tolist() == codes, part
            for k, code in enumerate(codes):
                _assert_dataset_item(subset[k], code)


def _assert_batch(batch: dict[str, Any], codes: list[int]) -> None:
    """A collated batch holds each item's rows, its graph shifted to the batch's nodes."""
    assert batch["file_id_code"].tolist() == codes
    first_node = 0
    for k, code in enumerate(codes):
        name = NAMES[code]
        for group in ("faces", "edges", "faceface", "graph"):
            lo, hi = int(batch["ptr"][group][k]), int(batch["ptr"][group][k + 1])
            for array, expected in _expected_rows(name, group).items():
                if group == "graph":
                    expected = expected.astype(np.int64) + first_node
                _same(batch[group][array][lo:hi], expected, f"{group}/{array} of {name}")
        first_node += int(ARRAYS[name]["graph/num_nodes"])
    counts = [int(ARRAYS[NAMES[c]]["graph/num_nodes"]) for c in codes]
    assert batch["num_nodes"].tolist() == counts


@pytest.mark.parametrize(
    "options",
    [{"threads": 2}, {"processes": 2, "multiprocessing_context": "fork"}],
    ids=["threads", "fork"],
)
@pytest.mark.parametrize("form", FORMS)
def test_in_process_batches(copied: Path, form: str, options: dict[str, Any]) -> None:
    pytest.importorskip("torch")
    with _loader(copied, form) as loader:
        subset = CADDataset(loader, [1, 3, 2, 0, 1, 2])
        with subset.batches(batch_size=2, shuffle=False, prefetch=2, **options) as batches:
            for _ in range(2):  # the second epoch through reused buffers
                seen = []
                for batch in batches:
                    codes = batch["file_id_code"].tolist()
                    _assert_batch(batch, codes)
                    seen += codes
                assert seen == [1, 3, 2, 0, 1, 2]


def test_dataloader_workers(copied: Path) -> None:
    torch = pytest.importorskip("torch")
    with _loader(copied, "zip") as loader:
        dataset, collate = CADDataset(loader, [2, 1, 0, 3]).to_torch_with_collate()
        batches = torch.utils.data.DataLoader(
            dataset, batch_size=2, num_workers=2, collate_fn=collate
        )
        seen = []
        for batch in batches:
            codes = batch["file_id_code"].tolist()
            _assert_batch(batch, codes)
            seen += codes
        assert seen == [2, 1, 0, 3]


def test_pyg_batches(copied: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("torch_geometric")
    from cadstore.dataset.pyg import PygCollate

    collate = PygCollate(
        ["face_areas"], ["edge_lengths"], graph_label="file_label", pair_arrays=FACE_PAIRS
    )
    with _loader(copied, "zip") as loader:
        subset = CADDataset(loader, [0, 1, 2, 3])
        with subset.batches(batch_size=3, shuffle=False, collate_fn=collate) as batches:
            seen = []
            for batch in batches:
                for data, code in zip(
                    batch.to_data_list(), batch.file_id_code.tolist(), strict=True
                ):
                    name = NAMES[code]
                    item = ARRAYS[name]
                    _same(data.x[:, 0], item["face_areas"], f"x of {name}")
                    edges = np.stack([item["graph/edges_source"], item["graph/edges_destination"]])
                    _same(data.edge_index, edges.astype(np.int64), f"edge_index of {name}")
                    label = EXPECTED["items"][name]["metadata"]["file_label"]
                    assert data.y.tolist() == [label], name
                    for array, rows in _expected_rows(name, "faceface").items():
                        _same(data[array], rows, f"{array} of {name}")
                    seen.append(code)
            assert seen == [0, 1, 2, 3]


# ------------------------------------------------------------------ explorer


def test_the_explorer_reads_the_old_dataset(copied: Path, tmp_path: Path) -> None:
    """Item by item as stored, and as the same items merged by this code."""
    items = sorted((copied / "items").glob("*.data"))
    cadstore.merge([str(p) for p in items], str(tmp_path / "new.dataset"))
    old = DatasetExplorer(flow_output_file=copied / "zip" / "old.flow")
    new = DatasetExplorer(flow_output_file=tmp_path / "new.flow")
    try:
        assert old.n_items == len(NAMES)
        assert old.available_groups() == new.available_groups()
        for group in ("faces", "edges", "faceface", "graph"):
            got, want = old.get_group_data(group), new.get_group_data(group)
            assert got.equals(want), group
            assert got.attrs["primary_dimension"] == want.attrs["primary_dimension"], group
            for code, name in enumerate(NAMES):
                rows = old.file_dataset(code, group)
                assert rows.equals(new.file_dataset(code, group)), (group, name)
                for array, expected in _expected_rows(name, group).items():
                    _same(rows[array].values, expected, f"{group}/{array} of {name}")
        got = old.create_distribution("d2_distance", bins=4, group="faceface")
        want = new.create_distribution("d2_distance", bins=4, group="faceface")
        np.testing.assert_array_equal(got["hist"], want["hist"])
        np.testing.assert_array_equal(got["bin_edges"], want["bin_edges"])
        assert old.decode_file_id_code(3) == NAMES[3]
        info = old.get_file_info_all()
        assert info["subset"].tolist() == ["train", "validation", "train", "test"]
        text = old.table_of_contents()
        for array in FACE_PAIRS:
            assert array.upper() in text
    finally:
        old.close()
        new.close()


# ------------------------------------------------------------------ append


def _new_item(folder: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    config = WorkloadConfig(**EXPECTED["workload_config"])
    item = make_item(11, seed=3, config=config, n_faces=4)
    metadata = make_item_metadata(11, seed=3, config=config, n_faces=4)
    path = write_item(folder / "new_item.zarr", item, metadata, summary_dir=False)
    return Path(path), item, metadata


@pytest.mark.parametrize("form", FORMS)
def test_appending_to_a_copy(copied: Path, tmp_path: Path, form: str) -> None:
    dataset = tmp_path / FORMS[form]
    shutil.copytree(copied / FORMS[form].parent, dataset.parent)
    path, item, metadata = _new_item(tmp_path)
    result = cadstore.merge([str(path)], str(dataset), append=True)
    assert result.items == ["new_item"] and not result.errors

    n = 4
    new_rows = {
        "faces": {a: item[a] for a in FACES},
        "edges": {a: item[a] for a in EDGES},
        "graph": {a: item["graph"][a] for a in ("edges_source", "edges_destination")},
        "faceface": {a: item[a].reshape(n * n, *item[a].shape[2:]) for a in FACE_PAIRS},
    }
    with DatasetReader(dataset) as reader:
        assert reader.item_names == [*NAMES, "new_item"]
        for code, name in enumerate(NAMES):
            _assert_item(reader.read_item(code), name)
        read = reader.read_item(len(NAMES))
        for group, arrays in new_rows.items():
            for array, expected in arrays.items():
                _same(read[group][array], expected, f"{group}/{array} of new_item")
        assert int(read["graph"]["num_nodes"]) == n

    flow = dataset.with_suffix(".flow")
    with DatasetLoader(flow_output_file=flow) as loader:
        items = CADDataset(loader, range(len(NAMES) + 1))
        for code in range(len(NAMES)):
            _assert_dataset_item(items[code], code)
        assert items[len(NAMES)]["labels"]["file_label"] == metadata["file_label"]
        if form == "zip":  # the old split is kept; the new item is in no subset
            for part, codes in EXPECTED["split"]["codes"].items():
                assert loader.get_dataset(part).indices.tolist() == codes, part
    explorer = DatasetExplorer(flow_output_file=flow)
    try:
        rows = explorer.file_dataset(len(NAMES), "faceface")
        _same(rows["d2_distance"].values, new_rows["faceface"]["d2_distance"], "explorer")
    finally:
        explorer.close()


def test_splitting_a_copy_again(copied: Path, tmp_path: Path) -> None:
    shutil.copytree(copied / "zip", tmp_path / "zip")
    flow = tmp_path / "zip" / "old.flow"
    with DatasetLoader(flow_output_file=flow) as loader:
        counts = loader.split("file_label", train=0.5, validation=0.25, test=0.25, random_state=1)
        assert sum(counts) == len(NAMES)
    with DatasetLoader(flow_output_file=flow) as loader:  # the new split, recorded
        seen = []
        for part in ("train", "validation", "test"):
            subset = loader.get_dataset(part)
            for k, code in enumerate(subset.indices.tolist()):
                _assert_dataset_item(subset[k], code)
                seen.append(code)
        assert sorted(seen) == list(range(len(NAMES)))


def test_graph_files_from_the_old_dataset(copied: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("torch_geometric")
    from cadstore.dataset.pyg import PygCollate
    from cadstore.storage.graphstorage import PyGGraphStoreHandler, write_graph_files

    with _loader(copied, "directory") as loader:
        subset = CADDataset(loader, range(len(NAMES)))
        collate = PygCollate(["face_areas"], ["edge_lengths"], pair_arrays=())
        paths = write_graph_files(subset, tmp_path / "graph_data", collate, batch_size=3)
    assert [Path(p).name for p in paths] == [f"{name}.pt" for name in NAMES]
    for path, name in zip(paths, NAMES, strict=True):
        graph = PyGGraphStoreHandler().load_graph(path)
        item = ARRAYS[name]
        assert graph.num_nodes == int(item["graph/num_nodes"]), name
        _same(graph.x[:, 0], item["face_areas"], f"x of {name}")
        edges = np.stack([item["graph/edges_source"], item["graph/edges_destination"]])
        _same(graph.edge_index, edges.astype(np.int64), f"edge_index of {name}")


# ------------------------------------------------------------------ a dimension of two lengths

# Written by cadstore at 02ba2f1, before 1c9d8a3 qualified by its array a dimension name
# declared with two lengths in one group (scripts/make_old_format_bins_fixtures.py):
# 'bin' is 64 long in d2_distance and 32 in a3_distance, in faceface ("full") or in
# faceface_upper ("auto"). The explorer presents each such name qualified by its array, as
# the merger names it now.
BINS = Path(__file__).parent / "fixtures" / "old_format_bins"
BINS_COMMIT = "02ba2f1df19831c18ac481781fc979a2ab9d8a14"
BINS_EXPECTED = json.loads((BINS / "expected.json").read_text())
BINS_NAMES = sorted(BINS_EXPECTED["items"])
BIN_PAIRS = {
    "d2_distance": ("facepair", "d2_distance_bin"),
    "a3_distance": ("facepair", "a3_distance_bin"),
    "face_pair_edges_path": ("facepair", "dim_path"),
}
LAYOUTS = ("auto", "full")

with np.load(BINS / "expected.npz", allow_pickle=False) as _npz:
    BINS_ARRAYS = {
        name: {key.split("/", 1)[1]: _npz[key] for key in _npz.files if key.startswith(name)}
        for name in BINS_NAMES
    }


@pytest.fixture
def bins(tmp_path: Path) -> Iterator[Path]:
    """A copy of the fixtures, which reading must leave byte for byte as it was."""
    folder = tmp_path / "old_format_bins"
    shutil.copytree(BINS, folder)
    before = _digest(folder)
    assert before == _digest(BINS)
    yield folder
    assert _digest(folder) == before


def _bins_rows(name: str, array: str) -> np.ndarray:
    """An item's rows of face-pair array ``array``: its N x N (x k) matrix flattened."""
    value = BINS_ARRAYS[name][array]
    n = int(BINS_EXPECTED["items"][name]["faces"])
    return value.reshape(n * n, *value.shape[2:])


def test_the_bins_fixtures_store_one_name_with_two_lengths(bins: Path) -> None:
    assert BINS_EXPECTED["written_by"].startswith(f"cadstore {BINS_COMMIT}")
    assert [BINS_EXPECTED["items"][n]["faces"] for n in BINS_NAMES] == [2, 0, 3, 1]
    total = sum(p.stat().st_size for p in BINS.rglob("*") if p.is_file())
    assert total < 100_000
    for layout, group in (("auto", "faceface_upper"), ("full", "faceface")):
        store = zarr.storage.ZipStore(bins / layout / "bins.dataset", mode="r")
        try:
            root = zarr.open_group(store, mode="r")
            pairs = ("d2_distance", "a3_distance")
            lengths = {a: root[f"{group}/{a}"].shape[1] for a in pairs}
            assert lengths == {"d2_distance": 64, "a3_distance": 32}
            for array in pairs:
                assert root[f"{group}/{array}"].metadata.dimension_names[1] == "bin"
        finally:
            store.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_explorer_presents_a_dimension_of_two_lengths(bins: Path, layout: str) -> None:
    """Each ``bin`` is qualified by its array in every view of the explorer; the values
    are the items' (xarray refused the group: 'conflicting sizes for dimension bin')."""
    explorer = DatasetExplorer(flow_output_file=bins / layout / "bins.flow")
    try:
        assert explorer.available_groups() == {"faces", "faceface"}
        view = explorer.get_group_data("faceface")
        offsets = explorer.reader.offsets("faceface")
        for array, dims in BIN_PAIRS.items():
            expected = np.concatenate([_bins_rows(name, array) for name in BINS_NAMES])
            assert view[array].dims == dims, array
            got = explorer.get_array_data("faceface", array)
            assert got.dims == dims and got.shape == expected.shape, array
            _same(got.values, expected, array)
            _same(view[array].values, expected, array)
            for code, name in enumerate(BINS_NAMES):
                rows = view[array].values[offsets[code] : offsets[code + 1]]
                _same(rows, _bins_rows(name, array), f"{array} of {name}")
        for code, name in enumerate(BINS_NAMES):
            item = explorer.file_dataset(code, "faceface")
            assert item.attrs["name"] == name
            for array, dims in BIN_PAIRS.items():
                assert item[array].dims == dims, (array, name)
                _same(item[array].values, _bins_rows(name, array), f"{array} of {name}")
        codes = explorer.get_file_list("faceface", lambda ds: ds["a3_distance"] > 1.9)
        wanted = [
            code
            for code, name in enumerate(BINS_NAMES)
            if (BINS_ARRAYS[name]["a3_distance"] > 1.9).any()
        ]
        assert codes.tolist() == wanted
        text = explorer.table_of_contents()
        assert "D2_DISTANCE_DATA: Shape: (14, 64), Dims: ('facepair', 'd2_distance_bin')" in text
        assert "A3_DISTANCE_DATA: Shape: (14, 32), Dims: ('facepair', 'a3_distance_bin')" in text
        hist = explorer.create_distribution("a3_distance", bins=4, group="faceface")
        assert int(hist["hist"].sum()) == 14 * 32
    finally:
        explorer.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_old_dataset_is_presented_as_the_same_items_merged_now(
    bins: Path, tmp_path: Path, layout: str
) -> None:
    """The old dataset's views are those of the same items merged by this code, which
    qualifies the names itself; the reader shows the stored names on asking."""
    items = sorted(str(p) for p in (bins / "items").glob("*.data"))
    cadstore.merge(items, str(tmp_path / "new.dataset"), face_pair_layout=layout)
    old = DatasetExplorer(flow_output_file=bins / layout / "bins.flow")
    new = DatasetExplorer(flow_output_file=tmp_path / "new.flow")
    try:
        for group in ("faces", "faceface"):
            assert old.get_group_data(group).equals(new.get_group_data(group)), group
            for code in range(len(BINS_NAMES)):
                assert old.file_dataset(code, group).equals(new.file_dataset(code, group))
        for array in BIN_PAIRS:
            old_meta = old.reader.array_meta("faceface", array)
            assert old_meta.dims == new.reader.array_meta("faceface", array).dims, array
    finally:
        old.close()
        new.close()
    stored = "faceface_upper" if layout == "auto" else "faceface"
    with DatasetReader(bins / layout / "bins.dataset", stored_layout=True) as reader:
        for array in ("d2_distance", "a3_distance"):
            assert reader.array_meta(stored, array).dims[1:] == ("bin",), array


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_loader_reads_a_dimension_of_two_lengths(bins: Path, layout: str) -> None:
    with DatasetLoader(flow_output_file=bins / layout / "bins.flow") as loader:
        dataset = CADDataset(loader, range(len(BINS_NAMES)))
        for code, name in enumerate(BINS_NAMES):
            item = dataset[code]
            assert item["file_id_code"] == code and item["name"] == name
            for array in BIN_PAIRS:
                _same(item["faceface"][array], _bins_rows(name, array), f"{array} of {name}")
            _same(item["faces"]["face_areas"], BINS_ARRAYS[name]["face_areas"], name)
            label = BINS_EXPECTED["items"][name]["metadata"]["file_label"]
            assert item["labels"]["file_label"] == label, name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batches_of_a_dimension_of_two_lengths(bins: Path, layout: str) -> None:
    pytest.importorskip("torch")
    with DatasetLoader(flow_output_file=bins / layout / "bins.flow") as loader:
        subset = CADDataset(loader, [2, 1, 0, 3])
        with subset.batches(batch_size=3, shuffle=False, threads=2) as batches:
            seen = []
            for batch in batches:
                codes = batch["file_id_code"].tolist()
                for k, code in enumerate(codes):
                    name = BINS_NAMES[code]
                    lo, hi = (int(p) for p in batch["ptr"]["faceface"][k : k + 2])
                    for array in BIN_PAIRS:
                        rows = batch["faceface"][array][lo:hi]
                        _same(rows, _bins_rows(name, array), f"{array} of {name}")
                seen += codes
            assert seen == [2, 1, 0, 3]


def _with_damaged_d2_distance(tmp_path: Path) -> Path:
    """The 'full' old_format_bins dataset, faceface/d2_distance's data_type made invalid."""
    dst = tmp_path / "bins.dataset"
    with (
        zipfile.ZipFile(BINS / "full" / "bins.dataset") as zin,
        zipfile.ZipFile(dst, "w") as zout,
    ):
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "zarr.json":
                doc = json.loads(data)
                arrays = doc["consolidated_metadata"]["metadata"]
                arrays["faceface/d2_distance"]["data_type"] = "bogus"
                data = json.dumps(doc).encode()
            elif info.filename == "faceface/d2_distance/zarr.json":
                doc = json.loads(data)
                doc["data_type"] = "bogus"
                data = json.dumps(doc).encode()
            zout.writestr(info, data)
    return dst


def test_a_damaged_array_does_not_stop_reading_its_healthy_siblings(tmp_path: Path) -> None:
    """Presenting a group's dimension names (for datasets merged before 1c9d8a3) looked at
    every array of the group, so one array's damaged metadata made its healthy siblings
    unreadable (array_meta, read_item of chosen arrays); the damaged one alone is refused
    when it is read."""
    path = _with_damaged_d2_distance(tmp_path)
    with DatasetReader(path) as reader:
        assert reader.array_meta("faceface", "face_pair_edges_path").dims[0] == "facepair"
        item = reader.read_item(
            0, groups=["faceface"], arrays={"faceface": ["face_pair_edges_path"]}
        )
        assert item["faceface"]["face_pair_edges_path"].shape == (4, 5)
        with pytest.raises(CorruptStoreError, match="d2_distance"):
            reader.read_item(0, groups=["faceface"], arrays={"faceface": ["d2_distance"]})


def _with_a_declared_qualified_name(tmp_path: Path, layout: str) -> Path:
    """A copy of the ``layout`` old_format_bins dataset (with its tables and manifest) in
    which ``face_pair_edges_path`` is on ``d2_distance_bin`` (5 long): the name the reader
    would give D2's 64 bins is one the group declares."""
    folder = tmp_path / layout
    shutil.copytree(BINS / layout, folder)
    dst = folder / "bins.dataset"
    dst.unlink()
    with (
        zipfile.ZipFile(BINS / layout / "bins.dataset") as zin,
        zipfile.ZipFile(dst, "w") as zout,
    ):
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "zarr.json":
                doc = json.loads(data)
                arrays = doc["consolidated_metadata"]["metadata"]
                arrays["faceface/face_pair_edges_path"]["dimension_names"][1] = "d2_distance_bin"
                data = json.dumps(doc).encode()
            elif info.filename == "faceface/face_pair_edges_path/zarr.json":
                doc = json.loads(data)
                doc["dimension_names"][1] = "d2_distance_bin"
                data = json.dumps(doc).encode()
            zout.writestr(info, data)
    return folder


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_qualified_name_the_group_declares_is_not_given_twice(
    tmp_path: Path, layout: str
) -> None:
    """The reader presents ``bin`` (64 in D2, 32 in A3) qualified by each array; the name
    it gave D2, ``d2_distance_bin``, was also the name the group declares for
    ``face_pair_edges_path`` (5 long), so the explorer refused every view of the group
    ("conflicting sizes for dimension 'd2_distance_bin'"). D2's bins now get the first
    free name, ``d2_distance_bin_2``; every array reads with its values."""
    folder = _with_a_declared_qualified_name(tmp_path, layout)
    presented = {
        "d2_distance": ("facepair", "d2_distance_bin_2"),
        "a3_distance": ("facepair", "a3_distance_bin"),
        "face_pair_edges_path": ("facepair", "d2_distance_bin"),
    }
    with DatasetReader(folder / "bins.dataset") as reader:
        for array, dims in presented.items():
            assert reader.array_meta("faceface", array).dims == dims, array
        for code, name in enumerate(BINS_NAMES):
            item = reader.read_item(code)["faceface"]
            for array in presented:
                _same(item[array], _bins_rows(name, array), f"{array} of {name}")
    explorer = DatasetExplorer(flow_output_file=folder / "bins.flow")
    try:
        view = explorer.get_group_data("faceface")
        assert dict(view.sizes) == {
            "facepair": 14,
            "d2_distance_bin_2": 64,
            "a3_distance_bin": 32,
            "d2_distance_bin": 5,
        }
        for array, dims in presented.items():
            expected = np.concatenate([_bins_rows(name, array) for name in BINS_NAMES])
            assert view[array].dims == dims, array
            _same(view[array].values, expected, array)
            _same(explorer.get_array_data("faceface", array).values, expected, array)
        for code, name in enumerate(BINS_NAMES):
            rows = explorer.file_dataset(code, "faceface")
            for array, dims in presented.items():
                assert rows[array].dims == dims, (array, name)
                _same(rows[array].values, _bins_rows(name, array), f"{array} of {name}")
        codes = explorer.get_file_list("faceface", lambda ds: ds["face_pair_edges_path"] > 7)
        wanted = [
            code
            for code, name in enumerate(BINS_NAMES)
            if (BINS_ARRAYS[name]["face_pair_edges_path"] > 7).any()
        ]
        assert codes.tolist() == wanted
        text = explorer.table_of_contents()
        assert "Dims: ('facepair', 'd2_distance_bin_2')" in text
    finally:
        explorer.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_append_continues_the_stored_names_of_a_dimension_of_two_lengths(
    tmp_path: Path, layout: str
) -> None:
    """An append to a dataset merged before 1c9d8a3 writes the new items' rows under the
    names the stored arrays have (``bin`` in D2 and A3, both lengths), so the file stays
    consistent and zarr-python opens every array; the reader and the explorer present the
    old items and the new ones qualified, each with its values."""
    from cadstore.schema import SchemaBuilder
    from cadstore.synthetic import write_item

    folder = tmp_path / layout
    shutil.copytree(BINS / layout, folder)
    dataset = folder / "bins.dataset"
    schema = SchemaBuilder(domain="CAD").from_template("cad_advanced").build()
    rng = np.random.default_rng(7)
    new: dict[str, dict[str, np.ndarray]] = {}
    paths = []
    for name, faces in (("bins_new_0", 3), ("bins_new_1", 0)):
        item = {"face_areas": rng.random(faces).astype(np.float32)}
        for key, bins in BINS_EXPECTED["bins"].items():
            half = rng.random((faces, faces, bins)).astype(np.float32)
            item[key] = half + half.transpose(1, 0, 2)
        shape = (faces, faces, BINS_EXPECTED["path_len"])
        item["face_pair_edges_path"] = rng.integers(-1, 9, shape).astype(np.int32)
        store = tmp_path / "items" / f"{name}.zarr"
        paths.append(write_item(store, item, {"file_label": 1}, schema=schema, summary_dir=False))
        new[name] = item
    result = cadstore.merge(paths, str(dataset), append=True)
    assert result.items == list(new) and not result.errors

    arrays = {**BINS_ARRAYS, **new}
    names = [*BINS_NAMES, *new]

    def rows(name: str, array: str) -> np.ndarray:
        value = arrays[name][array]
        if array == "face_areas":
            return value
        n = value.shape[0]
        return value.reshape(n * n, *value.shape[2:])

    with DatasetReader(dataset) as reader:
        assert reader.item_names == names
        for array, dims in BIN_PAIRS.items():
            assert reader.array_meta("faceface", array).dims == dims, array
        for code, name in enumerate(names):
            item = reader.read_item(code)
            _same(item["faces"]["face_areas"], rows(name, "face_areas"), name)
            for array in BIN_PAIRS:
                _same(item["faceface"][array], rows(name, array), f"{array} of {name}")
    stored = "faceface_upper" if layout == "auto" else "faceface"
    with DatasetReader(dataset, stored_layout=True) as reader:
        for array in ("d2_distance", "a3_distance"):
            assert reader.array_meta(stored, array).dims[1:] == ("bin",), array

    explorer = DatasetExplorer(flow_output_file=folder / "bins.flow")
    try:
        view = explorer.get_group_data("faceface")
        offsets = explorer.reader.offsets("faceface")
        for array, dims in BIN_PAIRS.items():
            assert view[array].dims == dims, array
            values = view[array].values
            for code, name in enumerate(names):
                got = values[offsets[code] : offsets[code + 1]]
                _same(got, rows(name, array), f"{array} of {name}")
        for code, name in enumerate(names):
            item = explorer.file_dataset(code, "faceface")
            assert item.attrs["name"] == name
            for array, dims in BIN_PAIRS.items():
                assert item[array].dims == dims, (array, name)
                _same(item[array].values, rows(name, array), f"{array} of {name}")
            faces = explorer.file_dataset(code, "faces")
            _same(faces["face_areas"].values, rows(name, "face_areas"), name)
    finally:
        explorer.close()

    # zarr-python opens the appended arrays, on the names they are stored with.
    store = zarr.storage.ZipStore(dataset, mode="r")
    try:
        for array in ("d2_distance", "a3_distance", "face_pair_edges_path"):
            group = stored if array != "face_pair_edges_path" else "faceface"
            opened = zarr.open_array(store, path=f"{group}/{array}", mode="r")
            want = "dim_path" if array == "face_pair_edges_path" else "bin"
            assert opened.metadata.dimension_names[1] == want, array
            offsets = zarr.open_array(store, path=f"{group}/item_offsets", mode="r")[...]
            values = opened[...]
            for code, name in enumerate(names):
                got = values[offsets[code] : offsets[code + 1]]
                matrix = arrays[name][array]
                if group == "faceface_upper":  # pairs i <= j, row-major
                    expected = matrix[np.triu_indices(matrix.shape[0])]
                else:
                    expected = rows(name, array)
                _same(got, expected, f"{group}/{array} of {name}")
    finally:
        store.close()


# --------------------------------------------------- items of one name of two lengths

# cadstore before 684dcf9 stored an item's arrays on the names their schema declares:
# face_discretization on (face, sample, component) with 4 samples of 7 components and
# edge_u_grids on (edge, sample, component) with 3 of 6, so 'sample' and 'component' had
# two lengths in one item. The test writes that layout itself: an item written now, its
# zarr.json documents (the array's and the root's consolidated copy) given those names.
OLD_DIMS = {
    "face_discretization": ["face", "sample", "component"],
    "edge_u_grids": ["edge", "sample", "component"],
}


def _old_dims_schema() -> dict[str, Any]:
    builder = cadstore.SchemaBuilder(domain="CAD")
    faces = builder.create_group("faces", "face", "Faces")
    faces.create_array("face_areas", ["face"], "float32")
    faces.create_array("face_discretization", OLD_DIMS["face_discretization"], "float32")
    edges = builder.create_group("edges", "edge", "Edges")
    edges.create_array("edge_u_grids", OLD_DIMS["edge_u_grids"], "float32")
    return builder.build()


def _write_old_dims_item(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """An item of the layout above, as ``<path>.data``; returns its path."""
    with OptStorage(path) as storage:  # closed uncompressed: a directory store
        storage.set_schema(_old_dims_schema())
        for key, value in arrays.items():
            storage.save_data(key, value)
    root = json.loads((path / "zarr.json").read_text())
    consolidated = root["consolidated_metadata"]["metadata"]
    for key, dims in OLD_DIMS.items():
        doc = json.loads((path / key / "zarr.json").read_text())
        assert doc["dimension_names"] != dims  # the names written now are told apart
        doc["dimension_names"] = consolidated[key]["dimension_names"] = dims
        (path / key / "zarr.json").write_text(json.dumps(doc))
    (path / "zarr.json").write_text(json.dumps(root))
    data = Path(f"{path}.data")
    with zipfile.ZipFile(data, "w") as archive:  # members stored, as cadstore writes them
        for member in sorted(p for p in path.rglob("*") if p.is_file()):
            archive.write(member, member.relative_to(path).as_posix())
    shutil.rmtree(path)
    return data


def _old_dims_arrays(faces: int, edges: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "face_areas": rng.random(faces).astype(np.float32),
        "face_discretization": rng.random((faces, 4, 7)).astype(np.float32),
        "edge_u_grids": rng.random((edges, 3, 6)).astype(np.float32),
    }


def test_an_old_item_with_one_name_of_two_lengths_is_read_and_merged(tmp_path: Path) -> None:
    """cadstore reads such an item by its arrays, not their names, and merges it on the
    schema's names, each group apart; zarr-python reads it too. xarray refuses it (one
    dimension of two lengths); the dataset merged from it opens. Reading and merging
    leave the item as it was."""
    xr = pytest.importorskip("xarray")
    given = [_old_dims_arrays(3, 5, 0), _old_dims_arrays(2, 4, 1)]
    folder = tmp_path / "items"
    folder.mkdir()
    files = [_write_old_dims_item(folder / f"old_{n}.zarr", a) for n, a in enumerate(given)]
    before = _digest(folder)
    for data, arrays in zip(files, given, strict=True):
        with OptStorage(data.with_suffix(""), mode="r") as item:
            assert sorted(item.get_keys()) == sorted(arrays)
            assert item.get_array_dims("edge_u_grids") == tuple(OLD_DIMS["edge_u_grids"])
            for key, value in arrays.items():
                _same(item.load_data(key), value, f"{key} of {data.name}")
        with zarr.storage.ZipStore(data, mode="r") as store:
            group = zarr.open_group(store, mode="r")
            for key, dims in OLD_DIMS.items():
                assert list(group[key].metadata.dimension_names) == dims
                _same(group[key][...], arrays[key], key)
            with pytest.raises(ValueError, match="conflicting sizes for dimension"):
                xr.open_zarr(store)
    out = tmp_path / "merged" / "old.dataset"
    cadstore.merge([str(f) for f in files], str(out))
    assert _digest(folder) == before
    with DatasetReader(out) as reader:
        for code, arrays in enumerate(given):
            item = reader.read_item(code)
            _same(item["faces"]["face_discretization"], arrays["face_discretization"], "faces")
            _same(item["edges"]["edge_u_grids"], arrays["edge_u_grids"], "edges")
    with zarr.storage.ZipStore(out, mode="r") as store:
        for group, key in (("faces", "face_discretization"), ("edges", "edge_u_grids")):
            ds = xr.open_zarr(store, group=group)
            assert ds[key].dims == tuple(OLD_DIMS[key])
            _same(ds[key].values, np.concatenate([a[key] for a in given]), key)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_xarray_refuses_the_group_of_a_dimension_of_two_lengths_as_documented(
    bins: Path, layout: str
) -> None:
    """docs/format.md: xarray cannot open the face-pair group of such a dataset (nor its
    tree), opens it without one of the two arrays, and the explorer presents it whole
    (test_the_explorer_presents_a_dimension_of_two_lengths)."""
    xr = pytest.importorskip("xarray")
    group = "faceface_upper" if layout == "auto" else "faceface"
    with zarr.storage.ZipStore(bins / layout / "bins.dataset", mode="r") as store:
        with pytest.raises(ValueError, match="conflicting sizes for dimension 'bin'"):
            xr.open_zarr(store, group=group)
        with pytest.raises(ValueError, match="conflicting sizes for dimension 'bin'"):
            xr.open_datatree(store, engine="zarr")
        ds = xr.open_zarr(store, group=group, drop_variables=["a3_distance"])
        assert ds["d2_distance"].dims[1:] == ("bin",) and ds.sizes["bin"] == 64
        offsets = ds["item_offsets"].values
        for code, name in enumerate(BINS_NAMES):
            matrix = BINS_ARRAYS[name]["d2_distance"]
            if layout == "auto":  # the upper triangle: pairs i <= j, row-major
                expected = matrix[np.triu_indices(matrix.shape[0])]
            else:
                expected = _bins_rows(name, "d2_distance")
            rows = ds["d2_distance"].values[offsets[code] : offsets[code + 1]]
            _same(rows, expected, f"d2_distance of {name}")


def test_an_old_item_saved_again_tells_its_names_of_two_lengths_apart(tmp_path: Path) -> None:
    """Such an item reopened kept every stored name when anything was saved into it, so
    the file published again still had ``sample`` and ``component`` of two lengths and
    xarray refused it. The arrays carried over now tell such names apart, the first in
    key order keeping them (``edge_u_grids``), whichever array is saved."""
    xr = pytest.importorskip("xarray")
    arrays = _old_dims_arrays(3, 5, 0)
    data = _write_old_dims_item(tmp_path / "old.zarr", arrays)
    with OptStorage(tmp_path / "old.zarr", mode="a") as storage:
        arrays["face_areas"] = arrays["face_areas"] + 1
        storage.save_data("face_areas", arrays["face_areas"])
        storage.compress_store()
    with zarr.storage.ZipStore(data, mode="r") as store:
        group = zarr.open_group(store, mode="r")
        dims = {key: list(group[key].metadata.dimension_names) for key in OLD_DIMS}
        assert dims == {
            "edge_u_grids": ["edge", "sample", "component"],
            "face_discretization": ["face", "sample_2", "component_2"],
        }
        ds = xr.open_zarr(store)
        for key, value in arrays.items():
            _same(ds[key].values, value, key)
    with OptStorage(tmp_path / "old.zarr", mode="r") as item:
        for key, value in arrays.items():
            _same(item.load_data(key), value, key)
