"""Storage backends behind one contract, :class:`~cadstore.storage.base.DataStorage`.

==========================  ==========  ==============================================
Class                       format()    Use
==========================  ==========  ==============================================
``OptStorage``              ``zarr``    production: one compressed Zarr file per item
``MemoryStorage``           ``memory``  tests and prototypes
``JsonStorageHandler``      ``json``    debugging, export, diffs
==========================  ==========  ==============================================

``CADFileRetriever`` and ``LocalStorageProvider`` (:mod:`~cadstore.storage.retrieval`)
find the CAD files a flow's extract task takes.
"""

from __future__ import annotations

from cadstore.storage.base import DataStorage
from cadstore.storage.json_handler import JsonStorageHandler
from cadstore.storage.memory import MemoryStorage
from cadstore.storage.retrieval import CADFileRetriever, LocalStorageProvider

__all__ = [
    "CADFileRetriever",
    "DataStorage",
    "JsonStorageHandler",
    "LocalStorageProvider",
    "MemoryStorage",
    "OptStorage",
]


def __getattr__(name: str) -> object:
    # OptStorage pulls in the Zarr format layer; import it on first use.
    if name == "OptStorage":
        from cadstore.storage.opt import OptStorage

        return OptStorage
    raise AttributeError(f"module 'cadstore.storage' has no attribute {name!r}")
