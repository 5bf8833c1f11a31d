"""Merges and encodes on a real Dask LocalCluster with worker processes.

Every merge on the cluster is compared byte for byte with the single-process merge of the
same items. One cluster serves the module; the tests that start or kill workers use
clusters of their own.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadstore import DatasetMerger
from cadstore.errors import MergeError
from cadstore.io.publish import TEMP_PREFIX
from cadstore.merging import merge_items
from conftest import OS_ERROR_KINDS, write_arrays, write_items
from datasets import assert_same_dataset

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

SHARD_BYTES = 200_000  # many shards, so that many tasks share the items


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
    ) as local:
        yield local


@pytest.fixture(scope="module")
def client(cluster: distributed.LocalCluster) -> Iterator[distributed.Client]:
    with distributed.Client(cluster) as dask_client:
        yield dask_client


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return [p for p, _, _ in write_items(tmp_path_factory.mktemp("items"), 24, seed=7)]


@pytest.fixture(scope="module")
def local_merge(items: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "flow.dataset"
    merge_items(items, out, shard_bytes=SHARD_BYTES)
    return out


@pytest.mark.parametrize("shard_bytes", [SHARD_BYTES, 16 * 1024 * 1024], ids=["small", "default"])
def test_cluster_merge_is_byte_identical(
    client: distributed.Client, items: list[Path], tmp_path: Path, shard_bytes: int
) -> None:
    local, dask = tmp_path / "local.dataset", tmp_path / "dask.dataset"
    expected = merge_items(items, local, shard_bytes=shard_bytes)
    result = merge_items(items, dask, shard_bytes=shard_bytes, client=client)
    assert_same_dataset(local, dask)
    assert result.items == expected.items
    assert result.raw_bytes == expected.raw_bytes
    assert result.stored_bytes == expected.stored_bytes == dask.stat().st_size
    # Both workers took part: the work is really spread over processes.
    assert len(client.scheduler_info()["workers"]) == 2


def test_directory_layout_and_bad_items(
    client: distributed.Client, items: list[Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad_0.zarr.data"
    bad.write_bytes(items[0].read_bytes()[:-100])
    inputs = [*items[:10], bad, *items[10:]]
    local, dask = tmp_path / "local.dataset", tmp_path / "dask.dataset"
    merge_items(inputs, local, directory=True, shard_bytes=SHARD_BYTES)
    result = merge_items(inputs, dask, directory=True, shard_bytes=SHARD_BYTES, client=client)
    assert [e["file"] for e in result.errors] == [str(bad)]
    assert_same_dataset(local, dask)


def test_cluster_merge_manifest_states_the_tables_written(
    client: distributed.Client, items: list[Path], tmp_path: Path
) -> None:
    """The ``.flow`` of a merge on the cluster said ``infoset_rows: 0`` and ``infoset:
    null`` in its ``info``, as a local merge's did: it gives the rows and paths written."""
    import json

    import pyarrow.parquet as pq

    from cadstore import merge

    merge([str(p) for p in items[:6]], str(tmp_path / "x.dataset"), client=client)
    info = json.loads((tmp_path / "x.flow").read_text())["info"]
    assert info["infoset_rows"] == pq.read_table(tmp_path / "x.infoset").num_rows == 6
    assert info["attribute_rows"] == pq.read_table(tmp_path / "x.attribset").num_rows
    assert info["infoset"] == str(tmp_path / "x.infoset")
    assert info["attribset"] == str(tmp_path / "x.attribset")


