"""OptStorage and JsonStorageHandler on S3, against a real server (SeaweedFS ``weed mini``).

The session fixture starts one server on free loopback ports for the whole module; the
fault tests that stop a server start their own. Everything is skipped, with the reason,
only when the ``weed`` binary cannot be executed on this machine.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import s3fs
import zarr

from cadstore import JsonStorageHandler, OptStorage
from cadstore.errors import (
    CorruptStoreError,
    StorageAccessError,
    StorageError,
    StorageUnavailableError,
)
from cadstore.io.filesystems import FsspecFileSystem, filesystem_for
from cadstore.io.location import resolve
from cadstore.io.publish import conditional_writes_supported, copy_file, write_bytes_atomic
from cadstore.storage.base import DataStorage, size_in_kb
from cadstore.testing.conformance import StorageConformance, assert_same
from s3server import CutOffProxy, WeedServer, WeedUnavailableError, start_weed

BUCKET = "cadstore-tests"
# A failure must surface in seconds, not after botocore's default five attempts.
FAST_FAIL = {"retries": {"max_attempts": 1}, "connect_timeout": 5, "read_timeout": 20}


@dataclass(frozen=True)
class S3:
    """The session's server, its bucket and a prefix unique to this test run."""

    server: WeedServer
    bucket: str
    run: str

    def options(self, **client: Any) -> dict[str, Any]:
        """Storage options reaching the server with valid credentials."""
        return self.server.storage_options(**client)

    def url(self, *parts: str) -> str:
        """Return ``s3://<bucket>/<run>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", self.run, *parts])

    def client(self) -> s3fs.S3FileSystem:
        """A separate s3fs client, to inspect the bucket behind cadstore's back."""
        return s3fs.S3FileSystem(skip_instance_cache=True, **self.options())


def _start(data_dir: Path) -> WeedServer:
    try:
        return start_weed(data_dir)
    except WeedUnavailableError as exc:
        pytest.skip(f"SeaweedFS cannot run on this machine: {exc}")


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """One ``weed mini`` for the session, with a bucket created."""
    data_dir = tmp_path_factory.mktemp("weed")
    server = _start(data_dir)
    try:
        env = S3(server, BUCKET, secrets.token_hex(4))
        env.client().mkdir(BUCKET)
        yield env
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _url_for(s3: S3, tmp_path: Path, name: str) -> str:
    # The conformance suite hands out local temp directories; each maps to its own prefix,
    # the same one every time, so reopen() finds what make_storage() wrote.
    digest = hashlib.sha1(str(tmp_path).encode(), usedforsecurity=False).hexdigest()[:16]
    return s3.url(digest, name)


# ---------------------------------------------------------------------- conformance
class _OnS3:
    s3: S3

    @pytest.fixture(autouse=True)
    def _server(self, s3: S3) -> None:
        self.s3 = s3


class TestOptStorageS3(_OnS3, StorageConformance):
    expected_format = "zarr"

    def make_storage(self, tmp_path: Path) -> OptStorage:
        return OptStorage(
            _url_for(self.s3, tmp_path, "item.zarr"), storage_options=self.s3.options()
        )

    def reopen(self, storage: DataStorage, tmp_path: Path) -> DataStorage:
        storage.compress_store()
        storage.close()
        return OptStorage(
            _url_for(self.s3, tmp_path, "item.zarr"), storage_options=self.s3.options()
        )


class TestJsonStorageS3(_OnS3, StorageConformance):
    expected_format = "json"

    def make_storage(self, tmp_path: Path) -> JsonStorageHandler:
        return JsonStorageHandler(
            _url_for(self.s3, tmp_path, "json_output"), storage_options=self.s3.options()
        )

    def reopen(self, storage: DataStorage, tmp_path: Path) -> DataStorage:
        storage.close()
        return JsonStorageHandler(
            _url_for(self.s3, tmp_path, "json_output"), storage_options=self.s3.options()
        )


