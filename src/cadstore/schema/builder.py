"""``SchemaBuilder`` and ``Group``: build a schema dictionary call by call.

The API follows the vendor's ``hoops_ai.storage.datasetstorage.schema_builder`` so existing
scripts run after changing the import. Where the vendor documentation and the product spell
things differently, both spellings are accepted (``primary_dimension`` / ``base_dimension``,
``dimensions`` / ``dims``), and :meth:`SchemaBuilder.build` writes exactly the dict the product
writes, including the double-nested ``schema['metadata']['metadata']``.

Examples
--------
>>> from cadstore.schema import SchemaBuilder
>>> builder = SchemaBuilder(domain="CAD_analysis")
>>> faces = builder.create_group("faces", "face", "Face data")
>>> faces.create_array("face_areas", ["face"], "float32")
>>> builder.build()["groups"]["faces"]["arrays"]["face_areas"]
{'dims': ['face'], 'dtype': 'float32', 'description': ''}
"""

from __future__ import annotations

import copy
import functools
import json
import os
import types
from collections.abc import Callable, Mapping
from typing import Any

from cadstore.errors import SchemaError, StorageNotFoundError, UnknownFormatError
from cadstore.format.jsoncodec import parse_document
from cadstore.format.manifest import FLOW_FORMAT
from cadstore.io.location import resolve
from cadstore.io.publish import write_bytes_atomic
from cadstore.io.sources import other_kind
from cadstore.schema._common import (
    check_dims,
    check_metadata_name,
    check_name,
    check_optional_str,
    check_patterns,
    check_routing_target,
    default_routing_rules,
    metadata_value_problem,
)
from cadstore.schema._routing import MetadataRouter
from cadstore.schema.normalize import (
    normalize_array_spec,
    normalize_metadata_field,
    normalize_schema,
)
from cadstore.schema.templates import SchemaTemplates

__all__ = [
    "Group",
    "SchemaBuilder",
    "create_cad_schema",
    "create_custom_schema",
    "create_manufacturing_schema",
    "create_sensor_schema",
]


