"""Items of 0 and 1 faces through every training path: the values ``CADDataset`` gives.

An item without faces has empty rows in every group (its face-pair triangles are empty);
one of a single face has a 1 x 1 face-pair matrix, whose triangle is the matrix itself,
and no edges. The realistic items the other loader tests use all have several faces, so
these are checked here: the in-process loader (threads and worker processes, fork and
spawn), ``DataLoader`` workers over ``to_torch_with_collate()`` (fork and spawn), and
PyTorch Geometric batches in a real ``DataLoader`` and in the in-process loader, with
batches made only of such items and batches mixing them with larger ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cadstore
from cadstore.dataset import CADDataset, DatasetLoader
from cadstore.synthetic import make_item, make_item_metadata, write_item

torch = pytest.importorskip("torch")

#: Faces of each item, by code: empty and single-face items among larger ones.
FACES = [3, 0, 1, 5, 1, 0, 2, 7, 0, 1, 4]
#: The subset's order: batches of 3 give one of empty items only, one of single-face
#: items only, then mixed ones (and a last, short batch).
ORDER = [1, 5, 8, 2, 4, 9, 0, 1, 3, 6, 7, 10, 2]
FACE_PAIRS = ("d2_distance", "a3_distance", "extended_adjacency", "face_pair_edges_path")


def _no_faces(index: int) -> dict[str, Any]:
    """A generated item with every face and edge row removed (and so every face pair)."""
    one = make_item(index, n_faces=1)
    item: dict[str, Any] = {}
    for key, value in one.items():
        if key == "graph":
            item[key] = {
                "edges_source": value["edges_source"][:0],
                "edges_destination": value["edges_destination"][:0],
                "num_nodes": 0,
            }
        elif key in FACE_PAIRS:
            item[key] = value[:0, :0]
        else:
            item[key] = value[:0]
    return item


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("small")
    written, paths = [], []
    for index, faces in enumerate(FACES):
        item = make_item(index, n_faces=faces) if faces else _no_faces(index)
        metadata = make_item_metadata(index, n_faces=max(faces, 1))
        paths.append(write_item(folder / f"item{index:02d}.zarr", item, metadata))
        written.append(item)
    cadstore.merge(paths, str(folder / "small.dataset"))
    return folder / "small.flow", written


@pytest.fixture
def subset(items: tuple[Path, list[dict[str, Any]]]) -> Iterator[CADDataset]:
    with DatasetLoader(flow_output_file=items[0]) as loader:
        yield CADDataset(loader, ORDER)


def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _same(got: Any, expected: Any, what: str) -> None:
    got, expected = _numpy(got), np.asarray(expected)
    assert got.dtype == expected.dtype, what
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert np.ascontiguousarray(got).tobytes() == expected.tobytes(), what


def _reference(subset: CADDataset) -> dict[int, dict[str, Any]]:
    """``CADDataset``'s items, by code."""
    return {int(subset.indices[i]): subset[i] for i in range(len(subset))}


def test_the_dataset_is_stored_as_triangles_and_read_as_the_items(
    items: tuple[Path, list[dict[str, Any]]], subset: CADDataset
) -> None:
    from cadstore.dataset import DatasetReader

    flow, written = items
    with DatasetReader(flow.with_suffix(".dataset"), stored_layout=True) as stored:
        assert set(stored.arrays("faceface_upper")) >= {
            "d2_distance",
            "a3_distance",
            "extended_adjacency",
        }
    for code, item in _reference(subset).items():
        source, n = written[code], FACES[code]
        assert item["graph"]["num_nodes"] == n
        for name in FACE_PAIRS:
            flat = np.asarray(source[name]).reshape(n * n, *np.shape(source[name])[2:])
            _same(item["faceface"][name], flat, f"{name} of item {code}")
        for name in ("face_areas", "face_discretization", "edge_u_grids"):
            group = "edges" if name.startswith("edge") else "faces"
            _same(item[group][name], source[name], f"{name} of item {code}")


def _assert_batch(batch: Mapping[str, Any], reference: dict[int, dict[str, Any]]) -> list[int]:
    """A GraphCollate batch holds each of its items' rows as ``CADDataset`` reads them."""
    codes = _numpy(batch["file_id_code"]).tolist()
    ptr = batch["ptr"]
    first_node, edges = 0, []
    for k, code in enumerate(codes):
        item = reference[code]
        for group, rows in ptr.items():
            lo, hi = int(rows[k]), int(rows[k + 1])
            for name, values in batch[group].items():
                if group == "graph" and name == "num_nodes":
                    continue
                expected = item[group][name]
                if group == "graph":  # endpoints shifted to the batch's nodes, as int64
                    expected = np.asarray(expected).astype(np.int64) + first_node
                _same(values[lo:hi], expected, f"{group}/{name} of item {code}")
        graph = item["graph"]
        edges.append(
            np.stack([graph["edges_source"], graph["edges_destination"]]).astype(np.int64)
            + first_node
        )
        first_node += int(graph["num_nodes"])
    assert _numpy(batch["num_nodes"]).tolist() == [
        int(reference[c]["graph"]["num_nodes"]) for c in codes
    ]
    _same(batch["edge_index"], np.concatenate(edges, axis=1), "edge_index")
    _same(
        batch["batch"],
        np.repeat(np.arange(len(codes)), [int(reference[c]["graph"]["num_nodes"]) for c in codes]),
        "batch",
    )
    return codes


def _assert_epoch(batches: Any, subset: CADDataset) -> None:
    reference = _reference(subset)
    codes = [c for batch in batches for c in _assert_batch(batch, reference)]
    assert codes == ORDER


