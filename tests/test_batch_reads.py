"""Batches of items read with one call into zstd per array, and read plans kept.

Two loader threads decoding item after item, array after array, handed the interpreter
lock to each other at every zstd frame, and ran no faster than one (issue 18). A batch
now gathers every frame it needs per array and decodes them in one call
(:func:`cadstore.format.codecs.decode_frames`); a reader remembers how it read each
item's rows (the verified tables of item-framed chunks, the ranges to fetch), so an item
read again costs its own frames and no planning. These tests hold the values to the
items' sources through every path: first reads, second reads from the plans, repeats in
a batch, a reader with its cache off, and corrupt bytes.
"""

from __future__ import annotations

import itertools
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zstandard

import cadstore.dataset.reader as reader_module
from cadstore.dataset.reader import DatasetReader
from cadstore.errors import CorruptStoreError, StorageClosedError
from cadstore.format import codecs as C
from cadstore.io import native
from cadstore.merging import merge_items

PAIR = ("d2_distance", "a3_distance", "extended_adjacency", "face_pair_edges_path")


def _full(item: dict[str, Any], name: str) -> np.ndarray:
    arr = np.asarray(item[name])
    n = len(item["face_indices"])
    return arr.reshape(n * n, *arr.shape[2:]) if name in PAIR else arr


