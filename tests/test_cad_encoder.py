"""BrepEncoder API: keys, shapes, dtypes, schema registration, storage round trips, and the
spec's "Basic Usage" and "CAD Encoding Workflow" examples with the open loader and encoder.
"""

from __future__ import annotations

import doctest
import importlib
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("OCP")

from cadstore import MemoryStorage, OptStorage, SchemaBuilder
from cadstore.cad import OCP_VERSION, BrepAccess, BrepEncoder, CADLoader, samples

# (method, kwargs) -> {key: (shape with F faces / E co-edges, dtype)}
TABLE: list[tuple[str, dict[str, Any], dict[str, tuple[tuple[Any, ...], str]]]] = [
    ("push_face_indices", {}, {"face_indices": (("F",), "int32")}),
    (
        "push_face_attributes",
        {},
        {
            "face_types": (("F",), "int32"),
            "face_areas": (("F",), "float32"),
            "face_centroids": (("F", 3), "float32"),
            "face_loops": (("F",), "int32"),
        },
    ),
    (
        "push_face_discretization",
        {"pointsamples": 25},
        {"face_discretization": (("F", 25, 7), "float32")},
    ),
    ("push_face_neighbors_count", {}, {"face_neighborscount": (("F",), "int32")}),
    ("push_edge_indices", {}, {"edge_indices": (("E",), "int32")}),
    (
        "push_edge_attributes",
        {},
        {
            "edge_types": (("E",), "int32"),
            "edge_lengths": (("E",), "float32"),
            "edge_dihedral_angles": (("E",), "float32"),
            "edge_convexities": (("E",), "int32"),
        },
    ),
    ("push_curvegrid", {"ugrid": 5}, {"edge_u_grids": (("E", 5, 6), "float32")}),
    ("push_extended_adjacency", {}, {"extended_adjacency": (("F", "F"), "float32")}),
    (
        "push_face_pair_edges_path",
        {"max_allow_edge_length": 16},
        {"face_pair_edges_path": (("F", "F", 16), "int32")},
    ),
    (
        "push_average_face_pair_distance_histograms",
        {"grid": 5, "num_bins": 64},
        {"d2_distance": (("F", "F", 64), "float32")},
    ),
    (
        "push_average_face_pair_angle_histograms",
        {"grid": 5, "num_bins": 64},
        {"a3_distance": (("F", "F", 64), "float32")},
    ),
]

SCHEMA_DIMS = {
    "faces": ("face", None),
    "edges": ("edge", None),
    "graph": ("edge", None),
    "faceface": ("facepair", "matrix_flattening"),
}
ARRAY_DIMS = {
    "face_centroids": ["face", "dim"],
    "face_discretization": ["face", "sample", "component"],
    "edge_u_grids": ["edge", "u", "component"],
    "extended_adjacency": ["facepair"],
    "face_pair_edges_path": ["facepair", "dim_path"],
    "d2_distance": ["facepair", "bin"],
    "a3_distance": ["facepair", "bin"],
    # One value per item: a 0-d array, so the schema declares no dimension.
    "num_nodes": [],
}


@pytest.fixture(scope="module")
def brep(tmp_path_factory: pytest.TempPathFactory) -> BrepAccess:
    path = tmp_path_factory.mktemp("enc") / "bracket.step"
    shape = samples.make_bracket(fillet_radius=2.0)
    return CADLoader().create_from_file(samples.write_step(shape, path)).get_brep()


def _shape(template: tuple[Any, ...], brep: BrepAccess) -> tuple[int, ...]:
    sizes = {"F": brep.num_faces, "E": brep.num_coedges}
    return tuple(sizes.get(dim, dim) if isinstance(dim, str) else dim for dim in template)


def push_everything(encoder: BrepEncoder) -> None:
    for method, kwargs, _ in TABLE:
        getattr(encoder, method)(**kwargs)
    encoder.push_face_adjacency_graph()


