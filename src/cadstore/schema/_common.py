"""Constants and argument checks shared by the builder, the normaliser and the read view.

Every check raises :class:`cadstore.errors.SchemaError` with a message that starts with the
dotted path of the offending field (``groups.faces.arrays.face_areas.dims: ...``), so a user
holding a hand-written JSON schema can find the mistake without reading our source.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from cadstore.errors import SchemaError

__all__ = [
    "DEFAULT_CATEGORICAL_PATTERNS",
    "DEFAULT_FILE_LEVEL_PATTERNS",
    "DTYPES",
    "DTYPE_KINDS",
    "METADATA_CATEGORIES",
    "SPECIAL_PROCESSING",
    "check_array_rules",
    "check_dims",
    "check_dtype",
    "check_json_value",
    "check_metadata_name",
    "check_name",
    "check_optional_str",
    "check_patterns",
    "check_routing_target",
    "default_routing_rules",
    "describe_type",
    "metadata_value_problem",
]

#: Every dtype name a schema may declare, in the order the documentation lists them.
DTYPES: Final[tuple[str, ...]] = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "str",
    "complex64",
    "complex128",
)

#: The kind family of each dtype, in numpy's one-letter notation; ``"U"`` stands for ``'str'``.
DTYPE_KINDS: Final[Mapping[str, str]] = {
    name: ("U" if name == "str" else np.dtype(name).kind) for name in DTYPES
}

#: The ``special_processing`` values the vendor's merger understands.
SPECIAL_PROCESSING: Final[tuple[str, ...]] = ("matrix_flattening", "nested_edges")

#: The two places a metadata field can be routed to.
METADATA_CATEGORIES: Final[tuple[str, ...]] = ("file_level", "categorical")

#: Routing patterns a schema has before ``set_metadata_routing_rules`` is ever called.
DEFAULT_FILE_LEVEL_PATTERNS: Final[tuple[str, ...]] = (
    "size_*",
    "duration_*",
    "processing_*",
    "flow_name",
)
DEFAULT_CATEGORICAL_PATTERNS: Final[tuple[str, ...]] = (
    "*_label",
    "category",
    "type",
    "material_*",
)


def default_routing_rules() -> dict[str, Any]:
    """Return a fresh copy of the routing rules a new schema starts with.

    Returns
    -------
    dict
        ``routing_rules`` in the key order ``build()`` writes.
    """
    return {
        "file_level_patterns": list(DEFAULT_FILE_LEVEL_PATTERNS),
        "categorical_patterns": list(DEFAULT_CATEGORICAL_PATTERNS),
        "default_numeric": "file_level",
        "default_categorical": "categorical",
        "default_string": "categorical",
    }


def describe_type(value: object) -> str:
    """Name the type of *value* the way error messages print it (``int``, ``list``, ...)."""
    return type(value).__name__


def check_name(value: object, path: str) -> str:
    """Check a group or array name: a non-empty ``str`` without ``'/'``.

    Parameters
    ----------
    value
        The candidate name.
    path
        Dotted path used as the message prefix.

    Returns
    -------
    str
        *value* unchanged.

    Raises
    ------
    SchemaError
        If *value* is not a usable name.
    """
    if not isinstance(value, str):
        raise SchemaError(f"{path}: expected a non-empty str name, got {describe_type(value)}")
    if not value:
        raise SchemaError(f"{path}: a name must not be empty")
    if "/" in value:
        # '/' separates group and array in storage keys, so it cannot be part of a name.
        raise SchemaError(f"{path}: name {value!r} must not contain '/'")
    return value


def check_metadata_name(value: object, path: str) -> str:
    """Check a metadata field name: a non-empty ``str`` whose ``'/'`` segments are non-empty.

    Metadata keys are nested with ``'/'`` (``"file_sizes_KB/face_areas"``), so unlike group and
    array names a metadata name may contain ``'/'``, just not an empty segment.

    Parameters
    ----------
    value
        The candidate name.
    path
        Dotted path used as the message prefix.

    Returns
    -------
    str
        *value* unchanged.

    Raises
    ------
    SchemaError
        If *value* is not a usable metadata name.
    """
    if not isinstance(value, str):
        raise SchemaError(f"{path}: expected a non-empty str name, got {describe_type(value)}")
    if not value or any(not part for part in value.split("/")):
        raise SchemaError(f"{path}: metadata name {value!r} is empty or has an empty '/' segment")
    return value


def check_optional_str(value: object, path: str) -> str:
    """Check a description-like field: ``None`` (stored as ``""``) or a ``str``.

    Parameters
    ----------
    value
        The candidate text.
    path
        Dotted path used as the message prefix.

    Returns
    -------
    str
        The text, ``""`` for ``None``.

    Raises
    ------
    SchemaError
        If *value* is neither ``None`` nor a ``str``.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SchemaError(f"{path}: expected a str or None, got {describe_type(value)}")
    return value


