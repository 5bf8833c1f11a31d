"""Declaring a flow: the ``flowtask`` decorators, their registry, and ``create_flow``.

A task is a plain function marked by one of the decorators of :data:`flowtask`, as the
specified system's users write them::

    @flowtask.extract(name="gather", inputs=["cad_datasources"], outputs=["cad_dataset"])
    def gather_files(source):
        return CADFileRetriever(LocalStorageProvider(directory_path=source)).get_file_list()

    @flowtask.transform(name="encode", inputs=["cad_dataset"], outputs=["cad_files_encoded"])
    def encode(cad_file, cad_loader, storage):
        ...
        return storage.get_file_path("")

The decorator returns the function itself (so it stays importable, and picklable by
reference) with the attributes ``_task_type``, ``_task_name``, ``_task_inputs``,
``_task_outputs``, ``_parallel_execution`` and ``_task_class``, and records it in the
registry (:func:`list_registered_tasks`). :func:`create_flow` checks the tasks and returns
a :class:`~cadstore.flowmanager.flow.Flow`.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from cadstore.errors import CadstoreWarning, FlowError
from cadstore.flowmanager.flow import Flow
from cadstore.flowmanager.tasks.parallel_executor import StorageType, TimeLimits

__all__ = [
    "TaskDecorators",
    "create_flow",
    "flowtask",
    "list_registered_tasks",
    "print_task_registry",
    "validate_function_signature",
    "validate_tasks",
]

F = TypeVar("F", bound=Callable[..., Any])

#: How many positional arguments each kind of task function takes (custom: its inputs).
_ARITY = {"extract": 1, "transform": 3}
#: Every decorated task, by name (the last one declared under a name wins).
_REGISTRY: dict[str, Callable[..., Any]] = {}


def _mark(function: Callable[..., Any], attribute: str, value: Any) -> None:
    """Set a task attribute (the specified names start with ``_``)."""
    setattr(function, attribute, value)


def _attr(function: Callable[..., Any], attribute: str) -> Any:
    """A task attribute set by :func:`_mark`."""
    return getattr(function, attribute)


def _names(value: Sequence[str] | str | None, what: str, task: str) -> list[str]:
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(n, str) and n for n in names):
        raise FlowError(f"task {task!r}: {what} must be names (strings), got {value!r}")
    return names


class TaskDecorators:
    """The three task decorators (the specified ``flowtask`` object is one of these)."""

    @staticmethod
    def _decorate(
        kind: str,
        name: str | None,
        inputs: Sequence[str] | str | None,
        outputs: Sequence[str] | str | None,
        parallel_execution: bool,
    ) -> Callable[[F], F]:
        def decorate(function: F) -> F:
            task_name = name or function.__name__
            _mark(function, "_task_type", kind)
            _mark(function, "_task_name", task_name)
            _mark(function, "_task_inputs", _names(inputs, "inputs", task_name))
            declared = _names(outputs, "outputs", task_name)
            if kind != "custom" and len(declared) > 1:
                # Its value is one list (a result per item, or the items found): given
                # several outputs, the list was dealt out among them by position.
                raise FlowError(
                    f"task {task_name!r}: {'an' if kind == 'extract' else 'a'} {kind} task "
                    "gives one list, a value per item, "
                    f"so it declares one output, not {declared}; return a tuple per item "
                    "and take it apart in a custom task"
                )
            _mark(function, "_task_outputs", declared)
            _mark(function, "_parallel_execution", bool(parallel_execution))
            parallel = parallel_execution and kind == "transform"
            _mark(function, "_task_class", "ParallelTask" if parallel else "SequentialTask")
            validate_function_signature(function)
            _REGISTRY[task_name] = function
            return function

        return decorate

    def extract(
        self,
        name: str | None = None,
        inputs: Sequence[str] | str | None = None,
        outputs: Sequence[str] | str | None = None,
        parallel_execution: bool = True,
    ) -> Callable[[F], F]:
        """Mark ``fn(source) -> list`` as an extract task: called once per source of its
        first input, its lists joined in order (run in the calling process)."""
        return self._decorate("extract", name, inputs, outputs, parallel_execution)

    def transform(
        self,
        name: str | None = None,
        inputs: Sequence[str] | str | None = None,
        outputs: Sequence[str] | str | None = None,
        parallel_execution: bool = True,
    ) -> Callable[[F], F]:
        """Mark ``fn(cad_file, cad_loader, storage)`` as a transform task: called once per
        item, in supervised workers unless ``parallel_execution=False`` or ``debug``."""
        return self._decorate("transform", name, inputs, outputs, parallel_execution)

    def custom(
        self,
        name: str | None = None,
        inputs: Sequence[str] | str | None = None,
        outputs: Sequence[str] | str | None = None,
        parallel_execution: bool = False,
    ) -> Callable[[F], F]:
        """Mark ``fn(*inputs)`` as a custom task: called once, in the calling process, with
        each of its inputs; returns its output (a tuple for several)."""
        return self._decorate("custom", name, inputs, outputs, parallel_execution)


#: The decorators: ``@flowtask.extract(...)``, ``@flowtask.transform(...)``,
#: ``@flowtask.custom(...)``.
flowtask = TaskDecorators()


def validate_function_signature(function: Callable[..., Any]) -> bool:
    """Check that a task function takes the arguments its kind is called with.

    Returns
    -------
    bool
        ``True``.

    Raises
    ------
    FlowError
        Naming the function, what it takes and what it will be given.
    """
    kind = getattr(function, "_task_type", None)
    if kind is None:
        raise FlowError(f"{function!r} is not a task: decorate it with @flowtask.<kind>(...)")
    wanted = _ARITY.get(kind, len(getattr(function, "_task_inputs", [])))
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return True  # a builtin or C function: nothing to check
    try:
        signature.bind(*range(wanted))
    except TypeError:
        given = {
            "extract": "one source",
            "transform": "(cad_file, cad_loader, storage)",
        }.get(kind, f"its {wanted} input(s)")
        raise FlowError(
            f"{kind} task {getattr(function, '_task_name', function.__name__)!r}: "
            f"{function.__qualname__}{signature} cannot be called with {given}"
        ) from None
    return True


def validate_tasks(tasks: Sequence[Callable[..., Any]]) -> bool:
    """Check every task of a flow (decorated, callable as its kind is called).

    Raises
    ------
    FlowError
        For an empty list, an undecorated function, a bad signature or two tasks of the
        same name.
    """
    if not isinstance(tasks, list | tuple) or not tasks:
        raise FlowError(
            f"tasks must be a non-empty list of decorated task functions, got {tasks!r}"
        )
    seen: set[str] = set()
    for task in tasks:
        validate_function_signature(task)
        name = _attr(task, "_task_name")
        if name in seen:
            raise FlowError(f"two tasks are named {name!r}; give each its own name=")
        seen.add(name)
    return True


def list_registered_tasks() -> list[dict[str, Any]]:
    """Every task declared so far in this process, with what its decorator said."""
    return [
        {
            "name": name,
            "type": _attr(fn, "_task_type"),
            "inputs": list(_attr(fn, "_task_inputs")),
            "outputs": list(_attr(fn, "_task_outputs")),
            "parallel_execution": _attr(fn, "_parallel_execution"),
            "function": f"{fn.__module__}.{fn.__qualname__}",
        }
        for name, fn in _REGISTRY.items()
    ]


def print_task_registry() -> None:
    """Print :func:`list_registered_tasks`, one task a line."""
    for entry in list_registered_tasks():
        print(
            f"{entry['name']}: {entry['type']} {entry['inputs']} -> {entry['outputs']}"
            f" ({entry['function']})"
        )


def create_flow(
    name: str,
    tasks: Sequence[Callable[..., Any]],
    flows_outputdir: str | os.PathLike[str],
    max_workers: int | None = None,
    ml_task: str | None = None,
    debug: bool = False,
    auto_dataset_export: bool = True,
    export_visualization: bool = True,
    storage_type: str | StorageType = "optimized",
    parallel_task_kwargs: Mapping[str, Any] | None = None,
) -> Flow:
    """Return a :class:`~cadstore.flowmanager.flow.Flow` of ``tasks`` (the specified
    ``hoops_ai.create_flow``); run it with ``flow.process(inputs={...})``.

    Parameters
    ----------
    name
        The flow's name: its folder ``flows_outputdir/flows/<name>`` and its files'
        stem. A plain folder name (no separator, not ``.`` or ``..``).
    tasks
        Decorated task functions, in the order they run.
    flows_outputdir
        Where the ``flows/`` folder goes: a local folder (one the Dask workers share).
    max_workers
        Worker processes for transform tasks (``None``: every available core).
    ml_task
        A description recorded in the manifest's ``Flow Specifications``.
    debug
        Run every task in the calling process, one item after the other (no time limit,
        no memory guard): for debugging with breakpoints and prints.
    auto_dataset_export
        Merge the items into ``<name>.dataset`` with its tables and manifest after the
        last task.
    export_visualization
        Draw a PNG preview of each item into ``stream_cache/png/``.
    storage_type
        ``"optimized"`` (``.data`` items), ``"json"`` (JSON folders, not merged) or
        ``"memory"`` (nothing written; turns the export off with a warning).
    parallel_task_kwargs
        Per-item limits: ``time_limit_overall``, ``time_limit_small`` (< 1 MB),
        ``time_limit_medium`` (1-10 MB), ``time_limit_large`` (> 10 MB),
        ``file_size_bucketing``, ``skip_heavy_files``, ``memory_limit_mb``,
        ``start_method`` (see :mod:`cadstore.flowmanager.tasks.parallel_executor`).

    Returns
    -------
    Flow

    Raises
    ------
    FlowError
        For tasks that are not decorated task functions, a bad name, or a
        ``flows_outputdir`` that is a URL (a flow writes to a local folder).
    ValueError
        For a bad ``storage_type``, ``max_workers`` or ``parallel_task_kwargs``.

    Warns
    -----
    CadstoreWarning
        A ``UserWarning``: "Memory storage cannot be merged into datasets" (and for JSON
        storage likewise), when the export is turned off for that reason.
    """
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or os.sep in name
        or (os.altsep and os.altsep in name)
        or "\0" in name
    ):
        raise FlowError(f"the flow name must be a plain folder name, got {name!r}")
    validate_tasks(tasks)
    kind = StorageType.parse(storage_type)
    TimeLimits.from_kwargs(parallel_task_kwargs)
    if auto_dataset_export and kind is StorageType.MEMORY:
        warnings.warn(
            "Memory storage cannot be merged into datasets: auto_dataset_export is turned off",
            CadstoreWarning,
            stacklevel=2,
        )
        auto_dataset_export = False
    elif auto_dataset_export and kind is StorageType.JSON:
        warnings.warn(
            "JSON storage cannot be merged into datasets: auto_dataset_export is turned off "
            "(use storage_type='optimized' for a dataset)",
            CadstoreWarning,
            stacklevel=2,
        )
        auto_dataset_export = False
    return Flow(
        name,
        tasks,
        flows_outputdir,
        max_workers=max_workers,
        ml_task=ml_task,
        debug=debug,
        auto_dataset_export=auto_dataset_export,
        export_visualization=export_visualization,
        storage_type=kind,
        parallel_task_kwargs=parallel_task_kwargs,
    )
