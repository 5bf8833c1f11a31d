"""How dataset commands turn their PATH argument into explorer/loader arguments."""

from __future__ import annotations

from typing import Any

from cadstore.dataset.access import dataset_filesystem

__all__ = ["dataset_sources"]


def dataset_sources(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments that open ``path`` (a ``.flow`` manifest or a ``.dataset``).

    Parameters
    ----------
    path
        Local path or URL.
    storage_options
        fsspec options for URLs; passed on as ``storage_options`` when given.

    Raises
    ------
    FileNotFoundError
        If neither the path nor its sibling files exist.
    """
    extra: dict[str, Any] = {"storage_options": storage_options} if storage_options else {}
    fs, located = dataset_filesystem(path, storage_options)
    if path.endswith(".flow"):
        if not fs.exists(located):
            raise FileNotFoundError(f"no such manifest: {path}")
        return {"flow_output_file": path, **extra}
    if not fs.exists(located):
        raise FileNotFoundError(f"no such dataset: {path}")
    stem = path[: -len(".dataset")] if path.endswith(".dataset") else path
    flow_fs, flow = dataset_filesystem(stem + ".flow", storage_options)
    if flow_fs.exists(flow):
        return {"flow_output_file": stem + ".flow", **extra}
    return {"merged_store_path": path, **extra}
