"""The tables of ``docs/benchmarks.md`` are those ``bench/tables.py`` renders from the JSON.

``bench/tables.py`` is a script, not part of the package: it is loaded from its file here,
and also run as the command the page documents.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "tables.py"
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


@pytest.fixture(scope="module")
def tables() -> ModuleType:
    """``bench/tables.py``, imported from its file."""
    spec = importlib.util.spec_from_file_location("cadstore_bench_tables", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def copies(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the results folder and of the page, free to modify."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    doc = tmp_path / "benchmarks.md"
    shutil.copyfile(DOC, doc)
    return results, doc


def _prose(text: str) -> str:
    """The page without what lies between table markers."""
    return re.sub(r"(<!-- table: \S+ -->\n).*?(<!-- /table -->)", r"\1\2", text, flags=re.S)


def test_docs_tables_match_the_recorded_results() -> None:
    """The check the page documents, run as documented: every table is up to date."""
    done = subprocess.run(
        [sys.executable, "bench/tables.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, (
        "docs/benchmarks.md does not match bench/results/*.json; run "
        f"`python bench/tables.py` and review the prose around the tables:\n{done.stderr}"
    )


def test_readme_summary_matches_the_recorded_results() -> None:
    """The README's short results table is the same generated summary, kept in step."""
    done = subprocess.run(
        [sys.executable, "bench/tables.py", "--doc", "README.md", "--partial", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "<!-- table: summary -->" in (ROOT / "README.md").read_text()


def test_every_table_is_on_the_page_and_every_results_file_has_a_table(
    tables: ModuleType,
) -> None:
    names = [name for name, _ in tables.find_blocks(DOC.read_text(encoding="utf-8"))]
    assert sorted(names) == sorted(tables.TABLES)
    sources = {source for table in tables.TABLES.values() for source in table.sources}
    assert sources == {path.name for path in RESULTS.glob("*.json")}


def test_check_detects_a_changed_number(
    tables: ModuleType, copies: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    results, doc = copies
    item_path = results / "item.json"
    item = json.loads(item_path.read_text())
    default = next(name for name in item["results"] if name.endswith("(default)"))
    item["results"][default]["write_ms"] = 9.87
    item_path.write_text(json.dumps(item))
    before = doc.read_text(encoding="utf-8")

    assert tables.main(["--check", "--results", str(results), "--doc", str(doc)]) == 1
    err = capsys.readouterr().err
    assert "stale tables" in err
    named = err.split("stale tables in", 1)[1].split("\n", 1)[0]
    assert {"summary", "item", "item-targets"} <= {n.strip(" ,") for n in named.split()}
    assert "merge" not in named
    assert "9.87" in err  # the diff shows the new number
    assert doc.read_text(encoding="utf-8") == before  # --check writes nothing

    result = tables.update(before, results)
    assert sorted(result.stale) == ["item", "item-targets", "summary"]
    assert result.missing == []

    assert tables.main(["--results", str(results), "--doc", str(doc)]) == 0
    after = doc.read_text(encoding="utf-8")
    assert "| **cadstore, zstd 1 (default)** | 9.87 |" in after
    assert _prose(after) == _prose(before)  # hand-written text untouched
    assert tables.main(["--check", "--results", str(results), "--doc", str(doc)]) == 0


def test_check_as_a_command_on_modified_results(copies: tuple[Path, Path]) -> None:
    results, doc = copies
    merge_path = results / "merge.json"
    merge = json.loads(merge_path.read_text())
    merge["rows"]["cadstore, 1 thread, 10000 items"]["mb_per_s"] = 321.0
    merge_path.write_text(json.dumps(merge))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--results", str(results), "--doc", str(doc)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "stale tables" in done.stderr and "merge" in done.stderr


def test_missing_or_broken_results_are_errors(
    tables: ModuleType, copies: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    results, doc = copies
    (results / "scale.json").unlink()
    assert tables.main(["--check", "--results", str(results), "--doc", str(doc)]) == 2
    assert "scale.json" in capsys.readouterr().err

    shutil.copyfile(RESULTS / "scale.json", results / "scale.json")
    (results / "encode.json").write_text('{"parts": 40}')
    assert tables.main(["--check", "--results", str(results), "--doc", str(doc)]) == 2
    assert "encode.json" in capsys.readouterr().err


def test_markers(tables: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "page.md"
    page.write_text("Intro quoting `<!-- table: item -->` in text.\n\n<!-- table: merge -->\n")
    assert tables.main(["--check", "--doc", str(page), "--partial"]) == 2  # unclosed
    assert "marker lines" in capsys.readouterr().err

    page.write_text("<!-- table: nope -->\n<!-- /table -->\n")
    assert tables.main(["--check", "--doc", str(page), "--partial"]) == 2
    assert "unknown tables ['nope']" in capsys.readouterr().err

    # A page with only some tables (the README's summary) needs --partial.
    page.write_text("# Results\n\n<!-- table: summary -->\n<!-- /table -->\n\nMore.\n")
    assert tables.main(["--doc", str(page)]) == 1
    assert "no markers for" in capsys.readouterr().err
    assert tables.main(["--doc", str(page), "--partial"]) == 0
    text = page.read_text()
    assert text.startswith("# Results\n\n<!-- table: summary -->\n\n| measure |")
    assert text.endswith("</sub>\n\n<!-- /table -->\n\nMore.\n")
    assert tables.main(["--check", "--doc", str(page), "--partial"]) == 0


@pytest.mark.parametrize(
    ("fmt", "value", "shown"),
    [
        ("fmt_ms", 0.5836, "0.58"),
        ("fmt_ms", 6.506, "6.51"),
        ("fmt_ms", 75.43, "75.4"),
        ("fmt_ms", 244.65, "245"),
        ("fmt_ms", 3993.45, "3,993"),
        ("fmt_ms", 0.0996, "0.10"),
        ("fmt_times", 32.06, "32x"),
        ("fmt_times", 3.169, "3.2x"),
        ("fmt_times", 5664.17, "5,664x"),
        ("fmt_rel", 1.0359, "1.04x"),
        ("fmt_rel", 0.0497, "0.050x"),
        ("fmt_int", 1387.59, "1,388"),
        ("fmt_pct", 0.0693, "6.9%"),
        ("fmt_pct", 0.3148, "31%"),
        ("fmt_pct", 0.0004, "<0.1%"),
        ("fmt_seconds", 143.469, "143.5"),
        ("fmt_seconds", 0.0263, "0.026"),
    ],
)
def test_number_formats(tables: ModuleType, fmt: str, value: float, shown: str) -> None:
    assert getattr(tables, fmt)(value) == shown


def _with_runs(item: dict, speedups: list[float]) -> dict:
    """``item`` (an ``item.json``) as ``bench_item.py --runs N`` records it: the batch-synced
    contender's speed-up in each run given, the first run's figures the summary's."""
    batch = next(name for name in item["results"] if name.endswith("batch-synced"))
    runs = []
    for speedup in speedups:
        results = {name: dict(entry) for name, entry in item["results"].items()}
        results[batch]["write_speedup_vs_spec_zarr2"] = speedup
        runs.append({"loadavg": [0.1, 0.1, 0.1], "results": results})
    item = dict(item, runs=runs, run_chosen=0)
    item["results"] = {name: dict(entry) for name, entry in item["results"].items()}
    item["results"][batch]["write_speedup_vs_spec_zarr2"] = speedups[0]
    return item


def test_item_runs_show_their_spread_and_how_many_met_the_target(
    tables: ModuleType, copies: tuple[Path, Path]
) -> None:
    """Over several runs the write target is shown as met in k of N runs, with the range:
    one run's ratio may land on either side of 20x while another's does not."""
    results, _ = copies
    item_path = results / "item.json"
    item = json.loads(item_path.read_text())
    item_path.write_text(json.dumps(_with_runs(item, [18.4, 16.0, 20.2, 21.3, 19.1])))

    lines, _ = tables.render_item_targets(results)
    synced = next(line for line in lines if "speed-up" in line and "synced per block" in line)
    assert "18x (16x-21x over 5 runs)" in synced
    assert "**no** (2 of 5 runs)" in synced

    rows, _ = tables.render_summary(results)
    write = next(line for line in rows if line.startswith("| write one item"))
    assert "**18x** (16x-21x), target met in 2 of 5 runs" in write


def test_item_median_run_is_the_recorded_summary() -> None:
    """``bench_item.py --runs N`` records the run of median speed-up, every run's ratios
    beside it."""
    pytest.importorskip("h5py")
    spec = importlib.util.spec_from_file_location(
        "cadstore_bench_item", ROOT / "bench" / "bench_item.py"
    )
    assert spec is not None and spec.loader is not None
    sys.path.insert(0, str(ROOT / "bench"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
        del sys.modules[spec.name]
    item = json.loads((RESULTS / "item.json").read_text())
    batch = next(name for name in item["results"] if name.endswith("batch-synced"))
    summaries = []
    for number, speedup in enumerate([21.0, 16.0, 19.0, 23.0]):
        results = {name: dict(entry) for name, entry in item["results"].items()}
        results[batch]["write_speedup_vs_spec_zarr2"] = speedup
        summaries.append(dict(item, results=results, loadavg=[float(number)] * 3))

    chosen = module.median_run(summaries)
    assert chosen["results"][batch]["write_speedup_vs_spec_zarr2"] == 19.0  # lower middle
    assert chosen["run_chosen"] == 2 and chosen["loadavg"] == [2.0] * 3
    assert [run["results"][batch]["write_speedup_vs_spec_zarr2"] for run in chosen["runs"]] == [
        21.0,
        16.0,
        19.0,
        23.0,
    ]
    assert module.median_run(summaries[:1]) is summaries[0]
