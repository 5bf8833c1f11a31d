"""Zarr array metadata and chunks, written and read without zarr-python.

This module turns one stored leaf into standard Zarr metadata plus chunk bytes (format 3,
or format 2 on request), and turns such metadata and chunks back into a numpy array. It
reads what zarr-python 2.x and 3.x write for the dtypes and codecs on the allow-list in
:mod:`cadstore.format.codecs`, and validates every field of the metadata before using it.

Why not zarr-python: its cost is per array (about 1 ms to create or read one), and a CAD
item is dozens of small arrays; see ``performance.md`` in the project references. zarr-python
stays the reference reader in the test suite.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import product
from types import EllipsisType
from typing import Any, Literal, NamedTuple

import numpy as np

from cadstore.errors import LimitExceededError
from cadstore.format import codecs as C
from cadstore.format.limits import DecodeBudget, Limits

__all__ = [
    "ArrayMeta",
    "STRING",
    "chunk_rows",
    "decode_array",
    "encode_array",
    "encode_v3_chunks",
    "parse_array_meta",
]

#: Marker dtype for variable-length UTF-8 string arrays.
STRING = "string"
#: Target number of elements per chunk (the specified design's "about 1M").
CHUNK_ELEMENTS = 1_000_000
#: Below this many raw bytes a chunk is stored uncompressed: zstd would not pay off.
MIN_COMPRESS_BYTES = 512

_V3_DTYPES = {
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
}


class MetadataError(ValueError):
    """Metadata of the wrong shape; readers re-raise it as a corrupt-store error."""


@dataclass(frozen=True, slots=True)
class ArrayMeta:
    """The parts of an array's metadata a reader needs, validated.

    Attributes
    ----------
    zarr_format
        2 or 3.
    shape, chunks
        Array and chunk shape.
    dtype
        A numpy dtype, or :data:`STRING` for variable-length strings.
    fill_value
        Value of elements whose chunk is missing.
    dims
        Dimension names (``dimension_names`` in v3, ``_ARRAY_DIMENSIONS`` in v2) or ``None``.
    attributes
        User attributes (without ``_ARRAY_DIMENSIONS``).
    codecs
        v3 codec list, or for v2 ``[compressor?]`` preceded by the filters.
    separator
        Chunk key separator.
    chunk_prefix
        ``"c"`` for v3 default chunk keys, ``""`` otherwise.
    order
        ``"C"`` or ``"F"`` (v2 only).
    item_shape, item_dims
        For an item array stored as its upper triangle
        (:func:`cadstore.format.triangle.item_layout`): the ``N x N (x k)`` shape and the
        dimension names it is read as; ``None`` otherwise.
    """

    zarr_format: int
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: Any
    fill_value: Any
    dims: tuple[str, ...] | None
    attributes: dict[str, Any]
    codecs: tuple[dict[str, Any], ...]
    filters: tuple[dict[str, Any], ...] = ()
    separator: str = "/"
    chunk_prefix: str = "c"
    order: Literal["C", "F"] = "C"
    object_codec: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    item_shape: tuple[int, ...] | None = None
    item_dims: tuple[str, ...] | None = None

    @property
    def read_shape(self) -> tuple[int, ...]:
        """The shape the array is read as: :attr:`item_shape` for a triangle, else
        :attr:`shape`."""
        return self.shape if self.item_shape is None else self.item_shape

    @property
    def read_dims(self) -> tuple[str, ...] | None:
        """The dimension names the array is read with (see :attr:`read_shape`)."""
        return self.dims if self.item_shape is None else self.item_dims

    @property
    def is_string(self) -> bool:
        """Whether elements are variable-length strings."""
        # dtype is the STRING marker (a str) or a numpy dtype; comparing a numpy dtype
        # with a str costs a microsecond, and readers ask this several times per chunk.
        return isinstance(self.dtype, str)

    @property
    def itemsize(self) -> int:
        """Bytes per element (an estimate of 16 for strings, used for limits only)."""
        return 16 if self.is_string else int(self.dtype.itemsize)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    def chunk_key(self, index: Sequence[int]) -> str:
        """Return the chunk key, relative to the array, for a chunk grid index."""
        return format_chunk_key(self.zarr_format, self.chunk_prefix, self.separator, index)

    def is_chunk_key(self, rel: str) -> bool:
        """Whether ``rel`` is the key, relative to the array, of a chunk of its grid: the
        key :meth:`chunk_key` gives for an index inside the grid, spelt as it spells it
        (a key of another array's encoding, off the grid or with leading zeros is not)."""
        if not self.shape:
            return rel == self.chunk_key(())
        prefix = f"{self.chunk_prefix}{self.separator}" if self.chunk_prefix else ""
        if not rel.startswith(prefix):
            return False
        parts = rel[len(prefix) :].split(self.separator)
        if len(parts) != len(self.shape):
            return False
        index = []
        for part, size, chunk in zip(parts, self.shape, self.chunks, strict=True):
            # (A name's digits are not trusted to be few: int() refuses over 4,300.)
            if not (part.isascii() and part.isdigit() and len(part) < 20):
                return False
            if int(part) >= -(-size // chunk):
                return False
            index.append(int(part))
        return rel == self.chunk_key(index)


def format_chunk_key(zarr_format: int, prefix: str, separator: str, index: Sequence[int]) -> str:
    """Return a chunk key relative to its array: ``c/0/1`` (v3 default encoding), ``0.1``
    (v2, or v3's ``v2`` encoding); a 0-d array's only chunk is ``c`` or ``0``."""
    if zarr_format == 3:
        if not index:
            return prefix if prefix else "0"
        body = separator.join(str(i) for i in index)
        return f"{prefix}{separator}{body}" if prefix else body
    return separator.join(str(i) for i in index) if index else "0"


def _int_tuple(value: Any, what: str, *, positive: bool) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise MetadataError(f"{what} is not a list")
    out = tuple(value)
    # JSON gives exact ints (never bool subclasses here); one pass over types and bounds.
    if all(type(v) is int for v in out) and (not out or min(out) >= (1 if positive else 0)):
        return out
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if positive else 0):
            wanted = "positive" if positive else "non-negative"
            raise MetadataError(f"{what} holds {v!r}, expected a {wanted} integer")
    # Integers of another int type (never from JSON): kept as plain ints.
    return tuple(int(v) for v in value)


#: Elements an array may hold at most (numpy's and zarr-python's indices are int64).
_MAX_ELEMENTS = 2**63 - 1


def _check_sizes(
    shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int, limits: Limits
) -> None:
    if len(shape) > limits.max_dims:
        raise MetadataError(f"{len(shape)} dimensions exceed the limit of {limits.max_dims}")
    if len(chunks) != len(shape):
        raise MetadataError(f"chunk shape {chunks} does not match shape {shape}")
    if math.prod(shape) > _MAX_ELEMENTS:
        # No array holds more: numpy, zarr-python and xarray index with int64 (a shape of
        # 2**70 let OverflowError out of xarray, where cadstore's reader had accepted it).
        raise MetadataError(f"shape {shape} holds more than 2**63 - 1 elements")
    if math.prod(chunks) * itemsize > limits.max_chunk_bytes:
        raise MetadataError(
            f"chunk shape {chunks} would decode to more than max_chunk_bytes="
            f"{limits.max_chunk_bytes}"
        )


def _parse_fill(value: Any, dtype: Any) -> Any:
    """The fill value of a ``dtype`` array from its metadata, refused unless it is one.

    A value the dtype cannot hold (a complex value for a real array, a float beyond its
    range, an integer out of its bounds) would otherwise surface as a numpy warning or
    error when a missing chunk is filled, not as a clear error naming the array.
    """
    try:
        parsed = _parse_fill_value(value, dtype)
    except MetadataError:
        raise
    except (ArithmeticError, ValueError) as exc:  # a hex value too long for the dtype, ...
        raise MetadataError(f"fill_value {value!r} does not fit {dtype} ({exc})") from None
    if isinstance(dtype, str):
        return parsed
    if isinstance(parsed, complex) and dtype.kind != "c":
        raise MetadataError(f"fill_value {value!r} is complex; the array holds {dtype}")
    if (
        dtype.kind in "iu"
        and isinstance(parsed, int)
        and not np.iinfo(dtype).min <= parsed <= np.iinfo(dtype).max
    ):
        # Checked here: numpy before 2.0 only warns of an integer out of bounds.
        raise MetadataError(f"fill_value {value!r} does not fit {dtype}")
    try:
        # np.errstate, not a warnings filter: the filters are the process's, and a
        # filter turning warnings into errors here would also raise, in another thread,
        # a warning that has nothing to do with this (readers parse metadata in threads).
        with np.errstate(all="raise"):
            np.array(parsed, dtype=dtype)
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise MetadataError(f"fill_value {value!r} does not fit {dtype} ({exc})") from None
    return parsed


def _parse_fill_value(value: Any, dtype: Any) -> Any:
    if isinstance(dtype, str):
        return "" if value is None else value
    if value is None:
        return 0
    if isinstance(value, str):
        specials = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        if value in specials:
            return specials[value]
        if value.startswith("0x"):
            raw = int(value, 16).to_bytes(dtype.itemsize, "big")
            return np.frombuffer(raw, dtype=dtype.newbyteorder(">"))[0]
        raise MetadataError(f"unsupported fill_value {value!r}")
    if isinstance(value, list) and len(value) == 2:
        real, imag = (_parse_fill_value(v, np.dtype("f8")) for v in value)
        return complex(real, imag)
    if isinstance(value, bool | int | float):
        return value
    raise MetadataError(f"unsupported fill_value {value!r}")


def parse_array_meta(
    doc: Mapping[str, Any], limits: Limits, *, attrs: Mapping[str, Any] | None = None
) -> ArrayMeta:
    """Validate a v3 ``zarr.json`` or v2 ``.zarray`` document (with v2 ``.zattrs``).

    Raises
    ------
    MetadataError
        For any field of the wrong type or value, an unsupported dtype or codec, or sizes
        beyond ``limits``.
    """
    try:
        fmt = doc.get("zarr_format")
        if fmt == 3:
            return _parse_v3(doc, limits)
        if fmt == 2:
            return _parse_v2(doc, attrs or {}, limits)
    except MetadataError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        # Untrusted JSON can put any value anywhere; whatever a check did not foresee is
        # still malformed metadata, not a crash.
        raise MetadataError(f"malformed metadata ({type(exc).__name__}: {exc})") from exc
    raise MetadataError(f"unknown zarr_format {fmt!r}")


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    # numpy computes dtype.name in Python on every access.
    return dtype.name


@functools.lru_cache(maxsize=64)
def _little_dtype(name: str) -> np.dtype:
    # Building a dtype from its name costs microseconds; items repeat a dozen names.
    return np.dtype(name).newbyteorder("<")


def _parse_v3(doc: Mapping[str, Any], limits: Limits) -> ArrayMeta:
    # Documents come from json.loads (or cadstore's own encoder): their objects are dicts,
    # and a dict check costs a fraction of an abstract Mapping check on this hot path.
    if doc.get("node_type") != "array":
        raise MetadataError("node_type is not 'array'")
    shape = _int_tuple(doc.get("shape"), "shape", positive=False)
    data_type = doc.get("data_type")
    if data_type == "string":
        dtype: Any = STRING
    elif type(data_type) is str and data_type in _V3_DTYPES:
        dtype = _little_dtype(data_type)
    else:
        raise MetadataError(f"unsupported data_type {data_type!r}")
    grid = doc.get("chunk_grid")
    if not isinstance(grid, dict) or grid.get("name") != "regular":
        raise MetadataError("chunk_grid is not a 'regular' grid")
    conf = grid.get("configuration")
    if not isinstance(conf, dict):
        raise MetadataError("chunk_grid has no configuration")
    chunks = _int_tuple(conf.get("chunk_shape"), "chunk_shape", positive=True)
    itemsize = 16 if isinstance(dtype, str) else dtype.itemsize
    _check_sizes(shape, chunks, itemsize, limits)
    cke = doc.get("chunk_key_encoding", {"name": "default"})
    if not isinstance(cke, dict):
        raise MetadataError("chunk_key_encoding is not an object")
    sep = (cke.get("configuration") or {}).get("separator")
    if cke.get("name") == "default":
        prefix, separator = "c", sep or "/"
    elif cke.get("name") == "v2":
        prefix, separator = "", sep or "."
    else:
        raise MetadataError(f"unsupported chunk_key_encoding {cke.get('name')!r}")
    if separator not in ("/", "."):
        raise MetadataError(f"unsupported chunk key separator {separator!r}")
    codecs = doc.get("codecs")
    names = _named_codecs(codecs, "codecs", C.V3_READABLE_CODECS)
    assert isinstance(codecs, list)  # _named_codecs raised otherwise
    if names[0] == "sharding_indexed":
        _check_sharding(codecs, len(shape))
    elif "sharding_indexed" in names:
        raise MetadataError("sharding_indexed must be the only codec")
    if doc.get("storage_transformers"):
        raise MetadataError("storage transformers are not supported")
    dims = doc.get("dimension_names")
    if dims is not None:
        if not isinstance(dims, list) or len(dims) != len(shape):
            raise MetadataError("dimension_names does not match the shape")
        if not all(type(d) is str for d in dims):
            dims = [str(d) if d is not None else f"dim_{i}" for i, d in enumerate(dims)]
        dims = tuple(dims)
    attributes = doc.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise MetadataError("attributes is not an object")
    return ArrayMeta(
        zarr_format=3,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=_parse_fill(doc.get("fill_value"), dtype),
        dims=dims,
        attributes=dict(attributes),
        codecs=tuple(dict(c) for c in codecs),
        separator=separator,
        chunk_prefix=prefix,
    )


def _named_codecs(value: Any, what: str, allowed: frozenset[str]) -> list[str]:
    """The names of a codec list whose entries are ``{"name": ..., "configuration": {}}``."""
    if not isinstance(value, list) or not value:
        raise MetadataError(f"{what} is not a non-empty list")
    names = []
    for codec in value:
        name = codec.get("name") if isinstance(codec, dict) else None
        if type(name) is not str or name not in allowed:
            raise MetadataError(f"{what}: codec {codec!r} is not on the allow-list")
        if not isinstance(codec.get("configuration", {}), dict):
            raise MetadataError(f"{what}: {name!r} has a configuration that is not an object")
        names.append(name)
    return names


_INNER_CODECS = frozenset(("bytes", "zstd", "gzip", "crc32c"))
_INDEX_CODECS = frozenset(("bytes", "crc32c"))


def _check_sharding(codecs: list[dict[str, Any]], ndim: int) -> None:
    """Validate a ``sharding_indexed`` codec: what cadstore's readers can then rely on.

    The decoders (:func:`cadstore.format.sharding.decode_shard` and ``decode_inner``, the
    dataset reader) take these configurations as checked here: the inner chunk shape
    (positive integers, one per dimension), inner codecs (``bytes``, then compressors)
    and an index of ``bytes`` (+ ``crc32c``) at the end of the shard.
    """
    if len(codecs) != 1:
        raise MetadataError("sharding_indexed must be the only codec")
    config = codecs[0].get("configuration")
    if not isinstance(config, dict):
        raise MetadataError("sharding_indexed has no configuration")
    inner = _int_tuple(config.get("chunk_shape"), "inner chunk_shape", positive=True)
    if len(inner) != ndim:
        raise MetadataError(f"inner chunk_shape {inner} does not match {ndim} dimensions")
    names = _named_codecs(config.get("codecs"), "inner codecs", _INNER_CODECS)
    if names[0] != "bytes" or "bytes" in names[1:]:
        raise MetadataError("inner codecs must be bytes, then compressors and checksums")
    index = _named_codecs(config.get("index_codecs"), "index_codecs", _INDEX_CODECS)
    if index not in (["bytes"], ["bytes", "crc32c"]):
        raise MetadataError(f"unsupported shard index codecs {index}")
    if config.get("index_location", "end") != "end":
        raise MetadataError("only shard indexes at the end are supported")


def _parse_v2_dtype(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str):
        raise MetadataError(f"unsupported dtype {value!r}")
    if value == "|O":
        return STRING, None
    try:
        dtype = np.dtype(value)
    except TypeError as exc:
        raise MetadataError(f"unsupported dtype {value!r}") from exc
    if dtype.kind not in "biufcU" or dtype.fields is not None:
        raise MetadataError(f"unsupported dtype {value!r}")
    return dtype, None


def _parse_v2(doc: Mapping[str, Any], attrs: Mapping[str, Any], limits: Limits) -> ArrayMeta:
    shape = _int_tuple(doc.get("shape"), "shape", positive=False)
    chunks = _int_tuple(doc.get("chunks"), "chunks", positive=True)
    dtype, _ = _parse_v2_dtype(doc.get("dtype"))
    itemsize = 16 if isinstance(dtype, str) else dtype.itemsize
    _check_sizes(shape, chunks, itemsize, limits)
    compressor = doc.get("compressor")
    if compressor is not None and (
        not isinstance(compressor, Mapping) or compressor.get("id") not in C.V2_READABLE_COMPRESSORS
    ):
        cid = compressor.get("id") if isinstance(compressor, Mapping) else compressor
        raise MetadataError(f"compressor {cid!r} is not on the allow-list")
    filters = doc.get("filters") or []
    if not isinstance(filters, list):
        raise MetadataError("filters is not a list")
    object_codec = None
    for f in filters:
        if not isinstance(f, Mapping) or f.get("id") not in C.V2_READABLE_FILTERS:
            fid = f.get("id") if isinstance(f, Mapping) else f
            raise MetadataError(f"filter {fid!r} is not on the allow-list")
        if f["id"] in ("vlen-utf8", "msgpack2"):
            object_codec = f["id"]
    if isinstance(dtype, str) and object_codec is None:
        raise MetadataError("object dtype without a vlen-utf8 or msgpack2 codec")
    order = doc.get("order", "C")
    if order not in ("C", "F"):
        raise MetadataError(f"unsupported order {order!r}")
    separator = doc.get("dimension_separator") or "."
    if separator not in ("/", "."):
        raise MetadataError(f"unsupported dimension_separator {separator!r}")
    attributes = dict(attrs)
    dims = attributes.pop("_ARRAY_DIMENSIONS", None)
    if dims is not None:
        if not isinstance(dims, list) or len(dims) != len(shape):
            raise MetadataError("_ARRAY_DIMENSIONS does not match the shape")
        dims = tuple(str(d) for d in dims)
    return ArrayMeta(
        zarr_format=2,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=_parse_fill(doc.get("fill_value"), dtype),
        dims=dims,
        attributes=attributes,
        codecs=(dict(compressor),) if compressor else (),
        filters=tuple(dict(f) for f in filters),
        separator=separator,
        chunk_prefix="",
        order=order,
        object_codec=object_codec,
    )


# ---------------------------------------------------------------------------- decoding
#: Memory charged per decoded string beyond its UTF-8 bytes (charged four times over: a
#: Python ``str`` holds up to four bytes per character): the ``str`` object's header and
#: its pointer in the object array.
STRING_OVERHEAD = 88
#: Bytes a string payload (vlen-utf8, MsgPack) may decompress to per byte charged: its
#: strings are charged at four bytes per byte (see :data:`STRING_OVERHEAD`).
_STRING_BYTES_FACTOR = 4


def decode_array(
    meta: ArrayMeta,
    get_chunk: Callable[[str], bytes | None],
    limits: Limits,
    *,
    source_bytes: int | None = None,
    budget: DecodeBudget | None = None,
    name: str = "array",
    out: np.ndarray | None = None,
    complete: bool = False,
) -> np.ndarray:
    """Assemble a whole array from its chunks.

    Everything the array will take is charged to ``budget`` before it is allocated: the
    array itself (fill values included: an array without chunks costs its full size),
    the chunk being decoded when it is not decoded in place, and for strings the decoded
    payload and the ``str`` objects made of it, as each chunk is decoded. String chunks
    are decompressed no further than what remains of the budget, so a compression bomb
    stops there.

    Parameters
    ----------
    meta
        Validated metadata.
    get_chunk
        Returns a chunk's bytes by key (relative to the array), or ``None`` if missing.
    limits
        Size limits.
    source_bytes
        Size of the file the array comes from: sizes the budget when none is given (and
        is then required).
    budget
        The decode budget of the file the array comes from, shared by every array read
        from it (see :class:`~cadstore.format.limits.DecodeBudget`). By default a budget
        of its own for this one array.
    name
        The array's path, the name it is charged under (once: reading it again costs
        nothing more) and shown in messages.

    out
        A C-contiguous numeric array of ``meta.shape`` and dtype to decode into, instead
        of a new one (the caller has charged it; the chunk being decoded is checked).
    complete
        The writer stored every chunk holding values, and every inner chunk of a shard
        holding values (cadstore's datasets do): a missing one is damage, an error naming
        it, not fill values. Zarr lets other writers leave chunks out.

    Raises
    ------
    MetadataError, C.ChunkDecodeError
        For sizes beyond the limits (with no ``budget`` given) or undecodable chunks.
    LimitExceededError
        When the array does not fit in the given ``budget``, naming its file.
    """
    if budget is not None:
        return _decode_array(meta, get_chunk, limits, budget, name, out, complete)
    if source_bytes is None:
        raise TypeError("decode_array needs a budget or source_bytes")
    own = DecodeBudget("", source_bytes, limits)
    try:
        return _decode_array(meta, get_chunk, limits, own, name, out, complete)
    except LimitExceededError as exc:
        raise MetadataError(exc.problem) from exc


def _decode_array(
    meta: ArrayMeta,
    get_chunk: Callable[[str], bytes | None],
    limits: Limits,
    budget: DecodeBudget,
    name: str,
    out: np.ndarray | None = None,
    complete: bool = False,
) -> np.ndarray:
    declared = meta.size * meta.itemsize
    if declared > limits.max_array_bytes:
        raise MetadataError(
            f"array declares {declared} bytes ({meta.shape}), more than "
            f"max_array_bytes={limits.max_array_bytes}"
        )
    # Strings: the object array of pointers first; the strings as they are decoded.
    held = meta.size * 8 if meta.is_string else declared
    what = f"array {name!r} ({meta.shape}, {meta.dtype})"
    budget.charge(name, held, what)
    strings = None
    if meta.is_string:
        # Saved numpy string arrays (no cadstore_kind attribute) are given back as numpy
        # fixed-width strings by cadstore.format.hierarchy: that copy is charged too.
        fixed_width = meta.attributes.get("cadstore_kind") is None
        strings = _StringCharge(budget, name, what, held, fixed_width=fixed_width)
    if out is not None:
        if meta.is_string or out.shape != meta.shape or out.dtype != meta.dtype:
            raise ValueError(f"cannot decode {what} into an array of {out.shape}, {out.dtype}")
    elif meta.size and meta.chunks == meta.shape:
        # One chunk holding the whole array: the common case for CAD items.
        key = meta.chunk_key((0,) * len(meta.shape))
        raw = get_chunk(key)
        if raw is None:
            if complete:
                raise C.ChunkDecodeError(f"chunk {key!r} is missing")
            return np.full(
                meta.shape, meta.fill_value, dtype=object if meta.is_string else meta.dtype
            )
        chunk = _decode_chunk(meta, raw, limits, budget, strings, meta.shape if complete else None)
        return _strings_to_objects(chunk, strings) if strings is not None else chunk
    if out is None:
        out = np.empty(meta.shape, dtype=object if meta.is_string else meta.dtype)
    if meta.size == 0:
        return out
    if strings is None:
        # Each chunk is decoded whole, then copied into place: one at a time, on top of
        # the array (its edge chunks may reach far beyond the array's shape).
        budget.check(f"a chunk of {what}", math.prod(meta.chunks) * meta.itemsize)
    grid = [math.ceil(s / c) for s, c in zip(meta.shape, meta.chunks, strict=True)]
    for index in product(*(range(g) for g in grid)):
        key = meta.chunk_key(index)
        raw = get_chunk(key)
        region = tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(index, meta.chunks, meta.shape, strict=True)
        )
        if raw is None:
            if complete:
                raise C.ChunkDecodeError(f"chunk {key!r} is missing")
            out[region] = meta.fill_value
            continue
        extent = tuple(r.stop - r.start for r in region) if complete else None
        chunk = _decode_chunk(meta, raw, limits, budget, strings, extent)
        out[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]
    if strings is not None:
        return _strings_to_objects(out, strings)
    return out


