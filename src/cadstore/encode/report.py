"""What an encode reports: :class:`EncodeReport`, built from the workers' messages.

Every failure is one entry of ``error_summary.json``, written atomically at the end of the
run (also when it is interrupted)::

    [{"item_index": 3, "item": "/abs/bad.step", "name": null, "body_index": null,
      "worker_pid": 4242, "reason": "corrupt", "error": "CorruptStoreError: ...",
      "logs": ["Traceback ...", ...], "seconds": 0.01}]

``item_index`` is the file's position in the sorted input list, ``name`` and ``body_index``
identify the body when the failure is specific to one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from cadstore.encode.work import Task, discard
from cadstore.io.location import resolve
from cadstore.io.publish import TEMP_PREFIX, write_bytes_atomic

__all__ = ["Collector", "EncodeReport", "write_error_summary"]


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
    damaged
        Names of items found present but not whole when resuming (not yet made durable
        by the run that wrote them, and failing their check: see
        :mod:`cadstore.encode.durability`). Those of this run's files were encoded again
        (see :attr:`encoded` and :attr:`failed`); any other is a failure with reason
        ``"damaged"``.
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
    sync_seconds
        Seconds the supervisor spent making items durable and logging them (see
        :mod:`cadstore.encode.durability`), not counted in :attr:`timings`.
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
    damaged: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    storage_timings: dict[str, float] = field(default_factory=dict)
    bytes_written: int = 0
    sync_seconds: float = 0.0
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


@dataclass
class _FileState:
    """What the messages told about one file so far."""

    task: Task
    pid: int | None = None
    num_bodies: int | None = None
    body: int | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    load_seconds: float = 0.0
    finished: bool = False
    #: Bodies after the one a lost worker was on, for another worker to encode.
    continues: bool = False


class Collector:
    """Turns worker messages into per-file results, then into the report.

    It is the :class:`~cadstore.workers.Listener` of the worker pool: ``message`` for
    every step a worker reports, ``done`` when a file is finished, ``lost`` when its worker
    was killed or died (the scratch a killed worker may have left is removed then).

    Parameters
    ----------
    tasks
        The files to encode.
    encoded_dir
        Where the items go (for the scratch of lost workers).
    on_finished
        Called once per file finished (done or lost): the progress bar.
    on_item
        Called with the name of every item a worker published (the batch durability of
        :mod:`cadstore.encode.durability`).
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        encoded_dir: str,
        on_finished: Callable[[], None],
        on_item: Callable[[str], None] | None = None,
    ) -> None:
        self.files = {task.index: _FileState(task) for task in tasks}
        self.encoded_dir = encoded_dir
        self._on_finished = on_finished
        self._on_item = on_item

    def done(self, task: Task) -> None:
        """A worker finished ``task``."""
        self._finish(self.files[task.index])

    def lost(self, task: Task, pid: int | None, reason: str, error: str, seconds: float) -> None:
        """A worker on ``task`` was killed at the time limit, or died."""
        self._cleanup(task, pid)
        self.abort(task.index, reason, error, seconds)

    def _cleanup(self, task: Task, pid: int | None) -> None:
        """Remove the scratch a killed worker may leave: its temp files, empty work dirs."""
        prefix = f"{TEMP_PREFIX}{pid}-"
        with suppress(OSError):
            for name in os.listdir(self.encoded_dir):
                path = os.path.join(self.encoded_dir, name)
                if pid is not None and name.startswith(prefix):
                    with suppress(OSError):
                        os.unlink(path)
                elif name.startswith(f"{task.base}_") and name.endswith(".zarr"):
                    discard(path)

    def message(self, message: dict[str, Any]) -> None:
        """Record one message of a worker."""
        kind = message["type"]
        state = self.files[message["index"]]
        if kind == "start":
            # A worker starts the file (again, for the bodies after a lost one): what the
            # last worker was on says nothing of where this one is lost.
            state.pid = message["pid"]
            state.body = state.num_bodies = None
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
                if message["status"] == "encoded" and self._on_item is not None:
                    self._on_item(message["name"])
        elif kind == "failed":
            state.failures.append(self._failure(state, message))

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
            # The bodies after it go to another worker (see unfinished).
            state.continues = body + 1 < state.num_bodies
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

    def unfinished(self) -> list[Task]:
        """The files whose worker was lost on a body with bodies after it, as tasks that
        leave alone every body done or lost so far: a body that always exceeds the time
        limit (or crashes the kernel) must not keep a file's later bodies from ever being
        encoded. Each call gives a file at most once per loss, so passes end."""
        again = []
        for state in self.files.values():
            if not state.continues:
                continue
            state.continues = False
            handled = {item["body_index"] for item in state.items}
            handled |= {f["body_index"] for f in state.failures if f["body_index"] is not None}
            leave = tuple(sorted(handled | set(state.task.leave)))
            state.task = dataclasses.replace(state.task, leave=leave)
            again.append(state.task)
        return again

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


def write_error_summary(path: str, failures: Sequence[dict[str, Any]]) -> None:
    """Write ``error_summary.json`` (atomically, not fsynced: a run can make it again)."""
    data = json.dumps(list(failures), indent=1, default=str).encode("utf-8")
    # Not fsynced: the summary describes the run and can be regenerated by running again.
    write_bytes_atomic(resolve(path), data, durable=False)
