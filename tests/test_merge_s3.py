"""Merging to and from S3 against a real server (SeaweedFS ``weed mini``).

One server serves the module; the tests that stop a server start their own. Every merged
dataset is compared byte for byte with the local single-process merge of the same items.
"""

from __future__ import annotations

import io
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import s3fs

import cadstore
from cadstore import DatasetMerger
from cadstore.dataset.reader import DatasetReader
from cadstore.errors import (
    CadstoreWarning,
    CorruptStoreError,
    MergeError,
    StorageAccessError,
    StorageUnavailableError,
)
from cadstore.merging import DatasetInfo, append_items, merge_items
from conftest import write_items
from datasets import assert_same_dataset
from s3server import CutOffProxy, WeedServer, WeedUnavailableError, start_weed

BUCKET = "cadstore-merge"
# A failure must surface in seconds, not after botocore's default five attempts.
FAST_FAIL = {"retries": {"max_attempts": 1}, "connect_timeout": 5, "read_timeout": 20}
SHARD_BYTES = 300_000  # several shards per array, even for a few small items


def _start(data_dir: Path) -> WeedServer:
    try:
        return start_weed(data_dir)
    except WeedUnavailableError as exc:
        pytest.skip(f"SeaweedFS cannot run on this machine: {exc}")


def _client(server: WeedServer) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    data_dir = tmp_path_factory.mktemp("weed-merge")
    weed = _start(data_dir)
    try:
        _client(weed).mkdir(BUCKET)
        yield weed
    finally:
        weed.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return [p for p, _, _ in write_items(tmp_path_factory.mktemp("items"), 12, seed=5)]


