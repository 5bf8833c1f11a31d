"""Encoding many CAD files into per-body ``.data`` items, in parallel, every failure isolated.

:func:`encode_files` is the function behind ``cadstore encode``::

    from cadstore.encode import encode_files

    report = encode_files("parts/", "out", workers=8, merge=True)
    print(len(report.encoded), "items,", len(report.failed), "failures")

**Output layout** (the specified flow layout, ``vendor-system.md`` §4)::

    <output_dir>/encoded/<name>.zarr.data      one OptStorage item per body
    <output_dir>/files_summary/<name>.json     each item's metadata (OptStorage.close())
    <output_dir>/error_summary.json            what failed in the last run, and why
    <output_dir>/<stem>.dataset/.infoset/.attribset/.flow   with merge=True

Item names are :mod:`cadstore.encode.naming`'s; what an item holds and how a file's
failures are caught, :mod:`cadstore.encode.work`'s. Files are processed in supervised
worker processes (:class:`cadstore.workers.WorkerPool`), at most ``workers`` at a time,
each worker replaced after :data:`MAX_TASKS_PER_CHILD` files: a time limit applies to
reading each file and to encoding each body, a worker over it is killed (reason
``"timeout"``); a memory guard caps each worker (``"memory"``); a worker that dies is
recorded with its file (``"crash"``), while an exception that escapes a file's work is
the file's own failure, classified as on Dask (:func:`_local_encode_task`); two files
whose items would share names are refused before any work (``"duplicate"``), and a
failed merge is reported as ``"merge"``.

**Resuming and user data.** With ``resume=True`` (the default) a body whose ``.data`` file
exists is skipped, and a file whose bodies all exist is not even read. Nothing is ever
deleted: a ``.data`` file is replaced (atomically) only with ``resume=False``, or when a
resumed run finds it damaged (below), and the only files removed are the encoder's own
scratch, the empty working directory and temporary file of a body whose worker was killed.

**Durability.** Items are made durable in batches (``durability="batch"``, the default):
workers publish them without fsync and the supervisor syncs the file system once per
batch, then logs the items in ``<output_dir>/durable_items.jsonl``
(:mod:`cadstore.encode.durability`). A resumed run trusts logged items and checks the
others (every member's CRC and the metadata) before skipping them; one
that does not read whole, as a power cut can leave an item written but not yet synced, is
listed in :attr:`EncodeReport.damaged` and encoded again (one whose CAD file is not among
the run's inputs is a failure with reason ``"damaged"``). ``durability="item"`` fsyncs
every item as it is published instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cadstore.cad.samples import PART_KINDS, write_sample_set
from cadstore.encode.durability import DURABILITY_MODES, BatchSync, DurableLog, file_identity
from cadstore.encode.naming import find_cad_files, item_base_name
from cadstore.encode.report import Collector, EncodeReport, write_error_summary
from cadstore.encode.work import (
    Settings,
    Task,
    complete_schema,
    default_schema,
    describe,
    failure_fields,
    positive,
    process_file,
    push_plan,
    traceback_lines,
)
from cadstore.errors import CadstoreError, StorageError
from cadstore.io.filesystems import local_path
from cadstore.io.publish import HOST_TAG, fsync_file, pid_alive
from cadstore.progress import Progress
from cadstore.schema import Schema, SchemaBuilder
from cadstore.storage.opt import OptStorage
from cadstore.workers import (
    DEFAULT_MEMORY_LIMIT_MB,
    Emit,
    WorkerPool,
    WorkerSpec,
    available_cores,
)

__all__ = [
    "DEFAULT_MEMORY_LIMIT_MB",
    "DEFAULT_TIMEOUT",
    "ENCODED_DIR",
    "ERROR_SUMMARY",
    "MAX_TASKS_PER_CHILD",
    "PART_FAMILY",
    "SUMMARY_DIR",
    "encode_files",
    "encode_sample_set",
    "sample_set_schema",
]

#: Default per-item time limit, seconds (the vendor's default).
DEFAULT_TIMEOUT: Final = 120.0


#: Files a worker handles before it is replaced by a fresh process.
MAX_TASKS_PER_CHILD: Final = 16


#: Sub-directory of the output directory holding the ``.data`` items.
ENCODED_DIR: Final = "encoded"


#: Sub-directory holding the per-item metadata JSON files.
SUMMARY_DIR: Final = "files_summary"


#: File listing the failures of the last run.
ERROR_SUMMARY: Final = "error_summary.json"


def _check_unlogged(sync: BatchSync, encoded_dir: str, summary_dir: str, resume: bool) -> list[str]:
    """Log the items a resumed run may trust; return those found damaged.

    A directory without a durability log gets one first, listing its items (after one
    sync): every run before batch durability fsynced each item. A log grown past twice
    its items is rewritten. Then (``resume``) each item whose file is not the one logged,
    which a crashed run may have left unsynced, is read whole (every member's CRC, the
    metadata) and fsynced on a descriptor of its own, which reports a write-back that
    failed before (the data then read from memory never reached the disk): those that
    pass are logged, the others returned, to be encoded again. A summary JSON missing
    beside an item present is written again from the item.
    """
    present = {
        n[: -len(".zarr.data")]: os.path.join(encoded_dir, n)
        for n in os.listdir(encoded_dir)
        if n.endswith(".zarr.data")
    }
    log = sync.log
    if not log.exists():
        if present:
            sync.sync()
        log.append({n: i for n, p in present.items() if (i := file_identity(p)) is not None})
        return []
    logged, lines = log.read()
    if lines > 2 * len(logged) + 64:
        log.rewrite(logged)
    if not resume:
        return []
    from cadstore.io.location import resolve
    from cadstore.merging.scan import scan_item

    summaries = set(os.listdir(summary_dir))
    damaged = []
    for name, path in sorted(present.items()):
        identity = file_identity(path)
        if identity is None:
            continue
        trusted = logged.get(name) == identity
        if not trusted:
            # Taken before the checks: a file replaced meanwhile is not the one logged.
            try:
                if isinstance(scan_item(resolve(path)), tuple):
                    raise StorageError(path, "does not read whole")
                fsync_file(path)
            except StorageError:
                damaged.append(name)
                continue
        if not (f"{name}.json" in summaries and (trusted or _summary_reads(summary_dir, name))):
            item = OptStorage(path[: -len(".data")], mode="r", summary_dir=summary_dir)
            try:
                item.write_summary()
            finally:
                item.close()
        if not trusted:
            sync.add(name, identity)
    # One sync for the summaries written again, then the checked items are logged.
    sync.flush()
    return damaged


def _summary_reads(summary_dir: str, name: str) -> bool:
    """Whether ``name``'s summary JSON is there and holds a JSON object."""
    try:
        with open(os.path.join(summary_dir, f"{name}.json"), "rb") as fh:
            return isinstance(json.loads(fh.read()), dict)
    except (OSError, ValueError):
        return False


