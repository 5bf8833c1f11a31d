"""BrepEncoder geometry on parts with known answers, built by the kernel and read back.

Every part is made with :mod:`cadstore.cad.samples`, written to a temporary STEP file and
loaded through :class:`CADLoader`, so the whole path a user takes is exercised.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("OCP")

from cadstore import MemoryStorage
from cadstore.cad import BrepAccess, BrepEncoder, CADLoader, samples

HALF_PI = math.pi / 2
CONVEX, CONCAVE, SMOOTH = 1, 2, 3

PARTS: dict[str, Callable[[], Any]] = {
    "box": lambda: samples.make_box(10, 20, 30),
    "cylinder": lambda: samples.make_cylinder(5, 10),
    "through_hole": lambda: samples.make_box_with_hole(40, 30, 10, 5),
    "blind_hole": lambda: samples.make_box_with_hole(40, 30, 10, 5, depth=4),
    "filleted_box": lambda: samples.make_filleted_box(20, 20, 20, 2),
    "sphere": lambda: samples.make_sphere(5),
    "bracket": lambda: samples.make_bracket(),
    "filleted_bracket": lambda: samples.make_bracket(fillet_radius=2.0),
    "plate": lambda: samples.make_plate_with_holes(),
    "shaft": lambda: samples.make_shaft(),
}


@pytest.fixture(scope="module")
def part_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("parts")
    return {
        name: samples.write_step(make(), folder / f"{name}.step") for name, make in PARTS.items()
    }


@pytest.fixture(scope="module")
def encoders(part_files: dict[str, Path]) -> dict[str, BrepEncoder]:
    loader = CADLoader()
    return {
        name: BrepEncoder(loader.create_from_file(path).get_brep())
        for name, path in part_files.items()
    }


def face_attributes(encoder: BrepEncoder) -> list[np.ndarray]:
    arrays, _ = encoder.push_face_attributes()
    return arrays


def edge_attributes(encoder: BrepEncoder) -> list[np.ndarray]:
    arrays, _ = encoder.push_edge_attributes()
    return arrays


def graph_pairs(encoder: BrepEncoder) -> list[tuple[int, int]]:
    """The stored form of the graph, whether or not networkx is installed."""
    storage = MemoryStorage()
    BrepEncoder(encoder.brep, storage).push_face_adjacency_graph()
    graph = storage.load_data("graph")
    assert graph["num_nodes"] == encoder.brep.num_faces
    return list(
        zip(graph["edges_source"].tolist(), graph["edges_destination"].tolist(), strict=True)
    )


def bfs_hops(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Hop counts by a plain breadth-first search from every face, as an oracle."""
    neighbours: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in pairs:
        neighbours[a].add(b)
    hops = np.full((n, n), -1.0)
    for start in range(n):
        hops[start, start] = 0
        queue = deque([start])
        while queue:
            face = queue.popleft()
            for other in sorted(neighbours[face]):
                if hops[start, other] < 0:
                    hops[start, other] = hops[start, face] + 1
                    queue.append(other)
    return hops


# ---------------------------------------------------------------------------- box
def test_box_faces(encoders: dict[str, BrepEncoder]) -> None:
    types, areas, centroids, loops = face_attributes(encoders["box"])
    assert types.tolist() == [0] * 6
    assert sorted(areas.tolist()) == pytest.approx([200, 200, 300, 300, 600, 600], rel=1e-6)
    expected = {(0, 10, 15), (10, 10, 15), (5, 0, 15), (5, 20, 15), (5, 10, 0), (5, 10, 30)}
    assert {tuple(np.round(c, 4)) for c in centroids.tolist()} == expected
    assert loops.tolist() == [1] * 6


