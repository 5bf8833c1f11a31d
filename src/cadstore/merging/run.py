"""A merge from start to finish: scan, plan, write, and the one commit that publishes it.

:func:`merge_items` runs the stages in order over the items, in item-code order, inside a
:class:`~cadstore.lifecycle.Transaction` (the dataset's writer lock, held throughout, and
recovery of what an interrupted writer left):

1. **scan** (:mod:`~cadstore.merging.scan`): open each item, read its array metadata and
   verify the CRC of every member; unreadable items are skipped and listed;
2. **plan** (:mod:`~cadstore.merging.plan`): groups, promoted dtypes, rows and offsets,
   shard sizes, all before a row is read;
3. **write** (:mod:`~cadstore.merging.write`): decode the items and stream their rows into
   shards, into a :class:`~cadstore.io.publish.Sink`, here and in a pool of workers, or on
   a Dask cluster (:mod:`~cadstore.merging.distributed`); then the version's tables and
   commit record (:mod:`~cadstore.format.commit`);
4. **commit**: the sink publishes the dataset at once (a rename, or one upload). That is
   the commit point: before it, the destination is untouched; after it, it is complete,
   tables included. The copies beside it (``.infoset``, ``.attribset``, ``.flow``) follow.

With ``workers > 1`` a pool decodes items and encodes shards while only this thread adds
them to the sink, whole shards in a fixed order, so the output is the same bytes whatever
the number of workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cadstore.errors import CadstoreError, MergeError, OutputExistsError, Remedy
from cadstore.format.limits import DEFAULT_LIMITS, Limits
from cadstore.io.location import Location, resolve
from cadstore.io.publish import check_output_folder, open_sink
from cadstore.lifecycle import PublishedFiles, Transaction, dataset_exists
from cadstore.merging.distributed import dask_map, scan_on_dask, write_shards_on_dask
from cadstore.merging.options import (
    DEFAULT_INNER_BYTES,
    DEFAULT_LEVEL,
    DEFAULT_SHARD_BYTES,
    MergeOptions,
    MergeResult,
)
from cadstore.merging.plan import describe_errors, plan_merge
from cadstore.merging.scan import check_buckets, item_name_of, keep_scans, scan_all
from cadstore.merging.tables import item_tables, tables_summary
from cadstore.merging.write import (
    ShardWriter,
    array_levels,
    finish_dataset,
    group_summary,
    inexact_items,
    per_item_values,
    stream_plan,
)
from cadstore.processes import mp_context
from cadstore.workers import ProcessPool

__all__ = [
    "check_dataset_name",
    "dataset_exists",
    "duration_field",
    "is_cadstore_dataset",
    "make_pool",
    "merge_items",
    "merge_version",
    "order_files",
    "published_fields",
    "summary_fields",
    "writable_target",
]


#: The suffix of an item file, which a dataset's name must not end with.
ITEM_SUFFIX = ".data"
#: The suffixes of the files a merge publishes beside its dataset, which a dataset's name
#: must not end with either.
COPY_SUFFIXES = (".flow", ".infoset", ".attribset")


def check_dataset_name(path: str) -> None:
    """Refuse a dataset path ending with the item suffix ``.data`` (``x.data``, ``x.data/``)
    or with the suffix of a file published beside a dataset (``.flow``, ``.infoset``,
    ``.attribset``).

    A dataset named like an item is taken for one wherever items are looked for by name:
    a later merge of its folder lists it among the items. A dataset named ``x.flow`` is
    a zip where its readers look for a manifest, and gets ``x.flow.flow`` beside it (or,
    on the command line, which adds ``.dataset``, a new ``x.flow.dataset``, also under
    ``--append`` to the dataset whose manifest ``x.flow`` is). Such names are a mistake
    for ``x.dataset``, so they are refused before anything is written.

    Parameters
    ----------
    path
        The dataset's path or URL, as given.

    Raises
    ------
    MergeError
        Naming the path and the name to use instead.
    """
    stem = path.rstrip("/") or path
    if stem.endswith(ITEM_SUFFIX):
        raise MergeError(
            f"{stem}: a dataset cannot be named with the item suffix {ITEM_SUFFIX!r} (a "
            "merge of its folder would take it for an item); name it "
            f"{stem[: -len(ITEM_SUFFIX)]}.dataset"
        )
    for suffix in COPY_SUFFIXES:
        if stem.endswith(suffix):
            raise MergeError(
                f"{stem}: a dataset cannot be named with the suffix {suffix!r} of the "
                f"{suffix[1:]} a merge writes beside it; name the dataset "
                f"{stem[: -len(suffix)]}.dataset (its {suffix[1:]} is then "
                f"{stem[: -len(suffix)]}{suffix})"
            )


def writable_target(target: Location) -> Location:
    """The dataset a merge or an append writes at ``target``, checked before any work:
    ``x.dataset/`` names ``x.dataset`` (as it does for a directory-layout one), a name
    ending with the item suffix or that of a file published beside a dataset is refused
    (:func:`check_dataset_name`), and so is an output below a file.

    Raises
    ------
    MergeError
        If the name ends with ``.data``, ``.flow``, ``.infoset`` or ``.attribset``.
    OutputExistsError
        If a file is where a folder of the output's path must be.
    """
    check_dataset_name(target.path)
    target = target.with_path(target.path.rstrip("/") or target.path)
    check_output_folder(target)
    return target


def is_cadstore_dataset(target: Location) -> bool:
    """Whether ``target`` holds a dataset cadstore wrote (its root ``zarr.json`` says so).

    Anything else there (a folder of items, an item, a file of notes, nothing) is not;
    a store that cannot be read is not either.
    """
    from cadstore.format.layout import dataset_marker
    from cadstore.io.sources import open_source

    try:
        source = open_source(target, what="dataset")
        try:
            raw = source.get("zarr.json")
        finally:
            source.close()
        document = json.loads(raw) if raw is not None else None
    except (CadstoreError, OSError, ValueError):
        return False
    return isinstance(document, dict) and dataset_marker(document.get("attributes")) is not None


def check_replaceable_dataset(target: Location) -> None:
    """Refuse to replace anything at ``target`` but a dataset (or an empty file or folder).

    ``overwrite`` replaces an earlier merge; an output path mistyped as the folder of the
    items, or as one of them, would otherwise have them all deleted.

    Raises
    ------
    OutputExistsError
        Naming ``target`` and what is there.
    """
    if target.isdir() and not target.listdir():
        return
    if target.isfile() and target.size() == 0:
        return
    if not is_cadstore_dataset(target):
        kind = "a folder" if target.isdir() else "a file"
        raise OutputExistsError(
            f"{target.path}: is {kind} that is not a cadstore dataset; overwrite replaces "
            "only an earlier merge, not this (choose another output path, or remove it "
            "first)"
        )


def merge_items(
    files: Sequence[str | os.PathLike[str] | Location],
    output: str | os.PathLike[str] | Location,
    *,
    schema: Any = None,
    file_id_codes: Mapping[str, int] | None = None,
    compression_level: int | None = DEFAULT_LEVEL,
    face_pair_level: int | None = None,
    inner_bytes: int = DEFAULT_INNER_BYTES,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    shard_rows: Mapping[str, int] | None = None,
    directory: bool = False,
    workers: int | None = 0,
    executor: str = "thread",
    overwrite: bool = False,
    progress: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    storage_options: Mapping[str, Any] | None = None,
    client: Any = None,
    face_pair_layout: str = "auto",
) -> MergeResult:
    """Merge item files into one dataset; see the module docstring.

    Parameters
    ----------
    files
        ``.data`` files (or item directories).
    output
        The ``.dataset`` path.
    schema
        Schema deciding groups, primary dimensions and dims; defaults to the schema stored
        in the items, then to the name rules.
    file_id_codes
        ``{item name: code}``; defaults to codes in the order of ``files``. Codes must be
        ``0..N-1``.
    compression_level, face_pair_level, inner_bytes, shard_bytes, shard_rows, directory,
    workers, executor, progress, limits, face_pair_layout
        As the attributes of :class:`~cadstore.merging.options.MergeOptions`.
    overwrite
        Replace an existing dataset at ``output``.
    storage_options
        fsspec options (credentials, endpoint) for inputs and output given as URLs such as
        ``s3://bucket/...``; otherwise they come from fsspec's configuration and the
        environment.
    client
        A ``distributed.Client``: items are scanned and output shards encoded on its
        workers (see :mod:`cadstore.merging.distributed`); ``workers`` is then ignored.
        The result is byte for byte the same as without it.

    Raises
    ------
    MergeError
        If ``output`` ends with the item suffix ``.data`` (refused before anything is
        written), exists (without ``overwrite``), names repeat, codes are not
        ``0..N-1``, no item is readable, an array has incompatible dtypes across items,
        or a Dask worker was lost for good.
    StorageAccessError, StorageUnavailableError
        When an object store refuses the credentials or cannot be reached; nothing is
        published and the merge can be run again.
    """
    options = MergeOptions(
        compression_level=compression_level,
        face_pair_level=face_pair_level,
        inner_bytes=inner_bytes,
        shard_bytes=shard_bytes,
        shard_rows=dict(shard_rows or {}),
        directory=directory,
        workers=workers,
        executor=executor,
        progress=progress,
        limits=limits,
        face_pair_layout=face_pair_layout,
    )
    target = resolve(output, storage_options, shared=True)
    items = [resolve(f, storage_options, shared=True) for f in files]
    return run_merge(items, target, schema, options, file_id_codes, overwrite, client)


def run_merge(
    items: Sequence[Location],
    target: Location,
    schema: Any,
    options: MergeOptions,
    file_id_codes: Mapping[str, int] | None = None,
    overwrite: bool = False,
    client: Any = None,
    published: PublishedFiles | None = None,
    remedies: tuple[Remedy, ...] = (("overwrite", "replace it"),),
) -> MergeResult:
    """:func:`merge_items` on resolved locations and options.

    ``published`` are the copies to publish after the commit (the ``.infoset``,
    ``.attribset`` and ``.flow`` of :func:`cadstore.merge`); without them the version
    carries its tables and nothing else is written. ``remedies`` are the options the
    error for an existing dataset suggests.
    """
    started = time.perf_counter()
    target = writable_target(target)
    with Transaction(target, "merge", published, timeout=options.lock_timeout) as txn:
        if dataset_exists(target):
            if not overwrite:
                resumed = _resumed(txn, target, items)
                if resumed is not None:
                    return resumed
                raise MergeError.suggesting(f"{target} already exists", *remedies)
            check_replaceable_dataset(target)
        result = merge_version(txn, items, target, schema, options, file_id_codes, client)
    result.seconds = time.perf_counter() - started
    return result


def merge_version(
    txn: Transaction,
    items: Sequence[Location],
    target: Location,
    schema: Any,
    options: MergeOptions,
    file_id_codes: Mapping[str, int] | None = None,
    client: Any = None,
) -> MergeResult:
    """Merge ``items`` into a new version of ``target`` within ``txn``, whose lock is
    held: scan, plan, write, commit, then publish the copies."""
    result, size = _write_version(txn, items, target, schema, options, file_id_codes, client)
    result.stored_bytes = size
    txn.publish(**published_fields(txn, size))
    return result


def published_fields(txn: Transaction, size: int) -> dict[str, Any]:
    """What the manifest a writer publishes holds besides its version's summary: what is
    known only after the commit, or true only of this run."""
    given = txn.published
    fields: dict[str, Any] = {
        "stored_bytes": size,
        "Duration [seconds]": duration_field({**given.durations, **txn.durations}),
    }
    if txn.recovered:
        fields["recovered"] = list(txn.recovered)
    extra = dict(given.fields)
    counts = extra.pop("error_distribution", None)
    fields.update(extra)
    if counts:
        record = txn.record
        own = dict(record.summary.get("error_distribution", {})) if record is not None else {}
        for kind, count in counts.items():
            own[kind] = own.get(kind, 0) + int(count)
        fields["error_distribution"] = own
    return fields


def _write_version(
    txn: Transaction,
    items: Sequence[Location],
    target: Location,
    schema: Any,
    options: MergeOptions,
    file_id_codes: Mapping[str, int] | None,
    client: Any,
) -> tuple[MergeResult, int]:
    """Scan, plan, write and commit the new version; return its result and size."""
    started = time.perf_counter()
    ordered = order_files(items, file_id_codes)
    check_buckets(ordered)
    errors: list[dict[str, str]] = []
    pool = make_pool(options) if client is None and len(ordered) > 1 else None
    try:
        if client is not None:
            scans = keep_scans(scan_on_dask(client, ordered, options.limits), errors)
        else:
            scans = scan_all(ordered, options.limits, pool, errors, options.progress)
        if not scans:
            raise MergeError(
                f"no readable item among {len(ordered)} file(s): {describe_errors(errors)}"
            )
        plan = plan_merge(scans, schema, options, errors)
        # The driver of a Dask merge decodes no item: the workers check the integers.
        run_map = (
            dask_map(client, "checking the items' integers")
            if client is not None
            else map
            if pool is None
            else pool.map
        )
        while inexact := inexact_items(plan, run_map, options):
            # Skipped and listed like the items plan_merge drops; without them the arrays'
            # dtypes may change, so the plan is made again, and checked again.
            errors.extend({"file": plan.scans[c].path, "error": e} for c, e in inexact.items())
            kept = [scan for code, scan in enumerate(plan.scans) if code not in inexact]
            if not kept:
                raise MergeError(f"no item could be merged: {describe_errors(errors)}")
            plan = plan_merge(kept, schema, options, errors)
        sink = open_sink(target, directory=options.directory, exclusive=True)
        try:
            txn.begin(sink)
            writer = ShardWriter(sink, pool, options, levels=array_levels(plan.groups, options))
            per_item = per_item_values(plan)
            if client is not None:
                raw_total = write_shards_on_dask(client, plan, per_item, writer, options.limits)
            else:
                raw_total = stream_plan(plan, per_item, writer, options)
            finish_dataset(writer, plan, per_item)
            written = time.perf_counter()
            names = [s.name for s in plan.scans]
            info, infoset, attribset = item_tables(
                [s.location for s in plan.scans],
                {name: code for code, name in enumerate(names)},
                plan.schema if schema is None else schema,
                options.limits,
            )
            result = MergeResult(
                path=target.path,
                items=names,
                errors=errors,
                groups=group_summary(plan.groups, plan.offsets),
                raw_bytes=raw_total,
                stored_bytes=0,
                seconds=0.0,
                warnings=[*txn.recovered, *plan.warnings, *info.warnings],
                total_items=len(names),
                recovered=list(txn.recovered),
            )
            txn.durations = {"merge": written - started, "info": time.perf_counter() - written}
            tables = {"infoset": infoset, "attribset": attribset}
            info_summary = tables_summary(info, tables)
            summary = summary_fields(result, None, {"info": info_summary})
            # What recovery did is this run's; the tables' warnings are in its info section.
            summary["warnings"] = list(plan.warnings)
            record = txn.stage(sink, len(names), tables, summary)
            result.version, result.commit = record.version, record.id
            txn.commit(sink.commit)  # the commit point
        except BaseException:
            sink.abort()
            raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return result, sink.size


def _resumed(txn: Transaction, target: Location, items: Sequence[Location]) -> MergeResult | None:
    """The result of a merge of ``items`` that an interrupted run had already committed.

    Running the same merge again after it was killed past its commit finds the version
    it committed (its copies just published again by recovery) and reports it, instead of
    refusing because the dataset exists. Only when that version is a merge of exactly
    these items (those it skipped as unreadable included).
    """
    record = txn.resumed
    if record is None or record.operation != "merge":
        return None
    names = {item_name_of(item) for item in items}
    skipped = {
        item_name_of(resolve(str(e.get("file", "")), target.storage_options, shared=True))
        for e in record.summary.get("errors", [])
        if isinstance(e, dict)
    }
    from cadstore.dataset.reader import DatasetReader

    with DatasetReader(target) as reader:
        merged = set(reader.item_names)
    if merged | skipped != names or len(merged) != record.items:
        return None
    summary = record.summary
    return MergeResult(
        path=target.path,
        items=list(reader.item_names),
        errors=list(summary.get("errors", [])),
        groups=dict(summary.get("groups", {})),
        raw_bytes=int(summary.get("raw_bytes", 0)),
        stored_bytes=target.size() if target.isfile() else 0,
        seconds=0.0,
        warnings=list(txn.recovered),
        total_items=record.items,
        version=record.version,
        commit=record.id,
        recovered=list(txn.recovered),
    )


def summary_fields(
    result: MergeResult,
    durations: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a ``.flow`` manifest reports of a merge besides the paths (see
    :mod:`cadstore.format.manifest`); the durations only when given."""
    error_types: dict[str, int] = {}
    for err in result.errors:
        kind = str(err.get("error", "")).split(":")[0][:60]
        error_types[kind] = error_types.get(kind, 0) + 1
    fields: dict[str, Any] = {"file_count": len(result.items), "groups": result.groups}
    if durations is not None:
        fields["Duration [seconds]"] = duration_field(durations)
    return {
        **fields,
        "error_distribution": error_types,
        "errors": result.errors,
        "warnings": result.warnings,
        "raw_bytes": result.raw_bytes,
        "stored_bytes": result.stored_bytes,
        **(extra or {}),
    }


