"""JsonStorageHandler against the conformance suite, plus its file layout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cadstore import JsonStorageHandler
from cadstore.errors import CorruptStoreError, KeyConflictError, KeyNotFoundError
from cadstore.io.publish import TEMP_PREFIX
from cadstore.storage.base import DataStorage, NodeStorage
from cadstore.testing.conformance import StorageConformance, assert_same
from fuzzing import FUZZ_SETTINGS, json_values


class TestJsonStorage(StorageConformance):
    expected_format = "json"

    def make_storage(self, tmp_path: Path) -> JsonStorageHandler:
        return JsonStorageHandler(tmp_path / "json_output")

    def reopen(self, storage: DataStorage, tmp_path: Path) -> DataStorage:
        storage.close()
        return JsonStorageHandler(tmp_path / "json_output")


def test_layout_is_one_readable_file_per_key(tmp_path: Path) -> None:
    storage = JsonStorageHandler(tmp_path)
    storage.save_data("face_areas", np.array([1.5, 2.3, 4.1], dtype=np.float32))
    storage.save_data("face/normals", np.zeros((2, 3)))
    storage.save_data("metadata", {"part_name": "Bracket_V2", "num_features": 42})
    storage.save_metadata("export_timestamp", "2025-10-30T10:30:00")
    names = sorted(os.listdir(tmp_path))
    assert names == ["face_areas.json", "face_normals.json", "metadata.data.json", "metadata.json"]
    doc = json.loads((tmp_path / "face_areas.json").read_text())
    assert doc["key"] == "face_areas"
    assert doc["value"]["data"] == [1.5, 2.3, 4.1]  # float32 written as its shortest text
    assert doc["value"]["__numpy__"] == "<f4"
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["export_timestamp"] == "2025-10-30T10:30:00"
    assert "file_sizes_KB" in meta
    data = json.loads((tmp_path / "metadata.data.json").read_text())
    assert data["value"] == {"part_name": "Bracket_V2", "num_features": 42}


def test_nan_and_complex_encoding_is_strict_json(tmp_path: Path) -> None:
    storage = JsonStorageHandler(tmp_path)
    storage.save_data("c", np.array([1 + 2j, 3 + 4j]))
    storage.save_data("f", np.array([np.nan, np.inf, -np.inf, 1.0]))
    text = (tmp_path / "c.json").read_text()
    assert '"_numpy_complex": true' in text
    assert '"real": 1.0' in text
    raw = (tmp_path / "f.json").read_text()
    json.loads(raw, parse_constant=lambda name: pytest.fail(f"non-standard token {name}"))
    assert '"NaN"' in raw
    assert '"-Infinity"' in raw


def test_sanitised_name_collision_is_refused(tmp_path: Path) -> None:
    storage = JsonStorageHandler(tmp_path)
    storage.save_data("face/areas", np.ones(2))
    with pytest.raises(KeyConflictError, match="face/areas"):
        storage.save_data("face_areas", np.zeros(2))
    assert_same(storage.load_data("face/areas"), np.ones(2))
    with pytest.raises(KeyConflictError):
        storage.save_data("face.areas", np.zeros(2))


def test_files_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = JsonStorageHandler(tmp_path)
    storage.save_data("x", np.arange(3))
    before = (tmp_path / "x.json").read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        storage.save_data("x", np.arange(1000))
    monkeypatch.undo()
    assert (tmp_path / "x.json").read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(TEMP_PREFIX)]


def test_reads_plain_json_from_other_tools(tmp_path: Path) -> None:
    (tmp_path / "face_areas.json").write_text("[1.5, 2.3, 4.1]")
    (tmp_path / "info.json").write_text(
        '{"version": "1.0", "c": {"real": 1, "imag": 2, "_numpy_complex": true}}'
    )
    storage = JsonStorageHandler(tmp_path)
    assert_same(storage.load_data("face_areas"), np.array([1.5, 2.3, 4.1]))
    assert storage.load_data("info") == {"version": "1.0", "c": 1 + 2j}


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"key": "broken", "value": [1, 2')
    with pytest.raises(CorruptStoreError, match=r"broken\.json"):
        JsonStorageHandler(tmp_path)


def test_path_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(CorruptStoreError, match="not a directory"):
        JsonStorageHandler(target)


def test_read_only(tmp_path: Path) -> None:
    JsonStorageHandler(tmp_path).save_data("a", 1)
    ro = JsonStorageHandler(tmp_path, read_only=True)
    assert ro.load_data("a") == 1
    with pytest.raises(PermissionError):
        ro.save_data("b", 2)


def test_get_file_path(tmp_path: Path) -> None:
    storage = JsonStorageHandler(tmp_path)
    storage.save_data("graph", {"n": 1})
    assert storage.get_file_path("face/areas") == str(tmp_path / "face_areas.json")
    assert storage.get_file_path("graph/n") == str(tmp_path / "graph.json")


# ---------------------------------------------------------------------------- fuzzing
_TAGS = st.sampled_from(
    ["<f4", "<i1", "|u1", "<c16", "str", "|b1", "<U3", "<U999999999", "|V8", "O", "<M8", "x"]
)


def _tagged(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.fixed_dictionaries(
            {
                "__numpy__": _TAGS | inner,
                "shape": st.lists(inner, max_size=3) | inner,
                "data": inner,
            }
        ),
        st.fixed_dictionaries({"__numpy__": _TAGS | inner, "scalar": inner}),
        st.fixed_dictionaries({"__float__": st.sampled_from(["NaN", "Infinity", "x"]) | inner}),
        st.fixed_dictionaries({"__dict__": inner}),
        st.fixed_dictionaries({"real": inner, "imag": inner, "_numpy_complex": inner}),
    )


def _read_all(directory: Path) -> None:
    with JsonStorageHandler(directory) as storage:
        for key in storage.get_keys():
            storage.load_data(key)


@FUZZ_SETTINGS
@given(value=json_values(extend=_tagged), envelope=st.booleans())
def test_any_json_file_reads_as_data_or_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory, value: Any, envelope: bool
) -> None:
    """Whatever JSON a key's file holds: a value, or a corrupt-store error naming it."""
    tmp = tmp_path_factory.mktemp("fuzzjson")
    doc = {"key": "x", "value": value} if envelope else value
    (tmp / "x.json").write_text(json.dumps(doc))
    errors: list[CorruptStoreError] = []
    try:
        _read_all(tmp)
    except CorruptStoreError as exc:
        errors.append(exc)
    assert all("x.json" in str(e) for e in errors)


