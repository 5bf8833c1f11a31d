"""The life of a dataset: versions, one writer at a time, the commit, recovery, what readers trust.

A dataset is four files that belong together: ``X.dataset``, ``X.infoset``,
``X.attribset`` and ``X.flow``. They cannot all be replaced in one atomic step, so one of
them is the truth and the others are copies:

* **The dataset is the truth.** Each merge or append publishes a new *version* of it in one
  atomic step (a rename on local disk, a single upload on an object store), and that
  version carries its own commit record and its own tables
  (:mod:`cadstore.format.commit`). Publishing the dataset is the **commit point**.
* **The tables and the manifest are copies**, published after the commit, each stamped
  with the id of the commit it belongs to. A reader trusts a copy only when its stamp is
  the commit id of the dataset it has open (a copy without a stamp, written by older
  cadstore versions or by ``DatasetInfo`` directly, is trusted as before); otherwise it
  reads the tables the dataset carries. So a reader never pairs a dataset of one version
  with tables of another, whatever was interrupted and whoever is writing.
* **One writer at a time.** Every merge, append and split holds the dataset's writer lock
  (:class:`cadstore.io.lock.WriterLock`) from before it reads the current version until
  after it has published the copies. A second writer gets a
  :class:`~cadstore.errors.DatasetLockedError` naming the first, and nothing is lost.
* **Recovery.** The next writer (or ``cadstore repair``) finishes or undoes what a killed
  writer left: before the commit, its staged files are removed (*rolled back*: the
  dataset is the previous version, complete); after it, the copies are published again from
  the dataset (*rolled forward*). The killed writer's lock record says which writer it was
  and where it stopped; the stamps say what is out of date even without it.

Splits change only the ``.infoset`` (its ``subset`` column). A split writes the copy under
the lock, stamped with the current commit id, and does not make a new version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cadstore.errors import (
    CadstoreWarning,
    CorruptStoreError,
    DatasetLockedError,
    StorageError,
    StorageNotFoundError,
    os_storage_error,
)
from cadstore.format.commit import (
    COMMIT_MEMBER,
    STAMP_KEY,
    TABLE_KINDS,
    CommitRecord,
    is_sibling_name,
    new_commit_id,
    table_member,
)
from cadstore.format.manifest import write_manifest
from cadstore.io.location import Location, resolve
from cadstore.io.lock import LockRecord, WriterLock, lock_location
from cadstore.io.parquet import FooterMetadataError, parse_table, write_table
from cadstore.io.publish import (
    Sink,
    check_replaceable,
    local_stat,
    recover_staged,
    sweep_dead_temporaries,
    write_bytes_atomic,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "PublishedFiles",
    "Transaction",
    "TrustedTables",
    "copy_beside",
    "dataset_exists",
    "read_commit",
    "repair",
    "table_bytes",
]

#: The manifest entry holding the commit id of the version it describes.
MANIFEST_COMMIT_KEY = "commit"


def read_commit(dataset: Any) -> CommitRecord | None:
    """Return the commit record of an open dataset: which version it is, its parent, its
    items and its tables' digests.

    Parameters
    ----------
    dataset
        The open dataset: anything with ``member(key)``, such as a
        :class:`~cadstore.dataset.reader.DatasetReader`.

    Returns
    -------
    CommitRecord or None
        The record, or ``None`` for a dataset written before versions were recorded.

    Raises
    ------
    CorruptStoreError
        If the record is there but unreadable.
    """
    raw = dataset.member(COMMIT_MEMBER)
    if raw is None:
        return None
    return CommitRecord.from_bytes(raw, str(getattr(dataset, "path", "dataset")))


def table_bytes(table: pa.Table, commit_id: str | None) -> bytes:
    """A table as stored, its schema stamped with ``commit_id`` (no stamp for ``None``)."""
    metadata = dict(table.schema.metadata or {})
    metadata.pop(STAMP_KEY, None)
    if commit_id is not None:
        metadata[STAMP_KEY] = commit_id.encode()
    table = table.replace_schema_metadata(metadata)
    buffer = io.BytesIO()
    write_table(table, buffer)
    return buffer.getvalue()


def _parse_table(raw: bytes, where: str) -> tuple[pa.Table, str | None]:
    """A stored table and its stamp; ``CorruptStoreError`` naming ``where`` if unreadable."""
    import pyarrow as pa

    try:
        table = parse_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError, ValueError) as exc:
        # Chained: TrustedTables tells a copy damaged in its metadata (FooterMetadataError).
        raise CorruptStoreError(where, f"not a readable Parquet table ({exc})") from exc
    stamp = (table.schema.metadata or {}).get(STAMP_KEY)
    return table, None if stamp is None else stamp.decode("utf-8", "replace")


@dataclass
class PublishedFiles:
    """Where a writer publishes the copies of a version (any may be ``None``).

    Attributes
    ----------
    infoset, attribset
        The tables.
    flow
        The manifest (:mod:`cadstore.format.manifest`): it names the dataset and the two
        tables, and holds the version's summary and commit id.
    fields
        More entries for the manifest this writer publishes, from whoever produced the
        items (a flow's ``Flow Specifications``); an ``error_distribution`` among them
        is added to the writer's own counts. Not part of the version: a copy published
        again by recovery lacks them.
    durations
        Seconds of the stages that produced the items (a flow's tasks, by name), shown in
        the manifest's ``Duration [seconds]`` before the writer's own stages.
    """

    infoset: Location | None = None
    attribset: Location | None = None
    flow: Location | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    durations: Mapping[str, float] = field(default_factory=dict)

    def by_kind(self) -> dict[str, Location]:
        """The locations given, by kind."""
        found = {"infoset": self.infoset, "attribset": self.attribset, "flow": self.flow}
        return {kind: where for kind, where in found.items() if where is not None}

    def check_replaceable(self) -> None:
        """Refuse to publish a copy over a file of another kind (a user's own notes named
        ``parts.flow``): each is a table (Parquet) or a manifest (JSON), or nothing yet.

        Raises
        ------
        OutputExistsError
            Naming the file.
        """
        for kind, where in self.by_kind().items():
            if kind == "flow":
                check_replaceable(where, "a .flow manifest", _is_manifest)
            else:
                check_replaceable(where, f"an .{kind}", _is_parquet)

    def siblings(self, dataset: Location) -> dict[str, str]:
        """The copies that sit in the dataset's own folder, by kind, as plain names."""
        folder = dataset.parent.path
        return {
            kind: where.name
            for kind, where in self.by_kind().items()
            if where.parent.path == folder and is_sibling_name(where.name)
        }


@dataclass
class _Staged:
    record: CommitRecord
    tables: dict[str, bytes] = field(default_factory=dict)


class Transaction:
    """One writer's change to a dataset, from taking its lock to publishing its copies.

    Use it as a context manager around the whole operation::

        with Transaction(dataset, "append", published) as txn:
            parent = txn.parent                 # the version being changed
            txn.begin(sink)                     # journal: where it is staged
            ... write the new version into the sink ...
            record = txn.stage(sink, items, tables, summary)
            txn.commit(sink.commit)             # the commit point
            txn.publish()                       # the copies

    Entering takes the lock and recovers what a killed writer left (see
    :attr:`recovered`); leaving releases the lock, whatever happened.

    Parameters
    ----------
    dataset
        The dataset.
    operation
        ``"merge"``, ``"append"`` or ``"split"``.
    published
        Where this writer publishes the copies.
    timeout
        Seconds to wait for another writer to finish (0: fail at once).
    """

    def __init__(
        self,
        dataset: Location,
        operation: str,
        published: PublishedFiles | None = None,
        *,
        timeout: float = 0.0,
    ) -> None:
        self.dataset = dataset
        self.operation = operation
        self.published = published or PublishedFiles()
        self.lock = WriterLock(dataset, operation, timeout=timeout)
        self.recovered: list[str] = []
        self.parent: CommitRecord | None = None
        #: How long the operation's stages took, for the manifest (set by the caller).
        self.durations: dict[str, float] = {}
        #: The version an interrupted writer had committed, which this one found (the
        #: same command run again can report it instead of failing).
        self.resumed: CommitRecord | None = None
        self.commit_id = new_commit_id()
        self._staged: _Staged | None = None
        self._committed = False

    def __enter__(self) -> Transaction:
        self.lock.acquire()
        try:
            self.recovered = recover(self.dataset, self.lock.previous, self.published)
            self.published.check_replaceable()
            self.parent = _current_commit(self.dataset)
            previous = self.lock.previous
            if (
                previous is not None
                and self.parent is not None
                and previous.journal.get("commit") == self.parent.id
            ):
                self.resumed = self.parent
        except BaseException:
            self.lock.release()
            raise
        for message in self.recovered:
            warnings.warn(f"{self.dataset.path}: {message}", CadstoreWarning, stacklevel=2)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lock.release()

    # ------------------------------------------------------------------ writing
    def stage(
        self,
        sink: Sink,
        items: int,
        tables: Mapping[str, pa.Table],
        summary: Mapping[str, Any],
    ) -> CommitRecord:
        """Add the new version's tables and commit record to ``sink`` (before the commit).

        Parameters
        ----------
        sink
            Where the new version is being written.
        items
            How many items it holds.
        tables
            Its tables by kind (``"infoset"``, ``"attribset"``).
        summary
            What its manifest reports besides the paths.
        """
        stored = {kind: table_bytes(table, self.commit_id) for kind, table in tables.items()}
        record = CommitRecord.create(
            self.commit_id,
            self.parent,
            self.operation,
            items,
            {kind: (stored[kind], tables[kind].num_rows) for kind in stored},
            self.published.siblings(self.dataset),
            {**summary, MANIFEST_COMMIT_KEY: self.commit_id},
        )
        for kind, data in stored.items():
            sink.add(table_member(kind), data)
        sink.add(COMMIT_MEMBER, record.to_bytes())
        self._staged = _Staged(record, stored)
        return record

    def commit(self, publish: Callable[[], object]) -> None:
        """Publish the staged version with ``publish`` (the sink's ``commit``, or an
        upload): the commit point.

        The lock's journal says first that the commit is under way (with :meth:`begin`, it
        already says where the version is staged), so that the next writer can tell whether
        it happened if this process dies meanwhile.
        """
        if self._staged is None:
            raise RuntimeError("stage() the version before committing it")
        self.lock.update("committing", commit=self.commit_id)
        self.lock.check()
        publish()
        self._committed = True
        self.lock.update("publishing")

    def publish(self, **fields: Any) -> None:
        """Publish the copies of the committed version: tables first, then the manifest.

        ``fields`` are added to the manifest (what is known only after the commit, such
        as the size published).
        """
        if self._staged is None or not self._committed:
            raise RuntimeError("commit() the version before publishing its copies")
        record = self._staged.record
        if fields:
            record = dataclasses.replace(record, summary={**record.summary, **fields})
        _publish_copies(self.dataset, record, self._staged.tables, self.published)

    @property
    def committed(self) -> bool:
        """Whether :meth:`commit` published a version."""
        return self._committed

    def begin(self, sink: Sink) -> None:
        """Record where the new version is being staged, before writing it, so that the
        next writer removes it if this process dies first."""
        staged = getattr(sink, "tmp", None)
        if staged is not None:
            self.lock.update("writing", commit=self.commit_id, staged=staged)

    @property
    def record(self) -> CommitRecord | None:
        """The version this transaction staged (``None`` before :meth:`stage`)."""
        return None if self._staged is None else self._staged.record


# ---------------------------------------------------------------------------- recovery
def _current_commit(dataset: Location) -> CommitRecord | None:
    """The commit record of the dataset's current version; ``None`` when there is no
    dataset, or no readable record in it (the operation under way then meets the
    problem itself and says so: a merge finds the path taken, an append cannot read it)."""
    from cadstore.io.sources import open_source

    if not dataset_exists(dataset):
        return None
    try:
        source = open_source(dataset, what="dataset")
        try:
            raw = source.get(COMMIT_MEMBER)
        finally:
            source.close()
        return None if raw is None else CommitRecord.from_bytes(raw, dataset.path)
    except CorruptStoreError:
        return None


def _embedded_tables(dataset: Location, record: CommitRecord) -> dict[str, bytes]:
    """The tables a version carries, checked against their digests."""
    from cadstore.io.sources import open_source

    source = open_source(dataset, what="dataset")
    try:
        found = {}
        for kind, ref in record.tables.items():
            raw = source.get(ref.member)
            if raw is None or hashlib.sha256(raw).hexdigest() != ref.sha256:
                raise CorruptStoreError(
                    dataset.path, f"member {ref.member} is missing or does not match its digest"
                )
            found[kind] = raw
        return found
    finally:
        source.close()


def copy_beside(dataset: Location, kind: str) -> Location:
    """Where a dataset's copy of ``kind`` (``"infoset"``, ``"attribset"``, ``"flow"``)
    sits unless given elsewhere: beside it, ``parts.dataset`` -> ``parts.infoset``."""
    return dataset.with_suffix(f".{kind}", replacing=".dataset")


def _is_manifest(head: bytes) -> bool:
    return head.lstrip()[:1] == b"{"


def _is_parquet(head: bytes) -> bool:
    return head[:4] == b"PAR1"


def dataset_exists(dataset: Location) -> bool:
    """Return whether a dataset is published at ``dataset``.

    On an object store a directory-layout dataset exists once its root ``zarr.json``
    does: objects left by a merge that died part-way do not count.

    Raises
    ------
    StorageError
        If the file system fails to say (an EIO, a folder that may not be searched), of
        the failure's kind and naming ``dataset``: taken for "no dataset", that would
        let a merge or an append publish over one, and a recovery say a killed writer
        rolled back when it cannot tell.
    """
    if not dataset.remote:
        return local_stat(dataset.path) is not None
    return dataset.isfile() or dataset.child("zarr.json").isfile()


def _read_copy(where: Location) -> bytes | None:
    """The bytes of a published copy; ``None`` when there is none.

    Raises
    ------
    CorruptStoreError
        If something other than a regular file is there (a pipe would block the read).
    StorageError
        If the file system fails to read it (an EIO), naming it.
    """
    try:
        if not where.remote and not stat.S_ISREG(os.stat(where.path).st_mode):
            raise CorruptStoreError(where.path, "is not a regular file")
        return where.read_bytes()
    except FileNotFoundError:
        return None
    except StorageError:
        raise
    except OSError as exc:
        raise os_storage_error(where.path, exc, "reading it") from exc


@dataclass(frozen=True)
class _Damaged:
    """A published copy that is there but does not read: ``problem`` says why."""

    problem: str


def _stamp_of(where: Location, kind: str) -> str | _Damaged | None:
    """The commit id a published copy carries; ``""`` for a copy without one, ``None`` if
    there is none, :class:`_Damaged` if it does not read (so that recovery says so,
    rather than that it was out of date)."""
    try:
        raw = _read_copy(where)
    except CorruptStoreError as exc:
        return _Damaged(exc.problem)
    if raw is None:
        return None
    if kind == "flow":
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            return _Damaged(f"not a JSON manifest ({type(exc).__name__})")
        stamp = doc.get(MANIFEST_COMMIT_KEY) if isinstance(doc, dict) else None
        return stamp if isinstance(stamp, str) else ""
    try:
        _, stamp = _parse_table(raw, where.path)
    except CorruptStoreError as exc:
        return _Damaged(exc.problem)
    return "" if stamp is None else stamp


def _publish_copies(
    dataset: Location,
    record: CommitRecord,
    tables: Mapping[str, bytes],
    published: PublishedFiles,
    kinds: Iterable[str] | None = None,
) -> list[str]:
    """Publish the copies of ``record`` (those of ``kinds``, default all): the tables
    first, then the manifest; return the names of those written."""
    wanted = set((*TABLE_KINDS, "flow") if kinds is None else kinds)
    written = []
    targets = published.by_kind()
    for kind in TABLE_KINDS:
        where = targets.get(kind)
        if where is None or kind not in tables or kind not in wanted:
            continue
        write_bytes_atomic(where, tables[kind])
        written.append(where.name)
    where = targets.get("flow")
    if where is not None and "flow" in wanted:
        write_manifest(
            where,
            dataset=dataset,
            infoset=published.infoset,
            attribset=published.attribset,
            fields=_with_copy_paths(record.summary, tables, targets),
        )
        written.append(where.name)
    return written


def _with_copy_paths(
    summary: Mapping[str, Any], tables: Mapping[str, bytes], targets: Mapping[str, Location]
) -> dict[str, Any]:
    """``summary`` with the paths of the table copies in its ``info`` section.

    The version's record says nothing of where its copies go (``infoset`` and
    ``attribset`` are ``None`` there): that depends on where it was published, and the
    dataset is the same bytes wherever it is written. The manifest gives the paths of the
    copies published beside it (``None`` for a table the version does not have).
    """
    info = summary.get("info")
    if not isinstance(info, Mapping):
        return dict(summary)
    paths = {
        kind: where.path if kind in tables and (where := targets.get(kind)) else None
        for kind in TABLE_KINDS
    }
    return {**summary, "info": {**info, **paths}}


def _undo_staged(previous: LockRecord, dataset: Location) -> bool:
    """Remove or finish what a killed writer staged; return whether anything was found."""
    staged = previous.journal.get("staged")
    if not isinstance(staged, str):
        return False
    return recover_staged(dataset, staged, committing=previous.phase == "committing")


def recover(
    dataset: Location,
    previous: LockRecord | None,
    published: PublishedFiles | None = None,
    *,
    say_swept: bool = False,
) -> list[str]:
    """Finish or undo what a killed writer left; return what was done, as sentences.

    Called with the dataset's lock held. ``previous`` is the killed writer's lock record
    (``None`` if the lock was free); ``published`` are the copies the caller is about to
    publish (they are checked too).

    * Its staged files are removed; a directory dataset caught between its two renames is
      put in place.
    * Temporary files of processes that are gone are removed from the dataset's folder;
      with ``say_swept`` (:func:`repair`, whose user asked for it) that is said last,
      with the first few names. A writer sweeps them without a word: they may be another
      dataset's in the same folder, and a merge's ``recovered`` (and its warnings, and
      its manifest) says what was done of this dataset's interrupted writer.
    * If the current version's copies (the files it lists, and ``published``) are from
      another version or missing, they are published again from the dataset.

    The first two steps touch no file of the version in place, so they are done even
    when reading the dataset or its copies then fails (an EIO from a failing disk): the
    :class:`~cadstore.errors.StorageError` of the kind the failure is
    (:func:`~cadstore.errors.os_storage_error`) names the file, and its message ends
    with what was done before it, since the killed writer's lock record, which said what
    was rolled back, is gone once the lock is released. What is committed is never
    changed by a failed recovery: the next one (``cadstore repair`` once the disk reads
    again) finds stale copies by their stamps.
    """
    done: list[str] = []
    staged_found = previous is not None and _undo_staged(previous, dataset)
    swept = [] if dataset.remote else sweep_dead_temporaries(dataset.parent)
    failure: StorageError | None = None
    try:
        # The version in place once what was staged is undone (or put in place).
        current = _current_commit(dataset)
    except StorageError as exc:
        failure = exc
        if previous is not None:
            done.append(_interrupted(previous, staged_found, readable=False))
    else:
        try:
            _roll_forward(dataset, previous, staged_found, current, published, done)
        except StorageError as exc:
            failure = exc
    if swept and say_swept:
        done.append(_swept(dataset.parent, swept))
    if failure is not None:
        if not done:
            raise failure
        raise _having_done(failure, done) from failure
    return done


#: Names of temporaries removed that a sentence lists at most.
_SWEPT_SHOWN = 3


def _swept(folder: Location, names: list[str]) -> str:
    """What recovery says of the temporaries it removed from ``folder``: how many, and
    the first few names (a folder may hold many)."""
    shown = ", ".join(sorted(names)[:_SWEPT_SHOWN])
    more = f" and {len(names) - _SWEPT_SHOWN} more" if len(names) > _SWEPT_SHOWN else ""
    files = "file" if len(names) == 1 else "files"
    return (
        f"removed {len(names)} temporary {files} of writers that are gone from "
        f"{folder.path}: {shown}{more}"
    )


def _interrupted(previous: LockRecord, staged_found: bool, *, readable: bool) -> str:
    """What recovery says of a killed writer whose version is not in place.

    When the dataset could not be read (not ``readable``), only a writer that never
    reached its commit (its journal's phase is ``"writing"``) is known to be rolled back.
    """
    what = "what it had staged was removed" if staged_found else "it had staged nothing"
    if not readable and previous.phase != "writing":
        return (
            f"{previous.describe()} was interrupted while committing or after; {what}, "
            "and the dataset could not be read to tell which version is in place"
        )
    return (
        f"rolled back: {previous.describe()} was interrupted before its commit; {what}, "
        "and the dataset is the version it started from"
    )


def _having_done(exc: StorageError, done: list[str]) -> StorageError:
    """``exc`` (of its own kind, naming its file) with what recovery did before it."""
    return type(exc)(exc.path, f"{exc.problem}; before this, recovery did: {'; '.join(done)}")


def _roll_forward(
    dataset: Location,
    previous: LockRecord | None,
    staged_found: bool,
    current: CommitRecord | None,
    published: PublishedFiles | None,
    done: list[str],
) -> None:
    """The part of :func:`recover` that reads the version in place: says whether the
    killed writer had committed it, and publishes its out-of-date copies again; appends
    to ``done`` as it goes."""
    killed = ""
    if previous is not None:
        killed = previous.describe()
        if current is not None and previous.journal.get("commit") == current.id:
            killed = f"{killed}, had committed version {current.version} ({current.items} items)"
        else:
            done.append(_interrupted(previous, staged_found, readable=True))
            killed = ""
    if current is None or not current.tables:
        return
    # The copies the version itself lists, in its own folder, are published again when
    # missing or out of date; those the caller is about to publish (which may be
    # elsewhere, or new) only when they exist and are out of date.
    targets = PublishedFiles()
    listed: dict[str, str] = {}
    for kind, name in current.published.items():
        setattr(targets, kind, dataset.parent.child(name))
        listed[kind] = dataset.parent.child(name).path
    for kind, where in (published.by_kind() if published else {}).items():
        setattr(targets, kind, where)
        if listed.get(kind) != where.path:
            listed.pop(kind, None)
    try:
        stamps = {kind: _stamp_of(where, kind) for kind, where in targets.by_kind().items()}
        stale = [
            kind
            for kind, stamp in stamps.items()
            if stamp != current.id and (isinstance(stamp, str) or kind in listed) and stamp != ""
        ]
        names = []
        if stale:
            tables = _embedded_tables(dataset, current)
            names = _publish_copies(dataset, current, tables, targets, stale)
    except StorageError:
        if killed:  # said with the error: the next recovery will not know it
            done.append(f"{killed} and was interrupted after it")
        raise
    if names:
        why = _why_published_again(killed, stale, stamps, targets)
        done.append(
            f"rolled forward: {why}; {', '.join(names)} published again from the dataset's "
            f"version {current.version} ({current.items} items)"
        )
    elif killed:
        done.append(f"{killed} and was interrupted after it; its copies were complete")


def _why_published_again(
    killed: str,
    stale: list[str],
    stamps: Mapping[str, str | _Damaged | None],
    targets: PublishedFiles,
) -> str:
    """Why the copies ``stale`` were published again, for recovery's report: the killed
    writer (``killed``, if any) or their being out of date (missing, another version),
    and each damaged copy as damaged, with its problem."""
    where = targets.by_kind()
    damaged = {kind: stamp for kind in stale if isinstance(stamp := stamps[kind], _Damaged)}
    others = [where[kind].name for kind in stale if kind not in damaged]
    reasons = []
    if killed:
        reasons.append(f"{killed} and was interrupted after it")
    elif others and not damaged:
        reasons.append("they were out of date")
    elif others:
        reasons.append(f"{', '.join(others)} {'was' if len(others) == 1 else 'were'} out of date")
    reasons += [
        f"{where[kind].name} was damaged ({found.problem})" for kind, found in damaged.items()
    ]
    return "; ".join(reasons)


def repair(
    dataset: str | os.PathLike[str] | Location,
    published: PublishedFiles | None = None,
    *,
    timeout: float = 0.0,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Finish or undo what an interrupted writer left of ``dataset``; see :func:`recover`.

    What ``cadstore repair`` does: take the dataset's lock, recover, and release it. Any
    later merge, append or split does the same first.

    Parameters
    ----------
    dataset
        The ``.dataset`` (a path, a URL or a :class:`~cadstore.io.location.Location`).
    published
        More copies to check besides those the current version lists.
    timeout
        Seconds to wait for a writer still at work (0: fail at once).
    storage_options
        fsspec options (credentials, endpoint) when ``dataset`` is a URL.

    Returns
    -------
    list of str
        What was done, as sentences (rolled back, rolled forward, temporaries removed):
        empty when nothing needed doing.

    Raises
    ------
    DatasetLockedError
        If another writer still holds the lock after ``timeout`` seconds.
    ValueError
        If ``timeout`` is negative or NaN.
    CorruptStoreError
        If ``dataset`` is not a readable dataset (missing, a truncated zip, a text file, a
        pipe, a plain folder, ...), naming the path and the problem as
        :class:`cadstore.dataset.DatasetReader` does: "nothing to repair" would hide a
        mistyped path. Without a writer's lock beside it this is checked before the lock
        is taken, so nothing is created (taking the lock made a missing path's folders).
        With one, after the recovery, which may have rolled back a first merge and left
        no dataset: that is no error.
    StorageError
        If the file system fails to read the dataset or one of its copies (an EIO), of
        the failure's kind and naming the file; what the recovery did before (staged
        files removed, temporaries swept) ends its message (see :func:`recover`). Also
        without a writer's lock: a dataset that is there but does not read is recovered
        all the same (the lock taken, the dead writers' temporaries swept) before the
        error; if the lock cannot be taken, the error is the dataset's, nothing done,
        except when a live writer holds it: that is the ``DatasetLockedError``. A lock
        file the file system fails to look up (an EIO) is not taken for no writer's: the
        error names the lock, nothing done.
    """
    where = resolve(dataset, storage_options, shared=True)
    lock_file = lock_location(where)
    if where.remote:
        locked = lock_file.exists()
    else:
        # A lock the disk fails to look up (an EIO) is not "no writer": a killed first
        # merge's lock, taken for none, had its dataset refused as missing.
        locked = local_stat(lock_file.path, _LOOKING_FOR_LOCK) is not None
    unreadable: StorageError | None = None
    if not locked:
        try:
            _check_dataset(where)
        except (CorruptStoreError, StorageNotFoundError):
            raise
        except StorageError as exc:
            # The path is there, but the file system fails to read it (an EIO): recovery
            # still does what needs no reading (the dead writers' temporaries), then
            # meets the failure itself and says what it did.
            unreadable = exc
    lock = WriterLock(where, "repair", timeout=timeout)
    try:
        lock.acquire()
    except DatasetLockedError:
        # A live writer (one that took the lock after it was looked for) wins over the
        # dataset's error: its dataset is in flux, and what it does changes the answer.
        raise
    except StorageError:
        if unreadable is not None:
            raise unreadable from None  # what was asked of is the dataset
        raise
    try:
        done = recover(where, lock.previous, published, say_swept=True)
    finally:
        lock.release()
    if unreadable is not None or locked:
        try:
            # A rolled-back first merge leaves no dataset: that is no error.
            if unreadable is not None or not done or dataset_exists(where):
                _check_dataset(where)
        except StorageError as exc:
            if not done:
                raise
            # As recover's own errors: what it did is said nowhere else once the lock,
            # and the killed writer's journal in it, is gone.
            raise _having_done(exc, done) from exc
    return done


#: What repair was doing when the file system failed to say whether a lock is there.
_LOOKING_FOR_LOCK = "looking up the writer's lock (nothing was done)"


def _check_dataset(dataset: Location) -> None:
    """Open ``dataset`` (its metadata only; a pipe is refused unread) and close it.

    Raises
    ------
    CorruptStoreError
        If it is not a readable cadstore dataset, naming the path and the problem.
    StorageError
        If the file system fails to read it (an EIO), of the failure's kind, naming the
        dataset when the reader's error names no file (a directory dataset's member).
    """
    from cadstore.dataset.reader import DatasetReader

    try:
        with DatasetReader(dataset):
            pass
    except StorageError:
        raise
    except OSError as exc:
        raise os_storage_error(dataset.path, exc, "reading it") from exc


# ---------------------------------------------------------------------------- readers
#: Characters of a commit id a message shows, when two ids differ within them.
_ID_SHOWN = 12
#: Characters shown past the first where two ids differ, when they agree on the first 12.
_ID_SHOWN_PAST = 4
#: Characters shown at most of a stamp read from a file (nothing bounds what is stored).
_STAMP_SHOWN_MAX = 64


def _ids_apart(found: str, expected: str) -> tuple[str, str, str]:
    """A copy's stamp ``found`` and the dataset's commit id ``expected`` as a message
    shows them, so that a reader can tell them apart.

    Ids of two versions (random) differ within their first 12 characters, shown alone; a
    damaged stamp may agree with the id up to one character anywhere, so both are then
    shown up to a few characters past the first that differs, and the third string
    says which character that is (else it is empty). Each is escaped (a stamp's bytes
    are the file's), cut at 64 characters, ``...`` marking what is cut.
    """
    pairs = zip(found, expected, strict=False)  # to the shorter's end
    same = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(found), len(expected)))
    shown = _ID_SHOWN if same < _ID_SHOWN else min(same + 1 + _ID_SHOWN_PAST, _STAMP_SHOWN_MAX)

    def cut(text: str) -> str:
        head = text[:shown].encode("unicode_escape").decode("ascii")
        return head + ("..." if len(text) > shown else "")

    differ = "" if same < _ID_SHOWN else f"; the two differ from character {same + 1}"
    return cut(found), cut(expected), differ


class TrustedTables:
    """The tables of the version a reader has open: the copies when they belong to it,
    otherwise the ones the dataset carries.

    Parameters
    ----------
    dataset
        The open dataset (anything with ``path`` and ``member(key)``).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._commit: CommitRecord | bool | None = False

    @property
    def commit(self) -> CommitRecord | None:
        """The open version's commit record (``None`` for an unversioned dataset)."""
        if self._commit is False:
            self._commit = read_commit(self.dataset)
        assert self._commit is not True
        return self._commit

    def has(self, kind: str) -> bool:
        """Whether the open version carries table ``kind``."""
        record = self.commit
        return record is not None and kind in record.tables

    def read(self, kind: str, copy: Location | None) -> tuple[pa.Table, str] | None:
        """Table ``kind`` of the open version, and where it was read from.

        The copy is read when it belongs to the open version. One of another version, or
        one whose footer metadata is damaged (where its stamp is, so that its version
        cannot be told: :class:`~cadstore.io.parquet.FooterMetadataError`), is warned of
        and the table the dataset carries read instead, when it carries one. Any other
        damage to the copy, and any to the dataset's own table, is an error.

        Parameters
        ----------
        kind
            ``"infoset"`` or ``"attribset"``.
        copy
            The published copy to prefer (``None``: none was given or found).

        Returns
        -------
        tuple or None
            The table and the path it came from (the copy, or ``<dataset>:<member>``);
            ``None`` when there is neither a copy nor a table in the dataset.

        Raises
        ------
        CorruptStoreError
            If the copy or the dataset's table is unreadable, naming it.
        """
        record = self.commit
        carried = record is not None and kind in record.tables
        if copy is not None:
            raw = _read_copy(copy)
            if raw is not None:
                try:
                    table, stamp = _parse_table(raw, copy.path)
                except CorruptStoreError as exc:
                    if not (carried and isinstance(exc.__cause__, FooterMetadataError)):
                        raise
                    warnings.warn(
                        f"{copy.path} is damaged ({exc.__cause__}): which version it "
                        f"belongs to cannot be told, so the tables {self.dataset.path} "
                        "carries are read",
                        CadstoreWarning,
                        stacklevel=3,
                    )
                    return self._carried(kind)
                if record is None or stamp is None or stamp == record.id:
                    return table, copy.path
                if not carried:
                    return table, copy.path
                found, expected, differ = _ids_apart(stamp, record.id)
                warnings.warn(
                    f"{copy.path} belongs to another version of {self.dataset.path} "
                    f"(commit {found}, the dataset is at {expected}, version "
                    f"{record.version}{differ}): reading the tables the dataset carries",
                    CadstoreWarning,
                    stacklevel=3,
                )
        return self._carried(kind)

    def _carried(self, kind: str) -> tuple[pa.Table, str] | None:
        """Table ``kind`` as the open version carries it (``None`` if it does not), checked
        against its digest: the dataset's own table is never passed over, only an error.

        Raises
        ------
        CorruptStoreError
            Naming the dataset, if the table is missing, does not match its digest, or is
            unreadable.
        """
        record = self.commit
        if record is None or kind not in record.tables:
            return None
        ref = record.tables[kind]
        raw = self.dataset.member(ref.member)
        where = f"{self.dataset.path}:{ref.member}"
        if raw is None or hashlib.sha256(raw).hexdigest() != ref.sha256:
            raise CorruptStoreError(
                self.dataset.path, f"member {ref.member} is missing or does not match its digest"
            )
        table, _ = _parse_table(raw, where)
        return table, where


def check_item_codes(table: pa.Table, where: str, n_items: int | None = None) -> None:
    """Check the ``id`` column of an infoset: integer item codes, within ``n_items``.

    Raises
    ------
    CorruptStoreError
        Naming ``where`` and the problem (string ids, negative or out-of-range codes).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if "id" not in table.column_names:
        raise CorruptStoreError(where, "the infoset has no 'id' column of item codes")
    column = table.column("id")
    if not pa.types.is_integer(column.type):
        raise CorruptStoreError(
            where, f"the infoset's 'id' column holds {column.type}, not integer item codes"
        )
    if n_items is not None and len(column) and column.null_count == 0:
        low, high = pc.min(column).as_py(), pc.max(column).as_py()
        if low < 0 or high >= n_items:
            raise CorruptStoreError(
                where,
                f"the infoset's item codes run {low}..{high}; the dataset has {n_items} items",
            )
