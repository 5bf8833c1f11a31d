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

Nothing here reads or writes files.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

__all__ = [
    "UPPER_TRIANGLE",
    "expand_into",
    "full_index",
    "is_symmetric",
    "pair_count",
    "side_of",
    "triangle_count",
    "triangle_row",
    "upper_rows",
]

#: The layout name: in the attributes of a triangle array and of its group
#: (``cadstore_layout``) and in the dataset's ``metadata.json``.
UPPER_TRIANGLE = "upper_triangle"


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


def _bits(arr: np.ndarray) -> np.ndarray:
    """The bytes of every element of ``arr`` (shape ``(N, N, rest)``), for exact comparison."""
    n = arr.shape[0]
    flat = np.ascontiguousarray(arr).reshape(n, n, -1)
    return flat.view(np.uint8)


def is_symmetric(arr: np.ndarray) -> bool:
    """Whether ``arr`` (``N x N (x k)``) equals its transpose over its first two axes,
    bit for bit (so NaN payloads and signed zeros count, as a byte copy would keep them)."""
    if arr.ndim < 2 or arr.shape[0] != arr.shape[1] or arr.dtype.kind in "OUS":
        return False
    if arr.shape[0] <= 1 or arr.size == 0:
        return True
    bits = _bits(arr)
    return bool(np.array_equal(bits, bits.swapaxes(0, 1)))


def upper_rows(arr: np.ndarray) -> np.ndarray:
    """The triangle rows (``N (N + 1) / 2``, trailing axes kept) of ``N x N (x k)`` ``arr``."""
    n = arr.shape[0]
    iu, ju = np.triu_indices(n)
    return np.ascontiguousarray(arr[iu, ju])


_INDEX_LOCK = threading.Lock()
_INDEXES: OrderedDict[int, np.ndarray] = OrderedDict()
#: Bytes of gather indexes kept (one per matrix side seen recently).
_INDEX_BYTES = 16 * 1024 * 1024
_index_bytes = [0]


def full_index(n: int) -> np.ndarray:
    """For each of the ``n * n`` full rows, the triangle row it comes from (memoised)."""
    with _INDEX_LOCK:
        found = _INDEXES.get(n)
        if found is not None:
            _INDEXES.move_to_end(n)
            return found
    i = np.arange(n, dtype=np.intp)[:, None]
    j = np.arange(n, dtype=np.intp)[None, :]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    index: np.ndarray = (lo * n - lo * (lo - 1) // 2 + (hi - lo)).reshape(-1)
    index.setflags(write=False)
    with _INDEX_LOCK:
        if n not in _INDEXES:
            _INDEXES[n] = index
            _index_bytes[0] += index.nbytes
            while _index_bytes[0] > _INDEX_BYTES and len(_INDEXES) > 1:
                _, old = _INDEXES.popitem(last=False)
                _index_bytes[0] -= old.nbytes
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
