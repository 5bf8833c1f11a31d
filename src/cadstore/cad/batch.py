"""Encode many CAD files into per-body ``.data`` items, in parallel and with every failure isolated.

:func:`encode_files` is the function behind ``cadstore encode``::

    from cadstore.cad.batch import encode_files

    report = encode_files("parts/", "out", workers=8, merge=True)
    print(len(report.encoded), "items,", len(report.failed), "failures")

**Output layout** (the vendor's flow layout, see ``vendor-system.md`` §4)::

    <output_dir>/encoded/<name>.zarr.data      one OptStorage item per body
    <output_dir>/files_summary/<name>.json     each item's metadata (OptStorage.close())
    <output_dir>/error_summary.json            what failed in the last run, and why
    <output_dir>/<stem>.dataset/.infoset/.attribset/.flow   with merge=True

**Item names.** Every body of every file is one item named ``<hash>_<body index>``, where
``<hash>`` is the 32-hex MD5 digest of the file's absolute path without its extension,
encoded as UTF-8 (:func:`item_base_name`), as the vendor's
``generate_unique_id_from_path(path_without_suffix)`` names items. The name depends only on
where the file is, so a run that is repeated or resumed finds its items again; moving a file
gives it new names, and two files that differ only by extension (``a.step`` and ``a.iges``)
would share names, so the second is refused as a duplicate.

**What each item holds.** The arrays of every ``BrepEncoder.push_*`` method (the two
histogram methods only with ``histograms=True``), the encoder's ``descriptions/*`` tables,
and the metadata ``Item`` (the source path), ``size_cadfile`` (bytes), ``body_index``,
``num_bodies`` and ``processing_time`` (seconds spent on this body: its topology, every push
and the storage writes, but not reading the file nor the final publish).

**Isolation.** Files are processed in worker processes, at most ``workers`` at a time, each
worker handling up to :data:`MAX_TASKS_PER_CHILD` files before it is replaced so that memory
the kernel does not give back is returned to the system. The parent supervises the workers
itself instead of using ``concurrent.futures.ProcessPoolExecutor``, because on Python 3.11
the executor cannot do what is needed here: it refuses the ``fork`` start method together
with ``max_tasks_per_child``, it deadlocks when a worker retires with tasks queued
(CPython gh-115634), it cannot kill one hung worker without breaking the whole pool, and it
cannot tell which task a crashed worker was running. The supervisor knows which file (and
which body) each worker is on, so:

* a **time limit** (``timeout`` seconds) applies separately to reading the file and to
  encoding each body; a worker that exceeds it is killed (``SIGKILL``, so a kernel call that
  never returns cannot hang the run) and the file is recorded with reason ``"timeout"``;
* a **memory guard** caps each worker's address space at ``memory_limit_mb``
  (``RLIMIT_AS``), so a part that explodes raises ``MemoryError`` in its worker (reason
  ``"memory"``) instead of driving the machine into swap or the OOM killer;
* a worker that **dies** (a segmentation fault in the kernel, ``os._exit``, the OOM killer)
  has its file recorded with reason ``"crash"`` and the signal or exit code;
* a file that cannot be read (corrupt, truncated, empty, not CAD, no solid: reason
  ``"corrupt"``; gone or not readable: ``"unreadable"``), a kernel exception (``"kernel"``),
  a body with no faces (``"no_faces"``), arrays the storage refuses (NaN:
  ``"invalid_data"``), a storage failure (``"storage"``) or any other exception
  (``"error"``) fails only that file or body;
* two files whose items would share names are refused before any work (``"duplicate"``),
  and a failed merge is reported as ``"merge"``.

Bodies a worker published before it was killed stay encoded. Every failure is one entry of
``error_summary.json``, written atomically at the end of the run (also when it is
interrupted)::

    [{"item_index": 3, "item": "/abs/bad.step", "name": null, "body_index": null,
      "worker_pid": 4242, "reason": "corrupt", "error": "CorruptStoreError: ...",
      "logs": ["Traceback ...", ...], "seconds": 0.01}]

``item_index`` is the file's position in the sorted input list, ``name`` and ``body_index``
identify the body when the failure is specific to one.

Workers are started with ``fork`` when the calling process has a single thread (the parent
starts no thread of its own, and its progress bar runs without tqdm's monitor thread), and
with ``spawn`` otherwise, since forking a threaded process can copy a lock another thread
holds; a spawned worker imports the kernel itself (about 2 s) before its time limit starts.

**Resuming and user data.** With ``resume=True`` (the default) a body whose ``.data`` file
exists is skipped, not re-encoded, and a file whose bodies all exist is not even read.
Nothing is ever deleted: a ``.data`` file is replaced (atomically) only with
``resume=False``, and the only files removed are this module's own scratch, the empty
working directory and temporary file of a body whose worker was killed.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib.machinery
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from glob import glob
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any, Final

from cadstore.cad.encoder import BrepEncoder
from cadstore.cad.loader import SUPPORTED_EXTENSIONS, CADLoader, CADModel
from cadstore.cad.samples import PART_KINDS, make_box, write_sample_set
from cadstore.errors import CadstoreError, CorruptStoreError, InvalidDataError
from cadstore.io.location import resolve
from cadstore.io.publish import TEMP_PREFIX, write_bytes_atomic
from cadstore.schema import Schema, SchemaBuilder
from cadstore.storage.memory import MemoryStorage
from cadstore.storage.opt import OptStorage

__all__ = [
    "DEFAULT_MEMORY_LIMIT_MB",
    "DEFAULT_TIMEOUT",
    "ENCODED_DIR",
    "ERROR_SUMMARY",
    "MAX_TASKS_PER_CHILD",
    "PART_FAMILY",
    "PUSH_METHODS",
    "SUMMARY_DIR",
    "EncodeReport",
    "encode_files",
    "encode_sample_set",
    "find_cad_files",
    "item_base_name",
    "item_name",
    "sample_set_schema",
]

#: Default per-item time limit, seconds (the vendor's default).
DEFAULT_TIMEOUT: Final = 120.0
#: Default address-space cap of a worker, MiB.
DEFAULT_MEMORY_LIMIT_MB: Final = 4096
#: Files a worker handles before it is replaced by a fresh process.
MAX_TASKS_PER_CHILD: Final = 16
#: Sub-directory of the output directory holding the ``.data`` items.
ENCODED_DIR: Final = "encoded"
#: Sub-directory holding the per-item metadata JSON files.
SUMMARY_DIR: Final = "files_summary"
#: File listing the failures of the last run.
ERROR_SUMMARY: Final = "error_summary.json"
#: The encoder methods run on every body, in order; the last two are the optional histograms.
PUSH_METHODS: Final[tuple[str, ...]] = (
    "push_face_indices",
    "push_face_attributes",
    "push_face_discretization",
    "push_face_neighbors_count",
    "push_edge_indices",
    "push_edge_attributes",
    "push_curvegrid",
    "push_face_adjacency_graph",
    "push_extended_adjacency",
    "push_face_pair_edges_path",
    "push_average_face_pair_distance_histograms",
    "push_average_face_pair_angle_histograms",
)
_HISTOGRAM_METHODS: Final = PUSH_METHODS[-2:]
# A fresh spawned worker imports the kernel before it can start; this bounds that wait.
_STARTUP_SECONDS: Final = 120.0
# Workers that die before ever becoming ready, in a row, before the run gives up.
_MAX_STARTUP_FAILURES: Final = 3
# Lines of traceback kept in a failure's logs.
_TRACEBACK_LINES: Final = 30
# Failures fully explained by their message: a traceback in the logs would only be noise.
_EXPECTED_REASONS: Final = frozenset({"corrupt", "no_faces"})


# ---------------------------------------------------------------------------- naming
def item_base_name(path: str | os.PathLike[str]) -> str:
    """Return the 32-hex stem shared by the items of one CAD file.

    The MD5 hex digest of ``os.path.abspath(path)`` without its extension, encoded as UTF-8:
    the same path always gives the same stem, on any machine.

    Parameters
    ----------
    path
        The CAD file (it need not exist).

    Returns
    -------
    str
        32 lowercase hex digits.

    Examples
    --------
    >>> item_base_name("/parts/bracket.step") == item_base_name("/parts/bracket.iges")
    True
    >>> len(item_base_name("/parts/bracket.step"))
    32
    """
    stem = os.path.splitext(os.path.abspath(os.fspath(path)))[0]
    # A name, not a security measure; usedforsecurity=False keeps FIPS builds working.
    return hashlib.md5(stem.encode("utf-8"), usedforsecurity=False).hexdigest()


def item_name(path: str | os.PathLike[str], body_index: int) -> str:
    """Return the item name of body ``body_index`` of ``path``: ``<item_base_name>_<index>``.

    Parameters
    ----------
    path
        The CAD file.
    body_index
        The body, ``0 <= body_index < model.num_bodies``.

    Returns
    -------
    str
        The name; the item is ``<output_dir>/encoded/<name>.zarr.data``.
    """
    return f"{item_base_name(path)}_{int(body_index)}"


# ---------------------------------------------------------------------------- inputs
def _has_magic(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def _is_cad(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in SUPPORTED_EXTENSIONS


def _walk(directory: str, exclude: str | None) -> Iterator[str]:
    for root, dirs, names in os.walk(directory):
        # Sorted, so the input order (and each file's item_index) is reproducible.
        dirs[:] = sorted(d for d in dirs if os.path.join(root, d) != exclude)
        yield from (os.path.join(root, n) for n in sorted(names) if _is_cad(n))


def find_cad_files(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    exclude: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Return the CAD files ``inputs`` designates, as absolute paths, each once.

    Parameters
    ----------
    inputs
        A directory (searched recursively for ``.step``, ``.stp``, ``.iges``, ``.igs`` and
        ``.brep`` files, in any case), a glob pattern (``"parts/**/*.step"``; every matching
        file is taken, whatever its extension), a file, or a sequence of these.
    exclude
        A directory not to search (the output directory, when it lies inside an input).

    Returns
    -------
    list of Path
        In the order given; directory and glob matches sorted.

    Raises
    ------
    FileNotFoundError
        If an input does not exist or a pattern matches nothing.
    ValueError
        If the inputs hold no file at all.
    """
    entries = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    skip = os.path.abspath(os.fspath(exclude)) if exclude is not None else None
    found: dict[str, None] = {}
    for entry in entries:
        text = os.fspath(entry)
        if os.path.isdir(text):
            found.update(dict.fromkeys(_walk(os.path.abspath(text), skip)))
        elif os.path.exists(text):
            found[os.path.abspath(text)] = None
        elif _has_magic(text):
            matches = sorted(glob(text, recursive=True))
            files = [os.path.abspath(m) for m in matches if os.path.isfile(m)]
            if not files:
                raise FileNotFoundError(errno.ENOENT, "No file matches the pattern", text)
            found.update(dict.fromkeys(files))
        else:
            raise FileNotFoundError(errno.ENOENT, "No such CAD file or directory", text)
    if not found:
        names = ", ".join(sorted(SUPPORTED_EXTENSIONS))
        raise ValueError(f"no CAD files ({names}) found in {[os.fspath(e) for e in entries]}")
    return [Path(p) for p in found]


