"""Taking objects over in a child process just forked.

``os.fork`` copies a process with one thread: a lock another thread of the parent held at
that moment stays held in the child, with no thread left to release it, and the state it
guarded may be half updated. The objects cadstore lets a forked child go on using (a
dataset reader, its source, its decode budget; see
:meth:`cadstore.dataset.reader.DatasetReader.warm_before_fork`) each replace their locks
in an ``os.register_at_fork`` hook and keep what the parent left only if the lock was
free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

__all__ = ["renew_lock"]


class _Lock(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


_L = TypeVar("_L", bound=_Lock)


def renew_lock(lock: _Lock, make: Callable[[], _L]) -> tuple[_L, bool]:
    """In a child process just forked: a new lock to replace ``lock``, and whether
    ``lock`` was free as the process forked.

    Parameters
    ----------
    lock
        The lock inherited from the parent.
    make
        Makes the new one (``threading.Lock``, ``threading.RLock``).

    Returns
    -------
    tuple
        ``(new lock, free)``: when ``free`` is false a thread of the parent (another one,
        or the one that forked, for a reentrant lock) was inside what ``lock`` guards,
        which the child must not trust.
    """
    # A reentrant lock held by the very thread that forked would let itself be taken.
    owned = getattr(lock, "_is_owned", None)
    free = not (owned is not None and owned()) and lock.acquire(blocking=False)
    if free:
        lock.release()
    return make(), free
