"""Hostile and broken files: a clear CorruptStoreError naming the file, never a crash."""

from __future__ import annotations

import contextlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from cadstore import OptStorage
from cadstore.errors import CorruptStoreError, KeyNotFoundError, LimitExceededError
from cadstore.format.limits import Limits
from fuzzing import FUZZ_SETTINGS, json_values, set_field


def _good(tmp_path: Path, name: str = "part") -> Path:
    storage = OptStorage(tmp_path / f"{name}.zarr")
    storage.save_data("face_areas", np.linspace(0, 1, 5000, dtype=np.float32))
    storage.save_data("graph", {"edges_source": np.arange(300, dtype=np.int32), "num_nodes": 4})
    storage.save_data("description", "a part")
    storage.compress_store()
    storage.close()
    return tmp_path / f"{name}.zarr.data"


def _open_and_read_all(data: Path, **kwargs: object) -> None:
    store = str(data)[: -len(".data")]
    with OptStorage(store, **kwargs) as storage:  # type: ignore[arg-type]
        for key in storage.get_keys():
            storage.load_data(key)
        storage.load_metadata()


def _rewrite(
    src: Path, dst: Path, edit: dict[str, bytes | None], extra: dict[str, bytes] | None = None
) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit.get(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dst


@pytest.mark.parametrize("cut", [1, 22, 100, 1000, -1])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    data = _good(tmp_path)
    raw = data.read_bytes()
    data.write_bytes(raw[:cut] if cut > 0 else raw[:-1])
    with pytest.raises(CorruptStoreError, match=r"part\.zarr\.data"):
        _open_and_read_all(data)


def test_every_single_bit_flip_is_caught_or_harmless(tmp_path: Path) -> None:
    data = _good(tmp_path)
    raw = bytearray(data.read_bytes())
    rng = np.random.default_rng(0)
    for pos in rng.choice(len(raw), size=150, replace=False):
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        data.write_bytes(bytes(flipped))
        with contextlib.suppress(CorruptStoreError, KeyNotFoundError):
            _open_and_read_all(data)


@pytest.mark.parametrize(
    "member", ["../evil", "/abs/evil", "a/../../evil", "back\\slash", "ctl\x01name"]
)
def test_zip_slip_member_names(tmp_path: Path, member: str) -> None:
    data = _good(tmp_path)
    bad = _rewrite(data, tmp_path / "bad.zarr.data", {}, extra={member: b"x"})
    with pytest.raises(CorruptStoreError, match="unsafe zip member"):
        _open_and_read_all(bad)
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("dates", ["cadstore's", "zipfile's"])
def test_duplicate_members(tmp_path: Path, dates: str) -> None:
    """A member appended again under a name the item holds (``metadata.json``) is refused
    when an entry of the name is cadstore's (its writers write each name once); copied
    by zipfile, every entry is zipfile's, and the repeat is another writer's rewrite,
    read from its last entry as zipfile reads it (see ZipSource)."""
    data = _good(tmp_path)
    bad = tmp_path / "dup.zarr.data"
    with zipfile.ZipFile(data) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            # zipfile dates an entry given by name now, one given by its info as it was.
            zout.writestr(info if dates == "cadstore's" else info.filename, zin.read(info))
        with pytest.warns(UserWarning, match="Duplicate name"):
            zout.writestr("metadata.json", b'{"rewritten": true}')
    if dates == "cadstore's":
        with pytest.raises(CorruptStoreError, match=r"dup\.zarr\.data.*'metadata\.json'"):
            _open_and_read_all(bad)
    else:
        _open_and_read_all(bad)
        with OptStorage(str(bad)[: -len(".data")], mode="r") as storage:
            assert storage.load_metadata() == {"rewritten": True}


def test_declared_shape_bomb(tmp_path: Path) -> None:
    data = _good(tmp_path)
    with zipfile.ZipFile(data) as zf:
        root = json.loads(zf.read("zarr.json"))
        doc = json.loads(zf.read("face_areas/zarr.json"))
    for d in (doc, root["consolidated_metadata"]["metadata"]["face_areas"]):
        d["shape"] = [2**40]
        d["chunk_grid"]["configuration"]["chunk_shape"] = [2**20]
    _rewrite(
        data,
        tmp_path / "bomb.zarr.data",
        {"zarr.json": json.dumps(root).encode(), "face_areas/zarr.json": json.dumps(doc).encode()},
    )
    with (
        OptStorage(tmp_path / "bomb.zarr") as storage,
        pytest.raises(LimitExceededError, match="face_areas"),
    ):
        storage.load_data("face_areas")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("shape", [6, 1.5]),  # a valid integer first, then a float
        ("shape", [6, "7"]),
        ("shape", [True]),
        ("shape", [-1]),
        ("shape", "6"),
        ("chunk_shape", [6, 0]),
        ("chunk_shape", [0]),
        ("chunk_shape", [6, None]),
    ],
)
def test_malformed_shapes_are_corrupt_store_errors(
    tmp_path: Path, field: str, value: object
) -> None:
    data = _good(tmp_path)
    with zipfile.ZipFile(data) as zf:
        root = json.loads(zf.read("zarr.json"))
        doc = json.loads(zf.read("face_areas/zarr.json"))
    for d in (doc, root["consolidated_metadata"]["metadata"]["face_areas"]):
        if field == "shape":
            d["shape"] = value
        else:
            d["chunk_grid"]["configuration"]["chunk_shape"] = value
    bad = tmp_path / "bad.zarr.data"
    _rewrite(
        data,
        bad,
        {"zarr.json": json.dumps(root).encode(), "face_areas/zarr.json": json.dumps(doc).encode()},
    )
    with pytest.raises(CorruptStoreError, match=field):
        _open_and_read_all(bad)


