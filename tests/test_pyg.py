"""PyTorch Geometric batches from a merged dataset (``cadstore.dataset.pyg``): the same
graphs as built item by item, a ``Batch`` that PyG itself can split and rebuild, real
``DataLoader`` workers, and a small GNN trained on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cadstore
from cadstore.dataset import CADDataset, DatasetLoader

torch = pytest.importorskip("torch")
pyg = pytest.importorskip("torch_geometric")
from torch_geometric.data import Batch, Data  # noqa: E402

from cadstore.dataset.pyg import PygCollate  # noqa: E402

NODE = ["face_types", "face_areas", "face_centroids"]
EDGE = ["edge_lengths", "edge_convexities"]


@pytest.fixture(scope="module")
def flow(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pyg")
    cadstore.merge([str(p) for p, _, _ in realistic_items[:24]], str(folder / "parts.dataset"))
    return folder / "parts.flow"


@pytest.fixture
def loader(flow: Path) -> Iterator[DatasetLoader]:
    with DatasetLoader(flow_output_file=flow) as ld:
        ld.split("random", train=0.75, validation=0.125, test=0.125, random_state=0)
        yield ld


def _by_hand(loader: DatasetLoader, code: int) -> Data:
    """The item's graph as a user would build it, one item at a time."""
    item = loader.item_source.read(code)
    faces, edges, graph = item["faces"], item["edges"], item["graph"]
    n = len(faces["face_types"])
    x = np.concatenate([np.asarray(faces[a]).reshape(n, -1) for a in NODE], axis=1)
    e = len(graph["edges_source"])
    edge_attr = np.concatenate([np.asarray(edges[a]).reshape(e, -1) for a in EDGE], axis=1)
    return Data(
        x=torch.from_numpy(x.astype(np.float32)),
        edge_index=torch.from_numpy(
            np.stack([graph["edges_source"], graph["edges_destination"]]).astype(np.int64)
        ),
        edge_attr=torch.from_numpy(edge_attr.astype(np.float32)),
        y=torch.tensor([item["labels"]["file_label"]]),
        d2_distance=torch.from_numpy(np.asarray(item["faceface"]["d2_distance"])),
    )


@pytest.mark.parametrize("processes", [0, 2], ids=["threads", "processes"])
def test_batches_hold_the_graphs_built_item_by_item(loader: DatasetLoader, processes: int) -> None:
    collate = PygCollate(NODE, EDGE, graph_label="file_label", pair_arrays=["d2_distance"])
    train = loader.get_dataset("train")
    seen = []
    batches = train.batches(batch_size=5, shuffle=False, collate_fn=collate, processes=processes)
    for batch in batches:
        assert isinstance(batch, Batch)
        codes = batch.file_id_code.tolist()
        assert batch.num_graphs == len(codes)
        assert batch.x.dtype == torch.float32 and batch.x.shape[1] == 1 + 1 + 3
        assert batch.edge_attr.shape == (batch.edge_index.shape[1], 2)
        for data, code in zip(batch.to_data_list(), codes, strict=True):
            want = _by_hand(loader, code)
            for key in ("x", "edge_index", "edge_attr", "y", "d2_distance"):
                assert torch.equal(data[key], want[key]), (code, key)
        # PyG rebuilds the same batch from its items.
        again = Batch.from_data_list(batch.to_data_list())
        for key in ("x", "edge_index", "edge_attr", "y", "batch", "ptr", "d2_distance"):
            assert torch.equal(again[key], batch[key]), key
        seen.extend(codes)
    batches.close()
    assert seen == train.indices.tolist()


def test_defaults_take_every_numeric_array(loader: DatasetLoader) -> None:
    dataset, collate = loader.get_dataset("test").to_pyg()
    batch = collate([dataset[0], dataset[1]])
    first = loader.item_source.read(int(dataset.indices[0]))
    widths = [
        int(np.prod(np.shape(v)[1:]))
        for k, v in first["faces"].items()
        if not k.endswith("_indices") and np.asarray(v).dtype.kind in "biuf"
    ]
    assert batch.x.shape[1] == sum(widths)
    assert batch.y.tolist() == [
        loader.item_source.read(int(c))["labels"]["file_label"] for c in dataset.indices[:2]
    ]
    assert {"d2_distance", "a3_distance", "extended_adjacency"} <= set(batch.keys())


