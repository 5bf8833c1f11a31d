"""A self-contained HTML report of a merged dataset.

One file, no external assets: plots are PNG images embedded as data URIs, styles are
inline. It shows what a person wants to see first: how many items, how big they are
(faces, edges, face pairs per item), how the labels and metadata are distributed, which
face types occur, and where the bytes go. Needs matplotlib (the ``report`` extra).
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from cadstore.dataset.access import dataset_filesystem, options_for, read_parquet_frame
from cadstore.dataset.layout import OFFSETS, file_id_code_name
from cadstore.dataset.reader import DatasetReader
from cadstore.fs import LocalFileSystem
from cadstore.testing.workload import FACE_TYPE_CODES

__all__ = ["write_report"]

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:72rem;color:#1d2733;line-height:1.45;padding:0 1rem}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2.2rem;
border-bottom:1px solid #dde3ea;padding-bottom:.3rem}
.sub{color:#5b6b7c;margin-top:0}.cards{display:flex;flex-wrap:wrap;gap:1rem;margin:1rem 0}
.card{background:#f3f6f9;border-radius:8px;padding:.8rem 1.1rem;min-width:9rem}
.card b{display:block;font-size:1.4rem}.card span{color:#5b6b7c;font-size:.85rem}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(30rem,1fr));gap:1.2rem}
figure{margin:0;background:#fff;border:1px solid #e4e9ef;border-radius:8px;padding:.6rem}
figure img{width:100%}figcaption{color:#5b6b7c;font-size:.85rem;padding:.2rem .4rem}
table{border-collapse:collapse;font-size:.88rem;width:100%}
th,td{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #e4e9ef}
th{background:#f3f6f9}td.n{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5rem .8rem}
"""


def _figure_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _hist(values: np.ndarray, title: str, xlabel: str, *, log: bool = False) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 3.4))
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size:
        bins = min(50, max(5, int(np.sqrt(values.size))))
        if log and values.min() > 0:
            bins = np.logspace(np.log10(values.min()), np.log10(values.max() + 1), bins)
            ax.set_xscale("log")
        ax.hist(values, bins=bins, color="#3d7bbf", edgecolor="white", linewidth=0.4)
        ax.axvline(
            float(np.median(values)),
            color="#d1495b",
            linestyle="--",
            linewidth=1.2,
            label=f"median {np.median(values):.3g}",
        )
        ax.legend(frameon=False)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("items")
    ax.spines[["top", "right"]].set_visible(False)
    return _figure_png(fig)


def _bars(labels: Sequence[str], counts: Sequence[float], title: str, ylabel: str) -> str:
    import matplotlib.pyplot as plt

    order = np.argsort(counts)[::-1][:30]
    fig, ax = plt.subplots(figsize=(6.2, 3.4))
    ax.bar([str(labels[i]) for i in order], [counts[i] for i in order], color="#4c9f70")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _figure_png(fig)


