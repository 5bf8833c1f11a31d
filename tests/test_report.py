"""The HTML report: self-contained, every section there, checked in a real browser.

Two real datasets: the workload generator's items (labels, metadata, then a recorded
stratified split) and sample CAD parts encoded by OpenCascade (real geometry, one body per
file, no labels). The browser test loads the written pages in headless Chromium.
"""

from __future__ import annotations

import base64
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadstore.cli import main

pytest.importorskip("matplotlib")

SECTIONS = (
    "Overview",
    "Item sizes",
    "Geometry",
    "Labels and metadata by split",
    "Parts",
    "Storage",
    "First items",
)


def sections_of(page: str) -> dict[str, str]:
    """``{section id: its HTML}`` (sections do not nest)."""
    return dict(re.findall(r'<section id="([\w-]+)">(.*?)</section>', page, flags=re.S))


def images_of(html: str) -> list[dict[str, str]]:
    """The attributes of every ``<img>``."""
    return [
        dict(re.findall(r'([\w-]+)="([^"]*)"', tag)) for tag in re.findall(r"<img [^>]*>", html)
    ]


def svg_of(image: dict[str, str]) -> bytes:
    prefix = "data:image/svg+xml;base64,"
    assert image["src"].startswith(prefix)
    return base64.b64decode(image["src"][len(prefix) :])


