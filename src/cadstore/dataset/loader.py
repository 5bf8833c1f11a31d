"""``DatasetLoader`` and ``CADDataset``: split a merged dataset and read items for training.

The specified loader splits a dataset but cannot train from it: items come from separate
per-item ``.pt`` copies, and loading fails without them. Here an item is read straight
from the ``.dataset`` through its offsets index (:class:`DatasetReader`), and
:meth:`CADDataset.to_torch` wraps the same reads in a PyTorch ``Dataset`` that works in
``DataLoader`` worker processes (fork or spawn): it holds only a path, codes and a small
label table, and reopens the file in each process.

Splits are multi-label stratified with the iterative stratification of Sechidis,
Tsoumakas and Vlahavas (2011, "On the stratification of multi-label data"), implemented
here in numpy (:func:`iterative_stratification`): an item that contains several labels
(e.g. the face types it has) counts towards each of them, and every subset keeps close to
the overall proportion of every label. The split is recorded in the ``.infoset``
``subset`` column, rewritten atomically, so a later loader (or another tool) sees it.

Examples
--------
>>> loader = DatasetLoader(flow_output_file="out/flow.flow")  # doctest: +SKIP
>>> loader.split("face_types", "faces", 0.6, 0.2, 0.2, random_state=0)  # doctest: +SKIP
(60, 20, 20)
>>> train = torch.utils.data.DataLoader(loader.get_dataset("train").to_torch(), 32)
... # doctest: +SKIP
>>> torch_ds, collate = loader.get_dataset("train").to_torch_with_collate()  # doctest: +SKIP
>>> batches = torch.utils.data.DataLoader(torch_ds, 32, collate_fn=collate, num_workers=2)
... # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cadstore.dataset.explorer import DatasetExplorer
from cadstore.dataset.reader import Allocator, DatasetReader, whole_number
from cadstore.errors import CadstoreWarning, DatasetError, StorageError
from cadstore.format.jsoncodec import parse_document
from cadstore.format.layout import OFFSETS
from cadstore.io.publish import write_bytes_atomic
from cadstore.lifecycle import (
    PublishedFiles,
    Transaction,
    TrustedTables,
    check_item_codes,
    table_bytes,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_SPLIT_BINS",
    "FILES_FORM",
    "ITEM_FORM",
    "SUBSETS",
    "CADDataset",
    "DatasetLoader",
    "GraphFileSource",
    "ItemIndexError",
    "ItemSource",
    "item_loader_form",
    "iterative_stratification",
    "membership_matrix",
    "quantile_bins",
]

#: Names of the split subsets, in the order of the fractions.
SUBSETS = ("train", "validation", "test")
#: ``subset`` value of an item no split has placed.
NO_SUBSET = "N/A"
#: Key of the labels in an item dict.
LABELS_KEY = "labels"
_RESERVED_KEYS = frozenset(("file_id_code", "name", LABELS_KEY))
_TOLERANCE = 1e-6
# A numeric key with more distinct values than this is binned for stratification.
_MAX_CATEGORIES = 64
#: Quantile bins of a numeric key that is binned for stratification (``split(bins=...)``).
DEFAULT_SPLIT_BINS = 10
# Infoset columns that identify items or record the split: never labels to stratify on.
_NOT_LABELS = frozenset(("id", "name", "description", "subset", "table_name"))
# Integer arrays that number or connect rows (face_indices, graph/edges_source): not labels.
_NOT_LABEL_SUFFIXES = ("indices", "index", "_source", "_destination")
# Bound on signature pairs x labels examined per refinement step (memory and time).
_MAX_SWAP_WORK = 4_000_000


class ItemIndexError(DatasetError, IndexError):
    """A position outside a :class:`CADDataset` (also an ``IndexError``, so iteration stops)."""


# ---------------------------------------------------------------------------- stratification
def _pick(values: np.ndarray, candidates: np.ndarray, rng: np.random.Generator) -> int:
    """Index (into ``candidates``) of the largest ``values[candidates]``, ties at random."""
    sub = values[candidates]
    best = candidates[sub == sub.max()]
    return int(best[0] if len(best) == 1 else rng.choice(best))


def iterative_stratification(
    membership: np.ndarray,
    fractions: Sequence[float] | np.ndarray,
    random_state: int | np.random.Generator | None = None,
    *,
    refine: bool = True,
) -> np.ndarray:
    """Split items into subsets that keep the proportion of every label.

    The iterative stratification algorithm of Sechidis, Tsoumakas and Vlahavas (2011):
    repeatedly take the label with the fewest unassigned items, and give each of its items
    to the subset that still wants the most items of that label (ties: the subset that
    wants the most items overall, then at random). Items without any label are spread over
    the subsets by their remaining demand. A swap refinement then removes what the greedy
    pass left uneven (see ``refine``).

    Parameters
    ----------
    membership
        ``(n_items, n_labels)``: nonzero where the item has the label.
    fractions
        Desired fraction of items per subset (non-negative, summing to 1). A subset with
        fraction 0 receives nothing.
    random_state
        Seed or generator; the same seed gives the same assignment.
    refine
        Afterwards, swap items between subsets while every swap brings the label
        proportions closer to the overall ones (sizes do not change). Labels that nearly
        every item has are served last by the greedy pass and gain most from it.

    Returns
    -------
    numpy.ndarray
        int64 ``(n_items,)``: the subset index of each item.

    Raises
    ------
    DatasetError
        If the fractions are negative or do not sum to 1 (within 1e-6).
    """
    ratios = _check_fractions(fractions)
    rng = (
        random_state
        if isinstance(random_state, np.random.Generator)
        else np.random.default_rng(random_state)
    )
    matrix = np.asarray(membership) != 0
    if matrix.ndim != 2:
        raise DatasetError(f"membership must be 2-D (items x labels), got shape {matrix.shape}")
    n_items, n_labels = matrix.shape
    allowed = np.flatnonzero(ratios > 0)
    desired = ratios * n_items
    per_label = matrix.sum(axis=0).astype(np.float64)
    desired_label = np.outer(per_label, ratios)
    remaining = per_label.copy()
    assignment = np.full(n_items, -1, dtype=np.int64)
    # Visiting items in a random order is what makes two seeds give two splits.
    order = rng.permutation(n_items)
    shuffled = matrix[order]
    label_rows = [order[np.flatnonzero(shuffled[:, j])] for j in range(n_labels)]
    item_labels = [np.flatnonzero(row) for row in matrix]
    while True:
        open_labels = np.flatnonzero(remaining > 0)
        if len(open_labels) == 0:
            break
        counts = remaining[open_labels]
        rarest = open_labels[counts == counts.min()]
        label = int(rarest[0] if len(rarest) == 1 else rng.choice(rarest))
        for item in label_rows[label]:
            if assignment[item] >= 0:
                continue
            column = desired_label[label]
            wanted = column[allowed]
            tied = allowed[wanted == wanted.max()]
            subset = int(tied[0]) if len(tied) == 1 else _pick(desired, tied, rng)
            assignment[item] = subset
            labels = item_labels[item]
            desired_label[labels, subset] -= 1
            remaining[labels] -= 1
            desired[subset] -= 1
    for item in order[assignment[order] < 0]:
        subset = _pick(desired, allowed, rng)
        assignment[item] = subset
        desired[subset] -= 1
    if refine:
        _refine_by_swaps(matrix, assignment, allowed)
    return assignment


def _refine_by_swaps(matrix: np.ndarray, assignment: np.ndarray, subsets: np.ndarray) -> None:
    """Swap items between subsets while that brings every label proportion closer.

    The greedy pass of iterative stratification serves the rarest labels first; labels
    that almost every item has get what is left, and on a few hundred items they can end
    several items off. Swapping two items between two subsets keeps both sizes, so each
    accepted swap strictly lowers ``sum over subsets s, labels l of
    ((count[s, l] - size[s] * p[l]) / size[s]) ** 2`` and nothing else changes.
    Items with the same labels are interchangeable, so candidate swaps are searched between
    label signatures (distinct rows), not items.
    """
    if matrix.shape[1] == 0 or len(subsets) < 2:
        return
    signatures, of_item = np.unique(matrix, axis=0, return_inverse=True)
    of_item = of_item.ravel()
    sig = signatures.astype(np.float64)
    n_sig, n_labels = sig.shape
    if n_sig * n_sig * n_labels > _MAX_SWAP_WORK:
        return
    # Every subset that may receive items, including those the greedy pass left empty.
    k = max(int(assignment.max()), int(subsets.max())) + 1
    # counts[s, g]: items of signature g in subset s.
    counts = np.zeros((k, n_sig), dtype=np.int64)
    np.add.at(counts, (assignment, of_item), 1)
    sizes = counts.sum(axis=1).astype(np.float64)
    p = matrix.mean(axis=0)
    weights = np.where(sizes > 0, 1.0 / np.maximum(sizes, 1.0) ** 2, 0.0)
    dev = counts @ sig - sizes[:, None] * p[None, :]
    # delta[a, b] = sig[b] - sig[a]: what subset s gains when it gives a and takes b.
    delta = sig[None, :, :] - sig[:, None, :]
    sq = (delta**2).sum(axis=2)
    for _ in range(len(assignment)):
        best = (0.0, -1, -1, -1, -1)
        for i, s in enumerate(subsets):
            for t in subsets[i + 1 :]:
                # Change of the loss when s gives signature a to t and takes b from it.
                gain = weights[s] * (2 * delta @ dev[s] + sq) + weights[t] * (
                    -2 * delta @ dev[t] + sq
                )
                gain[counts[s] == 0, :] = np.inf
                gain[:, counts[t] == 0] = np.inf
                a, b = map(int, np.unravel_index(int(np.argmin(gain)), gain.shape))
                if gain[a, b] < best[0] - 1e-12:
                    best = (float(gain[a, b]), int(s), int(t), a, b)
        if best[1] < 0:
            return
        _, s, t, a, b = best
        give = np.flatnonzero((assignment == s) & (of_item == a))[0]
        take = np.flatnonzero((assignment == t) & (of_item == b))[0]
        assignment[give], assignment[take] = t, s
        counts[s, a] -= 1
        counts[t, a] += 1
        counts[t, b] -= 1
        counts[s, b] += 1
        dev[s] += delta[a, b]
        dev[t] -= delta[a, b]


def quantile_bins(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut numeric ``values`` into at most ``bins`` bins holding about as many values each.

    Parameters
    ----------
    values
        Finite numbers (NaN already dropped).
    bins
        The most bins; equal values never straddle two bins, so there may be fewer.

    Returns
    -------
    edges, index : numpy.ndarray
        The bin edges (``n_bins + 1``, the first the minimum, the last the maximum) and
        the bin of each value (``0 .. n_bins - 1``).
    """
    numeric = np.asarray(values, dtype=np.float64)
    if numeric.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    edges = np.unique(np.quantile(numeric, np.linspace(0.0, 1.0, max(1, bins) + 1)))
    if len(edges) == 1:
        return np.array([edges[0], edges[0]]), np.zeros(len(numeric), dtype=np.int64)
    # Inner edges only: a value equal to an inner edge starts the next bin.
    index = np.searchsorted(edges[1:-1], numeric, side="right")
    return edges, index.astype(np.int64)


