"""Publication: every way cadstore makes a file, directory or prefix appear, and only whole.

A reader of a cadstore path sees the old complete version or the new complete version,
never a partial one. This module is the one place that promise is kept:

* **a file on local disk** (:func:`write_atomic`): written to a temporary file in the
  destination's directory (same file system, so the rename is atomic), fsynced, renamed
  over the destination (``os.replace``, or ``os.link`` for an exclusive write, which fails
  if the destination exists), and the directory fsynced, so a visible file survives a
  power cut too;
* **an object on an object store**: written to local scratch space, then published with
  one upload (a PUT, or a multipart upload that becomes visible only when complete);
* **a merged dataset** (:func:`open_sink`): a zip written under a temporary name and
  renamed (or uploaded once); a directory assembled under a temporary name and swapped
  in; a prefix of objects uploaded member by member with the root ``zarr.json``, which
  readers open first, uploaded last.

Temporary files are named ``.tmp-cadstore-<pid>-<token>`` (:data:`TEMP_PREFIX`), so a
later run can tell a leftover of a killed writer from a file of a live one, and
:func:`sweep_temporaries` removes those that are stale. ``durable=False`` skips the fsyncs,
for scratch data that can be made again (reports, summaries).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from cadstore.errors import MergeError
from cadstore.io.zipwriter import ZipStreamWriter

if TYPE_CHECKING:
    from cadstore.io.filesystems import FileSystem
    from cadstore.io.location import Location

__all__ = [
    "TEMP_PREFIX",
    "DirectorySink",
    "PrefixSink",
    "Sink",
    "ZipSink",
    "conditional_writes_supported",
    "copy_file",
    "create_temporary",
    "fsync_dir",
    "move_into_place",
    "open_sink",
    "publish_file",
    "sweep_temporaries",
    "write_atomic",
    "write_bytes_atomic",
    "write_through_path",
]

#: Prefix of every temporary file cadstore creates next to a destination.
TEMP_PREFIX = ".tmp-cadstore-"
#: Temporary files older than this (seconds) are leftovers of killed writers.
STALE_TEMP_SECONDS = 3600.0

Writer = Callable[[IO[bytes]], Any]


# ---------------------------------------------------------------------------- primitives
def temporary_name(directory: str, suffix: str = "") -> str:
    """A fresh temporary path in ``directory``: :data:`TEMP_PREFIX`, the pid, a token."""
    return os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{suffix}")


def create_temporary(directory: str, suffix: str = "") -> tuple[str, int]:
    """Create a new temporary file in ``directory``, creating missing folders on the way.

    Opened exclusively (``O_EXCL``) on a random name in the destination's own directory:
    the same file system, so the final rename is atomic, and no clash with another
    writer. A destination whose folder does not exist yet gets it, as a user writing
    ``-o new_folder/x.dataset`` expects.

    Returns
    -------
    tuple of (str, int)
        The temporary path and a file descriptor open for writing.
    """
    tmp = temporary_name(directory, suffix)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        return tmp, os.open(tmp, flags, 0o666)
    except FileNotFoundError:
        # Only when the folder is missing: the common case costs no extra system call.
        os.makedirs(directory, exist_ok=True)
        return tmp, os.open(tmp, flags, 0o666)


def fsync_dir(directory: str) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable."""
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


