"""What the property-based bad-input tests share: JSON values, settings, field edits.

Each such test puts arbitrary JSON where a document of cadstore's expects something
specific and requires data or a cadstore error. ``CADSTORE_FUZZ_EXAMPLES`` sets how many
examples each test tries (300 in the suite; run more locally to search harder).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: Examples per fuzz test.
FUZZ_EXAMPLES = int(os.environ.get("CADSTORE_FUZZ_EXAMPLES", "300"))

#: Settings of every fuzz test: each example writes and reads files, so no deadline.
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck)
)

#: JSON scalars, with integers beyond 64 bits.
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
)


def json_values(
    extend: Callable[[st.SearchStrategy[Any]], st.SearchStrategy[Any]] | None = None,
    max_leaves: int = 12,
) -> st.SearchStrategy[Any]:
    """Any JSON value: scalars, lists and objects nested; ``extend`` adds more containers.

    ``extend(inner)`` returns further container strategies built from ``inner`` (for
    instance objects shaped like a codec's tags).
    """

    def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        plain = st.lists(inner, max_size=4) | st.dictionaries(
            st.text(max_size=8), inner, max_size=4
        )
        return plain | extend(inner) if extend is not None else plain

    return st.recursive(JSON_SCALARS, containers, max_leaves=max_leaves)


def set_field(doc: Any, field: tuple[Any, ...], value: Any) -> None:
    """Set ``doc[field[0]][field[1]]...`` to ``value``, if that path exists in ``doc``.

    Object keys may be added at the last step; list positions must exist.
    """
    node = doc
    for part in field[:-1]:
        present = (
            part in node
            if isinstance(node, dict)
            else (isinstance(node, list) and isinstance(part, int) and part < len(node))
        )
        if not present:
            return
        node = node[part]
    last = field[-1]
    if isinstance(node, dict) or (isinstance(node, list) and last < len(node)):
        node[last] = value
