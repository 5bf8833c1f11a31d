"""The tree of an item, dataset or JSON store: what ``cadstore inspect`` shows.

:func:`hierarchy_nodes` lists the groups and arrays of a Zarr hierarchy (an item or a
dataset) with their layout (shape, dtype, dims, chunks, codecs) and sizes (raw, stored,
ratio); :func:`storage_nodes` does the same for a storage without a hierarchy (a JSON
store), from its files. Groups carry the totals of the arrays below them whose sizes are
known, so their ratio compares like with like.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from cadstore.format.hierarchy import ReadHierarchy
    from cadstore.storage.base import DataStorage

__all__ = [
    "NodeInfo",
    "hierarchy_nodes",
    "iter_leaves",
    "leaf_dtype_shape",
    "sized_totals",
    "storage_nodes",
]


@dataclass
class NodeInfo:
    """One group or array of a store, as ``inspect`` shows it.

    Attributes
    ----------
    path
        ``/``-separated path from the root.
    type
        ``"group"`` or ``"array"``.
    depth
        Nesting level (0 at the root).
    shape, dtype, dims, chunks, codecs
        Array layout (``None`` where unknown or for groups).
    stored_bytes
        Bytes the node's chunks occupy on disk (``None`` where not separable).
    raw_bytes
        Uncompressed bytes (``None`` for variable-length strings); for a group, the sum
        over the arrays below it whose size is known.
    sized_stored_bytes
        For a group, the stored bytes of the arrays counted in ``raw_bytes``, so that the
        ratio compares like with like.
    attributes
        Zarr attributes (for groups: ``primary_dimension`` and friends).
    """

    path: str
    type: Literal["group", "array"]
    depth: int
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    dims: tuple[str, ...] | None = None
    chunks: tuple[int, ...] | None = None
    codecs: list[str] | None = None
    stored_bytes: int | None = None
    raw_bytes: int | None = None
    sized_stored_bytes: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The last path segment."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def ratio(self) -> float | None:
        """Compression ratio, raw over stored bytes (``None`` when either is unknown)."""
        stored = self.stored_bytes if self.sized_stored_bytes is None else self.sized_stored_bytes
        if not self.raw_bytes or not stored:
            return None
        return self.raw_bytes / stored

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (``--json`` output)."""
        doc: dict[str, Any] = {"path": self.path, "type": self.type}
        if self.type == "array":
            doc.update(
                shape=None if self.shape is None else list(self.shape),
                dtype=self.dtype,
                dims=None if self.dims is None else list(self.dims),
                chunks=None if self.chunks is None else list(self.chunks),
                codecs=self.codecs,
            )
        doc.update(
            stored_bytes=self.stored_bytes,
            raw_bytes=self.raw_bytes,
            ratio=None if self.ratio is None else round(self.ratio, 4),
            attributes=self.attributes,
        )
        return doc


def _codec_names(codecs: Iterable[Mapping[str, Any]]) -> list[str]:
    names = []
    for codec in codecs:
        # v3 codecs carry "name"; v2 compressors and filters carry "id".
        name = codec.get("name") or codec.get("id")
        names.append(str(name) if name is not None else "?")
    return names


def sized_totals(arrays: Iterable[NodeInfo]) -> tuple[int | None, int | None]:
    """Return ``(raw, stored)`` over the arrays whose raw and stored sizes are both known.

    Variable-length strings have no fixed raw size; leaving them out of both sums keeps
    the ratio of the rest meaningful.

    Parameters
    ----------
    arrays
        Array nodes.

    Returns
    -------
    tuple
        ``(None, None)`` when no array qualifies.
    """
    sized = [a for a in arrays if a.raw_bytes is not None and a.stored_bytes is not None]
    if not sized:
        return None, None
    return sum(a.raw_bytes or 0 for a in sized), sum(a.stored_bytes or 0 for a in sized)


def _fill_group_totals(nodes: list[NodeInfo]) -> None:
    for group in (n for n in nodes if n.type == "group"):
        prefix = group.path + "/"
        below = [n for n in nodes if n.type == "array" and n.path.startswith(prefix)]
        group.raw_bytes, group.sized_stored_bytes = sized_totals(below)