# ---------------------------------------------------------------------------- report
@dataclass
class EncodeReport:
    """What :func:`encode_files` did.

    Attributes
    ----------
    output_dir
        The output directory (absolute).
    files
        Number of input files.
    encoded
        Names of the items encoded by this run, in input order.
    skipped
        Names of the items that already existed and were left untouched (``resume=True``).
    failed
        The entries of ``error_summary.json`` (see the module docstring).
    seconds
        Wall time of the whole run, merge included.
    timings
        Seconds summed over this run's work, by step: ``"load"`` (reading files),
        ``"brep"`` (body topology), one key per push method (computation only) and
        ``"storage"`` (every storage call: schema, ``save_data``, ``save_metadata``,
        ``compress_store``, ``close``). Worker time, so with several workers the sum
        exceeds :attr:`seconds`.
    storage_timings
        ``"storage"`` split by storage call (``"open"``, ``"set_schema"``, ``"get_schema"``,
        ``"get_keys"``, ``"save_data"``, ``"save_metadata"``, ``"compress_store"`` with its
        fsync, ``"close"``), seconds summed over this run's items.
    bytes_written
        Total size of the ``.data`` files written.
    dataset
        The merged ``.dataset`` (``merge=True`` and at least one item), else ``None``.
    error_summary
        Path of ``error_summary.json``.
    workers
        Worker processes used (0: everything ran in the calling process).
    """

    output_dir: str
    files: int = 0
    encoded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    storage_timings: dict[str, float] = field(default_factory=dict)
    bytes_written: int = 0
    dataset: str | None = None
    error_summary: str = ""
    workers: int = 0

    @property
    def ok(self) -> bool:
        """Whether nothing failed."""
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-compatible data (what ``cadstore encode --json`` prints).

        Returns
        -------
        dict
            Every attribute, plus ``"ok"``.
        """
        doc = dataclasses.asdict(self)
        doc["ok"] = self.ok
        return doc


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class _Settings:
    """Everything a worker needs; picklable, so it can go to a spawned process."""

    encoded_dir: str
    summary_dir: str
    schema: dict[str, Any]
    pushes: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]
    resume: bool
    memory_limit_mb: int | None


@dataclass(frozen=True)
class _Task:
    index: int
    path: str
    base: str
    #: Metadata the caller gives for this file, saved into each of its items.
    metadata: tuple[tuple[str, Any], ...] = ()


def _default_schema() -> dict[str, Any]:
    builder = SchemaBuilder("CAD_analysis", description="Bodies encoded by cadstore encode")
    builder.define_file_metadata("size_cadfile", "int64", "Size of the source CAD file, bytes")
    builder.define_file_metadata("processing_time", "float32", "Seconds spent on the body")
    builder.define_file_metadata("body_index", "int32", "Index of the body in its file")
    builder.define_file_metadata("num_bodies", "int32", "Number of bodies of the file")
    return builder.build()


def _complete_schema(
    base: dict[str, Any], pushes: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]
) -> dict[str, Any]:
    """Return ``base`` with every group and array the pushes will declare.

    Each push method declares its arrays in the item's schema when they are missing, which
    costs a schema rebuild and ``set_schema`` per method and per item. Encoding a box once
    here, in memory, collects the finished schema through public calls only; every item
    then starts with it, and the pushes find nothing left to declare.
    """
    storage = MemoryStorage()
    storage.set_schema(base)
    encoder = BrepEncoder(make_box(), storage)
    for method, arguments in pushes:
        getattr(encoder, method)(**dict(arguments))
    return storage.get_schema()


def _push_plan(
    pointsamples: int, ugrid: int, path_len: int, num_bins: int, histograms: bool
) -> tuple[tuple[str, tuple[tuple[str, int], ...]], ...]:
    arguments: dict[str, dict[str, int]] = {
        "push_face_discretization": {"pointsamples": pointsamples},
        "push_curvegrid": {"ugrid": ugrid},
        "push_face_pair_edges_path": {"max_allow_edge_length": path_len},
        "push_average_face_pair_distance_histograms": {"num_bins": num_bins},
        "push_average_face_pair_angle_histograms": {"num_bins": num_bins},
    }
    return tuple(
        (method, tuple(arguments.get(method, {}).items()))
        for method in PUSH_METHODS
        if histograms or method not in _HISTOGRAM_METHODS
    )


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# ---------------------------------------------------------------------------- storage timing
class _TimedStorage(OptStorage):
    """An OptStorage that times its public calls: :attr:`calls` by method, :attr:`seconds`.

    The encoder's push methods call the storage themselves; timing the storage from inside
    is what separates storage time from encoding time in the report and the benchmark.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.seconds = 0.0
        self.calls: dict[str, float] = {}
        self._depth = 0
        with self._timed("open"):
            super().__init__(*args, **kwargs)

    @contextmanager
    def _timed(self, call: str) -> Iterator[None]:
        # close() calls compress_store() itself when needed: count the outer call only.
        self._depth += 1
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                elapsed = time.perf_counter() - t0
                self.seconds += elapsed
                self.calls[call] = self.calls.get(call, 0.0) + elapsed

    def save_data(self, data_key: str, data: Any) -> None:  # docstring inherited
        with self._timed("save_data"):
            super().save_data(data_key, data)

    def save_metadata(self, key: str, value: Any) -> None:
        with self._timed("save_metadata"):
            super().save_metadata(key, value)

    def set_schema(self, schema: Any, *, strict: bool = False) -> None:
        with self._timed("set_schema"):
            super().set_schema(schema, strict=strict)

    def get_schema(self) -> dict[str, Any]:
        with self._timed("get_schema"):
            return super().get_schema()

    def get_keys(self) -> list[str]:
        with self._timed("get_keys"):
            return super().get_keys()

    def compress_store(self) -> int:
        with self._timed("compress_store"):
            return super().compress_store()

    def close(self) -> None:
        with self._timed("close"):
            super().close()


