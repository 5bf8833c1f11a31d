"""The flow framework, run as the specified system's users write flows.

The tasks below are written in the users' style (an extract task gathering STEP files with
``CADFileRetriever``, a transform task that sets a schema, pushes encoder features, saves
metadata, compresses and returns ``storage.get_file_path("")``) and run with
``create_flow(...).process(...)`` on real sample parts, in real worker processes.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("OCP")
pytest.importorskip("pandas")

import cadstore
from cadstore.cad import samples
from cadstore.cadaccess import HOOPSLoader
from cadstore.cadencoder import BrepEncoder
from cadstore.dataset import DatasetExplorer, DatasetLoader
from cadstore.encode import item_name
from cadstore.errors import FlowError, InvalidDataError, OutputExistsError
from cadstore.failures import describe, failure_fields
from cadstore.flowmanager import flowtask
from cadstore.format.manifest import read_manifest
from cadstore.io import resolve
from cadstore.schema import SchemaBuilder
from cadstore.storage import CADFileRetriever, DataStorage, LocalStorageProvider

# ---------------------------------------------------------------------------- the tasks
builder = SchemaBuilder(domain="Parts", version="1.0", description="flow test schema")
builder.define_file_metadata("size_cadfile", "int64", "Size of the CAD file, bytes")
builder.define_categorical_metadata("family", "str", "Part family")
cad_schema = builder.build()

#: Files whose name contains this fail (or hang, or explode) in the faulty tasks below.
FAULTY = "shaft"


@flowtask.extract(name="gather cad files", inputs=["cad_datasources"], outputs=["cad_dataset"])
def gather_files(source: str) -> list[str]:
    provider = LocalStorageProvider(directory_path=source)
    retriever = CADFileRetriever(storage_provider=provider, formats=[".stp", ".step"])
    return retriever.get_file_list()


def _encode(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> None:
    cad_model = cad_loader.create_from_file(cad_file)
    storage.set_schema(cad_schema)
    encoder = BrepEncoder(cad_model.get_brep(), storage)
    encoder.push_face_indices()
    encoder.push_face_attributes()
    encoder.push_face_discretization(pointsamples=16)
    encoder.push_edge_attributes()
    encoder.push_face_adjacency_graph()
    storage.save_metadata("Item", str(cad_file))
    storage.save_metadata("size_cadfile", os.path.getsize(cad_file))
    storage.save_metadata("family", Path(cad_file).stem.split("_")[0])


@flowtask.transform(name="Preparing data", inputs=["cad_dataset"], outputs=["cad_files_encoded"])
def encode_data(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> str:
    _encode(cad_file, cad_loader, storage)
    storage.compress_store()
    return storage.get_file_path("")


@flowtask.transform(name="no compress", inputs=["cad_dataset"], outputs=["counts"])
def encode_without_compress(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> Any:
    _encode(cad_file, cad_loader, storage)
    return (len(storage.load_data("face_areas")), len(storage.load_data("edge_lengths")))


@flowtask.transform(name="faulty", inputs=["cad_dataset"], outputs=["cad_files_encoded"])
def encode_or_fail(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> str:
    if FAULTY in os.path.basename(cad_file):
        raise ValueError(f"cannot encode {os.path.basename(cad_file)}")
    return encode_data(cad_file, cad_loader, storage)


@flowtask.transform(name="hanging", inputs=["cad_dataset"], outputs=["cad_files_encoded"])
def encode_or_hang(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> str:
    if FAULTY in os.path.basename(cad_file):
        time.sleep(600)
    return encode_data(cad_file, cad_loader, storage)


@flowtask.transform(name="exploding", inputs=["cad_dataset"], outputs=["cad_files_encoded"])
def encode_or_explode(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> str:
    if FAULTY in os.path.basename(cad_file):
        np.ones(8 * 2**30, dtype=np.uint8)  # 8 GiB: refused by the memory guard
    return encode_data(cad_file, cad_loader, storage)


@flowtask.transform(name="counted", inputs=["cad_dataset"], outputs=["cad_files_encoded"])
def encode_and_count(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> str:
    calls = os.environ["FLOW_TEST_CALLS"]
    with open(calls, "a") as fh:
        fh.write(os.path.basename(cad_file) + "\n")
    return encode_data(cad_file, cad_loader, storage)


@flowtask.transform(name="half way", inputs=["cad_files"], outputs=["out"])
def save_then_stop(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> str:
    storage.save_data("face_areas", np.arange(3, dtype=np.float32))
    if "published" in cad_file:  # the task publishes the item itself, then fails
        storage.compress_store()
    if "bad" in cad_file:
        raise RuntimeError("failed half way")
    if "slow" in cad_file:
        time.sleep(600)
    return cad_file


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four sample STEP parts (brackets, plates, a shaft) and a file that is not STEP."""
    directory = tmp_path_factory.mktemp("parts")
    samples.write_sample_set(directory, count=4, seed=5)
    (directory / "notes.txt").write_text("not a CAD file")
    return directory


def _run(
    out: Path, parts: Path, tasks: list[Any] | None = None, **options: Any
) -> tuple[Any, dict[str, Any], str]:
    clean = options.pop("clean", True)
    flow = cadstore.create_flow(
        name=options.pop("name", "parts_flow"),
        tasks=tasks or [gather_files, encode_data],
        flows_outputdir=str(out),
        ml_task="Part classification test",
        **options,
    )
    return flow.process(inputs={"cad_datasources": [str(parts)]}, clean_ouput_dir=clean)


@pytest.fixture(scope="module")
def forked_run(
    tmp_path_factory: pytest.TempPathFactory, parts: Path
) -> tuple[Any, dict[str, Any], str]:
    """The flow run on two forked workers."""
    return _run(tmp_path_factory.mktemp("forked"), parts, max_workers=2)


@pytest.fixture(scope="module")
def debug_run(
    tmp_path_factory: pytest.TempPathFactory, parts: Path
) -> tuple[Any, dict[str, Any], str]:
    """The same flow with debug=True: in this process, one item after the other."""
    return _run(tmp_path_factory.mktemp("debug"), parts, debug=True)


