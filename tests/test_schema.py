"""Tests of ``cadstore.schema``: builder, templates, serialisation, normalisation, read view."""

from __future__ import annotations

import copy
import inspect
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cadstore.schema as schema_pkg
from cadstore.errors import SchemaError
from cadstore.schema import (
    DTYPES,
    Group,
    Schema,
    SchemaBuilder,
    SchemaTemplates,
    create_cad_schema,
    create_custom_schema,
    create_manufacturing_schema,
    create_sensor_schema,
    normalize_schema,
)

DEFAULT_ROUTING = {
    "file_level_patterns": ["size_*", "duration_*", "processing_*", "flow_name"],
    "categorical_patterns": ["*_label", "category", "type", "material_*"],
    "default_numeric": "file_level",
    "default_categorical": "categorical",
    "default_string": "categorical",
}


def raises_schema_error(message: str) -> Any:
    """Expect a SchemaError whose message contains *message* literally."""
    return pytest.raises(SchemaError, match=re.escape(message))


def cad_builder() -> SchemaBuilder:
    """The builder of the spec's "CAD Encoding Workflow" example."""
    builder = SchemaBuilder(domain="CAD_analysis", version="1.0")
    faces_group = builder.create_group("faces", "face", "Face data")
    faces_group.create_array("face_indices", ["face"], "int32")
    faces_group.create_array("face_areas", ["face"], "float32")
    faces_group.create_array("face_types", ["face"], "int32")
    edges_group = builder.create_group("edges", "edge", "Edge data")
    edges_group.create_array("edge_indices", ["edge"], "int32")
    edges_group.create_array("edge_lengths", ["edge"], "float32")
    builder.define_file_metadata("size_cadfile", "int64", "File size")
    builder.define_file_metadata("processing_time", "float32", "Processing time")
    builder.define_categorical_metadata("file_label", "int32", "Classification")
    builder.set_metadata_routing_rules(
        file_level_patterns=["size_*", "processing_*"], categorical_patterns=["*_label"]
    )
    return builder


@pytest.fixture
def schema() -> Schema:
    return Schema(cad_builder().build())


# ---------------------------------------------------------------------------------------
# The package surface
# ---------------------------------------------------------------------------------------


def test_all_is_sorted_and_complete() -> None:
    assert schema_pkg.__all__ == sorted(schema_pkg.__all__)
    for name in schema_pkg.__all__:
        assert hasattr(schema_pkg, name), name


def test_every_public_callable_is_documented() -> None:
    for name in schema_pkg.__all__:
        obj = getattr(schema_pkg, name)
        if not callable(obj):
            continue
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            for attr in vars(obj):
                if not attr.startswith("_"):
                    assert inspect.getdoc(getattr(obj, attr)), f"{name}.{attr}"


def test_dtypes_are_the_documented_ones() -> None:
    assert set(DTYPES) == {
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
    }


# ---------------------------------------------------------------------------------------
# Spec examples, verbatim apart from the import
# ---------------------------------------------------------------------------------------


def test_spec_set_schema_example() -> None:
    from cadstore.schema import SchemaBuilder

    builder = SchemaBuilder(domain="CAD_analysis")
    faces_group = builder.create_group("faces", "face", "Face data")
    faces_group.create_array("face_areas", ["face"], "float32")
    schema = builder.build()

    assert schema["groups"]["faces"] == {
        "primary_dimension": "face",
        "arrays": {"face_areas": {"dims": ["face"], "dtype": "float32", "description": ""}},
        "description": "Face data",
    }


def test_spec_setting_schemas_example() -> None:
    builder = SchemaBuilder(domain="CAD_analysis", version="1.0")
    faces_group = builder.create_group("faces", "face", "Face data")
    faces_group.create_array("face_areas", ["face"], "float32")
    faces_group.create_array("face_normals", ["face", "coordinate"], "float32")

    edges_group = builder.create_group("edges", "edge", "Edge data")
    edges_group.create_array("edge_lengths", ["edge"], "float32")

    schema = builder.build()

    view = Schema(schema)
    assert view.group_for_array("face_areas") == "faces"
    assert view.group_for_array("edge_lengths") == "edges"
    assert view.group_for_array("unknown_array") is None
    assert view.dims_for("face_normals") == ("face", "coordinate")


def test_spec_validate_data_against_schema_examples() -> None:
    builder = SchemaBuilder(domain="CAD_analysis", version="1.0")
    faces_group = builder.create_group("faces", "face", "Face data")
    faces_group.create_array("face_areas", ["face"], "float32")
    schema = Schema(builder.build())

    # Valid data
    valid_data = np.array([1.5, 2.3, 4.1], dtype=np.float32)
    assert schema.validate_array("face_areas", valid_data) == []

    # Invalid: wrong dimensions (2D instead of 1D)
    invalid_data = np.array([[1.5, 2.3], [4.1, 3.2]])
    problems = schema.validate_array("face_areas", invalid_data)
    assert problems == ["face_areas: expected 1 dimension(s) ['face'], got 2 (shape (2, 2))"]

    # Invalid: wrong dtype (int instead of float)
    invalid_data = np.array([1, 2, 3], dtype=np.int32)
    problems = schema.validate_array("face_areas", invalid_data)
    assert problems == [
        "face_areas: dtype int32 does not match float32 (float arrays take float data only)"
    ]

    # Arrays not in schema are allowed (extensible schema)
    assert schema.validate_array("something_else", np.zeros((2, 2, 2))) == []


def test_spec_cad_encoding_workflow_schema() -> None:
    # 1. Build schema
    builder = SchemaBuilder(domain="CAD_analysis", version="1.0")

    faces_group = builder.create_group("faces", "face", "Face data")
    faces_group.create_array("face_indices", ["face"], "int32")
    faces_group.create_array("face_areas", ["face"], "float32")
    faces_group.create_array("face_types", ["face"], "int32")

    edges_group = builder.create_group("edges", "edge", "Edge data")
    edges_group.create_array("edge_indices", ["edge"], "int32")
    edges_group.create_array("edge_lengths", ["edge"], "float32")

    builder.define_file_metadata("size_cadfile", "int64", "File size")
    builder.define_file_metadata("processing_time", "float32", "Processing time")
    builder.define_categorical_metadata("file_label", "int32", "Classification")

    builder.set_metadata_routing_rules(
        file_level_patterns=["size_*", "processing_*"], categorical_patterns=["*_label"]
    )

    schema = builder.build()

    assert schema == cad_builder().build()
    meta = schema["metadata"]["metadata"]
    assert meta["file_level"] == {
        "size_cadfile": {"dtype": "int64", "description": "File size", "required": False},
        "processing_time": {
            "dtype": "float32",
            "description": "Processing time",
            "required": False,
        },
    }
    assert meta["categorical"] == {
        "file_label": {"dtype": "int32", "required": False, "description": "Classification"}
    }
    assert meta["routing_rules"] == {
        "file_level_patterns": ["size_*", "processing_*"],
        "categorical_patterns": ["*_label"],
        "default_numeric": "file_level",
        "default_categorical": "categorical",
        "default_string": "categorical",
    }
    # 4. Save metadata (automatically routed)
    view = Schema(schema)
    assert view.route_metadata("size_cadfile", 123456) == "file_level"  # → .infoset
    assert view.route_metadata("processing_time", 1.25) == "file_level"  # → .infoset
    assert view.route_metadata("file_label", 2) == "categorical"  # → .attribset


def test_spec_schema_validation_in_practice() -> None:
    # Build strict schema
    builder = SchemaBuilder(domain="production_data")
    group = builder.create_group("measurements", "sample")
    group.create_array("temperature", ["sample"], "float32")
    group.create_array("pressure", ["sample"], "float32")

    schema = builder.build()
    view = Schema(schema)

    # Valid data passes
    valid_temps = np.array([20.5, 25.3, 22.1], dtype=np.float32)
    assert view.validate_array("temperature", valid_temps) == []

    # Invalid data is caught
    invalid_temps = np.array([[20.5, 25.3], [22.1, 23.4]])  # Wrong dimensions
    assert view.validate_array("temperature", invalid_temps)
    assert schema["groups"]["measurements"]["description"] == ""


def test_spec_routing_configuration_example() -> None:
    builder = SchemaBuilder()
    builder.set_metadata_routing_rules(
        file_level_patterns=["size_*", "duration_*", "processing_*", "flow_name"],
        categorical_patterns=["*_label", "category", "type"],
        default_numeric="file_level",
        default_categorical="categorical",
    )
    assert builder.get_metadata_routing("size_cadfile") == "file_level"
    assert builder.get_metadata_routing("flow_name") == "file_level"
    assert builder.get_metadata_routing("part_label") == "categorical"
    # 'material_*' was not passed, so it no longer routes (the passed list replaces it).
    assert builder.get_metadata_routing("material_steel", 3) == "file_level"


def test_vendor_doc_validation_rule_example() -> None:
    builder = SchemaBuilder(domain="validated_data")
    group = builder.create_group("measurements", "sample")
    group.create_array(
        "temperature",
        ["sample"],
        "float32",
        min_value=-273.15,  # Absolute zero
        max_value=5000.0,
    )
    view = Schema(builder.build())
    assert view.validate_array("temperature", np.array([20.5, 25.3, 22.1], np.float32)) == []
    invalid_temps = np.array([20.5, -300.0, 22.1], dtype=np.float32)
    assert view.validate_array("temperature", invalid_temps) == [
        "temperature: value -300.0 at index [1] is below min_value -273.15"
    ]


