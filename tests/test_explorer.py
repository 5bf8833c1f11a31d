"""DatasetExplorer on a merged realistic dataset: every method, and the bad-input errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import cadstore
from cadstore.dataset.explorer import DatasetExplorer
from cadstore.errors import CadstoreWarning, CorruptStoreError, DatasetError
from cadstore.merging import merge_items
from conftest import write_arrays

FACE_TYPES = np.array([0, 1, 2, 3, 4, 5, 13, 14])


@pytest.fixture(scope="module")
def merged(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's realistic items merged once; returns the ``.flow`` manifest."""
    out = tmp_path_factory.mktemp("explorer") / "parts.dataset"
    cadstore.merge([str(p) for p, _, _ in realistic_items], str(out))
    return out.with_suffix(".flow")


@pytest.fixture
def explorer(merged: Path) -> Any:
    with DatasetExplorer(flow_output_file=merged) as ex:
        yield ex


def _items(realistic_items: list[Any]) -> list[dict[str, Any]]:
    return [item for _, item, _ in realistic_items]


def _metas(realistic_items: list[Any]) -> list[dict[str, Any]]:
    return [meta for _, _, meta in realistic_items]


# ---------------------------------------------------------------------------- opening
def test_open_from_manifest_paths_or_dataset_alone(merged: Path) -> None:
    stem = merged.with_suffix("")
    with DatasetExplorer(flow_output_file=merged) as a:
        assert a.merged_store_path == str(stem) + ".dataset"
        assert a.parquet_file_path == str(stem) + ".infoset"
        assert a.parquet_file_attribs == str(stem) + ".attribset"
        with DatasetExplorer(
            merged_store_path=f"{stem}.dataset",
            parquet_file_path=f"{stem}.infoset",
            parquet_file_attribs=f"{stem}.attribset",
        ) as b:
            assert a.available_groups() == b.available_groups()
            pd.testing.assert_frame_equal(a.get_file_info_all(), b.get_file_info_all())
        # The tables next to the dataset are found without being named.
        with DatasetExplorer(merged_store_path=f"{stem}.dataset") as c:
            assert c.parquet_file_path == str(stem) + ".infoset"
            assert "--- Dataset Table of Contents ---" in c.table_of_contents()
        # An empty path is no path, for the manifest as for the others.
        with DatasetExplorer(flow_output_file="", merged_store_path=f"{stem}.dataset") as d:
            assert d.flow_output_file is None
            assert d.parquet_file_path == str(stem) + ".infoset"


def test_no_cluster_unless_asked(merged: Path) -> None:
    # The vendor's own parameters do not start anything here.
    for params in ({"n_workers": 2, "threads_per_worker": 1}, {"disable": True}, {}):
        with DatasetExplorer(merged, dask_client_params=params) as ex:
            assert ex._dask_client is None
    if importlib.util.find_spec("distributed") is None:
        with (
            pytest.warns(CadstoreWarning, match="dask.distributed is not installed"),
            DatasetExplorer(merged, dask_client_params={"start_cluster": True}) as ex,
        ):
            assert ex._dask_client is None


def test_close_is_idempotent(merged: Path) -> None:
    ex = DatasetExplorer(merged)
    ex.get_group_data("faces")
    ex.close()
    ex.close()


# ---------------------------------------------------------------------------- structure
def test_groups_and_arrays(explorer: DatasetExplorer) -> None:
    assert explorer.available_groups() == {"faces", "edges", "graph", "faceface"}
    faces = explorer.available_arrays("faces")
    assert {"face_types", "face_areas", "face_discretization", "file_id_code_faces"} <= faces
    assert "item_offsets" not in faces
    assert explorer.available_arrays("graph") == {
        "edges_source",
        "edges_destination",
        "num_nodes",
        "file_id_code_graph",
    }


def test_group_data_is_lazy_xarray(explorer: DatasetExplorer, realistic_items: list[Any]) -> None:
    import xarray as xr

    ds = explorer.get_group_data("faces")
    assert isinstance(ds, xr.Dataset)
    assert ds.attrs["primary_dimension"] == "face"
    # Lazy: the variables are not numpy arrays until asked for.
    assert not isinstance(ds["face_areas"].variable._data, np.ndarray)
    items = _items(realistic_items)
    np.testing.assert_array_equal(
        ds["face_areas"].values, np.concatenate([i["face_areas"] for i in items])
    )
    codes = np.repeat(np.arange(len(items)), [len(i["face_indices"]) for i in items])
    np.testing.assert_array_equal(ds["file_id_code_faces"].values, codes)
    # num_nodes is stored once per item and presented once per graph edge (specified).
    arr = explorer.get_array_data("graph", "num_nodes")
    assert arr.dims == ("edge",)
    assert not isinstance(arr.variable._data, np.ndarray)
    per_edge = [np.full(len(i["graph"]["edges_source"]), i["graph"]["num_nodes"]) for i in items]
    np.testing.assert_array_equal(arr.values, np.concatenate(per_edge))
    np.testing.assert_array_equal(arr[5:40:3].values, np.concatenate(per_edge)[5:40:3])
    assert int(arr[7]) == np.concatenate(per_edge)[7]
    assert explorer.get_group_data("faces") is ds


def test_directory_dataset_uses_a_local_store(realistic_items: list[Any], tmp_path: Path) -> None:
    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:5]], str(out), directory=True)
    assert out.is_dir()
    with DatasetExplorer(merged_store_path=out) as ex:
        got = ex.get_array_data("edges", "edge_lengths").values
        want = np.concatenate([i["edge_lengths"] for _, i, _ in realistic_items[:5]])
        np.testing.assert_array_equal(got, want)
        # No .infoset beside it: the dataset carries its own tables.
        assert ex.parquet_file_path is None
        info = ex.get_file_info_all()
        assert info["name"].tolist() == ex.reader.item_names
        assert info["id"].tolist() == list(range(5))
    # A dataset without them (written before versions were recorded) has no infoset.
    for name in ("commit.json", "infoset.parquet", "attribset.parquet"):
        (out / name).unlink()
    with DatasetExplorer(merged_store_path=out) as ex:
        with pytest.raises(DatasetError, match=r"no \.infoset"):
            ex.get_file_info_all()
        assert "no .infoset" in ex.table_of_contents()


@pytest.mark.parametrize("layout", ["directory", "zip"])
def test_group_data_of_a_dataset_missing_a_shard_is_an_error(
    realistic_items: list[Any], tmp_path: Path, layout: str
) -> None:
    """zarr-python reads an absent chunk as fill values: through the explorer's xarray
    views a shard lost from a merged dataset read as zeros. It is an error naming it."""
    import pickle
    import zipfile

    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:5]], str(out), directory=True)
    member = "edges/edge_lengths/c/0"
    (out / member).unlink()
    if layout == "zip":
        # The same members in a zip, without the lost one.
        packed = tmp_path / "zip.dataset"
        with zipfile.ZipFile(packed, "w") as zf:
            for path in sorted(p for p in out.rglob("*") if p.is_file()):
                zf.write(path, path.relative_to(out).as_posix())
        out = packed
    with DatasetExplorer(merged_store_path=out) as ex:
        lazy = ex.get_array_data("edges", "edge_lengths")  # opening reads no chunk
        with pytest.raises(CorruptStoreError, match=f"chunk '{member}' is missing"):
            lazy.values  # noqa: B018 - reading is the point
        with pytest.raises(CorruptStoreError, match=f"chunk '{member}' is missing"):
            ex.get_group_data("edges").load()
        got = ex.get_array_data("edges", "edge_types").values  # the others still read
        want = np.concatenate([i["edge_types"] for _, i, _ in realistic_items[:5]])
        np.testing.assert_array_equal(got, want)
        # The view goes to Dask workers (a cluster) by pickle.
        store = pickle.loads(pickle.dumps(ex._open_zarr_store()))  # noqa: S301 - our own bytes
        assert type(store).__name__ == "CompleteStore" and store.location == str(out)
    # zarr's other ways of asking a store for chunks (which WrapperStore hands to the
    # wrapped store, past get) report it too, and still return what is there.
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    async def many(requests: list[Any]) -> dict[str, Any]:
        return {key: value async for key, value in store._get_many(requests)}

    proto = default_buffer_prototype()
    present = "edges/edge_types/c/0"
    if layout == "directory":
        assert (out / present).is_file()
    got = sync(store.get_partial_values(proto, [(present, None), ("zarr.json", None)]))
    assert got[0] is not None and got[0].to_bytes() == sync(store.get(present, proto)).to_bytes()
    assert sync(many([(present, proto, None)]))[present] is not None
    with pytest.raises(CorruptStoreError, match=f"chunk '{member}' is missing"):
        sync(store.get_partial_values(proto, [(present, None), (member, None)]))
    with pytest.raises(CorruptStoreError, match=f"chunk '{member}' is missing"):
        sync(many([(present, proto, None), (member, proto, None)]))
    assert sync(store.get_partial_values(proto, [("edges/nothing/zarr.json", None)])) == [None]


def _flip_member_byte(dataset: Path, member: str, at: int, *, keep_zip_crc: bool) -> None:
    """Flip one bit of ``member``'s byte ``at`` in a zip dataset: in place (the zip's
    CRC-32 no longer matches), or rewriting the member (a valid zip, whose chunk's own
    ``crc32c`` no longer matches)."""
    import zipfile

    raw = dataset.read_bytes()
    with zipfile.ZipFile(dataset) as zf:
        info = zf.getinfo(member)
        content = bytearray(zf.read(member))
        entries = [(i, zf.read(i)) for i in zf.infolist()]
    if keep_zip_crc:
        content[at] ^= 0x10
        with zipfile.ZipFile(dataset, "w") as zf:
            for entry, data in entries:
                zf.writestr(entry, bytes(content) if entry.filename == member else data)
        return
    assert info.compress_type == zipfile.ZIP_STORED
    start = info.header_offset + 30 + int.from_bytes(raw[info.header_offset + 26 :][:2], "little")
    start += int.from_bytes(raw[info.header_offset + 28 :][:2], "little")
    patched = bytearray(raw)
    patched[start + at] ^= 0x10
    dataset.write_bytes(bytes(patched))


@pytest.mark.parametrize("keep_zip_crc", [False, True], ids=["zip-crc", "chunk-crc32c"])
def test_group_data_of_a_damaged_chunk_is_a_corrupt_store_error(
    realistic_items: list[Any], tmp_path: Path, keep_zip_crc: bool
) -> None:
    """Found by a byte-flipping campaign: a flipped byte in a stored chunk, read through
    the explorer's xarray views, escaped as zipfile's ``BadZipFile`` (the zip's CRC-32)
    or zarr-python's bare ``ValueError`` (the chunk's ``crc32c``). It is a
    ``CorruptStoreError`` naming the dataset and the array."""
    out = tmp_path / "flip.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out))
    _flip_member_byte(out, "edges/edge_lengths/c/0", 10, keep_zip_crc=keep_zip_crc)
    with DatasetExplorer(merged_store_path=out) as ex:
        for read in (
            lambda: ex.get_array_data("edges", "edge_lengths").values,
            lambda: ex.get_group_data("edges").load(),
            lambda: ex.get_array_data("edges", "edge_lengths")[1:4].values,
        ):
            with pytest.raises(CorruptStoreError, match="edges/edge_lengths") as caught:
                read()
            assert str(out) in str(caught.value)
        got = ex.get_array_data("edges", "edge_types").values  # the others still read
        want = np.concatenate([i["edge_types"] for _, i, _ in realistic_items[:3]])
        np.testing.assert_array_equal(got, want)
        with pytest.raises(IndexError) as out_of_range:  # the caller's mistake stays theirs
            ex.get_array_data("edges", "edge_types")[10**6].values  # noqa: B018
        assert not isinstance(out_of_range.value, CorruptStoreError)


