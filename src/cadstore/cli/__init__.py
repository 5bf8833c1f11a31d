"""The ``cadstore`` command line.

One entry point with subcommands; each lives in its own module under ``cadstore.cli`` and
exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a function
taking the parsed arguments and returning an exit code.

Exit codes scripts can rely on:

====  =========================================================================
0     success
1     the command ran but found problems (invalid data, failed items)
2     bad usage or input: unknown options, missing or unreadable files
====  =========================================================================

Errors are one line on stderr (``cadstore: error: ...``), never a traceback, unless
``--debug`` is given.

Every PATH may be a URL (``s3://bucket/flows/demo.dataset``). ``--storage-option
KEY=VALUE`` (repeatable, before or after the command) gives fsspec options for them;
without it credentials and endpoint come from the environment (``AWS_*``,
``FSSPEC_S3_*``). Commands find the parsed options in ``args.storage_options``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

#: Subcommands whose paths may be URLs; they take ``--storage-option``.
URL_COMMANDS = frozenset(
    ("inspect", "cat", "validate", "merge", "info", "split", "export-json", "report")
)

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = (
    "demo",
    "inspect",
    "cat",
    "validate",
    "merge",
    "info",
    "split",
    "export_json",
    "report",
    "encode",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="cadstore",
        description="Storage for CAD machine learning: items, datasets, reports.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    from cadstore.cli._common import add_storage_option

    add_storage_option(parser, dest="global_storage_option")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"cadstore.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cadstore.cli.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    for name, command in sub.choices.items():
        if name in URL_COMMANDS:
            add_storage_option(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from cadstore.cli._common import parse_storage_options

        pairs = [*(args.global_storage_option or []), *(getattr(args, "storage_option", []) or [])]
        args.storage_options = parse_storage_options(pairs)
        return int(args.func(args))
    except KeyboardInterrupt:
        print("cadstore: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        from cadstore.errors import CadstoreError

        code = EXIT_USAGE if isinstance(exc, CadstoreError | OSError | ValueError) else 1
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"cadstore: error: {message}", file=sys.stderr)
        return code