# ---------------------------------------------------------------------------------------
# SchemaBuilder: groups
# ---------------------------------------------------------------------------------------


def test_builder_defaults() -> None:
    builder = SchemaBuilder()
    assert (builder.domain, builder.version, builder.description) == ("default", "1.0", "")
    assert builder.list_groups() == []
    assert builder.build() == {
        "version": "1.0",
        "domain": "default",
        "groups": {},
        "description": "",
        "metadata": {
            "metadata": {"file_level": {}, "categorical": {}, "routing_rules": DEFAULT_ROUTING}
        },
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domain": ""}, "domain: expected a non-empty str, got ''"),
        ({"domain": 3}, "domain: expected a non-empty str, got 3"),
        ({"version": 1.0}, "version: expected a non-empty str, got 1.0"),
        ({"description": 5}, "description: expected a str or None, got int"),
    ],
)
def test_builder_rejects_bad_identity(kwargs: dict[str, Any], message: str) -> None:
    with raises_schema_error(message):
        SchemaBuilder(**kwargs)


def test_create_group_positional_and_keyword() -> None:
    builder = SchemaBuilder()
    faces = builder.create_group("faces", "face", "Face data")
    pairs = builder.create_group(
        name="faceface",
        primary_dimension="facepair",
        description="pairs",
        special_processing="matrix_flattening",
    )
    assert isinstance(faces, Group)
    assert (faces.name, faces.primary_dimension, faces.description) == (
        "faces",
        "face",
        "Face data",
    )
    assert faces.special_processing is None
    assert pairs.special_processing == "matrix_flattening"
    assert builder.build()["groups"]["faceface"] == {
        "primary_dimension": "facepair",
        "arrays": {},
        "description": "pairs",
        "special_processing": "matrix_flattening",
    }
    assert list(builder.build()["groups"]["faces"]) == [
        "primary_dimension",
        "arrays",
        "description",
    ]


def test_create_group_accepts_base_dimension() -> None:
    builder = SchemaBuilder()
    group = builder.create_group("edges", base_dimension="edge")
    assert group.primary_dimension == "edge"
    same = builder.create_group("graph", "edge", base_dimension="edge")
    assert same.primary_dimension == "edge"


def test_create_group_dimension_errors() -> None:
    builder = SchemaBuilder()
    with raises_schema_error("groups.faces.primary_dimension: missing"):
        builder.create_group("faces")
    with raises_schema_error(
        "groups.faces: primary_dimension 'face' and base_dimension 'f' disagree"
    ):
        builder.create_group("faces", "face", base_dimension="f")
    with raises_schema_error("groups.faces.primary_dimension: expected a non-empty str, got 7"):
        builder.create_group("faces", 7)  # type: ignore[arg-type]
    with raises_schema_error("groups.faces.special_processing: expected a non-empty str or None"):
        builder.create_group("faces", "face", special_processing="")
    assert builder.list_groups() == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "group name: a name must not be empty"),
        ("a/b", "group name: name 'a/b' must not contain '/'"),
        (3, "group name: expected a non-empty str name, got int"),
    ],
)
def test_create_group_rejects_bad_names(name: Any, message: str) -> None:
    with raises_schema_error(message):
        SchemaBuilder().create_group(name, "x")


def test_create_group_again_returns_the_same_group() -> None:
    builder = SchemaBuilder()
    faces = builder.create_group("faces", "face", "Face data")
    faces.create_array("face_areas", ["face"])
    again = builder.create_group("faces", "face", "Updated", "nested_edges")
    assert again is faces
    assert faces.list_arrays() == ["face_areas"]
    assert (faces.description, faces.special_processing) == ("Updated", "nested_edges")
    kept = builder.create_group("faces", base_dimension="face")
    assert kept.description == "Updated"
    with raises_schema_error("groups.faces: already exists with primary_dimension 'face'"):
        builder.create_group("faces", "edge")


def test_get_remove_list_groups() -> None:
    builder = SchemaBuilder()
    faces = builder.create_group("faces", "face")
    builder.create_group("edges", "edge")
    builder.create_group("graph", "edge")
    assert builder.list_groups() == ["faces", "edges", "graph"]
    assert builder.get_group("faces") is faces
    assert builder.get_group("nope") is None
    assert builder.remove_group("edges") is True
    assert builder.remove_group("edges") is False
    assert builder.list_groups() == ["faces", "graph"]
    assert list(builder.build()["groups"]) == ["faces", "graph"]
    # The group object is live: arrays added later show up in build().
    faces.create_array("face_areas", ["face"])
    assert "face_areas" in builder.build()["groups"]["faces"]["arrays"]


# ---------------------------------------------------------------------------------------
# Group: arrays
# ---------------------------------------------------------------------------------------


