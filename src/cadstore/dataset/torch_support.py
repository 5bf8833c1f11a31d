"""PyTorch support for :class:`cadstore.dataset.loader.CADDataset`; torch is imported lazily.

Importing this module does not import torch: :class:`TorchCADDataset` (a real
``torch.utils.data.Dataset`` subclass) is built on first access, and the collate functions
import torch when called. So ``cadstore`` works without the ``torch`` extra, and a spawned
``DataLoader`` worker that unpickles a ``TorchCADDataset`` rebuilds the class by the same
lookup.

Items are variable-size graphs: one row per face in ``faces``, one per co-edge in
``edges``/``graph``, ``N_f²`` rows in ``faceface``. :class:`GraphCollate` batches them the
way graph libraries do: rows are concatenated, edge endpoints are shifted by the number of
nodes of the items before them, and a ``batch`` vector maps every node to its item.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cadstore.dataset.reader import whole_number
from cadstore.dataset.worker_memory import RecycledBatch, settle_worker, worker_blocks
from cadstore.errors import InvalidDataError

# TorchCADDataset is made by the module __getattr__ on first use, so torch loads lazily.
__all__ = [  # noqa: F822
    "BatchAllocator",
    "CADGraph",
    "GraphCollate",
    "TorchCADDataset",
    "TorchGraphDataset",
    "batch_tensors",
    "collate_graphs",
    "default_collate",
    "graph_item",
    "require_torch",
    "size_class",
]


def require_torch() -> Any:
    """Import and return ``torch``.

    Returns
    -------
    module
        The ``torch`` module.

    Raises
    ------
    ImportError
        If PyTorch is not installed, saying how to install it.
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "PyTorch support needs torch: pip install 'cadstore[torch]' (torch==2.13.0)"
        ) from exc
    return torch


_INT64_MAX = int(np.iinfo(np.int64).max)


def _check_widening(arrays: Sequence[np.ndarray], name: str) -> None:
    """Raise if widening ``arrays`` to int64 would change a value.

    torch has few kernels for uint16/32/64, so batches hold them as int64, which holds
    every uint16 and uint32 value but not uint64 values from ``2**63``: those would wrap to
    negative numbers silently.

    Parameters
    ----------
    arrays
        The values of one array (or label column) over a batch; only uint64 ones are
        looked at.
    name
        What to call them in the error: ``group/array`` or ``labels/column``.

    Raises
    ------
    InvalidDataError
        If a uint64 value does not fit int64, naming the array (``name``) and the value.
    """
    for array in arrays:
        if array.dtype.kind != "u" or array.dtype.itemsize < 8 or not array.size:
            continue
        largest = int(array.max())
        if largest > _INT64_MAX:
            raise InvalidDataError(
                f"{name or 'array'}: uint64 value {largest} does not fit int64, the dtype "
                "torch batches hold unsigned integers wider than a byte in"
            )


def _batch_dtype(arrays: Sequence[np.ndarray], name: str) -> np.dtype:
    """The dtype of a batch array of ``arrays``, whose dtypes may differ between items.

    Unsigned integers wider than a byte become int64 (after :func:`_check_widening`),
    then numpy's promotion picks a dtype that holds every item's values: int32 and int64
    items give int64, not the first item's int32 (which ``np.concatenate`` into the first
    item's dtype would have cut without a word), and int64 with uint64 no float64.

    Raises
    ------
    InvalidDataError
        If a uint64 value does not fit int64.
    """
    _check_widening(arrays, name)
    dtypes = {np.dtype(np.int64) if not _tensor_kind(a.dtype) else a.dtype for a in arrays}
    if len(dtypes) == 1:
        return dtypes.pop()
    return np.result_type(*dtypes)


def _to_tensor(value: Any, name: str = "") -> Any:
    torch = require_torch()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "USO":
            return value
        if value.dtype.kind == "u" and value.dtype.itemsize > 1:
            # torch has few kernels for uint16/32/64: batches hold them as int64.
            _check_widening([value], name)
            value = value.astype(np.int64)
        if not value.flags.writeable:
            value = value.copy()
        return torch.from_numpy(value)
    if isinstance(value, np.generic):
        if value.dtype.kind in "USO":
            return value.item()
        if value.dtype.kind == "u":
            _check_widening([np.asarray(value)], name)
            return torch.as_tensor(value.item())
        return torch.as_tensor(value)
    return value


