"""Batch encoding: ``encode_files`` and ``cadstore encode`` on parts built at test time.

Covers the item naming, the good items (readable, complete, with their metadata), bad input
isolated in ``error_summary.json``, resuming without touching existing items, the time
limit, worker crashes, the memory guard, the merge and the command line.

Fault tests replace a function of :mod:`cadstore.encode.work` in this process and force the
``fork`` start method, so that the workers inherit the replacement.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("OCP")

from cadstore import OptStorage, encode, synthetic, workers
from cadstore.cad import samples
from cadstore.cli import main
from cadstore.encode import (
    ENCODED_DIR,
    ERROR_SUMMARY,
    EncodeReport,
    encode_files,
    find_cad_files,
    item_base_name,
    item_name,
    naming,
    work,
)
from cadstore.encode import run as encode_run
from cadstore.errors import InvalidDataError

# Keys every item must hold with the default settings (histograms included): the
# synthetic workload mirrors the encoder, so its key list is the one to check against.
ITEM_KEYS = set(synthetic.ITEM_KEYS)
BAD_FILES = {
    "text.step": "not a STEP file",
    "empty.step": "empty",
    "truncated.step": "truncated",
    "wire.step": "no solid, shell or face",
}


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six sample parts (STEP), a two-body compound, and one part each as IGES and BREP."""
    directory = tmp_path_factory.mktemp("good")
    samples.write_sample_set(directory, count=6, seed=3)
    compound = samples.make_compound([samples.make_box(), samples.make_cylinder()])
    samples.write_step(compound, directory / "two_bodies.step")
    samples.write_iges(samples.make_box_with_hole(), directory / "holed.iges")
    samples.write_brep(samples.make_filleted_box(), directory / "filleted.brep")
    return directory


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory, good_dir: Path) -> Path:
    """The good files plus corrupt, empty, truncated, non-CAD and face-less files."""
    directory = tmp_path_factory.mktemp("mixed")
    for path in good_dir.iterdir():
        shutil.copy2(path, directory / path.name)
    (directory / "text.step").write_text("hello, this is not a STEP file\n")
    (directory / "empty.step").write_bytes(b"")
    whole = (good_dir / "bracket_000.step").read_bytes()
    (directory / "truncated.step").write_bytes(whole[: len(whole) // 2])
    samples.write_step(samples.make_line_edge(), directory / "wire.step")
    (directory / "notes.txt").write_text("not a CAD extension: ignored when a directory is given")
    return directory


@pytest.fixture(scope="module")
def mixed_run(
    tmp_path_factory: pytest.TempPathFactory, mixed_dir: Path
) -> tuple[EncodeReport, Path]:
    """One run of encode_files with two workers over the mixed directory."""
    out = tmp_path_factory.mktemp("mixed_out")
    report = encode_files(mixed_dir, out, workers=2)
    return report, out


def test_a_name_that_is_not_utf8_fails_alone(tmp_path: Path) -> None:
    """One file name that is not UTF-8 (a Latin-1 name) stopped the whole batch before
    any work, with a raw UnicodeEncodeError naming no file: the items' names hash the
    path as UTF-8. Names hash the path's bytes now; the file fails alone, named."""
    directory = tmp_path / "in"
    directory.mkdir()
    box = samples.write_step(samples.make_box(), directory / "a_box.step")
    samples.write_step(samples.make_cylinder(), directory / "c_cyl.step")
    os.link(box, os.fsencode(directory) + b"/b_caf\xe9.step")
    report = encode_files(directory, tmp_path / "out", workers=1, histograms=False)
    assert len(report.encoded) == 2
    assert len(report.failed) == 1
    failed = report.failed[0]
    assert failed["item"] == os.fsdecode(os.fsencode(directory) + b"/b_caf\xe9.step")
    assert "its name is not UTF-8 text" in failed["error"]
    # A UTF-8 path keeps the id it had (the MD5 of its UTF-8 bytes).
    from cadstore.storage.helpers import generate_unique_id_from_path

    name = str(directory / "a_box")
    digest = hashlib.md5(name.encode("utf-8"), usedforsecurity=False).hexdigest()
    assert generate_unique_id_from_path(name) == digest


@pytest.fixture
def forked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make workers fork, so that they inherit what the test patched in this process."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    monkeypatch.setattr(workers, "mp_context", lambda: multiprocessing.get_context("fork"))


def _patch_body(
    monkeypatch: pytest.MonkeyPatch, fault: Callable[[], Any], match: str = "shaft"
) -> None:
    """Run ``fault`` instead of encoding the bodies of files whose name contains ``match``."""
    real = work.encode_body

    def encode_body(model: Any, body: int, name: str, task: Any, settings: Any) -> Any:
        if match in os.path.basename(task.path):
            fault()
        return real(model, body, name, task, settings)

    monkeypatch.setattr(work, "encode_body", encode_body)


def _expected_items(directory: Path) -> set[str]:
    names = set()
    for path in find_cad_files(directory):
        bodies = 2 if path.name == "two_bodies.step" else 1
        if path.name not in BAD_FILES:
            names.update(item_name(path, b) for b in range(bodies))
    return names


def _data_files(out: Path) -> dict[str, int]:
    """``{item name: mtime_ns}`` of the published items."""
    return {
        p.name.removesuffix(".zarr.data"): p.stat().st_mtime_ns
        for p in (out / ENCODED_DIR).glob("*.zarr.data")
    }


def _scratch_left(out: Path) -> list[str]:
    return sorted(p.name for p in (out / ENCODED_DIR).iterdir() if not p.name.endswith(".data"))


# ---------------------------------------------------------------------------- names, inputs
def test_item_names_hash_the_absolute_path_without_extension(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sub" / "part.step"
    stem = os.path.abspath(tmp_path / "sub" / "part")
    expected = hashlib.md5(stem.encode("utf-8"), usedforsecurity=False).hexdigest()
    assert item_base_name(path) == expected
    assert item_base_name(str(path)) == expected
    assert item_base_name(tmp_path / "sub" / "part.iges") == expected
    assert item_base_name(tmp_path / "sub" / "other.step") != expected
    assert item_name(path, 3) == f"{expected}_3"
    # Relative paths are made absolute first, so a name does not depend on the cwd's spelling.
    monkeypatch.chdir(tmp_path)
    assert item_base_name("sub/part.step") == expected


def test_find_cad_files_from_directory_glob_and_list(mixed_dir: Path, tmp_path: Path) -> None:
    found = find_cad_files(mixed_dir)
    assert all(p.is_absolute() for p in found)
    assert "notes.txt" not in {p.name for p in found}
    assert found == sorted(found)
    steps = find_cad_files(str(mixed_dir / "*.step"))
    assert {p.suffix for p in steps} == {".step"}
    listed = find_cad_files([mixed_dir / "holed.iges", str(mixed_dir / "holed.iges")])
    assert listed == [mixed_dir / "holed.iges"]
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        find_cad_files(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match="pattern"):
        find_cad_files(str(tmp_path / "*.step"))
    with pytest.raises(ValueError, match="no CAD files"):
        find_cad_files(tmp_path)


def test_invalid_arguments_are_refused(good_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers"):
        encode_files(good_dir, tmp_path, workers=-1)
    with pytest.raises(ValueError, match="timeout"):
        encode_files(good_dir, tmp_path, timeout=0)
    with pytest.raises(ValueError, match="pointsamples"):
        encode_files(good_dir, tmp_path, pointsamples=0)


# ---------------------------------------------------------------------------- a mixed batch
def test_every_good_body_becomes_a_complete_readable_item(
    mixed_run: tuple[EncodeReport, Path], mixed_dir: Path
) -> None:
    report, out = mixed_run
    expected = _expected_items(mixed_dir)
    assert set(report.encoded) == expected
    assert set(_data_files(out)) == expected
    assert report.skipped == []
    assert report.files == len(find_cad_files(mixed_dir))
    assert _scratch_left(out) == []
    sources = {item_base_name(p): p for p in find_cad_files(mixed_dir)}
    for name in expected:
        with OptStorage(out / ENCODED_DIR / f"{name}.zarr", mode="r") as storage:
            assert set(storage.get_keys()) >= ITEM_KEYS
            meta = storage.load_metadata()
            source = sources[name.rsplit("_", 1)[0]]
            assert meta["Item"] == str(source)
            assert meta["size_cadfile"] == source.stat().st_size
            assert meta["body_index"] == int(name.rsplit("_", 1)[1])
            assert meta["num_bodies"] == (2 if source.name == "two_bodies.step" else 1)
            assert 0 < meta["processing_time"] < 60
            assert meta["descriptions"]["face_types"]["0"] == "Plane"
            assert "edge_types" in meta["descriptions"]
            n_faces = storage.load_data("face_indices").shape[0]
            assert n_faces > 0
            assert storage.load_data("d2_distance").shape == (n_faces, n_faces, 64)
        assert (out / "files_summary" / f"{name}.json").is_file()
    # The two bodies of the compound: a box and a cylinder.
    compound = item_base_name(mixed_dir / "two_bodies.step")
    faces = []
    for body in (0, 1):
        with OptStorage(out / ENCODED_DIR / f"{compound}_{body}.zarr", mode="r") as storage:
            faces.append(storage.load_data("face_indices").shape[0])
    assert sorted(faces) == [3, 6]


def test_bad_files_are_listed_with_their_reasons(
    mixed_run: tuple[EncodeReport, Path], mixed_dir: Path
) -> None:
    report, out = mixed_run
    summary = json.loads((out / ERROR_SUMMARY).read_text())
    assert summary == report.failed
    assert not report.ok
    by_file = {Path(entry["item"]).name: entry for entry in summary}
    assert set(by_file) == set(BAD_FILES)
    files = find_cad_files(mixed_dir)
    for name, phrase in BAD_FILES.items():
        entry = by_file[name]
        assert entry["reason"] == "corrupt"
        assert entry["error"].startswith("CorruptStoreError: ")
        assert phrase in entry["error"]
        assert entry["item_index"] == files.index(mixed_dir / name)
        assert isinstance(entry["worker_pid"], int) and entry["worker_pid"] != os.getpid()
        assert entry["name"] is None and entry["body_index"] is None
        assert isinstance(entry["logs"], list)


def test_report_timings_and_json(mixed_run: tuple[EncodeReport, Path]) -> None:
    report, _ = mixed_run
    assert report.workers == 2
    steps = {"load", "brep", "storage", *encode.PUSH_METHODS}
    assert set(report.timings) == steps
    assert all(seconds >= 0 for seconds in report.timings.values())
    assert report.timings["storage"] > 0
    assert {"open", "save_data", "compress_store", "close"} <= set(report.storage_timings)
    assert sum(report.storage_timings.values()) == pytest.approx(report.timings["storage"])
    assert report.bytes_written == sum(
        (Path(report.output_dir) / ENCODED_DIR / f"{n}.zarr.data").stat().st_size
        for n in report.encoded
    )
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["ok"] is False
    assert doc["encoded"] == report.encoded


# ---------------------------------------------------------------------------- resuming
def test_resume_skips_existing_items_and_keeps_them_untouched(
    good_dir: Path, tmp_path: Path
) -> None:
    first = encode_files(good_dir, tmp_path, workers=2, histograms=False)
    assert first.ok and len(first.encoded) == len(_expected_items(good_dir))
    before = _data_files(tmp_path)
    again = encode_files(good_dir, tmp_path, workers=2, histograms=False)
    assert again.ok
    assert again.encoded == []
    assert again.skipped == first.encoded
    assert again.workers == 0  # every file was complete: no worker was needed
    assert _data_files(tmp_path) == before
    assert json.loads((tmp_path / ERROR_SUMMARY).read_text()) == []

    # A missing body (an interrupted run) is encoded again; its sibling is left alone.
    compound = item_base_name(good_dir / "two_bodies.step")
    (tmp_path / ENCODED_DIR / f"{compound}_1.zarr.data").unlink()
    third = encode_files(good_dir, tmp_path, workers=2, histograms=False)
    assert third.encoded == [f"{compound}_1"]
    assert len(third.skipped) == len(first.encoded) - 1
    after = _data_files(tmp_path)
    assert {n: t for n, t in after.items() if n != f"{compound}_1"} == {
        n: t for n, t in before.items() if n != f"{compound}_1"
    }

    # resume=False re-encodes everything, replacing each file.
    forced = encode_files(good_dir, tmp_path, workers=2, histograms=False, resume=False)
    assert sorted(forced.encoded) == sorted(first.encoded)
    assert all(_data_files(tmp_path)[n] != before[n] for n in before if n != f"{compound}_1")


def test_histograms_are_optional(good_dir: Path, tmp_path: Path) -> None:
    report = encode_files(good_dir / "shaft_002.step", tmp_path, workers=0, histograms=False)
    assert "push_average_face_pair_angle_histograms" not in report.timings
    with OptStorage(tmp_path / ENCODED_DIR / f"{report.encoded[0]}.zarr", mode="r") as storage:
        keys = set(storage.get_keys())
    assert keys == ITEM_KEYS - {"d2_distance", "a3_distance"}


def test_duplicate_names_are_refused(good_dir: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy2(good_dir / "shaft_002.step", inputs / "part.step")
    samples.write_brep(samples.make_box(), inputs / "part.brep")
    report = encode_files(inputs, tmp_path / "out", workers=0)
    assert len(report.encoded) == 1
    (failure,) = report.failed
    assert failure["reason"] == "duplicate"
    assert "part." in failure["error"]


# ---------------------------------------------------------------------------- body failures
def test_one_failing_body_leaves_the_others_encoded(
    good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from OCP.Standard import Standard_Failure

    real = work.encode_body

    def encode_body(model: Any, body: int, name: str, task: Any, settings: Any) -> Any:
        if body == 1:
            raise Standard_Failure("BRep_API: command not done")
        return real(model, body, name, task, settings)

    monkeypatch.setattr(work, "encode_body", encode_body)
    report = encode_files(good_dir / "two_bodies.step", tmp_path, workers=0)
    base = item_base_name(good_dir / "two_bodies.step")
    assert report.encoded == [f"{base}_0"]
    (failure,) = report.failed
    assert (failure["name"], failure["body_index"], failure["reason"]) == (f"{base}_1", 1, "kernel")
    assert "command not done" in failure["error"]
    assert any("Standard_Failure" in line for line in failure["logs"])
    assert _scratch_left(tmp_path) == []


def test_encoding_makes_no_working_directory_per_item(
    good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    real_mkdir = os.mkdir

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        made.append(os.fspath(path))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    report = encode_files(good_dir / "two_bodies.step", tmp_path, workers=0)
    assert len(report.encoded) == 2
    assert [p for p in made if p.endswith(".zarr")] == []
    assert _scratch_left(tmp_path) == []
    for name in report.encoded:
        with OptStorage(str(tmp_path / ENCODED_DIR / f"{name}.zarr")) as item:
            assert item.read_only and "face_areas" in item.get_keys()


def test_a_body_without_faces_fails_with_its_reason(
    good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cadstore.cad import CADModel

    def load(self: Any, path: Any) -> CADModel:
        return CADModel(samples.make_compound([]), [samples.make_compound([])], path, "step")

    monkeypatch.setattr(work.CADLoader, "create_from_file", load)
    report = encode_files(good_dir / "shaft_002.step", tmp_path, workers=0)
    (failure,) = report.failed
    assert failure["reason"] == "no_faces"
    assert "no faces" in failure["error"]
    assert report.encoded == []
    assert _scratch_left(tmp_path) == []


# ---------------------------------------------------------------------------- worker faults
def test_a_hung_worker_is_killed_at_the_time_limit(
    good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forked: None
) -> None:
    _patch_body(monkeypatch, lambda: time.sleep(300))
    start = time.monotonic()
    report = encode_files(good_dir, tmp_path, workers=2, timeout=1.0)
    assert time.monotonic() - start < 30
    shafts = {p for p in find_cad_files(good_dir) if "shaft" in p.name}
    assert {Path(f["item"]) for f in report.failed} == shafts
    for failure in report.failed:
        assert failure["reason"] == "timeout"
        assert "time limit of 1 s" in failure["error"]
        assert failure["body_index"] == 0
        assert failure["name"] == item_name(failure["item"], 0)
    assert set(report.encoded) == _expected_items(good_dir) - {item_name(p, 0) for p in shafts}
    assert _scratch_left(tmp_path) == []
    summary = json.loads((tmp_path / ERROR_SUMMARY).read_text())
    assert [entry["reason"] for entry in summary] == ["timeout"] * len(shafts)


@pytest.mark.parametrize("death", ["SIGKILL", "exit"])
def test_a_crashing_worker_fails_only_its_file(
    good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forked: None, death: str
) -> None:
    """A worker that dies is a crash: killed in a body, or ending its process outside
    every guard of the file's work (``os._exit``, which no ``except`` catches)."""
    if death == "SIGKILL":
        _patch_body(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGKILL))
    else:
        real = encode_run.process_file

        def exits(task: Any, settings: Any, emit: Any) -> None:
            if "shaft" in os.path.basename(task.path):
                os._exit(3)
            real(task, settings, emit)

        monkeypatch.setattr(encode_run, "process_file", exits)
    report = encode_files(good_dir, tmp_path, workers=2)
    shafts = {p for p in find_cad_files(good_dir) if "shaft" in p.name}
    assert {Path(f["item"]) for f in report.failed} == shafts
    for failure in report.failed:
        assert failure["reason"] == "crash"
        assert ("SIGKILL" if death == "SIGKILL" else "exited with code 3") in failure["error"]
    assert len(report.encoded) == len(_expected_items(good_dir)) - len(shafts)


def test_an_error_escaping_the_files_work_fails_the_file_not_its_worker(
    good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forked: None
) -> None:
    """An exception that escaped process_file in a local worker (a bug in the per-file
    code, an error outside what it catches) killed the worker: the file was reported as
    a crash ("WorkerCrash: worker ... exited with code 1"), not as its own error, as the
    Dask path reports it. It is the file's failure now, classified by failure_fields;
    the worker lives on (one worker: both files failed in the same process) and the
    other files are encoded."""
    real = encode_run.process_file

    def broken(task: Any, settings: Any, emit: Any) -> None:
        if "shaft" in os.path.basename(task.path):
            emit({"type": "start", "index": task.index, "pid": os.getpid()})
            raise InvalidDataError(f"{task.path}: refused by a bug")
        real(task, settings, emit)

    monkeypatch.setattr(encode_run, "process_file", broken)
    report = encode_files(good_dir, tmp_path, workers=1, histograms=False)
    shafts = {p for p in find_cad_files(good_dir) if "shaft" in p.name}
    assert len(shafts) == 2
    assert {Path(f["item"]) for f in report.failed} == shafts
    for failure in report.failed:
        assert failure["reason"] == "invalid_data", failure
        assert failure["error"] == f"InvalidDataError: {failure['item']}: refused by a bug"
        assert failure["body_index"] is None
    assert len({f["worker_pid"] for f in report.failed}) == 1
    assert set(report.encoded) == _expected_items(good_dir) - {item_name(p, 0) for p in shafts}


def test_a_local_and_a_dask_encode_report_an_escaping_error_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure a local worker reports for an exception that escaped the file's work
    between two bodies is the Dask task's: the same reason and error, naming the bodies
    not encoded (those the task leaves alone are not named)."""
    import errno

    def four_bodies(task: Any, settings: Any, emit: Any) -> None:
        emit({"type": "start", "index": task.index, "pid": os.getpid()})
        emit({"type": "loaded", "index": task.index, "num_bodies": 4, "seconds": 0.0})
        for body in (0, 1):
            if body in task.leave:
                continue
            emit({"type": "body", "index": task.index, "body_index": body})
            if body == 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            emit({"type": "item", "index": task.index, "body_index": body, "status": "ok"})

    monkeypatch.setattr(encode_run, "process_file", four_bodies)
    for leave, missing in (((), [1, 2, 3]), ((2,), [1, 3])):
        out = tmp_path / f"leave{len(leave)}"  # apart: the Dask task journals in it
        out.mkdir()
        settings = work.Settings(str(out), str(out), {}, (), resume=False)
        task = work.Task(index=0, path=str(tmp_path / "part.step"), base="part", leave=leave)
        local: list[dict[str, Any]] = []
        encode_run._local_encode_task(four_bodies, task, settings, local.append)
        dask = encode_run._dask_encode_task(task, settings)
        assert [m["type"] for m in local] == [m["type"] for m in dask]
        failure = local[-1]
        assert failure["type"] == "failed" and failure["reason"] == "storage"
        assert failure["error"] == (
            f"OSError: [Errno 28] No space left on device; bodies {missing} were not encoded"
        )
        assert {k: v for k, v in failure.items() if k != "logs"} == {
            k: v for k, v in dask[-1].items() if k != "logs"
        }


@pytest.mark.parametrize("fault", ["hang", "crash"])
def test_a_lost_body_does_not_keep_the_later_bodies_of_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forked: None, fault: str
) -> None:
    """A worker killed at the time limit (or crashing) on body 1 of a 3-body file was
    the end of that file: body 2 was "not attempted", and never encoded on any run (a
    rerun met body 1 again). A new worker takes the bodies after a lost one."""
    directory = tmp_path / "in"
    directory.mkdir()
    parts = [samples.make_box(), samples.make_cylinder(), samples.make_bracket()]
    shape = samples.make_compound([p.Moved(_shift(40.0 * i)) for i, p in enumerate(parts)])
    path = samples.write_step(shape, directory / "three.step")
    real = work.encode_body

    def encode_body(model: Any, body: int, name: str, task: Any, settings: Any) -> Any:
        if body == 1:
            time.sleep(300) if fault == "hang" else os.kill(os.getpid(), signal.SIGKILL)
        return real(model, body, name, task, settings)

    monkeypatch.setattr(work, "encode_body", encode_body)
    for run in range(2):
        report = encode_files(directory, tmp_path / "out", workers=1, timeout=2.0)
        names = [item_name(path, b) for b in range(3)]
        assert report.encoded == ([] if run else [names[0], names[2]])
        assert sorted(report.skipped) == ([names[0], names[2]] if run else [])
        (failure,) = report.failed
        assert failure["name"] == names[1] and failure["body_index"] == 1
        assert failure["reason"] == ("timeout" if fault == "hang" else "crash")
        assert "not attempted" not in failure["error"]


def test_a_file_whose_later_workers_are_lost_too_is_not_retried_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forked: None
) -> None:
    """The worker that took the bodies after a lost one was itself lost while reading the
    file: the loss was put on the body the first worker was on, and the file retried for
    it, again and again (a reviewer ran 732 loads before stopping it). Each loss is its
    own now, and a loss while reading ends the file."""
    from cadstore.cad.loader import CADLoader

    directory = tmp_path / "in"
    directory.mkdir()
    parts = [samples.make_box(), samples.make_cylinder(), samples.make_bracket()]
    shape = samples.make_compound([p.Moved(_shift(40.0 * i)) for i, p in enumerate(parts)])
    path = samples.write_step(shape, directory / "three.step")
    loads = tmp_path / "loads"
    real_body, real_load = work.encode_body, CADLoader.create_from_file

    def encode_body(model: Any, body: int, name: str, task: Any, settings: Any) -> Any:
        if body == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_body(model, body, name, task, settings)

    def create_from_file(self: Any, file: Any) -> Any:
        with open(loads, "a") as fh:
            fh.write("x")
        if loads.stat().st_size > 1:  # every worker after the first dies reading the file
            os.kill(os.getpid(), signal.SIGKILL)
        return real_load(self, file)

    monkeypatch.setattr(work, "encode_body", encode_body)
    monkeypatch.setattr(CADLoader, "create_from_file", create_from_file)
    report = encode_files(directory, tmp_path / "out", workers=1, timeout=30.0)
    assert loads.stat().st_size == 2
    assert report.encoded == [item_name(path, 0)]
    got = sorted(
        (f["body_index"] is None, f["error"].rsplit(" while ", 1)[1]) for f in report.failed
    )
    assert got == [(False, "encoding body 1"), (True, "reading the file")]


def _shift(x: float) -> Any:
    from OCP.gp import gp_Trsf, gp_Vec
    from OCP.TopLoc import TopLoc_Location

    move = gp_Trsf()
    move.SetTranslation(gp_Vec(x, 0.0, 0.0))
    return TopLoc_Location(move)


def test_the_memory_guard_turns_an_explosion_into_a_memory_error(
    good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forked: None
) -> None:
    # 8 GiB of address space: allowed without the guard (nothing is touched), refused with
    # the default one (4 GiB more than a worker maps when it starts, however large the
    # process it was forked from).
    _patch_body(monkeypatch, lambda: np.empty(8 * 2**30, dtype=np.uint8))
    report = encode_files(good_dir, tmp_path, workers=2)
    shafts = {p for p in find_cad_files(good_dir) if "shaft" in p.name}
    assert {Path(f["item"]) for f in report.failed} == shafts
    assert {f["reason"] for f in report.failed} == {"memory"}
    assert len(report.encoded) == len(_expected_items(good_dir)) - len(shafts)


def test_the_default_memory_guard_leaves_room_above_a_large_process(
    good_dir: Path, tmp_path: Path, forked: None
) -> None:
    """A notebook that has used torch maps gigabytes before it encodes (3.8 GiB here after
    torch, a DataLoader and OpenCascade; 6 GiB after this test suite's training tests),
    and forked workers start that large: a default cap of 4 GiB in all refused to start
    them ("raise it") or left them a few hundred MiB. By default a worker may map
    ``DEFAULT_MEMORY_LIMIT_MB`` more than it starts with."""
    import mmap

    from cadstore.flowmanager.tasks.parallel_executor import DEFAULT_MEMORY_LIMIT_MB

    reserved = mmap.mmap(-1, (DEFAULT_MEMORY_LIMIT_MB + 1024) * 2**20)  # never touched
    try:
        assert (workers.address_space_mb() or 0) > DEFAULT_MEMORY_LIMIT_MB
        report = encode_files(good_dir / "shaft_002.step", tmp_path, workers=1)
        assert not report.failed and len(report.encoded) == 1
        # An explicit cap is still the whole address space: this one cannot be met.
        with pytest.raises(ValueError, match="memory_limit_mb=4096 is below"):
            encode_files(
                good_dir / "shaft_002.step", tmp_path / "capped", workers=1, memory_limit_mb=4096
            )
    finally:
        reserved.close()


def test_a_memory_limit_too_small_to_start_is_an_error(good_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="memory_limit_mb=16"):
        encode_files(good_dir / "shaft_002.step", tmp_path, workers=1, memory_limit_mb=16)


def test_workers_that_cannot_start_stop_the_run(
    good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forked: None
) -> None:
    # Not the files' fault: no file may be blamed, and the run must not retry forever.
    monkeypatch.setattr(workers, "limit_memory", lambda limit: os._exit(7))
    with pytest.raises(RuntimeError, match=r"fail to start .* exited with code 7"):
        encode_files(good_dir / "shaft_002.step", tmp_path, workers=1)


def test_spawned_workers_encode_too(
    good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "mp_context", lambda: multiprocessing.get_context("spawn"))
    files = [good_dir / "shaft_002.step", good_dir / "two_bodies.step"]
    report = encode_files(files, tmp_path, workers=2)
    assert report.ok
    assert sorted(report.encoded) == sorted(
        [item_name(files[0], 0), item_name(files[1], 0), item_name(files[1], 1)]
    )


def test_a_script_without_a_main_guard_is_not_run_again_by_spawned_workers(
    good_dir: Path, tmp_path: Path
) -> None:
    # A user's script with no `if __name__ == "__main__":` guard, with a thread running
    # (as zarr's or tqdm's), so that workers are spawned: each spawned child used to import
    # the script again, which ran it from the top in every worker.
    runs = tmp_path / "runs.txt"
    script = tmp_path / "user_script.py"
    script.write_text(
        "import threading, time\n"
        "from cadstore.encode import encode_files\n"
        f"open({str(runs)!r}, 'a').write('run\\n')\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        f"report = encode_files({str(good_dir / 'shaft_002.step')!r}, {str(tmp_path / 'out')!r},"
        " workers=2)\n"
        "assert report.ok, report.failed\n"
        "print('encoded', len(report.encoded))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "encoded 1" in done.stdout
    assert runs.read_text() == "run\n"


# ---------------------------------------------------------------------------- merge
def test_merge_builds_a_dataset_of_every_item(good_dir: Path, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    out = tmp_path / "flowout"
    report = encode_files(good_dir, out, workers=2, merge=True)
    assert report.ok
    assert report.dataset == str(out / "flowout.dataset")
    flow = json.loads((out / "flowout.flow").read_text())
    assert flow["file_count"] == len(report.encoded)
    assert flow["errors"] == []
    info = pd.read_parquet(out / "flowout.infoset")
    assert set(info["name"]) == set(report.encoded)
    assert set(info["description"]) == {str(p) for p in find_cad_files(good_dir)}
    assert {"size_cadfile", "processing_time", "body_index"} <= set(info.columns)


# ---------------------------------------------------------------------------- command line
def test_cli_json_report_and_exit_code_for_failures(
    mixed_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["encode", str(mixed_dir), "-o", str(tmp_path), "--workers", "2", "--json"])
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert {Path(f["item"]).name for f in doc["failed"]} == set(BAD_FILES)
    assert set(doc["encoded"]) == _expected_items(mixed_dir)


def test_cli_summary_and_success(
    good_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pattern = str(good_dir / "*.step")
    code = main(["encode", pattern, "-o", str(tmp_path), "--no-histograms", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    steps = [p for p in find_cad_files(good_dir) if p.suffix == ".step"]
    assert f"from {len(steps)} files" in out
    assert "0 failed" in out
    # Shell-expanded file lists work too, and a second run skips everything.
    code = main(["encode", *map(str, steps), "-o", str(tmp_path), "--no-progress"])
    assert code == 0
    assert "encoded 0 items" in capsys.readouterr().out


def test_cli_missing_input_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["encode", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the demo's job
def test_encode_sample_set_writes_encodes_merges_and_resumes(tmp_path: Path) -> None:
    report = encode.encode_sample_set(tmp_path / "demo", count=3, seed=1, workers=2)
    assert report.ok
    assert len(report.encoded) == 3
    assert report.dataset == str(tmp_path / "demo" / "demo.dataset")
    parts = sorted(p.name for p in (tmp_path / "demo" / "parts_seed1").iterdir())
    assert parts == ["bracket_000.step", "plate_001.step", "shaft_002.step"]
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "demo" / "parts_seed1").iterdir()}
    again = encode.encode_sample_set(tmp_path / "demo", count=3, seed=1, workers=2)
    assert again.encoded == [] and again.skipped == report.encoded
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_docstring_examples() -> None:
    import doctest

    assert doctest.testmod(naming).failed == 0
