"""``BrepEncoder``: turn one body into the arrays of the specified ``BrepEncoder``.

The open counterpart of ``hoops_ai.cadencoder.BrepEncoder``, on OpenCascade. Each ``push_*``
method computes one family of features of a :class:`~cadstore.cad.BrepAccess` body. With a
storage, it first checks ``storage.get_keys()`` and does nothing when all its keys are
already stored (so an interrupted encoding resumes cheaply; delete a key to recompute it),
otherwise it declares its arrays in the storage's schema, saves them and returns what the
specified encoder documents: the key name, except ``push_face_attributes()`` and
``push_edge_attributes()``, which return ``(keys, {code: name})`` so that users' task code
``face_attrs, face_types = encoder.push_face_attributes()`` works with or without a storage,
and ``push_face_adjacency_graph()``, which returns ``("graph", num_nodes, num_edges)``.
Without a storage every method returns the arrays (the two attribute methods as
``(arrays, {code: name})``).

A schema the storage already carries wins: a group it declares on another primary
dimension (``graph`` on ``graphitem``, say) keeps it, and the encoder declares its arrays
along that dimension; an array it declares with the rank and dtype the encoder stores keeps
its declaration, and one whose declaration cannot describe the stored array is declared
again as the encoder stores it, so every stored array validates against the schema the item
carries.

Keys, shapes and dtypes (``N_f`` faces, ``N_e`` co-edges, see :mod:`cadstore.cad.brep`):

=============================================  ===============================  ==========
method                                         keys (shape)                     group
=============================================  ===============================  ==========
``push_face_indices()``                        ``face_indices (N_f,)`` i32      faces
``push_face_attributes()``                     ``face_types`` i32,              faces
                                               ``face_areas`` f32,
                                               ``face_centroids (N_f, 3)`` f32,
                                               ``face_loops`` i32
``push_face_discretization(pointsamples=25)``  ``face_discretization            faces
                                               (N_f, P, 7)`` f32
``push_facegrid(ugrid=5, vgrid=5)``            ``face_uv_grids                  faces
                                               (N_f, U, V, 7)`` f32
``push_face_neighbors_count()``                ``face_neighborscount`` i32      faces
``push_edge_indices()``                        ``edge_indices (N_e,)`` i32      edges
``push_edge_attributes()``                     ``edge_types`` i32,              edges
                                               ``edge_lengths`` f32,
                                               ``edge_dihedral_angles`` f32,
                                               ``edge_convexities`` i32
``push_curvegrid(ugrid=5)``                    ``edge_u_grids (N_e, U, 6)`` f32 edges
``push_face_adjacency_graph()``                ``graph``: ``edges_source``,     graph
                                               ``edges_destination (N_e,)`` i32,
                                               ``num_nodes`` () i32
``push_extended_adjacency()``                  ``extended_adjacency             faceface
                                               (N_f, N_f)`` f32
``push_face_pair_edges_path(16)``              ``face_pair_edges_path           faceface
                                               (N_f, N_f, M)`` i32
``push_average_face_pair_distance_``           ``d2_distance (N_f, N_f, B)``    faceface
``histograms(grid=5, num_bins=64)``            f32
``push_average_face_pair_angle_``              ``a3_distance (N_f, N_f, B)``    faceface
``histograms(grid=5, num_bins=64)``            f32
=============================================  ===============================  ==========

Feature definitions
-------------------
**Units.** Lengths, areas and coordinates are in model units (millimetres for STEP and IGES
files, see :mod:`cadstore.cad.loader`); angles in radians.

**Faces.** ``face_types`` uses the vendor's codes (:data:`FACE_TYPE_DESCRIPTIONS`). Areas and
centroids are the exact surface integrals of the trimmed face. ``face_loops`` counts the
face's wires: 1 for a simple face, 2 for a face with one hole, and so on.

**Face sampling.** ``face_discretization`` samples a regular grid over the face's parameter
box (the bounding box of its trimming loops in (u, v)), both ends included, u-major. A
perfect square ``P = k*k`` gives a ``k x k`` grid; another ``P`` takes ``P`` evenly spaced
points of the smallest ``ceil(sqrt(P)) x ceil(P / ceil(sqrt(P)))`` grid. Each sample is
``x, y, z, nx, ny, nz, inside``: the point, the unit outward normal (the surface normal
flipped when the face is reversed in the body; zero where the surface has no normal, such
as the apex of a cone) and 1 when the point lies on the face (inside or on its trimming
loops) or 0 when it falls in a hole or outside the trimmed region.

**Co-edges.** Per co-edge ``c`` of face ``f`` whose mate lies on face ``g``: ``edge_types`` is
the curve type (:data:`EDGE_TYPE_DESCRIPTIONS`) and ``edge_lengths`` the edge length, equal for
both co-edges of an edge. At the middle of the edge (in its curve parameter), with ``t`` the
unit tangent in the co-edge's direction and ``n_f``, ``n_g`` the outward unit normals of the two
faces, the **signed dihedral angle** is ``atan2((n_f x n_g) . t, n_f . n_g)``: the angle
between the two normals, positive when the edge is convex, negative when it is concave, 0
when the faces are tangent. It lies in ``(-pi, pi]``, is ``+pi/2`` on every edge of a box,
``+pi/3`` between two sides of a hexagonal prism, ``-pi/2`` on the rim of a blind hole's
floor, and is the same for both co-edges of an edge. ``edge_convexities`` follows the
specified system's saved output: **1 convex, 2 concave, 3 smooth**, where smooth means
``|dihedral| <`` the smooth tolerance (5 degrees by default). In its published encoder
example every positive angle (+pi/4, +pi/3 between the sides of a hexagonal prism, +pi/2)
has code 1, every negative one code 2 and every zero one code 3, and its documentation
names convex as code 1 (it writes the codes -1/0/1, which the product does not produce).
The occwl ``EdgeConvexity`` order of the MFR datasets (1 concave, 2 convex) is the other
way round.

**Edge sampling.** ``edge_u_grids`` holds ``U`` points at equal arc-length steps along each
co-edge, in the co-edge's direction (so the two co-edges of an edge list the same points in
opposite orders), each ``x, y, z, tx, ty, tz`` with the unit tangent along the co-edge.

**Graph.** Co-edge ``c`` is the directed graph edge ``coedge_face[c] -> coedge_mate_face[c]``:
``edges_source``/``edges_destination`` have one entry per co-edge, so the graph is symmetric
and ``graph`` lines up with the ``edges`` arrays. ``face_neighborscount`` is the number of
distinct other faces a face shares an edge with. At an edge shared by ``k > 2`` faces
(non-manifold, in surface models) the co-edges' mates follow the faces cyclically, so the
graph there is not symmetric; ``face_neighborscount``, ``extended_adjacency`` and
``face_pair_edges_path`` take every face on such an edge as a neighbour of the others,
by the co-edge of the face a step leaves.

**Face pairs.** ``extended_adjacency[i, j]`` is the number of hops on the shortest path from
face ``i`` to face ``j`` in the graph (0 on the diagonal, -1 when ``j`` cannot be reached,
which only happens for bodies with several disconnected shells).
``face_pair_edges_path[i, j]`` lists the co-edge indices (rows of the ``edges`` arrays) along
one shortest path from ``i`` to ``j``, starting at ``i``, padded with -1; a longer path keeps
its first ``M`` co-edges. Ties between shortest paths go to the lowest co-edge index.

**Histograms.** Each face is sampled with a ``grid x grid`` grid as above, keeping the
points that lie on the face (all of them if none does). For the pair ``(i, j)``, every sample
of ``i`` is paired with every sample of ``j`` (including a sample with itself when
``i == j``). ``d2_distance[i, j]`` is the histogram of the distances of those pairs divided by
the body's bounding-box diagonal, over ``num_bins`` equal bins of ``[0, 1]``;
``a3_distance[i, j]`` is the histogram of the angles between the pairs' normals divided by
``pi``, also over ``[0, 1]`` (samples without a normal are left out). Each histogram is
normalised to sum to 1 and is symmetric in ``(i, j)``; a face with no usable sample gives a
row of zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

import numpy as np
from numpy.typing import NDArray
from OCP.BRep import BRep_Tool
from OCP.BRepAdaptor import BRepAdaptor_Curve, BRepAdaptor_Curve2d, BRepAdaptor_Surface
from OCP.BRepGProp import BRepGProp
from OCP.BRepTools import BRepTools
from OCP.GCPnts import GCPnts_AbscissaPoint, GCPnts_UniformAbscissa
from OCP.GeomAbs import GeomAbs_CurveType, GeomAbs_SurfaceType
from OCP.gp import gp_Pnt, gp_Pnt2d, gp_Vec
from OCP.GProp import GProp_GProps
from OCP.ShapeAnalysis import ShapeAnalysis_Surface
from OCP.TopAbs import TopAbs_IN, TopAbs_ON, TopAbs_REVERSED
from OCP.TopoDS import TopoDS_Shape

from cadstore.cad._kernel import FaceClassifier
from cadstore.cad.brep import BrepAccess
from cadstore.errors import InvalidDataError
from cadstore.schema import SchemaBuilder
from cadstore.vocabulary import CONVEXITIES, EDGE_TYPES, FACE_TYPES

if TYPE_CHECKING:
    from OCP.TopoDS import TopoDS_Edge, TopoDS_Face

    from cadstore.storage.base import DataStorage

__all__ = [
    "CONVEXITY_DESCRIPTIONS",
    "EDGE_TYPE_DESCRIPTIONS",
    "FACE_TYPE_DESCRIPTIONS",
    "SMOOTH_ANGLE_TOLERANCE",
    "BrepEncoder",
]

_ArrayT = TypeVar("_ArrayT", bound=NDArray[Any])

#: ``face_types`` codes (:data:`cadstore.vocabulary.FACE_TYPES`).
FACE_TYPE_DESCRIPTIONS: Final[Mapping[int, str]] = FACE_TYPES

#: ``edge_types`` codes (:data:`cadstore.vocabulary.EDGE_TYPES`).
EDGE_TYPE_DESCRIPTIONS: Final[Mapping[int, str]] = EDGE_TYPES

#: ``edge_convexities`` codes (:data:`cadstore.vocabulary.CONVEXITIES`).
CONVEXITY_DESCRIPTIONS: Final[Mapping[int, str]] = CONVEXITIES

#: Dihedral angles smaller than this (radians, 5 degrees) count as smooth.
SMOOTH_ANGLE_TOLERANCE: Final[float] = math.radians(5.0)

_CONVEX, _CONCAVE, _SMOOTH = 1, 2, 3

_SURFACE_CODES: Final[dict[Any, int]] = {
    GeomAbs_SurfaceType.GeomAbs_Plane: 0,
    GeomAbs_SurfaceType.GeomAbs_Cylinder: 1,
    GeomAbs_SurfaceType.GeomAbs_Cone: 2,
    GeomAbs_SurfaceType.GeomAbs_Sphere: 3,
    GeomAbs_SurfaceType.GeomAbs_Torus: 4,
    GeomAbs_SurfaceType.GeomAbs_BezierSurface: 5,
    GeomAbs_SurfaceType.GeomAbs_BSplineSurface: 5,
    GeomAbs_SurfaceType.GeomAbs_SurfaceOfRevolution: 13,
    GeomAbs_SurfaceType.GeomAbs_SurfaceOfExtrusion: 14,
    GeomAbs_SurfaceType.GeomAbs_OffsetSurface: 15,
    GeomAbs_SurfaceType.GeomAbs_OtherSurface: 16,
}

_CURVE_CODES: Final[dict[Any, int]] = {
    GeomAbs_CurveType.GeomAbs_Line: 0,
    GeomAbs_CurveType.GeomAbs_Circle: 1,
    GeomAbs_CurveType.GeomAbs_Ellipse: 2,
    GeomAbs_CurveType.GeomAbs_Hyperbola: 3,
    GeomAbs_CurveType.GeomAbs_Parabola: 4,
    GeomAbs_CurveType.GeomAbs_BezierCurve: 5,
    GeomAbs_CurveType.GeomAbs_BSplineCurve: 6,
    GeomAbs_CurveType.GeomAbs_OffsetCurve: 7,
    GeomAbs_CurveType.GeomAbs_OtherCurve: 8,
}


# ---------------------------------------------------------------------------- schema
class _GroupSpec(NamedTuple):
    primary: str
    description: str
    special_processing: str | None


class _ArraySpec(NamedTuple):
    group: str
    dims: tuple[str, ...]
    dtype: str
    description: str


_GROUPS: Final[dict[str, _GroupSpec]] = {
    "faces": _GroupSpec("face", "Face attributes of the B-rep", None),
    "edges": _GroupSpec("edge", "Co-edge attributes of the B-rep", None),
    "graph": _GroupSpec("edge", "Face adjacency graph, one graph edge per co-edge", None),
    "faceface": _GroupSpec(
        "facepair",
        "Face-pair arrays, (N_f, N_f, k) per item flattened to N_f**2 rows",
        "matrix_flattening",
    ),
}

_ARRAYS: Final[dict[str, _ArraySpec]] = {
    "face_indices": _ArraySpec("faces", ("face",), "int32", "Index of each face"),
    "face_types": _ArraySpec("faces", ("face",), "int32", "Surface type code (0 Plane, ...)"),
    "face_areas": _ArraySpec("faces", ("face",), "float32", "Area of each face"),
    "face_centroids": _ArraySpec(
        "faces", ("face", "dim"), "float32", "Centroid (x, y, z) of each face"
    ),
    "face_loops": _ArraySpec("faces", ("face",), "int32", "Number of loops of each face"),
    "face_discretization": _ArraySpec(
        "faces",
        ("face", "sample", "component"),
        "float32",
        "Points sampled on each face: xyz, normal, inside flag",
    ),
    "face_uv_grids": _ArraySpec(
        "faces",
        ("face", "u", "v", "component"),
        "float32",
        "UV grid over each face's parameter box: xyz, normal, inside flag",
    ),
    "face_neighborscount": _ArraySpec(
        "faces", ("face",), "int32", "Number of distinct adjacent faces"
    ),
    "edge_indices": _ArraySpec("edges", ("edge",), "int32", "Index of each co-edge"),
    "edge_types": _ArraySpec("edges", ("edge",), "int32", "Curve type code (0 Line, 1 Circle)"),
    "edge_lengths": _ArraySpec("edges", ("edge",), "float32", "Length of each edge"),
    "edge_dihedral_angles": _ArraySpec(
        "edges",
        ("edge",),
        "float32",
        "Signed angle between the outward normals of the two faces at mid-edge, radians in "
        "(-pi, pi]: positive convex, negative concave, 0 tangent (+pi/2 on a box edge)",
    ),
    "edge_convexities": _ArraySpec(
        "edges",
        ("edge",),
        "int32",
        "Convexity code: 1 convex (dihedral angle > 0), 2 concave (< 0), 3 smooth "
        "(|angle| below the smooth tolerance, 5 degrees by default)",
    ),
    "edge_u_grids": _ArraySpec(
        "edges",
        ("edge", "u", "component"),
        "float32",
        "Points sampled along each co-edge: xyz, tangent",
    ),
    "edges_source": _ArraySpec("graph", ("edge",), "int32", "Source face of each graph edge"),
    "edges_destination": _ArraySpec(
        "graph", ("edge",), "int32", "Destination face of each graph edge"
    ),
    # One value per item (a 0-d array); the merged dataset keeps one per item too.
    "num_nodes": _ArraySpec("graph", (), "int32", "Number of graph nodes (faces) of the item"),
    "extended_adjacency": _ArraySpec(
        "faceface", ("facepair",), "float32", "Shortest-path hop count between the two faces"
    ),
    "face_pair_edges_path": _ArraySpec(
        "faceface",
        ("facepair", "dim_path"),
        "int32",
        "Co-edge ids on a shortest path, -1 padded",
    ),
    "d2_distance": _ArraySpec(
        "faceface", ("facepair", "bin"), "float32", "Histogram of distances / bbox diagonal (D2)"
    ),
    "a3_distance": _ArraySpec(
        "faceface", ("facepair", "bin"), "float32", "Histogram of normal angles / pi (A3)"
    ),
}


# ---------------------------------------------------------------------------- helpers
def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _unit(vectors: NDArray[np.float64]) -> NDArray[np.float64]:
    """Normalise rows; rows of (near) zero length become zero rather than NaN."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    out = np.zeros_like(vectors)
    np.divide(vectors, norms, out=out, where=norms > 1e-300)
    return out