# ---------------------------------------------------------------------- layout and reads
def _item(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "face_areas": rng.random(1_000_000).astype(np.float32),
        "noise": rng.random(500_000),
        "graph": {"edges_source": np.arange(7, dtype=np.int32), "num_nodes": 8},
    }


def _write_item(url: str, item: dict[str, Any], options: dict[str, Any], **kw: Any) -> int:
    storage = OptStorage(url, storage_options=options, **kw)
    for key, value in item.items():
        storage.save_data(key, value)
    storage.save_metadata("size_cadfile", 1024)
    size = storage.compress_store()
    storage.close()
    return size


def test_item_layout_on_s3(s3: S3) -> None:
    url = s3.url("layout", "parts", "p1.zarr")
    _write_item(url, {"a": np.arange(3)}, s3.options())
    keys = sorted(s3.client().find(s3.url("layout")))
    base = f"{BUCKET}/{s3.run}/layout/parts"
    # One published object, the summary beside it, no working "directory" left behind.
    assert keys == [f"{base}/files_summary/p1.json", f"{base}/p1.zarr.data"]
    with OptStorage(url, storage_options=s3.options()) as storage:
        assert storage.read_only
        assert storage.get_file_path("") == url
        assert storage.compressed_path == url + ".data"
        assert storage.load_metadata("size_cadfile") == 1024


def test_uncompressed_item_is_a_directory_of_objects(s3: S3) -> None:
    """close() without compress_store() keeps a Zarr directory store under the prefix."""
    url = s3.url("directory", "p1.zarr")
    client = s3.client()
    storage = OptStorage(url, storage_options=s3.options())
    storage.save_data("graph", {"edges": np.arange(5), "n": 5})
    storage.save_metadata("size_cadfile", 7)
    storage.close()
    assert client.isfile(url + "/zarr.json")
    assert client.isfile(url + "/metadata.json")
    # Reopened writable, like a local directory store; mode "r" reads it in place.
    with OptStorage(url, storage_options=s3.options(), mode="r") as reader:
        assert_same(reader.load_data("graph/edges"), np.arange(5))
        assert reader.load_metadata("size_cadfile") == 7
    storage = OptStorage(url, storage_options=s3.options())
    assert not storage.read_only
    assert storage.load_metadata("size_cadfile") == 7
    storage.save_data("face_areas", np.ones(3, dtype=np.float32))
    storage.compress_store()
    storage.close()
    # Publishing removed the directory's objects and left the sibling .data alone.
    fs, _ = filesystem_for(url, s3.options())
    assert not fs.isdir(url)
    assert fs.isfile(url + ".data")
    with OptStorage(url, storage_options=s3.options()) as reader:
        assert reader.read_only
        assert sorted(reader.get_keys()) == ["face_areas", "graph"]
    # SeaweedFS keeps an empty "directory" where the objects were; it is not a store.
    with OptStorage(url, storage_options=s3.options(), mode="w") as again:
        again.save_data("a", 1)
        again.compress_store()
    with OptStorage(url, storage_options=s3.options()) as reader:
        assert reader.get_keys() == ["a"]


def test_summary_and_cache_directories_may_be_local(s3: S3, tmp_path: Path) -> None:
    url = s3.url("local-summary", "p1.zarr")
    storage = OptStorage(url, storage_options=s3.options(), summary_dir=tmp_path / "summary")
    storage.save_data("a", np.arange(3))
    storage.close()
    assert (tmp_path / "summary" / "p1.json").is_file()
    assert s3.client().isdir(url)  # the item itself stays on S3, as a directory store


