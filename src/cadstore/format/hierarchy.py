"""A Zarr hierarchy of cadstore nodes: read from a source, or built in memory and published.

:class:`ReadHierarchy` opens any v2 or v3 hierarchy in a :class:`~cadstore.io.sources.KeySource`
(consolidated or not) and returns stored leaves as the values they were saved as.
:class:`BuildHierarchy` encodes nodes as they are saved, keeps the encoded bytes in memory,
and writes each key exactly once when the item is published, so a zip never holds
duplicate entries.

How Python values map onto Zarr arrays: numeric and string arrays are stored as they are.
A value that is not an array is stored as an array plus the attribute ``cadstore_kind``
saying what to give back: ``int``, ``float``, ``bool``, ``complex`` (0-d, the Python type),
``numpy_scalar`` (0-d, the numpy scalar), ``str`` (0-d string) and ``list_str`` (1-d
strings). Readers other than cadstore see ordinary arrays.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import re
import reprlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

import numpy as np

from cadstore.errors import CadstoreError, CorruptStoreError, LimitExceededError
from cadstore.format.codecs import ChunkDecodeError
from cadstore.format.layout import free_dim_name
from cadstore.format.limits import DEFAULT_LIMITS, DecodeBudget, Limits
from cadstore.format.triangle import (
    ITEM_DIMS,
    ITEM_SHAPE,
    expand_in_place,
    item_attributes,
    item_layout,
    symmetric_upper_rows,
    triangle_count,
)
from cadstore.format.zarr_nodes import (
    ArrayMeta,
    MetadataError,
    decode_array,
    encode_array,
    encode_v3_chunks,
    parse_array_meta,
)
from cadstore.io.sources import KeySource, ZipSource, check_member_name

if TYPE_CHECKING:
    from cadstore.storage.values import Leaf, Node

__all__ = [
    "KIND_ATTRIBUTE",
    "BuildHierarchy",
    "DimsFor",
    "Hierarchy",
    "ReadHierarchy",
    "default_dims",
    "item_dim_names",
    "schema_item_dims",
    "sibling",
]

KIND_ATTRIBUTE = "cadstore_kind"
_METADATA_NAMES = frozenset(("zarr.json", ".zarray", ".zattrs", ".zgroup"))
#: The documents at a store's root besides its node's: Zarr 2's consolidated metadata and
#: a cadstore item's metadata.
_ROOT_DOCUMENTS = frozenset((".zmetadata", "metadata.json"))
#: Keys below the root that end with one of these are metadata documents.
_METADATA_SUFFIXES = tuple(f"/{name}" for name in sorted(_METADATA_NAMES))
_PY_SCALARS: dict[type, tuple[str, str]] = {
    bool: ("bool", "bool"),
    int: ("int", "int64"),
    float: ("float", "float64"),
    complex: ("complex", "complex128"),
}


def default_dims(path: str, ndim: int) -> list[str]:
    """Return the specified default dimension names, ``<path_with_underscores>_dim_<i>``."""
    return list(_default_dims(path, ndim))


@functools.lru_cache(maxsize=4096)
def _default_dims(path: str, ndim: int) -> tuple[str, ...]:
    # Every item saves the same keys: the names are made once per key and rank.
    stem = path.replace("/", "_")
    return tuple(f"{stem}_dim_{i}" for i in range(ndim))


def schema_item_dims(path: str, declared: Sequence[str]) -> list[str]:
    """Return an item array's dimension names from the ones its schema declares.

    The first dimension keeps the declared name (the group's primary dimension, ``face``
    or ``edge``: the same length for every array of the group in one item). The others
    are qualified with the array's path, ``face_discretization_component``: the schema
    declares names per group, but an item stores the arrays of several groups side by
    side in one Zarr group, where xarray needs each name to have one length, and
    ``component`` is 7 long on face samples and 6 long on edge samples. The merged
    dataset puts each group in a Zarr group of its own and keeps the declared names.
    Two arrays' qualified names may still be spelt alike (``face`` on
    ``discretization_component``, ``face_discretization`` on ``component``): the item
    tells them apart when it is published (:func:`item_dim_names`).

    Parameters
    ----------
    path
        The array's key in the item (``face_discretization``, ``graph/edges_source``).
    declared
        The dimension names the schema declares, one per axis of the stored array.
    """
    stem = path.replace("/", "_")
    return [*declared[:1], *(f"{stem}_{name}" for name in declared[1:])]


#: How :meth:`BuildHierarchy.put` names an array's dimensions: called with the array's
#: path and number of dimensions, it gives the names (:func:`schema_item_dims`,
#: :func:`default_dims`) and how many of the first are shared with other arrays (1 for a
#: declared primary dimension, 0 when every name is the array's own).
DimsFor = Callable[[str, int], tuple[list[str], int]]


def item_dim_names(
    arrays: Mapping[str, tuple[Sequence[str], int]],
    kept: Iterable[str] = (),
    carried: Mapping[str, tuple[Sequence[str], int]] | None = None,
    lengths: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, list[str]]:
    """Return the dimension names of an item's arrays, no name of one array's own given
    to another dimension.

    An item names most dimensions after their array (:func:`default_dims`,
    :func:`schema_item_dims`), but two arrays' names may be spelt alike: ``face`` on
    ``discretization_component`` and ``face_discretization`` on ``component`` both give
    ``face_discretization_component``, and the undeclared ``a_b`` and ``a/b`` both
    ``a_b_dim_0``. xarray, which reads an item's arrays together, would refuse the item
    (two lengths for one name) or take both for one dimension. A name is kept by its
    first claimant: a name in ``kept``, then a shared (primary) name, then the
    ``carried`` arrays' own names, then the arrays' own names, arrays in path order and
    each array's names in order; every later claimant takes the first free name by
    :func:`~cadstore.format.layout.free_dim_name` (``face_discretization_component_2``),
    free of every name given here or in ``kept`` and of every array's name. The
    ``carried`` arrays were stored together before: their own names give way only to a
    shared name of ``arrays`` (each such name is renamed alike in all of them, one new
    name for each length it has), not to one another's but where ``lengths`` shows one
    name with two lengths among them, which xarray refuses (an item of an older cadstore:
    ``sample`` on 4 in ``face_discretization`` and 3 in ``edge_u_grids``): the first in
    path order keeps it, and each other length takes a name of its own. A name of an
    array's own, carried or not, spelt as an array of its Zarr group (``extra_dim_0`` of
    ``extra`` beside an array ``extra_dim_0``: xarray would list that array among the
    coordinates) gives way too; a shared name never does. An item where no two claimants
    meet keeps every name as given.

    Parameters
    ----------
    arrays
        Path of each array to name -> ``(names, shared)``: its names as made when it was
        saved, of which the first ``shared`` are shared with other arrays (a declared
        primary dimension) and are never changed.
    kept
        Names that stay as they are.
    carried
        Arrays carried over from the file an item was reopened from, as ``arrays``: the
        names they were stored with, the first ``shared`` of them shared.
    lengths
        The length along each of its names of a carried array, by path (``None``, or a
        path left out: not known).

    Returns
    -------
    dict
        Path -> names, for every path in ``arrays`` and ``carried``.
    """
    carried = carried or {}
    paths = {*arrays, *carried}
    taken = set(kept) | {path.rpartition("/")[2] for path in paths}
    claimed = set(kept)
    for names, shared in arrays.values():
        taken.update(names)
        claimed.update(names[:shared])
    for names, _ in carried.values():
        taken.update(names)
    named: dict[str, list[str]] = {}
    # A carried array's own name that a new array's primary takes is renamed, the same
    # way in every carried array having it with one length (they met in the file already).
    moved: dict[tuple[str, int | None], str] = {}
    first: dict[str, int | None] = {}  # a carried own name's length in its first array
    for path in sorted(carried):
        names, shared = carried[path]
        given = list(names)
        sizes = (lengths or {}).get(path)
        if sizes is not None and len(sizes) != len(given):
            sizes = None
        for position in range(shared, len(given)):
            name = given[position]
            size = None if sizes is None else int(sizes[position])
            known = first.setdefault(name, size)
            if (
                name in claimed
                or sibling(path, name) in paths
                or (size is not None and known is not None and size != known)
            ):
                if (name, size) not in moved:
                    moved[name, size] = free_dim_name(name, taken)
                given[position] = moved[name, size]
        named[path] = given
    for given in named.values():
        claimed.update(given)
    for path in sorted(arrays):
        names, shared = arrays[path]
        given = list(names)
        for position in range(shared, len(given)):
            if given[position] in claimed or sibling(path, given[position]) in paths:
                given[position] = free_dim_name(given[position], taken)
            else:
                claimed.add(given[position])
        named[path] = given
    return named


def sibling(path: str, name: str) -> str:
    """The path of an array called ``name`` in the Zarr group of the array at ``path``.

    xarray reads a group's arrays as one dataset and lists an array spelt as a dimension
    of that group among its coordinates: an item never gives such a name to a dimension
    of an array's own (:func:`item_dim_names`).
    """
    parent = path.rpartition("/")[0]
    return f"{parent}/{name}" if parent else name


def _leaf_to_array(leaf: Leaf) -> tuple[np.ndarray, str | None]:
    if isinstance(leaf, np.ndarray):
        return leaf, None
    if isinstance(leaf, np.generic):
        return np.asarray(leaf), "numpy_scalar"
    # Python strings travel as object arrays: numpy's fixed-width "U" dtype would drop
    # trailing NUL characters.
    if isinstance(leaf, str):
        arr: np.ndarray = np.empty((), dtype=object)
        arr[()] = leaf
        return arr, "str"
    if isinstance(leaf, list):
        arr = np.empty(len(leaf), dtype=object)
        arr[:] = leaf
        return arr, "list_str"
    kind, dtype = _PY_SCALARS[type(leaf)]
    return np.asarray(leaf, dtype=dtype), kind


def _array_to_leaf(arr: np.ndarray, kind: Any) -> Leaf:
    if kind is None:
        if arr.dtype == object:
            # A numpy string array was saved: give it back with numpy's own string dtype.
            flat = arr.ravel().tolist()
            return (
                np.array(flat, dtype=str).reshape(arr.shape)
                if flat
                else np.empty(arr.shape, dtype="<U1")
            )
        return arr
    if kind == "numpy_scalar":
        return arr[()]
    if kind == "str":
        return str(arr[()])
    if kind == "list_str":
        return [str(x) for x in arr.tolist()]
    if kind in ("int", "float", "bool", "complex"):
        convert: Callable[[Any], bool | int | float | complex] = {
            "int": int,
            "float": float,
            "bool": bool,
            "complex": complex,
        }[kind]
        return convert(arr[()])
    return arr


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _without_cyclic_gc(build: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``build`` with Python's cyclic garbage collector paused.

    Loading a hierarchy of many thousand arrays creates a few objects per array, all of
    them kept; each collection the allocations trigger walks everything allocated so far,
    which made opening an item grow faster than its arrays (2.5x the time for twice the
    arrays; linear with the collector paused). Reference counting still frees everything
    as usual; the collector resumes, if it was running, when ``build`` returns or raises.
    """

    @functools.wraps(build)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not gc.isenabled():
            return build(*args, **kwargs)
        gc.disable()
        try:
            return build(*args, **kwargs)
        finally:
            gc.enable()

    return wrapper