@pytest.mark.parametrize("keep_zip_crc", [False, True], ids=["zip-crc", "chunk-crc32c"])
def test_dask_backed_group_data_of_a_damaged_chunk_is_a_corrupt_store_error(
    realistic_items: list[Any], tmp_path: Path, keep_zip_crc: bool
) -> None:
    """With a Dask cluster the explorer's variables are Dask-backed, and a damaged chunk
    computed by Dask escaped as zipfile's ``BadZipFile`` or zarr-python's ``ValueError``:
    the guard of the eager views did not travel with the Dask tasks. Computed through
    the cluster (an in-process ``dask.distributed`` one) or Dask's local threads, it is
    a ``CorruptStoreError`` naming the dataset and the array; the file is left as it
    was."""
    pytest.importorskip("distributed")
    import dask

    out = tmp_path / "flip.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out))
    _flip_member_byte(out, "edges/edge_lengths/c/0", 10, keep_zip_crc=keep_zip_crc)
    damaged = out.read_bytes()
    params = {"start_cluster": True, "processes": False, "n_workers": 1}
    params |= {"threads_per_worker": 1, "dashboard_address": None}
    with DatasetExplorer(merged_store_path=out, dask_client_params=params) as ex:
        assert ex.get_array_data("edges", "edge_lengths").chunks is not None  # Dask-backed
        for scheduler in (None, "threads"):  # the explorer's cluster, then local threads
            with dask.config.set(scheduler=scheduler):
                for read in (
                    lambda: ex.get_array_data("edges", "edge_lengths").values,
                    lambda: ex.get_group_data("edges").compute(),
                    lambda: ex.get_array_data("edges", "edge_lengths")[1:4].compute(),
                ):
                    with pytest.raises(CorruptStoreError, match="edges/edge_lengths") as caught:
                        read()
                    assert str(out) in str(caught.value)
                got = ex.get_array_data("edges", "edge_types").values  # the others still read
                want = np.concatenate([i["edge_types"] for _, i, _ in realistic_items[:3]])
                np.testing.assert_array_equal(got, want)
                with pytest.raises(IndexError) as out_of_range:  # the caller's stays theirs
                    ex.get_array_data("edges", "edge_types")[10**6].values  # noqa: B018
                assert not isinstance(out_of_range.value, CorruptStoreError)
    assert out.read_bytes() == damaged


def test_group_metadata_zarr_python_refuses_is_a_corrupt_store_error(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """Found by a byte-flipping campaign: one flipped bit in the root ``zarr.json`` turned
    ``dimension_names`` into ``dimelsion_names``, which cadstore's reader ignores and
    zarr-python refuses: ``get_group_data`` let out zarr's ``MetadataValidationError``.
    It is a ``CorruptStoreError`` naming the dataset and the group."""
    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out), directory=True)
    root = json.loads((out / "zarr.json").read_text())
    meta = root["consolidated_metadata"]["metadata"]["edges/edge_lengths"]
    meta["dimelsion_names"] = meta.pop("dimension_names")
    (out / "zarr.json").write_text(json.dumps(root))
    with DatasetExplorer(merged_store_path=out) as ex:
        with pytest.raises(CorruptStoreError, match="edges") as caught:
            ex.get_group_data("edges")
        assert str(out) in str(caught.value)
        with pytest.raises(CorruptStoreError, match="edges"):
            ex.get_array_data("edges", "edge_types")


def test_group_metadata_zarr_python_refuses_with_a_type_error_is_a_corrupt_store_error(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """One flipped bit turning a codec's ``endian`` into ``endiao`` in the root
    ``zarr.json`` (cadstore's reader does not read codec configurations) makes
    zarr-python raise ``TypeError`` (``BytesCodec.__init__() got an unexpected keyword
    argument``) building the array's metadata: damage, a ``CorruptStoreError`` naming
    the dataset and the group, however like a wrong call it reads. Nothing is changed."""
    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out), directory=True)
    text = (out / "zarr.json").read_text()
    root = json.loads(text)
    meta = root["consolidated_metadata"]["metadata"]["edges/edge_lengths"]
    (inner,) = (c for c in meta["codecs"][0]["configuration"]["codecs"] if c["name"] == "bytes")
    inner["configuration"]["endiao"] = inner["configuration"].pop("endian")
    damaged = json.dumps(root)
    (out / "zarr.json").write_text(damaged)
    with DatasetExplorer(merged_store_path=out) as ex:
        with pytest.raises(CorruptStoreError, match=r"group edges .*TypeError") as caught:
            ex.get_group_data("edges")
        assert str(out) in str(caught.value)
        assert isinstance(caught.value.__cause__, TypeError)
    assert (out / "zarr.json").read_text() == damaged


def test_an_array_whose_node_type_is_damaged_is_a_corrupt_store_error(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """Found by a campaign over a directory dataset's consolidated metadata: one flipped
    bit turning an array's ``"node_type": "array"`` into ``"arraq"`` (no checksum covers
    a directory dataset's ``zarr.json``) made the reader take the array for a group, list
    it among the group's arrays, and refuse it as unknown: ``get_group_data`` raised
    ``DatasetError: unknown array 'edge_types' in group 'edges'; it has [..., 'edge_types',
    ...]``. A node that is neither an array nor a group is malformed metadata, refused on
    opening, naming the dataset and the node; nothing is changed."""
    from cadstore.dataset.reader import DatasetReader

    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out), directory=True)
    raw = bytearray((out / "zarr.json").read_bytes())
    entry = raw.index(b'"edges/edge_types"')
    at = raw.index(b'"array"', entry) + len(b'"arra')
    raw[at] ^= 0x08  # 'y' -> 'q'
    (out / "zarr.json").write_bytes(bytes(raw))
    said = r"dir\.dataset.*'edges/edge_types' has node_type 'arraq'"
    with pytest.raises(CorruptStoreError, match=said):
        DatasetReader(out)
    with pytest.raises(CorruptStoreError, match=said):
        DatasetExplorer(merged_store_path=out)
    assert (out / "zarr.json").read_bytes() == bytes(raw)


def test_an_array_shape_beyond_int64_is_a_corrupt_store_error(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """Found by the same campaign: a shape of ``2**70`` in an array's metadata was accepted
    by cadstore's reader, and ``get_group_data`` let out xarray's ``OverflowError:
    Python int too large to convert to C ssize_t``. No array holds more than ``2**63 - 1``
    elements: the metadata is refused, naming the dataset and the array."""
    from cadstore.dataset.reader import DatasetReader

    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out), directory=True)
    root = json.loads((out / "zarr.json").read_text())
    root["consolidated_metadata"]["metadata"]["edges/edge_lengths"]["shape"] = [2**70]
    damaged = json.dumps(root)
    (out / "zarr.json").write_text(damaged)
    said = r"dir\.dataset.*'edges/edge_lengths'.*more than 2\*\*63 - 1 elements"
    with DatasetReader(out) as reader, pytest.raises(CorruptStoreError, match=said):
        reader.array_meta("edges", "edge_lengths")
    with DatasetExplorer(merged_store_path=out) as ex, pytest.raises(CorruptStoreError, match=said):
        ex.get_group_data("edges")
    assert (out / "zarr.json").read_text() == damaged


@pytest.mark.parametrize(
    ("path", "group", "change"),
    [
        ("edges/edge_lengths", "edges", 1),  # rows: the group's item_offsets say 130
        ("graph/num_nodes", "graph", 1),  # one value per item
        ("faceface_upper/d2_distance", "faceface", -1),  # stored as a triangle
    ],
)
def test_an_array_whose_length_disagrees_with_its_group_is_a_corrupt_store_error(
    realistic_items: list[Any], tmp_path: Path, path: str, group: str, change: int
) -> None:
    """Found by review: an array whose shape in the consolidated metadata disagrees with
    its group (131 rows where the group's ``item_offsets`` and the array's own
    ``zarr.json`` say 130; no checksum covers a directory dataset's ``zarr.json``) was
    accepted by the reader, which read 131 rows, while the explorer refused the group
    (xarray's ``conflicting sizes for dimension``). The reader refuses it, naming the
    dataset and the array, and the explorer gives the reader's error; nothing is
    changed."""
    from cadstore.dataset.reader import DatasetReader

    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out), directory=True)
    root = json.loads((out / "zarr.json").read_text())
    root["consolidated_metadata"]["metadata"][path]["shape"][0] += change
    damaged = json.dumps(root)
    (out / "zarr.json").write_text(damaged)
    array = path.rsplit("/", 1)[1]
    said = rf"dir\.dataset: {path} holds \d+ (rows|values)"
    with DatasetReader(out) as reader:
        with pytest.raises(CorruptStoreError, match=said):
            reader.array_meta(group, array)
        with pytest.raises(CorruptStoreError, match=said):
            reader.read_item(0)
    with DatasetExplorer(merged_store_path=out) as ex, pytest.raises(CorruptStoreError, match=said):
        ex.get_group_data(group)
    assert (out / "zarr.json").read_text() == damaged


def test_a_wrong_call_opening_a_group_is_not_reported_as_a_damaged_file(
    realistic_items: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``TypeError`` of a wrong call to ``xr.open_zarr`` (an argument it does not take,
    as a change in xarray or a mistake in cadstore would make) was reported as
    ``CorruptStoreError: group ... cannot be opened with zarr-python``, sending the user
    after an intact file. It is let out as itself."""
    import xarray as xr

    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out), directory=True)
    open_zarr = xr.open_zarr

    def wrong_call(*args: Any, **kwargs: Any) -> Any:
        return open_zarr(*args, not_an_option=True, **kwargs)

    monkeypatch.setattr(xr, "open_zarr", wrong_call)
    with DatasetExplorer(merged_store_path=out) as ex:
        with pytest.raises(TypeError, match="not_an_option") as caught:
            ex.get_group_data("edges")
        assert not isinstance(caught.value, CorruptStoreError)


def test_a_group_zarr_python_is_wrongly_asked_for_is_not_reported_as_a_damaged_file(
    realistic_items: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: every ``KeyError`` opening a group was reported as
    ``CorruptStoreError: group ... cannot be opened with zarr-python``, also zarr-python's
    own for a group it was asked for that the dataset does not have (a wrong call, as a
    change in xarray or a mistake in cadstore would make). That is a
    :class:`~cadstore.errors.KeyNotFoundError` (a ``KeyError``) naming the group; a
    ``KeyError`` of damaged metadata (xarray's, for an array whose ``dimension_names``
    are gone) is still a ``CorruptStoreError`` naming the dataset and the group."""
    import xarray as xr

    from cadstore.errors import KeyNotFoundError

    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out), directory=True)
    open_zarr = xr.open_zarr

    def wrong_call(*args: Any, **kwargs: Any) -> Any:
        return open_zarr(*args, **{**kwargs, "group": "no_such_group"})

    with monkeypatch.context() as patched:
        patched.setattr(xr, "open_zarr", wrong_call)
        with DatasetExplorer(merged_store_path=out) as ex:
            with pytest.raises(KeyNotFoundError, match="'no_such_group'") as caught:
                ex.get_group_data("edges")
            assert not isinstance(caught.value, CorruptStoreError)
            assert caught.value.key == "no_such_group"
            assert str(out) in str(caught.value)

    root = json.loads((out / "zarr.json").read_text())
    root["consolidated_metadata"]["metadata"]["edges/edge_lengths"]["dimension_names"] = None
    damaged = json.dumps(root)
    (out / "zarr.json").write_text(damaged)
    with DatasetExplorer(merged_store_path=out) as ex:
        with pytest.raises(CorruptStoreError, match=r"group edges .*KeyError") as damage:
            ex.get_group_data("edges")
        assert str(out) in str(damage.value)
    assert (out / "zarr.json").read_text() == damaged


