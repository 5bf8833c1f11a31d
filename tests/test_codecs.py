"""Decoding zstd chunks into their destination: both the one-shot and the streamed path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

from cadstore import OptStorage
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


def test_long_distance_matching_for_large_float_arrays_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large floating-point chunks get long-distance matching; integer chunks never do.

    On the workload's face-pair paths (int32) it tripled the compression time and grew
    the output; on the mirrored float histograms it is what keeps files small.
    """
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
        assert used == [(1, key == "hist")], key
    storage.compress_store()
    storage.close()
    with OptStorage(tmp_path / "p.zarr") as back:
        np.testing.assert_array_equal(back.load_data("hist"), hist)
        np.testing.assert_array_equal(back.load_data("paths"), paths)
