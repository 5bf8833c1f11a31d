"""OptStorage against the conformance suite, plus its file format and lifecycle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cadstore import OptStorage
from cadstore.errors import ReadOnlyStorageError
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


def test_a_write_to_a_published_item_says_how_to_write_it(tmp_path: Path) -> None:
    """Running the README's first block twice: ``OptStorage("items/part_001.zarr")``
    opens the published ``.data`` read-only, and ``save_data`` said "open it at a new
    path to write, or reopen the uncompressed store" (there is none). The refusal names
    the published file and the modes that write it; the file is unchanged, and the mode
    named does write it."""
    store = tmp_path / "items" / "part_001.zarr"
    with OptStorage(store) as item:
        item.save_data("face_areas", np.array([1.0, 2.0], dtype=np.float32))
        item.compress_store()
    published = tmp_path / "items" / "part_001.zarr.data"
    before = published.read_bytes()
    for mode, why in ((None, f"{published} is published"), ("r", "mode='r'")):
        with OptStorage(store, mode=mode) as item:
            for write in (
                lambda: item.save_data("face_areas", np.zeros(3, dtype=np.float32)),
                lambda: item.save_metadata("material", "steel"),
                lambda: item.delete_data("face_areas"),
            ):
                with pytest.raises(ReadOnlyStorageError) as info:
                    write()
                message = str(info.value)
                assert why in message and "mode='a'" in message and "mode='w'" in message
                assert "uncompressed store" not in message
    assert published.read_bytes() == before
    with OptStorage(store, mode="w") as item:
        item.save_data("face_areas", np.zeros(3, dtype=np.float32))
        item.compress_store()
    with OptStorage(store) as item:
        assert item.load_data("face_areas").tolist() == [0.0, 0.0, 0.0]