def _figure(src: str, caption: str) -> str:
    return (
        f'<figure><img alt="{html.escape(caption)}" src="{src}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for value in row:
            numeric = isinstance(value, int | float | np.number)
            text = (
                f"{value:,}"
                if isinstance(value, int | np.integer)
                else (f"{value:,.3g}" if numeric else html.escape(str(value)))
            )
            cells.append(f'<td class="n">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _labels_of(attribs: Any, table: str) -> dict[int, str]:
    if attribs is None or "table_name" not in attribs:
        return {}
    rows = attribs[attribs["table_name"] == table]
    return {int(i): str(n) for i, n in zip(rows["id"], rows["name"], strict=True)}


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
    """
    import matplotlib

    matplotlib.use("Agg", force=True)

    stem = dataset[: -len(".dataset")] if dataset.endswith(".dataset") else dataset
    infoset = infoset or stem + ".infoset"
    attribset = attribset or stem + ".attribset"
    tables = []
    for table in (infoset, attribset):
        fs, located = dataset_filesystem(table, storage_options)
        tables.append(read_parquet_frame(table, storage_options) if fs.isfile(located) else None)
    info, attribs = tables
    name = title or dataset_filesystem(dataset, storage_options)[0].basename(stem)
    started = time.perf_counter()
    sections: list[str] = []
    with DatasetReader(dataset, storage_options=options_for(dataset, storage_options)) as reader:
        n = reader.n_items
        per_item_rows = {g: np.diff(reader.offsets(g)) for g in reader.groups}
        size = reader.stored_bytes
        cards = [
            ("items", f"{n:,}"),
            ("groups", str(len(reader.groups))),
            ("file size", f"{size / 1e6:,.1f} MB"),
        ]
        for group in ("faces", "edges", "faceface"):
            if group in per_item_rows:
                cards.append(
                    (f"{reader.primary_dimension(group)}s", f"{int(per_item_rows[group].sum()):,}")
                )
        sections.append(
            '<div class="cards">'
            + "".join(
                f"<div class='card'><b>{v}</b><span>{html.escape(k)}</span></div>" for k, v in cards
            )
            + "</div>"
        )

        figures = []
        for group, caption in (
            ("faces", "Faces per item"),
            ("edges", "Co-edges per item"),
            ("faceface", "Face pairs per item"),
        ):
            if group in per_item_rows and n:
                figures.append(
                    _figure(
                        _hist(
                            per_item_rows[group],
                            caption,
                            f"{reader.primary_dimension(group)}s per item",
                            log=group == "faceface",
                        ),
                        f"{caption}: median {np.median(per_item_rows[group]):.0f}, "
                        f"max {per_item_rows[group].max()}",
                    )
                )
        if "faces" in reader.groups and "face_types" in reader.arrays("faces"):
            types = reader.read_array("faces", "face_types")
            codes, counts = np.unique(types, return_counts=True)
            # The specified codes name the types when the items carry no table of their own.
            names = _labels_of(attribs, "face_types") or dict(FACE_TYPE_CODES)
            figures.append(
                _figure(
                    _bars(
                        [names.get(int(c), str(c)) for c in codes],
                        counts.tolist(),
                        "Face types",
                        "faces",
                    ),
                    "Face types over all items",
                )
            )
        if figures:
            sections.append(
                "<h2>Item sizes and geometry</h2><div class='grid'>" + "".join(figures) + "</div>"
            )

        if info is not None:
            label_figs = []
            fixed = {"name", "id", "description", "subset", "table_name"}
            for column in info.columns:
                if column in fixed:
                    continue
                values = info[column].dropna()
                if values.empty:
                    continue
                distinct = values.nunique()
                if values.dtype == object or values.dtype == bool or distinct <= 20:
                    counts_s = values.astype(str).value_counts()
                    label_figs.append(
                        _figure(
                            _bars(list(counts_s.index), counts_s.tolist(), column, "items"),
                            f"{column}: {distinct} distinct values",
                        )
                    )
                else:
                    label_figs.append(
                        _figure(
                            _hist(values.to_numpy(float), column, column),
                            f"{column}: from {values.min():.3g} to {values.max():.3g}",
                        )
                    )
            if "subset" in info and (info["subset"] != "N/A").any():
                counts_s = info["subset"].value_counts()
                label_figs.append(
                    _figure(
                        _bars(list(counts_s.index), counts_s.tolist(), "Split", "items"),
                        "Items per subset",
                    )
                )
            if label_figs:
                sections.append(
                    "<h2>Labels and metadata</h2><div class='grid'>"
                    + "".join(label_figs)
                    + "</div>"
                )

        rows = []
        for group in reader.groups:
            for array in reader.arrays(group):
                if array in (OFFSETS, file_id_code_name(group)):
                    continue
                meta = reader.array_meta(group, array)
                raw = int(np.prod(meta.shape, dtype=np.int64)) * meta.itemsize
                stored = reader._hier.stored_nbytes(f"{group}/{array}")
                rows.append(
                    (
                        f"{group}/{array}",
                        str(meta.shape),
                        str(meta.dtype),
                        ", ".join(meta.dims or ()),
                        raw / 1e6,
                        stored / 1e6,
                        raw / stored if stored else 0.0,
                    )
                )
        rows.sort(key=lambda r: -r[5])
        sections.append(
            "<h2>Where the bytes go</h2>"
            + _table(["array", "shape", "dtype", "dims", "raw MB", "stored MB", "ratio"], rows)
        )
        if rows:
            sections.append(
                "<div class='grid'>"
                + _figure(
                    _bars(
                        [r[0] for r in rows[:12]],
                        [r[5] for r in rows[:12]],
                        "Stored size by array",
                        "MB",
                    ),
                    "The largest arrays on disk",
                )
                + "</div>"
            )
    if info is not None:
        sections.append(
            "<h2>First items</h2>"
            + _table(list(info.columns[:8]), info.head(15).iloc[:, :8].astype(str).values.tolist())
        )
    body = "\n".join(sections)
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(name)} - cadstore report</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(name)}</h1><p class='sub'>{html.escape(dataset)} · "
        f"generated by cadstore in {time.perf_counter() - started:.1f} s</p>{body}</body></html>"
    )
    out_fs, out_path = dataset_filesystem(output, storage_options)
    if isinstance(out_fs, LocalFileSystem):
        out_fs = LocalFileSystem(durable=False)
    out_fs.write_bytes_atomic(out_path, page.encode("utf-8"))
    return output