def membership_matrix(
    index: np.ndarray, codes: np.ndarray, n_items: int, n_cols: int
) -> np.ndarray:
    """Return ``(n_items, n_cols)`` uint8: 1 where item ``codes[i]`` has class ``index[i]``."""
    flat = codes.astype(np.int64) * n_cols + index
    present = np.bincount(flat, minlength=n_items * n_cols) > 0
    return present.reshape(n_items, n_cols).astype(np.uint8)


def _lopsided(counts: Sequence[int], ratios: np.ndarray) -> bool:
    """Whether subset sizes stray from the fractions by more than whole items explain."""
    total = sum(counts)
    wanted = ratios * total
    allowed = np.maximum(2.0, 0.1 * wanted)
    return bool(np.any(np.abs(np.asarray(counts, dtype=np.float64) - wanted) > allowed))


def _check_fractions(fractions: Sequence[float] | np.ndarray) -> np.ndarray:
    ratios = np.asarray(fractions, dtype=np.float64)
    names = ", ".join(f"{n}={f}" for n, f in zip(SUBSETS, fractions, strict=False))
    if ratios.ndim != 1 or len(ratios) == 0:
        raise DatasetError(f"split fractions must be a list of numbers, got {fractions!r}")
    if np.any(~np.isfinite(ratios)) or np.any(ratios < 0):
        raise DatasetError(f"split fractions must be finite and >= 0, got {names}")
    total = float(ratios.sum())
    if abs(total - 1.0) > _TOLERANCE:
        raise DatasetError(
            f"split fractions must add up to 1 (within {_TOLERANCE:g}), got {names} = {total:g}"
        )
    return ratios


# ---------------------------------------------------------------------------- item sources
#: ``item_loader_func`` called with the item dict (cadstore's form).
ITEM_FORM = "item"
#: ``item_loader_func`` called as ``f(graph_file, label_file, data_id)`` (the specified form).
FILES_FORM = "files"
#: Folder of per-item graph files in the specified flow layout, beside the dataset.
GRAPH_DIR = "graph_data"


def item_loader_form(func: Callable[..., Any]) -> str:
    """Which way ``item_loader_func`` is called, from its signature.

    A function that requires two or three positional arguments, or accepts three and
    requires at least two, is called the specified way, ``f(graph_file, label_file,
    data_id)``; one that requires one (or none) gets the item dict, ``f(item)``.

    Parameters
    ----------
    func
        The function.

    Returns
    -------
    str
        :data:`FILES_FORM` or :data:`ITEM_FORM`.

    Raises
    ------
    DatasetError
        If it can be called neither way (it requires two, or more than three, arguments).
    """
    import inspect

    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return ITEM_FORM  # a builtin without a signature: one argument, as before
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in positional if p.default is p.empty)
    varargs = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    if required == 3 or (required == 2 and (varargs or len(positional) >= 3)):
        return FILES_FORM
    if required <= 1 and (positional or varargs):
        return ITEM_FORM
    raise DatasetError(
        f"item_loader_func {getattr(func, '__name__', func)!r} must take one argument (the "
        "item dict) or three (graph_file, label_file, data_id); it requires "
        f"{required} positional argument(s)"
    )


def _check_random_state(random_state: object) -> None:
    """Refuse a seed numpy would refuse (``-1``: "expected non-negative integer", ``1.5``)
    with a message naming ``random_state``; a bool is no seed either."""
    if random_state is None or isinstance(random_state, np.random.Generator):
        return
    if (
        isinstance(random_state, bool | np.bool_)
        or not isinstance(random_state, int | np.integer)
        or random_state < 0
    ):
        raise DatasetError(
            f"random_state must be None or a non-negative integer, got {random_state!r}"
        )


def _check_positions(name: str, positions: object) -> list[int]:
    """The integers of ``positions``, or a :class:`DatasetError` naming the argument.

    ``remove_indices(0)`` failed deep inside with a bare ``TypeError``, a string was taken
    as its characters (``"12"`` removed items 1 and 2) and ``1.5`` was truncated to 1; a
    bool is no position either. Ranges are the caller's to check.
    """
    expected = f"{name} must be an iterable of integers"
    if (
        isinstance(positions, str | bytes)
        or not isinstance(positions, Iterable)
        or getattr(positions, "ndim", None) == 0  # a 0-d array or tensor: not iterable
    ):
        raise DatasetError(f"{expected}, got {type(positions).__name__} {positions!r}")
    found = []
    for value in positions:
        # Each as a position anywhere (whole_number): an integer (Python, numpy, a 0-d
        # integer tensor of torch.randperm) or a whole number; a bool is no position.
        try:
            found.append(whole_number(value, "position"))
        except DatasetError:
            raise DatasetError(
                f"{expected}, got {type(value).__name__} {value!r} among {positions!r}"
            ) from None
    return found


