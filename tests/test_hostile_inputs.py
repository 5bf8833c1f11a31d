"""Hostile files and paths: clear cadstore errors naming the file, never a crash or a hang.

Three families (cadstore issue 16, findings 8, 9 and 14b):

* documents that are not what they claim (a dataset ``metadata.json`` that is not JSON, a
  list, nested 10^5 deep; an item ``metadata.json`` nested deeper than
  :data:`cadstore.format.jsoncodec.MAX_NESTING`; a corrupt ``.infoset``): a
  :class:`~cadstore.errors.CorruptStoreError` naming the file and member, and a merge that
  skips and lists the bad item;
* paths that are not regular files or directories (named pipes, sockets, ``/dev/zero``):
  refused before a byte is read. Each operation runs in a child process with a hard
  timeout, so a regression fails instead of hanging the suite;
* a :class:`~cadstore.dataset.reader.DatasetReader` used after ``close()``.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cadstore
from cadstore import OptStorage
from cadstore.cli import main
from cadstore.dataset.explorer import DatasetExplorer
from cadstore.dataset.loader import DatasetLoader
from cadstore.dataset.reader import DatasetReader
from cadstore.errors import (
    CorruptStoreError,
    InvalidDataError,
    StorageClosedError,
    UnknownFormatError,
)
from cadstore.format.jsoncodec import MAX_NESTING
from cadstore.io.location import resolve
from cadstore.storage import JsonStorageHandler
from cadstore.synthetic import iter_items, write_item

# A child process that hangs is killed after this many seconds and the test fails.
HANG_SECONDS = 90


# ------------------------------------------------------------------------------ helpers
def _nested(depth: int) -> bytes:
    """A JSON list nested ``depth`` containers deep."""
    return b"[" * depth + b"]" * depth


def _nested_value(depth: int) -> Any:
    """A Python list nested ``depth`` containers deep (built without recursion)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _rewrite_member(src: Path, dst: Path, member: str, payload: bytes) -> Path:
    """Copy the zip ``src`` to ``dst`` with ``member`` replaced by ``payload``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, payload if info.filename == member else zin.read(info))
    return dst


def _snapshot(root: Path) -> dict[str, bytes]:
    """The bytes of every regular file below ``root`` (or of ``root`` itself)."""
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _run_child(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; fail (not hang) if it takes too long."""
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=HANG_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {HANG_SECONDS} s (a read of a non-regular file?):\n{code}")


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command line in a child process; fail (not hang) if it takes too long."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "cadstore", *args],
            capture_output=True,
            text=True,
            timeout=HANG_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"'cadstore {' '.join(args)}' hung for {HANG_SECONDS} s")


