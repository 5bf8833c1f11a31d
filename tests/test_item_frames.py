"""Item frames: inner chunks shared by items hold one zstd frame per item.

Reading one item of a merged dataset used to decode whole inner chunks, its neighbours'
rows included (issue 18 measured 2.2x the bytes returned). Item-framed chunks let a read
decode only the item's own frames, while staying standard zstd data that zarr-python and
xarray decode whole.
"""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from numcodecs import Zstd

from cadstore.dataset.reader import DatasetReader
from cadstore.errors import CorruptStoreError
from cadstore.format import codecs as C
from cadstore.format import sharding
from cadstore.merging import merge_items
from cadstore.merging import write as merge_write
from cadstore.merging.append import append_items

ROW = 24  # bytes per row in the codec-level tests


def _rows(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 6, size=(n, ROW // 4)).astype("<f4").tobytes()


# ------------------------------------------------------------------------- the codec


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 120),
    data=st.data(),
)
def test_every_range_of_a_framed_chunk_decodes_exactly(n: int, data: Any) -> None:
    raw = _rows(n)
    cut_rows = data.draw(st.lists(st.integers(1, n - 1), unique=True, max_size=8))
    cuts = [r * ROW for r in sorted(cut_rows)]
    stored = C.append_crc32c(C.item_frames_compress(raw, cuts, 1))
    lo = data.draw(st.integers(0, n - 1))
    hi = data.draw(st.integers(lo + 1, n))
    out = bytearray((hi - lo) * ROW)
    framed = C.decode_range_into("zstd+crc32c", stored, memoryview(out), lo * ROW, len(raw))
    assert framed == bool(cuts)  # without cuts, one plain frame: left to the caller
    if framed:
        assert bytes(out) == raw[lo * ROW : hi * ROW]
    whole = bytearray(len(raw))
    C.decode_into("zstd+crc32c", stored, memoryview(whole))
    assert bytes(whole) == raw


def test_a_table_longer_than_any_item_chunks_reads_the_same() -> None:
    """Past C._INT_TABLE_MAX entries the table is read into numpy arrays (compact for a
    hostile table); the decoded bytes are the same as through the short-table path."""
    n = C._INT_TABLE_MAX + 50
    raw = _rows(n)
    stored = C.item_frames_compress(raw, [r * ROW for r in range(1, n)], 1)
    bounds = C.frame_table(stored, len(raw))
    assert bounds is not None and isinstance(bounds[0], np.ndarray)
    assert len(bounds[0]) == n + 1
    whole = bytearray(len(raw))
    C.decode_into("zstd", stored, memoryview(whole))
    assert bytes(whole) == raw
    for lo, hi in ((0, 1), (5, 400), (n - 3, n)):
        out = bytearray((hi - lo) * ROW)
        assert C.decode_range_into("zstd", stored, memoryview(out), lo * ROW, len(raw))
        assert bytes(out) == raw[lo * ROW : hi * ROW]
    short = C.item_frames_compress(raw[: 40 * ROW], [r * ROW for r in range(1, 40)], 1)
    found = C.frame_table(short, 40 * ROW)
    assert found is not None and found[0] == [r * ROW for r in range(41)]
    # A frame is found where it begins, in either kind of table, and nowhere else.
    assert C.frame_at(*bounds, 5 * ROW) == (bounds[1][5], bounds[1][6], 6 * ROW)
    assert C.frame_at(*found, 5 * ROW) == (found[1][5], found[1][6], 6 * ROW)
    for table in (bounds, found):
        assert C.frame_at(*table, 5 * ROW + 1) is None
        assert C.frame_at(*table, -ROW) is None
        assert C.frame_at(*table, int(table[0][-1])) is None


def test_a_frame_is_found_past_empty_frames() -> None:
    """Frames of no bytes (an item without rows) begin where the next one does: the frame
    found there is the one holding bytes."""
    raw = [0, 0, 8, 8, 8, 12]
    stored = [16, 16, 30, 30, 30, 41]
    assert C.frame_at(raw, stored, 0) == (16, 30, 8)
    assert C.frame_at(raw, stored, 8) == (30, 41, 12)
    assert C.frame_at(np.array(raw), np.array(stored), 8) == (30, 41, 12)