class _StringCharge:
    """What an array of strings has cost so far, charged to the budget as it grows.

    Decoded strings cost their payload (at up to four bytes per UTF-8 byte) plus
    :data:`STRING_OVERHEAD` each; the payload of the next chunk may decompress to no more
    than what remains of the budget allows.
    """

    def __init__(
        self, budget: DecodeBudget, name: str, what: str, held: int, *, fixed_width: bool
    ) -> None:
        self.budget = budget
        self.name = name
        self.what = what
        self.held = held
        self.fixed_width = fixed_width

    def cap(self, limits: Limits, remaining: int) -> int:
        """The most bytes the next string payload may decompress to, ``remaining`` bytes
        of the budget left."""
        return min(limits.max_chunk_bytes, remaining // _STRING_BYTES_FACTOR)

    def add(self, payload: int, count: int) -> None:
        """Charge a decoded payload of ``payload`` bytes holding ``count`` strings."""
        self.held += _STRING_BYTES_FACTOR * payload + STRING_OVERHEAD * count
        self.budget.charge(self.name, self.held, self.what)

    def add_fixed_width(self, arr: np.ndarray) -> None:
        """Charge the copy of ``arr`` as numpy fixed-width strings, when a reader will make
        it (every element as wide as the longest, at four bytes per character)."""
        if not self.fixed_width:
            return
        longest = max((len(x) for x in arr.ravel().tolist() if isinstance(x, str)), default=0)
        self.held += arr.size * longest * 4
        self.budget.charge(self.name, self.held, self.what)


def _strings_to_objects(arr: np.ndarray, strings: _StringCharge) -> np.ndarray:
    """Strings as an object array of ``str`` (missing values become ``""``).

    Object rather than numpy ``U``: ``U`` silently drops trailing NUL characters.
    """
    strings.add_fixed_width(arr)
    out = np.empty(arr.shape, dtype=object)
    out.ravel()[:] = ["" if x is None else x for x in arr.ravel().tolist()]
    return out


def _decode_chunk(
    meta: ArrayMeta,
    raw: bytes,
    limits: Limits,
    budget: DecodeBudget,
    strings: _StringCharge | None,
    held: Sequence[int] | None = None,
) -> np.ndarray:
    """Decode one chunk; payloads of unknown size decompress no further than the budget.

    ``held`` is the extent of the chunk that lies within the array, when every inner
    chunk of a shard holding any of it must be stored (see :func:`decode_array`).

    What remains of a budget whose file has not been sized yet (a directory store, whose
    size is a walk of every file) is first taken as what remains of the least budget
    (:meth:`~cadstore.format.limits.DecodeBudget.room`): a chunk whose payload decodes
    beyond the cap that gives (:class:`~cadstore.format.codecs.ChunkCapExceeded`) is
    decoded again within what exactly remains, so the chunks decoded, and those refused,
    are the same as with a budget sized up front. A chunk failing otherwise (corrupt) is
    refused at once, the store not sized. The cap is only met decompressing the payload,
    before anything of it is charged, so the second try starts where the first did.

    A payload declaring more than ``limits.max_chunk_bytes``, the most any cap allows
    (:func:`_chunk_cap`), is refused at once too, and alike whether the budget is sized
    or not: its message names that limit, not what remained.
    """
    count = math.prod(meta.chunks)
    remaining, exact = budget.room()
    try:
        return _decode_chunk_within(meta, raw, count, limits, remaining, strings, held)
    except C.ChunkCapExceeded as exc:
        if exc.declared is not None and exc.declared > limits.max_chunk_bytes:
            raise C.ChunkDecodeError(
                f"{exc.subject} declares {exc.declared} bytes, more than "
                f"max_chunk_bytes={limits.max_chunk_bytes}"
            ) from exc
        if exact or _chunk_cap(limits, remaining, strings) >= limits.max_chunk_bytes:
            raise  # the cap was the exact one, or no budget would have allowed more
    return _decode_chunk_within(meta, raw, count, limits, budget.remaining, strings, held)


def _chunk_cap(limits: Limits, remaining: int, strings: _StringCharge | None) -> int:
    """The most bytes a chunk's payload of unknown size may decompress to."""
    if strings is not None:
        return strings.cap(limits, remaining)
    return min(limits.max_chunk_bytes, remaining)


def _decode_chunk_within(
    meta: ArrayMeta,
    raw: bytes,
    count: int,
    limits: Limits,
    remaining: int,
    strings: _StringCharge | None,
    held: Sequence[int] | None,
) -> np.ndarray:
    """:func:`_decode_chunk` with ``remaining`` bytes of the budget left."""
    cap = _chunk_cap(limits, remaining, strings)
    if meta.zarr_format == 3:
        return _decode_chunk_v3(meta, raw, count, limits, cap, strings, held)
    return _decode_chunk_v2(meta, raw, count, limits, cap, strings)


def _bytes_codec_decode(
    name: str, conf: Mapping[str, Any], data: bytes, expected: int | None, limit: int
) -> bytes:
    if name == "zstd":
        return C.decode_zstd(data, expected, limit)
    if name == "gzip":
        return C.decode_gzip(data, expected, limit, wbits=31)
    if name == "zlib":
        return C.decode_gzip(data, expected, limit, wbits=15)
    if name == "blosc":
        return C.decode_blosc(data, expected, limit)
    if name == "lz4":
        return C.decode_lz4(data, expected, limit)
    if name == "crc32c":
        return bytes(C.strip_crc32c(data, "chunk"))
    raise C.ChunkDecodeError(f"codec {name!r} is not on the allow-list")


def _decode_chunk_v3(
    meta: ArrayMeta,
    raw: bytes,
    count: int,
    limits: Limits,
    cap: int,
    strings: _StringCharge | None,
    held: Sequence[int] | None = None,
) -> np.ndarray:
    codecs = list(meta.codecs)
    if codecs[0]["name"] == "sharding_indexed":
        if meta.is_string or len(codecs) != 1:
            raise C.ChunkDecodeError("sharding is supported for numeric arrays only")
        from cadstore.format.sharding import decode_shard

        config = codecs[0].get("configuration") or {}
        return decode_shard(
            raw,
            config,
            meta.dtype,
            meta.chunks,
            limits.max_chunk_bytes,
            lambda shape: np.full(shape, meta.fill_value, dtype=meta.dtype),
            required=held,
        )
    direct = None if meta.is_string else C.direct_codec(meta.codecs, meta.dtype)
    if direct is not None:
        # What cadstore writes: decode straight into a writable array, no copy.
        out = np.empty(meta.chunks, dtype=meta.dtype)
        C.decode_into(direct, raw, out.reshape(-1).data.cast("B"))
        return out
    a2a = []
    while codecs and codecs[0]["name"] == "transpose":
        a2a.append(codecs.pop(0))
    if not codecs or codecs[0]["name"] not in ("bytes", "vlen-utf8"):
        raise C.ChunkDecodeError("codec list has no array-to-bytes codec")
    a2b = codecs.pop(0)
    b2b = codecs
    expected = None if meta.is_string else count * meta.itemsize
    data = raw
    for i, codec in enumerate(reversed(b2b)):
        innermost = i == len(b2b) - 1
        data = _bytes_codec_decode(
            codec["name"],
            codec.get("configuration") or {},
            data,
            expected if innermost else None,
            cap,
        )
    inner_shape = meta.chunks
    for t in a2a:
        order = (t.get("configuration") or {}).get("order")
        if not isinstance(order, list) or sorted(order) != list(range(len(meta.chunks))):
            raise C.ChunkDecodeError("transpose codec with an invalid order")
        inner_shape = tuple(inner_shape[o] for o in order)
    if a2b["name"] == "vlen-utf8":
        if strings is None:
            raise C.ChunkDecodeError("vlen-utf8 codec on an array that does not hold strings")
        strings.add(len(data), count)
        arr = np.array(C.decode_vlen_utf8(data, count), dtype=object).reshape(inner_shape)
    else:
        if meta.is_string:
            raise C.ChunkDecodeError("string array without the vlen-utf8 codec")
        if len(data) != count * meta.itemsize:
            raise C.ChunkDecodeError(
                f"chunk has {len(data)} bytes, expected {count * meta.itemsize}"
            )
        endian = (a2b.get("configuration") or {}).get("endian", "little")
        dtype = meta.dtype.newbyteorder(">" if endian == "big" else "<")
        arr = np.frombuffer(data, dtype=dtype).reshape(inner_shape)
        if endian == "big":
            arr = arr.astype(meta.dtype)
    for t in reversed(a2a):
        order = t["configuration"]["order"]
        arr = np.transpose(arr, np.argsort(order))
    return arr


def _decode_chunk_v2(
    meta: ArrayMeta,
    raw: bytes,
    count: int,
    limits: Limits,
    cap: int,
    strings: _StringCharge | None,
) -> np.ndarray:
    data = raw
    # The stored dtype of the compressed buffer is the outermost filter's output.
    stored_dtype = meta.dtype
    for f in meta.filters:
        if f["id"] in ("delta", "astype") and "astype" in f:
            stored_dtype = np.dtype(f["astype"])
    expected = None if meta.is_string else count * stored_dtype.itemsize
    if meta.codecs:
        comp = meta.codecs[0]
        data = _bytes_codec_decode(comp["id"], comp, data, expected, cap)
    if meta.is_string:
        if strings is None:
            raise C.ChunkDecodeError("object codec on an array that does not hold strings")
        strings.add(len(data), count)
        if meta.object_codec == "vlen-utf8":
            items: list[Any] = C.decode_vlen_utf8(data, count)
        else:
            # The payload is charged (at four bytes a byte), and no string is longer:
            # only the chunk limit bounds one, whatever remains of the budget.
            items = C.decode_msgpack_strings(data, meta.chunks, limits.max_chunk_bytes)
        return np.array(items, dtype=object).reshape(meta.chunks, order=meta.order)
    if len(data) != count * stored_dtype.itemsize:
        raise C.ChunkDecodeError(
            f"chunk has {len(data)} bytes, expected {count * stored_dtype.itemsize}"
        )
    arr = np.frombuffer(data, dtype=stored_dtype)
    for f in reversed(meta.filters):
        if f["id"] == "delta":
            arr = C.delta_decode(arr, f)
        elif f["id"] == "astype":
            arr = arr.astype(np.dtype(f["decode_dtype"]) if "decode_dtype" in f else meta.dtype)
    arr = arr.astype(meta.dtype, copy=False)
    return arr.reshape(meta.chunks, order=meta.order)


# ---------------------------------------------------------------------------- encoding
def chunk_rows(shape: Sequence[int]) -> tuple[int, ...]:
    """Return the chunk shape: about :data:`CHUNK_ELEMENTS` elements, split along axis 0."""
    if not shape:
        return ()
    inner = math.prod(max(1, s) for s in shape[1:])
    rows = max(1, min(max(1, shape[0]), CHUNK_ELEMENTS // inner if inner else 1))
    return (rows, *(max(1, s) for s in shape[1:]))


def _v3_fill(dtype: Any) -> Any:
    if isinstance(dtype, str):
        return ""
    if dtype.kind == "b":
        return False
    if dtype.kind == "c":
        return [0.0, 0.0]
    return 0.0 if dtype.kind == "f" else 0


def _v2_dtype_str(dtype: Any) -> str:
    return "|O" if isinstance(dtype, str) else dtype.str


def encode_array(
    arr: np.ndarray,
    *,
    dims: Sequence[str],
    attributes: Mapping[str, Any],
    level: int | None,
    zarr_format: int = 3,
    chunks: Sequence[int] | None = None,
    item_shape: tuple[int, ...] | None = None,
    item_dims: tuple[str, ...] | None = None,
) -> tuple[dict[str, Any], dict[str, bytes], ArrayMeta]:
    """Encode an array into standard Zarr metadata and chunk bytes.

    Parameters
    ----------
    arr
        A C-contiguous numeric array in little-endian byte order, or a ``U`` array.
    dims
        Dimension names, one per axis.
    attributes
        User attributes to store with the array.
    level
        zstd level, or ``None`` to store chunks uncompressed.
    zarr_format
        3 (``zarr.json``) or 2 (``.zarray`` and ``.zattrs``).
    chunks
        Chunk shape; :func:`chunk_rows` by default.
    item_shape, item_dims
        For an item array stored as its upper triangle, the shape and dimension names it
        is read as (recorded in the parsed metadata; the attributes carry them in the file).

    Returns
    -------
    tuple
        The metadata document(s) by file name relative to the array (``{"zarr.json": doc}``
        or ``{".zarray": doc, ".zattrs": attrs}``), the chunk bytes by relative key, and the
        parsed metadata (what :func:`parse_array_meta` returns for those documents, with
        ``item_shape`` and ``item_dims`` set as given).
    """
    layout = _layout(arr, level, zarr_format, chunks)
    chunk_bytes, delta = _encode_chunks(arr, layout)
    if zarr_format == 3:
        doc, meta = _v3_documents(arr, layout, dims, attributes, item_shape, item_dims)
        return {"zarr.json": doc}, chunk_bytes, meta
    docs, meta = _v2_documents(arr, layout, dims, attributes, delta)
    if item_shape is not None:
        meta = replace(meta, item_shape=item_shape, item_dims=item_dims)
    return docs, chunk_bytes, meta


def encode_v3_chunks(arr: np.ndarray, *, level: int | None) -> dict[str, bytes]:
    """Encode the chunks of a Zarr v3 array exactly as :func:`encode_array` does.

    For a writer that already holds the metadata of an array of the same shape, dtype,
    level and names (the metadata is a function of those), so that only the data is
    encoded again.

    Parameters
    ----------
    arr
        As for :func:`encode_array`, in the default chunk shape (:func:`chunk_rows`).
    level
        zstd level, or ``None`` to store chunks uncompressed.

    Returns
    -------
    dict
        The chunk bytes by key relative to the array (``c/0``, ...).
    """
    chunk_bytes, _ = _encode_chunks(arr, _layout(arr, level, 3, None))
    return chunk_bytes


def _layout(
    arr: np.ndarray, level: int | None, zarr_format: int, chunks: Sequence[int] | None
) -> _Layout:
    if chunks is None:
        return _default_layout(arr.shape, arr.dtype.str, level, zarr_format)
    return _make_layout(arr.shape, arr.dtype, level, zarr_format, tuple(chunks))


@functools.lru_cache(maxsize=1024)
def _default_layout(
    shape: tuple[int, ...], dtype: str, level: int | None, zarr_format: int
) -> _Layout:
    # Item writers save arrays of the same few shapes over and over: their layout (in the
    # default chunks) is worked out once per shape, type and level. Keyed by the type's
    # string, not the dtype: dtypes differing in their metadata (h5py's enums) compare
    # equal, and one array's would become another's.
    return _make_layout(shape, np.dtype(dtype), level, zarr_format, chunk_rows(shape))


def _make_layout(
    shape: tuple[int, ...],
    dtype: np.dtype,
    level: int | None,
    zarr_format: int,
    chunk_shape: tuple[int, ...],
) -> _Layout:
    is_string = dtype.kind in "UO"
    raw_bytes = math.prod(shape) * (4 if is_string else dtype.itemsize)
    return _Layout(
        shape,
        chunk_shape,
        STRING if is_string else dtype,
        is_string,
        level if level is not None and raw_bytes >= MIN_COMPRESS_BYTES else None,
        zarr_format,
    )


class _Layout(NamedTuple):
    """How an array is being encoded: its grid, its type and its compression."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: Any  # a numpy dtype, or STRING
    is_string: bool
    level: int | None  # None: chunks stored uncompressed (small or level=None)
    zarr_format: int


def _encode_chunks(arr: np.ndarray, layout: _Layout) -> tuple[dict[str, bytes], bool]:
    """Encode every chunk; return them by key, and whether a (v2) Delta filter was kept."""
    # v3 default chunk-key encoding, or v2's dotted keys.
    prefix, separator = ("c", "/") if layout.zarr_format == 3 else ("", ".")
    level = layout.level
    # Zarr v2 has numcodecs' Delta filter; tried on integer arrays, kept where it shrinks
    # the compressed chunk (index arrays, sorted ids). Zarr v3 has no standard delta codec
    # (zarr-python warns on numcodecs codecs), so v3 arrays are bytes + zstd only.
    try_delta = (
        level is not None and layout.zarr_format == 2 and arr.dtype.kind in "iu" and arr.size > 1
    )

    def zstd(payload: bytes | memoryview) -> bytes:
        assert level is not None
        # Without long-distance matching: an item's chunks are written once and read
        # once, by the merger, which compresses the dataset itself. On items it bought
        # a little size for much write time (docs/benchmarks.md, "Why zstd level 1").
        return C.zstd_compress(payload, level, long_distance=False)

    out: dict[str, bytes] = {}
    delta: bool | None = None
    if not arr.size:
        return out, False
    if layout.chunks == layout.shape:
        # Most item arrays fit one chunk: no grid walk, no slicing.
        blocks: Iterable[tuple[tuple[int, ...], np.ndarray]] = [((0,) * arr.ndim, arr)]
    else:
        blocks = _blocks(arr, layout.chunks)
    for index, block in blocks:
        if layout.is_string:
            payload = C.encode_vlen_utf8(block.ravel().tolist())
            if level is not None:
                payload = zstd(payload)
        elif level is not None:
            # zstd reads the array's buffer directly; the caller's array may be shared,
            # so only compressed bytes (a new object) are kept.
            data = np.ascontiguousarray(block)
            if delta is None and try_delta:
                # The first chunk decides for the array (v2 filters are per array).
                plain = zstd(data.data.cast("B"))
                differences = zstd(delta_encode(data).data)
                delta = len(differences) < len(plain)
                payload = differences if delta else plain
            elif delta:
                payload = zstd(delta_encode(data).data)
            else:
                payload = zstd(data.data.cast("B"))
        else:
            payload = np.ascontiguousarray(block).tobytes()
        out[_chunk_key(layout.zarr_format, prefix, separator, index)] = payload
    return out, bool(delta)


#: :func:`format_chunk_key` remembered: most item arrays are one chunk, ``c/0/0``.
_chunk_key = functools.lru_cache(maxsize=4096)(format_chunk_key)


def _v3_documents(
    arr: np.ndarray,
    layout: _Layout,
    dims: Sequence[str],
    attributes: Mapping[str, Any],
    item_shape: tuple[int, ...] | None,
    item_dims: tuple[str, ...] | None,
) -> tuple[dict[str, Any], ArrayMeta]:
    """The ``zarr.json`` of an encoded array, and its parsed metadata."""
    codecs: list[dict[str, Any]] = [
        {"name": "vlen-utf8", "configuration": {}}
        if layout.is_string
        else {"name": "bytes", "configuration": {"endian": "little"}}
        if arr.dtype.itemsize > 1
        else {"name": "bytes"}
    ]
    if layout.level is not None:
        codecs.append({"name": "zstd", "configuration": {"level": layout.level, "checksum": False}})
    fill = _v3_fill(layout.dtype)
    doc: dict[str, Any] = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(layout.shape),
        "data_type": "string" if layout.is_string else _dtype_name(arr.dtype),
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(layout.chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": codecs,
        "attributes": dict(attributes),
        "dimension_names": list(dims),
    }
    meta = ArrayMeta(
        zarr_format=3,
        shape=tuple(layout.shape),
        chunks=layout.chunks,
        dtype=layout.dtype,
        fill_value=complex(*fill) if isinstance(fill, list) else fill,
        dims=tuple(dims),
        attributes=dict(attributes),
        codecs=tuple(codecs),
        item_shape=item_shape,
        item_dims=item_dims,
    )
    return doc, meta


def _v2_documents(
    arr: np.ndarray,
    layout: _Layout,
    dims: Sequence[str],
    attributes: Mapping[str, Any],
    delta: bool,
) -> tuple[dict[str, Any], ArrayMeta]:
    """The ``.zarray`` and ``.zattrs`` of an encoded array, and its parsed metadata."""
    compressor = {"id": "zstd", "level": layout.level} if layout.level is not None else None
    filters: list[dict[str, Any]] | None = (
        [{"id": "vlen-utf8"}]
        if layout.is_string
        else [{"id": "delta", "dtype": arr.dtype.str, "astype": arr.dtype.str}]
        if delta
        else None
    )
    zarray = {
        "zarr_format": 2,
        "shape": list(layout.shape),
        "chunks": list(layout.chunks),
        "dtype": _v2_dtype_str(layout.dtype),
        "compressor": compressor,
        # null, not 0: xarray would otherwise mask zeros and turn ints into floats.
        "fill_value": None,
        "order": "C",
        "filters": filters,
        "dimension_separator": ".",
    }
    zattrs = {"_ARRAY_DIMENSIONS": list(dims), **attributes}
    meta = ArrayMeta(
        zarr_format=2,
        shape=tuple(layout.shape),
        chunks=layout.chunks,
        dtype=layout.dtype,
        fill_value="" if layout.is_string else 0,
        dims=tuple(dims),
        attributes=dict(attributes),
        codecs=(compressor,) if compressor else (),
        filters=tuple(filters or ()),
        separator=".",
        chunk_prefix="",
        object_codec="vlen-utf8" if layout.is_string else None,
    )
    return {".zarray": zarray, ".zattrs": zattrs}, meta


def delta_encode(block: np.ndarray) -> np.ndarray:
    """numcodecs' Delta filter: the first value, then each value minus the one before.

    Over the chunk in C order, in the array's own integer type (differences wrap around as
    numcodecs' do; :func:`cadstore.format.codecs.delta_decode` undoes them exactly).
    """
    flat = block.reshape(-1)
    out = np.empty_like(flat)
    out[:1] = flat[:1]
    np.subtract(flat[1:], flat[:-1], out=out[1:])
    return out


def _blocks(
    arr: np.ndarray, chunk_shape: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield ``(chunk index, block)`` over the regular grid, edge blocks padded."""
    is_string = arr.dtype.kind in "UO"
    grid = [math.ceil(s / c) for s, c in zip(arr.shape, chunk_shape, strict=True)]
    for index in product(*(range(g) for g in grid)):
        region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunk_shape, strict=True))
        # The trailing Ellipsis keeps a 0-d object array an array, not its element.
        key: tuple[slice | EllipsisType, ...] = (*region, ...)
        block = arr[key]
        if block.shape != chunk_shape:
            # Zarr stores edge chunks at full size, padded with the fill value.
            padded = np.zeros(chunk_shape, dtype=arr.dtype)
            if is_string:
                padded[...] = ""
            padded[tuple(slice(0, s) for s in block.shape)] = block
            block = padded
        yield index, block


def pack_u32(n: int) -> bytes:
    """Little-endian u32 (shared by callers that frame small payloads)."""
    return struct.pack("<I", n)
