"""Reading a merged dataset on S3 (a real SeaweedFS server): the same answers as on disk.

One server and one dataset of 160 realistic items for the module: merged locally, the
four files uploaded. Every query on the URLs is compared with the same query on the local
files; reading one item is shown to transfer a small part of the dataset (a proxy counts
the bytes); a PyTorch ``DataLoader`` with spawned workers reads from S3; a split is
recorded in the infoset on S3; refused credentials and a missing bucket are clear errors.
"""

from __future__ import annotations

import pickle
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cadstore.dataset.explorer import DatasetExplorer
from cadstore.dataset.loader import DatasetLoader
from cadstore.dataset.reader import DatasetReader
from cadstore.errors import CorruptStoreError, StorageAccessError, StorageUnavailableError
from cadstore.format.manifest import resolve_flow_paths
from cadstore.io.filesystems import FsspecFileSystem
from cadstore.io.sources import ZipSource
from s3dataset import FAST_FAIL, SUFFIXES, S3Dataset, s3_dataset
from s3server import CutOffProxy

N_ITEMS = 160


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Dataset]:
    """The module's server and its uploaded dataset."""
    yield from s3_dataset(tmp_path_factory.mktemp("s3data"), N_ITEMS, seed=5)


def _assert_items_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for group in a:
        assert a[group].keys() == b[group].keys(), group
        for name in a[group]:
            np.testing.assert_array_equal(a[group][name], b[group][name], err_msg=name)


# ---------------------------------------------------------------------------- explorer
def test_explorer_on_s3_equals_local(data: S3Dataset) -> None:
    with (
        DatasetExplorer(data.url(".flow"), storage_options=data.options()) as remote,
        DatasetExplorer(data.local_path(".flow")) as local,
    ):
        # The manifest's relative names resolve next to it, on S3.
        assert remote.merged_store_path == data.url(".dataset")
        assert remote.parquet_file_path == data.url(".infoset")
        assert remote.parquet_file_attribs == data.url(".attribset")
        assert remote.n_items == local.n_items == N_ITEMS
        assert remote.available_groups() == local.available_groups()
        for group in local.available_groups():
            assert remote.available_arrays(group) == local.available_arrays(group)
        for code in (0, 77, N_ITEMS - 1):
            for group in sorted(local.available_groups()):
                xr.testing.assert_identical(
                    remote.file_dataset(code, group), local.file_dataset(code, group)
                )
        pd.testing.assert_frame_equal(remote.get_file_info_all(), local.get_file_info_all())
        pd.testing.assert_frame_equal(
            remote.get_descriptions("file_label"), local.get_descriptions("file_label")
        )
        for key, bins in (("face_types", None), ("face_areas", 12)):
            a = remote.create_distribution(key, bins, "faces")
            b = local.create_distribution(key, bins, "faces")
            np.testing.assert_array_equal(a["bin_edges"], b["bin_edges"])
            np.testing.assert_array_equal(a["hist"], b["hist"])
            for x, y in zip(a["file_id_codes_in_bins"], b["file_id_codes_in_bins"], strict=True):
                np.testing.assert_array_equal(x, y)
        codes = remote.get_file_list("faces", lambda ds: ds["face_types"] == 3)
        np.testing.assert_array_equal(
            codes, local.get_file_list("faces", lambda ds: ds["face_types"] == 3)
        )
        assert remote.table_of_contents() == local.table_of_contents()
        # The lazy xarray view goes through zarr-python and fsspec on the zip in S3.
        np.testing.assert_array_equal(
            remote.get_array_data("faces", "face_areas").values,
            local.get_array_data("faces", "face_areas").values,
        )


def test_explorer_from_the_three_urls(data: S3Dataset) -> None:
    with (
        DatasetExplorer(
            merged_store_path=data.url(".dataset"),
            parquet_file_path=data.url(".infoset"),
            parquet_file_attribs=data.url(".attribset"),
            storage_options=data.options(),
        ) as three,
        DatasetExplorer(
            merged_store_path=data.url(".dataset"), storage_options=data.options()
        ) as alone,
    ):
        # The tables next to the dataset are found on S3 too.
        assert alone.parquet_file_path == data.url(".infoset")
        assert alone.parquet_file_attribs == data.url(".attribset")
        pd.testing.assert_frame_equal(three.get_file_info_all(), alone.get_file_info_all())
        assert three.decode_file_id_code(5) == alone.decode_file_id_code(5)


