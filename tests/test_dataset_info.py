"""DatasetInfo: the .infoset and .attribset Parquet files, built from real OptStorage items."""

from __future__ import annotations

import json
import math
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cadstore import OptStorage, SchemaBuilder
from cadstore.errors import MergeError
from cadstore.io.publish import TEMP_PREFIX
from cadstore.merging.tables import (
    ATTRIBSET_COLUMNS,
    NOT_SET,
    PARQUET_METADATA_KEY,
    DatasetInfo,
    build_info,
    column_name,
    item_name_from_path,
)

FACE_TYPES = {"0": "Plane", "1": "Cylinder", "2": "Cone"}
LABELS = ["bolt", "nut", "bracket"]
VENDOR = Path(__file__).parent / "fixtures" / "vendor_v2"
INFOSET_COLUMNS = [
    "name",
    "id",
    "description",
    "size_cadfile",
    "processing_time",
    "file_label",
    "category",
    "subset",
    "table_name",
]


def make_schema() -> SchemaBuilder:
    builder = SchemaBuilder(domain="info_test")
    builder.create_group("faces", "face").create_array("face_areas", ["face"], "float32")
    builder.define_file_metadata("size_cadfile", "int64")
    builder.define_file_metadata("processing_time", "float64")
    builder.define_categorical_metadata("file_label", "int32", values=[0, 1, 2], labels=LABELS)
    builder.set_metadata_routing_rules(
        file_level_patterns=["size_*", "processing_*", "num_*"],
        categorical_patterns=["*_label", "category", "material"],
    )
    return builder


def make_item(
    root: Path,
    name: str,
    metadata: dict[str, Any],
    *,
    schema: Any = None,
    face_types: dict[str, str] | None = None,
) -> Path:
    """Write one real item with OptStorage; return its .data path."""
    storage = OptStorage(root / f"{name}.zarr")
    if schema is not None:
        storage.set_schema(schema)
    storage.save_data("face_areas", np.arange(3, dtype=np.float32))
    for key, value in metadata.items():
        storage.save_metadata(key, value)
    storage.save_metadata("descriptions/face_types", face_types or FACE_TYPES)
    storage.compress_store()
    storage.close()
    return root / f"{name}.zarr.data"


def item_metadata(i: int) -> dict[str, Any]:
    return {
        "Item": f"C:/parts/part_{i}.step",
        "size_cadfile": 1000 + i,
        # Whole numbers on purpose: the schema declares float64, so the column stays float.
        "processing_time": 2 if i == 0 else 0.5 * i,
        "file_label": [2, 0, 2][i % 3],
        "category": ["bracket", "bolt", "bracket"][i % 3],
    }


