"""DataLoader workers reuse a batch's shared memory once the training process lets it go.

Real ``DataLoader`` workers (fork and spawn) on a merged realistic dataset: blocks come
back (the same shared-memory file carries several batches), and nothing the training code
still holds, a whole batch or a slice of one, is ever overwritten.
"""

from __future__ import annotations

import copy
import gc
import multiprocessing
import os
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cadstore
from cadstore.dataset import DatasetLoader
from conftest import needs_populate_write, page_faults_writing, write_items

torch = pytest.importorskip("torch")

from cadstore.dataset import torch_support, worker_memory  # noqa: E402
from cadstore.dataset.worker_memory import (  # noqa: E402
    KEPT,
    WAITING,
    RecycledBatch,
    WorkerBlocks,
    block_capacity,
)

ARRAYS = (("faces", "face_areas"), ("faceface", "d2_distance"), ("graph", "edges_source"))


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("worker-memory")
    items = write_items(root / "encoded", 40, seed=5)
    cadstore.merge([str(p) for p, _, _ in items], str(root / "parts.dataset"))
    return root / "parts.flow"


@pytest.fixture
def loader(flow: Path) -> Iterator[DatasetLoader]:
    with DatasetLoader(flow_output_file=flow) as ld:
        ld.split("random", train=1.0, validation=0.0, test=0.0, random_state=0)
        yield ld


def _expected(loader: DatasetLoader, codes: list[int]) -> dict[tuple[str, str], np.ndarray]:
    items = [loader.item_source.read(c) for c in codes]
    out = {}
    for group, array in ARRAYS:
        values = [item[group][array] for item in items]
        if array == "edges_source":
            starts = np.cumsum([0] + [len(item["faces"]["face_areas"]) for item in items])
            values = [v + s for v, s in zip(values, starts[:-1], strict=True)]
        out[(group, array)] = np.concatenate(values)
    return out


def _check(batch: dict[str, Any], expected: dict[tuple[str, str], np.ndarray]) -> None:
    for (group, array), want in expected.items():
        np.testing.assert_array_equal(batch[group][array].numpy(), want)


def _inode(tensor: Any) -> int:
    """The shared-memory file holding ``tensor`` (one per block)."""
    return os.fstat(tensor.untyped_storage()._share_fd_cpu_()[0]).st_ino


def _batches(loader: DatasetLoader, method: str, **kwargs: Any) -> Any:
    dataset, collate = loader.get_dataset("train").to_torch_with_collate()
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=2,
        num_workers=2,
        collate_fn=kwargs.pop("collate_fn", collate),
        multiprocessing_context=method,
        **kwargs,
    )


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_blocks_are_reused_and_every_batch_is_right(loader: DatasetLoader, method: str) -> None:
    seen, blocks = 0, set()
    for batch in _batches(loader, method):
        assert type(batch) is dict
        _check(batch, _expected(loader, batch["file_id_code"].tolist()))
        blocks.add(_inode(batch["faces"]["face_areas"]))
        seen += 1
    assert seen == 20
    # Each worker makes a few blocks and then fills them again: fewer files than batches
    # (before, every batch came in new segments).
    print(f"{len(blocks)} blocks for {seen} batches")
    assert len(blocks) < seen


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_what_the_training_code_keeps_is_never_overwritten(
    loader: DatasetLoader, method: str
) -> None:
    """Whole batches kept, and slices of batches whose dict was dropped, keep their
    values to the end of the epoch while the workers go on reusing what was let go."""
    kept, slices, blocks = [], [], set()
    for number, batch in enumerate(_batches(loader, method, persistent_workers=True)):
        blocks.add(_inode(batch["faces"]["face_areas"]))
        codes = batch["file_id_code"].tolist()
        if number % 4 == 0:
            index = {k: batch[k].clone() for k in ("file_id_code", "batch", "edge_index")}
            index["ptr"] = batch["ptr"]["faces"].clone()
            kept.append((batch, _expected(loader, codes), index))
        elif number % 4 == 1:
            want = _expected(loader, codes)[("faceface", "d2_distance")][:5]
            slices.append((batch["faceface"]["d2_distance"][:5], want))
    assert len(blocks) < number + 1  # reuse happened meanwhile
    for batch, expected, index in kept:
        _check(batch, expected)
        for key in ("file_id_code", "batch", "edge_index"):
            assert torch.equal(batch[key], index[key])
        assert torch.equal(batch["ptr"]["faces"], index["ptr"])
    for values, want in slices:
        np.testing.assert_array_equal(values.numpy(), want)


def test_a_collate_that_rebuilds_the_batch_gets_fresh_memory(loader: DatasetLoader) -> None:
    """A batch that leaves the worker as another object is not tracked: its blocks are
    never reused, and every batch is still right."""
    collate = loader.get_dataset("train").to_torch_with_collate()[1]
    blocks = set()
    for batch in _batches(loader, "fork", collate_fn=_Rebuild(collate)):
        _check(batch, _expected(loader, batch["file_id_code"].tolist()))
        blocks.add(_inode(batch["faces"]["face_areas"]))
    assert len(blocks) == 20


