"""``CADLoader`` and ``CADModel``: read STEP, IGES and BREP files into bodies.

The open counterpart of the specified ``HOOPSLoader`` / ``HOOPSModel``, on OpenCascade::

    from cadstore.cad import CADLoader

    model = CADLoader().create_from_file("part.step")
    brep = model.get_brep()          # body 0, a cadstore.cad.BrepAccess

**Bodies.** The bodies of a model are its solids that have at least one face, in the order
the kernel meets them. A file with no such solid still gives bodies when it holds surfaces:
one body per shell, plus one body gathering the faces that belong to no shell. A file with
neither (only wires, edges or points) is refused.

**Units.** Coordinates are in the kernel's working unit after reading: STEP and IGES files are
converted to millimetres (the OpenCascade default), BREP files have no unit and are read as
written. Every length the encoder reports is in that unit.

**Errors.** A missing path raises ``FileNotFoundError`` naming it; anything that is not a
readable CAD file with at least one body (an empty file, text with a CAD extension, a
truncated or corrupt file, an unsupported extension, a file with no solid, shell or face)
raises :class:`cadstore.errors.CorruptStoreError` with the path and the reason. The kernel is
never allowed to take the process down with a Python exception it raises; every kernel
exception during reading is turned into a ``CorruptStoreError``.
"""

from __future__ import annotations

import errno
import operator
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
from OCP.BRep import BRep_Builder
from OCP.BRepTools import BRepTools
from OCP.IFSelect import IFSelect_RetDone
from OCP.IGESControl import IGESControl_Reader
from OCP.STEPControl import STEPControl_Reader
from OCP.TopAbs import TopAbs_FACE, TopAbs_SHELL, TopAbs_SOLID
from OCP.TopoDS import TopoDS_Shape

from cadstore.cad._kernel import indexed_map, quiet_kernel
from cadstore.cad.brep import BrepAccess
from cadstore.cad.samples import make_compound
from cadstore.errors import CorruptStoreError, InvalidDataError, os_problem
from cadstore.io.filesystems import LocalFileSystem
from cadstore.vocabulary import CAD_EXTENSIONS

__all__ = ["SUPPORTED_EXTENSIONS", "CADLoader", "CADModel"]

#: File extensions the loader reads (case-insensitive) and the format each one selects.
SUPPORTED_EXTENSIONS: Final[Mapping[str, str]] = CAD_EXTENSIONS

_FORMAT_NAMES: Final[dict[str, str]] = {"step": "STEP", "iges": "IGES", "brep": "BREP"}

#: The options :meth:`CADLoader.set_general_options` accepts.
_GENERAL_OPTIONS: Final = ("read_feature", "read_solid")
# Enough of the head and tail of a file to recognise its format and its end marker.
_SNIFF_BYTES: Final = 4096