@pytest.fixture(scope="module")
def local_merge(items: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "flow.dataset"
    merge_items(items, out, shard_bytes=SHARD_BYTES)
    return out


@pytest.fixture(scope="module")
def remote_items(server: WeedServer, items: list[Path]) -> list[str]:
    """The same items uploaded to the bucket."""
    client = _client(server)
    urls = []
    for path in items:
        url = f"s3://{BUCKET}/encoded/{path.name}"
        client.put_file(str(path), url)
        urls.append(url)
    return urls


def _url(*parts: str) -> str:
    return "/".join([f"s3://{BUCKET}", secrets.token_hex(4), *parts])


def _download(server: WeedServer, url: str, dest: Path) -> Path:
    _client(server).get_file(url, str(dest))
    return dest


def test_local_items_to_a_dataset_on_s3(
    server: WeedServer, items: list[Path], local_merge: Path, tmp_path: Path
) -> None:
    url = _url("flow.dataset")
    result = merge_items(
        items, url, shard_bytes=SHARD_BYTES, storage_options=server.storage_options()
    )
    assert result.path == url
    copy = _download(server, url, tmp_path / "copy.dataset")
    assert_same_dataset(copy, local_merge)
    assert result.stored_bytes == copy.stat().st_size
    # The object exists: a second merge refuses to overwrite it unless asked.
    with pytest.raises(MergeError, match="already exists"):
        merge_items(items, url, storage_options=server.storage_options())


def test_items_and_tables_on_s3_with_the_one_call_merge(
    server: WeedServer,
    remote_items: list[str],
    items: list[Path],
    tmp_path: Path,
) -> None:
    """Inputs listed from an S3 "directory"; dataset, tables and manifest on S3."""
    options = server.storage_options()
    base = _url()
    result = cadstore.merge(
        f"s3://{BUCKET}/encoded", f"{base}/flow.dataset", storage_options=options
    )
    assert len(result.items) == len(items)
    local = tmp_path / "flow.dataset"
    cadstore.merge(str(items[0].parent), str(local))  # a directory: sorted, like the bucket
    client = _client(server)
    assert_same_dataset(_download(server, f"{base}/flow.dataset", tmp_path / "s3.dataset"), local)
    for suffix in ("infoset", "attribset"):
        remote = pd.read_parquet(io.BytesIO(client.cat_file(f"{base}/flow.{suffix}")))
        pd.testing.assert_frame_equal(remote, pd.read_parquet(tmp_path / f"flow.{suffix}"))
    manifest = cadstore.format.jsoncodec.loads(client.cat_file(f"{base}/flow.flow").decode())
    assert manifest["flow_data"] == "flow.dataset"  # relative to the manifest, as locally
    assert manifest["file_count"] == len(items)


def test_dataset_info_reads_and_writes_urls(server: WeedServer, remote_items: list[str]) -> None:
    base = _url()
    info = DatasetInfo(
        remote_items,
        f"{base}/t.infoset",
        f"{base}/t.attribset",
        storage_options=server.storage_options(),
    )
    info.build_code_mappings(remote_items)
    info.parse_info_files()
    info.store_info_to_parquet()
    assert info.errors == []
    table = pd.read_parquet(io.BytesIO(_client(server).cat_file(f"{base}/t.infoset")))
    assert len(table) == len(remote_items)


def test_directory_layout_on_s3_has_the_same_members(
    server: WeedServer, items: list[Path], tmp_path: Path
) -> None:
    url = _url("flow.dataset")
    local = tmp_path / "flow.dataset"
    merge_items(items, local, directory=True, shard_bytes=SHARD_BYTES)
    merge_items(
        items,
        url,
        directory=True,
        shard_bytes=SHARD_BYTES,
        storage_options=server.storage_options(),
    )
    client = _client(server)
    prefix = url[len("s3://") :] + "/"
    remote = {k[len(prefix) :]: k for k in client.find(url)}
    expected = {p.relative_to(local).as_posix(): p for p in local.rglob("*") if p.is_file()}
    assert sorted(remote) == sorted(expected)
    copy = tmp_path / "copy.dataset"
    for name, key in remote.items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(client.cat_file(key))
    assert_same_dataset(copy, local)
    # Overwriting replaces the members in place and leaves no stale object behind.
    merge_items(
        items[:3],
        url,
        directory=True,
        overwrite=True,
        shard_bytes=SHARD_BYTES,
        storage_options=server.storage_options(),
    )
    small = tmp_path / "small.dataset"
    merge_items(items[:3], small, directory=True, shard_bytes=SHARD_BYTES)
    assert len(client.find(url)) == sum(1 for p in small.rglob("*") if p.is_file())


def test_a_directory_merge_into_the_items_own_prefix_deletes_nothing(
    server: WeedServer, items: list[Path]
) -> None:
    """A directory-layout merge whose output was the items' own prefix deleted every
    item and the user's files there (objects the merge did not write are deleted at its
    commit, and a prefix without a root zarr.json did not count as taken)."""
    from cadstore.errors import OutputExistsError

    options = server.storage_options()
    client = _client(server)
    prefix = _url("encoded")
    for path in items[:3]:
        client.put_file(str(path), f"{prefix}/{path.name}")
    client.pipe(f"{prefix}/notes.txt", b"the user's own")
    before = sorted(client.find(prefix))
    with pytest.raises(OutputExistsError, match=r"holds objects that are not a dataset's"):
        merge_items(
            [f"{prefix}/{p.name}" for p in items[:3]],
            prefix,
            directory=True,
            storage_options=options,
        )
    assert sorted(client.find(prefix)) == before
    assert client.cat(f"{prefix}/notes.txt") == b"the user's own"
    # Zarr stores of the user's own there (items kept as directories) are not a
    # dataset's either: they looked like one's leftovers to a check by the objects' names.
    stores = _url("stores")
    for i in range(2):
        with cadstore.OptStorage(f"{stores}/kept_{i}.zarr", storage_options=options) as item:
            item.save_data("face_areas", np.ones(3, dtype=np.float32))
    before = sorted(client.find(stores))
    assert any(name.endswith("kept_0.zarr/zarr.json") for name in before)
    with pytest.raises(OutputExistsError, match=r"holds objects that are not a dataset's"):
        merge_items(items[:2], stores, directory=True, storage_options=options)
    assert sorted(client.find(stores)) == before


def test_append_on_s3_equals_the_local_append(
    server: WeedServer, items: list[Path], tmp_path: Path
) -> None:
    options = server.storage_options()
    url = _url("flow.dataset")
    local = tmp_path / "flow.dataset"
    merge_items(items[:7], url, shard_bytes=SHARD_BYTES, storage_options=options)
    merge_items(items[:7], local, shard_bytes=SHARD_BYTES)
    result = append_items(url, items[5:], storage_options=options)
    append_items(local, items[5:])
    assert len(result.items) == len(items) - 7  # two were in the dataset already
    assert result.total_items == len(items)
    copy = _download(server, url, tmp_path / "copy.dataset")
    assert_same_dataset(copy, local)
    with DatasetReader(copy) as reader:
        assert reader.n_items == len(items)
    merger = DatasetMerger([], url, storage_options=options)
    assert merger.append_data(items).items == []  # idempotent


def test_wrong_credentials_name_the_url(
    server: WeedServer, items: list[Path], remote_items: list[str], tmp_path: Path
) -> None:
    url = _url("flow.dataset")
    bad = dict(server.storage_options(), secret=secrets.token_hex(16), config_kwargs=FAST_FAIL)
    with pytest.raises(StorageAccessError, match="access denied") as info:
        merge_items(items, url, storage_options=bad)
    assert url in str(info.value)
    with pytest.raises(StorageAccessError, match="credentials") as info:
        merge_items(remote_items, tmp_path / "in.dataset", storage_options=bad)
    assert remote_items[0] in str(info.value)
    assert not _client(server).exists(url)
    assert list(tmp_path.iterdir()) == []


def test_missing_bucket_names_the_bucket(server: WeedServer, items: list[Path]) -> None:
    options = server.storage_options()
    with pytest.raises(CorruptStoreError, match="bucket 'no-such-bucket-cadstore' does not exist"):
        merge_items(items, "s3://no-such-bucket-cadstore/flow.dataset", storage_options=options)
    with pytest.raises(CorruptStoreError, match="does not exist") as info:
        cadstore.merge(
            ["s3://no-such-bucket-cadstore/encoded/a.zarr.data"],
            _url("flow.dataset"),
            storage_options=options,
        )
    assert "s3://no-such-bucket-cadstore/encoded/a.zarr.data" in str(info.value)


# ---------------------------------------------------------------------- server stopped
@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[WeedServer]:
    """A server of this test's own, which the test may kill."""
    weed = _start(tmp_path / "weed")
    try:
        _client(weed).mkdir(BUCKET)
        yield weed
    finally:
        weed.stop()


def _through(proxy: CutOffProxy, server: WeedServer) -> dict[str, Any]:
    options = server.storage_options(config_kwargs=FAST_FAIL)
    options["client_kwargs"]["endpoint_url"] = proxy.endpoint
    return options


def _upload(server: WeedServer, items: list[Path]) -> list[str]:
    client = _client(server)
    for path in items:
        client.put_file(str(path), f"s3://{BUCKET}/in/{path.name}")
    return [f"s3://{BUCKET}/in/{p.name}" for p in items]


@pytest.mark.parametrize("directory", [False, True], ids=["zip", "directory"])
def test_server_killed_mid_merge_publishes_nothing_and_a_rerun_completes(
    own_server: WeedServer,
    items: list[Path],
    tmp_path: Path,
    directory: bool,
) -> None:
    inputs = _upload(own_server, items)
    out = f"s3://{BUCKET}/out/flow.dataset"
    local = tmp_path / "flow.dataset"
    merge_items(items, local, directory=directory, shard_bytes=SHARD_BYTES)
    # Measure the request bytes of a whole merge, then cut the server off half-way
    # through the output's upload (reads send little; the upload is most of the bytes).
    with CutOffProxy(own_server) as proxy:
        merge_items(
            inputs,
            f"s3://{BUCKET}/probe.dataset",
            directory=directory,
            shard_bytes=SHARD_BYTES,
            storage_options=_through(proxy, own_server),
        )
        total = proxy.uploaded
    size = (
        sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        if directory
        else local.stat().st_size
    )
    assert total > size
    with CutOffProxy(own_server, limit=total - size // 2) as proxy:
        with pytest.raises(StorageUnavailableError, match="cannot reach") as info:
            merge_items(
                inputs,
                out,
                directory=directory,
                shard_bytes=SHARD_BYTES,
                storage_options=_through(proxy, own_server),
            )
        assert proxy.tripped.is_set()
    # Named: the output (cut during its upload) or, for a directory dataset whose members
    # are uploaded while items are read, the item being read.
    assert f"s3://{BUCKET}/" in str(info.value)
    own_server.restart()
    client = _client(own_server)
    # Nothing is published: no zip object, no root zarr.json of a directory dataset.
    assert not client.isfile(out)
    assert not client.isfile(out + "/zarr.json")
    # The failed merge could not remove its lock (the store was gone): the rerun takes it
    # over at once, and says the failed merge was rolled back.
    with pytest.warns(CadstoreWarning, match="rolled back"):
        merge_items(
            inputs,
            out,
            directory=directory,
            shard_bytes=SHARD_BYTES,
            storage_options=own_server.storage_options(),
        )
    if directory:
        prefix = out[len("s3://") :] + "/"
        listed = {k[len(prefix) :] for k in client.find(out)}
        members = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        # Nothing but the dataset's members: the failed merge left nothing behind.
        assert listed <= set(members)
        # Every member, fetched by name: SeaweedFS, killed during the first merge and
        # restarted, has listed the rerun's dataset without a shard a GET returned (about
        # one run in twenty on a loaded machine); the reader asks for a shard its listing
        # lacks (tests/test_dataset_s3.py), so the dataset is whole, and reads whole.
        copy = tmp_path / "copy.dataset"
        for name in members:
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_bytes(client.cat_file(f"{out}/{name}"))
        assert_same_dataset(copy, local)
        with (
            DatasetReader(out, storage_options=own_server.storage_options()) as remote,
            DatasetReader(local) as reference,
        ):
            codes = list(range(reference.n_items))
            pairs = zip(remote.read_items(codes), reference.read_items(codes), strict=True)
            for got, want in pairs:
                for group in want:
                    for name in want[group]:
                        np.testing.assert_array_equal(got[group][name], want[group][name])
    else:
        assert_same_dataset(_download(own_server, out, tmp_path / "copy"), local)


def test_server_killed_while_scanning_skips_no_item(
    own_server: WeedServer, items: list[Path], tmp_path: Path
) -> None:
    """An unreachable store stops the merge: it never passes for a set of bad items."""
    inputs = _upload(own_server, items)
    out = str(tmp_path / "flow.dataset")
    with (
        CutOffProxy(own_server, limit=20_000) as proxy,
        pytest.raises(StorageUnavailableError, match="cannot reach"),
    ):
        cadstore.merge(inputs, out, storage_options=_through(proxy, own_server))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "weed") == []
    own_server.restart()
    result = cadstore.merge(inputs, out, storage_options=own_server.storage_options())
    assert len(result.items) == len(items) and result.errors == []
