"""``MetricStorage``: a training run's metrics, kept in any :class:`DataStorage`.

The specified ``MetricStorage(store)`` (module ``<package>.storage.metric_storage``) keeps
what a training loop measures, by the way it is shown:

==============  =========================================  ==============================
kind            pushed                                     pulled
==============  =========================================  ==============================
trend           ``push_trend_metric(name, epoch, value)``  ``pull_trend_metric(name)``:
                (a loss, an accuracy per epoch)            ``(epochs, values)``
category        ``push_category_metric(name, epoch,        ``pull_category_metric(name,
                categories, values)`` (per-class IoU)      epoch)``: ``(categories, values)``
matrix          ``push_matrix_metric(name, epoch,          ``pull_matrix_metric(name,
                matrix)`` (a confusion matrix)             epoch)``: the matrix
data            ``push_data(name, data_id, data)`` (one    ``pull_data(name, data_id)``;
                item's predictions)                        ``list_data_ids(name)``
==============  =========================================  ==============================

Every push is saved into the storage at once (keys ``trend/<name>``,
``category/<name>/epoch_<e>``, ``matrix/<name>/epoch_<e>``, ``data/<name>/<id>``). What
survives a run killed at epoch 40 is the storage's to say: a ``JsonStorageHandler`` has
written epochs 0-39 to disk, an ``OptStorage`` publishes its file only at
``compress_store()`` / ``close()``, as its items do (call ``compress_store()`` now and then
in a long run, and reopen it with ``mode="a"`` to go on). An ``OptStorage`` refuses NaN as
specified: a loss that may be NaN needs ``OptStorage(..., allow_nan=True)``. A pushed epoch
replaces the same epoch pushed before. Pulling an epoch, a name or an id never pushed
raises ``ValueError`` naming it (the specification's error for a missing epoch).

The vendor documents these methods by name; their exact behaviour here (write-through,
the keys above, what ``pull_trend_metric`` returns) is cadstore's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cadstore.storage.base import DataStorage
from cadstore.storage.keys import validate_key

__all__ = ["MetricStorage"]


class MetricStorage:
    """A training run's metrics in ``store`` (see the module docstring).

    Parameters
    ----------
    store
        Any storage: an ``OptStorage`` to keep the run in one file, a ``MemoryStorage``
        for a notebook.
    """

    def __init__(self, store: DataStorage) -> None:
        self._store = store

    def get_storage(self) -> DataStorage:
        """Return the storage the metrics are kept in."""
        return self._store

    # ------------------------------------------------------------------ trend
    def push_trend_metric(self, name: str, epoch: int, value: float) -> None:
        """Record ``value`` of the metric ``name`` (``"train_loss"``) at ``epoch``."""
        key = f"trend/{_name(name)}"
        epochs, values = self._trend(key)
        mapping = dict(zip(epochs, values, strict=True))
        mapping[_epoch(epoch)] = float(value)
        ordered = sorted(mapping)
        self._store.save_data(
            key,
            {
                "epochs": np.asarray(ordered, dtype=np.int64),
                "values": np.asarray([mapping[e] for e in ordered], dtype=np.float64),
            },
        )

    def pull_trend_metric(self, name: str) -> tuple[list[int], list[float]]:
        """Return the epochs and values of ``name``, in epoch order.

        Raises
        ------
        ValueError
            If nothing was pushed under ``name``.
        """
        key = f"trend/{_name(name)}"
        epochs, values = self._trend(key)
        if not epochs:
            raise ValueError(f"no trend metric {name!r} in {self._store!r}")
        return epochs, values

    def _trend(self, key: str) -> tuple[list[int], list[float]]:
        try:
            stored = self._store.load_data(key)
        except KeyError:
            return [], []
        return (
            [int(e) for e in np.asarray(stored["epochs"]).tolist()],
            [float(v) for v in np.asarray(stored["values"]).tolist()],
        )

    # ------------------------------------------------------------------ category
    def push_category_metric(
        self, name: str, epoch: int, categories: Sequence[int], values: Sequence[float]
    ) -> None:
        """Record one value per category (``"per_class_accuracy"``) at ``epoch``.

        Raises
        ------
        ValueError
            If ``categories`` and ``values`` differ in length.
        """
        try:
            cats = np.asarray(list(categories), dtype=np.int64)
            vals = np.asarray(list(values), dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(
                f"category metric {name!r}: categories must be integers (class codes) and "
                f"values numbers, got {list(categories)!r} and {list(values)!r}"
            ) from None
        if cats.ndim != 1 or vals.ndim != 1:
            raise ValueError(
                f"category metric {name!r}: categories and values must be flat lists, got "
                f"shapes {cats.shape} and {vals.shape}"
            )
        if cats.shape != vals.shape:
            raise ValueError(
                f"category metric {name!r}: {cats.size} categories for {vals.size} values"
            )
        key = f"category/{_name(name)}/epoch_{_epoch(epoch)}"
        self._store.save_data(key, {"categories": cats, "values": vals})

    def pull_category_metric(self, name: str, epoch: int) -> tuple[list[int], list[float]]:
        """Return the categories and values of ``name`` at ``epoch``.

        Raises
        ------
        ValueError
            If ``epoch`` (or ``name``) was not pushed.
        """
        stored = self._pulled(f"category/{_name(name)}/epoch_{_epoch(epoch)}", name, epoch)
        return (
            [int(c) for c in np.asarray(stored["categories"]).tolist()],
            [float(v) for v in np.asarray(stored["values"]).tolist()],
        )

    # ------------------------------------------------------------------ matrix
    def push_matrix_metric(self, name: str, epoch: int, matrix: Any) -> None:
        """Record a matrix (``"confusion_matrix"``) at ``epoch``.

        Raises
        ------
        ValueError
            If ``matrix`` is not two-dimensional.
        """
        array = np.asarray(matrix)
        if array.ndim != 2:
            raise ValueError(f"matrix metric {name!r}: expected a 2-D array, got {array.shape}")
        self._store.save_data(f"matrix/{_name(name)}/epoch_{_epoch(epoch)}", array)

    def pull_matrix_metric(self, name: str, epoch: int) -> np.ndarray:
        """Return the matrix of ``name`` at ``epoch``.

        Raises
        ------
        ValueError
            If ``epoch`` (or ``name``) was not pushed.
        """
        return np.asarray(self._pulled(f"matrix/{_name(name)}/epoch_{_epoch(epoch)}", name, epoch))

    # ------------------------------------------------------------------ data
    def push_data(self, name: str, data_id: int, data: Any) -> None:
        """Record an item's predictions (``data_id``: its file id code) under ``name``."""
        self._store.save_data(f"data/{_name(name)}/{_epoch(data_id, 'data_id')}", np.asarray(data))

    def pull_data(self, name: str, data_id: int) -> np.ndarray:
        """Return what was pushed for ``data_id`` under ``name``.

        Raises
        ------
        ValueError
            If nothing was.
        """
        key = f"data/{_name(name)}/{_epoch(data_id, 'data_id')}"
        try:
            return np.asarray(self._store.load_data(key))
        except KeyError:
            raise ValueError(f"no data {data_id} under {name!r} in {self._store!r}") from None

    def list_data_ids(self, name: str) -> list[int]:
        """Return the ids pushed under ``name``, sorted (empty when none)."""
        try:
            stored = self._store.load_data(f"data/{_name(name)}")
        except KeyError:
            return []
        return sorted(int(k) for k in stored)

    def _pulled(self, key: str, name: str, epoch: int) -> Any:
        try:
            return self._store.load_data(key)
        except KeyError:
            raise ValueError(f"no epoch {epoch} of metric {name!r} in {self._store!r}") from None


def _name(name: str) -> str:
    """A metric name: one key segment (no ``/``)."""
    if not isinstance(name, str) or "/" in name:
        raise ValueError(f"a metric name is a string without '/', got {name!r}")
    return validate_key(name, what="metric name")


def _epoch(value: int, what: str = "epoch") -> int:
    """An epoch (or id): a non-negative integer."""
    if (
        isinstance(value, bool | float)
        or not isinstance(value, int | np.integer)
        or not 0 <= value < 2**63
    ):
        raise ValueError(f"{what} must be a non-negative 64-bit integer, got {value!r}")
    return int(value)
