"""Batch durability of encoded items: one file-system sync per batch, and a resume that
checks whatever a crash may have left unsynced (``cadstore.encode.durability``).

A power cut cannot be staged in a test; what it leaves can: an item published but not
yet written back reads as a short or zero-filled file, or a summary that is missing. The
tests make those by hand, with the item left out of the durable log as it would be.
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
from cadstore.encode import ENCODED_DIR, SUMMARY_DIR, encode_files
from cadstore.encode import durability as durability_module
from cadstore.encode.durability import DURABLE_LOG, BatchSync, DurableLog
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
    return [json.loads(line) for line in (out / DURABLE_LOG).read_bytes().splitlines()]


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count fsyncs and file-system syncs made in this process."""
    counts = {"fsync": 0, "syncfs": 0}
    real_fsync, real_sync = os.fsync, publish.sync_file_system

    def fsync(fd: int) -> None:
        counts["fsync"] += 1
        real_fsync(fd)

    def sync(directory: str) -> None:
        counts["syncfs"] += 1
        real_sync(directory)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(durability_module, "sync_file_system", sync)
    return counts


def test_batch_durability_syncs_once_not_per_item(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = _count_calls(monkeypatch)
    batch = encode_files(parts, tmp_path / "batch", workers=0, histograms=False)
    assert batch.ok and len(batch.encoded) == 4
    # Creating the log (the file, its directory) and one append at the end: no fsync
    # per item, one sync of the file system.
    assert counts == {"fsync": 3, "syncfs": 1}
    assert sorted(_logged(tmp_path / "batch")) == sorted(batch.encoded)

    counts.update(fsync=0, syncfs=0)
    each = encode_files(parts, tmp_path / "item", workers=0, histograms=False, durability="item")
    assert each.ok and len(each.encoded) == 4
    assert counts["syncfs"] == 0
    assert counts["fsync"] >= 2 * len(each.encoded)  # each item and its directory
    assert sorted(_logged(tmp_path / "item")) == sorted(each.encoded)


def test_worker_processes_items_are_logged_in_batches(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durability_module, "SYNC_EVERY_ITEMS", 2)
    report = encode_files(parts, tmp_path, workers=2, histograms=False)
    assert report.ok and len(report.encoded) == 4
    lines = (tmp_path / DURABLE_LOG).read_bytes().splitlines()
    assert sorted(json.loads(line) for line in lines) == sorted(report.encoded)
    for name in report.encoded:
        with OptStorage(tmp_path / ENCODED_DIR / f"{name}.zarr", mode="r") as storage:
            assert storage.load_metadata("body_index") == 0


def test_resume_encodes_again_unsynced_items_that_do_not_read(
    parts: Path, tmp_path: Path
) -> None:
    first = encode_files(parts, tmp_path, workers=0, histograms=False)
    names = sorted(first.encoded)
    truncated, zeroed, no_summary, intact = names
    # What a power cut can leave of the last batch: the log misses it, and some of its
    # items were not written back.
    log = tmp_path / DURABLE_LOG
    log.write_bytes(b"".join(json.dumps(n).encode() + b"\n" for n in names if n == truncated))
    data = _item(tmp_path, truncated).read_bytes()
    _item(tmp_path, truncated).write_bytes(data[: len(data) // 2])
    size = _item(tmp_path, zeroed).stat().st_size
    _item(tmp_path, zeroed).write_bytes(bytes(size))
    (tmp_path / SUMMARY_DIR / f"{no_summary}.json").unlink()
    kept = _item(tmp_path, intact).read_bytes()
    kept_mtime = _item(tmp_path, intact).stat().st_mtime_ns

    again = encode_files(parts, tmp_path, workers=0, histograms=False)
    # The truncated item was logged (so trusted, as a durable item is): only the
    # unlogged ones are checked. The intact unlogged one passes and is left alone.
    assert again.damaged == sorted([zeroed, no_summary])
    assert sorted(again.encoded) == again.damaged
    assert intact in again.skipped
    assert _item(tmp_path, intact).read_bytes() == kept
    assert _item(tmp_path, intact).stat().st_mtime_ns == kept_mtime
    for name in (zeroed, no_summary):
        with OptStorage(tmp_path / ENCODED_DIR / f"{name}.zarr", mode="r") as storage:
            assert storage.load_metadata("body_index") == 0
    assert json.loads((tmp_path / SUMMARY_DIR / f"{no_summary}.json").read_text())
    assert sorted(set(_logged(tmp_path))) == names

    # Everything is logged now: a third run checks nothing and skips everything.
    third = encode_files(parts, tmp_path, workers=0, histograms=False)
    assert third.damaged == [] and third.encoded == [] and sorted(third.skipped) == names


def test_a_damaged_item_is_named_by_the_command_line(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = parts / sorted(os.listdir(parts))[0]
    assert main(["encode", str(one), "-o", str(tmp_path), "--workers", "0", "--no-progress"]) == 0
    (name,) = _logged(tmp_path)
    (tmp_path / DURABLE_LOG).write_bytes(b"")
    _item(tmp_path, name).write_bytes(b"\0" * 100)
    capsys.readouterr()
    args = ["encode", str(one), "-o", str(tmp_path), "--workers", "0", "--json"]
    assert main([*args, "--durability", "item"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["damaged"] == [name] and doc["encoded"] == [name]
    with OptStorage(tmp_path / ENCODED_DIR / f"{name}.zarr", mode="r") as storage:
        assert storage.load_metadata("body_index") == 0


def test_a_directory_without_a_log_trusts_its_items(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = encode_files(parts, tmp_path, workers=0, histograms=False, durability="item")
    (tmp_path / DURABLE_LOG).unlink()  # as runs before batch durability left it

    def no_check(*args: object, **kwargs: object) -> None:
        raise AssertionError("items written before the log were checked")

    monkeypatch.setattr("cadstore.merging.scan.scan_item", no_check)
    again = encode_files(parts, tmp_path, workers=0, histograms=False)
    assert again.encoded == [] and again.damaged == []
    assert sorted(_logged(tmp_path)) == sorted(first.encoded)


def test_bad_durability_is_refused_before_any_work(parts: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability must be one of"):
        encode_files(parts, tmp_path / "out", durability="never")
    assert not (tmp_path / "out").exists()


def test_log_ignores_a_torn_line_and_appends_after_it(tmp_path: Path) -> None:
    log = DurableLog(str(tmp_path))
    assert not log.exists() and log.names() == set()
    log.append(["a", "b"])
    with open(log.path, "ab") as fh:
        fh.write(b'"c')  # a crash in the middle of an append
    assert log.names() == {"a", "b"}
    log.append(["d"])
    assert log.names() == {"a", "b", "d"}
    with open(log.path, "ab") as fh:
        fh.write(b"\0\0\0\n")  # zeros a power cut can leave in an appended block
    assert log.names() == {"a", "b", "d"}


def test_batch_sync_syncs_each_file_system_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = _count_calls(monkeypatch)
    (tmp_path / "items").mkdir()
    (tmp_path / "summaries").mkdir()
    sync = BatchSync(
        DurableLog(str(tmp_path)),
        [str(tmp_path / "items"), str(tmp_path / "summaries"), str(tmp_path / "missing")],
        synced=False,
    )
    sync.flush()
    assert counts["syncfs"] == 0  # nothing pending: nothing to do
    monkeypatch.setattr(durability_module, "SYNC_EVERY_ITEMS", 3)
    for name in ("x", "y"):
        sync.add(name)
    assert counts["syncfs"] == 0 and not os.path.exists(sync.log.path)
    sync.add("z")
    assert counts["syncfs"] == 1  # two directories of one file system
    assert sync.log.names() == {"x", "y", "z"} and sync.pending == []


def test_sync_file_system_reports_a_failed_write_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish.sync_file_system(str(tmp_path))  # the real call
    monkeypatch.setattr(publish, "_syncfs", lambda: lambda fd: -1)
    monkeypatch.setattr(ctypes, "get_errno", lambda: errno.EIO)
    with pytest.raises(StorageError, match="could not be written") as caught:
        publish.sync_file_system(str(tmp_path))
    assert str(tmp_path) in str(caught.value)
    assert caught.value.errno == errno.EIO
