"""Behaviour gaps of issue 17 on the storage, CAD access, encoder and merger side.

Each test is written the way the specified system's users write their task scripts and
notebooks (``from <package>.cadaccess import HOOPSLoader, HOOPSTools``, ``face_attrs,
face_types_dict = brep_encoder.push_face_attributes()``, ``storage.get_file_path("") +
".data"`` ...), with only the package name changed, and failed before its fix.
"""

from __future__ import annotations

import math
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
