"""Finding the CAD files a flow takes: ``CADFileRetriever`` over a ``LocalStorageProvider``.

The extract task of a flow (:mod:`cadstore.flowmanager`) gathers its inputs with these two
classes, as the specified system's users write it::

    provider = LocalStorageProvider(directory_path="parts/")
    retriever = CADFileRetriever(provider, formats=[".step", ".stp"])
    files = retriever.get_file_list()

The provider lists the files below a directory (recursively, in sorted order, so a flow's
item order is reproducible); the retriever keeps those of the wanted formats whose names
match a filter. Both use the standard library only: the storage package stays importable
without the CAD kernel.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from cadstore.vocabulary import CAD_EXTENSIONS

__all__ = ["CAD_FORMATS", "CADFileRetriever", "LocalStorageProvider"]

#: The formats a retriever takes when none are given: those cadstore's loader reads.
CAD_FORMATS = tuple(CAD_EXTENSIONS)


class LocalStorageProvider:
    """The files below one local directory, for a :class:`CADFileRetriever`.

    Parameters
    ----------
    directory_path
        The directory to list (searched recursively).

    Raises
    ------
    FileNotFoundError
        If ``directory_path`` does not exist; ``NotADirectoryError`` if it is a file.
    """

    def __init__(self, directory_path: str | os.PathLike[str]) -> None:
        path = os.path.abspath(os.fspath(directory_path))
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "No such directory of CAD files", path)
        if not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory of CAD files", path)
        self.directory_path = path

    def list_files(self) -> Iterator[str]:
        """Yield the absolute path of every regular file below the directory, sorted.

        Symbolic links to directories are not followed, so a link cannot make the listing
        leave the directory or loop.
        """
        for root, dirs, names in os.walk(self.directory_path):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(root, name)
                if os.path.isfile(path):
                    yield path

    def __repr__(self) -> str:
        return f"LocalStorageProvider(directory_path={self.directory_path!r})"


def _normal_formats(formats: Iterable[str] | None) -> tuple[str, ...]:
    if formats is None:
        return CAD_FORMATS
    if isinstance(formats, str):
        formats = [formats]
    found = []
    for fmt in formats:
        if not isinstance(fmt, str) or not fmt.strip("."):
            raise ValueError(f"formats must be file extensions such as '.step', got {fmt!r}")
        found.append("." + fmt.lower().lstrip(".*"))
    return tuple(found)


class CADFileRetriever:
    """The CAD files of a storage provider, filtered by format and by name.

    Parameters
    ----------
    storage_provider
        Where the files are (:class:`LocalStorageProvider`).
    formats
        Extensions to keep (``[".step", ".stp"]``; case and the leading dot do not
        matter); by default every format cadstore reads.
    filter_pattern
        Keep only the files whose name (or path relative to the provider's directory)
        matches: a shell pattern such as ``"bracket_*"`` or, with ``use_regex=True``, a
        regular expression searched in the name.
    use_regex
        Read ``filter_pattern`` as a regular expression.

    Raises
    ------
    ValueError
        If a format is not an extension or the regular expression does not compile.
    """

    def __init__(
        self,
        storage_provider: LocalStorageProvider,
        formats: Iterable[str] | None = None,
        filter_pattern: str | None = None,
        use_regex: bool = False,
    ) -> None:
        self.storage_provider = storage_provider
        self.formats = _normal_formats(formats)
        self.filter_pattern = filter_pattern
        self.use_regex = use_regex
        self._regex: re.Pattern[str] | None = None
        if filter_pattern is not None and use_regex:
            try:
                self._regex = re.compile(filter_pattern)
            except re.error as exc:
                raise ValueError(
                    f"filter_pattern {filter_pattern!r} is not a regex: {exc}"
                ) from None

    def _matches(self, path: str) -> bool:
        if self.filter_pattern is None:
            return True
        name = os.path.basename(path)
        relative = os.path.relpath(path, self.storage_provider.directory_path)
        if self._regex is not None:
            return bool(self._regex.search(name) or self._regex.search(relative))
        return fnmatch.fnmatch(name, self.filter_pattern) or fnmatch.fnmatch(
            relative, self.filter_pattern
        )

    def get_file_list(self) -> list[str]:
        """Return the matching files, absolute paths in sorted order.

        Returns
        -------
        list of str
            Possibly empty (a directory without CAD files is not an error here; the flow
            reports that it found nothing to transform).
        """
        return [
            path
            for path in self.storage_provider.list_files()
            if Path(path).suffix.lower() in self.formats and self._matches(path)
        ]

    def __repr__(self) -> str:
        return (
            f"CADFileRetriever({self.storage_provider!r}, formats={list(self.formats)!r}, "
            f"filter_pattern={self.filter_pattern!r}, use_regex={self.use_regex!r})"
        )
