"""SIGKILL harness: a process writing items in a loop is killed at random moments, over and
over; every item name is then absent, a complete version, or refused with a clear error.

The child writes five names in turn: three as directory stores (``close()`` without
``compress_store()``, reopening the store or starting over with ``mode="w"``) and two as
``.data`` files (``mode="w"`` or ``mode="a"``). Version ``k`` of an item is derived from
``k`` alone (which arrays it has, what they hold), so a reader can tell a complete version
from a torn one. After each kill the parent reads every name; a name refused as incomplete
must be writable again with ``mode="w"``. The counts observed are printed at the end
(``pytest -s`` shows them) and kept as the test's ``user_properties``.

``CADSTORE_KILLS`` sets the number of kills (default 200, about a minute and a quarter on
two cores).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cadstore import OptStorage
from cadstore.errors import CorruptStoreError
from cadstore.io.publish import TEMP_PREFIX

KILLS = int(os.environ.get("CADSTORE_KILLS", "200"))
DIRECTORY_NAMES = ("d0", "d1", "d2")
DATA_NAMES = ("z0", "z1")

# Shared by the child and the parent: what version k of an item holds.
VERSION = textwrap.dedent(
    """
    import numpy as np

    def arrays_of(k):
        n = 2 + k % 3
        out = {f"a{i}": np.full(20_000 + 1_000 * i, k, dtype=np.int32) for i in range(n)}
        # Incompressible, so that a write takes long enough for kills to land inside it.
        out["noise"] = np.random.default_rng(k).random(150_000).astype(np.float32)
        out["g"] = {"n": k, "v": np.full(9, k, dtype=np.int64)}
        return out
    """
)

CHILD = VERSION + textwrap.dedent(
    """
    import os
    import sys

    from cadstore import OptStorage
    from cadstore.errors import CorruptStoreError

    root, start = sys.argv[1], int(sys.argv[2])
    directory_names, data_names = ("d0", "d1", "d2"), ("z0", "z1")
    names = directory_names + data_names
    print("ready", flush=True)
    k = start
    while True:
        k += 1
        name = names[k % len(names)]
        store = os.path.join(root, name + ".zarr")
        directory = name in directory_names
        mode = (None if k % 2 else "w") if directory else ("a" if k % 2 else "w")
        try:
            storage = OptStorage(store, mode=mode, summary_dir=False)
        except CorruptStoreError:
            # An earlier kill left this store incomplete: start over.
            storage = OptStorage(store, mode="w", summary_dir=False)
        for key in storage.get_keys():
            storage.delete_data(key)
        for key, value in arrays_of(k).items():
            storage.save_data(key, value)
        storage.save_metadata("version", k)
        if not directory:
            storage.compress_store()
        storage.close()
    """
)

namespace: dict[str, object] = {}
exec(VERSION, namespace)  # noqa: S102 - the constant above, shared with the child
arrays_of = namespace["arrays_of"]


def _same(a: object, b: object) -> bool:
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in b)
    if isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and np.array_equal(a, b)
    return bool(a == b)


def classify(store: Path) -> str:
    """``"absent"``, ``"complete"`` or ``"refused"``; a torn item fails the test."""
    data = Path(f"{store}.data")
    names = set(os.listdir(store)) if store.is_dir() else set()
    if not data.exists() and not names & {"zarr.json", ".zgroup", "metadata.json"}:
        return "absent"
    try:
        storage = OptStorage(store, mode="r", summary_dir=False)
    except CorruptStoreError as exc:
        refused = str(exc)
    else:
        with storage:
            k = storage.load_metadata("version")
            expected = arrays_of(k)  # type: ignore[operator]
            assert sorted(storage.get_keys()) == sorted(expected), f"{store}: torn item"
            for key, value in expected.items():
                assert _same(storage.load_data(key), value), f"{store}: {key} is torn"
            return "complete"
    assert str(store) in refused, refused
    assert "missing" in refused or "not a Zarr store" in refused, refused
    return "refused"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_items_killed_at_random_moments_are_never_torn(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    rng = random.Random(20240516)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    root = tmp_path / "items"
    root.mkdir()
    seen: Counter[str] = Counter()
    restarted = 0
    for attempt in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(attempt * 1000)],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.03, 0.25))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        for name in DIRECTORY_NAMES + DATA_NAMES:
            store = root / f"{name}.zarr"
            kind = "directory" if name in DIRECTORY_NAMES else "data"
            found = classify(store)
            seen[f"{kind} {found}"] += 1
            if found == "refused":
                # mode="w" starts over on whatever the killed writer left.
                with OptStorage(store, mode="w", summary_dir=False) as storage:
                    storage.save_metadata("version", 0)
                    for key, value in arrays_of(0).items():  # type: ignore[operator]
                        storage.save_data(key, value)
                    if kind == "data":
                        storage.compress_store()
                assert classify(store) == "complete"
                restarted += 1
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(TEMP_PREFIX)]
    counts = dict(sorted(seen.items()))
    counts["restarted with mode='w'"] = restarted
    counts["temporaries left by kills"] = len(leftovers)
    for key, value in counts.items():
        record_property(key, value)
    print(f"\n{KILLS} kills, observations per name after each: {counts}")
    assert seen["directory complete"] + seen["data complete"] > KILLS
