"""Which encoded items are known to be on stable storage, and making batches of them so.

Every item is published atomically (a reader sees it whole or not at all); *durable* is
the further promise that it survives a power cut. Fsyncing each item and its directory
costs two journal commits per item, about 1 ms of an item's few-millisecond write on
ext4. With ``durability="batch"`` (the default of :func:`~cadstore.encode.encode_files`)
workers publish items without fsync, and the supervisor makes them durable together:
every :data:`SYNC_EVERY_ITEMS` items or :data:`SYNC_EVERY_SECONDS` seconds, and at the end
of the run, one ``syncfs`` (:func:`~cadstore.io.publish.sync_file_system`) writes back the
file system, then the names of the items it covered are appended to the log
``<output_dir>/`` :data:`DURABLE_LOG` and the log is fsynced.

So after a crash at any point an item is either in the log, and durable, or it is
checked before it is trusted: a resumed run reads every item present in ``encoded/`` but
absent from the log (every member's CRC, the metadata, the summary JSON) and encodes it
again if it does not read whole. A run that was only killed (no power cut) loses nothing,
as the kernel still holds what it wrote; its unlogged items pass the check and are logged.

An output directory without a log was written by runs that fsynced every item: its items
are trusted as they are, and the log starts with their names. ``durability="item"``
fsyncs each item as it is published (and logs it too, without a ``syncfs``); Dask workers,
which may write on other machines, always do.

The log holds one JSON string per line (an item name), appended; a line torn by a crash
while appending is ignored (its items are then checked on the next resume).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Iterable
from typing import Final

from cadstore.io.publish import append_durably, sync_file_system

__all__ = [
    "DURABILITY_MODES",
    "DURABLE_LOG",
    "SYNC_EVERY_ITEMS",
    "SYNC_EVERY_SECONDS",
    "BatchSync",
    "DurableLog",
]

#: The log of durable items, in the output directory.
DURABLE_LOG: Final = "durable_items.jsonl"

#: ``"batch"``: one ``syncfs`` per batch of items; ``"item"``: fsync every item.
DURABILITY_MODES: Final = ("batch", "item")

#: Items encoded between two syncs, at most.
SYNC_EVERY_ITEMS: Final = 512

#: Seconds between two syncs, at most, while items keep coming (a crash then leaves at
#: most this long's items to check on resume).
SYNC_EVERY_SECONDS: Final = 30.0


class DurableLog:
    """The log of an output directory's durable items (see the module docstring).

    Parameters
    ----------
    output_dir
        The encoder's output directory (local).
    """

    def __init__(self, output_dir: str) -> None:
        self.path = os.path.join(output_dir, DURABLE_LOG)

    def exists(self) -> bool:
        """Whether the directory has a log (a run since batch durability wrote here)."""
        return os.path.isfile(self.path)

    def names(self) -> set[str]:
        """The item names logged, whole lines only (an empty set without a log)."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return set()
        names = set()
        for line in data.split(b"\n")[:-1]:  # the last piece has no newline: torn or empty
            try:
                name = json.loads(line)
            except ValueError:
                continue  # torn by a crash and appended after: its items get checked
            if isinstance(name, str):
                names.add(name)
        return names

    def append(self, names: Iterable[str]) -> None:
        """Append ``names`` and fsync the log: they are durable from now on.

        The caller made the items durable first (:func:`sync_file_system`, or an fsync of
        each).

        Raises
        ------
        StorageError
            When the disk is full or failing, naming the log.
        """
        lines = b"".join(json.dumps(name).encode("utf-8") + b"\n" for name in names)
        # A line torn by an earlier crash is closed first, so that the names appended
        # now start on a line of their own.
        if not _ends_with_newline(self.path):
            lines = b"\n" + lines
        append_durably(self.path, lines)


def _ends_with_newline(path: str) -> bool:
    """Whether ``path`` is missing, empty or ends with a newline (no torn last line)."""
    try:
        with open(path, "rb") as fh:
            if not fh.seek(0, os.SEEK_END):
                return True
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"
    except FileNotFoundError:
        return True


class BatchSync:
    """Makes the items a run encodes durable in batches, and logs them.

    :meth:`add` is called by the supervisor for every item a worker published; every
    :data:`SYNC_EVERY_ITEMS` items or :data:`SYNC_EVERY_SECONDS` seconds, and at
    :meth:`flush`, the file systems of ``directories`` are synced once and the items
    logged. With ``synced=False`` the items were fsynced one by one as they were written
    (``durability="item"``, Dask workers): they are only logged.

    Parameters
    ----------
    log
        The output directory's log.
    directories
        Where the items and their summaries are written (one ``syncfs`` per file system).
    synced
        Whether the writers fsynced every item already.
    """

    def __init__(self, log: DurableLog, directories: Collection[str], *, synced: bool) -> None:
        self.log = log
        self.directories = list(directories)
        self.synced = synced
        self.pending: list[str] = []
        self._since = time.monotonic()

    def add(self, name: str) -> None:
        """Item ``name`` was published; sync and log when a batch is due."""
        self.pending.append(name)
        due = time.monotonic() - self._since >= SYNC_EVERY_SECONDS
        if due or len(self.pending) >= SYNC_EVERY_ITEMS:
            self.flush()

    def flush(self) -> None:
        """Make every pending item durable and log it."""
        self._since = time.monotonic()
        if not self.pending:
            return
        if not self.synced:
            devices: set[int] = set()
            for directory in self.directories:
                try:
                    device = os.stat(directory).st_dev
                except FileNotFoundError:
                    continue
                if device not in devices:
                    devices.add(device)
                    sync_file_system(directory)
        self.log.append(self.pending)
        self.pending = []
