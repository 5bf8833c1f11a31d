"""The specified module path ``<package>.storage.datasetstorage``.

Schemas (:mod:`cadstore.schema`), and the merger and its tables (``DatasetMerger``,
``DatasetInfo``, from :mod:`cadstore.merging`), which the specified documentation imports
from here too. The merger is imported on first use: it pulls in the dataset format layer,
which importing the schemas should not.
"""

from __future__ import annotations

import importlib
from typing import Any

from cadstore.schema import (
    Group,
    SchemaBuilder,
    SchemaTemplates,
    create_cad_schema,
    create_custom_schema,
    create_manufacturing_schema,
    create_sensor_schema,
)

__all__ = [
    "DatasetInfo",
    "DatasetMerger",
    "Group",
    "SchemaBuilder",
    "SchemaTemplates",
    "create_cad_schema",
    "create_custom_schema",
    "create_manufacturing_schema",
    "create_sensor_schema",
]


def __getattr__(name: str) -> Any:
    if name in ("DatasetMerger", "DatasetInfo"):
        return getattr(importlib.import_module("cadstore.merging"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
