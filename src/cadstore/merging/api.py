"""``DatasetMerger``, the specified merge API, and the one-call :func:`merge`.

The specified system's merger deletes its inputs by default, cannot append, and always
starts a Dask cluster. Here deleting is opt-in (``delete_source_files=True``), the merge
streams in this process (or a local thread pool) unless a Dask cluster is asked for
(``dask_client_params=``, ``client=`` or ``scheduler=``), and the result is recorded in a
``.flow`` manifest written last, so a half-finished merge is never mistaken for a finished
one. Inputs and outputs may be URLs (``s3://bucket/...``) with ``storage_options=``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from cadstore.cluster import DaskResources, require_distributed
from cadstore.errors import MergeError
from cadstore.format.layout import assign_group
from cadstore.format.manifest import write_manifest
from cadstore.io.location import Location, resolve
from cadstore.lifecycle import PublishedFiles, copy_beside
from cadstore.merging.append import append_items
from cadstore.merging.options import (
    DEFAULT_INNER_BYTES,
    DEFAULT_LEVEL,
    DEFAULT_SHARD_BYTES,
    MergeOptions,
    MergeResult,
)
from cadstore.merging.run import (
    check_dataset_name,
    dataset_exists,
    is_cadstore_dataset,
    run_merge,
    summary_fields,
)
from cadstore.merging.scan import ItemScan, item_name_of, scan_item
from cadstore.schema import Schema

__all__ = ["DatasetMerger", "dataset_output_path", "merge", "write_flow_manifest"]


def write_flow_manifest(
    path: str | os.PathLike[str] | Location,
    *,
    dataset: str | os.PathLike[str] | Location,
    infoset: str | os.PathLike[str] | Location | None,
    attribset: str | os.PathLike[str] | Location | None,
    result: MergeResult,
    durations: Mapping[str, float],
    extra: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write the ``.flow`` manifest of a merge atomically; its presence marks it finished.

    The document holds the specified keys and the merge's summary
    (:mod:`cadstore.format.manifest`). ``path`` may be a URL (published with one PUT);
    ``storage_options`` are the fsspec options for the URLs among the paths.
    """

    def where(p: str | os.PathLike[str] | Location | None) -> Location | None:
        return None if p is None else resolve(p, storage_options, shared=True)

    manifest = where(path)
    dataset_location = where(dataset)
    assert manifest is not None and dataset_location is not None
    fields = summary_fields(result, durations, extra)
    if result.commit is not None:
        fields["commit"] = result.commit
    write_manifest(
        manifest,
        dataset=dataset_location,
        infoset=where(infoset),
        attribset=where(attribset),
        fields=fields,
    )
    return manifest.path


