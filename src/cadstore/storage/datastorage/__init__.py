"""The specified module path ``<package>.storage.datastorage``.

The specified documentation imports ``DataStorage``, ``MemoryStorage``,
``JsonStorageHandler`` (and ``OptStorage``) from here; they live in their own modules.
"""

from __future__ import annotations

from cadstore.storage.base import DataStorage
from cadstore.storage.json_handler import JsonStorageHandler
from cadstore.storage.memory import MemoryStorage
from cadstore.storage.opt import OptStorage

__all__ = ["DataStorage", "JsonStorageHandler", "MemoryStorage", "OptStorage"]
