"""Batches for training, decoded by threads of the training process itself.

``DataLoader(num_workers=N)`` decodes items in worker processes and ships every batch to
the training process through shared memory (blocks the workers reuse once the training
process lets them go, :mod:`cadstore.dataset.worker_memory`). Decoding releases the GIL
(zstd, numpy copies), so threads of the training process can do the same work without
the shipping:
:class:`BatchLoader` runs a small pool of threads sharing one reader of the dataset (a
reader holds its lock to plan a read and decodes the planned frames after letting it go:
:attr:`DatasetReader.shares_threads
<cadstore.dataset.reader.DatasetReader.shares_threads>`; on an object store each thread
has a reader of its own), decodes every batch straight into batch buffers that are reused
from one batch to the next, collates it, and keeps the next batches in flight while the
model trains on the current one. A batch decodes the zstd frames of each array in one call
(:meth:`DatasetReader.read_items <cadstore.dataset.reader.DatasetReader.read_items>`), so
the threads hand the interpreter lock to each other a few times per batch rather than at
every frame; the reader is kept from one epoch to the next, with the read plans it
remembers for each item, whichever thread read it.

The items are those of :class:`~cadstore.dataset.loader.CADDataset`, collated as
:class:`~cadstore.dataset.torch_support.GraphCollate` does (``DataLoader`` with
``CADDataset.to_torch_with_collate()``'s dataset and collate function gives equal batches).
``CADDataset.batches()`` makes one for a subset.

Reusing buffers is safe: a buffer goes back to the pool only when nothing outside the
loader refers to its memory any more (no batch, tensor or view of it is alive), which torch
counts for every storage. A batch kept by the caller is therefore never overwritten; the
loader then allocates a fresh buffer instead. A batch's arrays share one buffer, so a
single tensor kept keeps all of it: ``clone()`` what you keep.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import copy
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from cadstore.dataset.torch_support import BatchAllocator, GraphCollate, require_torch, size_class
from cadstore.io.native import populate_pages

__all__ = ["BatchLoader", "BufferPool"]


#: Buffers of at least this many bytes have their pages mapped as they are made
#: (:func:`~cadstore.io.native.populate_pages`); smaller ones come from the allocator's
#: own pool, mostly mapped already.
_POPULATED_BYTES = 1 << 20


class BufferPool:
    """Batch buffers (tensors) handed out by size and dtype, and taken back once unused.

    Parameters
    ----------
    pin_memory
        Allocate page-locked memory, which copies to a GPU asynchronously (only where CUDA
        is available).
    keep
        Free buffers kept per dtype; more are let go (a caller that held many batches at
        once does not leave the pool that large).

    Notes
    -----
    A buffer is lent as a view of its first elements, shaped as asked; it is free again
    when the storage it lives in is referred to by nothing but the pool (torch's use count
    of the storage). Buffers are allocated in power-of-two size classes and lent
    smallest-first, so that batches of different sizes share them.
    """

    def __init__(self, *, pin_memory: bool = False, keep: int = 64) -> None:
        self.torch = require_torch()
        self.pin_memory = pin_memory
        self.keep = keep
        self._free: dict[Any, list[Any]] = collections.defaultdict(list)
        self._lent: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()
        self.allocated = 0  # buffers made, for tests and tuning
        self.reused = 0
        use_count = getattr(self.torch._C, "_storage_Use_Count", None)
        self._use_count: Callable[[Any], int] | None = use_count
        self._baseline = self._count(self.torch.empty(1)) if use_count is not None else -1

    def _count(self, tensor: Any) -> int:
        assert self._use_count is not None
        return int(self._use_count(tensor.untyped_storage()._cdata))

    def in_use(self, tensor: Any) -> bool:
        """Whether anything but ``tensor`` itself refers to its storage (always ``True``
        when this torch cannot tell: such buffers are never reused)."""
        return self._use_count is None or self._count(tensor) > self._baseline

    def _reclaim(self) -> None:
        """Return the lent buffers nothing refers to any more to the free lists."""
        if self._use_count is None:
            self._lent.clear()  # cannot tell: never reused
            return
        still = []
        for dtype, base in self._lent:
            if self._count(base) > self._baseline:
                still.append((dtype, base))
            elif len(self._free[dtype]) < self.keep:
                self._free[dtype].append(base)
        self._lent = still

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        """A tensor of ``shape`` and ``dtype``, of a free buffer if one is large enough."""
        torch = self.torch
        key = np.dtype(dtype)
        numel = int(np.prod(shape, dtype=np.int64))
        with self._lock:
            self._reclaim()
            free = self._free[key]
            # The smallest free buffer that fits: a large one lent for a small batch would
            # leave the next large batch without one.
            fits = [i for i, candidate in enumerate(free) if candidate.numel() >= numel]
            base = None
            if fits:
                base = free.pop(min(fits, key=lambda i: free[i].numel()))
                self.reused += 1
            else:
                like = torch.from_numpy(np.empty(0, dtype=key))
                base = torch.empty(size_class(numel), dtype=like.dtype, pin_memory=self.pin_memory)
                self.allocated += 1
            self._lent.append((key, base))
            # Made under the lock: until a view exists, _reclaim would find it unused.
            view = base[:numel].view(shape)
        nbytes = numel * key.itemsize
        if not fits and not self.pin_memory and nbytes >= _POPULATED_BYTES:
            # Decoded into at once: its pages mapped in one call rather than faulted in
            # one at a time (the first epoch's buffers are all new). Outside the lock,
            # which the other threads need to take their buffers meanwhile.
            populate_pages(view.data_ptr(), nbytes)
        return view

    def take_block(self, nbytes: int) -> Any:
        """A uint8 tensor of ``nbytes``, of a free buffer if one is large enough: the one
        buffer a batch's arrays are laid out in (see
        :func:`~cadstore.dataset.torch_support.batch_tensors`). One buffer per batch
        rather than one per array: each buffer lent is a use count checked at every
        later lending, dozens per batch, under the interpreter lock the decoding threads
        share."""
        return self.take((nbytes,), np.dtype(np.uint8))


class BatchLoader:
    """Iterate over batches of a dataset's items, decoded by threads of this process.

    Parameters
    ----------
    source
        What reads the items: a loader's ``item_source`` (an
        :class:`~cadstore.dataset.loader.ItemSource` without ``item_loader_func``).
    indices
        The items' codes, in subset order.
    batch_size
        Items per batch.
    shuffle
        Visit the items in a new random order every epoch (see :meth:`set_epoch`).
    seed
        Seed of the shuffles: the order of epoch ``e`` depends on ``(seed, e)`` only.
    drop_last
        Leave out the last batch when it is smaller than ``batch_size``.
    threads
        Decoding threads (sharing one reader of a dataset on disk).
    prefetch
        Batches decoded ahead of the one the caller is given (with ``processes``: queued
        ahead, beyond the one each worker is decoding).
    collate_fn
        Makes a batch of the items read (default: :class:`GraphCollate`). It receives an
        :class:`~cadstore.dataset.reader.ItemBatch` whose arrays are already concatenated
        in reused buffers (``tensors``), as ``GraphCollate`` expects.
    pin_memory
        Page-locked batch buffers (default: when CUDA is available; threads only).
    processes
        Decode in this many worker processes instead of threads (0, the default: threads).
        Each worker keeps its batch buffers in shared memory and reuses them
        (:mod:`cadstore.dataset.processes`). Processes do not share the interpreter
        lock: they are the faster way for batches that are mostly bookkeeping (graph-only
        items), threads as fast or faster for whole items (``docs/benchmarks.md``).
        The source and ``collate_fn`` must pickle under ``spawn``.
    multiprocessing_context
        ``"fork"``, ``"spawn"`` or ``"forkserver"`` for the worker processes (default:
        the platform's, as for ``DataLoader``).

    Notes
    -----
    A batch's arrays are views of one buffer (with threads, lent by the loader's
    :class:`BufferPool`), lent again once nothing refers to any of them: a tensor kept
    after its batch (a per-item value gathered for metrics, say) keeps the whole buffer
    out of the pool, and the loader makes another. ``clone()`` what you keep.
    """

    def __init__(
        self,
        source: Any,
        indices: Sequence[int] | np.ndarray,
        *,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        threads: int = 2,
        prefetch: int = 4,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool | None = None,
        processes: int = 0,
        multiprocessing_context: str | None = None,
    ) -> None:
        if getattr(source, "item_loader_func", None) is not None:
            raise ValueError(
                "BatchLoader reads dataset items as they are stored; with an "
                "item_loader_func, use DataLoader(dataset.to_torch()) instead"
            )
        for name, value, least in (
            ("batch_size", batch_size, 1),
            ("threads", threads, 1),
            ("prefetch", prefetch, 0),
            ("processes", processes, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        torch = require_torch()
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.threads = int(threads)
        self.prefetch = int(prefetch)
        self.collate_fn = collate_fn if collate_fn is not None else GraphCollate()
        if pin_memory is None:
            pin_memory = bool(torch.cuda.is_available())
        self.pool = BufferPool(pin_memory=pin_memory and not processes)
        self.processes = int(processes)
        self.multiprocessing_context = multiprocessing_context
        self._workers: Any = None
        self._readers: _Readers | None = None
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` for the next iteration (each iteration then counts
        on from it), as ``DistributedSampler.set_epoch`` does."""
        self.epoch = int(epoch)

    def batches_of(self, epoch: int) -> list[np.ndarray]:
        """The item codes of every batch of ``epoch``, in order."""
        order = self.indices
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = order[rng.permutation(len(order))]
        stops = range(0, len(order), self.batch_size)
        batches = [order[i : i + self.batch_size] for i in stops]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _make(self, readers: _Readers, codes: np.ndarray) -> Any:
        source = readers.acquire()
        try:
            allocator = BatchAllocator(block=self.pool.take_block)
            batch = source.read_many(codes.tolist(), allocator)
        finally:
            readers.release(source)
        batch.tensors = allocator.tensors
        return self.collate_fn(batch)

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        self.epoch += 1
        plan = self.batches_of(epoch)
        if self.processes:
            if self._workers is not None and self._workers.active is not None:
                # An earlier iteration left suspended (a peek with next(iter(...))): its
                # batches would arrive in this one's place.
                self._workers.close()
            if self._workers is None or self._workers.closed:
                from cadstore.dataset.processes import WorkerProcesses

                self._workers = WorkerProcesses(self)
            yield from self._workers.run(plan)
            return
        if self._readers is None:
            self._readers = _Readers(self.source)
        readers = self._readers
        pool = cf.ThreadPoolExecutor(self.threads, thread_name_prefix="cadstore-batches")
        pending: collections.deque[cf.Future[Any]] = collections.deque()
        try:
            todo = iter(plan)
            for codes in todo:
                pending.append(pool.submit(self._make, readers, codes))
                if len(pending) >= self.threads + self.prefetch:
                    break
            while pending:
                batch = pending.popleft().result()
                following = next(todo, None)
                if following is not None:
                    pending.append(pool.submit(self._make, readers, following))
                yield batch
                del batch
        finally:
            # Also when the caller stops early (break, an exception in the training step):
            # batches not started are dropped, those under way finish, then every reader
            # of this iteration is closed.
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)

    def close(self) -> None:
        """Close the decoding threads' readers and stop the worker processes, if any (both
        are kept from one epoch to the next, with what they have cached)."""
        if self._readers is not None:
            self._readers.close()
            self._readers = None
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        readers = getattr(self, "_readers", None)
        if readers is not None:
            readers.close()
        workers = getattr(self, "_workers", None)
        if workers is None:
            return
        try:
            if not sys.is_finalizing():
                workers.close()
        except Exception:  # noqa: S110 - interpreter exit: the daemon workers end with it
            pass

    def __repr__(self) -> str:
        workers = f"{self.processes} processes" if self.processes else f"{self.threads} threads"
        return (
            f"<BatchLoader {len(self.indices)} items, {len(self)} batches of "
            f"{self.batch_size}, {workers}>"
        )


