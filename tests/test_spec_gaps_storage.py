"""Behaviour gaps of issue 17 on the storage, CAD access, encoder and merger side.

Each test is written the way the specified system's users write their task scripts and
notebooks (``from <package>.cadaccess import HOOPSLoader, HOOPSTools``, ``face_attrs,
face_types_dict = brep_encoder.push_face_attributes()``, ``storage.get_file_path("") +
".data"`` ...), with only the package name changed, and failed before its fix.
"""

from __future__ import annotations

import math
import pathlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadstore.schema import SchemaBuilder


# ---------------------------------------------------------------------------- CAD helpers
def _step_file(tmp_path: Path, shape_name: str = "make_bracket") -> str:
    pytest.importorskip("OCP")
    from cadstore.cad import samples

    shape = getattr(samples, shape_name)()
    return str(samples.write_step(shape, tmp_path / f"{shape_name}.step"))


# ---------------------------------------------------------------------------- 1. push_* returns
def test_push_attributes_with_storage_unpack_as_in_users_task_scripts(tmp_path: Path) -> None:
    cad_file = _step_file(tmp_path)
    from cadstore.cadaccess import HOOPSLoader
    from cadstore.cadencoder import BrepEncoder
    from cadstore.storage import OptStorage

    cad_loader = HOOPSLoader()
    cad_model = cad_loader.create_from_file(cad_file)
    storage = OptStorage(str(tmp_path / "encoded" / "item.zarr"))
    brep_encoder = BrepEncoder(cad_model.get_brep(), storage)

    # notebooks/scripts/cad_tasks.py of the specified tutorials, unchanged.
    graph = brep_encoder.push_face_adjacency_graph()
    extended_adj = brep_encoder.push_extended_adjacency()
    face_attrs, face_types_dict = brep_encoder.push_face_attributes()
    edge_attrs, edge_types_dict = brep_encoder.push_edge_attributes()
    curve_grids = brep_encoder.push_curvegrid(ugrid=10)

    brep = cad_model.get_brep()
    # As documented: (keys, descriptions) for the attributes, (key, nodes, edges) for the
    # graph, the key for the others.
    assert face_attrs == ["face_types", "face_areas", "face_centroids", "face_loops"]
    assert face_types_dict[0] == "Plane" and face_types_dict[1] == "Cylinder"
    assert edge_attrs == [
        "edge_types",
        "edge_lengths",
        "edge_dihedral_angles",
        "edge_convexities",
    ]
    assert edge_types_dict[0] == "Line"
    assert graph == ("graph", brep.num_faces, brep.num_coedges)
    assert (extended_adj, curve_grids) == ("extended_adjacency", "edge_u_grids")
    # The stored keys are there, and a second push (already stored) answers the same.
    assert {*face_attrs, *edge_attrs, "graph"} <= set(storage.get_keys())
    assert brep_encoder.push_face_attributes() == (face_attrs, face_types_dict)
    assert brep_encoder.push_face_adjacency_graph() == graph
    storage.close()


# ---------------------------------------------------------------------------- 7. convexity codes
def test_edge_convexity_codes_follow_the_specified_output(tmp_path: Path) -> None:
    cad_file = _step_file(tmp_path)
    from cadstore.cadaccess import HOOPSLoader
    from cadstore.cadencoder import BrepEncoder
    from cadstore.storage import MemoryStorage

    model = HOOPSLoader().create_from_file(cad_file)
    [_, _, dihedrals, convexities], _ = BrepEncoder(model.get_brep()).push_edge_attributes()
    # The specified output: positive dihedral angle -> 1 (convex), negative -> 2 (concave),
    # near zero -> 3. The bracket has convex outer edges and one concave inner corner.
    assert set(convexities.tolist()) == {1, 2}
    assert (dihedrals[convexities == 1] > 0).all()
    assert (dihedrals[convexities == 2] < 0).all()
    np.testing.assert_allclose(dihedrals[convexities == 2], -math.pi / 2, atol=1e-6)

    storage = MemoryStorage()
    BrepEncoder(model.get_brep(), storage).push_edge_attributes()
    arrays = storage.get_schema()["groups"]["edges"]["arrays"]
    assert "1 convex" in arrays["edge_convexities"]["description"]
    assert "2 concave" in arrays["edge_convexities"]["description"]
    assert "positive convex" in arrays["edge_dihedral_angles"]["description"]


