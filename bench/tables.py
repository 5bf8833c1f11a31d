"""Render the tables of ``docs/benchmarks.md`` from the recorded runs in ``bench/results/``.

Every table of numbers in ``docs/benchmarks.md`` is generated here from the JSON files the
benchmark scripts write (``bench/bench_*.py --json bench/results/<name>.json``); the prose
around the tables is written by hand. A table sits between two marker comments::

    <!-- table: item -->
    (generated: do not edit)
    <!-- /table -->

(each marker alone on its line) and this script replaces whatever is between them with the
table rendered from the current JSON, leaving everything outside the markers untouched.

Usage, from the repository root (standard library only; cadstore need not be installed)::

    python bench/tables.py            # rewrite the tables of docs/benchmarks.md in place
    python bench/tables.py --check    # exit 1, naming the stale tables, if any differs

``--results DIR`` and ``--doc FILE`` point at other results and another page (the tests use
them on modified copies). ``--partial`` accepts a page that holds only some of the tables,
such as a README carrying ``<!-- table: summary -->`` alone.

Exit status: 0 when the page is (or now is) up to date; 1 when ``--check`` finds a stale
table, or when a table has no markers in the page (without ``--partial``); 2 when a
results file is missing or unreadable, or the markers are malformed or unknown.

Notes
-----
Numbers are formatted for reading, not for re-analysis: milliseconds with two or three
significant digits, speed-ups as ``32x``, size ratios as ``1.04x``, MB/s as integers, and
thousands separators throughout. The JSON files stay the record of each run.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, NamedTuple

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DEFAULT_RESULTS = BENCH_DIR / "results"
DEFAULT_DOC = ROOT / "docs" / "benchmarks.md"

# Markers are whole lines, so a page may quote them in running text.
_BLOCK = re.compile(
    r"^<!-- table: (?P<name>[A-Za-z0-9_-]+) -->\n(?P<body>.*?)^<!-- /table -->$",
    re.DOTALL | re.MULTILINE,
)
_OPEN = re.compile(r"^<!-- table: .*-->$", re.MULTILINE)
_CLOSE = "<!-- /table -->"
_CLOSE_LINE = re.compile(r"^<!-- /table -->$", re.MULTILINE)

Row = Sequence[str]


class ResultsError(Exception):
    """A results file is missing or does not hold what its table needs."""


class MarkerError(Exception):
    """The page's table markers are malformed, duplicated or name no known table."""


# --------------------------------------------------------------------------- formatting
def _fixed(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals and thousands separators, halves rounded up.

    Python's own formatting rounds an exact binary half to even (``14.25`` to ``14.2``);
    a reader, and the text around the tables, rounds it up (``14.3``).
    """
    quantum = Decimal(1).scaleb(-digits)
    return f"{Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP):,.{digits}f}"


def _two_significant(value: float) -> str:
    """``value`` (between 0 and 1) with two significant digits, trailing zero kept: ``0.050``."""
    if value <= 0:
        return "0"
    rounded = float(f"{value:.2g}")  # 0.0996 -> 0.1, so that it shows as 0.10, not 0.100
    digits = 1 - math.floor(math.log10(rounded))
    return _fixed(value, digits)


def fmt_ms(value: float) -> str:
    """Milliseconds with two or three significant digits (``0.58``, ``6.51``, ``75.4``)."""
    if value >= 100:
        return _fixed(value, 0)
    if value >= 10:
        return _fixed(value, 1)
    if value >= 0.1:
        return _fixed(value, 2)
    return _two_significant(value)


def fmt_seconds(value: float) -> str:
    """Seconds: one decimal from 10 s up, else two or three significant digits."""
    if value >= 10:
        return _fixed(value, 1)
    if value >= 0.1:
        return _fixed(value, 2)
    return _two_significant(value)


def fmt_times(value: float) -> str:
    """A speed-up or a how-many-times ratio: ``5,664x``, ``32x``, ``3.2x``, ``0.75x``."""
    if value >= 10:
        return f"{_fixed(value, 0)}x"
    if value >= 1:
        return f"{_fixed(value, 1)}x"
    return fmt_rel(value)


def fmt_rel(value: float) -> str:
    """A size ratio near 1: ``1.04x``; two significant digits below 0.1 (``0.065x``)."""
    if value < 0.1:
        return f"{_two_significant(value)}x"
    return f"{_fixed(value, 2)}x"


def fmt_pct(share: float) -> str:
    """A share given as a fraction: ``31%``, ``6.9%``."""
    percent = 100 * share
    if 0 < percent < 0.1:
        return "<0.1%"
    return f"{_fixed(percent, 0 if percent >= 10 else 1)}%"


def fmt_int(value: float) -> str:
    """A count or a rate, rounded, with thousands separators: ``1,388``."""
    return _fixed(value, 0)


def fmt_kib(value: float) -> str:
    """KiB with one decimal: ``53.9``."""
    return _fixed(value, 1)


def fmt_mb(n_bytes: float) -> str:
    """Bytes as MB (10^6) or GB (10^9), three significant digits: ``708 MB``, ``22.5 GB``."""
    if n_bytes >= 1e9:
        return f"{_fixed(n_bytes / 1e9, 2 if n_bytes < 1e10 else 1)} GB"
    return f"{_fixed(n_bytes / 1e6, 0)} MB"


def met(ok: bool) -> str:
    """The "target met" cell."""
    return "yes" if ok else "**no**"


def markdown_table(header: Row, rows: Iterable[Row], align: str | None = None) -> list[str]:
    """Return the lines of a Markdown table; ``align`` is one ``l`` or ``r`` per column."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError("one alignment letter per column")
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} does not have {len(header)} cells")
        lines.append("| " + " | ".join(row) + " |")
    return lines


# --------------------------------------------------------------------------- results
def load(results: Path, name: str) -> dict[str, Any]:
    """Read ``results/name`` as JSON, or raise :class:`ResultsError` naming it."""
    path = results / name
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object")
    return data


# --------------------------------------------------------------------------- bench_item
#: Readable names of bench_item.py's contenders (bench/_peers.py), by their JSON keys.
ITEM_PEERS = {
    "spec_zarr2": "**specified design on zarr-python 2.18** (the fair reference: "
    "`DirectoryStore`, Zstd 12 + Delta, `copy_store` into a `ZipStore`)",
    "spec_design": "specified design emulated on zarr-python 3 (format 2 directory, Zstd 12 + "
    "Delta, zipped)",
    "zarr_v3": "zarr-python 3 ZipStore, zstd 3",
    "h5py": "h5py, gzip 4",
    "npz": "numpy `savez_compressed`",
}
_CADSTORE_LEVEL = re.compile(
    r"cadstore-L(?P<level>\d+)(?P<batch> batch-synced)?(?P<default> \(default\))?$"
)

