"""The Parquet tables beside a dataset (``.infoset``, ``.attribset``), read at a location.

pyarrow reads a local table itself and a remote one through the location's fsspec file
system, so every range request goes through the same client as the rest of cadstore's
reads. Writing a table is a publication like any other
(:func:`cadstore.io.publish.write_atomic` with a pyarrow writer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from cadstore.io.location import Location

__all__ = ["read_frame", "read_schema", "read_table"]


def _filesystem(location: Location) -> Any:
    """The fsspec file system pyarrow should read with (``None`` for local disk)."""
    return getattr(location.fs, "fs", None) if location.remote else None


def read_table(location: Location) -> pa.Table:
    """Read a Parquet file into a pyarrow table."""
    import pyarrow.parquet as pq

    return pq.read_table(location.path, filesystem=_filesystem(location))


def read_frame(location: Location) -> pd.DataFrame:
    """Read a Parquet file into a pandas frame (as ``pandas.read_parquet`` does locally)."""
    import pandas as pd

    return pd.read_parquet(location.path, filesystem=_filesystem(location))


def read_schema(location: Location) -> pa.Schema:
    """Read only the schema (and its metadata) of a Parquet file."""
    import pyarrow.parquet as pq

    return pq.read_schema(location.path, filesystem=_filesystem(location))