def _step_files(parts: Path) -> list[Path]:
    return sorted(parts.glob("*.step"))


def _names(parts: Path) -> list[str]:
    return sorted(item_name(p, 0) for p in _step_files(parts))


# ---------------------------------------------------------------------------- the flow
def test_a_flow_in_the_specified_style_runs_under_fork_into_the_specified_layout(
    forked_run: tuple[Any, dict[str, Any], str], parts: Path
) -> None:
    output, _, flow_file = forked_run
    folder = Path(flow_file).parent
    assert folder == Path(output.flow_dir)
    assert folder.parent.name == "flows" and folder.name == "parts_flow"
    for name in ("parts_flow.flow", "parts_flow.dataset", "parts_flow.infoset"):
        assert (folder / name).is_file(), name
    assert (folder / "parts_flow.attribset").is_file()
    assert json.loads((folder / "error_summary.json").read_text()) == []
    assert "Merging 4 encoded files" in (folder / "flow_log.log").read_text()
    names = _names(parts)
    assert sorted(p.stem for p in (folder / "encoded").glob("*.data")) == names
    # The transform's outputs: what each call returned (storage.get_file_path(""), the
    # store path to which the specified custom-merge tasks append ".data"), in input order.
    assert output["cad_files_encoded"] == [
        str(folder / "encoded" / item_name(p, 0)) for p in _step_files(parts)
    ]
    assert all(Path(f"{path}.data").is_file() for path in output["cad_files_encoded"])
    assert output["cad_dataset"] == [str(p) for p in _step_files(parts)]
    # The layout opens where the specified users open it.
    explorer = DatasetExplorer(flow_output_file=flow_file)
    info = explorer.get_file_info_all()
    assert sorted(info["name"]) == names
    assert set(info["family"]) == {"bracket", "plate", "shaft"}
    loader = DatasetLoader(
        merged_store_path=str(folder / "parts_flow.dataset"),
        parquet_file_path=str(folder / "parts_flow.infoset"),
    )
    train, validation, test = loader.split(
        key="random", train=0.5, validation=0.25, test=0.25, random_state=0
    )
    assert (train, validation, test) == (2, 1, 1)
    assert len(loader.get_dataset("train")) == 2
    loader.close_resources()
    explorer.close()


def test_the_flow_file_and_summary_hold_the_specified_keys(
    forked_run: tuple[Any, dict[str, Any], str],
) -> None:
    _, summary, flow_file = forked_run
    document = json.loads(Path(flow_file).read_text())
    for doc in (document, summary):
        for key in (
            "flow_name",
            "flow_data",
            "flow_info",
            "flow_attributes",
            "Duration [seconds]",
            "file_count",
            "error_distribution",
            "Flow Specifications",
        ):
            assert key in doc, key
        assert doc["flow_name"] == "parts_flow"
        assert doc["file_count"] == 4
        assert doc["error_distribution"] == {}
        assert doc["Flow Specifications"] == {
            "max_workers": 2,
            "sequential_mode": False,
            "storage_type": "optimized",
            "ml_task": "Part classification test",
        }
        durations = doc["Duration [seconds]"]
        assert {"total", "gather cad files", "Preparing data"} <= set(durations)
        assert durations["total"] == pytest.approx(
            sum(v for k, v in durations.items() if k != "total")
        )
    # cadstore's own reader still reads it, commit stamp included.
    manifest = read_manifest(resolve(flow_file))
    assert manifest.is_cadstore and document["commit"]
    assert summary["flow_data"] == manifest.dataset.path
    assert os.path.isabs(summary["flow_info"])


def test_previews_are_drawn_and_listed_in_the_infoset(
    forked_run: tuple[Any, dict[str, Any], str], parts: Path
) -> None:
    _, _, flow_file = forked_run
    folder = Path(flow_file).parent
    pngs = sorted((folder / "stream_cache" / "png").glob("*.png"))
    assert [p.stem for p in pngs] == _names(parts)
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 1000  # a drawing, not an empty canvas
    with DatasetExplorer(flow_output_file=flow_file) as explorer:
        paths = explorer.get_stream_cache_paths()
    listed = dict(zip(paths["name"], paths["stream_cache_png"], strict=True))
    assert listed == {p.stem: str(p) for p in pngs}


def test_debug_mode_runs_in_this_process_with_the_same_results(
    forked_run: tuple[Any, dict[str, Any], str],
    debug_run: tuple[Any, dict[str, Any], str],
    parts: Path,
) -> None:
    _, summary, flow_file = debug_run
    assert summary["Flow Specifications"]["sequential_mode"] is True
    folders = Path(forked_run[2]).parent, Path(flow_file).parent
    for name in _names(parts):
        fork_png, debug_png = (f / "stream_cache" / "png" / f"{name}.png" for f in folders)
        assert fork_png.read_bytes() == debug_png.read_bytes()
    with (
        DatasetExplorer(flow_output_file=forked_run[2]) as a,
        DatasetExplorer(flow_output_file=flow_file) as b,
    ):
        for group, array in (("faces", "face_areas"), ("graph", "edges_source")):
            np.testing.assert_array_equal(
                np.asarray(a.get_array_data(group, array)),
                np.asarray(b.get_array_data(group, array)),
            )


def test_results_do_not_depend_on_the_number_of_workers(
    forked_run: tuple[Any, dict[str, Any], str], parts: Path, tmp_path: Path
) -> None:
    _, _, flow_file = _run(tmp_path, parts, max_workers=1)
    two, one = Path(forked_run[2]).parent, Path(flow_file).parent
    for name in _names(parts):
        assert (two / "encoded" / f"{name}.data").read_bytes() != b""
        items = [OptStorageView(f / "encoded" / f"{name}.data") for f in (two, one)]
        assert items[0] == items[1]
    info = [json.loads((f / f"{f.name}.flow").read_text())["file_count"] for f in (two, one)]
    assert info == [4, 4]


