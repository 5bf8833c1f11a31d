"""Where the read side of a dataset finds its files: local paths or object-store URLs.

The reader, explorer, loader, report and command line take the same ``storage_options``
for every path they are given, but a local path must not receive them (fsspec options mean
nothing there, and :func:`cadstore.fs.filesystem_for` refuses them). These helpers apply
the options to URLs only, and read the Parquet tables through pyarrow with the fsspec
file system of a URL, so every range request goes through the same client.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from cadstore.fs import FileSystem, FsspecFileSystem, filesystem_for, is_url

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from cadstore.format.sources import KeySource

__all__ = [
    "dataset_filesystem",
    "options_for",
    "parquet_filesystem",
    "prefix_source",
    "read_parquet_frame",
    "read_parquet_schema",
    "read_parquet_table",
    "sibling_path",
]


def options_for(
    path: str | os.PathLike[str], storage_options: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Return ``storage_options`` if ``path`` is a URL, else ``None``.

    Parameters
    ----------
    path
        A local path or a URL.
    storage_options
        fsspec options meant for the URLs among several paths.
    """
    return storage_options if is_url(os.fspath(path)) else None


def dataset_filesystem(
    path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> tuple[FileSystem, str]:
    """Return the file system serving ``path`` and the path as it sees it.

    Like :func:`cadstore.fs.filesystem_for`, but ``storage_options`` are ignored for a local
    path instead of refused.
    """
    return filesystem_for(path, options_for(path, storage_options))


def parquet_filesystem(
    path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> Any:
    """Return the fsspec file system pyarrow should read ``path`` with (``None`` if local)."""
    fs, _ = dataset_filesystem(path, storage_options)
    return fs.fs if isinstance(fs, FsspecFileSystem) else None


def read_parquet_table(
    path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> pa.Table:
    """Read a Parquet file (``.infoset``/``.attribset``) into a pyarrow table.

    Parameters
    ----------
    path
        Local path or URL.
    storage_options
        fsspec options for a URL.
    """
    import pyarrow.parquet as pq

    text = os.fspath(path)
    return pq.read_table(text, filesystem=parquet_filesystem(text, storage_options))


def read_parquet_frame(
    path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Read a Parquet file into a pandas frame (as ``pandas.read_parquet`` does locally)."""
    import pandas as pd

    text = os.fspath(path)
    return pd.read_parquet(text, filesystem=parquet_filesystem(text, storage_options))


def read_parquet_schema(
    path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> pa.Schema:
    """Read only the schema (and its metadata) of a Parquet file."""
    import pyarrow.parquet as pq

    text = os.fspath(path)
    return pq.read_schema(text, filesystem=parquet_filesystem(text, storage_options))


def sibling_path(
    dataset: str, suffix: str, storage_options: dict[str, Any] | None = None
) -> str | None:
    """Return ``<stem><suffix>`` next to ``dataset`` if that file exists, else ``None``.

    Parameters
    ----------
    dataset
        The ``.dataset`` path or URL.
    suffix
        ``".infoset"``, ``".attribset"``, ``".flow"``.
    storage_options
        fsspec options for a URL.
    """
    stem = dataset[: -len(".dataset")] if dataset.endswith(".dataset") else dataset
    candidate = stem.rstrip("/" + os.sep) + suffix
    fs, path = dataset_filesystem(candidate, storage_options)
    return candidate if fs.isfile(path) else None


def prefix_source(fs: FsspecFileSystem, root: str) -> KeySource:
    """Return a key source over the objects below ``root`` (a Zarr directory store on S3).

    Parameters
    ----------
    fs
        The object store.
    root
        The URL of the directory (the prefix).
    """
    # A dataset merged as a directory is read like an OptStorage directory store on S3.
    from cadstore.format.sources import PrefixSource

    return PrefixSource(fs, root)
