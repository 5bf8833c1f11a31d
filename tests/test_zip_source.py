"""The zip reader: fast path, zipfile fallback, deflated members, hostile archives."""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from cadstore.errors import CorruptStoreError, LimitExceededError, StorageUnavailableError
from cadstore.format.limits import Limits
from cadstore.io.filesystems import LocalFileSystem
from cadstore.io.sources import ZipSource, check_member_name
from cadstore.io.zipwriter import write_stored_zip
from conftest import OS_ERROR_KINDS


def _every_read_refuses(source: Any, key: str, pattern: str) -> None:
    """Each way of reading ``key`` (whole, a range, ranges, its size) raises the
    CorruptStoreError ``pattern`` matches."""
    for read in (
        lambda s: s.get(key),
        lambda s: s.get_range(key, 0, 2),
        lambda s: s.get_ranges([(key, 0, 2)]),
        lambda s: s.size_of(key),
    ):
        with pytest.raises(CorruptStoreError, match=pattern):
            read(source)


def test_own_writer_roundtrip_with_deflate_and_unicode(tmp_path: Path) -> None:
    members = [("zarr.json", b'{"a": 1}' * 50), ("größe/c/0", b"\x00\x01" * 100), ("x", b"")]
    path = tmp_path / "a.zip"
    with open(path, "wb") as fh:
        write_stored_zip(fh, members, deflate=lambda name: name.endswith(".json"))
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert zf.getinfo("zarr.json").compress_type == zipfile.ZIP_DEFLATED
        assert [zf.read(n) for n, _ in members] == [d for _, d in members]
    source = ZipSource(str(path))
    try:
        assert sorted(source) == sorted(n for n, _ in members)
        assert [source.get(n) for n, _ in members] == [d for _, d in members]
        assert source.get("missing") is None
    finally:
        source.close()


def test_repeated_documents_deflate_once_to_the_same_bytes(tmp_path: Path) -> None:
    from cadstore.io import zipwriter

    doc = b'{"zarr_format":3,"node_type":"array","shape":[123],"data_type":"int32"}' * 4
    big = bytes(range(256)) * 40  # over the remembered size: deflated each time
    first, second = tmp_path / "1.zip", tmp_path / "2.zip"
    zipwriter._deflate_small.cache_clear()
    zipwriter._REMEMBERED.clear()
    for path in (first, second):
        with open(path, "wb") as fh:
            write_stored_zip(
                fh, [("a/zarr.json", doc), ("b.json", big)], deflate=lambda n: n.endswith(".json")
            )
    assert zipwriter._deflate_small.cache_info().misses == 1  # doc, deflated once
    assert ("a/zarr.json", doc) in zipwriter._REMEMBERED
    assert ("b.json", big) not in zipwriter._REMEMBERED
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(second) as zf:
        assert zf.getinfo("a/zarr.json").compress_type == zipfile.ZIP_DEFLATED
        assert zf.read("a/zarr.json") == doc and zf.read("b.json") == big


def test_the_zip64_writer_deflates_metadata_at_the_fast_writers_level(tmp_path: Path) -> None:
    from cadstore.io import zipwriter

    doc = b"".join(b'{"shape":[%d],"dimension_names":["face_%d"]},' % (i, i) for i in range(300))
    path = tmp_path / "many.zip"
    filler = [(f"c/{i}", b"") for i in range(0xFFFF)]  # past the fast writer's member limit
    with open(path, "wb") as fh:
        write_stored_zip(fh, [("zarr.json", doc), *filler], deflate=lambda n: n.endswith(".json"))
    expected = len(zlib.compress(doc, zipwriter._LEVEL, -15))
    assert expected != len(zlib.compress(doc, 6, -15))  # zipfile's default level would show
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("zarr.json").compress_size == expected
        assert zf.read("zarr.json") == doc


def test_offsets_beyond_the_fast_writers_fields_go_through_zip64(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An archive whose offsets reach the fast writer's limit (0xFFFFFFFF, which the zip
    format reserves as "see ZIP64"; here lowered so that the test needs no 4 GiB) is
    written by zipfile with ZIP64, whole and readable, and not left half written."""
    from cadstore.io import zipwriter

    monkeypatch.setattr(zipwriter, "_LIMIT", 300)
    members = [(f"a/c/{i}", bytes([i]) * 100) for i in range(5)] + [("zarr.json", b"{}" * 50)]
    path = tmp_path / "big.zip"
    with open(path, "wb") as fh:
        write_stored_zip(fh, members, deflate=lambda n: n.endswith(".json"))
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert [zf.read(n) for n, _ in members] == [d for _, d in members]
        assert zf.getinfo("zarr.json").compress_type == zipfile.ZIP_DEFLATED


def test_zip64_archive_falls_back_to_zipfile(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:  # more than 65,535 entries needs ZIP64
        for i in range(66_000):
            zf.writestr(f"m/{i}", str(i))
        zf.writestr("comment-after", b"x", compress_type=zipfile.ZIP_BZIP2)
    source = ZipSource(str(path))
    try:
        assert source.get("m/65999") == b"65999"
        assert source.get("comment-after") == b"x"
    finally:
        source.close()


def test_archive_comment_and_member_limit(tmp_path: Path) -> None:
    path = tmp_path / "c.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a", b"1")
        zf.writestr("b", b"2")
        zf.comment = b"PK\x05\x06 a comment that looks like an end record"
    source = ZipSource(str(path))
    assert source.get("b") == b"2"
    source.close()
    with pytest.raises(LimitExceededError, match="max_members"):
        ZipSource(str(path), limits=Limits(max_members=1))


def test_deflate_bomb_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zarr.json", b"\0" * (50 * 1024 * 1024))
    source = ZipSource(str(path), limits=Limits(max_chunk_bytes=1024 * 1024))
    try:
        with pytest.raises(LimitExceededError, match=r"zarr\.json"):
            source.get("zarr.json")
    finally:
        source.close()


def test_lying_size_header(tmp_path: Path) -> None:
    path = tmp_path / "lie.zip"
    with open(path, "wb") as fh:
        write_stored_zip(fh, [("a", b"hello world")])
    raw = bytearray(path.read_bytes())
    # Central directory entry: uncompressed size field at offset 24 from its signature.
    at = raw.rfind(b"PK\x01\x02")
    raw[at + 20 : at + 28] = (5).to_bytes(4, "little") * 2
    path.write_bytes(bytes(raw))
    source = ZipSource(str(path))
    try:
        with pytest.raises(CorruptStoreError, match="CRC"):
            source.get("a")
    finally:
        source.close()


@pytest.mark.parametrize("short", [1, 5])
def test_central_directory_shorter_than_its_entries_is_corrupt(tmp_path: Path, short: int) -> None:
    """Found by a byte-flipping campaign: an end record declaring a central directory one
    byte short cut the last entry's name (``metadata.json`` became ``metadata.jso``), and
    the item read as one without metadata. An entry running past the directory's end is
    a corrupt archive, as ``zipfile`` also decides."""
    members = [("a/zarr.json", b"{}"), ("metadata.json", b'{"label": 3}')]
    path = tmp_path / "short.zip"
    with open(path, "wb") as fh:
        write_stored_zip(fh, members)
    raw = bytearray(path.read_bytes())
    end = raw.rfind(b"PK\x05\x06")
    size = int.from_bytes(raw[end + 12 : end + 16], "little")
    raw[end + 12 : end + 16] = (size - short).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match=r"short\.zip.*central directory"):
        ZipSource(str(path))


@pytest.mark.parametrize("renamed", ["../a/", "/a/c/", "a/c0/"])
def test_a_directory_entry_is_checked_like_any_member(tmp_path: Path, renamed: str) -> None:
    """Found by a byte-flipping campaign: a chunk renamed (in its central-directory entry
    and its local header alike) to a name ending with ``/`` was skipped as a directory,
    unsafe name and data included, and the item read its array as fill values. A
    directory entry's name is checked too, and one holding data is corrupt."""
    members = [("a/zarr.json", b"{}"), ("a/c/0", b"\x01" * 6)]
    path = tmp_path / "renamed.zip"
    with open(path, "wb") as fh:
        write_stored_zip(fh, members)
    raw = path.read_bytes()
    assert raw.count(b"a/c/0") == 2  # the same length: the archive stays consistent
    path.write_bytes(raw.replace(b"a/c/0", renamed.encode()))
    with pytest.raises(CorruptStoreError, match=r"renamed\.zip.*(unsafe|directory)"):
        ZipSource(str(path))


