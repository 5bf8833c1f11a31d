"""Vendor user code run with the package name replaced by ``cadstore``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

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


def test_push_facegrid_of_older_task_code_stores_face_uv_grids(tmp_path: Path) -> None:
    # The reference: push_face_discretization replaces push_facegrid(ugrid=5, vgrid=5),
    # which produced face_uv_grids (N_f, U, V, 7). Task code written for it still runs.
    pytest.importorskip("OCP")
    from cadstore.cad import samples
    from cadstore.cadaccess import HOOPSLoader
    from cadstore.cadencoder import BrepEncoder
    from cadstore.storage import MemoryStorage

    step = samples.write_step(samples.make_box_with_hole(), tmp_path / "part.step")
    brep = HOOPSLoader().create_from_file(str(step)).get_brep()
    storage = MemoryStorage()
    encoder = BrepEncoder(brep, storage)
    assert encoder.push_facegrid() == "face_uv_grids"
    grids = storage.load_data("face_uv_grids")
    n_faces = brep.num_faces
    assert grids.shape == (n_faces, 5, 5, 7) and grids.dtype == np.float32
    assert storage.get_group_for_array("face_uv_grids") == "faces"
    # The same samples as push_face_discretization's 5 x 5 grid, u-major.
    encoder.push_face_discretization(pointsamples=25)
    flat = storage.load_data("face_discretization")
    np.testing.assert_array_equal(grids.reshape(n_faces, 25, 7), flat)
    # Without a storage the array is returned; ugrid and vgrid may differ.
    bare = BrepEncoder(brep).push_facegrid(ugrid=3, vgrid=4)
    assert isinstance(bare, np.ndarray) and bare.shape == (n_faces, 3, 4, 7)
    assert set(np.unique(bare[..., 6])) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="vgrid"):
        BrepEncoder(brep).push_facegrid(vgrid=0)


def test_float32_values_are_written_as_the_specification_shows_them(tmp_path: Path) -> None:
    # The specification: save_data("face_areas", np.array([1.5, 2.3, 4.1], dtype=float32))
    # is "Saved as: face_areas.json -> [1.5, 2.3, 4.1]" and loads back as float32.
    storage = JsonStorageHandler(str(tmp_path / "json_data"))
    areas = np.array([1.5, 2.3, 4.1], dtype=np.float32)
    storage.save_data("face_areas", areas)
    storage.save_data("count", np.float32(0.1))
    storage.save_data("waves", np.array([0.1 + 0.2j], dtype=np.complex64))
    doc = json.loads((tmp_path / "json_data" / "face_areas.json").read_text())
    assert doc["value"]["data"] == [1.5, 2.3, 4.1]
    assert json.loads((tmp_path / "json_data" / "count.json").read_text())["value"]["scalar"] == 0.1
    waves = json.loads((tmp_path / "json_data" / "waves.json").read_text())["value"]["data"]
    assert waves == [{"real": 0.1, "imag": 0.2, "_numpy_complex": True}]
    # Still lossless: the same bits come back, special values included.
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.standard_normal(2000) * 10.0 ** rng.integers(-44, 38, 2000),
            [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 3.4028235e38],
        ]
    ).astype(np.float32)
    halves = np.clip(values, -60000, 60000).astype(np.float16)
    storage.save_data("values", values)
    storage.save_data("halves", halves)
    reopened = JsonStorageHandler(str(tmp_path / "json_data"))
    for key, expected in [("values", values), ("halves", halves)]:
        loaded = reopened.load_data(key)
        assert loaded.dtype == expected.dtype
        assert loaded.tobytes() == expected.tobytes()
    assert reopened.load_data("count") == np.float32(0.1)
    # Every finite float16, each through its shortest decimal, comes back bit for bit.
    every = np.arange(1 << 16, dtype="<u2").view(np.float16)
    every = every[np.isfinite(every)]
    storage.save_data("every_half", every)
    loaded = JsonStorageHandler(str(tmp_path / "json_data")).load_data("every_half")
    assert loaded.tobytes() == every.tobytes()


def test_set_attributes_after_store_info_to_parquet_reaches_the_attribset(
    tmp_path: Path,
) -> None:
    # The reference: set_attributes(metadata, table_name) writes categorical tables; in a
    # custom merge task it may well come after store_info_to_parquet().
    import pandas as pd

    from cadstore.storage import DatasetInfo

    summary = tmp_path / "files_summary"
    summary.mkdir()
    for name in ("a_0", "b_0"):
        (summary / f"{name}.json").write_text(json.dumps({"size_cadfile": 10}))
    info = DatasetInfo(
        info_files=sorted(str(p) for p in summary.iterdir()),
        merged_store_path=str(tmp_path / "x.infoset"),
        attribute_file_path=str(tmp_path / "x.attribset"),
    )
    info.parse_info_files()
    info.build_code_mappings([str(tmp_path / "a_0.data"), str(tmp_path / "b_0.data")])
    info.store_info_to_parquet()
    info.set_attributes({0: "bracket", 1: "shaft"}, "part_label")
    table = pd.read_parquet(tmp_path / "x.attribset")
    rows = table[table["table_name"] == "part_label"]
    assert rows[["id", "name"]].values.tolist() == [[0, "bracket"], [1, "shaft"]]
