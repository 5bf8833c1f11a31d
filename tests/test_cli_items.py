"""The ``inspect``, ``cat``, ``validate`` and ``export-json`` subcommands of ``cadstore``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadstore import JsonStorageHandler, OptStorage, SchemaBuilder
from cadstore.artefacts import open_artefact
from cadstore.cli import main
from cadstore.merging import merge_items
from cadstore.synthetic import write_item

N_ITEMS = 3


def _schema() -> SchemaBuilder:
    builder = SchemaBuilder("cli_test", "2.0")
    faces = builder.create_group("faces", "face")
    faces.create_array("face_areas", ["face"], "float32", min_value=0.0)
    faces.create_array("face_types", ["face"], "int32", values=[0, 1, 2])
    graph = builder.create_group("graph", "edge")
    graph.create_array("edges_source", ["edge"], "int32")
    graph.create_array("num_nodes", [], "int64")
    builder.define_file_metadata("size_cadfile", "int64")
    builder.define_file_metadata("processing/duration", "float64")
    builder.define_categorical_metadata("category", "str", values=["nut", "bolt"])
    builder.define_categorical_metadata("file_label", "int32", required=True)
    return builder


def _item(i: int) -> dict[str, Any]:
    n = 3 + i
    return {
        "face_areas": np.linspace(1.0, 2.0, n, dtype=np.float32) * (i + 1),
        "face_types": np.arange(n, dtype=np.int32) % 3,
        "graph": {"edges_source": np.arange(2 * n, dtype=np.int32) % n, "num_nodes": n},
        "label": f"part {i}\nsecond line",
        # 1,500 elements: above the 1,000 where printing switches to a summary.
        "samples": np.arange(1500, dtype=np.float64).reshape(30, 50) + i,
    }


def _metadata(i: int) -> dict[str, Any]:
    return {
        "size_cadfile": 1000 + i,
        "category": "nut",
        "file_label": i,
        "processing/duration": 0.5,
    }


def _write_item(store: Path, item: dict[str, Any], meta: dict[str, Any], **kw: Any) -> Path:
    return Path(write_item(store, item, meta, schema=_schema(), **kw))


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small items with a schema, published as ``.data`` files."""
    directory = tmp_path_factory.mktemp("cli_items")
    return [
        _write_item(directory / f"part_{i}.zarr", _item(i), _metadata(i)) for i in range(N_ITEMS)
    ]


