"""Comparing two merged datasets: the same data, whatever version they are.

Two merges of the same items give the same bytes member for member (whatever the number
of workers, on Dask or on S3), except for what makes each one a version of its own: the
commit record's id and parent, and the commit id stamped in the tables it carries. This
compares everything else exactly.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pyarrow.parquet as pq

from cadstore.format.commit import COMMIT_MEMBER, STAMP_KEY, TABLE_KINDS, table_member

_TABLES = {table_member(kind) for kind in TABLE_KINDS}


def members(path: Path) -> dict[str, bytes]:
    """Every member of a zip or directory dataset, by key."""
    if path.is_dir():  # in name order: a folder has no order of its own
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {p.relative_to(path).as_posix(): p.read_bytes() for p in files}
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _unversioned_table(raw: bytes) -> object:
    table = pq.read_table(io.BytesIO(raw))
    metadata = dict(table.schema.metadata or {})
    assert STAMP_KEY in metadata, "a committed table carries its commit id"
    del metadata[STAMP_KEY]
    return table.replace_schema_metadata(metadata), metadata


def _unversioned_record(raw: bytes) -> dict[str, object]:
    doc = json.loads(raw)
    assert len(doc.pop("id")) == 32
    doc.pop("parent")
    doc.get("summary", {}).pop("commit", None)
    for ref in doc.get("tables", {}).values():
        assert len(ref.pop("sha256")) == 64  # of the stamped table, so it differs too
    return doc


def assert_same_dataset(a: Path, b: Path, *, same_operation: bool = True) -> None:
    """Assert ``a`` and ``b`` hold the same members with the same bytes, but for the
    version's own id (in its commit record and its tables' stamps).

    Without ``same_operation`` (an append against a merge of every item) the commit
    records are not compared: each describes the operation that wrote it.
    """
    left, right = members(a), members(b)
    assert list(left) == list(right), "the same members, in the same order"
    for key, data in left.items():
        if key == COMMIT_MEMBER:
            if not same_operation:
                continue
            assert _unversioned_record(data) == _unversioned_record(right[key])
            assert len(data) == len(right[key])
        elif key in _TABLES:
            (t1, m1), (t2, m2) = _unversioned_table(data), _unversioned_table(right[key])
            assert t1.equals(t2) and m1 == m2, key
            assert len(data) == len(right[key]), key
        else:
            assert data == right[key], key
    if a.is_file() and same_operation:
        assert a.stat().st_size == b.stat().st_size
