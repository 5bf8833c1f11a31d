"""The Parquet tables beside a dataset (``.infoset``, ``.attribset``): how cadstore writes
them and parses them.

Writing a table is a publication like any other (:func:`cadstore.io.publish.write_atomic`
with :func:`write_table` as the writer). Every table is written with page checksums,
which :func:`parse_table` verifies: a flipped bit in a value is an error, not another
value. No checksum covers the footer, but it records the schema twice (Parquet's own and
the Arrow schema pyarrow wrote, with its key-value metadata), and what is read must agree
with the second: a flipped bit renaming a column, changing its type, or changing the
metadata (a copy's commit stamp, the ``cadstore`` document, pandas' metadata) is an error
too (:class:`FooterMetadataError` for the metadata).

Tables are small (a row per item) and every reader of cadstore reads one whole, through
:class:`cadstore.lifecycle.TrustedTables`, which decides which copy belongs to the open
version: it reads the file's bytes (a named pipe or a device is refused unread), parses
them with :func:`parse_table` and reports whatever that raises on a damaged table as a
:class:`~cadstore.errors.CorruptStoreError` naming the file.

Tables are parsed without Arrow's thread pools (``ParquetFile(pre_buffer=False)`` and
``use_threads=False``): they hold a row per item, which one thread reads in a
millisecond, and a pool thread still alive when the interpreter exits can abort the process
(``terminate called without an active exception``, apache/arrow#34314): a script that
merged and read back a dataset died that way about once in a hundred runs here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cadstore.errors import CorruptStoreError
from cadstore.format.commit import STAMP_KEY

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["FooterMetadataError", "frame_of", "parse_table", "write_table"]


class FooterMetadataError(ValueError):
    """A table's key-value metadata differs from the copy pyarrow recorded in its footer.

    A flipped bit in the footer (no checksum covers it) that changed a key or a value of
    the metadata readers use, or the recorded copy. Kept apart from other damage for
    :class:`cadstore.lifecycle.TrustedTables`: the metadata holds the commit stamp that
    says which version a published copy belongs to, so a copy damaged there is one whose
    version is unknown, and a reader reads the tables the dataset carries instead. Readers
    report it as a :class:`~cadstore.errors.CorruptStoreError` naming the file.
    """


def parse_table(source: Any) -> pa.Table:
    """Read a whole Parquet table in the calling thread, with no Arrow thread pool.

    The table is validated in full: pyarrow reads strings that are not UTF-8 (a flipped
    bit in an item name) and dictionary indices out of range without a word, and they
    fail later, wherever the table is shown or converted. Page checksums are verified
    where the writer stored them (cadstore's tables carry them): a flipped bit in a value
    is an error, not another value. The columns and the key-value metadata read are
    checked against the copy recorded in the footer (:func:`_check_footer`).

    Parameters
    ----------
    source
        The table's bytes (a ``pyarrow.BufferReader``), or a local path.

    Raises
    ------
    pyarrow.ArrowInvalid
        If the table's values are not valid (strings that are not UTF-8, ...).
    OSError
        If a page does not match its checksum.
    FooterMetadataError
        If the key-value metadata read is not that the writer recorded (a damaged footer).
    ValueError
        If the columns read are not those the writer recorded (a damaged footer).
    """
    import pyarrow.parquet as pq

    with pq.ParquetFile(source, pre_buffer=False, page_checksum_verification=True) as table_file:
        table = table_file.read(use_threads=False)
        footer = table_file.metadata.metadata
    _check_footer(table.schema, footer)
    table.validate(full=True)
    return table


#: The footer key under which pyarrow records the Arrow schema it wrote (base64).
_ARROW_SCHEMA = b"ARROW:schema"
#: Bytes shown at most of a metadata key read from a file (nothing bounds what is stored).
_KEY_SHOWN_MAX = 64


def _check_footer(read: pa.Schema, footer: Mapping[bytes, bytes] | None) -> None:
    """Check the columns and the key-value metadata read from a footer against the Arrow
    schema pyarrow recorded in it (``ARROW:schema``), a second copy of both.

    No checksum covers a Parquet footer, and one flipped bit in it renames a column
    (``name`` read as ``oame``), drops a string's annotation (``name`` read as bytes), or
    changes the metadata readers use (a copy's stamp, the ``cadstore`` document, pandas'
    metadata), silently; one flipped bit cannot change both copies alike. A table written
    without a recorded schema (not by pyarrow) is not checked, unless it should have one
    (:func:`_check_unrecorded`: a cadstore table, a key one bit from ``ARROW:schema``).
    cadstore's own keys must agree in full. Other writers keep some metadata in the
    recorded schema only (pyarrow reads it from there), add keys after the schema
    (``add_key_value_metadata``, no second copy) or give a key another value there: what
    a flipped bit does is told from those as one bit (:func:`_one_bit_apart`): a key
    missing while the footer holds an unrecorded key one bit from it, or a value one bit
    from the recorded value. A writer's change of exactly one bit (``"1"`` to ``"0"``) is
    refused with them: no second copy tells it from a flip.

    Parameters
    ----------
    read
        The schema read: the columns, with the footer's key-value metadata.
    footer
        The footer's key-value metadata, ``ARROW:schema`` among it.

    Raises
    ------
    FooterMetadataError
        If a key the recorded schema holds is missing from the footer's metadata or has
        another value there, or the recorded schema is missing where one was written.
    ValueError
        If the recorded schema does not decode, or names or types another column.
    """
    import base64
    import binascii

    import pyarrow as pa

    footer = footer or {}
    written = footer.get(_ARROW_SCHEMA)
    if written is None:
        _check_unrecorded(footer)
        return
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(written, validate=True)))
    except (binascii.Error, pa.ArrowException) as exc:
        raise ValueError(f"its recorded Arrow schema does not decode ({exc})") from None
    _check_columns(read, schema)
    recorded = schema.metadata or {}
    # Keys only the footer holds, which a renamed key would be one of.
    added = [key for key in footer if key not in recorded and key != _ARROW_SCHEMA]
    for key, value in recorded.items():
        found = footer.get(key)
        if found == value:
            continue
        ours = key in _OWN_KEYS
        if found is None and (ours or any(_one_bit_apart(key, other) for other in added)):
            problem = f"lacks {_shown(key)!r}, which the copy in its recorded Arrow schema holds"
        elif found is not None and (ours or _one_bit_apart(found, value)):
            problem = f"differs at {_shown(key)!r} from the copy in its recorded Arrow schema"
        else:
            # Kept in the recorded schema only (pyarrow reads it from there), or given
            # another value after the schema: writers do both.
            continue
        raise FooterMetadataError(f"its footer's key-value metadata {problem}")


def _one_bit_apart(one: bytes, other: bytes) -> bool:
    """Whether ``one`` and ``other`` differ in exactly one bit: what a flipped bit makes
    of a key or a value (its length kept), and what a writer changing it hardly does."""
    if len(one) != len(other):
        return False
    return (int.from_bytes(one, "big") ^ int.from_bytes(other, "big")).bit_count() == 1


#: The keys cadstore writes into a table's metadata, always into both copies, so any
#: difference between them is damage: its document (the merger's
#: ``PARQUET_METADATA_KEY``) and the commit stamp.
_OWN_KEYS = frozenset({b"cadstore", STAMP_KEY})


def _check_unrecorded(footer: Mapping[bytes, bytes]) -> None:
    """Refuse a footer without the recorded Arrow schema where one was written.

    Tables other writers make may have none (``store_schema=False``, writers other than
    pyarrow), and are not checked. But cadstore writes one into every table
    (:func:`write_table`: pyarrow records it unless told not to), so a footer holding
    cadstore's own keys without it lost it; and a key one bit from ``ARROW:schema`` is
    that key with a flipped bit, whichever writer wrote it. Either way the second copy is
    gone, and with it both checks: refused, not read unchecked.

    Raises
    ------
    FooterMetadataError
        Naming ``ARROW:schema`` and the key found in its place, or cadstore's key found.
    """
    for key in footer:
        if _one_bit_apart(key, _ARROW_SCHEMA):
            raise FooterMetadataError(
                f"its footer lacks 'ARROW:schema' (its recorded Arrow schema) and holds "
                f"{_shown(key)!r}, one bit from it: a damaged key"
            )
    own = sorted(key for key in footer if key in _OWN_KEYS)
    if own:
        raise FooterMetadataError(
            f"its footer lacks 'ARROW:schema' (its recorded Arrow schema), which cadstore "
            f"writes into every table, and holds cadstore's {_shown(own[0])!r}"
        )


def _shown(key: bytes) -> str:
    """``key``, read from a file, as a message shows it (nothing bounds what is stored)."""
    shown = key[:_KEY_SHOWN_MAX].decode("utf-8", "backslashreplace")
    return shown + ("..." if len(key) > _KEY_SHOWN_MAX else "")


def _check_columns(read: pa.Schema, schema: pa.Schema) -> None:
    """Check that the columns read are those pyarrow wrote (``schema``, recorded in the
    footer): the same names, the same types.

    Raises
    ------
    ValueError
        If ``read`` has other columns, or names or types one otherwise.
    """
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
    from the recorded schema: timestamps and times come back in another unit than written
    (seconds as milliseconds; what the writer's ``version``, ``coerce_timestamps``, INT96
    or ``flavor`` made of them), ``date64`` as ``date32``, ``uint32`` as ``int64`` (format
    version 1.0), a dictionary of large strings (what pandas writes for a categorical of
    strings) as a dictionary of strings, and one of other values as the values
    themselves; inside lists, structs and maps alike. The column check compares the types
    this maps both copies to, so that a timestamp's or a time's unit is not checked (no
    second copy says which the writer chose).
    """
    import pyarrow as pa

    t = pa.types
    if t.is_timestamp(written):
        return pa.timestamp("ns", written.tz)
    if t.is_time32(written) or t.is_time64(written):
        return pa.time64("ns")
    if t.is_uint32(written):
        return pa.int64()
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


def frame_of(table: pa.Table, where: str) -> pd.DataFrame:
    """``table`` (read from ``where``) as a pandas frame: how every reader of cadstore
    presents a table.

    Converted in the calling thread, without Arrow's pool (see the module's docstring).
    pandas rebuilds the frame from the table's ``pandas`` metadata, which may come from
    anywhere (a table is any file): what it raises on metadata it cannot make sense of
    (a ``KeyError`` for an index column that is not there, a ``RecursionError`` for
    nesting without end) is damage, not a crash.

    Raises
    ------
    CorruptStoreError
        Naming ``where``, if pandas cannot make a frame of the table.
    """
    try:
        return table.to_pandas(use_threads=False)
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptStoreError(
            where,
            f"not a readable table: pandas cannot make a frame of it ({type(exc).__name__}: {exc})",
        ) from exc
