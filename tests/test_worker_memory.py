"""DataLoader workers reuse a batch's shared memory once the training process lets it go.

Real ``DataLoader`` workers (fork and spawn) on a merged realistic dataset: blocks come
back (the same shared-memory file carries several batches), and nothing the training code
still holds, a whole batch or a slice of one, is ever overwritten.
"""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cadstore
from cadstore.dataset import DatasetLoader
from conftest import write_items

torch = pytest.importorskip("torch")

from cadstore.dataset import worker_memory  # noqa: E402
from cadstore.dataset.worker_memory import (  # noqa: E402
    KEPT,
    RecycledBatch,
    WorkerBlocks,
    _capacity,
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
            kept.append((batch, _expected(loader, codes)))
        elif number % 4 == 1:
            want = _expected(loader, codes)[("faceface", "d2_distance")][:5]
            slices.append((batch["faceface"]["d2_distance"][:5], want))
    assert len(blocks) < number + 1  # reuse happened meanwhile
    for batch, expected in kept:
        _check(batch, expected)
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


# ------------------------------------------------------------------ the worker's side alone
def test_a_block_is_reused_only_once_the_board_frees_it() -> None:
    blocks = WorkerBlocks()
    first = blocks.take(1000)
    entries = blocks.handed()
    assert [(slot, gen) for slot, gen, _ in entries] == [(0, 1)]
    blocks.commit(entries)
    second = blocks.take(800)  # the first is still held by the training process
    assert second.data_ptr() != first.data_ptr() and blocks.made == 2
    blocks.commit(blocks.handed())
    worker_memory._released(blocks.board.numpy(), 0, 1)
    third = blocks.take(900)
    assert third.data_ptr() == first.data_ptr() and blocks.reused == 1
    assert blocks.take(10**6).data_ptr() not in (first.data_ptr(), second.data_ptr())
    # A late release of an older generation never takes the board back.
    worker_memory._released(blocks.board.numpy(), 0, 0)
    assert int(blocks.board[0]) == 1


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


def test_only_a_few_free_blocks_are_kept() -> None:
    blocks = WorkerBlocks()
    taken = [blocks.take((n + 1) * 4 * 1024 * 1024) for n in range(KEPT + 2)]
    taken += [blocks.take(64) for _ in range(KEPT + 2)]
    entries = blocks.handed()
    del taken
    board = blocks.board.numpy()
    for slot, gen, _ in entries:
        worker_memory._released(board, slot, gen)
    blocks.commit(entries)
    sizes = sorted(block.numel() for block, _ in blocks._sent.values())
    # KEPT small ones and the KEPT largest: the two smallest large blocks went.
    assert sizes == sorted(
        [_capacity(64)] * KEPT + [_capacity((n + 1) * 4 * 1024 * 1024) for n in range(2, KEPT + 2)]
    )


def test_a_recycled_batch_unpickles_as_a_plain_dict() -> None:
    blocks = WorkerBlocks()
    block = blocks.take(64)
    batch = RecycledBatch({"a": block.view(torch.int64)}, blocks)
    rebuild, args = batch.__reduce__()
    out = rebuild(*args)
    assert type(out) is dict and out["a"].data_ptr() == block.data_ptr()
    assert list(blocks._sent) == [0]


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
