"""Key-value views of a store: a zip file, a directory, a prefix of objects, a dict.

Every view returns bytes by key, lists its keys, and reports the size of what it holds
(for the expansion limit). The zip view validates every member name (no absolute paths,
no ``..``, no backslashes or control characters, no duplicates but another writer's
rewrites of a metadata document, read from their last entry: see :class:`ZipSource`),
every declared size and every member's place in the file (ZIP64 records too, which
``zipfile`` parses) before it reads, and turns every failure of ``zipfile`` into a
:class:`~cadstore.errors.CorruptStoreError` naming the file. Nothing is ever extracted.

:func:`open_source` is the one way to open the store at a location, whatever it is: it
decides between a zip and a directory (or, on an object store, a prefix), refuses anything
that is neither (a named pipe, a device) before reading a byte, and reports a store whose
bytes do not parse, or that is not there, as a :class:`~cadstore.errors.CorruptStoreError`
naming it. A store the file system refuses to open or read (an OSError: EACCES, EIO) is
not corrupt, the same bytes may read once the disk is back: it is the
:class:`~cadstore.errors.StorageError` of the error's kind naming it, as a read once the
store is open is (:func:`cadstore.merging.scan.reading_item`); a store that refuses access
or cannot be reached passes through as its own error.
"""

from __future__ import annotations

import bisect
import errno
import operator
import os
import re
import stat
import struct
import threading
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Literal, NamedTuple

from cadstore.errors import (
    CorruptStoreError,
    LimitExceededError,
    StorageError,
    os_problem,
    os_storage_error,
)
from cadstore.forking import renew_lock
from cadstore.format.limits import (
    DEFAULT_LIMITS,
    JSON_EXPANSION,
    DecodeBudget,
    Limits,
    is_metadata_key,
)
from cadstore.io.filesystems import FileSystem, LocalFileSystem
from cadstore.io.zipwriter import FIXED_TIME_AND_DATE

if TYPE_CHECKING:
    from cadstore.io.location import Location

__all__ = [
    "DictSource",
    "DirectorySource",
    "KeySource",
    "PrefixSource",
    "ZipSource",
    "check_member_name",
    "file_beside",
    "open_source",
    "other_kind",
    "path_inside",
]

_LOCAL_LENGTHS = struct.Struct("<HH")
# A local header's DOS time and date (at byte 10).
_TIME_AND_DATE = struct.Struct("<HH")
# Local members up to this size are read with their header in one positioned read.
_ONE_READ_BYTES = 256 * 1024
# Zip files up to this size are read whole when opened (see ZipSource).
_IMAGE_BYTES = 256 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# Names made of word characters, dots and dashes in non-empty segments: every name cadstore
# and zarr-python write. They only need the '.'/'..' segment check.
_PLAIN_NAME = re.compile(r"[\w.\-]+(?:/[\w.\-]+)*", re.ASCII)


def path_inside(root: str, key: str) -> str | None:
    """The file of ``key`` below directory ``root``, links resolved, or ``None`` if it
    lies outside ``root`` (a link, or ``..``, leading out of the store).

    ``root`` is already resolved (``os.path.realpath``). The one rule by which a key of a
    store kept in a local directory never reads outside it: :class:`DirectorySource` and
    the explorer's zarr-python view (:mod:`cadstore.dataset.zarr_view`).
    """
    full = os.path.realpath(os.path.join(root, *key.split("/")))
    return full if os.path.commonpath([root, full]) == root else None


def check_member_name(name: str) -> str | None:
    """Return why ``name`` is not a safe store key, or ``None`` if it is."""
    if _PLAIN_NAME.fullmatch(name):
        if "." in name:
            wrapped = f"/{name}/"
            if "/./" in wrapped or "/../" in wrapped:
                return "empty, '.' or '..' path segment"
        return None
    if not name:
        return "empty name"
    if name[0] == "/" or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        return "absolute path"
    if "\\" in name or (not name.isprintable() and _CONTROL.search(name)):
        return "control character or backslash"
    if (
        "//" in name
        or name[-1] == "/"
        or ("." in name and any(part in (".", "..") for part in name.split("/")))
    ):
        return "empty, '.' or '..' path segment"
    return None


def _below_any(key: str, folders: Collection[str]) -> bool:
    """Whether ``key`` lies below one of ``folders`` (``a/b/c`` below ``a`` and ``a/b``)."""
    cut = key.find("/")
    while cut > 0:
        if key[:cut] in folders:
            return True
        cut = key.find("/", cut + 1)
    return False