@pytest.mark.parametrize("size", [6, 300 * 1024], ids=["read-whole", "larger"])
def test_an_archive_whose_directory_renames_a_member_is_corrupt(tmp_path: Path, size: int) -> None:
    """Found by a byte-flipping campaign: one flipped bit in a central-directory name
    (``face_areas/c/0`` listed as ``fece_areas/c/0``) left the member unfound under its
    own name, and the item read that array as fill values. Reading it under its own name
    is an error naming both: in a file small enough to be read whole when opened, and in
    a larger one (over 256 KiB), whose local headers are read only as members are."""
    members = [("a/zarr.json", b"{}"), ("a/c/1", b"\x02" * 6), ("a/c/4", b"\x03" * 6)]
    members.append(("a/c/0", b"\x01" * size))
    path = tmp_path / "flipped.zip"
    with open(path, "wb") as fh:
        write_stored_zip(fh, members)
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")  # the last entry: a/c/0
    assert raw[central + 46 : central + 51] == b"a/c/0"
    raw[central + 48] ^= 0x04  # "a/c/0" -> "a/g/0"
    path.write_bytes(bytes(raw))
    source = ZipSource(str(path))
    try:
        assert source.get("a/zarr.json") == b"{}"  # the others still read
        assert source.get("a/c/1") == b"\x02" * 6
        assert source.get("a/c/5") is None and "a/c/5" not in source  # not stored: absent
        assert "a/c/0" in source
        _every_read_refuses(source, "a/c/0", r"flipped\.zip.*'a/c/0'.*as 'a/g/0'")
        assert source.get("a/c/4") == b"\x03" * 6
    finally:
        source.close()
    assert path.read_bytes() == bytes(raw)


def test_absent_keys_read_a_members_local_header_once(tmp_path: Path) -> None:
    """Found by review of the check above: in a file over 256 KiB, each key asked for
    that is not stored read the local header of every member one bit off it, again for
    every such key (``a/c/1``, ``a/c/2``, ``a/c/4`` and ``a/c/8`` each read ``a/c/0``'s:
    one ranged GET each on an object store). A member's header is read once."""
    path = tmp_path / "one.zip"
    with open(path, "wb") as fh:
        write_stored_zip(fh, [("a/zarr.json", b"{}"), ("a/c/0", b"\0" * 300_000)])
    source = ZipSource(str(path))
    reads: list[int] = []
    read_at = source._read_at

    def counted(offset: int, n: int) -> bytes:
        reads.append(offset)
        return read_at(offset, n)

    source._read_at = counted  # type: ignore[method-assign]
    try:
        for key in ["a/c/1", "a/c/2", "a/c/4", "a/c/8", "a/c/1", "a/c/2"]:
            assert source.get(key) is None and key not in source
        assert len(reads) == 1
        assert source.get("a/c/0") == b"\0" * 300_000
    finally:
        source.close()


def test_a_larger_item_whose_directory_renames_a_chunk_is_corrupt(tmp_path: Path) -> None:
    """The campaign's finding on an item over 256 KiB (not read whole when opened): one
    flipped bit listing ``faces/face_areas/c/0`` as ``faces/fece_areas/c/0`` in the
    central directory only, and ``face_areas`` read as zeros (fill values). Reading it is
    a ``CorruptStoreError`` naming the file and the chunk; the file is left as it was."""
    import numpy as np

    from cadstore import OptStorage
    from conftest import write_arrays

    rng = np.random.default_rng(0)
    arrays = {"faces/face_areas": rng.random(50_000), "faces/face_types": np.arange(50_000) % 7}
    path = Path(write_arrays(tmp_path / "big.zarr", arrays))
    raw = bytearray(path.read_bytes())
    assert len(raw) > 256 * 1024
    name = b"faces/face_areas/c/0"
    central = raw.index(name, raw.rfind(b"PK\x05\x06") - 4096)  # its central entry
    assert raw.count(name) == 2  # the local header keeps the name
    raw[central + 7] ^= 0x04  # "face_areas" -> "fece_areas"
    path.write_bytes(bytes(raw))
    storage = OptStorage(str(tmp_path / "big.zarr"), mode="r")
    try:
        np.testing.assert_array_equal(
            storage.load_data("faces/face_types"), arrays["faces/face_types"]
        )
        with pytest.raises(CorruptStoreError, match=r"big\.zarr\.data.*'faces/face_areas/c/0'"):
            storage.load_data("faces/face_areas")
    finally:
        storage.close()
    assert path.read_bytes() == bytes(raw)


def test_an_empty_directory_entry_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "dirs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/", b"")
        zf.writestr("a/zarr.json", b"{}")
    source = ZipSource(str(path))
    try:
        assert list(source) == ["a/zarr.json"]
    finally:
        source.close()


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a/b", True),
        ("a/.zarray", True),
        ("a..b", True),
        ("/abs", False),
        ("C:x", False),
        ("a/../b", False),
        ("..", False),
        ("a//b", False),
        ("a/./b", False),
        ("b\\s", False),
        ("c\x01", False),
        ("", False),
    ],
)
def test_member_names(name: str, ok: bool) -> None:
    assert (check_member_name(name) is None) is ok


def test_stream_writer_zip64_member_count(tmp_path: Path) -> None:
    from cadstore.io.zipwriter import ZipStreamWriter

    path = tmp_path / "big.zip"
    with open(path, "wb") as fh:
        writer = ZipStreamWriter(fh)
        for i in range(70_000):
            writer.add(f"m/{i}", str(i).encode())
        writer.add("doc.json", b'{"a": 1}' * 100, deflate=True)
        writer.close()
    with zipfile.ZipFile(path) as zf:
        assert len(zf.infolist()) == 70_001
        assert zf.read("m/69999") == b"69999"
        assert zf.read("doc.json") == b'{"a": 1}' * 100
    source = ZipSource(str(path))
    try:
        assert source.get("m/12345") == b"12345"
    finally:
        source.close()


class _DroppingFile(io.BytesIO):
    """A remote-like file (no fileno) whose reads fail once ``fail`` is set."""

    fail = False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("not a real file")

    def read(self, n: int | None = -1) -> bytes:
        if _DroppingFile.fail:
            raise ConnectionResetError("connection reset by peer")
        return super().read(n)


class _RemoteLike(LocalFileSystem):
    """Serves files as remote-like file objects and translates transport errors."""

    def open_read(self, path: str) -> IO[bytes]:
        with open(path, "rb") as fh:
            return _DroppingFile(fh.read())

    def translate(self, path: str, exc: BaseException) -> BaseException:
        if isinstance(exc, ConnectionError):
            return StorageUnavailableError(path, f"cannot reach the store ({exc})")
        return exc


