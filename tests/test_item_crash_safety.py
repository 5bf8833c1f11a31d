"""Items survive crashes, stay proportional to their input, open in linear time, and
same-name writers either succeed or get one clear error (cadstore issue 16: findings 6,
11a, 11b and 14a).

A crash is simulated here at every step of a write: :class:`FileSystemKill` lets the first
``n`` changes to the file system through and raises :class:`SimulatedKill` from every
later one, cleanup handlers included, as if the process had died at that point. The slow
harness in ``test_item_kill_harness.py`` kills real processes.
"""

from __future__ import annotations

import builtins
import errno
import multiprocessing
import os
import traceback
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from cadstore import OptStorage
from cadstore.errors import CadstoreError, CorruptStoreError, LimitExceededError, StorageError
from cadstore.io.publish import TEMP_PREFIX
from cadstore.io.sources import ZipSource

# ---------------------------------------------------------------------------- helpers


class SimulatedKill(BaseException):
    """Raised where the simulated process died: no ``except Exception`` catches it."""


class FileSystemKill:
    """Let ``budget`` file-system changes through, then fail every later one.

    Changes are file creation and opening for writing, renames, links, removals and
    directory creation, all through the ``os`` module and ``open``: what any writer of
    cadstore's does, however it is built. Reads pass.
    """

    _OS_CALLS = ("replace", "rename", "link", "unlink", "remove", "rmdir", "mkdir", "symlink")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.changes = 0
        self.killed = False

    def _change(self) -> None:
        if self.killed or self.changes >= self.budget:
            self.killed = True
            raise SimulatedKill
        self.changes += 1

    @contextmanager
    def armed(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileSystemKill]:
        with monkeypatch.context() as patch:
            for name in self._OS_CALLS:
                real = getattr(os, name)
                patch.setattr(os, name, self._wrap(real))
            real_os_open = os.open
            writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

            def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
                if flags & writing:
                    self._change()
                return real_os_open(path, flags, *args, **kwargs)

            patch.setattr(os, "open", os_open)
            real_open = builtins.open

            def py_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
                if any(c in mode for c in "wxa+"):
                    self._change()
                return real_open(file, mode, *args, **kwargs)

            patch.setattr(builtins, "open", py_open)
            yield self

    def _wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def changed(*args: Any, **kwargs: Any) -> Any:
            self._change()
            return real(*args, **kwargs)

        return changed


ARRAYS = {1: 3, 2: 4, 3: 6}


def _expected_keys(version: int) -> list[str]:
    return sorted([*(f"a{i}" for i in range(ARRAYS[version])), "g"])


def _fill(storage: OptStorage, version: int) -> None:
    """Version ``version`` of the item: every value says which version it belongs to."""
    for key in storage.get_keys():
        storage.delete_data(key)
    for i in range(ARRAYS[version]):
        storage.save_data(f"a{i}", np.full(500 + 100 * i, version, dtype=np.int32))
    storage.save_data("g", {"n": version, "v": np.full(7, version, dtype=np.int64)})
    storage.save_metadata("version", version)


def _write_directory_store(
    store: Path, version: int, mode: str | None = None, *, compress: bool = False
) -> None:
    storage = OptStorage(store, mode=mode, summary_dir=False)  # type: ignore[arg-type]
    try:
        _fill(storage, version)
        if compress:
            storage.compress_store()
    finally:
        storage.close()


def _holds_item_files(store: Path) -> bool:
    names = set(os.listdir(store)) if store.is_dir() else set()
    return bool(names & {"zarr.json", ".zgroup", "metadata.json"})


def state(store: Path) -> int | str:
    """What a reader finds at ``store``: ``"absent"``, a complete version, or ``"refused"``.

    Anything else (a version whose arrays or keys disagree with its metadata, metadata
    missing, an error that is not a cadstore one) fails the test.
    """
    data = Path(f"{store}.data")
    if not data.exists() and not _holds_item_files(store):
        return "absent"
    try:
        storage = OptStorage(store, mode="r", summary_dir=False)
    except CorruptStoreError as exc:
        refused = str(exc)
    else:
        with storage:
            version = storage.load_metadata("version")
            assert sorted(storage.get_keys()) == _expected_keys(version), "torn item"
            for key in storage.get_keys():
                if key == "g":
                    assert storage.load_data("g/n") == version
                    assert np.all(storage.load_data("g/v") == version)
                else:
                    assert np.all(storage.load_data(key) == version), f"{key} is torn"
            return int(version)
    assert str(store) in refused, f"the error does not name the store: {refused}"
    return "refused"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------- finding 6