@pytest.fixture(scope="module")
def merged(realistic_items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve workload items merged, without a split."""
    from cadstore import merge

    out = tmp_path_factory.mktemp("report") / "demo.dataset"
    merge([p for p, _, _ in realistic_items[:12]], str(out))
    return out


@pytest.fixture(scope="module")
def split_dataset(merged: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same dataset with a split stratified on ``file_label`` recorded in its infoset."""
    folder = tmp_path_factory.mktemp("split")
    for suffix in (".dataset", ".infoset", ".attribset", ".flow"):
        source = merged.with_suffix(suffix)
        if source.exists():
            shutil.copy(source, folder / source.name)
    dataset = folder / merged.name
    assert main(["split", str(dataset), "--key", "file_label", "--seed", "1"]) == 0
    return dataset


@pytest.fixture(scope="module")
def split_page(split_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pages") / "split.html"
    assert main(["report", str(split_dataset), "-o", str(out), "--title", "Demo parts"]) == 0
    return out


@pytest.fixture(scope="module")
def cad_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve sample CAD parts, encoded and merged through the command line."""
    pytest.importorskip("OCP")
    from cadstore.cad.samples import write_sample_set

    root = tmp_path_factory.mktemp("cad")
    write_sample_set(root / "steps", 12)
    assert main(["encode", str(root / "steps"), "-o", str(root / "out"), "--no-progress"]) == 0
    dataset = root / "parts.dataset"
    assert main(["merge", str(root / "out" / "encoded"), "-o", str(dataset)]) == 0
    return dataset


@pytest.fixture(scope="module")
def cad_page(cad_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cadstore.dataset.report import write_report

    out = tmp_path_factory.mktemp("pages") / "cad.html"
    write_report(str(cad_dataset), str(out))
    return out


# ---------------------------------------------------------------------- the page
def test_report_is_self_contained_with_every_section(
    split_page: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = split_page.read_text()
    assert page.startswith("<!doctype html>") and "<title>Demo parts - cadstore report" in page
    headings = re.findall(r"<h2>([^<]*)</h2>", page)
    assert headings == list(SECTIONS)
    # Nothing is fetched from elsewhere: no script, no external styles or images.
    assert "<script" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert not re.search(r"url\(", page)
    images = images_of(page)
    assert images and all(i["src"].startswith("data:image/") for i in images)
    # Shown at their natural size: every image says how big it is drawn.
    assert all(int(i["width"]) > 0 and int(i["height"]) > 0 for i in images)
    found = re.findall(r"<b>([^<]*)</b><span>([^<]*)</span>", page)
    cards = {label: value for value, label in found}
    assert cards["items"] == "12"
    assert re.fullmatch(r"[\d.]+ (KiB|MiB)", cards["stored"])
    assert {"faces", "co-edges", "face pairs", "train", "validation", "test"} <= set(cards)
    assert sum(int(cards[s]) for s in ("train", "validation", "test")) == 12


def test_charts_are_vector_images_drawn_at_their_size(split_page: Path) -> None:
    charts = [i for i in images_of(split_page.read_text()) if "thumb" not in i.get("class", "")]
    assert len(charts) >= 10
    for chart in charts:
        svg = svg_of(chart)
        found = re.search(rb'width="([\d.]+)pt" height="([\d.]+)pt"', svg)
        assert found, chart["alt"]
        # The img is as large as the drawing (pt -> CSS px): never a small image stretched.
        assert abs(float(found[1]) * 96 / 72 - int(chart["width"])) <= 1
        assert abs(float(found[2]) * 96 / 72 - int(chart["height"])) <= 1


def test_one_name_per_thing(split_page: Path) -> None:
    page = split_page.read_text()
    shown = re.sub(r'<img [^>]*>|<section id="storage">.*?</section>', "", page, flags=re.S)
    assert "Co-edges per item" in shown and "Co-edge lengths" in shown
    # Rows of the edges group are co-edges everywhere on the page, never plain "edges"
    # (array names in the storage table aside).
    plain = re.findall(r"(?<![-/\w])edges\b(?! group)", re.sub(r"<[^>]+>", " ", shown), re.I)
    assert plain == []


def test_labels_per_split_show_the_stratification(split_dataset: Path, split_page: Path) -> None:
    import pandas as pd

    labels = sections_of(split_page.read_text())["labels"]
    info = pd.read_parquet(split_dataset.with_suffix(".infoset"))
    # The split table counts what the infoset records.
    for split, count in info["subset"].value_counts().items():
        assert re.search(rf"<td>{split}</td><td class=\"n\">{count}</td>", labels)
    figures = dict(re.findall(r"<figure><h3>([^<]*)</h3>(.*?)</figure>", labels))
    assert {"file_label", "category", "Face types (items having one)"} <= set(figures)
    # The caption's gap is the largest difference between a split's share and the overall
    # share, recomputed here from the infoset.
    overall = info["file_label"].value_counts(normalize=True)
    gap = max(
        (
            group["file_label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
            - overall
        )
        .abs()
        .max()
        for _, group in info.groupby("subset")
    )
    caption = re.search(r"<figcaption>([^<]*)</figcaption>", figures["file_label"])
    assert caption is not None
    assert "over train, validation, test" in caption[1]
    assert f"{gap * 100:.1f} percentage points" in caption[1]
    # Metadata is drawn with units.
    assert re.search(r"size_cadfile.*median [\d.]+ KiB", labels, flags=re.S)
    assert re.search(r"processing_time.*median [\d.]+ ms", labels, flags=re.S)


def test_without_a_split_the_page_says_so(merged: Path, tmp_path: Path) -> None:
    from cadstore.dataset.report import write_report

    out = tmp_path / "r.html"
    write_report(str(merged), str(out))
    labels = sections_of(out.read_text())["labels"]
    assert "No split is recorded" in labels
    assert "file_label" in labels and "percentage points" not in labels


def test_first_items_are_short_with_units(split_dataset: Path, split_page: Path) -> None:
    import pandas as pd

    items = sections_of(split_page.read_text())["items"]
    info = pd.read_parquet(split_dataset.with_suffix(".infoset"))
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", items)
    assert len(re.findall(r"<tr>", items)) == 13  # header and 12 rows
    # No absolute path: sources are shown below the folder they share.
    assert not any(c.startswith("/") for c in cells)
    assert "/data/cad" not in items
    first = info["description"].iloc[0]
    assert "/".join(first.split("/")[-2:]) in cells
    # Long names are shortened, sizes and times carry units.
    assert any("…" in c for c in cells) and info["name"].iloc[0] not in cells
    assert any(re.fullmatch(r"[\d.]+ KiB", c) for c in cells)
    assert any(re.fullmatch(r"[\d.]+ (ms|s)", c) for c in cells)
    assert 'class="scroll"' in items  # a wide table scrolls inside its box


def test_storage_table_in_binary_units(split_page: Path) -> None:
    storage = sections_of(split_page.read_text())["storage"]
    assert "faces/face_discretization" in storage and "stored" in storage
    assert re.search(r'<td class="n">[\d.]+ (KiB|MiB)</td>', storage)
    assert "n/a" not in storage  # stored sizes were listed from the zip
    chart = images_of(storage)
    assert len(chart) == 1 and "largest arrays" in chart[0]["alt"]


def test_cad_parts_geometry_constant_columns_and_thumbnails(
    cad_dataset: Path, cad_page: Path
) -> None:
    from cadstore.dataset.reader import DatasetReader

    page = cad_page.read_text()
    parts = sections_of(page)
    geometry = parts["geometry"]
    for title in (
        "Face areas",
        "Co-edge lengths",
        "Dihedral angles",
        "Convexity",
        "Face types",
        "Co-edge curve types",
    ):
        assert f"<h3>{title}</h3>" in geometry
    assert "most common: convex" in geometry
    assert "most common: Plane" in geometry
    # One body per file: no plot of a single value, a sentence instead.
    labels = parts["labels"]
    assert "<b>body_index</b>: all 0" in labels and "<b>num_bodies</b>: all 1" in labels
    assert "<h3>body_index</h3>" not in page and "<h3>num_bodies</h3>" not in page
    # One thumbnail per item (twelve is under the cap), each a 2x PNG of a part.
    thumbs = [i for i in images_of(parts["parts"]) if i.get("class") == "thumb"]
    with DatasetReader(cad_dataset) as reader:
        names = set(reader.item_names)
    assert len(thumbs) == 12 and {t["title"] for t in thumbs} == names
    for thumb in thumbs:
        png = base64.b64decode(thumb["src"].split(",", 1)[1])
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert (width, height) == (2 * int(thumb["width"]), 2 * int(thumb["height"]))
    assert "Plane" in parts["parts"] and "Cylinder" in parts["parts"]  # the colour legend


def test_thumbnails_are_drawn_from_the_samples(cad_dataset: Path) -> None:
    from cadstore.dataset.reader import DatasetReader
    from cadstore.dataset.report import render_part

    with DatasetReader(cad_dataset) as reader:
        samples = reader.read_item(0)["faces"]["face_discretization"]
    fig = render_part(samples, ["#ff0000"] * len(samples))
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    # Red shaded by the normals: pure-hue pixels cover part of the picture, not all of it.
    red = (pixels[..., 0] > 80) & (pixels[..., 1] < 30) & (pixels[..., 2] < 30)
    assert 0.05 < red.mean() < 0.9
    # A face whose samples all fall off the face draws nothing.
    samples[..., 6] = 0
    empty = render_part(samples, ["#ff0000"] * len(samples))
    empty.canvas.draw()
    blank = np.asarray(empty.canvas.buffer_rgba())[..., :3].astype(int)
    assert not ((blank[..., 0] > 80) & (blank[..., 1] < 30)).any()


def test_the_dataset_alone_is_enough(realistic_items: list[Any], tmp_path: Path) -> None:
    """No .infoset, no .attribset, no source files: the dataset carries its tables, and
    thumbnails and geometry come from its arrays."""
    from cadstore import merge
    from cadstore.dataset.report import MAX_THUMBNAILS, write_report

    built = tmp_path / "built" / "all.dataset"
    merge([p for p, _, _ in realistic_items], str(built))
    alone = tmp_path / "alone" / "all.dataset"
    alone.parent.mkdir()
    shutil.copy(built, alone)
    out = tmp_path / "alone.html"
    write_report(str(alone), str(out))
    page = out.read_text()
    parts = sections_of(page)
    assert {"overview", "sizes", "geometry", "parts", "storage", "labels"} <= set(parts)
    assert "category" in parts["labels"]
    thumbs = [i for i in images_of(parts["parts"]) if i.get("class") == "thumb"]
    assert len(thumbs) == MAX_THUMBNAILS < len(realistic_items)
    assert f"{MAX_THUMBNAILS} of {len(realistic_items)} items" in parts["parts"]


def test_missing_arrays_leave_their_sections_out(tmp_path: Path) -> None:
    from cadstore import merge
    from cadstore.dataset.report import write_report
    from cadstore.synthetic import iter_items, write_item

    (tmp_path / "items").mkdir()
    paths = []
    for name, item, _ in iter_items(5, seed=3):
        kept = {k: item[k] for k in ("face_types", "face_areas")}
        paths.append(write_item(tmp_path / "items" / f"{name}.zarr", kept, {"body_index": 0}))
    merge(paths, str(tmp_path / "faces.dataset"))
    out = tmp_path / "faces.html"
    write_report(str(tmp_path / "faces.dataset"), str(out))
    parts = sections_of(out.read_text())
    assert "parts" not in parts  # no face samples, no thumbnails
    assert "<h3>Face areas</h3>" in parts["geometry"]
    assert "Co-edge" not in parts["geometry"] and "Dihedral" not in parts["geometry"]
    assert "<b>body_index</b>: all 0" in parts["labels"]


def test_per_face_labels_colour_the_parts_and_are_counted_per_split(tmp_path: Path) -> None:
    from cadstore import merge
    from cadstore.dataset.report import write_report
    from cadstore.synthetic import iter_items, write_item

    (tmp_path / "items").mkdir()
    paths = []
    for name, item, meta in iter_items(10, seed=4):
        labels = (np.arange(len(item["face_types"])) % 3).astype(np.int32)
        paths.append(
            write_item(tmp_path / "items" / f"{name}.zarr", {**item, "face_labels": labels}, meta)
        )
    dataset = tmp_path / "seg.dataset"
    merge(paths, str(dataset))
    out = tmp_path / "before.html"
    write_report(str(dataset), str(out))
    parts = sections_of(out.read_text())
    assert "<h3>face_labels</h3>" in parts["labels"]  # counts, no split yet
    assert re.search(r"Colour: <code>face_labels</code>", parts["parts"])
    assert main(["split", str(dataset), "--key", "category", "--seed", "2"]) == 0
    write_report(str(dataset), str(out))
    labels = sections_of(out.read_text())["labels"]
    assert "<h3>face_labels (items having one)</h3>" in labels
    assert "<h3>Face types (items having one)</h3>" in labels


@pytest.mark.parametrize(
    ("discretization", "tile"),
    [((4, 7), "no faces"), ((20,), "not faces x points x 7")],
    ids=["an item without faces", "samples not (F, P, 7)"],
)
def test_an_undrawable_item_is_an_empty_tile(
    tmp_path: Path, discretization: tuple[int, ...], tile: str
) -> None:
    """An item with no faces (its samples (0, P, 7)), or face samples not shaped
    (F, P, 7), stopped the whole report with numpy's "cannot reshape array" (exit 2, no
    page): its thumbnail is an empty tile saying why, and the page is written."""
    from cadstore import OptStorage, merge
    from cadstore.dataset.reader import DatasetReader
    from cadstore.dataset.report import render_part

    paths = []
    for name, n in (("full", 3), ("empty", 0)):
        with OptStorage(tmp_path / f"{name}.zarr") as storage:
            storage.save_data("face_areas", np.ones(n, dtype=np.float32))
            storage.save_data("face_types", np.zeros(n, dtype=np.int32))
            samples = np.ones((n, *discretization), dtype=np.float32)
            storage.save_data("face_discretization", samples)
            storage.compress_store()
        paths.append(str(tmp_path / f"{name}.zarr.data"))
    dataset = tmp_path / "odd.dataset"
    merge(paths, str(dataset))
    out = tmp_path / "odd.html"
    assert main(["report", str(dataset), "-o", str(out)]) == 0
    parts = sections_of(out.read_text())["parts"]
    assert 'title="empty"' in parts and 'title="full"' in parts
    with DatasetReader(dataset) as reader:
        code = 1 if tile == "no faces" else 0
        samples = reader.read_item(code)["faces"]["face_discretization"]
    fig = render_part(samples, ["#ff0000"] * len(samples))
    assert any(tile in text.get_text() for text in fig.axes[0].texts)


# ---------------------------------------------------------------------- helpers
def test_html_helpers_always_escape() -> None:
    from cadstore.dataset.report import Markup, join, tag, void

    assert tag("p", "<script>x</script>") == "<p>&lt;script&gt;x&lt;/script&gt;</p>"
    assert (
        void("img", alt='a "quote"', src="data:x") == '<img alt="a &quot;quote&quot;" src="data:x">'
    )
    assert tag("td", "1", class_="n", hidden=True, title=None) == '<td class="n" hidden>1</td>'
    assert join([Markup("<b>kept</b>"), None, "&"]) == "<b>kept</b>&amp;"
    assert tag("div", [tag("i", "a"), ["b"]]) == "<div><i>a</i>b</div>"


def test_formats() -> None:
    from cadstore.dataset.report import (
        format_bytes,
        format_number,
        format_seconds,
        relative_paths,
        short_name,
    )

    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(400 * 1024) == "400 KiB"
    assert format_bytes(3 * 1024**3) == "3 GiB"
    assert format_seconds(0.0123) == "12.3 ms"
    assert format_seconds(2.5) == "2.5 s"
    assert format_seconds(75) == "1 min 15 s"
    assert format_number(1234567) == "1,234,567" and format_number(0.012985) == "0.013"
    assert relative_paths(["/data/cad/a/x.step", "/data/cad/b/y.step"]) == ["a/x.step", "b/y.step"]
    assert relative_paths(["/tmp/steps/one.step"]) == ["one.step"]
    assert relative_paths(["C:\\parts\\a.step", "C:\\parts\\b.step"]) == ["a.step", "b.step"]
    assert relative_paths(["not a path"]) == ["not a path"]
    name = "01fe0bd7293ab852ba8be6ff8305434a_0"
    short = short_name(name)
    assert len(short) == 20 and short.startswith(name[:8]) and short.endswith("434a_0")


# ---------------------------------------------------------------------- the command line
def test_report_lands_beside_the_dataset_by_default(
    split_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    expected = split_dataset.parent / "demo.report.html"
    expected.unlink(missing_ok=True)
    assert main(["report", str(split_dataset)]) == 0
    assert expected.exists() and str(expected) in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # nothing in the current folder
    expected.unlink()
    flow = split_dataset.with_suffix(".flow")
    assert flow.exists()
    assert main(["report", str(flow)]) == 0
    assert expected.read_text().startswith("<!doctype html>")
    assert list(tmp_path.iterdir()) == []
    # An output in folders that do not exist yet: they are created.
    nested = tmp_path / "missing_dir" / "deeper" / "x.html"
    assert main(["report", str(split_dataset), "-o", str(nested)]) == 0
    assert nested.read_text().startswith("<!doctype html>")
    assert [p.name for p in nested.parent.iterdir()] == ["x.html"]


def test_output_option_shows_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["report", "--help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default: <stem>.report.html beside the dataset" in text


def test_report_from_flow_and_errors(
    merged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = str(merged)[: -len(".dataset")] + ".flow"
    assert main(["report", flow, "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").exists()
    assert main(["report", str(tmp_path / "missing.dataset"), "-o", str(tmp_path / "x.html")]) == 2
    assert "no such dataset" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_library_refuses_an_output_below_a_file_before_reading_the_dataset(
    merged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write_report(ds, "notes.txt/r.html")`` drew the whole report, then raised the
    system's bare ``NotADirectoryError``; only the CLI checked the folder beforehand."""
    from cadstore.dataset import report
    from cadstore.errors import OutputExistsError

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    output = str(notes / "r.html")
    # Nothing is read: a dataset that does not exist is not noticed.
    with pytest.raises(OutputExistsError) as refused:
        report.write_report(str(tmp_path / "missing.dataset"), output)
    assert output in str(refused.value)
    assert f"{notes} is a file, not a folder" in str(refused.value)

    # Nothing is drawn for a dataset that does exist.
    def no_drawing(ctx: object) -> list[object]:
        raise AssertionError("the report was drawn")

    monkeypatch.setattr(report, "_build_sections", no_drawing)
    with pytest.raises(OutputExistsError, match=re.escape(output)):
        report.write_report(str(merged), output)
    assert notes.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_stored_sizes_match_the_zip(merged: Path) -> None:
    from cadstore.dataset.reader import DatasetReader

    with DatasetReader(merged) as reader:
        size = reader.stored_nbytes("faces", "face_areas")
    with zipfile.ZipFile(merged) as archive:
        chunks = [
            i
            for i in archive.infolist()
            if i.filename.startswith("faces/face_areas/") and not i.filename.endswith(".json")
        ]
    assert size == sum(i.compress_size for i in chunks) > 0


# ---------------------------------------------------------------------- in a browser
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

_MEASURE = """() => {
  const boxes = [...document.querySelectorAll('img, svg')].map(el => {
    const box = el.getBoundingClientRect();
    return {tag: el.tagName, alt: el.getAttribute('alt') || '', cls: el.className || '',
            complete: el.complete === undefined ? true : el.complete,
            naturalWidth: el.naturalWidth === undefined ? box.width : el.naturalWidth,
            naturalHeight: el.naturalHeight === undefined ? box.height : el.naturalHeight,
            width: box.width, height: box.height};
  });
  return {images: boxes, scrollWidth: document.documentElement.scrollWidth,
          innerWidth: window.innerWidth};
}"""


@pytest.mark.parametrize("which", ["split_page", "cad_page"])
def test_page_in_headless_chromium(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    page_path: Path = request.getfixturevalue(which)
    problems: list[str] = []
    fetched: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 900, "height": 800},
        )
        try:
            page = context.new_page()
            page.on(
                "console",
                lambda m: (
                    problems.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            page.on("request", lambda r: fetched.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            measured = page.evaluate(_MEASURE)
        finally:
            context.close()
    assert problems == []
    # The page itself and its data URIs: nothing else was asked for.
    assert all(u.startswith(("file://", "data:")) for u in fetched), fetched
    images = measured["images"]
    assert len(images) >= 10
    for image in images:
        assert image["complete"], image["alt"]
        assert image["naturalWidth"] > 0 and image["naturalHeight"] > 0, image["alt"]
        assert image["width"] > 0 and image["height"] > 0, image["alt"]
        # Never enlarged past the pixels it has: charts at most at their drawn size,
        # thumbnails at half their pixels (2x).
        density = 2 if "thumb" in image["cls"] else 1
        assert image["width"] <= image["naturalWidth"] / density + 1, image["alt"]
    # Wide tables scroll inside their box: the page itself never scrolls sideways.
    assert measured["scrollWidth"] <= measured["innerWidth"]
