"""Peer storage implementations a user would otherwise pick for one encoded CAD item.

Each peer is a triple of plain functions (plus a metadata reader), so benchmarks time
exactly the library calls and nothing of cadstore:

* ``write_<peer>(path_without_ext, item, metadata) -> str`` writes one file next to
  ``path_without_ext`` (the peer adds its own suffix) and returns its path;
* ``read_<peer>(path) -> dict`` opens the file and reads the whole item back, with
  nested dicts for groups and Python scalars for 0-d arrays, so that a faithful peer
  round-trips :func:`cadstore.synthetic.make_item` exactly;
* ``read_one_<peer>(path, key) -> numpy.ndarray`` opens the file and reads one array,
  ``key`` being ``/``-joined for nested arrays (``"graph/edges_source"``);
* ``read_metadata_<peer>(path) -> dict`` reads the per-item metadata back.

The peers:

``spec_design``
    The specified commercial design on zarr-python: a Zarr v2 directory store with
    Zstd level 12, a Delta filter on integer arrays, xarray ``_ARRAY_DIMENSIONS``
    attributes and a ``metadata.json`` file, zipped (stored, not deflated) into
    ``<path>.zarr.data`` afterwards.
``zarr_v3``
    zarr-python 3 used directly and well: a Zarr v3 ``ZipStore`` written in place, one
    chunk per array, zstd level 3, dimension names and the metadata as a group
    attribute given at creation, so every zip entry is written once.
``h5py``
    One HDF5 file, gzip level 4 on datasets larger than 512 bytes, groups for nested
    dicts, the metadata as a JSON string attribute.
``npz``
    ``numpy.savez_compressed`` with ``/``-joined keys and the metadata as a 0-d JSON
    string array, read back with ``allow_pickle=False``.

zarr-python's own warnings (format 2, consolidated metadata, ...) are silenced inside
these functions so that benchmark output stays readable.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import h5py
import numcodecs
import numpy as np
import zarr
import zarr.codecs
import zarr.storage

__all__ = [
    "PEERS",
    "Peer",
    "assert_items_equal",
    "flatten",
    "read_h5py",
    "read_metadata_h5py",
    "read_metadata_npz",
    "read_metadata_spec_design",
    "read_metadata_zarr_v3",
    "read_npz",
    "read_one_h5py",
    "read_one_npz",
    "read_one_spec_design",
    "read_one_zarr_v3",
    "read_spec_design",
    "read_zarr_v3",
    "unflatten",
    "write_h5py",
    "write_npz",
    "write_spec_design",
    "write_zarr_v3",
]

_NPZ_METADATA = "__metadata__"
_H5_GZIP_MIN_BYTES = 512


# ----------------------------------------------------------------------------- helpers


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence library warnings for the duration of one peer call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _from_stored(data: np.ndarray) -> Any:
    """Return a 0-d array as the Python scalar it was written from, others unchanged."""
    return data.item() if data.ndim == 0 else data


def flatten(item: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten nested dicts to ``/``-joined keys, scalars to 0-d arrays."""
    flat: dict[str, np.ndarray] = {}
    for key, value in item.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value)
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Invert :func:`flatten`."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


def _dims(key: str, ndim: int) -> list[str]:
    """Return the xarray dimension names the specified design uses, ``<key>_dim_<i>``."""
    return [f"{key}_dim_{i}" for i in range(ndim)]


def _read_zarr_group(group: zarr.Group) -> dict[str, Any]:
    """Read every array of a zarr group, recursing into subgroups."""
    out: dict[str, Any] = {}
    for name, node in group.members():
        if isinstance(node, zarr.Group):
            out[name] = _read_zarr_group(node)
        else:
            out[name] = _from_stored(np.asarray(node[...]))
    return out


def assert_items_equal(
    expected: Mapping[str, Any], actual: Mapping[str, Any], at: str = ""
) -> None:
    """Assert that two items hold the same keys, dtypes, shapes and bytes.

    Parameters
    ----------
    expected, actual : Mapping
        Items as produced by the generator and as read back by a peer.
    at : str
        Key prefix used in error messages.

    Raises
    ------
    AssertionError
        Naming the first key that differs and how.
    """
    if set(expected) != set(actual):
        raise AssertionError(
            f"{at or '<root>'}: keys differ: missing {sorted(set(expected) - set(actual))}, "
            f"extra {sorted(set(actual) - set(expected))}"
        )
    for key, want in expected.items():
        got, where = actual[key], f"{at}{key}"
        if isinstance(want, Mapping):
            if not isinstance(got, Mapping):
                raise AssertionError(f"{where}: expected a group, got {type(got).__name__}")
            assert_items_equal(want, got, f"{where}/")
        elif isinstance(want, np.ndarray):
            if not isinstance(got, np.ndarray):
                raise AssertionError(f"{where}: expected an array, got {type(got).__name__}")
            if got.dtype != want.dtype or got.shape != want.shape:
                raise AssertionError(
                    f"{where}: expected {want.dtype}{want.shape}, got {got.dtype}{got.shape}"
                )
            if want.tobytes() != got.tobytes():
                raise AssertionError(f"{where}: values differ")
        elif type(got) is not type(want) or got != want:
            raise AssertionError(f"{where}: expected {want!r}, got {got!r}")