def test_create_array_spellings() -> None:
    group = Group("faces", "face")
    assert group.create_array("a", ["face"]) is None
    group.create_array("b", dims=["face", "dim"], dtype="int64")
    group.create_array("c", dimensions=("face",), dims=["face"], dtype="bool")
    group.create_array("d", [], "str", "a scalar")
    group.create_array("e", ["face"], np.float64)
    group.create_array("f", ["face"], np.dtype("uint8"))
    group.create_array("g", ["face"], bool)
    group.create_array("h", ["face"], str)
    assert group.get_arrays() == {
        "a": {"dims": ["face"], "dtype": "float32", "description": ""},
        "b": {"dims": ["face", "dim"], "dtype": "int64", "description": ""},
        "c": {"dims": ["face"], "dtype": "bool", "description": ""},
        "d": {"dims": [], "dtype": "str", "description": "a scalar"},
        "e": {"dims": ["face"], "dtype": "float64", "description": ""},
        "f": {"dims": ["face"], "dtype": "uint8", "description": ""},
        "g": {"dims": ["face"], "dtype": "bool", "description": ""},
        "h": {"dims": ["face"], "dtype": "str", "description": ""},
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_create_array_accepts_every_dtype(dtype: str) -> None:
    group = Group("g", "n")
    group.create_array("x", ["n"], dtype)
    assert group.get_array("x") == {"dims": ["n"], "dtype": dtype, "description": ""}


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("x",), {}, "groups.faces.arrays.x.dims: missing; pass dimensions=[...]"),
        (
            ("x", ["face"]),
            {"dims": ["edge"]},
            "groups.faces.arrays.x: dimensions ['face'] and dims ['edge'] disagree",
        ),
        (("x", "face"), {}, "groups.faces.arrays.x.dims: expected a list of str, got str"),
        (("x", 3), {}, "groups.faces.arrays.x.dims: expected a list of str, got int"),
        (("x", ["face", 2]), {}, "groups.faces.arrays.x.dims[1]: expected a str, got int"),
        (("x", ["face", ""]), {}, "groups.faces.arrays.x.dims[1]: a dimension name must not be"),
        (("x", ["face", "face"]), {}, "dimension 'face' appears more than once"),
        (("x", ["face"], "flaot32"), {}, "groups.faces.arrays.x.dtype: unknown dtype 'flaot32'"),
        (("x", ["face"], "object"), {}, "unknown dtype 'object'"),
        (("x", ["face"], np.datetime64), {}, "groups.faces.arrays.x.dtype: unknown dtype"),
        (("x", ["face"], np.floating), {}, "groups.faces.arrays.x.dtype: unknown dtype"),
        (("x", ["face"], dict), {}, "groups.faces.arrays.x.dtype: unknown dtype"),
        (("x", ["face"], "float32", 5), {}, "arrays.x.description: expected a str or None"),
        (("", ["face"]), {}, "groups.faces.arrays name: a name must not be empty"),
        (("a/b", ["face"]), {}, "groups.faces.arrays name: name 'a/b' must not contain '/'"),
        (
            ("x", ["face"]),
            {"min_value": 5, "max_value": 1},
            "groups.faces.arrays.x: min_value 5 is greater than max_value 1",
        ),
        (("x", ["face"]), {"min_value": "0"}, "arrays.x.min_value: expected a number, got str"),
        (("x", ["face"]), {"max_value": True}, "arrays.x.max_value: expected a number, got bool"),
        (("x", ["face"]), {"min_value": float("nan")}, "arrays.x.min_value: must not be NaN"),
        (("x", ["face"]), {"values": 3}, "arrays.x.values: expected a list, got int"),
        (("x", ["face"]), {"unit": {1, 2}}, "arrays.x.unit: set cannot be stored in a JSON"),
    ],
)
def test_create_array_errors(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    group = Group("faces", "face")
    with raises_schema_error(message):
        group.create_array(*args, **kwargs)
    assert group.list_arrays() == []


def test_create_array_keeps_rules_in_order() -> None:
    group = Group("faces", "face")
    group.create_array(
        "face_areas",
        ["face"],
        "float32",
        "Surface area",
        min_value=np.float32(0.0),
        max_value=1e6,
        unit="mm^2",
        values=(1.0, 2.0),
    )
    spec = group.get_array("face_areas")
    assert spec == {
        "dims": ["face"],
        "dtype": "float32",
        "description": "Surface area",
        "min_value": 0.0,
        "max_value": 1e6,
        "unit": "mm^2",
        "values": [1.0, 2.0],
    }
    assert type(spec["min_value"]) is float
    assert list(spec) == [
        "dims",
        "dtype",
        "description",
        "min_value",
        "max_value",
        "unit",
        "values",
    ]


def test_array_management() -> None:
    group = Group("faces", "face", "Face data", "matrix_flattening")
    group.create_array("face_areas", ["face"], "float32")
    group.create_array("face_types", ["face"], "int32")
    assert group.list_arrays() == ["face_areas", "face_types"]
    assert "face_areas" in group
    spec = group.get_array("face_areas")
    assert spec is not None
    spec["dims"].append("oops")
    assert group.get_array("face_areas") == {
        "dims": ["face"],
        "dtype": "float32",
        "description": "",
    }
    arrays = group.get_arrays()
    arrays["face_types"]["dtype"] = "bool"
    assert group.get_array("face_types")["dtype"] == "int32"  # type: ignore[index]
    assert group.get_array("missing") is None
    # Re-declaring an array replaces it in place.
    group.create_array("face_areas", ["face"], "float64")
    assert group.list_arrays() == ["face_areas", "face_types"]
    assert group.get_array("face_areas")["dtype"] == "float64"  # type: ignore[index]
    assert group.remove_array("face_areas") is True
    assert group.remove_array("face_areas") is False
    assert group.to_dict() == {
        "primary_dimension": "face",
        "arrays": {"face_types": {"dims": ["face"], "dtype": "int32", "description": ""}},
        "description": "Face data",
        "special_processing": "matrix_flattening",
    }
    assert "face_types" in repr(group)


# ---------------------------------------------------------------------------------------
# SchemaBuilder: metadata
# ---------------------------------------------------------------------------------------


def test_define_metadata_key_order() -> None:
    builder = SchemaBuilder()
    builder.define_file_metadata("size_cadfile", "int64", "File size in bytes", min_value=0)
    builder.define_file_metadata("flow_name", "str", required=True)
    builder.define_categorical_metadata(
        "machining_category",
        "int32",
        "Machining complexity classification",
        values=[1, 2, 3, 4, 5],
        labels=["Simple", "Easy", "Medium", "Hard", "Complex"],
        required=False,
    )
    builder.define_categorical_metadata("material_type", "str", "Material", unit="none")
    meta = builder.build()["metadata"]["metadata"]
    assert list(meta["file_level"]["size_cadfile"]) == [
        "dtype",
        "description",
        "required",
        "min_value",
    ]
    assert meta["file_level"]["flow_name"] == {"dtype": "str", "description": "", "required": True}
    assert list(meta["categorical"]["machining_category"]) == [
        "dtype",
        "required",
        "description",
        "values",
        "labels",
    ]
    assert meta["categorical"]["material_type"] == {
        "dtype": "str",
        "required": False,
        "description": "Material",
        "unit": "none",
    }
    assert builder.list_metadata_fields() == {
        "file_level": ["size_cadfile", "flow_name"],
        "categorical": ["machining_category", "material_type"],
    }


def test_redefining_metadata_moves_it() -> None:
    builder = SchemaBuilder()
    builder.define_file_metadata("file_label", "int32")
    builder.define_categorical_metadata("file_label", "int32")
    assert builder.list_metadata_fields() == {"file_level": [], "categorical": ["file_label"]}
    builder.define_file_metadata("file_label", "int64")
    assert builder.list_metadata_fields() == {"file_level": ["file_label"], "categorical": []}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda b: b.define_file_metadata("x", "int"),
            "metadata.file_level.x.dtype: unknown dtype 'int'",
        ),
        (
            lambda b: b.define_file_metadata("", "int32"),
            "metadata.file_level.: metadata name '' is empty",
        ),
        (
            lambda b: b.define_file_metadata("a//b", "int32"),
            "metadata name 'a//b' is empty or has an empty '/' segment",
        ),
        (
            lambda b: b.define_file_metadata("x", "int32", required="yes"),
            "metadata.file_level.x.required: expected a bool, got str",
        ),
        (
            lambda b: b.define_categorical_metadata("c", "str", labels=["A"]),
            "metadata.categorical.c.labels: labels need a values list to label",
        ),
        (
            lambda b: b.define_categorical_metadata("c", "int32", values=[1, 2], labels=["A"]),
            "metadata.categorical.c.labels: 1 labels for 2 values",
        ),
        (
            lambda b: b.define_categorical_metadata("c", "int32", values=5),
            "metadata.categorical.c.values: expected a list, got int",
        ),
    ],
)
def test_define_metadata_errors(call: Any, message: str) -> None:
    builder = SchemaBuilder()
    with raises_schema_error(message):
        call(builder)
    assert builder.list_metadata_fields() == {"file_level": [], "categorical": []}


def test_nested_metadata_names_are_allowed() -> None:
    builder = SchemaBuilder()
    builder.define_file_metadata("processing/duration", "float64")
    assert builder.get_metadata_routing("processing/duration") == "file_level"


def test_routing_rules_defaults_and_replacement() -> None:
    builder = SchemaBuilder()
    assert builder.build()["metadata"]["metadata"]["routing_rules"] == DEFAULT_ROUTING
    builder.set_metadata_routing_rules(categorical_patterns=("task_*_description", "category"))
    assert builder.build()["metadata"]["metadata"]["routing_rules"] == {
        "file_level_patterns": [],
        "categorical_patterns": ["task_*_description", "category"],
        "default_numeric": "file_level",
        "default_categorical": "categorical",
        "default_string": "categorical",
    }
    builder.set_metadata_routing_rules(default_numeric="categorical", default_string="file_level")
    rules = builder.build()["metadata"]["metadata"]["routing_rules"]
    assert rules["file_level_patterns"] == rules["categorical_patterns"] == []
    assert (rules["default_numeric"], rules["default_string"]) == ("categorical", "file_level")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"file_level_patterns": "size_*"},
            "metadata.routing_rules.file_level_patterns: expected a list of str patterns, got str",
        ),
        (
            {"categorical_patterns": ["ok", ""]},
            "metadata.routing_rules.categorical_patterns[1]: expected a non-empty str pattern",
        ),
        (
            {"default_numeric": "infoset"},
            "metadata.routing_rules.default_numeric: expected 'file_level' or 'categorical', "
            "got 'infoset'",
        ),
        ({"default_string": None}, "metadata.routing_rules.default_string: expected"),
    ],
)
def test_routing_rules_errors(kwargs: dict[str, Any], message: str) -> None:
    builder = SchemaBuilder()
    with raises_schema_error(message):
        builder.set_metadata_routing_rules(**kwargs)
    assert builder.build()["metadata"]["metadata"]["routing_rules"] == DEFAULT_ROUTING


def test_get_metadata_routing_and_value_hint() -> None:
    builder = SchemaBuilder()
    builder.define_categorical_metadata("size_class", "str")
    assert builder.get_metadata_routing("size_class") == "categorical"  # explicit beats size_*
    assert builder.get_metadata_routing("size_total") == "file_level"
    assert builder.get_metadata_routing("my_label") == "categorical"
    assert builder.get_metadata_routing("anything") == "categorical"  # no value: not numeric
    assert builder.get_metadata_routing("anything", 3.5) == "file_level"


def test_validate_metadata_field() -> None:
    builder = SchemaBuilder()
    builder.define_categorical_metadata(
        "machining_category",
        "int32",
        "Machining complexity classification",
        values=[1, 2, 3, 4, 5],
        labels=["Simple", "Easy", "Medium", "Hard", "Complex"],
        required=False,
    )
    builder.define_categorical_metadata(
        "material_type", "str", values=["steel", "aluminum", "plastic", "composite"]
    )
    builder.define_file_metadata("size_cadfile", "int64", min_value=0)
    builder.define_file_metadata("processing_time", "float32")
    builder.define_file_metadata("done", "bool")

    assert builder.validate_metadata_field("machining_category", 3) is True
    assert builder.validate_metadata_field("machining_category", np.int64(3)) is True
    assert builder.validate_metadata_field("machining_category", 10) is False
    assert builder.validate_metadata_field("machining_category", "3") is False
    assert builder.validate_metadata_field("material_type", "steel") is True
    assert builder.validate_metadata_field("material_type", "wood") is False
    assert builder.validate_metadata_field("size_cadfile", 1024) is True
    assert builder.validate_metadata_field("size_cadfile", -1) is False
    assert builder.validate_metadata_field("size_cadfile", 2**63) is False
    assert builder.validate_metadata_field("size_cadfile", 1.5) is False
    assert builder.validate_metadata_field("processing_time", 2) is True  # JSON drops 2.0 vs 2
    assert builder.validate_metadata_field("processing_time", True) is False
    assert builder.validate_metadata_field("done", np.bool_(True)) is True
    assert builder.validate_metadata_field("done", 1) is False
    assert builder.validate_metadata_field("undefined", object()) is True


def test_validate_metadata_schema() -> None:
    builder = cad_builder()
    assert builder.validate_metadata_schema() == []
    builder.define_categorical_metadata("grade", "int32", values=[1, "two", 1])
    builder.define_categorical_metadata("tiny", "int8", values=[1, 300])
    builder.define_file_metadata("ratio", "float32", values=[0.5, 2.0], max_value=1.0)
    builder.set_metadata_routing_rules(
        file_level_patterns=["size_*", "Type"], categorical_patterns=["type", "*_label"]
    )
    assert builder.validate_metadata_schema() == [
        "metadata.file_level.ratio.values[1]: 2.0 is above max_value 1.0",
        "metadata.categorical.grade.values[1]: 'two' (str) is not a valid int32",
        "metadata.categorical.grade.values[2]: 1 is listed more than once",
        "metadata.categorical.tiny.values[1]: 300 does not fit in int8 (-128..127)",
        "metadata.routing_rules: pattern 'type' is in both file_level_patterns and "
        "categorical_patterns (file_level wins)",
    ]


