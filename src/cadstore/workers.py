"""Supervised worker processes: a time limit per step, a memory cap, and no hung worker.

Encoding CAD files runs native kernel code that can hang, crash or exhaust memory on a bad
file. :class:`WorkerPool` runs such work in worker processes it supervises itself, instead
of ``concurrent.futures.ProcessPoolExecutor``, which on Python 3.11 cannot do what is
needed: it refuses the ``fork`` start method together with ``max_tasks_per_child``, it
deadlocks when a worker retires with tasks queued (CPython gh-115634), it cannot kill one
hung worker without breaking the whole pool, and it cannot tell which task a crashed worker
was running. The pool knows which task each worker is on, so:

* a **time limit** applies to each step of a task: a worker reports progress with
  messages, every message restarts its clock, and a worker silent for longer than the
  limit is killed (``SIGKILL``, so a kernel call that never returns cannot hang the run);
* a **memory guard** caps each worker's address space (``RLIMIT_AS``), so a task that
  explodes raises ``MemoryError`` in its worker instead of driving the machine into swap;
* a worker that **dies** (a segmentation fault, ``os._exit``, the OOM killer) is reported
  with its task, its signal or exit code, and replaced;
* a worker is **replaced** after ``max_tasks_per_child`` tasks, or at once when it asks
  (after a ``MemoryError``, its heap may be fragmented), returning its memory to the system;
* workers that die before taking any task, several in a row, stop the run with an error
  (the cause is the environment, not a task), instead of being restarted forever;
* a **warning** a worker shows is issued again by the parent instead, through the
  parent's filters and display: the command line prints it as its one ``cadstore: warning:``
  line (once, whichever workers issued it), and a program recording warnings records it,
  where a spawned worker would have printed Python's format on its own stderr. The
  worker's filters decided that it is shown, as they decide for any warning it issues.
  That holds from a spawned worker's import of :mod:`cadstore` itself (a dependency's
  warning as it is imported, held until the worker forwards, see ``_BOOT``) to the
  warnings it sends as it stops.

Workers are forked when that is safe and spawned otherwise (:mod:`cadstore.processes`);
a spawned worker never runs the caller's main script.

Work that needs none of this supervision (a merge's decoding with ``executor="process"``,
the synthetic workload's writers) runs in a :class:`ProcessPool`, a
``concurrent.futures.ProcessPoolExecutor`` whose workers' warnings are issued again in
the parent the same way.

The work itself is a picklable top-level function ``work(task, settings, emit)`` that
calls ``emit(message)`` with dict messages (never of ``"type"`` ``"ready"``, ``"fatal"``,
``"done"`` or ``"warning"``, which are the pool's) as it goes, and returns when the task
is done; a message with ``"recycle": True`` asks for the worker to be replaced after the
task. A :class:`Listener` hears about every message, every task done and every task lost.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import pickle
import select
import signal
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from multiprocessing.reduction import ForkingPickler
from typing import Any, Final, Protocol

from cadstore.processes import mp_context, without_main_script

__all__ = [
    "DEFAULT_MEMORY_LIMIT_MB",
    "Emit",
    "Listener",
    "ProcessPool",
    "WorkerPool",
    "WorkerSpec",
    "address_space_mb",
    "available_cores",
    "limit_memory",
]

#: What a worker calls with each message.
Emit = Callable[[dict[str, Any]], None]


class Listener(Protocol):
    """What a :class:`WorkerPool` reports to, in the parent process."""

    def message(self, message: dict[str, Any]) -> None:
        """A message a worker emitted."""

    def done(self, task: Any) -> None:
        """``task`` finished (its work function returned)."""

    def lost(self, task: Any, pid: int | None, reason: str, error: str, seconds: float) -> None:
        """``task`` was lost: ``reason`` ``"timeout"`` (killed) or ``"crash"`` (it died)."""


# A fresh spawned worker imports what it needs before it can start; this bounds that wait.
_STARTUP_SECONDS: Final = 120.0
# Workers that die before ever becoming ready, in a row, before the run gives up.
_MAX_STARTUP_FAILURES: Final = 3


#: The memory guard's default: MiB of address space a worker may map beyond what it maps
#: when it starts (a forked worker starts with its parent's address space, which after
#: torch and OpenCascade are loaded is several GiB; a spawned one far less).
DEFAULT_MEMORY_LIMIT_MB: Final = 4096


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker runs: picklable, so it can go to a spawned process.

    Attributes
    ----------
    work
        ``work(task, settings, emit)``, a top-level function.
    settings
        Passed to every call of ``work``.
    memory_limit_mb
        Address-space cap of each worker, MiB (``None``: no cap, or the headroom's).
    max_tasks_per_child
        Tasks a worker runs before a fresh process replaces it.
    memory_headroom_mb
        Without ``memory_limit_mb``: cap each worker at what it maps when it starts plus
        this many MiB. A spawned worker starts far smaller than the process that made
        it, so a cap computed from the parent's size would give it the parent's size more
        room than asked.
    """

    work: Callable[[Any, Any, Emit], None]
    settings: Any
    memory_limit_mb: int | None = None
    max_tasks_per_child: int = 16
    memory_headroom_mb: int | None = None