class Hierarchy(ABC):
    """Read access shared by stored and in-memory hierarchies."""

    zarr_format: int
    limits: Limits
    location: str

    #: Whether arrays may be item arrays stored as triangles (``cadstore_shape``); a
    #: merged dataset's arrays may not (its triangles hold many items).
    item_layouts: bool = True
    #: Whether every chunk holding values was stored (a merged dataset's were): a missing
    #: one is then damage, not fill values (see :func:`~cadstore.format.zarr_nodes.
    #: decode_array`).
    complete: bool = False

    def __init__(self) -> None:
        # Array metadata, parsed on first use: opening an item to read one array should
        # not pay for validating all of them.
        self.arrays: dict[str, ArrayMeta | None] = {}
        self._raw: dict[str, tuple[Mapping[str, Any], Mapping[str, Any] | None]] = {}
        # group path -> ordered child names; the root is "".
        self.groups: dict[str, dict[str, None]] = {"": {}}
        self.group_attributes: dict[str, dict[str, Any]] = {"": {}}

    @abstractmethod
    def _chunk(self, path: str, rel: str) -> bytes | None:
        """Return the bytes of chunk ``rel`` of array ``path``."""

    @abstractmethod
    def _source_bytes(self) -> int:
        """Size of the file backing the hierarchy (for the expansion limit)."""

    @abstractmethod
    def stored_nbytes(self, path: str) -> int:
        """Return the bytes the chunks below ``path`` occupy."""

    def kind(self, path: str) -> str | None:
        """``"leaf"``, ``"group"`` or ``None``."""
        if path in self.arrays:
            return "leaf"
        if path in self.groups:
            return "group"
        return None

    def children(self, path: str) -> list[str]:
        """Names directly below group ``path``."""
        return list(self.groups.get(path, {}))

    def _link(self, path: str, *, group: bool = False) -> None:
        root = self.groups.get("")
        if root is not None and not group and "/" not in path:
            root[path] = None  # an array at the root, the common case
            return
        if group:
            self.groups.setdefault(path, {})
            self.group_attributes.setdefault(path, {})
        parts = path.split("/")
        for i in range(len(parts)):
            parent = "/".join(parts[:i])
            if parent not in self.groups:
                self.groups[parent] = {}
                self.group_attributes.setdefault(parent, {})
                self.groups["/".join(parts[: i - 1]) if i > 1 else ""][parts[i - 1]] = None
            self.groups[parent][parts[i]] = None

    def meta(self, path: str) -> ArrayMeta:
        """Return the validated metadata of array ``path`` (``KeyError`` if not an array)."""
        meta = self.arrays[path]
        if meta is None:
            doc, attrs = self._raw[path]
            try:
                meta = parse_array_meta(doc, self.limits, attrs=attrs)
                if ITEM_SHAPE in meta.attributes and not self.item_layouts:
                    raise MetadataError(
                        f"{ITEM_SHAPE} describes an item's array; a dataset's cannot carry it"
                    )
                meta = _with_item_layout(meta, self.limits)
            except MetadataError as exc:
                raise CorruptStoreError(self.location, f"array {path!r}: {exc}") from exc
            self.arrays[path] = meta
        return meta

    def read_array(self, path: str) -> np.ndarray:
        """Decode array ``path`` as it is read (no ``cadstore_kind`` conversion): a
        face-pair array stored as its upper triangle comes back ``N x N (x k)``."""
        meta = self.meta(path)
        if meta.item_shape is None:
            return self.read_stored(path)
        shape = meta.item_shape
        n = shape[0]
        # The full matrix is charged before it is allocated; the triangle is decoded into
        # its first rows (a chunk at a time, each checked against what remains) and
        # expanded in place, so the triangle is never held beside the matrix.
        what = f"array {path!r} ({shape}, {meta.dtype})"
        if isinstance(self, ReadHierarchy):
            self.source.budget.charge(path, math.prod(shape) * meta.itemsize, what)
        else:
            try:
                DecodeBudget(self.location, self._source_bytes(), self.limits).charge(
                    path, math.prod(shape) * meta.itemsize, what
                )
            except LimitExceededError as exc:
                raise LimitExceededError(self.location, f"array {path!r}: {exc.problem}") from exc
        buf = np.empty((n * n, *shape[2:]), dtype=meta.dtype)
        self._decode(path, meta, buf[: triangle_count(n)].reshape(meta.shape))
        expand_in_place(buf, n)
        return buf.reshape(shape)

    def read_stored(self, path: str) -> np.ndarray:
        """Decode array ``path`` as stored: a triangle-stored array as its triangle rows."""
        arr = self._decode(path, self.meta(path))
        if not arr.flags.writeable:
            arr = arr.copy()
        return arr

    def _decode(self, path: str, meta: ArrayMeta, out: np.ndarray | None = None) -> np.ndarray:
        """Decode the chunks of array ``path`` (into ``out`` if given)."""
        try:
            return decode_array(
                meta,
                lambda rel: self._chunk(path, rel),
                self.limits,
                # A stored file's arrays share its decode budget (cadstore.format.limits),
                # which asks the file's size only if a charge needs it (a directory
                # store's is a walk of every file).
                budget=self.source.budget if isinstance(self, ReadHierarchy) else None,
                source_bytes=None if isinstance(self, ReadHierarchy) else self._source_bytes(),
                name=path,
                out=out,
                complete=self.complete,
            )
        except MetadataError as exc:
            raise LimitExceededError(self.location, f"array {path!r}: {exc}") from exc
        except ChunkDecodeError as exc:
            raise CorruptStoreError(self.location, f"array {path!r}: {exc}") from exc
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
            # A codec configuration that passed validation but that decoding chokes on.
            raise CorruptStoreError(
                self.location, f"array {path!r} cannot be decoded ({type(exc).__name__}: {exc})"
            ) from exc

    def read_leaf(self, path: str) -> Leaf:
        """Return array ``path`` as the value that was saved.

        A single string stored with the MsgPack codec, as shape ``(1,)`` (what zarr-python
        2 must write: it cannot encode a 0-d object array) or 0-d, is given back as the
        ``str`` that was saved. cadstore never writes that codec (its strings are
        ``vlen-utf8`` and carry ``cadstore_kind``), so such an array comes from another
        writer, the specified system's ``save_data(key, text)`` among them.
        """
        arr = self.read_array(path)
        meta = self.meta(path)
        kind = meta.attributes.get(KIND_ATTRIBUTE)
        if kind is None and meta.object_codec == "msgpack2" and arr.ndim <= 1 and arr.size == 1:
            kind = "str"
            arr = arr.reshape(())
        return _array_to_leaf(arr, kind)

    def read_node(self, path: str) -> Node:
        """Return the leaf at ``path``, or a nested dict for a group; ``KeyError`` if absent."""
        if path in self.arrays:
            return self.read_leaf(path)
        if path not in self.groups:
            raise KeyError(path)
        return {
            name: self.read_node(f"{path}/{name}" if path else name) for name in self.children(path)
        }

    def iter_arrays(self, path: str = "") -> Iterator[str]:
        """Yield the paths of every array below ``path``."""
        if path in self.arrays:
            yield path
            return
        for name in self.children(path):
            yield from self.iter_arrays(f"{path}/{name}" if path else name)


