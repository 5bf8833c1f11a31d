"""The specified module path ``<package>.storage.datasetstorage.schema_builder``."""

from __future__ import annotations

from cadstore.schema import (
    Group,
    SchemaBuilder,
    create_cad_schema,
    create_custom_schema,
    create_manufacturing_schema,
    create_sensor_schema,
)

__all__ = [
    "Group",
    "SchemaBuilder",
    "create_cad_schema",
    "create_custom_schema",
    "create_manufacturing_schema",
    "create_sensor_schema",
]
