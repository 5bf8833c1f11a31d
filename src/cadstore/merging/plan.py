"""Stage 2 of a merge: plan the dataset from the scans, before a single row is written.

The plan decides, from the items' metadata alone: which group each item array goes to
(:func:`cadstore.format.layout.assign_group`), the promoted dtype of every output array
(an incompatible mix is a :class:`~cadstore.errors.MergeError` naming the array and the
items), every item's rows per group and the offsets index derived from them, the
dimension names, and the shard and inner-chunk sizes. Items whose arrays disagree with the
rest are dropped and listed, and the others renumbered, so codes stay ``0..N-1``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cadstore.errors import CadstoreError, MergeError
from cadstore.format.commit import COMMIT_MEMBER, TABLE_KINDS, table_member
from cadstore.format.layout import (
    ITEM_DIM,
    ITEM_NAMES,
    MATRIX_FLATTENING,
    OFFSETS,
    assign_group,
    default_primary_dim,
    file_id_code_name,
    qualify_dims,
)
from cadstore.format.sharding import FRAME_MIN_BYTES, shard_layout
from cadstore.format.triangle import UPPER_TRIANGLE, side_of, triangle_count
from cadstore.merging.options import SMALL_ROW_BYTES, MergeOptions
from cadstore.merging.scan import ItemScan
from cadstore.schema import Schema

__all__ = [
    "ArrayPlan",
    "GroupPlan",
    "MergePlan",
    "describe_errors",
    "dims_for",
    "split_triangles",
    "triangle_group_name",
    "plan_groups",
    "plan_merge",
    "schema_from",
    "small_rows",
]


def describe_errors(errors: Sequence[Mapping[str, str]], shown: int = 3) -> str:
    """The first ``shown`` of the skipped items' errors, each ``file: reason``, for the
    message refusing a merge that has no item left.

    Parameters
    ----------
    errors
        ``{"file": ..., "error": ...}`` entries, as :class:`MergeResult` lists them.
    shown
        How many to spell out; the others are counted.

    Examples
    --------
    >>> describe_errors([{"file": "a.data", "error": "a.data: truncated"}, {"file": "b.data",
    ...     "error": "no rows"}])
    'a.data: truncated; b.data: no rows'
    """
    said = "; ".join(
        f"{error['file']}: {error['error'].removeprefix(error['file'] + ': ')}"
        for error in errors[:shown]
    )
    more = f" (and {len(errors) - shown} more)" if len(errors) > shown else ""
    return said + more


#: Names at the root of a dataset that are not an item's group: the item names, and the
#: members beside the hierarchy (a group of the same name would make a folder where the
#: member is a file, which a directory dataset cannot hold and a zip should not).
_ROOT_NAMES = frozenset(
    (
        ITEM_NAMES,
        "zarr.json",
        "metadata.json",
        COMMIT_MEMBER,
        *(table_member(kind) for kind in TABLE_KINDS),
    )
)


@dataclass
class ArrayPlan:
    """How one output array is assembled.

    Attributes
    ----------
    group, name
        Output location ``<group>/<name>``.
    per_item
        One value per item (from 0-d item values) instead of rows.
    dtype
        The promoted dtype over all items.
    trailing
        Shape after the primary axis (after matrix flattening).
    dims
        Dimension names.
    sources
        Item leaf path per item code (``None`` where the item lacks the array).
    dtypes_seen
        Item code of the first item seen with each dtype, for error messages.
    """

    group: str
    name: str
    per_item: bool
    dtype: np.dtype
    trailing: tuple[int, ...]
    dims: list[str] = field(default_factory=list)
    sources: dict[int, str] = field(default_factory=dict)
    dtypes_seen: dict[str, int] = field(default_factory=dict)
    inner_rows: int = 1
    shard_rows: int = 1
    #: Stored as the upper triangle of each item's ``N x N`` matrix, in the group
    #: :func:`triangle_group_name` of its face-pair group.
    triangle: bool = False

    @property
    def row_bytes(self) -> int:
        """Bytes of one row."""
        return int(np.prod(self.trailing, dtype=np.int64)) * self.dtype.itemsize

    @property
    def fill_value(self) -> Any:
        """Value of rows an item does not provide: NaN for floats, "" for strings (not
        ``"0"``), 0/False otherwise."""
        kind = self.dtype.kind
        if kind in "fc":
            return np.nan
        if kind == "O":
            return ""
        return False if kind == "b" else 0


@dataclass
class GroupPlan:
    """One output group: its primary dimension, arrays and per-item row counts."""

    name: str
    primary_dim: str
    special: str | None
    description: str = ""
    arrays: dict[str, ArrayPlan] = field(default_factory=dict)
    rows: dict[int, int] = field(default_factory=dict)
    #: For a triangle group (``special == "upper_triangle"``): the face-pair group whose
    #: arrays it stores.
    source: str | None = None
    #: For a face-pair group some of whose arrays moved to a triangle group: the order
    #: of all its arrays, in which readers list them.
    order: list[str] = field(default_factory=list)

    @property
    def is_matrix(self) -> bool:
        """Whether item arrays are N x N matrices flattened to N² rows."""
        return self.special == MATRIX_FLATTENING

    @property
    def holds_face_pairs(self) -> bool:
        """Whether the group holds face-pair rows (``N x N`` per item): flattened
        matrices, or their upper triangles."""
        return self.is_matrix or self.special == UPPER_TRIANGLE

    @property
    def item_rows(self) -> int | None:
        """The median row count of the items that have rows in the group (``None`` if
        none do): what its inner chunks and its arrays' levels are sized by."""
        return typical_rows(np.fromiter(self.rows.values(), dtype=np.int64, count=len(self.rows)))