def _not_encoded_again(report: EncodeReport, encoded_dir: str) -> list[dict[str, Any]]:
    """Failures for the damaged items this run did not encode again, nor report failing:
    their CAD file is not among the run's inputs, or no longer has that body."""
    done = set(report.encoded) | {f.get("name") for f in report.failed}
    return [
        {
            "item_index": None,
            "item": os.path.join(encoded_dir, f"{name}.zarr.data"),
            "name": name,
            "body_index": None,
            "worker_pid": None,
            "reason": "damaged",
            "error": "DamagedItem: the item does not read whole (a run stopped before it "
            "reached the disk) and this run did not encode it again: its CAD file is not "
            "among the inputs, or has no such body now; encode that file again, or delete "
            "the item",
            "logs": [],
            "seconds": 0.0,
        }
        for name in report.damaged
        if name not in done
    ]


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


def encode_files(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    memory_limit_mb: int | None = None,
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
    durability: str = "batch",
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
        The memory guard: the address-space cap of each worker, MiB; 0 for none. By
        default (``None``) each worker may map :data:`DEFAULT_MEMORY_LIMIT_MB` more than
        it maps when it starts (a worker forked from a process that has loaded torch and
        OpenCascade starts with several GiB mapped).
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
        body two workers died on is recorded as ``"crash"``, and the file's later bodies
        are encoded by the task's next attempt (Dask runs a task whose worker died
        again, up to its ``allowed-failures``); see ``_dask_encode_task``.
    dask_client_params
        Keyword arguments of ``distributed.LocalCluster``: a local cluster is started
        for this call and closed at its end (the ``dask`` extra).
    file_metadata
        Metadata per input file (its path as given or absolute): ``{path: {key: value}}``
        saved into every item of that file, e.g. a label ``{"part_family": "bracket"}``
        (define it in ``schema`` as categorical metadata to have it in the ``.attribset``).
    durability
        ``"batch"`` (default): items are synced to disk together, once per batch, and a
        resumed run checks those a crash may have left unsynced; ``"item"``: every item
        is fsynced as it is published (about 1 ms more per item on ext4). Either way an
        item is published atomically. Dask workers always fsync each item.

    Returns
    -------
    EncodeReport
        What was encoded, skipped and failed, and where the time went.

    Raises
    ------
    FileNotFoundError, ValueError
        If the inputs designate no file, or an argument is invalid (including a
        ``memory_limit_mb`` too small for a worker to start, and an input or
        ``output_dir`` that is a URL: encoding reads and writes local folders).
    """
    started = time.perf_counter()
    if workers is not None and (isinstance(workers, bool) or workers < 0):
        raise ValueError(f"workers must be None or a non-negative int, got {workers!r}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be None or a positive number of seconds, got {timeout}")
    if memory_limit_mb is not None and memory_limit_mb < 0:
        raise ValueError(f"memory_limit_mb must be None or >= 0, got {memory_limit_mb}")
    if durability not in DURABILITY_MODES:
        raise ValueError(f"durability must be one of {DURABILITY_MODES}, got {durability!r}")
    pushes = push_plan(
        positive(pointsamples, "pointsamples"),
        positive(ugrid, "ugrid"),
        positive(path_len, "path_len"),
        positive(num_bins, "num_bins"),
        bool(histograms),
    )
    out = local_path(
        output_dir,
        "the encode output folder",
        "encode into a local folder (one the Dask workers share), then merge its encoded/ "
        "items to the URL",
    )
    files = find_cad_files(inputs, exclude=out)
    encoded_dir = os.path.join(out, ENCODED_DIR)
    os.makedirs(encoded_dir, exist_ok=True)
    remote = client is not None or dask_client_params is not None
    settings = Settings(
        encoded_dir=encoded_dir,
        summary_dir=os.path.join(out, SUMMARY_DIR),
        schema=complete_schema(
            default_schema() if schema is None else Schema.from_any(schema).to_dict(), pushes
        ),
        pushes=pushes,
        resume=bool(resume),
        # Dask workers may write from other machines, where this one's syncfs cannot reach.
        fsync_items=durability == "item" or remote,
    )
    report = EncodeReport(
        output_dir=out, files=len(files), error_summary=os.path.join(out, ERROR_SUMMARY)
    )
    os.makedirs(settings.summary_dir, exist_ok=True)
    # Opened before any item is written, so that a failed write-back is reported.
    sync = BatchSync(DurableLog(out), encoded_dir, [encoded_dir, settings.summary_dir])
    dask = None
    plan = _Plan()
    bar: Progress | None = None
    collector: Collector | None = None
    try:
        try:
            report.damaged = _check_unlogged(sync, encoded_dir, settings.summary_dir, bool(resume))
            plan = _plan(files, encoded_dir, bool(resume), file_metadata, set(report.damaged))
            tasks = plan.tasks
            if remote:
                from cadstore.cluster import DaskResources

                dask = DaskResources(client=client, params=dask_client_params)
            n_workers = 0 if workers == 0 else min(workers or available_cores(), max(len(tasks), 1))
            report.workers = n_workers if tasks else 0
            bar = Progress(progress, len(files), desc="encoding", unit="file")
            bar.update(len(files) - len(tasks))
            collector = Collector(tasks, encoded_dir, bar.update, on_item=sync.add)
            if dask is not None and tasks:
                from cadstore.cluster import run_on_dask

                # A journal is this run's: one left by an earlier run that died is not.
                _remove_journals(tasks, settings)
                try:
                    report.workers = run_on_dask(
                        dask.client,
                        tasks,
                        settings,
                        _dask_encode_task,
                        _DaskListener(collector, settings),
                    )
                finally:
                    _remove_journals(tasks, settings)
            else:
                spec = WorkerSpec(
                    functools.partial(_local_encode_task, process_file),
                    settings,
                    memory_limit_mb=int(memory_limit_mb) if memory_limit_mb else None,
                    max_tasks_per_child=MAX_TASKS_PER_CHILD,
                    memory_headroom_mb=DEFAULT_MEMORY_LIMIT_MB if memory_limit_mb is None else None,
                )
                _run_locally(tasks, spec, n_workers, timeout, collector)
        except BaseException:
            # The run's own error is the one to raise; items left unlogged by a failed
            # sync here are checked when the run is resumed.
            with contextlib.suppress(Exception):
                sync.flush()
            raise
        else:
            sync.flush()
        finally:
            if bar is not None:
                bar.close()
            report.skipped.extend(plan.skipped)
            if collector is not None:
                collector.fill(report, plan.failures)
            else:
                report.failed = list(plan.failures)
            report.failed.extend(_not_encoded_again(report, encoded_dir))
            report.skipped.sort(key=_order_key(files))
            write_error_summary(report.error_summary, report.failed)
    except BaseException:
        if dask is not None:
            dask.close()
        raise
    finally:
        report.sync_seconds = sync.seconds
        sync.close()

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


@dataclass
class _Plan:
    """The files to encode, and those settled before any work: skipped or refused."""

    tasks: list[Task] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


def _plan(
    files: Sequence[Path],
    encoded_dir: str,
    resume: bool,
    file_metadata: Mapping[str | os.PathLike[str], Mapping[str, Any]] | None,
    damaged: Collection[str] = (),
) -> _Plan:
    """Refuse name clashes, skip files whose bodies are all encoded, give files metadata.

    ``damaged`` items are treated as missing: their files' tasks encode them again.
    """
    plan = _Plan()
    present = (
        set(os.listdir(encoded_dir)) - {f"{n}.zarr.data" for n in damaged} if resume else set()
    )
    redo: dict[str, list[str]] = {}
    for name in damaged:
        redo.setdefault(name.rsplit("_", 1)[0], []).append(name)
    extra = {
        os.path.abspath(os.fspath(path)): tuple(dict(fields).items())
        for path, fields in (file_metadata or {}).items()
    }
    owners: dict[str, str] = {}
    for index, path in enumerate(files):
        base = item_base_name(path)
        if base in owners:
            plan.failures.append(
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
            plan.skipped.extend(existing)
            continue
        plan.tasks.append(
            Task(
                index,
                str(path),
                base,
                extra.get(os.path.abspath(path), ()),
                tuple(sorted(redo.get(base, ()))),
            )
        )
    return plan


def _run_locally(
    tasks: Sequence[Task],
    spec: WorkerSpec,
    n_workers: int,
    timeout: float | None,
    collector: Collector,
) -> None:
    """Encode in supervised workers, or in this process with ``n_workers == 0``."""
    if not tasks:
        return
    if n_workers == 0:
        for task in tasks:
            spec.work(task, spec.settings, collector.message)
            collector.done(task)
        return
    with WorkerPool(spec, n_workers, timeout, collector) as pool:
        pool.run(tasks)
        # Files whose worker was lost on a body: their later bodies, in new workers.
        while again := collector.unfinished():
            pool.run(again)


#: The journal of a file's Dask task in the items' folder: the messages of each attempt
#: as they are sent, read by the next attempt when a worker died on the file.
DASK_JOURNAL_PREFIX = ".cadstore-dask-"


def _dask_journal(task: Task, settings: Settings) -> str:
    return os.path.join(settings.encoded_dir, f"{DASK_JOURNAL_PREFIX}{task.base}.jsonl")


def _dask_encode_task(task: Task, settings: Settings) -> list[dict[str, Any]]:
    """One file as a Dask task: the messages a supervised worker would have sent.

    A worker that dies on a body (a kernel crash) takes the messages of its attempt with
    it, and Dask runs the task again on another worker, up to the scheduler's
    ``allowed-failures``: started over, it would meet the same body again and never
    encode the bodies after it. So each attempt journals its messages as it sends them
    (the items' folder is on the disk every worker shares), and an attempt that finds a
    journal continues the file: the bodies done are kept, and a body that two workers
    died on is failed (``"crash"``) and left, so the bodies after it are encoded. Two
    deaths, not one: a worker running several tasks in threads dies for whichever of them
    crashed it, and the others' bodies deserve another try. A file that two workers died
    reading is failed the same way. An earlier attempt still running on this machine (a
    worker the scheduler lost contact with) is not taken for dead: the file is encoded
    again from the start, as before journals.

    An exception the task raises itself (its journal cannot be written: a full disk) is
    not a dead worker: the file fails with the reason
    :func:`~cadstore.failures.failure_fields` gives it, as a supervised worker's
    failures have, after the messages sent before it (the bodies encoded stay reported).
    Only a worker that died is a ``"crash"`` (:class:`_DaskListener`).
    """
    messages: list[dict[str, Any]] = []
    try:
        _dask_encode(task, settings, messages)
    except Exception as exc:
        messages.append(_escaped_failure(task, exc, messages))
    return messages


def _local_encode_task(
    work: Callable[[Task, Settings, Emit], None], task: Task, settings: Settings, emit: Emit
) -> None:
    """One file in a supervised worker (or in this process): ``work`` (:func:`process_file`,
    bound by :func:`functools.partial` so that a spawned worker gets the one the caller
    chose) on ``task``, an exception that escapes it reported as the file's failure.

    process_file reports the failures of reading the file and of encoding each body; an
    exception that escapes it anyway (a bug in the per-file code, an error outside what it
    catches) would end the worker, and the file would be taken for a crash. It fails as
    a Dask task's does (:func:`_escaped_failure`), and the worker goes on with the next
    file. Only a worker that died is a ``"crash"`` (:class:`~cadstore.workers.WorkerPool`).
    """
    # What _bodies_not_reported reads: the file's body count and the bodies reported.
    sent: list[dict[str, Any]] = []

    def noted(message: dict[str, Any]) -> None:
        emit(message)
        if message.get("type") in ("loaded", "item"):
            sent.append(message)

    try:
        work(task, settings, noted)
    except Exception as exc:
        emit(_escaped_failure(task, exc, sent))


def _escaped_failure(
    task: Task, exc: Exception, messages: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The ``failed`` message of ``task``'s file for ``exc``, which escaped the file's
    work after ``messages``: classified by :func:`~cadstore.failures.failure_fields`, as
    the failures process_file reports are, and naming the bodies not reported."""
    # Reading the CAD file and encoding its bodies report their own failures
    # (process_file): what reaches here is the task's own work, not the file's read.
    failure = {"type": "failed", "index": task.index, **failure_fields(exc, loading=False)}
    missing = _bodies_not_reported(task, messages)
    if missing:
        # As for a worker lost on the file (_DaskListener.lost): the bodies it never
        # reported are named, or they would appear nowhere in the summary.
        failure["error"] = f"{failure['error']}; bodies {missing} were not encoded"
    return failure


def _bodies_not_reported(task: Task, messages: Sequence[dict[str, Any]]) -> list[int]:
    """The bodies of ``task``'s file that ``messages`` (a task's, cut short) report no
    item for, leaving out those ``task`` leaves alone; none before the file was read."""
    total = next((int(m["num_bodies"]) for m in messages if m.get("type") == "loaded"), None)
    if total is None:
        return []
    reported = {int(m["body_index"]) for m in messages if m.get("type") == "item"}
    return [b for b in range(total) if b not in reported and b not in task.leave]


def _dask_encode(task: Task, settings: Settings, messages: list[dict[str, Any]]) -> None:
    """The work of :func:`_dask_encode_task`, appending its messages to ``messages``."""
    journal = _dask_journal(task, settings)
    earlier = _read_journal(journal)
    if _still_running(earlier):
        process_file(task, settings, messages.append)
        return
    settled = _settled(task, earlier, final=False)
    messages.extend(settled.carried)
    if settled.lost_reading:
        messages.append(settled.reading_failure(task))
    else:
        with open(journal, "a", encoding="utf-8") as fh:

            def emit(message: dict[str, Any]) -> None:
                messages.append(message)
                noted = {**message, "host": HOST_TAG} if message["type"] == "start" else message
                fh.write(json.dumps(noted, default=str) + "\n")
                fh.flush()

            leave = tuple(sorted(set(task.leave) | settled.leave))
            process_file(dataclasses.replace(task, leave=leave), settings, emit)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)


