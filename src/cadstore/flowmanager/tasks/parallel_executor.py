"""Running a transform task over many items: supervised workers, limits, every failure kept.

A flow's transform task is a function ``fn(cad_file, cad_loader, storage)`` applied to each
item its inputs list (usually CAD file paths). :class:`ParallelExecutor` runs it on
:class:`cadstore.workers.WorkerPool`, the supervisor ``cadstore encode`` uses, so that:

* each worker has **one** :class:`~cadstore.cad.CADLoader` (created on its first item) and
  each item gets a **fresh storage** of the flow's :class:`StorageType`: an
  :class:`~cadstore.storage.opt.OptStorage` published as ``encoded/<item>.data``, a
  :class:`~cadstore.storage.json_handler.JsonStorageHandler` directory
  ``encoded/<item>/`` or a :class:`~cadstore.storage.memory.MemoryStorage`. The item is
  named ``<32-hex>_0`` (:func:`cadstore.encode.item_name` of its path, body 0), as the
  specified system names the first body of a file;
* after the function returns, the framework **finalises** the store: with previews on, it
  draws ``stream_cache/png/<item>.png`` from the item's ``face_discretization`` and saves
  its path as the metadata ``stream_cache_png``; then it publishes the item (a task that
  did not call ``compress_store()`` loses nothing) and closes it;
* each item has a **time limit** (:class:`TimeLimits`, from ``parallel_task_kwargs``:
  ``time_limit_overall``, or by file size with ``file_size_bucketing``:
  ``time_limit_small`` under 1 MB, ``time_limit_medium`` up to 10 MB, ``time_limit_large``
  above; 120 s each by default). A worker over it is killed (``SIGKILL``: a kernel call
  that never returns cannot hang the flow) and the item is listed with reason
  ``"timeout"``;
* a **memory guard** caps each worker's address space (``memory_limit_mb``; by default
  4096 MiB more than each worker maps when it starts): an item that explodes fails with
  ``MemoryError`` (reason ``"memory"``) instead of driving the machine into swap. It is
  tried once more alone, with twice the large-file limit, unless
  ``skip_heavy_files=True``; an item that fails that way twice, or at once with
  ``skip_heavy_files``, is listed as ``"too_heavy"``;
* every failure (the task's exception, with the reason
  :func:`~cadstore.failures.failure_fields` gives it as for an encode's file; a timeout;
  a worker that died: ``"crash"``) is isolated to its item, which is listed in
  ``error_summary.json`` as
  ``{item_index, item, name, task, worker_pid, reason, error, logs, seconds}``; the run
  goes on;
* results come back in **input order**, whatever the number of workers.

**On a Dask cluster.** With ``parallel_task_kwargs={"dask_client": client}`` (a
``distributed.Client``; cadstore's addition) the items run as Dask tasks instead, one per
item, on the cluster's workers (which must see the input and output folders): a failing
item is isolated and listed as above, and a task whose worker died repeatedly is listed as
``"crash"``. Dask cannot stop a running task, so time limits and the memory guard apply
only to local workers; the task function is shipped by Dask's serialisation (cloudpickle,
so functions of a notebook work too).

**Start method.** Workers fork when the calling process is single-threaded (the functions
and the schema a notebook defined are simply inherited: nothing is pickled). A task whose
function cannot be imported by a fresh interpreter (defined in ``__main__``, a notebook
cell, or inside a function) also forks, even in a threaded process such as a Jupyter
kernel, as the specified system's workers do; where fork is unavailable or
``start_method="spawn"`` is asked for, such a task is refused with a
:class:`~cadstore.errors.FlowError` naming the function to move into a module.
"""

from __future__ import annotations

import enum
import math
import multiprocessing
import os
import pickle
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Final

