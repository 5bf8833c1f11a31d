"""The pipeline end to end: from CAD parts to a training loop, through every stage.

This is the one module that joins the stages (:mod:`cadstore.encode`,
:mod:`cadstore.merging`, :mod:`cadstore.dataset`, the report); each stage knows only the
ones before it. ``cadstore demo`` runs it on data it makes itself:

1. **items**: with OpenCascade installed (the ``cad`` extra), it builds the parametric
   sample parts (brackets, plates with holes, shafts), writes them as STEP files and
   encodes every body with :class:`~cadstore.cad.BrepEncoder` in worker processes;
   without it, it generates realistic encoded items (:mod:`cadstore.synthetic`).
   Each item is one ``.data`` file, checked by reading it back.
2. **merge** into ``demo.dataset`` with its ``.infoset``, ``.attribset`` and ``.flow``;
3. **explore**: the table of contents, the part families and a face-type distribution;
4. **split** train/validation/test, stratified on the part family (``part_family``, a
   categorical label of every item: bracket, plate, shaft, ...);
5. **train-ready loading**: one epoch through a PyTorch ``DataLoader`` with two worker
   processes, when torch is installed, counting the labels it delivers;
6. **report**: ``report.html``, when matplotlib is installed.

Running it again reuses what is already there (encoding resumes; the merge is redone).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from collections import Counter
from typing import Any

from cadstore.schema import SchemaBuilder
from cadstore.storage.opt import OptStorage
from cadstore.storage.values import values_equal
from cadstore.synthetic import CATEGORIES, iter_items, write_item

__all__ = ["LABEL", "run_demo"]

#: The label every demo item carries (categorical metadata), and the split stratifies on.
LABEL = "part_family"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _schema() -> dict[str, object]:
    builder = SchemaBuilder(domain="CAD_demo").from_template("cad_advanced")
    builder.define_file_metadata("size_cadfile", "int64", "Size of the source CAD file")
    builder.define_file_metadata("processing_time", "float32", "Encoding time in seconds")
    builder.define_categorical_metadata("file_label", "int32", "Part class")
    builder.define_categorical_metadata(LABEL, "str", "Family of the part", values=list(CATEGORIES))
    builder.set_metadata_routing_rules(
        file_level_patterns=["size_*", "processing_*"], categorical_patterns=["*_label", "category"]
    )
    return builder.build()


def _generated_items(encoded: str, n_items: int, seed: int) -> dict[str, Any]:
    os.makedirs(encoded, exist_ok=True)
    schema = _schema()
    write_ms: list[float] = []
    read_ms: list[float] = []
    for name, item, metadata in iter_items(n_items, seed=seed):
        metadata = {**metadata, LABEL: metadata["category"]}
        path = os.path.join(encoded, f"{name}.zarr")
        t0 = time.perf_counter()
        write_item(path, item, metadata, schema=schema, mode="w")
        t1 = time.perf_counter()
        with OptStorage(path) as again:
            loaded = {key: again.load_data(key) for key in again.get_keys()}
        read_ms.append((time.perf_counter() - t1) * 1e3)
        write_ms.append((t1 - t0) * 1e3)
        if not values_equal(loaded, item):
            raise SystemExit(f"item {name} did not read back identically")
    print(
        f"[1/6] generated {n_items} realistic items into {encoded}: write median "
        f"{statistics.median(write_ms):.1f} ms, read median {statistics.median(read_ms):.1f} "
        "ms per item, every item read back identically"
    )
    return {"items": n_items, "source": "generated"}


def _cad_items(
    output: str, parts: int, seed: int, workers: int | None
) -> tuple[str, dict[str, Any]]:
    from cadstore.encode import encode_sample_set

    report = encode_sample_set(
        os.path.join(output, "cad"), count=parts, seed=seed, workers=workers, merge=False
    )
    encoded = os.path.join(output, "cad", "encoded")
    print(
        f"[1/6] encoded {len(report.encoded)} bodies from {parts} sample CAD parts with "
        f"OpenCascade ({len(report.skipped)} already encoded, {len(report.failed)} failed) "
        f"in {report.seconds:.1f} s -> {encoded}"
    )
    return encoded, {"items": len(report.encoded) + len(report.skipped), "source": "cad"}


def _face_type_names(explorer: Any) -> dict[int, str]:
    from cadstore.errors import DatasetError

    try:
        table = explorer.get_descriptions("face_types")
    except DatasetError:
        # Generated items carry no description table; the specified codes name them.
        from cadstore.vocabulary import FACE_TYPES

        return dict(FACE_TYPES)
    return {int(i): str(n) for i, n in zip(table["id"], table["name"], strict=True)}


def _epoch(loader: Any) -> str:
    import torch
    from torch.utils.data import DataLoader

    train = loader.get_dataset("train")
    dataset, collate = train.to_torch_with_collate()
    batches = DataLoader(dataset, batch_size=16, shuffle=True, num_workers=2, collate_fn=collate)
    t0 = time.perf_counter()
    n_items = n_nodes = 0
    seen: Counter[str] = Counter()
    for batch in batches:
        n_items += int(batch["batch_size"]) if "batch_size" in batch else len(batch["name"])
        graph = batch.get("graph", {})
        nodes = batch.get("num_nodes", graph.get("num_nodes") if isinstance(graph, dict) else None)
        if isinstance(nodes, torch.Tensor):
            n_nodes += int(nodes.sum())
        seen.update(str(label) for label in batch.get("labels", {}).get(LABEL, ()))
    seconds = time.perf_counter() - t0
    labels = ", ".join(f"{name} {count}" for name, count in sorted(seen.items()))
    return (
        f"one epoch over {n_items} training items ({n_nodes} graph nodes; {LABEL}: "
        f"{labels or 'none'}) in {seconds:.1f} s with DataLoader(num_workers=2), "
        "straight from the .dataset"
    )


def run_demo(
    output: str = "demo_output",
    n_items: int = 200,
    seed: int = 0,
    *,
    cad: bool | None = None,
    parts: int = 24,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run the pipeline (see the module docstring); return a summary.

    Parameters
    ----------
    output
        Working directory.
    n_items
        Generated items when CAD is not used.
    seed
        Seed of the generated items and sample parts.
    cad
        Use OpenCascade sample parts; ``None`` decides by whether it is installed.
    parts
        Number of sample CAD parts.
    workers
        Worker processes for encoding and threads for merging (default: every core).
    """
    started = time.perf_counter()
    os.makedirs(output, exist_ok=True)
    use_cad = _has("OCP") if cad is None else cad
    if use_cad:
        encoded, summary = _cad_items(output, parts, seed, workers)
    else:
        encoded = os.path.join(output, "encoded")
        summary = _generated_items(encoded, n_items, seed)

    from cadstore.merging import merge

    dataset = os.path.join(output, "demo.dataset")
    result = merge(encoded, dataset, workers=workers, overwrite=True)
    print(
        f"[2/6] merged {len(result.items)} items into {dataset} in {result.seconds:.1f} s: "
        f"{result.raw_bytes / 1e6:.1f} MB of arrays -> {result.stored_bytes / 1e6:.1f} MB "
        f"({len(result.errors)} skipped)"
    )

    from cadstore.dataset.explorer import DatasetExplorer

    flow = os.path.join(output, "demo.flow")
    with DatasetExplorer(flow_output_file=flow) as explorer:
        print("[3/6] table of contents:")
        print(explorer.table_of_contents())
        dist = explorer.create_distribution("face_types", bins=None, group="faces")
        names = _face_type_names(explorer)
        pairs = ", ".join(
            f"{names.get(int(code), int(code))} {int(count)} ({len(codes)} items)"
            for code, count, codes in zip(
                dist["categories"], dist["hist"], dist["file_id_codes_in_bins"], strict=True
            )
            if count
        )
        print(f"      faces by type: {pairs}")
        families = explorer.get_file_info_all()[LABEL].value_counts().sort_index()
        print(
            f"      items by {LABEL}: "
            + ", ".join(f"{name} {count}" for name, count in families.items())
        )

    from cadstore.dataset.loader import DatasetLoader
    from cadstore.errors import DatasetError

    loader = DatasetLoader(flow_output_file=flow)
    try:

        def split_on(key: str) -> Any:
            return loader.split(
                key, train=0.6, validation=0.2, test=0.2, random_state=seed, force_reset=True
            )

        try:
            split = split_on(LABEL)
            how = f"stratified on {LABEL}"
        except DatasetError:
            # A few items, each of a family of its own: nothing to stratify on.
            split = split_on("random")
            how = f"at random (too few items per {LABEL} to stratify)"
        print(f"[4/6] split {how}: train {split[0]}, validation {split[1]}, test {split[2]}")
        if _has("torch"):
            print(f"[5/6] {_epoch(loader)}")
        else:
            print(
                "[5/6] torch is not installed: skipping the DataLoader epoch "
                "(pip install torch==2.13.0)"
            )
    finally:
        loader.close_resources()

    report_path = os.path.join(output, "report.html")
    if _has("matplotlib"):
        from cadstore.dataset.report import write_report

        write_report(dataset, report_path, title="cadstore demo dataset")
        print(f"[6/6] wrote {report_path}")
    else:
        print(
            "[6/6] matplotlib is not installed: skipping the report "
            "(pip install 'cadstore[report]')"
        )
    seconds = time.perf_counter() - started
    print(f"done in {seconds:.1f} s")
    summary.update(
        {
            "dataset": dataset,
            "merged": len(result.items),
            "seconds": seconds,
            "report": report_path if os.path.exists(report_path) else None,
        }
    )
    return summary