def test_declared_array_bomb_is_refused_before_allocating(tmp_path: Path) -> None:
    # Three elements of a 100-million-character string dtype would take 1.2 GB.
    (tmp_path / "bomb.json").write_text(
        json.dumps(
            {
                "key": "bomb",
                "value": {"__numpy__": "<U100000000", "shape": [3], "data": ["a", "b", "c"]},
            }
        )
    )
    with (
        JsonStorageHandler(tmp_path) as storage,
        pytest.raises(CorruptStoreError, match=r"bomb\.json.*exceeds"),
    ):
        storage.load_data("bomb")


def test_metadata_that_only_looks_tagged_is_kept(tmp_path: Path) -> None:
    doc = {"odd": {"__float__": ["x"]}, "box": {"__dict__": 3}, "nan": {"__float__": "NaN"}}
    (tmp_path / "metadata.json").write_text(json.dumps(doc))
    with JsonStorageHandler(tmp_path) as storage:
        got = storage.load_metadata()
    assert got["odd"] == {"__float__": ["x"]} and got["box"] == {"__dict__": 3}
    assert np.isnan(got["nan"])


@pytest.mark.parametrize(
    "value",
    [
        {"__numpy__": "<f4", "shape": [], "data": 3.4028235677973366e38},
        {"__numpy__": "<f4", "scalar": 1e300},
        {"__numpy__": "|u1", "scalar": -1},
        {"__numpy__": "<i2", "shape": [2], "data": [1, 70000]},
    ],
)
def test_values_that_do_not_fit_their_dtype_are_refused(tmp_path: Path, value: Any) -> None:
    # Silently wrapping, or turning a finite number into inf, would change the data.
    (tmp_path / "x.json").write_text(json.dumps({"key": "x", "value": value}))
    with (
        JsonStorageHandler(tmp_path) as storage,
        pytest.raises(CorruptStoreError, match=r"x\.json"),
    ):
        storage.load_data("x")