@pytest.mark.parametrize("scenario", ["rewrite", "fresh", "write-mode", "publish"])
def test_a_directory_store_killed_at_any_step_is_old_new_absent_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str
) -> None:
    """Kill the writer of a directory store after each of its file-system changes in turn:
    a reader then finds the old complete version, the new one, nothing, or a clear error,
    and ``mode="w"`` can always start over. ``publish`` reopens a directory store and
    publishes it as a ``.data``, which removes the directory: a kill during the removal
    leaves the ``.data``, which every mode opens."""
    seen: Counter[int | str] = Counter()
    for budget in range(10_000):
        where = tmp_path / f"kill{budget}"
        where.mkdir()
        store = where / "item.zarr"
        if scenario != "fresh":
            _write_directory_store(store, 1)
        kill = FileSystemKill(budget)
        with kill.armed(monkeypatch), suppress(SimulatedKill):
            _write_directory_store(
                store,
                2,
                mode="w" if scenario == "write-mode" else None,
                compress=scenario == "publish",
            )
        found = state(store)
        seen[found] += 1
        allowed: set[int | str] = {"absent", 2, "refused"} if scenario == "fresh" else {1, 2}
        allowed |= {"absent", "refused"}
        assert found in allowed, (budget, found)
        if scenario == "publish" and Path(f"{store}.data").exists():
            assert found == 2
            for mode in ("a", None):  # the .data is the item, whatever the directory holds
                with OptStorage(store, mode=mode, summary_dir=False) as storage:  # type: ignore[arg-type]
                    assert storage.load_metadata("version") == 2
        # Whatever the killed writer left, mode="w" starts over.
        _write_directory_store(store, 3, mode="w", compress=scenario == "publish")
        assert state(store) == 3
        if not kill.killed:
            assert found == 2
            break
    else:  # pragma: no cover - the writer never finished
        pytest.fail("the writer never completed")
    assert seen[2] >= 1 and budget > 3


def test_a_legacy_torn_directory_store_is_refused_naming_what_is_missing(
    tmp_path: Path,
) -> None:
    """A directory store torn by a writer of an earlier cadstore (root document written,
    ``metadata.json``, written last, missing) is an error naming the store and the file,
    in every mode but ``"w"``, which starts over. Nothing is changed by the refusal."""
    store = tmp_path / "item.zarr"
    _write_directory_store(store, 1)
    (store / "metadata.json").unlink()
    (store / "a2" / "c" / "0").unlink()
    before = _snapshot(tmp_path)
    for mode in ("r", None, "a"):
        with pytest.raises(CorruptStoreError, match=r"metadata\.json") as caught:
            OptStorage(store, mode=mode, summary_dir=False)  # type: ignore[arg-type]
        assert str(store) in str(caught.value)
        assert _snapshot(tmp_path) == before
    _write_directory_store(store, 3, mode="w")
    assert state(store) == 3


def test_metadata_without_a_root_document_is_refused(tmp_path: Path) -> None:
    """A store holding ``metadata.json`` but no root ``zarr.json`` (an object-store prefix
    whose publication stopped before its root) is refused, not opened empty."""
    store = tmp_path / "item.zarr"
    _write_directory_store(store, 1)
    (store / "zarr.json").unlink()
    before = _snapshot(tmp_path)
    for mode in ("r", None, "a"):
        with pytest.raises(CorruptStoreError, match=r"zarr\.json") as caught:
            OptStorage(store, mode=mode, summary_dir=False)  # type: ignore[arg-type]
        assert str(store) in str(caught.value)
    assert _snapshot(tmp_path) == before


