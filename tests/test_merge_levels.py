"""zstd levels per array: face-pair arrays at their own level, arrays of small rows
stored as they are, each kept by appends."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import cadstore
from cadstore.dataset import DatasetReader
from cadstore.merging import merge_items
from cadstore.merging.options import (
    DEFAULT_LEVEL,
    FACE_PAIR_LEVEL,
    SMALL_ROW_BYTES,
    SMALL_ROWS_LEVEL,
)

FACE_PAIRS = {
    "faceface/face_pair_edges_path",
    "faceface_upper/d2_distance",
    "faceface_upper/a3_distance",
    "faceface_upper/extended_adjacency",
}


def _levels(path: Path) -> dict[str, int | None]:
    """``{"group/array": zstd level}`` of every sharded array (``None``: no zstd)."""
    out: dict[str, int | None] = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if not name.endswith("/zarr.json"):
                continue
            doc = json.loads(zf.read(name))
            codecs = doc.get("codecs") or []
            if doc.get("node_type") != "array" or codecs[0]["name"] != "sharding_indexed":
                continue
            inner = codecs[0]["configuration"]["codecs"]
            levels = [c["configuration"]["level"] for c in inner if c["name"] == "zstd"]
            out[name.rsplit("/", 1)[0]] = levels[0] if levels else None
    return out


def _small_rows(path: Path) -> set[str]:
    """The sharded arrays of rows of at most SMALL_ROW_BYTES bytes outside the face-pair
    groups, provenance left out: those a merge stores as they are (SMALL_ROWS_LEVEL)."""
    out = set()
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if not name.endswith("/zarr.json") or name.startswith("faceface"):
                continue
            doc = json.loads(zf.read(name))
            codecs = doc.get("codecs") or []
            if doc.get("node_type") != "array" or codecs[0]["name"] != "sharding_indexed":
                continue
            array = name.rsplit("/", 1)[0]
            row = int(np.prod(doc["shape"][1:])) * np.dtype(doc["data_type"]).itemsize
            if row <= SMALL_ROW_BYTES and not array.rsplit("/", 1)[-1].startswith("file_id_code"):
                out.add(array)
    return out


def _chunks(path: Path, prefix: str) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist() if n.startswith(prefix + "/c/")}


def test_face_pairs_get_their_own_level(realistic_items: list[Any], tmp_path: Path) -> None:
    files = [p for p, _, _ in realistic_items[:8]]
    default = tmp_path / "default.dataset"
    merge_items(files, default)
    levels = _levels(default)
    assert levels.keys() >= FACE_PAIRS
    assert {levels[a] for a in FACE_PAIRS} == {FACE_PAIR_LEVEL}
    raw = _small_rows(default)
    assert {"faces/face_areas", "faces/face_centroids", "graph/edges_source"} <= raw
    assert {levels[a] for a in raw} == {SMALL_ROWS_LEVEL}
    others = {a: level for a, level in levels.items() if a not in FACE_PAIRS | raw}
    assert "faces/face_discretization" in others and "faceface/file_id_code_faceface" in others
    assert set(others.values()) == {DEFAULT_LEVEL}

    # The level is really the one written: at the dataset's level the face pairs' chunks
    # differ (and take more bytes), the rest are the same bytes.
    flat = tmp_path / "flat.dataset"
    merge_items(files, flat, face_pair_level=DEFAULT_LEVEL)
    assert {v for a, v in _levels(flat).items() if a not in raw} == {DEFAULT_LEVEL}
    for array in FACE_PAIRS - {"faceface_upper/extended_adjacency"}:
        ours, theirs = _chunks(default, array), _chunks(flat, array)
        assert ours.keys() == theirs.keys() and ours != theirs, array
        assert sum(map(len, ours.values())) < sum(map(len, theirs.values())), array
    for array in ("faces/face_areas", "faces/face_discretization"):
        assert _chunks(default, array) == _chunks(flat, array), array

    # Standard readers decode either: the level is the encoder's business only.
    with zarr.storage.ZipStore(default, mode="r") as store, DatasetReader(flat) as reader:
        group = zarr.open_group(store, mode="r")
        for array in FACE_PAIRS | raw:
            name, key = array.split("/")
            np.testing.assert_array_equal(group[name][key][:], reader.read_array(name, key))


def test_explicit_levels(realistic_items: list[Any], tmp_path: Path) -> None:
    files = [p for p, _, _ in realistic_items[:4]]
    cases: list[tuple[dict[str, Any], int | None, int | None]] = [
        ({"compression_level": 12}, 12, 12),
        ({"face_pair_level": 1}, 1, DEFAULT_LEVEL),
        ({"compression_level": 1, "face_pair_level": 9}, 9, 1),
        ({"compression_level": None}, None, None),
        ({"compression_level": None, "face_pair_level": 9}, None, None),
    ]
    for n, (options, face_pairs, rest) in enumerate(cases):
        out = tmp_path / f"{n}.dataset"
        merge_items(files, out, **options)
        levels, raw = _levels(out), _small_rows(out)
        small = SMALL_ROWS_LEVEL if rest is not None else None
        assert raw and {levels[a] for a in raw} == {small}, options
        assert {levels[a] for a in FACE_PAIRS} == {face_pairs}, options
        assert {v for a, v in levels.items() if a not in FACE_PAIRS | raw} == {rest}, options


def test_an_append_keeps_each_arrays_level(realistic_items: list[Any], tmp_path: Path) -> None:
    """A dataset merged with its face pairs at level 3 (as every dataset was before face
    pairs had their own level) is continued at level 3, not at today's default."""
    files = [p for p, _, _ in realistic_items[:10]]
    small: dict[str, Any] = {"inner_bytes": 2048, "shard_bytes": 16384}
    inc, whole = tmp_path / "inc.dataset", tmp_path / "whole.dataset"
    merge_items(files[:6], inc, face_pair_level=DEFAULT_LEVEL, **small)
    cadstore.merge([str(f) for f in files[6:]], str(inc), append=True)
    merge_items(files, whole, face_pair_level=DEFAULT_LEVEL, **small)
    raw = _small_rows(inc)
    assert {v for a, v in _levels(inc).items() if a not in raw} == {DEFAULT_LEVEL}
    for array in FACE_PAIRS | raw:
        assert _chunks(inc, array) == _chunks(whole, array), array
    with DatasetReader(inc) as a, DatasetReader(whole) as b:
        for code in range(len(files)):
            got, expected = a.read_item(code), b.read_item(code)
            for name, value in expected["faceface"].items():
                np.testing.assert_array_equal(got["faceface"][name], value)

    # And one merged at today's levels is continued at them.
    new = tmp_path / "new.dataset"
    merge_items(files[:6], new, **small)
    cadstore.merge([str(f) for f in files[6:]], str(new), append=True)
    levels = _levels(new)
    assert {levels[a] for a in FACE_PAIRS} == {FACE_PAIR_LEVEL}
    assert _chunks(new, "faceface_upper/d2_distance") != _chunks(inc, "faceface_upper/d2_distance")


