"""Synthetic CAD items: deterministic, realistic encoder output, for demos, tests and benchmarks.

The demo's ``--no-cad`` mode, the test suite and every benchmark use this generator when
they need many items without a CAD kernel or CAD files.

The generator produces items with exactly the keys, shapes and dtypes that the
vendor's ``BrepEncoder`` writes for the node-classification (MFR) flow: faces,
co-edges, the face adjacency graph and the quadratic face-pair arrays. Nothing here
needs a CAD kernel; every value is computed with numpy from a seeded generator.

The values are built to *look like geometry* rather than noise, because compression
ratios and therefore every storage benchmark depend on it:

* faces are patches of planes, cylinders, cones, spheres, tori and freeform surfaces,
  most of them axis-aligned with coordinates on a 0.5 mm grid, as in machined parts;
* the face adjacency graph is sparse, connected and spatially local, with about
  ``edge_ratio * N_f`` directed co-edges stored in both directions;
* hop counts and shortest paths are the true BFS results on that graph;
* the D2 and A3 histograms are smooth, peaked distributions derived from the moments of
  the sampled face points and normals, quantised to counts of ``min(P, 25)**2`` samples
  like the vendor's histograms, so most bins are exactly zero.

Everything is a pure function of ``(seed, index, config)``: two calls with the same
arguments return byte-identical arrays, and nothing is cached between calls.

Examples
--------
>>> from cadstore.synthetic import iter_items, raw_nbytes
>>> for name, item, metadata in iter_items(3, seed=1):
...     assert name.endswith("_0") and raw_nbytes(item) > 0
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cadstore.vocabulary import CONVEXITIES, EDGE_TYPES, FACE_TYPES
from cadstore.workers import ProcessPool

__all__ = [
    "CATEGORIES",
    "CONVEXITY_CODES",
    "DEFAULT_CONFIG",
    "EDGE_TYPE_CODES",
    "FACE_TYPE_CODES",
    "ITEM_KEYS",
    "WorkloadConfig",
    "item_name",
    "iter_items",
    "make_item",
    "make_item_metadata",
    "raw_nbytes",
    "sample_face_counts",
    "write_item",
    "write_workload",
]

FACE_TYPE_CODES: Mapping[int, str] = FACE_TYPES
"""Surface type codes used in ``face_types`` (:data:`cadstore.vocabulary.FACE_TYPES`)."""

EDGE_TYPE_CODES: Mapping[int, str] = EDGE_TYPES
"""Curve type codes used in ``edge_types`` (:data:`cadstore.vocabulary.EDGE_TYPES`)."""

CONVEXITY_CODES: Mapping[int, str] = CONVEXITIES
"""``edge_convexities`` codes (:data:`cadstore.vocabulary.CONVEXITIES`)."""

CATEGORIES: tuple[str, ...] = (
    "bracket",
    "flange",
    "gear",
    "shaft",
    "plate",
    "housing",
    "bolt",
    "nut",
    "washer",
    "spring",
)
"""Category names; ``file_label`` is the index into this tuple."""

ITEM_KEYS: tuple[str, ...] = (
    "face_indices",
    "face_types",
    "face_areas",
    "face_centroids",
    "face_loops",
    "face_discretization",
    "face_neighborscount",
    "edge_indices",
    "edge_types",
    "edge_lengths",
    "edge_dihedral_angles",
    "edge_convexities",
    "edge_u_grids",
    "graph",
    "extended_adjacency",
    "face_pair_edges_path",
    "d2_distance",
    "a3_distance",
)
"""Top-level item keys in generation order; the last two only when histograms are on."""


@dataclass(frozen=True)
class WorkloadConfig:
    """Encoder settings and size distribution of a generated workload.

    The defaults match the vendor's node-classification (MFR) flow; see
    :meth:`part_classification` for the other common setting.

    Parameters
    ----------
    pointsamples : int
        Points sampled per face, ``P`` in ``face_discretization (N_f, P, 7)``.
    ugrid : int
        Points sampled per co-edge, ``U`` in ``edge_u_grids (N_e, U, 6)``.
    path_len : int
        Maximum edges kept per face-pair path, ``M`` in ``face_pair_edges_path``.
    num_bins : int
        Bins of the D2 and A3 histograms, ``B``.
    median_faces : int
        Median of the face-count distribution.
    face_sigma : float
        Log-space standard deviation of the face-count distribution; 0.95 puts about
        two thirds of the items between 10 and 60 faces and 1 % above 200.
    min_faces : int
        Lower clip of the face-count distribution.
    max_faces : int
        Upper clip of the face-count distribution.
    edge_ratio : float
        Mean number of directed co-edges per face, ``N_e / N_f``.
    histograms : bool
        Whether items carry ``d2_distance`` and ``a3_distance``.
    histogram_points : int
        Points per face the vendor samples for the histograms (at most 25); each
        histogram is a count of ``min(pointsamples, histogram_points) ** 2`` samples.
    """

    pointsamples: int = 25
    ugrid: int = 5
    path_len: int = 32
    num_bins: int = 64
    median_faces: int = 25
    face_sigma: float = 0.95
    min_faces: int = 4
    max_faces: int = 600
    edge_ratio: float = 2.6
    histograms: bool = True
    histogram_points: int = 25

    def __post_init__(self) -> None:
        for name in ("pointsamples", "ugrid", "path_len", "num_bins", "histogram_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorkloadConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.min_faces <= self.median_faces <= self.max_faces:
            raise ValueError(
                "WorkloadConfig needs 1 <= min_faces <= median_faces <= max_faces, got "
                f"{self.min_faces}, {self.median_faces}, {self.max_faces}"
            )
        if self.face_sigma < 0:
            raise ValueError(f"WorkloadConfig.face_sigma must be >= 0, got {self.face_sigma}")
        if self.edge_ratio < 0:
            raise ValueError(f"WorkloadConfig.edge_ratio must be >= 0, got {self.edge_ratio}")

    @classmethod
    def part_classification(cls) -> WorkloadConfig:
        """Return the settings of the vendor's part-classification flow.

        Returns
        -------
        WorkloadConfig
            100 points per face, 10 per co-edge, paths of 16 edges and no histograms.
        """
        return cls(pointsamples=100, ugrid=10, path_len=16, histograms=False)


DEFAULT_CONFIG = WorkloadConfig()
"""The MFR settings: 25 points per face, 5 per co-edge, paths of 32, 64-bin histograms."""

# Stream salts keep the face count, the item arrays and the metadata statistically
# independent while all three stay pure functions of (seed, index).
_SALT_FACES = 0x5EED_FACE
_SALT_ITEM = 1
_SALT_META = 2

_FACE_TYPE_VALUES = np.array([0, 1, 2, 3, 4, 5, 13, 14])
# Machined parts are dominated by planes and cylinders; freeform faces are rare.
_FACE_TYPE_PROBS = np.array([0.55, 0.25, 0.04, 0.02, 0.04, 0.05, 0.02, 0.03])
# Lookup tables indexed by face type code: cheaper than np.isin on small arrays.
_CURVED = np.zeros(16, dtype=bool)
_CURVED[[1, 2, 3, 4, 13]] = True
_FREEFORM = np.zeros(16, dtype=bool)
_FREEFORM[[5, 14]] = True
for _table in (_FACE_TYPE_VALUES, _FACE_TYPE_PROBS, _CURVED, _FREEFORM):
    _table.flags.writeable = False
del _table
_MASK64 = (1 << 64) - 1


# ----------------------------------------------------------------------------- face counts


def _splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Hash uint64 values with SplitMix64 (wrapping arithmetic is intended)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _face_counts(
    indices: NDArray[np.int64], seed: int, config: WorkloadConfig
) -> NDArray[np.int64]:
    """Draw the face count of each item index from a counter-based hash.

    A hash of ``(seed, index)`` instead of a sequential generator makes the count of
    item ``i`` independent of how many items are drawn and in which order, so
    :func:`sample_face_counts` and :func:`make_item` always agree.
    """
    key = np.array([(seed ^ _SALT_FACES) & _MASK64], dtype=np.uint64)
    base = _splitmix64(key)
    idx = indices.astype(np.uint64) * np.uint64(2)
    bits1 = _splitmix64(base ^ idx)
    bits2 = _splitmix64(base ^ (idx + np.uint64(1)))
    scale = 2.0**-53
    # 1 - u keeps the logarithm's argument in (0, 1].
    u1 = 1.0 - (bits1 >> np.uint64(11)).astype(np.float64) * scale
    u2 = (bits2 >> np.uint64(11)).astype(np.float64) * scale
    normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    counts = np.rint(np.exp(math.log(config.median_faces) + config.face_sigma * normal))
    return np.clip(counts, config.min_faces, config.max_faces).astype(np.int64)


def _check_seed_index(seed: int, index: int) -> None:
    """Raise ``ValueError`` unless ``seed`` fits a uint64 and ``index`` is non-negative."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")


