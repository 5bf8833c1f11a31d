"""Shared fixtures: realistic items written as real .data files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cadstore.synthetic import iter_items, write_item


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
