"""Per-item PyTorch Geometric ``.pt`` files, as the specified system writes them.

The specified system trains on one ``graph_data/<name>.pt`` file per item, written by its
transform tasks through ``PyGGraphStoreHandler``: ``{"data": Data(x, edge_attr,
edge_index, num_nodes), "extra": {label tensors}}``. cadstore does not need them (it trains
from the dataset: :mod:`cadstore.dataset.pyg`); these are thin adapters for code that still
reads or writes such files, with the specified method names, and
:func:`write_graph_files` writes them for every item of a dataset (each ``Data`` with every
attribute of the item's graph from ``to_pyg()``: labels and face-pair arrays too).

Loading is safe: :meth:`PyGGraphStoreHandler.load_graph` unpickles with torch's
``weights_only`` loader, which accepts tensors and the few PyG classes a graph is made of,
and refuses anything else a file might hold.
"""

from __future__ import annotations

import io
import operator
import os
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np

from cadstore.errors import (
    CorruptStoreError,
    DatasetError,
    InvalidDataError,
    StorageNotFoundError,
    UnsupportedTypeError,
)

__all__ = ["MLStorage", "PyGGraphStoreHandler", "write_graph_files"]


def _torch() -> Any:
    from cadstore.dataset.torch_support import require_torch

    return require_torch()


def _pyg() -> Any:
    from cadstore.dataset.pyg import require_pyg

    return require_pyg()


class MLStorage(ABC):
    """One item's graph being built for a file: the specified system's interface."""

    @abstractmethod
    def setup_graph(self, source_nodes: Any, target_nodes: Any, num_nodes: int) -> None:
        """Start the graph from its edge list and node count."""

    @abstractmethod
    def append_ndata(self, node_features: Any, feature_name: str, torch_type: Any = None) -> None:
        """Add a node feature (one row per node)."""

    @abstractmethod
    def append_edata(self, edge_features: Any, feature_name: str, torch_type: Any = None) -> None:
        """Add an edge feature (one row per edge)."""

    @abstractmethod
    def append_extra_data(self, extra_data: Any, feature_name: str, torch_type: Any = None) -> None:
        """Add a tensor beside the graph (labels)."""

    @abstractmethod
    def save_graph(self, filepath: str) -> None:
        """Write the graph to ``filepath``."""

    @abstractmethod
    def load_graph(self, filepath: str) -> Any:
        """Read a graph written by :meth:`save_graph`."""

    @abstractmethod
    def file_extension(self) -> str:
        """The extension of the files written."""

    @abstractmethod
    def format(self) -> str:
        """The storage format's name."""

    def concatenate_data(self, target_tensor: Any, source_tensor: Any) -> Any:
        """``target_tensor`` and ``source_tensor`` side by side (along the last axis)."""
        torch = _torch()
        return torch.cat([target_tensor, source_tensor], dim=-1)


def _tensor(values: Any, torch_type: Any, what: str, name: str) -> Any:
    torch = _torch()
    if not isinstance(values, np.ndarray | torch.Tensor):
        raise UnsupportedTypeError(
            f"{what} {name!r} must be a numpy array (or tensor), not {type(values).__name__}"
        )
    if isinstance(values, np.ndarray) and values.dtype.kind not in "biuf":
        raise InvalidDataError(f"{what} {name!r} must hold numbers, not {values.dtype}")
    dtype = torch.float if torch_type is None else torch_type
    return torch.as_tensor(values).to(dtype)


def _node_indices(values: Any, what: str, num_nodes: int) -> Any:
    """``values`` as an int64 tensor of node indices, each in ``[0, num_nodes)``."""
    torch = _torch()
    arr = values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidDataError(f"{what} must be integer node indices, not {arr.dtype}")
    if arr.ndim != 1:
        raise InvalidDataError(f"{what} must be 1-D, not of shape {arr.shape}")
    if arr.size:
        low, high = int(arr.min()), int(arr.max())
        bad = low if low < 0 else high if high >= num_nodes else None
        if bad is not None:
            raise InvalidDataError(f"{what} holds node {bad}, outside a graph of {num_nodes} nodes")
    return torch.as_tensor(arr.astype(np.int64, copy=False))


