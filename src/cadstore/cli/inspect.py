"""``cadstore inspect PATH``: the groups, arrays and metadata of an item, dataset or JSON store.

Each array is listed with its shape, dtype, dimension names, the bytes its chunks occupy
on disk, its uncompressed size and the ratio of the two; each group with the total of the
arrays below it. The metadata follows: the item's metadata document, or a dataset's
``metadata.json`` (item count, groups, merge record). A stored schema is shown as a
one-line summary rather than in full.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from cadstore.artefacts import DATASET, Artefact, open_artefact
from cadstore.cli._common import (
    SCHEMA_KEY,
    add_json_option,
    format_bytes,
    format_ratio,
    format_table,
    format_tree,
    print_json,
    print_lines,
)
from cadstore.format.hierarchy import default_dims
from cadstore.tree import NodeInfo, hierarchy_nodes, sized_totals, storage_nodes

__all__ = ["Inspection", "inspect_target", "register", "run"]


def register(sub: Any) -> None:
    """Add the ``inspect`` subcommand.

    Parameters
    ----------
    sub
        The subparsers object of the ``cadstore`` parser.
    """
    parser = sub.add_parser(
        "inspect",
        help="show the groups, arrays and metadata of an item, dataset or JSON store",
        description=(
            "Show the tree of groups and arrays of PATH (an item .data file or directory, "
            "a merged .dataset, a .flow manifest or a JSON store directory) with shape, "
            "dtype, dimension names, stored size and compression ratio, then its metadata."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="the item, dataset or JSON store")
    add_json_option(parser)
    parser.add_argument(
        "--metadata",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show the metadata after the tree (default: yes)",
    )
    parser.set_defaults(func=run)


@dataclass
class Inspection:
    """What ``inspect`` found out about a target.

    Attributes
    ----------
    target
        The opened target (closed by the time the result is printed).
    nodes
        Groups and arrays, depth first.
    file_bytes
        Size of the file or directory on disk.
    zarr_format
        2 or 3, ``None`` for a JSON store.
    item_count
        Number of items of a dataset, ``None`` otherwise.
    schema
        ``{"domain", "version", "groups"}`` of the stored schema, or ``None``.
    metadata
        The metadata document without the schema, or ``None`` when not asked for.
    """

    target: Artefact
    nodes: list[NodeInfo]
    file_bytes: int
    zarr_format: int | None
    item_count: int | None
    schema: dict[str, Any] | None
    metadata: dict[str, Any] | None

    @property
    def totals(self) -> dict[str, Any]:
        """Counts and sizes over the whole store."""
        arrays = [n for n in self.nodes if n.type == "array"]
        # Top-level nodes cover every stored byte once (a group's size includes its
        # children's); arrays sharing one file in a JSON store are sized only there.
        stored = [n.stored_bytes for n in self.nodes if n.depth == 0]
        stored_total = None if None in stored else sum(s or 0 for s in stored)
        raw_total, sized_stored = sized_totals(arrays)
        ratio = raw_total / sized_stored if raw_total and sized_stored else None
        return {
            "groups": sum(1 for n in self.nodes if n.type == "group"),
            "arrays": len(arrays),
            "stored_bytes": stored_total,
            "raw_bytes": raw_total,
            "ratio": None if ratio is None else round(ratio, 4),
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the ``--json`` document."""
        doc: dict[str, Any] = {
            "path": self.target.path,
            "location": self.target.location.path,
            "kind": self.target.kind,
            "zarr_format": self.zarr_format,
            "file_bytes": self.file_bytes,
        }
        if self.item_count is not None:
            doc["item_count"] = self.item_count
        doc["totals"] = self.totals
        doc["schema"] = self.schema
        doc["groups"] = [n.to_dict() for n in self.nodes if n.type == "group"]
        doc["arrays"] = [n.to_dict() for n in self.nodes if n.type == "array"]
        if self.metadata is not None:
            doc["metadata"] = self.metadata
        return doc

    def render(self) -> list[str]:
        """Return the human-readable report, line by line."""
        target = self.target
        where = (
            target.path
            if target.location.path == target.path
            else (f"{target.path} (reads {target.location})")
        )
        fmt = "JSON files" if self.zarr_format is None else f"zarr v{self.zarr_format}"
        totals = self.totals
        lines = [f"{target.label} {where}", f"  {fmt}, {format_bytes(self.file_bytes)} on disk"]
        if self.item_count is not None:
            lines.append(f"  {self.item_count} items")
        summary = f"  {_plural(totals['arrays'], 'array')} in {_plural(totals['groups'], 'group')}"
        if totals["raw_bytes"] is not None or totals["stored_bytes"] is not None:
            summary += (
                f": {format_bytes(totals['raw_bytes'])} raw, "
                f"{format_bytes(totals['stored_bytes'])} stored "
                f"({format_ratio(totals['ratio'])})"
            )
        lines.append(summary)
        if self.schema is not None:
            groups = ", ".join(self.schema["groups"]) or "no groups"
            lines.append(f"  schema: {self.schema['domain']} {self.schema['version']} ({groups})")
        else:
            lines.append("  schema: none")
        lines.append("")
        if self.nodes:
            lines.extend(self._table())
        else:
            lines.append("(no arrays)")
        if self.metadata is not None:
            lines.append("")
            if self.metadata:
                lines.append("metadata")
                lines.extend(format_tree(self.metadata, indent=1))
            else:
                lines.append("metadata: (empty)")
        return lines

    def _table(self) -> list[str]:
        rows = []
        for node in self.nodes:
            name = "  " * node.depth + node.name
            if node.type == "group":
                rows.append(
                    [
                        name + "/",
                        "",
                        "",
                        _group_note(node),
                        format_bytes(node.stored_bytes),
                        format_bytes(node.raw_bytes),
                        format_ratio(node.ratio),
                    ]
                )
            else:
                rows.append(
                    [
                        name,
                        _shape(node.shape),
                        node.dtype or "-",
                        _dims(node),
                        format_bytes(node.stored_bytes),
                        format_bytes(node.raw_bytes),
                        format_ratio(node.ratio),
                    ]
                )
        headers = ["NAME", "SHAPE", "DTYPE", "DIMS", "STORED", "RAW", "RATIO"]
        return format_table(headers, rows, right={4, 5, 6})


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else str(tuple(shape))


