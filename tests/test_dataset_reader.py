"""DatasetReader: one item's rows through the offsets index, partial shard reads."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cadstore.dataset.reader import DatasetReader
from cadstore.errors import CadstoreError, CorruptStoreError, DatasetError, KeyNotFoundError
from cadstore.merging import merge_items
from fuzzing import FUZZ_SETTINGS, json_values, set_field


@pytest.fixture(scope="module")
def dataset(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reader") / "r.dataset"
    # Small shards and inner chunks so that items straddle both.
    merge_items([p for p, _, _ in realistic_items], out, inner_bytes=2048, shard_bytes=16384)
    return out


def _check_item(reader: DatasetReader, code: int, item: dict[str, Any]) -> None:
    got = reader.read_item(code)
    np.testing.assert_array_equal(got["faces"]["face_areas"], item["face_areas"])
    np.testing.assert_array_equal(got["faces"]["face_discretization"], item["face_discretization"])
    np.testing.assert_array_equal(got["edges"]["edge_u_grids"], item["edge_u_grids"])
    n = len(item["face_indices"])
    np.testing.assert_array_equal(
        got["faceface"]["a3_distance"], item["a3_distance"].reshape(n * n, -1)
    )
    np.testing.assert_array_equal(got["graph"]["edges_source"], item["graph"]["edges_source"])
    assert got["graph"]["num_nodes"] == item["graph"]["num_nodes"]


@pytest.mark.parametrize("directory", [False, True], ids=["zip", "directory"])
def test_arrays_with_a_zero_length_axis_read(tmp_path: Path, directory: bool) -> None:
    """Rows of no values (a face array of shape (n_faces, 0)) merge, and read as what was
    stored, by every path: they raised a decoding error ("zstd frame declares 0 bytes")."""
    from cadstore.synthetic import iter_items, write_item

    items = []
    for index, (_, item, meta) in enumerate(iter_items(4, seed=1)):
        item = dict(item)
        n = len(item["face_areas"])
        item["face_empty"] = np.zeros((n, 0), np.float32)
        item["face_empty_3"] = np.zeros((n, 3, 0), np.int64)
        items.append((write_item(tmp_path / f"i{index}.zarr", item, meta), item))
    out = tmp_path / "zero.dataset"
    merge_items([p for p, _ in items], out, directory=directory)
    for cache_bytes in (0, 1 << 26):
        with DatasetReader(out, cache_bytes=cache_bytes) as reader:
            reader.warm()
            batch = reader.read_items(list(range(len(items))))
            for code, (_, item) in enumerate(items):
                for got in (reader.read_item(code)["faces"], batch[code]["faces"]):
                    for name in ("face_empty", "face_empty_3"):
                        assert got[name].shape == item[name].shape, name
                        assert got[name].dtype == item[name].dtype, name
                np.testing.assert_array_equal(got["face_areas"], item["face_areas"])
            whole = reader.read_array("faces", "face_empty_3")
            assert whole.shape == (sum(len(i["face_areas"]) for _, i in items), 3, 0)


def test_every_item_reads_back(dataset: Path, realistic_items: list[Any]) -> None:
    with DatasetReader(dataset, cache_bytes=0) as reader:
        assert reader.n_items == len(realistic_items)
        for code, (_, item, _) in enumerate(realistic_items):
            _check_item(reader, code, item)
        name = realistic_items[4][0].name[: -len(".zarr.data")]
        assert reader.code_of(name) == 4


def test_rows_across_shards(dataset: Path) -> None:
    with DatasetReader(dataset) as reader:
        whole = reader.read_array("faceface", "d2_distance")
        for start, stop in [(0, 1), (0, len(whole)), (37, 9000), (len(whole) - 3, len(whole))]:
            np.testing.assert_array_equal(
                reader.read_rows("faceface", "d2_distance", start, stop), whole[start:stop]
            )
        assert reader.read_rows("faces", "face_areas", 5, 5).shape == (0,)


def test_read_rows_into_a_given_array(dataset: Path) -> None:
    with DatasetReader(dataset, cache_bytes=0) as reader:
        whole = reader.read_array("faceface", "d2_distance")
        out = np.full((9000 - 37, whole.shape[1]), -1.0, dtype=whole.dtype)
        assert reader.read_rows("faceface", "d2_distance", 37, 9000, out) is out
        np.testing.assert_array_equal(out, whole[37:9000])
        with pytest.raises(ValueError, match=r"faceface/d2_distance need \(3, 64\)"):
            reader.read_rows("faceface", "d2_distance", 0, 3, np.empty((2, 64), whole.dtype))
        with pytest.raises(ValueError, match="float32"):
            reader.read_rows("faceface", "d2_distance", 0, 3, np.empty((3, 64), np.float64))


def test_read_items_fills_one_buffer_per_array(dataset: Path) -> None:
    calls: list[tuple[str, str, tuple[int, ...]]] = []

    def allocate(group: str, array: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        calls.append((group, array, shape))
        return np.full(shape, 7, dtype=dtype)

    codes = [5, 0, 5, 11, 3]  # out of order, with a repeat
    with DatasetReader(dataset, cache_bytes=0) as reader:
        batch = reader.read_items(codes, allocate=allocate)
        assert len(batch) == len(codes)
        for item, code in zip(batch, codes, strict=True):
            alone = reader.read_item(code)
            assert item.keys() == alone.keys()
            for group in alone:
                for name, value in alone[group].items():
                    np.testing.assert_array_equal(item[group][name], value)
        for group, counts in batch.counts.items():
            offsets = reader.offsets(group)
            assert counts.tolist() == [int(offsets[c + 1] - offsets[c]) for c in codes]
        d2 = batch.buffers[("faceface", "d2_distance")]
        np.testing.assert_array_equal(
            d2, np.concatenate([reader.read_item(c)["faceface"]["d2_distance"] for c in codes])
        )
        # Every item's rows are a view of the batch buffer, in batch order.
        assert all(np.shares_memory(item["faceface"]["d2_distance"], d2) for item in batch)
        assert batch.buffers[("graph", "num_nodes")].shape == (len(codes),)
        assert ("faceface", "d2_distance", d2.shape) in calls
        assert len(calls) == len(batch.buffers)
        light = reader.read_items([1, 2], groups=["graph"], arrays={"graph": ["num_nodes"]})
        assert [list(item) for item in light] == [["graph"], ["graph"]]
        assert list(light[0]["graph"]) == ["num_nodes"]
        assert reader.read_items([]) == []
        with pytest.raises(DatasetError, match="out of range"):
            reader.read_items([0, reader.n_items])


def test_per_item_strings_read_back(tmp_path: Path) -> None:
    """A string saved once per item is a per-item object array: every reader path gives it."""
    from cadstore import OptStorage

    files = []
    for i in range(3):
        storage = OptStorage(str(tmp_path / f"part{i}.zarr"))
        storage.save_data("face_areas", np.arange(i + 2, dtype=np.float32))
        storage.save_data("label", f"bracket-{i}")
        storage.compress_store()
        storage.close()
        files.append(tmp_path / f"part{i}.zarr.data")
    merge_items(files, tmp_path / "s.dataset")
    with DatasetReader(tmp_path / "s.dataset") as reader:
        assert reader.read_item(1)["label"]["label"] == "bracket-1"
        batch = reader.read_items([2, 0])
        assert [item["label"]["label"] for item in batch] == ["bracket-2", "bracket-0"]
        assert batch.buffers[("label", "label")].dtype == object
        np.testing.assert_array_equal(batch[0]["faces"]["face_areas"], np.arange(4))
        assert reader.read_rows("label", "label", 0, 3).tolist() == [
            "bracket-0",
            "bracket-1",
            "bracket-2",
        ]


def test_errors_name_the_valid_choices(dataset: Path) -> None:
    with DatasetReader(dataset) as reader:
        with pytest.raises(DatasetError, match=r"unknown group 'nope'.*faces"):
            reader.read_item(0, groups=["nope"])
        with pytest.raises(DatasetError, match="unknown array 'x' in group 'faces'"):
            reader.read_rows("faces", "x", 0, 1)
        with pytest.raises(DatasetError, match="out of range"):
            reader.read_item(10_000)
        with pytest.raises(DatasetError, match="outside"):
            reader.read_rows("faces", "face_areas", 0, 10**9)
        with pytest.raises(KeyNotFoundError):
            reader.code_of("no-such-item")


def test_not_a_dataset(tmp_path: Path, realistic_items: list[Any]) -> None:
    with pytest.raises(CorruptStoreError, match="no such dataset"):
        DatasetReader(tmp_path / "missing.dataset")
    with pytest.raises(CorruptStoreError, match="not a cadstore dataset"):
        DatasetReader(realistic_items[0][0])


def _worker(reader: DatasetReader, code: int, queue: Any) -> None:
    queue.put(reader.read_item(code)["faces"]["face_areas"].tolist())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reader_in_worker_processes(dataset: Path, realistic_items: list[Any], method: str) -> None:
    reader = DatasetReader(dataset)
    reader.read_item(0)
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(reader, 3, queue))
    proc.start()
    got = queue.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert got == realistic_items[3][1]["face_areas"].tolist()
    # Pickling is how DataLoader hands the reader to workers; the state is a path only.
    clone = pickle.loads(pickle.dumps(reader))  # noqa: S301
    _check_item(clone, 5, realistic_items[5][1])
    reader.close()
    clone.close()


def test_opening_a_reader_does_not_hash_its_item_names(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version a reader checks when it opens the file again (a digest of its item
    names) was computed on every open: on a dataset of a million items, about 0.12 s more
    than the names' own decoding, paid by every explorer, loader and reader opened,
    pickled or not. It is now computed once when the reader is pickled, and a forked copy
    compares the names it inherited; both still refuse a replaced dataset
    (tests/test_lifecycle.py)."""
    from cadstore.dataset import reader as reader_module

    calls: list[int] = []
    real = reader_module._items_digest

    def counted(names: list[str], count: int) -> str:
        calls.append(count)
        return real(names, count)

    monkeypatch.setattr(reader_module, "_items_digest", counted)
    with DatasetReader(dataset) as reader:
        reader.read_item(0)
        assert calls == []
        state = pickle.dumps(reader)
        assert calls == [reader.n_items]
        pickle.dumps(reader)  # computed once
        assert calls == [reader.n_items]
        with pickle.loads(state) as copy:  # noqa: S301 - our own bytes
            assert copy.item_names == reader.item_names
            assert calls == [reader.n_items] * 2  # the copy checks the file it opens
            pickle.dumps(copy)  # and keeps the digest it was given
            assert calls == [reader.n_items] * 2