class CADModel:
    """The bodies read from one CAD file.

    Made by :meth:`CADLoader.create_from_file`; see the module docstring for what a body is.

    Parameters
    ----------
    shape
        Everything the file held, as one shape.
    bodies
        The bodies, in order.
    source_path
        The file the model was read from.
    file_format
        ``"step"``, ``"iges"`` or ``"brep"``.

    Attributes
    ----------
    shape
        Everything the file held, as one ``TopoDS_Shape``.
    bodies
        The bodies (``TopoDS_Shape`` solids, shells or face compounds), as a tuple.
    source_path
        The file the model was read from, as a ``Path``.
    format
        ``"step"``, ``"iges"`` or ``"brep"``.
    """

    def __init__(
        self,
        shape: TopoDS_Shape,
        bodies: list[TopoDS_Shape] | tuple[TopoDS_Shape, ...],
        source_path: str | os.PathLike[str],
        file_format: str,
    ) -> None:
        self.shape = shape
        self.bodies = tuple(bodies)
        self.source_path = Path(source_path)
        self.format = file_format

    @property
    def num_bodies(self) -> int:
        """Number of bodies (at least 1 for a model made by the loader)."""
        return len(self.bodies)

    def get_body_count(self) -> int:
        """Return the number of bodies, as the specified ``HOOPSModel.get_body_count()``."""
        return self.num_bodies

    def get_filesource(self) -> str:
        """Return the path of the file the model was read from (specified name)."""
        return str(self.source_path)

    def get_body(self, body_index: int = 0) -> TopoDS_Shape:
        """Return body ``body_index`` as a kernel shape (see :meth:`get_brep` for checks)."""
        return self.get_brep(body_index).shape

    def get_brep(self, body_index: int = 0) -> BrepAccess:
        """Return body ``body_index`` wrapped for the encoder.

        Parameters
        ----------
        body_index
            ``0 <= body_index < num_bodies``.

        Returns
        -------
        BrepAccess
            A new wrapper with the body's face, edge and co-edge numbering.

        Raises
        ------
        IndexError
            If the index is out of range; the message gives the valid range.
        TypeError
            If the index is not an int.
        """
        if isinstance(body_index, (bool, np.bool_)):
            raise TypeError("body_index must be an int, got bool")
        try:
            body_index = operator.index(body_index)  # also numpy integers
        except TypeError:
            raise TypeError(f"body_index must be an int, got {type(body_index).__name__}") from None
        if not 0 <= body_index < self.num_bodies:
            valid = "0" if self.num_bodies == 1 else f"0..{self.num_bodies - 1}"
            raise IndexError(
                f"body index {body_index} is out of range for {self.source_path.name}, "
                f"which has {self.num_bodies} bod{'y' if self.num_bodies == 1 else 'ies'} "
                f"(valid: {valid})"
            )
        return BrepAccess(self.bodies[body_index])

    def __repr__(self) -> str:
        return f"<CADModel {self.source_path.name!r} {self.format} bodies={self.num_bodies}>"


class CADLoader:
    """Read STEP (``.step``/``.stp``), IGES (``.iges``/``.igs``) and BREP (``.brep``) files.

    The open counterpart of the specified ``HOOPSLoader``. A loader holds no file handles and
    may be reused for any number of files; :meth:`get_model` returns the last model read.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from cadstore.cad.samples import make_box, write_step
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = write_step(make_box(), pathlib.Path(tmp) / "box.step")
    ...     model = CADLoader().create_from_file(path)
    >>> model.num_bodies, model.get_brep().num_faces
    (1, 6)
    """

    def __init__(self) -> None:
        self._model: CADModel | None = None
        self._options: dict[str, bool] = {}

    def get_general_options(self) -> dict[str, bool]:
        """Return a copy of the loading options set so far (``{}`` until some are set).

        The specified loader shows ``{}`` by default and users set ``read_feature`` and
        ``read_solid``; see :meth:`set_general_options` for what they do here.
        """
        return dict(self._options)

    def set_general_options(self, general_options: Mapping[str, Any]) -> None:
        """Set the loading options used by the next :meth:`create_from_file` calls.

        Parameters
        ----------
        general_options
            ``read_solid`` (bool, default ``True``): take the file's solids as its bodies;
            ``False`` takes its shells and loose faces instead (a surface model, one body
            per shell). ``read_feature`` (bool): the specified loader then also reads the
            feature tree of proprietary formats; STEP, IGES and BREP files carry none the
            kernel reads, so the option is accepted and changes nothing.

        Raises
        ------
        InvalidDataError
            For an unknown option (the message lists the known ones) or a value that is
            not a bool; the options set before are kept.
        """
        checked: dict[str, bool] = {}
        for name, value in dict(general_options).items():
            if name not in _GENERAL_OPTIONS:
                raise InvalidDataError(
                    f"unknown loading option {name!r}; known: {', '.join(_GENERAL_OPTIONS)}"
                )
            if not isinstance(value, (bool, np.bool_)):
                raise InvalidDataError(
                    f"loading option {name!r} must be True or False, got {value!r}"
                )
            checked[name] = bool(value)
        self._options = checked

    @staticmethod
    def supported_extensions() -> list[str]:
        """Return the file extensions the loader reads."""
        return list(SUPPORTED_EXTENSIONS)

    def get_model(self) -> CADModel:
        """Return the model read by the last successful :meth:`create_from_file`.

        Raises
        ------
        RuntimeError
            If no file has been read yet.
        """
        if self._model is None:
            raise RuntimeError("no CAD file has been loaded yet; call create_from_file(path)")
        return self._model

    def create_from_file(self, path: str | os.PathLike[str]) -> CADModel:
        """Read ``path`` and return its model.

        Parameters
        ----------
        path
            A STEP, IGES or BREP file. The extension selects the reader; a file with another
            extension is recognised by its content when possible.

        Returns
        -------
        CADModel
            The model, with at least one body.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        IsADirectoryError
            If ``path`` is a directory.
        CorruptStoreError
            If the file is empty, not a CAD file of a supported format, truncated, corrupt,
            rejected by the kernel, or has no solid, shell or face, or is not a regular file
            (a pipe, a device). The message says which.
        """
        file_path = Path(os.fspath(path))
        if not file_path.exists():
            raise FileNotFoundError(
                errno.ENOENT, "No such file or directory (CAD file)", str(file_path)
            )
        if file_path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory, not a CAD file", str(file_path))
        try:
            # Opened as cadstore opens files: a pipe or a device is refused, never read
            # (a pipe would block the open until a writer came).
            with LocalFileSystem().open_read(str(file_path)) as handle:
                size = os.fstat(handle.fileno()).st_size
                head = handle.read(_SNIFF_BYTES)
                handle.seek(max(0, size - _SNIFF_BYTES))
                tail = handle.read(_SNIFF_BYTES)
        except CorruptStoreError:
            raise
        except OSError as exc:
            raise CorruptStoreError(file_path, f"cannot be read: {os_problem(exc)}") from exc
        if size == 0:
            raise CorruptStoreError(file_path, "the file is empty (0 bytes)")
        try:
            str(file_path).encode("utf-8")
        except UnicodeEncodeError:
            raise CorruptStoreError(
                file_path,
                "its name is not UTF-8 text, which the kernel's readers cannot open; rename it",
            ) from None
        file_format = _choose_format(file_path, head)
        _check_content(file_path, file_format, head)
        shape = _read_shape(file_path, file_format, head, tail)
        bodies = _find_bodies(shape, solids=self._options.get("read_solid", True))
        if not bodies:
            raise CorruptStoreError(
                file_path,
                f"the {_FORMAT_NAMES[file_format]} file holds no solid, shell or face "
                "(only wires, edges or points), so there is no body to encode",
            )
        model = CADModel(shape, bodies, file_path, file_format)
        self._model = model
        return model

    def __repr__(self) -> str:
        return "<CADLoader step/iges/brep (OpenCascade)>"