class _Rebuild:
    """A collate function that turns the collated batch into a new dict (picklable)."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        return dict(self.collate(items))


class _KeepAll:
    """A collate function that keeps every batch it made in the worker (a cache, say)
    and fails if a later batch overwrote one."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate
        self.made: list[tuple[Any, Any]] = []

    def __call__(self, items: list[Any]) -> Any:
        for batch, kept in self.made:
            if not torch.equal(batch["faceface"]["d2_distance"], kept):
                raise AssertionError("a batch kept in the worker was overwritten")
        batch = self.collate(items)
        self.made.append((batch, batch["faceface"]["d2_distance"].clone()))
        return batch


def test_what_the_worker_keeps_is_never_overwritten(loader: DatasetLoader) -> None:
    collate = loader.get_dataset("train").to_torch_with_collate()[1]
    seen = 0
    for batch in _batches(loader, "fork", collate_fn=_KeepAll(collate)):
        _check(batch, _expected(loader, batch["file_id_code"].tolist()))
        seen += 1
    assert seen == 20


# ------------------------------------------------------------------ the worker's side alone
def _release(blocks: WorkerBlocks, slot: int, gen: int) -> None:
    worker_memory._released(blocks.board.numpy(), slot, gen, os.getpid())


def test_a_block_is_reused_only_once_the_board_frees_it() -> None:
    blocks = WorkerBlocks()
    first = blocks.take(1000)
    pointer = first.data_ptr()
    entries = blocks.handed()
    assert [(slot, gen) for slot, gen, _ in entries] == [(0, 1)]
    blocks.commit(entries)
    del first, entries
    second = blocks.take(800)  # the first is still held by the training process
    assert second.data_ptr() != pointer and blocks.made == 2
    blocks.commit(blocks.handed())
    _release(blocks, 0, 1)
    third = blocks.take(900)
    assert third.data_ptr() == pointer and blocks.reused == 1
    assert blocks.take(10**6).data_ptr() not in (pointer, second.data_ptr())
    # A late release of an older generation never takes the board back.
    _release(blocks, 0, 0)
    assert int(blocks.board[0]) == 1


def test_a_block_the_worker_still_uses_is_not_reused() -> None:
    """Freed on the board, but a tensor of the worker (a kept batch) still views it."""
    blocks = WorkerBlocks()
    kept = blocks.take(1000)[:10]
    pointer = kept.data_ptr()
    blocks.commit(blocks.handed())
    _release(blocks, 0, 1)
    other = blocks.take(1000)
    assert other.data_ptr() != pointer
    blocks.commit(blocks.handed())
    del kept
    gc.collect()
    assert blocks.take(1000).data_ptr() == pointer


def test_a_block_never_sent_is_let_go() -> None:
    """Taken for a batch that never reaches ``commit`` (another collate function made the
    batch): the worker keeps no reference to it and its slot is free again."""
    blocks = WorkerBlocks()
    block = blocks.take(1000)
    storage = weakref.ref(block.untyped_storage())
    del block
    gc.collect()
    assert storage() is None
    assert blocks.handed() == []
    again = blocks.take(1000)
    assert blocks.made == 2
    assert [(slot, gen) for slot, gen, _ in blocks.handed()] == [(0, 2)]
    assert again.numel() == 1000


def test_only_a_few_blocks_are_kept() -> None:
    blocks = WorkerBlocks()
    taken = [blocks.take((n + 1) * 4 * 1024 * 1024) for n in range(KEPT + 2)]
    taken += [blocks.take(64) for _ in range(KEPT + 2)]
    entries = blocks.handed()
    del taken
    for slot, gen, _ in entries:
        _release(blocks, slot, gen)
    blocks.commit(entries)
    del entries
    sizes = sorted(block.numel() for block, _, _ in blocks._sent.values())
    # KEPT small ones and the KEPT largest: the two smallest large blocks went.
    assert sizes == sorted(
        [block_capacity(64)] * KEPT
        + [block_capacity((n + 1) * 4 * 1024 * 1024) for n in range(2, KEPT + 2)]
    )
    # Of the blocks the training process still holds, the WAITING sent last are kept.
    held = WorkerBlocks()
    sent, views = [], []
    for _ in range(WAITING + 3):
        views.append(held.take(64))  # the training process's views, say
        (entry,) = held.handed()
        held.commit([entry])
        sent.append(entry[0])
    assert sorted(held._sent) == sorted(sent[3:])


def test_a_release_counts_only_in_the_process_that_received_the_block() -> None:
    """A process forked from the training process drops its copies of a batch: that says
    nothing about the training process's use of the block."""
    blocks = WorkerBlocks()
    worker_memory._released(blocks.board.numpy(), 0, 5, os.getpid() + 1)
    assert int(blocks.board[0]) == -1