def test_uncompressed_dataset_reads_back(realistic_items: list[Any], tmp_path: Path) -> None:
    """Inner chunks stored raw are copied straight into the item's arrays."""
    out = tmp_path / "raw.dataset"
    files = [p for p, _, _ in realistic_items[:6]]
    merge_items(files, out, inner_bytes=2048, shard_bytes=16384, compression_level=None)
    with DatasetReader(out, cache_bytes=0) as reader:
        for code, (_, item, _) in enumerate(realistic_items[:6]):
            _check_item(reader, code, item)


@pytest.mark.parametrize(
    ("inner", "problem"),
    [
        (lambda rows, width: [rows, width // 2], "along rows only"),
        (lambda rows, width: [rows - 1, width], "along rows only"),
        (lambda rows, width: [rows * 2**20, width], "max_chunk_bytes"),
        (lambda rows, width: [rows, "64"], "inner chunk_shape holds .64., expected"),
        (lambda rows, width: [rows], "inner chunk_shape .* does not match 2 dimensions"),
    ],
)
def test_inner_chunk_layout_is_checked(
    realistic_items: list[Any], tmp_path: Path, inner: Any, problem: str
) -> None:
    """Inner chunks that split columns, do not divide shards or are bombs: a clear error."""
    out = tmp_path / "dir.dataset"
    merge_items([p for p, _, _ in realistic_items[:4]], out, directory=True)
    # d2_distance is symmetric: stored as its upper triangle, in faceface_upper.
    docs = [out / "faceface_upper" / "d2_distance" / "zarr.json", out / "zarr.json"]
    for path in docs:
        doc = json.loads(path.read_text())
        array = (
            doc["consolidated_metadata"]["metadata"]["faceface_upper/d2_distance"]
            if path.parent == out
            else doc
        )
        config = array["codecs"][0]["configuration"]
        config["chunk_shape"] = inner(array["chunk_grid"]["configuration"]["chunk_shape"][0], 64)
        path.write_text(json.dumps(doc))
    with DatasetReader(out) as reader:
        with pytest.raises(CorruptStoreError, match=f"faceface_upper/d2_distance.*{problem}"):
            reader.read_item(0)
        # The other arrays still read.
        assert len(reader.read_item(0, groups=["faces"])["faces"]["face_areas"]) > 0


def test_damaged_inner_chunk_is_a_corrupt_store_error(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """An inner chunk that is not a zstd frame any more: an error naming the shard."""
    from cadstore.format.sharding import read_index

    out = tmp_path / "dir.dataset"
    files = [p for p, _, _ in realistic_items[:6]]
    merge_items(files, out, inner_bytes=2048, shard_bytes=1 << 20, directory=True)
    shard = out / "faceface_upper" / "a3_distance" / "c" / "0" / "0"
    doc = json.loads((out / "faceface_upper" / "a3_distance" / "zarr.json").read_text())
    shard_rows = doc["chunk_grid"]["configuration"]["chunk_shape"][0]
    inner_rows = doc["codecs"][0]["configuration"]["chunk_shape"][0]
    n_inner = shard_rows // inner_rows
    data = bytearray(shard.read_bytes())
    # The index ends with its crc32c (4 bytes) when the dataset carries checksums.
    trailer = 4 * (len(doc["codecs"][0]["configuration"]["index_codecs"]) - 1)
    table = bytes(data[len(data) - trailer - 16 * n_inner : len(data) - trailer])
    index = read_index(table, n_inner, len(data) - trailer)
    assert len(index) > 3
    offset, _ = index[len(index) // 2]
    data[offset : offset + 8] = b"\0" * 8
    shard.write_bytes(bytes(data))

    def read_all() -> None:
        with DatasetReader(out, cache_bytes=0) as reader:
            for code in range(reader.n_items):
                reader.read_item(code)

    with pytest.raises(CorruptStoreError, match="a3_distance"):
        read_all()


def test_opening_a_directory_dataset_lists_no_folder(
    realistic_items: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    directory_sizings: list[str],
) -> None:
    """Opening a directory dataset and reading an item lists no folder of it: opening it
    walked its whole tree twice (every chunk folder listed, every file's size asked),
    once for ReadHierarchy's size and once for the decode budget's, before anything was
    read. The budget is sized only if a read needs more than every budget holds."""
    import os

    out = tmp_path / "dir.dataset"
    merge_items(
        [p for p, _, _ in realistic_items[:6]],
        out,
        inner_bytes=256,
        shard_bytes=1024,
        directory=True,
    )
    folders = sum(1 for _ in os.walk(out))
    listed: list[str] = []
    sized = directory_sizings
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        listed.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with DatasetReader(out) as reader:
        nodes = len(reader._hier.arrays) + len(reader._hier.groups)
        assert folders > 10 * nodes  # a chunk folder each: a walk would list them all
        for code in range(reader.n_items):
            _check_item(reader, code, realistic_items[code][1])
    assert listed == [] and sized == []
    # The size, asked for, is still every file's.
    monkeypatch.setattr(os, "scandir", real_scandir)
    with DatasetReader(out) as reader:
        expected = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        assert reader.stored_bytes == expected


# ---------------------------------------------------------------------------- fuzzing
_SHARD_FIELDS = [
    ("shape",),
    ("data_type",),
    ("fill_value",),
    ("dimension_names",),
    ("chunk_grid", "configuration", "chunk_shape"),
    ("chunk_grid", "configuration", "chunk_shape", 0),
    ("codecs",),
    ("codecs", 0, "name"),
    ("codecs", 0, "configuration"),
    ("codecs", 0, "configuration", "chunk_shape"),
    ("codecs", 0, "configuration", "chunk_shape", 0),
    ("codecs", 0, "configuration", "codecs"),
    ("codecs", 0, "configuration", "index_codecs"),
    ("codecs", 0, "configuration", "index_location"),
]


@pytest.fixture(scope="module")
def fuzz_dataset(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "dir.dataset"
    merge_items([p for p, _, _ in realistic_items[:4]], out, directory=True)
    return out


@FUZZ_SETTINGS
@given(
    array=st.sampled_from(
        [
            "faceface_upper/d2_distance",
            "faceface/face_pair_edges_path",
            "faces/face_areas",
            "graph/num_nodes",
        ]
    ),
    field=st.sampled_from(_SHARD_FIELDS),
    value=json_values(max_leaves=10),
)
def test_any_sharded_array_metadata_is_a_clear_error(
    fuzz_dataset: Path, array: str, field: tuple[Any, ...], value: Any
) -> None:
    """Whatever JSON a merged array's metadata holds: data, or a cadstore error."""
    own = fuzz_dataset / array / "zarr.json"
    root = fuzz_dataset / "zarr.json"
    saved = {own: own.read_text(), root: root.read_text()}
    try:
        doc, root_doc = json.loads(saved[own]), json.loads(saved[root])
        set_field(doc, field, value)
        set_field(root_doc["consolidated_metadata"]["metadata"][array], field, value)
        own.write_text(json.dumps(doc))
        root.write_text(json.dumps(root_doc))
        with contextlib.suppress(CadstoreError), DatasetReader(fuzz_dataset) as reader:
            reader.read_item(0)
            reader.read_items([1, 0, 1])
            group, name = array.split("/")
            reader.read_rows(group, name, 0, 3)
    finally:
        for path, text in saved.items():
            path.write_text(text)


@pytest.mark.parametrize("fill", [[None, None], 3.4028235677973366e38, "0x123456789"])
def test_a_fill_value_its_dtype_cannot_hold_is_a_clear_error(fuzz_dataset: Path, fill: Any) -> None:
    """Found by the fuzz test above: a complex fill value for a real array, or one beyond
    float32's range, surfaced as a numpy warning when a missing chunk was filled."""
    array = "faceface_upper/d2_distance"
    own = fuzz_dataset / array / "zarr.json"
    root = fuzz_dataset / "zarr.json"
    saved = {own: own.read_text(), root: root.read_text()}
    try:
        doc, root_doc = json.loads(saved[own]), json.loads(saved[root])
        doc["fill_value"] = fill
        root_doc["consolidated_metadata"]["metadata"][array]["fill_value"] = fill
        own.write_text(json.dumps(doc))
        root.write_text(json.dumps(root_doc))
        with DatasetReader(fuzz_dataset) as reader:
            for read in (lambda: reader.read_item(0), lambda: reader.read_items([1, 0, 1])):
                with pytest.raises(CorruptStoreError, match="fill_value") as caught:
                    read()
                assert "d2_distance" in str(caught.value)
            assert reader.read_item(0, ["faces"])["faces"]["face_areas"].size  # the rest reads
    finally:
        for path, text in saved.items():
            path.write_text(text)


def test_a_fill_value_check_leaves_other_threads_warnings_alone(dataset: Path) -> None:
    """Checking an array's fill value turned every warning into an error for the whole
    process while it ran (a warnings filter is the process's): a harmless warning in
    another thread, reading or training beside a reader opening a dataset, was raised
    as an exception. Opened many times in one thread while another warns, no warning
    is raised and every one is seen as a warning."""
    import threading
    import warnings

    from cadstore.format.zarr_nodes import MetadataError, _parse_fill

    raised: list[BaseException] = []
    stop = threading.Event()

    def warn() -> None:
        while not stop.is_set():
            try:
                warnings.warn("harmless", UserWarning, stacklevel=1)
            except UserWarning as exc:  # the check's filter, in this thread
                raised.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = threading.Thread(target=warn)
        other.start()
        try:
            for _ in range(20):
                with DatasetReader(dataset) as reader:
                    reader.read_item(0)
            for _ in range(20_000):  # the check alone, as each array's metadata runs it
                _parse_fill(1.5, np.dtype("float32"))
        finally:
            stop.set()
            other.join()
    assert raised == []
    # The check still refuses a value its dtype cannot hold (int8 from 300).
    with pytest.raises(MetadataError, match="300 does not fit int8"):
        _parse_fill(300, np.dtype("int8"))
    assert _parse_fill(-128, np.dtype("int8")) == -128


def test_read_rows_into_a_strided_array(dataset: Path) -> None:
    with DatasetReader(dataset, cache_bytes=0) as reader:
        whole = reader.read_rows("faceface", "d2_distance", 0, 40)
        wide = np.zeros((40, whole.shape[1] + 3), dtype=whole.dtype)
        out = wide[:, : whole.shape[1]]  # not C-contiguous
        reader.read_rows("faceface", "d2_distance", 0, 40, out=out)
        np.testing.assert_array_equal(out, whole)


def test_an_item_code_or_position_that_is_no_whole_number_is_refused(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """``read_item(2.7)``, ``file_dataset(np.float32(2.7), ...)`` and ``subset[1.5]``
    read item 2 (or position 1): ``int()`` truncated them; ``True`` read item 1. Each is
    a ``DatasetError`` naming the value; whole numbers (``2``, ``2.0``, ``np.int64(2)``,
    ``"2"``) read as before."""
    import cadstore

    cadstore.merge([str(p) for p, _, _ in realistic_items[:4]], str(tmp_path / "d.dataset"))
    flow = tmp_path / "d.flow"
    with (
        DatasetReader(tmp_path / "d.dataset") as reader,
        cadstore.DatasetExplorer(flow_output_file=flow) as explorer,
        cadstore.DatasetLoader(flow_output_file=flow) as loader,
    ):
        loader.split("random", train=0.5, validation=0.25, test=0.25, random_state=0)
        subset = loader.get_dataset("train")
        calls = {
            "item code": lambda c: reader.read_item(c)["faces"]["face_areas"].tolist(),
            "file id code": lambda c: explorer.file_dataset(c, "faces").attrs["file_id_code"],
            "item position": lambda c: subset[c]["file_id_code"],
        }
        for what, call in calls.items():
            for bad in (2.7, np.float32(1.5), True, np.bool_(False), "1.5", float("nan")):
                with pytest.raises(DatasetError, match=f"{what} .* not an integer"):
                    call(bad)
            expected = call(1)
            for good in (1.0, np.int64(1), np.float32(1.0), "1"):
                assert call(good) == expected, (what, good)


def test_one_rule_for_positions_in_the_torch_wrappers_and_remove_indices(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """The torch wrappers of a subset (``to_torch()``, ``to_torch_with_collate()``) kept their
    own ``int()``: ``to_torch()[1.5]`` read position 1, ``[True]`` position 1 and
    ``[np.float32(0.9)]`` position 0; and a 0-d boolean array passed as a code read item
    1. Every code and position now follows one rule (``whole_number``): the same
    ``DatasetError`` for those, the same item for whole numbers, in the wrappers as in
    the subset, and ``remove_indices`` takes the positions a subset takes."""
    pytest.importorskip("torch")
    import torch

    import cadstore

    cadstore.merge([str(p) for p, _, _ in realistic_items[:4]], str(tmp_path / "d.dataset"))
    with (
        DatasetReader(tmp_path / "d.dataset") as reader,
        cadstore.DatasetLoader(flow_output_file=tmp_path / "d.flow") as loader,
    ):
        for bad in (np.array(True), torch.tensor(True)):
            with pytest.raises(DatasetError, match=r"item code .* is a boolean"):
                reader.read_item(bad)
        loader.split("random", train=0.5, validation=0.25, test=0.25, random_state=0)
        subset = loader.get_dataset("train")
        wrappers = {
            "to_torch": subset.to_torch(),
            "to_torch_with_collate": subset.to_torch_with_collate()[0],
        }
        for name, wrapper in wrappers.items():
            for bad in (1.5, True, np.float32(0.9), np.array(True), "x"):
                with pytest.raises(
                    DatasetError, match=r"item position .* (not an integer|is a boolean)"
                ):
                    wrapper[bad]

            def code(item: Any) -> int:
                return int(item["id"] if "id" in item else item["file_id_code"])

            want = code(wrapper[1])
            assert code(wrapper[-len(wrapper) + 1]) == want
            for good in (1.0, np.int64(1), torch.tensor(1)):
                assert code(wrapper[good]) == want, (name, good)
            with pytest.raises(IndexError):
                wrapper[len(wrapper)]
        first = int(subset.indices[0])
        assert len(subset.remove_indices([0.0])) == 1
        assert first not in subset.indices
        with pytest.raises(DatasetError, match=r"local must be .*integer"):
            subset.remove_indices([np.array(True)])