def test_temporary_files_of_a_killed_writer_do_not_block_the_store(tmp_path: Path) -> None:
    """A store directory holding only what a killed writer left (a temporary file) is no
    store yet: every writable mode starts there."""
    for mode in (None, "w", "a"):
        store = tmp_path / f"{mode}.zarr"
        store.mkdir()
        (store / f"{TEMP_PREFIX}123-abc").write_bytes(b'{"zarr_format":3,"node_ty')
        _write_directory_store(store, 1, mode=mode)
        assert state(store) == 1


def test_a_published_item_beside_an_empty_working_directory_is_the_item(tmp_path: Path) -> None:
    """A writer killed between ``compress_store()`` and ``close()`` leaves its empty
    working directory beside the published ``.data``. Opened in the default mode, that
    made an empty writable item, which replaced the published one when published again:
    the item's arrays and metadata were lost. The ``.data`` is the item: read-only, as
    when it is alone."""
    store = tmp_path / "part.zarr"
    writer = OptStorage(store, summary_dir=False)
    writer.save_data("face_areas", np.arange(3.0))
    writer.save_metadata("size_cadfile", 1234)
    writer.compress_store()  # the writer is killed here: its working directory stays
    published = Path(f"{store}.data")
    stored = published.read_bytes()
    for leftover in ([], ["visu_mesh.bin"], [f"{TEMP_PREFIX}9-x"]):
        for name in leftover:
            (store / name).write_bytes(b"left")
        assert store.is_dir()
        reopened = OptStorage(store, summary_dir=False)
        assert reopened.read_only
        assert reopened.get_keys() == ["face_areas"]
        assert reopened.load_metadata("size_cadfile") == 1234
        with pytest.raises(CadstoreError, match="read-only"):
            reopened.save_data("face_types", np.arange(3))
        reopened.close()
        assert published.read_bytes() == stored
    # Appending still starts from the published item.
    appended = OptStorage(store, mode="a", summary_dir=False)
    appended.save_data("face_types", np.arange(3))
    appended.close()
    with OptStorage(store, summary_dir=False) as final:
        assert sorted(final.get_keys()) == ["face_areas", "face_types"]
        assert final.load_metadata("size_cadfile") == 1234


def test_a_store_removed_half_way_is_incomplete(tmp_path: Path) -> None:
    """A store whose removal an earlier cadstore started and a kill stopped (arrays left,
    no root document): refused naming the store, except by mode="w", which starts over."""
    store = tmp_path / "item.zarr"
    _write_directory_store(store, 1)
    for name in ("zarr.json", "metadata.json"):
        (store / name).unlink()
    before = _snapshot(tmp_path)
    for mode in (None, "a"):
        with pytest.raises(CorruptStoreError, match="incomplete directory store") as caught:
            OptStorage(store, mode=mode, summary_dir=False)  # type: ignore[arg-type]
        assert str(store) in str(caught.value)
    assert _snapshot(tmp_path) == before
    _write_directory_store(store, 2, mode="w")
    assert state(store) == 2


def test_visualisation_files_stay_in_a_republished_directory_store(tmp_path: Path) -> None:
    """The directory store is swapped whole on close: the ``visu*`` files of its working
    directory come along (and are copied to the stream cache), stale files do not."""
    store = tmp_path / "item.zarr"
    _write_directory_store(store, 2)
    (store / "visu_mesh.bin").write_bytes(b"mesh")
    (store / "a3" / "c" / "9").write_bytes(b"stale chunk of an earlier writer")
    _write_directory_store(store, 1)
    assert (store / "visu_mesh.bin").read_bytes() == b"mesh"
    assert (tmp_path / "stream_cache" / "visu_mesh.bin").read_bytes() == b"mesh"
    assert not (store / "a3").exists()
    assert state(store) == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES], ids=["disk-full", "permissions"])
