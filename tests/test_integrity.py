"""Every chunk of a merged dataset is checksummed, and every reader checks it.

Issue 16, finding 12: single-bit flips in a merged dataset's shards were read back as
wrong values with no error (31 of 300): ranged reads of a shard skip the zip's CRC, which
covers whole members, and zstd frames carry no checksum. Datasets now end every chunk
(inner chunks, shard indexes, the small unsharded arrays) with the standard ``crc32c``
codec. These tests flip single bits across a real merged dataset and require every read,
on every read path, to raise or give back exactly the original values; and they check that
datasets written before checksums stay readable and appendable as they are.
"""

from __future__ import annotations

import json
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadstore.artefacts import open_artefact
from cadstore.dataset.reader import DatasetReader
from cadstore.errors import CorruptStoreError
from cadstore.merging import merge_items
from cadstore.merging import write as merge_write
from cadstore.merging.append import append_items

ROOT = Path(__file__).resolve().parent.parent

Values = dict[int, dict[str, dict[str, Any]]]


def _merge(items: list[Any], out: Path, **options: Any) -> Path:
    """Merge with small inner chunks and shards: many of each, on a few items."""
    merge_items(
        [str(p) for p, _, _ in items], out, inner_bytes=2048, shard_bytes=1 << 15, **options
    )
    return out


def _read_all(path: Path, *, batched: bool = False) -> Values:
    with DatasetReader(path) as reader:
        if batched:
            codes = list(range(reader.n_items))
            return dict(enumerate(reader.read_items(codes)))
        return {code: reader.read_item(code) for code in range(reader.n_items)}


def _read_provenance(path: Path) -> dict[str, np.ndarray]:
    """Every group's ``file_id_code_<group>`` array (the code of each row), which item
    reads do not return: chunks an item read never opens must be read to be checked."""
    with DatasetReader(path, stored_layout=True) as reader:  # triangle groups included
        return {g: reader.read_array(g, f"file_id_code_{g}") for g in reader.groups}


def _same(a: Values, b: Values) -> bool:
    if a.keys() != b.keys():
        return False
    for code in a:
        if a[code].keys() != b[code].keys():
            return False
        for group in a[code]:
            x, y = a[code][group], b[code][group]
            if x.keys() != y.keys():
                return False
            for name in x:
                u, v = np.asarray(x[name]), np.asarray(y[name])
                if u.dtype != v.dtype or u.shape != v.shape:
                    return False
                if not np.array_equal(u, v, equal_nan=u.dtype.kind in "fc"):
                    return False
    return True