class ItemSource:
    """Reads items of a merged dataset by code; picklable, reopening the file per process.

    Parameters
    ----------
    reader
        The dataset reader (pickled as its path).
    groups
        Groups to read (default: all).
    arrays
        ``{group: [array, ...]}`` to read only some arrays of some groups.
    labels
        ``{column: values indexed by code}`` added to each item under ``"labels"``.
    item_loader_func
        Optional function applied to every item read (it must be picklable for spawned
        ``DataLoader`` workers), called the way its signature asks
        (:func:`item_loader_form`): ``f(item_dict)``, or the specified
        ``f(graph_file, label_file, data_id)`` where ``graph_file`` is the item's
        ``graph_data/<name>.pt`` beside the dataset when that file exists (the specified
        flow layout) and otherwise the item dict itself (cadstore datasets need no
        per-item copies), ``label_file`` is the item's label (the value of
        :attr:`label_column`, ``None`` without labels) and ``data_id`` its file id code.
    """

    def __init__(
        self,
        reader: DatasetReader,
        groups: Sequence[str] | None = None,
        arrays: Mapping[str, Sequence[str]] | None = None,
        labels: Mapping[str, np.ndarray] | None = None,
        item_loader_func: Callable[..., Any] | None = None,
    ) -> None:
        self.reader = reader
        self.groups = list(groups) if groups is not None else None
        self.arrays = {g: list(a) for g, a in arrays.items()} if arrays is not None else None
        self.labels = dict(labels or {})
        self.item_loader_func = item_loader_func
        self.loader_form = (
            ITEM_FORM if item_loader_func is None else item_loader_form(item_loader_func)
        )

    @property
    def path(self) -> str:
        """The dataset path."""
        return self.reader.path

    def warm_before_fork(self) -> None:
        """Have the reader learn what reads of these items look up just before this
        process next forks (:meth:`DatasetReader.warm_before_fork`): torch datasets ask
        for it, so that the ``DataLoader`` workers of every epoch start warm."""
        self.reader.warm_before_fork(self.groups, self.arrays)

    def code_of(self, position: int) -> int:
        """File id code of the item at ``position`` (the same number in a dataset)."""
        return int(position)

    def read(self, position: int) -> Any:
        """Read one item.

        Parameters
        ----------
        position
            The item's code.

        Returns
        -------
        dict or Any
            ``{"file_id_code", "name", <group>: {array: ndarray}, "labels": {...}}`` (per-item
            arrays give the item's value), or what ``item_loader_func`` makes of it.
        """
        code = int(position)
        return self._finish(code, self.reader.read_item(code, self.groups, self.arrays))

    def read_many(self, positions: Sequence[int], allocate: Allocator | None = None) -> list[Any]:
        """Read several items at once, each array into one buffer for the whole batch.

        Parameters
        ----------
        positions
            The items' codes.
        allocate
            Makes the batch buffers (see :meth:`DatasetReader.read_items`).

        Returns
        -------
        list
            The items as :meth:`read` returns them, in an
            :class:`~cadstore.dataset.reader.ItemBatch` (whose ``buffers`` hold each array
            of the whole batch); ``item_loader_func``, if set, is applied to each item.
        """
        codes = [int(p) for p in positions]
        self.check_labels(codes)
        batch = self.reader.read_items(codes, self.groups, self.arrays, allocate)
        for i, code in enumerate(codes):
            batch[i] = self._finish(code, batch[i])
        return batch

    def _finish(self, code: int, arrays: dict[str, Any]) -> Any:
        """The item as handed out: code, name, arrays, labels, then ``item_loader_func``."""
        item: dict[str, Any] = {"file_id_code": code, "name": self.reader.item_names[code]}
        item.update(arrays)
        if self.labels:
            item[LABELS_KEY] = {n: _scalar(values[code]) for n, values in self.labels.items()}
        if self.item_loader_func is None:
            return item
        if self.loader_form == FILES_FORM:
            return self.item_loader_func(self._graph_file(item), self._label(item), code)
        return self.item_loader_func(item)

    def _graph_file(self, item: dict[str, Any]) -> Any:
        """``graph_data/<name>.pt`` beside a local dataset when it exists, else the item."""
        path = self._graph_file_of(str(item["name"]))
        return item if path is None else path

    def _graph_file_of(self, name: str) -> str | None:
        """``graph_data/<name>.pt`` beside a local dataset when it exists.

        The name comes from the dataset, so it is used only when it is a plain file name.
        """
        if self.reader.location.remote or name in ("", ".", "..") or os.path.basename(name) != name:
            return None
        path = os.path.join(os.path.dirname(self.reader.path), GRAPH_DIR, f"{name}.pt")
        return path if os.path.isfile(path) else None

    def data_file(self, position: int) -> str | None:
        """The item's own graph file (``graph_data/<name>.pt`` beside the dataset, as
        :class:`~cadstore.storage.PyGGraphStoreHandler` writes them), ``None`` when it has
        none: a cadstore dataset needs no per-item files."""
        return self._graph_file_of(str(self.reader.item_names[int(position)]))

    def label_of(self, position: int) -> Any:
        """The item's label (the value of :attr:`label_column`), ``None`` without one."""
        column = self.label_column
        return None if column is None else _scalar(self.labels[column][int(position)])

    @functools.cached_property
    def label_column(self) -> str | None:
        """The label of an item where one is wanted (``label_file``, a training
        ``label``): the first integer label column (class codes, some items possibly
        without one), else the first one; ``None`` without labels."""
        for name, values in self.labels.items():
            if _integer_labels(values):
                return name
        return next(iter(self.labels), None)

    @functools.cached_property
    def integer_labels(self) -> tuple[str, ...]:
        """The label columns of integers (class codes), some items possibly without a
        value: batches hold them as tensors (see :meth:`check_labels`). Computed once:
        :attr:`labels` is not to be changed after."""
        return tuple(name for name, values in self.labels.items() if _integer_labels(values))

    @functools.cached_property
    def _label_gaps(self) -> tuple[tuple[str, bool, np.ndarray], ...]:
        # (column, whether it holds integers, which codes have no value) of every label
        # column some item has no value in: None, or NaN in a column of objects (pandas'
        # mark in a column of strings or booleans). NaN in a column of floats is a value.
        gaps = []
        for name, values in self.labels.items():
            array = np.asarray(values)
            if array.dtype.kind != "O":
                continue
            missing = np.fromiter(map(_missing_label, array), dtype=bool, count=len(array))
            if missing.any():
                gaps.append((name, name in self.integer_labels, missing))
        return tuple(gaps)

    def check_labels(self, positions: Sequence[int], every_kind: bool = False) -> None:
        """Raise if an item at ``positions`` has no value in a label column batches
        cannot hold without one.

        The training paths (batches, ``to_torch``, ``to_pyg``, their ``DataLoader``
        workers) call it before reading, so that whatever else a batch holds, such an
        item is an error naming it; reading an item alone (``CADDataset[i]``) gives the
        label as ``None``. A column of integers needs a value everywhere (batches hold it
        as a tensor); with ``every_kind`` (the items of ``to_torch()``, batched by
        torch's ``default_collate``, which has no place for a missing value) a column of
        strings or booleans does too (other paths batch those as lists).

        Raises
        ------
        InvalidDataError
            Naming the column and the item, and what to do about it.
        """
        from cadstore.dataset.torch_support import missing_label_error

        for column, integers, missing in self._label_gaps:
            if not (integers or every_kind):
                continue
            for position in positions:
                code = int(position)
                if missing[code]:
                    name = self.reader.item_names[code]
                    raise missing_label_error(column, name, code, integers)

    def _label(self, item: dict[str, Any]) -> Any:
        column = self.label_column
        return None if column is None else item.get(LABELS_KEY, {}).get(column)

    def locate(self, position: int) -> dict[str, Any]:
        """Where an item lives, without reading it (see :meth:`CADDataset.get_raw_data`)."""
        code = int(position)
        groups = self.groups if self.groups is not None else self.reader.groups
        return {
            "file_id_code": code,
            "name": self.reader.item_names[code],
            "dataset": self.reader.path,
            "rows": {g: self.reader.item_range(g, code) for g in groups},
        }


