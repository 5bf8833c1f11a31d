"""Metadata routing: decide whether a metadata key goes to ``.infoset`` or ``.attribset``."""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["MetadataRouter", "compile_patterns"]

# Keys seen by one router are remembered up to this many; past it, keys are still routed
# correctly, just not cached (guards against keys that embed item ids).
_CACHE_LIMIT = 4096


def _pattern_regex(pattern: str) -> str:
    # Only '*' is special; '?' and '[' stay literal, unlike fnmatch, because field names such
    # as "stream [scs]" occur in practice.
    return ".*".join(re.escape(part) for part in pattern.split("*"))


def compile_patterns(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """Compile several routing patterns into one regex that matches if any of them does.

    ``*`` matches any run of characters and case is ignored.

    Parameters
    ----------
    patterns
        Patterns such as ``"size_*"``.

    Returns
    -------
    re.Pattern or None
        A regex to use with ``fullmatch``, or ``None`` for no patterns.
    """
    parts = [f"(?:{_pattern_regex(p)})" for p in patterns]
    if not parts:
        return None
    return re.compile("|".join(parts), re.IGNORECASE | re.DOTALL)


class MetadataRouter:
    """Route metadata keys following the vendor's three-step order.

    1. An explicit definition of the full key, or else of its first ``'/'`` segment (so
       ``"file_sizes_KB/face_areas"`` follows a definition of ``"file_sizes_KB"``).
    2. A pattern match against the full key or its last segment; file-level patterns are tried
       before categorical ones, so a key matching both is file-level.
    3. The value's type: ``bool`` goes to ``default_categorical``, ``str`` to
       ``default_string``, numbers (Python or numpy, 0-d arrays included) to
       ``default_numeric``, and anything else (dicts, lists, arrays, ``None``) to
       ``default_categorical``.

    Parameters
    ----------
    file_level
        Names defined as file-level metadata.
    categorical
        Names defined as categorical metadata.
    routing_rules
        A canonical ``routing_rules`` dict.
    """

    __slots__ = (
        "_cache",
        "_categorical_patterns",
        "_default_categorical",
        "_default_numeric",
        "_default_string",
        "_explicit",
        "_file_level_patterns",
    )

    def __init__(
        self,
        file_level: Iterable[str],
        categorical: Iterable[str],
        routing_rules: Mapping[str, Any],
    ) -> None:
        self._explicit: dict[str, str] = dict.fromkeys(file_level, "file_level")
        self._explicit.update(dict.fromkeys(categorical, "categorical"))
        self._file_level_patterns = compile_patterns(routing_rules["file_level_patterns"])
        self._categorical_patterns = compile_patterns(routing_rules["categorical_patterns"])
        # key -> destination decided by name alone, or None when the value's type decides.
        self._cache: dict[str, str | None] = {}
        self._default_numeric: str = routing_rules["default_numeric"]
        self._default_categorical: str = routing_rules["default_categorical"]
        self._default_string: str = routing_rules["default_string"]

    def route(self, key: str, value: object = None) -> str:
        """Return ``'file_level'`` or ``'categorical'`` for metadata *key* holding *value*.

        Parameters
        ----------
        key
            The metadata key, possibly nested with ``'/'``.
        value
            The value about to be stored; only its type matters, and only when neither a
            definition nor a pattern decides.

        Returns
        -------
        str
            ``'file_level'`` or ``'categorical'``.
        """
        cache = self._cache
        if key in cache:
            found = cache[key]
        else:
            found = self._route_by_name(key)
            if len(cache) < _CACHE_LIMIT:
                cache[key] = found
        return self.route_by_type(value) if found is None else found

    def _route_by_name(self, key: str) -> str | None:
        """Steps 1 and 2 of :meth:`route`; ``None`` when only the value's type can decide."""
        explicit = self._explicit
        found = explicit.get(key)
        if found is not None:
            return found
        head, slash, _ = key.partition("/")
        if slash:
            found = explicit.get(head)
            if found is not None:
                return found
        last = key.rsplit("/", 1)[-1]
        for pattern, target in (
            (self._file_level_patterns, "file_level"),
            (self._categorical_patterns, "categorical"),
        ):
            if pattern is not None and (
                pattern.fullmatch(key) or (slash and pattern.fullmatch(last))
            ):
                return target
        return None

    def route_by_type(self, value: object) -> str:
        """Return the type default for *value* (step 3 of :meth:`route`).

        Parameters
        ----------
        value
            Any metadata value.

        Returns
        -------
        str
            ``'file_level'`` or ``'categorical'``.
        """
        # Exact built-in types first: they are most metadata and skip the slower ABC check.
        kind = type(value)
        if kind is int or kind is float:
            return self._default_numeric
        if kind is str:
            return self._default_string
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, bool | np.bool_):
            return self._default_categorical
        if isinstance(value, str | np.str_):
            return self._default_string
        if isinstance(value, np.number | numbers.Number):
            return self._default_numeric
        return self._default_categorical