from cadstore.errors import CadstoreError, FlowError, os_storage_error
from cadstore.failures import failure_fields
from cadstore.io.location import resolve
from cadstore.io.publish import TEMP_PREFIX, write_bytes_atomic
from cadstore.processes import mp_context
from cadstore.schema import SchemaBuilder
from cadstore.storage.base import NodeStorage
from cadstore.storage.json_handler import JsonStorageHandler
from cadstore.storage.memory import MemoryStorage
from cadstore.workers import (
    DEFAULT_MEMORY_LIMIT_MB,
    Emit,
    WorkerPool,
    WorkerSpec,
    available_cores,
)

__all__ = [
    "DEFAULT_MEMORY_LIMIT_MB",
    "DEFAULT_TIME_LIMIT",
    "PREVIEW_METADATA",
    "ItemSettings",
    "ItemTask",
    "ParallelExecutor",
    "ParallelTask",
    "StorageType",
    "TimeLimits",
    "check_importable",
    "run_item",
]

#: Each time limit's default, seconds (the specified default).
DEFAULT_TIME_LIMIT: Final = 120.0
#: The metadata key holding an item's preview path (an infoset column).
PREVIEW_METADATA: Final = "stream_cache_png"
#: File size bounds of the time-limit buckets, bytes.
_SMALL_BYTES: Final = 1_000_000
_LARGE_BYTES: Final = 10_000_000
#: Items a worker handles before a fresh process replaces it.
_TASKS_PER_CHILD: Final = 64
#: The keys ``parallel_task_kwargs`` understands.
_KNOWN_KWARGS: Final = frozenset(
    {
        "dask_client",  # taken by ParallelExecutor, not a limit
        "time_limit_overall",
        "time_limit_small",
        "time_limit_medium",
        "time_limit_large",
        "file_size_bucketing",
        "skip_heavy_files",
        "memory_limit_mb",
        "start_method",
        "generate_images",
        "graph_dir",
    }
)


class StorageType(enum.StrEnum):
    """The storage each item of a transform task gets."""

    #: :class:`~cadstore.storage.opt.OptStorage`, published as ``encoded/<item>.data``.
    OPTIMIZED = "optimized"
    #: :class:`~cadstore.storage.json_handler.JsonStorageHandler` in ``encoded/<item>/``.
    JSON = "json"
    #: :class:`~cadstore.storage.memory.MemoryStorage`: nothing is written.
    MEMORY = "memory"

    @classmethod
    def parse(cls, value: str | StorageType) -> StorageType:
        """The storage type named ``value``; a ``ValueError`` listing the choices else."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"storage_type must be one of {choices}, got {value!r}") from None


def _seconds(kwargs: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = kwargs.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"parallel_task_kwargs[{key!r}] must be a positive number, got {value!r}")
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class TimeLimits:
    """The per-item limits of a run, read from ``parallel_task_kwargs``.

    Attributes
    ----------
    overall
        Seconds for any item (``time_limit_overall``) when ``bucketing`` is off.
    small, medium, large
        Seconds for an item whose file is under 1 MB, up to 10 MB, larger.
    bucketing
        Choose the limit by file size (``file_size_bucketing``, on by default when a
        bucket limit is given, else off).
    skip_heavy_files
        Do not retry an item that failed on the memory guard.
    memory_limit_mb
        The memory guard (address-space cap of a worker, MiB; 0: none). By default
        (``None``) :data:`DEFAULT_MEMORY_LIMIT_MB` above what each worker maps when it
        starts.
    start_method
        ``"fork"`` or ``"spawn"`` to impose one (``None``: see the module docstring).
    """

    overall: float | None = DEFAULT_TIME_LIMIT
    small: float | None = DEFAULT_TIME_LIMIT
    medium: float | None = DEFAULT_TIME_LIMIT
    large: float | None = DEFAULT_TIME_LIMIT
    bucketing: bool = False
    skip_heavy_files: bool = False
    memory_limit_mb: int | None = None
    start_method: str | None = None

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any] | None) -> TimeLimits:
        """Read ``parallel_task_kwargs``; unknown keys are a ``ValueError`` naming them."""
        given = dict(kwargs or {})
        unknown = sorted(set(given) - _KNOWN_KWARGS)
        if unknown:
            raise ValueError(
                f"parallel_task_kwargs has unknown keys {unknown}; known: {sorted(_KNOWN_KWARGS)}"
            )
        overall = _seconds(given, "time_limit_overall", DEFAULT_TIME_LIMIT)
        buckets = {"time_limit_small", "time_limit_medium", "time_limit_large"} & set(given)
        memory = given.get("memory_limit_mb")
        if memory is not None and (
            isinstance(memory, bool) or not isinstance(memory, int) or memory < 0
        ):
            raise ValueError(
                f"parallel_task_kwargs['memory_limit_mb'] must be an int >= 0, got {memory!r}"
            )
        method = given.get("start_method")
        if method not in (None, "fork", "spawn"):
            raise ValueError(
                f"parallel_task_kwargs['start_method'] must be 'fork' or 'spawn', got {method!r}"
            )
        return cls(
            overall=overall,
            small=_seconds(given, "time_limit_small", overall),
            medium=_seconds(given, "time_limit_medium", overall),
            large=_seconds(given, "time_limit_large", overall),
            bucketing=bool(given.get("file_size_bucketing", bool(buckets))),
            skip_heavy_files=bool(given.get("skip_heavy_files", False)),
            memory_limit_mb=None if memory is None else int(memory),
            start_method=method,
        )

    def limit_for(self, size: int | None) -> float | None:
        """The limit of an item whose file has ``size`` bytes (``None``: not a file)."""
        if not self.bucketing or size is None:
            return self.overall
        if size < _SMALL_BYTES:
            return self.small
        return self.medium if size <= _LARGE_BYTES else self.large

    def limit_of(self, item: Any) -> float | None:
        """The limit of a flow item: by its file's size when it names a file."""
        size = None
        if isinstance(item, str | os.PathLike):
            with suppress(OSError):
                size = os.path.getsize(item)
        return self.limit_for(size)


