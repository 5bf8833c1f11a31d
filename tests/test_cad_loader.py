"""CADLoader: STEP, IGES and BREP files built at test time, bodies, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("OCP")

from OCP.TopAbs import TopAbs_FACE, TopAbs_SHELL

from cadstore.cad import SUPPORTED_EXTENSIONS, BrepAccess, CADLoader, CADModel, samples
from cadstore.cad._kernel import indexed_map
from cadstore.errors import CorruptStoreError

FORMATS = [".step", ".stp", ".iges", ".igs", ".brep"]


def _faces_of(brep: BrepAccess) -> list[float]:
    from cadstore.cad import BrepEncoder

    (_, areas, _, _), _ = BrepEncoder(brep).push_face_attributes()
    return sorted(areas.tolist())


# ---------------------------------------------------------------------------- formats
@pytest.mark.parametrize("suffix", FORMATS)
def test_box_round_trips_through_every_format(tmp_path: Path, suffix: str) -> None:
    path = samples.write_shape(samples.make_box(10, 20, 30), tmp_path / f"box{suffix}")
    model = CADLoader().create_from_file(path)
    assert isinstance(model, CADModel)
    assert model.num_bodies == 1
    assert model.source_path == path
    assert model.format == SUPPORTED_EXTENSIONS[suffix]
    brep = model.get_brep()
    assert (brep.num_faces, brep.num_edges, brep.num_coedges) == (6, 12, 24)
    assert _faces_of(brep) == pytest.approx([200, 200, 300, 300, 600, 600], rel=1e-6)


def test_extension_is_case_insensitive_and_str_paths_work(tmp_path: Path) -> None:
    path = samples.write_step(samples.make_cylinder(), tmp_path / "PART.STEP")
    model = CADLoader().create_from_file(str(path))
    assert model.get_brep().num_faces == 3


def test_unknown_extension_is_recognised_by_content(tmp_path: Path) -> None:
    step = samples.write_step(samples.make_box(), tmp_path / "a.step")
    renamed = step.rename(tmp_path / "a.cad")
    assert CADLoader().create_from_file(renamed).format == "step"
    brep = samples.write_brep(samples.make_box(), tmp_path / "b.brep").rename(tmp_path / "b.dat")
    assert CADLoader().create_from_file(brep).format == "brep"
    iges = samples.write_iges(samples.make_box(), tmp_path / "c.igs").rename(tmp_path / "c.x")
    assert CADLoader().create_from_file(iges).format == "iges"


def test_several_solids_give_several_bodies_in_order(tmp_path: Path) -> None:
    parts = samples.make_compound([samples.make_box(), samples.make_cylinder()])
    model = CADLoader().create_from_file(samples.write_step(parts, tmp_path / "two.step"))
    assert model.num_bodies == 2
    assert [model.get_brep(i).num_faces for i in range(2)] == [6, 3]
    assert len(model.bodies) == 2
    assert "bodies=2" in repr(model)


@pytest.mark.parametrize("suffix", [".step", ".iges", ".brep"])
def test_a_shell_without_solid_is_one_body(tmp_path: Path, suffix: str) -> None:
    shell = indexed_map(samples.make_box(), TopAbs_SHELL).FindKey(1)
    model = CADLoader().create_from_file(samples.write_shape(shell, tmp_path / f"s{suffix}"))
    assert model.num_bodies == 1
    assert model.get_brep().num_faces == 6


@pytest.mark.parametrize("suffix", [".step", ".iges", ".brep"])
def test_a_lone_face_is_one_body_without_coedges(tmp_path: Path, suffix: str) -> None:
    face = indexed_map(samples.make_box(), TopAbs_FACE).FindKey(1)
    model = CADLoader().create_from_file(samples.write_shape(face, tmp_path / f"f{suffix}"))
    brep = model.get_brep()
    assert (brep.num_faces, brep.num_coedges) == (1, 0)


def test_get_model_returns_the_last_model(tmp_path: Path) -> None:
    loader = CADLoader()
    with pytest.raises(RuntimeError, match="create_from_file"):
        loader.get_model()
    model = loader.create_from_file(samples.write_step(samples.make_box(), tmp_path / "b.step"))
    assert loader.get_model() is model
    assert ".step" in loader.supported_extensions()


# ---------------------------------------------------------------------------- body index
@pytest.fixture(scope="module")
def box_model(tmp_path_factory: pytest.TempPathFactory) -> CADModel:
    path = tmp_path_factory.mktemp("loader") / "box.step"
    return CADLoader().create_from_file(samples.write_step(samples.make_box(), path))


@pytest.mark.parametrize("index", [1, 5, -1])
def test_out_of_range_body_index_names_the_valid_range(box_model: CADModel, index: int) -> None:
    with pytest.raises(IndexError, match=r"valid: 0\)") as info:
        box_model.get_brep(index)
    assert "box.step" in str(info.value) and "1 body" in str(info.value)


def test_body_index_type(box_model: CADModel) -> None:
    assert box_model.get_brep(np.int64(0)).num_faces == 6
    with pytest.raises(TypeError, match="body_index must be an int"):
        box_model.get_brep("0")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        box_model.get_brep(True)


def test_range_message_for_several_bodies(tmp_path: Path) -> None:
    parts = samples.make_compound([samples.make_box(), samples.make_sphere(), samples.make_box()])
    model = CADLoader().create_from_file(samples.write_brep(parts, tmp_path / "three.brep"))
    with pytest.raises(IndexError, match=r"valid: 0\.\.2"):
        model.get_brep(3)


# ---------------------------------------------------------------------------- bad input
def test_missing_file_raises_file_not_found_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "part.step"
    with pytest.raises(FileNotFoundError) as info:
        CADLoader().create_from_file(missing)
    assert str(missing) in str(info.value)
    assert info.value.filename == str(missing)


def test_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder.step"
    folder.mkdir()
    with pytest.raises(IsADirectoryError):
        CADLoader().create_from_file(folder)


def test_pipes_odd_names_and_byte_order_marks_are_named(tmp_path: Path) -> None:
    """A pipe named like a CAD file blocked the loader in open() until a writer came; a
    file name that is not UTF-8 raised the kernel binding's raw TypeError; a STEP file
    behind a byte-order mark was called corrupt with no word of the mark."""
    import os
    import subprocess
    import sys

    pipe = tmp_path / "pipe.step"
    os.mkfifo(pipe)
    code = (
        "from cadstore.cad import CADLoader\n"
        "try:\n"
        f"    CADLoader().create_from_file({str(pipe)!r})\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.startswith("CorruptStoreError")
    assert f"{pipe}: not a regular file" in done.stdout
    box = samples.write_step(samples.make_box(), tmp_path / "box.step")
    odd = os.fsencode(tmp_path) + b"/caf\xe9.step"
    os.link(box, odd)
    with pytest.raises(CorruptStoreError, match="its name is not UTF-8 text"):
        CADLoader().create_from_file(os.fsdecode(odd))
    marked = tmp_path / "marked.step"
    marked.write_bytes(b"\xef\xbb\xbf" + Path(box).read_bytes())
    with pytest.raises(CorruptStoreError, match=r"byte-order mark.*remove its first 3 bytes"):
        CADLoader().create_from_file(marked)


@pytest.mark.parametrize("suffix", [".step", ".igs", ".brep"])
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(CorruptStoreError, match="empty") as info:
        CADLoader().create_from_file(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize(
    ("suffix", "kind"), [(".step", "STEP"), (".stp", "STEP"), (".igs", "IGES"), (".brep", "BREP")]
)
def test_text_file_with_a_cad_extension(tmp_path: Path, suffix: str, kind: str) -> None:
    path = tmp_path / f"notes{suffix}"
    path.write_text("Meeting notes\nthis is not a CAD file\n", encoding="utf-8")
    with pytest.raises(CorruptStoreError, match=f"not an? {kind} file") as info:
        CADLoader().create_from_file(path)
    assert "Meeting notes" in str(info.value)


def test_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "noise.step"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(CorruptStoreError, match="binary"):
        CADLoader().create_from_file(path)


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.9])
def test_truncated_step(tmp_path: Path, fraction: float) -> None:
    full = samples.write_step(samples.make_box_with_hole(), tmp_path / "full.step").read_bytes()
    path = tmp_path / "cut.step"
    path.write_bytes(full[: int(len(full) * fraction)])
    with pytest.raises(CorruptStoreError, match="truncated"):
        CADLoader().create_from_file(path)


def test_step_without_geometry(tmp_path: Path) -> None:
    path = tmp_path / "nothing.step"
    path.write_text(
        "ISO-10303-21;\nHEADER;\nFILE_DESCRIPTION((''),'2;1');\n"
        "FILE_NAME('x','2024-01-01T00:00:00',(''),(''),'','','');\n"
        "FILE_SCHEMA(('AUTOMOTIVE_DESIGN'));\nENDSEC;\nDATA;\nENDSEC;\nEND-ISO-10303-21;\n",
        encoding="utf-8",
    )
    with pytest.raises(CorruptStoreError, match="no transferable shape"):
        CADLoader().create_from_file(path)


def test_truncated_iges_and_brep(tmp_path: Path) -> None:
    box = samples.make_box()
    for suffix in (".igs", ".brep"):
        data = samples.write_shape(box, tmp_path / f"full{suffix}").read_bytes()
        path = tmp_path / f"cut{suffix}"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CorruptStoreError) as info:
            CADLoader().create_from_file(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".step", ".iges", ".brep"])
def test_file_with_no_solid(tmp_path: Path, suffix: str) -> None:
    path = samples.write_shape(samples.make_line_edge(), tmp_path / f"wire{suffix}")
    with pytest.raises(CorruptStoreError, match="no solid, shell or face"):
        CADLoader().create_from_file(path)


def test_unsupported_extension_without_cad_content(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(CorruptStoreError, match=r"unsupported file type '\.csv'"):
        CADLoader().create_from_file(path)


def test_errors_are_oserrors_for_batch_callers(tmp_path: Path) -> None:
    path = tmp_path / "x.step"
    path.write_text("nope", encoding="utf-8")
    with pytest.raises(OSError, match=r"x\.step"):
        CADLoader().create_from_file(path)


def test_loader_keeps_working_after_bad_files(tmp_path: Path) -> None:
    loader = CADLoader()
    bad = tmp_path / "bad.step"
    bad.write_text("ISO-10303-21;\nHEADER;\n", encoding="utf-8")
    with pytest.raises(CorruptStoreError):
        loader.create_from_file(bad)
    good = samples.write_step(samples.make_box(), tmp_path / "good.step")
    assert loader.create_from_file(good).get_brep().num_faces == 6


def test_kernel_messages_are_silenced_only_while_reading(tmp_path: Path) -> None:
    from OCP.Message import Message

    printers = Message.DefaultMessenger_s().Printers().Length()
    bad = tmp_path / "bad.step"
    bad.write_text("ISO-10303-21;\nHEADER;\n", encoding="utf-8")
    with pytest.raises(CorruptStoreError):
        CADLoader().create_from_file(bad)
    samples.write_step(samples.make_box(), tmp_path / "b.step")
    assert Message.DefaultMessenger_s().Printers().Length() == printers
