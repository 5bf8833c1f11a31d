"""What the ``cadstore`` command line prints besides its results: warnings, errors from
the operating system, progress bars, and what it says about a folder with nothing in it.

Found by a new user's trial: warnings came out in Python's raw format (a path into
cadstore's code and a source line), errors carried ``[Errno N]``, progress bars wrote
carriage returns into logs, and ``inspect`` of an empty folder did not say it was empty.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadstore import JsonStorageHandler
from cadstore.cli import main
from cadstore.errors import CadstoreWarning


def _files(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` and its bytes: what a refused command must not change."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


#: What a child process runs after ``before``: the command line, as ``python -m cadstore``.
_MAIN = "\nimport sys\nfrom cadstore.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _cli(
    *argv: str | os.PathLike[str], cwd: Path | None = None, before: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cadstore`` in a child process, with Python's default warning filters
    (the ones a user has; pytest's turn warnings into errors) and no recording of warnings
    (pytest records them in-process); with ``before``, that code runs first (to patch)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    command = ["-c", before + _MAIN] if before else ["-m", "cadstore"]
    return subprocess.run(
        [sys.executable, *command, *map(os.fspath, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=env,
    )


@pytest.fixture
def doubled_json_store(tmp_path: Path) -> Path:
    """A JSON store with a hand-made copy of one key's file: reading it warns."""
    directory = tmp_path / "store_json"
    storage = JsonStorageHandler(directory)
    storage.save_data("areas", np.array([1.0, 2.0, 3.0]))
    storage.save_metadata("category", "bolt")
    storage.close()
    (directory / "areas_copy.json").write_bytes((directory / "areas.json").read_bytes())
    return directory


# ---------------------------------------------------------------------------- warnings
def test_a_warning_is_one_cadstore_line_without_code_paths(doubled_json_store: Path) -> None:
    """The library's ``warnings.warn`` reached the terminal as
    ``/…/cadstore/artefacts.py:230: CadstoreWarning: …`` plus the line of cadstore's code
    that issued it; the command line prints it as one ``cadstore: warning:`` line."""
    before = _files(doubled_json_store)
    done = _cli("inspect", doubled_json_store)
    assert done.returncode == 0, done.stderr
    assert "areas" in done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("cadstore: warning: ")
    assert "areas_copy.json holds key 'areas' too" in lines[0]
    assert ".py" not in done.stderr and "CadstoreWarning" not in done.stderr
    assert _files(doubled_json_store) == before


#: A patch making ``cadstore inspect`` warn the same thing from two places (and three
#: times from one, under ``always``), and a message on two lines.
_NOISY_INSPECT = """
import warnings
import cadstore.cli.inspect
from cadstore.errors import CadstoreWarning

inspect_target = cadstore.cli.inspect.inspect_target

def noisy(*args, **kwargs):
    for _ in range(3):
        warnings.warn("the same thing", CadstoreWarning, stacklevel=1)
    warnings.warn("the same thing", CadstoreWarning, stacklevel=2)
    warnings.warn("two\\n  lines", CadstoreWarning, stacklevel=1)
    return inspect_target(*args, **kwargs)

cadstore.cli.inspect.inspect_target = noisy
warnings.simplefilter("always", CadstoreWarning)
"""


def test_each_warning_is_printed_once(doubled_json_store: Path) -> None:
    """The same warning from two places (or twice from one, under ``always``) is printed
    once per run; a multi-line message is one line."""
    done = _cli("inspect", doubled_json_store, before=_NOISY_INSPECT)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "cadstore: warning: "
        f"{doubled_json_store / 'areas_copy.json'} holds key 'areas' too; read from "
        "'areas.json', the key's own file",
        "cadstore: warning: the same thing",
        "cadstore: warning: two lines",
    ]


