"""MemoryStorage against the conformance suite, plus what only it does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cadstore import MemoryStorage
from cadstore.testing.conformance import StorageConformance


class TestMemoryStorage(StorageConformance):
    expected_format = "memory"

    def make_storage(self, tmp_path: Path) -> MemoryStorage:
        return MemoryStorage()


def test_close_clears_everything() -> None:
    storage = MemoryStorage()
    storage.save_data("face_areas", np.ones(3))
    storage.save_metadata("size_cadfile", 1)
    storage.close()
    assert storage._data == {}
    assert storage._metadata == {}


def test_file_path_message() -> None:
    storage = MemoryStorage()
    assert storage.get_file_path("face_areas") == (
        "In-memory storage: No file path for key 'face_areas'"
    )


def test_size_is_getsizeof_approximation() -> None:
    storage = MemoryStorage()
    storage.save_data("big", np.zeros(1024 * 1024, dtype=np.uint8))
    assert 1024 <= storage.load_metadata("file_sizes_KB/big") < 1025