def test_cluster_merge_skips_an_item_of_per_item_integers_float_cannot_hold(
    client: distributed.Client, tmp_path: Path
) -> None:
    """A per-item uint64 beside an int64 makes float64: a merge on the cluster took the
    values from its scans and rounded 2**64 - 1 to 1.8e19, where a local merge refused.
    Both now skip the item, naming it, the key and the value, and merge the others."""
    paths = [
        write_arrays(tmp_path / f"{name}.zarr", {"u": value, "faces/x": np.arange(3)})
        for name, value in (("a", np.uint64(2**64 - 1)), ("b", np.int64(-1)))
    ]
    outputs = {"dask": tmp_path / "dask.dataset", "local": tmp_path / "local.dataset"}
    for name, options in (("dask", {"client": client}), ("local", {})):
        result = merge_items(paths, outputs[name], **options)
        assert result.items == ["b"] and [e["file"] for e in result.errors] == [paths[0]]
        assert re.search(
            r"'u' \(u/u\): the integer 18446744073709551615", result.errors[0]["error"]
        )
    assert_same_dataset(outputs["local"], outputs["dask"])


def test_cluster_merge_names_the_array_of_rows_float_cannot_hold(
    client: distributed.Client, tmp_path: Path
) -> None:
    """Rows of int64 beside rows of float64 make float64: the error of a merge on the
    cluster for 2**62 + 1 named the dataset array ``(/)`` (an empty group and name); the
    item is now skipped, its error naming ``'faces/v' (faces/v)``, as a local merge's
    does."""
    paths = [
        write_arrays(tmp_path / f"{name}.zarr", {"faces/v": value})
        for name, value in (("a", np.array([2**62 + 1, 3])), ("b", np.array([0.5, 1.5])))
    ]
    outputs = {"dask": tmp_path / "dask.dataset", "local": tmp_path / "local.dataset"}
    for name, options in (("dask", {"client": client}), ("local", {})):
        result = merge_items(paths, outputs[name], **options)
        assert result.items == ["b"] and [e["file"] for e in result.errors] == [paths[0]]
        assert result.errors[0]["error"].startswith(
            "'faces/v' (faces/v): the integer 4611686018427387905"
        )
    assert_same_dataset(outputs["local"], outputs["dask"])


