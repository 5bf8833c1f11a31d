"""``Schema``: an immutable, pre-indexed view of a schema dict for the storage hot paths.

Storages ask the schema the same few questions for every array and metadata key they save
(which group, which dims, is this data acceptable, where does this metadata go). ``Schema``
normalises the dict once and answers those questions from prepared lookup tables.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from cadstore.errors import SchemaError
from cadstore.schema._common import DTYPE_KINDS, describe_type, metadata_value_problem
from cadstore.schema._routing import MetadataRouter
from cadstore.schema.builder import SchemaBuilder
from cadstore.schema.normalize import normalize_schema

__all__ = ["Schema"]

_FAMILY = {
    "f": "float",
    "c": "complex",
    "b": "bool",
    "i": "integer",
    "u": "unsigned integer",
    "U": "str",
}


@dataclass(frozen=True, slots=True)
class _ArrayInfo:
    """One declared array, with everything ``validate_array`` needs precomputed."""

    group: str
    name: str
    dims: tuple[str, ...]
    dtype: str
    kind: str
    min_value: int | float | None
    max_value: int | float | None
    values: tuple[Any, ...] | None
    value_set: frozenset[Any] | None


def _array_info(group: str, name: str, spec: Mapping[str, Any]) -> _ArrayInfo:
    values = spec.get("values")
    value_tuple = None if values is None else tuple(values)
    value_set = None
    if value_tuple is not None:
        try:
            value_set = frozenset(value_tuple)
        except TypeError:  # unhashable allowed values (lists); fall back to a linear scan
            value_set = None
    return _ArrayInfo(
        group=group,
        name=name,
        dims=tuple(spec["dims"]),
        dtype=spec["dtype"],
        kind=DTYPE_KINDS[spec["dtype"]],
        min_value=spec.get("min_value"),
        max_value=spec.get("max_value"),
        values=value_tuple,
        value_set=value_set,
    )


def _where(flat_index: int, shape: tuple[int, ...]) -> str:
    if not shape:
        return ""
    index = [int(i) for i in np.unravel_index(flat_index, shape)]
    return f" at index {index}"


def _first(mask: np.ndarray) -> int | None:
    flat = mask.ravel()
    position = int(np.argmax(flat))
    return position if flat[position] else None


def _as_array(data: Any, want_str: bool) -> tuple[np.ndarray, bool]:
    """Return ``(array, inferred)``; *inferred* is true when numpy guessed the dtype."""
    if isinstance(data, np.ndarray):
        return data, False
    if isinstance(data, list | tuple):
        # numpy would quietly turn [1, "a"] into strings; object dtype keeps the elements
        # as they are so a str array can check each one.
        return (np.asarray(data, dtype=object) if want_str else np.asarray(data)), True
    return np.asarray(data), False


def _dtype_problem(info: _ArrayInfo, arr: np.ndarray, key: str) -> str | None:
    kind = arr.dtype.kind
    want = info.kind
    if want == "U":
        if kind == "U":
            return None
        if kind == "O":
            for position, item in enumerate(arr.flat):
                if not isinstance(item, str):
                    return (
                        f"{key}: expected str elements, found {describe_type(item)} {item!r}"
                        f"{_where(position, arr.shape)}"
                    )
            return None
        return f"{key}: dtype {arr.dtype} does not match str (str arrays take strings only)"
    if want in "iu" and kind in "iu":
        return _int_range_problem(info, arr, key)
    if kind != want:
        family = _FAMILY[want]
        return (
            f"{key}: dtype {arr.dtype} does not match {info.dtype} "
            f"({family} arrays take {family} data only)"
        )
    return None


def _int_range_problem(info: _ArrayInfo, arr: np.ndarray, key: str) -> str | None:
    target = np.dtype(info.dtype)
    if arr.size == 0 or np.can_cast(arr.dtype, target, "safe"):
        return None
    src, dst = np.iinfo(arr.dtype), np.iinfo(target)
    # Only the bounds the source type can actually cross are tested, and each bound is then
    # representable in the source dtype, so the comparisons are exact.
    check_low, check_high = src.min < dst.min, src.max > dst.max
    if not (check_low and arr.min() < dst.min) and not (check_high and arr.max() > dst.max):
        return None
    mask = np.zeros(arr.shape, dtype=bool)
    if check_low:
        mask |= arr < dst.min
    if check_high:
        mask |= arr > dst.max
    position = _first(mask)
    assert position is not None
    value = arr.ravel()[position].item()
    return (
        f"{key}: value {value}{_where(position, arr.shape)} does not fit in {info.dtype} "
        f"(range {dst.min}..{dst.max})"
    )


def _bounds_problems(info: _ArrayInfo, arr: np.ndarray, key: str) -> list[str]:
    problems: list[str] = []
    if arr.size == 0 or arr.dtype.kind not in "iuf":
        return problems
    for bound, name, below in (
        (info.min_value, "min_value", True),
        (info.max_value, "max_value", False),
    ):
        if bound is None:
            continue
        # One reduction usually settles it; the mask is built only when something is off
        # (or when a NaN hides the true extreme).
        extreme = arr.min() if below else arr.max()
        if extreme == extreme and (extreme >= bound if below else extreme <= bound):
            continue
        position = _first(arr < bound if below else arr > bound)
        if position is not None:
            value = arr.ravel()[position].item()
            side = "below" if below else "above"
            problems.append(
                f"{key}: value {value!r}{_where(position, arr.shape)} is {side} {name} {bound!r}"
            )
    return problems


def _values_problem(info: _ArrayInfo, arr: np.ndarray, key: str) -> str | None:
    if info.values is None or arr.size == 0:
        return None
    allowed_set, allowed = info.value_set, info.values

    def is_allowed(item: object) -> bool:
        # Items are scalars from np.unique / a str-checked object array, so always hashable.
        return item in (allowed if allowed_set is None else allowed_set)

    if arr.dtype.kind == "O":
        flat = arr.ravel().tolist()
        position = next((i for i, item in enumerate(flat) if not is_allowed(item)), None)
        if position is None:
            return None
        value = flat[position]
    else:
        if arr.dtype.kind == "f" and arr.dtype.itemsize < 8:
            # A float32 array holds 0.1 as float32(0.1): the declared values are compared
            # as the array's dtype holds them, not as float64.
            held = {
                np.asarray(v, dtype=arr.dtype).item()
                for v in allowed
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            plain = is_allowed

            def is_allowed(item: object) -> bool:
                return item in held or plain(item)

        bad = [item for item in np.unique(arr).tolist() if not is_allowed(item)]
        if not bad:
            return None
        position = _first(np.isin(arr, np.asarray(bad, dtype=arr.dtype)))
        value = bad[0] if position is None else arr.ravel()[position].item()
    where = "" if position is None else _where(position, arr.shape)
    return f"{key}: value {value!r}{where} is not one of the allowed values {list(allowed)!r}"


class Schema:
    """Immutable, pre-indexed read view of a schema dictionary.

    Parameters
    ----------
    schema
        Any dict :func:`normalize_schema` accepts (``build()`` output, its JSON round trip,
        the single-nested form, ...). It is normalised and copied; later changes to it do not
        affect the view.

    Raises
    ------
    SchemaError
        If *schema* has the wrong shape.

    Notes
    -----
    **Array keys.** ``"group/array"`` names the array in that exact group; if the group exists
    but does not declare the array, the key is treated as not in the schema (the data lives in
    that group, so another group's spec does not describe it). A bare name, a path whose
    first segment is not a group, or a path of three or more segments is looked up by its last
    segment in the first group, in schema order, that declares it.

    **Array validation** (:meth:`validate_array`) returns a list of problems:

    * *Data*: a numpy array, numpy scalar, Python scalar, ``str``, or list/tuple (converted
      with :func:`numpy.asarray`). A ``dict`` for a declared array is a problem.
    * *Dimensions*: ``ndim`` must equal ``len(dims)``; scalars are 0-d.
    * *Dtype*, by kind family rather than numpy casting: a float array takes float data only
      (int32 data for a float32 array is a mismatch), complex takes complex, bool takes bool;
      a signed integer array takes signed or unsigned integers whose values fit its range, an
      unsigned array takes unsigned integers that fit and signed ones that are non-negative
      and fit; ``'str'`` takes numpy ``'U'`` data or object arrays / lists whose elements are
      all ``str``. An empty list or tuple has no dtype of its own and passes the dtype check.
    * *Rules*, only when the dtype is acceptable: ``min_value`` / ``max_value`` against the
      data's extremes ignoring NaN (the first offending value in C order is reported), and
      ``values`` as the set of allowed values. Other rules are kept but not enforced.

    Instances are hashable, compare equal when their canonical dicts are equal, and pickle.

    Examples
    --------
    >>> import numpy as np
    >>> from cadstore.schema import Schema, SchemaBuilder
    >>> builder = SchemaBuilder(domain="CAD_analysis")
    >>> builder.create_group("faces", "face").create_array("face_areas", ["face"], "float32")
    >>> schema = Schema(builder.build())
    >>> schema.group_for_array("face_areas"), schema.dims_for("faces/face_areas")
    ('faces', ('face',))
    >>> schema.validate_array("face_areas", np.array([1, 2, 3], dtype=np.int32))
    ['face_areas: dtype int32 does not match float32 (float arrays take float data only)']
    """

    __slots__ = (
        "_by_group",
        "_by_name",
        "_canonical",
        "_hash",
        "_metadata_defs",
        "_router",
    )

    _canonical: dict[str, Any]
    _by_group: dict[str, dict[str, _ArrayInfo]]
    _by_name: dict[str, _ArrayInfo]
    _router: MetadataRouter
    _metadata_defs: dict[str, dict[str, Any]]
    _hash: int | None

    def __init__(self, schema: Mapping[str, Any]) -> None:
        canonical = normalize_schema(schema)
        by_group: dict[str, dict[str, _ArrayInfo]] = {}
        by_name: dict[str, _ArrayInfo] = {}
        for group_name, group in canonical["groups"].items():
            infos = {
                name: _array_info(group_name, name, spec) for name, spec in group["arrays"].items()
            }
            by_group[group_name] = infos
            for name, info in infos.items():
                by_name.setdefault(name, info)
        metadata = canonical["metadata"]["metadata"]
        set_ = object.__setattr__
        set_(self, "_canonical", canonical)
        set_(self, "_by_group", by_group)
        set_(self, "_by_name", by_name)
        set_(
            self,
            "_router",
            MetadataRouter(
                metadata["file_level"], metadata["categorical"], metadata["routing_rules"]
            ),
        )
        set_(self, "_metadata_defs", {**metadata["file_level"], **metadata["categorical"]})
        set_(self, "_hash", None)

    @classmethod
    def from_any(cls, schema: Schema | SchemaBuilder | Mapping[str, Any]) -> Schema:
        """Return a ``Schema`` for a ``Schema`` (returned as is), a builder or a dict.

        Parameters
        ----------
        schema
            The schema in any of its forms.

        Returns
        -------
        Schema
            The view.

        Raises
        ------
        SchemaError
            If *schema* is of another type or has the wrong shape.
        """
        if isinstance(schema, Schema):
            return schema
        if isinstance(schema, SchemaBuilder):
            return cls(schema.build())
        if isinstance(schema, Mapping):
            return cls(schema)
        raise SchemaError(
            f"schema: expected a Schema, SchemaBuilder or dict, got {describe_type(schema)}"
        )

    # -- immutability and identity --------------------------------------------------------

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Schema is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Schema is immutable; cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[Schema], tuple[dict[str, Any]]]:
        return (type(self), (self._canonical,))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schema):
            return NotImplemented
        return self._canonical == other._canonical

    def __hash__(self) -> int:
        if self._hash is None:
            text = json.dumps(self._canonical, sort_keys=True)
            object.__setattr__(self, "_hash", hash(text))
        assert self._hash is not None
        return self._hash

    def __repr__(self) -> str:
        return f"Schema(domain={self.domain!r}, version={self.version!r}, groups={self.groups!r})"

    def to_dict(self) -> dict[str, Any]:
        """Return a fresh copy of the canonical dict (the ``SchemaBuilder.build()`` form).

        Returns
        -------
        dict
            Safe to modify.
        """
        return copy.deepcopy(self._canonical)

    # -- top level ------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """The schema's version string."""
        return str(self._canonical["version"])

    @property
    def domain(self) -> str:
        """The schema's domain name."""
        return str(self._canonical["domain"])

    @property
    def description(self) -> str:
        """The schema's description (``''`` when none)."""
        return str(self._canonical["description"])

    @property
    def groups(self) -> tuple[str, ...]:
        """The group names, in schema order."""
        return tuple(self._by_group)

    # -- groups and arrays ----------------------------------------------------------------

    def primary_dimension(self, group: str) -> str | None:
        """Return the primary dimension of *group*, or ``None`` if there is no such group.

        Parameters
        ----------
        group
            Group name.

        Returns
        -------
        str or None
            The dimension name.
        """
        spec = self._canonical["groups"].get(group)
        return None if spec is None else spec["primary_dimension"]

    def special_processing(self, group: str) -> str | None:
        """Return the merge hint of *group* (``'matrix_flattening'``, ...), or ``None``.

        Parameters
        ----------
        group
            Group name.

        Returns
        -------
        str or None
            ``None`` when the group has no hint or does not exist.
        """
        spec = self._canonical["groups"].get(group)
        return None if spec is None else spec.get("special_processing")

    def array_names(self, group: str) -> tuple[str, ...]:
        """Return the arrays declared in *group*, in schema order (``()`` for no such group).

        Parameters
        ----------
        group
            Group name.

        Returns
        -------
        tuple of str
            The array names.
        """
        return tuple(self._by_group.get(group, ()))

    def _resolve(self, key: str) -> _ArrayInfo | None:
        if "/" not in key:
            return self._by_name.get(key)
        head, _, tail = key.partition("/")
        if head and tail and "/" not in tail:  # the common "group/array" form, without a list
            arrays = self._by_group.get(head)
            return self._by_name.get(tail) if arrays is None else arrays.get(tail)
        parts = [part for part in key.split("/") if part]
        if not parts:
            return None
        if len(parts) == 2:
            arrays = self._by_group.get(parts[0])
            if arrays is not None:
                return arrays.get(parts[1])
        return self._by_name.get(parts[-1])

    def group_for_array(self, name: str) -> str | None:
        """Return the group that declares array *name*, or ``None``.

        Parameters
        ----------
        name
            A bare array name (the first group in schema order that declares it wins); a key
            with ``'/'`` is resolved like :meth:`array_spec` does.

        Returns
        -------
        str or None
            The group name.
        """
        info = self._resolve(name)
        return None if info is None else info.group

    def array_spec(self, key: str) -> tuple[str, str, dict[str, Any]] | None:
        """Return ``(group, array, spec)`` for the array *key* refers to, or ``None``.

        Parameters
        ----------
        key
            ``"group/array"``, a bare array name, or a longer path whose last segment is the
            array (see the class notes for the exact rules).

        Returns
        -------
        tuple or None
            Group name, array name and a copy of ``{'dims', 'dtype', 'description', **rules}``.
        """
        info = self._resolve(key)
        if info is None:
            return None
        spec = self._canonical["groups"][info.group]["arrays"][info.name]
        return info.group, info.name, copy.deepcopy(spec)

    def dims_for(self, key: str) -> tuple[str, ...] | None:
        """Return the declared dims of the array *key* refers to, or ``None``.

        Parameters
        ----------
        key
            As for :meth:`array_spec`.

        Returns
        -------
        tuple of str or None
            The dimension names.
        """
        info = self._resolve(key)
        return None if info is None else info.dims

    def validate_array(self, key: str, data: Any) -> list[str]:
        """Check *data* against the spec of the array *key* refers to.

        Parameters
        ----------
        key
            As for :meth:`array_spec`; a key the schema does not declare is always valid
            (schemas are extensible).
        data
            The value about to be stored; a dict (a group saved at once) is checked array
            by array, each at its own key.

        Returns
        -------
        list of str
            Human-readable problems, each starting with *key*; empty means valid. The rules
            are listed in the class notes. In a ``matrix_flattening`` group an item's
            ``N x N (x k)`` array matches dims whose first entry is the flattened pair axis.
        """
        info = self._resolve(key)
        if info is None:
            if isinstance(data, Mapping):
                # A group saved at once: each of its arrays is checked at its own key.
                return [
                    problem
                    for name, child in data.items()
                    for problem in self.validate_array(f"{key}/{name}", child)
                ]
            return []
        if isinstance(data, Mapping):
            return [
                f"{key}: got a dict, but {info.group}/{info.name} is declared as a "
                f"{info.dtype} array with dims {list(info.dims)}"
            ]
        try:
            arr, inferred = _as_array(data, want_str=info.kind == "U")
        except (TypeError, ValueError, OverflowError) as exc:
            return [f"{key}: cannot be read as an array ({exc})"]
        problems: list[str] = []
        # An item stores a face-pair array as N x N (x k); the merge flattens the first two
        # axes into the group's primary dimension, which is what the schema declares.
        item_matrix = (
            self.special_processing(info.group) == "matrix_flattening"
            and arr.ndim == len(info.dims) + 1
            and arr.shape[0] == arr.shape[1]
        )
        if arr.ndim != len(info.dims) and not item_matrix:
            problems.append(
                f"{key}: expected {len(info.dims)} dimension(s) {list(info.dims)}, "
                f"got {arr.ndim} (shape {arr.shape})"
            )
        if inferred and arr.size == 0:
            return problems
        dtype_problem = _dtype_problem(info, arr, key)
        if dtype_problem is not None:
            problems.append(dtype_problem)
            return problems
        if info.min_value is not None or info.max_value is not None:
            problems.extend(_bounds_problems(info, arr, key))
        values_problem = _values_problem(info, arr, key)
        if values_problem is not None:
            problems.append(values_problem)
        return problems

    # -- metadata -------------------------------------------------------------------------

    @property
    def routing_rules(self) -> dict[str, Any]:
        """A copy of the routing rules (``file_level_patterns``, ``default_numeric``, ...)."""
        return copy.deepcopy(self._canonical["metadata"]["metadata"]["routing_rules"])

    def route_metadata(self, key: str, value: object = None) -> str:
        """Return ``'file_level'`` or ``'categorical'`` for metadata *key* holding *value*.

        The order is: (1) an explicit definition of the full key, or else of its first ``'/'``
        segment; (2) the routing patterns (``*`` wildcards, case-insensitive) against the full
        key and its last segment, file-level patterns first; (3) the type of *value*: ``bool``
        goes to ``default_categorical``, ``str`` to ``default_string``, numbers (Python and
        numpy) to ``default_numeric``, anything else (dicts, lists, ``None``) to
        ``default_categorical``.

        Parameters
        ----------
        key
            The metadata key.
        value
            The value to be stored.

        Returns
        -------
        str
            The destination.
        """
        return self._router.route(key, value)

    def metadata_fields(self) -> dict[str, list[str]]:
        """Return the defined metadata field names by destination.

        Returns
        -------
        dict
            ``{'file_level': [...], 'categorical': [...]}``.
        """
        metadata = self._canonical["metadata"]["metadata"]
        return {
            "file_level": list(metadata["file_level"]),
            "categorical": list(metadata["categorical"]),
        }

    def metadata_definition(self, name: str) -> dict[str, Any] | None:
        """Return a copy of the definition of metadata field *name*, or ``None``.

        Parameters
        ----------
        name
            The field name, exactly as defined.

        Returns
        -------
        dict or None
            ``{'dtype', 'description', 'required', ...}``.
        """
        spec = self._metadata_defs.get(name)
        return None if spec is None else copy.deepcopy(spec)

    def validate_metadata(self, key: str, value: object) -> list[str]:
        """Check *value* against the definition of metadata field *key*.

        Parameters
        ----------
        key
            The field name; a field without a definition accepts anything.
        value
            The value to be stored.

        Returns
        -------
        list of str
            Problems (dtype, ``values``, ``min_value`` / ``max_value``); empty means valid.
        """
        spec = self._metadata_defs.get(key)
        if spec is None:
            return []
        problem = metadata_value_problem(spec, value)
        return [] if problem is None else [f"{key}: {problem}"]
