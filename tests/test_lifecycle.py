"""The dataset lifecycle (:mod:`cadstore.lifecycle`): versions, one writer, kills, recovery.

A writer is killed at each step of a merge and of an append: a forked child runs the
operation and ends with ``os._exit`` at the chosen point, so no ``finally``, no ``except``
and no ``atexit`` runs (the kernel still releases its ``flock``, as it does for a real
``SIGKILL``; ``tests/test_lifecycle_kill_harness.py`` sends real signals). After each kill:

* a reader sees one consistent version: the dataset's items, the infoset's rows and codes,
  the attribset, all of the same version, the old one or the new one;
* the same command run again succeeds and says whether it rolled the interrupted writer
  back or forward; afterwards the four files agree, carry the same commit id, and no
  temporary file or lock is left.
"""

from __future__ import annotations

import builtins
import errno
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import cadstore
from cadstore import lifecycle
from cadstore.dataset import DatasetExplorer, DatasetLoader, DatasetReader
from cadstore.errors import (
    CadstoreWarning,
    CorruptStoreError,
    DatasetLockedError,
    MergeError,
    StorageError,
)
from cadstore.format.commit import COMMIT_MEMBER, STAMP_KEY
from cadstore.io import lock as lock_module
from cadstore.io import publish
from cadstore.io.publish import TEMP_PREFIX
from cadstore.merging import merge_items

FORK = multiprocessing.get_context("fork")
KILLED = 137


def _names(paths: list[Path]) -> list[str]:
    return [p.name[: -len(".zarr.data")] for p in paths]


@pytest.fixture
def items(realistic_items: list[Any], tmp_path: Path) -> list[Path]:
    """Twenty items, copied so that each test owns its inputs."""
    folder = tmp_path / "items"
    folder.mkdir()
    out = []
    for path, _, _ in realistic_items[:20]:
        shutil.copy(path, folder / path.name)
        out.append(folder / path.name)
    return out


# ---------------------------------------------------------------------------- checks
def stamp_of_table(path: Path) -> str | None:
    """The stamp of the table ``path``, as cadstore reads it: a damaged footer is an error
    (``pyarrow.parquet.read_schema`` showed a damaged stamp's intact copy, in the Arrow
    schema pyarrow records)."""
    from cadstore.io.location import resolve

    class Unversioned:  # no commit record: the copy given is read, checked
        path = "unversioned.dataset"

        def member(self, key: str) -> None:
            return None

    found = lifecycle.TrustedTables(Unversioned()).read("infoset", resolve(path))
    assert found is not None
    value = (found[0].schema.metadata or {}).get(STAMP_KEY)
    return None if value is None else value.decode()


def commit_of(dataset: Path) -> dict[str, Any]:
    with DatasetReader(dataset) as reader:
        raw = reader.member(COMMIT_MEMBER)
    assert raw is not None
    return dict(json.loads(raw))


def seen_by_a_reader(dataset: Path) -> list[str]:
    """What a reader sees right now: the items of one version, with that version's tables.

    Returns the item names, after checking that the infoset has one row per item with
    codes 0..N-1 and the same names, and that the attribset is readable.
    """
    with warnings.catch_warnings():
        # A copy from another version is expected here: the reader says so and reads the
        # tables the dataset carries.
        warnings.filterwarnings("ignore", ".*belongs to another version", CadstoreWarning)
        with DatasetExplorer(merged_store_path=dataset) as explorer:
            names = list(explorer.reader.item_names)
            info = explorer.get_file_info_all()
            attribs = explorer.get_descriptions("category")
    assert info["id"].tolist() == list(range(len(names)))
    assert info["name"].tolist() == names
    assert len(attribs) > 0
    return names


def assert_settled(dataset: Path, names: list[str]) -> None:
    """After a finished operation: the four files agree, carry the commit id, and nothing
    is left over."""
    assert seen_by_a_reader(dataset) == names
    record = commit_of(dataset)
    stem = dataset.with_suffix("")
    for kind in ("infoset", "attribset"):
        copy = stem.with_suffix(f".{kind}")
        assert stamp_of_table(copy) == record["id"], kind
    info = pd.read_parquet(stem.with_suffix(".infoset"))
    assert info["name"].tolist() == names
    flow = json.loads(stem.with_suffix(".flow").read_text())
    assert flow["commit"] == record["id"]
    assert flow["file_count"] == len(names) == record["items"]
    leftovers = [p.name for p in dataset.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert leftovers == []
    assert not Path(f"{dataset}.lock").exists()


# ---------------------------------------------------------------------------- kills
def _die() -> None:
    os._exit(KILLED)


def _after_calls(function: Callable[..., Any], n: int) -> Callable[..., Any]:
    """``function``, dying right after its ``n``-th call returns."""
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        calls[0] += 1
        if calls[0] >= n:
            _die()
        return result

    return wrapped


def _on_call(n: int) -> Callable[..., Any]:
    calls = [0]

    def die_on_nth(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] >= n:
            _die()

    return die_on_nth


def _die_after_phase(phase: str) -> None:
    """Die once the lock's journal records ``phase``."""
    original = lock_module.WriterLock.update

    def update(self: Any, reached: str, **journal: Any) -> None:
        original(self, reached, **journal)
        if reached == phase:
            _die()

    lock_module.WriterLock.update = update  # type: ignore[method-assign]


def _kill_at(point: str) -> None:
    """Make this (forked) process die at ``point`` of the next operation."""
    if point == "locked":  # the lock taken, nothing read yet

        def die(*args: Any, **kwargs: Any) -> Any:
            _die()

        lifecycle.recover = die  # type: ignore[assignment]
    elif point == "writing":  # the new version part-written in its staging file
        for sink in (publish.ZipSink, publish.DirectorySink):
            sink.add = _after_calls(sink.add, 5)  # type: ignore[method-assign]
    elif point == "staged":  # complete, the journal says "committing", not yet published
        _die_after_phase("committing")
    elif point == "swapping":  # a directory version between its sink's two renames
        original = publish.DirectorySink.commit

        def commit(self: Any) -> None:
            if os.path.exists(self.location.path):
                os.replace(self.location.path, f"{self.tmp}-old")
                _die()
            original(self)

        publish.DirectorySink.commit = commit  # type: ignore[method-assign]
    elif point == "committed":  # published, no copy written yet
        _die_after_phase("publishing")
    elif point == "exchanged":  # a directory version swapped in, the old one not removed
        publish.exchange_paths = _after_calls(publish.exchange_paths, 1)  # type: ignore[assignment]
    elif point in ("infoset", "attribset"):  # after the first or both table copies
        lifecycle.write_bytes_atomic = _after_calls(  # type: ignore[assignment]
            publish.write_bytes_atomic, 1 if point == "infoset" else 2
        )
    elif point == "manifest":  # everything published, the lock not yet released
        lock_module.WriterLock.release = _on_call(1)  # type: ignore[method-assign]
    else:  # pragma: no cover
        raise ValueError(point)


def _dead_temporary(folder: Path) -> Path:
    """A temporary of a writer of another host, untouched for ten hours: recovery sweeps
    it as a dead writer's."""
    old = time.time() - 10 * 3600
    path = folder / f"{TEMP_PREFIX}123-otherhst-abc"
    path.write_bytes(b"x")
    os.utime(path, (old, old))
    return path


def _open_fails(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make ``open()`` of ``path`` fail as a failing disk does (EIO). The directory store
    opens its members with open(); refuse_opening's os.open is not on that path."""
    real_open = builtins.open

    def refused(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | os.PathLike) and os.fspath(file) == str(path):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refused)


def _failed_repair(via: str, out: Path, dataset: Any, capsys: pytest.CaptureFixture[str]) -> str:
    """Repair ``out`` through the CLI (``via="cli"``: it exits 2, saying nothing on
    stdout) or the API (``lifecycle.repair(dataset)`` raises a plain StorageError naming
    ``out``); return what it said of the failure."""
    if via == "cli":
        from cadstore.cli import main

        assert main(["repair", str(out)]) == 2
        said = capsys.readouterr()
        assert said.out == ""
        return said.err
    with pytest.raises(StorageError) as caught:
        lifecycle.repair(dataset)
    assert type(caught.value) is StorageError and caught.value.path == str(out)
    return str(caught.value)


def run_killed(operation: Callable[[], Any], point: str) -> None:
    """Run ``operation`` in a forked child that dies at ``point``; it must die there."""

    def child() -> None:
        _kill_at(point)
        try:
            operation()
        except BaseException:
            os._exit(3)
        os._exit(0)

    process = FORK.Process(target=child)
    process.start()
    process.join(120)
    assert process.exitcode == KILLED, f"the writer was not killed at {point!r}"


BEFORE_COMMIT = ["locked", "writing", "staged"]
AFTER_COMMIT = ["committed", "infoset", "attribset", "manifest"]


@pytest.mark.parametrize("point", BEFORE_COMMIT + AFTER_COMMIT)
def test_a_killed_merge_is_finished_or_undone_by_running_it_again(
    items: list[Path], tmp_path: Path, point: str
) -> None:
    out = tmp_path / "out" / "parts.dataset"
    inputs = [str(p) for p in items[:8]]
    run_killed(lambda: cadstore.merge(inputs, str(out)), point)
    committed = point in AFTER_COMMIT
    assert out.exists() == committed
    if committed:  # a reader sees the whole new version, tables included
        assert seen_by_a_reader(out) == _names(items[:8])
    with pytest.warns(CadstoreWarning) as said:
        result = cadstore.merge(inputs, str(out))  # the same command, again
    assert result.items == _names(items[:8])
    text = " ".join(str(w.message) for w in said)
    if committed:
        assert "had committed version 1" in text
        assert ("rolled forward" in text) == (point != "manifest")
    else:
        assert "rolled back" in text and "before its commit" in text
    assert any(m in text for m in result.recovered)
    assert_settled(out, _names(items[:8]))


@pytest.mark.parametrize("point", BEFORE_COMMIT + AFTER_COMMIT)
@pytest.mark.parametrize("layout", ["zip", "directory"])
def test_a_killed_append_is_finished_or_undone_by_running_it_again(
    items: list[Path], tmp_path: Path, point: str, layout: str
) -> None:
    out = tmp_path / "parts.dataset"
    first, more = [str(p) for p in items[:10]], [str(p) for p in items[10:15]]
    if layout == "zip":
        cadstore.merge(first, str(out))
    else:
        merge_items(first, out, directory=True)
    before = seen_by_a_reader(out)
    run_killed(lambda: cadstore.merge(more, str(out), append=True), point)
    seen = seen_by_a_reader(out)
    assert seen == (_names(items[:15]) if point in AFTER_COMMIT else before)
    with pytest.warns(CadstoreWarning):
        result = cadstore.merge(more, str(out), append=True)
    # Items already committed are not appended twice, and none is lost.
    assert result.total_items == 15
    assert sorted(result.items) == sorted(set(_names(items[10:15])) - set(seen))
    assert result.recovered
    assert_settled(out, _names(items[:15]))


def test_a_directory_dataset_killed_between_its_renames_is_put_in_place(
    items: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "parts.dataset"
    merge_items([str(p) for p in items[:10]], out, directory=True)
    more = [str(p) for p in items[10:15]]
    run_killed(lambda: cadstore.merge(more, str(out), append=True), "swapping")
    assert not out.exists()  # caught between the renames: the path is empty
    with pytest.warns(CadstoreWarning, match="had committed|rolled"):
        cadstore.merge(more, str(out), append=True)
    assert_settled(out, _names(items[:15]))


def test_a_swap_interrupted_without_exchange_survives_other_writers_sweeps(
    items: list[Path], tmp_path: Path
) -> None:
    """Between the two renames (file systems without an atomic exchange) both versions sit
    under temporary names of a dead writer: a writer of another dataset in the same folder
    sweeps dead temporaries, and must leave them to this dataset's recovery."""
    out = tmp_path / "parts.dataset"
    merge_items([str(p) for p in items[:10]], out, directory=True)
    more = [str(p) for p in items[10:15]]
    run_killed(lambda: cadstore.merge(more, str(out), append=True), "swapping")
    assert not out.exists()
    staged = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX))
    assert len(staged) == 2 and staged[1] == f"{staged[0]}-old"
    cadstore.merge([str(p) for p in items[:3]], str(tmp_path / "other.dataset"))
    assert lifecycle.repair(tmp_path / "other.dataset") == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)) == staged
    with pytest.warns(CadstoreWarning, match="had committed|rolled"):
        cadstore.merge(more, str(out), append=True)
    assert_settled(out, _names(items[:15]))


