"""Which encoded items are known to be on stable storage, and making batches of them so.

Every item is published atomically (a reader sees it whole or not at all); *durable* is
the further promise that it survives a power cut. Fsyncing each item and its directory
costs two journal commits per item, about 1 ms of an item's few-millisecond write on
ext4. With ``durability="batch"`` (the default of :func:`~cadstore.encode.encode_files`)
workers publish items without fsync, and the supervisor makes them durable together:
every :data:`SYNC_EVERY_ITEMS` items or :data:`SYNC_EVERY_SECONDS` seconds, and at the end
of the run, one ``syncfs`` (:class:`~cadstore.io.publish.FileSystemSync`, on a directory
opened before the first item, so that a failed write-back is reported) writes back the
file system, then the items it covered are appended to the log ``<output_dir>/``
:data:`DURABLE_LOG` and the log is fsynced. A sync that fails logs nothing, then or later
in the run.

A log entry names an item *and the file it was*: its inode, size and modification time.
An item is trusted when the file present is the one logged; any other (not logged, or
written again since, by ``resume=False`` or after its file was deleted) is checked
before it is trusted: a resumed run reads it whole (every member's CRC and its metadata)
and encodes it again if it does not read, as a power cut can leave an item renamed into
place but not written back. A run that was only killed (no power cut) loses nothing, as
the kernel still holds what it wrote; its unlogged items pass the check and are logged.

An item checked on resume is fsynced on a descriptor of its own before it is logged: Linux
reports a failed write-back to the first ``fsync`` of the file after it, so an item whose
blocks never reached the disk (still readable from memory) is encoded again, not trusted.
Summaries missing beside any item present are written again from the item.

An output directory without a log was written by runs that fsynced every item: its items
are trusted as they are (after one sync, which covers a copy not yet written back), and the
log starts with them. ``durability="item"`` fsyncs each item as it is published, and still
syncs the file system per batch for the summaries; Dask workers, which may write on other
machines, always fsync each item.

The log holds one JSON object per line, appended; a line torn by a crash while appending
is ignored (its items are then checked on the next resume). When it holds more than
twice as many lines as items, the next run rewrites it atomically.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Final

from cadstore.errors import StorageError, os_problem
from cadstore.io.location import resolve
from cadstore.io.publish import FileSystemSync, append_durably, write_bytes_atomic

__all__ = [
    "DURABILITY_MODES",
    "DURABLE_LOG",
    "SYNC_EVERY_ITEMS",
    "SYNC_EVERY_SECONDS",
    "BatchSync",
    "DurableLog",
    "file_identity",
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

#: What identifies one version of an item's file: inode, size, modification time (ns).
Identity = tuple[int, int, int]


def file_identity(path: str) -> Identity | None:
    """The :data:`Identity` of the file at ``path``; ``None`` if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


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
        return os.path.lexists(self.path)

    def read(self) -> tuple[dict[str, Identity], int]:
        """The logged items (the last entry of each name) and the number of lines.

        Only whole lines count: the last piece, without its newline, was torn by a crash
        or is empty; a line that is not an entry (torn, or zeros a power cut left) is
        skipped.

        Raises
        ------
        StorageError
            Naming the log, when it cannot be read.
        """
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return {}, 0
        except OSError as exc:
            raise StorageError(self.path, f"cannot be read: {os_problem(exc)}") from exc
        entries: dict[str, Identity] = {}
        lines = data.split(b"\n")[:-1]
        for line in lines:
            try:
                doc = json.loads(line)
                name, ident = doc["name"], (int(doc["ino"]), int(doc["size"]), int(doc["mtime_ns"]))
            except (ValueError, TypeError, KeyError, OverflowError):
                continue
            if isinstance(name, str):
                entries[name] = ident
        return entries, len(lines)

    def append(self, entries: Mapping[str, Identity]) -> None:
        """Append ``entries`` and fsync the log: those files are durable from now on.

        The caller made them durable first (:class:`FileSystemSync`, or an fsync of each).

        Raises
        ------
        StorageError
            When the disk is full or failing, naming the log.
        """
        lines = _lines(entries)
        # A line torn by an earlier crash is closed first, so that the entries appended
        # now start on a line of their own.
        if not self._ends_with_newline():
            lines = b"\n" + lines
        append_durably(self.path, lines)

    def rewrite(self, entries: Mapping[str, Identity]) -> None:
        """Replace the log by ``entries``, atomically and durably (compaction)."""
        write_bytes_atomic(resolve(self.path), _lines(entries))

    def _ends_with_newline(self) -> bool:
        """Whether the log is missing, empty or ends with a newline (no torn last line)."""
        try:
            with open(self.path, "rb") as fh:
                if not fh.seek(0, os.SEEK_END):
                    return True
                fh.seek(-1, os.SEEK_END)
                return fh.read(1) == b"\n"
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise StorageError(self.path, f"cannot be read: {os_problem(exc)}") from exc


