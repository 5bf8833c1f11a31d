"""Safety limits applied to every file cadstore reads.

Files may come from anywhere, and every size written inside them is attacker-controlled:
zip headers, Zarr shapes and chunk shapes, zstd frame headers. Readers check each derived
size against these limits *before* allocating, and raise
:class:`~cadstore.errors.LimitExceededError` (a :class:`~cadstore.errors.CorruptStoreError`)
naming the file and the limit. The defaults suit CAD items and merged datasets on a
workstation; pass a different :class:`Limits` to a reader to change them.

Limits per member, per chunk or per array are not enough: a small file can declare a dozen
arrays that are each within bounds, or hundreds of metadata documents. So every opened
file also gets a :class:`DecodeBudget`, the memory everything read from it may decode into
(:meth:`Limits.decoded_budget`, which grows with the size of the file), shared by all its
readers and charged before anything is allocated. With the defaults, whatever a file under
:attr:`Limits.expansion_threshold` holds decodes into at most
:attr:`Limits.expansion_allowance` bytes, so reading it keeps a process well under a few
hundred megabytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from cadstore.errors import LimitExceededError
from cadstore.forking import renew_lock

__all__ = ["DEFAULT_LIMITS", "JSON_EXPANSION", "DecodeBudget", "Limits", "is_metadata_key"]

#: The most memory ``json.loads`` makes of one byte of JSON text: ``{},`` (three bytes)
#: becomes an empty dict (64 bytes) and its pointer in a list. Metadata documents are
#: charged to a file's :class:`DecodeBudget` at this rate before they are read, since
#: their parsed objects stay in memory with the hierarchy.
JSON_EXPANSION = 24

#: Last path segments of the JSON documents of a store: Zarr metadata (v3 and v2,
#: consolidated or not) and the item's or dataset's ``metadata.json``.
METADATA_NAMES = frozenset(
    ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata", "metadata.json")
)


def is_metadata_key(key: str) -> bool:
    """Whether ``key`` names a JSON metadata document rather than a chunk."""
    return key.rpartition("/")[2] in METADATA_NAMES


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds a reader enforces.

    Attributes
    ----------
    max_metadata_bytes
        Largest JSON metadata document (``zarr.json``, ``.zarray``, ``metadata.json``).
    max_members
        Most entries in one zip file.
    max_chunk_bytes
        Largest decoded chunk.
    max_array_bytes
        Largest decoded array.
    expansion_allowance
        What any file may decode to, in total (its arrays, and its metadata documents at
        :data:`JSON_EXPANSION` bytes per byte), whatever its size: see
        :meth:`decoded_budget`. This catches a small file declaring huge shapes, many
        arrays of fill values or chunks that decompress a thousandfold (decompression
        bombs) while allowing ordinary compressible data.
    expansion_threshold
        Files up to this size get ``expansion_allowance`` and no more: a hostile file under
        10 MiB keeps a reader under 256 MiB in all. The default allowance, 192 MiB, lets
        the largest of them decode 19:1 (160 MiB, 16:1, refused a generated item of
        10.4 MB decoding to 169 MB, and one of 515 faces at zstd level 9, 8.6 MB decoding
        to 171 MB); pass more for files under the threshold compressed further.
    max_expansion
        Each byte of a file beyond ``expansion_threshold`` adds this many bytes to its
        budget. CAD items compress about 15:1 (up to about 21:1 at high zstd levels), so
        legitimate files stay well inside their budget.
    max_dims
        Most dimensions of an array.
    max_nodes
        Most arrays and groups in one hierarchy.
    """

    max_metadata_bytes: int = 16 * 1024**2
    max_members: int = 1_000_000
    max_chunk_bytes: int = 1024**3
    max_array_bytes: int = 64 * 1024**3
    expansion_allowance: int = 192 * 1024**2
    expansion_threshold: int = 10 * 1024**2
    max_expansion: int = 64
    max_dims: int = 32
    max_nodes: int = 200_000

    def __post_init__(self) -> None:
        """Refuse a negative limit: every bound holds nothing less than nothing, and a
        budget may not shrink as its file grows (:class:`DecodeBudget` relies on the
        allowance being what every budget holds at least).

        Raises
        ------
        ValueError
            Naming the limit and its value.
        """
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"Limits.{name} must not be negative, got {value}")

    def decoded_budget(self, file_bytes: int) -> int:
        """The bytes a file of ``file_bytes`` bytes may decode into, everything counted.

        ``expansion_allowance`` for a file up to ``expansion_threshold`` bytes, and
        ``max_expansion`` more bytes for each byte beyond. A small file can therefore
        never make a reader allocate more than the allowance, however it is crafted; a
        large one is allowed far more than the compression ratio of real data.
        """
        beyond = max(0, file_bytes - self.expansion_threshold)
        return self.expansion_allowance + self.max_expansion * beyond