def duration_field(durations: Mapping[str, float]) -> dict[str, float]:
    """The manifest's ``Duration [seconds]``: the total, then each stage."""
    return {"total": sum(durations.values()), **durations}


def make_pool(options: MergeOptions) -> cf.Executor | None:
    """The executor decoding items and encoding shards (``None``: work in this thread).

    Threads by default: zstd, zlib and numpy copies release the GIL, so threads run the
    heavy work in parallel without shipping decoded arrays between processes (on 1,000
    items with 2 workers, threads measured twice the throughput of processes).
    """
    n_workers = options.n_workers
    if n_workers <= 1:
        return None
    if options.executor == "process":
        # Its workers' warnings reach the caller, as the threads' do.
        return ProcessPool(n_workers, mp_context=mp_context())
    return cf.ThreadPoolExecutor(n_workers, thread_name_prefix="cadstore-merge")


def order_files(items: Sequence[Location], codes: Mapping[str, int] | None) -> list[Location]:
    """The items in code order (given order, or by ``codes``); names must be distinct.

    Raises
    ------
    MergeError
        If two items have the same name, or ``codes`` misses one or does not number them
        ``0..N-1``.
    """
    names = [item_name_of(item) for item in items]
    seen: dict[str, Location] = {}
    for name, item in zip(names, items, strict=True):
        if name in seen:
            raise MergeError(f"duplicate item name {name!r}: {seen[name]} and {item}")
        seen[name] = item
    if codes is None:
        return list(items)
    missing = [n for n in names if n not in codes]
    if missing:
        raise MergeError(f"file_id_codes has no code for {missing[:5]}")
    order = sorted(range(len(items)), key=lambda i: codes[names[i]])
    if sorted(codes[names[i]] for i in order) != list(range(len(items))):
        raise MergeError("file_id_codes must number the items 0..N-1")
    return [items[i] for i in order]
