"""The specified module path ``<package>.cadaccess``: CAD loading on OpenCascade.

``HOOPSLoader``, ``HOOPSModel`` and ``HOOPSTools`` are the specified system's names for
its (proprietary) loader, model and tools; here they are the open
:class:`~cadstore.cad.loader.CADLoader`, :class:`~cadstore.cad.loader.CADModel` and
:class:`~cadstore.cad.tools.CADTools`, so ``from <package>.cadaccess import HOOPSLoader,
HOOPSModel, HOOPSTools`` works unchanged. Needs the ``cad`` extra.
"""

from __future__ import annotations

from cadstore.cad import BrepAccess, CADLoader, CADModel
from cadstore.cad.tools import CADTools

HOOPSLoader = CADLoader
HOOPSModel = CADModel
HOOPSTools = CADTools

__all__ = [
    "BrepAccess",
    "CADLoader",
    "CADModel",
    "CADTools",
    "HOOPSLoader",
    "HOOPSModel",
    "HOOPSTools",
]