def test_a_recycled_batch_sends_only_the_blocks_it_uses() -> None:
    blocks = WorkerBlocks()
    used = blocks.take(64)
    unused = blocks.take(64)  # arrays decoded for items the collate did not get
    batch = RecycledBatch({"a": used.view(torch.int64)}, blocks)
    assert [slot for slot, _, _ in batch.entries] == [0]
    assert type(copy.copy(batch)) is dict and blocks._sent == {}
    rebuild, args = batch.__reduce__()
    out = rebuild(*args)
    # The block's memory (mapped anew on the training side, as from another process).
    assert type(out) is dict and _inode(out["a"]) == _inode(used)
    used[:8] = 9
    assert out["a"][0].item() == int.from_bytes(bytes([9] * 8), "little")
    assert list(blocks._sent) == [0]
    del unused


def test_the_training_side_frees_a_block_only_when_no_view_is_left() -> None:
    """``_received`` frees a block on the board once nothing uses its storage, and never
    for a block that is not the batch's own memory."""
    board = torch.full((4,), -1, dtype=torch.int64)
    block = torch.zeros(4096, dtype=torch.uint8)
    batch = {"faces": {"face_areas": block[:64].view(torch.float32)}, "name": ["a"]}
    out = worker_memory._received(batch, board, [(1, 3, block)])
    kept = out["faces"]["face_areas"][2:5]
    del out, batch, block
    gc.collect()
    assert int(board[1]) == -1  # a slice of the batch is still in use
    del kept
    gc.collect()
    assert int(board[1]) == 3
    # A block mapped apart from the batch's tensors is never freed by them.
    other = torch.zeros(4096, dtype=torch.uint8)
    worker_memory._received({"a": torch.zeros(8)}, board, [(2, 1, other)])
    del other
    gc.collect()
    assert int(board[2]) == -1