# ---------------------------------------------------------------------------------------
# build(), JSON, files
# ---------------------------------------------------------------------------------------


def test_build_key_order_and_double_nesting() -> None:
    builder = SchemaBuilder(
        domain="Manufacturing_Analysis", description="Minimal schema for manufacturing"
    )
    machining = builder.create_group("machining", "part", "Machining data")
    machining.create_array("machining_category", ["part"], "int32", "Category (1-5)")
    builder.define_categorical_metadata("material_type_description", "str", "Material")
    builder.set_metadata_routing_rules(
        categorical_patterns=["material_type_description", "category", "type"]
    )
    schema = builder.build()
    assert list(schema) == ["version", "domain", "groups", "description", "metadata"]
    assert list(schema["metadata"]) == ["metadata"]
    assert list(schema["metadata"]["metadata"]) == ["file_level", "categorical", "routing_rules"]
    assert list(schema["groups"]["machining"]) == ["primary_dimension", "arrays", "description"]
    assert list(schema["groups"]["machining"]["arrays"]["machining_category"]) == [
        "dims",
        "dtype",
        "description",
    ]
    assert list(schema["metadata"]["metadata"]["routing_rules"]) == list(DEFAULT_ROUTING)
    assert schema == {
        "version": "1.0",
        "domain": "Manufacturing_Analysis",
        "groups": {
            "machining": {
                "primary_dimension": "part",
                "arrays": {
                    "machining_category": {
                        "dims": ["part"],
                        "dtype": "int32",
                        "description": "Category (1-5)",
                    }
                },
                "description": "Machining data",
            }
        },
        "description": "Minimal schema for manufacturing",
        "metadata": {
            "metadata": {
                "file_level": {},
                "categorical": {
                    "material_type_description": {
                        "dtype": "str",
                        "required": False,
                        "description": "Material",
                    }
                },
                "routing_rules": {
                    "file_level_patterns": [],
                    "categorical_patterns": ["material_type_description", "category", "type"],
                    "default_numeric": "file_level",
                    "default_categorical": "categorical",
                    "default_string": "categorical",
                },
            }
        },
    }


def test_build_returns_independent_copies() -> None:
    builder = cad_builder()
    first = builder.build()
    first["groups"]["faces"]["arrays"]["face_areas"]["dims"].append("oops")
    first["metadata"]["metadata"]["routing_rules"]["file_level_patterns"].clear()
    first["metadata"]["metadata"]["file_level"]["size_cadfile"]["dtype"] = "bool"
    assert builder.build() == cad_builder().build()


def test_json_round_trip() -> None:
    builder = create_cad_schema()
    builder.get_group("faces").create_array(  # type: ignore[union-attr]
        "face_areas", ["face"], "float32", min_value=0.0, values=[1.0, 2.5]
    )
    built = builder.build()
    text = builder.to_json()
    assert text == json.dumps(built, indent=2)
    assert builder.to_json(indent=None) == json.dumps(built)
    loaded = json.loads(text)
    assert loaded == built
    assert normalize_schema(loaded) == built
    assert SchemaBuilder.from_dict(loaded).build() == built
    assert Schema(loaded) == Schema(built)


def test_save_and_load_file(tmp_path: Path) -> None:
    builder = cad_builder()
    target = tmp_path / "schema.json"
    assert builder.save_to_file(target) is None
    assert json.loads(target.read_text(encoding="utf-8")) == builder.build()
    loaded = SchemaBuilder.load_from_file(str(target))
    assert isinstance(loaded, SchemaBuilder)
    assert repr(loaded) == (
        "SchemaBuilder(domain='CAD_analysis', version='1.0', groups=['faces', 'edges'])"
    )
    assert loaded.build() == builder.build()
    assert [p.name for p in tmp_path.iterdir()] == ["schema.json"]  # no temp file left

    # Overwrite with another schema.
    create_sensor_schema().save_to_file(str(target))
    assert SchemaBuilder.load_from_file(target).build() == create_sensor_schema().build()