def test_one_array_may_be_given_as_a_string(loader: DatasetLoader) -> None:
    # node_arrays="face_areas" was taken character by character (['f', 'a', 'c', ...]).
    collate = PygCollate(node_arrays="face_areas", edge_arrays="edge_lengths", pair_arrays=())
    assert collate.node_arrays == ["face_areas"] and collate.edge_arrays == ["edge_lengths"]
    dataset, _ = loader.get_dataset("test").to_pyg()
    batch = collate([dataset[0], dataset[1]])
    assert batch.x.shape[1] == 1 and batch.edge_attr.shape[1] == 1


def test_node_labels_and_a_missing_label_are_named(loader: DatasetLoader) -> None:
    train = loader.get_dataset("train")
    batch = next(iter(train.batches(4, collate_fn=PygCollate(NODE, (), node_label="face_types"))))
    assert torch.equal(batch.node_y, batch.x[:, 0].to(batch.node_y.dtype))
    assert "edge_attr" not in batch
    with pytest.raises(KeyError, match="'nope' is not a label"):
        next(iter(train.batches(4, collate_fn=PygCollate(graph_label="nope"))))
    with pytest.raises(KeyError, match="'nope' is not an array"):
        next(iter(train.batches(4, collate_fn=PygCollate(["nope"]))))


def test_a_batch_without_edges(loader: DatasetLoader) -> None:
    """Items with faces but no edges (a single closed face, say) make a batch whose
    ``edge_index`` and ``edge_attr`` have no rows (it raised a reshape error)."""
    items = []
    for code in (0, 1):
        item = loader.item_source.read(code)
        item["edges"] = {name: values[:0] for name, values in item["edges"].items()}
        for name in ("edges_source", "edges_destination"):
            item["graph"][name] = item["graph"][name][:0]
        items.append(item)
    batch = PygCollate(NODE, EDGE)(items)
    faces = sum(len(item["faces"]["face_types"]) for item in items)
    assert batch.x.shape == (faces, 5)
    assert batch.edge_index.shape == (2, 0)
    assert batch.edge_attr.shape == (0, 2)
    assert [g.num_nodes for g in batch.to_data_list()] == [
        len(item["faces"]["face_types"]) for item in items
    ]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_workers_make_pyg_batches(loader: DatasetLoader, method: str) -> None:
    dataset, collate = loader.get_dataset("train").to_pyg(PygCollate(NODE, EDGE))
    batches = torch.utils.data.DataLoader(
        dataset, batch_size=6, num_workers=2, collate_fn=collate, multiprocessing_context=method
    )
    codes = []
    for batch in batches:
        assert isinstance(batch, Batch)
        assert int(batch.ptr[-1]) == batch.x.shape[0] == batch.batch.shape[0]
        codes.extend(batch.file_id_code.tolist())
    assert codes == dataset.indices.tolist()


