"""The commit record of a dataset version, and the tables a version carries.

Every merge and append publishes a new version of a dataset in one atomic step (the
dataset's own rename, or its single upload). Inside that version, beside the Zarr
hierarchy and ``metadata.json``, it stores::

    commit.json          this record: id, version number, parent, operation, item count,
                         the tables' digests, the sibling files it publishes, its summary
    infoset.parquet      the .infoset of this version
    attribset.parquet    the .attribset of this version

so the dataset alone says which tables belong to it. The ``.infoset``, ``.attribset`` and
``.flow`` beside the dataset are copies published after the commit; each carries the id of
the commit it belongs to (the Parquet schema metadata key :data:`STAMP_KEY`, the manifest's
``commit`` entry). A reader that finds a copy from another version reads the dataset's own
tables instead, and the next writer publishes the copies again (:mod:`cadstore.lifecycle`).
Zarr readers ignore the extra members: the root ``zarr.json`` carries consolidated metadata,
so they never list the store.

Nothing here reads or writes files.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cadstore.errors import CorruptStoreError, MergeError

__all__ = [
    "COMMIT_FORMAT",
    "COMMIT_MEMBER",
    "STAMP_KEY",
    "TABLE_KINDS",
    "CommitRecord",
    "TableRef",
    "is_sibling_name",
    "new_commit_id",
    "table_member",
]

#: Format marker of a commit record.
COMMIT_FORMAT = "cadstore-commit/1"
#: The member holding the commit record.
COMMIT_MEMBER = "commit.json"
#: Key of the commit id in the Parquet schema metadata of a published table.
STAMP_KEY = b"cadstore.commit"
#: The tables a version carries, by kind; each is the member ``<kind>.parquet``.
TABLE_KINDS = ("infoset", "attribset")
#: The sibling files a commit may publish, by kind.
_PUBLISHED_KINDS = (*TABLE_KINDS, "flow")
#: Largest commit record read.
_MAX_RECORD_BYTES = 16 * 1024**2


def table_member(kind: str) -> str:
    """The member of a dataset holding its table ``kind`` (``infoset.parquet``)."""
    return f"{kind}.parquet"


def new_commit_id() -> str:
    """A fresh commit id: 16 random bytes in hex, never reused."""
    return secrets.token_hex(16)


def is_sibling_name(name: object) -> bool:
    """Whether ``name`` is a plain file name (no folder, no ``..``): what a commit may list.

    A dataset may come from anywhere: the names it lists are only ever looked up in its
    own folder, and only when they are plain names.
    """
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name not in (".", "..")
        and not any(c in name for c in "/\\\0")
        and not name.startswith(".")
    )


@dataclass(frozen=True)
class TableRef:
    """One table a version carries: its member, SHA-256 and row count."""

    member: str
    sha256: str
    rows: int


@dataclass(frozen=True)
class CommitRecord:
    """What a version of a dataset is.

    Attributes
    ----------
    id
        Random, unique to this version.
    version
        1 for the first merge, then one more per append.
    parent
        The id of the version this one replaced (``None`` for a first merge, or over a
        dataset written before versions were recorded).
    operation
        ``"merge"`` or ``"append"``.
    items
        How many items the version holds.
    tables
        The tables it carries, by kind.
    published
        The sibling files the committing writer publishes after the commit, by kind
        (``"infoset"``, ``"attribset"``, ``"flow"``): plain names in the dataset's folder.
        The next writer publishes them again if the writer died before it had.
    summary
        The merge summary the manifest reports (counts, groups, errors, warnings).

    The record holds nothing that differs between two runs of the same merge but the id,
    so two equal versions differ only there (no times, no durations: those go to the
    manifest the writer publishes).
    """

    id: str
    version: int
    parent: str | None
    operation: str
    items: int
    tables: dict[str, TableRef] = field(default_factory=dict)
    published: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        commit_id: str,
        parent: CommitRecord | None,
        operation: str,
        items: int,
        tables: Mapping[str, tuple[bytes, int]],
        published: Mapping[str, str],
        summary: Mapping[str, Any],
    ) -> CommitRecord:
        """A record for new version ``commit_id`` after ``parent``.

        ``tables`` maps a kind to the table's stored bytes (already stamped with
        ``commit_id``) and its row count.
        """
        return cls(
            id=commit_id,
            version=1 if parent is None else parent.version + 1,
            parent=None if parent is None else parent.id,
            operation=operation,
            items=items,
            tables={
                kind: TableRef(table_member(kind), hashlib.sha256(data).hexdigest(), rows)
                for kind, (data, rows) in tables.items()
            },
            published={k: v for k, v in published.items() if is_sibling_name(v)},
            summary=dict(summary),
        )

    def to_bytes(self) -> bytes:
        """The record as stored in :data:`COMMIT_MEMBER`."""
        doc = {
            "format": COMMIT_FORMAT,
            "id": self.id,
            "version": self.version,
            "parent": self.parent,
            "operation": self.operation,
            "items": self.items,
            "tables": {
                kind: {"member": ref.member, "sha256": ref.sha256, "rows": ref.rows}
                for kind, ref in self.tables.items()
            },
            "published": self.published,
            "summary": self.summary,
        }
        raw = json.dumps(doc, indent=1, allow_nan=False, default=str).encode("utf-8")
        # The summary lists every item skipped with its error: with many thousands of them
        # the messages are shortened, then dropped (the files stay listed), so that no
        # version is written that its readers would refuse as too large.
        for keep in (200, 0):
            if len(raw) <= _MAX_RECORD_BYTES:
                return raw
            errors = self.summary.get("errors")
            if isinstance(errors, list):
                doc["summary"] = {**self.summary, "errors": [_shorten(e, keep) for e in errors]}
            raw = json.dumps(doc, indent=1, allow_nan=False, default=str).encode("utf-8")
        if len(raw) > _MAX_RECORD_BYTES:
            raise MergeError(
                f"the commit record of this version would be {len(raw)} bytes, more than "
                f"{_MAX_RECORD_BYTES}; nothing was committed"
            )
        return raw

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> CommitRecord:
        """Parse a stored record, checking every field.

        Raises
        ------
        CorruptStoreError
            Naming ``where`` (the dataset) and what is wrong.
        """

        def bad(problem: str) -> CorruptStoreError:
            return CorruptStoreError(where, f"{COMMIT_MEMBER}: {problem}")

        if len(raw) > _MAX_RECORD_BYTES:
            raise bad(f"{len(raw)} bytes, more than {_MAX_RECORD_BYTES}")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise bad(f"not valid JSON ({type(exc).__name__})") from None
        if not isinstance(doc, dict) or doc.get("format") != COMMIT_FORMAT:
            raise bad(f"not a commit record of format {COMMIT_FORMAT!r}")
        commit_id, version, parent = doc.get("id"), doc.get("version"), doc.get("parent")
        if not isinstance(commit_id, str) or not commit_id:
            raise bad("no commit id")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise bad(f"version {version!r} is not a positive integer")
        if parent is not None and not isinstance(parent, str):
            raise bad(f"parent {parent!r} is not a commit id")
        items = doc.get("items")
        if not isinstance(items, int) or isinstance(items, bool) or items < 0:
            raise bad(f"items {items!r} is not a count")
        tables: dict[str, TableRef] = {}
        raw_tables = doc.get("tables") or {}
        if not isinstance(raw_tables, dict):
            raise bad("tables is not an object")
        for kind, ref in raw_tables.items():
            if kind not in TABLE_KINDS or not isinstance(ref, dict):
                raise bad(f"unknown table {kind!r}")
            member, digest, rows = ref.get("member"), ref.get("sha256"), ref.get("rows")
            if member != table_member(kind) or not isinstance(digest, str):
                raise bad(f"table {kind!r} is not described by member and sha256")
            if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
                raise bad(f"table {kind!r} has row count {rows!r}")
            tables[kind] = TableRef(member, digest, rows)
        published = doc.get("published") or {}
        summary = doc.get("summary") or {}
        if not isinstance(published, dict) or not isinstance(summary, dict):
            raise bad("published and summary must be objects")
        return cls(
            id=commit_id,
            version=version,
            parent=parent,
            operation=str(doc.get("operation", "")),
            items=items,
            tables=tables,
            # Only plain names of known kinds: a dataset cannot make a writer publish
            # anything outside its own folder.
            published={
                k: v for k, v in published.items() if k in _PUBLISHED_KINDS and is_sibling_name(v)
            },
            summary=summary,
        )


def _shorten(error: Any, keep: int) -> Any:
    """A summary's error entry with its message cut to ``keep`` characters."""
    if not isinstance(error, dict) or "error" not in error:
        return error
    message = str(error["error"])
    return {**error, "error": message[:keep] + ("..." if len(message) > keep else "")}