@pytest.mark.parametrize(
    "options",
    [
        {"threads": 2},
        {"processes": 2, "multiprocessing_context": "fork"},
        {"processes": 2, "multiprocessing_context": "spawn"},
    ],
    ids=["threads", "fork", "spawn"],
)
def test_in_process_loader_batches(subset: CADDataset, options: dict[str, Any]) -> None:
    with subset.batches(batch_size=3, shuffle=False, prefetch=2, **options) as batches:
        for _ in range(2):  # the second epoch through reused buffers
            _assert_epoch(batches, subset)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_workers(subset: CADDataset, method: str) -> None:
    dataset, collate = subset.to_torch_with_collate()
    batches = torch.utils.data.DataLoader(
        dataset, batch_size=3, num_workers=2, collate_fn=collate, multiprocessing_context=method
    )
    _assert_epoch(batches, subset)


def _assert_pyg_epoch(batches: Any, subset: CADDataset) -> None:
    from torch_geometric.data import Batch

    reference = _reference(subset)
    codes = []
    for batch in batches:
        assert isinstance(batch, Batch)
        for data, code in zip(batch.to_data_list(), batch.file_id_code.tolist(), strict=True):
            item = reference[code]
            n = FACES[code]
            assert data.num_nodes == n and data.x.shape[0] == n, code
            _same(data.x[:, 0], item["faces"]["face_areas"], f"x of item {code}")
            graph = item["graph"]
            edges = np.stack([graph["edges_source"], graph["edges_destination"]])
            _same(data.edge_index, edges.astype(np.int64), f"edge_index of item {code}")
            assert data.edge_attr.shape[0] == edges.shape[1], code
            assert data.y.tolist() == [item["labels"]["file_label"]], code
            for name in FACE_PAIRS:
                _same(data[name], item["faceface"][name], f"{name} of item {code}")
            codes.append(code)
        # PyG rebuilds the same batch from its graphs, empty ones included.
        again = Batch.from_data_list(batch.to_data_list())
        for key in ("x", "edge_index", "batch", "ptr", "d2_distance"):
            assert torch.equal(again[key], batch[key]), key
    assert codes == ORDER


def _pyg_collate() -> Any:
    pytest.importorskip("torch_geometric")
    from cadstore.dataset.pyg import PygCollate

    return PygCollate(
        ["face_areas", "face_centroids"],
        ["edge_lengths"],
        graph_label="file_label",
        pair_arrays=FACE_PAIRS,
    )


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pyg_batches_in_a_dataloader(subset: CADDataset, method: str) -> None:
    dataset, collate = subset.to_pyg(_pyg_collate())
    batches = torch.utils.data.DataLoader(
        dataset, batch_size=3, num_workers=2, collate_fn=collate, multiprocessing_context=method
    )
    _assert_pyg_epoch(batches, subset)


@pytest.mark.parametrize("processes", [0, 2], ids=["threads", "processes"])
def test_pyg_batches_in_the_in_process_loader(subset: CADDataset, processes: int) -> None:
    collate = _pyg_collate()
    with subset.batches(
        batch_size=3, shuffle=False, collate_fn=collate, processes=processes
    ) as batches:
        for _ in range(2):
            _assert_pyg_epoch(batches, subset)


@pytest.mark.parametrize("labels", ["default", "node_label"])
def test_graph_files_hold_the_graphs_of_to_pyg(
    items: tuple[Path, list[dict[str, Any]]], tmp_path: Path, labels: str
) -> None:
    """``write_graph_files`` writes, for each item (of several faces, of one, of none), the
    ``Data`` that ``to_pyg()`` makes of it, attribute by attribute: it left out the node
    labels and the face-pair arrays. Each file holds its item's tensors only, whatever the
    batch: they were views of the batch's tensors, and torch saved the whole batch."""
    pytest.importorskip("torch_geometric")
    from cadstore.dataset.pyg import PygCollate
    from cadstore.storage.graphstorage import PyGGraphStoreHandler, write_graph_files

    given = None if labels == "default" else PygCollate(node_label="face_types")
    with DatasetLoader(flow_output_file=items[0]) as loader:
        subset = CADDataset(loader, range(len(FACES)))
        dataset, collate = subset.to_pyg(given)
        graphs = collate([dataset[i] for i in range(len(dataset))]).to_data_list()
        paths = write_graph_files(subset, tmp_path / "batched", given, batch_size=4)
        alone = write_graph_files(subset, tmp_path / "alone", given, batch_size=1)
    assert {0, 1, 7} <= set(FACES)
    for code, (want, path) in enumerate(zip(graphs, paths, strict=True)):
        handler = PyGGraphStoreHandler()
        got = handler.load_graph(path)
        # num_nodes is also stored explicitly, as the specified system's files hold it.
        assert set(got.keys()) == set(want.keys()) | {"num_nodes"}, code
        assert got.num_nodes == want.num_nodes == FACES[code], code
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert got[key].dtype == value.dtype, (code, key)
                assert torch.equal(got[key], value), (code, key)
                # Saved alone, not as a view of the batch's tensor.
                stored = got[key].untyped_storage().nbytes()
                assert stored == value.numel() * value.element_size(), (code, key)
            else:
                assert got[key] == value, (code, key)
        assert {"node_y", *FACE_PAIRS} & set(got.keys()) == (
            set(FACE_PAIRS) | ({"node_y"} if given is not None else set())
        )
        assert torch.equal(handler.extra["graph_label"], want.y), code
        assert os.path.getsize(path) == os.path.getsize(alone[code]), code