@needs_populate_write
def test_a_new_block_is_mapped_before_the_batch_is_decoded_into_it() -> None:
    """A new segment's pages are mapped in one call, not faulted in one by one as the
    reader first writes each (about twice the kernel time for a whole-item batch)."""
    nbytes = 32 * 1024 * 1024
    blocks = WorkerBlocks()
    block = blocks.take(nbytes)
    faults = page_faults_writing(lambda: block.numpy().fill(7))
    assert faults < nbytes // 4096 // 8, f"{faults} page faults writing a new block"
    assert int(block[::4096].sum()) == 7 * (nbytes // 4096)
    # Only the batch's bytes are mapped; the block has room beyond them (its capacity),
    # for a larger batch later.
    whole = blocks.handed()[0][2]
    assert whole.numel() == block_capacity(nbytes) > nbytes


def _frozen_in_worker(batch: Any) -> int:
    """A collate function reporting how many objects the worker has frozen."""
    return gc.get_freeze_count()


@pytest.mark.parametrize(
    ("form", "method"),
    [("batches", "fork"), ("items", "fork"), ("graphs", "fork"), ("batches", "spawn")],
)
def test_a_worker_freezes_what_it_inherited_and_the_training_process_nothing(
    loader: DatasetLoader, method: str, form: str
) -> None:
    """Each worker takes what it started with out of the collector's sight on its first
    read (its full collections would walk the training process's objects again and
    again); the training process itself is left as it was."""
    subset = loader.get_dataset("train")
    if form == "batches":
        dataset = subset.to_torch_with_collate()[0]
    elif form == "graphs":
        dataset = subset.to_torch()
    else:
        dataset = torch_support.TorchCADDataset(loader.item_source, subset.indices)
    before = gc.get_freeze_count()
    # Read in the training process first: it freezes nothing there, and its forked
    # workers still freeze theirs.
    dataset[0]
    assert gc.get_freeze_count() == before
    counts = list(
        torch.utils.data.DataLoader(
            dataset,
            batch_size=4,
            num_workers=2,
            collate_fn=_frozen_in_worker,
            multiprocessing_context=method,
        )
    )
    assert len(counts) == 10
    # Everything the worker had once torch and cadstore were loaded: tens of thousands.
    assert min(counts) > 10_000, counts
    assert gc.get_freeze_count() == before


def test_a_batch_loader_worker_freezes_what_it_inherited(loader: DatasetLoader) -> None:
    before = gc.get_freeze_count()
    with loader.get_dataset("train").batches(
        4, processes=1, collate_fn=_frozen_in_worker, shuffle=False
    ) as batches:
        counts = list(batches)
    assert len(counts) == 10 and min(counts) > 10_000, counts
    assert gc.get_freeze_count() == before


# ------------------------------------------------------------ blocks kept between epochs
@pytest.fixture
def none_kept() -> Iterator[None]:
    """Each test starts and ends with no block kept by this process."""
    worker_memory.release_kept_blocks()
    yield
    worker_memory.release_kept_blocks()


def _epoch_loader(loader: DatasetLoader, method: str = "fork") -> Any:
    """Workers started anew at every epoch (no ``persistent_workers``), batches of 4."""
    dataset, collate = loader.get_dataset("train").to_torch_with_collate()
    return torch.utils.data.DataLoader(
        dataset, batch_size=4, num_workers=2, collate_fn=collate, multiprocessing_context=method
    )


def _kept_inodes() -> set[int]:
    kept = worker_memory._KEPT[0]
    return set() if kept is None else {inode for _, _, inode in kept.blocks.values()}


def _checked_epoch(
    loader: DatasetLoader, batches: Any, keep: int = 0
) -> tuple[set[int], list[Any]]:
    """One epoch, every batch checked as it arrives: the blocks its arrays came in, and
    every ``keep``-th batch (with what it must hold), kept."""
    inodes, kept = set(), []
    for number, batch in enumerate(batches):
        want = _expected(loader, batch["file_id_code"].tolist())
        _check(batch, want)
        inodes.add(_inode(batch["faceface"]["d2_distance"]))
        if keep and number % keep == 0:
            kept.append((batch, want))
    return inodes, kept


def test_later_epochs_workers_fill_the_blocks_earlier_ones_made(
    loader: DatasetLoader, none_kept: None
) -> None:
    """Each epoch forks new workers; they take the blocks the training process kept from
    the workers before them instead of making new ones (whose pages the kernel clears),
    and every batch is right."""
    batches = _epoch_loader(loader)
    _checked_epoch(loader, batches)
    first = _kept_inodes()
    assert 0 < len(first) <= worker_memory.KEPT_BETWEEN_EPOCHS
    for _ in range(2):
        inodes, _ = _checked_epoch(loader, batches)
        assert inodes & first  # batches decoded into blocks an earlier epoch made


def test_a_batch_kept_from_an_earlier_epoch_is_never_overwritten(
    loader: DatasetLoader, none_kept: None
) -> None:
    """Some batches of the first epoch kept (whole, or a slice of one), the others let go:
    later epochs' workers take the blocks let go and never those kept."""
    batches = _epoch_loader(loader)
    _, held = _checked_epoch(loader, batches, keep=3)
    first = _kept_inodes()
    slices = [
        (b["faceface"]["d2_distance"][:3], want[("faceface", "d2_distance")][:3])
        for b, want in held[::2]
    ]
    held = held[1::2]  # the others' dicts dropped, slices of them kept
    taken = set()
    for _ in range(2):
        inodes, _ = _checked_epoch(loader, batches)
        taken |= inodes & first
    assert taken  # kept blocks were filled again meanwhile
    for batch, want in held:
        _check(batch, want)
    for values, want_rows in slices:
        np.testing.assert_array_equal(values.numpy(), want_rows)


def test_two_loaders_at_once_never_share_a_kept_block(
    loader: DatasetLoader, none_kept: None
) -> None:
    first, second = _epoch_loader(loader), _epoch_loader(loader)
    _checked_epoch(loader, first)  # blocks kept, none held
    assert _kept_inodes()
    held = []
    for _ in range(2):
        for number, (one, other) in enumerate(zip(first, second, strict=True)):
            for batch in (one, other):
                want = _expected(loader, batch["file_id_code"].tolist())
                _check(batch, want)
                if number % 4 == 0:
                    held.append((batch, want))
    for batch, want in held:
        _check(batch, want)


def test_spawned_workers_blocks_are_not_kept_and_kept_blocks_can_be_let_go(
    loader: DatasetLoader, none_kept: None
) -> None:
    for batch in _epoch_loader(loader, "spawn"):
        _check(batch, _expected(loader, batch["file_id_code"].tolist()))
    assert worker_memory._KEPT[0] is None or not _kept_inodes()
    assert sum(1 for _ in _epoch_loader(loader))
    kept = worker_memory._KEPT[0]
    assert kept is not None and kept.blocks
    worker_memory.release_kept_blocks()
    assert worker_memory._KEPT[0] is None and not kept.blocks
    assert (kept.board[:, kept.OWNER] == -1).all()  # a worker forked before: nothing to take
    for batch in _epoch_loader(loader):
        _check(batch, _expected(loader, batch["file_id_code"].tolist()))


def _claims_in_child(kept: worker_memory.KeptBlocks, sizes: list[int]) -> list[bool]:
    """``kept.claim(n)`` for each of ``sizes`` in a forked child, the storages kept: which
    got a block."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        storages = [kept.claim(n) for n in sizes]
        send.send([s is not None for s in storages])

    process = context.Process(target=child)
    process.start()
    try:
        assert receive.poll(60), "the child did not answer"
        return receive.recv()  # type: ignore[no-any-return]
    finally:
        process.join(10)


def _zombie() -> Any:
    """A child process that has exited and not been reaped yet."""
    process = multiprocessing.get_context("fork").Process(target=int)
    process.start()
    for _ in range(500):
        with open(f"/proc/{process.pid}/stat", "rb") as stat:
            if stat.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return process
        time.sleep(0.01)
    raise AssertionError("the child did not exit")


def test_a_kept_block_is_taken_only_when_no_process_uses_it(none_kept: None) -> None:
    context = multiprocessing.get_context("fork")
    kept = worker_memory._kept_here()
    assert kept is not None
    running = context.Process(target=time.sleep, args=(120,))
    running.start()
    exited = context.Process(target=int)
    exited.start()
    exited.join()
    zombie = _zombie()
    try:
        storage = torch.UntypedStorage._new_shared(4 * 2**20)
        # Kept only from a worker this process forked.
        assert kept.hold(storage, sender=os.getpid()) is None
        slot = kept.hold(storage, sender=running.pid)  # owned by a running worker, held
        assert slot == 0
        assert _claims_in_child(kept, [2**20]) == [False]
        kept.board[0, kept.OWNER] = exited.pid  # its owner gone, the batch still held here
        assert _claims_in_child(kept, [2**20]) == [False]
        kept.let_go(slot, os.getpid())
        kept.board[0, kept.OWNER] = running.pid  # let go here, its owner still running
        assert _claims_in_child(kept, [2**20]) == [False]
        kept.board[0, kept.OWNER] = exited.pid  # let go, its owner gone: taken once, not twice
        assert _claims_in_child(kept, [8 * 2**20, 2**20, 2**20]) == [False, True, False]
        assert int(kept.board[0, kept.OWNER]) not in (0, exited.pid, os.getpid())
        kept.board[0, kept.OWNER] = zombie.pid  # exited, not reaped yet: gone too
        assert _claims_in_child(kept, [2**20]) == [True]
        worker_memory.release_kept_blocks()  # once let go, nothing is taken
        kept.board[0, kept.OWNER] = 0
        assert _claims_in_child(kept, [2**20]) == [False]
    finally:
        running.terminate()
        running.join()
        zombie.join()


def _claiming_child(kept: worker_memory.KeptBlocks) -> tuple[Any, Any, Any]:
    """A child forked now that, once sent a list of sizes, claims a block for each and
    answers with the bytes of each storage it got (0: none): ``(process, ask, answer)``."""
    context = multiprocessing.get_context("fork")
    receive_sizes, ask = context.Pipe(duplex=False)
    answer, send = context.Pipe(duplex=False)

    def child() -> None:
        storages = [kept.claim(n) for n in receive_sizes.recv()]
        send.send([0 if s is None else s.nbytes() for s in storages])

    process = context.Process(target=child)
    process.start()
    return process, ask, answer


def test_a_larger_block_takes_the_place_of_the_smallest_unused_kept_one(
    none_kept: None,
) -> None:
    """Once KEPT_BETWEEN_EPOCHS blocks are kept, a larger one that arrives replaces the
    smallest no process uses (kept as they first came, later epochs' workers kept making
    new blocks for their larger batches); a worker forked before the replacement never
    writes the block evicted, which its copy of the descriptor still reaches."""
    mib = 2**20
    count = worker_memory.KEPT_BETWEEN_EPOCHS
    context = multiprocessing.get_context("fork")
    kept = worker_memory._kept_here()
    assert kept is not None
    running = context.Process(target=time.sleep, args=(120,))
    running.start()
    stale = None
    try:
        sizes = [(4 + k) * mib for k in range(count)]
        storages = [torch.UntypedStorage._new_shared(n) for n in sizes]
        assert [kept.hold(s, sender=running.pid) for s in storages] == list(range(count))
        for slot in range(count):
            kept.let_go(slot, os.getpid())
        # Every kept block still owned by its (running) worker: none is replaced, and
        # that block is not looked at again when it brings later batches.
        refused = torch.UntypedStorage._new_shared(64 * mib)
        assert kept.hold(refused, sender=running.pid) is None
        kept.board[:, kept.OWNER] = 0  # that worker gone
        assert kept.hold(refused, sender=running.pid) is None
        kept.board[0, kept.HELD] = 1  # a batch held here in the smallest
        stale, ask, answer = _claiming_child(kept)  # forked before the replacement
        evicted = kept.blocks[1][0]
        big = torch.UntypedStorage._new_shared(64 * mib)
        slot = kept.hold(big, sender=running.pid)
        assert slot == 1  # the smallest unused one: not the held one
        with pytest.raises(OSError, match="Bad file descriptor"):  # closed here
            os.fstat(evicted)
        inode = os.fstat(big._share_fd_cpu_()[0]).st_ino
        assert kept.blocks[1][1:] == (64 * mib, inode)
        assert kept.board[1].tolist() == [running.pid, 1, inode]
        assert sorted(n for _, n, _ in kept.blocks.values()) == sorted(
            [64 * mib, *sizes[:1], *sizes[2:]]
        )
        # A block smaller than every unused kept one replaces none.
        assert kept.hold(torch.UntypedStorage._new_shared(5 * mib), sender=running.pid) is None
        kept.let_go(1, os.getpid())
        kept.board[1, kept.OWNER] = 0
        kept.board[2:, kept.OWNER] = running.pid  # the others in use
        # The worker forked before knows the evicted 5 MiB block in slot 1, free on the
        # board: it takes nothing (through its descriptor it would write the block that
        # is gone, which a second such worker could take too). A worker forked now takes
        # the 64 MiB block there.
        ask.send([5 * mib])
        assert answer.poll(60), "the child did not answer"
        assert answer.recv() == [0]
        assert _claims_in_child(kept, [40 * mib]) == [True]
        assert int(kept.board[1, kept.OWNER]) not in (0, running.pid)
    finally:
        running.terminate()
        running.join()
        if stale is not None:
            stale.terminate()
            stale.join()


def test_without_a_lock_file_blocks_are_not_kept_and_batches_still_come(
    loader: DatasetLoader, none_kept: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No anonymous file and a read-only temporary directory: the training process keeps
    nothing (before, an error there would have failed the batch's receipt)."""
    import tempfile

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "memfd_create", refused)
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    inodes, _ = _checked_epoch(loader, _epoch_loader(loader))
    assert inodes and worker_memory._KEPT[0] is None


