"""Vendor user code run with the package name replaced by ``cadstore``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cadstore.storage.datastorage import JsonStorageHandler


def test_a_complex_array_written_as_the_specification_shows_loads_as_complex(
    tmp_path: Path,
) -> None:
    # The specification: complex_data saved as [{"real": 1.0, "imag": 2.0, "_numpy_complex":
    # true}, ...]; a folder the specified system wrote holds the plain list.
    folder = tmp_path / "json_data"
    folder.mkdir()
    (folder / "complex_data.json").write_text(
        json.dumps(
            [
                {"real": 1.0, "imag": 2.0, "_numpy_complex": True},
                {"real": 3.0, "imag": 4.0, "_numpy_complex": True},
            ]
        )
    )
    (folder / "nested.json").write_text(
        json.dumps({"z": [[{"real": 0.5, "imag": -1.0, "_numpy_complex": True}]]})
    )
    storage = JsonStorageHandler(str(folder))
    loaded = storage.load_data("complex_data")
    assert loaded.dtype == np.complex128
    np.testing.assert_array_equal(loaded, np.array([1 + 2j, 3 + 4j]))
    nested = storage.load_data("nested")["z"]
    assert nested.dtype == np.complex128 and nested.shape == (1, 1)
    assert nested[0, 0] == 0.5 - 1j