@pytest.mark.parametrize("when", ["open", "member"])
def test_a_store_that_goes_away_is_unavailable_not_corrupt(tmp_path: Path, when: str) -> None:
    """A read failing in transit must not be reported as a damaged file."""
    path = tmp_path / "a.zip"
    with open(path, "wb") as fh:
        # Larger than the files read whole at open, so members are read when asked for.
        write_stored_zip(fh, [("zarr.json", b"{}"), ("x/c/0", b"0123456789" * 30_000)])
    _DroppingFile.fail = when == "open"
    try:
        if when == "open":
            with pytest.raises(StorageUnavailableError, match="cannot reach"):
                ZipSource(str(path), _RemoteLike())
        else:
            source = ZipSource(str(path), _RemoteLike())
            _DroppingFile.fail = True
            with pytest.raises(StorageUnavailableError, match="cannot reach"):
                source.get("x/c/0")
    finally:
        _DroppingFile.fail = False


def test_a_small_remote_zip_is_read_once_when_opened(tmp_path: Path) -> None:
    """An item file of a few dozen KiB costs one read, not one per member."""
    path = tmp_path / "a.zip"
    members = [("zarr.json", b"{}"), ("x/c/0", b"0123456789" * 100), ("y/c/0", b"abc" * 99)]
    with open(path, "wb") as fh:
        write_stored_zip(fh, members)
    source = ZipSource(str(path), _RemoteLike())
    try:
        _DroppingFile.fail = True  # any read of the file from now on would fail
        assert [source.get(n) for n, _ in members] == [d for _, d in members]
        assert source.get_range("x/c/0", 10, 20) == members[1][1][10:30]
        assert not source.batches_reads
    finally:
        _DroppingFile.fail = False
        source.close()


@pytest.mark.parametrize("chunk_bytes", [100, 64 * 1024, 400 * 1024])
def test_local_header_naming_another_member_is_corrupt(tmp_path: Path, chunk_bytes: int) -> None:
    """A flipped byte in a local header's name: zipfile refuses it, and so do we.

    The sizes take each read path: a small file read whole at open, a member read with
    its header in one read, and a member whose header is read on its own.
    """
    members = [("a/zarr.json", b"{}" * 40), ("a/c/0", bytes(range(256)) * (chunk_bytes // 256))]
    path = tmp_path / "a.zip"
    with open(path, "wb") as fh:
        write_stored_zip(fh, members)
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo("a/c/0").header_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 30 + 2] ^= 0x01  # "a/c/0" -> "a/b/0"
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as zf, pytest.raises(zipfile.BadZipFile):
        zf.read("a/c/0")
    for read in (
        lambda s: s.get("a/c/0"),
        lambda s: s.get_range("a/c/0", 0, 10),
        lambda s: s.get_ranges([("a/c/0", 0, 10)]),
    ):
        source = ZipSource(str(path))
        try:
            assert source.get("a/zarr.json") == b"{}" * 40
            with pytest.raises(CorruptStoreError, match=r"'a/c/0'.*does not repeat its name"):
                read(source)
        finally:
            source.close()


def test_prefix_source_serves_ranges_on_any_file_system(tmp_path: Path) -> None:
    """PrefixSource (object-store prefixes) relies only on the FileSystem base, so it reads
    the same ranges over a local folder; a key deleted after listing reads as absent."""
    from cadstore.io.sources import DirectorySource, PrefixSource

    root = tmp_path / "store.zarr"
    (root / "a" / "c").mkdir(parents=True)
    (root / "zarr.json").write_bytes(b"{}")
    (root / "a" / "c" / "0").write_bytes(bytes(range(100)))
    (root / "a" / "c" / "1").write_bytes(b"gone soon")
    prefix = PrefixSource(LocalFileSystem(), str(root))
    (root / "a" / "c" / "1").unlink()
    requests = [("a/c/0", 10, 5), ("a/c/0", 95, 50), ("a/c/0", 3, 0), ("a/c/1", 0, 4), ("b", 0, 1)]
    assert prefix.get_ranges(requests) == [
        bytes(range(10, 15)),
        bytes(range(95, 100)),
        b"",
        None,
        None,
    ]
    assert prefix.get_ranges(requests[:3]) == DirectorySource(str(root)).get_ranges(requests[:3])


@pytest.mark.parametrize(
    "listed", ["a/g/1", "b/x/7", "a/c/\xe9"], ids=["two-bytes", "three-bytes", "non-ascii"]
)
def test_a_directory_name_damaged_in_more_than_one_bit_is_corrupt(
    tmp_path: Path, listed: str
) -> None:
    """Found by review of the one-bit search: in a file over 256 KiB (whose local headers
    are read only as members are), a member whose central-directory name was changed in
    more than one bit (``a/c/0`` listed as ``a/g/1``) was absent under its own name, and
    an item read that array as fill values. Any damage that keeps the name's length (a
    name's length is a field of its own) is found: the key is compared with the local
    headers of the listed members of its length."""
    members = [("a/zarr.json", b"{}"), ("a/c/1", b"\x02" * 6), ("a/c/0", b"\x01" * 300_000)]
    path = tmp_path / "damaged.zip"
    with open(path, "wb") as fh:
        write_stored_zip(fh, members)
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")  # the last entry: a/c/0
    stored = listed.encode("cp437")  # the member has no UTF-8 flag: its name reads as cp437
    assert raw[central + 46 : central + 51] == b"a/c/0" and len(stored) == 5
    raw[central + 46 : central + 51] = stored
    path.write_bytes(bytes(raw))
    source = ZipSource(str(path))
    try:
        assert source.get("a/c/1") == b"\x02" * 6
        assert source.get("a/c/5") is None and "a/c/5" not in source
        assert "a/c/0" in source
        _every_read_refuses(source, "a/c/0", rf"damaged\.zip.*'a/c/0'.*as '{listed}'")
    finally:
        source.close()
    assert path.read_bytes() == bytes(raw)


def test_absent_keys_keep_no_memory_of_each_key(tmp_path: Path) -> None:
    """Found by review: in a file over 256 KiB every distinct key asked for that was not
    stored was remembered (``ZipSource._unlisted``), so a long-running reader asked for
    many missing keys grew without bound. What is kept now is bounded by the members."""
    path = tmp_path / "one.zip"
    with open(path, "wb") as fh:
        write_stored_zip(fh, [("a/zarr.json", b"{}"), ("a/c/0", b"\0" * 300_000)])
    source = ZipSource(str(path))
    try:
        sizes = []
        for batch in range(3):
            for i in range(2000):
                key = f"a/c/{batch * 2000 + i + 1}"
                assert source.get(key) is None and key not in source
            sizes.append(sum(len(v) for v in vars(source).values() if isinstance(v, set | dict)))
        assert sizes[0] == sizes[1] == sizes[2]
        assert source.get("a/c/0") == b"\0" * 300_000
    finally:
        source.close()


def test_membership_says_what_is_stored_and_never_reports_damage(tmp_path: Path) -> None:
    """``key in source`` answers whether the store holds something at ``key``, as a
    mapping's ``in`` does; it is ``get`` that reports damage. Found by review: a
    directory store's ``in`` read the whole file and raised the LimitExceededError of a
    document over ``max_metadata_bytes``. A member whose name the central directory
    damaged is held (reading it is the error), in every source."""
    from cadstore.io.sources import DirectorySource

    root = tmp_path / "store.zarr"
    root.mkdir()
    (root / "zarr.json").write_bytes(b" " * 2000)
    small = Limits(max_metadata_bytes=1000)
    directory = DirectorySource(str(root), limits=small)
    assert "zarr.json" in directory and "missing.json" not in directory
    with pytest.raises(LimitExceededError, match=r"store\.zarr.*'zarr\.json'"):
        directory.get("zarr.json")
    path = tmp_path / "crc.zip"
    with open(path, "wb") as fh:
        write_stored_zip(fh, [("zarr.json", b"{}"), ("a/c/0", b"\x01" * 300_000)])
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"\x01" * 8)] ^= 0xFF  # a byte of a/c/0's data: its CRC no longer holds
    path.write_bytes(bytes(raw))
    source = ZipSource(str(path))
    try:
        assert "a/c/0" in source and "a/c/1" not in source
        with pytest.raises(CorruptStoreError, match=r"crc\.zip.*'a/c/0'.*CRC"):
            source.get("a/c/0")
    finally:
        source.close()