def test_manifest_listing_a_missing_file_on_s3(data: S3Dataset) -> None:
    prefix = data.copy_to("missing")
    data.client().rm_file(data.url(".attribset", prefix))
    with pytest.raises(CorruptStoreError, match=r"flow_attributes .* does not exist"):
        resolve_flow_paths(data.url(".flow", prefix), data.options())


# ---------------------------------------------------------------------------- reader
def test_reader_item_equals_local_and_reads_a_small_part(data: S3Dataset) -> None:
    size = Path(data.local_path()).stat().st_size
    with CutOffProxy(data.server) as proxy:
        options = data.options()
        options["client_kwargs"]["endpoint_url"] = proxy.endpoint
        with (
            DatasetReader(data.url(), storage_options=options) as remote,
            DatasetReader(data.local_path()) as local,
        ):
            opened = proxy.downloaded
            item = remote.read_item(80)
            one_item = proxy.downloaded - opened
            _assert_items_equal(item, local.read_item(80))
            assert remote.stored_bytes == size
            faces = remote.read_item(120, groups=["faces"])
            one_group = proxy.downloaded - opened - one_item
            _assert_items_equal(faces, local.read_item(120, groups=["faces"]))
    # Opening reads the end of the zip (its directory) and the small metadata; an item,
    # its shard indexes and inner chunks: a small part of the dataset either way.
    assert opened < size / 50, (opened, size)
    assert one_item < size / 4, (one_item, size)
    assert one_group < size / 20, (one_group, size)


class _RequestLog:
    """Counts cadstore's batched and single range reads of zip files on the object store."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[int] = []
        self.single = 0
        batched = FsspecFileSystem.read_ranges
        single = ZipSource._read_at

        def read_ranges(fs: Any, fh: Any, path: str, ranges: Any) -> Any:
            got = batched(fs, fh, path, ranges)
            if got is not None:
                self.batches.append(len(ranges))
            return got

        def read_at(source: ZipSource, offset: int, n: int) -> bytes:
            self.single += source.batches_reads  # local files are read one range at a time
            return single(source, offset, n)

        monkeypatch.setattr(FsspecFileSystem, "read_ranges", read_ranges)
        monkeypatch.setattr(ZipSource, "_read_at", read_at)

    def reset(self) -> None:
        self.batches.clear()
        self.single = 0


def test_item_reads_on_s3_fetch_their_ranges_in_batches(
    data: S3Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _RequestLog(monkeypatch)
    with (
        DatasetReader(data.url(), storage_options=data.options()) as remote,
        DatasetReader(data.local_path()) as local,
    ):
        remote.read_item(0)  # the offsets arrays, read whole once
        for code in (41, 42, 150):
            log.reset()
            _assert_items_equal(remote.read_item(code), local.read_item(code))
            # Local headers of members not seen yet, shard indexes not seen yet, then the
            # chunks: at most three round trips, whatever the number of arrays.
            assert 1 <= len(log.batches) <= 3, log.batches
            assert log.single == 0
        log.reset()
        again = remote.read_item(42)
        assert len(log.batches) <= 1 and log.single == 0  # decoded chunks are cached
        _assert_items_equal(again, local.read_item(42))
        codes = [7, 99, 7, 131, 12, 58, 140, 3]
        log.reset()
        batch = remote.read_items(codes)
        assert len(log.batches) <= 3 and log.single == 0, log.batches
        for code, item in zip(codes, batch, strict=True):
            _assert_items_equal(item, local.read_item(code))
        # A batch for some arrays of one group reads only what they need.
        log.reset()
        some = remote.read_items([5, 6], groups=["faces"], arrays={"faces": ["face_areas"]})
        assert list(some[0]["faces"]) == ["face_areas"]
        assert sum(log.batches) <= 4, log.batches


def test_zip_source_get_ranges_on_s3_matches_get_range(data: S3Dataset) -> None:
    with (
        DatasetReader(data.url(), storage_options=data.options()) as remote,
        DatasetReader(data.local_path()) as local,
    ):
        source, reference = remote._source, local._source
        assert isinstance(source, ZipSource) and source.batches_reads
        assert not reference.batches_reads
        shard = next(k for k in sorted(reference.keys()) if "/c/" in k)
        size = reference.size_of(shard)
        assert size is not None
        requests = [
            (shard, 0, 100),
            (shard, size - 16, 16),
            (shard, size - 10, 100),  # runs past the member's end: what is there
            (shard, 5, 0),
            ("no/such/member", 0, 10),
            ("metadata.json", 3, 40),  # deflated: read whole, then cut
            (shard, 100, 50),
        ]
        expected = [reference.get_range(*r) for r in requests]
        assert source.get_ranges(requests) == expected
        assert reference.get_ranges(requests) == expected
        assert expected[2] == reference.get_range(shard, size - 10, 10)
        assert expected[4] is None


@pytest.mark.parametrize("damage", ["index", "chunk"])
def test_damaged_shard_on_s3_is_a_corrupt_store_error(
    data: S3Dataset, tmp_path: Path, damage: str
) -> None:
    # The batched reads must report a damaged shard as the one-at-a-time reads do.
    from cadstore.format.sharding import read_index

    member = "faceface_upper/d2_distance/c/0/0"
    image = bytearray(Path(data.local_path()).read_bytes())
    with DatasetReader(data.local_path()) as local:
        source = local._source
        assert isinstance(source, ZipSource)
        info = source._members[member]
        start = source._data_start(member, info)
        meta = local.array_meta("faceface_upper", "d2_distance")
        n_inner = meta.chunks[0] // meta.codecs[0]["configuration"]["chunk_shape"][0]
        # The index ends with its crc32c (4 bytes) when the dataset carries checksums.
        trailer = 4 * (len(meta.codecs[0]["configuration"]["index_codecs"]) - 1)
    end = start + info.file_size - trailer
    if damage == "index":
        # The first entry points past the shard's body.
        image[end - 16 * n_inner : end - 16 * n_inner + 8] = (info.file_size).to_bytes(8, "little")
        expected = "d2_distance"
    else:
        index = read_index(bytes(image[end - 16 * n_inner : end]), n_inner, end - start)
        offset, _ = index[0]
        image[start + offset : start + offset + 8] = b"\0" * 8
        expected = "d2_distance.*inner chunk 0"
    damaged = tmp_path / "damaged.dataset"
    damaged.write_bytes(bytes(image))
    url = f"{data.prefix}/damaged-{damage}-{secrets.token_hex(3)}.dataset"
    data.client().put_file(str(damaged), url)
    with DatasetReader(url, storage_options=data.options()) as remote:
        with pytest.raises(CorruptStoreError, match=expected):
            remote.read_item(0)
        with pytest.raises(CorruptStoreError, match=expected):
            remote.read_items([0, 1])
        faces = remote.read_item(0, groups=["faces"])  # the other groups still read
    with DatasetReader(data.local_path()) as local:
        _assert_items_equal(faces, local.read_item(0, groups=["faces"]))


@pytest.fixture(scope="module")
def dir_dataset(data: S3Dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The module's items merged as a directory dataset, uploaded: (prefix URL, local)."""
    from cadstore.merging import merge_items

    out = tmp_path_factory.mktemp("dirdata") / "dir.dataset"
    encoded = sorted(str(p) for p in (Path(data.local_path()).parent / "encoded").glob("*.data"))
    merge_items(encoded, out, directory=True)  # the same items, merged as a directory
    prefix = f"{data.prefix}/dir-{secrets.token_hex(3)}.dataset"
    data.client().put(str(out), prefix, recursive=True)
    return prefix, out