class _DaskListener:
    """The collector, as :func:`~cadstore.cluster.run_on_dask` reports to it: a file
    whose task Dask gave up on (its workers died ``allowed-failures`` times) is reported
    from its journal: the bodies its attempts published, the bodies they died on, and
    the bodies never reached."""

    def __init__(self, collector: Collector, settings: Settings) -> None:
        self.collector = collector
        self.settings = settings

    def message(self, message: dict[str, Any]) -> None:
        self.collector.message(message)

    def done(self, task: Task) -> None:
        self.collector.done(task)

    def lost(self, task: Task, pid: int | None, reason: str, error: str, seconds: float) -> None:
        earlier = _read_journal(_dask_journal(task, self.settings))
        if not earlier:
            self.collector.lost(task, pid, reason, error, seconds)
            return
        settled = _settled(task, earlier, final=True)
        for message in settled.carried:
            self.collector.message(message)
        if settled.lost_reading:
            self.collector.message(settled.reading_failure(task))
        elif settled.num_bodies is not None:
            missing = [b for b in range(settled.num_bodies) if b not in settled.leave]
            if missing:
                self.collector.message(
                    _file_failure(
                        task, reason, f"{error}; bodies {missing} were not encoded", seconds
                    )
                )
        self.collector.done(task)


def _remove_journals(tasks: Iterable[Task], settings: Settings) -> None:
    for task in tasks:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_dask_journal(task, settings))


