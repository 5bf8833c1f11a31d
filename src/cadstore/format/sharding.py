"""Zarr v3 ``sharding_indexed`` for row-concatenated dataset arrays.

A merged dataset concatenates thousands of items along each group's primary dimension.
Reading one item must not decode megabytes, and a dataset must not be hundreds of
thousands of zip members; sharding gives both: each *shard* (one zip member) holds many
small *inner chunks* followed by an index of ``(offset, nbytes)`` pairs, one per inner
chunk, little-endian u64, ``(2**64-1, 2**64-1)`` for an absent chunk.

cadstore shards only along axis 0: inner chunks and shards span every other axis. Inner
chunks are ``bytes`` + ``zstd`` (or ``bytes`` alone when uncompressed), and the index is
``bytes``; each followed by the standard ``crc32c`` codec, a CRC-32C of the stored bytes,
which every reader verifies (cadstore's, and zarr-python's, hence xarray's): ranged reads
of a shard skip the zip's own CRC, which covers whole members, and a zstd frame carries no
checksum, so without it a flipped bit in a shard could be read back as a wrong value.
Datasets written before checksums (``checksum=False`` here) stay readable.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cadstore.format import codecs as C

__all__ = [
    "FRAME_MIN_BYTES",
    "ITEMS_PER_INNER",
    "MIN_INNER_BYTES",
    "MIN_SHARD_INNERS",
    "MISSING",
    "decode_inner",
    "encode_shard",
    "frame_cuts",
    "index_trailer",
    "read_index",
    "sharding_codec",
    "shard_layout",
]

MISSING = 2**64 - 1
_ENTRY = struct.Struct("<QQ")


#: An inner chunk aims to hold about this many typical items' rows, so that reading one
#: item decodes little beyond its own bytes. Without it, a 1-D per-face array with 256 KiB
#: inner chunks packs 65,536 rows (thousands of items) into each: a random item then decodes
#: a whole chunk per array to keep a few dozen rows (bench/bench_dataset.py).
ITEMS_PER_INNER = 4
#: The smallest inner chunk chosen for item-sized rows. Smaller chunks lose zstd ratio and
#: cost a read, a cache entry and a decoder call each; on the realistic workload 16 KiB
#: read random items faster than 4 KiB (fewer misses for the same bytes) and than 64 KiB
#: (less decoded to keep a few rows).
MIN_INNER_BYTES = 16 * 1024


#: The fewest inner chunks a shard has room for when the array is smaller than a full
#: shard (see :func:`shard_layout`): the shard, and its index, then fit the rows, while an
#: append that continues the array (with the same chunk grid) still fills shards of a
#: useful size.
MIN_SHARD_INNERS = 16


def shard_layout(
    row_bytes: int,
    inner_target: int,
    shard_target: int,
    shard_rows: int | None = None,
    item_rows: int | None = None,
    total_rows: int | None = None,
    compressed: bool = True,
) -> tuple[int, int]:
    """Choose ``(inner_rows, shard_rows)`` for rows of ``row_bytes`` bytes.

    Inner chunks hold about ``inner_target`` bytes and shards about ``shard_target``;
    ``shard_rows`` (when given, e.g. the specified ``face_chunk``) fixes the shard length.
    ``item_rows``, the typical number of rows one item contributes, caps inner chunks at
    :data:`ITEMS_PER_INNER` items' worth (but not below :data:`MIN_INNER_BYTES`), which
    keeps random item reads cheap for arrays with small rows. Shard rows are always a
    multiple of inner rows, as zarr-python requires.

    ``total_rows``, the rows the array will have, keeps a small array's output small: its
    shard has room for the inner chunks the rows need (at least
    :data:`MIN_SHARD_INNERS`), not for a whole default shard, whose index alone (16 bytes
    per inner chunk, absent ones included) would be kilobytes for an array of a few bytes.
    Uncompressed (``compressed`` false), an inner chunk holds no more than ``total_rows``
    either: its padding would be stored as it is, while zstd reduces it to nothing.
    """
    row_bytes = max(1, row_bytes)
    inner = max(1, inner_target // row_bytes)
    if item_rows is not None and item_rows > 0:
        inner = min(inner, max(ITEMS_PER_INNER * item_rows, MIN_INNER_BYTES // row_bytes, 1))
    if shard_rows is not None:
        inner = min(inner, max(1, shard_rows))
        per_shard = max(1, shard_rows // inner)
    else:
        per_shard = max(1, shard_target // (inner * row_bytes))
    if total_rows is not None:
        if not compressed:
            inner = min(inner, max(1, total_rows))
        needed = -(-max(1, total_rows) // inner)
        per_shard = min(per_shard, max(MIN_SHARD_INNERS, needed))
    return inner, inner * per_shard


#: The ``crc32c`` codec as a v3 codec list names it.
CRC32C = {"name": "crc32c"}


def sharding_codec(
    inner_shape: Sequence[int], level: int | None, checksum: bool = True
) -> dict[str, Any]:
    """Return the ``sharding_indexed`` codec description for a v3 ``zarr.json``.

    With ``checksum``, inner chunks and the index end with the ``crc32c`` codec.
    """
    inner_codecs: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if level is not None:
        inner_codecs.append({"name": "zstd", "configuration": {"level": level, "checksum": False}})
    index_codecs: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if checksum:
        inner_codecs.append(dict(CRC32C))
        index_codecs.append(dict(CRC32C))
    return {
        "name": "sharding_indexed",
        "configuration": {
            "chunk_shape": list(inner_shape),
            "codecs": inner_codecs,
            "index_codecs": index_codecs,
            "index_location": "end",
        },
    }


#: The smallest average piece (bytes of one item's rows in an inner chunk) for which an
#: inner chunk is written as item frames (see :func:`encode_shard`). Smaller pieces gain
#: little from being decoded alone (a whole chunk of them decodes in microseconds) and
#: would pay a frame header and a table entry (about 17 bytes) each.
FRAME_MIN_BYTES = 4 * 1024


def frame_cuts(starts: np.ndarray | None, r0: int, n_rows: int, row_bytes: int) -> list[int]:
    """The byte positions inside an inner chunk at which its items' frames start.

    ``starts`` are the rows (shard coordinates) at which items begin, ``r0`` and ``n_rows``
    the inner chunk's first row and rows holding data. Empty when the chunk holds one item
    or its pieces average under :data:`FRAME_MIN_BYTES`.
    """
    if starts is None or n_rows <= 1:
        return []
    lo, hi = np.searchsorted(starts, [r0 + 1, r0 + n_rows])
    if hi <= lo or n_rows * row_bytes < (hi - lo + 1) * FRAME_MIN_BYTES:
        return []
    return [(int(r) - r0) * row_bytes for r in starts[lo:hi]]


def encode_shard(
    rows: np.ndarray,
    inner_rows: int,
    shard_rows: int,
    level: int | None,
    checksum: bool = True,
    starts: np.ndarray | None = None,
) -> bytes:
    """Encode up to ``shard_rows`` rows as one shard.

    Inner chunks past the end of ``rows`` are absent; a last, partial inner chunk is
    padded with zeros to its full shape, as Zarr requires; at a negative ``level`` it is
    compressed at level 1 (at zstd's most negative levels, such as
    :data:`cadstore.merging.options.SMALL_ROWS_LEVEL`, its padding would be stored as it
    is). With ``checksum`` every inner chunk and the index carry their CRC-32C (see
    :func:`sharding_codec`).

    ``starts``, the rows (increasing, from 0 at the shard's first row) at which items
    begin, makes compressed inner chunks shared by items *item-framed*: one zstd frame per
    item's rows, behind a table (:func:`cadstore.format.codecs.item_frames_compress`), so
    that reading an item decodes its rows and not its neighbours'.
    """
    n_inner = shard_rows // inner_rows
    long_distance = C.long_distance_for(rows.dtype)
    body: list[bytes] = []
    index: list[bytes] = []
    offset = 0
    inner_shape = (inner_rows, *rows.shape[1:])
    for i in range(n_inner):
        block = rows[i * inner_rows : (i + 1) * inner_rows]
        if block.shape[0] == 0:
            index.append(_ENTRY.pack(MISSING, MISSING))
            continue
        n_data = block.shape[0]
        chunk_level = level
        if n_data < inner_rows:
            padded = np.zeros(inner_shape, dtype=rows.dtype)
            padded[: block.shape[0]] = block
            block = padded
            chunk_level = 1 if level is not None and level < 0 else level
        payload = np.ascontiguousarray(block).tobytes()
        if chunk_level is not None:
            row_bytes = block.nbytes // inner_rows
            cuts = frame_cuts(starts, i * inner_rows, n_data, row_bytes)
            payload = C.item_frames_compress(
                payload, cuts, chunk_level, long_distance=long_distance
            )
        if checksum:
            payload = C.append_crc32c(payload)
        index.append(_ENTRY.pack(offset, len(payload)))
        body.append(payload)
        offset += len(payload)
    table = b"".join(index)
    return b"".join(body) + (C.append_crc32c(table) if checksum else table)


def index_trailer(index_codecs: Sequence[Mapping[str, Any]]) -> int:
    """Bytes after a shard index's entries: 4 for its ``crc32c``, else 0.

    ``index_codecs`` is a checked index codec list (``bytes``, optionally ``crc32c``).
    """
    return 4 if len(index_codecs) == 2 else 0


def read_index(tail: bytes | memoryview, n_inner: int, shard_size: int) -> list[tuple[int, int]]:
    """Parse and validate a shard index (the last ``16 * n_inner`` bytes of a shard)."""
    if len(tail) != 16 * n_inner:
        raise C.ChunkDecodeError("shard index is truncated")
    body_size = shard_size - 16 * n_inner
    entries = []
    for i in range(n_inner):
        offset, nbytes = _ENTRY.unpack_from(tail, 16 * i)
        if (offset, nbytes) != (MISSING, MISSING) and (
            offset + nbytes > body_size or offset > body_size
        ):
            raise C.ChunkDecodeError("shard index points outside the shard")
        entries.append((offset, nbytes))
    return entries


def decode_inner(
    data: bytes | memoryview,
    codecs: Sequence[dict[str, Any]],
    dtype: np.dtype,
    inner_shape: Sequence[int],
    limit: int,
    *,
    direct: str | None = "auto",
) -> np.ndarray:
    """Decode one inner chunk encoded with ``bytes`` (+ ``zstd``/``gzip``, + ``crc32c``).

    ``codecs`` is the checked inner codec list of a sharding configuration (``bytes``
    first). What cadstore writes (little-endian ``bytes``, then ``zstd`` or nothing, then
    ``crc32c``) is decoded straight into a new writable array, with no intermediate
    ``bytes``; a checksum is verified before anything is decoded. ``direct`` is
    :func:`~cadstore.format.codecs.direct_codec` of the chain when the caller has it (a
    reader works it out once per array, not for every chunk); ``"auto"`` works it out.
    """
    if direct == "auto":
        direct = C.direct_codec(codecs, dtype)
    if direct is not None:
        out = np.empty(tuple(inner_shape), dtype=dtype)
        C.decode_into(direct, data, out.data.cast("B"))
        return out
    expected = math.prod(inner_shape) * dtype.itemsize
    for codec in reversed(codecs[1:]):
        name = codec["name"]
        if name == "zstd":
            data = C.decode_zstd(data, expected, limit)
        elif name == "gzip":
            data = C.decode_gzip(data, expected, limit, wbits=31)
        elif name == "crc32c":
            data = C.strip_crc32c(data, "inner chunk")
        else:
            raise C.ChunkDecodeError(f"inner codec {name!r} is not on the allow-list")
    if len(data) != expected:
        raise C.ChunkDecodeError(f"inner chunk has {len(data)} bytes, expected {expected}")
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    arr = np.frombuffer(data, dtype=dtype.newbyteorder(">" if endian == "big" else "<"))
    return arr.reshape(inner_shape).astype(dtype, copy=False)


def decode_shard(
    data: bytes,
    config: dict[str, Any],
    dtype: np.dtype,
    shard_shape: Sequence[int],
    limit: int,
    fill: Callable[[tuple[int, ...]], np.ndarray],
    required: Sequence[int] | None = None,
) -> np.ndarray:
    """Decode a whole shard into an array of ``shard_shape`` (absent chunks filled).

    ``config`` is a configuration that metadata parsing has checked (inner chunk shape,
    codecs, index codecs and location: ``zarr_nodes._check_sharding``). ``required`` is
    the extent of the shard that holds the array's values, when the writer stored every
    inner chunk holding any (cadstore's datasets): an absent one is then an error.
    """
    inner_shape = tuple(config["chunk_shape"])
    if any(s % i for s, i in zip(shard_shape, inner_shape, strict=True)):
        raise C.ChunkDecodeError("inner chunk shape does not divide the shard shape")
    index_codecs = config["index_codecs"]
    grid = [s // i for s, i in zip(shard_shape, inner_shape, strict=True)]
    n_inner = math.prod(grid)
    index_size = 16 * n_inner + index_trailer(index_codecs)
    if len(data) < index_size:
        raise C.ChunkDecodeError("shard shorter than its index")
    index: bytes | memoryview = data[len(data) - index_size :]
    if len(index_codecs) == 2:  # bytes + crc32c, as zarr-python writes by default
        index = C.strip_crc32c(index, "shard index")
    # read_index checks offsets against the body: the shard less its index and checksum.
    entries = read_index(index, n_inner, len(data) - index_size + 16 * n_inner)
    out = fill(tuple(shard_shape))
    codecs = config["codecs"]
    for flat, (offset, nbytes) in enumerate(entries):
        if offset == MISSING:
            if required is not None and all(
                p * i < r
                for p, i, r in zip(np.unravel_index(flat, grid), inner_shape, required, strict=True)
            ):
                raise C.ChunkDecodeError(f"inner chunk {flat} is missing")
            continue
        pos = np.unravel_index(flat, grid)
        region = tuple(slice(p * i, (p + 1) * i) for p, i in zip(pos, inner_shape, strict=True))
        out[region] = decode_inner(
            data[offset : offset + nbytes], codecs, dtype, inner_shape, limit
        )
    return out
