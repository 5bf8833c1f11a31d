"""Issue 17, dataset side: the specified system's users' code runs unchanged.

Each test is written the way the specified system's notebooks and documentation call the
explorer, the loader and ``CADDataset`` (names, keywords, plotting and training loops),
on a real merged dataset; each failed before the behaviour was aligned.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest

import cadstore
from cadstore.dataset import DatasetExplorer, DatasetLoader
from cadstore.errors import DatasetError
from conftest import write_items

matplotlib.use("Agg")
import matplotlib.pyplot as plt

N_ITEMS = 40


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """Forty realistic items merged once: (the .flow, [(path, item, meta)])."""
    root = tmp_path_factory.mktemp("spec_gaps")
    items = write_items(root / "encoded", N_ITEMS, seed=17)
    cadstore.merge([str(p) for p, _, _ in items], str(root / "parts.dataset"))
    return root / "parts.flow", items


@pytest.fixture
def flow(built: tuple[Path, list[Any]], tmp_path: Path) -> Path:
    """A private copy of the dataset (splits rewrite its infoset)."""
    for suffix in (".flow", ".dataset", ".infoset", ".attribset"):
        shutil.copy(built[0].with_suffix(suffix), tmp_path / f"parts{suffix}")
    return tmp_path / "parts.flow"


@pytest.fixture
def items(built: tuple[Path, list[Any]]) -> list[dict[str, Any]]:
    return [item for _, item, _ in built[1]]


@pytest.fixture
def metas(built: tuple[Path, list[Any]]) -> list[dict[str, Any]]:
    return [meta for _, _, meta in built[1]]


@pytest.fixture
def explorer(built: tuple[Path, list[Any]]) -> Any:
    with DatasetExplorer(flow_output_file=str(built[0])) as ex:
        yield ex


def print_distribution_info(dist: dict[str, Any]) -> Any:
    """The helper of the specified system's tutorials (helper_tutorials.py), verbatim in
    what it computes: a bar per bin at the bin centre, one bin width wide."""
    list_filecount = []
    for bin_files in dist["file_id_codes_in_bins"]:
        list_filecount.append(bin_files.size)
    dist["file_count"] = list_filecount
    fig, ax = plt.subplots(figsize=(12, 4))
    bin_centers = 0.5 * (dist["bin_edges"][1:] + dist["bin_edges"][:-1])
    bars = ax.bar(
        bin_centers,
        dist["file_count"],
        width=(dist["bin_edges"][1] - dist["bin_edges"][0]),
        alpha=0.7,
    )
    for i, count in enumerate(dist["file_count"]):
        if count > 0:
            ax.text(bin_centers[i], count + 0.5, f"{count}", ha="center", va="bottom")
    plt.tight_layout()
    plt.close(fig)
    return bars


# ---------------------------------------------------------------------------- 1. distributions
def test_categorical_distribution_plots_as_the_tutorials_do(
    explorer: DatasetExplorer, items: list[dict[str, Any]]
) -> None:
    dist = explorer.create_distribution(key="face_types", bins=None, group="faces")
    edges, hist = dist["bin_edges"], dist["hist"]
    # k bins, k + 1 edges, one count list per bin: what matplotlib is given.
    assert len(edges) == len(hist) + 1 == len(dist["file_id_codes_in_bins"]) + 1
    bars = print_distribution_info(dist)
    fig, ax = plt.subplots()
    ax.bar(edges[:-1], hist, width=np.diff(edges), align="edge")
    plt.close(fig)
    # Integer categories: unit bins centred on the codes (edges 0.5, 1.5, ... for 1..5),
    # so each bar stands on its code, and codes that no face has get an empty bin.
    all_types = np.concatenate([i["face_types"] for i in items])
    first, last = int(all_types.min()), int(all_types.max())
    np.testing.assert_array_equal(edges, np.arange(first, last + 2) - 0.5)
    np.testing.assert_array_equal(dist["categories"], np.arange(first, last + 1))
    for code, bar, count, codes in zip(
        dist["categories"], bars, hist, dist["file_id_codes_in_bins"], strict=True
    ):
        assert bar.get_x() + bar.get_width() / 2 == pytest.approx(code)
        assert count == np.count_nonzero(all_types == code)
        assert codes.tolist() == [c for c, i in enumerate(items) if code in i["face_types"]]


def test_numeric_and_string_distributions_plot(
    explorer: DatasetExplorer, metas: list[dict[str, Any]]
) -> None:
    dist = explorer.create_distribution(key="face_areas", group="faces", bins=30)
    assert len(dist["bin_edges"]) == 31 and len(dist["hist"]) == 30
    bin_centers = 0.5 * (dist["bin_edges"][1:] + dist["bin_edges"][:-1])
    fig, ax = plt.subplots()
    ax.bar(bin_centers, dist["hist"], width=(dist["bin_edges"][1] - dist["bin_edges"][0]))
    plt.close(fig)
    assert "categories" not in dist
    # Strings (an infoset column) get one unit bin per category, named by "categories".
    dist = explorer.create_distribution("category", bins=None)
    names = sorted({m["category"] for m in metas})
    assert dist["categories"].tolist() == names
    np.testing.assert_array_equal(dist["bin_edges"], np.arange(len(names) + 1) - 0.5)
    bars = print_distribution_info(dist)
    assert [b.get_height() for b in bars] == [sum(m["category"] == n for m in metas) for n in names]


# ---------------------------------------------------------------------------- 2. .data.compute()
def test_file_dataset_data_compute(explorer: DatasetExplorer, items: list[dict[str, Any]]) -> None:
    file_id = 5
    groups = explorer.available_groups()
    file_dataset_group = {
        grp: explorer.file_dataset(file_id_code=file_id, group=grp) for grp in groups
    }
    file_dataset = file_dataset_group["faces"]
    array_areas = file_dataset["face_areas"].data.compute()
    assert type(array_areas) is np.ndarray
    np.testing.assert_array_equal(array_areas, items[file_id]["face_areas"])
    discretization_data = file_dataset["face_discretization"].data.compute()
    assert discretization_data.shape == items[file_id]["face_discretization"].shape
    one_face = file_dataset["face_discretization"].isel(face=2).data.compute()
    np.testing.assert_array_equal(one_face, items[file_id]["face_discretization"][2])
    for ds in file_dataset_group.values():
        for da in ds.data_vars.values():
            assert isinstance(da.data.compute(), np.ndarray)


def test_compute_needs_no_dask(built: tuple[Path, list[Any]]) -> None:
    # In a fresh interpreter: .data.compute() works and neither dask nor a cluster is loaded.
    code = (
        "import sys\n"
        "from cadstore.dataset import DatasetExplorer\n"
        f"ex = DatasetExplorer(flow_output_file={str(built[0])!r})\n"
        "x = ex.file_dataset(3, 'faces')['face_areas'].data.compute()\n"
        "assert type(x).__name__ == 'ndarray', type(x)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]\n"
        "print('ok', len(x))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")


# ---------------------------------------------------------------------------- 3. to_torch()
def test_to_torch_in_a_dataloader_as_documented(flow: Path, metas: list[dict[str, Any]]) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    stem = flow.with_suffix("")
    loader = DatasetLoader(merged_store_path=f"{stem}.dataset", parquet_file_path=f"{stem}.infoset")
    loader.split(key="file_label", train=0.6, validation=0.2, test=0.2, random_state=42)
    train_dataset = loader.get_dataset("train")
    train_torch = train_dataset.to_torch()
    seen: list[int] = []
    for num_workers in (0, 2):
        train_loader = DataLoader(train_torch, batch_size=8, shuffle=True, num_workers=num_workers)
        for batch in train_loader:
            graphs = batch["graph"]
            labels = batch["label"]
            file_ids = batch["id"]
            assert isinstance(labels, torch.Tensor) and isinstance(file_ids, torch.Tensor)
            assert labels.tolist() == [metas[int(i)]["file_label"] for i in file_ids]
            # The graphs of the batch as one disjoint graph, nodes are faces.
            n_nodes = int(graphs["num_nodes"].sum())
            assert graphs["faces"]["face_areas"].shape[0] == n_nodes
            assert graphs["edge_index"].shape[0] == 2
            assert int(graphs["edge_index"].max()) < n_nodes
            assert graphs["batch"].shape == (n_nodes,)
            seen.extend(int(i) for i in file_ids)
    assert sorted(seen) == sorted(train_dataset.indices.tolist() * 2)
    # The richer form (dataset, collate) is kept under its own name.
    dataset, collate = train_dataset.to_torch_with_collate()
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate)))
    assert "edge_index" in batch and "labels" in batch
    loader.close_resources()


# ---------------------------------------------------------------------------- 4. loader calls
def test_array_keywords_of_the_documentation(
    explorer: DatasetExplorer, items: list[dict[str, Any]]
) -> None:
    face_areas = explorer.get_array_data(group_name="faces", array_name="face_areas")
    face_areas_np = face_areas.values
    all_areas = np.concatenate([i["face_areas"] for i in items])
    np.testing.assert_array_equal(face_areas_np, all_areas)
    np.testing.assert_array_equal(explorer.get_array_data("faces", "face_areas").values, all_areas)
    stats = explorer.get_array_statistics(group_name="faces", array_name="face_areas")
    assert stats == explorer.get_array_statistics("faces", "face_areas")
    assert stats["max"] == pytest.approx(float(all_areas.max()))
    with pytest.raises(DatasetError, match="group"):
        explorer.get_array_data(array_name="face_areas")
    with pytest.raises(DatasetError, match="array_name"):
        explorer.get_array_data("faces", "face_areas", array_name="face_types")


def test_create_distribution_incore_is_the_distribution_by_the_later_documentation(
    explorer: DatasetExplorer,
) -> None:
    """The specified system's later documentation names an in-memory variant with the group
    before the bins; cadstore's distribution is computed in memory already."""
    want = explorer.create_distribution("face_areas", bins=5, group="faces")
    got = explorer.create_distribution_incore("face_areas", "faces", 5)
    assert got.keys() == want.keys()
    np.testing.assert_array_equal(got["bin_edges"], want["bin_edges"])
    np.testing.assert_array_equal(got["hist"], want["hist"])
    for a, b in zip(got["file_id_codes_in_bins"], want["file_id_codes_in_bins"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(got["hist"].sum()) > 0
    categorical = explorer.create_distribution_incore("face_types", group="faces", bins=None)
    assert "categories" in categorical
    with pytest.raises(DatasetError, match="no_such_key"):
        explorer.create_distribution_incore("no_such_key", "faces", 5)


def custom_loader(graph_file: Any, label_file: Any, data_id: int) -> dict[str, Any]:
    """The documentation's custom item loader, returning what it was given."""
    return {"graph": graph_file, "label": label_file, "id": data_id}


def test_item_loader_func_gets_graph_label_and_id(
    flow: Path, metas: list[dict[str, Any]], items: list[dict[str, Any]]
) -> None:
    stem = flow.with_suffix("")
    loader = DatasetLoader(
        merged_store_path=f"{stem}.dataset",
        parquet_file_path=f"{stem}.infoset",
        item_loader_func=custom_loader,
    )
    loader.split(key="file_label", train=0.5, validation=0.25, test=0.25, random_state=1)
    train = loader.get_dataset("train")
    item = train.get_item(0)
    code = int(train.indices[0])
    assert item["id"] == code
    assert item["label"] == metas[code]["file_label"]
    # No per-item graph file: the graph is the item read from the dataset.
    np.testing.assert_array_equal(item["graph"]["faces"]["face_areas"], items[code]["face_areas"])
    assert item["graph"]["file_id_code"] == code
    # With the specified layout's graph_data/<name>.pt beside the dataset: its path.
    name = loader.explorer.decode_file_id_code(code) if loader.explorer else ""
    (flow.parent / "graph_data").mkdir()
    graph_file = flow.parent / "graph_data" / f"{name}.pt"
    graph_file.write_bytes(b"graph")
    assert train.get_item(0)["graph"] == str(graph_file)
    # The loader itself is returned, so calls chain.
    assert loader.reset_split_state() is loader
    loader.close_resources()
    with pytest.raises(DatasetError, match="item_loader_func"):
        DatasetLoader(flow_output_file=flow, item_loader_func=lambda a, b: a)


# ---------------------------------------------------------------------------- 5. num_nodes
def test_num_nodes_beside_the_edges(explorer: DatasetExplorer, items: list[dict[str, Any]]) -> None:
    # The vendor's bulk reader: whole group, ranges by np.unique, num_nodes[range_start].
    graph = explorer.get_group_data("graph")
    codes = graph["file_id_code_graph"].values
    num_nodes = graph["num_nodes"].values
    assert num_nodes.shape == graph["edges_source"].values.shape
    assert graph["num_nodes"].dims == graph["edges_source"].dims
    unique, starts = np.unique(codes, return_index=True)
    for code, start in zip(unique, starts, strict=True):
        assert num_nodes[start] == items[int(code)]["graph"]["num_nodes"]
    one = explorer.file_dataset(file_id_code=7, group="graph")
    assert one["num_nodes"].dims == one["edges_source"].dims == ("edge",)
    assert one["num_nodes"].shape == one["edges_source"].shape
    assert set(one["num_nodes"].data.compute().tolist()) == {items[7]["graph"]["num_nodes"]}
    # The tutorials' face-count plot: the files per bin and the edges are the specified
    # ones (computed here from num_nodes repeated per edge, as the specified store has it).
    dist = explorer.create_distribution(key="num_nodes", bins=12, group="graph")
    repeated = np.concatenate(
        [np.full(len(i["graph"]["edges_source"]), i["graph"]["num_nodes"]) for i in items]
    )
    np.testing.assert_allclose(dist["bin_edges"], np.histogram_bin_edges(repeated, bins=12))
    print_distribution_info(dist)
    for b, in_bin in enumerate(dist["file_id_codes_in_bins"]):
        lo, hi = dist["bin_edges"][b], dist["bin_edges"][b + 1]
        want = [
            c
            for c, i in enumerate(items)
            if lo <= i["graph"]["num_nodes"] and (i["graph"]["num_nodes"] < hi or b == 11)
        ]
        assert in_bin.tolist() == want


# ---------------------------------------------------------------------------- 6. contents
def test_table_of_contents_as_printed_by_the_specified_system(explorer: DatasetExplorer) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        explorer.print_table_of_contents()
    text = out.getvalue()
    assert text.startswith("\n--- Dataset Table of Contents ---\n\n")
    body, _, footer = text.partition("==================================\n")
    blocks = body.strip("\n").split("\n\n")[1:]
    groups = [block.splitlines()[0] for block in blocks]
    assert groups == [f"{g.upper()}_GROUP:" for g in sorted(explorer.available_groups())]
    for block in blocks:
        group = block.splitlines()[0][: -len("_GROUP:")].lower()
        arrays = [line.split(":")[0].strip() for line in block.splitlines()[1:]]
        assert arrays == [f"{a.upper()}_DATA" for a in sorted(explorer.available_arrays(group))]
    n_edges = explorer.get_group_data("graph").sizes["edge"]
    assert f"  NUM_NODES_DATA: Shape: ({n_edges},), Dims: ('edge',), Size: {n_edges}" in body
    assert footer.startswith("Columns in file_info:\n")
    frame = explorer.get_file_info_all()
    header = footer.splitlines()[1].split()
    assert header == list(frame.columns)
    rows = footer.splitlines()[2:]
    assert rows[0].split()[:3] == ["0", frame["name"][0], "0"]
    assert len(rows) == 21 and set(rows[10].split()) == {"..", "..."}  # 10 first, 10 last
    assert rows[-1].split()[0] == str(len(frame) - 1)
    # Long strings keep their end, as the specified frame shows them; short ones stay.
    for row, description in zip(rows[:10], frame["description"][:10], strict=True):
        if len(description) > 38:
            assert f" ...{description[-35:]} " in row
        else:
            assert f" {description} " in row
    assert any(len(d) > 38 for d in frame["description"][:10])
    assert isinstance(frame, pd.DataFrame)


def test_to_torch_in_spawned_workers(flow: Path, metas: list[dict[str, Any]]) -> None:
    # Spawned workers unpickle the dataset and collate there: the graph collate must be
    # registered in the worker too.
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    with DatasetLoader(flow_output_file=flow) as loader:
        loader.split(key="file_label", random_state=3)
        train_torch = loader.get_dataset("train").to_torch()
        batches = DataLoader(
            train_torch, batch_size=16, num_workers=2, multiprocessing_context="spawn"
        )
        seen = []
        for batch in batches:
            assert batch["label"].tolist() == [metas[int(i)]["file_label"] for i in batch["id"]]
            assert int(batch["graph"]["num_nodes"].sum()) == len(batch["graph"]["batch"])
            seen.extend(batch["id"].tolist())
        assert seen == loader.get_dataset("train").indices.tolist()
