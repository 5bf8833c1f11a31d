"""A dataset reader warmed in one process and inherited by the processes it forks.

``DataLoader`` without ``persistent_workers`` forks new workers every epoch; each used to
open the dataset again and learn, item by item, what the reader looks up (small arrays
decoded whole, frame tables of item-framed chunks). A reader now learns it once
(:meth:`DatasetReader.warm`, before the first fork when a torch dataset asks for it) and
a forked child takes it over, when the file can be read from the child as it is.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cadstore
from cadstore.dataset import CADDataset, DatasetLoader
from cadstore.dataset import reader as reader_module
from cadstore.dataset.reader import DatasetReader
from cadstore.errors import CorruptStoreError, DatasetError, StorageClosedError, StorageError
from cadstore.io.sources import DirectorySource, KeySource, ZipSource

FORK = multiprocessing.get_context("fork")
MiB = 1024**2


@pytest.fixture(scope="module")
def dataset(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fork")
    out = folder / "parts.dataset"
    # Items of 4 to 100 faces (those of 0 and 1 faces: tests/test_small_items.py).
    cadstore.merge([str(p) for p, _, _ in realistic_items[:24]], str(out))
    return out


def _every_item(reader: DatasetReader) -> list[dict[str, Any]]:
    return [reader.read_item(code) for code in range(reader.n_items)]


def _assert_same_items(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for group in x:
            if isinstance(x[group], dict):
                assert x[group].keys() == y[group].keys(), group
                for name in x[group]:
                    np.testing.assert_array_equal(x[group][name], y[group][name], f"{group}/{name}")
            else:
                assert x[group] == y[group], group


def _in_child(work: Callable[[], Any], timeout: float = 60) -> Any:
    """Run ``work`` in a forked child; return what it returns (or raise what it raised).
    A child that does not finish within ``timeout`` is killed and fails the test."""
    receive, send = FORK.Pipe(duplex=False)

    def main() -> None:
        try:
            send.send(("ok", work()))
        except BaseException as exc:  # reported to the test
            send.send(("error", f"{type(exc).__name__}: {exc}"))

    child = FORK.Process(target=main)
    child.start()
    try:
        if not receive.poll(timeout):
            pytest.fail(f"the forked child did not answer within {timeout} s (hung)")
        status, value = receive.recv()
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    if status != "ok":
        raise AssertionError(value)
    return value


def _learned(reader: DatasetReader) -> dict[str, int]:
    """Frame tables (of item-framed chunks) and small arrays kept whole, counted."""
    frames = sum(table is not None for table in reader._frames.values())
    return {"frames": frames, "small": len(reader._small)}


def test_warm_learns_what_reads_look_up_and_reads_the_same(dataset: Path) -> None:
    with DatasetReader(dataset) as cold:
        expected = _every_item(cold)
    # A small cache: some arrays are kept whole, the others' frame tables learned.
    with DatasetReader(dataset, cache_bytes=MiB) as reader:
        assert _learned(reader) == {"frames": 0, "small": 0}
        assert reader.warm() is True
        learned = _learned(reader)
        assert learned["frames"] > 0 and learned["small"] > 0
        # Triangle-stored face pairs among what was learned, through their stored group.
        triangles = {reader.stored_as(g, a)[0] for g in reader.groups for a in reader.arrays(g)}
        stored_only = triangles - set(reader.groups)
        assert any(path.split("/")[0] in stored_only for path, *_ in reader._frames)
        _assert_same_items(_every_item(reader), expected)
        # Reading after warming found no frame table it did not know.
        assert _learned(reader)["frames"] == learned["frames"]
        # Batch reads (what DataLoader workers make) read the same.
        batch = reader.read_items(list(range(reader.n_items)))
        _assert_same_items([dict(item) for item in batch], expected)


def test_warm_learns_how_batches_read_each_item(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forked worker's batches work out no read plan of their own: warming made them,
    for every item of every array not kept whole (triangle-stored face pairs too), and
    batches read with them give the same items."""
    with DatasetReader(dataset) as cold:
        expected = _every_item(cold)
    with DatasetReader(dataset, cache_bytes=MiB) as reader:
        reader.warm()
        planned = {path for path, _, _ in reader._recipes}
        assert any(path.startswith("faceface_upper/") for path in planned), planned
        made = []
        original = DatasetReader._recipe

        def counting(self: DatasetReader, *args: Any) -> Any:
            recipe = original(self, *args)
            if recipe is not None:  # None: rows not read as frames alone, not kept
                made.append(args[0])
            return recipe

        monkeypatch.setattr(DatasetReader, "_recipe", counting)
        batch = reader.read_items(list(range(reader.n_items)))
        _assert_same_items([dict(item) for item in batch], expected)
        assert made == []


