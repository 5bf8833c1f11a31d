"""Helpers shared by the ``cadstore`` subcommands: arguments and output, nothing else.

What a command reads and checks is library code (:mod:`cadstore.artefacts` opens any
artefact by kind, :mod:`cadstore.tree` lists what it holds, :mod:`cadstore.progress` shows
progress); this module only handles the command line:

* :func:`add_storage_option` and :func:`parse_storage_options` give every command that
  takes paths the repeatable ``--storage-option KEY=VALUE`` for URLs;
* :func:`print_json` writes the ``--json`` documents (through
  :func:`cadstore.format.jsoncodec.to_jsonable`), :func:`print_lines` text;
* :func:`format_table`, :func:`format_tree`, :func:`format_value` and :func:`format_bytes`
  lay out the human output.

Errors meant for the user are :class:`CommandError`; the framework in
:mod:`cadstore.cli` prints them as one line and exits with status 2.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cadstore.errors import CadstoreError
from cadstore.format import jsoncodec
from cadstore.storage.base import (
    ROUTING_METADATA_KEY,
    SCHEMA_METADATA_KEY,
    SIZES_METADATA_KEY,
)

if TYPE_CHECKING:
    import argparse

__all__ = [
    "CommandError",
    "SCHEMA_KEY",
    "STORAGE_METADATA",
    "add_json_option",
    "add_progress_option",
    "add_storage_option",
    "format_bytes",
    "format_ratio",
    "format_table",
    "format_tree",
    "format_value",
    "non_negative_int",
    "parse_storage_options",
    "print_json",
    "print_lines",
    "show_progress",
    "wait_seconds",
]

#: Metadata the storages write for themselves: the schema (commands show a summary of it),
#: the routing of each field, and the stored size of each key.
SCHEMA_KEY = SCHEMA_METADATA_KEY
STORAGE_METADATA = frozenset((SCHEMA_METADATA_KEY, ROUTING_METADATA_KEY, SIZES_METADATA_KEY))
#: Elements above which arrays are summarised (numpy's own default threshold).
SUMMARY_THRESHOLD = 1000
#: Longest inline rendering of a list in a tree before it is shortened.
_INLINE_WIDTH = 100


class CommandError(CadstoreError, ValueError):
    """Bad input to a command: an unknown path, key, item or option combination.

    Deriving from ``ValueError`` makes the framework exit with status 2 (bad input).
    """


def wait_seconds(text: str) -> float:
    """Parse a ``--wait SECONDS`` value: a number >= 0 (``inf`` waits as long as it takes).

    Parameters
    ----------
    text
        The option's value as typed.

    Returns
    -------
    float
        The seconds.

    Raises
    ------
    argparse.ArgumentTypeError
        If ``text`` is not a number, is ``nan`` (which would wait forever) or is negative:
        what :func:`cadstore.io.lock.check_wait` refuses.
    """
    import argparse

    from cadstore.io.lock import check_wait

    try:
        return check_wait(float(text))
    except ValueError:  # not a number, or one the lock refuses
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds >= 0, got {text!r}"
        ) from None


def zstd_level(text: str) -> int:
    """Parse a ``--level`` value: a zstd level, an integer in the range the merge takes.

    Parameters
    ----------
    text
        The option's value as typed.

    Returns
    -------
    int
        The level.

    Raises
    ------
    argparse.ArgumentTypeError
        If ``text`` is not an integer from
        :data:`~cadstore.merging.options.MIN_LEVEL` to
        :data:`~cadstore.merging.options.MAX_LEVEL`: what the merge refuses, there
        under its keyword's name (``compression_level``).
    """
    import argparse

    from cadstore.merging.options import MAX_LEVEL, MIN_LEVEL

    try:
        value = int(text)
    except ValueError:
        value = MAX_LEVEL + 1
    if not MIN_LEVEL <= value <= MAX_LEVEL:
        raise argparse.ArgumentTypeError(
            f"expected a zstd level, an integer from {MIN_LEVEL} to {MAX_LEVEL}, got {text!r}"
        )
    return value


def positive_seconds(text: str) -> float:
    """Parse a ``--timeout S`` value: a finite number of seconds > 0.

    Parameters
    ----------
    text
        The option's value as typed.

    Returns
    -------
    float
        The seconds.

    Raises
    ------
    argparse.ArgumentTypeError
        If ``text`` is not a number, or is not finite and positive: what the encoder
        refuses, there under its keyword's name (``timeout``).
    """
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """Parse a count that must be at least one (``cadstore demo --parts N``); see
    :func:`int_at_least`."""
    return int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """Parse a ``--workers N`` value, an integer >= 0; see :func:`int_at_least`."""
    return int_at_least(text, 0)


def int_at_least(text: str, minimum: int) -> int:
    """Parse an option's integer value that must be at least ``minimum``.

    Parameters
    ----------
    text
        The option's value as typed.
    minimum
        The least value taken.

    Returns
    -------
    int
        The number.

    Raises
    ------
    argparse.ArgumentTypeError
        If ``text`` is not an integer or is less than ``minimum`` (argparse makes it a
        usage error naming the option).
    """
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
    return value


def add_storage_option(
    parser: argparse.ArgumentParser, *, dest: str = "storage_option", explain: bool = False
) -> None:
    """Add the repeatable ``--storage-option KEY=VALUE`` for paths that are URLs.

    Parameters
    ----------
    parser
        The ``cadstore`` parser (options before the command) or a subcommand's parser.
    dest
        Where the raw ``KEY=VALUE`` strings go; :func:`parse_storage_options` reads them.
    explain
        Give the whole explanation (the top-level help, where it appears once); the
        subcommands' help points there.
    """
    text = (
        "fsspec option for paths that are URLs (s3://...), repeatable; VALUE is read "
        "as JSON when it parses (true, 3, {...}), else as text; dots nest keys, e.g. "
        "client_kwargs.endpoint_url=http://127.0.0.1:8333. Without it, credentials and "
        "endpoint come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_ENDPOINT_URL, AWS_PROFILE, FSSPEC_S3_*)"
        if explain
        else "fsspec option for URL paths, repeatable (see 'cadstore --help')"
    )
    parser.add_argument(
        "--storage-option", dest=dest, action="append", default=None, metavar="KEY=VALUE", help=text
    )


def parse_storage_options(pairs: Iterable[str] | None) -> dict[str, Any] | None:
    """Turn ``KEY=VALUE`` strings into fsspec storage options.

    Parameters
    ----------
    pairs
        The ``--storage-option`` values, in order; a later one replaces an earlier one.

    Returns
    -------
    dict or None
        ``None`` when there are none, so the environment configuration applies.

    Raises
    ------
    CommandError
        If a pair has no ``=`` or an empty key segment, or a key is both a value and a
        parent of other keys.
    """
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise CommandError(
                f"--storage-option {pair!r}: expected KEY=VALUE, e.g. "
                "client_kwargs.endpoint_url=http://127.0.0.1:8333"
            )
        try:
            # Bounded like any JSON cadstore parses: a value nested too deeply is text.
            value: Any = jsoncodec.parse_document(text)
        except ValueError:
            value = text
        node = options
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CommandError(
                    f"--storage-option {pair!r}: {'.'.join(parts[: depth + 1])} is already "
                    "set to a value, so it cannot also hold keys"
                )
            node = child
        node[parts[-1]] = value
    return options or None


# ---------------------------------------------------------------------------- JSON output
def print_json(doc: Any, *, indent: int | None = 2) -> None:
    """Print ``doc`` as one strictly valid JSON document on stdout.

    Parameters
    ----------
    doc
        Anything :func:`to_jsonable` accepts.
    indent
        Indentation; ``None`` prints one compact line (for documents holding big arrays,
        which indentation would spread over a line per element).
    """
    _write(json.dumps(jsoncodec.to_jsonable(doc), indent=indent, allow_nan=False) + "\n")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """Add the ``--json`` flag every command shares.

    Parameters
    ----------
    parser
        The subcommand's parser.
    """
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of text"
    )


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--progress`` / ``--no-progress``, for commands that draw progress bars.

    Without either, bars are drawn only when stderr is a terminal (see
    :func:`show_progress`): in a log or a CI job a bar is carriage-return garbage.

    Parameters
    ----------
    parser
        The subcommand's parser.
    """
    import argparse

    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars on stderr, or not (default: when stderr is a terminal "
        "and --json is not given)",
    )


