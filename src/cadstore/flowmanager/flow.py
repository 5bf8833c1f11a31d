"""``Flow``: run a flow's tasks in order, then export the dataset (the specified ``Flow``).

A flow is made by :func:`cadstore.flowmanager.create_flow` from decorated task functions;
:meth:`Flow.process` runs it. Data flows by name: ``process(inputs={"sources": [...]})``
puts the inputs in a table, each task reads its ``inputs`` from it and writes its
``outputs`` to it.

* an **extract** task is called once per source of its first input (a list, or one
  value) and returns a list of items; the lists are joined, in order;
* a **transform** task is called once per item of its first input, with a CAD loader and
  a fresh storage (see :mod:`cadstore.flowmanager.tasks.parallel_executor`); its output
  is the list of what it returned for the items that succeeded, in input order;
* a **custom** task is called once with all its inputs and returns its output (a tuple
  for several outputs).

**Output layout** (the specified §4.3 layout), in ``flows_outputdir/flows/<name>/``::

    <name>.flow            the manifest (summary, Flow Specifications, commit id)
    <name>.dataset         the merged items, with <name>.infoset and <name>.attribset
    error_summary.json     [{item_index, item, name, task, worker_pid, reason, error, logs}]
    flow_log.log           what happened, at INFO level
    encoded/<item>.data    one item per input (kept after the merge)
    files_summary/<item>.json     each item's metadata
    stream_cache/png/<item>.png   previews (export_visualization=True)
    .cadstore-flow         the marker saying the folder is a flow's output

With ``auto_dataset_export=True`` the items of ``encoded/`` (this run's and those kept by a
resumed one) are merged by :func:`cadstore.merge` after the last task; the manifest is
written last, so its presence marks a finished flow.

**What is deleted.** ``clean_ouput_dir=True`` (the specified default) deletes the previous
``flows/<name>/`` first, but only a folder this framework made (it carries the marker, or
holds nothing but a flow's files): anything else is refused with an
:class:`~cadstore.errors.OutputExistsError` and left untouched. ``clean_ouput_dir=False``
resumes: items whose ``.data`` exists are not transformed again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Final

from cadstore.errors import CadstoreError, FlowError, OutputExistsError
from cadstore.failures import failure_fields
from cadstore.flowmanager.tasks.parallel_executor import (
    ItemOutcome,
    ItemSettings,
    ItemTask,
    ParallelExecutor,
    StorageType,
    TimeLimits,
    named_items,
)
from cadstore.io.filesystems import local_path
from cadstore.io.location import resolve
from cadstore.io.publish import TEMP_PREFIX, write_bytes_atomic
from cadstore.progress import Progress, wanted

__all__ = ["FLOW_MARKER", "Flow", "FlowOutput", "setup_logger"]

#: The file that marks a folder as a flow's output (what ``clean_ouput_dir`` may delete).
FLOW_MARKER: Final = ".cadstore-flow"
#: The file listing the failures of the last run.
ERROR_SUMMARY: Final = "error_summary.json"
#: The flow's log file.
FLOW_LOG: Final = "flow_log.log"
#: Where each item's result is kept, for a resumed run to give it back (see
#: :func:`_keep_result`).
RESULTS_DIR: Final = "item_results"
#: Folders of the specified layout, and the results of items.
_LAYOUT_DIRS: Final = frozenset(
    {"encoded", "files_summary", "stream_cache", "graph_data", "flowtrainer", RESULTS_DIR}
)
#: Progress bar labels of the specified 1.1 flows, by task type.
_BAR_LABELS: Final = {"extract": "DATA INGESTION", "transform": "DATA TRANSFORMATION"}


def setup_logger(name: str, log_file: str | os.PathLike[str] | None = None) -> logging.Logger:
    """Return the logger ``name``, writing INFO messages to ``log_file`` when given.

    Parameters
    ----------
    name
        The logger's name (a flow logs as ``cadstore.flow.<flow name>``).
    log_file
        A file to append the messages to; a handler already writing there is not added
        twice.

    Returns
    -------
    logging.Logger
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    if log_file is not None:
        path = os.path.abspath(os.fspath(log_file))
        known = {getattr(h, "baseFilename", None) for h in logger.handlers}
        if path not in known:
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
    return logger