class PyGGraphStoreHandler(MLStorage):
    """An item's graph as a ``torch_geometric.data.Data``, saved as a ``.pt`` file.

    The node feature named ``"x"`` becomes ``data.x`` and the edge feature named ``"x"``
    becomes ``data.edge_attr``, as PyG names them; other features keep their names.
    """

    def __init__(self) -> None:
        self.data: Any = None
        self.extra: dict[str, Any] = {}

    def format(self) -> str:  # docstring inherited
        return "pyg"

    def file_extension(self) -> str:  # docstring inherited
        return ".pt"

    def setup_graph(self, source_nodes: Any, target_nodes: Any, num_nodes: int) -> None:
        """Start the graph from its edge list and node count.

        Raises
        ------
        InvalidDataError
            If ``num_nodes`` is not a count, or the endpoints are not 1-D integer node
            indices of one length, each in ``[0, num_nodes)``.
        """
        torch = _torch()
        try:
            nodes = operator.index(num_nodes)
        except TypeError:
            nodes = -1
        if nodes < 0:
            raise InvalidDataError(f"num_nodes must be a count of nodes, not {num_nodes!r}")
        src = _node_indices(source_nodes, "source_nodes", nodes)
        dst = _node_indices(target_nodes, "target_nodes", nodes)
        if src.shape != dst.shape:
            raise InvalidDataError("source_nodes and target_nodes must be of one length")
        self.data = _pyg().data.Data(edge_index=torch.stack([src, dst]), num_nodes=nodes)
        self.extra = {}

    def _graph(self) -> Any:
        if self.data is None:
            raise ValueError("the graph is not set up: call setup_graph() first")
        return self.data

    def append_ndata(self, node_features: Any, feature_name: str, torch_type: Any = None) -> None:
        data = self._graph()
        value = _tensor(node_features, torch_type, "node feature", feature_name)
        if value.dim() == 0 or value.shape[0] != data.num_nodes:
            rows = value.shape[0] if value.dim() else "no"
            raise InvalidDataError(
                f"node feature {feature_name!r} has {rows} rows for {data.num_nodes} nodes: "
                "it needs one row per node"
            )
        data[feature_name] = value

    def append_edata(self, edge_features: Any, feature_name: str, torch_type: Any = None) -> None:
        data = self._graph()
        value = _tensor(edge_features, torch_type, "edge feature", feature_name)
        if value.dim() == 0 or value.shape[0] != data.edge_index.shape[1]:
            raise InvalidDataError(
                f"edge feature {feature_name!r} has {value.shape[0]} rows for "
                f"{data.edge_index.shape[1]} edges"
            )
        data["edge_attr" if feature_name == "x" else feature_name] = value

    def append_extra_data(self, extra_data: Any, feature_name: str, torch_type: Any = None) -> None:
        self.extra[feature_name] = _tensor(extra_data, torch_type, "extra data", feature_name)

    def save_graph(self, filepath: str) -> None:
        """Write ``{"data": Data, "extra": {...}}`` to ``filepath``, atomically."""
        from cadstore.io.location import resolve
        from cadstore.io.publish import write_atomic

        torch = _torch()
        payload = {"data": self._graph(), "extra": dict(self.extra)}
        write_atomic(resolve(filepath), lambda fh: torch.save(payload, fh))

    def load_graph(self, filepath: str) -> Any:
        """Read a graph file; its ``Data`` is returned and its extras kept in ``extra``.

        Raises
        ------
        StorageNotFoundError
            If there is no file at ``filepath`` (a ``FileNotFoundError`` too).
        CorruptStoreError
            If the file is damaged (its zip archive's records, or a member failing its
            CRC-32, which torch's reader does not check), holds anything but tensors and a
            PyG ``Data`` (torch's ``weights_only`` loader refuses it, so nothing in it
            runs), holds extras that are not ``{name: tensor}``, or is not a regular file
            (a folder; a pipe would block the read). The message names the file.
        """
        from cadstore.io.location import resolve

        torch = _torch()
        pyg = _pyg()
        from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
        from torch_geometric.data.storage import GlobalStorage

        shown = os.fspath(filepath)
        try:
            # Opened as cadstore opens files: a pipe or a device is refused, never read.
            with resolve(filepath).open_read() as fh:
                raw = fh.read()
        except FileNotFoundError:
            raise StorageNotFoundError(shown, "no such graph file") from None
        except IsADirectoryError:
            raise CorruptStoreError(shown, "a folder, not a graph file") from None
        try:
            raw = _verified_archive(raw)
        except _Damaged as exc:
            raise CorruptStoreError(shown, f"damaged graph file: {exc}") from None
        allowed = [pyg.data.Data, DataEdgeAttr, DataTensorAttr, GlobalStorage]
        try:
            with torch.serialization.safe_globals(allowed):
                payload = torch.load(io.BytesIO(raw), weights_only=True)
        except MemoryError:
            raise
        except Exception as exc:  # whatever damaged or foreign bytes make torch raise
            raise CorruptStoreError(
                shown, f"not a graph file cadstore can load safely ({type(exc).__name__}: {exc})"
            ) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), pyg.data.Data):
            raise CorruptStoreError(shown, 'not a {"data": Data, "extra": {...}} file')
        extra = payload.get("extra")
        extra = {} if extra is None else extra
        if not isinstance(extra, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in extra.items()
        ):
            raise CorruptStoreError(shown, 'its "extra" is not a {name: tensor} dict')
        self.data = payload["data"]
        self.extra = dict(extra)
        return self.data


class _Damaged(Exception):
    """A graph file's zip archive does not read as its own records describe it."""