def item_to_tensors(item: Mapping[str, Any]) -> dict[str, Any]:
    """Convert the arrays of an item dict (``{group: {array: ndarray}}``) to tensors.

    Parameters
    ----------
    item
        An item as :meth:`cadstore.dataset.loader.ItemSource.read` returns it.

    Returns
    -------
    dict
        The same structure; numeric arrays and per-item values become tensors (sharing
        memory with the arrays), strings and labels are left as they are.

    Raises
    ------
    InvalidDataError
        If a uint64 value does not fit the int64 it is widened to, naming the array.
    """
    out: dict[str, Any] = {}
    for key, value in item.items():
        if key == "labels" or not isinstance(value, Mapping):
            out[key] = value
        else:
            out[key] = {name: _to_tensor(data, f"{key}/{name}") for name, data in value.items()}
    return out


def _position_of(indices: np.ndarray, i: Any) -> int:
    """The item code at position ``i`` of a torch wrapper's ``indices``: ``i`` as any
    position (:func:`~cadstore.dataset.reader.whole_number`), an ``IndexError`` beyond
    them, as a sequence gives."""
    k = whole_number(i, "item position")
    n = len(indices)
    if not -n <= k < n:
        raise IndexError(f"item {i} is out of range for a dataset of {n} items")
    return int(indices[k])


def warm_before_fork(source: Any) -> None:
    """Have ``source`` (an :class:`~cadstore.dataset.loader.ItemSource`) warm its reader
    before this process next forks, when it can: ``DataLoader`` workers, forked anew each
    epoch, then inherit what it learned instead of learning it again."""
    ahead = getattr(source, "warm_before_fork", None)
    if ahead is not None:
        ahead()


@functools.cache
def _dataset_class() -> type:
    torch = require_torch()

    class TorchCADDataset(torch.utils.data.Dataset):  # type: ignore[misc, name-defined]
        """A PyTorch ``Dataset`` over items of a merged dataset.

        Parameters
        ----------
        source
            An :class:`cadstore.dataset.loader.ItemSource` (or ``GraphFileSource``).
        indices
            Positions of the items (their codes, for a dataset).
        numpy_batches
            Hand whole batches to the collate function as numpy items (through
            ``__getitems__``, which ``DataLoader`` uses when it exists), so that arrays
            become tensors once per batch instead of once per item. Only for a collate
            function that accepts numpy, such as :class:`GraphCollate`.

        Notes
        -----
        It holds only the source (a path, a label table) and the positions, so it pickles
        small; the dataset file is reopened in each worker process on first read.
        """

        def __init__(
            self, source: Any, indices: Sequence[int], numpy_batches: bool = False
        ) -> None:
            self.source = source
            self.indices = np.asarray(indices, dtype=np.int64)
            self.numpy_batches = numpy_batches
            warm_before_fork(source)

        def __len__(self) -> int:
            return len(self.indices)

        def _position(self, i: int) -> int:
            return _position_of(self.indices, i)

        def _read(self, i: int) -> Any:
            settle_worker()
            position = self._position(i)
            _check_labels(self.source, position)
            return self.source.read(position)

        def _converts(self) -> bool:
            return getattr(self.source, "item_loader_func", None) is None

        def __getitem__(self, i: int) -> Any:
            item = self._read(i)
            if self._converts() and isinstance(item, Mapping):
                return item_to_tensors(item)
            return item

        def __getitems__(self, indices: Sequence[int]) -> list[Any]:
            if self.numpy_batches and self._converts():
                read_many = getattr(self.source, "read_many", None)
                if read_many is None:
                    return [self._read(i) for i in indices]
                positions = [self._position(i) for i in indices]
                settle_worker()
                # Each array of the batch is decoded straight into one tensor (in shared
                # memory in a worker), which GraphCollate then returns as it is.
                allocator = BatchAllocator()
                batch = read_many(positions, allocator)
                batch.tensors = allocator.tensors
                items: list[Any] = batch  # an ItemBatch, carrying the tensors to the collate
                return items
            return [self[i] for i in indices]

        def __repr__(self) -> str:
            return f"<TorchCADDataset {len(self)} items>"

    # Pickle finds the class by this name; the module __getattr__ below rebuilds it there.
    TorchCADDataset.__module__ = __name__
    TorchCADDataset.__qualname__ = "TorchCADDataset"
    return TorchCADDataset


class CADGraph:
    """One item's graph in the items of :class:`TorchGraphDataset` (the ``"graph"`` key).

    It holds the item as read from the dataset (``file_id_code``, ``name`` and
    ``{group: {array: ndarray}}``). ``torch.utils.data.default_collate`` batches a list of
    them with :data:`collate_graphs` (registered in its ``default_collate_fn_map``, the
    extension point PyTorch documents), so ``DataLoader(dataset)`` without a
    ``collate_fn`` yields ``batch["graph"]`` as one batch of disjoint graphs.

    Parameters
    ----------
    item
        The item's arrays, code and name.
    """

    __slots__ = ("item",)

    def __init__(self, item: Mapping[str, Any]) -> None:
        self.item = item

    def __getstate__(self) -> dict[str, Any]:
        return {"item": self.item}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.item = state["item"]

    def __repr__(self) -> str:
        return f"<CADGraph item {self.item.get('file_id_code')} {self.item.get('name')!r}>"