def test_convexity_vocabulary_and_synthetic_items_agree_with_the_codes() -> None:
    from cadstore.synthetic import iter_items
    from cadstore.vocabulary import CONVEXITIES

    assert dict(CONVEXITIES) == {1: "convex", 2: "concave", 3: "smooth"}
    _, item, _ = next(iter(iter_items(1, seed=3)))
    codes, angles = item["edge_convexities"], item["edge_dihedral_angles"]
    assert (angles[codes == 1] > 0).all() and (angles[codes == 2] < 0).all()


# ---------------------------------------------------------------------------- 6. user schemas
def _documented_schema() -> dict[str, Any]:
    # The SchemaBuilder documentation's "Complete Workflow Example", verbatim.
    builder = SchemaBuilder(domain="CAD_analysis", version="1.0")
    faces_group = builder.create_group("faces", "face", "Face geometric data")
    faces_group.create_array("face_indices", ["face"], "int32", "Face IDs")
    faces_group.create_array("face_areas", ["face"], "float32", "Face surface areas")
    faces_group.create_array("face_types", ["face"], "int32", "Surface type classification")
    edges_group = builder.create_group("edges", "edge", "Edge geometric data")
    edges_group.create_array("edge_indices", ["edge"], "int32", "Edge IDs")
    edges_group.create_array("edge_lengths", ["edge"], "float32", "Edge lengths")
    edges_group.create_array("edge_types", ["edge"], "int32", "Curve type classification")
    graph_group = builder.create_group("graph", "graphitem", "Topology graph")
    graph_group.create_array("edges_source", ["edge"], "int32", "Source face indices")
    graph_group.create_array("edges_destination", ["edge"], "int32", "Dest face indices")
    graph_group.create_array("num_nodes", ["graphitem"], "int32", "Number of nodes")
    builder.define_file_metadata("size_cadfile", "int64", "CAD file size in bytes")
    return builder.build()


@pytest.mark.parametrize("strict", [False, True])
def test_encoder_accepts_a_user_schema_with_graph_on_its_own_dimension(
    tmp_path: Path, strict: bool
) -> None:
    cad_file = _step_file(tmp_path)
    from cadstore.cadaccess import HOOPSLoader
    from cadstore.cadencoder import BrepEncoder
    from cadstore.schema import Schema
    from cadstore.storage import OptStorage

    items = []
    for index in range(2):
        storage = OptStorage(store_path=str(tmp_path / "encoded" / f"part_{index}.zarr"))
        storage.set_schema(_documented_schema(), strict=strict)
        encoder = BrepEncoder(
            brep_access=HOOPSLoader().create_from_file(cad_file).get_brep(), storage_handler=storage
        )
        encoder.push_face_indices()
        encoder.push_face_attributes()
        encoder.push_edge_indices()
        encoder.push_edge_attributes()
        encoder.push_face_adjacency_graph()
        storage.compress_store()
        storage.close()
        items.append(str(tmp_path / "encoded" / f"part_{index}.zarr.data"))

    reopened = OptStorage(str(tmp_path / "encoded" / "part_0.zarr"))
    carried = Schema.from_any(reopened.get_schema())
    # The user's group keeps its primary dimension; the item validates against its schema.
    assert carried.primary_dimension("graph") == "graphitem"
    assert carried.primary_dimension("faces") == "face"
    for key in reopened.get_keys():
        if key == "graph":
            for name, value in reopened.load_data("graph").items():
                assert carried.validate_array(f"graph/{name}", value) == [], name
        else:
            assert carried.validate_array(key, reopened.load_data(key)) == [], key
    reopened.close()

    from cadstore.storage.datasetstorage import DatasetMerger

    merged = tmp_path / "out.dataset"
    DatasetMerger(zip_files=items, merged_store_path=str(merged)).merge_data()
    from cadstore import DatasetExplorer

    explorer = DatasetExplorer(merged_store_path=str(merged))
    sources = explorer.get_array_data("graph", "edges_source").values
    assert len(sources) == 2 * HOOPSLoader().create_from_file(cad_file).get_brep().num_coedges
    explorer.close()