@pytest.fixture(scope="module")
def dataset(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("batch-reads") / "parts.dataset"
    merge_items([p for p, _, _ in realistic_items], out, inner_bytes=64 * 1024)
    return out


# ------------------------------------------------------------------------- the codec


@pytest.fixture(params=["libzstd", "python-zstandard"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a codec test through both decoders: the system's libzstd, straight into the
    targets, and python-zstandard (what runs where there is no libzstd)."""
    if request.param == "libzstd":
        if native.zstd_decoder() is None:
            pytest.skip("no libzstd on this system")
    else:
        monkeypatch.setattr(C, "zstd_decoder", lambda: None)
    return str(request.param)


def _frame(n: int, seed: int) -> tuple[bytes, bytes]:
    raw = np.random.default_rng(seed).integers(0, 9, size=n, dtype=np.uint8).tobytes()
    return raw, zstandard.ZstdCompressor(level=3).compress(raw)


@pytest.mark.parametrize("call_bytes", [C.DECODE_CALL_BYTES, 1000])
def test_decode_frames_fills_every_target(
    monkeypatch: pytest.MonkeyPatch, call_bytes: int, decoder: str
) -> None:
    # A small DECODE_CALL_BYTES splits the frames over several calls (one frame larger
    # than it goes alone).
    monkeypatch.setattr(C, "DECODE_CALL_BYTES", call_bytes)
    pieces = [_frame(n, seed) for seed, n in enumerate([300, 0, 4000, 17, 900, 2500])]
    out = bytearray(sum(len(raw) for raw, _ in pieces) + 8)
    view = memoryview(out)
    targets, at = [], 4
    for raw, _ in pieces:
        targets.append(view[at : at + len(raw)])
        at += len(raw)
    C.decode_frames([f for _, f in pieces], targets)
    assert bytes(out[4:-4]) == b"".join(raw for raw, _ in pieces)
    assert out[:4] == out[-4:] == b"\0\0\0\0"  # nothing written outside the targets


def test_an_empty_target_takes_a_frame_of_nothing_only(decoder: str) -> None:
    # zstandard reads a wanted size of 0 as "whatever the frame declares".
    huge = (
        (0xFD2FB528).to_bytes(4, "little")
        + bytes([0xC0, 0x00])  # 8-byte content size, a window descriptor
        + (1 << 40).to_bytes(8, "little")
        + bytes([0x01, 0x00, 0x00])  # the last block: raw, empty
    )
    assert zstandard.frame_content_size(huge) == 1 << 40
    _, empty = _frame(0, 0)
    C.decode_frames([empty, empty], [memoryview(bytearray(0))] * 2)
    with pytest.raises(C.FrameDecodeError) as caught:
        C.decode_frames([empty, huge], [memoryview(bytearray(0))] * 2)
    assert caught.value.position == 1


@pytest.mark.parametrize("call_bytes", [C.DECODE_CALL_BYTES, 1000])
@pytest.mark.parametrize("fault", ["short target", "long target", "corrupt frame"])
@pytest.mark.parametrize("together", [False, True], ids=["apart", "one buffer"])
def test_decode_frames_names_the_frame_at_fault(
    monkeypatch: pytest.MonkeyPatch, call_bytes: int, fault: str, together: bool, decoder: str
) -> None:
    monkeypatch.setattr(C, "DECODE_CALL_BYTES", call_bytes)
    pieces = [_frame(n, seed) for seed, n in enumerate([700, 800, 900, 1000])]
    frames = [f for _, f in pieces]
    sizes = [len(raw) for raw, _ in pieces]
    if fault == "short target":
        sizes[2] -= 1
    elif fault == "long target":
        sizes[2] += 1
    else:
        frames[2] = frames[2][:-3]  # the frame's last block cut short
    if together:  # the targets follow one another, as an array's items in a batch do
        view = memoryview(bytearray(sum(sizes)))
        bounds = list(itertools.accumulate(sizes, initial=0))
        targets = [view[a:b] for a, b in itertools.pairwise(bounds)]
    else:
        targets = [memoryview(bytearray(n)) for n in sizes]
    with pytest.raises(C.FrameDecodeError) as caught:
        C.decode_frames(frames, targets)
    assert caught.value.position == 2
    assert isinstance(caught.value, C.ChunkDecodeError)


def test_frames_in_one_buffer_are_decoded_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    found = native.zstd_decoder()
    if found is None:
        pytest.skip("no libzstd on this system")
    calls: list[int] = []
    decompress = found.decompress_into

    def counting(address: int, length: int, into: int, capacity: int) -> int:
        calls.append(capacity)
        return decompress(address, length, into, capacity)

    monkeypatch.setattr(found, "decompress_into", counting)
    pieces = [_frame(n, seed) for seed, n in enumerate([300, 4000, 17, 0, 900, 2500])]
    raws = [raw for raw, _ in pieces]
    out = bytearray(sum(map(len, raws)) + 100)
    view = memoryview(out)
    # Three targets one after the other, an empty one, then two after a gap.
    places = [0, 300, 4300, 4317, 4417, 5317]
    targets = [view[at : at + len(raw)] for at, raw in zip(places, raws, strict=True)]
    C.decode_frames([f for _, f in pieces], targets)
    assert [bytes(t) for t in targets] == raws
    assert calls == [4317, 3400]
    assert out[4317:4417] == bytes(100)  # the gap untouched


def test_a_frame_holding_two_is_not_spread_over_its_neighbours(decoder: str) -> None:
    """Frames decoded in one call must not spill: bytes holding a second frame after the
    first would decode into the next item's place, and the run would come out long."""
    (a, fa), (_, fb), (c, fc) = (_frame(n, seed) for seed, n in enumerate([400, 500, 600]))
    view = memoryview(bytearray(1000))
    # The first "frame" is a's frame, then b's; the second is c's.
    C.decode_frames([fa + fb, fc], [view[:400], view[400:]])
    assert bytes(view[:400]) == a
    assert bytes(view[400:]) == c


# ------------------------------------------------------------------------- the reader


def _check_batch(batch: Any, codes: list[int], items: list[Any]) -> None:
    for got, code in zip(batch, codes, strict=True):
        flat = {a: v for group in got.values() for a, v in group.items()}
        item = items[code][1]
        for name in ("face_areas", "face_discretization", "edge_u_grids", *PAIR):
            np.testing.assert_array_equal(flat[name], _full(item, name), err_msg=f"{code} {name}")


@pytest.mark.parametrize("cache_bytes", [64 * 1024 * 1024, 0])
def test_batches_read_again_equal_their_sources(
    dataset: Path, realistic_items: list[Any], cache_bytes: int
) -> None:
    rng = np.random.default_rng(5)
    with DatasetReader(dataset, cache_bytes=cache_bytes) as reader:
        for _ in range(4):  # the first round plans, the next ones run the plans
            codes = rng.choice(len(realistic_items), size=12).tolist()  # repeats too
            _check_batch(reader.read_items(codes), codes, realistic_items)
        every = list(range(len(realistic_items)))
        _check_batch(reader.read_items(every), every, realistic_items)
        _check_batch(reader.read_items(every[::-1]), every[::-1], realistic_items)


def test_rows_of_cached_chunks_are_copied_without_a_read_each(
    dataset: Path, realistic_items: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small rows (a few bytes per face) share chunks decoded whole and kept in the cache;
    # a batch read again copies each item's rows from them, with no read path per item
    # and array, and gives the same values.
    codes = list(range(len(realistic_items)))
    groups = ["faces", "edges", "graph"]
    with DatasetReader(dataset) as reader, DatasetReader(dataset, cache_bytes=0) as cold:
        reader.read_items(codes, groups)
        calls: list[str] = []
        read_into = reader._read_into

        def counting(path: str, *args: Any, **kwargs: Any) -> None:
            calls.append(path)
            read_into(path, *args, **kwargs)

        monkeypatch.setattr(reader, "_read_into", counting)
        again = reader.read_items(codes[::-1], groups)
        assert "faces/face_areas" not in calls and "graph/edges_source" not in calls
        expected = cold.read_items(codes[::-1], groups)
        for ours, theirs in zip(again, expected, strict=True):
            for group in groups:
                assert ours[group].keys() == theirs[group].keys()
                for name, value in theirs[group].items():
                    np.testing.assert_array_equal(ours[group][name], value, err_msg=name)
        for got, code in zip(again, codes[::-1], strict=True):
            np.testing.assert_array_equal(
                got["faces"]["face_areas"], realistic_items[code][1]["face_areas"]
            )


class _Counting:
    """Counts the bytes a reader fetches and the calls into :func:`decode_frames`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, reader: DatasetReader) -> None:
        self.fetched = 0
        self.calls: list[int] = []
        source = reader._source
        get_range = source.get_range

        def counting_range(key: str, start: int, length: int) -> bytes | None:
            data = get_range(key, start, length)
            self.fetched += len(data or b"")
            return data

        decode = reader_module.decode_frames

        def counting_decode(frames: Any, targets: Any) -> None:
            self.calls.append(len(frames))
            decode(frames, targets)

        monkeypatch.setattr(source, "get_range", counting_range)
        monkeypatch.setattr(reader_module, "decode_frames", counting_decode)


def test_an_item_read_again_fetches_its_own_frames(
    dataset: Path, realistic_items: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with DatasetReader(dataset) as reader:
        counting = _Counting(monkeypatch, reader)
        codes = list(range(8))
        reader.read_items(codes, groups=["faceface"])  # verifies whole chunks, plans
        first = counting.fetched
        counting.fetched, counting.calls = 0, []
        batch = reader.read_items(codes, groups=["faceface"])
        _check_batch_pairs(batch, codes, realistic_items)
        assert 0 < counting.fetched < first
        # One call into zstd per array of the batch, not one per item and array.
        assert 0 < len(counting.calls) <= len(PAIR)
        assert sum(counting.calls) >= len(codes)


def _check_batch_pairs(batch: Any, codes: list[int], items: list[Any]) -> None:
    for got, code in zip(batch, codes, strict=True):
        for name in PAIR:
            np.testing.assert_array_equal(got["faceface"][name], _full(items[code][1], name))


def test_with_its_cache_off_a_reader_rereads_every_chunk(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DatasetReader(dataset, cache_bytes=0) as reader:
        counting = _Counting(monkeypatch, reader)
        reader.read_items(list(range(8)), groups=["faceface"])  # and the shard indexes
        counting.fetched = 0
        reader.read_items(list(range(8)), groups=["faceface"])
        second = counting.fetched
        counting.fetched = 0
        reader.read_items(list(range(8)), groups=["faceface"])
        assert counting.fetched == second  # nothing remembered: every checksum read again
    with DatasetReader(dataset) as reader:
        counting = _Counting(monkeypatch, reader)
        reader.read_items(list(range(8)), groups=["faceface"])
        counting.fetched = 0
        reader.read_items(list(range(8)), groups=["faceface"])
        assert counting.fetched < second  # where a cache keeps the plans


def _flip_in_whole_chunk(src: Path, dst: Path) -> str:
    """Copy ``src`` with one byte flipped inside the first stored inner chunk of the
    triangle ``d2_distance`` shard; return that shard's member name."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        name = next(n for n in zf.namelist() if n.startswith("faceface_upper/d2_distance/c/"))
        info = zf.getinfo(name)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 40] ^= 0x10  # inside the shard's first inner chunk
    dst.write_bytes(bytes(data))
    return name


@pytest.mark.parametrize("cache_bytes", [64 * 1024 * 1024, 0])
def test_a_flipped_byte_is_refused_on_every_batch_read(
    dataset: Path, tmp_path: Path, cache_bytes: int
) -> None:
    bad = tmp_path / "bad.dataset"
    member = _flip_in_whole_chunk(dataset, bad)
    pristine = bad.read_bytes()
    with DatasetReader(bad, cache_bytes=cache_bytes) as reader:
        every = list(range(reader.n_items))
        for _ in range(2):  # the second time through the read plans of the good items
            with pytest.raises(CorruptStoreError, match="d2_distance") as caught:
                reader.read_items(every, groups=["faceface"])
            assert member.rsplit("/c/", 1)[0] in str(caught.value)
    assert bad.read_bytes() == pristine


# ------------------------------------------------------------ small arrays, kept whole


@pytest.fixture(scope="module")
def many_chunks(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The items merged with small inner chunks and shards: the per-face and per-edge
    arrays then lie in several shards of several inner chunks each."""
    out = tmp_path_factory.mktemp("small-arrays") / "parts.dataset"
    merge_items([p for p, _, _ in realistic_items], out, inner_bytes=1024, shard_bytes=2048)
    with zipfile.ZipFile(out) as zf:
        shards = [n for n in zf.namelist() if n.startswith("faces/face_areas/c/")]
    assert len(shards) >= 2
    return out


def _small_reads(monkeypatch: pytest.MonkeyPatch, reader: DatasetReader) -> list[str]:
    """The member keys of ``faces/face_areas`` the reader fetches from now on."""
    keys: list[str] = []
    source = reader._source
    get_range, get = source.get_range, source.get

    def counting_range(key: str, start: int, length: int) -> bytes | None:
        if key.startswith("faces/face_areas/"):
            keys.append(key)
        return get_range(key, start, length)

    def counting_get(key: str) -> bytes | None:
        if key.startswith("faces/face_areas/"):
            keys.append(key)
        return get(key)

    monkeypatch.setattr(source, "get_range", counting_range)
    monkeypatch.setattr(source, "get", counting_get)
    return keys


def test_a_batch_reads_small_arrays_once_whatever_items_it_holds(
    many_chunks: Path, realistic_items: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrays of small rows are decoded whole by the first batch that needs them and
    # gathered from then on: a later batch of other items, in other chunks and shards,
    # fetches nothing more of them (read chunk by chunk, it fetched their chunks).
    groups = ["faces", "edges", "graph"]
    with DatasetReader(many_chunks) as reader, DatasetReader(many_chunks, cache_bytes=0) as cold:
        reads = _small_reads(monkeypatch, reader)
        reader.read_items([0, 1], groups)
        assert reads
        reads.clear()
        codes = [29, 3, 17, 3, 28, 11, 0, 22]  # repeats, out of order, across shards
        batch = reader.read_items(codes, groups)
        assert reads == []
        expected = cold.read_items(codes, groups)
        for ours, theirs, code in zip(batch, expected, codes, strict=True):
            for group in groups:
                assert ours[group].keys() == theirs[group].keys()
                for name, value in theirs[group].items():
                    np.testing.assert_array_equal(ours[group][name], value, err_msg=name)
            np.testing.assert_array_equal(
                ours["faces"]["face_areas"], realistic_items[code][1]["face_areas"]
            )
            assert ours["graph"]["num_nodes"] == len(realistic_items[code][1]["face_indices"])


@pytest.mark.parametrize("cap", [0, 1 << 62])
def test_small_arrays_read_the_same_kept_whole_or_not(
    many_chunks: Path, realistic_items: list[Any], monkeypatch: pytest.MonkeyPatch, cap: int
) -> None:
    # Beyond SMALL_ARRAY_BYTES an array is read chunk by chunk, as are the arrays that
    # would take the kept ones past their share of the cache; every path gives the items.
    monkeypatch.setattr(reader_module, "SMALL_ARRAY_BYTES", cap)
    every = list(range(len(realistic_items)))
    for cache_bytes in (64 * 1024 * 1024, 8 * 1024):
        with DatasetReader(many_chunks, cache_bytes=cache_bytes) as reader:
            for codes in (every, every[::-1], [5, 5, 12]):
                _check_batch(reader.read_items(codes), codes, realistic_items)


def _flip_in_small_array(src: Path, dst: Path) -> tuple[str, list[int]]:
    """Copy ``src`` with one byte flipped in the last shard of ``faces/face_areas``;
    return that shard's member name and the items with rows in it."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("faces/face_areas/c/"))
        name = names[-1]
        info = zf.getinfo(name)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 20] ^= 0x10  # inside the shard's first inner chunk
    dst.write_bytes(bytes(data))
    with zarr.storage.ZipStore(src, mode="r") as store:
        array = zarr.open_array(store, path="faces/face_areas", mode="r")
        first = int(name.rsplit("/", 1)[1]) * array.shards[0]
        stop = first + array.chunks[0]  # the shard's first inner chunk
    with DatasetReader(src) as reader:
        offsets = reader.offsets("faces")
    inside = [c for c in range(len(offsets) - 1) if offsets[c] < stop and offsets[c + 1] > first]
    return name, inside


def test_a_damaged_chunk_of_a_small_array_fails_its_items_only(
    many_chunks: Path, realistic_items: list[Any], tmp_path: Path
) -> None:
    # The array cannot be kept whole; the reader falls back to its chunks: the items
    # outside the damaged one still read, those in it are refused, naming the array.
    bad = tmp_path / "bad.dataset"
    member, inside = _flip_in_small_array(many_chunks, bad)
    pristine = bad.read_bytes()
    outside = [c for c in range(len(realistic_items)) if c not in inside]
    assert inside and outside
    with DatasetReader(bad) as reader:
        batch = reader.read_items(outside, ["faces"])
        for got, code in zip(batch, outside, strict=True):
            np.testing.assert_array_equal(
                got["faces"]["face_areas"], realistic_items[code][1]["face_areas"]
            )
        with pytest.raises(CorruptStoreError, match="face_areas") as caught:
            reader.read_items([outside[0], inside[-1]], ["faces"])
        assert member.rsplit("/c/", 1)[0] in str(caught.value)
    assert bad.read_bytes() == pristine


def test_closing_waits_for_a_batch_under_way(dataset: Path, realistic_items: list[Any]) -> None:
    # A batch read lets the reader's lock go between arrays (other threads plan theirs
    # meanwhile); a close from another thread still waits for it to finish, rather than
    # failing it halfway with StorageClosedError.
    import threading
    import time

    started, closing = threading.Event(), threading.Event()
    events: list[str] = []
    outcome: dict[str, Any] = {}

    def allocate(group: str, array: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        if not started.is_set():
            started.set()
            assert closing.wait(10)
            time.sleep(0.2)  # close() is called meanwhile
        return np.empty(shape, dtype=dtype)

    reader = DatasetReader(dataset)
    codes = list(range(6))

    def read() -> None:
        try:
            outcome["batch"] = reader.read_items(codes, allocate=allocate)
        except BaseException as exc:  # reported below
            outcome["error"] = exc
        events.append("read done")

    thread = threading.Thread(target=read)
    thread.start()
    assert started.wait(10)
    closing.set()
    reader.close()
    events.append("closed")
    thread.join(10)
    assert "error" not in outcome, outcome.get("error")
    assert events == ["read done", "closed"]
    _check_batch(outcome["batch"], codes, realistic_items)
    with pytest.raises(StorageClosedError):
        reader.read_items(codes)


@pytest.mark.parametrize(
    "spans",
    [[(4, 7), (0, 2), (7, 7), (9, 10)], [(3, 3)], [(0, 10)]],
)
def test_a_groups_spans_gather_its_rows_with_one_index(spans: list[tuple[int, int]]) -> None:
    """Every array of a group is read with the same spans: the gather index is worked out
    once (``_Spans``) and gathers what the spans as a plain list gather."""
    source = np.arange(40, dtype=np.float32).reshape(10, 4)
    expected = np.concatenate([source[a:b] for a, b in spans])
    bounds = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    group = reader_module._Spans(bounds[:, 0], bounds[:, 1])
    assert list(group) == spans
    for given in (spans, group, group):
        out = np.full_like(expected, -1)
        assert reader_module._gather_rows(source, given, out)
        np.testing.assert_array_equal(out, expected)
    first = group.gather_index
    assert first is not None and group.gather_index is first


@pytest.mark.parametrize("spans", [[(8, 11)], [(-1, 2)], [(5, 3)], [(0, 2), (2, 4)]])
def test_spans_that_do_not_fit_the_array_gather_nothing(spans: list[tuple[int, int]]) -> None:
    """Offsets past the array, negative or reversed (a damaged offsets index), or rows
    that do not fill the output: nothing is copied and the caller reads otherwise."""
    source = np.arange(40, dtype=np.float32).reshape(10, 4)
    bounds = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    rows = max(1, int(np.clip(bounds[:, 1] - bounds[:, 0], 0, None).sum()) - (len(spans) > 1))
    for given in (spans, reader_module._Spans(bounds[:, 0], bounds[:, 1])):
        out = np.full((rows, 4), -1, dtype=np.float32)
        assert not reader_module._gather_rows(source, given, out)
        assert (out == -1).all()
