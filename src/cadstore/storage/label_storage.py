"""``LabelStorage``: the labels of one CAD item, per ML task (the specified module path).

The specified ``LabelStorage(path_for_storing, total_faces=0, total_edges=0)`` encodes
and decodes the labels of one part for each ML task (``mlTask``): one label for the whole
graph (part classification), one per face (segmentation, the graph's nodes), one per edge,
or labels on a few edges only (sparse). Each comes with its descriptions. The task
scripts of the specified system also use its constants as storage keys, e.g.
``storage.save_data(LabelStorage.GRAPH_CADENTITY, np.array([code]))``.

Here the labels of every task are one JSON document at ``path_for_storing`` (a ``.json``
file; a directory gets ``labels.json`` inside), written atomically on every save, so a
killed writer leaves the previous labels or the new ones, never a mix; it is never
pickled. Counts are checked against ``total_faces`` / ``total_edges`` when those are
given, codes must be integers and descriptions strings, one per label: anything else is
an :class:`~cadstore.errors.InvalidDataError` naming the task, and a task that was never
saved is a :class:`~cadstore.errors.KeyNotFoundError` naming it and the file.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Sequence
from typing import Any, Final

from cadstore.errors import CorruptStoreError, InvalidDataError, KeyNotFoundError
from cadstore.format.jsoncodec import parse_document
from cadstore.io.location import Location, resolve
from cadstore.io.publish import write_bytes_atomic

__all__ = ["LabelStorage"]

_FILE_NAME: Final = "labels.json"


def _codes(values: Any, task: str, what: str) -> list[int]:
    try:
        return [operator.index(v) for v in list(values)]
    except TypeError:
        raise InvalidDataError(f"labels of task {task!r}: {what} must be integers") from None


def _texts(values: Any, count: int, task: str) -> list[str]:
    texts = list(values)
    if len(texts) != count or not all(isinstance(t, str) for t in texts):
        raise InvalidDataError(
            f"labels of task {task!r}: expected {count} description string(s), one per label, "
            f"got {len(texts)}"
        )
    return texts


class LabelStorage:
    """The labels of one item for each ML task, saved as JSON at ``path_for_storing``.

    Parameters
    ----------
    path_for_storing
        The JSON file (or a directory, which gets ``labels.json``); created on the first
        save, read if it exists.
    total_faces
        The item's number of faces: per-face labels must have this many (0: not checked).
    total_edges
        The item's number of edges: per-edge labels must have this many (0: not checked).

    Attributes
    ----------
    GRAPH_CADENTITY, FACE_CADENTITY, EDGE_CADENTITY
        The entity names :meth:`load_cadentity` returns, which the specified task scripts
        also use as storage keys (``storage.save_data(LabelStorage.GRAPH_CADENTITY, ...)``):
        ``"part_label"`` (one per item, its own merged group), ``"face_labels"`` and
        ``"edge_labels"`` (one per face and per co-edge, merged with the ``faces`` and
        ``edges`` groups by their names).
    """

    GRAPH_CADENTITY: Final = "part_label"
    FACE_CADENTITY: Final = "face_labels"
    EDGE_CADENTITY: Final = "edge_labels"

    def __init__(
        self, path_for_storing: str | os.PathLike[str], total_faces: int = 0, total_edges: int = 0
    ) -> None:
        location = resolve(path_for_storing)
        if location.isdir():
            location = location.child(_FILE_NAME)
        self._location: Location = location
        self.total_faces = operator.index(total_faces)
        self.total_edges = operator.index(total_edges)

    @property
    def path(self) -> str:
        """The JSON file holding the labels."""
        return self._location.path

    # ------------------------------------------------------------------ file
    def _read(self) -> dict[str, Any]:
        if not self._location.isfile():
            return {}
        try:
            document = parse_document(self._location.read_bytes(), strict=True)
        except ValueError as exc:
            raise CorruptStoreError(self._location.path, f"not a label file: {exc}") from None
        if not isinstance(document, dict) or not all(
            isinstance(v, dict) for v in document.values()
        ):
            raise CorruptStoreError(self._location.path, "not a label file: {task: {...}}")
        return document

    def _save(self, task: str, entry: dict[str, Any]) -> None:
        if not isinstance(task, str) or not task:
            raise InvalidDataError(f"mlTask must be a non-empty string, got {task!r}")
        document = self._read()
        document[task] = entry
        if not self._location.remote:
            os.makedirs(os.path.dirname(os.path.abspath(self._location.path)), exist_ok=True)
        write_bytes_atomic(self._location, json.dumps(document, indent=1).encode("utf-8"))

    def _entry(self, task: str, *kinds: str) -> dict[str, Any]:
        entry: dict[str, Any] | None = self._read().get(task)
        if entry is None or not isinstance(entry, dict) or entry.get("entity") not in kinds:
            raise KeyNotFoundError(
                task, f"no {' or '.join(kinds)} labels for task {task!r} in {self._location.path}"
            )
        return entry

    def _stored(self, task: str, entry: dict[str, Any], field: str) -> list[Any]:
        """Field ``codes``, ``indices`` (integers) or ``texts`` (strings) of a stored entry,
        checked: the file may have been written by hand or by another tool."""
        values = entry.get(field)
        strings = field == "texts"
        if not isinstance(values, list) or not all(
            isinstance(v, str) if strings else isinstance(v, int) and not isinstance(v, bool)
            for v in values
        ):
            kind = "strings" if strings else "integers"
            raise CorruptStoreError(
                self._location.path, f"task {task!r}: {field!r} is not a list of {kind}"
            )
        return values

    def _labels(
        self, task: str, entry: dict[str, Any], single: bool = False
    ) -> tuple[list[int], list[str]]:
        """The codes and descriptions of a stored entry, one description per code (one
        code with ``single``)."""
        codes, texts = self._stored(task, entry, "codes"), self._stored(task, entry, "texts")
        if len(texts) != len(codes) or (single and len(codes) != 1):
            want = "one code and one description" if single else "one description per code"
            raise CorruptStoreError(
                self._location.path,
                f"task {task!r}: {len(codes)} code(s) and {len(texts)} description(s), "
                f"where {want} belong",
            )
        return codes, texts

    def _check_count(self, task: str, count: int, total: int, what: str) -> None:
        if total and count != total:
            raise InvalidDataError(
                f"labels of task {task!r}: {count} {what} label(s) for {total} {what}s"
            )

    # ------------------------------------------------------------------ graph
    def save_graph_label(self, mlTask: str, graphLabel: int, graphLabelDescription: str) -> None:
        """Save the label code and description of the whole part for ``mlTask``."""
        [code] = _codes([graphLabel], mlTask, "the graph label")
        [text] = _texts([graphLabelDescription], 1, mlTask)
        self._save(mlTask, {"entity": self.GRAPH_CADENTITY, "codes": [code], "texts": [text]})

    def load_graph_label(self, mlTask: str) -> tuple[int, str]:
        """Return ``(code, description)`` of the part's label for ``mlTask``."""
        entry = self._entry(mlTask, self.GRAPH_CADENTITY)
        codes, texts = self._labels(mlTask, entry, single=True)
        return codes[0], texts[0]

    # ------------------------------------------------------------------ faces (nodes)
    def save_graph_node_label(
        self,
        mlTask: str,
        faceLabels: Sequence[int],
        faceLabelDescriptions: Sequence[str],
    ) -> None:
        """Save one label code and description per face for ``mlTask``."""
        codes = _codes(faceLabels, mlTask, "face labels")
        self._check_count(mlTask, len(codes), self.total_faces, "face")
        texts = _texts(faceLabelDescriptions, len(codes), mlTask)
        self._save(mlTask, {"entity": self.FACE_CADENTITY, "codes": codes, "texts": texts})

    def load_graph_nodes_labels(self, mlTask: str) -> tuple[list[int], list[str]]:
        """Return the face label codes and descriptions of ``mlTask``."""
        entry = self._entry(mlTask, self.FACE_CADENTITY)
        return self._labels(mlTask, entry)

    # ------------------------------------------------------------------ edges
    def save_graph_edge_label(
        self,
        mlTask: str,
        edgeLabels: Sequence[int],
        edgeLabelDescriptions: Sequence[str],
    ) -> None:
        """Save one label code and description per edge for ``mlTask``."""
        codes = _codes(edgeLabels, mlTask, "edge labels")
        self._check_count(mlTask, len(codes), self.total_edges, "edge")
        texts = _texts(edgeLabelDescriptions, len(codes), mlTask)
        self._save(mlTask, {"entity": self.EDGE_CADENTITY, "codes": codes, "texts": texts})

    def load_graph_edges_labels(self, mlTask: str) -> tuple[list[int], list[str]]:
        """Return the edge label codes and descriptions of ``mlTask``."""
        entry = self._entry(mlTask, self.EDGE_CADENTITY)
        return self._labels(mlTask, entry)

    def save_sparse_graph_edge_label(
        self,
        mlTask: str,
        edgeIndices: Sequence[int],
        edgeLabels: Sequence[int],
        edgeLabelDescriptions: Sequence[str] | None = None,
    ) -> None:
        """Save labels on some edges only: their indices, codes and optional descriptions."""
        indices = _codes(edgeIndices, mlTask, "edge indices")
        codes = _codes(edgeLabels, mlTask, "edge labels")
        if len(indices) != len(codes):
            raise InvalidDataError(
                f"labels of task {mlTask!r}: {len(indices)} edge indices for {len(codes)} labels"
            )
        bad = [i for i in indices if i < 0 or (self.total_edges and i >= self.total_edges)]
        if bad:
            raise InvalidDataError(
                f"labels of task {mlTask!r}: edge indices {bad[:5]} out of range "
                f"(the item has {self.total_edges or 'an unknown number of'} edges)"
            )
        texts = (
            None
            if edgeLabelDescriptions is None
            else _texts(edgeLabelDescriptions, len(codes), mlTask)
        )
        entry = {"entity": "sparse_" + self.EDGE_CADENTITY, "indices": indices, "codes": codes}
        self._save(mlTask, {**entry, "texts": texts})

    def load_sparse_graph_edge_label(
        self,
        mlTask: str,
    ) -> tuple[list[int], list[int], list[str] | None]:
        """Return ``(edge indices, codes, descriptions or None)`` of ``mlTask``."""
        entry = self._entry(mlTask, "sparse_" + self.EDGE_CADENTITY)
        indices = self._stored(mlTask, entry, "indices")
        if entry.get("texts") is None:
            codes: list[int] = self._stored(mlTask, entry, "codes")
            texts = None
        else:
            codes, texts = self._labels(mlTask, entry)
        if len(indices) != len(codes):
            raise CorruptStoreError(
                self._location.path,
                f"task {mlTask!r}: {len(indices)} edge indices for {len(codes)} codes",
            )
        return list(indices), list(codes), texts

    # ------------------------------------------------------------------ entities
    def load_cadentity(self, mlTask: str) -> str:
        """Return the CAD entity ``mlTask`` labels: one of the ``*_CADENTITY`` names."""
        entry = self._entry(
            mlTask,
            self.GRAPH_CADENTITY,
            self.FACE_CADENTITY,
            self.EDGE_CADENTITY,
            "sparse_" + self.EDGE_CADENTITY,
        )
        return str(entry["entity"]).removeprefix("sparse_")

    def load_entity(self, mlTask: str) -> str:
        """Return how ``mlTask`` is labelled: the entity, ``sparse_edge_labels`` for sparse."""
        return str(
            self._entry(
                mlTask,
                self.GRAPH_CADENTITY,
                self.FACE_CADENTITY,
                self.EDGE_CADENTITY,
                "sparse_" + self.EDGE_CADENTITY,
            )["entity"]
        )

    def __repr__(self) -> str:
        return f"<LabelStorage {self._location.path!r}>"
