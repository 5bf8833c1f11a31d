"""``BrepAccess``: one body of a CAD model, with stable face, edge and co-edge numbering.

The encoder never walks the kernel's topology itself; it asks a :class:`BrepAccess` for
faces, edges and co-edges by index. The numbering is fixed when the object is made:

* **faces** ``0 .. N_f-1`` and **edges** ``0 .. num_edges-1`` follow the kernel's indexed
  maps (``TopExp.MapShapes``), i.e. the order in which a depth-first walk of the body first
  meets each face or edge. The walk depends only on the file's data structure, so reading the
  same file twice gives the same numbering.
* **co-edges** ``0 .. N_e-1`` are the uses of an edge by a face that separates that face from
  another one. An edge shared by two faces gives two co-edges, one per side, and the two are
  each other's *mate*. Co-edges are numbered face by face (face 0's first), and within a face
  in the order of its loops and of the edges in each loop.

Edges that do not separate two different faces make no co-edge: seam edges (where a closed
surface such as a cylinder meets itself), degenerated edges (the poles of a sphere, the apex
of a cone) and free edges of open shells. An edge shared by ``k > 2`` faces (non-manifold)
makes ``k`` co-edges, whose mates follow the faces cyclically, so that there is still one
co-edge per face side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from numpy.typing import NDArray
from OCP.Bnd import Bnd_Box
from OCP.BRep import BRep_Tool
from OCP.BRepBndLib import BRepBndLib
from OCP.TopAbs import TopAbs_EDGE, TopAbs_FACE, TopAbs_REVERSED, TopAbs_WIRE

from cadstore.cad._kernel import as_edge, as_face, indexed_map, iter_subshapes

if TYPE_CHECKING:
    from OCP.TopoDS import TopoDS_Edge, TopoDS_Face, TopoDS_Shape

__all__ = ["BrepAccess"]

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


def _frozen(
    values: Sequence[int] | NDArray[np.generic], dtype: type[_ScalarT]
) -> NDArray[_ScalarT]:
    array = np.asarray(values, dtype=dtype)
    # The tables are shared with every caller; a stray in-place edit would corrupt them all.
    array.setflags(write=False)
    return array


class BrepAccess:
    """Read access to one body (a solid, or a shell or set of faces) of a CAD model.

    Parameters
    ----------
    shape
        The body, a ``TopoDS_Shape`` from the OCP bindings. Normally obtained with
        :meth:`cadstore.cad.CADModel.get_brep`.

    Attributes
    ----------
    shape
        The wrapped ``TopoDS_Shape``.

    Notes
    -----
    The module docstring defines the face, edge and co-edge numbering. The co-edge tables
    (:attr:`coedge_face`, :attr:`coedge_mate_face`, :attr:`coedge_edge`, :attr:`coedge_mate`,
    :attr:`coedge_reversed`) are read-only numpy arrays of length :attr:`num_coedges`.

    Examples
    --------
    >>> from cadstore.cad.samples import make_box
    >>> brep = BrepAccess(make_box(10, 20, 30))
    >>> brep.num_faces, brep.num_edges, brep.num_coedges
    (6, 12, 24)
    """

    def __init__(self, shape: TopoDS_Shape) -> None:
        if shape is None or shape.IsNull():
            raise ValueError("BrepAccess needs a non-null TopoDS_Shape")
        self.shape = shape
        face_map = indexed_map(shape, TopAbs_FACE)
        edge_map = indexed_map(shape, TopAbs_EDGE)
        self._face_map = face_map
        self._edge_map = edge_map
        # The map keeps each face with the orientation it has in the body, which is what the
        # outward normal and the loop direction depend on.
        self._faces = tuple(as_face(face_map.FindKey(i)) for i in range(1, face_map.Extent() + 1))
        self._edges = tuple(as_edge(edge_map.FindKey(i)) for i in range(1, edge_map.Extent() + 1))
        self._build_coedges()

    # ------------------------------------------------------------------ topology tables
    def _build_coedges(self) -> None:
        uses: list[tuple[int, int, TopoDS_Edge]] = []  # (face, edge, oriented edge)
        faces_of_edge: list[list[int]] = [[] for _ in self._edges]
        loops: list[int] = []
        for f, face in enumerate(self._faces):
            loops.append(sum(1 for _ in iter_subshapes(face, TopAbs_WIRE)))
            for sub in iter_subshapes(face, TopAbs_EDGE):
                edge = as_edge(sub)
                e = self._edge_map.FindIndex(edge) - 1
                uses.append((f, e, edge))
                faces_of_edge[e].append(f)
        # An edge met twice in the same face is a seam: it separates the face from itself.
        distinct = [list(dict.fromkeys(fs)) for fs in faces_of_edge]
        keep = [
            len(fs) >= 2 and not BRep_Tool.Degenerated_s(self._edges[e])
            for e, fs in enumerate(distinct)
        ]
        coedge_face: list[int] = []
        coedge_edge: list[int] = []
        coedge_reversed: list[bool] = []
        shapes: list[TopoDS_Edge] = []
        slot: dict[tuple[int, int], int] = {}
        for f, e, edge in uses:
            if not keep[e] or (f, e) in slot:
                continue
            slot[(f, e)] = len(coedge_face)
            coedge_face.append(f)
            coedge_edge.append(e)
            coedge_reversed.append(edge.Orientation() == TopAbs_REVERSED)
            shapes.append(edge)
        mate = [0] * len(coedge_face)
        mate_face = [0] * len(coedge_face)
        for c, (f, e) in enumerate(zip(coedge_face, coedge_edge, strict=True)):
            ring = distinct[e]
            other = ring[(ring.index(f) + 1) % len(ring)]
            mate[c] = slot[(other, e)]
            mate_face[c] = other
        self._coedge_shapes = tuple(shapes)
        self.coedge_face = _frozen(coedge_face, np.int32)
        self.coedge_edge = _frozen(coedge_edge, np.int32)
        self.coedge_mate = _frozen(mate, np.int32)
        self.coedge_mate_face = _frozen(mate_face, np.int32)
        self.coedge_reversed = _frozen(coedge_reversed, np.bool_)
        self.face_loop_counts = _frozen(loops, np.int32)

    # ------------------------------------------------------------------ sizes
    @property
    def num_faces(self) -> int:
        """Number of faces ``N_f``."""
        return len(self._faces)

    @property
    def num_edges(self) -> int:
        """Number of topological edges, including seams, degenerated and free edges."""
        return len(self._edges)

    @property
    def num_coedges(self) -> int:
        """Number of co-edges ``N_e`` (two per edge shared by two faces)."""
        return len(self._coedge_shapes)

    # ------------------------------------------------------------------ access by index
    @property
    def faces(self) -> tuple[TopoDS_Face, ...]:
        """The faces, in face-index order, oriented as they are in the body."""
        return self._faces

    @property
    def edges(self) -> tuple[TopoDS_Edge, ...]:
        """The topological edges, in edge-index order."""
        return self._edges

    def face(self, index: int) -> TopoDS_Face:
        """Return face ``index`` (``0 <= index < num_faces``)."""
        return self._faces[self._check(index, self.num_faces, "face")]

    def edge(self, index: int) -> TopoDS_Edge:
        """Return topological edge ``index`` (``0 <= index < num_edges``)."""
        return self._edges[self._check(index, self.num_edges, "edge")]

    def coedge(self, index: int) -> TopoDS_Edge:
        """Return co-edge ``index`` as the edge oriented the way its face uses it.

        Walking along the returned edge in its orientation, with the face's outward normal
        pointing up, the face lies on the left.
        """
        return self._coedge_shapes[self._check(index, self.num_coedges, "co-edge")]

    def face_index(self, face: TopoDS_Shape) -> int:
        """Return the index of ``face`` (any orientation), or raise ``KeyError``."""
        index: int = self._face_map.FindIndex(face) - 1
        if index < 0:
            raise KeyError("the face is not part of this body")
        return index

    def edge_index(self, edge: TopoDS_Shape) -> int:
        """Return the index of ``edge`` (any orientation), or raise ``KeyError``."""
        index: int = self._edge_map.FindIndex(edge) - 1
        if index < 0:
            raise KeyError("the edge is not part of this body")
        return index

    @staticmethod
    def _check(index: int, size: int, what: str) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"{what} index must be an int, got {type(index).__name__}")
        if not 0 <= index < size:
            raise IndexError(f"{what} index {index} is out of range; valid: 0..{size - 1}")
        return int(index)

    # ------------------------------------------------------------------ geometry
    def bounding_box(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Return the tight axis-aligned bounding box as ``(min_xyz, max_xyz)``, model units.

        The box follows the exact geometry (not control polygons or tolerances).
        """
        box = Bnd_Box()
        BRepBndLib.AddOptimal_s(self.shape, box, False, False)
        if box.IsVoid():
            zero = np.zeros(3)
            return zero, zero.copy()
        # CornerMin/CornerMax rather than Get(): OCP 8 cannot convert Get()'s return type.
        low, high = box.CornerMin(), box.CornerMax()
        return np.array([low.X(), low.Y(), low.Z()]), np.array([high.X(), high.Y(), high.Z()])

    def bounding_box_diagonal(self) -> float:
        """Return the length of the bounding box diagonal, model units."""
        low, high = self.bounding_box()
        return float(math.dist(low, high))

    def __repr__(self) -> str:
        return (
            f"<BrepAccess {self.shape.ShapeType().name.removeprefix('TopAbs_').lower()} "
            f"faces={self.num_faces} edges={self.num_edges} coedges={self.num_coedges}>"
        )