def check_dtype(value: object, path: str) -> str:
    """Return the canonical dtype name for *value*.

    Parameters
    ----------
    value
        One of :data:`DTYPES`, or a numpy dtype / scalar type / Python type that maps to one
        (``np.float32``, ``np.dtype("int64")``, ``bool``, ``str``).
    path
        Dotted path used as the message prefix.

    Returns
    -------
    str
        A member of :data:`DTYPES`.

    Raises
    ------
    SchemaError
        If the dtype is unknown; the message names it and lists the allowed ones.
    """
    allowed = ", ".join(DTYPES)
    if isinstance(value, str):
        if value in DTYPE_KINDS:
            return value
        raise SchemaError(f"{path}: unknown dtype {value!r}; allowed dtypes are {allowed}")
    if value is str:
        return "str"
    if isinstance(value, np.dtype | type):
        try:
            name = np.dtype(value).name
        except TypeError:
            name = None
        if name is not None and name in DTYPE_KINDS:
            return name
    raise SchemaError(f"{path}: unknown dtype {value!r}; allowed dtypes are {allowed}")


def check_dims(value: object, path: str) -> list[str]:
    """Check a list of dimension names.

    Parameters
    ----------
    value
        A ``list`` or ``tuple`` of distinct non-empty ``str``; ``[]`` declares a scalar.
    path
        Dotted path used as the message prefix.

    Returns
    -------
    list of str
        A fresh list.

    Raises
    ------
    SchemaError
        If *value* is not a sequence of distinct non-empty strings.
    """
    if not isinstance(value, list | tuple):
        raise SchemaError(f"{path}: expected a list of str, got {describe_type(value)}")
    dims: list[str] = []
    for index, dim in enumerate(value):
        if not isinstance(dim, str):
            raise SchemaError(f"{path}[{index}]: expected a str, got {describe_type(dim)}")
        if not dim:
            raise SchemaError(f"{path}[{index}]: a dimension name must not be empty")
        if dim in dims:
            # xarray and the merger both index dims by name, so a repeat is ambiguous.
            raise SchemaError(f"{path}: dimension {dim!r} appears more than once")
        dims.append(dim)
    return dims


def check_json_value(value: object, path: str) -> Any:
    """Return a JSON-compatible copy of *value* (tuples become lists, numpy scalars Python).

    Parameters
    ----------
    value
        A rule value or a metadata ``values`` entry.
    path
        Dotted path used as the message prefix.

    Returns
    -------
    Any
        A deep copy made only of ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` and
        ``None``.

    Raises
    ------
    SchemaError
        If *value* contains something JSON cannot hold.
    """
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, np.generic) and not isinstance(value, np.str_ | np.bytes_ | np.void):
        return value.item()
    if isinstance(value, list | tuple):
        return [check_json_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SchemaError(f"{path}: dict keys must be str, got {describe_type(key)}")
            result[key] = check_json_value(item, f"{path}.{key}")
        return result
    raise SchemaError(f"{path}: {describe_type(value)} cannot be stored in a JSON schema")


def _check_bound(value: object, path: str) -> int | float:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"{path}: expected a number, got {describe_type(value)}")
    if isinstance(value, float) and math.isnan(value):
        raise SchemaError(f"{path}: must not be NaN")
    return value


