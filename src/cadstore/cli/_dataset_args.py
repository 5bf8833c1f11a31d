"""How dataset commands turn their PATH argument into explorer/loader arguments."""

from __future__ import annotations

from typing import Any

from cadstore.io.location import resolve
from cadstore.lifecycle import copy_beside

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
    where = resolve(path, storage_options, shared=True)
    if where.path.endswith(".flow"):
        if not where.exists():
            raise FileNotFoundError(f"no such manifest: {path}")
        return {"flow_output_file": where}
    if not where.exists():
        raise FileNotFoundError(f"no such dataset: {path}")
    flow = copy_beside(where, "flow")
    if flow.exists():
        return {"flow_output_file": flow}
    return {"merged_store_path": where}