def _check_dimension(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise SchemaError(f"{path}: expected a non-empty str, got {value!r}")
    return value


def _check_special_processing(value: object, path: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise SchemaError(f"{path}: expected a non-empty str or None, got {value!r}")
    return value


class Group:
    """A named set of arrays that share a primary dimension.

    Groups are normally made with :meth:`SchemaBuilder.create_group`.

    Parameters
    ----------
    name
        Group name, non-empty and without ``'/'``.
    primary_dimension
        The dimension items are concatenated along when stores are merged.
    description
        Free text; ``None`` is stored as ``''``.
    special_processing
        A merge hint such as ``'matrix_flattening'`` (face-pair arrays) or ``'nested_edges'``.

    Raises
    ------
    SchemaError
        If an argument has the wrong type or value.
    """

    def __init__(
        self,
        name: str,
        primary_dimension: str,
        description: str | None = None,
        special_processing: str | None = None,
    ) -> None:
        self._name = check_name(name, "group name")
        path = f"groups.{name}"
        self._primary_dimension = _check_dimension(primary_dimension, f"{path}.primary_dimension")
        self._description = check_optional_str(description, f"{path}.description")
        self._special_processing = _check_special_processing(
            special_processing, f"{path}.special_processing"
        )
        self._arrays: dict[str, dict[str, Any]] = {}

    @property
    def name(self) -> str:
        """The group name."""
        return self._name

    @property
    def primary_dimension(self) -> str:
        """The dimension items are concatenated along when merging."""
        return self._primary_dimension

    @property
    def description(self) -> str:
        """Free-text description (``''`` when none was given)."""
        return self._description

    @description.setter
    def description(self, value: str | None) -> None:
        self._description = check_optional_str(value, f"groups.{self._name}.description")

    @property
    def special_processing(self) -> str | None:
        """Merge hint such as ``'matrix_flattening'``, or ``None``."""
        return self._special_processing

    @special_processing.setter
    def special_processing(self, value: str | None) -> None:
        self._special_processing = _check_special_processing(
            value, f"groups.{self._name}.special_processing"
        )

    def create_array(
        self,
        name: str,
        dimensions: list[str] | tuple[str, ...] | None = None,
        dtype: Any = "float32",
        description: str | None = None,
        *,
        dims: list[str] | tuple[str, ...] | None = None,
        **validation_rules: Any,
    ) -> None:
        """Declare array *name* in this group; re-declaring a name replaces its spec.

        Parameters
        ----------
        name
            Array name, non-empty and without ``'/'``.
        dimensions
            Ordered dimension names; ``[]`` declares a scalar.
        dtype
            One of the allowed dtype names (``'float32'``, ``'int64'``, ``'bool'``, ``'str'``,
            ...) or a numpy type that maps to one.
        description
            Free text; ``None`` is stored as ``''``.
        dims
            Same as *dimensions* (the Quick Reference spelling); give either, or both equal.
        **validation_rules
            Free-form rules stored in the spec. ``min_value`` / ``max_value`` (numbers) and
            ``values`` (list of allowed values) are enforced by :meth:`Schema.validate_array`;
            other rules are kept but not enforced.

        Raises
        ------
        SchemaError
            If an argument is invalid; the message names the field.
        """
        check_name(name, f"groups.{self._name}.arrays name")
        path = f"groups.{self._name}.arrays.{name}"
        if dimensions is None and dims is None:
            raise SchemaError(f"{path}.dims: missing; pass dimensions=[...] (or dims=[...])")
        if dimensions is not None and dims is not None:
            given = check_dims(dimensions, f"{path}.dimensions")
            if given != check_dims(dims, f"{path}.dims"):
                raise SchemaError(
                    f"{path}: dimensions {list(dimensions)!r} and dims {list(dims)!r} disagree; "
                    f"give only one of them"
                )
        raw = {
            "dims": dims if dimensions is None else dimensions,
            "dtype": dtype,
            "description": description,
            **validation_rules,
        }
        self._arrays[name] = normalize_array_spec(raw, path)

    def get_array(self, name: str) -> dict[str, Any] | None:
        """Return a copy of the spec of array *name*, or ``None`` if it is not declared.

        Parameters
        ----------
        name
            Array name.

        Returns
        -------
        dict or None
            ``{'dims', 'dtype', 'description', **rules}``.
        """
        spec = self._arrays.get(name)
        return None if spec is None else copy.deepcopy(spec)

    def get_arrays(self) -> dict[str, dict[str, Any]]:
        """Return copies of all array specs, in declaration order.

        Returns
        -------
        dict
            Array name to spec.
        """
        return copy.deepcopy(self._arrays)

    def list_arrays(self) -> list[str]:
        """Return the array names in declaration order.

        Returns
        -------
        list of str
            The names.
        """
        return list(self._arrays)

    def remove_array(self, name: str) -> bool:
        """Remove array *name*.

        Parameters
        ----------
        name
            Array name.

        Returns
        -------
        bool
            ``True`` if it was declared, ``False`` otherwise.
        """
        return self._arrays.pop(name, None) is not None

    def to_dict(self) -> dict[str, Any]:
        """Return the group in the ``build()`` form.

        Returns
        -------
        dict
            ``{'primary_dimension', 'arrays', 'description'}``, plus ``special_processing`` when
            set; a fresh copy.
        """
        result: dict[str, Any] = {
            "primary_dimension": self._primary_dimension,
            "arrays": copy.deepcopy(self._arrays),
            "description": self._description,
        }
        if self._special_processing is not None:
            result["special_processing"] = self._special_processing
        return result

    def __contains__(self, name: object) -> bool:
        return name in self._arrays

    def __repr__(self) -> str:
        return (
            f"Group({self._name!r}, primary_dimension={self._primary_dimension!r}, "
            f"arrays={list(self._arrays)!r})"
        )


class _BuilderMethod:
    """Bind a builder method to the instance, or to a fresh ``cls()`` when read on the class.

    The vendor documents ``SchemaBuilder().from_template(...)``; the classmethod-looking
    ``SchemaBuilder.from_template(...)`` is just as natural to write, so both work.
    """

    def __init__(self, func: Callable[..., SchemaBuilder]) -> None:
        self._func = func
        # typeshed wants a callable wrapper; copying the name and docstring onto a
        # descriptor works as well.
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, instance: object, owner: type | None = None) -> Callable[..., SchemaBuilder]:
        if instance is None:
            assert owner is not None
            instance = owner()
        return types.MethodType(self._func, instance)


class SchemaBuilder:
    """Build a schema dictionary: groups of arrays, metadata definitions and routing rules.

    Parameters
    ----------
    domain
        Name of the schema's domain, e.g. ``'CAD_analysis'``.
    version
        Schema version string.
    description
        Free text; ``None`` is stored as ``''``.

    Raises
    ------
    SchemaError
        If an argument has the wrong type.

    See Also
    --------
    cadstore.schema.Schema : the read-only view storages use.
    cadstore.schema.normalize_schema : validate a schema dict from elsewhere.
    """

    def __init__(
        self, domain: str = "default", version: str = "1.0", description: str | None = None
    ) -> None:
        self.domain = domain
        self.version = version
        self.description = description
        self._groups: dict[str, Group] = {}
        self._file_level: dict[str, dict[str, Any]] = {}
        self._categorical: dict[str, dict[str, Any]] = {}
        self._routing: dict[str, Any] = default_routing_rules()

    # -- identity -------------------------------------------------------------------------

    @property
    def domain(self) -> str:
        """The schema's domain name."""
        return self._domain

    @domain.setter
    def domain(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise SchemaError(f"domain: expected a non-empty str, got {value!r}")
        self._domain = value

    @property
    def version(self) -> str:
        """The schema's version string."""
        return self._version

    @version.setter
    def version(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise SchemaError(f"version: expected a non-empty str, got {value!r}")
        self._version = value

    @property
    def description(self) -> str:
        """Free-text description (``''`` when none was given)."""
        return self._description

    @description.setter
    def description(self, value: str | None) -> None:
        self._description = check_optional_str(value, "description")

    # -- groups ---------------------------------------------------------------------------

    def create_group(
        self,
        name: str,
        primary_dimension: str | None = None,
        description: str | None = None,
        special_processing: str | None = None,
        *,
        base_dimension: str | None = None,
    ) -> Group:
        """Create group *name*, or return it if it already exists with the same dimension.

        Parameters
        ----------
        name
            Group name, non-empty and without ``'/'``.
        primary_dimension
            The dimension items are concatenated along when merging.
        description
            Free text; ``None`` is stored as ``''``.
        special_processing
            Merge hint: ``'matrix_flattening'`` (face-pair arrays) or ``'nested_edges'``.
        base_dimension
            Same as *primary_dimension* (the Quick Reference spelling); give either, or both
            equal.

        Returns
        -------
        Group
            The group, to declare arrays on.

        Raises
        ------
        SchemaError
            If no primary dimension is given, the two spellings disagree, an argument is
            invalid, or the group exists with a different primary dimension.

        Notes
        -----
        Calling this again for an existing group with the same primary dimension returns the
        existing group (keeping its arrays) and updates its description and special
        processing when those are given, so "make sure the group exists" code is idempotent.
        """
        check_name(name, "group name")
        path = f"groups.{name}"
        if primary_dimension is None and base_dimension is None:
            raise SchemaError(
                f"{path}.primary_dimension: missing; pass primary_dimension (or base_dimension)"
            )
        if (
            primary_dimension is not None
            and base_dimension is not None
            and primary_dimension != base_dimension
        ):
            raise SchemaError(
                f"{path}: primary_dimension {primary_dimension!r} and base_dimension "
                f"{base_dimension!r} disagree; give only one of them"
            )
        primary = primary_dimension if primary_dimension is not None else base_dimension
        assert primary is not None
        existing = self._groups.get(name)
        if existing is None:
            group = Group(name, primary, description, special_processing)
            self._groups[name] = group
            return group
        if existing.primary_dimension != primary:
            raise SchemaError(
                f"{path}: already exists with primary_dimension "
                f"{existing.primary_dimension!r}, not {primary!r}; remove_group() it first"
            )
        if description is not None:
            existing.description = description
        if special_processing is not None:
            existing.special_processing = special_processing
        return existing

    def get_group(self, name: str) -> Group | None:
        """Return group *name*, or ``None``.

        Parameters
        ----------
        name
            Group name.

        Returns
        -------
        Group or None
            The live group (changes to it change this builder).
        """
        return self._groups.get(name)

    def remove_group(self, name: str) -> bool:
        """Remove group *name* and its arrays.

        Parameters
        ----------
        name
            Group name.

        Returns
        -------
        bool
            ``True`` if it existed.
        """
        return self._groups.pop(name, None) is not None

    def list_groups(self) -> list[str]:
        """Return the group names in creation order.

        Returns
        -------
        list of str
            The names.
        """
        return list(self._groups)

    # -- metadata -------------------------------------------------------------------------

    def _metadata_spec(
        self,
        category: str,
        name: str,
        dtype: Any,
        description: str | None,
        required: bool,
        rules: dict[str, Any],
    ) -> dict[str, Any]:
        path = f"metadata.{category}.{name}"
        check_metadata_name(name, path)
        raw = {"dtype": dtype, "description": description, "required": required, **rules}
        return normalize_metadata_field(raw, category, path)

    def define_file_metadata(
        self,
        name: str,
        dtype: Any,
        description: str | None = None,
        required: bool = False,
        **rules: Any,
    ) -> None:
        """Define a file-level metadata field (routed to the ``.infoset`` table).

        A field defined earlier as categorical moves to file-level.

        Parameters
        ----------
        name
            Field name; ``'/'`` nests (``"processing/duration"``).
        dtype
            One of the allowed dtype names.
        description
            Free text; ``None`` is stored as ``''``.
        required
            Whether every item must carry the field.
        **rules
            Free-form rules such as ``min_value`` / ``max_value``.

        Raises
        ------
        SchemaError
            If an argument is invalid.
        """
        spec = self._metadata_spec("file_level", name, dtype, description, required, rules)
        self._categorical.pop(name, None)
        self._file_level[name] = spec

    def define_categorical_metadata(
        self,
        name: str,
        dtype: Any,
        description: str | None = None,
        values: list[Any] | tuple[Any, ...] | None = None,
        labels: list[str] | tuple[str, ...] | None = None,
        required: bool = False,
        **rules: Any,
    ) -> None:
        """Define a categorical metadata field (routed to the ``.attribset`` table).

        A field defined earlier as file-level moves to categorical.

        Parameters
        ----------
        name
            Field name; ``'/'`` nests.
        dtype
            One of the allowed dtype names.
        description
            Free text; ``None`` is stored as ``''``.
        values
            The allowed values, checked by :meth:`validate_metadata_field`.
        labels
            Display names, one per entry of *values*.
        required
            Whether every item must carry the field.
        **rules
            Further free-form rules.

        Raises
        ------
        SchemaError
            If an argument is invalid, e.g. *labels* without *values* or of another length.
        """
        extra: dict[str, Any] = {}
        if values is not None:
            extra["values"] = values
        if labels is not None:
            extra["labels"] = labels
        spec = self._metadata_spec(
            "categorical", name, dtype, description, required, {**extra, **rules}
        )
        self._file_level.pop(name, None)
        self._categorical[name] = spec

    def set_metadata_routing_rules(
        self,
        file_level_patterns: list[str] | tuple[str, ...] | None = None,
        categorical_patterns: list[str] | tuple[str, ...] | None = None,
        default_numeric: str = "file_level",
        default_categorical: str = "categorical",
        default_string: str = "categorical",
    ) -> None:
        """Replace the metadata routing rules.

        A pattern list you pass replaces that list; a list you omit becomes ``[]`` (the
        product's behaviour), so pass both lists to keep both. Patterns use ``*`` wildcards and
        match case-insensitively against the full key and its last ``'/'`` segment.

        Parameters
        ----------
        file_level_patterns
            Patterns of keys routed to ``.infoset``.
        categorical_patterns
            Patterns of keys routed to ``.attribset``.
        default_numeric
            Destination of unmatched numeric values.
        default_categorical
            Destination of unmatched bools, lists, dicts and other values.
        default_string
            Destination of unmatched strings.

        Raises
        ------
        SchemaError
            If a list is not a list of non-empty strings or a default is not ``'file_level'``
            or ``'categorical'``.
        """
        path = "metadata.routing_rules"
        self._routing = {
            "file_level_patterns": check_patterns(
                file_level_patterns, f"{path}.file_level_patterns"
            ),
            "categorical_patterns": check_patterns(
                categorical_patterns, f"{path}.categorical_patterns"
            ),
            "default_numeric": check_routing_target(default_numeric, f"{path}.default_numeric"),
            "default_categorical": check_routing_target(
                default_categorical, f"{path}.default_categorical"
            ),
            "default_string": check_routing_target(default_string, f"{path}.default_string"),
        }

    def get_metadata_routing(self, field: str, value: object = None) -> str:
        """Return where metadata *field* would be routed.

        Parameters
        ----------
        field
            Metadata key.
        value
            Optional example value, used only when neither a definition nor a pattern decides
            (then ``None`` routes like a non-numeric value, to ``default_categorical``).

        Returns
        -------
        str
            ``'file_level'`` or ``'categorical'``.
        """
        router = MetadataRouter(self._file_level, self._categorical, self._routing)
        return router.route(field, value)

    def list_metadata_fields(self) -> dict[str, list[str]]:
        """Return the defined metadata field names by destination.

        Returns
        -------
        dict
            ``{'file_level': [...], 'categorical': [...]}``.
        """
        return {"file_level": list(self._file_level), "categorical": list(self._categorical)}

    def validate_metadata_field(self, name: str, value: object) -> bool:
        """Check *value* against the definition of metadata field *name*.

        Parameters
        ----------
        name
            Field name; an undefined field accepts anything.
        value
            Candidate value.

        Returns
        -------
        bool
            ``False`` if the value does not suit the declared dtype, is not in ``values``, or
            is outside ``min_value`` / ``max_value``.
        """
        spec = self._file_level.get(name) or self._categorical.get(name)
        return spec is None or metadata_value_problem(spec, value) is None

    def validate_metadata_schema(self) -> list[str]:
        """Look for inconsistencies in the metadata definitions and routing rules.

        Reported: an allowed value that does not suit the field's dtype or its bounds, a
        repeated allowed value, and a pattern listed for both destinations (file-level wins).

        Returns
        -------
        list of str
            Problems; empty means valid.
        """
        errors: list[str] = []
        for category, fields in (
            ("file_level", self._file_level),
            ("categorical", self._categorical),
        ):
            for name, spec in fields.items():
                values = spec.get("values")
                if not isinstance(values, list):
                    continue
                for index, allowed in enumerate(values):
                    problem = metadata_value_problem({**spec, "values": None}, allowed)
                    if problem is not None:
                        errors.append(f"metadata.{category}.{name}.values[{index}]: {problem}")
                    elif values.index(allowed) != index:
                        errors.append(
                            f"metadata.{category}.{name}.values[{index}]: "
                            f"{allowed!r} is listed more than once"
                        )
        file_level = {p.lower() for p in self._routing["file_level_patterns"]}
        for pattern in self._routing["categorical_patterns"]:
            if pattern.lower() in file_level:
                errors.append(
                    f"metadata.routing_rules: pattern {pattern!r} is in both "
                    f"file_level_patterns and categorical_patterns (file_level wins)"
                )
        return errors

    # -- templates ------------------------------------------------------------------------

    def _add_schema(self, schema: Mapping[str, Any], *, replace: bool) -> None:
        if replace:
            self._groups = {}
            self._file_level = {}
            self._categorical = {}
            self._routing = copy.deepcopy(schema["metadata"]["metadata"]["routing_rules"])
        for name in schema["groups"]:
            if name in self._groups:
                raise SchemaError(
                    f"groups.{name}: the template defines this group too; "
                    f"remove_group({name!r}) first or rename yours"
                )
        for name, group_dict in schema["groups"].items():
            group = Group(
                name,
                group_dict["primary_dimension"],
                group_dict["description"],
                group_dict.get("special_processing"),
            )
            group._arrays = copy.deepcopy(group_dict["arrays"])
            self._groups[name] = group
        metadata = schema["metadata"]["metadata"]
        # Definitions the user already made win over the template's.
        for name, spec in metadata["file_level"].items():
            if name not in self._file_level and name not in self._categorical:
                self._file_level[name] = copy.deepcopy(spec)
        for name, spec in metadata["categorical"].items():
            if name not in self._file_level and name not in self._categorical:
                self._categorical[name] = copy.deepcopy(spec)

    @_BuilderMethod
    def from_template(self, name: str) -> SchemaBuilder:
        """Replace this builder's groups, metadata and routing rules with template *name*.

        The template's domain and description are taken only while this builder still has the
        defaults (domain ``'default'``, empty description); the version is kept. Works on an
        instance (``SchemaBuilder().from_template('cad_basic')``, as documented by the vendor)
        and on the class (``SchemaBuilder.from_template('cad_basic')``).

        Parameters
        ----------
        name
            One of :meth:`SchemaTemplates.list_templates`.

        Returns
        -------
        SchemaBuilder
            This builder.

        Raises
        ------
        SchemaError
            If there is no such template.
        """
        template = SchemaTemplates.get_template(name)
        self._add_schema(template, replace=True)
        if self._domain == "default":
            self._domain = template["domain"]
        if not self._description:
            self._description = template["description"]
        return self

    @_BuilderMethod
    def extend_template(self, name: str) -> SchemaBuilder:
        """Add template *name*'s groups and metadata definitions to this builder.

        Domain, version, description and routing rules stay as they are, and metadata fields
        already defined here keep their definitions.

        Parameters
        ----------
        name
            One of :meth:`SchemaTemplates.list_templates`.

        Returns
        -------
        SchemaBuilder
            This builder, to add custom groups to.

        Raises
        ------
        SchemaError
            If there is no such template, or it defines a group this builder already has.
        """
        self._add_schema(SchemaTemplates.get_template(name), replace=False)
        return self

    # -- output ---------------------------------------------------------------------------

    def build(self) -> dict[str, Any]:
        """Return the schema dictionary, exactly in the form the vendor's ``build()`` returns.

        Returns
        -------
        dict
            ``{'version', 'domain', 'groups', 'description', 'metadata': {'metadata':
            {'file_level', 'categorical', 'routing_rules'}}}`` in that key order; a fresh copy
            that shares nothing with the builder.
        """
        return {
            "version": self._version,
            "domain": self._domain,
            "groups": {name: group.to_dict() for name, group in self._groups.items()},
            "description": self._description,
            "metadata": {
                "metadata": {
                    "file_level": copy.deepcopy(self._file_level),
                    "categorical": copy.deepcopy(self._categorical),
                    "routing_rules": copy.deepcopy(self._routing),
                }
            },
        }

    def to_json(self, indent: int | None = 2) -> str:
        """Return :meth:`build` as JSON text.

        Parameters
        ----------
        indent
            Passed to :func:`json.dumps`.

        Returns
        -------
        str
            The JSON document.
        """
        return json.dumps(self.build(), indent=indent)

    def save_to_file(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to *path* atomically.

        The text is published as every cadstore file is (:mod:`cadstore.io.publish`):
        readers see either the old file or the complete new one.

        Parameters
        ----------
        path
            Destination file (a local path).
        """
        write_bytes_atomic(resolve(path), (self.to_json() + "\n").encode("utf-8"))

    @classmethod
    def from_dict(cls, schema: Mapping[str, Any]) -> SchemaBuilder:
        """Make a builder holding *schema*.

        Parameters
        ----------
        schema
            Any form :func:`normalize_schema` accepts.

        Returns
        -------
        SchemaBuilder
            A new builder whose :meth:`build` equals ``normalize_schema(schema)``.

        Raises
        ------
        SchemaError
            If *schema* has the wrong shape.
        """
        canonical = normalize_schema(schema)
        builder = cls(canonical["domain"], canonical["version"], canonical["description"])
        builder._add_schema(canonical, replace=True)
        return builder

    @classmethod
    def load_from_file(
        cls,
        path: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
    ) -> SchemaBuilder:
        """Read a JSON schema file written by :meth:`save_to_file` or by ``json.dump``.

        Parameters
        ----------
        path
            The JSON file, a local path or a URL.
        storage_options
            fsspec options for a URL.

        Returns
        -------
        SchemaBuilder
            A new builder.

        Raises
        ------
        FileNotFoundError
            If *path* does not exist (a :class:`~cadstore.errors.StorageNotFoundError`).
        UnknownFormatError
            If *path* is a directory or not UTF-8 text (the message says when it is an
            item or a dataset, and how to export the schema it stores).
        CorruptStoreError
            If *path* is a pipe, a device or a socket (never read: it could block).
        SchemaError
            If the file is not JSON or not a valid schema (a ``.flow`` manifest, say); the
            message names the file.
        """
        where = resolve(os.fspath(path), storage_options, shared=True)
        shown = os.fspath(path)
        if where.isdir():
            raise UnknownFormatError(f"schema file {shown} is a directory, not a JSON file")
        # An item, a dataset or a manifest holds a schema: given for the file, say so.
        export = f"'cadstore schema {shown} -o FILE' exports the schema it stores"
        try:
            raw = where.read_bytes()
        except FileNotFoundError:
            nothing = "no such object" if where.remote else "no such file"
            raise StorageNotFoundError(shown, nothing) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            kind = other_kind(raw[:4], "json")
            instead = "" if kind is None else f"; it is {kind}"
            if kind is not None and "zip" in kind:
                instead += f": {export}"
            raise UnknownFormatError(
                f"schema file {shown} is not UTF-8 JSON text ({exc.reason}){instead}"
            ) from exc
        try:
            data = parse_document(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{shown}: not a valid JSON schema file: {exc}") from exc
        except ValueError as exc:  # nested too deeply for the schema's own recursion
            raise SchemaError(f"{shown}: not a usable JSON schema file: {exc}") from exc
        if isinstance(data, dict) and data.get("format") == FLOW_FORMAT:
            raise SchemaError(f"{shown}: a dataset's .flow manifest, not a schema file: {export}")
        try:
            return cls.from_dict(data)
        except SchemaError as exc:
            # The field path alone does not say which of several schema files is broken.
            raise SchemaError(f"{shown}: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"SchemaBuilder(domain={self._domain!r}, version={self._version!r}, "
            f"groups={list(self._groups)!r})"
        )


def create_cad_schema() -> SchemaBuilder:
    """Return a new builder holding the ``cad_basic`` template.

    Returns
    -------
    SchemaBuilder
        Groups ``faces``, ``edges``, ``graph`` and ``metadata``.
    """
    return SchemaBuilder().from_template("cad_basic")


def create_custom_schema(domain: str) -> SchemaBuilder:
    """Return a new, empty builder for *domain*.

    Parameters
    ----------
    domain
        The schema's domain name.

    Returns
    -------
    SchemaBuilder
        A builder without groups.
    """
    return SchemaBuilder(domain=domain)


def create_manufacturing_schema() -> SchemaBuilder:
    """Return a new builder holding the ``manufacturing_basic`` template.

    Returns
    -------
    SchemaBuilder
        Groups ``production``, ``sensors`` and ``materials``.
    """
    return SchemaBuilder().from_template("manufacturing_basic")


def create_sensor_schema() -> SchemaBuilder:
    """Return a new builder holding the ``sensor_basic`` template.

    Returns
    -------
    SchemaBuilder
        Groups ``timeseries``, ``sensors`` and ``events``.
    """
    return SchemaBuilder().from_template("sensor_basic")