def test_save_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "schema.json"
    cad_builder().save_to_file(target)
    before = target.read_text(encoding="utf-8")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        create_sensor_schema().save_to_file(target)
    assert target.read_text(encoding="utf-8") == before
    assert [p.name for p in tmp_path.iterdir()] == ["schema.json"]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SchemaBuilder.load_from_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with raises_schema_error(f"{broken}: not a valid JSON schema file"):
        SchemaBuilder.load_from_file(broken)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"groups": {"faces": {"primary_dimension": 3}}}), encoding="utf-8")
    with raises_schema_error(f"{bad}: groups.faces.primary_dimension: expected a non-empty str"):
        SchemaBuilder.load_from_file(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[]", encoding="utf-8")
    with raises_schema_error(f"{listed}: schema: expected a dict, got list"):
        SchemaBuilder.load_from_file(listed)


def test_load_vendor_style_file(tmp_path: Path) -> None:
    # The shape a vendor script writes with json.dump(builder.build(), f, indent=2).
    vendor = {
        "version": "1.0",
        "domain": "Manufacturing_Analysis",
        "groups": {
            "Labels": {
                "primary_dimension": "part",
                "arrays": {"task_A": {"dims": ["part"], "dtype": "int32", "description": "A"}},
                "description": "Label group for ML supervised Tasks",
            }
        },
        "description": "Minimal schema",
        "metadata": {
            "metadata": {
                "file_level": {},
                "categorical": {
                    "task_A_description": {
                        "dtype": "str",
                        "required": False,
                        "description": "A name",
                    }
                },
                "routing_rules": {
                    "file_level_patterns": [],
                    "categorical_patterns": ["task_A_description", "category", "type"],
                    "default_numeric": "file_level",
                    "default_categorical": "categorical",
                    "default_string": "categorical",
                },
            }
        },
    }
    path = tmp_path / "manufacturing_schema.json"
    path.write_text(json.dumps(vendor, indent=2), encoding="utf-8")
    builder = SchemaBuilder.load_from_file(path)
    assert builder.build() == vendor
    assert builder.to_json() == json.dumps(vendor, indent=2)
    assert builder.get_group("Labels").get_array("task_A")["dtype"] == "int32"  # type: ignore[union-attr,index]


# ---------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------


def test_template_catalogue() -> None:
    assert SchemaTemplates.list_templates() == [
        "cad_basic",
        "cad_advanced",
        "manufacturing_basic",
        "sensor_basic",
    ]
    assert (
        SchemaTemplates.get_template_description("cad_advanced")
        == "Advanced CAD analysis including surface properties and relationships"
    )
    for name in SchemaTemplates.list_templates():
        template = SchemaTemplates.get_template(name)
        assert SchemaTemplates.get_template_description(name) == template["description"]
        assert normalize_schema(template) == template  # templates are canonical
    with raises_schema_error("template: unknown template 'cad_pro'; available templates are"):
        SchemaTemplates.get_template_description("cad_pro")


def test_get_template_returns_a_copy() -> None:
    template = SchemaTemplates.get_template("cad_basic")
    template["groups"].clear()
    assert SchemaTemplates.get_template("cad_basic")["groups"]


@pytest.mark.parametrize(
    ("name", "groups"),
    [
        ("cad_basic", ["faces", "edges", "graph", "metadata"]),
        ("cad_advanced", ["faces", "edges", "faceface", "graph", "performance"]),
        ("manufacturing_basic", ["production", "sensors", "materials"]),
        ("sensor_basic", ["timeseries", "sensors", "events"]),
    ],
)
def test_template_groups(name: str, groups: list[str]) -> None:
    assert SchemaBuilder().from_template(name).list_groups() == groups


def test_cad_templates_match_the_encoder_layout() -> None:
    basic = Schema(SchemaTemplates.get_template("cad_basic"))
    expected = {
        "face_indices": ("faces", ("face",), "int32"),
        "face_areas": ("faces", ("face",), "float32"),
        "face_types": ("faces", ("face",), "int32"),
        "face_loops": ("faces", ("face",), "int32"),
        "face_centroids": ("faces", ("face", "dim"), "float32"),
        "face_discretization": ("faces", ("face", "sample", "component"), "float32"),
        "edge_indices": ("edges", ("edge",), "int32"),
        "edge_lengths": ("edges", ("edge",), "float32"),
        "edge_types": ("edges", ("edge",), "int32"),
        "edge_dihedral_angles": ("edges", ("edge",), "float32"),
        "edge_convexities": ("edges", ("edge",), "int32"),
        "edge_u_grids": ("edges", ("edge", "u", "component"), "float32"),
        "edges_source": ("graph", ("edge",), "int32"),
        "edges_destination": ("graph", ("edge",), "int32"),
        "num_nodes": ("graph", ("edge",), "int32"),
    }
    for array, (group, dims, dtype) in expected.items():
        found = basic.array_spec(array)
        assert found is not None, array
        assert (found[0], tuple(found[2]["dims"]), found[2]["dtype"]) == (group, dims, dtype)
    assert basic.primary_dimension("graph") == "edge"

    advanced = Schema(SchemaTemplates.get_template("cad_advanced"))
    assert advanced.special_processing("faceface") == "matrix_flattening"
    assert advanced.primary_dimension("faceface") == "facepair"
    assert advanced.dims_for("faceface/a3_distance") == ("facepair", "bin")
    assert advanced.dims_for("d2_distance") == ("facepair", "bin")
    assert advanced.dims_for("extended_adjacency") == ("facepair",)
    assert advanced.dims_for("face_pair_edges_path") == ("facepair", "dim_path")
    assert advanced.array_spec("face_pair_edges_path")[2]["dtype"] == "int32"  # type: ignore[index]
    for array in expected:
        assert advanced.array_spec(array) is not None, array


def test_from_template_on_instance_and_class() -> None:
    on_instance = SchemaBuilder().from_template("cad_basic")
    on_class = SchemaBuilder.from_template("cad_basic")
    assert isinstance(on_class, SchemaBuilder)
    assert on_instance.build() == on_class.build() == create_cad_schema().build()
    assert on_class.build() == SchemaTemplates.get_template("cad_basic")
    assert on_class.domain == "CAD_analysis"
    assert "Replace this builder" in (inspect.getdoc(vars(SchemaBuilder)["from_template"]) or "")


def test_from_template_replaces_content_but_keeps_user_identity() -> None:
    builder = SchemaBuilder(domain="mine", version="2.0", description="My schema")
    builder.create_group("custom", "row")
    builder.define_file_metadata("mine", "int32")
    builder.set_metadata_routing_rules(file_level_patterns=["x"])
    same = builder.from_template("sensor_basic")
    assert same is builder
    assert builder.list_groups() == ["timeseries", "sensors", "events"]
    assert (builder.domain, builder.version, builder.description) == ("mine", "2.0", "My schema")
    assert builder.list_metadata_fields() == {"file_level": [], "categorical": []}
    assert builder.build()["metadata"]["metadata"]["routing_rules"] == DEFAULT_ROUTING


def test_extend_template_adds_to_existing_content() -> None:
    builder = SchemaBuilder(domain="mine")
    builder.define_categorical_metadata("file_label", "str", "my own label")
    builder.set_metadata_routing_rules(categorical_patterns=["*_label"])
    result = builder.extend_template("cad_basic")
    assert result is builder
    predictions_group = builder.create_group("predictions", "face", "ML model predictions")
    predictions_group.create_array("predicted_class", ["face"], "int32")
    assert builder.list_groups() == ["faces", "edges", "graph", "metadata", "predictions"]
    assert builder.domain == "mine"
    meta = builder.build()["metadata"]["metadata"]
    assert meta["categorical"]["file_label"]["dtype"] == "str"  # ours wins
    assert list(meta["file_level"]) == ["size_cadfile", "processing_time"]
    assert meta["routing_rules"]["file_level_patterns"] == []
    # The template's groups are copies: changing them does not change the template.
    builder.get_group("faces").remove_array("face_areas")  # type: ignore[union-attr]
    assert "face_areas" in SchemaTemplates.get_template("cad_basic")["groups"]["faces"]["arrays"]


def test_extend_template_group_clash() -> None:
    builder = SchemaBuilder()
    builder.create_group("faces", "face")
    with raises_schema_error("groups.faces: the template defines this group too"):
        builder.extend_template("cad_basic")
    assert builder.list_groups() == ["faces"]
    with raises_schema_error("unknown template 'nope'"):
        builder.from_template("nope")


def test_factory_functions() -> None:
    assert create_cad_schema().build() == SchemaTemplates.get_template("cad_basic")
    assert create_manufacturing_schema().list_groups() == ["production", "sensors", "materials"]
    assert create_sensor_schema().list_groups() == ["timeseries", "sensors", "events"]
    custom = create_custom_schema("my_domain")
    assert (custom.domain, custom.list_groups()) == ("my_domain", [])
    with raises_schema_error("domain: expected a non-empty str"):
        create_custom_schema("")


def test_manufacturing_template_rules_are_enforced() -> None:
    view = Schema(create_manufacturing_schema().build())
    assert view.validate_array("quality_score", np.array([0.2, 0.9], np.float32)) == []
    assert view.validate_array("production/quality_score", np.array([0.2, 1.5])) == [
        "production/quality_score: value 1.5 at index [1] is above max_value 1.0"
    ]


# ---------------------------------------------------------------------------------------
# normalize_schema
# ---------------------------------------------------------------------------------------


def test_normalize_accepts_every_form() -> None:
    built = cad_builder().build()
    assert normalize_schema(built) == built
    assert normalize_schema(json.loads(json.dumps(built))) == built

    single = copy.deepcopy(built)
    single["metadata"] = single["metadata"]["metadata"]
    assert normalize_schema(single) == built

    spelled = copy.deepcopy(built)
    faces = spelled["groups"]["faces"]
    faces["base_dimension"] = faces.pop("primary_dimension")
    for spec in faces["arrays"].values():
        spec["dimensions"] = spec.pop("dims")
    assert normalize_schema(spelled) == built

    no_metadata = {k: v for k, v in built.items() if k != "metadata"}
    assert normalize_schema(no_metadata)["metadata"] == {
        "metadata": {"file_level": {}, "categorical": {}, "routing_rules": DEFAULT_ROUTING}
    }


def test_normalize_fills_defaults() -> None:
    assert normalize_schema({}) == SchemaBuilder().build()
    result = normalize_schema(
        {
            "groups": {
                "faces": {
                    "primary_dimension": "face",
                    "description": None,
                    "arrays": {"a": {"dims": ("face",)}},
                    "special_processing": None,
                }
            },
            "description": None,
            "metadata": {"routing_rules": {"categorical_patterns": ["x"]}},
        }
    )
    assert result["groups"]["faces"] == {
        "primary_dimension": "face",
        "arrays": {"a": {"dims": ["face"], "dtype": "float32", "description": ""}},
        "description": "",
    }
    assert result["description"] == ""
    assert result["metadata"]["metadata"]["routing_rules"] == {
        **DEFAULT_ROUTING,
        "file_level_patterns": [],
        "categorical_patterns": ["x"],
    }


def test_normalize_puts_keys_in_canonical_order() -> None:
    messy = {
        "metadata": {
            "categorical": {
                "c": {"labels": ["A"], "values": [1], "description": "d", "dtype": "int32"}
            },
            "file_level": {"f": {"required": True, "min_value": 0, "dtype": "int64"}},
        },
        "groups": {
            "g": {
                "description": "x",
                "special_processing": "nested_edges",
                "arrays": {"a": {"unit": "mm", "dtype": "int32", "dimensions": ["n"]}},
                "base_dimension": "n",
            }
        },
        "domain": "d",
    }
    result = normalize_schema(messy)
    assert list(result) == ["version", "domain", "groups", "description", "metadata"]
    assert list(result["groups"]["g"]) == [
        "primary_dimension",
        "arrays",
        "description",
        "special_processing",
    ]
    assert list(result["groups"]["g"]["arrays"]["a"]) == ["dims", "dtype", "description", "unit"]
    meta = result["metadata"]["metadata"]
    assert list(meta["categorical"]["c"]) == [
        "dtype",
        "required",
        "description",
        "values",
        "labels",
    ]
    assert list(meta["file_level"]["f"]) == ["dtype", "description", "required", "min_value"]


def test_normalize_does_not_share_or_mutate() -> None:
    built = cad_builder().build()
    original = copy.deepcopy(built)
    result = normalize_schema(built)
    result["groups"]["faces"]["arrays"]["face_areas"]["dims"].append("x")
    result["metadata"]["metadata"]["routing_rules"]["categorical_patterns"].append("y")
    assert built == original


def _with(path: list[str], value: Any) -> dict[str, Any]:
    """A copy of the CAD schema with the entry at *path* replaced (or deleted for ...)."""
    schema = cad_builder().build()
    target = schema
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return schema


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ([1, 2], "schema: expected a dict, got list"),
        ({"grups": {}}, "schema: unknown key 'grups'; expected only version, domain, groups"),
        ({"version": 1}, "version: expected a non-empty str, got 1"),
        ({"domain": ""}, "domain: expected a non-empty str, got ''"),
        ({"groups": []}, "groups: expected a dict, got list"),
        ({"groups": {"a/b": {"primary_dimension": "x"}}}, "groups.a/b: name 'a/b' must not"),
        ({"groups": {"": {"primary_dimension": "x"}}}, "groups.: a name must not be empty"),
        ({"groups": {"faces": "face"}}, "groups.faces: expected a dict, got str"),
        (
            _with(["groups", "faces", "arrays", "face_areas", "dims"], 3),
            "groups.faces.arrays.face_areas.dims: expected a list of str, got int",
        ),
        (
            _with(["groups", "faces", "arrays", "face_areas", "dims"], ["face", None]),
            "groups.faces.arrays.face_areas.dims[1]: expected a str, got NoneType",
        ),
        (
            _with(["groups", "faces", "arrays", "face_areas", "dims"], ...),
            "groups.faces.arrays.face_areas.dims: missing",
        ),
        (
            _with(["groups", "faces", "arrays", "face_areas", "dtype"], "float"),
            "groups.faces.arrays.face_areas.dtype: unknown dtype 'float'; allowed dtypes are "
            "float16, float32",
        ),
        (
            _with(["groups", "faces", "arrays", "face_areas", "description"], 3),
            "groups.faces.arrays.face_areas.description: expected a str or None, got int",
        ),
        (
            _with(["groups", "faces", "arrays", "face_areas", "min_value"], "0"),
            "groups.faces.arrays.face_areas.min_value: expected a number, got str",
        ),
        (
            _with(["groups", "faces", "arrays", "face_areas"], ["face"]),
            "groups.faces.arrays.face_areas: expected a dict, got list",
        ),
        (
            _with(["groups", "faces", "arrays"], [1]),
            "groups.faces.arrays: expected a dict, got list",
        ),
        (
            _with(["groups", "faces", "primary_dimension"], ...),
            "groups.faces.primary_dimension: missing",
        ),
        (
            _with(["groups", "faces", "primary_dimension"], ""),
            "groups.faces.primary_dimension: expected a non-empty str, got ''",
        ),
        (
            _with(["groups", "faces", "base_dimension"], "edge"),
            "groups.faces: primary_dimension 'face' and base_dimension 'edge' disagree",
        ),
        (
            _with(["groups", "faces", "arrays", "face_areas", "dimensions"], ["edge"]),
            "groups.faces.arrays.face_areas: dims ['face'] and dimensions ['edge'] disagree",
        ),
        (
            _with(["groups", "faces", "primary_dim"], "face"),
            "groups.faces: unknown key 'primary_dim'",
        ),
        (
            _with(["groups", "faces", "special_processing"], 1),
            "groups.faces.special_processing: expected a non-empty str or None, got 1",
        ),
        (_with(["metadata"], []), "metadata: expected a dict, got list"),
        (
            _with(["metadata", "file_level"], {}),
            "metadata: has a nested 'metadata' section and also 'file_level' beside it",
        ),
        (
            _with(["metadata", "metadata", "infoset"], {}),
            "metadata.metadata: unknown key 'infoset'",
        ),
        (
            _with(["metadata", "metadata", "file_level"], ["size_cadfile"]),
            "metadata.metadata.file_level: expected a dict, got list",
        ),
        (
            _with(["metadata", "metadata", "file_level", "size_cadfile", "dtype"], ...),
            "metadata.metadata.file_level.size_cadfile.dtype: missing",
        ),
        (
            _with(["metadata", "metadata", "file_level", "size_cadfile", "required"], "no"),
            "metadata.metadata.file_level.size_cadfile.required: expected a bool, got str",
        ),
        (
            _with(["metadata", "metadata", "categorical", "size_cadfile"], {"dtype": "int64"}),
            "metadata.metadata.categorical.size_cadfile: also defined in "
            "metadata.metadata.file_level",
        ),
        (
            _with(["metadata", "metadata", "categorical", "file_label", "labels"], ["A"]),
            "metadata.metadata.categorical.file_label.labels: labels need a values list",
        ),
        (
            _with(["metadata", "metadata", "routing_rules", "default_string"], "attribset"),
            "metadata.metadata.routing_rules.default_string: expected 'file_level' or "
            "'categorical', got 'attribset'",
        ),
        (
            _with(["metadata", "metadata", "routing_rules", "file_level_patterns"], "size_*"),
            "metadata.metadata.routing_rules.file_level_patterns: expected a list of str "
            "patterns, got str",
        ),
        (
            _with(["metadata", "metadata", "routing_rules", "patterns"], []),
            "metadata.metadata.routing_rules: unknown key 'patterns'",
        ),
        (
            {"metadata": {"file_level": {"f": {"dtype": "int32", "values": [1], "labels": "A"}}}},
            "metadata.file_level.f.labels: expected a list, got str",
        ),
        (
            {"metadata": {"routing_rules": {"default_numeric": 1}}},
            "metadata.routing_rules.default_numeric: expected 'file_level' or 'categorical'",
        ),
    ],
)
def test_normalize_errors_name_the_field(schema: Any, message: str) -> None:
    with raises_schema_error(message):
        normalize_schema(schema)
    if isinstance(schema, dict):
        with raises_schema_error(message):
            Schema(schema)
        with raises_schema_error(message):
            SchemaBuilder.from_dict(schema)