#: The issue's targets for one item, by result key: comparison, value, how the page shows it.
ITEM_TARGETS: dict[str, tuple[str, float, str]] = {
    "write_speedup_vs_spec_zarr2": (">=", 20.0, "≥ 20x"),
    "size_vs_spec_zarr2": ("<=", 1.1, "≤ 1.1x"),
    "write_speedup_vs_spec": (">=", 20.0, "≥ 20x"),
    "size_vs_spec": ("<=", 1.1, "≤ 1.1x"),
    "read_one_ms": ("<=", 0.7, "≤ 0.7 ms"),
    "read_ms": ("<=", 2.0, "≤ 2 ms"),
    "write_ms": ("<=", 5.0, "≤ 5 ms"),
    "overhead_vs_chunks": ("<=", 0.05, "≤ 5%"),
}


def _item_label(name: str) -> str:
    match = _CADSTORE_LEVEL.match(name)
    if match:
        label = f"cadstore, zstd {match['level']}"
        if match["batch"]:
            return f"{label}, synced per block of 10 items (as `cadstore encode` writes)"
        return f"**{label} (default)**" if match["default"] else label
    return ITEM_PEERS.get(name, name)


def _default_cadstore(summary: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    for name, row in summary["results"].items():
        if name.startswith("cadstore") and name.endswith("(default)"):
            return name, row
    raise ResultsError("no '(default)' cadstore contender in the item results")


def _item_table(summary: Mapping[str, Any]) -> list[str]:
    zarr2 = summary.get("reference") == "spec_zarr2"
    rows = []
    for name, r in summary["results"].items():
        overhead = ""
        if "overhead_vs_chunks" in r:
            overhead = (
                f"{fmt_pct(r['overhead_vs_chunks'])} "
                f"({fmt_pct(r['overhead_vs_chunks_median_item'])})"
            )
        headline = (
            (fmt_times(r["write_speedup_vs_spec_zarr2"]), fmt_rel(r["size_vs_spec_zarr2"]))
            if zarr2
            else ()
        )
        rows.append(
            (
                _item_label(name),
                fmt_ms(r["write_ms"]),
                fmt_ms(r["read_ms"]),
                fmt_ms(r["read_one_ms"]),
                fmt_kib(r["file_kib"]),
                *headline,
                fmt_times(r["write_speedup_vs_spec"]),
                fmt_rel(r["size_vs_spec"]),
                _fixed(r["compression_ratio"], 1),
                overhead,
            )
        )
    header = (
        "storage",
        "write ms",
        "read all ms",
        "open + read one ms",
        "file KiB",
        *(
            ("write speed-up vs zarr-python 2.18 reference", "total size vs that reference")
            if zarr2
            else ()
        ),
        "write speed-up vs " + ("the zarr-python 3 emulation" if zarr2 else "specified design"),
        "total size vs " + ("that emulation" if zarr2 else "specified design"),
        "compression ratio",
        "metadata + container overhead (median item)",
    )
    return markdown_table(header, rows, "l" + "r" * (len(header) - 1))


def _item_caption(summary: Mapping[str, Any]) -> str:
    source = summary.get("source", "generated")
    loadavg = summary.get("loadavg")
    versions = summary.get("zarr2_versions")
    return (
        f"{summary['items']} {source} items (seed {summary['seed']}; "
        f"median {fmt_int(summary['faces_median'])} faces, "
        f"{fmt_int(summary['raw_bytes_median'] / 1024)} KiB raw), "
        f"{summary['machine']}; work directory in `{os.path.dirname(summary['workdir'])}`; "
        "medians over items. "
        f"File-system steps of one durable atomic publish on that disk: "
        f"{fmt_ms(summary['fs_floor_ms'])} ms."
        + (
            f" The run of median speed-up (synced per block) of {len(summary['runs'])} runs of"
            " the same items; a range is over those runs."
            if len(summary.get("runs") or []) > 1
            else ""
        )
        + (f" Load average before the run: {loadavg[0]:.2f}." if loadavg else "")
        + (
            f" Reference: zarr {versions['zarr']}, numcodecs {versions['numcodecs']}."
            if versions
            else ""
        )
    )


def run_values(summary: Mapping[str, Any], name: str, key: str) -> list[float]:
    """``key`` of contender ``name`` in each run of a ``bench_item.py --runs N`` summary
    (empty for a single run): the spread the table shows beside the median run's value."""
    runs = summary.get("runs") or []
    if len(runs) < 2:
        return []
    return [run["results"][name][key] for run in runs if key in run["results"].get(name, {})]


def _with_runs(value: str, values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """``value`` and, over several runs, their range: ``21x (16x-22x over 5 runs)``."""
    if not values:
        return value
    return f"{value} ({fmt(min(values))}-{fmt(max(values))} over {len(values)} runs)"


def _met_in_runs(ok: bool, values: Sequence[float], passes: Callable[[float], bool]) -> str:
    """The "met" cell of the median run and, over several runs, how many met it."""
    if not values:
        return met(ok)
    return f"{met(ok)} ({sum(map(passes, values))} of {len(values)} runs)"


def render_item(results: Path) -> tuple[list[str], str]:
    """bench_item.py on the ext4 disk: every contender, ratios to the specified design."""
    summary = load(results, "item.json")
    return _item_table(summary), _item_caption(summary)


def render_item_tmpfs(results: Path) -> tuple[list[str], str]:
    """bench_item.py with its work directory on tmpfs (``--dir /dev/shm``)."""
    summary = load(results, "item-tmpfs.json")
    return _item_table(summary), _item_caption(summary)


def render_item_real(results: Path) -> tuple[list[str], str]:
    """bench_item.py on real encoder items (``--source real``)."""
    summary = load(results, "item-real.json")
    return _item_table(summary), _item_caption(summary)


def render_item_targets(results: Path) -> tuple[list[str], str]:
    """The default cadstore contender of the recorded run against the issue's targets."""
    return _item_targets(load(results, "item.json"))


def render_item_real_targets(results: Path) -> tuple[list[str], str]:
    """The same targets on real encoder items."""
    return _item_targets(load(results, "item-real.json"))


def _item_targets(summary: Mapping[str, Any]) -> tuple[list[str], str]:
    name, r = _default_cadstore(summary)
    zarr2 = summary.get("reference") == "spec_zarr2"
    ref_name = "spec_zarr2" if zarr2 else "spec_design"
    spec = summary["results"][ref_name]
    suffix = "_zarr2" if zarr2 else ""
    ref_label = "zarr-python 2.18 reference" if zarr2 else "specified design"
    measures = (
        (f"write speed-up vs {ref_label}", f"write_speedup_vs_spec{suffix}", fmt_times),
        (f"total size vs {ref_label}", f"size_vs_spec{suffix}", fmt_rel),
        ("open an item and read one array", "read_one_ms", lambda v: f"{fmt_ms(v)} ms"),
        ("read a whole item", "read_ms", lambda v: f"{fmt_ms(v)} ms"),
        ("write an item (ext4 disk)", "write_ms", lambda v: f"{fmt_ms(v)} ms"),
        ("metadata + container overhead", "overhead_vs_chunks", fmt_pct),
    )
    rows = []
    batch_name = f"{name.removesuffix(' (default)')} batch-synced"
    for label, key, fmt in measures:
        op, target, shown = ITEM_TARGETS[key]

        def passes(value: float, op: str = op, target: float = target) -> bool:
            return value >= target if op == ">=" else value <= target

        spec_cell = fmt(spec[key]) if key in spec else ""
        values = run_values(summary, name, key) if key.startswith("write_speedup") else []
        rows.append(
            (
                label,
                shown,
                _with_runs(fmt(r[key]), values, fmt),
                spec_cell,
                _met_in_runs(passes(r[key]), values, passes),
            )
        )
        batch = summary["results"].get(batch_name)
        if batch is not None and key in ("write_ms", f"write_speedup_vs_spec{suffix}"):
            # The same writes made durable per block, as the encoder makes them.
            values = run_values(summary, batch_name, key) if key.startswith("write_sp") else []
            rows.append(
                (
                    f"{label}, synced per block",
                    shown,
                    _with_runs(fmt(batch[key]), values, fmt),
                    spec_cell,
                    _met_in_runs(passes(batch[key]), values, passes),
                )
            )
    header = ("measure", "target", _item_label(name).strip("*"), ref_label, "met")
    return markdown_table(header, rows, "lrrrl"), _item_caption(summary)


# --------------------------------------------------------------------------- bench_int_filters
def render_int_filters(results: Path) -> tuple[list[str], str]:
    """bench_int_filters.py: bytes per mode relative to plain zstd, per integer array."""
    data = load(results, "int_filters.json")
    items = data["items"]
    modes = [m for m in data["totals"] if m != "zstd"]
    total_zstd = data["totals"]["zstd"]
    rows = []
    entries = [*data["arrays"].items(), ("**all integer arrays**", {**data["totals"]})]
    for key, row in entries:
        base = row["zstd"]
        label = key if key.startswith("**") else f"`{key}`"
        chosen = row.get("delta_chosen_in_items")
        rows.append(
            (
                label,
                fmt_int(base / items),
                fmt_pct(base / total_zstd),
                *(fmt_rel(row[m] / base) for m in modes),
                "" if chosen is None else f"{chosen} / {items}",
            )
        )
    header = (
        "integer array",
        "zstd bytes per item",
        "share of integer zstd bytes",
        *(f"{m} vs zstd" for m in modes),
        "v2 items given Delta",
    )
    caption = (
        f"{items} items at zstd level {data['level']} (the default), sizes summed over items;"
        f" below 1x a mode is smaller than plain zstd."
    )
    return markdown_table(header, rows, "l" + "r" * (len(header) - 1)), caption


# --------------------------------------------------------------------------- bench_encode
def render_encode(results: Path) -> tuple[list[str], str]:
    """bench_encode.py: throughput and the shares of STEP reading and storage."""
    d = load(results, "encode.json")
    per_part = {k: 1e3 * v / d["items"] for k, v in d["storage_timings"].items()}
    writes = " + ".join(fmt_ms(per_part[c]) for c in ("save_data", "compress_store", "close"))
    rows = [
        (
            "encoder, one process (topology, all pushes, storage)",
            f"{fmt_int(d['encoder_parts_per_second'])} parts/s",
        ),
        (
            "end to end with STEP reading, one process",
            f"{fmt_int(d['inprocess_parts_per_second'])} parts/s",
        ),
        (
            f"end to end with STEP reading, {d['workers']} worker processes",
            f"{fmt_int(d['parallel_parts_per_second'])} parts/s",
        ),
        ("STEP reading, share of all time", fmt_pct(d["load_share"])),
        (
            "storage, every call (schema, keys, writes), share of the encoder's time",
            fmt_pct(d["storage_share"]),
        ),
        (
            "storage writes (`save_data` + `compress_store` + `close`), share of the encoder's "
            "time / of all time",
            f"{fmt_pct(d['write_share'])} / {fmt_pct(d['write_share_of_all'])}",
        ),
        ("storage writes per part (`save_data` + `compress_store` + `close`)", f"{writes} ms"),
        ("item size", f"{fmt_kib(d['bytes_per_item'] / 1024)} KiB"),
    ]
    durability = d.get("durability_write_ms")
    if durability:
        syncs = d["durability_sync_ms"]
        rows.insert(
            -1,
            (
                "storage writes and syncing per part: items durable per batch (default) / "
                'each item fsynced (`durability="item"`), best of two turns',
                f"{fmt_ms(durability['batch'])} ms (sync {fmt_ms(syncs['batch'])}) / "
                f"{fmt_ms(durability['item'])} ms",
            ),
        )
    m = d["machine"]
    caption = (
        f"{d['items']} sample parts from {d['files']} STEP files, histograms "
        f"{'on' if d['histograms'] else 'off'}; Python {m['python']}, OCP {m['ocp']}, "
        f"{m['cpus']} CPUs."
    )
    return markdown_table(("measure", "value"), rows, "lr"), caption


def render_encode_steps(results: Path) -> tuple[list[str], str]:
    """bench_encode.py's in-process profile: each step, and each storage call."""
    d = load(results, "encode.json")
    items = d["items"]
    timings = d["timings"]
    total = sum(timings.values())
    storage = timings["storage"]
    rows: list[Row] = []
    for step, seconds in timings.items():
        rows.append((f"`{step}`", fmt_ms(1e3 * seconds / items), fmt_pct(seconds / total), ""))
        if step == "storage":
            for call, call_s in sorted(d["storage_timings"].items(), key=lambda kv: -kv[1]):
                rows.append(
                    (
                        f"&nbsp;&nbsp;of which `{call}`",
                        fmt_ms(1e3 * call_s / items),
                        "",
                        fmt_pct(call_s / storage),
                    )
                )
    rows.append(("**total**", fmt_ms(1e3 * total / items), "100%", ""))
    header = ("step", "ms per part", "share of all time", "share of storage")
    return markdown_table(header, rows, "lrrr"), (
        f"One process, {items} parts, each step timed from inside the run."
    )


# --------------------------------------------------------------------------- bench_merge
_N_ITEMS_SUFFIX = re.compile(r", \d+ items$")


def render_merge(results: Path) -> tuple[list[str], str]:
    """bench_merge.py: throughput and peak memory, and the ratio to zarr-python."""
    d = load(results, "merge.json")
    rows_in = d["rows"]
    baseline = next((r for n, r in rows_in.items() if n.startswith("zarr-python")), None)
    if baseline is None:
        raise ResultsError("merge.json has no zarr-python row")
    rows = []
    for name, r in rows_in.items():
        rss = r["self_rss_mb"] + r.get("workers_rss_mb", 0)
        rows.append(
            (
                _N_ITEMS_SUFFIX.sub("", name),
                fmt_int(r["items"]),
                fmt_seconds(r["seconds"]),
                fmt_int(r["mb_per_s"]),
                fmt_times(r["mb_per_s"] / baseline["mb_per_s"]),
                fmt_int(rss),
            )
        )
    header = (
        "merge",
        "items",
        "seconds",
        "MB/s of raw item data",
        "throughput vs zarr-python",
        "peak RSS MB",
    )
    biggest = max(rows_in.values(), key=lambda r: r["items"])
    caption = (
        f"{fmt_int(biggest['items'])} items, {fmt_mb(biggest['raw_bytes'])} of raw arrays, "
        f"merged into {fmt_mb(biggest['stored'])}; each merge in a fresh process; zarr-python "
        f"ran on the first {fmt_int(baseline['items'])} items only (its row is the 1.0x)."
    )
    return markdown_table(header, rows, "lrrrrr"), caption


# --------------------------------------------------------------------------- bench_dataset
def render_dataset_reads(results: Path) -> tuple[list[str], str]:
    """bench_dataset.py: random-item and ``file_dataset`` read times."""
    d = load(results, "dataset.json")
    item = d["random_item"]
    fd = d["file_dataset"]
    cases = (
        ("random item, all arrays, read again (decoded chunks cached)", item["repeat"]),
        ("random item, all arrays, first read (OS cache warm, decoding)", item["first"]),
        ("random item without the face-pair group, first read", item["without_faceface"]),
        (f'`file_dataset(code, "{fd["group"]}")`', fd["ours"]),
        (
            f"specified approach: materialise the group, scan `file_id_code_{fd['group']}`",
            fd["spec_materialise_and_scan"],
        ),
        ("specified approach, group already in memory: the scan alone", fd["spec_in_memory_scan"]),
    )
    rows = [
        (label, fmt_ms(s["median_ms"]), fmt_ms(s["mean_ms"]), fmt_ms(s["p95_ms"]))
        for label, s in cases
    ]
    caption = (
        f"{fmt_int(d['items'])} items, {fmt_mb(d['dataset_mb'] * 1e6)} dataset, items of "
        f"{_fixed(d['random_item']['mean_item_mb'], 2)} MB raw on average (median "
        f"{_fixed(d['random_item']['median_item_mb'], 2)} MB); {d['machine']}, "
        f"Python {d['python']}, "
        f"load average {d['load_average']} before the run; OS cache "
        f"{'warmed' if d['os_cache_warmed'] else 'cold'}."
    )
    header = ("read", "median ms", "mean ms", "p95 ms")
    return markdown_table(header, rows, "lrrr"), caption


def render_dataset(results: Path) -> tuple[list[str], str]:
    """bench_dataset.py against the targets of issue 5."""
    d = load(results, "dataset.json")
    item = d["random_item"]
    fd = d["file_dataset"]
    loader = d["dataloader"]
    dist = d["create_distribution"]
    rows = [
        (
            "random item, all arrays, read again",
            f"{fmt_ms(item['repeat']['median_ms'])} ms",
            "≤ 1 ms",
            met(item["repeat"]["median_ms"] <= 1.0),
        ),
        (
            "random item, all arrays, first read",
            f"{fmt_ms(item['first']['median_ms'])} ms",
            "≤ 1 ms",
            met(item["first"]["median_ms"] <= 1.0),
        ),
        (
            f'`file_dataset(code, "{fd["group"]}")` vs materialise and scan',
            f"{fmt_ms(fd['ours']['median_ms'])} vs "
            f"{fmt_ms(fd['spec_materialise_and_scan']['median_ms'])} ms: "
            f"**{fmt_times(fd['ratio_vs_materialise'])}**",
            "≥ 50x",
            met(fd["ratio_vs_materialise"] >= 50),
        ),
    ]
    for label, r in dist.items():
        rows.append(
            (
                f"`create_distribution` over all items: {label}",
                f"{fmt_seconds(r['median_s'])} s (first call {fmt_seconds(r['first_s'])} s)",
                "< 0.5 s",
                met(r["median_s"] < 0.5),
            )
        )
    labels = {"all groups": "every group", "without faceface": "graph groups, no face pairs"}
    for key, r in loader.items():
        rows.append(
            (
                f"`DataLoader(num_workers=2)`, {labels.get(key, key)}",
                f"{fmt_int(r['items_per_s'])} items/s",
                "≥ 1,000 items/s",
                met(r["items_per_s"] >= 1000),
            )
        )
    header = ("measure", "recorded run (median)", "target", "met")
    return markdown_table(
        header, rows, "lrrl"
    ), "Targets of issue 5, as bench_dataset.py states them."


def render_dataloader(results: Path) -> tuple[list[str], str]:
    """bench_dataset.py's DataLoader epochs: rate, CPU per item, and the bound it implies."""
    d = load(results, "dataset.json")
    labels = {"all groups": "every group", "without faceface": "graph groups, no face pairs"}
    rows = []
    for key, r in d["dataloader"].items():
        worker = r["worker_cpu_ms_per_item"]
        main = r["main_cpu_ms_per_item"]
        cpu = worker["user"] + worker["system"]
        rows.append(
            (
                labels.get(key, key),
                fmt_int(r["items"]),
                fmt_int(r["items_per_s"]),
                fmt_int(r["items_per_s_after_first_batch"]),
                fmt_seconds(r["first_batch_s"]),
                f"{fmt_ms(worker['user'])} + {fmt_ms(worker['system'])}",
                f"{fmt_ms(main['user'])} + {fmt_ms(main['system'])}",
                fmt_int(2 * 1e3 / cpu),
            )
        )
    header = (
        "groups",
        "items",
        "items/s",
        "items/s after the first batch",
        "first batch s",
        "worker CPU ms per item (user + system)",
        "main process CPU ms per item (user + system)",
        "bound from worker CPU on 2 cores, items/s",
    )
    shm = d["shared_memory"]
    caption = (
        f"One epoch, 2 workers; fresh shared memory filled by one process at "
        f"{_fixed(shm['fill_gb_per_s'], 2)} GB/s, "
        f"at most {fmt_int(shm['ceiling_items_per_s_2_workers'])} items/s with 2 workers "
        f"at {_fixed(d['random_item']['mean_item_mb'], 2)} MB per item."
    )
    return markdown_table(header, rows, "lrrrrrrr"), caption


# --------------------------------------------------------------------------- bench_scale
def render_scale(results: Path) -> tuple[list[str], str]:
    """bench_scale.py's merges: local, S3, LocalCluster, LocalCluster on S3."""
    d = load(results, "scale.json")
    merges = d["merges"]
    local = merges[0]
    rows = [
        (
            m["merge"],
            fmt_seconds(m["seconds"]),
            fmt_int(m["mb_per_s"]),
            fmt_rel(m["mb_per_s"] / local["mb_per_s"]),
        )
        for m in merges
    ]
    startup = [m["startup_s"] for m in merges if "startup_s" in m]
    load_avg = " ".join(_fixed(x, 1) for x in d["load_average"])
    caption = (
        f"{d['items']} items, {fmt_mb(local['raw_mb'] * 1e6)} of raw arrays, "
        f"{fmt_mb(local['stored_mb'] * 1e6)} dataset; {d['machine']['cpus']} CPUs, Python "
        f"{d['machine']['python']}, load average {load_avg} at the end of the run."
    )
    if startup:
        caption += f" Cluster start-up ({_fixed(startup[0], 1)} s) not counted."
    header = ("merge", "seconds", "MB/s of raw item data", f"vs {local['merge']}")
    return markdown_table(header, rows, "lrrr"), caption


def render_scale_item(results: Path) -> tuple[list[str], str]:
    """bench_scale.py: one item read from S3 through OptStorage."""
    r = load(results, "scale.json")["s3_item_read"]
    rows = [
        ("open the item and read one array", fmt_ms(r["open_and_read_one_ms"])),
        ("read the whole item", fmt_ms(r["read_whole_item_ms"])),
        ('read the whole item, `mode="r"`', fmt_ms(r["read_whole_item_mode_r_ms"])),
    ]
    caption = f"Medians of {r['repeats']}, warm connection, SeaweedFS on loopback."
    return markdown_table(("read through `OptStorage`", "median ms"), rows, "lr"), caption


def render_scale_dataset(results: Path) -> tuple[list[str], str]:
    """bench_scale.py: random items of the merged dataset on S3, batched against one by one."""
    d = load(results, "scale.json")["s3_dataset_item_read"]
    layouts = (("zip (one object)", d), ("directory (one object per shard)", d["directory layout"]))
    rows = []
    for label, r in layouts:
        batched, serial = r["batched"], r["one request at a time"]
        rows.append(
            (
                label,
                fmt_ms(batched["read_item_median_ms"]),
                fmt_ms(serial["read_item_median_ms"]),
                fmt_times(r["speedup_read_item"]),
                fmt_ms(batched["read_items_32_ms_per_item"]),
                fmt_ms(serial["read_items_32_ms_per_item"]),
                fmt_times(r["speedup_read_items"]),
            )
        )
    header = (
        "dataset on SeaweedFS",
        "`read_item` batched (default), median ms",
        "one request at a time, ms",
        "speed-up",
        "`read_items` in batches of 32, batched, ms per item",
        "one request at a time, ms per item",
        "speed-up",
    )
    caption = f"{d['samples']} random items, SeaweedFS on loopback."
    return markdown_table(header, rows, "lrrrrrr"), caption


# --------------------------------------------------------------------------- summary
def render_summary(results: Path) -> tuple[list[str], str]:
    """Six headline rows across the benchmarks (for the README)."""
    item = load(results, "item.json")
    default_name, cad = _default_cadstore(item)
    batch = item["results"].get(f"{default_name.removesuffix(' (default)')} batch-synced")
    spec = item["results"]["spec_design"]
    zarr2 = item.get("reference") == "spec_zarr2"
    ref = item["results"]["spec_zarr2"] if zarr2 else spec
    suffix = "_zarr2" if zarr2 else ""
    merge = load(results, "merge.json")["rows"]
    one_thread = max(
        (r for n, r in merge.items() if n.startswith("cadstore, 1 thread")),
        key=lambda r: r["items"],
    )
    zarr_row = next(r for n, r in merge.items() if n.startswith("zarr-python"))
    same = next(
        r
        for n, r in merge.items()
        if n.startswith("cadstore, 1 thread") and r["items"] == zarr_row["items"]
    )
    dataset = load(results, "dataset.json")
    first = dataset["random_item"]["first"]["median_ms"]
    light = dataset["random_item"]["without_faceface"]["median_ms"]
    loader = dataset["dataloader"]
    fd = dataset["file_dataset"]
    light_loader = loader["without faceface"]["items_per_s"]
    full_loader = loader["all groups"]["items_per_s"]
    speedup, size = cad["write_speedup_vs_spec" + suffix], cad["size_vs_spec" + suffix]
    _, speedup_target, speedup_shown = ITEM_TARGETS["write_speedup_vs_spec" + suffix]
    _, size_target, size_shown = ITEM_TARGETS["size_vs_spec" + suffix]
    speed_met, size_met = speedup >= speedup_target, size <= size_target
    synced = ""
    if batch is not None:
        # The same writes made durable per block, as ``cadstore encode`` makes them.
        batch_speedup = batch["write_speedup_vs_spec" + suffix]
        batch_name = f"{default_name.removesuffix(' (default)')} batch-synced"
        values = run_values(item, batch_name, "write_speedup_vs_spec" + suffix)
        if values:
            reached = sum(v >= speedup_target for v in values)
            verdict = f"met in {reached} of {len(values)} runs" if reached else "not met"
            spread = f" ({fmt_times(min(values))}-{fmt_times(max(values))})"
        else:
            verdict = "met" if batch_speedup >= speedup_target else "not met"
            spread = ""
        synced = (
            f"; synced per block as `cadstore encode` writes, {fmt_ms(batch['write_ms'])} ms: "
            f"**{fmt_times(batch_speedup)}**{spread}, target {verdict}"
        )
    rows = [
        (
            f"write one item ({item['items']} realistic items, ext4 disk)",
            f"{fmt_ms(cad['write_ms'])} ms, {fmt_kib(cad['file_kib'])} KiB",
            f"**{fmt_times(speedup)}** faster than the specified "
            f"design{' on zarr-python 2.18' if zarr2 else ''} ({fmt_ms(ref['write_ms'])} ms), "
            f"files {fmt_rel(size)} its size; targets {speedup_shown}: "
            f"{'met' if speed_met else 'not met'}, {size_shown}: "
            f"{'met' if size_met else 'not met'}{synced}",
        ),
        (
            "read a whole item; open it and read one array",
            f"{fmt_ms(cad['read_ms'])} ms; {fmt_ms(cad['read_one_ms'])} ms",
            f"specified design{' on zarr-python 2.18' if zarr2 else ''} "
            f"{fmt_ms(ref['read_ms'])} ms; {fmt_ms(ref['read_one_ms'])} ms",
        ),
        (
            f"merge {fmt_int(one_thread['items'])} items "
            f"({fmt_mb(one_thread['raw_bytes'])} raw), one thread",
            f"{fmt_int(one_thread['mb_per_s'])} MB/s, "
            f"peak RSS {fmt_int(one_thread['self_rss_mb'])} MB",
            f"zarr-python read + concatenate {fmt_int(zarr_row['mb_per_s'])} MB/s, "
            f"peak RSS {fmt_int(zarr_row['self_rss_mb'])} MB: cadstore "
            f"**{fmt_times(same['mb_per_s'] / zarr_row['mb_per_s'])}** faster on the same "
            f"{fmt_int(zarr_row['items'])} items",
        ),
        (
            f"one item's rows of a {fmt_int(dataset['items'])}-item dataset "
            f'(`file_dataset(code, "{fd["group"]}")`)',
            f"{fmt_ms(fd['ours']['median_ms'])} ms",
            f"specified approach (materialise, scan) "
            f"{fmt_ms(fd['spec_materialise_and_scan']['median_ms'])} ms: "
            f"**{fmt_times(fd['ratio_vs_materialise'])}**",
        ),
        (
            "random item of that dataset, all arrays, first read",
            f"{fmt_ms(first)} ms median ({fmt_ms(light)} ms without face pairs)",
            f"target ≤ 1 ms: {'met' if first <= 1.0 else 'not met'}",
        ),
        (
            "`DataLoader(num_workers=2)`, graph groups; every group",
            f"{fmt_int(light_loader)} items/s; {fmt_int(full_loader)} items/s",
            f"target ≥ 1,000 items/s: "
            f"{'met' if light_loader >= 1000 else 'not met'}; "
            f"{'met' if full_loader >= 1000 else 'not met'}",
        ),
    ]
    return markdown_table(("measure", "cadstore", "compared with"), rows), (
        f"{item['machine']}; each row's peers measured in the same run as cadstore."
    )


# --------------------------------------------------------------------------- bench_integrity
def render_integrity(results: Path) -> tuple[list[str], str]:
    """bench_integrity.py: merge and read times with and without chunk checksums."""
    d = load(results, "integrity.json")["checksums"]
    rows = []
    for label in ("with", "without"):
        r = d[label]
        rows.append(
            (
                f"{label} crc32c checksums",
                fmt_seconds(r["merge_seconds"]),
                fmt_int(r["merge_mb_per_s"]),
                fmt_ms(r["item_ms"]),
                fmt_ms(r["batch_item_ms"]),
                fmt_mb(r["stored_bytes"]),
            )
        )
    cost = d["overhead"]
    rows.append(
        (
            "cost of the checksums",
            f"{cost['merge']:+.1%}",
            "",
            f"{cost['item_read']:+.1%}",
            f"{cost['batch_read']:+.1%}",
            f"{cost['size']:+.2%}",
        )
    )
    header = (
        "dataset",
        "merge seconds",
        "merge MB/s",
        "random item, ms",
        "batch of 32, ms per item",
        "dataset size",
    )
    caption = (
        f"{fmt_int(d['items'])} realistic items merged and read with and without checksums; "
        f"medians of {fmt_int(d['rounds'])} rounds, each merge in a fresh process, and "
        f"{fmt_int(d['reads'])} random items and {fmt_int(4 * -(-d['reads'] // 100))} "
        "batches of 32 read from both datasets in turn, in blocks of 100 items and 4 batches, "
        "in one process."
    )
    return markdown_table(header, rows, "lrrrrr"), caption


def render_checksum_alternatives(results: Path) -> tuple[list[str], str]:
    """bench_integrity.py: zstd's frame checksum against crc32c, per inner chunk."""
    d = load(results, "integrity.json")["alternatives"]
    rows = []
    for name, r in d.items():
        base = r["decompress_us"]
        rows.append(
            (
                f"`{name}`",
                f"{fmt_int(r['raw_bytes'])} → {fmt_int(r['stored_bytes'])}",
                _fixed(base, 1),
                f"{_fixed(r['zstd_checksum_us'], 2)} ({fmt_pct(r['zstd_checksum_us'] / base)})",
                f"{_fixed(r['crc32c_us'], 2)} ({fmt_pct(r['crc32c_us'] / base)})",
            )
        )
    header = (
        "inner chunk of",
        "bytes, raw → stored",
        "decompress, µs",
        "+ zstd frame checksum, µs",
        "+ crc32c of stored bytes, µs",
    )
    caption = "zstd level 3; best of 5 runs of 3,000 decompressions each, one thread."
    return markdown_table(header, rows, "lrrrr"), caption


def render_amplification(results: Path) -> tuple[list[str], str]:
    """bench_integrity.py: dataset bytes against item bytes for many 1-byte arrays."""
    d = load(results, "integrity.json")["amplification"]
    rows = [
        (name, fmt_int(r["bytes_in"]), fmt_int(r["bytes_out"]), f"{_fixed(r['ratio'], 2)}x")
        for name, r in d.items()
    ]
    arrays = next(iter(d.values()))["arrays"]
    caption = (
        f"10 items of {fmt_int(arrays // 10)} one-byte arrays ({fmt_int(arrays)} arrays) merged "
        "into one dataset; bytes of the .dataset against the bytes of the .data files."
    )
    return markdown_table(("arrays", "items, bytes", "dataset, bytes", "out / in"), rows, "lrrr"), (
        caption
    )


# --------------------------------------------------------------------------- bench_item_open
def render_item_open(results: Path) -> tuple[list[str], str]:
    """bench_item_open.py: opening an item of many arrays for appending, by size."""
    d = load(results, "item-open.json")
    rows = [
        (
            fmt_int(r["arrays"]),
            _fixed(r["file_kib"], 0),
            fmt_ms(r["open_append_ms"]),
            _fixed(r["append_us_per_array"], 1),
            f"{_fixed(r['append_growth'], 2)}x" if "append_growth" in r else "",
            fmt_ms(r["open_read_ms"]),
        )
        for r in d["rows"]
    ]
    header = (
        "arrays",
        "item, KiB",
        'open mode="a" + close, ms',
        "µs per array",
        "growth from the row above",
        'open mode="r", ms',
    )
    caption = (
        f"Items of int32 arrays of 16 values; medians of {fmt_int(d['repeats'])} runs, one process."
    )
    return markdown_table(header, rows, "rrrrrr"), caption


# --------------------------------------------------------------------------- bench_training
#: The contenders of bench_training.py, by their JSON keys, as the page names them.
TRAINING_PEERS = {"lance": "Lance", "hf": "HF datasets", "npy": "raw .npy floor"}


def _loads(values: Sequence[float]) -> str:
    """Load averages (1, 5, 15 minutes) as the training captions print them."""
    return " ".join(f"{x:.1f}" for x in values)


def _training_cell(cell: Mapping[str, Any], key: str) -> str:
    return fmt_ms(cell[key]) if key.endswith("_ms") else fmt_int(cell[key])


def render_training(results: Path) -> tuple[list[str], str]:
    """bench_training.py: cadstore's training reads against Lance, HF datasets and .npy."""
    d = load(results, "training.json")
    s = d["summary"]
    measures = (
        ("random item, 1 thread, median ms", "item", "median_ms"),
        ("batch of 32 random items, ms per item", "batch", "median_ms"),
        ("`DataLoader(num_workers=2, batch 32)`, items/s", "dataloader", "items_per_s"),
        (
            "`DataLoader`, items/s after the first batch",
            "dataloader",
            "items_per_s_after_first_batch",
        ),
        (
            "`DataLoader`, CPU ms per item (training process and its workers)",
            "dataloader",
            "cpu_per_item_ms",
        ),
        (
            "`DataLoader` workers, user CPU ms per item (decoding, copying)",
            "dataloader",
            "workers_user_cpu_per_item_ms",
        ),
        (
            "`DataLoader` workers, system CPU ms per item (the kernel: pages, shared memory)",
            "dataloader",
            "workers_system_cpu_per_item_ms",
        ),
        (
            "`DataLoader`, first epoch of the process (no worker blocks kept yet; one epoch), "
            "items/s",
            "dataloader_first",
            "items_per_s",
        ),
        ("one process, 2 threads, second epoch, items/s", "inprocess", "items_per_s"),
        ("one process, 2 threads, first epoch, items/s", "inprocess", "first_epoch_items_per_s"),
        (
            "2 worker processes kept between epochs, second epoch, items/s (cadstore: "
            "`batches(processes=2)`; peers: `DataLoader(persistent_workers=True)`)",
            "workers",
            "items_per_s",
        ),
    )
    rows = []
    for variant, label in (("all", "every group"), ("graph", "graph only (no face pairs)")):
        for text, measure, key in measures:
            if measure not in s or key not in s[measure][variant]["cadstore"]:
                continue  # a run that predates the measure
            cells = s[measure][variant]
            ours = _training_cell(cells["cadstore"], key)
            if measure == "item":
                ours += f" ({_training_cell(cells['cadstore (cache off)'], key)} cache off)"
            peers = [_training_cell(cells[p], key) for p in TRAINING_PEERS]
            ratios = []
            for p in ("lance", "hf"):
                a, b = cells["cadstore"][key], cells[p][key]
                if not (a and b):  # a CPU time too small for the clock to see
                    ratios.append("-")
                    continue
                ratios.append(fmt_times(b / a if key.endswith("_ms") else a / b))
            rows.append((f"{label}: {text}", ours, *peers, *ratios))
    b = d["builds"]
    base = b["cadstore"]
    rows.append(
        (
            "size on disk",
            fmt_mb(base["bytes"]),
            *(fmt_mb(b[p]["bytes"]) for p in TRAINING_PEERS),
            *(fmt_times(b[p]["bytes"] / base["bytes"]) for p in ("lance", "hf")),
        )
    )
    rows.append(
        (
            "build time, s",
            fmt_seconds(base["build_s"]),
            *(fmt_seconds(b[p]["build_s"]) for p in TRAINING_PEERS),
            *(fmt_times(b[p]["build_s"] / base["build_s"]) for p in ("lance", "hf")),
        )
    )
    header = ("measure", "cadstore", *TRAINING_PEERS.values(), "cadstore vs Lance", "vs HF")
    v = d["versions"]
    before, after = _loads(d["load_average_before"]), _loads(d["load_average_after"])
    caption = (
        f"{d['items']:,} items ({d['train_items']:,} in the training epochs), medians of "
        f"{d['repeats']} repeats; {d['machine']}, load average {before} before and {after} "
        f"after the run; Python {v['python']}, torch {v.get('torch')}, pylance "
        f"{v.get('lance')} (file version {d['lance_version']}; DataLoader workers spawned), "
        f"datasets {v.get('datasets')}, pyarrow {v.get('pyarrow')}. Ratios above 1x: "
        "cadstore faster (or smaller)."
    )
    return markdown_table(header, rows, "lrrrrrr"), caption


def render_training_workers(results: Path) -> tuple[list[str], str]:
    """bench_training.py --measures workers: two persistent worker processes per contender."""
    d = load(results, "training-workers.json")
    s = d["summary"]["workers"]
    rows = []
    for variant, label in (("all", "every group"), ("graph", "graph only (no face pairs)")):
        cells = s[variant]
        for key, text in (
            ("items_per_s", "second epoch"),
            ("first_epoch_items_per_s", "first epoch (start-up included)"),
        ):
            base = cells["cadstore"][key]
            rows.append(
                (
                    f"{label}: {text}, items/s",
                    fmt_int(base),
                    *(fmt_int(cells[p][key]) for p in TRAINING_PEERS),
                    *(fmt_times(base / cells[p][key]) for p in ("lance", "hf")),
                )
            )
    header = ("measure", "cadstore", *TRAINING_PEERS.values(), "cadstore vs Lance", "vs HF")
    before = _loads(d["load_average_before"])
    caption = (
        f"Two worker processes kept between epochs: cadstore `batches(processes=2)`, the "
        f"peers `DataLoader(num_workers=2, persistent_workers=True)`; "
        f"{d['train_items']:,} items per epoch, batches of {d['batch_size']}, medians of "
        f"{d['repeats']} repeats, this measure alone; load average {before} before the run."
    )
    return markdown_table(header, rows, "lrrrrrr"), caption


# --------------------------------------------------------------------------- bench_triangle
def render_triangle(results: Path) -> tuple[list[str], str]:
    """bench_triangle.py: symmetric face-pair arrays as upper triangles against in full."""
    d = load(results, "triangle.json")
    full = d["layouts"]["full"]
    rows = []
    for name, label in (("full", "full N x N rows"), ("triangle", "upper triangles")):
        r = d["layouts"][name]
        rows.append(
            (
                label,
                fmt_mb(r["dataset_bytes"]),
                f"{fmt_mb(r['face_pair_bytes'])} "
                f"({fmt_rel(r['face_pair_bytes'] / full['face_pair_bytes'])})",
                fmt_seconds(r["merge_s"]),
                fmt_ms(r["random_item_ms"]),
                fmt_ms(r["batch32_ms_per_item"]),
            )
        )
    header = (
        "face-pair layout",
        "dataset",
        "face-pair arrays",
        "merge, s",
        "random item, ms",
        "batch of 32, ms per item",
    )
    caption = (
        f"{fmt_int(d['items'])} workload items, both layouts in one run, read alternately; "
        f"medians of {fmt_int(d['repeats'])} repeats (200 random items with a fresh reader; "
        "20 batches of 32 random items); load average "
        f"{_fixed(d['loadavg_before'][0], 2)} before, {_fixed(d['loadavg_after'][0], 2)} after "
        "on 2 shared cores."
    )
    return markdown_table(header, rows, "lrrrrr"), caption


# --------------------------------------------------------------------------- bench_chunking
def render_chunking(results: Path) -> tuple[list[str], str]:
    """bench_chunking.py: inner-chunk size and face-pair zstd level, side by side."""
    d = load(results, "chunking.json")
    layouts = d["layouts"]
    before = next(iter(layouts.values()))
    rows = []
    for name, r in layouts.items():
        runs = r["two_threads_runs"]
        rows.append(
            (
                name,
                fmt_mb(r["dataset_bytes"]),
                f"{fmt_mb(r['face_pair_bytes'])} "
                f"({fmt_rel(r['face_pair_bytes'] / before['face_pair_bytes'])})",
                fmt_seconds(r["merge_s"]),
                f"{fmt_ms(r['random_item_ms'])} / {fmt_ms(r['random_item_p95_ms'])}",
                fmt_ms(r["cpu_ms_per_item"]),
                f"{fmt_int(r['two_threads_items_per_s'])} "
                f"({fmt_int(min(runs))}-{fmt_int(max(runs))})",
            )
        )
    header = (
        "inner chunks, face-pair level",
        "dataset",
        "face-pair arrays",
        "merge, s",
        "random item, cache off, median / p95 ms",
        "CPU ms per item, 1 thread",
        "2 threads, 2nd epoch, items/s (range)",
    )
    caption = (
        f"{fmt_int(d['items'])} workload items (those of `bench_training.py`), every layout "
        f"merged from them and read in turn; {fmt_int(d['repeats'])} repeats of "
        f"{fmt_int(d['samples'])} random items (one reader, cache off), of the CPU time of "
        "one thread reading a second epoch, and of two epochs of "
        f"{fmt_int(d['epoch_items'])} items in batches of {d['batch_size']} by two threads "
        "(a reader each); every other array at zstd level 3; load average "
        f"{_fixed(d['loadavg_before'][0], 2)} before, {_fixed(d['loadavg_after'][0], 2)} after "
        "on 2 shared cores."
    )
    return markdown_table(header, rows, "lrrrrrr"), caption


# --------------------------------------------------------------------------- bench_pyg
def render_pyg(results: Path) -> tuple[list[str], str]:
    """bench_pyg.py: PyTorch Geometric batches against the plain batches, in-process."""
    d = load(results, "pyg.json")
    rows = [
        (
            label,
            fmt_int(r["plain_items_per_s"]),
            fmt_int(r["pyg_items_per_s"]),
            f"{_fixed(r['pyg_vs_plain'], 2)}x",
        )
        for label, r in d["results"].items()
    ]
    header = ("groups read", "plain batches, items/s", "PyG Batch, items/s", "PyG / plain")
    first = next(iter(d["results"].values()))
    load_avg = ", ".join(f"{x:.1f}" for x in d["load_average"])
    caption = (
        f"`CADDataset.batches()` over the {fmt_int(first['items'])} training items, "
        f"{d['threads']} decoding threads, batches of 32; medians of "
        f"{fmt_int(d['repeats'])} epochs per collate, the two alternating; load average "
        f"{load_avg} at the start."
    )
    return markdown_table(header, rows, "lrrr"), caption


# --------------------------------------------------------------------------- registry
class Table(NamedTuple):
    """A generated table: the results files it reads and how it renders them."""

    sources: tuple[str, ...]
    render: Callable[[Path], tuple[list[str], str]]


TABLES: dict[str, Table] = {
    "summary": Table(("item.json", "merge.json", "dataset.json"), render_summary),
    "item": Table(("item.json",), render_item),
    "item-targets": Table(("item.json",), render_item_targets),
    "item-tmpfs": Table(("item-tmpfs.json",), render_item_tmpfs),
    "item-real": Table(("item-real.json",), render_item_real),
    "item-real-targets": Table(("item-real.json",), render_item_real_targets),
    "int-filters": Table(("int_filters.json",), render_int_filters),
    "merge": Table(("merge.json",), render_merge),
    "encode": Table(("encode.json",), render_encode),
    "encode-steps": Table(("encode.json",), render_encode_steps),
    "dataset": Table(("dataset.json",), render_dataset),
    "dataset-reads": Table(("dataset.json",), render_dataset_reads),
    "dataloader": Table(("dataset.json",), render_dataloader),
    "scale": Table(("scale.json",), render_scale),
    "scale-s3-item": Table(("scale.json",), render_scale_item),
    "scale-s3-dataset": Table(("scale.json",), render_scale_dataset),
    "integrity": Table(("integrity.json",), render_integrity),
    "checksum-alternatives": Table(("integrity.json",), render_checksum_alternatives),
    "amplification": Table(("integrity.json",), render_amplification),
    "item-open": Table(("item-open.json",), render_item_open),
    "pyg": Table(("pyg.json",), render_pyg),
    "training": Table(("training.json",), render_training),
    "training-workers": Table(("training-workers.json",), render_training_workers),
    "triangle": Table(("triangle.json",), render_triangle),
    "chunking": Table(("chunking.json",), render_chunking),
}


def render_block(name: str, results: Path) -> str:
    """Return what goes between the markers of table ``name``: table, caption, source."""
    table = TABLES[name]
    try:
        lines, caption = table.render(results)
    except (KeyError, TypeError, StopIteration, ZeroDivisionError) as exc:
        raise ResultsError(
            f"table {name!r}: {', '.join(table.sources)} in {results} lack what it needs "
            f"({type(exc).__name__}: {exc})"
        ) from None
    sources = ", ".join(f"`bench/results/{s}`" for s in table.sources)
    note = f"<sub>{caption} Generated by `bench/tables.py` from {sources}.</sub>"
    return "\n" + "\n".join(lines) + "\n\n" + note + "\n\n"


# --------------------------------------------------------------------------- page update
def find_blocks(text: str) -> list[tuple[str, str]]:
    """Return ``(name, body)`` of every marked table in ``text``, checking the markers."""
    blocks = [(m["name"], m["body"]) for m in _BLOCK.finditer(text)]
    opened = len(_OPEN.findall(text))
    closed = len(_CLOSE_LINE.findall(text))
    if opened != len(blocks) or closed != len(blocks):
        raise MarkerError(
            f"{opened} '<!-- table: NAME -->' and {closed} '{_CLOSE}' marker lines make "
            f"{len(blocks)} well-formed tables (NAME of letters, digits, '-' and '_'; each "
            "table closed before the next opens)"
        )
    names = [name for name, _ in blocks]
    unknown = sorted(set(names) - set(TABLES))
    if unknown:
        raise MarkerError(f"unknown tables {unknown}; known: {sorted(TABLES)}")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise MarkerError(f"tables marked more than once: {duplicated}")
    for name, body in blocks:
        if _OPEN.search(body):
            raise MarkerError(f"table {name!r} is not closed before the next one opens")
    return blocks


class Update(NamedTuple):
    """The result of rendering a page: its new text, and which tables changed or lack markers."""

    text: str
    stale: list[str]
    missing: list[str]


def update(text: str, results: Path) -> Update:
    """Render every marked table of ``text`` from ``results``."""
    blocks = find_blocks(text)
    rendered = {name: render_block(name, results) for name, _ in blocks}
    stale = [name for name, body in blocks if body != rendered[name]]

    def replace(match: re.Match[str]) -> str:
        return f"<!-- table: {match['name']} -->\n{rendered[match['name']]}{_CLOSE}"

    new_text = _BLOCK.sub(replace, text)
    missing = [name for name in TABLES if name not in rendered]
    return Update(new_text, stale, missing)


def _diff(old: str, new: str, doc: Path, limit: int = 40) -> str:
    lines = list(
        difflib.unified_diff(
            old.splitlines(), new.splitlines(), f"{doc} (page)", f"{doc} (from JSON)", lineterm=""
        )
    )
    if len(lines) > limit:
        lines = [*lines[:limit], f"... ({len(lines) - limit} more diff lines)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; return the exit status."""
    parser = argparse.ArgumentParser(
        description="Render the tables of docs/benchmarks.md from bench/results/*.json."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 and name the tables that differ from the JSON",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        help="folder of the results JSON files (default: %(default)s)",
    )
    parser.add_argument(
        "--doc", type=Path, default=DEFAULT_DOC, help="page to update (default: %(default)s)"
    )
    parser.add_argument(
        "--partial",
        action="store_true",
        help="the page holds only some of the tables (e.g. README.md with the summary)",
    )
    args = parser.parse_args(argv)
    try:
        old = args.doc.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"tables.py: cannot read {args.doc}: {exc}", file=sys.stderr)
        return 2
    try:
        result = update(old, args.results)
    except (ResultsError, MarkerError) as exc:
        print(f"tables.py: {args.doc}: {exc}", file=sys.stderr)
        return 2
    status = 0
    if result.missing and not args.partial:
        print(
            f"tables.py: {args.doc} has no markers for: {', '.join(result.missing)} "
            "(add '<!-- table: NAME -->' ... '<!-- /table -->', or pass --partial)",
            file=sys.stderr,
        )
        status = 1
    if args.check:
        if result.stale:
            print(
                f"tables.py: stale tables in {args.doc}: {', '.join(result.stale)} "
                f"(run `python bench/tables.py` to regenerate them from {args.results})",
                file=sys.stderr,
            )
            print(_diff(old, result.text, args.doc), file=sys.stderr)
            status = 1
        return status
    if result.text != old:
        args.doc.write_text(result.text, encoding="utf-8")
        print(f"tables.py: rewrote {', '.join(result.stale)} in {args.doc}")
    else:
        print(f"tables.py: {args.doc} is up to date")
    return status


if __name__ == "__main__":
    sys.exit(main())