def test_item_reads_are_ranged(s3: S3) -> None:
    """Loading one small key of a large item downloads a small part of it."""
    item = _item(np.random.default_rng(1))
    url = s3.url("ranged", "big.zarr")
    size = _write_item(url, item, s3.options())
    with CutOffProxy(s3.server) as proxy:
        options = s3.options()
        options["client_kwargs"]["endpoint_url"] = proxy.endpoint
        with OptStorage(url, storage_options=options) as storage:
            assert_same(storage.load_data("graph"), item["graph"])
        small = proxy.downloaded
    assert size > 5_000_000
    assert small < size / 8, f"{small} bytes downloaded to read one small key of {size}"
    with OptStorage(url, storage_options=s3.options()) as storage:
        assert_same(storage.load_data("face_areas"), item["face_areas"])


def test_small_item_read_only_costs_no_listing_and_one_read(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a published item with mode="r" looks for no working directory, and a small
    item is fetched whole once: its members cost no further request."""
    from cadstore.io.filesystems import FsspecFileSystem

    item = {"face_areas": np.arange(500, dtype=np.float32), "graph": {"n": 3}, "name": "p"}
    url = s3.url("small", "p1.zarr")
    _write_item(url, item, s3.options())
    listed: list[str] = []
    isdir = FsspecFileSystem.isdir
    monkeypatch.setattr(
        FsspecFileSystem, "isdir", lambda fs, path: listed.append(path) or isdir(fs, path)
    )
    with CutOffProxy(s3.server) as proxy:
        options = s3.options()
        options["client_kwargs"]["endpoint_url"] = proxy.endpoint
        with OptStorage(url, storage_options=options, mode="r") as storage:
            opened = proxy.downloaded
            for key, value in item.items():
                assert_same(storage.load_data(key), value)
            assert proxy.downloaded == opened  # every member came from the one read
    assert listed == []
    with OptStorage(url, storage_options=s3.options()) as storage:  # mode=None must look
        assert storage.load_data("name") == "p"
    assert listed == [url]


def test_zarr_python_reads_the_data_object(s3: S3) -> None:
    """zarr-python opens a ``.data`` on S3 through FsspecStore, with ranged reads."""
    item = _item(np.random.default_rng(2))
    url = s3.url("zarr", "p1.zarr")
    size = _write_item(url, item, s3.options())
    client = s3.client()
    # A small block and no read-ahead: every read is a range request we can count.
    with client.open(url + ".data", "rb", block_size=64 * 1024, cache_type="bytes") as fh:
        zip_fs = fsspec.filesystem("zip", fo=fh)
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        store = zarr.storage.FsspecStore(
            AsyncFileSystemWrapper(zip_fs, asynchronous=True), read_only=True, path=""
        )
        group = zarr.open_group(store, mode="r")
        assert sorted(group.keys()) == ["face_areas", "graph", "noise"]
        np.testing.assert_array_equal(group["graph/edges_source"][:], np.arange(7))
        assert fh.cache.total_requested_bytes < size / 8
        np.testing.assert_array_equal(group["face_areas"][:], item["face_areas"])
    # The chained URL form, as a user would type it.
    store = zarr.storage.FsspecStore.from_url(
        f"zip::{url}.data", storage_options={"s3": s3.options()}, read_only=True
    )
    np.testing.assert_array_equal(zarr.open_group(store, mode="r")["noise"][:], item["noise"])


def test_credentials_and_endpoint_from_the_environment(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.server.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    url = s3.url("env", "p1.zarr")
    # A token of its own keeps fsspec from reusing a client built with other settings.
    options = {"skip_instance_cache": True}
    _write_item(url, {"a": np.arange(4)}, options)
    with OptStorage(url, storage_options=options) as storage:
        assert_same(storage.load_data("a"), np.arange(4))
    json_url = s3.url("env", "json")
    with JsonStorageHandler(json_url, storage_options=options) as handler:
        handler.save_data("a", [1, 2])
    assert s3.client().isfile(json_url + "/a.json")


# ---------------------------------------------------------------------- the fs layer
def test_fs_layer_on_s3(s3: S3) -> None:
    fs, root = filesystem_for(s3.url("fs"), s3.options())
    assert isinstance(fs, FsspecFileSystem)
    assert root == s3.url("fs")
    item, data = fs.join(root, "p.zarr"), fs.join(root, "p.zarr.data")
    assert fs.dirname(item) == root
    assert fs.basename(item) == "p.zarr"
    assert write_bytes_atomic(resolve(data, s3.options()), b"published") == 9
    # Keys with glob characters are ordinary names, never patterns.
    for name in ("zarr.json", "a*b/c/0", "x[1]/zarr.json"):
        write_bytes_atomic(resolve(fs.join(item, name), s3.options()), name.encode())
    assert fs.isdir(item)
    assert not fs.isfile(item)
    assert fs.isfile(data)
    assert fs.size(data) == 9
    assert sorted(fs.listdir(item)) == ["a*b", "x[1]", "zarr.json"]
    assert dict(fs.walk_files(item)) == {
        "a*b/c/0": fs.join(item, "a*b/c/0"),
        "x[1]/zarr.json": fs.join(item, "x[1]/zarr.json"),
        "zarr.json": fs.join(item, "zarr.json"),
    }
    with fs.open_read(data) as fh:
        fh.seek(3)
        assert fh.read(3) == b"lis"
    copy_file(resolve(data, s3.options()), resolve(fs.join(root, "copy"), s3.options()))
    assert fs.read_bytes(fs.join(root, "copy")) == b"published"
    fs.rmtree(item)
    # The sibling that shares the prefix "p.zarr" survives the removal of "p.zarr/".
    assert not fs.exists(item)
    assert fs.read_bytes(data) == b"published"
    fs.remove(data)
    fs.remove(data)
    assert not fs.exists(data)
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(data)
    with pytest.raises(FileNotFoundError):
        fs.open_read(data)


def test_object_ranges_at_and_past_the_end_read_as_on_local_disk(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``read_object_ranges`` on S3 raised the server's HTTP 416 (range not satisfiable)
    for any range of an empty object, or starting at or after an object's end, and read a
    whole object for a range of length 0 starting at 0. It reads what local disk reads
    now: the bytes of the range that exist (``b""`` where none do, or for a length of 0
    or less), ``None`` for a missing object; in one request each, in order."""
    contents = {"empty": b"", "ten": b"0123456789"}
    for name, data in contents.items():
        s3.client().pipe_file(s3.url("ranges", name), data)
        (tmp_path / name).write_bytes(data)
    spans = [(0, 10), (0, 1), (0, 0), (5, 3), (3, -1), (8, 5), (10, 5), (20, 5), (2, 3)]
    requests = [(name, start, length) for name in (*contents, "missing") for start, length in spans]
    expected = [
        contents[name][start : start + max(0, length)] if name in contents else None
        for name, start, length in requests
    ]
    local, _ = filesystem_for(tmp_path)
    assert local.read_object_ranges([(str(tmp_path / n), a, b) for n, a, b in requests]) == (
        expected
    )
    remote, _ = filesystem_for(s3.url("ranges"), s3.options())
    sent = _count_requests(monkeypatch)
    assert remote.read_object_ranges([(s3.url("ranges", n), a, b) for n, a, b in requests]) == (
        expected
    )
    assert len(sent) == len(requests)


def test_exclusive_write_is_a_conditional_put(s3: S3) -> None:
    fs, root = filesystem_for(s3.url("exclusive"), s3.options())
    assert isinstance(fs, FsspecFileSystem)
    # SeaweedFS answers 412, like AWS.
    assert conditional_writes_supported(resolve(root, s3.options()))
    assert not fs.isdir(root)  # the probe cleaned up after itself
    pointer = resolve(fs.join(root, "version"), s3.options())
    write_bytes_atomic(pointer, b"1", exclusive=True)
    with pytest.raises(FileExistsError):
        write_bytes_atomic(pointer, b"2", exclusive=True)
    assert fs.read_bytes(pointer.path) == b"1"


def test_local_exclusive_write(tmp_path: Path) -> None:
    """The local counterpart of the conditional put: create-if-absent, atomically."""
    fs, path = filesystem_for(tmp_path / "version")
    write_bytes_atomic(resolve(path), b"1", exclusive=True)
    with pytest.raises(FileExistsError):
        write_bytes_atomic(resolve(path), b"2", exclusive=True)
    assert fs.read_bytes(path) == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["version"]  # no temp file left


# ---------------------------------------------------------------------- bad input and faults
def test_wrong_credentials(s3: S3) -> None:
    url = s3.url("creds", "p1.zarr")
    _write_item(url, {"a": np.arange(3)}, s3.options())
    for bad in (
        dict(s3.options(), secret=secrets.token_hex(16)),
        dict(s3.options(), key="nobody"),
    ):
        bad["config_kwargs"] = FAST_FAIL
        for mode in (None, "r", "w"):
            with pytest.raises(StorageAccessError, match="access denied") as info:
                OptStorage(url, storage_options=bad, mode=mode)
            # A storage error naming the URL, and not a corrupt-store error: the data is fine.
            assert isinstance(info.value, StorageError)
            assert not isinstance(info.value, CorruptStoreError)
            assert isinstance(info.value, PermissionError)
            assert url in str(info.value)
        with pytest.raises(StorageAccessError, match="credentials"):
            JsonStorageHandler(s3.url("creds", "json"), storage_options=bad)
    with OptStorage(url, storage_options=s3.options()) as storage:
        assert_same(storage.load_data("a"), np.arange(3))


def test_missing_bucket(s3: S3) -> None:
    url = "s3://no-such-bucket-cadstore/parts/p1.zarr"
    for mode in (None, "r", "w"):
        with pytest.raises(CorruptStoreError, match="bucket 'no-such-bucket-cadstore' does not"):
            OptStorage(url, storage_options=s3.options(), mode=mode)
    with pytest.raises(CorruptStoreError, match="does not exist") as info:
        JsonStorageHandler("s3://no-such-bucket-cadstore/json", storage_options=s3.options())
    assert "s3://no-such-bucket-cadstore/json" in str(info.value)
    assert not s3.client().exists("no-such-bucket-cadstore")


def test_unreachable_endpoint(s3: S3) -> None:
    # Nothing listens on a port that was just free (the proxy is closed at once).
    with CutOffProxy(s3.server) as proxy:
        endpoint = proxy.endpoint
    options = s3.options(config_kwargs=FAST_FAIL)
    options["client_kwargs"]["endpoint_url"] = endpoint
    with pytest.raises(StorageUnavailableError, match="cannot reach") as info:
        OptStorage(s3.url("down", "p1.zarr"), storage_options=options)
    assert isinstance(info.value, ConnectionError)
    assert endpoint in str(info.value)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[WeedServer]:
    """A server of this test's own, which the test may stop."""
    server = _start(tmp_path / "weed")
    try:
        s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options()).mkdir(BUCKET)
        yield server
    finally:
        server.stop()