def test_a_live_writers_staging_folder_is_never_swept_however_old(tmp_path: Path) -> None:
    """Same host: a temporary is dead when its process is, not when it is old (a large
    dataset takes hours to assemble, and its staging folder's time stops changing)."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        old = time.time() - 10 * 3600
        names = {}
        for who, pid in (("live", live.pid), ("dead", dead.pid)):
            folder = tmp_path / f"{TEMP_PREFIX}{pid}-{publish.HOST_TAG}-{who}"
            (folder / "face").mkdir(parents=True)
            (folder / "face" / "c0").write_bytes(b"shard")
            os.utime(folder, (old, old))
            names[who] = folder.name
        foreign = tmp_path / f"{TEMP_PREFIX}123-otherhst-abc"
        foreign.write_bytes(b"x")
        os.utime(foreign, (old, old))
        removed = publish.sweep_dead_temporaries(cadstore.io.resolve(str(tmp_path)))
        assert sorted(removed) == sorted([names["dead"], foreign.name])
        assert (tmp_path / names["live"] / "face" / "c0").read_bytes() == b"shard"
    finally:
        live.kill()
        live.wait()


def test_a_staging_folder_removed_under_a_writer_publishes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "parts.dataset"
    sink = publish.DirectorySink(cadstore.io.resolve(str(out)))
    sink.add("face/c/0", b"first shard")
    shutil.rmtree(sink.tmp)
    with pytest.raises(StorageError, match=r"staging folder .* was removed") as caught:
        sink.add("face/c/1", b"second shard")
    assert str(out) in str(caught.value)
    sink.abort()
    assert not out.exists()


def test_forked_workers_do_not_keep_a_killed_writers_lock(tmp_path: Path) -> None:
    """flock belongs to the open file, which forked children share: a merge's process
    pool outliving its killed parent must not keep the dataset locked."""
    dataset = cadstore.io.resolve(str(tmp_path / "parts.dataset"))
    script = (
        "import os, sys, time\n"
        "from cadstore.io.location import resolve\n"
        "from cadstore.io.lock import WriterLock\n"
        "WriterLock(resolve(sys.argv[1]), 'merge').acquire()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    os.close(1); os.close(2)  # the test reads the owner's output to its end\n"
        "    time.sleep(60); os._exit(0)\n"
        "print(child, flush=True)\n"
        "os._exit(0)  # the owner dies; its forked worker lives on\n"
    )
    owner = subprocess.run(
        [sys.executable, "-c", script, dataset.path], capture_output=True, text=True, check=True
    )
    worker = int(owner.stdout.strip())
    try:
        os.kill(worker, 0)  # still alive
        lock = lock_module.WriterLock(dataset, "append")
        previous = lock.acquire()
        assert previous is not None and previous.operation == "merge"
        lock.release()
    finally:
        os.kill(worker, 9)


def test_a_full_disk_while_taking_the_lock_names_the_lock_and_keeps_its_record(
    items: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:4]], str(out))
    run_killed(
        lambda: cadstore.merge([str(p) for p in items[4:6]], str(out), append=True), "writing"
    )
    journal = Path(f"{out}.lock").read_bytes()
    real = publish.os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(publish.os, "pwrite", full)
    with pytest.raises(StorageError, match="no space left on device") as caught:
        cadstore.merge([str(p) for p in items[4:6]], str(out), append=True)
    assert caught.value.errno == errno.ENOSPC and f"{out}.lock" in str(caught.value)
    assert Path(f"{out}.lock").read_bytes() == journal  # the killed writer's journal kept
    monkeypatch.setattr(publish.os, "pwrite", real)
    # The failed attempt let the lock go: this process takes it and recovers.
    with pytest.warns(CadstoreWarning, match="rolled back"):
        cadstore.merge([str(p) for p in items[4:6]], str(out), append=True)
    assert_settled(out, _names(items[:6]))


def test_a_lock_record_torn_by_a_kill_mid_rewrite_reads_as_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    old = lock_module.LockRecord("a" * 16, "h", 1, "merge", 1.0, 1.0, journal={"x": "y" * 500})
    new = lock_module.LockRecord("b" * 16, "h", 2, "append", 2.0, 2.0)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        publish.rewrite_open_file(fd, old.to_bytes())
        # A kill after the new record's write, before the cut: what is left on disk.
        os.pwrite(fd, new.to_bytes() + b"\n", 0)
        torn = path.read_bytes()
        assert len(torn) > len(new.to_bytes()) + 1
        assert lock_module.LockRecord.from_bytes(torn) == new
        publish.rewrite_open_file(fd, new.to_bytes())
        assert path.read_bytes() == new.to_bytes() + b"\n"
    finally:
        os.close(fd)


def test_a_zip_sink_aborted_on_a_full_disk_removes_its_temporary(tmp_path: Path) -> None:
    out = tmp_path / "parts.dataset"
    sink = publish.ZipSink(cadstore.io.resolve(str(out)))
    sink.add("zarr.json", b"{}")
    real = sink._fh

    class FullOnClose:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def close(self) -> None:
            real.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    sink._fh = FullOnClose()  # type: ignore[assignment]
    sink.abort()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_commit_record_with_many_skipped_items_stays_readable() -> None:
    from cadstore.format.commit import CommitRecord

    errors = [{"file": f"items/{i:06d}.zarr.data", "error": "E" * 400} for i in range(60_000)]
    record = CommitRecord.create("c" * 32, None, "merge", 3, {}, {}, {"errors": errors})
    raw = record.to_bytes()
    back = CommitRecord.from_bytes(raw, "parts.dataset")
    assert [e["file"] for e in back.summary["errors"]] == [e["file"] for e in errors]


def test_a_directory_version_is_swapped_in_at_once(items: list[Path], tmp_path: Path) -> None:
    """Where the file system can (Linux renameat2), a directory dataset is replaced in one
    atomic step: its path is never empty, and a kill right after leaves the new version."""
    out = tmp_path / "parts.dataset"
    merge_items([str(p) for p in items[:10]], out, directory=True)
    if not publish.exchange_paths(str(tmp_path / "items"), str(out)):
        pytest.skip("this file system cannot exchange two paths (renameat2 RENAME_EXCHANGE)")
    assert publish.exchange_paths(str(tmp_path / "items"), str(out))  # and back
    more = [str(p) for p in items[10:15]]
    run_killed(lambda: cadstore.merge(more, str(out), append=True), "exchanged")
    assert seen_by_a_reader(out) == _names(items[:15])
    with pytest.warns(CadstoreWarning, match="had committed version 2"):
        cadstore.merge(more, str(out), append=True)
    assert_settled(out, _names(items[:15]))


def test_repair_says_what_it_did_and_is_idempotent(items: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:6]], str(out))
    more = [str(p) for p in items[6:9]]
    run_killed(lambda: cadstore.merge(more, str(out), append=True), "committed")
    done = lifecycle.repair(cadstore.io.resolve(str(out)))
    assert len(done) == 1 and "rolled forward" in done[0]
    assert "parts.infoset" in done[0] and "parts.flow" in done[0]
    assert lifecycle.repair(cadstore.io.resolve(str(out))) == []
    assert_settled(out, _names(items[:9]))


# ---------------------------------------------------------------------------- readers
def test_a_reader_keeps_its_version_while_a_writer_replaces_it(
    items: list[Path], tmp_path: Path
) -> None:
    """Finding 2: a live explorer saw 13 items with 10 infoset rows."""
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:10]], str(out))
    with DatasetExplorer(flow_output_file=tmp_path / "parts.flow") as explorer:
        assert explorer.reader.n_items == 10
        cadstore.merge([str(p) for p in items[10:13]], str(out), append=True)
        # The infoset is read now, after the append replaced every file: the explorer
        # still reads the version it opened, whole.
        with pytest.warns(CadstoreWarning, match="belongs to another version"):
            info = explorer.get_file_info_all()
        assert len(info) == explorer.reader.n_items == 10
        assert info["name"].tolist() == explorer.reader.item_names
    with DatasetExplorer(flow_output_file=tmp_path / "parts.flow") as fresh:
        assert len(fresh.get_file_info_all()) == fresh.reader.n_items == 13


def test_a_reader_opened_again_after_its_dataset_was_replaced_refuses_to_read(
    items: list[Path], tmp_path: Path
) -> None:
    """A DataLoader worker (spawned, or forked while another thread read) opens the
    dataset again by path: after a merge with overwrite it read the new version's items
    under the codes, names and labels of the version the training process opened, without
    a word. It now refuses, saying why; a reader open across the replacement, and one
    pickled when nothing was replaced, read as before."""
    import pickle

    pytest.importorskip("torch")
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:10]], str(out))
    with DatasetLoader(flow_output_file=tmp_path / "parts.flow") as loader:
        loader.split("random", train=0.8, validation=0.1, test=0.1, random_state=0)
        dataset, _ = loader.get_dataset("train").to_torch_with_collate()
        reader = dataset.source.reader
        before = reader.read_item(0)
        pickled = pickle.dumps(dataset)
        unchanged = pickle.loads(pickled)  # noqa: S301 - our own bytes
        assert unchanged.source.reader.read_item(0)["faces"].keys() == before["faces"].keys()
        unchanged.source.reader.close()
        cadstore.merge([str(p) for p in items[10:20]], str(out), overwrite=True)

        worker = pickle.loads(pickled)  # noqa: S301 - what a spawned DataLoader worker gets
        with pytest.raises(StorageError, match=r"replaced by another version.*open the dataset"):
            worker[0]
        with pytest.raises(StorageError, match="replaced by another version"):
            worker.source.reader.read_item(0)
        worker.source.reader.close()

        def in_forked_child() -> str:
            reader._release()  # as a reader busy in another thread at fork: opened again
            try:
                reader.read_item(0)
            except StorageError as exc:
                return str(exc)
            return "read"

        assert "replaced by another version" in _run_in_child(in_forked_child)
        # The training process's own reader still reads the version it opened.
        for name, array in before["faces"].items():
            np.testing.assert_array_equal(reader.read_item(0)["faces"][name], array)
    with DatasetReader(out) as fresh:
        assert fresh.item_names == _names(items[10:20])
        with pickle.loads(pickle.dumps(fresh)) as again:  # noqa: S301 - our own bytes
            assert again.item_names == fresh.item_names
            assert again.read_item(0)["faces"].keys() == fresh.read_item(0)["faces"].keys()
        # An append keeps the items a reader knew, under the same codes: a worker opening
        # the dataset again after one reads them (and the new items too).
        pickled = pickle.dumps(fresh)
        first = fresh.read_item(3)
        cadstore.merge([str(p) for p in items[:2]], str(out), append=True)
        with pickle.loads(pickled) as after_append:  # noqa: S301 - our own bytes
            assert after_append.item_names == _names(items[10:20]) + _names(items[:2])
            for name, array in first["faces"].items():
                np.testing.assert_array_equal(after_append.read_item(3)["faces"][name], array)


def _run_in_child(work: Callable[[], str]) -> str:
    receive, send = FORK.Pipe(duplex=False)
    child = FORK.Process(target=lambda: send.send(work()))
    child.start()
    try:
        assert receive.poll(60), "the forked child did not answer"
        return str(receive.recv())
    finally:
        child.join(10)


def test_copies_from_another_version_are_not_trusted(items: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:5]], str(out))
    old_infoset = (tmp_path / "parts.infoset").read_bytes()
    cadstore.merge([str(p) for p in items[5:8]], str(out), append=True)
    (tmp_path / "parts.infoset").write_bytes(old_infoset)  # a stale copy
    with (
        pytest.warns(CadstoreWarning, match="belongs to another version"),
        DatasetExplorer(flow_output_file=tmp_path / "parts.flow") as explorer,
    ):
        info = explorer.get_file_info_all()
    assert info["name"].tolist() == _names(items[:8])


def test_a_stamp_differing_late_is_told_apart_from_the_commit_id(
    items: list[Path], tmp_path: Path
) -> None:
    """A copy whose stamp differed from the commit id only at its 21st character was warned
    of as of 'commit d0d37593b2b4, the dataset is at d0d37593b2b4': the same 12 characters
    twice. Both are shown up to past the first character that differs, which is named;
    the tables the dataset carries are read and the copy is left as it was. (A stamp one
    flipped bit made so is damage, told as such: the next test.)"""
    import re

    import pyarrow as pa

    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:4]], str(out))
    infoset = tmp_path / "parts.infoset"
    commit_id = commit_of(out)["id"]
    stamp = commit_id[:20] + ("0" if commit_id[20] != "0" else "1") + commit_id[21:]
    raw = lifecycle.table_bytes(pq.read_table(pa.BufferReader(infoset.read_bytes())), stamp)
    infoset.write_bytes(raw)
    with (
        pytest.warns(CadstoreWarning, match="belongs to another version") as said,
        DatasetExplorer(merged_store_path=out) as explorer,
    ):
        info = explorer.get_file_info_all()
    message = str(said[0].message)
    shown = re.search(r"commit (\S+), the dataset is at (\S+),", message)
    assert shown is not None, message
    found, expected = (part.removesuffix("...") for part in shown.groups())
    assert found != expected, message
    assert stamp.startswith(found) and commit_id.startswith(expected), message
    assert "differ from character 21" in message
    assert info["name"].tolist() == _names(items[:4])
    assert infoset.read_bytes() == raw


def _flip_in_metadata(copy: Path, key: bytes) -> bytes:
    """Flip one bit in the value of ``key`` in the footer metadata of the table ``copy``
    (no checksum covers it; plain pyarrow reads the table as before, but for that value);
    return the file's new bytes."""
    import pyarrow as pa

    raw = bytearray(copy.read_bytes())
    value = pq.ParquetFile(pa.BufferReader(bytes(raw))).read().schema.metadata[key]
    assert bytes(raw).count(value) == 1  # the other copy is base64, in ARROW:schema
    raw[bytes(raw).index(value) + len(value) // 2] ^= 0x01
    copy.write_bytes(bytes(raw))
    damaged = pq.ParquetFile(pa.BufferReader(bytes(raw))).read().schema.metadata[key]
    assert damaged != value and len(damaged) == len(value)
    return bytes(raw)


@pytest.mark.parametrize("key", [STAMP_KEY, b"cadstore"])
def test_a_copy_damaged_in_its_footer_metadata_is_passed_over(
    items: list[Path], tmp_path: Path, key: bytes
) -> None:
    """A copy beside the dataset with one flipped bit in its footer's metadata (no checksum
    covers it) was read as the open version's when only the ``cadstore`` document was
    damaged, and warned of as another version's when the stamp was. Such a copy is now
    refused as corrupt (its metadata differs from the copy in its recorded Arrow schema),
    and as its version cannot be told the reader warns, naming the file and the problem,
    and reads the tables the dataset carries; the copy is left as it was, until the next
    writer (an append here) publishes it again."""
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:4]], str(out))
    infoset = tmp_path / "parts.infoset"
    damaged = _flip_in_metadata(infoset, key)
    said = rf"parts\.infoset is damaged \(.*metadata.*'{key.decode()}'.*tables .* carries"
    with (
        pytest.warns(CadstoreWarning, match=said),
        DatasetExplorer(merged_store_path=out) as explorer,
    ):
        info = explorer.get_file_info_all()
    assert info["name"].tolist() == _names(items[:4])
    assert infoset.read_bytes() == damaged
    with pytest.raises(CorruptStoreError, match=r"parts\.infoset"):
        stamp_of_table(infoset)  # the helper reads through cadstore's checks
    # The next writer finds the copy unreadable, so not of the current version, and
    # publishes it again before its own work.
    with pytest.warns(CadstoreWarning, match=r"parts\.infoset published again"):
        cadstore.merge([str(p) for p in items[4:6]], str(out), append=True)
    assert_settled(out, _names(items[:6]))