def test_framed_chunks_are_standard_zstd() -> None:
    raw = _rows(50)
    framed = C.item_frames_compress(raw, [10 * ROW, 30 * ROW], 3)
    assert struct.unpack_from("<I", framed)[0] == C.FRAMES_MAGIC
    # numcodecs (zarr-python's zstd codec) decodes the skippable table and every frame.
    assert Zstd().decode(framed) == raw
    assert C.decode_zstd(framed, len(raw), len(raw)) == raw
    # Without cuts: one plain frame, as before.
    assert C.item_frames_compress(raw, [], 3) == C.zstd_compress(raw, 3)


def test_a_plain_chunk_is_left_to_the_whole_chunk_path() -> None:
    raw = _rows(10)
    out = bytearray(ROW)
    plain = C.append_crc32c(C.zstd_compress(raw, 1))
    assert not C.decode_range_into("zstd+crc32c", plain, memoryview(out), 0, len(raw))
    assert not C.decode_range_into("raw", raw, memoryview(out), 0, len(raw))
    assert bytes(out) == bytes(ROW)  # nothing written


def _corrupt_tables() -> Iterator[tuple[str, bytes]]:
    raw = _rows(40)
    good = C.item_frames_compress(raw, [10 * ROW, 20 * ROW], 1)
    size = struct.unpack_from("<I", good, 4)[0]
    yield "tag", good[:8] + b"XXXX" + good[12:]
    yield "count", good[:12] + struct.pack("<I", 10**6) + good[16:]
    yield "truncated", good[: 8 + size - 4]
    yield "size", good[:4] + struct.pack("<I", 2**31) + good[8:]
    entry = 16  # first table entry: decoded size of frame 0
    yield "raw sizes", good[:entry] + struct.pack("<I", 11 * ROW) + good[entry + 4 :]
    yield "stored sizes", good[: entry + 4] + struct.pack("<I", 3) + good[entry + 8 :]


@pytest.mark.parametrize(("what", "bad"), list(_corrupt_tables()), ids=lambda v: str(v)[:12])
def test_a_corrupt_frame_table_is_refused(what: str, bad: bytes) -> None:
    n = 40 * ROW
    with pytest.raises(C.ChunkDecodeError):
        C.decode_range_into("zstd", bad, memoryview(bytearray(ROW)), 0, n)
    with pytest.raises(C.ChunkDecodeError):
        C.decode_into("zstd", bad, memoryview(bytearray(n)))


def test_small_pieces_stay_one_frame() -> None:
    starts = np.array([0, 5, 9, 14], dtype=np.int64)
    # 4 items of a few 4-byte rows: far under FRAME_MIN_BYTES a piece.
    assert sharding.frame_cuts(starts, 0, 20, 4) == []
    big = sharding.FRAME_MIN_BYTES
    assert sharding.frame_cuts(starts, 0, 20, big) == [5 * big, 9 * big, 14 * big]
    # Only the starts inside the chunk cut it (not its first row).
    assert sharding.frame_cuts(starts, 5, 9, big) == [4 * big]
    assert sharding.frame_cuts(None, 0, 20, big) == []


# ------------------------------------------------------------------------- datasets


def _merge(items: list[Any], out: Path, **options: Any) -> Path:
    merge_items([p for p, _, _ in items], out, inner_bytes=64 * 1024, **options)
    return out


def _framed_chunks(path: Path, prefix: str) -> tuple[int, int]:
    """``(framed, all)`` inner chunks of the arrays under ``prefix`` in a zip dataset."""
    framed = total = 0
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        for meta_name in [n for n in names if n.startswith(prefix) and n.endswith("/zarr.json")]:
            meta = json.loads(zf.read(meta_name))
            if meta.get("node_type") != "array" or meta["codecs"][0]["name"] != "sharding_indexed":
                continue
            shard_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
            inner_rows = meta["codecs"][0]["configuration"]["chunk_shape"][0]
            n_inner = shard_rows // inner_rows
            base = meta_name.removesuffix("zarr.json") + "c/"
            for name in [n for n in names if n.startswith(base)]:
                data = zf.read(name)
                index = data[len(data) - 4 - 16 * n_inner : len(data) - 4]
                for k in range(n_inner):
                    offset, _ = struct.unpack_from("<QQ", index, 16 * k)
                    if offset != sharding.MISSING:
                        total += 1
                        framed += struct.unpack_from("<I", data, offset)[0] == C.FRAMES_MAGIC
    return framed, total