# ---------------------------------------------------------------------------- worker side
_Emit = Callable[[dict[str, Any]], None]


class _NoFacesError(ValueError):
    """A body without faces: nothing to encode."""


def _reason(exc: BaseException, *, loading: bool) -> str:
    if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__:
        return "memory"
    if isinstance(exc, _NoFacesError):
        return "no_faces"
    if type(exc).__module__.split(".")[0] == "OCP":
        return "kernel"
    if loading and isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
        return "unreadable"
    if loading and isinstance(exc, CorruptStoreError | OSError):
        return "corrupt"
    if isinstance(exc, InvalidDataError):
        return "invalid_data"
    if isinstance(exc, CadstoreError | OSError):
        return "storage"
    return "error"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _traceback_lines(exc: BaseException, reason: str = "error") -> list[str]:
    if reason in _EXPECTED_REASONS:
        return []
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    return lines[-_TRACEBACK_LINES:]


@contextmanager
def _collect_warnings(logs: list[str]) -> Iterator[None]:
    # A warning (a degenerate face, a numpy RuntimeWarning) is worth keeping in the logs but
    # must not fail the item, whatever filters the calling program installed.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            logs.extend(f"{w.category.__name__}: {w.message}" for w in caught)


def _discard(store_path: str) -> None:
    # Nothing is written to the working directory before the publish, so on failure it is
    # empty; rmdir (never rmtree) cannot remove anything else.
    with suppress(OSError):
        os.rmdir(store_path)