def _grid_layout(samples: int) -> tuple[int, int, NDArray[np.intp] | None]:
    """Return ``(nu, nv, pick)``: the grid for ``samples`` points and which nodes to keep."""
    root = math.isqrt(samples)
    if root * root == samples:
        return root, root, None
    nu = math.ceil(math.sqrt(samples))
    nv = math.ceil(samples / nu)
    pick = np.round(np.linspace(0, nu * nv - 1, samples)).astype(np.intp)
    return nu, nv, pick


class _FaceSamples(NamedTuple):
    points: NDArray[np.float64]  # (N_f, S, 3)
    normals: NDArray[np.float64]  # (N_f, S, 3), zero where undefined
    inside: NDArray[np.bool_]  # (N_f, S)


class _Steps(NamedTuple):
    """Steps between faces sharing an edge: from ``source`` to ``target`` by ``coedge`` (a
    co-edge of the source face on that edge)."""

    source: NDArray[np.int64]
    target: NDArray[np.int64]
    coedge: NDArray[np.int64]


class _EdgeFrames(NamedTuple):
    tangents: NDArray[np.float64]  # (N_e, 3) unit tangent at mid-edge, along the co-edge
    normals: NDArray[np.float64]  # (N_e, 3) outward normal of the co-edge's face there


# ---------------------------------------------------------------------------- encoder
def _fits(declared: Mapping[str, Any], spec: _ArraySpec) -> bool:
    """Whether a declaration (``{'dims', 'dtype', ...}``) describes what the encoder stores."""
    dims = declared.get("dims")
    return (
        isinstance(dims, (list, tuple))
        and len(dims) == len(spec.dims)
        and declared.get("dtype") == spec.dtype
    )