def test_cluster_merge_checks_integers_on_the_workers(
    client: distributed.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether an item's int64 rows fit the float64 array was checked by decoding the
    items on the driver, one after the other: a driver that cannot read the items' paths
    (they are the workers') failed the merge, and a large one waited on it. The items are
    now decoded on the workers; the driver decodes none (its decoder refuses here)."""
    from cadstore.merging import write

    def driver_decodes(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the driver decoded an item")

    paths = [
        write_arrays(tmp_path / f"{name}.zarr", {"faces/v": value})
        for name, value in (
            ("a", np.array([2**62 + 1, 3])),
            ("b", np.array([0.5, 1.5])),
            ("c", np.array([7, 8])),
        )
    ]
    local = merge_items(paths, tmp_path / "local.dataset")
    monkeypatch.setattr(write, "decode_item", driver_decodes)
    # The checks go to the cluster in batches, as scans do: one task per round of checks
    # (two rounds: once 'a' is skipped the plan is made again, and 'c' checked again).
    submitted: list[Any] = []
    submit = client.submit

    def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        submitted.append(fn)
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(client, "submit", counted)
    result = merge_items(paths, tmp_path / "dask.dataset", client=client)
    monkeypatch.undo()
    assert [fn.__name__ for fn in submitted].count("_call_batch") == 2
    assert result.items == local.items == ["b", "c"]
    assert result.errors == local.errors
    assert result.errors[0]["error"].startswith(
        "'faces/v' (faces/v): the integer 4611686018427387905"
    )
    assert_same_dataset(tmp_path / "local.dataset", tmp_path / "dask.dataset")


def test_merger_with_an_address_keeps_the_cluster(
    cluster: distributed.LocalCluster, items: list[Path], local_merge: Path, tmp_path: Path
) -> None:
    out = tmp_path / "flow.dataset"
    merger = DatasetMerger(items, out, scheduler=cluster.scheduler_address)
    merger.merge_data(force_compression=True)
    own = merger.dask_client
    merger.close_dask_resources()
    assert own.status == "closed"
    # The scheduler was only connected to: it still serves other clients.
    with distributed.Client(cluster.scheduler_address) as other:
        assert other.submit(sum, [1, 2]).result() == 3
    expected = tmp_path / "expected.dataset"
    DatasetMerger(items, expected).merge_data()
    assert_same_dataset(out, expected)


def test_merger_starts_and_closes_its_local_cluster(
    items: list[Path], local_merge: Path, tmp_path: Path
) -> None:
    out = tmp_path / "flow.dataset"
    merger = DatasetMerger(
        items,
        out,
        dask_client_params={"n_workers": 2, "threads_per_worker": 1, "processes": True},
    )
    try:
        merger.merge_data(face_chunk=300, edge_chunk=700, faceface_flat_chunk=5000)
        client = merger.dask_client
        assert len(client.scheduler_info()["workers"]) == 2
    finally:
        merger.close_dask_resources()
    assert client.status == "closed"
    expected = tmp_path / "expected.dataset"
    DatasetMerger(items, expected).merge_data(
        face_chunk=300, edge_chunk=700, faceface_flat_chunk=5000
    )
    assert_same_dataset(out, expected)
    merger.close_dask_resources()  # idempotent


def test_missing_dask_names_the_extra(
    items: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    # Said at construction, before any work: the setup is what is wrong.
    with pytest.raises(ImportError, match=r"cadstore\[dask\]"):
        DatasetMerger(items, tmp_path / "x.dataset", dask_client_params={"n_workers": 1})
    assert not (tmp_path / "x.dataset").exists()
    # {"disable": True} is the specified way to run without Dask.
    DatasetMerger(items, tmp_path / "y.dataset", dask_client_params={"disable": True}).merge_data()


def _worker_pids(client: distributed.Client) -> list[int]:
    return sorted(client.run(os.getpid).values())


def test_a_killed_worker_is_survived_or_reported(items: list[Path], tmp_path: Path) -> None:
    """SIGKILL a worker process once shard tasks run: the merge completes through Dask's
    retry (then it equals the local merge) or fails with a MergeError; either way no
    partial dataset is published."""
    many = items * 1  # the module's items, under new names below, to make the merge longer
    copies = []
    for i, path in enumerate(many * 3):
        copy = tmp_path / "in" / f"copy{i:03d}_0.zarr.data"
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    local, out = tmp_path / "local.dataset", tmp_path / "out" / "flow.dataset"
    out.parent.mkdir()
    merge_items(copies, local, shard_bytes=50_000)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        victim = _worker_pids(client)[0]
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["result"] = merge_items(copies, out, shard_bytes=50_000, client=client)
            except MergeError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and thread.is_alive():
            running = client.processing()
            if any("cadstore-shards" in str(key) for keys in running.values() for key in keys):
                break
            time.sleep(0.01)
        killed_during_merge = thread.is_alive()
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=120)
        assert not thread.is_alive()
    assert killed_during_merge, "the merge ended before the worker could be killed"
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]
    if "error" in outcome:
        assert "Dask" in str(outcome["error"])
        assert not out.exists()
    else:
        assert_same_dataset(out, local)


def test_encode_files_on_the_cluster(client: distributed.Client, tmp_path: Path) -> None:
    pytest.importorskip("OCP", reason="the cad extra is not installed")
    from cadstore.cad.samples import write_sample_set
    from cadstore.encode import encode_files

    parts = write_sample_set(tmp_path / "parts", count=3, seed=1)
    local = encode_files(parts, tmp_path / "local", workers=0, histograms=False)
    report = encode_files(parts, tmp_path / "dask", client=client, histograms=False, merge=True)
    assert report.failed == []
    assert sorted(report.encoded) == sorted(local.encoded)
    assert report.workers == 2
    assert report.dataset is not None and Path(report.dataset).is_file()
    names = sorted(p.name for p in (tmp_path / "dask" / "encoded").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "local" / "encoded").iterdir())


class _KillOnBody1(distributed.WorkerPlugin):
    """On every worker (restarted ones too): body 1 kills the worker, as a kernel crash
    on one body of a file does."""

    def __init__(self, bodies: tuple[int, ...] = (1,)) -> None:
        self.bodies = bodies

    def setup(self, worker: distributed.Worker) -> None:
        from cadstore.encode import work

        real = work.encode_body
        bodies = self.bodies

        def encode_body(model: object, body: int, name: str, task: object, settings: object):  # type: ignore[no-untyped-def]
            if body in bodies:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(model, body, name, task, settings)

        work.encode_body = encode_body


def _three_bodies(directory: Path) -> Path:
    """A STEP file of three bodies (a box, a cylinder, a bracket side by side)."""
    from OCP.gp import gp_Trsf, gp_Vec
    from OCP.TopLoc import TopLoc_Location

    from cadstore.cad import samples

    def shifted(shape: Any, x: float) -> Any:
        move = gp_Trsf()
        move.SetTranslation(gp_Vec(x, 0.0, 0.0))
        return shape.Moved(TopLoc_Location(move))

    parts = [samples.make_box(), samples.make_cylinder(), samples.make_bracket()]
    compound = samples.make_compound([shifted(p, 40.0 * i) for i, p in enumerate(parts)])
    directory.mkdir()
    return Path(samples.write_step(compound, directory / "three.step"))


def _encode_killing_body_1(tmp_path: Path, allowed_failures: int) -> tuple[Any, list[str]]:
    """Encode a 3-body file on a one-worker cluster whose workers die on body 1 (the
    scheduler allowing ``allowed_failures`` deaths per task); return the report and the
    items' names."""
    pytest.importorskip("OCP", reason="the cad extra is not installed")
    import dask

    from cadstore.encode import encode_files
    from cadstore.encode.naming import item_name

    path = _three_bodies(tmp_path / "in")
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}),
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(_KillOnBody1())
        report = encode_files(tmp_path / "in", tmp_path / "out", client=client, histograms=False)
    return report, [item_name(path, b) for b in range(3)]