def test_a_node_the_dataset_has_and_zarr_python_does_not_find_is_a_corrupt_store_error(
    realistic_items: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the split above, which no test reached: zarr-python's own
    ``KeyError`` for a group the dataset has (cadstore's reader lists it; zarr-python's
    view of the consolidated metadata does not, as damage cadstore reads past would
    make) is damage, a ``CorruptStoreError`` naming the dataset and the group, not a
    ``KeyNotFoundError`` sending the user after a wrong call. zarr-python's parsed root
    is changed, not the file: nothing stored is changed."""
    import zarr

    from cadstore.errors import KeyNotFoundError

    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out), directory=True)
    before = (out / "zarr.json").read_bytes()
    open_consolidated = zarr.open_consolidated

    def without_edges(*args: Any, **kwargs: Any) -> Any:
        root = open_consolidated(*args, **kwargs)
        root.metadata.consolidated_metadata.metadata.pop("edges")
        return root

    with monkeypatch.context() as patched:
        patched.setattr(zarr, "open_consolidated", without_edges)
        with DatasetExplorer(merged_store_path=out) as ex:
            assert "edges" in ex.available_groups()
            with pytest.raises(CorruptStoreError, match=r"group edges .*KeyError") as caught:
                ex.get_group_data("edges")
            assert not isinstance(caught.value, KeyNotFoundError)
            assert str(out) in str(caught.value)
            assert "'edges' not found in consolidated metadata" in str(caught.value)
    assert (out / "zarr.json").read_bytes() == before


def test_a_dataset_whose_root_lost_its_consolidated_metadata_opens_without_a_warning(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """Found by review: cadstore's reader reads a dataset whose root ``zarr.json`` holds no
    consolidated copy (removed by another tool) through each node's own document, but
    ``get_group_data`` let xarray look for the copy, fail, and warn "Failed to open Zarr
    store with consolidated metadata" (a RuntimeWarning here, with filterwarnings=error).
    zarr-python is told to read what the reader read: no warning, the reader's values;
    nothing stored is changed."""
    from cadstore.dataset.reader import DatasetReader

    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out), directory=True)
    root = json.loads((out / "zarr.json").read_text())
    del root["consolidated_metadata"]
    stripped = json.dumps(root)
    (out / "zarr.json").write_text(stripped)
    with DatasetReader(out) as reader:
        assert not reader.consolidated
        want = reader.read_array("edges", "edge_lengths")
    with DatasetExplorer(merged_store_path=out) as ex:
        got = ex.get_group_data("edges")["edge_lengths"].values
    np.testing.assert_array_equal(got, want)
    assert (out / "zarr.json").read_text() == stripped


@pytest.mark.parametrize("directory", [False, True], ids=["zip", "directory"])
def test_close_after_the_group_failed_to_open(
    realistic_items: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, directory: bool
) -> None:
    """``xr.open_zarr`` failing before zarr-python opened the dataset's ``ZipStore`` left
    ``close()`` raising ``AttributeError: 'ZipStore' object has no attribute '_lock'``
    (zarr-python closes only a store it opened), and the dataset open. ``close()`` now
    closes what was opened; the explorer is closed and the dataset can be explored
    again."""
    import xarray as xr

    out = tmp_path / "parts.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out), directory=directory)

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("refused before opening the store")

    with monkeypatch.context() as patched:
        patched.setattr(xr, "open_zarr", refused)
        ex = DatasetExplorer(merged_store_path=out)
        with pytest.raises(CorruptStoreError, match="refused before opening"):
            ex.get_group_data("edges")
        ex.close()
    assert ex.reader.closed
    with DatasetExplorer(merged_store_path=out) as again:
        assert again.get_group_data("edges").sizes


def test_a_failing_close_still_closes_the_rest(realistic_items: list[Any], tmp_path: Path) -> None:
    """Found by helper F: ``close()`` closed the group views, the zarr-python store, the
    reader and the Dask cluster one after another, so one that failed to close left the
    dataset open and the cluster's processes running. Everything is closed, then the
    error is raised."""
    out = tmp_path / "parts.dataset"
    merge_items([str(p) for p, _, _ in realistic_items[:3]], str(out))
    closed: list[str] = []

    class Closing:
        def __init__(self, name: str) -> None:
            self.name = name

        def close(self) -> None:
            closed.append(self.name)

    ex = DatasetExplorer(merged_store_path=out)
    assert ex.get_group_data("edges").sizes
    store = ex._zarr_store
    assert store is not None

    def refused() -> None:
        raise OSError("the store would not close")

    store.close = refused  # type: ignore[method-assign]
    ex._dask_client, ex._dask_cluster = Closing("client"), Closing("cluster")  # type: ignore[assignment]
    with pytest.raises(OSError, match="would not close"):
        ex.close()
    assert ex.reader.closed
    assert closed == ["client", "cluster"]
    ex.close()  # closed: nothing left to close, no error
    assert closed == ["client", "cluster"]


def test_groups_of_per_item_values_and_strings_are_explored(tmp_path: Path) -> None:
    """A group of per-item values only (``volume``, one per item) read as an empty array
    (its values repeated once per row, and it has none); a group holding a per-item
    string made every view of the group raise "data type 'string' not understood"."""
    files = [
        write_arrays(
            tmp_path / f"{name}.zarr",
            {"volume": volume, "faces/x": np.arange(rows), "faces/title": title},
        )
        for name, volume, rows, title in (("a", 10.0, 2, "first"), ("b", 11.0, 3, "second"))
    ]
    out = tmp_path / "values.dataset"
    merge_items(files, out)
    with DatasetExplorer(merged_store_path=out) as ex:
        assert ex.get_array_data("volume", "volume").values.tolist() == [10.0, 11.0]
        assert ex.file_dataset(1, "volume")["volume"].values.tolist() == [11.0]
        faces = ex.get_group_data("faces")
        assert faces["title"].values.tolist() == ["first"] * 2 + ["second"] * 3
        assert faces["x"].values.tolist() == [0, 1, 0, 1, 2]
        assert ex.get_array_data("faces", "title").values.tolist()[2] == "second"


# ---------------------------------------------------------------------------- per item
def test_get_file_list(explorer: DatasetExplorer, realistic_items: list[Any]) -> None:
    items = _items(realistic_items)
    for face_type in (1, 3, 13):
        want = [c for c, i in enumerate(items) if np.any(i["face_types"] == face_type)]
        got = explorer.get_file_list("faces", lambda ds, t=face_type: ds["face_types"] == t)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)
    # A per-item array beside rows is presented once per row (an item without edges has
    # no row to match).
    want = [
        c
        for c, i in enumerate(items)
        if i["graph"]["num_nodes"] > 40 and len(i["graph"]["edges_source"])
    ]
    np.testing.assert_array_equal(
        explorer.get_file_list("graph", lambda ds: ds["num_nodes"] > 40), want
    )
    # A mask with trailing dimensions matches a row if any value matches.
    want = [c for c, i in enumerate(items) if np.any(i["face_pair_edges_path"] >= 20)]
    np.testing.assert_array_equal(
        explorer.get_file_list("faceface", lambda ds: ds["face_pair_edges_path"] >= 20), want
    )
    assert len(explorer.get_file_list("faces", lambda ds: ds["face_types"] == 99)) == 0
    with pytest.raises(DatasetError, match="boolean mask"):
        explorer.get_file_list("faces", lambda ds: ds["face_types"])
    with pytest.raises(DatasetError, match="rows"):
        explorer.get_file_list("faces", lambda ds: ds["face_types"][:3] == 1)


@pytest.mark.parametrize("where", ["face_types == 3", None, np.ones(3, dtype=bool)])
def test_get_file_list_with_a_where_that_is_not_callable_is_refused(
    explorer: DatasetExplorer, where: Any
) -> None:
    """A string (or anything else not callable) given as ``where`` raised a bare
    ``TypeError`` ('str' object is not callable) from inside; now a :class:`DatasetError`
    names the argument and what it must be."""
    with pytest.raises(DatasetError, match=r"where must be a callable.*got") as info:
        explorer.get_file_list("faces", where)
    assert type(where).__name__ in str(info.value)
    # The explorer still answers.
    assert len(explorer.get_file_list("faces", lambda ds: ds["face_types"] == 99)) == 0


def test_get_file_list_per_item_values_beside_rows(tmp_path: Path) -> None:
    """A mask joining ``num_nodes`` (stored per item) and ``edges_source`` (per edge) is
    true where one item's own edges match: ``num_nodes`` was on the ``item`` dimension,
    so xarray broadcast every item against every edge of the dataset and selected items
    for other items' edges."""
    files = [
        write_arrays(
            tmp_path / f"{name}.zarr",
            {"graph/num_nodes": np.int32(nodes), "graph/edges_source": np.array(edges)},
        )
        for name, nodes, edges in (
            ("a", 10, [0, 1]),
            ("b", 2, [20, 30]),
            ("c", 8, np.zeros(0, dtype=np.int64)),
            ("d", 7, [3, 15]),
        )
    ]
    out = tmp_path / "graph.dataset"
    merge_items(files, out)
    with DatasetExplorer(merged_store_path=out) as ex:
        both = ex.get_file_list("graph", lambda ds: (ds.num_nodes > 5) & (ds.edges_source > 10))
        np.testing.assert_array_equal(both, [3])
        # get_group_data presents num_nodes the same way, and gives the same items.
        data = ex.get_group_data("graph")
        rows = ((data.num_nodes > 5) & (data.edges_source > 10)).values
        np.testing.assert_array_equal(np.unique(data["file_id_code_graph"].values[rows]), [3])
        # num_nodes alone: once per edge, so c (no edges) has no row to match.
        np.testing.assert_array_equal(
            ex.get_file_list("graph", lambda ds: ds.num_nodes > 5), [0, 3]
        )


def test_get_file_list_of_a_group_without_rows(tmp_path: Path) -> None:
    """Every item has no faces: a mask with a trailing dimension (``face_centroids``, N x 3)
    has shape (0, 3) and gives no items; reshaping it with -1 raised numpy's "cannot
    reshape array of size 0"."""
    files = [
        write_arrays(
            tmp_path / f"e{k}.zarr",
            {
                "face_areas": np.zeros(0, dtype=np.float32),
                "face_centroids": np.zeros((0, 3), dtype=np.float32),
            },
        )
        for k in range(2)
    ]
    out = tmp_path / "empty.dataset"
    merge_items(files, out)
    with DatasetExplorer(merged_store_path=out) as ex:
        for where in (lambda ds: ds["face_areas"] > 0, lambda ds: ds["face_centroids"] > 0):
            got = ex.get_file_list("faces", where)
            assert got.dtype == np.int64
            assert got.tolist() == []


def test_file_dataset_matches_items_and_the_scan(
    explorer: DatasetExplorer, realistic_items: list[Any]
) -> None:
    items = _items(realistic_items)
    for code in (0, 7, len(items) - 1):
        item = items[code]
        faces = explorer.file_dataset(code, "faces")
        assert faces.attrs["file_id_code"] == code
        assert faces.attrs["name"] == explorer.decode_file_id_code(code)
        np.testing.assert_array_equal(faces["face_discretization"], item["face_discretization"])
        assert faces["face_discretization"].dims[0] == "face"
        np.testing.assert_array_equal(faces["file_id_code_faces"], code)
        n = len(item["face_indices"])
        pairs = explorer.file_dataset(code, "faceface")
        np.testing.assert_array_equal(pairs["d2_distance"], item["d2_distance"].reshape(n * n, -1))
        graph = explorer.file_dataset(code, "graph")
        assert graph["num_nodes"].dims == ("edge",)
        assert graph["num_nodes"].shape == graph["edges_source"].shape
        assert int(graph["num_nodes"][0]) == item["graph"]["num_nodes"]
        # The specified approach: materialise the group, select rows by file_id_code.
        whole = explorer.get_group_data("edges").load()
        scanned = whole.isel(edge=np.flatnonzero(whole["file_id_code_edges"].values == code))
        edges = explorer.file_dataset(code, "edges")
        for name in edges.data_vars:
            np.testing.assert_array_equal(edges[name].values, scanned[name].values)


def test_decode_file_id_code(explorer: DatasetExplorer, realistic_items: list[Any]) -> None:
    for code, (path, _, _) in enumerate(realistic_items):
        assert explorer.decode_file_id_code(np.int64(code)) == path.name[: -len(".zarr.data")]
    n = len(realistic_items)
    for bad in (-1, n, 2.5, "x"):
        with pytest.raises(DatasetError, match=r"file id code|valid codes"):
            explorer.decode_file_id_code(bad)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match=f"valid codes are 0..{n - 1}"):
        explorer.file_dataset(n, "faces")


