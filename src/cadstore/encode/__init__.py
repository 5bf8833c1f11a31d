"""Encoding many CAD files into per-body ``.data`` items: the first stage of the pipeline.

=========================  ==============================================================
module                     owns
=========================  ==============================================================
:mod:`~.run`               :func:`encode_files` (``cadstore encode``) and
                           :func:`encode_sample_set` (the demo's parts, labelled)
:mod:`~.work`              what a worker does for one file: read it, encode each body,
                           report each step and every failure with its reason
:mod:`~.naming`            which files are taken, and what their items are called
:mod:`~.report`            :class:`EncodeReport` and ``error_summary.json``
=========================  ==============================================================

The workers are supervised by :class:`cadstore.workers.WorkerPool` (time limit, memory
guard, hung workers killed); the bodies are encoded by :class:`cadstore.cad.BrepEncoder`.
Needs the ``cad`` extra.
"""

from __future__ import annotations

from cadstore.encode.naming import find_cad_files, item_base_name, item_name
from cadstore.encode.report import EncodeReport
from cadstore.encode.run import (
    DEFAULT_MEMORY_LIMIT_MB,
    DEFAULT_TIMEOUT,
    ENCODED_DIR,
    ERROR_SUMMARY,
    MAX_TASKS_PER_CHILD,
    PART_FAMILY,
    SUMMARY_DIR,
    encode_files,
    encode_sample_set,
    sample_set_schema,
)
from cadstore.encode.work import PUSH_METHODS

__all__ = [
    "DEFAULT_MEMORY_LIMIT_MB",
    "DEFAULT_TIMEOUT",
    "ENCODED_DIR",
    "ERROR_SUMMARY",
    "MAX_TASKS_PER_CHILD",
    "PART_FAMILY",
    "PUSH_METHODS",
    "SUMMARY_DIR",
    "EncodeReport",
    "encode_files",
    "encode_sample_set",
    "find_cad_files",
    "item_base_name",
    "item_name",
    "sample_set_schema",
]
