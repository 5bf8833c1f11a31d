"""The specified module path ``<package>.storage.datastorage.json_storage_handler``.

``JsonStorageHandler`` lives in :mod:`cadstore.storage.json_handler`.
"""

from __future__ import annotations

from cadstore.storage.json_handler import JsonStorageHandler

__all__ = ["JsonStorageHandler"]
