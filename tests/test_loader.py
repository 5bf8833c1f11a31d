"""DatasetLoader, CADDataset and the PyTorch wrapper on a merged realistic dataset."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import cadstore
from cadstore.dataset import torch_support
from cadstore.dataset.loader import (
    SUBSETS,
    CADDataset,
    DatasetLoader,
    ItemIndexError,
    iterative_stratification,
)
from cadstore.errors import CorruptStoreError, DatasetError, InvalidDataError
from cadstore.merging import merge_items
from cadstore.synthetic import iter_items, write_item
from conftest import write_arrays, write_items

N_ITEMS = 120
#: Every subset keeps each label's overall proportion within this, for labels with at
#: least MIN_SUPPORT items (the stated guarantee of the tests).
TOLERANCE = 0.05
MIN_SUPPORT = 20


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """120 realistic items merged once: (the .flow, [(path, item, meta)])."""
    root = tmp_path_factory.mktemp("loader")
    items = write_items(root / "encoded", N_ITEMS, seed=21)
    cadstore.merge([str(p) for p, _, _ in items], str(root / "parts.dataset"))
    return root / "parts.flow", items


@pytest.fixture
def flow(built: tuple[Path, list[Any]], tmp_path: Path) -> Path:
    """A private copy of the dataset: splits rewrite its infoset."""
    source = built[0]
    for suffix in (".flow", ".dataset", ".infoset", ".attribset"):
        shutil.copy(source.with_suffix(suffix), tmp_path / f"parts{suffix}")
    return tmp_path / "parts.flow"


@pytest.fixture
def items(built: tuple[Path, list[Any]]) -> list[Any]:
    return built[1]


@pytest.fixture
def loader(flow: Path) -> Any:
    with DatasetLoader(flow_output_file=flow) as ld:
        yield ld


def _face_type_membership(items: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    cats = np.unique(np.concatenate([i["face_types"] for _, i, _ in items]))
    matrix = np.array([[c in i["face_types"] for c in cats] for _, i, _ in items])
    return matrix, cats


def _assignment(loader: DatasetLoader) -> np.ndarray:
    out = np.full(N_ITEMS, -1)
    for index, name in enumerate(SUBSETS):
        out[loader.get_dataset(name).indices] = index
    return out


def _check_proportions(matrix: np.ndarray, assignment: np.ndarray) -> None:
    overall = matrix.mean(axis=0)
    supported = matrix.sum(axis=0) >= MIN_SUPPORT
    assert supported.sum() >= 3
    for subset in range(3):
        part = matrix[assignment == subset]
        deviation = np.abs(part.mean(axis=0) - overall)[supported]
        assert deviation.max() <= TOLERANCE, (subset, deviation)


# ---------------------------------------------------------------------------- split
def test_one_group_or_array_may_be_given_as_a_string(flow: Path) -> None:
    # As labels="file_label" always was: groups="faces" was taken character by character
    # ("unknown group 'f'"), and so was each array list of arrays=.
    with DatasetLoader(flow_output_file=flow, groups="faces") as one:
        one.split("random", random_state=0)
        item = one.get_dataset("train")[0]
        assert "faces" in item and not {"edges", "graph", "faceface"} & set(item)
    with DatasetLoader(flow_output_file=flow, arrays={"faces": "face_areas"}) as some:
        some.split("random", random_state=0)
        assert list(some.get_dataset("train")[0]["faces"]) == ["face_areas"]


def test_split_is_stratified_recorded_and_reproducible(
    flow: Path, loader: DatasetLoader, items: list[Any]
) -> None:
    counts = loader.split("face_types", "faces", 0.6, 0.2, 0.2, random_state=7)
    assert sum(counts) == N_ITEMS
    for count, fraction in zip(counts, (0.6, 0.2, 0.2), strict=True):
        assert abs(count - fraction * N_ITEMS) <= 3
    first = _assignment(loader)
    assert (first >= 0).all()
    matrix, _ = _face_type_membership(items)
    _check_proportions(matrix, first)
    # Recorded in the infoset, and a new loader picks the split up from there.
    info = pd.read_parquet(flow.with_suffix(".infoset")).sort_values("id")
    assert info["subset"].tolist() == [SUBSETS[a] for a in first]
    with DatasetLoader(flow_output_file=flow) as again:
        np.testing.assert_array_equal(_assignment(again), first)
        # Same seed, same split, also in a fresh loader; another seed, another split.
        assert again.split("face_types", "faces", 0.6, 0.2, 0.2, random_state=7) == counts
        np.testing.assert_array_equal(_assignment(again), first)
        again.split("face_types", "faces", 0.6, 0.2, 0.2, random_state=8)
        assert not np.array_equal(_assignment(again), first)


def test_split_on_an_infoset_label(loader: DatasetLoader, items: list[Any]) -> None:
    # No group has file_label: the infoset column is used (single label, ten classes).
    counts = loader.split("file_label", train=0.5, validation=0.25, test=0.25, random_state=1)
    assert sum(counts) == N_ITEMS
    labels = np.array([m["file_label"] for _, _, m in items])
    assignment = _assignment(loader)
    # About 12 items per class: each class is split as evenly as whole items allow.
    for subset, fraction in enumerate((0.5, 0.25, 0.25)):
        per_class = np.bincount(labels[assignment == subset], minlength=10)
        assert np.all(np.abs(per_class - fraction * np.bincount(labels, minlength=10)) <= 1)


def test_split_random_and_empty_subset(loader: DatasetLoader) -> None:
    assert loader.split("random", random_state=3) == (72, 24, 24)
    assert loader.split("random", train=0.8, validation=0.2, test=0.0, random_state=3) == (
        96,
        24,
        0,
    )
    assert len(loader.get_dataset("test")) == 0


def test_split_bad_input(loader: DatasetLoader) -> None:
    for fractions in ((0.6, 0.2, 0.1), (0.6, 0.3, 0.2), (1.2, -0.1, -0.1), (0.5, 0.5, np.nan)):
        with pytest.raises(DatasetError, match="split fractions") as info:
            loader.split("face_types", None, *fractions)
        assert isinstance(info.value, ValueError)
    # Within the tolerance is fine.
    loader.split("random", None, 0.6 + 5e-7, 0.2, 0.2, random_state=0)
    with pytest.raises(DatasetError, match=r"unknown key 'face_label'.*face_types"):
        loader.split("face_label")
    with pytest.raises(DatasetError, match="unknown group 'Labels'"):
        loader.split("face_types", "Labels")


def test_split_bad_random_state(flow: Path, loader: DatasetLoader) -> None:
    """A seed numpy refuses raised numpy's own ValueError ("expected non-negative
    integer") or TypeError, naming nothing; the infoset is left as it was."""
    infoset = flow.with_suffix(".infoset")
    before = infoset.read_bytes()
    for seed in (-1, 1.5, "3", True, np.int64(-2)):
        with pytest.raises(DatasetError, match=r"random_state .*non-negative integer") as info:
            loader.split("random", random_state=seed)  # type: ignore[arg-type]
        assert repr(seed) in str(info.value)
    assert infoset.read_bytes() == before
    assert loader.split("random", random_state=np.int64(3)) == (72, 24, 24)


