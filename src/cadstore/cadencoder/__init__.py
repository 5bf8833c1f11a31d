"""The specified module path ``<package>.cadencoder``. Needs the ``cad`` extra."""

from __future__ import annotations

from cadstore.cad import BrepEncoder

__all__ = ["BrepEncoder"]
