"""``cadstore export-json PATH -o DIR``: copy an item into a JSON store.

Every top-level key of the item (an ``OptStorage`` item or another JSON store) is loaded
and saved into a :class:`~cadstore.storage.JsonStorageHandler` at ``DIR``, followed by the
metadata and the schema. The JSON store records its own ``file_sizes_KB`` (the sizes of
its JSON files), so the item's are not copied.

The store is assembled in a temporary directory next to ``DIR`` and moved into place when
complete, so a failed export leaves ``DIR`` as it was. A non-empty ``DIR`` is refused
unless ``--overwrite``, and even then only when everything in it is a JSON store's file:
the command never deletes anything else.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from cadstore.cli._common import (
    STORAGE_METADATA,
    CommandError,
    Target,
    add_json_option,
    format_bytes,
    format_table,
    leaf_dtype_shape,
    open_target,
    print_json,
    print_lines,
    progress,
)
from cadstore.fs import TEMP_PREFIX, is_url

__all__ = ["Export", "export_target", "register", "run"]


def register(sub: Any) -> None:
    """Add the ``export-json`` subcommand.

    Parameters
    ----------
    sub
        The subparsers object of the ``cadstore`` parser.
    """
    parser = sub.add_parser(
        "export-json",
        help="copy an item's data and metadata into a JSON store directory",
        description=(
            "Copy every key, the metadata and the schema of PATH (an item .data file or "
            "directory, or a JSON store) into a JSON store at DIR, one JSON file per key."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="the item or JSON store to export")
    parser.add_argument(
        "-o", "--output", metavar="DIR", required=True, help="the JSON store directory to write"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the JSON store already in DIR (only JSON store files are removed)",
    )
    add_json_option(parser)
    parser.set_defaults(func=run)


@dataclass
class Export:
    """What an export wrote.

    Attributes
    ----------
    output
        The JSON store directory.
    keys
        One entry per top-level key: ``key``, ``type``, ``dtype``, ``shape``, ``file``,
        ``bytes``.
    metadata_fields
        Top-level metadata fields copied.
    schema
        Whether a schema was copied.
    files
        Names of the files in the store.
    """

    output: str
    keys: list[dict[str, Any]] = field(default_factory=list)
    metadata_fields: list[str] = field(default_factory=list)
    schema: bool = False
    files: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Size of every file written."""
        return sum(
            os.path.getsize(os.path.join(self.output, name))
            for name in self.files
            if os.path.isfile(os.path.join(self.output, name))
        )


def _store_files(directory: str) -> list[str]:
    """Return the entries of ``directory`` if all belong to a JSON store, else refuse."""
    entries = sorted(os.listdir(directory))
    for name in entries:
        full = os.path.join(directory, name)
        # JSON files and the temporary files of interrupted writes are the store's own;
        # anything else is the user's, and is not ours to delete.
        owned = name.startswith(TEMP_PREFIX) or name.endswith(".json")
        if not owned or not os.path.isfile(full) or os.path.islink(full):
            raise CommandError(
                f"{directory} holds {name!r}, which is not a JSON store file; refusing to "
                "overwrite it (choose an empty or new directory)"
            )
    return entries


def _check_output(output: str, overwrite: bool, target: Target) -> list[str]:
    """Return the files to replace in ``output`` (none if it is new or empty)."""
    if os.path.lexists(output) and not os.path.isdir(output):
        raise CommandError(f"-o {output}: exists and is not a directory")
    if os.path.isdir(output):
        if os.path.realpath(output) == os.path.realpath(target.location):
            raise CommandError(f"-o {output} is {target.path} itself; choose another directory")
        if os.listdir(output):
            if not overwrite:
                raise CommandError(
                    f"-o {output} is not empty; pass --overwrite to replace the JSON store "
                    "there, or choose an empty or new directory"
                )
            return _store_files(output)
    return []


def _describe(value: Any) -> tuple[str, str | None, list[int] | None]:
    if isinstance(value, dict):
        return "group", None, None
    dtype, shape = leaf_dtype_shape(value)
    return "array", dtype, list(shape)