def _encode_body(
    model: CADModel, body_index: int, name: str, task: _Task, settings: _Settings
) -> dict[str, Any]:
    store_path = os.path.join(settings.encoded_dir, f"{name}.zarr")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    storage = _TimedStorage(store_path, mode="w", summary_dir=settings.summary_dir)
    try:
        brep = model.get_brep(body_index)
        if brep.num_faces == 0:
            raise _NoFacesError(f"body {body_index} has no faces, so there is nothing to encode")
        timings["brep"] = time.perf_counter() - t0 - storage.seconds
        storage.set_schema(settings.schema)
        encoder = BrepEncoder(brep, storage)
        for method, arguments in settings.pushes:
            before, start = storage.seconds, time.perf_counter()
            getattr(encoder, method)(**dict(arguments))
            timings[method] = time.perf_counter() - start - (storage.seconds - before)
        storage.save_metadata("Item", task.path)
        storage.save_metadata("size_cadfile", os.path.getsize(task.path))
        storage.save_metadata("body_index", body_index)
        storage.save_metadata("num_bodies", model.num_bodies)
        processing = time.perf_counter() - t0
        storage.save_metadata("processing_time", processing)
        for key, value in task.metadata:
            storage.save_metadata(key, value)
        size = storage.compress_store()
        storage.close()
    except BaseException:
        _discard(store_path)
        raise
    timings["storage"] = storage.seconds
    return {
        "seconds": processing,
        "bytes": size,
        "timings": timings,
        "storage_calls": storage.calls,
    }


def _process_file(task: _Task, settings: _Settings, emit: _Emit) -> None:
    """Read one file and encode its bodies, reporting each step through ``emit``.

    Messages (dicts with a ``"type"``): ``start``, then either ``failed`` (the file could not
    be read) or ``loaded`` and one ``item`` per body, then ``done``. The supervisor restarts
    the time limit at each message, so it applies to the read and to each body separately.
    """
    pid = os.getpid()
    emit({"type": "start", "index": task.index, "pid": pid})
    logs: list[str] = []
    t0 = time.perf_counter()
    try:
        with _collect_warnings(logs):
            model = CADLoader().create_from_file(task.path)
    except Exception as exc:
        reason = _reason(exc, loading=True)
        emit(
            {
                "type": "failed",
                "index": task.index,
                "reason": reason,
                "error": _describe(exc),
                "logs": logs + _traceback_lines(exc, reason),
                "seconds": time.perf_counter() - t0,
            }
        )
        emit({"type": "done", "index": task.index, "recycle": isinstance(exc, MemoryError)})
        return
    emit(
        {
            "type": "loaded",
            "index": task.index,
            "num_bodies": model.num_bodies,
            "seconds": time.perf_counter() - t0,
        }
    )
    recycle = False
    for body in range(model.num_bodies):
        name = f"{task.base}_{body}"
        message: dict[str, Any] = {
            "type": "item",
            "index": task.index,
            "name": name,
            "body_index": body,
        }
        if settings.resume and os.path.exists(
            os.path.join(settings.encoded_dir, f"{name}.zarr.data")
        ):
            emit({**message, "status": "skipped"})
            continue
        emit({"type": "body", "index": task.index, "body_index": body})
        body_logs: list[str] = []
        t1 = time.perf_counter()
        try:
            with _collect_warnings(body_logs):
                result = _encode_body(model, body, name, task, settings)
        except Exception as exc:
            # After a MemoryError the worker's heap may be fragmented: replace it after this.
            recycle = recycle or isinstance(exc, MemoryError)
            reason = _reason(exc, loading=False)
            emit(
                {
                    **message,
                    "status": "failed",
                    "reason": reason,
                    "error": _describe(exc),
                    "logs": body_logs + _traceback_lines(exc, reason),
                    "seconds": time.perf_counter() - t1,
                }
            )
        else:
            emit({**message, "status": "encoded", "logs": body_logs, **result})
    emit({"type": "done", "index": task.index, "recycle": recycle})