def test_server_stopped_mid_write_leaves_no_partial_object(own_server: WeedServer) -> None:
    url = f"s3://{BUCKET}/crash/p1.zarr"
    old = {"a": np.arange(10)}
    _write_item(url, old, own_server.storage_options())
    # Incompressible, so the upload is about 3 MB and the cut lands inside it.
    new = {"face_areas": np.random.default_rng(3).random(400_000)}
    with CutOffProxy(own_server, limit=1_000_000) as proxy:
        options = own_server.storage_options(config_kwargs=FAST_FAIL)
        options["client_kwargs"]["endpoint_url"] = proxy.endpoint
        storage = OptStorage(url, storage_options=options, mode="w")
        for key, value in new.items():
            storage.save_data(key, value)
        with pytest.raises(StorageUnavailableError, match="cannot reach"):
            storage.compress_store()
        assert proxy.tripped.is_set()
    own_server.restart()
    client = s3fs.S3FileSystem(skip_instance_cache=True, **own_server.storage_options())
    # The killed upload left the previous complete object and nothing else.
    assert sorted(client.find(f"{BUCKET}/crash")) == [
        f"{BUCKET}/crash/files_summary/p1.json",
        f"{BUCKET}/crash/p1.zarr.data",
    ]
    with OptStorage(url, storage_options=own_server.storage_options()) as reader:
        assert_same(reader.load_data("a"), old["a"])
        assert reader.get_keys() == ["a"]
    # Once the server is back, the same write runs to completion.
    _write_item(url, new, own_server.storage_options(), mode="w")
    with OptStorage(url, storage_options=own_server.storage_options()) as reader:
        assert_same(reader.load_data("face_areas"), new["face_areas"])


