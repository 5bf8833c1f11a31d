"""Turn any schema dictionary we may meet into the one canonical form.

Schemas reach cadstore as the dict ``SchemaBuilder.build()`` returns, as that dict after a JSON
round trip, as the single-nested form the vendor documentation shows, or hand-written with the
Quick Reference spellings (``base_dimension``, ``dimensions``). :func:`normalize_schema` accepts
all of them and returns the form ``build()`` writes, so the rest of the library reads one shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cadstore.errors import SchemaError
from cadstore.schema._common import (
    check_array_rules,
    check_dims,
    check_dtype,
    check_metadata_name,
    check_name,
    check_optional_str,
    check_patterns,
    check_routing_target,
    default_routing_rules,
    describe_type,
)

__all__ = ["normalize_schema"]

_TOP_KEYS = ("version", "domain", "groups", "description", "metadata")
_GROUP_KEYS = ("primary_dimension", "base_dimension", "arrays", "description", "special_processing")
_METADATA_KEYS = ("file_level", "categorical", "routing_rules")
_ROUTING_KEYS = (
    "file_level_patterns",
    "categorical_patterns",
    "default_numeric",
    "default_categorical",
    "default_string",
)


def _require_mapping(value: object, path: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise SchemaError(f"{path}: expected a dict, got {describe_type(value)}")
    return value


def _reject_unknown(mapping: Mapping[Any, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise SchemaError(f"{path}: unknown key {key!r}; expected only {', '.join(allowed)}")


def _same(first: object, second: object) -> bool:
    # A tuple and a list of the same names mean the same dims.
    if isinstance(first, list | tuple) and isinstance(second, list | tuple):
        return list(first) == list(second)
    try:
        return type(first) is type(second) and bool(first == second)
    except ValueError:  # numpy arrays refuse bool(); treat them as different
        return False


def _pick_alias(
    mapping: Mapping[Any, Any], main: str, alias: str, path: str
) -> tuple[bool, object]:
    """Return ``(found, value)`` for a field that has two accepted spellings."""
    if main in mapping and alias in mapping and not _same(mapping[main], mapping[alias]):
        raise SchemaError(
            f"{path}: {main} {mapping[main]!r} and {alias} {mapping[alias]!r} disagree; "
            f"give only one of them"
        )
    if main in mapping:
        return True, mapping[main]
    if alias in mapping:
        return True, mapping[alias]
    return False, None


def normalize_array_spec(spec: object, path: str) -> dict[str, Any]:
    """Return the canonical ``{'dims', 'dtype', 'description', **rules}`` for one array.

    Parameters
    ----------
    spec
        The array's dict; ``dimensions`` is accepted for ``dims`` and a missing ``dtype`` means
        ``'float32'`` (the builder's default).
    path
        Dotted path of the array, used in error messages.

    Returns
    -------
    dict
        A fresh canonical spec.

    Raises
    ------
    SchemaError
        If a field has the wrong shape.
    """
    spec = _require_mapping(spec, path)
    found, dims = _pick_alias(spec, "dims", "dimensions", path)
    if not found:
        raise SchemaError(f"{path}.dims: missing (give the list of dimension names)")
    result: dict[str, Any] = {
        "dims": check_dims(dims, f"{path}.dims"),
        "dtype": check_dtype(spec.get("dtype", "float32"), f"{path}.dtype"),
        "description": check_optional_str(spec.get("description"), f"{path}.description"),
    }
    rules = {
        key: value
        for key, value in spec.items()
        if key not in ("dims", "dimensions", "dtype", "description")
    }
    result.update(check_array_rules(rules, path))
    return result


def normalize_group(group: object, path: str) -> dict[str, Any]:
    """Return the canonical dict of one group.

    Parameters
    ----------
    group
        The group's dict; ``base_dimension`` is accepted for ``primary_dimension``.
    path
        Dotted path of the group, used in error messages.

    Returns
    -------
    dict
        ``{'primary_dimension', 'arrays', 'description'}`` plus ``special_processing`` when set.

    Raises
    ------
    SchemaError
        If a field has the wrong shape.
    """
    group = _require_mapping(group, path)
    _reject_unknown(group, _GROUP_KEYS, path)
    found, primary = _pick_alias(group, "primary_dimension", "base_dimension", path)
    if not found:
        raise SchemaError(f"{path}.primary_dimension: missing")
    if not isinstance(primary, str) or not primary:
        raise SchemaError(f"{path}.primary_dimension: expected a non-empty str, got {primary!r}")
    arrays_in = group.get("arrays")
    arrays_in = {} if arrays_in is None else _require_mapping(arrays_in, f"{path}.arrays")
    arrays: dict[str, Any] = {}
    for name, spec in arrays_in.items():
        array_path = f"{path}.arrays.{name}"
        check_name(name, array_path)
        arrays[name] = normalize_array_spec(spec, array_path)
    result: dict[str, Any] = {
        "primary_dimension": primary,
        "arrays": arrays,
        "description": check_optional_str(group.get("description"), f"{path}.description"),
    }
    special = group.get("special_processing")
    if special is not None:
        if not isinstance(special, str) or not special:
            raise SchemaError(
                f"{path}.special_processing: expected a non-empty str or None, got {special!r}"
            )
        result["special_processing"] = special
    return result


def normalize_metadata_field(spec: object, category: str, path: str) -> dict[str, Any]:
    """Return the canonical definition of one metadata field.

    Parameters
    ----------
    spec
        The field's dict; ``dtype`` is required.
    category
        ``'file_level'`` (key order ``dtype, description, required``) or ``'categorical'`` (key
        order ``dtype, required, description``, then ``values`` and ``labels`` when present);
        the orders are the ones the vendor's ``build()`` writes.
    path
        Dotted path of the field, used in error messages.

    Returns
    -------
    dict
        A fresh canonical definition, rules last.

    Raises
    ------
    SchemaError
        If a field has the wrong shape.
    """
    spec = _require_mapping(spec, path)
    if "dtype" not in spec:
        raise SchemaError(f"{path}.dtype: missing")
    dtype = check_dtype(spec["dtype"], f"{path}.dtype")
    description = check_optional_str(spec.get("description"), f"{path}.description")
    required = spec.get("required", False)
    if not isinstance(required, bool):
        raise SchemaError(f"{path}.required: expected a bool, got {describe_type(required)}")
    rules = check_array_rules(
        {k: v for k, v in spec.items() if k not in ("dtype", "description", "required")}, path
    )
    values, labels = rules.get("values"), rules.get("labels")
    if labels is not None:
        if not isinstance(labels, list):
            raise SchemaError(f"{path}.labels: expected a list, got {describe_type(labels)}")
        if values is None:
            raise SchemaError(f"{path}.labels: labels need a values list to label")
        if len(labels) != len(values):
            raise SchemaError(
                f"{path}.labels: {len(labels)} labels for {len(values)} values; "
                f"give one label per value"
            )
    if category == "file_level":
        return {"dtype": dtype, "description": description, "required": required, **rules}
    result: dict[str, Any] = {"dtype": dtype, "required": required, "description": description}
    for key in ("values", "labels"):
        if rules.get(key) is not None:
            result[key] = rules[key]
    result.update((k, v) for k, v in rules.items() if k not in ("values", "labels"))
    return result


def normalize_routing_rules(rules: object, path: str) -> dict[str, Any]:
    """Return canonical routing rules; an omitted pattern list is ``[]``.

    Parameters
    ----------
    rules
        The ``routing_rules`` dict.
    path
        Dotted path, used in error messages.

    Returns
    -------
    dict
        The five routing keys in ``build()`` order.

    Raises
    ------
    SchemaError
        If a field has the wrong shape.
    """
    rules = _require_mapping(rules, path)
    _reject_unknown(rules, _ROUTING_KEYS, path)
    defaults = default_routing_rules()
    return {
        "file_level_patterns": check_patterns(
            rules.get("file_level_patterns"), f"{path}.file_level_patterns"
        ),
        "categorical_patterns": check_patterns(
            rules.get("categorical_patterns"), f"{path}.categorical_patterns"
        ),
        **{
            key: check_routing_target(rules.get(key, defaults[key]), f"{path}.{key}")
            for key in ("default_numeric", "default_categorical", "default_string")
        },
    }


def normalize_metadata(metadata: object) -> dict[str, Any]:
    """Return the canonical double-nested ``{'metadata': {...}}`` section.

    Parameters
    ----------
    metadata
        The schema's ``metadata`` value in either nesting, or ``None`` for a schema without
        one (which gets no field definitions and the default routing rules).

    Returns
    -------
    dict
        ``{'metadata': {'file_level', 'categorical', 'routing_rules'}}``.

    Raises
    ------
    SchemaError
        If a field has the wrong shape.
    """
    path = "metadata"
    if metadata is None:
        metadata = {}
    metadata = _require_mapping(metadata, path)
    if "metadata" in metadata:
        extra = [key for key in metadata if key != "metadata"]
        if extra:
            raise SchemaError(
                f"{path}: has a nested 'metadata' section and also {extra[0]!r} beside it; "
                f"use one nesting level"
            )
        path = "metadata.metadata"
        inner = metadata["metadata"]
        metadata = {} if inner is None else _require_mapping(inner, path)
    _reject_unknown(metadata, _METADATA_KEYS, path)
    sections: dict[str, dict[str, Any]] = {}
    for category in ("file_level", "categorical"):
        section_path = f"{path}.{category}"
        fields = metadata.get(category)
        fields = {} if fields is None else _require_mapping(fields, section_path)
        section: dict[str, Any] = {}
        for name, spec in fields.items():
            field_path = f"{section_path}.{name}"
            check_metadata_name(name, field_path)
            if category == "categorical" and name in sections["file_level"]:
                raise SchemaError(
                    f"{field_path}: also defined in {path}.file_level; a field has one home"
                )
            section[name] = normalize_metadata_field(spec, category, field_path)
        sections[category] = section
    routing = metadata.get("routing_rules")
    return {
        "metadata": {
            "file_level": sections["file_level"],
            "categorical": sections["categorical"],
            "routing_rules": (
                default_routing_rules()
                if routing is None
                else normalize_routing_rules(routing, f"{path}.routing_rules")
            ),
        }
    }


def normalize_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a schema dictionary and return a fresh copy in the canonical ``build()`` form.

    Accepted inputs:

    * what ``SchemaBuilder.build()`` returns, also after ``json.loads(json.dumps(...))``;
    * ``metadata`` nested once (``{'file_level', 'categorical', 'routing_rules'}``, as the
      vendor documentation shows) or twice (``{'metadata': {...}}``, as the product writes);
    * no ``metadata`` at all (no field definitions, default routing rules), and every other
      top-level key may be omitted too (``version`` ``'1.0'``, ``domain`` ``'default'``, no
      groups, ``description`` ``''``), so ``{}`` is the empty schema;
    * ``base_dimension`` for ``primary_dimension`` and ``dimensions`` for ``dims`` (both
      spellings together must agree);
    * ``None`` for any description (stored as ``''``).

    Unknown keys at the top level, in a group, in the metadata section or in the routing rules
    are errors (they are most likely typos and would otherwise be dropped silently); unknown
    keys in an array or metadata field spec are validation rules and are kept in order.

    Parameters
    ----------
    schema
        The schema dictionary.

    Returns
    -------
    dict
        ``{'version', 'domain', 'groups', 'description', 'metadata': {'metadata': {...}}}``, in
        that key order, sharing no mutable object with *schema*.

    Raises
    ------
    SchemaError
        If anything has the wrong shape; the message starts with the dotted path of the field,
        e.g. ``groups.faces.arrays.face_areas.dims: expected a list of str, got int``.
    """
    schema = _require_mapping(schema, "schema")
    _reject_unknown(schema, _TOP_KEYS, "schema")
    version = schema.get("version", "1.0")
    if not isinstance(version, str) or not version:
        raise SchemaError(f"version: expected a non-empty str, got {version!r}")
    domain = schema.get("domain", "default")
    if not isinstance(domain, str) or not domain:
        raise SchemaError(f"domain: expected a non-empty str, got {domain!r}")
    groups_in = schema.get("groups")
    groups_in = {} if groups_in is None else _require_mapping(groups_in, "groups")
    groups: dict[str, Any] = {}
    for name, group in groups_in.items():
        path = f"groups.{name}"
        check_name(name, path)
        groups[name] = normalize_group(group, path)
    return {
        "version": version,
        "domain": domain,
        "groups": groups,
        "description": check_optional_str(schema.get("description"), "description"),
        "metadata": normalize_metadata(schema.get("metadata")),
    }