@dataclass(frozen=True)
class ItemTask:
    """One item to transform: its position, the value given to the task, its name."""

    index: int
    item: Any
    name: str
    timeout: float | None = None


@dataclass(frozen=True)
class ItemSettings:
    """What every worker needs to run a transform task (pickled only under spawn).

    Attributes
    ----------
    function
        The task function ``fn(cad_file, cad_loader, storage)``.
    task_name
        The task's name, for the error summary.
    storage_type
        Which storage each item gets.
    encoded_dir
        Where the items go (``flows/<name>/encoded``).
    summary_dir
        Where ``OptStorage.close()`` writes each item's metadata JSON.
    stream_cache_dir
        The flow's ``stream_cache`` folder; previews go to its ``png/``.
    previews
        Draw a PNG preview of each item.
    """

    function: Callable[..., Any]
    task_name: str
    storage_type: StorageType
    encoded_dir: str
    summary_dir: str
    stream_cache_dir: str
    previews: bool = True


# ---------------------------------------------------------------------------- worker side
#: The loader of this process, created on its first item (one per worker).
_LOADER: list[Any] = []


def _loader() -> Any:
    if not _LOADER:
        from cadstore.cad.loader import CADLoader

        _LOADER.append(CADLoader())
    return _LOADER[0]


def _new_storage(settings: ItemSettings, name: str) -> NodeStorage:
    if settings.storage_type is StorageType.MEMORY:
        return MemoryStorage()
    store = os.path.join(settings.encoded_dir, name)
    if settings.storage_type is StorageType.JSON:
        return JsonStorageHandler(store)
    from cadstore.storage.opt import OptStorage

    return OptStorage(
        store,
        mode="w",
        summary_dir=settings.summary_dir,
        stream_cache_dir=settings.stream_cache_dir,
    )


def _find_key(storage: NodeStorage, array: str) -> str | None:
    keys = storage.get_keys()
    return next((k for k in keys if k == array or k.endswith("/" + array)), None)