def _pairs_first_items(directory: Path, n: int, seed: int) -> list[str]:
    """Items whose first array is a face-pair one: the dataset's first group is then the
    face-pair group, and its first sharded array is at the face pairs' level."""
    from cadstore import OptStorage

    rng = np.random.default_rng(seed)
    files = []
    for k in range(n):
        faces = int(rng.integers(2, 9))
        m = rng.random((faces, faces, 8)).astype(np.float32)
        path = directory / f"p{seed}-{k}.zarr"
        with OptStorage(str(path)) as item:
            item.save_data("d2_distance", m + m.transpose(1, 0, 2))
            item.save_data("face_pair_edges_path", rng.integers(0, 9, (faces, faces, 4)))
            item.save_data("face_areas", rng.random(faces).astype(np.float32))
            item.compress_store()
        files.append(f"{path}.data")
    return files


def test_an_append_is_the_full_merge_whatever_the_first_group(tmp_path: Path) -> None:
    """Appending gives the bytes of one merge of every item: each array at its own level,
    and the zarr.json of every array naming the level of its shards."""
    from datasets import assert_same_dataset

    files = _pairs_first_items(tmp_path, 6, seed=1) + _pairs_first_items(tmp_path, 5, seed=2)
    small: dict[str, Any] = {"inner_bytes": 1024, "shard_bytes": 8192}
    inc, whole = tmp_path / "inc.dataset", tmp_path / "whole.dataset"
    merge_items(files[:6], inc, **small)
    with DatasetReader(inc, stored_layout=True) as reader:
        assert reader.groups[0] == "faceface", reader.groups
    cadstore.merge(files[6:], str(inc), append=True)
    merge_items(files, whole, **small)
    levels = _levels(inc)
    assert levels["faceface/face_pair_edges_path"] == FACE_PAIR_LEVEL
    assert levels["faceface/file_id_code_faceface"] == DEFAULT_LEVEL
    assert levels["faces/face_areas"] == SMALL_ROWS_LEVEL
    assert_same_dataset(inc, whole, same_operation=False)