def test_directory_dataset_on_s3_reads_item_ranges(
    data: S3Dataset, dir_dataset: tuple[str, Path]
) -> None:
    # A dataset merged as a directory (one object per shard): an item costs its ranges of
    # each shard, fetched in batches, not whole shards.
    prefix, out = dir_dataset
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    with CutOffProxy(data.server) as proxy:
        options = data.options()
        options["client_kwargs"]["endpoint_url"] = proxy.endpoint
        with (
            DatasetReader(prefix, storage_options=options) as remote,
            DatasetReader(out) as local,
        ):
            remote.read_item(0)
            before = proxy.downloaded
            for code in (37, 101):
                _assert_items_equal(remote.read_item(code), local.read_item(code))
            two_items = proxy.downloaded - before
            batch = remote.read_items([5, 150, 5])
            for code, item in zip([5, 150, 5], batch, strict=True):
                _assert_items_equal(item, local.read_item(code))
            source, reference = remote._source, local._source
            assert source.batches_reads and not reference.batches_reads
            shard = "faceface_upper/d2_distance/c/0/0"
            shard_size = reference.size_of(shard)
            assert shard_size is not None and source.size_of(shard) == shard_size
            requests = [
                (shard, 0, 64),
                (shard, shard_size - 40, 100),  # runs past the end: what is there
                (shard, 9, 0),
                ("no/such/object", 0, 10),
                ("zarr.json", 2, 30),
            ]
            expected = [reference.get_range(*r) for r in requests]
            assert source.get_ranges(requests) == expected
            assert [source.get_range(*r) for r in requests] == expected
            assert expected[1] == reference.get_range(shard, shard_size - 40, 40)
    assert two_items < size / 20, (two_items, size)