class KeySource(ABC):
    """Read-only bytes by key.

    Every source carries the :class:`~cadstore.format.limits.DecodeBudget` of what it
    holds (:attr:`budget`): the memory everything read from it may decode into. Sources
    charge the metadata documents they return and the bytes they inflate; readers charge
    the arrays they decode.
    """

    #: Path shown in error messages.
    location: str
    #: Safety limits for what is read from the source.
    limits: Limits = DEFAULT_LIMITS
    _budget: DecodeBudget | None = None
    #: Whether :meth:`total_bytes` costs a walk of the store (a directory's every file),
    #: so that the budget asks it only when a charge needs it.
    _sized_when_needed: bool = False

    @property
    def budget(self) -> DecodeBudget:
        """The decode budget of this source, sized from :meth:`total_bytes`: on first use,
        or, where that is a walk of every file (:attr:`_sized_when_needed`), when a charge
        first needs it (:class:`~cadstore.format.limits.DecodeBudget`)."""
        budget = self._budget
        if budget is None:
            size = self.total_bytes if self._sized_when_needed else self.total_bytes()
            budget = self._budget = DecodeBudget(self.location, size, self.limits)
        return budget

    def _check_declared(self, key: str, size: int, *, inflated: bool) -> None:
        """Refuse, before reading, a value whose declared ``size`` the limits do not allow.

        A metadata document must be at most ``max_metadata_bytes`` and is charged to the
        budget at :data:`~cadstore.format.limits.JSON_EXPANSION` bytes per byte (what its
        parsed objects may take); any other value at most ``max_chunk_bytes``, and when it
        is ``inflated`` from fewer stored bytes (a deflated zip member) its size is
        charged too: stored bytes are bounded by the file, inflated ones only by the
        header that declares them.

        Raises
        ------
        LimitExceededError
            Naming the file, the key and the limit.
        """
        limits = self.limits
        if is_metadata_key(key):
            if size > limits.max_metadata_bytes:
                raise LimitExceededError(
                    self.location,
                    f"{key!r} is {size} bytes, more than max_metadata_bytes="
                    f"{limits.max_metadata_bytes}",
                )
            self.budget.charge(key, JSON_EXPANSION * size, f"metadata document {key!r}")
            return
        if size > limits.max_chunk_bytes:
            raise LimitExceededError(
                self.location,
                f"member {key!r} declares {size} bytes, more than "
                f"max_chunk_bytes={limits.max_chunk_bytes}",
            )
        if inflated:
            self.budget.charge(key, size, f"member {key!r} (inflated)")

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """Return the bytes stored at ``key``, or ``None`` if absent."""

    @abstractmethod
    def keys(self) -> Iterable[str]:
        """Return every key."""

    @abstractmethod
    def total_bytes(self) -> int:
        """Return the size of the underlying file(s)."""

    def keys_outside(self, folders: Collection[str]) -> Iterable[str]:
        """Every key but those below one of ``folders`` (``a/b`` leaves out ``a/b/...``).

        For a reader that knows what a folder holds (an array's chunks) and must not list
        it all to find the few keys it wants: a directory store is not walked below them.
        The other sources hold their keys in memory (a zip's central directory, an object
        store's listing made when it was opened) and filter them.
        """
        skip = set(folders)
        return (key for key in self.keys() if not _below_any(key, skip))

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        """Return ``length`` bytes of ``key`` from ``start`` (fewer at the end), or ``None``.

        Sources that can read part of a value override this; the default reads it all.
        """
        data = self.get(key)
        return None if data is None else data[start : start + length]

    def get_ranges(self, requests: Sequence[tuple[str, int, int]]) -> list[bytes | None]:
        """:meth:`get_range` for each ``(key, start, length)``, in order.

        Sources on object stores override this to send the requests together (see
        :attr:`batches_reads`); the default reads them one after another.
        """
        return [self.get_range(key, start, length) for key, start, length in requests]

    @property
    def batches_reads(self) -> bool:
        """Whether :meth:`get_ranges` is faster than as many :meth:`get_range` calls.

        True where every read is a network round trip, so a reader that knows what it
        will need should ask for it in one batch.
        """
        return False

    def size_of(self, key: str) -> int | None:
        """Return the size of the value at ``key`` without reading it, or ``None``."""
        data = self.get(key)
        return None if data is None else len(data)

    def locate(self, key: str) -> int | None:
        """:meth:`size_of` for a key that must exist: ``None`` only if the store has none.

        A source that listed its keys when it was opened asks the store again for a key
        the listing lacked: an object store's listing can miss an object it holds (a
        server that crashed while writing has been seen to), and a reader that knows a
        member must be there (a cadstore dataset's chunks) should read it rather than
        take it for absent. Other sources answer from what they hold.

        Parameters
        ----------
        key
            A member key.

        Returns
        -------
        int or None
            Its size in bytes, or ``None`` when the store holds no such member.
        """
        return self.size_of(key)

    def stored_name(self, key: str) -> bytes:
        """The bytes the store holds ``key``'s name as, which damage changes.

        A zip keeps each member's name as bytes and decodes them as cp437, or as UTF-8
        when the entry's flag says so: one damaged byte above 127 makes a name whose
        decoded text differs in length, so a reader looking for a damaged name
        (:meth:`~cadstore.format.hierarchy.ReadHierarchy.check_absent`) compares these
        bytes, not the text. The default, and the name of a key the store lacks, is its
        UTF-8, as cadstore, ``zipfile`` and zarr-python store a name.
        """
        return key.encode("utf-8", "surrogatepass")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    def after_fork(self) -> bool:
        """In a child process just forked: whether the source can go on being used there,
        as it is, by what the parent read through it.

        Sources that hold no per-process state (network sessions, a shared file position)
        say yes, after making their locks the child's own (:meth:`_continues_in_child`);
        the default is no, and the caller opens the file again. The decode budget, when
        there is one, is taken over here for every source: what it has charged is kept
        only if no thread of the parent was charging it as the process forked.
        """
        budget = self._budget is None or self._budget.after_fork()
        return self._continues_in_child() and budget

    def _continues_in_child(self) -> bool:
        """:meth:`after_fork` less the budget: what a source overrides."""
        return False

    def __contains__(self, key: str) -> bool:
        """Whether the store holds something at ``key``, as :meth:`size_of` says.

        Like a mapping's ``in``, this never reports damage: a value that is there but
        cannot be read (a CRC that does not hold, a size over the limits, a zip member
        whose name the central directory damaged) is held, and :meth:`get` raises its
        :class:`~cadstore.errors.CorruptStoreError`. It may raise what reading the store
        raises (an ``OSError``, a :class:`~cadstore.errors.StorageError`): a store that
        cannot be read is not one without the key, which a reader would take for fill
        values.
        """
        return self.size_of(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


class DictSource(KeySource):
    """Keys held in a dict (a store being built in memory)."""

    def __init__(self, data: dict[str, bytes] | None = None, location: str = "<memory>") -> None:
        self.data: dict[str, bytes] = data if data is not None else {}
        self.location = location

    def get(self, key: str) -> bytes | None:  # docstring inherited
        return self.data.get(key)

    def keys(self) -> Iterable[str]:  # docstring inherited
        return self.data.keys()

    def total_bytes(self) -> int:  # docstring inherited
        return sum(len(v) for v in self.data.values())

    def __contains__(self, key: str) -> bool:
        return key in self.data


class ZipMember(NamedTuple):
    """One entry of a zip's central directory (a tuple: built once per member per open)."""

    name: str
    method: int
    flags: int
    crc: int
    compress_size: int
    file_size: int
    header_offset: int
    raw_name: bytes  # the name's bytes as stored, which each local header must repeat


class _NeedZipfile(Exception):
    """The archive uses a feature (ZIP64, multi-disk) left to ``zipfile``."""


_EOCD = struct.Struct("<4sHHHHIIH")
# The central-directory fields a reader needs, the others skipped: signature, flags,
# method, CRC, sizes, name/extra/comment lengths, local header offset.
_CENTRAL_FIELDS = struct.Struct("<4s4xHH4xIIIHHH8xI")


def read_central_directory(
    read_at: Callable[[int, int], bytes], size: int
) -> tuple[list[ZipMember], int]:
    """Parse a zip's end record and central directory: its members, and where the
    directory starts (where the last member's space ends).

    Parameters
    ----------
    read_at
        ``read_at(offset, n)`` returns up to ``n`` bytes at ``offset``.
    size
        The file size.

    Raises
    ------
    _NeedZipfile
        For ZIP64 or multi-disk archives, which ``zipfile`` handles.
    ValueError
        If the structures are inconsistent (a corrupt or truncated file), members among
        them (see :func:`_misplaced`).
    """
    tail_len = min(size, 22 + 0xFFFF)
    tail = read_at(size - tail_len, tail_len)
    # The end record is the last signature whose comment length reaches exactly the end
    # of the file; a comment may itself contain the signature bytes.
    pos = len(tail)
    while True:
        pos = tail.rfind(b"PK\x05\x06", 0, pos)
        if pos < 0:
            raise ValueError("no end of central directory record")
        if len(tail) - pos >= 22 and pos + 22 + _EOCD.unpack_from(tail, pos)[7] == len(tail):
            break
    _, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _comment = _EOCD.unpack_from(tail, pos)
    if 0xFFFF in (n_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_offset):
        raise _NeedZipfile
    if pos >= 20 and tail[pos - 20 : pos - 16] == b"PK\x06\x07":
        raise _NeedZipfile
    if disk or cd_disk or n_disk != n_total:
        raise _NeedZipfile
    eocd_offset = size - tail_len + pos
    if cd_offset + cd_size > eocd_offset:
        raise ValueError("central directory overlaps its end record")
    directory = read_at(cd_offset, cd_size)
    if len(directory) != cd_size:
        raise ValueError("central directory is truncated")
    members: list[ZipMember] = []
    at = 0
    end = 0
    in_order = True
    unpack = _CENTRAL_FIELDS.unpack_from
    for _ in range(n_total):
        if at + 46 > cd_size:
            raise ValueError("central directory is truncated")
        sig, flags, method, crc, csize, usize, n_len, e_len, c_len, offset = unpack(directory, at)
        if sig != b"PK\x01\x02":
            raise ValueError("bad central directory entry")
        if 0xFFFFFFFF in (csize, usize, offset):
            raise _NeedZipfile
        if at + 46 + n_len + e_len + c_len > cd_size:
            # Slicing would cut the name short (metadata.json read as metadata.jso).
            raise ValueError("central directory is truncated")
        raw_name = directory[at + 46 : at + 46 + n_len]
        # ASCII reads the same in both encodings and decodes much faster than cp437.
        name = raw_name.decode(
            "ascii" if raw_name.isascii() else "utf-8" if flags & 0x800 else "cp437"
        )
        members.append(ZipMember(name, method, flags, crc, csize, usize, offset, raw_name))
        at += 46 + n_len + e_len + c_len
        # Where the member ends at the least (see _misplaced), checked as listed.
        if offset < end:
            in_order = False
        end = offset + 30 + n_len + csize
    if not in_order or end > cd_offset:
        problem = _misplaced(members, cd_offset)
        if problem:
            raise ValueError(problem)
    return members, cd_offset


def _misplaced(entries: list[ZipMember], directory_at: int) -> str | None:
    """Say which member does not lie whole, apart from the others, before the central
    directory (at ``directory_at``), or ``None`` when every one does.

    Each member takes at least its local header, its name and its stored bytes from its
    header's offset on; these spans must not overlap, nor start before the file or end
    past the directory's start. Sizes and offsets are the writer's word, ZIP64's among
    them (which ``zipfile`` parses and, when the end record's directory offset disagrees
    with where the directory is, moves every member by the difference): one past the
    file, or past what a read can be asked for (2**63), is refused here, naming the
    member, rather than failing a read with an error naming nothing. Members listed at
    each other's bytes (each CRC may hold: a copy of one's local entry inside another's
    data) are a crafted archive. :func:`read_central_directory` checks its members as it
    lists them, in order, and calls this only to say what is wrong.
    """
    end = 0
    previous: ZipMember | None = None
    for entry in sorted(entries, key=_HEADER_OFFSET):
        at = entry.header_offset
        if at < end:
            if previous is None:
                return f"member {entry.name!r} starts before the file (at {at})"
            return (
                f"members {previous.name!r} and {entry.name!r} overlap ({entry.name!r} is "
                f"listed at byte {at}, within {previous.name!r})"
            )
        end = at + 30 + len(entry.raw_name) + entry.compress_size
        previous = entry
    if previous is not None and end > directory_at:
        return (
            f"member {previous.name!r} runs past the central directory's start (its "
            f"{previous.compress_size} bytes at {previous.header_offset}, the directory at "
            f"{directory_at})"
        )
    return None


_HEADER_OFFSET: Callable[[ZipMember], int] = operator.attrgetter("header_offset")


#: The suffixes of the files cadstore writes for a dataset, each easily given for another.
_DATASET_FILE_SUFFIXES = (".dataset", ".infoset", ".attribset", ".flow")


def other_kind(head: bytes, expected: str) -> str | None:
    """Name the kind of file whose first bytes are ``head``, when it is one cadstore writes
    beside a dataset, for a message refusing it as the ``expected`` kind.

    A dataset's ``.infoset`` and ``.attribset`` (Parquet) and its ``.flow`` manifest (JSON)
    sit beside it with the same stem, and are easily given for it, or it for them.

    Parameters
    ----------
    head
        The file's first bytes (four suffice).
    expected
        ``"zip"`` or ``"json"``: the kind the caller looked for, never named here (a
        damaged zip still starts like one).

    Returns
    -------
    str or None
        ``"a Parquet table (...)"``, ``"a zip file (...)"`` or ``"a JSON document
        (...)"``; ``None`` when the file is none of these, or of the ``expected`` kind.

    Examples
    --------
    >>> other_kind(b"PAR1", "zip")
    "a Parquet table (such as a dataset's .infoset or .attribset)"
    >>> other_kind(b"PK\\x03\\x04", "zip") is None
    True
    """
    if head[:4] == b"PAR1":
        return "a Parquet table (such as a dataset's .infoset or .attribset)"
    if expected != "zip" and head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "a zip file (such as a .dataset or an item .data)"
    if expected != "json" and head.lstrip()[:1] == b"{":
        return "a JSON document (such as a dataset's .flow manifest)"
    return None


def file_beside(path: str, isfile: Callable[[str], bool], suffix: str) -> str | None:
    """The file of a dataset's files with ``suffix`` beside ``path``, itself one of them
    (``parts.infoset`` -> ``parts.dataset``), if it exists.

    Parameters
    ----------
    path
        A path or URL ending with ``.dataset``, ``.infoset``, ``.attribset`` or
        ``.flow`` (for any other, ``None``).
    isfile
        Whether a file is at a path; an error it raises counts as no.
    suffix
        The suffix of the file looked for.

    Returns
    -------
    str or None
        Its path, when it exists and is not ``path``.
    """
    stem = path.rstrip("/") or path
    for own in _DATASET_FILE_SUFFIXES:
        if stem.endswith(own) and own != suffix:
            other = stem[: -len(own)] + suffix
            try:
                return other if isfile(other) else None
            except Exception:  # a hint only: the refusal does not depend on it
                return None
    return None


#: The names of the metadata documents another writer may list twice in a zip, its
#: later entry written over the earlier one (zarr-python's ZipStore appends an entry at
#: each write: consolidating metadata writes the root's zarr.json again).
_REWRITTEN_DOCUMENTS: frozenset[str] = frozenset(
    {"zarr.json", ".zmetadata", ".zattrs", ".zgroup", ".zarray", "metadata.json"}
)


class ZipSource(KeySource):
    """The members of a zip file, read in place.

    Stored and deflated members are read with positioned reads and checked against their
    CRC; other compression methods and ZIP64 archives go through ``zipfile``.

    A metadata document (:data:`_REWRITTEN_DOCUMENTS`) the central directory lists more
    than once is read from its last entry, as ``zipfile`` and zarr-python read it, when
    the entries are another writer's rewrites of the key: zarr-python's ``ZipStore``
    appends an entry each time a key is written again (``zarr.consolidate_metadata`` on
    one leaves two ``zarr.json``). A chunk listed twice is refused: an array written twice
    and a chunk's name damaged into its neighbour's in both headers look alike. A document
    is read so when each entry's local header repeats the name, each lies after the one
    listed before it
    (a rewrite appends), and none is dated 1980-01-01 00:00, the date every cadstore
    writer gives every entry (:data:`cadstore.io.zipwriter.FIXED_TIME_AND_DATE`, since
    its first version). cadstore's writers write each name once, so in a file they wrote
    a repeated name is damage (a flipped bit making one chunk's name another's, where
    taking the last entry would read the wrong chunk): refused, as is any repeat that is
    not a rewrite so. Damage making a repeat in the central directory alone leaves the
    local header naming the member as it was; damage in both headers leaves the date.
    The earlier entries' bytes are never read (they still count in the checks of each
    member's place); the last entry's CRC is checked as any member's. Another writer's
    rewrites of a file cadstore wrote (``ZipStore(mode="a")`` on an item) are refused, as
    are those of a writer that dates its entries as cadstore does (some reproducible
    builds do): a refusal, never a wrong read.

    Parameters
    ----------
    path
        The zip file.
    fs
        The file system holding it.
    limits
        Size limits.

    Raises
    ------
    CorruptStoreError
        If the file is not a zip, or a member name or size is unsafe, or a name is
        listed more than once other than as another writer's rewrites.
    OSError
        If the file system refuses to open or read the file (EACCES, EIO): raised as it
        is, the file is not at fault (:func:`open_source` names the file).
    """

    def __init__(
        self, path: str, fs: FileSystem | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.location = path
        self.limits = limits
        self._fs = fs or LocalFileSystem()
        self._lock = threading.Lock()
        self._zip: zipfile.ZipFile | None = None
        try:
            self._fh: IO[bytes] = self._fs.open_read(path)
        except FileNotFoundError as exc:
            raise CorruptStoreError(path, "no such file") from exc
        except IsADirectoryError as exc:
            raise CorruptStoreError(path, "is a directory, not a zip file") from exc
        try:
            self._fd: int | None = self._fh.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # not a real file (remote or in-memory)
        self._data_offsets: dict[str, int] = {}
        # A small file is read whole, once: the end record's search reads its last 64 KiB
        # anyway, and an item's two dozen members then cost no system call (or, on an
        # object store, no request) each.
        self._image: bytes | None = None
        try:
            self._size = self._fh.seek(0, os.SEEK_END)
            if self._size <= _IMAGE_BYTES:
                if self._fd is not None:
                    image = os.pread(self._fd, self._size, 0)
                else:
                    self._fh.seek(0)
                    image = self._fh.read(self._size)
                if len(image) != self._size:
                    raise ValueError(f"read {len(image)} of its {self._size} bytes")
                self._image = image
            try:
                entries, self._directory_at = read_central_directory(self._read_at, self._size)
            except _NeedZipfile:
                entries, self._directory_at = self._entries_from_zipfile()
        except (MemoryError, StorageError):
            # Our own errors say what went wrong already; a store that refuses or cannot
            # be reached says nothing about the file.
            self.close()
            raise
        except OSError as exc:
            # A read the file system refused (EIO, EACCES): the bytes were never seen, so
            # they cannot be called corrupt. zipfile turns what it finds wrong in the bytes
            # into BadZipFile, and the reads above are bounded by the file's size.
            self.close()
            self._raise_if_unreachable(exc)
            raise
        except Exception as exc:  # struct, zipfile and decoding errors all mean "corrupt"
            kind = self._other_kind()
            self.close()
            self._raise_if_unreachable(exc)  # a remote client's own transport errors
            if kind:
                raise CorruptStoreError(path, f"not a zip file {kind}") from exc
            raise CorruptStoreError(path, f"not a readable zip file ({exc})") from exc
        if len(entries) > limits.max_members:
            self.close()
            raise LimitExceededError(
                path, f"{len(entries)} zip members exceed max_members={limits.max_members}"
            )
        self._members: dict[str, ZipMember] = {}
        # Where entries never read lie (directory entries, and the earlier entries of a
        # name another writer rewrote; a file seldom has any): a member's space ends there
        # too.
        self._unread_entries_at: list[int] = []
        # The entries of each name listed more than once, in the directory's order.
        repeated: dict[str, list[ZipMember]] | None = None
        for entry in entries:
            name = entry.name
            if name.endswith("/"):
                # A directory entry: nothing to read, but its name is checked as any
                # other, and one holding data is a member renamed, not a directory.
                problem = check_member_name(name[:-1])
                if problem:
                    self.close()
                    raise CorruptStoreError(path, f"unsafe zip member name {name!r}: {problem}")
                if entry.file_size or entry.compress_size:
                    self.close()
                    raise CorruptStoreError(
                        path, f"zip directory entry {name!r} holds {entry.file_size} bytes"
                    )
                self._unread_entries_at.append(entry.header_offset)
                continue
            problem = check_member_name(name)
            if problem:
                self.close()
                raise CorruptStoreError(path, f"unsafe zip member name {name!r}: {problem}")
            if entry.flags & 0x1:
                self.close()
                raise CorruptStoreError(path, f"zip member {name!r} is encrypted")
            if name in self._members:
                # Read from its last entry, if the entries are a rewrite (checked below).
                if repeated is None:
                    repeated = {}
                repeated.setdefault(name, [self._members[name]]).append(entry)
            self._members[name] = entry
        if repeated is not None:
            try:
                self._check_rewritten(repeated)
            except BaseException:
                self.close()
                raise
        # Names local headers give that the central directory lists as another: a member
        # whose central-directory name was damaged, asked for under its own name.
        self._renamed: dict[str, str] = {}
        if self._image is not None:
            self._find_renamed(self._image)
        # A larger file's local headers are read as members are, and those of every
        # member of a name's length once a key of that length is asked for and not listed
        # (see _renamed_as): the lengths whose members' headers have all been read, and
        # the members by the length of their stored name (made on the first such key).
        self._lengths_read: set[int] = set()
        self._by_length: dict[int, list[str]] | None = None
        # The local header offsets of all entries in order, made when a local header
        # first gives an extra field (see _beyond_its_space).
        self._header_offsets: list[int] | None = None

    def _check_rewritten(self, repeated: dict[str, list[ZipMember]]) -> None:
        """Check that each name the central directory lists more than once was rewritten
        by another writer, whose last entry is then the member (see the class's
        docstring); note where its earlier entries lie.

        Parameters
        ----------
        repeated
            The entries of each such name, in the directory's order.

        Raises
        ------
        CorruptStoreError
            Naming the file and the member, when an entry of the name is dated as
            cadstore dates each (its writers write a name once: a repeat is damage), its
            local header does not repeat the name, or an entry lies before an earlier one.
        """
        # Every entry's local header at once: one batch of requests on an object store,
        # where one after another would cost a round trip per entry.
        headers = iter(
            self._read_spans(
                [
                    (entry.header_offset, 30 + len(entry.raw_name))
                    for listed in repeated.values()
                    for entry in listed
                ]
            )
        )
        for name, listed in repeated.items():
            for i, entry in enumerate(listed):
                at = entry.header_offset
                header = next(headers)
                if header[:4] != b"PK\x03\x04" or header[30:] != entry.raw_name:
                    raise CorruptStoreError(
                        self.location,
                        f"duplicate zip member {name!r}: an entry's local header (at {at}) "
                        "does not repeat its name (corrupt file)",
                    )
                if _TIME_AND_DATE.unpack_from(header, 10) == FIXED_TIME_AND_DATE:
                    raise CorruptStoreError(
                        self.location,
                        f"duplicate zip member {name!r}: an entry of it (at {at}) is dated "
                        "as cadstore dates its entries, and cadstore writes each name once, "
                        "so the repeat is damage (corrupt file) or another writer's change "
                        "to a file cadstore wrote",
                    )
                if i and at <= listed[i - 1].header_offset:
                    raise CorruptStoreError(
                        self.location,
                        f"duplicate zip member {name!r}: an entry listed after another "
                        f"lies before it in the file (at {at}, not appended as a rewrite "
                        "is; corrupt file)",
                    )
            if name.rpartition("/")[2] not in _REWRITTEN_DOCUMENTS:
                # A chunk repeated: a rewrite (an array written twice) and a chunk's name
                # damaged into its neighbour's in both headers look alike, and taking the
                # last entry would read the neighbour's values as this chunk's, and the
                # neighbour as fill values. Metadata documents are what another writer
                # rewrites in place (consolidating, updating attributes).
                raise CorruptStoreError(
                    self.location,
                    f"duplicate zip member {name!r}: only a metadata document may be listed "
                    "twice (written again by another writer); a repeated chunk is a damaged "
                    "name or an array written twice, which cannot be told apart (corrupt "
                    "file; zarr-python reads its last entry)",
                )
            self._unread_entries_at += [entry.header_offset for entry in listed[:-1]]

    def _find_renamed(self, image: bytes) -> None:
        """Note the members whose local header names another than the central directory
        does (the file is in memory: checking costs nothing), so that reading one under
        its local name is an error, not an array read as fill values."""
        for name, entry in self._members.items():
            at = entry.header_offset
            if image[at : at + 4] != b"PK\x03\x04":
                continue  # reading the member says so
            (name_len,) = struct.unpack_from("<H", image, at + 26)
            self._note_local_name(name, entry, image[at + 30 : at + 30 + name_len])

    def _note_local_name(self, name: str, entry: ZipMember, local: bytes) -> None:
        """Note that the local header of member ``name`` names ``local``, when that is not
        its central-directory name (see :meth:`_renamed_as`)."""
        if local != entry.raw_name:
            text = local.decode(
                "ascii" if local.isascii() else "utf-8" if entry.flags & 0x800 else "cp437"
            )
            self._renamed[text] = name

    def _renamed_as(self, key: str) -> str | None:
        """The central-directory name of the member whose local header names ``key``, when
        the central directory does not list ``key``; else ``None``.

        A small file's local headers were all read when it was opened. In a larger one a
        member's local header is read (and its name checked) when the member is first
        read, but a member listed under a damaged name is never read under that name:
        it is asked for under its own, which is not listed. Damage to a name in the
        central directory leaves its length as it was (the length is a field of its
        own; a damaged one misaligns the entries that follow, which the directory's
        parse refuses), so the first key of a length that is asked for and not listed
        reads the local headers of the members of that length not read yet (one small
        read each, batched on an object store), and notes those that name another.
        Each member's header is read at most once: a key of a length already looked at,
        or of a length no member has, costs a lookup, and nothing is kept per key asked
        for. A healthy item or dataset is never asked for a key it lacks, so this costs
        reading it nothing.
        """
        renamed = self._renamed.get(key)
        if renamed is not None or self._image is not None:
            return renamed
        length = len(key.encode("utf-8", "surrogatepass"))
        if length in self._lengths_read:
            return None
        if self._by_length is None:
            by_length: dict[int, list[str]] = {}
            for name, entry in self._members.items():
                by_length.setdefault(len(entry.raw_name), []).append(name)
            self._by_length = by_length
        names = self._by_length.get(length)
        if names is None:
            return None  # no member has a name of this length: nothing is kept
        unread = [name for name in names if name not in self._data_offsets]
        entries = [self._members[name] for name in unread]
        headers = self._read_spans([(entry.header_offset, 30 + length) for entry in entries])
        for name, entry, header in zip(unread, entries, headers, strict=True):
            if header[:4] != b"PK\x03\x04" or len(header) != 30 + length:
                continue  # reading the member says so
            name_len, extra_len = _LOCAL_LENGTHS.unpack_from(header, 26)
            if name_len != length:
                continue  # a local name of another length: reading the member says so
            local = header[30:]
            if local == entry.raw_name:
                if self._beyond_its_space(entry, extra_len) is None:
                    # Checked: its reads skip the header.
                    self._data_offsets[name] = entry.header_offset + 30 + name_len + extra_len
            else:
                self._note_local_name(name, entry, local)
        self._lengths_read.add(length)
        return self._renamed.get(key)

    def _member(self, key: str) -> ZipMember | None:
        """The central-directory entry of ``key``; ``None`` if it is not stored.

        Raises
        ------
        CorruptStoreError
            If a local header names ``key`` that the central directory lists as another.
        """
        info = self._members.get(key)
        if info is None:
            renamed = self._renamed_as(key)
            if renamed is not None:
                raise CorruptStoreError(
                    self.location,
                    f"member {key!r} is listed in the central directory as "
                    f"{renamed!r} (corrupt file)",
                )
        return info

    def _read_at(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0:
            raise ValueError("negative offset or length")
        if self._image is not None:
            return self._image[offset : offset + n]
        if self._fd is not None:
            return os.pread(self._fd, n, offset)
        try:
            with self._lock:
                self._fh.seek(offset)
                return self._fh.read(n)
        except Exception as exc:
            self._raise_if_unreachable(exc)
            raise

    def _other_kind(self) -> str:
        """What the file is, when it is a file cadstore writes beside a zip, with the
        dataset beside it if any: the end of the message refusing it, or ``""``.

        A dataset's ``.infoset`` or ``.attribset`` (Parquet) and its ``.flow`` manifest
        (JSON) sit beside it with the same stem, and are easily given for it.
        """
        try:
            kind = other_kind(self._read_at(0, 4), "zip")
        except Exception:  # the refusal that follows says what went wrong
            return ""
        if kind is None:
            return ""
        dataset = file_beside(self.location, self._fs.isfile, ".dataset")
        return f"but {kind}" + (f"; the dataset beside it is {dataset}" if dataset else "")

    def _raise_if_unreachable(self, exc: Exception) -> None:
        """Raise the file system's access or availability error for ``exc``, if it is one.

        Reads through a remote file object raise the client library's errors; a server that
        went away must not look like a corrupt file.
        """
        translated = self._fs.translate(self.location, exc)
        if translated is not exc:
            raise translated from exc

    def _entries_from_zipfile(self) -> tuple[list[ZipMember], int]:
        """:func:`read_central_directory` by ``zipfile`` (ZIP64, multi-disk archives),
        whose sizes and offsets are checked as that function's are."""
        self._fh.seek(0)
        archive = self._zip = zipfile.ZipFile(self._fh, "r")
        entries = [
            ZipMember(
                i.filename,
                i.compress_type,
                i.flag_bits,
                i.CRC,
                i.compress_size,
                i.file_size,
                i.header_offset,
                # zipfile decoded the stored bytes with this rule; encoding restores them.
                i.orig_filename.encode("utf-8" if i.flag_bits & 0x800 else "cp437"),
            )
            for i in archive.infolist()
        ]
        problem = _misplaced(entries, archive.start_dir)
        if problem:
            raise ValueError(problem)
        return entries, archive.start_dir

    def get(self, key: str) -> bytes | None:  # docstring inherited
        info = self._member(key)
        if info is None:
            return None
        if info.method == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise CorruptStoreError(self.location, f"stored member {key!r} has inconsistent sizes")
        if info.compress_size > self._size:
            raise CorruptStoreError(self.location, f"member {key!r} is larger than the file")
        # The declared size, checked before a byte is read or inflated: a deflated member
        # of a few kilobytes may declare (and really inflate to) a gigabyte.
        self._check_declared(key, info.file_size, inflated=info.method != zipfile.ZIP_STORED)
        if info.method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            return self._read_member(key, info)
        return self._read_with_zipfile(key, info)

    def _read_member(self, key: str, info: ZipMember) -> bytes:
        """Read a stored or deflated member with positioned reads; check sizes and CRC.

        ``zipfile`` builds a file object per member; for the many small chunks of an item
        that costs more than the read itself.
        """
        start = self._data_offsets.get(key)
        if (
            start is None
            and self._image is None
            and (self._fd is None or info.compress_size <= _ONE_READ_BYTES)
        ):
            # First read of this member: fetch the local header and the data in one read
            # (one request on an object store), assuming the header repeats the central
            # directory's name and has no extra field, as cadstore and most writers do;
            # otherwise read again. Locally only for small members: slicing off the
            # header copies the data.
            raw_name = info.raw_name
            name_len = len(raw_name)
            blob = self._read_at(info.header_offset, 30 + name_len + info.compress_size)
            if (
                len(blob) == 30 + name_len + info.compress_size
                and blob[:4] == b"PK\x03\x04"
                and _LOCAL_LENGTHS.unpack_from(blob, 26) == (name_len, 0)
                and blob[30 : 30 + name_len] == raw_name
            ):
                self._data_offsets[key] = info.header_offset + 30 + name_len
                return self._check_member(key, info, blob[30 + name_len :])
        start = self._data_start(key, info)
        return self._check_member(key, info, self._read_at(start, info.compress_size))

    def _check_member(self, key: str, info: ZipMember, data: bytes) -> bytes:
        """Inflate ``data`` if needed and verify its size and CRC."""
        if len(data) != info.compress_size:
            raise CorruptStoreError(self.location, f"member {key!r} is truncated")
        if info.method == zipfile.ZIP_DEFLATED:
            inflater = zlib.decompressobj(-15)
            try:
                # Never inflate past the declared size: a bomb stops at the limit.
                data = inflater.decompress(data, info.file_size + 1)
            except zlib.error as exc:
                raise CorruptStoreError(self.location, f"member {key!r}: {exc}") from exc
            if len(data) != info.file_size:
                raise CorruptStoreError(
                    self.location,
                    f"member {key!r} inflates to a size other than its header says",
                )
        if zlib.crc32(data) != info.crc:
            raise CorruptStoreError(self.location, f"member {key!r} is corrupt (CRC mismatch)")
        return data

    def _read_with_zipfile(self, key: str, info: ZipMember) -> bytes:
        try:
            with self._lock:
                if self._zip is None:
                    self._fh.seek(0)
                    self._zip = zipfile.ZipFile(self._fh, "r")
                with self._zip.open(key) as member:
                    # At most one byte past the declared size, to catch lying headers.
                    data = member.read(info.file_size + 1)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # zipfile and its decompressors raise many types
            self._raise_if_unreachable(exc)
            raise CorruptStoreError(self.location, f"cannot read member {key!r}: {exc}") from exc
        if len(data) != info.file_size:
            raise CorruptStoreError(
                self.location, f"member {key!r} has {len(data)} bytes, header says {info.file_size}"
            )
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes | None:  # docstring inherited
        info = self._member(key)
        if info is None:
            return None
        if info.method != zipfile.ZIP_STORED or start < 0 or length < 0:
            return super().get_range(key, start, length)
        offset, n = self._span(key, info, start, length)
        return self._read_at(offset, n) if n else b""

    def _span(self, key: str, info: ZipMember, start: int, length: int) -> tuple[int, int]:
        """File offset and length of bytes ``[start, start + length)`` of a stored member.

        The range is cut at the member's end. Ranged reads skip the member CRC (it covers
        the whole member); the decoders that consume these bytes check their own sizes,
        and the index entries are bounded.
        """
        stop = min(info.file_size, start + length)
        return self._data_start(key, info) + start, max(0, stop - start)

    @property
    def batches_reads(self) -> bool:  # docstring inherited
        return self._image is None and self._fd is None and self._fs.remote

    def get_ranges(  # docstring inherited
        self, requests: Sequence[tuple[str, int, int]]
    ) -> list[bytes | None]:
        if not self.batches_reads:
            return super().get_ranges(requests)
        out: list[bytes | None] = [None] * len(requests)
        stored: list[tuple[int, str, ZipMember, int, int]] = []
        for i, (key, start, length) in enumerate(requests):
            info = self._member(key)
            if info is None:
                continue
            if info.method != zipfile.ZIP_STORED or start < 0 or length < 0:
                out[i] = self.get_range(key, start, length)
            else:
                stored.append((i, key, info, start, length))
        # Where each member's data starts is in its local header: one batch for those
        # not seen yet, then one for the data.
        unknown = {key: info for _, key, info, _, _ in stored if key not in self._data_offsets}
        if unknown:
            headers = self._read_many(
                [(info.header_offset, 30 + len(info.raw_name)) for info in unknown.values()]
            )
            for (key, info), header in zip(unknown.items(), headers, strict=True):
                self._parse_local_header(key, info, header)
        spans = [self._span(key, info, start, length) for _, key, info, start, length in stored]
        for (i, *_), data in zip(stored, self._read_many(spans), strict=True):
            out[i] = data
        return out

    def _read_spans(self, spans: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(offset, length)``, read together where that is faster
        (:attr:`batches_reads`: an object store), else one after another.

        For the small reads a reader knows it needs up front (local headers); slices of
        the file when it is held whole.
        """
        if self.batches_reads:
            return self._read_many(spans)
        return [self._read_at(offset, n) for offset, n in spans]

    def _read_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        try:
            got = self._fs.read_ranges(self._fh, self.location, ranges)
        except Exception as exc:
            self._raise_if_unreachable(exc)
            raise
        if got is None:
            return [self._read_at(offset, n) if n else b"" for offset, n in ranges]
        return got

    def size_of(self, key: str) -> int | None:  # docstring inherited
        info = self._member(key)
        return None if info is None else info.file_size

    def _data_start(self, key: str, info: ZipMember) -> int:
        start = self._data_offsets.get(key)
        if start is None:
            header = self._read_at(info.header_offset, 30 + len(info.raw_name))
            start = self._parse_local_header(key, info, header)
        return start

    def _parse_local_header(self, key: str, info: ZipMember, header: bytes) -> int:
        """Check member ``key``'s local header; remember and return where its data starts.

        ``header`` is the 30 fixed bytes and the name: a local header naming another member
        than the central directory does is corruption, as ``zipfile`` also decides.
        """
        raw_name = info.raw_name
        if len(header) != 30 + len(raw_name) or header[:4] != b"PK\x03\x04":
            raise CorruptStoreError(self.location, f"bad local header for member {key!r}")
        name_len, extra_len = _LOCAL_LENGTHS.unpack_from(header, 26)
        if name_len != len(raw_name) or header[30:] != raw_name:
            raise CorruptStoreError(
                self.location,
                f"local header of member {key!r} does not repeat its name (corrupt file)",
            )
        beyond = self._beyond_its_space(info, extra_len)
        if beyond is not None:
            raise CorruptStoreError(
                self.location,
                f"member {key!r}: its local header's extra field ({extra_len} bytes) puts its "
                f"{info.compress_size} bytes past {beyond} (corrupt file)",
            )
        start: int = info.header_offset + 30 + name_len + extra_len
        self._data_offsets[key] = start
        return start

    def _beyond_its_space(self, info: ZipMember, extra_len: int) -> str | None:
        """What member ``info``'s data would reach, read after a local extra field of
        ``extra_len`` bytes, when that is past its space; ``None`` when it lies within.

        A member's space runs from its local header to the next member's (the last one's
        to the central directory). Opening the file checked that each member's header,
        name and stored bytes fit in it (:func:`_misplaced`), but the extra field's length
        is in the local header alone: a crafted one would make a read cover the next
        member's header or the central directory. Only a member whose local header gives
        an extra field needs looking at: the members' offsets are sorted then, once (a
        file cadstore writes has none).
        """
        end = info.header_offset + 30 + len(info.raw_name) + info.compress_size
        if not extra_len:
            return None  # within its space: checked when the file was opened
        offsets = self._header_offsets
        if offsets is None:
            offsets = self._header_offsets = sorted(
                [m.header_offset for m in self._members.values()] + self._unread_entries_at
            )
        after = bisect.bisect_right(offsets, info.header_offset)
        if after < len(offsets):
            limit, what = offsets[after], "the next entry's local header"
        else:
            limit, what = self._directory_at, "the central directory's start"
        if end + extra_len > limit:
            return f"{what} (at {limit})"
        return None

    def keys(self) -> Iterable[str]:  # docstring inherited
        return self._members.keys()

    def stored_name(self, key: str) -> bytes:  # docstring inherited
        info = self._members.get(key)
        return super().stored_name(key) if info is None else info.raw_name

    def member_size(self, key: str) -> int:
        """Return the stored (compressed) size of a member, 0 if absent."""
        info = self._member(key)
        return 0 if info is None else info.compress_size

    def total_bytes(self) -> int:  # docstring inherited
        return self._size

    def __contains__(self, key: str) -> bool:  # docstring inherited
        # A member listed under a damaged name is held under the name its local header
        # gives (reading it raises); finding that out may read local headers.
        return key in self._members or self._renamed_as(key) is not None

    def close(self) -> None:  # docstring inherited
        try:
            if self._zip is not None:
                self._zip.close()
        finally:
            self._fh.close()

    def _continues_in_child(self) -> bool:  # docstring inherited
        # Positioned reads of a local file share nothing with the parent (the file
        # position two processes would share is never used), and the child reads the
        # very file the parent opened, whatever has replaced it at its path since. Read
        # through zipfile or a file object (another compression method, a remote file),
        # the members would move that shared position: opened again. (A ZIP64 archive's
        # directory is listed through zipfile, but its members are still read by
        # position.)
        self._lock, free = renew_lock(self._lock, threading.Lock)
        return (
            free
            and self._fd is not None
            and all(
                m.method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
                for m in self._members.values()
            )
        )


class DirectorySource(KeySource):
    """The files below a directory, keyed by their ``/``-separated relative path.

    Its size is the sum of every file below it, a walk of the whole tree (a directory
    dataset's chunk folders, by the million in a large one): its decode budget asks it
    only when a charge needs it, so opening the store lists no folder.
    """

    _sized_when_needed = True

    def __init__(self, root: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.location = root
        self.limits = limits
        self._root = os.path.realpath(root)

    def _path(self, key: str) -> str | None:
        if check_member_name(key):
            return None
        # A symlink inside the store must not reach outside it.
        return path_inside(self._root, key)

    def _file(self, key: str) -> str | None:
        """The path of the regular file holding ``key``; ``None`` where there is none.

        Only a path that leads to nothing (:data:`NAMES_NOTHING`), or to something other
        than a regular file (a folder; a pipe, which would block a read), is absent: a
        ``stat`` the file system fails (an EIO, a refusal) is the
        :class:`~cadstore.errors.StorageError` of its kind naming the store and the key,
        never a missing member that an item would read as fill values.
        """
        path = self._path(key)
        if path is None:
            return None
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            if exc.errno in NAMES_NOTHING:
                return None
            raise self._failed(key, exc) from exc
        return path if stat.S_ISREG(mode) else None

    def _failed(self, key: str, exc: OSError) -> StorageError:
        return os_storage_error(self.location, exc, f"reading {key!r}")

    def get(self, key: str) -> bytes | None:  # docstring inherited
        path = self._file(key)
        if path is None:
            return None
        try:
            with open(path, "rb") as fh:
                # The size of the file opened, checked before it is read.
                size = os.fstat(fh.fileno()).st_size
                self._check_declared(key, size, inflated=False)
                return fh.read(size)
        except StorageError:
            raise  # a limit the file is over (cadstore's errors are OSErrors too)
        except FileNotFoundError:
            return None  # removed since its stat
        except OSError as exc:
            raise self._failed(key, exc) from exc

    def get_range(self, key: str, start: int, length: int) -> bytes | None:  # docstring inherited
        if start < 0 or length < 0:
            return None
        path = self._file(key)
        if path is None:
            return None
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                return fh.read(length)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._failed(key, exc) from exc

    def size_of(self, key: str) -> int | None:  # docstring inherited
        path = self._file(key)
        if path is None:
            return None
        try:
            return os.path.getsize(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._failed(key, exc) from exc

    def keys(self) -> Iterator[str]:  # docstring inherited
        yield from (rel for rel, _ in LocalFileSystem().walk_files(self._root))

    def keys_outside(self, folders: Collection[str]) -> Iterator[str]:  # docstring inherited
        walked = LocalFileSystem().walk_files(self._root, skip=frozenset(folders))
        yield from (rel for rel, _ in walked)

    def total_bytes(self) -> int:  # docstring inherited
        try:
            return sum(os.path.getsize(p) for _, p in LocalFileSystem().walk_files(self._root))
        except OSError as exc:
            raise os_storage_error(self.location, exc, "reading its files' sizes") from exc

    def _continues_in_child(self) -> bool:  # docstring inherited
        # Files are opened by path at each read: nothing is shared with the parent.
        return True


#: How many keys a :class:`PrefixSource` remembers it did not find (see its ``locate``).
_ABSENT_KEPT = 4096


class PrefixSource(KeySource):
    """The objects below a prefix of an object store: a Zarr directory store on S3.

    The keys and sizes are listed once, when the source is created; the store is being
    opened, so nothing else writes below the prefix meanwhile. Keys that are not safe
    store keys are left out.

    Parameters
    ----------
    fs
        The object store.
    root
        The prefix (a URL).
    limits
        Safety limits for reading.
    """

    def __init__(self, fs: FileSystem, root: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.location = root
        self.limits = limits
        self._fs = fs
        self._sizes = {k: n for k, n in fs.file_sizes(root).items() if not check_member_name(k)}
        # Keys the listing lacked and the store did not have either (see locate).
        self._absent: set[str] = set()

    def get(self, key: str) -> bytes | None:  # docstring inherited
        size = self._sizes.get(key)
        if size is None:
            return None
        self._check_declared(key, size, inflated=False)
        try:
            return self._fs.read_bytes(self._fs.join(self.location, key))
        except FileNotFoundError:
            return None

    def get_range(self, key: str, start: int, length: int) -> bytes | None:  # docstring inherited
        return self.get_ranges([(key, start, length)])[0]

    def get_ranges(  # docstring inherited
        self, requests: Sequence[tuple[str, int, int]]
    ) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(requests)
        wanted: list[tuple[int, tuple[str, int, int]]] = []
        for i, (key, start, length) in enumerate(requests):
            size = self._sizes.get(key)
            if size is None:
                continue
            if start < 0 or length < 0:
                raise ValueError(f"negative start or length for {key!r}")
            stop = min(size, start + length)
            if stop <= start:
                out[i] = b""
            else:
                wanted.append((i, (self._fs.join(self.location, key), start, stop - start)))
        got = self._fs.read_object_ranges([request for _, request in wanted])
        for (i, _), data in zip(wanted, got, strict=True):
            out[i] = data
        return out

    @property
    def batches_reads(self) -> bool:  # docstring inherited
        return True

    def keys(self) -> Iterable[str]:  # docstring inherited
        return self._sizes.keys()

    def size_of(self, key: str) -> int | None:  # docstring inherited
        return self._sizes.get(key)

    def locate(self, key: str) -> int | None:  # docstring inherited
        size = self._sizes.get(key)
        if size is not None or key in self._absent or check_member_name(key):
            return size
        try:
            size = self._fs.size(self._fs.join(self.location, key))
        except FileNotFoundError:
            # Asked once: a damaged dataset is not asked again at every read. The keys
            # asked for are the caller's, so at most _ABSENT_KEPT are kept (emptied when full).
            if len(self._absent) >= _ABSENT_KEPT:
                self._absent.clear()
            self._absent.add(key)
            return None
        # Found by asking for it: reads of it go to the store from now on.
        self._sizes[key] = size
        return size

    def total_bytes(self) -> int:  # docstring inherited
        return sum(self._sizes.values())

    def __contains__(self, key: str) -> bool:
        return key in self._sizes


def open_source(
    location: Location,
    limits: Limits = DEFAULT_LIMITS,
    *,
    kind: Literal["zip", "directory"] | None = None,
    what: str = "store",
) -> KeySource:
    """Open the store at ``location`` for reading: a zip file or a directory of members.

    Parameters
    ----------
    location
        A zip file (``.data`` item, ``.dataset``) or a directory store; on an object
        store an object, or a prefix of objects.
    limits
        Safety limits for reading.
    kind
        What the caller expects there (``"zip"`` or ``"directory"``), which saves the
        probe of an object store; by default it is found out. A local path is checked
        either way (one ``stat``): a caller's expectation is no proof that the path is not
        a named pipe or a device, which would block or never end.
    what
        What the caller expects there (``"item"``, ``"dataset"``), for the message when
        nothing is.

    Returns
    -------
    KeySource
        A :class:`ZipSource`, :class:`DirectorySource` or :class:`PrefixSource`.

    Raises
    ------
    CorruptStoreError
        If nothing is there, it is neither a regular file nor a directory (refused before
        anything is read, so a named pipe cannot hang the reader), or its bytes are not a
        store.
    StorageError
        If the file system refuses to open or read it (an OSError: EIO, EACCES), of the
        error's kind (:func:`~cadstore.errors.os_storage_error`: a
        :class:`~cadstore.errors.StorageAccessError` for a refused permission), naming
        it: it is not corrupt, and may read once the disk is back.
    StorageAccessError, StorageUnavailableError
        If the object store refuses or cannot be reached: the store is at fault, not it.
    """
    fs, path = location.fs, location.path
    try:
        if kind is None:
            kind = _kind_of(location, what)
        elif not location.remote and _kind_of(location, what) != kind:
            raise CorruptStoreError(
                path, f"a {'directory' if kind == 'zip' else 'file'}, not the expected {kind}"
            )
        if kind == "directory":
            if location.remote:
                return PrefixSource(fs, path, limits)
            return DirectorySource(path, limits)
        return ZipSource(path, fs=fs, limits=limits)
    except StorageError:
        raise
    except OSError as exc:
        raise os_storage_error(path, exc, "opening it") from exc


#: The errors of a ``stat`` that say the path leads to nothing (no file, a file where a
#: directory was expected, a loop of symbolic links, a name too long), which is the path's
#: fault, unlike a refusal (EACCES) or a failing disk (EIO).
NAMES_NOTHING: frozenset[int] = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG}
)


def _kind_of(location: Location, what: str) -> Literal["zip", "directory"]:
    fs, path = location.fs, location.path
    if location.remote:
        # One HEAD answers for the usual zip; only a miss costs a listing.
        if fs.isfile(path):
            return "zip"
        if fs.isdir(path):
            return "directory"
        raise CorruptStoreError(path, f"no such {what} (no object and no prefix)")
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno in NAMES_NOTHING:
            detail = "" if isinstance(exc, FileNotFoundError) else f" ({os_problem(exc)})"
            raise CorruptStoreError(path, f"no such {what}{detail}") from None
        raise  # the file system refused (EACCES, EIO): open_source reports it
    if stat.S_ISDIR(mode):
        return "directory"
    if not stat.S_ISREG(mode):
        article = "an" if what[:1] in "aeiou" else "a"
        raise CorruptStoreError(
            path, f"not a regular file or directory, so not {article} {what}; not reading it"
        )
    return "zip"
