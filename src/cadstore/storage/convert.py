"""``convert_storage``: copy what one storage holds into another, whatever their kinds.

The specified generic converter: an item moves between backends (an ``OptStorage`` item
into a ``JsonStorageHandler`` to read it by eye, a ``MemoryStorage`` prototype into an
``OptStorage`` file, or a storage of the user's own) through the :class:`DataStorage`
methods alone.
"""

from __future__ import annotations

from cadstore.storage.base import (
    ROUTING_METADATA_KEY,
    SCHEMA_METADATA_KEY,
    SIZES_METADATA_KEY,
    DataStorage,
    NodeStorage,
)

__all__ = ["STORAGE_METADATA", "convert_storage"]

#: Metadata a storage writes for itself (the schema, routing, sizes): a destination
#: writes its own.
STORAGE_METADATA = frozenset((SCHEMA_METADATA_KEY, ROUTING_METADATA_KEY, SIZES_METADATA_KEY))


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
    schema = source_handler.get_schema()
    if schema:
        dest_handler.set_schema(schema)
    for key in source_handler.get_keys():
        dest_handler.save_data(key, source_handler.load_data(key))
    if isinstance(source_handler, NodeStorage):
        for name, value in source_handler.load_metadata().items():
            if name not in STORAGE_METADATA:
                dest_handler.save_metadata(name, value)
