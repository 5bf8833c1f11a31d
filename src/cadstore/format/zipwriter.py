"""Write a zip of stored (and, for metadata, deflated) members in one pass.

Item files hold a few dozen members that are already zstd-compressed, so the zip only needs
the STORED method. ``zipfile.ZipFile.writestr`` costs tens of microseconds per member, a
large share of an item's write budget; this writer packs the same headers with ``struct``.
The output is a plain PKZIP file that ``zipfile``, zarr-python's ``ZipStore`` and ``unzip``
read. Archives that would need ZIP64 (more than 65,535 members, or 4 GiB) go through
``zipfile``, which handles ZIP64.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from typing import IO

__all__ = ["write_stored_zip"]

# DOS date for 1980-01-01 00:00: fixed so that the same item always gives the same bytes.
_DOS_DATE = (0 << 9) | (1 << 5) | 1
_DOS_TIME = 0
_VERSION = 20
_MADE_BY = (3 << 8) | _VERSION  # Unix, so external attributes carry permissions
_EXTERNAL_ATTR = 0o100644 << 16
_UTF8_FLAG = 0x800
_LIMIT = 0xFFFFFFFF


def _never(name: str) -> bool:
    return False


def write_stored_zip(
    fh: IO[bytes], members: Sequence[tuple[str, bytes]], *, deflate: Callable[[str], bool] = _never
) -> None:
    """Write ``members`` (name, bytes) to ``fh`` as a zip archive.

    Members are stored as they are, except those for which ``deflate(name)`` is true, which
    are deflated when that makes them smaller (metadata documents, not zstd chunks). Names
    must be unique; the caller guarantees it (each key is produced once).
    """
    total = sum(len(d) + 30 + 2 * len(n) + 46 for n, d in members)
    if len(members) >= 0xFFFF or total >= _LIMIT:
        _write_with_zipfile(fh, members, deflate)
        return
    central: list[bytes] = []
    offset = 0
    pack_local = struct.Struct("<IHHHHHIIIHH").pack
    pack_central = struct.Struct("<IHHHHHHIIIHHHHHII").pack
    for name, data in members:
        raw_name = name.encode("utf-8")
        flags = 0 if raw_name.isascii() else _UTF8_FLAG
        crc = zlib.crc32(data)
        size = len(data)
        method, payload = 0, data
        if deflate(name):
            packer = zlib.compressobj(6, zlib.DEFLATED, -15)
            packed = packer.compress(data) + packer.flush()
            if len(packed) < size:
                method, payload = 8, packed
        header = (_DOS_TIME, _DOS_DATE, crc, len(payload), size, len(raw_name))
        fh.write(pack_local(0x04034B50, _VERSION, flags, method, *header, 0))
        fh.write(raw_name)
        fh.write(payload)
        central.append(
            pack_central(
                0x02014B50,
                _MADE_BY,
                _VERSION,
                flags,
                method,
                *header,
                0,
                0,
                0,
                0,
                _EXTERNAL_ATTR,
                offset,
            )
        )
        central.append(raw_name)
        offset += 30 + len(raw_name) + len(payload)
    directory = b"".join(central)
    fh.write(directory)
    fh.write(
        struct.pack(
            "<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), offset, 0
        )
    )


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
            zf.writestr(info, data)