#: The most bytes in which a member nothing accounts for may differ from a key a store
#: lacks and still be taken for that key's damaged name (:meth:`ReadHierarchy.check_absent`).
_DAMAGED_BYTES: Final = 3


class ReadHierarchy(Hierarchy):
    """A hierarchy stored in a key source (zip, directory), v3 or v2.

    ``complete`` says the writer stored every chunk holding values (a merged dataset):
    a chunk the source does not list is then looked up in the store
    (:meth:`~cadstore.io.sources.KeySource.locate`) and, missing there too, reported.

    Raises
    ------
    CorruptStoreError
        If the source holds no Zarr hierarchy or its metadata is malformed.
    """

    @_without_cyclic_gc
    def __init__(
        self,
        source: KeySource,
        limits: Limits = DEFAULT_LIMITS,
        *,
        item_layouts: bool = True,
        complete: bool = False,
    ) -> None:
        super().__init__()
        self.item_layouts = item_layouts
        self.complete = complete
        self.source = source
        self.limits = limits
        self.location = source.location
        # Keys no node accounts for, by length, found on the first absent chunk or
        # document (see check_absent).
        self._strays: dict[int, list[tuple[str, bytes]]] | None = None
        #: Whether the metadata was read from a consolidated copy (the root zarr.json's
        #: ``consolidated_metadata``, Zarr 2's ``.zmetadata``): without one,
        #: :meth:`copy_problems` has nothing to compare the nodes' documents with.
        self.consolidated = False
        try:
            root = self._json("zarr.json")
            if root is not None:
                self.zarr_format = 3
                self._parse_v3(root)
            elif ".zgroup" in source or ".zmetadata" in source:
                self.zarr_format = 2
                self._parse_v2()
            else:
                raise CorruptStoreError(
                    self.location, "not a Zarr store: no zarr.json or .zgroup at its root"
                )
        except MetadataError as exc:
            raise CorruptStoreError(self.location, f"malformed Zarr metadata: {exc}") from exc
        except CadstoreError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            # Untrusted JSON can put any value anywhere: still malformed, not a crash.
            raise CorruptStoreError(
                self.location, f"malformed Zarr metadata ({type(exc).__name__}: {exc})"
            ) from exc
        if len(self.arrays) + len(self.groups) > limits.max_nodes:
            raise LimitExceededError(self.location, f"more than max_nodes={limits.max_nodes} nodes")

    def _json(self, key: str) -> Any:
        data = self.source.get(key)
        if data is None:
            return None
        if len(data) > self.limits.max_metadata_bytes:
            raise LimitExceededError(
                self.location,
                f"{key!r} is {len(data)} bytes, more than "
                f"max_metadata_bytes={self.limits.max_metadata_bytes}",
            )
        try:
            # Zarr writers emit NaN/Infinity tokens for fill values; accept them here.
            return json.loads(data)
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            raise CorruptStoreError(self.location, f"{key!r} is not valid JSON: {exc}") from exc

    def _add(self, path: str, doc: Any, *, attrs: Any = None) -> None:
        if path:
            problem = check_member_name(path)
            if problem:
                raise MetadataError(f"unsafe node path {path!r}: {problem}")
        if not isinstance(doc, Mapping):
            raise MetadataError(f"metadata of {path!r} is not an object")
        if self_is_v3(doc) and doc.get("node_type") not in ("array", "group"):
            # Taken for a group, an array whose node_type was damaged ('arraq') was listed
            # among its group's arrays and then refused as unknown (DatasetError).
            raise MetadataError(
                f"{path!r} has node_type {reprlib.repr(doc.get('node_type'))}, "
                "neither 'array' nor 'group'"
            )
        is_array = doc.get("node_type") == "array" if self_is_v3(doc) else "shape" in doc
        if is_array:
            self.arrays[path] = None
            self._raw[path] = (doc, attrs)
            self._link(path)
        else:
            if path:
                self._link(path, group=True)
            group_attrs = doc.get("attributes") if self_is_v3(doc) else attrs
            self.group_attributes[path] = _attributes(group_attrs, path)

    def _parse_v3(self, root: Any) -> None:
        if not isinstance(root, Mapping) or root.get("node_type") != "group":
            raise MetadataError("the root zarr.json is not a group")
        self.group_attributes[""] = _attributes(root.get("attributes"), "")
        consolidated = root.get("consolidated_metadata")
        if isinstance(consolidated, Mapping) and isinstance(consolidated.get("metadata"), Mapping):
            docs = consolidated["metadata"].items()
            self.consolidated = True
        else:
            docs = []
            for key in self.source:
                if key.endswith("/zarr.json"):
                    docs.append((key[: -len("/zarr.json")], self._json(key)))
        for path, doc in sorted(docs, key=lambda kv: kv[0].count("/")):
            self._add(path, doc)

    def _parse_v2(self) -> None:
        meta = self._json(".zmetadata")
        docs: dict[str, Any]
        if isinstance(meta, Mapping) and isinstance(meta.get("metadata"), Mapping):
            docs = dict(meta["metadata"])
            self.consolidated = True
        else:
            docs = {
                k: self._json(k)
                for k in self.source
                if k.rsplit("/", 1)[-1] in (".zarray", ".zgroup", ".zattrs")
            }
        attrs_of = {
            k[: -len(".zattrs")].rstrip("/"): v for k, v in docs.items() if k.endswith(".zattrs")
        }
        entries = []
        for key, doc in docs.items():
            name = key.rsplit("/", 1)[-1]
            path = key[: -len(name)].rstrip("/")
            if name in (".zarray", ".zgroup"):
                entries.append((path, doc))
        root_attrs = attrs_of.get("")
        self.group_attributes[""] = (
            dict(root_attrs or {}) if isinstance(root_attrs, Mapping) else {}
        )
        for path, doc in sorted(entries, key=lambda kv: (kv[0].count("/"), kv[0])):
            if path == "" and "shape" not in doc:
                continue
            attrs = attrs_of.get(path) or {}
            if not isinstance(attrs, Mapping):
                raise MetadataError(f"attributes of {path!r} are not an object")
            self._add(path, doc, attrs=attrs)

    def _chunk(self, path: str, rel: str) -> bytes | None:  # docstring inherited
        key = f"{path}/{rel}"
        data = self.source.get(key)
        if data is None:
            if self.complete:
                if self.source.locate(key) is not None:
                    data = self.source.get(key)
            else:
                self.check_absent(key, f"array {path!r}: chunk")
        return data

    def read_document(self, key: str) -> bytes | None:
        """Return the bytes of the document ``key`` beside the nodes (an item's
        ``metadata.json``), or ``None`` if the store has none, after :meth:`check_absent`.

        Raises
        ------
        CorruptStoreError
            If the store lacks ``key`` beside a member of a name of its length that no node
            accounts for (a damaged name), or the member does not read.
        """
        data = self.source.get(key)
        if data is None:
            self.check_absent(key, "document")
        return data

    def check_absent(self, key: str, what: str) -> None:
        """Refuse ``key``, which the source lacks (a chunk of an array, an item's
        ``metadata.json``), being absent when the store holds a member of a name of its
        length that belongs to no node: a name damaged alike in a zip's central directory
        and local header (``x/c/0`` listed as ``x/d/0``, ``metadata.json`` as
        ``metadata.jsoo``), which leaves a consistent zip and would read the array as fill
        values, or the item as one without metadata.

        A store cannot tell a damaged name from a member its writer left out by the name
        alone: Zarr lets a writer leave out a chunk of fill values (in a hierarchy that is
        not :attr:`complete`: an item), and another writer's item may have no
        ``metadata.json`` (cadstore writes one with every item). A member nothing accounts
        for (no node's metadata document, no chunk of an array's grid, not
        ``metadata.json``) that differs from the key in at most :data:`_DAMAGED_BYTES`
        bytes is the evidence, compared as the store holds the names
        (:meth:`~cadstore.io.sources.KeySource.stored_name`: damage keeps the length of a
        zip's stored name, not of its decoded text; a member the operating system
        leaves, ``abc/.DS_Store`` beside an item's missing ``metadata.json``, is no near
        miss and is left alone). The members
        nothing accounts for are found once, on the first absent key (a healthy cadstore
        item has none, and lacks nothing it is asked for).

        Parameters
        ----------
        key
            The absent key.
        what
            What it is, for the message (``"array 'x': chunk"``).

        Raises
        ------
        CorruptStoreError
            Naming the file, ``key`` and the member.
        """
        strays = self._strays
        if strays is None:
            strays = self._strays = self._find_strays()
        wanted = self.source.stored_name(key)
        for stray, found in strays.get(len(wanted), ()):
            if sum(a != b for a, b in zip(wanted, found, strict=True)) > _DAMAGED_BYTES:
                # Not the key with a few bytes changed: a file another writer or the
                # operating system put there (a Finder .DS_Store, an AppleDouble ._ file).
                continue
            raise CorruptStoreError(
                self.location,
                f"{what} {key!r} is missing and member {stray!r}, of a name of its length, "
                "belongs to no node (a damaged name: corrupt file)",
            )

    def copy_problems(self) -> list[tuple[str, str]]:
        """Compare each node's own metadata document with its copy in the consolidated
        metadata (the root ``zarr.json``'s ``consolidated_metadata``, Zarr 2's
        ``.zmetadata``); return ``(key, problem)`` for each document that disagrees, is
        missing, does not read, or is not in the copy.

        cadstore, and zarr-python by default, read a hierarchy through the consolidated
        copy, which every hierarchy cadstore writes carries; a reader that does not
        (zarr-python with ``use_consolidated=False``, another tool) reads the nodes' own
        documents. Both are written from one document, so any difference is damage or a
        change by another tool, and the two kinds of reader would see different arrays.
        Each document is read once more (every CRC is checked), so this is for checking a
        store (``cadstore validate``), not for opening one; a hierarchy without
        consolidated metadata has no copy to compare and gives no problem. Finding the
        documents the copy leaves out lists the store but not below its arrays
        (:meth:`_unlisted_documents`).
        """
        if self.zarr_format == 3:
            root = self._json("zarr.json")
            consolidated = root.get("consolidated_metadata") if isinstance(root, Mapping) else None
            where = "the root zarr.json's consolidated metadata"
            suffixes: tuple[str, ...] = ("/zarr.json",)
        else:
            consolidated = self._json(".zmetadata")
            where = ".zmetadata"
            suffixes = tuple(f"/{name}" for name in (".zarray", ".zattrs", ".zgroup"))
        copies = consolidated.get("metadata") if isinstance(consolidated, Mapping) else None
        if not isinstance(copies, Mapping):
            return []
        if self.zarr_format == 3:
            copies = {f"{path}/zarr.json": doc for path, doc in copies.items()}
        problems: list[tuple[str, str]] = []
        for key, copy in sorted(copies.items()):
            if check_member_name(key) or (
                not key.endswith(suffixes) and key not in _METADATA_NAMES
            ):
                # Not a node's document (a v2 copy's keys are the reader's to check): the
                # store is not asked for it.
                problems.append((key, f"{key!r}: in {where}, not a metadata document"))
                continue
            try:
                own = self._json(key)
            except CadstoreError as exc:
                problems.append((key, f"{key}: does not read ({exc}); its copy is in {where}"))
                continue
            if own is None:
                problems.append(
                    (
                        key,
                        f"{key}: missing, though {where} lists it: a reader that does not use "
                        "consolidated metadata does not find this node",
                    )
                )
                continue
            try:
                differing = _differing_fields(own, copy)
            except (RecursionError, ValueError):
                differing = "too deeply nested to compare"
            if differing:
                problems.append(
                    (
                        key,
                        f"{key}: disagrees with its copy in {where} ({differing}): cadstore "
                        "reads the copy, a reader that does not use consolidated metadata "
                        "this document",
                    )
                )
        # The root's own documents too (Zarr 2's .zattrs and .zgroup: the v3 root
        # zarr.json holds the copy itself).
        roots = {name for name in _METADATA_NAMES - {"zarr.json"} if f"/{name}" in suffixes}
        for key in self._unlisted_documents(copies, suffixes, roots):
            if key.endswith(".zattrs"):
                try:
                    if self._json(key) == {}:
                        continue  # no attributes either way
                except CadstoreError:
                    pass  # reported as not in the copy, whatever it holds
                seen = "cadstore does not see these attributes (it reads the node's as {})"
            else:
                seen = "cadstore does not see this node"
            problems.append(
                (
                    key,
                    f"{key}: not in {where}: {seen}, a reader that does not use consolidated "
                    "metadata does",
                )
            )
        return problems

    def _unlisted_documents(
        self, copies: Mapping[str, Any], suffixes: tuple[str, ...], roots: set[str]
    ) -> list[str]:
        """The metadata documents the store holds that ``copies`` (the consolidated
        metadata, by document key) does not list, sorted.

        The store is not listed below an array the copy lists (its chunks, which a large
        dataset holds by the million; an array has no nodes below it): its documents are
        asked for by name instead. Everywhere else every key is looked at, since a node
        the copy leaves out may be anywhere.
        """
        arrays = [path for path in self.arrays if path]
        found = {
            key
            for key in self.source.keys_outside(arrays)
            if key not in copies and (key.endswith(suffixes) or key in roots)
        }
        for path in arrays:
            for suffix in suffixes:
                key = f"{path}{suffix}"
                if key not in copies and key in self.source:
                    found.add(key)
        return sorted(found)

    def _find_strays(self) -> dict[int, list[tuple[str, bytes]]]:
        """The keys of the source that no node accounts for, with their names' bytes as
        stored (:meth:`~cadstore.io.sources.KeySource.stored_name`), by the length of
        those bytes (see :meth:`check_absent`).

        A zip decodes a name's bytes as cp437 (or UTF-8): a byte of ``x/c/0`` damaged
        above 127 decodes to a name of another length in UTF-8, which the near-miss test
        on the text missed, and the array read as fill values. Damage keeps the stored
        length, so the bytes are what is compared."""
        strays: dict[int, list[tuple[str, bytes]]] = {}
        stored_name = self.source.stored_name
        arrays = self.arrays
        for key in self.source:
            cut = key.rfind("/")
            parent, name = (key[:cut], key[cut + 1 :]) if cut > 0 else ("", key)
            if name in _METADATA_NAMES or (not parent and name in _ROOT_DOCUMENTS):
                if parent in arrays or parent in self.groups:
                    continue
            elif self._in_a_grid(key, arrays):
                continue
            stored = stored_name(key)
            strays.setdefault(len(stored), []).append((key, stored))
        return strays

    def _in_a_grid(self, key: str, arrays: Mapping[str, ArrayMeta | None]) -> bool:
        """Whether ``key`` is a chunk of the grid of the shallowest array above it (one
        whose metadata does not parse is given the benefit of the doubt: reading it
        reports that)."""
        cut = key.find("/")
        while cut > 0:
            if key[:cut] in arrays:
                try:
                    return self.meta(key[:cut]).is_chunk_key(key[cut + 1 :])
                except CadstoreError:
                    return True
            cut = key.find("/", cut + 1)
        return False

    def _source_bytes(self) -> int:  # docstring inherited
        # Asked of the source once, when first needed (a directory store's is a walk).
        return self.source.budget.file_bytes

    def chunk_keys(self) -> dict[str, list[tuple[str, str]]]:
        """Return, for each array, the ``(key, key relative to the array)`` of its chunks.

        Every key below an array that is not one of its metadata documents is a chunk of
        the shallowest array above it. One pass over the keys of the source.
        """
        owned: dict[str, list[tuple[str, str]]] = {}
        arrays = self.arrays
        for key in self.source:
            cut = key.find("/")
            while cut > 0:
                if key[:cut] in arrays:
                    rel = key[cut + 1 :]
                    if rel not in _METADATA_NAMES:
                        owned.setdefault(key[:cut], []).append((key, rel))
                    break
                cut = key.find("/", cut + 1)
        return owned

    def stored_nbytes(self, path: str) -> int:  # docstring inherited
        sizer: Callable[[str], int] = getattr(self.source, "member_size", None) or (
            lambda k: len(self.source.get(k) or b"")
        )
        prefix = f"{path}/" if path else ""
        return sum(
            sizer(k)
            for k in self.source
            if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith((".z", "zarr."))
        )