def test_a_damaged_copy_is_passed_over_only_for_a_table_the_dataset_carries(
    items: list[Path], tmp_path: Path
) -> None:
    """The table the dataset carries is never passed over: with a copy damaged in its
    footer metadata, a damaged table in the dataset is an error naming the dataset; a
    dataset that carries no table (unversioned) leaves the damaged copy, an error naming
    it, where the copy was read with its damaged stamp as if intact."""
    from cadstore.format.commit import table_member
    from cadstore.io.location import resolve

    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:4]], str(out))
    infoset = tmp_path / "parts.infoset"
    _flip_in_metadata(infoset, STAMP_KEY)

    class Damaged:
        """The open dataset, one of whose members reads otherwise."""

        def __init__(self, reader: DatasetReader, member: str, damage: Callable) -> None:
            self.reader, self.path, self.damaged, self.damage = reader, reader.path, member, damage

        def member(self, key: str) -> bytes | None:
            raw = self.reader.member(key)
            return self.damage(raw) if key == self.damaged and raw is not None else raw

    def flipped(raw: bytes) -> bytes:
        return raw[:100] + bytes([raw[100] ^ 0x01]) + raw[101:]

    with DatasetReader(out) as reader:
        carried = lifecycle.TrustedTables(Damaged(reader, table_member("infoset"), flipped))
        with (
            pytest.warns(CadstoreWarning, match=r"parts\.infoset is damaged"),
            pytest.raises(CorruptStoreError, match=r"parts\.dataset.*infoset\.parquet"),
        ):
            carried.read("infoset", resolve(infoset))
        unversioned = lifecycle.TrustedTables(Damaged(reader, COMMIT_MEMBER, lambda raw: None))
        with pytest.raises(CorruptStoreError, match=r"parts\.infoset.*'cadstore\.commit'"):
            unversioned.read("infoset", resolve(infoset))