# ---------------------------------------------------------------------------- 3. get_file_path
def _encode_task(encoded_dir: Path, name: str, n_faces: int) -> str:
    """A transform task body as the specified users write it; returns its file path."""
    from cadstore.storage import OptStorage

    storage = OptStorage(store_path=str(encoded_dir / f"{name}.zarr"))
    storage.save_data("faces/face_areas", np.arange(n_faces, dtype=np.float32) + 1)
    storage.save_metadata("Item", f"/cad/{name}.step")
    storage.compress_store()
    path = storage.get_file_path("")
    storage.close()
    return path


def test_get_file_path_after_compress_is_the_store_path_users_append_data_to(
    tmp_path: Path,
) -> None:
    from cadstore.storage.datasetstorage import DatasetMerger

    encoded = tmp_path / "encoded"
    returned = [_encode_task(encoded, f"part{i}", 3 + i) for i in range(3)]
    assert returned[0] == str(encoded / "part0.zarr")
    # The documented custom-merge task appends the extension itself.
    zip_files = [path + ".data" for path in returned]
    assert all(Path(f).is_file() for f in zip_files)
    merger = DatasetMerger(
        zip_files=zip_files,
        merged_store_path=str(tmp_path / "custom.dataset"),
        delete_source_files=False,
    )
    result = merger.merge_data()
    assert len(result.items) == 3
    # cadstore's own merge takes the returned store paths as they are.
    import cadstore

    assert len(cadstore.merge(returned, str(tmp_path / "direct.dataset")).items) == 3


# ---------------------------------------------------------------------------- 4, 9. merger
def test_merge_data_overwrites_an_existing_output_as_specified(tmp_path: Path) -> None:
    import cadstore
    from cadstore import DatasetExplorer
    from cadstore.errors import MergeError
    from cadstore.storage.datasetstorage import DatasetMerger

    encoded = tmp_path / "encoded"
    files = [_encode_task(encoded, f"part{i}", 2) + ".data" for i in range(3)]
    out = str(tmp_path / "flow.dataset")
    DatasetMerger(zip_files=files[:2], merged_store_path=out).merge_data()
    # Re-running the custom merge task on the same output replaces it.
    DatasetMerger(zip_files=files, merged_store_path=out).merge_data(batch_size=500)
    explorer = DatasetExplorer(merged_store_path=out)
    assert len(explorer.get_array_data("faces", "face_areas").values) == 6
    explorer.close()
    # cadstore's own API keeps its safe default; DatasetMerger can opt into it.
    with pytest.raises(MergeError, match="overwrite"):
        cadstore.merge(files, out)
    with pytest.raises(MergeError):
        DatasetMerger(zip_files=files, merged_store_path=out).merge_data(overwrite=False)


def test_dask_client_params_without_the_extra_fail_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from cadstore.storage.datasetstorage import DatasetMerger

    files = [_encode_task(tmp_path / "encoded", "part0", 2) + ".data"]
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were missing
    with pytest.raises(ImportError, match=r"pip install 'cadstore\[dask\]'") as caught:
        DatasetMerger(
            zip_files=files,
            merged_store_path=str(tmp_path / "m.dataset"),
            delete_source_files=False,
            dask_client_params={"n_workers": 16, "threads_per_worker": 2},
        )
    assert "dask_client_params" in str(caught.value)
    DatasetMerger(files, str(tmp_path / "m.dataset"), dask_client_params={"disable": True})


# ---------------------------------------------------------------------------- 8. MsgPack strings
def _zarr2_string_item(path: Path, strings: dict[str, tuple[list[int], str]]) -> None:
    """Write a Zarr v2 ``.data`` zip as zarr-python 2 does for ``a[0] = text`` strings.

    ``strings`` maps key -> (shape, text); shape ``[1]`` is what zarr-python 2 writes for
    ``create_dataset(key, shape=(1,), dtype=object, object_codec=MsgPack())``, ``[]`` the
    0-d layout. The MsgPack chunk is numcodecs' encoding: items, then dtype and shape.
    """
    import json
    import zipfile

    msgpack = pytest.importorskip("msgpack")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(".zgroup", json.dumps({"zarr_format": 2}))
        archive.writestr("metadata.json", json.dumps({"Item": "/cad/part.step"}))
        for key, (shape, text) in strings.items():
            meta = {
                "zarr_format": 2,
                "shape": shape,
                "chunks": shape,
                "dtype": "|O",
                "compressor": None,
                "fill_value": 0,
                "order": "C",
                "filters": [{"id": "msgpack2", "raw": False, "use_bin_type": True}],
            }
            archive.writestr(f"{key}/.zarray", json.dumps(meta, indent=4))
            archive.writestr(
                f"{key}/.zattrs", json.dumps({"_ARRAY_DIMENSIONS": ["d"] * len(shape)})
            )
            # Chunk "0" in both layouts (a 0-d array has one chunk, also named "0").
            archive.writestr(f"{key}/0", msgpack.packb([text, "|O", shape], use_bin_type=True))