def test_warm_keeps_read_plans_within_the_cache(dataset: Path) -> None:
    """A cache too small for every plan: warming stops when it is full, the plans kept
    within it, and reads are the same."""
    with DatasetReader(dataset, cache_bytes=64 * reader_module._ENTRY_BYTES) as reader:
        assert reader.warm() is True
        assert 0 < reader._recipe_parts <= 64
        with DatasetReader(dataset) as other:
            _assert_same_items(_every_item(reader), _every_item(other))


def test_warm_reads_a_bounded_amount(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large dataset's first fork does not wait for all of it to be read: past
    ``WARM_READ_BYTES`` of chunks, the workers learn the rest as they go."""
    with DatasetReader(dataset, cache_bytes=MiB) as reader:
        reader.warm()
        unbounded = _learned(reader)["frames"]
    monkeypatch.setattr("cadstore.dataset.reader.WARM_READ_BYTES", 1)
    with DatasetReader(dataset, cache_bytes=MiB) as reader:
        assert reader.warm() is True
        assert _learned(reader)["frames"] <= 1 < unbounded
        with DatasetReader(dataset) as other:
            _assert_same_items(_every_item(reader), _every_item(other))


def test_warm_within_no_cache_does_nothing(dataset: Path) -> None:
    with DatasetReader(dataset, cache_bytes=0) as reader:
        assert reader.warm() is True
        assert _learned(reader) == {"frames": 0, "small": 0}
        with DatasetReader(dataset) as other:
            _assert_same_items(_every_item(reader), _every_item(other))


def test_warm_some_groups_and_arrays(dataset: Path) -> None:
    with DatasetReader(dataset) as reader:
        reader.warm(["faces"], {"faces": ["face_areas"]})
        assert set(reader._small) == {"faces/face_areas"}
        with pytest.raises(DatasetError, match="unknown group 'nope'"):
            reader.warm(["nope"])
    with pytest.raises(StorageClosedError):
        reader.warm()


def test_warm_leaves_a_damaged_chunk_to_the_read_that_needs_it(
    dataset: Path, tmp_path: Path
) -> None:
    spoiled = tmp_path / "spoiled.dataset"
    data = bytearray(dataset.read_bytes())
    with zipfile.ZipFile(dataset) as zf:
        info = next(
            i for i in zf.infolist() if i.filename.startswith("faces/face_discretization/c/")
        )
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 40] ^= 0xFF  # inside the first inner chunk
    spoiled.write_bytes(bytes(data))
    before = spoiled.read_bytes()
    with DatasetReader(spoiled) as reader:
        assert reader.warm() is True
        with pytest.raises(CorruptStoreError, match=r"spoiled\.dataset.*face_discretization"):
            _every_item(reader)
    assert spoiled.read_bytes() == before


def test_warm_skips_a_damaged_shard_index(dataset: Path, tmp_path: Path) -> None:
    spoiled = tmp_path / "index.dataset"
    data = bytearray(dataset.read_bytes())
    with zipfile.ZipFile(dataset) as zf:
        info = next(
            i for i in zf.infolist() if i.filename.startswith("faces/face_discretization/c/")
        )
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size - 6] ^= 0xFF  # in the shard's index, at its end
    spoiled.write_bytes(bytes(data))
    with DatasetReader(spoiled, cache_bytes=MiB) as reader:
        assert reader.warm() is True  # the other arrays warmed, nothing raised
        assert _learned(reader)["frames"] > 0
        with pytest.raises(CorruptStoreError, match=r"index\.dataset.*face_discretization"):
            _every_item(reader)


def _zip64_copy(dataset: Path, out: Path) -> Path:
    """The dataset's members in a ZIP64 archive, its directory records included (as an
    archive past 4 GiB is written), which is listed through zipfile."""
    limit = zipfile.ZIP64_LIMIT
    zipfile.ZIP64_LIMIT = 1000  # type: ignore[misc]  # ZIP64 records from 1,000 bytes on
    try:
        with zipfile.ZipFile(dataset) as src, zipfile.ZipFile(out, "w") as dst:
            for name in src.namelist():
                with dst.open(name, "w", force_zip64=True) as fh:
                    fh.write(src.read(name))
    finally:
        zipfile.ZIP64_LIMIT = limit  # type: ignore[misc]
    source = ZipSource(str(out))
    try:
        assert source._zip is not None  # listed through zipfile, read by position
    finally:
        source.close()
    return out


def _directory_copy(dataset: Path, out: Path) -> Path:
    with zipfile.ZipFile(dataset) as src:
        src.extractall(out)
    return out


@pytest.mark.parametrize("copy", [_zip64_copy, _directory_copy], ids=["zip64", "directory"])
def test_zip64_and_directory_datasets_are_taken_over_too(
    dataset: Path, tmp_path: Path, copy: Callable[[Path, Path], Path]
) -> None:
    path = copy(dataset, tmp_path / "copy.dataset")
    with DatasetReader(dataset) as original:
        expected = _every_item(original)
    with DatasetReader(path, cache_bytes=MiB) as reader:
        reader.warm()
        learned, source = _learned(reader), id(reader._source)

        def child() -> tuple[dict[str, int], bool, list[dict[str, Any]]]:
            items = _every_item(reader)
            return _learned(reader), id(reader._source) == source, items

        in_child, same_source, items = _in_child(child)
    assert same_source and in_child["frames"] >= learned["frames"] > 0
    _assert_same_items(items, expected)


def test_a_forked_child_keeps_what_a_warm_reader_learned(dataset: Path) -> None:
    with DatasetReader(dataset, cache_bytes=MiB) as reader:
        expected = _every_item(reader)
        learned = _learned(reader)
        source = id(reader._source)

        def child() -> tuple[dict[str, int], bool, list[dict[str, Any]]]:
            items = _every_item(reader)
            # Not opened again: the parent's source and what it had learned, kept.
            return _learned(reader), id(reader._source) == source, items

        in_child, same_source, items = _in_child(child)
        assert in_child == learned
        assert same_source
        _assert_same_items(items, expected)
        # The parent's reader is untouched by what the child did.
        _assert_same_items(_every_item(reader), expected)


@contextlib.contextmanager
def _held_by_another_thread(lock: Any) -> Iterator[None]:
    """While inside: another thread holds ``lock`` (a reader's, as a read under way does)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        yield
    finally:
        release.set()
        thread.join()


def test_a_reader_busy_in_another_thread_at_fork_is_opened_again(dataset: Path) -> None:
    """A thread of the parent inside the reader as the process forks leaves its lock held
    (and its caches perhaps half updated) in the child: the child gets locks of its own
    and opens the file again (before, it waited forever for that lock)."""
    with DatasetReader(dataset) as reader:
        expected = _every_item(reader)
        parent_source = id(reader._source)

        def child() -> tuple[bool, list[dict[str, Any]]]:
            items = _every_item(reader)
            return id(reader._source) != parent_source, items

        with _held_by_another_thread(reader._lock):
            reopened, items = _in_child(child, timeout=30)
        assert reopened
        _assert_same_items(items, expected)


def test_a_reader_busy_at_fork_is_warmed_at_the_next_fork(dataset: Path) -> None:
    with DatasetReader(dataset, cache_bytes=MiB) as reader:
        reader.warm_before_fork()
        with _held_by_another_thread(reader._lock):
            assert _in_child(lambda: True) is True  # the fork does not wait for the thread
            assert _learned(reader) == {"frames": 0, "small": 0}
        assert _in_child(lambda: _learned(reader)) == _learned(reader)
        assert _learned(reader)["frames"] > 0
        # Warmed once: a third fork has nothing left to do.
        assert reader not in reader_module._WARM_AT_FORK


def test_two_datasets_over_one_reader_warm_what_either_reads(dataset: Path) -> None:
    with DatasetReader(dataset, cache_bytes=MiB) as reader:
        reader.warm_before_fork(["faces"], {"faces": ["face_areas"]})
        reader.warm_before_fork(["faces", "edges"], {"faces": ["face_types"]})
        assert reader_module._WARM_AT_FORK[reader] == (
            ("faces", "edges"),
            {"faces": ("face_areas", "face_types")},
        )
        # A group one of them reads whole is warmed whole.
        reader.warm_before_fork(["faces"])
        assert reader_module._WARM_AT_FORK[reader] == (("faces", "edges"), None)
        reader.warm_before_fork()
        assert reader_module._WARM_AT_FORK[reader] == (None, None)
        reader_module._WARM_AT_FORK.pop(reader)
        reader.warm_before_fork(["faces"], {"faces": ["face_areas"]})
        reader.warm_before_fork(["edges"], {"faces": ["face_types"]})
        assert _in_child(lambda: True)  # the fork that warms
        warmed = set(reader._small) | {path for path, *_ in reader._frames}
        faces = {path for path in warmed if path.startswith("faces/")}
        assert faces == {"faces/face_areas", "faces/face_types"}
        assert any(path.startswith("edges/") for path in warmed)


def test_zip_sources_read_by_position_carry_over_a_fork(dataset: Path, tmp_path: Path) -> None:
    source = ZipSource(str(dataset))
    try:
        assert _in_child(source.after_fork) is True
    finally:
        source.close()
    # A member compressed another way is read through zipfile, which moves the file
    # position the child would share with its parent: opened again.
    other = tmp_path / "bz2.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("zarr.json", b"{}", compress_type=zipfile.ZIP_BZIP2)
    source = ZipSource(str(other))
    try:
        assert _in_child(source.after_fork) is False
    finally:
        source.close()


@pytest.mark.parametrize("kind", ["zip", "directory"])
def test_a_budget_being_charged_at_fork_is_not_carried_over(
    dataset: Path, tmp_path: Path, kind: str
) -> None:
    """Every source takes its decode budget over in the child (``KeySource.after_fork``):
    one another thread of the parent was charging as the process forked is half updated,
    and the source is opened again; its new lock is the child's own (no hang)."""
    if kind == "zip":
        source: KeySource = ZipSource(str(dataset))
    else:
        (tmp_path / "store").mkdir()
        (tmp_path / "store" / "zarr.json").write_bytes(b"{}")
        source = DirectorySource(str(tmp_path / "store"))
    try:
        budget = source.budget
        budget.charge("a", 1)
        assert _in_child(source.after_fork) is True

        def child() -> tuple[bool, int]:
            carried = source.after_fork()
            budget.charge("b", 2)  # the child's own lock: taken at once
            return carried, budget.used

        with _held_by_another_thread(budget._lock):
            carried, used = _in_child(child, timeout=30)
        assert carried is False
        assert used == 3
        assert budget.used == 1  # the parent's untouched
    finally:
        source.close()


@pytest.fixture
def loader(dataset: Path) -> Iterator[DatasetLoader]:
    with DatasetLoader(flow_output_file=dataset.with_suffix(".flow")) as ld:
        ld.split("random", train=0.8, validation=0.1, test=0.1, random_state=0)
        yield ld


def _inherited(_: int) -> None:
    import torch

    info = torch.utils.data.get_worker_info()
    reader = info.dataset.source.reader
    # What the worker's reader knows before the worker has read anything.
    info.dataset.learned_at_start.put(len(reader._small) + len(reader._frames))


def test_dataloader_workers_of_every_epoch_start_warm(loader: DatasetLoader) -> None:
    torch = pytest.importorskip("torch")
    dataset, collate = loader.get_dataset("train").to_torch_with_collate()
    reader = dataset.source.reader
    assert not reader._small and not reader._frames  # the training process read nothing
    dataset.learned_at_start = FORK.Queue()
    expected = sorted(reader.item_names[int(c)] for c in dataset.indices)
    for _ in range(2):
        batches = torch.utils.data.DataLoader(
            dataset,
            batch_size=4,
            num_workers=2,
            collate_fn=collate,
            multiprocessing_context="fork",
            worker_init_fn=_inherited,
        )
        names = [name for batch in batches for name in batch["name"]]
        assert sorted(names) == expected
        assert reader._small  # the training process warmed its reader
        starts = [dataset.learned_at_start.get(timeout=10) for _ in range(2)]
        # Warmed once, just before the first worker was forked: both inherit it.
        assert min(starts) > 0, starts


def test_a_reentrant_lock_held_by_the_forking_thread_is_not_free_in_the_child() -> None:
    """The thread that forks is the child's only thread: a reentrant lock it held would
    let itself be taken again there, though what it guards was being changed."""
    from cadstore.forking import renew_lock

    lock = threading.RLock()
    assert _in_child(lambda: renew_lock(lock, threading.RLock)[1]) is True
    with lock:
        assert _in_child(lambda: renew_lock(lock, threading.RLock)[1]) is False
    plain = threading.Lock()
    with _held_by_another_thread(plain):
        assert _in_child(lambda: renew_lock(plain, threading.Lock)[1]) is False


@pytest.mark.parametrize("change", ["overwrite", "append"])
def test_a_forked_reader_opens_its_replaced_dataset_once(
    realistic_items: list[Any], tmp_path: Path, change: str
) -> None:
    """A reader busy in another thread at fork is opened again in the child, by path. After
    a merge with overwrite (other items under the codes) the child refuses to read, as it
    should, but it opened the file, parsed its directory and decoded its item names again
    at every read, only to refuse once more. It now opens it once and refuses the later
    reads at once; after an append (the items it knew still first) it opens the new file
    once and reads from it, the new items included."""
    out = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p, _, _ in realistic_items[:3]], str(out))
    new = [str(p) for p, _, _ in realistic_items[3:6]]
    with DatasetLoader(out) as loader:
        dataset = CADDataset(loader, range(3))
        reader = loader.item_source.reader
        first = reader.read_item(0)["faces"]["face_areas"]
        if change == "overwrite":
            cadstore.merge(new, str(out), overwrite=True)
        else:
            cadstore.merge(new, str(out), append=True)

        def child() -> tuple[int, list[str], int]:
            opened: list[str] = []
            real = DatasetReader._open_source

            def counted(self: DatasetReader) -> KeySource:
                opened.append(self.path)
                return real(self)

            DatasetReader._open_source = counted  # type: ignore[method-assign]
            outcomes = []
            for read in (lambda: dataset[0], lambda: reader.read_item(0), lambda: dataset[0]):
                try:
                    item = read()
                    np.testing.assert_array_equal(item["faces"]["face_areas"], first)
                    outcomes.append("read")
                except StorageError as exc:
                    outcomes.append(str(exc))
            if change == "append":  # an item only the new file holds
                added = reader.read_item(3)["faces"]["face_areas"]
                np.testing.assert_array_equal(added, realistic_items[3][1]["face_areas"])
            return len(opened), outcomes, reader.n_items

        with _held_by_another_thread(reader._lock):
            opens, outcomes, n_items = _in_child(child, timeout=60)
        assert opens == 1
        if change == "overwrite":
            assert all("replaced by another version" in o for o in outcomes), outcomes
            assert n_items == 3
        else:
            assert outcomes == ["read"] * 3
            assert n_items == 6
        # The training process's own reader still reads the version it opened.
        np.testing.assert_array_equal(reader.read_item(0)["faces"]["face_areas"], first)
