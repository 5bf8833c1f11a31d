"""The main job, end to end, in both of its modes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cadstore.cli import main


def _check(out: Path, text: str) -> None:
    for step in range(1, 7):
        assert f"[{step}/6]" in text
    assert (out / "demo.dataset").exists() and (out / "demo.flow").exists()
    assert "--- Dataset Table of Contents ---" in text
    # A labelled dataset end to end: every item has a part family, the split is stratified
    # on it, and the epoch counts the labels it was given.
    assert "items by part_family: bracket " in text
    assert "[4/6] split stratified on part_family:" in text
    if "torch is not installed" not in text:
        assert re.search(r"part_family: bracket \d+, [a-z]+ \d+", text.split("[5/6]")[1])
    if "torch is not installed" not in text:
        assert "DataLoader(num_workers=2)" in text
    if "matplotlib is not installed" not in text:
        assert (out / "report.html").read_text().startswith("<!doctype html>")


def test_demo_on_generated_items(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "-o", str(tmp_path), "--no-cad", "-n", "16", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    _check(tmp_path, text)
    assert "every item read back identically" in text


def test_demo_on_cad_parts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("OCP")
    assert main(["demo", "-o", str(tmp_path), "--cad", "--parts", "6", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    _check(tmp_path, text)
    assert "sample CAD parts with OpenCascade" in text and "Plane" in text
    # A second run resumes: nothing is encoded again.
    assert main(["demo", "-o", str(tmp_path), "--cad", "--parts", "6", "--workers", "2"]) == 0
    assert "encoded 0 bodies" in capsys.readouterr().out


def test_demo_of_a_few_items_splits_at_random(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With 2 or 3 items, each of a part family of its own, the demo failed (exit 2) on a
    split it could not stratify, and the message listed the key it had just refused
    among the keys that suit. It splits at random then, saying so."""
    for n in (2, 3):
        out = tmp_path / str(n)
        assert main(["demo", "-o", str(out), "--no-cad", "-n", str(n), "--workers", "1"]) == 0
        text = capsys.readouterr().out
        assert "split at random (too few items per part_family to stratify)" in text
    from cadstore.dataset.loader import DatasetLoader
    from cadstore.errors import DatasetError

    loader = DatasetLoader(flow_output_file=tmp_path / "2" / "demo.flow")
    with loader, pytest.raises(DatasetError, match="cannot stratify on 'part_family'") as refused:
        loader.split("part_family", train=0.5, validation=0.0, test=0.5)
    suits = str(refused.value).split("keys that suit: ")[1]
    assert "part_family" not in suits and "face_types" in suits
