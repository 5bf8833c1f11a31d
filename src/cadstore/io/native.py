"""The operating system's own calls that Python's standard library does not expose.

Each is looked up once in the C library (Linux's glibc), or in the system's zstd library,
and is ``None`` (or a no-op) where the platform has none, so that callers degrade to what
Python offers rather than fail: :mod:`cadstore.io.publish` syncs a whole file system at
once and swaps two directories atomically through them; the training loaders map in the
pages of a new batch buffer in one call (:func:`populate_pages`); the dataset reader
decodes a batch's zstd frames straight into its buffers (:func:`zstd_decoder`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ZstdDecoder", "glibc_function", "populate_pages", "zstd_decoder"]


def glibc_function(name: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """Look up a C library function that returns an ``int``.

    Parameters
    ----------
    name
        The function's name in glibc (``"syncfs"``).
    argtypes
        Its arguments' ``ctypes`` types.

    Returns
    -------
    callable or None
        The function, which keeps its ``errno`` for ``ctypes.get_errno()``; ``None`` on
        another system than Linux or where the C library has no such function.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


#: ``madvise`` advice that faults in every page of a range, writable (Linux 5.14).
_MADV_POPULATE_WRITE = 23


@functools.cache
def _madvise() -> Callable[..., int] | None:
    return glibc_function("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])


def populate_pages(address: int, nbytes: int) -> bool:
    """Map the pages of a range of this process's memory, writable, in one call.

    Memory just mapped (a new shared-memory segment, a large new buffer) costs a page
    fault for each page written first: about 2.4 us each on the development machine,
    120 ms for a 200 MB batch, against 65 ms to map them all at once
    (``madvise(MADV_POPULATE_WRITE)``). Where the kernel or platform cannot (before Linux
    5.14, another system, a sandbox that refuses the call) nothing is done and the pages
    fault in as they are written, as before.

    Parameters
    ----------
    address
        Where the range starts (any byte of a page; the range is widened to whole pages).
    nbytes
        Its length in bytes.

    Returns
    -------
    bool
        Whether the pages were mapped.
    """
    madvise = _madvise()
    if madvise is None or nbytes <= 0:
        return False
    start = address - address % mmap.PAGESIZE
    return madvise(start, nbytes + address - start, _MADV_POPULATE_WRITE) == 0


class ZstdDecoder:
    """The system's zstd library (``libzstd``), decoding into memory the caller owns.

    python-zstandard decodes into buffers it allocates, which the caller then copies
    into place; for a batch of items that copy, and the fresh memory each call gets,
    cost about a tenth of the reading. ``libzstd`` decodes into a given address, with the
    interpreter lock released (a ``ctypes`` call), and decodes frames laid one after the
    other into consecutive memory in one call. One decoding context per thread.
    """

    def __init__(self, library: ctypes.CDLL) -> None:
        self._lib = library
        self._local = threading.local()

    def frame_size(self, address: int, length: int) -> int:
        """The stored size of the zstd frame that starts at ``address`` (within ``length``
        readable bytes); -1 if no whole frame starts there."""
        size: int = self._lib.ZSTD_findFrameCompressedSize(address, length)
        return -1 if self._lib.ZSTD_isError(size) else size

    def decompress_into(self, address: int, length: int, into: int, capacity: int) -> int:
        """Decode every frame of the ``length`` bytes at ``address``, one after the other,
        into the ``capacity`` bytes at ``into``; return the bytes decoded, or -1 if the
        frames are not valid zstd or do not fit (nothing is written beyond ``capacity``).

        The caller keeps both buffers alive and unmoved during the call.
        """
        context = getattr(self._local, "context", None)
        if context is None:
            context = self._local.context = _DecodingContext(self._lib)
        got: int = self._lib.ZSTD_decompressDCtx(context.pointer, into, capacity, address, length)
        return -1 if self._lib.ZSTD_isError(got) else got


class _DecodingContext:
    """A ``ZSTD_DCtx``, freed with the thread that made it."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._lib = library
        self.pointer = library.ZSTD_createDCtx()
        if not self.pointer:
            raise MemoryError("libzstd could not make a decoding context")

    def __del__(self) -> None:
        self._lib.ZSTD_freeDCtx(self.pointer)


@functools.cache
def zstd_decoder() -> ZstdDecoder | None:
    """The system's zstd library as a :class:`ZstdDecoder`, or ``None`` where there is
    none (the callers then decode through python-zstandard)."""
    for name in ("libzstd.so.1", None):
        if name is None:
            # Only now: find_library runs ldconfig (or a compiler) to search.
            name = ctypes.util.find_library("zstd")
            if not name:
                continue
        try:
            lib = ctypes.CDLL(name)
            lib.ZSTD_createDCtx.restype = ctypes.c_void_p
            lib.ZSTD_createDCtx.argtypes = []
            lib.ZSTD_freeDCtx.restype = ctypes.c_size_t
            lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
            lib.ZSTD_decompressDCtx.restype = ctypes.c_size_t
            lib.ZSTD_decompressDCtx.argtypes = [
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_void_p,
                ctypes.c_size_t,
            ]
            lib.ZSTD_findFrameCompressedSize.restype = ctypes.c_size_t
            lib.ZSTD_findFrameCompressedSize.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            lib.ZSTD_isError.restype = ctypes.c_uint
            lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            continue
        return ZstdDecoder(lib)
    return None