def _read_journal(path: str) -> list[dict[str, Any]]:
    """The messages journaled by earlier attempts (a line cut short by the death is
    dropped)."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict) and "type" in message:
                found.append(message)
    return found


def _attempts(earlier: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The journaled messages by attempt (each begins with its ``start``)."""
    attempts: list[list[dict[str, Any]]] = []
    for message in earlier:
        if message.get("type") == "start" or not attempts:
            attempts.append([])
        attempts[-1].append(message)
    return attempts


def _still_running(earlier: Sequence[dict[str, Any]]) -> bool:
    """Whether the last journaled attempt is a live process of this machine (not this
    one): Dask started this attempt while that one still runs."""
    attempts = _attempts(earlier)
    if not attempts:
        return False
    start = attempts[-1][0]
    pid = start.get("pid")
    return (
        start.get("type") == "start"
        and start.get("host") == HOST_TAG
        and isinstance(pid, int)
        and pid != os.getpid()
        and pid_alive(pid)
    )


@dataclass
class _Settled:
    """What the earlier attempts of a file's task settled (see :func:`_settled`)."""

    carried: list[dict[str, Any]]
    leave: set[int]
    lost_reading: bool
    num_bodies: int | None

    @staticmethod
    def reading_failure(task: Task) -> dict[str, Any]:
        return _file_failure(task, "crash", "the Dask workers died while reading the file")