def test_every_entry_point_takes_the_face_pair_level(
    realistic_items: list[Any], tmp_path: Path, capsys: Any
) -> None:
    from cadstore import DatasetMerger
    from cadstore.cli import main

    files = [str(p) for p, _, _ in realistic_items[:3]]
    cli = tmp_path / "cli.dataset"
    assert main(["merge", *files, "-o", str(cli), "--face-pair-level", "9", "--json"]) == 0
    capsys.readouterr()
    spec = tmp_path / "spec.dataset"
    DatasetMerger(files, spec).merge_data(face_pair_level=2)
    for path, level in ((cli, 9), (spec, 2)):
        levels = _levels(path)
        assert {levels[a] for a in FACE_PAIRS} == {level}, path
        assert levels["faces/face_discretization"] == DEFAULT_LEVEL
        assert levels["faces/face_areas"] == SMALL_ROWS_LEVEL


def test_a_level_zstd_does_not_have_is_refused(realistic_items: list[Any], tmp_path: Path) -> None:
    import pytest

    files = [p for p, _, _ in realistic_items[:2]]
    out = tmp_path / "bad.dataset"
    for options in ({"face_pair_level": 23}, {"compression_level": "3"}, {"face_pair_level": True}):
        name = next(iter(options))
        with pytest.raises(ValueError, match=f"{name} must be a zstd level"):
            merge_items(files, out, **options)
        assert not out.exists()