# ---------------------------------------------------------------------------- distributions
def _brute_bins(values_per_item: list[np.ndarray], edges: np.ndarray) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(len(edges) - 1)]
    for code, values in enumerate(values_per_item):
        for b in range(len(edges) - 1):
            last = b == len(edges) - 2
            hit = (values >= edges[b]) & (
                (values <= edges[b + 1]) if last else (values < edges[b + 1])
            )
            if np.any(hit):
                out[b].append(code)
    return out


def test_create_distribution_numeric(explorer: DatasetExplorer, realistic_items: list[Any]) -> None:
    per_item = [i["face_areas"].astype(np.float64) for i in _items(realistic_items)]
    dist = explorer.create_distribution("face_areas", bins=7, group="faces")
    assert set(dist) == {"bin_edges", "hist", "file_id_codes_in_bins"}
    hist, edges = np.histogram(np.concatenate(per_item), bins=7)
    np.testing.assert_allclose(dist["bin_edges"], edges)
    np.testing.assert_array_equal(dist["hist"], hist)
    got = [c.tolist() for c in dist["file_id_codes_in_bins"]]
    assert got == _brute_bins(per_item, dist["bin_edges"])
    # Explicit edges; values outside them are not counted.
    dist = explorer.create_distribution("face_areas", bins=[0.0, 100.0, 1000.0])
    np.testing.assert_array_equal(
        dist["hist"], np.histogram(np.concatenate(per_item), bins=[0.0, 100.0, 1000.0])[0]
    )