@pytest.fixture(scope="module")
def framed(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _merge(realistic_items, tmp_path_factory.mktemp("frames") / "f.dataset")


def _full(item: dict[str, Any], name: str) -> np.ndarray:
    arr = np.asarray(item[name])
    n = len(item["face_indices"])
    return arr.reshape(n * n, *arr.shape[2:]) if name in _PAIR else arr


_PAIR = ("d2_distance", "a3_distance", "extended_adjacency", "face_pair_edges_path")
_CHECKED = ("face_areas", "face_discretization", "edge_u_grids", *_PAIR)


def _check(reader: DatasetReader, items: list[Any]) -> None:
    for code, (_, item, _) in enumerate(items):
        got = reader.read_item(code)
        flat = {a: v for group in got.values() for a, v in group.items()}
        for name in _CHECKED:
            np.testing.assert_array_equal(flat[name], _full(item, name), err_msg=name)


def test_a_merged_dataset_frames_its_large_items(framed: Path) -> None:
    n_framed, n_chunks = _framed_chunks(framed, "faceface")
    assert 0 < n_framed <= n_chunks, "no face-pair inner chunk is item-framed"
    # Small 1-D arrays (a few bytes per item) stay one frame per chunk.
    assert _framed_chunks(framed, "faces/face_types/")[0] == 0


def test_framed_items_read_back(framed: Path, realistic_items: list[Any]) -> None:
    with DatasetReader(framed, cache_bytes=0) as reader:
        _check(reader, realistic_items)
    with DatasetReader(framed) as reader:  # through the decoded-chunk cache too
        _check(reader, realistic_items)
        batch = reader.read_items([3, 0, 3, 17])
        for got, code in zip(batch, [3, 0, 3, 17], strict=True):
            item = realistic_items[code][1]
            np.testing.assert_array_equal(
                got["faceface"]["d2_distance"], _full(item, "d2_distance")
            )


def test_zarr_python_and_xarray_read_framed_arrays(framed: Path) -> None:
    root = zarr.open_group(zarr.storage.ZipStore(framed, mode="r"), mode="r")
    with DatasetReader(framed) as reader:
        for group in reader.groups:
            for name in reader.arrays(group):
                stored_group, stored = reader.stored_as(group, name)
                ours = reader.read_array(stored_group, stored)
                np.testing.assert_array_equal(root[stored_group][stored][...], ours)
        ds = xr.open_zarr(zarr.storage.ZipStore(framed, mode="r"), group="faceface_upper")
        np.testing.assert_array_equal(
            ds["d2_distance"].values, reader.read_array("faceface_upper", "d2_distance")
        )


def test_one_item_decodes_its_own_rows(
    framed: Path, realistic_items: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = [0]
    plain = C.decode_zstd_into

    def counting(data: Any, out: memoryview) -> None:
        decoded[0] += out.nbytes
        plain(data, out)

    monkeypatch.setattr(C, "decode_zstd_into", counting)
    with DatasetReader(framed, cache_bytes=0) as reader:
        for code in (0, 7, 21):
            decoded[0] = 0
            got = reader.read_item(code, groups=["faceface"])["faceface"]
            stored = sum(
                v.nbytes // (2 if name in _PAIR[:3] else 1) for name, v in got.items()
            )  # triangle arrays store about half their rows
            # Its own frames, and nothing of its neighbours' (at most a few small chunks).
            assert decoded[0] <= 1.1 * stored + 64 * 1024, (code, decoded[0], stored)


def test_a_flipped_frame_table_names_the_chunk(
    realistic_items: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without checksums, so that the table's own checks are what catches the flip.
    monkeypatch.setattr(merge_write, "CHECKSUMS", False)
    framed = _merge(realistic_items, tmp_path / "plain.dataset")
    bad = tmp_path / "bad.dataset"
    data = bytearray(framed.read_bytes())
    with zipfile.ZipFile(framed) as zf:
        name = next(n for n in zf.namelist() if n.startswith("faceface_upper/d2_distance/c/"))
        info = zf.getinfo(name)
    header = 30 + len(info.filename.encode()) + len(info.extra)
    start = info.header_offset + header
    shard = bytes(data[start : start + info.compress_size])
    at = shard.find(struct.pack("<I", C.FRAMES_MAGIC))
    assert at >= 0
    data[start + at + 8] ^= 0x01  # the table's tag
    bad.write_bytes(bytes(data))
    pristine = framed.read_bytes()

    def read_every_item(reader: DatasetReader) -> None:
        for code in range(reader.n_items):
            reader.read_item(code, groups=["faceface"])

    with DatasetReader(bad, cache_bytes=0) as reader:
        with pytest.raises(CorruptStoreError, match="d2_distance"):
            read_every_item(reader)
        with pytest.raises(CorruptStoreError, match="d2_distance"):
            reader.read_array("faceface_upper", "d2_distance")
    assert framed.read_bytes() == pristine


def test_append_frames_new_items_and_reads_old_plain_ones(
    realistic_items: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "a.dataset"
    # An older dataset: written before item frames (no chunk is framed).
    with monkeypatch.context() as m:
        m.setattr(sharding, "FRAME_MIN_BYTES", 2**40)
        _merge(realistic_items[:12], out)
    assert _framed_chunks(out, "faceface")[0] == 0
    append_items(out, [p for p, _, _ in realistic_items[12:]])
    assert _framed_chunks(out, "faceface")[0] > 0
    with DatasetReader(out, cache_bytes=0) as reader:
        assert reader.n_items == len(realistic_items)
        _check(reader, realistic_items)
    root = zarr.open_group(zarr.storage.ZipStore(out, mode="r"), mode="r")
    with DatasetReader(out) as reader:
        np.testing.assert_array_equal(
            root["faceface"]["face_pair_edges_path"][...],
            reader.read_array("faceface", "face_pair_edges_path"),
        )


# ------------------------------------------------------- chunks zstd stored as they are


def _stored(raw: bytes, **options: Any) -> bytes:
    """``raw`` as a merge writes an array of small rows: zstd at its fastest level (raw
    blocks), then the chunk's crc32c."""
    import zstandard

    from cadstore.merging.options import SMALL_ROWS_LEVEL

    compressor = zstandard.ZstdCompressor(level=SMALL_ROWS_LEVEL, **options)
    return C.append_crc32c(compressor.compress(raw))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 7000), data=st.data())
def test_every_range_of_a_stored_chunk_copies_exactly(n: int, data: Any) -> None:
    # Up to 168 KB: past zstd's 128 KiB blocks, so ranges cross from one block to the next.
    raw = np.random.default_rng(n).integers(0, 2**31, n * ROW // 4).astype("<u4").tobytes()
    stored = _stored(raw)
    lo = data.draw(st.integers(0, n - 1))
    hi = data.draw(st.integers(lo + 1, n))
    out = bytearray((hi - lo) * ROW)
    assert C.copy_stored_range("zstd+crc32c", stored, memoryview(out), lo * ROW, len(raw))
    assert bytes(out) == raw[lo * ROW : hi * ROW]
    # Without the checksum (the "zstd" chain) the same bytes.
    out2 = bytearray(len(out))
    assert C.copy_stored_range("zstd", stored[:-4], memoryview(out2), lo * ROW, len(raw))
    assert out2 == out


def _raw_frame(payload: bytes, exponent: int | None, blocks: list[int]) -> bytes:
    """A zstd frame of raw blocks made by hand (RFC 8878): single-segment when
    ``exponent`` is None, else with a Window_Descriptor of that exponent (window
    ``2 ** (10 + exponent)``); ``blocks`` are the block sizes, summing to the payload's."""
    assert sum(blocks) == len(payload) and 256 <= len(payload) < 65536 + 256
    size = (len(payload) - 256).to_bytes(2, "little")  # a 2-byte content size
    head = bytes([0x60]) if exponent is None else bytes([0x40, exponent << 3])
    out, at = [struct.pack("<I", 0xFD2FB528), head, size], 0
    for k, n in enumerate(blocks):
        last = k == len(blocks) - 1
        out += [((n << 3) | last).to_bytes(3, "little"), payload[at : at + n]]
        at += n
    return b"".join(out)


def test_a_windowed_stored_frame_copies_as_zstd_decodes() -> None:
    """Frames written in a stream (not single-segment) have a window, whose size bounds
    each block: a 1 KiB window, blocks of 1 KiB."""
    import zstandard

    raw = _rows(100)  # 2,400 bytes
    frame = _raw_frame(raw, 0, [1024, 1024, len(raw) - 2048])
    assert zstandard.ZstdDecompressor().decompress(frame) == raw
    out = bytearray(10 * ROW)
    assert C.copy_stored_range("zstd", frame, memoryview(out), 40 * ROW, len(raw))
    assert bytes(out) == raw[40 * ROW : 50 * ROW]
    # As zstd writes it, in a stream with a 1 KiB window.
    params = zstandard.ZstdCompressionParameters.from_level(
        -(1 << 17), window_log=10, write_content_size=True
    )
    writer = zstandard.ZstdCompressor(compression_params=params).compressobj(size=len(raw))
    streamed = writer.compress(raw) + writer.flush()
    assert streamed[4] & 0x20 == 0  # not single-segment
    assert C.copy_stored_range("zstd", streamed, memoryview(out), 40 * ROW, len(raw))
    assert bytes(out) == raw[40 * ROW : 50 * ROW]


def _not_stored() -> Iterator[tuple[str, bytes, int]]:
    raw = _rows(200)
    n = len(raw)
    yield "compressed", C.append_crc32c(C.zstd_compress(raw, 3)), n
    yield "content checksum", _stored(raw, write_checksum=True), n
    yield "size unknown", _stored(raw, write_content_size=False), n
    good = _stored(raw)
    yield "other size", good, n - ROW
    yield "truncated", C.append_crc32c(good[:-40]), n
    yield "trailing bytes", C.append_crc32c(good[:-4] + b"\0\0\0"), n
    yield "two frames", C.append_crc32c(good[:-4] + good[:-4]), n
    yield "not zstd", C.append_crc32c(raw), n
    # A window of 2**32 bytes, beyond what zstd decodes: zstd refuses the frame.
    yield "window too large", C.append_crc32c(_raw_frame(raw, 22, [n])), n
    # Empty blocks before the last (valid zstd, never written by it): left to zstd, whose
    # C walks millions of them in milliseconds where a walk in Python took seconds.
    yield "empty blocks", C.append_crc32c(_raw_frame(raw, None, [0, 0, 0, n])), n
    yield "short blocks", C.append_crc32c(_raw_frame(raw, 5, [1000, n - 1000])), n


@pytest.mark.parametrize(("what", "stored", "size"), list(_not_stored()), ids=lambda v: str(v)[:16])
def test_a_chunk_not_stored_as_it_is_is_left_to_zstd(what: str, stored: bytes, size: int) -> None:
    out = bytearray(ROW)
    assert not C.copy_stored_range("zstd+crc32c", stored, memoryview(out), ROW, size)
    assert bytes(out) == bytes(ROW)  # nothing written


def test_a_stored_chunk_is_copied_only_after_its_checksum() -> None:
    raw = _rows(100)
    stored = bytearray(_stored(raw))
    stored[40] ^= 0x01  # a byte of the rows themselves
    out = bytearray(ROW)
    with pytest.raises(C.ChunkDecodeError, match="crc32c"):
        C.copy_stored_range("zstd+crc32c", bytes(stored), memoryview(out), 0, len(raw))
    assert bytes(out) == bytes(ROW)


@pytest.fixture(scope="module")
def small_chunks(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The items merged with inner chunks of small rows holding a few items each (512
    bytes, not 16 KiB), so that thirty items fill many of them, as a large dataset's do:
    a chunk's padding past an array's last row is zeros, which zstd compresses even at
    its fastest level."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sharding, "MIN_INNER_BYTES", 512)
        return _merge(realistic_items, tmp_path_factory.mktemp("small") / "s.dataset")


def test_small_rows_read_without_the_cache_decode_nothing(
    small_chunks: Path, realistic_items: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item's rows of an array of small rows are copied out of the stored chunk: before,
    each read with the cache off decompressed the whole chunk they share with other items
    (16 KiB, a hundred items, in a large dataset), for each of a dozen arrays."""
    from cadstore.dataset.reader import DatasetReader as Reader

    decoded: list[tuple[str, int]] = []
    whole = Reader._inner_chunk

    def counting(self: Reader, key: str, shard: int, inner: int, *args: Any) -> np.ndarray:
        decoded.append((key, inner))
        return whole(self, key, shard, inner, *args)

    monkeypatch.setattr(Reader, "_inner_chunk", counting)
    small = ("face_areas", "face_types", "face_centroids")
    with DatasetReader(small_chunks, cache_bytes=0) as reader:
        for code, (_, item, _) in enumerate(realistic_items):
            got = reader.read_item(code, ["faces"], arrays={"faces": small})["faces"]
            for name in small:
                np.testing.assert_array_equal(got[name], np.asarray(item[name]), err_msg=name)
        # Only an array's last chunk, padded with zeros past its rows, is decoded whole.
        last = {}
        for name in small:
            meta = reader._resolve("faces", name)[0]
            _, _, rows, shard_rows, _, suffix, *_ = reader._geometry(f"faces/{name}", meta)
            final = meta.shape[0] - 1
            last[f"faces/{name}/c/{final // shard_rows}{suffix}"] = (final % shard_rows) // rows
    assert len(decoded) < len(realistic_items)
    assert all(last[key] == inner for key, inner in decoded), decoded


def test_a_flipped_byte_of_small_rows_names_the_array(small_chunks: Path, tmp_path: Path) -> None:
    framed = small_chunks
    bad = tmp_path / "bad.dataset"
    data = bytearray(framed.read_bytes())
    with zipfile.ZipFile(framed) as zf:
        info = zf.getinfo("faces/face_areas/c/0")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    # Past the first chunk's frame header (10 bytes): one of its rows.
    data[start + 24] ^= 0x40
    bad.write_bytes(bytes(data))
    pristine = framed.read_bytes()

    def read_every_item(reader: DatasetReader) -> None:
        for code in range(reader.n_items):
            reader.read_item(code, arrays={"faces": ("face_areas",)})

    with DatasetReader(bad, cache_bytes=0) as reader:
        with pytest.raises(CorruptStoreError, match=r"face_areas.*crc32c"):
            read_every_item(reader)
        # The other arrays of those items still read.
        reader.read_item(0, ["faces"], arrays={"faces": ("face_types",)})
    assert framed.read_bytes() == pristine


def test_a_frame_changed_after_its_chunk_was_verified_names_the_array(
    realistic_items: list[Any], tmp_path: Path
) -> None:
    """A chunk read once is verified whole and its frame table kept; later reads of an
    item fetch its frame alone and zstd decodes it, refusing what is no longer a frame."""
    dataset = _merge(realistic_items, tmp_path / "f.dataset")
    name, path = "face_discretization", "faces/face_discretization"
    with DatasetReader(dataset) as reader:
        wanted = {"faces": (name,)}
        first = reader.read_item(5, ["faces"], arrays=wanted)["faces"][name]
        np.testing.assert_array_equal(first, realistic_items[5][1][name])
        meta = reader._resolve("faces", name)[0]
        _, _, rows, shard_rows, *_ = reader._geometry(path, meta)
        start = int(reader.offsets("faces")[5])
        shard, inner = start // shard_rows, (start % shard_rows) // rows
        key, offset, table = reader._frames[(path, shard, inner)]
        begin = (start - shard * shard_rows - inner * rows) * first.nbytes // len(first)
        frame_start = table[begin][0]
        with zipfile.ZipFile(dataset) as zf:
            info = zf.getinfo(key)
        member = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        with open(dataset, "r+b") as fh:
            fh.seek(member + offset + frame_start)
            fh.write(b"\0\0\0\0")  # the frame's zstd magic number
        with pytest.raises(CorruptStoreError, match=name):
            reader.read_item(5, ["faces"], arrays=wanted)