def test_an_append_that_creates_the_dataset_takes_the_levels(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    files = [str(p) for p, _, _ in realistic_items[:3]]
    out = tmp_path / "new.dataset"
    cadstore.merge(files, str(out), append=True, compression_level=4, face_pair_level=8)
    levels = _levels(out)
    raw = _small_rows(out)
    assert {levels[a] for a in FACE_PAIRS} == {8}
    assert raw and {levels[a] for a in raw} == {SMALL_ROWS_LEVEL}
    assert {v for a, v in levels.items() if a not in FACE_PAIRS | raw} == {4}
    full = tmp_path / "full.dataset"
    cadstore.merge(files, str(full), append=True, face_pair_layout="full")
    with DatasetReader(full, stored_layout=True) as reader:
        assert "faceface_upper" not in reader.groups
        assert "d2_distance" in reader.arrays("faceface")


def _inner_chunks(path: Path, array: str) -> list[bytes]:
    """The stored inner chunks (crc32c included) of every shard of ``array``, in order."""
    from cadstore.format.sharding import read_index

    with zipfile.ZipFile(path) as zf:
        doc = json.loads(zf.read(f"{array}/zarr.json"))
        config = doc["codecs"][0]["configuration"]
        n_inner = doc["chunk_grid"]["configuration"]["chunk_shape"][0] // config["chunk_shape"][0]
        shards = sorted(
            (n for n in zf.namelist() if n.startswith(f"{array}/c/")),
            key=lambda n: int(n.rsplit("/", 1)[-1]),
        )
        out = []
        for name in shards:
            data = zf.read(name)
            index = read_index(data[-16 * n_inner - 4 : -4], n_inner, len(data) - 4)
            out += [data[o : o + n] for o, n in index if n != 2**64 - 1]
    return out


def test_small_rows_are_stored_as_they_are(realistic_items: list[Any], tmp_path: Path) -> None:
    """A full inner chunk of an array of small rows holds its bytes as they are (a zstd
    frame header and the checksum around them), whatever the dataset's level; the last,
    padded one is compressed, so that its padding takes no room; zarr-python and the
    reader read the values."""
    files = [p for p, _, _ in realistic_items[:12]]
    out = tmp_path / "small.dataset"
    # 64-row shards: inner chunks of 64 rows, several of them full.
    merge_items(files, out, compression_level=9, shard_rows={"faces": 64, "edges": 64})
    assert _levels(out)["faces/face_types"] == SMALL_ROWS_LEVEL
    expected = {
        key: np.concatenate([item[key] for _, item, _ in realistic_items[:12]])
        for key in ("face_types", "face_areas", "face_centroids")
    }
    with zarr.storage.ZipStore(out, mode="r") as store, DatasetReader(out) as reader:
        group = zarr.open_group(store, mode="r")
        for key, values in expected.items():
            row_bytes = values[0].nbytes
            chunks = _inner_chunks(out, f"faces/{key}")
            full, last = chunks[:-1], chunks[-1]
            assert len(full) == len(values) // 64 and len(values) % 64, key
            for chunk in full:
                # zstd's frame header (at most 18 bytes) and a block header, and the crc.
                assert 64 * row_bytes < len(chunk) <= 64 * row_bytes + 24, (key, len(chunk))
            padding = (64 - len(values) % 64) * row_bytes
            assert len(last) < 64 * row_bytes - padding // 2, (key, len(last))
            np.testing.assert_array_equal(group["faces"][key][:], values)
            np.testing.assert_array_equal(reader.read_array("faces", key), values)
        # The other arrays keep the dataset's level.
        levels = _levels(out)
        assert levels["faces/face_discretization"] == 9
        assert levels["faces/file_id_code_faces"] == 9


def test_a_padded_chunk_compresses_its_padding_at_any_level() -> None:
    """At its most negative levels zstd stores bytes as they are: a last, partial inner
    chunk at a negative level is compressed at level 1, or its padding would take the
    room of real rows."""
    from cadstore.format.codecs import decode_zstd
    from cadstore.format.sharding import encode_shard, read_index

    rows = np.arange(100, dtype=np.int32) * 7919 % 1000
    for level in (SMALL_ROWS_LEVEL, -5, 1, 3):
        shard = encode_shard(rows, 64, 256, level, checksum=False)
        index = read_index(shard[-16 * 4 :], 4, len(shard))
        (o1, n1), (o2, n2) = index[:2]
        assert index[2:] == [(2**64 - 1, 2**64 - 1)] * 2
        assert n2 < 36 * 4 + 64, (level, n2)  # 36 rows and their padding of 28
        assert bytes(decode_zstd(shard[o1 : o1 + n1], 256, 256)) == rows[:64].tobytes()
        padded = np.zeros(64, dtype=np.int32)
        padded[:36] = rows[64:]
        assert bytes(decode_zstd(shard[o2 : o2 + n2], 256, 256)) == padded.tobytes()


def test_an_append_keeps_small_rows_compressed_in_a_dataset_merged_before(
    realistic_items: list[Any], tmp_path: Path, monkeypatch: Any
) -> None:
    """A dataset merged before arrays of small rows were stored as they are (at the
    dataset's level) is continued at its level: its shards stay what they were."""
    import cadstore.merging.plan as plan_module

    files = [p for p, _, _ in realistic_items[:10]]
    small: dict[str, Any] = {"inner_bytes": 2048, "shard_bytes": 16384}
    inc, whole = tmp_path / "inc.dataset", tmp_path / "whole.dataset"
    with monkeypatch.context() as patched:
        patched.setattr(plan_module, "SMALL_ROW_BYTES", 0)
        merge_items(files[:6], inc, **small)
        merge_items(files, whole, **small)
    before = _levels(inc)
    assert before["faces/face_areas"] == DEFAULT_LEVEL
    cadstore.merge([str(f) for f in files[6:]], str(inc), append=True)
    assert _levels(inc) == before
    # The appended shards are those of one merge of every item the way it was written.
    for array in ("faces/face_areas", "edges/edge_types", "graph/edges_source"):
        assert _chunks(inc, array) == _chunks(whole, array), array
    with DatasetReader(inc) as reader:
        got = reader.read_array("faces", "face_areas")
    np.testing.assert_array_equal(
        got, np.concatenate([item["face_areas"] for _, item, _ in realistic_items[:10]])
    )


def test_small_rows_that_items_have_by_the_thousand_keep_the_level(tmp_path: Path) -> None:
    """Small rows are stored as they are only where an item has few of them: an item's
    thousands of centroids fill a chunk of their own, which zstd should compress."""
    from cadstore import OptStorage

    rng = np.random.default_rng(3)
    files = []
    for k in range(4):
        faces = 1500 + k  # 18 KB of centroids per item
        path = tmp_path / f"many{k}.zarr"
        with OptStorage(str(path)) as item:
            item.save_data("face_centroids", rng.random((faces, 3)).astype(np.float32))
            item.save_data("face_types", rng.integers(0, 5, faces).astype(np.int32))
            item.compress_store()
        files.append(f"{path}.data")
    out = tmp_path / "many.dataset"
    merge_items(files, out)
    levels = _levels(out)
    assert levels["faces/face_centroids"] == DEFAULT_LEVEL
    # 6 KB of types per item: also more than an item frame's worth.
    assert levels["faces/face_types"] == DEFAULT_LEVEL