def test_two_files_of_one_key_read_the_keys_own_file(tmp_path: Path) -> None:
    """A copy of a key's file (``face_areas_old.json``, same envelope key) made the store
    load the copy after reopening: the last file in sorted order won, silently. The key's
    own file wins now, with a warning naming the other; two files neither of which is the
    key's own are refused, naming both."""
    import shutil
    import warnings

    from cadstore.errors import CadstoreWarning, CorruptStoreError

    store = tmp_path / "js"
    first = JsonStorageHandler(str(store))
    first.save_data("face_areas", np.array([1.0, 2.0]))
    first.close()
    shutil.copy(store / "face_areas.json", store / "face_areas_old.json")
    with pytest.warns(CadstoreWarning, match="face_areas_old.json holds key 'face_areas'"):
        again = JsonStorageHandler(str(store))
    np.testing.assert_array_equal(again.load_data("face_areas"), [1.0, 2.0])
    again.save_data("face_areas", np.array([7.0, 8.0, 9.0]))
    again.close()
    with pytest.warns(CadstoreWarning, match="face_areas_old.json holds key 'face_areas'"):
        reopened = JsonStorageHandler(str(store), read_only=True)
    np.testing.assert_array_equal(reopened.load_data("face_areas"), [7.0, 8.0, 9.0])
    assert reopened.get_keys() == ["face_areas"]
    (store / "face_areas.json").rename(store / "face_areas_new.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CorruptStoreError, match="neither is the key's own file") as refused:
            JsonStorageHandler(str(store), read_only=True)
    assert "face_areas_old.json" in str(refused.value) and "face_areas_new.json" in str(
        refused.value
    )


@pytest.mark.parametrize("new", [{"b": np.arange(5), "d": 1}, np.arange(4.0)])
def test_a_writer_killed_before_removing_the_keys_a_save_replaced_leaves_them_unread(
    tmp_path: Path, new: Any
) -> None:
    """Saving ``a`` over ``a/b`` and ``a/c`` writes ``a.json``, then removes the files of
    ``a/b`` and ``a/c``; a writer killed in between left them, and a reopened storage
    read ``a/b`` as its old value beside the new ``a`` (and ``a/c``, which ``a`` had
    replaced). They are now ignored, and removed by the next save of ``a`` (not by a
    writable open, which removes nothing)."""
    import multiprocessing

    where = tmp_path / "store"
    storage = JsonStorageHandler(where)
    storage.save_data("a/b", np.arange(3))
    storage.save_data("a/c", np.arange(2))

    def killed() -> None:
        storage._fs.remove = lambda path: os._exit(137)  # type: ignore[method-assign]
        storage.save_data("a", new)
        os._exit(0)

    child = multiprocessing.get_context("fork").Process(target=killed)
    child.start()
    child.join(60)
    assert child.exitcode == 137
    assert sorted(os.listdir(where)) == ["a.json", "a_b.json", "a_c.json", "metadata.json"]
    with JsonStorageHandler(where, read_only=True) as reader:
        assert_same(reader.load_data("a"), new, "a")
        assert reader.get_keys() == ["a"]
        assert "a/c" not in reader
        if isinstance(new, dict):
            assert_same(reader.load_data("a/b"), new["b"], "a/b")
    assert sorted(os.listdir(where)) == ["a.json", "a_b.json", "a_c.json", "metadata.json"]
    with JsonStorageHandler(where) as writer:
        assert_same(writer.load_data("a"), new, "a")
    assert sorted(os.listdir(where)) == ["a.json", "a_b.json", "a_c.json", "metadata.json"]
    with JsonStorageHandler(where) as writer:
        writer.save_data("a", new)
    assert sorted(os.listdir(where)) == ["a.json", "metadata.json"]


def test_a_plain_json_file_dropped_in_the_folder_removes_no_saved_key(tmp_path: Path) -> None:
    """A file of another tool (no envelope: its stem is its key) named like the parent of
    saved keys (config.json beside config/lr): the leftover cleanup of a killed save took
    it for the newer file of a save over those keys, and a writable open deleted the
    saved keys' files, which nothing of cadstore had replaced. Only a file this storage
    wrote makes the files below it leftovers."""
    where = tmp_path / "store"
    with JsonStorageHandler(where) as storage:
        storage.save_data("config/lr", np.array([0.5]))
    (where / "config.json").write_text('{"batch": 8}')
    with JsonStorageHandler(where) as writer:
        assert_same(writer.load_data("config/lr"), np.array([0.5]), "config/lr")
    assert sorted(os.listdir(where)) == ["config.json", "config_lr.json", "metadata.json"]


def _kb(path: Path) -> float:
    return round(path.stat().st_size / 1024.0, 3)


@pytest.mark.parametrize("key", ["face_areas", "graph/a", "faces"])
def test_a_kill_during_a_delete_leaves_no_size_for_data_that_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """``delete_data`` removed the key's file, then wrote ``metadata.json`` without its
    size: a writer killed in between left a size for data that was gone. The size goes
    first now; killed after the data is gone, the store records no size for it, and the
    rest is all there. A key that is not there is refused before anything changes."""
    where = tmp_path / "store"
    storage = JsonStorageHandler(where)
    storage.save_data("face_areas", np.arange(3.0))
    storage.save_data("graph", {"a": np.arange(2), "n": 3})
    storage.save_data("faces/ids", np.arange(4))
    before = (where / "metadata.json").read_bytes()
    with pytest.raises(KeyNotFoundError, match="nope"):
        storage.delete_data("nope")
    assert (where / "metadata.json").read_bytes() == before
    real = storage._delete_node

    def killed_after(target: str) -> None:
        real(target)
        raise KeyboardInterrupt("killed after the data went")

    monkeypatch.setattr(storage, "_delete_node", killed_after)
    with pytest.raises(KeyboardInterrupt):
        storage.delete_data(key)
    with JsonStorageHandler(where, read_only=True) as reopened:
        assert key not in reopened
        sizes = reopened.load_metadata("file_sizes_KB")
        node: Any = sizes
        for part in key.split("/")[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        assert not (isinstance(node, dict) and key.split("/")[-1] in node), sizes
        gone = {key, f"{key}/ids"}
        for kept in {"face_areas", "graph/n", "faces/ids"} - gone:
            assert kept in reopened, kept


@pytest.mark.parametrize("case", ["replaced", "new", "inside_a_dict", "over_a_group"])
def test_sizes_are_those_on_disk_after_a_kill_before_the_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """``save_data`` publishes the key's file, then ``metadata.json`` with its size: a
    writer killed in between left ``file_sizes_KB`` claiming the old size (or none) for a
    file on disk. A reopened storage now records the size of the file it holds, in
    memory; a writable one writes it to ``metadata.json`` with its first change (not
    when it opens); the saved data is all there."""
    where = tmp_path / "store"
    storage = JsonStorageHandler(where)
    storage.save_data("face_areas", np.arange(3.0))
    storage.save_data("graph", {"a": np.arange(2), "n": 3})
    storage.save_data("faces/ids", np.arange(4))
    storage.save_metadata("author", "me")
    key, value = {
        "replaced": ("face_areas", np.arange(2000.0)),
        "new": ("edges", np.arange(700)),
        "inside_a_dict": ("graph/b", np.arange(900)),
        "over_a_group": ("faces", np.arange(800.0)),
    }[case]
    before = (where / "metadata.json").read_bytes()

    def killed(doc: dict[str, Any]) -> None:
        raise KeyboardInterrupt("killed before metadata.json")

    monkeypatch.setattr(storage, "_write_metadata_document", killed)
    with pytest.raises(KeyboardInterrupt):
        storage.save_data(key, value)
    assert (where / "metadata.json").read_bytes() == before  # the kill's state on disk
    # Each file's key, and its file (the size of a dict's file is recorded at its key).
    sized = {"face_areas": "face_areas.json", "graph": "graph.json"}
    if case == "over_a_group":
        sized["faces"] = "faces.json"
    else:
        sized["faces/ids"] = "faces_ids.json"
    if case == "new":
        sized["edges"] = "edges.json"
    for read_only in (True, False):
        with JsonStorageHandler(where, read_only=read_only) as reopened:
            for size_key, name in sized.items():
                recorded = reopened.load_metadata(f"file_sizes_KB/{size_key}")
                assert recorded == _kb(where / name), (read_only, size_key)
            assert_same(reopened.load_data(key), value, key)
            assert_same(reopened.load_data("graph/a"), np.arange(2), "graph/a")
            assert reopened.load_metadata("author") == "me"
            if case != "over_a_group":
                assert_same(reopened.load_data("faces/ids"), np.arange(4), "faces/ids")
            if case != "replaced":
                assert_same(reopened.load_data("face_areas"), np.arange(3.0), "face_areas")
        # Opening (and closing) writes nothing, writable or not.
        assert (where / "metadata.json").read_bytes() == before
        if not read_only:  # the first change writes the corrected sizes
            with JsonStorageHandler(where) as writer:
                writer.save_metadata("touched", 1)
            on_disk = json.loads((where / "metadata.json").read_text())["file_sizes_KB"]
            for size_key, name in sized.items():
                node = on_disk
                for part in size_key.split("/"):
                    node = node[part]
                assert node == _kb(where / name), size_key


# Tagged values a metadata.json can hold where a size record belongs: a NaN saved as
# metadata, and a dict whose key looks like a tag (kept wrapped in "__dict__").
_TAGGED_SIZES = [float("nan"), {"__build__": 1}]


@pytest.mark.parametrize("backend", ["json", "opt"])
@pytest.mark.parametrize("tagged", _TAGGED_SIZES, ids=["nan", "wrapped_dict"])
def test_save_data_replaces_a_tagged_size_record_instead_of_writing_into_it(
    tmp_path: Path, backend: str, tagged: Any
) -> None:
    """``NodeStorage._record_size`` set ``file_sizes_KB/graph/a`` by writing into
    whatever dict it found at ``file_sizes_KB/graph``: a tagged value there (not a size
    section) came out as ``{"__float__": "NaN", "a": ...}``, neither a size nor a section.
    It is replaced by a section now, as the JSON store's check on open replaces it; the
    other sizes, the metadata and the data are all kept."""
    from cadstore import OptStorage

    where = tmp_path / "store"
    storage: NodeStorage = JsonStorageHandler(where) if backend == "json" else OptStorage(where)
    storage.save_data("face_areas", np.arange(3.0))
    storage.save_metadata("author", "me")
    storage.save_metadata("file_sizes_KB/graph", tagged)
    face_size = storage.load_metadata("file_sizes_KB/face_areas")
    storage.save_data("graph/a", np.arange(4))
    recorded = storage.load_metadata("file_sizes_KB/graph")
    assert list(recorded) == ["a"], recorded
    assert recorded["a"] > 0
    assert storage.load_metadata("file_sizes_KB/face_areas") == face_size
    assert storage.load_metadata("author") == "me"
    assert_same(storage.load_data("graph/a"), np.arange(4), "graph/a")
    assert_same(storage.load_data("face_areas"), np.arange(3.0), "face_areas")
    if backend == "json":
        on_disk = json.loads((where / "metadata.json").read_text())["file_sizes_KB"]
        assert on_disk["graph"] == {"a": _kb(where / "graph_a.json")}
    storage.close()


@pytest.mark.parametrize("tagged", _TAGGED_SIZES, ids=["nan", "wrapped_dict"])
def test_the_check_on_open_replaces_a_tagged_size_record(tmp_path: Path, tagged: Any) -> None:
    """The JSON store's check of its sizes on open (``_true_sizes``) sets a size with the
    same helper as ``save_data``: a tagged value found where the size of a dict file
    (``graph``) or the sizes of a group of files (``faces``) belong is replaced by them;
    the other metadata and the data are kept."""
    from cadstore.format.jsoncodec import encode_metadata

    where = tmp_path / "store"
    with JsonStorageHandler(where) as storage:
        storage.save_data("graph", {"a": np.arange(2), "n": 3})
        storage.save_data("faces/ids", np.arange(4))
        storage.save_metadata("author", "me")
    doc = json.loads((where / "metadata.json").read_text())
    doc["file_sizes_KB"]["graph"] = encode_metadata("x", tagged)
    doc["file_sizes_KB"]["faces"] = encode_metadata("x", tagged)
    (where / "metadata.json").write_text(json.dumps(doc))
    want = {"graph": _kb(where / "graph.json"), "faces": {"ids": _kb(where / "faces_ids.json")}}
    with JsonStorageHandler(where, read_only=True) as reopened:
        assert reopened.load_metadata("file_sizes_KB") == want
        assert reopened.load_metadata("author") == "me"
        assert_same(reopened.load_data("faces/ids"), np.arange(4), "faces/ids")
        assert_same(reopened.load_data("graph/a"), np.arange(2), "graph/a")
    with JsonStorageHandler(where) as writer:
        writer.save_metadata("touched", 1)
    on_disk = json.loads((where / "metadata.json").read_text())
    assert on_disk["file_sizes_KB"] == want
    assert on_disk["author"] == "me"


def _stale_sizes_store(where: Path) -> None:
    """A store whose ``metadata.json`` the check on open corrects: the size recorded for
    ``graph/b`` is that of ``graph.json`` before ``graph/c`` was added, as cadstore left
    it before a save into a dict file recorded the file's size for all its entries."""
    with JsonStorageHandler(where) as storage:
        storage.save_data("face_areas", np.arange(3.0))
        storage.save_data("graph", {"a": np.arange(3)})
        storage.save_data("graph/b", np.arange(300))
        old_kb = _kb(where / "graph.json")
        storage.save_data("graph/c", np.arange(300))
        storage.save_metadata("author", "me")
    doc = json.loads((where / "metadata.json").read_text())
    assert doc["file_sizes_KB"]["graph"]["b"] != old_kb
    doc["file_sizes_KB"]["graph"]["b"] = old_kb
    (where / "metadata.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("case", ["clean", "needs_mending"])
def test_opening_writable_and_closing_writes_nothing(tmp_path: Path, case: str) -> None:
    """A writable open rewrote ``metadata.json`` when its check on open corrected a size,
    which with a second process writing the store could replace that writer's newer
    ``metadata.json``. An open and a close with no change now leave it byte for byte and
    its mtime as they were; the storage reports the corrected sizes meanwhile, and its
    first change (here ``save_metadata``) writes them, the rest of the metadata kept."""
    where = tmp_path / "store"
    _stale_sizes_store(where)
    meta = where / "metadata.json"
    if case == "clean":
        with JsonStorageHandler(where) as storage:
            storage.save_metadata("touched", 0)  # writes the corrected sizes
    before = meta.read_bytes()
    os.utime(meta, ns=(1_000_000_000, 1_000_000_000))
    graph_kb = _kb(where / "graph.json")
    with JsonStorageHandler(where) as storage:
        assert storage.load_metadata("file_sizes_KB/graph") == {"b": graph_kb, "c": graph_kb}
        assert storage.load_metadata("author") == "me"
        assert_same(storage.load_data("graph/b"), np.arange(300), "graph/b")
    assert meta.read_bytes() == before
    assert meta.stat().st_mtime_ns == 1_000_000_000
    stored = json.loads(before)["file_sizes_KB"]["graph"]
    assert (stored == {"b": graph_kb, "c": graph_kb}) == (case == "clean")
    with JsonStorageHandler(where) as storage:
        storage.save_metadata("touched", 1)
    doc = json.loads(meta.read_text())
    assert doc["file_sizes_KB"]["graph"] == {"b": graph_kb, "c": graph_kb}
    assert doc["file_sizes_KB"]["face_areas"] == _kb(where / "face_areas.json")
    assert (doc["author"], doc["touched"]) == ("me", 1)


@pytest.mark.parametrize("read_only", [True, False])
def test_opening_queries_no_files_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_only: bool
) -> None:
    """The scan of the directory queried each file's size (against the limit on what it
    parses), and the check of the recorded sizes queried it again: two HEAD requests per
    file to open a store on S3. The scan took one out; the read of each file now gives
    its size too (it is bounded instead, see ``test_a_file_over_the_limit_is_refused``):
    no query of a size, counted through the file system's ``size``, for a store whose
    sizes need correcting (so that the check looks at every file) and whose data all
    reads back."""
    from cadstore.io.filesystems import LocalFileSystem

    where = tmp_path / "store"
    _stale_sizes_store(where)
    with JsonStorageHandler(where) as storage:
        storage.save_data("faces/ids", np.arange(4))
        storage.save_data("faces/n", 7)
    calls: dict[str, int] = {}
    real = LocalFileSystem.size

    def counted(self: LocalFileSystem, path: str) -> int:
        calls[os.path.basename(path)] = calls.get(os.path.basename(path), 0) + 1
        return real(self, path)

    monkeypatch.setattr(LocalFileSystem, "size", counted)
    with JsonStorageHandler(where, read_only=read_only) as storage:
        sizes = storage.load_metadata("file_sizes_KB")
        assert calls == {}, calls
        assert sizes["graph"] == {"b": _kb(where / "graph.json"), "c": _kb(where / "graph.json")}
        assert sizes["faces"] == {
            "ids": _kb(where / "faces_ids.json"),
            "n": _kb(where / "faces_n.json"),
        }
        assert_same(storage.load_data("faces/ids"), np.arange(4), "faces/ids")
        assert_same(storage.load_data("graph/c"), np.arange(300), "graph/c")


def test_a_file_written_before_the_check_is_sized_as_written(tmp_path: Path) -> None:
    """The check of the sizes runs when the metadata is first read, which for a writable
    storage may be after its first save has rewritten a file the scan sized: the size
    it records for that file is the new one, not the scan's."""
    where = tmp_path / "store"
    _stale_sizes_store(where)
    with JsonStorageHandler(where) as storage:
        storage.save_data("graph/d", np.arange(500))  # rewrites graph.json first
    graph_kb = _kb(where / "graph.json")
    on_disk = json.loads((where / "metadata.json").read_text())["file_sizes_KB"]
    assert on_disk["graph"] == {"b": graph_kb, "c": graph_kb, "d": graph_kb}
    with JsonStorageHandler(where, read_only=True) as reopened:
        assert_same(reopened.load_data("graph/d"), np.arange(500), "graph/d")
        assert reopened.load_metadata("author") == "me"


@pytest.mark.parametrize("change", ["save", "save_again", "delete", "delete_from_a_saved_dict"])
def test_a_change_inside_a_dict_file_records_its_size_for_every_entry(
    tmp_path: Path, change: str
) -> None:
    """Saving ``graph/c`` into ``graph.json`` recorded the new size of the file at
    ``graph/c`` only: the size recorded for ``graph/b``, held in the same file, stayed
    that of the file before. Every open corrected it in memory and the next change wrote
    it, unless that change was another save into the file, so ordinary use left sizes an
    open would correct, again and again. A change inside a dict file now records the
    file's new size for each entry it holds: a reopened storage has nothing to correct,
    and a change of its own writes the sizes as they were."""
    where = tmp_path / "store"
    with JsonStorageHandler(where) as storage:
        storage.save_data("face_areas", np.arange(3.0))
        storage.save_data("graph", {"a": np.arange(3)})
        storage.save_data("graph/b", np.arange(300))
        storage.save_data("graph/c", np.arange(300))
        if change == "save_again":
            storage.save_data("graph/b", np.arange(600))
        elif change == "delete":
            storage.save_data("graph/d", np.arange(900))
            storage.delete_data("graph/d")
        elif change == "delete_from_a_saved_dict":
            storage.save_data("graph", {"a": np.arange(3), "b": np.arange(900)})
            storage.delete_data("graph/b")
    graph_kb = _kb(where / "graph.json")
    doc = json.loads((where / "metadata.json").read_text())
    if change == "delete_from_a_saved_dict":
        assert doc["file_sizes_KB"]["graph"] == graph_kb
    else:
        assert doc["file_sizes_KB"]["graph"] == {"b": graph_kb, "c": graph_kb}
    with JsonStorageHandler(where) as reopened:
        assert reopened.load_metadata("file_sizes_KB") == doc["file_sizes_KB"]
        reopened.save_metadata("touched", 1)
    again = json.loads((where / "metadata.json").read_text())
    assert again.pop("touched") == 1
    assert again == doc


def test_a_file_over_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file is read once, with no size query first; a file over the limit on what
    the store parses is refused, named, whether the scan at open or a load meets it, and
    unread: its size is known once it is open (a 4 GiB file used to be read up to the
    limit, 256 MiB, before it was refused). A file within the limit reads whole."""
    from cadstore.io import filesystems
    from cadstore.storage import json_handler

    where = tmp_path / "store"
    with JsonStorageHandler(where) as storage:
        storage.save_data("small", 1)
        storage.save_data("big", np.arange(200))
    limit = (where / "small.json").stat().st_size
    read: list[int] = []
    real = filesystems._read_up_to

    def counted(fh: Any, nbytes: int, *, first: int | None = None) -> bytes:
        data = real(fh, nbytes, first=first)
        read.append(len(data))
        return data

    monkeypatch.setattr(filesystems, "_read_up_to", counted)
    monkeypatch.setattr(json_handler, "MAX_JSON_BYTES", limit)
    with pytest.raises(CorruptStoreError, match=rf"big\.json.*{limit} byte limit"):
        JsonStorageHandler(where, read_only=True)
    assert all(n <= limit for n in read)  # the big file was not read
    (where / "big.json").unlink()
    with JsonStorageHandler(where, read_only=True) as reader:
        assert reader.load_data("small") == 1


def test_a_change_inside_a_dict_file_reads_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting a key inside a dict file read that file twice (once to find the key,
    once to rewrite it: two GETs on an object store), and saving a key two levels into
    one read it once more per level. Each change now reads it once; the values and the
    other keys are what they should be, in this storage and a reopened one."""
    from cadstore.io.filesystems import LocalFileSystem

    where = tmp_path / "store"
    storage = JsonStorageHandler(where)
    storage.save_data("graph", {"a": np.arange(2), "x": {"y": 1}, "n": 3})
    read: list[str] = []
    real = LocalFileSystem.read_limited

    def counted(self: LocalFileSystem, path: str, limit: int) -> bytes | None:
        read.append(os.path.basename(path))
        return real(self, path, limit)

    monkeypatch.setattr(LocalFileSystem, "read_limited", counted)
    for change in (
        lambda: storage.delete_data("graph/a"),
        lambda: storage.save_data("graph/x/z/w", np.arange(3)),
        lambda: storage.delete_data("graph/x/z/w"),
        lambda: storage.save_data("graph/x/y", 2),
    ):
        read.clear()
        change()
        assert read == ["graph.json"]
    with pytest.raises(KeyNotFoundError, match="graph/b"):
        storage.delete_data("graph/b")
    expected = {"x": {"y": 2, "z": {}}, "n": 3}
    assert_same(storage.load_data("graph"), expected, "graph")
    monkeypatch.undo()
    with JsonStorageHandler(where, read_only=True) as reopened:
        assert_same(reopened.load_data("graph"), expected, "graph")


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    """A 4 GiB file (sparse) among a store's files is refused at open without reading
    it: the process does not grow by the limit's 256 MiB."""
    import resource

    where = tmp_path / "store"
    with JsonStorageHandler(where) as storage:
        storage.save_data("a", 1)
    with open(where / "big.json", "wb") as fh:
        fh.truncate(4 * 1024**3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CorruptStoreError, match=r"big\.json.*byte limit"):
        JsonStorageHandler(where, read_only=True)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024


def _store_with_leftovers(where: Path, top: str = "a") -> dict[str, bytes]:
    """A store whose ``a.json`` (``<top>.json``) shadows the files of ``a/b`` and ``a/c``
    a save of ``a`` replaced, as a writer killed before removing them leaves it; return
    its files."""
    with JsonStorageHandler(where) as storage:
        storage.save_data(f"{top}/b", np.arange(3))
        storage.save_data(f"{top}/c", np.arange(2))
        storage.save_data("x/y", np.arange(5))
        old = {name: (where / name).read_bytes() for name in (f"{top}_b.json", f"{top}_c.json")}
        storage.save_data(top, {"b": np.arange(5), "d": 1})
    for name, data in old.items():
        (where / name).write_bytes(data)
    return _files(where)


def _files(where: Path) -> dict[str, bytes]:
    return {name: (where / name).read_bytes() for name in sorted(os.listdir(where))}


def test_a_writable_open_removes_no_file(tmp_path: Path) -> None:
    """A writable open removed the files of keys below another stored file (leftovers
    of a save killed before removing them): opening a store deleted files. It leaves
    every file byte for byte now, reads the newer file all the same, and so does a
    change elsewhere in the store (``x/z``, metadata)."""
    where = tmp_path / "store"
    files = _store_with_leftovers(where)
    assert {"a_b.json", "a_c.json"} <= set(files)
    with JsonStorageHandler(where) as writer:
        assert_same(writer.load_data("a/b"), np.arange(5), "a/b")
        assert "a/c" not in writer
    assert _files(where) == files
    with JsonStorageHandler(where) as writer:
        writer.save_data("x/z", 1)
        writer.save_metadata("touched", 1)
    after = _files(where)
    assert {name: after[name] for name in files if name != "metadata.json"} == {
        name: data for name, data in files.items() if name != "metadata.json"
    }


@pytest.mark.parametrize(
    "change", ["save_into", "save_over", "delete_inside", "delete", "same_name"]
)
def test_a_change_to_the_newer_file_removes_the_leftovers_below_it(
    tmp_path: Path, change: str
) -> None:
    """The leftovers a writable open no longer removes go with the first change that
    writes or removes the file that shadows them (the change supersedes them): never
    after it, so that deleting ``a`` cannot bring back the old ``a/b`` and ``a/c``. A
    key saved to a leftover's file name (``a_b``) takes the file over: it is kept."""
    where = tmp_path / "store"
    assert {"a_b.json", "a_c.json"} <= set(_store_with_leftovers(where))
    with JsonStorageHandler(where) as writer:
        if change == "save_into":
            writer.save_data("a/e", 2)
        elif change == "save_over":
            writer.save_data("a", np.arange(4))
        elif change == "delete_inside":
            writer.delete_data("a/d")
        elif change == "delete":
            writer.delete_data("a")
        elif change == "same_name":
            writer.save_data("a_b", 7)
            writer.delete_data("a")
    names = set(os.listdir(where))
    assert "a_c.json" not in names
    assert ("a_b.json" in names) == (change == "same_name")
    assert {"x_y.json", "metadata.json"} <= names
    assert ("a.json" in names) == (change not in ("delete", "same_name"))
    with JsonStorageHandler(where, read_only=True) as reader:
        assert "a/c" not in reader
        if change in ("delete", "same_name"):
            assert "a" not in reader
            assert "a/b" not in reader
        elif change == "save_over":
            assert_same(reader.load_data("a"), np.arange(4), "a")
            assert "a/b" not in reader
        else:
            assert_same(reader.load_data("a/b"), np.arange(5), "a/b")
        if change == "same_name":
            assert reader.load_data("a_b") == 7
        assert_same(reader.load_data("x/y"), np.arange(5), "x/y")


@pytest.mark.parametrize("change", ["save", "delete"])
def test_a_change_above_the_newer_file_removes_the_leftovers_below_it(
    tmp_path: Path, change: str
) -> None:
    """Leftovers below ``g/a`` (whose file shadows them) go with a save or delete of
    ``g``, which replaces or removes ``g/a``: they never come back as ``g/a/b``."""
    where = tmp_path / "store"
    with JsonStorageHandler(where) as storage:
        storage.save_data("g/a/b", np.arange(3))
        old = (where / "g_a_b.json").read_bytes()
        storage.save_data("g/a", {"c": 1})
    (where / "g_a_b.json").write_bytes(old)
    with JsonStorageHandler(where) as writer:
        assert "g/a/b" not in writer
        if change == "save":
            writer.save_data("g", 5)
        else:
            writer.delete_data("g")
    assert sorted(os.listdir(where)) == (
        ["g.json", "metadata.json"] if change == "save" else ["metadata.json"]
    )
    with JsonStorageHandler(where, read_only=True) as reader:
        assert "g/a/b" not in reader
        assert "g/a" not in reader


def test_repair_removes_the_leftovers_and_writes_the_corrected_sizes(tmp_path: Path) -> None:
    """A store never changed again kept its leftover files (ignored, removed only by a
    change superseding them) and the wrong sizes in ``metadata.json`` (corrected in
    memory only) for ever. ``repair`` removes the one and writes the other, once, on a
    writable storage; every value and the user's metadata read the same, and a storage
    with nothing to repair writes nothing."""
    from cadstore.errors import ReadOnlyStorageError

    where = tmp_path / "store"
    files = _store_with_leftovers(where)
    doc = json.loads(files["metadata.json"])
    doc["file_sizes_KB"]["x"]["y"] = 12345.0  # as a writer killed before it left it
    doc["user"] = {"note": "mine"}
    (where / "metadata.json").write_text(json.dumps(doc))
    files = _files(where)
    with JsonStorageHandler(where, read_only=True) as reader:
        values = {key: reader.load_data(key) for key in ("a", "x")}
        metadata = reader.load_metadata()
        with pytest.raises(ReadOnlyStorageError):
            reader.repair()
    assert _files(where) == files
    assert metadata["file_sizes_KB"]["x"]["y"] == _kb(where / "x_y.json")
    with JsonStorageHandler(where) as writer:
        done = writer.repair()
        assert done == [
            "removed a_b.json, a_c.json: files of keys below 'a' that a.json replaced (a "
            "save interrupted before removing them)",
            "metadata.json: the sizes recorded corrected to the files' sizes",
        ]
        assert writer.repair() == []
    after = _files(where)
    assert sorted(after) == sorted(set(files) - {"a_b.json", "a_c.json"})
    assert {n: after[n] for n in after if n != "metadata.json"} == {
        n: files[n] for n in after if n != "metadata.json"
    }
    assert json.loads(after["metadata.json"]) == metadata  # as the reader corrected it
    with JsonStorageHandler(where) as writer:
        assert writer.repair() == []
        for key, value in values.items():
            assert_same(writer.load_data(key), value, key)
        assert writer.load_metadata() == metadata
    assert _files(where) == after


def test_the_cli_repairs_a_json_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``cadstore repair`` took every path for a dataset: a JSON store's folder was "not a
    Zarr store" (exit 2), and its leftovers and wrong sizes stayed. It now runs the
    store's own repair and prints what it did, then "nothing to repair"; every value and
    the user's metadata read the same. A pipe among the store's files is an error naming
    it, read by no one."""
    from cadstore.cli import main

    where = tmp_path / "store"
    _store_with_leftovers(where)
    doc = json.loads((where / "metadata.json").read_text())
    doc["file_sizes_KB"]["x"]["y"] = 12345.0  # as a writer killed before it left it
    doc["user"] = {"note": "mine"}
    (where / "metadata.json").write_text(json.dumps(doc))
    with JsonStorageHandler(where, read_only=True) as reader:
        values = {key: reader.load_data(key) for key in ("a", "x")}
        metadata = reader.load_metadata()
    capsys.readouterr()
    assert main(["repair", str(where)]) == 0
    said = capsys.readouterr()
    assert said.err == ""
    assert said.out.splitlines() == [
        "removed a_b.json, a_c.json: files of keys below 'a' that a.json replaced (a "
        "save interrupted before removing them)",
        "metadata.json: the sizes recorded corrected to the files' sizes",
    ]
    assert sorted(os.listdir(where)) == ["a.json", "metadata.json", "x_y.json"]
    assert json.loads((where / "metadata.json").read_text()) == metadata
    files = _files(where)
    assert main(["repair", f"{where}/"]) == 0
    assert capsys.readouterr().out == f"{where}/: nothing to repair\n"
    assert _files(where) == files
    with JsonStorageHandler(where, read_only=True) as reader:
        for key, value in values.items():
            assert_same(reader.load_data(key), value, key)
        assert reader.load_metadata() == metadata
    os.mkfifo(where / "pipe.json")
    assert main(["repair", str(where)]) == 2
    said = capsys.readouterr()
    assert said.out == "" and f"{where}: 'pipe.json' is not a regular file" in said.err


def test_the_cli_repairs_a_json_store_with_a_key_named_zarr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSON store's key ``zarr`` is its file ``zarr.json``, which ``cadstore repair``
    took for a Zarr store's root document: the store was no JSON store to it, and was
    refused as a malformed dataset (exit 2), its leftovers kept. ``zarr.json`` there is the
    store's envelope of key ``zarr``, no Zarr metadata: the store is repaired as a JSON
    store, and every value reads as before."""
    from cadstore.cli import main

    where = tmp_path / "store"
    _store_with_leftovers(where, top="zarr")
    assert json.loads((where / "zarr.json").read_text())["key"] == "zarr"
    with JsonStorageHandler(where, read_only=True) as reader:
        values = {key: reader.load_data(key) for key in ("zarr", "x")}
    kept = {n: b for n, b in _files(where).items() if n in ("zarr.json", "x_y.json")}
    capsys.readouterr()
    assert main(["repair", str(where)]) == 0
    said = capsys.readouterr()
    assert said.err == ""
    assert said.out.splitlines()[0] == (
        "removed zarr_b.json, zarr_c.json: files of keys below 'zarr' that zarr.json "
        "replaced (a save interrupted before removing them)"
    )
    assert sorted(os.listdir(where)) == ["metadata.json", "x_y.json", "zarr.json"]
    assert {n: b for n, b in _files(where).items() if n != "metadata.json"} == kept
    with JsonStorageHandler(where, read_only=True) as reader:
        for key, value in values.items():
            assert_same(reader.load_data(key), value, key)
    assert main(["repair", str(where)]) == 0
    assert capsys.readouterr().out == f"{where}: nothing to repair\n"


@pytest.mark.parametrize(
    "kind", ["foreign metadata", "item directory", "damaged item directory", "plain json"]
)
def test_the_cli_repairs_no_folder_that_is_not_a_json_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """Only a folder a JsonStorageHandler marked by a save (its ``metadata.json``
    records ``file_sizes_KB``) is repaired as a JSON store: a folder of another tool's
    JSON files, with a ``metadata.json`` of its own or none, and an item's directory
    (whose ``metadata.json`` records sizes too), even one whose ``zarr.json`` does not
    read (it is no JSON store's file of key ``zarr``), are what they were to ``cadstore
    repair``, no dataset, and nothing in them is written."""
    from cadstore import OptStorage
    from cadstore.cli import main

    where = tmp_path / "folder"
    if kind.endswith("item directory"):
        with OptStorage(where) as storage:
            storage.save_data("face_areas", np.arange(3, dtype=np.float32))
        assert "file_sizes_KB" in json.loads((where / "metadata.json").read_text())
        if kind.startswith("damaged"):
            (where / "zarr.json").write_text('{"zarr_format": 3, "node_')
    else:
        where.mkdir()
        (where / "points.json").write_text("[1, 2, 3]")
        if kind == "foreign metadata":
            (where / "metadata.json").write_text('{"tool": "other"}')
    files = {p: p.read_bytes() for p in where.rglob("*") if p.is_file()}
    assert main(["repair", str(where)]) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err.startswith(f"cadstore: error: {where}: ")
    assert "nothing to repair" not in said.err
    assert {p: p.read_bytes() for p in where.rglob("*") if p.is_file()} == files
    assert not Path(f"{where}.lock").exists()


def test_a_save_queries_no_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each save asked the size of the file it had just written (a stat here, a HEAD
    request on S3, see ``test_a_json_save_queries_no_size`` there) to record it, though
    the bytes written were known. No save queries a size now, counted through the file
    system's ``size``; the sizes recorded are those of the files, which a reopened
    storage finds nothing to correct in, and every value loads back."""
    from cadstore.io.filesystems import LocalFileSystem

    calls: list[str] = []
    real = LocalFileSystem.size

    def counted(self: LocalFileSystem, path: str) -> int:
        calls.append(os.path.basename(path))
        return real(self, path)

    monkeypatch.setattr(LocalFileSystem, "size", counted)
    where = tmp_path / "store"
    with JsonStorageHandler(where) as storage:
        storage.save_data("face_areas", np.arange(3.0))
        storage.save_data("graph", {"a": np.arange(2)})
        storage.save_data("graph/b", np.arange(300))
        storage.save_data("faces/ids", np.arange(4))
        storage.save_data("faces/n", 7)
    assert calls == []
    doc = json.loads((where / "metadata.json").read_text())
    graph_kb = _kb(where / "graph.json")
    assert doc["file_sizes_KB"] == {
        "face_areas": _kb(where / "face_areas.json"),
        "graph": {"b": graph_kb},
        "faces": {"ids": _kb(where / "faces_ids.json"), "n": _kb(where / "faces_n.json")},
    }
    with JsonStorageHandler(where, read_only=True) as reopened:
        assert reopened.load_metadata("file_sizes_KB") == doc["file_sizes_KB"]
        assert_same(reopened.load_data("face_areas"), np.arange(3.0), "face_areas")
        assert_same(reopened.load_data("graph"), {"a": np.arange(2), "b": np.arange(300)}, "g")
        assert_same(reopened.load_data("faces"), {"ids": np.arange(4), "n": 7}, "faces")


@pytest.mark.parametrize("key", ["graph/b", "graph/sub/x", "graph/a"])
def test_a_delete_inside_a_dict_file_writes_the_metadata_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """Deleting a key with a size of its own inside a dict file wrote ``metadata.json``
    twice: once without the key's size, then again, after the dict file, with the file's
    new size for its other entries. It is written once now, before the dict file (as for
    any delete, so that a writer killed in between leaves no size for data that is
    gone), with both changes; for a key without a size of its own too (``graph/a``,
    saved with the dict). Counted at the publication of each file; the key is gone,
    every other key is intact, and a reopened storage loads the same and has no size to
    correct."""
    from cadstore.storage import json_handler

    where = tmp_path / "store"
    graph: dict[str, Any] = {"a": np.arange(2), "sub": {"y": "two"}}
    with JsonStorageHandler(where) as storage:
        storage.save_data("face_areas", np.arange(3.0))
        storage.save_data("graph", graph)
        # Saved into graph.json: each has a size record of its own.
        for name, value in {"b": np.arange(900), "sub/x": 1, "c": np.arange(300)}.items():
            storage.save_data(f"graph/{name}", value)
        published: list[str] = []
        real = json_handler.write_bytes_atomic

        def counted(location: Any, data: bytes, **kw: Any) -> int:
            published.append(os.path.basename(location.path))
            return real(location, data, **kw)

        monkeypatch.setattr(json_handler, "write_bytes_atomic", counted)
        storage.delete_data(key)
        assert published == ["metadata.json", "graph.json"]
        assert key not in storage
    graph.update(b=np.arange(900), c=np.arange(300), sub={"x": 1, "y": "two"})
    if key == "graph/sub/x":
        del graph["sub"]["x"]
    else:
        del graph[key.split("/")[1]]
    graph_kb = _kb(where / "graph.json")
    sizes = {"b": graph_kb, "sub": {"x": graph_kb}, "c": graph_kb}
    if key == "graph/b":
        del sizes["b"]
    elif key == "graph/sub/x":
        sizes["sub"] = {}
    doc = json.loads((where / "metadata.json").read_text())
    assert doc["file_sizes_KB"] == {"face_areas": _kb(where / "face_areas.json"), "graph": sizes}
    with JsonStorageHandler(where, read_only=True) as reopened:
        assert key not in reopened
        assert reopened.load_metadata("file_sizes_KB") == doc["file_sizes_KB"]
        assert_same(reopened.load_data("face_areas"), np.arange(3.0), "face_areas")
        assert_same(reopened.load_data("graph"), graph, "graph")
