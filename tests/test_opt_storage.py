"""OptStorage against the conformance suite, plus its file format and lifecycle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def test_a_dtypes_metadata_is_not_kept_nor_given_to_another_array(tmp_path: Path) -> None:
    """dtypes that differ only in their metadata (h5py's enums) compare and hash equal, so
    a cached layout handed one array's dtype, metadata and all, to the next array of its
    shape. No storage keeps a dtype's metadata: the array saved is the plain type, in the
    session as after reopening."""
    from cadstore.format import zarr_nodes

    enum = np.dtype("i1", metadata={"enum": {"RED": 0, "GREEN": 1}})
    zarr_nodes.encode_array(np.zeros(7, dtype=enum), dims=["x"], attributes={}, level=3)
    _, _, meta = zarr_nodes.encode_array(np.zeros(7, "i1"), dims=["y"], attributes={}, level=3)
    assert meta.dtype.metadata is None
    with OptStorage(tmp_path / "x.zarr", summary_dir=False) as storage:
        storage.save_data("a", np.zeros(3, dtype=enum))
        storage.save_data("b", np.zeros(3, dtype="i1"))
        assert storage.load_data("a").dtype.metadata is None
        assert storage.load_data("b").dtype.metadata is None
        storage.compress_store()
    with OptStorage(tmp_path / "x.zarr") as storage:
        assert storage.load_data("a").dtype == np.dtype("i1")