class DatasetMerger:
    """Merge per-item ``.data`` files into one ``.dataset`` (the specified API).

    Parameters
    ----------
    zip_files
        The item files, in code order unless ``file_id_codes`` says otherwise.
    merged_store_path
        The ``.dataset`` to write; a name ending with the item suffix ``.data`` (or
        ``.flow``, ``.infoset``, ``.attribset``) is refused by :meth:`merge_data` before
        anything is written.
    file_id_codes
        ``{item name: code}`` (what ``DatasetInfo.build_code_mappings`` returns).
    dask_client_params
        Keyword arguments of ``distributed.LocalCluster`` (``n_workers``,
        ``threads_per_worker``, ``processes``, ``memory_limit``, ``dashboard_address``):
        the merge runs on a local Dask cluster started on first use and closed by
        :meth:`close_dask_resources`. ``{"disable": True}`` runs without Dask. Needs the
        ``dask`` extra (``pip install 'cadstore[dask]'``); without it the constructor
        raises an ``ImportError`` saying so.
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
    MergeError
        If ``zip_files`` is one path (a string) rather than a list of them.
    ValueError
        If more than one of ``dask_client_params``, ``client`` and ``scheduler`` is given.
    ImportError
        If ``dask_client_params`` or ``scheduler`` asks for Dask and the ``dask`` extra is
        not installed; the message names the extra.
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
        if isinstance(zip_files, str | os.PathLike):
            # A string is iterable: its characters were taken for file names.
            raise MergeError(
                f"zip_files must be a list of .data files, got the path "
                f"{os.fspath(zip_files)!r}: pass [path] for one file, or merge a folder "
                "of items with cadstore.merge(folder, output)"
            )
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
        if scheduler is not None or params is not None:
            # Here, not at the first merge: a missing extra is a setup error, said at once.
            require_distributed(f"DatasetMerger(dask_client_params={dask_client_params!r})")
        if client is not None or scheduler is not None or params is not None:
            self._dask = DaskResources(client=client, scheduler=scheduler, params=params)
        self._schema: Schema | None = None
        self._discovered: dict[str, dict[str, list[str]]] | None = None
        self.result: MergeResult | None = None
        if schema is not None:
            self.set_schema(schema)

    def set_schema(self, schema: Any) -> None:
        """Use ``schema`` for groups, primary dimensions and dimension names."""
        self._schema = Schema.from_any(schema)
        self._discovered = None

    def discover_groups_from_files(
        self, max_files_to_scan: int = 5
    ) -> dict[str, dict[str, list[str]]]:
        """Scan a few items and return ``{group: {"arrays": [...], "sources": [...]}}``.

        A schema stored in the items is used when none was set.
        """
        scans = [
            s
            for s in (scan_item(f) for f in self._locations(self.zip_files[:max_files_to_scan]))
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
            for key, (shape, _dtype) in scan.arrays.items():
                group, array = assign_group(key, schema, per_item=not shape)
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
        face_pair_level: int | None = None,
        overwrite: bool = True,
        progress: bool = False,
    ) -> MergeResult:
        """Merge the items, replacing an existing ``merged_store_path`` as specified.

        Parameters
        ----------
        face_chunk, edge_chunk, faceface_flat_chunk
            Shard lengths (rows) of the ``faces``, ``edges``/``graph`` and ``faceface``
            groups; by default shards hold about 16 MiB and inner chunks at most about
            256 KiB, fewer rows when a few typical items fit in less (see
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
        face_pair_level
            zstd level of the face-pair arrays (default: ``compression_level``, at least
            :data:`~cadstore.merging.options.FACE_PAIR_LEVEL`).
        overwrite
            Replace an existing dataset (the default, as in the specified system, whose
            users re-run their merge task on the same output). The replacement is
            transactional (:mod:`cadstore.lifecycle`): until the new dataset is committed
            readers see the old one, and a merge killed midway leaves the old one. ``False``
            refuses with a :class:`~cadstore.errors.MergeError` instead, as
            :func:`merge` does by default.
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
        options = MergeOptions(
            compression_level=compression_level,
            face_pair_level=face_pair_level,
            inner_bytes=DEFAULT_INNER_BYTES,
            shard_bytes=DEFAULT_SHARD_BYTES,
            shard_rows=shard_rows,
            directory=not force_compression,
            workers=self.workers,
            progress=progress,
        )
        items = self._locations(self.zip_files)
        target = resolve(self.merged_store_path, self.storage_options, shared=True)
        result = run_merge(
            items,
            target,
            self._schema,
            options,
            self.file_id_codes,
            overwrite=overwrite,
            client=self.dask_client,
        )
        self.result = result
        if self.delete_source_files:
            merged = set(result.items)
            for item in items:
                if item_name_of(item) in merged and item.isfile():
                    item.remove()
        return result

    def _locations(self, paths: Sequence[str]) -> list[Location]:
        return [_item_file(resolve(p, self.storage_options, shared=True)) for p in paths]

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
        The ``.infoset``, ``.attribset`` and ``.flow`` copies beside the dataset (those
        :func:`merge` writes) are published again for the new version, each one that
        exists: left at the previous version, readers would warn about them and the
        manifest would describe the old dataset. None is created (:meth:`merge_data`
        writes none).
        """
        target = (
            resolve(self.merged_store_path, self.storage_options, shared=True)
            if self.merged_store_path
            else None
        )
        if target is None or not dataset_exists(target):
            raise MergeError(f"no dataset at {self.merged_store_path!r} to append to")
        infoset, attribset, flow = (
            where if (where := copy_beside(target, kind)).isfile() else None
            for kind in ("infoset", "attribset", "flow")
        )
        published = PublishedFiles(infoset=infoset, attribset=attribset, flow=flow)
        files = [os.fspath(f) for f in (zip_files if zip_files is not None else self.zip_files)]
        # Appending re-encodes at most one partial shard per array: it runs on the driver.
        result = append_items(
            target,
            files,
            workers=self.workers,
            progress=progress,
            storage_options=self.storage_options,
            published=published,
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
    output: str | os.PathLike[str],
    *,
    schema: Any = None,
    infoset: str | None = None,
    attribset: str | None = None,
    flow: str | None = None,
    workers: int | None = 0,
    overwrite: bool = False,
    append: bool = False,
    compression_level: int | None = DEFAULT_LEVEL,
    face_pair_level: int | None = None,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    client: Any = None,
    lock_timeout: float = 0.0,
    manifest_fields: Mapping[str, Any] | None = None,
    stage_durations: Mapping[str, float] | None = None,
    face_pair_layout: str = "auto",
) -> MergeResult:
    """Merge items into ``output`` and write its ``.infoset``, ``.attribset`` and ``.flow``.

    The dataset is the truth and the commit point: it carries its own tables, and the
    three files beside it are copies stamped with its commit id, published after it (see
    :mod:`cadstore.lifecycle`). One writer at a time: the dataset's lock is held
    throughout. A merge or append that was interrupted is finished or undone first, and
    said so in :attr:`MergeResult.recovered`; running a killed merge again completes it.

    Parameters
    ----------
    inputs
        ``.data`` files, or a directory searched for ``*.data``; local paths or URLs.
    output
        The ``.dataset`` path or URL; ``.dataset`` is added to a name that does not end
        with it (``"runs/parts"`` writes ``runs/parts.dataset``), as ``cadstore merge -o``
        does (:func:`dataset_output_path`). The other files default to the same stem.
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
    face_pair_level
        zstd level of the face-pair arrays (default: ``compression_level``, at least
        :data:`~cadstore.merging.options.FACE_PAIR_LEVEL`; see
        :class:`~cadstore.merging.options.MergeOptions`). An append keeps each array's
        level as the dataset has it.
    progress
        Show progress bars.
    storage_options
        fsspec options (credentials, endpoint) for every URL among inputs and outputs.
    client
        A ``distributed.Client`` to scan and encode on (see :class:`DatasetMerger` for
        a cluster started on demand).
    lock_timeout
        Seconds to wait for another writer of the same dataset to finish (0: fail at
        once, ``math.inf``: as long as it takes).
    manifest_fields
        More entries for the ``.flow`` manifest (what a flow adds: its specifications, the
        failures of its tasks as ``error_distribution``); see
        :class:`cadstore.lifecycle.PublishedFiles`.
    stage_durations
        Seconds of the stages that produced the items, by name, reported in the manifest's
        ``Duration [seconds]`` before the merge's own.
    face_pair_layout
        ``"auto"``: face-pair arrays symmetric in every item are stored as upper
        triangles; ``"full"``: as ``N x N`` rows (see
        :class:`~cadstore.merging.options.MergeOptions`). An append keeps the dataset's.

    Returns
    -------
    MergeResult
        The merge summary (also in the manifest).

    Raises
    ------
    MergeError
        If the dataset exists (without ``overwrite`` or ``append``), ``output`` ends with
        the item suffix ``.data`` or with ``.flow``, ``.infoset`` or ``.attribset``
        (nothing is written), ``output`` lacks ``.dataset`` and names a dataset written
        under that bare name (nothing is written: rename it to the ``.dataset`` name), or
        see :func:`cadstore.merging.merge_items`.
    DatasetLockedError
        If another process is writing the dataset; nothing was changed.
    ValueError
        If ``workers`` is negative, ``lock_timeout`` is negative or NaN, or a level or
        ``face_pair_layout`` is not one the options take; nothing was written.
    """
    target = resolve(dataset_output_path(output), storage_options, shared=True)
    _refuse_bare_named_dataset(output, target, storage_options)
    files = _collect_inputs(inputs, storage_options)

    def beside(given: str | None, kind: str) -> Location:
        if given is not None:
            return resolve(given, storage_options, shared=True)
        return copy_beside(target, kind)

    tables = beside(infoset, "infoset"), beside(attribset, "attribset")
    manifest = beside(flow, "flow")
    published = PublishedFiles(
        infoset=tables[0],
        attribset=tables[1],
        flow=manifest,
        fields=dict(manifest_fields or {}),
        durations=dict(stage_durations or {}),
    )
    options = MergeOptions(
        compression_level=compression_level,
        face_pair_level=face_pair_level,
        workers=workers,
        progress=progress,
        lock_timeout=lock_timeout,
        face_pair_layout=face_pair_layout,
    )
    if append:
        return append_items(
            target,
            files,
            workers=workers,
            progress=progress,
            published=published,
            lock_timeout=lock_timeout,
            create=True,
            schema=schema,
            compression_level=compression_level,
            face_pair_level=face_pair_level,
            face_pair_layout=face_pair_layout,
        )
    return run_merge(
        files,
        target,
        schema,
        options,
        overwrite=overwrite,
        client=client,
        published=published,
        remedies=(("overwrite", "replace the dataset"), ("append", "add items to it")),
    )


def dataset_output_path(output: str | os.PathLike[str]) -> str:
    """The dataset :func:`merge` and ``cadstore merge -o OUTPUT`` write: ``OUTPUT`` with
    ``.dataset`` added unless it ends so; a trailing ``/`` is not part of the name
    (``d.dataset/`` is ``d.dataset``, not ``d.dataset/.dataset``).

    The one owner of that rule: the library and the command line both name the dataset
    here, so ``merge(items, "out")`` and ``cadstore merge ITEMS -o out`` write the same
    ``out.dataset``, ``out.infoset``, ``out.attribset`` and ``out.flow``.

    Parameters
    ----------
    output
        The path or URL given.

    Returns
    -------
    str
        The dataset's path; its tables and manifest are named after it.

    Raises
    ------
    MergeError
        If ``output`` ends with the item suffix ``.data`` or with ``.flow``,
        ``.infoset`` or ``.attribset`` (see
        :func:`~cadstore.merging.run.check_dataset_name`): ``x.data`` would become
        ``x.data.dataset``, ``x.flow`` ``x.flow.dataset``.

    Examples
    --------
    >>> dataset_output_path("runs/parts"), dataset_output_path("parts.dataset/")
    ('runs/parts.dataset', 'parts.dataset')
    """
    given = os.fspath(output)
    check_dataset_name(given)
    stem = given.rstrip("/") or given
    return stem if stem.endswith(".dataset") else stem + ".dataset"


def _refuse_bare_named_dataset(
    output: str | os.PathLike[str], target: Location, storage_options: Mapping[str, Any] | None
) -> None:
    """Refuse ``output`` when it lacks ``.dataset`` and a dataset is stored under it.

    Before :func:`merge` added ``.dataset``, ``merge(items, "out")`` wrote the dataset
    at ``out``, beside ``out.infoset``, ``out.attribset`` and ``out.flow``. The same call
    now writes ``out.dataset`` and publishes its tables to those same three names: an
    append would start a second dataset holding only the new items, and the old
    dataset's copies would describe another one. Nothing is written; renaming the
    dataset to ``out.dataset`` (its copies keep their names) makes it the one merged
    into.

    Raises
    ------
    MergeError
        Naming the bare path and the name to give it.
    """
    given = os.fspath(output)
    stem = given.rstrip("/") or given
    if stem.endswith(".dataset"):
        return
    bare = resolve(stem, storage_options, shared=True)
    if bare.path != target.path and is_cadstore_dataset(bare):
        raise MergeError(
            f"{bare.path}: is a dataset named without the .dataset suffix, and a merge to "
            f"{given!r} writes {target.path} (the suffix is added); rename it to "
            f"{target.path} (its .infoset, .attribset and .flow keep their names), then "
            "run again"
        )


def _collect_inputs(
    inputs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
) -> list[Location]:
    """The items among ``inputs``: ``.data`` files, and those in the directories given."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    files: list[Location] = []
    for entry in inputs:
        where = _item_file(resolve(entry, storage_options, shared=True))
        if (
            not where.path.endswith(".data")
            and where.isdir()
            and not where.child("zarr.json").exists()
        ):
            files.extend(where.child(n) for n in sorted(where.listdir()) if n.endswith(".data"))
        else:
            files.append(where)
    if not files:
        raise MergeError(f"no .data files found in {[os.fspath(i) for i in inputs]}")
    return files


def _item_file(where: Location) -> Location:
    """The published ``.data`` file of an item named by its store path (``part.zarr``).

    A task returns ``storage.get_file_path("")``, the store path, as specified; once the
    item is compressed only ``part.zarr.data`` exists, and that is what is merged.
    """
    if where.path.endswith(".zarr") and not where.exists():
        published = where.with_suffix(".data")
        if published.isfile():
            return published
    return where