def self_is_v3(doc: Mapping[str, Any]) -> bool:
    """Whether a metadata document is Zarr format 3."""
    return doc.get("zarr_format") == 3


class BuildHierarchy(Hierarchy):
    """A hierarchy being written: nodes are encoded on ``put`` and published all at once.

    Parameters
    ----------
    zarr_format
        3 (default) or 2.
    level
        zstd level for chunks.
    location
        Shown in error messages.
    """

    def __init__(
        self,
        zarr_format: int = 3,
        level: int | None = 3,
        location: str = "<memory>",
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__()
        if zarr_format not in (2, 3):
            raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
        self.zarr_format = zarr_format
        self.level = level
        self.location = location
        self.limits = limits
        self.docs: dict[str, dict[str, Any]] = {}
        # zarr.json of v3 arrays, serialised (see _ENCODED_DOCS).
        self.doc_json: dict[str, bytes] = {}
        self.chunks: dict[str, dict[str, bytes]] = {}
        #: Arrays stored as triangles by :meth:`put` (not carried over from a file).
        self.triangles_put: set[str] = set()
        #: What arrays :meth:`put` stored decode to, in bytes (see decoded_nbytes).
        self.decoded_sizes: dict[str, int] = {}
        #: The dimension names each array :meth:`put` stored was named with, as read (a
        #: triangle's in full), and how many of them are shared (see :data:`DimsFor`).
        self.named: dict[str, tuple[tuple[str, ...], int]] = {}
        #: The dimension names of each array carried over from a file (not put), as
        #: stored there (a triangle's read names, then its stored names), how many are
        #: shared (see :meth:`_record_carried`) and, for a triangle, how many it is read
        #: with (``None`` for any other array).
        self.carried: dict[str, tuple[tuple[str, ...], int, int | None]] = {}
        #: Arrays :meth:`settle_dims` gave names other than those (until put again).
        self.renamed: set[str] = set()

    def put(
        self,
        path: str,
        node: Node,
        dims_for: DimsFor,
        triangle: Callable[[str], bool] | None = None,
    ) -> None:
        """Encode ``node`` at ``path``, replacing the subtree there.

        ``dims_for`` names each array's dimensions (see :data:`DimsFor`); names that
        meet another array's are told apart when the hierarchy is published
        (:meth:`settle_dims`). ``triangle(path)`` says whether an array at ``path`` is a
        face-pair array, to be stored as its upper triangle when it is symmetric (Zarr
        format 3 only; see :mod:`cadstore.format.triangle`).
        """
        if self.kind(path) is not None:
            self.delete(path)
        if len(self.named) + len(self.carried) < len(self.arrays):
            self._record_carried(dims_for)
        self._put(path, node, dims_for, triangle)

    def _put(
        self,
        path: str,
        node: Node,
        dims_for: DimsFor,
        triangle: Callable[[str], bool] | None,
    ) -> None:
        if isinstance(node, dict):
            self._link(path, group=True)
            for name, child in node.items():
                self._put(f"{path}/{name}", child, dims_for, triangle)
            return
        arr, kind = _leaf_to_array(node)
        attrs: dict[str, Any] = {KIND_ATTRIBUTE: kind} if kind else {}
        dims, shared = dims_for(path, arr.ndim)
        self.named[path] = (tuple(dims), shared)
        self.carried.pop(path, None)
        self.renamed.discard(path)
        item_shape: tuple[int, ...] | None = None
        item_dims: tuple[str, ...] | None = None
        if (
            triangle is not None
            and self.zarr_format == 3
            and arr.ndim >= 2
            and arr.shape[0] > 1
            and arr.dtype.kind in "biufc"
            and triangle(path)
            and (tri := symmetric_upper_rows(arr)) is not None
        ):
            attrs.update(item_attributes(arr.shape, dims))
            item_shape, item_dims = arr.shape, tuple(dims)
            arr = tri
            dims = [_upper_dim(path), *dims[2:]]
        if self.zarr_format == 3:
            # A v3 array's zarr.json (its attributes too) is a function of these alone;
            # v2 documents also record whether a Delta filter paid off for the data.
            key = (arr.shape, arr.dtype.str, tuple(dims), kind, self.level, item_shape, item_dims)
            known = _ENCODED_DOCS.get(key)
            if known is None:
                docs, chunks, meta = encode_array(
                    arr,
                    dims=dims,
                    attributes=attrs,
                    level=self.level,
                    item_shape=item_shape,
                    item_dims=item_dims,
                )
                doc = docs["zarr.json"]
                text = (
                    # A triangle's attributes hold its item shape: no family to share.
                    _compact_json(doc)
                    if item_shape is not None
                    else _array_json((*key[1:], len(meta.codecs)), doc)
                )
                known = docs, meta, text, _decoded_nbytes(meta)
                if len(_ENCODED_DOCS) >= _ENCODED_DOCS_KEPT:
                    _ENCODED_DOCS.clear()
                _ENCODED_DOCS[key] = known
            else:
                chunks = encode_v3_chunks(arr, level=self.level)
            docs, meta, self.doc_json[path], self.decoded_sizes[path] = known
        else:
            docs, chunks, meta = encode_array(
                arr, dims=dims, attributes=attrs, level=self.level, zarr_format=2
            )
            self.doc_json.pop(path, None)
            self.decoded_sizes.pop(path, None)
        if item_shape is not None:
            self.triangles_put.add(path)
        else:
            self.triangles_put.discard(path)
        self.docs[path] = docs
        self.chunks[path] = chunks
        self.arrays[path] = meta
        self._link(path)

    def decoded_nbytes(self) -> int:
        """Bytes every array decodes to, as read (triangles as their full matrices)."""
        known = self.decoded_sizes
        return sum(
            size if (size := known.get(path)) is not None else _decoded_nbytes(self.meta(path))
            for path in self.arrays
        )

    def store_triangles_in_full(self) -> list[str]:
        """Encode every array :meth:`put` stored as a triangle again in full; return them.

        Triangles carried over from a file are left as they are: their chunks are copied,
        never decoded, when an item is reopened for appending.
        """
        found = [path for path in self.arrays if path in self.triangles_put]
        for path in found:
            full = self.read_array(path)
            dims, shared = self.named[path]

            def named(
                _path: str, _ndim: int, dims: tuple[str, ...] = dims, shared: int = shared
            ) -> tuple[list[str], int]:
                return list(dims), shared

            # Replaced in place: the array keeps its position among its group's members.
            self._put(path, full, named, None)
        return found

    def delete(self, path: str) -> None:
        """Remove the subtree at ``path``; ``KeyError`` if absent."""
        if self.kind(path) is None:
            raise KeyError(path)
        for array in list(self.iter_arrays(path)):
            self.triangles_put.discard(array)
            self.decoded_sizes.pop(array, None)
            self.named.pop(array, None)
            self.carried.pop(array, None)
            self.renamed.discard(array)
            del self.arrays[array]
            self.docs.pop(array, None)
            self.doc_json.pop(array, None)
            self.chunks.pop(array, None)
        for group in [g for g in self.groups if g == path or g.startswith(path + "/")]:
            del self.groups[group]
            self.group_attributes.pop(group, None)
        parent, _, name = path.rpartition("/")
        self.groups.get(parent, {}).pop(name, None)

    def _chunk(self, path: str, rel: str) -> bytes | None:  # docstring inherited
        return self.chunks.get(path, {}).get(rel)

    def _source_bytes(self) -> int:  # docstring inherited
        return sum(len(b) for c in self.chunks.values() for b in c.values())

    def stored_nbytes(self, path: str) -> int:  # docstring inherited
        if path in self.arrays:  # an array: what save_data asks after each save
            return sum(map(len, self.chunks.get(path, {}).values()))
        return sum(len(b) for a in self.iter_arrays(path) for b in self.chunks.get(a, {}).values())

    def settle_dims(self) -> None:
        """Give the arrays :meth:`put` stored dimension names that meet no other array's.

        The names :meth:`put` was given are settled over the whole hierarchy by
        :func:`item_dim_names`; arrays carried over from a file (:meth:`from_hierarchy`)
        keep their names, but for one of their own (not shared, see
        :meth:`_record_carried`) that a new array's shared (primary) name takes, that is
        spelt as an array of its group, or that has two lengths among them (a file of an
        older cadstore). Only the
        documents of arrays whose names change are rewritten (their chunks do not depend
        on names); settled again, the names follow the arrays then stored, from the names
        they were saved with (or stored with, for arrays carried over).
        """
        if not self.named and not self.renamed:
            return
        if not self.renamed and not self._names_meet():
            return  # every array keeps the names it was saved with: the usual item
        arrays: dict[str, tuple[Sequence[str], int]] = {}
        for path, named in self.named.items():
            if path in self.triangles_put:  # a triangle's stored first dimension too
                arrays[path] = ((*named[0], _upper_dim(path)), named[1])
            else:
                arrays[path] = named
        carried = {
            path: record
            for path, record in self.carried.items()
            if record[0]  # an array without names keeps none
        }
        originals: dict[str, Sequence[str]] = {p: names for p, (names, _, _) in carried.items()}
        originals.update((path, names) for path, (names, _) in arrays.items())
        settled = item_dim_names(
            arrays,
            carried={path: (names, shared) for path, (names, shared, _) in carried.items()},
            lengths={path: self._carried_lengths(path) for path in carried},
        )
        for path, names in settled.items():
            meta = self.meta(path)
            read_count = carried[path][2] if path in carried else None
            if read_count is not None:  # a carried triangle: its read names, then stored
                read, stored = names[:read_count], names[read_count:]
            elif path in self.triangles_put:
                read, stored = names[:-1], [names[-1], *names[2:-1]]
            else:
                if tuple(names) != meta.dims:
                    self._rename_dims(path, names, None)
                read, stored = None, names
            if read is not None and (tuple(stored) != meta.dims or tuple(read) != meta.item_dims):
                self._rename_dims(path, stored, read)
            if tuple(names) != tuple(originals[path]):
                self.renamed.add(path)
            else:
                self.renamed.discard(path)

    def _record_carried(self, dims_for: DimsFor) -> None:
        """Record the names of the arrays carried over from a file (see :attr:`carried`),
        before anything is renamed: the first ``shared`` of them are shared where
        ``dims_for`` (as :meth:`put` names arrays) gives the array those names shared."""
        for path in self.arrays:
            if path in self.named or path in self.carried:
                continue
            meta = self.meta(path)
            read = meta.item_dims if meta.item_dims is not None else meta.dims
            if meta.dims is None or read is None:
                # No names to meet (a v2 array without _ARRAY_DIMENSIONS).
                self.carried[path] = ((), 0, None)
                continue
            triangle = meta.item_dims is not None
            declared, count = dims_for(path, len(read))
            shared = count if tuple(declared[:count]) == tuple(read[:count]) else 0
            self.carried[path] = (
                (*read, *meta.dims) if triangle else tuple(read),
                shared,
                len(read) if triangle else None,
            )

    def _names_meet(self) -> bool:
        """Whether a name of an array's own, among the arrays :meth:`put` stored, is
        another array's too, or a carried-over array's (any of its names), or a shared
        name of theirs is one of a carried-over array's own (see :meth:`settle_dims`).

        Every array is either put (:attr:`named`) or carried over (:attr:`carried`, all
        recorded at the first put), so the carried-over names are those recorded there:
        unrenamed, they are the ones the documents hold.
        """
        claimed: set[str] = set()
        own: list[str] = [_upper_dim(path) for path in self.triangles_put]
        for names, shared in self.named.values():
            claimed.update(names[:shared])
            own.extend(names[shared:])
        distinct = set(own)
        carried = {name for names, _, _ in self.carried.values() for name in names}
        return (
            len(distinct) < len(own)
            or not distinct.isdisjoint(carried)
            or not distinct.isdisjoint(claimed)
            or any(
                not claimed.isdisjoint(names[shared:]) for names, shared, _ in self.carried.values()
            )
            or self._own_name_spelt_as_an_array()
            or self._carried_name_of_two_lengths()
        )

    def _carried_lengths(self, path: str) -> tuple[int, ...]:
        """The lengths along the names recorded for carried-over array ``path`` (see
        :attr:`carried`): a triangle's read shape, then its stored shape."""
        meta = self.meta(path)
        if self.carried[path][2] is not None:
            return (*meta.read_shape, *meta.shape)
        return meta.shape

    def _carried_name_of_two_lengths(self) -> bool:
        """Whether a name of their own has two lengths among the carried-over arrays (an
        item of an older cadstore), which xarray refuses (see :func:`item_dim_names`)."""
        seen: dict[str, int] = {}
        for path, (names, shared, _) in self.carried.items():
            sizes = self._carried_lengths(path)
            if len(sizes) != len(names):
                continue
            for name, size in zip(names[shared:], sizes[shared:], strict=True):
                if seen.setdefault(name, size) != size:
                    return True
        return False

    def _own_name_spelt_as_an_array(self) -> bool:
        """Whether a name of an array's own, put or carried over, is spelt as an array of
        its Zarr group (see :func:`sibling`)."""
        records = [(path, names, shared) for path, (names, shared) in self.named.items()]
        records += [(path, names, shared) for path, (names, shared, _) in self.carried.items()]
        records += [(path, (_upper_dim(path),), 0) for path in self.triangles_put]
        return any(
            sibling(path, name) in self.arrays
            for path, names, shared in records
            for name in names[shared:]
        )

    def _rename_dims(self, path: str, stored: list[str], read: list[str] | None) -> None:
        """Name the dimensions of the array at ``path`` ``stored`` in its documents (and
        ``read``, the names a triangle is read with, in its attributes)."""
        meta = self.meta(path)
        attributes = dict(meta.attributes)
        if read is not None:
            attributes[ITEM_DIMS] = list(read)
        # The documents may be shared with other arrays (_ENCODED_DOCS): copied, not changed.
        if self.zarr_format == 3:
            doc = {
                **self.docs[path]["zarr.json"],
                "attributes": attributes,
                "dimension_names": list(stored),
            }
            self.docs[path] = {"zarr.json": doc}
            self.doc_json[path] = _compact_json(doc)
        else:
            docs = self.docs[path]
            self.docs[path] = {
                ".zarray": docs[".zarray"],
                ".zattrs": {**docs[".zattrs"], "_ARRAY_DIMENSIONS": list(stored)},
            }
        self.arrays[path] = replace(
            meta,
            dims=tuple(stored),
            attributes=attributes,
            item_dims=None if read is None else tuple(read),
        )

    def members(
        self, root_attributes: Mapping[str, Any] | None = None
    ) -> Iterator[tuple[str, bytes]]:
        """Yield ``(key, bytes)`` for every metadata document and chunk, each key once.

        Groups come before their children, each array's metadata before its chunks, so a
        reader streaming the zip sees metadata first. The dimension names are settled
        first (:meth:`settle_dims`).
        """
        self.settle_dims()
        dump = _compact_json
        root_attrs = dict(root_attributes or self.group_attributes.get("", {}))
        below = list(self._members_below("", dump))
        # Each document is serialised once; the consolidated copy splices in those bytes.
        docs = [(k, d) for k, d in below if k.endswith(_METADATA_SUFFIXES)]
        if self.zarr_format == 3:
            # Inline consolidated metadata lets zarr-python open the hierarchy without
            # listing the store, so it never stumbles over metadata.json.
            entries = b",".join(_json_key(k[: -len("/zarr.json")]) + d for k, d in docs)
            yield (
                "zarr.json",
                (
                    b'{"zarr_format":3,"node_type":"group","attributes":'
                    + dump(root_attrs)
                    + b',"consolidated_metadata":{"kind":"inline","must_understand":false,'
                    b'"metadata":{' + entries + b"}}}"
                ),
            )
        else:
            top = [(".zgroup", dump({"zarr_format": 2}))]
            if root_attrs:
                top.append((".zattrs", dump(root_attrs)))
            yield from top
            entries = b",".join(dump(k) + b":" + d for k, d in top + docs)
            yield ".zmetadata", (b'{"zarr_consolidated_format":1,"metadata":{' + entries + b"}}")
        yield from below

    def _members_below(
        self, path: str, dump: Callable[[Any], bytes]
    ) -> Iterator[tuple[str, bytes]]:
        for name in self.children(path):
            child = f"{path}/{name}" if path else name
            if child in self.arrays:
                serialised = self.doc_json.get(child)
                for doc_name, doc in self.docs[child].items():
                    if serialised is not None and doc_name == "zarr.json":
                        yield f"{child}/zarr.json", serialised
                    else:
                        yield f"{child}/{doc_name}", dump(doc)
                for rel, data in self.chunks[child].items():
                    yield f"{child}/{rel}", data
            else:
                attrs = self.group_attributes.get(child, {})
                if self.zarr_format == 3:
                    yield (
                        f"{child}/zarr.json",
                        dump({"zarr_format": 3, "node_type": "group", "attributes": attrs})
                        if attrs
                        else _EMPTY_V3_GROUP,
                    )
                else:
                    yield f"{child}/.zgroup", dump({"zarr_format": 2})
                    if attrs:
                        yield f"{child}/.zattrs", dump(attrs)
                yield from self._members_below(child, dump)

    @classmethod
    @_without_cyclic_gc
    def from_hierarchy(cls, source: Hierarchy, level: int | None = 3) -> BuildHierarchy:
        """Copy a stored hierarchy into a new builder, keeping its encoded chunks.

        This is how an item opened for appending is carried over: its chunks are copied
        as they are stored, never decoded, so what the new item holds of the old one is
        what the old one stored (absent chunks stay absent; nothing is materialised).
        The keys of the source are listed once and each is given to the array above it,
        so the copy is linear in the number of keys.

        Raises
        ------
        LimitExceededError
            If the chunks of a zip would inflate to more than :data:`COPY_EXPANSION`
            times the size of the zip (plus :data:`COPY_ALLOWANCE`): members deflated
            in the zip by another tool, such as a zip bomb, which republishing would
            write out inflated. Checked on the sizes the zip declares, before reading.
        """
        out = cls(
            zarr_format=source.zarr_format,
            level=level,
            location=source.location,
            limits=source.limits,
        )
        if not isinstance(source, ReadHierarchy):
            raise TypeError("from_hierarchy copies a ReadHierarchy")
        out.group_attributes = {k: dict(v) for k, v in source.group_attributes.items()}
        for group in source.groups:
            if group:
                out._link(group, group=True)
        chunk_keys = source.chunk_keys()
        _check_copy_size(source, chunk_keys)
        for path in source.arrays:
            meta = source.meta(path)
            # The documents as parsed when the hierarchy was opened (from the consolidated
            # metadata, or each array's own file): not read and parsed a second time.
            doc, attrs = source._raw[path]
            if source.zarr_format == 3:
                out.docs[path] = {"zarr.json": dict(doc)}
            else:
                out.docs[path] = {".zarray": dict(doc), ".zattrs": dict(attrs or {})}
            out.chunks[path] = {
                rel: source.source.get(key) or b"" for key, rel in chunk_keys.get(path, ())
            }
            out.arrays[path] = meta
            out._link(path)
        return out


#: Chunks copied out of a zip (see :meth:`BuildHierarchy.from_hierarchy`) may add up to at
#: most this multiple of the zip's size, plus :data:`COPY_ALLOWANCE`. cadstore and
#: zarr-python store chunks uncompressed in the zip (they are compressed already), so
#: their items copy at about 1x; zips made by other tools may deflate members, which
#: shrinks chunks that are not compressed themselves a few times, and a crafted zip a
#: thousandfold.
COPY_EXPANSION = 16
#: See :data:`COPY_EXPANSION`: what a small zip may always expand to.
COPY_ALLOWANCE = 1024**2


def _upper_dim(path: str) -> str:
    """The stored first dimension of the item array at ``path`` stored as a triangle."""
    return f"{path.replace('/', '_')}_upper"


def _check_copy_size(
    source: ReadHierarchy, chunk_keys: Mapping[str, list[tuple[str, str]]]
) -> None:
    """Refuse to copy chunks that inflate out of proportion to the zip holding them."""
    if not isinstance(source.source, ZipSource):
        return  # files of a directory or objects of a prefix are copied at their own size
    size_of = source.source.size_of
    total = sum(size_of(key) or 0 for keys in chunk_keys.values() for key, _ in keys)
    bound = COPY_EXPANSION * source._source_bytes() + COPY_ALLOWANCE
    if total > bound:
        raise LimitExceededError(
            source.location,
            f"its chunks would inflate to {total} bytes, more than {COPY_EXPANSION} times "
            f"the {source._source_bytes()} bytes of the file (its zip members are deflated "
            "out of proportion, as in a zip bomb), so it is not opened for rewriting; "
            "open it with mode='r' to read it, or mode='w' to write a new item in its place",
        )


def _with_item_layout(meta: ArrayMeta, limits: Limits) -> ArrayMeta:
    """``meta`` with the shape and dims it is read as, if it is a triangle-stored item
    array (:func:`cadstore.format.triangle.item_layout`).

    Raises
    ------
    MetadataError
        If its layout attributes do not describe it, or the full array would exceed
        ``limits.max_array_bytes``.
    """
    if ITEM_SHAPE not in meta.attributes:
        return meta
    if meta.is_string:
        raise MetadataError("a string array cannot be stored as a triangle")
    try:
        layout = item_layout(meta.attributes, meta.shape)
    except ValueError as exc:
        raise MetadataError(str(exc)) from exc
    assert layout is not None
    shape, dims = layout
    if len(shape) > limits.max_dims:
        raise MetadataError(f"{len(shape)} dimensions exceed the limit of {limits.max_dims}")
    if math.prod(shape) * meta.itemsize > limits.max_array_bytes:
        raise MetadataError(
            f"{ITEM_SHAPE} {list(shape)} exceeds max_array_bytes={limits.max_array_bytes}"
        )
    if dims is None and meta.dims is not None:
        dims = (f"{meta.dims[0]}_i", f"{meta.dims[0]}_j", *meta.dims[1:])
    return replace(meta, item_shape=shape, item_dims=dims)


def _attributes(value: Any, path: str) -> dict[str, Any]:
    """A group's attributes: an object, or absent."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MetadataError(f"attributes of {path or 'the root'!r} are not an object")
    return dict(value)


def _canonical_json(value: Any) -> str:
    """``value`` as JSON text that two equal documents share (keys sorted, NaN spelt as
    ``NaN``: two parsed NaN are not equal)."""
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _differing_fields(own: Any, copy: Any) -> str:
    """Say how a node's document ``own`` differs from its consolidated ``copy`` (the fields
    of an object that do), ``""`` when they are the same.

    A group's ``consolidated_metadata`` is left out: zarr-python gives each group's copy
    one (the metadata below it) that its own document lacks, and what it holds is
    compared node by node.
    """
    if isinstance(own, Mapping) and isinstance(copy, Mapping):
        own, copy = (
            {name: value for name, value in doc.items() if name != "consolidated_metadata"}
            for doc in (own, copy)
        )
    if _canonical_json(own) == _canonical_json(copy):
        return ""
    if isinstance(own, Mapping) and isinstance(copy, Mapping):
        fields = sorted(
            name
            for name in own.keys() | copy.keys()
            if name not in own
            or name not in copy
            or _canonical_json(own[name]) != _canonical_json(copy[name])
        )
        return "fields " + ", ".join(map(repr, fields))
    return "not the same document"


def _compact_json(doc: Any) -> bytes:
    return _COMPACT(doc).encode("utf-8")


# Made once: json.dumps with any non-default argument builds an encoder on every call, a
# fifth of the time of serialising an array's zarr.json.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _array_json(family: tuple[Any, ...], doc: Mapping[str, Any]) -> bytes:
    """``doc``, a v3 array's ``zarr.json``, serialised as :func:`_compact_json` would.

    An item whose face or edge count the process has not met before needs new documents
    for most of its arrays, and serialising each costs about as much as compressing its
    data. Arrays of one ``family`` (type, names, kind, level and codecs: all of the
    document but its shape and chunk shape) share the rest of the text, so that text is
    made once and the two integer lists are spliced in.
    """
    parts = _ARRAY_JSON_PARTS.get(family)
    if parts is None:
        if len(_ARRAY_JSON_PARTS) >= _ARRAY_JSON_PARTS_KEPT:
            _ARRAY_JSON_PARTS.clear()
        parts = _ARRAY_JSON_PARTS[family] = _array_json_parts(doc)
    if not parts:
        return _compact_json(doc)
    head, middle, tail = parts
    chunks = doc["chunk_grid"]["configuration"]["chunk_shape"]
    return head + _int_list(doc["shape"]) + middle + _int_list(chunks) + tail


#: Text of v3 array documents around their shape and chunk shape, by family (see
#: :func:`_array_json`); an empty tuple where a document does not split so. An encoder
#: writes a few dozen families (an item schema's arrays, about 1 KB each; string arrays
#: make one per width); bounded, started over when full.
_ARRAY_JSON_PARTS: dict[tuple[Any, ...], tuple[bytes, ...]] = {}
_ARRAY_JSON_PARTS_KEPT = 1024

_SHAPE_MARK = "\x00shape"
_CHUNKS_MARK = "\x00chunks"


def _array_json_parts(doc: Mapping[str, Any]) -> tuple[bytes, ...]:
    """The text of ``doc`` before its shape, between shape and chunk shape, and after."""
    grid = doc.get("chunk_grid")
    if not isinstance(grid, Mapping) or "shape" not in doc:
        return ()
    config = grid.get("configuration")
    if not isinstance(config, Mapping) or "chunk_shape" not in config:
        return ()
    marked = {
        **doc,
        "shape": _SHAPE_MARK,
        "chunk_grid": {**grid, "configuration": {**config, "chunk_shape": _CHUNKS_MARK}},
    }
    text = _compact_json(marked)
    head, _, rest = text.partition(_compact_json(_SHAPE_MARK))
    middle, _, tail = rest.partition(_compact_json(_CHUNKS_MARK))
    # Made from this document, the parts must give it back (a name holding a mark, or a
    # document of another order, does not split so).
    spliced = head + _int_list(doc["shape"]) + middle + _int_list(config["chunk_shape"]) + tail
    return (head, middle, tail) if spliced == _compact_json(doc) else ()


def _int_list(values: Sequence[int]) -> bytes:
    """A list of Python ints as compact JSON (what the encoder writes for it)."""
    return ("[" + ",".join(map(str, values)) + "]").encode("ascii")


# Items of equal face and edge counts repeat their array documents (86% of them over
# 1,000 workload items), so each v3 array's documents, parsed metadata and serialised
# zarr.json are made once per process and shared (none of them is ever modified);
# bounded (about 3.8 KB an entry, 15 MB when full). Keyed by what makes them (see
# BuildHierarchy._put).
_ENCODED_DOCS: dict[tuple[Any, ...], tuple[dict[str, Any], ArrayMeta, bytes, int]] = {}
_ENCODED_DOCS_KEPT = 4096


# Printable ASCII but '"' and '\\': a JSON string needs nothing but quotes around it.
_PLAIN_STRING = re.compile(r"[ !#-\[\]-~]*")


#: The ``zarr.json`` of a v3 group without attributes (an item's ``graph``).
_EMPTY_V3_GROUP = _compact_json({"zarr_format": 3, "node_type": "group", "attributes": {}})


@functools.lru_cache(maxsize=4096)
def _json_key(text: str) -> bytes:
    """``text`` as a JSON object key with its colon (remembered: every item of an encoder
    writes the same keys)."""
    return _json_string(text) + b":"


def _decoded_nbytes(meta: ArrayMeta) -> int:
    """Bytes an array decodes to, as read (a triangle as its full matrix)."""
    return math.prod(meta.read_shape) * meta.itemsize


def _json_string(text: str) -> bytes:
    """``text`` as a JSON string (keys are nearly always plain, so skip the encoder)."""
    if _PLAIN_STRING.fullmatch(text):
        return b'"' + text.encode("ascii") + b'"'
    return _compact_json(text)
