"""The specified module path ``<package>.storage.datasetstorage.schema_templates``.

``SchemaTemplates`` lists and describes the predefined schemas (``cad_basic``,
``cad_advanced``, ...); it lives in :mod:`cadstore.schema.templates`.
"""

from __future__ import annotations

from cadstore.schema import SchemaTemplates

__all__ = ["SchemaTemplates"]
