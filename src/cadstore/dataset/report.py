"""A self-contained HTML report of a merged dataset.

One file, no external assets: charts are SVG images and part thumbnails PNG images, both
embedded as data URIs; styles are inline and there is no script. The page shows what a
person wants to see first, one section each:

* **overview**: item, face, co-edge and face-pair counts, file size, split sizes;
* **item sizes**: faces, co-edges and face pairs per item;
* **geometry**: face areas, co-edge lengths, dihedral angles, convexities, face and curve
  types;
* **labels and metadata by split**: each label's distribution in each split (to check that
  a stratified split kept the proportions), metadata histograms, constant columns;
* **parts**: thumbnails of a sample of items drawn from their stored face samples
  (``face_discretization``), coloured by face type (or by a per-face label array);
* **storage**: raw and stored bytes of each array;
* **first items**: the first rows of the infoset, with units and short paths.

Every section is built from the arrays it needs and left out when they are missing, so a
user dataset with other arrays still gets a page. Rows of the ``edges`` group are called
*co-edges* throughout, as in :mod:`cadstore.cad.encoder`: each edge of a body appears once
per face it bounds. Needs matplotlib (the ``report`` extra); nothing touches pyplot's
global state, figures are drawn by :class:`matplotlib.figure.Figure` directly.
"""

from __future__ import annotations

import base64
import html
import io
import math
import posixpath
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cadstore.dataset.loader import NO_SUBSET, SUBSETS
from cadstore.dataset.reader import DatasetReader
from cadstore.format.layout import OFFSETS, file_id_code_name
from cadstore.io.location import Location, resolve
from cadstore.io.parquet import frame_of
from cadstore.io.publish import check_output_folder, check_replaceable, write_bytes_atomic
from cadstore.lifecycle import TrustedTables, copy_beside
from cadstore.vocabulary import CONVEXITIES, EDGE_TYPES, FACE_TYPES

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

__all__ = ["check_report_output", "render_part", "render_part_png", "write_report"]

#: What a row of each merged group is called on the page (one name per thing).
ROW_NAMES: Mapping[str, str] = {"faces": "faces", "edges": "co-edges", "faceface": "face pairs"}

#: How many items the thumbnail grid draws at most, and how many rows "first items" shows.
MAX_THUMBNAILS = 24
FIRST_ROWS = 15