def test_blocks_of_a_killed_worker_are_taken_again_and_batches_stay_right(
    loader: DatasetLoader, none_kept: None
) -> None:
    """A worker killed mid-epoch leaves the blocks it owned; once it is gone, the next
    epoch's workers take them, and every batch is right."""
    import signal

    batches = _epoch_loader(loader)
    _checked_epoch(loader, batches)
    first = _kept_inodes()
    assert first
    iterator = iter(batches)
    next(iterator)
    victim = iterator._workers[0].pid  # type: ignore[attr-defined]
    kept = worker_memory._KEPT[0]
    assert kept is not None
    # Its first batch came in a block the first epoch's workers made.
    owned = {
        slot for slot in range(len(kept.blocks)) if int(kept.board[slot, kept.OWNER]) == victim
    }
    assert owned
    # DataLoader also reports a killed worker from its SIGCHLD handler, at whatever line
    # runs when any child process next exits while the worker is registered: left out
    # here (the signal ignored meanwhile), the loop finds the worker gone itself.
    handler = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        os.kill(victim, signal.SIGKILL)
        # DataLoader's own report; or, when the worker had queued a batch before it died,
        # the reset or end of the connection over which torch fetches that batch's
        # descriptor from the worker (torch's file_descriptor sharing, cadstore or not).
        with pytest.raises((RuntimeError, ConnectionError, EOFError)) as raised:
            for _ in iterator:
                pass
        assert not isinstance(raised.value, RuntimeError) or "exited unexpectedly" in str(
            raised.value
        )
    finally:
        # The dead worker unregistered before DataLoader's SIGCHLD handler is back: with
        # it registered, any child's exit (while pytest reports a failure, say) raises.
        iterator._shutdown_workers()  # type: ignore[attr-defined]
        signal.signal(signal.SIGCHLD, handler)
    del iterator
    gc.collect()
    taken = set()
    for _ in range(2):
        inodes, _ = _checked_epoch(loader, batches)
        taken |= inodes & first
    assert taken
    assert all(int(kept.board[slot, kept.OWNER]) not in (0, victim) for slot in owned)


