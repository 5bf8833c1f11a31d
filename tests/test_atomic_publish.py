"""A writer killed at any moment never leaves a partial ``.data`` file visible."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadstore import OptStorage
from cadstore.io.publish import TEMP_PREFIX

# The child rewrites the same item over and over. Version k is derived from k alone, so a
# reader can tell a complete file (every array agrees with the metadata) from a torn one.
# The payload is large and incompressible so that the file takes a while to write and a
# kill often lands in the middle of a write.
CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from cadstore import OptStorage

    target, pause = sys.argv[1], sys.argv[2] == "pause"
    if pause:
        # Announce the moment the zip is half written, then stall, so that the parent's
        # kill lands inside the write of the published file.
        import time
        import cadstore.storage.opt as opt

        real = opt.write_stored_zip

        class Stalling:
            def __init__(self, fh):
                self.fh, self.written = fh, 0

            def write(self, data):
                # Write up to the 4 MB mark, then stall: the kill lands with the
                # temporary file truncated however the writer batches its writes.
                cut = max(0, 4_000_000 - self.written)
                if cut < len(data):
                    self.fh.write(data[:cut])
                    self.fh.flush()
                    print("mid-write", flush=True)
                    time.sleep(30)
                self.fh.write(data)
                self.written += len(data)

        opt.write_stored_zip = lambda fh, members, **kw: real(Stalling(fh), members, **kw)
    print("ready", flush=True)
    k = 0
    while True:
        k += 1
        s = OptStorage(target, mode="w")
        s.save_data("face_areas", np.full(20_000, k, dtype=np.float32))
        s.save_data("graph", {"edges_source": np.full(50_000, k, dtype=np.int64),
                              "num_nodes": k})
        s.save_data("noise", np.random.default_rng(k).random(2_000_000).astype(np.float32))
        s.save_metadata("version", k)
        s.compress_store()
        s.close()
    """
)


def _check(store: Path) -> int | None:
    """Return the version in the published file, or None if there is none yet."""
    data = Path(str(store) + ".data")
    if not data.exists():
        return None
    with OptStorage(store, mode="r") as storage:
        version = storage.load_metadata("version")
        assert np.all(storage.load_data("face_areas") == version)
        assert np.all(storage.load_data("graph/edges_source") == version)
        assert storage.load_data("graph/num_nodes") == version
        expected = np.random.default_rng(version).random(2_000_000).astype(np.float32)
        assert np.array_equal(storage.load_data("noise"), expected)
        return int(version)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_writer_never_leaves_a_partial_file(tmp_path: Path) -> None:
    rng = random.Random(1234)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    seen: list[int | None] = []
    for attempt in range(30):
        store = tmp_path / f"run{attempt % 3}" / "item.zarr"
        store.parent.mkdir(exist_ok=True)
        # Odd runs kill at a random moment; even runs kill in the middle of a zip write
        # (after the first item of that run was published, so an old version exists).
        pause = attempt % 2 == 0
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(store), "pause" if pause else "random"],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            if pause:
                assert proc.stdout.readline().strip() == b"mid-write"
            else:
                time.sleep(rng.uniform(0.0, 0.25))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        # The directory store and temp files may be left behind by a kill; the published
        # file must be absent or complete.
        seen.append(_check(store))
    published = [v for v in seen if v is not None]
    # Most runs got far enough to publish; every published file was complete.
    assert len(published) >= 10
    leftovers = [p.name for p in tmp_path.rglob(f"{TEMP_PREFIX}*")]
    assert all(name.startswith(TEMP_PREFIX) for name in leftovers)


def test_stale_temp_files_of_killed_writers_are_swept_once(tmp_path: Path) -> None:
    """Old temp files left by a killed writer go; a live writer's recent one stays."""
    stale = tmp_path / f"{TEMP_PREFIX}999-stale"
    stale.write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    recent = tmp_path / f"{TEMP_PREFIX}998-recent"
    recent.write_bytes(b"in progress")
    with OptStorage(tmp_path / "a.zarr", summary_dir=False) as storage:
        storage.save_data("x", np.arange(5))
        storage.compress_store()
    assert not stale.exists()
    assert recent.exists()
    # The directory is listed once per process, not on every publish: a second stale
    # file is left for the next process.
    again = tmp_path / f"{TEMP_PREFIX}997-stale"
    again.write_bytes(b"partial")
    os.utime(again, (old, old))
    with OptStorage(tmp_path / "b.zarr", summary_dir=False) as storage:
        storage.save_data("x", np.arange(5))
        storage.compress_store()
    assert again.exists()
    assert (tmp_path / "b.zarr.data").is_file() and not (tmp_path / "b.zarr").exists()