def _copy(target: Target, scratch: str) -> Export:
    from cadstore.storage import JsonStorageHandler

    source = target.require_storage("export-json")
    result = Export(scratch)
    destination = JsonStorageHandler(scratch)
    try:
        schema = source.get_schema()
        if schema:
            destination.set_schema(schema)
            result.schema = True
        keys = source.get_keys()
        for key in progress(keys, total=len(keys), desc="exporting"):
            value = source.load_data(key)
            destination.save_data(key, value)
            kind, dtype, shape = _describe(value)
            file = destination.get_file_path(key)
            result.keys.append(
                {
                    "key": key,
                    "type": kind,
                    "dtype": dtype,
                    "shape": shape,
                    "file": os.path.basename(file),
                    "bytes": os.path.getsize(file) if os.path.isfile(file) else None,
                }
            )
        metadata = source.load_metadata()
        for name, value in metadata.items():
            if name in STORAGE_METADATA:
                # The destination writes these itself (sizes, routing) or took them
                # through set_schema; save_metadata refuses or would make them stale.
                continue
            destination.save_metadata(name, value)
            result.metadata_fields.append(name)
    finally:
        destination.close()
    return result


def _publish(scratch: str, output: str, replaced: list[str]) -> None:
    """Move the finished store from ``scratch`` to ``output``."""
    if not os.path.exists(output):
        os.rename(scratch, output)
        return
    for name in replaced:
        os.remove(os.path.join(output, name))
    for name in os.listdir(scratch):
        os.replace(os.path.join(scratch, name), os.path.join(output, name))
    os.rmdir(scratch)


def export_target(target: Target, output: str, *, overwrite: bool = False) -> Export:
    """Copy an item or JSON store into a JSON store at ``output``.

    Parameters
    ----------
    target
        From :func:`~cadstore.cli._common.open_target`; not a dataset.
    output
        The JSON store directory.
    overwrite
        Replace the JSON store already in ``output``.

    Returns
    -------
    Export
        What was written.

    Raises
    ------
    CommandError
        If ``target`` is a dataset, or ``output`` is a file, is ``target`` itself, or is
        non-empty without ``overwrite`` or holds files that are not a JSON store's.
    """
    target.require_storage("export-json")
    output = output.rstrip("/") or output
    if is_url(output):
        # The store is built beside the destination and moved into place in one rename;
        # object stores have no rename, so the output stays local (the input may be a URL).
        raise CommandError(
            f"-o {output}: export-json writes a local directory; export there and upload it"
        )
    replaced = _check_output(output, overwrite, target)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    # Built beside the destination, so the final move stays on one file system.
    scratch = tempfile.mkdtemp(prefix=TEMP_PREFIX + "export-", dir=parent)
    try:
        result = _copy(target, scratch)
        _publish(scratch, output, replaced)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    result.output = output
    result.files = sorted(os.listdir(output))
    return result


def run(args: argparse.Namespace) -> int:
    """Run ``export-json``.

    Parameters
    ----------
    args
        The parsed arguments.

    Returns
    -------
    int
        0.
    """
    with open_target(args.path, args.storage_options) as target:
        result = export_target(target, args.output, overwrite=args.overwrite)
        label = target.label
    if args.json:
        print_json(
            {
                "path": args.path,
                "output": result.output,
                "keys": result.keys,
                "metadata_fields": result.metadata_fields,
                "schema": result.schema,
                "files": result.files,
                "bytes": result.total_bytes,
            }
        )
        return 0
    rows = []
    for entry in result.keys:
        what = "group" if entry["type"] == "group" else f"{entry['dtype']} {tuple(entry['shape'])}"
        rows.append([entry["key"], what, entry["file"], format_bytes(entry["bytes"])])
    lines = [f"exported {label} {args.path} to JSON store {result.output}", ""]
    lines.extend(format_table(["KEY", "VALUE", "FILE", "SIZE"], rows, right={3}))
    lines.append("")
    fields = len(result.metadata_fields)
    lines.append(
        f"metadata: {fields} field{'s' if fields != 1 else ''} "
        + ("and the schema " if result.schema else "")
        + "in metadata.json"
    )
    lines.append(
        f"{len(result.keys)} keys, {len(result.files)} files, "
        f"{format_bytes(result.total_bytes)} written"
    )
    print_lines(lines)
    return 0
