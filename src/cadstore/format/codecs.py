"""Chunk codecs: what cadstore writes and the allow-list of what it reads.

cadstore encodes chunks itself rather than through zarr-python, because zarr-python's
per-array cost (about 1 ms) dominates the small arrays of a CAD item. The byte formats are
those of the Zarr specification and numcodecs, so zarr-python reads what we write and we
read what it (or zarr-python 2.x) wrote.

Every decoder checks declared sizes against the expected decoded size *before* it allocates:
a zstd frame that declares more bytes than its chunk can hold, a blosc header whose size
disagrees, a vlen count beyond the chunk's element count, are all
:class:`~cadstore.errors.CorruptStoreError`. Codecs outside the allow-list (notably any
pickle-based one) are refused before any chunk is touched.
"""

from __future__ import annotations

import bisect
import ctypes
import importlib
import itertools
import math
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import zstandard

from cadstore.io.native import ZstdDecoder, zstd_decoder

__all__ = [
    "FrameBounds",
    "ChunkCapExceeded",
    "ChunkDecodeError",
    "FrameDecodeError",
    "append_crc32c",
    "copy_stored_range",
    "crc32c",
    "decode_blosc",
    "decode_gzip",
    "decode_into",
    "decode_msgpack_strings",
    "decode_vlen_utf8",
    "decode_zstd",
    "decode_frames_into",
    "decode_range_into",
    "decode_frames",
    "decode_frames_range",
    "is_item_framed",
    "open_item_frames",
    "decode_zstd_into",
    "direct_codec",
    "frame_table",
    "item_frames_compress",
    "encode_vlen_utf8",
    "long_distance_for",
    "strip_crc32c",
    "zstd_compress",
]

#: v3 codec names we read (array->bytes and bytes->bytes); anything else is refused.
V3_READABLE_CODECS = frozenset(
    ("bytes", "zstd", "gzip", "blosc", "crc32c", "transpose", "vlen-utf8", "sharding_indexed")
)
#: v2 compressor / filter ids we read.
V2_READABLE_COMPRESSORS = frozenset(("zstd", "blosc", "zlib", "gzip", "lz4"))
V2_READABLE_FILTERS = frozenset(("delta", "vlen-utf8", "msgpack2", "astype"))


class ChunkDecodeError(ValueError):
    """A chunk that cannot be decoded; readers re-raise it as a corrupt-store error."""


class ChunkCapExceeded(ChunkDecodeError):
    """A chunk of unknown decoded size that decodes to more than the ``limit`` it was given.

    Not necessarily corrupt: a reader that gave a cap below what the file's budget allows
    (:meth:`cadstore.format.limits.DecodeBudget.room` before a directory store is sized)
    decodes it again within the exact cap; any other :class:`ChunkDecodeError` is final.

    ``declared`` is the decoded size the chunk's header declares, when it declares one
    (zstd, blosc, lz4), and ``subject`` what declares it: a reader tells from it a chunk
    that no cap could ever allow (more than ``Limits.max_chunk_bytes``), which it refuses
    at once rather than size its budget and decode the chunk again.
    """

    def __init__(self, message: str, *, declared: int | None = None, subject: str = "") -> None:
        super().__init__(message)
        self.declared = declared
        self.subject = subject


