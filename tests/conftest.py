"""Shared fixtures (realistic items written as real .data files) and test helpers."""

from __future__ import annotations

import ctypes
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cadstore.synthetic import iter_items, write_item


def _populates() -> bool:
    """Whether ``madvise(MADV_POPULATE_WRITE)`` works here (tried on one page)."""
    import mmap

    from cadstore.io.native import populate_pages

    area = mmap.mmap(-1, mmap.PAGESIZE)
    done = populate_pages(ctypes.addressof(ctypes.c_char.from_buffer(area)), mmap.PAGESIZE)
    area.close()
    return done


#: ``madvise(MADV_POPULATE_WRITE)`` works here (Linux 5.14 and later, not refused).
needs_populate_write = pytest.mark.skipif(
    not _populates(), reason="this kernel cannot map a range's pages in one call"
)


def page_faults_writing(write: Callable[[], object]) -> int:
    """The page faults this thread takes while ``write()`` runs."""
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    write()
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before


def write_arrays(path: Path, arrays: dict[str, Any], **options: Any) -> str:
    """Write one ``.data`` item holding ``arrays`` (``{key: value}``, keys nested with
    ``/``) with :class:`cadstore.OptStorage` (``options``); return its path."""
    from cadstore import OptStorage

    storage = OptStorage(path, **options)
    for key, value in arrays.items():
        storage.save_data(key, value)
    storage.compress_store()
    storage.close()
    return f"{path}.data"


def write_items(
    directory: Path, n: int, seed: int = 0, schema: Any = None, start: int = 0
) -> list[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """Write ``n`` realistic items as ``.data`` files; return (path, item, metadata)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, item, meta in iter_items(n, seed=seed, start=start):
        path = write_item(directory / f"{name}.zarr", item, meta, schema=schema)
        out.append((Path(path), item, meta))
    return out


@pytest.fixture(scope="session")
def realistic_items(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Any, Any]]:
    """Thirty realistic items, written once per test session."""
    return write_items(tmp_path_factory.mktemp("items") / "encoded", 30, seed=11)


#: An OSError by its errno name, the StorageError kind cadstore reports it as and the words
#: it says it in (``errors.os_storage_error``); a missing file (ENOENT) last, since at
#: opening it means "no such item".
OS_ERROR_KINDS = [
    ("EIO", "StorageError", "input/output error"),
    ("EACCES", "StorageAccessError", "permission denied"),
    ("ENOENT", "StorageNotFoundError", "no such file or directory"),
]


def refuse_opening(monkeypatch: pytest.MonkeyPatch, path: Path, step: str, number: int) -> None:
    """Make the file system refuse ``path`` with errno ``number`` while it is opened, at
    the lowest level, in this process (and the Dask worker threads of an in-process
    cluster): ``"stat"`` (``os.stat`` of it, as a parent directory that may not be
    searched refuses it), ``"lstat"`` (``os.lstat`` of it, which ``os.path.lexists`` and
    ``os.path.islink`` ask), ``"open"`` (``os.open`` of it) or ``"read"`` (``os.pread`` of
    its descriptor; an item of a few KiB is read whole when opened, never after). The
    error names no file, as the system's reads do not; running as root, ``chmod`` would
    refuse nothing."""
    import os

    target = str(path)
    real = {"stat": os.stat, "lstat": os.lstat, "open": os.open, "read": os.pread}[step]

    def refused(*args: Any, **kwargs: Any) -> Any:
        first = args[0]
        if step == "read":
            try:
                named = os.readlink(f"/proc/self/fd/{first}")
            except OSError:
                named = ""
        else:
            named = os.fspath(first) if isinstance(first, str | os.PathLike) else ""
        if named == target:
            raise OSError(number, os.strerror(number))
        return real(*args, **kwargs)

    name = {"stat": "stat", "lstat": "lstat", "open": "open", "read": "pread"}[step]
    monkeypatch.setattr(os, name, refused)


@pytest.fixture
def directory_sizings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directory stores whose size is asked from now on (``DirectorySource.total_bytes``,
    a walk of every file below the store), one entry per call, in order."""
    from cadstore.io.sources import DirectorySource

    sized: list[str] = []
    real_total = DirectorySource.total_bytes

    def total_bytes(self: DirectorySource) -> int:
        sized.append(self.location)
        return real_total(self)

    monkeypatch.setattr(DirectorySource, "total_bytes", total_bytes)
    return sized
