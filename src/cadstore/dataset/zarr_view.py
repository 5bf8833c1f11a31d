"""zarr-python's view of a merged dataset, with cadstore's rule for a missing chunk.

Zarr reads a chunk that is not stored as the array's fill value: writers may leave out
chunks holding nothing else. cadstore's merger stores every shard, and every inner chunk,
that holds rows (see :class:`~cadstore.dataset.reader.DatasetReader`), so a chunk of a
merged dataset that is not there was lost (a file deleted, an object a store dropped),
and reading it as fill values would give zeros as data. :class:`CompleteStore` wraps the
store zarr-python reads the dataset through (for :class:`~cadstore.dataset.explorer.
DatasetExplorer`'s xarray views) so that such a read is a
:class:`~cadstore.errors.CorruptStoreError` naming the chunk instead.

In a dataset stored as a local directory, it also refuses, unread, a key that is not a
regular file inside the directory, as the reader's own source does: zarr-python's
``LocalStore`` opens whatever is there, and a named pipe blocks the read, ``/dev/zero``
never ends it, and a symbolic link may lead out of the dataset.

This module imports zarr-python: import it only where zarr-python is in use.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncGenerator, Iterable

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from cadstore.errors import CorruptStoreError
from cadstore.io.sources import path_inside

__all__ = ["CompleteStore"]

#: The names of metadata documents, the only keys zarr-python asks for that may be absent.
_METADATA_NAMES = frozenset(("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"))


class CompleteStore(WrapperStore[Store]):
    """A store of a merged dataset in which every chunk asked for must be there.

    zarr-python asks a store for metadata documents, which may be absent (it probes for
    the Zarr format and for consolidated metadata), and for the chunks of arrays within
    their shape, which a merged dataset always holds: one that is absent is reported.

    Parameters
    ----------
    store
        The store zarr-python would read (``LocalStore``, ``ZipStore``, ``FsspecStore``).
    location
        The dataset, shown in the error.
    root
        The directory of a dataset stored as a local directory, whose keys must be regular
        files inside it; ``None`` for other stores.
    """

    def __init__(self, store: Store, location: str = "", root: str | None = None) -> None:
        super().__init__(store)
        self.location = location
        self.root = None if root is None else os.path.realpath(root)

    def _with_store(self, store: Store) -> CompleteStore:
        return type(self)(store, self.location, self.root)

    def close(self) -> None:
        """Close the wrapped store, if it was ever opened (nothing to close otherwise).

        zarr-python's ``ZipStore`` fails to close a store it never opened, or failed to
        open (``AttributeError: 'ZipStore' object has no attribute '_lock'``, zarr-python
        3.1): as when ``xr.open_zarr`` failed before opening it, after which the
        explorer's ``close()`` raised that and left the dataset open. Any error closing
        an open store is the caller's to see.
        """
        if self._store._is_open:
            self._store.close()

    def _refuse_unsafe(self, key: str) -> None:
        """Raise if ``key`` of a local directory is there but is not a regular file inside
        it (an absent key is left to the wrapped store)."""
        if self.root is None:
            return
        full = path_inside(self.root, key)
        if full is None:
            raise CorruptStoreError(
                self.location, f"{key!r} leads out of the dataset; refused without reading it"
            )
        try:
            mode = os.stat(full).st_mode
        except OSError:
            return
        if not stat.S_ISREG(mode):
            raise CorruptStoreError(
                self.location, f"{key!r} is not a regular file; refused without reading it"
            )

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """The bytes at ``key`` (see zarr's ``Store.get``); a chunk that is absent raises.

        Raises
        ------
        CorruptStoreError
            Naming the dataset and the chunk's key: absent, or (in a local directory) not
            a regular file inside the dataset.
        """
        self._refuse_unsafe(key)
        return self._checked(key, await self._store.get(key, prototype, byte_range))

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        """Several byte ranges at once (see zarr's ``Store.get_partial_values``); a chunk
        that is absent raises, as in :meth:`get`.

        Asked of the wrapped store key by key, through ``get``: zarr's stores do not
        agree on an absent key here (``LocalStore`` raises ``FileNotFoundError``, others
        give ``None``).
        """
        return list(
            await asyncio.gather(
                *(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)
            )
        )

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        # WrapperStore hands these to the wrapped store, past get: checked here too.
        requests = list(requests)
        for key, _, _ in requests:
            self._refuse_unsafe(key)
        async for key, value in self._store._get_many(requests):
            yield key, self._checked(key, value)

    def _checked(self, key: str, found: Buffer | None) -> Buffer | None:
        """``found``, unless it is ``None`` for a key that must be there."""
        if found is None and key.rpartition("/")[2] not in _METADATA_NAMES:
            raise CorruptStoreError(self.location, f"chunk {key!r} is missing")
        return found