def test_a_failed_directory_write_is_a_storage_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Disk full, or permission denied, while writing a directory store: a StorageError
    naming the file being written and the problem, and the previous version is still
    there, unchanged."""
    store = tmp_path / "item.zarr"
    _write_directory_store(store, 1)
    before = _snapshot(tmp_path)
    storage = OptStorage(store, summary_dir=False)
    _fill(storage, 2)
    real_os_open, real_open = os.open, builtins.open

    def full(path: Any) -> OSError:
        return OSError(code, os.strerror(code), os.fspath(path))

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_CREAT) and str(tmp_path) in os.path.abspath(path):
            raise full(path)
        return real_os_open(path, flags, *args, **kwargs)

    def py_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wxa+") and str(tmp_path) in os.path.abspath(file):
            raise full(file)
        return real_open(file, mode, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", os_open)
        patch.setattr(builtins, "open", py_open)
        with pytest.raises(StorageError, match=os.strerror(code).lower()) as caught:
            storage.close()
    assert str(store) in str(caught.value)
    assert _snapshot(tmp_path) == before
    assert state(store) == 1


# ---------------------------------------------------------------------------- finding 11a


def _deflated_copy(src: Path, dst: Path) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), compress_type=zipfile.ZIP_DEFLATED)
    return dst


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_appending_to_a_zip_bomb_writes_nothing(tmp_path: Path) -> None:
    """An item whose members inflate a thousandfold (8 MiB of uncompressed zeros
    deflated in the zip) is refused for appending, naming the file, before anything is
    inflated or written: republishing it would write a thousand times its size."""
    source = tmp_path / "src.zarr"
    with OptStorage(source, compression_level=None, summary_dir=False) as storage:
        storage.save_data("big", np.zeros(2 * 1024**2, dtype=np.float32))
        storage.save_data("small", np.arange(10))
        storage.compress_store()
    bomb = _deflated_copy(Path(f"{source}.data"), tmp_path / "bomb.zarr.data")
    assert bomb.stat().st_size < 64 * 1024
    before = _snapshot(tmp_path)
    with pytest.raises(LimitExceededError, match=r"bomb\.zarr\.data") as caught:
        OptStorage(tmp_path / "bomb.zarr", mode="a", summary_dir=False)
    assert "inflate" in str(caught.value)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("fmt", [3, 2])
def test_appending_writes_output_proportional_to_the_item(tmp_path: Path, fmt: int) -> None:
    """mode="a" + close() republishes an item as a directory of about its own size; an
    array declared huge without chunks stays without chunks (fill values are never
    materialised)."""
    store = tmp_path / "item.zarr"
    with OptStorage(store, zarr_format=fmt, summary_dir=False) as storage:
        storage.save_data("face_areas", np.random.default_rng(0).random(50_000))
        storage.save_data("ids", np.arange(20_000))
        storage.compress_store()
    data = Path(f"{store}.data")
    # Declare "ids" a thousand times longer: its missing chunks read as fill values.
    members = {}
    with zipfile.ZipFile(data) as zf:
        for name in zf.namelist():
            members[name] = zf.read(name)
    doc_name = "ids/zarr.json" if fmt == 3 else "ids/.zarray"
    for name in (doc_name, "zarr.json" if fmt == 3 else ".zmetadata"):
        members[name] = members[name].replace(b'"shape":[20000]', b'"shape":[20000000]')
    with zipfile.ZipFile(data, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    with OptStorage(store, mode="a", summary_dir=False) as storage:
        storage.save_metadata("touched", True)
    written = _dir_bytes(store)
    group = zarr.open_group(zarr.storage.LocalStore(store, read_only=True), mode="r")
    assert group["ids"].shape == (20_000_000,)
    assert written <= 1.1 * data.stat().st_size + 8192, (written, data.stat().st_size)


# ---------------------------------------------------------------------------- finding 11b


def _operations_of_append_open(
    tmp_path: Path, n: int, monkeypatch: pytest.MonkeyPatch
) -> Counter[str]:
    """Open an item of ``n`` arrays in mode "a", add one array, publish: count the keys
    listed and the members read."""
    store = tmp_path / f"n{n}.zarr"
    with OptStorage(store, summary_dir=False) as storage:
        for i in range(n):
            storage.save_data(f"a{i}", np.arange(3, dtype=np.int32))
        storage.compress_store()
    counts: Counter[str] = Counter()
    real_keys, real_get = ZipSource.keys, ZipSource.get

    def keys(self: ZipSource) -> Iterator[str]:
        for key in real_keys(self):
            counts["keys listed"] += 1
            yield key

    def get(self: ZipSource, key: str) -> bytes | None:
        counts["members read"] += 1
        return real_get(self, key)

    with monkeypatch.context() as patch:
        patch.setattr(ZipSource, "keys", keys)
        patch.setattr(ZipSource, "get", get)
        with OptStorage(store, mode="a", summary_dir=False) as storage:
            storage.save_data("extra", np.arange(4))
            storage.compress_store()
    with zipfile.ZipFile(f"{store}.data") as zf:
        counts["members"] = len(zf.namelist())
    return counts


def test_opening_for_append_is_linear_in_the_number_of_arrays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Doubling the arrays of an item doubles the keys listed and members read when it is
    opened in mode "a" and republished (it quadrupled: every array listed every key)."""
    small = _operations_of_append_open(tmp_path, 150, monkeypatch)
    large = _operations_of_append_open(tmp_path, 300, monkeypatch)
    for what in ("keys listed", "members read"):
        assert large[what] <= 2.1 * small[what], (what, small[what], large[what])
        assert large[what] <= 3 * large["members"], (what, large[what], large["members"])


