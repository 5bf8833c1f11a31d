"""The specified module path ``<package>.cadaccess.cad_loader``.

The loader and its model live in :mod:`cadstore.cad.loader`. Needs the ``cad`` extra.
"""

from __future__ import annotations

from cadstore.cad.loader import CADLoader, CADModel

__all__ = ["CADLoader", "CADModel"]
