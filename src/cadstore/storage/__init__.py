"""Storage backends behind one contract, :class:`~cadstore.storage.base.DataStorage`.

==========================  ==========  ==============================================
Class                       format()    Use
==========================  ==========  ==============================================
``OptStorage``              ``zarr``    production: one compressed Zarr file per item
``MemoryStorage``           ``memory``  tests and prototypes
``JsonStorageHandler``      ``json``    debugging, export, diffs
==========================  ==========  ==============================================
"""

from __future__ import annotations

from cadstore.storage.base import DataStorage
from cadstore.storage.json_handler import JsonStorageHandler
from cadstore.storage.memory import MemoryStorage

__all__ = ["DataStorage", "JsonStorageHandler", "MemoryStorage", "OptStorage"]


def __getattr__(name: str) -> object:
    # OptStorage pulls in the Zarr format layer; import it on first use.
    if name == "OptStorage":
        from cadstore.storage.opt import OptStorage

        return OptStorage
    raise AttributeError(f"module 'cadstore.storage' has no attribute {name!r}")