def hierarchy_nodes(hierarchy: ReadHierarchy) -> list[NodeInfo]:
    """Return the groups and arrays of a Zarr hierarchy, depth first, in stored order.

    Parameters
    ----------
    hierarchy
        An item's or a dataset's hierarchy.

    Returns
    -------
    list of NodeInfo
        Parents come before their children.
    """
    nodes: list[NodeInfo] = []

    def visit(group: str, depth: int) -> None:
        for name in hierarchy.children(group):
            path = f"{group}/{name}" if group else name
            if path in hierarchy.arrays:
                meta = hierarchy.meta(path)
                dtype = meta.dtype
                raw = (
                    int(np.prod(meta.shape, dtype=np.int64)) * dtype.itemsize
                    if isinstance(dtype, np.dtype)
                    else None
                )
                nodes.append(
                    NodeInfo(
                        path,
                        "array",
                        depth,
                        shape=tuple(meta.shape),
                        dtype=str(dtype),
                        dims=None if meta.dims is None else tuple(meta.dims),
                        chunks=tuple(meta.chunks),
                        codecs=_codec_names([*meta.filters, *meta.codecs]),
                        stored_bytes=hierarchy.stored_nbytes(path),
                        raw_bytes=raw,
                        attributes=dict(meta.attributes),
                    )
                )
            else:
                nodes.append(
                    NodeInfo(
                        path,
                        "group",
                        depth,
                        stored_bytes=hierarchy.stored_nbytes(path),
                        attributes=dict(hierarchy.group_attributes.get(path, {})),
                    )
                )
                visit(path, depth + 1)

    visit("", 0)
    _fill_group_totals(nodes)
    return nodes


def iter_leaves(storage: DataStorage) -> Iterator[tuple[str, Any]]:
    """Yield ``(key, value)`` for every leaf of a storage, groups flattened with ``/``.

    Parameters
    ----------
    storage
        An open storage.
    """

    def walk(key: str, value: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(value, Mapping):
            for name, child in value.items():
                yield from walk(f"{key}/{name}", child)
        else:
            yield key, value

    for top in storage.get_keys():
        yield from walk(top, storage.load_data(top))


def leaf_dtype_shape(value: Any) -> tuple[str, tuple[int, ...]]:
    """Return the dtype name and shape of a stored leaf, whatever its Python type.

    Parameters
    ----------
    value
        An array, numpy or Python scalar, ``str`` or list of ``str``.

    Returns
    -------
    tuple
        ``(dtype, shape)``; strings report ``"str"``.
    """
    if isinstance(value, np.ndarray | np.generic):
        dtype = "str" if value.dtype.kind in "UO" else str(value.dtype)
        return dtype, tuple(value.shape)
    if isinstance(value, str):
        return "str", ()
    if isinstance(value, list):
        return "str", (len(value),)
    return type(value).__name__, ()


def _leaf_raw_bytes(value: Any) -> int | None:
    if isinstance(value, np.ndarray | np.generic):
        return None if value.dtype.kind in "UO" else int(value.nbytes)
    if isinstance(value, bool | int | float | complex):
        return int(np.asarray(value).nbytes)
    return None


def storage_nodes(storage: DataStorage) -> list[NodeInfo]:
    """Return the groups and leaves of a storage that has no Zarr hierarchy (JSON stores).

    A leaf's stored size is the size of its file when the file holds that leaf alone;
    leaves saved together inside one dict file share it, so only their group has a size.

    Parameters
    ----------
    storage
        An open storage whose ``get_file_path`` names real files.

    Returns
    -------
    list of NodeInfo
        Parents come before their children.
    """
    leaves = list(iter_leaves(storage))
    files = {key: storage.get_file_path(key) for key, _ in leaves}
    users: dict[str, int] = {}
    for file in files.values():
        users[file] = users.get(file, 0) + 1

    def size(file: str) -> int | None:
        return os.path.getsize(file) if os.path.isfile(file) else None

    nodes: list[NodeInfo] = []
    seen_groups: set[str] = set()
    for key, value in leaves:
        parts = key.split("/")
        for depth in range(len(parts) - 1):
            group = "/".join(parts[: depth + 1])
            if group not in seen_groups:
                seen_groups.add(group)
                group_files = {f for k, f in files.items() if k.startswith(group + "/")}
                sizes = [size(f) for f in group_files]
                nodes.append(
                    NodeInfo(
                        group,
                        "group",
                        depth,
                        stored_bytes=None if None in sizes else sum(s or 0 for s in sizes),
                    )
                )
        dtype, shape = leaf_dtype_shape(value)
        file = files[key]
        nodes.append(
            NodeInfo(
                key,
                "array",
                len(parts) - 1,
                shape=shape,
                dtype=dtype,
                stored_bytes=size(file) if users[file] == 1 else None,
                raw_bytes=_leaf_raw_bytes(value),
            )
        )
    _fill_group_totals(nodes)
    return nodes