@pytest.mark.parametrize("rows", [100, 50_000], ids=["read-whole", "larger"])
@pytest.mark.parametrize(
    ("old", "new", "array"),
    [
        ("faces/face_areas/c/0", "faces/fxce_areas/c/0", "faces/face_areas"),
        ("x/c/0", "x/c/7", "x"),
        ("x/c/0", "x/d/0", "x"),
        ("x/c/0", "x/c/\xe9", "x"),
        ("x/c/0", "\x80/c/0", "x"),
    ],
    ids=["array-name", "chunk-off-the-grid", "chunk-prefix", "high-byte", "high-array-byte"],
)
def test_a_chunk_renamed_in_both_headers_is_corrupt(
    tmp_path: Path, rows: int, old: str, new: str, array: str
) -> None:
    """Found by review: a chunk's name damaged alike in the central directory and its
    local header leaves a consistent zip, and the item read that array as fill values
    (zeros). A chunk its array's grid holds that the store lacks, beside a member of a
    name of the same length that belongs to no array, is a damaged name: reading the
    array is a CorruptStoreError naming the file, the chunk and the member; the other
    arrays read; the file is left as it was.

    ``new`` is the damaged name's bytes, one per character. A byte above 127 in a name
    without the UTF-8 flag decodes (cp437) to a character of two or three bytes in UTF-8:
    the name compared as text was of another length and the array read as zeros (found
    by review); the stored bytes keep their length."""
    import numpy as np

    from cadstore import OptStorage
    from conftest import write_arrays

    rng = np.random.default_rng(0)
    arrays = {"faces/face_areas": rng.random(rows), "x": np.arange(rows), "y": np.ones(3)}
    path = Path(write_arrays(tmp_path / "item.zarr", arrays))
    raw = path.read_bytes()
    stored = new.encode("latin-1")  # the damaged bytes, in both headers
    assert raw.count(old.encode()) == 2 and len(stored) == len(old)
    raw = raw.replace(old.encode(), stored)
    path.write_bytes(raw)
    assert (len(raw) > 256 * 1024) == (rows > 100)
    listed = re.escape(stored.decode("cp437"))  # as the reader names it
    storage = OptStorage(str(tmp_path / "item.zarr"), mode="r")
    try:
        np.testing.assert_array_equal(storage.load_data("y"), arrays["y"])
        with pytest.raises(
            CorruptStoreError, match=rf"item\.zarr\.data.*'{old}' is missing.*'{listed}'"
        ):
            storage.load_data(array)
    finally:
        storage.close()
    assert path.read_bytes() == raw


def test_another_writers_absent_chunks_are_fill_values(tmp_path: Path) -> None:
    """Zarr lets a writer leave out a chunk of fill values (zarr-python does by default):
    such an item reads that chunk as fill values, even beside a member no array holds
    when no such member has a name of the absent chunk's length."""
    import numpy as np
    import zarr

    from cadstore import OptStorage

    path = tmp_path / "other.zarr.data"
    with zarr.storage.ZipStore(path, mode="w") as store:
        group = zarr.open_group(store, mode="w")
        values = group.create_array("values", shape=(20,), chunks=(10,), dtype="int64")
        values[10:] = np.arange(1, 11)  # chunk c/0 holds only fill values: not written
    with zipfile.ZipFile(path, "a") as zf:
        assert "values/c/0" not in zf.namelist() and "values/c/1" in zf.namelist()
        zf.writestr("notes.txt", b"written by hand")
    storage = OptStorage(str(tmp_path / "other.zarr"), mode="r")
    try:
        expected = np.concatenate([np.zeros(10, dtype=np.int64), np.arange(1, 11)])
        np.testing.assert_array_equal(storage.load_data("values"), expected)
    finally:
        storage.close()


@pytest.mark.parametrize(
    "junk",
    ["abc/.DS_Store", "__MACOSX/._ab", ".DS_Store"],
    ids=["finder-in-a-folder", "appledouble", "finder-at-the-root"],
)
def test_another_writers_item_with_files_of_the_operating_system_reads(
    tmp_path: Path, junk: str
) -> None:
    """A member the operating system leaves in a folder before it is zipped (Finder's
    .DS_Store, AppleDouble ._ files) belongs to no node. When it had the length of a key
    the item lacks (its metadata.json, 13 bytes; a chunk of fill values zarr-python left
    out, value/c/0: 9), a healthy item of another writer was refused as a damaged name; it is a
    near miss of the key that counts, and these are none."""
    import numpy as np
    import zarr

    from cadstore import OptStorage
    from cadstore.merging import merge_items

    path = tmp_path / "other.zarr.data"
    with zarr.storage.ZipStore(path, mode="w") as store:
        group = zarr.open_group(store, mode="w")
        values = group.create_array("value", shape=(20,), chunks=(10,), dtype="int64")
        values[10:] = np.arange(1, 11)  # chunk c/0 holds only fill values: not written
    with zipfile.ZipFile(path, "a") as zf:
        assert "metadata.json" not in zf.namelist() and "value/c/0" not in zf.namelist()
        zf.writestr(junk, b"\0\0\0\1Bud1" + b"\0" * 20)
    assert len(junk) in (len("metadata.json"), len("value/c/0"))
    expected = np.concatenate([np.zeros(10, dtype=np.int64), np.arange(1, 11)])
    storage = OptStorage(str(tmp_path / "other.zarr"), mode="r")
    try:
        assert storage.load_metadata() == {}
        np.testing.assert_array_equal(storage.load_data("value"), expected)
    finally:
        storage.close()
    result = merge_items([str(path)], str(tmp_path / "out.dataset"))
    assert result.items == ["other"] and not result.errors


def test_another_writers_item_with_non_ascii_names_reads(tmp_path: Path) -> None:
    """Names are compared as the zip stores them (UTF-8 here, zipfile setting the flag):
    zarr-python's item of arrays named outside ASCII, one chunk of fill values left out,
    beside a Finder file, reads and merges, the chunk as fill values."""
    import numpy as np
    import zarr

    from cadstore import OptStorage
    from cadstore.merging import merge_items

    path = tmp_path / "other.zarr.data"
    with zarr.storage.ZipStore(path, mode="w") as store:
        group = zarr.open_group(store, mode="w")
        values = group.create_array("värde", shape=(20,), chunks=(10,), dtype="int64")
        values[10:] = np.arange(1, 11)  # chunk c/0 holds only fill values: not written
        group.create_array("größe", shape=(3,), dtype="float64")[:] = [1.0, 2.0, 3.0]
    with zipfile.ZipFile(path, "a") as zf:
        assert "värde/c/0" not in zf.namelist() and "größe/c/0" in zf.namelist()
        assert all(i.flag_bits & 0x800 for i in zf.infolist() if not i.filename.isascii())
        zf.writestr("värde/.DS_Store", b"\0\0\0\1Bud1" + b"\0" * 20)
    expected = np.concatenate([np.zeros(10, dtype=np.int64), np.arange(1, 11)])
    storage = OptStorage(str(tmp_path / "other.zarr"), mode="r")
    try:
        np.testing.assert_array_equal(storage.load_data("värde"), expected)
        np.testing.assert_array_equal(storage.load_data("größe"), [1.0, 2.0, 3.0])
    finally:
        storage.close()
    result = merge_items([str(path)], str(tmp_path / "out.dataset"))
    assert result.items == ["other"] and not result.errors


