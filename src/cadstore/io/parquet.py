"""The Parquet tables beside a dataset (``.infoset``, ``.attribset``), read at a location.

pyarrow reads a local table itself and a remote one through the location's fsspec file
system, so every range request goes through the same client as the rest of cadstore's
reads. Writing a table is a publication like any other
(:func:`cadstore.io.publish.write_atomic` with :func:`write_table` as the writer). Every
table is written with page checksums, which :func:`parse_table` verifies: a flipped bit
in a value is an error, not another value. No checksum covers the footer, but it records
the schema twice (Parquet's own and the Arrow schema pyarrow wrote), and the columns read
must agree with the second: a flipped bit renaming a column or changing its type is an
error too.

Tables are read without Arrow's thread pools (``ParquetFile(pre_buffer=False)`` and
``use_threads=False``): they hold a row per item, which one thread reads in a
millisecond, and a pool thread still alive when the interpreter exits can abort the process
(``terminate called without an active exception``, apache/arrow#34314): a script that
merged and read back a dataset died that way about once in a hundred runs here.

Tables may come from anywhere, like every file cadstore reads. A local path that is not a
regular file (a named pipe, a device) is refused before pyarrow opens it, since opening a
pipe blocks until a writer appears; and whatever pyarrow or pandas raise on a damaged
table (``ArrowInvalid``, ``OSError``, a ``RecursionError`` in its pandas metadata) becomes
a :class:`~cadstore.errors.CorruptStoreError` naming the file. A missing table is a
:class:`~cadstore.errors.StorageNotFoundError` (a ``FileNotFoundError``); an object store
that refuses or cannot be reached keeps its own error.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from cadstore.errors import CadstoreError, CorruptStoreError, StorageNotFoundError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from cadstore.io.location import Location

__all__ = ["parse_table", "read_frame", "read_schema", "read_table", "write_table"]

_T = TypeVar("_T")


def _filesystem(location: Location) -> Any:
    """The fsspec file system pyarrow should read with (``None`` for local disk)."""
    return getattr(location.fs, "fs", None) if location.remote else None


def _read(location: Location, read: Callable[[], _T]) -> _T:
    """Run ``read`` on the table at ``location``, with cadstore's checks and errors."""
    path = location.path
    if not location.remote:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise StorageNotFoundError(path, "no such Parquet table") from None
        except OSError as exc:
            raise CorruptStoreError(path, f"cannot read the Parquet table: {exc}") from exc
        if not stat.S_ISREG(mode):
            raise CorruptStoreError(
                path, "not a regular file, so not a Parquet table; refused without reading it"
            )
    try:
        return read()
    except CadstoreError:
        raise
    except MemoryError:
        raise
    except FileNotFoundError as exc:
        raise StorageNotFoundError(path, f"no such Parquet table ({exc})") from exc
    except Exception as exc:
        translated = location.fs.translate(path, exc)
        if translated is not exc:
            raise translated from exc
        # Anything else pyarrow or pandas raise means the bytes are not a readable table:
        # ArrowInvalid (a ValueError), OSError for a bad footer or thrift, RecursionError
        # or KeyError from hostile pandas metadata, ...
        raise CorruptStoreError(
            path, f"not a readable Parquet table ({type(exc).__name__}: {exc})"
        ) from exc


def parse_table(source: Any, filesystem: Any = None) -> pa.Table:
    """Read a whole Parquet table in the calling thread, with no Arrow thread pool.

    The table is validated in full: pyarrow reads strings that are not UTF-8 (a flipped
    bit in an item name) and dictionary indices out of range without a word, and they
    fail later, wherever the table is shown or converted. Page checksums are verified
    where the writer stored them (cadstore's tables carry them): a flipped bit in a value
    is an error, not another value.

    Parameters
    ----------
    source
        A path (on ``filesystem``, local when ``None``) or a ``pyarrow.BufferReader``.
    filesystem
        An fsspec or pyarrow file system, or ``None``.

    Raises
    ------
    pyarrow.ArrowInvalid
        If the table's values are not valid (strings that are not UTF-8, ...).
    OSError
        If a page does not match its checksum.
    ValueError
        If the columns read are not those the writer recorded (a damaged footer).
    """
    import pyarrow.parquet as pq

    with pq.ParquetFile(
        source, filesystem=filesystem, pre_buffer=False, page_checksum_verification=True
    ) as table_file:
        table = table_file.read(use_threads=False)
        written = (table_file.metadata.metadata or {}).get(_ARROW_SCHEMA)
    if written is not None:
        _check_columns(table.schema, written)
    table.validate(full=True)
    return table


#: The footer key under which pyarrow records the Arrow schema it wrote (base64).
_ARROW_SCHEMA = b"ARROW:schema"


