"""The key grammar shared by every storage backend.

A key is a ``/``-separated path of one or more segments, such as ``"face_areas"`` or
``"graph/edges_source"``. Keys are checked before anything is written, so that a key can
never name a file outside the storage, collide with a store's own bookkeeping, or smuggle
characters that file systems and zip readers treat specially.

Rules, each enforced with an :class:`~cadstore.errors.InvalidKeyError` naming the key:

* a key is a non-empty ``str`` of at most :data:`MAX_KEY_LENGTH` characters;
* no leading or trailing ``/`` and no empty segment (``"a//b"``);
* no segment is ``.`` or ``..``;
* no NUL, control character, backslash or colon anywhere (colons make drive letters on
  Windows and URL schemes elsewhere);
* no segment starts with ``__`` (reserved by the Zarr specification);
* a data key saved (:func:`check_storable`) has no segment named like a Zarr metadata
  document (``zarr.json``, ``.zarray``, ``.zattrs``, ``.zgroup``, ``.zmetadata``) and does
  not start with ``metadata.json`` (the item's metadata document): a store would hold the
  key's file and its own document at one path. Reading such a key, and metadata keys (no
  file of their own), are left alone: items written before may hold them;
* each segment is at most :data:`MAX_SEGMENT_BYTES` bytes in UTF-8.
"""

from __future__ import annotations

import re

from cadstore.errors import InvalidKeyError, UnsupportedTypeError

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_SEGMENT_BYTES",
    "check_storable",
    "join_key",
    "split_key",
    "validate_key",
]

MAX_KEY_LENGTH = 1024
MAX_SEGMENT_BYTES = 255

#: Names of the documents a store keeps beside its data (Zarr's, at every level).
_DOCUMENT_NAMES = frozenset(("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"))
#: The item's metadata document, at the root of a store.
_ROOT_DOCUMENT = "metadata.json"

# C0 and C1 control characters, DEL, backslash and colon.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\\:]")

#: Keys (plain ``str``) already accepted: an encoder saves the same few dozen keys for every
#: item, and checking one costs a few microseconds. Emptied when it reaches
#: :data:`_ACCEPTED_KEPT`.
_ACCEPTED: set[str] = set()
_ACCEPTED_KEPT = 4096


def validate_key(key: object, *, what: str = "key") -> str:
    """Check ``key`` against the key grammar and return it.

    Parameters
    ----------
    key
        The candidate key.
    what
        How to call the key in messages (``"key"``, ``"metadata key"``, ...).

    Returns
    -------
    str
        The key, unchanged.

    Raises
    ------
    UnsupportedTypeError
        If ``key`` is not a ``str``.
    InvalidKeyError
        If ``key`` breaks a rule of the grammar.
    """
    if type(key) is str and key in _ACCEPTED:
        return key
    if not isinstance(key, str):
        raise UnsupportedTypeError(f"{what} must be a str, got {type(key).__name__}: {key!r}")
    if not key:
        raise InvalidKeyError(key, f"{what} is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(
            key[:40] + "...", f"{what} is longer than {MAX_KEY_LENGTH} characters"
        )
    bad = _FORBIDDEN.search(key)
    if bad:
        raise InvalidKeyError(
            key,
            f"{what} contains the forbidden character {bad.group()!r} (control characters, "
            "NUL, backslash and colon are not allowed)",
        )
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKeyError(
                key.encode("utf-8", "backslashreplace").decode("ascii"),
                f"{what} holds a lone surrogate, which UTF-8 cannot encode",
            ) from None
    if key.startswith("/"):
        raise InvalidKeyError(key, f"{what} must be relative, not start with '/'")
    for segment in key.split("/"):
        if not segment:
            raise InvalidKeyError(key, f"{what} has an empty segment (leading, trailing or '//')")
        if segment in (".", ".."):
            raise InvalidKeyError(
                key, f"{what} has a {segment!r} segment, which could escape the store"
            )
        if segment.startswith("__"):
            raise InvalidKeyError(key, f"segment {segment!r} starts with '__', which Zarr reserves")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidKeyError(key, f"segment is longer than {MAX_SEGMENT_BYTES} bytes")
    if type(key) is str:
        if len(_ACCEPTED) >= _ACCEPTED_KEPT:
            _ACCEPTED.clear()
        _ACCEPTED.add(key)
    return key


def check_storable(key: str, node: object) -> None:
    """Refuse to save data under ``key`` (or, for a dict, any key below it) whose file
    would meet a store's own document: a segment named like a Zarr metadata document,
    or a first segment ``metadata.json``. ``key`` is already valid (:func:`validate_key`).

    Raises
    ------
    InvalidKeyError
        Naming the key and the document.
    """
    parts = key.split("/")
    if parts[0] == _ROOT_DOCUMENT:
        raise InvalidKeyError(
            key, f"{_ROOT_DOCUMENT!r} is the name of the item's metadata document"
        )
    if not _DOCUMENT_NAMES.isdisjoint(parts):
        bad = next(p for p in parts if p in _DOCUMENT_NAMES)
        raise InvalidKeyError(key, f"segment {bad!r} is the name of a Zarr metadata document")
    if isinstance(node, dict):
        for name, child in node.items():
            check_storable(f"{key}/{name}", child)


def split_key(key: str) -> list[str]:
    """Return the segments of an already validated key."""
    return key.split("/")


def join_key(*parts: str) -> str:
    """Join key parts, skipping empty ones (``join_key("", "a")`` is ``"a"``)."""
    return "/".join(p for p in parts if p)
