"""Safety limits applied to every file cadstore reads.

Files may come from anywhere, and every size written inside them is attacker-controlled:
zip headers, Zarr shapes and chunk shapes, zstd frame headers. Readers check each derived
size against these limits *before* allocating, and raise
:class:`~cadstore.errors.LimitExceededError` (a :class:`~cadstore.errors.CorruptStoreError`)
naming the file and the limit. The defaults suit CAD items and merged datasets on a
workstation; pass a different :class:`Limits` to a reader to change them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds a reader enforces.

    Attributes
    ----------
    max_metadata_bytes
        Largest JSON metadata document (``zarr.json``, ``.zarray``, ``metadata.json``).
    max_members
        Most entries in one zip file.
    max_chunk_bytes
        Largest decoded chunk.
    max_array_bytes
        Largest decoded array.
    max_expansion
        An array may decode to at most ``max_expansion`` times the size of the file holding
        it, plus ``expansion_allowance`` bytes. This catches a small file declaring a huge
        shape (a decompression bomb) while allowing ordinary compressible data.
    expansion_allowance
        See ``max_expansion``.
    max_dims
        Most dimensions of an array.
    max_nodes
        Most arrays and groups in one hierarchy.
    """

    max_metadata_bytes: int = 16 * 1024**2
    max_members: int = 1_000_000
    max_chunk_bytes: int = 1024**3
    max_array_bytes: int = 64 * 1024**3
    max_expansion: int = 2000
    expansion_allowance: int = 256 * 1024**2
    max_dims: int = 32
    max_nodes: int = 200_000


DEFAULT_LIMITS = Limits()
