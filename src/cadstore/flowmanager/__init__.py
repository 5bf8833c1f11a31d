"""Flows: the specified system's pipelines (``create_flow``, ``flowtask``, ``Flow.process``).

=====================================  ===============================================
module                                 owns
=====================================  ===============================================
:mod:`~.flow_builder`                  the ``flowtask`` decorators, their registry and
                                       :func:`create_flow`
:mod:`~.flow`                          :class:`Flow` (running the tasks, the export, the
                                       output folder) and :class:`FlowOutput`
:mod:`~.tasks.parallel_executor`       :class:`ParallelExecutor`: a transform task over
                                       many items on supervised workers
=====================================  ===============================================

A flow written for the specified system runs with only the package name changed::

    import cadstore
    from cadstore.flowmanager import flowtask

    flow = cadstore.create_flow(name="parts", tasks=[gather, encode], flows_outputdir="out")
    output, summary, flow_file = flow.process(inputs={"cad_datasources": ["parts/"]})

See ``docs/flows.md``. Transform tasks need the ``cad`` extra (the CAD loader).
"""

from __future__ import annotations

from cadstore.flowmanager.flow import Flow, FlowOutput, setup_logger
from cadstore.flowmanager.flow_builder import (
    TaskDecorators,
    create_flow,
    flowtask,
    list_registered_tasks,
    print_task_registry,
    validate_function_signature,
    validate_tasks,
)
from cadstore.flowmanager.tasks.parallel_executor import (
    ParallelExecutor,
    ParallelTask,
    StorageType,
)

__all__ = [
    "Flow",
    "FlowOutput",
    "ParallelExecutor",
    "ParallelTask",
    "StorageType",
    "TaskDecorators",
    "create_flow",
    "flowtask",
    "list_registered_tasks",
    "print_task_registry",
    "setup_logger",
    "validate_function_signature",
    "validate_tasks",
]
