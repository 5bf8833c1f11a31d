"""The specified module path ``<package>.storage.datastorage.memory_storage_handler``.

``MemoryStorage`` lives in :mod:`cadstore.storage.memory`.
"""

from __future__ import annotations

from cadstore.storage.memory import MemoryStorage

__all__ = ["MemoryStorage"]
