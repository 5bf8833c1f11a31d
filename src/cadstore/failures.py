"""What a failed unit of work is reported as: its reason, its error, its logs.

The one classification of the failures of cadstore's work on many inputs, wherever it
runs: an encode's file or body (:mod:`cadstore.encode.work`, and an exception escaping
the file's work, :mod:`cadstore.encode.run`) in a supervised worker or a Dask task, a
flow's item whose task fails (:mod:`cadstore.flowmanager.tasks.parallel_executor`) and
an extract task's source (:mod:`cadstore.flowmanager.flow`), a Dask task's own exception
(:func:`cadstore.cluster.run_on_dask`). Kept apart from the encoder so that using it needs
no CAD kernel. Only a worker that died is a ``"crash"``, which no exception is; the
supervisors say so themselves.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from typing import Any, Final

from cadstore.errors import CadstoreError, CorruptStoreError, InvalidDataError

__all__ = ["NoFacesError", "describe", "failure_fields", "traceback_lines"]

# Lines of traceback kept in a failure's logs.
_TRACEBACK_LINES: Final = 30


# Failures fully explained by their message: a traceback in the logs would only be noise.
_EXPECTED_REASONS: Final = frozenset({"corrupt", "no_faces"})


class NoFacesError(ValueError):
    """A body without faces: nothing to encode (reason ``"no_faces"``)."""


def _reason(exc: BaseException, *, loading: bool) -> str:
    if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__:
        return "memory"
    if isinstance(exc, NoFacesError):
        return "no_faces"
    if type(exc).__module__.split(".")[0] == "OCP":
        return "kernel"
    if loading and isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
        return "unreadable"
    if loading and isinstance(exc, CorruptStoreError | OSError):
        return "corrupt"
    if isinstance(exc, InvalidDataError):
        return "invalid_data"
    if isinstance(exc, CadstoreError | OSError):
        return "storage"
    return "error"


def failure_fields(
    exc: BaseException, *, loading: bool, logs: Sequence[str] = (), seconds: float = 0.0
) -> dict[str, Any]:
    """What a failure message says of ``exc``: its reason, error, logs, seconds, and
    whether the worker is to be replaced (``recycle``, after a ``MemoryError``).

    The one classification of an encode's and a flow's failures, in a supervised worker
    as in a Dask task, and of the exceptions a Dask task raises itself: ``"corrupt"`` or
    ``"unreadable"`` for a file that cannot be read (``loading``), ``"kernel"``,
    ``"no_faces"``, ``"invalid_data"``, ``"storage"`` (a cadstore error or an OSError of
    the work), ``"memory"``, else ``"error"``. Only a worker that died is a
    ``"crash"``, which no exception is.

    Parameters
    ----------
    exc
        The error.
    loading
        Whether it was raised reading the CAD file (the file is then at fault).
    logs
        The warnings logged before it; its traceback follows them, unless its reason
        needs none.
    seconds
        The time spent on the failed step.
    """
    reason = _reason(exc, loading=loading)
    return {
        "reason": reason,
        "error": describe(exc),
        "logs": [*logs, *traceback_lines(exc, reason)],
        "seconds": seconds,
        "recycle": isinstance(exc, MemoryError),
    }


def describe(exc: BaseException) -> str:
    """``"TypeName: message"`` of an exception, for the error summary."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def traceback_lines(exc: BaseException, reason: str = "error") -> list[str]:
    """The last lines of ``exc``'s traceback, or none for a failure its message explains."""
    if reason in _EXPECTED_REASONS:
        return []
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    return lines[-_TRACEBACK_LINES:]
