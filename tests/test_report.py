"""The HTML report: self-contained, with plots, through the CLI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cadstore.cli import main

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def merged(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cadstore import merge

    out = tmp_path_factory.mktemp("report") / "demo.dataset"
    merge([p for p, _, _ in realistic_items[:12]], str(out))
    return out


def test_report_is_self_contained_with_plots(
    merged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(merged), "-o", str(out), "--title", "Demo parts"]) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<title>Demo parts" in page
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page)
    assert len(images) >= 6
    assert any("Faces per item" in alt for alt in images)
    assert any("file_label" in alt for alt in images)  # a label distribution
    assert "Plane" in page or "Where the bytes go" in page
    # Nothing is fetched from elsewhere: no external scripts, styles or images.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "12" in page  # the item count card


def test_report_from_flow_and_errors(
    merged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = str(merged)[: -len(".dataset")] + ".flow"
    assert main(["report", flow, "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").exists()
    assert main(["report", str(tmp_path / "missing.dataset"), "-o", str(tmp_path / "x.html")]) == 2
    assert "no such dataset" in capsys.readouterr().err
