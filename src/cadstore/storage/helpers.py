"""Helpers of the specified module path ``<package>.storage.helpers``.

:func:`generate_unique_id_from_path` is the hash behind every item name: cadstore's encoder
(:func:`cadstore.encode.naming.item_base_name`) names the items of a CAD file with it, so a
task script that computes ``generate_unique_id_from_path(str(path.with_suffix("")))`` to
name its own side files (the specified ``graph_data/<hash>.pt``) gets the stem of the
items cadstore encodes from that file.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["generate_unique_id_from_path"]


def generate_unique_id_from_path(path: str | os.PathLike[str]) -> str:
    """Return the 32-hex id of ``path``: the MD5 digest of its absolute form's bytes
    (UTF-8; a name that is not UTF-8 as the bytes the file system holds, so that every
    file has an id).

    The specified users pass the CAD file's path without its extension; the result is then
    the stem ``<hash>`` of the items ``<hash>_<body>`` encoded from that file. The id is a
    name, not a security measure.

    Parameters
    ----------
    path
        Any path (it need not exist); a relative one is made absolute first, so the same
        file gives the same id from any working directory.

    Returns
    -------
    str
        32 lowercase hex digits.

    Examples
    --------
    >>> len(generate_unique_id_from_path("/parts/bracket"))
    32
    """
    absolute = os.path.abspath(os.fspath(path))
    return hashlib.md5(os.fsencode(absolute), usedforsecurity=False).hexdigest()
