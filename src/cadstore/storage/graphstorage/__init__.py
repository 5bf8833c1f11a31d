"""The specified module path ``<package>.storage.graphstorage``: per-item graph files.

See :mod:`cadstore.storage.graphstorage.graph_storage_handler`. Needs the ``pyg`` extra.
"""

from __future__ import annotations

from cadstore.storage.graphstorage.graph_storage_handler import (
    MLStorage,
    PyGGraphStoreHandler,
    write_graph_files,
)

__all__ = ["MLStorage", "PyGGraphStoreHandler", "write_graph_files"]
