"""The tasks' runners: :mod:`~cadstore.flowmanager.tasks.parallel_executor`."""

from __future__ import annotations

from cadstore.flowmanager.tasks.parallel_executor import (
    ParallelExecutor,
    ParallelTask,
    StorageType,
)

__all__ = ["ParallelExecutor", "ParallelTask", "StorageType"]