# ---------------------------------------------------------------------------- worker side
def _address_space_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def address_space_mb() -> int | None:
    """This process's address space, MiB (what a forked worker starts with); ``None``
    where it cannot be read."""
    size = _address_space_bytes()
    return None if size is None else size // 2**20


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count):
    the default number of workers."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def limit_memory(limit_mb: int | None) -> str | None:
    """Cap this process's address space; return why the cap cannot work, if it cannot."""
    if not limit_mb:
        return None
    try:
        import resource
    except ImportError:  # Windows: no guard
        return None
    limit = int(limit_mb) * 2**20
    baseline = _address_space_bytes()
    if baseline is not None and baseline >= limit:
        return (
            f"memory_limit_mb={limit_mb} is below what a worker maps before its first task "
            f"({baseline / 2**20:.0f} MiB); raise it"
        )
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return None


class _Sender:
    """Sends a worker's messages to the parent, one at a time, whichever thread sends.

    A warning can be issued on any thread of the worker, while the task's own thread is
    sending a message; two sends at once would interleave their bytes on the pipe.

    Parameters
    ----------
    transmit
        Puts one message on the way to the parent: a :class:`WorkerPool` worker's pipe's
        ``send``, or a :class:`ProcessPool` worker's warning record writer.
    """

    def __init__(self, transmit: Callable[[dict[str, Any]], None]) -> None:
        self._transmit = transmit
        self._lock = threading.Lock()
        self._local = threading.local()

    def send(self, message: dict[str, Any]) -> None:
        """Send ``message``."""
        # Marked before the lock is taken: a warning this thread issues from then on (a
        # finaliser's, run by the garbage collector at any point) is shown here, and
        # never waits for the lock this thread holds.
        self._local.sending = True
        try:
            with self._lock:
                self._transmit(message)
        finally:
            self._local.sending = False

    def forward_warnings(self, held: Sequence[tuple[Any, ...]] = ()) -> None:
        """From now on, send each warning this process shows to the parent (see the
        module docstring), instead of printing it here.

        Parameters
        ----------
        held
            Warnings shown before, held instead (``_BOOT``): each the arguments of a
            ``warnings.showwarning`` call, shown now, in order.
        """
        own = warnings.showwarning

        def forward(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: Any = None,
            line: str | None = None,
        ) -> None:
            # A warning issued while this thread sends (in pickling), or one the parent
            # can no longer hear, is shown here as before.
            if file is None and not getattr(self._local, "sending", False):
                with suppress(OSError, ValueError):
                    self.send(_warning_message(message, category, filename, lineno))
                    return
            own(message, category, filename, lineno, file, line)

        warnings.showwarning = forward
        for shown in held:
            forward(*shown)


def _warning_message(
    message: Warning | str, category: type[Warning], filename: str, lineno: int
) -> dict[str, Any]:
    """The pool's message for a warning a worker shows: its category by name, so that
    nothing but plain data crosses the pipe."""
    return {
        "type": "warning",
        "module": category.__module__,
        "category": category.__qualname__,
        "message": str(message),
        "filename": str(filename),
        "lineno": int(lineno),
    }


