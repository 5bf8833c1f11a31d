"""The supervision of worker processes (:mod:`cadstore.workers`): workers that cannot
start, and what reaches the parent from a worker as it starts.

Every test starts real worker processes (forked or spawned) and checks that none is left.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cadstore import workers
from cadstore.workers import ProcessPool, WorkerPool, WorkerSpec

#: A task larger than a pipe holds: sending it waits until the worker reads it, or dies.
_LARGE_TASK = b"x" * (8 * 2**20)


class _Heard:
    """A WorkerPool listener keeping what it hears."""

    def __init__(self) -> None:
        self.finished: list[Any] = []
        self.losses: list[tuple[Any, str, str]] = []

    def message(self, message: dict[str, Any]) -> None:
        """A worker's message: none expected."""

    def done(self, task: Any) -> None:
        self.finished.append(task)

    def lost(self, task: Any, pid: int | None, reason: str, error: str, seconds: float) -> None:
        self.losses.append((task, reason, error))


def _no_work(task: Any, settings: Any, emit: Any) -> None:
    """A worker's work that does nothing."""


def _needs(method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The worker processes the pools of a test start, in order. A pool starting more
    than a dozen stops the test (AssertionError) instead of starting them forever."""
    processes: list[Any] = []
    start = WorkerPool._start

    def counted(pool: WorkerPool) -> Any:
        if len(processes) >= 12:
            raise AssertionError(f"the pool went on starting workers ({len(processes)})")
        slot = start(pool)
        processes.append(slot.process)
        return slot

    monkeypatch.setattr(WorkerPool, "_start", counted)
    yield processes
    for process in processes:  # none left behind, even by a failing test
        if process.is_alive():
            process.kill()
        process.join()


def _none_left(processes: list[Any]) -> None:
    """Every worker started has exited and been reaped by the pool."""
    assert processes
    assert all(process.exitcode is not None for process in processes)
    assert not set(multiprocessing.active_children()) & set(processes)


_EXITS_AS_IMPORTED = """
import multiprocessing, os

if multiprocessing.parent_process() is not None:
    os._exit(5)


def work(task, settings, emit):
    pass
"""


@pytest.mark.parametrize(
    ("method", "death", "said"),
    [
        ("fork", "exit", "exited with code 7"),
        ("fork", "signal", "was killed by SIGKILL"),
        ("spawn", "import", "exited with code 5"),
    ],
)
def test_workers_dying_before_they_read_their_first_task_stop_the_run(
    method: str,
    death: str,
    said: str,
    started: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by review: a worker dying at start-up before the parent's first task had
    reached it (a task larger than the pipe holds waits for the worker to read it; a
    parent slower than a crash) was replaced as if killed while idle, without being
    counted as a start-up failure: a pool whose workers can never start restarted them
    forever. Such a worker counts: the run stops with the start-up error, naming how the
    last one ended, and leaves no worker behind."""
    _needs(method)
    if death == "import":
        (tmp_path / "exits_as_imported.py").write_text(_EXITS_AS_IMPORTED)
        monkeypatch.syspath_prepend(str(tmp_path))
        import exits_as_imported

        work: Any = exits_as_imported.work
    else:
        work = _no_work
        die = (lambda: os._exit(7)) if death == "exit" else (lambda: os.kill(os.getpid(), 9))
        monkeypatch.setattr(workers, "limit_memory", lambda limit: die())
    heard = _Heard()
    with (
        pytest.raises(RuntimeError, match=rf"fail to start \(3 in a row, the last one {said}\)"),
        WorkerPool(WorkerSpec(work, None), 1, None, heard, start_method=method) as pool,
    ):
        pool.run([_LARGE_TASK])
    # Not the task's fault: it is neither done nor lost.
    assert heard.finished == [] and heard.losses == []
    assert len(started) == 3 and pool.slots == []
    _none_left(started)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_worker_killed_as_it_waits_for_its_next_task_is_replaced(
    method: str, started: list[Any]
) -> None:
    """A worker that started, then died while idle, is replaced and the run goes on:
    only workers that never started count as start-up failures."""
    _needs(method)
    heard = _Heard()
    with WorkerPool(WorkerSpec(_no_work, None), 1, None, heard, start_method=method) as pool:
        pool.run([1])
        first = started[0]
        first.kill()
        first.join()
        pool.run([2, 3])
    assert heard.finished == [1, 2, 3] and heard.losses == []
    assert len(started) == 2 and pool.startup_failures == 0
    _none_left(started)


#: Stands in for a dependency of cadstore that warns as it is imported, in a worker only
#: (a process other than the test's): it warns, then hands over to the real numpy.
_NUMPY_THAT_WARNS = """
import os, sys, warnings

if os.getpid() != {parent}:
    warnings.warn(f"numpy imported in worker {{os.getpid()}}", UserWarning, stacklevel=1)
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != _here]
del sys.modules["numpy"]
import numpy
"""


def _pid_of(text: str) -> int:
    return int(text.rsplit(" ", 1)[1])


@pytest.mark.parametrize("pool", ["WorkerPool", "ProcessPool"])
def test_a_spawned_workers_warning_while_it_imports_cadstore_reaches_this_process(
    pool: str,
    started: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Found by review: a spawned worker imports cadstore (numpy, ...) as it unpickles
    what it runs, before it forwards its warnings, so a warning a dependency issued as it
    was imported was printed on the worker's stderr in Python's format, where every other
    warning of the worker is issued here. It is held until the worker forwards, then
    issued here like the others."""
    _needs("spawn")
    (tmp_path / "numpy.py").write_text(_NUMPY_THAT_WARNS.format(parent=os.getpid()))
    monkeypatch.syspath_prepend(str(tmp_path))  # for spawned workers: numpy is imported here
    context = multiprocessing.get_context("spawn")
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if pool == "WorkerPool":
            heard = _Heard()
            with WorkerPool(WorkerSpec(_no_work, None), 1, None, heard, start_method="spawn") as p:
                p.run([1, 2])
            assert heard.finished == [1, 2] and heard.losses == []
            pids = {process.pid for process in started}
            _none_left(started)
        else:
            with ProcessPool(1, mp_context=context) as executor:
                pids = {executor.submit(os.getpid).result()}
    seen = [str(w.message) for w in caught if "numpy imported in worker" in str(w.message)]
    assert len(seen) == 1 and {_pid_of(seen[0])} == pids, seen
    assert "numpy imported in worker" not in capfd.readouterr().err


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("task", [b"x" * 10, _LARGE_TASK], ids=["small task", "8 MiB task"])
def test_a_worker_that_cannot_apply_its_memory_cap_says_why_whatever_its_first_task(
    method: str, task: bytes, started: list[Any]
) -> None:
    """Found by review: a worker whose memory cap is below what it maps already sends
    why (``fatal``) and exits. With a first task larger than the pipe holds, the send of
    the task failed as the worker exited, and the pool counted a start-up failure
    without reading what the worker had sent: three such workers later the run stopped
    with "workers fail to start (... exited with code 0)", which hides the cause, where a
    small task's run raises it. What a worker said before it died is read first: the
    same ValueError whatever the task's size, and no worker left."""
    _needs(method)
    heard = _Heard()
    spec = WorkerSpec(_no_work, None, memory_limit_mb=1)
    with (
        pytest.raises(ValueError, match=r"memory_limit_mb=1 is below what a worker maps"),
        WorkerPool(spec, 1, None, heard, start_method=method) as pool,
    ):
        pool.run([task])
    assert heard.finished == [] and heard.losses == []
    assert len(started) == 1 and pool.slots == []
    _none_left(started)