def test_a_small_gnn_trains_for_an_epoch(flow: Path) -> None:
    from torch_geometric.nn import GCNConv, global_mean_pool

    torch.manual_seed(0)
    with DatasetLoader(flow_output_file=flow, groups=["faces", "edges", "graph"]) as ld:
        ld.split("random", random_state=0)
        train = ld.get_dataset("train")
        collate = PygCollate(NODE, EDGE, graph_label="file_label", pair_arrays=())
        classes = (
            int(max(ld.item_source.read(int(c))["labels"]["file_label"] for c in train.indices)) + 1
        )

        class Net(torch.nn.Module):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.conv = GCNConv(len(NODE) + 2, 16)
                self.out = torch.nn.Linear(16, classes)

            def forward(self, batch: Any) -> Any:
                h = self.conv(batch.x, batch.edge_index).relu()
                return self.out(global_mean_pool(h, batch.batch))

        model = Net()
        before = [p.detach().clone() for p in model.parameters()]
        optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
        losses = []
        for batch in train.batches(batch_size=6, collate_fn=collate):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(batch), batch.y)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
    assert len(losses) == -(-len(train) // 6) and all(np.isfinite(losses))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_to_pyg_needs_the_datasets_own_items(flow: Path) -> None:
    with DatasetLoader(flow_output_file=flow, item_loader_func=_faces) as ld:
        ld.split("random", random_state=0)
        with pytest.raises(ValueError, match="to_torch"):
            ld.get_dataset("train").to_pyg()


def _faces(item: dict[str, Any]) -> int:
    return len(item["faces"]["face_types"])


def test_graph_files_for_code_that_reads_pt_files(loader: DatasetLoader, tmp_path: Path) -> None:
    """The specified system's per-item ``.pt`` files, written from the dataset and read
    back as its users read them (direct-graph mode of DatasetLoader)."""
    from cadstore.storage import PyGGraphStoreHandler
    from cadstore.storage.graphstorage import write_graph_files

    collate = PygCollate(NODE, EDGE, graph_label="file_label", pair_arrays=())
    train = loader.get_dataset("train")
    paths = write_graph_files(train, tmp_path / "graph_data", collate, batch_size=4)
    assert len(paths) == len(train)
    for path, code in zip(paths, train.indices.tolist(), strict=True):
        handler = PyGGraphStoreHandler()
        data = handler.load_graph(path)
        want = _by_hand(loader, code)
        assert torch.equal(data.x, want.x) and torch.equal(data.edge_index, want.edge_index)
        assert torch.equal(data.edge_attr, want.edge_attr)
        assert torch.equal(handler.extra["graph_label"], want.y)
        assert Path(path).name == f"{loader.item_source.read(code)['name']}.pt"
    with DatasetLoader(graph_files=paths, item_loader_func=_load_pt) as files:
        files.split("random", train=0.5, validation=0.25, test=0.25, random_state=0)
        assert sum(len(files.get_dataset(s)) for s in ("train", "validation", "test")) == len(paths)


def _load_pt(graph_file: str, label: Any, data_id: int) -> Any:
    from cadstore.storage import PyGGraphStoreHandler

    return PyGGraphStoreHandler().load_graph(graph_file)


def test_a_pt_file_that_runs_code_is_refused(tmp_path: Path) -> None:
    import pickle

    from cadstore.errors import CorruptStoreError
    from cadstore.storage import PyGGraphStoreHandler

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    hostile = tmp_path / "evil.pt"
    torch.save({"data": Payload()}, hostile, pickle_module=pickle)
    with pytest.raises(CorruptStoreError, match=r"evil\.pt"):
        PyGGraphStoreHandler().load_graph(str(hostile))
    assert not marker.exists()


def test_the_graph_handler_checks_what_it_is_given() -> None:
    from cadstore.storage import PyGGraphStoreHandler

    handler = PyGGraphStoreHandler()
    with pytest.raises(ValueError, match="setup_graph"):
        handler.append_ndata(np.zeros((3, 1)), "x")
    handler.setup_graph([0, 1], [1, 2], 3)
    with pytest.raises(ValueError, match="2 rows for 3 nodes"):
        handler.append_ndata(np.zeros((2, 1)), "x")
    with pytest.raises(TypeError, match="numpy array"):
        handler.append_edata([1.0, 2.0], "x")
    handler.append_edata(np.ones((2, 4)), "x")
    assert handler.data.edge_attr.shape == (2, 4) and handler.format() == "pyg"


def _graph_file(path: Path) -> Any:
    """A small graph file as the handler writes it; returns the handler that wrote it."""
    from cadstore.storage import PyGGraphStoreHandler

    handler = PyGGraphStoreHandler()
    handler.setup_graph([0, 1, 2, 3], [1, 2, 3, 0], 4)
    handler.append_ndata(np.arange(12, dtype=np.float32).reshape(4, 3), "x")
    handler.append_edata(np.linspace(0, 1, 8, dtype=np.float32).reshape(4, 2), "x")
    handler.append_extra_data(np.array([3]), "graph_label", torch.long)
    handler.save_graph(str(path))
    return handler


def _same_graph(a: Any, extra_a: dict[str, Any], b: Any, extra_b: dict[str, Any]) -> bool:
    da, db = a.to_dict(), b.to_dict()
    return (
        da.keys() == db.keys()
        and all(torch.equal(da[k], db[k]) if torch.is_tensor(da[k]) else da[k] == db[k] for k in da)
        and extra_a.keys() == extra_b.keys()
        and all(torch.equal(extra_a[k], extra_b[k]) for k in extra_a)
    )


def test_a_damaged_pt_file_is_refused_never_read_wrong(tmp_path: Path) -> None:
    """Every byte of a graph file flipped in turn: the load either gives the graph written
    or raises a CorruptStoreError naming the file. torch's reader does not check the zip
    members' CRCs, so a flip in a tensor's bytes loaded other values without a word; and
    some flips in the pickle escaped as a bare KeyError."""
    from cadstore.errors import CorruptStoreError
    from cadstore.storage import PyGGraphStoreHandler

    written = _graph_file(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    damaged = tmp_path / "damaged.pt"
    refused, unnamed = 0, []
    for position in range(len(data)):
        spoiled = bytearray(data)
        spoiled[position] ^= 0x5A
        damaged.write_bytes(bytes(spoiled))
        handler = PyGGraphStoreHandler()
        try:
            got = handler.load_graph(str(damaged))
        except CorruptStoreError as exc:
            unnamed += [] if "damaged.pt" in str(exc) else [str(exc)]
            refused += 1
            continue
        assert _same_graph(got, handler.extra, written.data, written.extra), position
    assert not unnamed, unnamed
    assert refused > len(data) // 2
    for cut in range(0, len(data), 7):
        damaged.write_bytes(data[:cut])
        with pytest.raises(CorruptStoreError, match=r"damaged\.pt"):
            PyGGraphStoreHandler().load_graph(str(damaged))


def test_a_pt_file_with_a_compressed_member_is_refused_unread(tmp_path: Path) -> None:
    """torch writes its members stored; a deflated member's declared size is the file's
    word, not a bound: a few kilobytes can inflate to gigabytes. Such a file is refused
    before any member is inflated, naming the file and the member."""
    import zipfile

    from cadstore.errors import CorruptStoreError
    from cadstore.storage import PyGGraphStoreHandler

    _graph_file(tmp_path / "good.pt")
    bomb = tmp_path / "bomb.pt"
    with (
        zipfile.ZipFile(tmp_path / "good.pt") as source,
        zipfile.ZipFile(bomb, "w") as out,
    ):
        for info in source.infolist():
            out.writestr(info.filename, source.read(info), zipfile.ZIP_STORED)
        # 1 GiB of zeros deflates to about a megabyte; the archive declares the member.
        member = zipfile.ZipInfo("good/padding")
        member.compress_type = zipfile.ZIP_DEFLATED
        with out.open(member, "w", force_zip64=True) as fh:
            block = bytes(1 << 20)
            for _ in range(1024):
                fh.write(block)
    assert bomb.stat().st_size < 8 << 20
    opened = []
    original = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(getattr(name, "filename", name))
        return original(self, name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zipfile.ZipFile, "open", spy)
        with pytest.raises(CorruptStoreError, match=r"bomb\.pt.*good/padding.*compressed"):
            PyGGraphStoreHandler().load_graph(str(bomb))
    assert "good/padding" not in opened


@pytest.mark.parametrize(
    "extra",
    [[1, 2], "ab", torch.ones(3), {1: torch.ones(1)}],
    ids=["list", "str", "tensor", "int-key"],
)
def test_a_pt_file_whose_extras_are_not_named_tensors_is_refused(
    tmp_path: Path, extra: Any
) -> None:
    from cadstore.errors import CorruptStoreError
    from cadstore.storage import PyGGraphStoreHandler

    written = _graph_file(tmp_path / "good.pt")
    odd = tmp_path / "odd.pt"
    torch.save({"data": written.data, "extra": extra}, odd)
    with pytest.raises(CorruptStoreError, match=r"odd\.pt.*extra"):
        PyGGraphStoreHandler().load_graph(str(odd))


def test_a_missing_graph_file_or_a_folder_is_a_cadstore_error_naming_it(tmp_path: Path) -> None:
    from cadstore.errors import CorruptStoreError, StorageNotFoundError
    from cadstore.storage import PyGGraphStoreHandler

    with pytest.raises(StorageNotFoundError, match=r"missing\.pt"):
        PyGGraphStoreHandler().load_graph(str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError):  # still what a caller catching OSErrors expects
        PyGGraphStoreHandler().load_graph(str(tmp_path / "missing.pt"))
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(CorruptStoreError, match=r"folder\.pt"):
        PyGGraphStoreHandler().load_graph(str(tmp_path / "folder.pt"))


def test_saving_a_graph_over_a_folder_is_a_cadstore_error_naming_it(tmp_path: Path) -> None:
    """It was a bare IsADirectoryError naming the temporary file the graph was written to
    first; the folder is left as it was and no temporary file is left beside it."""
    from cadstore.errors import OutputExistsError
    from cadstore.io.publish import TEMP_PREFIX
    from cadstore.storage import PyGGraphStoreHandler

    folder = tmp_path / "graph.pt"
    folder.mkdir()
    (folder / "mine.txt").write_text("kept")
    handler = PyGGraphStoreHandler()
    handler.setup_graph([0, 1], [1, 0], 2)
    with pytest.raises(OutputExistsError, match=r"graph\.pt: is a directory") as raised:
        handler.save_graph(str(folder))
    assert str(folder) in str(raised.value) and TEMP_PREFIX not in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.pt"]
    assert [p.name for p in folder.iterdir()] == ["mine.txt"]
    assert (folder / "mine.txt").read_text() == "kept"


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda h: h.setup_graph([0, 5], [1, 2], 3), r"source_nodes.*5.*3 nodes"),
        (lambda h: h.setup_graph([0, 1], [1, -1], 3), r"target_nodes.*-1.*3 nodes"),
        (lambda h: h.setup_graph([0.5], [1.2], 3), r"source_nodes.*integer"),
        (lambda h: h.setup_graph(["a"], ["b"], 3), r"source_nodes.*integer"),
        (lambda h: h.setup_graph([], [], -2), r"num_nodes.*-2"),
        (lambda h: h.setup_graph([0], [1], 2.5), r"num_nodes.*2\.5"),
        (lambda h: h.append_ndata(np.array(1.0), "area"), r"'area'.*one row per node"),
        (lambda h: h.append_ndata(np.float32(1.0), "mass"), r"'mass'.*numpy array"),
        (lambda h: h.append_ndata(np.array(["a", "b", "c"]), "kind"), r"'kind'.*numbers"),
        (lambda h: h.append_edata(np.ones((3, 1)), "length"), r"'length'.*3 rows for 2 edges"),
    ],
)
def test_the_graph_handler_refuses_bad_graphs_with_cadstore_errors_naming_them(
    call: Any, problem: str
) -> None:
    """Edges to nodes the graph lacks were kept (a PyG model fails on them later, far
    from the file that holds them), and some bad inputs raised torch's or numpy's errors."""
    from cadstore.errors import CadstoreError
    from cadstore.storage import PyGGraphStoreHandler

    handler = PyGGraphStoreHandler()
    handler.setup_graph([0, 1], [1, 2], 3)
    with pytest.raises(CadstoreError, match=problem):
        call(handler)
    empty = PyGGraphStoreHandler()
    empty.setup_graph([], [], 0)  # a graph of no nodes and no edges is fine
    empty.append_ndata(np.zeros((0, 4)), "x")
    assert empty.data.x.shape == (0, 4) and empty.data.edge_index.shape == (2, 0)


@pytest.mark.parametrize("name", ["../escaped", "absolute", "", "..", "dup"])
def test_graph_files_are_written_only_under_plain_item_names(
    flow: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Item names come from the dataset: one that is not a plain file name (a hostile or
    damaged dataset) made write_graph_files write outside its folder, and two items of one
    name wrote one file twice. Reading already took ``graph_data/<name>.pt`` only for plain
    names; writing now refuses the others, naming the item, before writing anything."""
    from cadstore.dataset.reader import DatasetReader
    from cadstore.errors import DatasetError
    from cadstore.storage.graphstorage import write_graph_files

    init = DatasetReader.__init__

    def renamed(self: DatasetReader, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if self.item_names:
            given = {"dup": self.item_names[5], "absolute": str(tmp_path / "outside")}
            self.item_names[3] = given.get(name, name)

    monkeypatch.setattr(DatasetReader, "__init__", renamed)
    folder = tmp_path / "deep" / "graph_data"
    with DatasetLoader(flow_output_file=flow) as ld:
        subset = CADDataset(ld, range(8))
        with pytest.raises(DatasetError, match=r"parts\.dataset: items? 3\b"):
            write_graph_files(subset, folder, PygCollate(NODE, EDGE, pair_arrays=()))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
