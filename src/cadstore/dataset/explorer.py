"""``DatasetExplorer``: query a merged dataset, its ``.infoset`` and its ``.attribset``.

The specified explorer starts a Dask cluster on every open and finds one item's rows by
materialising a whole group and scanning ``file_id_code_<group>``. This one starts
nothing: per-item reads go through :class:`cadstore.dataset.reader.DatasetReader` and the
per-group ``item_offsets`` (O(1) per item), whole-array queries decode only the arrays they
touch, and :meth:`DatasetExplorer.get_group_data` is a lazy ``xarray.Dataset`` opened with
zarr-python on the standard Zarr store (the dataset is plain Zarr v3).

Differences from the specified behaviour, all deliberate:

* no cluster unless ``dask_client_params={"start_cluster": True, ...}`` asks for one;
* an unknown group, array, item code or attribute table raises
  :class:`cadstore.errors.DatasetError` naming the valid choices, instead of returning an
  empty result;
* :meth:`DatasetExplorer.create_distribution` returns ``file_id_codes_in_bins`` (the
  observed key), not ``file_ids_in_bins``, and, for ``bins=None``, also ``categories``
  (the value of each bin; ``bin_edges`` has the specified ``k + 1`` edges);
* :meth:`DatasetExplorer.file_dataset` is read eagerly (its variables are
  :class:`ComputedArray`, so ``.data.compute()`` works as on the specified Dask arrays);
* ``graph/num_nodes`` is stored once per item and presented once per graph edge, as the
  specified store holds it, except in distributions and statistics, which count items
  (see ``docs/format.md``);
* the ``item_offsets`` index of each group is an implementation detail and is not listed
  among a group's arrays;
* :meth:`DatasetExplorer.query_cross_group`, :meth:`DatasetExplorer.filter_files_by_metadata`
  and :meth:`DatasetExplorer.compute_statistics`, which the specified system's later
  documentation names without describing, do what their docstrings say (see
  ``docs/explorer.md``).

Examples
--------
>>> with DatasetExplorer(flow_output_file="out/flow.flow") as explorer:  # doctest: +SKIP
...     codes = explorer.get_file_list("faces", lambda ds: ds["face_types"] == 3)
...     one = explorer.file_dataset(int(codes[0]), "faces")
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import functools
import logging
import os
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Literal, overload

import numpy as np

from cadstore.dataset.reader import DatasetReader, whole_number
from cadstore.errors import (
    CadstoreError,
    CadstoreWarning,
    CorruptStoreError,
    DatasetError,
    KeyNotFoundError,
)
from cadstore.format.layout import ITEM_DIM, OFFSETS, file_id_code_name
from cadstore.format.manifest import read_manifest, resolve_flow_paths
from cadstore.io.location import Location, resolve
from cadstore.io.parquet import frame_of
from cadstore.lifecycle import TrustedTables, check_item_codes, copy_beside

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = ["ComputedArray", "DatasetExplorer", "resolve_flow_paths"]

logger = logging.getLogger(__name__)

#: Key of ``dask_client_params`` that asks for a Dask cluster.
START_CLUSTER = "start_cluster"
# Keys of dask_client_params that configure the explorer, not the LocalCluster.
_DASK_OWN_KEYS = frozenset((START_CLUSTER, "disable"))
_STREAM_CACHE_COLUMNS = ("stream_cache_png", "stream_cache_3d")
# Long lists of valid choices are cut in error messages.
_CHOICES_SHOWN = 20
# Integer categories spread wider than this get positional bins (not one per integer).
_MAX_INTEGER_CATEGORIES = 4096
# The table of contents: the rule before the infoset, rows shown and text width.
_TOC_RULE = "=" * 34
_TOC_ROWS = 20
_TOC_TEXT_WIDTH = 38


def _choices(values: Sequence[Any] | set[Any]) -> str:
    items = sorted(values, key=str)
    if len(items) > _CHOICES_SHOWN:
        return f"{items[:_CHOICES_SHOWN]} (and {len(items) - _CHOICES_SHOWN} more)"
    return str(items)


def _table(
    given: Location | None, listed: Location | None, dataset: Location, kind: str
) -> Location | None:
    """A table of the dataset: the one given (which must exist), the manifest's, or the
    one beside the dataset when there is one."""
    if given is not None:
        if not given.isfile():
            label = "parquet_file_path" if kind == "infoset" else "parquet_file_attribs"
            problem = "not a regular file" if given.exists() else "no such file"
            raise CorruptStoreError(given.path, f"{label}: {problem}")
        return given
    if listed is not None:
        return listed
    beside = copy_beside(dataset, kind)
    return beside if beside.isfile() else None


def _categorical_bins(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(categories, edges, index)`` for a categorical distribution.

    Whole numbers get one unit bin per integer from the smallest to the largest, centred
    on it (the specified layout); other values one unit bin per distinct value, centred on
    its position. ``index`` is the bin of each value.
    """
    distinct = np.unique(values)
    whole = values.dtype.kind in "biu" or (
        values.dtype.kind == "f"
        and bool(np.all(np.isfinite(distinct)))
        and bool(np.all(distinct == np.round(distinct)))
    )
    if whole and len(distinct):
        first, last = int(distinct[0]), int(distinct[-1])
        # Unit bins need int64 codes: uint64 values from 2**63, or floats as large, do not.
        if last - first < _MAX_INTEGER_CATEGORIES and first >= -(2**63) and last < 2**63 - 1:
            integers = np.arange(first, last + 1, dtype=np.int64)
            edges = np.append(integers, last + 1).astype(np.float64) - 0.5
            index = values.astype(np.int64) - first
            return integers.astype(values.dtype), edges, index
    edges = np.arange(len(distinct) + 1, dtype=np.float64) - 0.5
    return distinct, edges, np.searchsorted(distinct, values).astype(np.int64)


class ComputedArray(np.ndarray[Any, Any]):
    """A numpy array that also answers ``.compute()``, as a Dask array does.

    The specified explorer returns Dask-backed datasets, and its users read values with
    ``ds["face_areas"].data.compute()``. :meth:`DatasetExplorer.file_dataset` reads an
    item's rows eagerly (they are small, and found through the offsets index), so its
    variables hold this subclass: everything numpy does works on it, indexing keeps it,
    and ``compute()`` returns the plain ``numpy.ndarray``. No Dask is imported and no
    cluster is started.
    """

    def compute(self, **kwargs: Any) -> np.ndarray:
        """Return the values as a plain ``numpy.ndarray`` (keywords are accepted and
        ignored, as there is nothing to schedule)."""
        return np.asarray(self)


def _computed(dims: tuple[str, ...], data: np.ndarray) -> Any:
    """An ``xarray.Variable`` whose ``.data`` is a :class:`ComputedArray`."""
    import xarray as xr

    # fastpath keeps the subclass (xarray otherwise casts numpy subclasses away).
    return xr.Variable(dims, np.asarray(data).view(ComputedArray), fastpath=True)


def _frame_text(frame: pd.DataFrame) -> str:
    """The infoset as the specified table of contents prints it.

    The first and last 10 rows of a longer frame, and strings longer than
    :data:`_TOC_TEXT_WIDTH` shown by their end (``...`` and the last characters), so
    paths keep their file name.
    """
    from pandas.api.types import is_string_dtype

    shown = frame.copy()
    keep = _TOC_TEXT_WIDTH - 3

    def shorten(value: Any) -> Any:
        if isinstance(value, str) and len(value) > _TOC_TEXT_WIDTH:
            return "..." + value[-keep:]
        return value

    for column in shown.columns:
        if shown[column].dtype == object or is_string_dtype(shown[column]):
            shown[column] = shown[column].map(shorten)
    text: str = shown.to_string(max_rows=_TOC_ROWS)
    return text


@functools.cache
def _per_row_array_class() -> type:
    """Return the xarray backend class of per-item arrays presented once per row."""
    base: Any = _reader_backed_array_class()

    class PerRowArray(base):  # type: ignore[misc]
        """A per-item array (``graph/num_nodes``) repeated for every row of its group.

        The specified merged store holds such values once per row of the group (once
        per graph edge for ``num_nodes``), and its users read them beside the rows
        (``num_nodes[range_start]``). cadstore stores them once per item; this view
        gives the specified layout without storing it. Indexing is the reader-backed
        array's; only the shape and the rows read differ.
        """

        def __init__(self, reader: DatasetReader, group: str, array: str) -> None:
            super().__init__(reader, group, array)
            trailing = reader.array_meta(group, array).shape[1:]
            self.shape = (int(reader.offsets(group)[-1]), *(int(n) for n in trailing))

        def _raw_getitem(self, key: tuple[Any, ...]) -> np.ndarray | np.generic:
            per_item = self.reader.read_array(self.group, self.array)
            return _per_item_rows(per_item, self.reader.offsets(self.group), key)

    return PerRowArray


def _items_of_rows(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The item code of each of ``rows``, item ``c`` owning rows
    ``offsets[c]:offsets[c + 1]`` (rows are in code order, so a binary search finds it;
    an item without rows owns none)."""
    codes: np.ndarray = np.searchsorted(offsets, rows, side="right") - 1
    return codes


def _per_item_rows(
    per_item: np.ndarray, offsets: np.ndarray, key: tuple[Any, ...]
) -> np.ndarray | np.generic:
    """``key`` (basic indexing) of ``per_item``, one value per item, presented once per
    row of each item (``offsets`` as in :func:`_items_of_rows`): only the rows asked for
    are made."""
    first = key[0] if key else slice(None)
    rows = np.arange(int(offsets[-1]))[first]
    picked = per_item[_items_of_rows(offsets, rows)]
    rest = key[1:] if np.ndim(rows) == 0 else (slice(None), *key[1:])
    values: np.ndarray | np.generic = picked[rest]
    return values


@functools.cache
def _joined_array_class() -> type:
    """Return the xarray backend class of a joined group's values (see
    :meth:`DatasetExplorer.query_cross_group`); built on first use so xarray loads
    lazily."""
    from xarray.backends import BackendArray
    from xarray.core import indexing

    class JoinedArray(BackendArray):
        """One value per item (``table``), presented once per row of another group.

        Holds no reader, only the per-item values and the rows' offsets, so a Dask task
        indexing it travels to a cluster's workers as it is. Only the rows asked for are
        made.

        Parameters
        ----------
        table
            The values by item code, ``(n_items, ...)``.
        offsets
            Item ``c`` owns rows ``offsets[c]:offsets[c + 1]`` of the group joined onto.
        """

        def __init__(self, table: np.ndarray, offsets: np.ndarray) -> None:
            self.table = table
            self.offsets = offsets
            self.shape = (int(offsets[-1]), *table.shape[1:])
            self.dtype = table.dtype

        def __getitem__(self, key: Any) -> np.ndarray | np.generic:
            values: np.ndarray | np.generic = indexing.explicit_indexing_adapter(
                key, self.shape, indexing.IndexingSupport.BASIC, self._raw_getitem
            )
            return values

        def _raw_getitem(self, key: tuple[Any, ...]) -> np.ndarray | np.generic:
            return _per_item_rows(self.table, self.offsets, key)

    return JoinedArray


#: What zarr-python lets out when a stored chunk is damaged: zipfile's ``BadZipFile`` (a
#: CRC-32 or a local header that does not match), the ``crc32c`` codec's and the
#: decompressors' ``ValueError`` or ``RuntimeError``, zlib's error, a short read. Not
#: ``IndexError``: an index out of range is the caller's and stays theirs.
_DAMAGED_CHUNK_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    RuntimeError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
)

#: What zarr-python and xarray let out opening a group whose metadata they refuse. A
#: ``TypeError`` only when zarr-python raised it (:func:`_raised_by_zarr`).
_REFUSED_METADATA_ERRORS: tuple[type[Exception], ...] = (
    *_DAMAGED_CHUNK_ERRORS,
    TypeError,
    KeyError,
)


def _raised_by_zarr(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in zarr-python's own code, outside its storage layer.

    zarr-python builds its metadata from a document's values passed as arguments
    (``BytesCodec(**configuration)``, ``parse_zstd_level(level)``), so damaged metadata
    raises ``TypeError`` there: each of the 654 a campaign met, putting a wrong value at
    each place of a group's consolidated metadata, was raised in ``zarr.core`` or
    ``zarr.codecs``. A ``TypeError`` raised elsewhere is a wrong call, not a damaged
    file: Python's or xarray's refusal of an argument (``open_zarr() got unexpected
    keyword arguments``), zarr's storage layer refusing the store given, or any code
    of cadstore's own.
    """
    module = _raising_module(exc)
    return module.startswith("zarr.") and not module.startswith("zarr.storage")