def _close_log(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            logger.removeHandler(handler)


@dataclass
class FlowOutput:
    """What a run of a flow produced.

    Attributes
    ----------
    data
        Every named value: the inputs given to :meth:`Flow.process` and each task's
        outputs (``output["cad_files_encoded"]`` reads one).
    errors
        The entries of ``error_summary.json``.
    flow_dir
        ``flows_outputdir/flows/<name>``.
    flow_file
        The ``.flow`` manifest.
    dataset
        The merged ``.dataset``, or ``None`` without an export.
    summary
        The summary (what the manifest holds, with absolute paths).
    stores_left
        The names of the items whose failed store the file system refused to remove,
        left in ``encoded/`` and left out of the export.
    """

    data: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Items whose failed store is left in ``encoded/`` (its removal refused) and no
    #: later task of the run published again: the export leaves them out.
    stores_left: set[str] = field(default_factory=set, repr=False)
    flow_dir: str = ""
    flow_file: str = ""
    dataset: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.data[name]

    def get(self, name: str, default: Any = None) -> Any:
        """The value named ``name``, or ``default``."""
        return self.data.get(name, default)


def _attribute(task: Callable[..., Any], name: str) -> Any:
    return getattr(task, name)


def _item_list(items: Any, task_name: str) -> list[Any]:
    """The items a task runs over: those of a list, tuple, array, generator or dict (its
    keys), a set's sorted, or a single path (``str``, ``bytes``, ``os.PathLike``) or other
    value as one item.

    Raises
    ------
    FlowError
        For a set whose values do not sort: it has no order (each item's index in the
        outputs and in ``error_summary.json``) of its own.
    """
    if isinstance(items, str | bytes | os.PathLike):
        return [items]
    if isinstance(items, Set):
        # No order of its own (strings hash differently in each process): sorted, so
        # that each item's index is the same from run to run.
        try:
            return sorted(items)
        except TypeError:
            raise FlowError(
                f"task {task_name!r}: its items are a {type(items).__name__} of values that "
                "do not sort, so they have no order; give them as a list"
            ) from None
    if isinstance(items, Iterable):
        return list(items)  # a dict: its keys, in order
    return [items]


def _result_file(folder: str, name: str) -> str:
    return os.path.join(folder, RESULTS_DIR, f"{name}.json")


def _same(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are equal and of the same types throughout (NaN equal)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return bool(b != b)
    return bool(a == b)


def _keep_result(folder: str, task: str, name: str, result: Any) -> None:
    """Keep item ``name``'s result, for a resumed run to give back unchanged.

    Kept as JSON when JSON gives it back as it is (a path, a number, lists and dicts of
    these); otherwise not kept, and a resumed run encodes the item again rather than
    give something else in its place.
    """
    from cadstore.format import jsoncodec

    path = _result_file(folder, name)
    try:
        encoded = jsoncodec.encode_metadata("result", result)
        exact = _same(jsoncodec.decode_metadata(encoded), result)
    except (CadstoreError, ValueError, TypeError):
        exact = False
    if not exact:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = jsoncodec.dumps({"task": task, "result": encoded})
    write_bytes_atomic(resolve(path), text.encode("utf-8"), durable=False)


def _kept_result(folder: str, task: str, name: str) -> tuple[bool, Any]:
    """``(True, result)`` kept for item ``name`` of ``task`` by an earlier run, else
    ``(False, None)`` (none kept, another task's, or a file that does not read)."""
    from cadstore.format import jsoncodec

    try:
        raw = resolve(_result_file(folder, name)).read_bytes()
        doc = jsoncodec.loads(raw)
    except (OSError, ValueError):
        return False, None
    if not isinstance(doc, dict) or doc.get("task") != task or "result" not in doc:
        return False, None
    return True, jsoncodec.decode_metadata(doc["result"])


def _is_flow_output(folder: str, name: str) -> bool:
    """Whether ``folder`` is what a flow named ``name`` leaves (and so may be deleted)."""
    entries = os.listdir(folder)
    if not entries or FLOW_MARKER in entries:
        return True
    flow_files = {f"{name}.flow", ERROR_SUMMARY, FLOW_LOG}
    for entry in entries:
        path = os.path.join(folder, entry)
        if entry in _LAYOUT_DIRS and os.path.isdir(path) and not os.path.islink(path):
            continue
        if os.path.isfile(path) and (
            entry in flow_files or entry.startswith((f"{name}.", TEMP_PREFIX))
        ):
            continue
        return False
    return bool(flow_files & set(entries))


class Flow:
    """A flow: its tasks, where it writes and how it runs (made by ``create_flow``).

    Parameters
    ----------
    name, tasks, flows_outputdir, max_workers, ml_task, debug, auto_dataset_export,
    export_visualization, storage_type, parallel_task_kwargs
        As for :func:`cadstore.flowmanager.create_flow`, which checks them.
    """

    def __init__(
        self,
        name: str,
        tasks: Sequence[Callable[..., Any]],
        flows_outputdir: str | os.PathLike[str],
        max_workers: int | None = None,
        ml_task: str | None = None,
        debug: bool = False,
        auto_dataset_export: bool = True,
        export_visualization: bool = True,
        storage_type: str | StorageType = StorageType.OPTIMIZED,
        parallel_task_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.tasks = list(tasks)
        try:
            self.flows_outputdir = local_path(
                flows_outputdir,
                "flows_outputdir",
                "run the flow into a local folder (one the Dask workers share), then merge "
                "its encoded/ items to the URL with cadstore.merge",
            )
        except ValueError as exc:
            raise FlowError(str(exc)) from None
        self.max_workers = max_workers
        self.ml_task = ml_task
        self.debug = bool(debug)
        self.auto_dataset_export = bool(auto_dataset_export)
        self.export_visualization = bool(export_visualization)
        self.storage_type = StorageType.parse(storage_type)
        self.parallel_task_kwargs = dict(parallel_task_kwargs or {})
        self.executor = ParallelExecutor(max_workers, self.parallel_task_kwargs)

    @property
    def flow_dir(self) -> str:
        """``flows_outputdir/flows/<name>``: where every output of the flow goes."""
        return os.path.join(self.flows_outputdir, "flows", self.name)

    @property
    def limits(self) -> TimeLimits:
        """The per-item limits read from ``parallel_task_kwargs``."""
        return self.executor.limits

    def specifications(self) -> dict[str, Any]:
        """The manifest's ``Flow Specifications``."""
        return {
            "max_workers": self.max_workers,
            "sequential_mode": self.debug,
            "storage_type": self.storage_type.value,
            "ml_task": self.ml_task,
        }

    # ------------------------------------------------------------------ folder
    def _prepare(self, clean: bool) -> None:
        folder = self.flow_dir
        if os.path.islink(folder) or (os.path.exists(folder) and not os.path.isdir(folder)):
            raise OutputExistsError(
                f"{folder} is not a folder this flow made (a link or a file); nothing was "
                "deleted: remove it yourself or choose another flow name or flows_outputdir"
            )
        if clean and os.path.isdir(folder):
            if not _is_flow_output(folder, self.name):
                raise OutputExistsError(
                    f"{folder} holds files that are not a flow's output, so "
                    "clean_ouput_dir=True will not delete it; nothing was deleted: move "
                    "them, or choose another flow name or flows_outputdir"
                )
            print(
                f"Removing all previous outputs for flow {self.name!r} in {folder}",
                file=sys.stderr,
            )
            shutil.rmtree(folder)
        os.makedirs(folder, exist_ok=True)
        marker = os.path.join(folder, FLOW_MARKER)
        if not os.path.exists(marker):
            doc = {"flow_name": self.name, "written_by": "cadstore.flowmanager"}
            write_bytes_atomic(resolve(marker), json.dumps(doc).encode("utf-8"), durable=False)

    # ------------------------------------------------------------------ running
    def process(
        self,
        inputs: Mapping[str, Any] | None = None,
        clean_ouput_dir: bool = True,
        *,
        clean_output_dir: bool | None = None,
    ) -> tuple[FlowOutput, dict[str, Any], str]:
        """Run the tasks in order, then export the dataset.

        Parameters
        ----------
        inputs
            The named inputs of the first tasks, e.g. ``{"cad_datasources": [folder]}``.
        clean_ouput_dir
            The specified (misspelt) name: delete the previous ``flows/<name>/`` first
            (only a folder a flow made; see the module docstring). ``False`` resumes.
        clean_output_dir
            The same, correctly spelt; wins when given.

        Returns
        -------
        tuple
            ``(FlowOutput, summary dict, path of the .flow file)``.

        Raises
        ------
        OutputExistsError
            If ``clean_ouput_dir=True`` meets a folder that is not a flow's output.
        FlowError
            If a task's inputs are not there, or a task function cannot be run as asked.
        """
        clean = clean_ouput_dir if clean_output_dir is None else clean_output_dir
        started = time.perf_counter()
        self._prepare(bool(clean))
        folder = self.flow_dir
        logger = setup_logger(f"cadstore.flow.{self.name}", os.path.join(folder, FLOW_LOG))
        try:
            logger.info(
                "flow %r started: %d task(s), output %s", self.name, len(self.tasks), folder
            )
            output = FlowOutput(data=dict(inputs or {}), flow_dir=folder)
            durations: dict[str, float] = {}
            for task in self.tasks:
                t0 = time.perf_counter()
                self._run_task(task, output, logger, resume=not clean)
                durations[_attribute(task, "_task_name")] = time.perf_counter() - t0
            # cadstore.encode imports OpenCascade: its writer is imported when needed.
            from cadstore.encode.report import write_error_summary

            write_error_summary(os.path.join(folder, ERROR_SUMMARY), output.errors)
            summary = self._export(output, durations, logger, started)
            output.summary = summary
            logger.info(
                "flow %r finished in %.2f s: %d failure(s)",
                self.name,
                time.perf_counter() - started,
                len(output.errors),
            )
        finally:
            _close_log(logger)
        return output, summary, output.flow_file

    def _inputs(self, task: Callable[..., Any], output: FlowOutput) -> list[Any]:
        names = list(_attribute(task, "_task_inputs"))
        missing = [n for n in names if n not in output.data]
        if missing:
            raise FlowError(
                f"task {_attribute(task, '_task_name')!r} needs inputs {missing}, which no "
                f"earlier task produces and process(inputs=...) does not give (have: "
                f"{sorted(output.data)})"
            )
        return [output.data[n] for n in names]

    def _set_outputs(self, task: Callable[..., Any], output: FlowOutput, value: Any) -> None:
        names = list(_attribute(task, "_task_outputs"))
        if len(names) == 1:
            output.data[names[0]] = value
        elif names:
            values = list(value) if isinstance(value, tuple | list) else [value]
            if len(values) != len(names):
                raise FlowError(
                    f"task {_attribute(task, '_task_name')!r} declares outputs {names} but "
                    f"returned {len(values)} value(s)"
                )
            output.data.update(zip(names, values, strict=True))

    def _run_task(
        self, task: Callable[..., Any], output: FlowOutput, logger: logging.Logger, resume: bool
    ) -> None:
        kind = _attribute(task, "_task_type")
        name = _attribute(task, "_task_name")
        args = self._inputs(task, output)
        logger.info("task %r (%s) started", name, kind)
        if kind == "extract":
            value = self._extract(task, args, output, logger)
        elif kind == "transform":
            value = self._transform(task, args[0] if args else [], output, logger, resume)
        else:
            value = task(*args)
        self._set_outputs(task, output, value)

    def _extract(
        self, task: Callable[..., Any], args: list[Any], output: FlowOutput, logger: logging.Logger
    ) -> list[Any]:
        name = _attribute(task, "_task_name")
        sources = _item_list(args[0], name) if args else []
        found: list[Any] = []
        with Progress(None, len(sources), _BAR_LABELS["extract"], "source") as bar:
            for index, source in enumerate(sources):
                try:
                    items = task(source)
                    # What it returns, as a transform takes it (one path, a list, an
                    # array...); a set is this source's failure, not the flow's.
                    gathered = [] if items is None else _item_list(items, name)
                except Exception as exc:  # one source failing does not stop the others
                    self._failure(output, logger, task, index, source, exc)
                else:
                    found.extend(gathered)
                bar.update()
        logger.info("task %r gathered %d item(s)", _attribute(task, "_task_name"), len(found))
        return found

    def _failure(
        self,
        output: FlowOutput,
        logger: logging.Logger,
        task: Callable[..., Any],
        index: int,
        item: Any,
        exc: BaseException,
    ) -> None:
        # Classified as a transform's items and an encode's files are.
        failure = failure_fields(exc, loading=False)
        entry = {
            "item_index": index,
            "item": str(item),
            "name": None,
            "task": _attribute(task, "_task_name"),
            "worker_pid": os.getpid(),
            "reason": failure["reason"],
            "error": failure["error"],
            "logs": failure["logs"],
            "seconds": 0.0,
        }
        output.errors.append(entry)
        logger.warning("item %s failed: %s", item, entry["error"])

    def _transform(
        self,
        task: Callable[..., Any],
        items: Any,
        output: FlowOutput,
        logger: logging.Logger,
        resume: bool,
    ) -> list[Any]:
        items = _item_list(items, _attribute(task, "_task_name"))
        folder = self.flow_dir
        settings = ItemSettings(
            function=task,
            task_name=_attribute(task, "_task_name"),
            storage_type=self.storage_type,
            encoded_dir=os.path.join(folder, "encoded"),
            summary_dir=os.path.join(folder, "files_summary"),
            stream_cache_dir=os.path.join(folder, "stream_cache"),
            previews=self.export_visualization,
        )
        if self.storage_type is not StorageType.MEMORY:
            os.makedirs(settings.encoded_dir, exist_ok=True)
        todo: list[ItemTask] = []
        kept: dict[int, Any] = {}
        for index, item, name, duplicate in named_items(items, settings.task_name):
            if duplicate is not None:
                output.errors.append(duplicate)
                continue
            published = os.path.join(settings.encoded_dir, f"{name}.data")
            if resume and self.storage_type is StorageType.OPTIMIZED and os.path.isfile(published):
                # Kept with the result its run gave; without one, encoded again.
                found, result = _kept_result(folder, settings.task_name, name)
                if found:
                    kept[index] = result
                    continue
            todo.append(ItemTask(index, item, name, self.limits.limit_of(item)))
        if kept:
            logger.info("resuming: %d item(s) already encoded are kept", len(kept))
        sequential = self.debug or not _attribute(task, "_parallel_execution")
        with Progress(None, len(items), _BAR_LABELS["transform"], "file") as bar:
            bar.update(len(kept))
            keep = None
            if self.storage_type is StorageType.OPTIMIZED:

                def keep(task: ItemTask, result: Any) -> None:
                    _keep_result(folder, settings.task_name, task.name, result)

            outcomes = self.executor.run(
                todo, settings, sequential=sequential, advance=bar.update, keep=keep
            )
        results: dict[int, Any] = dict(kept)
        for outcome in outcomes:
            self._record(outcome, results, output, logger)
        return [results[i] for i in sorted(results)]

    @staticmethod
    def _record(
        outcome: ItemOutcome, results: dict[int, Any], output: FlowOutput, logger: logging.Logger
    ) -> None:
        for line in outcome.logs if outcome.ok else ():
            logger.info("item %s: %s", outcome.task.name, line)
        if outcome.ok:
            results[outcome.task.index] = outcome.result
            output.stores_left.discard(outcome.task.name)  # published again, whole
            return
        assert outcome.failure is not None
        output.errors.append(outcome.failure)
        if outcome.store_left:
            output.stores_left.add(outcome.task.name)
        logger.warning(
            "item %s (%s) failed: %s",
            outcome.task.name,
            outcome.task.item,
            outcome.failure["error"],
        )

    # ------------------------------------------------------------------ export
    def _error_distribution(self, errors: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in errors:
            kind = str(entry.get("error", "")).split(":")[0][:60] or str(entry.get("reason"))
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def _export(
        self,
        output: FlowOutput,
        durations: dict[str, float],
        logger: logging.Logger,
        started: float,
    ) -> dict[str, Any]:
        folder = self.flow_dir
        flow_file = os.path.join(folder, f"{self.name}.flow")
        output.flow_file = flow_file
        encoded = os.path.join(folder, "encoded")
        # A failed item's store is discarded; one the file system refused to remove (its
        # failure says so) must not be merged as if the item were done. Only those: a
        # store there before the item ran (a resumed run's) or published by a later task
        # is whole.
        failed = {f"{name}.data" for name in output.stores_left}
        files = (
            sorted(n for n in os.listdir(encoded) if n.endswith(".data") and n not in failed)
            if os.path.isdir(encoded)
            else []
        )
        extra = {
            "Flow Specifications": self.specifications(),
            "error_distribution": self._error_distribution(output.errors),
            "failed_items": len(output.errors),
        }
        exported = self.auto_dataset_export and self.storage_type is StorageType.OPTIMIZED
        if exported and files:
            from cadstore.merging import merge

            dataset = os.path.join(folder, f"{self.name}.dataset")
            logger.info("[Auto] PREP DATA SERVING: Merging %d encoded files...", len(files))
            try:
                merge(
                    [os.path.join(encoded, n) for n in files],
                    dataset,
                    overwrite=True,
                    progress=wanted(None),
                    manifest_fields=extra,
                    stage_durations=durations,
                )
            except (CadstoreError, OSError) as exc:
                entry: dict[str, Any] = {
                    "item_index": None,
                    "item": dataset,
                    "name": None,
                    "task": "AutoDatasetExportTask",
                    "worker_pid": os.getpid(),
                    "reason": "merge",
                    "error": f"{type(exc).__name__}: {exc}",
                    "logs": [],
                    "seconds": 0.0,
                }
                output.errors.append(entry)
                logger.error("the dataset export failed: %s", entry["error"])
                from cadstore.encode.report import write_error_summary

                write_error_summary(os.path.join(folder, ERROR_SUMMARY), output.errors)
            else:
                output.dataset = dataset
                return self._summary(flow_file)
        return self._plain_summary(flow_file, output, durations, extra, started)

    @staticmethod
    def _summary(flow_file: str) -> dict[str, Any]:
        from cadstore.format.manifest import MANIFEST_ENTRIES, read_manifest

        manifest = read_manifest(resolve(flow_file))
        summary = dict(manifest.document)
        listed = (manifest.dataset, manifest.infoset, manifest.attribset)
        for entry, where in zip(MANIFEST_ENTRIES, listed, strict=True):
            summary[entry] = None if where is None else where.path
        return summary

    def _plain_summary(
        self,
        flow_file: str,
        output: FlowOutput,
        durations: dict[str, float],
        extra: dict[str, Any],
        started: float,
    ) -> dict[str, Any]:
        """The summary (and ``.flow``) of a run without a dataset: nothing to list."""
        encoded = [v for k, v in output.data.items() if isinstance(v, list)]
        summary: dict[str, Any] = {
            "flow_name": self.name,
            "flow_data": None,
            "flow_info": None,
            "flow_attributes": None,
            "Duration [seconds]": {"total": time.perf_counter() - started, **durations},
            "file_count": len(encoded[-1]) if encoded else 0,
            **extra,
        }
        body = json.dumps(summary, indent=1, default=str).encode("utf-8")
        write_bytes_atomic(resolve(flow_file), body)
        return summary
