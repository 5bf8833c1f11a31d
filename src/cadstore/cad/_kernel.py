"""The OpenCascade kernel (OCP bindings), imported once, with the shims the CAD modules need.

Every other module of :mod:`cadstore.cad` imports the kernel through this one, so a missing
kernel gives one clear message (install the ``cad`` extra) and the differences between OCP
releases live in one place:

* OCP 8 replaced ``TopTools_IndexedMapOfShape`` by ``OCP.collections.IndexedMap_...`` and
  ``TopoDS.Face_s`` by ``TopoDS.Face``; 7.8-7.9 have the old names.
* ``BRepTopAdaptor_FClass2d`` is not bound in OCP 8; ``IntTools_FClass2d`` (the same 2D face
  classifier) is bound in both.

The kernel reports through a process-wide messenger that prints to standard output; the
readers and writers here run inside :func:`quiet_kernel`, which detaches its printers for the
duration of the call, so batch runs over thousands of files are not flooded with transfer
statistics and parser messages.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    import OCP
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cadstore.cad needs the OpenCascade kernel; install it with "
        "pip install 'cadstore[cad]' (the cadquery-ocp-novtk wheel)"
    ) from exc

from OCP.Message import Message
from OCP.TopAbs import TopAbs_ShapeEnum
from OCP.TopExp import TopExp, TopExp_Explorer
from OCP.TopoDS import TopoDS, TopoDS_Edge, TopoDS_Face, TopoDS_Shape

try:  # OCP 7.8 / 7.9
    from OCP.TopTools import TopTools_IndexedMapOfShape as _IndexedMapOfShape
except ImportError:  # OCP 8
    from OCP.collections import (
        IndexedMap_TopoDS_Shape_TopTools_ShapeMapHasher as _IndexedMapOfShape,
    )

from OCP.IntTools import IntTools_FClass2d

__all__ = [
    "OCP_VERSION",
    "FaceClassifier",
    "as_edge",
    "as_face",
    "indexed_map",
    "iter_subshapes",
    "quiet_kernel",
]

#: Version of the installed OCP bindings, e.g. ``"8.0.1.1"``.
OCP_VERSION: str = str(getattr(OCP, "__version__", "unknown"))

#: Classifies a (u, v) point against a face's trimming loops (``Perform`` -> ``TopAbs_State``).
FaceClassifier = IntTools_FClass2d


def _downcast(name: str) -> Any:
    # OCP 7.x binds static methods with an ``_s`` suffix, OCP 8 without.
    return getattr(TopoDS, f"{name}_s", None) or getattr(TopoDS, name)


_as_face = _downcast("Face")
_as_edge = _downcast("Edge")


def as_face(shape: TopoDS_Shape) -> TopoDS_Face:
    """Return ``shape`` as a ``TopoDS_Face`` (it must be a face)."""
    return _as_face(shape)


def as_edge(shape: TopoDS_Shape) -> TopoDS_Edge:
    """Return ``shape`` as a ``TopoDS_Edge`` (it must be an edge)."""
    return _as_edge(shape)


def indexed_map(shape: TopoDS_Shape, kind: TopAbs_ShapeEnum) -> Any:
    """Return the kernel's indexed map of the sub-shapes of ``shape`` of type ``kind``.

    The map holds each sub-shape once (shared sub-shapes are the same entry), in the order a
    depth-first exploration first meets them, with 1-based indices. That order depends only
    on the shape's data structure, so it is the same every time a file is read.
    """
    result = _IndexedMapOfShape()
    TopExp.MapShapes_s(shape, kind, result)
    return result


def iter_subshapes(shape: TopoDS_Shape, kind: TopAbs_ShapeEnum) -> Iterator[TopoDS_Shape]:
    """Yield the sub-shapes of ``shape`` of type ``kind`` with their composed orientation.

    Unlike :func:`indexed_map`, a sub-shape used twice (a seam edge of a face) is yielded twice,
    once per orientation.
    """
    explorer = TopExp_Explorer(shape, kind)
    while explorer.More():
        yield explorer.Current()
        explorer.Next()


_quiet_lock = threading.Lock()
_quiet_depth = 0
_detached: list[Any] = []


@contextmanager
def quiet_kernel() -> Iterator[None]:
    """Detach the kernel messenger's printers for the duration of the block.

    Re-entrant and thread-safe: the printers are detached by the outermost block and put back
    when the last block exits. Messages the kernel writes straight to ``std::cout`` (a few
    BREP reader warnings) are not routed through the messenger and still appear.
    """
    global _quiet_depth
    messenger = Message.DefaultMessenger_s()
    with _quiet_lock:
        if _quiet_depth == 0:
            _detached[:] = list(messenger.Printers())
            for printer in _detached:
                messenger.RemovePrinter(printer)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                for printer in _detached:
                    messenger.AddPrinter(printer)
                _detached.clear()