def _address_space_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _limit_memory(limit_mb: int | None) -> str | None:
    """Cap this process's address space; return a reason when the cap cannot work."""
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
            f"memory_limit_mb={limit_mb} is below what a worker maps before reading any file "
            f"({baseline / 2**20:.0f} MiB); raise it"
        )
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return None


def _worker_main(conn: Connection, settings: _Settings) -> None:
    """Body of a worker process: take tasks from ``conn`` until told to stop."""
    # Ctrl-C reaches the whole process group; the parent decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The kernel writes some messages straight to stdout; keep stdout for the report.
    with suppress(OSError, ValueError):
        sys.stdout.flush()
        os.dup2(2, 1)
    problem = _limit_memory(settings.memory_limit_mb)
    if problem is not None:
        conn.send({"type": "fatal", "error": problem})
        return
    conn.send({"type": "ready", "pid": os.getpid()})
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if task is None:
            return
        _process_file(task, settings, conn.send)


# ---------------------------------------------------------------------------- parent side
@dataclass
class _FileState:
    task: _Task
    pid: int | None = None
    num_bodies: int | None = None
    body: int | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    load_seconds: float = 0.0
    finished: bool = False


class _Collector:
    """Turns worker messages into per-file results, then into the report."""

    def __init__(self, tasks: Sequence[_Task], on_finished: Callable[[], None]) -> None:
        self.files = {task.index: _FileState(task) for task in tasks}
        self._on_finished = on_finished

    def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        state = self.files[message["index"]]
        if kind == "start":
            state.pid = message["pid"]
        elif kind == "loaded":
            state.num_bodies = message["num_bodies"]
            state.load_seconds = message["seconds"]
        elif kind == "body":
            state.body = message["body_index"]
        elif kind == "item":
            state.body = None
            if message["status"] == "failed":
                state.failures.append(self._failure(state, message))
            else:
                state.items.append(message)
        elif kind == "failed":
            state.failures.append(self._failure(state, message))
        elif kind == "done":
            self._finish(state)

    def _failure(self, state: _FileState, message: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "item_index": state.task.index,
            "item": state.task.path,
            "name": message.get("name"),
            "body_index": message.get("body_index"),
            "worker_pid": state.pid,
            "reason": message["reason"],
            "error": message["error"],
            "logs": list(message.get("logs", [])),
            "seconds": round(float(message.get("seconds", 0.0)), 6),
        }

    def abort(self, index: int, reason: str, error: str, seconds: float) -> None:
        """Record that the worker on file ``index`` was lost (killed or crashed)."""
        state = self.files[index]
        body = state.body
        if body is None and state.num_bodies is not None:
            done = {item["body_index"] for item in state.items}
            done |= {f["body_index"] for f in state.failures}
            body = next((b for b in range(state.num_bodies) if b not in done), None)
        if state.num_bodies is None:
            where = "reading the file"
        elif body is None:
            where = "finishing the file"
        else:
            where = f"encoding body {body}"
            if state.num_bodies - body > 1:
                where += f" (bodies {body + 1}..{state.num_bodies - 1} were not attempted)"
        state.failures.append(
            self._failure(
                state,
                {
                    "name": None if body is None else f"{state.task.base}_{body}",
                    "body_index": body,
                    "reason": reason,
                    "error": f"{error} while {where}",
                    "seconds": seconds,
                },
            )
        )
        self._finish(state)

    def _finish(self, state: _FileState) -> None:
        if not state.finished:
            state.finished = True
            self._on_finished()

    def fill(self, report: EncodeReport, extra_failures: Sequence[dict[str, Any]]) -> None:
        timings: dict[str, float] = {"load": 0.0}
        calls: dict[str, float] = {}
        failures = list(extra_failures)
        for index in sorted(self.files):
            state = self.files[index]
            timings["load"] += state.load_seconds
            for item in sorted(state.items, key=lambda m: m["body_index"]):
                if item["status"] == "skipped":
                    report.skipped.append(item["name"])
                    continue
                report.encoded.append(item["name"])
                report.bytes_written += int(item["bytes"])
                for step, seconds in item["timings"].items():
                    timings[step] = timings.get(step, 0.0) + seconds
                for call, seconds in item["storage_calls"].items():
                    calls[call] = calls.get(call, 0.0) + seconds
            failures.extend(state.failures)
        report.failed = sorted(
            failures,
            key=lambda f: (f["item_index"], -1 if f["body_index"] is None else f["body_index"]),
        )
        report.timings = timings
        report.storage_timings = calls


def _mp_context() -> multiprocessing.context.BaseContext:
    """Fork when this process has a single thread (fast: the kernel is already imported);
    spawn otherwise, since forking a threaded process can copy a held lock."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


@contextmanager
def _without_main_script() -> Iterator[None]:
    """Start spawned workers without running the caller's script again in them.

    A spawned child imports the parent's ``__main__`` by path, which runs every top-level
    statement of a script that has no ``if __name__ == "__main__":`` guard (a user's
    script calling ``encode_files`` would encode, in every worker, from the top). The
    workers need nothing from ``__main__``: their code and settings come from cadstore.
    A child whose parent's main module reports the name ``"__main__"`` skips that import
    (as it does for ``python -m`` programs), so the name is given for the start only.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
    try:
        yield
    finally:
        main.__spec__ = None


@dataclass
class _Slot:
    """One worker process and what it is doing."""

    process: multiprocessing.process.BaseProcess
    conn: Connection
    ready: bool = False
    task: _Task | None = None
    deadline: float = math.inf
    tasks_done: int = 0
    retire: bool = False


