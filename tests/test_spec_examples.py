"""The specification's examples, as written, with only the package name changed.

``hoops_ai`` becomes ``cadstore``; everything else is copied from the specified
"Data Storage" page, including its imports. Files are written under a temporary
working directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_datastorage_import() -> None:
    from cadstore.storage.datastorage import DataStorage

    # The specified core abstract methods, and nothing a user's storage cannot know of.
    assert DataStorage.__abstractmethods__ == {
        "save_data",
        "load_data",
        "save_metadata",
        "load_metadata",
        "get_keys",
        "get_file_path",
        "close",
        "format",
    }


def _user_storage_class() -> type:
    from cadstore.storage.datastorage import DataStorage

    class UserStorage(DataStorage):
        def __init__(self) -> None:
            self.data: dict[str, object] = {}
            self.meta: dict[str, object] = {}
            self.closed_calls = 0

        def save_data(self, data_key: str, data: object) -> None:
            self.data[data_key] = data

        def load_data(self, data_key: str) -> object:
            return self.data[data_key]

        def save_metadata(self, key: str, value: object) -> None:
            self.meta[key] = value

        def load_metadata(self, key: str) -> object:
            return self.meta[key]

        def get_keys(self) -> list[str]:
            return list(self.data)

        def get_file_path(self, data_key: str) -> str:
            return f"In-memory storage: No file path for key '{data_key}'"

        def close(self) -> None:
            self.closed_calls += 1

        def format(self) -> str:
            return "user"

    return UserStorage


def test_a_users_own_storage_implements_the_specified_methods_only() -> None:
    """A subclass implementing the specified abstract methods could not be made: the
    abstract methods were cadstore's private primitives (``_get_node``, ...)."""
    from cadstore.storage.datasetstorage import SchemaBuilder

    storage = _user_storage_class()()
    assert storage.compress_store() == 0
    assert storage.get_schema() == {}
    assert storage.get_group_for_array("face_areas") is None
    assert storage.validate_data_against_schema("face_areas", np.zeros((2, 2)))

    builder = SchemaBuilder(domain="CAD_analysis")
    builder.create_group("faces", "face", "Face data").create_array(
        "face_areas", ["face"], "float32"
    )
    storage.set_schema(builder.build())
    # As specified, the default set_schema keeps the schema in the storage's metadata.
    assert storage.meta["_storage_schema"] == builder.build()
    assert storage.get_schema() == builder.build()
    assert storage.get_group_for_array("face_areas") == "faces"
    assert storage.validate_data_against_schema("face_areas", np.ones(3, dtype=np.float32))
    assert not storage.validate_data_against_schema("face_areas", np.ones((3, 2)))
    with storage as same:
        same.save_data("face_areas", np.ones(3, dtype=np.float32))
    assert storage.closed_calls == 1
    assert storage.get_keys() == ["face_areas"]


def test_the_encoder_writes_into_a_users_own_storage(tmp_path: Path) -> None:
    pytest.importorskip("OCP")
    from cadstore.cad.samples import make_box
    from cadstore.cadencoder import BrepEncoder
    from cadstore.storage import MemoryStorage

    storage = _user_storage_class()()
    encoder = BrepEncoder(make_box(), storage)
    assert encoder.push_face_indices() == "face_indices"
    encoder.push_face_adjacency_graph()
    assert storage.get_group_for_array("face_indices") == "faces"
    reference = MemoryStorage()
    theirs = BrepEncoder(make_box(), reference)
    theirs.push_face_indices()
    theirs.push_face_adjacency_graph()
    assert sorted(storage.get_keys()) == sorted(reference.get_keys())
    for key in reference.get_keys():
        expected, got = reference.load_data(key), storage.load_data(key)
        if isinstance(expected, dict):
            assert got.keys() == expected.keys()
            for k in expected:
                np.testing.assert_array_equal(got[k], expected[k])
        else:
            np.testing.assert_array_equal(got, expected)


