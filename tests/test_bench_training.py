"""``bench/bench_training.py`` keeps working: builds, bit-for-bit checks and measures.

The benchmark runs as the command its page documents, at a tiny size, in a subprocess
(``tests/datasets.py`` would shadow Hugging Face's ``datasets`` in this process). No
timing is asserted: only that every contender is built from the same items, that a
contender returning different bytes fails the run, and that every measure gives a result
for every contender.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Looked up, not imported: importing lance registers an at-fork hook that warns in every
# later fork of this process (and the suite turns warnings into errors).
for _module in ("torch", "lance", "pyarrow"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"{_module} is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_training.py"
ITEMS = 12


def _hf_installed() -> bool:
    done = subprocess.run(
        [sys.executable, "-c", "import datasets; datasets.load_from_disk"],
        cwd=ROOT / "bench",
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


if not _hf_installed():
    pytest.skip("Hugging Face datasets is not installed", allow_module_level=True)


def _bench(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--items",
            str(ITEMS),
            "--repeats",
            "1",
            "--samples",
            "4",
            "--batches",
            "2",
            "--workdir",
            str(workdir),
            *args,
        ],
        cwd=ROOT / "bench",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-training")


def _results(done: subprocess.CompletedProcess[str], path: Path) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, Any] = json.loads(path.read_text())
    return results


def test_contenders_are_built_alike_and_read_back(workdir: Path) -> None:
    out = workdir / "fast.json"
    done = _bench(workdir, "--measures", "item,batch,inprocess", "--json", str(out))
    results = _results(done, out)
    # lance, hf, npy and cadstore with its cache off, against cadstore
    assert results["verified_items"] == 4 * min(8, ITEMS)
    for name in ("cadstore", "lance", "hf", "npy"):
        assert results["builds"][name]["bytes"] > 0
        assert results["builds"][name]["build_s"] > 0
    for measure in ("item", "batch", "inprocess"):
        for variant in ("all", "graph"):
            cells = results["summary"][measure][variant]
            assert {"cadstore", "lance", "hf", "npy"} <= set(cells)
    rates = results["raw"]["inprocess"]["all"]
    assert {r[0]["items"] for r in rates.values()} == {results["train_items"]}


def test_a_contender_with_other_bytes_fails_the_run(workdir: Path) -> None:
    first = _bench(workdir, "--measures", "item")  # builds, or reuses the first test's
    assert first.returncode == 0, first.stderr[-3000:]
    (npy,) = workdir.glob("training-*/npy")
    victims = sorted(npy.glob("*/faces.face_areas.npy"))  # the run checks a sample
    originals = [victim.read_bytes() for victim in victims]
    for victim in victims:
        np.save(victim, np.load(victim) + np.float32(1))
    try:
        done = _bench(workdir, "--measures", "item")
    finally:
        for victim, original in zip(victims, originals, strict=True):
            victim.write_bytes(original)
    assert done.returncode != 0
    assert "BenchError" in done.stderr and "face_areas" in done.stderr


@pytest.mark.slow
def test_every_measure_including_dataloaders(workdir: Path) -> None:
    out = workdir / "all.json"
    results = _results(_bench(workdir, "--json", str(out)), out)
    for variant in ("all", "graph"):
        cells = results["summary"]["dataloader"][variant]
        assert {"cadstore", "lance", "hf", "npy"} <= set(cells)
        for cell in cells.values():
            assert cell["items_per_s"] > 0
            # CPU per item: the training process's and its reaped workers', both at work.
            assert cell["cpu_per_item_ms"] > cell["workers_cpu_per_item_ms"] > 0
            # Split into user and system time, each a median of its own: on this test's few
            # items a worker's user time can be under the kernel's accounting tick (0).
            assert cell["workers_user_cpu_per_item_ms"] >= 0
            assert cell["workers_system_cpu_per_item_ms"] >= 0
        # Each contender's first epoch in the process, once, before the repeats.
        first = results["raw"]["dataloader_first"][variant]
        assert set(first) == {"cadstore", "lance", "hf", "npy"}
        assert all(len(epochs) == 1 and epochs[0]["items"] > 0 for epochs in first.values())