class _Supervisor:
    """Runs tasks on at most ``workers`` worker processes, enforcing the time limit."""

    def __init__(
        self, settings: _Settings, workers: int, timeout: float | None, collector: _Collector
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.timeout = math.inf if timeout is None else float(timeout)
        self.collector = collector
        self.slots: list[_Slot] = []
        self.startup_failures = 0

    # -- process management
    def _start(self) -> _Slot:
        context = _mp_context()
        parent_conn, child_conn = context.Pipe(duplex=True)
        process = context.Process(
            target=_worker_main,
            args=(child_conn, self.settings),
            name="cadstore-encode-worker",
            daemon=True,
        )
        with _without_main_script():
            process.start()
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
        slot.conn.close()
        self.slots.remove(slot)

    def shutdown(self) -> None:
        """Stop every worker: politely when idle, by force when busy."""
        for slot in list(self.slots):
            if slot.task is None and slot.process.is_alive():
                with suppress(OSError):
                    slot.conn.send(None)
                self._drop(slot, kill=False)
            else:
                self._drop(slot, kill=True)

    # -- main loop
    def run(self, tasks: Sequence[_Task]) -> None:
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

    def _assign(self, pending: deque[_Task]) -> None:
        while pending:
            idle = next((s for s in self.slots if s.task is None and not s.retire), None)
            if idle is None:
                if len(self.slots) >= self.workers:
                    return
                idle = self._start()
            try:
                idle.conn.send(pending[0])
            except OSError:
                # The worker died while idle (killed from outside): replace it.
                self._drop(idle, kill=True)
                continue
            idle.task = pending.popleft()
            # Until the worker says it started, allow for its start-up (imports under spawn).
            startup = 0.0 if idle.ready else _STARTUP_SECONDS
            idle.deadline = time.monotonic() + startup + self.timeout

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
            self.collector.handle(message)
            slot.deadline = time.monotonic() + self.timeout
            if kind == "done":
                slot.task = None
                slot.deadline = math.inf
                slot.tasks_done += 1
                slot.retire = message["recycle"] or slot.tasks_done >= MAX_TASKS_PER_CHILD

    def _service(self, slot: _Slot, pending: deque[_Task]) -> None:
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
            task, pid = slot.task, slot.process.pid
            self._drop(slot, kill=True)
            self._cleanup(task, pid)
            limit = f"{self.timeout:g} s"
            self.collector.abort(
                task.index,
                "timeout",
                f"Timeout: exceeded the per-item time limit of {limit}; worker {pid} was killed",
                self.timeout,
            )

    def _lost(self, slot: _Slot, pending: deque[_Task]) -> None:
        task = slot.task
        assert task is not None
        pid, code, was_ready = slot.process.pid, slot.process.exitcode, slot.ready
        self._drop(slot, kill=True)
        self._cleanup(task, pid)
        if not was_ready:
            # The worker died before it could take any file: not the file's fault.
            self.startup_failures += 1
            if self.startup_failures >= _MAX_STARTUP_FAILURES:
                last = "hung" if code is None else f"exited with code {code}"
                raise RuntimeError(
                    f"encoding workers fail to start ({self.startup_failures} in a row, the "
                    f"last one {last}); run with workers=0 to see the error in this process"
                )
            pending.appendleft(task)
            return
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        self.collector.abort(task.index, "crash", f"WorkerCrash: worker {pid} {how}", 0.0)

    def _cleanup(self, task: _Task, pid: int | None) -> None:
        """Remove the scratch a killed worker may leave: its temp files, empty work dirs."""
        encoded = self.settings.encoded_dir
        prefix = f"{TEMP_PREFIX}{pid}-"
        with suppress(OSError):
            for name in os.listdir(encoded):
                path = os.path.join(encoded, name)
                if name.startswith(prefix):
                    with suppress(OSError):
                        os.unlink(path)
                elif name.startswith(f"{task.base}_") and name.endswith(".zarr"):
                    _discard(path)


# ---------------------------------------------------------------------------- planning
def _existing_bodies(encoded_dir: str, base: str, present: set[str]) -> list[str] | None:
    """Return the item names of a file whose bodies are all encoded already, else None."""
    first = f"{base}_0"
    if f"{first}.zarr.data" not in present:
        return None
    try:
        with OptStorage(os.path.join(encoded_dir, f"{first}.zarr"), mode="r") as storage:
            count = storage.load_metadata("num_bodies")
    except (CadstoreError, OSError, KeyError):
        return None  # unreadable or older item: let a worker look at each body
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return None
    names = [f"{base}_{i}" for i in range(count)]
    return names if all(f"{n}.zarr.data" in present for n in names) else None


def _write_error_summary(path: str, failures: Sequence[dict[str, Any]]) -> None:
    data = json.dumps(list(failures), indent=1, default=str).encode("utf-8")
    # Not fsynced: the summary describes the run and can be regenerated by running again.
    write_bytes_atomic(resolve(path), data, durable=False)


class _Progress:
    """A tqdm bar when tqdm is installed and progress is wanted; otherwise nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self._bar: Any = None
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return

        class _Bar(tqdm):  # type: ignore[misc,type-arg]
            # No monitor thread: workers are forked from this process, which must stay
            # single-threaded for that to be safe.
            monitor_interval = 0

        self._bar = _Bar(total=total, unit="file", desc="encoding", dynamic_ncols=True)

    def update(self, count: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ---------------------------------------------------------------------------- entry point
def encode_files(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB,
    pointsamples: int = 25,
    ugrid: int = 5,
    path_len: int = 16,
    num_bins: int = 64,
    histograms: bool = True,
    schema: Any = None,
    resume: bool = True,
    merge: bool = False,
    progress: bool = False,
    dataset_name: str | None = None,
    client: Any = None,
    dask_client_params: Mapping[str, Any] | None = None,
    file_metadata: Mapping[str | os.PathLike[str], Mapping[str, Any]] | None = None,
) -> EncodeReport:
    """Encode every body of every CAD file of ``inputs`` into ``output_dir/encoded``.

    See the module docstring for the layout, the item names, the failure handling and what
    resuming does.

    Parameters
    ----------
    inputs
        A directory (searched recursively), a glob pattern, a file, or a sequence of these;
        see :func:`find_cad_files`.
    output_dir
        Created if needed. May already hold items from an earlier run.
    workers
        Worker processes; ``None`` uses every available core (at most one per file). ``0``
        runs everything in the calling process, without time limit or memory guard, which
        is for debugging and profiling only: a crash or a hang there takes the caller down.
    timeout
        Seconds allowed for reading a file and, separately, for each of its bodies; ``None``
        for no limit.
    memory_limit_mb
        Address-space cap of each worker, MiB; ``None`` or 0 for no cap.
    pointsamples, ugrid, path_len, num_bins
        Arguments of ``push_face_discretization``, ``push_curvegrid``,
        ``push_face_pair_edges_path`` and the two histogram methods.
    histograms
        Also run the two face-pair histogram methods (the largest arrays of an item).
    schema
        A schema (dict, ``SchemaBuilder`` or ``Schema``) set on every item before the
        encoder adds its groups; by default one declaring the file-level metadata above.
    resume
        Skip bodies whose ``.data`` exists. ``False`` re-encodes them, replacing each file
        atomically.
    merge
        Then merge every item of ``output_dir/encoded`` (this run's and earlier ones') into
        ``output_dir/<dataset_name>.dataset`` with its ``.infoset``, ``.attribset`` and
        ``.flow``, replacing an earlier merge there.
    progress
        Show a progress bar on stderr when tqdm is installed.
    dataset_name
        Stem of the merged dataset; defaults to the output directory's name.
    client
        A ``distributed.Client``: each file becomes one Dask task on its workers, which
        must see ``inputs`` and ``output_dir`` at the same paths (shared disk), and the
        merge (``merge=True``) runs on the cluster too. ``workers`` and ``timeout`` do not
        apply (Dask runs one task per worker thread and cannot stop a running task), nor
        does ``memory_limit_mb``: an address-space cap would also starve the worker's own
        threads, so memory is bounded by the Dask workers' ``memory_limit`` instead. A
        file whose worker dies is recorded as ``"crash"``.
    dask_client_params
        Keyword arguments of ``distributed.LocalCluster``: a local cluster is started
        for this call and closed at its end (the ``dask`` extra).
    file_metadata
        Metadata per input file (its path as given or absolute): ``{path: {key: value}}``
        saved into every item of that file, e.g. a label ``{"part_family": "bracket"}``
        (define it in ``schema`` as categorical metadata to have it in the ``.attribset``).

    Returns
    -------
    EncodeReport
        What was encoded, skipped and failed, and where the time went.

    Raises
    ------
    FileNotFoundError, ValueError
        If the inputs designate no file, or an argument is invalid (including a
        ``memory_limit_mb`` too small for a worker to start).
    """
    started = time.perf_counter()
    if workers is not None and (isinstance(workers, bool) or workers < 0):
        raise ValueError(f"workers must be None or a non-negative int, got {workers!r}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be None or a positive number of seconds, got {timeout}")
    if memory_limit_mb is not None and memory_limit_mb < 0:
        raise ValueError(f"memory_limit_mb must be None or >= 0, got {memory_limit_mb}")
    pushes = _push_plan(
        _positive(pointsamples, "pointsamples"),
        _positive(ugrid, "ugrid"),
        _positive(path_len, "path_len"),
        _positive(num_bins, "num_bins"),
        bool(histograms),
    )
    out = os.path.abspath(os.fspath(output_dir))
    files = find_cad_files(inputs, exclude=out)
    encoded_dir = os.path.join(out, ENCODED_DIR)
    os.makedirs(encoded_dir, exist_ok=True)
    settings = _Settings(
        encoded_dir=encoded_dir,
        summary_dir=os.path.join(out, SUMMARY_DIR),
        schema=_complete_schema(
            _default_schema() if schema is None else Schema.from_any(schema).to_dict(), pushes
        ),
        pushes=pushes,
        resume=bool(resume),
        memory_limit_mb=int(memory_limit_mb) if memory_limit_mb else None,
    )
    report = EncodeReport(
        output_dir=out, files=len(files), error_summary=os.path.join(out, ERROR_SUMMARY)
    )

    # Plan: refuse name clashes, skip files that are fully encoded without starting a worker.
    present = set(os.listdir(encoded_dir)) if resume else set()
    extra = {
        os.path.abspath(os.fspath(path)): tuple(dict(fields).items())
        for path, fields in (file_metadata or {}).items()
    }
    owners: dict[str, str] = {}
    tasks: list[_Task] = []
    early_failures: list[dict[str, Any]] = []
    early_skips: list[str] = []
    for index, path in enumerate(files):
        base = item_base_name(path)
        if base in owners:
            early_failures.append(
                {
                    "item_index": index,
                    "item": str(path),
                    "name": None,
                    "body_index": None,
                    "worker_pid": None,
                    "reason": "duplicate",
                    "error": f"DuplicateName: its items would have the same names as those of "
                    f"{owners[base]} (item names ignore the extension); rename one of them",
                    "logs": [],
                    "seconds": 0.0,
                }
            )
            continue
        owners[base] = str(path)
        existing = _existing_bodies(encoded_dir, base, present) if resume else None
        if existing is not None:
            early_skips.extend(existing)
            continue
        tasks.append(_Task(index, str(path), base, extra.get(os.path.abspath(path), ())))
    dask = None
    if client is not None or dask_client_params is not None:
        from cadstore.cluster import DaskResources

        dask = DaskResources(client=client, params=dask_client_params)
    n_workers = 0 if workers == 0 else min(workers or _available_cores(), max(len(tasks), 1))
    report.workers = n_workers if tasks else 0
    bar = _Progress(progress, len(files))
    bar.update(len(files) - len(tasks))
    collector = _Collector(tasks, bar.update)
    try:
        if not tasks:
            pass
        elif dask is not None:
            from cadstore.cluster import run_on_dask

            report.workers = run_on_dask(dask.client, tasks, settings, _dask_encode_task, collector)
        elif n_workers == 0:
            for task in tasks:
                _process_file(task, settings, collector.handle)
        else:
            supervisor = _Supervisor(settings, n_workers, timeout, collector)
            try:
                supervisor.run(tasks)
            finally:
                supervisor.shutdown()
    finally:
        bar.close()
        report.skipped.extend(early_skips)
        collector.fill(report, early_failures)
        report.skipped.sort(key=_order_key(files))
        _write_error_summary(report.error_summary, report.failed)

    try:
        if merge:
            _merge(
                report,
                encoded_dir,
                out,
                dataset_name,
                n_workers,
                progress,
                dask.client if dask is not None else None,
            )
    finally:
        if dask is not None:
            dask.close()
    report.seconds = time.perf_counter() - started
    return report


def _dask_encode_task(task: _Task, settings: _Settings) -> list[dict[str, Any]]:
    """One file as a Dask task: the messages a supervised worker would have sent."""
    messages: list[dict[str, Any]] = []
    _process_file(task, settings, messages.append)
    return messages


#: Categorical metadata of the sample parts: their family, one of ``PART_KINDS``.
PART_FAMILY = "part_family"


def sample_set_schema() -> dict[str, Any]:
    """Return the schema :func:`encode_sample_set` gives its items.

    The default schema of :func:`encode_files` plus the part family as categorical
    metadata, so it lands in the ``.attribset`` and a split can be stratified on it.
    """
    builder = SchemaBuilder.from_dict(_default_schema())
    builder.define_categorical_metadata(
        PART_FAMILY, "str", "Family of the sample part", values=list(PART_KINDS)
    )
    return builder.build()


def encode_sample_set(
    output_dir: str | os.PathLike[str],
    count: int = 12,
    seed: int = 0,
    *,
    workers: int | None = None,
    merge: bool = True,
    progress: bool = False,
    **options: Any,
) -> EncodeReport:
    """Write the parametric sample parts as STEP files and encode them (the demo's job).

    The parts (brackets, plates with holes, shafts; see
    :func:`cadstore.cad.samples.sample_parts`) go to ``<output_dir>/parts_seed<seed>``; they
    are written only when one is missing, so running again resumes instead of starting over.
    Every item is labelled with its part's family (metadata :data:`PART_FAMILY`, declared
    categorical by :func:`sample_set_schema`), a label to stratify and train on.

    Parameters
    ----------
    output_dir
        Receives the parts, ``encoded/``, ``error_summary.json`` and, with ``merge=True``,
        ``<output_dir name>.dataset`` and its companions.
    count, seed
        As for :func:`~cadstore.cad.samples.sample_parts`.
    workers, merge, progress
        As for :func:`encode_files`.
    **options
        Further keyword arguments of :func:`encode_files`.

    Returns
    -------
    EncodeReport
        The report of :func:`encode_files`.
    """
    parts = Path(output_dir) / f"parts_seed{int(seed)}"
    # The names write_sample_set gives; should that change, the parts are just rewritten.
    kinds = [PART_KINDS[i % len(PART_KINDS)] for i in range(count)]
    files = [parts / f"{kind}_{i:03d}.step" for i, kind in enumerate(kinds)]
    if not all(path.is_file() for path in files):
        files = write_sample_set(parts, count=count, seed=seed)
    options.setdefault("schema", sample_set_schema())
    labels = {str(path): {PART_FAMILY: kind} for path, kind in zip(files, kinds, strict=True)}
    options.setdefault("file_metadata", labels)
    return encode_files(
        files,
        output_dir,
        workers=workers,
        merge=merge,
        progress=progress,
        **options,
    )


def _order_key(files: Sequence[Path]) -> Callable[[str], tuple[int, int]]:
    position = {item_base_name(path): i for i, path in enumerate(files)}

    def key(name: str) -> tuple[int, int]:
        base, _, body = name.rpartition("_")
        return position.get(base, len(position)), int(body)

    return key


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _merge(
    report: EncodeReport,
    encoded_dir: str,
    out: str,
    dataset_name: str | None,
    workers: int,
    progress: bool,
    client: Any = None,
) -> None:
    from cadstore.merging import merge as merge_dataset

    items = sorted(n for n in os.listdir(encoded_dir) if n.endswith(".zarr.data"))
    if not items:
        return
    stem = dataset_name or os.path.basename(out) or "dataset"
    dataset = os.path.join(out, f"{stem}.dataset")
    try:
        merge_dataset(
            [os.path.join(encoded_dir, n) for n in items],
            dataset,
            # A process pool costs more than it saves on a few hundred small items.
            workers=0 if len(items) < 256 else workers,
            overwrite=True,
            progress=progress,
            client=client,
        )
    except (CadstoreError, OSError) as exc:
        report.failed.append(
            {
                "item_index": None,
                "item": dataset,
                "name": None,
                "body_index": None,
                "worker_pid": os.getpid(),
                "reason": "merge",
                "error": _describe(exc),
                "logs": _traceback_lines(exc),
                "seconds": 0.0,
            }
        )
        _write_error_summary(report.error_summary, report.failed)
        return
    report.dataset = dataset
