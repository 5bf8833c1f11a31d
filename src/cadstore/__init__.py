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

# Public names that live in modules with optional or heavy dependencies:
# name -> (module, attribute).
_LAZY = {
    "OptStorage": ("cadstore.storage.opt", "OptStorage"),
    "DatasetMerger": ("cadstore.merging", "DatasetMerger"),
    "DatasetInfo": ("cadstore.merging", "DatasetInfo"),
    "MergeOptions": ("cadstore.merging", "MergeOptions"),
    "merge": ("cadstore.merging", "merge"),
    "DatasetExplorer": ("cadstore.dataset", "DatasetExplorer"),
    "DatasetLoader": ("cadstore.dataset", "DatasetLoader"),
    "CADDataset": ("cadstore.dataset", "CADDataset"),
    "open": ("cadstore.artefacts", "open_artefact"),
    "resolve": ("cadstore.io.location", "resolve"),
    "create_flow": ("cadstore.flowmanager", "create_flow"),
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
    "MergeOptions",
    "MemoryStorage",
    "OptStorage",
    "Schema",
    "SchemaBuilder",
    "SchemaError",
    "SchemaTemplates",
    "SchemaValidationError",
    "StorageClosedError",
    "__version__",
    "create_flow",
    "merge",
    "open",
    "resolve",
    "set_license",
]


def set_license(key: str | None = None, validate: bool = True, silent: bool = False) -> None:
    """Accept the specified system's license call: cadstore is open and needs no license.

    Scripts written for the specified system call ``set_license(key, validate=...,
    silent=...)`` before anything else; here the call does nothing, so they run with only
    the package name changed. Nothing is checked, stored or sent anywhere.

    Parameters
    ----------
    key, validate
        Ignored.
    silent
        When false, a log record (level INFO, logger ``cadstore``) says no license is
        needed.
    """
    if not silent:
        import logging

        logging.getLogger("cadstore").info("cadstore needs no license; set_license does nothing")


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'cadstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
