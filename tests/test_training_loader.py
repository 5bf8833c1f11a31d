"""The in-process training loader (``cadstore.dataset.training.BatchLoader``): the same
batches as ``DataLoader`` over ``to_torch()``, shuffled per epoch, with buffers that are
reused only when nothing refers to them any more."""

from __future__ import annotations

import functools
import os
import re
import signal
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cadstore
from cadstore.dataset import DatasetLoader
from cadstore.dataset.reader import DatasetReader
from cadstore.dataset.training import BatchLoader
from cadstore.errors import CorruptStoreError
from conftest import needs_populate_write, page_faults_writing

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def flow(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("training")
    cadstore.merge([str(p) for p, _, _ in realistic_items[:40]], str(folder / "parts.dataset"))
    return folder / "parts.flow"


@pytest.fixture
def loader(flow: Path) -> Iterator[DatasetLoader]:
    with DatasetLoader(flow_output_file=flow) as ld:
        ld.split("random", train=0.8, validation=0.1, test=0.1, random_state=0)
        yield ld


def _flat(batch: Any, prefix: str = "") -> dict[str, Any]:
    """A collated batch as ``{path: numpy array or list}``, for comparing two batches."""
    out: dict[str, Any] = {}
    if isinstance(batch, Mapping):
        for key, value in batch.items():
            out.update(_flat(value, f"{prefix}/{key}"))
    elif isinstance(batch, torch.Tensor):
        out[prefix] = batch.numpy().copy()
    else:
        out[prefix] = list(batch) if isinstance(batch, list | tuple) else batch
    return out


def _assert_same(a: Any, b: Any) -> None:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        if isinstance(fa[key], np.ndarray):
            assert fa[key].dtype == fb[key].dtype, key
            np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)
        else:
            assert fa[key] == fb[key], key


def _batch_loader(loader: DatasetLoader, subset: str = "train", **kwargs: Any) -> BatchLoader:
    batches: BatchLoader = loader.get_dataset(subset).batches(**kwargs)
    return batches


def test_batches_equal_the_dataloaders(loader: DatasetLoader) -> None:
    dataset, collate = loader.get_dataset("train").to_torch_with_collate()
    reference = list(
        torch.utils.data.DataLoader(dataset, batch_size=6, shuffle=False, collate_fn=collate)
    )
    batches = _batch_loader(loader, batch_size=6, shuffle=False, threads=2, prefetch=2)
    mine = list(batches)
    assert len(mine) == len(reference) == len(batches)
    for ours, theirs in zip(mine, reference, strict=True):
        _assert_same(ours, theirs)


@pytest.mark.parametrize(
    ("argument", "value", "least"),
    [
        ("batch_size", 0, 1),
        ("batch_size", 2.5, 1),
        ("batch_size", "4", 1),
        ("threads", 0, 1),
        ("prefetch", -1, 0),
        ("processes", -2, 0),
    ],
)
def test_a_bad_batching_argument_is_named(
    loader: DatasetLoader, argument: str, value: Any, least: int
) -> None:
    # One message listed all four arguments whatever was wrong; a float batch size was
    # cut silently, and a string one was a TypeError from a comparison.
    expected = f"{argument} must be an int >= {least}, got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        _batch_loader(loader, **{argument: value})


def test_every_epoch_is_a_seeded_permutation(loader: DatasetLoader) -> None:
    indices = loader.get_dataset("train").indices.tolist()
    batches = _batch_loader(loader, batch_size=5, seed=7)
    first = [c for b in batches for c in b["file_id_code"].tolist()]
    second = [c for b in batches for c in b["file_id_code"].tolist()]
    assert sorted(first) == sorted(second) == sorted(indices)
    assert first != second and first != indices
    batches.set_epoch(0)
    assert [c for b in batches for c in b["file_id_code"].tolist()] == first
    again = _batch_loader(loader, batch_size=5, seed=7)
    assert [c.tolist() for c in again.batches_of(1)] == [
        second[i : i + 5] for i in range(0, len(second), 5)
    ]
    other = _batch_loader(loader, batch_size=5, seed=8)
    assert [c.tolist() for c in other.batches_of(0)] != [c.tolist() for c in again.batches_of(0)]