class GraphFileSource:
    """Items given as separate graph files (the specified "direct graph" mode); picklable.

    Parameters
    ----------
    graph_files
        One file per item.
    labels
        One label per file, or ``None``.
    file_code_start
        Code of the first file; file ``i`` has code ``file_code_start + i``.
    item_loader_func
        ``f(graph_file, label, file_id_code) -> Any`` loads one item; by default the item is
        ``{"file_id_code", "name", "graph_file", "label"}`` and nothing is opened.
    """

    def __init__(
        self,
        graph_files: Sequence[str | os.PathLike[str]],
        labels: Sequence[Any] | None = None,
        file_code_start: int = 0,
        item_loader_func: Callable[[str, Any, int], Any] | None = None,
    ) -> None:
        self.graph_files = [os.fspath(f) for f in graph_files]
        if labels is not None and len(labels) != len(self.graph_files):
            raise DatasetError(
                f"labels has {len(labels)} entries for {len(self.graph_files)} graph files"
            )
        self.labels = list(labels) if labels is not None else None
        self.file_code_start = int(file_code_start)
        self.item_loader_func = item_loader_func

    def code_of(self, position: int) -> int:
        """File id code of the file at ``position``."""
        return self.file_code_start + int(position)

    def _label(self, position: int) -> Any:
        return None if self.labels is None else self.labels[position]

    def data_file(self, position: int) -> str:
        """The item's graph file."""
        return self.graph_files[int(position)]

    def label_of(self, position: int) -> Any:
        """The item's label, ``None`` without labels."""
        return self._label(int(position))

    def read(self, position: int) -> Any:
        """Load one file with ``item_loader_func`` (or describe it)."""
        path = self.graph_files[position]
        code = self.code_of(position)
        if self.item_loader_func is not None:
            return self.item_loader_func(path, self._label(position), code)
        name = os.path.basename(path)
        item = {"file_id_code": code, "name": name, "graph_file": path}
        if self.labels is not None:
            # Without labels, no key: torch's default_collate cannot batch None.
            item["label"] = self._label(position)
        return item

    def locate(self, position: int) -> dict[str, Any]:
        """The file and label of an item."""
        return {
            "file_id_code": self.code_of(position),
            "graph_file": self.graph_files[position],
            "label": self._label(position),
        }