def test_directory_dataset_on_s3_reads_a_shard_its_listing_lacks(
    data: S3Dataset, dir_dataset: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object store's listing can lack an object it holds: SeaweedFS, killed during a
    merge and restarted, has listed a rerun's dataset without a shard that a GET returned
    (tests/test_merge_s3.py). The reader lists a directory dataset once when it opens
    it; a shard that must be there and that the listing lacks is asked for, not read as
    fill values (it gave zeros for every row before)."""
    prefix, out = dir_dataset
    member = "faceface_upper/d2_distance/c/0/0"
    listing = FsspecFileSystem.file_sizes

    def lacking(self: FsspecFileSystem, path: str) -> dict[str, int]:
        found = listing(self, path)
        del found[member], found["metadata.json"]
        return found

    monkeypatch.setattr(FsspecFileSystem, "file_sizes", lacking)
    with (
        DatasetReader(prefix, storage_options=data.options()) as remote,
        DatasetReader(out) as local,
    ):
        assert remote._source.size_of(member) is None  # the listing lacked it
        assert remote.metadata == local.metadata and remote.metadata  # the schema too
        for code in (0, 37):
            _assert_items_equal(remote.read_item(code), local.read_item(code))
    with (
        DatasetReader(prefix, storage_options=data.options(), stored_layout=True) as remote,
        DatasetReader(out, stored_layout=True) as local,
    ):
        np.testing.assert_array_equal(
            remote.read_array("faceface_upper", "d2_distance"),
            local.read_array("faceface_upper", "d2_distance"),
        )


def test_directory_dataset_on_s3_missing_a_shard_is_an_error(
    data: S3Dataset, dir_dataset: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard object gone from a directory dataset is damage, named: the merger stores
    every shard holding rows, so none may read as fill values."""
    _, out = dir_dataset
    prefix = f"{data.prefix}/dir-{secrets.token_hex(3)}.dataset"
    client = data.client()
    client.put(str(out), prefix, recursive=True)
    member = "faceface_upper/d2_distance/c/0/0"
    client.rm_file(f"{prefix}/{member}")
    asked: list[str] = []
    size = FsspecFileSystem.size

    def counted(self: FsspecFileSystem, path: str) -> int:
        asked.append(path)
        return size(self, path)

    monkeypatch.setattr(FsspecFileSystem, "size", counted)
    with DatasetReader(prefix, storage_options=data.options()) as remote:
        with pytest.raises(CorruptStoreError, match=f"shard '{member}' is missing"):
            remote.read_item(0)
        with pytest.raises(CorruptStoreError, match=f"shard '{member}' is missing"):
            remote.read_items([0, 1])
        # The store was asked once whether it holds the shard, not at every read.
        assert asked.count(f"{prefix}/{member}") == 1, asked
        faces = remote.read_item(0, groups=["faces"])  # the other groups still read
    with DatasetReader(out) as local:
        _assert_items_equal(faces, local.read_item(0, groups=["faces"]))


@pytest.mark.parametrize("layout", ["zip", "directory"])
def test_store_going_away_mid_read_is_unavailable(
    data: S3Dataset, dir_dataset: tuple[str, Path], layout: str
) -> None:
    url = data.url() if layout == "zip" else dir_dataset[0]
    with CutOffProxy(data.server) as proxy:
        options = data.options(config_kwargs=FAST_FAIL)
        options["client_kwargs"]["endpoint_url"] = proxy.endpoint
        reader = DatasetReader(url, storage_options=options)
        reader.read_item(0)
    try:
        # The proxy is gone: nothing listens at the endpoint any more.
        with pytest.raises(StorageUnavailableError, match="cannot reach"):
            reader.read_item(77)
        with pytest.raises(StorageUnavailableError, match="cannot reach"):
            reader.read_items([3, 140])
    finally:
        reader.close()


def test_forked_child_reads_s3_after_the_parent_did(data: S3Dataset) -> None:
    # The parent's range threads do not survive fork(); the child must start its own
    # rather than wait forever on the parent's pool.
    import multiprocessing

    with DatasetReader(data.url(), storage_options=data.options()) as remote:
        parent = remote.read_item(10)
        context = multiprocessing.get_context("fork")
        with context.Pool(1) as pool:
            child = pool.apply_async(_read_faces, (remote, 10)).get(timeout=120)
    np.testing.assert_array_equal(child, parent["faces"]["face_areas"])


def _read_faces(reader: DatasetReader, code: int) -> np.ndarray:
    return reader.read_item(code, groups=["faces"])["faces"]["face_areas"]


def test_reader_pickles_with_its_url_and_options(data: S3Dataset) -> None:
    with DatasetReader(data.url(), storage_options=data.options()) as reader:
        clone = pickle.loads(pickle.dumps(reader))  # noqa: S301 - what DataLoader does
        try:
            assert clone.path == data.url()
            assert clone.storage_options == data.options()
            _assert_items_equal(clone.read_item(3), reader.read_item(3))
        finally:
            clone.close()


# ---------------------------------------------------------------------------- loader
def test_torch_dataloader_with_spawned_workers_reads_s3(data: S3Dataset) -> None:
    torch = pytest.importorskip("torch")
    prefix = data.copy_to("torch")
    with DatasetLoader(
        flow_output_file=data.url(".flow", prefix),
        storage_options=data.options(),
        groups=["faces", "graph"],
    ) as loader:
        loader.split("face_types", "faces", 0.5, 0.25, 0.25, random_state=1)
        validation = loader.get_dataset("validation")
        dataset, collate = validation.to_torch_with_collate()
        batches = torch.utils.data.DataLoader(
            dataset,
            batch_size=8,
            num_workers=2,
            collate_fn=collate,
            multiprocessing_context="spawn",
        )
        seen: list[int] = []
        with DatasetReader(data.local_path()) as local:
            for batch in batches:
                codes = batch["file_id_code"].tolist()
                expected = np.concatenate(
                    [local.read_item(c, groups=["faces"])["faces"]["face_areas"] for c in codes]
                )
                np.testing.assert_array_equal(batch["faces"]["face_areas"].numpy(), expected)
                seen.extend(codes)
    assert seen == validation.indices.tolist()


def test_split_is_recorded_in_the_infoset_on_s3(data: S3Dataset, tmp_path: Path) -> None:
    prefix = data.copy_to("split")
    with DatasetLoader(
        flow_output_file=data.url(".flow", prefix), storage_options=data.options()
    ) as remote:
        counts = remote.split("face_types", "faces", 0.6, 0.2, 0.2, random_state=4)
    # The same split of the local copy (copied first: the original is shared).
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    for suffix in SUFFIXES:
        (local_dir / f"parts{suffix}").write_bytes(Path(data.local_path(suffix)).read_bytes())
    with DatasetLoader(flow_output_file=local_dir / "parts.flow") as local:
        assert local.split("face_types", "faces", 0.6, 0.2, 0.2, random_state=4) == counts
        expected = local.explorer.get_file_info_all()  # type: ignore[union-attr]
    # A new explorer reads the rewritten table from S3: one object, the new column.
    with DatasetExplorer(data.url(".flow", prefix), storage_options=data.options()) as again:
        info = again.get_file_info_all()
    pd.testing.assert_series_equal(info["subset"], expected["subset"])
    assert sorted(data.client().ls(prefix)) == sorted(
        data.url(s, prefix).removeprefix("s3://") for s in SUFFIXES
    )
    # And a loader opened later starts from the recorded split.
    with DatasetLoader(
        flow_output_file=data.url(".flow", prefix), storage_options=data.options()
    ) as later:
        assert len(later.get_dataset("train")) == counts[0]


# ---------------------------------------------------------------------------- errors
def test_wrong_credentials_are_a_clear_error(data: S3Dataset) -> None:
    bad = data.options(config_kwargs=FAST_FAIL)
    bad["secret"] = secrets.token_hex(16)
    for open_it in (
        lambda: DatasetReader(data.url(), storage_options=bad),
        lambda: DatasetExplorer(data.url(".flow"), storage_options=bad),
        lambda: DatasetLoader(data.url(), storage_options=bad),
    ):
        with pytest.raises(StorageAccessError, match="access denied") as caught:
            open_it()
        assert data.prefix in str(caught.value)


def test_missing_bucket_and_missing_dataset(data: S3Dataset) -> None:
    options = data.options(config_kwargs=FAST_FAIL)
    with pytest.raises(CorruptStoreError, match="bucket 'no-such-bucket-here' does not exist"):
        DatasetReader("s3://no-such-bucket-here/parts.dataset", storage_options=options)
    with pytest.raises(CorruptStoreError, match="bucket 'no-such-bucket-here' does not exist"):
        DatasetExplorer("s3://no-such-bucket-here/parts.flow", storage_options=options)
    with pytest.raises(CorruptStoreError, match="no such dataset"):
        DatasetReader(data.url(".dataset", data.prefix + "/nothing"), storage_options=options)