def test_reading_the_tables_starts_no_arrow_threads(items: list[Path], tmp_path: Path) -> None:
    """An Arrow pool thread alive at exit can abort the interpreter (apache/arrow#34314):
    appending (which unites the old tables with the new rows) and reading the infoset, the
    attribset and the commit record must start none."""
    dataset = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:4]], str(dataset))
    script = f"""
import os, sys
import pandas, pyarrow
import cadstore
from cadstore import lifecycle
from cadstore.dataset import DatasetExplorer, DatasetReader
before = sorted(os.listdir("/proc/self/task"))
cadstore.merge({[str(p) for p in items[4:]]!r}, {str(dataset)!r}, append=True)
reader = DatasetReader({str(dataset)!r})
with DatasetExplorer(merged_store_path={str(dataset)!r}) as explorer:
    explorer.get_file_info_all()
    explorer.get_descriptions("category")
lifecycle.read_commit(reader)
after = sorted(os.listdir("/proc/self/task"))
reader.close()
print(len(before), len(after))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    before, after = map(int, done.stdout.split())
    assert after == before


def test_the_dataset_carries_tables_that_zarr_python_ignores(
    items: list[Path], tmp_path: Path
) -> None:
    import zarr

    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:4]], str(out))
    record = commit_of(out)
    assert record["version"] == 1 and record["parent"] is None and record["items"] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a warning about unknown members
        group = zarr.open_group(zarr.storage.ZipStore(out, mode="r"), mode="r")
        assert {"faces", "edges", "item_names"} <= set(group.keys())
    cadstore.merge([str(p) for p in items[4:6]], str(out), append=True)
    second = commit_of(out)
    assert second["version"] == 2 and second["parent"] == record["id"]


# ---------------------------------------------------------------------------- writers
def _hold_lock_in_child(
    dataset: Path, operation: Callable[[], Any], started: Any, release: Any
) -> Any:
    """Start ``operation`` in a forked child that stops, holding the lock, until released."""

    def child() -> None:
        original = lifecycle.recover

        def recover(*args: Any, **kwargs: Any) -> Any:
            started.set()
            release.wait(60)
            return original(*args, **kwargs)

        lifecycle.recover = recover  # type: ignore[assignment]
        try:
            operation()
        except BaseException:
            os._exit(3)
        os._exit(0)

    process = FORK.Process(target=child)
    process.start()
    assert started.wait(60)
    return process


def test_a_second_appender_is_refused_and_nothing_is_lost(
    items: list[Path], tmp_path: Path
) -> None:
    """Finding 3: two concurrent appenders both reported success, and 5 items were lost."""
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:10]], str(out))
    first, second = [str(p) for p in items[10:15]], [str(p) for p in items[15:20]]
    started, release = FORK.Event(), FORK.Event()
    holder = _hold_lock_in_child(
        out, lambda: cadstore.merge(first, str(out), append=True), started, release
    )
    before = out.read_bytes()
    with pytest.raises(DatasetLockedError) as refused:
        cadstore.merge(second, str(out), append=True)
    message = str(refused.value)
    assert str(out) in message and f"pid {holder.pid}" in message and "append" in message
    assert "nothing was changed" in message
    assert out.read_bytes() == before
    release.set()
    holder.join(60)
    assert holder.exitcode == 0
    cadstore.merge(second, str(out), append=True)  # run again once the other is done
    assert_settled(out, _names(items[:20]))


def test_a_writer_can_wait_for_the_lock(items: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:10]], str(out))
    first, second = [str(p) for p in items[10:15]], [str(p) for p in items[15:20]]
    started, release = FORK.Event(), FORK.Event()
    holder = _hold_lock_in_child(
        out, lambda: cadstore.merge(first, str(out), append=True), started, release
    )
    threading.Timer(0.5, release.set).start()
    result = cadstore.merge(second, str(out), append=True, lock_timeout=60)
    holder.join(60)
    assert holder.exitcode == 0
    assert result.total_items == 20
    assert_settled(out, _names(items[:20]))


@pytest.mark.parametrize("wait", [float("nan"), -1.0, "5"])
def test_a_wait_that_is_not_a_number_of_seconds_is_refused(
    items: list[Path], tmp_path: Path, wait: Any
) -> None:
    # NaN made a deadline never reached: a writer finding the lock taken waited forever.
    out = tmp_path / "parts.dataset"
    with pytest.raises(ValueError, match=r"lock_timeout must be a number of seconds >= 0"):
        cadstore.merge([str(p) for p in items[:2]], str(out), lock_timeout=wait)
    with pytest.raises(ValueError, match=r"lock_timeout must be a number of seconds >= 0"):
        cadstore.merge([str(p) for p in items[:2]], str(out), append=True, lock_timeout=wait)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items"]
    cadstore.merge([str(p) for p in items[:2]], str(out))
    with pytest.raises(ValueError, match=r"timeout must be a number of seconds >= 0"):
        lifecycle.repair(str(out), timeout=wait)


def test_merge_refuses_a_negative_number_of_workers(items: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "parts.dataset"
    with pytest.raises(ValueError, match=r"workers must be None or an int >= 0, got -2"):
        cadstore.merge([str(p) for p in items[:2]], str(out), workers=-2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items"]


def test_a_split_is_a_writer_too(items: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:10]], str(out))
    loader = DatasetLoader(flow_output_file=str(tmp_path / "parts.flow"))
    started, release = FORK.Event(), FORK.Event()
    holder = _hold_lock_in_child(
        out,
        lambda: cadstore.merge([str(p) for p in items[10:12]], str(out), append=True),
        started,
        release,
    )
    before = (tmp_path / "parts.infoset").read_bytes()
    with pytest.raises(DatasetLockedError, match="append"):
        loader.split(key="random", train=0.6, validation=0.2, test=0.2, random_state=0)
    assert (tmp_path / "parts.infoset").read_bytes() == before
    release.set()
    holder.join(60)
    # The split now starts from the new version's infoset: the 2 new items get none, and
    # the next append keeps the split of the others.
    loader.split(key="random", train=0.6, validation=0.2, test=0.2, random_state=0)
    loader.close_resources()
    subsets = pd.read_parquet(tmp_path / "parts.infoset").set_index("name")["subset"]
    assert stamp_of_table(tmp_path / "parts.infoset") == commit_of(out)["id"]
    assert (subsets[_names(items[10:12])] == "N/A").all()
    recorded = subsets[_names(items[:10])]
    assert set(recorded) == {"train", "validation", "test"}
    cadstore.merge([str(p) for p in items[12:14]], str(out), append=True)
    kept = pd.read_parquet(tmp_path / "parts.infoset").set_index("name")["subset"]
    pd.testing.assert_series_equal(kept[_names(items[:10])], recorded)


def test_a_split_of_a_loader_opened_before_a_merge_over_its_dataset_is_not_recorded(
    items: list[Path], tmp_path: Path
) -> None:
    """A loader opened on one version, split after a merge with overwrite replaced it,
    recorded the split it computed on the old items under the codes of the new ones:
    the infoset of the new version carried a split that was never made on its items
    (stratified on labels it does not have). It is now refused, and nothing recorded."""
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:10]], str(out))
    with DatasetLoader(flow_output_file=str(tmp_path / "parts.flow")) as loader:
        cadstore.merge([str(p) for p in items[10:20]], str(out), overwrite=True)
        before = (tmp_path / "parts.infoset").read_bytes()
        with pytest.raises(StorageError, match=r"replaced by another version.*not recorded"):
            loader.split(key="random", train=0.6, validation=0.2, test=0.2, random_state=0)
        assert (tmp_path / "parts.infoset").read_bytes() == before
    with DatasetLoader(flow_output_file=str(tmp_path / "parts.flow")) as fresh:
        assert sum(fresh.split("random", train=0.6, validation=0.2, test=0.2)) == 10
    subsets = pd.read_parquet(tmp_path / "parts.infoset").set_index("name")["subset"]
    assert set(subsets[_names(items[10:20])]) == {"train", "validation", "test"}


# ---------------------------------------------------------------------------- temporaries
def test_temporaries_of_dead_writers_are_swept(items: list[Path], tmp_path: Path) -> None:
    """Finding 5: a killed merge left a dataset-sized temporary no later run removed."""
    out = tmp_path / "parts.dataset"
    inputs = [str(p) for p in items[:6]]
    run_killed(lambda: cadstore.merge(inputs, str(out)), "writing")
    left = [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert left  # what the killed writer was staging
    # Another writer's live temporary in the same folder is left alone.
    live = Path(publish.temporary_name(str(tmp_path)))
    live.write_bytes(b"being written")
    with pytest.warns(CadstoreWarning, match="rolled back"):
        cadstore.merge(inputs, str(out))
    assert [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)] == [live]


def test_repair_says_which_temporaries_it_removed(
    items: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """repair removed the temporaries of dead writers and said nothing of it ("nothing
    to repair"), though its docstring promised to say so. It says how many and names
    the first few; a live writer's temporary stays, unnamed."""
    from cadstore.cli import main

    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:4]], str(out))
    old = time.time() - 10 * 3600
    dead = sorted(tmp_path / f"{TEMP_PREFIX}123-otherhst-{n}" for n in "abcde")
    for path in dead:
        path.write_bytes(b"x")
        os.utime(path, (old, old))
    live = Path(publish.temporary_name(str(tmp_path)))
    live.write_bytes(b"being written")
    assert main(["repair", str(out)]) == 0
    shown = ", ".join(p.name for p in dead[:3])
    assert capsys.readouterr().out == (
        f"removed 5 temporary files of writers that are gone from {tmp_path}: {shown} and 2 more\n"
    )
    assert [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)] == [live]
    dead[0].write_bytes(b"x")
    os.utime(dead[0], (old, old))
    assert lifecycle.repair(out) == [
        f"removed 1 temporary file of writers that are gone from {tmp_path}: {dead[0].name}"
    ]
    assert lifecycle.repair(out) == []
    live.unlink()
    assert_settled(out, _names(items[:4]))