def sample_face_counts(
    n_items: int, seed: int = 0, config: WorkloadConfig = DEFAULT_CONFIG, *, start: int = 0
) -> NDArray[np.int64]:
    """Draw per-item face counts from a clipped lognormal distribution.

    Parameters
    ----------
    n_items : int
        Number of items.
    seed : int
        Workload seed, in ``[0, 2**64)``.
    config : WorkloadConfig
        Supplies the median, spread and clip range.
    start : int
        Index of the first item, so a workload can be generated in shards.

    Returns
    -------
    numpy.ndarray
        ``(n_items,)`` int64 face counts; entry ``k`` is the count that
        ``make_item(start + k, seed, config)`` uses.

    Examples
    --------
    >>> counts = sample_face_counts(2000)
    >>> 20 <= float(np.median(counts)) <= 30
    True
    """
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    _check_seed_index(seed, start)
    return _face_counts(np.arange(start, start + n_items, dtype=np.int64), seed, config)


# ----------------------------------------------------------------------------- geometry


@dataclass
class _Faces:
    """Face geometry in world coordinates, float64 until the item is assembled."""

    types: NDArray[np.int64]
    points: NDArray[np.float64]  # (N, P, 3)
    normals: NDArray[np.float64]  # (N, P, 3), unit length
    inside: NDArray[np.bool_]  # (N, P)
    areas: NDArray[np.float64]
    centroids: NDArray[np.float64]
    loops: NDArray[np.int64]
    frames: NDArray[np.float64]  # (N, 3, 3), columns are the local x, y, z axes
    radius: NDArray[np.float64]
    size: NDArray[np.float64]
    aligned: NDArray[np.bool_]
    mean_points: NDArray[np.float64]  # (N, 3), mean of the inside points
    spread: NDArray[np.float64]  # (N,), mean squared distance of inside points to it
    mean_normals: NDArray[np.float64]  # (N, 3), mean inside normal (length < 1 if curved)


def _categorical(uniform: NDArray[np.float64], probs: NDArray[np.float64]) -> NDArray[np.intp]:
    """Map uniforms on [0, 1) to category indices with the given probabilities."""
    return np.searchsorted(np.cumsum(probs)[:-1], uniform, side="right")