# ---------------------------------------------------------------------------- without storage
@pytest.mark.parametrize(("method", "kwargs", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_returned_arrays_have_the_table_shapes_and_dtypes(
    brep: BrepAccess, method: str, kwargs: dict[str, Any], expected: dict[str, Any]
) -> None:
    result = getattr(BrepEncoder(brep), method)(**kwargs)
    if len(expected) > 1:
        arrays, descriptions = result
        assert isinstance(descriptions, dict) and descriptions[0] in ("Plane", "Line")
        assert descriptions[1] in ("Cylinder", "Circle")
    else:
        arrays = [result]
    assert len(arrays) == len(expected)
    for array, (shape, dtype) in zip(arrays, expected.values(), strict=True):
        assert isinstance(array, np.ndarray)
        assert array.shape == _shape(shape, brep)
        assert array.dtype == np.dtype(dtype)
        if array.dtype.kind == "f":
            assert np.isfinite(array).all()


def test_face_type_table(brep: BrepAccess) -> None:
    _, table = BrepEncoder(brep).push_face_attributes()
    assert {k: table[k] for k in (0, 1, 2, 3, 4, 5, 13, 14)} == {
        0: "Plane",
        1: "Cylinder",
        2: "Cone",
        3: "Sphere",
        4: "Torus",
        5: "Nurbs",
        13: "Revolution",
        14: "Extrusion",
    }
    _, edge_table = BrepEncoder(brep).push_edge_attributes()
    assert edge_table[0] == "Line" and edge_table[1] == "Circle"


def test_indices_are_ranges(brep: BrepAccess) -> None:
    encoder = BrepEncoder(brep)
    assert encoder.push_face_indices().tolist() == list(range(brep.num_faces))
    assert encoder.push_edge_indices().tolist() == list(range(brep.num_coedges))


def test_adjacency_graph_is_a_networkx_digraph(brep: BrepAccess) -> None:
    networkx = pytest.importorskip("networkx")

    graph = BrepEncoder(brep).push_face_adjacency_graph()
    assert isinstance(graph, networkx.DiGraph)
    assert sorted(graph.nodes()) == list(range(brep.num_faces))


def test_adjacency_graph_without_networkx_is_the_dict(
    brep: BrepAccess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "networkx", None)
    graph = BrepEncoder(brep).push_face_adjacency_graph()
    assert set(graph) == {"edges_source", "edges_destination", "num_nodes"}
    assert graph["num_nodes"] == brep.num_faces
    assert graph["edges_source"].dtype == graph["edges_destination"].dtype == np.int32
    assert len(graph["edges_source"]) == brep.num_coedges


def test_non_square_point_samples(brep: BrepAccess) -> None:
    encoder = BrepEncoder(brep)
    grid = encoder.push_face_discretization(pointsamples=10)
    assert grid.shape == (brep.num_faces, 10, 7)
    full = encoder.push_face_discretization(pointsamples=100)
    assert full.shape == (brep.num_faces, 100, 7)
    # The first and last samples are the corners of the parameter box either way.
    np.testing.assert_allclose(grid[:, [0, -1]], full[:, [0, -1]], atol=1e-5)


@pytest.mark.parametrize(
    ("method", "argument"),
    [
        ("push_face_discretization", "pointsamples"),
        ("push_curvegrid", "ugrid"),
        ("push_face_pair_edges_path", "max_allow_edge_length"),
        ("push_average_face_pair_distance_histograms", "grid"),
        ("push_average_face_pair_angle_histograms", "num_bins"),
    ],
)
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_bad_sizes_are_refused(brep: BrepAccess, method: str, argument: str, value: Any) -> None:
    with pytest.raises(ValueError, match=argument):
        getattr(BrepEncoder(brep), method)(**{argument: value})


def test_encoder_inputs() -> None:
    shape = samples.make_box()
    assert BrepEncoder(shape).brep.num_faces == 6
    with pytest.raises(TypeError, match="BrepAccess"):
        BrepEncoder("part.step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="smooth_angle_tolerance"):
        BrepEncoder(shape, smooth_angle_tolerance=-1.0)


def test_smooth_tolerance_is_configurable() -> None:
    from OCP.BRepAlgoAPI import BRepAlgoAPI_Fuse
    from OCP.BRepPrimAPI import BRepPrimAPI_MakeCone, BRepPrimAPI_MakeCylinder
    from OCP.gp import gp_Ax2, gp_Dir, gp_Pnt

    # A cylinder continued by a cone tapering at atan(0.5 / 10), about 2.9 degrees.
    cylinder = BRepPrimAPI_MakeCylinder(10.0, 20.0).Shape()
    cone = BRepPrimAPI_MakeCone(gp_Ax2(gp_Pnt(0, 0, 20), gp_Dir(0, 0, 1)), 10.0, 9.5, 10.0)
    shape = BRepAlgoAPI_Fuse(cylinder, cone.Shape()).Shape()
    default = BrepEncoder(shape)
    assert default.smooth_angle_tolerance == pytest.approx(math.radians(5))
    _, _, dihedrals, convexities = default.push_edge_attributes()[0]
    crease = np.isclose(dihedrals, math.atan(0.05), atol=1e-5)
    assert crease.sum() == 2
    assert (convexities[crease] == 3).all() and (convexities[~crease] == 1).all()
    sharp = BrepEncoder(shape, smooth_angle_tolerance=math.radians(1))
    assert set(sharp.push_edge_attributes()[0][3].tolist()) == {1}


def test_a_mirrored_body_keeps_its_convexity(tmp_path: Path) -> None:
    """An assembly's mirrored instance (a left/right pair, placed with a mirror) got every
    dihedral angle negated and convex and concave swapped: the formula takes each face
    to lie left of its co-edges, which a mirror turns round. Convexity does not change
    under a mirror: the instance, the mirror baked into the geometry and the part agree."""
    from OCP.BRepBuilderAPI import BRepBuilderAPI_Transform
    from OCP.gp import gp_Ax2, gp_Dir, gp_Pnt, gp_Trsf
    from OCP.TopLoc import TopLoc_Location

    part = samples.make_bracket()
    mirror = gp_Trsf()
    mirror.SetMirror(gp_Ax2(gp_Pnt(-10, 0, 0), gp_Dir(1, 0, 0)))
    placed = part.Moved(TopLoc_Location(mirror))
    baked = BRepBuilderAPI_Transform(part, mirror, True).Shape()
    path = samples.write_step(samples.make_compound([part, placed, baked]), tmp_path / "lr.step")
    loaded = CADLoader().create_from_file(path)
    assert loaded.num_bodies == 3
    edges = [BrepEncoder(loaded.get_brep(i)).push_edge_attributes()[0] for i in range(3)]
    assert loaded.get_brep(1).faces[0].Location().Transformation().IsNegative()
    _, _, dihedrals, convexities = edges[0]
    assert (convexities == 1).sum() > 0 and (convexities == 2).sum() > 0
    for other in edges[1:]:
        np.testing.assert_array_equal(np.sort(other[3]), np.sort(convexities))
        np.testing.assert_allclose(np.sort(other[2]), np.sort(dihedrals), atol=1e-5)


def test_an_unbounded_face_is_invalid_data(tmp_path: Path) -> None:
    """A face of an infinite plane without trimming loops was encoded "successfully"
    with face_areas [inf], centroids and samples of -inf; now an InvalidDataError naming
    the face (a failure of reason invalid_data in a batch), and nothing is stored."""
    from OCP.BRepBuilderAPI import BRepBuilderAPI_MakeFace
    from OCP.gp import gp_Dir, gp_Pln, gp_Pnt

    from cadstore.errors import InvalidDataError

    plane = BRepBuilderAPI_MakeFace(gp_Pln(gp_Pnt(0, 0, 0), gp_Dir(0, 0, 1))).Face()
    path = samples.write_brep(plane, tmp_path / "plane.brep")
    brep = CADLoader().create_from_file(path).get_brep()
    storage = MemoryStorage()
    encoder = BrepEncoder(brep, storage)
    for push in (encoder.push_face_attributes, encoder.push_face_discretization):
        with pytest.raises(InvalidDataError, match=r"face 0 is unbounded"):
            push()
    assert storage.get_keys() == []


@pytest.mark.parametrize("fins", [3, 4])
def test_faces_on_a_non_manifold_edge_are_all_neighbours(tmp_path: Path, fins: int) -> None:
    """Three faces on one edge (a surface model's T junction): the mates follow the faces
    cyclically, and the neighbour counts, hop matrix and paths followed them: one
    neighbour per face, an asymmetric hop matrix with 2 hops between faces sharing the
    edge. Every face on the edge is a neighbour of the others now, both ways."""
    from OCP.BRep import BRep_Builder
    from OCP.BRepBuilderAPI import (
        BRepBuilderAPI_MakeEdge,
        BRepBuilderAPI_MakeFace,
        BRepBuilderAPI_MakeWire,
    )
    from OCP.gp import gp_Pnt
    from OCP.TopoDS import TopoDS_Shell

    p0, p1 = gp_Pnt(0, 0, 0), gp_Pnt(0, 0, 1)
    spine = BRepBuilderAPI_MakeEdge(p0, p1).Edge()  # the one edge every fin shares
    shell = TopoDS_Shell()
    builder = BRep_Builder()
    builder.MakeShell(shell)
    for k in range(fins):
        angle = 2 * math.pi * k / fins
        a = gp_Pnt(math.cos(angle), math.sin(angle), 1)
        b = gp_Pnt(math.cos(angle), math.sin(angle), 0)
        wire = BRepBuilderAPI_MakeWire(
            spine,
            BRepBuilderAPI_MakeEdge(p1, a).Edge(),
            BRepBuilderAPI_MakeEdge(a, b).Edge(),
            BRepBuilderAPI_MakeEdge(b, p0).Edge(),
        ).Wire()
        builder.Add(shell, BRepBuilderAPI_MakeFace(wire, True).Face())
    path = samples.write_brep(shell, tmp_path / "fins.brep")
    brep = CADLoader().create_from_file(path).get_brep()
    encoder = BrepEncoder(brep)
    assert encoder.push_face_neighbors_count().tolist() == [fins - 1] * fins
    hops = encoder.push_extended_adjacency()
    np.testing.assert_array_equal(hops, 1 - np.eye(fins))
    paths = encoder.push_face_pair_edges_path()
    face = np.asarray(brep.coedge_face)
    for i in range(fins):
        for j in range(fins):
            first = paths[i, j, 0]
            assert (first == -1) == (i == j)
            if i != j:  # one step, by a co-edge of face i on the shared edge
                assert face[first] == i and paths[i, j, 1] == -1


def test_the_face_steps_are_found_once_per_body(
    brep: BrepAccess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The neighbour counts and the shortest paths both walk the steps between faces;
    they were found twice per body (with a Python loop at non-manifold edges)."""
    found = []
    real = BrepEncoder._find_steps

    def counted(self: BrepEncoder) -> Any:
        found.append(self)
        return real(self)

    monkeypatch.setattr(BrepEncoder, "_find_steps", counted)
    encoder = BrepEncoder(brep, MemoryStorage())
    push_everything(encoder)
    assert len(found) == 1


# ---------------------------------------------------------------------------- with storage
def test_storage_gets_keys_schema_and_descriptions(brep: BrepAccess) -> None:
    storage = MemoryStorage()
    encoder = BrepEncoder(brep, storage)
    push_everything(encoder)
    keys = set(storage.get_keys())
    expected = {key for _, _, arrays in TABLE for key in arrays} | {"graph"}
    assert keys == expected
    schema = storage.get_schema()
    for group, (primary, special) in SCHEMA_DIMS.items():
        assert schema["groups"][group]["primary_dimension"] == primary
        assert schema["groups"][group].get("special_processing") == special
    for group in schema["groups"].values():
        for name, spec in group["arrays"].items():
            assert spec["dims"] == ARRAY_DIMS.get(name, [group["primary_dimension"]])
    assert set(schema["groups"]["graph"]["arrays"]) == {
        "edges_source",
        "edges_destination",
        "num_nodes",
    }
    assert storage.load_metadata("descriptions/face_types")["13"] == "Revolution"
    assert storage.load_metadata("descriptions/edge_types")["1"] == "Circle"
    graph = storage.load_data("graph")
    assert set(graph) == {"edges_source", "edges_destination", "num_nodes"}
    assert graph["num_nodes"] == brep.num_faces
    assert graph["edges_source"].dtype == np.int32


def test_push_returns_key_names_with_storage(brep: BrepAccess) -> None:
    encoder = BrepEncoder(brep, MemoryStorage())
    assert encoder.push_face_indices() == "face_indices"
    keys, descriptions = encoder.push_edge_attributes()
    assert keys == [
        "edge_types",
        "edge_lengths",
        "edge_dihedral_angles",
        "edge_convexities",
    ]
    assert descriptions[1] == "Circle"
    assert encoder.push_face_adjacency_graph() == ("graph", brep.num_faces, brep.num_coedges)


def test_stored_keys_are_not_recomputed(brep: BrepAccess) -> None:
    storage = MemoryStorage()
    sentinel = np.array([7, 7], dtype=np.int32)
    storage.save_data("face_indices", sentinel)
    BrepEncoder(brep, storage).push_face_indices()
    np.testing.assert_array_equal(storage.load_data("face_indices"), sentinel)


def test_existing_schema_is_extended_not_replaced(brep: BrepAccess) -> None:
    builder = SchemaBuilder(domain="mine", version="2.0")
    faces = builder.create_group("faces", "face", "my faces")
    faces.create_array("face_areas", ["face"], "float32", "my description")
    builder.create_group("faceface", "facepair", "pairs")
    builder.define_file_metadata("size_cadfile", "int64", "File size")
    storage = MemoryStorage()
    storage.set_schema(builder.build())
    encoder = BrepEncoder(brep, storage)
    encoder.push_face_attributes()
    encoder.push_extended_adjacency()
    schema = storage.get_schema()
    assert (schema["domain"], schema["version"]) == ("mine", "2.0")
    assert schema["groups"]["faces"]["description"] == "my faces"
    assert schema["groups"]["faces"]["arrays"]["face_areas"]["description"] == "my description"
    assert "face_loops" in schema["groups"]["faces"]["arrays"]
    assert schema["groups"]["faceface"]["special_processing"] == "matrix_flattening"
    assert "size_cadfile" in schema["metadata"]["metadata"]["file_level"]


def test_strict_schema_mode_is_kept_and_satisfied(brep: BrepAccess) -> None:
    storage = MemoryStorage()
    storage.set_schema(SchemaBuilder(domain="CAD_analysis").build(), strict=True)
    encoder = BrepEncoder(brep, storage)
    for method in ("push_face_indices", "push_face_attributes", "push_face_discretization"):
        getattr(encoder, method)()
    for method in ("push_edge_indices", "push_edge_attributes", "push_curvegrid"):
        getattr(encoder, method)()
    encoder.push_face_adjacency_graph()
    assert storage.strict
    assert len(storage.get_keys()) == 13


def test_strict_schema_mode_accepts_face_pair_arrays(brep: BrepAccess) -> None:
    storage = MemoryStorage()
    storage.set_schema(SchemaBuilder(domain="CAD_analysis").build(), strict=True)
    BrepEncoder(brep, storage).push_extended_adjacency()
    assert "extended_adjacency" in storage.get_keys()


def test_a_group_on_another_primary_dimension_keeps_it(brep: BrepAccess) -> None:
    builder = SchemaBuilder()
    builder.create_group("faces", "surface").create_array("face_areas", ["surface"], "float32")
    storage = MemoryStorage()
    storage.set_schema(builder.build(), strict=True)
    BrepEncoder(brep, storage).push_face_attributes()
    arrays = storage.get_schema()["groups"]["faces"]["arrays"]
    assert storage.get_schema()["groups"]["faces"]["primary_dimension"] == "surface"
    assert arrays["face_areas"]["dims"] == ["surface"]
    assert arrays["face_centroids"]["dims"] == ["surface", "dim"]


def test_a_declaration_that_cannot_hold_the_array_is_replaced(brep: BrepAccess) -> None:
    builder = SchemaBuilder()
    builder.create_group("faces", "face").create_array("face_areas", ["face", "x"], "float64")
    storage = MemoryStorage()
    storage.set_schema(builder.build(), strict=True)
    BrepEncoder(brep, storage).push_face_attributes()
    declared = storage.get_schema()["groups"]["faces"]["arrays"]["face_areas"]
    assert (declared["dims"], declared["dtype"]) == (["face"], "float32")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_opt_storage_round_trip_matches_the_returned_arrays(
    brep: BrepAccess, tmp_path: Path, zarr_format: int
) -> None:
    storage = OptStorage(tmp_path / "item.zarr", zarr_format=zarr_format)
    push_everything(BrepEncoder(brep, storage))
    assert storage.compress_store() > 0
    storage.close()
    reopened = OptStorage(tmp_path / "item.zarr")
    reference = BrepEncoder(brep)
    for method, kwargs, expected in TABLE:
        result = getattr(reference, method)(**kwargs)
        arrays = result[0] if len(expected) > 1 else [result]
        for key, array in zip(expected, arrays, strict=True):
            loaded = reopened.load_data(key)
            assert loaded.dtype == array.dtype, key
            np.testing.assert_array_equal(loaded, array)
    graph = reopened.load_data("graph")
    np.testing.assert_array_equal(graph["edges_source"], brep.coedge_face)
    np.testing.assert_array_equal(graph["edges_destination"], brep.coedge_mate_face)
    assert int(graph["num_nodes"]) == brep.num_faces
    assert reopened.get_group_for_array("a3_distance") == "faceface"
    reopened.close()


# ---------------------------------------------------------------------------- spec examples
@pytest.fixture
def in_part_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    samples.write_step(samples.make_box_with_hole(), tmp_path / "part.step")
    samples.write_step(samples.make_bracket(), tmp_path / "part_001.step")
    return tmp_path


def test_spec_basic_usage(in_part_dir: Path) -> None:
    # The spec's "Basic Usage" example; only the imports name cadstore instead of hoops_ai.
    from cadstore import MemoryStorage
    from cadstore.cad import BrepEncoder, CADLoader

    # Load CAD file
    loader = CADLoader()
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

    assert face_areas.shape == (7,) and face_areas.dtype == np.float32
    assert "edge_convexities" in storage.get_keys()

    # For production use, replace MemoryStorage with OptStorage:
    from cadstore import OptStorage

    storage = OptStorage("output/part001.zarr")
    encoder = BrepEncoder(brep, storage)
    # ... encoding operations ...
    encoder.push_face_indices()
    encoder.push_face_attributes()
    storage.close()

    reopened = OptStorage("output/part001.zarr")
    np.testing.assert_array_equal(reopened.load_data("face_areas"), face_areas)
    reopened.close()


def _spec_workflow(storage_factory: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """The spec's "CAD Encoding Workflow", with the storage made by ``storage_factory``."""
    import os
    import time

    from cadstore import SchemaBuilder
    from cadstore.cad import BrepEncoder, CADLoader

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

    # 2. Initialize storage with schema
    storage = storage_factory()
    storage.set_schema(schema)

    # 3. Encode CAD file
    loader = CADLoader()
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

    expected = {key: storage.load_data(key) for key in storage.get_keys()}

    # 5. Compress and close
    compressed_size = storage.compress_store()
    print(f"Compressed to {compressed_size / 1024:.2f} KB")
    return storage, expected


def _check_workflow_result(storage: Any, expected: dict[str, np.ndarray]) -> None:
    assert (
        set(storage.get_keys())
        == set(expected)
        == {
            "face_indices",
            "face_types",
            "face_areas",
            "face_centroids",
            "face_loops",
            "edge_indices",
            "edge_types",
            "edge_lengths",
            "edge_dihedral_angles",
            "edge_convexities",
        }
    )
    for key, value in expected.items():
        np.testing.assert_array_equal(storage.load_data(key), value)
    schema = storage.get_schema()
    assert set(schema["groups"]["faces"]["arrays"]) >= {"face_indices", "face_centroids"}
    assert set(schema["groups"]["edges"]["arrays"]) >= {"edge_lengths", "edge_convexities"}
    assert storage.get_metadata_routing("size_cadfile") == "file_level"
    assert storage.get_metadata_routing("file_label") == "categorical"
    assert storage.load_metadata("file_label") == 2
    assert storage.load_metadata("descriptions/face_types")["0"] == "Plane"


def test_spec_cad_encoding_workflow_with_opt_storage(in_part_dir: Path) -> None:
    storage, expected = _spec_workflow(lambda: OptStorage(store_path="./encoded/part_001.zarr"))
    storage.close()
    assert (in_part_dir / "encoded" / "part_001.zarr.data").is_file()
    reopened = OptStorage("./encoded/part_001.zarr")
    _check_workflow_result(reopened, expected)
    assert reopened.load_data("face_areas").dtype == np.float32
    reopened.close()


def test_spec_cad_encoding_workflow_with_memory_storage(in_part_dir: Path) -> None:
    storage, expected = _spec_workflow(MemoryStorage)
    _check_workflow_result(storage, expected)
    storage.close()


# ---------------------------------------------------------------------------- odds and ends
def test_reprs_and_version(brep: BrepAccess) -> None:
    assert OCP_VERSION[0].isdigit()
    assert "coedges=" in repr(brep)
    assert "no storage" in repr(BrepEncoder(brep))
    assert "CADLoader" in repr(CADLoader())


def test_brep_access_lookups(brep: BrepAccess) -> None:
    for i, face in enumerate(brep.faces):
        assert brep.face_index(face) == i
        assert brep.face_index(face.Reversed()) == i
    for i, edge in enumerate(brep.edges):
        assert brep.edge_index(edge) == i
    assert brep.edge_index(brep.coedge(0)) == brep.coedge_edge[0]
    with pytest.raises(IndexError, match=r"valid: 0\.\."):
        brep.face(brep.num_faces)
    with pytest.raises(IndexError):
        brep.coedge(-1)
    with pytest.raises(TypeError):
        brep.edge("0")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        brep.face_index(samples.make_box())
    with pytest.raises(ValueError, match="read-only"):
        brep.coedge_face[0] = 3
    low, high = brep.bounding_box()
    assert brep.bounding_box_diagonal() == pytest.approx(float(np.linalg.norm(high - low)))


@pytest.mark.parametrize(
    "module",
    ["cadstore.cad.brep", "cadstore.cad.loader", "cadstore.cad.encoder", "cadstore.cad.samples"],
)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