class DecodeBudget:
    """The memory one opened file may still decode into, shared by every read of it.

    A key source (:class:`cadstore.io.sources.KeySource`) holds one; readers charge it
    *before* they allocate: the decoded size of each array, and each metadata document
    at :data:`JSON_EXPANSION` bytes per byte. A charge is made once per name (reading
    the same array again costs nothing more, since the first read already proved it
    fits), so a long-lived storage reading its arrays over and over is never refused,
    while a file whose arrays add up to more than its budget is, whatever order they are
    read in.

    The file's size may be given as a function, asked once and only when a decision
    needs it: every budget is at least :attr:`Limits.expansion_allowance`
    (:meth:`Limits.decoded_budget`), so charges adding up to no more than that fit
    whatever the size. A directory store's size is the sum of every file below it, a
    walk of the whole tree (millions of chunk files in a large dataset): opening it and
    reading within the allowance never walks it, and the decisions made are those of
    a budget sized up front.

    Parameters
    ----------
    location
        The file, for messages.
    file_bytes
        Its size, or a function returning it (asked at most once).
    limits
        The limits giving the budget (:meth:`Limits.decoded_budget`).
    """

    def __init__(self, location: str, file_bytes: int | Callable[[], int], limits: Limits) -> None:
        self.location = location
        self._limits = limits
        self._sizer: Callable[[], int] | None = None
        self._file_bytes: int | None = None
        if callable(file_bytes):
            self._sizer = file_bytes
        else:
            self._file_bytes = file_bytes
        # What every budget of these limits holds, whatever the file's size (no limit is
        # negative, so a budget only grows with its file).
        self._floor = limits.expansion_allowance
        self.used = 0
        self._charged: dict[str, int] = {}
        self._lock = threading.Lock()
        self._size_lock = threading.Lock()

    @property
    def file_bytes(self) -> int:
        """The file's size, asked of the function given (once) the first time it is needed."""
        size = self._file_bytes
        if size is None:
            with self._size_lock:
                size = self._file_bytes
                if size is None:
                    assert self._sizer is not None
                    size = self._file_bytes = self._sizer()
        return size

    @property
    def total(self) -> int:
        """The bytes the file may decode into (:meth:`Limits.decoded_budget`)."""
        return self._limits.decoded_budget(self.file_bytes)

    def fits(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more than what is charged fit in the budget: the file's
        size is asked for only when they would exceed what every budget holds."""
        need = self.used + nbytes
        return need <= self._floor or need <= self.total

    def after_fork(self) -> bool:
        """In a child process just forked: make the budget usable there, and say whether
        what it has charged can be trusted (``False`` when another thread of the parent
        was charging it as the process forked, which leaves it half updated)."""
        self._lock, free = renew_lock(self._lock, threading.Lock)
        # A size being asked for as the process forked is asked again by the child.
        self._size_lock, _ = renew_lock(self._size_lock, threading.Lock)
        return free

    @property
    def remaining(self) -> int:
        """Bytes not charged yet (the file is sized if it has not been)."""
        return max(0, self.total - self.used)

    def room(self) -> tuple[int, bool]:
        """What remains, and whether that is exact: before the file is sized, what
        remains of the least budget of these limits, which what remains is never below.

        For a reader that caps a decompression at what remains and can try again with
        :attr:`remaining` when that cap was too small, rather than size the file first.
        """
        if self._file_bytes is None:
            return max(0, self._floor - self.used), False
        return self.remaining, True

    def check(self, what: str, nbytes: int) -> None:
        """Refuse a transient allocation of ``nbytes`` (a chunk being decoded) that does
        not fit in what remains; nothing is charged.

        Raises
        ------
        LimitExceededError
            Naming the file, ``what`` and the budget.
        """
        if not self.fits(nbytes):
            raise LimitExceededError(self.location, self._message(what, nbytes))

    def check_rows(self, path: str, start: int, stop: int, nbytes: int) -> None:
        """:meth:`check` of rows ``start:stop`` of array ``path`` decoding to ``nbytes``,
        its message made only when refused (this runs for every array of every item
        read, where formatting it each time cost a reader more than the check).

        Raises
        ------
        LimitExceededError
            Naming the file, the rows and the budget.
        """
        if not self.fits(nbytes):
            self.check(f"rows {start}:{stop} of {path}", nbytes)

    def charge(self, name: str, nbytes: int, what: str | None = None) -> None:
        """Charge ``nbytes`` for ``name`` (an array path or a member key), once per name.

        A second charge for the same name costs only what it adds to the first.

        Raises
        ------
        LimitExceededError
            If the budget would be exceeded, naming the file, ``what`` (``name`` by
            default) and the budget; nothing is charged then.
        """
        with self._lock:
            before = self._charged.get(name, 0)
            if nbytes <= before:
                return
            if not self.fits(nbytes - before):
                raise LimitExceededError(self.location, self._message(what or repr(name), nbytes))
            self._charged[name] = nbytes
            self.used += nbytes - before

    def _message(self, what: str, nbytes: int) -> str:
        return (
            f"{what} would decode to {nbytes} bytes; with the {self.used} bytes already "
            f"decoded from this {self.file_bytes}-byte file that exceeds its budget of "
            f"{self.total} bytes (a decompression bomb, or a legitimate file compressed "
            "beyond the limits: see cadstore.format.limits.Limits, expansion_allowance "
            "and max_expansion)"
        )


DEFAULT_LIMITS = Limits()