def _child_error(done: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """``(type name, message)`` of the error a child printed as ``TYPE|message``."""
    assert done.returncode == 0, done.stderr
    kind, _, message = done.stdout.strip().splitlines()[-1].partition("|")
    return kind, message


# A child's report of what an operation raised, on its last line.
_REPORT = """
import sys
def report(fn):
    try:
        fn()
    except Exception as exc:
        print(f"{type(exc).__name__}|{exc}")
        return
    print("OK|")
"""


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small realistic items as ``.data`` files."""
    directory = tmp_path_factory.mktemp("hostile-items")
    return [
        Path(write_item(directory / f"{name}.zarr", item, meta))
        for name, item, meta in iter_items(3, seed=5)
    ]


@pytest.fixture(scope="module")
def dataset(items: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A merged dataset of :func:`items`, with its tables and manifest."""
    out = tmp_path_factory.mktemp("hostile-dataset") / "good.dataset"
    cadstore.merge([str(p) for p in items], str(out))
    return out


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A named pipe called like a dataset; nobody ever writes to it."""
    path = tmp_path / "pipe.dataset"
    os.mkfifo(path)
    return path


# ============================================================ 8: malformed documents
_BAD_DATASET_METADATA = {
    "not-json": b"{not json",
    "deep-1e5": _nested(100_000),
    "a-list": b"[1, 2, 3]",
    "deep-900": b'{"a": ' + _nested(900) + b"}",
    "not-utf8": b'{"a": "\xff\xfe"}',
}


@pytest.fixture(params=sorted(_BAD_DATASET_METADATA))
def bad_metadata_dataset(request: pytest.FixtureRequest, dataset: Path, tmp_path: Path) -> Path:
    """A copy of :func:`dataset` whose root ``metadata.json`` is malformed."""
    return _rewrite_member(
        dataset, tmp_path / "bad.dataset", "metadata.json", _BAD_DATASET_METADATA[request.param]
    )


def _assert_names_metadata(exc: BaseException, path: Path) -> None:
    assert isinstance(exc, CorruptStoreError), repr(exc)
    assert str(path) in str(exc)
    assert "metadata.json" in str(exc)


def test_bad_dataset_metadata_reader(bad_metadata_dataset: Path) -> None:
    before = _snapshot(bad_metadata_dataset)
    with pytest.raises(CorruptStoreError) as caught:
        DatasetReader(bad_metadata_dataset)
    _assert_names_metadata(caught.value, bad_metadata_dataset)
    assert _snapshot(bad_metadata_dataset) == before


def test_bad_dataset_metadata_explorer_and_loader(bad_metadata_dataset: Path) -> None:
    with pytest.raises(CorruptStoreError) as caught:
        DatasetExplorer(merged_store_path=bad_metadata_dataset)
    _assert_names_metadata(caught.value, bad_metadata_dataset)
    with pytest.raises(CorruptStoreError) as caught:
        DatasetLoader(merged_store_path=str(bad_metadata_dataset))
    _assert_names_metadata(caught.value, bad_metadata_dataset)


def test_bad_dataset_metadata_open(bad_metadata_dataset: Path) -> None:
    with (
        cadstore.open(bad_metadata_dataset) as artefact,
        pytest.raises(CorruptStoreError) as caught,
    ):
        artefact.metadata()
    _assert_names_metadata(caught.value, bad_metadata_dataset)


@pytest.mark.parametrize(
    "command", [["info"], ["inspect"], ["cat", "faces/face_areas", "--item", "0"]]
)
def test_bad_dataset_metadata_cli(
    bad_metadata_dataset: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([command[0], str(bad_metadata_dataset), *command[1:]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("cadstore: error: ")
    assert str(bad_metadata_dataset) in err
    assert "metadata.json" in err


def _item_with_metadata(src: Path, directory: Path, name: str, payload: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return _rewrite_member(src, directory / f"{name}.zarr.data", "metadata.json", payload)


def test_item_metadata_too_deep_is_a_corrupt_store(items: list[Path], tmp_path: Path) -> None:
    """Deep enough to break recursive code below the parser's own limit."""
    doc = json.loads(zipfile.ZipFile(items[0]).read("metadata.json"))
    payload = json.dumps(doc)[:-1].encode() + b', "deep": ' + _nested(900) + b"}"
    bad = _item_with_metadata(items[0], tmp_path, "deep_0", payload)
    before = _snapshot(bad)
    with (
        OptStorage(str(bad)[: -len(".data")], mode="r") as storage,
        pytest.raises(CorruptStoreError) as caught,
    ):
        storage.load_metadata()
    assert str(bad) in str(caught.value)
    assert "metadata.json" in str(caught.value)
    assert f"{MAX_NESTING}" in str(caught.value)
    assert _snapshot(bad) == before


@pytest.mark.parametrize(
    "payload",
    [_nested(900), _nested(100_000), b"[1, 2]", b"{bad"],
    ids=["deep-900", "deep-1e5", "a-list", "not-json"],
)
def test_merge_skips_an_item_with_bad_metadata(
    items: list[Path], tmp_path: Path, payload: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _item_with_metadata(items[0], tmp_path / "in", "bad_0", payload)
    before = _snapshot(bad)
    out = tmp_path / "out.dataset"
    result = cadstore.merge([str(p) for p in items] + [str(bad)], str(out))
    assert len(result.items) == len(items)
    assert [e["file"] for e in result.errors] == [str(bad)]
    assert "metadata.json" in result.errors[0]["error"]
    with DatasetReader(out) as reader:
        assert reader.n_items == len(items)
    # The command line lists it too, and exits 1 (the merge ran but found problems).
    code = main(["merge", *map(str, items), str(bad), "-o", str(tmp_path / "cli.dataset")])
    printed = capsys.readouterr().out
    assert code == 1
    assert f"skipped {bad}" in printed
    assert "metadata.json" in printed
    assert _snapshot(bad) == before


def test_metadata_deeper_than_the_limit_is_refused_when_written(tmp_path: Path) -> None:
    storage = OptStorage(tmp_path / "p.zarr")
    storage.save_data("face_areas", np.ones(3, dtype=np.float32))
    with pytest.raises(InvalidDataError, match="'deep'") as caught:
        storage.save_metadata("deep", _nested_value(900))
    assert f"{MAX_NESTING}" in str(caught.value)
    # The limit counts the document's own levels: a section is one.
    with pytest.raises(InvalidDataError, match="'a/b'"):
        storage.save_metadata("a/b", _nested_value(MAX_NESTING - 1))
    # Nothing was stored by the refused calls.
    with pytest.raises(KeyError):
        storage.load_metadata("deep")
    storage.close()


def test_metadata_at_the_limit_works_end_to_end(items: list[Path], tmp_path: Path) -> None:
    """A document exactly MAX_NESTING deep: written, read, merged, read back."""
    deepest = _nested_value(MAX_NESTING - 2)  # under "extra/deep": two more levels
    storage = OptStorage(tmp_path / "in" / "deep_0.zarr")
    storage.save_data("face_areas", np.ones(3, dtype=np.float32))
    storage.save_metadata("extra/deep", deepest)
    storage.save_metadata("category", "bolt")
    storage.compress_store()
    storage.close()
    data = tmp_path / "in" / "deep_0.zarr.data"
    with OptStorage(tmp_path / "in" / "deep_0.zarr", mode="r") as again:
        assert again.load_metadata("extra/deep") == deepest
    out = tmp_path / "out.dataset"
    result = cadstore.merge([str(data), *map(str, items)], str(out))
    assert result.errors == []
    assert "deep_0" in result.items
    with DatasetExplorer(merged_store_path=out) as explorer:
        info = explorer.get_file_info_all()
        assert "deep_0" in set(info["name"])


def test_json_store_file_too_deep(tmp_path: Path) -> None:
    store = JsonStorageHandler(tmp_path / "js")
    store.save_data("names", ["a", "b"])
    store.close()
    path = tmp_path / "js" / "deep.json"
    path.write_bytes(b'{"key": "deep", "value": ' + _nested(900) + b"}")
    before = _snapshot(tmp_path / "js")
    with pytest.raises(CorruptStoreError) as caught:  # noqa: PT012 - opening may raise too
        reopened = JsonStorageHandler(tmp_path / "js", read_only=True)
        try:
            reopened.load_data("deep")
        finally:
            reopened.close()
    assert "deep.json" in str(caught.value)
    assert _snapshot(tmp_path / "js") == before


# -------------------------------------------------------------------- Parquet tables
class _Unversioned:
    """A dataset without a commit record (written before versions were recorded): the
    table copy given is the one :class:`~cadstore.lifecycle.TrustedTables` reads, and any
    damage to it is an error."""

    path = "unversioned.dataset"

    def member(self, key: str) -> bytes | None:
        return None


def read_copy(path: Path | str) -> Any:
    """The table at ``path`` as every reader of cadstore reads a table copy (the
    explorer, the loader, ``cadstore info``, an append): through
    :class:`~cadstore.lifecycle.TrustedTables`."""
    from cadstore.lifecycle import TrustedTables

    found = TrustedTables(_Unversioned()).read("infoset", resolve(path))
    assert found is not None and found[1] == str(path)
    return found[0]


_BAD_TABLES: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda raw: b"not a parquet file at all",
    "truncated": lambda raw: raw[: len(raw) // 2],
    "bad-footer": lambda raw: raw[:-12] + b"\xff" * 8 + raw[-4:],
    "empty": lambda raw: b"",
}


@pytest.mark.parametrize("damage", sorted(_BAD_TABLES))
@pytest.mark.parametrize("suffix", [".infoset", ".attribset"])
def test_corrupt_parquet_table(dataset: Path, tmp_path: Path, damage: str, suffix: str) -> None:
    table = tmp_path / f"bad{suffix}"
    table.write_bytes(_BAD_TABLES[damage](dataset.with_suffix(suffix).read_bytes()))
    before = _snapshot(table)
    with pytest.raises(CorruptStoreError, match=str(table)):
        read_copy(table)
    assert _snapshot(table) == before


def test_parquet_strings_that_are_not_utf8_are_refused(dataset: Path, tmp_path: Path) -> None:
    """Found by a byte-flipping campaign: a flipped bit in an infoset's item name made it
    invalid UTF-8, which pyarrow reads without checking; the frame came back and failed
    later, where it was shown or compared, with pyarrow's ``ArrowException``. The table is
    refused on reading, naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.infoset"
    table = pa.table({"id": [0, 1], "name": ["part_alpha", "part_omega"]})
    pq.write_table(table, bad, compression="none", use_dictionary=False, write_statistics=False)
    raw = bad.read_bytes()
    assert raw.count(b"part_omega") == 1
    bad.write_bytes(raw.replace(b"part_omega", b"part_\xffmega"))
    with pytest.raises(CorruptStoreError, match=r"bad\.infoset.*UTF-?8"):
        read_copy(bad)
    with (
        DatasetExplorer(merged_store_path=dataset, parquet_file_path=bad) as explorer,
        pytest.raises(CorruptStoreError, match=r"bad\.infoset"),
    ):
        explorer.get_file_info_all()


def test_a_flipped_bit_in_a_written_table_is_detected(tmp_path: Path) -> None:
    """Found by a byte-flipping campaign: a flipped bit in the values of an ``.infoset``
    read back as other values, silently (a Parquet page carries no checksum unless its
    writer adds one). The tables cadstore writes carry page checksums, verified on
    reading."""
    import pyarrow as pa

    from cadstore.lifecycle import table_bytes

    values = [0x1122334455667788 + i * 0x0101010101010101 for i in range(5)]
    raw = table_bytes(pa.table({"id": list(range(5)), "size_cadfile": values}), None)
    middle = values[2].to_bytes(8, "little")  # neither the minimum nor the maximum
    assert raw.count(middle) == 1
    flipped = bytearray(raw)
    flipped[raw.index(middle)] ^= 0x01
    bad = tmp_path / "flipped.infoset"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CorruptStoreError, match=r"flipped\.infoset.*checksum"):
        read_copy(bad)
    good = tmp_path / "good.infoset"
    good.write_bytes(raw)
    assert read_copy(good).column("size_cadfile").to_pylist() == values


@pytest.mark.parametrize("change", ["read as bytes", "renamed"])
def test_a_flipped_bit_in_a_table_footer_is_detected(
    dataset: Path, tmp_path: Path, change: str
) -> None:
    """Found by a byte-flipping campaign: no checksum covers a Parquet footer, and one
    flipped bit in its schema read an ``.infoset``'s ``name`` column back as bytes, or
    under another name, without a word. The columns read are checked against the
    schema pyarrow recorded when writing (a second copy in the footer): the table is
    refused, naming the file and the column; the file is left as it was."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = dataset.with_suffix(".infoset").read_bytes()
    names = pq.read_table(pa.BufferReader(raw)).schema.names
    footer = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")

    def silent_change(table: pa.Table) -> bool:
        if change == "renamed":
            return "name" not in table.schema.names and len(table.schema) == len(names)
        return table.schema.names == names and table.schema.field("name").type == pa.binary()

    def flipped() -> bytes:
        """The first one-bit flip of the footer's schema that pyarrow reads silently so."""
        for at in range(footer, raw.index(b"ARROW:schema")):
            for bit in range(8):
                candidate = bytearray(raw)
                candidate[at] ^= 1 << bit
                try:
                    if silent_change(pq.read_table(pa.BufferReader(bytes(candidate)))):
                        return bytes(candidate)
                except (pa.ArrowException, OSError, UnicodeDecodeError):
                    continue  # refused, or a column name pyarrow cannot give (not UTF-8)
        raise AssertionError(f"no flip in the footer has the column {change}")

    bad = tmp_path / "bad.infoset"
    bad.write_bytes(flipped())
    before = bad.read_bytes()
    with pytest.raises(CorruptStoreError, match=r"bad\.infoset.*'name'"):
        read_copy(bad)
    with (
        DatasetExplorer(merged_store_path=dataset, parquet_file_path=bad) as explorer,
        pytest.raises(CorruptStoreError, match=r"bad\.infoset"),
    ):
        explorer.get_file_info_all()
    assert bad.read_bytes() == before


def test_types_pyarrow_does_not_restore_are_no_damaged_footer(tmp_path: Path) -> None:
    """Found by review of the footer check above: pyarrow reads some types back as
    others from an undamaged file (timestamps and times in seconds in milliseconds,
    ``date64`` as ``date32``, a dictionary of large strings, which pandas writes for a
    categorical, as one of strings; a dictionary of numbers as the numbers), and such
    tables, written by pandas or pyarrow, were refused as corrupt. They read as pyarrow
    reads them."""
    import datetime

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = pd.DataFrame(
        {
            "category": pd.Categorical(["a", "b", "a"]),
            "seconds": pd.to_datetime([1, 2, 3], unit="s").astype("datetime64[s]"),
            "name": ["x", "y", "z"],
        }
    )
    frame.to_parquet(tmp_path / "pandas.parquet")
    day = datetime.date(2026, 12, 7)
    table = pa.table(
        {
            "date64": pa.array([day, day, day], pa.date64()),
            "time_s": pa.array([1, 2, 3], pa.time32("s")),
            "zoned_s": pa.array([1, 2, 3], pa.timestamp("s", "Europe/Paris")),
            "large_dict": pa.array(["a", "b", "a"], pa.large_string()).dictionary_encode(),
            "bytes_dict": pa.array([b"a", b"b", b"a"], pa.large_binary()).dictionary_encode(),
            "int_dict": pa.array([1, 2, 1]).dictionary_encode(),
            "nested": pa.array([[1], [2], [3]], pa.list_(pa.timestamp("s"))),
            "record": pa.StructArray.from_arrays([pa.array([day] * 3, pa.date64())], ["d"]),
        }
    )
    pq.write_table(table, tmp_path / "pyarrow.parquet")
    for path in (tmp_path / "pandas.parquet", tmp_path / "pyarrow.parquet"):
        assert read_copy(path).equals(pq.read_table(path)), path.name
    assert (
        read_copy(tmp_path / "pandas.parquet")
        .to_pandas()
        .equals(pd.read_parquet(tmp_path / "pandas.parquet"))
    )


def _flip_changing_metadata(raw: bytes, where: range, changed: Callable[[Any], bool]) -> bytes:
    """``raw`` (a Parquet table) with the first one-bit flip at ``where`` that plain pyarrow
    reads without complaint, the same columns and values, and metadata ``changed`` says
    is changed (given the schema read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = pq.ParquetFile(pa.BufferReader(raw)).read()
    for at in where:
        for bit in range(8):
            candidate = bytearray(raw)
            candidate[at] ^= 1 << bit
            try:
                table = pq.ParquetFile(pa.BufferReader(bytes(candidate))).read()
            except (pa.ArrowException, OSError):
                continue
            if table.equals(good) and changed(table.schema):
                return bytes(candidate)
    raise AssertionError("no flip there changes only the metadata")


@pytest.mark.parametrize("entry", ["stamp", "stamp's key", "cadstore document"])
def test_a_flipped_bit_in_a_table_footers_metadata_is_detected(
    dataset: Path, tmp_path: Path, entry: str
) -> None:
    """Found by helper D: one flipped bit in a table's footer (which no checksum covers)
    can change only its key-value metadata: the copy's commit stamp, the key it is stored
    under, the ``cadstore`` document saying what each column was made from. The table read
    back with the other metadata, without a word (and ``pyarrow.parquet.read_schema``
    showed the other, intact copy pyarrow records in the Arrow schema). The metadata read
    is checked against that copy: every reader refuses the table, naming the file and the
    key; the file is left as it was."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cadstore.format.commit import STAMP_KEY

    key = b"cadstore" if entry == "cadstore document" else STAMP_KEY
    raw = dataset.with_suffix(".infoset").read_bytes()
    value = pq.ParquetFile(pa.BufferReader(raw)).read().schema.metadata[key]
    assert raw.count(value) == 1  # the other copy is base64, inside ARROW:schema
    start = raw.index(value)
    if entry == "stamp's key":
        at = raw.rindex(key, 0, start)
        where = range(at, at + len(key))
    else:
        where = range(start, start + len(value))

    def changed(schema: pa.Schema) -> bool:
        return (schema.metadata or {}).get(key) != value

    bad = tmp_path / "bad.infoset"
    bad.write_bytes(_flip_changing_metadata(raw, where, changed))
    before = bad.read_bytes()
    shown = repr(key.decode())
    with pytest.raises(CorruptStoreError, match=rf"bad\.infoset.*metadata.*{shown}"):
        read_copy(bad)
    assert bad.read_bytes() == before


def test_a_flipped_bit_in_a_tables_pandas_metadata_is_detected(tmp_path: Path) -> None:
    """Found by helper D: a table written from a pandas frame carries pandas' metadata (the
    index, the columns' names and types) in its footer, which no checksum covers; one
    flipped bit in it read the frame back otherwise (its column ``name`` as ``oame``),
    without a word. It is checked against the copy in the recorded Arrow schema: the table is
    refused, naming the file; the file is left as it was."""
    import io

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cadstore.io.parquet import write_table

    frame = pd.DataFrame(
        {"name": ["part_alpha", "part_omega"], "faces": [12, 7]},
        index=pd.Index([10, 11], name="item"),
    )
    buffer = io.BytesIO()
    write_table(pa.Table.from_pandas(frame), buffer)
    raw = buffer.getvalue()
    value = pq.ParquetFile(pa.BufferReader(raw)).read().schema.metadata[b"pandas"]
    start = raw.index(value)

    def changed(schema: pa.Schema) -> bool:
        try:
            read = schema.empty_table().to_pandas()
        except Exception:  # pandas refuses what it cannot make sense of: not silent
            return False
        return list(read.columns) != list(frame.columns) or read.index.name != "item"

    bad = tmp_path / "bad.infoset"
    bad.write_bytes(_flip_changing_metadata(raw, range(start, start + len(value)), changed))
    before = bad.read_bytes()
    with pytest.raises(CorruptStoreError, match=r"bad\.infoset.*metadata.*'pandas'"):
        read_copy(bad).to_pandas()
    assert bad.read_bytes() == before


def test_metadata_added_after_the_schema_is_read(tmp_path: Path) -> None:
    """A table whose writer added metadata after the schema
    (``ParquetWriter.add_key_value_metadata``, which the recorded copy lacks) is not
    refused, and reads with the footer's metadata, the added key among it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [0, 1]}).replace_schema_metadata({"kept": "1"})
    path = tmp_path / "added.infoset"
    with pq.ParquetWriter(path, table.schema) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata({"added": "2"})
    expected = {b"kept": b"1", b"added": b"2"}
    assert read_copy(path).schema.metadata == expected


@pytest.mark.parametrize(
    ("column", "options"),
    [
        ("ts_ns", {"version": "2.4"}),
        ("ts_ns", {"version": "1.0"}),
        ("ts_ns", {"coerce_timestamps": "ms", "allow_truncated_timestamps": True}),
        ("ts_us", {"use_deprecated_int96_timestamps": True}),
        ("ts_s", {"flavor": "spark"}),
        ("uint32", {"version": "1.0"}),
        ("time_ns", {"version": "2.4"}),
    ],
)
def test_tables_written_with_pyarrows_options_are_read(
    tmp_path: Path, column: str, options: dict[str, Any]
) -> None:
    """Found by review of the footer check: pyarrow's writer options change how some
    types come back (timestamps in another unit, INT96, ``uint32`` as ``int64`` in format
    1.0), and such tables were refused as damaged. They read as pyarrow reads them."""
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    when = datetime.datetime(2026, 12, 7, 1, 2, 3)
    columns = {
        "ts_ns": pa.array([when], pa.timestamp("ns")),
        "ts_us": pa.array([when], pa.timestamp("us")),
        "ts_s": pa.array([when], pa.timestamp("s")),
        "uint32": pa.array([7], pa.uint32()),
        "time_ns": pa.array([1_000], pa.time64("ns")),
    }
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({column: columns[column]}), path, **options)
    assert read_copy(path).equals(pq.read_table(path))


def test_metadata_kept_in_the_recorded_schema_only_or_added_later_is_read(
    tmp_path: Path,
) -> None:
    """Found by review of the footer check: a writer may keep the table's metadata in the
    recorded Arrow schema only (pyarrow reads it from there), or give a key another value
    after the schema; such tables were refused as damaged. They read as pyarrow reads
    them; a value changed to one of its own length (what a flipped bit does) stays an
    error."""
    import base64

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"a": [1, 2]})
    recorded = table.schema.with_metadata({"origin": "another engine"})
    only = tmp_path / "recorded-only.parquet"
    with pq.ParquetWriter(only, table.schema, store_schema=False) as writer:
        writer.write_table(table)
        serialized = base64.b64encode(recorded.serialize().to_pybytes()).decode()
        writer.add_key_value_metadata({"ARROW:schema": serialized})
    read = read_copy(only)
    assert read.column("a").to_pylist() == [1, 2]

    # What a flipped bit does, one bit from the recorded value, stays an error.
    for value, refused in (("version 2 of it", False), ("no", False), ("1/", True)):
        path = tmp_path / f"overridden-{value.replace('/', '-')}.parquet"
        with pq.ParquetWriter(path, table.schema.with_metadata({"x": "1."})) as writer:
            writer.write_table(table)
            writer.add_key_value_metadata({"x": value})
        if refused:
            with pytest.raises(CorruptStoreError, match=rf"{path.name}.*'x'"):
                read_copy(path)
        else:
            assert read_copy(path).schema.metadata[b"x"] == value.encode()


def test_metadata_changed_by_its_writer_otherwise_than_a_flipped_bit_is_read(
    tmp_path: Path,
) -> None:
    """Found by review of the footer check: a key given another value of the same length
    after the schema (``add_key_value_metadata``, ``"1."`` then ``"no"``), or a key kept
    in the recorded schema only beside another of its length added after, was refused as
    damage: the check told a flipped bit by length alone. A flipped bit leaves the value
    (or the key) one bit from the recorded one; what differs otherwise is the writer's,
    and reads. One bit apart stays an error, the file named; cadstore's own keys must
    still agree in full."""
    import base64

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"a": [1, 2]})
    path = tmp_path / "same-length.parquet"
    with pq.ParquetWriter(path, table.schema.with_metadata({"x": "1."})) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata({"x": "no"})
    assert read_copy(path).schema.metadata[b"x"] == b"no"

    recorded = table.schema.with_metadata({"ab": "1"})
    for added, refused in (("cd", False), ("ac", True)):
        path = tmp_path / f"kept-{added}.parquet"
        with pq.ParquetWriter(path, table.schema, store_schema=False) as writer:
            writer.write_table(table)
            serialized = base64.b64encode(recorded.serialize().to_pybytes()).decode()
            writer.add_key_value_metadata({"ARROW:schema": serialized, added: "2"})
        if refused:
            with pytest.raises(CorruptStoreError, match=r"kept-ac\.parquet.*'ab'"):
                read_copy(path)
        else:
            assert read_copy(path).column("a").to_pylist() == [1, 2]

    stamped = tmp_path / "stamp.parquet"
    with pq.ParquetWriter(stamped, table.schema.with_metadata({"cadstore": "{}"})) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata({"cadstore": "[]"})
    with pytest.raises(CorruptStoreError, match=r"stamp\.parquet.*'cadstore'"):
        read_copy(stamped)


def test_a_cadstore_table_without_its_recorded_arrow_schema_is_refused(
    dataset: Path, tmp_path: Path
) -> None:
    """Found by review of the footer check: one flipped bit in the footer's key
    ``ARROW:schema`` itself (``ARROW:schemq``) hid the recorded copy, and both footer
    checks were skipped without a word (the check's second copy gone, a flip in the
    stamp beside it would then pass too). cadstore writes that key into every table, so a
    table holding cadstore's own keys without it, or holding a key one bit from it, is
    damaged: refused naming the file and the key, the file left as it was. A table
    another tool wrote without a recorded schema still reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = dataset.with_suffix(".infoset").read_bytes()
    assert raw.count(b"ARROW:schema") == 1
    at = raw.index(b"ARROW:schema")
    for offset in range(len(b"ARROW:schema")):
        flipped = bytearray(raw)
        flipped[at + offset] ^= 0x01
        bad = tmp_path / f"flipped-{offset}.infoset"
        bad.write_bytes(bytes(flipped))
        assert pq.read_table(bad).num_rows  # pyarrow reads it without a word
        with pytest.raises(CorruptStoreError, match=rf"flipped-{offset}\.infoset.*ARROW:schema"):
            read_copy(bad)
        assert bad.read_bytes() == bytes(flipped)

    table = pa.table({"id": [0, 1]})
    for keys, refused in (
        ({}, False),
        ({"origin": "another tool"}, False),
        ({"cadstore": "{}"}, True),
    ):
        path = tmp_path / f"unrecorded-{refused}-{len(keys)}.parquet"
        with pq.ParquetWriter(path, table.schema, store_schema=False) as writer:
            writer.write_table(table)
            writer.add_key_value_metadata(keys)
        assert b"ARROW:schema" not in path.read_bytes()
        if refused:
            with pytest.raises(CorruptStoreError, match=rf"{path.name}.*ARROW:schema"):
                read_copy(path)
        else:
            assert read_copy(path).column("id").to_pylist() == [0, 1]


@pytest.mark.parametrize(
    "pandas_metadata",
    ['{"index_columns": ["nope"], "columns": []}', '{"columns": 5}', "[" * 100_000],
    ids=["index column not there", "not pandas' shape", "nesting without end"],
)
def test_a_tables_hostile_pandas_metadata_is_a_corrupt_store_error(
    dataset: Path, tmp_path: Path, pandas_metadata: str
) -> None:
    """Found moving the tests off ``read_frame`` (which no reader of cadstore used) onto
    the explorer: a table from anywhere whose ``pandas`` metadata pandas cannot make sense
    of (both footer copies agree: no flipped bit) let pandas' ``KeyError`` or
    ``RecursionError`` out of ``get_file_info_all``. It is a ``CorruptStoreError`` naming
    the table; the file is left as it was."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "hostile.infoset"
    table = pa.table({"id": [0, 1]}).replace_schema_metadata({"pandas": pandas_metadata})
    pq.write_table(table, bad)
    before = bad.read_bytes()
    with (
        DatasetExplorer(merged_store_path=dataset, parquet_file_path=bad) as explorer,
        pytest.raises(CorruptStoreError, match=r"hostile\.infoset.*pandas"),
    ):
        explorer.get_file_info_all()
    assert bad.read_bytes() == before


def test_corrupt_infoset_through_the_explorer(dataset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.infoset"
    bad.write_bytes(b"PAR1 not really PAR1")
    with (
        DatasetExplorer(merged_store_path=dataset, parquet_file_path=bad) as explorer,
        pytest.raises(CorruptStoreError, match=r"bad\.infoset"),
    ):
        explorer.get_file_info_all()


def test_corrupt_infoset_beside_a_dataset(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The loader and ``cadstore info`` name the table, and exit 2."""
    copy = tmp_path / "copy.dataset"
    copy.write_bytes(dataset.read_bytes())
    bad = copy.with_suffix(".infoset")
    bad.write_bytes(b"PAR1" + bytes(100) + b"PAR1")
    before = _snapshot(tmp_path)
    with pytest.raises(CorruptStoreError, match=r"copy\.infoset"):
        DatasetLoader(merged_store_path=str(copy))
    code = main(["info", str(copy)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("cadstore: error: ")
    assert str(bad) in err
    assert _snapshot(tmp_path) == before


# ===================================================== 9: not regular files: no hang
def test_pipe_as_dataset_reader(fifo: Path) -> None:
    done = _run_child(
        _REPORT
        + f"""
from cadstore.dataset.reader import DatasetReader
report(lambda: DatasetReader({str(fifo)!r}))
"""
    )
    kind, message = _child_error(done)
    assert kind == "CorruptStoreError"
    assert str(fifo) in message
    assert "not a regular file" in message


def test_pipe_as_dataset_explorer(fifo: Path) -> None:
    done = _run_child(
        _REPORT
        + f"""
from cadstore.dataset.explorer import DatasetExplorer
report(lambda: DatasetExplorer(merged_store_path={str(fifo)!r}))
"""
    )
    kind, message = _child_error(done)
    assert kind == "CorruptStoreError"
    assert str(fifo) in message


@pytest.mark.parametrize("kind", ["pipe", "dev-zero", "outside"])
def test_a_chunk_that_is_no_regular_file_of_the_dataset_through_the_explorer(
    items: list[Path], tmp_path: Path, kind: str
) -> None:
    """Found by a hostile-file campaign: in a directory dataset, a chunk that is a named
    pipe hung the explorer's xarray views (zarr-python opened it), and one linked to
    ``/dev/zero`` grew until memory ran out; a link to a file outside the dataset was read.
    Each is an error naming the dataset and the chunk, as the reader's own source decides."""
    from cadstore.merging import merge_items

    out = tmp_path / "dir.dataset"
    merge_items([str(p) for p in items], str(out), directory=True)
    chunk = out / "faces" / "face_areas" / "c" / "0"
    outside = tmp_path / "outside"
    outside.write_bytes(chunk.read_bytes())
    chunk.unlink()
    if kind == "pipe":
        os.mkfifo(chunk)
    else:
        chunk.symlink_to("/dev/zero" if kind == "dev-zero" else outside)
    done = _run_child(
        _REPORT
        + f"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from cadstore.dataset.explorer import DatasetExplorer
ex = DatasetExplorer(merged_store_path={str(out)!r})
report(lambda: ex.get_group_data("faces").load())
report(lambda: ex.get_array_data("faces", "face_areas").values)
report(lambda: ex.get_array_data("faces", "face_types").values)
"""
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()[-3:]
    for line in lines[:2]:
        kind_name, _, message = line.partition("|")
        assert kind_name == "CorruptStoreError", line
        assert str(out) in message and "faces/face_areas/c/0" in message
    assert lines[2] == "OK|"  # the other arrays still read


def test_pipe_as_artefact(fifo: Path) -> None:
    done = _run_child(
        _REPORT
        + f"""
import cadstore
report(lambda: cadstore.open({str(fifo)!r}))
"""
    )
    kind, message = _child_error(done)
    assert kind == UnknownFormatError.__name__
    assert str(fifo) in message
    assert "neither a regular file nor a directory" in message


@pytest.mark.parametrize("command", [["info"], ["inspect"], ["cat", "faces/face_areas"]])
def test_pipe_as_dataset_cli(fifo: Path, command: list[str]) -> None:
    done = _run_cli(command[0], str(fifo), *command[1:])
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("cadstore: error: ")
    assert str(fifo) in done.stderr


@pytest.fixture
def pipe_item(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "pipe_0.zarr.data"
    path.parent.mkdir()
    os.mkfifo(path)
    return path


def _merge_child(call: str, items: list[Path], bad: Path, out: Path) -> str:
    return (
        _REPORT
        + f"""
import cadstore
from cadstore.merging import DatasetMerger
files = {[*map(str, items), str(bad)]!r}
out = {str(out)!r}
def run():
    result = {call}
    print("ITEMS", len(result.items))
    print("ERRORS", [e["file"] for e in result.errors])
report(run)
"""
    )


@pytest.mark.parametrize(
    "call",
    [
        "cadstore.merge(files, out)",
        "DatasetMerger(files, out).merge_data()",
    ],
)
def test_pipe_as_merge_input(items: list[Path], pipe_item: Path, tmp_path: Path, call: str) -> None:
    done = _run_child(_merge_child(call, items, pipe_item, tmp_path / "out.dataset"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"ITEMS {len(items)}" in lines
    assert f"ERRORS {[str(pipe_item)]!r}" in lines
    assert lines[-1] == "OK|"


def test_pipe_as_merge_input_cli(items: list[Path], pipe_item: Path, tmp_path: Path) -> None:
    done = _run_cli("merge", *map(str, items), str(pipe_item), "-o", str(tmp_path / "o.dataset"))
    assert done.returncode == 1, done.stderr
    assert f"skipped {pipe_item}" in done.stdout
    assert "not a regular file" in done.stdout


def test_item_directory_with_a_pipe_inside(items: list[Path], tmp_path: Path) -> None:
    """An item directory whose metadata.json is a named pipe: listed, not read."""
    item = tmp_path / "in" / "dir_0.zarr"
    item.mkdir(parents=True)
    with zipfile.ZipFile(items[0]) as z:
        for name in z.namelist():
            target = item / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
    (item / "metadata.json").unlink()
    os.mkfifo(item / "metadata.json")
    done = _run_child(
        _merge_child("cadstore.merge(files, out)", items, item, tmp_path / "out.dataset")
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"ERRORS {[str(item)]!r}" in lines
    assert lines[-1] == "OK|"


def test_pipe_as_info_file(pipe_item: Path, tmp_path: Path) -> None:
    """The tables' own reader of item metadata refuses a pipe too (open_source, kind given)."""
    done = _run_child(
        _REPORT
        + f"""
from cadstore.merging import DatasetInfo
info = DatasetInfo(
    [{str(pipe_item)!r}], {str(tmp_path / "t.infoset")!r}, {str(tmp_path / "t.attribset")!r}
)
def run():
    info.parse_info_files()
    print("ERRORS", info.errors)
report(run)
"""
    )
    assert done.returncode == 0, done.stderr
    assert str(pipe_item) in done.stdout
    assert "not a regular file" in done.stdout
    assert done.stdout.splitlines()[-1] == "OK|"


def test_pipe_as_parquet_table(tmp_path: Path) -> None:
    pipe = tmp_path / "t.infoset"
    os.mkfifo(pipe)
    done = _run_child(
        _REPORT
        + f"""
from cadstore.io.location import resolve
from cadstore.lifecycle import TrustedTables
class Unversioned:
    path = "unversioned.dataset"
    def member(self, key):
        return None
report(lambda: TrustedTables(Unversioned()).read("infoset", resolve({str(pipe)!r})))
"""
    )
    kind, message = _child_error(done)
    assert kind == "CorruptStoreError"
    assert str(pipe) in message
    assert "not a regular file" in message


def test_json_store_with_a_pipe_inside(tmp_path: Path) -> None:
    store = tmp_path / "js"
    with JsonStorageHandler(store) as handler:
        handler.save_data("names", ["a", "b"])
    os.mkfifo(store / "pipe.json")
    done = _run_child(
        _REPORT
        + f"""
import cadstore
report(lambda: cadstore.open({str(store)!r}))
"""
    )
    kind, message = _child_error(done)
    assert kind == "CorruptStoreError"
    assert str(store) in message
    assert "'pipe.json' is not a regular file" in message
    done = _run_cli("inspect", str(store))
    assert done.returncode == 2, done.stderr
    assert "'pipe.json' is not a regular file" in done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_is_refused(items: list[Path], tmp_path: Path) -> None:
    done = _run_child(
        _REPORT
        + f"""
import cadstore
from cadstore.dataset.reader import DatasetReader
report(lambda: DatasetReader("/dev/zero"))
report(lambda: cadstore.open("/dev/zero"))
def merged():
    result = cadstore.merge({[*map(str, items), "/dev/zero"]!r}, {str(tmp_path / "o.dataset")!r})
    print("ERRORS", [e["file"] for e in result.errors])
report(merged)
"""
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("CorruptStoreError|/dev/zero")
    assert lines[1].startswith("UnknownFormatError|/dev/zero")
    assert "ERRORS ['/dev/zero']" in lines


def test_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.dataset"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(CorruptStoreError, match="not a regular file"):
            DatasetReader(path)
    finally:
        server.close()


# ==================================================== 14b: a closed reader stays closed
def _open_handles(path: Path) -> int:
    """How many of this process's file descriptors point at ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            pass
    return count


_READS: dict[str, Callable[[DatasetReader], object]] = {
    "read_item": lambda r: r.read_item(0),
    "read_items": lambda r: r.read_items([0, 1]),
    "read_rows": lambda r: r.read_rows("faces", "face_areas", 0, 1),
    "read_array": lambda r: r.read_array("faces", "face_areas"),
    "offsets": lambda r: r.offsets("faces"),
    "item_range": lambda r: r.item_range("faces", 0),
    "members": lambda r: r.members(),
    "member": lambda r: r.member("zarr.json"),
    "stored_bytes": lambda r: r.stored_bytes,
    "stored_nbytes": lambda r: r.stored_nbytes("faces", "face_areas"),
    "groups": lambda r: r.groups,
    "arrays": lambda r: r.arrays("faces"),
    "array_meta": lambda r: r.array_meta("faces", "face_areas"),
}


@pytest.mark.parametrize("read", sorted(_READS))
def test_closed_reader_refuses_every_read(dataset: Path, read: str) -> None:
    reader = DatasetReader(dataset)
    _READS[read](reader)
    reader.close()
    assert _open_handles(dataset) == 0
    with pytest.raises(StorageClosedError, match=str(dataset)):
        _READS[read](reader)
    assert _open_handles(dataset) == 0
    reader.close()  # idempotent
    assert "closed" in repr(reader)


def test_closed_reader_pickles_closed_and_open_reader_travels(dataset: Path) -> None:
    reader = DatasetReader(dataset)
    expected = reader.read_item(1)["faces"]["face_areas"]
    clone = pickle.loads(pickle.dumps(reader))  # noqa: S301 - our own object
    np.testing.assert_array_equal(clone.read_item(1)["faces"]["face_areas"], expected)
    clone.close()
    reader.close()
    # Closing is final, also for a copy made afterwards: it opens nothing.
    copy = pickle.loads(pickle.dumps(reader))  # noqa: S301 - our own object
    assert _open_handles(dataset) == 0
    with pytest.raises(StorageClosedError):
        copy.read_item(1)


def test_a_deeply_nested_schema_file_is_a_schema_error_naming_it(tmp_path: Path) -> None:
    from cadstore.errors import SchemaError
    from cadstore.schema import SchemaBuilder
    from cadstore.validation import load_schema_builder

    deep = tmp_path / "deep_schema.json"
    deep.write_text('{"a":' * 2000 + "1" + "}" * 2000)
    for load in (SchemaBuilder.load_from_file, load_schema_builder):
        with pytest.raises(SchemaError, match="nested deeper") as refused:
            load(str(deep))
        assert str(deep) in str(refused.value)


def test_pipes_where_schema_json_and_graph_files_are_read(tmp_path: Path) -> None:
    """A schema file, a JSON store's file or its metadata document, and a ``.pt`` graph
    file that are pipes hung their readers (each read the path as it was); now each is a
    ``CorruptStoreError`` naming it, and the JSON store's other data is untouched."""
    pipe = tmp_path / "schema.json"
    os.mkfifo(pipe)
    store = tmp_path / "json"
    calls = {
        "builder": f"SchemaBuilder.load_from_file({str(pipe)!r})",
        "validation": f"load_schema({str(pipe)!r})",
        "graph": f"PyGGraphStoreHandler().load_graph({str(tmp_path / 'item.pt')!r})",
        "json-data": f"JsonStorageHandler({str(store)!r})",
        "json-metadata": f"JsonStorageHandler({str(tmp_path / 'meta')!r}).load_metadata()",
    }
    os.mkfifo(tmp_path / "item.pt")
    good = JsonStorageHandler(str(store))
    good.save_data("face_areas", np.arange(3.0))
    good.close()
    os.mkfifo(store / "pipe.json")
    (tmp_path / "meta").mkdir()
    os.mkfifo(tmp_path / "meta" / "metadata.json")
    imports = """
from cadstore.schema import SchemaBuilder
from cadstore.storage import JsonStorageHandler
from cadstore.storage.graphstorage import PyGGraphStoreHandler
from cadstore.validation import load_schema
"""
    for name, call in calls.items():
        done = _run_child(_REPORT + imports + f"report(lambda: {call})\n")
        assert done.returncode == 0, (name, done.stderr)
        kind, _, message = done.stdout.splitlines()[-1].partition("|")
        assert kind == "CorruptStoreError", (name, done.stdout)
        assert "not a regular file" in message and str(tmp_path) in message, (name, message)
    os.unlink(store / "pipe.json")
    np.testing.assert_array_equal(
        JsonStorageHandler(str(store), read_only=True).load_data("face_areas"), np.arange(3.0)
    )
