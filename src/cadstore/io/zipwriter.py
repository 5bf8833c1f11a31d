"""Write a zip of stored (and, for metadata, deflated) members in one pass.

Item files hold a few dozen members that are already zstd-compressed, so the zip only needs
the STORED method. ``zipfile.ZipFile.writestr`` costs tens of microseconds per member, a
large share of an item's write budget; this writer packs the same headers with ``struct``.
The output is a plain PKZIP file that ``zipfile``, zarr-python's ``ZipStore`` and ``unzip``
read. Archives that would need ZIP64 (more than 65,535 members, or 4 GiB) go through
``zipfile``, which handles ZIP64.
"""

from __future__ import annotations

import functools
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from typing import IO

__all__ = ["FIXED_TIME_AND_DATE", "write_stored_zip"]

# DOS date for 1980-01-01 00:00: fixed so that the same item always gives the same bytes.
_DOS_DATE = (0 << 9) | (1 << 5) | 1
_DOS_TIME = 0
#: The DOS time and date (1980-01-01 00:00) of every entry every cadstore writer writes,
#: since its first: items (both writers of :func:`write_stored_zip`) and datasets
#: (:class:`ZipStreamWriter`). Together with writing each name once, it is how a reader
#: tells a repeated name in a file cadstore wrote (damage) from another writer's rewrite
#: (see :class:`cadstore.io.sources.ZipSource`).
FIXED_TIME_AND_DATE = (_DOS_TIME, _DOS_DATE)
_VERSION = 20
_MADE_BY = (3 << 8) | _VERSION  # Unix, so external attributes carry permissions
_EXTERNAL_ATTR = 0o100644 << 16
_UTF8_FLAG = 0x800
#: Sizes and offsets from this on are recorded in ZIP64 extra fields.
_LIMIT = 0xFFFFFFFF
#: What a 4-byte size or offset field holds when ZIP64 records it ("see ZIP64"); a
#: constant of the format, kept apart from :data:`_LIMIT` so that tests can lower that.
_SEE_ZIP64 = 0xFFFFFFFF


def _never(name: str) -> bool:
    return False


#: Deflate level of metadata documents (see :func:`_deflate`), in both writers.
_LEVEL = 3


def _deflate(data: bytes) -> bytes:
    """Raw deflate with a window just large enough for ``data``.

    zlib's defaults size the window and hash for 32 KiB; setting them up costs more than
    compressing a 400-byte metadata document. A window covering the whole input finds the
    same matches, so the output is as small. Small documents are remembered (see
    :func:`_deflate_small`). Level 3 deflates an item's consolidated ``zarr.json``
    (about 9 KB) in 23 us where the default level 6 takes 61 us, for about 110 more
    bytes (0.5% of a small real item's file).
    """
    if len(data) <= _REMEMBERED_BYTES:
        return _deflate_small(data)
    return _deflate_now(data)


def _deflate_now(data: bytes) -> bytes:
    bits = max(9, min(15, (len(data) - 1).bit_length()))
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, -bits, max(1, min(9, bits - 7)))
    return packer.compress(data) + packer.flush()


# An array's zarr.json depends only on its shape, dtype, chunks, dims and codecs, so items
# of the same face and edge counts repeat them: over 1,000 workload items 86% of the array
# documents had been seen before in the same process. Deflating one costs ~20 us.
_REMEMBERED_BYTES = 2048
_deflate_small = functools.lru_cache(maxsize=4096)(_deflate_now)


_PACK_LOCAL = struct.Struct("<IHHHHHIIIHH").pack
_PACK_CENTRAL_HEAD = struct.Struct("<IHHHHHHIIIHHHHHI").pack
_OFFSET = struct.Struct("<I")

#: Records of deflated members by (name, bytes), for documents of up to
#: :data:`_REMEMBERED_BYTES` (bounded: up to about 4 KB an entry with its key, 16 MB when
#: full; an item's array documents are about 400 bytes, 1 KB an entry).
_REMEMBERED: dict[tuple[str, bytes], tuple[bytes, bytes, bytes, bytes]] = {}
_REMEMBERED_KEPT = 4096


def _encoded(name: str, data: bytes, deflate: bool) -> tuple[bytes, int, int, bytes]:
    """A member's name as stored, its flags (UTF-8 or not), its method (0 stored, 8
    deflated) and its payload: deflated when ``deflate`` asks and that makes it smaller."""
    raw_name = name.encode("utf-8")
    flags = 0 if raw_name.isascii() else _UTF8_FLAG
    if deflate:
        packed = _deflate(data)
        if len(packed) < len(data):
            return raw_name, flags, 8, packed
    return raw_name, flags, 0, data


def _records(name: str, data: bytes, deflate: bool) -> tuple[bytes, bytes, bytes, bytes]:
    """A member's local entry (its header with the name, and the payload), and its
    central directory record before and after the local entry's offset (which depends on
    the archive)."""
    raw_name, flags, method, payload = _encoded(name, data, deflate)
    header = (_DOS_TIME, _DOS_DATE, zlib.crc32(data), len(payload), len(data), len(raw_name))
    local = _PACK_LOCAL(0x04034B50, _VERSION, flags, method, *header, 0) + raw_name
    head = _PACK_CENTRAL_HEAD(
        0x02014B50, _MADE_BY, _VERSION, flags, method, *header, 0, 0, 0, 0, _EXTERNAL_ATTR
    )
    return local, payload, head, raw_name