def _zip64_archive(
    members: list[tuple[str, bytes]],
    *,
    sizes: dict[str, int] | None = None,
    offsets: dict[str, int] | None = None,
    directory_shift: int = 0,
) -> bytes:
    """A zip of stored ``members`` written with ZIP64 records throughout (every size and
    offset in the central directory is ``0xFFFFFFFF`` and given in the ZIP64 extra field;
    a ZIP64 end record), as a writer of archives over 4 GiB or 65,535 members makes them,
    in a few hundred bytes; ``sizes`` and ``offsets`` replace a member's declared size or
    local header offset in its central entry, ``directory_shift`` moves the ZIP64 end
    record's central-directory offset."""
    import struct

    sizes, offsets = sizes or {}, offsets or {}
    out = bytearray()
    central = []
    for name, data in members:
        raw, crc, at = name.encode(), zlib.crc32(data), len(out)
        local_extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 33, crc, *(2 * [0xFFFFFFFF]), len(raw), 20
        )
        out += raw + local_extra + data
        size = sizes.get(name, len(data))
        extra = struct.pack("<HHQQQ", 1, 24, size, size, offsets.get(name, at))
        head = struct.pack(
            "<IHHHHHHIIIHHHHHII",
            *(0x02014B50, 0x031E, 45, 0, 0, 0, 33, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(raw)),
            *(len(extra), 0, 0, 0, 0o100644 << 16, 0xFFFFFFFF),
        )
        central.append(head + raw + extra)
    directory = b"".join(central)
    start, n = len(out), len(members)
    out += directory
    end64 = len(out)
    out += struct.pack(
        "<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 45, 0, 0, n, n, len(directory), start
    )[:-8] + struct.pack("<Q", start + directory_shift)
    out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, *(2 * [0xFFFFFFFF]), 0)
    return bytes(out)


def _local_header(name: str, data: bytes) -> bytes:
    """A stored member's local header and name, without ZIP64."""
    import struct

    raw = name.encode()
    head = (0x04034B50, 45, 0, 0, 0, 33, zlib.crc32(data), len(data), len(data), len(raw), 0)
    return struct.pack("<IHHHHHIIIHH", *head) + raw


#: Members of the archives below: a/c/0's data ends with a copy of a/c/1's local entry.
_INNER = b"\x02" * 50
_COPY = _local_header("a/c/1", _INNER) + _INNER


def _overlapping(members: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Offsets listing ``a/c/1`` at the copy of its local entry inside ``a/c/0``'s data."""
    return {"offsets": {"a/c/1": _zip64_archive(members).index(_COPY)}}


@pytest.mark.parametrize("padding", [100, 300_000], ids=["read-whole", "larger"])
@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda m: {"sizes": {"big": 10**8}}, "'big'"),
        (lambda m: {"sizes": {"big": 2**64 - 1}}, "'big'"),
        (lambda m: {"offsets": {"a/c/1": 10**8}}, "'a/c/1'"),
        (lambda m: {"offsets": {"a/c/1": 2**63 + 5}}, "'a/c/1'"),
        (lambda m: {"offsets": {"a/c/1": 2}}, "'a/c/1'"),
        (lambda m: {"directory_shift": 7}, "'zarr.json'"),
        (_overlapping, "'a/c/0' and 'a/c/1'"),
    ],
    ids=[
        "size-past-the-end",
        "size-2**64",
        "offset-past-the-end",
        "offset-2**63",
        "offset-into-another",
        "directory-offset",
        "overlapping-members",
    ],
)
def test_hostile_zip64_records_are_refused_when_opened(
    tmp_path: Path, padding: int, damage: Callable[..., dict[str, Any]], problem: str
) -> None:
    """Found by review of the ZIP64 path, which zipfile parses: sizes and offsets a ZIP64
    record declares are checked as cadstore's own parser's are. A local header offset of
    2**63 raised OverflowError from a read, and a ZIP64 end record whose directory offset
    was off by 7 (zipfile then moves every member by 7, one to -7) ValueError, neither
    naming the file; a member listed at a copy of its local entry inside another's data
    (overlapping members, each CRC holding) was read. Every member must lie whole, apart
    from the others, before the central directory: opening the file says which does not,
    naming the file."""
    members = [
        ("zarr.json", b"{}"),
        ("big", b"\x07" * padding),
        ("a/c/0", b"\x01" * 20 + _COPY),
        ("a/c/1", _INNER),
    ]
    good = tmp_path / "good.zip"
    good.write_bytes(_zip64_archive(members))
    source = ZipSource(str(good))
    try:
        assert source._zip is not None  # listed through zipfile
        assert [source.get(name) for name, _ in members] == [data for _, data in members]
    finally:
        source.close()
    path = tmp_path / "hostile.zip"
    raw = _zip64_archive(members, **damage(members))
    path.write_bytes(raw)
    with pytest.raises(CorruptStoreError, match=rf"hostile\.zip.*{problem}"):
        ZipSource(str(path)).close()
    assert path.read_bytes() == raw


@pytest.mark.parametrize("padding", [100, 300_000], ids=["read-whole", "larger"])
def test_overlapping_members_of_a_plain_zip_are_refused(tmp_path: Path, padding: int) -> None:
    """The same check on cadstore's own parser (no ZIP64): a member listed at a copy of its
    local entry inside another's data was read, its CRC holding."""
    import struct

    members = [("big", b"\x07" * padding), ("a/c/0", b"\x01" * 20 + _COPY), ("a/c/1", _INNER)]
    path = tmp_path / "overlap.zip"
    with open(path, "wb") as fh:
        write_stored_zip(fh, members)
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")  # the last entry: a/c/1
    assert raw[central + 46 : central + 51] == b"a/c/1"
    raw[central + 42 : central + 46] = struct.pack("<I", raw.index(_COPY))
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as zf:
        assert zf.read("a/c/1") == _INNER  # zipfile (before 3.12) reads it
    with pytest.raises(CorruptStoreError, match=r"overlap\.zip.*'a/c/0' and 'a/c/1' overlap"):
        ZipSource(str(path)).close()