def test_a_merge_sweeps_dead_temporaries_without_a_word(items: list[Path], tmp_path: Path) -> None:
    """Every merge and append recovers first (Transaction), so once recovery named the
    temporaries it swept, a new merge into a folder holding another writer's dead
    temporary warned, listed it in ``recovered`` (documented as what was done of this
    dataset's interrupted writer) and wrote it into its manifest. The sweep is said by
    ``repair`` only; the merge still removes the file."""
    import json
    import warnings

    old = time.time() - 10 * 3600
    dead = tmp_path / f"{TEMP_PREFIX}123-otherhst-a"
    dead.write_bytes(b"x")
    os.utime(dead, (old, old))
    out = tmp_path / "parts.dataset"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cadstore.merge([str(p) for p in items[:3]], str(out))
    assert result.recovered == []
    assert [str(w.message) for w in caught] == []
    assert not dead.exists()
    assert json.loads((tmp_path / "parts.flow").read_text()).get("recovered", []) == []
    assert_settled(out, _names(items[:3]))


# ---------------------------------------------------------------------------- full disk
class _FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, fh: Any, room: list[int]) -> None:
        self._fh = fh
        self._room = room

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self._room[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room[0] -= size
        return int(self._fh.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """After this, files cadstore publishes hold at most ``room[0]`` more bytes."""
    room = [0]
    real = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        return _FullDisk(real(fd, *args, **kwargs), room)

    monkeypatch.setattr(publish.os, "fdopen", fdopen)
    return room


def test_a_full_disk_names_the_file_and_loses_nothing(
    items: list[Path], tmp_path: Path, full_disk: list[int]
) -> None:
    """Finding 7: a bare ``OSError: [Errno 28]`` named no path."""
    out = tmp_path / "parts.dataset"
    full_disk[0] = 10**9
    cadstore.merge([str(p) for p in items[:6]], str(out))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for room in (0, 20_000, 200_000):  # at once, and part-way through the dataset
        full_disk[0] = room
        with pytest.raises(StorageError) as failed:
            cadstore.merge([str(p) for p in items[6:10]], str(out), append=True)
        assert failed.value.errno == errno.ENOSPC
        assert str(out) in str(failed.value) and "no space left on device" in str(failed.value)
        after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        assert after == before  # nothing published changed, no temporary left
    full_disk[0] = 10**9
    cadstore.merge([str(p) for p in items[6:10]], str(out), append=True)
    assert_settled(out, _names(items[:10]))


def test_a_full_disk_while_publishing_an_item_names_it(
    tmp_path: Path, full_disk: list[int]
) -> None:
    storage = cadstore.OptStorage(tmp_path / "part.zarr")
    storage.save_data("face_areas", np.arange(1000, dtype=np.float64))
    with pytest.raises(StorageError) as failed:
        storage.compress_store()
    assert failed.value.errno == errno.ENOSPC
    assert "part.zarr.data" in str(failed.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


# ---------------------------------------------------------------------------- merges
def test_a_killed_merge_followed_by_an_append_is_consistent(
    items: list[Path], tmp_path: Path
) -> None:
    """Finding 4: following the hint "append to it" wrote a manifest naming a missing
    .infoset."""
    out = tmp_path / "parts.dataset"
    run_killed(lambda: cadstore.merge([str(p) for p in items[:8]], str(out)), "committed")
    assert not (tmp_path / "parts.infoset").exists()
    with pytest.warns(CadstoreWarning, match="rolled forward"):
        cadstore.merge([str(p) for p in items[6:12]], str(out), append=True)
    assert_settled(out, _names(items[:12]))
    flow = json.loads((tmp_path / "parts.flow").read_text())
    assert (tmp_path / flow["flow_info"]).is_file()


def test_a_merge_of_other_items_over_a_committed_one_still_refuses(
    items: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "parts.dataset"
    run_killed(lambda: cadstore.merge([str(p) for p in items[:8]], str(out)), "committed")
    before = out.read_bytes()
    with (
        pytest.warns(CadstoreWarning, match="rolled forward"),
        pytest.raises(MergeError, match="already exists"),
    ):
        cadstore.merge([str(p) for p in items[:9]], str(out))
    assert out.read_bytes() == before
    assert_settled(out, _names(items[:8]))


def test_a_lock_left_by_a_dead_process_is_not_in_the_way(items: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:4]], str(out))
    run_killed(
        lambda: cadstore.merge([str(p) for p in items[4:6]], str(out), append=True), "locked"
    )
    record = json.loads(Path(f"{out}.lock").read_text())
    assert record["operation"] == "append" and record["pid"] != os.getpid()
    # lock_timeout is 0: the dead owner's lock is taken at once, or this would raise.
    with pytest.warns(CadstoreWarning, match="rolled back"):
        cadstore.merge([str(p) for p in items[4:6]], str(out), append=True)
    assert_settled(out, _names(items[:6]))


def test_a_hostile_commit_record_cannot_make_a_writer_publish_outside(
    items: list[Path], tmp_path: Path
) -> None:
    """A commit record lists the copies to publish again: only plain names count."""
    out = tmp_path / "in" / "parts.dataset"
    victim = tmp_path / "victim.infoset"
    victim.write_bytes(b"precious")
    merge_items([str(p) for p in items[:4]], out, directory=True)
    record = json.loads((out / COMMIT_MEMBER).read_text())
    record["published"] = {"infoset": "../victim.infoset", "flow": "/tmp/x.flow"}
    (out / COMMIT_MEMBER).write_text(json.dumps(record))
    assert lifecycle.repair(cadstore.io.resolve(str(out))) == []
    assert victim.read_bytes() == b"precious"
    (out / COMMIT_MEMBER).write_text("[" * 100_000)
    with DatasetReader(out) as reader, pytest.raises(CorruptStoreError, match=r"commit\.json"):
        lifecycle.read_commit(reader)


def test_repair_says_a_damaged_copy_was_damaged(items: list[Path], tmp_path: Path) -> None:
    """Found by review: a copy that does not read (a damaged table or manifest) was
    published again with ``rolled forward: they were out of date``, sending the user after
    a version mix-up that never was. It says the copy was damaged, and why; a copy of
    another version beside it is still out of date. The copies are then the dataset's."""
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:4]], str(out))
    infoset = tmp_path / "parts.infoset"
    infoset.write_bytes(b"PAR1 not really PAR1")
    done = lifecycle.repair(cadstore.io.resolve(str(out)))
    assert len(done) == 1, done
    assert "out of date" not in done[0]
    assert "rolled forward: parts.infoset was damaged (not a readable Parquet table" in done[0]
    assert "parts.infoset published again" in done[0]
    manifest = tmp_path / "parts.flow"
    manifest.write_text('{"commit": "another version"}')
    infoset.write_bytes(infoset.read_bytes()[:-1])
    said = " ".join(lifecycle.repair(cadstore.io.resolve(str(out))))
    assert "parts.flow was out of date" in said and "parts.infoset was damaged" in said
    assert lifecycle.repair(cadstore.io.resolve(str(out))) == []
    assert_settled(out, _names(items[:4]))