def check_array_rules(rules: Mapping[str, object], path: str) -> dict[str, Any]:
    """Check free-form validation rules and return a JSON-compatible copy.

    ``min_value`` / ``max_value`` must be numbers with ``min_value <= max_value`` and ``values``
    must be a list; any other rule only has to be JSON-compatible (it is kept, not enforced).

    Parameters
    ----------
    rules
        Rule name to value.
    path
        Dotted path of the spec holding the rules.

    Returns
    -------
    dict
        The rules in their original order.

    Raises
    ------
    SchemaError
        If a rule has the wrong shape.
    """
    checked: dict[str, Any] = {}
    for key, value in rules.items():
        if not isinstance(key, str):
            raise SchemaError(f"{path}: rule names must be str, got {describe_type(key)}")
        rule_path = f"{path}.{key}"
        if key in ("min_value", "max_value"):
            checked[key] = None if value is None else _check_bound(value, rule_path)
        elif key == "values":
            if value is not None and not isinstance(value, list | tuple):
                raise SchemaError(f"{rule_path}: expected a list, got {describe_type(value)}")
            checked[key] = check_json_value(value, rule_path)
        else:
            checked[key] = check_json_value(value, rule_path)
    low, high = checked.get("min_value"), checked.get("max_value")
    if low is not None and high is not None and low > high:
        raise SchemaError(f"{path}: min_value {low!r} is greater than max_value {high!r}")
    return checked


def check_patterns(value: object, path: str) -> list[str]:
    """Check a list of routing patterns.

    Parameters
    ----------
    value
        ``None`` (meaning ``[]``) or a list/tuple of non-empty ``str``.
    path
        Dotted path used as the message prefix.

    Returns
    -------
    list of str
        A fresh list.

    Raises
    ------
    SchemaError
        If *value* is a bare ``str`` (a classic slip that would match single letters) or holds
        anything but non-empty strings.
    """
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise SchemaError(f"{path}: expected a list of str patterns, got {describe_type(value)}")
    patterns: list[str] = []
    for index, pattern in enumerate(value):
        if not isinstance(pattern, str) or not pattern:
            raise SchemaError(f"{path}[{index}]: expected a non-empty str pattern, got {pattern!r}")
        patterns.append(pattern)
    return patterns


def check_routing_target(value: object, path: str) -> str:
    """Check a routing default: ``'file_level'`` or ``'categorical'``.

    Parameters
    ----------
    value
        The candidate target.
    path
        Dotted path used as the message prefix.

    Returns
    -------
    str
        *value* unchanged.

    Raises
    ------
    SchemaError
        If *value* is not one of :data:`METADATA_CATEGORIES`.
    """
    if not isinstance(value, str) or value not in METADATA_CATEGORIES:
        raise SchemaError(f"{path}: expected 'file_level' or 'categorical', got {value!r}")
    return value


def _dtype_problem(dtype: str, value: object) -> str | None:
    kind = DTYPE_KINDS[dtype]
    is_bool = isinstance(value, bool | np.bool_)
    if kind == "U":
        ok = isinstance(value, str)
    elif kind == "b":
        ok = is_bool
    elif kind in "iu":
        ok = isinstance(value, numbers.Integral) and not is_bool
        if ok:
            assert isinstance(value, numbers.Integral)  # ok says so
            info = np.iinfo(dtype)
            if not info.min <= int(value) <= info.max:
                return f"{value!r} does not fit in {dtype} ({info.min}..{info.max})"
    elif kind == "f":
        # JSON turns 2.0 into 2, so metadata accepts ints where a float is declared.
        ok = isinstance(value, numbers.Real) and not is_bool
    else:
        ok = isinstance(value, numbers.Number) and not is_bool
    if not ok:
        return f"{value!r} ({describe_type(value)}) is not a valid {dtype}"
    return None


def metadata_value_problem(spec: Mapping[str, Any], value: object) -> str | None:
    """Say what is wrong with *value* for the metadata field described by *spec*.

    Checks, in order: the value suits the declared dtype (numbers are accepted for any float
    dtype because JSON does not keep ``2`` and ``2.0`` apart; integers must fit the range),
    membership in ``values`` when that list is set, and ``min_value`` / ``max_value``.

    Parameters
    ----------
    spec
        The field's definition (``dtype`` and optional rules).
    value
        The candidate value.

    Returns
    -------
    str or None
        A human-readable problem, or ``None`` when the value is acceptable.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    dtype = spec.get("dtype")
    if isinstance(dtype, str) and dtype in DTYPE_KINDS:
        problem = _dtype_problem(dtype, value)
        if problem is not None:
            return problem
    if isinstance(value, np.generic):
        value = value.item()
    allowed = spec.get("values")
    if allowed is not None and value not in allowed:
        return f"{value!r} is not one of the allowed values {allowed!r}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = spec.get("min_value"), spec.get("max_value")
        if isinstance(low, int | float) and value < low:
            return f"{value!r} is below min_value {low!r}"
        if isinstance(high, int | float) and value > high:
            return f"{value!r} is above max_value {high!r}"
    return None