def test_no_credentials_at_all(s3: S3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key anywhere: a StorageAccessError that says so, not botocore's bare message."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    # Otherwise botocore would look for instance credentials on the network.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    options = {
        "skip_instance_cache": True,
        "client_kwargs": {"endpoint_url": s3.server.endpoint},
        "config_kwargs": FAST_FAIL,
    }
    url = s3.url("nocreds", "p1.zarr")
    with pytest.raises(StorageAccessError, match="no credentials") as info:
        OptStorage(url, storage_options=options, mode="r")
    assert url in str(info.value)


def test_a_zarr_v2_item_is_a_directory_of_objects_too(s3: S3) -> None:
    """``OptStorage(..., zarr_format=2)`` closed without compress_store() on S3 failed
    ("no root zarr.json was produced"): the prefix's publisher knew only v3's root. The
    v2 root documents go up last, and the store reads back and is rewritten."""
    url = s3.url("directory", "v2.zarr")
    client = s3.client()
    storage = OptStorage(url, storage_options=s3.options(), zarr_format=2)
    storage.save_data("face_areas", np.arange(4, dtype=np.float32))
    storage.save_metadata("size_cadfile", 7)
    storage.close()
    assert client.isfile(url + "/.zgroup") and not client.isfile(url + "/zarr.json")
    with OptStorage(url, storage_options=s3.options(), mode="r") as reader:
        assert_same(reader.load_data("face_areas"), np.arange(4, dtype=np.float32))
        assert reader.load_metadata("size_cadfile") == 7
    with OptStorage(url, storage_options=s3.options(), zarr_format=2, mode="w") as again:
        again.save_data("edge_lengths", np.ones(2))
    with OptStorage(url, storage_options=s3.options(), mode="r") as reader:
        assert reader.get_keys() == ["edge_lengths"]