def _local_directory(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


# ---------------------------------------------------------------------------- files
def write_atomic(
    location: Location, writer: Writer, *, exclusive: bool = False, durable: bool = True
) -> int:
    """Publish ``location`` atomically: ``writer`` fills a temporary file that replaces it.

    Parameters
    ----------
    location
        The destination.
    writer
        Called once with a binary file open for writing (and seeking).
    exclusive
        Publish only if nothing is there yet, atomically with the check: the primitive for
        commit markers and version pointers that concurrent writers race for. Object
        stores need conditional writes for it (:func:`conditional_writes_supported`).
    durable
        fsync the file and its directory (local disk). Off only for scratch data.

    Returns
    -------
    int
        The size of the published file.

    Raises
    ------
    FileExistsError
        With ``exclusive=True``, when something is there.
    """
    if location.remote:
        return _upload_through_scratch(location, writer, exclusive)
    directory = _local_directory(location.path)
    tmp, fd = create_temporary(directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
            size = fh.tell()
        if exclusive:
            # link() fails if the destination exists, atomically with creating it.
            os.link(tmp, location.path)
            os.unlink(tmp)
        else:
            os.replace(tmp, location.path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)
    return size


def write_through_path(location: Location, produce: Callable[[str], Any]) -> None:
    """Publish a file that a writer needing a path (not a file object) produces.

    Native writers (the CAD kernel's STEP and IGES writers) take a file name: ``produce``
    gets a temporary name beside ``location``, writes the whole file there, and the file
    is then fsynced and renamed over ``location``, as :func:`write_atomic` does. Local disk
    only.
    """
    directory = _local_directory(location.path)
    tmp, fd = create_temporary(directory)
    os.close(fd)
    try:
        produce(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, location.path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def _upload_through_scratch(location: Location, writer: Writer, exclusive: bool) -> int:
    # The writer needs a seekable file, and a single upload needs the whole object: local
    # scratch space holds it, whatever its size.
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX)
    try:
        with os.fdopen(fd, "w+b") as fh:
            writer(fh)
            fh.flush()
            size = os.fstat(fh.fileno()).st_size
        location.fs.upload(tmp, location.path, exclusive=exclusive)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return size


def write_bytes_atomic(
    location: Location, data: bytes, *, exclusive: bool = False, durable: bool = True
) -> int:
    """Publish ``data`` at ``location`` atomically; as :func:`write_atomic`."""
    return write_atomic(location, lambda fh: fh.write(data), exclusive=exclusive, durable=durable)


def publish_file(local_path: str, location: Location, *, durable: bool = True) -> int:
    """Publish the finished local file ``local_path`` at ``location``; return its size.

    The large-output counterpart of :func:`write_atomic` for a file already complete on
    local disk (a dataset built in scratch space): an object store gets it in one upload,
    straight from the file; local disk gets an atomic copy. ``local_path`` stays.
    """
    if location.remote:
        size = os.stat(local_path).st_size
        location.fs.upload(local_path, location.path)
        return size
    with open(local_path, "rb") as fin:
        return write_atomic(
            location, lambda fout: shutil.copyfileobj(fin, fout, 1 << 20), durable=durable
        )


def copy_file(src: Location, dst: Location, *, durable: bool = True) -> None:
    """Copy ``src`` to ``dst``, which appears whole (a server-side copy within one store)."""
    if src.remote and dst.remote and src.fs is dst.fs:
        server_copy = getattr(dst.fs, "server_copy", None)
        if server_copy is not None:
            server_copy(src.path, dst.path)
            return
    with src.open_read() as fin:
        write_atomic(dst, lambda fout: shutil.copyfileobj(fin, fout, 1 << 20), durable=durable)


def move_into_place(scratch: str, destination: str, replaced: list[str]) -> None:
    """Move the finished local directory ``scratch`` to ``destination``.

    A new destination is one rename. Into an existing one, the files listed in
    ``replaced`` (the caller checked they are its own) are removed and every file of
    ``scratch`` renamed into it, then ``scratch`` removed: each file appears whole.
    """
    if not os.path.exists(destination):
        os.rename(scratch, destination)
        return
    for name in replaced:
        os.remove(os.path.join(destination, name))
    for name in os.listdir(scratch):
        os.replace(os.path.join(scratch, name), os.path.join(destination, name))
    os.rmdir(scratch)


# ---------------------------------------------------------------------------- leftovers
_SWEPT: set[str] = set()
_SWEPT_LOCK = threading.Lock()


def sweep_temporaries(directory: Location, max_age: float = STALE_TEMP_SECONDS) -> None:
    """Delete temporary files older than ``max_age`` seconds from a local ``directory``.

    They are what killed writers left behind. A directory is swept once per process:
    listing is linear in its size, and an encoder publishing a million items into one
    directory must not list it a million times.
    """
    if directory.remote:
        return
    path = os.path.abspath(directory.path)
    with _SWEPT_LOCK:
        if path in _SWEPT:
            return
        _SWEPT.add(path)
    now = time.time()
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        if name.startswith(TEMP_PREFIX):
            full = os.path.join(path, name)
            try:
                if now - os.stat(full).st_mtime > max_age:
                    os.unlink(full)
            except OSError:
                continue


_CONDITIONAL: weakref.WeakKeyDictionary[FileSystem, dict[str, bool]] = weakref.WeakKeyDictionary()


def conditional_writes_supported(directory: Location) -> bool:
    """Return whether the store enforces exclusive writes (probed once per bucket).

    Local disk always does (``os.link``). Some S3-compatible servers accept
    ``If-None-Match: *`` and ignore it, so a second exclusive write silently replaces the
    first; only where this returns true do exclusive writes settle a race between writers.
    The probe writes one object below ``directory`` twice and deletes it.
    """
    if not directory.remote:
        return True
    known = _CONDITIONAL.setdefault(directory.fs, {})
    bucket = directory.path.split("://", 1)[-1].split("/", 1)[0]
    if bucket in known:
        return known[bucket]
    probe = directory.child(f"{TEMP_PREFIX}probe-{secrets.token_hex(8)}")
    try:
        try:
            write_bytes_atomic(probe, b"1", exclusive=True)
        except NotImplementedError:
            known[bucket] = False
            return False
        try:
            write_bytes_atomic(probe, b"2", exclusive=True)
        except FileExistsError:
            supported = True
        else:
            supported = False
    finally:
        probe.remove()
    known[bucket] = supported
    return supported


# ---------------------------------------------------------------------------- datasets
class Sink:
    """Members of a dataset being written, published together at :meth:`commit`.

    Attributes
    ----------
    location
        The destination.
    size
        Bytes published (known after :meth:`commit`).
    """

    location: Location
    size: int = 0

    def add(self, name: str, data: bytes, *, deflate: bool = False) -> None:
        """Add member ``name`` (``deflate`` compresses it: for JSON metadata)."""
        raise NotImplementedError

    def commit(self) -> None:
        """Publish everything added, at once as far as the store allows."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop everything added; nothing is published and no temporary file stays."""
        raise NotImplementedError


class ZipSink(Sink):
    """A dataset zip, written under a temporary name and published at commit.

    On local disk the temporary file sits beside the destination and is renamed over it.
    On an object store it sits in local scratch space and is uploaded once at commit (one
    PUT or one multipart upload), so the object appears only when complete.
    """

    def __init__(self, location: Location, *, durable: bool = True) -> None:
        self.location = location
        self.durable = durable
        if location.remote:
            fd, self.tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".dataset")
        else:
            self.tmp, fd = create_temporary(_local_directory(location.path))
        self._fh = os.fdopen(fd, "wb")
        self._zip = ZipStreamWriter(self._fh)

    def add(self, name: str, data: bytes, *, deflate: bool = False) -> None:
        self._zip.add(name, data, deflate=deflate)

    def commit(self) -> None:
        self._zip.close()
        self._fh.flush()
        if self.location.remote:
            self._fh.close()
            try:
                self.size = publish_file(self.tmp, self.location)
            finally:
                os.unlink(self.tmp)
            return
        if self.durable:
            os.fsync(self._fh.fileno())
        self.size = self._fh.tell()
        self._fh.close()
        os.replace(self.tmp, self.location.path)
        if self.durable:
            fsync_dir(_local_directory(self.location.path))

    def abort(self) -> None:
        self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


class DirectorySink(Sink):
    """A directory-layout dataset on local disk, assembled under a temporary name.

    At commit the old directory (if any) is moved aside, the new one renamed into place
    and the old one deleted.
    """

    def __init__(self, location: Location, *, durable: bool = True) -> None:
        self.location = location
        self.durable = durable
        self.tmp = temporary_name(_local_directory(location.path))
        os.makedirs(self.tmp)  # with the parent folders a new output needs

    def add(self, name: str, data: bytes, *, deflate: bool = False) -> None:
        target = os.path.join(self.tmp, *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "xb") as fh:
            fh.write(data)
            fh.flush()
            if self.durable:
                os.fsync(fh.fileno())
        self.size += len(data)

    def commit(self) -> None:
        path = self.location.path
        old = None
        if os.path.exists(path):
            old = f"{self.tmp}-old"
            os.replace(path, old)
        os.replace(self.tmp, path)
        if self.durable:
            fsync_dir(_local_directory(path))
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class PrefixSink(Sink):
    """A directory-layout dataset on an object store: one object per member.

    Object stores cannot swap a prefix atomically, so publication is ordered instead: an
    existing root ``zarr.json`` is deleted first (readers then find no dataset rather than
    a mix of old and new members), every member is uploaded, members of an earlier dataset
    or of a crashed attempt that this one did not write are deleted, and the root
    ``zarr.json``, which readers open first, is uploaded last. A merge that dies part-way
    leaves unreferenced objects and no root, which the next run overwrites or deletes.
    """

    _UPLOADS_IN_FLIGHT = 16

    def __init__(self, location: Location) -> None:
        self.location = location.with_path(location.path.rstrip("/"))
        self.location.makedirs()  # checks the bucket, with a clear error when it is missing
        self._old = set(self.location.fs.file_sizes(self.location.path))
        if "zarr.json" in self._old:
            self.location.child("zarr.json").remove()
        self._root: bytes | None = None
        self._written: set[str] = set()
        # Uploads are latency-bound: a few in parallel keep the connection pool busy.
        self._pool = cf.ThreadPoolExecutor(8, thread_name_prefix="cadstore-upload")
        self._pending: deque[cf.Future[int]] = deque()

    def add(self, name: str, data: bytes, *, deflate: bool = False) -> None:
        if name == "zarr.json":
            self._root = data
            return
        self._written.add(name)
        self._pending.append(self._pool.submit(write_bytes_atomic, self.location.child(name), data))
        self.size += len(data)
        while len(self._pending) > self._UPLOADS_IN_FLIGHT:
            self._pending.popleft().result()

    def commit(self) -> None:
        while self._pending:
            self._pending.popleft().result()
        for stale in sorted(self._old - self._written - {"zarr.json"}):
            self.location.child(stale).remove()
        if self._root is None:
            raise MergeError(f"{self.location}: no root zarr.json was produced")
        write_bytes_atomic(self.location.child("zarr.json"), self._root)
        self.size += len(self._root)
        self._pool.shutdown()

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        # Best effort: with the store gone, the objects stay unreferenced (no root).
        with contextlib.suppress(Exception):
            for name in sorted(self._written):
                self.location.child(name).remove()


def open_sink(location: Location, *, directory: bool = False, durable: bool = True) -> Sink:
    """Return the sink that publishes a dataset at ``location``.

    Parameters
    ----------
    location
        The ``.dataset`` to write.
    directory
        A directory store (a prefix of objects on an object store) instead of a zip.
    durable
        fsync what is published (local disk).
    """
    if not directory:
        return ZipSink(location, durable=durable)
    if location.remote:
        return PrefixSink(location)
    return DirectorySink(location, durable=durable)