# ------------------------------------------------------------------ blocks named, not resent
def _fds_of(inode: int) -> int:
    """Descriptors of this process open on the shared-memory file ``inode``."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.stat(f"/proc/self/fd/{name}").st_ino == inode:
                count += 1
        except OSError:
            pass
    return count


def test_a_block_crosses_to_the_training_process_once(
    loader: DatasetLoader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Torch passes a shared tensor's memory as a descriptor fetched from the worker, a
    round trip to the worker per block and per batch; a block goes with its first batch
    only, and the worker's board with its first: the training process fetches each block
    once, not three descriptors per batch, and every batch is right."""
    from multiprocessing import resource_sharer

    fetched = []
    original = resource_sharer.DupFd.detach

    def counting(self: Any) -> int:
        fd: int = original(self)
        fetched.append(os.fstat(fd).st_ino)
        return fd

    # Patched here, where the descriptors are fetched (the workers pickle the class).
    monkeypatch.setattr(resource_sharer.DupFd, "detach", counting)
    seen, blocks = 0, set()
    batches = _batches(loader, "fork", persistent_workers=True)
    for _ in range(2):
        for batch in batches:
            _check(batch, _expected(loader, batch["file_id_code"].tolist()))
            blocks.add(_inode(batch["faces"]["face_areas"]))  # the batch's arrays
            blocks.add(_inode(batch["batch"]))  # its index tensors
            assert type(batch["labels"]["file_label"]) is torch.Tensor
            seen += 1
    assert seen == 40
    # Each block and each worker's board once: before, three descriptors per batch and
    # one more for its labels (160).
    assert len(fetched) == len(set(fetched)) == len(blocks) + 2 < seen


def _sent(blocks: WorkerBlocks, nbytes: int) -> tuple[Any, Any]:
    """A batch in a new block of ``blocks``, pickled and received in this process as the
    training process receives it: ``(what the worker sent, the batch received)``."""
    block = blocks.take(nbytes)
    batch = RecycledBatch({"a": block.view(torch.uint8), "name": ["x"]}, blocks)
    rebuild, args = batch.__reduce__()
    return args, rebuild(*args)