def test_drop_last_and_length(loader: DatasetLoader) -> None:
    n = len(loader.get_dataset("train"))
    assert n % 7
    keep = _batch_loader(loader, batch_size=7)
    drop = _batch_loader(loader, batch_size=7, drop_last=True)
    assert len(keep) == -(-n // 7) and len(drop) == n // 7
    assert [len(b["file_id_code"]) for b in drop] == [7] * (n // 7)
    assert sum(len(b["file_id_code"]) for b in keep) == n


def test_buffers_are_reused_when_batches_are_let_go(loader: DatasetLoader) -> None:
    batches = _batch_loader(loader, batch_size=4, shuffle=False, threads=1, prefetch=1)
    for _ in range(3):
        for batch in batches:
            assert batch["faces"]["face_areas"].shape[0] == int(batch["ptr"]["faces"][-1])
            del batch
    pool = batches.pool
    assert pool.reused > pool.allocated


def test_a_batch_takes_one_pool_buffer_for_all_its_arrays(loader: DatasetLoader) -> None:
    """Each buffer lent is checked at every later lending (under the interpreter lock the
    decoding threads share): a batch lays its arrays out in one buffer, not one each."""
    batches = _batch_loader(loader, batch_size=4, shuffle=False, threads=1, prefetch=1)
    n_batches = len(batches)
    for _ in range(3):
        for batch in batches:
            storages = {
                tensor.untyped_storage().data_ptr()
                for group in ("faces", "edges", "faceface")
                for tensor in batch[group].values()
                # Edge endpoints go to the index buffer; an empty array has no memory.
                if tensor.dtype != torch.int64 and tensor.numel()
            }
            assert len(storages) == 1
            del batch
    pool = batches.pool
    # One lending per batch (before, one per array: dozens), most of them of a buffer
    # made for an earlier batch.
    assert pool.allocated + pool.reused == 3 * n_batches
    assert pool.reused > 2 * pool.allocated


def test_a_batch_allocator_takes_its_buffers_one_way() -> None:
    from cadstore.dataset.torch_support import BatchAllocator
    from cadstore.dataset.training import BufferPool

    pool = BufferPool()
    with pytest.raises(ValueError, match="not both"):
        BatchAllocator(pool.take, block=pool.take_block)
    # An array the reader did not announce still comes from the pool's blocks.
    allocate = BatchAllocator(block=pool.take_block)
    buffer = allocate("faces", "face_areas", (5, 3), np.dtype("float32"))
    assert buffer.shape == (5, 3) and pool.allocated == 1
    assert allocate.tensors[("faces", "face_areas")].untyped_storage().nbytes() >= 60


def test_batches_kept_by_the_caller_are_never_overwritten(loader: DatasetLoader) -> None:
    dataset, collate = loader.get_dataset("train").to_torch_with_collate()
    reference = list(
        torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False, collate_fn=collate)
    )
    batches = _batch_loader(loader, batch_size=4, shuffle=False, threads=2, prefetch=3)
    kept = list(batches)  # every batch held while the next ones are decoded
    views = [b["faceface"]["d2_distance"][:1] for b in batches]  # views only, batches dropped
    again = list(batches)
    for ours, theirs in zip(kept, reference, strict=True):
        _assert_same(ours, theirs)
    for ours, theirs in zip(again, reference, strict=True):
        _assert_same(ours, theirs)
    for view, theirs in zip(views, reference, strict=True):
        np.testing.assert_array_equal(view.numpy(), theirs["faceface"]["d2_distance"][:1].numpy())


def test_stopping_early_leaves_the_loader_usable(loader: DatasetLoader) -> None:
    batches = _batch_loader(loader, batch_size=4, threads=2, prefetch=2)
    for batch in batches:
        assert len(batch["file_id_code"]) == 4
        break  # the generator is closed here; its readers stay for the next epoch
    with pytest.raises(RuntimeError, match="training step"):
        _train_and_fail(batches)
    assert sum(len(b["file_id_code"]) for b in batches) == len(batches.indices)
    batches.close()  # or a ResourceWarning for the readers' files fails the test


def test_readers_are_kept_across_epochs_and_closed_by_close(
    loader: DatasetLoader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader made for each epoch started each epoch cold: shard indexes, decoded chunks
    # and read plans were thrown away with it.
    made: list[DatasetReader] = []
    init = DatasetReader.__init__

    def counting(self: DatasetReader, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(DatasetReader, "__init__", counting)
    with _batch_loader(loader, batch_size=4, threads=2, prefetch=1) as batches:
        for _ in range(3):
            assert sum(len(b["file_id_code"]) for b in batches) == len(batches.indices)
        assert len(made) == 1  # one, shared by the decoding threads, for every epoch
        assert not any(reader.closed for reader in made)
    assert all(reader.closed for reader in made)


def _fetched_per_epoch(
    loader: DatasetLoader, monkeypatch: pytest.MonkeyPatch, threads: int
) -> list[int]:
    """Bytes the loader's readers fetch from the dataset in each of two epochs."""
    from cadstore.io import sources

    fetched = [0]
    get_range = sources.ZipSource.get_range

    def counting(self: Any, key: str, start: int, length: int) -> bytes | None:
        data = get_range(self, key, start, length)
        fetched[0] += len(data or b"")
        return data

    monkeypatch.setattr(sources.ZipSource, "get_range", counting)
    per_epoch = []
    with _batch_loader(loader, batch_size=4, threads=threads, prefetch=2, seed=3) as batches:
        for _ in range(2):
            fetched[0] = 0
            assert sum(len(b["file_id_code"]) for b in batches) == len(batches.indices)
            per_epoch.append(fetched[0])
    return per_epoch


def test_decoding_threads_share_what_their_reader_learned(
    loader: DatasetLoader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Threads share one reader of a dataset on disk: in the second epoch every item is
    # read through the plans the first made, whichever thread read it then. With a
    # reader per thread about half the items met their reader for the first time
    # (whole chunks fetched and verified again): more bytes than one thread fetches.
    one = _fetched_per_epoch(loader, monkeypatch, threads=1)
    two = _fetched_per_epoch(loader, monkeypatch, threads=2)
    assert 0 < one[1] < one[0]
    assert two[1] == one[1]


def test_threads_sharing_a_reader_read_every_item_right(
    flow: Path, realistic_items: list[Any]
) -> None:
    # Reads plan under the reader's lock and decode (and rebuild triangle-stored rows)
    # after letting it go: four threads through one reader, every group, repeats and
    # items read for the first time mixed, give every item's arrays.
    import threading

    items = realistic_items[:40]
    errors: list[BaseException] = []
    with DatasetReader(flow.with_suffix(".dataset"), cache_bytes=1 << 20) as reader:

        def work(seed: int) -> None:
            try:
                rng = np.random.default_rng(seed)
                for _ in range(12):
                    codes = rng.integers(0, len(items), size=6).tolist()
                    for got, code in zip(reader.read_items(codes), codes, strict=True):
                        source = items[code][1]
                        n = len(source["face_indices"])
                        for name in ("face_areas", "edge_u_grids", "num_nodes"):
                            flat = {a: v for g in got.values() for a, v in g.items()}
                            np.testing.assert_array_equal(
                                flat[name], n if name == "num_nodes" else source[name]
                            )
                        for name in ("d2_distance", "a3_distance", "extended_adjacency"):
                            np.testing.assert_array_equal(
                                got["faceface"][name],
                                np.asarray(source[name]).reshape(
                                    n * n, *np.shape(source[name])[2:]
                                ),
                            )
            except BaseException as exc:  # reported below, with its traceback
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors[0]


def _train_and_fail(batches: BatchLoader) -> None:
    for _ in batches:
        raise RuntimeError("the training step failed")


def test_a_transform_is_refused_with_the_way_that_works(flow: Path) -> None:
    with DatasetLoader(flow_output_file=flow, item_loader_func=_face_count) as ld:
        ld.split("random", random_state=0)
        with pytest.raises(ValueError, match="DataLoader"):
            ld.get_dataset("train").batches()


def _face_count(item: dict[str, Any]) -> int:
    return len(item["faces"]["face_areas"])


def test_the_pool_lends_the_smallest_free_buffer_that_fits() -> None:
    from cadstore.dataset.training import BufferPool

    pool = BufferPool()
    f4 = np.dtype("float32")
    big, small = pool.take((1000,), f4), pool.take((10,), f4)
    big_ptr, small_ptr = big.data_ptr(), small.data_ptr()
    del big, small  # both free again, the large one first in line
    again = pool.take((8,), f4)
    assert again.data_ptr() == small_ptr  # not the large buffer, kept for a large batch
    large = pool.take((900,), f4)
    assert large.data_ptr() == big_ptr
    assert pool.allocated == 2 and pool.reused == 2


def test_pool_buffers_come_in_power_of_two_size_classes() -> None:
    from cadstore.dataset.training import BufferPool

    pool = BufferPool()
    first = pool.take((33, 3), np.dtype("int32"))
    assert first.untyped_storage().nbytes() == 128 * 4  # 99 elements: class 128
    ptr = first.data_ptr()
    del first
    # A larger batch within the class reuses the buffer instead of allocating.
    second = pool.take((42, 3), np.dtype("int32"))
    assert second.data_ptr() == ptr and pool.allocated == 1


@needs_populate_write
def test_a_new_large_pool_buffer_is_mapped_before_a_batch_is_decoded_into_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past malloc's largest threshold (32 MiB) a buffer is fresh memory: its pages are
    mapped in one call as it is made, not faulted in one by one as the batch fills it.
    A reused buffer is not mapped again, nor a small one."""
    from cadstore.dataset import training
    from cadstore.io.native import populate_pages

    calls: list[tuple[int, int]] = []

    def recorded(address: int, nbytes: int) -> bool:
        calls.append((address, nbytes))
        return populate_pages(address, nbytes)

    monkeypatch.setattr(training, "populate_pages", recorded)
    pool = training.BufferPool()
    rows = 48 * 1024 * 1024 // 256
    buffer = pool.take((rows, 64), np.dtype("float32"))
    assert calls == [(buffer.data_ptr(), buffer.nbytes)]
    faults = page_faults_writing(functools.partial(np.ndarray.fill, buffer.numpy(), 1.5))
    assert faults < buffer.nbytes // 4096 // 8, f"{faults} page faults filling a new buffer"
    assert float(buffer[-1, -1]) == 1.5 and pool.allocated == 1
    buffer = None
    again = pool.take((rows - 1, 64), np.dtype("float32"))
    small = pool.take((100, 64), np.dtype("float32"))
    assert pool.reused == 1 and len(calls) == 1
    del again, small


# ------------------------------------------------------------------ worker processes


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_processes_give_the_threads_batches(loader: DatasetLoader, context: str) -> None:
    threads = _batch_loader(loader, batch_size=5, seed=3, threads=2)
    with _batch_loader(
        loader, batch_size=5, seed=3, processes=2, multiprocessing_context=context
    ) as processes:
        for _ in range(2):  # two epochs, through the same workers
            for ours, theirs in zip(list(processes), list(threads), strict=True):
                _assert_same(ours, theirs)
        pids = [w.pid for w in processes._workers.workers]
    assert processes._workers is None  # closed on leaving the block
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_worker_buffers_are_reused_but_kept_batches_never_overwritten(
    loader: DatasetLoader,
) -> None:
    dataset, collate = loader.get_dataset("train").to_torch_with_collate()
    reference = list(
        torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False, collate_fn=collate)
    )
    with _batch_loader(loader, batch_size=4, shuffle=False, processes=2, prefetch=1) as batches:
        for _ in range(2):
            for batch in batches:
                del batch
        # Block ids only grow: a block the training process has not seen before is new.
        seen = [set(ids) for ids in batches._workers.held]
        made = batches_seen = 0
        for _ in range(6):
            for batch in batches:  # let go at once: the same blocks serve every epoch
                del batch
                batches_seen += 1
                for ids, before in zip(batches._workers.held, seen, strict=True):
                    made += len(set(ids) - before)
                    before.update(ids)
        # Without reuse every batch would take a new block (36 here). With it, a worker
        # makes one only when every free block that fits is lent: its batch the loop holds,
        # one waiting to be received and the one it decodes. Which worker draws which batch
        # is a matter of timing, so a worker may meet a large batch while its large blocks
        # are all lent, in any epoch (one epoch alone saw 0 to 3 new blocks, 3 under load);
        # the blocks it keeps then serve it, and over six epochs 80 runs, on an idle and on
        # a loaded machine, made 0 to 3 in all. A block lost an epoch would make 6.
        assert batches_seen == 36
        assert made <= 4, made
        kept = list(batches)  # every batch held while the next ones are decoded
        for ours, theirs in zip(kept, reference, strict=True):
            _assert_same(ours, theirs)


def test_a_worker_batch_is_one_shared_block_and_few_blocks_are_held(
    loader: DatasetLoader,
) -> None:
    """Each worker batch's decoded arrays are views of one shared block (before, a buffer
    per array, in power-of-two sizes, which kept being made, and zeroed, for whole
    epochs), and after several epochs the training process holds only the few blocks the
    workers keep."""
    from cadstore.dataset.processes import FREE_BLOCKS

    train = loader.get_dataset("train")
    expected = list(train.batches(batch_size=4, shuffle=False))
    with train.batches(batch_size=4, shuffle=False, processes=2, prefetch=1) as batches:
        kept = [list(batches) for _ in range(4)]  # four epochs' batches held at once
        for ours, theirs in zip(kept[0], expected, strict=True):
            _assert_same(ours, theirs)  # not overwritten by the epochs after it
        for batch in kept[-1]:
            # The decoded arrays (graph/edges_* are made anew by the collate, in int64).
            storages = {
                tensor.untyped_storage().data_ptr()
                for group in ("faces", "edges", "faceface")
                for tensor in batch[group].values()
            }
            assert len(storages) == 1, storages
        many = [len(blocks) for blocks in batches._workers.held]
        del kept, batch
        for _ in range(2):
            for batch in batches:  # let go at once
                del batch
        few = [len(blocks) for blocks in batches._workers.held]
    # Each worker keeps FREE_BLOCKS free blocks beyond those its batches under way hold
    # (one decoding, one queued, one the loop holds); the training process forgets the rest.
    assert sum(many) == 4 * len(expected)
    assert sum(few) < sum(many), (few, many)
    assert all(0 < n <= FREE_BLOCKS + 3 for n in few), few


def test_a_failed_batchs_error_carries_copies_not_views_of_its_block() -> None:
    """The error of a failed batch travels as a copy: a tensor of the batch it names is
    not a view of the block the worker lends to its next batch."""
    from cadstore.dataset.processes import SharedBufferPool, _WorkerFailed

    pool = SharedBufferPool()
    block = pool.take_block(4096)
    view = block[:16].view(torch.float32)
    view.fill_(1.0)
    failed = _WorkerFailed(ValueError("bad batch", view))
    pool.abandon()
    again = pool.take_block(4096)  # the next batch, decoded into the same block
    assert again.data_ptr() == block.data_ptr()
    again.fill_(0)
    assert isinstance(failed.exc, ValueError) and failed.exc.args[0] == "bad batch"
    carried = failed.exc.args[1]
    assert carried.untyped_storage().data_ptr() != block.data_ptr()
    assert torch.equal(carried, torch.ones(4)), carried
    assert "bad batch" in failed.text


def test_the_shared_pool_lends_the_smallest_free_block_and_keeps_the_largest() -> None:
    from cadstore.dataset.processes import FREE_BLOCKS, SharedBufferPool
    from cadstore.dataset.worker_memory import block_capacity

    pool = SharedBufferPool()
    sizes = [(n + 1) * 100_000 for n in range(FREE_BLOCKS + 2)]
    blocks = [pool.take_block(n) for n in sizes]
    assert [b.numel() for b in blocks] == sizes
    assert [b.untyped_storage().nbytes() for b in blocks] == [block_capacity(n) for n in sizes]
    used, new, dropped = pool.lent_now()
    assert used == sorted(new) and len(used) == FREE_BLOCKS + 2 and dropped == []
    assert pool.ident_of(blocks[2][64:].view(torch.float32)) == used[2]
    assert pool.ident_of(torch.zeros(3)) is None
    pointers = {i: b.data_ptr() for i, b in zip(used, blocks, strict=True)}
    del blocks
    pool.release(used)
    # The FREE_BLOCKS largest stay; the two smallest are let go, named with the next batch.
    again = pool.take_block(150_000)
    assert again.data_ptr() == pointers[used[2]]  # the smallest kept one that fits
    assert pool.ident_of(again) == used[2]
    now, new, dropped = pool.lent_now()
    assert now == [used[2]] and new == {} and dropped == used[:2]
    assert pool.allocated == FREE_BLOCKS + 2 and pool.reused == 1
    # A batch that failed gives its new block back, which a later one then sends.
    failed = pool.take_block(10 * sizes[-1])
    pool.abandon()
    assert pool.ident_of(failed) is None
    later = pool.take_block(10 * sizes[-1])
    assert later.data_ptr() == failed.data_ptr()
    now, new, _ = pool.lent_now()
    assert list(new) == now


def test_stopping_early_leaves_the_workers_ready(loader: DatasetLoader) -> None:
    with _batch_loader(loader, batch_size=3, seed=1, processes=2, prefetch=2) as batches:
        for i, _ in enumerate(batches):
            if i == 1:
                break
        batches.set_epoch(0)
        full = [c for b in batches for c in b["file_id_code"].tolist()]
        assert sorted(full) == sorted(loader.get_dataset("train").indices.tolist())


def test_a_worker_error_reaches_the_caller(realistic_items: list[Any], tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    cadstore.merge([str(p) for p, _, _ in realistic_items[:12]], str(folder / "parts.dataset"))
    with DatasetLoader(flow_output_file=folder / "parts.flow") as ld:
        ld.split("random", train=0.8, validation=0.1, test=0.1, random_state=0)
        batches = ld.get_dataset("train").batches(batch_size=4, processes=2)
        _spoil_face_pairs(folder / "parts.dataset")
        with pytest.raises(CorruptStoreError, match=r"parts\.dataset"), batches:
            list(batches)


def _spoil_face_pairs(path: Path) -> None:
    """Flip one byte inside every face-pair chunk member of a zip dataset, in place."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if "faceface" in i.filename and "/c/" in i.filename]
    data = bytearray(path.read_bytes())
    for info in infos:
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_killed_worker_is_an_error_not_a_hang(loader: DatasetLoader) -> None:
    with _batch_loader(loader, batch_size=2, processes=2, prefetch=0) as batches:
        iterator = iter(batches)
        next(iterator)
        os.kill(batches._workers.workers[1].pid, signal.SIGKILL)
        # Gone before the loop goes on: until the kernel has ended it, the other worker
        # could decode every batch left and the epoch end without anyone waiting on it.
        batches._workers.workers[1].join(10)
        with pytest.raises(RuntimeError, match="exited unexpectedly"):
            for _ in iterator:
                pass
        assert batches._workers.closed  # stopped, not left waiting


class _ReinterpretingCollate:
    """A collate whose batch holds views of the decoded buffers under other dtypes, and a
    sparse tensor: what goes back from a worker must be what the collate made."""

    def __init__(self) -> None:
        from cadstore.dataset.torch_support import GraphCollate

        self.inner = GraphCollate()

    def __call__(self, items: Any) -> Any:
        batch = self.inner(items)
        areas = batch["faces"]["face_areas"]
        return {
            "file_id_code": batch["file_id_code"],
            "areas": areas,
            "area_bits": areas.view(torch.int32)[1:],
            "area_bytes": areas.view(torch.uint8),
            "sparse": torch.sparse_coo_tensor(
                [[0, 1]], areas[:2].clone(), (4,), check_invariants=True
            ),
        }


def test_a_killed_worker_ends_its_pipe(loader: DatasetLoader) -> None:
    # A worker killed in the middle of sending a batch must not leave the training
    # process reading the rest of it forever: its pipe's sending end lives in that worker
    # alone, so its death ends the pipe (through one queue shared by every worker, whose
    # sending end the training process held too, a half-sent batch was never finished).
    import multiprocessing.connection

    with _batch_loader(loader, batch_size=2, processes=2, prefetch=0) as batches:
        iterator = iter(batches)
        next(iterator)
        workers = batches._workers
        os.kill(workers.workers[1].pid, signal.SIGKILL)
        workers.workers[1].join(10)
        pipe = workers.results[1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if multiprocessing.connection.wait([pipe], timeout=0.2):
                try:
                    pipe.recv()  # a batch it sent whole before it died, if any
                except EOFError:
                    break
                except OSError:
                    # A batch sent whole, but whose new buffers were to come through the
                    # worker itself (torch shares their descriptors on request): gone with it.
                    continue
        else:
            pytest.fail("the killed worker's pipe did not end")
        with pytest.raises(RuntimeError, match="exited unexpectedly"):
            for _ in iterator:
                pass


def _assert_next_epoch_on_fresh_workers(
    batches: BatchLoader, stopped: Any, loader: DatasetLoader, seed: int
) -> None:
    """The epoch after one stopped on worker processes ``stopped``: new workers, giving
    the batches a thread loader gives in its second epoch (batches of 2, ``seed``)."""
    got = [b["file_id_code"] for b in batches]
    assert batches._workers is not stopped
    reference = _batch_loader(loader, batch_size=2, seed=seed)
    list(reference)  # the first epoch: the one stopped
    expected = [b["file_id_code"] for b in reference]
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected, strict=True):
        assert torch.equal(ours, theirs)


def test_an_epoch_stopped_after_a_worker_died_closes_quietly(loader: DatasetLoader) -> None:
    # Stopping an epoch early receives the batches still under way; when a worker has
    # died meanwhile, that must not raise out of the generator's close() (a training loop's
    # ``break`` or the garbage collector would report it as an exception nobody can catch),
    # and the next epoch starts on fresh workers.
    with _batch_loader(loader, batch_size=2, seed=3, processes=2, prefetch=1) as batches:
        iterator = iter(batches)
        next(iterator)
        first = batches._workers
        dead = first.workers[1]
        os.kill(dead.pid, signal.SIGKILL)
        dead.join(10)
        iterator.close()
        assert first.closed
        assert not any(worker.is_alive() for worker in first.workers)
        _assert_next_epoch_on_fresh_workers(batches, first, loader, seed=3)


def test_an_interrupt_while_an_epoch_stops_closes_the_workers(
    loader: DatasetLoader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C while the batches under way are received goes through, and the pool closes:
    # kept, its batches still on their way would be taken for the next epoch's.
    with _batch_loader(loader, batch_size=2, seed=4, processes=2, prefetch=2) as batches:
        iterator = iter(batches)
        next(iterator)
        first = batches._workers

        def interrupted(index: int) -> Any:
            raise KeyboardInterrupt

        monkeypatch.setattr(first, "_receive", interrupted)
        with pytest.raises(KeyboardInterrupt):
            iterator.close()
        assert first.closed
        _assert_next_epoch_on_fresh_workers(batches, first, loader, seed=4)


def test_worker_batches_keep_views_of_other_dtypes_and_sparse_tensors(
    loader: DatasetLoader,
) -> None:
    train = loader.get_dataset("train")
    options = {"batch_size": 4, "seed": 2, "collate_fn": _ReinterpretingCollate()}
    expected = list(train.batches(**options))
    with train.batches(**options, processes=2) as batches:
        got = list(batches)
    for ours, theirs in zip(got, expected, strict=True):
        for key in ("file_id_code", "areas", "area_bits", "area_bytes"):
            assert ours[key].dtype == theirs[key].dtype, key
            assert torch.equal(ours[key], theirs[key]), key
        assert torch.equal(ours["sparse"].to_dense(), theirs["sparse"].to_dense())


def test_sparse_tensors_received_from_workers_are_not_kept_for_torch_load(
    loader: DatasetLoader, tmp_path: Path
) -> None:
    """Torch rebuilds an unpickled sparse tensor into a global list that ``torch.load``
    checks and empties; batches received from worker processes left theirs there: every
    sparse tensor a worker ever sent stayed alive, and every later
    ``torch.load(weights_only=True)`` of the process warned about them."""
    import torch._utils

    train = loader.get_dataset("train")
    options = {"batch_size": 4, "seed": 2, "collate_fn": _ReinterpretingCollate()}
    before = list(torch._utils._sparse_tensors_to_validate)
    with train.batches(**options, processes=2) as batches:
        got = list(batches)
    assert got and all(b["sparse"].is_sparse for b in got)
    after = torch._utils._sparse_tensors_to_validate
    assert len(after) == len(before) and all(a is b for a, b in zip(after, before, strict=True))
    torch.save({"x": torch.arange(3)}, tmp_path / "plain.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(
            torch.load(tmp_path / "plain.pt", weights_only=True)["x"], torch.arange(3)
        )


#: A sparse tensor another thread's ``torch.load`` rebuilds while a batch is unpickled.
_FOREIGN: list[Any] = []


def _foreign_load() -> str:
    tensor = torch.sparse_coo_tensor([[0]], [1.0], (2,), check_invariants=True)
    _FOREIGN.append(tensor)
    torch._utils._sparse_tensors_to_validate.append(tensor)
    return "loaded elsewhere"


class _LoadedElsewhere:
    def __reduce__(self) -> tuple[Any, ...]:
        return _foreign_load, ()


def test_only_the_batchs_own_sparse_tensors_are_taken_off_torchs_list() -> None:
    """What another thread's ``torch.load`` put on the list meanwhile stays there, for it to
    check (a checkpoint loaded with ``weights_only=True`` is validated through it)."""
    import io
    import pickle

    import torch._utils

    from cadstore.dataset.processes import _Unpickler

    sparse = torch.sparse_coo_tensor([[0, 2]], [1.0, 2.0], (4,), check_invariants=True)
    payload = pickle.dumps({"sparse": sparse, "other": _LoadedElsewhere()}, protocol=5)
    pending = torch._utils._sparse_tensors_to_validate
    before = list(pending)
    try:
        got = _Unpickler(io.BytesIO(payload), {}, torch).load()
        assert torch.equal(got["sparse"].to_dense(), sparse.to_dense())
        assert got["other"] == "loaded elsewhere"
        assert len(pending) == len(before) + 1 and pending[-1] is _FOREIGN[-1]
        assert not any(t is got["sparse"] for t in pending)
    finally:
        pending[:] = [t for t in pending if not any(t is f for f in _FOREIGN)]
        _FOREIGN.clear()


def test_a_suspended_epoch_does_not_leak_into_the_next(loader: DatasetLoader) -> None:
    with _batch_loader(loader, batch_size=3, seed=5, processes=2) as batches:
        peek = next(iter(batches))  # as in a notebook: one batch, iterator left suspended
        assert len(peek["file_id_code"]) == 3
        batches.set_epoch(0)
        codes = [c for b in batches for c in b["file_id_code"].tolist()]
        assert codes[:3] == peek["file_id_code"].tolist()
        assert sorted(codes) == sorted(loader.get_dataset("train").indices.tolist())


class _HeavyCollate:
    """A collate adding 2 MB that travel by value: more than a pipe holds."""

    def __init__(self) -> None:
        from cadstore.dataset.torch_support import GraphCollate

        self.inner = GraphCollate()

    def __call__(self, items: Any) -> Any:
        batch = self.inner(items)
        batch["ballast"] = torch.ones(1 << 19)
        return batch


def test_closing_stops_workers_still_sending(loader: DatasetLoader) -> None:
    # A peek leaves batches under way; the workers sending them block on a full pipe.
    # Closing the training process's ends makes their sends fail, so they stop on their
    # own: a forked worker used to hold copies of those ends, its send never failed, and
    # close() waited for it, then killed it.
    subset = loader.get_dataset("train")
    batches = subset.batches(batch_size=2, processes=2, prefetch=2, collate_fn=_HeavyCollate())
    first = next(iter(batches))
    assert first["ballast"].shape == (1 << 19,)
    workers = batches._workers.workers
    batches.close()
    assert [w.exitcode for w in workers] == [0, 0]


def test_a_suspended_thread_epoch_resumed_after_close_is_refused(loader: DatasetLoader) -> None:
    batches = _batch_loader(loader, batch_size=2, threads=2, prefetch=0)
    epoch = iter(batches)
    next(epoch)
    batches.close()
    with pytest.raises(RuntimeError, match="closed during the epoch"):
        list(epoch)  # and no reader is left open (a ResourceWarning fails the test)
    assert sum(len(b["file_id_code"]) for b in batches) == len(batches.indices)
    batches.close()


_COLLATE_THREADS = """
import os, sys
import numpy as np
import torch
from cadstore.dataset.torch_support import GraphCollate

torch.set_num_threads(2)
rng = np.random.default_rng(0)
items = []
for code in range(4):
    # One item's edges many: shifting them with torch would take a parallel region.
    faces, edges = 3 + code, 5 + code + (200_000 if code == 3 else 0)
    items.append({
        "file_id_code": code,
        "name": f"item{code}",
        "faces": {"face_areas": rng.random(faces).astype(np.float32)},
        "graph": {
            "edges_source": rng.integers(0, faces, edges).astype(np.int32),
            "edges_destination": rng.integers(0, faces, edges).astype(np.int32),
            "num_nodes": np.int64(faces),
        },
    })
    # Large enough that torch.cat would concatenate them in a parallel region.
    items[-1]["faces"]["face_grid"] = rng.random((faces, 256, 256)).astype(np.float32)
# Items as TorchCADDataset gives them without numpy batches: tensors.
tensors = [
    {k: {a: torch.from_numpy(np.asarray(v)) for a, v in g.items()} if isinstance(g, dict) else g
     for k, g in it.items()}
    for it in items
]
torch.zeros(8) + 1  # torch's own start-up, outside what is counted
before = len(os.listdir("/proc/self/task"))
batch = GraphCollate()(items)
from_tensors = GraphCollate()(tensors)
after = len(os.listdir("/proc/self/task"))
first = np.concatenate([[0], np.cumsum([3, 4, 5, 6])[:-1]])
expected = np.concatenate(
    [it["graph"]["edges_source"] + f for it, f in zip(items, first)]
)
assert np.array_equal(batch["edge_index"][0].numpy(), expected)
for b in (batch, from_tensors):
    assert b["faces"]["face_areas"].dtype == torch.float32
    assert torch.equal(b["faces"]["face_areas"], batch["faces"]["face_areas"])
    assert torch.equal(b["faces"]["face_grid"], batch["faces"]["face_grid"])
    assert torch.equal(b["edge_index"], batch["edge_index"])
    assert torch.equal(b["num_nodes"], torch.tensor([3, 4, 5, 6]))
print(before, after)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_collating_a_batch_starts_no_openmp_threads() -> None:
    """GraphCollate runs no parallel region of torch's: after one, torch's OpenMP threads
    spin for a while, taking a core from the threads decoding the next batches and from
    the model (libgomp starts them at the first parallel region, so counting the
    process's threads shows whether one ran)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _COLLATE_THREADS],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert after == before, f"{after - before} thread(s) started by collating one batch"


def test_edge_arrays_of_other_groups_are_shifted_to_batch_nodes_each() -> None:
    """Endpoint arrays in groups of different lengths make no ``edge_index``; each is
    shifted by its item's first node in the batch, as int64, whatever its stored dtype."""
    import torch

    from cadstore.dataset.torch_support import GraphCollate

    rng = np.random.default_rng(3)
    items = []
    for code, (faces, edges, coedges) in enumerate([(3, 4, 8), (1, 0, 0), (5, 7, 13)]):
        items.append(
            {
                "file_id_code": code,
                "name": f"item{code}",
                "faces": {"face_areas": rng.random(faces).astype(np.float32)},
                "graph": {"edges_source": rng.integers(0, faces, edges).astype(np.int32)},
                "coedges": {"coedge_face": rng.integers(0, faces, coedges).astype(np.uint8)},
            }
        )
    collate = GraphCollate(
        edge_arrays=[("graph", "edges_source"), ("coedges", "coedge_face")], num_nodes=None
    )
    batch = collate(items)
    assert "edge_index" not in batch
    first = [0, 3, 4]
    for group, array in (("graph", "edges_source"), ("coedges", "coedge_face")):
        expected = np.concatenate(
            [it[group][array].astype(np.int64) + f for it, f in zip(items, first, strict=True)]
        )
        got = batch[group][array]
        assert got.dtype == torch.int64
        assert np.array_equal(got.numpy(), expected), (group, array)
    assert batch["num_nodes"].tolist() == [3, 1, 5]
    assert batch["batch"].tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2]
