"""What a storage can hold, and the one normal form every backend receives.

``DataStorage.save_data`` accepts the values below and turns them into a *node*: either a
leaf or a ``dict`` of nodes. Every backend stores and returns nodes, so the same value comes
back the same way from memory, JSON files or Zarr.

========================================  ===========================================
Given                                     Stored and loaded back as
========================================  ===========================================
``numpy.ndarray`` of bool, int, uint,     the same dtype (native byte order) and shape,
float (16/32/64) or complex (64/128)      including 0-d and empty arrays
``numpy.ndarray`` of str (``U``), or of   a ``numpy`` ``U`` array of the same shape,
``object`` holding only ``str``           as wide as its longest string (at least 1)
numpy scalar (``np.float32(1.5)``, ...)   the same numpy scalar type
``bool``, ``int``, ``float``, ``complex``  the same Python type (``int`` within int64)
``str``                                   ``str``
``list``/``tuple`` of ``str``             ``list`` of ``str``
``list``/``tuple`` of numbers, nested     ``numpy.ndarray`` (``numpy.asarray`` of it)
``dict`` with ``str`` keys                ``dict`` (a group); keys follow the key grammar
========================================  ===========================================

Anything else (``None``, ``bytes``, sets, objects, datetimes, ragged or mixed lists) is an
:class:`~cadstore.errors.UnsupportedTypeError` that names the key. Nothing is ever pickled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias

import numpy as np

from cadstore.errors import InvalidDataError, UnsupportedTypeError
from cadstore.format.jsoncodec import check_utf8
from cadstore.storage.keys import validate_key

__all__ = [
    "Leaf",
    "Node",
    "contains_nan",
    "iter_leaves",
    "node_nbytes",
    "normalize_value",
    "values_equal",
]

#: A stored leaf: an array, a Python or numpy scalar, a ``str`` or a ``list`` of ``str``.
Leaf: TypeAlias = np.ndarray | np.generic | bool | int | float | complex | str | list[str]
#: A leaf or a (nested) group of nodes.
Node: TypeAlias = Leaf | dict[str, Any]

# Kinds a numeric array may have: bool, signed, unsigned, float, complex.
_NUMERIC_KINDS = frozenset("biufc")
_INT64 = np.iinfo(np.int64)


def normalize_value(key: str, value: object, *, copy: bool = True) -> Node:
    """Convert ``value`` into the node a backend stores under ``key``.

    Parameters
    ----------
    key
        The key the value is saved under; used in error messages and to name nested keys.
    value
        Any supported value (see the module docstring).
    copy
        Copy numeric arrays (the default). Backends that encode the node at once and keep
        only the encoded bytes pass ``False`` and save a copy of every array.

    Returns
    -------
    Node
        A node that shares no mutable state with ``value`` (with ``copy=False``, numeric
        arrays that are already C-contiguous little-endian may be ``value``'s own).

    Raises
    ------
    UnsupportedTypeError
        If ``value`` or anything nested in it cannot be represented.
    InvalidDataError
        If a string holds a lone surrogate, which UTF-8 cannot encode.
    """
    if type(value) is np.ndarray:
        return _normalize_array(key, value, copy)  # the common case, before the ABC check
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for name, child in value.items():
            if not isinstance(name, str):
                raise UnsupportedTypeError(
                    f"dict keys must be str, got {type(name).__name__} {name!r} under key {key!r}"
                )
            child_key = f"{key}/{name}"
            if "/" in name:
                raise UnsupportedTypeError(
                    f"dict key {name!r} under {key!r} contains '/'; nest dicts instead"
                )
            validate_key(child_key)
            out[name] = normalize_value(child_key, child, copy=copy)
        return out
    if isinstance(value, np.ndarray):
        return _normalize_array(key, value, copy)
    if isinstance(value, np.generic):
        return _normalize_numpy_scalar(key, value)
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        if not _INT64.min <= value <= _INT64.max:
            raise UnsupportedTypeError(f"integer for key {key!r} does not fit in int64: {value}")
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, complex):
        return complex(value)
    if isinstance(value, str):
        check_utf8([value], f"key {key!r}")
        return str(value)
    if isinstance(value, list | tuple):
        return _normalize_sequence(key, value)
    raise UnsupportedTypeError(
        f"cannot store a value of type {type(value).__name__} under key {key!r}; supported are "
        "numpy arrays and scalars, bool, int, float, complex, str, lists and dicts of these"
    )


def _check_numeric(key: str, dtype: np.dtype) -> None:
    """Refuse extended-precision floats (``float128``, ``complex256``): no Zarr data type
    holds them, so an item saved with one could not be read back."""
    if dtype.kind in "fc" and dtype.itemsize > (8 if dtype.kind == "f" else 16):
        raise UnsupportedTypeError(
            f"{dtype} (extended precision) is not supported (key {key!r}), as Zarr has no "
            "such data type; convert it to float64 or complex128"
        )


def _normalize_array(key: str, arr: np.ndarray, copy: bool = True) -> np.ndarray:
    kind = arr.dtype.kind
    if isinstance(arr, np.ma.MaskedArray):
        raise UnsupportedTypeError(
            f"masked array under key {key!r}: its mask would be lost; save "
            "arr.filled(value) and the mask (np.ma.getmaskarray(arr)) as arrays of their own"
        )
    if kind in _NUMERIC_KINDS:
        _check_numeric(key, arr.dtype)
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _little()):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        elif arr.dtype.fields is not None:
            raise UnsupportedTypeError(f"structured arrays are not supported (key {key!r})")
        if arr.dtype.metadata is not None:
            # No storage keeps a dtype's metadata (h5py's enums): the saved array is the
            # plain type, in this session as after reopening.
            arr = arr.view(np.dtype(arr.dtype.str))
        return np.array(arr, copy=True, order="C") if copy else np.asarray(arr, order="C")
    if kind == "U":
        # Little-endian first (a big-endian array's code points read as other numbers).
        out = np.array(arr, dtype=arr.dtype.newbyteorder("<"), copy=True, order="C")
        # UCS-4 code points: a lone surrogate is one in 0xD800..0xDFFF.
        points = out.reshape(-1).view("<u4") if out.dtype.itemsize else out.reshape(-1)
        if np.any((points >= 0xD800) & (points <= 0xDFFF)):
            check_utf8(out.ravel().tolist(), f"key {key!r}")
        # As wide as its longest string, as every backend gives it back (a Zarr string
        # array keeps no width): a <U16 array of "face" is a <U4 array in all of them.
        # The width is the last column of code points some string fills: looked for from
        # the end, where numpy's own arrays (as wide as their longest string) stop at once.
        width = out.dtype.itemsize // 4
        columns = points.reshape(out.size, width) if out.size and width else None
        while columns is not None and width > 1 and not columns[:, width - 1].any():
            width -= 1
        width = max(width, 1) if out.size else 1
        if out.dtype != np.dtype(f"<U{width}"):
            out = out.astype(f"<U{width}")
        return out
    if kind == "O" or kind == "T":
        flat = arr.ravel().tolist()
        if all(isinstance(x, str) for x in flat):
            check_utf8(flat, f"key {key!r}")
            if not flat:
                return np.empty(arr.shape, dtype="<U1")
            return np.array(flat, dtype=str).reshape(arr.shape)
        bad = next(x for x in flat if not isinstance(x, str))
        raise UnsupportedTypeError(
            f"object array under key {key!r} holds a {type(bad).__name__}; only object arrays of "
            "str are supported"
        )
    raise UnsupportedTypeError(
        f"arrays of dtype {arr.dtype} are not supported (key {key!r}); use bool, integer, float, "
        "complex or str arrays"
    )


def _normalize_numpy_scalar(key: str, value: np.generic) -> np.generic | str:
    if isinstance(value, np.str_):
        return str(value)
    if value.dtype.kind in _NUMERIC_KINDS and value.dtype.fields is None:
        _check_numeric(key, value.dtype)
        return value.dtype.type(value)
    raise UnsupportedTypeError(
        f"numpy scalars of dtype {value.dtype} are not supported (key {key!r})"
    )


def _normalize_sequence(key: str, seq: list[Any] | tuple[Any, ...]) -> np.ndarray | list[str]:
    if seq and all(isinstance(x, str) for x in seq):
        check_utf8(list(seq), f"key {key!r}")
        return [str(x) for x in seq]
    if any(isinstance(x, str | bytes | Mapping) or x is None for x in _flatten(seq)):
        raise UnsupportedTypeError(
            f"list under key {key!r} mixes strings, bytes, dicts or None with other values; "
            "only lists of str or (nested) lists of numbers are supported"
        )
    try:
        arr = np.asarray(seq)
    except ValueError as exc:
        raise UnsupportedTypeError(
            f"list under key {key!r} is ragged or mixed and cannot become an array: {exc}"
        ) from exc
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise UnsupportedTypeError(
            f"list under key {key!r} does not convert to a numeric array (got dtype {arr.dtype})"
        )
    _check_numeric(key, arr.dtype)
    return np.ascontiguousarray(arr)


def _flatten(seq: Any) -> Iterator[Any]:
    for item in seq:
        if isinstance(item, list | tuple):
            yield from _flatten(item)
        else:
            yield item


def _little() -> bool:
    return bool(np.little_endian)


def iter_leaves(node: Node, prefix: str = "") -> Iterator[tuple[str, Leaf]]:
    """Yield ``(key, leaf)`` for every leaf below ``node``, keys joined with ``/``.

    An empty dict yields nothing.
    """
    if isinstance(node, dict):
        for name, child in node.items():
            yield from iter_leaves(child, f"{prefix}/{name}" if prefix else name)
    else:
        yield prefix, node


def contains_nan(key: str, node: Node) -> None:
    """Raise :class:`InvalidDataError` if any floating or complex leaf below ``node`` holds NaN.

    The message names the full key of the offending leaf and the number of NaN values.
    """
    if type(node) is np.ndarray and not _may_hold_nan(node):
        return  # the common case, a single array: no leaves to walk
    for leaf_key, leaf in iter_leaves(node, key):
        if isinstance(leaf, np.ndarray | np.generic) and leaf.dtype.kind in "fc":
            if not _may_hold_nan(leaf):
                continue
            count = int(np.count_nonzero(np.isnan(leaf)))
            if count:
                raise InvalidDataError(
                    f"data for key {leaf_key!r} contains {count} NaN value(s); this storage "
                    "refuses NaN (replace them, or open the storage with allow_nan=True)"
                )
        elif isinstance(leaf, float | complex) and leaf != leaf:
            raise InvalidDataError(
                f"data for key {leaf_key!r} is NaN; this storage refuses NaN "
                "(or open the storage with allow_nan=True)"
            )


def _may_hold_nan(arr: np.ndarray | np.generic) -> bool:
    """Whether ``arr`` may hold NaN: a non-empty floating array whose minimum is NaN (the
    minimum of a real array is NaN exactly when it holds one: one pass, no mask
    allocated, no floating-point warnings), or a non-empty complex one (which takes the
    mask)."""
    kind = arr.dtype.kind
    if kind not in "fc" or not arr.size:
        return False
    return kind == "c" or math.isnan(arr.min())


def node_nbytes(node: Node) -> int:
    """Return the in-memory payload size of a node in bytes (array buffers, string bytes)."""
    total = 0
    for _, leaf in iter_leaves(node):
        if isinstance(leaf, np.ndarray | np.generic):
            total += leaf.nbytes
        elif isinstance(leaf, str):
            total += len(leaf.encode("utf-8"))
        elif isinstance(leaf, list):
            total += sum(len(s.encode("utf-8")) for s in leaf)
        else:
            total += 8 if not isinstance(leaf, complex) else 16
    return total


def values_equal(a: object, b: object) -> bool:
    """Compare two nodes exactly: same types, dtypes, shapes and values (NaN equals NaN)."""
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and a.keys() == b.keys()
            and all(values_equal(a[k], b[k]) for k in a)
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray | np.generic):
        assert isinstance(b, np.ndarray | np.generic)
        if a.dtype != b.dtype or np.shape(a) != np.shape(b):
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, float | complex):
        return a == b or (a != a and b != b)
    return a == b
