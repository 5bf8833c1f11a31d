"""Schemas: which arrays an item holds, their dims and dtypes, and where metadata goes.

* :class:`SchemaBuilder` / :class:`Group` build a schema dict call by call, with the vendor's
  API, and :meth:`SchemaBuilder.build` returns it in the vendor's exact form.
* :func:`normalize_schema` validates a schema dict from anywhere (a JSON file, the vendor's
  documented single-nested form, ...) and returns the canonical form.
* :class:`Schema` is the immutable, pre-indexed view storages use to place, validate and route.
* :class:`SchemaTemplates` and the ``create_*_schema`` functions give ready-made schemas.
"""

from __future__ import annotations

from cadstore.schema._common import DTYPES, SPECIAL_PROCESSING
from cadstore.schema.builder import (
    Group,
    SchemaBuilder,
    create_cad_schema,
    create_custom_schema,
    create_manufacturing_schema,
    create_sensor_schema,
)
from cadstore.schema.model import Schema
from cadstore.schema.normalize import normalize_schema
from cadstore.schema.templates import SchemaTemplates

__all__ = [
    "DTYPES",
    "Group",
    "SPECIAL_PROCESSING",
    "Schema",
    "SchemaBuilder",
    "SchemaTemplates",
    "create_cad_schema",
    "create_custom_schema",
    "create_manufacturing_schema",
    "create_sensor_schema",
    "normalize_schema",
]
