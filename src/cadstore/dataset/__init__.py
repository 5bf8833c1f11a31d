"""The dataset layer: merge items into a ``.dataset``, describe it, explore and load it.

* :class:`DatasetMerger` and :func:`merge` (:mod:`cadstore.dataset.merger`)
* :class:`DatasetInfo` (:mod:`cadstore.dataset.info`): the ``.infoset``/``.attribset`` tables
* :class:`DatasetReader` (:mod:`cadstore.dataset.reader`): one item's rows in O(1)
* :class:`DatasetExplorer`, :class:`DatasetLoader`, :class:`CADDataset`: query, split, train
* the on-disk layout: :mod:`cadstore.dataset.layout`
"""

from __future__ import annotations

import importlib
from typing import Any

from cadstore.dataset.explorer import DatasetExplorer
from cadstore.dataset.loader import CADDataset, DatasetLoader
from cadstore.dataset.merge import MergeResult, append_items, merge_items
from cadstore.dataset.merger import DatasetMerger, merge
from cadstore.dataset.reader import DatasetReader

__all__ = [
    "CADDataset",
    "DatasetExplorer",
    "DatasetInfo",
    "DatasetLoader",
    "DatasetMerger",
    "DatasetReader",
    "MergeResult",
    "append_items",
    "merge",
    "merge_items",
]


def __getattr__(name: str) -> Any:
    # DatasetInfo needs pandas and pyarrow (the "dataset" extra); import it on first use.
    if name == "DatasetInfo":
        return importlib.import_module("cadstore.dataset.info").DatasetInfo
    raise AttributeError(f"module 'cadstore.dataset' has no attribute {name!r}")