def _dims(node: NodeInfo) -> str:
    if not node.dims:
        return "-"
    # "<key>_dim_<i>" names only repeat the key and widen the table past a terminal.
    if list(node.dims) == default_dims(node.path, len(node.dims)):
        return "(default)"
    return ", ".join(node.dims)


def _group_note(node: NodeInfo) -> str:
    # In a dataset the group's primary dimension is what its arrays' rows run along.
    primary = node.attributes.get("primary_dimension")
    if primary is None:
        return ""
    special = node.attributes.get("special_processing")
    return f"primary: {primary}" + (f" ({special})" if special else "")


def _directory_bytes(target: Artefact) -> int:
    where = target.location
    return sum(where.fs.file_sizes(where.path).values())


def inspect_target(target: Artefact, *, metadata: bool = True) -> Inspection:
    """Collect the tree, sizes and metadata of an opened target.

    Parameters
    ----------
    target
        From :func:`~cadstore.cli._common.open_target`.
    metadata
        Also load the metadata document.

    Returns
    -------
    Inspection
        Everything ``inspect`` prints.
    """
    if target.hierarchy is not None and target.source is not None:
        nodes = hierarchy_nodes(target.hierarchy)
        file_bytes = target.source.total_bytes()
        zarr_format: int | None = target.hierarchy.zarr_format
    else:
        storage = target.require_storage("inspect")
        nodes = storage_nodes(storage)
        file_bytes = _directory_bytes(target)
        zarr_format = None
    item_count = None
    if target.kind == DATASET:
        count = target.dataset_metadata().get("item_count")
        if isinstance(count, int):
            item_count = count
        elif target.hierarchy is not None and "item_names" in target.hierarchy.arrays:
            item_count = target.hierarchy.meta("item_names").shape[0]
    schema = target.schema()
    schema_summary = (
        None
        if schema is None
        else {"domain": schema.domain, "version": schema.version, "groups": list(schema.groups)}
    )
    doc = None
    if metadata:
        doc = {k: v for k, v in target.metadata().items() if k != SCHEMA_KEY}
    return Inspection(target, nodes, file_bytes, zarr_format, item_count, schema_summary, doc)


def run(args: argparse.Namespace) -> int:
    """Run ``inspect``.

    Parameters
    ----------
    args
        The parsed arguments.

    Returns
    -------
    int
        0.
    """
    with open_artefact(
        args.path, args.storage_options, trust_manifest=args.trust_manifest
    ) as target:
        result = inspect_target(target, metadata=args.metadata)
    if args.json:
        print_json(result.to_dict())
    else:
        print_lines(result.render())
    return 0
