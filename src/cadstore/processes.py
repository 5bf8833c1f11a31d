"""Starting worker processes safely: fork when that is safe, spawn without side effects.

Encoding and the optional process pool of a merge run work in child processes. A forked
child starts at once and inherits what the parent has imported (the CAD kernel, a
notebook's functions), but forking a process that runs other threads can copy a lock one
of them holds, so :func:`mp_context` forks only a single-threaded parent and spawns
otherwise. A spawned child imports the parent's main module again, which runs every
top-level statement of a script without an ``if __name__ == "__main__":`` guard;
:func:`without_main_script` starts children that skip it, for workers that need nothing
from ``__main__``.
"""

from __future__ import annotations

import importlib.machinery
import multiprocessing
import multiprocessing.context
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["mp_context", "without_main_script"]


def mp_context() -> multiprocessing.context.ForkContext | multiprocessing.context.SpawnContext:
    """Fork when this process has a single thread (fast, and the imports are inherited);
    spawn otherwise, since forking a threaded process can copy a held lock."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


@contextmanager
def without_main_script() -> Iterator[None]:
    """Start spawned children, within this block, without running the main script in them.

    A spawned child imports the parent's ``__main__`` by path, which runs every top-level
    statement of a script that has no main guard (a user's script calling
    ``encode_files`` would encode, in every worker, from the top). A child whose parent's
    main module reports the name ``"__main__"`` skips that import (as it does for
    ``python -m`` programs), so the name is given for the start only. Use it only for
    children that need nothing defined in ``__main__``.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
    try:
        yield
    finally:
        main.__spec__ = None
