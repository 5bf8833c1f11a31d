"""Key-value views of a store: a zip file, a directory, or a dict in memory.

Every view returns bytes by key, lists its keys, and reports the size of what it holds
(for the expansion limit). The zip view validates every member name (no absolute paths,
no ``..``, no backslashes or control characters, no duplicates) and every declared size
before it reads, and turns every failure of ``zipfile`` into a
:class:`~cadstore.errors.CorruptStoreError` naming the file. Nothing is ever extracted.
"""

from __future__ import annotations

import os
import re
import threading
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import IO

from cadstore.errors import CorruptStoreError, LimitExceededError
from cadstore.format.limits import DEFAULT_LIMITS, Limits
from cadstore.fs import FileSystem, LocalFileSystem

__all__ = ["DictSource", "DirectorySource", "KeySource", "ZipSource", "check_member_name"]

# Anything that could escape a root or confuse a file system: control characters and
# backslash anywhere; a leading slash or drive letter; an empty, "." or ".." segment.
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f\\]|^/|^[A-Za-z]:|(?:^|/)\.{0,2}(?:/|$)")


def check_member_name(name: str) -> str | None:
    """Return why ``name`` is not a safe store key, or ``None`` if it is."""
    if not name:
        return "empty name"
    match = _UNSAFE_NAME.search(name)
    if match is None:
        return None
    text = match.group()
    if (text == "/" and match.start() == 0) or (len(text) == 2 and text[1] == ":"):
        return "absolute path"
    if text.strip("/.") == "":
        return "empty, '.' or '..' path segment"
    return "control character or backslash"


class KeySource(ABC):
    """Read-only bytes by key."""

    #: Path shown in error messages.
    location: str

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """Return the bytes stored at ``key``, or ``None`` if absent."""

    @abstractmethod
    def keys(self) -> Iterable[str]:
        """Return every key."""

    @abstractmethod
    def total_bytes(self) -> int:
        """Return the size of the underlying file(s)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

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


class ZipSource(KeySource):
    """The members of a zip file, read in place.

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
        If the file is not a zip, or a member name or size is unsafe.
    """

    def __init__(
        self, path: str, fs: FileSystem | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.location = path
        self.limits = limits
        self._fs = fs or LocalFileSystem()
        self._lock = threading.Lock()
        try:
            self._fh: IO[bytes] = self._fs.open_read(path)
        except FileNotFoundError as exc:
            raise CorruptStoreError(path, "no such file") from exc
        except IsADirectoryError as exc:
            raise CorruptStoreError(path, "is a directory, not a zip file") from exc
        try:
            self._size = self._fh.seek(0, os.SEEK_END)
            self._fh.seek(0)
            self._zip = zipfile.ZipFile(self._fh, "r")
            infos = self._zip.infolist()
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            OSError,
            ValueError,
            EOFError,
            NotImplementedError,
            UnicodeDecodeError,
            RuntimeError,
        ) as exc:
            self._fh.close()
            raise CorruptStoreError(path, f"not a readable zip file ({exc})") from exc
        if len(infos) > limits.max_members:
            self.close()
            raise LimitExceededError(
                path, f"{len(infos)} zip members exceed max_members={limits.max_members}"
            )
        self._members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            if name.endswith("/"):
                continue
            problem = check_member_name(name)
            if problem:
                self.close()
                raise CorruptStoreError(path, f"unsafe zip member name {name!r}: {problem}")
            if name in self._members:
                self.close()
                raise CorruptStoreError(path, f"duplicate zip member {name!r}")
            if info.flag_bits & 0x1:
                self.close()
                raise CorruptStoreError(path, f"zip member {name!r} is encrypted")
            self._members[name] = info

    def get(self, key: str) -> bytes | None:  # docstring inherited
        info = self._members.get(key)
        if info is None:
            return None
        limit = self.limits.max_chunk_bytes
        if info.file_size > limit:
            raise LimitExceededError(
                self.location,
                f"member {key!r} declares {info.file_size} "
                f"bytes, more than max_chunk_bytes={limit}",
            )
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise CorruptStoreError(self.location, f"stored member {key!r} has inconsistent sizes")
        if info.compress_size > self._size:
            raise CorruptStoreError(self.location, f"member {key!r} is larger than the file")
        try:
            with self._lock, self._zip.open(info) as member:
                # Read at most one byte past the declared size to catch lying headers.
                data = member.read(info.file_size + 1)
        except (
            zipfile.BadZipFile,
            OSError,
            ValueError,
            EOFError,
            NotImplementedError,
            RuntimeError,
            UnicodeDecodeError,
            Exception,
        ) as exc:
            if isinstance(exc, MemoryError | KeyboardInterrupt):
                raise
            raise CorruptStoreError(self.location, f"cannot read member {key!r}: {exc}") from exc
        if len(data) != info.file_size:
            raise CorruptStoreError(
                self.location, f"member {key!r} has {len(data)} bytes, header says {info.file_size}"
            )
        return data

    def keys(self) -> Iterable[str]:  # docstring inherited
        return self._members.keys()

    def member_size(self, key: str) -> int:
        """Return the stored (compressed) size of a member, 0 if absent."""
        info = self._members.get(key)
        return 0 if info is None else info.compress_size

    def total_bytes(self) -> int:  # docstring inherited
        return self._size

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def close(self) -> None:  # docstring inherited
        try:
            zf = getattr(self, "_zip", None)
            if zf is not None:
                zf.close()
        finally:
            self._fh.close()


class DirectorySource(KeySource):
    """The files below a directory, keyed by their ``/``-separated relative path."""

    def __init__(self, root: str) -> None:
        self.location = root
        self._root = os.path.realpath(root)

    def _path(self, key: str) -> str | None:
        if check_member_name(key):
            return None
        full = os.path.realpath(os.path.join(self._root, *key.split("/")))
        # A symlink inside the store must not reach outside it.
        if os.path.commonpath([self._root, full]) != self._root:
            return None
        return full

    def get(self, key: str) -> bytes | None:  # docstring inherited
        path = self._path(key)
        if path is None or not os.path.isfile(path):
            return None
        with open(path, "rb") as fh:
            return fh.read()

    def keys(self) -> Iterator[str]:  # docstring inherited
        yield from (rel for rel, _ in LocalFileSystem().walk_files(self._root))

    def total_bytes(self) -> int:  # docstring inherited
        return sum(os.path.getsize(p) for _, p in LocalFileSystem().walk_files(self._root))
