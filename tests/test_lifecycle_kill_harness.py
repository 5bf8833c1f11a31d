"""Real ``SIGKILL`` trials of the dataset lifecycle (slow: run with ``-m slow``).

A child process merges or appends; the parent kills it with ``SIGKILL`` at a random moment
of the operation (measured from a run that is not killed, and started once the child has
imported everything, so the kills land in the work itself). After every kill:

* a reader sees one consistent version (the old one or the new one: the infoset has one
  row per item, same names, codes 0..N-1, and the attribset reads);
* the same command run again succeeds, and afterwards the dataset, its ``.infoset``,
  ``.attribset`` and ``.flow`` agree, carry the same commit id, and no temporary file or
  lock is left.

Set ``CADSTORE_HARNESS_REPORT`` to a file path to get the tally as JSON (the figures in
``docs/reliability.md`` come from it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import cadstore
from cadstore.errors import CadstoreWarning, MergeError
from test_lifecycle import assert_settled, seen_by_a_reader

pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("CADSTORE_HARNESS_TRIALS", "60"))
_CHILD = """
import sys, json
import cadstore
inputs, output, append = json.loads(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
cadstore.merge(inputs, output, append=append)
print("done", flush=True)
"""


def _start(inputs: list[str], output: Path, append: bool) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", _CHILD, json.dumps([inputs, str(output), append])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def _go(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()


def _timed_run(inputs: list[str], output: Path, append: bool) -> float:
    child = _start(inputs, output, append)
    started = time.monotonic()
    _go(child)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    return time.monotonic() - started


def _report(name: str, tally: Counter[str]) -> None:
    where = os.environ.get("CADSTORE_HARNESS_REPORT")
    if not where:
        return
    path = Path(where)
    found = json.loads(path.read_text()) if path.exists() else {}
    found[name] = dict(tally)
    path.write_text(json.dumps(found, indent=1, sort_keys=True))


def test_appends_killed_at_random_moments(realistic_items: list[Any], tmp_path: Path) -> None:
    items = [str(p) for p, _, _ in realistic_items]
    out = tmp_path / "parts.dataset"
    names = [Path(p).name[: -len(".zarr.data")] for p in items]
    rng = random.Random(16)
    cadstore.merge(items[:5], str(out))
    duration = _timed_run(items[5:8], out, append=True)
    present = 8
    tally: Counter[str] = Counter()
    for _ in range(TRIALS):
        if present + 3 > len(items):  # start over with a fresh dataset
            cadstore.merge(items[:5], str(out), overwrite=True)
            present = 5
        batch = items[present : present + 3]
        child = _start(batch, out, append=True)
        _go(child)
        # Half the kills land anywhere, half in the second half, where the commit is.
        time.sleep(rng.uniform(0.0 if rng.random() < 0.5 else duration / 2, duration * 1.05))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        seen = seen_by_a_reader(out)
        assert seen in (names[:present], names[: present + 3])
        if child.returncode == 0:
            tally["finished before the kill"] += 1
            # Faster than the timed run (which a busy machine can slow down): aim the
            # next kills earlier, so that most trials still land in the work itself.
            duration *= 0.75
        else:
            tally[
                "killed: reader saw the new version"
                if len(seen) > present
                else "killed: reader saw the old version"
            ] += 1
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always", CadstoreWarning)
            result = cadstore.merge(batch, str(out), append=True)
        text = " ".join(str(w.message) for w in said)
        for outcome in ("rolled back", "rolled forward"):
            if outcome in text:
                tally[f"run again: {outcome}"] += 1
        if not text:
            tally["run again: nothing to recover"] += 1
        present += 3
        assert result.total_items == present
        assert_settled(out, names[:present])
    tally["trials"] = TRIALS
    _report("append", tally)
    assert (
        tally["killed: reader saw the old version"] + tally["killed: reader saw the new version"]
        >= TRIALS // 2
    ), tally


def test_first_merges_killed_at_random_moments(realistic_items: list[Any], tmp_path: Path) -> None:
    items = [str(p) for p, _, _ in realistic_items[:12]]
    names = [Path(p).name[: -len(".zarr.data")] for p in items]
    rng = random.Random(17)
    duration = _timed_run(items, tmp_path / "timed" / "parts.dataset", append=False)
    tally: Counter[str] = Counter()
    for trial in range(TRIALS // 2):
        out = tmp_path / f"t{trial}" / "parts.dataset"
        child = _start(items, out, append=False)
        _go(child)
        # Half the kills land anywhere, half in the second half, where the commit is.
        time.sleep(rng.uniform(0.0 if rng.random() < 0.5 else duration / 2, duration * 1.05))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        if out.exists():
            assert seen_by_a_reader(out) == names
            tally["killed after the commit: complete dataset"] += 1
        else:
            tally["killed before the commit: no dataset"] += 1
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always", CadstoreWarning)
            try:
                result = cadstore.merge(items, str(out))  # the same command, again
            except MergeError as exc:
                # Killed after it had finished everything (its lock released): the merge
                # is complete, and a merge over it is refused as usual.
                if "already exists" not in str(exc):
                    raise
                tally["run again: already complete"] += 1
                assert_settled(out, names)
                continue
        text = " ".join(str(w.message) for w in said)
        if "rolled back" in text:
            outcome = "rolled back"
        elif "rolled forward" in text:
            outcome = "rolled forward"
        elif "had committed" in text:
            outcome = "resumed"
        else:
            outcome = "plain merge"
        tally[f"run again: {outcome}"] += 1
        assert result.items == names
        assert_settled(out, names)
    tally["trials"] = TRIALS // 2
    _report("merge", tally)