def _show_warning(message: dict[str, Any]) -> None:
    """Issue a worker's warning again in this process, as if issued here.

    This process's filters then apply (a program that ignores a category ignores it from
    its workers too; one that records warnings records a ``Warning``), and its display
    shows it; one they make an error is shown, as it is too late to raise it in its
    item. The category is found among the modules this process has imported, never
    imported for the message; one not found, or that cannot be made from the text alone,
    is a ``UserWarning``.
    """
    found: Any = sys.modules.get(str(message.get("module")))
    for part in str(message.get("category")).split("."):
        found = getattr(found, part, None)
    category = found if isinstance(found, type) and issubclass(found, Warning) else UserWarning
    text = str(message.get("message"))
    try:
        warning = category(text)
    except Exception:  # a category whose constructor wants more than the text
        warning = UserWarning(text)
    filename, lineno = str(message.get("filename")), int(message.get("lineno") or 0)
    try:
        warnings.warn_explicit(warning, type(warning), filename, lineno)
    except Warning:
        # This process's filters make it an error, which the spawned worker, not
        # knowing them, did not raise where it was issued: raised here, in the pool's
        # loop, it would stop the whole run for one item's warning. It is shown.
        warnings.showwarning(warning, type(warning), filename, lineno)


#: What a worker process runs first, with ``exec`` (a builtin: nothing of cadstore is
#: imported to unpickle it in a spawned worker), given ``start``, the name of a function of
#: this module, and ``args``. A spawned worker imports what its target and arguments name
#: as it unpickles them, before its target runs; had it been a function of cadstore, the
#: warnings of importing cadstore (a dependency's, as it is imported) were printed on the
#: worker's stderr. They are held as cadstore is imported, and ``start(*args,
#: held=...)`` forwards them with the worker's others (``_Sender.forward_warnings``).
_BOOT: Final = """
import warnings

held = []


def hold(message, category, filename, lineno, file=None, line=None):
    held.append((message, category, filename, lineno, file, line))


shown, warnings.showwarning = warnings.showwarning, hold
try:
    import cadstore.workers as workers
finally:
    if warnings.showwarning is hold:
        warnings.showwarning = shown
getattr(workers, start)(*args, held=held)
"""


def _booting(start: Callable[..., None], *args: Any) -> tuple[str, dict[str, Any]]:
    """The arguments of ``exec`` that run ``_BOOT``, then ``start(*args, held=...)``."""
    return (_BOOT, {"start": start.__name__, "args": args})


class _SpecParcel:
    """A :class:`WorkerSpec` on its way to a worker process, opened once it forwards its
    warnings.

    A spawned worker gets its start-up arguments pickled as :meth:`Process.start` runs,
    the one moment multiprocessing lets a lock, queue or shared value of the spec be
    passed to a new process; it unpickles them before the worker's code runs, which
    would import the modules of the work (the CAD kernel, a flow's task) before it
    forwards warnings. The spec is therefore pickled then, with multiprocessing's own
    reduction, but into bytes it travels as (plain bytes, whose unpickling imports
    nothing, not even cadstore: ``_BOOT``), and unpickled by :meth:`open`, once the
    worker forwards warnings. A forked worker inherits the parcel, spec and all.

    Parameters
    ----------
    spec
        The spec, in the process that has it.
    pickled
        The spec as the spawning process pickled it, in the worker.
    """

    def __init__(self, spec: WorkerSpec | None, pickled: bytes | None = None) -> None:
        self._spec = spec
        self._pickled = pickled

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        # Plain bytes in the worker (``_BOOT``: no class of cadstore to import yet).
        return bytes, (bytes(ForkingPickler.dumps(self._spec)),)

    def open(self) -> WorkerSpec:
        """The spec, unpickled here if it came pickled."""
        if self._spec is None:
            self._spec = ForkingPickler.loads(self._pickled or b"")
            self._pickled = None
        return self._spec