def _file_failure(task: Task, reason: str, error: str, seconds: float = 0.0) -> dict[str, Any]:
    """The message of a worker that could not finish ``task``'s file (its ``failed``)."""
    return {
        "type": "failed",
        "index": task.index,
        "reason": reason,
        "error": error,
        "logs": [],
        "seconds": seconds,
    }


def _settled(task: Task, earlier: Sequence[dict[str, Any]], *, final: bool) -> _Settled:
    """What earlier attempts of ``task`` settled: their item messages, the bodies to
    leave, whether the file is lost reading it, and its number of bodies.

    A body (or the read) that workers died on is failed as ``"crash"`` once two of them
    did, or at once when ``final`` (no attempt follows).
    """
    carried: dict[int, dict[str, Any]] = {}
    deaths: dict[int | None, int] = {}  # body (None: reading) -> attempts that died there
    num_bodies = None
    for attempt in _attempts(earlier):
        kinds = [m.get("type") for m in attempt]
        if "failed" in kinds:
            continue  # the file could not be read: that attempt ended normally
        current: int | None = None
        for message in attempt:
            kind = message.get("type")
            if kind == "loaded":
                num_bodies = int(message["num_bodies"])
            elif kind == "body":
                current = int(message["body_index"])
            elif kind == "item":
                carried[int(message["body_index"])] = message
                current = None
        if "loaded" not in kinds:
            deaths[None] = deaths.get(None, 0) + 1
        elif current is not None and current not in carried:
            deaths[current] = deaths.get(current, 0) + 1
    needed = 1 if final else 2
    for body, count in deaths.items():
        if body is not None and count >= needed and body not in carried:
            carried[body] = {
                "type": "item",
                "index": task.index,
                "name": f"{task.base}_{body}",
                "body_index": body,
                "status": "failed",
                "reason": "crash",
                "error": f"the Dask worker died while encoding this body ({count} times)",
                "logs": [],
                "seconds": 0.0,
            }
    lost_reading = deaths.get(None, 0) >= needed and num_bodies is None
    return _Settled([carried[b] for b in sorted(carried)], set(carried), lost_reading, num_bodies)


#: Categorical metadata of the sample parts: their family, one of ``PART_KINDS``.
PART_FAMILY = "part_family"


def sample_set_schema() -> dict[str, Any]:
    """Return the schema :func:`encode_sample_set` gives its items.

    The default schema of :func:`encode_files` plus the part family as categorical
    metadata, so it lands in the ``.attribset`` and a split can be stratified on it.
    """
    builder = SchemaBuilder.from_dict(default_schema())
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
                "error": describe(exc),
                "logs": traceback_lines(exc),
                "seconds": 0.0,
            }
        )
        write_error_summary(report.error_summary, report.failed)
        return
    report.dataset = dataset
