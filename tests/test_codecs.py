"""Decoding zstd chunks into their destination: both the one-shot and the streamed path."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

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