def _worker_main(
    conn: Connection, parcel: _SpecParcel | bytes, held: Sequence[tuple[Any, ...]] = ()
) -> None:
    """Body of a worker process, run by ``_BOOT``: take tasks from ``conn`` until told to
    stop.

    The spec is opened once the worker forwards its warnings (:class:`_SpecParcel`; it
    comes pickled, as bytes, to a spawned worker): those of importing the modules of the
    work then reach the parent like those of its tasks, and those ``held`` as the
    worker imported cadstore, instead of its own stderr.
    """
    # Ctrl-C reaches the whole process group; the parent decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sender = _Sender(conn.send)
    sender.forward_warnings(held)
    if isinstance(parcel, bytes):
        parcel = _SpecParcel(None, parcel)
    spec = parcel.open()
    # Native code writes some messages straight to stdout; keep stdout for the caller.
    with suppress(OSError, ValueError):
        sys.stdout.flush()
        os.dup2(2, 1)
    limit_mb = spec.memory_limit_mb
    if limit_mb is None and spec.memory_headroom_mb:
        start = address_space_mb()
        limit_mb = None if start is None else start + spec.memory_headroom_mb
    problem = limit_memory(limit_mb)
    if problem is not None:
        sender.send({"type": "fatal", "error": problem})
        return
    sender.send({"type": "ready", "pid": os.getpid()})
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if task is None:
            return
        recycle = False

        def emit(message: dict[str, Any]) -> None:
            nonlocal recycle
            recycle = recycle or bool(message.get("recycle"))
            sender.send(message)

        spec.work(task, spec.settings, emit)
        sender.send({"type": "done", "recycle": recycle})


# ---------------------------------------------------------------------------- parent side
def _issue_warnings_left(conn: Connection) -> None:
    """Issue the warnings a stopped worker sent after its pipe was last read: one a
    finaliser issued as the worker took the message to stop, say. Its other messages
    come too late to be of use: its task is over, done or lost."""
    with suppress(EOFError, OSError):
        while conn.poll():
            message = conn.recv()
            if isinstance(message, dict) and message.get("type") == "warning":
                _show_warning(message)


@dataclass
class _Slot:
    """One worker process and what it is doing."""

    process: Any
    conn: Connection
    ready: bool = False
    task: Any = None
    deadline: float = math.inf
    limit: float = math.inf
    tasks_done: int = 0
    retire: bool = False