def test_set_schema_example() -> None:
    from cadstore.storage.datasetstorage import SchemaBuilder
    from cadstore.storage.datastorage import MemoryStorage

    storage = MemoryStorage()
    builder = SchemaBuilder(domain="CAD_analysis")
    faces_group = builder.create_group("faces", "face", "Face data")
    faces_group.create_array("face_areas", ["face"], "float32")
    schema = builder.build()

    storage.set_schema(schema)  # Schema dictionary applied here
    assert storage.get_group_for_array("face_areas") == "faces"


def test_memory_storage_examples() -> None:
    from cadstore.storage.datastorage import MemoryStorage

    storage = MemoryStorage()

    # Save data (stored in internal dict)
    storage.save_data("face_areas", np.array([1.5, 2.3, 4.1]))

    # Load data (retrieved from dict)
    face_areas = storage.load_data("face_areas")

    # Metadata (separate internal dict)
    storage.save_metadata("size_cadfile", 1024000)
    size = storage.load_metadata("size_cadfile")

    # Get keys
    keys = storage.get_keys()  # ['face_areas']

    # Close (clears all data)
    storage.close()
    assert keys == ["face_areas"] and size == 1024000 and len(face_areas) == 3

    def test_encoder() -> None:
        # Use MemoryStorage for fast testing
        storage = MemoryStorage()

        # Mock encoder operations
        storage.save_data("face_indices", np.array([0, 1, 2, 3]))
        storage.save_data("face_areas", np.array([1.5, 2.3, 4.1, 3.7]))
        storage.save_metadata("num_faces", 4)

        # Assertions
        assert len(storage.load_data("face_indices")) == 4
        assert storage.load_metadata("num_faces") == 4

        # Fast cleanup (no disk operations)
        storage.close()

    test_encoder()


def test_json_storage_examples() -> None:
    from cadstore.storage.datastorage import JsonStorageHandler

    storage = JsonStorageHandler(json_dir_path="./json_output")
    del storage

    storage = JsonStorageHandler("./json_data")

    # NumPy arrays → JSON lists
    storage.save_data("face_areas", np.array([1.5, 2.3, 4.1], dtype=np.float32))
    # Complex numbers → JSON objects
    storage.save_data("complex_data", np.array([1 + 2j, 3 + 4j]))
    # Dictionaries → JSON objects
    storage.save_data("metadata", {"version": "1.0", "author": "HOOPS AI"})
    # Load (automatic deserialization)
    face_areas = storage.load_data("face_areas")
    # Returns: numpy array([1.5, 2.3, 4.1], dtype=float32)
    assert face_areas.dtype == np.float32
    np.testing.assert_array_equal(face_areas, np.array([1.5, 2.3, 4.1], dtype=np.float32))

    # Store as human-readable JSON for external tools
    storage = JsonStorageHandler("./json_export")
    storage.save_data("face_areas", np.array([1.5, 2.3, 4.1], dtype=np.float32))
    storage.save_data(
        "metadata",
        {
            "part_name": "Bracket_V2",
            "complexity": "Medium",
            "num_features": 42,
        },
    )
    storage.save_metadata("export_timestamp", "2025-10-30T10:30:00")
    assert Path("json_export/face_areas.json").exists()
    assert storage.load_data("metadata")["part_name"] == "Bracket_V2"
    assert storage.load_metadata("export_timestamp") == "2025-10-30T10:30:00"


def test_schema_setting_and_validation_examples() -> None:
    from cadstore.storage import OptStorage
    from cadstore.storage.datasetstorage import SchemaBuilder

    # Build schema
    builder = SchemaBuilder(domain="CAD_analysis", version="1.0")
    faces_group = builder.create_group("faces", "face", "Face data")
    faces_group.create_array("face_areas", ["face"], "float32")
    faces_group.create_array("face_normals", ["face", "coordinate"], "float32")

    edges_group = builder.create_group("edges", "edge", "Edge data")
    edges_group.create_array("edge_lengths", ["edge"], "float32")

    schema = builder.build()

    # Apply to storage
    storage = OptStorage(store_path="./data.zarr")
    storage.set_schema(schema)

    # Valid data
    valid_data = np.array([1.5, 2.3, 4.1], dtype=np.float32)
    is_valid = storage.validate_data_against_schema("face_areas", valid_data)
    assert is_valid is True

    # Invalid: wrong dimensions (2D instead of 1D)
    invalid_data = np.array([[1.5, 2.3], [4.1, 3.2]])
    is_valid = storage.validate_data_against_schema("face_areas", invalid_data)
    assert is_valid is False

    # Invalid: wrong dtype (int instead of float)
    invalid_data = np.array([1, 2, 3], dtype=np.int32)
    is_valid = storage.validate_data_against_schema("face_areas", invalid_data)
    assert is_valid is False

    assert storage.get_group_for_array("face_areas") == "faces"
    assert storage.get_group_for_array("edge_lengths") == "edges"
    assert storage.get_group_for_array("unknown_array") is None
    storage.close()


