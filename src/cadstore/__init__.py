"""cadstore: storage for CAD machine learning.

Encode CAD bodies into arrays, store one compressed standard-Zarr file per body, merge
thousands of them into one dataset, explore it and train on it. The public names follow
the specified ``DataStorage`` module, so its examples run with only the package changed::

    from cadstore import MemoryStorage, SchemaBuilder

Heavier parts (datasets, CAD encoding, the command line) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from cadstore.errors import (
    CadstoreError,
    CorruptStoreError,
    KeyNotFoundError,
    SchemaError,
    SchemaValidationError,
    StorageClosedError,
)
from cadstore.schema import Group, Schema, SchemaBuilder, SchemaTemplates
from cadstore.storage import DataStorage, JsonStorageHandler, MemoryStorage

__version__ = "0.1.0"

# Public names that live in modules with optional or heavy dependencies: name -> module.
_LAZY = {
    "OptStorage": "cadstore.storage.opt",
    "DatasetMerger": "cadstore.dataset",
    "DatasetExplorer": "cadstore.dataset",
    "DatasetLoader": "cadstore.dataset",
    "CADDataset": "cadstore.dataset",
    "DatasetInfo": "cadstore.dataset",
    "merge": "cadstore.dataset",
}

__all__ = [
    "CADDataset",
    "CadstoreError",
    "CorruptStoreError",
    "DataStorage",
    "DatasetExplorer",
    "DatasetInfo",
    "DatasetLoader",
    "DatasetMerger",
    "Group",
    "JsonStorageHandler",
    "KeyNotFoundError",
    "MemoryStorage",
    "OptStorage",
    "Schema",
    "SchemaBuilder",
    "SchemaError",
    "SchemaTemplates",
    "SchemaValidationError",
    "StorageClosedError",
    "__version__",
    "merge",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cadstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
