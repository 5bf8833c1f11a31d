"""OptStorage against the conformance suite, plus its file format and lifecycle."""

from __future__ import annotations

from pathlib import Path

from cadstore import OptStorage
from cadstore.storage.base import DataStorage
from cadstore.testing.conformance import StorageConformance


class TestOptStorage(StorageConformance):
    expected_format = "zarr"

    def make_storage(self, tmp_path: Path) -> OptStorage:
        return OptStorage(tmp_path / "item.zarr")

    def reopen(self, storage: DataStorage, tmp_path: Path) -> DataStorage:
        storage.compress_store()
        storage.close()
        return OptStorage(tmp_path / "item.zarr")


class TestOptStorageV2(TestOptStorage):
    def make_storage(self, tmp_path: Path) -> OptStorage:
        return OptStorage(tmp_path / "item.zarr", zarr_format=2)


class TestOptStorageDirectory(TestOptStorage):
    """Closing without compress_store() keeps a Zarr directory that reopens writable."""

    def reopen(self, storage: DataStorage, tmp_path: Path) -> DataStorage:
        storage.close()
        return OptStorage(tmp_path / "item.zarr")
