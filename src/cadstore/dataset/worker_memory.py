"""Shared-memory batch blocks that a ``DataLoader`` worker reuses once they are let go.

A ``torch.utils.data.DataLoader`` worker sends every batch to the training process in
shared memory. Made afresh for each batch, a segment costs the kernel its pages (torch
reserves them all when it creates the segment, zeroed), the worker the mapping of each
page it fills (in one call for a new block here:
:func:`~cadstore.io.native.populate_pages`) and the training process a new mapping: for
whole items, about as much as decoding them (``docs/benchmarks.md``). :func:`batch_tensors
<cadstore.dataset.torch_support.batch_tensors>` places a batch's tensors in one block;
in a worker the block comes from here, and a block the training process no longer holds
is filled again for a later batch, its pages already there.

How the worker learns that a block is free: each worker process keeps a small *board* in
shared memory, one int64 per block slot. A block goes out with a generation number (one
more at every send); when the batch is unpickled in the training process,
:func:`_received` attaches a finalizer to the block's storage, which writes that
generation into the block's slot of the board once nothing refers to the storage any more
(torch keeps a storage's Python object alive as long as any tensor, view or autograd graph
uses the storage, so the finalizer runs when the memory is really unused). The worker
reuses a block only when the board shows the generation it last sent and nothing in the
worker refers to it either (torch's use count of the storage: a collate function may keep
batches). So a batch, or a tensor of it, that the training code keeps is never
overwritten.

A block's memory crosses to the training process once: torch sends a shared tensor as
the descriptor of its memory, which the training process fetches from the worker (a round
trip per block and per batch, answered once the busy worker lets its interpreter lock
go). A block goes with its first batch only; later batches name it
(:meth:`WorkerBlocks.describe`), and the training process maps it again from the
descriptor it kept (:func:`_received_named`).

A block is kept for reuse only once its batch has been pickled for the training process
(:class:`RecycledBatch`): a batch that a custom collate function rebuilt into another
object, or that never left the worker, is freed as usual and its block is not reused.

A worker's blocks go when it exits, and without ``persistent_workers`` each epoch's
workers are new: the training process keeps the large blocks its forked workers sent for
the workers of later epochs (:class:`KeptBlocks`), whose pages are then already there.

Not covered: a batch that the training process sends on to a third process through
``torch.multiprocessing`` (the third process maps the block itself, which the training
process's finalizer cannot see); and a tensor of an earlier batch that a collate function
sends outside the collated batch's dicts, lists and tuples (beside it in a tuple, inside
another object), whose block is not lent again with it (:meth:`WorkerBlocks.renewed`).
Clone such tensors first, as with any reused buffer.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from cadstore.io.native import populate_pages
from cadstore.io.publish import pid_alive

__all__ = [
    "KeptBlocks",
    "RecycledBatch",
    "WorkerBlocks",
    "block_capacity",
    "freeze_inherited",
    "inherited_blocks",
    "plain_tensor",
    "release_kept_blocks",
    "settle_worker",
    "tensor_at",
    "tensor_place",
    "tensor_value",
    "worker_blocks",
]

#: Slots on a worker's board: blocks alive in the worker at once (more are made afresh).
SLOTS = 64
#: Free blocks a worker keeps for reuse (the largest); more are let go. A batch is two
#: blocks (its arrays, its index tensors), and a worker has few batches in flight: its
#: prefetched ones (``prefetch_factor``, 2 by default), the one the training step holds.
KEPT = 4
#: Sent blocks a worker waits for at most (the training code may keep many batches); it
#: forgets those sent first beyond, which are then freed as usual.
WAITING = 16


class WorkerBlocks:
    """The reusable shared-memory blocks of one ``DataLoader`` worker process.

    :meth:`take` lends a block for the batch being made; :meth:`handed` gives the blocks
    taken since its last call (for the batch's :class:`RecycledBatch`); :meth:`commit`
    keeps them for reuse once the batch is pickled. Safe to use from the worker's main
    thread and the queue's feeder thread, which pickles the batches.
    """

    def __init__(self) -> None:
        import torch  # only ever made in a DataLoader worker, torch loaded

        self.torch: Any = torch
        self.board = self.torch.full((SLOTS,), -1, dtype=self.torch.int64).share_memory_()
        self._freed = self.board.numpy()
        # Reentrant: a block's storage can die (and its finalizer take the lock) in any
        # code that drops a reference, this class's own included.
        self._lock = threading.RLock()
        # Sent blocks, each waiting for its generation on the board: slot -> (block,
        # generation, order of sending).
        self._sent: dict[int, tuple[Any, int, int]] = {}
        # Slots whose block storage is alive in this process (sent, lent or in a batch).
        self._live: set[int] = set()
        self._gens = [0] * SLOTS
        self._taken: list[tuple[int, int, Any]] = []
        self._order = 0
        self.made = 0
        self.reused = 0
        self.claimed = 0  # blocks an earlier epoch's workers made (see KeptBlocks)
        # Naming blocks to the training process (see describe()): this worker's name
        # there, each tracked block's number (slot -> serial), the numbers it has been
        # sent, and those of blocks let go since the last batch sent.
        self.token = os.urandom(8).hex()
        self._serial = 0
        self._serials: dict[int, int] = {}
        # Storage address -> slot of every tracked block alive here.
        self._pointers: dict[int, int] = {}
        self._announced: set[int] = set()
        self._gone: list[int] = []
        self._board_sent = False
        # Tensors referring to a kept block's storage when only this class holds it (torch's
        # use count): more means the worker itself still uses it (a collate function that
        # keeps the last batch, a dataset caching what it read). None: torch cannot tell.
        self._use_count: Any = getattr(torch._C, "_storage_Use_Count", None)
        probe = self._block(self.torch.UntypedStorage(8))
        self._baseline = self._count(probe) if self._use_count is not None else -1

    def _block(self, storage: Any) -> Any:
        """A uint8 tensor over the whole of ``storage``."""
        return self.torch.empty(0, dtype=self.torch.uint8).set_(storage, 0, (storage.nbytes(),))

    def _count(self, block: Any) -> int:
        return int(self._use_count(block.untyped_storage()._cdata))

    def _reusable(self, slot: int, block: Any, gen: int) -> bool:
        """Whether the training process let generation ``gen`` of ``block`` go and nothing
        in this process refers to it."""
        if self._freed[slot] < gen or self._use_count is None:
            return False
        return self._count(block) <= self._baseline

    def take(self, nbytes: int) -> Any:
        """A uint8 tensor of ``nbytes`` in shared memory: a free block, or a new one.

        The smallest free block that holds ``nbytes`` is taken; a small request (under
        :data:`_GRANULE`: a batch's index tensors) only takes a small block.
        """
        torch = self.torch
        fresh = False
        with self._lock:
            small = nbytes < _GRANULE
            free = [
                (block.numel(), slot)
                for slot, (block, gen, _) in self._sent.items()
                if block.numel() >= nbytes
                and (not small or block.numel() < _GRANULE)
                and self._reusable(slot, block, gen)
            ]
            if free:
                slot = min(free)[1]
                block = self._sent.pop(slot)[0]
                self.reused += 1
            else:
                kept = inherited_blocks()
                storage = kept.claim(nbytes) if kept is not None and not small else None
                if storage is not None:
                    self.claimed += 1
                else:
                    storage = torch.UntypedStorage._new_shared(block_capacity(nbytes))
                    self.made += 1
                block = self._block(storage)
                fresh = True
                idle = [s for s in range(SLOTS) if s not in self._live]
                if idle:
                    slot = idle[0]
                    self._live.add(slot)
                    self._serial += 1
                    self._serials[slot] = self._serial
                    self._pointers[storage.data_ptr()] = slot
                    weakref.finalize(storage, self._dead, slot, storage.data_ptr()).atexit = False
                else:
                    slot = -1  # every slot busy: an ordinary fresh segment, not tracked
            if slot >= 0:
                self._gens[slot] += 1
                # Held weakly: a batch that never reaches handed() (another collate
                # function) must not be kept alive here. A storage lives while any view
                # of it does.
                self._taken = [t for t in self._taken if t[2]() is not None]
                self._taken.append((slot, self._gens[slot], weakref.ref(block.untyped_storage())))
        view = block[:nbytes]
        if fresh:
            # Outside the lock, which the queue's feeder thread takes to send the batch
            # before: the pages of the batch's bytes mapped in one call (those of a kept
            # block are there already, and only mapped).
            populate_pages(view.data_ptr(), nbytes)
        return view

    def _dead(self, slot: int, pointer: int) -> None:
        with self._lock:
            self._live.discard(slot)
            if self._pointers.get(pointer) == slot:
                del self._pointers[pointer]
            serial = self._serials.pop(slot, None)
            if serial in self._announced:
                # The training process keeps a descriptor of it: told with the next batch.
                self._announced.discard(serial)
                self._gone.append(serial)

    def handed(self) -> list[tuple[int, int, Any]]:
        """``(slot, generation, block)`` of the blocks taken since the last call (and still
        in use)."""
        with self._lock:
            taken, self._taken = self._taken, []
        entries = []
        for slot, gen, ref in taken:
            storage = ref()
            if storage is not None:
                entries.append((slot, gen, self._block(storage)))
        return entries

    def commit(self, entries: list[tuple[int, int, Any]]) -> None:
        """Keep the blocks of a batch being sent, to reuse once the board frees them.

        Of the blocks already free, the :data:`KEPT` largest are kept, and as many small
        ones (under :data:`_GRANULE`: a batch's index tensors); of those still held by the
        training process, the :data:`WAITING` sent last. The others are let go.
        """
        with self._lock:
            for slot, gen, block in entries:
                # A block lent again (renewed) replaces its earlier generation.
                if gen == self._gens[slot] and self._sent.get(slot, (None, -1))[1] != gen:
                    self._order += 1
                    self._sent[slot] = (block, gen, self._order)
            free = sorted(
                (block.numel(), slot)
                for slot, (block, gen, _) in self._sent.items()
                if self._freed[slot] >= gen
            )
            small = [slot for size, slot in free if size < _GRANULE]
            large = [slot for size, slot in free if size >= _GRANULE]
            extra = small[: max(0, len(small) - KEPT)] + large[: max(0, len(large) - KEPT)]
            waiting = sorted(
                (order, slot)
                for slot, (_, gen, order) in self._sent.items()
                if self._freed[slot] < gen
            )
            extra += [slot for _, slot in waiting[: max(0, len(waiting) - WAITING)]]
            dropped = [self._sent.pop(slot) for slot in extra]
        # Let go outside the lock.
        del dropped

    def renewed(
        self, storages: dict[int, Any], handed: list[tuple[int, int, Any]]
    ) -> list[tuple[int, int, Any]]:
        """Entries (as :meth:`handed`'s) for the blocks of earlier batches that a batch
        being sent uses too (``storages``: its tensors' storages by address, less those
        of ``handed``), each lent again under a new generation.

        A collate function may send part of an earlier batch again (pairs of consecutive
        batches): the training process may have let that batch go already, and the block
        would then be refilled under the tensor it keeps of the later one. Renewed, the
        block waits for the later batch to be let go too.
        """
        have = {block.untyped_storage().data_ptr() for _, _, block in handed}
        entries = []
        with self._lock:
            for pointer, storage in storages.items():
                slot = self._pointers.get(pointer)
                if slot is None or pointer in have:
                    continue
                self._gens[slot] += 1
                entries.append((slot, self._gens[slot], self._block(storage)))
        return entries

    def describe(
        self, batch: dict[str, Any], entries: list[tuple[int, int, Any]]
    ) -> tuple[Any, ...] | None:
        """What :class:`RecycledBatch` sends instead of ``batch`` and its blocks' memory.

        Sending a tensor in shared memory through a ``DataLoader``'s queue passes the
        descriptor of its memory: the training process asks the worker's
        descriptor-sharing thread for it, a round trip per block and per batch (plus one
        for the board), answered once the worker, busy decoding the next batch, lets its
        interpreter lock go. For graph-only batches those round trips were most of the
        training process's time (``docs/benchmarks.md``). Here a block goes with its
        first batch only (the training process keeps a descriptor of it,
        :func:`_received_named`); later batches name it, their tensors sent as ``(block,
        dtype, offset, shape, strides)``, and the blocks let go since are named too, for
        the training process to close its descriptors.

        Returns ``(skeleton, board, named entries, new blocks, blocks gone, token)``, or
        ``None`` when the batch holds something other than dicts, lists, tuples, plain
        values and plain tensors (a tensor of a block inside another object would reach
        the training process as torch sends it): it is then sent as it is, its blocks'
        tensors mapped once with the rest (torch maps a file once per process while it
        is in use, and so does :func:`_received_named`).
        """
        # ``entries`` hold every tracked block the batch uses, those of earlier batches
        # lent again (renewed()).
        with self._lock:
            named = []
            for slot, gen, block in entries:
                serial = self._serials.get(slot)
                if serial is None:
                    return None
                named.append((slot, gen, serial, block))
        serials = {block.untyped_storage().data_ptr(): serial for *_, serial, block in named}
        try:
            skeleton = _named_copy(batch, serials, self.torch)
        except _Unnamed:
            return None
        with self._lock:
            new = {}
            for *_, serial, block in named:
                if serial not in self._announced:
                    self._announced.add(serial)
                    new[serial] = block
            gone, self._gone = self._gone, []
            board = None if self._board_sent else self.board
            self._board_sent = True
        return skeleton, board, [entry[:3] for entry in named], new, gone, self.token


# -- a shared-memory tensor described by its place in a block, by both worker kinds
# (here, and cadstore.dataset.processes for BatchLoader's worker processes)
def plain_tensor(value: Any, torch: Any) -> bool:
    """Whether ``value`` is a dense CPU tensor that can be sent as its place in memory
    alone (not sparse, nested, a subclass such as PyG's ``EdgeIndex``, lazily negated or
    conjugated, nor part of an autograd graph): those keep their own pickling."""
    return (
        type(value) is torch.Tensor
        and value.layout == torch.strided
        and value.device.type == "cpu"
        and not value.requires_grad
        and not value.is_neg()
        and not value.is_conj()
    )


def tensor_place(tensor: Any) -> tuple[str, int, tuple[int, ...], tuple[int, ...]]:
    """``(dtype name, storage offset, shape, strides)`` of a :func:`plain_tensor`: what
    :func:`tensor_at` rebuilds it from over its storage."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    return dtype, tensor.storage_offset(), tuple(tensor.shape), tensor.stride()


def tensor_at(
    torch: Any, storage: Any, place: tuple[str, int, tuple[int, ...], tuple[int, ...]]
) -> Any:
    """The tensor at ``place`` (:func:`tensor_place`) in ``storage``.

    Raises
    ------
    ValueError
        If the dtype named is not one of torch's.
    """
    name, offset, shape, stride = place
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown tensor type {name!r}")
    return torch.empty(0, dtype=dtype).set_(storage, offset, shape, stride)


def tensor_value(tensor: Any) -> np.ndarray | None:
    """A copy of a :func:`plain_tensor`'s values, to send by value; ``None`` for a dtype
    numpy has not (``bfloat16``, the float8 types, ...)."""
    try:
        copied: np.ndarray = tensor.numpy().copy()
    except (TypeError, RuntimeError):
        return None
    return copied


class NamedTensor(tuple):  # type: ignore[type-arg]
    """A tensor of a named block, as sent: ``(block, dtype name, storage offset, shape,
    strides)`` (see :meth:`WorkerBlocks.describe`)."""

    __slots__ = ()


class TensorValue(tuple):  # type: ignore[type-arg]
    """A small tensor outside the batch's blocks, as sent: ``(numpy array,)`` (see
    :func:`_named_copy`)."""

    __slots__ = ()


#: Tensors of a named batch outside its blocks (its labels, say) of at most this many
#: bytes travel by value: torch would move each to a shared segment of its own, whose
#: descriptor the training process then fetches from the worker (a round trip per batch).
BY_VALUE_BYTES = 1024 * 1024


class _Unnamed(Exception):
    """A batch that cannot be sent with its blocks named (see :func:`_named_copy`)."""


def _map_leaves(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` with its dicts, lists and tuples rebuilt and every other object ``leaf(o)``.

    The one walk of a batch's containers that naming its tensors and rebuilding them share.
    """
    kind = type(value)
    if kind is dict:
        return {key: _map_leaves(inner, leaf) for key, inner in value.items()}
    if kind is list:
        return [_map_leaves(inner, leaf) for inner in value]
    if kind is tuple:
        return tuple(_map_leaves(inner, leaf) for inner in value)
    return leaf(value)


def _named_copy(value: Any, serials: dict[int, int], torch: Any) -> Any:
    """``value`` with every plain tensor in the blocks ``serials`` (storage address ->
    block) as a :class:`NamedTensor`.

    Raises
    ------
    _Unnamed
        If ``value`` holds anything else than dicts, lists, tuples, strings, numbers,
        ``None``, numeric numpy arrays and tensors, or a tensor of the blocks that is not
        plain.
    """

    def name(value: Any) -> Any:
        kind = type(value)
        if isinstance(value, torch.Tensor):
            serial = serials.get(value.untyped_storage().data_ptr())
            if serial is None and kind is torch.Tensor:
                # Not in a block: small ones by value, others as torch sends them.
                if plain_tensor(value, torch) and value.nbytes <= BY_VALUE_BYTES:
                    copied = tensor_value(value)
                    if copied is not None:
                        return TensorValue((copied,))
                return value
            if serial is None or not plain_tensor(value, torch):
                raise _Unnamed
            return NamedTensor((serial, *tensor_place(value)))
        if kind in (str, bytes, int, float, bool, type(None)) or isinstance(value, np.generic):
            return value
        if kind is np.ndarray and value.dtype.kind not in "OV":
            return value  # sent by value
        raise _Unnamed

    return _map_leaves(value, name)


def _from_named(value: Any, storages: dict[int, Any], torch: Any) -> Any:
    """:func:`_named_copy` undone: each :class:`NamedTensor` a view of its block's
    storage in ``storages``."""

    def rebuild(value: Any) -> Any:
        kind = type(value)
        if kind is NamedTensor:
            serial, *place = value
            try:
                if serial not in storages:
                    raise ValueError(f"unknown block {serial}")
                return tensor_at(torch, storages[serial], tuple(place))
            except ValueError as exc:
                raise RuntimeError(
                    f"a batch names a tensor of an unknown block or type: {exc}"
                ) from exc
        if kind is TensorValue:
            return torch.from_numpy(value[0])
        return value

    return _map_leaves(value, rebuild)


def freeze_inherited() -> None:
    """Take the objects this worker process holds so far out of the garbage collector's
    sight (``gc.freeze()``, after a collection of the young generations), where its later
    full collections no longer walk them.

    A worker forked from the training process holds a copy of all of that process's
    objects, hundreds of thousands once a few libraries are loaded, and decoding batches
    makes enough short-lived containers that the collector runs its full collections
    every few batches, each walking them all and writing to their headers (a page copied
    for each page of them it touches). Measured in ``bench/bench_training.py``: after
    Hugging Face ``datasets`` and Lance had been used in the training process, a
    graph-only ``DataLoader`` worker spent twice the CPU per batch (17 ms of user time
    and 1,500 page faults instead of 9.6 ms and 420). Python's documentation advises
    ``gc.freeze()`` before forking for the same reason; a library cannot do that in the
    training process, so each worker does it first thing. Frozen objects are still freed
    when nothing refers to them; only a reference cycle among them would be kept for the
    worker's life. What the worker makes from then on is collected as usual.
    """
    gc.collect(1)
    gc.freeze()


#: The process :func:`settle_worker` last looked at.
_SETTLED = [-1]


def settle_worker() -> None:
    """Prepare a ``DataLoader`` worker process on its first read (:func:`freeze_inherited`);
    nothing in any other process, the training process included. Cheap after the first
    call in a process."""
    pid = os.getpid()
    if _SETTLED[0] == pid:
        return
    _SETTLED[0] = pid
    import torch

    if torch.utils.data.get_worker_info() is not None:
        freeze_inherited()


_BLOCKS: list[Any] = [None, -1]


def worker_blocks() -> WorkerBlocks | None:
    """This ``DataLoader`` worker's :class:`WorkerBlocks`; ``None`` outside a worker, or
    when torch shares memory otherwise than by file descriptor (callers have imported
    torch).

    Under torch's ``file_system`` strategy a segment is a file that lives until every
    process holding it lets it go; a worker exits without letting go of the blocks it
    keeps for reuse, so each epoch's blocks would stay in ``/dev/shm`` until the training
    process ends (about 100 MiB an epoch, measured). Workers then make each batch's
    tensors anew, as torch's own collate does.
    """
    import torch

    if torch.utils.data.get_worker_info() is None or not _by_descriptor():
        return None
    if _BLOCKS[1] != os.getpid():
        _BLOCKS[:] = [WorkerBlocks(), os.getpid()]
    blocks: WorkerBlocks = _BLOCKS[0]
    return blocks


class RecycledBatch(dict):  # type: ignore[type-arg]
    """A collated batch whose blocks its worker reuses once the training process is done.

    It pickles as a plain ``dict`` rebuilt by :func:`_received` in the training process;
    pickling it (what sending it does) is what keeps its blocks in the worker for reuse.
    Only the blocks its tensors use go with it: a block taken for arrays that the collate
    function then did not use (it was given rebuilt items) is freed in the worker.
    ``copy.copy`` gives a plain ``dict``.
    """

    def __init__(self, batch: dict[str, Any], blocks: WorkerBlocks) -> None:
        super().__init__(batch)
        self.blocks = blocks
        used = {t.untyped_storage().data_ptr() for t in _tensors(batch)}
        self.entries = [e for e in blocks.handed() if e[2].data_ptr() in used]

    def __reduce__(self) -> Any:
        # As the batch is now: a collate function may have added to it since (part of an
        # earlier batch, whose block is then lent again with this one).
        used = {t.untyped_storage().data_ptr(): t.untyped_storage() for t in _tensors(self)}
        handed = [e for e in self.entries if e[2].data_ptr() in used]
        self.entries = handed + self.blocks.renewed(used, handed)
        self.blocks.commit(self.entries)
        by_descriptor = _by_descriptor()
        # The training process keeps blocks of the workers it forked (_ORIGIN is then its
        # pid); spawned workers' would be of no use to later ones.
        sender = os.getpid() if os.getppid() == _ORIGIN[0] and by_descriptor else 0
        named = self.blocks.describe(dict(self), self.entries) if by_descriptor else None
        if named is not None:
            return _received_named, (*named, sender, os.getpid())
        return _received, (dict(self), self.blocks.board, self.entries, sender)

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        # A plain dict: pickling (what a deep copy would do through __reduce__) is for
        # sending the batch, and tells the training process of its blocks once.
        return copy.deepcopy(dict(self), memo)


_RELEASE_LOCK = threading.Lock()


def _released(board: np.ndarray, slot: int, gen: int, pid: int) -> None:
    """Write on the worker's board that generation ``gen`` of block ``slot`` is free.

    Only in the process that received the block (``pid``): a process forked from it (a
    later epoch's worker) holds copies of its objects, whose end says nothing about the
    training process's use of the block.
    """
    if os.getpid() != pid:
        return
    with _RELEASE_LOCK:
        if board[slot] < gen:
            board[slot] = gen


def _received(
    batch: dict[str, Any], board: Any, entries: list[tuple[int, int, Any]], sender: int = 0
) -> Any:
    """Unpickle a :class:`RecycledBatch` in the training process: the batch as a plain
    dict, with a finalizer on each block's storage that frees it on the worker's board.
    ``sender``: the worker's pid when it was forked from this process (its blocks are
    kept for later epochs' workers, :class:`KeptBlocks`), else 0."""
    freed = board.numpy()
    held = {t.untyped_storage().data_ptr() for t in _tensors(batch)}
    kept = _kept_here() if sender else None
    pid = os.getpid()
    for slot, gen, block in entries:
        storage = block.untyped_storage()
        # The batch's tensors and the block must be one mapping (torch maps a shared
        # file once per process while it is in use): the finalizer then runs when none of
        # them is used any more. Were they not, the block would stay unused here.
        if storage.data_ptr() not in held:
            continue
        kept_slot = kept.hold(storage, sender) if kept is not None else None
        # atexit off: nothing to tell a worker once the process exits.
        if kept is None or kept_slot is None:
            weakref.finalize(storage, _released, freed, slot, gen, pid).atexit = False
        else:
            # One finalizer, in this order: the kept board says the block is let go
            # before the worker's board does (the worker may then fill it again, and the
            # batch it sends in it be held again).
            weakref.finalize(
                storage, _released_kept, kept, kept_slot, freed, slot, gen, pid
            ).atexit = False
    return batch


def _received_named(
    skeleton: Any,
    board: Any,
    named: list[tuple[int, int, int]],
    new: dict[int, Any],
    gone: list[int],
    token: str,
    sender: int,
    pid: int,
) -> Any:
    """Unpickle a :class:`RecycledBatch` sent with its blocks named
    (:meth:`WorkerBlocks.describe`): the blocks new to this process are kept (a
    descriptor each), those the worker let go are closed, each named block is mapped
    again from its descriptor, and the batch rebuilt over them is received as
    :func:`_received` receives one."""
    import torch as torch_module

    torch: Any = torch_module
    board, storages = _senders().storages(token, pid, board, named, new, gone)
    batch = _from_named(skeleton, storages, torch)
    entries = []
    for slot, gen, serial in named:
        storage = storages[serial]
        block = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),))
        entries.append((slot, gen, block))
    return _received(batch, board, entries, sender)


class _Sender:
    """A worker whose batches name their blocks: its process, its board and a
    descriptor of each of its blocks (block number -> (descriptor, bytes))."""

    def __init__(self, pid: int, board: Any) -> None:
        self.pid = pid
        self.board = board
        self.fds: dict[int, tuple[int, int]] = {}

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd, _ in fds.values():
            _close_quietly(fd)


class _Senders:
    """The workers sending named blocks to this process (see :func:`_received_named`).

    A block's descriptor is kept from its first batch until its worker says it let the
    block go, or the worker is found gone (when a new worker first sends, and before this
    process forks): so a block lives here no longer than in its worker, give or take a
    batch.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._workers: dict[str, _Sender] = {}

    def storages(
        self,
        token: str,
        pid: int,
        board: Any,
        named: list[tuple[int, int, int]],
        new: dict[int, Any],
        gone: list[int],
    ) -> tuple[Any, dict[int, Any]]:
        """The worker's board and a storage of each block of a batch (see
        :func:`_received_named`).

        Raises
        ------
        RuntimeError
            If the batch names a worker or a block this process never received (the
            worker's earlier batches were not all received here).
        """
        import torch

        untyped: Any = torch.UntypedStorage
        storages: dict[int, Any] = {}
        with self._lock:
            sender = self._workers.get(token)
            if sender is None:
                if board is None:
                    raise RuntimeError(
                        f"a batch from worker process {pid} names shared memory this "
                        "process never received: an earlier batch of that worker was "
                        "pickled elsewhere (a batch is pickled once, to be sent)"
                    )
                self._sweep()
                sender = self._workers[token] = _Sender(pid, board)
            for serial in gone:
                fd, _ = sender.fds.pop(serial, (-1, 0))
                if fd >= 0:
                    _close_quietly(fd)
            for serial, block in new.items():
                fd, nbytes = block.untyped_storage()._share_fd_cpu_()
                try:
                    mine = os.dup(fd)
                except OSError as exc:
                    raise RuntimeError(
                        f"cannot keep a descriptor of worker process {pid}'s shared block "
                        f"{serial}: {exc}"
                    ) from exc
                old, _ = sender.fds.get(serial, (-1, 0))
                if old >= 0:
                    _close_quietly(old)
                sender.fds[serial] = (mine, nbytes)
            for _, _, serial in named:
                found = sender.fds.get(serial)
                if found is None:
                    raise RuntimeError(
                        f"a batch from worker process {pid} names shared block {serial}, "
                        "which this process never received: an earlier batch of that "
                        "worker was pickled elsewhere, or its block could not be kept"
                    )
                storages[serial] = _mapping(untyped, *found)
            return sender.board, storages

    def _sweep(self) -> None:
        """Close the descriptors of workers that exited. Callers hold the lock."""
        for token, sender in list(self._workers.items()):
            if not _alive(sender.pid):
                del self._workers[token]
                sender.close()

    def sweep(self) -> None:
        """Close the descriptors of workers that exited."""
        with self._lock:
            self._sweep()

    def forget_inherited(self) -> None:
        """In a process forked from the one receiving: close its copies of the
        descriptors (without the lock, which another thread may have held at the fork)."""
        workers, self._workers = self._workers, {}
        for sender in workers.values():
            sender.close()


def _mapping(untyped: Any, fd: int, nbytes: int) -> Any:
    """A storage over the shared-memory file ``fd`` of ``nbytes``: the one this process
    maps already, if any, else a new mapping.

    A batch's storage dies with its last view, which is how the worker learns the block is
    free (:func:`_received`). Torch maps a shared file once per process while it is in use
    (its ``shared_cache``), so that a tensor of the block that comes another way (a
    batch sent as torch sends it, holding part of an earlier one) keeps that storage
    alive too; the mappings made here are known to it the same way.
    """
    from torch.multiprocessing import reductions as torch_reductions

    reductions: Any = torch_reductions  # untyped
    key = reductions.fd_id(fd)
    storage = reductions.storage_from_cache(untyped, key)
    if storage is None:
        storage = untyped._new_shared_fd_cpu(fd, nbytes)
        reductions.shared_cache[key] = reductions.StorageWeakRef(storage)
    return storage


_SENDERS: list[_Senders | None] = [None]


def _senders() -> _Senders:
    """This process's :class:`_Senders` (made on first use)."""
    senders = _SENDERS[0]
    if senders is None or senders.pid != os.getpid():
        senders = _SENDERS[0] = _Senders()
    return senders


def _sweep_senders() -> None:
    """Close the descriptors this process keeps of the blocks of workers that exited."""
    senders = _SENDERS[0]
    if senders is not None and senders.pid == os.getpid():
        senders.sweep()


def _forget_after_fork() -> None:
    senders = _SENDERS[0]
    if senders is not None and senders.pid != os.getpid():
        _SENDERS[0] = None
        senders.forget_inherited()


# Before a fork: workers of an epoch that ended are gone, and their blocks' descriptors
# would otherwise be inherited by the next epoch's workers and outlive them.
os.register_at_fork(before=_sweep_senders, after_in_child=_forget_after_fork)


def _released_kept(
    kept: KeptBlocks, kept_slot: int, board: np.ndarray, slot: int, gen: int, pid: int
) -> None:
    """:func:`_released` of a block the training process keeps (see :class:`KeptBlocks`)."""
    kept.let_go(kept_slot, pid)
    _released(board, slot, gen, pid)


# ------------------------------------------------------------------ blocks kept between epochs
#: Blocks the training process keeps for the workers of later epochs (the largest this
#: many of at least :data:`_GRANULE` bytes its forked workers send).
KEPT_BETWEEN_EPOCHS = 8

#: Refused blocks a training process remembers (see :meth:`KeptBlocks.hold`); more and it
#: starts again.
_REFUSED_KEPT = 256

#: The process whose memory this one holds: the one it was forked from (noted just before
#: each fork), else itself (a spawned process imports this module afresh).
_ORIGIN = [os.getpid()]


def _note_origin() -> None:
    _ORIGIN[0] = os.getpid()


os.register_at_fork(before=_note_origin)


class KeptBlocks:
    """Shared-memory blocks kept by the training process from one epoch's ``DataLoader``
    workers for the next epoch's.

    Without ``persistent_workers`` every epoch forks new workers, and each made its
    blocks afresh: the kernel clears every page of a new block, which for whole items was
    about a third of a worker's time (``docs/benchmarks.md``). The training process keeps
    :data:`KEPT_BETWEEN_EPOCHS` large blocks its forked workers send (an open descriptor
    of each shared-memory file, kept until :func:`release_kept_blocks`), and workers
    forked later take one instead of making a new one when none of their own is free.
    Once that many are kept, a larger block that arrives takes the place of the smallest
    kept one no process is using: the blocks kept are then the largest, which a later
    worker's batch fits (batches of whole items range over a factor of ten; kept as they
    first came, a later epoch's workers still made one or two new blocks each).

    A block is written by one process at a time: a shared *board* holds, per kept block,
    the worker that may write it (its pid; 0 for none), whether the training process
    holds a batch in it, and which block it is (its file's inode). A worker takes a block
    (:meth:`claim`, under a lock shared by the processes forked from the training
    process) only when no worker owns it, or its owner has exited, the training process
    holds no batch in it, and it is still the block the worker knows in that place (one
    forked before a replacement knows the block replaced); from then on it reuses the
    block as one of its own (:class:`WorkerBlocks`), and it stays its own until it exits.
    A kept block is replaced, under the same lock, only when no process could be using
    it. So a batch the training code keeps from an earlier epoch is never overwritten,
    and two workers (of one loader or of two) never share a block. A block of a worker
    that was killed is taken again once its process is gone.
    """

    OWNER, HELD, INODE = 0, 1, 2

    def __init__(self) -> None:
        import tempfile

        import torch

        self.pid = os.getpid()
        board = torch.zeros((KEPT_BETWEEN_EPOCHS, 3), dtype=torch.int64)
        self.board = board.share_memory_()  # type: ignore[no-untyped-call]
        self._view = self.board.numpy()
        # slot -> (descriptor, bytes, inode), in the training process and, as it was at
        # the fork, in each worker. A slot's block may be replaced by a larger one: the
        # board's INODE column says which block is there now.
        self.blocks: dict[int, tuple[int, int, int]] = {}
        # (sender, inode) of blocks found no place when they first came: not looked at
        # again (a later epoch's workers send new blocks, which are).
        self._refused: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._closed = False
        # The claiming lock: a POSIX record lock on a file with no name that the forked
        # processes share, which the kernel lets go when its holder exits, however it
        # exits. (OSError when no such file can be made: then nothing is kept.)
        try:
            self._claiming = os.memfd_create("cadstore-kept-blocks", os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            self._claiming, name = tempfile.mkstemp(prefix="cadstore-kept-")
            os.unlink(name)
        self._closing = weakref.finalize(self, _close_quietly, self._claiming)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (in this process, or before it was forked)."""
        return self._closed

    @contextlib.contextmanager
    def _claim_lock(self) -> Iterator[None]:
        import fcntl  # POSIX only: blocks are kept only for workers forked from here

        fd = self._claiming
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)

    # -- in the training process
    def hold(self, storage: Any, sender: int) -> int | None:
        """A batch in ``storage`` arrived from worker ``sender``: the block is held (until
        :meth:`let_go`), and kept if it is new and large, and there is room or a smaller
        kept block no process uses to replace. A block that finds no place the first time
        is not looked at again when it brings later batches (its worker's; a later epoch's
        workers send new blocks). Returns its slot (``None``: not kept)."""
        try:
            fd, nbytes = storage._share_fd_cpu_()
            inode = os.fstat(fd).st_ino
        except (AttributeError, OSError, RuntimeError):
            return None
        replaced = None
        with self._lock:
            if self._closed:
                return None
            slot = next((k for k, (_, _, i) in self.blocks.items() if i == inode), None)
            if slot is None:
                full = len(self.blocks) >= KEPT_BETWEEN_EPOCHS
                if (
                    nbytes < _GRANULE
                    or (sender, inode) in self._refused
                    # Smaller than every kept block: none to replace (checked first: this
                    # runs for every batch in a block that is not kept).
                    or (full and nbytes <= min(n for _, n, _ in self.blocks.values()))
                    or _parent_of(sender) != self.pid  # a worker forked here
                ):
                    return None
                try:
                    mine = os.dup(fd)
                except OSError:  # out of descriptors: not kept, the batch comes all the same
                    return None
                if not full:
                    slot = len(self.blocks)  # a slot no worker forked before knows
                    self._view[slot] = (sender, 1, inode)
                else:
                    with self._claim_lock():
                        slot = self._unused_smaller(nbytes)
                        if slot is not None:
                            replaced = self.blocks[slot][0]
                            self._view[slot] = (sender, 1, inode)
                    if slot is None:
                        os.close(mine)
                        if len(self._refused) >= _REFUSED_KEPT:
                            self._refused.clear()
                        self._refused.add((sender, inode))
                        return None
                self.blocks[slot] = (mine, nbytes, inode)
            self._view[slot, self.HELD] = 1
        if replaced is not None:
            # Its memory goes once no process maps it or has it open (workers forked
            # before the replacement hold a copy of the descriptor until they exit).
            os.close(replaced)
        return slot

    def _unused_smaller(self, nbytes: int) -> int | None:
        """The slot of the smallest kept block of fewer than ``nbytes`` that no process is
        using (no batch held here, its owner gone), or ``None``. Under the claiming lock:
        a worker cannot take it meanwhile."""
        for size, slot in sorted((n, k) for k, (_, n, _) in self.blocks.items()):
            if size >= nbytes:
                break
            if self._unused(slot):
                return slot
        return None

    def _unused(self, slot: int) -> bool:
        """Whether no process uses kept block ``slot``: no batch in it is held here, and no
        running process (this one included) owns it, nor was it let go for good. Callers
        hold the claiming lock."""
        owner, held = int(self._view[slot, self.OWNER]), int(self._view[slot, self.HELD])
        return not held and owner >= 0 and not (owner and _alive(owner))

    def let_go(self, slot: int, pid: int) -> None:
        """The training process (``pid``) holds no batch in block ``slot`` any more."""
        if os.getpid() == pid:  # not in a worker forked while the storage lived
            self._view[slot, self.HELD] = 0

    def close(self) -> None:
        """Let every kept block go (closing the descriptors frees the memory of those no
        process maps any more); no worker takes one from then on."""
        with self._lock, self._claim_lock():
            self._closed = True
            blocks, self.blocks = self.blocks, {}
            self._view[:, self.OWNER] = -1  # nothing to take any more
        for fd, _, _ in blocks.values():
            os.close(fd)
        self._closing()

    def forget_inherited(self) -> None:
        """In a process forked from the one that kept the blocks and about to keep its own:
        close its copies of the descriptors."""
        blocks, self.blocks = self.blocks, {}
        for fd, _, _ in blocks.values():
            _close_quietly(fd)
        self._closing()

    # -- in a worker
    def claim(self, nbytes: int) -> Any | None:
        """The storage of a kept block of at least ``nbytes`` that no process is using,
        now this worker's own; ``None`` if there is none."""
        fitting = sorted((n, k) for k, (_, n, _) in self.blocks.items() if n >= nbytes)
        if not fitting:
            return None
        with self._claim_lock():
            for _, slot in fitting:
                # Owned by a running process (this one included): its own to reuse.
                if not self._unused(slot):
                    continue
                if int(self._view[slot, self.INODE]) != self.blocks[slot][2]:
                    # Replaced since this worker was forked: its copy of the descriptor is
                    # of the block evicted, which is nobody's to write any more (another
                    # worker forked before would take it too).
                    continue
                self._view[slot, self.OWNER] = os.getpid()
                break
            else:
                return None
        import torch

        fd, size, _ = self.blocks[slot]
        storages: Any = torch.UntypedStorage
        try:
            # A storage over the file (torch maps a duplicate of the descriptor).
            return storages._new_shared_fd_cpu(fd, size)
        except BaseException:
            with self._claim_lock():
                if int(self._view[slot, self.OWNER]) == os.getpid():
                    self._view[slot, self.OWNER] = 0
            raise


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _proc_stat(pid: int) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, parent, ...);
    empty where ``/proc`` does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _parent_of(pid: int) -> int | None:
    """The parent of process ``pid`` (``None`` where ``/proc`` does not say)."""
    fields = _proc_stat(pid)
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` is running: alive (:func:`~cadstore.io.publish.pid_alive`)
    and not a zombie (exited, not yet reaped)."""
    return pid_alive(pid) and _proc_stat(pid)[:1] != [b"Z"]


_KEPT: list[KeptBlocks | None] = [None]


def _kept_here() -> KeptBlocks | None:
    """The training process's :class:`KeptBlocks` (made on first use); ``None`` when
    torch shares memory otherwise than by file descriptor."""
    if not _by_descriptor():
        return None
    kept = _KEPT[0]
    if kept is None or kept.pid != os.getpid():
        if kept is not None:
            kept.forget_inherited()
            _KEPT[0] = None
        try:
            kept = _KEPT[0] = KeptBlocks()
        except OSError:  # no shared memory or lock file to be had: blocks are not kept
            return None
    return kept


def _by_descriptor() -> bool:
    """Whether torch shares memory between processes by file descriptor (the blocks a
    training process keeps are descriptors)."""
    import torch.multiprocessing

    strategy = torch.multiprocessing.get_sharing_strategy()  # type: ignore[no-untyped-call]
    return bool(strategy == "file_descriptor")


def inherited_blocks() -> KeptBlocks | None:
    """In a ``DataLoader`` worker forked from the training process: its
    :class:`KeptBlocks`, if it has one; ``None`` anywhere else."""
    kept = _KEPT[0]
    if kept is None or kept.pid == os.getpid() or kept.pid != os.getppid() or kept.closed:
        return None
    return kept


def release_kept_blocks() -> None:
    """Let go of the blocks this training process keeps for later epochs' workers (see
    :class:`KeptBlocks`), and of the descriptors it keeps of the blocks of workers that
    exited (see :class:`_Senders`; otherwise closed when another worker first sends or
    this process forks): the memory of those no worker is using is freed. Workers forked
    afterwards make their own again."""
    kept = _KEPT[0]
    if kept is not None and kept.pid == os.getpid():
        kept.close()
        _KEPT[0] = None
    _sweep_senders()


def _tensors(value: Any) -> list[Any]:
    """The tensors in a collated batch (nested dicts and lists)."""
    if isinstance(value, dict):
        return [t for inner in value.values() for t in _tensors(inner)]
    if isinstance(value, list | tuple):
        return [t for inner in value for t in _tensors(inner)]
    return [value] if hasattr(value, "untyped_storage") else []


#: Blocks are made in multiples of this many bytes (of :data:`_PAGE` when smaller).
_GRANULE = 2 * 1024 * 1024
_PAGE = 4096


def block_capacity(nbytes: int) -> int:
    """Bytes of a new block for a batch of ``nbytes``: a quarter more, so that later
    batches a little larger fit too, in whole pages (whole :data:`_GRANULE` multiples
    from that size on). Torch reserves and zeroes every page of a new segment, so a
    power-of-two size class would cost up to twice the memory and the time."""
    want = nbytes + nbytes // 4
    unit = _GRANULE if want >= _GRANULE else _PAGE
    return -(-want // unit) * unit