def test_schema_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="groups: expected a dict"):
        normalize_schema({"groups": 3})


def test_from_dict_accepts_single_nested_and_spellings() -> None:
    single = {
        "domain": "x",
        "groups": {"g": {"base_dimension": "n", "arrays": {"a": {"dimensions": ["n"]}}}},
        "metadata": {"file_level": {"size": {"dtype": "int64"}}},
    }
    builder = SchemaBuilder.from_dict(single)
    assert builder.get_group("g").primary_dimension == "n"  # type: ignore[union-attr]
    assert builder.build() == normalize_schema(single)
    assert builder.build()["metadata"]["metadata"]["file_level"] == {
        "size": {"dtype": "int64", "description": "", "required": False}
    }


# ---------------------------------------------------------------------------------------
# Schema: structure
# ---------------------------------------------------------------------------------------


def test_schema_structure_queries(schema: Schema) -> None:
    assert schema.groups == ("faces", "edges")
    assert (schema.domain, schema.version, schema.description) == ("CAD_analysis", "1.0", "")
    assert schema.primary_dimension("faces") == "face"
    assert schema.primary_dimension("nope") is None
    assert schema.special_processing("faces") is None
    assert schema.special_processing("nope") is None
    assert schema.array_names("faces") == ("face_indices", "face_areas", "face_types")
    assert schema.array_names("nope") == ()
    assert schema.to_dict() == cad_builder().build()


def test_schema_key_resolution() -> None:
    builder = SchemaBuilder()
    faces = builder.create_group("faces", "face")
    faces.create_array("face_areas", ["face"], "float32")
    faces.create_array("shared", ["face"], "int32")
    edges = builder.create_group("edges", "edge")
    edges.create_array("edge_lengths", ["edge"], "float32")
    edges.create_array("shared", ["edge", "k"], "int64")
    view = Schema(builder.build())

    spec = {"dims": ["face"], "dtype": "float32", "description": ""}
    assert view.array_spec("face_areas") == ("faces", "face_areas", spec)
    assert view.array_spec("faces/face_areas") == ("faces", "face_areas", spec)
    assert view.array_spec("faces/sub/face_areas") == ("faces", "face_areas", spec)
    assert view.array_spec("Labels/face_areas") == ("faces", "face_areas", spec)
    assert view.array_spec("/faces/face_areas") == ("faces", "face_areas", spec)
    # A group that exists but does not declare the array: not described by the schema.
    assert view.array_spec("edges/face_areas") is None
    assert view.array_spec("unknown") is None
    assert view.array_spec("faces") is None
    assert view.array_spec("/") is None
    # First group in order wins for a bare name; the group prefix picks exactly.
    assert view.group_for_array("shared") == "faces"
    assert view.dims_for("shared") == ("face",)
    assert view.dims_for("edges/shared") == ("edge", "k")
    assert view.group_for_array("edges/shared") == "edges"
    assert view.dims_for("nope/nope") is None
    # The returned spec is a copy.
    found = view.array_spec("face_areas")
    assert found is not None
    found[2]["dims"].append("x")
    assert view.dims_for("face_areas") == ("face",)


def test_schema_is_immutable_and_independent() -> None:
    built = cad_builder().build()
    view = Schema(built)
    built["groups"]["faces"]["arrays"].clear()
    assert view.array_names("faces") == ("face_indices", "face_areas", "face_types")
    with pytest.raises(AttributeError, match="immutable"):
        view.groups = ()  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        view._canonical = {}  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del view._canonical
    copied = view.to_dict()
    copied["groups"].clear()
    assert view.groups == ("faces", "edges")


def test_schema_from_any_equality_hash_pickle() -> None:
    builder = cad_builder()
    view = Schema.from_any(builder)
    assert Schema.from_any(view) is view
    assert Schema.from_any(builder.build()) == view
    single = builder.build()
    single["metadata"] = single["metadata"]["metadata"]
    assert Schema.from_any(single) == view
    assert hash(Schema(single)) == hash(view)
    assert len({view, Schema(builder.build())}) == 1
    assert view != Schema({})
    assert view != builder.build()
    restored = pickle.loads(pickle.dumps(view))  # noqa: S301 (our own bytes)
    assert restored == view
    assert restored.dims_for("edge_lengths") == ("edge",)
    assert "faces" in repr(view)
    with raises_schema_error("schema: expected a Schema, SchemaBuilder or dict, got str"):
        Schema.from_any("schema.json")  # type: ignore[arg-type]


def test_empty_schema_accepts_everything() -> None:
    view = Schema({})
    assert view.groups == ()
    assert view.validate_array("face_areas", {"not": "an array"}) == []
    assert view.route_metadata("size_cadfile", 1) == "file_level"


# ---------------------------------------------------------------------------------------
# Schema: validate_array
# ---------------------------------------------------------------------------------------


def _view(dtype: str, dims: list[str] | None = None, **rules: Any) -> Schema:
    builder = SchemaBuilder()
    builder.create_group("g", "n").create_array(
        "x", ["n"] if dims is None else dims, dtype, **rules
    )
    return Schema(builder.build())


