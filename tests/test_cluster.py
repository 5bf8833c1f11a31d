"""cadstore.cluster.run_on_dask on real LocalClusters: a task's own exception is not a
dead worker."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from cadstore.cluster import run_on_dask

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")


class _Heard:
    """A listener recording what run_on_dask tells it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.finished: list[str] = []
        self.failed: dict[str, tuple[str, str]] = {}

    def message(self, message: dict[str, Any]) -> None:
        self.received.append(message)

    def done(self, task: str) -> None:
        self.finished.append(task)

    def lost(self, task: str, pid: int | None, reason: str, error: str, seconds: float) -> None:
        self.failed[task] = (reason, error)


def _task(task: str, settings: Any) -> list[dict[str, Any]]:
    """A task per name: ``ok`` returns its message, the others raise or kill the worker."""
    if task == "refused":
        raise PermissionError(13, "Permission denied")  # names no file, as a read does
    if task == "wrong":
        raise ValueError("not what was expected")
    if task == "dies":
        os.kill(os.getpid(), signal.SIGKILL)
    if task == "cut off":  # what a future holds when its worker's connection closed
        raise distributed.comm.CommClosedError("in <TCP (closed)>: stream closed")
    return [{"type": "result", "task": task}]


def test_an_exception_a_task_raises_is_reported_as_what_it_is() -> None:
    """An exception a task raised itself was reported as a crash ("crash", "the Dask task
    failed (PermissionError: ...)"), as if its worker had died. It is reported with the
    reason work's failures have (failures.failure_fields: "storage" for an OSError,
    "error" for another) and the error as it is; the other task is done."""
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        heard = _Heard()
        threads = run_on_dask(client, ["ok", "refused", "wrong"], None, _task, heard)
    assert threads == 2
    assert heard.received == [{"type": "result", "task": "ok"}]
    assert heard.finished == ["ok"]
    assert heard.failed == {
        "refused": ("storage", "PermissionError: [Errno 13] Permission denied"),
        "wrong": ("error", "ValueError: not what was expected"),
    }


def test_a_task_whose_worker_dies_is_a_crash() -> None:
    """A worker that dies running a task, as often as the scheduler allows
    (``KilledWorker``), is the cluster's failure: the task is a crash."""
    import dask

    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        heard = _Heard()
        run_on_dask(client, ["dies"], None, _task, heard)
    assert heard.received == [] and heard.finished == []
    reason, error = heard.failed["dies"]
    assert reason == "crash"
    assert error.startswith("the Dask task failed (KilledWorker: ")


def test_a_closed_connection_is_a_crash_not_the_tasks_storage() -> None:
    """Found by review: ``CommClosedError`` is an ``OSError``, so a future that failed
    with it (its worker's connection closed under it) was reported as the task's own
    "storage" failure. It is the cluster's: a crash."""
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        heard = _Heard()
        run_on_dask(client, ["ok", "cut off"], None, _task, heard)
    assert heard.finished == ["ok"]
    reason, error = heard.failed["cut off"]
    assert reason == "crash"
    assert error.startswith("the Dask task failed (CommClosedError: ")