def _collate_cad_graphs(batch: Sequence[CADGraph], **kwargs: Any) -> dict[str, Any]:
    """Collate ``CADGraph`` objects (``default_collate_fn_map`` signature)."""
    return collate_graphs([graph.item for graph in batch])


def _register_graph_collate() -> None:
    """Teach ``default_collate`` to batch :class:`CADGraph` (idempotent)."""
    require_torch()
    from torch.utils.data._utils.collate import default_collate_fn_map

    default_collate_fn_map.setdefault(CADGraph, _collate_cad_graphs)


def graph_item(item: Mapping[str, Any], label_column: str | None = None) -> dict[str, Any]:
    """Turn an item read from the dataset into the specified training item.

    Parameters
    ----------
    item
        As :meth:`cadstore.dataset.loader.ItemSource.read` returns it.
    label_column
        The label column that gives ``label`` (default: the first one).

    Returns
    -------
    dict
        ``graph`` (a :class:`CADGraph`), ``id`` (the file id code), ``name`` and, when the
        loader has labels, ``label`` (the value of ``label_column``) and ``labels``
        (``{column: value}`` of every label column).
    """
    arrays = {key: value for key, value in item.items() if key != "labels"}
    out: dict[str, Any] = {
        "graph": CADGraph(arrays),
        "id": int(item["file_id_code"]),
        "name": item.get("name"),
    }
    labels = item.get("labels")
    if labels:
        column = label_column if label_column in labels else next(iter(labels))
        out["label"] = labels[column]
        out["labels"] = dict(labels)
    return out


@functools.cache
def _graph_dataset_class() -> type:
    torch = require_torch()
    _register_graph_collate()

    class TorchGraphDataset(torch.utils.data.Dataset):  # type: ignore[misc, name-defined]
        """The PyTorch ``Dataset`` of :meth:`CADDataset.to_torch` (the specified form).

        Items are ``{"graph": CADGraph, "label", "labels", "id": int, "name": str}`` (see
        :func:`graph_item`), so the
        documented loop works with a plain ``DataLoader`` and its default collate
        function: ``batch["graph"]`` is one batch of disjoint graphs (see
        :class:`GraphCollate`), ``batch["label"]`` and ``batch["id"]`` are tensors.

        Parameters
        ----------
        source
            An :class:`cadstore.dataset.loader.ItemSource`.
        indices
            Codes of the items.

        Notes
        -----
        It holds only the source (a path, a label table) and the codes, so it pickles
        small and works in ``DataLoader`` workers (fork or spawn).
        """

        def __init__(self, source: Any, indices: Sequence[int]) -> None:
            self.source = source
            self.indices = np.asarray(indices, dtype=np.int64)
            warm_before_fork(source)
            #: What to pass as ``DataLoader(collate_fn=...)``; the default is what
            #: ``DataLoader`` uses anyway.
            self.collate_fn: Callable[[list[Any]], Any] = default_collate

        def __len__(self) -> int:
            return len(self.indices)

        def __getitem__(self, i: int) -> dict[str, Any]:
            position = _position_of(self.indices, i)
            settle_worker()
            _check_labels(self.source, position, every_kind=True)
            item = self.source.read(position)
            return graph_item(item, getattr(self.source, "label_column", None))

        def __setstate__(self, state: dict[str, Any]) -> None:
            # Unpickled in a spawned worker: the collate registration happens there too.
            _register_graph_collate()
            self.__dict__.update(state)

        def __repr__(self) -> str:
            return f"<TorchGraphDataset {len(self)} items>"

    TorchGraphDataset.__module__ = __name__
    TorchGraphDataset.__qualname__ = "TorchGraphDataset"
    return TorchGraphDataset


def __getattr__(name: str) -> Any:
    if name == "TorchCADDataset":
        cls = _dataset_class()
        globals()[name] = cls
        return cls
    if name == "TorchGraphDataset":
        cls = _graph_dataset_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_collate(batch: list[Any]) -> Any:
    """``torch.utils.data.default_collate``, importing torch on first call (picklable)."""
    return require_torch().utils.data.default_collate(batch)


#: What to do about an item without a value in a label column of integers.
_MISSING_LABEL_HINT = (
    "give every item one in the infoset, leave those items out (remove_indices), or load "
    "without that column (DatasetLoader(labels=[...]))"
)


