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