# ----------------------------------------------------------------------------- spec_design


def _write_spec_group(group: zarr.Group, mapping: Mapping[str, Any]) -> None:
    """Write a (nested) mapping into a Zarr v2 group the way the specified design does."""
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            _write_spec_group(group.create_group(key), value)
            continue
        data = np.asarray(value)
        filters = [numcodecs.Delta(dtype=data.dtype.str)] if data.dtype.kind in "iu" else None
        group.create_array(
            key,
            data=data,
            compressors=numcodecs.Zstd(level=12),
            filters=filters,
            attributes={"_ARRAY_DIMENSIONS": _dims(key, data.ndim)},
        )


def write_spec_design(
    path_without_ext: str, item: Mapping[str, Any], metadata: Mapping[str, Any]
) -> str:
    """Write the specified design: a Zarr v2 directory, then a stored zip.

    Parameters
    ----------
    path_without_ext : str
        Target path without a suffix; ``.zarr.data`` is appended.
    item : Mapping
        The item, as from :func:`cadstore.synthetic.make_item`.
    metadata : Mapping
        JSON-serialisable per-item metadata.

    Returns
    -------
    str
        Path of the file written.
    """
    directory = f"{path_without_ext}.zarr"
    target = f"{directory}.data"
    with _quiet():
        store = zarr.storage.LocalStore(directory)
        root = zarr.open_group(store=store, mode="w", zarr_format=2)
        _write_spec_group(root, item)
        store.close()
    with open(os.path.join(directory, "metadata.json"), "w", encoding="utf-8") as fh:
        json.dump(metadata, fh)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                zf.write(full, os.path.relpath(full, directory).replace(os.sep, "/"))
    shutil.rmtree(directory)
    return target


def read_spec_design(path: str) -> dict[str, Any]:
    """Read a whole ``.zarr.data`` item through zarr-python's ``ZipStore``.

    Parameters
    ----------
    path : str
        File written by the matching ``write_`` function.

    Returns
    -------
    dict
        The item: arrays, nested dicts for groups, Python scalars for 0-d arrays.
    """
    with _quiet():
        store = zarr.storage.ZipStore(path, mode="r")
        try:
            return _read_zarr_group(zarr.open_group(store, mode="r"))
        finally:
            store.close()


def read_one_spec_design(path: str, key: str) -> np.ndarray:
    """Open a ``.zarr.data`` item and read one array.

    Parameters
    ----------
    path : str
        File written by the matching ``write_`` function.
    key : str
        Array key, ``/``-joined for nested arrays.

    Returns
    -------
    numpy.ndarray
        The array (0-d for scalars).
    """
    with _quiet():
        store = zarr.storage.ZipStore(path, mode="r")
        try:
            return np.asarray(zarr.open_group(store, mode="r")[key][...])
        finally:
            store.close()


def read_metadata_spec_design(path: str) -> dict[str, Any]:
    """Read the ``metadata.json`` member of a ``.zarr.data`` item.

    Parameters
    ----------
    path : str
        File written by the matching ``write_`` function.

    Returns
    -------
    dict
        The metadata passed to the ``write_`` function.
    """
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("metadata.json"))


# ----------------------------------------------------------------------------- zarr_v3


def _write_v3_group(group: zarr.Group, mapping: Mapping[str, Any]) -> None:
    """Write a (nested) mapping into a Zarr v3 group, one chunk per array."""
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            _write_v3_group(group.create_group(key), value)
            continue
        data = np.asarray(value)
        group.create_array(
            key,
            data=data,
            # One chunk per array: items are read whole, and a chunk per array keeps
            # the per-node cost (the dominant one) at its minimum.
            chunks=tuple(max(1, s) for s in data.shape),
            compressors=zarr.codecs.ZstdCodec(level=3),
            dimension_names=_dims(key, data.ndim),
        )


