"""Parametric test parts built with the kernel, and writers for STEP, IGES and BREP files.

Nothing here downloads anything: every part is built from primitives and Boolean operations
at call time, so tests and demos can make CAD files with known answers (a 10 x 20 x 30 box
has faces of area 200, 300 and 600) in any temporary directory.

Examples
--------
>>> import tempfile, pathlib
>>> from cadstore.cad.samples import make_box_with_hole, write_step
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = write_step(make_box_with_hole(), pathlib.Path(tmp) / "part.step")
...     path.stat().st_size > 0
True
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from OCP.BRep import BRep_Builder
from OCP.BRepAdaptor import BRepAdaptor_Curve
from OCP.BRepAlgoAPI import BRepAlgoAPI_Cut, BRepAlgoAPI_Fuse
from OCP.BRepBuilderAPI import BRepBuilderAPI_MakeEdge
from OCP.BRepFilletAPI import BRepFilletAPI_MakeChamfer, BRepFilletAPI_MakeFillet
from OCP.BRepPrimAPI import (
    BRepPrimAPI_MakeBox,
    BRepPrimAPI_MakeCylinder,
    BRepPrimAPI_MakeSphere,
)
from OCP.BRepTools import BRepTools
from OCP.gp import gp_Ax2, gp_Dir, gp_Pnt
from OCP.IFSelect import IFSelect_RetDone
from OCP.IGESControl import IGESControl_Writer
from OCP.ShapeUpgrade import ShapeUpgrade_UnifySameDomain
from OCP.STEPControl import STEPControl_AsIs, STEPControl_Writer
from OCP.TopAbs import TopAbs_EDGE, TopAbs_SOLID
from OCP.TopoDS import TopoDS_Compound, TopoDS_Edge, TopoDS_Shape

from cadstore.cad._kernel import as_edge, indexed_map, iter_subshapes, quiet_kernel
from cadstore.io.location import resolve
from cadstore.io.publish import write_through_path

__all__ = [
    "PART_KINDS",
    "make_box",
    "make_box_with_hole",
    "make_bracket",
    "make_compound",
    "make_cylinder",
    "make_filleted_box",
    "make_line_edge",
    "make_plate_with_holes",
    "make_shaft",
    "make_sphere",
    "sample_parts",
    "write_brep",
    "write_iges",
    "write_sample_set",
    "write_shape",
    "write_step",
]


# ---------------------------------------------------------------------------- helpers
def _z_axis(x: float = 0.0, y: float = 0.0, z: float = 0.0) -> gp_Ax2:
    return gp_Ax2(gp_Pnt(x, y, z), gp_Dir(0.0, 0.0, 1.0))


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _solid(shape: TopoDS_Shape, what: str) -> TopoDS_Shape:
    """Return the single solid of a Boolean or fillet result, merging split coplanar faces."""
    unify = ShapeUpgrade_UnifySameDomain(shape, True, True, False)
    unify.Build()
    result = unify.Shape()
    solids = indexed_map(result, TopAbs_SOLID)
    if solids.Extent() != 1:
        # Parameters that cut a part in two (a hole wider than the plate) end up here.
        raise ValueError(f"{what}: the parameters give {solids.Extent()} solids, not one")
    return solids.FindKey(1)


def _cut(base: TopoDS_Shape, tools: Iterable[TopoDS_Shape]) -> TopoDS_Shape:
    for tool in tools:
        base = BRepAlgoAPI_Cut(base, tool).Shape()
    return base


def _fuse(shapes: Sequence[TopoDS_Shape]) -> TopoDS_Shape:
    result = shapes[0]
    for shape in shapes[1:]:
        result = BRepAlgoAPI_Fuse(result, shape).Shape()
    return result


# ---------------------------------------------------------------------------- primitives
def make_box(dx: float = 10.0, dy: float = 20.0, dz: float = 30.0) -> TopoDS_Shape:
    """Return a box with a corner at the origin: 6 planar faces, 12 straight edges.

    Parameters
    ----------
    dx, dy, dz
        Side lengths along x, y and z (model units).
    """
    _check_positive(dx=dx, dy=dy, dz=dz)
    return BRepPrimAPI_MakeBox(dx, dy, dz).Shape()


def make_cylinder(radius: float = 5.0, height: float = 10.0) -> TopoDS_Shape:
    """Return a cylinder on the z axis from ``z = 0``: 2 planar discs and 1 cylindrical face.

    Parameters
    ----------
    radius, height
        Model units.
    """
    _check_positive(radius=radius, height=height)
    return BRepPrimAPI_MakeCylinder(_z_axis(), radius, height).Shape()


def make_sphere(radius: float = 5.0) -> TopoDS_Shape:
    """Return a sphere centred at the origin: one spherical face and no co-edges.

    Parameters
    ----------
    radius
        Model units.
    """
    _check_positive(radius=radius)
    return BRepPrimAPI_MakeSphere(radius).Shape()


def make_box_with_hole(
    dx: float = 40.0,
    dy: float = 30.0,
    dz: float = 10.0,
    radius: float = 5.0,
    depth: float | None = None,
) -> TopoDS_Shape:
    """Return a box with a cylindrical hole drilled along -z from the centre of its top face.

    The top face has two loops. The rim where the hole meets the top face is convex (the
    material there is a 90-degree wedge). A through hole (``depth=None``) also gives the
    bottom face two loops; a blind hole instead ends in a flat floor whose rim is concave.

    Parameters
    ----------
    dx, dy, dz
        Box side lengths (model units).
    radius
        Hole radius; must leave material around the hole.
    depth
        Depth of a blind hole (``0 < depth < dz``); ``None`` drills through.
    """
    _check_positive(dx=dx, dy=dy, dz=dz, radius=radius)
    if 2 * radius >= min(dx, dy):
        raise ValueError(f"radius {radius} leaves no material in a {dx} x {dy} box")
    if depth is None:
        bottom, length = -1.0, dz + 2.0
    else:
        _check_positive(depth=depth)
        if depth >= dz:
            raise ValueError(f"a blind hole needs depth < dz ({dz}), got {depth}")
        bottom, length = dz - depth, depth + 1.0
    hole = BRepPrimAPI_MakeCylinder(_z_axis(dx / 2, dy / 2, bottom), radius, length).Shape()
    return _solid(_cut(make_box(dx, dy, dz), [hole]), "make_box_with_hole")


def make_filleted_box(
    dx: float = 20.0, dy: float = 20.0, dz: float = 20.0, radius: float = 2.0
) -> TopoDS_Shape:
    """Return a box with every edge rounded: all edges between faces are smooth (tangent).

    Parameters
    ----------
    dx, dy, dz
        Box side lengths (model units).
    radius
        Fillet radius, smaller than half the shortest side.
    """
    _check_positive(dx=dx, dy=dy, dz=dz, radius=radius)
    if 2 * radius >= min(dx, dy, dz):
        raise ValueError(f"fillet radius {radius} is too large for a {dx} x {dy} x {dz} box")
    box = make_box(dx, dy, dz)
    fillet = BRepFilletAPI_MakeFillet(box)
    edges = indexed_map(box, TopAbs_EDGE)
    for i in range(1, edges.Extent() + 1):
        fillet.Add(radius, as_edge(edges.FindKey(i)))
    fillet.Build()
    if not fillet.IsDone():
        raise ValueError("make_filleted_box: the kernel could not build the fillets")
    return _solid(fillet.Shape(), "make_filleted_box")


def make_line_edge(length: float = 10.0) -> TopoDS_Shape:
    """Return a lone straight edge along x: a shape with no face and no solid.

    Parameters
    ----------
    length
        Model units.
    """
    _check_positive(length=length)
    return BRepBuilderAPI_MakeEdge(gp_Pnt(0, 0, 0), gp_Pnt(length, 0, 0)).Edge()


def make_compound(shapes: Iterable[TopoDS_Shape]) -> TopoDS_Compound:
    """Return a compound holding ``shapes`` (a file with several bodies).

    Parameters
    ----------
    shapes
        Shapes to collect; they are not fused.
    """
    builder = BRep_Builder()
    compound = TopoDS_Compound()
    builder.MakeCompound(compound)
    for shape in shapes:
        builder.Add(compound, shape)
    return compound


# ---------------------------------------------------------------------------- parts
def make_plate_with_holes(
    length: float = 80.0,
    width: float = 50.0,
    thickness: float = 6.0,
    hole_radius: float = 4.0,
    rows: int = 2,
    cols: int = 3,
) -> TopoDS_Shape:
    """Return a flat plate with a ``rows x cols`` pattern of through holes.

    Parameters
    ----------
    length, width, thickness
        Plate size along x, y and z (model units).
    hole_radius
        Radius of every hole.
    rows, cols
        Hole pattern; the holes sit at the centres of a regular grid of cells.
    """
    _check_positive(length=length, width=width, thickness=thickness, hole_radius=hole_radius)
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be at least 1, got {rows} and {cols}")
    pitch_x, pitch_y = length / cols, width / rows
    if 2 * hole_radius >= min(pitch_x, pitch_y):
        raise ValueError(f"hole_radius {hole_radius} is too large for a {rows} x {cols} pattern")
    holes = [
        BRepPrimAPI_MakeCylinder(
            _z_axis((c + 0.5) * pitch_x, (r + 0.5) * pitch_y, -1.0), hole_radius, thickness + 2
        ).Shape()
        for r in range(rows)
        for c in range(cols)
    ]
    return _solid(_cut(make_box(length, width, thickness), holes), "make_plate_with_holes")


def make_bracket(
    width: float = 40.0,
    depth: float = 30.0,
    height: float = 30.0,
    thickness: float = 5.0,
    hole_radius: float = 3.0,
    fillet_radius: float = 0.0,
) -> TopoDS_Shape:
    """Return an L-shaped bracket: a base plate and an upright plate, each with two holes.

    Parameters
    ----------
    width
        Extent along x of both plates.
    depth
        Extent along y of the base plate.
    height
        Extent along z of the upright plate (standing at ``y = 0``).
    thickness
        Plate thickness.
    hole_radius
        Radius of the four mounting holes.
    fillet_radius
        When positive, the inner corner between the plates is rounded with this radius.
    """
    _check_positive(
        width=width, depth=depth, height=height, thickness=thickness, hole_radius=hole_radius
    )
    if thickness >= min(depth, height) or 2 * hole_radius >= min(depth - thickness, width / 2):
        raise ValueError("make_bracket: thickness or hole_radius too large for the plates")
    base = make_box(width, depth, thickness)
    upright = make_box(width, thickness, height)
    body = _solid(_fuse([base, upright]), "make_bracket")
    if fillet_radius > 0:
        body = _fillet_inner_corner(body, width, thickness, fillet_radius)
    base_y = thickness + (depth - thickness) / 2
    up_z = thickness + (height - thickness) / 2
    holes = []
    for x in (width / 4, 3 * width / 4):
        holes.append(
            BRepPrimAPI_MakeCylinder(_z_axis(x, base_y, -1.0), hole_radius, thickness + 2).Shape()
        )
        axis = gp_Ax2(gp_Pnt(x, -1.0, up_z), gp_Dir(0.0, 1.0, 0.0))
        holes.append(BRepPrimAPI_MakeCylinder(axis, hole_radius, thickness + 2).Shape())
    return _solid(_cut(body, holes), "make_bracket")


def _fillet_inner_corner(
    body: TopoDS_Shape, width: float, thickness: float, radius: float
) -> TopoDS_Shape:
    fillet = BRepFilletAPI_MakeFillet(body)
    # The inner corner is the straight edge along x at y = z = thickness.
    for edge in _edges_near(body, lambda p: abs(p[1] - thickness) + abs(p[2] - thickness)):
        fillet.Add(radius, edge)
    fillet.Build()
    if not fillet.IsDone():
        raise ValueError("make_bracket: the kernel could not build the inner fillet")
    return _solid(fillet.Shape(), "make_bracket")


def _edges_near(
    shape: TopoDS_Shape, distance: Callable[[tuple[float, float, float]], float]
) -> list[TopoDS_Edge]:
    """Return the edges whose midpoint is within 1e-6 of the locus ``distance(p) == 0``."""
    found: list[TopoDS_Edge] = []
    for sub in iter_subshapes(shape, TopAbs_EDGE):
        edge = as_edge(sub)
        curve = BRepAdaptor_Curve(edge)
        mid = curve.Value(0.5 * (curve.FirstParameter() + curve.LastParameter()))
        if distance((mid.X(), mid.Y(), mid.Z())) < 1e-6 and not any(
            edge.IsSame(other) for other in found
        ):
            found.append(edge)
    return found


def make_shaft(
    radii: Sequence[float] = (10.0, 8.0, 6.0),
    lengths: Sequence[float] = (20.0, 30.0, 15.0),
    chamfer: float = 1.0,
) -> TopoDS_Shape:
    """Return a stepped shaft on the z axis: coaxial cylinders with chamfered end edges.

    Parameters
    ----------
    radii, lengths
        Radius and length of each step, from ``z = 0`` upwards.
    chamfer
        Size of the 45-degree chamfer on the two end edges; 0 for none.
    """
    if len(radii) != len(lengths) or not radii:
        raise ValueError("radii and lengths must be non-empty and of the same length")
    for r, h in zip(radii, lengths, strict=True):
        _check_positive(radius=r, length=h)
    if chamfer < 0 or chamfer >= min(min(radii), min(lengths)) / 2:
        raise ValueError(f"chamfer {chamfer} is negative or too large for the steps")
    steps = []
    z = 0.0
    for r, h in zip(radii, lengths, strict=True):
        steps.append(BRepPrimAPI_MakeCylinder(_z_axis(0.0, 0.0, z), r, h).Shape())
        z += h
    body = _solid(_fuse(steps), "make_shaft")
    if chamfer > 0:
        top = z
        ends = _edges_near(body, lambda p: min(abs(p[2]), abs(p[2] - top)))
        maker = BRepFilletAPI_MakeChamfer(body)
        for edge in ends:
            maker.Add(chamfer, edge)
        maker.Build()
        if not maker.IsDone():
            raise ValueError("make_shaft: the kernel could not build the chamfers")
        body = _solid(maker.Shape(), "make_shaft")
    return body


#: The part families :func:`sample_parts` draws from.
PART_KINDS: tuple[str, ...] = ("bracket", "plate", "shaft")


def sample_parts(count: int = 12, seed: int = 0) -> list[tuple[str, TopoDS_Shape]]:
    """Return ``count`` parametric parts (brackets, plates with holes, shafts), deterministically.

    Part ``i`` is of kind ``PART_KINDS[i % 3]``; its dimensions are drawn from a generator
    seeded with ``(seed, i)``, so a part does not change when ``count`` does.

    Parameters
    ----------
    count
        Number of parts.
    seed
        Seed of the dimension draws.

    Returns
    -------
    list of (str, TopoDS_Shape)
        ``("bracket_000", shape)``, ``("plate_001", shape)``, ...
    """
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    parts = []
    for i in range(count):
        kind = PART_KINDS[i % len(PART_KINDS)]
        rng = np.random.default_rng([seed, i])
        if kind == "bracket":
            shape = make_bracket(
                width=float(rng.uniform(30, 60)),
                depth=float(rng.uniform(25, 45)),
                height=float(rng.uniform(25, 50)),
                thickness=float(rng.uniform(3, 6)),
                hole_radius=float(rng.uniform(2, 4)),
                fillet_radius=float(rng.choice([0.0, 2.0])),
            )
        elif kind == "plate":
            rows, cols = int(rng.integers(1, 4)), int(rng.integers(2, 5))
            shape = make_plate_with_holes(
                length=float(rng.uniform(60, 120)),
                width=float(rng.uniform(40, 80)),
                thickness=float(rng.uniform(3, 10)),
                hole_radius=float(rng.uniform(2, 5)),
                rows=rows,
                cols=cols,
            )
        else:
            n = int(rng.integers(2, 5))
            radii = np.sort(rng.uniform(5, 15, size=n))[::-1]
            shape = make_shaft(
                radii=[float(r) for r in radii],
                lengths=[float(h) for h in rng.uniform(10, 40, size=n)],
                chamfer=float(rng.choice([0.0, 1.0])),
            )
        parts.append((f"{kind}_{i:03d}", shape))
    return parts


# ---------------------------------------------------------------------------- writers
def _publish(path: str | os.PathLike[str], write: Callable[[str], bool], what: str) -> Path:
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: directory {target.parent} does not exist")

    def produce(temp: str) -> None:
        with quiet_kernel():
            ok = write(temp)
        if not ok or os.path.getsize(temp) == 0:
            raise OSError(f"the kernel's {what} writer failed to write {target}")

    # Written under a temporary name and renamed: the target is never half written.
    write_through_path(resolve(target), produce)
    return target


def write_step(shape: TopoDS_Shape, path: str | os.PathLike[str]) -> Path:
    """Write ``shape`` to a STEP (AP214) file and return its path.

    Parameters
    ----------
    shape
        Any shape (a solid, a compound of bodies, ...).
    path
        Destination; its directory must exist. An existing file is replaced atomically.

    Raises
    ------
    FileNotFoundError
        If the directory does not exist.
    OSError
        If the kernel cannot transfer or write the shape.
    """

    def write(temp: str) -> bool:
        writer = STEPControl_Writer()
        if writer.Transfer(shape, STEPControl_AsIs) != IFSelect_RetDone:
            return False
        written: bool = writer.Write(temp) == IFSelect_RetDone
        return written

    return _publish(path, write, "STEP")


def write_iges(shape: TopoDS_Shape, path: str | os.PathLike[str]) -> Path:
    """Write ``shape`` to an IGES file (B-rep mode, millimetres) and return its path.

    B-rep mode (IGES entities 186/514) keeps solids as solids, so a box read back is still
    one solid with 6 faces.

    Parameters
    ----------
    shape
        Any shape.
    path
        Destination; its directory must exist.

    Raises
    ------
    FileNotFoundError, OSError
        As for :func:`write_step`.
    """

    def write(temp: str) -> bool:
        writer = IGESControl_Writer("MM", 1)
        if not writer.AddShape(shape):
            return False
        writer.ComputeModel()
        return bool(writer.Write(temp))

    return _publish(path, write, "IGES")


def write_brep(shape: TopoDS_Shape, path: str | os.PathLike[str]) -> Path:
    """Write ``shape`` in OpenCascade's native BREP format and return its path.

    Parameters
    ----------
    shape
        Any shape.
    path
        Destination; its directory must exist.

    Raises
    ------
    FileNotFoundError, OSError
        As for :func:`write_step`.
    """
    return _publish(path, lambda temp: bool(BRepTools.Write_s(shape, temp)), "BREP")


_WRITERS: dict[str, Callable[[TopoDS_Shape, str | os.PathLike[str]], Path]] = {
    ".step": write_step,
    ".stp": write_step,
    ".iges": write_iges,
    ".igs": write_iges,
    ".brep": write_brep,
}


def write_shape(shape: TopoDS_Shape, path: str | os.PathLike[str]) -> Path:
    """Write ``shape`` in the format its extension names (.step/.stp/.iges/.igs/.brep).

    Parameters
    ----------
    shape
        Any shape.
    path
        Destination; its directory must exist.

    Raises
    ------
    ValueError
        If the extension is not one of the supported ones.
    """
    suffix = Path(path).suffix.lower()
    writer = _WRITERS.get(suffix)
    if writer is None:
        raise ValueError(f"unsupported extension {suffix!r}; use one of {sorted(_WRITERS)}")
    return writer(shape, path)


def write_sample_set(
    directory: str | os.PathLike[str], count: int = 12, seed: int = 0, suffix: str = ".step"
) -> list[Path]:
    """Write :func:`sample_parts` as one file per part into ``directory`` (created if needed).

    Parameters
    ----------
    directory
        Output directory.
    count, seed
        As for :func:`sample_parts`.
    suffix
        File extension, which selects the format.

    Returns
    -------
    list of Path
        The files written, in part order (``bracket_000.step``, ...).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write_shape(shape, out / f"{name}{suffix}") for name, shape in sample_parts(count, seed)
    ]