def _scalar(value: Any) -> Any:
    # Labels leave as plain Python values: they pickle small and collate simply.
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------------- CADDataset
class CADDataset:
    """One subset of a :class:`DatasetLoader`: items read on demand from the dataset.

    Parameters
    ----------
    parent_dataset
        The loader.
    indices
        Positions of the subset's items in the loader (in a merged dataset, their codes).

    Attributes
    ----------
    indices : numpy.ndarray
        int64 positions, in subset order.
    parent_dataset : DatasetLoader
        The loader.
    """

    def __init__(self, parent_dataset: DatasetLoader, indices: Iterable[int]) -> None:
        self.parent_dataset = parent_dataset
        self.indices = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        self.indices = self.indices.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def data_files(self) -> list[str | None]:
        """Each item's own file, in subset order: its graph file in the "direct graph"
        mode; for a dataset, its ``graph_data/<name>.pt`` when one was written (for users
        who still want files, see :class:`~cadstore.storage.PyGGraphStoreHandler`), else
        ``None`` (the item is read from the dataset)."""
        source = self.parent_dataset.item_source
        return [source.data_file(int(p)) for p in self.indices]

    @property
    def label_datas(self) -> list[Any]:
        """Each item's label, in subset order (``None`` where an item has none, or the
        loader has no labels); the label is the one training reads (see
        :attr:`ItemSource.label_column`)."""
        source = self.parent_dataset.item_source
        return [source.label_of(int(p)) for p in self.indices]

    def len(self) -> int:
        """Number of items (the specified spelling of ``len(dataset)``)."""
        return len(self.indices)

    def __repr__(self) -> str:
        return f"<CADDataset {len(self)} items of {self.parent_dataset!r}>"

    def _position(self, i: int) -> int:
        n = len(self.indices)
        index = whole_number(i, "item position")
        if not -n <= index < n:
            raise ItemIndexError(f"item {i} is out of range for a subset of {n} items")
        return int(self.indices[index])

    def get_item(self, i: int) -> Any:
        """Read item ``i`` of the subset straight from the dataset.

        Parameters
        ----------
        i
            Position in the subset (negative counts from the end).

        Returns
        -------
        dict or Any
            ``{"file_id_code", "name", <group>: {array: ndarray}, "labels": {...}}``, or what
            the loader's ``item_loader_func`` returns.

        Raises
        ------
        ItemIndexError
            If ``i`` is out of range (a :class:`DatasetError` and an ``IndexError``).
        DatasetError
            If ``i`` is not a whole number (``1.5``, ``True``).
        """
        return self.parent_dataset.item_source.read(self._position(i))

    __getitem__ = get_item

    def get_raw_data(self, i: int) -> dict[str, Any]:
        """Where item ``i`` lives, without reading its arrays.

        Parameters
        ----------
        i
            Position in the subset.

        Returns
        -------
        dict
            For a dataset: ``file_id_code``, ``name``, ``dataset`` (path) and ``rows``
            (``{group: (start, stop)}``). For graph files: ``file_id_code``, ``graph_file``
            and ``label``.
        """
        return self.parent_dataset.item_source.locate(self._position(i))

    def remove_indices(self, local: Iterable[int]) -> dict[int, int]:
        """Drop items from the subset and from the loader's current split.

        Parameters
        ----------
        local
            Positions in this subset.

        Returns
        -------
        dict
            ``{old position: new position}`` of the items kept.

        Raises
        ------
        ItemIndexError
            If a position is out of range; nothing is removed then.
        DatasetError
            If ``local`` is not an iterable of integers (a single int, a string, a
            float among them); nothing is removed then.

        Notes
        -----
        The removal is kept by the loader for this session; the ``subset`` column of the
        infoset is not rewritten, so the recorded split stays the one :meth:`split` chose.
        """
        n = len(self.indices)
        drop = set()
        for index in _check_positions("local", local):
            if not -n <= index < n:
                raise ItemIndexError(f"item {index} is out of range for a subset of {n} items")
            drop.add(index % n)
        keep = [i for i in range(n) if i not in drop]
        self.parent_dataset._exclude(self.indices[sorted(drop)])
        mapping = {old: new for new, old in enumerate(keep)}
        self.indices = self.indices[keep]
        return mapping

    def to_torch(self, collate_fn: Callable[[list[Any]], Any] | None = None) -> Any:
        """Return this subset as a PyTorch ``Dataset``, used as the specified system
        documents it: ``DataLoader(train_dataset.to_torch(), batch_size=32, ...)``.

        Parameters
        ----------
        collate_fn
            Kept as the dataset's ``collate_fn`` attribute, for
            ``DataLoader(ds, collate_fn=ds.collate_fn)``; the default is PyTorch's default
            collate function, which ``DataLoader`` uses anyway.

        Returns
        -------
        torch.utils.data.Dataset
            For a dataset read as it is stored: items ``{"graph", "label", "id",
            "name"}`` (:class:`cadstore.dataset.torch_support.TorchGraphDataset`), so a
            plain ``DataLoader`` gives ``batch["graph"]`` (one batch of disjoint graphs),
            ``batch["label"]`` and ``batch["id"]``; ``label`` (the value of
            :attr:`ItemSource.label_column`) and ``labels`` (every label column) are there
            when the loader has labels (``DatasetLoader(labels=...)``, by default the
            categorical metadata columns). With an ``item_loader_func`` or graph files:
            what the function (or the file source) returns for each item. Picklable, so
            ``DataLoader(num_workers=n)`` works with fork and spawn.

        Raises
        ------
        ImportError
            If PyTorch is not installed (``pip install 'cadstore[torch]'``).

        See Also
        --------
        to_torch_with_collate : the faster form, ``(dataset, collate_fn)``, whose batches
            are decoded straight into tensors.
        """
        from cadstore.dataset import torch_support

        source = self.parent_dataset.item_source
        dataset: Any
        if isinstance(source, ItemSource) and source.item_loader_func is None:
            dataset = torch_support.TorchGraphDataset(source, self.indices)
        else:
            dataset = torch_support.TorchCADDataset(source, self.indices, False)
        dataset.collate_fn = collate_fn if collate_fn is not None else torch_support.default_collate
        return dataset

    def to_torch_with_collate(
        self, collate_fn: Callable[[list[Any]], Any] | None = None
    ) -> tuple[Any, Callable[[list[Any]], Any]]:
        """Return a PyTorch ``Dataset`` over this subset and a collate function.

        cadstore's faster form of :meth:`to_torch`: with the default collate function,
        ``DataLoader`` hands whole batches to the dataset, whose arrays are decoded
        straight into one tensor each (in shared memory in a worker process).

        Parameters
        ----------
        collate_fn
            Use this instead of the default, :class:`cadstore.dataset.torch_support.
            GraphCollate` for dataset items (``torch.utils.data.default_collate`` when an
            ``item_loader_func`` or graph files make the items).

        Returns
        -------
        dataset : torch.utils.data.Dataset
            Items as dicts of tensors; picklable, so ``DataLoader(num_workers=n)`` works
            with fork and spawn.
        collate_fn : callable
            Pass it to ``DataLoader(collate_fn=...)``.

        Raises
        ------
        ImportError
            If PyTorch is not installed (``pip install 'cadstore[torch]'``).
        """
        from cadstore.dataset import torch_support

        source = self.parent_dataset.item_source
        graphs = isinstance(source, ItemSource) and source.item_loader_func is None
        # With the default graph collate, batches travel as numpy and become tensors once.
        numpy_batches = collate_fn is None and graphs
        dataset = torch_support.TorchCADDataset(source, self.indices, numpy_batches)
        if collate_fn is None:
            collate_fn = torch_support.GraphCollate() if graphs else torch_support.default_collate
        return dataset, collate_fn

    def to_pyg(self, collate_fn: Any = None) -> tuple[Any, Any]:
        """Return a PyTorch ``Dataset`` over this subset and a collate function making
        ``torch_geometric.data.Batch`` objects, for ``DataLoader``.

        Parameters
        ----------
        collate_fn
            A :class:`cadstore.dataset.pyg.PygCollate` choosing the features, labels and
            face-pair attributes (default: ``PygCollate()``).

        Returns
        -------
        dataset : torch.utils.data.Dataset
            As :meth:`to_torch_with_collate` gives it, handing whole batches to the
            collate function.
        collate_fn : PygCollate
            Pass it to ``DataLoader(collate_fn=...)``. For the fastest loading, pass it to
            :meth:`batches` instead.

        Raises
        ------
        ValueError
            With an ``item_loader_func``, whose items are not the dataset's.
        ImportError
            If PyTorch Geometric is not installed (``pip install 'cadstore[pyg]'``).
        """
        from cadstore.dataset import pyg, torch_support

        pyg.require_pyg()
        source = self.parent_dataset.item_source
        if not isinstance(source, ItemSource) or source.item_loader_func is not None:
            raise ValueError(
                "to_pyg() collates the dataset's own items; with an item_loader_func or "
                "graph files, use to_torch() and your own collate function"
            )
        dataset = torch_support.TorchCADDataset(source, self.indices, True)
        return dataset, collate_fn if collate_fn is not None else pyg.PygCollate()

    def batches(
        self,
        batch_size: int = 32,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        threads: int = 2,
        prefetch: int = 4,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        processes: int = 0,
        multiprocessing_context: str | None = None,
    ) -> Any:
        """Batches of this subset for training, decoded by threads of this process or, with
        ``processes``, by worker processes that reuse their shared-memory buffers.

        The fastest way to feed a model from a dataset; see
        :class:`cadstore.dataset.training.BatchLoader` (whose parameters these are). Each
        iteration is an epoch, shuffled anew unless ``shuffle=False``; the batches equal
        those of ``DataLoader`` over :meth:`to_torch_with_collate`. With ``processes``, the
        workers live from one epoch to the next: ``close()`` the loader (or use it in a
        ``with`` block) when done.

        Raises
        ------
        ValueError
            With an ``item_loader_func`` (use ``DataLoader`` and :meth:`to_torch`).
        ImportError
            If PyTorch is not installed (``pip install 'cadstore[torch]'``).
        """
        from cadstore.dataset.training import BatchLoader

        return BatchLoader(
            self.parent_dataset.item_source,
            self.indices,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            threads=threads,
            prefetch=prefetch,
            collate_fn=collate_fn,
            processes=processes,
            multiprocessing_context=multiprocessing_context,
        )


