"""``cadstore cat PATH KEY``: print one stored value.

Arrays print with numpy's formatting, summarised above a thousand elements unless
``--full``; strings print raw; groups print as an indented tree. In a dataset ``KEY`` is
``group/array`` (or a group, or ``item_names``), and ``--item ITEM`` keeps only the rows
of one item (an item's name is matched first, then plain digits as a code), found through
the group's ``item_offsets``: only the shards holding those rows are read.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from cadstore.artefacts import DATASET, Artefact, open_artefact
from cadstore.cli._common import (
    CommandError,
    add_json_option,
    format_tree,
    format_value,
    print_json,
    print_lines,
)
from cadstore.dataset.reader import DatasetReader
from cadstore.errors import KeyNotFoundError
from cadstore.format.layout import BOUNDARY_DIM, ITEM_DIM
from cadstore.storage.keys import validate_key
from cadstore.tree import leaf_dtype_shape

__all__ = ["read_value", "register", "run"]


def register(sub: Any) -> None:
    """Add the ``cat`` subcommand.

    Parameters
    ----------
    sub
        The subparsers object of the ``cadstore`` parser.
    """
    parser = sub.add_parser(
        "cat",
        help="print one stored value (an array, a string, a group)",
        description=(
            "Print the value stored under KEY in PATH (an item, a dataset or a JSON store). "
            "Big arrays are summarised unless --full; strings print raw; groups print as a "
            "tree. In a dataset KEY is GROUP/ARRAY, and --item selects one item's rows."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="the item, dataset or JSON store")
    parser.add_argument(
        "key", metavar="KEY", help="the data key (in a dataset: GROUP/ARRAY, a group or item_names)"
    )
    add_json_option(parser)
    parser.add_argument(
        "--full", action="store_true", help="print every element, however big the array"
    )
    parser.add_argument(
        "--item",
        metavar="ITEM",
        help=(
            "datasets only: print the rows of this item, given by its name or its code "
            "(plain digits 0-9); a name is matched first, so an item named like a code "
            "is selected by that name"
        ),
    )
    parser.set_defaults(func=run)


def _choices(names: list[str]) -> str:
    return ", ".join(names) if names else "(none: it is empty)"


def _missing_in_storage(target: Artefact, key: str) -> CommandError:
    storage = target.require_storage("cat")
    parts = key.split("/")
    # Name the choices where the lookup went wrong: the deepest group that exists.
    for i in range(len(parts) - 1, 0, -1):
        prefix = "/".join(parts[:i])
        if prefix in storage:
            node = storage.load_data(prefix)
            if not isinstance(node, dict):
                return CommandError(f"{prefix!r} in {target.path} is an array, not a group")
            keys = [f"{prefix}/{name}" for name in node]
            return CommandError(
                f"no key {key!r} in {target.label} {target.path}; "
                f"group {prefix!r} holds {_choices(keys)}"
            )
    metadata = storage.load_metadata()
    if isinstance(metadata, dict) and key in metadata:
        return CommandError(
            f"{key!r} in {target.label} {target.path} is metadata, not a data key: "
            f"'cadstore inspect {target.path}' lists the metadata with its values"
        )
    return CommandError(
        f"no key {key!r} in {target.label} {target.path}; "
        f"valid top-level keys: {_choices(storage.get_keys())}"
    )


def _missing_in_dataset(target: Artefact, key: str, virtual: set[str]) -> CommandError:
    """The error for ``key``, absent from the dataset; ``virtual`` holds the keys the
    dataset presents without storing them (face-pair arrays stored as triangles)."""
    hierarchy = target.hierarchy
    assert hierarchy is not None
    parts = key.split("/")
    for i in range(len(parts) - 1, 0, -1):
        prefix = "/".join(parts[:i])
        if prefix in hierarchy.arrays:
            return CommandError(f"{prefix!r} in {target.path} is an array, not a group")
        if prefix in hierarchy.groups:
            keys = [f"{prefix}/{name}" for name in hierarchy.children(prefix)]
            keys += sorted(k for k in virtual if k.rpartition("/")[0] == prefix)
            return CommandError(
                f"no array {key!r} in dataset {target.path}; group {prefix!r} holds "
                f"{_choices(keys)}"
            )
    # An array named without its group, as an item names it: say where it is.
    holders = [
        f"{group}/{key}"
        for group in hierarchy.children("")
        if group in hierarchy.groups
        and (f"{group}/{key}" in virtual or f"{group}/{key}" in hierarchy.arrays)
    ]
    meant = f" (did you mean {' or '.join(holders)}?)" if holders else ""
    return CommandError(
        f"no key {key!r} in dataset {target.path}{meant}; valid top-level keys: "
        f"{_choices(hierarchy.children(''))} (arrays are GROUP/ARRAY)"
    )


def _item_code(reader: Any, text: str, path: str) -> int:
    """The code of the item ``--item text`` selects.

    ``text`` is an item's name if one is called that, else a code if it is plain decimal
    digits (``0``-``9`` only): every item is then selectable by its name, and a name such
    as ``1_0``, `` 1`` or ``+1`` (which ``int()`` reads as a number) is never taken for
    another item's code.
    """
    count = reader.n_items
    try:
        return int(reader.code_of(text))
    except KeyNotFoundError:
        if not text.isascii() or not text.isdigit():
            raise CommandError(
                f"no item named {text!r} in {path}; pass a code 0..{count - 1} or an item name"
            ) from None
    code = int(text)
    if not 0 <= code < count:
        raise CommandError(
            f"item code {code} is out of range: {path} has {count} items (codes 0..{count - 1})"
        )
    return code


def _item_rows(target: Artefact, reader: Any, path: str, code: int) -> Any:
    """Return the part of dataset array ``path`` that belongs to item ``code``."""
    hierarchy = target.hierarchy
    assert hierarchy is not None
    if path not in hierarchy.arrays:
        # A face-pair array stored as a triangle: its full rows, rebuilt by the reader.
        group, array = path.split("/", 1)
        start, stop = reader.item_range(group, code)
        return reader.read_rows(group, array, start, stop)
    meta = hierarchy.meta(path)
    first = meta.dims[0] if meta.dims else None
    if "/" not in path:
        # Root arrays (item_names) are per item and belong to no group.
        whole = hierarchy.read_leaf(path)
        if first == ITEM_DIM:
            # A leaf with a named first axis is an array or a list; scalars have no axes.
            assert isinstance(whole, np.ndarray | list)
            return whole[code]
        return whole
    group, array = path.split("/", 1)
    if first == BOUNDARY_DIM:
        # An offsets array: the item's own boundaries, start and stop.
        return reader.read_rows(group, array, code, code + 2)
    if reader.is_per_item(group, array):
        return reader.read_rows(group, array, code, code + 1)[0]
    start, stop = reader.item_range(group, code)
    return reader.read_rows(group, array, start, stop)


def _dataset_value(target: Artefact, key: str, item: str | None) -> tuple[Any, int | None]:
    hierarchy = target.hierarchy
    assert hierarchy is not None
    kind = hierarchy.kind(key)
    with DatasetReader(target.location) as reader:
        # Face-pair arrays stored as upper triangles read as the full arrays they stand
        # for, in their source group (their triangle group reads as stored).
        virtual = {
            f"{group}/{name}"
            for group in reader.groups
            for name in reader.arrays(group)
            if reader.stored_as(group, name) != (group, name)
        }
        if kind is None and key in virtual:
            kind = "leaf"
        if kind is None:
            raise _missing_in_dataset(target, key, virtual)
        names = [
            name
            for name in (reader.arrays(key) if key in reader.groups else hierarchy.children(key))
            if f"{key}/{name}" in hierarchy.arrays or f"{key}/{name}" in virtual
        ]
        if item is None:
            if key in virtual:
                group, array = key.split("/", 1)
                return reader.read_array(group, array), None
            node = hierarchy.read_node(key)
            if isinstance(node, dict) and key in reader.groups:
                for name in names:
                    if f"{key}/{name}" in virtual:
                        node[name] = reader.read_array(key, name)
                node = {name: node[name] for name in names if name in node}
            return node, None
        code = _item_code(reader, item, target.path)
        if kind == "leaf":
            return _item_rows(target, reader, key, code), code
        return {name: _item_rows(target, reader, f"{key}/{name}", code) for name in names}, code


def read_value(target: Artefact, key: str, item: str | None = None) -> tuple[Any, int | None]:
    """Return the value stored under ``key`` and the item code it was restricted to.

    Parameters
    ----------
    target
        An opened target.
    key
        The data key (``group/array`` in a dataset).
    item
        For a dataset, an item code or name whose rows alone are returned.

    Returns
    -------
    tuple
        ``(value, code)``; ``code`` is ``None`` without ``item``.

    Raises
    ------
    CommandError
        If the key does not exist (the message lists the valid keys), or ``item`` is
        given for something other than a dataset, or names no item.
    InvalidKeyError
        If ``key`` breaks the key grammar (empty, ``..``, ...).
    """
    if target.kind == DATASET:
        # The key grammar storages enforce; an empty key would otherwise name the root
        # and read the whole dataset.
        validate_key(key)
        return _dataset_value(target, key, item)
    if item is not None:
        raise CommandError(
            f"--item selects an item of a dataset; {target.path} is {target.a_label}"
        )
    storage = target.require_storage("cat")
    try:
        return storage.load_data(key), None
    except KeyNotFoundError:
        raise _missing_in_storage(target, key) from None


def run(args: argparse.Namespace) -> int:
    """Run ``cat``.

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
        value, code = read_value(target, args.key, args.item)
    if args.json:
        doc: dict[str, Any] = {"path": args.path, "key": args.key}
        if code is not None:
            doc["item"] = code
        if isinstance(value, dict):
            doc["type"] = "group"
        else:
            dtype, shape = leaf_dtype_shape(value)
            doc.update(type="array", dtype=dtype, shape=list(shape))
        doc["value"] = value
        # One line: indenting would put every element of an array on a line of its own.
        print_json(doc, indent=None)
    elif isinstance(value, dict):
        print_lines([f"{args.key}/", *format_tree(value, full=args.full, indent=1)])
    else:
        print_lines(format_value(value, full=args.full))
    return 0
