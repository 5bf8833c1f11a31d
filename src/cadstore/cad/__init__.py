"""Open CAD front end on the OpenCascade kernel: read CAD files and encode bodies for ML.

Needs the optional extra ``cadstore[cad]`` (the ``cadquery-ocp-novtk`` wheel). The names
follow the specified ``hoops_ai.cadaccess`` / ``hoops_ai.cadencoder`` modules, with
``HOOPSLoader`` renamed :class:`CADLoader`::

    from cadstore import MemoryStorage
    from cadstore.cad import BrepEncoder, CADLoader

    model = CADLoader().create_from_file("part.step")
    encoder = BrepEncoder(model.get_brep(), MemoryStorage())
    encoder.push_face_attributes()

Modules: :mod:`~cadstore.cad.loader` (:class:`CADLoader`, :class:`CADModel`),
:mod:`~cadstore.cad.brep` (:class:`BrepAccess`), :mod:`~cadstore.cad.encoder`
(:class:`BrepEncoder`) and :mod:`~cadstore.cad.samples` (parametric test parts and writers).
"""

from __future__ import annotations

# First, so that a missing kernel is reported with the install hint.
from cadstore.cad._kernel import OCP_VERSION
from cadstore.cad.brep import BrepAccess
from cadstore.cad.encoder import BrepEncoder
from cadstore.cad.loader import SUPPORTED_EXTENSIONS, CADLoader, CADModel

__all__ = [
    "OCP_VERSION",
    "SUPPORTED_EXTENSIONS",
    "BrepAccess",
    "BrepEncoder",
    "CADLoader",
    "CADModel",
]