def _count_requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record ``(operation, key name)`` of every request s3fs sends from now on.

    Both entry points are replaced: s3fs's blocking ``call_s3`` (what cadstore's own
    HEAD and listing requests use) wraps the original ``_call_s3`` function, not the
    attribute, so replacing ``_call_s3`` alone would miss them.
    """
    from fsspec.asyn import sync_wrapper

    sent: list[tuple[str, str]] = []
    real = s3fs.S3FileSystem._call_s3

    async def counted(self: s3fs.S3FileSystem, method: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((method, str(kwargs.get("Key", "")).rsplit("/", 1)[-1]))
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", sync_wrapper(counted))
    return sent


def test_a_json_value_loads_with_one_request(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a value of a JSON store queried its file's size (a HEAD, against the limit
    on what it parses) and then read it (a GET): two requests. It is one ranged GET now,
    of at most one byte past the limit, for a key with its own file, a key inside a dict
    file and a group of files (one per file); opening queries no file's size either."""
    url = s3.url("json_requests", "store")
    values: dict[str, Any] = {
        "face_areas": np.arange(3.0),
        "graph": {"a": np.arange(2), "n": 3},
        "graph/a": np.arange(2),
        "faces": {"ids": np.arange(4), "n": 7},
    }
    files = {
        "face_areas": ["face_areas.json"],
        "graph": ["graph.json"],
        "graph/a": ["graph.json"],
        "faces": ["faces_ids.json", "faces_n.json"],
    }
    with JsonStorageHandler(url, storage_options=s3.options()) as storage:
        for key in ("face_areas", "graph", "faces/ids", "faces/n"):
            value = values[key] if key in values else values["faces"][key.split("/")[1]]
            storage.save_data(key, value)
    sent = _count_requests(monkeypatch)
    with JsonStorageHandler(url, storage_options=s3.options(), read_only=True) as storage:
        storage.load_metadata()
        names = {name for names in files.values() for name in names} | {"metadata.json"}
        opened = sorted(r for r in sent if r[1].endswith(".json"))
        assert opened == [("get_object", name) for name in sorted(names)], sent
        for key, value in values.items():
            sent.clear()
            assert_same(storage.load_data(key), value, key)
            assert sorted(sent) == [("get_object", name) for name in files[key]], (key, sent)


