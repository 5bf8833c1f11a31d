"""Batches decoded by worker processes into shared-memory buffers they reuse.

Threads of the training process (:class:`~cadstore.dataset.training.BatchLoader`) share
one interpreter lock: the decoding itself releases it, the bookkeeping around every chunk
does not. Batches whose arrays are mostly bookkeeping (graph-only items: many small
arrays, little to decode) go faster in processes, which do not share that lock
(``docs/benchmarks.md``). ``DataLoader(num_workers=N)`` uses processes too; its workers
start afresh at every epoch unless ``persistent_workers=True``, and a new shared-memory
segment, which the kernel must create, fill with zero pages and map in the training
process, costs about as much as the decoding (its workers reuse theirs within an epoch:
:mod:`cadstore.dataset.worker_memory`).

Here each worker process keeps a few shared-memory blocks (:class:`SharedBufferPool`) and
decodes every batch straight into one of them, its arrays laid out as in a ``DataLoader``
worker. The training process receives the batch through a pipe; a block goes to it once,
the first time a batch uses it, and later batches name it by id, so nothing is created or
mapped again. Once the training process no longer refers to a batch's block (torch's use
count of its storage, as for the thread loader's pool), it tells the worker, which lends
it to a later batch. A batch the caller keeps is therefore never overwritten.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import multiprocessing.connection
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from cadstore.dataset.torch_support import BatchAllocator, require_torch
from cadstore.dataset.worker_memory import (
    block_capacity,
    freeze_inherited,
    plain_tensor,
    tensor_at,
    tensor_place,
    tensor_value,
)
from cadstore.io.native import populate_pages

__all__ = ["SharedBufferPool", "WorkerProcesses"]

#: Free blocks a worker keeps for later batches (the largest); more are let go. With 4, a
#: worker made blocks more often and read 4% slower than with 8 (``docs/benchmarks.md``).
FREE_BLOCKS = 8
#: Seconds between checks that a worker process is still alive while waiting for a batch.
_POLL_SECONDS = 1.0
#: Seconds a worker process is given to exit at the end of an epoch before it is stopped.
_JOIN_SECONDS = 10.0


class SharedBufferPool:
    """A worker's batch blocks in shared memory, lent until the training process frees them.

    A batch's arrays are laid out in one block (as in a ``DataLoader`` worker: see
    :func:`~cadstore.dataset.torch_support.batch_tensors`), the smallest free one that
    holds the batch, or a new one a quarter larger than asked
    (:func:`~cadstore.dataset.worker_memory.block_capacity`). One block per batch, not one
    buffer per array: the kernel reserves and zeroes every page of a new shared segment,
    and per-array buffers of power-of-two sizes kept being made well into the second epoch
    (78-141 per worker over three epochs against 9-12 blocks), batches of whole items
    ranging from 24 to 280 MB. Where new pages are dear (in the benchmark's process, the
    kernel zeroing them took 61% of the workers' time in its slowest repeat) one block per
    batch read 15% more items per second (``docs/benchmarks.md``).

    :meth:`lent_now` names the blocks the last batch took (sent with it) and those no
    longer kept; :meth:`release` gives back those the training process reported free, of
    which the :data:`FREE_BLOCKS` largest stay for reuse. A block's shared memory goes to
    the training process once, the first time a batch uses it; later batches name it (see
    :class:`_Pickler`).
    """

    def __init__(self) -> None:
        self.torch = require_torch()
        self._free: list[tuple[int, Any]] = []
        self._lent: dict[int, Any] = {}
        self._now: list[int] = []
        self._by_pointer: dict[int, int] = {}
        self._sent: set[int] = set()
        self._dropped: list[int] = []
        self._next_id = 0
        self.allocated = 0
        self.reused = 0

    def take_block(self, nbytes: int) -> Any:
        """A uint8 tensor of ``nbytes`` in a free (or new) shared block."""
        torch = self.torch
        fits = [i for i, (_, block) in enumerate(self._free) if block.numel() >= nbytes]
        if fits:
            ident, block = self._free.pop(min(fits, key=lambda i: self._free[i][1].numel()))
            self.reused += 1
        else:
            # Created in shared memory (share_memory_() would allocate, then copy there).
            storage = torch.UntypedStorage._new_shared(block_capacity(nbytes))
            block = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),))
            ident = self._next_id
            self._next_id += 1
            self.allocated += 1
            self._by_pointer[storage.data_ptr()] = ident
        self._lent[ident] = block
        self._now.append(ident)
        if not fits:
            # A new segment, decoded into at once: its pages mapped in one call.
            populate_pages(block.data_ptr(), nbytes)
        return block[:nbytes]

    def ident_of(self, tensor: Any) -> int | None:
        """The id of the lent block ``tensor`` is a view of, or ``None``."""
        ident = self._by_pointer.get(tensor.untyped_storage().data_ptr())
        return ident if ident in self._lent else None

    def lent_now(self) -> tuple[list[int], dict[int, Any], list[int]]:
        """What goes with the batch made since the last call: the ids of the blocks it
        took, those blocks the training process has not received yet (by id), and the ids
        of blocks let go since (for the training process to let go too)."""
        now, self._now = self._now, []
        new = {ident: self._lent[ident] for ident in now if ident not in self._sent}
        self._sent.update(new)
        dropped, self._dropped = self._dropped, []
        return now, new, dropped

    def abandon(self) -> None:
        """Free the blocks taken since :meth:`lent_now` (their batch failed, never sent)."""
        now, self._now = self._now, []
        self._give_back(now)

    def release(self, idents: list[int]) -> None:
        """Make the blocks ``idents`` free again (the training process let them go)."""
        self._give_back(idents)

    def _give_back(self, idents: list[int]) -> None:
        for ident in idents:
            block = self._lent.pop(ident, None)
            if block is not None:
                self._free.append((ident, block))
        if len(self._free) > FREE_BLOCKS:
            self._free.sort(key=lambda entry: entry[1].numel())
            extra, self._free = self._free[:-FREE_BLOCKS], self._free[-FREE_BLOCKS:]
            for ident, block in extra:
                del self._by_pointer[block.untyped_storage().data_ptr()]
                self._sent.discard(ident)
                self._dropped.append(ident)


class _Pickler(pickle.Pickler):
    """Pickles a batch with its tensors in the pool's blocks as references to them.

    Sending a shared-memory tensor through a ``torch.multiprocessing`` queue passes its
    file descriptor, a round trip to the worker's descriptor-sharing thread each time
    (which waits for the worker's interpreter lock while it decodes). A tensor in a block
    the training process already holds is named instead: ``(block id, dtype, offset,
    shape, strides)``. Other tensors (a batch's few small ones) travel by value.
    """

    def __init__(self, file: Any, pool: SharedBufferPool) -> None:
        super().__init__(file, protocol=5)
        self.pool = pool
        self.torch = pool.torch

    def persistent_id(self, obj: Any) -> Any:
        if not plain_tensor(obj, self.torch):
            return None  # their own pickling
        ident = self.pool.ident_of(obj)
        if ident is not None:
            return (_BUFFER, ident, *tensor_place(obj))
        value = tensor_value(obj)
        return None if value is None else (_VALUE, value)


_BUFFER, _VALUE = "cadstore-buffer", "cadstore-value"


class _Unpickler(pickle.Unpickler):
    """Rebuilds a batch :class:`_Pickler` made, as views of the blocks ``held``."""

    def __init__(self, file: Any, held: dict[int, Any], torch: Any) -> None:
        super().__init__(file)
        self.held = held
        self.torch = torch

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if (module, name) == ("torch._utils", "_rebuild_sparse_tensor"):
            return _unlisted(found, self.torch)
        return found

    def persistent_load(self, pid: Any) -> Any:
        if pid[0] == _BUFFER:
            _, ident, *place = pid
            try:
                return tensor_at(self.torch, self.held[ident].untyped_storage(), tuple(place))
            except ValueError as exc:
                raise pickle.UnpicklingError(str(exc)) from exc
        if pid[0] == _VALUE:
            return self.torch.from_numpy(pid[1])
        raise pickle.UnpicklingError(f"unknown reference {pid[0]!r}")


def _unlisted(rebuild: Callable[..., Any], torch: Any) -> Callable[..., Any]:
    """Torch's rebuilding of an unpickled sparse tensor, without what it leaves behind.

    ``torch._utils._rebuild_sparse_tensor`` appends each tensor it makes to a list that
    ``torch.load`` checks and empties once the file is read. A batch from this loader's
    own worker processes is unpickled outside ``torch.load``: its tensors are taken off
    the list again, each by identity (and only it: a checkpoint another thread is loading
    meanwhile keeps its own there to be checked), or they would stay alive for the life of
    the process and every later ``torch.load(weights_only=True)`` would warn about them.
    """

    def rebuild_sparse(*args: Any) -> Any:
        tensor = rebuild(*args)
        pending = getattr(getattr(torch, "_utils", None), "_sparse_tensors_to_validate", None)
        if pending is not None:
            for i in range(len(pending) - 1, -1, -1):
                if pending[i] is tensor:
                    del pending[i]
                    break
        return tensor

    return rebuild_sparse


class _WorkerFailed:
    """An exception raised in a worker process, carried to the training process.

    What travels is a copy of it, made by pickling it back on the spot: the exception
    itself can hold tensors of the failed batch (a collate function's error naming one),
    whose block the worker lends to its next batch; sent as they are they would reach the
    training process as views of that shared memory, and change under it.
    """

    def __init__(self, exc: BaseException) -> None:
        self.text = "".join(traceback.format_exception(exc))
        try:
            carried: BaseException = pickle.loads(pickle.dumps(exc))  # noqa: S301 - made here
            self.exc: BaseException | None = carried
        except Exception:  # an exception that does not pickle back: its text only
            self.exc = None


def _work(
    source: Any,
    collate_fn: Any,
    me: int,
    tasks: Any,
    freed: Any,
    results: Any,
    inherited: tuple[int, ...] = (),
) -> None:
    """Worker ``me``: decode the batches taken from ``tasks`` into its pool, until ``None``.

    ``freed`` brings the ids of its blocks the training process let go; ``results`` is
    the sending end of this worker's own pipe to the training process, which takes
    ``(batch index, me, pickled batch, block ids used, blocks new to the training process,
    block ids let go)``. ``inherited`` are the descriptors of the training process's
    receiving ends that a forked worker holds copies of: closed first, so that a send to
    a training process that closed its end fails instead of blocking forever.
    """
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    freeze_inherited()
    torch = require_torch()
    torch.set_num_threads(1)  # one decoding thread per process; the processes are the pool
    from cadstore.dataset.reader import DatasetReader

    # Ctrl-C is for the training process, which stops the workers (as DataLoader's do).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shared = source.reader
    mine = copy.copy(source)
    mine.reader = DatasetReader(
        shared.location,
        limits=shared.limits,
        cache_bytes=shared.cache_bytes,
        stored_layout=shared.stored_layout,
    )
    shared.close()  # the copy that came with the source (its own file under spawn)
    pool = SharedBufferPool()
    # Sent by a thread: a batch larger than the pipe holds waits there until the training
    # process reads it (between its training steps), and the next batch is decoded
    # meanwhile, as a multiprocessing queue's feeder thread would let it.
    outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    sender = threading.Thread(target=_send_all, args=(outbox, results), daemon=True)
    sender.start()
    try:
        while True:
            task = tasks.get()
            if task is None:
                return
            index, codes = task
            while not freed.empty():
                pool.release(freed.get())
            try:
                allocator = BatchAllocator(block=pool.take_block)
                batch = mine.read_many(codes, allocator)
                batch.tensors = allocator.tensors
                collated = collate_fn(batch)
                payload = io.BytesIO()
                _Pickler(payload, pool).dump(collated)
                del batch, collated
                outbox.put((index, me, payload.getvalue(), *pool.lent_now()))
            except Exception as exc:
                # Reported; the worker stays until told to stop, since batches it queued
                # before can still need it to hand over their buffers.
                pool.abandon()
                outbox.put((index, me, _WorkerFailed(exc), *pool.lent_now()))
    finally:
        outbox.put(None)
        sender.join()
        mine.reader.close()


def _send_all(outbox: queue.SimpleQueue[Any], pipe: Any) -> None:
    """Send every message of ``outbox`` through ``pipe``, in order, until ``None``."""
    while True:
        message = outbox.get()
        if message is None:
            return
        try:
            pipe.send(message)
        except OSError:  # the training process closed its end: nobody is listening
            return


class WorkerProcesses:
    """Worker processes that decode batches into their shared buffers, kept across epochs.

    Started on first use, they stay until :meth:`close` (a new process would start with an
    empty pool: every buffer created, zero-filled and mapped again). Batches go to
    whichever worker is free (one queue of tasks): items differ a hundredfold in size, and
    a worker dealt a batch with a huge item would hold up one dealt batches in turn. The
    batches are handed out in order.

    Each worker sends its batches through a pipe of its own, whose sending end only that
    worker holds: a worker killed in the middle of a message (out of memory) closes the
    pipe, and the training process reads the end of it as an error. Through one queue
    shared by every worker (and written by the training process's copy of its end too),
    the half-sent message would have left the training process waiting for the rest
    forever.

    Parameters
    ----------
    loader
        The :class:`~cadstore.dataset.training.BatchLoader` whose source, collate
        function, prefetch depth, multiprocessing context and pool (for torch's use counts)
        are used.
    """

    def __init__(self, loader: Any) -> None:
        torch = require_torch()
        self.n = int(loader.processes)
        self.prefetch = int(loader.prefetch)
        self.in_use = loader.pool.in_use  # torch's use count, as for the threads' pool
        context = torch.multiprocessing.get_context(loader.multiprocessing_context)
        self.tasks = context.Queue()
        self.freed_queues = [context.SimpleQueue() for _ in range(self.n)]
        self.results: list[multiprocessing.connection.Connection] = []
        self.workers = []
        forked = context.get_start_method() == "fork"
        for w in range(self.n):
            receiving, sending = context.Pipe(duplex=False)
            # A forked worker inherits every receiving end made so far, its own included.
            inherited = tuple(r.fileno() for r in (*self.results, receiving)) if forked else ()
            worker = context.Process(
                target=_work,
                args=(
                    loader.source,
                    loader.collate_fn,
                    w,
                    self.tasks,
                    self.freed_queues[w],
                    sending,
                    inherited,
                ),
                name=f"cadstore-batches-{w}",
                daemon=True,
            )
            worker.start()
            # Only the worker keeps the sending end (and workers started later never get
            # it): when it dies, reading its pipe ends instead of waiting.
            sending.close()
            self.results.append(receiving)
            self.workers.append(worker)
        # Every block received, by worker and id, kept mapped (and its storage alive) until
        # its worker lets it go.
        self.held: list[dict[int, Any]] = [{} for _ in range(self.n)]
        self.torch = torch
        self.lent: list[tuple[int, int]] = []
        #: Batches received ahead of their turn, by index.
        self.ready: dict[int, Any] = {}
        self.closed = False
        self.failed = False
        #: The plan of the iteration under way (see :meth:`run`), ``None`` when idle.
        self.active: Any = None

    def _reclaim(self) -> None:
        """Give the workers back the buffers nothing refers to any more."""
        still = []
        freed: dict[int, list[int]] = collections.defaultdict(list)
        for key in self.lent:
            if self.in_use(self.held[key[0]][key[1]]):
                still.append(key)
            else:
                freed[key[0]].append(key[1])
        self.lent = still
        for worker, idents in freed.items():
            self.freed_queues[worker].put(idents)

    def _dead(self) -> Any:
        """A worker process that has exited, if any."""
        return next((w for w in self.workers if not w.is_alive()), None)

    def _next_message(self) -> tuple[Any, ...]:
        """The next result any worker sends (waiting, while every worker lives).

        A dead worker is an error even when the others could go on: the batch it was
        decoding would never come, and a pool that shrinks silently would halve the
        rate unnoticed.
        """
        while True:
            dead = self._dead()
            if dead is not None:
                self.failed = True
                raise RuntimeError(
                    f"batch decoding process {dead.pid} exited unexpectedly "
                    f"(exit code {dead.exitcode})"
                )
            ready = multiprocessing.connection.wait(self.results, timeout=_POLL_SECONDS)
            if not ready:
                continue  # the check above runs again: every worker still alive?
            try:
                pipe = next(r for r in self.results if r in ready)
                message: tuple[Any, ...] = pipe.recv()
                return message
            except Exception as exc:
                # A worker that died in the middle of a message ends its pipe (EOFError);
                # a batch's new buffers come through the worker itself, so one that died
                # after sending a batch leaves it unreadable (connection reset).
                self.failed = True
                time.sleep(_POLL_SECONDS)
                dead = self._dead()
                state = (
                    f"process {dead.pid} exited unexpectedly (exit code {dead.exitcode})"
                    if dead is not None
                    else "processes are alive"
                )
                raise RuntimeError(
                    f"a batch from the decoding processes could not be received ({exc}); "
                    f"batch decoding {state}"
                ) from exc

    def _receive(self, index: int) -> Any:
        """Batch ``index``, unpickled (batches arriving before it are kept for later)."""
        while index not in self.ready:
            got, worker, payload, used, new, dropped = self._next_message()
            self.held[worker].update(new)
            for ident in dropped:  # let go by the worker: never named again
                self.held[worker].pop(ident, None)
            self.ready[got] = (worker, payload, used)
        worker, payload, used = self.ready.pop(index)
        # Lent from now on: until its tensors exist, nothing but ``held`` refers to a
        # buffer, and a batch waiting in ``ready`` must not see its buffers given back.
        self.lent.extend((worker, ident) for ident in used)
        if isinstance(payload, _WorkerFailed):
            self.failed = True
            if payload.exc is not None:
                raise payload.exc from RuntimeError(f"in a batch decoding process:\n{payload.text}")
            raise RuntimeError(f"a batch decoding process failed:\n{payload.text}")
        return _Unpickler(io.BytesIO(payload), self.held[worker], self.torch).load()

    def run(self, plan: list[np.ndarray]) -> Iterator[Any]:
        """The batches of ``plan`` (item codes per batch), in order.

        Raises
        ------
        RuntimeError
            If a worker process dies without a word (killed, out of memory).
        """
        if self.closed:
            raise RuntimeError("these worker processes are closed")
        n = self.n
        self.active = plan
        submitted = received = 0

        def submit() -> None:
            nonlocal submitted
            self.tasks.put((submitted, plan[submitted].tolist()))
            submitted += 1

        try:
            # One batch under way per worker, and ``prefetch`` more queued among them.
            while submitted < min(len(plan), n + self.prefetch):
                submit()
            while received < len(plan):
                batch = self._receive(received)
                received += 1
                if submitted < len(plan):
                    self._reclaim()
                    submit()
                yield batch
                del batch
        finally:
            # Stopped early (break, an error in the training step): the batches under way
            # are received and let go, so the next epoch starts with every worker idle.
            # No error raises from here: this runs as the generator is closed (by a loop's
            # end or the garbage collector), where an error could only be reported as
            # ignored; a worker that failed or died meanwhile means starting afresh. An
            # interrupt (Ctrl-C) still goes through, the pool closed all the same: its
            # batches under way would otherwise arrive in the next epoch's place.
            try:
                if not self.failed:
                    while received < submitted:
                        self._receive(received)
                        received += 1
            except BaseException as exc:
                self.failed = True
                if not isinstance(exc, Exception):
                    raise
            finally:
                self.active = None
                self._reclaim()
                if self.failed:
                    self.close()

    def close(self) -> None:
        """Stop the worker processes (their shared buffers go with them)."""
        if self.closed:
            return
        self.closed = True
        for _ in self.workers:
            self.tasks.put(None)
        # Closed first: a worker still sending a batch nobody will read fails and stops.
        for receiving in self.results:
            receiving.close()
        for worker in self.workers:
            # After a failure the workers may be blocked writing results nobody reads.
            worker.join(0.1 if self.failed else _JOIN_SECONDS)
            if worker.is_alive():
                worker.terminate()
                worker.join()
        self.tasks.cancel_join_thread()
        self.tasks.close()
        for freed in self.freed_queues:
            freed.close()
        self.ready.clear()
        self.held = [{} for _ in range(self.n)]
        self.lent.clear()