def test_chunk_bomb(tmp_path: Path) -> None:
    data = _good(tmp_path)
    # 64 MiB of zeros compresses to a few KB: a frame claiming far more than the chunk holds.
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 * 1024 * 1024))
    _rewrite(data, tmp_path / "bomb.zarr.data", {"face_areas/c/0": bomb})
    with (
        OptStorage(tmp_path / "bomb.zarr") as storage,
        pytest.raises(CorruptStoreError, match="declares"),
    ):
        storage.load_data("face_areas")


def test_chunk_size_limit_is_configurable(tmp_path: Path) -> None:
    data = _good(tmp_path)
    with pytest.raises(CorruptStoreError, match="max_chunk_bytes"):
        _open_and_read_all(data, limits=Limits(max_chunk_bytes=100))


def test_pickle_codec_is_refused(tmp_path: Path) -> None:
    data = _good(tmp_path)
    with zipfile.ZipFile(data) as zf:
        root = json.loads(zf.read("zarr.json"))
        doc = json.loads(zf.read("face_areas/zarr.json"))
    for d in (doc, root["consolidated_metadata"]["metadata"]["face_areas"]):
        d["codecs"].append({"name": "numcodecs.pickle", "configuration": {}})
    _rewrite(
        data,
        tmp_path / "pickle.zarr.data",
        {"zarr.json": json.dumps(root).encode(), "face_areas/zarr.json": json.dumps(doc).encode()},
    )
    with (
        OptStorage(tmp_path / "pickle.zarr") as storage,
        pytest.raises(CorruptStoreError, match="allow-list"),
    ):
        storage.load_data("face_areas")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"zarr_format": 3}',
        b'{"zarr_format": 3, "node_type": "array"}',
        b"{" * 100_000,
    ],
)
def test_malformed_root_metadata(tmp_path: Path, content: bytes) -> None:
    data = _good(tmp_path)
    bad = _rewrite(data, tmp_path / "meta.zarr.data", {"zarr.json": content})
    with pytest.raises(CorruptStoreError, match=r"meta\.zarr\.data"):
        _open_and_read_all(bad)


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "x.zarr.data").write_bytes(b"hello, I am not a zip file" * 10)
    with pytest.raises(CorruptStoreError, match="not a readable zip"):
        OptStorage(tmp_path / "x.zarr")


def test_zip_without_zarr(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "x.zarr.data", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CorruptStoreError, match="not a Zarr store"):
        OptStorage(tmp_path / "x.zarr")