# ---------------------------------------------------------------------------- finding 14a


def test_a_store_directory_appearing_while_opening_is_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer creates the store directory just after this one found nothing:
    opening goes on, without "exists and is not a directory"."""
    store = tmp_path / "item.zarr"
    real_stat = os.stat
    appeared: list[bool] = []

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if os.fspath(path) == str(store) and not appeared:
            appeared.append(True)
            os.mkdir(store)
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(store))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    storage = OptStorage(store, mode="w", summary_dir=False)
    monkeypatch.undo()
    assert appeared
    _fill(storage, 1)
    storage.close()
    assert state(store) == 1


def test_a_store_directory_removed_while_created_is_created_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer (mode "w") removes the store directory while this one creates it:
    this one creates it again instead of failing with a bare FileExistsError."""
    store = tmp_path / "item.zarr"
    real_mkdir = os.mkdir
    raced: list[bool] = []

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.fspath(path) == str(store) and not raced:
            raced.append(True)
            raise FileExistsError(errno.EEXIST, "File exists", str(store))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    storage = OptStorage(store, mode="w", summary_dir=False)
    monkeypatch.undo()
    assert raced
    _fill(storage, 1)
    storage.close()
    assert state(store) == 1


ANOTHER_WRITER = "another writer"


@pytest.mark.parametrize("step", range(1, 40, 3))
def test_two_directory_writers_of_one_name_never_tear_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    """Writer A publishes its whole directory store in the middle of writer B's
    publication (at B's ``step``-th rename): each either succeeds, the last complete
    version winning, or gets one error saying another writer published the item."""
    store = tmp_path / "item.zarr"
    a = OptStorage(store, mode="w", summary_dir=False)
    b = OptStorage(store, mode="w", summary_dir=False)
    _fill(a, 3)
    _fill(b, 2)
    real_replace = os.replace
    renames = 0
    outcome: dict[str, str] = {}

    def close(storage: OptStorage, name: str) -> None:
        try:
            storage.close()
        except CadstoreError as exc:
            outcome[name] = str(exc)
        else:
            outcome[name] = "ok"

    def replace(*args: Any, **kwargs: Any) -> None:
        nonlocal renames
        renames += 1
        if renames == step:
            monkeypatch.setattr(os, "replace", real_replace)
            close(a, "a")
        real_replace(*args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    close(b, "b")
    monkeypatch.undo()
    if "a" not in outcome:  # B renamed fewer than ``step`` times: A publishes last
        close(a, "a")
    found = state(store)
    assert found in (2, 3)
    assert "ok" in outcome.values()
    for said in outcome.values():
        assert said == "ok" or (ANOTHER_WRITER in said and str(store) in said), said
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def _same_name_writer(target: str, writer: int, mode: str | None, compress: bool) -> list[str]:
    failures = []
    for k in range(25):
        try:
            storage = OptStorage(target, mode=mode, summary_dir=False)  # type: ignore[arg-type]
            _fill(storage, 2 if (writer + k) % 2 else 1)
            if compress:
                storage.compress_store()
            storage.close()
        except CadstoreError as exc:
            if ANOTHER_WRITER not in str(exc):
                failures.append(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            failures.append("".join(traceback.format_exception_only(exc)).strip())
    return failures


@pytest.mark.parametrize("first", ["a0", "a5", "metadata"])
def test_a_reader_of_a_directory_item_replaced_meanwhile_is_refused_not_torn(
    tmp_path: Path, first: str
) -> None:
    """A directory item opened read-only is read file by file; another writer publishing
    its version swaps a new directory in. Whatever is read next (an array both versions
    have, one only the old has, the metadata not read yet) is a ``StorageError`` saying
    so, never values of the new version beside the old one's, nor a bare
    ``FileNotFoundError`` (both seen before, with a writer and a reader in two processes;
    and an array only the old version had read as fill values). Opened again, the new
    version reads whole."""
    target = tmp_path / "item.zarr"
    _write_directory_store(target, 3)
    reader = OptStorage(target, mode="r", summary_dir=False)
    assert sorted(reader.get_keys()) == _expected_keys(3)
    _write_directory_store(target, 2, mode="w")  # the other writer
    read: Callable[[], Any] = (
        (lambda: reader.load_metadata("version"))
        if first == "metadata"
        else (lambda: reader.load_data(first))
    )
    with reader, pytest.raises(StorageError, match="another writer replaced this item"):
        read()
    assert state(target) == 2


def test_a_version_swapped_in_while_the_store_is_loaded_is_loaded_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a directory store for writing while another writer of the same item swaps
    its version in: a file listed a moment before is gone (version 2 has no ``a5``). The
    store is loaded again, whole, in its new version; no ``FileNotFoundError`` (found by
    the two-process test below, about one run in thirty)."""
    from cadstore.io.sources import DirectorySource

    target = tmp_path / "item.zarr"
    _write_directory_store(target, 3)
    real_get = DirectorySource.get
    swapped: list[str] = []

    def get(self: DirectorySource, key: str) -> bytes | None:
        if key.startswith("a5/") and not swapped:
            # Between get's check that the file is there and its open(), the other
            # writer publishes its version (a directory swapped in, the old one removed).
            path = self._path(key)
            assert path is not None and os.path.isfile(path)
            swapped.append(key)
            _write_directory_store(target, 2)
            with open(path, "rb") as fh:
                return fh.read()
        return real_get(self, key)

    monkeypatch.setattr(DirectorySource, "get", get)
    storage = OptStorage(target, summary_dir=False)
    monkeypatch.setattr(DirectorySource, "get", real_get)
    assert swapped, "the load never reached a5"
    with storage:
        assert storage.load_metadata("version") == 2
        assert sorted(storage.get_keys()) == _expected_keys(2)
        assert all(np.all(storage.load_data(f"a{i}") == 2) for i in range(ARRAYS[2]))
    assert state(target) == 2


@pytest.mark.parametrize(
    ("mode", "compress"), [("w", True), ("w", False), ("a", True), (None, False)]
)
def test_same_name_writers_in_two_processes(
    tmp_path: Path, mode: str | None, compress: bool
) -> None:
    """Two processes writing one item name at once: every write succeeds or fails with
    the error saying another writer published the item; what remains is complete."""
    target = str(tmp_path / "item.zarr")
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    with context.Pool(2) as pool:
        results = pool.starmap(_same_name_writer, [(target, w, mode, compress) for w in range(2)])
    failures = [f for result in results for f in result]
    assert failures == [], Counter(failures).most_common(5)
    assert state(Path(target)) in (1, 2)


def test_a_merge_skips_a_torn_directory_item_and_lists_it(tmp_path: Path) -> None:
    """A directory item without metadata.json was torn by its writer: the merge skips it
    and says why, instead of merging an item with no metadata."""
    from cadstore.merging import merge_items

    paths = []
    for i in range(3):
        storage = OptStorage(tmp_path / f"item{i}.zarr", summary_dir=False)
        storage.save_data("face_areas", np.arange(5.0) + i)
        storage.save_metadata("index", i)
        storage.close()
        paths.append(tmp_path / f"item{i}.zarr")
    (paths[1] / "metadata.json").unlink()
    result = merge_items(paths, tmp_path / "out.dataset")
    assert result.items == ["item0", "item2"]
    assert [e["file"] for e in result.errors] == [str(paths[1])]
    assert "metadata.json is missing" in result.errors[0]["error"]