def test_a_json_file_over_the_limit_is_refused_on_s3(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit on what a JSON store parses holds without a size query for a small
    file: one ranged read. An object longer than the first read is sized before more is
    fetched, so an object far over the limit is refused after two small requests, not a
    download of the limit's bytes; one within it is read whole."""
    from cadstore.io import filesystems
    from cadstore.storage import json_handler

    url = s3.url("json_limit", "store")
    with JsonStorageHandler(url, storage_options=s3.options()) as storage:
        storage.save_data("small", 1)
        storage.save_data("big", np.arange(2000))
        small = len(s3.client().cat_file(f"{url}/small.json"))
        big = s3.client().cat_file(f"{url}/big.json")
    monkeypatch.setattr(filesystems, "_PROBE_BYTES", small)
    fs, _ = filesystem_for(url, s3.options())
    ranges: list[str] = []
    real = s3fs.S3FileSystem._call_s3

    async def counted(self: s3fs.S3FileSystem, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "get_object":
            ranges.append(str(kwargs.get("Range")))
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    assert fs.read_limited(f"{url}/small.json", len(big)) is not None
    assert ranges == [f"bytes=0-{small}"]  # one read of the probe's bytes and one more
    ranges.clear()
    assert fs.read_limited(f"{url}/big.json", len(big)) == big  # the probe, then whole
    assert ranges == [f"bytes=0-{small}", f"bytes=0-{len(big)}"]
    ranges.clear()
    assert fs.read_limited(f"{url}/big.json", len(big) - 1) is None  # the probe alone
    assert ranges == [f"bytes=0-{small}"]
    monkeypatch.setattr(json_handler, "MAX_JSON_BYTES", small)
    with pytest.raises(CorruptStoreError, match=rf"big\.json.*{small} byte limit"):
        JsonStorageHandler(url, storage_options=s3.options(), read_only=True)


def test_an_empty_json_file_on_s3_is_named_as_not_json(s3: S3) -> None:
    """A ranged read of an empty object is refused by the server (416: no byte 0): it
    reads as empty, and the store names the file as not valid JSON, as on local disk."""
    url = s3.url("json_empty", "store")
    with JsonStorageHandler(url, storage_options=s3.options()) as storage:
        storage.save_data("a", 1)
    s3.client().pipe_file(f"{url}/empty.json", b"")
    fs, _ = filesystem_for(url, s3.options())
    assert fs.read_limited(f"{url}/empty.json", 10) == b""
    whole = s3.client().cat_file(f"{url}/a.json")
    assert fs.read_limited(f"{url}/a.json", len(whole)) == whole
    assert fs.read_limited(f"{url}/a.json", len(whole) - 1) is None
    with pytest.raises(FileNotFoundError):
        fs.read_limited(f"{url}/missing.json", 10)
    with pytest.raises(CorruptStoreError, match=r"empty\.json.*not valid JSON"):
        JsonStorageHandler(url, storage_options=s3.options(), read_only=True)


def test_a_json_save_queries_no_size(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each save of a JSON store asked the size of the file it had just written (a HEAD
    after the PUT) to record it, though the bytes written were known. A save is now the
    PUTs of the file and of ``metadata.json`` and nothing else, whether the key has its
    own file, goes into a dict file or replaces a group of files; the sizes it records
    are the files' own, and a reopened store loads every value."""
    url = s3.url("json_save_requests", "store")
    with JsonStorageHandler(url, storage_options=s3.options()) as storage:
        storage.load_metadata()  # the open's reads, not the saves'
        sent = _count_requests(monkeypatch)
        saves: list[tuple[str, Any, str]] = [
            ("face_areas", np.arange(3.0), "face_areas.json"),
            ("graph", {"a": np.arange(2), "n": 3}, "graph.json"),
            ("faces/ids", np.arange(4), "faces_ids.json"),
            ("faces", {"ids": np.arange(5)}, "faces.json"),
        ]
        for key, value, name in saves:
            sent.clear()
            storage.save_data(key, value)
            assert [op for op, _ in sent if op != "delete_object"] == [
                "put_object",
                "put_object",
            ], (key, sent)
            assert [n for op, n in sent if op == "put_object"] == [name, "metadata.json"]
        sent.clear()
        storage.save_data("graph/b", np.arange(300))  # read, then rewritten
        assert [op for op, _ in sent] == ["get_object", "put_object", "put_object"], sent
    client = s3.client()
    kb = {
        name: size_in_kb(len(client.cat_file(f"{url}/{name}")))
        for name in ("face_areas.json", "graph.json", "faces.json")
    }
    with JsonStorageHandler(url, storage_options=s3.options(), read_only=True) as reopened:
        assert reopened.load_metadata("file_sizes_KB") == {
            "face_areas": kb["face_areas.json"],
            "graph": {"b": kb["graph.json"]},  # a key saved into it: its entries' sizes
            "faces": kb["faces.json"],
        }
        assert_same(reopened.load_data("face_areas"), np.arange(3.0), "face_areas")
        assert_same(
            reopened.load_data("graph"), {"a": np.arange(2), "n": 3, "b": np.arange(300)}, "graph"
        )
        assert_same(reopened.load_data("faces"), {"ids": np.arange(5)}, "faces")


def test_a_json_delete_inside_a_dict_file_puts_the_metadata_once(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting a key with a size of its own inside a dict file of a JSON store put
    ``metadata.json`` twice (without the key's size, then with the file's new size for
    the other entries), and got the dict file twice (to find the key, then to rewrite
    it). One GET of the file now, one PUT of ``metadata.json``, then the file's, with no
    size query; the key is gone, the other keys are intact, and a reopened store agrees."""
    url = s3.url("json_delete_requests", "store")
    with JsonStorageHandler(url, storage_options=s3.options()) as storage:
        storage.save_data("graph", {"a": np.arange(2)})
        storage.save_data("graph/b", np.arange(900))
        storage.save_data("graph/c", np.arange(300))
        sent = _count_requests(monkeypatch)
        storage.delete_data("graph/b")
        assert sent == [
            ("get_object", "graph.json"),
            ("put_object", "metadata.json"),
            ("put_object", "graph.json"),
        ], sent
    graph_kb = size_in_kb(len(s3.client().cat_file(f"{url}/graph.json")))
    with JsonStorageHandler(url, storage_options=s3.options(), read_only=True) as reopened:
        assert "graph/b" not in reopened
        assert reopened.load_metadata("file_sizes_KB") == {"graph": {"c": graph_kb}}
        assert_same(reopened.load_data("graph"), {"a": np.arange(2), "c": np.arange(300)}, "g")
