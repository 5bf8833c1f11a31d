"""Merging per-item ``.data`` files into one ``.dataset``, stage by stage.

=========================  ==============================================================
module                     owns
=========================  ==============================================================
:mod:`~.api`               the public entry points: :class:`DatasetMerger` (the specified
                           API), :func:`merge` (dataset, tables and manifest in one call)
:mod:`~.run`               :func:`merge_items`: the stages in order and the commit point
:mod:`~.scan`              stage 1: read each item's metadata, verify its checksums
:mod:`~.plan`              stage 2: groups, dtypes, rows, offsets, shard sizes
:mod:`~.write`             stage 3: rows streamed into shards, then the metadata
:mod:`~.append`            adding items to an existing dataset
:mod:`~.distributed`       scanning and encoding on a Dask cluster
:mod:`~.tables`            :class:`DatasetInfo`: the ``.infoset`` and ``.attribset`` tables
:mod:`~.options`           :class:`MergeOptions` in, :class:`MergeResult` out
=========================  ==============================================================

The on-disk layout every stage writes is :mod:`cadstore.format.layout`; the manifest,
:mod:`cadstore.format.manifest`; every byte is published through
:mod:`cadstore.io.publish`.
"""

from __future__ import annotations

from cadstore.merging.api import DatasetMerger, merge, write_flow_manifest
from cadstore.merging.append import append_items
from cadstore.merging.options import MergeOptions, MergeResult
from cadstore.merging.run import merge_items
from cadstore.merging.tables import DatasetInfo, build_info

__all__ = [
    "DatasetInfo",
    "DatasetMerger",
    "MergeOptions",
    "MergeResult",
    "append_items",
    "build_info",
    "merge",
    "merge_items",
    "write_flow_manifest",
]