def _raising_module(exc: BaseException) -> str:
    """The module whose code raised ``exc`` (``""`` if unknown)."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:  # to the frame that raised it
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", ""))


#: How zarr-python says a node asked for is not in a group's consolidated metadata.
_NOT_IN_CONSOLIDATED = "' not found in consolidated metadata."


def _missing_node(exc: BaseException) -> str | None:
    """The node zarr-python was asked for and did not find, when ``exc`` says so: the
    ``KeyError`` its groups raise (``KeyError(name)``, or ``"'name' not found in
    consolidated metadata."``); ``None`` for any other error, such as xarray's
    ``KeyError`` for an array without dimension names."""
    if not isinstance(exc, KeyError) or _raising_module(exc) != "zarr.core.group":
        return None
    said = exc.args[0] if len(exc.args) == 1 else None
    if not isinstance(said, str):
        return None
    if said.startswith("'") and said.endswith(_NOT_IN_CONSOLIDATED):
        return said[1 : -len(_NOT_IN_CONSOLIDATED)]
    return said


@functools.cache
def _guarded_array_class() -> type:
    """Return the xarray backend class guarding zarr-python's reads (see
    :func:`_guard_zarr_reads`); built on first use so xarray loads lazily."""
    from xarray.backends import BackendArray

    class GuardedArray(BackendArray):
        """An array zarr-python reads, whose damaged chunks raise a cadstore error.

        Parameters
        ----------
        inner
            xarray's backend array for the zarr array.
        location
            The dataset, shown in the error.
        name
            ``group/array``, shown in the error.
        """

        def __init__(self, inner: Any, location: str, name: str) -> None:
            self.inner = inner
            self.location = location
            self.name = name
            self.shape = inner.shape
            self.dtype = inner.dtype

        def get_array(self) -> Any:
            """The zarr array (as xarray's own wrapper gives it)."""
            return self.inner.get_array()

        def _damaged(self, exc: Exception) -> CorruptStoreError:
            return CorruptStoreError(
                self.location,
                f"array {self.name} holds a damaged chunk ({type(exc).__name__}: {exc})",
            )

        def __getitem__(self, key: Any) -> Any:
            try:
                return self.inner[key]
            except CadstoreError:
                raise
            except _DAMAGED_CHUNK_ERRORS as exc:
                raise self._damaged(exc) from exc

        async def async_getitem(self, key: Any) -> Any:
            """``self[key]``, awaited (xarray's asynchronous loading)."""
            try:
                return await self.inner.async_getitem(key)
            except CadstoreError:
                raise
            except _DAMAGED_CHUNK_ERRORS as exc:
                raise self._damaged(exc) from exc

    return GuardedArray


def _guard_zarr_reads(found: xr.Dataset, location: str, group: str) -> list[str]:
    """Make a damaged chunk of ``found`` (a group xarray opened with zarr-python, not
    Dask-backed) a :class:`~cadstore.errors.CorruptStoreError` naming ``location`` and
    the array.

    Each lazy variable's backend array (below xarray's caching and copy-on-write
    wrappers) is wrapped in place. Returns the names of the variables guarded: those
    zarr-python reads on demand (not the indexes xarray loaded when opening).
    """
    from xarray.backends import BackendArray

    guarded = _guarded_array_class()
    names = []
    for name, variable in found.variables.items():
        node: Any = variable._data
        while hasattr(node, "array"):  # xarray's lazy wrappers, down to the backend array
            inner = node.array
            if isinstance(inner, BackendArray):
                if not isinstance(inner, guarded):
                    node.array = guarded(inner, location, f"{group}/{name}")
                names.append(str(name))
                break
            node = inner
    return names


def _dask_backed(found: xr.Dataset, names: Iterable[str], group: str) -> xr.Dataset:
    """``found`` with the variables ``names`` Dask-backed, one Dask chunk per stored
    chunk, as ``xr.open_zarr(..., chunks={})`` makes them.

    The Dask arrays are made here, over the variables :func:`_guard_zarr_reads` has
    guarded, rather than by ``open_zarr``: theirs would read through xarray's backend
    arrays captured before any guard, and a damaged chunk computed by Dask would escape
    as zarr-python's or zipfile's own error. Each Dask task now indexes the guarded
    array (pickled with it to a cluster's workers). Names are random, as nothing
    outside this dataset may share its tasks.
    """
    data_vars = set(found.data_vars)
    chunked: dict[str, dict[str, Any]] = {"data": {}, "coords": {}}
    for name in names:
        variable = found.variables[name]
        preferred = variable.encoding.get("preferred_chunks", {})
        lazy = _as_dask(variable, preferred, f"{group}-{name}")
        chunked["data" if name in data_vars else "coords"][name] = lazy
    return found.assign_coords(chunked["coords"]).assign(chunked["data"])


def _as_dask(variable: xr.Variable, chunks: Mapping[str, Any], label: str) -> xr.Variable:
    """``variable`` Dask-backed in ``chunks`` (by dimension), its Dask name made of
    ``label`` and a random part, as nothing outside this explorer may share its tasks."""
    import uuid

    key = f"cadstore-{label}-{uuid.uuid4().hex}"
    return variable.chunk(dict(chunks), from_array_kwargs={"name": key})


@functools.cache
def _reader_backed_array_class() -> type:
    """Return the xarray backend array class; built on first use so xarray loads lazily."""
    from xarray.backends import BackendArray
    from xarray.core import indexing

    class ReaderBackedArray(BackendArray):
        """A lazily indexed view of one dataset array, read through ``DatasetReader``.

        Wrapped in xarray's ``LazilyIndexedArray``, it lets a ``where`` callable receive a
        real ``xarray.Dataset`` while only the arrays it touches are read, with the
        reader's shard decoder rather than zarr-python's.
        """

        def __init__(self, reader: DatasetReader, group: str, array: str) -> None:
            meta = reader.array_meta(group, array)
            self.reader = reader
            self.group = group
            self.array = array
            self.shape = tuple(int(n) for n in meta.shape)
            self.dtype = np.dtype(object) if meta.is_string else np.dtype(meta.dtype)

        def __getitem__(self, key: Any) -> np.ndarray | np.generic:
            # What _raw_getitem returns, further indexed for keys beyond basic indexing.
            values: np.ndarray | np.generic = indexing.explicit_indexing_adapter(
                key, self.shape, indexing.IndexingSupport.BASIC, self._raw_getitem
            )
            return values

        def _raw_getitem(self, key: tuple[Any, ...]) -> np.ndarray | np.generic:
            first = key[0] if key else slice(None)
            values: np.ndarray | np.generic  # a numpy scalar when the key takes one element
            if isinstance(first, slice):
                start, stop, step = first.indices(self.shape[0])
                if step > 0:
                    rows = self.reader.read_rows(self.group, self.array, start, max(start, stop))
                    return rows[(slice(None, None, step), *key[1:])]
                values = self.reader.read_array(self.group, self.array)[key]
                return values
            index = int(first)
            rows = self.reader.read_rows(self.group, self.array, index, index + 1)
            values = rows[0][key[1:]]
            return values

    return ReaderBackedArray


class DatasetExplorer:
    """Explore a merged dataset (the specified API, without the cluster).

    Parameters
    ----------
    flow_output_file
        The ``.flow`` manifest written by :func:`cadstore.merge`; it gives the three paths.
    merged_store_path
        The ``.dataset`` (zip or directory). Overrides the manifest's ``flow_data``.
    parquet_file_path
        The ``.infoset``. Defaults to the manifest's ``flow_info``, else to
        ``<stem>.infoset`` next to the dataset when that file exists.
    parquet_file_attribs
        The ``.attribset``; defaults as for ``parquet_file_path``.
    dask_client_params
        Accepted for compatibility. No cluster starts unless it holds
        ``"start_cluster": True``; the other keys then go to ``dask.distributed.LocalCluster``
        and :meth:`get_group_data` returns Dask-backed arrays. If Dask is not installed the
        request is ignored with a :class:`cadstore.errors.CadstoreWarning`.
        ``{"disable": True}`` (the vendor's way to turn Dask off) is the default behaviour.
    storage_options
        fsspec options for the paths that are URLs (``s3://bucket/flows/demo.flow``): for
        S3 ``key``, ``secret``, ``client_kwargs={"endpoint_url": ...}``. Without them,
        credentials and endpoint come from the fsspec and environment configuration
        (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``FSSPEC_S3_*``, ...). Items are then
        read with HTTP range requests; the Parquet tables through pyarrow.
    trust_manifest
        Follow paths the manifest lists outside its own folder. Off by default: a
        manifest may come from anywhere, and a split rewrites the infoset it names (see
        :mod:`cadstore.format.manifest`).

    Raises
    ------
    DatasetError
        If neither a manifest nor a dataset path is given.
    CorruptStoreError
        If the manifest lists a missing file or one outside its folder, or the dataset is
        not a cadstore dataset.

    Notes
    -----
    The explorer holds open files; use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        flow_output_file: str | os.PathLike[str] | None = None,
        merged_store_path: str | os.PathLike[str] | None = None,
        parquet_file_path: str | os.PathLike[str] | None = None,
        parquet_file_attribs: str | os.PathLike[str] | None = None,
        dask_client_params: Mapping[str, Any] | None = None,
        *,
        storage_options: dict[str, Any] | None = None,
        trust_manifest: bool = False,
    ) -> None:
        self.storage_options = storage_options

        def where(path: str | os.PathLike[str] | None) -> Location | None:
            return None if not path else resolve(path, storage_options, shared=True)

        # An empty path means none, as for the other paths.
        manifest_location = where(flow_output_file)
        manifest = (
            None
            if manifest_location is None
            else read_manifest(manifest_location, trust_paths=trust_manifest)
        )
        dataset = where(merged_store_path) or (manifest.dataset if manifest else None)
        if dataset is None:
            raise DatasetError(
                "no dataset: pass flow_output_file (the .flow manifest) or merged_store_path"
            )
        self.flow_output_file = os.fspath(flow_output_file) if flow_output_file else None
        self.merged_store_path = dataset.path
        self._infoset = _table(
            where(parquet_file_path),
            None if manifest is None else manifest.infoset,
            dataset,
            "infoset",
        )
        self._attribset = _table(
            where(parquet_file_attribs),
            None if manifest is None else manifest.attribset,
            dataset,
            "attribset",
        )
        self.parquet_file_path = None if self._infoset is None else self._infoset.path
        self.parquet_file_attribs = None if self._attribset is None else self._attribset.path
        self.reader = DatasetReader(dataset)
        # The tables of the version the reader has open: the files when they belong to
        # it, otherwise those the dataset carries (cadstore.lifecycle).
        self._tables = TrustedTables(self.reader)
        self._info: pd.DataFrame | None = None
        self._info_table: Any = None  # the pyarrow Table the frame above was made from
        #: The table's row of each of the frame's rows (the frame is sorted by ``id``).
        self._info_order: np.ndarray | None = None
        self._info_metadata: dict[bytes, bytes] = {}
        self._attribs: pd.DataFrame | None = None
        self._zarr_store: Any = None
        self._group_data: dict[str, xr.Dataset] = {}
        self._views: dict[str, xr.Dataset] = {}
        self._dask_client: Any = None
        self._dask_cluster: Any = None
        self._closed = False
        self._start_dask(dask_client_params)

    @property
    def infoset(self) -> Location | None:
        """Where the ``.infoset`` is, or would be written (a split records itself there):
        the file given, listed or found beside the dataset, else beside the dataset when
        the dataset carries an infoset; ``None`` when there is none at all."""
        if self._infoset is None and self._tables.has("infoset"):
            return copy_beside(self.reader.location, "infoset")
        return self._infoset

    @property
    def dataset_location(self) -> Location:
        """The dataset."""
        return self.reader.location

    # ------------------------------------------------------------------ lifecycle
    def _start_dask(self, params: Mapping[str, Any] | None) -> None:
        if not params or params.get("disable") or not params.get(START_CLUSTER):
            return
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            warnings.warn(
                "dask_client_params asks for a Dask cluster but dask.distributed is not "
                "installed (pip install 'cadstore[dask]'); continuing without one",
                CadstoreWarning,
                stacklevel=3,
            )
            return
        kwargs = {k: v for k, v in params.items() if k not in _DASK_OWN_KEYS}
        self._dask_cluster = LocalCluster(**kwargs)
        self._dask_client = Client(self._dask_cluster)

    def close(self, close_dask: bool = True) -> None:
        """Close the dataset files and, with ``close_dask``, the Dask cluster. Idempotent.

        Parameters
        ----------
        close_dask
            Also shut down the cluster started for ``dask_client_params``.
        """
        # Each resource is closed even if closing one before it failed (the error is
        # raised once all are closed): a failing close must not leave the dataset open
        # or the cluster's processes running.
        with contextlib.ExitStack() as stack:
            if close_dask and self._dask_client is not None:
                client, cluster = self._dask_client, self._dask_cluster
                self._dask_client = self._dask_cluster = None
                stack.callback(cluster.close)
                stack.callback(client.close)
            stack.callback(self.reader.close)
            if self._zarr_store is not None:
                stack.callback(self._zarr_store.close)
                self._zarr_store = None
            for ds in self._group_data.values():
                stack.callback(ds.close)
            self._group_data.clear()
            self._views.clear()
            self._closed = True

    def __enter__(self) -> DatasetExplorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<DatasetExplorer {self.merged_store_path!r} items={self.reader.n_items} "
            f"groups={sorted(self.reader.groups) if not self._closed else '(closed)'}>"
        )

    # ------------------------------------------------------------------ structure
    @property
    def n_items(self) -> int:
        """Number of items (file codes are ``0 .. n_items - 1``)."""
        return self.reader.n_items

    def available_groups(self) -> set[str]:
        """Return the names of the data groups.

        Returns
        -------
        set of str
            E.g. ``{"faces", "edges", "graph", "faceface"}``.
        """
        return set(self.reader.groups)

    def _check_group(self, group: str) -> None:
        groups = self.reader.groups
        if group not in groups:
            raise DatasetError(f"unknown group {group!r}; the dataset has groups {sorted(groups)}")

    def _has_node(self, path: str) -> bool:
        """Whether ``path`` (``group`` or ``group/array``, as stored) is a node of the
        dataset as stored: a group the reader lists (a triangle group too), or an array
        stored in it (not one the reader presents there from a triangle group)."""
        group, _, array = path.strip("/").partition("/")
        try:
            arrays = self.reader.arrays(group)
        except DatasetError:
            return False
        return not array or (
            array in arrays and self.reader.stored_as(group, array) == (group, array)
        )

    def _data_arrays(self, group: str) -> list[str]:
        # The offsets index is how items are found, not data a user queries.
        return [a for a in self.reader.arrays(group) if a != OFFSETS]

    def available_arrays(self, group: str) -> set[str]:
        """Return the arrays of ``group``, including ``file_id_code_<group>``.

        Parameters
        ----------
        group
            A group name.

        Returns
        -------
        set of str
            Array names.

        Raises
        ------
        DatasetError
            If the group does not exist.
        """
        self._check_group(group)
        return set(self._data_arrays(group))

    def _check_array(self, group: str, array: str) -> None:
        self._check_group(group)
        arrays = self._data_arrays(group)
        if array not in arrays:
            raise DatasetError(
                f"unknown array {array!r} in group {group!r}; it has {sorted(arrays)}"
            )

    def _per_row(self, group: str) -> list[str]:
        """The per-item arrays of ``group`` that are presented once per row.

        Those of a group that has arrays of rows on the group's primary dimension:
        ``graph/num_nodes`` beside the graph edges, as the specified merged store holds
        it. A group of per-item arrays only (its ``file_id_code_<group>`` has no rows)
        keeps them on the ``item`` dimension.
        """
        if not self._has_rows(group):
            return []
        return [a for a in self._data_arrays(group) if self.reader.is_per_item(group, a)]

    def _has_rows(self, group: str) -> bool:
        """Whether ``group`` has arrays of rows on its primary dimension (besides
        ``file_id_code_<group>``), rather than per-item arrays only."""
        codes = file_id_code_name(group)
        return any(
            a != codes and not self.reader.is_per_item(group, a) for a in self._data_arrays(group)
        )

    def _presented(self, group: str, array: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """Shape and dims of ``group/array`` as the explorer presents it."""
        meta = self.reader.array_meta(group, array)
        shape = tuple(int(n) for n in meta.shape)
        dims = tuple(str(d) for d in meta.dims)
        if array in self._per_row(group):
            n_rows = int(self.reader.offsets(group)[-1])
            return (n_rows, *shape[1:]), (self.reader.primary_dimension(group), *dims[1:])
        return shape, dims

    @staticmethod
    def _names(
        group: str | None, array: str | None, group_name: str | None, array_name: str | None
    ) -> tuple[str, str]:
        """The group and array of a call made positionally or with the specified
        keywords ``group_name=`` / ``array_name=``."""
        for label, given, alias in (("group", group, group_name), ("array", array, array_name)):
            if given is not None and alias is not None:
                raise DatasetError(f"pass either {label} or {label}_name, not both")
        group = group if group is not None else group_name
        array = array if array is not None else array_name
        if group is None or array is None:
            raise DatasetError("pass a group and an array (or group_name= and array_name=)")
        return group, array

    def _open_zarr_store(self) -> Any:
        if self._zarr_store is None:
            import zarr

            from cadstore.dataset.zarr_view import CompleteStore

            where = self.reader.location
            store: Any
            root = None
            if where.remote:
                # A URL: zarr-python reads the zip (or the prefix) through fsspec.
                options = dict(where.storage_options or {})
                url = where.path if where.isdir() else f"zip::{where.path}"
                protocol = where.path.partition("://")[0]
                nested = {protocol: options} if url.startswith("zip::") else options
                store = zarr.storage.FsspecStore.from_url(
                    url, storage_options=nested, read_only=True
                )
            elif where.isdir():
                store = zarr.storage.LocalStore(where.path, read_only=True)
                root = where.path  # whose keys must be regular files inside it
            else:
                store = zarr.storage.ZipStore(where.path, mode="r")
            # A chunk the merger stored and that is gone is an error, not fill values.
            self._zarr_store = CompleteStore(store, where.path, root)
        return self._zarr_store

    def get_group_data(self, group: str) -> xr.Dataset:
        """Return ``group`` as a lazy ``xarray.Dataset`` opened with zarr-python.

        Nothing is read until values are asked for (``.values``, ``.load()``, arithmetic),
        and then only the chunks needed. Dask-backed only when a cluster was requested.
        zarr-python reads the group's metadata where cadstore's reader does: the consolidated
        copy at the dataset's root (xarray 2025.3 and later, pyproject's floor: earlier ones
        looked for it in the group, warned, and read the group's own documents), or, for a
        dataset whose root has none, each node's own document, without xarray's warning
        that it found no copy.
        Per-item arrays of a group with rows (``graph/num_nodes``) appear once per row,
        on the group's primary dimension, as in the specified merged store (so
        ``num_nodes[range_start]`` beside the edges works); they are stored once per
        item, see ``docs/format.md``.

        Parameters
        ----------
        group
            A group name.

        Returns
        -------
        xarray.Dataset
            Every array of the group on its stored dimensions, with the group attributes.

        Raises
        ------
        DatasetError
            If the group does not exist.
        CorruptStoreError
            If zarr-python refuses the group's metadata; and when values are read, if a
            chunk they need is missing or damaged; naming the dataset and the group, chunk
            or array.
        KeyNotFoundError
            If zarr-python was asked for a group or array the dataset does not have (a
            wrong call, not damage), naming it.
        """
        self._check_group(group)
        found = self._group_data.get(group)
        if found is None:
            import xarray as xr

            per_row = self._per_row(group)
            renamed = self._renamed(group)
            where = self.reader.location.path
            try:
                found = xr.open_zarr(
                    self._open_zarr_store(),
                    group=group,
                    # The copy the reader read, or none: xarray's default looks for one
                    # and warns when there is none.
                    consolidated=self.reader.consolidated,
                    chunks=None,  # Dask-backed below, once guarded
                    drop_variables=[OFFSETS, *per_row, *renamed],
                )
            except CadstoreError:
                raise
            except _REFUSED_METADATA_ERRORS as exc:
                # Metadata cadstore's reader accepts and zarr-python or xarray refuses (zarr's
                # MetadataValidationError is a ValueError); a TypeError of a wrong call is
                # the caller's, as itself.
                if isinstance(exc, TypeError) and not _raised_by_zarr(exc):
                    raise
                missing = _missing_node(exc)
                if missing is not None and not self._has_node(missing):
                    # zarr-python was asked for a node the dataset does not have: the
                    # asking is wrong, not the file (a node it has and zarr-python
                    # does not find is damage).
                    raise KeyNotFoundError(
                        missing,
                        f"{where}: zarr-python was asked for {missing!r}, which is no group "
                        f"or array of the dataset (opening group {group})",
                    ) from exc
                raise CorruptStoreError(
                    where,
                    f"group {group} cannot be opened with zarr-python "
                    f"({type(exc).__name__}: {exc})",
                ) from exc
            guarded = _guard_zarr_reads(found, where, group)
            if self._dask_client is not None:
                found = _dask_backed(found, guarded, group)
            if per_row:
                from xarray.core import indexing

                for array in per_row:
                    backend = _per_row_array_class()(self.reader, group, array)
                    _, dims = self._presented(group, array)
                    lazy = indexing.LazilyIndexedArray(backend)
                    found[array] = xr.Variable(dims, lazy)
            found = self._with_reader_arrays(group, found, set(per_row), set(renamed))
            self._group_data[group] = found
        return found

    def _renamed(self, group: str) -> list[str]:
        """The arrays stored in ``group`` whose dimension names the reader presents
        qualified (a dataset merged before 1c9d8a3 may store ``bin`` 64 long in
        ``d2_distance`` and 32 in ``a3_distance``, which xarray refuses in one group)."""
        return [
            array
            for array in self.reader.arrays(group)
            if self.reader.stored_as(group, array) == (group, array)
            and self.reader.array_meta(group, array).dims != self.reader.stored_dims(group, array)
        ]

    def _with_reader_arrays(
        self, group: str, found: xr.Dataset, per_row: set[str], renamed: set[str]
    ) -> xr.Dataset:
        """``found`` with the group's arrays zarr-python cannot present added, read through
        the reader, in the group's array order: the triangle-stored face-pair arrays as
        their full ``N x N`` rows, and ``renamed``, those whose dimension names the reader
        qualifies (see :meth:`_renamed`), on those names. ``per_row`` arrays (see
        :meth:`_per_row`) were added on their presented dimensions already."""
        arrays = self.reader.arrays(group)
        virtual = [
            a
            for a in arrays
            if a not in per_row and (a in renamed or self.reader.stored_as(group, a) != (group, a))
        ]
        if not virtual:
            return found
        import xarray as xr
        from xarray.core import indexing

        for array in virtual:
            meta = self.reader.array_meta(group, array)
            backend = _reader_backed_array_class()(self.reader, group, array)
            found[array] = xr.Variable(tuple(meta.dims), indexing.LazilyIndexedArray(backend))
        names = [str(v) for v in found.data_vars]
        order = [a for a in arrays if a in names]
        return found[order + [v for v in names if v not in order]]

    def get_array_data(
        self,
        group: str | None = None,
        array: str | None = None,
        *,
        group_name: str | None = None,
        array_name: str | None = None,
    ) -> xr.DataArray:
        """Return one array of ``group`` as a lazy ``xarray.DataArray``.

        Parameters
        ----------
        group, array
            Group and array names, positionally.
        group_name, array_name
            The same, by the specified keywords
            (``get_array_data(group_name="faces", array_name="face_areas")``).

        Returns
        -------
        xarray.DataArray
            The array, lazy as in :meth:`get_group_data`.

        Raises
        ------
        DatasetError
            If the group or the array does not exist, or is not given (or given twice).
        """
        group, array = self._names(group, array, group_name, array_name)
        self._check_array(group, array)
        return self.get_group_data(group)[array]

    def _view(self, group: str) -> xr.Dataset:
        """``group`` as a Dataset whose variables read through ``DatasetReader`` on demand.

        Per-item arrays of a group with rows (``graph/num_nodes``) are presented once per
        row, on the group's primary dimension, as :meth:`get_group_data` presents them: on
        a dimension of their own, a mask combining them with the rows would be broadcast
        to every item times every row.
        """
        found = self._views.get(group)
        if found is None:
            import xarray as xr
            from xarray.core import indexing

            per_row = self._per_row(group)
            variables = {}
            for array in self._data_arrays(group):
                if array in per_row:
                    backend = _per_row_array_class()(self.reader, group, array)
                else:
                    backend = _reader_backed_array_class()(self.reader, group, array)
                _, dims = self._presented(group, array)
                lazy = indexing.LazilyIndexedArray(backend)
                variables[array] = xr.Variable(dims, lazy)
            found = xr.Dataset(
                variables, attrs={"primary_dimension": self.reader.primary_dimension(group)}
            )
            self._views[group] = found
        return found

    # ------------------------------------------------------------------ codes
    def _row_codes(self, group: str) -> np.ndarray:
        # The offsets give every row's item code without reading file_id_code_<group>.
        offsets = self.reader.offsets(group)
        return np.repeat(np.arange(self.n_items, dtype=np.int64), np.diff(offsets))

    def _check_code(self, file_id_code: Any) -> int:
        code = whole_number(file_id_code, "file id code")
        if not 0 <= code < self.n_items:
            raise DatasetError(
                f"unknown file id code {code}: valid codes are 0..{self.n_items - 1}"
            )
        return code

    def decode_file_id_code(self, code: int) -> str:
        """Return the item name of a file id code.

        Parameters
        ----------
        code
            A file id code.

        Returns
        -------
        str
            The item name (the infoset ``name``).

        Raises
        ------
        DatasetError
            If the code is not ``0 .. n_items - 1``.
        """
        return self.reader.item_names[self._check_code(code)]

    def get_file_list(self, group: str, where: Callable[[xr.Dataset], Any]) -> np.ndarray:
        """Return the sorted file id codes with at least one row of ``group`` matching.

        Parameters
        ----------
        group
            A group name.
        where
            ``where(ds)`` gets the group as an ``xarray.Dataset`` and returns a boolean
            ``DataArray`` (or array) over the group's rows, e.g.
            ``lambda ds: ds["face_types"] == 3``. Only the arrays it touches are read.
            A mask with extra dimensions matches a row when any of its values is true. The
            group's arrays are presented as in :meth:`get_group_data`: a per-item array of
            a group with rows (``graph/num_nodes``) once per row, beside the rows, so an
            item without rows in the group is never selected; in a group of per-item
            arrays only, a mask over the ``item`` dimension selects items directly.

        Returns
        -------
        numpy.ndarray
            int64 file id codes, sorted, without duplicates.

        Raises
        ------
        DatasetError
            If the group does not exist, ``where`` is not callable (a string such as
            ``"face_types == 3"``), or the mask does not cover the group's rows.
        """
        self._check_group(group)
        if not callable(where):
            raise DatasetError(
                "where must be a callable taking the group's xarray.Dataset and returning a "
                f"boolean mask, e.g. lambda ds: ds['face_types'] == 3; got "
                f"{type(where).__name__} {where!r}"
            )
        ds = self._view(group)
        result = where(ds)
        dims = tuple(getattr(result, "dims", ()))
        mask = np.asarray(getattr(result, "values", result))
        if mask.dtype != bool:
            raise DatasetError(f"where() must return a boolean mask, got dtype {mask.dtype}")
        if mask.ndim == 0:
            raise DatasetError("where() must return a mask over rows, got a single value")
        if mask.ndim > 1:
            # The trailing size is given, not -1, so that a mask with no rows reshapes too.
            trailing = int(np.prod(mask.shape[1:]))
            mask = np.asarray(mask.reshape(mask.shape[0], trailing).any(axis=1))
        primary = self.reader.primary_dimension(group)
        offsets = self.reader.offsets(group)
        if dims[:1] == (ITEM_DIM,) or (len(mask) == self.n_items != offsets[-1]):
            return np.flatnonzero(mask).astype(np.int64)
        if len(mask) != offsets[-1]:
            raise DatasetError(
                f"where() returned {len(mask)} values but group {group!r} has "
                f"{int(offsets[-1])} rows on {primary!r}"
            )
        codes = _items_of_rows(offsets, np.flatnonzero(mask))
        return np.unique(codes).astype(np.int64)

    def file_dataset(self, file_id_code: int, group: str) -> xr.Dataset:
        """Return one item's rows of ``group`` as an in-memory ``xarray.Dataset``.

        The rows are found through the group's offsets index and read directly (no scan of
        ``file_id_code_<group>``).

        Parameters
        ----------
        file_id_code
            The item's code.
        group
            A group name.

        Returns
        -------
        xarray.Dataset
            The item's arrays on the stored dimensions, ``file_id_code_<group>``, and
            attributes ``file_id_code``, ``name`` and ``primary_dimension``. Per-item
            arrays appear once per row of the item in a group with rows (``num_nodes``
            beside the graph edges, as in the specified store), otherwise on an ``item``
            dimension of length 1. Every variable's ``.data`` is a
            :class:`ComputedArray`, so the specified users' ``.data.compute()`` returns
            the numpy array, without Dask.

        Raises
        ------
        DatasetError
            If the code or the group is unknown.
        """
        import xarray as xr

        code = self._check_code(file_id_code)
        self._check_group(group)
        provenance = file_id_code_name(group)
        wanted = [a for a in self._data_arrays(group) if a != provenance]
        values = self.reader.read_item(code, groups=[group], arrays={group: wanted})[group]
        start, stop = self.reader.item_range(group, code)
        per_row = self._per_row(group)
        variables: dict[str, Any] = {}
        for array, data in values.items():
            dims = tuple(self.reader.array_meta(group, array).dims)
            if array in per_row:
                _, dims = self._presented(group, array)
                data = np.repeat(np.asarray(data)[np.newaxis, ...], stop - start, axis=0)
            elif self.reader.is_per_item(group, array):
                data = np.asarray(data)[np.newaxis, ...]
            variables[array] = _computed(dims, data)
        if provenance in self.reader.arrays(group):
            dims = tuple(self.reader.array_meta(group, provenance).dims)
            rows = np.full(stop - start, code, dtype=np.int64)
            variables[provenance] = _computed(dims, rows)
        variables = {name: variables[name] for name in sorted(variables)}
        return xr.Dataset(
            variables,
            attrs={
                "file_id_code": code,
                "name": self.reader.item_names[code],
                "primary_dimension": self.reader.primary_dimension(group),
            },
        )

    def query_cross_group(
        self, primary_group: str, secondary_group: str, join_strategy: str = "file_id_code"
    ) -> xr.Dataset:
        """Return the rows of ``primary_group`` with the variables of ``secondary_group``
        joined on each row's item, e.g. a part's label beside each of its faces.

        The specified system's later documentation names this method without describing
        it; cadstore joins as described here.

        Parameters
        ----------
        primary_group
            The group whose rows are kept (``"faces"``).
        secondary_group
            The group joined (``"Labels"``): at most one row per item (a group of
            per-item values only holds one value per item). A group with several rows
            for an item is refused; aggregate it to one row per item first.
        join_strategy
            How rows meet: only ``"file_id_code"`` (the item each row belongs to, as
            ``file_id_code_<group>`` gives it) is supported.

        Returns
        -------
        xarray.Dataset
            :meth:`get_group_data` of ``primary_group``, lazy as it is (Dask-backed when
            a cluster was requested; nothing of it is read here), with every array of
            ``secondary_group`` but ``file_id_code_<secondary_group>`` added on the
            primary group's row dimension (``item`` for a group of per-item values
            only), its trailing dimensions kept. A joined array whose name the primary
            group has as an array or a dimension is called ``<secondary_group>_<name>``
            (so it never becomes a coordinate); a trailing dimension
            ``<secondary_group>_<dimension>`` when the primary group uses its name with
            another length, as its row dimension, or as an array's name, or a joined
            array has that name (xarray would take such an array for the dimension's
            coordinate). The joined arrays are lazy too: each is made, for the rows read,
            from the secondary group's values by item, which are read here (one row per
            item, so at most ``n_items`` rows).

            A per-item array of ``secondary_group`` (``graph/num_nodes``, see
            :meth:`DatasetReader.is_per_item`) holds a value for every item, one
            without rows in that group too: every row gets its item's stored value, in
            the array's dtype. For an array of rows, a row whose item has no row in
            ``secondary_group`` gets a fill: NaN for floats; for integers and
            booleans, which cannot hold NaN, the array is promoted to float64 with NaN
            (integers beyond 2**53, which float64 would round, are refused), but only
            when some such row exists, else it keeps its dtype; ``None`` for anything
            else.

            An item that was merged without an array another item has (no
            ``graph/num_nodes``, or a ``Labels`` row without ``Labels/weight``) holds
            the merge's fill in the dataset: NaN for floats, which reads as missing, but
            0, ``False`` or ``""`` for integers, booleans and strings, which the join
            gives as the item's value. The dataset records nothing telling such a fill
            from a stored 0 or ``""`` (neither the arrays nor their metadata, nor the
            infoset), so the join cannot make it missing.

        Raises
        ------
        DatasetError
            If ``join_strategy`` is not supported (naming it and the supported one), a
            group is unknown (as :meth:`get_group_data` raises it), ``secondary_group``
            holds several rows for an item (naming the group and the item's code), an
            integer array needing a fill holds a value float64 cannot hold exactly, or
            a joined array's name is taken in its prefixed form as well, or a trailing
            dimension's (naming both).

        Examples
        --------
        >>> faces = explorer.query_cross_group("faces", "Labels")  # doctest: +SKIP
        >>> faces["part_label"].values  # each face's part label  # doctest: +SKIP
        """
        import xarray as xr
        from xarray.core import indexing

        if join_strategy != _JOIN_ON_FILE:
            raise DatasetError(
                f"unknown join_strategy {join_strategy!r}; the supported strategies are "
                f"{[_JOIN_ON_FILE]}"
            )
        self._check_group(primary_group)
        self._check_group(secondary_group)
        primary = self.get_group_data(primary_group)
        n = self.n_items
        if self._has_rows(primary_group):
            row_dim = self.reader.primary_dimension(primary_group)
            row_offsets = self.reader.offsets(primary_group)
        else:
            row_dim, row_offsets = ITEM_DIM, np.arange(n + 1, dtype=np.int64)
        tables = self._by_item(secondary_group)
        has_primary_rows = np.diff(row_offsets) > 0
        dims_taken = {str(d): size for d, size in primary.sizes.items()}
        dims_taken.setdefault(row_dim, int(row_offsets[-1]))
        variables_taken = {str(v) for v in primary.variables}
        # A joined array named like a dimension of the primary group would become that
        # dimension's coordinate (or be refused by xarray): it takes the prefix, as a name
        # the primary group has does.
        names = {
            array: (
                f"{secondary_group}_{array}"
                if array in variables_taken or array in dims_taken
                else array
            )
            for array in tables
        }
        chunks = _row_chunks(primary, row_dim) if self._dask_client is not None else None
        joined: dict[str, Any] = {}
        for array, (table, present, trailing) in tables.items():
            name = names[array]
            if name in variables_taken or name in dims_taken or name in joined:
                raise DatasetError(
                    f"cannot join {secondary_group}/{array}: {primary_group} has {array!r} "
                    f"and {name!r} too (as arrays or dimensions)"
                )
            if bool(np.any(has_primary_rows & ~present)):
                table = _with_fill(table, present, f"{secondary_group}/{array}")
            dims = [row_dim]
            for given, size in zip(trailing, table.shape[1:], strict=True):
                dim = given
                # Kept when the primary group has no such dimension, or has it as long;
                # prefixed when it is used with another length, is the row dimension, or
                # names an array (of the primary group or joined), which xarray would
                # take for its coordinate.
                if (
                    dims_taken.get(dim, size) != size
                    or dim == row_dim
                    or dim in variables_taken
                    or dim in names.values()
                ):
                    dim = f"{secondary_group}_{given}"
                    if dim in dims_taken or dim in variables_taken or dim in names.values():
                        raise DatasetError(
                            f"cannot join {secondary_group}/{array}: its dimension {given!r} "
                            f"needs another name in {primary_group}, and {dim!r} is taken too"
                        )
                dims.append(dim)
            backend = _joined_array_class()(table, row_offsets)
            variable = xr.Variable(tuple(dims), indexing.LazilyIndexedArray(backend))
            if chunks is not None:
                variable = _as_dask(variable, {row_dim: chunks}, f"{secondary_group}-{array}")
            joined[name] = variable
        return primary.assign(joined)

    def _by_item(self, group: str) -> dict[str, tuple[np.ndarray, np.ndarray, tuple[str, ...]]]:
        """The arrays of ``group`` (but its ``file_id_code``) by item, for
        :meth:`query_cross_group`: ``{array: (values, present, trailing dims)}``,
        ``values`` of shape ``(n_items, ...)`` (the array's own dtype; what is there for
        an item not ``present`` is undefined), ``present`` whether the item has a value:
        a row of the group for an array of rows; every item for a per-item array
        (:meth:`DatasetReader.is_per_item`, ``graph/num_nodes``), which holds a value for
        each item whether it has rows or not.

        Raises
        ------
        DatasetError
            If an item has several rows in ``group``, naming the group and its code.
        """
        n = self.n_items
        if self._has_rows(group):
            counts = np.diff(self.reader.offsets(group))
            several = np.flatnonzero(counts > 1)
            if several.size:
                code = int(several[0])
                more = several.size - 1
                others = f" (and {more} other item{'s' * (more > 1)})" if more else ""
                raise DatasetError(
                    f"group {group!r} holds {int(counts[code])} rows for file id code {code} "
                    f"({self.reader.item_names[code]!r}){others}; query_cross_group joins at "
                    f"most one row per item: aggregate {group!r} to one row per item first"
                )
            present = counts == 1
        else:
            present = np.ones(n, dtype=bool)
        provenance = file_id_code_name(group)
        tables = {}
        for array in self._data_arrays(group):
            if array == provenance:
                continue
            values = self.reader.read_array(group, array)
            trailing = tuple(str(d) for d in self.reader.array_meta(group, array).dims[1:])
            if self.reader.is_per_item(group, array):
                # Stored once for every item, rows or not (``graph/num_nodes`` of an item
                # without edges): nothing to fill.
                tables[array] = (values, np.ones(n, dtype=bool), trailing)
                continue
            # One row per present item, in code order.
            by_item = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
            by_item[present] = values
            tables[array] = (by_item, present, trailing)
        return tables

    # ------------------------------------------------------------------ keys
    def _locate_key(self, key: str, group: str | None) -> tuple[str, str | None]:
        """Return ``(where, group)``: ``("array", g)`` or ``("info", None)``."""
        groups = self.reader.groups
        if group is not None:
            self._check_group(group)
            if key in self._data_arrays(group):
                return "array", group
        for other in groups:
            if other != group and key in self._data_arrays(other):
                if group is not None:
                    logger.info(
                        "key %r not in group %r, found in fallback group %r", key, group, other
                    )
                return "array", other
        info = self._info_frame(required=False)
        if info is not None and key in info.columns:
            if group is not None:
                logger.info("key %r not in group %r, found in the infoset columns", key, group)
            return "info", None
        columns = [] if info is None else list(info.columns)
        arrays = sorted({a for g in groups for a in self._data_arrays(g)})
        # A typo's name first: the lists below may be long, and are cut.
        close = difflib.get_close_matches(key, [*arrays, *map(str, columns)], n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise DatasetError(
            f"unknown key {key!r}{guess}: it is neither an array of any group "
            f"({_choices(arrays)}) nor an infoset column ({columns})"
        )

    def key_values(self, key: str, group: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return the values of ``key`` and the file id code of each value.

        Parameters
        ----------
        key
            An array name, looked up in ``group`` first, then in the other groups, then
            among the infoset columns.
        group
            The group to look in first (``None``: every group in order).

        Returns
        -------
        values, codes : numpy.ndarray
            One entry per row (or per item for per-item arrays and infoset columns). Arrays
            with trailing dimensions are flattened, each value keeping its row's code.
            Missing values (NaN, null) are dropped; the others keep their type (an
            integer or boolean infoset column with a missing value gives integers or
            booleans, not the floats or objects pandas makes of it).

        Raises
        ------
        DatasetError
            If the group or the key is unknown.
        """
        where, found = self._locate_key(key, group)
        if where == "info":
            info = self._info_frame()
            exact = self._exact_info_values(key)
            if exact is not None:
                return exact
            column = info[key]
            keep = column.notna().to_numpy()
            values = column.to_numpy()[keep]
            codes = info["id"].to_numpy(dtype=np.int64)[keep]
            if values.dtype == object:
                values = values.astype(str)
            return values, codes
        assert found is not None
        values = self.reader.read_array(found, key)
        if self.reader.is_per_item(found, key):
            codes = np.arange(self.n_items, dtype=np.int64)
        else:
            codes = self._row_codes(found)
        if values.ndim > 1:
            width = int(np.prod(values.shape[1:], dtype=np.int64))
            values = values.reshape(len(values), width).ravel()
            codes = np.repeat(codes, width)
        if values.dtype.kind in "fc":
            keep = ~np.isnan(values)
            if not keep.all():
                values, codes = values[keep], codes[keep]
        return values, codes

    def _exact_info_values(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``key_values`` of an integer or boolean infoset column, in the column's dtype.

        pandas makes such a column with a missing value floats (or objects, which were
        then turned into the strings ``'True'``/``'False'``); read from the Parquet table,
        its present values keep their type once the missing ones are dropped. Ordered by
        item code as the infoset frame is. ``None`` for a column of another type.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        column = self._info_table.column(key)
        if not (pa.types.is_integer(column.type) or pa.types.is_boolean(column.type)):
            return None
        ids = self._info_table.column("id")
        keep = pc.and_(pc.is_valid(column), pc.is_valid(ids))
        values = np.asarray(pc.filter(column, keep).to_numpy())
        codes = np.asarray(pc.filter(ids, keep).to_numpy()).astype(np.int64)
        order = np.argsort(codes, kind="stable")
        return values[order], codes[order]

    def _bin_index(
        self, values: np.ndarray, bins: int | Sequence[float] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(edges_or_categories, index)``; ``index`` is -1 outside every bin."""
        if bins is None:
            categories = np.unique(values)
            return categories, np.searchsorted(categories, values)
        if values.dtype.kind not in "biuf":
            raise DatasetError(
                f"values of dtype {values.dtype} cannot be binned; pass bins=None for categories"
            )
        numeric = values.astype(np.float64, copy=False)
        if isinstance(bins, int | np.integer):
            if bins < 1:
                raise DatasetError(f"bins must be >= 1, got {bins}")
            # Edges span the finite values; NaN and infinities fall in no bin (numpy's
            # automatic range refuses them).
            finite = numeric[np.isfinite(numeric)]
            if not len(finite) and len(numeric):
                raise DatasetError("no finite values to bin; pass bin edges or bins=None")
            edges = np.histogram_bin_edges(finite, bins=int(bins))
        else:
            edges = np.asarray(bins, dtype=np.float64)
            if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) < 0):
                raise DatasetError("bins must be an int or a monotonic sequence of >= 2 edges")
        index = np.searchsorted(edges, numeric, side="right") - 1
        # np.histogram's last bin is closed on the right.
        index[numeric == edges[-1]] = len(edges) - 2
        index[(numeric < edges[0]) | (numeric > edges[-1]) | np.isnan(numeric)] = -1
        return edges, index

    def create_distribution(
        self, key: str, bins: int | Sequence[float] | None = 10, group: str | None = "faces"
    ) -> dict[str, Any]:
        """Histogram ``key`` and list the file id codes that fall in each bin.

        The result has the specified shape for every kind of key: ``k`` bins have ``k + 1``
        ``bin_edges``, so the plotting code of the specified system's users works
        unchanged (``centers = 0.5 * (edges[1:] + edges[:-1])``, ``plt.bar(centers, hist,
        width=edges[1] - edges[0])``, or ``plt.bar(edges[:-1], hist,
        width=np.diff(edges), align="edge")``).

        Parameters
        ----------
        key
            An array name, looked up in ``group``, then the other groups (logged as a
            fallback), then the infoset columns.
        bins
            Number of equal-width bins or the bin edges, as for ``numpy.histogram``;
            ``None`` counts each category (each distinct value) in a bin of its own.
        group
            The group to look in first (``None``: every group in order, then the infoset).

        Returns
        -------
        dict
            ``bin_edges`` (float64, one more than the bins), ``hist`` (values per bin,
            int64) and ``file_id_codes_in_bins`` (per bin, the sorted codes of the items
            with at least one value in it). With ``bins=None`` also ``categories``: the
            value each bin counts. Integer categories (and floats that are whole numbers)
            get unit bins centred on the values, one per integer from the smallest to the
            largest (those no item has are empty), as the specified system draws them:
            codes 1..5 give edges 0.5, 1.5, ..., 5.5. Other categories (strings, or
            integers spread over more than 4096 values) get unit bins centred on
            ``0 .. k-1`` in sorted order, named by ``categories``.

        Raises
        ------
        DatasetError
            If the group or the key is unknown, non-numeric values are given bins, or a
            number of bins is given for values none of which is finite (NaN and
            infinities fall in no bin).

        Notes
        -----
        Arrays stored once per item (``graph/num_nodes``) count once per item here. The
        specified merged store repeats ``num_nodes`` for every graph edge, so its ``hist``
        counts edges; its ``bin_edges`` and ``file_id_codes_in_bins`` (what the
        tutorials plot) are the same as these.
        """
        values, codes = self.key_values(key, group)
        categories: np.ndarray | None = None
        if bins is None:
            categories, edges, index = _categorical_bins(values)
        else:
            edges, index = self._bin_index(values, bins)
        n_bins = len(edges) - 1
        inside = index >= 0
        hist = np.bincount(index[inside], minlength=n_bins).astype(np.int64)
        # One sort of (bin, code) pairs instead of one np.unique per bin.
        pairs = np.unique(index[inside].astype(np.int64) * self.n_items + codes[inside])
        pair_bins = pairs // max(self.n_items, 1)
        split_at = np.searchsorted(pair_bins, np.arange(1, n_bins))
        in_bins = [part % max(self.n_items, 1) for part in np.split(pairs, split_at)]
        result: dict[str, Any] = {
            "bin_edges": edges,
            "hist": hist,
            "file_id_codes_in_bins": in_bins[:n_bins],
        }
        if categories is not None:
            result["categories"] = categories
        return result

    def create_distribution_incore(
        self, key: str, group: str | None = "faces", bins: int | Sequence[float] | None = 10
    ) -> dict[str, Any]:
        """:meth:`create_distribution` under the name and argument order of the specified
        system's later documentation (``create_distribution_incore(key, group, bins)``).

        The specified system computes :meth:`create_distribution` on its Dask cluster and
        documents this method as the variant that loads the values into memory instead.
        cadstore's :meth:`create_distribution` already works in memory (the values are read
        through the dataset reader, without Dask), so both give the same result; this name
        lets code written against either documentation run.

        Parameters
        ----------
        key, group, bins
            As for :meth:`create_distribution` (``group`` comes before ``bins`` here).

        Returns
        -------
        dict
            As :meth:`create_distribution` returns it.
        """
        return self.create_distribution(key, bins=bins, group=group)

    def build_membership_matrix(
        self,
        group: str | None,
        key: str,
        bins_or_categories: int | Sequence[Any] | None = None,
        as_counts: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return which items have values in which bins or categories.

        Parameters
        ----------
        group
            The group to look in first (``None``: every group, then the infoset).
        key
            The array or infoset column.
        bins_or_categories
            ``None``: one column per distinct value; an int: that many equal-width bins
            over the value range; a sequence: exactly these categories (values outside
            them are ignored).
        as_counts
            Count the values instead of marking presence with 1.

        Returns
        -------
        matrix : numpy.ndarray
            ``(n_items, n_columns)``: uint8 0/1, or int64 counts with ``as_counts``.
        file_codes : numpy.ndarray
            The code of each matrix row (``0 .. n_items - 1``).
        categories : numpy.ndarray
            The category of each column, or the bin edges (``n_columns + 1``) for bins.

        Raises
        ------
        DatasetError
            If the group or the key is unknown, or a category is not a value the key's
            values can hold (``1.5`` among integers, ``"housings"`` among strings of
            at most 7 characters): it could match none of them.
        """
        values, codes = self.key_values(key, group)
        if bins_or_categories is None or isinstance(bins_or_categories, int | np.integer):
            categories, index = self._bin_index(values, bins_or_categories)
            n_cols = len(categories) - (0 if bins_or_categories is None else 1)
        else:
            categories = _categories_of(key, values.dtype, bins_or_categories)
            order = np.argsort(categories, kind="stable")
            ordered = categories[order]
            pos = np.clip(np.searchsorted(ordered, values), 0, max(len(ordered) - 1, 0))
            hit = ordered[pos] == values if len(ordered) else np.zeros(len(values), dtype=bool)
            index = np.where(hit, order[pos], -1)
            n_cols = len(categories)
        inside = index >= 0
        flat = codes[inside] * n_cols + index[inside]
        counts = np.bincount(flat, minlength=self.n_items * n_cols).reshape(self.n_items, n_cols)
        matrix = counts.astype(np.int64) if as_counts else (counts > 0).astype(np.uint8)
        return matrix, np.arange(self.n_items, dtype=np.int64), categories

    # ------------------------------------------------------------------ tables
    @overload
    def _info_frame(self, required: Literal[True] = ...) -> pd.DataFrame: ...
    @overload
    def _info_frame(self, required: bool) -> pd.DataFrame | None: ...
    def _info_frame(self, required: bool = True) -> pd.DataFrame | None:
        if self._info is None:
            found = self._tables.read("infoset", self._infoset)
            if found is not None:
                table, where = found
                check_item_codes(table, where, self.reader.n_items)
                self._info_metadata = dict(table.schema.metadata or {})
                frame = frame_of(table, where)
                order = np.argsort(frame["id"].to_numpy(), kind="stable")
                self._info = frame.iloc[order].reset_index(drop=True)
                self._info_table = table
                self._info_order = order
        if self._info is None and required:
            raise DatasetError(
                "no .infoset: pass parquet_file_path (or open the dataset from its .flow)"
            )
        return self._info

    def _attrib_frame(self) -> pd.DataFrame:
        if self._attribs is None:
            found = self._tables.read("attribset", self._attribset)
            if found is None:
                raise DatasetError(
                    "no .attribset: pass parquet_file_attribs (or open the dataset from its .flow)"
                )
            self._attribs = frame_of(*found)
        return self._attribs

    def infoset_metadata(self) -> dict[bytes, bytes]:
        """The Parquet schema metadata of the infoset read (what each column was made from,
        under ``b"cadstore"``); empty without an infoset."""
        if self._info_frame(required=False) is None:
            return {}
        return dict(self._info_metadata)

    @property
    def has_info(self) -> bool:
        """Whether the explorer has an infoset: a ``.infoset`` file, or the one the
        dataset carries (datasets merged by cadstore carry their tables)."""
        return self._infoset is not None or self._tables.has("infoset")

    def reload_info(self) -> None:
        """Forget the cached ``.infoset`` so the next query reads the file again.

        Needed after another process (or :class:`cadstore.dataset.loader.DatasetLoader`)
        rewrote it, e.g. to record a split.
        """
        self._info = None
        self._info_table = None
        self._info_order = None

    def _info_values(self, column: str) -> np.ndarray:
        """One infoset column's values by item code (``n_items`` of them), as stored.

        :meth:`get_file_info_all` goes through pandas, which makes an integer column with
        a missing value floats (rounding integers from 2**53, class codes 9 -> 9.0) and a
        boolean one objects. Here integer and boolean columns give arrays of their own
        dtype when every item has a value, else object arrays of Python values with ``None``
        for the items without one. Other columns are as pandas gives them (NaN or
        ``None`` where missing).
        """
        import pyarrow as pa

        info = self._info_frame()
        table = self._info_table
        n = self.reader.n_items
        values = table.column(column) if column in table.column_names else None
        ids = table.column("id")
        exact = values is not None and (
            pa.types.is_integer(values.type) or pa.types.is_boolean(values.type)
        )
        codes = ids.to_numpy() if exact and ids.null_count == 0 else None
        if values is None or codes is None or len(np.unique(codes)) != len(codes):
            # Not an integer or boolean column (or ids pandas would refuse, as before).
            by_code: np.ndarray = info.set_index("id").reindex(range(n))[column].to_numpy()
            return by_code
        if values.null_count == 0 and len(codes) == n:
            out = np.empty(n, dtype=np.dtype(values.type.to_pandas_dtype()))
            out[codes] = values.to_numpy()
            return out
        out = np.full(n, None, dtype=object)
        out[codes] = np.array(values.to_pylist(), dtype=object)
        return out

    def _exact_integers(self, column: str) -> tuple[np.ndarray, np.ndarray] | None:
        """An integer infoset column as stored, row by row of :meth:`get_file_info_all`:
        ``(values, present)``, ``values`` in the column's own integer dtype (0 where
        missing) and ``present`` whether the row has a value. ``None`` for a column of
        another type (or one the table does not name once).

        pandas makes an integer column with a missing value float64, in which integers
        from 2**53 on are rounded (2**53 + 1 reads as 2**53): conditions on it are
        compared here instead.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        self._info_frame()
        table, order = self._info_table, self._info_order
        assert table is not None and order is not None
        at = table.schema.get_field_index(column)
        if at < 0 or not pa.types.is_integer(table.schema.field(at).type):
            return None
        stored = table.column(at)
        values = np.asarray(pc.fill_null(stored, 0).to_numpy())[order]
        present = np.asarray(pc.is_valid(stored).to_numpy(zero_copy_only=False), dtype=bool)
        return values, present[order]

    def get_file_info_all(self) -> pd.DataFrame:
        """Return the whole ``.infoset`` (one row per item, sorted by ``id``).

        Returns
        -------
        pandas.DataFrame
            A copy; changing it does not change the explorer.

        Raises
        ------
        DatasetError
            If the explorer has no infoset.
        """
        frame = self._info_frame()
        assert frame is not None
        return frame.copy()

    def get_parquet_info_by_code(self, file_id_code: int) -> pd.DataFrame:
        """Return the ``.infoset`` row of one item.

        Parameters
        ----------
        file_id_code
            The item's code.

        Returns
        -------
        pandas.DataFrame
            One row.

        Raises
        ------
        DatasetError
            If the code is unknown or the explorer has no infoset.
        """
        frame = self._info_frame()
        assert frame is not None
        code = self._check_code(file_id_code)
        row = frame[frame["id"] == code]
        if row.empty:
            raise DatasetError(f"the infoset has no row with id {code}")
        return row.copy()

    def get_descriptions(
        self, table_name: str, key_id: int | str | None = None, use_wildchar: bool = False
    ) -> pd.DataFrame:
        """Look up an ``.attribset`` table, e.g. the names of the ``face_types`` codes.

        Parameters
        ----------
        table_name
            The table (``face_types``, a categorical field such as ``file_label``, ...).
        key_id
            Only the row with this ``id`` (an int), or with this ``name`` (a str).
        use_wildchar
            Treat ``table_name`` (and a str ``key_id``) as case-insensitive shell patterns
            (``*``, ``?``, ``[...]``); rows of every matching table are returned.

        Returns
        -------
        pandas.DataFrame
            Columns ``id``, ``name``, ``description``, ``table_name``.

        Raises
        ------
        DatasetError
            If no table matches (the message lists the tables), or ``key_id`` is in none of
            them (the message lists the valid ids). The specified explorer returned an empty
            frame here, which hid misrouted fields.
        """
        attribs = self._attrib_frame()
        tables = list(dict.fromkeys(attribs["table_name"].tolist()))
        if use_wildchar:
            pattern = table_name.lower()
            chosen = [t for t in tables if fnmatch.fnmatchcase(t.lower(), pattern)]
        else:
            chosen = [table_name] if table_name in tables else []
        if not chosen:
            raise DatasetError(f"unknown attribute table {table_name!r}; the tables are {tables}")
        rows = attribs[attribs["table_name"].isin(chosen)]
        if key_id is not None:
            if isinstance(key_id, str):
                names = rows["name"].astype(str)
                if use_wildchar:
                    keep = names.str.lower().map(lambda n: fnmatch.fnmatchcase(n, key_id.lower()))
                else:
                    keep = names == key_id
                valid = sorted(set(names))
            else:
                keep = rows["id"] == int(key_id)
                valid = sorted(set(rows["id"].tolist()))
            rows = rows[keep.to_numpy(dtype=bool)]
            if rows.empty:
                raise DatasetError(
                    f"no entry {key_id!r} in attribute table(s) {chosen}; valid entries are "
                    f"{_choices(valid)}"
                )
        return rows.reset_index(drop=True)

    def get_stream_cache_paths(self, file_id_code: int | None = None) -> pd.DataFrame:
        """Return the preview paths of every item, or of one.

        Parameters
        ----------
        file_id_code
            Only this item.

        Returns
        -------
        pandas.DataFrame
            Columns ``id``, ``name``, ``stream_cache_png``, ``stream_cache_3d``; the path
            columns hold empty strings when the infoset has no previews.

        Raises
        ------
        DatasetError
            If the code is unknown or the explorer has no infoset.
        """
        frame = self._info_frame()
        assert frame is not None
        if file_id_code is not None:
            code = self._check_code(file_id_code)
            frame = frame[frame["id"] == code]
        out = frame[["id", "name"]].copy()
        for column in _STREAM_CACHE_COLUMNS:
            out[column] = frame[column].fillna("").astype(str) if column in frame.columns else ""
        return out.reset_index(drop=True)

    def filter_files_by_metadata(
        self, where: Callable[[pd.DataFrame], Any] | None = None, **conditions: Any
    ) -> np.ndarray:
        """Return the file id codes of the items whose ``.infoset`` row matches.

        The specified system's later documentation names this method without describing
        it; it is :meth:`get_file_list` over the infoset instead of a group.

        Parameters
        ----------
        where
            ``where(info)`` gets the infoset (as :meth:`get_file_info_all` returns it, a
            copy) and returns a boolean mask over its rows (a ``Series``, or an array),
            e.g. ``lambda info: info["size_cadfile"] > 10_000``.
        **conditions
            ``column=value``: the column equals ``value`` (a missing value, ``None``,
            NaN of any float type, ``pandas.NA`` or NaT, selects the rows where the
            column is missing); ``column=[v1, v2]`` (a list, tuple, set, range or 1-D
            array): the column is one of them (a missing member selects the rows where
            it is missing). On an integer column, values and members that are numbers
            are compared with the stored integers exactly (pandas makes a column with a
            missing value float64, which rounds integers from 2**53 on): ``3.0``
            matches 3, ``0.5`` or a number the column's dtype cannot hold matches
            nothing, and a missing value only a missing condition.
            ``column=callable``: the callable gets the column (a ``Series``, as pandas
            gives it: float64 for an integer column with a missing value) and returns a
            boolean mask, e.g. ``subset=lambda s: s.str.startswith("tr")``. A column
            called ``where`` is tested through ``where``.

        Returns
        -------
        numpy.ndarray
            int64 file id codes, sorted, without duplicates, of the rows matching
            ``where`` and every condition (every row when none is given; empty when none
            matches), as :meth:`get_file_list` returns them.

        Raises
        ------
        KeyNotFoundError
            If a condition names a column the infoset does not have (a ``KeyError``),
            naming it and listing the columns; nothing is evaluated then.
        DatasetError
            If the explorer has no infoset, ``where`` is not callable, or a mask is not
            boolean or does not have one value per row.

        Examples
        --------
        >>> explorer.filter_files_by_metadata(subset="train", file_label=[1, 3])  # doctest: +SKIP
        array([0, 4, 7])
        """
        if where is not None and not callable(where):
            raise DatasetError(
                "where must be a callable taking the infoset (a pandas.DataFrame) and "
                "returning a boolean mask, e.g. lambda info: info['file_label'] == 3; got "
                f"{type(where).__name__} {where!r}"
            )
        info = self.get_file_info_all()
        unknown = [column for column in conditions if column not in info.columns]
        if unknown:
            raise KeyNotFoundError(
                unknown[0],
                f"unknown infoset column {unknown[0]!r}; the infoset has columns "
                f"{list(map(str, info.columns))}",
            )
        keep = np.ones(len(info), dtype=bool)
        if where is not None:
            keep &= _row_mask(where(info), info, "where()")
        for column, value in conditions.items():
            series = info[column]
            exact = None if callable(value) else self._exact_integers(column)
            if callable(value):
                keep &= _row_mask(value(series), info, f"the condition on {column!r}")
            elif isinstance(value, list | tuple | set | frozenset | range | np.ndarray):
                members = (
                    list(np.asarray(value).ravel()) if isinstance(value, np.ndarray) else value
                )
                # pandas' isin matches a missing member by type (None no NaN of a float
                # column, pd.NA nothing): missing members select the missing rows.
                given = [m for m in members if not _missing(m)]
                if exact is not None:
                    # Numbers compare with the stored integers; anything else as pandas
                    # compares it (it matches nothing in a column of numbers).
                    numbers = [m for m in given if _as_integer(m) is not _NOT_A_NUMBER]
                    matched = _integers_equal(*exact, numbers)
                    others = [m for m in given if _as_integer(m) is _NOT_A_NUMBER]
                    if others:
                        matched = matched | series.isin(others).to_numpy(dtype=bool)
                else:
                    matched = series.isin(given).to_numpy(dtype=bool)
                if len(given) < len(members):
                    matched = matched | series.isna().to_numpy(dtype=bool)
                keep &= matched
            elif _missing(value):
                keep &= series.isna().to_numpy(dtype=bool)
            elif exact is not None and _as_integer(value) is not _NOT_A_NUMBER:
                keep &= _integers_equal(*exact, [value])
            else:
                keep &= _row_mask(series == value, info, f"{column} == {value!r}")
        codes = info["id"].to_numpy()[keep]
        return np.unique(codes).astype(np.int64)

    # ------------------------------------------------------------------ summaries
    def table_of_contents(self) -> str:
        """Return the text :meth:`print_table_of_contents` prints.

        Returns
        -------
        str
            The specified layout, line for line: a blank line, the header
            ``--- Dataset Table of Contents ---``, then per group (sorted by name, so
            ``Labels`` before ``edges``) ``<GROUP>_GROUP:`` and one ``<ARRAY>_DATA: Shape:
            (...), Dims: (...), Size: n`` line per array (sorted by name), groups
            separated by a blank line; then a rule of 34 ``=``, ``Columns in file_info:``
            and the infoset frame (the first and last 10 rows of a longer one; strings
            longer than 38 characters shown as ``...`` and their last 35). Shapes are
            those :meth:`get_group_data` presents (``num_nodes`` once per graph edge).
        """
        lines = ["", "--- Dataset Table of Contents ---"]
        for group in sorted(self.reader.groups):
            lines.extend(("", f"{group.upper()}_GROUP:"))
            for array in sorted(self._data_arrays(group)):
                shape, dims = self._presented(group, array)
                size = int(np.prod(shape, dtype=np.int64))
                lines.append(f"  {array.upper()}_DATA: Shape: {shape}, Dims: {dims}, Size: {size}")
        lines.append(_TOC_RULE)
        info = self._info_frame(required=False)
        if info is None:
            lines.append("Columns in file_info: no .infoset")
        else:
            lines.append("Columns in file_info:")
            lines.append(_frame_text(info))
        return "\n".join(lines)

    def print_table_of_contents(self, file: IO[str] | None = None) -> None:
        """Print the groups, their arrays (shape, dims, size) and the infoset columns.

        Parameters
        ----------
        file
            Where to print (default ``sys.stdout``).
        """
        print(self.table_of_contents(), file=file if file is not None else sys.stdout)

    def get_array_statistics(
        self,
        group: str | None = None,
        array: str | None = None,
        *,
        group_name: str | None = None,
        array_name: str | None = None,
    ) -> dict[str, float]:
        """Return summary statistics of one numeric array over all its values.

        Parameters
        ----------
        group, array
            Group and array names, positionally.
        group_name, array_name
            The same, by the specified keywords.

        Returns
        -------
        dict
            ``mean``, ``std``, ``min``, ``max``, ``median``, ``q25``, ``q75`` (floats; NaN
            values are ignored, and every statistic is NaN when nothing is left).

        Raises
        ------
        DatasetError
            If the group or array is unknown, not given (or given twice) or not numeric.

        Notes
        -----
        A per-item array (``graph/num_nodes``) counts each item once; the specified store,
        which repeats it per graph edge, weights items by their edge count.

        An array of at most 8,388,608 values (:data:`_STATISTICS_WHOLE_BYTES`, 64 MiB as
        float64) is read once, into one float64 array, and its statistics are numpy's
        over it: ``mean`` and ``std`` are ``np.nanmean`` and ``np.nanstd``'s, the
        quantiles ``np.percentile``'s (linear) of the values without NaN. It holds a
        little over twice the values' float64 size at once.

        A larger array is read block by block of rows (about 1 MiB of float64 values
        each), so memory holds a few blocks, not the array. One pass gives ``mean``,
        ``np.nanmean``'s to the bit (numpy's pairwise sum, made block by block: inf,
        -inf or NaN where numpy's overflows or meets both infinities), ``min`` and
        ``max``, ``std`` (the blocks' combined by Chan et al.'s update: numpy's up to the
        rounding of float sums, NaN when a value is infinite or the mean NaN, inf when
        the mean overflows; where the squared deviations sum to within about a factor 2
        of float64's largest value, it may be inf where numpy's is finite), and the
        quantiles when the array holds at most 65,536 distinct values (booleans and 8 or
        16-bit integers always). Otherwise the values at the quantiles' ranks are found
        by a radix selection over the blocks' sort keys, which reads the blocks again,
        usually twice (three reads in all; at most six), then interpolated as numpy
        does: the quantiles are numpy's exactly, but for the sign of a zero quantile
        of an array holding both -0.0 and 0.0, which numpy's partition leaves to the
        order it meets them in; read in blocks it is 0.0, numpy's as a rule.
        """
        group, array = self._names(group, array, group_name, array_name)
        return self._statistics(group, array)[0]

    def _is_numeric(self, group: str, array: str) -> bool:
        """Whether ``group/array`` holds numbers (booleans, integers, floats), known from
        its metadata without reading it."""
        meta = self.reader.array_meta(group, array)
        return not meta.is_string and np.dtype(meta.dtype).kind in _NUMERIC_KINDS

    def _statistics(self, group: str, array: str) -> tuple[dict[str, float], int]:
        """The statistics of :meth:`get_array_statistics` of ``group/array`` and the count
        of values they were computed over (NaN left out): what
        :meth:`get_array_statistics` and :meth:`compute_statistics` give.

        An array of at most :data:`_STATISTICS_WHOLE_BYTES` of float64 values is read
        once, into one float64 array, and computed as numpy computes it
        (:func:`_summary`). A larger one is read block by block of rows
        (:meth:`_value_blocks`, :class:`_Pass`): once for everything but the quantiles,
        and for those only when the first pass could not settle them (more distinct
        values than :data:`_DISTINCT_LIMIT`), a pass or two more (:func:`_values_at_ranks`).

        Raises
        ------
        DatasetError
            If the group or array is unknown, or the array is not numeric.
        """
        self._check_array(group, array)
        meta = self.reader.array_meta(group, array)
        if meta.is_string or np.dtype(meta.dtype).kind not in _NUMERIC_KINDS:
            dtype = "string" if meta.is_string else np.dtype(meta.dtype)
            raise DatasetError(f"{group}/{array} has dtype {dtype}, which is not numeric")
        size = int(np.prod(meta.shape, dtype=np.int64))
        if 8 * size <= _STATISTICS_WHOLE_BYTES:
            return _summary(self._whole_values(group, array, size))
        first = _Pass(size)
        first.run(self._value_blocks(group, array))
        if first.moments.count == 0:
            return dict.fromkeys(_STATISTICS, float("nan")), 0
        count = first.moments.count
        ranks, quantile_of = _quantile_ranks(count)
        at_rank = first.values_at_ranks(ranks)
        if at_rank is None:
            at_rank = _values_at_ranks(
                lambda: _kept(self._value_blocks(group, array)), ranks, first.tally
            )
        if first.positive_zero:
            # -0.0 and 0.0 are equal to numpy's partition, which leaves either at a rank:
            # a zero is taken as 0.0 then, as numpy's interpolation mostly gives it.
            at_rank = {rank: value + 0.0 for rank, value in at_rank.items()}
        out = {
            "mean": first.mean,
            "std": first.std,
            "min": first.moments.low,
            "max": first.moments.high,
        }
        for name, (before, after, gamma) in quantile_of.items():
            out[name] = _lerp(at_rank[before], at_rank[after], gamma)
        return {name: out[name] for name in _STATISTICS}, count

    def _whole_values(self, group: str, array: str, size: int) -> np.ndarray:
        """The ``size`` values of ``group/array`` as one float64 array (NaN kept), read
        once, block by block of rows (:meth:`_value_blocks`) into it: the array's own
        dtype is held a block at a time."""
        values = np.empty(size, dtype=np.float64)
        at = 0
        for block in self._value_blocks(group, array):
            values[at : at + block.size] = block
            at += block.size
        return values

    def _value_blocks(self, group: str, array: str) -> Iterator[np.ndarray]:
        """The values of ``group/array`` as float64 (NaN kept, in place), block by block of
        rows (about :data:`_STATISTICS_BLOCK_BYTES` of float64 values each, at least a
        row), each read with :meth:`DatasetReader.read_rows`: one read of every row. A
        per-item array counts each item once."""
        meta = self.reader.array_meta(group, array)
        shape = tuple(int(n) for n in meta.shape)
        if not shape:  # a single value
            yield np.asarray(self.reader.read_array(group, array), dtype=np.float64).ravel()
            return
        per_row = int(np.prod(shape[1:], dtype=np.int64))
        step = max(1, _STATISTICS_BLOCK_BYTES // (8 * max(per_row, 1)))
        for start in range(0, shape[0], step):
            rows = self.reader.read_rows(group, array, start, min(shape[0], start + step))
            yield rows.astype(np.float64).ravel()

    def compute_statistics(
        self, group: str, arrays: str | Iterable[str] | None = None
    ) -> pd.DataFrame:
        """Return the summary statistics of every numeric array of ``group``, one row each.

        The specified system's later documentation names this method without describing
        it; it is :meth:`get_array_statistics` over many arrays, as a table.

        Parameters
        ----------
        group
            A group name.
        arrays
            The arrays (a name or names), in the order given. ``None``: every numeric
            array of the group in its order, leaving out the non-numeric ones (strings)
            and ``file_id_code_<group>`` (the item code of each row, not data).

        Returns
        -------
        pandas.DataFrame
            Indexed by array name (the index is called ``array``); columns ``mean``,
            ``std``, ``min``, ``max``, ``median``, ``q25``, ``q75`` (float64, as
            :meth:`get_array_statistics` gives them: NaN values ignored, every statistic
            NaN for an array without values) and ``count`` (int64, the values they were
            computed over). No rows when the group has no numeric array or ``arrays`` is
            empty.

        Raises
        ------
        DatasetError
            If the group is unknown, or an array named is unknown, not numeric or
            ``file_id_code_<group>``.

        Notes
        -----
        Arrays are read one at a time, as :meth:`get_array_statistics` reads one: an
        array of at most :data:`_STATISTICS_WHOLE_BYTES` of float64 values once, whole;
        a larger one block by block of rows, once, or three times as a rule when it
        holds many distinct values: memory holds one array within that budget (about
        a little over twice its float64 size) or a few blocks, never the group.
        """
        import pandas as pd

        self._check_group(group)
        provenance = file_id_code_name(group)
        if arrays is None:
            names = [
                a
                for a in self._data_arrays(group)
                if a != provenance and self._is_numeric(group, a)
            ]
        else:
            names = list(dict.fromkeys([arrays] if isinstance(arrays, str) else arrays))
            for array in names:
                self._check_array(group, array)
                if array == provenance:
                    raise DatasetError(
                        f"{group}/{array} is the item code of each row, not data: "
                        "it has no statistics"
                    )
        rows: dict[str, list[float]] = {name: [] for name in _STATISTICS}
        counts = []
        for array in names:
            statistics, count = self._statistics(group, array)
            for name, value in statistics.items():
                rows[name].append(value)
            counts.append(count)
        columns: dict[str, np.ndarray] = {
            name: np.asarray(rows[name], dtype=np.float64) for name in _STATISTICS
        }
        columns["count"] = np.asarray(counts, dtype=np.int64)
        return pd.DataFrame(columns, index=pd.Index(names, dtype=object, name="array"))


#: The join of :meth:`DatasetExplorer.query_cross_group`: rows meet on their item.
_JOIN_ON_FILE = "file_id_code"
#: Integers float64 holds exactly: a fill of NaN may promote integers within these.
_EXACT_IN_FLOAT64 = 2**53


def _row_chunks(ds: xr.Dataset, dim: str) -> tuple[int, ...] | None:
    """The Dask chunks of ``ds`` on ``dim``: those of its first Dask-backed variable on
    it; ``None`` when none is Dask-backed."""
    for variable in ds.variables.values():
        if variable.chunks is not None and dim in variable.dims:
            return tuple(int(c) for c in variable.chunksizes[dim])
    return None


def _with_fill(values: np.ndarray, present: np.ndarray, name: str) -> np.ndarray:
    """``values`` by item with the items not ``present`` filled: NaN for floats (and for
    integers and booleans, promoted to float64), NaT for times, ``None`` for the rest
    (strings, as objects).

    Raises
    ------
    DatasetError
        If an integer present is one float64 would round (beyond 2**53), naming ``name``.
    """
    kind = values.dtype.kind
    if kind in "fc":
        out = values.copy()
        out[~present] = np.nan
        return out
    if kind in "iub":
        held = values[present]
        if kind in "iu" and held.size:
            low, high = int(held.min()), int(held.max())
            if low < -_EXACT_IN_FLOAT64 or high > _EXACT_IN_FLOAT64:
                value = low if low < -_EXACT_IN_FLOAT64 else high
                raise DatasetError(
                    f"{name}: items without a row need a fill (NaN, promoting the integers "
                    f"to float64), but {value} is beyond what float64 holds exactly (2**53)"
                )
        out = values.astype(np.float64)
        out[~present] = np.nan
        return out
    if kind in "mM":
        out = values.copy()
        out[~present] = np.datetime64("NaT") if kind == "M" else np.timedelta64("NaT")
        return out
    out = values.astype(object)
    out[~present] = None
    return out


def _missing(value: Any) -> bool:
    """Whether ``value`` stands for a missing value in a condition of
    :meth:`DatasetExplorer.filter_files_by_metadata`: ``None``, NaN of any float type,
    ``pandas.NA`` or NaT, which equality (and pandas' ``isin``, by type) does not match
    with the missing values of a column."""
    import pandas as pd

    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


#: What :func:`_as_integer` gives for a value that is not a number.
_NOT_A_NUMBER = object()


def _as_integer(value: Any) -> Any:
    """``value`` (a condition on an integer column) as the Python integer it equals
    exactly: an integer (a ``bool`` as 0 or 1, as Python and pandas compare it) or a
    float holding one (``3.0``); ``None`` for a number equal to no integer (``0.5``,
    infinity); :data:`_NOT_A_NUMBER` for anything else."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    return _NOT_A_NUMBER


def _integers_equal(values: np.ndarray, present: np.ndarray, wanted: Iterable[Any]) -> np.ndarray:
    """Which of ``values`` (an integer column, ``present`` where it has a value) equal one
    of the numbers ``wanted``, compared exactly: as integers of the column's dtype, never
    as floats; a number the dtype cannot hold, or that equals no integer, matches none,
    and a missing value never matches."""
    info = np.iinfo(values.dtype)
    held = [k for k in map(_as_integer, wanted) if isinstance(k, int) and info.min <= k <= info.max]
    if not held:
        return np.zeros(len(values), dtype=bool)
    matched: np.ndarray = np.isin(values, np.asarray(held, dtype=values.dtype)) & present
    return matched


def _row_mask(result: Any, frame: pd.DataFrame, what: str) -> np.ndarray:
    """``result`` (of a callable given ``frame`` or one of its columns) as a boolean mask
    over ``frame``'s rows. A ``Series`` is aligned on ``frame``'s index when it holds the
    same labels in another order; pandas' missing booleans (``pd.NA``) do not match.

    Raises
    ------
    DatasetError
        If it is not boolean or has not one value per row, naming ``what``.
    """
    import pandas as pd

    if isinstance(result, pd.Series):
        if not result.index.equals(frame.index) and result.index.sort_values().equals(frame.index):
            result = result.reindex(frame.index)
        if result.dtype == "boolean":
            result = result.fillna(False)
        mask: np.ndarray = result.to_numpy()
    else:  # an array, or an xarray.DataArray
        mask = np.asarray(getattr(result, "values", result))
    if mask.dtype != bool:
        raise DatasetError(f"{what} must give a boolean mask, got dtype {mask.dtype}")
    if mask.shape != (len(frame),):
        raise DatasetError(
            f"{what} gave {mask.shape} values but the infoset has {len(frame)} rows: "
            "give one boolean per row"
        )
    return mask


#: The dtype kinds whose statistics are computed: booleans, integers, floats.
_NUMERIC_KINDS = "biuf"
#: The statistics of one array, in the order :meth:`DatasetExplorer.get_array_statistics`
#: gives them.
_STATISTICS = ("mean", "std", "min", "max", "median", "q25", "q75")


#: About how many bytes of float64 values the statistics of an array too large to read
#: whole hold at once: each block of rows read (:meth:`DatasetExplorer._value_blocks`).
_STATISTICS_BLOCK_BYTES = 1 << 20
#: The largest array, as float64 values (8,388,608 of them), whose statistics read it once,
#: whole: held with a float64 copy of its values beside (numpy's deviations, the values
#: without NaN partitioned for the quantiles) and a NaN mask, a little over twice this
#: at once (about 140 MiB), as much as two of the reader's default chunk cache
#: (``cache_bytes``, the same 64 MiB). Within it an array is downloaded and decoded
#: once; a larger one is held a block at a time, and read again for the quantiles its
#: first pass could not settle.
_STATISTICS_WHOLE_BYTES = 64 << 20
#: The quantiles of the statistics, as ``np.percentile`` takes them (``q / 100``).
_QUANTILES = {"q25": 0.25, "median": 0.5, "q75": 0.75}
#: Bits of a value's sort key :func:`_values_at_ranks` settles per pass (a tally of
#: ``2**12`` digits per rank searched, small beside a block).
_RADIX_BITS = 12
#: The most distinct values whose counts the first pass over the blocks of an array keeps
#: (a sort key and a count each, a block's bytes): an array of no more (booleans, 8 and
#: 16-bit integers always, low-cardinality values) has its quantiles from them, read once.
_DISTINCT_LIMIT = _STATISTICS_BLOCK_BYTES // 16
#: Values numpy's pairwise summation adds one after another (``PW_BLOCKSIZE``): a range of
#: at most as many values is summed alone, a longer one as two halves.
_PAIRWISE_LEAF = 128


class _Moments:
    """The count, sum of squared deviations (``m2``, Chan, Golub and LeVeque's pairwise
    update of the blocks'; numerically stable), minimum and maximum of values added
    block by block, and how many are +inf and -inf (``m2`` means nothing then)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.low = float("inf")
        self.high = float("-inf")
        self.infinite = 0

    def add(self, values: np.ndarray) -> None:
        """Add a block of float64 values (no NaN)."""
        n = int(values.size)
        if not n:
            return
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))
        self.infinite += int(np.count_nonzero(np.isinf(values)))
        if self.infinite:  # std is NaN (inf - inf), as numpy's; no m2 to keep
            self.count += n
            return
        with np.errstate(over="ignore", invalid="ignore"):
            mean = float(values.mean())
            m2 = float(np.square(values - mean).sum())
            if not self.count:
                self.count, self.mean, self.m2 = n, mean, m2
                return
            total = self.count + n
            delta = mean - self.mean
            self.mean += delta * n / total
            self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total


class _PairwiseSum:
    """numpy's float64 sum of a sequence of values given block by block, to the bit:
    ``np.add.reduce`` of a contiguous float64 array adds its values pairwise (halves of
    ``n // 2`` rounded down to a multiple of 8, ranges of at most :data:`_PAIRWISE_LEAF`
    values alone), so ranges lying in one block are numpy's own sums of them and those
    across blocks are added as numpy adds their halves. Overflow (inf), and +inf meeting
    -inf (NaN), come out where numpy's do. Holds a block and at most a leaf of the one
    before. ``size`` is at least 1: an empty array is summed whole (:func:`_summary`)."""

    def __init__(self, blocks: Iterator[np.ndarray], size: int) -> None:
        self._blocks = blocks
        self._size = size
        self._held = np.zeros(0)
        self._start = 0  # the index of _held[0] among all values

    def total(self) -> float:
        """The sum of the ``size`` values of the blocks (all of them read)."""
        return 0.0 + self._range(0, self._size)

    def _range(self, lo: int, n: int) -> float:
        """numpy's pairwise sum of values ``[lo, lo + n)``."""
        while lo >= self._start + self._held.size:
            self._start += self._held.size
            self._held = next(self._blocks)
        if lo + n <= self._start + self._held.size:
            at = lo - self._start
            return float(np.add.reduce(self._held[at : at + n]))
        if n > _PAIRWISE_LEAF:
            half = n // 2
            half -= half % 8
            return self._range(lo, half) + self._range(lo + half, n - half)
        parts = [self._held[lo - self._start :]]
        got = parts[0].size
        while got < n:
            self._start += self._held.size
            self._held = next(self._blocks)
            parts.append(self._held[: n - got])
            got += parts[-1].size
        return float(np.add.reduce(np.concatenate(parts)))


def _run_starts(values: np.ndarray) -> np.ndarray:
    """The index of the first value of each run of equal ``values`` (unsigned integers,
    not empty; sorted, each distinct value is one run): where a value differs from the
    one before, 0 always. What :class:`_Tally` and :class:`_Pass` count by."""
    return np.flatnonzero(np.diff(values, prepend=~values[0]))


def _kept(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """``blocks`` without their NaN values."""
    for block in blocks:
        missing = np.isnan(block)
        yield block[~missing] if missing.any() else block


class _Tally:
    """For the values whose sort keys (:func:`_sort_keys`) begin with a settled prefix of
    ``depth`` bits: per digit of the next :data:`_RADIX_BITS` (or fewer) bits, how many
    there are and their least and greatest key, so that a digit holding one distinct
    value needs no more passes."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.width = min(_RADIX_BITS, 64 - depth)
        self.counts = np.zeros(1 << self.width, dtype=np.int64)
        self.low = np.full(1 << self.width, np.iinfo(np.uint64).max, dtype=np.uint64)
        self.high = np.zeros(1 << self.width, dtype=np.uint64)

    def add(self, keys: np.ndarray) -> None:
        """Count ``keys`` (sorted, all with the prefix)."""
        if not keys.size:
            return
        shift = np.uint64(64 - self.depth - self.width)
        digits = (keys >> shift) & np.uint64((1 << self.width) - 1)
        starts = _run_starts(digits)
        ends = np.append(starts[1:], keys.size)
        at = digits[starts].astype(np.intp)
        self.counts[at] += ends - starts
        self.low[at] = np.minimum(self.low[at], keys[starts])
        self.high[at] = np.maximum(self.high[at], keys[ends - 1])


class _Pass:
    """The first pass over the blocks of an array too large to read whole: the moments,
    numpy's mean (:class:`_PairwiseSum` of the values, NaN as 0, over their count, as
    ``np.nanmean`` computes it), a :class:`_Tally` of the sort keys' first bits, and the
    counts of each distinct value while there are at most :data:`_DISTINCT_LIMIT`.
    ``size`` is the array's count of values, NaN included (at least 1)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.moments = _Moments()
        self.tally = _Tally(0)
        self.distinct: tuple[np.ndarray, np.ndarray] | None = (
            np.zeros(0, dtype=np.uint64),
            np.zeros(0, dtype=np.int64),
        )
        self.positive_zero = False
        self.mean = float("nan")
        self.std = float("nan")

    def run(self, blocks: Iterator[np.ndarray]) -> None:
        """Read every block of ``blocks`` (float64, NaN kept) once."""
        with np.errstate(over="ignore", invalid="ignore"):
            total = _PairwiseSum(self._seen(blocks), self.size).total()
        count = self.moments.count
        if not count:
            return
        self.mean = total / count
        if self.moments.infinite or np.isnan(self.mean):
            self.std = float("nan")  # inf - inf among the deviations, as numpy's
        elif np.isinf(self.mean) or not np.isfinite(self.moments.m2):
            self.std = float("inf")  # squared deviations overflow, as numpy's
        else:
            self.std = float(np.sqrt(self.moments.m2 / count))

    def _seen(self, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """``blocks`` with NaN made 0 (what the sum adds), each taken into account."""
        for block in blocks:
            missing = np.isnan(block)
            kept = block[~missing] if missing.any() else block.copy()
            self.moments.add(kept)
            self.positive_zero = self.positive_zero or bool(np.any((kept == 0) & ~np.signbit(kept)))
            keys = _sort_keys(kept)
            keys.sort()
            self.tally.add(keys)
            if self.distinct is not None:
                self._add_distinct(keys)
            del keys, kept
            block[missing] = 0.0
            yield block

    def _add_distinct(self, keys: np.ndarray) -> None:
        """Count the distinct values of ``keys`` (sorted), or stop counting them when
        there are more than :data:`_DISTINCT_LIMIT`."""
        assert self.distinct is not None
        if not keys.size:
            return
        starts = _run_starts(keys)
        if starts.size <= _DISTINCT_LIMIT:  # else more than the limit: no merge needed
            counts = np.diff(np.append(starts, keys.size))
            every = np.concatenate([self.distinct[0], keys[starts]])
            order = np.argsort(every, kind="stable")
            every = every[order]
            tallied = np.concatenate([self.distinct[1], counts])[order]
            first = _run_starts(every)
            if first.size <= _DISTINCT_LIMIT:
                self.distinct = every[first], np.add.reduceat(tallied, first)
                return
        self.distinct = None

    def values_at_ranks(self, ranks: list[int]) -> dict[int, float] | None:
        """The value at each of ``ranks`` from the distinct values' counts; ``None`` when
        there were too many to count."""
        if self.distinct is None:
            return None
        keys, counts = self.distinct
        cumulative = np.cumsum(counts)
        return {
            rank: _from_sort_key(int(keys[np.searchsorted(cumulative, rank, side="right")]))
            for rank in ranks
        }


def _quantile_ranks(count: int) -> tuple[list[int], dict[str, tuple[int, int, float]]]:
    """The ranks (0-based, in sorted order) whose values ``np.percentile`` (linear)
    interpolates for each of :data:`_QUANTILES` over ``count`` values, and, for each,
    ``(rank before, rank after, weight)`` as numpy computes them."""
    virtual = (count - 1) * np.array(list(_QUANTILES.values()), dtype=np.float64)
    of = {}
    for name, index in zip(_QUANTILES, virtual, strict=True):
        before = int(np.floor(index))
        after = before + 1
        gamma = float(index - before)
        if index >= count - 1:  # numpy takes the last value (index -1) for both
            before = after = -1
            gamma = float(index + 1)
        of[name] = (before % count, after % count, gamma)
    ranks = sorted({rank for before, after, _ in of.values() for rank in (before, after)})
    return ranks, of


def _lerp(low: float, high: float, gamma: float) -> float:
    """numpy's linear interpolation between neighbouring values (``_lerp`` of
    ``np.percentile``), done the same way so the result is numpy's to the bit."""
    a, b, t = np.float64(low), np.float64(high), np.float64(gamma)
    with np.errstate(invalid="ignore"):
        difference = b - a
        if t >= 0.5:
            return float(b - difference * (1 - t))
        return float(a + difference * t)


def _sort_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned 64-bit keys ordered as the float64 ``values`` (no NaN) are: the sign bit
    set for positives, every bit flipped for negatives (-0.0 just below 0.0). Made in
    the memory of ``values``, which are gone then (a block read for this only)."""
    keys: np.ndarray = values.view(np.uint64)
    negative = np.signbit(values)
    np.invert(keys, out=keys, where=negative)
    np.bitwise_or(keys, np.uint64(1 << 63), out=keys, where=~negative)
    return keys


def _from_sort_key(key: int) -> float:
    """The float64 whose :func:`_sort_keys` key is ``key``."""
    bits = key & ~(1 << 63) if key >> 63 else ~key & ((1 << 64) - 1)
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


class _RankSearch:
    """Where :func:`_values_at_ranks` has got to for one rank: the first ``depth`` bits
    of the rank's sort key (``prefix``, the rest 0), how many values have keys below
    that prefix (``below``), and whether the values sharing it are few enough to gather
    (``gather``)."""

    def __init__(self) -> None:
        self.prefix = 0
        self.depth = 0
        self.below = 0
        self.gather = False

    @property
    def key(self) -> tuple[int, int, bool]:
        """What ranks searching the same values share."""
        return self.prefix, self.depth, self.gather


def _values_at_ranks(
    blocks: Callable[[], Iterator[np.ndarray]], ranks: list[int], first: _Tally
) -> dict[int, float]:
    """The value at each of ``ranks`` (0-based, in sorted order) among the values of
    ``blocks()`` (float64 blocks without NaN, read again on each call), found without
    holding them all: a radix selection on their sort keys, :data:`_RADIX_BITS` bits a
    pass, from ``first``, the tally of their first bits the first pass made. A rank
    whose digit holds a single distinct value (its least and greatest key equal) is
    found then; once few enough values share a rank's settled bits (the values gathered
    for every rank hold no more than a block), one more pass gathers them and sorts
    them. Usually two passes; at most ``ceil(52 / _RADIX_BITS)``, five."""
    capacity = max(1, _STATISTICS_BLOCK_BYTES // 8 // max(1, len(ranks)))
    search = {rank: _RankSearch() for rank in ranks}
    found: dict[int, float] = {}
    tallies: dict[tuple[int, int, bool], _Tally] = {(0, 0, False): first}
    while True:
        for rank in ranks:
            at = search[rank]
            if rank in found or at.gather:
                continue
            tally = tallies[at.key]
            cumulative = np.cumsum(tally.counts)
            digit = int(np.searchsorted(cumulative, rank - at.below, side="right"))
            at.below += int(cumulative[digit - 1]) if digit else 0
            at.depth += tally.width
            at.prefix |= digit << (64 - at.depth)
            if tally.low[digit] == tally.high[digit]:
                found[rank] = _from_sort_key(int(tally.low[digit]))
            elif int(tally.counts[digit]) <= capacity:
                at.gather = True
        open_ranks = [r for r in ranks if r not in found]
        if not open_ranks:
            return found
        keys_searched = {search[r].key for r in open_ranks}
        tallies = {key: _Tally(key[1]) for key in keys_searched if not key[2]}
        gathered: dict[tuple[int, int, bool], list[np.ndarray]] = {k: [] for k in keys_searched}
        for block in blocks():
            keys = _sort_keys(block)
            del block
            for key in keys_searched:
                prefix, depth, gather = key
                settled = np.uint64(prefix >> (64 - depth))
                keys_in = keys[(keys >> np.uint64(64 - depth)) == settled]
                if gather:
                    gathered[key].append(keys_in)
                else:
                    keys_in.sort()
                    tallies[key].add(keys_in)
        for rank in open_ranks:
            at = search[rank]
            if at.gather:
                held = np.sort(np.concatenate(gathered[at.key]))
                found[rank] = _from_sort_key(int(held[rank - at.below]))


def _summary(values: np.ndarray) -> tuple[dict[str, float], int]:
    """The statistics :data:`_STATISTICS` of ``values`` (float64, NaN kept; changed
    here) as numpy computes them over the whole array, and their count: ``mean`` and
    ``std`` are ``np.nanmean`` and ``np.nanstd``'s (the sums are made over the values with
    NaN as 0), the quantiles ``np.percentile``'s of the values without NaN, in their
    order. NaN each when there are none. Holds one float64 copy of the values."""
    missing = np.isnan(values)
    count = int(values.size - np.count_nonzero(missing))
    if not count:
        return dict.fromkeys(_STATISTICS, float("nan")), 0
    kept = values[~missing]
    values[missing] = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(np.add.reduce(values)) / count
        np.subtract(values, mean, out=values)
        values[missing] = 0.0
        np.multiply(values, values, out=values)
        std = float(np.sqrt(float(np.add.reduce(values)) / count))
    del values
    low, high = float(kept.min()), float(kept.max())
    q25, median, q75 = np.percentile(kept, [25, 50, 75], overwrite_input=True)
    return {
        "mean": mean,
        "std": std,
        "min": low,
        "max": high,
        "median": float(median),
        "q25": float(q25),
        "q75": float(q75),
    }, count


def _categories_of(key: str, dtype: np.dtype, given: Any) -> np.ndarray:
    """The categories asked for ``key`` as an array of its values' ``dtype``, each equal
    to the one given: a cast that changed one (a float truncated to an integer, a string
    cut to the values' width) would count items of another category.

    Raises
    ------
    DatasetError
        For a string or another single value where a sequence is expected, or a category
        the values cannot hold, naming it.
    """
    if isinstance(given, str | bytes) or not isinstance(given, Iterable):
        raise DatasetError(
            f"categories of {key!r}: give None, a number of bins or a list of categories, "
            f"not {type(given).__name__} {given!r}"
        )
    asked = list(given)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # beyond range: refused below
            categories = np.asarray(asked, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DatasetError(
            f"categories {asked!r} do not match the values of {key!r} (dtype {dtype})"
        ) from exc
    if dtype.kind in "fc":
        # Floats are taken as the values' dtype holds them (0.1 as float32(0.1)); only a
        # number beyond its range (1e300 as float32: inf) is not one of its values.
        changed = [
            a
            for a, c in zip(asked, categories.tolist(), strict=True)
            if np.all(np.isfinite(np.asarray(a))) and not np.all(np.isfinite(c))
        ]
    else:
        changed = [a for a, c in zip(asked, categories.tolist(), strict=True) if not _same(a, c)]
    if changed:
        raise DatasetError(
            f"categories {changed!r} are not values {key!r} can hold (dtype {dtype}): "
            "no item could be in them"
        )
    return categories


def _same(asked: Any, cast: Any) -> bool:
    """Whether a category survived its cast to the values' dtype unchanged."""
    try:
        return bool(asked == cast)
    except (TypeError, ValueError):  # an array, or a value that does not compare
        return False
