"""The writer lock of a dataset on an object store, against a real server (SeaweedFS).

On an object store the lock is an object created with a conditional write, kept alive by
a heartbeat; these tests check the rules of :mod:`cadstore.io.lock` one by one: a second
writer is refused naming the first, a stale lock is taken over and its former owner finds
out before it commits, a lock of a dead process of this pid space is taken at once (and
one of another pid space is not), and the heartbeat outlives a failing request.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import s3fs

from cadstore.errors import DatasetLockedError
from cadstore.io import publish
from cadstore.io.location import Location, resolve
from cadstore.io.lock import LOCK_FORMAT, WriterLock
from s3server import WeedServer, WeedUnavailableError, start_weed

BUCKET = "cadstore-locks"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    data_dir = tmp_path_factory.mktemp("weed-locks")
    try:
        weed = start_weed(data_dir)
    except WeedUnavailableError as exc:
        pytest.skip(f"SeaweedFS cannot run on this machine: {exc}")
    try:
        s3fs.S3FileSystem(skip_instance_cache=True, **weed.storage_options()).mkdir(BUCKET)
        yield weed
    finally:
        weed.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def dataset(server: WeedServer) -> Location:
    name = secrets.token_hex(4)
    return resolve(f"s3://{BUCKET}/{name}/parts.dataset", server.storage_options())


def _plant(dataset: Location, **fields: Any) -> None:
    """Write a lock record as another writer would have left it."""
    now = time.time()
    record = {
        "format": LOCK_FORMAT,
        "token": "f" * 16,
        "host": "elsewhere",
        "pid": 4242,
        "operation": "append",
        "started": now,
        "heartbeat": now,
        "phase": "writing",
        "journal": {},
        "pid_space": "0badc0de",
        **fields,
    }
    publish.write_bytes_atomic(
        dataset.with_path(dataset.path + ".lock"), json.dumps(record).encode()
    )


def test_a_second_writer_is_refused_naming_the_first(dataset: Location) -> None:
    first = WriterLock(dataset, "merge")
    assert first.acquire() is None
    try:
        with pytest.raises(DatasetLockedError, match=r"a merge by pid \d+") as refused:
            WriterLock(dataset, "append").acquire()
        assert dataset.path in str(refused.value) and "nothing was changed" in str(refused.value)
        first.check()
    finally:
        first.release()
    second = WriterLock(dataset, "append")
    assert second.acquire() is None
    second.release()


def test_a_stale_lock_is_taken_over_and_its_owner_stops_before_committing(
    dataset: Location,
) -> None:
    stalled = WriterLock(dataset, "merge", stale_after=3600)
    stalled.acquire()
    stalled._stop.set()  # a writer that stalled: its heartbeat stops
    assert stalled._beat is not None
    stalled._beat.join()
    _plant(dataset, token=stalled.record.token, heartbeat=time.time() - 7200, pid_space="x")
    successor = WriterLock(dataset, "append", stale_after=60)
    previous = successor.acquire()
    try:
        assert previous is not None and previous.token == stalled.record.token
        with pytest.raises(DatasetLockedError, match="lost its lock"):
            stalled.check()
        successor.check()
    finally:
        successor.release()
        stalled.release()  # does not remove a lock that is not its own


def test_only_a_dead_process_of_this_pid_space_loses_its_lock_at_once(
    dataset: Location,
) -> None:
    dead = 2**22 + 12345  # beyond pid_max: no such process
    _plant(dataset, host="vm", pid=dead, pid_space="0badc0de")  # another pid space
    with pytest.raises(DatasetLockedError, match=f"pid {dead}"):
        WriterLock(dataset, "append").acquire()
    _plant(dataset, pid=dead, pid_space=publish.HOST_TAG)
    lock = WriterLock(dataset, "append")
    previous = lock.acquire()
    assert previous is not None and previous.pid == dead
    lock.release()


def test_the_heartbeat_outlives_a_failing_request(
    dataset: Location, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = WriterLock(dataset, "merge", stale_after=4)  # a beat every second
    real = lock._read_remote
    failures = [0]

    def flaky() -> Any:
        if failures[0] < 2:
            failures[0] += 1
            raise ConnectionError("the store did not answer")
        return real()

    monkeypatch.setattr(lock, "_read_remote", flaky)
    lock.acquire()
    try:
        first = lock.record.heartbeat
        deadline = time.monotonic() + 30
        while lock.record.heartbeat == first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert failures[0] == 2 and lock.record.heartbeat > first
        monkeypatch.setattr(lock, "_read_remote", real)
        stored = json.loads(dataset.with_path(dataset.path + ".lock").read_bytes())
        assert stored["token"] == lock.record.token
        lock.check()
    finally:
        lock.release()
    assert not dataset.with_path(dataset.path + ".lock").exists()


def test_lock_records_are_plain_json(tmp_path: Path) -> None:
    """A local lock file holds the same record, on one line."""
    lock = WriterLock(resolve(str(tmp_path / "parts.dataset")), "split")
    lock.acquire()
    try:
        raw = (tmp_path / "parts.dataset.lock").read_bytes()
        assert raw.endswith(b"\n") and raw.count(b"\n") == 1
        assert json.loads(raw)["pid_space"] == publish.HOST_TAG
    finally:
        lock.release()