def write_zarr_v3(
    path_without_ext: str, item: Mapping[str, Any], metadata: Mapping[str, Any]
) -> str:
    """Write a Zarr v3 ``ZipStore`` with zstd-3 and one chunk per array.

    Parameters
    ----------
    path_without_ext : str
        Target path without a suffix; ``.zarr.zip`` is appended.
    item : Mapping
        The item, as from :func:`cadstore.synthetic.make_item`.
    metadata : Mapping
        JSON-serialisable per-item metadata.

    Returns
    -------
    str
        Path of the file written.
    """
    target = f"{path_without_ext}.zarr.zip"
    with _quiet():
        store = zarr.storage.ZipStore(target, mode="w")
        try:
            # Attributes at creation: setting them later appends a duplicate zarr.json.
            root = zarr.create_group(
                store=store, zarr_format=3, attributes={"metadata": dict(metadata)}
            )
            _write_v3_group(root, item)
        finally:
            store.close()
    return target


def read_zarr_v3(path: str) -> dict[str, Any]:
    """Read a whole ``.zarr.zip`` item through zarr-python's ``ZipStore``.

    Parameters
    ----------
    path : str
        File written by the matching ``write_`` function.

    Returns
    -------
    dict
        The item: arrays, nested dicts for groups, Python scalars for 0-d arrays.
    """
    with _quiet():
        store = zarr.storage.ZipStore(path, mode="r")
        try:
            return _read_zarr_group(zarr.open_group(store, mode="r"))
        finally:
            store.close()


def read_one_zarr_v3(path: str, key: str) -> np.ndarray:
    """Open a ``.zarr.zip`` item and read one array.

    Parameters
    ----------
    path : str
        File written by the matching ``write_`` function.
    key : str
        Array key, ``/``-joined for nested arrays.

    Returns
    -------
    numpy.ndarray
        The array (0-d for scalars).
    """
    with _quiet():
        store = zarr.storage.ZipStore(path, mode="r")
        try:
            return np.asarray(zarr.open_group(store, mode="r")[key][...])
        finally:
            store.close()


def read_metadata_zarr_v3(path: str) -> dict[str, Any]:
    """Read the ``metadata`` root attribute of a ``.zarr.zip`` item.

    Parameters
    ----------
    path : str
        File written by the matching ``write_`` function.

    Returns
    -------
    dict
        The metadata passed to the ``write_`` function.
    """
    with _quiet():
        store = zarr.storage.ZipStore(path, mode="r")
        try:
            return dict(zarr.open_group(store, mode="r").attrs["metadata"])
        finally:
            store.close()


# ----------------------------------------------------------------------------- h5py


def _write_h5_group(group: h5py.Group, mapping: Mapping[str, Any]) -> None:
    """Write a (nested) mapping into an HDF5 group."""
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            _write_h5_group(group.create_group(key), value)
            continue
        data = np.asarray(value)
        if data.ndim and data.nbytes > _H5_GZIP_MIN_BYTES:
            group.create_dataset(key, data=data, compression="gzip", compression_opts=4)
        else:
            # Compressing tiny datasets costs a chunk index and filter call for nothing.
            group.create_dataset(key, data=data)


def _read_h5_group(group: h5py.Group) -> dict[str, Any]:
    """Read every dataset of an HDF5 group, recursing into subgroups."""
    out: dict[str, Any] = {}
    for name, node in group.items():
        if isinstance(node, h5py.Group):
            out[name] = _read_h5_group(node)
        else:
            out[name] = _from_stored(np.asarray(node[()]))
    return out