@pytest.mark.filterwarnings("default::cadstore.errors.CadstoreWarning")
def test_main_leaves_a_programs_own_warning_display_and_filters(
    doubled_json_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``warnings.catch_warnings(record=True)`` around an in-process ``main()`` recorded
    nothing, and a program's own ``warnings.showwarning`` was passed over: ``main()``
    showed every warning itself. It now sets only the format Python's display uses, so
    a program that records or shows warnings itself keeps doing so; and it leaves the
    display, the format and the filters as it found them."""
    said = (
        f"{doubled_json_store / 'areas_copy.json'} holds key 'areas' too; read from "
        "'areas.json', the key's own file"
    )
    argv = ["inspect", os.fspath(doubled_json_store)]
    shown, formatted = warnings.showwarning, warnings.formatwarning
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CadstoreWarning)
        assert main(argv) == 0
    assert [str(w.message) for w in caught if w.category is CadstoreWarning] == [said]
    seen: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always", CadstoreWarning)
        warnings.showwarning = lambda message, *rest: seen.append(str(message))
        assert main(argv) == 0
    assert seen == [said]
    assert "warning" not in capsys.readouterr().err
    assert warnings.showwarning is shown and warnings.formatwarning is formatted
    assert warnings.filters == filters
    # Outside main(), the library's warnings are Python's again.
    with pytest.warns(CadstoreWarning, match="holds key 'areas' too"):
        JsonStorageHandler(doubled_json_store, read_only=True).close()


#: A patch making ``cadstore encode``'s workers, started by ``{method}``, warn outside
#: an item's own logs. Their work is in a module of ``{folder}``, which a spawned worker
#: imports (it finds the parent's ``sys.path``).
_WARNING_WORKERS = """
import multiprocessing, sys
sys.path.insert(0, {folder!r})
import cadstore.encode.run, cadstore.workers, warning_work
cadstore.workers.mp_context = lambda: multiprocessing.get_context({method!r})
cadstore.encode.run.process_file = warning_work.work
"""

_WARNING_WORK = """
import warnings
from cadstore.encode.work import process_file
from cadstore.errors import CadstoreWarning

def work(task, settings, emit):
    warnings.warn("a worker's warning\\n  on two lines", CadstoreWarning, stacklevel=1)
    process_file(task, settings, emit)
"""


def _encode_with_warning_workers(
    tmp_path: Path, method: str, count: int, program: str = ""
) -> subprocess.CompletedProcess[str]:
    """``cadstore encode --workers 2`` of ``count`` sample parts in a child process, its
    workers started by ``method`` and warning once each task (``_WARNING_WORK``), after
    the ``program``'s own code (its warning filters)."""
    pytest.importorskip("OCP")
    from cadstore.cad.samples import write_sample_set

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    write_sample_set(tmp_path / "steps", count)
    (tmp_path / "warning_work.py").write_text(_WARNING_WORK)
    before = _WARNING_WORKERS.format(folder=str(tmp_path), method=method) + program
    argv = ["encode", tmp_path / "steps", "-o", tmp_path / "out", "--workers", "2"]
    return _cli(*argv, "--no-progress", before=before)


#: A program's own filter for cadstore's warnings (``{action}``), set in code.
_PROGRAM_FILTER = (
    "import warnings\nfrom cadstore.errors import CadstoreWarning\n"
    "warnings.simplefilter({action!r}, CadstoreWarning)\n"
)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_workers_warning_is_the_commands_one_line(tmp_path: Path, method: str) -> None:
    """A warning issued in a spawned encode worker came out on the worker's own stderr in
    Python's format (``…/warning_work.py:N: CadstoreWarning: …`` and the source line),
    once per worker, and a forked worker printed the command's line once per worker;
    the command prints it as its one ``cadstore: warning:`` line, once for the run, like
    a warning of its own process."""
    done = _encode_with_warning_workers(tmp_path, method, 4)
    assert done.returncode == 0, done.stderr
    assert "encoded 4 items from 4 files" in done.stdout
    assert done.stderr.splitlines() == ["cadstore: warning: a worker's warning on two lines"]


# ---------------------------------------------------------------------------- OS errors
def _one_error_line(code: int, out: str, err: str, *needles: str) -> str:
    """Exit 2, nothing on stdout, one ``cadstore: error:`` line naming the needles and
    carrying no ``[Errno N]`` nor Python's quoting of the file name."""
    assert code == 2, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cadstore: error: ")
    assert "Errno" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _main(
    capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]
) -> tuple[int, str, str]:
    code = main([os.fspath(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small_dataset(realistic_items: list[tuple[Path, object, object]], tmp_path: Path) -> Path:
    files = [str(p) for p, _, _ in realistic_items[:3]]
    assert main(["merge", *files, "-o", str(tmp_path / "d"), "--json"]) == 0
    return tmp_path / "d.dataset"


def test_report_below_a_file_names_the_file_in_the_way(
    small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cadstore report D -o notes.txt/r.html`` said ``[Errno 20] Not a directory:
    'notes.txt/r.html'``, after drawing the whole report."""
    pytest.importorskip("matplotlib")
    capsys.readouterr()
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    before = _files(tmp_path)
    line = _one_error_line(*_main(capsys, "report", small_dataset, "-o", notes / "r.html"))
    assert f"{notes} is a file, not a folder" in line
    assert _files(tmp_path) == before


def test_export_json_below_a_file_names_the_file_in_the_way(
    realistic_items: list[tuple[Path, object, object]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``cadstore export-json ITEM -o notes.txt/x`` said ``[Errno 17] File exists:
    '…/notes.txt'``."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    before = _files(tmp_path)
    item = realistic_items[0][0]
    line = _one_error_line(*_main(capsys, "export-json", item, "-o", notes / "x"))
    assert f"{notes} is a file, not a folder" in line
    assert _files(tmp_path) == before


def test_encode_of_a_missing_input_names_it_without_errno(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cadstore encode missing -o out`` said ``[Errno 2] No such CAD file or directory:
    'missing'``; nothing is made."""
    missing = tmp_path / "missing"
    out = tmp_path / "out"
    line = _one_error_line(*_main(capsys, "encode", missing, "-o", out, "--no-progress"))
    assert line == f"cadstore: error: {missing}: no such CAD file or directory"
    assert not out.exists() and sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            PermissionError(13, "Permission denied", "parts/x.data"),
            "parts/x.data: permission denied",
        ),
        (OSError(18, "Invalid cross-device link", "a.tmp", None, "b"), "a.tmp -> b: "),
        (OSError(5, "Input/output error"), "input/output error"),
        (OSError(28, None), os.strerror(28).lower()),
        (OSError("the disk is on fire"), "the disk is on fire"),
    ],
)
def test_an_os_error_is_the_file_and_the_problem(
    error: OSError,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any ``OSError`` a command lets through is printed as ``FILE: problem`` (the
    system's text for its errno), not as ``[Errno N] Problem: 'FILE'``; exit 2."""
    import cadstore.cli.info

    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr(cadstore.cli.info, "run", fail)
    line = _one_error_line(*_main(capsys, "info", tmp_path / "d.dataset"))
    assert line.startswith(f"cadstore: error: {expected}"), line
    assert "'" not in line


def test_merge_of_an_item_folder_that_cannot_be_listed_says_why(
    realistic_items: list[tuple[Path, object, object]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An item directory the merge may not list was skipped with ``cannot list …:
    [Errno 13] Permission denied: '…'``; now ``cannot list …: permission denied``."""
    import zipfile

    import cadstore.merging.scan

    folder = tmp_path / "one.zarr"
    with zipfile.ZipFile(realistic_items[0][0]) as zf:
        zf.extractall(folder)
    locked = folder / "face_areas"
    scandir = os.scandir

    def refuse(path: str) -> object:
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(cadstore.merging.scan.os, "scandir", refuse)
    good = realistic_items[1][0]
    code, out, err = _main(capsys, "merge", folder, good, "-o", tmp_path / "d", "--workers", "0")
    assert code == 1, err
    assert f"skipped {folder}: cannot list {locked}: permission denied" in out
    assert "Errno" not in out + err


#: An ``OSError`` with an errno but no text (``OSError(5, None)``), one with a message but
#: no errno (``OSError("...")``), and the system's usual one; and the problem each states.
_OS_ERRORS = [
    (lambda: OSError(errno.EIO, None), os.strerror(errno.EIO).lower()),
    (lambda: OSError("the disk is on fire"), "the disk is on fire"),
    (lambda: OSError(errno.EIO, os.strerror(errno.EIO)), os.strerror(errno.EIO).lower()),
]
_OS_IDS = ["errno-without-text", "text-without-errno", "errno-and-text"]


def _os_failure(
    error: Callable[[], OSError], real: Callable[..., Any], path: str
) -> Callable[..., Any]:
    """``real``, except that it raises ``error()`` for ``path``."""

    def fail(target: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(target) == path:
            raise error()
        return real(target, *args, **kwargs)

    return fail


@pytest.mark.parametrize(("error", "problem"), _OS_ERRORS, ids=_OS_IDS)
def test_library_messages_state_an_os_error_through_os_problem(
    error: Callable[[], OSError],
    problem: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The durable log, the CAD loader, the flow manifest's check of a listed file and a
    failed write each built their message from ``exc.strerror`` themselves: an error
    without it said ``None`` or ``[Errno 5] None``. They say the problem as
    :func:`cadstore.errors.os_problem` does, like the command line."""
    from cadstore.cad.loader import CADLoader
    from cadstore.encode import durability
    from cadstore.errors import CorruptStoreError, StorageError
    from cadstore.format import manifest
    from cadstore.io.filesystems import LocalFileSystem
    from cadstore.io.location import resolve
    from cadstore.io.publish import write_error

    # A failed write (cadstore.io.publish.writing's error), keeping the errno's name.
    target = str(tmp_path / "x.dataset")
    written = write_error(target, error())
    code = f" ({errno.errorcode[errno.EIO]})" if error().errno else ""
    assert str(written) == f"{target}: could not be written: {problem}{code}"

    # The encoder's durable log, read and appended to.
    log = durability.DurableLog(str(tmp_path))
    Path(log.path).write_bytes(b"torn")
    monkeypatch.setattr(durability, "open", _os_failure(error, open, log.path), raising=False)
    with pytest.raises(StorageError) as failed:
        log.read()
    assert str(failed.value) == f"{log.path}: cannot be read: {problem}"
    with pytest.raises(StorageError) as failed:
        log.append({"a.zarr.data": (1, 2, 3)})
    assert str(failed.value) == f"{log.path}: cannot be read: {problem}"
    assert Path(log.path).read_bytes() == b"torn"

    # A CAD file the loader cannot open.
    part = tmp_path / "part.step"
    part.write_bytes(b"ISO-10303-21;")
    monkeypatch.setattr(
        LocalFileSystem, "open_read", lambda self, path: _os_failure(error, open, str(part))(path)
    )
    with pytest.raises(CorruptStoreError) as failed:
        CADLoader().create_from_file(part)
    assert str(failed.value) == f"{part}: cannot be read: {problem}"

    # A file a flow manifest lists, which cannot be looked at.
    flow, table = tmp_path / "d.flow", tmp_path / "d.infoset"
    table.write_bytes(b"PAR1")
    monkeypatch.setattr(manifest.os, "stat", _os_failure(error, os.stat, str(table)))
    with pytest.raises(CorruptStoreError) as failed:
        manifest._check_kind(resolve(str(flow)), "infoset", resolve(str(table)))
    assert str(failed.value) == f"{flow}: the manifest lists infoset {table}: {problem}"


# ---------------------------------------------------------------------------- progress
def _bars(err: str) -> bool:
    """Whether ``err`` holds a tqdm bar: its carriage returns and counts."""
    return "\r" in err or "item/s" in err or "file/s" in err


@pytest.mark.parametrize(
    ("options", "terminal", "shown"),
    [
        ([], False, False),  # a log or CI: no carriage-return garbage
        ([], True, True),  # a person watching
        (["--progress"], False, True),  # asked for
        (["--no-progress"], True, False),  # refused
        (["--json"], True, False),  # as before: --json shows none unless asked
        (["--json", "--progress"], False, True),
    ],
)
def test_merge_shows_progress_on_a_terminal_or_when_asked(
    realistic_items: list[tuple[Path, object, object]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
    terminal: bool,
    shown: bool,
) -> None:
    """``cadstore merge`` wrote its bars to stderr even when stderr was a file or a pipe."""
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    files = [str(p) for p, _, _ in realistic_items[:3]]
    code = main(["merge", *files, "-o", str(tmp_path / "d"), "--workers", "0", *options])
    err = capsys.readouterr().err
    assert code == 0, err
    assert _bars(err) is shown, err
    assert "Errno" not in err and "warning" not in err


def test_encode_shows_no_progress_when_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cadstore encode`` wrote its bar into logs; ``--progress`` still shows it."""
    pytest.importorskip("OCP")
    pytest.importorskip("tqdm")
    from cadstore.cad import samples

    samples.write_sample_set(tmp_path / "parts", count=2, seed=5)
    assert (
        main(["encode", str(tmp_path / "parts"), "-o", str(tmp_path / "a"), "--workers", "1"]) == 0
    )
    out, err = capsys.readouterr()
    assert out.startswith("encoded ")
    assert not _bars(err), err
    command = ["encode", str(tmp_path / "parts"), "-o", str(tmp_path / "b"), "--workers", "1"]
    assert main([*command, "--progress"]) == 0
    assert _bars(capsys.readouterr().err)


def test_progress_option_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("merge", "encode"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--progress, --no-progress" in text
        assert "when stderr is a terminal" in text


# ---------------------------------------------------------------------------- empty folders
def test_inspect_of_an_empty_folder_says_it_is_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cadstore inspect .`` in a new, empty folder said it held "no zarr.json, .zgroup or
    .json files", which a new user cannot read as "there is nothing here". It says the
    folder is empty and holds no cadstore item or dataset; exit 2, as ``cadstore merge``
    of an empty folder."""
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_error_line(*_main(capsys, "inspect", empty))
    assert line == (
        f"cadstore: error: {empty} is an empty directory: it holds no cadstore item, "
        "dataset or JSON store"
    )
    monkeypatch.chdir(empty)
    for path in (".", "./"):
        line = _one_error_line(*_main(capsys, "inspect", path))
        assert line.startswith(
            f"cadstore: error: {path} (the current directory) is an empty directory: it holds "
            "no cadstore item, dataset or JSON store"
        ), line
    assert main(["merge", ".", "-o", str(tmp_path / "d")]) == 2  # the same exit status
    capsys.readouterr()
    assert list(empty.iterdir()) == []


def test_inspect_of_a_folder_of_items_or_datasets_names_what_to_give(
    realistic_items: list[tuple[Path, object, object]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A folder holding items (or a dataset) but none itself is told apart from an empty
    one: the message names what is inside, to be given instead."""
    folder = tmp_path / "encoded"
    folder.mkdir()
    for path, _, _ in realistic_items[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    first = sorted(p.name for p in folder.iterdir())[0]
    before = _files(tmp_path)
    line = _one_error_line(*_main(capsys, "inspect", folder))
    assert f"{folder} is a folder holding 2 items (.data files)" in line
    assert str(folder / first) in line and "merge them" in line
    assert _files(tmp_path) == before
    assert main(["merge", str(folder), "-o", str(tmp_path / "out" / "d"), "--json"]) == 0
    capsys.readouterr()
    line = _one_error_line(*_main(capsys, "inspect", tmp_path / "out"))
    # The merge's output folder names its manifest, as before.
    assert "d.flow" in line
    (tmp_path / "out" / "d.flow").unlink()
    line = _one_error_line(*_main(capsys, "inspect", tmp_path / "out"))
    assert (
        f"{tmp_path / 'out'} is a folder holding the dataset {tmp_path / 'out' / 'd.dataset'}"
        in line
    )


def test_inspect_of_a_folder_without_cadstore_files_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "bracket.step").write_text("ISO-10303-21;")
    line = _one_error_line(*_main(capsys, "inspect", parts))
    assert f"{parts} is not an item" in line
    assert "it holds no cadstore item, dataset or JSON store" in line


def test_a_closed_stderr_fails_no_command_that_warns(doubled_json_store: Path) -> None:
    """Found by review: ``main()`` printed its warnings itself, forgiving a closed
    ``sys.stderr``; once it left the display to Python's (which forgives an OSError, not
    the ValueError of a closed file), a program that had closed ``sys.stderr`` saw the
    command fail on the first warning. It runs to the end again."""
    closed = "import io, sys\nsys.stderr = io.StringIO()\nsys.stderr.close()\n"
    done = _cli("inspect", doubled_json_store, before=closed)
    assert done.returncode == 0, done.stderr
    assert "areas" in done.stdout


@pytest.mark.parametrize("method", ["spawn"])
def test_a_workers_warning_goes_through_the_programs_filters(tmp_path: Path, method: str) -> None:
    """Found by review: a spawned worker's warning was handed to the parent's display
    directly, so a program that ignores a category (not by ``-W``, which workers get too)
    still saw it from its workers. The parent issues it again, through its filters."""
    done = _encode_with_warning_workers(
        tmp_path, method, 2, _PROGRAM_FILTER.format(action="ignore")
    )
    assert done.returncode == 0, done.stderr
    assert "encoded 2 items from 2 files" in done.stdout
    assert done.stderr == ""


def test_a_warning_issued_as_a_worker_starts_a_send_is_shown_there() -> None:
    """Found by review: a worker marked itself as sending only once it held the send
    lock, so a warning issued on the same thread just after the lock was taken (a
    finaliser's, run by the garbage collector) was forwarded, waited for the lock that
    thread held, and the worker hung. It is shown in the worker instead, and the message
    goes through."""
    import threading
    from multiprocessing import Pipe

    from cadstore.workers import _Sender

    class WarnsOnceTaken:
        """A lock that issues a warning right after it is first taken, and times out
        instead of hanging."""

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.warned = False

        def __enter__(self) -> None:
            if not self.lock.acquire(timeout=5):
                raise AssertionError("the sender waited for a lock its own thread held")
            if not self.warned:
                self.warned = True
                warnings.warn("a finaliser's warning", ResourceWarning, stacklevel=1)

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    ours, theirs = Pipe()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sender = _Sender(ours.send)
        sender._lock = WarnsOnceTaken()  # type: ignore[assignment]
        sender.forward_warnings()
        sender.send({"type": "message"})
    assert theirs.recv() == {"type": "message"}
    assert not theirs.poll()  # nothing else was sent: the warning was not forwarded
    assert [str(w.message) for w in caught] == ["a finaliser's warning"]


class _Heard:
    """A WorkerPool listener keeping what it hears."""

    def __init__(self) -> None:
        self.finished: list[Any] = []
        self.losses: list[Any] = []

        self.messages: list[dict[str, Any]] = []

    def message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def done(self, task: Any) -> None:
        self.finished.append(task)

    def lost(self, task: Any, pid: int | None, reason: str, error: str, seconds: float) -> None:
        self.losses.append((task, reason, error))


def _no_work(task: Any, settings: Any, emit: Any) -> None:
    """A worker's work that does nothing."""


def _says_its_pid(task: Any, settings: Any, emit: Any) -> None:
    """A worker's work that says which process ran it."""
    emit({"type": "pid", "pid": os.getpid()})


class _WarnsWhenFreed:
    """A task that, freed in a worker (as the worker takes its next message), warns."""

    def __del__(self) -> None:
        if multiprocessing.parent_process() is not None:
            warnings.warn(f"a task freed in worker {os.getpid()}", UserWarning, stacklevel=1)


def test_a_retired_workers_last_warning_is_not_lost() -> None:
    """A warning a worker sent after its last task (a finaliser's, run as it took the
    message to stop) was lost: the parent, retiring it, closed its pipe once it
    exited without reading what was left there. It is issued here."""
    from cadstore.workers import WorkerPool, WorkerSpec

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork start method here")
    heard = _Heard()
    spec = WorkerSpec(_says_its_pid, None, max_tasks_per_child=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with WorkerPool(spec, 1, None, heard, start_method="fork") as pool:
            pool.run([_WarnsWhenFreed(), _WarnsWhenFreed()])
    seen = [str(w.message) for w in caught if w.category is UserWarning]
    assert len(heard.finished) == 2 and heard.losses == []
    assert all(text.startswith("a task freed in worker ") for text in seen), seen
    # Issued by the two workers that ran the tasks, not by this process.
    named = [int(text.rsplit(" ", 1)[1]) for text in seen]
    assert os.getpid() not in named, seen
    assert sorted(named) == sorted(message["pid"] for message in heard.messages), seen
    # Each retired after its task: two workers, each freeing its task as it stopped.
    assert len(seen) == 2 and len(set(seen)) == 2, seen


_WARNS_AS_IMPORTED = """
import multiprocessing, os, warnings

if multiprocessing.parent_process() is not None:
    warnings.warn(f"imported in worker {os.getpid()}", UserWarning, stacklevel=1)


def work(task, settings, emit):
    pass
"""


def test_a_spawned_workers_warning_while_it_starts_reaches_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spawned worker's warning issued while it started (importing the module of its
    work, the CAD kernel, a flow's task) was printed on its own stderr in Python's
    format: the worker forwarded only the warnings of its task loop. It is issued
    here, as the ones of its tasks are."""
    import importlib

    from cadstore.workers import WorkerPool, WorkerSpec

    if "spawn" not in multiprocessing.get_all_start_methods():
        pytest.skip("no spawn start method here")
    (tmp_path / "warns_as_imported.py").write_text(_WARNS_AS_IMPORTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("warns_as_imported")
    heard = _Heard()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with WorkerPool(
            WorkerSpec(module.work, None), 1, None, heard, start_method="spawn"
        ) as pool:
            pool.run([1, 2])
    seen = [str(w.message) for w in caught if w.category is UserWarning]
    assert heard.finished == [1, 2] and heard.losses == []
    assert len(seen) == 1 and seen[0].startswith("imported in worker "), seen
    assert seen[0] != f"imported in worker {os.getpid()}"


def _counts_under_a_lock(task: int, settings: Any, emit: Any) -> None:
    """A worker's work using what multiprocessing passes only to a new process: adds
    ``task`` to a shared value under a lock, and puts it on a queue."""
    lock, total, done = settings
    with lock:
        total.value += task
    done.put(task)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_workers_spec_may_hold_a_lock_a_queue_and_a_shared_value(method: str) -> None:
    """A spec holding a multiprocessing lock, queue or shared value was refused by a
    spawned pool (RuntimeError: Lock objects should only be shared between processes
    through inheritance): it was sent through the worker's pipe once the worker had
    started, where multiprocessing refuses them, so that the warnings of its import
    reach this process. It goes as the worker starts again, as it did before that."""
    from cadstore.workers import WorkerPool, WorkerSpec

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    context = multiprocessing.get_context(method)
    total, done = context.Value("q", 0), context.Queue()
    heard = _Heard()
    spec = WorkerSpec(_counts_under_a_lock, (context.Lock(), total, done))
    with WorkerPool(spec, 2, None, heard, start_method=method) as pool:
        pool.run([1, 2, 4])
    assert sorted(heard.finished) == [1, 2, 4] and heard.losses == []
    assert total.value == 7
    assert sorted(done.get(timeout=60) for _ in range(3)) == [1, 2, 4]


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_process_pools_workers_warnings_reach_this_process(method: str) -> None:
    """The pool merges and the synthetic workload run their work in (ProcessPool): a
    warning its worker shows, started either way, is issued again here by the time the
    pool is shut down; one longer than a pipe keeps whole is cut short, not lost."""
    from cadstore.workers import ProcessPool

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    long = "x" * 70_000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ProcessPool(2, mp_context=multiprocessing.get_context(method)) as pool:
            done = [
                pool.submit(warnings.warn, text, UserWarning)
                for text in ("a pool worker's warning", long, "another one")
            ]
            for future in done:
                future.result()
    seen = sorted(str(w.message) for w in caught if w.category is UserWarning)
    assert seen[:2] == ["a pool worker's warning", "another one"]
    assert len(seen) == 3 and seen[2].startswith("xxx") and seen[2].endswith(" [...]")
    assert 1000 < len(seen[2]) < len(long)


#: Lets the two workers of a forked pool start warning together (inherited, as a fork).
_BOTH_WORKERS: Any = None


def _warn_many_with_the_other_worker(name: str, count: int, size: int) -> None:
    """A pool worker's task: once the other worker runs its own, warn ``count`` times,
    each text of ``size`` characters naming this task."""
    _BOTH_WORKERS.wait(timeout=120)
    for index in range(count):
        head = f"{name} {index} "
        warnings.warn(head + name[0] * (size - len(head)), UserWarning, stacklevel=1)


def test_two_process_pool_workers_warning_at_once_each_warning_arrives_whole() -> None:
    """The workers of a ProcessPool share one pipe for their warnings; two of them
    writing many records of nearly the most a pipe keeps whole, at once, interleave
    unless each record is written whole: every warning arrives, whole and unmixed."""
    from cadstore.workers import _RECORD_BYTES, ProcessPool

    global _BOTH_WORKERS
    if _RECORD_BYTES is None or "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no pipe keeping records whole, or no fork, here")
    context = multiprocessing.get_context("fork")
    size, count = _RECORD_BYTES - 512, 150
    _BOTH_WORKERS = context.Barrier(2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Forked, both workers start with the pool's first task; each then takes one.
            with ProcessPool(2, mp_context=context) as pool:
                done = [
                    pool.submit(_warn_many_with_the_other_worker, name, count, size)
                    for name in ("first", "second")
                ]
                for future in done:
                    future.result()
    finally:
        _BOTH_WORKERS = None
    seen = sorted(str(w.message) for w in caught if w.category is UserWarning)
    sent = sorted(
        f"{name} {index} ".ljust(size, name[0])
        for name in ("first", "second")
        for index in range(count)
    )
    assert len(seen) == len(sent)
    assert seen == sent


def test_a_process_pools_long_warning_outside_ascii_keeps_all_of_its_text_that_fits() -> None:
    """A worker's warning too long for one record keeps the longest start of its text
    that fits. Records were ASCII JSON, where "é" costs six bytes and a character outside
    the BMP twelve, and the text was cut by as many characters as the record had bytes
    too many: a 1,011-character "scan of 部品 éé..." arrived as " [...]". Records are
    UTF-8, cut by what the bytes allow; a lone surrogate travels as its escape."""
    import json

    from cadstore.workers import _RECORD_BYTES, ProcessPool, _warning_message

    if _RECORD_BYTES is None:
        pytest.skip("no pipe keeping records whole here: workers show their warnings")
    fits = "scan of 部品 " + "é" * 1000
    texts = [fits, "部品" * 3000, "🔩" * 2000, 'a\udcff"é🔩部' * 1000]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ProcessPool(2) as pool:
            for future in [pool.submit(warnings.warn, text, UserWarning) for text in texts]:
                future.result()
    received = {str(w.message)[:20]: w for w in caught if w.category is UserWarning}
    assert len(received) == len(texts)
    assert str(received[fits[:20]].message) == fits
    for text in texts[1:]:
        warning = received[text[:20]]
        got = str(warning.message)
        assert got.endswith(" [...]")
        kept = len(got) - len(" [...]")
        assert got == text[:kept] + " [...]" and kept > 500
        # One more character would not have fitted.
        longer = text[: kept + 1] + " [...]"
        message = _warning_message(longer, UserWarning, warning.filename, warning.lineno)
        line = json.dumps(message, ensure_ascii=False) + "\n"
        assert len(line.encode("utf-8", "backslashreplace")) > _RECORD_BYTES


def test_a_process_pool_shut_down_without_waiting_still_relays_its_workers_warnings() -> None:
    """Shut down without waiting, the executor forgets its workers at once: its relay of
    their warnings still runs until they are gone, then ends."""
    from cadstore.workers import ProcessPool

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = ProcessPool(1)
        pool.submit(warnings.warn, "issued before the pool was let go", UserWarning).result()
        pool.submit(warnings.warn, "issued as it is let go", UserWarning)
        pool.shutdown(wait=False)
        pool._relay.join()  # ends once the worker is gone and its warnings are issued
    seen = sorted(str(w.message) for w in caught if w.category is UserWarning)
    assert seen == ["issued as it is let go", "issued before the pool was let go"]


def test_logging_captured_warnings_are_each_message_once(
    doubled_json_store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by review: under ``logging.captureWarnings``, a warning repeated within one
    ``main()`` was logged again as an empty record (the repeat formatted to nothing).
    The display passes over a repeat instead: one record, the command's line."""
    import logging

    import cadstore.cli.inspect

    inspect_target = cadstore.cli.inspect.inspect_target

    def twice(*args: Any, **kwargs: Any) -> Any:
        for _ in range(2):
            warnings.warn("the same thing", CadstoreWarning, stacklevel=1)
        return inspect_target(*args, **kwargs)

    monkeypatch.setattr(cadstore.cli.inspect, "inspect_target", twice)
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings(), caplog.at_level(logging.WARNING, "py.warnings"):
            warnings.simplefilter("always", CadstoreWarning)
            assert main(["inspect", os.fspath(doubled_json_store)]) == 0
    finally:
        logging.captureWarnings(False)
    said = [r.getMessage().strip() for r in caplog.records if r.name == "py.warnings"]
    assert said.count("cadstore: warning: the same thing") == 1
    assert "" not in said


def test_a_spawned_workers_warning_made_an_error_by_the_program_stops_no_run(
    tmp_path: Path,
) -> None:
    """Found by review: a program that makes a category an error in code (not by ``-W``,
    which workers get too) had a spawned worker's warning raised in the pool's loop once
    the parent issued it again: ``cadstore encode`` stopped with ``cadstore: error: a
    worker's warning`` and encoded nothing. The worker did not know the filter, so the
    warning is shown, and the run goes on."""
    done = _encode_with_warning_workers(
        tmp_path, "spawn", 2, _PROGRAM_FILTER.format(action="error")
    )
    assert done.returncode == 0, done.stderr
    assert "encoded 2 items from 2 files" in done.stdout
    assert done.stderr.splitlines() == ["cadstore: warning: a worker's warning on two lines"]
