"""The one place through which cadstore touches files.

Backends, the merger and the CLI never call ``open``/``os`` on user paths directly; they
ask :func:`filesystem_for` for a :class:`FileSystem` and use its small set of operations.
Local paths get :class:`LocalFileSystem`; URLs such as ``s3://bucket/key`` are reserved for
an fsspec-backed implementation of the same interface.

The operations that publish a file (:meth:`FileSystem.write_atomic`) never leave a partial
file visible: on local disk they write a temporary file in the destination directory,
fsync it, rename it over the destination and fsync the directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = [
    "TEMP_PREFIX",
    "FileSystem",
    "LocalFileSystem",
    "filesystem_for",
    "is_url",
]

#: Prefix of every temporary file cadstore creates next to a destination.
TEMP_PREFIX = ".tmp-cadstore-"


def is_url(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` is a URL (``scheme://...``) rather than a local path."""
    text = os.fspath(path)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme != "file"


class FileSystem(ABC):
    """The file operations cadstore needs, on one kind of storage."""

    @abstractmethod
    def exists(self, path: str) -> bool:
        """Return whether ``path`` exists."""

    @abstractmethod
    def isdir(self, path: str) -> bool:
        """Return whether ``path`` is a directory."""

    @abstractmethod
    def isfile(self, path: str) -> bool:
        """Return whether ``path`` is a regular file."""

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Return the names (not paths) in directory ``path``."""

    @abstractmethod
    def makedirs(self, path: str) -> None:
        """Create ``path`` and its parents; no error if it exists."""

    @abstractmethod
    def size(self, path: str) -> int:
        """Return the size of file ``path`` in bytes."""

    @abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """Return the contents of file ``path``."""

    @abstractmethod
    def open_read(self, path: str) -> IO[bytes]:
        """Open ``path`` for random-access binary reading."""

    @abstractmethod
    def write_atomic(self, path: str, writer: Callable[[IO[bytes]], Any]) -> int:
        """Publish ``path`` atomically: ``writer`` fills a temporary file that replaces it.

        Returns
        -------
        int
            The size of the published file.
        """

    @abstractmethod
    def remove(self, path: str) -> None:
        """Delete file ``path``; no error if it is already gone."""

    @abstractmethod
    def rmtree(self, path: str) -> None:
        """Delete directory ``path`` recursively; no error if it is already gone."""

    @abstractmethod
    def copy_file(self, src: str, dst: str) -> None:
        """Copy file ``src`` to ``dst`` (atomically at the destination)."""

    def join(self, *parts: str) -> str:
        """Join path components."""
        return os.path.join(*parts)

    def dirname(self, path: str) -> str:
        """Return the parent of ``path``."""
        return os.path.dirname(path)

    def basename(self, path: str) -> str:
        """Return the last component of ``path``."""
        return os.path.basename(path)

    def write_bytes_atomic(self, path: str, data: bytes) -> int:
        """Publish ``data`` at ``path`` atomically; return its size."""
        return self.write_atomic(path, lambda fh: fh.write(data))


class LocalFileSystem(FileSystem):
    """Local disk.

    Parameters
    ----------
    durable
        When true (the default), published files and their directory entries are fsynced,
        so a file that is visible survives a power cut too. Turn off only for scratch data.
    """

    def __init__(self, *, durable: bool = True) -> None:
        self.durable = durable

    def exists(self, path: str) -> bool:  # docstring inherited
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def isfile(self, path: str) -> bool:
        return os.path.isfile(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    def open_read(self, path: str) -> IO[bytes]:
        return open(path, "rb")

    def write_atomic(self, path: str, writer: Callable[[IO[bytes]], Any]) -> int:
        directory = os.path.dirname(os.path.abspath(path))
        # O_EXCL on a random name in the destination's directory: same file system (so the
        # rename is atomic) and no clash with another writer; cheaper than mkstemp.
        tmp = os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(tmp, flags, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                fh.flush()
                if self.durable:
                    os.fsync(fh.fileno())
                size = fh.tell()
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if self.durable:
            _fsync_dir(directory)
        return size

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def rmtree(self, path: str) -> None:
        if os.path.islink(path):
            # Never follow a symlink planted where a store directory should be.
            os.unlink(path)
            return
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)

    def copy_file(self, src: str, dst: str) -> None:
        with open(src, "rb") as fin:
            self.write_atomic(dst, lambda fout: shutil.copyfileobj(fin, fout))

    def walk_files(self, path: str) -> Iterator[tuple[str, str]]:
        """Yield ``(relative posix path, absolute path)`` of every regular file below ``path``.

        Symlinks are skipped, so a planted link cannot pull outside files into a store.
        """
        for root, dirs, files in os.walk(path, followlinks=False):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
            for name in files:
                full = os.path.join(root, name)
                if stat.S_ISREG(os.lstat(full).st_mode):
                    rel = os.path.relpath(full, path).replace(os.sep, "/")
                    yield rel, full


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - some file systems refuse directory fsync
        pass
    finally:
        os.close(dfd)


_LOCAL = LocalFileSystem()


def filesystem_for(
    path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> tuple[FileSystem, str]:
    """Return the file system that serves ``path`` and the path as that file system sees it.

    Parameters
    ----------
    path
        A local path or a URL.
    storage_options
        Options for a remote file system (credentials, endpoint); ignored for local paths.

    Raises
    ------
    NotImplementedError
        For URLs until remote file systems are available.
    """
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if is_url(text):
        raise NotImplementedError(f"remote paths such as {text!r} are not supported yet")
    if storage_options:
        raise ValueError("storage_options only apply to remote URLs such as s3://...")
    return _LOCAL, text