def _uv_grid(p: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return ``p`` parameter points in row-major order from a square grid on [-1, 1]²."""
    g = max(1, math.ceil(math.sqrt(p)))
    lin = np.linspace(-1.0, 1.0, g) if g > 1 else np.zeros(1)
    s, t = np.meshgrid(lin, lin, indexing="ij")
    return s.ravel()[:p], t.ravel()[:p]


def _cross(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Cross product along the last axis (``np.cross`` is several times slower here)."""
    out = np.empty(np.broadcast_shapes(x.shape, y.shape))
    out[..., 0] = x[..., 1] * y[..., 2] - x[..., 2] * y[..., 1]
    out[..., 1] = x[..., 2] * y[..., 0] - x[..., 0] * y[..., 2]
    out[..., 2] = x[..., 0] * y[..., 1] - x[..., 1] * y[..., 0]
    return out


def _frames(
    aligned: NDArray[np.bool_], uni: NDArray[np.float64], quat: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Return local-to-world rotations, columns the local x, y, z axes.

    Aligned faces map their axes onto signed world axes (machined faces); the others
    get a uniformly random rotation from the normalised quaternion ``quat``.
    """
    n = aligned.size
    eye = np.eye(3)
    k = (3.0 * uni[0]).astype(np.intp)
    m = (k + 1 + (2.0 * uni[1]).astype(np.intp)) % 3
    out = np.empty((n, 3, 3))
    out[:, :, 0] = eye[m] * np.where(uni[2] < 0.5, -1.0, 1.0)[:, None]
    out[:, :, 2] = eye[k] * np.where(uni[3] < 0.5, -1.0, 1.0)[:, None]
    out[:, :, 1] = _cross(out[:, :, 2], out[:, :, 0])
    w, x, y, z = quat / np.linalg.norm(quat, axis=0)
    rot = np.empty((n, 3, 3))
    rot[:, 0, 0] = 1 - 2 * (y * y + z * z)
    rot[:, 0, 1] = 2 * (x * y - z * w)
    rot[:, 0, 2] = 2 * (x * z + y * w)
    rot[:, 1, 0] = 2 * (x * y + z * w)
    rot[:, 1, 1] = 1 - 2 * (x * x + z * z)
    rot[:, 1, 2] = 2 * (y * z - x * w)
    rot[:, 2, 0] = 2 * (x * z - y * w)
    rot[:, 2, 1] = 2 * (y * z + x * w)
    rot[:, 2, 2] = 1 - 2 * (x * x + y * y)
    out[~aligned] = rot[~aligned]
    return out


def _make_faces(rng: np.random.Generator, n: int, config: WorkloadConfig) -> _Faces:
    """Sample ``n`` trimmed surface patches inside a random part bounding box."""
    p = config.pointsamples
    s, t = _uv_grid(p)
    s, t = s[None, :], t[None, :]

    # Two block draws feed every parameter (one row each): at these sizes a generator
    # call costs more than the numbers it returns. Drawing every parameter for every
    # face also keeps later values independent of the mix of face types.
    box = rng.random(6)
    uni = rng.random((22, n))
    gauss = rng.standard_normal((6, n))
    # Part bounding box: log-uniform size of about 35-190 mm, one side the longest.
    extent = 80.0 * math.exp(0.6 * (box[0] - 0.5) * 3.0) * (0.3 + 0.7 * box[1:4])
    extent[int(3 * box[4])] = 80.0 * math.exp(0.6 * (box[5] - 0.5) * 3.0)
    face_scale = math.sqrt(
        2.0 * (extent[0] * extent[1] + extent[1] * extent[2] + extent[0] * extent[2]) / n
    )
    types = _FACE_TYPE_VALUES[_categorical(uni[0], _FACE_TYPE_PROBS)]
    curved = _CURVED[types]
    aligned = uni[1] < np.where(types <= 2, 0.8, np.where(_FREEFORM[types], 0.2, 0.5))
    center = uni[2:5].T * extent
    a = 0.5 * face_scale * np.exp(0.4 * gauss[0])
    b = 0.5 * face_scale * np.exp(0.4 * gauss[1])
    radius = face_scale * (0.15 + 0.45 * uni[5])
    # Machined features snap to round numbers; that repetition matters for compression.
    center = np.where(aligned[:, None], np.rint(center * 2.0) / 2.0, center)
    a = np.where(aligned, np.maximum(np.rint(a * 2.0) / 2.0, 0.5), a)
    b = np.where(aligned, np.maximum(np.rint(b * 2.0) / 2.0, 0.5), b)
    radius = np.where(aligned, np.maximum(np.rint(radius * 4.0) / 4.0, 0.25), radius)
    spans = np.array([0.5 * np.pi, np.pi, 1.5 * np.pi, 2.0 * np.pi])
    half_theta = 0.5 * spans[_categorical(uni[6], np.array([0.35, 0.3, 0.05, 0.3]))]
    half_phi = 0.3 + 1.15 * uni[7]
    cone_angle = 0.1 + 0.7 * uni[8]
    minor = radius * (0.15 + 0.3 * uni[9])
    amplitude = 0.05 + 0.2 * uni[10]
    k1, k2 = np.pi * (0.5 + 1.5 * uni[11]), np.pi * (0.5 + 1.5 * uni[12])
    sign = np.where(curved & (uni[13] < 0.35), -1.0, 1.0)
    trim = _categorical(uni[14], np.array([0.6, 0.25, 0.15]))
    trim_angle = 2.0 * np.pi * uni[15]
    trim_offset = 0.1 + 0.7 * uni[16]
    hole_radius = 0.3 + 0.4 * uni[17]
    frames = _frames(aligned, uni[18:22], gauss[2:6])

    # Surfaces of revolution (cylinder, cone, sphere, torus, revolution) share
    # point = (ring cos(theta), ring sin(theta), z) and normal = (nr cos, nr sin, nz),
    # with a profile in t only; the area element is half_theta * ring * j. Each profile
    # is evaluated for all faces and picked per face, which for a few dozen faces is
    # much cheaper than fancy-indexing per type.
    col = (slice(None), None)
    r, ha, hb = radius[col], a[col], b[col]
    z_lin = hb * t
    ring, z_rev, n_r, n_z, j_rev = (np.zeros((n, p)) for _ in range(5))
    present = set(types[curved].tolist())
    if 1 in present:
        sel = types == 1
        ring[sel], z_rev[sel], n_r[sel], n_z[sel] = r[sel], z_lin[sel], 1.0, 0.0
        j_rev[sel] = hb[sel]
    if 2 in present:
        sel = types == 2
        alpha = cone_angle[sel][:, None]
        tan = np.tan(alpha)
        ring[sel] = np.maximum(r[sel], 1.2 * hb[sel] * tan + 0.1) + z_lin[sel] * tan
        z_rev[sel], n_r[sel], n_z[sel] = z_lin[sel], np.cos(alpha), -np.sin(alpha)
        j_rev[sel] = hb[sel] / np.cos(alpha)
    if 3 in present or 4 in present:
        # Sphere (radius r) and torus (major r, minor rho) differ only in the profile.
        torus = types == 4
        phi = np.where(torus, 2.0, 1.0)[col] * half_phi[col] * t
        cos_p, sin_p = np.cos(phi), np.sin(phi)
        tube = np.where(torus, minor, radius)[col]
        sel = (types == 3) | torus
        ring[sel] = (np.where(torus[col], r, 0.0) + tube * cos_p)[sel]
        z_rev[sel], n_r[sel], n_z[sel] = (tube * sin_p)[sel], cos_p[sel], sin_p[sel]
        j_rev[sel] = (tube * np.where(torus, 2.0, 1.0)[col] * half_phi[col] + 0.0 * t)[sel]
    if 13 in present:
        sel = types == 13
        k = k1[sel][:, None]
        amp = amplitude[sel][:, None] * r[sel]
        drv = amp * k * np.cos(k * t)
        slope = np.sqrt(hb[sel] ** 2 + drv * drv)
        ring[sel] = r[sel] + amp * np.sin(k * t)
        z_rev[sel], n_r[sel], n_z[sel] = z_lin[sel], hb[sel] / slope, -drv / slope
        j_rev[sel] = slope
    theta = half_theta[col] * s
    cos_t, sin_t = np.cos(theta), np.sin(theta)

    # Plane, NURBS and extrusion are height fields z(s, t) over an a x b rectangle,
    # with the (unnormalised) normal (-b z_s, -a z_t, a b).
    nurbs = (types == 5)[col]
    amp = np.where(types == 5, amplitude * np.minimum(a, b), amplitude * a)
    amp = np.where(types == 0, 0.0, amp)[col]
    k1, k2 = k1[col], k2[col]
    wave_s, wave_t = np.sin(k1 * s), np.where(nurbs, np.cos(k2 * t), 1.0)
    z_s = amp * k1 * np.cos(k1 * s) * wave_t
    z_t = np.where(nurbs, -amp * k2 * wave_s * np.sin(k2 * t), 0.0)

    local = np.empty((n, p, 3))
    normal = np.empty((n, p, 3))
    revolved = curved[col]
    local[..., 0] = np.where(revolved, ring * cos_t, ha * s)
    local[..., 1] = np.where(revolved, ring * sin_t, hb * t)
    local[..., 2] = np.where(revolved, z_rev, amp * wave_s * wave_t)
    normal[..., 0] = np.where(revolved, n_r * cos_t * sign[col], -hb * z_s)
    normal[..., 1] = np.where(revolved, n_r * sin_t * sign[col], -ha * z_t)
    normal[..., 2] = np.where(revolved, n_z * sign[col], ha * hb)
    j_flat = np.sqrt(np.einsum("fpk,fpk->fp", normal, normal))
    normal /= np.where(revolved, 1.0, j_flat)[..., None]
    jac = np.where(revolved, half_theta[col] * ring * j_rev, j_flat)

    points = center[:, None, :] + np.einsum("fjk,fpk->fpj", frames, local)
    normals = np.einsum("fjk,fpk->fpj", frames, normal)

    # Trimming: a straight cut keeps the patch centre, a hole removes it (second loop).
    cut = np.cos(trim_angle)[col] * s + np.sin(trim_angle)[col] * t < trim_offset[col]
    hole = s * s + t * t >= hole_radius[col] ** 2
    inside = np.where((trim == 1)[col], cut, np.where((trim == 2)[col], hole, True))
    inside[~inside.any(axis=1)] = True
    loops = np.where(trim == 2, 2, 1)

    weight = jac * inside
    # The parameter domain [-1, 1]² has area 4, so 4 * mean(J) is the surface area.
    areas = 4.0 * weight.mean(axis=1)
    centroids = np.einsum("fp,fpj->fj", weight, points) / weight.sum(axis=1)[:, None]
    count = inside.sum(axis=1)[:, None]
    mean_points = np.einsum("fp,fpj->fj", inside, points) / count
    dev = points - mean_points[:, None, :]
    spread = np.einsum("fp,fpj,fpj->f", inside, dev, dev) / count[:, 0]
    mean_normals = np.einsum("fp,fpj->fj", inside, normals) / count
    return _Faces(
        types,
        points,
        normals,
        inside,
        areas,
        centroids,
        loops,
        frames,
        radius,
        np.sqrt(areas),
        aligned,
        mean_points,
        spread,
        mean_normals,
    )


# ----------------------------------------------------------------------------- graph


def _face_graph(
    rng: np.random.Generator, centroids: NDArray[np.float64], edge_ratio: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Build a connected, spatially local, undirected face adjacency.

    A random insertion-order tree joins each face to one of its two nearest earlier
    faces (connectivity and locality); extra edges come from the k-nearest-neighbour
    pairs until the undirected count reaches about ``edge_ratio / 2`` per face.

    Returns
    -------
    tuple of numpy.ndarray
        ``(u, v)`` with ``u < v``, one entry per undirected adjacency.
    """
    n = centroids.shape[0]
    if n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    diff = centroids[:, None, :] - centroids[None, :, :]
    dist = np.einsum("ijk,ijk->ij", diff, diff)

    order = rng.permutation(n)
    ordered = dist[np.ix_(order, order)]
    earlier = np.tril(np.ones((n, n), dtype=bool), k=-1)
    masked = np.where(earlier, ordered, np.inf)[1:]
    two = np.argpartition(masked, 1, axis=1)[:, :2]
    rows = np.arange(n - 1)
    d_two = masked[rows[:, None], two]
    nearest = np.where(d_two[:, 0] <= d_two[:, 1], two[:, 0], two[:, 1])
    second = np.where(d_two[:, 0] <= d_two[:, 1], two[:, 1], two[:, 0])
    use_second = (rng.random(n - 1) < 0.3) & np.isfinite(masked[rows, second])
    parent = np.where(use_second, second, nearest)
    tu, tv = order[1:], order[parent]
    tree_keys = np.minimum(tu, tv) * n + np.maximum(tu, tv)

    max_edges = n * (n - 1) // 2
    target = round(0.5 * edge_ratio * n * rng.uniform(0.92, 1.08))
    target = int(min(max(target, n - 1), max_edges))
    n_extra = target - (n - 1)
    keys = tree_keys
    if n_extra > 0:
        k = min(6, n - 1)
        no_self = dist + np.diag(np.full(n, np.inf))
        nbrs = np.argpartition(no_self, k - 1, axis=1)[:, :k]
        src = np.repeat(np.arange(n), k)
        cand = np.unique(np.minimum(src, nbrs.ravel()) * n + np.maximum(src, nbrs.ravel()))
        cand = cand[~np.isin(cand, tree_keys)]
        if cand.size < n_extra:
            # Dense small graphs run out of near neighbours; add the nearest free pairs.
            iu, ju = np.triu_indices(n, k=1)
            free = np.setdiff1d(iu * n + ju, np.concatenate([tree_keys, cand]))
            free = free[np.argsort(dist[free // n, free % n], kind="stable")]
            cand = np.concatenate([cand, free[: n_extra - cand.size]])
        chosen = cand[rng.permutation(cand.size)[:n_extra]]
        keys = np.concatenate([tree_keys, chosen])
    keys = np.sort(keys)
    return keys // n, keys % n


def _hops_and_paths(
    n: int, src: NDArray[np.int64], dst: NDArray[np.int64], path_len: int
) -> tuple[NDArray[np.int64], NDArray[np.int32]]:
    """All-pairs BFS over co-edges: hop counts and one shortest co-edge path per pair.

    Hop counts come from a level-synchronous BFS from all sources at once. The last
    co-edge of the path ``i -> j`` is then the lowest-numbered co-edge into ``j`` whose
    source is one hop closer to ``i``, and the rest of the path is that of the pair
    ``(i, source)``, so paths are built level by level. Ties break on co-edge ids,
    which makes the result identical on every platform.
    """
    hops = np.full((n, n), -1, dtype=np.int64)
    np.fill_diagonal(hops, 0)
    paths = np.full((n, n, path_len), -1, dtype=np.int32)
    n_e = src.size
    if n_e == 0:
        return hops, paths
    by_dst = np.argsort(dst, kind="stable")
    src_d, dst_d = src[by_dst], dst[by_dst]
    # reduceat needs one non-empty segment per node; the face graph is connected, so
    # every node has an incoming co-edge, but stay correct for isolated nodes too.
    has_in = np.bincount(dst, minlength=n) > 0
    starts = np.searchsorted(dst_d, np.flatnonzero(has_in))

    def gather(values: NDArray[Any], ufunc: np.ufunc, empty: Any) -> NDArray[Any]:
        if has_in.all():
            return ufunc.reduceat(values, starts, axis=1)
        out = np.full((values.shape[0], n), empty, dtype=values.dtype)
        out[:, has_in] = ufunc.reduceat(values, starts, axis=1)
        return out

    frontier = np.eye(n, dtype=bool)
    level = 0
    while True:
        reach = gather(frontier[:, src_d], np.logical_or, False)
        reach &= hops < 0
        if not reach.any():
            break
        level += 1
        hops[reach] = level
        frontier = reach

    on_path = hops[:, src_d] + 1 == hops[:, dst_d]
    last = gather(np.where(on_path, np.arange(n_e), n_e), np.minimum, n_e)
    last = by_dst[np.minimum(last, n_e - 1)]
    for d in range(1, level + 1):
        i, j = np.nonzero(hops == d)
        edge = last[i, j]
        keep = min(d - 1, path_len)
        if keep:
            paths[i, j, :keep] = paths[i, src[edge], :keep]
        if d <= path_len:
            paths[i, j, d - 1] = edge
    return hops, paths


# ----------------------------------------------------------------------------- edges


def _edge_geometry(
    rng: np.random.Generator,
    faces: _Faces,
    u: NDArray[np.int64],
    v: NDArray[np.int64],
    ugrid: int,
) -> dict[str, NDArray[Any]]:
    """Return per-undirected-edge types, lengths, dihedrals, convexities and curve grids."""
    m = u.size
    uni = rng.random((7, m))
    tau = np.linspace(0.0, 1.0, ugrid)[None, :, None] if ugrid > 1 else np.full((1, 1, 1), 0.5)
    zu, zv = faces.frames[u, :, 2], faces.frames[v, :, 2]
    direction = _cross(zu, zv)
    norm = np.linalg.norm(direction, axis=1)
    parallel = norm < 1e-6
    direction = np.where(parallel[:, None], faces.frames[u, :, 0], direction)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    both_aligned = faces.aligned[u] & faces.aligned[v]
    mid = 0.5 * (faces.centroids[u] + faces.centroids[v])
    mid = np.where(both_aligned[:, None], np.rint(mid * 4.0) / 4.0, mid)
    length = np.minimum(faces.size[u], faces.size[v]) * (0.5 + 0.7 * uni[0])
    length = np.where(both_aligned, np.maximum(np.rint(length * 2.0) / 2.0, 0.5), length)

    curved_u, curved_v = _CURVED[faces.types[u]], _CURVED[faces.types[v]]
    curved = curved_u | curved_v
    freeform = _FREEFORM[faces.types[u]] | _FREEFORM[faces.types[v]]
    codes = np.array([0, 1, 2, 6])
    cum_plain = np.array([0.88, 0.96, 0.97])
    cum_curved = np.array([0.35, 0.90, 0.93])
    cum_free = np.array([0.30, 0.40, 0.40])
    cum = np.where(freeform[:, None], cum_free, np.where(curved[:, None], cum_curved, cum_plain))
    etype = codes[(uni[1][:, None] >= cum).sum(axis=1)]

    # Circles lie around the axis of the curved face (the first face if neither is).
    owner = np.where(curved_v & ~curved_u, v, u)
    axis = faces.frames[owner, :, 2]
    e1 = faces.frames[owner, :, 0]
    e2 = _cross(axis, e1)
    circ_r = np.where(_CURVED[faces.types[owner]], faces.radius[owner], length / np.pi)
    spans = np.array([0.5 * np.pi, np.pi, 2.0 * np.pi])
    span = spans[_categorical(uni[2], np.array([0.35, 0.35, 0.3]))]
    ratio = np.where(etype == 2, 0.4 + 0.5 * uni[3], 1.0)
    phi = (tau[..., 0] - 0.5) * span[:, None]
    cos_p, sin_p = np.cos(phi)[..., None], np.sin(phi)[..., None]
    r1, r2 = circ_r[:, None, None], (circ_r * ratio)[:, None, None]
    center = mid - circ_r[:, None] * e1
    arc = center[:, None, :] + r1 * cos_p * e1[:, None, :] + r2 * sin_p * e2[:, None, :]
    arc_d = -r1 * sin_p * e1[:, None, :] + r2 * cos_p * e2[:, None, :]

    bend = _cross(direction, zu)
    bend_n = np.linalg.norm(bend, axis=1, keepdims=True)
    bend = np.where(bend_n > 1e-6, bend / np.maximum(bend_n, 1e-12), faces.frames[u, :, 1])
    amp = 0.15 * length * (0.3 + 0.7 * uni[4])
    line = mid[:, None, :] + (tau - 0.5) * length[:, None, None] * direction[:, None, :]
    spline = line + (amp[:, None, None] * np.sin(np.pi * tau)) * bend[:, None, :]
    line_d = length[:, None, None] * direction[:, None, :] + 0.0 * tau
    spline_d = line_d + (amp[:, None, None] * np.pi * np.cos(np.pi * tau)) * bend[:, None, :]

    arc_edge = (etype == 1) | (etype == 2)
    is_arc = arc_edge[:, None, None]
    is_spline = (etype == 6)[:, None, None]
    pts = np.where(is_arc, arc, np.where(is_spline, spline, line))
    deriv = np.where(is_arc, arc_d, np.where(is_spline, spline_d, line_d))
    speed = np.linalg.norm(deriv, axis=2)
    tangent = deriv / speed[..., None]
    # Arc derivatives are per radian, the others per unit of tau in [0, 1].
    curve_len = speed.mean(axis=1) * np.where(arc_edge, span, 1.0)

    n_hat = (
        faces.mean_normals / np.maximum(np.linalg.norm(faces.mean_normals, axis=1), 1e-12)[:, None]
    )
    angle = np.arccos(np.clip(np.einsum("ij,ij->i", n_hat[u], n_hat[v]), -1.0, 1.0))
    smooth = (angle < 0.02) | (curved & (uni[5] < 0.4))
    convex = uni[6] < 0.6
    convexity = np.where(smooth, 3, np.where(convex, 1, 2))
    dihedral = np.where(smooth, 0.0, np.where(convex, angle, -angle))
    return {
        "types": etype,
        "lengths": curve_len,
        "dihedral": dihedral,
        "convexity": convexity,
        "grid": np.concatenate([pts, tangent], axis=2),
    }


# ----------------------------------------------------------------------------- histograms


def _quantised_logistic(
    mean: NDArray[np.float64], scale: NDArray[np.float64], num_bins: int, n_samples: int
) -> NDArray[np.float32]:
    """Histogram logistic distributions on [0, 1] as integer counts of ``n_samples``.

    Rounding the cumulative counts (not the per-bin counts) makes every histogram sum
    to exactly ``n_samples`` while keeping the shape smooth and the tails exactly zero,
    which is what a real histogram of a few hundred samples looks like.

    Parameters
    ----------
    mean, scale : numpy.ndarray
        ``(K,)`` location and scale of each distribution.
    num_bins : int
        Bins on [0, 1].
    n_samples : int
        Sample count each histogram is quantised to.

    Returns
    -------
    numpy.ndarray
        ``(K, num_bins)`` float32 frequencies.
    """
    out = np.empty((mean.size, num_bins), dtype=np.float32)
    edges = np.linspace(0.0, 1.0, num_bins + 1, dtype=np.float32)
    loc = mean.astype(np.float32)[:, None]
    # The logistic CDF is an affine image of tanh(z / 2), which never overflows, and the
    # affine part cancels in the normalisation below.
    half_inv = (0.5 / scale).astype(np.float32)[:, None]
    # Blocks bound the temporaries for 600-face items (180k distinct pairs).
    block = max(1, (1 << 20) // (num_bins + 1))
    for lo in range(0, mean.size, block):
        hi = lo + block
        cdf = edges - loc[lo:hi]
        cdf *= half_inv[lo:hi]
        np.tanh(cdf, out=cdf)
        first = cdf[:, :1].copy()
        cdf -= first
        cdf *= n_samples / cdf[:, -1:]
        np.rint(cdf, out=cdf)
        out[lo:hi] = np.diff(cdf, axis=1)
    out /= n_samples
    return out


def _face_pair_histograms(
    faces: _Faces, config: WorkloadConfig
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """D2 (distance / bbox diagonal) and A3 (normal angle / pi) histograms per face pair.

    Each pair's distribution is matched to the exact moments of the sampled points:
    ``E|x - y|^2 = |mu_i - mu_j|^2 + tr(S_i) + tr(S_j)`` for the distances, and the
    angle between the mean normals, widened by how curved the faces are, for angles.
    """
    # Both histograms are symmetric in (i, j): work on the upper triangle, mirror it.
    n = faces.types.size
    iu, ju = np.triu_indices(n)
    inside_pts = faces.points[faces.inside]
    diag = max(float(np.linalg.norm(inside_pts.max(axis=0) - inside_pts.min(axis=0))), 1e-9)
    d_mu = faces.mean_points[iu] - faces.mean_points[ju]
    d_sq = np.einsum("ij,ij->i", d_mu, d_mu)
    s_sum = faces.spread[iu] + faces.spread[ju]
    # Matches E|x - y|^2 = d_sq + s_sum exactly, with a variance of s_sum / 4.
    d2_mean = np.sqrt(d_sq + 0.75 * s_sum) / diag
    d2_scale = 0.5 * np.sqrt(s_sum) / diag

    rho = np.linalg.norm(faces.mean_normals, axis=1)
    n_hat = faces.mean_normals / np.maximum(rho, 1e-12)[:, None]
    cos_ang = np.clip(np.einsum("ij,ij->i", n_hat[iu], n_hat[ju]), -1.0, 1.0)
    a3_mean = np.arccos(cos_ang) / np.pi
    # 1 - |mean normal|^2 is the normal variance: zero for planes, large for full cylinders.
    bend = np.clip(1.0 - rho * rho, 0.0, 1.0)
    a3_scale = 0.5 * np.sqrt(bend[iu] + bend[ju])

    # The logistic scale for a standard deviation sd is sd * sqrt(3) / pi. The tiny
    # offset keeps exact values (0, 0.5, 1) off bin edges, as numpy's half-open bins
    # would, instead of splitting them between two bins.
    loc = np.clip(np.concatenate([d2_mean, a3_mean]) + 1e-6, 0.0, 1.0)
    scale = np.maximum(np.concatenate([d2_scale, a3_scale]) * (math.sqrt(3.0) / np.pi), 1e-7)
    n_samples = min(config.pointsamples, config.histogram_points) ** 2
    upper = _quantised_logistic(loc, scale, config.num_bins, n_samples)
    d2 = np.empty((n, n, config.num_bins), dtype=np.float32)
    a3 = np.empty((n, n, config.num_bins), dtype=np.float32)
    d2[iu, ju] = d2[ju, iu] = upper[: iu.size]
    a3[iu, ju] = a3[ju, iu] = upper[iu.size :]
    return d2, a3


# ----------------------------------------------------------------------------- items


def make_item(
    index: int,
    seed: int = 0,
    config: WorkloadConfig = DEFAULT_CONFIG,
    n_faces: int | None = None,
) -> dict[str, Any]:
    """Generate one encoded CAD body with the vendor's keys, shapes and dtypes.

    Parameters
    ----------
    index : int
        Item index within the workload, ``>= 0``.
    seed : int
        Workload seed, in ``[0, 2**64)``.
    config : WorkloadConfig
        Encoder settings and size distribution.
    n_faces : int, optional
        Face count ``N_f``; by default it is drawn as by :func:`sample_face_counts`.

    Returns
    -------
    dict
        Key to value, in :data:`ITEM_KEYS` order. With ``P = config.pointsamples``,
        ``U = config.ugrid``, ``M = config.path_len``, ``B = config.num_bins`` and
        ``N_e`` (even, about ``config.edge_ratio * N_f``) directed co-edges:

        - ``face_indices``, ``face_types``, ``face_loops``, ``face_neighborscount``:
          ``(N_f,)`` int32; ``face_areas`` ``(N_f,)`` float32;
          ``face_centroids`` ``(N_f, 3)`` float32;
          ``face_discretization`` ``(N_f, P, 7)`` float32 (xyz, unit normal, inside flag);
        - ``edge_indices``, ``edge_types``, ``edge_convexities`` ``(N_e,)`` int32;
          ``edge_lengths``, ``edge_dihedral_angles`` ``(N_e,)`` float32;
          ``edge_u_grids`` ``(N_e, U, 6)`` float32 (xyz, unit tangent);
        - ``graph``: ``{"edges_source": (N_e,) int32, "edges_destination": (N_e,) int32,
          "num_nodes": int}``, symmetric and connected, grouped by source face;
        - ``extended_adjacency`` ``(N_f, N_f)`` float32 BFS hop counts;
        - ``face_pair_edges_path`` ``(N_f, N_f, M)`` int32 co-edge ids, padded with -1;
        - ``d2_distance``, ``a3_distance`` ``(N_f, N_f, B)`` float32 histograms summing
          to 1 (only when ``config.histograms``).

    Raises
    ------
    ValueError
        If ``index``, ``seed`` or ``n_faces`` is out of range.

    Examples
    --------
    >>> item = make_item(0, n_faces=25)
    >>> item["face_discretization"].shape
    (25, 25, 7)
    """
    _check_seed_index(seed, index)
    if n_faces is None:
        n_faces = int(_face_counts(np.array([index], dtype=np.int64), seed, config)[0])
    if n_faces < 1:
        raise ValueError(f"n_faces must be >= 1, got {n_faces}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _SALT_ITEM]))
    faces = _make_faces(rng, n_faces, config)

    u, v = _face_graph(rng, faces.centroids, config.edge_ratio)
    n_und = u.size
    # Co-edge k < n_und runs u -> v and k + n_und runs v -> u; the stored order groups
    # co-edges by source face, like a traversal of each face's loops.
    src_all = np.concatenate([u, v])
    dst_all = np.concatenate([v, u])
    order = np.lexsort((rng.random(2 * n_und), src_all))
    src, dst = src_all[order], dst_all[order]
    undirected = order % max(n_und, 1)
    reverse = order >= n_und

    geo = _edge_geometry(rng, faces, u, v, config.ugrid)
    grid = geo["grid"][undirected]
    # The twin co-edge walks the same curve backwards.
    grid = np.where(
        reverse[:, None, None], grid[:, ::-1, :] * np.array([1, 1, 1, -1, -1, -1]), grid
    )
    hops, paths = _hops_and_paths(n_faces, src, dst, config.path_len)

    n_e = src.size
    discretization = np.concatenate(
        [faces.points, faces.normals, faces.inside[..., None].astype(np.float64)], axis=2
    )
    item: dict[str, Any] = {
        "face_indices": np.arange(n_faces, dtype=np.int32),
        "face_types": faces.types.astype(np.int32),
        "face_areas": faces.areas.astype(np.float32),
        "face_centroids": faces.centroids.astype(np.float32),
        "face_loops": faces.loops.astype(np.int32),
        "face_discretization": discretization.astype(np.float32),
        "face_neighborscount": np.bincount(src, minlength=n_faces).astype(np.int32),
        "edge_indices": np.arange(n_e, dtype=np.int32),
        "edge_types": geo["types"][undirected].astype(np.int32),
        "edge_lengths": geo["lengths"][undirected].astype(np.float32),
        "edge_dihedral_angles": geo["dihedral"][undirected].astype(np.float32),
        "edge_convexities": geo["convexity"][undirected].astype(np.int32),
        "edge_u_grids": grid.astype(np.float32),
        "graph": {
            "edges_source": src.astype(np.int32),
            "edges_destination": dst.astype(np.int32),
            "num_nodes": int(n_faces),
        },
        "extended_adjacency": hops.astype(np.float32),
        "face_pair_edges_path": paths,
    }
    if config.histograms:
        item["d2_distance"], item["a3_distance"] = _face_pair_histograms(faces, config)
    return item


def item_name(source_path: str, body_index: int = 0) -> str:
    """Return the vendor-style item id ``<md5 of the source path>_<body index>``.

    Parameters
    ----------
    source_path : str
        Path of the CAD file the item was encoded from.
    body_index : int
        Index of the body within the file.

    Returns
    -------
    str
        32 lowercase hex digits, an underscore and the body index.
    """
    digest = hashlib.md5(source_path.encode("utf-8"), usedforsecurity=False).hexdigest()
    return f"{digest}_{body_index}"


def make_item_metadata(
    index: int,
    seed: int = 0,
    config: WorkloadConfig = DEFAULT_CONFIG,
    n_faces: int | None = None,
) -> dict[str, Any]:
    """Generate the per-item metadata a vendor flow records next to the arrays.

    Parameters
    ----------
    index : int
        Item index within the workload, ``>= 0``.
    seed : int
        Workload seed, in ``[0, 2**64)``.
    config : WorkloadConfig
        Used for the face count (file size and encode time grow with it).
    n_faces : int, optional
        Face count; by default the same one :func:`make_item` draws.

    Returns
    -------
    dict
        ``size_cadfile`` (int, bytes), ``processing_time`` (float, seconds),
        ``file_label`` (int class in 0..9), ``category`` (str, ``CATEGORIES[file_label]``)
        and ``Item`` (str, a fake source path). All values are JSON-serialisable.
    """
    _check_seed_index(seed, index)
    if n_faces is None:
        n_faces = int(_face_counts(np.array([index], dtype=np.int64), seed, config)[0])
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _SALT_META]))
    label = int(rng.integers(0, len(CATEGORIES)))
    category = CATEGORIES[label]
    # A STEP file costs a header plus a few kB of entities per face.
    size = round(12_000 + n_faces * 2_800 * rng.lognormal(0.0, 0.35))
    pair_cost = 3e-5 * n_faces * n_faces if config.histograms else 0.0
    seconds = (0.08 + 0.004 * n_faces + pair_cost) * rng.lognormal(0.0, 0.2)
    return {
        "size_cadfile": int(size),
        "processing_time": round(float(seconds), 6),
        "file_label": label,
        "category": category,
        "Item": f"/data/cad/{category}/{category}_{seed}_{index:07d}.step",
    }


def iter_items(
    n_items: int, seed: int = 0, config: WorkloadConfig = DEFAULT_CONFIG, *, start: int = 0
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Yield ``(name, item, metadata)`` for a workload of ``n_items`` items.

    Parameters
    ----------
    n_items : int
        Number of items.
    seed : int
        Workload seed, in ``[0, 2**64)``.
    config : WorkloadConfig
        Encoder settings and size distribution.
    start : int
        Index of the first item; shards ``[start, start + n_items)`` of one workload
        are identical to the same slice of the whole workload.

    Yields
    ------
    tuple of (str, dict, dict)
        The stable id ``<32 hex>_0`` (see :func:`item_name`), the item
        (see :func:`make_item`) and its metadata (see :func:`make_item_metadata`).
    """
    counts = sample_face_counts(n_items, seed, config, start=start)
    for offset, n_faces in enumerate(counts.tolist()):
        index = start + offset
        metadata = make_item_metadata(index, seed, config, n_faces=n_faces)
        item = make_item(index, seed, config, n_faces=n_faces)
        yield item_name(metadata["Item"]), item, metadata


def raw_nbytes(item: Mapping[str, Any]) -> int:
    """Return the uncompressed size of an item: array bytes, recursing into dicts.

    Parameters
    ----------
    item : Mapping
        An item as returned by :func:`make_item`; Python scalars count as the 0-d
        arrays a store would write for them, strings as their UTF-8 bytes.

    Returns
    -------
    int
        Total bytes.
    """
    total = 0
    for value in item.values():
        if isinstance(value, Mapping):
            total += raw_nbytes(value)
        elif isinstance(value, str):
            total += len(value.encode("utf-8"))
        else:
            total += int(np.asarray(value).nbytes)
    return total


def write_item(
    store_path: str | os.PathLike[str],
    item: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    schema: Any = None,
    **options: Any,
) -> str:
    """Write one item as a published ``.data`` file with :class:`~cadstore.OptStorage`.

    Parameters
    ----------
    store_path : str or os.PathLike
        The store path (``.../<name>.zarr``); the file is ``store_path + ".data"``.
    item, metadata : Mapping
        What :func:`iter_items` yields: every item key is saved with ``save_data``, every
        metadata key with ``save_metadata``.
    schema : optional
        A schema to set first.
    **options
        Keyword arguments for :class:`~cadstore.OptStorage` (``compression_level``,
        ``summary_dir``, ``durable``, ``mode``, ...).

    Returns
    -------
    str
        The path of the ``.data`` file.
    """
    from cadstore.storage.opt import OptStorage

    storage = OptStorage(store_path, **options)
    try:
        if schema is not None:
            storage.set_schema(schema)
        for key, value in item.items():
            storage.save_data(key, value)
        for key, value in metadata.items():
            storage.save_metadata(key, value)
        storage.compress_store()
    finally:
        storage.close()
    return f"{os.fspath(store_path)}.data"


def _write_range(args: tuple[str, int, int, int]) -> list[str]:
    directory, seed, start, count = args
    paths = []
    for index in range(start, start + count):
        # Metadata is cheap and names the item; the item itself is generated only when
        # its file is missing, so a second call reuses what the first one wrote.
        metadata = make_item_metadata(index, seed)
        store = os.path.join(directory, f"{item_name(metadata['Item'])}.zarr")
        if not os.path.exists(store + ".data"):
            write_item(
                store,
                make_item(index, seed),
                metadata,
                summary_dir=False,
                durable=False,
                working_directory=False,
            )
        paths.append(store + ".data")
    return paths


def write_workload(
    directory: str | os.PathLike[str], n_items: int, seed: int = 0, *, workers: int | None = None
) -> list[str]:
    """Write (or reuse) the workload's first ``n_items`` items as ``.data`` files.

    For benchmarks and demos: files are written without fsync and without summaries, in
    ``workers`` processes (every core by default), and files already present are kept.

    Parameters
    ----------
    directory : str or os.PathLike
        Where the ``<name>.zarr.data`` files go (created if needed).
    n_items : int
        Number of items.
    seed : int
        Workload seed.
    workers : int, optional
        Worker processes; 0 or 1 writes in this process.

    Returns
    -------
    list of str
        The ``.data`` paths in item order.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    step = 100
    jobs = [(directory, seed, s, min(step, n_items - s)) for s in range(0, n_items, step)]
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    if n_workers <= 1 or len(jobs) <= 1:
        return [path for job in jobs for path in _write_range(job)]
    # Its workers' warnings reach the caller.
    with ProcessPool(n_workers) as pool:
        return [path for part in pool.map(_write_range, jobs) for path in part]