@pytest.mark.parametrize("key", ["processing_time", "size_cadfile"])
def test_split_on_a_measurement_uses_quantile_bins(
    loader: DatasetLoader, items: list[Any], key: str
) -> None:
    # Every item has its own value: as classes they cannot be split (it used to send
    # nearly everything to train, or crash in the swap refinement).
    values = np.array([m[key] for _, _, m in items], dtype=np.float64)
    assert len(np.unique(values)) == N_ITEMS
    counts = loader.split(key, random_state=0)
    for count, wanted in zip(counts, (72, 24, 24), strict=True):
        assert abs(count - wanted) <= 3
    # Each quantile bin is spread like the whole: the lowest values land in every subset.
    assignment = _assignment(loader)
    low = assignment[values <= np.quantile(values, 0.1)]
    assert set(low.tolist()) == {0, 1, 2}
    # bins= chooses the bin count; a bad one is refused.
    assert sum(loader.split(key, random_state=0, bins=3, force_reset=True)) == N_ITEMS
    with pytest.raises(DatasetError, match="bins must be a positive int"):
        loader.split(key, bins=0)


@pytest.mark.parametrize("key", ["name", "description"])
def test_split_on_a_key_naming_items_is_refused(
    flow: Path, loader: DatasetLoader, key: str
) -> None:
    before = pd.read_parquet(flow.with_suffix(".infoset"))
    with pytest.raises(
        DatasetError, match=rf"cannot stratify on '{key}'.*keys that suit: "
    ) as info:
        loader.split(key, random_state=0)
    message = str(info.value)
    assert "file_label" in message and "face_types" in message and "'random'" in message
    assert "face_indices" not in message and "edges_source" not in message
    # Nothing was recorded.
    pd.testing.assert_frame_equal(pd.read_parquet(flow.with_suffix(".infoset")), before)


def test_a_lopsided_split_warns(loader: DatasetLoader, items: list[Any]) -> None:
    # Asking for every name as a class of its own: each class has one item, which the
    # greedy pass gives to the subset wanting the most; the result is far from the
    # fractions and must not pass silently.
    names = [path.name[: -len(".zarr.data")] for path, _, _ in items]
    with pytest.warns(cadstore.errors.CadstoreWarning, match=r"split on 'name' is far") as info:
        counts = loader.split("name", categories=names, random_state=0)
    assert f"train {counts[0]}" in str(info[0].message)
    assert abs(counts[0] - 72) > 10


def test_refinement_keeps_subsets_the_greedy_pass_left_empty() -> None:
    # One label per item: the greedy pass gives every item to the subset wanting the most,
    # and the swap refinement used to index past its count table (IndexError).
    assignment = iterative_stratification(np.eye(12, dtype=np.uint8), [0.6, 0.2, 0.2], 0)
    assert len(assignment) == 12 and set(assignment.tolist()) <= {0, 1, 2}


def test_get_dataset_needs_a_split_and_a_subset_name(loader: DatasetLoader) -> None:
    with pytest.raises(DatasetError, match=r"no split yet"):
        loader.get_dataset("train")
    loader.split("random", random_state=0)
    with pytest.raises(DatasetError, match=r"unknown subset 'val'.*'validation'"):
        loader.get_dataset("val")


def test_reset_split_state(flow: Path, loader: DatasetLoader) -> None:
    loader.split("face_types", random_state=0)
    loader.reset_split_state()
    with pytest.raises(DatasetError, match="no split"):
        loader.get_dataset("train")
    assert set(pd.read_parquet(flow.with_suffix(".infoset"))["subset"]) == {"N/A"}


def test_split_history_and_force_reset(loader: DatasetLoader) -> None:
    loader.split("face_types", random_state=4)
    train = loader.get_dataset("train")
    removed = train.indices[[0, 1]]
    loader.split("face_types", random_state=4)
    # Removed items stay out of later splits until force_reset.
    train.remove_indices([0, 1])
    counts = loader.split("face_types", random_state=4)
    assert not set(removed) & set(loader.get_dataset("train").indices)
    assert sum(counts) == N_ITEMS - 2
    assert sum(loader.split("face_types", random_state=4, force_reset=True)) == N_ITEMS


