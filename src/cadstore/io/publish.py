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

Temporary files are named ``.tmp-cadstore-<pid>-<host>-<token>`` (:data:`TEMP_PREFIX`, the
writer's pid, a tag of its host), so a later run can tell a leftover of a killed writer
from a file of a live one: :func:`sweep_dead_temporaries` removes those of processes of this
host that are gone, and those older than a bound.
``durable=False`` skips the fsyncs, for scratch data that can be made again (reports,
summaries), and for files made durable together afterwards: :func:`sync_file_system`
flushes every file written on a file system in one call, which is how the encoder makes
a batch of items durable at once (:mod:`cadstore.encode.durability`).

A write that fails for want of space or on a failing disk raises a
:class:`~cadstore.errors.StorageError` naming the file being written (with the ``errno``
of the failure), and leaves no temporary file behind (:func:`writing`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

from cadstore.errors import (
    CadstoreError,
    MergeError,
    OutputExistsError,
    StorageError,
    os_problem,
    os_storage_error,
)
from cadstore.io.location import resolve
from cadstore.io.native import glibc_function
from cadstore.io.zipwriter import ZipStreamWriter

if TYPE_CHECKING:
    from cadstore.io.filesystems import FileSystem
    from cadstore.io.location import Location

__all__ = [
    "HOST_TAG",
    "append_durably",
    "TEMP_PREFIX",
    "WRITING_MARKER",
    "DirectorySink",
    "FileSystemSync",
    "PrefixSink",
    "Sink",
    "ZipSink",
    "check_output_folder",
    "check_replaceable",
    "conditional_writes_supported",
    "copy_file",
    "create_temporary",
    "exchange_paths",
    "fsync_dir",
    "fsync_file",
    "local_stat",
    "move_into_place",
    "open_sink",
    "pid_alive",
    "publish_file",
    "recover_interrupted_move",
    "recover_staged",
    "rewrite_open_file",
    "set_aside_name",
    "staging_name",
    "sweep_dead_temporaries",
    "sync_file_system",
    "write_atomic",
    "write_bytes_atomic",
    "write_through_path",
    "write_error",
    "writing",
]

#: Prefix of every temporary file cadstore creates next to a destination.
TEMP_PREFIX = ".tmp-cadstore-"
#: Temporary files older than this (seconds) are leftovers of killed writers.
STALE_TEMP_SECONDS = 3600.0

Writer = Callable[[IO[bytes]], Any]


#: Failures of a write that say the disk (not the data) is at fault.
_WRITE_ERRNOS = frozenset(
    code
    for code in (
        getattr(errno, name, None) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EIO", "EROFS")
    )
    if code is not None
)


def _host_tag() -> str:
    """A tag of the pid space this process lives in: its host name, and on Linux its pid
    namespace (containers sharing a host name, ``--net=host``, do not share pids)."""
    identity = socket.gethostname()
    with contextlib.suppress(OSError):
        identity += f"/pidns:{os.stat('/proc/self/ns/pid').st_ino}"
    return hashlib.sha1(identity.encode(), usedforsecurity=False).hexdigest()[:8]


#: Processes with the same tag can tell whether each other's pids are alive.
HOST_TAG = _host_tag()


# ---------------------------------------------------------------------------- primitives
@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn a full or failing disk met while writing ``path`` into a ``StorageError``.

    ``ENOSPC``, ``EDQUOT``, ``EFBIG``, ``EIO`` and ``EROFS`` become a
    :class:`~cadstore.errors.StorageError` naming ``path`` and keeping the ``errno``; other
    errors pass through unchanged.
    """
    try:
        yield
    except CadstoreError:
        raise
    except OSError as exc:
        if exc.errno is None or exc.errno not in _WRITE_ERRNOS:
            raise
        raise write_error(path, exc) from exc


def write_error(path: str, exc: OSError) -> StorageError:
    """The :class:`~cadstore.errors.StorageError` naming ``path`` for the failed write
    ``exc``, keeping its ``errno`` (a ``StorageError`` keeps its own problem)."""
    if isinstance(exc, StorageError):
        problem = exc.problem
    else:
        code = errno.errorcode.get(exc.errno or 0)
        problem = f"could not be written: {os_problem(exc)}" + (f" ({code})" if code else "")
    error = StorageError(path, problem)
    error.errno = exc.errno
    error.strerror = exc.strerror
    return error


def set_aside_name(staged: str) -> str:
    """Where a :class:`DirectorySink` staged at ``staged`` moves the version it replaces,
    on file systems that cannot exchange two paths (see :meth:`DirectorySink.commit`)."""
    return f"{staged}-old"


def temporary_name(directory: str, suffix: str = "") -> str:
    """A fresh temporary path in ``directory``: :data:`TEMP_PREFIX`, pid, host tag, token."""
    name = f"{TEMP_PREFIX}{os.getpid()}-{HOST_TAG}-{secrets.token_hex(6)}{suffix}"
    return os.path.join(directory, name)


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


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """glibc's ``syncfs`` (Linux), or ``None`` where there is none."""
    return glibc_function("syncfs", [ctypes.c_int])


class FileSystemSync:
    """Makes every file written on the file system holding ``directory`` durable, at once.

    Files published with ``durable=False`` are whole and atomic for every reader, but a
    power cut may lose what the kernel had not yet written back. One ``syncfs`` (Linux)
    writes back everything of that file system and commits its journal once, where
    fsyncing each file and its directory commits it twice per file: a batch of small
    files is made durable for the price of one. Elsewhere ``os.sync()`` does the same for
    every file system.

    The directory is opened once, when this object is made: Linux (5.8 and later) reports
    a failed write-back (``EIO``, ``ENOSPC``) to ``syncfs`` on a descriptor opened before
    the failure, once. So open it before the files are written, and keep using it. The
    ``os.sync()`` fallback reports no failure at all.

    Raises
    ------
    StorageError
        Naming ``directory``, when it cannot be opened.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._fd: int | None = None
        try:
            self._fd = os.open(directory, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise write_error(directory, exc) from exc

    def sync(self) -> None:
        """Write back everything written on the file system since the last sync.

        Raises
        ------
        StorageError
            Naming the directory, when the file system reports a failed write-back since
            this object was made or last synced: what was written since may be lost.
        """
        if self._fd is None:
            raise StorageError(self.directory, "synced after close()")
        function = _syncfs()
        try:
            if function is None:
                os.sync()
            elif function(self._fd):
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), self.directory)
        except OSError as exc:
            raise write_error(self.directory, exc) from exc

    def close(self) -> None:
        """Close the directory (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileSystemSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sync_file_system(directory: str) -> None:
    """Sync the file system holding ``directory`` once (see :class:`FileSystemSync`).

    Raises
    ------
    StorageError
        Naming ``directory``, when it cannot be opened or a write-back failed.
    """
    with FileSystemSync(directory) as fs:
        fs.sync()


def fsync_file(path: str) -> None:
    """Fsync the local file ``path`` on a descriptor of its own.

    Linux reports a failed write-back of a file to the first ``fsync`` made after it on
    any descriptor of that file, even one opened later: so this tells whether a file
    written earlier (and perhaps still readable only from memory) reached the disk.

    Raises
    ------
    StorageError
        Naming ``path``, when it cannot be opened or its write-back failed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from exc


def append_durably(path: str, data: bytes) -> None:
    """Append ``data`` to the local file ``path`` and fsync it (its directory too when the
    file is created): for logs whose lines say that something is done.

    A crash in the middle leaves a prefix of ``data`` (or, after a power cut, zeros) at
    the end; the reader of the log ignores an unfinished last line.

    Raises
    ------
    StorageError
        When the disk is full or failing, naming ``path``.
    """
    created = not os.path.exists(path)
    with writing(path):
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    if created:
        fsync_dir(_local_directory(path))


def _local_directory(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


# ---------------------------------------------------------------------------- files
def _folder_in_the_way(path: str) -> OutputExistsError:
    return OutputExistsError(f"{path}: is a directory; give the file to write")


def _refuse_folder(path: str) -> None:
    """Refuse a local destination that is a folder (not a link to one, which a rename
    replaces): a file cannot replace it, and the rename's error named the temporary file.

    Raises
    ------
    OutputExistsError
        Naming ``path``.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return  # nothing there (or nothing to tell): the rename decides
    if stat.S_ISDIR(mode):
        raise _folder_in_the_way(path)


def _replace_file(tmp: str, path: str) -> None:
    """``os.replace(tmp, path)``; a folder made at ``path`` meanwhile is refused as
    :func:`_refuse_folder` refuses it (the caller removes ``tmp``)."""
    try:
        os.replace(tmp, path)
    except IsADirectoryError:
        raise _folder_in_the_way(path) from None


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
    OutputExistsError
        If a folder is at ``location`` (local disk), naming it; checked before
        ``writer`` runs, and the folder is left as it was.
    """
    with writing(location.path):
        if location.remote:
            return _upload_through_scratch(location, writer, exclusive)
        if not exclusive:
            _refuse_folder(location.path)
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
                _replace_file(tmp, location.path)
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
    is then fsynced and renamed over ``location``, as :func:`write_atomic` does (a folder
    there is refused as it refuses one). Local disk only.
    """
    directory = _local_directory(location.path)
    with writing(location.path):
        _refuse_folder(location.path)
        tmp, fd = create_temporary(directory)
        os.close(fd)
        try:
            produce(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            _replace_file(tmp, location.path)
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
    """Publish ``data`` at ``location`` atomically: readers see the old file or all of
    ``data``, never part of it (as :func:`write_atomic`).

    Parameters
    ----------
    location
        The destination (:func:`cadstore.io.resolve` makes one of a path or URL).
    data
        The file's whole content.
    exclusive
        Publish only if nothing is there yet, atomically with the check.
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
    return write_atomic(location, lambda fh: fh.write(data), exclusive=exclusive, durable=durable)


def check_output_folder(location: Location) -> None:
    """Refuse an output below something that is not a folder (``notes.txt/x.dataset``),
    before any work is done for it: the folders a new output needs are made on the way,
    and one cannot be made where a file is.

    Raises
    ------
    OutputExistsError
        Naming the output and the file in its way.
    StorageError
        Of the failure's kind, naming the folder and the output, when the file system
        fails to say what is there (an EIO): a folder it cannot look up is not missing.
    """
    if location.remote:
        return  # an object store has no folders, only prefixes
    folder = _local_directory(location.path)
    doing = f"looking up the folder of {location.path}"
    while (found := local_stat(folder, doing, follow_symlinks=False)) is None:
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent
    if stat.S_ISLNK(found.st_mode):
        found = local_stat(folder, doing)  # a link to a folder is a folder
    if found is None or not stat.S_ISDIR(found.st_mode):
        what = "a link to a missing folder" if found is None else "a file"
        raise OutputExistsError(
            f"{location.path}: {folder} is {what}, not a folder; cannot write the output below it"
        )


def check_replaceable(
    location: Location, what: str, is_same_kind: Callable[[bytes], bool], head: int = 4096
) -> None:
    """Refuse to write an output over anything but an earlier output of its kind.

    An output path is the user's to choose, and one mistyped (``-o parts.dataset``)
    would otherwise replace the dataset, or any other file, without a word. What is
    there is recognised by its first ``head`` bytes.

    Parameters
    ----------
    location
        Where the output is to be written.
    what
        What the output is (``"an HTML report"``), for the message.
    is_same_kind
        Whether the first bytes of an existing file are those of such an output.

    Raises
    ------
    OutputExistsError
        If a directory, something other than a regular file, or a file of another kind
        is there, naming it.
    """
    from cadstore.errors import CorruptStoreError

    if location.isdir():
        raise _folder_in_the_way(location.path)
    try:
        with location.open_read() as fh:
            first = fh.read(head)
    except FileNotFoundError:
        return
    except CorruptStoreError:
        raise OutputExistsError(
            f"{location.path}: is not a regular file; not writing {what} there"
        ) from None
    if first and not is_same_kind(first):  # an empty file (made by touch, mktemp) is free
        raise OutputExistsError(
            f"{location.path}: exists and is not {what}; not replacing it (choose another "
            "path, or remove it first)"
        )


def publish_file(local_path: str, location: Location, *, durable: bool = True) -> int:
    """Publish the finished local file ``local_path`` at ``location``; return its size.

    The large-output counterpart of :func:`write_atomic` for a file already complete on
    local disk (a dataset built in scratch space): an object store gets it in one upload,
    straight from the file; local disk gets an atomic copy. ``local_path`` stays.
    """
    if location.remote:
        size = os.stat(local_path).st_size
        with writing(location.path):
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
    """Move the finished local directory ``scratch`` to ``destination``, in one step.

    ``replaced`` lists what the caller found in ``destination`` and checked was its own
    to replace (nothing: a new or empty destination). A new or empty destination is one
    rename, which fails if another writer has filled it meanwhile. A destination holding
    the files listed is swapped with ``scratch`` in one step where the file system can
    (:func:`exchange_paths`), and the old version, now at ``scratch``, removed: a writer
    killed at any moment leaves the old version or the new one, whole, and at worst a
    temporary that :func:`sweep_dead_temporaries` takes. Where the file system cannot
    (NFS, another system), the old version is renamed aside (:func:`set_aside_name` of
    ``scratch``) and ``scratch`` renamed into its place: two renames, each of a whole
    folder, never a mix of both versions. A writer killed between them leaves
    ``destination`` missing and both versions whole beside it; name ``scratch`` with
    :func:`staging_name` and the next writer's :func:`recover_interrupted_move` puts the
    new one in place. A ``destination`` that is a symbolic link to a folder is kept: the
    folder it leads to is replaced as a whole, as above (stage ``scratch`` beside that
    folder, so that the renames stay on one file system and a recovery finds the pair).
    A link whose folder's parent may not be written (``~/out`` leading to
    ``/shared/team/store``) cannot have that folder replaced: stage ``scratch`` elsewhere
    (beside the link, or inside the folder itself), and the files of ``scratch`` are then
    copied into the folder one by one (each appears whole), the listed ones it no longer
    holds removed, and ``scratch`` removed last; a failure midway leaves a mix of both
    versions, said by the error, with the new version still whole in ``scratch``.
    Only where this process's working directory is ``destination`` or below it (the
    folder is kept, not replaced, for whoever stands in it) are the listed files removed
    and those of ``scratch`` renamed in one by one (each file appears whole, but a writer
    killed or failing meanwhile leaves a mix).

    Raises
    ------
    OutputExistsError
        If ``destination`` no longer holds what the caller checked (another writer filled
        or changed it meanwhile); ``scratch`` is left for the caller to remove.
    StorageError
        Of the failure's kind, naming ``destination``, when the file system fails to say
        what is there (an EIO): nothing is moved, ``scratch`` is left for the caller to
        remove. When copying the files of a ``scratch`` staged elsewhere fails after one
        of them replaced a file of the folder: naming ``destination`` as given, the
        folder, what it now holds and that the new version is whole in ``scratch``, whose
        path is then the error's ``filename2``: the caller must keep it.
    """
    # Renamed by absolute path: "." or ".." cannot be renamed (EBUSY, EINVAL), and an
    # export run inside the folder it replaces says "-o .".
    scratch, destination = os.path.abspath(scratch), os.path.abspath(destination)
    asked = destination
    there = local_stat(destination, _LOOKING_UP, follow_symlinks=False)
    if there is not None and stat.S_ISLNK(there.st_mode):
        # A link to a folder: the folder it leads to is replaced as a whole, by the same
        # swap or two renames, and the link kept. Replacing the files behind the link one
        # by one left, when one failed, neither version whole.
        destination = os.path.realpath(destination)
    folder = _local_directory(destination)

    def changed() -> OutputExistsError:
        return OutputExistsError(
            f"{asked}: another writer changed it while this one was writing; "
            "nothing of this one was published (run it again)"
        )

    with contextlib.suppress(OSError):  # a folder replaced keeps its mode
        os.chmod(scratch, stat.S_IMODE(os.stat(destination).st_mode))
    # The folder this process stands in (an export run inside it, "-o ."), and with it
    # the user's shell, keeps its place: files are moved into it rather than the folder
    # replaced, which would leave them in a deleted folder that lists nothing.
    in_place = _holds_working_directory(destination)
    # Staged elsewhere than beside the folder (its parent may not be written): the folder
    # cannot be renamed, so its files are replaced.
    elsewhere = not in_place and _local_directory(scratch) != folder
    if not replaced and not in_place and not elsewhere:
        try:
            os.rename(scratch, destination)  # replaces an empty folder, never a full one
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise changed() from None
            raise
        fsync_dir(folder)
        return
    try:
        present = sorted(os.listdir(destination))
    except FileNotFoundError:
        raise changed() from None
    if _local_directory(scratch) == destination:  # staged inside the folder itself
        present.remove(os.path.basename(scratch))
    if present != sorted(replaced):
        raise changed()
    if elsewhere:
        _copy_files_in(scratch, destination, replaced, asked)
        return
    if not in_place:
        if exchange_paths(scratch, destination):
            old = scratch
        else:
            old = set_aside_name(scratch)
            os.rename(destination, old)
            try:
                os.rename(scratch, destination)
            except BaseException:
                # scratch is the caller's to remove
                _put_back(old, destination, asked if asked != destination else None)
                raise
        fsync_dir(folder)
        with contextlib.suppress(OSError):  # an old version made read-only is removed too
            os.chmod(old, stat.S_IRWXU)
        _remove(old)
        return
    for name in replaced:
        os.remove(os.path.join(destination, name))
    for name in os.listdir(scratch):
        os.replace(os.path.join(scratch, name), os.path.join(destination, name))
    os.rmdir(scratch)


def _copy_files_in(scratch: str, folder: str, replaced: list[str], asked: str) -> None:
    """Replace the files of ``folder`` by those of ``scratch``, one by one, then remove
    ``scratch``: for a folder that cannot be replaced as a whole (its parent may not be
    written), ``scratch`` staged elsewhere (see :func:`move_into_place`).

    Each file is copied in (:func:`copy_file`: it appears whole, and ``scratch`` may lie
    on another file system), then the ``replaced`` files the new version does not hold
    are removed. Copied rather than renamed, so that ``scratch`` holds the whole new
    version until the end: a failure midway leaves ``folder`` a mix of both versions, and
    the new one whole in ``scratch``.

    Raises
    ------
    OSError
        If the first copy fails: ``folder`` is as it was, ``scratch`` the caller's to
        remove.
    StorageError
        If a later step fails: naming ``asked`` (the link, as the caller gave it), the
        folder, how much of the new version it holds and that the new version is whole
        in ``scratch`` (the error's ``filename2``, which the caller must keep).
    """
    names = sorted(os.listdir(scratch))
    copied, name = 0, ""
    try:
        for name in names:
            copy_file(resolve(os.path.join(scratch, name)), resolve(os.path.join(folder, name)))
            copied += 1
        for name in sorted(set(replaced) - set(names)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
    except OSError as exc:
        if not copied:
            raise
        linked = f"the folder {folder} it links to" if asked != folder else "it"
        holder = "the folder" if asked != folder else "it"
        error = StorageError(
            asked,
            f"replacing the store's files one by one ({linked} cannot be replaced as a "
            f"whole: its parent may not be written) failed at {name} ({os_problem(exc)}): "
            f"{holder} now holds {copied} of the new version's {len(names)} files and what "
            f"is left of the old version; the new version is whole in {scratch}, kept until "
            "a later write there (copy its files over, or export again)",
        )
        error.errno, error.filename2 = exc.errno, scratch
        raise error from exc
    shutil.rmtree(scratch, ignore_errors=True)


def _put_back(old: str, destination: str, asked: str | None = None) -> None:
    """Rename the version ``old`` that :func:`move_into_place` set aside back to
    ``destination``, after the new one failed to take its place.

    ``asked`` is the destination as the caller named it, when that is a link to
    ``destination`` (the folder it leads to, which the message then names too).

    Raises
    ------
    StorageError
        If that fails too: naming ``asked`` (else ``destination``) and where both
        versions are. The caller must then keep its staged version
        (:func:`recover_interrupted_move` of ``destination`` finds the pair), since the
        old one alone would be swept as a dead writer's temporary.
    """
    try:
        os.rename(old, destination)
    except OSError as exc:
        linked = f" (the folder {destination} it links to)" if asked else ""
        raise StorageError(
            asked or destination,
            f"the new version could not be renamed into place{linked}, nor the old one "
            f"back ({exc.strerror}); the old one is {old}, the new one beside it without "
            "'-old'",
        ) from exc


def staging_name(destination: str, suffix: str) -> str:
    """A fresh temporary folder name beside ``destination`` for :func:`move_into_place`.

    The name ends with ``suffix`` and a digest of ``destination``'s own name, so that
    :func:`recover_interrupted_move` tells the versions a killed writer left for this
    destination from those of its neighbours.
    """
    destination = os.path.abspath(destination)
    return temporary_name(_local_directory(destination), _staging_suffix(destination, suffix))


def _staging_suffix(destination: str, suffix: str) -> str:
    digest = hashlib.sha256(os.fsencode(os.path.basename(destination))).hexdigest()[:12]
    return f"{suffix}-{digest}"


def recover_interrupted_move(destination: str, suffix: str) -> bool:
    """Put back ``destination`` when a writer died between :func:`move_into_place`'s two
    renames; return whether it did.

    Such a writer, staged under :func:`staging_name` (``destination``, ``suffix``), left
    ``destination`` missing, its new version complete at the staged name and the old one
    at :func:`set_aside_name` of it (which :func:`sweep_dead_temporaries` keeps). The new
    version is put in place and the old one removed (:func:`recover_staged`). Versions of
    a writer still alive, or left while ``destination`` was made again, are left alone.

    Raises
    ------
    StorageError
        Of the failure's kind, naming ``destination``, when the file system fails to say
        whether it is there (an EIO): a destination it cannot look up is not missing, and
        nothing is moved.
    """
    destination = os.path.abspath(destination)
    if local_stat(destination, "looking it up", follow_symlinks=False) is not None:
        return False
    folder = _local_directory(destination)
    ending = set_aside_name(_staging_suffix(destination, suffix))
    try:
        names = set(os.listdir(folder))
    except OSError:
        return False
    for name in sorted(names):
        if not (name.startswith(TEMP_PREFIX) and name.endswith(ending)):
            continue
        staged = name.removesuffix(set_aside_name(""))
        owner = _owner_on_this_host(staged)
        if staged not in names or owner is None or pid_alive(owner):
            continue  # another host's writer may still be at work: left to the user
        return recover_staged(resolve(destination), os.path.join(folder, staged), committing=True)
    return False


def _holds_working_directory(folder: str) -> bool:
    """Whether this process's working directory is ``folder`` or lies below it."""
    try:
        here = os.path.realpath(os.getcwd())
    except OSError:  # the working directory was removed
        return False
    there = os.path.realpath(folder)
    return here == there or here.startswith(there.rstrip(os.sep) + os.sep)


# ---------------------------------------------------------------------------- leftovers
_SWEPT: set[str] = set()
_SWEPT_LOCK = threading.Lock()


def _owner_on_this_host(name: str) -> int | None:
    """The pid that made the temporary ``name``, if a process of this host made it."""
    parts = name[len(TEMP_PREFIX) :].split("-")
    if len(parts) < 3 or parts[1] != HOST_TAG or not parts[0].isdigit():
        return None
    return int(parts[0])


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this pid space (see :data:`HOST_TAG`) is alive."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_dead_temporaries(
    directory: Location, max_age: float = STALE_TEMP_SECONDS, *, once: bool = False
) -> list[str]:
    """Delete the temporaries of dead writers from a local ``directory``; return their names.

    A temporary made by a process of this host is dead when that process is gone, and
    only then: a live writer may take hours to assemble a large dataset, and the age of a
    staging folder says nothing (its entry stops changing once its subfolders exist). A
    temporary of another host sharing the folder is dead when nothing has written to it
    for ``max_age`` seconds. Directories (versions being assembled) go too, except a
    directory whose swap into place was interrupted (``<name>`` with ``<name>-old`` beside
    it, on file systems without an atomic exchange): both versions stay for the recovery of
    their destination (:func:`recover_staged`), which alone knows which is which.

    A dataset's writer sweeps on every operation, holding the dataset's lock. Item writers
    pass ``once=True``: the directory is then swept once per process, since listing is
    linear in its size and an encoder publishing a million items into one folder must not
    list it a million times.
    """
    if directory.remote:
        return []
    path = os.path.abspath(directory.path)
    if once:
        with _SWEPT_LOCK:
            if path in _SWEPT:
                return []
            _SWEPT.add(path)
    try:
        names = [n for n in os.listdir(path) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return []
    now = time.time()
    present = set(names)
    removed = []
    for name in names:
        full = os.path.join(path, name)
        staged = name.removesuffix(set_aside_name(""))
        if set_aside_name(name) in present or (staged != name and staged in present):
            continue  # an interrupted swap: see above
        owner = _owner_on_this_host(staged)
        try:
            there = os.lstat(full)  # one the disk fails to look up is left, unsaid
            stale = not pid_alive(owner) if owner is not None else now - there.st_mtime > max_age
        except OSError:
            continue
        if not stale:
            continue
        if stat.S_ISDIR(there.st_mode):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(full)
        with contextlib.suppress(StorageError):  # said removed only when it is gone
            if local_stat(full, follow_symlinks=False) is None:
                removed.append(name)
    return removed


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
        with writing(self.location.path):
            self._zip.add(name, data, deflate=deflate)

    def commit(self) -> None:
        with writing(self.location.path):
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
            there = local_stat(self.location.path, _LOOKING_UP, follow_symlinks=False)
            if there is not None and stat.S_ISDIR(there.st_mode):
                # A directory-layout version replaced by a zip: a file cannot be renamed
                # over a directory.
                _put_in_place(self.tmp, self.location.path, self.durable)
                return
            os.replace(self.tmp, self.location.path)
        if self.durable:
            fsync_dir(_local_directory(self.location.path))

    def abort(self) -> None:
        # Closing flushes what is buffered, which fails again on a full disk: the file
        # goes anyway.
        try:
            with contextlib.suppress(OSError):
                self._fh.close()
        finally:
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
        if not os.path.isdir(self.tmp):
            # Removed under us (by hand, or by a sweep that took this writer for dead):
            # recreating it would publish a version without what was added before.
            raise StorageError(
                self.location.path,
                f"its staging folder {os.path.basename(self.tmp)} was removed while it was "
                "being written; nothing was published",
            )
        with writing(self.location.path):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "xb") as fh:
                fh.write(data)
                fh.flush()
                if self.durable:
                    os.fsync(fh.fileno())
        self.size += len(data)

    def commit(self) -> None:
        _put_in_place(self.tmp, self.location.path, self.durable)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


#: What a sink was doing when the file system failed to say what is at its destination.
_LOOKING_UP = "looking it up to put the new version in place (nothing was published)"


def _put_in_place(staged: str, path: str, durable: bool) -> None:
    """Publish the complete version ``staged`` (a folder, or a file replacing a folder) at
    ``path``, and remove the version it replaces, folder or file.

    Where the file system can swap two paths, one atomic step; elsewhere two renames. A
    writer killed between them leaves the path empty; lifecycle.Transaction's journal
    knows both names, and :func:`recover_staged` puts a version in place.

    Raises
    ------
    StorageError
        Of the failure's kind, naming ``path``, when the file system fails to say what is
        there (an EIO): nothing is moved, and ``staged`` is the caller's to remove.
    """
    old = None
    if local_stat(path, _LOOKING_UP, follow_symlinks=False) is not None:
        if exchange_paths(staged, path):
            # The new version is in place, the old one where the new one was staged.
            if durable:
                fsync_dir(_local_directory(path))
            _remove(staged)
            return
        old = set_aside_name(staged)
        os.replace(path, old)
    os.replace(staged, path)
    if durable:
        fsync_dir(_local_directory(path))
    if old is not None:
        _remove(old)


def _remove(path: str) -> None:
    """Remove a replaced version, a folder or a file (best effort: a later writer's sweep
    takes what is left)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


#: The documents of a store's root, uploaded last (in this order: readers open the last
#: ones first), so that a store whose upload died part-way has no root: Zarr v2's
#: attributes, consolidated metadata and group document, or v3's ``zarr.json``.
_ROOT_DOCUMENTS = (".zattrs", ".zmetadata", ".zgroup", "zarr.json")

#: The object a dataset's writer uploads to an object-store prefix before anything else,
#: and removes once the store is complete: objects beside it are a writer's leftovers.
WRITING_MARKER = ".cadstore-writing"


class PrefixSink(Sink):
    """A directory-layout dataset on an object store: one object per member.

    Object stores cannot swap a prefix atomically, so publication is ordered instead: an
    existing root ``zarr.json`` (or a Zarr v2 item's root documents) is deleted first
    (readers then find no store rather than a mix of old and new members), every member is
    uploaded, members of an earlier store or of a crashed attempt that this one did not
    write are deleted, and the root, which readers open first, is uploaded last. A merge
    that dies part-way leaves unreferenced objects and no root, which the next run
    overwrites or deletes.

    With ``exclusive`` (a dataset's writer), the prefix must hold a store already (its
    root ``zarr.json``), the leftovers of a writer that stopped before its root (its
    :data:`WRITING_MARKER`, uploaded before anything else and removed after the root), or
    nothing: objects of any other origin (a merge given the items' own prefix as its
    output) are not the writer's to delete, and it refuses to start.
    """

    _UPLOADS_IN_FLIGHT = 16

    def __init__(self, location: Location, *, exclusive: bool = False) -> None:
        self.location = location.with_path(location.path.rstrip("/"))
        self.location.makedirs()  # checks the bucket, with a clear error when it is missing
        self._old = set(self.location.fs.file_sizes(self.location.path))
        self._marked = False
        if exclusive and self._old and not self._old & {*_ROOT_DOCUMENTS, WRITING_MARKER}:
            raise OutputExistsError(
                f"{self.location.path}: holds objects that are not a dataset's (e.g. "
                f"{sorted(self._old)[0]!r}); not writing a dataset over them (choose "
                "another prefix, or remove them first)"
            )
        for root in _ROOT_DOCUMENTS:
            if root in self._old:
                self.location.child(root).remove()
        if exclusive:
            write_bytes_atomic(self.location.child(WRITING_MARKER), b"")
            self._marked = True
        self._roots: dict[str, bytes] = {}
        self._written: set[str] = set()
        # Uploads are latency-bound: a few in parallel keep the connection pool busy.
        self._pool = cf.ThreadPoolExecutor(8, thread_name_prefix="cadstore-upload")
        self._pending: deque[cf.Future[int]] = deque()

    def add(self, name: str, data: bytes, *, deflate: bool = False) -> None:
        if name in _ROOT_DOCUMENTS:
            self._roots[name] = data
            return
        self._written.add(name)
        self._pending.append(self._pool.submit(write_bytes_atomic, self.location.child(name), data))
        self.size += len(data)
        while len(self._pending) > self._UPLOADS_IN_FLIGHT:
            self._pending.popleft().result()

    def commit(self) -> None:
        while self._pending:
            self._pending.popleft().result()
        for stale in sorted(self._old - self._written - {*_ROOT_DOCUMENTS, WRITING_MARKER}):
            self.location.child(stale).remove()
        if not {"zarr.json", ".zgroup"} & set(self._roots):
            raise MergeError(f"{self.location}: no root zarr.json (or .zgroup) was produced")
        for root in _ROOT_DOCUMENTS:  # the one readers open first goes last
            if root in self._roots:
                write_bytes_atomic(self.location.child(root), self._roots[root])
                self.size += len(self._roots[root])
        if self._marked or WRITING_MARKER in self._old:
            self.location.child(WRITING_MARKER).remove()
        self._pool.shutdown()

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        # Best effort: with the store gone, the objects stay unreferenced (no root).
        with contextlib.suppress(Exception):
            for name in sorted(self._written):
                self.location.child(name).remove()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_NO_EXCHANGE = frozenset(
    code
    for code in (getattr(errno, name, None) for name in ("EINVAL", "ENOSYS", "EOPNOTSUPP"))
    if code is not None
)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """glibc's ``renameat2`` (Linux), or ``None`` where there is none."""
    return glibc_function(
        "renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    )


def exchange_paths(first: str, second: str) -> bool:
    """Swap two existing paths in one atomic step; ``False`` where it cannot be done.

    Linux's ``renameat2(RENAME_EXCHANGE)`` swaps two directories atomically on the local
    file systems that support it (ext4, xfs, btrfs, tmpfs): a reader sees the old one or
    the new one, and a writer killed around the swap leaves both whole. Elsewhere
    (another system, NFS) the caller falls back to two renames.
    """
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE):
        code = ctypes.get_errno()
        if code in _NO_EXCHANGE:
            return False
        raise OSError(code, os.strerror(code), second)
    return True


def local_stat(
    path: str, doing: str = "looking it up", *, follow_symlinks: bool = True
) -> os.stat_result | None:
    """The ``stat`` of a local ``path``; ``None`` when the path leads to nothing.

    ``os.path.exists``, ``os.path.lexists`` and ``os.path.isdir`` say ``False`` when the
    file system fails to answer (an EIO, a folder that may not be searched): a writer or
    a recovery taking that for "nothing there" would publish over a dataset, or move a
    version onto one. Only the errnos of :data:`cadstore.io.sources.NAMES_NOTHING` mean
    nothing is there.

    Parameters
    ----------
    path
        The local path.
    doing
        What was being done, for the error's message (:func:`os_storage_error`).
    follow_symlinks
        Follow a symbolic link at ``path`` (as ``os.path.exists`` does); else a link is
        what is there, even a dangling one (``os.lstat``, as ``os.path.lexists``).

    Returns
    -------
    os.stat_result or None
        What is there; ``None`` when nothing is.

    Raises
    ------
    StorageError
        Of the failure's kind (:func:`os_storage_error`), naming ``path``, when the file
        system fails to say.
    """
    from cadstore.io.sources import NAMES_NOTHING

    try:
        return os.stat(path) if follow_symlinks else os.lstat(path)
    except OSError as exc:
        if exc.errno in NAMES_NOTHING:
            return None
        raise os_storage_error(path, exc, doing) from exc


def recover_staged(destination: Location, staged: str, *, committing: bool) -> bool:
    """Finish or remove what a killed writer staged for ``destination``; return whether
    anything was there.

    ``staged`` is the temporary name of a :class:`ZipSink` or :class:`DirectorySink` (the
    writer's journal records it, :mod:`cadstore.lifecycle`). A directory caught between its
    sink's two renames (``committing``, the destination missing) is complete, and is put
    in place; everything else staged is removed: the destination is then the version from
    before the writer, or the one it committed.

    Raises
    ------
    StorageError
        Naming the destination (or the staged version) when a directory is staged and
        the file system fails to say whether the destination is there, or whether what
        is staged is a directory (an EIO): nothing is moved or removed, and the message
        says so. Likewise naming what is staged when it cannot be looked up to be
        removed: it is left as it was.
    """
    if destination.remote:
        return False
    folder = _local_directory(destination.path)
    if _local_directory(staged) != folder or not os.path.basename(staged).startswith(TEMP_PREFIX):
        return False  # not a name a sink of this destination would use: left alone
    replaced = set_aside_name(staged)
    found = False
    # Only a staged directory is ever put in place, and only where the destination is
    # missing. A path the file system fails to look up (an EIO) is not missing: taken
    # for missing, the rename met the version in place as a bare OSError.
    name = os.path.basename(staged)
    doing = f"looking it up (what a killed writer staged, {name}, is left as it was)"
    for complete in (staged, replaced) if committing else ():  # the new version, else the old
        there = local_stat(complete, doing)
        if there is None or not stat.S_ISDIR(there.st_mode):
            continue
        if local_stat(destination.path, doing) is None:
            os.rename(complete, destination.path)
            fsync_dir(folder)
            found = True
        break
    for leftover in (staged, replaced):
        # Looked up as above: one the file system fails to look up is not "nothing
        # staged", which recovery would say, the killed writer's journal then gone.
        there = local_stat(leftover, _LOOKING_UP_LEFTOVER, follow_symlinks=False)
        if there is None:
            continue
        if stat.S_ISDIR(there.st_mode):
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            os.unlink(leftover)
        found = True
    return found


#: What recovery was doing when the file system failed to look up what a writer staged.
_LOOKING_UP_LEFTOVER = "looking up what a killed writer staged, to remove it (left as it was)"


def rewrite_open_file(fd: int, data: bytes) -> None:
    """Replace the whole content of the open file ``fd`` with ``data``, durably.

    For a file that must keep its identity while it changes (a lock file, locked by
    ``flock``). ``data`` must not contain a newline: it is written first, followed by one,
    and the file is cut after it, so a process killed between the two steps leaves the new
    content followed by a tail of the old, and a reader taking the first line gets the new
    content (never an empty file, which truncating first would leave).
    """
    if b"\n" in data:
        raise ValueError("rewrite_open_file: data must be one line")
    os.pwrite(fd, data + b"\n", 0)
    os.ftruncate(fd, len(data) + 1)
    os.fsync(fd)


def open_sink(
    location: Location, *, directory: bool = False, durable: bool = True, exclusive: bool = False
) -> Sink:
    """Return the sink that publishes a dataset at ``location``.

    Parameters
    ----------
    location
        The ``.dataset`` to write.
    directory
        A directory store (a prefix of objects on an object store) instead of a zip.
    durable
        fsync what is published (local disk).
    exclusive
        On an object store, refuse a prefix holding objects that are not a store's (see
        :class:`PrefixSink`).
    """
    if not directory:
        return ZipSink(location, durable=durable)
    if location.remote:
        return PrefixSink(location, exclusive=exclusive)
    return DirectorySink(location, durable=durable)