# ---------------------------------------------------------------------------- formats
def _sniff(head: bytes) -> str | None:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"ISO-10303-21"):
        return "step"
    if b"CASCADE Topology V" in head[:512]:
        return "brep"
    # Not ``text``: an IGES start record usually begins with blanks that count as columns.
    first = head.removeprefix(b"\xef\xbb\xbf").split(b"\n", 1)[0].rstrip(b"\r")
    # IGES: 80-column records with the section letter in column 73; the file opens with the
    # Start section ('S'), the Global section when Start is empty ('G'), or is a compressed
    # ('C') or binary ('B') IGES file.
    if len(first) >= 73 and first[72:73] in (b"S", b"G", b"C", b"B"):
        return "iges"
    return None


def _choose_format(path: Path, head: bytes) -> str:
    by_suffix = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
    if by_suffix is not None:
        return by_suffix
    sniffed = _sniff(head)
    if sniffed is None:
        raise CorruptStoreError(
            path,
            f"unsupported file type {path.suffix or '(no extension)'!r}; expected a STEP "
            "(.step, .stp), IGES (.iges, .igs) or BREP (.brep) file",
        )
    return sniffed


def _check_content(path: Path, file_format: str, head: bytes) -> None:
    if _sniff(head) == file_format:
        return
    name = _FORMAT_NAMES[file_format]
    expected = {
        "step": "the ISO-10303-21 header",
        "iges": "an IGES start record (80-column lines, 'S' in column 73)",
        "brep": "the 'CASCADE Topology V' header",
    }[file_format]
    article = "an" if file_format == "iges" else "a"
    raise CorruptStoreError(
        path,
        f"not {article} {name} file: it does not start with {expected}{_describe_head(head)}",
    )


