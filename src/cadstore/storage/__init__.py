"""Storage backends behind one contract, :class:`~cadstore.storage.base.DataStorage`.

==========================  ==========  ==============================================
Class                       format()    Use
==========================  ==========  ==============================================
``OptStorage``              ``zarr``    production: one compressed Zarr file per item
``MemoryStorage``           ``memory``  tests and prototypes
``JsonStorageHandler``      ``json``    debugging, export, diffs
==========================  ==========  ==============================================

``CADFileRetriever`` and ``LocalStorageProvider`` (:mod:`~cadstore.storage.retrieval`)
find the CAD files a flow's extract task takes; :func:`~cadstore.storage.convert.convert_storage`
copies one storage into another. ``DatasetMerger`` and ``DatasetInfo`` are importable from
here too, as the specified documentation imports them.
"""

from __future__ import annotations

from cadstore.storage.base import DataStorage
from cadstore.storage.json_handler import JsonStorageHandler
from cadstore.storage.memory import MemoryStorage
from cadstore.storage.retrieval import CADFileRetriever, LocalStorageProvider

__all__ = [
    "CADFileRetriever",
    "DataStorage",
    "DatasetInfo",
    "DatasetMerger",
    "JsonStorageHandler",
    "LabelStorage",
    "LocalStorageProvider",
    "MLStorage",
    "MemoryStorage",
    "MetricStorage",
    "OptStorage",
    "PyGGraphStoreHandler",
    "convert_storage",
]

# Names whose modules pull in heavier layers (the Zarr format, torch): imported on first
# use, name -> module.
_LAZY = {
    "OptStorage": "cadstore.storage.opt",
    "LabelStorage": "cadstore.storage.label_storage",
    "MLStorage": "cadstore.storage.graphstorage.graph_storage_handler",
    "PyGGraphStoreHandler": "cadstore.storage.graphstorage.graph_storage_handler",
    "DatasetMerger": "cadstore.merging",
    "DatasetInfo": "cadstore.merging",
    "convert_storage": "cadstore.storage.convert",
    "MetricStorage": "cadstore.storage.metric_storage",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cadstore.storage' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