def small_rows(group: GroupPlan, plan: ArrayPlan) -> bool:
    """Whether ``plan`` is an array of small rows, whose chunks are written at
    :data:`~cadstore.merging.options.SMALL_ROWS_LEVEL` (stored as they are) in a compressed
    merge, whatever its level.

    Arrays of rows of at most :data:`~cadstore.merging.options.SMALL_ROW_BYTES` bytes
    (the scalars and small vectors of each face or edge) of which a typical item has
    fewer bytes than an item frame is worth
    (:data:`~cadstore.format.sharding.FRAME_MIN_BYTES`): an item's rows of them are a
    small part of an inner chunk shared by many items, which a read would otherwise
    decode whole, and they are few of a dataset's bytes. Not the face-pair groups'
    arrays (``N x N`` rows per item, most of a dataset's bytes, whatever their row
    size), per-item values (stored whole, see
    :func:`cadstore.merging.write.write_plain_array`), nor small rows that items have by
    the thousand (a point cloud's), whose chunks hold an item's rows or a few.
    """
    if plan.per_item or plan.row_bytes > SMALL_ROW_BYTES or group.holds_face_pairs:
        return False
    typical = group.item_rows
    return typical is not None and typical * plan.row_bytes < FRAME_MIN_BYTES


def schema_from(schema: Any, scans: Sequence[ItemScan]) -> Schema | None:
    """The schema of the merge: the one given, else the first readable one in the items."""
    if schema is not None:
        return Schema.from_any(schema)
    for scan in scans:
        stored = scan.metadata.get("_storage_schema")
        if isinstance(stored, Mapping) and stored:
            try:
                return Schema.from_any(stored)
            except CadstoreError:
                continue
    return None


