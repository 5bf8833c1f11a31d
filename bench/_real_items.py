"""Real encoder items for the benchmarks: parametric parts through the OpenCascade front end.

:func:`real_items` builds varied parametric solids with the kernel (boxes with holes,
fillets, chamfers and pockets, plates with hole patterns, L brackets, stepped shafts,
flanges, bosses, crossed pipes, spheres, and files holding several bodies), writes them as
STEP files, encodes every body with ``cadstore.encode.encode_files`` (the pipeline behind
``cadstore encode``: every push method, histograms included), and reads each item back as
the arrays and metadata the encoder produced. Nothing is downloaded.

Everything is cached under ``cache_dir`` (one folder per seed): a second run reuses the
STEP files and the encoded items (the encoder resumes), so only the first run pays the
encoding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: Metadata the storage records itself (stored sizes; the schema and the routing that
#: ``set_schema`` records): left out of the items handed over, which every contender then
#: writes alike, arrays and the encoder's own metadata (``Item``, ``descriptions``, ...).
_RECORDED_BY_STORAGE = ("file_sizes_KB", "_storage_schema", "_metadata_routing")


def _parts(seed: int) -> Iterator[tuple[str, Callable[[], Any], int]]:
    """Yield ``(file stem, build, bodies)`` for an endless, varied stream of parts."""
    from OCP.BRepAlgoAPI import BRepAlgoAPI_Cut, BRepAlgoAPI_Fuse
    from OCP.BRepFilletAPI import BRepFilletAPI_MakeChamfer, BRepFilletAPI_MakeFillet
    from OCP.BRepPrimAPI import BRepPrimAPI_MakeBox, BRepPrimAPI_MakeCylinder
    from OCP.gp import gp_Ax2, gp_Dir, gp_Pnt
    from OCP.TopAbs import TopAbs_EDGE

    from cadstore.cad import samples
    from cadstore.cad._kernel import as_edge, indexed_map

    def box_at(x: float, y: float, z: float, dx: float, dy: float, dz: float) -> Any:
        return BRepPrimAPI_MakeBox(gp_Pnt(x, y, z), dx, dy, dz).Shape()

    def cylinder(x: float, y: float, z: float, r: float, h: float, axis: str = "z") -> Any:
        direction = {"x": gp_Dir(1, 0, 0), "y": gp_Dir(0, 1, 0), "z": gp_Dir(0, 0, 1)}[axis]
        return BRepPrimAPI_MakeCylinder(gp_Ax2(gp_Pnt(x, y, z), direction), r, h).Shape()

    def cut(shape: Any, *tools: Any) -> Any:
        for tool in tools:
            op = BRepAlgoAPI_Cut(shape, tool)
            op.Build()
            shape = op.Shape()
        return shape

    def fuse(shape: Any, *others: Any) -> Any:
        for other in others:
            op = BRepAlgoAPI_Fuse(shape, other)
            op.Build()
            shape = op.Shape()
        return shape

    def edges_of(shape: Any) -> list[Any]:
        found = indexed_map(shape, TopAbs_EDGE)
        return [as_edge(found.FindKey(i)) for i in range(1, found.Extent() + 1)]

    def chamfered_box(dx: float, dy: float, dz: float, size: float) -> Any:
        box = samples.make_box(dx, dy, dz)
        maker = BRepFilletAPI_MakeChamfer(box)
        for edge in edges_of(box):
            maker.Add(size, edge)
        maker.Build()
        return maker.Shape()

    def pocketed_box(rng: np.random.Generator) -> Any:
        dx, dy, dz = (float(v) for v in rng.uniform(30, 80, 3))
        wall = float(rng.uniform(2, 6))
        pocket = box_at(wall, wall, dz * 0.4, dx - 2 * wall, dy - 2 * wall, dz)
        body = cut(samples.make_box(dx, dy, dz), pocket)
        holes = [
            cylinder(float(x), float(y), -1, float(rng.uniform(1, 2.5)), dz)
            for x, y in zip(
                rng.uniform(2 * wall + 3, dx - 2 * wall - 3, int(rng.integers(0, 5))),
                rng.uniform(2 * wall + 3, dy - 2 * wall - 3, 5),
                strict=False,
            )
        ]
        body = cut(body, *holes)
        if rng.random() < 0.5:
            fillet = BRepFilletAPI_MakeFillet(body)
            radius = float(rng.uniform(0.5, min(wall, 2.0) * 0.9))
            for edge in edges_of(body)[: int(rng.integers(4, 12))]:
                fillet.Add(radius, edge)
            fillet.Build()
            if fillet.IsDone():
                body = fillet.Shape()
        return body

    def flange(rng: np.random.Generator) -> Any:
        outer = float(rng.uniform(30, 60))
        thickness = float(rng.uniform(5, 12))
        bore = float(rng.uniform(5, outer * 0.4))
        n = int(rng.integers(3, 9))
        pitch = (outer + bore) / 2
        hub = cylinder(0, 0, 0, bore + float(rng.uniform(4, 10)), thickness * 2.5)
        body = fuse(cylinder(0, 0, 0, outer, thickness), hub)
        holes = [
            cylinder(
                pitch * math.cos(2 * math.pi * k / n),
                pitch * math.sin(2 * math.pi * k / n),
                -1,
                float(rng.uniform(1.5, 3.5)),
                thickness + 2,
            )
            for k in range(n)
        ]
        return cut(body, cylinder(0, 0, -1, bore, thickness * 3), *holes)

    def boss(rng: np.random.Generator) -> Any:
        dx, dy, dz = (
            float(rng.uniform(40, 90)),
            float(rng.uniform(30, 70)),
            float(rng.uniform(5, 12)),
        )
        bosses = [
            cylinder(float(x), float(y), dz, float(rng.uniform(3, 7)), float(rng.uniform(4, 15)))
            for x, y in zip(
                rng.uniform(10, dx - 10, int(rng.integers(1, 5))),
                rng.uniform(10, dy - 10, 4),
                strict=False,
            )
        ]
        return fuse(samples.make_box(dx, dy, dz), *bosses)

    def pipes(rng: np.random.Generator) -> Any:
        r = float(rng.uniform(5, 12))
        length = float(rng.uniform(40, 80))
        outer = fuse(
            cylinder(0, 0, -length / 2, r, length),
            cylinder(-length / 2, 0, 0, r * float(rng.uniform(0.6, 1.0)), length, "x"),
        )
        inner = fuse(
            cylinder(0, 0, -length, r * 0.7, 2 * length),
            cylinder(-length, 0, 0, r * 0.5, 2 * length, "x"),
        )
        return cut(outer, inner)

    index = 0
    while True:
        rng = np.random.default_rng([seed, index])
        kind = index % 12
        stem = f"part_{index:04d}"
        bodies = 1
        build: Callable[[], Any]
        if kind == 0:
            build = lambda r=rng: samples.make_box_with_hole(  # noqa: E731
                float(r.uniform(20, 60)),
                float(r.uniform(20, 60)),
                float(r.uniform(5, 20)),
                float(r.uniform(2, 8)),
                None if r.random() < 0.5 else 3.0,
            )
        elif kind == 1:
            build = lambda r=rng: samples.make_filleted_box(  # noqa: E731
                *(float(v) for v in r.uniform(10, 40, 3)), radius=float(r.uniform(0.5, 2.5))
            )
        elif kind == 2:
            build = lambda r=rng: chamfered_box(  # noqa: E731
                *(float(v) for v in r.uniform(10, 40, 3)), size=float(r.uniform(0.5, 2.5))
            )
        elif kind == 3:
            rows, cols = int(rng.integers(1, 5)), int(rng.integers(2, 7))
            build = lambda r=rng, rows=rows, cols=cols: samples.make_plate_with_holes(  # noqa: E731
                float(r.uniform(90, 160)),
                float(r.uniform(50, 100)),
                float(r.uniform(3, 10)),
                float(r.uniform(2, 4)),
                rows,
                cols,
            )
        elif kind == 4:
            build = lambda r=rng: samples.make_bracket(  # noqa: E731
                width=float(r.uniform(30, 60)),
                depth=float(r.uniform(25, 45)),
                height=float(r.uniform(25, 50)),
                thickness=float(r.uniform(3, 6)),
                hole_radius=float(r.uniform(2, 4)),
                fillet_radius=float(r.choice([0.0, 2.0])),
            )
        elif kind == 5:
            n = int(rng.integers(2, 6))
            radii = [float(v) for v in np.sort(rng.uniform(5, 15, size=n))[::-1]]
            lengths = [float(v) for v in rng.uniform(10, 40, size=n)]
            build = lambda r=rng, radii=radii, lengths=lengths: samples.make_shaft(  # noqa: E731
                radii=radii, lengths=lengths, chamfer=float(r.choice([0.0, 1.0]))
            )
        elif kind == 6:
            build = lambda r=rng: pocketed_box(r)  # noqa: E731
        elif kind == 7:
            build = lambda r=rng: flange(r)  # noqa: E731
        elif kind == 8:
            build = lambda r=rng: boss(r)  # noqa: E731
        elif kind == 9:
            build = lambda r=rng: pipes(r)  # noqa: E731
        elif kind == 10:
            # A file of several bodies: one item each.
            bodies = int(rng.integers(2, 5))
            makers = [
                lambda r: samples.make_cylinder(float(r.uniform(3, 10)), float(r.uniform(5, 30))),
                lambda r: samples.make_sphere(float(r.uniform(3, 10))),
                lambda r: samples.make_box(*(float(v) for v in r.uniform(5, 30, 3))),
                lambda r: samples.make_box_with_hole(30, 30, 10, float(r.uniform(2, 6))),
            ]
            build = lambda r=rng, k=bodies, m=makers: samples.make_compound(  # noqa: E731
                m[int(r.integers(0, len(m)))](r) for _ in range(k)
            )
        else:
            build = lambda r=rng: cut(  # noqa: E731
                chamfered_box(60, 40, 20, 1.5),
                *(
                    cylinder(float(x), float(y), -1, float(r.uniform(2, 4)), 30)
                    for x, y in zip(r.uniform(8, 52, 6), r.uniform(8, 32, 6), strict=True)
                ),
            )
        yield stem, build, bodies
        index += 1


def write_parts(directory: Path, n_bodies: int, seed: int) -> list[Path]:
    """Write STEP files of parametric parts until they hold ``n_bodies`` bodies or more."""
    from cadstore.cad import samples

    directory.mkdir(parents=True, exist_ok=True)
    files, bodies = [], 0
    for stem, build, count in _parts(seed):
        if bodies >= n_bodies:
            break
        path = directory / f"{stem}.step"
        if not path.exists():
            samples.write_step(build(), path)
        files.append(path)
        bodies += count
    return files


def _read_item(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from cadstore import OptStorage

    with OptStorage(path[: -len(".data")], mode="r") as storage:
        item = {key: storage.load_data(key) for key in storage.get_keys()}
        metadata = storage.load_metadata()
    for key in _RECORDED_BY_STORAGE:
        metadata.pop(key, None)
    return item, metadata


def real_items(
    cache_dir: str | os.PathLike[str], n_bodies: int, seed: int = 0, workers: int = 2
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Return ``n_bodies`` real encoder items ``(name, item, metadata)``, cached.

    Parameters
    ----------
    cache_dir
        Where the STEP files and the encoded items are kept between runs.
    n_bodies
        How many bodies (items) to return, in a stable order (file, then body).
    seed
        Seed of the part dimensions.
    workers
        Encoder worker processes for what is not cached yet.
    """
    from cadstore.encode import ENCODED_DIR, encode_files, item_name

    root = Path(cache_dir) / f"real-seed{seed}"
    files = write_parts(root / "parts", n_bodies, seed)
    out = root / "encoded"
    report = encode_files(files, out, workers=workers)
    if report.failed:
        failures = "; ".join(f"{f.get('file')}: {f.get('reason')}" for f in report.failed[:5])
        print(f"warning: {len(report.failed)} bodies failed to encode: {failures}")
    items = []
    for path in files:
        index = 0
        while True:
            data = out / ENCODED_DIR / f"{item_name(path, index)}.zarr.data"
            if not data.exists():
                break
            items.append((data.name[: -len(".zarr.data")], *_read_item(str(data))))
            index += 1
    if len(items) < n_bodies:
        raise RuntimeError(f"only {len(items)} of {n_bodies} bodies could be encoded")
    return items[:n_bodies]