@pytest.fixture
def items(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Three items: (.data files, files_summary JSON files), in name order."""
    root = tmp_path / "encoded"
    data = [make_item(root, f"part_{i}", item_metadata(i), schema=make_schema()) for i in range(3)]
    summaries = [root / "files_summary" / f"part_{i}.json" for i in range(3)]
    assert all(p.is_file() for p in data + summaries)
    return data, summaries


def run(info_files: list[Path], data: list[Path], out: Path, **kwargs: Any) -> DatasetInfo:
    info = DatasetInfo(info_files, out / "flow.infoset", out / "flow.attribset", **kwargs)
    info.parse_info_files()
    info.build_code_mappings(data)
    info.store_info_to_parquet()
    return info


def attribute_rows(path: Path, table: str) -> dict[int, str]:
    frame = pd.read_parquet(path)
    rows = frame[frame["table_name"] == table]
    return dict(zip(rows["id"].tolist(), rows["name"].tolist(), strict=True))


# ---------------------------------------------------------------------------- infoset
def test_infoset_columns_dtypes_and_values(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    info = run(summaries, data, tmp_path / "out")
    path = tmp_path / "out" / "flow.infoset"
    schema = pq.read_schema(path)
    assert schema.names == INFOSET_COLUMNS
    assert [str(t) for t in schema.types] == [
        "string",
        "int64",
        "string",
        "int64",
        "double",
        "int64",
        "string",
        "string",
        "string",
    ]
    frame = pd.read_parquet(path)
    assert list(frame.columns) == INFOSET_COLUMNS
    assert frame["id"].dtype == np.int64
    assert frame["size_cadfile"].dtype == np.int64
    assert frame["processing_time"].dtype == np.float64
    for col in ("name", "description", "category", "subset", "table_name"):
        assert pd.api.types.is_string_dtype(frame[col]), col
    assert frame["name"].tolist() == ["part_0", "part_1", "part_2"]
    assert frame["id"].tolist() == [0, 1, 2]
    assert frame["description"].tolist() == [f"C:/parts/part_{i}.step" for i in range(3)]
    assert frame["size_cadfile"].tolist() == [1000, 1001, 1002]
    assert frame["processing_time"].tolist() == [2.0, 0.5, 1.0]
    assert frame["file_label"].tolist() == [2, 0, 2]
    assert frame["category"].tolist() == ["bracket", "bolt", "bracket"]
    assert set(frame["subset"]) == {"N/A"}
    assert set(frame["table_name"]) == {"file_info"}
    assert info.errors == [] and info.warnings == []
    fields = json.loads(schema.metadata[PARQUET_METADATA_KEY])["fields"]
    assert fields["file_label"] == {"field": "file_label", "route": "categorical"}
    assert fields["size_cadfile"]["route"] == "file_level"


def test_ids_follow_data_file_order(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    order = [data[2], data[0], data[1]]
    info = run(summaries, order, tmp_path / "out")
    assert info.code_mappings == {"part_2": 0, "part_0": 1, "part_1": 2}
    frame = pd.read_parquet(tmp_path / "out" / "flow.infoset")
    # Rows sorted by id, each id the item's code.
    assert frame["id"].tolist() == [0, 1, 2]
    assert frame["name"].tolist() == ["part_2", "part_0", "part_1"]
    assert frame["size_cadfile"].tolist() == [1002, 1000, 1001]


def test_custom_table_name(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    info = DatasetInfo(summaries, tmp_path / "a.infoset", tmp_path / "a.attribset")
    info.parse_info_files()
    info.build_code_mappings(data)
    assert info.store_info_to_parquet("parts") == str(tmp_path / "a.infoset")
    assert set(pd.read_parquet(tmp_path / "a.infoset")["table_name"]) == {"parts"}


def test_missing_field_is_null(tmp_path: Path) -> None:
    root = tmp_path / "encoded"
    meta = item_metadata(1)
    data = [make_item(root, "full", meta, schema=make_schema())]
    partial = {k: v for k, v in meta.items() if k not in ("size_cadfile", "processing_time")}
    data.append(make_item(root, "partial", partial, schema=make_schema()))
    run(list(data), data, tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "flow.infoset")
    assert str(table.schema.field("size_cadfile").type) == "int64"
    assert table.column("size_cadfile").to_pylist() == [1001, None]
    assert table.column("processing_time").to_pylist() == [0.5, None]


def test_nan_metadata_is_decoded(tmp_path: Path) -> None:
    root = tmp_path / "encoded"
    meta = item_metadata(1) | {"processing_time": math.nan}
    data = [make_item(root, "nan_item", meta, schema=make_schema())]
    raw = (root / "files_summary" / "nan_item.json").read_text()
    assert '"__float__"' in raw  # the summary holds the tagged form, not a NaN token
    run([root / "files_summary" / "nan_item.json"], data, tmp_path / "out")
    values = pq.read_table(tmp_path / "out" / "flow.infoset").column("processing_time")
    assert math.isnan(values.to_pylist()[0])


# ---------------------------------------------------------------------------- attribset
def test_attribset_description_and_categorical_tables(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    run(summaries, data, tmp_path / "out")
    path = tmp_path / "out" / "flow.attribset"
    schema = pq.read_schema(path)
    assert schema.names == list(ATTRIBSET_COLUMNS)
    assert [str(t) for t in schema.types] == ["int64", "string", "string", "string"]
    frame = pd.read_parquet(path)
    assert frame["id"].dtype == np.int64
    assert attribute_rows(path, "face_types") == {0: "Plane", 1: "Cylinder", 2: "Cone"}
    # Only the labels seen, named from the schema's define_categorical_metadata labels.
    assert attribute_rows(path, "file_label") == {0: "bolt", 2: "bracket"}
    # Strings are numbered in sorted order.
    assert attribute_rows(path, "category") == {0: "bolt", 1: "bracket"}
    assert set(frame["description"]) == {NOT_SET}
    assert set(frame["table_name"]) == {"face_types", "file_label", "category"}


def test_description_conflict_keeps_first_and_warns(tmp_path: Path) -> None:
    root = tmp_path / "encoded"
    schema = make_schema()
    data = [
        make_item(root, "a", item_metadata(0), schema=schema),
        make_item(root, "b", item_metadata(1), schema=schema, face_types={"0": "Flat", "7": "X"}),
    ]
    info = run(data, data, tmp_path / "out")
    rows = attribute_rows(tmp_path / "out" / "flow.attribset", "face_types")
    assert rows == {0: "Plane", 1: "Cylinder", 2: "Cone", 7: "X"}
    assert any("'Plane'" in w and "'Flat'" in w for w in info.warnings)


def test_a_set_attributes_conflict_names_the_items(tmp_path: Path) -> None:
    """A label given by :meth:`DatasetInfo.set_attributes` and another by the items'
    descriptions was warned of as "in the items", naming none. It names the items giving
    the other label; the label of ``set_attributes`` is kept in the ``.attribset``."""
    files = []
    for index, label in enumerate(["plane", "flat"]):
        with OptStorage(tmp_path / f"p{index}.zarr") as item:
            item.save_data("face_areas", np.ones(2, dtype=np.float32))
            item.save_metadata("descriptions", {"face_types": {"0": label, "1": "cone"}})
            item.compress_store()
        files.append(str(tmp_path / f"p{index}.zarr.data"))
    info = DatasetInfo(files, tmp_path / "f.infoset", tmp_path / "f.attribset")
    info.set_attributes({0: "round", 1: "cone"}, "face_types")
    info.parse_info_files()
    info.build_code_mappings(files)
    info.store_info_to_parquet()
    warning = (
        "attribute table 'face_types': code 0 is 'round' from set_attributes and 'plane' in "
        "the items' descriptions (item 'p0'); keeping 'round'"
    )
    assert info.warnings.count(warning) == 1, info.warnings
    assert warning in info.summary()["warnings"]
    assert attribute_rows(tmp_path / "f.attribset", "face_types") == {0: "round", 1: "cone"}


def _described_items(folder: Path, labels: list[Any]) -> list[str]:
    """One small item per ``face_types`` label of code 0, named ``p0``, ``p1``..."""
    files = []
    for index, label in enumerate(labels):
        with OptStorage(folder / f"p{index}.zarr") as item:
            item.save_data("face_areas", np.ones(2, dtype=np.float32))
            item.save_metadata("descriptions", {"face_types": {"0": label}})
            item.compress_store()
        files.append(str(folder / f"p{index}.zarr.data"))
    return files


def _attribute_descriptions(path: Path, table: str) -> dict[int, tuple[str, str]]:
    frame = pd.read_parquet(path)
    rows = frame[frame["table_name"] == table]
    return {
        int(code): (name, description)
        for code, name, description in zip(
            rows["id"], rows["name"], rows["description"], strict=True
        )
    }


def test_a_label_given_two_descriptions_is_warned_of_by_its_descriptions(
    tmp_path: Path,
) -> None:
    """A code given one label name with two descriptions was warned of as "code 0 is
    'plane' (item 'p0') and 'plane' (item 'p1'); keeping 'plane'": the same name twice,
    not what differs. The warning quotes the descriptions, naming the items of each; the
    first label is kept, description and all. Labels differing in their names are named as
    before, and, when some names are alike too, each with its description."""
    plane = {"name": "plane", "description": "Flat face"}
    files = _described_items(
        tmp_path,
        [plane, {"name": "plane", "description": "Planar surface"}, "plane", plane],
    )
    info = DatasetInfo(files, tmp_path / "f.infoset", tmp_path / "f.attribset")
    info.parse_info_files()
    info.build_code_mappings(files)
    info.store_info_to_parquet()
    warning = (
        "description table 'face_types': code 0 is 'plane' with different descriptions, "
        "'Flat face' (2 items, first 'p0'), 'Planar surface' (item 'p1') and none (item "
        "'p2'); keeping 'Flat face'"
    )
    assert info.warnings.count(warning) == 1, info.warnings
    assert _attribute_descriptions(tmp_path / "f.attribset", "face_types") == {
        0: ("plane", "Flat face")
    }

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    files = _described_items(mixed, [plane, {"name": "plane"}, {"name": "flat"}])
    info = DatasetInfo(files, mixed / "f.infoset", mixed / "f.attribset")
    info.parse_info_files()
    info.build_code_mappings(files)
    info.store_info_to_parquet()
    warning = (
        "description table 'face_types': code 0 is 'plane' described 'Flat face' (item "
        "'p0'), 'plane' with no description (item 'p1') and 'flat' with no description "
        "(item 'p2'); keeping 'plane' described 'Flat face'"
    )
    assert info.warnings.count(warning) == 1, info.warnings


def test_set_attributes_giving_a_label_another_description_is_warned_of_by_it(
    tmp_path: Path,
) -> None:
    """The same for a label of :meth:`DatasetInfo.set_attributes` against the items'
    (and against an earlier call's): the descriptions are quoted, the first kept."""
    files = _described_items(tmp_path, [{"name": "plane", "description": "Planar surface"}])
    info = DatasetInfo(files, tmp_path / "f.infoset", tmp_path / "f.attribset")
    info.parse_info_files()
    info.set_attributes({0: {"name": "plane", "description": "Flat face"}}, "face_types")
    info.set_attributes({0: {"name": "plane", "description": "Even face"}}, "face_types")
    info.build_code_mappings(files)
    info.store_info_to_parquet()
    expected = [
        "description table 'face_types': code 0 is 'plane' with different descriptions, "
        "'Flat face' and 'Even face' (in set_attributes); keeping 'Flat face'",
        "attribute table 'face_types': code 0 is 'plane' with different descriptions, "
        "'Flat face' from set_attributes and 'Planar surface' in the items' descriptions "
        "(item 'p0'); keeping 'Flat face'",
    ]
    for warning in expected:
        assert info.warnings.count(warning) == 1, info.warnings
    assert _attribute_descriptions(tmp_path / "f.attribset", "face_types") == {
        0: ("plane", "Flat face")
    }


def test_set_attributes_adds_a_table(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    info = DatasetInfo(summaries, tmp_path / "f.infoset", tmp_path / "f.attribset")
    info.parse_info_files()
    info.build_code_mappings(data)
    info.set_attributes({"0": "rough", 1: {"name": "fine", "description": "Ra < 0.8"}}, "finish")
    info.set_attributes(["bolt", "nut", "bracket", "gear"], "file_label")
    info.store_info_to_parquet()
    frame = pd.read_parquet(tmp_path / "f.attribset")
    finish = frame[frame["table_name"] == "finish"]
    assert finish["name"].tolist() == ["rough", "fine"]
    assert finish["description"].tolist() == [NOT_SET, "Ra < 0.8"]
    # Explicit rows are kept, including codes no item uses.
    assert attribute_rows(tmp_path / "f.attribset", "file_label") == dict(
        enumerate([*LABELS, "gear"])
    )


# ---------------------------------------------------------------------------- routing
def test_routing_string_to_attribset_numeric_to_infoset(tmp_path: Path) -> None:
    root = tmp_path / "encoded"
    extra = {"material": "steel", "num_holes": 4, "source": "catalogue", "is_sheet": True}
    data = [
        make_item(root, "a", item_metadata(0) | extra, schema=make_schema()),
        make_item(root, "b", item_metadata(1) | extra | {"material": "alu"}, schema=make_schema()),
    ]
    info = run(data, data, tmp_path / "out")
    summary = info.summary()
    assert summary["file_level_fields"] == ["size_cadfile", "processing_time", "num_holes"]
    assert set(summary["categorical_fields"]) == {
        "file_label",
        "category",
        "material",
        "source",
        "is_sheet",
    }
    attrib = tmp_path / "out" / "flow.attribset"
    assert attribute_rows(attrib, "material") == {0: "alu", 1: "steel"}
    assert attribute_rows(attrib, "source") == {0: "catalogue"}
    assert attribute_rows(attrib, "is_sheet") == {1: "True"}
    assert "num_holes" not in set(pd.read_parquet(attrib)["table_name"])
    table = pq.read_table(tmp_path / "out" / "flow.infoset")
    assert table.column("num_holes").to_pylist() == [4, 4]
    assert str(table.schema.field("is_sheet").type) == "bool"
    assert table.column("material").to_pylist() == ["steel", "alu"]


def test_recorded_routing_wins_over_schema(tmp_path: Path) -> None:
    summaries = tmp_path / "files_summary"
    summaries.mkdir()
    doc = {
        "Item": "p.step",
        "weight": 12,
        "size_cadfile": 5,
        "_metadata_routing": {"weight": "categorical", "size_cadfile": "categorical"},
    }
    (summaries / "p.json").write_text(json.dumps(doc))
    info = DatasetInfo([summaries / "p.json"], tmp_path / "i", tmp_path / "a", make_schema())
    info.parse_info_files()
    info.set_code_mappings({"p": 0})
    info.store_info_to_parquet()
    assert info.summary()["categorical_fields"] == ["weight", "size_cadfile"]
    assert attribute_rows(tmp_path / "a", "weight") == {12: "12"}


def test_default_rules_without_any_schema(tmp_path: Path) -> None:
    summaries = tmp_path / "files_summary"
    summaries.mkdir()
    doc = {
        "Item": "p.step",
        "size_cadfile": 5,
        "Flow name": "flow_a",
        "part_label": 3,
        "description": "a user field called description",
        "processing": {"duration": 1.25},
        "tags": ["a", "b"],
    }
    (summaries / "p.json").write_text(json.dumps(doc))
    info = DatasetInfo(summaries, tmp_path / "i", tmp_path / "a")  # a directory of JSONs
    info.parse_info_files()
    info.set_code_mappings({"p": 0})
    info.store_info_to_parquet()
    columns = pq.read_schema(tmp_path / "i").names
    # "Flow name" follows the default flow_name pattern to the infoset, as the vendor's column;
    # "part_label" follows *_label to the attribset; a field called "description" does not
    # overwrite the fixed column; a nested section is flattened.
    assert columns == [
        "name",
        "id",
        "description",
        "size_cadfile",
        "flow_name",
        "processing_duration",
        "part_label",
        "meta_description",
        "subset",
        "table_name",
    ]
    assert attribute_rows(tmp_path / "a", "part_label") == {3: "3"}
    assert any("'tags'" in w for w in info.warnings)


def test_integers_a_float_column_would_round_are_kept_exact(tmp_path: Path) -> None:
    """A field holding 2**53 + 1 in one item and 0.5 in another (or 2**63 + 1, beyond
    int64) went to a float64 column: 9007199254740992.0, without a warning. Its column
    now holds the exact values as strings, and says so; fields float64 holds exactly stay
    float64."""
    summaries = tmp_path / "summaries"
    summaries.mkdir()
    for name, big, huge in (("p", 2**53 + 1, 2**63 + 1), ("q", 0.5, 2)):
        doc = {"Item": f"{name}.step", "big": big, "huge": huge, "fine": 3 if name == "p" else 0.5}
        doc["vast"] = 10**400 if name == "p" else 0.5  # float() of it raises OverflowError
        (summaries / f"{name}.json").write_text(json.dumps(doc))
    info = DatasetInfo(summaries, tmp_path / "i", tmp_path / "a")
    info.parse_info_files()
    info.set_code_mappings({"p": 0, "q": 1})
    info.store_info_to_parquet()
    table = pq.read_table(tmp_path / "i").to_pydict()
    assert table["big"] == ["9007199254740993", "0.5"]
    assert table["huge"] == ["9223372036854775809", "2"]
    assert table["fine"] == [3.0, 0.5]
    assert table["vast"] == [str(10**400), "0.5"]
    for field, value in (("big", 2**53 + 1), ("huge", 2**63 + 1)):
        assert any(f"{field!r} holds the integer {value}" in w for w in info.warnings)


def test_integers_a_declared_float_column_would_round_are_kept_exact(tmp_path: Path) -> None:
    """A field the schema declares float64 whose items all hold integers went to a float64
    column even when one of them is beyond what it holds exactly: 2**53 + 1 became
    9007199254740992.0 and 2**63 - 1 9.223372036854776e18, without a warning (the same
    field with one float among its values kept them exact, as strings). Its column now
    holds them as strings too, with the warning naming the field and the value; a field
    declared float whose integers float64 holds stays float64."""
    summaries = tmp_path / "summaries"
    summaries.mkdir()
    values = {"p": (1, 2**53 + 1, 7), "q": (2, 2**63 - 1, 8)}
    for name, (small, big, fine) in values.items():
        doc = {"Item": f"{name}.step", "mass": small, "big": big, "fine": fine}
        (summaries / f"{name}.json").write_text(json.dumps(doc))
    builder = SchemaBuilder()
    for field in ("mass", "big", "fine"):
        builder.define_file_metadata(field, "float64")
    info = DatasetInfo(summaries, tmp_path / "i", tmp_path / "a", builder.build())
    info.parse_info_files()
    info.set_code_mappings({"p": 0, "q": 1})
    info.store_info_to_parquet()
    table = pq.read_table(tmp_path / "i").to_pydict()
    assert table["big"] == ["9007199254740993", "9223372036854775807"]
    assert table["mass"] == [1.0, 2.0] and table["fine"] == [7.0, 8.0]
    assert any(
        "'big' holds integers such as 9007199254740993 (2 items, first 'p')" in w
        for w in info.warnings
    )
    assert not any("'mass'" in w or "'fine'" in w for w in info.warnings)


def test_warnings_name_the_items_they_are_about(tmp_path: Path) -> None:
    """The warnings on fields the tables do not hold as the items do named the field
    only ("field 'mass' mixes strings and numbers across items"): which of thousands of
    items to look at was left to guess. Each names the items involved: the one, or how
    many and the first."""
    summaries = tmp_path / "summaries"
    summaries.mkdir()
    docs = {
        "p": {"mass": 2.5, "big": 2**53 + 1, "tags": ["a"], "category": 1},
        "q": {"mass": "heavy", "big": 0.5, "tags": ["b"], "category": "bolt"},
        "r": {"mass": "light", "big": 2**53 + 3, "tags": "c", "category": 2},
    }
    for name, doc in docs.items():
        (summaries / f"{name}.json").write_text(json.dumps(doc))
    info = DatasetInfo(summaries, tmp_path / "i", tmp_path / "a")
    info.parse_info_files()
    info.set_code_mappings({"p": 0, "q": 1, "r": 2})
    info.store_info_to_parquet()
    expected = [
        "field 'mass' mixes strings (2 items, first 'q') and numbers (item 'p')",
        f"field 'big' holds integers such as {2**53 + 1} (2 items, first 'p')",
        "field 'tags' holds a list (2 items, first 'p'), which is not exported",
        "categorical field 'category' mixes value types across items (int: 2 items, "
        "first 'p'; str: item 'q')",
    ]
    for text in expected:
        assert any(text in w for w in info.warnings), (text, info.warnings)
    assert info.summary()["warnings"] == info.warnings
    # One item holding the integer: named alone.
    (summaries / "r.json").write_text(json.dumps({"big": 1}))
    info.parse_info_files()
    info.store_info_to_parquet()
    assert any(f"'big' holds the integer {2**53 + 1} (item 'p')" in w for w in info.warnings)


def test_a_field_routed_two_ways_names_the_items_of_each_route(tmp_path: Path) -> None:
    """A field routed one way by some items and the other way by others named the path
    of the first dissenting item only; it says how many items took each route, and the
    first of each."""
    summaries = tmp_path / "summaries"
    summaries.mkdir()
    recorded = "_metadata_routing"
    routes = {"p": "file_level", "q": "categorical", "r": "categorical", "s": "file_level"}
    for name, route in routes.items():
        doc = {"grade": 1, recorded: {"grade": route}}
        (summaries / f"{name}.json").write_text(json.dumps(doc))
    info = DatasetInfo(summaries, tmp_path / "i", tmp_path / "a")
    info.parse_info_files()
    assert (
        "field 'grade' is routed 'file_level' (2 items, first 'p') and 'categorical' "
        "(2 items, first 'q'); keeping 'file_level'"
    ) in info.warnings


def test_schema_comes_from_first_item(tmp_path: Path) -> None:
    summaries = tmp_path / "files_summary"
    summaries.mkdir()
    builder = SchemaBuilder()
    builder.define_categorical_metadata("hole_count", "int32")
    doc = {"hole_count": 3, "_storage_schema": builder.build()}
    (summaries / "p.json").write_text(json.dumps(doc))
    info = DatasetInfo([summaries / "p.json"], tmp_path / "i", tmp_path / "a")
    info.parse_info_files()
    assert info.summary()["categorical_fields"] == ["hole_count"]
    # A schema given explicitly wins over the stored one.
    other = SchemaBuilder()
    other.define_file_metadata("hole_count", "int32")
    info = DatasetInfo([summaries / "p.json"], tmp_path / "i", tmp_path / "a", other.build())
    info.parse_info_files()
    assert info.summary()["file_level_fields"] == ["hole_count"]


def test_column_names() -> None:
    assert column_name("Flow name") == "flow_name"
    assert column_name("processingTime") == "processing_time"
    assert column_name("file_sizes_KB") == "file_sizes_kb"
    assert column_name("a/b") == "a_b"
    assert column_name("???") == "field"
    assert item_name_from_path("x/y/part_1.zarr.data") == "part_1"
    assert item_name_from_path("x/part_1.data") == "part_1"
    assert item_name_from_path("files_summary/part_1.json") == "part_1"


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs_are_skipped_and_listed(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.json").write_text('{"size_cadfile": 1')
    (bad / "a_list.json").write_text("[1, 2, 3]")
    (bad / "empty.json").write_bytes(b"")
    (bad / "not_a_zip.data").write_bytes(b"garbage")
    with zipfile.ZipFile(bad / "no_meta.data", "w") as zf:
        zf.writestr("zarr.json", "{}")
    missing = bad / "missing.json"
    inputs = [*summaries, *sorted(bad.iterdir()), missing]
    info = DatasetInfo(inputs, tmp_path / "i", tmp_path / "a")
    info.parse_info_files()
    reasons = {Path(e["file"]).name: e["error"] for e in info.errors}
    assert set(reasons) == {
        "broken.json",
        "a_list.json",
        "empty.json",
        "not_a_zip.data",
        "no_meta.data",
        "missing.json",
    }
    assert "not a JSON object" in reasons["a_list.json"]
    assert "not valid JSON" in reasons["broken.json"]
    assert "no such file" in reasons["missing.json"]
    assert "metadata.json" in reasons["no_meta.data"]
    info.build_code_mappings(data)
    info.store_info_to_parquet()
    assert pd.read_parquet(tmp_path / "i")["name"].tolist() == ["part_0", "part_1", "part_2"]
    assert info.summary()["items"] == 3


def test_json_without_data_is_listed_not_written(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    info = run(summaries, data[:2], tmp_path / "out")
    assert pd.read_parquet(tmp_path / "out" / "flow.infoset")["name"].tolist() == [
        "part_0",
        "part_1",
    ]
    assert info.errors == [
        {
            "file": str(summaries[2]),
            "error": "no matching .data: item 'part_2' has no code, so it has no row",
        }
    ]


def test_code_without_metadata_gets_a_bare_row(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    info = run(summaries[:2], data, tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "flow.infoset")
    assert table.column("name").to_pylist() == ["part_0", "part_1", "part_2"]
    assert table.column("description").to_pylist()[2] == ""
    assert table.column("size_cadfile").to_pylist()[2] is None
    assert any("part_2" in w for w in info.warnings)


def test_duplicate_names_raise_merge_error(tmp_path: Path) -> None:
    info = DatasetInfo([], tmp_path / "i", tmp_path / "a")
    with pytest.raises(MergeError, match="'part_1'") as caught:
        info.build_code_mappings(["one/part_1.zarr.data", "two/part_1.data", "one/part_2.data"])
    assert "one/part_1.zarr.data" in str(caught.value)
    assert info.code_mappings == {}
    with pytest.raises(MergeError, match="share a code"):
        info.set_code_mappings({"a": 0, "b": 0})


def test_duplicate_info_inputs_keep_first(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    info = DatasetInfo([*summaries, data[0]], tmp_path / "i", tmp_path / "a")
    info.parse_info_files()
    assert info.errors == [
        {"file": str(data[0]), "error": "duplicate item name 'part_0'; the first input is kept"}
    ]


def test_writing_without_codes_raises(items: Any, tmp_path: Path) -> None:
    _, summaries = items
    info = DatasetInfo(summaries, tmp_path / "i", tmp_path / "a")
    info.parse_info_files()
    with pytest.raises(MergeError, match="build_code_mappings"):
        info.store_info_to_parquet()
    assert not (tmp_path / "i").exists()


# ---------------------------------------------------------------------------- deletion
def test_inputs_never_deleted_by_default(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    info = run(summaries, data, tmp_path / "out")
    info.store_attributes_to_parquet()
    assert all(p.is_file() for p in data + summaries)
    assert info.deleted_files == []


def test_delete_info_files_is_opt_in(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    folder = summaries[0].parent
    info = DatasetInfo(summaries, tmp_path / "i", tmp_path / "a", delete_info_files=True)
    info.parse_info_files()
    # Nothing is deleted before both Parquet files are written.
    assert all(p.is_file() for p in summaries)
    info.build_code_mappings(data)
    info.store_info_to_parquet(write_attributes=False)
    assert all(p.is_file() for p in summaries)
    info.store_attributes_to_parquet()
    assert not any(p.exists() for p in summaries)
    assert not folder.exists()  # emptied, so removed
    assert all(p.is_file() for p in data)  # the .data files belong to the merge
    assert info.summary()["deleted_info_files"] == 3


def test_delete_keeps_orphans_and_their_folder(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    info = DatasetInfo(summaries, tmp_path / "i", tmp_path / "a", delete_info_files=True)
    info.parse_info_files()
    info.build_code_mappings(data[:2])
    info.store_info_to_parquet()
    assert [p.exists() for p in summaries] == [False, False, True]
    assert summaries[2].parent.is_dir()


def test_build_info_never_deletes_data(items: Any, tmp_path: Path) -> None:
    data, _ = items
    build_info(data, tmp_path / "i", tmp_path / "a")
    assert all(p.is_file() for p in data)


# ---------------------------------------------------------------------------- atomicity
def test_atomic_write_leaves_no_temp_files(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    out = tmp_path / "out"
    run(summaries, data, out)
    assert sorted(os.listdir(out)) == ["flow.attribset", "flow.infoset"]
    assert not [n for n in os.listdir(out) if n.startswith(TEMP_PREFIX)]


def test_failing_write_keeps_previous_file(
    items: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, summaries = items
    out = tmp_path / "out"
    run(summaries, data, out)
    before = (out / "flow.infoset").read_bytes()

    def failing_write(table: Any, where: Any, **kwargs: Any) -> None:
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", failing_write)
    info = DatasetInfo(summaries[:1], out / "flow.infoset", out / "flow.attribset")
    info.parse_info_files()
    info.build_code_mappings(data[:1])
    with pytest.raises(OSError, match="disk full"):
        info.store_info_to_parquet()
    monkeypatch.undo()
    assert (out / "flow.infoset").read_bytes() == before
    assert len(pd.read_parquet(out / "flow.infoset")) == 3
    assert sorted(os.listdir(out)) == ["flow.attribset", "flow.infoset"]


# ---------------------------------------------------------------------------- .data input
def test_metadata_read_from_data_without_files_summary(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    run(summaries, data, tmp_path / "from_json")
    shutil.rmtree(summaries[0].parent)
    info = build_info(data, tmp_path / "from_data.infoset", tmp_path / "from_data.attribset")
    assert info.errors == []
    expected = pd.read_parquet(tmp_path / "from_json" / "flow.infoset")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "from_data.infoset"), expected)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "from_data.attribset"),
        pd.read_parquet(tmp_path / "from_json" / "flow.attribset"),
    )


def test_build_info_with_given_codes(items: Any, tmp_path: Path) -> None:
    data, _ = items
    build_info(data, tmp_path / "i", tmp_path / "a", codes={"part_0": 5, "part_1": 3, "part_2": 4})
    frame = pd.read_parquet(tmp_path / "i")
    assert frame["id"].tolist() == [3, 4, 5]
    assert frame["name"].tolist() == ["part_1", "part_2", "part_0"]


def test_vendor_data_files(tmp_path: Path) -> None:
    data = [VENDOR / "item_basic.zarr.data", VENDOR / "item_empty.zarr.data"]
    info = build_info(data, tmp_path / "v.infoset", tmp_path / "v.attribset")
    assert info.errors == []
    frame = pd.read_parquet(tmp_path / "v.infoset")
    assert frame["name"].tolist() == ["item_basic", "item_empty"]
    assert frame["description"].tolist() == [
        "C:/parts/bracket.step",
        "C:/parts/two_face_sheet.step",
    ]
    assert frame["size_cadfile"].tolist() == [1024000, 20480]
    assert frame["processing_time"].tolist() == [1.5, 0.25]
    attrib = tmp_path / "v.attribset"
    assert attribute_rows(attrib, "face_types")[13] == "Revolution"
    assert attribute_rows(attrib, "edge_types") == {0: "Line", 1: "Circle"}
    assert attribute_rows(attrib, "file_label") == {0: "0", 2: "2"}


# ---------------------------------------------------------------------------- report
def test_summary_is_json_and_parse_is_repeatable(items: Any, tmp_path: Path) -> None:
    data, summaries = items
    info = run(summaries, data, tmp_path / "out")
    first = info.summary()
    info.parse_info_files()
    info.store_info_to_parquet()
    assert info.summary() == first
    text = json.dumps(first)
    assert json.loads(text)["attribute_tables"] == {"face_types": 3, "file_label": 2, "category": 2}
    assert first["items"] == first["codes"] == first["infoset_rows"] == 3
    assert first["attribute_rows"] == 7
    assert first["infoset"] == str(tmp_path / "out" / "flow.infoset")


@pytest.mark.parametrize("order", ["set_attributes first", "parse_info_files first"])
def test_set_attributes_warnings_do_not_depend_on_the_order_of_the_calls(
    tmp_path: Path, order: str
) -> None:
    """A code :meth:`DatasetInfo.set_attributes` was given two labels for, and a code that
    is not an integer, were warned of when it was called after
    :meth:`DatasetInfo.parse_info_files`, and not at all when called before it: parsing
    started the warnings over, dropping those of ``set_attributes``, whose tables it kept.
    Both orders warn of them, once each, as of the clashes with the items' labels, and
    parsing again does not repeat them."""
    files = _described_items(tmp_path, ["plane", "flat"])
    info = DatasetInfo(files, tmp_path / "f.infoset", tmp_path / "f.attribset")

    def given() -> None:
        info.set_attributes({0: "round"}, "face_types")
        info.set_attributes({0: "ball", "x": "y"}, "face_types")

    if order == "set_attributes first":
        given()
        info.parse_info_files()
        info.parse_info_files()
    else:
        info.parse_info_files()
        given()
    info.build_code_mappings(files)
    info.store_info_to_parquet()
    expected = [
        "description table 'face_types': code 0 is 'round' and 'ball' (in set_attributes); "
        "keeping 'round'",
        "set_attributes: description table 'face_types' has code 'x', which is not an "
        "integer; ignored",
        "description table 'face_types': code 0 is 'plane' (item 'p0') and 'flat' (item "
        "'p1'); keeping 'plane'",
        "attribute table 'face_types': code 0 is 'round' from set_attributes and 'plane' in "
        "the items' descriptions (item 'p0'); keeping 'round'",
    ]
    assert sorted(info.warnings) == sorted(expected)
    assert sorted(info.summary()["warnings"]) == sorted(expected)
    assert attribute_rows(tmp_path / "f.attribset", "face_types") == {0: "round"}