def plan_groups(
    scans: Sequence[ItemScan],
    schema: Schema | None,
    errors: list[dict[str, str]],
    known: Mapping[str, str] | None = None,
) -> tuple[dict[str, GroupPlan], list[int], list[str]]:
    """Plan output groups; return the groups, the codes that survive, and warnings.

    ``known`` are the groups of the arrays of a dataset being appended to, by name (see
    :func:`~cadstore.format.layout.assign_group`).

    Items whose arrays disagree with the rest (trailing shapes, row counts within a group,
    non-square face-pair matrices) are dropped and recorded in ``errors``. What "the rest"
    hold of an array (one value per item or rows, and the rows' trailing shape) is what
    most items hold, the first item's in a tie: one odd item first must not have every
    other item dropped.
    """
    groups: dict[str, GroupPlan] = {}
    warnings_: list[str] = []
    kept: list[int] = []
    # Whether a key is one value per item decides its group under the name rules (see
    # assign_group): what most items hold decides, so an odd item meets the others there.
    per_item = _most_common_per_item(scans)
    placed = [_stage_item(scan, groups, schema, warnings_, known, per_item) for scan in scans]
    expected = _most_common_shapes(placed)
    for code, (scan, (staged, problems)) in enumerate(zip(scans, placed, strict=True)):
        problems = [*problems, *_disagreements(staged, expected)]
        if problems:
            errors.append({"file": scan.path, "error": "; ".join(problems)})
            continue
        for group, array_name, key, trailing, dt, rows in staged:
            _add_source(group, array_name, key, trailing, dt, rows, code)
        kept.append(code)
    # Groups registered only by items that were then dropped hold no arrays.
    groups = {name: g for name, g in groups.items() if g.arrays}
    for group in groups.values():
        for plan in group.arrays.values():
            plan.dtype = _promote(group.name, plan, scans)
    return groups, kept, warnings_


#: One item array placed in the plan: group, array name, item key, trailing shape,
#: dtype (or "string"), and rows (``None`` for a per-item value).
_Staged = tuple["GroupPlan", str, str, tuple[int, ...], "np.dtype | str", "int | None"]


#: What an item holds of a dataset array: whether one value per item, and the trailing
#: shape of its rows.
_Shape = tuple[bool, tuple[int, ...]]


def _most_common_per_item(scans: Sequence[ItemScan]) -> dict[str, bool]:
    """For each item key, whether most items hold one value there (the earliest in a
    tie)."""
    counts: dict[str, Counter[bool]] = {}
    for scan in scans:
        for key, (shape, _dtype) in scan.arrays.items():
            counts.setdefault(key, Counter())[not shape] += 1
    return {key: seen.most_common(1)[0][0] for key, seen in counts.items()}


def _most_common_shapes(
    placed: Sequence[tuple[list[_Staged], list[str]]],
) -> dict[tuple[str, str], _Shape]:
    """What most items hold of each dataset array (the earliest in a tie), counted over
    the items that are consistent in themselves (``placed``: each item's staged arrays and
    problems, from :func:`_stage_item`)."""
    counts: dict[tuple[str, str], Counter[_Shape]] = {}
    for staged, problems in placed:
        if problems:
            continue
        for group, array_name, _key, trailing, _dt, rows in staged:
            counts.setdefault((group.name, array_name), Counter())[(rows is None, trailing)] += 1
    # most_common keeps first-seen order among equal counts.
    return {name: seen.most_common(1)[0][0] for name, seen in counts.items()}