def write_stored_zip(
    fh: IO[bytes], members: Sequence[tuple[str, bytes]], *, deflate: Callable[[str], bool] = _never
) -> None:
    """Write ``members`` (name, bytes) to ``fh`` as a zip archive.

    Members are stored as they are, except those for which ``deflate(name)`` is true, which
    are deflated when that makes them smaller (metadata documents, not zstd chunks). Names
    must be unique; the caller guarantees it (each key is produced once).
    """
    if len(members) < 0xFFFF:
        try:
            archive = _archive(members, deflate)
        except _NeedsZip64:
            pass
        else:
            # One write of the whole archive: the members of an item are small and
            # already in memory, and a single write is cheaper than three per member.
            fh.write(archive)
            return
    _write_with_zipfile(fh, members, deflate)


class _NeedsZip64(Exception):
    """An archive with a size or an offset of :data:`_LIMIT` or more (``0xFFFFFFFF`` says
    "see the ZIP64 record"): only ZIP64 records it."""


def _archive(members: Sequence[tuple[str, bytes]], deflate: Callable[[str], bool]) -> bytes:
    """The bytes of a zip of ``members`` without ZIP64.

    Raises
    ------
    _NeedsZip64
        If a member's size or offset, or the central directory's offset, needs ZIP64.
    """
    local: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for name, data in members:
        if offset >= _LIMIT or len(data) >= _LIMIT:
            raise _NeedsZip64  # (a deflated payload is never larger than its data)
        if deflate(name):
            # Metadata documents repeat from item to item (the same array documents under
            # the same names): their records are made once (see _records).
            key = (name, data)
            records = _REMEMBERED.get(key)
            if records is None:
                records = _records(name, data, True)
                if len(data) <= _REMEMBERED_BYTES:
                    if len(_REMEMBERED) >= _REMEMBERED_KEPT:
                        _REMEMBERED.clear()
                    _REMEMBERED[key] = records
        else:
            records = _records(name, data, False)
        header, payload, head, tail = records
        local += (header, payload)
        central += (head, _OFFSET.pack(offset), tail)
        offset += len(header) + len(payload)
    directory = b"".join(central)
    if offset >= _LIMIT:
        raise _NeedsZip64
    local += (
        directory,
        struct.pack(
            "<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), offset, 0
        ),
    )
    return b"".join(local)


def _write_with_zipfile(
    fh: IO[bytes], members: Sequence[tuple[str, bytes]], deflate: Callable[[str], bool]
) -> None:
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = _EXTERNAL_ATTR
            info.create_system = 3
            if deflate(name):
                info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=_LEVEL)


def _field(value: int) -> int:
    """A 4-byte size or offset field: ``value``, or :data:`_SEE_ZIP64` from
    :data:`_LIMIT` on (the value is then in a ZIP64 record)."""
    return value if value < _LIMIT else _SEE_ZIP64


class ZipStreamWriter:
    """Append members to a zip file one at a time, then write the central directory.

    Used for merged datasets, whose shards are produced while items stream in. Members are
    written as soon as they are added, so memory holds one member at a time; ZIP64 records
    are written where sizes, offsets or the member count need them.

    Parameters
    ----------
    fh
        A binary file opened for writing, positioned at 0.
    """

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._central: list[bytes] = []
        self._offset = 0
        self._count = 0
        self._names: set[str] = set()

    def add(self, name: str, data: bytes, *, deflate: bool = False) -> None:
        """Write one member; ``deflate`` compresses it when that makes it smaller."""
        if name in self._names:
            raise ValueError(f"duplicate zip member {name!r}")
        self._names.add(name)
        raw_name, flags, method, payload = _encoded(name, data, deflate)
        crc = zlib.crc32(data)
        size = len(data)
        big = size >= _LIMIT or len(payload) >= _LIMIT
        version = 45 if big or self._offset >= _LIMIT else _VERSION
        local_extra = struct.pack("<HHQQ", 1, 16, size, len(payload)) if big else b""
        sizes = (_SEE_ZIP64, _SEE_ZIP64) if big else (len(payload), size)
        self._fh.write(
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                version,
                flags,
                method,
                _DOS_TIME,
                _DOS_DATE,
                crc,
                *sizes,
                len(raw_name),
                len(local_extra),
            )
        )
        self._fh.write(raw_name)
        self._fh.write(local_extra)
        self._fh.write(payload)
        extra_values = []
        if size >= _LIMIT:
            extra_values.append(size)
        if len(payload) >= _LIMIT:
            extra_values.append(len(payload))
        if self._offset >= _LIMIT:
            extra_values.append(self._offset)
        central_extra = (
            struct.pack(f"<HH{len(extra_values)}Q", 1, 8 * len(extra_values), *extra_values)
            if extra_values
            else b""
        )
        self._central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                (3 << 8) | version,
                version,
                flags,
                method,
                _DOS_TIME,
                _DOS_DATE,
                crc,
                _field(len(payload)),
                _field(size),
                len(raw_name),
                len(central_extra),
                0,
                0,
                0,
                _EXTERNAL_ATTR,
                _field(self._offset),
            )
            + raw_name
            + central_extra
        )
        self._offset += 30 + len(raw_name) + len(local_extra) + len(payload)
        self._count += 1

    def close(self) -> None:
        """Write the central directory and end records (ZIP64 when needed)."""
        directory = b"".join(self._central)
        cd_offset, cd_size, n = self._offset, len(directory), self._count
        self._fh.write(directory)
        if n >= 0xFFFF or cd_size >= _LIMIT or cd_offset >= _LIMIT:
            zip64_offset = cd_offset + cd_size
            self._fh.write(
                struct.pack(
                    "<IQHHIIQQQQ", 0x06064B50, 44, (3 << 8) | 45, 45, 0, 0, n, n, cd_size, cd_offset
                )
            )
            self._fh.write(struct.pack("<IIQI", 0x07064B50, 0, zip64_offset, 1))
            self._fh.write(
                struct.pack(
                    "<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, _field(cd_size), _SEE_ZIP64, 0
                )
            )
        else:
            self._fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_offset, 0))
