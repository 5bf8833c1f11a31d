"""Batch durability of encoded items: one file-system sync per batch, and a resume that
checks whatever a crash may have left unsynced (``cadstore.encode.durability``).

A power cut cannot be staged in a test; what it leaves can: an item published but not
yet written back reads as a short or zero-filled file, its summary may be missing, and
the durable log lacks the batch. The tests make those by hand; a crash before the sync is
a run whose ``BatchSync.flush`` does nothing.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("OCP")

from cadstore import OptStorage
from cadstore.cad import samples
from cadstore.cli import main
from cadstore.encode import ENCODED_DIR, ERROR_SUMMARY, SUMMARY_DIR, encode_files, item_name
from cadstore.encode import durability as durability_module
from cadstore.encode import run as run_module
from cadstore.encode.durability import DURABLE_LOG, BatchSync, DurableLog, file_identity
from cadstore.errors import StorageError
from cadstore.io import publish


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("parts")
    samples.write_sample_set(directory, count=4, seed=5)
    return directory


def _item(out: Path, name: str) -> Path:
    return out / ENCODED_DIR / f"{name}.zarr.data"


def _logged(out: Path) -> list[str]:
    return sorted(DurableLog(str(out)).read()[0])


def _reads(out: Path, name: str) -> bool:
    with OptStorage(out / ENCODED_DIR / f"{name}.zarr", mode="r") as storage:
        return bool(storage.load_metadata("body_index") == 0)


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count fsyncs and file-system syncs made in this process."""
    counts = {"fsync": 0, "syncfs": 0}
    real_fsync, real_sync = os.fsync, publish.FileSystemSync.sync

    def fsync(fd: int) -> None:
        counts["fsync"] += 1
        real_fsync(fd)

    def sync(self: publish.FileSystemSync) -> None:
        counts["syncfs"] += 1
        real_sync(self)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(publish.FileSystemSync, "sync", sync)
    return counts