def _describe_head(head: bytes) -> str:
    if b"\x00" in head[:1024]:
        return " (it looks like binary data)"
    try:
        first = head.decode("utf-8").strip().splitlines()[0][:40]
    except (UnicodeDecodeError, IndexError):
        return ""
    return f" (it starts with {first!r})"


def _read_shape(path: Path, file_format: str, head: bytes, tail: bytes) -> TopoDS_Shape:
    name = _FORMAT_NAMES[file_format]
    try:
        with quiet_kernel():
            shape, problem = _KERNEL_READERS[file_format](str(path))
    except Exception as exc:  # the kernel raises its own exception types (Standard_Failure...)
        problem = f"the kernel's {name} reader failed ({type(exc).__name__}: {exc})"
        shape = None
    if shape is None or shape.IsNull():
        hint = _truncation_hint(file_format, tail)
        if head.startswith(_BOM):
            hint += (
                "; the file starts with a UTF-8 byte-order mark, which the kernel's readers "
                "do not accept: remove its first 3 bytes"
            )
        raise CorruptStoreError(path, (problem or "no shape could be read from it") + hint)
    return shape


#: The UTF-8 byte-order mark some editors put before a text file.
_BOM: Final = b"\xef\xbb\xbf"


def _truncation_hint(file_format: str, tail: bytes) -> str:
    stripped = tail.rstrip()
    if file_format == "step" and b"END-ISO-10303-21" not in stripped[-64:]:
        return "; the file looks truncated (no END-ISO-10303-21; trailer)"
    if file_format == "iges":
        last = stripped.rsplit(b"\n", 1)[-1]
        if not (len(last) >= 73 and last[72:73] == b"T"):
            return "; the file looks truncated (no IGES terminate record)"
    return ""


def _read_step(path: str) -> tuple[TopoDS_Shape | None, str | None]:
    reader = STEPControl_Reader()
    if reader.ReadFile(path) != IFSelect_RetDone:
        return None, "the kernel's STEP parser rejected it (syntax error or corrupt data)"
    if reader.TransferRoots() == 0:
        return None, "the STEP file has no transferable shape (no geometry in its data)"
    return reader.OneShape(), None


def _read_iges(path: str) -> tuple[TopoDS_Shape | None, str | None]:
    reader = IGESControl_Reader()
    if reader.ReadFile(path) != IFSelect_RetDone:
        return None, "the kernel's IGES parser rejected it (corrupt or unsupported data)"
    if reader.TransferRoots() == 0:
        return None, "the IGES file has no transferable shape (no geometry entities)"
    return reader.OneShape(), None


def _read_brep(path: str) -> tuple[TopoDS_Shape | None, str | None]:
    shape = TopoDS_Shape()
    if not BRepTools.Read_s(shape, path, BRep_Builder()):
        return None, "the kernel's BREP reader rejected it (corrupt or another version)"
    return shape, None


_KERNEL_READERS = {"step": _read_step, "iges": _read_iges, "brep": _read_brep}


def _find_bodies(shape: TopoDS_Shape, *, solids: bool = True) -> list[TopoDS_Shape]:
    bodies: list[TopoDS_Shape] = []
    if solids:
        found = indexed_map(shape, TopAbs_SOLID)
        bodies = [
            found.FindKey(i)
            for i in range(1, found.Extent() + 1)
            if indexed_map(found.FindKey(i), TopAbs_FACE).Extent() > 0
        ]
    if bodies:
        return bodies
    # A surface model: one body per shell, plus the faces that belong to no shell.
    shells = indexed_map(shape, TopAbs_SHELL)
    for i in range(1, shells.Extent() + 1):
        if indexed_map(shells.FindKey(i), TopAbs_FACE).Extent() > 0:
            bodies.append(shells.FindKey(i))
    covered = indexed_map(make_compound(bodies), TopAbs_FACE)
    all_faces = indexed_map(shape, TopAbs_FACE)
    loose = [
        all_faces.FindKey(i)
        for i in range(1, all_faces.Extent() + 1)
        if not covered.Contains(all_faces.FindKey(i))
    ]
    if loose:
        bodies.append(make_compound(loose))
    return bodies