@pytest.mark.parametrize(
    ("dtype", "data"),
    [
        ("float32", np.array([1.5], np.float32)),
        ("float32", np.array([1.5], np.float64)),
        ("float64", np.array([1.5], np.float16)),
        ("float32", [1.5, 2.0]),
        ("int32", np.array([1, -2], np.int32)),
        ("int32", np.array([1, 2**31 - 1, -(2**31)], np.int64)),
        ("int32", np.array([255], np.uint8)),
        ("int32", np.array([2**31 - 1], np.uint64)),
        ("int64", [1, 2, 3]),
        ("int8", np.array([-128, 127], np.int64)),
        ("uint8", np.array([0, 255], np.int64)),
        ("uint32", np.array([7], np.int8)),
        ("uint64", np.array([2**64 - 1], np.uint64)),
        ("uint16", np.array([65535], np.uint32)),
        ("bool", np.array([True, False])),
        ("bool", [True, False]),
        ("complex64", np.array([1 + 2j], np.complex128)),
        ("str", ["a", "bc"]),
        ("str", np.array(["a", "bc"])),
        ("str", np.array(["a", "bc"], dtype=object)),
        ("float32", []),
        ("int32", ()),
        ("int32", np.zeros(0, np.int64)),
        ("uint8", np.zeros(0, np.int64)),
    ],
)
def test_validate_array_accepts(dtype: str, data: Any) -> None:
    assert _view(dtype).validate_array("x", data) == []


@pytest.mark.parametrize(
    ("dtype", "data", "message"),
    [
        (
            "float32",
            np.array([1, 2, 3], np.int32),
            "x: dtype int32 does not match float32 (float arrays take float data only)",
        ),
        ("float32", [1, 2], "x: dtype int64 does not match float32"),
        ("float64", np.array([1 + 1j]), "x: dtype complex128 does not match float64"),
        ("float32", np.array([True]), "x: dtype bool does not match float32"),
        (
            "int32",
            np.array([1, 2**31], np.int64),
            "x: value 2147483648 at index [1] does not fit in int32 (range -2147483648..",
        ),
        (
            "int32",
            np.array([0, -(2**31) - 1], np.int64),
            "x: value -2147483649 at index [1] does not fit in int32",
        ),
        (
            "int64",
            np.array([1, 2**63], np.uint64),
            "x: value 9223372036854775808 at index [1] does not fit in int64",
        ),
        ("int32", np.array([1.0]), "x: dtype float64 does not match int32 (integer arrays take"),
        ("int32", np.array([True]), "x: dtype bool does not match int32"),
        ("int32", np.zeros(0, np.float64), "x: dtype float64 does not match int32"),
        (
            "uint8",
            np.array([3, -1, -2], np.int16),
            "x: value -1 at index [1] does not fit in uint8 (range 0..255)",
        ),
        ("uint8", np.array([256], np.uint16), "x: value 256 at index [0] does not fit in uint8"),
        ("uint32", np.array([1.0]), "x: dtype float64 does not match uint32 (unsigned integer"),
        ("bool", np.array([0, 1]), "x: dtype int64 does not match bool (bool arrays take bool"),
        ("complex64", np.array([1.0]), "x: dtype float64 does not match complex64"),
        (
            "str",
            np.array([1, 2]),
            "x: dtype int64 does not match str (str arrays take strings only)",
        ),
        ("str", ["a", 1], "x: expected str elements, found int 1 at index [1]"),
        ("str", np.array(["a", None], dtype=object), "x: expected str elements, found NoneType"),
        ("str", np.array([b"a"]), "x: dtype |S1 does not match str"),
        ("int32", np.array(["1"]), "x: dtype <U1 does not match int32"),
    ],
)
def test_validate_array_dtype_problems(dtype: str, data: Any, message: str) -> None:
    problems = _view(dtype).validate_array("x", data)
    assert len(problems) == 1, problems
    assert problems[0].startswith(message), problems


def test_validate_array_ndim() -> None:
    view = _view("float32", ["n", "k"])
    assert view.validate_array("x", np.zeros((2, 3), np.float32)) == []
    assert view.validate_array("x", np.zeros((2, 3, 1), np.float32)) == [
        "x: expected 2 dimension(s) ['n', 'k'], got 3 (shape (2, 3, 1))"
    ]
    # Both problems are reported at once.
    assert view.validate_array("x", np.zeros(3, np.int32)) == [
        "x: expected 2 dimension(s) ['n', 'k'], got 1 (shape (3,))",
        "x: dtype int32 does not match float32 (float arrays take float data only)",
    ]
    assert view.validate_array("x", []) == [
        "x: expected 2 dimension(s) ['n', 'k'], got 1 (shape (0,))"
    ]
    assert view.validate_array("x", [[1.0, 2.0], [3.0, 4.0]]) == []
    problems = view.validate_array("x", [[1.0], [2.0, 3.0]])
    assert len(problems) == 1
    assert problems[0].startswith("x: cannot be read as an array")


def test_validate_array_scalars() -> None:
    assert _view("float32", []).validate_array("x", 1.5) == []
    assert _view("float32", []).validate_array("x", np.float32(1.5)) == []
    assert _view("int32", []).validate_array("x", 7) == []
    assert _view("int32", []).validate_array("x", np.int64(7)) == []
    assert _view("bool", []).validate_array("x", True) == []
    assert _view("str", []).validate_array("x", "hello") == []
    assert _view("str", []).validate_array("x", np.str_("hello")) == []
    assert _view("float32", []).validate_array("x", 2) == [
        "x: dtype int64 does not match float32 (float arrays take float data only)"
    ]
    assert _view("int32", []).validate_array("x", 2**40) == [
        "x: value 1099511627776 does not fit in int32 (range -2147483648..2147483647)"
    ]
    assert _view("int32", ["n"]).validate_array("x", 3) == [
        "x: expected 1 dimension(s) ['n'], got 0 (shape ())"
    ]
    assert _view("str", ["n"]).validate_array("x", "abc") == [
        "x: expected 1 dimension(s) ['n'], got 0 (shape ())"
    ]
    problems = _view("int64", []).validate_array("x", 2**70)
    assert problems == [
        "x: dtype object does not match int64 (integer arrays take integer data only)"
    ]


def test_validate_array_min_max() -> None:
    view = _view("float32", min_value=0.0, max_value=10.0)
    assert view.validate_array("x", np.array([0.0, 10.0, np.nan], np.float32)) == []
    assert view.validate_array("x", np.array([np.nan, np.nan], np.float32)) == []
    assert view.validate_array("x", np.array([np.nan, 5, -1, -2, 11], np.float32)) == [
        "x: value -1.0 at index [2] is below min_value 0.0",
        "x: value 11.0 at index [4] is above max_value 10.0",
    ]
    grid = _view("int32", ["n", "k"], min_value=0)
    assert grid.validate_array("x", np.array([[1, 2], [3, -4]], np.int32)) == [
        "x: value -4 at index [1, 1] is below min_value 0"
    ]
    assert _view("float64", [], max_value=1).validate_array("x", 2.5) == [
        "x: value 2.5 is above max_value 1"
    ]
    # Rules are checked only once the dtype is acceptable.
    assert view.validate_array("x", np.array([-5], np.int32)) == [
        "x: dtype int32 does not match float32 (float arrays take float data only)"
    ]


def test_validate_array_values_rule() -> None:
    view = _view("int32", values=[1, 2, 3])
    assert view.validate_array("x", np.array([3, 1, 2, 1], np.int32)) == []
    assert view.validate_array("x", np.array([1, 5, 4, 5], np.int32)) == [
        "x: value 5 at index [1] is not one of the allowed values [1, 2, 3]"
    ]
    words = _view("str", values=["steel", "wood"])
    assert words.validate_array("x", ["wood", "steel"]) == []
    assert words.validate_array("x", np.array(["wood", "iron"])) == [
        "x: value 'iron' at index [1] is not one of the allowed values ['steel', 'wood']"
    ]
    assert words.validate_array("x", ["wood", "gold"]) == [
        "x: value 'gold' at index [1] is not one of the allowed values ['steel', 'wood']"
    ]
    floats = _view("float64", values=[0.5])
    assert floats.validate_array("x", np.array([0.5, np.nan]))[0].startswith("x: value nan")


def test_validate_array_ignores_unknown_rules_and_rejects_dicts() -> None:
    view = _view("float32", unit="mm", frobnicate={"a": [1, 2]})
    assert view.validate_array("x", np.array([1.0], np.float32)) == []
    assert view.validate_array("g/x", {"a": 1}) == [
        "g/x: got a dict, but g/x is declared as a float32 array with dims ['n']"
    ]
    assert view.validate_array("y", {"a": 1}) == []


def test_validate_array_uses_group_prefix(schema: Schema) -> None:
    ints = np.array([1, 2], np.int32)
    assert schema.validate_array("faces/face_types", ints) == []
    assert schema.validate_array("faces/face_areas", ints) != []
    assert schema.validate_array("edges/face_areas", ints) == []  # not declared in edges


# ---------------------------------------------------------------------------------------
# Schema: metadata routing
# ---------------------------------------------------------------------------------------


def test_route_metadata_default_rules() -> None:
    view = Schema(SchemaBuilder().build())
    assert view.route_metadata("size_cadfile", 1) == "file_level"
    assert view.route_metadata("duration_encode", "1s") == "file_level"  # pattern beats type
    assert view.route_metadata("flow_name", "f") == "file_level"
    assert view.route_metadata("part_label", 3) == "categorical"
    assert view.route_metadata("category", 3) == "categorical"
    assert view.route_metadata("material_type", 3) == "categorical"
    assert view.route_metadata("FLOW_NAME", "f") == "file_level"  # case-insensitive
    assert view.route_metadata("Part_LABEL", 1.0) == "categorical"
    assert view.route_metadata("Size_CADFile", "big") == "file_level"