def _stage_item(
    scan: ItemScan,
    groups: dict[str, GroupPlan],
    schema: Schema | None,
    warnings_: list[str],
    known: Mapping[str, str] | None,
    per_item: Mapping[str, bool],
) -> tuple[list[_Staged], list[str]]:
    """Place an item's arrays in their groups (made in ``groups`` when new); return them,
    and what is wrong with the item in itself (see :func:`_disagreements` for what
    disagrees with the other items)."""
    problems: list[str] = []
    staged: list[_Staged] = []
    rows_by_group: dict[str, int] = {}
    placed: dict[tuple[str, str], str] = {}
    for key, (shape, dtype) in scan.arrays.items():
        one_value = per_item.get(key, not shape)
        group_name, array_name = assign_group(key, schema, per_item=one_value, known=known)
        if dtype == "string" and shape:
            warnings_.append(f"string array {key!r} is not merged (item {scan.name})")
            continue
        # Nested keys are joined with '_' (a/b/c is a/b_c): two keys may meet, and names
        # the dataset keeps for itself are not an item's to take.
        other = placed.setdefault((group_name, array_name), key)
        if other != key:
            problems.append(
                f"{other!r} and {key!r} would both be stored as {group_name}/{array_name}"
            )
            continue
        if array_name in (OFFSETS, file_id_code_name(group_name)) or group_name in _ROOT_NAMES:
            problems.append(
                f"{key!r} would be stored as {group_name}/{array_name}, a name the "
                "dataset keeps for itself"
            )
            continue
        group = groups.get(group_name)
        if group is None:
            group = groups[group_name] = _new_group(group_name, schema)
        dt: np.dtype | str = "string" if dtype == "string" else np.dtype(dtype)
        if not shape:
            staged.append((group, array_name, key, (), dt, None))
            continue
        if group.is_matrix:
            if len(shape) < 2 or shape[0] != shape[1]:
                problems.append(f"{key!r} has shape {shape}, not N x N for face pairs")
                continue
            rows, trailing = shape[0] * shape[1], tuple(shape[2:])
        else:
            rows, trailing = shape[0], tuple(shape[1:])
        previous = rows_by_group.setdefault(group_name, rows)
        if previous != rows:
            problems.append(
                f"arrays of group {group_name!r} disagree on rows ({previous} vs {rows} "
                f"for {key!r})"
            )
        staged.append((group, array_name, key, trailing, dt, rows))
    return staged, problems


def _disagreements(
    staged: Sequence[_Staged], expected: Mapping[tuple[str, str], _Shape]
) -> list[str]:
    """What an item's ``staged`` arrays hold unlike what most items hold (``expected``)."""
    problems: list[str] = []
    for group, array_name, key, trailing, _dt, staged_rows in staged:
        want = expected.get((group.name, array_name))
        if want is None:
            continue
        want_one_value, want_trailing = want
        if want_one_value != (staged_rows is None):
            problems.append(
                f"{key!r} ({group.name}/{array_name}): this item holds "
                f"{holding(staged_rows is None)}, other items {holding(want_one_value)}"
            )
            continue
        if staged_rows is not None and want_trailing != trailing:
            problems.append(
                f"{group.name}/{array_name} has trailing shape {trailing}, other items "
                f"have {want_trailing}"
            )
    return problems


def holding(per_item: bool) -> str:
    """What items hold of an array, for messages: one value per item, or rows."""
    return "one value per item" if per_item else "rows"


def _add_source(
    group: GroupPlan,
    array_name: str,
    key: str,
    trailing: tuple[int, ...],
    dt: np.dtype | str,
    rows: int | None,
    code: int,
) -> None:
    plan = group.arrays.get(array_name)
    if plan is None:
        plan = group.arrays[array_name] = ArrayPlan(
            group=group.name,
            name=array_name,
            per_item=rows is None,
            dtype=np.dtype("int64") if dt == "string" else np.dtype(dt),
            trailing=trailing,
        )
    if dt == "string":
        plan.dtype = np.dtype(object)
    plan.sources[code] = key
    plan.dtypes_seen.setdefault(str(dt), code)
    if rows is not None:
        group.rows[code] = rows


def _new_group(name: str, schema: Schema | None) -> GroupPlan:
    if schema is not None and name in schema.groups:
        primary_dim = schema.primary_dimension(name)
        assert primary_dim is not None  # the schema has the group
        return GroupPlan(
            name=name,
            primary_dim=primary_dim,
            special=schema.special_processing(name),
        )
    special = "matrix_flattening" if name == "faceface" else None
    return GroupPlan(name=name, primary_dim=default_primary_dim(name), special=special)


def _promote(group: str, plan: ArrayPlan, scans: Sequence[ItemScan]) -> np.dtype:
    seen = plan.dtypes_seen
    if "string" in seen:
        if len(seen) > 1:
            raise MergeError(_dtype_conflict(group, plan, scans))
        return np.dtype(object)
    dtypes = [np.dtype(d) for d in seen]
    kinds = {d.kind for d in dtypes}
    if len(kinds) > 1 and not kinds <= set("biuf"):
        raise MergeError(_dtype_conflict(group, plan, scans))
    return np.result_type(*dtypes)