def _declared(schema: Any, name: str) -> bool:
    """Whether ``schema`` already declares array ``name`` where and as the encoder stores it."""
    spec = _ARRAYS[name]
    found = schema.array_spec(f"{spec.group}/{name}")
    if found is None or found[0] != spec.group or not _fits(found[2], spec):
        return False
    wanted = _GROUPS[spec.group]
    return not wanted.special_processing or schema.special_processing(spec.group) is not None


def _encoder_dims(spec: _ArraySpec, primary: str) -> list[str]:
    """The encoder's dims of an array, along the group's ``primary`` dimension."""
    dims = list(spec.dims)
    if dims and dims[0] == _GROUPS[spec.group].primary:
        dims[0] = primary
    return dims


class BrepEncoder:
    """Compute and store the encoder features of one body.

    Parameters
    ----------
    brep_access
        The body: a :class:`~cadstore.cad.BrepAccess` (from ``model.get_brep()``) or a bare
        ``TopoDS_Shape``, which is wrapped.
    storage_handler
        A :class:`~cadstore.storage.base.DataStorage`; ``None`` makes every ``push_*`` method
        return its arrays instead of storing them.
    smooth_angle_tolerance
        Dihedral angles (radians) below this count as smooth in ``edge_convexities``.

    Notes
    -----
    The feature definitions (units, sampling, normalisation, sign conventions) are in the
    module docstring. Results computed once (face samples, shortest paths) are cached on the
    encoder, so pushing several features of one body shares the work.

    Examples
    --------
    >>> from cadstore import MemoryStorage
    >>> from cadstore.cad.samples import make_box
    >>> storage = MemoryStorage()
    >>> encoder = BrepEncoder(make_box(10, 20, 30), storage)
    >>> keys, face_types = encoder.push_face_attributes()
    >>> keys, face_types[0]
    (['face_types', 'face_areas', 'face_centroids', 'face_loops'], 'Plane')
    >>> sorted(storage.load_data("face_areas").tolist())
    [200.0, 200.0, 300.0, 300.0, 600.0, 600.0]
    """

    def __init__(
        self,
        brep_access: BrepAccess | TopoDS_Shape,
        storage_handler: DataStorage | None = None,
        *,
        smooth_angle_tolerance: float = SMOOTH_ANGLE_TOLERANCE,
    ) -> None:
        if isinstance(brep_access, TopoDS_Shape):
            brep_access = BrepAccess(brep_access)
        if not isinstance(brep_access, BrepAccess):
            raise TypeError(
                "brep_access must be a cadstore.cad.BrepAccess (model.get_brep()) or a "
                f"TopoDS_Shape, got {type(brep_access).__name__}"
            )
        if not (math.isfinite(smooth_angle_tolerance) and 0 <= smooth_angle_tolerance < math.pi):
            raise ValueError(
                f"smooth_angle_tolerance must be in [0, pi) radians, got {smooth_angle_tolerance}"
            )
        self.brep = brep_access
        self.storage = storage_handler
        self.smooth_angle_tolerance = float(smooth_angle_tolerance)
        self._surfaces: list[BRepAdaptor_Surface] | None = None
        self._samples: dict[tuple[int, int], _FaceSamples] = {}
        self._face_attributes: tuple[NDArray[Any], ...] | None = None
        self._edge_attributes: tuple[NDArray[Any], ...] | None = None
        self._shortest: tuple[NDArray[np.int32], NDArray[np.int32]] | None = None
        self._steps_found: _Steps | None = None

    # ------------------------------------------------------------------ storage plumbing
    def _stored(self, keys: Sequence[str]) -> bool:
        if self.storage is None:
            return False
        present = set(self.storage.get_keys())
        return all(key in present for key in keys)

    def _register(self, names: Sequence[str]) -> None:
        """Declare ``names`` in the storage's schema, keeping everything already declared."""
        assert self.storage is not None
        parsed = getattr(self.storage, "schema", None)
        if parsed is not None and all(_declared(parsed, name) for name in names):
            # The common case after the first push: nothing to add, so no copy of the
            # schema and no rebuild (that cost milliseconds per item).
            return
        current = self.storage.get_schema()
        builder = SchemaBuilder.from_dict(current) if current else SchemaBuilder("CAD_analysis")
        for name in names:
            spec = _ARRAYS[name]
            group_spec = _GROUPS[spec.group]
            group = builder.get_group(spec.group)
            if group is None:
                group = builder.create_group(
                    spec.group,
                    group_spec.primary,
                    group_spec.description,
                    group_spec.special_processing,
                )
            elif group_spec.special_processing and group.special_processing is None:
                # Without it the merger would concatenate N_f x N_f matrices unflattened.
                group.special_processing = group_spec.special_processing
            declared = group.get_array(name)
            if declared is None or not _fits(declared, spec):
                # The group's own primary dimension wins (a user schema may put ``graph``
                # on ``graphitem``): the merger concatenates along it, whatever its name.
                if declared is not None:
                    group.remove_array(name)
                dims = _encoder_dims(spec, group.primary_dimension)
                group.create_array(name, dims, spec.dtype, spec.description)
        schema = builder.build()
        if schema != current:
            from cadstore.storage.base import NodeStorage

            if isinstance(self.storage, NodeStorage):
                self.storage.set_schema(schema, strict=self.storage.strict)
            else:  # a storage of the user's own: the specified set_schema(schema)
                self.storage.set_schema(schema)

    def _deliver(self, key: str, data: _ArrayT) -> str | _ArrayT:
        """Save one array and return its key, or return the array when there is no storage."""
        if self.storage is None:
            return data
        self._save({key: data}, [key])
        return key

    def _save(self, arrays: Mapping[str, Any], schema_names: Sequence[str]) -> None:
        assert self.storage is not None
        self._register(schema_names)
        for key, value in arrays.items():
            self.storage.save_data(key, value)

    def _save_descriptions(self, name: str, table: Mapping[int, str]) -> None:
        assert self.storage is not None
        # Metadata is JSON: its dict keys are strings.
        self.storage.save_metadata(
            f"descriptions/{name}", {str(code): label for code, label in table.items()}
        )

    # ------------------------------------------------------------------ faces
    def push_face_indices(self) -> str | NDArray[np.int32]:
        """Push ``face_indices``: ``0 .. N_f-1`` (int32, ``(N_f,)``).

        Returns
        -------
        str or numpy.ndarray
            The key with a storage, the array without.
        """
        key = "face_indices"
        if self._stored([key]):
            return key
        data = np.arange(self.brep.num_faces, dtype=np.int32)
        return self._deliver(key, data)

    def push_face_attributes(
        self,
    ) -> tuple[list[str], dict[int, str]] | tuple[list[NDArray[Any]], dict[int, str]]:
        """Push ``face_types``, ``face_areas``, ``face_centroids`` and ``face_loops``.

        Types are the codes of :data:`FACE_TYPE_DESCRIPTIONS` (int32), areas in model units
        squared (float32), centroids ``(N_f, 3)`` in model units (float32), loops the number
        of wires of each face (int32). With a storage, the code table is also saved as the
        metadata ``descriptions/face_types``.

        Returns
        -------
        tuple
            ``(values, {code: name})``, what the specified encoder returns in both cases, so
            ``face_attrs, face_types = encoder.push_face_attributes()`` works either way:
            ``values`` is the list of stored keys with a storage and ``[face_types,
            face_areas, face_centroids, face_loops]`` without.
        """
        keys = ["face_types", "face_areas", "face_centroids", "face_loops"]
        if self._stored(keys):
            return keys, dict(FACE_TYPE_DESCRIPTIONS)
        arrays = list(self._compute_face_attributes())
        if self.storage is None:
            return arrays, dict(FACE_TYPE_DESCRIPTIONS)
        self._save(dict(zip(keys, arrays, strict=True)), keys)
        self._save_descriptions("face_types", FACE_TYPE_DESCRIPTIONS)
        return keys, dict(FACE_TYPE_DESCRIPTIONS)

    def push_face_discretization(self, pointsamples: int = 25) -> str | NDArray[np.float32]:
        """Push ``face_discretization`` ``(N_f, pointsamples, 7)`` float32.

        Each sample is ``x, y, z, nx, ny, nz, inside`` on a grid over the face's (u, v)
        parameter box; see the module docstring for the grid and the inside flag.

        Parameters
        ----------
        pointsamples
            Samples per face (25 gives a 5 x 5 grid, 100 a 10 x 10 grid).

        Returns
        -------
        str or numpy.ndarray
            The key with a storage, the array without.
        """
        samples = _positive_int(pointsamples, "pointsamples")
        key = "face_discretization"
        if self._stored([key]):
            return key
        nu, nv, pick = _grid_layout(samples)
        rows = self._sample_rows(nu, nv)
        if pick is not None:
            rows = rows[:, pick]
        return self._deliver(key, rows.astype(np.float32))

    def push_facegrid(self, ugrid: int = 5, vgrid: int = 5) -> str | NDArray[np.float32]:
        """Push ``face_uv_grids`` ``(N_f, ugrid, vgrid, 7)`` float32 (the older call).

        The specified system's predecessor of :meth:`push_face_discretization`, kept so that
        task code written for it runs: the same samples (``x, y, z, nx, ny, nz, inside``) on
        a ``ugrid x vgrid`` grid over the face's (u, v) parameter box, ``[f, i, j]`` at the
        ``i``-th u and ``j``-th v value, both ends included.

        Parameters
        ----------
        ugrid, vgrid
            Samples along u and along v.

        Returns
        -------
        str or numpy.ndarray
            The key with a storage, the array without.
        """
        nu = _positive_int(ugrid, "ugrid")
        nv = _positive_int(vgrid, "vgrid")
        key = "face_uv_grids"
        if self._stored([key]):
            return key
        rows = self._sample_rows(nu, nv)
        return self._deliver(key, rows.reshape(self.brep.num_faces, nu, nv, 7).astype(np.float32))

    def _sample_rows(self, nu: int, nv: int) -> NDArray[np.float64]:
        """Each face's ``nu x nv`` grid samples as rows ``x, y, z, nx, ny, nz, inside``
        (``(N_f, nu * nv, 7)``, u-major): what both face sampling pushes store."""
        grid = self._face_samples(nu, nv)
        rows: NDArray[np.float64] = np.concatenate(
            [grid.points, grid.normals, grid.inside[..., None].astype(np.float64)], axis=-1
        )
        return rows

    def push_face_neighbors_count(self) -> str | NDArray[np.int32]:
        """Push ``face_neighborscount``: distinct faces sharing an edge with each face (int32).

        Returns
        -------
        str or numpy.ndarray
            The key with a storage, the array without.
        """
        key = "face_neighborscount"
        if self._stored([key]):
            return key
        n_faces = self.brep.num_faces
        # Each (face, neighbour) pair once, whatever the number of edges they share.
        steps = self._steps()
        pairs = np.unique(steps.source.astype(np.int64) * n_faces + steps.target)
        sources, targets = np.divmod(pairs, max(n_faces, 1))
        counts = np.bincount(sources[sources != targets], minlength=n_faces)
        data = counts.astype(np.int32)
        return self._deliver(key, data)

    # ------------------------------------------------------------------ edges
    def push_edge_indices(self) -> str | NDArray[np.int32]:
        """Push ``edge_indices``: ``0 .. N_e-1``, one per co-edge (int32, ``(N_e,)``).

        Returns
        -------
        str or numpy.ndarray
            The key with a storage, the array without.
        """
        key = "edge_indices"
        if self._stored([key]):
            return key
        data = np.arange(self.brep.num_coedges, dtype=np.int32)
        return self._deliver(key, data)

    def push_edge_attributes(
        self,
    ) -> tuple[list[str], dict[int, str]] | tuple[list[NDArray[Any]], dict[int, str]]:
        """Push ``edge_types``, ``edge_lengths``, ``edge_dihedral_angles``, ``edge_convexities``.

        One value per co-edge ``(N_e,)``: curve type codes of :data:`EDGE_TYPE_DESCRIPTIONS`
        (int32), edge lengths in model units (float32), signed dihedral angles in radians,
        positive for convex edges (float32), and convexity codes 1 convex, 2 concave,
        3 smooth (int32). The module docstring gives the exact definitions. With a storage,
        the curve code table is also saved as the metadata ``descriptions/edge_types``.

        Returns
        -------
        tuple
            ``(values, {code: name})`` in both cases, as specified: ``values`` is the list of
            stored keys with a storage and ``[edge_types, edge_lengths,
            edge_dihedral_angles, edge_convexities]`` without.
        """
        keys = ["edge_types", "edge_lengths", "edge_dihedral_angles", "edge_convexities"]
        if self._stored(keys):
            return keys, dict(EDGE_TYPE_DESCRIPTIONS)
        arrays = list(self._compute_edge_attributes())
        if self.storage is None:
            return arrays, dict(EDGE_TYPE_DESCRIPTIONS)
        self._save(dict(zip(keys, arrays, strict=True)), keys)
        self._save_descriptions("edge_types", EDGE_TYPE_DESCRIPTIONS)
        return keys, dict(EDGE_TYPE_DESCRIPTIONS)

    def push_curvegrid(self, ugrid: int = 5) -> str | NDArray[np.float32]:
        """Push ``edge_u_grids`` ``(N_e, ugrid, 6)`` float32: points and tangents per co-edge.

        Points are at equal arc-length steps from the co-edge's start to its end, both
        included; tangents are unit vectors along the co-edge.

        Parameters
        ----------
        ugrid
            Samples per co-edge.

        Returns
        -------
        str or numpy.ndarray
            The key with a storage, the array without.
        """
        count = _positive_int(ugrid, "ugrid")
        key = "edge_u_grids"
        if self._stored([key]):
            return key
        data = self._compute_curve_grids(count)
        return self._deliver(key, data)

    # ------------------------------------------------------------------ graph
    def push_face_adjacency_graph(self) -> tuple[str, int, int] | Any:
        """Push ``graph``: one directed graph edge per co-edge, from its face to its mate's.

        Stored as ``{"edges_source": (N_e,) int32, "edges_destination": (N_e,) int32,
        "num_nodes": N_f}``; entry ``k`` is co-edge ``k``, so the graph lines up with the
        ``edges`` arrays and holds both directions of every face adjacency.

        Returns
        -------
        tuple, networkx.DiGraph or dict
            With a storage, ``("graph", num_nodes, num_edges)`` as specified: the key, the
            number of faces and the number of stored graph edges (co-edges). Without one, a
            ``networkx.DiGraph`` with nodes ``0 .. N_f-1`` (parallel co-edges between the
            same two faces become one graph edge) when networkx is installed, else the dict
            above.
        """
        key = "graph"
        counts = (self.brep.num_faces, self.brep.num_coedges)
        if self._stored([key]):
            return (key, *counts)
        graph = {
            "edges_source": np.array(self.brep.coedge_face, dtype=np.int32),
            "edges_destination": np.array(self.brep.coedge_mate_face, dtype=np.int32),
            "num_nodes": np.int32(self.brep.num_faces),
        }
        if self.storage is None:
            try:
                import networkx
            except ImportError:
                return graph
            digraph = networkx.DiGraph()
            digraph.add_nodes_from(range(self.brep.num_faces))
            digraph.add_edges_from(
                zip(
                    graph["edges_source"].tolist(),
                    graph["edges_destination"].tolist(),
                    strict=True,
                )
            )
            return digraph
        self._save({key: graph}, ["edges_source", "edges_destination", "num_nodes"])
        return (key, *counts)

    def push_extended_adjacency(self) -> str | NDArray[np.float32]:
        """Push ``extended_adjacency`` ``(N_f, N_f)`` float32: shortest-path hop counts.

        0 on the diagonal, 1 for faces sharing an edge, and so on; -1 for unreachable pairs.

        Returns
        -------
        str or numpy.ndarray
            The key with a storage, the array without.
        """
        key = "extended_adjacency"
        if self._stored([key]):
            return key
        hops, _ = self._shortest_paths()
        data = hops.astype(np.float32)
        return self._deliver(key, data)

    def push_face_pair_edges_path(self, max_allow_edge_length: int = 16) -> str | NDArray[np.int32]:
        """Push ``face_pair_edges_path`` ``(N_f, N_f, M)`` int32, ``M = max_allow_edge_length``.

        Row ``[i, j]`` lists the co-edges of a shortest path from face ``i`` to face ``j``,
        in order from ``i``, padded with -1 (all -1 on the diagonal and for unreachable
        pairs). Paths longer than ``M`` keep their first ``M`` co-edges.

        Parameters
        ----------
        max_allow_edge_length
            ``M``, the length of each row.

        Returns
        -------
        str or numpy.ndarray
            The key with a storage, the array without.
        """
        width = _positive_int(max_allow_edge_length, "max_allow_edge_length")
        key = "face_pair_edges_path"
        if self._stored([key]):
            return key
        data = self._compute_paths(width)
        return self._deliver(key, data)

    def push_average_face_pair_distance_histograms(
        self, grid: int = 5, num_bins: int = 64
    ) -> str | NDArray[np.float32]:
        """Push ``d2_distance`` ``(N_f, N_f, num_bins)`` float32: D2 distance histograms.

        For faces ``i`` and ``j``, the histogram of the distances between the ``grid x grid``
        samples of ``i`` and those of ``j``, divided by the bounding-box diagonal, over
        ``num_bins`` equal bins of ``[0, 1]`` and normalised to sum to 1.

        Parameters
        ----------
        grid
            Samples per face are a ``grid x grid`` grid (at most 25 points with the default).
        num_bins
            Number of histogram bins.

        Returns
        -------
        str or numpy.ndarray
            The key with a storage, the array without.
        """
        size = _positive_int(grid, "grid")
        bins = _positive_int(num_bins, "num_bins")
        key = "d2_distance"
        if self._stored([key]):
            return key
        samples = self._face_samples(size, size)
        mask = self._usable(samples.inside)
        diagonal = self.brep.bounding_box_diagonal() or 1.0
        data = _pair_histograms(samples.points, mask, bins, _distance_measure(diagonal))
        return self._deliver(key, data)

    def push_average_face_pair_angle_histograms(
        self, grid: int = 5, num_bins: int = 64
    ) -> str | NDArray[np.float32]:
        """Push ``a3_distance`` ``(N_f, N_f, num_bins)`` float32: normal-angle histograms.

        For faces ``i`` and ``j``, the histogram of the angles between the normals of the
        ``grid x grid`` samples of ``i`` and those of ``j``, divided by ``pi``, over
        ``num_bins`` equal bins of ``[0, 1]`` and normalised to sum to 1.

        Parameters
        ----------
        grid
            Samples per face are a ``grid x grid`` grid.
        num_bins
            Number of histogram bins.

        Returns
        -------
        str or numpy.ndarray
            The key with a storage, the array without.
        """
        size = _positive_int(grid, "grid")
        bins = _positive_int(num_bins, "num_bins")
        key = "a3_distance"
        if self._stored([key]):
            return key
        samples = self._face_samples(size, size)
        has_normal = np.linalg.norm(samples.normals, axis=-1) > 0.5
        mask = self._usable(samples.inside) & has_normal
        data = _pair_histograms(samples.normals, mask, bins, _angle_measure)
        return self._deliver(key, data)

    # ------------------------------------------------------------------ computations
    def _surface(self, face_index: int) -> BRepAdaptor_Surface:
        if self._surfaces is None:
            self._surfaces = [BRepAdaptor_Surface(face, True) for face in self.brep.faces]
        return self._surfaces[face_index]

    def _compute_face_attributes(self) -> tuple[NDArray[Any], ...]:
        if self._face_attributes is None:
            n_faces = self.brep.num_faces
            types = np.empty(n_faces, dtype=np.int32)
            areas = np.empty(n_faces, dtype=np.float64)
            centroids = np.empty((n_faces, 3), dtype=np.float64)
            for f, face in enumerate(self.brep.faces):
                types[f] = _SURFACE_CODES.get(self._surface(f).GetType(), 16)
                props = GProp_GProps()
                BRepGProp.SurfaceProperties_s(face, props)
                areas[f] = abs(props.Mass())
                centre = props.CentreOfMass()
                centroids[f] = (centre.X(), centre.Y(), centre.Z())
                # Stored as float32: beyond its range (or not finite) is an unbounded face.
                if not (abs(areas[f]) < _FLOAT32_MAX and (abs(centroids[f]) < _FLOAT32_MAX).all()):
                    _face_bounds(f, face)  # an unbounded face: named there
                    raise InvalidDataError(f"face {f}: its area or centroid is not a float32")
            self._face_attributes = (
                types,
                areas.astype(np.float32),
                centroids.astype(np.float32),
                np.array(self.brep.face_loop_counts, dtype=np.int32),
            )
        return tuple(array.copy() for array in self._face_attributes)

    def _face_samples(self, nu: int, nv: int) -> _FaceSamples:
        cached = self._samples.get((nu, nv))
        if cached is not None:
            return cached
        n_faces = self.brep.num_faces
        count = nu * nv
        points = np.zeros((n_faces, count, 3))
        normals = np.zeros((n_faces, count, 3))
        inside = np.zeros((n_faces, count), dtype=bool)
        for f, face in enumerate(self.brep.faces):
            points[f], normals[f], inside[f] = self._sample_face(f, face, nu, nv)
        result = _FaceSamples(points, normals, inside)
        self._samples[(nu, nv)] = result
        return result

    def _sample_face(
        self, index: int, face: TopoDS_Face, nu: int, nv: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
        surface = self._surface(index)
        bounds = _face_bounds(index, face)
        umin, umax, vmin, vmax = bounds
        classifier = FaceClassifier(face, BRep_Tool.Tolerance_s(face))
        grid = [(u, v) for u in np.linspace(umin, umax, nu) for v in np.linspace(vmin, vmax, nv)]
        evaluated = [_surface_d1(surface, u, v) for u, v in grid]
        inside = np.array(
            [classifier.Perform(gp_Pnt2d(u, v)) in (TopAbs_IN, TopAbs_ON) for u, v in grid],
            dtype=bool,
        )
        points = np.array([e[0] for e in evaluated])
        normals = _normal_rows(
            np.array([e[1] for e in evaluated]), np.array([e[2] for e in evaluated])
        )
        for k in np.flatnonzero(~normals.any(axis=1)).tolist():
            normals[k] = _nudged_normal(surface, *grid[k], bounds)
        normals = _unit(normals)
        if face.Orientation() == TopAbs_REVERSED:
            normals = -normals
        return points, normals, inside

    @staticmethod
    def _usable(inside: NDArray[np.bool_]) -> NDArray[np.bool_]:
        # A face whose grid misses it entirely (a thin sliver) still deserves samples.
        mask = inside.copy()
        empty = ~mask.any(axis=1)
        mask[empty] = True
        return mask

    def _compute_edge_attributes(self) -> tuple[NDArray[Any], ...]:
        if self._edge_attributes is not None:
            return tuple(array.copy() for array in self._edge_attributes)
        brep = self.brep
        used = np.unique(brep.coedge_edge)
        edge_type = np.zeros(brep.num_edges, dtype=np.int32)
        edge_length = np.zeros(brep.num_edges)
        for e in used.tolist():
            curve = BRepAdaptor_Curve(brep.edge(e))
            edge_type[e] = _CURVE_CODES.get(curve.GetType(), 8)
            edge_length[e] = GCPnts_AbscissaPoint.Length_s(curve)
        frames = self._edge_frames()
        n_own = frames.normals
        n_mate = frames.normals[brep.coedge_mate]
        sine = np.einsum("ij,ij->i", np.cross(n_own, n_mate), frames.tangents)
        # The formula takes the face to lie left of its co-edge, as the kernel's loops run
        # in a body placed without a mirror. A mirror (an assembly's left-hand instance)
        # runs them the other way round: the sign turns back, so convexity is the body's.
        mirrored = np.array(
            [f.Location().Transformation().IsNegative() for f in brep.faces], dtype=bool
        )
        if mirrored.any():
            sine[mirrored[brep.coedge_face]] *= -1.0
        cosine = np.einsum("ij,ij->i", n_own, n_mate)
        dihedral = np.arctan2(sine, cosine)
        convexity = np.where(dihedral > 0, _CONVEX, _CONCAVE).astype(np.int32)
        convexity[np.abs(dihedral) < self.smooth_angle_tolerance] = _SMOOTH
        self._edge_attributes = (
            edge_type[brep.coedge_edge],
            edge_length[brep.coedge_edge].astype(np.float32),
            dihedral.astype(np.float32),
            convexity,
        )
        return tuple(array.copy() for array in self._edge_attributes)

    def _edge_frames(self) -> _EdgeFrames:
        brep = self.brep
        count = brep.num_coedges
        tangents = np.zeros((count, 3))
        du = np.zeros((count, 3))
        dv = np.zeros((count, 3))
        where: list[tuple[float, float]] = []
        for c in range(count):
            f = int(brep.coedge_face[c])
            edge = brep.coedge(c)
            curve = BRepAdaptor_Curve(edge)
            middle = 0.5 * (curve.FirstParameter() + curve.LastParameter())
            point, tangents[c] = _curve_d1(curve, middle)
            u, v = _uv_on_face(edge, brep.face(f), middle, point)
            _, du[c], dv[c] = _surface_d1(self._surface(f), u, v)
            where.append((u, v))
        normals = _normal_rows(du, dv)
        for c in np.flatnonzero(~normals.any(axis=1)).tolist():
            f = int(brep.coedge_face[c])
            bounds = _face_bounds(f, brep.face(f))
            normals[c] = _nudged_normal(self._surface(f), *where[c], bounds)
        # The kernel's adaptors ignore orientation: a reversed co-edge runs against its
        # curve, and a reversed face's outward normal is minus the surface normal.
        tangents[np.asarray(brep.coedge_reversed)] *= -1.0
        face_reversed = np.array([f.Orientation() == TopAbs_REVERSED for f in brep.faces])
        if count:
            normals[face_reversed[brep.coedge_face]] *= -1.0
        return _EdgeFrames(_unit(tangents), _unit(normals))

    def _compute_curve_grids(self, count: int) -> NDArray[np.float32]:
        brep = self.brep
        per_edge: dict[int, NDArray[np.float64]] = {}
        for e in np.unique(brep.coedge_edge).tolist():
            per_edge[e] = _sample_curve(brep.edge(e), count)
        data = np.zeros((brep.num_coedges, count, 6))
        for c in range(brep.num_coedges):
            samples = per_edge[int(brep.coedge_edge[c])]
            if brep.coedge_reversed[c]:
                samples = samples[::-1].copy()
                samples[:, 3:] *= -1.0
            data[c] = samples
        return data.astype(np.float32)

    def _shortest_paths(self) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
        """Return ``(hops, parent)``: BFS from every face at once.

        ``hops[s, v]`` is the hop count (-1 unreachable) and ``parent[s, v]`` the co-edge by
        which ``v`` is first reached from ``s`` (-1 for ``v == s`` or unreachable).
        """
        if self._shortest is not None:
            return self._shortest
        brep = self.brep
        n = brep.num_faces
        hops = np.full((n, n), -1, dtype=np.int32)
        parent = np.full((n, n), -1, dtype=np.int32)
        np.fill_diagonal(hops, 0)
        steps = self._steps()
        source = np.asarray(steps.source, dtype=np.intp)
        order = np.argsort(steps.target, kind="stable")
        target_sorted = steps.target[order]
        if order.size:
            targets, starts = np.unique(target_sorted, return_index=True)
            coedge_sorted = steps.coedge[order].astype(np.int64)
            sentinel = np.int64(brep.num_coedges)
            frontier = np.eye(n, dtype=bool)
            reached = frontier.copy()
            depth = 0
            while frontier.any():
                depth += 1
                # For every (start face, co-edge): does the co-edge leave the frontier?
                leaving = frontier[:, source[order]]
                candidate = np.where(leaving, coedge_sorted[None, :], sentinel)
                # The lowest such co-edge into each target face wins ties deterministically.
                first = np.minimum.reduceat(candidate, starts, axis=1)
                found = np.zeros((n, n), dtype=bool)
                found[:, targets] = first < sentinel
                new = found & ~reached
                if not new.any():
                    break
                best = np.full((n, n), -1, dtype=np.int64)
                best[:, targets] = first
                hops[new] = depth
                parent[new] = best[new]
                reached |= new
                frontier = new
        self._shortest = (hops, parent)
        return self._shortest

    def _steps(self) -> _Steps:
        """Every step from a face to a face it shares an edge with, by the co-edge of the
        first face on that edge: each co-edge to its mate's face and, at an edge shared by
        ``k > 2`` faces (non-manifold, whose mates follow the faces cyclically), to each of
        the other faces too, so that such faces are each other's neighbours both ways.
        A body without such edges gives its co-edges, as they are. Found once per body
        (the neighbour counts and the shortest paths both walk them)."""
        if self._steps_found is None:
            self._steps_found = self._find_steps()
        return self._steps_found

    def _find_steps(self) -> _Steps:
        brep = self.brep
        face = np.asarray(brep.coedge_face, dtype=np.int64)
        mate_face = np.asarray(brep.coedge_mate_face, dtype=np.int64)
        coedge = np.arange(len(face), dtype=np.int64)
        edges, counts = np.unique(np.asarray(brep.coedge_edge), return_counts=True)
        shared = edges[counts > 2]
        if shared.size == 0:
            return _Steps(face, mate_face, coedge)
        extra: list[tuple[int, int, int]] = []
        edge_of = np.asarray(brep.coedge_edge)
        for e in shared.tolist():
            uses = np.flatnonzero(edge_of == e).tolist()
            for c in uses:
                extra.extend(
                    (int(face[c]), int(face[d]), c)
                    for d in uses
                    if face[d] != face[c] and face[d] != mate_face[c]
                )
        more = np.array(extra, dtype=np.int64).reshape(-1, 3)
        return _Steps(
            np.concatenate([face, more[:, 0]]),
            np.concatenate([mate_face, more[:, 1]]),
            np.concatenate([coedge, more[:, 2]]),
        )

    def _compute_paths(self, width: int) -> NDArray[np.int32]:
        hops, parent = self._shortest_paths()
        n = self.brep.num_faces
        source = np.asarray(self.brep.coedge_face, dtype=np.int64)
        paths = np.full((n, n, width), -1, dtype=np.int32)
        rows, cols = np.nonzero(hops > 0)
        if rows.size == 0:
            return paths
        depth = hops[rows, cols].astype(np.int64)
        current = cols.astype(np.int64)
        # Walk back from each target to its start face; step k fills position depth-1-k.
        for k in range(int(depth.max())):
            active = depth > k
            coedge = parent[rows[active], current[active]]
            position = depth[active] - 1 - k
            keep = position < width
            paths[rows[active][keep], cols[active][keep], position[keep]] = coedge[keep]
            current[active] = source[coedge]
        return paths

    def __repr__(self) -> str:
        target = "no storage" if self.storage is None else repr(self.storage)
        return f"<BrepEncoder {self.brep!r} -> {target}>"


# ---------------------------------------------------------------------------- geometry
#: The largest float32, the dtype of face areas and centroids.
_FLOAT32_MAX: Final = float(np.finfo(np.float32).max)
#: Parameters this large are the kernel's infinity (``Precision::Infinite()``, 2e100).
_UNBOUNDED: Final = 1e100


def _face_bounds(index: int, face: Any) -> tuple[float, float, float, float]:
    """The ``(umin, umax, vmin, vmax)`` box of face ``index``'s trimming loops.

    Raises
    ------
    InvalidDataError
        For a face without trimming loops over an infinite surface (an unbounded plane):
        its area, centroid and samples would be infinite, stored as if they were values.
    """
    bounds: tuple[float, float, float, float] = BRepTools.UVBounds_s(face)
    if not all(math.isfinite(b) and abs(b) < _UNBOUNDED for b in bounds):
        raise InvalidDataError(
            f"face {index} is unbounded (parameter box {bounds}): a face of an infinite "
            "surface without trimming loops has no finite area, centroid or samples"
        )
    return bounds


_Triple = tuple[float, float, float]
_ZERO: Final[_Triple] = (0.0, 0.0, 0.0)


def _surface_d1(
    surface: BRepAdaptor_Surface, u: float, v: float
) -> tuple[_Triple, _Triple, _Triple]:
    """Return the point at ``(u, v)`` and the derivatives ``dS/du``, ``dS/dv`` (zero if none)."""
    p, d1u, d1v = gp_Pnt(), gp_Vec(), gp_Vec()
    try:
        surface.D1(u, v, p, d1u, d1v)
    except Exception:  # the kernel raises where the surface is not C1
        p = surface.Value(u, v)
        return (p.X(), p.Y(), p.Z()), _ZERO, _ZERO
    return (p.X(), p.Y(), p.Z()), (d1u.X(), d1u.Y(), d1u.Z()), (d1v.X(), d1v.Y(), d1v.Z())


def _normal_rows(du: NDArray[np.float64], dv: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return ``du x dv`` row by row, zero where the surface has no normal.

    At a pole or apex the derivatives vanish or are parallel; such rows are zeroed rather
    than normalised into noise.
    """
    cross = np.cross(du, dv)
    scale = np.maximum(np.linalg.norm(du, axis=-1), np.linalg.norm(dv, axis=-1))
    cross[np.linalg.norm(cross, axis=-1) <= 1e-9 * scale * scale] = 0.0
    return cross


def _nudged_normal(
    surface: BRepAdaptor_Surface, u: float, v: float, bounds: tuple[float, float, float, float]
) -> NDArray[np.float64]:
    """Return ``dS/du x dS/dv`` a small step from ``(u, v)`` towards the middle of ``bounds``.

    Where the surface has no normal (a pole, an apex) the normal just beside the point is
    its limit; zero is returned when none is found.
    """
    umin, umax, vmin, vmax = bounds
    uc, vc = 0.5 * (umin + umax), 0.5 * (vmin + vmax)
    steps = (1e-6, 1e-4, 1e-2)
    derivatives = [_surface_d1(surface, u + h * (uc - u), v + h * (vc - v)) for h in steps]
    normals = _normal_rows(
        np.array([d[1] for d in derivatives]), np.array([d[2] for d in derivatives])
    )
    found = np.flatnonzero(normals.any(axis=1))
    return normals[found[0]] if found.size else np.zeros(3)


def _curve_d1(curve: BRepAdaptor_Curve, t: float) -> tuple[_Triple, _Triple]:
    """Return the point at ``t`` and the derivative there (zero where it is undefined)."""
    p, d1 = gp_Pnt(), gp_Vec()
    try:
        curve.D1(t, p, d1)
    except Exception:  # the kernel raises where the curve is not C1
        p = curve.Value(t)
        return (p.X(), p.Y(), p.Z()), _ZERO
    return (p.X(), p.Y(), p.Z()), (d1.X(), d1.Y(), d1.Z())


def _uv_on_face(
    edge: TopoDS_Edge, face: TopoDS_Face, t: float, point: _Triple
) -> tuple[float, float]:
    """Return the (u, v) on ``face`` of the edge's point at parameter ``t``."""
    try:
        uv = BRepAdaptor_Curve2d(edge, face).Value(t)
    except Exception:  # no usable p-curve: project the 3D point instead
        analysis = ShapeAnalysis_Surface(BRep_Tool.Surface_s(face))
        uv = analysis.ValueOfUV(gp_Pnt(*point), BRep_Tool.Tolerance_s(face))
    return uv.X(), uv.Y()


def _arc_length_parameters(
    curve: BRepAdaptor_Curve, count: int, first: float, last: float
) -> NDArray[np.float64]:
    """Return ``count`` parameters at equal arc-length steps from ``first`` to ``last``."""
    if count == 1:
        return np.array([0.5 * (first + last)])
    try:
        uniform = GCPnts_UniformAbscissa(curve, count, first, last)
        done = uniform.IsDone() and uniform.NbPoints() == count
    except Exception:  # the kernel gives up on some curves; equal parameter steps then
        done = False
    if not done:
        return np.linspace(first, last, count)
    return np.array([uniform.Parameter(i) for i in range(1, count + 1)])


def _sample_curve(edge: TopoDS_Edge, count: int) -> NDArray[np.float64]:
    """Return ``(count, 6)`` points and unit tangents at equal arc-length steps along ``edge``."""
    curve = BRepAdaptor_Curve(edge)
    params = _arc_length_parameters(curve, count, curve.FirstParameter(), curve.LastParameter())
    out = np.zeros((count, 6))
    for i, t in enumerate(params.tolist()):
        point, derivative = _curve_d1(curve, t)
        out[i, :3] = point
        out[i, 3:] = derivative
    out[:, 3:] = _unit(out[:, 3:])
    return out


# ---------------------------------------------------------------------------- histograms
#: Distances (or angles) between every row of ``a`` ``(S, 3)`` and every row of ``b``.
_Measure = Callable[[NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]]


def _distance_measure(diagonal: float) -> _Measure:
    def measure(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
        # Explicit differences: |a|^2 + |b|^2 - 2ab loses precision for nearby points.
        diff = a[:, None, :] - b[None, :, :]
        squared: NDArray[np.float64] = np.einsum("ijk,ijk->ij", diff, diff)
        return np.sqrt(squared) / diagonal

    return measure


def _angle_measure(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    cosine: NDArray[np.float64] = np.einsum("ik,jk->ij", a, b)
    return np.arccos(np.clip(cosine, -1.0, 1.0)) / np.pi


def _pair_histograms(
    values: NDArray[np.float64],
    mask: NDArray[np.bool_],
    bins: int,
    measure: _Measure,
) -> NDArray[np.float32]:
    """Histogram ``measure`` over all sample pairs of every face pair, normalised per pair.

    ``values`` is ``(N_f, S, 3)`` and ``mask`` ``(N_f, S)`` marks the samples to use. Only
    pairs ``j >= i`` are computed; the lower triangle is their mirror image.
    """
    n_faces = values.shape[0]
    out = np.zeros((n_faces, n_faces, bins), dtype=np.float64)
    if n_faces == 0:
        return out.astype(np.float32)
    owner = np.repeat(np.arange(n_faces), values.shape[1])[mask.ravel()]
    flat = values.reshape(-1, 3)[mask.ravel()]
    counts = mask.sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for i in range(n_faces):
        if counts[i] == 0:
            continue
        rest = slice(starts[i], None)
        measured = measure(flat[starts[i] : starts[i + 1]], flat[rest])
        index = np.minimum((np.clip(measured, 0.0, 1.0) * bins).astype(np.intp), bins - 1)
        faces = owner[rest] - i
        combined = faces[None, :] * bins + index
        histogram = np.bincount(combined.ravel(), minlength=(n_faces - i) * bins)
        out[i, i:] = histogram.reshape(n_faces - i, bins)
        out[i:, i] = out[i, i:]
    totals = out.sum(axis=-1, keepdims=True)
    np.divide(out, totals, out=out, where=totals > 0)
    return out.astype(np.float32)