def show_progress(args: argparse.Namespace) -> bool:
    """Whether a command draws progress bars: as ``--progress`` / ``--no-progress`` say,
    else when stderr is a terminal and the output is not ``--json``.

    Parameters
    ----------
    args
        The parsed arguments of a command given :func:`add_progress_option`.

    Returns
    -------
    bool
        The ``progress`` to pass to the library.
    """
    from cadstore.progress import wanted

    if args.progress is None and getattr(args, "json", False):
        return False
    return wanted(args.progress)


# ---------------------------------------------------------------------------- text output
def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``cadstore cat ... | head``): stop quietly as Unix tools
        # do, and keep the interpreter's final flush from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def print_lines(lines: Iterable[str]) -> None:
    """Print lines to stdout.

    Parameters
    ----------
    lines
        The lines, without newlines.
    """
    text = "\n".join(lines)
    _write(text + "\n")


def format_bytes(n: int | None) -> str:
    """Return a byte count for people: ``"512 B"``, ``"29.4 KiB"``, ``"-"`` for ``None``.

    Parameters
    ----------
    n
        The count.
    """
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_ratio(ratio: float | None) -> str:
    """Return a compression ratio as ``"3.21x"`` (``"-"`` when unknown).

    Parameters
    ----------
    ratio
        Raw over stored bytes.
    """
    return "-" if ratio is None else f"{ratio:.2f}x"


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> list[str]:
    """Lay out rows in aligned columns.

    Parameters
    ----------
    headers
        Column titles.
    rows
        Cells, one sequence per row, as many as ``headers``.
    right
        Indices of columns to right-align (numbers).

    Returns
    -------
    list of str
        The header line and one line per row, trailing spaces removed.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _terminal_width() -> int:
    return max(40, shutil.get_terminal_size((100, 24)).columns)


def _inline(value: Any, *, full: bool) -> str:
    """Render a short value on one line (metadata values, scalars)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        text = json.dumps(jsoncodec.to_jsonable(value))
        if full or len(text) <= _INLINE_WIDTH:
            return text
        head = json.dumps(jsoncodec.to_jsonable(value[:5]))[:-1]
        return f"{head}, ...] ({len(value)} items)"
    if isinstance(value, np.generic):
        return str(value.item())
    if value is None:
        # Metadata documents are JSON; show their null as JSON does.
        return "null"
    return str(value)


