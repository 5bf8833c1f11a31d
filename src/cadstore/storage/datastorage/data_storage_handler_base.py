"""The specified module path ``<package>.storage.datastorage.data_storage_handler_base``.

``DataStorage``, the contract every storage backend implements, lives in
:mod:`cadstore.storage.base`.
"""

from __future__ import annotations

from cadstore.storage.base import DataStorage

__all__ = ["DataStorage"]