def _verified_archive(raw: bytes) -> bytes:
    """The zip archive ``raw`` (torch's format since 1.6) rebuilt from its members, each
    read and checked against the CRC-32 its archive records; bytes that are not a zip
    archive at all (torch's legacy format, or no archive) as they are, for ``torch.load``.

    torch's reader takes members as the archive's records place them and checks no CRC: a
    flipped byte in a tensor loaded other values, and one in a member's attributes left
    the tensor's memory unfilled, without a word. It reads the rebuilt archive, whose
    records are zipfile's own, holding exactly the verified bytes.

    Raises
    ------
    _Damaged
        If a member fails its CRC or is compressed (torch stores members, so the rebuilt
        archive is never larger than the file), the archive's records are damaged, or a
        name repeats.
    """
    out = io.BytesIO()
    try:
        if not zipfile.is_zipfile(io.BytesIO(raw)):
            return raw
        with (
            zipfile.ZipFile(io.BytesIO(raw)) as source,
            zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as rebuilt,
        ):
            names = source.namelist()
            if len(set(names)) != len(names):
                raise _Damaged("a member name repeats")
            for info in source.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    # torch stores its members; a compressed one's size is only the
                    # file's word, and would be inflated before its CRC could refuse it.
                    raise _Damaged(f"member {info.filename!r} is compressed; torch stores them")
                rebuilt.writestr(info.filename, source.read(info))
    except _Damaged:
        raise
    except Exception as exc:  # zipfile raises many kinds on damaged bytes
        raise _Damaged(f"{type(exc).__name__}: {exc}") from None
    return out.getvalue()


def _item_graph(data: Any) -> PyGGraphStoreHandler:
    """A handler holding ``data``, one graph of a :class:`~cadstore.dataset.pyg.PygCollate`
    batch, with every attribute it has, and its label (``y``) also under
    ``extra["graph_label"]``.

    Each tensor is copied: the graphs of ``Batch.to_data_list()`` are views of the batch's
    tensors, and ``torch.save`` writes a view's whole storage, so every file held its
    whole batch.
    """
    torch = _torch()
    handler = PyGGraphStoreHandler()
    src, dst = data.edge_index
    handler.setup_graph(src, dst, data.num_nodes)
    for key, value in data.items():
        if key == "edge_index":
            continue
        if not isinstance(value, torch.Tensor):
            handler.data[key] = value  # the item's name
        elif key == "x":
            handler.append_ndata(value.clone(), "x", value.dtype)
        elif key == "edge_attr":
            handler.append_edata(value.clone(), "x", value.dtype)
        else:  # labels, face-pair arrays, file_id_code: as the batch's graph has them
            handler.data[key] = value.clone()
    if "y" in data:
        handler.append_extra_data(data.y.clone(), "graph_label", torch.long)
    return handler


def write_graph_files(
    subset: Any,
    folder: str | os.PathLike[str],
    collate_fn: Any = None,
    *,
    batch_size: int = 32,
) -> list[str]:
    """Write one ``<name>.pt`` per item of ``subset`` (a :class:`CADDataset`) into ``folder``.

    Each file holds the item's graph as :class:`PyGGraphStoreHandler` saves it: the
    ``Data`` that ``subset.to_pyg(collate_fn)`` makes of the item, with every attribute
    (``x``, ``edge_index``, ``edge_attr``, the labels ``y`` and ``node_y``, the face-pair
    arrays, ``file_id_code`` and ``name``, as ``collate_fn`` gives them) and ``num_nodes``;
    the graph label also under ``extra["graph_label"]``, as the specified system's files
    hold it. ``collate_fn`` is a :class:`~cadstore.dataset.pyg.PygCollate` (default:
    that of :meth:`~cadstore.dataset.CADDataset.to_pyg`, with every face-pair array; pass
    ``PygCollate(pair_arrays=())`` for smaller files without them). Returns the paths, in
    subset order.

    Raises
    ------
    DatasetError
        Before any file is written, if an item's name is not a plain file name (a path,
        ``..``, empty: the names come from the dataset, and such a name would write
        outside ``folder``) or two items share one name.
    ValueError
        If ``subset`` reads its items through an ``item_loader_func`` (as ``to_pyg``).
    """
    _, collate = subset.to_pyg(collate_fn)
    reader = subset.parent_dataset.item_source.reader
    seen: dict[str, int] = {}
    for code in (int(c) for c in subset.indices):
        name = str(reader.item_names[code])
        if name in ("", ".", "..") or os.path.basename(name) != name or "\\" in name:
            raise DatasetError(
                f"{reader.path}: item {code} is named {name!r}, not a plain file name; "
                "no graph file can be written for it"
            )
        if seen.setdefault(name, code) != code:
            raise DatasetError(
                f"{reader.path}: items {seen[name]} and {code} are both named {name!r}; "
                "their graph files would be one file"
            )
    os.makedirs(folder, exist_ok=True)
    paths: list[str] = []
    batches: Iterable[Any] = subset.batches(batch_size, shuffle=False, collate_fn=collate)
    for batch in batches:
        for data, name in zip(batch.to_data_list(), batch.name, strict=True):
            handler = _item_graph(data)
            path = os.path.join(os.fspath(folder), f"{name}{handler.file_extension()}")
            handler.save_graph(path)
            paths.append(path)
    return paths