def _dtype_conflict(group: str, plan: ArrayPlan, scans: Sequence[ItemScan]) -> str:
    examples = ", ".join(f"{d} in {scans[c].name!r}" for d, c in plan.dtypes_seen.items())
    return f"array {group}/{plan.name} has incompatible dtypes across items: {examples}"


def dims_for(group: GroupPlan, plan: ArrayPlan, schema: Schema | None) -> list[str]:
    """The output array's dimension names: the schema's where it declares the array."""
    if plan.per_item:
        return [ITEM_DIM, *(f"{plan.name}_dim_{i + 1}" for i in range(len(plan.trailing)))]
    if schema is not None:
        found = schema.array_spec(f"{group.name}/{plan.name}") or schema.array_spec(plan.name)
        if found is not None and found[0] == (group.source or group.name):
            dims = list(found[2].get("dims", []))
            if len(dims) == 1 + len(plan.trailing):
                return [group.primary_dim, *dims[1:]]
    return [group.primary_dim, *(f"{plan.name}_dim_{i + 1}" for i in range(len(plan.trailing)))]


def typical_rows(rows: np.ndarray) -> int | None:
    """The median row count of the items that have rows in a group (``None`` if none do)."""
    present = rows[rows > 0]
    return int(np.median(present)) if present.size else None


@dataclass
class MergePlan:
    """Everything the write stage needs, decided before any row is read.

    Attributes
    ----------
    scans
        The items that will be merged, in code order.
    groups
        The output groups and arrays.
    schema
        The schema of the merge (stored in the dataset), or ``None``.
    offsets
        ``{group: int64 [items + 1]}``: item ``c`` owns rows ``offsets[c]:offsets[c + 1]``.
    warnings
        Notes on arrays that are not merged.
    """

    scans: list[ItemScan]
    groups: dict[str, GroupPlan]
    schema: Schema | None
    offsets: dict[str, np.ndarray]
    warnings: list[str] = field(default_factory=list)


def plan_merge(
    scans: Sequence[ItemScan],
    schema: Any,
    options: MergeOptions,
    errors: list[dict[str, str]],
) -> MergePlan:
    """Plan the merge of ``scans``; items that do not fit are dropped into ``errors``.

    Raises
    ------
    MergeError
        If no item can be merged, or an array has incompatible dtypes across items.
    """
    parsed = schema_from(schema, scans)
    groups, kept, warnings_ = plan_groups(scans, parsed, errors)
    if len(kept) != len(scans):
        # Codes are positions among the merged items: plan again without the dropped.
        scans = [scans[c] for c in kept]
        groups, _, warnings_ = plan_groups(scans, parsed, [])
    if not scans:
        raise MergeError(f"no item could be merged: {describe_errors(errors)}")
    if options.face_pair_layout == "auto":
        groups = split_triangles(groups, scans, None)
    offsets = lay_out(groups, len(scans), parsed, options)
    return MergePlan(list(scans), groups, parsed, offsets, warnings_)


def lay_out(
    groups: Mapping[str, GroupPlan],
    n_items: int,
    schema: Schema | None,
    options: MergeOptions,
) -> dict[str, np.ndarray]:
    """Fix dims, shard and inner-chunk rows of every array; return the offsets per group."""
    offsets: dict[str, np.ndarray] = {}
    for group in groups.values():
        rows = np.array([group.rows.get(c, 0) for c in range(n_items)], dtype=np.int64)
        offsets[group.name] = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        for plan in group.arrays.values():
            plan.dims = dims_for(group, plan, schema)
    _qualify_clashing_dims(groups)
    for group in groups.values():
        item_rows = group.item_rows
        total = int(offsets[group.name][-1])
        for plan in group.arrays.values():
            if not plan.per_item:
                # Shards sized to the rows there are: a small array gets a small shard
                # and index, so the output stays proportional to the input.
                plan.inner_rows, plan.shard_rows = shard_layout(
                    plan.row_bytes,
                    options.inner_bytes,
                    options.shard_bytes,
                    options.shard_rows.get(group.name),
                    item_rows,
                    total_rows=total,
                    compressed=options.compression_level is not None,
                )
    return offsets