def test_zarr2_msgpack_strings_from_another_writer_load_as_str(tmp_path: Path) -> None:
    from cadstore.storage import OptStorage

    text = "High-complexity CAD part, Ø12, 試作"
    _zarr2_string_item(
        tmp_path / "part_001.zarr.data",
        {"description": ([1], text), "material": ([], "steel")},
    )
    storage = OptStorage(str(tmp_path / "part_001.zarr"))
    # The specified "Load strings" example: returns the str that was saved.
    description = storage.load_data("description")
    assert description == text and isinstance(description, str)
    assert storage.load_data("material") == "steel"
    storage.close()
    # cadstore's own files keep what was saved: a one-element numpy string array stays one.
    own = OptStorage(tmp_path / "own.zarr", zarr_format=2)
    own.save_data("tags", np.array(["one"]))
    own.save_data("text", "plain")
    own.compress_store()
    own.close()
    reread = OptStorage(tmp_path / "own.zarr")
    assert reread.load_data("tags").tolist() == ["one"]
    assert reread.load_data("text") == "plain"
    reread.close()


# ---------------------------------------------------------------------------- 5. module paths
def test_specified_module_paths_import_and_stay_light(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cadstore.storage.datasetstorage import DatasetMerger, DatasetInfo\n"
        "from cadstore.storage.datasetstorage.schema_templates import SchemaTemplates\n"
        "from cadstore.storage.datastorage.data_storage_handler_base import DataStorage\n"
        "from cadstore.storage.datastorage.zarr_storage_handler import OptStorage\n"
        "from cadstore.storage.helpers import generate_unique_id_from_path\n"
        "from cadstore.storage.label_storage import LabelStorage\n"
        "from cadstore.storage import DatasetMerger as M, DatasetInfo as I, convert_storage\n"
        "from cadstore.storage.datasetstorage.schema_builder import create_cad_schema\n"
        "from cadstore.dataset.dataset_loader import CADDataset\n"
        "from cadstore import set_license\n"
        "import cadstore, cadstore.merging\n"
        "assert DatasetMerger is cadstore.DatasetMerger and DatasetInfo is cadstore.DatasetInfo\n"
        "assert M is DatasetMerger and I is DatasetInfo and CADDataset is cadstore.CADDataset\n"
        "assert 'faces' in create_cad_schema().build()['groups']\n"
        "assert 'cad_basic' in SchemaTemplates.list_templates()\n"
        "assert OptStorage is cadstore.OptStorage and issubclass(OptStorage, DataStorage)\n"
        "heavy = sorted(m for m in ('OCP', 'torch') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_generate_unique_id_from_path_names_items_as_cadstore_encode_does(tmp_path: Path) -> None:
    from cadstore.encode.naming import item_name
    from cadstore.storage.helpers import generate_unique_id_from_path

    cad_file = tmp_path / "parts" / "pn_verschr_r1.prt.step"
    # The specified task scripts: hash of the path without its suffix, then "_<body>".
    item_no_suffix = pathlib.Path(cad_file).with_suffix("")
    hash_id = generate_unique_id_from_path(str(item_no_suffix))
    assert f"{hash_id}_0" == item_name(cad_file, 0)
    assert len(hash_id) == 32 and int(hash_id, 16) >= 0


def test_label_storage_round_trips_each_kind_of_label(tmp_path: Path) -> None:
    from cadstore.errors import InvalidDataError, KeyNotFoundError
    from cadstore.storage.label_storage import LabelStorage

    labels = LabelStorage(str(tmp_path / "labels" / "part.json"), total_faces=3, total_edges=4)
    labels.save_graph_label("part_class", 7, "bracket")
    labels.save_graph_node_label("segmentation", [0, 2, 2], ["stock", "hole", "hole"])
    labels.save_graph_edge_label("edges", [1, 1, 0, 0], ["sharp", "sharp", "soft", "soft"])
    labels.save_sparse_graph_edge_label("sparse", [3], [5], ["weld"])
    again = LabelStorage(str(tmp_path / "labels" / "part.json"))
    assert again.load_graph_label("part_class") == (7, "bracket")
    assert again.load_graph_nodes_labels("segmentation") == ([0, 2, 2], ["stock", "hole", "hole"])
    assert again.load_graph_edges_labels("edges")[0] == [1, 1, 0, 0]
    assert again.load_sparse_graph_edge_label("sparse") == ([3], [5], ["weld"])
    assert again.load_cadentity("part_class") == LabelStorage.GRAPH_CADENTITY
    assert again.load_cadentity("segmentation") == LabelStorage.FACE_CADENTITY
    with pytest.raises(InvalidDataError, match="'segmentation'"):
        labels.save_graph_node_label("segmentation", [0, 1], ["a", "b"])  # 2 labels, 3 faces
    assert again.load_graph_nodes_labels("segmentation")[0] == [0, 2, 2]  # nothing lost
    with pytest.raises(KeyNotFoundError, match="'missing'"):
        again.load_graph_label("missing")
    # The constant is a storage key as the specified task scripts use it.
    from cadstore.storage import MemoryStorage

    storage = MemoryStorage()
    storage.save_data(LabelStorage.GRAPH_CADENTITY, np.array([7]))
    assert storage.load_data(LabelStorage.GRAPH_CADENTITY).tolist() == [7]


# ---------------------------------------------------------------------------- 2. cadaccess
def test_hoops_loader_model_and_tools_as_in_the_access_notebook(tmp_path: Path) -> None:
    cad_file = _step_file(tmp_path, "make_cylinder")
    from cadstore.cadaccess import HOOPSLoader, HOOPSModel, HOOPSTools
    from cadstore.cadaccess.cad_loader import CADLoader
    from cadstore.cadencoder.brep_encoder import BrepEncoder
    from cadstore.errors import InvalidDataError, UnavailableFeatureError

    loader = HOOPSLoader()
    assert isinstance(loader, CADLoader)
    general_options = loader.get_general_options()
    assert general_options == {}
    general_options["read_feature"] = True
    general_options["read_solid"] = True
    loader.set_general_options(general_options)
    assert loader.get_general_options() == {"read_feature": True, "read_solid": True}
    with pytest.raises(InvalidDataError, match="'read_meshes'"):
        loader.set_general_options({"read_meshes": True})

    model = loader.create_from_file(cad_file)
    assert isinstance(model, HOOPSModel)
    assert model.get_body_count() == 1
    assert model.get_filesource() == cad_file

    hoopstools = HOOPSTools()
    faces = model.get_brep().num_faces
    hoopstools.adapt_brep(model, None)  # defaults: the B-rep as read
    assert model.get_brep().num_faces == faces
    options = hoopstools.brep_options()
    options["split_closed_faces"] = True
    hoopstools.adapt_brep(model, options)
    assert model.get_brep().num_faces == faces + 1  # the side split at its seam
    with pytest.raises(InvalidDataError, match="'tolerance'"):
        hoopstools.adapt_brep(model, {"tolerance": 0.1})
    BrepEncoder(model.get_brep()).push_face_attributes()

    exported = hoopstools.exportSTEP(model, str(tmp_path / "adapted.step"))
    assert HOOPSLoader().create_from_file(exported).get_brep().num_faces == faces + 1
    with pytest.raises(UnavailableFeatureError, match="StreamCache"):
        hoopstools.exportStreamCache(model, str(tmp_path / "x"), is_white_background=True)
    with pytest.raises(UnavailableFeatureError, match="feature tree"):
        hoopstools.extract_holes(model)


def test_a_malformed_label_file_is_a_corrupt_store_error_naming_it(tmp_path: Path) -> None:
    """A label file written by hand or another tool raised raw KeyError ('codes'),
    IndexError, ValueError or TypeError; a missing task's KeyNotFoundError read 'key "no
    part_label labels..." does not exist'. Each names the file and the task now."""
    import json

    from cadstore.errors import CorruptStoreError, KeyNotFoundError
    from cadstore.storage.label_storage import LabelStorage

    path = tmp_path / "labels.json"
    bad = {
        "no codes": ({"entity": "part_label"}, "'codes' is not a list of integers"),
        "no label": ({"entity": "part_label", "codes": [], "texts": []}, "one code and one"),
        "text code": ({"entity": "part_label", "codes": ["x"], "texts": ["a"]}, "integers"),
        "bool code": ({"entity": "part_label", "codes": [True], "texts": ["a"]}, "integers"),
        "not lists": ({"entity": "face_labels", "codes": 5, "texts": "ab"}, "integers"),
        "fewer texts": ({"entity": "face_labels", "codes": [1, 2], "texts": ["a"]}, "2 code"),
        "sparse": (
            {"entity": "sparse_edge_labels", "indices": [0], "codes": [1, 2]},
            "1 edge indices for 2 codes",
        ),
    }
    for name, (entry, problem) in bad.items():
        path.write_text(json.dumps({"seg": entry}))
        labels = LabelStorage(str(path))
        load = {
            "part_label": labels.load_graph_label,
            "face_labels": labels.load_graph_nodes_labels,
            "sparse_edge_labels": labels.load_sparse_graph_edge_label,
        }[entry["entity"]]
        with pytest.raises(CorruptStoreError, match=problem) as refused:
            load("seg")
        assert str(path) in str(refused.value) and "'seg'" in str(refused.value), name
    with pytest.raises(KeyNotFoundError) as missing:
        LabelStorage(str(tmp_path / "none.json")).load_graph_label("seg")
    assert str(missing.value).startswith("no part_label labels for task 'seg'")
    path.write_text(json.dumps({"seg": {"entity": "part_label", "codes": [3], "texts": ["a"]}}))
    assert LabelStorage(str(path)).load_graph_label("seg") == (3, "a")


def test_convert_storage_copies_between_any_two_storages(tmp_path: Path) -> None:
    """The specified ``convert_storage(source_handler, dest_handler)``: an item through
    every backend and back keeps its data, schema and metadata."""
    from cadstore.storage import JsonStorageHandler, MemoryStorage, OptStorage, convert_storage

    schema = SchemaBuilder(domain="CAD_analysis")
    schema.create_group("faces", "face", "Face data").create_array(
        "face_areas", ["face"], "float32"
    )
    schema.define_file_metadata("size_cadfile", "int64", "File size")
    source = MemoryStorage()
    source.set_schema(schema.build())
    source.save_data("face_areas", np.array([1.5, 2.5], dtype=np.float32))
    source.save_data("graph", {"edges_source": np.array([0, 1]), "num_nodes": 2})
    source.save_metadata("size_cadfile", 1024)
    source.save_metadata("processing/duration", 1.5)

    item = OptStorage(tmp_path / "item.zarr")
    convert_storage(source, item)
    item.compress_store()
    item.close()
    json_store = JsonStorageHandler(tmp_path / "json")
    with OptStorage(tmp_path / "item.zarr") as published:
        convert_storage(published, json_store)
    back = MemoryStorage()
    convert_storage(json_store, back)
    for copy in (json_store, back):
        assert sorted(copy.get_keys()) == ["face_areas", "graph"]
        np.testing.assert_array_equal(copy.load_data("face_areas"), [1.5, 2.5])
        assert copy.load_data("face_areas").dtype == np.float32
        assert copy.load_data("graph")["num_nodes"] == 2
        assert copy.get_schema() == source.get_schema()
        assert copy.load_metadata("size_cadfile") == 1024
        assert copy.load_metadata("processing") == {"duration": 1.5}
        assert copy.get_metadata_routing("size_cadfile") == "file_level"


def test_set_license_is_accepted_and_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import cadstore

    with caplog.at_level(logging.INFO, logger="cadstore"):
        assert cadstore.set_license("KEY", validate=True) is None
        cadstore.set_license("KEY", validate=False, silent=True)
    assert [r.getMessage() for r in caplog.records] == [
        "cadstore needs no license; set_license does nothing"
    ]


@pytest.mark.parametrize("backend", ["memory", "opt", "json"])
def test_metric_storage_keeps_a_training_runs_metrics(tmp_path: Path, backend: str) -> None:
    """The specified ``MetricStorage(store)`` (``<package>.storage.MetricStorage``) was
    missing: trend, category and matrix metrics per epoch, and per-item predictions."""
    from cadstore.storage import JsonStorageHandler, MemoryStorage, MetricStorage, OptStorage

    make = {
        "memory": MemoryStorage,
        "opt": lambda: OptStorage(tmp_path / "run.zarr"),
        "json": lambda: JsonStorageHandler(tmp_path / "run"),
    }[backend]
    store = make()
    metrics = MetricStorage(store)
    assert metrics.get_storage() is store
    for epoch, loss in ((1, 0.5), (0, 0.9), (1, 0.4)):  # a repeated epoch replaces
        metrics.push_trend_metric("train_loss", epoch, loss)
    metrics.push_category_metric("per_class_accuracy", 0, [0, 1, 2], [0.5, 0.75, 1.0])
    confusion = np.array([[5, 1], [2, 7]], dtype=np.int64)
    metrics.push_matrix_metric("confusion_matrix", 3, confusion)
    metrics.push_data("face_predictions", 12, np.array([0, 2, 1], dtype=np.int32))
    metrics.push_data("face_predictions", 4, np.array([1], dtype=np.int32))
    if backend == "opt":
        store.compress_store()
        store.close()
        store = OptStorage(tmp_path / "run.zarr")
        metrics = MetricStorage(store)
    assert metrics.pull_trend_metric("train_loss") == ([0, 1], [0.9, 0.4])
    assert metrics.pull_category_metric("per_class_accuracy", 0) == ([0, 1, 2], [0.5, 0.75, 1.0])
    np.testing.assert_array_equal(metrics.pull_matrix_metric("confusion_matrix", 3), confusion)
    assert metrics.list_data_ids("face_predictions") == [4, 12]
    assert metrics.list_data_ids("absent") == []
    np.testing.assert_array_equal(metrics.pull_data("face_predictions", 12), [0, 2, 1])
    with pytest.raises(ValueError, match="no epoch 2 of metric 'per_class_accuracy'"):
        metrics.pull_category_metric("per_class_accuracy", 2)
    with pytest.raises(ValueError, match="no epoch 0 of metric 'confusion_matrix'"):
        metrics.pull_matrix_metric("confusion_matrix", 0)
    with pytest.raises(ValueError, match="no trend metric 'val_loss'"):
        metrics.pull_trend_metric("val_loss")
    with pytest.raises(ValueError, match="no data 5 under 'face_predictions'"):
        metrics.pull_data("face_predictions", 5)
    store.close()


def test_metric_storage_refuses_what_it_cannot_keep() -> None:
    from cadstore.storage import MemoryStorage, MetricStorage

    store = MemoryStorage()
    metrics = MetricStorage(store)
    with pytest.raises(ValueError, match="3 categories for 2 values"):
        metrics.push_category_metric("iou", 0, [0, 1, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"expected a 2-D array, got \(3,\)"):
        metrics.push_matrix_metric("confusion_matrix", 0, [1, 2, 3])
    with pytest.raises(ValueError, match="epoch must be a non-negative 64-bit integer, got -1"):
        metrics.push_trend_metric("loss", -1, 0.1)
    with pytest.raises(ValueError, match=r"got 1180591620717411303424"):
        metrics.push_trend_metric("loss", 2**70, 0.1)
    with pytest.raises(ValueError, match=r"categories must be integers .*'car'"):
        metrics.push_category_metric("iou", 0, ["car", "truck"], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"flat lists, got shapes \(1, 2\)"):
        metrics.push_category_metric("iou", 0, [[0, 1]], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="without '/'"):
        metrics.push_trend_metric("a/b", 0, 0.1)
    assert store.get_keys() == []


def test_metric_storage_nan_on_an_item_file_as_documented(tmp_path: Path) -> None:
    """A NaN loss: an OptStorage refuses NaN as specified (naming the key), and keeps it
    with allow_nan=True, as MetricStorage's documentation says."""
    from cadstore.errors import InvalidDataError
    from cadstore.storage import MetricStorage, OptStorage

    with (
        OptStorage(tmp_path / "strict.zarr") as strict,
        pytest.raises(InvalidDataError, match="trend/loss"),
    ):
        MetricStorage(strict).push_trend_metric("loss", 0, float("nan"))
    with OptStorage(tmp_path / "run.zarr", allow_nan=True) as run:
        metrics = MetricStorage(run)
        metrics.push_trend_metric("loss", 0, float("nan"))
        epochs, values = metrics.pull_trend_metric("loss")
        assert epochs == [0] and np.isnan(values[0])
