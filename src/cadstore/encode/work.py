"""The work done for one CAD file, in a worker process: read it, encode each body.

:func:`process_file` reads the file and encodes its bodies one by one into
``<output>/encoded/<name>.zarr.data`` with :class:`~cadstore.cad.BrepEncoder`, reporting
each step as a message (``start``; ``failed`` when the file cannot be read, or ``loaded``;
then ``body`` before and ``item`` after each body), so the supervising
:class:`~cadstore.workers.WorkerPool` restarts the time limit at each step and knows which
body a lost worker was on. Every failure is caught and reported with its reason
(``"corrupt"``, ``"unreadable"``, ``"kernel"``, ``"no_faces"``, ``"invalid_data"``,
``"storage"``, ``"memory"``, ``"error"``); a body published before a failure stays.

What each item holds: the arrays of every push method (the two histogram methods only with
``histograms=True``), the encoder's ``descriptions/*`` tables, and the metadata ``Item`` (the
source path), ``size_cadfile`` (bytes), ``body_index``, ``num_bodies``, ``processing_time``
(seconds spent on this body: its topology, every push and the storage writes, but not
reading the file nor the final publish) and any metadata given for the file.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Final, cast

from cadstore.cad.encoder import BrepEncoder
from cadstore.cad.loader import CADLoader, CADModel
from cadstore.cad.samples import make_box
from cadstore.failures import NoFacesError, describe, failure_fields, traceback_lines
from cadstore.schema import SchemaBuilder
from cadstore.storage.base import NodeStorage
from cadstore.storage.memory import MemoryStorage
from cadstore.storage.opt import OptStorage
from cadstore.workers import Emit

__all__ = [
    "PUSH_METHODS",
    "CallTimer",
    "Settings",
    "Task",
    "complete_schema",
    "default_schema",
    "describe",
    "discard",
    "encode_body",
    "failure_fields",
    "process_file",
    "push_plan",
    "traceback_lines",
]

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


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs; picklable, so it can go to a spawned process."""

    encoded_dir: str
    summary_dir: str
    schema: dict[str, Any]
    pushes: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]
    resume: bool
    #: Fsync each item as it is published (``durability="item"``); otherwise the
    #: supervisor makes them durable in batches (:mod:`cadstore.encode.durability`).
    fsync_items: bool = True


@dataclass(frozen=True)
class Task:
    """One CAD file to encode: its position among the inputs, its path, its items' stem."""

    index: int
    path: str
    base: str
    #: Metadata the caller gives for this file, saved into each of its items.
    metadata: tuple[tuple[str, Any], ...] = ()
    #: Items of this file present but not whole (found on resume): encoded again.
    redo: tuple[str, ...] = ()
    #: Bodies a worker leaves alone: done, or lost with a worker, earlier in this run (the
    #: file is given to a new worker for the bodies after one that was lost).
    leave: tuple[int, ...] = ()


def default_schema() -> dict[str, Any]:
    """The schema items start with: the file-level metadata every item carries."""
    builder = SchemaBuilder("CAD_analysis", description="Bodies encoded by cadstore encode")
    builder.define_file_metadata("size_cadfile", "int64", "Size of the source CAD file, bytes")
    builder.define_file_metadata("processing_time", "float32", "Seconds spent on the body")
    builder.define_file_metadata("body_index", "int32", "Index of the body in its file")
    builder.define_file_metadata("num_bodies", "int32", "Number of bodies of the file")
    return builder.build()


