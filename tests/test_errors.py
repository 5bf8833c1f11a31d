"""cadstore's errors survive pickling: Dask and DataLoader workers send them back."""

from __future__ import annotations

import pickle

import pytest

from cadstore.errors import (
    CorruptStoreError,
    DatasetError,
    InvalidKeyError,
    KeyNotFoundError,
    LimitExceededError,
    MergeError,
    SchemaValidationError,
    StorageAccessError,
    StorageUnavailableError,
)

ERRORS = [
    CorruptStoreError("parts/a.zarr.data", "CRC mismatch"),
    LimitExceededError("parts/b.zarr.data", "chunk too large"),
    StorageAccessError("s3://bucket/x", "credentials refused"),
    StorageUnavailableError("s3://bucket/x", "cannot connect"),
    KeyNotFoundError("face_areas"),
    KeyNotFoundError("face_areas", "data key 'face_areas' does not exist in <item>"),
    InvalidKeyError("../escape", "'..' segment"),
    SchemaValidationError("face_areas", "float32 (n,)", "int64 (3, 2)"),
    MergeError("no readable item"),
    DatasetError("unknown group 'x'"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_round_trip_through_pickle(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, the point of the test
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__
