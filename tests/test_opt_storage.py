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


class TestOptStorageWithoutWorkingDirectory(TestOptStorage):
    """``working_directory=False`` (the encoder's way) behaves the same in every respect."""

    def make_storage(self, tmp_path: Path) -> OptStorage:
        return OptStorage(tmp_path / "item.zarr", working_directory=False)

    def reopen(self, storage: DataStorage, tmp_path: Path) -> DataStorage:
        storage.compress_store()
        storage.close()
        return OptStorage(tmp_path / "item.zarr", working_directory=False)


class TestOptStorageDirectoryWithoutWorkingDirectory(TestOptStorageWithoutWorkingDirectory):
    """Closed without compress_store(), it still publishes a directory store."""

    def reopen(self, storage: DataStorage, tmp_path: Path) -> DataStorage:
        storage.close()
        return OptStorage(tmp_path / "item.zarr", working_directory=False)