def _lines(entries: Mapping[str, Identity]) -> bytes:
    return b"".join(
        json.dumps({"name": name, "ino": ino, "size": size, "mtime_ns": mtime}).encode("utf-8")
        + b"\n"
        for name, (ino, size, mtime) in entries.items()
    )


class BatchSync:
    """Makes the items a run encodes durable in batches, and logs them.

    :meth:`add` is called by the supervisor for every item a worker published (its file's
    identity is taken then); every :data:`SYNC_EVERY_ITEMS` items or
    :data:`SYNC_EVERY_SECONDS` seconds, and at :meth:`flush`, the file systems are synced
    once (whatever the durability mode: the summaries are never fsynced one by one) and
    the items logged. Once a sync has failed, nothing more is logged in this run (a retry
    could succeed where the first write-back failed: Linux reports a failure once).

    Parameters
    ----------
    log
        The output directory's log.
    encoded_dir
        Where the items are (``<name>.zarr.data``).
    directories
        Every directory written to (items, summaries): one sync per file system among
        them. They are opened now, before any item is written.
    """

    def __init__(self, log: DurableLog, encoded_dir: str, directories: Iterable[str]) -> None:
        self.log = log
        self.encoded_dir = encoded_dir
        self.pending: dict[str, Identity] = {}
        self.failed = False
        #: Seconds spent syncing and logging.
        self.seconds = 0.0
        self._since = time.monotonic()
        self._syncs: list[FileSystemSync] = []
        devices: set[int] = set()
        try:
            for directory in directories:
                device = os.stat(directory).st_dev
                if device not in devices:
                    devices.add(device)
                    self._syncs.append(FileSystemSync(directory))
        except BaseException:
            self.close()
            raise

    def add(self, name: str, identity: Identity | None = None) -> None:
        """Item ``name`` was published; sync and log when a batch is due.

        ``identity`` is that of the file published (default: the file there now). It is
        taken before the sync: a file replaced after it is not the one logged, and is
        checked when the run is resumed.
        """
        if identity is None:
            identity = file_identity(os.path.join(self.encoded_dir, f"{name}.zarr.data"))
        if identity is not None:
            self.pending[name] = identity
        due = time.monotonic() - self._since >= SYNC_EVERY_SECONDS
        if due or len(self.pending) >= SYNC_EVERY_ITEMS:
            self.flush()

    def sync(self) -> None:
        """Sync the file systems now (before a log starts, for example)."""
        try:
            for fs in self._syncs:
                fs.sync()
        except BaseException:
            self.failed = True
            raise

    def flush(self) -> None:
        """Make every pending item durable and log it."""
        self._since = started = time.monotonic()
        if self.failed or not self.pending:
            return
        try:
            self.sync()
            self.log.append(self.pending)
            self.pending = {}
        finally:
            self.seconds += time.monotonic() - started

    def close(self) -> None:
        """Close the directories opened for syncing."""
        for fs in self._syncs:
            fs.close()
        self._syncs = []
