"""How dataset commands turn their PATH argument into explorer/loader arguments."""

from __future__ import annotations

import os

__all__ = ["dataset_sources"]


def dataset_sources(path: str) -> dict[str, str]:
    """Keyword arguments that open ``path`` (a ``.flow`` manifest or a ``.dataset``).

    Raises
    ------
    FileNotFoundError
        If neither the path nor its sibling files exist.
    """
    if path.endswith(".flow"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such manifest: {path}")
        return {"flow_output_file": path}
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such dataset: {path}")
    stem = path[: -len(".dataset")] if path.endswith(".dataset") else path
    if os.path.exists(stem + ".flow"):
        return {"flow_output_file": stem + ".flow"}
    return {"merged_store_path": path}