def complete_schema(
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


def push_plan(
    pointsamples: int, ugrid: int, path_len: int, num_bins: int, histograms: bool
) -> tuple[tuple[str, tuple[tuple[str, int], ...]], ...]:
    """The push methods to run on every body, in order, with their arguments."""
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


def positive(value: object, name: str) -> int:
    """``value`` if it is a positive int; else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@contextmanager
def collect_warnings(logs: list[str]) -> Iterator[None]:
    """Record the warnings raised within into ``logs``, whatever the filters say."""
    # A warning (a degenerate face, a numpy RuntimeWarning) is worth keeping in the logs but
    # must not fail the item, whatever filters the calling program installed.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            logs.extend(f"{w.category.__name__}: {w.message}" for w in caught)


def discard(store_path: str) -> None:
    """Remove the empty working directory of a body that failed, if there is one.

    The encoder makes none (``working_directory=False``); encoders of cadstore before it
    did, and left it empty when a body failed or the worker was killed. rmdir (never
    rmtree) cannot remove anything else.
    """
    with suppress(OSError):
        os.rmdir(store_path)


class CallTimer:
    """Wraps an object and times the methods called through the wrapper, by name.

    The encoder's push methods call the storage themselves; timing the storage from the
    outside of the storage is what separates storage time from encoding time in the report
    and the benchmark, without a subclass of the storage. Calls the storage makes to
    itself (``close`` publishing the item) are not counted twice.

    Attributes
    ----------
    calls
        Seconds by method name.
    seconds
        Seconds in all of them.
    """

    def __init__(self, target: Any) -> None:
        self._target = target
        self.calls: dict[str, float] = {}
        self.seconds = 0.0

    def record(self, name: str, seconds: float) -> None:
        """Count ``seconds`` spent in ``name`` (the wrapped object's construction, say)."""
        self.seconds += seconds
        self.calls[name] = self.calls.get(name, 0.0) + seconds

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not callable(value):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.record(name, time.perf_counter() - start)

        return timed


def encode_body(
    model: CADModel, body_index: int, name: str, task: Task, settings: Settings
) -> dict[str, Any]:
    """Encode one body into its item; return what it took (seconds, bytes, timings)."""
    store_path = os.path.join(settings.encoded_dir, f"{name}.zarr")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    # The encoder puts no files of its own in the store directory: none is made.
    opened = OptStorage(
        store_path,
        mode="w",
        summary_dir=settings.summary_dir,
        durable=settings.fsync_items,
        working_directory=False,
    )
    timer = CallTimer(opened)
    timer.record("open", time.perf_counter() - t0)
    storage = cast(NodeStorage, timer)
    try:
        brep = model.get_brep(body_index)
        if brep.num_faces == 0:
            raise NoFacesError(f"body {body_index} has no faces, so there is nothing to encode")
        timings["brep"] = time.perf_counter() - t0 - timer.seconds
        storage.set_schema(settings.schema)
        encoder = BrepEncoder(brep, storage)
        for method, arguments in settings.pushes:
            before, start = timer.seconds, time.perf_counter()
            getattr(encoder, method)(**dict(arguments))
            timings[method] = time.perf_counter() - start - (timer.seconds - before)
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
        discard(store_path)
        raise
    timings["storage"] = timer.seconds
    return {"seconds": processing, "bytes": size, "timings": timings, "storage_calls": timer.calls}


def process_file(task: Task, settings: Settings, emit: Emit) -> None:
    """Read one file and encode its bodies, reporting each step through ``emit``.

    Messages (dicts with a ``"type"``): ``start``, then either ``failed`` (the file could not
    be read) or ``loaded`` and, per body, ``body`` and ``item``. The supervisor restarts the
    time limit at each message, so it applies to the read and to each body separately. A
    message with ``"recycle": True`` follows a ``MemoryError``: the worker's heap may be
    fragmented, so it is replaced after this file.
    """
    pid = os.getpid()
    emit({"type": "start", "index": task.index, "pid": pid})
    logs: list[str] = []
    t0 = time.perf_counter()
    try:
        with collect_warnings(logs):
            model = CADLoader().create_from_file(task.path)
    except Exception as exc:
        seconds = time.perf_counter() - t0
        failure = failure_fields(exc, loading=True, logs=logs, seconds=seconds)
        emit({"type": "failed", "index": task.index, **failure})
        return
    emit(
        {
            "type": "loaded",
            "index": task.index,
            "num_bodies": model.num_bodies,
            "seconds": time.perf_counter() - t0,
        }
    )
    for body in range(model.num_bodies):
        if body in task.leave:
            continue
        name = f"{task.base}_{body}"
        message: dict[str, Any] = {
            "type": "item",
            "index": task.index,
            "name": name,
            "body_index": body,
        }
        if (
            settings.resume
            and name not in task.redo
            and os.path.exists(os.path.join(settings.encoded_dir, f"{name}.zarr.data"))
        ):
            emit({**message, "status": "skipped"})
            continue
        emit({"type": "body", "index": task.index, "body_index": body})
        body_logs: list[str] = []
        t1 = time.perf_counter()
        try:
            with collect_warnings(body_logs):
                result = encode_body(model, body, name, task, settings)
        except Exception as exc:
            seconds = time.perf_counter() - t1
            failure = failure_fields(exc, loading=False, logs=body_logs, seconds=seconds)
            emit({**message, "status": "failed", **failure})
        else:
            emit({**message, "status": "encoded", "logs": body_logs, **result})