def missing_label_error(
    column: str, name: Any, code: Any, integers: bool = True
) -> InvalidDataError:
    """The error for an item read for training without a value in a label column that
    its batches cannot hold without one.

    A column of integers (class codes) is batched as a tensor, which has no place for a
    missing value (floats with NaN would change every item's codes); any column of the
    items of :meth:`CADDataset.to_torch` is batched by torch's ``default_collate``, which
    has none either and fails with an error naming neither the column nor the item.

    Parameters
    ----------
    column
        The label column.
    name, code
        The item's name and file id code, for the message.
    integers
        Whether the column holds integers; else it is one of strings or booleans, refused
        only for ``to_torch()`` items.

    Returns
    -------
    InvalidDataError
        Naming the column and the item, saying what to do.
    """
    if integers:
        why = "batches hold integer labels as tensors, which need one for every item:"
    else:
        why = (
            "to_torch() items are batched by torch's default_collate, which has no place "
            "for a missing value: use to_torch_with_collate() or batches() (a batch of "
            "such a column is a list), or"
        )
    return InvalidDataError(
        f"labels/{column}: no value for item {name!r} (code {code}); {why} {_MISSING_LABEL_HINT}"
    )


def is_integer_label(value: Any) -> bool:
    """Whether a label value is an integer (a class code), not a boolean (a Python
    ``bool`` is an ``int``)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_labels(source: Any, position: int, every_kind: bool = False) -> None:
    """Have ``source`` check the item at ``position`` has the labels its batches need
    before it is read for training (``ItemSource.check_labels``; other sources have
    none)."""
    check = getattr(source, "check_labels", None)
    if check is not None:
        check([position], every_kind)


def _collate_values(values: list[Any], name: str = "", items: Sequence[Any] = ()) -> Any:
    """A label column over a batch: a tensor of numbers, else the values as a list.

    Parameters
    ----------
    values
        The column's value of each item of the batch.
    name
        ``labels/<column>``, for messages.
    items
        What to call each item in a message (its name, else its code).

    Returns
    -------
    torch.Tensor or list
        A tensor when the values are numbers (unsigned integers as int64), else the
        values as they are.

    Raises
    ------
    InvalidDataError
        If an unsigned value does not fit the int64 it is widened to, or if some items
        of a batch of integers have no value. (Items read from a dataset are checked
        when read, whatever their batch holds: ``ItemSource.check_labels``.)
    """
    torch = require_torch()
    if any(v is None for v in values):  # not `None in values`: array labels compare by element
        present = [v for v in values if v is not None]
        if present and all(is_integer_label(v) for v in present):
            who = [items[i] for i, v in enumerate(values) if v is None and i < len(items)]
            raise InvalidDataError(
                f"{name or 'label'}: no value for item(s) {who} in this batch of integer "
                f"labels: {_MISSING_LABEL_HINT}"
            )
    first = values[0]
    if isinstance(first, str | bytes) or first is None:
        return list(values)
    try:
        array = np.asarray(values)
    except (ValueError, OverflowError):
        return list(values)
    if array.dtype.kind == "u":
        _check_widening([array], name)
        array = array.astype(np.int64)
    if array.dtype.kind in "biuf":
        return torch.as_tensor(array)
    return list(values)


class GraphCollate:
    """Collate dataset items (dicts of tensors) into one batch of disjoint graphs.

    Parameters
    ----------
    node_group
        The group whose rows are the graph's nodes.
    edge_arrays
        ``(group, array)`` pairs holding node indices local to each item (edge endpoints);
        they are shifted by the cumulative node count and returned as int64.
    num_nodes
        ``(group, array)`` of the per-item node count, used when present; otherwise the
        row count of ``node_group``.

    Notes
    -----
    Instances pickle, so they can be passed to a ``DataLoader`` with spawned workers.
    """

    def __init__(
        self,
        node_group: str = "faces",
        edge_arrays: Sequence[tuple[str, str]] = (
            ("graph", "edges_source"),
            ("graph", "edges_destination"),
        ),
        num_nodes: tuple[str, str] | None = ("graph", "num_nodes"),
    ) -> None:
        self.node_group = node_group
        self.edge_arrays = [tuple(pair) for pair in edge_arrays]
        self.num_nodes = tuple(num_nodes) if num_nodes is not None else None

    def __repr__(self) -> str:
        return (
            f"GraphCollate(node_group={self.node_group!r}, edge_arrays={self.edge_arrays!r}, "
            f"num_nodes={self.num_nodes!r})"
        )

    def __call__(self, items: list[Mapping[str, Any]]) -> dict[str, Any]:
        """Collate a batch.

        Parameters
        ----------
        items
            Items as ``TorchCADDataset`` returns them (numpy arrays or tensors).

        Returns
        -------
        dict
            ``file_id_code`` (int64 ``[B]``), ``name`` (list); per group, every array
            concatenated along its rows (per-item values stacked to ``[B]``); ``ptr``
            (``{group: int64 [B + 1]}`` row offsets of each item); ``num_nodes`` (``[B]``),
            ``batch`` (item index of every node), ``edge_index`` (``[2, E]``, when both
            edge arrays exist); ``labels`` (``{column: tensor [B] or list}``).

        Raises
        ------
        ValueError
            If the batch is empty.
        InvalidDataError
            If an unsigned value (an array's or a label's) does not fit the int64 that
            unsigned integers wider than a byte are widened to; the message names the
            array (``group/array``) or label (``labels/column``).

        Notes
        -----
        The arrays are views of one buffer, and ``file_id_code``, ``ptr``, ``num_nodes``,
        ``batch`` and ``edge_index`` of a second (:func:`batch_tensors`): in a
        ``DataLoader`` worker each buffer is one shared-memory segment. A tensor kept
        after its batch keeps its whole buffer; ``clone()`` what you keep.
        """
        if not items:
            raise ValueError("cannot collate an empty batch")
        out: dict[str, Any] = {"file_id_code": None, "name": [it.get("name") for it in items]}
        rows: dict[str, np.ndarray] = {}
        # Arrays of numpy numbers are concatenated into one buffer, allocated once their
        # shapes are all known.
        placed: list[tuple[str, str, list[np.ndarray], tuple[int, ...], np.dtype]] = []
        for group, first in items[0].items():
            if group == "labels" or not isinstance(first, Mapping):
                continue
            merged: dict[str, Any] = {}
            for array in first:
                values = [it[group][array] for it in items]
                counts: np.ndarray | None
                made = _prebuilt(items, group, array, values)
                name = f"{group}/{array}"
                layout = _numeric_layout(values, name) if made is None else None
                if layout is not None:
                    arrays, shape, dtype, counts = layout
                    placed.append((group, array, arrays, shape, dtype))
                    merged[array] = None
                elif made is not None:
                    merged[array], counts = made
                else:
                    merged[array], counts = _concatenate(values, name)
                if group not in rows and counts is not None:
                    rows[group] = counts
            out[group] = merged
        tensors = batch_tensors([(shape, dtype) for *_, shape, dtype in placed])
        for (group, array, arrays, _, _), tensor in zip(placed, tensors, strict=True):
            target = tensor.numpy()
            if arrays[0].ndim == 0:
                np.stack(arrays, out=target)
            else:
                np.concatenate(arrays, axis=0, out=target)
            out[group][array] = tensor
        self._index(out, items, rows)
        if "labels" in items[0]:
            out["labels"] = {
                name: _collate_values(
                    [it["labels"][name] for it in items],
                    f"labels/{name}",
                    [it.get("name", it.get("file_id_code")) for it in items],
                )
                for name in items[0]["labels"]
            }
        blocks = worker_blocks()
        # In a DataLoader worker: the batch's blocks are reused once the training
        # process lets them go (see cadstore.dataset.worker_memory).
        return RecycledBatch(out, blocks) if blocks is not None else out

    def _index(
        self, out: dict[str, Any], items: list[Mapping[str, Any]], rows: Mapping[str, np.ndarray]
    ) -> None:
        """Add ``file_id_code``, ``ptr``, ``num_nodes``, ``batch`` and ``edge_index`` to
        ``out`` (whose arrays are collated), all in one buffer."""
        torch = require_torch()
        size = len(items)
        counts = self._node_counts(out, rows)
        present = [
            (group, array)
            for group, array in self.edge_arrays
            if group in rows and array in out.get(group, {})
        ]
        lengths = {len(out[group][array]) for group, array in present}
        # One int64 buffer for every index tensor: file_id_code, the ptr of each group,
        # then num_nodes, batch and edge_index when there are nodes.
        shapes: list[tuple[int, ...]] = [(size,)]
        shapes += [(size + 1,)] * len(rows)
        if counts is not None:
            shapes += [(size,), (int(counts.sum()),)]
            if len(lengths) == 1:
                shapes.append((len(present), lengths.pop()))
        made = iter(batch_tensors([(shape, np.dtype(np.int64)) for shape in shapes]))
        codes = next(made)
        codes.numpy()[:] = [int(it["file_id_code"]) for it in items]
        out["file_id_code"] = codes
        ptr: dict[str, Any] = {}
        for group, group_rows in rows.items():
            offsets = ptr[group] = next(made)
            offsets.numpy()[0] = 0
            np.cumsum(group_rows, out=offsets.numpy()[1:])
        out["ptr"] = ptr
        if counts is None:
            return
        out["num_nodes"] = next(made)
        out["num_nodes"].numpy()[:] = counts
        out["batch"] = next(made)
        out["batch"].numpy()[:] = np.repeat(np.arange(size, dtype=np.int64), counts)
        # Each item's first node in the batch, added to its edges' endpoints. In numpy:
        # torch.repeat_interleave (and torch's elementwise ops on large tensors) run an
        # OpenMP parallel region, after which torch's OpenMP threads spin for a while,
        # taking a core from the threads decoding the next batches and from the model.
        first_node = np.zeros(size, dtype=np.int64)
        np.cumsum(counts[:-1], out=first_node[1:])
        edge_index = next(made, None)
        for row, (group, array) in enumerate(present):
            offset = np.repeat(first_node, np.asarray(rows[group], dtype=np.int64))
            ends = out[group][array].numpy()
            if edge_index is None:
                out[group][array] = torch.from_numpy(np.add(ends, offset, dtype=np.int64))
                continue
            # edge_index and the per-group endpoint arrays are views of one storage.
            np.add(ends, offset, out=edge_index[row].numpy())
            out[group][array] = edge_index[row]
        if edge_index is not None and len(present) == 2:
            out["edge_index"] = edge_index

    def _node_counts(self, out: Mapping[str, Any], rows: Mapping[str, np.ndarray]) -> Any:
        """Nodes of each item (int64 ``[B]``): the ``num_nodes`` array's values when there
        is one, else the row counts of ``node_group``; ``None`` without either."""
        torch = require_torch()
        if self.num_nodes is not None:
            group, array = self.num_nodes
            values = out.get(group, {}).get(array)
            if isinstance(values, torch.Tensor) and values.dim() == 1:
                return values.numpy().astype(np.int64)
        if self.node_group in rows:
            return np.asarray(rows[self.node_group], dtype=np.int64)
        return None


def size_class(numel: int) -> int:
    """Elements to allocate for a request of ``numel``: the next power of two.

    Batch sizes vary with the items drawn; a buffer of the next size class serves every
    later batch up to twice as large. Its pages past what a batch fills are never touched,
    so the rounding costs address space, not memory.
    """
    return 1 << max(0, numel - 1).bit_length()


def _tensor_kind(dtype: np.dtype) -> bool:
    """Whether torch batches arrays of ``dtype`` as they are (not unsigned integers wider
    than a byte, which it has few kernels for, nor strings)."""
    return dtype.kind in "biufc" and not (dtype.kind == "u" and dtype.itemsize > 1)


class BatchAllocator:
    """Allocates a batch's arrays as tensors (see ``DatasetReader.read_items``).

    Dtypes that torch batches differently (unsigned integers wider than a byte, strings)
    get plain numpy buffers, which the collate function then converts as usual.

    Parameters
    ----------
    make
        ``make(shape, dtype) -> tensor`` gives each tensor (the worker processes of
        :class:`cadstore.dataset.training.BatchLoader` pass their pool's). By default the
        reader announces the whole batch first (:meth:`reserve`) and its tensors are views
        of one buffer (:func:`batch_tensors`; one shared-memory segment in a
        ``DataLoader`` worker).
    block
        ``block(nbytes) -> uint8 tensor`` gives that one buffer instead (the in-process
        loader passes its pool's :meth:`~cadstore.dataset.training.BufferPool.take_block`,
        so that a batch takes one reused buffer, not one per array).
    """

    def __init__(
        self,
        make: Callable[[tuple[int, ...], np.dtype], Any] | None = None,
        block: Callable[[int], Any] | None = None,
    ) -> None:
        if make is not None and block is not None:
            raise ValueError("give BatchAllocator make or block, not both")
        self.tensors: dict[tuple[str, str], Any] = {}
        self.make = make
        self.block = block
        self._reserved: dict[tuple[str, str], tuple[tuple[int, ...], np.dtype, Any]] = {}

    def reserve(self, specs: Sequence[tuple[str, str, tuple[int, ...], np.dtype]]) -> None:
        """Allocate every array of a batch, ``(group, array, shape, dtype)`` each, at once.

        ``DatasetReader.read_items`` calls this before it asks for the first buffer. The
        tensors are views of one buffer: each tensor a ``DataLoader`` worker sends in a
        shared-memory segment of its own costs a segment created, a file descriptor passed
        and a mapping made in the main process. Nothing is reserved with a ``make`` of its
        own (its buffers are reused from batch to batch).
        """
        if self.make is not None:
            return
        wanted = [(g, a, tuple(s), np.dtype(d)) for g, a, s, d in specs if _tensor_kind(d)]
        tensors = batch_tensors([(shape, dtype) for *_, shape, dtype in wanted], self.block)
        self._reserved = {
            (group, array): (shape, dtype, tensor)
            for (group, array, shape, dtype), tensor in zip(wanted, tensors, strict=True)
        }

    def __call__(
        self, group: str, array: str, shape: tuple[int, ...], dtype: np.dtype
    ) -> np.ndarray:
        if not _tensor_kind(dtype):
            return np.empty(shape, dtype=dtype)
        reserved = self._reserved.pop((group, array), None)
        if reserved is not None and reserved[:2] == (tuple(shape), dtype):
            tensor = reserved[2]
        elif self.block is not None:
            tensor = batch_tensors([(tuple(shape), dtype)], self.block)[0]
        else:
            tensor = (self.make or _batch_tensor)(shape, dtype)
        self.tensors[(group, array)] = tensor
        buffer: np.ndarray = tensor.numpy()
        return buffer


#: Where each tensor of a :func:`batch_tensors` buffer starts: a multiple of this many
#: bytes (a cache line, and of every dtype's size).
BATCH_ALIGNMENT = 64


@functools.cache
def _torch_dtype(dtype: np.dtype) -> Any:
    return require_torch().from_numpy(np.empty(0, dtype=dtype)).dtype


def batch_tensors(
    specs: Sequence[tuple[tuple[int, ...], np.dtype]], block: Callable[[int], Any] | None = None
) -> list[Any]:
    """Empty tensors of the ``(shape, dtype)`` of ``specs``, all views of one buffer.

    The buffer is ``block(nbytes)`` when given (a uint8 tensor: the in-process loader's
    pool lends one it reuses); otherwise, in a ``DataLoader`` worker, a shared-memory
    block the worker reuses once the training process is done with it
    (:mod:`cadstore.dataset.worker_memory`); elsewhere, ordinary memory. Every tensor a
    worker sends in a segment of its own costs a segment created and sized, a file
    descriptor passed through torch's resource sharer and a mapping made in the main
    process (``docs/benchmarks.md`` has a check of what that costs). The tensors keep the
    whole buffer alive, as views do.

    Parameters
    ----------
    specs
        Shape and numpy dtype of each tensor (dtypes torch has).
    block
        ``block(nbytes) -> uint8 tensor`` of at least ``nbytes``, starting on
        :data:`BATCH_ALIGNMENT` bytes.

    Returns
    -------
    list of torch.Tensor
        One contiguous tensor per spec, each starting on :data:`BATCH_ALIGNMENT` bytes.
    """
    torch = require_torch()
    sizes = [math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in specs]
    starts, total = [], 0
    for nbytes in sizes:
        starts.append(total)
        total += -(-nbytes // BATCH_ALIGNMENT) * BATCH_ALIGNMENT
    blocks = worker_blocks() if total and block is None else None
    if block is not None and total:
        whole = block(total)
    elif blocks is not None:
        whole = blocks.take(total)
    else:
        whole = _batch_tensor((total,), np.dtype(np.uint8))
    out = []
    for (shape, dtype), start, nbytes in zip(specs, starts, sizes, strict=True):
        like = _torch_dtype(np.dtype(dtype))
        if nbytes:
            out.append(whole[start : start + nbytes].view(like).view(shape))
        else:
            out.append(torch.empty(shape, dtype=like))
    return out


def _numeric_layout(
    values: list[Any], name: str = ""
) -> tuple[list[np.ndarray], tuple[int, ...], np.dtype, np.ndarray | None] | None:
    """How numpy values of one array concatenate over a batch.

    Returns ``(arrays, shape, dtype, counts)``: the values as arrays, the batch array's
    shape and dtype (unsigned integers wider than a byte widened to int64, as
    :func:`_to_tensor` does) and each item's row count (``None`` for per-item values,
    which are stacked). Tensors that numpy can view (:func:`_tensor_views`) are taken as
    their views; items of different dtypes make a batch of a dtype that holds them all
    (:func:`_batch_dtype`). ``None`` for anything else (other tensors, strings, items
    whose trailing dimensions differ), which :func:`_concatenate` takes as before.

    Raises
    ------
    InvalidDataError
        If a uint64 value does not fit the int64 it is widened to (``name`` is the
        array's ``group/array`` for the message).
    """
    torch = require_torch()
    arrays: list[np.ndarray] | None
    if isinstance(values[0], torch.Tensor):
        arrays = _tensor_views(values, torch)
        if arrays is None:
            return None
    else:
        arrays = [np.asarray(v) for v in values]
    first = arrays[0]
    mixed = False
    for a in arrays:
        if a.dtype != first.dtype:
            if a.dtype.kind not in "biuf":
                return None
            mixed = True
        if a.ndim != first.ndim or a.shape[1:] != first.shape[1:]:
            return None
    if first.dtype.kind not in "biuf":
        return None
    # Items of different dtypes (edited items, a custom source), or unsigned ones to widen:
    # a dtype that holds every value, as in _concatenate (torch.cat would promote int64
    # and float32 items to float32, rounding integers from 2**24).
    dtype = first.dtype if not mixed and _tensor_kind(first.dtype) else _batch_dtype(arrays, name)
    dtype = dtype.newbyteorder("=")
    if first.ndim == 0:
        return arrays, (len(arrays),), dtype, None
    counts = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    return arrays, (int(counts.sum()), *first.shape[1:]), dtype, counts


def _tensor_views(values: list[Any], torch: Any) -> list[np.ndarray] | None:
    """numpy views of ``values`` if they are all tensors that numpy can view (in CPU
    memory, outside autograd, of a dtype numpy has); else ``None``.

    Tensor items (``TorchCADDataset`` without numpy batches) are then copied into the
    batch's one buffer by numpy, like numpy items, rather than by ``torch.cat``: torch
    concatenates large tensors in an OpenMP parallel region, after which its OpenMP
    threads spin for a while, taking a core from the training process.
    """
    views = []
    for value in values:
        if not isinstance(value, torch.Tensor) or value.requires_grad:
            return None
        try:
            views.append(value.numpy())
        except (TypeError, RuntimeError):  # not in CPU memory, or no numpy dtype (bfloat16)
            return None
    return views


def _prebuilt(
    items: list[Mapping[str, Any]], group: str, array: str, values: list[Any]
) -> tuple[Any, np.ndarray | None] | None:
    """The batch tensor ``TorchCADDataset`` already decoded ``values`` into, if any.

    Used only when every item still holds the very view it was given (the batch was not
    reordered, filtered or edited on its way here).
    """
    tensor = getattr(items, "tensors", {}).get((group, array))
    if tensor is None:
        return None
    views = items.views.get((group, array))  # type: ignore[attr-defined]
    if views is None or len(views) != len(values):
        return None
    if not all(v is w for v, w in zip(values, views, strict=True)):
        return None
    per_item = np.ndim(values[0]) == 0 if values else False
    return tensor, None if per_item else np.asarray(items.counts[group])  # type: ignore[attr-defined]


def _concatenate(values: list[Any], name: str = "") -> tuple[Any, np.ndarray | None]:
    """Concatenate one array over a batch; return it and the row count of each item.

    Items may hold numpy arrays (the fast path) or tensors. Per-item values (0-d) are
    stacked, and the row counts are ``None`` for them. numpy items of different dtypes
    make a batch of a dtype that holds them all (:func:`_batch_dtype`).

    Raises
    ------
    InvalidDataError
        If a uint64 value does not fit the int64 it is widened to (``name``, the array's
        ``group/array``, in the message).
    """
    torch = require_torch()
    first = values[0]
    if isinstance(first, torch.Tensor):
        if first.dim() == 0:
            return torch.stack(values), None
        return torch.cat(values), np.array([v.shape[0] for v in values], dtype=np.int64)
    arrays = [np.asarray(v) for v in values]
    if arrays[0].dtype.kind in "USO":
        return list(values), None
    dtype = _batch_dtype(arrays, name)
    if arrays[0].ndim == 0:
        return _to_tensor(np.stack(arrays, dtype=dtype), name), None
    counts = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    out = _batch_tensor((int(counts.sum()), *arrays[0].shape[1:]), dtype)
    np.concatenate(arrays, axis=0, out=out.numpy())
    return out, counts


def _batch_tensor(shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """An empty tensor for a batch array; in a DataLoader worker, in shared memory.

    A worker's batch is moved to shared memory when it is sent to the main process, which
    copies every tensor; for face-pair arrays (megabytes per item) that copy costs as much
    as decoding. Allocating the batch there first, as ``default_collate`` does, avoids it.
    """
    torch = require_torch()
    like = torch.from_numpy(np.empty(0, dtype=dtype))
    numel = int(np.prod(shape, dtype=np.int64))
    if numel and torch.utils.data.get_worker_info() is not None:
        try:
            # The same private call default_collate makes; fall back if it ever changes.
            storage = like._typed_storage()._new_shared(numel, device=like.device)
            return like.new(storage).resize_(shape)
        except (AttributeError, RuntimeError, TypeError):
            pass
    return torch.empty(shape, dtype=like.dtype)


#: The default :class:`GraphCollate` (nodes are faces, edges are ``graph/edges_*``).
collate_graphs: Callable[[list[Mapping[str, Any]]], dict[str, Any]] = GraphCollate()