# Infoset columns that identify an item rather than describe it.
_ID_COLUMNS = frozenset({"name", "id", "description", "subset", "table_name"})
# Chart size as shown on the page, CSS pixels (the SVG is drawn at that size).
_CHART = (440, 250)
# Thumbnail size as shown, CSS pixels; the PNG has twice as many pixels each way.
_THUMB = 160
_PNG_SCALE = 2
_BLUE, _RED, _GREEN = "#3d7bbf", "#d1495b", "#4c9f70"
_SPLIT_COLOURS = {"train": "#3d7bbf", "validation": "#e8a33d", "test": "#4c9f70"}
_FACE_COLOURS = {
    0: "#9db4cc",
    1: "#e8a33d",
    2: "#5fae6e",
    3: "#d1495b",
    4: "#8e6bbf",
    5: "#b5835a",
    13: "#e377c2",
    14: "#bcbd22",
    15: "#17becf",
    16: "#7f7f7f",
}
_PALETTE = (
    "#3d7bbf",
    "#e8a33d",
    "#4c9f70",
    "#d1495b",
    "#8e6bbf",
    "#b5835a",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_RC: dict[RcKeyType, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#8795a5",
    "axes.labelcolor": "#1d2733",
    "xtick.color": "#3b4a5a",
    "ytick.color": "#3b4a5a",
    "legend.frameon": False,
    "svg.hashsalt": "cadstore-report",
    "svg.fonttype": "path",
}

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:76rem;color:#1d2733;line-height:1.45;padding:0 1rem}
h1{font-size:1.7rem;margin-bottom:.2rem}
h2{font-size:1.25rem;margin-top:2.4rem;border-bottom:1px solid #dde3ea;padding-bottom:.3rem}
h3{font-size:.95rem;margin:.1rem .3rem .4rem}
nav{font-size:.9rem}nav a{margin-right:1rem;color:#3d7bbf}
.sub{color:#5b6b7c;margin-top:0}.cards{display:flex;flex-wrap:wrap;gap:1rem;margin:1rem 0}
.card{background:#f3f6f9;border-radius:8px;padding:.8rem 1.1rem;min-width:8rem}
.card b{display:block;font-size:1.4rem}.card span{color:#5b6b7c;font-size:.85rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,470px),1fr));
gap:1.2rem}
figure{margin:0;background:#fff;border:1px solid #e4e9ef;border-radius:8px;padding:.6rem;
min-width:0}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{color:#5b6b7c;font-size:.85rem;padding:.3rem .4rem 0}
.note{color:#5b6b7c}.note b{color:#1d2733}
.thumbs{display:grid;grid-template-columns:repeat(auto-fill,minmax(172px,1fr));gap:.8rem}
.thumbs figure{padding:.3rem}.thumbs figcaption{font-size:.78rem;text-align:center;
overflow-wrap:anywhere}
.legend{font-size:.85rem;margin:.3rem 0 .8rem}
.swatch{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin:0 .3rem 0 .8rem;
vertical-align:-1px}
.scroll{overflow-x:auto;border:1px solid #e4e9ef;border-radius:8px;margin-bottom:1rem}
.scroll.compact{display:inline-block;max-width:100%}.compact table{width:auto}
section>h3{margin-top:1.4rem}
table{border-collapse:collapse;font-size:.86rem;width:100%}
th,td{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #e4e9ef;white-space:nowrap}
th{background:#f3f6f9;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums}
footer{margin-top:3rem;color:#8795a5;font-size:.8rem}
"""


# ---------------------------------------------------------------------- HTML helpers
class Markup(str):
    """HTML that is safe to insert as it is; any other text is escaped on the way in."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """Return ``value`` as HTML: :class:`Markup` unchanged, anything else escaped."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def _children(parts: Iterable[object]) -> Iterable[Markup]:
    for part in parts:
        if part is None:
            continue
        if isinstance(part, list | tuple):
            yield from _children(part)
        else:
            yield escape(part)


def _attributes(attrs: Mapping[str, object]) -> str:
    out = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        name = key.rstrip("_").replace("_", "-")
        out.append(f" {name}" if value is True else f' {name}="{escape(value)}"')
    return "".join(out)


def tag(element: str, /, *children: object, **attrs: object) -> Markup:
    """Return the element ``<name attrs>children</name>``, escaping text and attributes.

    Parameters
    ----------
    element
        The element name.
    *children
        Text (escaped), :class:`Markup` (kept), ``None`` (skipped) or lists of these.
    **attrs
        Attributes; a trailing ``_`` is dropped (``class_``), ``_`` becomes ``-``, ``None``
        and ``False`` leave the attribute out, ``True`` writes it bare.
    """
    opened = f"<{element}{_attributes(attrs)}>"
    return Markup(f"{opened}{''.join(_children(children))}</{element}>")


def void(element: str, /, **attrs: object) -> Markup:
    """Return an element without content (``img``, ``meta``), attributes escaped."""
    return Markup(f"<{element}{_attributes(attrs)}>")


def join(parts: Iterable[object]) -> Markup:
    """Concatenate parts as HTML (text escaped, ``None`` skipped)."""
    return Markup("".join(_children(parts)))


# ---------------------------------------------------------------------- formatting
def format_bytes(count: float) -> str:
    """``1536`` -> ``"1.50 KiB"``: a byte count in binary units, three digits."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:.0f} {unit}" if abs(value) >= 100 else f"{value:.3g} {unit}"


def format_seconds(seconds: float) -> str:
    """``0.0123`` -> ``"12.3 ms"``, ``75`` -> ``"1 min 15 s"``: a duration, readable."""
    value = float(seconds)
    if value == 0:
        return "0 s"
    if abs(value) < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if abs(value) < 1:
        return f"{value * 1e3:.3g} ms"
    if abs(value) < 60:
        return f"{value:.3g} s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes} min {rest} s"


def format_number(value: Any) -> str:
    """Integers with thousands separators, other numbers with three significant digits."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer) or (
        isinstance(value, float | np.floating) and float(value).is_integer()
    ):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):.3g}" if math.isfinite(value) else str(value)
    return str(value)


def _unit_of(column: str) -> str | None:
    """``"bytes"``, ``"seconds"`` or ``None``, guessed from a metadata column's name."""
    lowered = column.lower()
    if lowered.startswith("size_") or lowered.endswith(("_size", "_bytes")):
        return "bytes"
    if "time" in lowered or "duration" in lowered or lowered.endswith("_seconds"):
        return "seconds"
    return None


def _format_in(unit: str | None) -> Callable[[Any], str]:
    if unit == "bytes":
        return format_bytes
    if unit == "seconds":
        return format_seconds
    return format_number


def short_name(name: str, width: int = 20) -> str:
    """Shorten a long item name (a hash) to its head and tail around an ellipsis."""
    if len(name) <= width:
        return name
    tail = max(4, width * 3 // 10)
    return f"{name[: width - tail - 1]}…{name[-tail:]}"


def relative_paths(paths: Sequence[str]) -> list[str]:
    """Strip the folder all ``paths`` share, so none is shown absolute.

    A single path keeps its file name; text that is not a path is kept as it is.
    """
    posix = [str(p).replace("\\", "/") for p in paths]
    located = [p for p in posix if "/" in p]
    if not located:
        return posix
    prefix = posixpath.commonprefix([posixpath.dirname(p) + "/" for p in located])
    common = prefix[: prefix.rfind("/") + 1]
    out = []
    for path in posix:
        if "/" in path and common and path.startswith(common):
            path = path[len(common) :]
        out.append(path.lstrip("/") if "/" in path else path)
    return out


# ---------------------------------------------------------------------- images
@dataclass(frozen=True)
class Image:
    """An embedded image: its data URI and the size it is shown at, in CSS pixels."""

    uri: str
    width: int
    height: int


def _new_figure(width: float, height: float) -> Figure:
    """A figure of ``width x height`` CSS pixels (96 per inch), on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / 96, height / 96))
    FigureCanvasAgg(fig)
    return fig


def _svg(fig: Figure) -> Image:
    """Save ``fig`` as SVG, cropped to its content, shown at its natural size."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.04, metadata={"Date": None})
    data = buf.getvalue()
    found = re.search(rb'<svg[^>]*?width="([\d.]+)pt"[^>]*?height="([\d.]+)pt"', data)
    # SVG points are 1/72 inch, CSS pixels 1/96.
    width, height = (float(v) * 96 / 72 for v in found.groups()) if found else _CHART
    uri = "data:image/svg+xml;base64," + base64.b64encode(data).decode("ascii")
    return Image(uri, round(width), round(height))


def _png(fig: Figure) -> Image:
    """Save ``fig`` as PNG with twice the pixels of the size it is shown at."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96 * _PNG_SCALE)
    width, height = fig.get_size_inches() * 96
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return Image(uri, round(width), round(height))


def _img(image: Image, alt: str, **attrs: object) -> Markup:
    return void("img", src=image.uri, alt=alt, width=image.width, height=image.height, **attrs)


def _chart_axes() -> tuple[Figure, Axes]:
    fig = _new_figure(*_CHART)
    return fig, fig.subplots()


def _unit_axis(ax: Axes, axis: str, unit: str | None) -> None:
    """Label ``axis`` ticks in bytes or seconds when ``unit`` says so.

    Byte axes get round binary ticks: multiples of 1, 2, 2.5 or 5 KiB (MiB, ...) on a
    linear scale, powers of two on a log scale.
    """
    if unit is None:
        return
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    fmt = _format_in(unit)
    target = ax.xaxis if axis == "x" else ax.yaxis
    if unit == "bytes" and target.get_scale() == "log":
        target.set_major_locator(LogLocator(base=2, numticks=6))
        target.set_minor_formatter(NullFormatter())
    elif unit == "bytes":
        limits = ax.get_xlim() if axis == "x" else ax.get_ylim()
        target.set_major_locator(FixedLocator(_binary_ticks(*limits).tolist()))
        (ax.set_xlim if axis == "x" else ax.set_ylim)(*limits)
    target.set_major_formatter(FuncFormatter(lambda v, _: fmt(v) if v >= 0 else ""))


def _binary_ticks(low: float, high: float) -> np.ndarray:
    """About five round ticks over ``[low, high]`` bytes, in the unit of ``high``."""
    from matplotlib.ticker import MaxNLocator

    scale = 1024.0 ** max(0, int(math.log(max(abs(high), 1.0), 1024)))
    locator = MaxNLocator(5, steps=[1, 2, 2.5, 5, 10])
    return np.asarray(locator.tick_values(low / scale, high / scale)) * scale


def histogram_chart(
    values: np.ndarray, xlabel: str, *, ylabel: str = "items", unit: str | None = None
) -> Image:
    """Histogram of ``values`` with its median marked; log x when they span decades.

    Small integer ranges get one bar per integer, so counts per item read exactly.
    """
    from matplotlib.ticker import MaxNLocator

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    fig, ax = _chart_axes()
    low, high = float(values.min()), float(values.max())
    bins: Any = min(40, max(8, int(np.sqrt(values.size))))
    if np.all(values == np.round(values)) and high - low <= 200:
        step = max(1, math.ceil((high - low + 1) / 30))
        bins = np.arange(low - 0.5, high + step + 0.5, step)
    elif low > 0 and high / low > 100:
        bins = np.geomspace(low, high, bins + 1)
        ax.set_xscale("log")
    ax.hist(values, bins=bins, color=_BLUE, edgecolor="white", linewidth=0.4)
    median = float(np.median(values))
    text = _format_in(unit)(median)
    ax.axvline(median, color=_RED, linestyle="--", linewidth=1.2, label=f"median {text}")
    ax.legend(loc="best")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _unit_axis(ax, "x", unit)
    return _svg(fig)


def bar_chart(
    labels: Sequence[str],
    counts: Sequence[float],
    ylabel: str,
    *,
    horizontal: bool = False,
    unit: str | None = None,
    colours: Sequence[str] | None = None,
) -> Image:
    """Bars, largest first (at most 30); horizontal bars suit long labels."""
    order = np.argsort(np.asarray(counts, dtype=float), kind="stable")[::-1][:30]
    names = [str(labels[i]) for i in order]
    heights = [float(counts[i]) for i in order]
    colour = [colours[i] for i in order] if colours is not None else _GREEN
    height = max(_CHART[1], 30 + 18 * len(names)) if horizontal else _CHART[1]
    fig = _new_figure(_CHART[0], height)
    ax = fig.subplots()
    if horizontal:
        ax.barh(names[::-1], heights[::-1], color=colour[::-1] if colours else colour)
        ax.set_xlabel(ylabel)
        _unit_axis(ax, "x", unit)
    else:
        ax.bar(names, heights, color=colour)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", rotation=40 if len(names) > 5 else 0)
        _unit_axis(ax, "y", unit)
    return _svg(fig)


def split_chart(categories: Sequence[str], shares: Mapping[str, np.ndarray], ylabel: str) -> Image:
    """Grouped bars: for each category, its share in each split side by side."""
    fig, ax = _chart_axes()
    x = np.arange(len(categories))
    width = 0.8 / max(1, len(shares))
    for i, (split, share) in enumerate(shares.items()):
        colour = _SPLIT_COLOURS.get(split, "#9aa6b2")
        ax.bar(x + (i - (len(shares) - 1) / 2) * width, share, width, label=split, color=colour)
    ax.set_xticks(x, [str(c) for c in categories])
    ax.tick_params(axis="x", rotation=40 if len(categories) > 5 else 0)
    ax.set_ylabel(ylabel)
    ax.legend(ncols=len(shares), loc="upper right")
    ax.set_ylim(0, max(float(np.max(s)) for s in shares.values()) * 1.18 or 1)
    return _svg(fig)


# ---------------------------------------------------------------------- page pieces
def figure(title: str, image: Image, caption: str = "") -> Markup:
    """A chart with its heading and caption; the image's alt text repeats both."""
    alt = f"{title}: {caption}" if caption else title
    return tag("figure", tag("h3", title), _img(image, alt), tag("figcaption", caption or None))


def note(title: str, text: str) -> Markup:
    """What stands in for a chart that would show a single value (``all 0``)."""
    return tag("figure", tag("h3", title), tag("p", text, class_="note"), class_="note")


def cards(pairs: Sequence[tuple[str, str]]) -> Markup:
    """The overview's figures: big value, small label."""
    return tag(
        "div",
        [tag("div", tag("b", value), tag("span", label), class_="card") for label, value in pairs],
        class_="cards",
    )


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    numeric: Sequence[bool],
    *,
    compact: bool = False,
) -> Markup:
    """A table that scrolls sideways when too wide; ``numeric`` columns align right.

    A ``compact`` table is as wide as its content rather than the page.
    """
    head = tag(
        "tr",
        [tag("th", h, class_="n" if n else None) for h, n in zip(headers, numeric, strict=True)],
    )
    body = [
        tag(
            "tr",
            [tag("td", v, class_="n" if n else None) for v, n in zip(row, numeric, strict=True)],
        )
        for row in rows
    ]
    wrapper = "scroll compact" if compact else "scroll"
    return tag("div", tag("table", tag("thead", head), tag("tbody", body)), class_=wrapper)


def section(anchor: str, title: str, *content: object) -> Markup:
    """A titled section the page's navigation links to."""
    return tag("section", tag("h2", title), *content, id=anchor)


def grid(items: Sequence[Markup]) -> Markup | None:
    """Figures side by side (``None`` when there are none)."""
    return tag("div", list(items), class_="grid") if items else None


def distribution(
    title: str, values: np.ndarray, xlabel: str, *, ylabel: str = "items", unit: str | None = None
) -> Markup | None:
    """A histogram figure, or ``all <value>`` when every value is the same."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    fmt = _format_in(unit)
    if np.all(values == values[0]):
        return note(title, f"all {fmt(values[0])} ({values.size:,} {ylabel})")
    caption = (
        f"{values.size:,} {ylabel}; median {fmt(np.median(values))}, "
        f"from {fmt(values.min())} to {fmt(values.max())}"
    )
    return figure(title, histogram_chart(values, xlabel, ylabel=ylabel, unit=unit), caption)


def counts_figure(
    title: str, codes: np.ndarray, names: Mapping[int, str], ylabel: str
) -> Markup | None:
    """Bars of how often each code occurs, named by ``names``; ``all X`` for one code."""
    if codes.size == 0:
        return None
    found, counts = np.unique(codes, return_counts=True)
    labels = [names.get(int(c), str(int(c))) for c in found]
    if len(found) == 1:
        return note(title, f"all {labels[0]} ({counts[0]:,} {ylabel})")
    total = int(counts.sum())
    top = int(np.argmax(counts))
    caption = f"{total:,} {ylabel}; most common: {labels[top]} ({counts[top] / total:.0%})"
    return figure(title, bar_chart(labels, counts.tolist(), ylabel), caption)


# ---------------------------------------------------------------------- the data
@dataclass
class _Context:
    """What every section reads: the open reader and the tables, aligned by item code."""

    dataset: str
    reader: DatasetReader
    info: pd.DataFrame | None
    attribs: pd.DataFrame | None
    info_codes: np.ndarray  # item code of each infoset row, -1 when unknown
    splits: np.ndarray  # split of each item code (NO_SUBSET when none)

    @property
    def has_splits(self) -> bool:
        return bool(np.isin(self.splits, SUBSETS).any())

    def rows_per_item(self, group: str) -> np.ndarray | None:
        """Rows of ``group`` per item, ``None`` when the dataset has no such group."""
        if group not in self.reader.groups or OFFSETS not in self.reader.arrays(group):
            return None
        return np.diff(self.reader.offsets(group))

    def array(self, group: str, name: str) -> np.ndarray | None:
        """A whole row array, ``None`` when it is missing or holds one value per item."""
        reader = self.reader
        if group not in reader.groups or name not in reader.arrays(group):
            return None
        if reader.is_per_item(group, name):
            return None
        return reader.read_array(group, name)

    def names(self, table: str, default: Mapping[int, str] | None = None) -> dict[int, str]:
        """Names of a code table: the attribset's when it has one, else ``default``."""
        attribs = self.attribs
        if attribs is not None and {"table_name", "id", "name"} <= set(attribs.columns):
            rows = attribs[attribs["table_name"] == table]
            if len(rows):
                return {int(i): str(n) for i, n in zip(rows["id"], rows["name"], strict=True)}
        return dict(default or {})


def _item_codes(info: pd.DataFrame | None, reader: DatasetReader) -> np.ndarray:
    """The item code of each infoset row, matched by name (else by id); -1 when unknown."""
    if info is None:
        return np.zeros(0, dtype=np.int64)
    if "name" in info.columns:
        known = {name: code for code, name in enumerate(reader.item_names)}
        return np.array([known.get(str(n), -1) for n in info["name"]], dtype=np.int64)
    if "id" in info.columns:
        ids = info["id"].to_numpy(dtype=np.int64)
        return np.where((ids >= 0) & (ids < reader.n_items), ids, -1)
    return np.full(len(info), -1, dtype=np.int64)


def _item_splits(info: pd.DataFrame | None, codes: np.ndarray, n_items: int) -> np.ndarray:
    splits = np.full(n_items, NO_SUBSET, dtype=object)
    if info is not None and "subset" in info.columns:
        known = codes >= 0
        splits[codes[known]] = info["subset"].astype(str).to_numpy()[known]
    return splits


# ---------------------------------------------------------------------- sections
def overview_section(ctx: _Context) -> Markup:
    """Cards: items, file size, rows of each main group, split sizes."""
    reader = ctx.reader
    pairs = [("items", f"{reader.n_items:,}"), ("stored", format_bytes(reader.stored_bytes))]
    for group, noun in ROW_NAMES.items():
        rows = ctx.rows_per_item(group)
        if rows is not None:
            pairs.append((noun, f"{int(rows.sum()):,}"))
    if ctx.has_splits:
        pairs += [(split, f"{int((ctx.splits == split).sum()):,}") for split in SUBSETS]
    return cards(pairs)


def item_sizes_section(ctx: _Context) -> Markup | None:
    """How many faces, co-edges and face pairs each item has."""
    parts = []
    for group, noun in ROW_NAMES.items():
        rows = ctx.rows_per_item(group)
        if rows is not None and rows.size:
            title = f"{noun.capitalize()} per item"
            parts.append(distribution(title, rows, f"{noun} per item"))
    figures = [p for p in parts if p is not None]
    return grid(figures)


def geometry_section(ctx: _Context) -> Markup | None:
    """Face areas, co-edge lengths, dihedral angles, convexities, face and curve types."""
    parts = [
        _geometry_distribution(ctx, "faces", "face_areas", "Face areas", "area (model units²)"),
        _geometry_distribution(
            ctx, "edges", "edge_lengths", "Co-edge lengths", "length (model units)"
        ),
        _dihedral_figure(ctx),
        _codes_figure(ctx, "edges", "edge_convexities", "Convexity", CONVEXITIES),
        _codes_figure(ctx, "faces", "face_types", "Face types", FACE_TYPES),
        _codes_figure(ctx, "edges", "edge_types", "Co-edge curve types", EDGE_TYPES),
    ]
    figures = [p for p in parts if p is not None]
    if not figures:
        return None
    text = tag(
        "p",
        "Over every face and co-edge of the dataset. Each edge of a body is stored once per "
        "face it bounds (two co-edges), so co-edge counts are twice the edge counts.",
        class_="note",
    )
    return join([text, grid(figures)])


def _geometry_distribution(
    ctx: _Context, group: str, name: str, title: str, xlabel: str
) -> Markup | None:
    values = ctx.array(group, name)
    if values is None or values.ndim != 1:
        return None
    return distribution(title, values, xlabel, ylabel=ROW_NAMES[group])


def _dihedral_figure(ctx: _Context) -> Markup | None:
    angles = ctx.array("edges", "edge_dihedral_angles")
    if angles is None or angles.ndim != 1:
        return None
    degrees = np.degrees(angles.astype(float))
    return distribution(
        "Dihedral angles", degrees, "signed angle (degrees; + convex, - concave)", ylabel="co-edges"
    )


def _codes_figure(
    ctx: _Context, group: str, name: str, title: str, default: Mapping[int, str]
) -> Markup | None:
    codes = ctx.array(group, name)
    if codes is None or codes.ndim != 1:
        return None
    return counts_figure(title, codes, ctx.names(name, default), ROW_NAMES[group])


def labels_section(ctx: _Context) -> Markup | None:
    """Each label per split, metadata histograms, and the columns holding one value."""
    if ctx.info is None and not face_label_arrays(ctx.reader):
        return None
    intro = _split_summary(ctx)
    label_figures, metadata_figures, constants = _infoset_figures(ctx)
    figures = [f for f in (*_face_code_figures(ctx), *label_figures) if f is not None]
    content = [intro, grid(figures)]
    if metadata_figures:
        content += [tag("h3", "Metadata"), grid(metadata_figures)]
    if constants:
        content.append(tag("p", "One value only: ", _join_notes(constants), class_="note"))
    return join(content)


def _join_notes(constants: Sequence[tuple[str, str]]) -> Markup:
    return join(
        [
            [", " if i else None, tag("b", column), f": {text}"]
            for i, (column, text) in enumerate(constants)
        ]
    )


def _split_summary(ctx: _Context) -> Markup:
    if not ctx.has_splits:
        return tag(
            "p",
            "No split is recorded (no infoset, or every item's subset is N/A): the charts "
            "show counts over all items. ",
            tag("code", "cadstore split"),
            " records one.",
            class_="note",
        )
    present = _splits_present(ctx)
    total = len(ctx.splits)
    rows = [
        (split, f"{int((ctx.splits == split).sum()):,}", f"{(ctx.splits == split).mean():.0%}")
        for split in present
    ]
    text = tag(
        "p",
        "Each chart gives a label's share of the items of each split: a stratified split "
        f"keeps the bars of a category level. {total:,} items in all.",
        class_="note",
    )
    summary = table(["split", "items", "share"], rows, [False, True, True], compact=True)
    return join([text, summary])


def _splits_present(ctx: _Context) -> list[str]:
    found = set(ctx.splits.tolist())
    return [s for s in (*SUBSETS, NO_SUBSET) if s in found]


def _infoset_figures(
    ctx: _Context,
) -> tuple[list[Markup], list[Markup], list[tuple[str, str]]]:
    """Label figures (per split), metadata figures, and constant columns with their value."""
    labels: list[Markup] = []
    metadata: list[Markup] = []
    constants: list[tuple[str, str]] = []
    if ctx.info is None:
        return labels, metadata, constants
    for column in ctx.info.columns:
        if column in _ID_COLUMNS:
            continue
        values = ctx.info[column]
        present = values.dropna()
        if present.empty:
            continue
        if present.nunique() == 1:
            constants.append((column, f"all {_format_in(_unit_of(column))(present.iloc[0])}"))
        elif _is_categorical(ctx, column, present):
            shown = _label_figure(ctx, column)
            labels.extend([shown] if shown is not None else [])
        else:
            unit = _unit_of(column)
            shown = distribution(column, present.to_numpy(dtype=float), column, unit=unit)
            metadata.extend([shown] if shown is not None else [])
    return labels, metadata, constants


def _is_categorical(ctx: _Context, column: str, values: pd.Series) -> bool:
    """Labels: text, booleans, coded columns with an attribset table, few small integers."""
    from pandas.api import types

    if not types.is_numeric_dtype(values) or types.is_bool_dtype(values):
        return True
    if not types.is_integer_dtype(values) or _unit_of(column) is not None:
        return False
    if ctx.names(column):
        return True
    return values.nunique() <= 20 and int(values.abs().max()) < 1000


def _label_figure(ctx: _Context, column: str) -> Markup | None:
    """Share of each value of ``column`` in each split (or counts when there is no split)."""
    text = _label_text(ctx, column)
    if not ctx.has_splits:
        present = text[np.not_equal(text, np.array(None))].astype(str)
        found, counts = np.unique(present, return_counts=True)
        caption = f"{len(found)} distinct values over {int(counts.sum()):,} items"
        return figure(column, bar_chart(list(found), counts.tolist(), "items"), caption)
    known = ctx.info_codes >= 0
    per_item = np.full(ctx.reader.n_items, None, dtype=object)
    per_item[ctx.info_codes[known]] = text[known]
    return _split_share_figure(ctx, column, per_item)


def _label_text(ctx: _Context, column: str) -> np.ndarray:
    """The values of an infoset column as names (attribset table first), ``None`` if absent."""
    import pandas as pd

    assert ctx.info is not None
    names = ctx.names(column)
    return np.array(
        [
            None if pd.isna(v) else (names.get(int(v), str(v)) if _is_int(v) else str(v))
            for v in ctx.info[column]
        ],
        dtype=object,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _split_share_figure(ctx: _Context, title: str, per_item: np.ndarray) -> Markup | None:
    """Grouped bars: share of each split's items having each value of ``per_item``.

    Items without a value are left out; the 20 most frequent values are shown.
    """
    labelled = np.not_equal(per_item, np.array(None))
    values = per_item[labelled].astype(str)
    found, counts = np.unique(values, return_counts=True)
    categories = found[np.argsort(-counts, kind="stable")][:20]
    membership = values[:, None] == categories[None, :]
    splits = ctx.splits[labelled]
    return _membership_figure(ctx, title, categories.tolist(), membership, splits)


def _membership_figure(
    ctx: _Context, title: str, categories: list[str], membership: np.ndarray, splits: np.ndarray
) -> Markup | None:
    """Share (%) of each split's items with each category, and the largest gap.

    ``membership[i, c]`` says whether item ``i`` (of split ``splits[i]``) has category ``c``.
    """
    shares = {}
    for split in _splits_present(ctx):
        chosen = splits == split
        if chosen.any():
            shares[split] = membership[chosen].mean(axis=0) * 100
    if not shares or not categories:
        return None
    overall = membership.mean(axis=0) * 100
    gap = max(float(np.max(np.abs(s - overall))) for s in shares.values())
    caption = (
        f"{len(categories)} values over {', '.join(shares)}; largest gap between a split's "
        f"share and the overall share: {gap:.1f} percentage points"
    )
    return figure(title, split_chart(categories, shares, "% of the split's items"), caption)


def face_label_arrays(reader: DatasetReader) -> list[str]:
    """Per-face integer arrays whose name says ``label`` (``face_labels``, ...)."""
    if "faces" not in reader.groups:
        return []
    found = []
    for name in reader.arrays("faces"):
        if "label" in name and not reader.is_per_item("faces", name):
            meta = reader.array_meta("faces", name)
            if len(meta.shape) == 1 and np.dtype(str(meta.dtype)).kind in "iu":
                found.append(name)
    return found


def _face_code_figures(ctx: _Context) -> list[Markup | None]:
    """Face types per split, and each per-face label array per split (or overall)."""
    figures = [_face_codes_by_split(ctx, "face_types", "Face types", FACE_TYPES)]
    for name in face_label_arrays(ctx.reader):
        figures.append(
            _face_codes_by_split(ctx, name, name, {})
            if ctx.has_splits
            else _codes_figure(ctx, "faces", name, name, {})
        )
    return figures


def _face_codes_by_split(
    ctx: _Context, name: str, title: str, default: Mapping[int, str]
) -> Markup | None:
    """Share of each split's items having at least one face with each code of ``name``."""
    codes = ctx.array("faces", name)
    rows = ctx.rows_per_item("faces")
    if codes is None or rows is None or codes.ndim != 1 or not ctx.has_splits:
        return None
    found = np.unique(codes)
    item_of_row = np.repeat(np.arange(ctx.reader.n_items), rows)
    membership = np.zeros((ctx.reader.n_items, len(found)), dtype=bool)
    membership[item_of_row, np.searchsorted(found, codes)] = True
    names = ctx.names(name, default)
    categories = [names.get(int(c), str(int(c))) for c in found]
    title = f"{title} (items having one)"
    return _membership_figure(ctx, title, categories, membership, ctx.splits)


# ---------------------------------------------------------------------- thumbnails
def thumbnails_section(ctx: _Context) -> Markup | None:
    """A grid of small renderings of a sample of items, from ``face_discretization``."""
    reader = ctx.reader
    if "faces" not in reader.groups or "face_discretization" not in reader.arrays("faces"):
        return None
    colour_by = _face_colour_array(ctx)
    codes = sample_codes(reader.n_items, MAX_THUMBNAILS)
    label_column = _label_column(ctx)
    seen: set[int] = set()
    tiles = []
    for code in codes.tolist():
        image, keys = _draw_item(reader, code, colour_by)
        seen.update(keys)
        tiles.append(_thumbnail(ctx, code, image, _item_label(ctx, label_column, code)))
    intro = tag(
        "p",
        f"{len(codes)} of {reader.n_items:,} items, drawn from their stored face samples "
        "(each face's sample grid, shaded by its normals; samples that fall outside their "
        "face are left out).",
        class_="note",
    )
    legend = _legend(ctx, colour_by, sorted(seen))
    return join([intro, legend, tag("div", tiles, class_="thumbs")])


def _draw_item(reader: DatasetReader, code: int, colour_by: str | None) -> tuple[Image, set[int]]:
    """The thumbnail of item ``code`` and the colour keys (face types, labels) it shows."""
    wanted = ["face_discretization", *([colour_by] if colour_by else [])]
    faces = reader.read_item(code, groups=["faces"], arrays={"faces": wanted})["faces"]
    samples = faces["face_discretization"]
    keys = np.asarray(faces[colour_by]) if colour_by else np.zeros(len(samples), dtype=int)
    image = _png(render_part(samples, [_colour_of(int(k), colour_by) for k in keys]))
    return image, {int(k) for k in np.unique(keys)}


def sample_codes(n_items: int, count: int) -> np.ndarray:
    """``count`` item codes spread evenly over ``0 .. n_items - 1`` (all when fewer)."""
    if n_items <= count:
        return np.arange(n_items)
    return np.unique(np.linspace(0, n_items - 1, count).round().astype(np.int64))


def _face_colour_array(ctx: _Context) -> str | None:
    """The per-face array to colour by: a per-face integer label array, else face types."""
    labels = face_label_arrays(ctx.reader)
    if labels:
        return labels[0]
    return "face_types" if "face_types" in ctx.reader.arrays("faces") else None


def _colour_of(key: int, colour_by: str | None) -> str:
    if colour_by == "face_types":
        return _FACE_COLOURS.get(key, _PALETTE[key % len(_PALETTE)])
    return _PALETTE[key % len(_PALETTE)] if colour_by else _FACE_COLOURS[0]


def _legend(ctx: _Context, colour_by: str | None, keys: Sequence[int]) -> Markup | None:
    if colour_by is None:
        return None
    names = ctx.names(colour_by, FACE_TYPES if colour_by == "face_types" else None)
    entries = [
        [
            tag("span", class_="swatch", style=f"background:{_colour_of(k, colour_by)}"),
            names.get(k, str(k)),
        ]
        for k in keys
    ]
    return tag("p", "Colour: ", tag("code", colour_by), entries, class_="legend")


def _thumbnail(ctx: _Context, code: int, image: Image, label: str | None) -> Markup:
    name = ctx.reader.item_names[code]
    details = [short_name(name)]
    if ctx.has_splits:
        details.append(str(ctx.splits[code]))
    if label:
        details.append(label)
    return tag(
        "figure",
        _img(image, f"part {name}", class_="thumb", title=name),
        tag("figcaption", " · ".join(details)),
    )


def _label_column(ctx: _Context) -> str | None:
    """The infoset column thumbnails are captioned with: a categorical column with more
    than one value, one whose name says ``label`` first."""
    info = ctx.info
    if info is None:
        return None
    candidates = [
        c
        for c in info.columns
        if c not in _ID_COLUMNS and info[c].nunique() > 1 and _is_categorical(ctx, c, info[c])
    ]
    candidates.sort(key=lambda c: "label" not in c.lower())
    return candidates[0] if candidates else None


def _item_label(ctx: _Context, column: str | None, code: int) -> str | None:
    """``column value`` for item ``code``, ``None`` without a column or an infoset row."""
    rows = np.flatnonzero(ctx.info_codes == code)
    if ctx.info is None or column is None or rows.size == 0:
        return None
    value = ctx.info[column].iloc[rows[0]]
    return f"{column} {ctx.names(column).get(int(value), value) if _is_int(value) else value}"


def _view() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Screen right, screen up, towards the viewer, and the light: an isometric view, z up."""
    eye = np.array([1.0, -1.0, 0.8])
    eye /= np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], eye)
    right /= np.linalg.norm(right)
    up = np.cross(eye, right)
    light = eye + 0.6 * up - 0.4 * right
    return right, up, eye, light / np.linalg.norm(light)


def render_part(samples: np.ndarray, colours: Sequence[str]) -> Figure:
    """Draw one item's faces from their point samples as a small shaded picture.

    Parameters
    ----------
    samples
        ``face_discretization`` of the item, ``(F, P, 7)``: x, y, z, nx, ny, nz, inside.
    colours
        One colour per face.

    Returns
    -------
    matplotlib.figure.Figure
        ``_THUMB`` CSS pixels square. Each face's ``k x k`` sample grid (``P = k * k``)
        becomes quads (those with at least three corners on the face); the samples of a face
        without such a quad (a narrow ring, a small fillet) become small discs in their
        tangent planes. All are shaded by the stored normals and drawn back to front (an
        isometric view, z up). An item without faces, or whose samples are not
        ``(F, P, 7)`` with one colour per face, is an empty tile saying so: one item must
        not stop the report or the flow drawing it.
    """
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_rgb

    fig = _new_figure(_THUMB, _THUMB)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    samples = np.asarray(samples, dtype=float)
    problem = _undrawable(samples, len(colours))
    if problem is not None:
        ax.text(0.5, 0.5, problem, ha="center", va="center", color="#8795a5")
        return fig
    inside = samples[..., 6] > 0.5
    if not inside.any():
        ax.text(0.5, 0.5, "no samples", ha="center", va="center", color="#8795a5")
        return fig
    view = _view()
    rgb = np.array([to_rgb(c) for c in colours]).reshape(-1, 3)
    quads, quad_normals, quad_faces = _quads(samples, inside)
    bare = ~np.isin(np.arange(len(samples)), quad_faces)
    discs, disc_normals, disc_faces = _discs(samples, inside & bare[:, None], view[2])
    xyz = np.concatenate([np.repeat(quads, 2, axis=1), discs])
    normals = np.concatenate([quad_normals, disc_normals])
    screen, colour = _shade(xyz, normals, rgb[np.concatenate([quad_faces, disc_faces])], view)
    polygons = PolyCollection(
        # matplotlib's stubs want a sequence of polygons; an (N, M, 2) array is its fast path.
        screen,  # type: ignore[arg-type]
        facecolors=colour,
        edgecolors=colour,
        lw=0.3,
    )
    ax.add_collection(polygons)
    _frame(ax, screen[..., 0], screen[..., 1])
    return fig


def _undrawable(samples: np.ndarray, n_colours: int) -> str | None:
    """Why ``samples`` cannot be drawn (the text of its empty tile), ``None`` if they can."""
    if samples.ndim == 3 and samples.shape[0] == 0:
        return "no faces"
    if samples.ndim != 3 or samples.shape[2] != 7 or samples.shape[1] == 0:
        shape = " x ".join(str(n) for n in samples.shape) or "a scalar"
        return f"samples {shape},\nnot faces x points x 7"
    if samples.shape[0] != n_colours:
        return f"{samples.shape[0]} faces,\n{n_colours} colours"
    return None


def render_part_png(samples: np.ndarray, face_types: np.ndarray | None = None) -> bytes:
    """The picture :func:`render_part` draws, as PNG bytes: a part's preview file.

    Parameters
    ----------
    samples
        ``face_discretization`` of the item, ``(F, P, 7)``.
    face_types
        ``(F,)`` face type codes to colour the faces by, as the report's thumbnails do;
        ``None`` draws every face in one colour.

    Returns
    -------
    bytes
        A PNG image, the same bytes for the same arrays (no date is stored).
    """
    count = len(samples)
    colour_by = "face_types" if face_types is not None else None
    keys = np.asarray(face_types) if face_types is not None else np.zeros(count, dtype=int)
    fig = render_part(samples, [_colour_of(int(k), colour_by) for k in keys])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96 * _PNG_SCALE, metadata={"Software": None})
    return buf.getvalue()


def _quads(samples: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quads of the faces' sample grids that have at least three corners on the face.

    Returns the corners ``(Q, 4, 3)`` (an off-face corner replaced by its neighbour, so
    three corners make a triangle), the quads' normals ``(Q, 3)`` (zero where unknown)
    and the face of each quad.
    """
    n_points = samples.shape[1]
    k = math.isqrt(n_points)
    if k < 2 or k * k != n_points:
        return np.zeros((0, 4, 3)), np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    index = np.arange(n_points).reshape(k, k)
    corners = np.stack(
        [index[:-1, :-1], index[1:, :-1], index[1:, 1:], index[:-1, 1:]], axis=-1
    ).reshape(-1, 4)  # (k-1)^2 quads of sample indices
    flags = inside[:, corners]  # F, quads, 4
    keep = flags.sum(axis=2) >= 3
    faces, which = np.nonzero(keep)
    ids, flags = corners[which], flags[faces, which]
    for corner in range(4):
        off = ~flags[:, corner]
        ids[off, corner] = ids[off, (corner + 1) % 4]
    points = samples[faces[:, None], ids]  # Q, 4, 7
    normals = points[..., 3:6].mean(axis=1)
    return points[..., :3], normals, faces


def _discs(
    samples: np.ndarray, loose: np.ndarray, eye: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An octagon ``(S, 8, 3)`` in the tangent plane of each ``loose`` sample.

    Its radius is a quarter of the face's typical sample spacing: enough to see the face,
    small enough not to spill far past its boundary.
    """
    faces, points = np.nonzero(loose)
    if faces.size == 0:
        return np.zeros((0, 8, 3)), np.zeros((0, 3)), faces
    chosen = samples[faces, points]
    normal = chosen[:, 3:6]
    known = np.linalg.norm(normal, axis=1) > 1e-6
    axis = np.where(known[:, None], normal, eye)
    axis /= np.linalg.norm(axis, axis=1)[:, None]
    helper = np.where(np.abs(axis[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    first = np.cross(axis, helper)
    first /= np.linalg.norm(first, axis=1)[:, None]
    second = np.cross(axis, first)
    radius = _spacing(samples)[faces] / 4
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    ring = (
        np.cos(angles)[None, :, None] * first[:, None]
        + np.sin(angles)[None, :, None] * second[:, None]
    )
    return (
        chosen[:, None, :3] + radius[:, None, None] * ring,
        np.where(known[:, None], normal, 0.0),
        faces,
    )


def _spacing(samples: np.ndarray) -> np.ndarray:
    """Typical distance between neighbouring samples of each face ``(F,)``."""
    n_faces, n_points = samples.shape[:2]
    xyz = samples[..., :3]
    k = math.isqrt(n_points)
    if k >= 2 and k * k == n_points:
        grid_ = xyz.reshape(n_faces, k, k, 3)
        steps = np.concatenate(
            [
                np.linalg.norm(np.diff(grid_, axis=1), axis=-1).reshape(n_faces, -1),
                np.linalg.norm(np.diff(grid_, axis=2), axis=-1).reshape(n_faces, -1),
            ],
            axis=1,
        )
        median: np.ndarray = np.median(steps, axis=1)
        return median
    extent: np.ndarray = np.linalg.norm(xyz.max(axis=1) - xyz.min(axis=1), axis=1)
    return extent / max(1.0, math.sqrt(n_points))


def _shade(
    xyz: np.ndarray,
    normals: np.ndarray,
    rgb: np.ndarray,
    view: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Screen polygons and colours: back faces culled, lit by the normals, far to near.

    A polygon without a stored normal takes the one of its plane.
    """
    right, up, eye, light = view
    length = np.linalg.norm(normals, axis=1)
    geometric = np.cross(xyz[:, 4] - xyz[:, 0], xyz[:, 6] - xyz[:, 2])
    known = length > 1e-6
    normal = np.where(known[:, None], normals, geometric)
    normal = normal / np.maximum(np.linalg.norm(normal, axis=1), 1e-12)[:, None]
    facing = (normal @ eye > -0.15) | ~known
    if facing.any():
        xyz, normal, rgb = xyz[facing], normal[facing], rgb[facing]
    order = np.argsort(xyz.mean(axis=1) @ eye, kind="stable")
    brightness = 0.45 + 0.55 * np.abs(normal @ light)
    colour = np.clip(rgb * brightness[:, None], 0, 1)[order]
    return np.stack([xyz @ right, xyz @ up], axis=-1)[order], colour


def _frame(ax: Axes, x: np.ndarray, y: np.ndarray) -> None:
    """Square limits around the drawing, with a margin."""
    cx, cy = (x.max() + x.min()) / 2, (y.max() + y.min()) / 2
    half = max(x.max() - x.min(), y.max() - y.min(), 1e-9) * 0.54
    ax.set_xlim(cx - half, cx + half)
    ax.set_ylim(cy - half, cy + half)
    ax.set_aspect("equal")


# ---------------------------------------------------------------------- storage
def storage_section(ctx: _Context) -> Markup | None:
    """Raw and stored size of each array, largest first, and a chart of the largest."""
    rows = _storage_rows(ctx.reader)
    if not rows:
        return None
    rows.sort(key=lambda r: -r[5])
    top = rows[:12]
    chart = bar_chart(
        [r[0] for r in top], [r[5] for r in top], "stored size", horizontal=True, unit="bytes"
    )
    title = f"The {len(top)} largest arrays, stored size"
    return join([_storage_table(rows), grid([figure(title, chart)])])


def _storage_table(rows: Sequence[tuple[str, str, str, str, int, int]]) -> Markup:
    body = [
        (
            name,
            shape,
            dtype,
            dims,
            format_bytes(raw),
            format_bytes(size),
            f"{raw / size:.2g}x" if size else "-",
        )
        for name, shape, dtype, dims, raw, size in rows
    ]
    headers = ["array", "shape", "dtype", "dims", "raw", "stored", "ratio"]
    return table(headers, body, [False] * 4 + [True] * 3)


def _storage_rows(reader: DatasetReader) -> list[tuple[str, str, str, str, int, int]]:
    """``(array, shape, dtype, dims, raw bytes, stored bytes)`` of every data array."""
    rows = []
    for group in reader.groups:
        for array in reader.arrays(group):
            if array in (OFFSETS, file_id_code_name(group)):
                continue
            meta = reader.array_meta(group, array)
            raw = int(np.prod(meta.shape, dtype=np.int64)) * int(meta.itemsize)
            shape = "(" + ", ".join(str(s) for s in meta.shape) + ")"
            path = f"{group}/{array}"
            size = reader.stored_nbytes(group, array)
            rows.append((path, shape, str(meta.dtype), ", ".join(meta.dims or ()), raw, size))
    return rows


# ---------------------------------------------------------------------- first items
def first_items_section(ctx: _Context) -> Markup | None:
    """The first infoset rows: short names, paths below their common folder, units."""
    info = ctx.info
    if info is None or info.empty:
        return None
    head = info.head(FIRST_ROWS)
    codes = ctx.info_codes[: len(head)]
    columns = [
        ("#", True, [str(c) if c >= 0 else "-" for c in codes]),
        *_infoset_columns(head),
        *_row_count_columns(ctx, codes),
    ]
    rows = list(zip(*(values for _, _, values in columns), strict=True))
    table_ = table([c[0] for c in columns], rows, [c[1] for c in columns])
    shown = f"the first {len(head)} of {len(info):,}" if len(info) > len(head) else "all the"
    text = f"{shown.capitalize()} rows of the infoset; sources relative to their common folder."
    return join([tag("p", text, class_="note"), table_])


def _infoset_columns(head: pd.DataFrame) -> list[tuple[str, bool, list[str]]]:
    """``(header, numeric?, cells)`` of the infoset columns worth showing."""
    out = []
    for column in head.columns:
        if column in ("id", "table_name"):
            continue
        values = head[column]
        if column == "description":
            out.append(("source", False, relative_paths(values.astype(str).tolist())))
        else:
            out.append((column, _numeric_column(values), _column_text(values, column)))
    return out


def _row_count_columns(ctx: _Context, codes: np.ndarray) -> list[tuple[str, bool, list[str]]]:
    """Faces, co-edges and face pairs of each shown item."""
    out = []
    for group, noun in ROW_NAMES.items():
        rows = ctx.rows_per_item(group)
        if rows is not None:
            out.append((noun, True, [f"{int(rows[c]):,}" if c >= 0 else "-" for c in codes]))
    return out


def _numeric_column(values: pd.Series) -> bool:
    from pandas.api import types

    return bool(types.is_numeric_dtype(values) and not types.is_bool_dtype(values))


def _column_text(values: pd.Series, column: str) -> list[str]:
    import pandas as pd

    if column == "name":
        return [short_name(str(v)) for v in values]
    fmt = _format_in(_unit_of(column)) if _numeric_column(values) else str
    return ["" if pd.isna(v) else fmt(v) for v in values]


# ---------------------------------------------------------------------- the page
#: ``(anchor, heading, builder)`` of each section, in page order.
SECTIONS: tuple[tuple[str, str, Callable[[_Context], Markup | None]], ...] = (
    ("overview", "Overview", overview_section),
    ("sizes", "Item sizes", item_sizes_section),
    ("geometry", "Geometry", geometry_section),
    ("labels", "Labels and metadata by split", labels_section),
    ("parts", "Parts", thumbnails_section),
    ("storage", "Storage", storage_section),
    ("items", "First items", first_items_section),
)


def _page(name: str, dataset: str, sections: Sequence[Markup], seconds: float) -> str:
    head = tag(
        "head",
        void("meta", charset="utf-8"),
        void("meta", name="viewport", content="width=device-width, initial-scale=1"),
        tag("title", f"{name} - cadstore report"),
        tag("style", Markup(_STYLE)),
    )
    shown = posixpath.basename(dataset.replace("\\", "/").rstrip("/"))
    body = tag(
        "body",
        tag("h1", name),
        tag("p", f"{shown} · generated by cadstore in {format_seconds(seconds)}", class_="sub"),
        _navigation(sections),
        list(sections),
        tag("footer", "Self-contained page: charts and pictures are embedded, nothing is fetched."),
    )
    return "<!doctype html>\n" + tag("html", head, body, lang="en")


def _navigation(sections: Sequence[Markup]) -> Markup:
    """Links to the sections on the page (found by their anchors)."""
    present = "".join(sections)
    links = [
        tag("a", title, href=f"#{anchor}")
        for anchor, title, _ in SECTIONS
        if f'<section id="{anchor}">' in present
    ]
    return tag("nav", links)


def _build_sections(ctx: _Context) -> list[Markup]:
    """Every section that has something to show, with its heading."""
    built = [(anchor, title, make(ctx)) for anchor, title, make in SECTIONS]
    return [section(anchor, title, body) for anchor, title, body in built if body is not None]


def _context(
    dataset: str,
    reader: DatasetReader,
    tables: tuple[pd.DataFrame | None, pd.DataFrame | None],
) -> _Context:
    info, attribs = tables
    codes = _item_codes(info, reader)
    splits = _item_splits(info, codes, reader.n_items)
    return _Context(dataset, reader, info, attribs, codes, splits)


def _is_report(head: bytes) -> bool:
    """Whether a file's first bytes are those of an HTML page (a report made before)."""
    return head.lstrip()[:15].lower().startswith(b"<!doctype html")


def check_report_output(output: str, storage_options: dict[str, Any] | None = None) -> Location:
    """Refuse an output a report may not be written to; return where it is.

    Called before anything is read (the dataset, or the manifest naming it): the plots
    take a while, and an output below a file would fail only at the end, in the system's
    words, or be hidden by a problem found on the way.

    Parameters
    ----------
    output
        The HTML file to write, a path or a URL.
    storage_options
        fsspec options when ``output`` is a URL.

    Raises
    ------
    OutputExistsError
        If ``output`` lies below a file (``notes.txt/r.html``) or holds anything but an
        HTML page (a dataset, its tables, its manifest, a directory), naming it.
    """
    out = resolve(output, storage_options, shared=True)
    check_output_folder(out)
    # Never over the dataset, its tables or its manifest, nor any file but a report.
    check_replaceable(out, "an HTML report", _is_report)
    return out


def write_report(
    dataset: str,
    output: str,
    *,
    infoset: str | None = None,
    attribset: str | None = None,
    title: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write the report of ``dataset`` to ``output`` (HTML) atomically; return its path.

    Parameters
    ----------
    dataset
        The ``.dataset``.
    output
        The HTML file to write.
    infoset, attribset
        The Parquet tables; by default next to the dataset with the same stem, used when
        present.
    title
        Page title (default: the dataset's name).
    storage_options
        fsspec options for whichever of these paths are URLs (``s3://...``); the report
        itself may be written to a URL too (one upload).

    Raises
    ------
    OutputExistsError
        If ``output`` holds anything but an HTML page (the dataset, its tables, its
        manifest, a directory), which is left as it is; or if it lies below a file
        (``notes.txt/r.html``), checked before the dataset is read.
    """
    import matplotlib

    started = time.perf_counter()
    out = check_report_output(output, storage_options)
    source = resolve(dataset, storage_options, shared=True)

    name = title or source.with_suffix("", replacing=".dataset").name
    with DatasetReader(source) as reader, matplotlib.rc_context(_RC):
        trusted = TrustedTables(reader)

        def table(given: str | None, kind: str) -> pd.DataFrame | None:
            # The tables of the version the reader has open (cadstore.lifecycle).
            where = copy_beside(source, kind)
            if given is not None:
                where = resolve(given, storage_options, shared=True)
            found = trusted.read(kind, where if where.isfile() else None)
            return None if found is None else frame_of(*found)

        tables = (table(infoset, "infoset"), table(attribset, "attribset"))
        sections = _build_sections(_context(dataset, reader, tables))
    page = _page(name, dataset, sections, time.perf_counter() - started)
    # A report can be made again: written atomically, not fsynced.
    write_bytes_atomic(out, page.encode("utf-8"), durable=False)
    return output