# ---------------------------------------------------------------------------- items
def test_items_come_from_the_dataset(loader: DatasetLoader, items: list[Any]) -> None:
    loader.split("face_types", random_state=2)
    test = loader.get_dataset("test")
    assert isinstance(test, CADDataset)
    assert len(test) == test.len() >= 20
    for i in (0, 5, -1):
        code = int(test.indices[i])
        got = test.get_item(i)
        _, item, meta = items[code]
        assert got["file_id_code"] == code
        assert got["name"] == items[code][0].name[: -len(".zarr.data")]
        np.testing.assert_array_equal(got["faces"]["face_centroids"], item["face_centroids"])
        np.testing.assert_array_equal(got["edges"]["edge_u_grids"], item["edge_u_grids"])
        np.testing.assert_array_equal(got["graph"]["edges_source"], item["graph"]["edges_source"])
        assert got["graph"]["num_nodes"] == item["graph"]["num_nodes"]
        n = len(item["face_indices"])
        np.testing.assert_array_equal(
            got["faceface"]["face_pair_edges_path"], item["face_pair_edges_path"].reshape(n * n, -1)
        )
        # The default labels are the categorical metadata fields.
        assert got["labels"] == {"file_label": meta["file_label"], "category": meta["category"]}
        raw = test.get_raw_data(i)
        assert raw["file_id_code"] == code and raw["dataset"].endswith("parts.dataset")
        start, stop = raw["rows"]["faces"]
        assert stop - start == n
    assert test[0]["file_id_code"] == test.indices[0]
    with pytest.raises(ItemIndexError, match="out of range") as info:
        test.get_item(len(test))
    assert isinstance(info.value, IndexError) and isinstance(info.value, DatasetError)


def test_remove_indices_updates_the_parent(loader: DatasetLoader) -> None:
    loader.split("face_types", random_state=2)
    val = loader.get_dataset("validation")
    before = val.indices.copy()
    mapping = val.remove_indices([0, 3, -1])
    assert len(val) == len(before) - 3
    assert mapping[1] == 0 and mapping[4] == 2 and 3 not in mapping
    np.testing.assert_array_equal(val.indices, np.delete(before, [0, 3, len(before) - 1]))
    np.testing.assert_array_equal(loader.get_dataset("validation").indices, val.indices)
    with pytest.raises(ItemIndexError):
        val.remove_indices([1000])


def test_loader_remove_indices_leaves_items_out_of_every_split(loader: DatasetLoader) -> None:
    """The specified ``DatasetLoader.remove_indices`` (an old -> new index map) was
    missing."""
    n = loader.explorer.n_items
    mapping = loader.remove_indices([0, 5])
    assert mapping[1] == 0 and mapping[6] == 4 and 0 not in mapping and 5 not in mapping
    assert len(mapping) == n - 2
    # Items are named by code; the map gives their places among the remaining items.
    again = loader.remove_indices([7])
    assert 5 not in again and again[4] == 4 and again[6] == 5 and len(again) == n - 3
    loader.split("random", random_state=0)
    kept = np.concatenate([loader.get_dataset(s).indices for s in SUBSETS])
    assert not {0, 5, 7} & set(kept.tolist()) and len(kept) == n - 3
    with pytest.raises(ItemIndexError, match="out of range"):
        loader.remove_indices([n])
    assert loader.validate_configuration()["removed"] == 3


@pytest.mark.parametrize("bad", [0, "12", [1.5], ["a"], [None], [True]])
def test_remove_indices_of_something_other_than_positions_is_refused(
    loader: DatasetLoader, bad: Any
) -> None:
    """``remove_indices(0)`` raised a bare ``TypeError`` ('int' object is not iterable),
    ``remove_indices("12")`` removed items 1 and 2 and ``[1.5]`` removed item 1: now each
    is a :class:`DatasetError` naming the argument, and nothing is removed."""
    loader.split("random", random_state=0)
    train = loader.get_dataset("train")
    before = train.indices.copy()
    with pytest.raises(DatasetError, match=r"local must be .*integer") as info:
        train.remove_indices(bad)
    assert not isinstance(info.value, ItemIndexError)
    with pytest.raises(DatasetError, match=r"indices must be .*integer"):
        loader.remove_indices(bad)
    np.testing.assert_array_equal(train.indices, before)
    np.testing.assert_array_equal(loader.get_dataset("train").indices, before)
    assert loader.validate_configuration()["removed"] == 0
    # Positions given as numpy integers, or an array of them, still work.
    assert len(train.remove_indices(np.array([0]))) == len(before) - 1
    n = loader.explorer.n_items
    assert len(loader.remove_indices([np.int64(train.indices[0])])) == n - 2


def test_remove_indices_takes_positions_as_tensors(loader: DatasetLoader) -> None:
    """A torch tensor of positions (``torch.randperm(n)[:k]``, a sampler's indices) holds
    0-d tensors, which the argument check first refused; they are integers. A boolean
    tensor, and a 0-d array, are still refused."""
    torch = pytest.importorskip("torch")
    loader.split("random", random_state=0)
    train = loader.get_dataset("train")
    before = len(train)
    for bad in (torch.tensor([True]), np.array(3), torch.tensor(1)):
        with pytest.raises(DatasetError, match=r"local must be .*integer"):
            train.remove_indices(bad)
    assert len(train) == before
    assert len(train.remove_indices(torch.tensor([0, 1]))) == before - 2
    codes = loader.get_dataset("test").indices[:2].copy()
    loader.remove_indices(torch.from_numpy(codes)[torch.randperm(2)])
    assert loader.validate_configuration()["removed"] == 4
    assert not set(codes.tolist()) & set(loader.get_dataset("test").indices.tolist())


