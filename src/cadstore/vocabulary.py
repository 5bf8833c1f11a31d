"""The codes of the encoder's categorical arrays, one table each.

``face_types``, ``edge_types`` and ``edge_convexities`` hold integer codes. The encoder
(:mod:`cadstore.cad.encoder`) writes them, the workload generator
(:mod:`cadstore.synthetic`) draws them, and the report and the demo print their
names. They all read the tables here, so a code means the same thing everywhere, and this
module imports nothing heavier than the standard library, so a report or a test can name
face types without the CAD kernel.

The tables are read-only mappings; ``dict(FACE_TYPES)`` gives a copy to hand to a user.
:data:`CAD_EXTENSIONS`, the file formats the CAD loader reads, lives here for the same
reason: a flow's file retriever filters by it without loading the kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["CAD_EXTENSIONS", "CONVEXITIES", "EDGE_TYPES", "FACE_TYPES"]

#: File extensions the CAD loader reads (case-insensitive) and the format each one selects.
CAD_EXTENSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        ".step": "step",
        ".stp": "step",
        ".iges": "iges",
        ".igs": "iges",
        ".brep": "brep",
    }
)

#: ``face_types`` codes. 0-5, 13 and 14 are the specified system's observed codes; 15 and 16
#: are cadstore's for the kernel's offset and other surfaces, which it was not seen to emit.
FACE_TYPES: Final[Mapping[int, str]] = MappingProxyType(
    {
        0: "Plane",
        1: "Cylinder",
        2: "Cone",
        3: "Sphere",
        4: "Torus",
        5: "Nurbs",
        13: "Revolution",
        14: "Extrusion",
        15: "Offset",
        16: "Other",
    }
)

#: ``edge_types`` codes: OpenCascade's ``GeomAbs_CurveType`` numbering, which starts as the
#: specified system's table does (0 Line, 1 Circle).
EDGE_TYPES: Final[Mapping[int, str]] = MappingProxyType(
    {
        0: "Line",
        1: "Circle",
        2: "Ellipse",
        3: "Hyperbola",
        4: "Parabola",
        5: "BezierCurve",
        6: "BSplineCurve",
        7: "OffsetCurve",
        8: "OtherCurve",
    }
)

#: ``edge_convexities`` codes, as in the specified system's saved output: 1 for a positive
#: dihedral angle (convex), 2 for a negative one (concave), 3 for a near-zero one (smooth).
CONVEXITIES: Final[Mapping[int, str]] = MappingProxyType({1: "convex", 2: "concave", 3: "smooth"})
