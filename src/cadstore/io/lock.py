"""The writer lock of a dataset: one process changes a dataset at a time.

A merge, an append or a split takes the lock of its dataset before it reads anything and
releases it last, so two writers can never both start from the same version and have one
silently drop the other's work. The lock is ``<dataset>.lock`` beside the dataset. It holds
a small JSON record naming its owner (host, pid, operation, start time) and the owner's
journal (which step it is at, what it has staged), so that an owner that was killed tells
the next one what to finish or undo.

On local disk the file is locked with ``flock(2)``: the kernel releases the lock when its
owner exits, however it exits (``SIGKILL`` included), so a local lock is never stale. The
owner removes the file when it is done; a file left with a record in it therefore means its
owner died, and the next owner reads that record before writing its own.

On an object store there is no such kernel: the lock object is created with a
conditional write (``If-None-Match: *``) so that only one writer creates it, and its
owner refreshes a heartbeat in it while it works. A lock whose heartbeat is older than
``stale_after`` seconds belongs to a writer that is gone, and the next writer takes it
over, reading its record first; so is, at once, a lock of a process of this host that
has exited, or one this process left behind when the store went away before it could
remove it. Before it commits, an owner checks that the lock is still its own
(:meth:`WriterLock.check`), so a writer that stalled past ``stale_after`` stops rather
than overwrite its successor. A store that ignores conditional writes cannot settle a
race between two writers starting at the same moment; cadstore warns once when it meets
one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import socket
import stat
import threading
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

from cadstore.errors import CadstoreWarning, DatasetLockedError, OutputExistsError, StorageError
from cadstore.io.location import Location
from cadstore.io.publish import (
    HOST_TAG,
    conditional_writes_supported,
    local_stat,
    pid_alive,
    rewrite_open_file,
    write_bytes_atomic,
    writing,
)

try:  # POSIX; elsewhere the lock works as on an object store
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_STALE_SECONDS",
    "LOCK_FORMAT",
    "LOCK_SUFFIX",
    "LockRecord",
    "WriterLock",
    "check_wait",
    "lock_location",
]

#: Format marker of a lock record.
LOCK_FORMAT = "cadstore-lock/1"
#: What is appended to a dataset's path to name its lock.
LOCK_SUFFIX = ".lock"
#: Object stores: a lock whose heartbeat is older than this (seconds) is taken over.
DEFAULT_STALE_SECONDS = 300.0
#: Largest lock record read (a lock file is written by cadstore, but may be tampered with).
_MAX_RECORD_BYTES = 1 << 16
#: How often a waiting writer tries the lock again (seconds).
_POLL_SECONDS = 0.2
#: Opens of a local lock file whose folder vanished in between (another writer removed
#: the folder it made) before the lock path is taken for one that cannot be created.
_MAX_OPEN_ATTEMPTS = 100


def check_wait(seconds: Any, name: str = "timeout") -> float:
    """Return ``seconds``, how long a writer waits for a dataset's lock, once checked.

    Parameters
    ----------
    seconds
        A number of seconds: 0 gives up at once, ``math.inf`` waits as long as it takes.
    name
        The argument's name, for the message.

    Returns
    -------
    float
        ``seconds`` as a float.

    Raises
    ------
    ValueError
        If ``seconds`` is not a number, is NaN (a deadline never reached: the writer
        would wait forever) or is negative; the message names the argument and the value.
    """
    try:
        value = math.nan if isinstance(seconds, bool | str | bytes) else float(seconds)
    except (TypeError, ValueError):
        value = math.nan
    if not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {seconds!r}")
    return value


def lock_location(dataset: Location) -> Location:
    """The lock of ``dataset``: ``<dataset>.lock`` beside it (a file, or an object)."""
    return dataset.with_path(dataset.path.rstrip("/") + LOCK_SUFFIX)


@dataclass
class LockRecord:
    """What a lock says about its owner.

    Attributes
    ----------
    token
        Random; tells two owners apart even on one host with a reused pid.
    host, pid
        Where the owner runs.
    operation
        What it is doing (``"merge"``, ``"append"``, ``"split"``).
    started, heartbeat
        When it took the lock, and when it last said it was alive (Unix time).
    phase
        The step it reached (``"writing"``, ``"committing"``, ``"publishing"``).
    journal
        What it staged, for the next owner to finish or remove (see
        :mod:`cadstore.lifecycle`).
    pid_space
        The tag of the owner's pid space (:data:`cadstore.io.publish.HOST_TAG`: host and
        pid namespace): only a process with the same tag can tell from the pid whether the
        owner is alive.
    """

    token: str
    host: str
    pid: int
    operation: str
    started: float
    heartbeat: float
    phase: str = "writing"
    journal: dict[str, Any] = field(default_factory=dict)
    pid_space: str = ""

    def to_bytes(self) -> bytes:
        """The record as it is stored."""
        return json.dumps({"format": LOCK_FORMAT, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> LockRecord | None:
        """Parse a stored record; ``None`` for an empty, torn or foreign one."""
        if not raw or len(raw) > _MAX_RECORD_BYTES:
            return None
        # The record is the first line (see cadstore.io.publish.rewrite_open_file).
        raw = raw.split(b"\n", 1)[0]
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        if not isinstance(doc, dict) or doc.get("format") != LOCK_FORMAT:
            return None
        try:
            journal = doc.get("journal") or {}
            return cls(
                token=str(doc["token"]),
                host=str(doc["host"]),
                pid=int(doc["pid"]),
                operation=str(doc["operation"]),
                started=float(doc["started"]),
                heartbeat=float(doc["heartbeat"]),
                phase=str(doc.get("phase", "writing")),
                journal=dict(journal) if isinstance(journal, dict) else {},
                pid_space=str(doc.get("pid_space", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self, now: float | None = None) -> str:
        """``"an append by pid 4242 on host build-3, started 12 s ago"``."""
        now = time.time() if now is None else now
        article = "an" if self.operation[:1] in "aeiou" else "a"
        return (
            f"{article} {self.operation} by pid {self.pid} on host {self.host}, "
            f"started {_ago(now - self.started)}"
        )


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


class WriterLock:
    """The lock of one dataset, held by this process while it changes the dataset.

    Parameters
    ----------
    dataset
        The dataset to lock (it need not exist yet: a first merge locks it too).
    operation
        What this process is about to do, for the message another writer gets.
    timeout
        Seconds to wait for a lock held by another live writer before giving up
        (0: give up at once).
    stale_after
        Object stores: seconds without a heartbeat after which a lock is taken over.

    Attributes
    ----------
    previous
        After :meth:`acquire`: the record of an owner that died holding the lock (what it
        was doing, its journal), or ``None`` when the lock was free.
    """

    def __init__(
        self,
        dataset: Location,
        operation: str,
        *,
        timeout: float = 0.0,
        stale_after: float = DEFAULT_STALE_SECONDS,
    ) -> None:
        self.dataset = dataset
        self.location = lock_location(dataset)
        self.timeout = check_wait(timeout)
        self.stale_after = stale_after
        now = time.time()
        self.record = LockRecord(
            token=secrets.token_hex(8),
            host=socket.gethostname(),
            pid=os.getpid(),
            operation=operation,
            started=now,
            heartbeat=now,
            pid_space=HOST_TAG,
        )
        self.previous: LockRecord | None = None
        self._fd: int | None = None
        #: Folders that taking the (local) lock created, deepest first: a writer that
        #: publishes nothing there leaves none of them behind.
        self._made_folders: list[str] = []
        self._held = False
        self._lost = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._mutex = threading.Lock()
        _LOCKS.add(self)

    # ------------------------------------------------------------------ public
    def acquire(self) -> LockRecord | None:
        """Take the lock, waiting up to ``timeout`` seconds; return :attr:`previous`.

        Raises
        ------
        DatasetLockedError
            If another live writer holds it past the timeout; the message names it.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                holder = self._try_local() if self._local else self._try_remote()
            except BaseException:
                self._remove_made_folders()
                raise
            if holder is None:
                self._held = True
                _HELD.add(self.record.token)
                if not self._local:
                    self._start_heartbeat()
                return self.previous
            if time.monotonic() >= deadline:
                who = holder.describe() if holder.token else "another process"
                raise DatasetLockedError(
                    self.dataset.path,
                    f"{who} is changing this dataset (lock {self.location.name}); nothing "
                    "was changed: run this again when it has finished",
                )
            time.sleep(_POLL_SECONDS)

    def update(self, phase: str, **journal: Any) -> None:
        """Record the step reached and what it staged, before taking the step."""
        self.check()
        self.record.phase = phase
        self.record.journal.update(journal)
        self.record.heartbeat = time.time()
        self._write_record()

    def check(self) -> None:
        """Raise unless this process still holds the lock (call before committing).

        Raises
        ------
        DatasetLockedError
            If the lock was taken over (an object-store writer that stalled past
            ``stale_after``); nothing should be committed then.
        """
        if not self._held:
            raise DatasetLockedError(self.dataset.path, "this process does not hold its lock")
        if self._local:
            return
        current = self._read_remote()
        if self._lost or current is None or current.token != self.record.token:
            self._lost = True
            raise DatasetLockedError(
                self.dataset.path,
                f"this writer lost its lock {self.location.name} (it stalled for longer "
                f"than {self.stale_after:.0f} s and another writer took over); nothing "
                "was committed",
            )

    def release(self) -> None:
        """Give the lock up and remove its file. Idempotent."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if not self._held:
            return
        self._held = False
        _HELD.discard(self.record.token)
        if self._local:
            _LOCAL_FDS.pop(self.record.token, None)
            assert self._fd is not None
            # Removed while still locked: a process that opened the old file finds, once
            # it gets the lock, that the path no longer leads to it, and starts again.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.location.path)
            os.close(self._fd)
            self._fd = None
            self._remove_made_folders()
            return
        with contextlib.suppress(Exception):
            current = self._read_remote()
            if current is not None and current.token == self.record.token:
                self.location.remove()

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # ------------------------------------------------------------------ local disk
    @property
    def _local(self) -> bool:
        return not self.location.remote and fcntl is not None

    def _try_local(self) -> LockRecord | None:
        """Take the local lock, or return the holder's record (empty token if unknown)."""
        path = self.location.path
        folder = os.path.dirname(os.path.abspath(path))
        attempt = 0
        while True:
            attempt += 1
            self._make_folders(folder)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except FileNotFoundError:
                # Its folder removed since, by a writer done with it: made again. Not for
                # ever: a lock path that is a link to a missing folder fails the same way.
                if attempt < _MAX_OPEN_ATTEMPTS:
                    continue
                raise StorageError(
                    path, "cannot create the lock file (a link to a missing folder?)"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = LockRecord.from_bytes(os.pread(fd, _MAX_RECORD_BYTES, 0))
                os.close(fd)
                return holder or LockRecord("", "?", 0, "change", time.time(), time.time())
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:  # released and removed between our open and our flock
                os.close(fd)
                continue
            previous = LockRecord.from_bytes(os.pread(fd, _MAX_RECORD_BYTES, 0))
            try:
                with writing(path):
                    rewrite_open_file(fd, self.record.to_bytes())
            except BaseException:
                os.close(fd)  # the lock with it: the previous record is still there
                raise
            self._fd = fd
            self.previous = previous
            _LOCAL_FDS[self.record.token] = fd
            return None

    def _make_folders(self, folder: str) -> None:
        """Create ``folder`` and its missing parents, noting those made (deepest first).

        Raises
        ------
        StorageError
            Naming a folder the file system fails to look up (an EIO; ``os.path.isdir``
            says ``False`` then): it is not taken for one to make, nor for a file.
        OutputExistsError
            If a file, or a link to a missing folder, is in the way.
        """
        missing = []
        while not self._is_folder(folder):
            missing.append(folder)
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        for made in reversed(missing):
            try:
                os.mkdir(made)
            except FileExistsError:
                if self._is_folder(made):
                    continue  # made meanwhile by another writer: not ours to remove
                raise OutputExistsError(
                    f"{self.location.path}: {made} is not a folder (a file, or a link to "
                    "a missing folder); cannot make the lock there"
                ) from None
            self._made_folders.insert(0, made)

    def _is_folder(self, path: str) -> bool:
        """Whether ``path`` is a folder (or a link to one); an EIO is the StorageError."""
        found = local_stat(path, f"looking up the folder of the lock {self.location.name}")
        return found is not None and stat.S_ISDIR(found.st_mode)

    def _remove_made_folders(self) -> None:
        """Remove the folders the lock made that are empty (nothing was published there)."""
        for folder in self._made_folders:
            try:
                os.rmdir(folder)
            except OSError:  # not empty (a dataset, another writer's lock), or gone
                break
        self._made_folders = []

    # ------------------------------------------------------------------ object stores
    def _try_remote(self) -> LockRecord | None:
        """Create the lock object, or take over a stale one, or return the live holder."""
        try:
            conditional = conditional_writes_supported(self.location.parent)
        except StorageError as exc:  # the probe is the first request: name the dataset
            raise type(exc)(self.dataset.path, exc.problem) from exc
        if not conditional:
            _warn_unconditional(self.location)
        for _ in range(5):
            try:
                write_bytes_atomic(self.location, self.record.to_bytes(), exclusive=True)
                return None
            except FileExistsError:
                pass
            holder = self._read_remote()
            if holder is None:
                # Gone meanwhile, or not a record cadstore wrote (cadstore's uploads are
                # whole): nobody can be holding it, so it is taken over.
                self.location.remove()
                continue
            if time.time() - holder.heartbeat < self.stale_after and not _gone(holder):
                return holder
            self.previous = holder
            self.location.remove()
        return LockRecord("", "?", 0, "change", time.time(), time.time())

    def _read_remote(self) -> LockRecord | None:
        try:
            return LockRecord.from_bytes(self.location.read_bytes())
        except FileNotFoundError:
            return None

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        period = max(1.0, self.stale_after / 4)

        def beat() -> None:
            while not self._stop.wait(period):
                # A store that fails now and then must not end the heartbeat (the lock
                # would go stale under a live writer): errors are retried next period.
                try:
                    current = self._read_remote()
                except Exception:  # noqa: S112 - retried next period
                    continue
                if current is None or current.token != self.record.token:
                    self._lost = True
                    return
                with contextlib.suppress(Exception):
                    self.record.heartbeat = time.time()
                    self._write_record()

        self._beat = threading.Thread(target=beat, name="cadstore-lock-heartbeat", daemon=True)
        self._beat.start()

    # ------------------------------------------------------------------ both
    def _write_record(self) -> None:
        raw = self.record.to_bytes()
        with self._mutex:
            if self._local:
                assert self._fd is not None
                with writing(self.location.path):
                    rewrite_open_file(self._fd, raw)
            else:
                write_bytes_atomic(self.location, raw)


_WARNED: set[str] = set()


#: Tokens of the locks this process holds (a lock of this process that is not among them
#: was left by an operation that could not remove it, its store being unreachable).
_HELD: set[str] = set()


#: Descriptors of the local locks this process holds, by token.
_LOCAL_FDS: dict[str, int] = {}


def _close_inherited_locks() -> None:
    """In a forked child: close the descriptors of the parent's locks, and forget them.

    ``flock`` belongs to the open file, which a forked child shares: a worker of a merge's
    process pool would otherwise keep the dataset locked after the merge was killed. Closed,
    not unlocked (unlocking would release the parent's lock too).
    """
    for fd in _LOCAL_FDS.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCAL_FDS.clear()
    _HELD.clear()
    for lock in list(_LOCKS):
        lock._fd = None
        lock._held = False


#: Every lock object of this process (to reset them in forked children).
_LOCKS: weakref.WeakSet[WriterLock] = weakref.WeakSet()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def _gone(holder: LockRecord) -> bool:
    """Whether the holder is a process of this pid space that no longer holds its lock."""
    if holder.pid_space != HOST_TAG:
        return False
    if holder.pid == os.getpid():
        return holder.token not in _HELD
    return not pid_alive(holder.pid)


def _warn_unconditional(location: Location) -> None:
    bucket = location.path.split("://", 1)[-1].split("/", 1)[0]
    if bucket not in _WARNED:
        _WARNED.add(bucket)
        warnings.warn(
            f"{location.path}: this object store ignores conditional writes, so two writers "
            "starting on one dataset at the same moment may not be told apart",
            CadstoreWarning,
            stacklevel=4,
        )