class _Readers:
    """The decoding threads' copy of the source, with a reader of its own.

    Kept from one epoch to the next: a reader's caches (shard indexes, decoded chunks, the
    frame tables and read plans of items already read) make every epoch after the first
    cheaper, and a reader made anew for each epoch started every epoch cold. For a
    dataset on disk the threads share one copy (:attr:`DatasetReader.shares_threads
    <cadstore.dataset.reader.DatasetReader.shares_threads>`): what one thread's reads
    teach the reader serves the others, where a reader per thread met, in the second
    epoch, about half of the items for the first time. On an object store a thread takes
    a free copy for each batch and gives it back, so there are never more copies than
    threads decoding at once.
    """

    def __init__(self, source: Any) -> None:
        self.shared = source
        self.free: list[Any] = []
        self.made: list[Any] = []
        # The copy every thread reads through, once made (a reader that shares threads).
        self.one: Any = None
        self.lock = threading.Lock()
        self.making = threading.Lock()
        self.closed = threading.Event()

    def acquire(self) -> Any:
        """The copy every thread shares, or a copy of the source no other thread is using
        (made when none is free).

        Raises
        ------
        RuntimeError
            If the loader was closed meanwhile (an epoch left suspended, then resumed).
        """
        found = self._available()
        if found is not None:
            return found
        # One copy made at a time: threads starting together find the shared one made.
        with self.making:
            found = self._available()
            if found is not None:
                return found
            from cadstore.dataset.reader import DatasetReader

            shared = self.shared.reader
            mine = copy.copy(self.shared)
            mine.reader = DatasetReader(
                shared.location,
                limits=shared.limits,
                cache_bytes=shared.cache_bytes,
                stored_layout=shared.stored_layout,
            )
            shares = mine.reader.shares_threads
            with self.lock:
                if not self.closed.is_set():
                    self.made.append(mine)
                    if shares:
                        self.one = mine
                    return mine
        mine.reader.close()
        raise RuntimeError("this BatchLoader was closed during the epoch under way")

    def _available(self) -> Any:
        """The shared copy, or a free one, or ``None``; refused once closed."""
        with self.lock:
            if self.closed.is_set():
                raise RuntimeError("this BatchLoader was closed during the epoch under way")
            if self.one is not None:
                return self.one
            return self.free.pop() if self.free else None

    def release(self, source: Any) -> None:
        """Give back a copy from :meth:`acquire` (closed if the loader was closed)."""
        with self.lock:
            if not self.closed.is_set():
                if source is not self.one:
                    self.free.append(source)
                return
        if source is not self.one:
            source.reader.close()

    def close(self) -> None:
        with self.lock:
            self.closed.set()
            made, self.made, self.free, self.one = self.made, [], [], None
        for source in made:
            source.reader.close()