def test_the_training_process_closes_a_block_the_worker_let_go() -> None:
    blocks = WorkerBlocks()
    args, out = _sent(blocks, 64)
    ((slot, gen, serial),) = args[2]
    assert args[-1] == os.getpid() and list(args[3]) == [serial]
    first = _inode(out["a"])
    # The worker's block, the training side's descriptor of it, the batch's own mapping.
    assert _fds_of(first) == 3
    del out, args
    gc.collect()
    assert int(blocks.board[slot]) == gen  # received here, freed on the board
    # More free blocks than the worker keeps: the first, the smallest, is let go, and the
    # next batch says so.
    held = [_sent(blocks, 8192) for _ in range(KEPT + 1)]
    del held
    gc.collect()
    args, out = _sent(blocks, 8192)
    assert args[4] == [serial]
    assert _fds_of(first) == 0
    assert serial not in worker_memory._senders()._workers[blocks.token].fds
    del out


def test_a_later_batch_names_its_block_and_maps_it_anew() -> None:
    """A block the training process has: sent as its number, mapped from its descriptor
    (a mapping of its own, whose end frees the block on the board)."""
    blocks = WorkerBlocks()
    args, out = _sent(blocks, 4096)
    ((slot, gen, serial),) = args[2]
    assert list(args[3]) == [serial] and args[1] is not None  # the block and the board
    out["a"][:4] = torch.tensor([1, 2, 3, 4], dtype=torch.uint8)
    del out
    gc.collect()
    assert int(blocks.board[slot]) == gen
    again = blocks.take(1000)
    labels = torch.tensor([7, 8])
    batch = RecycledBatch({"a": again[:8], "n": np.int64(3), "labels": labels}, blocks)
    rebuild, args = batch.__reduce__()
    assert args[3] == {} and args[1] is None  # named only
    assert type(args[0]["a"]) is worker_memory.NamedTensor
    assert type(args[0]["labels"]) is worker_memory.TensorValue  # small: by value
    out = rebuild(*args)
    assert out["a"].tolist() == [1, 2, 3, 4, 0, 0, 0, 0] and out["n"] == 3
    assert out["labels"].tolist() == [7, 8]
    assert out["a"].data_ptr() != again.data_ptr()  # a mapping of the training side's own
    del out
    gc.collect()
    assert int(blocks.board[slot]) == gen + 1


class _Holder:
    """Not a container a named batch may hold (picklable)."""

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor


def test_a_batch_holding_other_objects_goes_as_it_did() -> None:
    """A block's tensor inside another object would reach the training process as a
    second mapping that the release of the batch does not account for: such a batch is
    sent as torch sends it, and so is one whose tensor of a block is not plain."""
    blocks = WorkerBlocks()
    block = blocks.take(64)
    batch = RecycledBatch({"a": block, "held": _Holder(block[:4])}, blocks)
    assert batch.__reduce__()[0] is worker_memory._received
    other = blocks.take(64).view(torch.float32)
    odd = RecycledBatch({"a": other.conj_physical()._neg_view()}, blocks)
    assert odd.__reduce__()[0] is worker_memory._received


def test_a_batch_naming_what_was_never_received_is_refused() -> None:
    blocks = WorkerBlocks()
    _, out = _sent(blocks, 64)
    senders = worker_memory._senders()
    stranger = ("nobody", 4242)
    with pytest.raises(RuntimeError, match="worker process 4242 names shared memory"):
        senders.storages(stranger[0], stranger[1], None, [], {}, [])
    with pytest.raises(RuntimeError, match=f"worker process {os.getpid()} names shared block 9"):
        senders.storages(blocks.token, os.getpid(), None, [(5, 1, 9)], {}, [])
    assert list(senders._workers[blocks.token].fds) == [1]  # nothing lost
    del out


def test_descriptors_of_exited_workers_are_closed() -> None:
    """Found gone when another worker first sends, and before this process forks."""
    process = multiprocessing.get_context("fork").Process(target=int)
    process.start()
    process.join()
    senders = worker_memory._senders()
    block = torch.UntypedStorage._new_shared(4096)
    inode = os.fstat(block._share_fd_cpu_()[0]).st_ino
    board = torch.zeros(4, dtype=torch.int64).share_memory_()
    tensor = torch.empty(0, dtype=torch.uint8).set_(block, 0, (4096,))
    senders.storages("gone-worker", process.pid, board, [], {1: tensor}, [])
    del tensor, block
    gc.collect()
    assert _fds_of(inode) == 1  # the descriptor kept for the worker alone
    blocks = WorkerBlocks()
    _, out = _sent(blocks, 64)  # a new worker's first batch
    assert "gone-worker" not in senders._workers and _fds_of(inode) == 0
    del out


def test_a_forked_child_closes_the_descriptors_it_inherits() -> None:
    blocks = WorkerBlocks()
    args, out = _sent(blocks, 64)
    inode = _inode(out["a"])
    del out, args
    gc.collect()
    held = _fds_of(inode)
    assert held >= 1
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        send.send((worker_memory._SENDERS[0] is None, _fds_of(inode)))

    process = context.Process(target=child)
    process.start()
    assert receive.poll(60), "the child did not answer"
    forgotten, in_child = receive.recv()
    process.join(10)
    # The child holds only the worker's block (inherited from this process's WorkerBlocks,
    # which stands for the worker here), not the training side's descriptor.
    assert forgotten and in_child == held - 1
    assert _fds_of(inode) == held


