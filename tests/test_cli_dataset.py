"""The dataset commands of the CLI, through its entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadstore.cli import main
from cadstore.merging.options import FACE_PAIR_LEVEL


def test_merge_command(
    realistic_items: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(p) for p, _, _ in realistic_items[:5]]
    assert main(["merge", *files, "-o", str(tmp_path / "d"), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "merged 5 item(s)" in out and "faces:" in out
    for suffix in (".dataset", ".infoset", ".attribset", ".flow"):
        assert (tmp_path / f"d{suffix}").exists()
    # Existing output: a one-line error and exit 2.
    assert main(["merge", *files, "-o", str(tmp_path / "d.dataset")]) == 2
    assert "already exists" in capsys.readouterr().err
    bad = tmp_path / "bad.zarr.data"
    bad.write_text("x")
    assert main(["merge", *files[:2], str(bad), "-o", str(tmp_path / "e"), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["item_count"] == 2 and len(summary["errors"]) == 1
    assert main(["merge", files[4], "-o", str(tmp_path / "d"), "--append", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["item_count"] == 0


def test_merge_refuses_an_output_named_like_an_item(
    realistic_items: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cadstore merge ITEMS -o x.data`` wrote ``x.data.dataset`` (and its tables
    ``x.data.infoset`` ...): an output with the item suffix is a mistake; it is refused
    with exit 2 and a message naming the path, and nothing is written. ``.dataset`` is
    still added to other names, and not twice (``-o d.dataset/``)."""
    files = [str(p) for p, _, _ in realistic_items[:2]]
    out = tmp_path / "out"
    out.mkdir()
    for given in ("x.data", "x.data/"):
        assert main(["merge", *files, "-o", str(out / given)]) == 2
        err = capsys.readouterr().err
        assert str(out / "x.data") in err and "'.data'" in err
    assert list(out.iterdir()) == []
    assert main(["merge", *files, "-o", str(out / "d.dataset/"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["item_count"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "d.attribset",
        "d.dataset",
        "d.flow",
        "d.infoset",
    ]


def test_merge_refuses_an_output_named_like_the_manifest(
    realistic_items: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cadstore merge ITEMS -o d.flow --append`` (the manifest the explorer and the
    other commands take for the dataset) wrote a new dataset ``d.flow.dataset`` with
    tables and manifest ``d.flow.flow`` beside ``d.dataset``, instead of appending to it.
    It is refused with exit 2, naming the path and ``d.dataset``; nothing changes."""
    files = [str(p) for p, _, _ in realistic_items[:3]]
    assert main(["merge", *files[:2], "-o", str(tmp_path / "d"), "--json"]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for output in ("d.flow", "d.infoset", "d.attribset"):
        for extra in ([], ["--append"]):
            assert main(["merge", files[2], "-o", str(tmp_path / output), *extra]) == 2
            err = capsys.readouterr().err
            assert str(tmp_path / output) in err and str(tmp_path / "d.dataset") in err
            assert err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_merge_prints_the_tables_warnings_naming_the_items(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cadstore merge`` printed no warning when an item's metadata went to the
    ``.infoset`` otherwise than it holds it (the warning was in the ``.flow`` only); it
    prints it, naming the item, and lists it in ``--json``."""
    from cadstore import OptStorage

    files = []
    for index, mass in enumerate([2.5, "heavy"]):
        with OptStorage(tmp_path / f"p{index}.zarr") as item:
            item.save_data("face_areas", np.ones(2, dtype=np.float32))
            item.save_metadata("mass", mass)
            item.compress_store()
        files.append(str(tmp_path / f"p{index}.zarr.data"))
    mixed = "field 'mass' mixes strings (item 'p1') and numbers (item 'p0')"
    assert main(["merge", *files, "-o", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert f"  warning: {mixed}" in out
    assert main(["merge", *files, "-o", str(tmp_path / "e"), "--json"]) == 0
    assert any(mixed in w for w in json.loads(capsys.readouterr().out)["warnings"])


def test_merge_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["merge", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--append" in out
    # The help names the library's face-pair level, whatever it is now.
    assert f"at least {FACE_PAIR_LEVEL}" in " ".join(out.split())


def test_info_and_split_commands(
    realistic_items: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    files = [str(p) for p, _, _ in realistic_items[:20]]
    assert main(["merge", *files, "-o", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "d.dataset")]) == 0
    out = capsys.readouterr().out
    assert "--- Dataset Table of Contents ---" in out and "FACES_GROUP:" in out
    assert main(["info", str(tmp_path / "d.flow"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"] == 20 and "face_areas" in summary["groups"]["faces"]
    assert (
        main(["split", str(tmp_path / "d.flow"), "--key", "file_label", "--seed", "3", "--json"])
        == 0
    )
    counts = json.loads(capsys.readouterr().out)
    assert sum(counts.values()) == 20 and counts["train"] >= counts["test"]
    subsets = pd.read_parquet(tmp_path / "d.infoset")["subset"].value_counts().to_dict()
    assert subsets == {k: v for k, v in counts.items() if v}
    assert (
        main(
            [
                "split",
                str(tmp_path / "d.dataset"),
                "--key",
                "file_label",
                "--train",
                "0.9",
                "--validation",
                "0.3",
                "--test",
                "0.1",
            ]
        )
        == 2
    )
    assert "add up to 1" in capsys.readouterr().err
    # A negative seed: numpy's bare "expected non-negative integer" named no option.
    before = (tmp_path / "d.infoset").read_bytes()
    assert main(["split", str(tmp_path / "d.dataset"), "--key", "file_label", "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--seed must be a non-negative integer, got -1" in err
    assert (tmp_path / "d.infoset").read_bytes() == before
    assert main(["info", str(tmp_path / "nope.dataset")]) == 2
    assert main(["split", str(tmp_path / "d.dataset"), "--key", "no_such_key"]) == 2
    err = capsys.readouterr().err
    assert err.count("cadstore: error:") == 2 and "Traceback" not in err


def test_report_and_schema_outputs_never_replace_what_they_read(
    realistic_items: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``report -o`` and ``schema -o`` wrote over whatever the path named, exiting 0:
    ``-o parts.dataset`` replaced the dataset with an HTML page (its tables and manifest
    likewise), ``schema ITEM -o ITEM`` the item with JSON. Now only an earlier output of
    the same kind is replaced; anything else is a one-line error, exit 2, and stays."""
    pytest.importorskip("matplotlib")
    from cadstore import OptStorage
    from cadstore.schema import SchemaBuilder

    builder = SchemaBuilder(domain="CAD")
    builder.create_group("faces", "face").create_array("face_areas", ["face"], "float64")
    storage = OptStorage(tmp_path / "enc" / "part.zarr", summary_dir=False)
    storage.set_schema(builder.build())
    storage.save_data("faces/face_areas", np.arange(3.0))
    storage.compress_store()
    storage.close()
    item = f"{tmp_path / 'enc' / 'part.zarr'}.data"
    files = [str(p) for p, _, _ in realistic_items[:4]]
    assert main(["merge", *files, "-o", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("my notes")
    kept = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    kept[Path(item)] = Path(item).read_bytes()
    for target in ("d.dataset", "d.infoset", "d.attribset", "d.flow", "notes.txt", "folder"):
        out = str(tmp_path / target)
        assert main(["report", str(tmp_path / "d.dataset"), "-o", out]) == 2
        err = capsys.readouterr().err
        assert out in err and ("is not an HTML report" in err or "is a directory" in err)
    for target in (item, str(tmp_path / "d.flow"), str(tmp_path / "d.dataset")):
        assert main(["schema", item, "-o", target]) == 2
        assert f"{target}: exists and is not a schema JSON file" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in kept} == kept
    # An earlier output of the same kind is replaced, as before.
    for _ in range(2):
        assert main(["report", str(tmp_path / "d.dataset"), "-o", str(tmp_path / "r.html")]) == 0
        assert main(["schema", item, "-o", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["groups"]
    (tmp_path / "empty.json").touch()  # made by touch or mktemp: free to write
    assert main(["schema", item, "-o", str(tmp_path / "empty.json")]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["merge", "x.data", "-o", "x.dataset", "--wait", "nan"], "argument --wait"),
        (["merge", "x.data", "-o", "x.dataset", "--wait", "-1"], "argument --wait"),
        (["merge", "x.data", "-o", "x.dataset", "--workers", "-1"], "argument --workers"),
        (["repair", "x.dataset", "--wait", "nan"], "argument --wait"),
        (["encode", "parts", "-o", "out", "--workers", "-1"], "argument --workers"),
        (["demo", "--workers", "-1"], "argument --workers"),
    ],
)
def test_bad_wait_and_workers_options_are_usage_errors(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # '--wait nan' waited forever for a lock another writer held; negative values were
    # taken silently.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_report_and_repair_open_the_dataset_a_manifest_names(
    realistic_items: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cadstore report M.flow`` and ``cadstore repair M.flow`` took ``M.dataset`` for
    the dataset whatever the manifest lists, and said "M.dataset: no such dataset" for a
    manifest written with ``merge(..., flow=...)``, which info and split open. They open
    the dataset the manifest names; a manifest listing a dataset outside its folder is
    refused as info refuses it, unless ``--trust-manifest``."""
    import cadstore

    files = [str(p) for p, _, _ in realistic_items[:3]]
    out = tmp_path / "out"
    cadstore.merge(files, str(out / "parts.dataset"), flow=str(out / "run.flow"))
    manifest = out / "run.flow"
    assert main(["info", str(manifest)]) == 0
    capsys.readouterr()
    assert main(["report", str(manifest)]) == 0
    assert capsys.readouterr().out == f"wrote {out / 'parts.report.html'}\n"
    assert (out / "parts.report.html").stat().st_size > 0
    assert not (out / "run.dataset").exists() and not (out / "run.report.html").exists()
    assert main(["repair", str(manifest)]) == 0
    assert capsys.readouterr().out == f"{out / 'parts.dataset'}: nothing to repair\n"
    # A manifest elsewhere naming that dataset: followed only when trusted.
    moved = tmp_path / "elsewhere" / "run.flow"
    moved.parent.mkdir()
    doc = json.loads(manifest.read_text())
    for entry in ("flow_data", "flow_info", "flow_attributes"):
        doc[entry] = str(out / doc[entry])
    moved.write_text(json.dumps(doc))
    for argv in (["report", str(moved), "-o", str(tmp_path / "r.html")], ["repair", str(moved)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert str(moved) in err and "outside" in err, err
        assert main(["--trust-manifest", *argv]) == 0
        capsys.readouterr()


def test_report_of_a_manifest_checks_its_output_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cadstore report X.flow -o OUT`` read the manifest before looking at OUT, as
    ``write_report`` looks at it before the dataset: an OUT it would refuse (a file of
    another kind, a path below a file) was reported only after that work, and a bad
    manifest's error hid it. The output is checked first, and nothing is changed."""
    pytest.importorskip("matplotlib")
    manifest = tmp_path / "x.flow"
    manifest.write_text('{"flow_data": 5}')  # unusable, and no x.dataset beside it
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert main(["report", str(manifest), "-o", str(tmp_path / "r.html")]) == 2
    assert str(manifest) in capsys.readouterr().err  # the manifest's own error
    for out, problem in (
        (notes, "exists and is not an HTML report"),
        (notes / "r.html", f"{notes} is a file, not a folder"),
    ):
        assert main(["report", str(manifest), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out}: " in err and problem in err, err
        assert err.count("cadstore: error:") == 1
    assert notes.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "x.flow"]


def test_repair_through_the_manifest_mends_a_removed_copy_and_a_torn_manifest(
    realistic_items: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cadstore repair M.flow`` read the manifest strictly to find the dataset: with a
    table copy it lists removed, or the manifest itself torn, it failed on exactly what a
    repair mends (the same command on ``M.dataset`` mended both). The copies a manifest
    lists are not checked to find the dataset, and a torn manifest stands for the
    ``.dataset`` beside it; a FIFO for a manifest is never opened."""
    import cadstore

    dataset = tmp_path / "parts.dataset"
    manifest = tmp_path / "parts.flow"
    cadstore.merge([str(p) for p, _, _ in realistic_items[:3]], str(dataset))
    kept = {name: (tmp_path / name).read_bytes() for name in ("parts.infoset", "parts.flow")}
    before = dataset.read_bytes()
    (tmp_path / "parts.infoset").unlink()
    assert main(["repair", str(manifest)]) == 0
    assert "parts.infoset" in capsys.readouterr().out
    assert (tmp_path / "parts.infoset").read_bytes() == kept["parts.infoset"]
    manifest.write_bytes(kept["parts.flow"][:20])  # torn
    assert main(["repair", str(manifest)]) == 0
    assert "parts.flow" in capsys.readouterr().out
    assert (
        json.loads(manifest.read_text())["flow_data"] == json.loads(kept["parts.flow"])["flow_data"]
    )
    assert main(["info", str(manifest), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 3
    assert dataset.read_bytes() == before
    # Torn, with no dataset beside it: the manifest's own error, naming it.
    lone = tmp_path / "lone.flow"
    lone.write_bytes(kept["parts.flow"][:20])
    assert main(["repair", str(lone)]) == 2
    err = capsys.readouterr().err
    assert str(lone) in err and "invalid JSON" in err, err
    # A FIFO named like a manifest: not opened (it would block), the dataset beside it
    # is repaired.
    manifest.unlink()
    os.mkfifo(manifest)
    assert main(["repair", str(manifest)]) == 0
    capsys.readouterr()
    assert manifest.is_file() and json.loads(manifest.read_text())["flow_data"] == ("parts.dataset")
    assert dataset.read_bytes() == before


def test_a_table_copy_removed_beside_its_dataset_names_the_repair(
    realistic_items: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``parts.infoset`` removed, ``cadstore info parts.dataset`` (and the explorer
    given the manifest) said only that the manifest lists a file that does not exist.
    The dataset carries its tables: the error names the repair that publishes the copy
    again, and that repair, run as named, makes the dataset readable."""
    import shlex

    import cadstore
    from cadstore import DatasetExplorer
    from cadstore.errors import CorruptStoreError

    dataset = tmp_path / "parts.dataset"
    cadstore.merge([str(p) for p, _, _ in realistic_items[:3]], str(dataset))
    (tmp_path / "parts.infoset").unlink()
    assert main(["info", str(dataset)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "parts.infoset" in err
    command = err.split("'cadstore ")[1].split("'")[0]
    assert command == f"repair {dataset}"
    with pytest.raises(CorruptStoreError, match=r"cadstore\.lifecycle\.repair"):
        DatasetExplorer(flow_output_file=tmp_path / "parts.flow")
    assert main(shlex.split(command)) == 0
    capsys.readouterr()
    assert (tmp_path / "parts.infoset").exists()
    assert main(["info", str(dataset), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 3


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["merge", "ITEM", "-o", "OUT/d", "--level", "100"], "--level"),
        (["merge", "ITEM", "-o", "OUT/d", "--face-pair-level", "-200000"], "--face-pair-level"),
        (["encode", "IN", "-o", "OUT", "--timeout", "0"], "--timeout"),
        (["encode", "IN", "-o", "OUT", "--memory-limit", "-5"], "--memory-limit"),
        (["demo", "-o", "OUT", "--parts", "0"], "--parts"),
        (["demo", "-o", "OUT", "--no-cad", "-n", "0"], "-n/--items"),
        (["demo", "-o", "OUT", "--no-cad", "--seed", "-1"], "--seed"),
        (["split", "OUT/d.flow", "--key", "size_cadfile", "--bins", "0"], "--bins"),
    ],
)
def test_an_option_out_of_range_is_refused_in_its_own_spelling(
    realistic_items: list[Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    option: str,
) -> None:
    """``--level 100`` was refused as "compression_level must be ...", ``--timeout 0`` as
    "timeout must be ...", ``--bins 0`` as "bins must be ...", ``-n 0`` as "no median
    for empty data" after the demo had begun, and ``--parts 0`` as "no CAD files found
    in []" after creating its folders. Each is a usage error naming the option, before
    anything is written."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    item = realistic_items[0][0]
    given = [
        a.replace("ITEM", str(item))
        .replace("OUT", str(tmp_path / "out"))
        .replace("IN", str(inputs))
        for a in argv
    ]
    with pytest.raises(SystemExit) as info:
        main(given)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {option}: expected " in err.splitlines()[-1], err
    assert not (tmp_path / "out").exists()