def test_route_metadata_order() -> None:
    builder = SchemaBuilder()
    builder.define_file_metadata("file_label", "int32")  # explicit beats '*_label'
    builder.define_categorical_metadata("size_class", "str")  # explicit beats 'size_*'
    builder.define_categorical_metadata("descriptions", "str")
    builder.set_metadata_routing_rules(
        file_level_patterns=["size_*", "stream *", "item?"],
        categorical_patterns=["size_*", "*_label", "type"],
    )
    view = Schema(builder.build())
    assert view.route_metadata("file_label", 1) == "file_level"
    assert view.route_metadata("size_class", 1) == "categorical"
    # First '/' segment explicitly defined.
    assert view.route_metadata("descriptions/face_types", 5) == "categorical"
    # File-level patterns are tried first.
    assert view.route_metadata("size_total", "x") == "file_level"
    # The last segment is matched too.
    assert view.route_metadata("file_sizes_KB/size_faces", [1]) == "file_level"
    assert view.route_metadata("labels/part_label", 1) == "categorical"
    # '*' is the only wildcard; '?' is literal; spaces work.
    assert view.route_metadata("stream .scs", 1) == "file_level"
    assert view.route_metadata("STREAM .PRC", {}) == "file_level"
    assert view.route_metadata("item?", "x") == "file_level"
    assert view.route_metadata("items", "x") == "categorical"
    # A pattern must match the whole key.
    assert view.route_metadata("prototype", 1) == "file_level"
    assert view.route_metadata("type", 1) == "categorical"


def test_route_metadata_type_defaults() -> None:
    builder = SchemaBuilder()
    builder.set_metadata_routing_rules(
        default_numeric="categorical",
        default_categorical="file_level",
        default_string="categorical",
    )
    view = Schema(builder.build())
    assert view.route_metadata("a", 1) == "categorical"
    assert view.route_metadata("a", np.float32(1.5)) == "categorical"
    assert view.route_metadata("a", "text") == "categorical"
    assert view.route_metadata("a", True) == "file_level"  # bool is not numeric
    assert view.route_metadata("a", np.bool_(False)) == "file_level"
    assert view.route_metadata("a", {"k": 1}) == "file_level"
    assert view.route_metadata("a", [1, 2]) == "file_level"
    assert view.route_metadata("a", None) == "file_level"

    defaults = Schema({})
    assert defaults.route_metadata("x", 3) == "file_level"
    assert defaults.route_metadata("x", np.int64(3)) == "file_level"
    assert defaults.route_metadata("x", np.array(2.5)) == "file_level"
    assert defaults.route_metadata("x", 2.5) == "file_level"
    assert defaults.route_metadata("x", "abc") == "categorical"
    assert defaults.route_metadata("x", np.str_("abc")) == "categorical"
    assert defaults.route_metadata("x", False) == "categorical"
    assert defaults.route_metadata("x", {"a": 1}) == "categorical"
    assert defaults.route_metadata("x", np.arange(3)) == "categorical"


def test_schema_metadata_queries(schema: Schema) -> None:
    assert schema.metadata_fields() == {
        "file_level": ["size_cadfile", "processing_time"],
        "categorical": ["file_label"],
    }
    definition = schema.metadata_definition("file_label")
    assert definition == {"dtype": "int32", "required": False, "description": "Classification"}
    assert definition is not None
    definition["dtype"] = "str"
    assert schema.metadata_definition("file_label")["dtype"] == "int32"  # type: ignore[index]
    assert schema.metadata_definition("nope") is None
    rules = schema.routing_rules
    rules["file_level_patterns"].clear()
    assert schema.routing_rules["file_level_patterns"] == ["size_*", "processing_*"]
    assert schema.validate_metadata("file_label", 2) == []
    assert schema.validate_metadata("file_label", "two") == [
        "file_label: 'two' (str) is not a valid int32"
    ]
    assert schema.validate_metadata("undefined", object()) == []


# ---------------------------------------------------------------------------------------
# Edge cases of argument checking
# ---------------------------------------------------------------------------------------


def test_rule_values_are_made_json_compatible() -> None:
    group = Group("g", "n")
    group.create_array("x", ["n"], "int32", codes=[np.int64(3), (1, 2)], meta={"k": np.float32(2)})
    spec = group.get_array("x")
    assert spec is not None
    assert spec["codes"] == [3, [1, 2]]
    assert type(spec["codes"][0]) is int
    assert spec["meta"] == {"k": 2.0}
    json.dumps(spec)  # must not raise
    with raises_schema_error("groups.g.arrays.y.meta: dict keys must be str, got int"):
        group.create_array("y", ["n"], meta={1: 2})


def test_normalize_rejects_non_str_rule_names_and_odd_dims() -> None:
    with raises_schema_error("groups.g.arrays.a: rule names must be str, got int"):
        normalize_schema(
            {"groups": {"g": {"primary_dimension": "n", "arrays": {"a": {"dims": ["n"], 1: 2}}}}}
        )
    both = {"dims": np.array(["n", "k"]), "dimensions": np.array(["n", "k"])}
    with raises_schema_error("groups.g.arrays.a: dims"):
        normalize_schema({"groups": {"g": {"primary_dimension": "n", "arrays": {"a": both}}}})
    mismatch = {"dtype": "int32", "values": [1, 2, 3], "labels": ["a", "b"]}
    with raises_schema_error("metadata.categorical.c.labels: 2 labels for 3 values"):
        normalize_schema({"metadata": {"categorical": {"c": mismatch}}})


def test_metadata_name_must_be_str() -> None:
    with raises_schema_error("metadata.file_level.5: expected a non-empty str name, got int"):
        SchemaBuilder().define_file_metadata(5, "int32")  # type: ignore[arg-type]


def test_metadata_values_of_other_kinds() -> None:
    builder = SchemaBuilder()
    builder.define_file_metadata("impedance", "complex64")
    builder.define_file_metadata("count", "int32", max_value=10)
    assert builder.validate_metadata_field("impedance", 1 + 2j) is True
    assert builder.validate_metadata_field("impedance", 3) is True
    assert builder.validate_metadata_field("impedance", "1+2j") is False
    assert builder.validate_metadata_field("count", np.array(4)) is True
    assert builder.validate_metadata_field("count", np.array(40)) is False
    assert builder.validate_metadata_field("count", np.array([4])) is False


def test_validate_array_rules_on_empty_and_unhashable_values() -> None:
    assert _view("float32", min_value=0.0).validate_array("x", np.zeros(0, np.float32)) == []
    odd = _view("int32", values=[1, [2, 3]])
    assert odd.validate_array("x", np.array([1, 1], np.int32)) == []
    assert odd.validate_array("x", np.array([1, 2], np.int32)) == [
        "x: value 2 at index [1] is not one of the allowed values [1, [2, 3]]"
    ]


def test_route_metadata_past_the_cache_limit() -> None:
    view = Schema(SchemaBuilder().build())
    for index in range(5000):
        assert view.route_metadata(f"item_{index}", index) == "file_level"
        assert view.route_metadata(f"item_{index}", "text") == "categorical"
        assert view.route_metadata(f"size_{index}", "text") == "file_level"


def test_item_face_pair_matrices_match_flattened_dims() -> None:
    from cadstore.schema import Schema, SchemaBuilder

    builder = SchemaBuilder()
    group = builder.create_group("faceface", "facepair", special_processing="matrix_flattening")
    group.create_array("d2_distance", ["facepair", "bin"], "float32")
    group.create_array("extended_adjacency", ["facepair"], "float32")
    schema = Schema(builder.build())
    assert schema.validate_array("d2_distance", np.zeros((5, 5, 64), np.float32)) == []
    assert schema.validate_array("extended_adjacency", np.zeros((5, 5), np.float32)) == []
    assert schema.validate_array("d2_distance", np.zeros((25, 64), np.float32)) == []
    assert schema.validate_array("d2_distance", np.zeros((5, 4, 64), np.float32)) != []


def test_declared_values_of_a_float32_array_match_its_data() -> None:
    """A values rule of [0.1, 0.5] on a float32 array refused float32 data equal to the
    declared values ("value 0.10000000149011612 ... is not one of the allowed values"):
    compared as float64. They are compared as the array's dtype holds them."""
    from cadstore.schema import Schema

    builder = SchemaBuilder(domain="CAD")
    faces = builder.create_group("faces", "face")
    faces.create_array("ratio", ["face"], "float32", values=[0.1, 0.5])
    faces.create_array("half", ["face"], "float16", values=[0.1, 1])
    schema = Schema.from_any(builder.build())
    assert schema.validate_array("ratio", np.array([0.1, 0.5, 0.1], dtype=np.float32)) == []
    assert schema.validate_array("half", np.array([0.1, 1], dtype=np.float16)) == []
    assert schema.validate_array("ratio", np.array([0.1, 0.5])) == []  # float64 as before
    (problem,) = schema.validate_array("ratio", np.array([0.1, 0.2], dtype=np.float32))
    assert "at index [1] is not one of the allowed values [0.1, 0.5]" in problem