def test_schema_validation_in_practice(capsys: pytest.CaptureFixture[str]) -> None:
    from cadstore.storage import OptStorage
    from cadstore.storage.datasetstorage import SchemaBuilder

    # Build strict schema
    builder = SchemaBuilder(domain="production_data")
    group = builder.create_group("measurements", "sample")
    group.create_array("temperature", ["sample"], "float32")
    group.create_array("pressure", ["sample"], "float32")

    schema = builder.build()

    storage = OptStorage("./validated_data.zarr")
    storage.set_schema(schema)

    # Valid data passes
    valid_temps = np.array([20.5, 25.3, 22.1], dtype=np.float32)
    if storage.validate_data_against_schema("temperature", valid_temps):
        storage.save_data("temperature", valid_temps)
        print("✓ Data validated and saved")

    # Invalid data is caught
    invalid_temps = np.array([[20.5, 25.3], [22.1, 23.4]])  # Wrong dimensions
    if not storage.validate_data_against_schema("temperature", invalid_temps):
        print("✗ Validation failed: wrong dimensions")
        # Handle error appropriately
    storage.close()
    out = capsys.readouterr().out
    assert "✓ Data validated and saved" in out and "✗ Validation failed" in out


def test_metadata_examples() -> None:
    from cadstore.storage.datastorage import MemoryStorage

    storage = MemoryStorage()
    builder_rules = __import__("cadstore.storage.datasetstorage", fromlist=["SchemaBuilder"])
    builder = builder_rules.SchemaBuilder(domain="CAD_analysis", version="1.0")
    builder.set_metadata_routing_rules(
        file_level_patterns=["size_*", "duration_*", "processing_*", "flow_name"],
        categorical_patterns=["*_label", "category", "type"],
        default_numeric="file_level",
        default_categorical="categorical",
    )
    storage.set_schema(builder.build())

    # Top-level metadata
    storage.save_metadata("size_cadfile", 1024000)

    # Nested metadata
    storage.save_metadata("file_sizes_KB/face_areas", 45.2)
    storage.save_metadata("file_sizes_KB/edge_lengths", 12.3)
    storage.save_metadata("processing/duration", 12.5)
    storage.save_metadata("processing/timestamp", "2025-10-30T10:30:00")

    # Load nested metadata
    face_size = storage.load_metadata("file_sizes_KB/face_areas")
    # Returns: 45.2
    duration = storage.load_metadata("processing/duration")
    # Returns: 12.5
    # Load entire nested section
    file_sizes = storage.load_metadata("file_sizes_KB")
    # Returns: {'face_areas': 45.2, 'edge_lengths': 12.3}
    assert face_size == 45.2 and duration == 12.5
    assert file_sizes == {"face_areas": 45.2, "edge_lengths": 12.3}
    assert storage.get_metadata_routing("size_cadfile") == "file_level"

    storage.save_data("face_areas", np.ones(1000))
    # Automatically stores size in metadata["file_sizes_KB"]["face_areas"]
    size_kb = storage.load_metadata("file_sizes_KB/face_areas")
    assert size_kb > 7


def test_error_handling_examples(capsys: pytest.CaptureFixture[str]) -> None:
    from cadstore.storage import OptStorage

    face_areas = np.ones(3)
    # Recommended: Explicit close
    storage = OptStorage("output.zarr")
    try:
        storage.save_data("face_areas", face_areas)
        storage.save_metadata("processing_time", 12.5)
    finally:
        storage.close()

    storage = OptStorage("output2.zarr")
    # Check before loading
    if "face_areas" in storage.get_keys():
        face_areas = storage.load_data("face_areas")
    else:
        print("Warning: face_areas not found")

    # Or use try/except
    try:
        face_areas = storage.load_data("face_areas")
    except KeyError:
        print("face_areas not present in storage")
    storage.close()
    out = capsys.readouterr().out
    assert "Warning: face_areas not found" in out and "not present" in out


