"""Appending items to an existing dataset, without merging the old ones again.

Shards that hold only old rows are copied byte for byte; each array's last, partly filled
shard is decoded and completed with the new rows; provenance, offsets, per-item values,
names and metadata are written again. Items whose name is already in the dataset are
skipped, so appending is idempotent, and the result is the dataset a full merge of the
same items would give. The new dataset replaces the old one atomically, through the same
:func:`cadstore.io.publish.open_sink` a merge uses.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cadstore.dataset.reader import DatasetReader
from cadstore.errors import MergeError
from cadstore.format.commit import COMMIT_MEMBER, TABLE_KINDS, table_member
from cadstore.format.layout import ITEM_NAMES, OFFSETS, file_id_code_name
from cadstore.format.limits import DEFAULT_LIMITS, Limits
from cadstore.format.triangle import UPPER_TRIANGLE
from cadstore.io.location import Location, resolve
from cadstore.io.publish import TEMP_PREFIX, open_sink, publish_file
from cadstore.lifecycle import PublishedFiles, Transaction, TrustedTables, copy_beside
from cadstore.merging.options import DEFAULT_LEVEL, MergeOptions, MergeResult
from cadstore.merging.plan import ArrayPlan, GroupPlan, holding, plan_groups, split_triangles
from cadstore.merging.run import (
    dataset_exists,
    make_pool,
    merge_version,
    order_files,
    published_fields,
    summary_fields,
    writable_target,
)
from cadstore.merging.scan import ItemScan, check_buckets, item_name_of, scan_all
from cadstore.merging.tables import (
    extend_attribset,
    extend_table,
    item_tables,
    tables_summary,
)
from cadstore.merging.write import (
    RowBuffer,
    ShardWriter,
    group_summary,
    inner_zstd_level,
    shard_key,
    stream_items,
    write_root,
    write_structure,
)
from cadstore.schema import Schema

__all__ = ["append_items"]


def append_items(
    dataset: str | os.PathLike[str] | Location,
    files: Sequence[str | os.PathLike[str] | Location],
    *,
    workers: int | None = 0,
    progress: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    storage_options: Mapping[str, Any] | None = None,
    published: PublishedFiles | None = None,
    lock_timeout: float = 0.0,
    create: bool = False,
    schema: Any = None,
    compression_level: int | None = DEFAULT_LEVEL,
    face_pair_level: int | None = None,
    face_pair_layout: str = "auto",
) -> MergeResult:
    """Append new items to an existing dataset without re-merging the old ones.

    A zip dataset at a URL is copied to local scratch space, appended to there and
    published again with one upload; items may be URLs too. ``storage_options`` are the
    fsspec options for URLs among the dataset and the items. ``published`` are the copies
    to publish after the commit (see :func:`cadstore.merge`); ``lock_timeout`` the seconds
    to wait for another writer. With ``create``, a missing dataset is merged from the
    items (with ``schema``, ``compression_level``, ``face_pair_level`` and
    ``face_pair_layout``), under the
    same lock, after recovery: a dataset an interrupted writer left between two renames is
    appended to, not merged over. An existing dataset is continued at the zstd levels it
    has, whatever these say.

    Raises
    ------
    MergeError
        If there is no dataset, its name ends with the item suffix ``.data`` or with
        ``.flow``, ``.infoset`` or ``.attribset`` (see
        :func:`~cadstore.merging.run.check_dataset_name`), a new item brings a group or
        array the dataset does not have, or a dtype or shape that does not fit the
        existing array (re-merge everything in that case), or the dataset is a
        directory-layout dataset at a URL.
    DatasetLockedError
        If another process is writing the dataset; nothing was changed.
    """
    target = writable_target(resolve(dataset, storage_options, shared=True))
    items = [resolve(f, storage_options, shared=True) for f in files]
    options = MergeOptions(
        compression_level=compression_level,
        face_pair_level=face_pair_level,
        face_pair_layout=face_pair_layout,
        workers=workers,
        progress=progress,
        limits=limits,
    )
    started = time.perf_counter()
    with Transaction(target, "append", published, timeout=lock_timeout) as txn:
        if not dataset_exists(target):
            if not create:
                raise MergeError(f"no dataset at {target.path!r} to append to")
            return merge_version(txn, items, target, schema, options)
        if target.remote:
            result = _append_remote(target, items, options, txn)
        else:
            with DatasetReader(target, limits=limits, stored_layout=True) as reader:
                result = _append_local(reader, target, items, options, txn)
        result.recovered = list(txn.recovered)
        result.warnings[:0] = txn.recovered
        if txn.committed:
            txn.publish(**published_fields(txn, result.stored_bytes))
    result.seconds = time.perf_counter() - started
    return result


def _dataset_raw_bytes(txn: Transaction, appended: int) -> int | None:
    """The decoded bytes of the dataset once ``appended`` more are added: those its
    current version records, plus ``appended``; ``None`` when it records none (a
    dataset without a commit record), rather than this run's bytes under the dataset's
    name, beside a ``stored_bytes`` of the whole dataset. Also ``None`` after a version
    an older cadstore appended: its ``raw_bytes`` was that run's only (it recorded no
    ``appended_raw_bytes``), and a total built on it would be wrong in every later
    version."""
    summary = {} if txn.parent is None else txn.parent.summary
    if "appended" in summary and "appended_raw_bytes" not in summary:
        return None
    recorded = summary.get("raw_bytes")
    if not isinstance(recorded, int) or isinstance(recorded, bool) or recorded < 0:
        return None
    return recorded + appended


def _append_local(
    reader: DatasetReader,
    target: Location,
    items: Sequence[Location],
    options: MergeOptions,
    txn: Transaction,
    publish: Callable[[], None] | None = None,
) -> MergeResult:
    existing = set(reader.item_names)
    errors: list[dict[str, str]] = []
    warnings_: list[str] = []
    new_items = []
    for item in items:
        name = item_name_of(item)
        if name in existing:
            warnings_.append(f"{name} is already in the dataset; skipped")
        else:
            new_items.append(item)
    ordered = order_files(new_items, None)
    check_buckets(ordered)
    pool = make_pool(options) if len(ordered) > 1 else None
    try:
        scans = scan_all(ordered, options.limits, pool, errors, options.progress)
        stored = reader.metadata.get("_storage_schema")
        schema = Schema.from_any(stored) if stored else None
        known = _array_groups(reader)
        groups, kept, plan_warnings = plan_groups(scans, schema, errors, known)
        if len(kept) != len(scans):
            scans = [scans[c] for c in kept]
            groups, _, plan_warnings = plan_groups(scans, schema, [], known)
        warnings_ += plan_warnings
        if scans:
            # Face-pair arrays keep the dataset's layout: triangles stay triangles (every
            # new item must be symmetric in them), full arrays stay full.
            groups = split_triangles(groups, scans, _triangles_of(reader))
            _check_fits(reader, groups)
            result = _write_appended(
                reader,
                target,
                scans,
                groups,
                pool,
                options,
                schema,
                txn,
                publish,
                errors=errors,
                warnings=warnings_,
            )
        else:
            result = MergeResult(
                path=target.path,
                items=[],
                errors=[],
                groups={},
                raw_bytes=0,
                stored_bytes=target.size() if target.isfile() else 0,
                seconds=0.0,
                warnings=warnings_,
                total_items=len(existing),
            )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    result.errors = errors
    return result


def _array_groups(reader: DatasetReader) -> dict[str, str]:
    """The group of each array the dataset holds, by name (names in two groups left out):
    the new items' arrays go where the dataset has them."""
    found: dict[str, str] = {}
    twice: set[str] = set()
    for group in reader.groups:
        for name in reader.arrays(group):
            if found.setdefault(name, group) != group:
                twice.add(name)
    return {name: group for name, group in found.items() if name not in twice}