def test_the_dataset_writers_zip64_records_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ZipStreamWriter (a merged dataset's zip) writes past 4 GiB: members of 4 GiB
    or more and offsets past 4 GiB recorded in ZIP64 extra fields, and a ZIP64 end record.
    The threshold is lowered (``_LIMIT``; the field holding ``0xFFFFFFFF`` stays what
    says "see ZIP64") so that the test needs no 4 GiB: zipfile and ZipSource read every
    member back, and ZipSource refuses the archive once a ZIP64 offset is damaged."""
    import struct

    from cadstore.io import zipwriter
    from cadstore.io.zipwriter import ZipStreamWriter

    monkeypatch.setattr(zipwriter, "_LIMIT", 1000)
    members = [
        ("zarr.json", b'{"a": 1}' * 10, True),
        ("a/c/0", bytes(range(256)) * 8, False),  # a size past the threshold
        ("a/c/1", b"\x01" * 10, False),  # an offset past it
        ("b/zarr.json", b'{"b": [1, 2, 3]}' * 200, True),  # deflated, inflating past it
    ]
    path = tmp_path / "big.dataset"
    with open(path, "wb") as fh:
        writer = ZipStreamWriter(fh)
        for name, data, deflate in members:
            writer.add(name, data, deflate=deflate)
        writer.close()
    raw = path.read_bytes()
    assert raw.count(b"PK\x06\x06") == 1  # the ZIP64 end record
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert [zf.read(name) for name, _, _ in members] == [data for _, data, _ in members]
        assert zf.getinfo("a/c/1").header_offset >= 1000
    source = ZipSource(str(path))
    try:
        assert source._zip is not None  # listed through zipfile
        assert [source.get(name) for name, _, _ in members] == [data for _, data, _ in members]
    finally:
        source.close()
    damaged = bytearray(raw)
    entry = damaged.rfind(b"PK\x01\x02")  # b/zarr.json's: its offset in the ZIP64 extra
    extra = entry + 46 + len(b"b/zarr.json")
    tag, length = struct.unpack_from("<HH", damaged, extra)
    assert tag == 1 and length == 16  # its size, then its offset
    struct.pack_into("<Q", damaged, extra + 4 + 8, 5)  # listed inside zarr.json's entry
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptStoreError, match=r"big\.dataset.*'b/zarr\.json'"):
        ZipSource(str(path)).close()


def test_a_prefix_remembers_a_bounded_number_of_absent_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review beside ZipSource's: PrefixSource (a directory store on an object
    store) remembered every distinct key ``locate`` asked the store for and did not find,
    without bound. It keeps the latest ones (a damaged dataset's missing chunk is asked
    for once, not at every read), up to ``_ABSENT_KEPT``."""
    from cadstore.io import sources
    from cadstore.io.sources import PrefixSource

    root = tmp_path / "store.zarr"
    root.mkdir()
    (root / "zarr.json").write_bytes(b"{}")
    monkeypatch.setattr(sources, "_ABSENT_KEPT", 100, raising=False)
    asked: list[str] = []

    class Counting(LocalFileSystem):
        def size(self, path: str) -> int:
            asked.append(path)
            return super().size(path)

    prefix = PrefixSource(Counting(), str(root))
    asked.clear()  # what listing the prefix asked
    for i in range(1000):
        assert prefix.locate(f"a/c/{i}") is None
        assert prefix.locate(f"a/c/{i}") is None  # not asked again
    assert len(asked) == 1000
    assert len(prefix._absent) <= 100
    assert prefix.locate("zarr.json") == 2


@pytest.mark.parametrize(
    ("rel", "ok"),
    [
        ("c/0/1", True),
        ("c/1/0", True),
        ("c/2/0", False),  # off the grid
        ("c/0/01", False),  # spelt otherwise
        ("c/0", False),
        ("c/0/1/0", False),
        ("0.1", False),  # another encoding
        ("c/0/x", False),
        ("c/0/\u0661", False),  # a digit, but not ASCII
        ("c/0/" + "9" * 5000, False),  # more digits than int() takes
    ],
)
def test_chunk_keys_of_a_grid(rel: str, ok: bool) -> None:
    """What an item's members are checked against when one of its chunks is absent."""
    from cadstore.format.zarr_nodes import ArrayMeta

    meta = ArrayMeta(3, (10, 6), (5, 3), "float64", 0.0, None, {}, ())
    assert meta.is_chunk_key(rel) is ok


def _reading_past_its_space(
    path: Path, padding: int, member: str, extra: int, directory: bool
) -> bytes:
    """Write ``a`` (``padding`` bytes), a directory entry ``d/`` if ``directory``, and ``b``
    (2,000 bytes), stored; then give ``member``'s local header an extra field length of
    ``extra`` that no extra field fills, and its CRC that of the bytes a read then
    covers: its own bytes shifted by ``extra``, into the next entry's local header
    (``a``) or the central directory (``b``), as a crafted file does. Return the file's
    bytes."""
    import struct

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a", b"\x07" * padding)
        if directory:
            zf.mkdir("d")
        zf.writestr("b", b"\x09" * 2000)
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")
    while raw[central + 46 : central + 47] != member.encode():
        central = raw.index(b"PK\x01\x02", central + 4)
    (size,) = struct.unpack_from("<I", raw, central + 20)
    (local,) = struct.unpack_from("<I", raw, central + 42)
    start = local + 30 + 1 + extra
    crc = zlib.crc32(raw[start : start + size])
    struct.pack_into("<H", raw, local + 28, extra)
    struct.pack_into("<I", raw, local + 14, crc)
    struct.pack_into("<I", raw, central + 16, crc)
    path.write_bytes(bytes(raw))
    return bytes(raw)


@pytest.mark.parametrize("padding", [100, 300_000], ids=["read-whole", "larger"])
@pytest.mark.parametrize(
    ("member", "directory"),
    [("a", False), ("a", True), ("b", False)],
    ids=["into-the-next-member", "into-a-directory-entry", "into-the-central-directory"],
)
@pytest.mark.parametrize("looked_up", [False, True], ids=["read", "header-read-for-an-absent-key"])
def test_a_local_extra_field_reaching_past_the_members_space_is_corrupt(
    tmp_path: Path, padding: int, member: str, directory: bool, looked_up: bool
) -> None:
    """Found by review: where a member's data starts is its local header's offset plus its
    name's and extra field's lengths, which the local header gives; only the start was
    bounded (by the file's end). A crafted extra field length moved a read over the next
    member's local header, or the central directory, and with a CRC made to match it was
    read as the member's bytes. A member's data must end before the next member's header
    (the last one's before the central directory): reading it otherwise is a
    CorruptStoreError naming the file and the member, the other member reads, the file is
    left as it was. Also when the member's header was read looking for an absent key of
    its name's length (a larger file's _renamed_as)."""
    path = tmp_path / "crafted.zip"
    raw = _reading_past_its_space(path, padding, member, extra=20, directory=directory)
    other = "b" if member == "a" else "a"
    source = ZipSource(str(path))
    try:
        if looked_up:
            assert "z" not in source  # reads the local headers of names of one byte
        assert source.get(other) == (b"\x09" * 2000 if other == "b" else b"\x07" * padding)
        with pytest.raises(
            CorruptStoreError, match=rf"crafted\.zip.*member '{member}'.*(next|central)"
        ):
            source.get(member)
        with pytest.raises(CorruptStoreError, match=rf"crafted\.zip.*member '{member}'"):
            source.get_range(member, 0, 10)
    finally:
        source.close()
    assert path.read_bytes() == raw


def test_a_local_extra_field_within_the_members_space_reads(tmp_path: Path) -> None:
    """A writer's extra field in a local header (an extended timestamp) that the central
    directory does not repeat moves the data within the member's own space: it reads."""
    path = tmp_path / "extra.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("a")
        info.extra = b"UT\x05\x00\x01\x00\x00\x00\x00"
        zf.writestr(info, b"\x07" * 100)
        zf.writestr("b", b"\x09" * 50)
    source = ZipSource(str(path))
    try:
        assert source.get("a") == b"\x07" * 100 and source.get("b") == b"\x09" * 50
    finally:
        source.close()


@pytest.mark.parametrize("rows", [100, 50_000], ids=["read-whole", "larger"])
@pytest.mark.parametrize(
    "damaged", ["metadata.jsoo", "metadata_json", "zetadata.json", "metadata.js\xf6n"]
)
def test_metadata_json_renamed_in_both_headers_is_corrupt(
    tmp_path: Path, rows: int, damaged: str
) -> None:
    """Found by review: an item's ``metadata.json`` whose name was damaged alike in the
    central directory and its local header (a consistent zip) read as an item without
    metadata, ``{}``, and no error. cadstore writes ``metadata.json`` with every item, but
    another writer's item may have none: its absence beside a member of a name of its
    length that belongs to no node is the damaged name, as for a chunk
    (ReadHierarchy.check_absent). Loading the metadata is a CorruptStoreError naming the
    file and both names; the arrays read; the file is left as it was. ``damaged`` is the
    damaged bytes, one per character: one above 127 (``metadata.js\\xf6n``) was missed,
    its name compared as text (cp437) being of another length (found by review)."""
    import numpy as np

    from cadstore import OptStorage

    values = np.random.default_rng(0).random(rows)
    path = tmp_path / "item.zarr"
    storage = OptStorage(str(path))
    storage.save_data("x", values)
    storage.save_metadata("source", "part.step")
    storage.compress_store()
    storage.close()
    data = Path(f"{path}.data")
    raw = data.read_bytes()
    stored = damaged.encode("latin-1")
    assert raw.count(b"metadata.json") == 2 and len(stored) == len(b"metadata.json")
    raw = raw.replace(b"metadata.json", stored)
    data.write_bytes(raw)
    assert (len(raw) > 256 * 1024) == (rows > 100)
    listed = re.escape(stored.decode("cp437"))
    storage = OptStorage(str(path), mode="r")
    try:
        np.testing.assert_array_equal(storage.load_data("x"), values)
        with pytest.raises(
            CorruptStoreError,
            match=rf"item\.zarr\.data.*'metadata\.json' is missing.*'{listed}'",
        ):
            storage.load_metadata()
    finally:
        storage.close()
    assert data.read_bytes() == raw


def test_another_writers_item_without_metadata_reads(tmp_path: Path) -> None:
    """An item another writer made (zarr-python) has no ``metadata.json``: it reads, with
    no metadata, beside a member no node holds whose name is of another length."""
    import numpy as np
    import zarr

    from cadstore import OptStorage

    path = tmp_path / "other.zarr.data"
    with zarr.storage.ZipStore(path, mode="w") as store:
        group = zarr.open_group(store, mode="w")
        group.create_array("values", shape=(4,), chunks=(4,), dtype="int64")[:] = np.arange(4)
    with zipfile.ZipFile(path, "a") as zf:
        assert "metadata.json" not in zf.namelist()
        zf.writestr("notes.txt", b"written by hand")
    storage = OptStorage(str(tmp_path / "other.zarr"), mode="r")
    try:
        assert storage.load_metadata() == {}
        np.testing.assert_array_equal(storage.load_data("values"), np.arange(4))
    finally:
        storage.close()


def _zarr_python_item(path: Path, *writes: list[float], consolidate: bool) -> None:
    """An item zarr-python's ``ZipStore`` writes: array ``v`` written once per
    ``writes``, each time appending its chunk ``v/c/0`` again, then the metadata
    consolidated (which appends the root ``zarr.json`` again) or not."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        # zipfile warns of each name written again: what ZipStore does on a rewrite.
        warnings.simplefilter("ignore", UserWarning)
        with zarr.storage.ZipStore(path, mode="w") as store:
            group = zarr.open_group(store, mode="w")
            array = group.create_array("v", shape=(3,), dtype="f8")
            for values in writes:
                array[:] = values
            if consolidate:
                zarr.consolidate_metadata(store)


def test_a_zarr_python_item_with_consolidated_metadata_reads_and_merges(tmp_path: Path) -> None:
    """Found by a user: zarr-python's ``ZipStore`` appends an entry each time a key is
    written again, so an item written the standard way (``zarr.consolidate_metadata`` on
    a ZipStore) holds ``zarr.json`` twice, and cadstore refused it as corrupt ("duplicate
    zip member"). It reads as zipfile and zarr-python read it, from the last entry, and
    merges."""
    import numpy as np

    from cadstore import OptStorage
    from cadstore.dataset import DatasetReader
    from cadstore.merging import merge_items

    path = tmp_path / "a.zarr.data"
    _zarr_python_item(path, [1.0, 2.0, 3.0], consolidate=True)
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["zarr.json", "v/zarr.json", "v/c/0", "zarr.json"]
        last = zf.read("zarr.json")
    source = ZipSource(str(path))
    try:
        assert source.get("zarr.json") == last and b'"v"' in last  # the consolidated copy
    finally:
        source.close()
    with OptStorage(str(tmp_path / "a.zarr"), mode="r") as storage:
        np.testing.assert_array_equal(storage.load_data("v"), [1.0, 2.0, 3.0])
    result = merge_items([str(path)], str(tmp_path / "out.dataset"))
    assert result.items == ["a"] and not result.errors
    with DatasetReader(tmp_path / "out.dataset") as reader:
        np.testing.assert_array_equal(reader.read_item(0)["v"]["v"], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("how", ["written-twice", "renamed-in-both-headers"])
def test_a_repeated_chunk_in_another_writers_zip_is_corrupt(tmp_path: Path, how: str) -> None:
    """A chunk listed twice in another writer's zip is an array written twice (zarr-python
    reads the last entry) or a chunk's name damaged into its neighbour's in both headers,
    which read as a rewrite: chunk 1's values as chunk 0's, chunk 1 as fill values, no
    word. The two cannot be told apart, so a repeated chunk stays an error naming the file
    and the member; only metadata documents are read from their last entry."""
    import zarr

    from cadstore import OptStorage

    path = tmp_path / "a.zarr.data"
    if how == "written-twice":
        _zarr_python_item(path, [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], consolidate=False)
    else:
        with zarr.storage.ZipStore(path, mode="w") as store:
            array = zarr.create_array(store, name="v", shape=(4,), chunks=(2,), dtype="f8")
            array[:] = [1.0, 2.0, 3.0, 4.0]
        path.write_bytes(path.read_bytes().replace(b"v/c/1", b"v/c/0"))
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist().count("v/c/0") == 2
    before = path.read_bytes()
    pattern = r"a\.zarr\.data.*duplicate zip member 'v/c/0': only a metadata document"
    with (
        pytest.raises(CorruptStoreError, match=pattern),
        OptStorage(str(tmp_path / "a.zarr"), mode="r") as storage,
    ):
        storage.load_data("v")
    assert path.read_bytes() == before


@pytest.mark.parametrize("renamed", ["earlier", "later"])
@pytest.mark.parametrize("kind", ["item-read-whole", "item-larger", "dataset"])
def test_a_name_repeated_in_a_file_cadstore_wrote_is_corrupt(
    tmp_path: Path, kind: str, renamed: str
) -> None:
    """cadstore's writers write each name once: a chunk's name made another's alike in both
    headers (as one flipped bit may, in a header) is damage, not a rewrite, whichever of
    the two was renamed (the later entry still lies after the earlier), and reading the
    last entry would read the wrong chunk. Opening the item or the dataset is a
    CorruptStoreError naming the file and the member; the file is left as it was."""
    import numpy as np

    from cadstore import OptStorage
    from cadstore.dataset import DatasetReader
    from cadstore.merging import merge_items
    from conftest import write_arrays

    rows = 50_000 if kind == "item-larger" else 100
    rng = np.random.default_rng(0)
    arrays = {"faces/a": rng.random(rows), "faces/b": rng.random(rows)}
    if kind == "dataset":
        items = [write_arrays(tmp_path / f"p{i}.zarr", arrays) for i in range(2)]
        path = tmp_path / "out.dataset"
        assert merge_items(items, str(path)).items == ["p0", "p1"]
    else:
        path = Path(write_arrays(tmp_path / "item.zarr", arrays))
        assert (path.stat().st_size > 256 * 1024) == (kind == "item-larger")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names.index("faces/a/c/0") < names.index("faces/b/c/0")
    old, new = (b"faces/a/c/0", b"faces/b/c/0")[:: 1 if renamed == "earlier" else -1]
    raw = path.read_bytes()
    assert raw.count(old) == 2
    raw = raw.replace(old, new)
    path.write_bytes(raw)
    message = rf"{path.name}.*duplicate zip member '{new.decode()}'.*cadstore wrote"
    opening: Callable[[], Any] = (
        (lambda: DatasetReader(path))
        if kind == "dataset"
        else (lambda: OptStorage(str(tmp_path / "item.zarr"), mode="r"))
    )
    with pytest.raises(CorruptStoreError, match=message):
        opening()
    assert path.read_bytes() == raw


def test_another_writers_change_to_a_file_cadstore_wrote_is_refused(tmp_path: Path) -> None:
    """An item cadstore wrote that zarr-python then changed in place (``ZipStore`` in
    mode ``"a"`` appends the root ``zarr.json`` again) holds an entry of the name cadstore
    wrote: refused, as damage to cadstore's own file would be, naming the member."""
    import warnings

    import numpy as np
    import zarr

    from cadstore import OptStorage
    from conftest import write_arrays

    path = Path(write_arrays(tmp_path / "item.zarr", {"x": np.arange(3)}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name"
        with zarr.storage.ZipStore(path, mode="a") as store:
            zarr.open_group(store, mode="a").attrs["note"] = "changed"
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist().count("zarr.json") == 2
    with pytest.raises(CorruptStoreError, match=r"item\.zarr\.data.*'zarr\.json'.*cadstore"):
        OptStorage(str(tmp_path / "item.zarr"), mode="r")


class _CountingFile(io.BytesIO):
    """A remote-like file (no fileno) that records each read: a request to the store."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def fileno(self) -> int:
        raise io.UnsupportedOperation("not a real file")

    def read(self, n: int | None = -1) -> bytes:
        self.reads.append(self.tell())
        return super().read(n)


class _BatchingStore(LocalFileSystem):
    """An object store's file system as ZipSource sees it: files read by request, and
    several ranges read as one batch (recorded), as ``FsspecFileSystem.read_ranges``
    sends them together."""

    remote = True

    def __init__(self) -> None:
        super().__init__()
        self.files: list[_CountingFile] = []
        self.batches: list[list[tuple[int, int]]] = []

    def open_read(self, path: str) -> IO[bytes]:
        with open(path, "rb") as fh:
            self.files.append(_CountingFile(fh.read()))
        return self.files[-1]

    def read_ranges(self, fh: IO[bytes], path: str, ranges: Any) -> list[bytes] | None:
        self.batches.append(list(ranges))
        data = fh.getvalue()  # type: ignore[attr-defined]
        return [data[offset : offset + n] for offset, n in ranges]


def test_a_rewritten_documents_headers_are_read_in_one_batch(tmp_path: Path) -> None:
    """Found by review: opening a zip over 256 KiB whose metadata document another writer
    rewrote (zarr-python appends an entry each time) read each entry's local header with a
    request of its own, one round trip per entry on an object store. They are read as
    one batch; the document reads from its last entry."""
    import warnings

    path = tmp_path / "other.zarr.data"
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name"
        zf.writestr("v/c/0", b"\1" * 300_000)
        for i in range(4):
            zf.writestr("zarr.json", b'{"i": %d}' % i)
    fs = _BatchingStore()
    source = ZipSource(str(path), fs)
    try:
        (file,) = fs.files
        assert len(file.reads) == 2  # the end record and the central directory
        assert [len(batch) for batch in fs.batches] == [4]  # zarr.json's four headers
        assert source.get("zarr.json") == b'{"i": 3}'
    finally:
        source.close()


@pytest.mark.parametrize("damage", ["central-directory-only", "listed-out-of-order"])
def test_another_writers_repeat_that_is_no_rewrite_is_corrupt(tmp_path: Path, damage: str) -> None:
    """A repeated name in another writer's zip is read from its last entry only when it
    is a rewrite: a name repeated in the central directory alone (its local header names
    another member: damage there) or an entry listed after one it lies before (a rewrite
    appends) is a CorruptStoreError naming the file and the member."""
    import warnings

    path = tmp_path / "other.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name"
        zf.writestr("a/c/0", b"one")
        zf.writestr("a/c/1" if damage == "central-directory-only" else "a/c/0", b"two")
    raw = path.read_bytes()
    directory = raw.index(b"PK\x01\x02")
    if damage == "central-directory-only":
        raw = raw[:directory] + raw[directory:].replace(b"a/c/1", b"a/c/0")
        problem = "local header"
    else:
        # Both entries are 46 + 5 bytes: swap them, so the later entry is listed first.
        first, second = raw[directory : directory + 51], raw[directory + 51 : directory + 102]
        assert second.startswith(b"PK\x01\x02")
        raw = raw[:directory] + second + first + raw[directory + 102 :]
        problem = "lies before it"
    path.write_bytes(raw)
    with pytest.raises(CorruptStoreError, match=rf"other\.zip.*'a/c/0'.*{problem}"):
        ZipSource(str(path))


def test_every_cadstore_writer_dates_every_entry_as_the_reader_expects(tmp_path: Path) -> None:
    """The reader tells a file cadstore wrote by the date of its entries (see ZipSource):
    both item writers (the fast one and zipfile's, for ZIP64) and the dataset writer date
    every entry, in its local header and in the central directory, 1980-01-01 00:00."""
    import struct

    from cadstore.io.zipwriter import FIXED_TIME_AND_DATE, ZipStreamWriter, _write_with_zipfile

    members = [("zarr.json", b"{}"), ("x/c/0", b"\1" * 100)]
    fast, slow, stream = io.BytesIO(), io.BytesIO(), io.BytesIO()
    write_stored_zip(fast, members, deflate=lambda name: name.endswith(".json"))
    _write_with_zipfile(slow, members, lambda name: name.endswith(".json"))
    writer = ZipStreamWriter(stream)
    for name, data in members:
        writer.add(name, data, deflate=name.endswith(".json"))
    writer.close()
    for archive in (fast, slow, stream):
        raw = archive.getvalue()
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
        assert [info.filename for info in infos] == ["zarr.json", "x/c/0"]
        for info in infos:
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert struct.unpack_from("<HH", raw, info.header_offset + 10) == FIXED_TIME_AND_DATE


@pytest.mark.parametrize("step", ["stat", "open"])
@pytest.mark.parametrize(("name", "kind", "words"), OS_ERROR_KINDS[:2])
def test_a_directory_items_member_the_disk_fails_to_read_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, name: str, kind: str, words: str
) -> None:
    """A directory store took a chunk whose stat failed (EIO, EACCES) for one not stored,
    so an item read its array as fill values without a word; an open() that failed let
    the bare OSError out, naming no file. Either is the StorageError of its kind naming
    the store and the key; a member that is not there is still absent."""
    import builtins
    import errno
    import os

    import numpy as np

    import cadstore.errors
    from cadstore import OptStorage
    from cadstore.io.sources import DirectorySource

    path = tmp_path / "a.zarr"
    with OptStorage(path) as storage:
        storage.save_data("faces/face_areas", np.arange(5.0))
    chunk = path / "faces" / "face_areas" / "c" / "0"
    before = chunk.read_bytes()
    number = getattr(errno, name)
    # The directory store stats a member with os.stat and opens it with open().
    module: Any = os if step == "stat" else builtins
    real = getattr(module, step)

    def failing(target: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(target, str | os.PathLike) and os.fspath(target) == str(chunk):
            raise OSError(number, os.strerror(number))
        return real(target, *args, **kwargs)

    monkeypatch.setattr(module, step, failing)
    expected = getattr(cadstore.errors, kind)

    def read_the_item() -> Any:
        with OptStorage(str(path), mode="r") as storage:
            return storage.load_data("faces/face_areas")

    with pytest.raises(expected) as caught:
        read_the_item()  # a stat fails as the item is opened (its size), an open as it reads
    assert type(caught.value) is expected
    assert str(path) in str(caught.value) and words in str(caught.value)
    if step == "open":
        assert "'faces/face_areas/c/0'" in str(caught.value)
    source = DirectorySource(str(path))
    reads = [
        lambda: source.get("faces/face_areas/c/0"),
        lambda: source.get_range("faces/face_areas/c/0", 0, 2),
    ]
    if step == "stat":  # a size is a stat, with no open
        reads.append(lambda: source.size_of("faces/face_areas/c/0"))
    for read in reads:
        with pytest.raises(expected):
            read()
    assert source.get("faces/face_areas/c/9") is None  # not there: absent, as before
    monkeypatch.undo()
    assert chunk.read_bytes() == before
