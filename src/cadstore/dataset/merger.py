"""``DatasetMerger``, the specified merge API, and the one-call :func:`merge`.

The specified system's merger deletes its inputs by default, cannot append, and always
starts a Dask cluster. Here deleting is opt-in (``delete_source_files=True``), the merge
streams in this process (or a local thread pool) unless a Dask cluster is asked for
(``dask_client_params=``, ``client=`` or ``scheduler=``), and the result is recorded in a
``.flow`` manifest written last, so a half-finished merge is never mistaken for a finished
one. Inputs and outputs may be URLs (``s3://bucket/...``) with ``storage_options=``.
"""

from __future__ import annotations

import io
import os
import posixpath
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cadstore.dataset.layout import assign_group
from cadstore.dataset.merge import (
    DEFAULT_INNER_BYTES,
    DEFAULT_LEVEL,
    DEFAULT_SHARD_BYTES,
    ItemScan,
    MergeResult,
    _filesystem,
    append_items,
    dataset_exists,
    item_name_of,
    merge_items,
    scan_item,
)
from cadstore.errors import MergeError
from cadstore.format import jsoncodec
from cadstore.fs import is_url

__all__ = ["DatasetMerger", "merge", "write_flow_manifest"]

FLOW_FORMAT = "cadstore-flow/1"


