"""The conformance suite every storage backend passes unchanged.

Subclass :class:`StorageConformance` in a test module and provide two hooks::

    class TestMyStorage(StorageConformance):
        expected_format = "mine"

        def make_storage(self, tmp_path):
            return MyStorage(tmp_path / "store")

        def reopen(self, storage, tmp_path):
            storage.close()
            return MyStorage(tmp_path / "store")   # or None if nothing persists

Capabilities are read from the storage (``allows_nan``) or declared on the subclass
(``expected_format``), and the few tests that depend on them branch on them.

The suite needs ``pytest`` and ``hypothesis``; it is imported by test modules only.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cadstore.errors import (
    InvalidDataError,
    InvalidKeyError,
    KeyConflictError,
    KeyNotFoundError,
    SchemaError,
    SchemaValidationError,
    StorageClosedError,
    UnsupportedTypeError,
)
from cadstore.storage.base import NodeStorage
from cadstore.storage.values import values_equal

__all__ = [
    "ALL_DTYPES",
    "BAD_KEYS",
    "UNSTORABLE_KEYS",
    "StorageConformance",
    "assert_same",
    "node_trees",
]

ALL_DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
]
SHAPES = [(), (0,), (1,), (7,), (3, 4), (0, 3), (2, 3, 4), (2, 1, 2, 3)]

#: Valid keys no data may be saved under: their files would meet a store's own documents.
UNSTORABLE_KEYS = [
    "graph/zarr.json",
    "zarr.json",
    "a/.zarray",
    ".zgroup",
    ".zmetadata",
    "metadata.json",
    "metadata.json/x",
]

BAD_KEYS = [
    "",
    "/absolute",
    "../escape",
    "a/../../b",
    "..",
    ".",
    "a//b",
    "trailing/",
    "nul\x00byte",
    "control\x01char",
    "tab\tchar",
    "back\\slash",
    "C:drive",
    "__reserved",
    "ok/__reserved",
    "x" * 2000,
]


def assert_same(actual: Any, expected: Any, where: str = "value") -> None:
    """Assert that two stored values are identical: types, dtypes, shapes and contents."""
    if not values_equal(actual, expected):
        raise AssertionError(
            f"{where} differs:\n  got      {_show(actual)}\n  expected {_show(expected)}"
        )


def _show(v: Any) -> str:
    if isinstance(v, np.ndarray | np.generic):
        return f"{type(v).__name__} dtype={v.dtype} shape={np.shape(v)} {np.asarray(v)!r}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {_show(x)}" for k, x in v.items()) + "}"
    return f"{type(v).__name__} {v!r}"


def _sample_array(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    if dt.kind == "b":
        data = rng.integers(0, 2, n).astype(bool)
    elif dt.kind in "iu":
        info = np.iinfo(dt)
        data = rng.integers(info.min, info.max, n, dtype=dt, endpoint=True)
    elif dt.kind == "f":
        data = (rng.standard_normal(n) * 100).astype(dt)
    else:
        data = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dt)
    return data.reshape(shape)


_segment = st.text(
    alphabet=st.characters(min_codepoint=48, max_codepoint=122, categories=("L", "N")),
    min_size=1,
    max_size=6,
)
_leaf = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    st.lists(st.text(min_size=0, max_size=5), min_size=1, max_size=4),
    st.sampled_from(ALL_DTYPES).flatmap(
        lambda dt: st.sampled_from(SHAPES).map(lambda sh: _sample_array(dt, sh, seed=len(sh)))
    ),
)


def node_trees(max_leaves: int = 12) -> st.SearchStrategy[dict[str, Any]]:
    """Hypothesis strategy for nested dicts of storable leaves."""
    return st.recursive(
        st.dictionaries(_segment, _leaf, min_size=1, max_size=4),
        lambda children: st.dictionaries(
            _segment, st.one_of(_leaf, children), min_size=1, max_size=3
        ),
        max_leaves=max_leaves,
    )


class StorageConformance:
    """Behaviour shared by every :class:`~cadstore.storage.base.NodeStorage` backend."""

    #: What ``format()`` must return.
    expected_format: ClassVar[str] = ""

    # ------------------------------------------------------------------ hooks
    def make_storage(self, tmp_path: Path) -> NodeStorage:
        """Return a new, empty, writable storage rooted under ``tmp_path``."""
        raise NotImplementedError

    def reopen(self, storage: NodeStorage, tmp_path: Path) -> NodeStorage | None:
        """Close ``storage`` and return a new handle on what it persisted, or ``None``."""
        return None

    @pytest.fixture
    def storage(self, tmp_path: Path) -> Any:
        """A fresh storage, closed after the test."""
        s = self.make_storage(tmp_path)
        yield s
        s.close()

    def roundtrip(self, tmp_path: Path, key: str, value: Any) -> Any:
        """Save into a fresh storage, load, and reload after reopening when it persists.

        Returns the value as finally loaded. Each call uses its own directory.
        """
        self._rt_count = getattr(self, "_rt_count", 0) + 1
        where = tmp_path / f"roundtrip-{self._rt_count}"
        where.mkdir()
        storage = self.make_storage(where)
        try:
            storage.save_data(key, value)
            first = storage.load_data(key)
            again = self.reopen(storage, where)
        finally:
            storage.close()
        if again is None:
            return first
        with again:
            second = again.load_data(key)
        assert_same(second, first, f"{key!r} after reopening")
        return second

    # ------------------------------------------------------------------ basics
    def test_format(self, storage: NodeStorage) -> None:
        assert storage.format() == self.expected_format

    def test_repr_names_class_and_state(self, storage: NodeStorage) -> None:
        text = repr(storage)
        assert type(storage).__name__ in text
        storage.close()
        assert ("closed" in repr(storage)) == storage.close_is_final

    def test_empty_storage(self, storage: NodeStorage) -> None:
        assert storage.get_keys() == []
        assert "anything" not in storage
        assert storage.get_schema() == {}

    @pytest.mark.parametrize("dtype", ALL_DTYPES)
    @pytest.mark.parametrize("shape", SHAPES, ids=str)
    def test_array_roundtrip(
        self, storage: NodeStorage, tmp_path: Path, dtype: str, shape: tuple[int, ...]
    ) -> None:
        arr = _sample_array(dtype, shape, seed=3)
        assert_same(self.roundtrip(tmp_path, "arr", arr), arr)

    @pytest.mark.parametrize("dtype", ALL_DTYPES)
    def test_numpy_scalar_roundtrip(self, storage: NodeStorage, tmp_path: Path, dtype: str) -> None:
        value = _sample_array(dtype, (1,), seed=5)[0]
        assert isinstance(value, np.generic)
        assert_same(self.roundtrip(tmp_path, "scalar", value), value)

    @pytest.mark.parametrize(
        "value",
        [
            0,
            -(2**63),
            2**63 - 1,
            42,
            True,
            False,
            0.0,
            -1.5,
            1e300,
            2.5e-310,
            float("inf"),
            float("-inf"),
            1 + 2j,
            complex(0, -0.5),
        ],
        ids=repr,
    )
    def test_python_scalar_roundtrip(
        self, storage: NodeStorage, tmp_path: Path, value: Any
    ) -> None:
        assert_same(self.roundtrip(tmp_path, "num_faces", value), value)

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "High-complexity CAD part",
            "unicode: Größe ∅ 零件 🚀",
            "a" * 10_000,
            "quotes \" and ' and \\ backslash\nnewline",
        ],
        ids=lambda v: repr(v)[:20],
    )
    def test_string_roundtrip(self, storage: NodeStorage, tmp_path: Path, value: str) -> None:
        assert_same(self.roundtrip(tmp_path, "description", value), value)

    def test_strings_keep_nul_and_trailing_characters(self, tmp_path: Path) -> None:
        # numpy's fixed-width "U" dtype drops trailing NULs; stored strings must not.
        for value in ("\x00", "end\x00", "\x00\x00mid\x00", "trailing space "):
            assert_same(self.roundtrip(tmp_path, "s", value), value)
        assert_same(self.roundtrip(tmp_path, "l", ["a\x00", "\x00"]), ["a\x00", "\x00"])

    def test_list_of_strings_roundtrip(self, storage: NodeStorage, tmp_path: Path) -> None:
        value = ["bracket", "", "Größe", "零件"]
        assert_same(self.roundtrip(tmp_path, "tags", value), value)
        assert_same(self.roundtrip(tmp_path, "tup", ("a", "b")), ["a", "b"])

    def test_string_arrays(self, storage: NodeStorage, tmp_path: Path) -> None:
        u = np.array([["a", "bc"], ["Größe", ""]])
        got = self.roundtrip(tmp_path, "u", u)
        assert got.dtype.kind == "U"
        assert got.shape == (2, 2)
        assert got.tolist() == u.tolist()
        o = np.array(["x", "yz"], dtype=object)
        got = self.roundtrip(tmp_path, "o", o)
        assert got.dtype.kind == "U"
        assert got.tolist() == ["x", "yz"]

    def test_lists_become_arrays(self, storage: NodeStorage, tmp_path: Path) -> None:
        assert_same(self.roundtrip(tmp_path, "ints", [1, 2, 3]), np.array([1, 2, 3]))
        assert_same(
            self.roundtrip(tmp_path, "nested", [[1.0, 2.0], [3.0, 4.0]]),
            np.array([[1.0, 2.0], [3.0, 4.0]]),
        )
        assert_same(self.roundtrip(tmp_path, "bools", (True, False)), np.array([True, False]))

    def test_nested_dict_roundtrip(self, storage: NodeStorage, tmp_path: Path) -> None:
        graph: dict[str, Any] = {
            "edges_source": np.array([0, 1, 2], dtype=np.int32),
            "edges_destination": np.array([1, 2, 3], dtype=np.int32),
            "num_nodes": 4,
            "deeper": {"name": "g", "weights": np.ones((2, 2), dtype=np.float32)},
        }
        got = self.roundtrip(tmp_path, "graph", graph)
        assert_same(got, graph)
        storage.save_data("graph", graph)
        assert storage.load_data("graph/num_nodes") == 4
        assert_same(storage.load_data("graph/deeper/weights"), graph["deeper"]["weights"])
        assert storage.get_keys() == ["graph"]

    def test_empty_dict_is_allowed(self, storage: NodeStorage) -> None:
        storage.save_data("group", {"inner": {}, "x": 1})
        assert storage.load_data("group/x") == 1

    def test_hierarchical_keys(self, storage: NodeStorage, tmp_path: Path) -> None:
        a = np.arange(3, dtype=np.float32)
        b = np.arange(4, dtype=np.int64)
        storage.save_data("faces/areas", a)
        storage.save_data("faces/ids", b)
        storage.save_data("metadata/description", "CAD part analysis")
        assert sorted(storage.get_keys()) == ["faces", "metadata"]
        assert_same(storage.load_data("faces"), {"areas": a, "ids": b})
        assert storage.load_data("metadata/description") == "CAD part analysis"
        assert "faces" in storage
        assert "faces/areas" in storage
        assert "faces/x" not in storage
        again = self.reopen(storage, tmp_path)
        if again is not None:
            with again:
                assert_same(again.load_data("faces"), {"areas": a, "ids": b})
                assert again.load_data("metadata") == {"description": "CAD part analysis"}

    def test_overwrite(self, storage: NodeStorage, tmp_path: Path) -> None:
        storage.save_data("x", np.zeros(10, dtype=np.float64))
        storage.save_data("x", np.ones((2, 2), dtype=np.int8))
        assert_same(storage.load_data("x"), np.ones((2, 2), dtype=np.int8))
        storage.save_data("x", "now a string")
        storage.save_data("g", {"a": 1, "b": 2})
        storage.save_data("g", {"c": 3})
        assert storage.load_data("g") == {"c": 3}
        storage.save_data("g", 5)
        assert sorted(storage.get_keys()) == ["g", "x"]
        again = self.reopen(storage, tmp_path)
        if again is not None:
            with again:
                assert again.load_data("g") == 5
                assert again.load_data("x") == "now a string"

    def test_overwrite_inside_group(self, storage: NodeStorage) -> None:
        storage.save_data("graph", {"num_nodes": 4, "edges": np.arange(3)})
        storage.save_data("graph/num_nodes", 5)
        assert storage.load_data("graph/num_nodes") == 5
        assert_same(storage.load_data("graph/edges"), np.arange(3))

    def test_key_below_leaf_conflicts(self, storage: NodeStorage) -> None:
        storage.save_data("leaf", np.arange(3))
        with pytest.raises(KeyConflictError, match="leaf"):
            storage.save_data("leaf/child", 1)
        assert_same(storage.load_data("leaf"), np.arange(3))

    def test_saved_arrays_are_copied(self, storage: NodeStorage) -> None:
        arr = np.arange(5, dtype=np.float64)
        storage.save_data("a", arr)
        arr[:] = -1
        assert_same(storage.load_data("a"), np.arange(5, dtype=np.float64))
        loaded = storage.load_data("a")
        loaded[:] = 7
        assert_same(storage.load_data("a"), np.arange(5, dtype=np.float64))

    def test_missing_key(self, storage: NodeStorage) -> None:
        storage.save_data("present", 1)
        with pytest.raises(KeyError) as info:
            storage.load_data("absent")
        assert isinstance(info.value, KeyNotFoundError)
        assert "absent" in str(info.value)
        with pytest.raises(KeyError):
            storage.load_data("present/child")
        with pytest.raises(KeyNotFoundError):
            storage.delete_data("absent")

    def test_delete(self, storage: NodeStorage) -> None:
        storage.save_data("a", 1)
        storage.save_data("g/b", 2)
        storage.save_data("g/c", 3)
        storage.delete_data("g/b")
        assert storage.load_data("g") == {"c": 3}
        storage.delete_data("a")
        assert storage.get_keys() == ["g"]
        with pytest.raises(KeyNotFoundError):
            storage.load_metadata("file_sizes_KB/a")

    def test_get_file_path(self, storage: NodeStorage) -> None:
        storage.save_data("face_areas", np.ones(3))
        path = storage.get_file_path("face_areas")
        assert isinstance(path, str)
        assert "face_areas" in path

    def test_compress_store_returns_int(self, storage: NodeStorage) -> None:
        storage.save_data("face_areas", np.ones(3))
        assert isinstance(storage.compress_store(), int)

    # ------------------------------------------------------------------ bad input
    @pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: repr(k)[:20])
    def test_bad_keys_are_refused(self, storage: NodeStorage, key: str) -> None:
        storage.save_data("keep", 1)
        with pytest.raises(InvalidKeyError):
            storage.save_data(key, np.ones(2))
        with pytest.raises(InvalidKeyError):
            storage.save_metadata(key, 1)
        with pytest.raises(InvalidKeyError):
            storage.load_data(key)
        assert storage.get_keys() == ["keep"]
        assert key not in storage

    @pytest.mark.parametrize("key", UNSTORABLE_KEYS)
    def test_keys_of_a_stores_own_documents_are_not_saved(
        self, storage: NodeStorage, key: str
    ) -> None:
        """Saving data under ``graph/zarr.json`` was accepted, and close() then failed
        to publish ("File exists"), the storage closed with every array saved lost. Data
        is refused such keys (at any depth of a dict too); metadata keys, which have no
        file, and reading stay as they were (items written before may hold them)."""
        storage.save_data("keep", 1)
        with pytest.raises(InvalidKeyError, match="metadata document"):
            storage.save_data(key, np.ones(2))
        parent, _, leaf = key.rpartition("/")
        if parent or leaf != "metadata.json":  # that one is the root's document only
            with pytest.raises(InvalidKeyError, match="metadata document"):
                storage.save_data(parent or "group", {leaf: np.ones(2)})
        with pytest.raises(KeyNotFoundError):
            storage.load_data(key)
        storage.save_metadata(key, 1)
        assert storage.load_metadata(key) == 1
        assert storage.get_keys() == ["keep"]
        assert isinstance(storage.compress_store(), int)

    def test_bad_key_inside_dict(self, storage: NodeStorage) -> None:
        with pytest.raises((InvalidKeyError, UnsupportedTypeError)):
            storage.save_data("g", {"ok": 1, "../bad": 2})
        with pytest.raises((InvalidKeyError, UnsupportedTypeError)):
            storage.save_data("g", {"a/b": 2})
        assert storage.get_keys() == []

    def test_non_str_key(self, storage: NodeStorage) -> None:
        with pytest.raises(TypeError):
            storage.save_data(3, 1)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "value",
        [
            None,
            object(),
            {1, 2},
            lambda: 1,
            b"bytes",
            np.array(["2020-01-01"], dtype="M8[D]"),
            [[1, 2], [3]],
            [1, "a"],
            {"a": None},
            {1: "int key"},
            np.zeros(2, dtype="V4"),
            [None, 1],
            np.ones(2, dtype=np.longdouble),
            np.longdouble(1.5),
            [np.longdouble(1.5)],
            np.ones(2, dtype=np.clongdouble),
            np.ma.masked_array([1.5, -999.0], mask=[False, True]),
        ],
        ids=[
            "None",
            "object",
            "set",
            "lambda",
            "bytes",
            "datetime",
            "ragged",
            "mixed",
            "nested-None",
            "int-key",
            "void",
            "list-None",
            "longdouble-array",
            "longdouble",
            "longdouble-list",
            "clongdouble-array",
            "masked",
        ],
    )
    def test_unsupported_values(self, storage: NodeStorage, value: Any) -> None:
        with pytest.raises(TypeError, match="bad_value"):
            storage.save_data("bad_value", value)
        assert "bad_value" not in storage
        assert storage.get_keys() == []

    @pytest.mark.parametrize(
        "value",
        [
            "x\ud800",
            ["ok", "\udcff"],
            np.array(["ok", "\ud800"], dtype=object),
            np.array(["a\udfff"]),
            np.array(["a\udfff"]).astype(">U2"),
            {"inner": "\ud800"},
        ],
        ids=["str", "list", "object-array", "unicode-array", "big-endian-array", "nested"],
    )
    def test_strings_utf8_cannot_encode_are_refused(self, storage: NodeStorage, value: Any) -> None:
        """A lone surrogate is a Python string that no stored form holds: refused when
        saved, naming the key (it was accepted, and the file could not be written)."""
        storage.save_data("kept", np.arange(3))
        with pytest.raises(InvalidDataError, match=r"'bad_text.*lone surrogate"):
            storage.save_data("bad_text", value)
        with pytest.raises(InvalidDataError, match=r"'bad_meta.*lone surrogate"):
            storage.save_metadata("bad_meta", value if isinstance(value, str) else {"k": "\ud800"})
        assert "bad_text" not in storage
        with pytest.raises(InvalidKeyError, match="lone surrogate"):
            storage.save_data("bad\ud800", np.arange(2))
        with pytest.raises(InvalidKeyError, match="lone surrogate"):
            storage.save_data("bad", {"inner\udfff": np.arange(2)})
        assert storage.get_keys() == ["kept"]
        assert_same(storage.load_data("kept"), np.arange(3))

    def test_nan_policy(self, storage: NodeStorage, tmp_path: Path) -> None:
        arr = np.array([1.0, np.nan, np.inf, -np.inf], dtype=np.float32)
        if storage.allows_nan:
            assert_same(self.roundtrip(tmp_path, "with_nan", arr), arr)
        else:
            with pytest.raises(InvalidDataError, match="with_nan"):
                storage.save_data("with_nan", arr)
            with pytest.raises(InvalidDataError, match="g/inner"):
                storage.save_data("g", {"inner": np.array([np.nan])})
            with pytest.raises(InvalidDataError, match="cplx"):
                storage.save_data("cplx", np.array([1 + 1j, complex(0.0, np.nan)]))
            assert "with_nan" not in storage
            assert "g" not in storage
            assert "cplx" not in storage

    # ------------------------------------------------------------------ lifecycle
    def test_close_is_idempotent_and_final(self, storage: NodeStorage, tmp_path: Path) -> None:
        storage.save_data("a", 1)
        storage.close()
        storage.close()
        assert storage.closed == storage.close_is_final
        if not storage.close_is_final:
            # A close the specification makes a no-op (JSON): the storage goes on.
            storage.save_data("b", np.arange(3))
            storage.save_metadata("m", 1)
            assert sorted(storage.get_keys()) == ["a", "b"]
            assert storage.load_metadata("m") == 1
            again = self.reopen(storage, tmp_path)
            if again is not None:
                with again:
                    assert_same(again.load_data("b"), np.arange(3), "'b' after reopening")
            return
        for call in (
            lambda: storage.load_data("a"),
            lambda: storage.save_data("b", 1),
            storage.get_keys,
            lambda: storage.save_metadata("m", 1),
            lambda: storage.load_metadata("m"),
        ):
            with pytest.raises(StorageClosedError):
                call()

    def test_context_manager(self, tmp_path: Path) -> None:
        with self.make_storage(tmp_path) as s:
            s.save_data("a", 1)
        assert s.closed == s.close_is_final

    def test_concurrent_close(self, storage: NodeStorage) -> None:
        storage.save_data("a", np.arange(100))
        storage.save_metadata("m", 1)
        errors: list[BaseException] = []
        barrier = threading.Barrier(6)

        def close() -> None:
            try:
                barrier.wait()
                storage.close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=close) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert storage.closed == storage.close_is_final

    # ------------------------------------------------------------------ metadata
    def test_metadata_nesting_and_merge(self, storage: NodeStorage, tmp_path: Path) -> None:
        storage.save_metadata("size_cadfile", 1024000)
        storage.save_metadata("file_sizes_KB/face_areas", 45.2)
        storage.save_metadata("file_sizes_KB/edge_lengths", 12.3)
        storage.save_metadata("processing/duration", 12.5)
        storage.save_metadata("processing", {"timestamp": "2025-10-30T10:30:00"})
        storage.save_metadata("flags", [1, 2, 3])
        storage.save_metadata("array", np.array([1.5, 2.5], dtype=np.float32))
        storage.save_metadata("np_int", np.int64(7))
        storage.save_metadata("nothing", None)
        storage.save_metadata("weird", float("nan"))
        assert storage.load_metadata("size_cadfile") == 1024000
        assert storage.load_metadata("file_sizes_KB/face_areas") == 45.2
        assert storage.load_metadata("file_sizes_KB") == {"face_areas": 45.2, "edge_lengths": 12.3}
        assert storage.load_metadata("processing") == {
            "duration": 12.5,
            "timestamp": "2025-10-30T10:30:00",
        }
        assert storage.load_metadata("flags") == [1, 2, 3]
        assert storage.load_metadata("array") == [1.5, 2.5]
        assert storage.load_metadata("np_int") == 7
        assert type(storage.load_metadata("np_int")) is int
        assert storage.load_metadata("nothing") is None
        assert np.isnan(storage.load_metadata("weird"))
        section = storage.load_metadata("processing")
        section["duration"] = -1
        assert storage.load_metadata("processing/duration") == 12.5
        again = self.reopen(storage, tmp_path)
        if again is not None:
            with again:
                assert again.load_metadata("processing") == {
                    "duration": 12.5,
                    "timestamp": "2025-10-30T10:30:00",
                }
                assert again.load_metadata("size_cadfile") == 1024000
                assert np.isnan(again.load_metadata("weird"))

    def test_string_arrays_are_as_wide_as_their_longest_string(
        self, storage: NodeStorage, tmp_path: Path
    ) -> None:
        """A <U16 array of "face" came back <U16 from memory and <U4 from JSON and Zarr
        (writing "cylinder" into it then kept 8 characters or 4): every backend gives
        the width of the longest string now."""
        saved = {
            "padded": np.array(["face", "", ""], dtype="<U16"),
            "empty": np.array([], dtype="<U7"),
            "big_endian": np.array([["ab", "c"]], dtype=">U5"),
        }
        want = {"padded": "<U4", "empty": "<U1", "big_endian": "<U2"}
        for key, value in saved.items():
            storage.save_data(key, value)

        def check(reader: NodeStorage) -> None:
            for key, value in saved.items():
                got = reader.load_data(key)
                assert got.dtype == np.dtype(want[key]), (key, got.dtype)
                assert got.tolist() == value.tolist()

        check(storage)
        again = self.reopen(storage, tmp_path)
        if again is not None:
            with again:
                check(again)

    def test_metadata_sections_with_dunder_keys_merge(
        self, storage: NodeStorage, tmp_path: Path
    ) -> None:
        """A section holding a key like ``"__build__"`` is stored wrapped; merging into it,
        or it into a section, merged the wrapper itself: ``{"version": "1.0", "__dict__":
        {"__build__": 42}}`` came back instead of the keys."""
        storage.save_metadata("tool", {"version": "1.0"})
        storage.save_metadata("tool", {"__build__": 42})
        storage.save_metadata("tool2", {"__build__": 42})
        storage.save_metadata("tool2/version", "1.0")
        storage.save_metadata("tool2", {"__deep": {"a": 1}})
        storage.save_metadata("tool2", {"__deep": {"b": float("inf")}})
        storage.save_metadata("nan", float("nan"))
        storage.save_metadata("nan", {"a": 1})  # a value replaced by a section
        want = {
            "tool": {"version": "1.0", "__build__": 42},
            "tool2": {"__build__": 42, "version": "1.0", "__deep": {"a": 1, "b": math.inf}},
            "nan": {"a": 1},
        }
        # Keys below a wrapped section read too (they were not found).
        want["tool2/version"] = "1.0"
        want["tool/version"] = "1.0"
        for key, value in want.items():
            assert storage.load_metadata(key) == value, key
        again = self.reopen(storage, tmp_path)
        if again is not None:
            with again:
                for key, value in want.items():
                    assert again.load_metadata(key) == value, key

    def test_metadata_errors(self, storage: NodeStorage) -> None:
        storage.save_metadata("scalar", 1)
        with pytest.raises(KeyError, match="missing"):
            storage.load_metadata("missing")
        with pytest.raises(KeyError):
            storage.load_metadata("scalar/child")
        with pytest.raises(KeyConflictError):
            storage.save_metadata("scalar/child", 2)
        assert storage.load_metadata("scalar") == 1
        with pytest.raises(InvalidKeyError):
            storage.save_metadata("_storage_schema", {})
        with pytest.raises(TypeError, match="obj"):
            storage.save_metadata("obj", object())
        with pytest.raises(TypeError):
            storage.save_metadata("cplx", 1 + 2j)
        # Values a metadata document cannot be written with are refused when given; they
        # were taken, and the document then failed to be written (at close(), losing the
        # item; a JSON store failed every later save), or recursed without end.
        before = storage.load_metadata()
        with pytest.raises(TypeError, match=r"'precise'.*extended precision"):
            storage.save_metadata("precise", np.longdouble(1.5))
        with pytest.raises(TypeError, match=r"'deep/x'.*extended precision"):
            storage.save_metadata("deep", {"x": np.ones(2, dtype=np.longdouble)})
        with pytest.raises(InvalidDataError, match=r"'checksum'.*digits"):
            storage.save_metadata("checksum", 10**5000)
        assert storage.load_metadata() == before
        storage.save_metadata("wide", 10**1000)  # wide, but written as text
        storage.save_data("after", np.arange(2))
        storage.compress_store()
        assert storage.load_metadata("wide") == 10**1000

    def test_data_and_metadata_are_separate(self, storage: NodeStorage, tmp_path: Path) -> None:
        # The specified JSON example saves a data key named "metadata" next to metadata.
        storage.save_data("metadata", {"version": "1.0", "author": "HOOPS AI"})
        storage.save_metadata("export_timestamp", "2025-10-30T10:30:00")
        storage.save_metadata("version", "meta")
        assert storage.load_data("metadata") == {"version": "1.0", "author": "HOOPS AI"}
        assert storage.load_metadata("export_timestamp") == "2025-10-30T10:30:00"
        again = self.reopen(storage, tmp_path)
        if again is not None:
            with again:
                assert again.load_data("metadata") == {"version": "1.0", "author": "HOOPS AI"}
                assert again.load_metadata("version") == "meta"

    def test_size_tracking(self, storage: NodeStorage) -> None:
        storage.save_data("face_areas", np.arange(10_000, dtype=np.float64))
        storage.save_data("graph", {"a": np.arange(10), "n": 3})
        storage.save_data("faces/ids", np.arange(50, dtype=np.int32))
        size = storage.load_metadata("file_sizes_KB/face_areas")
        assert isinstance(size, float)
        assert size > 0
        assert storage.load_metadata("file_sizes_KB/graph") > 0
        assert storage.load_metadata("file_sizes_KB/faces/ids") > 0
        storage.save_data("face_areas", np.arange(3, dtype=np.float64))
        assert storage.load_metadata("file_sizes_KB/face_areas") < size

    # ------------------------------------------------------------------ schema
    @staticmethod
    def _schema_dict() -> dict[str, Any]:
        from cadstore.schema import SchemaBuilder

        builder = SchemaBuilder(domain="CAD_analysis", version="1.0")
        faces = builder.create_group("faces", "face", "Face data")
        faces.create_array("face_areas", ["face"], "float32", min_value=0.0)
        faces.create_array("face_normals", ["face", "coordinate"], "float32")
        edges = builder.create_group("edges", "edge", "Edge data")
        edges.create_array("edge_lengths", ["edge"], "float32")
        builder.define_file_metadata("size_cadfile", "int64", "File size")
        builder.define_categorical_metadata("file_label", "int32", "Classification")
        builder.set_metadata_routing_rules(
            file_level_patterns=["size_*", "processing_*"], categorical_patterns=["*_label"]
        )
        return builder.build()

    def test_schema_roundtrip_and_lookup(self, storage: NodeStorage, tmp_path: Path) -> None:
        schema = self._schema_dict()
        storage.set_schema(schema)
        assert storage.get_schema() == schema
        assert storage.get_group_for_array("face_areas") == "faces"
        assert storage.get_group_for_array("edge_lengths") == "edges"
        assert storage.get_group_for_array("unknown_array") is None
        again = self.reopen(storage, tmp_path)
        if again is not None:
            with again:
                assert again.get_schema() == schema
                assert again.get_group_for_array("face_areas") == "faces"

    @pytest.mark.parametrize("form", ["built", "json", "single-nested", "builder-object"])
    def test_schema_forms(self, storage: NodeStorage, form: str) -> None:
        from cadstore.schema import SchemaBuilder

        schema = self._schema_dict()
        given_schema: Any = schema
        if form == "json":
            given_schema = json.loads(json.dumps(schema))
        elif form == "single-nested":
            given_schema = dict(schema)
            given_schema["metadata"] = schema["metadata"]["metadata"]
        elif form == "builder-object":
            given_schema = SchemaBuilder.from_dict(schema)
        storage.set_schema(given_schema)
        assert storage.get_schema() == schema

    def test_bad_schema(self, storage: NodeStorage) -> None:
        with pytest.raises(SchemaError, match="groups"):
            storage.set_schema({"groups": [1, 2]})
        assert storage.get_schema() == {}

    def test_validation(self, storage: NodeStorage) -> None:
        assert storage.validate_data_against_schema("face_areas", np.array([[1.0]]))  # no schema
        storage.set_schema(self._schema_dict())
        valid = np.array([1.5, 2.3, 4.1], dtype=np.float32)
        assert storage.validate_data_against_schema("face_areas", valid) is True
        assert (
            storage.validate_data_against_schema("face_areas", np.array([[1.5, 2.3], [4.1, 3.2]]))
            is False
        )
        assert (
            storage.validate_data_against_schema("face_areas", np.array([1, 2, 3], dtype=np.int32))
            is False
        )
        assert (
            storage.validate_data_against_schema("face_areas", np.array([-1.0], dtype=np.float32))
            is False
        )
        assert storage.validate_data_against_schema("unknown", object()) is True
        storage.save_data("face_areas", np.array([[1.0]]))  # lenient by default
        assert "face_areas" in storage

    def test_strict_mode(self, storage: NodeStorage) -> None:
        storage.set_schema(self._schema_dict(), strict=True)
        assert storage.strict
        storage.save_data("face_areas", np.array([1.0, 2.0], dtype=np.float32))
        with pytest.raises(SchemaValidationError) as info:
            storage.save_data("face_areas", np.array([[1.5, 2.3], [4.1, 3.2]]))
        message = str(info.value)
        assert "face_areas" in message
        assert "dims" in message
        assert isinstance(info.value, ValueError)
        assert_same(storage.load_data("face_areas"), np.array([1.0, 2.0], dtype=np.float32))
        storage.save_data("not_in_schema", np.ones((2, 2, 2)))
        # The same array inside a group saved at once is checked at its own key (it was
        # accepted: only the group's key was looked up).
        bad = np.array([[1, 2], [3, 4]], dtype=np.int32)
        for key in ("faces", "other"):
            with pytest.raises(SchemaValidationError, match=f"{key}/face_areas: expected 1"):
                storage.save_data(key, {"face_areas": bad, "free": np.ones(2)})
            assert storage.validate_data_against_schema(key, {"face_areas": bad}) is False
            assert key not in storage
        storage.save_data("faces", {"face_areas": np.ones(3, dtype=np.float32)})
        assert storage.validate_data_against_schema("g", {"free": {"deeper": np.ones(2)}})

    def test_metadata_routing(self, storage: NodeStorage, tmp_path: Path) -> None:
        storage.set_schema(self._schema_dict())
        storage.save_metadata("size_cadfile", 1024)
        storage.save_metadata("processing_time", 1.5)
        storage.save_metadata("file_label", 2)
        storage.save_metadata("material_name", "steel")
        storage.save_metadata("face_count", 12)
        routing = storage.get_metadata_routing()
        assert routing["size_cadfile"] == "file_level"
        assert routing["processing_time"] == "file_level"
        assert routing["file_label"] == "categorical"
        assert routing["material_name"] == "categorical"  # str default
        assert routing["face_count"] == "file_level"  # numeric default
        assert storage.get_metadata_routing("file_label") == "categorical"
        again = self.reopen(storage, tmp_path)
        if again is not None:
            with again:
                assert again.get_metadata_routing() == routing

    # ------------------------------------------------------------------ properties
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.differing_executors,
        ],
    )
    @given(tree=node_trees())
    def test_property_roundtrip(
        self, tmp_path_factory: pytest.TempPathFactory, tree: dict[str, Any]
    ) -> None:
        tmp = tmp_path_factory.mktemp("prop")
        storage = self.make_storage(tmp)
        try:
            for key, value in tree.items():
                if (
                    not storage.allows_nan
                    and isinstance(value, np.ndarray)
                    and value.dtype.kind in "fc"
                    and np.isnan(value).any()
                ):
                    continue
                storage.save_data(key, value)
                assert_same(storage.load_data(key), value, key)
            again = self.reopen(storage, tmp)
            if again is not None:
                storage = again
                for key, value in tree.items():
                    if key in storage:
                        assert_same(storage.load_data(key), value, f"{key} after reopen")
        finally:
            storage.close()
