"""The specified module path ``<package>.dataset.dataset_loader``.

The specified documentation imports ``CADDataset`` (and ``DatasetLoader``) from here; both
live in :mod:`cadstore.dataset.loader`.
"""

from __future__ import annotations

from cadstore.dataset.loader import CADDataset, DatasetLoader

__all__ = ["CADDataset", "DatasetLoader"]
