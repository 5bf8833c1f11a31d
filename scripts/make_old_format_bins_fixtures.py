#!/usr/bin/env python3
"""Write the fixtures of ``tests/fixtures/old_format_bins/`` with cadstore at 02ba2f1.

Commit 02ba2f1 is the parent of 1c9d8a3, which made the merger qualify by its array a
dimension name the schema declares with two lengths in one group. The encoder's schema
(template ``cad_advanced``) declares ``d2_distance`` on ``bin`` with 64 bins and
``a3_distance`` on ``bin`` with 32, both in ``faceface``: a dataset merged before 1c9d8a3
keeps ``bin`` with both lengths in ``faceface`` (``face_pair_layout="full"``) or
``faceface_upper`` (``"auto"``), and such datasets must stay readable. This script MUST run
with the cadstore of that commit on its path, never the current one (it checks the commit
and exits otherwise), from a clone of this repository::

    git worktree add /tmp/cadstore-02ba2f1 02ba2f1
    PYTHONPATH=/tmp/cadstore-02ba2f1/src python3 scripts/make_old_format_bins_fixtures.py
    git worktree remove /tmp/cadstore-02ba2f1

It replaces the contents of ``tests/fixtures/old_format_bins/`` (or ``--out DIR``) with:

* ``items/bins_item_<i>.zarr.data``: four items written by that commit's ``OptStorage``
  (:func:`cadstore.synthetic.write_item`) with the ``cad_advanced`` schema, of 2, 0, 3 and
  1 faces: ``face_areas`` (float32), symmetric ``d2_distance`` (N, N, 64) and
  ``a3_distance`` (N, N, 32) (float32), ``face_pair_edges_path`` (N, N, 5) (int32), and
  the metadata ``file_label``;
* ``auto/bins.dataset`` + ``.infoset`` + ``.attribset`` + ``.flow``: those items merged by
  :func:`cadstore.merge` (zip form) with ``face_pair_layout="auto"`` (the histograms in
  ``faceface_upper``, as triangles);
* ``full/bins.dataset`` + ``.infoset`` + ``.attribset`` + ``.flow``: the same with
  ``face_pair_layout="full"`` (every face-pair array in ``faceface``);
* ``expected.npz``: every array of every item as written, key ``<item>/<key>``;
* ``expected.json``: the commit, the seed, each item's face count and metadata, and the
  groups and dimension names each dataset stores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

OLD_COMMIT = "02ba2f1df19831c18ac481781fc979a2ab9d8a14"
SEED = 0
FACES = (2, 0, 3, 1)
BINS = {"d2_distance": 64, "a3_distance": 32}
PATH_LEN = 5
LAYOUTS = ("auto", "full")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "old_format_bins"
CONTENTS = ("items", *LAYOUTS, "expected.npz", "expected.json")


def _check_commit() -> None:
    import cadstore

    source = Path(cadstore.__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--", "."],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"cannot tell which commit {source} is at: {exc}")
    if head != OLD_COMMIT or dirty:
        sys.exit(
            f"cadstore is imported from {source} at {head}{' (modified)' if dirty else ''}; "
            f"these fixtures need the unmodified code of {OLD_COMMIT[:7]}:\n"
            f"  git worktree add /tmp/cadstore-{OLD_COMMIT[:7]} {OLD_COMMIT[:7]}\n"
            f"  PYTHONPATH=/tmp/cadstore-{OLD_COMMIT[:7]}/src python3 {sys.argv[0]}"
        )


def _item(rng: np.random.Generator, faces: int) -> dict[str, np.ndarray]:
    arrays = {"face_areas": rng.random(faces).astype(np.float32)}
    for key, bins in BINS.items():
        half = rng.random((faces, faces, bins)).astype(np.float32)
        arrays[key] = half + half.transpose(1, 0, 2)
    shape = (faces, faces, PATH_LEN)
    arrays["face_pair_edges_path"] = rng.integers(-1, 9, shape).astype(np.int32)
    return arrays


def _stored_dims(dataset: Path) -> dict[str, list[str]]:
    """``group/array`` -> the dimension names the dataset stores."""
    found = {}
    with zipfile.ZipFile(dataset) as archive:
        for member in sorted(archive.namelist()):
            parts = member.split("/")
            if len(parts) == 3 and parts[2] == "zarr.json":
                doc = json.loads(archive.read(member))
                found[f"{parts[0]}/{parts[1]}"] = doc.get("dimension_names")
    return found


def write(out: Path) -> None:
    import cadstore
    from cadstore.schema import SchemaBuilder
    from cadstore.synthetic import write_item

    schema = SchemaBuilder(domain="CAD").from_template("cad_advanced").build()
    rng = np.random.default_rng(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "items").mkdir()
        arrays: dict[str, np.ndarray] = {}
        items: dict[str, Any] = {}
        paths = []
        for index, faces in enumerate(FACES):
            name = f"bins_item_{index}"
            item = _item(rng, faces)
            metadata = {"file_label": index % 2}
            store = work / "items" / f"{name}.zarr"
            paths.append(write_item(store, item, metadata, schema=schema, summary_dir=False))
            for key, value in item.items():
                arrays[f"{name}/{key}"] = value
            items[name] = {"faces": faces, "metadata": metadata}

        dims = {}
        for layout in LAYOUTS:
            dataset = work / layout / "bins.dataset"
            cadstore.merge(paths, str(dataset), face_pair_layout=layout)
            dims[layout] = _stored_dims(dataset)

        np.savez_compressed(work / "expected.npz", **arrays)
        summary = {
            "written_by": f"cadstore {OLD_COMMIT} (scripts/make_old_format_bins_fixtures.py)",
            "seed": SEED,
            "bins": BINS,
            "path_len": PATH_LEN,
            "items": items,
            "stored_dims": dims,
        }
        (work / "expected.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")

        out.mkdir(parents=True, exist_ok=True)
        for old in CONTENTS:
            target = out / old
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for new in CONTENTS:
            shutil.move(str(work / new), str(out / new))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture folder")
    args = parser.parse_args()
    _check_commit()
    write(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total:,} bytes of files)")


if __name__ == "__main__":
    main()