def test_box_edges_are_all_convex_right_angles(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["box"]
    assert encoder.brep.num_edges == 12
    types, lengths, dihedrals, convexities = edge_attributes(encoder)
    assert len(types) == 24
    assert types.tolist() == [0] * 24
    assert sorted(lengths.tolist()) == pytest.approx([10] * 8 + [20] * 8 + [30] * 8, rel=1e-6)
    np.testing.assert_allclose(dihedrals, HALF_PI, atol=1e-6)
    assert convexities.tolist() == [CONVEX] * 24


def test_box_graph_and_neighbours(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["box"]
    pairs = graph_pairs(encoder)
    assert len(pairs) == 24 and len(set(pairs)) == 24
    assert encoder.push_face_neighbors_count().tolist() == [4] * 6
    hops = encoder.push_extended_adjacency()
    # Every face touches four others and faces its opposite across two hops.
    assert sorted(hops.sum(axis=1).tolist()) == [6.0] * 6
    assert set(np.unique(hops).tolist()) == {0.0, 1.0, 2.0}


def test_box_angle_histograms(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["box"]
    a3 = encoder.push_average_face_pair_angle_histograms(grid=5, num_bins=64)
    hops = encoder.push_extended_adjacency()
    for i, j in np.ndindex(6, 6):
        # Normals of a face agree (angle 0), of adjacent faces are at pi/2, opposite at pi.
        expected_bin = {0: 0, 1: 32, 2: 63}[int(hops[i, j])]
        assert a3[i, j, expected_bin] == pytest.approx(1.0)


def test_box_samples_lie_on_the_surface_with_outward_normals(
    encoders: dict[str, BrepEncoder],
) -> None:
    grid = encoders["box"].push_face_discretization(pointsamples=25)
    assert grid.shape == (6, 25, 7) and grid.dtype == np.float32
    points, normals, inside = grid[..., :3], grid[..., 3:6], grid[..., 6]
    assert inside.tolist() == [[1.0] * 25] * 6
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-6)
    outward = np.einsum("fsk,fsk->fs", normals, points - np.array([5, 10, 15]))
    assert (outward > 0).all()
    on_boundary = np.isclose(points, [0, 0, 0], atol=1e-4) | np.isclose(points, [10, 20, 30])
    assert on_boundary.any(axis=-1).all()


def test_box_curve_grids(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["box"]
    grids = encoder.push_curvegrid(ugrid=5)
    assert grids.shape == (24, 5, 6) and grids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(grids[..., 3:], axis=-1), 1.0, atol=1e-6)
    brep = encoder.brep
    for c in range(brep.num_coedges):
        mate = int(brep.coedge_mate[c])
        # Mates walk the same edge in opposite directions.
        np.testing.assert_allclose(grids[c, ::-1, :3], grids[mate, :, :3], atol=1e-5)
        np.testing.assert_allclose(grids[c, ::-1, 3:], -grids[mate, :, 3:], atol=1e-6)
        steps = np.linalg.norm(np.diff(grids[c, :, :3], axis=0), axis=-1)
        np.testing.assert_allclose(steps, steps[0], rtol=1e-4)


# ---------------------------------------------------------------------------- cylinder
def test_cylinder(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["cylinder"]
    types, areas, _, loops = face_attributes(encoder)
    assert sorted(types.tolist()) == [0, 0, 1]
    lateral = int(np.flatnonzero(types == 1)[0])
    assert areas[lateral] == pytest.approx(2 * math.pi * 5 * 10, rel=1e-6)
    np.testing.assert_allclose(areas[types == 0], math.pi * 25, rtol=1e-6)
    assert loops.tolist() == [1, 1, 1]
    edge_types, lengths, dihedrals, convexities = edge_attributes(encoder)
    # Two circles, two co-edges each; the seam where the cylinder closes makes none.
    assert encoder.brep.num_edges == 3 and len(edge_types) == 4
    assert edge_types.tolist() == [1] * 4
    np.testing.assert_allclose(lengths, 10 * math.pi, rtol=1e-6)
    np.testing.assert_allclose(dihedrals, HALF_PI, atol=1e-6)
    assert convexities.tolist() == [CONVEX] * 4
    neighbours = encoder.push_face_neighbors_count()
    assert neighbours[lateral] == 2 and sorted(neighbours.tolist()) == [1, 1, 2]


def test_cylinder_disc_samples_outside_the_trim_are_flagged(
    encoders: dict[str, BrepEncoder],
) -> None:
    encoder = encoders["cylinder"]
    types = face_attributes(encoder)[0]
    grid = encoder.push_face_discretization(pointsamples=25)
    for f in np.flatnonzero(types == 0):
        inside = grid[f, :, 6].reshape(5, 5)
        # The 5 x 5 grid spans the disc's square parameter box: corners fall outside it.
        assert inside[0, 0] == inside[0, 4] == inside[4, 0] == inside[4, 4] == 0
        assert inside[2, 2] == 1
        radii = np.linalg.norm(grid[f, :, :2], axis=-1)
        assert ((radii <= 5 + 1e-4) == (grid[f, :, 6] == 1)).all()


# ---------------------------------------------------------------------------- holes
def test_through_hole(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["through_hole"]
    types, areas, _, loops = face_attributes(encoder)
    assert sorted(loops.tolist()) == [1, 1, 1, 1, 1, 2, 2]
    assert sorted(types.tolist()) == [0] * 6 + [1]
    np.testing.assert_allclose(areas[loops == 2], 40 * 30 - math.pi * 25, rtol=1e-6)
    assert areas[types == 1][0] == pytest.approx(2 * math.pi * 5 * 10, rel=1e-6)
    edge_types, _, dihedrals, convexities = edge_attributes(encoder)
    assert len(edge_types) == 28 and (edge_types == 1).sum() == 4
    # The rim of a drilled hole is a convex edge: the material there is a 90-degree wedge.
    np.testing.assert_allclose(dihedrals[edge_types == 1], HALF_PI, atol=1e-6)
    assert convexities.tolist() == [CONVEX] * 28


def test_through_hole_samples_in_the_hole_are_flagged(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["through_hole"]
    loops = face_attributes(encoder)[3]
    grid = encoder.push_face_discretization(pointsamples=25)
    for f in np.flatnonzero(loops == 2):
        centre = grid[f, 12]
        assert centre[:2] == pytest.approx([20, 15], abs=1e-4)
        assert centre[6] == 0
        assert grid[f, :, 6].sum() == 24


def test_blind_hole_floor_rim_is_concave(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["blind_hole"]
    types, areas, centroids, loops = face_attributes(encoder)
    assert sorted(loops.tolist()) == [1] * 7 + [2]
    floor = int(np.flatnonzero((types == 0) & np.isclose(centroids[:, 2], 6))[0])
    assert areas[floor] == pytest.approx(math.pi * 25, rel=1e-6)
    _, _, dihedrals, convexities = edge_attributes(encoder)
    concave = convexities == CONCAVE
    assert concave.sum() == 2
    np.testing.assert_allclose(dihedrals[concave], -HALF_PI, atol=1e-6)
    assert set(encoder.brep.coedge_face[concave].tolist()) | set(
        encoder.brep.coedge_mate_face[concave].tolist()
    ) == {floor, int(np.flatnonzero(types == 1)[0])}
    assert (convexities[~concave] == CONVEX).all()


def test_bracket_inner_corner_is_concave(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["bracket"]
    edge_types, lengths, dihedrals, convexities = edge_attributes(encoder)
    concave = np.flatnonzero(convexities == CONCAVE)
    assert len(concave) == 2
    np.testing.assert_allclose(dihedrals[concave], -HALF_PI, atol=1e-6)
    np.testing.assert_allclose(lengths[concave], 40.0, rtol=1e-6)
    assert edge_types[concave].tolist() == [0, 0]


def test_shaft_steps(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["shaft"]
    types = face_attributes(encoder)[0]
    assert sorted(types.tolist()) == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    _, _, dihedrals, convexities = edge_attributes(encoder)
    # Two shoulders, each with a concave inner circle; chamfers meet at 45 degrees.
    assert (convexities == CONCAVE).sum() == 4
    assert np.isclose(np.abs(dihedrals), math.pi / 4, atol=1e-6).sum() == 8


# ---------------------------------------------------------------------------- smooth
def test_filleted_box_is_smooth_everywhere(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["filleted_box"]
    types, areas, _, _ = face_attributes(encoder)
    assert set(types.tolist()) == {0, 1, 3}
    # Six flat squares, twelve quarter cylinders and eight sphere octants.
    expected = 6 * 16**2 + 12 * (math.pi * 2 / 2) * 16 + 4 * math.pi * 2**2
    assert float(areas.sum()) == pytest.approx(expected, rel=1e-5)
    _, _, dihedrals, convexities = edge_attributes(encoder)
    assert convexities.tolist() == [SMOOTH] * len(convexities)
    np.testing.assert_allclose(dihedrals, 0.0, atol=1e-4)


def test_filleted_bracket_corner_is_smooth(encoders: dict[str, BrepEncoder]) -> None:
    convexities = edge_attributes(encoders["filleted_bracket"])[3]
    assert (convexities == SMOOTH).sum() == 4
    assert (convexities == CONCAVE).sum() == 0


def test_sphere(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["sphere"]
    types, areas, centroids, _ = face_attributes(encoder)
    assert types.tolist() == [3]
    assert areas[0] == pytest.approx(4 * math.pi * 25, rel=1e-6)
    np.testing.assert_allclose(centroids[0], 0.0, atol=1e-6)
    assert encoder.push_edge_indices().shape == (0,)
    edge_arrays = edge_attributes(encoder)
    assert [a.shape for a in edge_arrays] == [(0,)] * 4
    assert encoder.push_curvegrid(ugrid=5).shape == (0, 5, 6)
    assert encoder.push_extended_adjacency().tolist() == [[0.0]]
    assert (encoder.push_face_pair_edges_path(16) == -1).all()
    grid = encoder.push_face_discretization(pointsamples=25)
    # Poles have no surface normal; the sampled normal is its limit there.
    np.testing.assert_allclose(np.linalg.norm(grid[0, :, 3:6], axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(grid[0, :, 3:6], grid[0, :, :3] / 5.0, atol=1e-4)


# ---------------------------------------------------------------------------- all parts
@pytest.mark.parametrize("name", sorted(PARTS))
def test_graph_is_symmetric_and_lines_up_with_coedges(
    encoders: dict[str, BrepEncoder], name: str
) -> None:
    encoder = encoders[name]
    brep = encoder.brep
    pairs = graph_pairs(encoder)
    source = brep.coedge_face
    target = brep.coedge_mate_face
    mate = brep.coedge_mate
    assert (source[mate] == target).all() and (target[mate] == source).all()
    assert (mate[mate] == np.arange(brep.num_coedges)).all()
    assert (source != target).all()
    assert pairs == list(zip(source.tolist(), target.tolist(), strict=True))
    assert sorted(pairs) == sorted((b, a) for a, b in pairs)
    edge_types, lengths, dihedrals, convexities = edge_attributes(encoder)
    # Both co-edges of an edge carry the same edge attributes.
    for array in (edge_types, lengths, dihedrals, convexities):
        np.testing.assert_allclose(array, array[mate], atol=1e-6)


@pytest.mark.parametrize("name", sorted(PARTS))
def test_extended_adjacency_is_the_hop_count(encoders: dict[str, BrepEncoder], name: str) -> None:
    encoder = encoders[name]
    hops = encoder.push_extended_adjacency()
    n = encoder.brep.num_faces
    assert hops.shape == (n, n) and hops.dtype == np.float32
    expected = bfs_hops(n, graph_pairs(encoder))
    np.testing.assert_array_equal(hops, expected)
    np.testing.assert_array_equal(hops, hops.T)


@pytest.mark.parametrize("name", sorted(PARTS))
def test_face_pair_paths_are_shortest_chains_of_coedges(
    encoders: dict[str, BrepEncoder], name: str
) -> None:
    encoder = encoders[name]
    brep = encoder.brep
    hops = encoder.push_extended_adjacency()
    paths = encoder.push_face_pair_edges_path(max_allow_edge_length=16)
    n = brep.num_faces
    assert paths.shape == (n, n, 16) and paths.dtype == np.int32
    for i, j in np.ndindex(n, n):
        path = paths[i, j]
        length = int((path >= 0).sum())
        assert (path[length:] == -1).all()
        assert length == max(int(hops[i, j]), 0)
        if length:
            chain = path[:length]
            assert brep.coedge_face[chain[0]] == i
            assert brep.coedge_mate_face[chain[-1]] == j
            assert (brep.coedge_mate_face[chain[:-1]] == brep.coedge_face[chain[1:]]).all()


def test_long_paths_keep_their_first_coedges(encoders: dict[str, BrepEncoder]) -> None:
    encoder = encoders["filleted_box"]
    full = encoder.push_face_pair_edges_path(max_allow_edge_length=16)
    short = encoder.push_face_pair_edges_path(max_allow_edge_length=2)
    assert short.shape[-1] == 2
    np.testing.assert_array_equal(short, full[..., :2])
    assert encoder.push_extended_adjacency().max() > 2


@pytest.mark.parametrize("name", sorted(PARTS))
@pytest.mark.parametrize("kind", ["d2", "a3"])
def test_histograms_sum_to_one_and_are_symmetric(
    encoders: dict[str, BrepEncoder], name: str, kind: str
) -> None:
    encoder = encoders[name]
    push = (
        encoder.push_average_face_pair_distance_histograms
        if kind == "d2"
        else encoder.push_average_face_pair_angle_histograms
    )
    histograms = push(grid=5, num_bins=64)
    n = encoder.brep.num_faces
    assert histograms.shape == (n, n, 64) and histograms.dtype == np.float32
    np.testing.assert_allclose(histograms.sum(axis=-1), 1.0, atol=1e-5)
    assert (histograms >= 0).all()
    np.testing.assert_array_equal(histograms, histograms.transpose(1, 0, 2))


def test_distance_histogram_scale(encoders: dict[str, BrepEncoder]) -> None:
    # Box 10 x 20 x 30: the diagonal is sqrt(1400); opposite 20 x 30 faces are 10 apart.
    encoder = encoders["box"]
    d2 = encoder.push_average_face_pair_distance_histograms(grid=5, num_bins=64)
    centroids = face_attributes(encoder)[2]
    i, j = (int(np.flatnonzero(np.isclose(centroids[:, 0], x))[0]) for x in (0, 10))
    nearest_bin = int(np.flatnonzero(d2[i, j])[0])
    assert nearest_bin == int(10 / math.sqrt(1400) * 64)
    assert d2[i, i, 0] > 0  # a face's samples include zero distances to themselves


def test_bodies_read_from_different_formats_encode_alike(tmp_path: Path) -> None:
    shape = samples.make_bracket(fillet_radius=2.0)
    results = []
    for suffix in (".step", ".iges", ".brep"):
        path = samples.write_shape(shape, tmp_path / f"part{suffix}")
        encoder = BrepEncoder(CADLoader().create_from_file(path).get_brep())
        _, areas, _, _ = face_attributes(encoder)
        _, _, _, convexities = edge_attributes(encoder)
        results.append((sorted(np.round(areas, 3).tolist()), sorted(convexities.tolist())))
    assert results[0] == results[1] == results[2]


def test_sample_parts_encode(tmp_path: Path) -> None:
    paths = samples.write_sample_set(tmp_path / "set", count=6, seed=3)
    assert [p.name for p in paths][:3] == ["bracket_000.step", "plate_001.step", "shaft_002.step"]
    for path in paths:
        brep: BrepAccess = CADLoader().create_from_file(path).get_brep()
        assert brep.num_faces >= 5 and brep.num_coedges > 0
        hops = BrepEncoder(brep).push_extended_adjacency()
        assert (hops >= 0).all()


def test_numbering_and_features_are_deterministic(part_files: dict[str, Path]) -> None:
    def encode() -> list[np.ndarray]:
        brep = CADLoader().create_from_file(part_files["filleted_bracket"]).get_brep()
        encoder = BrepEncoder(brep)
        return [
            *face_attributes(encoder),
            *edge_attributes(encoder),
            encoder.push_face_discretization(),
            encoder.push_face_pair_edges_path(),
            encoder.push_average_face_pair_distance_histograms(),
        ]

    for first, second in zip(encode(), encode(), strict=True):
        np.testing.assert_array_equal(first, second)