def write_h5py(path_without_ext: str, item: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
    """Write one HDF5 file, gzip-4 on datasets larger than 512 bytes.

    Parameters
    ----------
    path_without_ext : str
        Target path without a suffix; ``.h5`` is appended.
    item : Mapping
        The item, as from :func:`cadstore.synthetic.make_item`.
    metadata : Mapping
        JSON-serialisable per-item metadata.

    Returns
    -------
    str
        Path of the file written.
    """
    target = f"{path_without_ext}.h5"
    with h5py.File(target, "w") as fh:
        fh.attrs["metadata"] = json.dumps(metadata)
        _write_h5_group(fh, item)
    return target


def read_h5py(path: str) -> dict[str, Any]:
    """Read a whole ``.h5`` item.

    Parameters
    ----------
    path : str
        File written by the matching ``write_`` function.

    Returns
    -------
    dict
        The item: arrays, nested dicts for groups, Python scalars for 0-d arrays.
    """
    with h5py.File(path, "r") as fh:
        return _read_h5_group(fh)


def read_one_h5py(path: str, key: str) -> np.ndarray:
    """Open a ``.h5`` item and read one dataset.

    Parameters
    ----------
    path : str
        File written by the matching ``write_`` function.
    key : str
        Array key, ``/``-joined for nested arrays.

    Returns
    -------
    numpy.ndarray
        The array (0-d for scalars).
    """
    with h5py.File(path, "r") as fh:
        return np.asarray(fh[key][()])


def read_metadata_h5py(path: str) -> dict[str, Any]:
    """Read the JSON ``metadata`` attribute of a ``.h5`` item.

    Parameters
    ----------
    path : str
        File written by the matching ``write_`` function.

    Returns
    -------
    dict
        The metadata passed to the ``write_`` function.
    """
    with h5py.File(path, "r") as fh:
        return json.loads(fh.attrs["metadata"])


# ----------------------------------------------------------------------------- npz


def write_npz(path_without_ext: str, item: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
    """Write ``numpy.savez_compressed`` with ``/``-joined keys and JSON metadata.

    Parameters
    ----------
    path_without_ext : str
        Target path without a suffix; ``.npz`` is appended.
    item : Mapping
        The item, as from :func:`cadstore.synthetic.make_item`.
    metadata : Mapping
        JSON-serialisable per-item metadata.

    Returns
    -------
    str
        Path of the file written.
    """
    target = f"{path_without_ext}.npz"
    flat = flatten(item)
    flat[_NPZ_METADATA] = np.asarray(json.dumps(metadata))
    np.savez_compressed(target, **flat)
    return target


def read_npz(path: str) -> dict[str, Any]:
    """Read a whole ``.npz`` item.

    Parameters
    ----------
    path : str
        File written by the matching ``write_`` function.

    Returns
    -------
    dict
        The item: arrays, nested dicts for groups, Python scalars for 0-d arrays.
    """
    with np.load(path, allow_pickle=False) as npz:
        flat = {k: _from_stored(npz[k]) for k in npz.files if k != _NPZ_METADATA}
    return unflatten(flat)


def read_one_npz(path: str, key: str) -> np.ndarray:
    """Open a ``.npz`` item and read one member.

    Parameters
    ----------
    path : str
        File written by the matching ``write_`` function.
    key : str
        Array key, ``/``-joined for nested arrays.

    Returns
    -------
    numpy.ndarray
        The array (0-d for scalars).
    """
    with np.load(path, allow_pickle=False) as npz:
        return npz[key]


def read_metadata_npz(path: str) -> dict[str, Any]:
    """Read the JSON metadata member of a ``.npz`` item.

    Parameters
    ----------
    path : str
        File written by the matching ``write_`` function.

    Returns
    -------
    dict
        The metadata passed to the ``write_`` function.
    """
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(str(npz[_NPZ_METADATA]))


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Peer:
    """One peer storage: its functions and a one-line description.

    Parameters
    ----------
    name : str
        Short name used in tables.
    write, read, read_one, read_metadata : callable
        The ``write_<peer>``, ``read_<peer>``, ``read_one_<peer>`` and
        ``read_metadata_<peer>`` functions of this module.
    description : str
        What the peer is, for report headers.
    """

    name: str
    write: Callable[[str, Mapping[str, Any], Mapping[str, Any]], str]
    read: Callable[[str], dict[str, Any]]
    read_one: Callable[[str, str], np.ndarray]
    read_metadata: Callable[[str], dict[str, Any]]
    description: str


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer(
            "spec_design",
            write_spec_design,
            read_spec_design,
            read_one_spec_design,
            read_metadata_spec_design,
            "zarr v2 LocalStore, Zstd-12 + Delta, zipped (stored) to .zarr.data",
        ),
        Peer(
            "zarr_v3",
            write_zarr_v3,
            read_zarr_v3,
            read_one_zarr_v3,
            read_metadata_zarr_v3,
            "zarr v3 ZipStore, zstd-3, one chunk per array",
        ),
        Peer(
            "h5py",
            write_h5py,
            read_h5py,
            read_one_h5py,
            read_metadata_h5py,
            "HDF5, gzip-4 on datasets > 512 B",
        ),
        Peer(
            "npz",
            write_npz,
            read_npz,
            read_one_npz,
            read_metadata_npz,
            "numpy savez_compressed (deflate)",
        ),
    )
}
"""The peers by name, in report order."""
