"""A ``.flow`` manifest may come from anywhere: what it can make cadstore open or write.

Issue 16, findings 8, 9 and 13: a manifest naming ``../outside/victim.infoset`` made a
split rewrite that file; manifests were followed to absolute paths and URLs (the reader
connected to ``127.0.0.1:9``); a named pipe as ``flow_data`` hung, and ``flow_data: "/"``
walked the file system; a manifest nested 10^5 deep raised ``RecursionError``; string ids in
an infoset raised ``TypeError`` in ``split()``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cadstore
from cadstore.dataset import DatasetExplorer, DatasetLoader
from cadstore.errors import CorruptStoreError
from cadstore.format.manifest import resolve_flow_paths


@pytest.fixture
def flow(realistic_items: list[Any], tmp_path: Path) -> Path:
    """A merged dataset with its copies in ``tmp_path/flows``; returns its manifest."""
    folder = tmp_path / "flows"
    cadstore.merge([str(p) for p, _, _ in realistic_items[:6]], str(folder / "parts.dataset"))
    return folder / "parts.flow"


def _manifest(flow: Path, name: str, **entries: Any) -> Path:
    doc = json.loads(flow.read_text())
    doc.update(entries)
    out = flow.parent / name
    out.write_text(json.dumps(doc))
    return out


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "where",
    ["relative", "absolute", "http", "s3", "symlink"],
)
def test_paths_outside_the_manifest_folder_are_refused(
    flow: Path, tmp_path: Path, where: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.infoset"
    shutil.copy(flow.with_suffix(".infoset"), victim)
    value = {
        "relative": "../outside/victim.infoset",
        "absolute": str(victim),
        "http": "http://127.0.0.1:9/victim.infoset",
        "s3": "s3://bucket/victim.infoset",
        "symlink": "sub/victim.infoset",  # sub -> ../outside: inside by name only
    }[where]
    if where == "symlink":
        (flow.parent / "sub").symlink_to("../outside")
    bad = _manifest(flow, "bad.flow", flow_info=value)
    before = _tree_bytes(tmp_path)
    for open_it in (
        lambda: DatasetExplorer(flow_output_file=bad),
        lambda: DatasetLoader(flow_output_file=bad),
        lambda: resolve_flow_paths(bad),
    ):
        with pytest.raises(CorruptStoreError) as refused:
            open_it()
        message = str(refused.value)
        assert str(bad) in message and "flow_info" in message and "outside its folder" in message
        assert "trust" in message
    assert _tree_bytes(tmp_path) == before


def test_a_trusted_manifest_is_followed_outside(flow: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "mine.infoset"
    shutil.copy(flow.with_suffix(".infoset"), victim)
    mine = _manifest(flow, "mine.flow", flow_info="../outside/mine.infoset")
    loader = DatasetLoader(flow_output_file=mine, trust_manifest=True)
    assert loader.explorer is not None and loader.explorer.parquet_file_path == str(victim)
    loader.split(key="random", train=0.5, validation=0.25, test=0.25, random_state=1)
    loader.close_resources()
    assert set(pq.read_table(victim).column("subset").to_pylist()) <= {
        "train",
        "validation",
        "test",
    }


def test_absolute_paths_inside_the_folder_are_followed(flow: Path) -> None:
    """Manifests of the specified system store absolute paths, beside the manifest."""
    absolute = _manifest(
        flow,
        "absolute.flow",
        flow_data=str(flow.with_suffix(".dataset")),
        flow_info=str(flow.with_suffix(".infoset")),
    )
    with DatasetExplorer(flow_output_file=absolute) as explorer:
        assert len(explorer.get_file_info_all()) == 6


def _in_a_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code``: a hang fails the test instead of stopping the suite."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("entry", ["flow_data", "flow_info"])
@pytest.mark.parametrize(
    ("value", "trusted", "problem"),
    [
        ("pipe", False, "not a regular file"),
        ("/", False, "outside its folder"),
        (".", False, "outside its folder"),
        ("/", True, "not a"),  # followed when trusted: the root is neither file nor dataset
    ],
)
def test_pipes_and_folders_are_refused_before_reading(
    flow: Path, entry: str, value: str, trusted: bool, problem: str
) -> None:
    os.mkfifo(flow.parent / "pipe")
    bad = _manifest(flow, "bad.flow", **{entry: value})
    child = _in_a_child(
        "import cadstore.dataset as d\n"
        f"d.DatasetExplorer(flow_output_file={str(bad)!r}, trust_manifest={trusted})"
    )
    assert child.returncode == 1, child.stderr
    assert "CorruptStoreError" in child.stderr and entry in child.stderr, child.stderr
    assert problem in child.stderr


def test_a_manifest_that_is_a_pipe_is_refused(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe.flow"
    os.mkfifo(pipe)
    child = _in_a_child(
        f"import cadstore.dataset as d\nd.DatasetExplorer(flow_output_file={str(pipe)!r})"
    )
    assert child.returncode == 1 and "not a regular file" in child.stderr, child.stderr


def test_a_deeply_nested_manifest_is_a_corrupt_store(flow: Path) -> None:
    deep = flow.parent / "deep.flow"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for open_it in (
        lambda: DatasetExplorer(flow_output_file=deep),
        lambda: resolve_flow_paths(deep),
    ):
        with pytest.raises(CorruptStoreError, match="nested too deeply") as refused:
            open_it()
        assert str(deep) in str(refused.value)


def test_string_ids_in_an_infoset_name_the_file(flow: Path) -> None:
    infoset = flow.with_suffix(".infoset")
    table = pq.read_table(infoset)
    ids = pa.array([f"item-{i}" for i in table.column("id").to_pylist()])
    table = table.set_column(table.schema.get_field_index("id"), "id", ids)
    table = table.replace_schema_metadata({})  # a foreign table: no commit stamp
    pq.write_table(table, infoset)
    before = infoset.read_bytes()
    with pytest.raises(CorruptStoreError) as refused:
        # The loader reads the split recorded in the infoset as it opens.
        DatasetLoader(flow_output_file=flow)
    assert str(infoset) in str(refused.value) and "'id' column holds string" in str(refused.value)
    assert infoset.read_bytes() == before


def test_a_pipe_beside_the_dataset_is_never_read(flow: Path) -> None:
    """An .infoset that is a named pipe is never opened (reading it would block forever):
    beside the dataset it is passed over for the tables the dataset carries; named, it is
    refused."""
    infoset = flow.with_suffix(".infoset")
    infoset.unlink()
    os.mkfifo(infoset)
    dataset = str(flow.with_suffix(".dataset"))
    beside = _in_a_child(
        "import cadstore.dataset as d\n"
        f"print(len(d.DatasetExplorer(merged_store_path={dataset!r}).get_file_info_all()))"
    )
    assert beside.returncode == 0 and beside.stdout.strip() == "6", beside.stderr
    named = _in_a_child(
        "import cadstore.dataset as d\n"
        f"d.DatasetExplorer(merged_store_path={dataset!r}, parquet_file_path={str(infoset)!r})"
    )
    assert named.returncode == 1 and "not a regular file" in named.stderr, named.stderr
    assert str(infoset) in named.stderr


def test_the_command_line_trusts_a_manifest_only_when_told(
    flow: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cadstore.cli import main

    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.infoset"
    shutil.copy(flow.with_suffix(".infoset"), victim)
    bad = _manifest(flow, "bad.flow", flow_info="../outside/victim.infoset")
    before = victim.read_bytes()
    for command in (
        ["split", str(bad), "--key", "random"],
        ["info", str(bad)],
        ["inspect", str(bad)],
    ):
        assert main(command) == 2, command
        assert "outside its folder" in capsys.readouterr().err
    assert victim.read_bytes() == before
    assert main(["--trust-manifest", "split", str(bad), "--key", "random"]) == 0
    assert victim.read_bytes() != before