@pytest.fixture(scope="module")
def dataset(items: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli_dataset") / "small.dataset"
    merge_items([str(p) for p in items], str(out))
    return out


@pytest.fixture(scope="module")
def schema_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli_schema") / "schema.json"
    _schema().save_to_file(path)
    return path


@pytest.fixture
def json_store(tmp_path: Path) -> Path:
    directory = tmp_path / "store_json"
    storage = JsonStorageHandler(directory)
    storage.save_data("areas", np.array([1.5, np.nan, np.inf], dtype=np.float64))
    storage.save_data("graph", {"src": np.array([0, 1], dtype=np.int32), "n": 2})
    storage.save_data("names", ["a", "b"])
    storage.save_metadata("category", "bolt")
    storage.close()
    return directory


def run(capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]) -> tuple[int, str, str]:
    code = main([os.fspath(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code: int, out: str, err: str, *needles: str) -> None:
    """Exit 2, nothing on stdout, one ``cadstore: error:`` line naming the needles."""
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cadstore: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _member_bytes(data_file: Path, prefix: str) -> int:
    """Stored size of an array's chunks, read independently with ``zipfile``."""
    with zipfile.ZipFile(data_file) as zf:
        return sum(
            info.compress_size
            for info in zf.infolist()
            if info.filename.startswith(prefix + "/") and not info.filename.endswith("zarr.json")
        )


# ---------------------------------------------------------------------------- help
@pytest.mark.parametrize("command", ["inspect", "cat", "validate", "export-json"])
def test_help_works_for_every_command(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: cadstore {command}" in out
    assert "--json" in out


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("inspect", "cat", "validate", "export-json"):
        assert command in out


# ---------------------------------------------------------------------------- inspect
def test_inspect_item_json_reports_layout_sizes_and_metadata(
    capsys: pytest.CaptureFixture[str], items: list[Path]
) -> None:
    code, out, err = run(capsys, "inspect", items[1], "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["kind"] == "item" and doc["zarr_format"] == 3
    assert doc["file_bytes"] == items[1].stat().st_size
    arrays = {a["path"]: a for a in doc["arrays"]}
    assert set(arrays) == {
        "face_areas",
        "face_types",
        "graph/edges_source",
        "graph/num_nodes",
        "label",
        "samples",
    }
    areas = arrays["face_areas"]
    assert areas["shape"] == [4] and areas["dtype"] == "float32"
    assert areas["dims"] == ["face"]  # from the schema
    assert arrays["samples"]["dims"] == ["samples_dim_0", "samples_dim_1"]
    for path in ("face_areas", "samples", "graph/edges_source"):
        entry = arrays[path]
        assert entry["stored_bytes"] == _member_bytes(items[1], path)
        assert entry["ratio"] == pytest.approx(entry["raw_bytes"] / entry["stored_bytes"], 1e-3)
    assert arrays["samples"]["raw_bytes"] == 1500 * 8
    assert arrays["samples"]["ratio"] > 1  # a ramp compresses
    assert [g["path"] for g in doc["groups"]] == ["graph"]
    assert doc["totals"]["arrays"] == 6 and doc["totals"]["groups"] == 1
    assert doc["schema"] == {"domain": "cli_test", "version": "2.0", "groups": ["faces", "graph"]}
    assert doc["metadata"]["category"] == "nut"
    assert doc["metadata"]["processing"] == {"duration": 0.5}
    assert "_storage_schema" not in doc["metadata"]


def test_inspect_item_human_output_is_an_aligned_tree(
    capsys: pytest.CaptureFixture[str], items: list[Path]
) -> None:
    code, out, _ = run(capsys, "inspect", items[0])
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"item {items[0]}"
    assert "schema: cli_test 2.0 (faces, graph)" in out
    header = next(line for line in lines if line.startswith("NAME"))
    rows = {line.split()[0]: line for line in lines if line.startswith(("face_", "  ", "graph/"))}
    # Columns line up: each row's dtype starts under the DTYPE header.
    column = header.index("DTYPE")
    assert rows["face_areas"][column:].startswith("float32")
    assert rows["face_types"][column:].startswith("int32")
    assert rows["graph/"].startswith("graph/")
    child = next(line for line in lines if line.startswith("  edges_source"))
    assert child[column:].startswith("int32")
    assert "(3,)" in rows["face_areas"] and "face" in rows["face_areas"]
    # Metadata follows the table, nested sections indented.
    meta = lines.index("metadata")
    assert "  category: nut" in lines[meta:]
    assert "  processing/" in lines[meta:] and "    duration: 0.5" in lines[meta:]


def test_inspect_without_metadata(capsys: pytest.CaptureFixture[str], items: list[Path]) -> None:
    code, out, _ = run(capsys, "inspect", items[0], "--no-metadata", "--json")
    assert code == 0 and "metadata" not in json.loads(out)
    code, out, _ = run(capsys, "inspect", items[0], "--no-metadata")
    assert code == 0 and "metadata" not in out.splitlines() and "category: nut" not in out


def test_inspect_accepts_the_store_path_and_an_item_directory(
    capsys: pytest.CaptureFixture[str], items: list[Path], tmp_path: Path
) -> None:
    store_path = str(items[0])[: -len(".data")]
    code, out, _ = run(capsys, "inspect", store_path, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["kind"] == "item" and doc["location"] == str(items[0])
    # An item closed without compress_store() stays a Zarr directory.
    storage = OptStorage(tmp_path / "open.zarr", zarr_format=2)
    storage.save_data("values", np.arange(10, dtype=np.int16))
    storage.save_metadata("category", "bolt")
    storage.close()
    code, out, _ = run(capsys, "inspect", tmp_path / "open.zarr", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["kind"] == "item" and doc["zarr_format"] == 2
    assert doc["arrays"][0]["path"] == "values" and doc["arrays"][0]["shape"] == [10]
    assert doc["metadata"]["category"] == "bolt"


def test_inspect_dataset(
    capsys: pytest.CaptureFixture[str], dataset: Path, items: list[Path]
) -> None:
    code, out, _ = run(capsys, "inspect", dataset, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["kind"] == "dataset" and doc["item_count"] == N_ITEMS
    groups = {g["path"]: g for g in doc["groups"]}
    assert groups["faces"]["attributes"]["primary_dimension"] == "face"
    assert groups["graph"]["attributes"]["primary_dimension"] == "edge"
    arrays = {a["path"]: a for a in doc["arrays"]}
    total_faces = sum(3 + i for i in range(N_ITEMS))
    assert arrays["faces/face_areas"]["shape"] == [total_faces]
    assert arrays["faces/face_areas"]["dims"] == ["face"]
    assert arrays["faces/item_offsets"]["shape"] == [N_ITEMS + 1]
    assert arrays["graph/num_nodes"]["dims"] == ["item"]
    assert arrays["item_names"]["raw_bytes"] is None  # variable-length strings
    assert all(a["stored_bytes"] > 0 for a in arrays.values() if a["shape"] != [0])
    assert doc["metadata"]["item_count"] == N_ITEMS
    assert "_storage_schema" not in doc["metadata"]
    assert doc["schema"]["domain"] == "cli_test"

    code, out, _ = run(capsys, "inspect", dataset)
    assert code == 0
    assert out.startswith(f"dataset {dataset}\n")
    assert f"  {N_ITEMS} items" in out
    assert "primary: face" in out
    assert "item_count: 3" in out


def test_inspect_and_cat_a_directory_dataset(
    capsys: pytest.CaptureFixture[str], items: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p in items], str(out), directory=True)
    code, text, _ = run(capsys, "inspect", out, "--json", "--no-metadata")
    assert code == 0
    doc = json.loads(text)
    assert doc["kind"] == "dataset" and doc["item_count"] == N_ITEMS
    code, text, _ = run(capsys, "cat", out, "faces/face_types", "--item", "2", "--json")
    assert code == 0
    assert json.loads(text)["value"] == _item(2)["face_types"].tolist()


def test_cat_and_validate_a_dataset_missing_a_shard_name_it(
    capsys: pytest.CaptureFixture[str], items: list[Path], tmp_path: Path
) -> None:
    """A shard gone from a directory dataset is reported, not printed as zeros (whole
    arrays are read through the hierarchy, which took it for Zarr fill values)."""
    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p in items], str(out), directory=True)
    (out / "faces/face_areas/c/0").unlink()
    for argv in (("cat", out, "faces/face_areas"), ("cat", out, "faces"), ("validate", out)):
        code, text, err = run(capsys, *argv)
        # As any damaged file: exit 2 and one line naming the file, the array, the chunk.
        assert code == 2, (argv, err)
        assert err.startswith(f"cadstore: error: {out}: array 'faces/face_areas': chunk 'c/0' is")
        assert err.count("\n") == 1 and text == "", argv
    code, text, _ = run(capsys, "cat", out, "faces/face_types", "--json")
    assert code == 0  # the other arrays still read


def test_inspect_json_store(capsys: pytest.CaptureFixture[str], json_store: Path) -> None:
    code, out, _ = run(capsys, "inspect", json_store, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["kind"] == "json" and doc["zarr_format"] is None
    arrays = {a["path"]: a for a in doc["arrays"]}
    assert arrays["areas"]["shape"] == [3] and arrays["areas"]["dtype"] == "float64"
    assert arrays["areas"]["stored_bytes"] == (json_store / "areas.json").stat().st_size
    assert arrays["names"]["dtype"] == "str"
    # Leaves saved together in one dict file share it: only their group has a size.
    assert arrays["graph/src"]["stored_bytes"] is None
    assert doc["groups"][0]["stored_bytes"] == (json_store / "graph.json").stat().st_size
    assert doc["metadata"]["category"] == "bolt"
    code, out, _ = run(capsys, "inspect", json_store)
    assert code == 0 and out.startswith(f"JSON store {json_store}")


def test_inspect_json_store_with_a_key_named_zarr(
    capsys: pytest.CaptureFixture[str], json_store: Path
) -> None:
    """A JSON store's key ``zarr`` is its file ``zarr.json``, which ``cadstore inspect``
    took for a Zarr store's root document: the store was refused as "not an item, a
    dataset or a JSON store: malformed Zarr metadata" (exit 2). That ``zarr.json`` is the
    store's envelope of key ``zarr`` (the rule ``cadstore repair`` uses,
    :func:`~cadstore.storage.json_handler.is_zarr_hierarchy`): the store is shown as a
    JSON store, key ``zarr`` among its arrays, and no file of it changes."""
    with JsonStorageHandler(json_store) as storage:
        storage.save_data("zarr", np.arange(4, dtype=np.int64))
    assert json.loads((json_store / "zarr.json").read_text())["key"] == "zarr"
    files = {p.name: p.read_bytes() for p in json_store.iterdir()}
    code, out, err = run(capsys, "inspect", json_store, "--json")
    assert (code, err) == (0, ""), err
    doc = json.loads(out)
    assert doc["kind"] == "json" and doc["zarr_format"] is None
    arrays = {a["path"]: a for a in doc["arrays"]}
    assert arrays["zarr"]["shape"] == [4] and arrays["zarr"]["dtype"] == "int64"
    assert arrays["areas"]["shape"] == [3]
    code, out, _ = run(capsys, "inspect", json_store)
    assert code == 0 and out.startswith(f"JSON store {json_store}")
    assert {p.name: p.read_bytes() for p in json_store.iterdir()} == files


def test_inspect_a_path_the_disk_fails_to_look_up_says_so(
    capsys: pytest.CaptureFixture[str],
    items: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An item whose lookup fails (an EIO on its ``stat`` and ``lstat``): ``cadstore
    inspect`` said "no such file or directory", since ``isfile``, ``isdir`` and
    ``os.path.lexists`` say ``False`` on an EIO. It is now the StorageError naming the
    item and the failure (exit 2, one line); the item is unchanged."""
    import errno

    from conftest import refuse_opening

    item = tmp_path / "part.zarr.data"
    shutil.copyfile(items[0], item)
    before = item.read_bytes()
    with monkeypatch.context() as patch:
        refuse_opening(patch, item, "stat", errno.EIO)
        refuse_opening(patch, item, "lstat", errno.EIO)
        code, out, err = run(capsys, "inspect", item)
    assert (code, out) == (2, "")
    assert err == f"cadstore: error: {item}: reading it: input/output error\n", err
    assert item.read_bytes() == before


def test_inspect_flow_manifest(
    capsys: pytest.CaptureFixture[str], dataset: Path, tmp_path: Path
) -> None:
    manifest = dataset.parent / "small.flow"
    manifest.write_text(json.dumps({"format": "cadstore-flow/1", "flow_data": dataset.name}))
    code, out, _ = run(capsys, "inspect", manifest, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["kind"] == "dataset" and doc["location"].endswith("small.dataset")
    broken = tmp_path / "broken.flow"
    broken.write_text(json.dumps({"format": "cadstore-flow/1", "flow_data": "gone.dataset"}))
    assert_usage_error(*run(capsys, "inspect", broken), "broken.flow", "gone.dataset")


def test_inspect_bad_paths_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], items: list[Path], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.data"
    assert_usage_error(*run(capsys, "inspect", missing), str(missing), "expected an item")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert_usage_error(*run(capsys, "inspect", text), str(text), "not a readable zip")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(*run(capsys, "inspect", empty), str(empty), "JSON store")
    truncated = tmp_path / "cut.zarr.data"
    truncated.write_bytes(items[0].read_bytes()[:500])
    assert_usage_error(*run(capsys, "cat", truncated, "face_areas"), str(truncated))
    not_a_store = tmp_path / "other.zip"
    with zipfile.ZipFile(not_a_store, "w") as zf:
        zf.writestr("readme.txt", "not zarr")
    assert_usage_error(*run(capsys, "inspect", not_a_store), str(not_a_store), "zarr.json")


# ---------------------------------------------------------------------------- cat
def test_cat_prints_arrays_strings_and_groups(
    capsys: pytest.CaptureFixture[str], items: list[Path]
) -> None:
    item = _item(0)
    code, out, _ = run(capsys, "cat", items[0], "face_areas")
    assert code == 0
    assert np.array(out.split("[")[1].split("]")[0].split(), dtype=np.float32).tolist() == (
        item["face_areas"].tolist()
    )
    code, out, _ = run(capsys, "cat", items[0], "label")
    assert code == 0 and out == "part 0\nsecond line\n"  # raw, no quotes
    code, out, _ = run(capsys, "cat", items[0], "graph")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "graph/"
    assert "  edges_source: int32 (6,)" in lines
    assert "  num_nodes: 3" in lines
    code, out, _ = run(capsys, "cat", items[0], "graph/num_nodes")
    assert code == 0 and out == "3\n"


def test_cat_summarises_big_arrays_unless_full(
    capsys: pytest.CaptureFixture[str], items: list[Path]
) -> None:
    code, out, _ = run(capsys, "cat", items[0], "samples")
    assert code == 0
    assert out.startswith("# float64 array of shape (30, 50), summarised")
    assert "..." in out
    assert float(out.split()[-1].rstrip("]")) == 1499.0  # the last value is shown
    code, out, _ = run(capsys, "cat", items[0], "samples", "--full")
    assert code == 0 and "..." not in out
    values = np.array(out.replace("[", " ").replace("]", " ").split(), dtype=np.float64)
    np.testing.assert_array_equal(values, np.arange(1500, dtype=np.float64))


def test_cat_json(capsys: pytest.CaptureFixture[str], items: list[Path]) -> None:
    code, out, _ = run(capsys, "cat", items[0], "samples", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["type"] == "array" and doc["dtype"] == "float64" and doc["shape"] == [30, 50]
    np.testing.assert_array_equal(np.array(doc["value"]), _item(0)["samples"])
    code, out, _ = run(capsys, "cat", items[0], "graph", "--json")
    doc = json.loads(out)
    assert doc["type"] == "group"
    assert doc["value"] == {"edges_source": [0, 1, 2, 0, 1, 2], "num_nodes": 3}


def test_cat_json_is_strict_json_with_non_finite_floats(
    capsys: pytest.CaptureFixture[str], json_store: Path
) -> None:
    code, out, _ = run(capsys, "cat", json_store, "areas", "--json")
    assert code == 0

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    doc = json.loads(out, parse_constant=refuse)
    assert doc["value"] == [1.5, "NaN", "Infinity"]
    code, out, _ = run(capsys, "cat", json_store, "names")
    assert code == 0 and out == "a\nb\n"


def test_cat_dataset_item_rows(
    capsys: pytest.CaptureFixture[str], dataset: Path, items: list[Path]
) -> None:
    for code_ in range(N_ITEMS):
        code, out, _ = run(
            capsys, "cat", dataset, "faces/face_areas", "--item", str(code_), "--json"
        )
        assert code == 0
        doc = json.loads(out)
        assert doc["item"] == code_
        np.testing.assert_array_equal(
            np.array(doc["value"], dtype=np.float32), _item(code_)["face_areas"]
        )
    # Per-item arrays give the item's value; offsets give the item's two boundaries.
    code, out, _ = run(capsys, "cat", dataset, "graph/num_nodes", "--item", "2")
    assert code == 0 and out == "5\n"
    code, out, _ = run(capsys, "cat", dataset, "faces/item_offsets", "--item", "1", "--json")
    assert json.loads(out)["value"] == [3, 7]
    # An item can be named instead of numbered.
    code, out, _ = run(capsys, "cat", dataset, "item_names", "--item", "part_1")
    assert code == 0 and out == "part_1\n"
    code, out, _ = run(capsys, "cat", dataset, "graph", "--item", "part_1", "--json")
    doc = json.loads(out)
    assert doc["value"]["edges_source"] == _item(1)["graph"]["edges_source"].tolist()
    assert doc["value"]["num_nodes"] == 4
    # Without --item the whole array.
    code, out, _ = run(capsys, "cat", dataset, "faces/face_types", "--json")
    assert json.loads(out)["shape"] == [sum(3 + i for i in range(N_ITEMS))]


def test_cat_item_names_that_look_like_numbers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--item`` took any text ``int()`` accepts as a code: ``1_0`` printed item 10, ``+1``
    item 1, and an item named ``0`` could not be selected. A name is matched first; only
    plain digits are a code."""
    names = ["x", "0", "1_0", "+1"]
    files = []
    for code_, name in enumerate(names):
        with OptStorage(tmp_path / f"{name}.zarr") as storage:
            storage.save_data("face_areas", np.full(2, float(code_), dtype=np.float32))
            storage.compress_store()
        files.append(str(tmp_path / f"{name}.zarr.data"))
    dataset = tmp_path / "names.dataset"
    merge_items(files, str(dataset))
    for given, want in (("1_0", 2), ("0", 1), ("+1", 3), ("x", 0), ("3", 3), ("2", 2)):
        code, out, _ = run(capsys, "cat", dataset, "faces/face_areas", "--item", given, "--json")
        assert code == 0
        doc = json.loads(out)
        assert doc["item"] == want, given
        assert doc["value"] == [float(want)] * 2
    for given in (" 2", "-1", "2_0"):
        assert_usage_error(
            *run(capsys, "cat", dataset, "faces/face_areas", "--item", given),
            f"no item named {given!r}",
            "0..3",
        )


def test_cat_missing_keys_list_the_valid_ones(
    capsys: pytest.CaptureFixture[str], items: list[Path], dataset: Path
) -> None:
    assert_usage_error(
        *run(capsys, "cat", items[0], "nope"),
        "'nope'",
        "valid top-level keys: face_areas, face_types, graph, label, samples",
    )
    assert_usage_error(
        *run(capsys, "cat", items[0], "graph/nope"),
        "graph/edges_source, graph/num_nodes",
    )
    assert_usage_error(*run(capsys, "cat", items[0], "label/x"), "'label'", "not a group")
    # A metadata field is named as such, with where its value is shown.
    assert_usage_error(
        *run(capsys, "cat", items[0], "file_label"),
        "'file_label'",
        "is metadata, not a data key",
        f"cadstore inspect {items[0]}",
    )
    assert_usage_error(
        *run(capsys, "cat", dataset, "face_areas"),
        "valid top-level keys: ",
        "faces",
        "graph",
        "item_names",
    )
    assert_usage_error(*run(capsys, "cat", dataset, "faces/x"), "faces/face_areas")


def test_cat_bad_item_selection(
    capsys: pytest.CaptureFixture[str], items: list[Path], dataset: Path
) -> None:
    assert_usage_error(
        *run(capsys, "cat", dataset, "faces/face_areas", "--item", "3"), "out of range", "0..2"
    )
    assert_usage_error(
        *run(capsys, "cat", dataset, "faces/face_areas", "--item", "nobody"), "'nobody'"
    )
    assert_usage_error(
        *run(capsys, "cat", items[0], "face_areas", "--item", "0"), "--item", "is an item"
    )


# ---------------------------------------------------------------------------- validate
def test_validate_valid_item_and_dataset(
    capsys: pytest.CaptureFixture[str], items: list[Path], dataset: Path, schema_file: Path
) -> None:
    code, out, _ = run(capsys, "validate", items[0], "--schema", schema_file)
    assert code == 0
    assert out.splitlines()[-1] == "valid"
    assert "6 arrays read, 4 declared in the schema; 4 metadata fields checked" in out
    assert "arrays not in the schema: label, samples" in out
    code, out, _ = run(capsys, "validate", dataset, "--schema", schema_file, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["valid"] and doc["kind"] == "dataset" and doc["problems"] == []
    # num_nodes is a scalar per item, gathered on the item dimension, and passes.
    assert doc["arrays_declared"] == 4


def test_validate_reports_problems_and_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, schema_file: Path
) -> None:
    item = _item(0)
    item["face_types"] = np.array([0, 7, 1], dtype=np.int32)  # 7 is not an allowed value
    item["face_areas"] = np.array([1.0, -2.0, 3.0], dtype=np.float32)  # below min_value
    item["graph"]["edges_source"] = np.zeros(4, dtype=np.float32)  # floats, not int32
    meta = {"category": "washer"}  # and file_label, which is required, is missing
    bad = _write_item(tmp_path / "bad.zarr", item, meta)
    code, out, err = run(capsys, "validate", bad, "--schema", schema_file)
    assert code == 1 and err == ""
    assert "5 problems:" in out
    assert "face_types: value 7 at index [1] is not one of the allowed values" in out
    assert "face_areas: value -2.0 at index [1] is below min_value 0.0" in out
    assert "graph/edges_source: dtype float32 does not match int32" in out
    assert "file_label: required metadata field is missing" in out
    assert "category: 'washer' is not one of the allowed values" in out
    code, out, _ = run(capsys, "validate", bad, "--schema", schema_file, "--json")
    assert code == 1
    doc = json.loads(out)
    assert not doc["valid"]
    assert {(p["key"], p["kind"]) for p in doc["problems"]} == {
        ("face_types", "array"),
        ("face_areas", "array"),
        ("graph/edges_source", "array"),
        ("file_label", "metadata"),
        ("category", "metadata"),
    }


def test_validate_processing_duration_type(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, schema_file: Path
) -> None:
    # Nested metadata fields ("processing/duration") are looked up through their sections.
    meta = {**_metadata(0), "processing/duration": "slow"}
    bad = _write_item(tmp_path / "slow.zarr", _item(0), meta)
    code, out, _ = run(capsys, "validate", bad, "--schema", schema_file)
    assert code == 1
    assert "processing/duration: 'slow' (str) is not a valid float64" in out


def test_validate_strict_counts_undeclared_and_missing(
    capsys: pytest.CaptureFixture[str], items: list[Path], schema_file: Path
) -> None:
    code, out, _ = run(capsys, "validate", items[0], "--schema", schema_file, "--strict", "--json")
    assert code == 1
    doc = json.loads(out)
    assert {(p["key"], p["kind"]) for p in doc["problems"]} == {
        ("label", "undeclared"),
        ("samples", "undeclared"),
    }


def test_validate_dataset_checks_per_item_values_one_item_at_a_time(
    capsys: pytest.CaptureFixture[str], dataset: Path, tmp_path: Path
) -> None:
    doc = _schema().build()
    # Items hold num_nodes = 3, 4, 5; the dataset gathers them on the item dimension.
    doc["groups"]["graph"]["arrays"]["num_nodes"]["max_value"] = 4
    schema = tmp_path / "max4.json"
    schema.write_text(json.dumps(doc))
    code, out, _ = run(capsys, "validate", dataset, "--schema", schema, "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert [p["message"] for p in problems] == [
        "item 2: graph/num_nodes: value 5 is above max_value 4"
    ]


def test_validate_bad_schema_files_exit_2(
    capsys: pytest.CaptureFixture[str], items: list[Path], tmp_path: Path
) -> None:
    bad_dtype = tmp_path / "dtype.json"
    doc = _schema().build()
    doc["groups"]["faces"]["arrays"]["face_areas"]["dtype"] = "float33"
    bad_dtype.write_text(json.dumps(doc))
    assert_usage_error(
        *run(capsys, "validate", items[0], "--schema", bad_dtype),
        str(bad_dtype),
        "groups.faces.arrays.face_areas.dtype",
        "float33",
    )
    not_a_schema = tmp_path / "meta.json"
    not_a_schema.write_text(json.dumps({"size_cadfile": 1}))
    assert_usage_error(
        *run(capsys, "validate", items[0], "--schema", not_a_schema), "unknown key 'size_cadfile'"
    )
    not_json = tmp_path / "broken.json"
    not_json.write_text("{")
    assert_usage_error(*run(capsys, "validate", items[0], "--schema", not_json), "not a valid JSON")
    missing = tmp_path / "missing.json"
    assert_usage_error(
        *run(capsys, "validate", items[0], "--schema", missing), str(missing), "no such file"
    )
    assert_usage_error(
        *run(capsys, "validate", tmp_path / "nothing", "--schema", _good(tmp_path)), "nothing"
    )


def _good(tmp_path: Path) -> Path:
    path = tmp_path / "good.json"
    _schema().save_to_file(path)
    return path


# ---------------------------------------------------------------------------- export-json
def test_export_json_copies_data_metadata_and_schema(
    capsys: pytest.CaptureFixture[str], items: list[Path], tmp_path: Path
) -> None:
    out_dir = tmp_path / "exported"
    code, out, err = run(capsys, "export-json", items[1], "-o", out_dir)
    assert code == 0 and err == ""
    assert f"to JSON store {out_dir}" in out
    assert "face_areas.json" in out and "graph.json" in out
    assert "metadata: 4 fields and the schema in metadata.json" in out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-cadstore")]
    exported = JsonStorageHandler(out_dir, read_only=True)
    original = OptStorage(str(items[1])[: -len(".data")], mode="r")
    try:
        assert sorted(exported.get_keys()) == sorted(original.get_keys())
        for key in original.get_keys():
            want, got = original.load_data(key), exported.load_data(key)
            if isinstance(want, dict):
                assert want.keys() == got.keys()
                for name in want:
                    np.testing.assert_array_equal(got[name], want[name])
            else:
                np.testing.assert_array_equal(got, want)
        assert exported.get_schema() == original.get_schema()
        for key in ("size_cadfile", "category", "file_label", "processing/duration"):
            assert exported.load_metadata(key) == original.load_metadata(key)
    finally:
        exported.close()
        original.close()


def test_export_json_refuses_non_empty_dirs_unless_overwrite(
    capsys: pytest.CaptureFixture[str], items: list[Path], tmp_path: Path
) -> None:
    out_dir = tmp_path / "exported"
    stale = JsonStorageHandler(out_dir)
    stale.save_data("stale", np.arange(3))
    stale.close()
    assert_usage_error(
        *run(capsys, "export-json", items[0], "-o", out_dir), "not empty", "--overwrite"
    )
    # A folder of the user's own: --overwrite would refuse it too, so it is not offered.
    own = tmp_path / "own"
    own.mkdir()
    (own / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "export-json", items[0], "-o", own)
    assert code == 2 and "not empty" in err and "no JSON store" in err
    assert "--overwrite" not in err
    assert [p.name for p in own.iterdir()] == ["notes.txt"]
    code, out, _ = run(capsys, "export-json", items[0], "-o", out_dir, "--overwrite", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["output"] == str(out_dir)
    assert {k["key"] for k in doc["keys"]} == {
        "face_areas",
        "face_types",
        "graph",
        "label",
        "samples",
    }
    assert "stale.json" not in doc["files"] and not (out_dir / "stale.json").exists()
    assert doc["bytes"] == sum(p.stat().st_size for p in out_dir.iterdir())
    # Files that are not a JSON store's are never deleted, even with --overwrite.
    (out_dir / "notes.txt").write_text("mine")
    assert_usage_error(
        *run(capsys, "export-json", items[0], "-o", out_dir, "--overwrite"), "'notes.txt'"
    )
    assert (out_dir / "notes.txt").read_text() == "mine"


def test_export_json_overwrite_keeps_a_users_own_json_files(
    capsys: pytest.CaptureFixture[str], items: list[Path], tmp_path: Path
) -> None:
    """``--overwrite`` into a folder holding no JSON store but a user's own ``.json``
    files (``package.json``) deleted them: any ``.json`` file was taken for the store's."""
    project = tmp_path / "project"
    project.mkdir()
    mine = {"package.json": '{"name": "my-app"}', "tsconfig.json": "{}"}
    for name, text in mine.items():
        (project / name).write_text(text)
    assert_usage_error(
        *run(capsys, "export-json", items[0], "-o", project, "--overwrite"), "no JSON store"
    )
    # Beside a JSON store too: a .json file that is not one of its envelopes is the user's.
    store = tmp_path / "store"
    with JsonStorageHandler(store) as stale:
        stale.save_data("stale", np.arange(3))
    (store / "package.json").write_text(mine["package.json"])
    assert_usage_error(
        *run(capsys, "export-json", items[0], "-o", store, "--overwrite"), "'package.json'"
    )
    assert {p.name: p.read_text() for p in project.iterdir()} == mine
    # A metadata.json of the user's own (no file_sizes_KB) does not make a JSON store.
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "metadata.json").write_text('{"title": "my thesis data"}')
    assert_usage_error(
        *run(capsys, "export-json", items[0], "-o", thesis, "--overwrite"), "not a JSON store's"
    )
    assert (thesis / "metadata.json").read_text() == '{"title": "my thesis data"}'
    assert (store / "package.json").read_text() == mine["package.json"]
    assert sorted(p.name for p in store.iterdir()) == [
        "metadata.json",
        "package.json",
        "stale.json",
    ]


def _store_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _export_killed_at(source: Path, out: Path, call: int, *, exchange: bool = True) -> bool:
    """Export ``source`` over ``out`` in a forked child that dies (``os._exit``: no
    cleanup runs, as under ``SIGKILL``) at its ``call``-th file-system change; return
    whether it died before finishing. Without ``exchange`` the child's file system
    cannot swap two folders (as NFS)."""
    import multiprocessing

    from cadstore.export import export_json
    from cadstore.io import publish

    def child() -> None:
        calls = [0]
        if not exchange:
            publish.exchange_paths = lambda first, second: False  # type: ignore[assignment]

        def counted(function: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                calls[0] += 1
                if calls[0] == call:
                    os._exit(137)
                return function(*args, **kwargs)

            return wrapper

        for name in ("rename", "replace", "remove", "unlink", "rmdir", "link"):
            setattr(os, name, counted(getattr(os, name)))
        export_json(open_artefact(str(source)), str(out), overwrite=True)
        os._exit(0)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    assert process.exitcode in (0, 137), process.exitcode
    return process.exitcode == 137


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-cadstore"))


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_export_json_killed_while_replacing_a_store_leaves_one_whole_store(
    capsys: pytest.CaptureFixture[str], items: list[Path], tmp_path: Path, exchange: bool
) -> None:
    """``--overwrite`` removed the old store's files, then moved the new ones in one by
    one: a writer killed between two of those steps left a mix of both items' keys (or
    keys without their metadata.json, which a rerun refused to overwrite). The old
    store is now swapped for the new one in one step; where the file system cannot swap
    (NFS), set aside and replaced by two renames of whole folders, which it still did
    file by file. Killed between those two, the store is missing and both versions lie
    whole beside it; the next export puts the new one in place."""
    old, new = tmp_path / "old", tmp_path / "new"
    for item, where in ((items[0], old), (items[1], new)):
        assert run(capsys, "export-json", item, "-o", where)[0] == 0
    versions = [_store_files(old), _store_files(new)]
    assert versions[0] != versions[1]
    call, missing = 1, 0
    while True:
        out = tmp_path / f"out{call}"
        shutil.copytree(old, out)
        killed = _export_killed_at(items[1], out, call, exchange=exchange)
        if out.exists():
            assert _store_files(out) in versions, f"killed at call {call}: a mix of two stores"
        else:
            assert not exchange, f"killed at call {call}: no store left"
            missing += 1
            staged = _temporaries(tmp_path)
            assert len(staged) == 2 and staged[1] == staged[0] + "-old", staged
            assert _store_files(tmp_path / staged[0]) == versions[1]
            assert _store_files(tmp_path / staged[1]) == versions[0]
        code, _, err = run(capsys, "export-json", items[1], "-o", out, "--overwrite")
        assert code == 0, err
        assert _store_files(out) == versions[1]
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-cadstore")]
        if not killed:
            break
        call += 1
    assert call > 5
    assert missing == (0 if exchange else 1)


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_export_json_overwrite_failing_midway_keeps_the_old_store(
    items: list[Path],
    json_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exchange: bool,
) -> None:
    """An export over a store that fails after writing some of its files, or while
    renaming the new store into place, leaves the old store exactly as it was and no
    temporary beside it; one that succeeds leaves the new store's files only (the old
    item's keys the new one lacks are gone). A rename (or swap) that fails raised the
    system's bare PermissionError or OSError, naming a temporary folder; it is now a
    StorageError naming the destination and the step, of the failure's kind."""
    from cadstore.errors import StorageAccessError, StorageError
    from cadstore.export import export_json
    from cadstore.io import publish

    if not exchange:
        monkeypatch.setattr(publish, "exchange_paths", lambda first, second: False)
    old, reference = tmp_path / "old", tmp_path / "reference"
    for item, where in ((json_store, old), (items[1], reference)):
        with open_artefact(str(item)) as target:
            export_json(target, str(where))
    versions = [_store_files(old), _store_files(reference)]
    assert set(versions[0]) - set(versions[1]), "the old store has keys the new one lacks"
    out = tmp_path / "out"
    shutil.copytree(old, out)

    save = JsonStorageHandler.save_data
    saved = [0]

    def save_then_fail(self: JsonStorageHandler, key: str, value: Any) -> None:
        save(self, key, value)
        saved[0] += 1
        if saved[0] == 2:
            raise StorageError(str(out), "the disk failed (injected)")

    with monkeypatch.context() as patch:
        patch.setattr(JsonStorageHandler, "save_data", save_then_fail)
        with open_artefact(str(items[1])) as target, pytest.raises(StorageError, match="injected"):
            export_json(target, str(out), overwrite=True)
    assert saved[0] == 2
    assert _store_files(out) == versions[0]
    assert _temporaries(tmp_path) == []

    def refused_step(rename: Any, injected: OSError) -> None:
        """Export over ``out`` with ``os.rename`` (or the swap) replaced by ``rename``;
        check what the caller gets, and that the old store is kept."""
        inode = out.stat().st_ino
        with monkeypatch.context() as patch:
            if exchange:
                patch.setattr(publish, "exchange_paths", rename)
            else:
                patch.setattr(os, "rename", rename)
            with open_artefact(str(items[1])) as target, pytest.raises(StorageError) as info:
                export_json(target, str(out), overwrite=True)
        assert type(info.value) is (
            StorageAccessError if isinstance(injected, PermissionError) else StorageError
        )
        assert info.value.__cause__ is injected
        assert info.value.path == str(out)
        assert str(info.value).startswith(f"{out}: moving the new store into place: ")
        assert "injected" in str(info.value)
        assert _store_files(out) == versions[0]  # byte for byte
        assert out.stat().st_ino == inode  # the same folder
        assert _temporaries(tmp_path) == []

    rename = os.rename
    if exchange:  # the swap fails (EIO): nothing is moved
        eio = OSError(5, "Input/output error (injected)", str(out))

        def swap_fails(first: str, second: str) -> bool:
            raise eio

        refused_step(swap_fails, eio)
    else:
        # The first rename, of the old store aside, fails: nothing is moved.
        refused = PermissionError(13, "Permission denied (injected)", str(out))

        def rename_aside_fails(source: str, destination: str) -> None:
            if source == str(out):
                raise refused
            rename(source, destination)

        refused_step(rename_aside_fails, refused)

        # The second rename, of the new store into place, fails: the old one is put back.
        def rename_new_in_fails(source: str, destination: str) -> None:
            if destination == str(out) and not source.endswith("-old"):
                raise refused
            rename(source, destination)

        refused_step(rename_new_in_fails, refused)

        # Nor can the old store be renamed back: both are kept, and said where.
        def no_rename_to_out(source: str, destination: str) -> None:
            if destination == str(out):
                raise PermissionError(13, "Permission denied (injected)", destination)
            rename(source, destination)

        with monkeypatch.context() as patch:
            patch.setattr(os, "rename", no_rename_to_out)
            with open_artefact(str(items[1])) as target, pytest.raises(StorageError) as info:
                export_json(target, str(out), overwrite=True)
        staged = _temporaries(tmp_path)
        assert len(staged) == 2 and staged[1] == staged[0] + "-old", staged
        assert str(out) in str(info.value) and staged[1] in str(info.value)
        assert not out.exists()
        assert _store_files(tmp_path / staged[0]) == versions[1]
        assert _store_files(tmp_path / staged[1]) == versions[0]
        # The next process's export puts the new store in place (this one is alive).
        monkeypatch.setattr(publish, "pid_alive", lambda pid: False)
        assert publish.recover_interrupted_move(str(out), "-export")
        assert _store_files(out) == versions[1]
        assert _temporaries(tmp_path) == []
        shutil.rmtree(out)
        shutil.copytree(old, out)

    inode = out.stat().st_ino
    with open_artefact(str(items[1])) as target:
        result = export_json(target, str(out), overwrite=True)
    assert _store_files(out) == versions[1]
    assert result.files == sorted(versions[1])
    assert _temporaries(tmp_path) == []
    assert out.stat().st_ino != inode  # replaced as a folder, not file by file


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_export_json_overwrite_through_a_link_failing_keeps_the_old_store(
    items: list[Path],
    json_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exchange: bool,
) -> None:
    """``--overwrite`` onto a link to a JSON store replaced the files behind the link one
    by one: an EIO on the second ``os.replace`` left the folder holding part of the new
    store, the old files gone and the staging folder with the rest removed (neither
    version whole), the error saying nothing of it. The folder the link leads to is now
    replaced as a whole, as a plain folder is (one swap, or two renames with the old one
    put back), the link kept: a failure leaves the old store byte for byte, the
    StorageError naming the destination as given, and no temporary beside either."""
    import errno

    from cadstore.errors import StorageError
    from cadstore.export import export_json
    from cadstore.io import publish

    real = tmp_path / "real"
    real.mkdir()
    out, link = real / "out", tmp_path / "link"
    with open_artefact(str(json_store)) as target:
        export_json(target, str(out))
    link.symlink_to(out, target_is_directory=True)
    before = _store_files(out)
    eio = OSError(errno.EIO, "Input/output error (injected)")
    replace, rename = os.replace, os.rename
    replaced = [0]

    def replace_fails_second(source: Any, destination: Any, **kwargs: Any) -> None:
        # Of the store's files moved into the folder (the JSON store's own writes go on).
        if os.path.dirname(os.fspath(destination)) in (str(link), str(out)):
            replaced[0] += 1
            if replaced[0] == 2:
                raise eio
        replace(source, destination, **kwargs)

    def new_store_in_fails(source: Any, destination: Any, **kwargs: Any) -> None:
        if os.fspath(destination) == str(out) and not os.fspath(source).endswith("-old"):
            raise eio
        rename(source, destination, **kwargs)

    def swap_fails(first: str, second: str) -> bool:
        raise eio

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace_fails_second)
        patch.setattr(os, "rename", new_store_in_fails)
        if exchange:
            patch.setattr(publish, "exchange_paths", swap_fails)
        else:
            patch.setattr(publish, "exchange_paths", lambda first, second: False)
        with open_artefact(str(items[1])) as target, pytest.raises(StorageError) as info:
            export_json(target, str(link), overwrite=True)
    assert type(info.value) is StorageError
    assert info.value.path == str(link)
    assert str(info.value).startswith(f"{link}: moving the new store into place: ")
    assert info.value.__cause__ is eio
    assert link.is_symlink() and os.readlink(link) == str(out)
    assert _store_files(out) == before  # byte for byte
    assert _temporaries(tmp_path) == [] and _temporaries(real) == []

    if not exchange:
        # Nor can the old store be renamed back: both are kept beside the folder the link
        # leads to, and said where; the next export through the link puts the new one in.
        def no_rename_to_out(source: Any, destination: Any, **kwargs: Any) -> None:
            if os.fspath(destination) == str(out):
                raise eio
            rename(source, destination, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(publish, "exchange_paths", lambda first, second: False)
            patch.setattr(os, "rename", no_rename_to_out)
            with open_artefact(str(items[1])) as target, pytest.raises(StorageError) as info:
                export_json(target, str(link), overwrite=True)
        staged = _temporaries(real)
        assert len(staged) == 2 and staged[1] == staged[0] + "-old", staged
        assert info.value.path == str(link)
        assert str(out) in str(info.value) and staged[1] in str(info.value)
        assert not out.exists() and link.is_symlink()
        assert _store_files(real / staged[1]) == before
        monkeypatch.setattr(publish, "pid_alive", lambda pid: False)

    # Succeeding, the link is kept and leads to the new store.
    with open_artefact(str(items[1])) as target:
        export_json(target, str(link), overwrite=True)
    with open_artefact(str(items[1])) as target:
        export_json(target, str(tmp_path / "reference"))
    assert link.is_symlink() and os.readlink(link) == str(out)
    assert _store_files(out) == _store_files(tmp_path / "reference")
    assert _temporaries(tmp_path) == [] and _temporaries(real) == []


def _refuse_entries_in(patch: pytest.MonkeyPatch, *folders: Path) -> None:
    """Make ``folders`` folders the user may not write (as ``chattr +i``, which root's tests
    cannot count on): no entry made, renamed or swapped directly in one (EPERM)."""
    import errno

    from cadstore.io import publish

    def inside(*paths: Any) -> bool:
        return any(
            os.path.dirname(os.path.abspath(os.fspath(p))) in map(str, folders) for p in paths
        )

    def refuse(path: Any) -> PermissionError:
        return PermissionError(errno.EPERM, "Operation not permitted", os.fspath(path))

    mkdir, rename, replace, exchange = os.mkdir, os.rename, os.replace, publish.exchange_paths

    def refused_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if inside(path):
            raise refuse(path)
        mkdir(path, *args, **kwargs)

    def refused_rename(source: Any, destination: Any, **kwargs: Any) -> None:
        if inside(source, destination):
            raise refuse(destination)
        rename(source, destination, **kwargs)

    def refused_replace(source: Any, destination: Any, **kwargs: Any) -> None:
        if inside(source, destination):
            raise refuse(destination)
        replace(source, destination, **kwargs)

    def refused_exchange(first: str, second: str) -> bool:
        if inside(first, second):
            raise refuse(second)
        return exchange(first, second)

    patch.setattr(os, "mkdir", refused_mkdir)
    patch.setattr(os, "rename", refused_rename)
    patch.setattr(os, "replace", refused_replace)
    patch.setattr(publish, "exchange_paths", refused_exchange)


def _store_behind_a_link(json_store: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """``json_store`` exported to ``ro/store`` below ``tmp_path`` and the link ``link`` to
    it, beside a file of the user's on each side (``notes.txt``, ``ro/other.txt``):
    ``ro``, the store and the link."""
    from cadstore.export import export_json

    ro = tmp_path / "ro"
    ro.mkdir()
    out, link = ro / "store", tmp_path / "link"
    with open_artefact(str(json_store)) as target:
        export_json(target, str(out))
    link.symlink_to(out, target_is_directory=True)
    (tmp_path / "notes.txt").write_text("mine")
    (ro / "other.txt").write_text("theirs")
    return ro, out, link


@pytest.mark.parametrize("staged", ["beside-the-link", "inside-the-folder"])
def test_export_json_overwrite_through_a_link_to_a_folder_in_an_unwritable_parent(
    items: list[Path],
    json_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    staged: str,
) -> None:
    """``--overwrite`` onto a link to a store whose parent folder the user may not write
    (``~/out`` leading to ``/shared/team/store``) was refused since the folder became
    replaced as a whole ("making the temporary folder of the new store beside it:
    operation not permitted"). The new store is now staged beside the link (or, that too
    refused, inside the folder) and the folder's files replaced one by one: the link is
    kept, the folder holds exactly the new store, and nothing else is touched."""
    from cadstore.export import export_json

    ro, out, link = _store_behind_a_link(json_store, tmp_path)
    with open_artefact(str(items[1])) as target:
        export_json(target, str(tmp_path / "reference"))
    reference = _store_files(tmp_path / "reference")
    assert reference.keys() != _store_files(out).keys()  # a key of the old store goes

    with monkeypatch.context() as patch:
        _refuse_entries_in(patch, *([ro] if staged == "beside-the-link" else [ro, tmp_path]))
        with open_artefact(str(items[1])) as target:
            result = export_json(target, str(link), overwrite=True)
    assert link.is_symlink() and os.readlink(link) == str(out)
    assert _store_files(out) == reference
    assert result.files == sorted(reference)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (ro / "other.txt").read_text() == "theirs"
    assert sorted(p.name for p in ro.iterdir()) == ["other.txt", "store"]
    assert _temporaries(tmp_path) == []


def test_export_json_overwrite_through_a_link_failing_midway_file_by_file_says_where(
    items: list[Path], json_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files of a folder that cannot be replaced as a whole (its parent may not be
    written) are replaced one by one: an EIO midway leaves the folder a mix of both
    versions. The StorageError names the link, the folder, how much of the new version
    it holds and where the new version is kept whole (the staging folder, not removed);
    no file of the user's outside the store is touched, and the next export through the
    link puts the new store in place, leaving no temporary."""
    import errno

    from cadstore.errors import StorageError
    from cadstore.export import export_json
    from cadstore.io import publish

    ro, out, link = _store_behind_a_link(json_store, tmp_path)
    old = _store_files(out)
    with open_artefact(str(items[1])) as target:
        export_json(target, str(tmp_path / "reference"))
    reference = _store_files(tmp_path / "reference")
    eio = OSError(errno.EIO, "Input/output error (injected)")

    with monkeypatch.context() as patch:
        _refuse_entries_in(patch, ro)
        refusing = os.replace
        into_out = [0]

        def second_into_out_fails(source: Any, destination: Any, **kwargs: Any) -> None:
            if os.path.dirname(os.fspath(destination)) == str(out):
                into_out[0] += 1
                if into_out[0] == 2:
                    raise eio
            refusing(source, destination, **kwargs)

        patch.setattr(os, "replace", second_into_out_fails)
        with open_artefact(str(items[1])) as target, pytest.raises(StorageError) as info:
            export_json(target, str(link), overwrite=True)
    kept = _temporaries(tmp_path)
    assert len(kept) == 1, kept
    message = str(info.value)
    assert info.value.path == str(link) and message.startswith(f"{link}: ")
    assert info.value.errno == errno.EIO and info.value.__cause__.__cause__ is eio
    assert str(out) in message and str(tmp_path / kept[0]) in message
    assert f"1 of the new version's {len(reference)} files" in message
    assert _store_files(tmp_path / kept[0]) == reference  # the new version, whole
    mix = _store_files(out)
    assert all(mix[name] in (old.get(name), reference.get(name)) for name in mix)
    assert link.is_symlink() and os.readlink(link) == str(out)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (ro / "other.txt").read_text() == "theirs"
    assert sorted(p.name for p in ro.iterdir()) == ["other.txt", "store"]

    # The next export (this process taken for gone) completes it and sweeps what was kept.
    monkeypatch.setattr(publish, "pid_alive", lambda pid: False)
    with monkeypatch.context() as patch:
        _refuse_entries_in(patch, ro)
        with open_artefact(str(items[1])) as target:
            export_json(target, str(link), overwrite=True)
    assert _store_files(out) == reference
    assert _temporaries(tmp_path) == [] and _temporaries(out) == []
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_json_disk_full_while_writing_names_the_destination(
    items: list[Path], json_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write of the new store that fails (the disk full: ENOSPC on the files opened in
    the staging folder) raised the StorageError naming a temporary file of that folder,
    removed by the time the caller read it. It now names the destination and the step,
    keeping its kind, errno and cause; the old store is left byte for byte and no
    temporary beside it."""
    import errno

    from cadstore.errors import StorageError
    from cadstore.export import export_json

    out = tmp_path / "out"
    with open_artefact(str(json_store)) as target:
        export_json(target, str(out))
    before = _store_files(out)
    real_open = os.open
    full = OSError(errno.ENOSPC, "No space left on device (injected)")

    def no_space(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        folder = os.path.basename(os.path.dirname(os.fspath(path)))
        if folder.startswith(".tmp-cadstore") and flags & os.O_CREAT:
            raise full
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", no_space)
        with open_artefact(str(items[1])) as target, pytest.raises(StorageError) as info:
            export_json(target, str(out), overwrite=True)
    assert type(info.value) is StorageError
    assert info.value.path == str(out)
    assert str(info.value).startswith(f"{out}: writing the new store: ")
    assert "no space left on device" in str(info.value).lower()
    assert info.value.errno == errno.ENOSPC
    assert info.value.__cause__ is full
    assert _store_files(out) == before
    assert _temporaries(tmp_path) == []


def test_export_json_overwrite_names_a_file_it_cannot_look_up(
    items: list[Path], json_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of the store to replace that the disk fails to look up (an EIO on its
    ``stat``): ``os.path.islink``/``isfile`` said ``False``, and ``--overwrite`` refused the
    store as holding a file that is not a JSON store's (OutputExistsError). It is now the
    StorageError naming that file; the store is left as it was, nothing beside it."""
    import errno

    from cadstore.errors import StorageError
    from cadstore.export import export_json
    from conftest import refuse_opening

    out = tmp_path / "out"
    with open_artefact(str(json_store)) as target:
        export_json(target, str(out))
    before = _store_files(out)
    failing = out / "areas.json"
    assert failing.name in before
    with monkeypatch.context() as patch:
        refuse_opening(patch, failing, "stat", errno.EIO)
        refuse_opening(patch, failing, "lstat", errno.EIO)
        with open_artefact(str(items[1])) as target, pytest.raises(StorageError) as info:
            export_json(target, str(out), overwrite=True)
    assert type(info.value) is StorageError
    assert info.value.path == str(failing)
    assert str(info.value).endswith(": input/output error")
    assert _store_files(out) == before
    assert _temporaries(tmp_path) == []


def test_export_json_refused_by_the_file_system_names_the_destination(
    capsys: pytest.CaptureFixture[str],
    items: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A destination the file system refuses raised the system's bare OSError, naming a
    temporary folder (and, for a rename, both paths): a name too long for it (after every
    key was written), or a folder that may not be written (the staging folder could not be
    made). Each is now a StorageError naming the destination and the step, of the
    failure's kind; nothing is left beside it, and the command line prints it as one line.
    A name too long was refused only by the final rename, after every key was written; it
    is now refused before any is."""
    import errno

    from cadstore.errors import StorageAccessError, StorageError
    from cadstore.export import export_json

    folder = tmp_path / "exports"
    folder.mkdir()
    too_long = folder / ("x" * 300)  # longer than any file system's name limit (255)
    save, saved = JsonStorageHandler.save_data, []

    def counted(self: JsonStorageHandler, key: str, value: Any) -> None:
        saved.append(key)
        save(self, key, value)

    with monkeypatch.context() as patch:
        patch.setattr(JsonStorageHandler, "save_data", counted)
        with open_artefact(str(items[0])) as target, pytest.raises(StorageError) as info:
            export_json(target, str(too_long))
    assert saved == []
    assert type(info.value) is StorageError
    assert info.value.path == str(too_long)
    assert str(info.value) == f"{too_long}: checking its name: file name too long"
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENAMETOOLONG
    assert os.listdir(folder) == []
    assert_usage_error(
        *run(capsys, "export-json", items[0], "-o", too_long), str(too_long), "checking its name"
    )
    assert os.listdir(folder) == []

    # A folder that may not be written (injected: tests may run as root, whom chmod does
    # not stop): the temporary folder of the new store cannot be made beside it.
    out = folder / "out"
    mkdir = os.mkdir

    def refused(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.path.dirname(os.fspath(path)) == str(folder):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refused)
    with open_artefact(str(items[0])) as target, pytest.raises(StorageAccessError) as denied:
        export_json(target, str(out))
    assert str(denied.value) == (
        f"{out}: making the temporary folder of the new store beside it: permission denied"
    )
    assert os.listdir(folder) == []


@pytest.mark.parametrize("existing", ["empty", "store"])
def test_export_json_into_the_current_folder(
    capsys: pytest.CaptureFixture[str],
    items: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    existing: str,
) -> None:
    """'-o .' from inside the folder (empty, or a JSON store with --overwrite): the store
    was renamed or swapped by the name '.', which the kernel refuses, and the export
    failed with a bare '[Errno 16] Device or resource busy' after writing everything (it
    worked before the store was published in one step)."""
    here = tmp_path / "here"
    here.mkdir()
    options = []
    if existing == "store":
        assert run(capsys, "export-json", items[0], "-o", here)[0] == 0
        options = ["--overwrite"]
    monkeypatch.chdir(here)
    inode = os.stat(".").st_ino
    code, out, err = run(capsys, "export-json", items[1], "-o", ".", *options)
    assert code == 0, err
    assert "face_areas.json" in out
    assert _store_files(here) == _store_files(_exported(capsys, items[1], tmp_path / "ref"))
    # The folder the user stands in is kept (not swapped out for a new one and deleted,
    # which left their shell in a removed folder that lists nothing).
    assert os.stat(".").st_ino == inode == here.stat().st_ino
    assert sorted(os.listdir(".")) == sorted(os.listdir(here))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-cadstore")]


def _exported(capsys: pytest.CaptureFixture[str], item: Path, where: Path) -> Path:
    assert run(capsys, "export-json", item, "-o", where)[0] == 0
    return where


def test_two_exports_into_one_new_folder_never_mix_their_stores(
    items: list[Path], json_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two exports into one new folder: the second, which found the folder absent,
    moved its files into the first's store once that was published, leaving one store
    holding both items' keys. It now refuses, and the first's store stays whole."""
    from cadstore import export as export_module
    from cadstore.errors import OutputExistsError
    from cadstore.export import export_json

    out = tmp_path / "out"
    copy = export_module._copy

    def copy_while_another_export_finishes(*args: Any) -> Any:
        result = copy(*args)
        monkeypatch.setattr(export_module, "_copy", copy)
        with open_artefact(str(json_store)) as first:
            export_json(first, str(out))
        return result

    monkeypatch.setattr(export_module, "_copy", copy_while_another_export_finishes)
    with open_artefact(str(items[0])) as second, pytest.raises(OutputExistsError, match="another"):
        export_json(second, str(out))
    with JsonStorageHandler(out, read_only=True) as store:
        assert sorted(store.get_keys()) == ["areas", "graph", "names"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "store_json"]


def test_export_json_bad_input(
    capsys: pytest.CaptureFixture[str],
    items: list[Path],
    dataset: Path,
    json_store: Path,
    tmp_path: Path,
) -> None:
    assert_usage_error(*run(capsys, "export-json", dataset, "-o", tmp_path / "x"), "a dataset")
    assert_usage_error(*run(capsys, "export-json", items[0], "-o", items[1]), "not a directory")
    assert_usage_error(*run(capsys, "export-json", json_store, "-o", json_store), "itself")
    # A JSON store exports too.
    code, _, _ = run(capsys, "export-json", json_store, "-o", tmp_path / "copy")
    assert code == 0
    copy = JsonStorageHandler(tmp_path / "copy", read_only=True)
    try:
        assert copy.load_data("names") == ["a", "b"]
        assert copy.load_metadata("category") == "bolt"
    finally:
        copy.close()


# ---------------------------------------------------------------------------- entry point
def test_console_script_entry_point(items: list[Path], tmp_path: Path) -> None:
    script = shutil.which("cadstore") or str(Path(sys.executable).parent / "cadstore")
    assert os.path.exists(script), "the cadstore console script is not installed"
    done = subprocess.run(
        [script, "inspect", str(items[0]), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kind"] == "item"
    done = subprocess.run(
        [script, "cat", str(items[0]), "nope"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("cadstore: error: no key 'nope'")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_export_json_overwrite_killed_at_random_moments_leaves_one_whole_store(
    tmp_path: Path,
) -> None:
    """Real ``SIGKILL``s of ``cadstore export-json --overwrite`` alternating two items
    over one store (``CADSTORE_KILLS`` trials, 30 by default): after each, the store is
    one item's, whole, and after a rerun no temporary is left beside it."""
    import random
    import time

    rng = random.Random(20261207)
    env = dict(os.environ)
    env["PYTHONPATH"] = (
        str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    )
    sources = []
    for i in range(2):
        with OptStorage(tmp_path / f"item{i}.zarr") as storage:
            for k in range(12):
                storage.save_data(f"k{k}_{i}", np.arange(2000) + i)
            storage.compress_store()
        sources.append(str(tmp_path / f"item{i}.zarr.data"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cadstore", "export-json"]
    subprocess.run([*command, sources[0], "-o", str(out)], check=True, env=env)
    for trial in range(int(os.environ.get("CADSTORE_KILLS", "30"))):
        proc = subprocess.Popen(
            [*command, sources[trial % 2], "-o", str(out), "--overwrite"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.2, 1.5))
        proc.kill()
        proc.wait()
        names = sorted(os.listdir(out))
        keys = {n.rsplit("_", 1)[-1] for n in names if n != "metadata.json"}
        assert "metadata.json" in names and len(names) == 13 and len(keys) == 1, (trial, names)
    subprocess.run([*command, sources[1], "-o", str(out), "--overwrite"], check=True, env=env)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-cadstore")]


def test_a_dataset_table_or_the_dataset_given_for_another_names_what_it_is(
    capsys: pytest.CaptureFixture[str], items: list[Path], tmp_path: Path
) -> None:
    """``cadstore info parts.infoset`` (and inspect, validate, cat, report, split, repair)
    said "not a readable zip file (no end of central directory record)";
    ``DatasetExplorer(flow_output_file="parts.dataset")`` said "invalid JSON: 'utf-8'
    codec can't decode byte ...". Each now says what the file is and names the file to
    give instead; nothing is written beside the dataset."""
    import cadstore
    from cadstore import DatasetExplorer, DatasetLoader
    from cadstore.errors import CorruptStoreError

    dataset = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items], str(dataset))
    folder = dataset.parent
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    flow = dataset.with_suffix(".flow")
    for table in (dataset.with_suffix(".infoset"), dataset.with_suffix(".attribset")):
        for argv in (
            ["info", table],
            ["inspect", table],
            ["validate", table],
            ["cat", table, "faces/face_areas"],
            ["report", table, "-o", folder / "r.html"],
            ["split", table, "--key", "file_label"],
            ["repair", table],
        ):
            assert_usage_error(*run(capsys, *argv), str(table), "Parquet table", str(dataset))
        for explorer in (DatasetExplorer, DatasetLoader):
            with pytest.raises(CorruptStoreError, match="Parquet table") as info:
                explorer(flow_output_file=table)
            assert str(table) in str(info.value) and str(flow) in str(info.value)
    for explorer in (DatasetExplorer, DatasetLoader):
        with pytest.raises(CorruptStoreError, match="zip file") as info:
            explorer(flow_output_file=dataset)
        assert str(dataset) in str(info.value) and str(flow) in str(info.value)
        with pytest.raises(CorruptStoreError, match="JSON document") as info:
            explorer(merged_store_path=flow)
        assert str(flow) in str(info.value) and str(dataset) in str(info.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_the_output_folder_of_a_merge_names_its_manifest(
    capsys: pytest.CaptureFixture[str], items: list[Path], tmp_path: Path
) -> None:
    """The folder a merge wrote into (``cadstore encode --merge -o OUT``'s ``OUT``) given
    for its dataset: inspect and validate read it as a JSON store of one foreign key
    (``error_summary.json``), export-json copied that, and info, split, report and repair
    said "not a Zarr store". Each is now an error naming the manifest to pass; nothing is
    written."""
    import cadstore
    from cadstore import DatasetExplorer
    from cadstore.errors import CorruptStoreError, UnknownFormatError

    folder = tmp_path / "out"
    cadstore.merge([str(p) for p in items], str(folder / "parts.dataset"))
    (folder / "error_summary.json").write_text("[]")
    flow = folder / "parts.flow"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for given in (str(folder), f"{folder}/"):
        for argv in (
            ["inspect", given],
            ["validate", given],
            ["schema", given],
            ["cat", given, "error_summary"],
            ["export-json", given, "-o", tmp_path / "exported"],
            ["info", given],
            ["split", given, "--key", "file_label"],
            ["report", given, "-o", tmp_path / "r.html"],
            ["repair", given],
        ):
            assert_usage_error(*run(capsys, *argv), str(folder), f"pass its manifest {flow}")
    with pytest.raises(UnknownFormatError, match="output folder") as info:
        open_artefact(folder)
    assert str(flow) in str(info.value)
    with pytest.raises(CorruptStoreError, match="output folder") as caught:
        DatasetExplorer(merged_store_path=folder)
    assert str(flow) in str(caught.value)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_cat_of_a_dataset_array_without_its_group_names_the_keys_meant(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``cadstore cat X.dataset face_areas`` (the key as an item spells it) listed the
    top-level groups only, and ``faceface/d2_distanc`` listed the group's stored arrays
    without the face-pair arrays it presents (stored as triangles, read in full by
    ``cat faceface/d2_distance``). The error names GROUP/ARRAY keys that exist."""
    import cadstore

    rng = np.random.default_rng(0)
    for n in range(2):
        with OptStorage(tmp_path / f"s{n}.zarr") as item:
            half = rng.random((3, 3, 2)).astype(np.float32)
            item.save_data("d2_distance", half + half.transpose(1, 0, 2))
            item.save_data("face_areas", np.ones(3, dtype=np.float32))
            item.compress_store()
    dataset = tmp_path / "sym.dataset"
    cadstore.merge([str(tmp_path / f"s{n}.zarr.data") for n in range(2)], str(dataset))
    assert_usage_error(
        *run(capsys, "cat", dataset, "face_areas"), "(did you mean faces/face_areas?)"
    )
    assert_usage_error(
        *run(capsys, "cat", dataset, "d2_distance"),
        "(did you mean faceface/d2_distance or faceface_upper/d2_distance?)",
    )
    assert_usage_error(*run(capsys, "cat", dataset, "faceface/d2_distanc"), "faceface/d2_distance")
    code, out, _ = run(capsys, "cat", dataset, "faceface/d2_distance")
    assert code == 0 and len(out.strip().splitlines()) == 18  # 2 items of 3 x 3 pairs
    code, _, err = run(capsys, "cat", dataset, "nothing_like_it")
    assert code == 2 and "did you mean" not in err


def test_an_item_dataset_or_manifest_given_as_a_schema_file_names_the_export(
    capsys: pytest.CaptureFixture[str], items: list[Path], tmp_path: Path
) -> None:
    """``cadstore validate ITEM --schema parts.dataset`` (the dataset whose schema is
    meant) said "is not UTF-8 JSON text (invalid continuation byte)", and ``--schema
    parts.flow`` "schema: unknown key 'format'". Each names what the file is and the
    ``cadstore schema`` command that exports its schema; that command, run as named with
    a file for FILE, gives a schema the validation takes."""
    import shlex

    import cadstore
    from cadstore import SchemaBuilder
    from cadstore.errors import SchemaError, UnknownFormatError

    dataset = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p in items], str(dataset))
    for given in (dataset, items[1], tmp_path / "parts.flow"):
        code, out, err = run(capsys, "validate", items[0], "--schema", given)
        assert_usage_error(code, out, err, str(given), f"'cadstore schema {given} -o FILE'")
        with pytest.raises((UnknownFormatError, SchemaError), match="cadstore schema"):
            SchemaBuilder.load_from_file(given)
        command = err.split("'cadstore ")[1].split("'")[0].replace("FILE", str(tmp_path / "s.json"))
        assert main(shlex.split(command)) == 0
        assert main(["validate", str(items[0]), "--schema", str(tmp_path / "s.json")]) == 0
        capsys.readouterr()
    code, out, err = run(capsys, "validate", items[0], "--schema", tmp_path / "parts.infoset")
    assert_usage_error(code, out, err, "Parquet table")


def _rewritten(source: Path, target: Path, key: str, damage: str) -> bytes:
    """Copy the zip ``source`` to ``target`` member by member (each compressed as it was),
    damaging the node document ``key`` as ``damage`` says; return the new file's bytes."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        original = zin.read(key)
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == key:
                if damage == "missing":
                    continue
                if damage == "disagrees":
                    doc = json.loads(data)
                    doc["shape"] = [doc["shape"][0] + 5]
                    data = json.dumps(doc).encode()
            zout.writestr(info, data)
        if damage == "unlisted":
            zout.writestr(key.replace("edges_source", "extra"), original)
    raw = bytearray(target.read_bytes())
    if damage == "unreadable":
        # The member's CRC changed alike in both headers: reading it finds a mismatch.
        with zipfile.ZipFile(target) as zf:
            local = zf.getinfo(key).header_offset
        central = raw.rindex(b"PK\x01\x02", 0, raw.rindex(key.encode()))
        for at in (local + 14, central + 16):
            raw[at] ^= 0xFF
        target.write_bytes(bytes(raw))
    return bytes(raw)


@pytest.mark.parametrize("kind", ["item", "item-v2", "dataset"])
@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("disagrees", r"disagrees with its copy in {where} \(fields 'shape'\)"),
        ("missing", "missing, though {where} lists it"),
        ("unreadable", r"does not read \(.*CRC"),
        ("unlisted", "not in {where}"),
    ],
    ids=["disagrees", "missing", "unreadable", "unlisted"],
)
def test_validate_compares_each_nodes_document_with_its_consolidated_copy(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    items: list[Path],
    dataset: Path,
    schema_file: Path,
    kind: str,
    damage: str,
    says: str,
) -> None:
    """Found by review: cadstore reads a store's nodes through the consolidated metadata in
    its root zarr.json and never compared them with each node's own zarr.json, which a
    reader not using consolidated metadata (zarr-python with use_consolidated=False)
    reads: a document damaged (its CRC holding) or changed by another tool gave two kinds
    of reader two different arrays, and validate said "valid". Opening a store still
    reads only the copy (one read); validate reads each document and reports one that
    disagrees, is missing, does not read or is not in the copy as a problem naming it
    (exit 1). The store is left as it was."""
    import re

    import zarr

    if kind == "item-v2":
        source = _write_item(tmp_path / "v2.zarr", _item(0), _metadata(0), zarr_format=2)
        key, where = "graph/edges_source/.zarray", r"\.zmetadata"
    else:
        source = items[0] if kind == "item" else dataset
        key, where = "graph/edges_source/zarr.json", r"the root zarr\.json's consolidated metadata"
    target = tmp_path / ("damaged.dataset" if kind == "dataset" else "damaged.zarr.data")
    raw = _rewritten(source, target, key, damage)
    code, out, err = run(capsys, "validate", target, "--schema", schema_file, "--json")
    assert code == 1 and err == ""
    doc = json.loads(out)
    problems = [p for p in doc["problems"] if p["kind"] == "store"]
    expected = key if damage != "unlisted" else key.replace("edges_source", "extra")
    assert [p["key"] for p in problems] == [expected], doc["problems"]
    message = problems[0]["message"]
    assert re.search(says.format(where=where), message) and message.startswith(expected)
    if damage == "disagrees":
        # What a reader not using consolidated metadata sees: the damaged document.
        with zarr.storage.ZipStore(target, mode="r") as store:
            group = zarr.open_group(store, mode="r", use_consolidated=False)
            consolidated = zarr.open_group(store, mode="r")
            assert group["graph/edges_source"].shape[0] == (
                consolidated["graph/edges_source"].shape[0] + 5
            )
    assert target.read_bytes() == raw


def test_validate_finds_no_store_problem_in_what_cadstore_writes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, schema_file: Path
) -> None:
    """Each node's document and its consolidated copy agree in every store cadstore
    writes: an item of each Zarr format (NaN fill values among the arrays), a dataset."""
    item = _item(0)
    item["floats"] = np.array([np.nan, 1.0])
    paths = [
        _write_item(tmp_path / "v3.zarr", item, _metadata(0), allow_nan=True),
        _write_item(tmp_path / "v2.zarr", item, _metadata(0), allow_nan=True, zarr_format=2),
    ]
    out_dataset = tmp_path / "out.dataset"
    merge_items([str(p) for p in paths], str(out_dataset))
    for path in (*paths, out_dataset):
        code, out, _ = run(capsys, "validate", path, "--schema", schema_file, "--json")
        assert code == 0 and json.loads(out)["problems"] == [], out


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
def test_the_store_check_sees_attributes_added_to_a_zarr2_root_after_consolidation(
    tmp_path: Path,
) -> None:
    """zarr-python 2 leaves a group without attributes out of .zmetadata's .zattrs keys;
    attributes another tool adds later are read by a reader that does not use the copy
    and not by cadstore. The store check saw only documents below the root (x/.zattrs),
    never the root's own .zattrs; an empty one added is no problem."""
    import zarr

    from cadstore.format.hierarchy import ReadHierarchy
    from cadstore.io.sources import DirectorySource

    path = tmp_path / "store.zarr"
    store = zarr.storage.LocalStore(path)
    group = zarr.open_group(store, mode="w", zarr_format=2)
    group.create_array("x", shape=(2,), dtype="int32")[:] = 1
    zarr.consolidate_metadata(store)
    copy = json.loads((path / ".zmetadata").read_text())
    for key in (".zattrs", "x/.zattrs"):  # as zarr-python 2 writes it for no attributes
        copy["metadata"].pop(key, None)
    (path / ".zmetadata").write_text(json.dumps(copy))
    (path / ".zattrs").write_text("{}")
    source = DirectorySource(str(path))
    try:
        assert ReadHierarchy(source).copy_problems() == []
    finally:
        source.close()
    (path / ".zattrs").write_text(json.dumps({"units": "mm"}))
    source = DirectorySource(str(path))
    try:
        ((found, message),) = ReadHierarchy(source).copy_problems()
    finally:
        source.close()
    assert found == ".zattrs" and "does not see these attributes" in message


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
@pytest.mark.parametrize("zarr_format", [3, 2])
def test_zarr_pythons_consolidated_stores_have_no_store_problem(
    tmp_path: Path, zarr_format: int
) -> None:
    """zarr-python's consolidated copy of a group carries a consolidated_metadata of its
    own (the metadata below it) that the group's document lacks: not a disagreement (it
    was reported as one). A changed attribute still is."""
    import zarr

    from cadstore.format.hierarchy import ReadHierarchy
    from cadstore.io.sources import DirectorySource

    path = tmp_path / "store.zarr"
    store = zarr.storage.LocalStore(path)
    group = zarr.open_group(store, mode="w", zarr_format=zarr_format, attributes={"a": 1})
    values = group.create_array("values", shape=(4,), dtype="float64", fill_value=np.nan)
    values[:] = np.arange(4)
    group.create_group("sub").create_array("s", shape=(3,), dtype="int32")[:] = 1
    zarr.consolidate_metadata(store)
    source = DirectorySource(str(path))
    try:
        assert ReadHierarchy(source).copy_problems() == []
    finally:
        source.close()
    key = "sub/s/zarr.json" if zarr_format == 3 else "sub/s/.zarray"
    doc = json.loads((path / key).read_text())
    doc["fill_value"] = 7
    (path / key).write_text(json.dumps(doc))
    source = DirectorySource(str(path))
    try:
        ((found, message),) = ReadHierarchy(source).copy_problems()
    finally:
        source.close()
    assert found == key and "fields 'fill_value'" in message


def test_the_store_check_asks_for_no_key_a_consolidated_copy_names_unsafely() -> None:
    """A v2 copy's keys are not checked when the store is opened (only the arrays' and
    groups'): one outside the store, or no metadata document's, is reported as such and
    never asked for."""
    from cadstore.format.hierarchy import ReadHierarchy
    from cadstore.io.sources import DictSource

    asked: list[str] = []

    class Recording(DictSource):
        def get(self, key: str) -> bytes | None:
            asked.append(key)
            return super().get(key)

    copies = {".zgroup": {"zarr_format": 2}, "../x/.zattrs": {}, "notes.txt": {}}
    source = Recording(
        {
            ".zgroup": json.dumps(copies[".zgroup"]).encode(),
            ".zmetadata": json.dumps({"zarr_consolidated_format": 1, "metadata": copies}).encode(),
        }
    )
    problems = ReadHierarchy(source).copy_problems()
    assert [key for key, _ in problems] == ["../x/.zattrs", "notes.txt"]
    assert all("not a metadata document" in message for _, message in problems)
    assert "../x/.zattrs" not in asked and "notes.txt" not in asked


def _zarr_python_zip(tmp_path: Path, damaged: bool, consolidated: bool = True) -> Path:
    """An item zarr-python writes itself, with no schema and no ``metadata.json``: group
    ``g`` holding array ``v``, its metadata consolidated (unless not ``consolidated``),
    zipped as a ``.data`` file; ``damaged``, with ``g/v/zarr.json`` giving another shape
    than its consolidated copy."""
    import zarr

    folder = tmp_path / "other.zarr"
    store = zarr.storage.LocalStore(folder)
    group = zarr.open_group(store, mode="w")
    group.create_group("g").create_array("v", shape=(4,), dtype="int64")[:] = np.arange(4)
    if consolidated:
        zarr.consolidate_metadata(store)
    if damaged:
        document = folder / "g" / "v" / "zarr.json"
        doc = json.loads(document.read_text())
        doc["shape"] = [9]
        document.write_text(json.dumps(doc))
    path = tmp_path / "other.zarr.data"
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(folder).as_posix())
    shutil.rmtree(folder)
    return path


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
@pytest.mark.parametrize("damaged", [False, True], ids=["sound", "damaged"])
def test_validate_without_a_schema_checks_the_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, damaged: bool
) -> None:
    """Found by review: the store check needs no schema, but validate refused an item
    storing none (another writer's) with exit 2 before checking anything, so a node
    document disagreeing with its consolidated copy went unreported. Without a schema
    the store is checked (exit 0, or 1 naming the document), and the output says the
    arrays and metadata were not. The file is left as it was."""
    path = _zarr_python_zip(tmp_path, damaged)
    raw = path.read_bytes()
    code, out, err = run(capsys, "validate", path)
    assert (code, err) == (1 if damaged else 0, "")
    assert "no schema" in out and "not checked: arrays, metadata" in out
    code, out, err = run(capsys, "validate", path, "--json")
    assert (code, err) == (1 if damaged else 0, "")
    doc = json.loads(out)
    assert doc["schema"] is None and doc["skipped"] == ["arrays", "metadata"]
    assert doc["skipped_why"] == {"arrays": "no schema", "metadata": "no schema"}
    assert doc["valid"] is not damaged
    if damaged:
        ((problem),) = doc["problems"]
        assert problem["kind"] == "store" and problem["key"] == "g/v/zarr.json"
        assert "disagrees with its copy" in problem["message"]
    else:
        assert doc["problems"] == []
    assert path.read_bytes() == raw


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
def test_validate_without_a_schema_names_only_the_checks_left_out(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Found by review: without a schema, validate said "not checked: arrays, metadata"
    of a dataset too, whose metadata it never checks (the per-item metadata is in its
    tables), and took ``--strict`` without a word, though strict mode only counts what a
    schema declares. A dataset lists only the arrays as left out; ``--strict`` without a
    schema says it counts nothing more; the exit status is the store check's and the
    dataset is left as it was."""
    items = []
    for i in range(2):
        item = _zarr_python_zip(tmp_path, damaged=False)
        items.append(item.rename(tmp_path / f"other_{i}.data"))
    dataset = tmp_path / "other.dataset"
    merge_items([str(p) for p in items], str(dataset))
    raw = dataset.read_bytes()
    code, out, err = run(capsys, "validate", dataset, "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["schema"] is None and doc["skipped"] == ["arrays"]
    code, out, err = run(capsys, "validate", dataset, "--strict")
    assert (code, err) == (0, "")
    assert "not checked: arrays (no schema)" in out and "metadata" not in out
    assert "--strict counts nothing more without a schema" in out
    code, out, err = run(capsys, "validate", items[0], "--strict")
    assert (code, err) == (0, "")
    assert "not checked: arrays, metadata (no schema)" in out
    assert "--strict counts nothing more without a schema" in out
    assert dataset.read_bytes() == raw


def test_validate_says_the_store_check_compared_nothing_without_consolidated_metadata(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Found by review: a store without consolidated metadata (zarr-python writes none
    unless asked) has no copy to check its nodes' documents against, so the store check
    passed comparing nothing, and validate said "only its store was checked ... valid"
    as if it had compared them. The text and --json (``"skipped"`` lists ``"store"``,
    ``"skipped_why"`` says why) say the store check compared nothing for want of
    consolidated metadata, with a schema or without; the exit status is unchanged (0) and
    the file is left as it was."""
    path = _zarr_python_zip(tmp_path, damaged=False, consolidated=False)
    raw = path.read_bytes()
    code, out, err = run(capsys, "validate", path)
    assert (code, err) == (0, "")
    assert "no consolidated metadata: nothing was compared" in out
    assert "only its store was checked" not in out
    assert "not checked: arrays, metadata (no schema); store (no consolidated metadata" in out
    code, out, err = run(capsys, "validate", path, "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["schema"] is None and doc["skipped"] == ["arrays", "metadata", "store"]
    assert doc["skipped_why"]["store"].startswith("no consolidated metadata")
    assert doc["skipped_why"]["arrays"] == "no schema"
    assert doc["valid"] and doc["problems"] == []
    # Given a schema, the arrays are checked and the store check still compared nothing.
    builder = SchemaBuilder("other", "1.0")
    builder.create_group("g", "n").create_array("v", ["n"], "int64")
    schema_file = tmp_path / "schema.json"
    builder.save_to_file(schema_file)
    code, out, err = run(capsys, "validate", path, "--schema", schema_file)
    assert (code, err) == (0, "")
    assert "not checked: store (no consolidated metadata" in out
    code, out, err = run(capsys, "validate", path, "--schema", schema_file, "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["schema"] is not None and doc["skipped"] == ["store"]
    assert doc["arrays_checked"] == doc["arrays_declared"] == 1 and doc["valid"]
    assert path.read_bytes() == raw


def test_the_store_check_lists_no_folder_below_an_array(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, items: list[Path]
) -> None:
    """Found by review: the store check listed every key of the store to find documents
    the consolidated copy leaves out, walking each array's chunk folders, millions of
    keys in a large dataset. An array has no node below it: only the root and the
    groups are listed, the arrays' own documents asked for by name, and a node left out
    of the copy in a group is still found."""
    from cadstore.validation import validate_artefact

    out = tmp_path / "d.dataset"
    merge_items([str(p) for p in items], str(out), directory=True)
    (out / "graph" / "extra").mkdir()
    (out / "graph" / "extra" / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
    )
    listed: list[str] = []
    scandir = os.scandir

    def recording(path: Any = ".") -> Any:
        listed.append(Path(path).relative_to(out).as_posix())
        return scandir(path)

    with open_artefact(str(out)) as target:
        assert target.hierarchy is not None
        groups = set(target.hierarchy.groups)
        arrays = set(target.hierarchy.arrays)
        monkeypatch.setattr(os, "scandir", recording)
        result = validate_artefact(target, target.schema())
        monkeypatch.undo()
    assert [(p.key, p.kind) for p in result.problems] == [("graph/extra/zarr.json", "store")]
    assert arrays and not any(folder.startswith(tuple(arrays)) for folder in listed)
    assert set(listed) == {"."} | (groups - {""}) | {"graph/extra"}
