"""The specified module path ``<package>.storage.datasetstorage.schema_builder``."""

from __future__ import annotations

from cadstore.schema import Group, SchemaBuilder

__all__ = ["Group", "SchemaBuilder"]