def test_a_file_dask_gives_up_on_reports_what_its_attempts_did(tmp_path: Path) -> None:
    """When the workers died as often as the scheduler allows, the file was one failure
    "while reading the file", and the bodies its attempts had published were not
    reported. Its journal tells what they did."""
    report, names = _encode_killing_body_1(tmp_path, allowed_failures=1)
    assert report.encoded == [names[0]]
    got = sorted((f["body_index"] is None, f["name"], f["error"]) for f in report.failed)
    assert got[0][:2] == (False, names[1]) and "died while encoding this body" in got[0][2]
    assert got[1][:2] == (True, None) and "bodies [2] were not encoded" in got[1][2]
    assert sorted(p.name for p in (tmp_path / "out" / "encoded").iterdir()) == [
        f"{names[0]}.zarr.data"
    ]


def test_a_journal_settles_a_body_after_two_deaths_and_spares_a_live_attempt() -> None:
    """One death on a body may be another task's (a worker runs tasks in threads): the
    body is tried again, and failed after a second death, or at once when no attempt
    follows. An earlier attempt still alive on this machine is not taken for dead."""
    import subprocess

    from cadstore.encode.run import _settled, _still_running
    from cadstore.encode.work import Task
    from cadstore.io.publish import HOST_TAG

    task = Task(index=0, path="three.step", base="b")

    def attempt(pid: int, *events: tuple[str, int]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"type": "start", "index": 0, "pid": pid, "host": HOST_TAG},
            {"type": "loaded", "index": 0, "num_bodies": 3, "seconds": 0.1},
        ]
        for kind, body in events:
            if kind == "body":
                out.append({"type": "body", "index": 0, "body_index": body})
            else:
                out.append(
                    {
                        "type": "item",
                        "index": 0,
                        "name": f"b_{body}",
                        "body_index": body,
                        "status": "encoded",
                    }
                )
        return out

    once = attempt(1, ("body", 0), ("item", 0), ("body", 1))
    settled = _settled(task, once, final=False)
    assert settled.leave == {0} and settled.num_bodies == 3
    assert _settled(task, once, final=True).leave == {0, 1}
    twice = once + attempt(2, ("body", 1))
    crash = _settled(task, twice, final=False)
    assert crash.leave == {0, 1} and crash.carried[1]["reason"] == "crash"
    reading = [{"type": "start", "index": 0, "pid": 1}] * 2
    assert _settled(task, reading, final=False).lost_reading
    assert not _settled(task, reading[:1], final=False).lost_reading
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            assert _still_running(attempt(live.pid, ("body", 0)))
        finally:
            live.kill()
    assert not _still_running(attempt(live.pid, ("body", 0)))  # reaped: dead


