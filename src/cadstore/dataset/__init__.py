"""The read side of a merged dataset: find one item's rows, explore, split and train.

=========================  ==============================================================
module                     owns
=========================  ==============================================================
:mod:`~.reader`            :class:`DatasetReader`: one item's rows in O(1), batches into
                           buffers, safe in DataLoader workers
:mod:`~.explorer`          :class:`DatasetExplorer`: groups, arrays, xarray views, file
                           lists, distributions, descriptions (the specified API)
:mod:`~.loader`            :class:`DatasetLoader`, :class:`CADDataset`: stratified
                           splits recorded in the infoset, items straight from the dataset
:mod:`~.torch_support`     the PyTorch dataset and collation (``torch`` extra)
:mod:`~.report`            the self-contained HTML report (``report`` extra)
=========================  ==============================================================

Datasets are written by :mod:`cadstore.merging`; their layout is :mod:`cadstore.format.layout`.
"""

from __future__ import annotations

from cadstore.dataset.explorer import DatasetExplorer
from cadstore.dataset.loader import CADDataset, DatasetLoader
from cadstore.dataset.reader import DatasetReader

__all__ = ["CADDataset", "DatasetExplorer", "DatasetLoader", "DatasetReader"]
