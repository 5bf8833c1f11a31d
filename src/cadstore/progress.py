"""Progress bars: the one wrapper around tqdm that every long job uses.

Encoding, merging, validating and exporting show a bar on stderr when asked to
(``progress=True``) and tqdm is installed (the ``dataset`` extra); otherwise, and always
under ``progress=None`` when stderr is not a terminal, they show nothing, so scripts, logs
and tests stay clean. The bar runs without tqdm's monitor thread: the encoder forks its
workers from this process, which must stay single-threaded for that to be safe.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["Progress", "progress", "wanted"]

T = TypeVar("T")


@functools.cache
def _bar_class() -> type | None:
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    class _Bar(tqdm):  # type: ignore[misc]  # tqdm ships no types: a subclass of Any
        # No monitor thread (see the module docstring); tqdm starts it when the first bar
        # is created, so the class attribute must say so beforehand.
        monitor_interval = 0

    return _Bar


def wanted(enabled: bool | None) -> bool:
    """Whether to show a bar: ``enabled`` itself, or for ``None`` only when a person is
    watching (stderr is a terminal; not when it was replaced by an object without
    ``isatty`` or closed). The one rule of bars on a terminal only, for the library's
    ``progress=None`` and the command line's default alike."""
    if enabled is not None:
        return enabled
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A progress bar to advance by hand, or nothing when none is wanted or possible.

    Parameters
    ----------
    enabled
        Show the bar: ``True``, ``False``, or ``None`` for "when stderr is a terminal".
    total
        The number of units, if known.
    desc
        The bar's label.
    unit
        What is counted (``"item"``, ``"file"``).
    """

    def __init__(
        self, enabled: bool | None, total: int | None = None, desc: str = "", unit: str = "it"
    ) -> None:
        self._bar: Any = None
        bar_class = _bar_class() if wanted(enabled) else None
        if bar_class is not None:
            self._bar = bar_class(
                total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, file=sys.stderr
            )

    def update(self, count: int = 1) -> None:
        """Advance the bar by ``count`` units."""
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        """Remove the bar. Idempotent."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def progress(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool | None = None,
) -> Iterator[T]:
    """Iterate over ``iterable``, advancing a :class:`Progress` bar with every element.

    Parameters
    ----------
    iterable
        The work items.
    total
        Their number, if ``iterable`` has no length.
    desc, unit
        The bar's label and what it counts.
    enabled
        As for :class:`Progress`.
    """
    with Progress(enabled, total, desc, unit) as bar:
        for element in iterable:
            yield element
            bar.update()
