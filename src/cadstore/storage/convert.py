"""``convert_storage``: copy what one storage holds into another, whatever their kinds.

The specified generic converter: an item moves between backends (an ``OptStorage`` item
into a ``JsonStorageHandler`` to read it by eye, a ``MemoryStorage`` prototype into an
``OptStorage`` file, or a storage of the user's own) through the :class:`DataStorage`
methods alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cadstore.storage.base import (
    ROUTING_METADATA_KEY,
    SCHEMA_METADATA_KEY,
    SIZES_METADATA_KEY,
    DataStorage,
    NodeStorage,
)

__all__ = ["STORAGE_METADATA", "Copied", "convert_storage", "copy_storage"]

#: Metadata a storage writes for itself (the schema, routing, sizes): a destination
#: writes its own.
STORAGE_METADATA = frozenset((SCHEMA_METADATA_KEY, ROUTING_METADATA_KEY, SIZES_METADATA_KEY))


@dataclass
class Copied:
    """What :func:`copy_storage` copied: whether a schema, the keys, the metadata fields."""

    schema: bool = False
    keys: list[str] = field(default_factory=list)
    metadata_fields: list[str] = field(default_factory=list)


def copy_storage(
    source: DataStorage,
    dest: DataStorage,
    *,
    keys: Iterable[str] | None = None,
    check: Callable[[str, Any], None] | None = None,
    saved: Callable[[str, Any], None] | None = None,
) -> Copied:
    """:func:`convert_storage`, with hooks for a caller that watches each key.

    Parameters
    ----------
    source, dest
        As in :func:`convert_storage`.
    keys
        The data keys to copy, in order (default: every key of ``source``); pass them
        through a progress bar here.
    check
        Called with each key and its loaded value before it is saved; raise to stop.
    saved
        Called with each key and its value once saved.
    """
    copied = Copied()
    schema = source.get_schema()
    if schema:
        dest.set_schema(schema)
        copied.schema = True
    for key in source.get_keys() if keys is None else keys:
        value = source.load_data(key)
        if check is not None:
            check(key, value)
        dest.save_data(key, value)
        if saved is not None:
            saved(key, value)
        copied.keys.append(key)
        del value
    if isinstance(source, NodeStorage):
        for name, value in source.load_metadata().items():
            if name not in STORAGE_METADATA:
                dest.save_metadata(name, value)
                copied.metadata_fields.append(name)
    return copied


def convert_storage(source_handler: DataStorage, dest_handler: DataStorage) -> None:
    """Copy the schema, every data key and the metadata of ``source_handler`` into
    ``dest_handler``.

    The schema goes first, so the destination routes the metadata copied after it as the
    source did. The metadata the storages keep for themselves (sizes, routing) is not
    copied: the destination records its own. Neither storage is closed: publish the
    destination (``compress_store()``, ``close()``) when done.

    Parameters
    ----------
    source_handler
        The storage to read; any :class:`DataStorage`.
    dest_handler
        The storage to write; any writable :class:`DataStorage`. Keys it holds already
        are replaced.

    Notes
    -----
    The specified contract has no call that lists metadata keys: metadata is copied from
    cadstore's storages, which give their whole metadata document, and not from a storage
    of another kind.
    """
    copy_storage(source_handler, dest_handler)
