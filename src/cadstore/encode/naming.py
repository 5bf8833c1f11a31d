"""Which CAD files an encode takes, and what its items are called.

Every body of every file is one item named ``<hash>_<body index>``, where ``<hash>`` is
the 32-hex MD5 digest of the file's absolute path without its extension, encoded as UTF-8
(:func:`item_base_name`), as the specified ``generate_unique_id_from_path(path_without_
suffix)`` names items. The name depends only on where the file is, so a run that is
repeated or resumed finds its items again; moving a file gives it new names, and two files
that differ only by extension (``a.step`` and ``a.iges``) would share names, so the second
is refused as a duplicate.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from glob import glob
from pathlib import Path

from cadstore.cad.loader import SUPPORTED_EXTENSIONS
from cadstore.io.filesystems import local_path
from cadstore.storage.helpers import generate_unique_id_from_path

__all__ = ["find_cad_files", "item_base_name", "item_name"]


def item_base_name(path: str | os.PathLike[str]) -> str:
    """Return the 32-hex stem shared by the items of one CAD file.

    The MD5 hex digest of ``os.path.abspath(path)`` without its extension, encoded as UTF-8:
    the same path always gives the same stem, on any machine.

    Parameters
    ----------
    path
        The CAD file (it need not exist).

    Returns
    -------
    str
        32 lowercase hex digits.

    Examples
    --------
    >>> item_base_name("/parts/bracket.step") == item_base_name("/parts/bracket.iges")
    True
    >>> len(item_base_name("/parts/bracket.step"))
    32
    """
    # The specified users name side files with the same function and the same argument.
    return generate_unique_id_from_path(os.path.splitext(os.path.abspath(os.fspath(path)))[0])


def item_name(path: str | os.PathLike[str], body_index: int) -> str:
    """Return the item name of body ``body_index`` of ``path``: ``<item_base_name>_<index>``.

    Parameters
    ----------
    path
        The CAD file.
    body_index
        The body, ``0 <= body_index < model.num_bodies``.

    Returns
    -------
    str
        The name; the item is ``<output_dir>/encoded/<name>.zarr.data``.
    """
    return f"{item_base_name(path)}_{int(body_index)}"


def _has_magic(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def _is_cad(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in SUPPORTED_EXTENSIONS


def _walk(directory: str, exclude: str | None) -> Iterator[str]:
    for root, dirs, names in os.walk(directory):
        # Sorted, so the input order (and each file's item_index) is reproducible.
        dirs[:] = sorted(d for d in dirs if os.path.join(root, d) != exclude)
        yield from (os.path.join(root, n) for n in sorted(names) if _is_cad(n))


def find_cad_files(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    exclude: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Return the CAD files ``inputs`` designates, as absolute paths, each once.

    Parameters
    ----------
    inputs
        A directory (searched recursively for ``.step``, ``.stp``, ``.iges``, ``.igs`` and
        ``.brep`` files, in any case), a glob pattern (``"parts/**/*.step"``; every matching
        file is taken, whatever its extension), a file, or a sequence of these.
    exclude
        A directory not to search (the output directory, when it lies inside an input).

    Returns
    -------
    list of Path
        In the order given; directory and glob matches sorted.

    Raises
    ------
    FileNotFoundError
        If an input does not exist or a pattern matches nothing.
    ValueError
        If the inputs hold no file at all, or an input is a URL (CAD files are read from
        local paths).
    """
    entries = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    skip = os.path.abspath(os.fspath(exclude)) if exclude is not None else None
    found: dict[str, None] = {}
    for entry in entries:
        text = os.fspath(entry)
        local_path(
            text,
            "a CAD file to encode",
            "copy the files to a local folder (or one the Dask workers share) first",
        )
        if os.path.isdir(text):
            found.update(dict.fromkeys(_walk(os.path.abspath(text), skip)))
        elif os.path.exists(text):
            found[os.path.abspath(text)] = None
        elif _has_magic(text):
            matches = sorted(glob(text, recursive=True))
            files = [os.path.abspath(m) for m in matches if os.path.isfile(m)]
            if not files:
                raise FileNotFoundError(errno.ENOENT, "No file matches the pattern", text)
            found.update(dict.fromkeys(files))
        else:
            raise FileNotFoundError(errno.ENOENT, "No such CAD file or directory", text)
    if not found:
        names = ", ".join(sorted(SUPPORTED_EXTENSIONS))
        raise ValueError(f"no CAD files ({names}) found in {[os.fspath(e) for e in entries]}")
    return [Path(p) for p in found]
