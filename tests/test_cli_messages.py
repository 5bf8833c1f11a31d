"""What the ``cadstore`` command line prints besides its results: warnings, errors from
the operating system, progress bars, and what it says about a folder with nothing in it.

Found by a new user's trial: warnings came out in Python's raw format (a path into
cadstore's code and a source line), errors carried ``[Errno N]``, progress bars wrote
carriage returns into logs, and ``inspect`` of an empty folder did not say it was empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import cadstore.cli.inspect
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


def _cli(
    *argv: str | os.PathLike[str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cadstore`` in a child process, with Python's default warning filters
    (the ones a user has; pytest's turn warnings into errors)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run(
        [sys.executable, "-m", "cadstore", *map(os.fspath, argv)],
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


@pytest.mark.filterwarnings("default::cadstore.errors.CadstoreWarning")
def test_each_warning_is_printed_once_and_main_restores_the_warnings_machinery(
    doubled_json_store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same warning from two places (or twice from one, under ``always``) is printed
    once per run; a multi-line message is one line. ``main()`` leaves
    ``warnings.showwarning`` and the filters as it found them, so a program (or a test)
    calling it in-process keeps its own."""
    inspect_target = cadstore.cli.inspect.inspect_target

    def noisy(*args: object, **kwargs: object) -> object:
        for _ in range(3):
            warnings.warn("the same thing", CadstoreWarning, stacklevel=1)
        warnings.warn("the same thing", CadstoreWarning, stacklevel=2)
        warnings.warn("two\n  lines", CadstoreWarning, stacklevel=1)
        return inspect_target(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cadstore.cli.inspect, "inspect_target", noisy)
    shown, filters = warnings.showwarning, list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("always", CadstoreWarning)
        assert main(["inspect", os.fspath(doubled_json_store)]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "cadstore: warning: "
        f"{doubled_json_store / 'areas_copy.json'} holds key 'areas' too; read from "
        "'areas.json', the key's own file",
        "cadstore: warning: the same thing",
        "cadstore: warning: two lines",
    ]
    assert warnings.showwarning is shown and warnings.filters == filters
    # Outside main(), the library's warnings are Python's again.
    with pytest.warns(CadstoreWarning, match="holds key 'areas' too"):
        JsonStorageHandler(doubled_json_store, read_only=True).close()
