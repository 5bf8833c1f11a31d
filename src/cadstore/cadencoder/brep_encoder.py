"""The specified module path ``<package>.cadencoder.brep_encoder``.

``BrepEncoder`` lives in :mod:`cadstore.cad.encoder`. Needs the ``cad`` extra.
"""

from __future__ import annotations

from cadstore.cad.encoder import BrepEncoder

__all__ = ["BrepEncoder"]