def test_create_distribution_categorical_and_fallbacks(
    explorer: DatasetExplorer, realistic_items: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    items, metas = _items(realistic_items), _metas(realistic_items)
    dist = explorer.create_distribution("face_types", bins=None)
    all_types = np.concatenate([i["face_types"] for i in items])
    present = dist["hist"] > 0
    np.testing.assert_array_equal(dist["categories"][present], np.unique(all_types))
    np.testing.assert_array_equal(
        dist["hist"][present], np.unique(all_types, return_counts=True)[1]
    )
    for t, codes in zip(dist["categories"], dist["file_id_codes_in_bins"], strict=True):
        assert codes.tolist() == [c for c, i in enumerate(items) if t in i["face_types"]]
    # Not in "faces": found in another group, and logged.
    with caplog.at_level(logging.INFO, logger="cadstore.dataset.explorer"):
        dist = explorer.create_distribution("num_nodes", bins=4)
    assert "fallback group 'graph'" in caplog.text
    assert dist["hist"].sum() == len(items)
    # Not in any group: an infoset column (categorical strings and integers).
    dist = explorer.create_distribution("category", bins=None)
    cats = sorted({m["category"] for m in metas})
    assert dist["categories"].tolist() == cats
    for cat, codes in zip(cats, dist["file_id_codes_in_bins"], strict=True):
        assert codes.tolist() == [c for c, m in enumerate(metas) if m["category"] == cat]
    dist = explorer.create_distribution("file_label", bins=None)
    assert dist["hist"].sum() == len(metas)
    with pytest.raises(DatasetError, match="bins=None"):
        explorer.create_distribution("category", bins=5)
    with pytest.raises(DatasetError, match=r"unknown key 'nope'.*face_areas.*file_label"):
        explorer.create_distribution("nope")
    with pytest.raises(DatasetError, match=r"unknown group 'Labels'.*faces"):
        explorer.create_distribution("face_types", group="Labels")


def test_distributions_of_non_finite_and_huge_values(tmp_path: Path) -> None:
    """NaN and infinities, uint64 values from 2**63 and whole floats as large as 1e20 raised
    OverflowError or numpy's "range is not finite" (bins=None and bins=k): they are
    binned, or left out of every bin when they are not finite."""
    files = []
    for name, v, u, w in (
        ("a", [0.5, np.inf, 2.0], [2**64 - 1], [1e20]),
        ("b", [np.nan, 1.0, 1.0], [2**63], [2.0]),
    ):
        arrays = {"faces/v": np.array(v), "u": np.array(u, np.uint64), "w": np.array(w)}
        files.append(write_arrays(tmp_path / f"{name}.zarr", arrays, allow_nan=True))
    merge_items(files, tmp_path / "odd.dataset")
    with DatasetExplorer(merged_store_path=tmp_path / "odd.dataset") as ex:
        dist = ex.create_distribution("v", bins=3)
        assert dist["bin_edges"].tolist() == [0.5, 1.0, 1.5, 2.0]
        assert dist["hist"].tolist() == [1, 2, 1]  # NaN and inf in no bin
        assert [c.tolist() for c in dist["file_id_codes_in_bins"]] == [[0], [1], [0]]
        for key, group in (("u", "u"), ("w", "w")):
            assert ex.create_distribution(key, bins=None, group=group)["hist"].sum() == 2
        dist = ex.create_distribution("v", bins=None)
        assert dist["categories"].tolist() == [0.5, 1.0, 2.0, np.inf]  # NaN in no bin
        assert dist["hist"].tolist() == [1, 2, 1, 1]
        dist = ex.create_distribution("u", bins=None, group="u")
        assert dist["categories"].tolist() == [2**63, 2**64 - 1]
        assert ex.create_distribution("u", bins=2, group="u")["hist"].tolist() == [1, 1]


def test_infoset_columns_with_a_missing_value_keep_their_type(tmp_path: Path) -> None:
    """A boolean metadata column one item lacks came back as the strings 'True'/'False'
    (categories of strings, and ``[True]`` refused as a category), and an integer one as
    floats (2**53 + 1 rounded): pandas makes them objects and floats."""
    from cadstore import OptStorage

    files = []
    for k, (flag, count) in enumerate(((True, 2**53 + 1), (False, None), (None, 3), (True, 3))):
        with OptStorage(tmp_path / f"m{k}.zarr") as storage:
            storage.save_data("face_areas", np.arange(k + 1, dtype=np.float32))
            if flag is not None:
                storage.save_metadata("flag", flag)
            if count is not None:
                storage.save_metadata("count", count)
            storage.compress_store()
        files.append(str(tmp_path / f"m{k}.zarr.data"))
    cadstore.merge(files, str(tmp_path / "x.dataset"))
    with DatasetExplorer(flow_output_file=tmp_path / "x.flow") as ex:
        values, codes = ex.key_values("flag")
        assert values.dtype == np.bool_ and values.tolist() == [True, False, True]
        assert codes.tolist() == [0, 1, 3]
        assert ex.create_distribution("flag", bins=None)["categories"].tolist() == [False, True]
        matrix, _, _ = ex.build_membership_matrix(None, "flag", [True])
        assert matrix.ravel().tolist() == [1, 0, 0, 1]
        values, codes = ex.key_values("count")
        assert values.dtype.kind == "i" and values.tolist() == [2**53 + 1, 3, 3]
        assert codes.tolist() == [0, 2, 3]
        dist = ex.create_distribution("count", bins=None)
        assert dist["categories"].tolist() == [3, 2**53 + 1]


def test_build_membership_matrix(explorer: DatasetExplorer, realistic_items: list[Any]) -> None:
    items = _items(realistic_items)
    matrix, codes, cats = explorer.build_membership_matrix("faces", "face_types", None)
    assert matrix.shape == (len(items), len(cats)) and matrix.dtype == np.uint8
    np.testing.assert_array_equal(codes, np.arange(len(items)))
    for code, item in enumerate(items):
        assert set(cats[matrix[code] == 1].tolist()) == set(np.unique(item["face_types"]).tolist())
    counts, _, cats = explorer.build_membership_matrix(
        "faces", "face_types", [1, 0, 99], as_counts=True
    )
    assert cats.tolist() == [1, 0, 99]
    for code, item in enumerate(items):
        want = [np.sum(item["face_types"] == c) for c in (1, 0, 99)]
        assert counts[code].tolist() == want
    binned, _, edges = explorer.build_membership_matrix("graph", "num_nodes", 3)
    assert binned.shape == (len(items), 3) and len(edges) == 4
    assert np.all(binned.sum(axis=1) == 1)
    labels, _, cats = explorer.build_membership_matrix(None, "file_label")
    assert labels.sum() == len(items)
    with pytest.raises(DatasetError, match="do not match"):
        explorer.build_membership_matrix("faces", "face_types", ["plane"])
    # A category the values cannot hold was cast to them and counted the items of
    # another: 1.5 as 1, a name one character longer as the name cut to the values'
    # width, and a bare string was split into characters.
    with pytest.raises(DatasetError, match=r"\[1\.5, 2\.7\] are not values 'face_types'"):
        explorer.build_membership_matrix("faces", "face_types", [1.5, 2.7, 3])
    for single in ("13", 2.5):
        with pytest.raises(DatasetError, match="give None, a number of bins or a list"):
            explorer.build_membership_matrix("faces", "face_types", single)  # type: ignore[arg-type]
    # Floats are matched as the values' dtype holds them: a float32 value asked as its
    # shortest decimal (0.1 for float32(0.1)) counts the items holding it.
    areas, area_codes = explorer.key_values("face_areas", "faces")
    assert areas.dtype == np.float32
    some = areas[0]
    asked = float(str(some))
    assert asked != float(some)  # not the float64 of the stored float32
    hits, _, _ = explorer.build_membership_matrix("faces", "face_areas", [asked])
    assert hits[:, 0].tolist() == [
        int(c in set(area_codes[areas == some].tolist())) for c in range(len(hits))
    ]
    with pytest.raises(DatasetError, match=r"\[1e\+300\] are not values"):
        explorer.build_membership_matrix("faces", "face_areas", [1e300])
    values, _ = explorer.key_values("name")
    longest = max(values.tolist(), key=len)
    longer = longest + "x"
    if values.dtype.kind == "U":  # of the longest name's width: a longer one is refused
        with pytest.raises(DatasetError, match=f"{longer!r}"):
            explorer.build_membership_matrix(None, "name", [longer, longest])
    else:  # held as it is: it matches no item
        named, _, cats = explorer.build_membership_matrix(None, "name", [longer, longest])
        assert cats.tolist() == [longer, longest] and named[:, 0].sum() == 0
    assert explorer.build_membership_matrix(None, "name", [longest])[0].sum() == 1


# ---------------------------------------------------------------------------- tables
def test_file_info(explorer: DatasetExplorer, realistic_items: list[Any]) -> None:
    info = explorer.get_file_info_all()
    assert len(info) == len(realistic_items)
    assert info["id"].tolist() == list(range(len(realistic_items)))
    assert {"name", "description", "size_cadfile", "file_label", "subset"} <= set(info.columns)
    info.loc[0, "name"] = "changed"
    assert explorer.get_file_info_all().loc[0, "name"] != "changed"
    row = explorer.get_parquet_info_by_code(4)
    assert len(row) == 1
    assert row["size_cadfile"].item() == realistic_items[4][2]["size_cadfile"]
    assert row["name"].item() == explorer.decode_file_id_code(4)
    with pytest.raises(DatasetError, match="valid codes"):
        explorer.get_parquet_info_by_code(len(realistic_items))


def test_get_descriptions(explorer: DatasetExplorer) -> None:
    table = explorer.get_descriptions("category")
    assert list(table.columns) == ["id", "name", "description", "table_name"]
    assert set(table["table_name"]) == {"category"}
    assert len(explorer.get_descriptions("category", key_id=0)) == 1
    first = table["name"].iloc[0]
    assert explorer.get_descriptions("category", key_id=first)["id"].tolist() == [
        table["id"].iloc[0]
    ]
    both = explorer.get_descriptions("*LABEL*", use_wildchar=True)
    assert set(both["table_name"]) == {"file_label"}
    hit = explorer.get_descriptions("cat*", key_id=first[:2] + "*", use_wildchar=True)
    assert first in hit["name"].tolist()
    with pytest.raises(DatasetError, match=r"unknown attribute table 'face_labels'.*category"):
        explorer.get_descriptions("face_labels")
    with pytest.raises(DatasetError, match=r"unknown attribute table 'zz\*'"):
        explorer.get_descriptions("zz*", use_wildchar=True)
    with pytest.raises(DatasetError, match=r"no entry 12345.*valid entries"):
        explorer.get_descriptions("category", key_id=12345)


def test_stream_cache_paths(merged: Path, explorer: DatasetExplorer, tmp_path: Path) -> None:
    paths = explorer.get_stream_cache_paths()
    assert list(paths.columns) == ["id", "name", "stream_cache_png", "stream_cache_3d"]
    assert (paths["stream_cache_png"] == "").all() and (paths["stream_cache_3d"] == "").all()
    one = explorer.get_stream_cache_paths(3)
    assert one["id"].tolist() == [3]
    with pytest.raises(DatasetError):
        explorer.get_stream_cache_paths(-1)
    # An infoset that has previews gives them back.
    info = explorer.get_file_info_all()
    info["stream_cache_png"] = [f"png/{n}.png" for n in info["name"]]
    info.to_parquet(tmp_path / "p.infoset")
    with DatasetExplorer(
        merged_store_path=merged.with_suffix(".dataset"), parquet_file_path=tmp_path / "p.infoset"
    ) as ex:
        got = ex.get_stream_cache_paths(2)
        assert got["stream_cache_png"].item() == f"png/{info['name'][2]}.png"
        assert got["stream_cache_3d"].item() == ""


def test_table_of_contents(explorer: DatasetExplorer, capsys: pytest.CaptureFixture[str]) -> None:
    explorer.print_table_of_contents()
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[:2] == ["", "--- Dataset Table of Contents ---"]
    for group in ("FACES_GROUP:", "EDGES_GROUP:", "GRAPH_GROUP:", "FACEFACE_GROUP:"):
        assert group in lines
    n_faces = explorer.get_group_data("faces").sizes["face"]
    assert (
        f"  FACE_DISCRETIZATION_DATA: Shape: ({n_faces}, 25, 7), Dims: ('face', "
        f"'face_discretization_dim_1', 'face_discretization_dim_2'), Size: {n_faces * 175}"
    ) in lines
    assert "  FILE_ID_CODE_FACES_DATA: Shape:" in out
    assert "ITEM_OFFSETS" not in out
    assert "Columns in file_info:" in lines
    header = lines[lines.index("Columns in file_info:") + 1].split()
    assert "file_label" in header and "name" in header


def test_array_statistics(explorer: DatasetExplorer, realistic_items: list[Any]) -> None:
    values = np.concatenate([i["edge_lengths"] for i in _items(realistic_items)]).astype(float)
    stats = explorer.get_array_statistics("edges", "edge_lengths")
    assert set(stats) == {"mean", "std", "min", "max", "median", "q25", "q75"}
    assert stats["mean"] == pytest.approx(values.mean())
    assert stats["std"] == pytest.approx(values.std())
    assert stats["median"] == pytest.approx(np.median(values))
    assert stats["q25"] == pytest.approx(np.percentile(values, 25))
    assert (stats["min"], stats["max"]) == (values.min(), values.max())
    with pytest.raises(DatasetError, match=r"unknown array 'edge_area' in group 'edges'"):
        explorer.get_array_statistics("edges", "edge_area")


def _statistics_dataset(tmp_path: Path, parts: list[np.ndarray] | None = None) -> Path:
    """A dataset whose ``faces/x`` spans many blocks of the statistics: by default
    2,000,000 float32 values over two items, some NaN, -0.0, ties and values far apart;
    else the items' ``parts``."""
    if parts is None:
        rng = np.random.default_rng(56)
        parts = []
        for k in range(2):
            x = (rng.normal(size=1_000_000) * 10**k).astype(np.float32)
            x[rng.integers(0, x.size, 5000)] = np.nan
            x[rng.integers(0, x.size, 5000)] = -0.0
            x[rng.integers(0, x.size, 50_000)] = 1.5  # ties
            x[:3] = (-2e4, 3e4, 3e-38) if k else (7, 7, 7)
            parts.append(x)
    files = [
        write_arrays(tmp_path / f"s{k}.zarr", {"faces/x": x}, allow_nan=True)
        for k, x in enumerate(parts)
    ]
    merge_items(files, tmp_path / "s.dataset")
    return tmp_path / "s.dataset"


def _with_infinities(kind: str) -> list[np.ndarray]:
    """Two items of 20,000 float64 values each (160 KB, many blocks of 1 KiB), with
    +inf, -inf, both, only inf, or values near float64's largest (whose sums overflow
    in numpy, or not), and -0.0 beside 0.0."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=40_000) * 1e3
    x[rng.integers(0, x.size, 100)] = np.nan
    if kind in ("inf", "both"):
        x[[5, 25_000]] = np.inf
    if kind in ("-inf", "both"):
        x[[17, 39_000]] = -np.inf
    if kind == "all inf":
        x[:] = np.inf
    if kind == "near max, overflowing":
        x = rng.uniform(1e305, 1.7e308, size=40_000)
    if kind == "near max, one a block":  # each block's sum finite, numpy's overflows
        x[:] = 0.0
        x[::1000] = 1.7e308
    if kind == "near max, finite":  # numpy's pairwise sums stay finite
        x = rng.uniform(-1e303, 1e303, size=40_000)
    if kind == "signed zeros":
        x = np.array([-0.0, 0.0] * 19_999 + [1.0, 2.0])
    return [x[:20_000], x[20_000:]]


def _same(a: float, b: float) -> bool:
    """Equal, sign of zero included, or both NaN."""
    return (np.isnan(a) and np.isnan(b)) or (a == b and np.signbit(a) == np.signbit(b))


@pytest.mark.parametrize(
    "kind",
    [
        None,
        "inf",
        "-inf",
        "both",
        "all inf",
        "near max, overflowing",
        "near max, one a block",
        "near max, finite",
        "signed zeros",
    ],
)
def test_array_statistics_of_many_blocks_are_numpys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str | None
) -> None:
    """Read block by block (here blocks of 1 KiB to 1 MiB, and one block of all), or
    whole (within its budget), the statistics are those of numpy over the whole array:
    ``mean`` ``np.nanmean``'s to the bit (inf, -inf or NaN where numpy's is: found by
    review, the blocks' update gave NaN for an array holding +inf, and a finite mean
    where numpy's sum overflows), min, max and the quantiles exactly, sign of zero
    included (found by review: q25 of -0.0 beside 0.0 was -0.0, numpy's 0.0), std
    ``np.nanstd``'s (NaN where numpy's is, up to the rounding of float sums);
    ``compute_statistics`` gives the same and the count of values (NaN left out)."""
    import cadstore.dataset.explorer as explorer_module

    out = _statistics_dataset(tmp_path, None if kind is None else _with_infinities(kind))
    with DatasetExplorer(merged_store_path=out) as ex, np.errstate(all="ignore"):
        whole = ex.reader.read_array("faces", "x").astype(np.float64)
        kept = whole[~np.isnan(whole)]
        want = {
            "mean": np.nanmean(whole),
            "std": np.nanstd(whole),
            "min": kept.min(),
            "max": kept.max(),
            **dict(zip(("q25", "median", "q75"), np.percentile(kept, [25, 50, 75]), strict=True)),
        }
        for block_bytes, whole_bytes in (
            (1 << 10, 0),
            (1 << 16, 0),
            (1 << 20, 0),
            (1 << 10, 1 << 30),
        ):
            monkeypatch.setattr(explorer_module, "_STATISTICS_BLOCK_BYTES", block_bytes)
            monkeypatch.setattr(explorer_module, "_STATISTICS_WHOLE_BYTES", whole_bytes)
            stats = ex.get_array_statistics("faces", "x")
            for name in ("mean", "q25", "median", "q75"):
                assert _same(stats[name], want[name]), (name, stats[name], want[name])
            assert (stats["min"], stats["max"]) == (want["min"], want["max"])
            if np.isfinite(want["std"]):
                assert stats["std"] == pytest.approx(want["std"], rel=1e-9)
            else:
                assert _same(stats["std"], want["std"]), (stats["std"], want["std"])
            table = ex.compute_statistics("faces", "x")
            assert table.loc["x", "count"] == kept.size
            row = dict(table.loc["x"].drop("count"))
            assert all(_same(row[name], stats[name]) for name in stats)


def _counting_reads(
    ex: DatasetExplorer, monkeypatch: pytest.MonkeyPatch
) -> dict[str, list[tuple[int, int]]]:
    """The rows ``ex.reader.read_rows`` reads from now on, per array."""
    read: dict[str, list[tuple[int, int]]] = {}
    read_rows = ex.reader.read_rows

    def counted(group: str, array: str, start: int, stop: int) -> np.ndarray:
        read.setdefault(f"{group}/{array}", []).append((start, stop))
        return read_rows(group, array, start, stop)

    monkeypatch.setattr(ex.reader, "read_rows", counted)
    return read


def _times_read(ranges: list[tuple[int, int]], rows: int) -> int:
    """How many times ``ranges`` read every one of ``rows`` rows, each as often (0 when
    some rows were read more often than others)."""
    times = np.zeros(rows, dtype=np.int64)
    for start, stop in ranges:
        times[start:stop] += 1
    return int(times[0]) if (times == times[0]).all() else 0


def test_array_statistics_read_an_array_once_within_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: statistics read an array up to 7 times (the quantiles' radix
    passes read every block again), each a download and decoding on an object store. An
    array within ``_STATISTICS_WHOLE_BYTES`` (2,000,000 values) is read once; above it,
    an array of few distinct values (int8) once too, one of many (2,000,000 float32) at
    most 3 times, and one of many whose quantiles fall on a value most rows hold twice
    (the search stops at a digit of one distinct value). The quantiles are numpy's."""
    import cadstore.dataset.explorer as explorer_module

    out = _statistics_dataset(tmp_path / "floats")
    rng = np.random.default_rng(3)
    small = [rng.integers(-100, 100, size=100_000).astype(np.int8) for _ in range(2)]
    ints = _statistics_dataset(tmp_path / "ints", small)
    tied = rng.integers(-(10**6), 10**6, size=600_000).astype(np.float64)
    tied[rng.random(tied.size) < 0.7] = 1.5
    ties = _statistics_dataset(tmp_path / "ties", [tied[:300_000], tied[300_000:]])
    cases = ((out, None, 1), (ints, 1 << 16, 1), (out, 1 << 20, 3), (ties, 1 << 16, 2))
    for path, budget, most in cases:
        if budget is not None:
            monkeypatch.setattr(explorer_module, "_STATISTICS_WHOLE_BYTES", budget)
        with DatasetExplorer(merged_store_path=path) as ex:
            rows = int(ex.reader.array_meta("faces", "x").shape[0])
            assert (8 * rows > explorer_module._STATISTICS_WHOLE_BYTES) == (budget is not None)
            whole = ex.reader.read_array("faces", "x").astype(np.float64)
            want = np.percentile(whole[~np.isnan(whole)], [25, 50, 75])
            read = _counting_reads(ex, monkeypatch)
            stats = ex.get_array_statistics("faces", "x")
            assert 1 <= _times_read(read["faces/x"], rows) <= most, (path, budget)
            assert [stats["q25"], stats["median"], stats["q75"]] == list(want)


def test_array_statistics_hold_a_block_not_the_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: ``get_array_statistics`` read the whole array and made a float64
    copy of it (16 MB of float64 values here, beside the array's 8 MB: 24 MB at once).
    Read block by block (an array above ``_STATISTICS_WHOLE_BYTES``, made small here),
    what it holds at once is well below half the float64 values' size. Measured after a
    first call, so that the reader's chunk cache is what it will stay."""
    import tracemalloc

    import cadstore.dataset.explorer as explorer_module

    monkeypatch.setattr(explorer_module, "_STATISTICS_WHOLE_BYTES", 1 << 20)
    out = _statistics_dataset(tmp_path)
    with DatasetExplorer(merged_store_path=out) as ex:
        size_as_float64 = 8 * int(np.prod(ex.reader.array_meta("faces", "x").shape))
        first = ex.get_array_statistics("faces", "x")
        tracemalloc.start()
        try:
            again = ex.get_array_statistics("faces", "x")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert again == pytest.approx(first, nan_ok=True)
        assert peak < size_as_float64 / 2, (peak, size_as_float64)


# ---------------------------------------------------------------------------- bad input
def test_unknown_groups_and_arrays_name_the_choices(explorer: DatasetExplorer) -> None:
    with pytest.raises(DatasetError, match=r"unknown group 'face'.*'faceface', 'faces'"):
        explorer.available_arrays("face")
    with pytest.raises(DatasetError, match="unknown group 'Labels'"):
        explorer.get_group_data("Labels")
    with pytest.raises(DatasetError, match=r"unknown array 'x' in group 'faces'.*face_areas"):
        explorer.get_array_data("faces", "x")
    with pytest.raises(DatasetError, match="unknown array 'item_offsets'"):
        explorer.get_array_data("faces", "item_offsets")
    with pytest.raises(DatasetError, match="unknown group"):
        explorer.get_file_list("nope", lambda ds: ds["x"] == 1)
    with pytest.raises(DatasetError, match="unknown group"):
        explorer.file_dataset(0, "nope")


def _copy_flow(merged: Path, dest: Path, skip: str | None = None) -> Path:
    dest.mkdir()
    for suffix in (".flow", ".dataset", ".infoset", ".attribset"):
        if suffix != skip:
            shutil.copy(merged.with_suffix(suffix), dest / f"parts{suffix}")
    return dest / "parts.flow"


@pytest.mark.parametrize("missing", [".dataset", ".infoset", ".attribset"])
def test_manifest_with_a_missing_file(merged: Path, tmp_path: Path, missing: str) -> None:
    flow = _copy_flow(merged, tmp_path / "copy", skip=missing)
    with pytest.raises(
        CorruptStoreError, match=rf"parts\.flow: .*'parts\{missing}'.*does not exist"
    ):
        DatasetExplorer(flow_output_file=flow)


def test_bad_manifests_and_paths(merged: Path, realistic_items: list[Any], tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="pass flow_output_file"):
        DatasetExplorer()
    with pytest.raises(CorruptStoreError, match=r"no such \.flow manifest"):
        DatasetExplorer(flow_output_file=tmp_path / "none.flow")
    (tmp_path / "bad.flow").write_text("{not json")
    with pytest.raises(CorruptStoreError, match="invalid JSON"):
        DatasetExplorer(flow_output_file=tmp_path / "bad.flow")
    (tmp_path / "list.flow").write_text("[1, 2]")
    with pytest.raises(CorruptStoreError, match="not a JSON object"):
        DatasetExplorer(flow_output_file=tmp_path / "list.flow")
    (tmp_path / "empty.flow").write_text(json.dumps({"flow_info": None}))
    with pytest.raises(CorruptStoreError, match="names no dataset"):
        DatasetExplorer(flow_output_file=tmp_path / "empty.flow")
    # An item file and a missing path are not datasets.
    with pytest.raises(CorruptStoreError, match="not a cadstore dataset"):
        DatasetExplorer(merged_store_path=realistic_items[0][0])
    with pytest.raises(CorruptStoreError, match="no such dataset"):
        DatasetExplorer(merged_store_path=tmp_path / "nothing.dataset")
    with pytest.raises(CorruptStoreError, match="parquet_file_path: no such file"):
        DatasetExplorer(
            merged_store_path=merged.with_suffix(".dataset"), parquet_file_path=tmp_path / "x"
        )


def test_a_mistyped_key_names_the_key_meant(explorer: DatasetExplorer, merged: Path) -> None:
    """``create_distribution("face_area")`` and ``split("file_lable")`` listed every
    array and column, the list cut after 20 arrays, and left the user to spot the one
    meant; the error names it first. A name like none gets no guess."""
    from cadstore.dataset import DatasetLoader

    with pytest.raises(
        DatasetError, match=r"unknown key 'face_area' \(did you mean 'face_areas'\?\)"
    ):
        explorer.create_distribution("face_area", bins=5, group="faces")
    with DatasetLoader(flow_output_file=merged) as loader:
        before = loader.explorer.get_file_info_all()["subset"].tolist()
        with pytest.raises(DatasetError, match=r"did you mean 'file_label'\?"):
            loader.split("file_lable", train=0.5, validation=0.25, test=0.25)
        assert loader.explorer.get_file_info_all()["subset"].tolist() == before
    with pytest.raises(DatasetError) as info:
        explorer.create_distribution("zzzz")
    assert "did you mean" not in str(info.value)


# ---------------------------------------------------------------------------- later documentation
# query_cross_group, filter_files_by_metadata and compute_statistics: named by the
# specified system's later documentation only, and missing here until now.

#: Faces of each generated part; part 1 has none, part 2 has faces but no Labels rows.
_PART_FACES = (3, 0, 4, 2, 5, 1)
_UNLABELLED = (1, 2)


def _generated_parts(root: Path) -> list[dict[str, Any]]:
    """Write six parts with a ``faces`` group, a per-part ``Labels`` group (one row per
    part; none for ``_UNLABELLED``), a per-item ``n_holes`` and infoset metadata (a
    ``material`` missing for part 5); return what each holds."""
    from cadstore import OptStorage

    rng = np.random.default_rng(55)
    parts = []
    for k, n_faces in enumerate(_PART_FACES):
        areas = rng.random(n_faces).astype(np.float32)
        if k == 3:
            areas[1] = np.nan
        part: dict[str, Any] = {
            "faces/face_areas": areas,
            "faces/face_types": rng.integers(0, 9, n_faces).astype(np.int32),
            "faces/face_centroids": rng.random((n_faces, 3)).astype(np.float32),
            "n_holes": np.int32(k + 2),
        }
        if k not in _UNLABELLED:
            part["Labels/part_label"] = np.array([10 + k], dtype=np.int32)
            part["Labels/weight"] = np.array([0.25 * k])
            part["Labels/flag"] = np.array([k % 2 == 0])
            part["Labels/face_types"] = np.array([100 * k], dtype=np.int64)  # a clash
            part["Labels/face_centroids"] = np.full((1, 4), float(k))  # name and dim clash
        meta = {"material": ("steel", "brass")[k % 2], "mass": 1.5 * k}
        if k == 5:
            del meta["material"]
        with OptStorage(root / f"part{k}.zarr", allow_nan=True) as storage:
            for key, value in part.items():
                storage.save_data(key, value)
            for key, value in meta.items():
                storage.save_metadata(key, value)
            storage.compress_store()
        parts.append({**part, **meta})
    cadstore.merge([str(root / f"part{k}.zarr.data") for k in range(6)], str(root / "p.dataset"))
    return parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The generated parts merged once: (the .flow, what each part holds)."""
    root = tmp_path_factory.mktemp("parts")
    return root / "p.flow", _generated_parts(root)


def _face_rows(parts: list[dict[str, Any]], key: str, missing: Any = np.nan) -> list[Any]:
    """Each face's part's ``key`` (``missing`` for a part without it), face by face."""
    return [part.get(key, missing) for part in parts for _ in range(len(part["faces/face_areas"]))]


def _backend(array: Any) -> Any:
    """The backend array below xarray's lazy wrappers of ``array`` (a DataArray)."""
    node = array.variable._data
    while hasattr(node, "array"):
        node = node.array
    return node


def test_query_cross_group_joins_each_parts_row_onto_its_faces(
    parts: tuple[Path, list[dict[str, Any]]],
) -> None:
    flow, made = parts
    with DatasetExplorer(flow_output_file=flow) as ex:
        faces = ex.get_group_data("faces")
        joined = ex.query_cross_group("faces", "Labels")
        # The faces' own arrays are those of the group, read by the same backend array,
        # and nothing of them was read.
        assert _backend(joined["face_areas"]) is _backend(faces["face_areas"])
        assert not isinstance(joined["face_areas"].variable._data, np.ndarray)
        assert not isinstance(faces["face_areas"].variable._data.array, np.ndarray)
        assert "part_label" not in ex.get_group_data("faces")  # the cached group unchanged
        # A part without a Labels row gets NaN: integers and booleans become float64.
        labels = [float(v[0]) for v in _face_rows(made, "Labels/part_label", [np.nan])]
        assert not isinstance(joined["part_label"].variable._data, np.ndarray)  # lazy
        assert joined["part_label"].dtype == np.float64
        np.testing.assert_array_equal(joined["part_label"].values, labels)
        np.testing.assert_array_equal(joined["part_label"][2:6].values, labels[2:6])
        np.testing.assert_array_equal(
            joined["part_label"].isel(face=[7, 0, 7]).values, [labels[7], labels[0], labels[7]]
        )
        flags = [float(v[0]) for v in _face_rows(made, "Labels/flag", [np.nan])]
        assert joined["flag"].dtype == np.float64
        np.testing.assert_array_equal(joined["flag"].values, flags)
        weights = [v[0] for v in _face_rows(made, "Labels/weight", [np.nan])]
        assert joined["weight"].dtype == np.float64
        np.testing.assert_array_equal(joined["weight"].values, weights)
        # Names the faces have take the group's prefix, as does a trailing dimension
        # the faces use with another length.
        np.testing.assert_array_equal(
            joined["face_types"].values, np.concatenate([p["faces/face_types"] for p in made])
        )
        types = [float(v[0]) for v in _face_rows(made, "Labels/face_types", [np.nan])]
        np.testing.assert_array_equal(joined["Labels_face_types"].values, types)
        centroids = joined["Labels_face_centroids"]
        assert centroids.dims == ("face", "Labels_face_centroids_dim_1")
        assert joined["face_centroids"].dims == ("face", "face_centroids_dim_1")
        rows = _face_rows(made, "Labels/face_centroids", np.full((1, 4), np.nan))
        np.testing.assert_array_equal(centroids.values, np.concatenate(rows))
        assert joined.sizes == {
            "face": sum(_PART_FACES),
            "face_centroids_dim_1": 3,
            "Labels_face_centroids_dim_1": 4,
        }
        # A group of per-item values only holds one per part: no fill, the dtype kept.
        holes = ex.query_cross_group("faces", "n_holes")["n_holes"]
        assert holes.dtype == np.int32
        np.testing.assert_array_equal(holes.values, _face_rows(made, "n_holes"))
        # Onto a group of per-item values only: one row per part, on ``item``.
        per_part = ex.query_cross_group("n_holes", "Labels")
        assert per_part["part_label"].dims == ("item",)
        np.testing.assert_array_equal(
            per_part["part_label"].values,
            [np.nan if k in _UNLABELLED else 10 + k for k in range(6)],
        )


def test_query_cross_group_keeps_the_dtype_when_every_row_has_a_value(
    parts: tuple[Path, list[dict[str, Any]]],
) -> None:
    """Labels onto itself: every row's part has its row, so no fill and no promotion."""
    flow, made = parts
    with DatasetExplorer(flow_output_file=flow) as ex:
        joined = ex.query_cross_group("Labels", "Labels")
        labelled = [p for k, p in enumerate(made) if k not in _UNLABELLED]
        assert joined["Labels_part_label"].dtype == np.int32
        assert joined["Labels_flag"].dtype == np.bool_
        np.testing.assert_array_equal(
            joined["Labels_part_label"].values, [p["Labels/part_label"][0] for p in labelled]
        )
        np.testing.assert_array_equal(
            joined["Labels_flag"].values, [p["Labels/flag"][0] for p in labelled]
        )


def test_query_cross_group_refusals_name_what_is_wrong(
    parts: tuple[Path, list[dict[str, Any]]],
) -> None:
    flow, _ = parts
    with DatasetExplorer(flow_output_file=flow) as ex:
        # Several rows of one part: the group, the first such part's code, what to do.
        with pytest.raises(DatasetError) as several:
            ex.query_cross_group("Labels", "faces")
        assert isinstance(several.value, ValueError)
        message = str(several.value)
        assert "'faces' holds 3 rows for file id code 0" in message
        assert "aggregate 'faces' to one row per item first" in message
        # Unknown groups: the error get_group_data raises.
        with pytest.raises(DatasetError) as expected:
            ex.get_group_data("Label")
        for call in (
            lambda: ex.query_cross_group("Label", "Labels"),
            lambda: ex.query_cross_group("faces", "Label"),
        ):
            with pytest.raises(DatasetError) as got:
                call()
            assert str(got.value) == str(expected.value)
        with pytest.raises(DatasetError) as strategy:
            ex.query_cross_group("faces", "Labels", join_strategy="name")
        assert isinstance(strategy.value, ValueError)
        assert "'name'" in str(strategy.value) and "'file_id_code'" in str(strategy.value)
        # Nothing was left behind: the faces are as they were.
        assert set(ex.get_group_data("faces").data_vars) == {
            "face_areas",
            "face_types",
            "face_centroids",
            "file_id_code_faces",
        }


def test_query_cross_group_refuses_a_fill_that_would_round_integers(tmp_path: Path) -> None:
    """A part without a row needs NaN; an integer beyond 2**53 would be rounded in
    float64, so the join is refused, naming the array and the value."""
    files = [
        write_arrays(
            tmp_path / "a.zarr", {"faces/x": np.arange(2.0), "Labels/big": np.array([2**60])}
        ),
        write_arrays(tmp_path / "b.zarr", {"faces/x": np.arange(3.0)}),
    ]
    merge_items(files, tmp_path / "big.dataset")
    with (
        DatasetExplorer(merged_store_path=tmp_path / "big.dataset") as ex,
        pytest.raises(DatasetError, match=rf"Labels/big: .*{2**60} is beyond"),
    ):
        ex.query_cross_group("faces", "Labels")


def test_query_cross_group_joins_a_string_kept_once(tmp_path: Path) -> None:
    """A string a part keeps once (``Labels/title``, beside its label row) is joined too.
    It is stored once per item, so a part without a Labels row gets what the dataset
    stores for it (the merge's fill, "", as ``read_array`` gives it), not a fill of the
    join; its row array ``y`` gets NaN."""
    files = [
        write_arrays(
            tmp_path / "a.zarr",
            {"faces/x": np.arange(2.0), "Labels/y": np.array([7]), "Labels/title": "alpha"},
        ),
        write_arrays(tmp_path / "b.zarr", {"faces/x": np.arange(1.0)}),
    ]
    merge_items(files, tmp_path / "titles.dataset")
    with DatasetExplorer(merged_store_path=tmp_path / "titles.dataset") as ex:
        joined = ex.query_cross_group("faces", "Labels")
        assert ex.reader.read_array("Labels", "title").tolist() == ["alpha", ""]
        assert joined["title"].values.tolist() == ["alpha", "alpha", ""]
        np.testing.assert_array_equal(joined["y"].values, [7.0, 7.0, np.nan])


def test_query_cross_group_of_a_group_without_rows(tmp_path: Path) -> None:
    files = [
        write_arrays(
            tmp_path / f"e{k}.zarr",
            {"faces/x": np.zeros(0, dtype=np.float32), "Labels/y": np.array([k], np.int32)},
        )
        for k in range(2)
    ]
    merge_items(files, tmp_path / "empty.dataset")
    with DatasetExplorer(merged_store_path=tmp_path / "empty.dataset") as ex:
        joined = ex.query_cross_group("faces", "Labels")
        assert joined.sizes["face"] == 0
        assert joined["y"].values.tolist() == []
        assert joined["y"].dtype == np.int32  # no row lacks a value


def test_query_cross_group_names_apart_dimensions_and_arrays_that_meet(
    tmp_path: Path,
) -> None:
    """A name one side uses for a dimension and the other for an array is prefixed with
    the secondary group, so xarray neither refuses the join (it raised its MergeError)
    nor makes the array a coordinate: a trailing dimension named like an array of the
    faces or like a joined array, and a joined array named like a dimension of the faces
    (the row dimension too)."""
    from cadstore import OptStorage, SchemaBuilder

    builder = SchemaBuilder(domain="CAD")
    faces = builder.create_group("faces", "face", "Face data")
    faces.create_array("face_areas", ["face"], "float32")
    faces.create_array("coordinate", ["face"], "float32")  # an array the faces have
    faces.create_array("face_points", ["face", "axis"], "float32")  # a dimension they use
    labels = builder.create_group("Labels", "label", "Labels")
    labels.create_array("center", ["label", "coordinate"], "float32")
    labels.create_array("axis", ["label"], "int32")
    labels.create_array("face", ["label"], "int32")
    labels.create_array("rank", ["label"], "int32")
    labels.create_array("spread", ["label", "rank"], "float32")  # like a joined array
    schema = builder.build()
    files = []
    for k, n_faces in enumerate((2, 3)):
        with OptStorage(tmp_path / f"p{k}.zarr") as storage:
            storage.set_schema(schema)
            storage.save_data("face_areas", np.arange(n_faces, dtype=np.float32))
            storage.save_data("coordinate", np.full(n_faces, -k, np.float32))
            storage.save_data("face_points", np.zeros((n_faces, 2), np.float32))
            storage.save_data("center", np.full((1, 3), k, np.float32))
            storage.save_data("axis", np.array([10 + k], np.int32))
            storage.save_data("face", np.array([20 + k], np.int32))
            storage.save_data("rank", np.array([30 + k], np.int32))
            storage.save_data("spread", np.full((1, 4), 0.5 * k, np.float32))
            storage.compress_store()
        files.append(str(tmp_path / f"p{k}.zarr.data"))
    merge_items(files, tmp_path / "names.dataset")
    with DatasetExplorer(merged_store_path=tmp_path / "names.dataset") as ex:
        joined = ex.query_cross_group("faces", "Labels")
        assert not joined.coords  # nothing became a coordinate
        assert joined["center"].dims == ("face", "Labels_coordinate")
        np.testing.assert_array_equal(
            joined["center"].values, np.repeat([0, 1], [2, 3])[:, None] * np.ones(3)
        )
        np.testing.assert_array_equal(joined["coordinate"].values, [0, 0, -1, -1, -1])
        assert joined["Labels_axis"].dims == ("face",)
        np.testing.assert_array_equal(joined["Labels_axis"].values, [10, 10, 11, 11, 11])
        assert joined["face_points"].dims == ("face", "axis")
        assert joined["Labels_face"].dims == ("face",)
        np.testing.assert_array_equal(joined["Labels_face"].values, [20, 20, 21, 21, 21])
        assert joined["rank"].dims == ("face",)
        # A dimension spelt as an array of its own group the reader qualifies already.
        assert joined["spread"].dims == ("face", "spread_rank")
        np.testing.assert_array_equal(joined["spread"].values[:, 0], [0, 0, 0.5, 0.5, 0.5])
        assert joined.sizes == {"face": 5, "axis": 2, "Labels_coordinate": 3, "spread_rank": 4}
        assert set(ex.get_group_data("faces").data_vars) == {
            "face_areas",
            "coordinate",
            "face_points",
            "file_id_code_faces",
        }


def test_query_cross_group_refuses_a_prefixed_dimension_that_is_taken(tmp_path: Path) -> None:
    """The dimension ``coordinate`` of ``Labels/center`` needs another name beside the
    faces' array ``coordinate``, and ``Labels_coordinate`` names a joined array: a
    DatasetError naming both, not xarray's error."""
    from cadstore import OptStorage, SchemaBuilder

    builder = SchemaBuilder(domain="CAD")
    faces = builder.create_group("faces", "face", "Face data")
    faces.create_array("coordinate", ["face"], "float32")
    labels = builder.create_group("Labels", "label", "Labels")
    labels.create_array("center", ["label", "coordinate"], "float32")
    labels.create_array("Labels_coordinate", ["label"], "int32")
    with OptStorage(tmp_path / "p.zarr") as storage:
        storage.set_schema(builder.build())
        storage.save_data("coordinate", np.zeros(2, np.float32))
        storage.save_data("center", np.zeros((1, 3), np.float32))
        storage.save_data("Labels_coordinate", np.array([1], np.int32))
        storage.compress_store()
    merge_items([str(tmp_path / "p.zarr.data")], tmp_path / "taken.dataset")
    with (
        DatasetExplorer(merged_store_path=tmp_path / "taken.dataset") as ex,
        pytest.raises(
            DatasetError,
            match=r"Labels/center: its dimension 'coordinate'.*"
            r"'Labels_coordinate' is taken",
        ),
    ):
        ex.query_cross_group("faces", "Labels")


def test_query_cross_group_keeps_the_per_item_values_of_items_without_rows(
    tmp_path: Path,
) -> None:
    """``graph/num_nodes`` holds a value for every item, an item without edges too: its
    faces get it, and the int32 stays; the edges' own rows are filled for it."""
    files = []
    for name, nodes, edges, n_faces in (
        ("a", 10, [0], 2),
        ("b", 2, [20], 1),
        ("c", 8, np.zeros(0, np.int64), 3),  # no edges
    ):
        item = {
            "graph/num_nodes": np.int32(nodes),
            "graph/edges_source": np.array(edges, dtype=np.int64),
            "faces/face_areas": np.arange(n_faces, dtype=np.float32),
        }
        files.append(write_arrays(tmp_path / f"{name}.zarr", item))
    merge_items(files, tmp_path / "g.dataset")
    with DatasetExplorer(merged_store_path=tmp_path / "g.dataset") as ex:
        assert ex.reader.read_array("graph", "num_nodes").tolist() == [10, 2, 8]
        joined = ex.query_cross_group("faces", "graph")
        assert joined["num_nodes"].dtype == np.int32
        assert joined["num_nodes"].values.tolist() == [10, 10, 2, 8, 8, 8]
        assert joined["edges_source"].dtype == np.float64
        np.testing.assert_array_equal(
            joined["edges_source"].values, [0, 0, 20, np.nan, np.nan, np.nan]
        )


def test_query_cross_group_is_dask_backed_with_a_cluster(
    parts: tuple[Path, list[dict[str, Any]]],
) -> None:
    """With a cluster the faces are Dask-backed, and so are the joined arrays, in the
    faces' chunks; computed through the cluster or Dask's threads."""
    pytest.importorskip("distributed")
    import dask

    flow, made = parts
    params = {"start_cluster": True, "processes": False, "n_workers": 1}
    params |= {"threads_per_worker": 1, "dashboard_address": None}
    with DatasetExplorer(flow_output_file=flow, dask_client_params=params) as ex:
        joined = ex.query_cross_group("faces", "Labels")
        assert joined["face_areas"].chunks is not None
        assert joined["part_label"].chunks == joined["face_areas"].chunks
        labels = [float(v[0]) for v in _face_rows(made, "Labels/part_label", [np.nan])]
        for scheduler in (None, "threads"):
            with dask.config.set(scheduler=scheduler):
                done = joined.compute()
                np.testing.assert_array_equal(done["part_label"].values, labels)
                np.testing.assert_array_equal(
                    done["face_areas"].values,
                    np.concatenate([p["faces/face_areas"] for p in made]),
                )


def test_filter_files_by_metadata(explorer: DatasetExplorer, realistic_items: list[Any]) -> None:
    metas = _metas(realistic_items)
    labels = [m["file_label"] for m in metas]
    sizes = [m["size_cadfile"] for m in metas]
    middle = sorted(sizes)[len(sizes) // 2]

    def codes(keep: Any) -> list[int]:
        return [c for c, m in enumerate(metas) if keep(m)]

    got = explorer.filter_files_by_metadata(file_label=labels[0])
    assert got.dtype == explorer.get_file_list("faces", lambda ds: ds["face_types"] >= 0).dtype
    assert got.tolist() == codes(lambda m: m["file_label"] == labels[0])
    for members in (
        [labels[0], labels[3]],
        (labels[0], labels[3]),
        {labels[0], labels[3]},
        np.array([labels[0], labels[3]]),
    ):
        got = explorer.filter_files_by_metadata(file_label=members)
        assert got.tolist() == codes(lambda m: m["file_label"] in (labels[0], labels[3]))
    got = explorer.filter_files_by_metadata(size_cadfile=lambda s: s > middle)
    assert got.tolist() == codes(lambda m: m["size_cadfile"] > middle)
    got = explorer.filter_files_by_metadata(lambda info: info["size_cadfile"] <= middle)
    assert got.tolist() == codes(lambda m: m["size_cadfile"] <= middle)
    # Everything given is ANDed.
    category = metas[0]["category"]
    got = explorer.filter_files_by_metadata(
        lambda info: info["size_cadfile"] <= middle,
        category=category,
        file_label=lambda s: s != labels[1],
    )
    want = codes(
        lambda m: (
            m["size_cadfile"] <= middle
            and m["category"] == category
            and m["file_label"] != labels[1]
        )
    )
    assert got.tolist() == want
    # No condition: every part; none matching: an empty int64 array.
    assert explorer.filter_files_by_metadata().tolist() == list(range(len(metas)))
    empty = explorer.filter_files_by_metadata(file_label=-12345)
    assert empty.dtype == np.int64 and empty.tolist() == []
    assert explorer.filter_files_by_metadata(file_label=[]).tolist() == []


def test_filter_files_by_metadata_missing_values(parts: tuple[Path, list[dict[str, Any]]]) -> None:
    flow, made = parts
    with DatasetExplorer(flow_output_file=flow) as ex:
        lacking = [k for k, p in enumerate(made) if "material" not in p]
        assert ex.filter_files_by_metadata(material=None).tolist() == lacking == [5]
        assert ex.filter_files_by_metadata(material=float("nan")).tolist() == lacking
        steel = [k for k, p in enumerate(made) if p.get("material") == "steel"]
        assert ex.filter_files_by_metadata(material="steel").tolist() == steel
        heavy = [k for k, p in enumerate(made) if p["mass"] > 3 and "material" in p]
        got = ex.filter_files_by_metadata(mass=lambda s: s > 3, material=lambda s: s.notna())
        assert got.tolist() == heavy


def test_filter_files_by_metadata_missing_values_of_any_kind(
    tmp_path: Path, parts: tuple[Path, list[dict[str, Any]]]
) -> None:
    """A missing value given as NaN of any float type, ``pd.NA`` or NaT, alone or among
    the members of a list, selects the rows where the column is missing, as ``None``
    does; equality (and pandas' isin, by type) matched none of them."""
    from cadstore import OptStorage

    for k, weight in enumerate((0.5, 1.5, None)):
        with OptStorage(tmp_path / f"w{k}.zarr") as storage:
            storage.save_data("faces/x", np.arange(2.0))
            if weight is not None:
                storage.save_metadata("weight", weight)
            storage.save_metadata("tag", "t")
            storage.compress_store()
    cadstore.merge(
        [str(tmp_path / f"w{k}.zarr.data") for k in range(3)], str(tmp_path / "w.dataset")
    )
    with DatasetExplorer(flow_output_file=tmp_path / "w.flow") as ex:
        assert ex.get_file_info_all()["weight"].isna().tolist() == [False, False, True]
        for missing in (None, float("nan"), np.float64("nan"), np.float32("nan"), pd.NA, pd.NaT):
            assert ex.filter_files_by_metadata(weight=missing).tolist() == [2], missing
        for members in (
            [0.5, None],
            (0.5, np.float32("nan")),
            {0.5, pd.NA},
            np.array([0.5, np.nan]),
        ):
            assert ex.filter_files_by_metadata(weight=members).tolist() == [0, 2], members
        assert ex.filter_files_by_metadata(weight=[None]).tolist() == [2]
        assert ex.filter_files_by_metadata(weight=[1.5]).tolist() == [1]
    flow, made = parts
    with DatasetExplorer(flow_output_file=flow) as ex:
        steel = [k for k, p in enumerate(made) if p.get("material") == "steel"]
        for missing in (pd.NA, np.float32("nan")):
            assert ex.filter_files_by_metadata(material=missing).tolist() == [5]
        for members in (["steel", None], ("steel", pd.NA), ["steel", np.nan]):
            assert ex.filter_files_by_metadata(material=members).tolist() == [*steel, 5]


def test_filter_files_by_metadata_compares_integers_exactly(tmp_path: Path) -> None:
    """Found by review: an integer column with a missing value is float64 in pandas, and
    its conditions compared floats: ``serial=2**53 + 1`` matched the item holding 2**53
    too, and so did the list ``[2**53 + 1]``. Integers compare exactly, as stored; a
    missing value never matches a value, and a float matches the integer it equals."""
    from cadstore import OptStorage

    serials = (2**53 + 1, 2**53, None, -(2**62) - 1)
    for k, serial in enumerate(serials):
        with OptStorage(tmp_path / f"s{k}.zarr") as storage:
            storage.save_data("faces/x", np.arange(2.0))
            if serial is not None:
                storage.save_metadata("serial", serial)
            storage.compress_store()
    cadstore.merge(
        [str(tmp_path / f"s{k}.zarr.data") for k in range(len(serials))],
        str(tmp_path / "s.dataset"),
    )
    with DatasetExplorer(flow_output_file=tmp_path / "s.flow") as ex:
        assert ex.get_file_info_all()["serial"].isna().tolist() == [False, False, True, False]
        for value, codes in (
            (2**53 + 1, [0]),
            (np.int64(2**53 + 1), [0]),
            (np.uint64(2**53 + 1), [0]),
            (2**53, [1]),
            (float(2**53), [1]),
            (2**53 + 2, []),
            (float(2**53 + 2), []),
            (0.5, []),
            (-(2**62) - 1, [3]),
            (-(2**62), []),
            (2**64, []),
        ):
            assert ex.filter_files_by_metadata(serial=value).tolist() == codes, value
        assert ex.filter_files_by_metadata(serial=[2**53 + 1]).tolist() == [0]
        assert ex.filter_files_by_metadata(serial=[2**53 + 1, None]).tolist() == [0, 2]
        assert ex.filter_files_by_metadata(serial=np.array([2**53, 7])).tolist() == [1]
        assert ex.filter_files_by_metadata(serial=[2**53 + 2, 2**64, "x"]).tolist() == []
        assert ex.filter_files_by_metadata(serial=None).tolist() == [2]


def test_filter_files_by_metadata_refusals(explorer: DatasetExplorer) -> None:
    from cadstore.errors import KeyNotFoundError

    with pytest.raises(KeyNotFoundError) as unknown:
        explorer.filter_files_by_metadata(file_label=1, file_lable=1)
    assert isinstance(unknown.value, KeyError)
    assert "'file_lable'" in str(unknown.value) and "'file_label'" in str(unknown.value)
    assert "'size_cadfile'" in str(unknown.value)  # the columns are listed
    with pytest.raises(DatasetError, match=r"where must be a callable.*got str"):
        explorer.filter_files_by_metadata("file_label == 1")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match=r"where\(\) must give a boolean mask"):
        explorer.filter_files_by_metadata(lambda info: info["file_label"])
    with pytest.raises(DatasetError, match=r"condition on 'file_label' gave \(3,\) values"):
        explorer.filter_files_by_metadata(file_label=lambda s: s.to_numpy()[:3] > 0)
    # The infoset is given as a copy: changing it changes nothing.
    before = explorer.get_file_info_all()

    def meddle(info: pd.DataFrame) -> Any:
        info["file_label"] = -1
        return info["file_label"] == -1

    assert len(explorer.filter_files_by_metadata(meddle)) == len(before)
    pd.testing.assert_frame_equal(explorer.get_file_info_all(), before)


def test_compute_statistics(
    explorer: DatasetExplorer, realistic_items: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = _items(realistic_items)
    keys = list(explorer.get_array_statistics("faces", "face_areas"))
    order: list[str] = []
    read = _counting_reads(explorer, monkeypatch)
    counted = explorer.reader.read_rows

    def ordered(group: str, array: str, start: int, stop: int) -> np.ndarray:
        order.append(f"{group}/{array}")
        return counted(group, array, start, stop)

    monkeypatch.setattr(explorer.reader, "read_rows", ordered)
    table = explorer.compute_statistics("faces")
    assert list(table.columns) == [*keys, "count"]
    assert table.index.name == "array"
    want_names = {a for a in explorer.available_arrays("faces") if a != "file_id_code_faces"}
    assert set(table.index) == want_names
    for array in table.index:
        values = np.concatenate([i[array] for i in items]).astype(np.float64).ravel()
        row = table.loc[array]
        assert row["count"] == values.size
        assert row["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert row["std"] == pytest.approx(values.std(), rel=1e-12)
        assert (row["min"], row["max"]) == (values.min(), values.max())
        assert row["median"] == pytest.approx(np.median(values), rel=1e-12)
        assert row["q25"] == pytest.approx(np.percentile(values, 25), rel=1e-12)
        assert row["q75"] == pytest.approx(np.percentile(values, 75), rel=1e-12)
    assert table["count"].dtype == np.int64
    # One array read at a time (its blocks of rows one after another), each once (all
    # within the budget of a whole read); the item codes not at all.
    assert sorted(read) == sorted(f"faces/{a}" for a in want_names)
    assert [a for k, a in enumerate(order) if not k or order[k - 1] != a] == list(read)
    for name, ranges in read.items():
        rows = int(explorer.reader.array_meta("faces", name.split("/")[1]).shape[0])
        assert _times_read(ranges, rows) == 1, name
    # Arrays named: in the order given, a single name too; num_nodes counts items.
    named = explorer.compute_statistics("graph", ["num_nodes", "edges_source"])
    assert named.index.tolist() == ["num_nodes", "edges_source"]
    nodes = np.array([i["graph"]["num_nodes"] for i in items], dtype=np.float64)
    assert named.loc["num_nodes", "count"] == len(items)
    assert named.loc["num_nodes", "mean"] == pytest.approx(nodes.mean(), rel=1e-12)
    one = explorer.compute_statistics("edges", "edge_lengths")
    assert one.index.tolist() == ["edge_lengths"]
    assert dict(one.loc["edge_lengths"].drop("count")) == explorer.get_array_statistics(
        "edges", "edge_lengths"
    )


def test_compute_statistics_nan_strings_refusals_and_empty(
    parts: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    flow, made = parts
    with DatasetExplorer(flow_output_file=flow) as ex:
        areas = np.concatenate([p["faces/face_areas"] for p in made]).astype(np.float64)
        row = ex.compute_statistics("faces", ["face_areas"]).loc["face_areas"]
        kept = areas[~np.isnan(areas)]
        assert row["count"] == kept.size == areas.size - 1  # the NaN is not counted
        assert row["mean"] == pytest.approx(kept.mean(), rel=1e-12)
        # Booleans are numeric, as for get_array_statistics.
        assert "flag" in ex.compute_statistics("Labels").index
        for array, words in (
            ("file_id_code_faces", "item code of each row"),
            ("nope", "unknown array 'nope' in group 'faces'"),
        ):
            with pytest.raises(DatasetError, match=words):
                ex.compute_statistics("faces", [array])
        with pytest.raises(DatasetError, match="unknown group 'face'"):
            ex.compute_statistics("face")
        empty = ex.compute_statistics("faces", [])
        assert empty.empty and list(empty.columns) == [
            "mean",
            "std",
            "min",
            "max",
            "median",
            "q25",
            "q75",
            "count",
        ]
    # A group of strings only: skipped when not named (no rows), refused when named.
    files = [
        write_arrays(tmp_path / f"s{k}.zarr", {"faces/x": np.arange(k + 1.0), "tags/tag": name})
        for k, name in enumerate(("one", "two"))
    ]
    merge_items(files, tmp_path / "s.dataset")
    with DatasetExplorer(merged_store_path=tmp_path / "s.dataset") as ex:
        assert ex.compute_statistics("tags").empty
        with pytest.raises(DatasetError, match=r"tags/tag has dtype string, which is not numeric"):
            ex.compute_statistics("tags", "tag")
        with pytest.raises(DatasetError, match="tags/tag has dtype string"):
            ex.get_array_statistics("tags", "tag")