def _qualify_clashing_dims(groups: Mapping[str, GroupPlan]) -> None:
    """Qualify by its array a trailing dimension name that would clash where the arrays
    are read together (a group, with its triangle group): see
    :func:`~cadstore.format.layout.qualify_dims`."""
    families: dict[str, list[GroupPlan]] = {}
    for group in groups.values():
        families.setdefault(group.source or group.name, []).append(group)
    for members in families.values():
        plans = [plan for group in members for plan in group.arrays.values()]
        named = qualify_dims(
            [(plan.name, plan.dims, plan.trailing) for plan in plans],
            [group.primary_dim for group in members],
            [group.name for group in members],
        )
        for plan, dims in zip(plans, named, strict=True):
            plan.dims = dims


def triangle_group_name(group: str) -> str:
    """The group holding the triangle-stored arrays of face-pair group ``group``."""
    return f"{group}_upper"


def split_triangles(
    groups: Mapping[str, GroupPlan],
    scans: Sequence[ItemScan],
    required: Mapping[str, set[str]] | None,
) -> dict[str, GroupPlan]:
    """Move triangle-stored face-pair arrays into their own group, after their source.

    Parameters
    ----------
    groups
        The planned groups (changed in place: the moved arrays leave their group).
    scans
        The items, by code; :attr:`ItemScan.symmetric` says which arrays are symmetric.
    required
        ``None`` for a new dataset: every face-pair array symmetric in every item that
        has it goes to the triangle group. Otherwise ``{face-pair group: arrays}`` an
        existing dataset stores as triangles (an append): exactly those move, and every
        item must be symmetric in them.

    Returns
    -------
    dict
        The groups, each triangle group right after its source. A triangle group has one
        row per pair ``i <= j`` of each item: ``N (N + 1) / 2`` where the source has
        ``N²``.

    Raises
    ------
    MergeError
        If ``required`` names an array an item holds asymmetric: a triangle cannot store
        it, so the item cannot be appended (merge every item again instead).
    """
    out: dict[str, GroupPlan] = {}
    for group in groups.values():
        out[group.name] = group
        if not group.is_matrix:
            continue
        tri_name = triangle_group_name(group.name)
        if required is None and tri_name in groups:
            continue  # the name is taken by a group of the items: keep the full layout
        wanted = required.get(group.name, set()) if required is not None else None
        moved: dict[str, ArrayPlan] = {}
        for name, plan in group.arrays.items():
            if plan.per_item or not plan.sources:
                continue
            if wanted is None:
                if all(key in scans[c].symmetric for c, key in plan.sources.items()):
                    moved[name] = plan
            elif name in wanted:
                for code, key in plan.sources.items():
                    if key not in scans[code].symmetric:
                        raise MergeError(
                            f"{scans[code].path}: its {key!r} is not symmetric, but the "
                            f"dataset stores {group.name}/{name} as an upper triangle "
                            f"({tri_name}/{name}); merge every item again (overwrite=True) "
                            "to store it in full"
                        )
                moved[name] = plan
        if not moved and (required is None or group.name not in required):
            continue
        tri = GroupPlan(
            name=tri_name,
            primary_dim=f"{group.primary_dim}_upper",
            special=UPPER_TRIANGLE,
            description=f"upper triangles of {group.name}",
            source=group.name,
        )
        if moved:
            group.order = list(group.arrays)
        for name, plan in moved.items():
            del group.arrays[name]
            plan.group = tri_name
            plan.triangle = True
            tri.arrays[name] = plan
        tri.rows = {code: triangle_count(side_of(rows)) for code, rows in group.rows.items()}
        out[tri_name] = tri
    return out