def _string_lines(items: Sequence[Any], *, full: bool) -> list[str]:
    texts = [str(x) for x in items]
    if full or len(texts) <= SUMMARY_THRESHOLD:
        return texts
    edge = 5
    return [*texts[:edge], f"... ({len(texts) - 2 * edge} more)", *texts[-edge:]]


def format_value(value: Any, *, full: bool = False, width: int | None = None) -> list[str]:
    """Render a stored leaf as text lines.

    Strings print raw, lists of strings and 1-d string arrays one element per line,
    other arrays with numpy's printing. Unless ``full``, arrays of more than
    :data:`SUMMARY_THRESHOLD` elements are summarised, and a first line says so.

    Parameters
    ----------
    value
        A leaf (not a dict; see :func:`format_tree`).
    full
        Print every element.
    width
        Line width for arrays; defaults to the terminal's.

    Returns
    -------
    list of str
        The lines.
    """
    if isinstance(value, str):
        return value.splitlines() or [""]
    if isinstance(value, list):
        return _string_lines(value, full=full)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "UO" and value.ndim == 1:
            return _string_lines(value.tolist(), full=full)
        summarised = not full and value.size > SUMMARY_THRESHOLD
        text = np.array2string(
            value,
            max_line_width=width or _terminal_width(),
            threshold=SUMMARY_THRESHOLD if not full else sys.maxsize,
            separator=" ",
        )
        lines = text.splitlines()
        if summarised:
            note = (
                f"# {value.dtype} array of shape {tuple(value.shape)}, summarised "
                "(--full prints every value)"
            )
            lines.insert(0, note)
        return lines
    return [_inline(value, full=full)]


def format_tree(
    mapping: Mapping[str, Any], *, full: bool = False, indent: int = 0, arrays: bool = True
) -> list[str]:
    """Render a nested dict as an indented tree.

    Groups end with ``/``; scalars and strings sit on their key's line; arrays get a
    ``name: dtype shape`` line with their values indented below.

    Parameters
    ----------
    mapping
        The dict.
    full
        Print every element of arrays and lists.
    indent
        Starting indentation level.
    arrays
        Print array values (otherwise only their dtype and shape).

    Returns
    -------
    list of str
        The lines.
    """
    lines: list[str] = []
    pad = "  " * indent
    for name, value in mapping.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{name}/")
            lines.extend(format_tree(value, full=full, indent=indent + 1, arrays=arrays))
        elif isinstance(value, np.ndarray) and value.ndim > 0:
            lines.append(f"{pad}{name}: {value.dtype} {tuple(value.shape)}")
            if arrays:
                inner = pad + "    "
                width = max(40, _terminal_width() - len(inner))
                lines.extend(inner + line for line in format_value(value, full=full, width=width))
        elif isinstance(value, str) and "\n" in value:
            lines.append(f"{pad}{name}:")
            lines.extend(f"{pad}    {line}" for line in value.splitlines())
        else:
            lines.append(f"{pad}{name}: {_inline(value, full=full)}")
    return lines
