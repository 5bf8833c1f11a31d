#!/usr/bin/env python3
"""Write the old-format fixtures of ``tests/fixtures/old_format/`` with cadstore at 4254135.

Commit 4254135 predates the dataset layout of issue 18 (item frames, face-pair arrays
stored as triangles in ``faceface_upper``); datasets written then must stay readable.
This script MUST run with the cadstore of that commit on its path, never the current one
(it checks the commit and exits otherwise), from a clone of this repository::

    git worktree add /tmp/cadstore-4254135 4254135
    PYTHONPATH=/tmp/cadstore-4254135/src python3 scripts/make_old_format_fixtures.py
    git worktree remove /tmp/cadstore-4254135

It replaces the contents of ``tests/fixtures/old_format/`` (or ``--out DIR``) with:

* ``items/old_item_<i>.zarr.data``: four items written by that commit's ``OptStorage``
  (through :func:`cadstore.synthetic.write_item`), of 3, 0, 1 and 5 faces, each with
  faces, edges, the graph and the four face-pair arrays (``extended_adjacency``,
  ``face_pair_edges_path``, ``d2_distance``, ``a3_distance``) and its metadata;
* ``zip/old.dataset`` + ``old.infoset`` + ``old.attribset`` + ``old.flow``: those items
  merged by :func:`cadstore.merge` into the zip form, then split at random (seed 0) with
  ``DatasetLoader.split``, which records the split in the dataset and its tables;
* ``directory/old.dataset/``: the same items merged by ``merge_items(...,
  directory=True)``, the directory form (that commit writes no tables beside it: the
  dataset holds its own);
* ``expected.npz``: every array of every item as generated, key ``<item>/<key>`` (graph
  members ``<item>/graph/<member>``, ``num_nodes`` a 0-d int64), plain numeric arrays
  that ``np.load(..., allow_pickle=False)`` reads;
* ``expected.json``: the commit, the generator's settings, each item's face count and
  metadata, and the split.

The generated values are stored rather than regenerated in the tests because the
generator changed after that commit (``edge_convexities`` codes were swapped), so the
same seed no longer gives the same items.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

OLD_COMMIT = "42541351c2eddef40114c82fbad9b6ff8b57923f"
SEED = 7
FACES = (3, 0, 1, 5)
FACE_PAIRS = ("d2_distance", "a3_distance", "extended_adjacency", "face_pair_edges_path")
CONFIG = {"pointsamples": 4, "ugrid": 3, "path_len": 4, "num_bins": 8}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "old_format"


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


def _no_faces(item: dict[str, Any]) -> dict[str, Any]:
    """A generated one-face item with every face, edge and face-pair row removed."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        if key == "graph":
            out[key] = {
                "edges_source": value["edges_source"][:0],
                "edges_destination": value["edges_destination"][:0],
                "num_nodes": 0,
            }
        elif key in FACE_PAIRS:
            out[key] = value[:0, :0]
        else:
            out[key] = value[:0]
    return out


def write(out: Path) -> None:
    import cadstore
    from cadstore.dataset import DatasetLoader
    from cadstore.merging import merge_items
    from cadstore.synthetic import WorkloadConfig, make_item, make_item_metadata, write_item

    config = WorkloadConfig(**CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "items").mkdir()
        arrays: dict[str, np.ndarray] = {}
        items: dict[str, Any] = {}
        paths = []
        for index, faces in enumerate(FACES):
            name = f"old_item_{index}"
            item = make_item(index, seed=SEED, config=config, n_faces=max(faces, 1))
            if faces == 0:
                item = _no_faces(item)
            metadata = make_item_metadata(index, seed=SEED, config=config, n_faces=max(faces, 1))
            paths.append(
                write_item(work / "items" / f"{name}.zarr", item, metadata, summary_dir=False)
            )
            for key, value in item.items():
                if key == "graph":
                    for member, array in value.items():
                        arrays[f"{name}/graph/{member}"] = np.asarray(
                            array, dtype=np.int64 if member == "num_nodes" else None
                        )
                else:
                    arrays[f"{name}/{key}"] = np.asarray(value)
            items[name] = {"faces": faces, "metadata": metadata}

        cadstore.merge(paths, str(work / "zip" / "old.dataset"))
        with DatasetLoader(flow_output_file=str(work / "zip" / "old.flow")) as loader:
            split = loader.split("random", train=0.5, validation=0.25, test=0.25, random_state=0)
            subsets = {
                part: sorted(int(i) for i in loader.get_dataset(part).indices)
                for part in ("train", "validation", "test")
            }
        merge_items(paths, work / "directory" / "old.dataset", directory=True)

        for array in arrays.values():
            assert array.dtype.kind in "biuf", array.dtype
        np.savez_compressed(work / "expected.npz", **arrays)
        summary = {
            "written_by": f"cadstore {OLD_COMMIT} (scripts/make_old_format_fixtures.py)",
            "seed": SEED,
            "workload_config": CONFIG,
            "items": items,
            "split": {"counts": list(split), "codes": subsets},
        }
        (work / "expected.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")

        out.mkdir(parents=True, exist_ok=True)
        for old in ("items", "zip", "directory", "expected.npz", "expected.json"):
            target = out / old
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for new in ("items", "zip", "directory", "expected.npz", "expected.json"):
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