def _append_remote(
    target: Location, items: Sequence[Location], options: MergeOptions, txn: Transaction
) -> MergeResult:
    """Append to a zip dataset at a URL: copy it to scratch, append, upload once (the
    upload is the commit)."""
    if not target.isfile():
        raise MergeError(
            f"{target}: appending to a directory-layout dataset on an object store is "
            "not supported (objects cannot be swapped atomically); merge all items again"
        )
    scratch = tempfile.mkdtemp(prefix=TEMP_PREFIX)
    try:
        local = os.path.join(scratch, "staged.dataset")
        with target.open_read() as fin, open(local, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        staged = resolve(local)
        uploaded: list[int] = []

        def upload() -> None:
            uploaded.append(publish_file(local, target))

        with DatasetReader(staged, limits=options.limits, stored_layout=True) as reader:
            result = _append_local(reader, staged, items, options, txn, publish=upload)
        result.stored_bytes = uploaded[0] if uploaded else target.size()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.path = target.path
    return result


def _check_fits(reader: DatasetReader, groups: dict[str, GroupPlan]) -> None:
    for group in groups.values():
        if group.name not in reader.groups:
            raise MergeError(
                f"new items bring group {group.name!r}, which the dataset lacks; "
                "merge all items again to add it"
            )
        for plan in group.arrays.values():
            if plan.name not in reader.arrays(group.name):
                raise MergeError(
                    f"new items bring array {group.name}/{plan.name}, which the "
                    "dataset lacks; merge all items again to add it"
                )
            meta = reader.array_meta(group.name, plan.name)
            stored_per_item = reader.is_per_item(group.name, plan.name)
            if plan.per_item != stored_per_item:
                raise MergeError(
                    f"{group.name}/{plan.name}: new items hold {holding(plan.per_item)}, the "
                    f"dataset holds {holding(stored_per_item)}"
                )
            if tuple(meta.shape[1:]) != plan.trailing and not plan.per_item:
                raise MergeError(
                    f"{group.name}/{plan.name}: new items have trailing shape "
                    f"{plan.trailing}, the dataset has {tuple(meta.shape[1:])}"
                )
            # Strings (a merge plans them as objects) continue strings, numbers numbers.
            strings = plan.dtype == np.dtype(object)
            if strings != meta.is_string:
                new = "strings" if strings else str(plan.dtype)
                stored = "strings" if meta.is_string else str(meta.dtype)
                raise MergeError(
                    f"{group.name}/{plan.name}: new items hold {new}, the dataset holds {stored}"
                )
            if strings:
                continue
            if not np.can_cast(plan.dtype, meta.dtype, "safe"):
                raise MergeError(
                    f"{group.name}/{plan.name}: new items hold {plan.dtype}, "
                    f"which does not fit the dataset's {meta.dtype}"
                )
            plan.dtype = meta.dtype


def _triangles_of(reader: DatasetReader) -> dict[str, set[str]]:
    """``{face-pair group: arrays}`` the dataset (read as stored) keeps as triangles."""
    found: dict[str, set[str]] = {}
    for group in reader.groups:
        attrs = reader.group_attributes(group)
        if attrs.get("cadstore_layout") == UPPER_TRIANGLE:
            source = str(attrs.get("source_group"))
            found[source] = {
                a for a in reader.arrays(group) if a not in (OFFSETS, file_id_code_name(group))
            }
    return found


@dataclass
class _Continuation:
    """How the existing dataset continues: its groups, and what must be written again."""

    plans: dict[str, GroupPlan]
    old_totals: dict[str, int]
    buffers: dict[tuple[str, str], RowBuffer] = field(default_factory=dict)
    regenerated: set[str] = field(
        default_factory=lambda: {
            "zarr.json",
            "metadata.json",
            COMMIT_MEMBER,
            *(table_member(kind) for kind in TABLE_KINDS),
        }
    )


def _continue_groups(reader: DatasetReader, groups: dict[str, GroupPlan]) -> dict[str, GroupPlan]:
    """Every group and array of the dataset, whether or not the new items have it."""
    plans: dict[str, GroupPlan] = {}
    for name in reader.groups:
        attrs = reader.group_attributes(name)
        plan_group = groups.get(name) or GroupPlan(
            name=name,
            primary_dim=reader.primary_dimension(name),
            special=attrs.get("special_processing"),
        )
        plan_group.primary_dim = reader.primary_dimension(name)
        if attrs.get("cadstore_layout") == UPPER_TRIANGLE:
            plan_group.source = str(attrs.get("source_group"))
        if not plan_group.order and isinstance(attrs.get("array_order"), list):
            plan_group.order = [str(a) for a in attrs["array_order"]]
        for array in reader.arrays(name):
            if array in (OFFSETS, file_id_code_name(name)):
                continue
            meta = reader.array_meta(name, array)
            # Strings are planned as objects, as a merge plans them.
            dtype = np.dtype(object) if meta.is_string else meta.dtype
            plan = plan_group.arrays.get(array)
            if plan is None:
                plan = plan_group.arrays[array] = ArrayPlan(
                    group=name,
                    name=array,
                    per_item=reader.is_per_item(name, array),
                    dtype=dtype,
                    trailing=tuple(meta.shape[1:]),
                )
            plan.dims = list(meta.dims or [])
            plan.dtype = dtype
            plan.triangle = plan_group.source is not None and not plan.per_item
            if not plan.per_item:
                config = meta.codecs[0].get("configuration") or {}
                plan.inner_rows = int(config["chunk_shape"][0])
                plan.shard_rows = int(meta.chunks[0])
        plans[name] = plan_group
    return plans


def _carry_over(reader: DatasetReader, plans: dict[str, GroupPlan]) -> _Continuation:
    """Decide which members are copied and which written again; load the partial shards."""
    members = list(reader.members())
    cont = _Continuation(plans, {})
    cont.regenerated.update(k for k in members if k.startswith(f"{ITEM_NAMES}/"))
    for group in plans.values():
        old_total = int(reader.offsets(group.name)[-1])
        cont.old_totals[group.name] = old_total
        cont.regenerated.update(
            k
            for k in members
            if k.startswith(f"{group.name}/{OFFSETS}/") or k == f"{group.name}/zarr.json"
        )
        code_array = file_id_code_name(group.name)
        code_shard = reader.array_meta(group.name, code_array).chunks[0]
        code_prefix = f"{group.name}/{code_array}/"
        cont.regenerated.update(
            k
            for k in members
            if k.startswith(code_prefix) and not _full_shard(k, code_prefix, code_shard, old_total)
        )
        for plan in group.arrays.values():
            path = f"{group.name}/{plan.name}"
            cont.regenerated.add(f"{path}/zarr.json")
            if plan.per_item:
                cont.regenerated.update(k for k in members if k.startswith(path + "/"))
                continue
            buf = RowBuffer(plan)
            full = old_total // plan.shard_rows
            buf.next_shard = full
            if old_total > full * plan.shard_rows:
                lo = full * plan.shard_rows
                old = reader.offsets(group.name)
                # Where the old items of the partial shard begin, for its item frames.
                # (unique: items without rows start where the next one does)
                starts = np.unique(old[(old >= lo) & (old < old_total)]).tolist()
                buf.append(reader.read_rows(group.name, plan.name, lo, old_total), starts)
                cont.regenerated.add(shard_key(group, plan, full))
            cont.buffers[(group.name, plan.name)] = buf
    return cont


def _write_appended(
    reader: DatasetReader,
    target: Location,
    scans: Sequence[ItemScan],
    groups: dict[str, GroupPlan],
    pool: cf.Executor | None,
    options: MergeOptions,
    schema: Schema | None,
    txn: Transaction,
    publish: Callable[[], None] | None = None,
    *,
    errors: Sequence[dict[str, str]] = (),
    warnings: Sequence[str] = (),
) -> MergeResult:
    """Write and commit the new version; ``errors`` (the items skipped) and ``warnings``
    of this append go into the version's summary, so its ``.flow`` lists them as a
    merge's does."""
    started = time.perf_counter()
    level = _existing_level(reader)
    options = MergeOptions(
        compression_level=level,
        workers=options.workers,
        progress=options.progress,
        limits=options.limits,
    )
    cont = _carry_over(reader, _continue_groups(reader, groups))
    plans = cont.plans
    sink = open_sink(target, directory=target.isdir(), exclusive=True)
    try:
        txn.begin(sink)
        # As the dataset was written: its checksums (or none) and provenance chunk grids.
        writer = ShardWriter.continuing(sink, pool, options, reader)
        for key in reader.members():
            if key not in cont.regenerated:
                writer.add(key, reader.member(key) or b"")
        per_item: dict[tuple[str, str], list[Any]] = {
            (group.name, plan.name): list(reader.read_array(group.name, plan.name))
            for group in plans.values()
            for plan in group.arrays.values()
            if plan.per_item
        }
        raw_total = stream_items(
            scans, groups, plans, cont.buffers, per_item, writer, options, "append"
        )
        writer.flush()
        offsets = {}
        for group in plans.values():
            new_rows = np.array([group.rows.get(c, 0) for c in range(len(scans))], dtype=np.int64)
            old = reader.offsets(group.name)
            offsets[group.name] = np.concatenate([old, old[-1] + np.cumsum(new_rows)])
        names = [*reader.item_names, *(s.name for s in scans)]
        docs = write_structure(writer, plans, offsets, per_item, names, code_start=cont.old_totals)
        write_root(writer, docs, len(names), plans, offsets, schema)
        writer.flush()
        written = time.perf_counter()
        info, tables = _appended_tables(reader, scans, schema, options, txn)
        result = MergeResult(
            path=target.path,
            items=[s.name for s in scans],
            errors=list(errors),
            groups=group_summary(plans, offsets),
            raw_bytes=raw_total,
            stored_bytes=0,
            seconds=0.0,
            warnings=list(warnings),
            total_items=len(names),
        )
        txn.durations = {"append": written - started, "info": time.perf_counter() - written}
        info_summary = tables_summary(info, tables, appended=True)
        extra = {
            "file_count": len(names),
            "appended": len(scans),
            # Of the whole dataset, as file_count and stored_bytes are; this run's apart.
            "raw_bytes": _dataset_raw_bytes(txn, raw_total),
            "appended_raw_bytes": raw_total,
            "info": info_summary,
        }
        record = txn.stage(sink, len(names), tables, summary_fields(result, None, extra))
        result.warnings += info.warnings  # in the manifest, in its info.appended_items
        result.version, result.commit = record.version, record.id
        reader.close()

        def commit() -> None:
            sink.commit()
            if publish is not None:
                publish()

        txn.commit(commit)  # the commit point
    except BaseException:
        sink.abort()
        raise
    result.stored_bytes = target.size() if target.isfile() else writer.stored
    return result


def _appended_tables(
    reader: DatasetReader,
    scans: Sequence[ItemScan],
    schema: Schema | None,
    options: MergeOptions,
    txn: Transaction,
) -> tuple[Any, dict[str, Any]]:
    """The new version's tables: the current ones (the copies when they belong to the
    version, else those it carries; a split recorded in the ``.infoset`` is kept) extended
    with the new items' rows. A dataset written before versions were recorded, whose
    tables cannot be found, gets none (readers keep using the files beside it)."""
    first = len(reader.item_names)
    info, infoset, attribset = item_tables(
        [s.location for s in scans],
        {s.name: first + i for i, s in enumerate(scans)},
        schema,
        options.limits,
    )
    trusted = TrustedTables(reader)
    published = txn.published.by_kind()
    current: dict[str, Any] = {}
    for kind in TABLE_KINDS:
        copy = published.get(kind) or copy_beside(reader.location, kind)
        found = trusted.read(kind, copy)
        if found is None and first:
            return info, {}
        current[kind] = None if found is None else found[0]
    extended = extend_table(current["infoset"], infoset, ["id"], info.field_values)
    return info, {
        "infoset": extended,
        "attribset": extend_attribset(current["attribset"], attribset, extended, info),
    }


def _full_shard(key: str, prefix: str, shard_rows: int, total: int) -> bool:
    """Whether chunk ``key`` (below ``prefix``) holds only rows below ``total``."""
    rest = key[len(prefix) :]
    if not rest.startswith("c/"):
        return False
    shard = int(rest.split("/")[1])
    return (shard + 1) * shard_rows <= total


def _existing_level(reader: DatasetReader) -> int | None:
    """The dataset's zstd level (appended shards and small arrays match it).

    Read from a provenance array (``file_id_code_<group>``), which is always at the
    dataset's level: a data array may be at another (the face pairs', or small rows'
    stored as they are).
    """
    for group in reader.groups:
        name = file_id_code_name(group)
        if name not in reader.arrays(group):
            continue
        codecs = reader.array_meta(group, name).codecs
        if codecs and codecs[0].get("name") == "sharding_indexed":
            return inner_zstd_level(codecs)
    return DEFAULT_LEVEL