def test_validate_configuration_and_file_codes(flow: Path, items: list[Any]) -> None:
    """The specified ``validate_configuration()`` and ``diagnose_file_codes_mismatch()``
    were missing."""
    with DatasetLoader(flow_output_file=flow) as ld:
        report = ld.validate_configuration()
        assert report["valid"] and report["issues"] == []
        assert report["n_items"] == len(items) and report["infoset"] is True
        assert report["split"] is None
        assert report["file_codes"]["match"]
        ld.split("random", random_state=0)
        assert sum(ld.validate_configuration()["split"].values()) == len(items)
        codes = ld.diagnose_file_codes_mismatch([0, 1, 2, 10_000])
        assert codes["missing_in_dataset"] == [10_000] and not codes["match"]
        assert codes["n_missing_in_given"] == len(items) - 3
        assert codes["missing_in_given"] == list(range(3, 23))
    ld = DatasetLoader(graph_files=[flow.parent / "absent.pt"])
    report = ld.validate_configuration()
    assert not report["valid"] and "absent.pt" in report["issues"][0]


def test_subsets_list_their_files_and_labels(flow: Path, tmp_path: Path) -> None:
    """``CADDataset.data_files`` and ``label_datas`` (specified) were missing."""
    with DatasetLoader(flow_output_file=flow, labels="file_label") as ld:
        ld.split("random", random_state=0)
        train = ld.get_dataset("train")
        assert train.data_files == [None] * len(train)
        labels = [train.get_item(i)["labels"]["file_label"] for i in range(len(train))]
        assert train.label_datas == labels
        # An item with its own graph file (as PyGGraphStoreHandler writes them) lists it.
        name = train.get_item(0)["name"]
        graph_dir = flow.parent / "graph_data"
        graph_dir.mkdir()
        (graph_dir / f"{name}.pt").write_bytes(b"")
        assert train.data_files[0] == str(graph_dir / f"{name}.pt")
    files = [tmp_path / f"g{i}.pt" for i in range(6)]
    ld = DatasetLoader(graph_files=files, labels=[0, 1, 2] * 2)
    ld.split("random", random_state=0)
    test = ld.get_dataset("test")
    assert test.data_files == [str(files[i]) for i in test.indices]
    assert test.label_datas == [int(i) % 3 for i in test.indices]


def test_selection_labels_and_transform(flow: Path, items: list[Any]) -> None:
    with DatasetLoader(
        flow_output_file=flow,
        labels="size_cadfile",
        groups=["graph"],
        arrays={"faces": ["face_types"]},
    ) as ld:
        ld.split("random", random_state=0)
        got = ld.get_dataset("train").get_item(0)
        code = got["file_id_code"]
        assert set(got) == {"file_id_code", "name", "graph", "labels"}
        assert got["labels"] == {"size_cadfile": items[code][2]["size_cadfile"]}
    with DatasetLoader(flow_output_file=flow, item_loader_func=_face_count) as ld:
        ld.split("random", random_state=0)
        train = ld.get_dataset("train")
        code = int(train.indices[0])
        assert train.get_item(0) == (code, len(items[code][1]["face_indices"]))
    with pytest.raises(DatasetError, match=r"unknown label column 'label'.*file_label"):
        DatasetLoader(flow_output_file=flow, labels=["label"])
    with pytest.raises(DatasetError, match="unknown group 'Labels'"):
        DatasetLoader(flow_output_file=flow, groups=["Labels"])
    with pytest.raises(DatasetError, match="unknown array 'x' in group 'faces'"):
        DatasetLoader(flow_output_file=flow, arrays={"faces": ["x"]})


def _face_count(item: dict[str, Any]) -> tuple[int, int]:
    return item["file_id_code"], len(item["faces"]["face_types"])


def test_structure_helpers(loader: DatasetLoader) -> None:
    assert loader.available_groups() == {"faces", "edges", "graph", "faceface"}
    assert "file_id_code_edges" in loader.available_arrays("edges")
    assert loader.find_group_for_array("num_nodes") == "graph"
    assert loader.find_group_for_array("d2_distance") == "faceface"
    with pytest.raises(DatasetError, match=r"no group has an array 'face_label'.*face_types"):
        loader.find_group_for_array("face_label")
    with pytest.raises(DatasetError, match="unknown group"):
        loader.available_arrays("nope")