class WorkerPool:
    """Run tasks on at most ``workers`` supervised worker processes (see the module docstring).

    Parameters
    ----------
    spec
        What the workers run.
    workers
        The most worker processes at once.
    timeout
        Seconds a worker may stay silent on a task before it is killed (``None``: no limit).
    listener
        Hears every message, every task done and every task lost.
    timeout_of
        The time limit of one task, when tasks have limits of their own (the flow
        framework's limits by file size); ``None`` from it means no limit. Without it every
        task has ``timeout``.
    start_method
        ``"fork"`` or ``"spawn"`` to impose one; ``None`` lets :func:`mp_context` choose.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        workers: int,
        timeout: float | None,
        listener: Listener,
        *,
        timeout_of: Callable[[Any], float | None] | None = None,
        start_method: str | None = None,
    ) -> None:
        self.spec = spec
        self.workers = workers
        self.timeout = math.inf if timeout is None else float(timeout)
        self.listener = listener
        self.timeout_of = timeout_of
        self.start_method = start_method
        self.slots: list[_Slot] = []
        self.startup_failures = 0

    def _limit(self, task: Any) -> float:
        """Seconds ``task`` may stay silent."""
        if self.timeout_of is None:
            return self.timeout
        limit = self.timeout_of(task)
        return math.inf if limit is None else float(limit)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- process management
    def _start(self) -> _Slot:
        context: Any = (
            mp_context()
            if self.start_method is None
            else multiprocessing.get_context(self.start_method)
        )
        parent_conn, child_conn = context.Pipe(duplex=True)
        process = context.Process(
            target=exec,
            args=_booting(_worker_main, child_conn, _SpecParcel(self.spec)),
            name="cadstore-worker",
            daemon=True,
        )
        try:
            with without_main_script():
                process.start()
        except BaseException:
            parent_conn.close()
            child_conn.close()
            raise
        child_conn.close()  # so that the parent sees EOF when the worker dies
        slot = _Slot(process, parent_conn)
        self.slots.append(slot)
        return slot

    def _drop(self, slot: _Slot, *, kill: bool) -> None:
        if kill and slot.process.is_alive():
            slot.process.kill()
        slot.process.join(timeout=None if kill else 5.0)
        if slot.process.is_alive():  # did not stop when asked: it is ours, kill it
            slot.process.kill()
            slot.process.join()
        _issue_warnings_left(slot.conn)
        slot.conn.close()
        self.slots.remove(slot)

    def shutdown(self) -> None:
        """Stop every worker: politely when idle, by force when busy. Idempotent."""
        for slot in list(self.slots):
            if slot.task is None and slot.process.is_alive():
                with suppress(OSError):
                    slot.conn.send(None)
                self._drop(slot, kill=False)
            else:
                self._drop(slot, kill=True)

    # -- main loop
    def run(self, tasks: Sequence[Any]) -> None:
        """Run every task; return when each is done or lost.

        Raises
        ------
        RuntimeError
            If workers keep dying before they take a task.
        ValueError
            If a worker cannot start as configured (a memory cap below its own size).
        """
        pending = deque(tasks)
        while pending or any(slot.task is not None for slot in self.slots):
            self._assign(pending)
            busy = [slot for slot in self.slots if slot.task is not None or not slot.ready]
            now = time.monotonic()
            deadline = min((slot.deadline for slot in busy), default=now + 1.0)
            waitables: list[Any] = [slot.conn for slot in busy]
            waitables += [slot.process.sentinel for slot in busy]
            wait_for(waitables, timeout=max(0.0, min(deadline - now, 3600.0)))
            for slot in busy:
                self._service(slot, pending)

    def _assign(self, pending: deque[Any]) -> None:
        while pending:
            idle = next((s for s in self.slots if s.task is None and not s.retire), None)
            if idle is None:
                if len(self.slots) >= self.workers:
                    return
                idle = self._start()
            try:
                idle.conn.send(pending[0])
            except OSError:
                if not idle.ready:
                    # It died before the task reached it (one larger than the pipe
                    # holds waits for the worker to read it). What it sent first is
                    # read: why it could not start (a memory cap below its size,
                    # raised as when the task reached it), its warnings, or that it
                    # was ready before it died.
                    idle.process.join(timeout=5.0)
                    self._receive(idle)
                if idle.ready:
                    # The worker died while idle (killed from outside): replace it.
                    self._drop(idle, kill=True)
                else:
                    # It died starting: a start-up failure, or a worker that can never
                    # start is started forever.
                    self._start_failed(idle)
                continue
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                # This task cannot travel to a worker (it holds a lock, a generator...):
                # pickled before a byte is sent, so the worker is untouched. Its failure
                # alone; the other tasks go on.
                task = pending.popleft()
                self.listener.lost(
                    task,
                    None,
                    "error",
                    f"{type(exc).__name__}: cannot be sent to a worker process ({exc})",
                    0.0,
                )
                continue
            idle.task = pending.popleft()
            idle.limit = self._limit(idle.task)
            # Until the worker says it started, allow for its start-up (imports under spawn).
            startup = 0.0 if idle.ready else _STARTUP_SECONDS
            idle.deadline = time.monotonic() + startup + idle.limit

    def _receive(self, slot: _Slot) -> bool:
        """Handle every message waiting on ``slot``; return False once its pipe is closed."""
        while True:
            try:
                if not slot.conn.poll():
                    return True
                message = slot.conn.recv()
            except (EOFError, OSError):
                return False
            kind = message["type"]
            if kind == "ready":
                slot.ready = True
                self.startup_failures = 0
                continue
            if kind == "fatal":
                raise ValueError(message["error"])
            if kind == "warning":
                # Not progress: a worker that only warns still runs out its time.
                _show_warning(message)
                continue
            slot.deadline = time.monotonic() + slot.limit
            if kind == "done":
                task, slot.task = slot.task, None
                slot.deadline = math.inf
                slot.tasks_done += 1
                slot.retire = message["recycle"] or (
                    slot.tasks_done >= self.spec.max_tasks_per_child
                )
                self.listener.done(task)
                continue
            self.listener.message(message)

    def _service(self, slot: _Slot, pending: deque[Any]) -> None:
        open_ = self._receive(slot)
        if slot.task is None:
            if slot.retire:
                with suppress(OSError):
                    slot.conn.send(None)
                self._drop(slot, kill=False)
            return
        overdue = time.monotonic() > slot.deadline
        if not open_ or not slot.process.is_alive() or (overdue and not slot.ready):
            # A worker that never got ready counts as a start-up failure, not a timeout.
            slot.process.join(timeout=0.0 if overdue else 5.0)
            self._lost(slot, pending)
        elif overdue:
            task, pid, seconds = slot.task, slot.process.pid, slot.limit
            self._drop(slot, kill=True)
            limit = f"{seconds:g} s"
            self.listener.lost(
                task,
                pid,
                "timeout",
                f"Timeout: exceeded the per-item time limit of {limit}; worker {pid} was killed",
                seconds,
            )

    def _start_failed(self, slot: _Slot) -> None:
        """Drop ``slot``, whose worker died or hung before it could take any task (not
        its task's fault), and count it.

        Raises
        ------
        RuntimeError
            Once ``_MAX_STARTUP_FAILURES`` workers in a row failed so: the cause is the
            environment, and a worker started again would fail again.
        """
        code = slot.process.exitcode  # None: still running, hung
        self._drop(slot, kill=True)
        self.startup_failures += 1
        if self.startup_failures >= _MAX_STARTUP_FAILURES:
            last = "hung" if code is None else _how_it_ended(code)
            raise RuntimeError(
                f"workers fail to start ({self.startup_failures} in a row, the last one "
                f"{last}); run with workers=0 to see the error in this process"
            )

    def _lost(self, slot: _Slot, pending: deque[Any]) -> None:
        task = slot.task
        if not slot.ready:
            self._start_failed(slot)
            pending.appendleft(task)
            return
        pid, code = slot.process.pid, slot.process.exitcode
        self._drop(slot, kill=True)
        how = _how_it_ended(code)
        self.listener.lost(task, pid, "crash", f"WorkerCrash: worker {pid} {how}", 0.0)


def _how_it_ended(code: int | None) -> str:
    """How a worker process that is gone ended, from its exit code: the signal that
    killed it by name, or the code it exited with."""
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


# ---------------------------------------------------------------------- other process pools
#: The longest warning record a :class:`ProcessPool` worker writes: the bytes one
#: ``write`` to a pipe puts there whole, never mixed with another worker's (POSIX), so
#: that its workers share one pipe without a lock between processes and a worker killed
#: while writing cannot leave half a record. ``None``: no such guarantee (Windows).
_RECORD_BYTES: Final = getattr(select, "PIPE_BUF", None)


def _json_line(message: dict[str, Any]) -> bytes:
    """``message`` as one line of UTF-8 JSON: a character outside ASCII costs its UTF-8
    bytes, not a six-byte escape (twelve outside the BMP); a lone surrogate (a file name
    decoded with ``surrogateescape``) is written as the JSON escape that reads back as
    it."""
    return (json.dumps(message, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def _warning_record(message: dict[str, Any]) -> bytes:
    """``message`` (a :func:`_warning_message`) as one line of JSON of at most
    ``_RECORD_BYTES``; when too long, its file name keeps its last 256 characters and
    its text the longest start that fits, marked ``" [...]"``.

    Raises
    ------
    ValueError
        If even the cut message does not fit (the warning is then shown in the worker).
    """
    limit = int(_RECORD_BYTES or 0)
    record = _json_line(message)
    if len(record) <= limit:
        return record
    text = str(message["message"])
    cut = {**message, "filename": str(message["filename"])[-256:]}
    record = _json_line(cut)
    if len(record) <= limit:
        return record

    def cut_to(kept: int) -> bytes:
        return _json_line({**cut, "message": text[:kept] + " [...]"})

    # The longest start that fits: a record grows with the characters kept, each at
    # least one byte, so no more than ``limit`` of them can fit.
    low, high = 0, min(len(text) - 1, limit)
    if len(cut_to(low)) > limit:
        raise ValueError("a warning too long to forward")
    while low < high:
        middle = (low + high + 1) // 2
        if len(cut_to(middle)) <= limit:
            low = middle
        else:
            high = middle - 1
    return cut_to(low)


def _forward_pool_warnings(conn: Connection, held: Sequence[tuple[Any, ...]] = ()) -> None:
    """The initializer of a :class:`ProcessPool` worker, run by ``_BOOT``: from now on,
    each warning it shows goes to the parent through ``conn``, as a :class:`WorkerPool`
    worker's does, first those ``held`` as it imported cadstore."""

    def write(message: dict[str, Any]) -> None:
        if message.get("type") != "warning":
            raise ValueError("a pool worker sends warnings only")
        os.write(conn.fileno(), _warning_record(message))

    _Sender(write).forward_warnings(held)


def _relay_pool_warnings(conn: Connection) -> None:
    """Body of a :class:`ProcessPool`'s relay thread: issue each warning record its
    workers write again in this process, until the empty line that ends them."""
    fd, pending = conn.fileno(), b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if not line:
                return
            try:
                message = json.loads(line)
            except ValueError:  # not a record of the workers: nothing to issue
                continue
            if isinstance(message, dict):
                _show_warning(message)


class ProcessPool(cf.ProcessPoolExecutor):
    """A :class:`concurrent.futures.ProcessPoolExecutor` whose workers' warnings are
    issued again in this process, as a :class:`WorkerPool`'s are (see the module
    docstring): for the work that needs no supervision, a merge's decoding, say.

    Each worker, once started, forwards the warnings it shows through one pipe all of
    them share, each as one record written whole (``_RECORD_BYTES``); a thread of this
    process issues them again as they come, as a thread pool's warnings are issued by
    its threads. The thread starts once the workers of the first task exist, so that
    forked workers are forked from a process without it. ``shutdown`` returns once
    every warning of the workers has been issued. Where a pipe does not keep records
    whole (Windows), the warnings are shown by the workers, as without this class.
    A spawned worker runs the imports of the caller's main script first (as
    multiprocessing's spawned workers do, unlike a :class:`WorkerPool`'s): a warning
    of those is shown by the worker.

    Parameters
    ----------
    max_workers
        The most worker processes at once (``None``: every core).
    mp_context
        How the workers start (``None``: multiprocessing's default).
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None) -> None:
        context = mp_context if mp_context is not None else multiprocessing.get_context()
        self._warnings: tuple[Connection, Connection] | None = None
        if _RECORD_BYTES is None:
            super().__init__(max_workers, mp_context=context)
            return
        reader, writer = context.Pipe(duplex=False)
        self._warnings = (reader, writer)
        self._relay = threading.Thread(
            target=_relay_pool_warnings, args=(reader,), name="cadstore-warnings", daemon=True
        )
        self._relay_lock = threading.Lock()
        self._relay_stopped = False
        super().__init__(
            max_workers,
            mp_context=context,
            initializer=exec,
            initargs=_booting(_forward_pool_warnings, writer),
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """As :meth:`concurrent.futures.Executor.submit`; the first one starts the relay
        thread, after the workers it starts (forked) exist."""
        future = super().submit(fn, *args, **kwargs)
        if self._warnings is not None and not self._relay.is_alive():
            with self._relay_lock:
                if not self._relay_stopped and self._relay.ident is None:
                    self._relay.start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As :meth:`concurrent.futures.Executor.shutdown`; with ``wait``, every warning
        of the workers has been issued when it returns."""
        # Without wait the executor forgets its workers at once: they are kept here, for
        # the relay to end only once they are gone.
        workers = list((getattr(self, "_processes", None) or {}).values())
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            self._stop_relay()
        else:
            threading.Thread(target=self._stop_relay_after, args=(workers,), daemon=True).start()

    def _stop_relay_after(self, workers: Sequence[Any]) -> None:
        for process in workers:
            process.join()
        self._stop_relay()

    def _stop_relay(self) -> None:
        """End the relay: the workers are gone, so the records before the empty line
        written here are all there will be. Idempotent."""
        if self._warnings is None:
            return
        with self._relay_lock:
            if self._relay_stopped:
                return
            self._relay_stopped = True
        reader, writer = self._warnings
        if self._relay.ident is not None:
            try:
                os.write(writer.fileno(), b"\n")
            except OSError:
                return  # the relay reads on: its pipe stays open
            self._relay.join()
        writer.close()
        reader.close()
