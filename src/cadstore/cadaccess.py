"""The specified module path ``<package>.cadaccess``: CAD loading on OpenCascade.

``HOOPSLoader`` is the specified system's name for its (proprietary) loader; here it is
the open :class:`~cadstore.cad.loader.CADLoader`. Needs the ``cad`` extra.
"""

from __future__ import annotations

from cadstore.cad import BrepAccess, CADLoader, CADModel

HOOPSLoader = CADLoader

__all__ = ["BrepAccess", "CADLoader", "CADModel", "HOOPSLoader"]
