"""Dask clusters: the client a job runs on, and what was started to get it.

Dask is optional (``cadstore[dask]``): merges (:mod:`cadstore.merging.distributed`) and
encodes (:func:`cadstore.encode.encode_files`) run on a cluster only when given one (a
client, a scheduler address, or parameters of a ``LocalCluster`` started on demand), and
this module imports ``distributed`` only then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cadstore.failures import failure_fields

__all__ = ["DaskResources", "require_distributed", "run_on_dask", "worker_threads"]

_EXTRA_HINT = "install the dask extra: pip install 'cadstore[dask]'"


def require_distributed(what: str = "running on a Dask cluster") -> Any:
    """Return the ``distributed`` module, or raise an ImportError naming the extra.

    Parameters
    ----------
    what
        What asked for Dask, named in the message.
    """
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"{what} needs dask.distributed; {_EXTRA_HINT}") from exc
    return distributed


class DaskResources:
    """The Dask client a merger runs on, and what it started to get it.

    Parameters
    ----------
    client
        An existing ``distributed.Client``; used as is and not closed by :meth:`close`
        unless ``close_global=True``.
    scheduler
        The address of a running scheduler (``"tcp://host:8786"``); a client is connected
        to it and closed by :meth:`close`.
    params
        Keyword arguments of ``distributed.LocalCluster`` (``n_workers``,
        ``threads_per_worker``, ``processes``, ``memory_limit``, ...): a local cluster is
        started on first use and closed by :meth:`close`. Its dashboard listens on a free
        loopback port unless ``dashboard_address`` is given.

    Raises
    ------
    ValueError
        If more than one of ``client``, ``scheduler`` and ``params`` is given.
    """

    def __init__(
        self,
        client: Any = None,
        scheduler: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        given = [x is not None for x in (client, scheduler, params)]
        if sum(given) > 1:
            raise ValueError("give at most one of client=, scheduler= and dask_client_params=")
        self._given = client
        self._scheduler = scheduler
        self._params = dict(params) if params is not None else None
        self._client: Any = client
        self._cluster: Any = None

    @property
    def client(self) -> Any:
        """The client, connecting or starting a local cluster on first use."""
        if self._client is None:
            distributed = require_distributed()
            if self._scheduler is not None:
                self._client = distributed.Client(self._scheduler)
            else:
                # A fixed dashboard port (the default 8787) clashes with any other
                # cluster on the machine: a free loopback port unless one is given.
                params = {"dashboard_address": "127.0.0.1:0", **(self._params or {})}
                self._cluster = distributed.LocalCluster(**params)
                self._client = distributed.Client(self._cluster)
        return self._client

    @property
    def started(self) -> bool:
        """Whether a client exists (given, connected or started)."""
        return self._client is not None

    def close(self, close_global: bool = False) -> None:
        """Close the client and cluster this object started; idempotent.

        Parameters
        ----------
        close_global
            Also close a client that was given rather than started here.
        """
        owned = self._client is not None and self._client is not self._given
        if self._client is not None and (owned or close_global):
            self._client.close()
        if owned or close_global:
            self._client = None
        if close_global:
            self._given = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def worker_threads(client: Any) -> int:
    """The number of worker threads of the cluster (1 when it does not answer)."""
    try:
        threads: int = sum(client.nthreads().values())
        return max(1, threads)
    except Exception:  # a scheduler that does not answer: one task at a time
        return 1


def run_on_dask(
    client: Any,
    tasks: Sequence[Any],
    settings: Any,
    task_fn: Callable[[Any, Any], list[dict[str, Any]]],
    listener: Any,
) -> int:
    """Run ``task_fn(task, settings)`` for each task on the cluster, reporting to ``listener``.

    Used for encoding and for flows: one task per CAD file (or item) returns the messages
    a supervised local worker would have sent for it, which go to ``listener.message``,
    then ``listener.done(task)``. A task that cannot finish because of the cluster (its
    worker died as often as the scheduler allows, ``KilledWorker``; the cluster went away)
    is ``listener.lost(task, None, "crash", error, 0.0)``, as a
    :class:`~cadstore.workers.Listener` hears it from a local pool. An exception the task
    raised itself (``task_fn`` reports its work's failures in its messages, so this is one
    it let out, or one raised loading it on the worker: its function's module missing
    there) is no crash: it is ``listener.lost`` with the reason
    :func:`~cadstore.failures.failure_fields` gives it and the error as it is. Returns the
    number of worker threads used.
    """
    distributed = require_distributed()
    futures = {client.submit(task_fn, task, settings, pure=False): task for task in tasks}
    for future in distributed.as_completed(futures):
        task = futures[future]
        try:
            messages = future.result()
        except Exception as exc:  # this task only
            if _lost_to_the_cluster(future, exc, distributed):
                error = f"the Dask task failed ({type(exc).__name__}: {exc})"
                listener.lost(task, None, "crash", error, 0.0)
            else:
                failure = failure_fields(exc, loading=False)
                listener.lost(task, None, failure["reason"], failure["error"], 0.0)
            continue
        for message in messages:
            listener.message(message)
        listener.done(task)
    return worker_threads(client)


def _lost_to_the_cluster(future: Any, exc: Exception, distributed: Any) -> bool:
    """Whether ``future`` failed because of the cluster, not of its task's own work.

    A task that raised has the status ``"error"`` and its exception; a task whose worker
    died as often as the scheduler allows has that status too, with ``KilledWorker``, and
    one whose connection closed under it with ``CommClosedError`` (an ``OSError``, not
    the task's storage). A cancelled or lost future (the cluster or the client went away)
    has another status.
    """
    if isinstance(exc, distributed.KilledWorker | distributed.comm.CommClosedError):
        return True  # the worker died, or the connection to it was lost, while it ran
    return bool(future.status != "error")
