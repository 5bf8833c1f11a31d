"""The specified module path ``<package>.storage.datastorage.zarr_storage_handler``.

``OptStorage``, one compressed Zarr file per item, lives in :mod:`cadstore.storage.opt`.
"""

from __future__ import annotations

from cadstore.storage.opt import OptStorage

__all__ = ["OptStorage"]
