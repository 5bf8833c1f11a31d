"""``CADTools``: prepare a model's B-rep and export it (the specified ``HOOPSTools``).

The specified ``HOOPSTools`` adapts the B-rep a proprietary kernel read (``adapt_brep``),
exports models (STEP, OBJ, the viewer's StreamCache) and extracts hole features from the
feature trees of proprietary formats. On OpenCascade this module offers what an open kernel
can do:

* :meth:`CADTools.adapt_brep` with options meaningful on OpenCascade (:data:`BREP_OPTIONS`):
  healing, merging faces that lie on one surface, splitting closed faces at their seams,
  converting the geometry to NURBS. Every option defaults to off, so ``adapt_brep(model)``
  and ``adapt_brep(model, None)`` (how the specified tasks call it) leave the bodies as the
  loader read them, and a flow's items are the same as ``cadstore encode``'s;
* :meth:`CADTools.exportSTEP`, through the kernel's STEP writer, published atomically;
* :meth:`CADTools.exportStreamCache` and :meth:`CADTools.extract_holes` need the specified
  system's proprietary viewer and kernel: they raise
  :class:`~cadstore.errors.UnavailableFeatureError` saying so and what to use instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from OCP.BRepBuilderAPI import BRepBuilderAPI_NurbsConvert
from OCP.ShapeFix import ShapeFix_Shape
from OCP.ShapeUpgrade import ShapeUpgrade_ShapeDivideClosed, ShapeUpgrade_UnifySameDomain
from OCP.TopoDS import TopoDS_Shape

from cadstore.cad._kernel import quiet_kernel
from cadstore.cad.loader import CADModel
from cadstore.cad.samples import make_compound, write_step
from cadstore.errors import (
    CorruptStoreError,
    InvalidDataError,
    OutputExistsError,
    UnavailableFeatureError,
)

__all__ = ["BREP_OPTIONS", "CADTools"]

#: ``adapt_brep`` options, their defaults and what each does on OpenCascade.
BREP_OPTIONS: Final[Mapping[str, tuple[bool, str]]] = {
    "fix_shape": (False, "heal the B-rep (ShapeFix_Shape: gaps, orientations, tolerances)"),
    "unify_faces": (
        False,
        "merge faces and edges lying on one surface or curve (ShapeUpgrade_UnifySameDomain)",
    ),
    "split_closed_faces": (
        False,
        "split closed faces (full cylinders, spheres) at their seams "
        "(ShapeUpgrade_ShapeDivideClosed)",
    ),
    "convert_to_nurbs": (
        False,
        "convert every surface and curve to NURBS (BRepBuilderAPI_NurbsConvert)",
    ),
}


def _adapt(shape: TopoDS_Shape, options: Mapping[str, bool]) -> TopoDS_Shape:
    if options["fix_shape"]:
        fixer = ShapeFix_Shape(shape)
        fixer.Perform()
        shape = fixer.Shape()
    if options["unify_faces"]:
        unifier = ShapeUpgrade_UnifySameDomain(shape, True, True, False)
        unifier.Build()
        shape = unifier.Shape()
    if options["split_closed_faces"]:
        divider = ShapeUpgrade_ShapeDivideClosed(shape)
        divider.SetNbSplitPoints(1)
        divider.Perform()
        shape = divider.Result()
    if options["convert_to_nurbs"]:
        shape = BRepBuilderAPI_NurbsConvert(shape, True).Shape()
    return shape


class CADTools:
    """Adapt and export the models of :class:`~cadstore.cad.CADLoader` (``HOOPSTools``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from cadstore.cad import CADLoader
    >>> from cadstore.cad.samples import make_cylinder, write_step
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     model = CADLoader().create_from_file(write_step(make_cylinder(), f"{tmp}/c.step"))
    ...     CADTools().adapt_brep(model, {"split_closed_faces": True})
    >>> model.get_brep().num_faces  # the side face split at its seam
    4
    """

    def brep_options(self) -> dict[str, bool]:
        """Return the default ``adapt_brep`` options (see :data:`BREP_OPTIONS`), to edit."""
        return {name: default for name, (default, _) in BREP_OPTIONS.items()}

    def adapt_brep(self, model: CADModel, brep_options: Mapping[str, Any] | None = None) -> None:
        """Adapt every body of ``model`` in place, as ``brep_options`` say.

        Parameters
        ----------
        model
            A model from :meth:`~cadstore.cad.CADLoader.create_from_file`.
        brep_options
            Options of :data:`BREP_OPTIONS` (the others keep their defaults); ``None``
            keeps every default, which leaves the bodies unchanged.

        Raises
        ------
        InvalidDataError
            For an unknown option (the message lists the known ones) or a value that is
            not a bool; the model is left unchanged.
        cadstore.errors.CorruptStoreError
            If the kernel fails on a body; the model is left unchanged.
        """
        options = self.brep_options()
        for name, value in dict(brep_options or {}).items():
            if name not in BREP_OPTIONS:
                raise InvalidDataError(
                    f"unknown adapt_brep option {name!r}; known: {', '.join(BREP_OPTIONS)}"
                )
            if not isinstance(value, bool):
                raise InvalidDataError(
                    f"adapt_brep option {name!r} must be True or False, got {value!r}"
                )
            options[name] = value
        if not any(options.values()):
            return
        try:
            with quiet_kernel():
                bodies = [_adapt(body, options) for body in model.bodies]
        except Exception as exc:  # the kernel raises its own exception types
            raise CorruptStoreError(
                model.source_path, f"the kernel failed to adapt its B-rep ({exc})"
            ) from exc
        model.bodies = tuple(bodies)
        model.shape = make_compound(bodies)

    def exportSTEP(
        self, model: CADModel, filename: str | os.PathLike[str], overwrite: bool = False
    ) -> str:
        """Write the model's bodies to a STEP file; return its path.

        Parameters
        ----------
        model
            The model.
        filename
            The STEP file; its directory must exist. Written atomically.
        overwrite
            Replace an existing file; without it, an existing file is an
            :class:`~cadstore.errors.OutputExistsError` and is left as it was.
        """
        path = Path(os.fspath(filename))
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it")
        with quiet_kernel():
            return str(write_step(make_compound(model.bodies), path))

    def exportStreamCache(
        self,
        model: CADModel,
        filename: str,
        is_white_background: bool = True,
        overwrite: bool = False,
    ) -> None:
        """Unavailable: StreamCache (``.scs``) is the proprietary viewer's format."""
        raise UnavailableFeatureError(
            f"exportStreamCache({model.source_path.name!r}): StreamCache (.scs) files are the "
            "format of the specified system's proprietary web viewer, which cadstore does not "
            "have; use exportSTEP(model, path) to exchange the geometry"
        )

    def extract_holes(self, model: CADModel) -> dict[str, list[Any]]:
        """Unavailable: hole features come from the feature trees of proprietary formats."""
        raise UnavailableFeatureError(
            f"extract_holes({model.source_path.name!r}): hole features are read from the "
            "feature trees of proprietary CAD formats (CATIA, SolidWorks, NX, Creo) by the "
            "specified system's kernel; the STEP, IGES and BREP files cadstore reads carry "
            "no feature tree"
        )

    def __repr__(self) -> str:
        return "<CADTools (OpenCascade)>"
