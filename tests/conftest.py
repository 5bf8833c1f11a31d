"""Shared fixtures (realistic items written as real .data files) and test helpers."""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cadstore.synthetic import iter_items, write_item

#: Linux 5.14 maps a range's pages in one call (``MADV_POPULATE_WRITE``).
needs_populate_write = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or tuple(int(p) for p in os.uname().release.split("-")[0].split(".")[:2]) < (5, 14),
    reason="MADV_POPULATE_WRITE needs Linux 5.14",
)


def page_faults_writing(write: Callable[[], object]) -> int:
    """The page faults this process takes while ``write()`` runs."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    write()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def write_items(
    directory: Path, n: int, seed: int = 0, schema: Any = None, start: int = 0
) -> list[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """Write ``n`` realistic items as ``.data`` files; return (path, item, metadata)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, item, meta in iter_items(n, seed=seed, start=start):
        path = write_item(directory / f"{name}.zarr", item, meta, schema=schema)
        out.append((Path(path), item, meta))
    return out


@pytest.fixture(scope="session")
def realistic_items(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Any, Any]]:
    """Thirty realistic items, written once per test session."""
    return write_items(tmp_path_factory.mktemp("items") / "encoded", 30, seed=11)
