"""Chunk codecs: zstd decoded into its destination (one-shot and streamed), and the crc32c
checksums zarr-python writes, verified with or without the ``google_crc32c`` library."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

from cadstore import OptStorage
from cadstore.errors import CorruptStoreError
from cadstore.format import codecs as C

# One size on each side of the one-shot limit, so both decoding paths are exercised.
SIZES = [4096, C.ONE_SHOT_BYTES, C.ONE_SHOT_BYTES + 4096]


def _payload(nbytes: int) -> bytes:
    values = np.cumsum(np.random.default_rng(nbytes).normal(size=nbytes // 4))
    return values.astype(np.float32).tobytes()


@pytest.mark.parametrize("nbytes", SIZES)
def test_decodes_exactly_into_the_destination(nbytes: int) -> None:
    raw = _payload(nbytes)
    frame = C.zstd_compress(raw, 1)
    out = np.zeros(nbytes, np.uint8)
    C.decode_zstd_into(frame, memoryview(out))
    assert out.tobytes() == raw


@pytest.mark.parametrize("nbytes", SIZES)
def test_frame_without_content_size_is_decoded(nbytes: int) -> None:
    raw = _payload(nbytes)
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    assert zstandard.frame_content_size(frame) == -1
    out = np.zeros(nbytes, np.uint8)
    C.decode_zstd_into(frame, memoryview(out))
    assert out.tobytes() == raw


@pytest.mark.parametrize("nbytes", SIZES)
def test_trailing_bytes_are_refused(nbytes: int) -> None:
    frame = C.zstd_compress(_payload(nbytes), 1) + b"junk"
    with pytest.raises(C.ChunkDecodeError, match="corrupt"):
        C.decode_zstd_into(frame, memoryview(np.zeros(nbytes, np.uint8)))


@pytest.mark.parametrize("nbytes", SIZES)
def test_truncated_frame_is_refused(nbytes: int) -> None:
    frame = C.zstd_compress(_payload(nbytes), 1)
    with pytest.raises(C.ChunkDecodeError):
        C.decode_zstd_into(frame[: len(frame) // 2], memoryview(np.zeros(nbytes, np.uint8)))


@pytest.mark.parametrize("nbytes", SIZES)
def test_declared_size_must_match_the_destination(nbytes: int) -> None:
    frame = C.zstd_compress(_payload(nbytes), 1)
    out = np.zeros(nbytes - 4, np.uint8)
    with pytest.raises(C.ChunkDecodeError, match=f"declares {nbytes} bytes"):
        C.decode_zstd_into(frame, memoryview(out))
    # Nothing was written into a destination the frame does not fit.
    assert not out.any()


def test_items_are_compressed_without_long_distance_matching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item's chunks, large floating-point ones too, go without long-distance
    matching: with symmetric face pairs stored as triangles it bought items about a tenth
    of their size for a fifth of their write time (docs/benchmarks.md)."""
    used: list[tuple[int, bool]] = []
    real = C._compressor

    def spy(level: int, ldm: bool = False) -> Any:
        used.append((level, ldm))
        return real(level, ldm)

    monkeypatch.setattr(C, "_compressor", spy)
    rows = C.LDM_MIN_BYTES // (64 * 4) + 1
    rng = np.random.default_rng(0)
    hist = rng.random((rows, 64), dtype=np.float32)
    paths = rng.integers(0, 100, (rows, 64), dtype=np.int32)
    small = rng.random(10_000, dtype=np.float32)  # compressed, below the threshold
    storage = OptStorage(tmp_path / "p.zarr", summary_dir=False, compression_level=1)
    for key, value in (("hist", hist), ("paths", paths), ("small", small)):
        used.clear()
        storage.save_data(key, value)
        assert used == [(1, False)], key
    storage.compress_store()
    storage.close()
    with OptStorage(tmp_path / "p.zarr") as back:
        np.testing.assert_array_equal(back.load_data("hist"), hist)
        np.testing.assert_array_equal(back.load_data("paths"), paths)


# ----------------------------------------------------------------------------- crc32c

