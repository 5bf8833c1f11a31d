"""Hostile files cannot make cadstore allocate without bound; merges write what they read.

Issue 16, finding 10: a small file could make readers allocate gigabytes (a deflated
``zarr.json`` declaring a gigabyte, arrays of fill values with no chunks, string chunks that
are compression bombs, ...). Each hostile file here is built in the test, smaller than
10 MB, and every command that reads it runs in a child process whose peak resident memory
must stay under 256 MiB, ending in a cadstore error that names the file (or, for a merge,
with the file skipped and listed) and leaving the file as it was.

Finding 11c: a merge of many tiny arrays wrote shards whose index covered a whole default
shard grid; the output must stay proportional to the input.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

from cadstore import OptStorage
from cadstore.errors import CorruptStoreError, LimitExceededError
from cadstore.format.codecs import append_crc32c
from cadstore.format.limits import DecodeBudget, Limits
from cadstore.merging import merge_items
from cadstore.schema import SchemaBuilder

#: The bound the issue sets for any hostile file under 10 MB.
MAX_RSS_MIB = 256
MiB = 1024**2

# Runs the operations of a spec in one process, each caught, and reports what each gave
# and the process's peak resident memory (VmHWM) after it. An address-space cap keeps a
# regression from taking the machine's memory: it then fails with MemoryError.
CHILD = textwrap.dedent(
    """
    import contextlib, io, json, resource, sys, traceback
    resource.setrlimit(resource.RLIMIT_AS, (6 * 1024**3, 6 * 1024**3))
    import cadstore
    from cadstore import OptStorage
    from cadstore.cli import main
    from cadstore.errors import CadstoreError, CorruptStoreError
    from cadstore.io.location import resolve
    from cadstore.merging import merge_items
    from cadstore.merging.scan import scan_item

    spec = json.loads(sys.argv[1])
    results = []

    def peak():
        # The high-water mark of this process's own memory. (ru_maxrss would not do: on
        # Linux it keeps the parent's high-water mark across fork and exec.)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/self/status")

    def run(name, fn):
        entry = {"op": name}
        try:
            entry["value"] = fn()
        except BaseException as exc:  # MemoryError included: it is what a regression gives
            entry["error"] = type(exc).__name__
            entry["corrupt"] = isinstance(exc, CorruptStoreError)
            entry["cadstore"] = isinstance(exc, CadstoreError)
            entry["message"] = str(exc)
            entry["trace"] = traceback.format_exc()[-2000:]
        entry["peak_mib"] = peak()
        results.append(entry)

    def cli(*argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
        return {"code": code, "stderr": err.getvalue()[-2000:]}

    def storage_all(store):
        with OptStorage(store, mode="r") as storage:
            keys = storage.get_keys()
            for key in keys:
                storage.load_data(key)
            storage.load_metadata()
        return keys

    def opened(path):
        with cadstore.open(path) as artefact:
            return artefact.kind

    def scanned(path):
        found = scan_item(resolve(path))
        return found if isinstance(found, tuple) else "scanned"

    def merged(paths, out):
        result = merge_items(paths, out)
        return result.errors

    def read_dataset(path):
        from cadstore.dataset.reader import DatasetReader

        with DatasetReader(path) as reader:
            for code in range(reader.n_items):
                reader.read_item(code)
            return reader.n_items

    for op in spec["ops"]:
        kind, args = op[0], op[1:]
        if kind == "cli":
            run("cli " + " ".join(map(str, args)), lambda: cli(*args))
        elif kind == "storage":
            run("OptStorage", lambda: storage_all(*args))
        elif kind == "open":
            run("cadstore.open", lambda: opened(*args))
        elif kind == "scan":
            run("scan_item", lambda: scanned(*args))
        elif kind == "merge":
            run("merge", lambda: merged(*args))
        elif kind == "dataset":
            run("DatasetReader", lambda: read_dataset(*args))
    print(json.dumps({"results": results, "peak_mib": peak()}))
    """
)


def _run_child(ops: list[list[Any]], tmp_path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps({"ops": ops})],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def _digest(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode() + p.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- builders
def _schema_file(tmp_path: Path) -> Path:
    builder = SchemaBuilder("bounded", "1.0")
    faces = builder.create_group("faces", "face")
    faces.create_array("face_areas", ["face"], "float32")
    path = tmp_path / "schema.json"
    builder.save_to_file(path)
    return path


def _base_item(tmp_path: Path) -> Path:
    """A small legitimate item: the hostile ones are edits of it."""
    with OptStorage(tmp_path / "base.zarr") as storage:
        storage.save_data("face_areas", np.linspace(0, 1, 100, dtype=np.float32))
        storage.save_data("names", ["a", "bb"])
        storage.save_data("graph", {"edges": np.arange(50, dtype=np.int32)})
        storage.save_metadata("label", "base")
        storage.compress_store()
    return tmp_path / "base.zarr.data"


def _root_and_docs(data: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    with zipfile.ZipFile(data) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    return json.loads(members["zarr.json"]), members


def _write_zip(
    dst: Path,
    members: dict[str, bytes],
    streamed: dict[str, Callable[[Any], None]] | None = None,
) -> Path:
    """Write ``members`` stored, then each ``streamed`` member deflated, written in pieces
    by its function (so that a gigabyte-sized member is never held in memory here)."""
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, write in (streamed or {}).items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                write(fh)
    assert dst.stat().st_size < 10 * 1000**2, "hostile files must stay under 10 MB"
    return dst


def _repeat(piece: bytes, total: int) -> Callable[[Any], None]:
    def write(fh: Any) -> None:
        block = piece * (MiB // len(piece))
        done = 0
        while done < total:
            n = min(len(block), total - done)
            fh.write(block[:n])
            done += n

    return write


def _zstd_of(head: bytes, fill: bytes, total: int) -> bytes:
    """One zstd frame declaring its size: ``head``, then ``fill`` repeated to ``total``."""
    compressor = zstandard.ZstdCompressor(level=1, write_content_size=True)
    out = compressor.chunker(size=total, chunk_size=MiB)
    parts = list(out.compress(head))
    block = fill * (MiB // len(fill))
    done = len(head)
    while done < total:
        n = min(len(block), total - done)
        parts.extend(out.compress(block[:n]))
        done += n
    parts.extend(out.finish())
    return b"".join(parts)


def _deflate_of(head: bytes, fill: bytes, total: int, *, wbits: int) -> bytes:
    """A gzip (``wbits=31``) or zlib (15) stream of ``head``, then ``fill`` to ``total``."""
    comp = zlib.compressobj(1, zlib.DEFLATED, wbits)
    parts = [comp.compress(head)]
    block = fill * (MiB // len(fill))
    done = len(head)
    while done < total:
        n = min(len(block), total - done)
        parts.append(comp.compress(block[:n]))
        done += n
    parts.append(comp.flush())
    return b"".join(parts)


def _set_array(
    root: dict[str, Any], members: dict[str, bytes], path: str, doc: dict[str, Any]
) -> None:
    root["consolidated_metadata"]["metadata"][path] = doc
    members[f"{path}/zarr.json"] = json.dumps(doc).encode()
    members["zarr.json"] = json.dumps(root).encode()


def _array_doc(
    shape: list[int], chunks: list[int], data_type: str, codecs: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": "" if data_type == "string" else 1.5,
        "codecs": codecs,
        "attributes": {},
        "dimension_names": [f"d{i}" for i in range(len(shape))],
    }


def _vlen(strings: list[bytes]) -> bytes:
    out = [len(strings).to_bytes(4, "little")]
    for s in strings:
        out += [len(s).to_bytes(4, "little"), s]
    return b"".join(out)


def metadata_deflate_bomb(base: Path, dst: Path) -> tuple[Path, str]:
    """The root ``zarr.json`` deflated: 300 KB on disk, 256 MiB declared and inflated."""
    root, members = _root_and_docs(base)
    text = json.dumps(root).encode()
    del members["zarr.json"]
    spaces = _repeat(b" ", 256 * MiB - len(text))

    def write(fh: Any) -> None:
        fh.write(text)
        spaces(fh)

    return _write_zip(dst, members, {"zarr.json": write}), "face_areas"


def metadata_json_bomb(base: Path, dst: Path) -> tuple[Path, str]:
    """``metadata.json`` of 12 MiB (under ``max_metadata_bytes``) of ``{}`` objects,
    deflated: parsed, each three bytes become a 64-byte dict."""
    _, members = _root_and_docs(base)
    del members["metadata.json"]
    piece = b'{"x":[' + b"{}," * (4 * MiB) + b"{}]}"

    def write(fh: Any) -> None:
        fh.write(piece)

    return _write_zip(dst, members, {"metadata.json": write}), "face_areas"


def fill_value_arrays(base: Path, dst: Path) -> tuple[Path, str]:
    """Twelve arrays of 256 MiB each, with no chunk stored: all fill values (6 KB)."""
    root, members = _root_and_docs(base)
    for i in range(12):
        doc = _array_doc(
            [32 * MiB], [MiB], "float64", [{"name": "bytes", "configuration": {"endian": "little"}}]
        )
        _set_array(root, members, f"fill{i}", doc)
    return _write_zip(dst, members), "fill0"


def padded_fill_value_arrays(base: Path, dst: Path) -> tuple[Path, str]:
    """Twelve arrays of 120 MiB of fill values, beside 9.5 MB of incompressible padding:
    a file just under 10 MB gets no more room than a small one (a budget of 64 times the
    file's size let four of its arrays be decoded, 560 MiB)."""
    root, members = _root_and_docs(base)
    for i in range(12):
        doc = _array_doc(
            [15 * MiB], [MiB], "float64", [{"name": "bytes", "configuration": {"endian": "little"}}]
        )
        _set_array(root, members, f"fill{i}", doc)
    members["padding.bin"] = np.random.default_rng(0).bytes(9_500_000)
    return _write_zip(dst, members), "fill0"


def string_zstd_bomb(base: Path, dst: Path) -> tuple[Path, str]:
    """A vlen-utf8 + zstd string chunk holding one 512 MiB string."""
    root, members = _root_and_docs(base)
    doc = _array_doc([2], [2], "string", [{"name": "vlen-utf8"}, {"name": "zstd"}])
    _set_array(root, members, "names", doc)
    total = 512 * MiB
    # Two strings: "a", then one filling the rest of the payload.
    head = (2).to_bytes(4, "little") + (1).to_bytes(4, "little") + b"a"
    head += (total - len(head) - 4).to_bytes(4, "little")
    members["names/c/0"] = _zstd_of(head, b"x", total)
    return _write_zip(dst, members), "names"


def string_gzip_bomb(base: Path, dst: Path) -> tuple[Path, str]:
    """A vlen-utf8 + gzip string chunk holding one 256 MiB string."""
    root, members = _root_and_docs(base)
    doc = _array_doc([1], [1], "string", [{"name": "vlen-utf8"}, {"name": "gzip"}])
    _set_array(root, members, "names", doc)
    total = 256 * MiB
    head = (1).to_bytes(4, "little") + (total - 8).to_bytes(4, "little")
    members["names/c/0"] = _deflate_of(head, b"y", total, wbits=31)
    return _write_zip(dst, members), "names"


def v2_object_bomb(base: Path, dst: Path) -> tuple[Path, str]:
    """A Zarr v2 item whose object (vlen-utf8 + zlib) chunk holds one 256 MiB string."""
    total = 256 * MiB
    head = (1).to_bytes(4, "little") + (total - 8).to_bytes(4, "little")
    chunk = _deflate_of(head, b"z", total, wbits=15)
    zarray = {
        "zarr_format": 2,
        "shape": [1],
        "chunks": [1],
        "dtype": "|O",
        "compressor": {"id": "zlib", "level": 1},
        "fill_value": None,
        "order": "C",
        "filters": [{"id": "vlen-utf8"}],
    }
    members = {
        ".zgroup": json.dumps({"zarr_format": 2}).encode(),
        "names/.zarray": json.dumps(zarray).encode(),
        "names/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": ["n"]}).encode(),
        "names/0": chunk,
    }
    return _write_zip(dst, members), "names"


