"""Where a path leads: a :class:`Location`, resolved once where a user hands cadstore a path.

A user gives a path (``"flows/parts.dataset"``) or a URL (``"s3://bucket/flows/parts.dataset"``)
and, for URLs, fsspec ``storage_options`` (credentials, endpoint). :func:`resolve` turns the
pair into a :class:`Location`, once, at the edge of the public API: the path as its file
system sees it, the :class:`~cadstore.io.filesystems.FileSystem` that serves it, and the
options it was opened with. Everything inside cadstore takes locations and never asks
again whether a path is a URL; derived paths (the ``.infoset`` beside a ``.dataset``, the
members below a store) are derived from the location, on the same file system.

A location pickles as its path and options, and is resolved again where it is unpickled,
so it travels to DataLoader and Dask workers and finds the same store there.

Options given for several paths at once (a merge's inputs and output) apply to the URLs
among them: ``resolve(path, options, shared=True)``. Options given for one local path are a
mistake (the user probably meant a URL) and raise ``ValueError``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from cadstore.io.filesystems import FileSystem, filesystem_for, is_url

__all__ = ["Location", "is_url", "resolve", "resolve_relative"]


@dataclass(frozen=True)
class Location:
    """A path or URL with the file system that serves it.

    Attributes
    ----------
    path
        The path as :attr:`fs` sees it: a local path, or a full URL (``s3://bucket/key``).
    fs
        The file system.
    storage_options
        The fsspec options it was resolved with (``None`` for local paths).
    """

    path: str
    fs: FileSystem = field(compare=False, repr=False)
    storage_options: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return self.path

    def __fspath__(self) -> str:
        # Usable wherever a path is taken; a URL comes out as the URL.
        return self.path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Resolved again where it lands: a worker gets its own client for the same store.
        return (_unpickle, (self.path, self.storage_options))

    # ------------------------------------------------------------------ derived locations
    @property
    def remote(self) -> bool:
        """Whether this is a URL of a remote store (uploads, requests) rather than a path."""
        return self.fs.remote

    @property
    def name(self) -> str:
        """The last component (``parts.dataset``)."""
        return self.fs.basename(self.path)

    @property
    def parent(self) -> Location:
        """The directory (or prefix) holding this location."""
        return self.with_path(self.fs.dirname(self.path) or ".")

    def child(self, *parts: str) -> Location:
        """The location of ``parts`` below this one (members of a store, files of a folder)."""
        return self.with_path(self.fs.join(self.path, *parts))

    def with_path(self, path: str) -> Location:
        """Another path on the same file system, with the same options."""
        # Not dataclasses.replace, which inspects the fields on every call: an item
        # writer derives a handful of locations per item.
        return type(self)(path, self.fs, self.storage_options)

    def with_suffix(self, suffix: str, *, replacing: str = "") -> Location:
        """This path with ``replacing`` cut from its end (when there) and ``suffix`` added.

        ``dataset.with_suffix(".infoset", replacing=".dataset")`` is the table beside a
        dataset; ``store.with_suffix(".data")`` the published file of an item store.
        """
        stem = self.path.rstrip("/") or self.path
        if replacing and stem.endswith(replacing):
            stem = stem[: -len(replacing)]
        return self.with_path(stem + suffix)

    # ------------------------------------------------------------------ queries
    def exists(self) -> bool:
        """Whether anything is there."""
        return self.fs.exists(self.path)

    def isfile(self) -> bool:
        """Whether a regular file (an object) is there."""
        return self.fs.isfile(self.path)

    def isdir(self) -> bool:
        """Whether a directory (a prefix holding objects) is there."""
        return self.fs.isdir(self.path)

    def size(self) -> int:
        """The file's size in bytes."""
        return self.fs.size(self.path)

    def listdir(self) -> list[str]:
        """The names in the directory."""
        return self.fs.listdir(self.path)

    def read_bytes(self) -> bytes:
        """The file's contents."""
        return self.fs.read_bytes(self.path)

    def open_read(self) -> IO[bytes]:
        """The file, open for random-access binary reading."""
        return self.fs.open_read(self.path)

    def makedirs(self) -> None:
        """Create the directory and its parents (on an object store: check the bucket)."""
        self.fs.makedirs(self.path)

    def remove(self) -> None:
        """Delete the file; no error if it is already gone."""
        self.fs.remove(self.path)

    def rmtree(self) -> None:
        """Delete the directory and everything below it; no error if it is gone."""
        self.fs.rmtree(self.path)


def resolve(
    path: str | os.PathLike[str] | Location,
    storage_options: Mapping[str, Any] | None = None,
    *,
    shared: bool = False,
) -> Location:
    """Return the :class:`Location` of a path or URL a user gave.

    Parameters
    ----------
    path
        A local path, a URL (``s3://bucket/key``; ``file://`` is a local path), or a
        location, which is returned as it is.
    storage_options
        fsspec options for a URL: for S3 (s3fs) for example ``{"key": ..., "secret": ...,
        "client_kwargs": {"endpoint_url": ...}}``. Without them, credentials and endpoint
        come from fsspec's configuration and the environment.
    shared
        The options were given for several paths (a merge's inputs and outputs): they
        apply to URLs and are ignored for local paths.

    Raises
    ------
    ImportError
        For a URL when fsspec or the protocol's driver (s3fs, ...) is not installed.
    ValueError
        For ``storage_options`` with a local path, unless ``shared``.
    """
    if isinstance(path, Location):
        return path
    text = os.fspath(path)
    options = storage_options if (is_url(text) or not shared) else None
    fs, located = filesystem_for(text, dict(options) if options else None)
    return Location(located, fs, dict(options) if options and fs.remote else None)


def resolve_relative(document: Location, written: str) -> Location:
    """Return the location a path written inside the file at ``document`` refers to.

    A relative path is relative to the file's folder (its prefix, on an object store); an
    absolute path or a URL is taken as it is, with the options ``document`` was opened
    with. Manifests store their files this way.
    """
    if is_url(written) or os.path.isabs(written):
        return resolve(written, document.storage_options, shared=True)
    if document.remote:
        return document.parent.child(written)
    folder = os.path.dirname(os.path.abspath(document.path))
    return document.with_path(os.path.normpath(os.path.join(folder, written)))


def _unpickle(path: str, storage_options: Mapping[str, Any] | None) -> Location:
    return resolve(path, storage_options)