#: Whether the checksum is computed by google_crc32c or by cadstore's own table.
CRC_IMPLEMENTATIONS = ["google_crc32c", "fallback"]


def _use(implementation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if implementation == "fallback":
        monkeypatch.setitem(sys.modules, "google_crc32c", None)  # import raises ImportError
    else:
        pytest.importorskip("google_crc32c")


@pytest.mark.parametrize("implementation", CRC_IMPLEMENTATIONS)
def test_crc32c_is_castagnoli(implementation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(implementation, monkeypatch)
    assert C.crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    assert C.crc32c(b"") == 0
    data = np.random.default_rng(3).bytes(10_000)
    assert C.crc32c(memoryview(data)) == C.crc32c(data)
    monkeypatch.undo()
    google_crc32c = pytest.importorskip("google_crc32c")
    assert C.crc32c(data) == google_crc32c.value(data)


def _zarr_python_item(path: Path) -> dict[str, bytes]:
    """An item zarr-python wrote: a sharded array (crc32c on its index, zarr-python's
    default) and an array whose chunks carry a crc32c checksum. Returns its members."""
    zarr = pytest.importorskip("zarr")
    from zarr.codecs import BytesCodec, Crc32cCodec

    store = zarr.storage.ZipStore(path, mode="w")
    group = zarr.open_group(store, mode="w")
    sharded = group.create_array("sharded", shape=(100,), chunks=(10,), shards=(50,), dtype="i4")
    sharded[:] = np.arange(100, dtype=np.int32)
    checked = group.create_array(
        "checked",
        shape=(20,),
        chunks=(20,),
        dtype="f8",
        serializer=BytesCodec(),
        compressors=[Crc32cCodec()],
    )
    checked[:] = np.linspace(0.0, 1.0, 20)
    store.close()
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    codecs = members["sharded/zarr.json"].decode()
    assert '"crc32c"' in codecs and "index_codecs" in codecs
    return members


def _rewrite(path: Path, members: dict[str, bytes], member: str, position: int) -> bytes:
    """Rewrite the item with one byte of ``member`` flipped (the zip's own CRC recomputed,
    so only the Zarr checksum can tell)."""
    changed = bytearray(members[member])
    changed[position] ^= 0xFF
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, bytes(changed) if name == member else data)
    return path.read_bytes()


@pytest.mark.parametrize("implementation", CRC_IMPLEMENTATIONS)
def test_zarr_python_checksums_are_verified(
    tmp_path: Path, implementation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flipped byte under a crc32c checksum is a corrupt store naming the array, whether
    or not google_crc32c is installed; intact checksums read back the values."""
    item = tmp_path / "zarr-python.data"
    members = _zarr_python_item(item)
    _use(implementation, monkeypatch)
    with OptStorage(item, mode="r") as storage:
        np.testing.assert_array_equal(storage.load_data("sharded"), np.arange(100))
        np.testing.assert_array_equal(storage.load_data("checked"), np.linspace(0.0, 1.0, 20))

    cases = [
        ("sharded/c/0", -1, "sharded"),  # the shard index's checksum
        ("sharded/c/1", -5, "sharded"),  # the shard index itself
        ("checked/c/0", 3, "checked"),  # a value under the chunk's checksum
    ]
    for member, position, key in cases:
        stored = _rewrite(item, members, member, position)
        with OptStorage(item, mode="r") as storage:
            with pytest.raises(CorruptStoreError, match="crc32c") as caught:
                storage.load_data(key)
            assert key in str(caught.value) and str(item) in str(caught.value)
        assert item.read_bytes() == stored, "reading must not change the file"


def test_a_half_imported_google_crc32c_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread importing google_crc32c leaves it in sys.modules before it has its
    functions: the checksum must not pick that half-initialised module up (it raised
    AttributeError in a threaded benchmark)."""
    import types

    data = b"cadstore chunk bytes" * 100
    expected = C.crc32c(data)
    monkeypatch.setitem(sys.modules, "google_crc32c", types.ModuleType("google_crc32c"))
    assert C.crc32c(data) == expected
