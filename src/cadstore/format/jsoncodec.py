"""A lossless, strict-JSON encoding of cadstore nodes and metadata.

Standard JSON has no NaN, no infinities, no complex numbers and no dtypes. This codec keeps
all of them while staying readable by any JSON parser (it never emits the non-standard
``NaN`` token):

=====================================  ===============================================
Value                                  JSON
=====================================  ===============================================
``bool``, ``int``, ``str``             as is
finite ``float``                       a number
NaN, +inf, -inf (a float on its own)   ``{"__float__": "NaN" | "Infinity" | "-Infinity"}``
``complex``                            ``{"real": r, "imag": i, "_numpy_complex": true}``
``list`` of ``str``                    a list of strings
numpy array                            ``{"__numpy__": "<dtype>", "shape": [...],
                                       "data": nested lists}``
numpy scalar                           ``{"__numpy__": "<dtype>", "scalar": element}``
``dict``                               an object; a dict that looks like a complex number
                                       is wrapped as ``{"__dict__": {...}}``
=====================================  ===============================================

Inside ``data`` and ``scalar`` the dtype is known, so elements are plain: floats as
numbers or the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; complex elements in the
``{"real", "imag", "_numpy_complex"}`` form; booleans as ``true``/``false``.

Metadata uses :func:`encode_metadata`, which converts numpy values to plain Python
(arrays become lists) and only tags non-finite floats.

Documents read from files are untrusted. :func:`parse_document` (and
:func:`load_document` for a store's ``metadata.json``) turn anything that is not JSON,
too deep or of the wrong shape into an error naming the file, instead of the
``JSONDecodeError``, ``RecursionError`` or ``AttributeError`` that would escape from
``json.loads`` and the recursive code downstream. The nesting bound,
:data:`MAX_NESTING`, is enforced the same way on writing (:func:`encode_metadata` and
:func:`encode` refuse deeper values with :class:`~cadstore.errors.InvalidDataError`), so
cadstore never writes a document it would refuse to read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from cadstore.errors import CorruptStoreError, InvalidDataError, UnsupportedTypeError

__all__ = [
    "MAX_NESTING",
    "check_nesting",
    "check_utf8",
    "decode",
    "decode_metadata",
    "dumps",
    "encode",
    "encode_metadata",
    "load_document",
    "loads",
    "parse_document",
    "to_jsonable",
]

#: The deepest nesting of lists and objects in a JSON document cadstore writes or reads
#: (the document itself counts as one level: ``{"a": [1]}`` is 2 deep).
#:
#: Decoded documents are walked by recursive code (``copy.deepcopy``, the codecs of this
#: module, ``json.dumps``, pandas and pyarrow when a value reaches a table), which takes up
#: to two interpreter frames per level; 128 levels keep them all far below Python's
#: default recursion limit of 1000, wherever they are called from. Metadata cadstore
#: writes nests a few levels; deeper values are refused when written, and documents
#: nested deeper are corrupt when read.
MAX_NESTING = 128

_COMPLEX_KEYS = frozenset(("real", "imag", "_numpy_complex"))
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _float_token(x: float) -> float | str:
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def _encode_float(x: float) -> Any:
    token = _float_token(x)
    return token if isinstance(token, float) else {"__float__": token}


def _encode_complex(x: complex) -> dict[str, Any]:
    return {"real": _float_token(x.real), "imag": _float_token(x.imag), "_numpy_complex": True}


def _element_encoder(kind: str) -> Any:
    if kind == "f":
        return _float_token
    if kind == "c":
        return _encode_complex
    return None


def _shortest(value: np.ndarray) -> np.ndarray:
    """Float16/float32 (and complex64) values as the float64 of their shortest decimal.

    ``tolist()`` widens ``float32(2.3)`` to ``2.299999952316284``; the file is meant to be
    read by people, and the specification shows ``[1.5, 2.3, 4.1]``. The shortest text that
    reads back as the same float32 is what numpy prints; the reader parses it as float64
    and casts it back, which gives the same bits, and an element for which it would not
    (checked here, as a NaN's payload) is written exactly, as before: lossless either way.
    """
    kind, size = value.dtype.kind, value.dtype.itemsize
    if kind == "f" and size < 8:
        return _shortest_real(value)
    if kind == "c" and size < 16:
        out = np.empty(value.shape, dtype=np.complex128)
        out.real = _shortest_real(value.real)
        out.imag = _shortest_real(value.imag)
        return out
    return value


def _shortest_real(value: np.ndarray) -> np.ndarray:
    """:func:`_shortest` of a float16/float32 array, checked: an element whose decimal
    would not give back its exact bits keeps its exact float64 value (NaN and infinities
    are written as the codec writes them, whatever this gives)."""
    # A signalling NaN raises numpy's "invalid" flag when widened; its bits are kept.
    with np.errstate(invalid="ignore", over="ignore"):
        exact = value.astype(np.float64)
        short = value.astype(str).astype(np.float64)
        bits = f"<u{value.dtype.itemsize}"
        back = short.astype(value.dtype).view(bits)
    lost = back != value.copy().view(bits)
    short[lost] = exact[lost]
    return short


def _encode_nested(data: Any, fn: Any) -> Any:
    if isinstance(data, list):
        return [_encode_nested(x, fn) for x in data]
    return fn(data)


def encode(value: Any) -> Any:
    """Encode a node (see :mod:`cadstore.storage.values`) into JSON-compatible Python.

    Raises
    ------
    UnsupportedTypeError
        If the value is not a node.
    InvalidDataError
        If the encoded value would nest deeper than :data:`MAX_NESTING` levels with the
        one-level envelope a JSON store file wraps it in.
    """
    encoded = _encode(value, 2)
    depth = _depth(encoded, MAX_NESTING)
    if 1 + depth > MAX_NESTING:
        raise InvalidDataError(_too_deep("the value"))
    return encoded


def _encode(value: Any, level: int) -> Any:
    """:func:`encode`; ``level`` is where a container ``value`` would sit in its file."""
    if isinstance(value, np.ndarray):
        fn = _element_encoder(value.dtype.kind)
        data = _shortest(value).tolist()
        if fn is not None:
            data = _encode_nested(data, fn)
        return {
            "__numpy__": value.dtype.str if value.dtype.kind != "U" else "str",
            "shape": list(value.shape),
            "data": data,
        }
    if isinstance(value, np.generic):
        fn = _element_encoder(value.dtype.kind)
        item = _shortest(np.asarray(value)).item()
        return {"__numpy__": value.dtype.str, "scalar": fn(item) if fn else item}
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return _encode_float(value)
    if isinstance(value, complex):
        return _encode_complex(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        if level > MAX_NESTING:
            # Stop before the recursion can exhaust the interpreter's stack.
            raise InvalidDataError(_too_deep("the value"))
        out = {k: _encode(v, level + 1) for k, v in value.items()}
        return {"__dict__": out} if _looks_tagged(value) else out
    raise UnsupportedTypeError(f"cannot encode {type(value).__name__} as JSON")


def _too_deep(what: str) -> str:
    return (
        f"{what} nests lists and dicts deeper than MAX_NESTING={MAX_NESTING} levels "
        "(cadstore.format.jsoncodec.MAX_NESTING), counting the document it is stored in"
    )


def _depth(value: Any, limit: int) -> int:
    """Levels of lists and dicts in ``value`` (0 for a scalar), counted up to ``limit + 1``.

    Iterative, so a hostile document cannot exhaust the interpreter's stack; it stops as
    soon as the count passes ``limit``.
    """
    if not isinstance(value, dict | list):
        return 0
    deepest = 1
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return deepest


def check_nesting(value: Any, max_depth: int = MAX_NESTING) -> None:
    """Raise ``ValueError`` if ``value`` (a decoded JSON document) nests too deeply.

    Parameters
    ----------
    value
        Lists, dicts and scalars, as ``json.loads`` returns them.
    max_depth
        Most levels allowed; the document itself is one.

    Raises
    ------
    ValueError
        If lists and dicts nest deeper than ``max_depth`` levels.
    """
    if _depth(value, max_depth) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels (MAX_NESTING)")


def parse_document(raw: str | bytes, *, max_depth: int = MAX_NESTING, strict: bool = False) -> Any:
    """Parse a JSON document read from a file, which may be hostile.

    Parameters
    ----------
    raw
        The file's bytes (UTF-8, or UTF-16/32 with the encoding JSON allows) or text.
    max_depth
        Most levels of nesting allowed (see :data:`MAX_NESTING`).
    strict
        Refuse the non-standard ``NaN``/``Infinity`` tokens (as :func:`loads`); by
        default they are accepted, since Zarr writers emit them for fill values.

    Returns
    -------
    object
        The decoded document, nested at most ``max_depth`` levels.

    Raises
    ------
    ValueError
        For anything that is not such a document: malformed JSON, bytes that are not
        text, or nesting deeper than ``max_depth`` (including documents so deep that the
        parser itself gives up).
    """
    try:
        doc = json.loads(raw, parse_constant=_reject_constant) if strict else json.loads(raw)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels (MAX_NESTING)") from None
    check_nesting(doc, max_depth)
    return doc


def load_document(
    raw: str | bytes,
    *,
    path: str,
    member: str,
    max_bytes: int | None = None,
    max_depth: int = MAX_NESTING,
) -> dict[str, Any]:
    """Parse a store's metadata document (``metadata.json``): a JSON object.

    Parameters
    ----------
    raw
        The member's bytes.
    path
        The store it was read from, for the message.
    member
        The member's key in the store (``"metadata.json"``), for the message.
    max_bytes
        Largest document accepted (``Limits.max_metadata_bytes``); ``None``: any.
    max_depth
        Most levels of nesting allowed.

    Returns
    -------
    dict
        The document (a JSON object), not otherwise decoded.

    Raises
    ------
    CorruptStoreError
        Naming ``path`` and ``member``, if the document is too large, not JSON, not an
        object, or nested too deeply.
    """
    if max_bytes is not None and len(raw) > max_bytes:
        raise CorruptStoreError(
            path, f"{member} is {len(raw)} bytes, more than max_metadata_bytes={max_bytes}"
        )
    try:
        doc = parse_document(raw, max_depth=max_depth)
    except ValueError as exc:
        raise CorruptStoreError(path, f"{member} is not a valid JSON document: {exc}") from None
    if not isinstance(doc, dict):
        raise CorruptStoreError(path, f"{member} is not a JSON object but {_json_kind(doc)}")
    return doc


def _json_kind(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words (``"an array"``, ``"null"``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _looks_tagged(d: Mapping[str, Any]) -> bool:
    return set(d) == _COMPLEX_KEYS or any(k.startswith("__") for k in d)


def _decode_float_element(x: Any) -> float:
    return _NONFINITE[x] if isinstance(x, str) else x


def _decode_complex_element(x: Any) -> complex:
    return complex(_decode_float_element(x["real"]), _decode_float_element(x["imag"]))


def _decode_nested(data: Any, fn: Any) -> Any:
    if isinstance(data, list):
        return [_decode_nested(x, fn) for x in data]
    return fn(data)


#: The most bytes one decoded array may take: a few bytes of JSON can declare a string
#: dtype of a billion characters per element.
MAX_ARRAY_BYTES = 1 << 30


def decode(obj: Any) -> Any:
    """Invert :func:`encode`.

    Raises
    ------
    ValueError
        If a tagged object is malformed, or an array would take more than
        :data:`MAX_ARRAY_BYTES` (callers turn this into a corrupt-store error).
    """
    try:
        return _decode(obj)
    except ValueError:
        raise
    except (TypeError, KeyError, IndexError, AttributeError, ArithmeticError) as exc:
        # Any JSON can sit where a tagged value is expected: malformed, not a crash.
        raise ValueError(f"malformed tagged value ({type(exc).__name__}: {exc})") from exc


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__numpy__" in obj:
            return _decode_numpy(obj)
        if "__float__" in obj:
            return _NONFINITE[obj["__float__"]]
        if "__dict__" in obj:
            inner = obj["__dict__"]
            if not isinstance(inner, dict):
                raise ValueError("'__dict__' does not hold an object")
            return {k: _decode(v) for k, v in inner.items()}
        if set(obj) == _COMPLEX_KEYS and obj["_numpy_complex"] is True:
            return _decode_complex_element(obj)
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        if all(isinstance(x, str) for x in obj):
            return [str(x) for x in obj]
        # Tagged values inside a plain list (the specified system writes a complex array as
        # a list of {"real", "imag", "_numpy_complex"} objects) are decoded too.
        return [_decode(x) if isinstance(x, (dict, list)) else x for x in obj]
    return obj


def _decode_numpy(obj: Mapping[str, Any]) -> Any:
    tag = obj["__numpy__"]
    dtype = np.dtype(str) if tag == "str" else np.dtype(tag)
    if dtype.kind not in "biufcU" or dtype.fields is not None:
        raise ValueError(f"unsupported dtype {tag!r}")
    kind = dtype.kind
    if "scalar" in obj:
        item = obj["scalar"]
        if kind == "f":
            item = _decode_float_element(item)
        elif kind == "c":
            item = _decode_complex_element(item)
        with np.errstate(over="raise", invalid="raise"):
            return dtype.type(item)
    shape = tuple(int(s) for s in obj["shape"])
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    if math.prod(shape) * dtype.itemsize > MAX_ARRAY_BYTES:
        raise ValueError(
            f"an array of shape {shape} and dtype {dtype} exceeds {MAX_ARRAY_BYTES} bytes"
        )
    data = obj["data"]
    if kind == "f":
        data = _decode_nested(data, _decode_float_element)
    elif kind == "c":
        data = _decode_nested(data, _decode_complex_element)
    if kind == "U":
        arr = np.array(data, dtype=str) if math.prod(shape) else np.empty(shape, dtype="<U1")
    else:
        # A finite value too large for the declared dtype is malformed, not inf.
        with np.errstate(over="raise", invalid="raise"):
            arr = np.array(data, dtype=dtype)
    if arr.shape != shape:
        if arr.size != math.prod(shape):
            raise ValueError(f"data does not match shape {shape}")
        arr = arr.reshape(shape)
    return arr


def check_utf8(texts: list[str], what: str) -> None:
    """Refuse strings that UTF-8, the encoding of everything cadstore stores, cannot hold.

    A Python ``str`` may hold a lone surrogate (``"\\ud800"``, from decoding bytes with
    ``surrogateescape``, or from JSON's ``\\ud800`` escape); encoding it fails, so
    it is refused when it is given, naming ``what``, not when the file is written.

    Parameters
    ----------
    texts
        The strings.
    what
        What holds them (``key 'names'``), for the message.

    Raises
    ------
    InvalidDataError
        Naming ``what`` and the character.
    """
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise InvalidDataError(
            f"{what}: a string holds {bad!r}, a lone surrogate, which UTF-8 cannot encode"
        ) from None


def encode_metadata(key: str, value: Any) -> Any:
    """Convert a metadata value into plain JSON-compatible Python.

    numpy scalars become Python scalars, arrays and tuples become lists, non-finite floats
    are tagged (see the module docstring). ``None`` is allowed.

    The metadata document must stay readable: stored under ``key`` (each ``/``-separated
    part a section of the document, the document itself one level), the value may nest
    lists and dicts at most :data:`MAX_NESTING` levels deep in all. Deeper values are
    refused here, when written, rather than written and refused when read.

    Raises
    ------
    UnsupportedTypeError
        For values JSON cannot hold (complex, bytes, sets, objects), naming ``key``.
    InvalidDataError
        If the document would nest deeper than :data:`MAX_NESTING` levels, or a string
        holds a lone surrogate (see :func:`check_utf8`), naming ``key``.
    """
    sections = key.count("/") + 1
    encoded = _encode_metadata(key, value, sections + 1)
    if sections + _depth(encoded, MAX_NESTING) > MAX_NESTING:
        raise InvalidDataError(_too_deep(f"metadata {key!r}"))
    return encoded


def _encode_metadata(key: str, value: Any, level: int) -> Any:
    """:func:`encode_metadata`; ``level`` is where a container ``value`` would sit."""
    if isinstance(value, str):
        check_utf8([value], f"metadata {key!r}")
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _checked_int(key, value)
    if isinstance(value, float):
        return _encode_float(value)
    if isinstance(value, np.generic):
        if value.dtype.kind == "f" and value.dtype.itemsize > 8:
            # .item() keeps extended precision as it is: JSON's numbers cannot hold it.
            raise UnsupportedTypeError(
                f"metadata {key!r} is a {value.dtype} (extended precision), which JSON "
                "cannot hold; convert it to float64 or a string"
            )
        if value.dtype.kind in "biuf" or isinstance(value, np.str_):
            return _encode_metadata(key, value.item(), level)
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "biufU" or (
            value.dtype.kind == "O" and all(isinstance(x, str) for x in value.ravel())
        ):
            return _encode_metadata(key, value.tolist(), level)
    elif isinstance(value, list | tuple):
        if level > MAX_NESTING:
            # Stop before the recursion can exhaust the interpreter's stack.
            raise InvalidDataError(_too_deep(f"metadata {key!r}"))
        return [_encode_metadata(key, v, level + 1) for v in value]
    elif isinstance(value, Mapping):
        if level > MAX_NESTING:
            raise InvalidDataError(_too_deep(f"metadata {key!r}"))
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UnsupportedTypeError(
                    f"metadata dict keys must be str, got {type(k).__name__} {k!r} under {key!r}"
                )
            check_utf8([k], f"metadata {key!r}")
            out[k] = _encode_metadata(f"{key}/{k}", v, level + 1)
        return {"__dict__": out} if _looks_tagged(out) else out
    raise UnsupportedTypeError(
        f"metadata {key!r} has a value of type {type(value).__name__}; metadata holds bool, "
        "int, float, str, None, lists, dicts and numpy numbers or arrays of these"
    )


#: Integers this wide are checked against the interpreter's limit on converting
#: integers to text (4,300 digits by default, ``sys.set_int_max_str_digits``).
_WIDE_INT_BITS = 4000


def _checked_int(key: str, value: int) -> int:
    """``value``, if the metadata document can be written with it: an integer of more
    digits than Python converts to text fails when the document is written (at
    ``close()``, losing the item), so it is refused when it is given."""
    if value.bit_length() > _WIDE_INT_BITS:
        try:
            str(value)
        except ValueError:
            raise InvalidDataError(
                f"metadata {key!r}: an integer of about {int(value.bit_length() * 0.30103)} "
                "digits is beyond what Python writes as text (sys.get_int_max_str_digits()); "
                "store it as a string"
            ) from None
    return value


def metadata_section(encoded: Any) -> dict[str, Any] | None:
    """The dict of keys an encoded metadata value holds, if it is a section (a dict),
    else ``None``: the dict itself, or the one inside its ``{"__dict__": ...}`` wrapper
    (a dict with a key like ``"__build__"`` is wrapped, see :func:`encode_metadata`).
    A tagged float (``{"__float__": "NaN"}``) is a value, not a section."""
    if not isinstance(encoded, dict):
        return None
    if set(encoded) == {"__dict__"} and isinstance(encoded["__dict__"], dict):
        inner: dict[str, Any] = encoded["__dict__"]
        return inner
    if set(encoded) == {"__float__"}:
        return None
    return encoded


def as_metadata_section(keys: dict[str, Any]) -> dict[str, Any]:
    """The encoded form of a section holding ``keys``: wrapped when a key looks like a tag,
    so that :func:`decode_metadata` gives ``keys`` back."""
    return {"__dict__": keys} if _looks_tagged(keys) else keys


def decode_metadata(obj: Any) -> Any:
    """Invert :func:`encode_metadata` (tagged floats back to floats).

    Metadata may come from other tools: an object that only looks like a tag (an unknown
    ``__float__`` token, a ``__dict__`` that is not an object) is kept as it is.

    Raises
    ------
    ValueError
        If ``obj`` nests deeper than :data:`MAX_NESTING` levels: documents read through
        :func:`parse_document` never do.
    """
    return _decode_metadata(obj, 1)


def _decode_metadata(obj: Any, level: int) -> Any:
    if isinstance(obj, dict | list) and level > MAX_NESTING:
        # A document that was not parsed by parse_document: refuse it before the
        # recursion can exhaust the interpreter's stack.
        raise ValueError(f"nested deeper than {MAX_NESTING} levels (MAX_NESTING)")
    if isinstance(obj, dict):
        if set(obj) == {"__float__"}:
            token = obj["__float__"]
            if isinstance(token, str) and token in _NONFINITE:
                return _NONFINITE[token]
        elif set(obj) == {"__dict__"} and isinstance(obj["__dict__"], dict):
            return {k: _decode_metadata(v, level + 1) for k, v in obj["__dict__"].items()}
        return {k: _decode_metadata(v, level + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_metadata(x, level + 1) for x in obj]
    return obj


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """Serialise already-encoded JSON-compatible Python as strict JSON."""
    return json.dumps(obj, allow_nan=False, ensure_ascii=False, indent=indent)


def loads(text: str | bytes) -> Any:
    """Parse strict JSON; the non-standard ``NaN``/``Infinity`` tokens are rejected.

    Raises
    ------
    ValueError
        As :func:`parse_document`: malformed JSON, or nesting deeper than
        :data:`MAX_NESTING`.
    """
    return parse_document(text, strict=True)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name!r}")


def _plain_array(arr: np.ndarray) -> Any:
    kind = arr.dtype.kind
    if kind == "f":
        if np.isfinite(arr).all():
            return arr.tolist()
        return np.vectorize(_float_token, otypes=[object])(arr).tolist() if arr.size else []
    if kind == "c":
        return np.vectorize(
            lambda z: {"real": _float_token(z.real), "imag": _float_token(z.imag)},
            otypes=[object],
        )(arr).tolist()
    if kind in "biu":
        return arr.tolist()
    # Strings, objects, bytes from other writers: element by element.
    return to_jsonable(arr.tolist())


def to_jsonable(value: Any) -> Any:
    """Convert a value to plain JSON for people and other programs (``--json`` output).

    Unlike :func:`encode`, nothing is tagged for a round trip: arrays become nested lists,
    numpy scalars Python ones, non-finite floats the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"``, complex numbers ``{"real", "imag"}`` objects, bytes text.

    Parameters
    ----------
    value
        Anything a storage returns, or a document built from such values.

    Returns
    -------
    object
        A value ``json.dumps(..., allow_nan=False)`` accepts.
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _plain_array(value)
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return _float_token(value)
    if isinstance(value, complex):
        return {"real": _float_token(value.real), "imag": _float_token(value.imag)}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