def test_directory_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(CorruptStoreError, match="not a Zarr store"):
        OptStorage(tmp_path / "x.zarr")
    assert (tmp_path / "x.zarr" / "notes.txt").read_text() == "mine"


def test_missing_key_is_keyerror(tmp_path: Path) -> None:
    _good(tmp_path)
    with OptStorage(tmp_path / "part.zarr") as storage, pytest.raises(KeyError, match="nope"):
        storage.load_data("nope")


def test_nan_is_refused_and_named(tmp_path: Path) -> None:
    storage = OptStorage(tmp_path / "p.zarr")
    with pytest.raises(ValueError, match=r"face_areas.*NaN"):
        storage.save_data("face_areas", np.array([1.0, np.nan], dtype=np.float32))
    storage.close()
    nan_ok = OptStorage(tmp_path / "q.zarr", allow_nan=True)
    nan_ok.save_data("face_areas", np.array([1.0, np.nan], dtype=np.float32))
    assert np.isnan(nan_ok.load_data("face_areas")[1])
    nan_ok.close()


# ---------------------------------------------------------------------------- fuzzing
_FIELDS = [
    ("zarr_format",),
    ("node_type",),
    ("shape",),
    ("data_type",),
    ("chunk_grid",),
    ("chunk_grid", "name"),
    ("chunk_grid", "configuration"),
    ("chunk_grid", "configuration", "chunk_shape"),
    ("chunk_key_encoding",),
    ("chunk_key_encoding", "configuration"),
    ("fill_value",),
    ("codecs",),
    ("codecs", 0),
    ("codecs", 0, "configuration"),
    ("codecs", 1, "name"),
    ("codecs", 1, "configuration"),
    ("attributes",),
    ("attributes", "cadstore_kind"),
    ("dimension_names",),
    ("dimension_names", 0),
    ("storage_transformers",),
]


@FUZZ_SETTINGS
@given(
    array=st.sampled_from(["face_areas", "graph/edges_source"]),
    field=st.sampled_from(_FIELDS),
    value=json_values(),
)
def test_any_metadata_field_holding_any_json_is_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory, array: str, field: tuple[Any, ...], value: Any
) -> None:
    """Whatever JSON an array's metadata field holds, reading gives data or a cadstore error."""
    tmp = tmp_path_factory.mktemp("fuzz")
    data = _good(tmp)
    with zipfile.ZipFile(data) as zf:
        root = json.loads(zf.read("zarr.json"))
        doc = json.loads(zf.read(f"{array}/zarr.json"))
    entry = root["consolidated_metadata"]["metadata"][array]
    for target in (doc, entry):
        set_field(target, field, value)
    bad = _rewrite(
        data,
        tmp / "bad.zarr.data",
        {"zarr.json": json.dumps(root).encode(), f"{array}/zarr.json": json.dumps(doc).encode()},
    )
    with contextlib.suppress(CorruptStoreError, LimitExceededError, KeyNotFoundError):
        _open_and_read_all(bad)


@FUZZ_SETTINGS
@given(
    where=st.sampled_from(
        ["root attributes", "consolidated kind", "consolidated entry", "metadata.json"]
    ),
    value=json_values(),
)
def test_any_root_document_content_is_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory, where: str, value: Any
) -> None:
    """The group document and metadata.json holding any JSON: data or a cadstore error."""
    tmp = tmp_path_factory.mktemp("fuzzroot")
    data = _good(tmp)
    with zipfile.ZipFile(data) as zf:
        root = json.loads(zf.read("zarr.json"))
    edit: dict[str, bytes | None] = {}
    if where == "root attributes":
        root["attributes"] = value
    elif where == "consolidated kind":
        root["consolidated_metadata"]["kind"] = value
    elif where == "consolidated entry":
        root["consolidated_metadata"]["metadata"]["graph/edges_source"] = value
    else:
        edit["metadata.json"] = json.dumps(value).encode()
    edit["zarr.json"] = json.dumps(root).encode()
    bad = _rewrite(data, tmp / "bad.zarr.data", edit)
    with contextlib.suppress(CorruptStoreError, LimitExceededError, KeyNotFoundError):
        _open_and_read_all(bad)
