"""zstd levels per array: face-pair arrays at their own level, kept by appends."""

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
from cadstore.merging.options import DEFAULT_LEVEL, FACE_PAIR_LEVEL

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
    others = {a: level for a, level in levels.items() if a not in FACE_PAIRS}
    assert "faces/face_areas" in others and "faceface/file_id_code_faceface" in others
    assert set(others.values()) == {DEFAULT_LEVEL}

    # The level is really the one written: at the dataset's level the face pairs' chunks
    # differ (and take more bytes), the rest are the same bytes.
    flat = tmp_path / "flat.dataset"
    merge_items(files, flat, face_pair_level=DEFAULT_LEVEL)
    assert set(_levels(flat).values()) == {DEFAULT_LEVEL}
    for array in FACE_PAIRS - {"faceface_upper/extended_adjacency"}:
        ours, theirs = _chunks(default, array), _chunks(flat, array)
        assert ours.keys() == theirs.keys() and ours != theirs, array
        assert sum(map(len, ours.values())) < sum(map(len, theirs.values())), array
    assert _chunks(default, "faces/face_areas") == _chunks(flat, "faces/face_areas")

    # Standard readers decode either: the level is the encoder's business only.
    with zarr.storage.ZipStore(default, mode="r") as store, DatasetReader(flat) as reader:
        group = zarr.open_group(store, mode="r")
        for array in FACE_PAIRS:
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
        levels = _levels(out)
        assert {levels[a] for a in FACE_PAIRS} == {face_pairs}, options
        assert {v for a, v in levels.items() if a not in FACE_PAIRS} == {rest}, options


def test_an_append_keeps_each_arrays_level(realistic_items: list[Any], tmp_path: Path) -> None:
    """A dataset merged with its face pairs at level 3 (as every dataset was before face
    pairs had their own level) is continued at level 3, not at today's default."""
    files = [p for p, _, _ in realistic_items[:10]]
    small: dict[str, Any] = {"inner_bytes": 2048, "shard_bytes": 16384}
    inc, whole = tmp_path / "inc.dataset", tmp_path / "whole.dataset"
    merge_items(files[:6], inc, face_pair_level=DEFAULT_LEVEL, **small)
    cadstore.merge([str(f) for f in files[6:]], str(inc), append=True)
    merge_items(files, whole, face_pair_level=DEFAULT_LEVEL, **small)
    assert set(_levels(inc).values()) == {DEFAULT_LEVEL}
    for array in FACE_PAIRS:
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
    assert levels["faces/face_areas"] == DEFAULT_LEVEL
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
        assert levels["faces/face_areas"] == DEFAULT_LEVEL


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
    assert {levels[a] for a in FACE_PAIRS} == {8}
    assert {v for a, v in levels.items() if a not in FACE_PAIRS} == {4}
    full = tmp_path / "full.dataset"
    cadstore.merge(files, str(full), append=True, face_pair_layout="full")
    with DatasetReader(full, stored_layout=True) as reader:
        assert "faceface_upper" not in reader.groups
        assert "d2_distance" in reader.arrays("faceface")