def _preview(storage: NodeStorage, settings: ItemSettings, name: str, logs: list[str]) -> None:
    """Draw the item's preview from its stored geometry and record its path."""
    samples_key = _find_key(storage, "face_discretization")
    if samples_key is None:
        logs.append("no preview: the item has no face_discretization to draw")
        return
    samples = storage.load_data(samples_key)
    types_key = _find_key(storage, "face_types")
    types = storage.load_data(types_key) if types_key is not None else None
    from cadstore.dataset.report import render_part_png

    png = render_part_png(samples, types)
    path = os.path.join(settings.stream_cache_dir, "png", f"{name}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_bytes_atomic(resolve(path), png, durable=False)
    schema = storage.schema
    if schema is not None and schema.metadata_definition(PREVIEW_METADATA) is None:
        # Declared file-level, so the path is an infoset column and never a category.
        builder = SchemaBuilder.from_dict(schema.to_dict())
        builder.define_file_metadata(PREVIEW_METADATA, "str", "PNG preview of the item")
        storage.set_schema(builder.build())
    storage.save_metadata(PREVIEW_METADATA, path)


def _finalise(storage: NodeStorage, settings: ItemSettings, name: str, logs: list[str]) -> Any:
    """Preview, publish and close the item's store; return what stays of it."""
    if settings.storage_type is StorageType.MEMORY:
        return None
    if storage.closed and settings.storage_type is StorageType.OPTIMIZED:
        from cadstore.storage.opt import OptStorage

        # The task closed it: open the published item again to add the preview.
        storage = OptStorage(
            os.path.join(settings.encoded_dir, name),
            mode="a",
            summary_dir=settings.summary_dir,
            stream_cache_dir=settings.stream_cache_dir,
        )
    if storage.closed:
        return None
    if settings.previews and settings.storage_type is StorageType.OPTIMIZED:
        try:
            _preview(storage, settings, name, logs)
        except (CadstoreError, ValueError, OSError, ImportError) as exc:
            logs.append(f"no preview: {type(exc).__name__}: {exc}")
    storage.compress_store()
    storage.close()
    return None


def run_item(task: ItemTask, settings: ItemSettings, emit: Emit) -> None:
    """Run the task function on one item in this process; report through ``emit``.

    Messages: ``start``, then ``result`` with ``status`` ``"ok"`` (and the function's
    ``result``) or ``"failed"`` (``reason``, ``error``, ``logs``). The item's store is
    finalised (see the module docstring); a failed item's store is discarded.

    The function's own failures have the reason :func:`~cadstore.failures.failure_fields`
    gives them, as an encode's have (``"memory"`` for a ``MemoryError``,
    ``"invalid_data"``, ``"storage"``, ..., else ``"error"``); a store the file system
    refuses to remove then is named in the failure. An exception of the framework's own
    work that escapes (the encode package not importable on a worker) is reported the
    same way: let out, it would kill a local worker or fail a Dask task, and the item
    would be taken for a crash.
    """
    try:
        _run_item(task, settings, emit)
    except Exception as exc:
        failure = failure_fields(exc, loading=False)
        emit({"type": "result", "index": task.index, "status": "failed", **failure})


def _run_item(task: ItemTask, settings: ItemSettings, emit: Emit) -> None:
    """The work of :func:`run_item`, the function's failures reported."""
    # The encode package needs the CAD kernel; imported here, importing a flow does not.
    from cadstore.encode.work import collect_warnings, describe

    emit({"type": "start", "index": task.index, "pid": os.getpid()})
    logs: list[str] = []
    started = time.perf_counter()
    storage: NodeStorage | None = None
    before = {
        entry
        for entry in (task.name, f"{task.name}.data")
        if os.path.lexists(os.path.join(settings.encoded_dir, entry))
    }
    try:
        with collect_warnings(logs):
            storage = _new_storage(settings, task.name)
            result = settings.function(task.item, _loader(), storage)
            _finalise(storage, settings, task.name, logs)
        try:
            pickle.dumps(result)
        except Exception as exc:  # what a task returns must travel back to the flow
            logs.append(f"the result could not be sent back ({describe(exc)}); kept its repr")
            result = repr(result)
    except Exception as exc:
        if storage is not None and not storage.closed:
            with suppress(Exception):
                # Closed without publishing: close() would publish what the function
                # saved before it failed, as if the item were done.
                abandon = getattr(storage, "abandon", storage.close)
                abandon()
        # Classified as an encode's failures are: the same exception, the same reason.
        seconds = time.perf_counter() - started
        failure: dict[str, Any] = {
            "type": "result",
            "index": task.index,
            "status": "failed",
            **failure_fields(exc, loading=False, logs=logs, seconds=seconds),
        }
        # The item failed for its own error, which stays its failure; a store left is
        # named, and is not merged (ItemOutcome.store_left).
        left = _discard_or_name_it(
            settings.storage_type, settings.encoded_dir, task.name, before, "failed"
        )
        if left is not None:
            failure["error"] += f"; {left}"
            failure["store_left"] = True
        emit(failure)
        return
    emit(
        {
            "type": "result",
            "index": task.index,
            "status": "ok",
            "result": result,
            "logs": logs,
            "seconds": time.perf_counter() - started,
        }
    )


# ---------------------------------------------------------------------------- parent side
def check_importable(function: Callable[..., Any]) -> str | None:
    """Why a spawned worker could not import ``function``; ``None`` when it can."""
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", "")
    label = f"{module}.{qualname}"
    if module in (None, "__main__", "__mp_main__"):
        return f"{label} is defined in the main script or a notebook cell"
    if "<locals>" in qualname or "<lambda>" in qualname:
        return f"{label} is defined inside a function"
    loaded = sys.modules.get(module)
    if loaded is None or getattr(loaded, "__spec__", None) is None:
        return f"{label} lives in a module that cannot be imported again"
    target: Any = loaded
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if target is not function:
        return f"{label} is not reachable under that name in its module"
    return None


@dataclass
class _Record:
    """What became of one item."""

    task: ItemTask
    pid: int | None = None
    message: dict[str, Any] | None = None
    lost: dict[str, Any] | None = None


def discard_item(kind: StorageType, encoded_dir: str, name: str, before: Collection[str]) -> None:
    """Remove what a failed or lost item of this run left in ``encoded_dir``, so that
    nothing of it reads as an item (nor is merged into the flow's dataset).

    ``before`` holds the names of ``encoded_dir`` there before the item ran: those are
    left as they are. An optimized store the framework would publish is abandoned, but
    the task may have published it itself (``compress_store()``, then a failure or a
    kill): that ``.data`` is removed, and an empty working directory with ``rmdir``
    (never anything else). A JSON store writes each key as it is saved: its directory,
    made by this run, is removed with what the item wrote.
    """
    store = os.path.join(encoded_dir, name)
    if kind is StorageType.JSON:
        if name not in before:
            from cadstore.io.filesystems import LocalFileSystem

            with suppress(OSError):
                LocalFileSystem().rmtree(store)  # a symlink there is unlinked, not followed
        return
    if kind is StorageType.OPTIMIZED and f"{name}.data" not in before:
        with suppress(FileNotFoundError):
            os.unlink(f"{store}.data")
    with suppress(OSError):
        os.rmdir(store)


def _discard_or_name_it(
    kind: StorageType, encoded_dir: str, name: str, before: Collection[str], what: str
) -> str | None:
    """:func:`discard_item`; if the file system refuses to remove the store, what the
    ``what`` (``"failed"``, ``"lost"``) item's failure says of the store left, else
    ``None``."""
    try:
        discard_item(kind, encoded_dir, name, before)
    except OSError as exc:
        store = os.path.join(encoded_dir, f"{name}.data")
        return str(os_storage_error(store, exc, f"removing the {what} item's store"))
    return None


class _Collector:
    """The pool's listener: each item's outcome, and the progress bar."""

    def __init__(
        self,
        tasks: Sequence[ItemTask],
        settings: ItemSettings,
        advance: Callable[[], None],
        keep: Callable[[ItemTask, Any], None] | None = None,
    ) -> None:
        self.records = {task.index: _Record(task) for task in tasks}
        self.keep = keep
        self.encoded_dir = settings.encoded_dir
        self.kind = settings.storage_type
        self.advance = advance
        # The item stores there before the run, which a lost item's cleanup leaves alone.
        try:
            self.existing = frozenset(os.listdir(self.encoded_dir))
        except OSError:
            self.existing = frozenset()

    def message(self, message: dict[str, Any]) -> None:
        record = self.records[message["index"]]
        if message["type"] == "start":
            record.pid = message["pid"]
        elif message["type"] == "result":
            record.message = message
            if self.keep is not None and message["status"] == "ok":
                self.keep(record.task, message.get("result"))

    def done(self, task: ItemTask) -> None:
        self.advance()

    def lost(
        self, task: ItemTask, pid: int | None, reason: str, error: str, seconds: float
    ) -> None:
        record = self.records[task.index]
        record.lost = {"reason": reason, "error": error, "seconds": seconds}
        if pid is not None:  # a killed worker's temporary files and empty store
            prefix = f"{TEMP_PREFIX}{pid}-"
            with suppress(OSError):
                for name in os.listdir(self.encoded_dir):
                    if name.startswith(prefix):
                        with suppress(OSError):
                            os.unlink(os.path.join(self.encoded_dir, name))
        # The item is lost either way, and a store left is not merged (the export leaves
        # it out): its failure names it, and the run goes on with the other items.
        left = _discard_or_name_it(self.kind, self.encoded_dir, task.name, self.existing, "lost")
        if left is not None:
            record.lost["error"] += f"; {left}"
            record.lost["store_left"] = True
        self.advance()


@dataclass
class ItemOutcome:
    """The outcome of one item: its result, or its entry of ``error_summary.json``."""

    task: ItemTask
    ok: bool
    result: Any = None
    failure: dict[str, Any] | None = None
    logs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: The failed item's store is left in ``encoded/`` (the file system refused to remove
    #: it): it must not be merged as if the item were done.
    store_left: bool = False


def _outcome(record: _Record, task_name: str) -> ItemOutcome:
    task, message = record.task, record.message
    if record.lost is None and message is not None and message["status"] == "ok":
        return ItemOutcome(
            task, True, message.get("result"), None, list(message["logs"]), message["seconds"]
        )
    source: Mapping[str, Any] = (
        record.lost
        or message
        or {
            "reason": "error",
            "error": "the worker finished without a result",
        }
    )
    failure = {
        "item_index": task.index,
        "item": str(task.item),
        "name": task.name,
        "task": task_name,
        "worker_pid": record.pid,
        "reason": source["reason"],
        "error": source["error"],
        "logs": list(source.get("logs", [])),
        "seconds": round(float(source.get("seconds", 0.0)), 6),
    }
    return ItemOutcome(
        task,
        False,
        None,
        failure,
        failure["logs"],
        failure["seconds"],
        store_left=bool(source.get("store_left")),
    )


class ParallelExecutor:
    """Run a transform over items on supervised workers (see the module docstring).

    Parameters
    ----------
    max_workers
        Worker processes at most (``None``: every available core, at most one per item).
    parallel_task_kwargs
        The limits (:meth:`TimeLimits.from_kwargs`).
    """

    def __init__(
        self, max_workers: int | None = None, parallel_task_kwargs: Mapping[str, Any] | None = None
    ) -> None:
        if max_workers is not None and (isinstance(max_workers, bool) or max_workers < 1):
            raise ValueError(f"max_workers must be None or a positive int, got {max_workers!r}")
        self.max_workers = max_workers
        given = dict(parallel_task_kwargs or {})
        #: A ``distributed.Client`` to run the items on instead of local workers
        #: (``parallel_task_kwargs["dask_client"]``, cadstore's addition).
        self.dask_client = given.pop("dask_client", None)
        if self.dask_client is not None and not hasattr(self.dask_client, "submit"):
            raise ValueError(
                "parallel_task_kwargs['dask_client'] must be a distributed.Client, got "
                f"{type(self.dask_client).__name__}"
            )
        self.limits = TimeLimits.from_kwargs(given)

    def _start_method(self, function: Callable[..., Any]) -> str:
        problem = check_importable(function)
        can_fork = "fork" in multiprocessing.get_all_start_methods()
        wanted = self.limits.start_method
        if problem is None:
            return wanted or mp_context().get_start_method()
        if wanted != "spawn" and can_fork:
            return "fork"  # inherited by the workers: nothing to import
        raise FlowError(
            f"task function {problem}, so spawned worker processes cannot import it; move "
            f"it (and the schema it uses) into a .py module and import it from there"
            + ("" if can_fork else " (this platform has no fork start method)")
        )

    def run(
        self,
        tasks: Sequence[ItemTask],
        settings: ItemSettings,
        *,
        sequential: bool = False,
        advance: Callable[[], None] = lambda: None,
        keep: Callable[[ItemTask, Any], None] | None = None,
    ) -> list[ItemOutcome]:
        """Run the task on every item; return the outcomes in input order.

        Parameters
        ----------
        tasks
            The items.
        settings
            What to run and where the items go.
        sequential
            Run in this process, one item after the other, without time limit or memory
            guard (``debug=True``): a hang or a crash there stops the flow.
        advance
            Called once per item finished (a progress bar).
        keep
            Called with each item done and its result as soon as the result arrives, not
            when the run ends (a flow keeps it for a resumed run, even if this one is
            interrupted).
        """
        collector = _Collector(tasks, settings, advance, keep)
        if tasks and sequential:
            for task in tasks:
                run_item(task, settings, collector.message)
                collector.done(task)
        elif tasks and self.dask_client is not None:
            from cadstore.cluster import run_on_dask

            run_on_dask(self.dask_client, tasks, settings, _dask_item, collector)
        elif tasks:
            method = self._start_method(settings.function)
            workers = min(self.max_workers or available_cores(), len(tasks))
            self._pool(tasks, settings, collector, workers, method, lambda t: t.timeout)
            heavy = [
                r.task
                for r in collector.records.values()
                if r.message is not None and r.message.get("reason") == "memory"
            ]
            if heavy and not self.limits.skip_heavy_files:
                # Once more, alone, with twice the large-file limit (the specified retry).
                for task in heavy:
                    collector.records[task.index] = _Record(task)
                large = self.limits.large
                retry = None if large is None else 2 * large
                self._pool(heavy, settings, collector, 1, method, lambda t: retry)
            for record in collector.records.values():
                if record.message is not None and record.message.get("reason") == "memory":
                    record.message = {**record.message, "reason": "too_heavy"}
        return [_outcome(collector.records[t.index], settings.task_name) for t in tasks]

    def execute(
        self,
        task: ParallelTask,
        items: Sequence[Any],
        force_sequential: bool = False,
        specifications: Mapping[str, Any] | None = None,
    ) -> ParallelTask:
        """Run ``task`` over ``items`` (the specified lower-level interface).

        Parameters
        ----------
        task
            The function and its storage; its ``results`` and ``errors`` are filled in.
        items
            The values given to the function, one call each.
        force_sequential
            Run in this process (as ``debug=True``).
        specifications
            ``parallel_task_kwargs`` for this call instead of the executor's.

        Returns
        -------
        ParallelTask
            ``task``.
        """
        if not isinstance(task, ParallelTask):
            raise FlowError(
                f"execute() takes a ParallelTask, got {type(task).__name__} {task!r}: wrap "
                "the function as ParallelTask(function, storage_type=..., output_dir=...)"
            )
        runner = (
            self if specifications is None else ParallelExecutor(self.max_workers, specifications)
        )
        return _execute(runner, task, items, force_sequential)

    def _pool(
        self,
        tasks: Sequence[ItemTask],
        settings: ItemSettings,
        collector: _Collector,
        workers: int,
        method: str,
        timeout_of: Callable[[ItemTask], float | None],
    ) -> None:
        memory = self.limits.memory_limit_mb
        spec = WorkerSpec(
            run_item,
            settings,
            memory_limit_mb=memory or None,
            max_tasks_per_child=_TASKS_PER_CHILD,
            # The default: each worker may map this much more than it does when it starts.
            memory_headroom_mb=DEFAULT_MEMORY_LIMIT_MB if memory is None else None,
        )
        with WorkerPool(
            spec, workers, None, collector, timeout_of=timeout_of, start_method=method
        ) as pool:
            pool.run(tasks)


def _dask_item(task: ItemTask, settings: ItemSettings) -> list[dict[str, Any]]:
    """One item as a Dask task: the messages a supervised local worker would have sent
    (:func:`run_item` reports every failure of the item; only a worker that died is a
    crash)."""
    messages: list[dict[str, Any]] = []
    run_item(task, settings, messages.append)
    return messages


class ParallelTask:
    """A task function with what running it over items produced (the specified
    lower-level interface, for :meth:`ParallelExecutor.execute`).

    Attributes
    ----------
    results
        One ``{"result": ..., "error": ...}`` per item, in input order.
    errors
        The entries of the failed items (as in ``error_summary.json``).
    """

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        storage_type: str | StorageType = StorageType.MEMORY,
        output_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.function = function
        self.storage_type = StorageType.parse(storage_type)
        self.output_dir = None if output_dir is None else os.path.abspath(os.fspath(output_dir))
        if self.storage_type is not StorageType.MEMORY and self.output_dir is None:
            raise ValueError(f"storage_type {self.storage_type.value!r} needs an output_dir")
        self.results: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []


def named_items(
    items: Sequence[Any], task_name: str
) -> Iterator[tuple[int, Any, str, dict[str, Any] | None]]:
    """Each item with the name of the store it is written to, and, for an item whose
    name an earlier item has (names ignore the extension: ``part.step`` and
    ``part.stl``), its ``error_summary.json`` entry instead of a run: two items of one
    name would write one store, the later replacing the earlier.

    Yields
    ------
    tuple
        ``(index, item, name, duplicate)``; ``duplicate`` is ``None`` for an item to run.
    """
    from cadstore.encode.naming import item_name

    owners: dict[str, Any] = {}
    for index, item in enumerate(items):
        name = item_name(os.fspath(item) if isinstance(item, os.PathLike) else str(item), 0)
        if name not in owners:
            owners[name] = item
            yield index, item, name, None
            continue
        yield (
            index,
            item,
            name,
            {
                "item_index": index,
                "item": str(item),
                "name": name,
                "task": task_name,
                "worker_pid": None,
                "reason": "duplicate",
                "error": f"DuplicateName: its item would have the same name as that of "
                f"{owners[name]} (names ignore the extension); rename one of them",
                "logs": [],
                "seconds": 0.0,
            },
        )


def _execute(
    executor: ParallelExecutor,
    task: ParallelTask,
    items: Sequence[Any],
    force_sequential: bool,
) -> ParallelTask:
    out = task.output_dir or os.path.abspath(".")
    settings = ItemSettings(
        function=task.function,
        task_name=getattr(task.function, "_task_name", task.function.__name__),
        storage_type=task.storage_type,
        encoded_dir=os.path.join(out, "encoded"),
        summary_dir=os.path.join(out, "files_summary"),
        stream_cache_dir=os.path.join(out, "stream_cache"),
        previews=False,
    )
    if task.storage_type is not StorageType.MEMORY:
        os.makedirs(settings.encoded_dir, exist_ok=True)
    tasks: list[ItemTask] = []
    duplicates: list[ItemOutcome] = []
    for index, item, name, duplicate in named_items(items, settings.task_name):
        run = ItemTask(index, item, name, executor.limits.limit_of(item))
        if duplicate is None:
            tasks.append(run)
        else:
            duplicates.append(ItemOutcome(run, False, failure=duplicate))
    outcomes = sorted(
        [*executor.run(tasks, settings, sequential=force_sequential), *duplicates],
        key=lambda o: o.task.index,
    )
    task.results = [{"result": o.result, "error": None if o.ok else o.failure} for o in outcomes]
    task.errors = [o.failure for o in outcomes if o.failure is not None]
    return task
