"""What a new user trips over in the first hour: encoder output, the CLI, output folders.

Every test here runs on items written by the OpenCascade encoder (``cadstore encode`` on
sample STEP parts), as a user's first items are, not on hand-written ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cadstore.cli import EXIT_BROKEN_PIPE, main

pytest.importorskip("OCP")
xr = pytest.importorskip("xarray")
zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six sample parts encoded by ``cadstore encode``: their ``.data`` items."""
    from cadstore.cad import samples

    root = tmp_path_factory.mktemp("first_hour")
    samples.write_sample_set(root / "parts", count=6, seed=5)
    assert main(["encode", str(root / "parts"), "-o", str(root / "out"), "--no-progress"]) == 0
    items = sorted((root / "out" / "encoded").glob("*.data"))
    assert len(items) == 6
    return items


@pytest.fixture(scope="module")
def dataset(encoded: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("first_hour_ds") / "parts.dataset"
    assert main(["merge", *map(str, encoded), "-o", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------- schema
def test_encoded_items_validate_against_their_own_schema(
    encoded: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for item in encoded:
        # Without --schema, the schema stored in the item is the one checked.
        assert main(["validate", str(item)]) == 0, capsys.readouterr().out
        out = capsys.readouterr().out
        assert "(stored in the item)" in out and out.rstrip().endswith("valid")
    # Exported to a file, the same schema validates every item (graph/num_nodes, a 0-d
    # value, used to be declared on the 'edge' dimension and fail).
    schema_file = tmp_path / "nested" / "schema.json"
    assert main(["schema", str(encoded[0]), "-o", str(schema_file)]) == 0
    assert "wrote the schema" in capsys.readouterr().out
    schema = json.loads(schema_file.read_text())
    assert schema["groups"]["graph"]["arrays"]["num_nodes"]["dims"] == []
    for item in encoded:
        assert main(["validate", str(item), "--schema", str(schema_file), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["problems"] == []


def test_schema_command_prints_and_refuses_targets_without_one(
    encoded: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", str(encoded[0])]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["domain"] == "CAD_analysis" and "faces" in printed["groups"]
    from cadstore import JsonStorageHandler

    bare = JsonStorageHandler(str(tmp_path / "bare"))
    bare.save_data("x", np.arange(3))
    bare.close()
    assert main(["schema", str(tmp_path / "bare")]) == 2
    assert "stores no schema" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "bare")]) == 2
    err = capsys.readouterr().err
    assert "stores no schema to check against; pass --schema FILE" in err
    assert "cadstore schema ITEM -o schema.json" in err


# ---------------------------------------------------------------------------- xarray
def test_xarray_opens_every_encoded_item(encoded: list[Path]) -> None:
    for item in encoded:
        with zarr.storage.ZipStore(item, mode="r") as store:
            ds = xr.open_zarr(store)
            assert ds.sizes["face"] == ds["face_areas"].shape[0]
            assert ds["face_discretization"].dims == (
                "face",
                "face_discretization_sample",
                "face_discretization_component",
            )
            assert ds["edge_u_grids"].dims == ("edge", "edge_u_grids_u", "edge_u_grids_component")
            assert ds.sizes["face_discretization_component"] == 7
            assert ds.sizes["edge_u_grids_component"] == 6
            tree = xr.open_datatree(store, engine="zarr")
            graph = tree["graph"].to_dataset()
            assert graph["edges_source"].dims == ("edge",)
            assert int(graph["num_nodes"]) == ds.sizes["face"]


def test_merged_dataset_keeps_the_schema_dimension_names(dataset: Path) -> None:
    with zarr.storage.ZipStore(dataset, mode="r") as store:
        faces = xr.open_zarr(store, group="faces")
        assert faces["face_discretization"].dims == ("face", "sample", "component")
        edges = xr.open_zarr(store, group="edges")
        assert edges["edge_u_grids"].dims == ("edge", "u", "component")


# ---------------------------------------------------------------------------- split
@pytest.mark.parametrize("key", ["processing_time", "size_cadfile"])
def test_split_on_a_measurement_of_encoded_items(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    copy = _copy_dataset(dataset, tmp_path)
    assert main(["split", str(copy), "--key", key, "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    # Six items, quantile-binned: every subset gets some (it used to be 4/1/1 or crash).
    assert sum(counts.values()) == 6 and min(counts.values()) >= 1


@pytest.mark.parametrize("key", ["name", "description"])
def test_split_on_a_key_that_names_items_is_a_usage_error(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    copy = _copy_dataset(dataset, tmp_path)
    assert main(["split", str(copy), "--key", key]) == 2
    err = capsys.readouterr().err
    assert f"cannot stratify on '{key}'" in err and "keys that suit: face_types" in err


def _copy_dataset(dataset: Path, tmp_path: Path) -> Path:
    import shutil

    for suffix in (".dataset", ".infoset", ".attribset", ".flow"):
        shutil.copy(dataset.with_suffix(suffix), tmp_path / f"parts{suffix}")
    return tmp_path / "parts.dataset"


# ---------------------------------------------------------------------------- output folders
def test_merge_creates_missing_output_folders(
    encoded: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing" / "deeper" / "x.dataset"
    assert main(["merge", *map(str, encoded[:3]), "-o", str(out)]) == 0
    for suffix in (".dataset", ".infoset", ".attribset", ".flow"):
        assert out.with_suffix(suffix).is_file()
    # No temporary file is left beside them.
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "x.attribset",
        "x.dataset",
        "x.flow",
        "x.infoset",
    ]
    # And a directory-layout dataset too, through the library.
    import cadstore

    cadstore.DatasetMerger(
        [str(p) for p in encoded[:2]], str(tmp_path / "new" / "d.dataset")
    ).merge_data(force_compression=False)
    assert (tmp_path / "new" / "d.dataset" / "zarr.json").is_file()


def test_encode_refuses_a_url_instead_of_writing_a_local_folder_named_like_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The encoder writes local folders only: '-o s3://bucket/out' used to become the
    # local folder ./s3:/bucket/out, and the run reported success.
    from cadstore.cad import samples

    samples.write_sample_set(tmp_path / "parts", count=1, seed=1)
    monkeypatch.chdir(tmp_path)
    assert main(["encode", "parts", "-o", "s3://bucket/out", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the encode output folder must be a local path" in err
    assert "'s3://bucket/out'" in err
    assert main(["encode", "s3://bucket/parts", "-o", "out", "--no-progress"]) == 2
    assert "must be a local path, not the URL 's3://bucket/parts'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]


# ---------------------------------------------------------------------------- CLI details
def test_errors_suggest_options_in_cli_spelling(
    dataset: Path, encoded: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["merge", str(encoded[0]), "-o", str(dataset)]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite to replace the dataset, or --append to add items to it" in err
    assert "=True" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import cadstore

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cadstore {cadstore.__version__}"


def test_a_bad_option_after_a_command_prints_that_commands_usage(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["info", str(dataset), "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: cadstore info ") and "unrecognized arguments: --bogus" in err


def test_every_option_has_help_showing_its_default() -> None:
    import argparse

    from cadstore.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, command in [("cadstore", parser), *sub.choices.items()]:
        formatter = command.formatter_class(prog=name)
        for action in command._actions:
            if isinstance(
                action, argparse._HelpAction | argparse._SubParsersAction | argparse._VersionAction
            ):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            shown = formatter._get_help_string(action) or ""
            if action.option_strings and action.default not in (None, False):
                assert "default" in shown, f"{name} {action.option_strings}: default not shown"
            checked += 1
    assert checked > 40


def test_demo_help_does_not_call_no_cad_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: True)" not in out
    assert "--cad use OpenCascade sample parts (default when installed)" in out
    assert "--no-cad use generated realistic items (default without OpenCascade)" in out


def test_storage_option_is_explained_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "AWS_ACCESS_KEY_ID" in capsys.readouterr().out
    for command in ("merge", "info", "validate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "--storage-option" in out and "AWS_ACCESS_KEY_ID" not in out
        assert "see 'cadstore --help'" in " ".join(out.split())


@pytest.mark.parametrize("command", ["encode", "demo"])
def test_storage_options_for_a_local_only_command_are_refused(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given before the command they used to be dropped silently: 'encode' and 'demo'
    # take no --storage-option of their own and read and write local paths only.
    import cadstore.pipeline

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the demo ran")

    monkeypatch.setattr(cadstore.pipeline, "run_demo", must_not_run)
    monkeypatch.chdir(tmp_path)
    argv = ["--storage-option", "anon=true", command, "-o", "out"]
    argv += ["parts"] if command == "encode" else []
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"'cadstore {command}' reads and writes local paths only" in err
    assert list(tmp_path.iterdir()) == []


def test_a_closed_pipe_ends_the_command_quietly(dataset: Path) -> None:
    # `cadstore info X --json | head -2` where head has already gone: the reading end
    # is closed before the command writes, so its first write fails with EPIPE.
    command = [sys.executable, "-m", "cadstore", "info", str(dataset), "--json"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert err == ""
    assert code == EXIT_BROKEN_PIPE


# ---------------------------------------------------------------------------- warnings
def test_dataloader_workers_close_the_dataset_file(dataset: Path) -> None:
    pytest.importorskip("torch")
    script = f"""
import warnings, gc
warnings.simplefilter("error")
from torch.utils.data import DataLoader
from cadstore.dataset.loader import DatasetLoader
loader = DatasetLoader(merged_store_path={str(dataset)!r})
loader.split("random", random_state=0)
torch_ds, collate = loader.get_dataset("train").to_torch_with_collate()
for _ in DataLoader(torch_ds, batch_size=2, num_workers=2, collate_fn=collate):
    pass
loader.close_resources()
gc.collect()
"""
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "ResourceWarning" not in done.stderr and "unclosed" not in done.stderr