def OptStorageView(path: Path) -> str:
    """Every array and the metadata of an item as JSON, the flow's own folder left out."""
    with cadstore.OptStorage(str(path)) as item:
        content = {
            "arrays": {k: item.load_data(k) for k in item.get_keys()},
            "metadata": item.load_metadata(),
        }
    text = json.dumps(content, sort_keys=True, default=lambda a: np.asarray(a).tolist())
    return text.replace(str(path.parents[1]), "<flow>")


def test_a_task_that_does_not_compress_is_finalised_by_the_framework(
    parts: Path, tmp_path: Path
) -> None:
    output, summary, _ = _run(
        tmp_path, parts, tasks=[gather_files, encode_without_compress], max_workers=2
    )
    assert output.errors == []
    assert all(isinstance(c, tuple) and c[0] > 0 for c in output["counts"])
    assert summary["file_count"] == 4
    encoded = Path(output.flow_dir) / "encoded"
    assert sorted(p.name for p in encoded.iterdir()) == [f"{n}.data" for n in _names(parts)]


# ---------------------------------------------------------------------------- failures
def test_a_failing_item_is_isolated_in_the_error_summary(parts: Path, tmp_path: Path) -> None:
    output, summary, flow_file = _run(
        tmp_path, parts, tasks=[gather_files, encode_or_fail], max_workers=2
    )
    shafts = [p for p in _step_files(parts) if FAULTY in p.name]
    entries = json.loads((Path(flow_file).parent / "error_summary.json").read_text())
    assert [e["item"] for e in entries] == [str(p) for p in shafts]
    entry = entries[0]
    assert entry["item_index"] == _step_files(parts).index(shafts[0])
    assert entry["worker_pid"] not in (None, os.getpid())
    assert entry["error"] == f"ValueError: cannot encode {shafts[0].name}"
    assert any("encode_or_fail" in line for line in entry["logs"])
    assert entry["task"] == "faulty" and entry["name"] == item_name(shafts[0], 0)
    assert summary["error_distribution"] == {"ValueError": len(shafts)}
    assert summary["file_count"] == 4 - len(shafts)
    assert len(output["cad_files_encoded"]) == 4 - len(shafts)


def test_the_time_limit_kills_a_hung_task(parts: Path, tmp_path: Path) -> None:
    output, summary, _ = _run(
        tmp_path,
        parts,
        tasks=[gather_files, encode_or_hang],
        max_workers=2,
        # Long enough for the parts that do not hang to encode on a loaded machine: at 2 s,
        # with a full suite and other tests sharing two cores, brackets ran out of time.
        parallel_task_kwargs={"time_limit_overall": 10},
    )
    shafts = [str(p) for p in _step_files(parts) if FAULTY in p.name]
    assert [e["item"] for e in output.errors] == shafts
    assert {e["reason"] for e in output.errors} == {"timeout"}
    assert "time limit of 10 s" in output.errors[0]["error"]
    assert summary["file_count"] == 4 - len(shafts)


def test_the_memory_guard_marks_an_exploding_item_too_heavy(parts: Path, tmp_path: Path) -> None:
    output, _, _ = _run(
        tmp_path,
        parts,
        tasks=[gather_files, encode_or_explode],
        max_workers=2,
        # The default guard: 4 GiB more than each worker maps when it starts.
        parallel_task_kwargs={"skip_heavy_files": True},
    )
    shafts = [str(p) for p in _step_files(parts) if FAULTY in p.name]
    assert [e["item"] for e in output.errors] == shafts
    assert {e["reason"] for e in output.errors} == {"too_heavy"}
    assert "MemoryError" in output.errors[0]["error"]


def test_the_default_memory_guard_counts_from_the_spawned_workers_size(
    parts: Path, tmp_path: Path
) -> None:
    """A spawned worker starts far smaller than its parent: a default cap of the parent's
    size plus 4 GiB let it allocate 8 GiB when the parent mapped 6 GiB more (seen in the
    full suite, whose process had grown large)."""
    import mmap

    reserved = mmap.mmap(-1, 6 * 2**30, prot=mmap.PROT_READ)  # address space, no memory
    try:
        output, _, _ = _run(
            tmp_path,
            parts,
            tasks=[gather_files, encode_or_explode],
            max_workers=2,
            parallel_task_kwargs={"skip_heavy_files": True, "start_method": "spawn"},
        )
    finally:
        reserved.close()
    shafts = [str(p) for p in _step_files(parts) if FAULTY in p.name]
    assert [e["item"] for e in output.errors] == shafts
    assert {e["reason"] for e in output.errors} == {"too_heavy"}


def test_time_limits_follow_the_file_size_buckets(tmp_path: Path) -> None:
    from cadstore.flowmanager.tasks.parallel_executor import TimeLimits

    limits = TimeLimits.from_kwargs(
        {"time_limit_small": 5, "time_limit_medium": 50, "time_limit_large": 500}
    )
    assert limits.bucketing
    assert [limits.limit_for(s) for s in (10, 2_000_000, 20_000_000)] == [5, 50, 500]
    assert limits.limit_for(None) == 120
    # A flow item: by its file's size; an item that names no file takes the overall limit.
    big = tmp_path / "big.step"
    with open(big, "wb") as f:
        f.truncate(20_000_000)
    assert [limits.limit_of(big), limits.limit_of(str(big))] == [500, 500]
    assert limits.limit_of(tmp_path / "missing.step") == 120
    assert limits.limit_of({"part": 1}) == 120
    flat = TimeLimits.from_kwargs(
        {"time_limit_overall": 7, "time_limit_large": 70, "file_size_bucketing": False}
    )
    assert flat.limit_for(20_000_000) == 7
    with pytest.raises(ValueError, match="time_limit_typo"):
        TimeLimits.from_kwargs({"time_limit_typo": 1})