def test_encode_on_the_cluster_continues_a_file_after_a_lost_body(tmp_path: Path) -> None:
    """A worker dying on body 1 of a 3-body file lost the whole file: Dask ran the task
    again from body 0 until its allowed failures were spent, body 2 was never encoded,
    and body 0, published by a dead worker, was not reported. Each attempt continues
    where the last one died, as the local supervisor does."""
    report, names = _encode_killing_body_1(tmp_path, allowed_failures=3)
    assert report.encoded == [names[0], names[2]]
    (failure,) = report.failed
    assert failure["name"] == names[1] and failure["body_index"] == 1
    assert failure["reason"] == "crash"
    assert "died while encoding this body (2 times)" in failure["error"]
    encoded = sorted(p.name for p in (tmp_path / "out" / "encoded").iterdir())
    assert encoded == sorted(f"{n}.zarr.data" for n in (names[0], names[2]))


def test_cluster_merge_detects_symmetry_in_every_item(
    client: distributed.Client, tmp_path: Path
) -> None:
    """Face pairs on the cluster as in one process: an array symmetric in every item is
    stored as triangles, whatever layout each item stored it in (triangles or full); one
    item not symmetric in an array (by one value, or by a signed zero alone) keeps that
    array in full, and every item reads back bit for bit. Items of 0 and 1 faces among them.
    """
    from cadstore.dataset import DatasetReader
    from cadstore.synthetic import make_item, write_item

    pairs = ("d2_distance", "a3_distance", "extended_adjacency", "face_pair_edges_path")
    written = []
    for index, faces in enumerate([3, 1, 5, 0, 9, 1, 30, 4, 12, 2]):
        item = make_item(index, n_faces=max(faces, 1))
        if not faces:  # every row gone: faces, edges, graph edges and face pairs
            item = {k: v[:0, :0] if k in pairs else v[:0] for k, v in item.items() if k != "graph"}
            item["graph"] = {"edges_source": np.zeros(0, np.int32), "num_nodes": 0}
        if index == 4:  # one value off the mirror
            item["d2_distance"] = item["d2_distance"].copy()
            item["d2_distance"][0, 1, 3] += 1.0
        if index == 7:  # +0.0 against -0.0: equal as numbers, not as stored bits
            adjacency = item["extended_adjacency"].copy()
            adjacency[0, 1], adjacency[1, 0] = 0.0, -0.0
            item["extended_adjacency"] = adjacency
        layout = "full" if index % 3 == 0 else "auto"
        path = write_item(
            tmp_path / f"item{index}.zarr", item, {}, summary_dir=False, face_pair_layout=layout
        )
        written.append((Path(path), item))
    files = [p for p, _ in written]
    local, dask = tmp_path / "local.dataset", tmp_path / "dask.dataset"
    assert not merge_items(files, local, shard_bytes=20_000).errors
    assert merge_items(files, dask, shard_bytes=20_000, client=client).items == [
        p.name[: -len(".zarr.data")] for p in files
    ]
    assert_same_dataset(local, dask)
    with DatasetReader(dask, stored_layout=True) as stored:
        assert {"d2_distance", "extended_adjacency"} <= set(stored.arrays("faceface"))
        assert "a3_distance" in stored.arrays("faceface_upper")
    with DatasetReader(dask) as reader:
        for code, (_, item) in enumerate(written):
            got = reader.read_item(code)
            for name in (*pairs, "face_areas"):
                group = "faces" if name == "face_areas" else "faceface"
                expected = np.ascontiguousarray(item[name])
                value = np.asarray(got[group][name])
                assert value.dtype == expected.dtype, (code, name)
                assert value.size == expected.size, (code, name)
                assert value.tobytes() == expected.tobytes(), (code, name)