def test_opening_bad_datasets(flow: Path, items: list[Any], tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset"):
        DatasetLoader()
    with pytest.raises(CorruptStoreError, match="not a cadstore dataset"):
        DatasetLoader(merged_store_path=items[0][0])
    flow.with_suffix(".infoset").unlink()
    with pytest.raises(CorruptStoreError, match=r"'parts\.infoset'.*does not exist"):
        DatasetLoader(flow_output_file=flow)
    with pytest.raises(DatasetError, match="not both"):
        DatasetLoader(merged_store_path="x.dataset", graph_files=["a.pt"])


def test_graph_files_mode(tmp_path: Path) -> None:
    files = [tmp_path / f"g{i}.pt" for i in range(30)]
    labels = [i % 3 for i in range(30)]
    ld = DatasetLoader(graph_files=files, labels=labels, file_code_start=1)
    assert ld.split("label", random_state=0) == (18, 6, 6)
    train = ld.get_dataset("train")
    item = train.get_item(0)
    position = int(train.indices[0])
    assert item == {
        "file_id_code": position + 1,
        "name": f"g{position}.pt",
        "graph_file": str(files[position]),
        "label": labels[position],
    }
    for subset in SUBSETS:
        got = [labels[i] for i in ld.get_dataset(subset).indices]
        assert np.bincount(got).tolist() == [len(got) // 3] * 3
    ld.close_resources()
    # Without labels an item has no label (it was None, which torch's default_collate
    # cannot batch: "found NoneType").
    ld = DatasetLoader(graph_files=files)
    ld.split("random", random_state=0)
    assert "label" not in ld.get_dataset("train").get_item(0)
    torch = pytest.importorskip("torch")
    batch = next(iter(torch.utils.data.DataLoader(ld.get_dataset("train").to_torch(), 4)))
    assert len(batch["graph_file"]) == 4 and "label" not in batch
    ld.close_resources()
    ld = DatasetLoader(graph_files=files, item_loader_func=_load_graph)
    ld.split("random", random_state=0)
    assert ld.get_dataset("test").get_item(0)[0].endswith(".pt")
    with pytest.raises(DatasetError, match="without labels"):
        ld.split("label")
    with pytest.raises(DatasetError, match="graph files"):
        ld.available_groups()
    with pytest.raises(DatasetError, match="labels has 2 entries"):
        DatasetLoader(graph_files=files, labels=[1, 2])
    ld.close_resources()


def _load_graph(path: str, label: Any, code: int) -> tuple[str, Any, int]:
    return path, label, code


# ---------------------------------------------------------------------------- algorithm
def test_iterative_stratification_on_synthetic_labels() -> None:
    rng = np.random.default_rng(0)
    density = np.array([0.99, 0.7, 0.5, 0.3, 0.1, 0.03, 0.01])
    matrix = rng.random((3000, len(density))) < density
    assignment = iterative_stratification(matrix, [0.7, 0.15, 0.15], random_state=5)
    assert np.bincount(assignment).tolist() == pytest.approx([2100, 450, 450], abs=3)
    for subset in range(3):
        deviation = np.abs(matrix[assignment == subset].mean(axis=0) - matrix.mean(axis=0))
        assert deviation.max() <= 0.01
    np.testing.assert_array_equal(
        assignment, iterative_stratification(matrix, [0.7, 0.15, 0.15], random_state=5)
    )
    # The swaps keep the sizes of the greedy pass and only ever bring proportions closer.
    greedy = iterative_stratification(matrix, [0.7, 0.15, 0.15], random_state=5, refine=False)
    assert np.bincount(greedy).tolist() == np.bincount(assignment).tolist()

    def loss(split: np.ndarray) -> float:
        return sum(
            float(((matrix[split == s].mean(axis=0) - matrix.mean(axis=0)) ** 2).sum())
            for s in range(3)
        )

    assert loss(assignment) <= loss(greedy)
    # A subset with fraction 0 gets nothing; unlabelled items are still spread.
    assert 2 not in iterative_stratification(matrix, [0.5, 0.5, 0.0], random_state=1)
    assert np.bincount(
        iterative_stratification(np.zeros((10, 0)), [0.6, 0.2, 0.2], 0)
    ).tolist() == [
        6,
        2,
        2,
    ]
    with pytest.raises(DatasetError, match="add up to 1"):
        iterative_stratification(matrix, [0.5, 0.4])


# ---------------------------------------------------------------------------- torch
def _direct(loader: DatasetLoader, codes: list[int]) -> list[dict[str, Any]]:
    return [loader.item_source.read(c) for c in codes]


def _check_batch(batch: dict[str, Any], direct: list[dict[str, Any]]) -> None:
    torch = pytest.importorskip("torch")
    codes = batch["file_id_code"].tolist()
    assert codes == [d["file_id_code"] for d in direct]
    assert batch["name"] == [d["name"] for d in direct]
    node_counts = [len(d["faces"]["face_types"]) for d in direct]
    assert batch["num_nodes"].tolist() == [d["graph"]["num_nodes"] for d in direct]
    assert batch["num_nodes"].tolist() == node_counts
    assert batch["batch"].tolist() == np.repeat(np.arange(len(direct)), node_counts).tolist()
    for group in ("faces", "edges", "faceface"):
        for name in direct[0][group]:
            want = np.concatenate([d[group][name] for d in direct])
            np.testing.assert_array_equal(batch[group][name].numpy(), want)
        rows = [len(next(iter(d[group].values()))) for d in direct]
        assert batch["ptr"][group].tolist() == np.concatenate([[0], np.cumsum(rows)]).tolist()
    offsets = np.concatenate([[0], np.cumsum(node_counts)])
    for name in ("edges_source", "edges_destination"):
        want = np.concatenate([d["graph"][name] + offsets[b] for b, d in enumerate(direct)])
        assert batch["graph"][name].dtype == torch.int64
        np.testing.assert_array_equal(batch["graph"][name].numpy(), want)
    assert batch["edge_index"].shape == (2, len(batch["graph"]["edges_source"]))
    # Every edge joins two nodes of the same item.
    src, dst = batch["edge_index"]
    assert torch.equal(batch["batch"][src], batch["batch"][dst])
    assert batch["labels"]["file_label"].tolist() == [d["labels"]["file_label"] for d in direct]
    assert batch["labels"]["category"] == [d["labels"]["category"] for d in direct]


def test_to_torch_with_collate_dataset_and_collate(loader: DatasetLoader) -> None:
    torch = pytest.importorskip("torch")
    loader.split("face_types", random_state=0)
    train = loader.get_dataset("train")
    dataset, collate = train.to_torch_with_collate()
    assert isinstance(dataset, torch.utils.data.Dataset)
    assert len(dataset) == len(train)
    item = dataset[0]
    assert isinstance(item["faces"]["face_areas"], torch.Tensor)
    assert item["graph"]["num_nodes"].dim() == 0
    codes = [int(c) for c in train.indices[:5]]
    _check_batch(collate([dataset[i] for i in range(5)]), _direct(loader, codes))
    # It pickles small: a path, codes and the label table, never item data.
    blob = pickle.dumps(dataset)
    assert len(blob) < 50_000
    clone = pickle.loads(blob)  # noqa: S301
    np.testing.assert_array_equal(clone[3]["faces"]["face_areas"], item_at(dataset, 3))
    clone.source.reader.close()
    custom = object()
    assert train.to_torch_with_collate(collate_fn=custom)[1] is custom  # type: ignore[arg-type]


def test_batches_are_decoded_in_place(loader: DatasetLoader) -> None:
    """__getitems__ decodes a batch into one tensor per array, which the collate returns."""
    pytest.importorskip("torch")
    loader.split("face_types", random_state=0)
    dataset, collate = loader.get_dataset("train").to_torch_with_collate()
    positions = [4, 0, 2, 2]
    items = dataset.__getitems__(positions)
    batch = collate(items)
    direct = _direct(loader, [int(dataset.indices[i]) for i in positions])
    _check_batch(batch, direct)
    d2 = batch["faceface"]["d2_distance"]
    assert d2.data_ptr() == items.tensors[("faceface", "d2_distance")].data_ptr()
    # An item edited before collation is not shadowed by the prebuilt tensor.
    edited = dataset.__getitems__(positions)
    edited[1]["faceface"]["d2_distance"] = edited[1]["faceface"]["d2_distance"] + 1
    again = collate(edited)
    rows = len(direct[0]["faceface"]["d2_distance"])
    np.testing.assert_array_equal(
        again["faceface"]["d2_distance"].numpy()[
            rows : rows + len(direct[1]["faceface"]["d2_distance"])
        ],
        direct[1]["faceface"]["d2_distance"] + 1,
    )
    # A slice of the batch is a plain list: collated the ordinary way.
    _check_batch(collate(items[:2]), direct[:2])
    with pytest.raises(IndexError, match="out of range"):
        dataset.__getitems__([0, len(dataset)])


def item_at(dataset: Any, i: int) -> np.ndarray:
    return dataset[i]["faces"]["face_areas"].numpy()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_with_two_workers(loader: DatasetLoader, method: str) -> None:
    torch = pytest.importorskip("torch")
    loader.split("face_types", random_state=0)
    val = loader.get_dataset("validation")
    dataset, collate = val.to_torch_with_collate()
    batches = torch.utils.data.DataLoader(
        dataset,
        batch_size=8,
        shuffle=False,
        num_workers=2,
        collate_fn=collate,
        multiprocessing_context=method,
    )
    seen: list[int] = []
    for batch in batches:
        codes = batch["file_id_code"].tolist()
        _check_batch(batch, _direct(loader, codes))
        seen.extend(codes)
    assert seen == val.indices.tolist()


def _storages(batch: dict[str, Any]) -> set[int]:
    """The distinct memory blocks of a collated batch's tensors (labels left out)."""
    torch = pytest.importorskip("torch")
    found: set[int] = set()

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            found.add(value.untyped_storage().data_ptr())
        elif isinstance(value, dict):
            for inner in value.values():
                visit(inner)

    visit({key: value for key, value in batch.items() if key != "labels"})
    return found


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_worker_ships_each_batch_in_two_blocks(loader: DatasetLoader, method: str) -> None:
    """A DataLoader worker's batch is two shared-memory segments, not one per tensor.

    Each segment a worker sends costs a segment made, a file descriptor passed and a
    mapping in the main process; the arrays share one block, the index tensors another.
    """
    torch = pytest.importorskip("torch")
    loader.split("face_types", random_state=0)
    dataset, collate = loader.get_dataset("train").to_torch_with_collate()
    batches = torch.utils.data.DataLoader(
        dataset, batch_size=8, num_workers=2, collate_fn=collate, multiprocessing_context=method
    )
    seen = 0
    for batch in batches:
        _check_batch(batch, _direct(loader, batch["file_id_code"].tolist()))
        assert len(_storages(batch)) == 2
        assert all(t.is_shared() for t in batch["faces"].values())
        seen += len(batch["file_id_code"])
    assert seen == len(dataset)


def test_collating_numpy_items_fills_one_block(loader: DatasetLoader) -> None:
    """Items read one by one (numpy arrays) are concatenated into one block too."""
    torch = pytest.importorskip("torch")
    codes = [3, 0, 7]
    direct = _direct(loader, codes)
    batch = torch_support.collate_graphs(direct)
    _check_batch(batch, direct)
    assert len(_storages(batch)) == 2
    assert batch["graph"]["num_nodes"].dtype == torch.int64
    # A uint16 array is widened to int64, as torch has few kernels for uint16.
    edited = _direct(loader, codes)
    for item in edited:
        item["faces"]["face_types"] = item["faces"]["face_types"].astype(np.uint16)
    again = torch_support.collate_graphs(edited)
    assert again["faces"]["face_types"].dtype == torch.int64
    np.testing.assert_array_equal(
        again["faces"]["face_types"].numpy(),
        np.concatenate([d["faces"]["face_types"] for d in direct]),
    )


@pytest.mark.parametrize("as_tensor", [False, True])
def test_uint64_values_int64_cannot_hold_are_an_error_not_a_wrap(
    loader: DatasetLoader, as_tensor: bool
) -> None:
    """Batches widen uint64 to int64; a value from 2**63 would wrap to a negative number,
    so it is an error naming the array, and the largest value int64 holds still passes."""
    torch = pytest.importorskip("torch")
    ts = torch_support
    codes = [3, 0, 7]

    def edited(top: int) -> list[dict]:
        items = _direct(loader, codes)
        for item in items:
            values = item["faces"]["face_types"].astype(np.uint64)
            values[-1:] = top
            item["faces"]["face_types"] = torch.from_numpy(values) if as_tensor else values
        return items

    fits = ts.collate_graphs(edited(np.iinfo(np.int64).max))
    assert fits["faces"]["face_types"].dtype == torch.int64
    assert int(fits["faces"]["face_types"].max()) == np.iinfo(np.int64).max
    items = edited(2**63 + 5)
    kept = [item["faces"]["face_types"] for item in items]
    with pytest.raises(InvalidDataError, match=r"faces/face_types.*9223372036854775813"):
        ts.collate_graphs(items)
    # The items handed in are left as they were.
    assert all(item["faces"]["face_types"] is k for item, k in zip(items, kept, strict=True))
    assert int(np.asarray(kept[0])[-1]) == 2**63 + 5
    if not as_tensor:
        with pytest.raises(InvalidDataError, match="faces/face_types"):
            ts.item_to_tensors(items[0])
        item = dict(items[0], faces={"count": np.uint64(2**64 - 1)})
        with pytest.raises(InvalidDataError, match="faces/count"):
            ts.item_to_tensors(item)


@pytest.mark.parametrize("as_tensors", [False, True], ids=["numpy", "tensors"])
def test_items_of_different_dtypes_make_a_batch_that_holds_every_value(
    loader: DatasetLoader, as_tensors: bool
) -> None:
    """Items whose array has other dtypes than the first item's (edited items, a custom
    source) are batched in a dtype that holds every value: before, numpy items were cast
    to the first item's dtype, so int64 values cut to int32 and uint64 ones wrapped, and
    tensor items went through torch's promotion, int64 with float32 to float32 (integers
    from 2**24 rounded), all without a word."""
    torch = pytest.importorskip("torch")
    big = 2**40 + 3
    items = _direct(loader, [3, 0])
    items[0]["faces"]["face_types"] = items[0]["faces"]["face_types"].astype(np.int32)
    items[1]["faces"]["face_types"] = np.full(4, big, dtype=np.int64)
    items[0]["faces"]["face_areas"] = items[0]["faces"]["face_areas"].astype(np.float32)
    items[1]["faces"]["face_areas"] = np.full(4, big, dtype=np.int64)
    items[0]["graph"]["num_nodes"] = np.int32(items[0]["graph"]["num_nodes"])
    items[1]["graph"]["num_nodes"] = np.uint64(items[1]["graph"]["num_nodes"])
    given = [torch_support.item_to_tensors(it) for it in items] if as_tensors else items
    batch = torch_support.collate_graphs(given)
    types = batch["faces"]["face_types"]
    assert types.dtype == torch.int64
    np.testing.assert_array_equal(
        types.numpy(), np.concatenate([items[0]["faces"]["face_types"], np.full(4, big)])
    )
    areas = batch["faces"]["face_areas"]
    assert areas.dtype == torch.float64
    assert areas[-1].item() == big
    assert batch["graph"]["num_nodes"].dtype == torch.int64
    if as_tensors:
        return
    # int64 first, a uint64 value int64 cannot hold second: an error, not a wrap.
    items[0]["faces"]["face_types"] = items[0]["faces"]["face_types"].astype(np.int64)
    items[1]["faces"]["face_types"] = np.full(4, 2**63 + 1, dtype=np.uint64)
    with pytest.raises(InvalidDataError, match="faces/face_types"):
        torch_support.collate_graphs(items)
    assert int(items[1]["faces"]["face_types"][0]) == 2**63 + 1


@pytest.mark.parametrize("processes", [0, 2], ids=["threads", "processes"])
def test_complex_arrays_batch_as_complex_tensors(tmp_path: Path, processes: int) -> None:
    """Complex arrays are saved and merged; their batches were made int64 (torch batches
    only "biuf" kinds as they are) and raised "Cannot cast ... to int64"."""
    torch = pytest.importorskip("torch")
    paths, values = [], []
    for index in range(4):
        dtype = np.complex64 if index % 2 else np.complex128
        value = np.array([1 + 2j, index - 3j, 0.5j], dtype=dtype)
        arrays = {"faces/c": value, "faces/x": np.arange(3.0)}
        paths.append(write_arrays(tmp_path / f"c{index}.zarr", arrays))
        values.append(value.astype(np.complex128))
    merge_items(paths, tmp_path / "c.dataset")
    with DatasetLoader(merged_store_path=tmp_path / "c.dataset") as loader:
        loader.split("random", train=1.0, validation=0.0, test=0.0, random_state=0)
        subset = loader.get_dataset("train")
        with subset.batches(batch_size=4, shuffle=False, processes=processes) as batches:
            got = next(iter(batches))["faces"]["c"]
    assert got.dtype == torch.complex128
    np.testing.assert_array_equal(got.numpy(), np.concatenate(values))
    mixed = [
        {"file_id_code": i, "faces": {"c": v.astype(np.complex64 if i % 2 else np.complex128)}}
        for i, v in enumerate(values)
    ]
    assert torch_support.collate_graphs(mixed)["faces"]["c"].dtype == torch.complex128


def test_array_labels_of_a_custom_item_are_collated(loader: DatasetLoader) -> None:
    """A label that is an array (a multi-label vector an item loader made) is stacked; the
    check for missing labels does not compare arrays with ``None`` (which raised)."""
    torch = pytest.importorskip("torch")
    items = _direct(loader, [3, 0])
    for k, item in enumerate(items):
        item["labels"] = {"tags": np.array([k, 1, 0], dtype=np.int64)}
    batch = torch_support.collate_graphs(items)
    assert torch.equal(batch["labels"]["tags"], torch.tensor([[0, 1, 0], [1, 1, 0]]))


def test_a_uint64_label_int64_cannot_hold_is_an_error(loader: DatasetLoader) -> None:
    """Label columns are widened to int64 like arrays, and checked alike."""
    pytest.importorskip("torch")
    items = _direct(loader, [3, 0])
    for value, item in zip((1, 2**63 + 7), items, strict=True):
        item["labels"] = {"part_id": np.uint64(value)}
    with pytest.raises(InvalidDataError, match=r"labels/part_id.*9223372036854775815"):
        torch_support.collate_graphs(items)
    items[1]["labels"] = {"part_id": np.uint64(2**63 - 1)}
    batch = torch_support.collate_graphs(items)
    assert batch["labels"]["part_id"].tolist() == [1, 2**63 - 1]


def test_integer_labels_some_items_lack_stay_exact_and_a_batch_of_a_missing_one_fails(
    tmp_path: Path,
) -> None:
    """An integer infoset column with a missing value went through pandas as floats:
    every item's class code became a float, integers from 2**53 were rounded, the
    column stopped being the default ``label`` and PyG's ``y`` vanished, without a word.
    Now the values are kept as stored, and a batch holding an item without a value is an
    error naming the column and the item."""
    torch = pytest.importorskip("torch")
    paths = []
    for i, (name, item, meta) in enumerate(iter_items(4, seed=7)):
        if i != 3:
            meta = dict(meta, part_number=2**53 + 2 * i + 1, is_metal=bool(i % 2), material=f"m{i}")
        paths.append(write_item(tmp_path / "enc" / f"{name}.zarr", item, meta))
    cadstore.merge(paths, str(tmp_path / "parts.dataset"))
    infoset = tmp_path / "parts.infoset"
    stored = infoset.read_bytes()
    with DatasetLoader(flow_output_file=tmp_path / "parts.flow", labels=["part_number"]) as ld:
        source = ld.item_source
        dataset = CADDataset(ld, [0, 1, 2, 3])
        first = next(iter(dataset.batches(batch_size=3, shuffle=False)))
        codes = first["labels"]["part_number"]
        assert codes.dtype == torch.int64
        assert codes.tolist() == [2**53 + 1, 2**53 + 3, 2**53 + 5]
        assert source.label_column == "part_number"
        assert source.integer_labels == ("part_number",)
        name = source.reader.item_names[3]
        missing = rf"labels/part_number: .*{name}.*code 3"
        with pytest.raises(InvalidDataError, match=missing):
            list(dataset.batches(batch_size=4, shuffle=False))
        # A batch of that item alone too (its column is known to hold integers).
        alone = CADDataset(ld, [3])
        with pytest.raises(InvalidDataError, match=missing):
            list(alone.batches(batch_size=1))
        tensors, collate = alone.to_torch_with_collate()
        with pytest.raises(InvalidDataError, match=missing):
            collate(tensors.__getitems__([0]))
        with pytest.raises(InvalidDataError, match=missing):
            tensors[0]
        graphs = dataset.to_torch()
        assert graphs[0]["label"] == 2**53 + 1
        with pytest.raises(InvalidDataError, match=missing):
            graphs[3]
        # Read alone, outside training, the item's label is None.
        assert dataset[3]["labels"]["part_number"] is None
    # A column of booleans with a gap is batched as a list, as before: no class codes.
    with DatasetLoader(flow_output_file=tmp_path / "parts.flow", labels=["is_metal"]) as ld:
        dataset = CADDataset(ld, [0, 1, 2, 3])
        batch = next(iter(dataset.batches(batch_size=4, shuffle=False)))
        assert batch["labels"]["is_metal"] == [False, True, False, None]
        # to_torch() items go to torch's default_collate, which failed on the gap with
        # "Could not infer dtype of NoneType": the item is named instead.
        loader = torch.utils.data.DataLoader(dataset.to_torch(), batch_size=4)
        with pytest.raises(InvalidDataError, match=r"labels/is_metal: .*code 3.*to_torch"):
            next(iter(loader))
        first = next(iter(torch.utils.data.DataLoader(CADDataset(ld, [0, 1]).to_torch(), 2)))
        assert first["label"].tolist() == [False, True]
    # A column of strings with a gap likewise (batched as a list, named for to_torch()).
    with DatasetLoader(flow_output_file=tmp_path / "parts.flow", labels=["material"]) as ld:
        dataset = CADDataset(ld, [0, 1, 2, 3])
        batch = next(iter(dataset.batches(batch_size=4, shuffle=False)))
        assert batch["labels"]["material"][:3] == ["m0", "m1", "m2"]
        graphs = dataset.to_torch()
        assert graphs[2]["label"] == "m2"
        with pytest.raises(InvalidDataError, match=r"labels/material: .*code 3.*to_torch"):
            graphs[3]
    assert infoset.read_bytes() == stored  # reading labels changed nothing stored


def test_to_torch_with_collate_and_a_transform_uses_default_collate(flow: Path) -> None:
    torch = pytest.importorskip("torch")
    with DatasetLoader(flow_output_file=flow, item_loader_func=_face_count) as ld:
        ld.split("random", random_state=0)
        dataset, collate = ld.get_dataset("train").to_torch_with_collate()
        batch = collate([dataset[0], dataset[1]])
        assert isinstance(batch[0], torch.Tensor) and batch[0].shape == (2,)
