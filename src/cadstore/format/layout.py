"""The on-disk contract of a merged ``.dataset``: its names, dimensions and group rules.

What the merge writes and every reader relies on; nothing here reads or writes files.

A ``.dataset`` is a standard Zarr v3 hierarchy (a zip, or a directory)::

    zarr.json                        root group, consolidated metadata
    metadata.json                    schema, item count, merge record
    item_names                       (item,) str: the name of item ``code``
    <group>/zarr.json                attributes: primary_dimension, special_processing
    <group>/<array>                  rows of every item, concatenated in code order
    <group>/file_id_code_<group>     (primary,) int64: the item code of each row
    <group>/item_offsets             (item_boundary,) int64: item ``c`` owns rows
                                     ``item_offsets[c]:item_offsets[c + 1]``
    <group>/<scalar>                 (item,) one value per item (e.g. graph/num_nodes)

Row arrays are sharded along their primary dimension (Zarr ``sharding_indexed``): a shard
is one member, its inner chunks are small, so reading one item decodes little. Face-pair
groups (``special_processing="matrix_flattening"``) store each item's ``N x N (x k)`` arrays
as ``N²`` rows, pair ``(i, j)`` at row ``i·N + j``.

Where an item array goes:

1. a key ``group/array`` goes to ``group`` (deeper paths are joined with ``_``);
2. a bare key goes to the schema group that declares it;
3. otherwise name rules: the four face-pair arrays to ``faceface``, ``*face*`` to
   ``faces``, ``*edge*`` to ``edges``, ``*graph*`` to ``graph``, and one value per item
   named ``*duration*`` or ``*size*`` to ``file``;
4. anything else gets a group of its own, named after the array.

0-d values (Python and numpy scalars, 0-d arrays) become per-item arrays on the ``item``
dimension of their group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "BOUNDARY_DIM",
    "DATASET_FORMAT",
    "DATASET_FAMILY",
    "FACEFACE_ARRAYS",
    "ITEM_DIM",
    "ITEM_NAMES",
    "MATRIX_FLATTENING",
    "OFFSETS",
    "assign_group",
    "dataset_marker",
    "default_primary_dim",
    "file_id_code_name",
    "free_dim_name",
    "qualify_dims",
]

#: Format marker of a dataset, in its root ``zarr.json`` attributes (``cadstore``) and its
#: ``metadata.json`` (``format``).
DATASET_FORMAT = "cadstore-dataset/1"
#: Prefix of the marker of every dataset format, current or future.
DATASET_FAMILY = "cadstore-dataset/"


def dataset_marker(root_attributes: Any) -> str | None:
    """The dataset format marker in a hierarchy's root attributes (``cadstore``), when
    they hold one of any dataset format (:data:`DATASET_FAMILY`); else ``None`` (an item,
    another store, or attributes that are no mapping)."""
    if not isinstance(root_attributes, Mapping):
        return None
    marker = root_attributes.get("cadstore")
    return marker if isinstance(marker, str) and marker.startswith(DATASET_FAMILY) else None


#: Dimension of per-item arrays.
ITEM_DIM = "item"
#: Dimension of the offsets arrays (items + 1).
BOUNDARY_DIM = "item_boundary"
#: Root array of item names, indexed by code.
ITEM_NAMES = "item_names"
#: Name of the per-group offsets array.
OFFSETS = "item_offsets"
#: Arrays the specified encoder writes as N x N (x k) face-pair matrices.
FACEFACE_ARRAYS = frozenset(
    ("a3_distance", "d2_distance", "extended_adjacency", "face_pair_edges_path")
)
MATRIX_FLATTENING = "matrix_flattening"

_PRIMARY_DIMS = {"faces": "face", "edges": "edge", "graph": "edge", "faceface": "facepair"}


def file_id_code_name(group: str) -> str:
    """Return the provenance array name of ``group`` (``file_id_code_<group>``)."""
    return f"file_id_code_{group}"


def default_primary_dim(group: str) -> str:
    """Primary dimension of a group the schema does not declare."""
    return _PRIMARY_DIMS.get(group, f"{group}_row")


def free_dim_name(name: str, taken: set[str]) -> str:
    """Return the first of ``name``, ``name_2``, ``name_3``, ... not in ``taken``, and
    add it to ``taken``.

    The one rule by which a dimension name that would meet another is told apart: the
    merger's and the reader's qualified names (:func:`qualify_dims`) and an item's
    (:func:`cadstore.format.hierarchy.item_dim_names`).
    """
    free, n = name, 2
    while free in taken:
        free, n = f"{name}_{n}", n + 1
    taken.add(free)
    return free


def qualify_dims(
    arrays: Iterable[tuple[str, Sequence[str], Sequence[int]]],
    primary_dims: Iterable[str],
    groups: Iterable[str] = (),
) -> list[list[str]]:
    """Return the dimension names of arrays read together, a clashing trailing name
    qualified by its array.

    The schema names dimensions per group, but xarray needs one length per name where
    arrays are read together (a group, with its triangle group: the explorer presents them
    as one). A trailing name that has two lengths among the arrays, that takes the name
    of a dimension the dataset keeps (a primary one, ``item``, ``item_boundary``), or that
    is spelt as one of the arrays or as an array the dataset keeps in each group
    (``item_offsets``, ``file_id_code_<group>``), which xarray would then list among the
    coordinates (``coordinate`` on ``face_centroids`` beside an array ``coordinate``), becomes
    ``<array>_<name>``: ``bin`` of 64 in ``d2_distance`` and 32 in ``a3_distance`` become
    ``d2_distance_bin`` and ``a3_distance_bin``. A qualified name is never one of the
    names the arrays declare or are named, nor one given to another qualified dimension:
    when ``<array>_<name>`` is taken (an array of the group declares ``d2_distance_bin``
    of its own), the first free of ``<array>_<name>_2``, ``<array>_<name>_3``, ... is used, the
    arrays taken in name order, so that the names do not depend on the order the arrays
    are given in. The merger names a new dataset's dimensions so; the reader presents a
    dataset merged before it did so too.

    Parameters
    ----------
    arrays
        ``(array name, dims, trailing shape)`` of each array: ``dims`` is the row (or
        ``item``) dimension followed by one name for each trailing length.
    primary_dims
        The primary dimensions of the groups read together.
    groups
        The groups read together, whose bookkeeping arrays (``file_id_code_<group>``) no
        trailing name may be spelt as; ``item_offsets`` never is.

    Returns
    -------
    list of list of str
        The dims of each array, in the order given: the first unchanged, each trailing
        name qualified or kept.
    """
    given = [(name, list(dims), tuple(trailing)) for name, dims, trailing in arrays]
    kept = {ITEM_DIM, BOUNDARY_DIM, OFFSETS, *primary_dims}
    kept.update(file_id_code_name(group) for group in groups)
    variables = {name for name, _, _ in given}
    lengths: dict[str, set[int]] = {}
    # Every name declared or of an array, then every qualified name given.
    taken = kept | variables
    for _, dims, trailing in given:
        taken.update(dims)
        for dim, length in zip(dims[1:], trailing, strict=True):
            lengths.setdefault(dim, set()).add(int(length))
    named = [list(dims) for _, dims, _ in given]
    for k in sorted(range(len(given)), key=lambda k: given[k][0]):
        name, dims, _ = given[k]
        for position, dim in enumerate(dims[1:], start=1):
            if dim in kept or dim in variables or len(lengths[dim]) > 1:
                named[k][position] = free_dim_name(f"{name}_{dim}", taken)
    return named


#: The specified name rules, in order: the first token found in a bare array name gives
#: its group.
_NAME_RULES = (("face", "faces"), ("edge", "edges"), ("graph", "graph"))
#: The specified rules for an item's file-level values: one value per item, in ``file``.
_FILE_RULES = ("duration", "size")


def assign_group(
    path: str,
    schema: Any | None,
    *,
    per_item: bool = False,
    known: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """Return ``(group, array)`` for an item leaf at ``path`` (see the module docstring).

    Parameters
    ----------
    path
        The item key.
    schema
        The merge's schema, or ``None``.
    per_item
        Whether the item holds one value there (a 0-d value): ``*duration*`` and
        ``*size*`` values then go to ``file``, the specified group of file-level values.
        Rows of such a name keep a group of their own, since the rows of one group must
        agree in count.
    known
        The group of each array a dataset being appended to holds, by name: a file-level
        value keeps the group it has there (a dataset merged by an earlier cadstore gave
        each such value a group of its own).
    """
    parts = path.split("/")
    if len(parts) > 1:
        return parts[0], "_".join(parts[1:])
    name = parts[0]
    if schema is not None:
        group = schema.group_for_array(name)
        if group is not None:
            return group, name
    if name in FACEFACE_ARRAYS:
        return "faceface", name
    for token, group in _NAME_RULES:
        if token in name:
            return group, name
    if per_item and any(token in name for token in _FILE_RULES):
        return (known or {}).get(name, "file"), name
    return name, name