def _crash_before_syncing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the runs that follow stop short of syncing and logging, as a crash would."""
    monkeypatch.setattr(BatchSync, "flush", lambda self: None)


def _no_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_check(*args: object, **kwargs: object) -> None:
        raise AssertionError("a trusted item was checked")

    monkeypatch.setattr("cadstore.merging.scan.scan_item", no_check)


# ---------------------------------------------------------------------------- syncing
def test_batch_durability_syncs_once_not_per_item(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = _count_calls(monkeypatch)
    batch = encode_files(parts, tmp_path / "batch", workers=0, histograms=False)
    assert batch.ok and len(batch.encoded) == 4
    # Creating the log (the file, its directory) and one append at the end: no fsync
    # per item, one sync of the file system.
    assert counts == {"fsync": 3, "syncfs": 1}
    assert _logged(tmp_path / "batch") == sorted(batch.encoded)

    counts.update(fsync=0, syncfs=0)
    each = encode_files(parts, tmp_path / "item", workers=0, histograms=False, durability="item")
    assert each.ok and len(each.encoded) == 4
    assert counts["syncfs"] == 1  # for the summaries, which are never fsynced one by one
    assert counts["fsync"] >= 2 * len(each.encoded)  # each item and its directory
    assert _logged(tmp_path / "item") == sorted(each.encoded)


def test_worker_processes_items_are_logged_in_batches(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durability_module, "SYNC_EVERY_ITEMS", 2)
    report = encode_files(parts, tmp_path, workers=2, histograms=False)
    assert report.ok and len(report.encoded) == 4
    assert _logged(tmp_path) == sorted(report.encoded)
    assert all(_reads(tmp_path, name) for name in report.encoded)


def test_bad_durability_is_refused_before_any_work(parts: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability must be one of"):
        encode_files(parts, tmp_path / "out", durability="never")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- resuming
def test_resume_encodes_again_unsynced_items_that_do_not_read(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = encode_files(parts, tmp_path, workers=0, histograms=False)
    names = sorted(first.encoded)
    truncated, zeroed, no_summary, intact = names
    # What a power cut can leave of the last batch: the log misses it, and some of its
    # items were not written back. A logged item changed since is checked too.
    log = DurableLog(str(tmp_path))
    log.rewrite({truncated: log.read()[0][truncated]})
    data = _item(tmp_path, truncated).read_bytes()
    _item(tmp_path, truncated).write_bytes(data[: len(data) // 2])
    _item(tmp_path, zeroed).write_bytes(bytes(_item(tmp_path, zeroed).stat().st_size))
    summary = tmp_path / SUMMARY_DIR / f"{no_summary}.json"
    kept_summary = json.loads(summary.read_text())
    summary.unlink()
    kept = {n: _item(tmp_path, n).read_bytes() for n in (no_summary, intact)}
    kept_mtime = {n: _item(tmp_path, n).stat().st_mtime_ns for n in kept}

    counts = _count_calls(monkeypatch)
    again = encode_files(parts, tmp_path, workers=0, histograms=False)
    assert again.damaged == sorted([truncated, zeroed])
    assert sorted(again.encoded) == again.damaged and again.ok
    assert all(_reads(tmp_path, name) for name in names)
    # The unlogged items that read whole are left alone, a lost summary is written
    # again from the item, and they are synced before they are logged.
    for name in kept:
        assert name in again.skipped
        assert _item(tmp_path, name).read_bytes() == kept[name]
        assert _item(tmp_path, name).stat().st_mtime_ns == kept_mtime[name]
    assert json.loads(summary.read_text()) == kept_summary
    assert counts["syncfs"] == 2  # the checked items, then the items encoded again
    assert _logged(tmp_path) == names

    # Everything is logged now: a third run checks nothing and skips everything.
    _no_checks(monkeypatch)
    third = encode_files(parts, tmp_path, workers=0, histograms=False)
    assert third.damaged == [] and third.encoded == [] and sorted(third.skipped) == names


def test_an_item_written_again_is_not_trusted_on_its_old_log_entry(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = encode_files(parts, tmp_path, workers=0, histograms=False)
    victim = sorted(first.encoded)[0]
    with monkeypatch.context() as m:
        _crash_before_syncing(m)
        forced = encode_files(parts, tmp_path, workers=0, histograms=False, resume=False)
    assert sorted(forced.encoded) == sorted(first.encoded)
    # The rewrite was lost to a power cut; the log still names the first version.
    _item(tmp_path, victim).write_bytes(bytes(_item(tmp_path, victim).stat().st_size))
    again = encode_files(parts, tmp_path, workers=0, histograms=False)
    assert again.damaged == [victim] and again.encoded == [victim]
    assert _reads(tmp_path, victim)


def test_items_checked_in_item_mode_are_synced_before_they_are_logged(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encode_files(parts, tmp_path, workers=0, histograms=False)
    with monkeypatch.context() as m:
        _crash_before_syncing(m)
        crashed = encode_files(parts, tmp_path, workers=0, histograms=False, resume=False)
    counts = _count_calls(monkeypatch)
    again = encode_files(parts, tmp_path, workers=0, histograms=False, durability="item")
    assert again.damaged == [] and sorted(again.skipped) == sorted(crashed.encoded)
    # Each checked item fsynced on a descriptor of its own (a write-back that failed
    # before is reported there), one sync, one append to the log.
    assert counts["fsync"] == len(crashed.encoded) + 1 and counts["syncfs"] == 1
    assert _logged(tmp_path) == sorted(crashed.encoded)


def test_an_item_whose_write_back_failed_is_encoded_again(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        _crash_before_syncing(m)
        crashed = encode_files(parts, tmp_path, workers=0, histograms=False)
    lost = sorted(crashed.encoded)[1]
    real = run_module.fsync_file

    def fsync_file(path: str) -> None:
        if lost in path:  # what Linux reports for blocks it could not write back
            raise StorageError(path, "could not be written: Input/output error (EIO)")
        real(path)

    monkeypatch.setattr(run_module, "fsync_file", fsync_file)
    again = encode_files(parts, tmp_path, workers=0, histograms=False)
    assert again.damaged == [lost] and again.encoded == [lost] and again.ok
    assert _logged(tmp_path) == sorted(crashed.encoded)


def test_a_lost_summary_of_a_logged_item_is_written_again(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = encode_files(parts, tmp_path, workers=0, histograms=False, durability="item")
    name = sorted(first.encoded)[0]
    summary = tmp_path / SUMMARY_DIR / f"{name}.json"
    kept = json.loads(summary.read_text())
    summary.unlink()
    _no_checks(monkeypatch)
    again = encode_files(parts, tmp_path, workers=0, histograms=False)
    assert again.encoded == [] and again.damaged == []
    assert json.loads(summary.read_text()) == kept


def test_an_item_replaced_after_it_was_added_is_not_logged_as_synced(tmp_path: Path) -> None:
    (tmp_path / "items").mkdir()
    path = tmp_path / "items" / "x.zarr.data"
    path.write_bytes(b"first")
    sync = BatchSync(DurableLog(str(tmp_path)), str(tmp_path / "items"), [str(tmp_path)])
    try:
        sync.add("x")
        first = file_identity(str(path))
        path.with_suffix(".new").write_bytes(b"second")
        os.replace(path.with_suffix(".new"), path)  # another writer, before the sync
        sync.flush()
    finally:
        sync.close()
    assert DurableLog(str(tmp_path)).read()[0] == {"x": first}
    assert file_identity(str(path)) != first  # so a resumed run checks it


def test_a_damaged_item_of_a_file_not_in_the_run_is_a_failure(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = sorted(parts.iterdir())
    first = encode_files(files[:2], tmp_path, workers=0, histograms=False)
    victim = item_name(files[0], 0)
    log = DurableLog(str(tmp_path))
    log.rewrite({n: i for n, i in log.read()[0].items() if n != victim})
    _item(tmp_path, victim).write_bytes(b"\0" * 100)

    args = ["encode", str(files[1]), "-o", str(tmp_path), "--workers", "0", "--json"]
    assert main(args) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["damaged"] == [victim] and doc["encoded"] == [] and doc["ok"] is False
    (failure,) = doc["failed"]
    assert failure["reason"] == "damaged" and failure["name"] == victim
    assert failure["item"] == str(_item(tmp_path, victim))
    assert "not among the inputs" in failure["error"]
    assert json.loads((tmp_path / ERROR_SUMMARY).read_text()) == doc["failed"]
    assert _item(tmp_path, victim).read_bytes() == b"\0" * 100  # nothing deleted
    assert set(first.encoded) - {victim} <= set(_logged(tmp_path))

    # With its file among the inputs it is encoded again, and the command says so.
    assert main(["encode", str(files[0]), "-o", str(tmp_path), "--workers", "0"]) == 0
    assert "left damaged by an earlier run" in capsys.readouterr().out
    assert _reads(tmp_path, victim)


def test_a_failed_sync_logs_nothing_and_keeps_the_run_report(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path.joinpath(ERROR_SUMMARY).write_text('[{"reason": "stale failure of an earlier run"}]')
    calls = []

    def failing_once(self: publish.FileSystemSync) -> None:
        calls.append(self.directory)
        if len(calls) == 1:
            raise StorageError(self.directory, "could not be written: Input/output error")

    monkeypatch.setattr(publish.FileSystemSync, "sync", failing_once)
    with pytest.raises(StorageError, match="Input/output error"):
        encode_files(parts, tmp_path, workers=0, histograms=False)
    # The failed batch is not logged, nor synced again in this run (Linux reports a
    # failed write-back once: a second sync would pass over lost data).
    assert len(calls) == 1 and _logged(tmp_path) == []
    assert json.loads((tmp_path / ERROR_SUMMARY).read_text()) == []
    monkeypatch.undo()
    again = encode_files(parts, tmp_path, workers=0, histograms=False)
    assert again.damaged == [] and len(again.skipped) == 4 and len(_logged(tmp_path)) == 4


def test_a_directory_without_a_log_trusts_its_items(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = encode_files(parts, tmp_path, workers=0, histograms=False, durability="item")
    (tmp_path / DURABLE_LOG).unlink()  # as runs before batch durability left it
    _no_checks(monkeypatch)
    counts = _count_calls(monkeypatch)
    again = encode_files(parts, tmp_path, workers=0, histograms=False)
    assert again.encoded == [] and again.damaged == []
    assert counts["syncfs"] == 1  # before the log starts: a copy may not be on disk yet
    assert _logged(tmp_path) == sorted(first.encoded)


def test_an_unreadable_log_is_a_storage_error_naming_it(parts: Path, tmp_path: Path) -> None:
    (tmp_path / DURABLE_LOG).mkdir(parents=True)
    with pytest.raises(StorageError, match=DURABLE_LOG):
        encode_files(parts, tmp_path, workers=0, histograms=False)
    assert not list((tmp_path / ENCODED_DIR).iterdir())


# ---------------------------------------------------------------------------- the parts
def test_log_ignores_a_torn_line_and_appends_after_it(tmp_path: Path) -> None:
    log = DurableLog(str(tmp_path))
    assert not log.exists() and log.read() == ({}, 0)
    log.append({"a": (1, 2, 3), "b": (4, 5, 6)})
    with open(log.path, "ab") as fh:
        fh.write(b'{"name": "c", "ino')  # a crash in the middle of an append
    assert log.read()[0] == {"a": (1, 2, 3), "b": (4, 5, 6)}
    log.append({"d": (7, 8, 9), "a": (10, 11, 12)})
    with open(log.path, "ab") as fh:
        fh.write(b"\0\0\0\n")  # zeros a power cut can leave in an appended block
    entries, lines = log.read()
    assert entries == {"a": (10, 11, 12), "b": (4, 5, 6), "d": (7, 8, 9)} and lines == 6
    log.rewrite(entries)
    assert log.read() == (entries, 3)


def test_a_log_of_many_stale_lines_is_compacted(parts: Path, tmp_path: Path) -> None:
    first = encode_files(parts, tmp_path, workers=0, histograms=False)
    log = DurableLog(str(tmp_path))
    entries, _ = log.read()
    for _ in range(40):
        log.append(entries)
    assert log.read() == (entries, 41 * 4)
    encode_files(parts, tmp_path, workers=0, histograms=False)
    assert log.read() == (entries, 4) and sorted(entries) == sorted(first.encoded)


def test_batch_sync_syncs_each_file_system_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = _count_calls(monkeypatch)
    for name in ("items", "summaries"):
        (tmp_path / name).mkdir()
    for name in "xyz":
        (tmp_path / "items" / f"{name}.zarr.data").write_bytes(name.encode())
    sync = BatchSync(
        DurableLog(str(tmp_path)),
        str(tmp_path / "items"),
        [str(tmp_path / "items"), str(tmp_path / "summaries")],
    )
    try:
        sync.flush()
        assert counts["syncfs"] == 0  # nothing pending: nothing to do
        monkeypatch.setattr(durability_module, "SYNC_EVERY_ITEMS", 3)
        for name in ("x", "y"):
            sync.add(name)
        assert counts["syncfs"] == 0 and not os.path.exists(sync.log.path)
        sync.add("z")
        assert counts["syncfs"] == 1  # two directories of one file system
        entries, _ = sync.log.read()
        assert set(entries) == {"x", "y", "z"} and sync.pending == {}
        assert entries["x"] == file_identity(str(tmp_path / "items" / "x.zarr.data"))
    finally:
        sync.close()


def test_sync_file_system_reports_a_failed_write_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish.sync_file_system(str(tmp_path))  # the real call
    with pytest.raises(StorageError, match="could not be written") as caught:
        publish.sync_file_system(str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(caught.value)
    monkeypatch.setattr(publish, "_syncfs", lambda: lambda fd: -1)
    monkeypatch.setattr(ctypes, "get_errno", lambda: errno.EIO)
    with pytest.raises(StorageError, match="could not be written") as caught:
        publish.sync_file_system(str(tmp_path))
    assert str(tmp_path) in str(caught.value)
    assert caught.value.errno == errno.EIO