def test_cadstore_repair_on_the_command_line(
    items: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cadstore.cli import main

    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:6]], str(out))
    more = [str(p) for p in items[6:9]]
    run_killed(lambda: cadstore.merge(more, str(out), append=True), "infoset")
    assert main(["repair", str(tmp_path / "parts.flow")]) == 0
    said = capsys.readouterr().out
    assert "rolled forward" in said and "parts.attribset" in said and "parts.flow" in said
    assert main(["repair", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: nothing to repair"
    assert_settled(out, _names(items[:9]))


def _not_a_dataset(tmp_path: Path, kind: str) -> Path:
    """A path named like a dataset that is not one."""
    path = tmp_path / "parts.dataset"
    if kind == "missing parent":
        return tmp_path / "typo" / "sub" / "parts.dataset"
    if kind == "truncated zip":
        path.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    elif kind == "empty file":
        path.write_bytes(b"")
    elif kind == "text file":
        path.write_text("not a zip\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "plain directory":
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    elif kind == "symlink loop":
        path.symlink_to(path.name)
    return path


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("missing", "no such dataset"),
        ("missing parent", "no such dataset"),
        ("truncated zip", "not a readable zip file"),
        ("empty file", "not a readable zip file"),
        ("text file", "not a readable zip file"),
        ("fifo", "not a regular file or directory"),
        ("plain directory", "not a Zarr store"),
        ("symlink loop", "symbolic links"),
    ],
)
def test_repair_of_something_not_a_dataset_is_an_error_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, problem: str
) -> None:
    """repair said "nothing to repair" (exit 0) for a path that is no dataset, and took
    the lock of a mistyped path, creating its missing folders."""
    from cadstore.cli import main

    path = _not_a_dataset(tmp_path, kind)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(CorruptStoreError, match=problem) as caught:
        lifecycle.repair(path)
    assert str(path) in str(caught.value)
    assert main(["repair", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{path}: " in captured.err and problem in captured.err
    assert "nothing to repair" not in captured.err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_repair_of_a_killed_first_merge_without_its_dataset(
    items: list[Path], tmp_path: Path
) -> None:
    """A first merge killed before its commit leaves a lock and no dataset: repair rolls
    it back, and is no error then."""
    out = tmp_path / "out" / "parts.dataset"
    run_killed(lambda: cadstore.merge([str(p) for p in items[:4]], str(out)), "staged")
    assert not out.exists()
    done = lifecycle.repair(out)
    assert len(done) == 1 and done[0].startswith("rolled back")
    assert [p.name for p in out.parent.iterdir()] == []
    with pytest.raises(CorruptStoreError, match="no such dataset"):
        lifecycle.repair(out)


@pytest.mark.parametrize("via", ["api", "cli"])
def test_repair_never_takes_a_lock_it_cannot_look_up_for_none(
    items: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    via: str,
) -> None:
    """A first merge killed before its commit leaves a lock and no dataset; an EIO looking
    the lock up (its ``stat``): repair took it for no writer's (``exists()`` said
    ``False``) and refused the missing dataset, "no such dataset", a killed writer's
    staged version and journal beside it unsaid. It is now the StorageError naming the
    lock; nothing is done (the lock and what was staged unchanged), and the next repair,
    the disk reading again, rolls the merge back."""
    from conftest import refuse_opening

    out = tmp_path / "out" / "parts.dataset"
    run_killed(lambda: cadstore.merge([str(p) for p in items[:4]], str(out)), "staged")
    lock = Path(f"{out}.lock")
    (staged,) = [p for p in out.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert not out.exists() and lock.name in before and staged.name in before
    capsys.readouterr()
    with monkeypatch.context() as patch:
        refuse_opening(patch, lock, "stat", errno.EIO)
        if via == "cli":
            from cadstore.cli import main

            assert main(["repair", str(out)]) == 2
            said = capsys.readouterr()
            assert said.out == ""
            message = said.err.removeprefix("cadstore: error: ")
        else:
            with pytest.raises(StorageError) as caught:
                lifecycle.repair(out)
            assert type(caught.value) is StorageError and caught.value.path == str(lock)
            message = str(caught.value) + "\n"
    assert message == (
        f"{lock}: looking up the writer's lock (nothing was done): input/output error\n"
    )
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before
    done = lifecycle.repair(out)
    assert len(done) == 1 and done[0].startswith("rolled back")
    assert [p.name for p in out.parent.iterdir()] == []


def test_a_failed_merge_leaves_no_folder_it_made(items: list[Path], tmp_path: Path) -> None:
    """The writer's lock sits beside the dataset, so taking it made the output's folders;
    a merge that failed (no readable item) left them behind, empty. The folders the lock
    made are removed with it when nothing was published there; folders that were there
    before, and those a published dataset lives in, stay."""
    with pytest.raises(MergeError, match=r"no readable item"):
        cadstore.merge([str(tmp_path / "missing.data")], str(tmp_path / "new" / "sub" / "p"))
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(MergeError, match=r"no readable item"):
        cadstore.merge([str(tmp_path / "missing.data")], str(tmp_path / "kept" / "p"))
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())
    result = cadstore.merge(
        [str(p) for p in items[:3]], str(tmp_path / "made" / "sub" / "p.dataset")
    )
    assert Path(result.path).is_file() and Path(result.path).parent == tmp_path / "made" / "sub"
    assert sorted(os.listdir(tmp_path / "made" / "sub")) == [
        f"p.{kind}" for kind in ("attribset", "dataset", "flow", "infoset")
    ]


_TAKE_LOCK = """
import sys
from cadstore.errors import CadstoreError
from cadstore.io.location import resolve
from cadstore.io.lock import WriterLock

try:
    WriterLock(resolve(sys.argv[1]), "merge").acquire()
except CadstoreError as exc:
    print(type(exc).__name__, exc)
else:
    print("acquired")
"""


@pytest.mark.parametrize("dangling", ["folder", "lock"])
def test_a_lock_beside_a_link_to_a_missing_folder_is_an_error_not_a_hang(
    tmp_path: Path, dangling: str
) -> None:
    """Since the lock removes the folders it made (02a65e8), it made them itself and
    opened its file again whenever the file's folder was missing: where the dataset's
    folder, or the lock path, is a link to a missing folder (a drive not mounted), the
    folder could never be made and the open never succeeded, and the writer spun at full
    speed for ever (it was a FileExistsError or FileNotFoundError before). It is now a
    cadstore error naming the path."""
    (tmp_path / "parts").symlink_to(tmp_path / "unmounted" / "parts")
    if dangling == "folder":
        dataset, expected = tmp_path / "parts" / "p.dataset", "OutputExistsError"
    else:
        (tmp_path / "p.dataset.lock").symlink_to(tmp_path / "parts" / "p.dataset.lock")
        dataset, expected = tmp_path / "p.dataset", "StorageError"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", _TAKE_LOCK, str(dataset)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(expected), done.stdout
    assert str(tmp_path / "parts") in done.stdout or str(tmp_path / "p.dataset") in done.stdout
    assert not (tmp_path / "unmounted").exists()


def test_a_lock_in_a_folder_it_cannot_look_up_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock made its dataset's missing folders while ``os.path.isdir`` said
    ``False``, which it says on an EIO: a folder the disk failed to look up was made
    again, and the mkdir's EEXIST was reported as a file in the way ("is not a folder (a
    file, or a link to a missing folder)", OutputExistsError). It is now the StorageError
    naming the folder and the lock; nothing is created and the folder is unchanged."""
    from conftest import refuse_opening

    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "mine.txt").write_text("kept")
    lock = lock_module.WriterLock(cadstore.io.resolve(str(folder / "p.dataset")), "merge")
    with monkeypatch.context() as patch:
        refuse_opening(patch, folder, "stat", errno.EIO)
        with pytest.raises(StorageError) as caught:
            lock.acquire()
    assert type(caught.value) is StorageError
    assert str(caught.value) == (
        f"{folder}: looking up the folder of the lock p.dataset.lock: input/output error"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["parts"]
    assert [p.name for p in folder.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize(
    ("step", "via", "point"),
    [("open", "api", "writing"), ("read", "cli", "writing"), ("open", "api", "staged")],
)
def test_repair_of_a_dataset_that_cannot_be_read_still_rolls_back_and_sweeps(
    items: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    step: str,
    via: str,
    point: str,
) -> None:
    """An EIO reading the dataset while recovering: the StorageError was raised before
    the rollback already done was reported (the killed writer's lock record, which said
    what it was, is gone once the lock is released) and before the dead writers'
    temporaries were swept. Now they are swept, and the error names the dataset and says
    what was rolled back (a writer killed while committing may have committed: only its
    staged files are said removed); the committed version is intact."""
    from conftest import refuse_opening

    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:6]], str(out))
    before = out.read_bytes()
    more = [str(p) for p in items[6:9]]
    run_killed(lambda: cadstore.merge(more, str(out), append=True), point)
    foreign = _dead_temporary(tmp_path)
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]) == 2
    capsys.readouterr()
    refuse_opening(monkeypatch, out, step, errno.EIO)
    message = _failed_repair(via, out, cadstore.io.resolve(str(out)), capsys)
    monkeypatch.undo()
    assert f"{out}: " in message and ": input/output error; before this, recovery did: " in message
    if point == "writing":
        assert "rolled back: an append by pid" in message and "before its commit" in message
    else:
        assert "recovery did: an append by pid" in message
        assert (
            "was interrupted while committing or after; what it had staged was removed, "
            "and the dataset could not be read to tell which version is in place"
        ) in message
    assert message.rstrip().endswith(
        f"; removed 1 temporary file of writers that are gone from {tmp_path}: {foreign.name}"
    )
    assert [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)] == []
    assert out.read_bytes() == before
    assert lifecycle.repair(cadstore.io.resolve(str(out))) == []
    assert_settled(out, _names(items[:6]))


@pytest.mark.parametrize(("step", "via"), [("open", "api"), ("read", "cli"), ("stat", "api")])
def test_repair_without_a_lock_of_a_dataset_that_cannot_be_read_still_sweeps(
    items: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    step: str,
    via: str,
) -> None:
    """No writer's lock beside the dataset, and an EIO reading it: repair's check that the
    path is a dataset, made before taking the lock, failed, so the dead writers'
    temporaries were not swept (recover sweeps them when the dataset does not read). The
    dataset is there, so the lock is taken and they are swept; the StorageError names the
    dataset and ends with the sweep, as recover's does. Nothing committed changes, and no
    lock is left."""
    from conftest import refuse_opening

    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:6]], str(out))
    before = out.read_bytes()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / f"{TEMP_PREFIX}{dead.pid}-{publish.HOST_TAG}-dead"
    mine.write_bytes(b"half a table")
    foreign = _dead_temporary(tmp_path)
    assert not Path(f"{out}.lock").exists()
    capsys.readouterr()
    refuse_opening(monkeypatch, out, step, errno.EIO)
    message = _failed_repair(via, out, out, capsys)
    monkeypatch.undo()
    assert f"{out}: " in message and ": input/output error; before this, recovery did: " in message
    swept = ", ".join(sorted([mine.name, foreign.name]))
    assert message.rstrip().endswith(
        f"recovery did: removed 2 temporary files of writers that are gone from {tmp_path}: {swept}"
    )
    assert [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)] == []
    assert out.read_bytes() == before
    assert lifecycle.repair(out) == []
    assert_settled(out, _names(items[:6]))


@pytest.mark.parametrize("step", ["open", "stat"])
def test_repair_of_a_dataset_that_cannot_be_read_refuses_while_a_live_writer_holds_it(
    items: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """No lock beside the dataset when repair looks for one, an EIO reading the dataset,
    and a writer taking the lock meanwhile: repair raised the dataset's EIO, as for a
    lock that cannot be taken, where a live writer's lock must win. It is the
    DatasetLockedError naming the dataset and the writer; repair changes nothing (no
    temporary swept, the dataset as it was) and the writer finishes."""
    from conftest import refuse_opening

    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:4]], str(out))
    before = out.read_bytes()
    foreign = _dead_temporary(tmp_path)
    started, release = FORK.Event(), FORK.Event()
    holders: list[Any] = []
    check = lifecycle._check_dataset

    def writer_starts_meanwhile(dataset: Any) -> None:
        if not holders:
            more = [str(p) for p in items[4:6]]
            holders.append(
                _hold_lock_in_child(
                    out, lambda: cadstore.merge(more, str(out), append=True), started, release
                )
            )
            refuse_opening(monkeypatch, out, step, errno.EIO)  # in this process only
        check(dataset)

    monkeypatch.setattr(lifecycle, "_check_dataset", writer_starts_meanwhile)
    try:
        with pytest.raises(DatasetLockedError) as refused:
            lifecycle.repair(out)
        monkeypatch.undo()
        (holder,) = holders
        message = str(refused.value)
        assert refused.value.path == str(out) and f"pid {holder.pid}" in message, message
        assert foreign.exists() and out.read_bytes() == before  # before the writer goes on
    finally:
        monkeypatch.undo()
        release.set()
    holder.join(60)
    assert holder.exitcode == 0
    assert_settled(out, _names(items[:6]))


@pytest.mark.parametrize("killed", [True, False])
def test_repair_of_a_dataset_whose_metadata_cannot_be_read_after_recovery_says_what_it_did(
    items: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed: bool
) -> None:
    """A directory dataset whose commit record reads but whose root ``zarr.json`` does not
    (an EIO), with or without a killed writer's lock beside it: recovery rolls the writer
    back and sweeps, then the check that the dataset reads fails. That was a bare OSError
    naming no file (the directory store's), and without a lock it came from the check
    made before the lock, so nothing was swept. It is a StorageError naming the dataset
    that ends with what recovery did, which the lock's journal, gone with the lock, alone
    said, as recover's own errors do."""

    out = tmp_path / "parts.dataset"
    merge_items([str(p) for p in items[:6]], out, directory=True)
    more = [str(p) for p in items[6:9]]
    if killed:
        run_killed(lambda: cadstore.merge(more, str(out), append=True), "writing")
    assert Path(f"{out}.lock").exists() == killed
    foreign = _dead_temporary(tmp_path)
    root = out / "zarr.json"
    before = root.read_bytes()
    _open_fails(monkeypatch, root)
    with pytest.raises(StorageError) as caught:
        lifecycle.repair(out)
    monkeypatch.undo()
    assert type(caught.value) is StorageError and caught.value.path == str(out)
    message = str(caught.value)
    assert message.startswith(
        f"{out}: reading 'zarr.json': input/output error; before this, recovery did: "
    )
    assert ("recovery did: rolled back: an append by pid" in message) == killed
    assert message.endswith(
        f"{'; ' if killed else ': '}removed 1 temporary file of writers that are gone from "
        f"{tmp_path}: {foreign.name}"
    )
    assert not foreign.exists() and root.read_bytes() == before
    assert not Path(f"{out}.lock").exists()
    assert lifecycle.repair(out) == []
    assert seen_by_a_reader(out) == _names(items[:6])


@pytest.mark.parametrize("member", ["commit.json", "infoset.parquet"])
def test_repair_of_a_directory_dataset_whose_record_cannot_be_read_says_what_it_did(
    items: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member: str
) -> None:
    """A directory dataset whose commit record, or a table it carries, gives an EIO while
    recovery reads it to roll forward. The directory store let the OSError escape bare,
    naming no file, past recover's handling of a StorageError: what recovery had done
    (the killed writer's rollback, the sweep) was said nowhere. It is a StorageError
    naming the dataset and the member, ending with what was done."""
    out = tmp_path / "parts.dataset"
    merge_items([str(p) for p in items[:6]], out, directory=True)
    more = [str(p) for p in items[6:9]]
    point = "writing" if member == "commit.json" else "committed"
    run_killed(lambda: cadstore.merge(more, str(out), append=True), point)
    foreign = _dead_temporary(tmp_path)
    target = out / member
    before = target.read_bytes()
    _open_fails(monkeypatch, target)
    with pytest.raises(StorageError) as caught:
        lifecycle.repair(out)
    monkeypatch.undo()
    assert caught.value.path == str(out)
    message = str(caught.value)
    assert message.startswith(f"{out}: reading {member!r}: input/output error; before this")
    assert "an append by pid" in message
    assert message.endswith(
        f"; removed 1 temporary file of writers that are gone from {tmp_path}: {foreign.name}"
    )
    assert not foreign.exists() and target.read_bytes() == before
    assert not Path(f"{out}.lock").exists()


def test_repair_cannot_tell_a_dataset_it_cannot_look_up_from_none(
    items: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An EIO looking the dataset up (its ``stat``) beside the lock of an append killed
    while committing: the dataset was taken for missing, so repair succeeded saying the
    append "was interrupted before its commit ... the dataset is the version it started
    from", which it could not know. It is now the StorageError naming the dataset, saying
    what was removed and that the version in place is unknown; nothing committed
    changes, and the next repair, the disk reading again, finds it settled."""
    from conftest import refuse_opening

    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:6]], str(out))
    more = [str(p) for p in items[6:9]]
    run_killed(lambda: cadstore.merge(more, str(out), append=True), "staged")
    before = out.read_bytes()
    refuse_opening(monkeypatch, out, "stat", errno.EIO)
    with pytest.raises(StorageError) as caught:
        lifecycle.repair(out)
    monkeypatch.undo()
    assert type(caught.value) is StorageError and caught.value.path == str(out)
    message = str(caught.value)
    assert message.startswith(f"{out}: looking it up: input/output error; before this")
    assert "before its commit" not in message
    assert (
        "was interrupted while committing or after; what it had staged was removed, "
        "and the dataset could not be read to tell which version is in place"
    ) in message
    assert out.read_bytes() == before
    lifecycle.repair(out)
    assert_settled(out, _names(items[:6]))


@pytest.mark.parametrize("via", ["api", "cli"])
def test_repair_never_moves_a_staged_version_onto_a_dataset_it_cannot_look_up(
    items: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    via: str,
) -> None:
    """A directory dataset's append killed while committing, its complete version staged,
    and an EIO looking the dataset up (its ``stat``): recover_staged took the dataset for
    missing (``os.path.exists``) and renamed the staged version onto it, which the
    version in place refused as a bare OSError (directory not empty). It is now the StorageError
    naming the dataset, saying that what was staged is left as it was; neither the
    dataset nor the staged version changes, and the next repair, the disk reading again,
    removes what was staged (the dataset is the version from before the append)."""
    from conftest import refuse_opening

    out = tmp_path / "parts.dataset"
    merge_items([str(p) for p in items[:6]], out, directory=True)
    more = [str(p) for p in items[6:9]]
    run_killed(lambda: cadstore.merge(more, str(out), append=True), "staged")
    (staged,) = [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert staged.is_dir() and Path(f"{out}.lock").exists()

    def tree(folder: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }

    before, staged_before = tree(out), tree(staged)
    capsys.readouterr()
    refuse_opening(monkeypatch, out, "stat", errno.EIO)
    message = _failed_repair(via, out, out, capsys)
    monkeypatch.undo()
    assert message.rstrip().endswith(
        f"{out}: looking it up (what a killed writer staged, {staged.name}, is left as it "
        "was): input/output error"
    ), message
    assert tree(out) == before and tree(staged) == staged_before
    done = lifecycle.repair(out)
    assert done and staged.name in done[-1] and not staged.exists()
    assert not Path(f"{out}.lock").exists()
    assert lifecycle.repair(out) == []
    assert seen_by_a_reader(out) == _names(items[:6])


def test_repair_never_says_it_removed_a_staged_version_it_cannot_look_up(
    items: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory dataset's append killed while writing, and an EIO looking up
    what it staged (its ``stat`` and ``lstat``): recover_staged asked ``os.path.isdir``
    and ``os.path.lexists``, which said ``False``, and the sweep of dead writers'
    temporaries unlinked the folder in vain: repair succeeded saying the append "had
    staged nothing" and that it removed the staged folder as a temporary, left in
    place. It is now the StorageError naming what was staged, left as it was, and the
    dataset unchanged; the next repair, the disk reading again, removes it (as a dead
    writer's temporary, the journal gone with the lock, as when the dataset cannot be
    looked up)."""
    from conftest import refuse_opening

    out = tmp_path / "parts.dataset"
    merge_items([str(p) for p in items[:6]], out, directory=True)
    more = [str(p) for p in items[6:9]]
    run_killed(lambda: cadstore.merge(more, str(out), append=True), "writing")
    (staged,) = [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert staged.is_dir()

    def tree(folder: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }

    before, staged_before = tree(out), tree(staged)
    with monkeypatch.context() as patch:
        refuse_opening(patch, staged, "stat", errno.EIO)
        refuse_opening(patch, staged, "lstat", errno.EIO)
        with pytest.raises(StorageError) as caught:
            lifecycle.repair(out)
    assert type(caught.value) is StorageError and caught.value.path == str(staged)
    assert str(caught.value) == (
        f"{staged}: looking up what a killed writer staged, to remove it (left as it was): "
        "input/output error"
    )
    assert tree(out) == before and tree(staged) == staged_before
    done = lifecycle.repair(out)
    assert done and staged.name in done[-1] and not staged.exists()
    assert not Path(f"{out}.lock").exists()
    assert lifecycle.repair(out) == []
    assert seen_by_a_reader(out) == _names(items[:6])


@pytest.mark.parametrize("append", [False, True])
def test_a_merge_never_publishes_over_a_dataset_it_cannot_look_up(
    items: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, append: bool
) -> None:
    """An EIO looking the output up (its ``stat``) was taken for "no dataset there": a
    merge without ``overwrite``, or an append that may create the dataset, merged its
    items and published them in place of the dataset, whose items were lost. It is now
    the StorageError naming the dataset; the dataset and its copies are unchanged."""
    from conftest import refuse_opening

    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:6]], str(out))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    refuse_opening(monkeypatch, out, "stat", errno.EIO)
    with pytest.raises(StorageError) as caught:
        cadstore.merge([str(p) for p in items[6:9]], str(out), append=append)
    monkeypatch.undo()
    assert caught.value.path == str(out)
    assert str(caught.value).startswith(f"{out}: looking it up: input/output error")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert_settled(out, _names(items[:6]))


def test_repair_of_a_dataset_that_cannot_be_read_nor_locked_reports_the_dataset(
    items: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset that does not read (an EIO) and whose lock cannot be taken either: the
    error is the dataset's, as before repair went on to recover it, and nothing is swept
    without the lock."""
    from conftest import refuse_opening

    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:3]], str(out))
    before = out.read_bytes()
    foreign = _dead_temporary(tmp_path)

    def refused(self: lock_module.WriterLock) -> None:
        raise StorageError(f"{out}.lock", "opening it: read-only file system")

    monkeypatch.setattr(lock_module.WriterLock, "acquire", refused)
    refuse_opening(monkeypatch, out, "open", errno.EIO)
    with pytest.raises(StorageError) as caught:
        lifecycle.repair(out)
    monkeypatch.undo()
    assert caught.value.path == str(out)
    assert str(caught.value) == f"{out}: opening it: input/output error"
    assert foreign.exists() and out.read_bytes() == before


def test_repair_that_cannot_read_a_copy_names_it_and_what_it_found(
    items: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An EIO reading a copy to roll forward escaped as a bare OSError naming no file, and
    what the killed writer had committed, which only its lock record said, was lost with
    it. Now the StorageError names the copy and says so; the next repair rolls forward."""
    from conftest import refuse_opening

    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items[:6]], str(out))
    more = [str(p) for p in items[6:9]]
    run_killed(lambda: cadstore.merge(more, str(out), append=True), "committed")
    committed = out.read_bytes()
    copy = tmp_path / "parts.infoset"
    refuse_opening(monkeypatch, copy, "open", errno.EIO)
    with pytest.raises(StorageError) as caught:
        lifecycle.repair(cadstore.io.resolve(str(out)))
    monkeypatch.undo()
    assert caught.value.path == str(copy)
    assert str(caught.value).startswith(f"{copy}: reading it: input/output error; before ")
    assert "an append by pid" in str(caught.value)
    assert "had committed version 2 (9 items) and was interrupted after it" in str(caught.value)
    assert out.read_bytes() == committed
    (done,) = lifecycle.repair(cadstore.io.resolve(str(out)))
    assert done.startswith("rolled forward: they were out of date; parts.infoset")
    assert_settled(out, _names(items[:9]))