@pytest.fixture
def threads_client() -> Iterator[distributed.Client]:
    """A client of an in-process cluster (worker threads), whose tasks see the test's
    monkeypatches."""
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        yield dask_client


def _nothing_published(out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize("step", ["scan", "shards"])
@pytest.mark.parametrize(("code", "kind", "problem"), OS_ERROR_KINDS)
def test_an_os_error_in_a_task_is_reported_as_itself(
    threads_client: distributed.Client,
    items: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    code: str,
    kind: str,
    problem: str,
) -> None:
    """An OSError raised by a task (a read the file system refused: EIO on a shared disk)
    was reported as "lost the Dask cluster ... run the merge again", which no rerun
    mends. It is reported as the StorageError it is, naming the item and the problem in
    words (no "[Errno N]"), of the same kind (a PermissionError stays one, as in one
    process); nothing is published. The read is refused below the item readers, as the
    file system refuses it (naming no file, as ``os.pread`` does)."""
    import errno

    from cadstore import errors
    from cadstore.io.sources import ZipSource
    from cadstore.merging import run

    failing = items[5]
    number = getattr(errno, code)
    armed = step == "scan"
    real_get = ZipSource.get
    real_plan = run.plan_merge

    def planned(*args: Any, **kwargs: Any) -> Any:
        nonlocal armed
        armed = True  # the scan is over: the shard tasks read the items again
        return real_plan(*args, **kwargs)

    def refused(self: ZipSource, key: str) -> bytes | None:
        if armed and self.location == str(failing) and "/c/" in key:
            raise OSError(number, os.strerror(number))
        return real_get(self, key)

    monkeypatch.setattr(run, "plan_merge", planned)
    monkeypatch.setattr(ZipSource, "get", refused)
    out = tmp_path / "out" / "flow.dataset"
    out.parent.mkdir()
    with pytest.raises(errors.StorageError) as caught:
        merge_items(items, out, shard_bytes=SHARD_BYTES, client=threads_client)
    assert type(caught.value) is getattr(errors, kind)
    assert isinstance(caught.value, type(OSError(number, "x")))  # PermissionError...
    assert caught.value.path == str(failing)
    assert caught.value.problem.endswith(problem)
    assert "Errno" not in str(caught.value) and str(failing) not in caught.value.problem
    assert "lost the Dask cluster" not in str(caught.value)
    _nothing_published(out)


@pytest.mark.parametrize("step", ["open", "read"])
@pytest.mark.parametrize(("code", "kind", "problem"), OS_ERROR_KINDS[:2])
def test_an_os_error_opening_an_item_in_a_task_stops_the_merge_naming_it(
    threads_client: distributed.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    code: str,
    kind: str,
    problem: str,
) -> None:
    """An OSError the file system raised while a scan task opened an item (the open of its
    zip file, the read of its bytes) made it a corrupt item, skipped, and the dataset was
    published without it, while the same error once the item was open stopped the merge.
    It stops the merge as the StorageError of its kind naming the item, as in one
    process; nothing is published and the items are unchanged. A damaged item (bytes that
    do not parse) is still skipped and listed."""
    import errno

    from cadstore import errors
    from conftest import refuse_opening

    items = [p for p, _, _ in write_items(tmp_path / "items", 4, seed=3)]
    damaged = items[1]
    damaged.write_bytes(damaged.read_bytes()[:500])
    before = {p: p.read_bytes() for p in items}
    skipped = merge_items(items, tmp_path / "skipped.dataset", client=threads_client)
    assert len(skipped.items) == 3
    assert [e["file"] for e in skipped.errors] == [str(damaged)]
    assert "not a readable zip file" in skipped.errors[0]["error"]

    failing = items[2]
    number = getattr(errno, code)
    refuse_opening(monkeypatch, failing, step, number)
    out = tmp_path / "out" / "flow.dataset"
    out.parent.mkdir()
    with pytest.raises(errors.StorageError) as caught:
        merge_items(items, out, client=threads_client)
    monkeypatch.undo()
    assert type(caught.value) is getattr(errors, kind)
    assert isinstance(caught.value, type(OSError(number, "x")))  # PermissionError...
    assert caught.value.path == str(failing)
    assert str(caught.value) == f"{failing}: opening it: {problem}"
    _nothing_published(out)
    assert {p: p.read_bytes() for p in items} == before


def test_an_os_error_in_a_mapped_call_is_reported_as_a_scan_s(
    threads_client: distributed.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the checks the driver maps onto the cluster (integers into floats):
    dask_map raised the task's OSError unchanged, '[Errno 13] Permission denied', naming
    the item only if the call's error happened to. It is reported as a scan's is: the
    StorageError of its kind (a PermissionError stays one) naming the call's item, the
    problem in words; nothing is published and the items are unchanged."""
    from cadstore import errors
    from cadstore.merging import write

    paths = [
        write_arrays(tmp_path / f"{name}.zarr", {"faces/v": value})
        for name, value in (("a", np.array([2**62 + 1, 3])), ("b", np.array([0.5, 1.5])))
    ]
    before = {p: Path(p).read_bytes() for p in paths}

    def refused(location: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")  # naming no file, as os.pread

    monkeypatch.setattr(write, "decode_item", refused)
    out = tmp_path / "out" / "flow.dataset"
    out.parent.mkdir()
    with pytest.raises(errors.StorageAccessError) as caught:
        merge_items(paths, out, client=threads_client)
    assert isinstance(caught.value, PermissionError)
    assert caught.value.path == str(paths[0])
    assert str(caught.value) == f"{paths[0]}: reading it: permission denied"
    _nothing_published(out)
    assert {p: Path(p).read_bytes() for p in paths} == before


def test_a_cluster_lost_during_a_merge_is_reported_as_lost(
    items: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the loss of the cluster itself is "lost the Dask cluster": here its scheduler
    and workers close while shard tasks run."""
    from cadstore.merging import distributed as on_dask

    real = on_dask.decode_item
    started = threading.Event()

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        time.sleep(2)
        return real(*args, **kwargs)

    monkeypatch.setattr(on_dask, "decode_item", slow)
    out = tmp_path / "out" / "flow.dataset"
    out.parent.mkdir()
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
    )
    with distributed.Client(cluster) as dask_client:

        def close_when_started() -> None:
            if started.wait(60):
                cluster.close()

        closer = threading.Thread(target=close_when_started)
        closer.start()
        try:
            with pytest.raises(MergeError, match="lost the Dask cluster"):
                merge_items(items, out, shard_bytes=SHARD_BYTES, client=dask_client)
        finally:
            closer.join()
            cluster.close()
    _nothing_published(out)


def test_an_error_a_dask_encode_task_raises_is_reported_as_what_it_is(
    threads_client: distributed.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception a Dask encode task raised itself was reported as a crash of its file
    ("crash", "the Dask task failed (OSError: ...)"), as if its worker had died, and the
    bodies it had encoded were not reported. It is classified as a supervised worker's
    failures are (work.failure_fields): an OSError writing the task's journal (a full
    disk) is "storage", a cadstore error after the bodies were encoded is what it is,
    those bodies reported encoded; a worker that dies stays a crash (the tests above)."""
    pytest.importorskip("OCP", reason="the cad extra is not installed")
    import errno

    from cadstore.cad.samples import write_sample_set
    from cadstore.encode import encode_files
    from cadstore.encode import run as encode_run
    from cadstore.errors import InvalidDataError

    parts = write_sample_set(tmp_path / "parts", count=2, seed=1)
    real_open = open

    def full_disk(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        journal = os.path.basename(str(path)).startswith(encode_run.DASK_JOURNAL_PREFIX)
        if journal and "a" in mode:  # written to: the disk is full; read: it is empty
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(encode_run, "open", full_disk, raising=False)
        report = encode_files(
            parts, tmp_path / "full", client=threads_client, histograms=False, merge=False
        )
    assert report.encoded == []
    assert sorted(f["item"] for f in report.failed) == sorted(str(p) for p in parts)
    for failure in report.failed:
        assert failure["reason"] == "storage", failure
        assert failure["error"].startswith("OSError: [Errno 28] No space left on device")
        assert "crash" not in failure["error"] and "Dask task failed" not in failure["error"]

    local = encode_files(parts, tmp_path / "local", workers=0, histograms=False, merge=False)
    real_process = encode_run.process_file
    bad = str(parts[0])

    def refused_after(task: Any, settings: Any, emit: Any) -> None:
        real_process(task, settings, emit)
        if task.path == bad:
            raise InvalidDataError(f"{task.path}: refused after its bodies")

    monkeypatch.setattr(encode_run, "process_file", refused_after)
    report = encode_files(
        parts, tmp_path / "late", client=threads_client, histograms=False, merge=False
    )
    assert local.failed == [] and len(local.encoded) == 2
    assert sorted(report.encoded) == sorted(local.encoded)
    (failure,) = report.failed
    assert failure["item"] == bad and failure["body_index"] is None
    assert failure["reason"] == "invalid_data"
    assert failure["error"] == f"InvalidDataError: {bad}: refused after its bodies"
    encoded = sorted(p.name for p in (tmp_path / "late" / "encoded").iterdir())
    assert encoded == sorted(f"{name}.zarr.data" for name in local.encoded)


def test_a_dask_encode_task_failing_between_bodies_names_the_bodies_not_encoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review of the test above: a task that raised between two bodies (its
    journal's disk full after body 0) reported one file failure and nothing of bodies 1
    to 3, which then appeared nowhere in the summary; a worker lost there names them
    ("bodies [...] were not encoded"). Bodies a resumed task leaves alone are not named."""
    import errno

    from cadstore.encode import run as encode_run
    from cadstore.encode.work import Settings, Task

    def four_bodies(task: Any, settings: Any, emit: Any) -> None:
        emit({"type": "start", "index": task.index})
        emit({"type": "loaded", "index": task.index, "num_bodies": 4})
        for body in (0, 1):
            if body in task.leave:
                continue
            emit({"type": "body", "index": task.index, "body_index": body})
            if body == 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            emit({"type": "item", "index": task.index, "body_index": body, "status": "ok"})

    monkeypatch.setattr(encode_run, "process_file", four_bodies)
    settings = Settings(str(tmp_path), str(tmp_path), {}, (), resume=False)
    for leave, missing in (((), [1, 2, 3]), ((2,), [1, 3])):
        task = Task(index=0, path=str(tmp_path / "part.step"), base="part", leave=leave)
        messages = encode_run._dask_encode_task(task, settings)
        failure = messages[-1]
        assert failure["type"] == "failed" and failure["reason"] == "storage"
        assert failure["error"] == (
            f"OSError: [Errno 28] No space left on device; bodies {missing} were not encoded"
        )
        assert [m["body_index"] for m in messages if m["type"] == "item"] == [0]