def _check_columns(read: pa.Schema, written: bytes) -> None:
    """Check that the columns read are those pyarrow wrote: the same names, the same types.

    No checksum covers a Parquet footer, and a flipped bit in its schema renames a column
    (``name`` read as ``oame``) or drops a string's annotation (``name`` read as bytes),
    silently. pyarrow's writers record the Arrow schema a second time in the footer
    (``ARROW:schema``), from which a reader restores the types; one flipped bit cannot
    change both copies alike. A table written without one (not by pyarrow) is not
    checked.

    Raises
    ------
    ValueError
        If the recorded schema does not decode, or names or types another column.
    """
    import base64
    import binascii

    import pyarrow as pa

    try:
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(written, validate=True)))
    except (binascii.Error, pa.ArrowException) as exc:
        raise ValueError(f"its recorded Arrow schema does not decode ({exc})") from None
    if len(read) != len(schema):
        raise ValueError(f"it reads {len(read)} columns, where {len(schema)} were written")
    for at, (wrote, found) in enumerate(zip(schema, read, strict=True), start=1):
        try:
            name = found.name
        except UnicodeDecodeError:  # pyarrow leaves names unchecked
            raise ValueError(f"column {at} ({wrote.name!r}) reads with a name not UTF-8") from None
        if name != wrote.name:
            raise ValueError(f"column {at} reads as {name!r}, written as {wrote.name!r}")
        if not _as_read(found.type).equals(_as_read(wrote.type)):
            raise ValueError(f"column {name!r} reads as {found.type}, written as {wrote.type}")


def _as_read(written: pa.DataType) -> pa.DataType:
    """The type pyarrow reads back for a column of type ``written`` from an undamaged file.

    Parquet has no such type as some of Arrow's, and pyarrow does not restore all of them
    from the recorded schema: timestamps and times in seconds read in milliseconds,
    ``date64`` as ``date32``, a dictionary of large strings (what pandas writes for a
    categorical of strings) as a dictionary of strings, and one of other values as the
    values themselves; inside lists, structs and maps alike. The column check compares
    the types this maps both copies to, so that a table any pyarrow or pandas writer made
    passes it.
    """
    import pyarrow as pa

    t = pa.types
    if t.is_timestamp(written) and written.unit == "s":
        return pa.timestamp("ms", written.tz)
    if t.is_time32(written) and written.unit == "s":
        return pa.time32("ms")
    if t.is_date64(written):
        return pa.date32()
    if t.is_dictionary(written):
        values = written.value_type
        if t.is_large_string(values) or t.is_string(values):
            return pa.dictionary(written.index_type, pa.string(), written.ordered)
        if t.is_large_binary(values) or t.is_binary(values):
            return pa.dictionary(written.index_type, pa.binary(), written.ordered)
        return _as_read(values)
    if t.is_map(written):
        return pa.map_(_as_read(written.key_type), _as_read(written.item_type))
    if t.is_fixed_size_list(written):
        return pa.list_(_as_read(written.value_type), written.list_size)
    if t.is_large_list(written):
        return pa.large_list(_as_read(written.value_type))
    if t.is_list(written):
        return pa.list_(_as_read(written.value_type))
    if t.is_struct(written):
        return pa.struct([field.with_type(_as_read(field.type)) for field in written])
    return written


def write_table(table: pa.Table, sink: Any) -> None:
    """Write ``table`` as Parquet into ``sink`` (a binary file object), with page
    checksums (:func:`parse_table` verifies them): how every cadstore table is written.

    Parameters
    ----------
    table
        The table.
    sink
        Where the bytes go: an open binary file, a ``BytesIO``.
    """
    import pyarrow.parquet as pq

    pq.write_table(table, sink, write_page_checksum=True)


def read_table(location: Location) -> pa.Table:
    """Read a Parquet file into a pyarrow table.

    Raises
    ------
    CorruptStoreError
        Naming the file, if it is not a regular file or not a readable Parquet table.
    StorageNotFoundError
        If there is no file.
    """
    return _read(location, lambda: parse_table(location.path, _filesystem(location)))


def read_frame(location: Location) -> pd.DataFrame:
    """Read a Parquet file into a pandas frame (as ``pandas.read_parquet`` does).

    Raises
    ------
    CorruptStoreError, StorageNotFoundError
        As :func:`read_table`.
    """
    return _read(
        location,
        lambda: parse_table(location.path, _filesystem(location)).to_pandas(use_threads=False),
    )


def read_schema(location: Location) -> pa.Schema:
    """Read only the schema (and its metadata) of a Parquet file.

    Raises
    ------
    CorruptStoreError, StorageNotFoundError
        As :func:`read_table`.
    """
    import pyarrow.parquet as pq

    return _read(location, lambda: pq.read_schema(location.path, filesystem=_filesystem(location)))
