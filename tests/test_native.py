"""The C library calls Python lacks (cadstore.io.native)."""

from __future__ import annotations

import ctypes
import mmap

import pytest
import zstandard

from cadstore.io import native
from cadstore.io.native import glibc_function, populate_pages
from conftest import needs_populate_write, page_faults_writing


def test_a_function_the_c_library_lacks_is_none() -> None:
    assert glibc_function("cadstore_no_such_function", []) is None


@needs_populate_write
@pytest.mark.parametrize("offset", [0, 100])
def test_populated_pages_are_written_without_a_fault(offset: int) -> None:
    """Any start inside a page: the range is widened to whole pages, the ones around it
    left as they were."""
    pages = 256
    area = mmap.mmap(-1, (pages + 2) * mmap.PAGESIZE)
    # Ordinary pages, whatever the machine's transparent huge page setting.
    area.madvise(mmap.MADV_NOHUGEPAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    start, nbytes = mmap.PAGESIZE + offset, pages * mmap.PAGESIZE - offset
    assert populate_pages(base + start, nbytes)
    view, payload = memoryview(area), b"x" * nbytes
    faults = page_faults_writing(lambda: view.__setitem__(slice(start, start + nbytes), payload))
    assert faults < pages // 8, f"{faults} page faults writing {pages} populated pages"
    # The page after the range was not mapped: writing it faults.
    after = (pages + 1) * mmap.PAGESIZE
    assert page_faults_writing(lambda: view.__setitem__(slice(after, after + 1), b"y")) >= 1
    assert area[start : start + 3] == b"xxx" and area[after : after + 1] == b"y"
    view.release()
    area.close()


def test_nothing_is_populated_for_an_empty_range() -> None:
    assert populate_pages(0, 0) is False


def test_libzstd_decodes_frames_in_a_row_into_place_and_never_past_capacity() -> None:
    decoder = native.zstd_decoder()
    if decoder is None:
        pytest.skip("no libzstd on this system")
    parts = [bytes([k]) * 700 for k in range(1, 4)]
    compressor = zstandard.ZstdCompressor(write_content_size=True)
    data = b"".join(compressor.compress(p) for p in parts)
    source = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(2200)
    assert (
        decoder.decompress_into(ctypes.addressof(source), len(data), ctypes.addressof(out), 2100)
        == 2100
    )
    assert out.raw[:2100] == b"".join(parts) and out.raw[2100:] == bytes(100)
    # Too little room: an error, and nothing written past what was given.
    out = ctypes.create_string_buffer(2200)
    assert (
        decoder.decompress_into(ctypes.addressof(source), len(data), ctypes.addressof(out), 1000)
        == -1
    )
    assert out.raw[1000:] == bytes(1200)
    # Not zstd at all.
    junk = ctypes.create_string_buffer(b"not a zstd frame", 16)
    assert decoder.decompress_into(ctypes.addressof(junk), 16, ctypes.addressof(out), 100) == -1