def test_batch_and_compression_examples(capsys: pytest.CaptureFixture[str]) -> None:
    from cadstore.storage import OptStorage

    encoded_data = {"face_areas": np.ones(3), "edge_lengths": np.arange(5.0)}
    # Good: Batch save operations
    storage = OptStorage("output.zarr")

    for key, data in encoded_data.items():
        storage.save_data(key, data)

    # Single compress at the end
    storage.compress_store()
    storage.close()

    storage = OptStorage("output3.zarr", compress_extension=".data")

    # After saving all data
    storage.save_data("face_areas", np.ones(10))
    compressed_size = storage.compress_store()
    print(f"Compressed to {compressed_size / (1024**2):.2f} MB")
    storage.close()
    assert "Compressed to" in capsys.readouterr().out
    assert Path("output3.zarr.data").exists()


@pytest.fixture
def part_step(tmp_path: Path) -> str:
    pytest.importorskip("OCP")
    from cadstore.cad.samples import make_bracket, write_step

    write_step(make_bracket(), tmp_path / "part.step")
    write_step(make_bracket(), tmp_path / "part_001.step")
    return "part.step"


def test_basic_usage_example(part_step: str) -> None:
    from cadstore.cadaccess import HOOPSLoader
    from cadstore.cadencoder import BrepEncoder
    from cadstore.storage import MemoryStorage

    # Load CAD file
    loader = HOOPSLoader()
    model = loader.create_from_file("part.step")
    brep = model.get_brep()

    # Create storage handler
    storage = MemoryStorage()  # In-memory for testing

    # Create encoder and extract features
    encoder = BrepEncoder(brep, storage)
    encoder.push_face_attributes()
    encoder.push_edge_attributes()

    # Access stored data
    face_areas = storage.load_data("face_areas")
    print(f"Stored keys: {storage.get_keys()}")
    assert (face_areas > 0).all()

    from cadstore.storage import OptStorage

    storage = OptStorage("output/part001.zarr")
    encoder = BrepEncoder(brep, storage)
    encoder.push_face_indices()
    storage.close()


def test_cad_encoding_workflow_example(part_step: str) -> None:
    import os
    import time

    from cadstore.cadaccess import HOOPSLoader
    from cadstore.cadencoder import BrepEncoder
    from cadstore.storage import OptStorage
    from cadstore.storage.datasetstorage import SchemaBuilder

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
        file_level_patterns=["size_*", "processing_*"],
        categorical_patterns=["*_label"],
    )

    schema = builder.build()

    # 2. Initialize storage with schema
    storage = OptStorage(store_path="./encoded/part_001.zarr")
    storage.set_schema(schema)

    # 3. Encode CAD file
    loader = HOOPSLoader()
    model = loader.create_from_file("part_001.step")
    brep = model.get_brep()

    encoder = BrepEncoder(brep_access=brep, storage_handler=storage)

    start_time = time.time()

    # Push geometric features (validated by schema)
    encoder.push_face_indices()
    encoder.push_face_attributes()
    encoder.push_edge_indices()
    encoder.push_edge_attributes()

    processing_time = time.time() - start_time

    # 4. Save metadata (automatically routed)
    storage.save_metadata("size_cadfile", os.path.getsize("part_001.step"))  # → .infoset
    storage.save_metadata("processing_time", processing_time)  # → .infoset
    storage.save_metadata("file_label", 2)  # → .attribset

    # 5. Compress and close
    compressed_size = storage.compress_store()
    print(f"Compressed to {compressed_size / 1024:.2f} KB")
    storage.close()

    assert os.path.exists("encoded/part_001.zarr.data")
    with OptStorage("./encoded/part_001.zarr") as again:
        assert again.get_metadata_routing("file_label") == "categorical"
        assert again.get_metadata_routing("size_cadfile") == "file_level"
        assert len(again.load_data("face_areas")) == len(again.load_data("face_indices"))