class _PairCollate:
    """A collate function that sends the last batch's face pairs again with the next one
    (pairs of consecutive batches): a tensor of a block of an earlier batch."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate
        self.last: Any = None

    def __call__(self, items: list[Any]) -> Any:
        batch = self.collate(items)
        if self.last is not None:
            batch["last"] = self.last["faceface"]["d2_distance"]
        self.last = batch
        return batch


def test_a_tensor_of_an_earlier_batch_sent_again_is_never_overwritten(
    loader: DatasetLoader,
) -> None:
    """The training code keeps only the earlier batch's tensor that came with a later
    batch: the block stays its, whichever way each batch was sent."""
    collate = loader.get_dataset("train").to_torch_with_collate()[1]
    batches = _batches(loader, "fork", collate_fn=_PairCollate(collate), persistent_workers=True)
    kept = []
    for _ in range(3):
        for batch in batches:
            if "last" in batch:
                kept.append((batch["last"], batch["last"].clone()))
            del batch
            time.sleep(0.02)  # the worker runs ahead, reusing what was let go
    assert len(kept) >= 50
    overwritten = sum(not torch.equal(held, copied) for held, copied in kept)
    assert overwritten == 0, f"{overwritten} of {len(kept)} kept tensors overwritten"


def test_a_tensor_numpy_cannot_hold_travels_as_torch_sends_it() -> None:
    """A small tensor outside the blocks goes by value as a numpy array: one of a dtype
    numpy has not goes as torch sends it, and the batch still comes."""
    blocks = WorkerBlocks()
    block = blocks.take(64)
    odd = torch.zeros(4, dtype=torch.float8_e4m3fn)
    rebuild, args = RecycledBatch({"a": block, "odd": odd}, blocks).__reduce__()
    assert rebuild is worker_memory._received_named and args[0]["odd"] is odd
    out = rebuild(*args)
    assert out["odd"].dtype == torch.float8_e4m3fn


def test_a_deep_copy_in_the_worker_leaves_the_batch_to_be_sent() -> None:
    """Pickling tells the training process of a block once; a deep copy made in the
    worker (a plain dict) does not use that up."""
    blocks = WorkerBlocks()
    block = blocks.take(64)
    batch = RecycledBatch({"a": block[:8]}, blocks)
    copied = copy.deepcopy(batch)
    assert type(copied) is dict and torch.equal(copied["a"], block[:8])
    rebuild, args = batch.__reduce__()
    assert args[1] is not None and list(args[3]) == [args[2][0][2]]  # board and block
    assert rebuild(*args)["a"].tolist() == block[:8].tolist()


def test_releasing_kept_blocks_closes_what_exited_workers_sent(
    loader: DatasetLoader, none_kept: None
) -> None:
    """Once a loader's workers exited, ``release_kept_blocks()`` leaves this process no
    descriptor of their blocks (otherwise closed at the next fork or worker)."""
    inodes = set()
    batches = _epoch_loader(loader)
    for batch in batches:
        inodes.add(_inode(batch["faces"]["face_areas"]))
        inodes.add(_inode(batch["batch"]))
    del batch, batches
    gc.collect()
    assert any(_fds_of(inode) for inode in inodes)  # kept for later epochs, or sent
    worker_memory.release_kept_blocks()
    assert not any(_fds_of(inode) for inode in inodes)


_FILE_SYSTEM_EPOCHS = """
import gc, os, sys, torch
import cadstore
from cadstore.dataset import DatasetLoader
from cadstore.synthetic import iter_items, write_item

torch.multiprocessing.set_sharing_strategy("file_system")
here = sys.argv[1]
paths = [write_item(f"{here}/{n}.zarr", it, m) for n, it, m in iter_items(16, seed=3)]
cadstore.merge(paths, f"{here}/d.dataset")


def segments():
    return sum(1 for name in os.listdir("/dev/shm") if name.startswith("torch_"))


if __name__ == "__main__":
    with DatasetLoader(merged_store_path=f"{here}/d.dataset") as loader:
        loader.split("random", train=1.0, validation=0.0, test=0.0, random_state=0)
        dataset, collate = loader.get_dataset("train").to_torch_with_collate()
        counts = []
        for _ in range(3):
            for batch in torch.utils.data.DataLoader(
                dataset, 4, collate_fn=collate, num_workers=2
            ):
                pass
            del batch
            gc.collect()
            counts.append(segments())
    print(counts)
"""


def test_file_system_sharing_leaves_no_segments_epoch_after_epoch(tmp_path: Path) -> None:
    """Under torch's ``file_system`` sharing strategy (its remedy for "too many open
    files") a segment is a file that lives while any process holds it; workers kept their
    batch blocks for reuse and exited holding them, so every epoch left ~100 MiB of files
    in /dev/shm until the training process ended. Workers reuse blocks only when torch
    shares by file descriptor."""
    import subprocess
    import sys

    script = tmp_path / "epochs.py"
    script.write_text(_FILE_SYSTEM_EPOCHS)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = [int(n) for n in done.stdout.strip().splitlines()[-1].strip("[]").split(",")]
    assert counts[2] <= counts[0], counts  # no epoch leaves its blocks behind
