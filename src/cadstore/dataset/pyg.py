"""PyTorch Geometric batches straight from a merged dataset.

The specified system trains on per-item ``graph_data/<name>.pt`` files, written beside the
dataset by a separate conversion step. cadstore reads the dataset itself:
:class:`PygCollate` turns a batch of dataset items into one
:class:`torch_geometric.data.Batch` (the faces are the nodes, ``graph/edges_*`` the edges,
``edges`` the edge attributes, the face-pair arrays batched attributes), built directly
from the concatenated arrays :class:`~cadstore.dataset.torch_support.GraphCollate` makes,
rather than through one ``Data`` object per item, so it costs little more than the plain
batch. ``Batch.to_data_list()`` gives each item's ``Data`` back.

Needs the ``pyg`` extra (``torch_geometric``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cadstore.dataset.torch_support import GraphCollate, require_torch

__all__ = ["PygCollate", "require_pyg"]


def require_pyg() -> Any:
    """Import ``torch_geometric``, or say which extra installs it."""
    try:
        import torch_geometric
    except ImportError as exc:
        raise ImportError(
            "PyTorch Geometric batches need torch_geometric: pip install 'cadstore[pyg]'"
        ) from exc
    return torch_geometric


def _names(names: Sequence[str] | str | None) -> list[str] | None:
    """The array names given, as a list: one name may be a string (a string is iterable,
    and its characters were taken for names)."""
    if names is None:
        return None
    return [names] if isinstance(names, str) else list(names)


class PygCollate:
    """Collate dataset items into a ``torch_geometric.data.Batch``.

    Parameters
    ----------
    node_arrays
        Arrays of ``node_group`` that make the node features ``x`` (each flattened to one
        row per node, in this order, as float32). Default: every numeric array of the
        group but its ``*_indices``.
    edge_arrays
        Arrays of ``edge_group`` that make ``edge_attr`` (one row per graph edge: in a
        cadstore dataset the B-rep edges and the graph's edges correspond one to one).
        Default: every numeric array of the group but its ``*_indices``; ``()`` for none.
    graph_label
        The label column (of the loader's ``labels``) that becomes ``y``, one per graph.
        Default: the first integer label column, if any.
    node_label
        An array of ``node_group`` that becomes ``node_y``, one per node (face labels for
        segmentation), if given.
    pair_arrays
        Arrays of ``pair_group`` (the face-pair histograms, ``N x N`` rows per item) added
        as batched attributes under their own names, concatenated over the batch. Default:
        all those read; ``()`` for none (a loader made with ``groups=["faces", "edges",
        "graph"]`` does not read them at all, which is much faster).
        Each of the three lists may be one name, given as a string.
    node_group, edge_group, pair_group
        The dataset's groups of faces, edges and face pairs.
    """

    def __init__(
        self,
        node_arrays: Sequence[str] | str | None = None,
        edge_arrays: Sequence[str] | str | None = None,
        graph_label: str | None = None,
        node_label: str | None = None,
        pair_arrays: Sequence[str] | str | None = None,
        *,
        node_group: str = "faces",
        edge_group: str = "edges",
        pair_group: str = "faceface",
    ) -> None:
        self.node_arrays = _names(node_arrays)
        self.edge_arrays = _names(edge_arrays)
        self.graph_label = graph_label
        self.node_label = node_label
        self.pair_arrays = _names(pair_arrays)
        self.node_group = node_group
        self.edge_group = edge_group
        self.pair_group = pair_group
        self.graphs = GraphCollate(node_group=node_group)

    def __repr__(self) -> str:
        return (
            f"PygCollate(node_arrays={self.node_arrays!r}, edge_arrays={self.edge_arrays!r}, "
            f"graph_label={self.graph_label!r}, node_label={self.node_label!r}, "
            f"pair_arrays={self.pair_arrays!r})"
        )

    def __call__(self, items: list[Mapping[str, Any]]) -> Any:
        """Collate a batch of items (as the dataset of ``to_torch_with_collate`` gives
        them) into a ``Batch``."""
        return self.from_collated(self.graphs(items))

    def from_collated(self, out: Mapping[str, Any]) -> Any:
        """The ``Batch`` of a batch :class:`GraphCollate` already made."""
        torch = require_torch()
        Batch = require_pyg().data.Batch
        ptr = out["ptr"]
        size = len(out["file_id_code"])
        node_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), out["num_nodes"].cumsum(0)])
        nodes = out.get(self.node_group, {})
        attrs: dict[str, Any] = {
            "x": _features(nodes, self.node_arrays, int(node_ptr[-1])),
            "edge_index": out["edge_index"],
            "batch": out["batch"],
            "ptr": node_ptr,
            "file_id_code": out["file_id_code"],
            "name": out["name"],
        }
        counts = torch.arange(size + 1)
        slices: dict[str, Any] = {
            "x": node_ptr,
            "edge_index": ptr["graph"],
            "file_id_code": counts,
            "name": counts,
        }
        increments: dict[str, Any] = {
            "x": torch.zeros(size, dtype=torch.int64),
            "edge_index": node_ptr[:-1],
        }
        if self.edge_arrays != [] and self.edge_group in out:
            n_edges = int(ptr["graph"][-1])
            attrs["edge_attr"] = _features(out[self.edge_group], self.edge_arrays, n_edges)
            slices["edge_attr"] = ptr["graph"]
        label = self._graph_label(out.get("labels", {}))
        if label is not None:
            attrs["y"] = label
            slices["y"] = counts
        if self.node_label is not None:
            attrs["node_y"] = nodes[self.node_label]
            slices["node_y"] = node_ptr
        pairs = out.get(self.pair_group, {})
        for array in self.pair_arrays if self.pair_arrays is not None else list(pairs):
            attrs[array] = pairs[array]
            slices[array] = ptr[self.pair_group]
        for key in attrs:
            increments.setdefault(key, torch.zeros(size, dtype=torch.int64))
        increments.pop("batch")
        increments.pop("ptr")
        batch = Batch(**attrs)
        # What Batch.from_data_list records, so that to_data_list() and indexing work.
        batch._num_graphs = size
        batch._slice_dict = slices
        batch._inc_dict = {k: v for k, v in increments.items() if k in slices}
        return batch

    def _graph_label(self, labels: Mapping[str, Any]) -> Any:
        torch = require_torch()
        if self.graph_label is not None:
            if self.graph_label not in labels:
                raise KeyError(
                    f"graph_label {self.graph_label!r} is not a label of this loader "
                    f"(labels: {sorted(labels)})"
                )
            return labels[self.graph_label]
        for value in labels.values():
            if isinstance(value, torch.Tensor) and not value.is_floating_point():
                return value
        return None


def _features(group: Mapping[str, Any], names: Sequence[str] | None, rows: int) -> Any:
    """One float32 row per node (or edge): the chosen arrays, each flattened, side by side.

    Filled with numpy into one new array: torch's own concatenation starts its intra-op
    threads, which on a machine whose cores are decoding the next batches cost ten times
    the copy itself.
    """
    torch = require_torch()
    if names is None:
        names = [
            name
            for name, value in group.items()
            if isinstance(value, torch.Tensor)
            and not name.endswith("_indices")
            and value.dim() >= 1
            and value.shape[0] == rows
        ]
    columns = []
    for name in names:
        if name not in group:
            raise KeyError(f"{name!r} is not an array of this group (arrays: {sorted(group)})")
        values = np.asarray(group[name])
        # Not reshape(rows, -1): with no rows (a batch of items without edges) numpy
        # cannot infer the width.
        columns.append(values.reshape(rows, math.prod(values.shape[1:])))
    out = np.empty((rows, sum(c.shape[1] for c in columns)), dtype=np.float32)
    start = 0
    for column in columns:
        out[:, start : start + column.shape[1]] = column
        start += column.shape[1]
    return torch.from_numpy(out)