def _stem(path: str) -> str:
    base = posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)
    for suffix in (".dataset", ".zarr"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


def write_flow_manifest(
    path: str,
    *,
    dataset: str,
    infoset: str | None,
    attribset: str | None,
    result: MergeResult,
    durations: Mapping[str, float],
    extra: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write the ``.flow`` manifest atomically; its presence marks a finished merge.

    Paths are stored relative to the manifest's directory when they lie below it, so the
    three files and the manifest can be moved together. ``path`` may be a URL
    (``s3://...``, published with one PUT); ``storage_options`` are its fsspec options.
    """
    remote = is_url(path)
    if remote:
        base, sep, full_of = path.rsplit("/", 1)[0], "/", str
    else:
        base, sep, full_of = os.path.dirname(os.path.abspath(path)), os.sep, os.path.abspath

    def rel(p: str | None) -> str | None:
        if p is None:
            return None
        full = full_of(p)
        if not full.startswith(base + sep):
            return full
        return full[len(base) + 1 :] if remote else os.path.relpath(full, base)

    error_types: dict[str, int] = {}
    for err in result.errors:
        kind = err["error"].split(":")[0][:60]
        error_types[kind] = error_types.get(kind, 0) + 1
    doc = {
        "format": FLOW_FORMAT,
        "flow_name": _stem(path),
        "flow_data": rel(dataset),
        "flow_info": rel(infoset),
        "flow_attributes": rel(attribset),
        "file_count": len(result.items),
        "groups": result.groups,
        "Duration [seconds]": {"total": sum(durations.values()), **durations},
        "error_distribution": error_types,
        "errors": result.errors,
        "warnings": result.warnings,
        "raw_bytes": result.raw_bytes,
        "stored_bytes": result.stored_bytes,
        **(extra or {}),
    }
    fs = _filesystem(path, storage_options)
    fs.write_bytes_atomic(path, jsoncodec.dumps(doc, indent=1).encode("utf-8"))
    return path


class DatasetMerger:
    """Merge per-item ``.data`` files into one ``.dataset`` (the specified API).

    Parameters
    ----------
    zip_files
        The item files, in code order unless ``file_id_codes`` says otherwise.
    merged_store_path
        The ``.dataset`` to write.
    file_id_codes
        ``{item name: code}`` (what ``DatasetInfo.build_code_mappings`` returns).
    dask_client_params
        Keyword arguments of ``distributed.LocalCluster`` (``n_workers``,
        ``threads_per_worker``, ``processes``, ``memory_limit``, ``dashboard_address``):
        the merge runs on a local Dask cluster started on first use and closed by
        :meth:`close_dask_resources`. ``{"disable": True}`` runs without Dask. Needs the
        ``dask`` extra.
    delete_source_files
        Delete the merged ``.data`` files after a successful merge. Off by default: the
        specified default destroys the inputs.
    schema
        A schema (dict, builder or ``Schema``); see :meth:`set_schema`.
    workers
        Local worker threads when no Dask cluster is used (0: this thread; ``None``: every
        core).
    client
        An existing ``distributed.Client`` to run the merge on (not closed by
        :meth:`close_dask_resources` unless ``close_global=True``).
    scheduler
        Address of a running Dask scheduler (``"tcp://host:8786"``) to connect to.
    storage_options
        fsspec options (credentials, endpoint) for inputs and output given as URLs
        (``s3://bucket/...``); without them fsspec's configuration and the environment
        (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...) apply. Dask workers receive
        them with each task, so they need no configuration of their own.

    Raises
    ------
    ValueError
        If more than one of ``dask_client_params``, ``client`` and ``scheduler`` is given.
    """

    def __init__(
        self,
        zip_files: Sequence[str] | None = None,
        merged_store_path: str | None = None,
        file_id_codes: Mapping[str, int] | None = None,
        dask_client_params: Mapping[str, Any] | None = None,
        delete_source_files: bool = False,
        *,
        schema: Any = None,
        workers: int | None = 0,
        client: Any = None,
        scheduler: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        from cadstore.dataset.distributed import DaskResources

        self.zip_files = [os.fspath(f) for f in (zip_files or [])]
        self.merged_store_path = os.fspath(merged_store_path) if merged_store_path else None
        self.file_id_codes = dict(file_id_codes) if file_id_codes else None
        self.delete_source_files = delete_source_files
        self.workers = workers
        self.storage_options = dict(storage_options) if storage_options else None
        params = dict(dask_client_params) if dask_client_params is not None else None
        if params is not None and params.pop("disable", False):
            params = None
        self._dask: DaskResources | None = None
        if client is not None or scheduler is not None or params is not None:
            self._dask = DaskResources(client=client, scheduler=scheduler, params=params)
        self._schema = None
        self._discovered: dict[str, dict[str, list[str]]] | None = None
        self.result: MergeResult | None = None
        if schema is not None:
            self.set_schema(schema)

    def set_schema(self, schema: Any) -> None:
        """Use ``schema`` for groups, primary dimensions and dimension names."""
        from cadstore.schema import Schema

        self._schema = Schema.from_any(schema)
        self._discovered = None

    def discover_groups_from_files(
        self, max_files_to_scan: int = 5
    ) -> dict[str, dict[str, list[str]]]:
        """Scan a few items and return ``{group: {"arrays": [...], "sources": [...]}}``.

        A schema stored in the items is used when none was set.
        """
        from cadstore.schema import Schema

        scans = [
            s
            for s in (
                scan_item(f, storage_options=self.storage_options)
                for f in self.zip_files[:max_files_to_scan]
            )
            if isinstance(s, ItemScan)
        ]
        schema = self._schema
        if schema is None:
            for scan in scans:
                stored = scan.metadata.get("_storage_schema")
                if isinstance(stored, Mapping) and stored:
                    schema = Schema.from_any(stored)
                    break
        groups: dict[str, dict[str, list[str]]] = {}
        for scan in scans:
            for key in scan.arrays:
                group, array = assign_group(key, schema)
                entry = groups.setdefault(group, {"arrays": [], "sources": []})
                if array not in entry["arrays"]:
                    entry["arrays"].append(array)
                    entry["sources"].append(key)
        self._discovered = groups
        return groups

    def get_discovered_groups(self) -> dict[str, dict[str, list[str]]]:
        """Return the groups found by :meth:`discover_groups_from_files` (scanning if needed)."""
        if self._discovered is None:
            return self.discover_groups_from_files()
        return self._discovered

    def print_discovered_structure(self) -> None:
        """Print the discovered groups and their arrays."""
        for group, entry in self.get_discovered_groups().items():
            print(f"{group}:")
            for array, source in zip(entry["arrays"], entry["sources"], strict=True):
                print(f"  {array}  <- {source}")

    def merge_data(
        self,
        face_chunk: int | None = None,
        edge_chunk: int | None = None,
        faceface_flat_chunk: int | None = None,
        batch_size: int | None = None,
        consolidate_metadata: bool = True,
        force_compression: bool = True,
        use_streaming: bool = True,
        *,
        compression_level: int | None = DEFAULT_LEVEL,
        overwrite: bool = False,
        progress: bool = False,
    ) -> MergeResult:
        """Merge the items.

        Parameters
        ----------
        face_chunk, edge_chunk, faceface_flat_chunk
            Shard lengths (rows) of the ``faces``, ``edges``/``graph`` and ``faceface``
            groups; by default shards hold about 16 MiB and inner chunks at most about
            64 KiB, fewer rows when a few typical items fit in less (see
            :func:`cadstore.format.sharding.shard_layout`).
        batch_size
            Accepted for compatibility: the merge always streams, so memory does not grow
            with the number of items and no partial datasets are needed.
        consolidate_metadata
            Accepted for compatibility; consolidated metadata is always written.
        force_compression
            ``True`` writes one zip file, ``False`` a directory store.
        use_streaming
            Accepted for compatibility; the merge always streams.
        compression_level
            zstd level of the output.
        overwrite
            Replace an existing dataset.
        progress
            Show a progress bar.

        Returns
        -------
        MergeResult
            What was merged, skipped and how long it took.
        """
        if not self.merged_store_path:
            raise MergeError("merged_store_path is not set")
        if not self.zip_files:
            raise MergeError("no input files to merge")
        shard_rows: dict[str, int] = {}
        for groups, rows in (
            (("faces",), face_chunk),
            (("edges", "graph"), edge_chunk),
            (("faceface",), faceface_flat_chunk),
        ):
            if rows is not None:
                shard_rows.update(dict.fromkeys(groups, int(rows)))
        result = merge_items(
            self.zip_files,
            self.merged_store_path,
            schema=self._schema,
            file_id_codes=self.file_id_codes,
            compression_level=compression_level,
            inner_bytes=DEFAULT_INNER_BYTES,
            shard_bytes=DEFAULT_SHARD_BYTES,
            shard_rows=shard_rows,
            directory=not force_compression,
            workers=self.workers,
            overwrite=overwrite,
            progress=progress,
            storage_options=self.storage_options,
            client=self.dask_client,
        )
        self.result = result
        if self.delete_source_files:
            merged = set(result.items)
            for path in self.zip_files:
                if item_name_of(path) in merged:
                    fs = _filesystem(path, self.storage_options)
                    if fs.isfile(path):
                        fs.remove(path)
        return result

    @property
    def dask_client(self) -> Any:
        """The ``distributed.Client`` the merge runs on, or ``None`` without Dask.

        A local cluster asked for with ``dask_client_params`` starts here, on first use.
        """
        return self._dask.client if self._dask is not None else None

    def append_data(
        self, zip_files: Sequence[str] | None = None, *, progress: bool = False
    ) -> MergeResult:
        """Append items to the existing ``merged_store_path`` without re-merging old ones.

        Items already in the dataset (same name) are skipped, so appending is idempotent.
        """
        if not self.merged_store_path or not dataset_exists(
            self.merged_store_path, self.storage_options
        ):
            raise MergeError(f"no dataset at {self.merged_store_path!r} to append to")
        files = [os.fspath(f) for f in (zip_files if zip_files is not None else self.zip_files)]
        # Appending re-encodes at most one partial shard per array: it runs on the driver.
        result = append_items(
            self.merged_store_path,
            files,
            workers=self.workers,
            progress=progress,
            storage_options=self.storage_options,
        )
        self.result = result
        return result

    def close_dask_resources(self, close_global: bool = False) -> None:
        """Close the Dask client and local cluster this merger started; idempotent.

        Parameters
        ----------
        close_global
            Also close a client passed in with ``client=``.
        """
        if self._dask is not None:
            self._dask.close(close_global=close_global)


def merge(
    inputs: Sequence[str] | str,
    output: str,
    *,
    schema: Any = None,
    infoset: str | None = None,
    attribset: str | None = None,
    flow: str | None = None,
    workers: int | None = 0,
    overwrite: bool = False,
    append: bool = False,
    compression_level: int | None = DEFAULT_LEVEL,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    client: Any = None,
) -> MergeResult:
    """Merge items into ``output`` and write its ``.infoset``, ``.attribset`` and ``.flow``.

    Parameters
    ----------
    inputs
        ``.data`` files, or a directory searched for ``*.data``; local paths or URLs.
    output
        The ``.dataset`` path or URL; the other files default to the same stem.
    schema
        Schema for groups and metadata routing (default: the one stored in the items).
    infoset, attribset, flow
        Paths of the Parquet tables and the manifest.
    workers
        Local worker threads (0: this thread; ``None``: every core).
    overwrite
        Replace existing outputs.
    append
        Add the inputs to an existing dataset (items already in it are skipped), extending
        its tables; without an existing dataset this is an ordinary merge.
    compression_level
        zstd level of the dataset.
    progress
        Show progress bars.
    storage_options
        fsspec options (credentials, endpoint) for every URL among inputs and outputs.
    client
        A ``distributed.Client`` to scan and encode on (see :class:`DatasetMerger` for
        a cluster started on demand).

    Returns
    -------
    MergeResult
        The merge summary (also in the manifest).
    """
    files = _collect_inputs(inputs, storage_options)
    stem = output[: -len(".dataset")] if output.endswith(".dataset") else output
    infoset = infoset or stem + ".infoset"
    attribset = attribset or stem + ".attribset"
    flow = flow or stem + ".flow"
    flow_fs = _filesystem(flow, storage_options)
    if append and dataset_exists(output, storage_options):
        return _append_with_tables(
            files, output, infoset, attribset, flow, progress, storage_options
        )
    if flow_fs.isfile(flow) and not overwrite:
        raise MergeError.suggesting(
            f"{flow} already exists",
            ("overwrite", "replace the dataset"),
            ("append", "add items to it"),
        )
    # The old manifest goes first: from here on the old dataset is no longer "finished".
    flow_fs.remove(flow)
    t0 = time.perf_counter()
    result = merge_items(
        files,
        output,
        schema=schema,
        workers=workers,
        overwrite=overwrite,
        compression_level=compression_level,
        progress=progress,
        storage_options=storage_options,
        client=client,
    )
    t1 = time.perf_counter()
    from cadstore.dataset.info import DatasetInfo

    merged = {name: code for code, name in enumerate(result.items)}
    by_name = {item_name_of(f): f for f in files}
    info = DatasetInfo(
        [by_name[n] for n in result.items],
        infoset,
        attribset,
        schema=schema,
        storage_options=storage_options,
    )
    info.set_code_mappings(merged)
    info.parse_info_files()
    info.store_info_to_parquet()  # writes the .attribset too
    t2 = time.perf_counter()
    write_flow_manifest(
        flow,
        dataset=output,
        infoset=infoset,
        attribset=attribset,
        result=result,
        durations={"merge": t1 - t0, "info": t2 - t1},
        extra={"info": info.summary()},
        storage_options=storage_options,
    )
    return result


def _collect_inputs(
    inputs: Sequence[str] | str, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    if isinstance(inputs, str | os.PathLike):
        inputs = [os.fspath(inputs)]
    files: list[str] = []
    for entry in inputs:
        entry = os.fspath(entry)
        fs = _filesystem(entry, storage_options)
        if (
            not entry.endswith(".data")
            and fs.isdir(entry)
            and not fs.exists(fs.join(entry, "zarr.json"))
        ):
            files.extend(
                sorted(fs.join(entry, n) for n in fs.listdir(entry) if n.endswith(".data"))
            )
        else:
            files.append(entry)
    if not files:
        raise MergeError(f"no .data files found in {list(inputs)}")
    return files


def _append_with_tables(
    files: list[str],
    output: str,
    infoset: str,
    attribset: str,
    flow: str,
    progress: bool,
    storage_options: Mapping[str, Any] | None = None,
) -> MergeResult:
    """Append to a dataset and extend its Parquet tables with the new items' rows."""
    import pandas as pd

    from cadstore.dataset.info import DatasetInfo

    t0 = time.perf_counter()
    result = append_items(output, files, progress=progress, storage_options=storage_options)
    t1 = time.perf_counter()
    first_code = result.total_items - len(result.items)
    if result.items:
        by_name = {item_name_of(f): f for f in files}
        # The new rows are built in memory and each table published once, merged.
        info = DatasetInfo(
            [by_name[n] for n in result.items],
            os.devnull,
            os.devnull,
            storage_options=storage_options,
        )
        info.set_code_mappings({n: first_code + i for i, n in enumerate(result.items)})
        info.parse_info_files()
        new_tables = {
            infoset: (info._infoset_table("file_info"), ["id"]),
            attribset: (info._attribset_table(), ["table_name", "id"]),
        }
        for path, (new_table, keys) in new_tables.items():
            fs = _filesystem(path, storage_options)
            frames = []
            if fs.isfile(path):
                frames.append(pd.read_parquet(io.BytesIO(fs.read_bytes(path))))
            frames.append(new_table.to_pandas())
            table = pd.concat(frames, ignore_index=True).drop_duplicates(subset=keys, keep="first")
            fs.write_atomic(path, lambda fh, t=table: t.to_parquet(fh, index=False))
    write_flow_manifest(
        flow,
        dataset=output,
        infoset=infoset,
        attribset=attribset,
        result=result,
        durations={"append": t1 - t0, "info": time.perf_counter() - t1},
        extra={"file_count": result.total_items, "appended": len(result.items)},
        storage_options=storage_options,
    )
    return result
