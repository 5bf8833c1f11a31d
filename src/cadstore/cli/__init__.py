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
``--debug`` is given. Warnings the library issues while a command runs are one line too
(``cadstore: warning: ...``), each printed once; Python's filters (``-W``,
``PYTHONWARNINGS``) still decide which are shown.

Every PATH may be a URL (``s3://bucket/flows/demo.dataset``). ``--storage-option
KEY=VALUE`` (repeatable, before or after the command) gives fsspec options for them;
without it credentials and endpoint come from the environment (``AWS_*``,
``FSSPEC_S3_*``). Commands find the parsed options in ``args.storage_options``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "HelpFormatter", "main"]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

#: Subcommands whose paths may be URLs; they take ``--storage-option``.
URL_COMMANDS = frozenset(
    (
        "inspect",
        "cat",
        "validate",
        "schema",
        "merge",
        "repair",
        "info",
        "split",
        "export-json",
        "report",
    )
)

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = (
    "demo",
    "inspect",
    "cat",
    "validate",
    "schema",
    "merge",
    "repair",
    "info",
    "split",
    "export_json",
    "report",
    "encode",
)


#: Exit status after the reader of our output went away (128 + SIGPIPE, as Unix tools).
EXIT_BROKEN_PIPE = 141


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows every option's default, where it has one worth showing.

    argparse's own ``ArgumentDefaultsHelpFormatter`` also prints ``(default: None)`` and
    ``(default: False)`` for flags and options without a default; here those are left
    out, and help that already states its default is left as written.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every available subcommand."""
    from cadstore import __version__
    from cadstore.cli._common import add_storage_option

    parser = argparse.ArgumentParser(
        prog="cadstore",
        description="Storage for CAD machine learning: items, datasets, reports.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cadstore {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--trust-manifest",
        action="store_true",
        help="follow the paths a .flow manifest lists outside its own folder (off: a "
        "manifest may come from anywhere)",
    )
    add_storage_option(parser, dest="global_storage_option", explain=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"cadstore.cli.{name}")
        module.register(sub)
    for name, command in sub.choices.items():
        command.formatter_class = HelpFormatter
        if name in URL_COMMANDS:
            add_storage_option(command)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; an unknown option after a command is reported with its usage."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = getattr(args, "command", None)
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        owner = subparsers.choices.get(command, parser) if command else parser
        owner.error(f"unrecognized arguments: {' '.join(extras)}")
    if args.global_storage_option and args.command not in URL_COMMANDS:
        # Taken before the command, it would be ignored: the command reads local paths.
        parser.error(
            f"--storage-option: 'cadstore {args.command}' reads and writes local paths only, "
            "so storage options do not apply to it"
        )
    return args


def _quiet_stdout() -> None:
    # The reader went away (``cadstore info X --json | head``): stop quietly, as Unix
    # tools do, and keep the interpreter's final flush from failing again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


@contextmanager
def _warnings_as_messages() -> Iterator[None]:
    """Within, each warning Python prints is one ``cadstore: warning: MESSAGE`` line.

    Python's own format names the file and line of cadstore's code that issued the
    warning and quotes that line, which means nothing to someone running a command. Each
    message is printed once, however often and from however many places (worker
    processes included, see :mod:`cadstore.workers`) it is issued.

    The format is replaced (``warnings.formatwarning``, the hook Python's display
    uses); the display in place is kept, wrapped only to pass over a repeat and to
    forgive a closed ``sys.stderr`` (which Python's display does not): a program that
    records warnings (``warnings.catch_warnings(record=True)``) or shows them itself
    (its own ``warnings.showwarning``, ``logging.captureWarnings``) around :func:`main`
    keeps doing so, each message once. The filters are left as they are, so
    ``-W error`` or ``-W ignore`` keep working; on leaving, the format, the display and
    the filters are restored.
    """
    printed: set[tuple[type[Warning], str]] = set()

    def text_of(message: Warning | str) -> str:
        return " ".join(part.strip() for part in str(message).splitlines() if part.strip())

    def one_line(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        return f"cadstore: warning: {text_of(message) or category.__name__}\n"

    display = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        said = (category, text_of(message))
        if said in printed:
            return
        printed.add(said)
        try:
            display(message, category, filename, lineno, file, line)
        except ValueError:
            if not getattr(sys.stderr if file is None else file, "closed", False):
                raise

    python_format = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.showwarning = show
        warnings.formatwarning = one_line
        try:
            yield
        finally:
            warnings.formatwarning = python_format


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    with _warnings_as_messages():
        return _run(argv)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    try:
        from cadstore.cli._common import parse_storage_options

        pairs = [*(args.global_storage_option or []), *(getattr(args, "storage_option", []) or [])]
        args.storage_options = parse_storage_options(pairs)
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        print("cadstore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if args.debug:
            raise
        from cadstore.errors import CadstoreError, os_error_message

        code = EXIT_USAGE if isinstance(exc, CadstoreError | OSError | ValueError) else 1
        if isinstance(exc, CadstoreError):
            text = exc.cli_message()
        elif isinstance(exc, OSError):
            # "x.data: no such file or directory", not "[Errno 2] No such ...: 'x.data'".
            text = os_error_message(exc)
        else:
            text = str(exc)
        message = text.splitlines()[0] if text else type(exc).__name__
        print(f"cadstore: error: {message}", file=sys.stderr)
        return code