def _publish_bytes(path: Path) -> None:
    from cadstore.io.location import resolve
    from cadstore.io.publish import write_bytes_atomic

    write_bytes_atomic(resolve(str(path)), b"data")


def _publish_through_a_path(path: Path) -> None:
    from cadstore.io.location import resolve
    from cadstore.io.publish import write_through_path

    write_through_path(resolve(str(path)), lambda tmp: Path(tmp).write_bytes(b"data"))


def _save_a_schema(path: Path) -> None:
    from cadstore.schema import SchemaBuilder

    SchemaBuilder().save_to_file(path)


def _publish_an_item(path: Path) -> None:
    store = path.with_name(path.name.removesuffix(".data"))
    with OptStorage(store, summary_dir=False) as storage:
        storage.save_data("x", np.arange(5))
        storage.compress_store()


@pytest.mark.parametrize(
    "publish", [_publish_bytes, _publish_through_a_path, _save_a_schema, _publish_an_item]
)
def test_a_folder_where_a_file_is_published_is_refused_naming_it(
    tmp_path: Path, publish: Any
) -> None:
    """Every writer publishing through cadstore.io.publish raised a bare IsADirectoryError
    whose message named the temporary file first, after writing it in full. Now an
    OutputExistsError naming the destination, before anything is written; the folder is
    left as it was and no temporary file beside it."""
    from cadstore.errors import OutputExistsError

    folder = tmp_path / "out.zarr.data"
    folder.mkdir()
    (folder / "mine.txt").write_text("kept")
    before = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(OutputExistsError, match=r"out\.zarr\.data: is a directory") as raised:
        publish(folder)
    assert str(folder) in str(raised.value) and TEMP_PREFIX not in str(raised.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert {p.name for p in tmp_path.iterdir()} >= before
    assert [p.name for p in folder.iterdir()] == ["mine.txt"]
    assert (folder / "mine.txt").read_text() == "kept"


def test_a_folder_made_during_the_write_is_refused_and_a_link_to_one_replaced(
    tmp_path: Path,
) -> None:
    from cadstore.errors import OutputExistsError
    from cadstore.io.location import resolve
    from cadstore.io.publish import write_atomic

    target = tmp_path / "late.bin"

    def writer(fh: Any) -> None:
        target.mkdir()  # another process makes a folder there while the file is written
        fh.write(b"data")

    with pytest.raises(OutputExistsError, match=r"late\.bin: is a directory"):
        write_atomic(resolve(str(target)), writer)
    assert target.is_dir() and not list(target.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]

    # A link to a folder is replaced by the file, as a rename does; the folder stays.
    kept = tmp_path / "kept"
    kept.mkdir()
    link = tmp_path / "link.bin"
    link.symlink_to(kept, target_is_directory=True)
    write_atomic(resolve(str(link)), lambda fh: fh.write(b"data"))
    assert not link.is_symlink() and link.read_bytes() == b"data" and kept.is_dir()


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _fail_lookups(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """An EIO for every lookup of ``path`` (``os.stat`` and ``os.lstat``), as a failing
    disk gives: ``os.path.exists`` and ``os.path.lexists`` then say it is not there."""
    import errno

    from conftest import refuse_opening

    refuse_opening(monkeypatch, path, "stat", errno.EIO)
    refuse_opening(monkeypatch, path, "lstat", errno.EIO)


@pytest.mark.parametrize("kind", ["directory", "zip"])
def test_a_sink_never_publishes_over_a_path_it_cannot_look_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A sink's commit looked its destination up with ``os.path.lexists`` (a directory
    sink) or ``os.path.isdir`` (a zip sink), which say ``False`` on an EIO: the new version
    was renamed onto the directory dataset there as onto nothing, which refused it as a
    bare OSError (directory not empty; is a directory). It is now the StorageError naming
    the destination, saying nothing was published; the dataset there is unchanged, and
    the sink's abort leaves no temporary."""
    from cadstore.errors import StorageError
    from cadstore.io.location import resolve
    from cadstore.io.publish import DirectorySink, ZipSink

    out = tmp_path / "parts.dataset"
    (out / "face" / "c").mkdir(parents=True)
    (out / "zarr.json").write_bytes(b'{"old": 1}')
    (out / "face" / "c" / "0").write_bytes(b"old shard")
    before = _tree(out)
    sink = (DirectorySink if kind == "directory" else ZipSink)(resolve(str(out)))
    sink.add("zarr.json", b'{"new": 1}')
    sink.add("face/c/0", b"new shard")
    with monkeypatch.context() as patch:
        _fail_lookups(patch, out)
        with pytest.raises(StorageError) as raised:
            sink.commit()
    sink.abort()
    assert str(raised.value) == (
        f"{out}: looking it up to put the new version in place (nothing was published): "
        "input/output error"
    )
    assert _tree(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["parts.dataset"]


def test_a_folder_moved_into_place_is_never_moved_over_a_path_it_cannot_look_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """move_into_place asked ``os.path.islink`` whether its destination was a link, which
    says ``False`` on an EIO: it swapped the new folder with a destination it could not
    look up. It is now the StorageError naming the destination; the destination and the
    new folder (the caller's to remove) are unchanged."""
    from cadstore.errors import StorageError
    from cadstore.io.publish import move_into_place, staging_name

    out = tmp_path / "store"
    out.mkdir()
    (out / "a.json").write_text("old")
    scratch = Path(staging_name(str(out), "-test"))
    scratch.mkdir()
    (scratch / "a.json").write_text("new")
    with monkeypatch.context() as patch:
        _fail_lookups(patch, out)
        with pytest.raises(StorageError) as raised:
            move_into_place(str(scratch), str(out), ["a.json"])
    assert str(raised.value).startswith(f"{out}: looking it up") and "input/output error" in str(
        raised.value
    )
    assert _tree(out) == {"a.json": b"old"} and _tree(scratch) == {"a.json": b"new"}


def test_export_json_never_replaces_a_store_it_cannot_look_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cadstore export-json --overwrite`` onto a JSON store the disk fails to look up
    (an EIO): recover_interrupted_move (``os.path.lexists``) and the output's check took
    it for missing, and the rename of the new store onto it failed as "another writer
    changed it while this one was writing". It is now the StorageError naming the store
    (exit 2, one line); the store is unchanged and no temporary is left."""
    from cadstore import JsonStorageHandler
    from cadstore.cli import main

    item = tmp_path / "part.zarr.data"
    _publish_an_item(item)
    out = tmp_path / "store"
    with JsonStorageHandler(out) as storage:
        storage.save_data("x", np.arange(3))
    before = _tree(out)
    capsys.readouterr()
    with monkeypatch.context() as patch:
        _fail_lookups(patch, out)
        code = main(["export-json", str(item), "-o", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == f"cadstore: error: {out}: looking it up: input/output error\n", err
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.zarr.data", "store"]


def test_an_output_below_a_folder_it_cannot_look_up_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check_output_folder walked up the output's folders while ``os.path.lexists`` said
    ``False``, which it says on an EIO: a folder the disk failed to look up was taken for
    one to make, and the check passed (the write met the failure later, as another
    error). It is now the StorageError naming that folder and the output; nothing is
    made. A file, or a link to a missing folder, in the way is still refused as before,
    and a link to a folder accepted."""
    from cadstore.errors import OutputExistsError, StorageError
    from cadstore.io.location import resolve
    from cadstore.io.publish import check_output_folder

    notes = tmp_path / "notes"
    notes.write_text("mine")
    output = notes / "deep" / "x.dataset"
    with monkeypatch.context() as patch:
        _fail_lookups(patch, notes)
        with pytest.raises(StorageError) as raised:
            check_output_folder(resolve(str(output)))
    assert str(raised.value) == (f"{notes}: looking up the folder of {output}: input/output error")
    assert notes.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["notes"]
    with pytest.raises(OutputExistsError, match=f"{notes} is a file, not a folder"):
        check_output_folder(resolve(str(output)))
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone", target_is_directory=True)
    with pytest.raises(OutputExistsError, match="is a link to a missing folder"):
        check_output_folder(resolve(str(dangling / "x.dataset")))
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real").mkdir()
    check_output_folder(resolve(str(linked / "new" / "x.dataset")))