class FrameDecodeError(ChunkDecodeError):
    """A frame of :func:`decode_frames` is corrupt; ``position`` is its index."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


_local = threading.local()


#: Payloads at least this large are compressed with long-distance matching (see
#: :func:`zstd_compress`). Smaller ones gain little from it (their window is small
#: anyway): merged datasets' 64 KiB inner chunks compress 6% smaller with it but merge 25%
#: slower.
LDM_MIN_BYTES = 128 * 1024
# Long-distance matching parameters: a 4 MiB window covers a whole default chunk (1M
# elements of 4 bytes) and 48-byte minimum matches catch repeated histogram rows.
_LDM_WINDOW_LOG = 22
_LDM_MIN_MATCH = 48


def _compressor(level: int, ldm: bool = False) -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not thread-safe; keep one per thread, level and mode.
    cache: dict[tuple[int, bool], zstandard.ZstdCompressor] | None = getattr(_local, "zc", None)
    if cache is None:
        cache = _local.zc = {}
    comp = cache.get((level, ldm))
    if comp is None:
        if ldm:
            params = zstandard.ZstdCompressionParameters.from_level(
                level,
                enable_ldm=True,
                window_log=_LDM_WINDOW_LOG,
                ldm_min_match=_LDM_MIN_MATCH,
                write_content_size=True,
            )
            comp = zstandard.ZstdCompressor(compression_params=params)
        else:
            comp = zstandard.ZstdCompressor(level=level, write_content_size=True)
        cache[(level, ldm)] = comp
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "zd", None)
    if d is None:
        d = _local.zd = zstandard.ZstdDecompressor()
    return d


def long_distance_for(dtype: np.dtype) -> bool:
    """Whether a merged dataset's chunks of ``dtype`` are compressed with long-distance
    matching (items are written without it: :mod:`cadstore.storage.opt`).

    It finds repeated rows of floating-point face-pair features far apart; on integer
    arrays (the workload's face-pair edge paths hold 98% of the integer bytes) it measured
    three times the compression time for 5% larger output.
    """
    return dtype.kind not in "biu"


def zstd_compress(data: bytes | memoryview, level: int, *, long_distance: bool = True) -> bytes:
    """Compress ``data`` into one standard zstd frame that records its content size.

    Payloads of :data:`LDM_MIN_BYTES` or more use zstd's long-distance matching unless
    ``long_distance`` is false. CAD arrays repeat themselves far apart (a face-pair
    histogram ``[i, j]`` equals ``[j, i]``, a whole row of the matrix away), which the
    regular match finder of the fast levels cannot see. Callers turn it off where it does
    not pay: item writes since their symmetric face pairs are stored as triangles, and
    integer chunks (see :func:`long_distance_for`). The frames are ordinary zstd frames;
    any decoder reads them.
    """
    return _compressor(level, long_distance and len(data) >= LDM_MIN_BYTES).compress(data)


#: The magic number of the skippable zstd frame that opens an item-framed chunk (one of
#: the sixteen that RFC 8878 reserves for skippable frames, ``0x184D2A50``-``5F``).
FRAMES_MAGIC = 0x184D2A5C
#: What the table in that skippable frame starts with (and its version).
_FRAMES_TAG = b"CSF1"
_SKIPPABLE = struct.Struct("<II")
_FRAMES_HEAD = struct.Struct("<4sI")
#: A table entry: a frame's decoded and stored sizes, in bytes.
_FRAME_ENTRY = np.dtype([("raw", "<u4"), ("stored", "<u4")])
#: Positions of an item-framed chunk's frames (see :func:`frame_table`): Python integers
#: for the usual short tables, a numpy array for a long one.
FrameBounds = list[int] | np.ndarray
#: Frame tables up to this many entries are read into Python integers, longer ones (no
#: item chunk's) into numpy arrays, which hold a hostile table's entries in 16 bytes each.
_INT_TABLE_MAX = 1024


def item_frames_compress(
    data: bytes | memoryview, cuts: Sequence[int], level: int, *, long_distance: bool = True
) -> bytes:
    """Compress ``data`` as one zstd frame per piece between ``cuts``, with a table.

    A merged dataset's inner chunk holds the rows of several items; compressed as one frame,
    reading one item decodes its neighbours' rows too. Here each piece (an item's rows, cut
    at ``cuts``: byte positions, increasing, strictly inside ``data``) is its own frame, and
    a skippable frame at the front lists every frame's decoded and stored sizes, so a reader
    decodes only the frames it needs (:func:`decode_range_into`).

    The result is standard zstd data (RFC 8878: a skippable frame, then frames whose
    decoded contents concatenate): any conforming decoder returns ``data``, zarr-python's
    (numcodecs 0.16.4 or later) included. Without cuts it is :func:`zstd_compress`'s one
    frame.
    """
    if not cuts:
        return zstd_compress(data, level, long_distance=long_distance)
    view = memoryview(data).cast("B")
    bounds = [0, *cuts, len(view)]
    frames = [
        zstd_compress(view[a:b], level, long_distance=long_distance)
        for a, b in itertools.pairwise(bounds)
    ]
    table = np.empty(len(frames), dtype=_FRAME_ENTRY)
    table["raw"] = np.diff(bounds)
    table["stored"] = [len(f) for f in frames]
    body = _FRAMES_HEAD.pack(_FRAMES_TAG, len(frames)) + table.tobytes()
    return b"".join([_SKIPPABLE.pack(FRAMES_MAGIC, len(body)), body, *frames])


def frame_table(data: bytes | memoryview, expected: int) -> tuple[FrameBounds, FrameBounds] | None:
    """The frames of an item-framed chunk (:func:`item_frames_compress`), checked.

    Returns ``(raw_bounds, stored_bounds)``: ``n + 1`` byte positions each, frame ``k``
    decoding to bytes ``raw_bounds[k]:raw_bounds[k + 1]`` of the chunk from stored bytes
    ``stored_bounds[k]:stored_bounds[k + 1]`` of ``data``; ``None`` for a chunk that does
    not open with the table (one frame, or a chunk another tool wrote).

    Raises
    ------
    ChunkDecodeError
        If the table is malformed, or its sizes do not add up to ``expected`` decoded bytes
        and to the stored bytes of ``data`` (nothing in a file is trusted).
    """
    if len(data) < _SKIPPABLE.size:
        return None
    magic, size = _SKIPPABLE.unpack_from(data, 0)
    if magic != FRAMES_MAGIC:
        return None
    start = _SKIPPABLE.size + _FRAMES_HEAD.size
    if size < _FRAMES_HEAD.size or _SKIPPABLE.size + size > len(data):
        raise ChunkDecodeError("item frame table is truncated")
    tag, count = _FRAMES_HEAD.unpack_from(data, _SKIPPABLE.size)
    if tag != _FRAMES_TAG or size != _FRAMES_HEAD.size + count * _FRAME_ENTRY.itemsize:
        raise ChunkDecodeError("item frame table is malformed")
    raw: FrameBounds
    stored: FrameBounds
    if count <= _INT_TABLE_MAX:
        # A few dozen entries in practice: plain integers cost a reader a few microseconds
        # where numpy's per-call overhead cost it four times that, per chunk read.
        sizes = struct.unpack_from(f"<{2 * count}I", data, start)
        raw = list(itertools.accumulate(sizes[0::2], initial=0))
        stored = list(itertools.accumulate(sizes[1::2], initial=_SKIPPABLE.size + size))
    else:
        # A table this long is no item chunk's, but is read as compactly as it is stored.
        table = np.frombuffer(data, dtype=_FRAME_ENTRY, count=count, offset=start)
        raw = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(table["raw"], out=raw[1:])
        stored = np.empty(count + 1, dtype=np.int64)
        stored[0] = _SKIPPABLE.size + size
        np.cumsum(table["stored"], out=stored[1:])
        stored[1:] += stored[0]
    if raw[-1] != expected or stored[-1] != len(data):
        raise ChunkDecodeError(
            f"item frames add up to {int(raw[-1])} bytes from {int(stored[-1])} stored, "
            f"expected {expected} from {len(data)}"
        )
    return raw, stored


def decode_range_into(
    kind: str, data: bytes | memoryview, out: memoryview, start: int, chunk_bytes: int
) -> bool:
    """Decode bytes ``start:start + len(out)`` of an item-framed chunk into ``out``.

    Only the frames holding those bytes are decoded: an item's rows cost their own frames,
    not the whole chunk. ``kind`` is a :func:`direct_codec` kind, ``chunk_bytes`` the size
    the whole chunk decodes to. The checksum of a ``+crc32c`` chunk is verified over the
    whole stored chunk first.

    Returns ``False``, decoding nothing, when the chunk is not item-framed (the caller
    decodes it whole).

    Raises
    ------
    ChunkDecodeError
        If the checksum, the table or a frame is corrupt.
    """
    framed = open_item_frames(kind, data, chunk_bytes)
    if framed is None:
        return False
    decode_frames_range(framed[0], framed[1:], out, start)
    return True


def open_item_frames(
    kind: str, data: bytes | memoryview, chunk_bytes: int
) -> tuple[bytes | memoryview, FrameBounds, FrameBounds] | None:
    """An item-framed chunk's body and frame table, checked; ``None`` if not item-framed.

    ``kind`` is a :func:`direct_codec` kind: a ``+crc32c`` chunk's checksum is verified
    over the whole stored chunk first. Returns ``(body, raw_bounds, stored_bounds)`` as
    :func:`frame_table` does, ``body`` being ``data`` less its checksum; the stored
    bounds are positions in ``data`` too (the checksum trails the chunk). A reader that
    keeps the table can later fetch and decode a single frame of the chunk
    (:func:`decode_frames`) without reading the rest.

    Raises
    ------
    ChunkDecodeError
        If the checksum or the table is corrupt.
    """
    base = _CHECKED.get(kind, kind)
    if base != "zstd" or len(data) < _SKIPPABLE.size:
        return None
    if _SKIPPABLE.unpack_from(data, 0)[0] != FRAMES_MAGIC:
        return None
    if base != kind:
        data = strip_crc32c(data, "chunk")
    found = frame_table(data, chunk_bytes)
    assert found is not None  # the magic was checked above
    return data, found[0], found[1]


#: A zstd frame's magic number (RFC 8878, 3.1.1).
_ZSTD_MAGIC = 0xFD2FB528
#: The largest block a zstd frame may hold (RFC 8878, 3.1.1.2: Block_Maximum_Size).
_ZSTD_BLOCK_MAX = 128 * 1024
#: The largest Window_Descriptor exponent zstd decodes (a window of 2**31 bytes).
_ZSTD_WINDOW_EXPONENT_MAX = 21


def _stored_blocks(frame: memoryview, expected: int) -> list[tuple[int, int]] | None:
    """Where the decoded bytes of zstd ``frame`` lie in it, when it stores them as they are.

    Returns ``(position in frame, size)`` per block, in order, for a single frame that
    declares ``expected`` bytes, uses no dictionary and no content checksum, and holds
    only raw blocks adding up to ``expected``, each full but the last (as zstd writes
    them), with nothing after the last; ``None`` for anything else (compressed or RLE
    blocks, a malformed header or a window zstd refuses), which the caller decodes with
    zstd. Every size is checked against the frame (RFC 8878, 3.1.1).
    """
    n = len(frame)
    if n < 6 or int.from_bytes(frame[:4], "little") != _ZSTD_MAGIC:
        return None
    descriptor = frame[4]
    # Bits 0-1 a dictionary, bit 2 a content checksum (which a copy would not verify),
    # bit 3 reserved: a frame with any of them is left to zstd.
    if descriptor & 0x0F:
        return None
    single = descriptor & 0x20
    pos = 5
    if single:
        window = expected
    else:
        exponent, mantissa = frame[5] >> 3, frame[5] & 7
        if exponent > _ZSTD_WINDOW_EXPONENT_MAX:
            return None  # a window zstd refuses (more than 2 GiB)
        base = 1 << (10 + exponent)
        window = base + (base >> 3) * mantissa
        pos = 6
    size_bytes = (1 if single else 0, 2, 4, 8)[descriptor >> 6]
    if not size_bytes or pos + size_bytes > n:
        return None
    declared = int.from_bytes(frame[pos : pos + size_bytes], "little")
    if size_bytes == 2:
        declared += 256
    if declared != expected:
        return None
    pos += size_bytes
    block_max = min(window, _ZSTD_BLOCK_MAX)
    blocks = []
    total = 0
    while pos + 3 <= n:
        header = int.from_bytes(frame[pos : pos + 3], "little")
        size = header >> 3
        pos += 3
        if header & 0b110 or size > block_max or pos + size > n:
            return None  # not a raw block, or one zstd would refuse
        if not header & 1 and size != block_max:
            # zstd fills every block but the last: anything else (empty blocks by the
            # million, say) is left to zstd, which walks them in C.
            return None
        blocks.append((pos, size))
        pos += size
        total += size
        if header & 1:  # the last block
            return blocks if total == expected and pos == n else None
    return None


def copy_stored_range(
    kind: str, data: bytes | memoryview, out: memoryview, start: int, chunk_bytes: int
) -> bool:
    """Copy bytes ``start:start + len(out)`` of a chunk that zstd stored as it was.

    Arrays of small rows are merged at zstd's fastest level, where zstd keeps its input
    in raw blocks. An item's rows are a few hundred bytes of such a chunk (16 KiB, shared
    by a hundred items); read with no chunk cache, decompressing it whole cost a buffer
    and two copies of bytes nobody wanted, for each of a dozen arrays per item. Here the
    rows are copied out of the stored blocks. ``kind`` is a :func:`direct_codec` kind; a
    ``+crc32c`` chunk's checksum is verified over the whole stored chunk before anything
    is copied.

    Returns ``False``, copying nothing, for a chunk that is not one zstd frame of raw
    blocks decoding to ``chunk_bytes`` (see :func:`_stored_blocks`): the caller decodes it.

    Raises
    ------
    ChunkDecodeError
        If the checksum does not match.
    """
    base = _CHECKED.get(kind, kind)
    view = memoryview(data)
    if base != "zstd" or len(view) < 4 or start < 0 or start + out.nbytes > chunk_bytes:
        return False
    blocks = _stored_blocks(view[:-4] if base != kind else view, chunk_bytes)
    if blocks is None:
        return False
    if base != kind:
        strip_crc32c(data, "chunk")  # ``data``, not a view: bytes are checked uncopied
    stop = start + out.nbytes
    at = 0
    for pos, size in blocks:
        lo, hi = max(start, at), min(stop, at + size)
        if lo < hi:
            out[lo - start : hi - start] = view[pos + lo - at : pos + hi - at]
        at += size
        if at >= stop:
            break
    return True


def is_item_framed(data: bytes | memoryview) -> bool:
    """Whether a zstd chunk (checksum removed) opens with an item frame table."""
    return len(data) >= _SKIPPABLE.size and _SKIPPABLE.unpack_from(data, 0)[0] == FRAMES_MAGIC


def decode_frames(frames: Sequence[bytes | memoryview], targets: Sequence[memoryview]) -> None:
    """Decode many whole zstd frames, ``frames[k]`` into ``targets[k]`` (byte views).

    One call into zstd decodes every frame with the interpreter lock released once. The
    frames a batch needs (each item's rows of each array: a few dozen KiB apiece) decoded
    one call at a time hand the lock between loader threads at every frame, and those
    hand-offs, more than the decoding, kept two threads at the speed of one
    (``docs/benchmarks.md``). Each frame must decode to exactly its target's size.

    Raises
    ------
    FrameDecodeError
        If a frame is corrupt or decodes to another size; ``position`` says which.
    """
    sizes = [t.nbytes for t in targets]
    for k, size in enumerate(sizes):
        if not size:
            # zstandard reads a wanted size of 0 as "the frame says": an empty target is
            # checked here instead, against the frame's own header.
            try:
                decode_zstd_into(frames[k], targets[k])
            except ChunkDecodeError as exc:
                raise FrameDecodeError(str(exc), k) from exc
    decoder = zstd_decoder()
    if decoder is None or not _decode_in_place(decoder, frames, targets, sizes):
        _decode_with_zstandard(frames, targets, sizes, 0, len(frames))


def _decode_in_place(
    decoder: ZstdDecoder,
    frames: Sequence[bytes | memoryview],
    targets: Sequence[memoryview],
    sizes: list[int],
) -> bool:
    """:func:`decode_frames` through the system's libzstd, straight into the targets.

    Frames whose targets follow one another in memory (an array's items in a batch
    buffer) are joined and decoded in one call: the interpreter lock let go once, and
    the decoded bytes written in place, never copied after. No frame's bytes land in
    another's target: each frame must declare its target's size and be exactly one
    whole zstd frame (both checked before anything is decoded), libzstd checks that
    every frame decodes to the size it declares, and the run must fill its targets
    exactly. Returns ``False``, having decoded nothing, when a frame does not declare its
    size or a target is not writable memory (python-zstandard then does it all); a run
    that fails those checks goes through python-zstandard, which raises naming the faulty
    frame (or, for bytes holding more than one frame, decodes the first, as it does
    everywhere).
    """
    n = len(frames)
    places = [0] * n
    try:
        for k in range(n):
            if sizes[k]:
                if zstandard.frame_content_size(frames[k]) != sizes[k]:
                    return False
                places[k] = ctypes.addressof(ctypes.c_char.from_buffer(targets[k]))
    except (zstandard.ZstdError, TypeError, ValueError):
        return False

    def follows(k: int, _: int) -> bool:
        # A run: frames whose targets follow one another in memory.
        return places[k] == places[k - 1] + sizes[k - 1]

    for first, stop, total in _runs(sizes, 0, n, follows):
        data = b"".join(frames[first:stop])
        start = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
        whole, at = True, 0
        for k in range(first, stop):
            length = memoryview(frames[k]).nbytes
            if decoder.frame_size(start + at, length) != length:
                whole = False
                break
            at += length
        if not whole or decoder.decompress_into(start, len(data), places[first], total) != total:
            _decode_with_zstandard(frames, targets, sizes, first, stop)
    return True


def _runs(
    sizes: list[int], first: int, stop: int, joins: Callable[[int, int], bool]
) -> Iterator[tuple[int, int, int]]:
    """The runs of non-empty frames among ``first:stop``: ``(start, stop, total bytes)``
    each, frame ``k`` joining the run before it when ``joins(k, bytes so far)``."""
    while first < stop:
        if not sizes[first]:
            first += 1
            continue
        end, total = first + 1, sizes[first]
        while end < stop and sizes[end] and joins(end, total):
            total += sizes[end]
            end += 1
        yield first, end, total
        first = end


def _decode_with_zstandard(
    frames: Sequence[bytes | memoryview],
    targets: Sequence[memoryview],
    sizes: list[int],
    first: int,
    stop: int,
) -> None:
    """Frames ``first:stop`` (empty ones left out) decoded through python-zstandard, in
    calls of at most :data:`DECODE_CALL_BYTES` (but one frame)."""

    # Calls of at most DECODE_CALL_BYTES: zstandard allocates the output of each, and
    # memory that large comes from mmap, fresh pages faulted in at every call.
    def fits(k: int, total: int) -> bool:
        return total + sizes[k] <= DECODE_CALL_BYTES

    for start, end, _ in _runs(sizes, first, stop, fits):
        _decode_frame_run(frames, targets, sizes, start, end)


#: The most bytes :func:`decode_frames` decodes in one call into zstd (but one frame).
DECODE_CALL_BYTES = 4 * 1024 * 1024


def _decode_frame_run(
    frames: Sequence[bytes | memoryview],
    targets: Sequence[memoryview],
    sizes: list[int],
    first: int,
    stop: int,
) -> None:
    wanted = np.asarray(sizes[first:stop], dtype=np.uint64)
    try:
        decoded = _decompressor().multi_decompress_to_buffer(
            list(frames[first:stop]), decompressed_sizes=wanted.tobytes()
        )
    except (zstandard.ZstdError, ValueError, MemoryError) as exc:
        message = str(exc)
        # zstandard names the frame: "error decompressing item 3: ..."
        head = message.split(":", 1)[0].rsplit(" ", 1)[-1]
        position = first + int(head) if head.isdigit() and int(head) < stop - first else first
        raise FrameDecodeError(f"zstd data is corrupt: {message}", position) from exc
    for k in range(first, stop):
        segment = memoryview(decoded[k - first])  # type: ignore[arg-type]  # a buffer
        if segment.nbytes != sizes[k]:  # zstandard checks this too; never spill
            raise FrameDecodeError(
                f"zstd frame decoded to {segment.nbytes} bytes, expected {sizes[k]}", k
            )
        targets[k][:] = segment


def frame_at(raw: FrameBounds, stored: FrameBounds, start: int) -> tuple[int, int, int] | None:
    """The frame of a :func:`frame_table` whose decoded bytes begin at ``start``.

    Returns ``(stored start, stored stop, decoded stop)``, or ``None`` when no frame holding
    bytes begins there (a read that does not follow the chunk's item boundaries). Found by
    bisection, so that a long table is never expanded into per-frame objects.
    """
    k = bisect.bisect_right(raw, start) - 1
    if k < 0 or k >= len(raw) - 1 or raw[k] != start:
        return None
    return int(stored[k]), int(stored[k + 1]), int(raw[k + 1])


def decode_frames_range(
    data: bytes | memoryview,
    bounds: tuple[FrameBounds, FrameBounds],
    out: memoryview,
    start: int,
) -> None:
    """Decode the frames covering bytes ``start:start + len(out)`` into ``out``.

    A frame wholly inside the range is decoded in place; one that sticks out (a read that
    does not follow item boundaries) is decoded aside and the part wanted copied.
    """
    raw, stored = bounds
    stop = start + out.nbytes
    first = bisect.bisect_right(raw, start) - 1
    view = memoryview(data)
    for k in range(max(first, 0), len(raw) - 1):
        a, b = int(raw[k]), int(raw[k + 1])
        if a >= stop:
            break
        frame = view[int(stored[k]) : int(stored[k + 1])]
        if start <= a and b <= stop:
            decode_zstd_into(frame, out[a - start : b - start])
        elif b > a:
            whole = bytearray(b - a)
            decode_zstd_into(frame, memoryview(whole))
            lo, hi = max(a, start), min(b, stop)
            out[lo - start : hi - start] = memoryview(whole)[lo - a : hi - a]


def decode_frames_into(data: bytes | memoryview, out: memoryview) -> bool:
    """Decode a whole item-framed zstd chunk (checksum already removed) into ``out``.

    Returns ``False`` when ``data`` does not open with an item frame table.
    """
    found = frame_table(data, out.nbytes)
    if found is None:
        return False
    decode_frames_range(data, found, out, 0)
    return True


def decode_zstd(data: bytes | memoryview, expected: int | None, limit: int) -> bytes:
    """Decompress one zstd frame.

    Parameters
    ----------
    data
        The frame.
    expected
        The exact decoded size, when known (fixed-size dtypes); ``None`` for vlen data.
    limit
        The most bytes the frame may decode to when ``expected`` is ``None``.

    An item-framed chunk (:func:`item_frames_compress`) decodes frame by frame; it only
    holds fixed-size rows, so ``expected`` must be known.
    """
    if len(data) >= _SKIPPABLE.size and _SKIPPABLE.unpack_from(data, 0)[0] == FRAMES_MAGIC:
        if expected is None:
            raise ChunkDecodeError("item frames hold fixed-size rows, not variable-length data")
        whole = bytearray(expected)
        decode_frames_into(data, memoryview(whole))
        return bytes(whole)
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise ChunkDecodeError(f"not a zstd frame: {exc}") from exc
    bound = expected if expected is not None else limit
    if declared != -1 and declared > bound:
        message = f"zstd frame declares {declared} bytes, more than the {bound} the chunk may hold"
        if expected is not None:
            raise ChunkDecodeError(message)
        raise ChunkCapExceeded(message, declared=declared, subject="zstd frame")
    try:
        out = _decompressor().decompress(data, max_output_size=bound)
    except zstandard.ZstdError as exc:
        # A frame not declaring its size that decodes beyond the bound fails as a corrupt
        # frame does ("did not decompress full frame"): tell them apart.
        if expected is None and declared == -1 and _zstd_exceeds(data, bound):
            raise ChunkCapExceeded(f"zstd frame decodes to more than {bound} bytes") from exc
        raise ChunkDecodeError(f"zstd data is corrupt: {exc}") from exc
    if expected is not None and len(out) != expected:
        raise ChunkDecodeError(f"zstd frame decoded to {len(out)} bytes, expected {expected}")
    return out


def _zstd_exceeds(data: bytes | memoryview, bound: int) -> bool:
    """Whether the zstd frame ``data`` decodes to more than ``bound`` bytes (a corrupt one
    does not), decoding no more than ``bound + 1`` bytes, in pieces that are dropped."""
    got = 0
    try:
        with _decompressor().stream_reader(data, read_across_frames=False) as reader:
            while got <= bound:
                piece = reader.read(min(bound + 1 - got, 1 << 20))
                if not piece:
                    break
                got += len(piece)
    except zstandard.ZstdError:
        return False
    return got > bound


#: Frames declaring at most this many bytes are decoded in one shot and copied into place
#: (see :func:`decode_zstd_into`): measured faster up to 64 KiB, even at 256 KiB and slower
#: from 1 MiB, where the stream reader's direct decode wins.
ONE_SHOT_BYTES = 256 * 1024


def decode_zstd_into(data: bytes | memoryview, out: memoryview) -> None:
    """Decompress one zstd frame into ``out`` (a byte-format view), which it must fill exactly.

    Large frames are decoded straight into ``out`` through a stream reader, saving the copy
    that a ``bytes`` result would need. Below :data:`ONE_SHOT_BYTES` a one-shot decode
    and a copy are faster: the stream reader's setup and its internal window buffer cost
    more than copying a small chunk, and a merged dataset's random item reads decode dozens
    of 16-64 KiB inner chunks.
    """
    expected = out.nbytes
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise ChunkDecodeError(f"not a zstd frame: {exc}") from exc
    if declared not in (-1, expected):
        raise ChunkDecodeError(f"zstd frame declares {declared} bytes, expected {expected}")
    if declared == expected and expected <= ONE_SHOT_BYTES:
        # The frame's declared size was checked against the destination, so the one-shot
        # decoder allocates exactly ``expected`` bytes and fails if the data disagrees.
        try:
            raw = _decompressor().decompress(data, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise ChunkDecodeError(f"zstd data is corrupt: {exc}") from exc
        if len(raw) != expected:
            raise ChunkDecodeError(f"zstd frame decoded to {len(raw)} bytes, expected {expected}")
        out[:] = raw
        return
    got = 0
    try:
        with _decompressor().stream_reader(data, read_size=max(1, len(data))) as reader:
            while got < expected:
                n = reader.readinto(out[got:])
                if not n:
                    break
                got += n
            extra = reader.read(1) if got == expected else b""
    except zstandard.ZstdError as exc:
        raise ChunkDecodeError(f"zstd data is corrupt: {exc}") from exc
    if got != expected or extra:
        more = " or more" if extra else ""
        raise ChunkDecodeError(f"zstd frame decoded to {got}{more} bytes, expected {expected}")


#: The direct codec chains (see :func:`direct_codec`), by their codec names after ``bytes``.
_DIRECT_CHAINS: dict[tuple[str, ...], str] = {
    (): "raw",
    ("zstd",): "zstd",
    ("crc32c",): "raw+crc32c",
    ("zstd", "crc32c"): "zstd+crc32c",
}


#: The checked direct chains, and the chain their bytes follow once the checksum is off.
_CHECKED = {"raw+crc32c": "raw", "zstd+crc32c": "zstd"}


def direct_codec(codecs: Sequence[Mapping[str, Any]], dtype: np.dtype) -> str | None:
    """Whether a v3 codec chain can be decoded straight into an array of ``dtype``.

    Returns ``"zstd"`` for little-endian ``bytes`` then ``zstd``, ``"raw"`` for
    little-endian ``bytes`` alone, each with ``"+crc32c"`` when a ``crc32c`` checksum
    ends the chain (what cadstore writes); ``None`` for anything else (transposes, other
    compressors, big-endian data, strings), which takes the general path.
    """
    if not codecs or codecs[0].get("name") != "bytes" or dtype.byteorder == ">":
        return None
    if (codecs[0].get("configuration") or {}).get("endian", "little") != "little":
        return None
    return _DIRECT_CHAINS.get(tuple(str(c.get("name")) for c in codecs[1:]))


def decode_into(kind: str, data: bytes | memoryview, out: memoryview) -> None:
    """Decode one chunk of a :func:`direct_codec` chain of ``kind`` into ``out``, exactly.

    A ``+crc32c`` chain's checksum is verified first, over the stored bytes: a chunk that
    changed on disk is refused before a byte of it is decoded.

    Raises
    ------
    ChunkDecodeError
        If the checksum does not match, or the chunk does not decode to ``out`` exactly.
    """
    base = _CHECKED.get(kind)
    if base is not None:
        data = strip_crc32c(data, "chunk")
        kind = base
    if kind == "zstd":
        if not decode_frames_into(data, out):
            decode_zstd_into(data, out)
    elif len(data) != out.nbytes:
        raise ChunkDecodeError(f"chunk has {len(data)} bytes, expected {out.nbytes}")
    else:
        out[:] = data


def decode_gzip(data: bytes | memoryview, expected: int | None, limit: int, *, wbits: int) -> bytes:
    """Decompress gzip (``wbits=31``) or zlib (``wbits=15``) data without exceeding a bound."""
    bound = expected if expected is not None else limit
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(data, bound + 1)
    except zlib.error as exc:
        raise ChunkDecodeError(f"deflate data is corrupt: {exc}") from exc
    if len(out) > bound:
        error = ChunkDecodeError if expected is not None else ChunkCapExceeded
        raise error(f"deflate data expands beyond {bound} bytes")
    if expected is not None and len(out) != expected:
        raise ChunkDecodeError(f"deflate data decoded to {len(out)} bytes, expected {expected}")
    return out


def _zarr2_module(name: str, what: str) -> Any:
    """Import a codec library that only Zarr v2 files written by other tools need.

    cadstore writes zstd (and, for v2 items, numcodecs' Delta, which it decodes itself);
    blosc, lz4 and MsgPack strings appear only in files zarr-python 2 wrote, so their
    libraries are the ``zarr2`` extra, not core dependencies.

    Raises
    ------
    ImportError
        Naming the extra to install.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"reading {what} (Zarr v2 files written by zarr-python) needs {name.split('.')[0]}:"
            " pip install 'cadstore[zarr2]'"
        ) from exc


def decode_blosc(data: bytes, expected: int | None, limit: int) -> bytes:
    """Decompress a blosc frame after checking its header against the expected size."""
    if len(data) < 16:
        raise ChunkDecodeError("blosc frame shorter than its 16-byte header")
    nbytes, _blocksize, cbytes = struct.unpack_from("<III", data, 4)
    bound = expected if expected is not None else limit
    if nbytes > bound or (expected is not None and nbytes != expected):
        message = f"blosc header declares {nbytes} bytes, expected {bound}"
        if expected is not None:
            raise ChunkDecodeError(message)
        raise ChunkCapExceeded(message, declared=nbytes, subject="blosc header")
    if cbytes != len(data):
        raise ChunkDecodeError(f"blosc header declares {cbytes} compressed bytes, got {len(data)}")
    blosc = _zarr2_module("numcodecs.blosc", "blosc-compressed chunks")

    try:
        return bytes(blosc.decompress(data))
    except Exception as exc:  # numcodecs raises RuntimeError and others
        raise ChunkDecodeError(f"blosc data is corrupt: {exc}") from exc


def decode_lz4(data: bytes, expected: int | None, limit: int) -> bytes:
    """Decompress numcodecs' LZ4 framing (a little-endian u32 size, then the block)."""
    if len(data) < 4:
        raise ChunkDecodeError("lz4 chunk shorter than its size header")
    (declared,) = struct.unpack_from("<I", data, 0)
    bound = expected if expected is not None else limit
    if declared > bound:
        message = f"lz4 header declares {declared} bytes, expected at most {bound}"
        if expected is not None:
            raise ChunkDecodeError(message)
        raise ChunkCapExceeded(message, declared=declared, subject="lz4 header")
    numcodecs = _zarr2_module("numcodecs", "lz4-compressed chunks")

    try:
        return bytes(numcodecs.LZ4().decode(data))
    except Exception as exc:
        raise ChunkDecodeError(f"lz4 data is corrupt: {exc}") from exc


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def _crc32c_python(data: bytes | memoryview) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # a core dependency; the table below stands in should it be missing
    import google_crc32c as _google_crc32c_module

    _GOOGLE_CRC32C: Any = _google_crc32c_module
except ImportError:  # pragma: no cover - installed with cadstore
    _GOOGLE_CRC32C = None


def crc32c(data: bytes | memoryview) -> int:
    """The CRC-32C (Castagnoli) checksum of ``data``, as the Zarr ``crc32c`` codec stores it.

    ``google_crc32c`` (a dependency of cadstore, as of zarr-python) computes it in
    hardware; should it be missing, a table-driven implementation here gives the same
    result, much slower, so a checksum is never skipped for want of a library.
    """
    # Imported once, with this module: looking it up in sys.modules at each call could
    # meet it half-initialised while another thread imports it. sys.modules is consulted
    # only to honour a simulated absence (an entry set to None, as the tests do).
    google = _GOOGLE_CRC32C
    if google is None or sys.modules.get("google_crc32c", google) is None:
        return _crc32c_python(data)
    # google_crc32c takes bytes; copying a compressed chunk costs less than wrapping it.
    value: int = google.value(data if type(data) is bytes else bytes(data))
    return value


def append_crc32c(data: bytes) -> bytes:
    """``data`` followed by its little-endian CRC-32C, as the ``crc32c`` codec encodes it."""
    return data + crc32c(data).to_bytes(4, "little")


#: The CRC-32C of any bytes followed by their own little-endian CRC-32C: checking the
#: whole stored value against it verifies the checksum without cutting it off first.
CRC32C_RESIDUE = 0x48674BC7


def strip_crc32c(data: bytes | memoryview, what: str) -> memoryview:
    """Check and remove the little-endian CRC-32C that the ``crc32c`` codec appends.

    Returns a view of the bytes before the checksum (no copy).

    Raises
    ------
    ChunkDecodeError
        When ``data`` is shorter than the checksum or the checksum does not match, naming
        ``what`` (a chunk, a shard index).
    """
    if len(data) < 4:
        raise ChunkDecodeError(f"{what} is shorter than its crc32c checksum")
    if crc32c(data) != CRC32C_RESIDUE:
        raise ChunkDecodeError(f"{what}: crc32c checksum mismatch (the data changed on disk)")
    return memoryview(data)[:-4]


def encode_vlen_utf8(items: Sequence[str]) -> bytes:
    """Encode strings in the vlen-utf8 layout (u32 count, then u32 length + bytes each)."""
    encoded = [s.encode("utf-8") for s in items]
    parts = [struct.pack("<I", len(encoded))]
    for b in encoded:
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def decode_vlen_utf8(data: bytes, count: int) -> list[str]:
    """Decode the vlen-utf8 layout, checking every length against the buffer."""
    if len(data) < 4:
        raise ChunkDecodeError("vlen-utf8 chunk shorter than its count header")
    (n,) = struct.unpack_from("<I", data, 0)
    if n != count:
        raise ChunkDecodeError(f"vlen-utf8 chunk holds {n} items, expected {count}")
    out: list[str] = []
    pos = 4
    end = len(data)
    for _ in range(n):
        if pos + 4 > end:
            raise ChunkDecodeError("vlen-utf8 chunk truncated")
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + length > end:
            raise ChunkDecodeError("vlen-utf8 item runs past the end of the chunk")
        try:
            out.append(data[pos : pos + length].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ChunkDecodeError(f"vlen-utf8 item is not UTF-8: {exc}") from exc
        pos += length
    return out


def decode_msgpack_strings(data: bytes, shape: Sequence[int], limit: int) -> list[Any]:
    """Decode numcodecs' MsgPack object encoding (items, then dtype and shape) safely.

    Only ``str`` items (and ``None``, kept as is) are accepted; no extension types, no
    pickle, bounded buffer sizes. ``shape`` is the chunk's: numcodecs packs the chunk's
    ``tolist()``, nested lists of that shape (flat ones are read too), so a payload holds
    no more lists than those, the outer one and the shape's. More are refused as they are
    unpacked: each array's length alone is bounded, and a payload of 1 MB nesting a
    million empty arrays took 64 MB to unpack before its item count was checked.
    """
    msgpack = _zarr2_module("msgpack", "MsgPack-encoded strings")
    count = math.prod(shape)
    # The outer list, the nested lists of tolist() (one per index of every leading
    # dimension but the last) and the shape list.
    most_lists = 2 + sum(math.prod(shape[:k]) for k in range(1, len(shape)))
    lists = 0

    def count_list(value: list[Any]) -> list[Any]:
        nonlocal lists
        lists += 1
        if lists > most_lists:
            raise ChunkDecodeError(
                f"msgpack chunk nests more than {most_lists} arrays, the most a chunk of "
                f"shape {tuple(shape)} holds"
            )
        return value

    try:
        items = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=0,
            max_ext_len=0,
            max_array_len=count + 2,
            max_map_len=0,
            list_hook=count_list,
        )
    except ChunkDecodeError:
        raise
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ChunkDecodeError(f"msgpack data is corrupt: {exc}") from exc
    if not isinstance(items, list) or len(items) < 2:
        raise ChunkDecodeError("msgpack chunk is not a list ending with dtype and shape")
    values = items[:-2]
    flat = list(_flatten(values))
    if len(flat) != count:
        raise ChunkDecodeError(f"msgpack chunk holds {len(flat)} items, expected {count}")
    for v in flat:
        if not (v is None or isinstance(v, str)):
            raise ChunkDecodeError(f"msgpack chunk holds a {type(v).__name__}, expected str")
    return flat


def _flatten(values: Any) -> Any:
    for v in values:
        if isinstance(v, list):
            yield from _flatten(v)
        else:
            yield v


def delta_decode(arr: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """Invert numcodecs' Delta filter (first value, then differences)."""
    dtype = np.dtype(config.get("dtype", arr.dtype))
    return np.cumsum(arr, dtype=dtype)