# ---------------------------------------------------------------------------- DatasetLoader
class DatasetLoader:
    """Split a merged dataset and serve its subsets (the specified API).

    Parameters
    ----------
    merged_store_path
        The ``.dataset``, a local path or a URL (``s3://bucket/flows/demo.dataset``).
    parquet_file_path
        The ``.infoset`` (defaults as in :class:`DatasetExplorer`); the split is recorded
        in its ``subset`` column (on an object store, with one atomic upload).
    item_loader_func
        Loads one item. The specified form ``f(graph_file, label_file, data_id)``: for
        ``graph_files``, the file, its label and its code; for a dataset, the item's
        ``graph_data/<name>.pt`` beside the dataset when it exists, otherwise the item
        read from the dataset (a dict, see :class:`ItemSource`), its label and its code.
        For a dataset, cadstore's form ``f(item_dict)`` also works: a function that
        requires one argument gets the item dict (see :func:`item_loader_form`). Must be
        picklable (a module-level function) for spawned ``DataLoader`` workers.
    graph_files
        Items as separate files instead of a dataset (the specified "direct graph" mode):
        ``split`` works on them, and ``item_loader_func`` loads them.
    labels
        For a dataset: the infoset column(s) attached to every item under ``"labels"``
        (default: the columns of categorical metadata fields). For ``graph_files``: one
        label per file, used to stratify the split.
    file_code_start
        For ``graph_files``: the code of the first file. Unused for a dataset, whose codes
        are its own.
    flow_output_file
        The ``.flow`` manifest, instead of the paths.
    groups, arrays
        Read only these groups, or ``{group: [array, ...]}``, for each item (default:
        everything); one name may be given as a string. Leaving out ``faceface`` makes
        items much smaller.
    storage_options
        fsspec options for the paths that are URLs (see :class:`DatasetExplorer`); they
        travel with the item reader into ``DataLoader`` workers.
    trust_manifest
        Follow paths the manifest lists outside its own folder (see
        :class:`DatasetExplorer`).

    Raises
    ------
    DatasetError
        If no dataset or graph files are given, or a label column is unknown.
    CorruptStoreError
        If a path is not a dataset or the manifest lists a missing file.

    Notes
    -----
    No Dask cluster is started, and nothing is read from per-item copies. An existing
    split recorded in the infoset is loaded, so :meth:`get_dataset` works without calling
    :meth:`split` again.
    """

    def __init__(
        self,
        merged_store_path: str | os.PathLike[str] | None = None,
        parquet_file_path: str | os.PathLike[str] | None = None,
        item_loader_func: Callable[..., Any] | None = None,
        graph_files: Sequence[str | os.PathLike[str]] | None = None,
        labels: Sequence[Any] | str | None = None,
        file_code_start: int = 0,
        *,
        flow_output_file: str | os.PathLike[str] | None = None,
        groups: Sequence[str] | str | None = None,
        arrays: Mapping[str, Sequence[str] | str] | None = None,
        storage_options: dict[str, Any] | None = None,
        trust_manifest: bool = False,
    ) -> None:
        self.storage_options = storage_options
        self.explorer: DatasetExplorer | None = None
        self._source: ItemSource | GraphFileSource
        self._history: dict[tuple[Any, ...], np.ndarray] = {}
        self._removed: np.ndarray = np.zeros(0, dtype=bool)
        if graph_files is not None:
            if merged_store_path is not None or flow_output_file is not None:
                raise DatasetError("pass either a dataset or graph_files, not both")
            self._source = GraphFileSource(
                graph_files,
                None if labels is None else list(labels),
                file_code_start,
                item_loader_func,
            )
            self._n = len(self._source.graph_files)
            self.label_columns: list[str] = []
            self._assignment = np.full(self._n, -1, dtype=np.int64)
            self._removed = np.zeros(self._n, dtype=bool)
            return
        if merged_store_path is None and flow_output_file is None:
            raise DatasetError(
                "no dataset: pass merged_store_path, flow_output_file or graph_files"
            )
        self.explorer = DatasetExplorer(
            flow_output_file=flow_output_file,
            merged_store_path=merged_store_path,
            parquet_file_path=parquet_file_path,
            storage_options=storage_options,
            trust_manifest=trust_manifest,
        )
        # One name is one group (or array), as for ``labels``: a string is iterable, and
        # its characters were taken for group names.
        if isinstance(groups, str):
            groups = [groups]
        if arrays is not None:
            arrays = {g: [a] if isinstance(a, str) else a for g, a in arrays.items()}
        try:
            self._n = self.explorer.n_items
            self._check_selection(groups, arrays)
            self.label_columns = self._label_columns(labels)
            self._source = ItemSource(
                self.explorer.reader,
                groups,
                arrays,
                self._label_values(self.label_columns),
                item_loader_func,
            )
            self._assignment = self._recorded_split()
            self._removed = np.zeros(self._n, dtype=bool)
        except BaseException:
            self.explorer.close()
            raise

    # ------------------------------------------------------------------ setup helpers
    def _check_selection(
        self, groups: Sequence[str] | None, arrays: Mapping[str, Sequence[str]] | None
    ) -> None:
        assert self.explorer is not None
        available = self.explorer.available_groups()
        clash = available & _RESERVED_KEYS
        if clash:
            raise DatasetError(
                f"group(s) {sorted(clash)} clash with the item keys {sorted(_RESERVED_KEYS)}"
            )
        for group in list(groups or []) + list(arrays or {}):
            if group not in available:
                raise DatasetError(f"unknown group {group!r}; the dataset has {sorted(available)}")
        for group, names in (arrays or {}).items():
            have = self.explorer.available_arrays(group)
            for name in names:
                if name not in have or name == OFFSETS:
                    raise DatasetError(
                        f"unknown array {name!r} in group {group!r}; it has {sorted(have)}"
                    )

    def _info(self) -> pd.DataFrame | None:
        assert self.explorer is not None
        if not self.explorer.has_info:
            return None
        return self.explorer.get_file_info_all()

    def _label_columns(self, labels: Sequence[str] | str | None) -> list[str]:
        info = self._info()
        if labels is None:
            if info is None:
                return []
            return [c for c in _categorical_columns(self.explorer) if c in info.columns]
        wanted = [labels] if isinstance(labels, str) else [str(c) for c in labels]
        columns = [] if info is None else list(info.columns)
        for column in wanted:
            if column not in columns:
                raise DatasetError(
                    f"unknown label column {column!r}; the infoset has columns {columns}"
                )
        return wanted

    def _label_values(self, columns: Sequence[str]) -> dict[str, np.ndarray]:
        info = self._info()
        if not columns or info is None:
            return {}
        assert self.explorer is not None
        # As stored: through pandas an integer column with a missing value became floats.
        return {c: self.explorer._info_values(c)[: self._n] for c in columns}

    def _recorded_split(self) -> np.ndarray:
        assignment = np.full(self._n, -1, dtype=np.int64)
        info = self._info()
        if info is None or "subset" not in info.columns:
            return assignment
        for index, name in enumerate(SUBSETS):
            codes = info.loc[info["subset"] == name, "id"].to_numpy(dtype=np.int64)
            codes = codes[(codes >= 0) & (codes < self._n)]
            assignment[codes] = index
        return assignment

    def __repr__(self) -> str:
        where = (
            self.explorer.merged_store_path
            if self.explorer is not None
            else f"{self._n} graph files"
        )
        return f"<DatasetLoader {where!r} items={self._n}>"

    def __enter__(self) -> DatasetLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_resources()

    # ------------------------------------------------------------------ structure
    def _require_explorer(self) -> DatasetExplorer:
        if self.explorer is None:
            raise DatasetError("this loader reads graph files; it has no dataset groups")
        return self.explorer

    def available_groups(self) -> set[str]:
        """Return the dataset's groups (see :meth:`DatasetExplorer.available_groups`)."""
        return self._require_explorer().available_groups()

    def available_arrays(self, group: str) -> set[str]:
        """Return the arrays of ``group`` (see :meth:`DatasetExplorer.available_arrays`)."""
        return self._require_explorer().available_arrays(group)

    def find_group_for_array(self, name: str) -> str:
        """Return the first group (in dataset order) that has an array called ``name``.

        Parameters
        ----------
        name
            An array name.

        Returns
        -------
        str
            The group.

        Raises
        ------
        DatasetError
            If no group has it (the message lists every array).
        """
        explorer = self._require_explorer()
        everything: set[str] = set()
        for group in explorer.reader.groups:
            arrays = explorer.available_arrays(group)
            if name in arrays:
                return group
            everything |= arrays
        raise DatasetError(f"no group has an array {name!r}; the arrays are {sorted(everything)}")

    # ------------------------------------------------------------------ split
    def _membership(
        self,
        key: str,
        group: str | None,
        categories: Sequence[Any] | None,
        ratios: np.ndarray,
        bins: int | None,
    ) -> np.ndarray:
        if key == "random":
            return np.zeros((self._n, 0), dtype=np.uint8)
        if self.explorer is None:
            assert isinstance(self._source, GraphFileSource)
            if self._source.labels is None:
                raise DatasetError(
                    f"cannot stratify graph files by {key!r} without labels; pass labels= "
                    "or use key='random'"
                )
            values = np.asarray(self._source.labels)
            cats = np.unique(values) if categories is None else np.asarray(list(categories))
            matches: np.ndarray = values[:, None] == cats[None, :]
            return matches.astype(np.uint8)
        if categories is not None:
            matrix, _, _ = self.explorer.build_membership_matrix(group, key, categories)
            return matrix
        values, codes = self.explorer.key_values(key, group)
        classes, index = np.unique(values, return_inverse=True)
        index = index.ravel()
        # Items whose value no other item shares: such a class cannot be split.
        per_class = np.bincount(np.unique(codes * len(classes) + index) % max(len(classes), 1))
        alone = int(np.sum(per_class == 1))
        mostly_unique = alone > max(1, self._n // 2)
        if values.dtype.kind in "iuf":
            if mostly_unique or len(classes) > _MAX_CATEGORIES:
                # A measurement (a size, a time), not a class: stratify on quantile bins,
                # as many as keep each bin large enough to be split by the fractions.
                smallest = float(min(r for r in ratios if r > 0))
                wanted = bins if bins is not None else DEFAULT_SPLIT_BINS
                usable = max(1, min(wanted, int(self._n * smallest)))
                edges, index = quantile_bins(values, usable)
                return membership_matrix(index, codes, self._n, len(edges) - 1)
        elif mostly_unique:
            raise DatasetError(
                f"cannot stratify on {key!r}: {alone} of {self._n} items have a value of "
                "their own (it names items rather than classing them); keys that suit: "
                f"{', '.join(k for k in self.get_available_stratification_keys() if k != key)}"
                ", or 'random'"
            )
        return membership_matrix(index, codes, self._n, len(classes))

    def get_available_stratification_keys(self) -> list[str]:
        """Return the keys :meth:`split` can stratify on, besides ``"random"``.

        Integer and boolean arrays of one value per row (codes such as ``face_types``),
        the infoset's categorical columns (labels such as ``file_label``) and its
        numeric columns (measurements such as ``size_cadfile``, stratified on quantile
        bins). Strings that name items (``name``, ``description``) are not among them.

        Returns
        -------
        list of str
            Key names, arrays first in dataset order, then infoset columns.
        """
        if self.explorer is None:
            return [] if self._source.labels is None else ["labels"]
        keys: list[str] = []
        reader = self.explorer.reader
        for group in reader.groups:
            for name in reader.arrays(group):
                meta = reader.array_meta(group, name)
                if (
                    meta.dtype.kind in "biu"
                    and len(meta.shape) == 1
                    and not name.endswith(_NOT_LABEL_SUFFIXES)
                    and name not in (OFFSETS, f"file_id_code_{group}")
                    and name not in keys
                ):
                    keys.append(name)
        info = self._info()
        if info is not None:
            categorical = set(_categorical_columns(self.explorer))
            for column in info.columns:
                if column in _NOT_LABELS or column in keys:
                    continue
                if column in categorical or info[column].dtype.kind in "biuf":
                    keys.append(column)
        return keys

    def split(
        self,
        key: str,
        group: str | None = None,
        train: float = 0.6,
        validation: float = 0.2,
        test: float = 0.2,
        random_state: int | None = None,
        categories: Sequence[Any] | None = None,
        force_reset: bool = False,
        bins: int | None = None,
    ) -> tuple[int, int, int]:
        """Split the items into train, validation and test, stratified on ``key``.

        Parameters
        ----------
        key
            What to stratify on: an array (e.g. ``"face_types"``: an item has every face
            type it contains, so the split is multi-label), an infoset column (e.g.
            ``"file_label"``), or ``"random"`` for no stratification.
        group
            Where to look for ``key`` first (default: every group, then the infoset).
        train, validation, test
            Fractions of the items; they must add up to 1 (within 1e-6).
        random_state
            Seed, a non-negative integer; the same seed gives the same split. ``None``
            draws a fresh one.
        categories
            The classes to stratify on (values outside them count as unlabelled). Default:
            every distinct value of a class-like key. A numeric key that measures rather
            than classes (more than 64 distinct values, or most items with a value of
            their own, such as ``size_cadfile`` or ``processing_time``) is cut into
            quantile bins instead, see ``bins``.
        force_reset
            Recompute even when this exact split (same key, group, fractions, seed and
            categories) was already computed by this loader, and bring back the items
            removed with :meth:`CADDataset.remove_indices` (otherwise they stay out).
        bins
            Quantile bins for a numeric key that is binned (default
            :data:`DEFAULT_SPLIT_BINS`); fewer when the smallest subset would not get an
            item of every bin.

        Returns
        -------
        tuple of int
            ``(n_train, n_validation, n_test)``.

        Raises
        ------
        DatasetError
            If the fractions are invalid, ``random_state`` is not ``None`` or a
            non-negative integer, the key or group is unknown, or the key names
            items rather than classing them (``name``, ``description``: most items have a
            value of their own); the message lists the keys that suit.

        Warns
        -----
        CadstoreWarning
            When the subset sizes stray from the fractions by more than two items and 10%
            (a key with few, very unequal classes), naming the key and the sizes.

        Notes
        -----
        The split is written to the infoset's ``subset`` column (atomically) when the
        loader has an infoset.
        """
        ratios = _check_fractions((train, validation, test))
        _check_random_state(random_state)
        if bins is not None and (isinstance(bins, bool) or not isinstance(bins, int) or bins < 1):
            raise DatasetError(f"bins must be a positive int, got {bins!r}")
        cats = None if categories is None else tuple(categories)
        signature = (key, group, tuple(ratios.tolist()), random_state, cats, bins)
        cached = self._history.get(signature) if random_state is not None else None
        if force_reset:
            self._removed[:] = False
        if cached is None or force_reset:
            membership = self._membership(key, group, categories, ratios, bins)
            cached = iterative_stratification(membership, ratios, random_state)
            self._history[signature] = cached
        self._record_split(cached)
        self._assignment = np.where(self._removed, -1, cached)
        counts = self._counts()
        if _lopsided(counts, ratios):
            warnings.warn(
                f"the split on {key!r} is far from the fractions "
                f"{'/'.join(f'{r:g}' for r in ratios)}: "
                + ", ".join(f"{n} {c}" for n, c in zip(SUBSETS, counts, strict=True))
                + "; its classes are too few or too unequal to stratify on (try a key with "
                "more items per class, bins=, or 'random')",
                CadstoreWarning,
                stacklevel=2,
            )
        return counts

    def _counts(self) -> tuple[int, int, int]:
        counts = np.bincount(self._assignment[self._assignment >= 0], minlength=len(SUBSETS))
        return int(counts[0]), int(counts[1]), int(counts[2])

    def _record_split(self, assignment: np.ndarray) -> None:
        """Write the split into the ``.infoset``'s ``subset`` column.

        A split is a writer like a merge (:mod:`cadstore.lifecycle`): it holds the
        dataset's lock, starts from the infoset of the dataset's current version (which
        may have grown since this loader opened it: new items get no subset), and
        publishes the copy atomically, stamped with that version's commit id.
        """
        explorer = self.explorer
        if explorer is None or explorer.infoset is None:
            return
        import pyarrow as pa

        infoset = explorer.infoset
        dataset = explorer.dataset_location
        with Transaction(dataset, "split", PublishedFiles(infoset=infoset)) as txn:
            with DatasetReader(dataset) as reader:
                found = TrustedTables(reader).read("infoset", infoset)
                n_items = reader.n_items
                kept = reader.keeps_items_of(explorer.reader)
            if not kept:
                # Replaced (a merge with overwrite) since this loader opened it: the codes
                # name other items now, which the split was not computed on. (An append
                # keeps the codes: its new items get no subset.)
                raise StorageError(
                    dataset.path,
                    "was replaced by another version (a merge with overwrite) since this "
                    "loader opened it; the split, computed on the items of the version it "
                    "opened, was not recorded: open the dataset again and split it",
                )
            if found is None:
                return
            table, where = found
            check_item_codes(table, where, n_items)
            ids = table.column("id").to_numpy()
            names = np.array([*SUBSETS, NO_SUBSET], dtype=object)
            valid = (ids >= 0) & (ids < self._n)
            index = np.full(len(ids), len(SUBSETS), dtype=np.int64)
            index[valid] = assignment[ids[valid]]
            index[index < 0] = len(SUBSETS)
            column = pa.array(names[index].tolist(), pa.string())
            position = table.schema.get_field_index("subset")
            field = pa.field("subset", pa.string())
            if position < 0:
                table = table.append_column(field, column)
            else:
                table = table.set_column(position, field, column)
            stamp = None if txn.parent is None else txn.parent.id
            # Local disk: temporary file and rename; object store: one upload of the whole
            # table, so a reader sees the old table or the new one.
            write_bytes_atomic(infoset, table_bytes(table, stamp))
        explorer.reload_info()

    @property
    def item_source(self) -> ItemSource | GraphFileSource:
        """What reads the items (picklable; shared by every subset)."""
        return self._source

    def _exclude(self, positions: np.ndarray) -> None:
        positions = np.asarray(positions, dtype=np.int64)
        self._assignment[positions] = -1
        self._removed[positions] = True

    def remove_indices(self, indices: Iterable[int]) -> dict[int, int]:
        """Leave items out of the loader: of the current split, of every subset, and of
        the splits made after.

        Parameters
        ----------
        indices
            Positions in the loader (an item's code in a dataset, as
            :attr:`CADDataset.indices` holds them; the file's place in ``graph_files``).

        Returns
        -------
        dict
            ``{old index: new index}`` of the items kept: their places among the
            loader's remaining items, before and after (codes themselves never change).

        Raises
        ------
        ItemIndexError
            If a position is out of range; nothing is removed then.
        DatasetError
            If ``indices`` is not an iterable of integers (a single int, a string, a
            float among them); nothing is removed then.

        Notes
        -----
        As with :meth:`CADDataset.remove_indices`, the removal holds for this loader; the
        infoset's ``subset`` column is not rewritten.
        """
        drop = set()
        for index in _check_positions("indices", indices):
            if not 0 <= index < self._n:
                raise ItemIndexError(
                    f"item {index} is out of range for a loader of {self._n} items"
                )
            drop.add(index)
        remaining = np.flatnonzero(~self._removed)
        self._exclude(np.array(sorted(drop), dtype=np.int64))
        kept = [int(p) for p in remaining if int(p) not in drop]
        old_index = {int(p): i for i, p in enumerate(remaining)}
        return {old_index[p]: new for new, p in enumerate(kept)}

    def diagnose_file_codes_mismatch(
        self, file_codes: Iterable[int] | None = None
    ) -> dict[str, Any]:
        """Compare item codes with the dataset's: which are missing on either side.

        The usual cause of a split or a label lookup that finds no items is a table (or a
        list of codes) from another merge than the dataset.

        Parameters
        ----------
        file_codes
            The codes to check (default: the infoset's ``id`` column).

        Returns
        -------
        dict
            ``n_items`` (the loader's), ``n_given``, ``missing_in_dataset`` and
            ``missing_in_given`` (sorted codes, at most 20 each, with the full counts in
            ``n_missing_in_dataset`` and ``n_missing_in_given``), and ``match``.
        """
        if file_codes is None:
            info = self._info()
            given = (
                np.zeros(0, dtype=np.int64) if info is None else info["id"].to_numpy(dtype=np.int64)
            )
        else:
            given = np.asarray([int(c) for c in file_codes], dtype=np.int64)
        codes = np.array([self._source.code_of(p) for p in range(self._n)], dtype=np.int64)
        not_in_dataset = np.setdiff1d(given, codes)
        not_given = np.setdiff1d(codes, given)
        return {
            "n_items": self._n,
            "n_given": len(np.unique(given)),
            "n_missing_in_dataset": len(not_in_dataset),
            "missing_in_dataset": not_in_dataset[:20].tolist(),
            "n_missing_in_given": len(not_given),
            "missing_in_given": not_given[:20].tolist(),
            "match": not len(not_in_dataset) and not len(not_given),
        }

    def validate_configuration(self) -> dict[str, Any]:
        """Check what the loader was given, before training on it.

        Returns
        -------
        dict
            ``valid`` (no issue found), ``issues`` (what is wrong, in words), ``n_items``,
            ``dataset`` (its path; ``None`` for graph files), ``infoset`` (whether one is
            read), ``label_columns``, ``split`` (items per subset, ``None`` before a
            split), ``removed`` (items left out) and ``file_codes`` (see
            :meth:`diagnose_file_codes_mismatch`; ``None`` without an infoset).
        """
        issues: list[str] = []
        codes = None
        has_info = self.explorer is not None and self.explorer.has_info
        if self._n == 0:
            issues.append("the loader has no items")
        if has_info:
            codes = self.diagnose_file_codes_mismatch()
            if not codes["match"]:
                issues.append(
                    f"the infoset's ids do not match the dataset's codes "
                    f"({codes['n_missing_in_dataset']} not in the dataset, "
                    f"{codes['n_missing_in_given']} items without a row)"
                )
        if self._source.__class__ is GraphFileSource:
            missing = [f for f in self._source.graph_files if not os.path.isfile(f)]
            if missing:
                issues.append(f"{len(missing)} graph file(s) do not exist, e.g. {missing[0]}")
        split = None
        if np.any(self._assignment >= 0):
            split = {
                name: int(np.count_nonzero(self._assignment == i)) for i, name in enumerate(SUBSETS)
            }
        return {
            "valid": not issues,
            "issues": issues,
            "n_items": self._n,
            "dataset": None if self.explorer is None else self.explorer.merged_store_path,
            "infoset": has_info,
            "label_columns": list(self.label_columns),
            "split": split,
            "removed": int(np.count_nonzero(self._removed)),
            "file_codes": codes,
        }

    def get_dataset(self, subset: str) -> CADDataset:
        """Return one subset of the current split.

        Parameters
        ----------
        subset
            ``"train"``, ``"validation"`` or ``"test"``.

        Returns
        -------
        CADDataset
            Its items, in code order.

        Raises
        ------
        DatasetError
            If the name is not a subset, or no split exists (neither :meth:`split` was
            called nor one is recorded in the infoset).
        """
        if subset not in SUBSETS:
            raise DatasetError(f"unknown subset {subset!r}; choose one of {list(SUBSETS)}")
        if not np.any(self._assignment >= 0):
            raise DatasetError("no split yet: call split() first")
        positions = np.flatnonzero(self._assignment == SUBSETS.index(subset))
        return CADDataset(self, positions)

    def reset_split_state(self) -> DatasetLoader:
        """Forget the split, its history and removed items; mark every item ``"N/A"``.

        The infoset's ``subset`` column is rewritten too, so the forgotten split is not
        loaded again by the next loader.

        Returns
        -------
        DatasetLoader
            This loader, as the specified method returns it (so calls chain:
            ``loader.reset_split_state().split(...)``).
        """
        self._history.clear()
        self._assignment = np.full(self._n, -1, dtype=np.int64)
        self._removed[:] = False
        self._record_split(self._assignment)
        return self

    def close_resources(self, clear_split_history: bool = True) -> None:
        """Close the dataset files. Idempotent.

        Parameters
        ----------
        clear_split_history
            Also forget the cached splits (the current split stays usable).
        """
        if self.explorer is not None:
            self.explorer.close()
        if clear_split_history:
            self._history.clear()


def _missing_label(value: Any) -> bool:
    """Whether a label value in a column of objects marks a missing value (``None``, or
    the NaN pandas puts in a column of strings or booleans)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _integer_labels(values: Any) -> bool:
    """Whether a label column holds integers (or booleans): of an integer dtype, or
    objects that are Python integers where an item has a value (``None`` elsewhere)."""
    array = np.asarray(values)
    if array.dtype.kind in "biu":
        return True
    if array.dtype.kind != "O":
        return False
    from cadstore.dataset.torch_support import is_integer_label

    # Python ints where items have a value: not bools (a bool column with gaps stays a
    # column of objects, batched as a list, as before).
    present = [v for v in array if v is not None]
    return bool(present) and all(is_integer_label(v) for v in present)


def _categorical_columns(explorer: DatasetExplorer | None) -> list[str]:
    # The infoset's Parquet metadata records each column's routing; categorical fields are
    # the labels a user defined (file_label, category, ...).
    if explorer is None or not explorer.has_info:
        return []
    raw = explorer.infoset_metadata().get(b"cadstore")
    if not raw:
        return []
    try:
        fields = parse_document(raw).get("fields", {})
    except (ValueError, AttributeError):
        return []
    return [
        c
        for c, spec in fields.items()
        if isinstance(spec, dict) and spec.get("route") == "categorical"
    ]