def _codecs(doc: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Names of a zarr.json's chunk codecs (inner ones for a shard) and index codecs."""
    codecs = doc["codecs"]
    if codecs[0]["name"] == "sharding_indexed":
        config = codecs[0]["configuration"]
        return [c["name"] for c in config["codecs"]], [c["name"] for c in config["index_codecs"]]
    return [c["name"] for c in codecs], []


def _array_docs(path: Path) -> dict[str, dict[str, Any]]:
    with zipfile.ZipFile(path) as zf:
        root = json.loads(zf.read("zarr.json"))
    docs = root["consolidated_metadata"]["metadata"]
    return {k: d for k, d in docs.items() if d["node_type"] == "array"}


# ------------------------------------------------------------------------- the format
@pytest.mark.parametrize("level", [3, None])
def test_every_chunk_of_a_new_dataset_is_checksummed(
    realistic_items: list[Any], tmp_path: Path, level: int | None
) -> None:
    out = _merge(realistic_items[:4], tmp_path / "new.dataset", compression_level=level)
    docs = _array_docs(out)
    assert len(docs) > 10
    for path, doc in docs.items():
        chunk, index = _codecs(doc)
        assert chunk[-1] == "crc32c", (path, chunk)
        assert ("zstd" in chunk) == (level is not None), (path, chunk)
        if index:
            assert index == ["bytes", "crc32c"], (path, index)


def test_google_crc32c_is_a_core_dependency() -> None:
    """Checksums are written on every merge and verified on every read: the fast CRC-32C
    (hardware, what zarr-python uses) must always be there, not only with an extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("google-crc32c") for dep in project["dependencies"])


# ---------------------------------------------------------------------- missing chunks
def _read_everything(path: Path) -> None:
    """Read every item, one at a time and in a batch, and every stored array whole."""
    _read_all(path)
    _read_all(path, batched=True)
    with DatasetReader(path, stored_layout=True) as reader:
        for group in reader.groups:
            for array in reader.arrays(group):
                reader.read_array(group, array)


def _names_missing(message: str, member: str) -> bool:
    """Whether ``message`` names ``member`` as missing: a shard by its key, a chunk of an
    unsharded array by the array and the chunk's key within it."""
    array, _, chunk = member.partition("/c/")
    return f"shard '{member}' is missing" in message or (
        f"array '{array}'" in message and f"chunk 'c/{chunk}' is missing" in message
    )


def _without(path: Path, member: str, out: Path) -> Path:
    """A copy of the zip dataset ``path`` without ``member``, every other member as it is."""
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            if info.filename != member:
                zout.writestr(info, zin.read(info))
    return out


def test_a_missing_chunk_file_is_an_error_naming_it(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """The merger stores every chunk holding values (every shard and inner chunk holding
    rows): one missing, a file deleted or an object a store lost, is damage, reported by
    name. Zarr reads an absent chunk as fill values; reads gave zeros as data."""
    out = _merge(realistic_items[:4], tmp_path / "dir.dataset", directory=True)
    original = _read_all(out)
    chunks = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and "/c/" in p.relative_to(out).as_posix()
    )
    rng = np.random.default_rng(3)
    picked = set(rng.choice(chunks, 24, replace=False).tolist())
    # The kinds of array a dataset holds: names, offsets, provenance codes, triangles.
    picked |= {
        min(c for c in chunks if c.startswith(prefix))
        for prefix in ("item_names/", "faces/item_offsets/", "faces/file_id_code", "faceface_")
    }
    for member in sorted(picked):
        target = out / member
        pristine = target.read_bytes()
        target.unlink()
        try:
            with pytest.raises(CorruptStoreError) as info:
                _read_everything(out)
            assert _names_missing(str(info.value), member), (member, str(info.value))
        finally:
            target.write_bytes(pristine)
    assert _same(_read_all(out), original)


def test_a_zip_dataset_without_a_chunk_member_is_an_error(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    out = _merge(realistic_items[:4], tmp_path / "zip.dataset")
    with zipfile.ZipFile(out) as zf:
        chunks = [n for n in zf.namelist() if "/c/" in n]
    for member in (chunks[0], next(n for n in chunks if n.startswith("faces/")), chunks[-1]):
        damaged = _without(out, member, tmp_path / "damaged.dataset")
        with pytest.raises(CorruptStoreError) as info:
            _read_everything(damaged)
        assert _names_missing(str(info.value), member), (member, str(info.value))


def test_a_missing_inner_chunk_is_an_error_naming_it(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """A shard whose index marks an inner chunk holding rows absent (with a valid index
    checksum): the merger never writes one, so it is damage, not fill values."""
    from cadstore.format.codecs import append_crc32c
    from cadstore.format.sharding import MISSING

    out = _merge(realistic_items[:4], tmp_path / "dir.dataset", directory=True)
    original = _read_all(out)
    with DatasetReader(out) as reader:
        meta = reader.array_meta("faces", "face_areas")
        n_inner = meta.chunks[0] // meta.codecs[0]["configuration"]["chunk_shape"][0]
    member = "faces/face_areas/c/0"
    target = out / member
    pristine = target.read_bytes()
    index_at = len(pristine) - 4 - 16 * n_inner  # the index, then its crc32c
    index = bytearray(pristine[index_at:-4])
    index[:16] = MISSING.to_bytes(8, "little") * 2  # inner chunk 0 (every row): absent
    target.write_bytes(pristine[:index_at] + append_crc32c(bytes(index)))
    with pytest.raises(CorruptStoreError, match=f"'{member}' inner chunk 0 is missing"):
        _read_all(out)
    with (
        pytest.raises(CorruptStoreError, match="'faces/face_areas': inner chunk 0 is missing"),
        DatasetReader(out) as reader,
    ):
        reader.read_array("faces", "face_areas")
    target.write_bytes(pristine)
    assert _same(_read_all(out), original)


# --------------------------------------------------------------------------- bit flips
def _member_spans(path: Path) -> dict[str, tuple[int, int]]:
    """Where each member's stored bytes lie in the zip: ``{name: (start, length)}``."""
    spans = {}
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            at = info.header_offset
            name_len = int.from_bytes(raw[at + 26 : at + 28], "little")
            extra_len = int.from_bytes(raw[at + 28 : at + 30], "little")
            spans[info.filename] = (at + 30 + name_len + extra_len, info.compress_size)
    return spans


def _flip_positions(path: Path, n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` byte positions in every region of the dataset, each with what it is in:
    inner chunk bytes, shard index bytes (entries and checksum), the small unsharded
    arrays' chunks, and anywhere in the file (headers, metadata, central directory)."""
    rng = np.random.default_rng(seed)
    docs = _array_docs(path)
    spans = _member_spans(path)
    regions: dict[str, list[tuple[int, int]]] = {"data": [], "index": [], "plain": []}
    for key, (start, length) in spans.items():
        array = key.split("/c", 1)[0] if "/c" in key else None
        doc = docs.get(array or "")
        if doc is None or not length:
            continue
        if doc["codecs"][0]["name"] == "sharding_indexed":
            config = doc["codecs"][0]["configuration"]
            n_inner = (
                doc["chunk_grid"]["configuration"]["chunk_shape"][0] // (config["chunk_shape"][0])
            )
            index_bytes = 16 * n_inner + 4
            regions["index"].append((start + length - index_bytes, index_bytes))
            regions["data"].append((start, length - index_bytes))
        else:
            regions["plain"].append((start, length))
    share = {"data": 0.45, "index": 0.3, "plain": 0.1}
    positions: list[tuple[str, int]] = []
    for region, fraction in share.items():
        spans_of = regions[region]
        weights = np.array([length for _, length in spans_of], dtype=float)
        for _ in range(int(n * fraction)):
            start, length = spans_of[rng.choice(len(spans_of), p=weights / weights.sum())]
            positions.append((region, start + int(rng.integers(0, length))))
    size = path.stat().st_size
    while len(positions) < n:
        positions.append(("anywhere", int(rng.integers(0, size))))
    return positions


def _flipped(path: Path, pristine: bytes, position: int, bit: int) -> None:
    changed = bytearray(pristine)
    changed[position] ^= 1 << bit
    path.write_bytes(bytes(changed))


def _outcomes(
    path: Path,
    positions: list[tuple[str, int]],
    read: Callable[[], Any],
    same: Callable[[Any], bool],
    errors: tuple[type[BaseException], ...],
    seed: int,
) -> Iterator[tuple[str, str]]:
    """Flip each bit in turn and read: yield ``(region, "error" | "same")``; any wrong
    value fails at once."""
    pristine = path.read_bytes()
    rng = np.random.default_rng(seed)
    try:
        for region, position in positions:
            bit = int(rng.integers(0, 8))
            _flipped(path, pristine, position, bit)
            try:
                got = read()
            except errors:
                yield region, "error"
                continue
            assert same(got), f"wrong values read after flipping bit {bit} at {position} ({region})"
            yield region, "same"
    finally:
        path.write_bytes(pristine)


def test_single_bit_flips_are_caught_or_harmless(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """300 single-bit flips over a merged dataset's shards (inner chunks and indexes), its
    small arrays and the rest of the file: every read through ``DatasetReader`` (item by
    item, and in batches as the DataLoader reads) raises CorruptStoreError or gives back
    exactly the original values."""
    out = _merge(realistic_items[:6], tmp_path / "flips.dataset")
    original = _read_all(out)
    provenance = _read_provenance(out)
    assert {"faces", "faceface_upper"} <= provenance.keys()
    positions = _flip_positions(out, 300, seed=5)

    def read() -> Values:
        single = _read_all(out)
        batched = _read_all(out, batched=True)
        assert _same(single, batched)
        codes = _read_provenance(out)
        assert codes.keys() == provenance.keys()
        assert all(np.array_equal(codes[g], provenance[g]) for g in codes)
        return single

    seen = list(
        _outcomes(out, positions, read, lambda v: _same(v, original), (CorruptStoreError,), 6)
    )
    counts = {
        r: sum(1 for region, o in seen if region == r and o == "error")
        for r in ["data", "index", "plain"]
    }
    # Flips in chunk bytes are all caught (the values they hold are all read back).
    assert counts["data"] == sum(1 for region, _ in seen if region == "data")
    assert counts["plain"] == sum(1 for region, _ in seen if region == "plain")
    assert counts["index"] > 0
    assert _same(_read_all(out), original)


def test_bit_flips_in_a_directory_dataset(realistic_items: list[Any], tmp_path: Path) -> None:
    """Without a zip there is no CRC at all but the chunks' own: flips in any chunk file
    are caught too."""
    out = _merge(realistic_items[:4], tmp_path / "dir.dataset", directory=True)
    original = _read_all(out)
    files = sorted(
        p
        for p in out.rglob("*")
        if p.is_file() and "/c" in str(p.relative_to(out)).replace("\\", "/")
    )
    rng = np.random.default_rng(8)
    caught = 0
    for _ in range(80):
        target = files[int(rng.integers(0, len(files)))]
        pristine = target.read_bytes()
        changed = bytearray(pristine)
        changed[int(rng.integers(0, len(changed)))] ^= 1 << int(rng.integers(0, 8))
        target.write_bytes(bytes(changed))
        try:
            got = _read_all(out)
        except CorruptStoreError:
            caught += 1
        else:
            assert _same(got, original), target
        finally:
            target.write_bytes(pristine)
    assert caught > 40


def _dir_flips(out: Path, n: int, seed: int) -> list[tuple[str, Path, int]]:
    """``n`` flip positions in the shard files of a directory dataset: ``(region, file,
    offset)``, the region being an inner chunk's bytes or the index."""
    docs = _array_docs_dir(out)
    rng = np.random.default_rng(seed)
    shards = []
    for array, doc in docs.items():
        if doc["codecs"][0]["name"] != "sharding_indexed":
            continue
        config = doc["codecs"][0]["configuration"]
        n_inner = doc["chunk_grid"]["configuration"]["chunk_shape"][0] // config["chunk_shape"][0]
        for file in sorted((out / array / "c").rglob("*")):
            if file.is_file():
                shards.append((file, 16 * n_inner + 4))
    flips = []
    for i in range(n):
        file, index_bytes = shards[int(rng.integers(0, len(shards)))]
        size = file.stat().st_size
        if i % 4 == 3:
            flips.append(("index", file, size - index_bytes + int(rng.integers(0, index_bytes))))
        else:
            flips.append(("data", file, int(rng.integers(0, size - index_bytes))))
    return flips


def _array_docs_dir(out: Path) -> dict[str, dict[str, Any]]:
    root = json.loads((out / "zarr.json").read_text())
    docs = root["consolidated_metadata"]["metadata"]
    return {k: d for k, d in docs.items() if d["node_type"] == "array"}


def _dir_outcomes(
    flips: list[tuple[str, Path, int]],
    read: Callable[[], Any],
    same: Callable[[Any], bool],
    errors: tuple[type[BaseException], ...],
) -> Iterator[tuple[str, str]]:
    rng = np.random.default_rng(len(flips))
    for region, file, offset in flips:
        pristine = file.read_bytes()
        changed = bytearray(pristine)
        changed[offset] ^= 1 << int(rng.integers(0, 8))
        file.write_bytes(bytes(changed))
        try:
            got = read()
        except errors:
            yield region, "error"
            continue
        finally:
            file.write_bytes(pristine)
        assert same(got), f"wrong values read after a flip at {offset} of {file} ({region})"
        yield region, "same"


def test_bit_flips_through_zarr_python_xarray_and_dask(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """zarr-python verifies the same checksums, and so xarray and Dask, which read through
    it. A directory dataset has no zip CRC to fall back on (zarr-python reads a zip's
    members whole, which checks theirs): a flip in a chunk's bytes is an error there,
    one in an index an error or harmless."""
    zarr = pytest.importorskip("zarr")
    xr = pytest.importorskip("xarray")
    pytest.importorskip("dask")
    out = _merge(realistic_items[:3], tmp_path / "zarr.dataset", directory=True)

    def arrays() -> dict[str, np.ndarray]:
        group = zarr.open_group(zarr.storage.LocalStore(out, read_only=True), mode="r")
        return {
            f"{g}/{a}": np.asarray(group[g][a][:])
            for g, sub in group.groups()
            for a, _ in sub.arrays()
        }

    def through_xarray() -> dict[str, np.ndarray]:
        store = zarr.storage.LocalStore(out, read_only=True)
        ds = xr.open_zarr(store, group="faces", chunks={})  # Dask-backed
        return {str(k): np.asarray(v.compute(scheduler="synchronous")) for k, v in ds.items()}

    def equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
        return a.keys() == b.keys() and all(
            np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind in "fc") for k in a
        )

    original, original_xr = arrays(), through_xarray()
    flips = _dir_flips(out, 80, seed=9)
    outcomes = list(_dir_outcomes(flips, arrays, lambda v: equal(v, original), (Exception,)))
    assert all(o == "error" for region, o in outcomes if region == "data")
    faces = [f for f in flips if f[0] == "data" and "faces" in f[1].parts][:12]
    assert faces
    same_xr = lambda v: equal(v, original_xr)  # noqa: E731
    assert all(o == "error" for _, o in _dir_outcomes(faces, through_xarray, same_xr, (Exception,)))


def test_checksum_errors_reach_the_dataloader(realistic_items: list[Any], tmp_path: Path) -> None:
    """The loader's path (batches read into shared buffers) raises as the reader does."""
    pytest.importorskip("torch")
    import torch

    from cadstore.dataset.loader import ItemSource
    from cadstore.dataset.torch_support import GraphCollate, TorchCADDataset

    out = _merge(realistic_items[:4], tmp_path / "loader.dataset")
    data_flips = [p for p in _flip_positions(out, 60, seed=12) if p[0] == "data"][:20]

    def load_all() -> None:
        with DatasetReader(out) as reader:
            dataset = TorchCADDataset(ItemSource(reader), list(range(reader.n_items)), True)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=4, collate_fn=GraphCollate(), num_workers=0
            )
            for _ in loader:
                pass

    outcomes = _outcomes(out, data_flips, load_all, lambda _: False, (CorruptStoreError,), 13)
    assert all(o == "error" for _, o in outcomes)


# ------------------------------------------------------------- datasets without checksums
def test_datasets_without_checksums_stay_readable_and_appendable(
    realistic_items: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset written before checksums reads back as before, and an append keeps its
    arrays' codecs (no checksum), so the shards it copies agree with their metadata."""
    checked = _merge(realistic_items[:5], tmp_path / "checked.dataset")
    with monkeypatch.context() as patch:
        patch.setattr(merge_write, "CHECKSUMS", False)
        old = _merge(realistic_items[:3], tmp_path / "old.dataset")
    for path, doc in _array_docs(old).items():
        chunk, index = _codecs(doc)
        assert "crc32c" not in chunk + index, path
    assert _same(_read_all(old), {c: v for c, v in _read_all(checked).items() if c < 3})
    append_items(old, [str(p) for p, _, _ in realistic_items[3:5]])
    for path, doc in _array_docs(old).items():
        chunk, index = _codecs(doc)
        assert "crc32c" not in chunk + index, path
    assert _same(_read_all(old), _read_all(checked))
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(zarr.storage.ZipStore(old, mode="r"), mode="r")
    with DatasetReader(checked) as reader:
        expected = reader.read_array("faces", "face_areas")
    np.testing.assert_array_equal(np.asarray(group["faces"]["face_areas"][:]), expected)


def test_append_keeps_checksums(realistic_items: list[Any], tmp_path: Path) -> None:
    out = _merge(realistic_items[:3], tmp_path / "grow.dataset")
    append_items(out, [str(p) for p, _, _ in realistic_items[3:6]])
    for path, doc in _array_docs(out).items():
        chunk, index = _codecs(doc)
        assert chunk[-1] == "crc32c" and index in ([], ["bytes", "crc32c"]), path
    whole = _merge(realistic_items[:6], tmp_path / "whole.dataset")
    assert _same(_read_all(out), _read_all(whole))


def test_a_dataset_whose_metadata_json_was_renamed_in_both_headers_is_corrupt(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """Found by review: a dataset's ``metadata.json`` (its groups, item count and schema,
    which an append carries on) whose name was damaged alike in the central directory and
    its local header read as a dataset without metadata, ``{}``. Every merge writes it;
    its absence beside a member of a name of its length that belongs to no node is the
    damaged name (ReadHierarchy.check_absent): opening the dataset is a CorruptStoreError
    naming the file and both names; the file is left as it was."""
    out = _merge(realistic_items[:3], tmp_path / "zip.dataset")
    with DatasetReader(out) as reader:
        assert reader.metadata["item_count"] == 3
    raw = out.read_bytes()
    assert raw.count(b"metadata.json") == 2
    raw = raw.replace(b"metadata.json", b"metadata.jsoo")
    out.write_bytes(raw)
    with pytest.raises(
        CorruptStoreError, match=r"zip\.dataset.*'metadata\.json' is missing.*'metadata\.jsoo'"
    ):
        DatasetReader(out)
    # What inspect shows of a dataset's metadata.
    with (
        open_artefact(str(out)) as target,
        pytest.raises(
            CorruptStoreError, match=r"zip\.dataset.*'metadata\.json' is missing.*'metadata\.jsoo'"
        ),
    ):
        target.dataset_metadata()
    assert out.read_bytes() == raw