def chunk_beyond_shape(base: Path, dst: Path) -> tuple[Path, str]:
    """A 10-element array whose one chunk is 50M elements (400 MB), all zeros in zstd."""
    root, members = _root_and_docs(base)
    codecs = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd"}]
    _set_array(root, members, "face_areas", _array_doc([10], [50_000_000], "float64", codecs))
    members["face_areas/c/0"] = _zstd_of(b"", b"\0", 400_000_000)
    return _write_zip(dst, members), "face_areas"


def deflated_chunk_bomb(base: Path, dst: Path) -> tuple[Path, str]:
    """An uncompressed 200 MiB chunk, deflated by the zip to a fraction of a megabyte."""
    root, members = _root_and_docs(base)
    codecs = [{"name": "bytes", "configuration": {"endian": "little"}}]
    n = 25 * MiB
    _set_array(root, members, "face_areas", _array_doc([n], [n], "float64", codecs))
    del members["face_areas/c/0"]
    return _write_zip(dst, members, {"face_areas/c/0": _repeat(b"\0", 8 * n)}), "face_areas"


def many_metadata_documents(base: Path, dst: Path) -> tuple[Path, str]:
    """No consolidated metadata, and ten array documents of 4 MiB each, deflated."""
    root, members = _root_and_docs(base)
    del root["consolidated_metadata"]
    members["zarr.json"] = json.dumps(root).encode()
    doc = _array_doc([1], [1], "float64", [{"name": "bytes"}])
    text = json.dumps(doc).encode()[:-1] + b', "pad": [' + b"{}," * (4 * MiB // 3) + b"{}]}"
    streamed = {}
    for i in range(10):
        streamed[f"extra{i}/zarr.json"] = _repeat_once(text)
    return _write_zip(dst, members, streamed), "face_areas"


def _repeat_once(data: bytes) -> Callable[[Any], None]:
    def write(fh: Any) -> None:
        fh.write(data)

    return write


def fixed_width_strings(base: Path, dst: Path) -> tuple[Path, str]:
    """50,000 strings, one of them 3,000 characters long: as numpy fixed-width strings
    (how a saved numpy string array is given back) every element takes 12 KB."""
    root, members = _root_and_docs(base)
    doc = _array_doc([50_000], [50_000], "string", [{"name": "vlen-utf8"}, {"name": "zstd"}])
    _set_array(root, members, "labels", doc)
    payload = _vlen([b"q" * 3000] + [b""] * 49_999)
    members["labels/c/0"] = zstandard.ZstdCompressor().compress(payload)
    return _write_zip(dst, members), "labels"


HOSTILE_ITEMS = [
    metadata_deflate_bomb,
    metadata_json_bomb,
    fill_value_arrays,
    padded_fill_value_arrays,
    string_zstd_bomb,
    string_gzip_bomb,
    v2_object_bomb,
    chunk_beyond_shape,
    deflated_chunk_bomb,
    many_metadata_documents,
    fixed_width_strings,
]


@pytest.mark.parametrize("build", HOSTILE_ITEMS, ids=lambda f: f.__name__)
def test_hostile_item_keeps_memory_bounded(tmp_path: Path, build: Any) -> None:
    base = _base_item(tmp_path)
    data, key = build(base, tmp_path / "hostile.zarr.data")
    store = str(data)[: -len(".data")]
    before = _digest(data)
    schema = _schema_file(tmp_path)
    ops: list[list[Any]] = [
        ["cli", "inspect", data],
        ["cli", "validate", data, "--schema", schema],
        ["cli", "cat", data, key],
        ["cli", "export-json", data, "-o", tmp_path / "exported"],
        ["storage", store],
        ["open", str(data)],
        ["scan", str(data)],
        ["merge", [str(base), str(data)], str(tmp_path / "merged.dataset")],
    ]
    report = _run_child(
        [[str(a) if isinstance(a, Path) else a for a in op] for op in ops], tmp_path
    )
    name = data.name
    outcome: dict[str, dict[str, Any]] = {}
    for entry in report["results"]:
        op = entry["op"]
        assert entry["peak_mib"] < MAX_RSS_MIB, (op, entry)
        if op.startswith("cli"):
            # Commands that do not reach the hostile part may succeed; a failure is a
            # clear cadstore error naming the file, never a crash.
            value = entry["value"]
            assert value["code"] in (0, 2), (op, value)
            if value["code"]:
                assert "cadstore: error:" in value["stderr"] and name in value["stderr"], value
        elif op == "scan_item":
            # Scanning reads metadata and every member: it may not see a chunk bomb.
            if entry["value"] != "scanned":
                assert entry["value"][0].endswith(name), entry
        elif op == "merge":
            # The hostile item is skipped and listed, or merged when the merge does not
            # read its hostile part (string arrays are not merged), or (a chunk crafted to
            # pass the scan) the merge stops, naming it, and publishes nothing.
            if "error" in entry:
                assert entry["error"] == "MergeError" and name in entry["message"], entry
                assert not (tmp_path / "merged.dataset").exists()
        elif "error" in entry:
            assert entry["cadstore"] and name in entry["message"], entry
        outcome[op.split()[0] if not op.startswith("cli") else op.split()[1]] = entry
    # What reads everything meets the hostile part: refused, as a corrupt store.
    assert outcome["OptStorage"].get("corrupt"), outcome["OptStorage"]
    assert name in outcome["OptStorage"]["message"]
    assert outcome["export-json"]["value"]["code"] == 2, outcome["export-json"]
    assert not (tmp_path / "exported").exists()
    assert _digest(data) == before
    assert report["peak_mib"] < MAX_RSS_MIB


# ----------------------------------------------------------------------------- datasets
def _base_dataset(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "base.dataset"
    merge_items([str(base)], out)
    return out


def _codec_bytes(payload: bytes) -> bytes:
    """A chunk as cadstore writes it: zstd, then its crc32c."""
    return append_crc32c(zstandard.ZstdCompressor().compress(payload))


def _dataset_docs(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    return json.loads(members["zarr.json"]), members


def inner_chunk_bomb(base_dataset: Path, dst: Path) -> Path:
    """A 100-row array whose one inner chunk is 2**26 rows (256 MiB) of zeros in zstd."""
    root, members = _dataset_docs(base_dataset)
    doc = root["consolidated_metadata"]["metadata"]["faces/face_areas"]
    rows = 2**26
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [rows]
    doc["codecs"][0]["configuration"]["chunk_shape"] = [rows]
    chunk = append_crc32c(_zstd_of(b"", b"\0", 4 * rows))
    index = append_crc32c((0).to_bytes(8, "little") + len(chunk).to_bytes(8, "little"))
    members["faces/face_areas/c/0"] = chunk + index
    members["faces/face_areas/zarr.json"] = json.dumps(doc).encode()
    members["zarr.json"] = json.dumps(root).encode()
    return _write_zip(dst, members)


def rows_bomb(base_dataset: Path, dst: Path) -> Path:
    """The offsets give the one item 2**27 rows of every face array (512 MiB as float32),
    which the arrays declare and hold none of (absent shards: fill values)."""
    root, members = _dataset_docs(base_dataset)
    rows = 2**27
    docs = root["consolidated_metadata"]["metadata"]
    for path, doc in docs.items():
        if path.startswith("faces/") and doc["node_type"] == "array" and "offsets" not in path:
            doc["shape"] = [rows, *doc["shape"][1:]]
            members[f"{path}/zarr.json"] = json.dumps(doc).encode()
            for key in [k for k in members if k.startswith(f"{path}/c/")]:
                del members[key]
    offsets = np.array([0, rows], dtype="<i8").tobytes()
    members["faces/item_offsets/c/0"] = _codec_bytes(offsets)
    members["zarr.json"] = json.dumps(root).encode()
    return _write_zip(dst, members)


def frame_table_bomb(base_dataset: Path, dst: Path) -> Path:
    """An item-framed inner chunk whose frame table lists 1.19 million frames (9.5 MB):
    its sizes add up, as the reader checks, but every frame but the last is stored in no
    bytes. Held as a table it is ~16 bytes a frame; as Python objects, a dict entry per
    frame, it was over 200 MB."""
    root, members = _dataset_docs(base_dataset)
    doc = root["consolidated_metadata"]["metadata"]["faces/face_areas"]
    rows = 1_190_000
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [rows]
    doc["codecs"][0]["configuration"]["chunk_shape"] = [rows]
    last = zstandard.ZstdCompressor().compress(bytes(4))
    table = np.zeros(rows, dtype=[("raw", "<u4"), ("stored", "<u4")])
    table["raw"] = 4
    table["stored"][-1] = len(last)
    body = b"CSF1" + rows.to_bytes(4, "little") + table.tobytes()
    framed = (0x184D2A5C).to_bytes(4, "little") + len(body).to_bytes(4, "little") + body + last
    chunk = append_crc32c(framed)
    index = append_crc32c((0).to_bytes(8, "little") + len(chunk).to_bytes(8, "little"))
    members["faces/face_areas/c/0"] = chunk + index
    members["faces/face_areas/zarr.json"] = json.dumps(doc).encode()
    members["zarr.json"] = json.dumps(root).encode()
    return _write_zip(dst, members)


@pytest.mark.parametrize(
    "build", [inner_chunk_bomb, rows_bomb, frame_table_bomb], ids=lambda f: f.__name__
)
def test_hostile_dataset_keeps_memory_bounded(tmp_path: Path, build: Any) -> None:
    base = _base_item(tmp_path)
    data = build(_base_dataset(base, tmp_path), tmp_path / "hostile.dataset")
    before = _digest(data)
    ops = [
        ["cli", "info", str(data)],
        ["cli", "inspect", str(data)],
        ["cli", "cat", str(data), "faces/face_areas", "--item", "0"],
        ["cli", "validate", str(data), "--schema", str(_schema_file(tmp_path))],
        ["open", str(data)],
        ["dataset", str(data)],
    ]
    report = _run_child(ops, tmp_path)
    name = data.name
    for entry in report["results"]:
        assert entry["peak_mib"] < MAX_RSS_MIB, entry
        if entry["op"].startswith("cli"):
            value = entry["value"]
            assert value["code"] in (0, 2), entry
            if value["code"]:
                assert name in value["stderr"], entry
        elif "error" in entry:
            assert entry["cadstore"] and name in entry["message"], entry
    reads = {e["op"]: e for e in report["results"]}
    assert reads["DatasetReader"].get("corrupt"), reads["DatasetReader"]
    assert reads[f"cli cat {data} faces/face_areas --item 0"]["value"]["code"] == 2
    assert _digest(data) == before


# ------------------------------------------------------------------------ legitimate files
def test_legitimate_compressible_item_reads_whole(tmp_path: Path) -> None:
    """Twelve arrays of fill values are fine when the file is big enough to hold them:
    the budget grows with the file (and its default covers real CAD data's ratios)."""
    base = _base_item(tmp_path)
    data, _ = fill_value_arrays(base, tmp_path / "fill.zarr.data")
    generous = Limits(expansion_allowance=4 * 1024**3)
    with OptStorage(str(data)[: -len(".data")], mode="r", limits=generous) as storage:
        values = storage.load_data("fill0")
    assert values.shape == (32 * MiB,) and float(values[0]) == 1.5
    # A 20 MiB file with ratio 30 is within the default budget.
    assert Limits().decoded_budget(20 * MiB) >= 30 * 20 * MiB


def test_legitimate_items_read_within_the_default_budget(tmp_path: Path) -> None:
    """Real CAD data at a high compression level, and a list of strings of very different
    lengths (given back as a list, not as fixed-width numpy strings), read under the
    default limits."""
    from cadstore.synthetic import make_item, raw_nbytes, write_item

    # 200 faces, and 515: a file under 10 MiB decoding to more than 160 MiB, which the
    # budget refused when files that size got 160 MiB (16:1 at 10 MiB).
    for faces in (200, 515):
        item = make_item(0, n_faces=faces)
        path = write_item(tmp_path / f"dense{faces}.zarr", item, {}, compression_level=9)
        assert raw_nbytes(item) > 12 * os.path.getsize(path)  # compresses more than 12:1
        with OptStorage(tmp_path / f"dense{faces}.zarr", mode="r") as storage:
            for key in storage.get_keys():
                storage.load_data(key)
    assert raw_nbytes(item) > 160 * MiB and os.path.getsize(path) < 10 * MiB
    # 19:1 for the largest files under 10 MiB, and no more than 192 MiB for any of them:
    # a hostile one keeps a reader under 256 MiB (test_hostile_item_keeps_memory_bounded).
    assert Limits().decoded_budget(10 * MiB) == 192 * MiB
    labels = ["q" * 3000] + [""] * 49_999  # as fixed-width strings: 600 MB
    with OptStorage(tmp_path / "labels.zarr") as storage:
        storage.save_data("labels", labels)
        storage.compress_store()
    with OptStorage(tmp_path / "labels.zarr", mode="r") as storage:
        assert storage.load_data("labels") == labels


def test_budget_is_charged_once_per_array(tmp_path: Path) -> None:
    """Reading the same arrays again and again never exhausts a long-lived storage."""
    base = _base_item(tmp_path)
    tight = Limits(expansion_allowance=64 * 1024, expansion_threshold=0, max_expansion=1)
    with OptStorage(str(base)[: -len(".data")], mode="r", limits=tight) as storage:
        for _ in range(50):
            for key in storage.get_keys():
                storage.load_data(key)


def test_budget_refuses_what_adds_up(tmp_path: Path) -> None:
    """Each array fits alone; together they exceed the file's budget: the one that does
    not fit is refused, naming the file and the array."""
    base = _base_item(tmp_path)
    data, _ = fill_value_arrays(base, tmp_path / "fill.zarr.data")
    limits = Limits(expansion_allowance=600 * MiB)
    with OptStorage(str(data)[: -len(".data")], mode="r", limits=limits) as storage:
        storage.load_data("fill0")
        storage.load_data("fill1")
        with pytest.raises(LimitExceededError, match=r"fill\.zarr\.data.*'fill2'"):
            storage.load_data("fill2")


def test_decode_budget_accounting() -> None:
    budget = DecodeBudget("f.data", 1000, Limits(expansion_allowance=100, max_expansion=0))
    budget.charge("a", 60)
    budget.charge("a", 60)  # again: nothing more
    budget.charge("a", 70)  # grown: only the difference
    assert budget.used == 70 and budget.remaining == 30
    with pytest.raises(LimitExceededError, match=r"f\.data: 'b' would decode to 31 bytes"):
        budget.charge("b", 31)
    assert budget.used == 70
    with pytest.raises(LimitExceededError, match="chunk"):
        budget.check("a chunk", 31)
    budget.check("a chunk", 30)
    assert budget.used == 70
    # Rows of an array: the same refusal, naming them.
    with pytest.raises(LimitExceededError, match=r"rows 5:9 of faces/face_areas would decode"):
        budget.check_rows("faces/face_areas", 5, 9, 31)
    budget.check_rows("faces/face_areas", 5, 9, 30)
    assert budget.used == 70


def test_decode_budget_sized_when_needed() -> None:
    """A budget given its file's size as a function asks it only for a decision past
    what every budget holds, once, and decides as the budget given the size does."""
    limits = Limits(expansion_allowance=100, expansion_threshold=0, max_expansion=1)
    asked: list[int] = []

    def size() -> int:
        asked.append(1)
        return 50

    lazy, sized = DecodeBudget("f", size, limits), DecodeBudget("f", 50, limits)
    for budget in (lazy, sized):
        budget.charge("a", 60)
        budget.check("a chunk", 40)
    # Before it is sized, what remains of the least budget (100), which it is never below.
    assert lazy.room() == (40, False) and sized.room() == (90, True)
    assert asked == []
    for budget in (lazy, sized):
        budget.check("a chunk", 90)  # past 100, within 150
        assert budget.room() == (90, True)
        with pytest.raises(LimitExceededError, match=r"this 50-byte file"):
            budget.charge("b", 91)
        budget.charge("b", 90)
        assert budget.remaining == 0
    assert asked == [1]


@pytest.mark.parametrize("name", ["max_expansion", "expansion_threshold", "max_chunk_bytes"])
def test_negative_limits_are_refused(name: str) -> None:
    """A negative limit is refused naming it: a budget shrinking as its file grows
    (max_expansion below zero) made the allowance, taken as what every budget holds
    before a directory store is sized, more than some budgets hold."""
    with pytest.raises(ValueError, match=rf"Limits\.{name} must not be negative, got -1"):
        Limits(**{name: -1})


def _directory_store(path: Path) -> Path:
    """A directory store of a string array (300 strings of 1,000 characters, one zstd
    chunk whose payload is 300 kB) and a float64 array of 800 kB, both compressing well."""
    from cadstore.format.hierarchy import BuildHierarchy, default_dims

    build = BuildHierarchy()
    build.put("s", ["x" * 1000] * 300, lambda p, n: (default_dims(p, n), 0))
    build.put("f", np.arange(100_000, dtype=np.float64), lambda p, n: (default_dims(p, n), 0))
    for key, data in build.members():
        (path / key).parent.mkdir(parents=True, exist_ok=True)
        (path / key).write_bytes(data)
    return path


def test_directory_store_budget_sized_only_when_needed(
    tmp_path: Path, directory_sizings: list[str]
) -> None:
    """A directory store's decode budget asks its size (a walk of every file below it)
    only when a read needs more than every budget holds, and then decides as a budget
    sized up front: reads within it are given back, and reads beyond it refused naming
    the store and its size. Opening one walked it twice before anything was read."""
    from cadstore.format.hierarchy import ReadHierarchy
    from cadstore.io.sources import DirectorySource

    store = _directory_store(tmp_path / "store")
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    sized = directory_sizings
    # Every budget holds 100 kB; this store's is 100 kB and 64 bytes a byte of it.
    limits = Limits(expansion_allowance=100_000, expansion_threshold=0)
    source = DirectorySource(str(store), limits)
    hier = ReadHierarchy(source, limits)
    assert sized == []
    # 300 kB of strings: past what every budget holds (the payload's first cap), within
    # this one's.
    assert hier.read_node("s") == ["x" * 1000] * 300
    assert sized == [str(store)]
    np.testing.assert_array_equal(hier.read_node("f"), np.arange(100_000, dtype=np.float64))
    assert sized == [str(store)]  # asked once
    assert source.budget.total == limits.decoded_budget(size)

    # One byte a byte: neither fits. The floats are refused before they are decoded...
    tight = Limits(expansion_allowance=100_000, expansion_threshold=0, max_expansion=1)
    source = DirectorySource(str(store), tight)
    with pytest.raises(LimitExceededError) as refused:
        ReadHierarchy(source, tight).read_node("f")
    assert str(store) in str(refused.value)
    assert f"this {size}-byte file" in str(refused.value)
    # ... the strings' payload decompressed no further than what exactly remains (a
    # quarter of it: the strings made of it cost up to four bytes a byte).
    source = DirectorySource(str(store), tight)
    with pytest.raises(CorruptStoreError) as refused:
        ReadHierarchy(source, tight).read_node("s")
    assert str(store) in str(refused.value)
    assert f"more than the {source.budget.remaining // 4} the chunk" in str(refused.value)
    assert source.budget.file_bytes == size


def _read_outcome(
    store: Path, limits: Limits, path: str, *, lazy: bool
) -> tuple[tuple[Any, ...], DecodeBudget]:
    """Read array ``path`` of a directory store, its budget sized lazily (as a directory
    store's is) or up front: what the read gave or raised and what the budget charged,
    and the budget."""
    from cadstore.format.hierarchy import ReadHierarchy
    from cadstore.io.sources import DirectorySource

    source = DirectorySource(str(store), limits)
    source._sized_when_needed = lazy
    try:
        value: Any = ReadHierarchy(source, limits).read_node(path)
        outcome: tuple[Any, ...] = ("read", np.asarray(value).tolist())
    except CorruptStoreError as exc:  # LimitExceededError included
        outcome = (type(exc), str(exc))
    return (*outcome, source.budget.used), source.budget


def _msgpack_store(path: Path, text: str) -> Path:
    """A Zarr v2 directory store of one string, encoded by numcodecs' MsgPack filter with
    no compressor (what zarr-python 2 writes for an object array)."""
    msgpack = pytest.importorskip("msgpack")
    (path / "s").mkdir(parents=True)
    (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    zarray = {
        "zarr_format": 2,
        "shape": [1],
        "chunks": [1],
        "dtype": "|O",
        "compressor": None,
        "fill_value": None,
        "filters": [{"id": "msgpack2"}],
        "order": "C",
    }
    (path / "s" / ".zarray").write_text(json.dumps(zarray))
    (path / "s" / ".zattrs").write_text(json.dumps({"cadstore_kind": "strings"}))
    (path / "s" / "0").write_bytes(msgpack.packb([text, "|O", [1]]))
    return path


@pytest.mark.parametrize(
    ("max_expansion", "outcome"),
    # Its budget holds the payload's strings at four bytes a byte, or cannot.
    [(5, "read"), (3, LimitExceededError)],
    ids=["within the budget", "over the budget"],
)
def test_directory_store_msgpack_strings_read_as_if_sized_up_front(
    tmp_path: Path, max_expansion: int, outcome: Any
) -> None:
    """A Zarr v2 MsgPack string chunk of a directory store, whose budget is sized only
    when needed, is read or refused exactly as with its budget sized up front, its budget
    charged alike. A healthy 100,000-character string past what every budget holds was
    refused (its payload's charge, kept from a first try capped at the least budget,
    shrank the second try's cap below the one a budget sized up front gives)."""
    text = "x" * 100_000
    store = _msgpack_store(tmp_path / "store", text)
    limits = Limits(expansion_allowance=20_000, expansion_threshold=0, max_expansion=max_expansion)
    up_front, sized = _read_outcome(store, limits, "s", lazy=False)
    lazy, budget = _read_outcome(store, limits, "s", lazy=True)
    assert lazy == up_front and budget.total == sized.total
    if outcome == "read":
        assert up_front[:2] == ("read", [text])
    else:
        assert up_front[0] is outcome
        assert str(store) in up_front[1] and "'s'" in up_front[1]


def test_msgpack_strings_nesting_arrays_refused_within_their_charge(tmp_path: Path) -> None:
    """A MsgPack string chunk nesting more arrays than a chunk of its shape holds is
    refused as corrupt, naming the store and the array, its unpacking held to a few times
    what its payload was charged. Only each array's length was bounded: a 1 MB payload
    for 1,000 strings, an array of 1,002 arrays of 1,002 empty arrays, took 64 MB to
    unpack (its charge about 4 MB) before it was refused for holding no item."""
    import tracemalloc

    from cadstore.format.hierarchy import ReadHierarchy
    from cadstore.io.sources import DirectorySource

    store = _msgpack_store(tmp_path / "store", "x")
    zarray = json.loads((store / "s" / ".zarray").read_text())
    zarray["shape"] = zarray["chunks"] = [1000]
    (store / "s" / ".zarray").write_text(json.dumps(zarray))
    array16 = b"\xdc" + (1002).to_bytes(2, "big")
    payload = array16 + (array16 + b"\x90" * 1002) * 1002
    (store / "s" / "0").write_bytes(payload)
    limits = Limits()
    source = DirectorySource(str(store), limits)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptStoreError) as refused:
            ReadHierarchy(source, limits).read_node("s")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(store) in str(refused.value) and "'s'" in str(refused.value)
    assert "nests more than 2 arrays" in str(refused.value)
    charged = source.budget.used
    assert 4 * len(payload) < charged and peak < 3 * charged
    assert (store / "s" / "0").read_bytes() == payload


@pytest.mark.parametrize("shape", [(6,), (2, 3), (2, 3, 4), (1, 1, 5), (3, 1)])
def test_msgpack_strings_of_every_chunk_shape_read(shape: tuple[int, ...]) -> None:
    """numcodecs packs a chunk of strings as its nested ``tolist()``: every list of a
    chunk of any shape is within the bound on the arrays a payload nests."""
    numcodecs = pytest.importorskip("numcodecs")
    from cadstore.format.codecs import decode_msgpack_strings

    strings = np.array([f"s{i}" for i in range(int(np.prod(shape)))], dtype=object)
    payload = numcodecs.MsgPack().encode(strings.reshape(shape))
    assert decode_msgpack_strings(payload, shape, 1024) == strings.tolist()


def _zstd_no_size(payload: bytes) -> bytes:
    """A zstd frame of ``payload`` that does not declare its decoded size."""
    return zstandard.ZstdCompressor(write_content_size=False).compress(payload)


@pytest.mark.parametrize(
    ("chunk", "problem"),
    [
        # Declares more items than the chunk holds.
        (zstandard.ZstdCompressor().compress(b"\xff\xff\xff\x7fjunk"), "holds 2147483647 items"),
        # A truncated frame not declaring its size.
        (_zstd_no_size(_vlen([b"x" * 1000] * 300))[:-40], "zstd data is corrupt"),
    ],
    ids=["item count", "truncated frame"],
)
def test_directory_store_corrupt_chunk_refused_without_sizing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    directory_sizings: list[str],
    chunk: bytes,
    problem: str,
) -> None:
    """A corrupt chunk of a directory store is refused as with its budget sized up front,
    decoded once and the store never sized. Any undecodable chunk was decoded again
    within what exactly remains, walking the whole store to size its budget first."""
    from cadstore.format import codecs

    store = _directory_store(tmp_path / "store")
    (store / "s" / "c" / "0").write_bytes(chunk)
    limits = Limits(expansion_allowance=100_000, expansion_threshold=0)
    up_front, _ = _read_outcome(store, limits, "s", lazy=False)
    assert up_front[0] is CorruptStoreError
    assert str(store) in up_front[1] and "'s'" in up_front[1] and problem in up_front[1]

    decoded: list[int] = []
    real_zstd = codecs.decode_zstd

    def decode_zstd(data: bytes | memoryview, expected: int | None, limit: int) -> bytes:
        decoded.append(len(data))
        return real_zstd(data, expected, limit)

    directory_sizings.clear()  # the read sized up front asked it
    monkeypatch.setattr(codecs, "decode_zstd", decode_zstd)
    lazy, _ = _read_outcome(store, limits, "s", lazy=True)
    assert (directory_sizings, decoded) == ([], [len(chunk)])
    assert lazy == up_front
    assert (store / "s" / "c" / "0").read_bytes() == chunk


#: Chunk headers declaring more bytes than any chunk may hold (Limits.max_chunk_bytes).
_BEYOND_EVERY_CAP = {
    # A zstd frame header (single segment, an 8-byte content size) declaring 2**40 bytes.
    "zstd": b"\x28\xb5\x2f\xfd\xe0" + (2**40).to_bytes(8, "little") + b"\x01\x00\x00",
    # numcodecs' LZ4 framing: the decoded size, then the block.
    "lz4": b"\xff\xff\xff\xff" + b"junk",
    # A blosc header: version, its codec's version, flags, type size, then the decoded,
    # block and compressed sizes (the compressed size is the chunk's own).
    "blosc": bytes([2, 1, 1, 1]) + struct.pack("<III", 0xFFFFFFFF, 4096, 16),
}


@pytest.mark.parametrize(
    ("codec", "declared"), [("zstd", 2**40), ("lz4", 2**32 - 1), ("blosc", 2**32 - 1)]
)
def test_directory_store_chunk_beyond_every_cap_refused_without_sizing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    directory_sizings: list[str],
    codec: str,
    declared: int,
) -> None:
    """A string chunk of a directory store whose header declares more bytes than any
    chunk may hold (``max_chunk_bytes``, whatever the store's size) is refused as with
    its budget sized up front, decoded once and the store never sized. It was taken for
    one past the least budget's cap: the store was sized (a walk of the whole tree) and
    the chunk decoded again, to the same refusal."""
    from cadstore.format import codecs

    chunk = _BEYOND_EVERY_CAP[codec]
    store = _msgpack_store(tmp_path / "store", "x")
    zarray = json.loads((store / "s" / ".zarray").read_text())
    zarray["compressor"] = {"id": codec}
    (store / "s" / ".zarray").write_text(json.dumps(zarray))
    (store / "s" / "0").write_bytes(chunk)
    limits = Limits(expansion_allowance=100_000, expansion_threshold=0)
    up_front, _ = _read_outcome(store, limits, "s", lazy=False)
    assert up_front[0] is CorruptStoreError
    assert str(store) in up_front[1] and "'s'" in up_front[1]
    assert f"declares {declared} bytes" in up_front[1]

    decoded: list[int] = []
    name = f"decode_{codec}"
    real = getattr(codecs, name)

    def decode(data: bytes | memoryview, expected: int | None, limit: int) -> bytes:
        decoded.append(len(data))
        return real(data, expected, limit)

    directory_sizings.clear()  # the read sized up front asked it
    monkeypatch.setattr(codecs, name, decode)
    lazy, _ = _read_outcome(store, limits, "s", lazy=True)
    assert (directory_sizings, decoded) == ([], [len(chunk)])
    assert lazy == up_front
    assert (store / "s" / "0").read_bytes() == chunk


def test_directory_store_unsized_zstd_frame_read_past_the_least_budget(
    tmp_path: Path, directory_sizings: list[str]
) -> None:
    """A string chunk whose zstd frame does not declare its size, decoding past what
    every budget holds but within its directory store's, is read: the first cap met is
    told from a corrupt frame, and the chunk decoded again once the store is sized."""

    store = _directory_store(tmp_path / "store")
    strings = ["x" * 1000] * 300
    (store / "s" / "c" / "0").write_bytes(_zstd_no_size(_vlen([s.encode() for s in strings])))
    limits = Limits(expansion_allowance=100_000, expansion_threshold=0)
    lazy, budget = _read_outcome(store, limits, "s", lazy=True)
    assert lazy[:2] == ("read", strings) and directory_sizings == [str(store)]
    up_front, sized_budget = _read_outcome(store, limits, "s", lazy=False)
    assert lazy == up_front and budget.total == sized_budget.total


# ------------------------------------------------------------------------------ merging
@pytest.mark.parametrize("level", [3, None])
@pytest.mark.parametrize(
    ("names", "factor"),
    [
        # Arrays of one group ("face" in their names): each is one shard and its metadata.
        ("face_{i}_{j}", 4),
        # An array per group (no rule places them): each brings a group of three arrays
        # (its rows, their provenance, the offsets) and four metadata documents, each
        # stored twice (on its own and in the consolidated root) and a zip entry each.
        ("a{i}_{j}", 8),
    ],
    ids=["one group", "a group each"],
)
def test_merge_output_is_proportional_to_input(
    tmp_path: Path, level: int | None, names: str, factor: int
) -> None:
    """Many items of many 1-byte arrays: the dataset stays within a small multiple of their
    size plus a fixed allowance. It was 22 KB per array (54 times the input, 255 times
    uncompressed): each shard index covered a whole default shard grid, 16 KiB, and an
    uncompressed inner chunk was padded to 16 KiB."""
    paths = []
    for i in range(10):
        with OptStorage(tmp_path / f"tiny{i}.zarr") as storage:
            for j in range(40):
                storage.save_data(names.format(i=i, j=j), np.array([j % 256], dtype=np.uint8))
            storage.compress_store()
        paths.append(str(tmp_path / f"tiny{i}.zarr.data"))
    bytes_in = sum(os.path.getsize(p) for p in paths)
    out = tmp_path / "tiny.dataset"
    result = merge_items(paths, out, compression_level=level)
    assert len(result.items) == 10 and not result.errors
    bytes_out = out.stat().st_size
    ratio = bytes_out / bytes_in
    assert bytes_out <= factor * bytes_in + 64 * 1024, (bytes_in, bytes_out, ratio)
    # Still every value back, through zarr-python too.
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(zarr.storage.ZipStore(out, mode="r"), mode="r")
    first = names.format(i=3, j=7)
    if names.startswith("face"):
        # One row per item in the group; item 3's is 7.
        assert np.asarray(group[f"faces/{first}"][:])[3] == 7
    else:
        assert np.asarray(group[f"{first}/{first}"][:]).tolist() == [7]


def test_shard_layout_follows_the_rows() -> None:
    """A small array gets a shard (and an index) for its rows, not a whole default shard;
    a large one the default layout, as before."""
    from cadstore.format.sharding import MIN_SHARD_INNERS, shard_layout

    full = shard_layout(1, 64 * 1024, 16 * MiB, item_rows=1)
    assert full == (16384, 16384 * 1024)  # an index of 1,024 entries: 16 KiB
    assert shard_layout(1, 64 * 1024, 16 * MiB, item_rows=1, total_rows=10**9) == full
    inner, shard = shard_layout(1, 64 * 1024, 16 * MiB, item_rows=1, total_rows=1)
    assert (inner, shard // inner) == (16384, MIN_SHARD_INNERS)
    # Room for the inner chunks the rows need: 1,000,000 rows in 62 of 16,384.
    assert shard_layout(1, 64 * 1024, 16 * MiB, item_rows=1, total_rows=10**6) == (
        16384,
        16384 * 62,
    )
    # Uncompressed, the padding of an inner chunk would be stored: it holds the rows only.
    inner, shard = shard_layout(1, 64 * 1024, 16 * MiB, item_rows=1, total_rows=3, compressed=False)
    assert inner == 3 and shard == 3 * MIN_SHARD_INNERS
