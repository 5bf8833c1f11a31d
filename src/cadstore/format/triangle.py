"""Upper-triangle storage of symmetric face-pair arrays: the row mapping, both ways.

A face-pair array of an item is ``N x N (x k)``. When it equals its transpose over the
first two axes bit for bit (``d2_distance``, ``a3_distance`` and ``extended_adjacency``
always do), a merged dataset stores only the pairs ``i <= j``, row-major: the triangle
row of pair ``(i, j)`` is::

    t(i, j) = i * N - i * (i - 1) // 2 + (j - i)        for i <= j

so row ``0`` is ``(0, 0)``, row ``N - 1`` is ``(0, N - 1)``, row ``N`` is ``(1, 1)``, and
an item has ``N * (N + 1) // 2`` rows instead of ``N * N``. Pair ``(i, j)`` with ``i > j``
is read from ``t(j, i)``. The merge checks the symmetry of every item before storing a
triangle (:func:`is_symmetric`); the readers rebuild the full rows with one gather
(:func:`expand_into`).

An item (a ``.data`` file) stores its symmetric face-pair arrays the same way, each on
its own: array ``d2_distance`` of an item with ``N`` faces is stored with shape
``(N (N + 1) / 2, 64)`` and attributes naming the layout and the shape it is read as
(:func:`item_attributes`); :func:`item_layout` validates them when the item is read,
since a file's attributes are not trusted.

Nothing here reads or writes files.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ITEM_DIMS",
    "ITEM_SHAPE",
    "LAYOUT",
    "PAIR_ROW",
    "UPPER_TRIANGLE",
    "expand_in_place",
    "expand_into",
    "full_index",
    "is_symmetric",
    "item_attributes",
    "item_layout",
    "pair_count",
    "side_of",
    "symmetric_upper_rows",
    "triangle_count",
    "triangle_row",
]

#: The layout name: in the attributes of a triangle array and of its group
#: (``cadstore_layout``) and in the dataset's ``metadata.json``.
UPPER_TRIANGLE = "upper_triangle"
#: The attribute naming an array's layout (``UPPER_TRIANGLE``).
LAYOUT = "cadstore_layout"
#: Item arrays only: the ``N x N (x k)`` shape a triangle-stored array is read as.
ITEM_SHAPE = "cadstore_shape"
#: Item arrays only: the dimension names of the array as read.
ITEM_DIMS = "cadstore_dims"
#: The attribute spelling out :func:`triangle_row` for readers of the Zarr view.
PAIR_ROW = "pair_row"
_PAIR_ROW_TEXT = "i * N - i * (i - 1) // 2 + (j - i) for i <= j; (j, i) for i > j"


def triangle_count(n: int) -> int:
    """Rows of the upper triangle, diagonal included, of an ``n x n`` matrix."""
    return n * (n + 1) // 2


def pair_count(n: int) -> int:
    """Rows of a full ``n x n`` matrix flattened row-major."""
    return n * n


def side_of(rows: int) -> int:
    """``N`` of an item whose full matrix has ``rows`` rows (``N * N``).

    Raises
    ------
    ValueError
        If ``rows`` is not a square.
    """
    n = math.isqrt(rows)
    if n * n != rows:
        raise ValueError(f"{rows} face-pair rows are not N x N")
    return n


def triangle_row(i: int, j: int, n: int) -> int:
    """The triangle row of pair ``(i, j)`` of an ``n x n`` matrix (either order)."""
    if i > j:
        i, j = j, i
    return i * n - i * (i - 1) // 2 + (j - i)


class _BoundedMemo:
    """Index arrays built for recent matrix sides, within a byte budget (thread-safe).

    ``largest`` (bytes): a value above it is returned without being kept; without it the
    newest value is always kept, alone if it outweighs the budget (the dataset reader
    expands one large item's rows after another with the same index).
    """

    def __init__(self, max_bytes: int, largest: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.largest = largest
        self._lock = threading.Lock()
        self._values: OrderedDict[int, Any] = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the values kept."""
        return self._bytes

    def sides(self) -> list[int]:
        """The sides whose values are kept, oldest first."""
        with self._lock:
            return list(self._values)

    def values(self) -> list[Any]:
        """The values kept, oldest first."""
        with self._lock:
            return list(self._values.values())

    def get(self, n: int, build: Callable[[int], Any]) -> Any:
        """The value for side ``n``: remembered, or built now (arrays made read-only)."""
        with self._lock:
            found = self._values.get(n)
            if found is not None:
                self._values.move_to_end(n)
                return found
        value = build(n)
        arrays = _arrays(value)
        size = sum(a.nbytes for a in arrays)
        if self.largest is not None and size > self.largest:
            return value
        for a in arrays:
            a.setflags(write=False)
        with self._lock:
            if n not in self._values:
                self._values[n] = value
                self._bytes += size
                while self._bytes > self.max_bytes and len(self._values) > 1:
                    _, old = self._values.popitem(last=False)
                    self._bytes -= sum(a.nbytes for a in _arrays(old))
        return value


def _arrays(value: Any) -> tuple[np.ndarray, ...]:
    """The arrays of a memoised value (one array, or a tuple of them)."""
    return value if isinstance(value, tuple) else (value,)


#: Pair indexes of recent sides (those of a side of 100 take 80 KB; of 500, 2 MB); a side
#: whose indexes alone exceed a quarter of the budget is not kept.
_PAIRS = _BoundedMemo(16 * 1024 * 1024, largest=4 * 1024 * 1024)


def _build_pair_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    iu, ju = np.triu_indices(n)
    return iu * n + ju, ju * n + iu


def _pair_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions ``i * n + j`` of the pairs ``i <= j`` in triangle-row order, and of
    their mirrors ``j * n + i`` (memoised for recent sides)."""
    pairs: tuple[np.ndarray, np.ndarray] = _PAIRS.get(n, _build_pair_index)
    return pairs


def symmetric_upper_rows(arr: np.ndarray) -> np.ndarray | None:
    """The triangle rows of ``N x N (x k)`` ``arr`` if it is symmetric bit for bit (as
    :func:`is_symmetric`), else ``None``.

    One gather of the triangle and one of its mirror, compared as unsigned integers: a
    few times faster than checking the transpose and gathering the triangle apart.
    """
    if arr.ndim < 2 or arr.shape[0] != arr.shape[1] or arr.dtype.kind in "OUS":
        return None
    n = arr.shape[0]
    rest = arr.shape[2:]
    flat = np.ascontiguousarray(arr).reshape(n * n, math.prod(rest))
    size = flat.dtype.itemsize
    bits = flat.view(f"<u{size}") if size in (1, 2, 4, 8) else flat.view(np.uint8)
    upper, mirror = _pair_index(n)
    # mode="clip": the indexes are valid by construction, and the default checks each.
    tri = np.take(bits, upper, axis=0, mode="clip")
    if not np.array_equal(tri, np.take(bits, mirror, axis=0, mode="clip")):
        return None
    return tri.view(arr.dtype).reshape((len(upper), *rest))


def is_symmetric(arr: np.ndarray) -> bool:
    """Whether ``arr`` (``N x N (x k)``) equals its transpose over its first two axes,
    bit for bit (so NaN payloads and signed zeros count, as a byte copy would keep them)."""
    return symmetric_upper_rows(arr) is not None


#: Gather indexes of recent sides (one per matrix side seen recently).
_INDEXES = _BoundedMemo(16 * 1024 * 1024)


def _build_full_index(n: int) -> np.ndarray:
    i = np.arange(n, dtype=np.intp)[:, None]
    j = np.arange(n, dtype=np.intp)[None, :]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    index: np.ndarray = (lo * n - lo * (lo - 1) // 2 + (hi - lo)).reshape(-1)
    return index


def full_index(n: int) -> np.ndarray:
    """For each of the ``n * n`` full rows, the triangle row it comes from (memoised)."""
    index: np.ndarray = _INDEXES.get(n, _build_full_index)
    return index


def expand_into(
    tri: np.ndarray, n: int, out: np.ndarray, lo: int = 0, hi: int | None = None
) -> None:
    """Write full rows ``lo:hi`` (default all ``n * n``) of a matrix into ``out``, from
    its triangle rows ``tri``."""
    index = full_index(n)
    if lo or (hi is not None and hi != n * n):
        index = index[lo:hi]
    # mode="clip": the indexes are valid by construction, and the default ("raise") makes
    # numpy gather into a temporary buffer before copying it to out.
    np.take(tri, index, axis=0, out=out, mode="clip")


#: Full matrices up to this size are expanded through a copy of their triangle; larger
#: ones in place, so that reading one never holds its triangle and its matrix at once.
_COPY_EXPAND_BYTES = 4 * 1024**2


def expand_in_place(buf: np.ndarray, n: int) -> None:
    """Turn ``buf`` (``n * n`` rows), whose first ``n (n + 1) / 2`` rows are a triangle,
    into the full matrix, row-major.

    Full row ``r`` of pair ``(i, j)`` comes from triangle row ``t(i, j)``, which is never
    beyond ``r`` nor beyond its mirror's row: written from the last matrix row to the
    first, no triangle row is overwritten before both its pairs have been read. A matrix
    row whose triangle rows all lie before it is gathered straight into place; the first
    ``O(sqrt(n))`` rows, whose sources reach into them, go through a copy of one row. No
    index of ``n * n`` entries is built for a large matrix (it could outweigh the matrix).
    """
    if n * n == 0 or buf.size == 0:
        return  # nothing to move (no pairs, or rows of no bytes)
    if buf.nbytes <= _COPY_EXPAND_BYTES and n * n * 8 <= _COPY_EXPAND_BYTES:
        tri = buf[: triangle_count(n)].copy()
        np.take(tri, full_index(n), axis=0, out=buf, mode="clip")
        return
    # One matrix row's sources at a time (an index of n, never of n * n).
    j = np.arange(n, dtype=np.intp)
    for i in range(n - 1, -1, -1):
        lo, hi = i * n, (i + 1) * n
        a, b = np.minimum(i, j), np.maximum(i, j)
        rows = a * n - a * (a - 1) // 2 + (b - a)
        # The last source of row i is t(i, n - 1) = i * n + n - 1 - i (i + 1) / 2.
        if n - 1 - i * (i + 1) // 2 < 0:
            np.take(buf[:lo], rows, axis=0, out=buf[lo:hi], mode="clip")
        else:
            buf[lo:hi] = np.take(buf, rows, axis=0)


def item_attributes(shape: Sequence[int], dims: Sequence[str]) -> dict[str, Any]:
    """The attributes of an item array of ``shape`` (``N x N (x k)``, read with ``dims``)
    stored as its upper triangle."""
    return {
        LAYOUT: UPPER_TRIANGLE,
        ITEM_SHAPE: [int(v) for v in shape],
        ITEM_DIMS: [str(d) for d in dims],
        PAIR_ROW: _PAIR_ROW_TEXT,
    }


def item_layout(
    attributes: Mapping[str, Any], stored_shape: Sequence[int]
) -> tuple[tuple[int, ...], tuple[str, ...] | None] | None:
    """The shape and dimension names an item array is read as, if stored as a triangle.

    Parameters
    ----------
    attributes
        The array's attributes, as found in the file.
    stored_shape
        Its shape as stored.

    Returns
    -------
    tuple or None
        ``(shape, dims)`` (``dims`` ``None`` when not recorded); ``None`` for an array
        stored as it is read (no :data:`ITEM_SHAPE` attribute). A merged dataset's
        triangle arrays hold many items and carry no :data:`ITEM_SHAPE`: they are read
        by the dataset reader, not here.

    Raises
    ------
    ValueError
        If the attributes do not describe the stored array: a shape that is not
        ``N x N (x k)``, or whose triangle is not the stored shape.
    """
    if ITEM_SHAPE not in attributes:
        return None
    declared = attributes[ITEM_SHAPE]
    if attributes.get(LAYOUT) != UPPER_TRIANGLE:
        raise ValueError(f"{ITEM_SHAPE} is set but {LAYOUT} is not {UPPER_TRIANGLE!r}")
    if (
        not isinstance(declared, list)
        or len(declared) < 2
        or not all(type(v) is int and v >= 0 for v in declared)
    ):
        raise ValueError(f"{ITEM_SHAPE} {declared!r} is not a list of two or more sizes")
    n = declared[0]
    if declared[1] != n:
        raise ValueError(f"{ITEM_SHAPE} {declared!r} is not N x N")
    expected = (triangle_count(n), *declared[2:])
    if tuple(stored_shape) != expected:
        raise ValueError(
            f"stored shape {tuple(stored_shape)} is not the upper triangle {expected} of "
            f"{ITEM_SHAPE} {declared!r}"
        )
    dims = attributes.get(ITEM_DIMS)
    if dims is not None and (
        not isinstance(dims, list)
        or len(dims) != len(declared)
        or not all(isinstance(d, str) for d in dims)
    ):
        raise ValueError(f"{ITEM_DIMS} {dims!r} does not name the {len(declared)} axes")
    return tuple(declared), None if dims is None else tuple(dims)
