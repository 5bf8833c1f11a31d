"""``MemoryStorage``: everything in two Python dicts, for tests and prototypes."""

from __future__ import annotations

import copy
import sys
from typing import Any

import numpy as np

from cadstore.storage.base import NodeKind, NodeStorage
from cadstore.storage.values import Node, iter_leaves

__all__ = ["MemoryStorage"]


class MemoryStorage(NodeStorage):
    """Keep data and metadata in RAM.

    Data lives in ``self._data`` (a nested dict of nodes) and metadata in
    ``self._metadata``, as the specified module describes. Saved arrays are copied and
    loaded values are copies, so neither the caller's later changes nor changes to a loaded
    value alter what is stored, just as with a storage on disk.

    ``close()`` clears everything; ``compress_store()`` returns 0.

    Examples
    --------
    >>> import numpy as np
    >>> storage = MemoryStorage()
    >>> storage.save_data("face_areas", np.array([1.5, 2.3, 4.1]))
    >>> storage.get_keys()
    ['face_areas']
    """

    format_name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._data: dict[str, Any] = {}
        self._open_metadata()

    # docstrings of the primitives are inherited from NodeStorage
    def _walk(self, key: str) -> Node:
        node: Node = self._data
        for part in key.split("/"):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(key)
            node = node[part]
        return node

    def _get_node(self, key: str) -> Node:
        return _copy_node(self._walk(key))

    def _put_node(self, key: str, node: Node) -> None:
        parts = key.split("/")
        parent = self._data
        for part in parts[:-1]:
            parent = parent.setdefault(part, {})
        parent[parts[-1]] = node

    def _delete_node(self, key: str) -> None:
        parts = key.split("/")
        parent = self._walk("/".join(parts[:-1])) if len(parts) > 1 else self._data
        if not isinstance(parent, dict) or parts[-1] not in parent:
            raise KeyError(key)
        del parent[parts[-1]]

    def _node_kind(self, key: str) -> NodeKind | None:
        try:
            node = self._walk(key)
        except KeyError:
            return None
        return "group" if isinstance(node, dict) else "leaf"

    def _top_level_keys(self) -> list[str]:
        return list(self._data)

    def _stored_nbytes(self, key: str) -> int:
        # The specified module approximates memory use with sys.getsizeof; for arrays that
        # counts the buffer only when the array owns it, which ours always do (copies).
        return sum(sys.getsizeof(leaf) for _, leaf in iter_leaves(self._walk(key)))

    def _read_metadata_document(self) -> dict[str, Any]:
        return {}

    def _write_metadata_document(self, doc: dict[str, Any]) -> None:
        """Nothing to persist: ``self._metadata`` is the storage."""

    def get_file_path(self, data_key: str) -> str:
        """Return a message: in-memory data has no file path.

        Parameters
        ----------
        data_key
            The data key.
        """
        self._check_open()
        return f"In-memory storage: No file path for key '{data_key}'"

    def _close(self) -> None:
        self._data.clear()
        self._metadata.clear()

    def _describe(self) -> str:
        return f"keys={len(self._data)}" if not self._closed else ""


def _copy_node(node: Node) -> Node:
    if isinstance(node, dict):
        return {k: _copy_node(v) for k, v in node.items()}
    if isinstance(node, np.ndarray):
        return node.copy()
    if isinstance(node, list):
        return list(node)
    return copy.copy(node)