# ---------------------------------------------------------------------------- storage types
def test_memory_storage_warns_and_exports_nothing(parts: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Memory storage cannot be merged into datasets"):
        flow = cadstore.create_flow(
            name="mem",
            tasks=[gather_files, encode_without_compress],
            flows_outputdir=str(tmp_path),
            storage_type="memory",
            max_workers=2,
        )
    output, summary, flow_file = flow.process(inputs={"cad_datasources": [str(parts)]})
    assert len(output["counts"]) == 4 and output.errors == []
    assert output.dataset is None and summary["flow_data"] is None
    folder = Path(flow_file).parent
    assert not list(folder.glob("*.dataset"))
    assert json.loads(Path(flow_file).read_text())["Flow Specifications"]["storage_type"] == (
        "memory"
    )


# ---------------------------------------------------------------------------- the folder
def test_clean_output_refuses_a_folder_that_is_not_a_flow_output(
    parts: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "flows" / "parts_flow"
    folder.mkdir(parents=True)
    precious = folder / "thesis.docx"
    precious.write_text("years of work")
    with pytest.raises(OutputExistsError, match="not a flow's output"):
        _run(tmp_path, parts)
    assert precious.read_text() == "years of work"
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.docx"]


def test_clean_output_deletes_the_previous_flow_output(parts: Path, tmp_path: Path) -> None:
    output, _, _ = _run(tmp_path, parts, debug=True)
    stale = Path(output.flow_dir) / "encoded" / f"{'0' * 32}_0.data"
    stale.write_bytes(b"from an older run")
    flow = cadstore.create_flow(
        name="parts_flow",
        tasks=[gather_files, encode_data],
        flows_outputdir=str(tmp_path),
        debug=True,
    )
    flow.process(inputs={"cad_datasources": [str(parts)]}, clean_output_dir=True)
    assert not stale.exists()
    assert (Path(output.flow_dir) / ".cadstore-flow").is_file()


def test_running_again_without_cleaning_resumes(
    parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FLOW_TEST_CALLS", str(calls))
    out = tmp_path / "out"
    output, _, _ = _run(out, parts, tasks=[gather_files, encode_and_count], max_workers=2)
    assert len(calls.read_text().split()) == 4
    results = output["cad_files_encoded"]
    encoded = Path(output.flow_dir) / "encoded"
    first = _step_files(parts)[0]
    (encoded / f"{item_name(first, 0)}.data").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in encoded.glob("*.data")}
    calls.write_text("")
    output, summary, _ = _run(
        out, parts, tasks=[gather_files, encode_and_count], max_workers=2, clean=False
    )
    assert calls.read_text().split() == [first.name]
    assert {p.name: p.stat().st_mtime_ns for p in encoded.glob("*.data") if p.name in kept} == kept
    assert summary["file_count"] == 4
    # The kept items give the results their run gave (they gave their .data paths).
    assert output["cad_files_encoded"] == results
    # An item whose result was not kept (lost, or not one JSON gives back as it is) is
    # encoded again rather than given another value.
    second = _step_files(parts)[1]
    (Path(output.flow_dir) / "item_results" / f"{item_name(second, 0)}.json").unlink()
    calls.write_text("")
    output, _, _ = _run(
        out, parts, tasks=[gather_files, encode_and_count], max_workers=2, clean=False
    )
    assert calls.read_text().split() == [second.name]
    assert output["cad_files_encoded"] == results


# ---------------------------------------------------------------------------- start methods
def test_tasks_defined_in_a_notebook_cell_run_under_fork(parts: Path, tmp_path: Path) -> None:
    # Defined inside this function, as in a notebook cell: no module can import it.
    @flowtask.transform(name="cell", inputs=["cad_dataset"], outputs=["cad_files_encoded"])
    def cell_task(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> str:
        return encode_data(cad_file, cad_loader, storage)

    output, summary, _ = _run(tmp_path, parts, tasks=[gather_files, cell_task], max_workers=2)
    assert output.errors == [] and summary["file_count"] == 4


def test_spawn_refuses_a_task_it_cannot_import_naming_it(parts: Path, tmp_path: Path) -> None:
    @flowtask.transform(name="cell", inputs=["cad_dataset"], outputs=["cad_files_encoded"])
    def cell_task(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> str:
        return encode_data(cad_file, cad_loader, storage)

    with pytest.raises(FlowError, match=r"cell_task is defined inside a function.*\.py module"):
        _run(
            tmp_path,
            parts,
            tasks=[gather_files, cell_task],
            max_workers=2,
            parallel_task_kwargs={"start_method": "spawn"},
        )


def test_spawned_workers_run_importable_tasks(parts: Path, tmp_path: Path) -> None:
    output, summary, _ = _run(
        tmp_path,
        parts,
        tasks=[gather_files, encode_data],
        max_workers=2,
        parallel_task_kwargs={"start_method": "spawn"},
    )
    assert output.errors == [] and summary["file_count"] == 4


# ---------------------------------------------------------------------------- declarations
def test_decorated_functions_carry_the_specified_attributes() -> None:
    assert encode_data._task_type == "transform"  # type: ignore[attr-defined]
    assert encode_data._task_name == "Preparing data"  # type: ignore[attr-defined]
    assert encode_data._task_inputs == ["cad_dataset"]  # type: ignore[attr-defined]
    assert encode_data._task_outputs == ["cad_files_encoded"]  # type: ignore[attr-defined]
    assert encode_data._parallel_execution is True  # type: ignore[attr-defined]
    assert encode_data._task_class == "ParallelTask"  # type: ignore[attr-defined]
    assert gather_files._task_type == "extract"  # type: ignore[attr-defined]
    from cadstore.flowmanager import list_registered_tasks

    assert {"gather cad files", "Preparing data"} <= {t["name"] for t in list_registered_tasks()}


def test_the_specified_module_paths_exist() -> None:
    import importlib

    for module, names in {
        "cadstore.flowmanager": ["flowtask", "create_flow", "Flow", "FlowOutput", "ParallelTask"],
        "cadstore.flowmanager.flow": ["Flow", "FlowOutput", "setup_logger"],
        "cadstore.flowmanager.flow_builder": [
            "create_flow",
            "flowtask",
            "list_registered_tasks",
            "print_task_registry",
            "validate_function_signature",
            "validate_tasks",
            "TaskDecorators",
        ],
        "cadstore.flowmanager.tasks.parallel_executor": [
            "ParallelExecutor",
            "ParallelTask",
            "StorageType",
        ],
    }.items():
        loaded = importlib.import_module(module)
        assert all(hasattr(loaded, n) for n in names), module
    assert cadstore.create_flow is cadstore.flowmanager.create_flow


def test_bad_declarations_are_flow_errors(tmp_path: Path) -> None:
    def plain(cad_file: str) -> None:
        return None

    with pytest.raises(FlowError, match="decorate it"):
        cadstore.create_flow("x", [plain], tmp_path)
    with pytest.raises(FlowError, match=r"cannot be called with \(cad_file, cad_loader"):
        flowtask.transform(name="bad", inputs=["a"], outputs=["b"])(plain)
    with pytest.raises(FlowError, match="plain folder name"):
        cadstore.create_flow("../escape", [gather_files], tmp_path)
    with pytest.raises(ValueError, match="storage_type"):
        cadstore.create_flow("x", [gather_files], tmp_path, storage_type="zarr")


def test_an_output_folder_that_is_a_url_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A flow writes to a local folder: 's3://bucket/x' used to become ./s3:/bucket/x.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FlowError, match=r"flows_outputdir must be a local path.*'s3://b/x'"):
        cadstore.create_flow("x", [gather_files, encode_data], "s3://b/x")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_input_names_what_is_there(parts: Path, tmp_path: Path) -> None:
    flow = cadstore.create_flow("x", [gather_files, encode_data], tmp_path, debug=True)
    with pytest.raises(FlowError, match=r"needs inputs \['cad_datasources'\].*'sources'"):
        flow.process(inputs={"sources": [str(parts)]})


def test_the_executor_runs_a_parallel_task_directly(parts: Path, tmp_path: Path) -> None:
    from cadstore.flowmanager import ParallelExecutor, ParallelTask

    task = ParallelTask(encode_or_fail, storage_type="optimized", output_dir=tmp_path)
    ParallelExecutor(2).execute(task, [str(p) for p in _step_files(parts)])
    assert len(task.results) == 4
    failed = [r for r in task.results if r["error"] is not None]
    assert len(failed) == len(task.errors) == 1
    assert FAULTY in Path(failed[0]["error"]["item"]).name


def _record_source(cad_file: Any, cad_loader: Any, storage: DataStorage) -> str:
    storage.save_data("source", np.frombuffer(str(cad_file).encode(), dtype=np.uint8))
    return str(cad_file)


def test_the_executor_refuses_a_second_item_of_one_name(tmp_path: Path) -> None:
    """Two inputs whose items have one name (names ignore the extension) were both run,
    the second replacing the first's store, and both reported done; as in a flow, the
    second is now a duplicate, named in its error, and the first's store is its own."""
    from cadstore import OptStorage
    from cadstore.flowmanager import ParallelExecutor, ParallelTask

    task = ParallelTask(_record_source, storage_type="optimized", output_dir=tmp_path)
    ParallelExecutor(2).execute(task, ["parts/bracket.step", "parts/bracket.stl", "parts/nut"])
    assert [r["error"] is None for r in task.results] == [True, False, True]
    assert len(task.errors) == 1 and task.errors[0]["reason"] == "duplicate"
    assert task.errors[0]["item"] == "parts/bracket.stl"
    assert "parts/bracket.step" in task.errors[0]["error"]
    stored = tmp_path / "encoded" / f"{item_name('parts/bracket.step', 0)}"
    with OptStorage(stored, mode="r") as storage:
        assert bytes(storage.load_data("source")) == b"parts/bracket.step"


def test_flow_items_of_any_iterable_are_each_an_item(tmp_path: Path) -> None:
    """A transform's items given as an array or a generator ran as one item (the whole
    collection); an extract returning one path, or an array of paths, raised a raw error
    that stopped the flow. Each element is an item now; a set's, sorted (its own order
    changes from process to process); one that does not sort is refused."""

    @flowtask.transform(name="t", inputs=["cad_files"], outputs=["out"])
    def record(cad_file: Any, cad_loader: Any, storage: DataStorage) -> str:
        return _record_source(cad_file, cad_loader, storage)

    given = {
        "array": np.array(["a.step", "b.step"]),
        "generator": (f for f in ["a.step", "b.step"]),
        "tuple": ("a.step", "b.step"),
    }
    for name, files in given.items():
        flow = cadstore.create_flow(name, [record], tmp_path, debug=True)
        out, _, _ = flow.process(inputs={"cad_files": files})
        assert out["out"] == ["a.step", "b.step"], name
    flow = cadstore.create_flow("set", [record], tmp_path, debug=True)
    out, _, _ = flow.process(inputs={"cad_files": {"b.step", "a.step"}})
    assert out["out"] == ["a.step", "b.step"]  # sorted: the same order in every run
    with pytest.raises(FlowError, match=r"task 't'.*a set of values that do not sort"):
        flow.process(inputs={"cad_files": {"a.step", 1}})
    folder = tmp_path / "src"
    folder.mkdir()
    for stem in ("a", "b"):
        (folder / f"{stem}.step").write_text("x")
    for form in ("path", "array", "set"):

        @flowtask.extract(name="gather", inputs=["src"], outputs=["cad_files"])
        def gather(source: str, form: str = form) -> Any:
            files = sorted(Path(source).glob("*.step"))
            if form == "path":
                return files[0]
            return np.array([str(f) for f in files]) if form == "array" else set(files)

        flow = cadstore.create_flow(f"x-{form}", [gather, record], tmp_path, debug=True)
        out, _, _ = flow.process(inputs={"src": [str(folder)]})
        both = [str(folder / f"{stem}.step") for stem in "ab"]
        want = {"path": [str(folder / "a.step")], "array": both, "set": both}
        assert out["out"] == want[form], form


def test_an_extract_or_transform_declares_one_output() -> None:
    """A transform declaring two outputs had its per-item results dealt out among them by
    position: with two items, one output held item 0's tuple and the other item 1's; with
    three the flow failed after encoding every item. Refused when declared."""
    for kind in ("transform", "extract"):
        decorate = getattr(flowtask, kind)
        with pytest.raises(FlowError, match=rf"'count': an? {kind} task gives one list"):

            @decorate(name="count", inputs=["cad_files"], outputs=["faces", "edges"])
            def count(*args: Any) -> Any:
                return None

    @flowtask.custom(name="pair", inputs=["x"], outputs=["a", "b"])
    def pair(x: Any) -> tuple[Any, Any]:  # a custom task returns one value per output
        return x, x


@pytest.mark.parametrize("kind", ["optimized", "json"])
def test_a_failed_or_timed_out_item_leaves_no_store(tmp_path: Path, kind: str) -> None:
    """A transform that failed (or ran out of time) after saving left a store in
    encoded/ that read as an item: an optimized store was published when the failed
    storage was closed, and a JSON store kept the files it wrote. Only the items done are
    there now; a JSON store there before the run stays."""
    flow = cadstore.create_flow(
        "f",
        [save_then_stop],
        tmp_path,
        max_workers=2,
        storage_type=kind,
        export_visualization=False,
        auto_dataset_export=False,
        parallel_task_kwargs={"time_limit_overall": 3},
    )
    files = ["good.step", "bad.step", "slow.step", "bad_published.step"]
    out, _, _ = flow.process(inputs={"cad_files": files})
    assert out["out"] == ["good.step"]
    assert sorted((e["item"], e["reason"]) for e in out.errors) == [
        ("bad.step", "error"),
        ("bad_published.step", "error"),
        ("slow.step", "timeout"),
    ]
    encoded = Path(out.flow_dir) / "encoded"
    good = item_name("good.step", 0)
    want = [f"{good}.data"] if kind == "optimized" else [good]
    assert sorted(p.name for p in encoded.iterdir() if not p.name.startswith(".")) == want
    # Resumed with a store of the failing item there before the run: it is not removed.
    earlier = encoded / item_name("bad.step", 0)
    earlier.mkdir()
    (earlier / "kept.json").write_text("{}")
    out, _, _ = flow.process(inputs={"cad_files": files[:2]}, clean_ouput_dir=False)
    assert [e["item"] for e in out.errors] == ["bad.step"]
    assert (earlier / "kept.json").read_text() == "{}"


@flowtask.transform(name="repr", inputs=["cad_files"], outputs=["out"])
def record_repr(cad_file: Any, cad_loader: Any, storage: DataStorage) -> str:
    storage.save_data("x", np.arange(2))
    return "done"


def test_an_item_no_worker_can_take_fails_alone(tmp_path: Path) -> None:
    """An item that cannot be sent to a worker process (it holds a lock) raised a raw
    TypeError that stopped the parallel flow, losing the other items' work and writing no
    error summary; ParallelExecutor.execute(function) raised a raw AttributeError."""
    import threading

    from cadstore.flowmanager import ParallelExecutor

    flow = cadstore.create_flow("f", [record_repr], tmp_path, max_workers=2)
    lock = threading.Lock()
    out, _, _ = flow.process(inputs={"cad_files": ["a.step", lock, "c.step"]})
    assert out["out"] == ["done", "done"]
    (failure,) = out.errors
    assert failure["item_index"] == 1 and "cannot be sent to a worker process" in failure["error"]
    summary = json.loads((Path(out.flow_dir) / "error_summary.json").read_text())
    assert [entry["item_index"] for entry in summary] == [1]
    with pytest.raises(FlowError, match="execute\\(\\) takes a ParallelTask"):
        ParallelExecutor(1).execute(record_repr, ["a.step"])  # type: ignore[arg-type]


def test_an_interrupted_run_resumes_from_the_items_it_finished(tmp_path: Path) -> None:
    """Results were kept once the whole run was over: a run interrupted half-way (Ctrl-C,
    a kill) kept none, so a resumed run transformed every item again. Each result is
    kept as it arrives."""
    calls: list[str] = []

    class Stopped(BaseException):
        """What Ctrl-C is to a run (not an item's failure), without stopping pytest."""

    @flowtask.transform(name="count", inputs=["cad_files"], outputs=["counts"])
    def count(cad_file: str, cad_loader: Any, storage: DataStorage) -> int:
        calls.append(cad_file)
        if cad_file == "stop.step" and len(calls) == 3:
            raise Stopped  # the user stops the first run here
        storage.save_data("x", np.arange(3, dtype=np.float32))
        return len(cad_file)

    flow = cadstore.create_flow("f", [count], tmp_path, debug=True, export_visualization=False)
    files = ["a.step", "bb.step", "stop.step", "dddd.step"]
    with pytest.raises(Stopped):
        flow.process(inputs={"cad_files": files})
    calls.clear()
    out, _, _ = flow.process(inputs={"cad_files": files}, clean_ouput_dir=False)
    assert calls == ["stop.step", "dddd.step"]
    assert out["counts"] == [6, 7, 9, 9]


# ---------------------------------------------------------------------------- retrieval
def test_cad_file_retriever_filters_by_format_and_pattern(tmp_path: Path) -> None:
    for name in ("a_part.step", "b_part.STP", "c_bolt.step", "sub/d_part.iges", "e.txt"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    provider = LocalStorageProvider(directory_path=tmp_path)
    names = lambda files: [os.path.relpath(f, tmp_path) for f in files]  # noqa: E731
    assert names(CADFileRetriever(provider).get_file_list()) == [
        "a_part.step",
        "b_part.STP",
        "c_bolt.step",
        "sub/d_part.iges",
    ]
    assert names(CADFileRetriever(provider, formats=["step"]).get_file_list()) == [
        "a_part.step",
        "c_bolt.step",
    ]
    by_glob = CADFileRetriever(provider, formats=[".step", ".stp"], filter_pattern="*_part*")
    assert names(by_glob.get_file_list()) == ["a_part.step", "b_part.STP"]
    by_regex = CADFileRetriever(provider, filter_pattern=r"^[cd]_", use_regex=True)
    assert names(by_regex.get_file_list()) == ["c_bolt.step", "sub/d_part.iges"]
    with pytest.raises(FileNotFoundError):
        LocalStorageProvider(directory_path=tmp_path / "missing")
    with pytest.raises(ValueError, match="not a regex"):
        CADFileRetriever(provider, filter_pattern="(", use_regex=True)


# ---------------------------------------------------------------------------- Dask
def test_a_flow_runs_on_a_dask_cluster_with_the_same_items(
    forked_run: tuple[Any, dict[str, Any], str], parts: Path, tmp_path: Path
) -> None:
    """``parallel_task_kwargs={"dask_client": client}``: the items run as Dask tasks on
    worker processes; they equal the local run's, and a failing item is still isolated."""
    distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        _, summary, flow_file = _run(
            tmp_path,
            parts,
            tasks=[gather_files, encode_or_fail],
            parallel_task_kwargs={"dask_client": client},
        )
        workers = {w["id"] for w in client.scheduler_info()["workers"].values()}
    shafts = [p for p in _step_files(parts) if FAULTY in p.name]
    entries = json.loads((Path(flow_file).parent / "error_summary.json").read_text())
    assert [e["item"] for e in entries] == [str(p) for p in shafts]
    assert entries[0]["error"] == f"ValueError: cannot encode {shafts[0].name}"
    assert summary["file_count"] == 4 - len(shafts) and len(workers) == 2
    local = Path(forked_run[2]).parent
    for name in _names(parts):
        if any(item_name(p, 0) == name for p in shafts):
            continue
        mine = OptStorageView(Path(flow_file).parent / "encoded" / f"{name}.data")
        assert mine == OptStorageView(local / "encoded" / f"{name}.data")
    with pytest.raises(ValueError, match=r"distributed\.Client"):
        cadstore.create_flow(
            name="bad",
            tasks=[gather_files, encode_data],
            flows_outputdir=str(tmp_path / "bad"),
            parallel_task_kwargs={"dask_client": "tcp://127.0.0.1:8786"},
        )


def test_a_resumed_run_gives_each_kept_item_its_result(tmp_path: Path) -> None:
    """Resumed (``clean_ouput_dir=False``), a transform's output held each kept item's
    .data path instead of what the task returned for it ([6, 7] became two paths). The
    results are kept beside the items; one JSON cannot give back as it is (a tuple) makes
    its item run again."""

    @flowtask.transform(name="count", inputs=["cad_files"], outputs=["counts"])
    def count(cad_file: str, cad_loader: Any, storage: DataStorage) -> Any:
        storage.save_data("x", np.arange(3, dtype=np.float32))
        return (1, 2) if cad_file.startswith("t") else len(cad_file)

    flow = cadstore.create_flow("f", [count], tmp_path, debug=True, export_visualization=False)
    files = ["a.step", "bb.step", "t.step"]
    first, _, _ = flow.process(inputs={"cad_files": files})
    assert first["counts"] == [6, 7, (1, 2)]
    again, _, _ = flow.process(inputs={"cad_files": files}, clean_ouput_dir=False)
    assert again["counts"] == [6, 7, (1, 2)]
    kept = sorted(p.name for p in (Path(again.flow_dir) / "item_results").iterdir())
    assert kept == sorted(f"{item_name(f, 0)}.json" for f in files[:2])


@flowtask.transform(name="dies", inputs=["cad_files"], outputs=["out"])
def die_on_dies(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> str:
    """Kill the worker on an item named ``dies``, as a kernel crash does."""
    import signal

    if "dies" in cad_file:
        os.kill(os.getpid(), signal.SIGKILL)
    storage.save_data("face_areas", np.arange(3, dtype=np.float32))
    return cad_file


def _refuse_removing(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make the file system refuse to remove the file ``name`` (EACCES, naming no file)."""
    import errno

    real_unlink = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.path.basename(os.fspath(path)) == name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)


def test_an_error_escaping_a_local_item_is_reported_as_what_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on a local worker (forked, so that it inherits the refusal): the error
    escaping run_item killed the worker, the item was a crash, and the crash's cleanup in
    the flow's process, refused again, stopped the flow with the bare PermissionError.
    The item fails for its own error, the store left named; the other item is done,
    and the dataset exported holds it alone: the failed item's store, left in encoded/,
    is not merged."""
    files = ["good.step", "bad_published.step"]
    left = f"{item_name(files[1], 0)}.data"
    _refuse_removing(monkeypatch, left)
    flow = cadstore.create_flow(
        "f",
        [save_then_stop],
        tmp_path,
        max_workers=1,
        export_visualization=False,
        parallel_task_kwargs={"start_method": "fork"},
    )
    out, summary, _ = flow.process(inputs={"cad_files": files})
    assert out["out"] == ["good.step"]
    (entry,) = out.errors
    assert entry["item"] == files[1]
    store = Path(out.flow_dir) / "encoded" / left
    assert entry["reason"] == "error", entry
    assert entry["error"] == (
        f"RuntimeError: failed half way; {store}: removing the failed item's store: "
        "permission denied"
    )
    assert store.is_file()
    assert out.dataset is not None and summary["file_count"] == 1


@flowtask.transform(name="first", inputs=["cad_files"], outputs=["a"])
def first_fails_on_x(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> str:
    storage.save_data("face_areas", np.arange(3, dtype=np.float32))
    if "x" in cad_file:
        raise RuntimeError("the first pass fails on x")
    return cad_file


@flowtask.transform(name="second", inputs=["cad_files"], outputs=["b"])
def second_writes_all(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> str:
    storage.save_data("face_areas", np.arange(4, dtype=np.float32))
    return cad_file


def test_the_export_merges_a_store_a_later_task_published(tmp_path: Path) -> None:
    """Found by review: the export left out the store of every item named by a failure
    of the run, also one a later task then published whole (the first task failed on x,
    the second wrote x.data): a done item was missing from the dataset. Only a failed
    item's store that the file system refused to remove is left out."""
    flow = cadstore.create_flow(
        "f",
        [first_fails_on_x, second_writes_all],
        tmp_path,
        max_workers=1,
        export_visualization=False,
        parallel_task_kwargs={"start_method": "fork"},
    )
    out, summary, _ = flow.process(inputs={"cad_files": ["good.step", "x.step"]})
    assert out["b"] == ["good.step", "x.step"]
    assert [(entry["task"], entry["reason"]) for entry in out.errors] == [("first", "error")]
    assert out.dataset is not None and summary["file_count"] == 2


#: The items the extract task below gives for its source ``"items"``.
_CLASSIFIED = ["good.step", "invalid.step", "full.step", "bug.step"]


def _raise_by_name(name: str) -> None:
    """Raise the failure ``name`` asks for: a cadstore error, an OSError, a bug."""
    if "invalid" in name:
        raise InvalidDataError(f"{name}: a face without a surface")
    if "full" in name:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
    if "bug" in name:
        raise KeyError(name)


@flowtask.extract(name="sources", inputs=["sources"], outputs=["cad_files"])
def gather_or_raise(source: str) -> list[str]:
    if source == "items":
        return list(_CLASSIFIED)
    _raise_by_name(source)
    return []


@flowtask.transform(name="classify", inputs=["cad_files"], outputs=["out"])
def raise_by_name(cad_file: str, cad_loader: HOOPSLoader, storage: DataStorage) -> str:
    _raise_by_name(cad_file)
    return cad_file


def test_a_flow_classifies_a_tasks_failure_as_an_encode_does(tmp_path: Path) -> None:
    """A task function's own exception was reason "error" whatever it was ("memory" for a
    MemoryError), where an encode classifies the same exception with failure_fields
    ("invalid_data" for an InvalidDataError, "storage" for an OSError...). A transform's
    item and an extract's source fail with the reason and the error failure_fields gives."""
    expected: dict[str, tuple[str, str]] = {}
    for name in _CLASSIFIED:
        try:
            _raise_by_name(name)
        except Exception as exc:
            expected[name] = (failure_fields(exc, loading=False)["reason"], describe(exc))
    reasons = {name: reason for name, (reason, _) in expected.items()}
    assert reasons == {"invalid.step": "invalid_data", "full.step": "storage", "bug.step": "error"}
    flow = cadstore.create_flow(
        "f",
        [gather_or_raise, raise_by_name],
        tmp_path,
        max_workers=1,
        export_visualization=False,
        auto_dataset_export=False,
    )
    sources = ["items", "invalid.source", "full.source", "bug.source"]
    out, _, _ = flow.process(inputs={"sources": sources})
    assert out["out"] == ["good.step"]
    found = {(e["task"], e["item"]): (e["reason"], e["error"]) for e in out.errors}
    want = {("classify", name): seen for name, seen in expected.items()}
    for name in sources[1:]:
        step = name.replace(".source", ".step")
        reason, error = expected[step]
        want["sources", name] = (reason, error.replace(step, name))
    assert found == want


def test_a_lost_item_whose_store_cannot_be_removed_is_still_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item whose worker was killed (its time limit) after publishing its store, the
    file system refusing to remove that store: the cleanup of the lost item in the flow's
    process raised the bare PermissionError, which stopped the flow and lost the other
    items' report. The item is a timeout whose error names the store left; the store is
    not merged; the other item is done."""
    files = ["good.step", "slow_published.step"]
    left = f"{item_name(files[1], 0)}.data"
    _refuse_removing(monkeypatch, left)
    flow = cadstore.create_flow(
        "f",
        [save_then_stop],
        tmp_path,
        max_workers=1,
        export_visualization=False,
        parallel_task_kwargs={"time_limit_overall": 3, "start_method": "fork"},
    )
    out, summary, _ = flow.process(inputs={"cad_files": files})
    assert out["out"] == ["good.step"]
    (entry,) = out.errors
    assert entry["item"] == files[1] and entry["reason"] == "timeout", entry
    store = Path(out.flow_dir) / "encoded" / left
    assert entry["error"].endswith(f"; {store}: removing the lost item's store: permission denied")
    assert store.is_file()
    assert out.dataset is not None and summary["file_count"] == 1


def test_an_error_escaping_a_dask_item_is_reported_as_what_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Dask, an exception escaping the framework's work on an item (here the file
    system refused to remove the store of an item whose task failed after publishing it)
    was taken for a crash of the item, as if its worker had died; the crash's cleanup on
    the driver was refused again, and the flow stopped with the bare PermissionError. It
    is the item's own failure, the store left named; the other item is done. A worker
    that dies stays a crash (the test below)."""
    distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
    files = ["good.step", "bad_published.step"]
    _refuse_removing(monkeypatch, f"{item_name(files[1], 0)}.data")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        flow = cadstore.create_flow(
            "f",
            [save_then_stop],
            tmp_path,
            export_visualization=False,
            auto_dataset_export=False,
            parallel_task_kwargs={"dask_client": client},
        )
        out, _, _ = flow.process(inputs={"cad_files": files})
    assert out["out"] == ["good.step"]
    (entry,) = out.errors
    assert entry["item"] == files[1]
    assert entry["reason"] == "error", entry
    store = Path(out.flow_dir) / "encoded" / f"{item_name(files[1], 0)}.data"
    assert entry["error"] == (
        f"RuntimeError: failed half way; {store}: removing the failed item's store: "
        "permission denied"
    )


def test_a_dask_worker_that_dies_on_an_item_is_a_crash(tmp_path: Path) -> None:
    """Only a worker that died is a crash: the item it was running is listed as one (the
    other item is done, or lost with the worker if the scheduler had given it to it
    already, a crash too)."""
    import dask

    distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        flow = cadstore.create_flow(
            "f",
            [die_on_dies],
            tmp_path,
            export_visualization=False,
            auto_dataset_export=False,
            parallel_task_kwargs={"dask_client": client},
        )
        out, _, _ = flow.process(inputs={"cad_files": ["good.step", "dies.step"]})
    assert out["out"] in (["good.step"], [])
    assert "dies.step" in [entry["item"] for entry in out.errors]
    for entry in out.errors:
        assert entry["reason"] == "crash" and "KilledWorker" in entry["error"], entry
