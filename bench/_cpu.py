"""CPU time an epoch costs per item, in this process and in its worker processes.

On a shared two-core machine the rate of one measure varies 2-5x between repeats; the CPU
time each item costs varies far less, so ``bench_dataset.py`` and ``bench_training.py``
record it beside the rate of their ``DataLoader`` epochs. Worker processes are counted
once they have exited and been reaped (their time then joins this process's
``RUSAGE_CHILDREN``), which a ``DataLoader`` epoch without ``persistent_workers`` does at
its end.
"""

from __future__ import annotations

import resource


def _usage() -> tuple[resource.struct_rusage, resource.struct_rusage]:
    return resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)


def _split(before: resource.struct_rusage, after: resource.struct_rusage, items: int) -> dict:
    return {
        "user": (after.ru_utime - before.ru_utime) * 1e3 / items,
        "system": (after.ru_stime - before.ru_stime) * 1e3 / items,
    }


class EpochCpu:
    """CPU milliseconds per item between its creation and :meth:`per_item`.

    Examples
    --------
    >>> clock = EpochCpu()
    >>> sum(range(100_000)) > 0
    True
    >>> sorted(clock.per_item(1))
    ['main_cpu_ms_per_item', 'worker_cpu_ms_per_item']
    """

    def __init__(self) -> None:
        self._main, self._workers = _usage()

    def per_item(self, items: int) -> dict[str, dict[str, float]]:
        """CPU time used since the clock was made, per item.

        Parameters
        ----------
        items
            Items the epoch delivered.

        Returns
        -------
        dict
            ``main_cpu_ms_per_item`` (this process, every thread) and
            ``worker_cpu_ms_per_item`` (its reaped children), each ``{"user": ms,
            "system": ms}``.
        """
        main, workers = _usage()
        return {
            "main_cpu_ms_per_item": _split(self._main, main, items),
            "worker_cpu_ms_per_item": _split(self._workers, workers, items),
        }


def total(split: dict[str, float]) -> float:
    """User plus system time of one :meth:`EpochCpu.per_item` entry."""
    return split["user"] + split["system"]
