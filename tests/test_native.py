"""The C library calls Python lacks (cadstore.io.native)."""

from __future__ import annotations

import ctypes
import mmap

import pytest

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
