"""The ``.flow`` manifest: the JSON file that names a dataset and its tables.

A merge writes its manifest last, so a manifest marks a finished merge; readers
(:class:`~cadstore.dataset.DatasetExplorer`, the loader, the command line) start from it.
It holds the specified keys (``flow_name``, ``flow_data``, ``flow_info``,
``flow_attributes``, ``file_count``, ``Duration [seconds]``, ``error_distribution``) and
cadstore's own (``format``, ``commit``, ``groups``, ``errors``, ``warnings``, sizes). Paths
are stored relative to the manifest's folder when they lie below it, so the four files can
be moved together; a relative path is read relative to that folder (its prefix, on an
object store).

A manifest is a file like any other, and may come from anywhere: the paths it lists are
followed only inside its own folder (or prefix), unless the caller trusts it
(``trust_paths=True``). A path outside (``../elsewhere``, an absolute path elsewhere, a
URL of another store) is refused before anything is opened, so a manifest cannot make a
reader open, or a split rewrite, a file outside its folder. What it lists must be a
regular file (a directory holding ``zarr.json``, for a directory dataset): never a pipe,
a device or the root of a file system.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cadstore.errors import CorruptStoreError, os_problem
from cadstore.format import jsoncodec
from cadstore.io.location import Location, resolve, resolve_relative
from cadstore.io.publish import write_bytes_atomic
from cadstore.io.sources import file_beside, other_kind

__all__ = [
    "FLOW_FORMAT",
    "MANIFEST_ENTRIES",
    "Manifest",
    "folder_hint",
    "manifest_dataset",
    "manifests_in",
    "read_manifest",
    "resolve_flow_paths",
    "write_manifest",
]

#: Format marker of the manifests cadstore writes.
FLOW_FORMAT = "cadstore-flow/1"
#: The manifest's entries naming the dataset, its infoset and its attribset.
MANIFEST_ENTRIES = ("flow_data", "flow_info", "flow_attributes")


@dataclass(frozen=True)
class Manifest:
    """A manifest that was read, with the files it lists resolved.

    Attributes
    ----------
    location
        The manifest itself.
    document
        Its JSON document.
    dataset
        The ``.dataset`` it names (``flow_data``).
    infoset, attribset
        The tables it names (``None`` where it names none).
    """

    location: Location
    document: dict[str, Any]
    dataset: Location
    infoset: Location | None
    attribset: Location | None

    @property
    def is_cadstore(self) -> bool:
        """Whether cadstore wrote it (a manifest of the specified system lacks ``format``)."""
        return self.document.get("format") == FLOW_FORMAT


#: Largest manifest read.
_MAX_MANIFEST_BYTES = 16 * 1024**2


def _inside(folder: Location, listed: Location) -> bool:
    """Whether ``listed`` lies below ``folder`` (the same store, a path inside it)."""
    if folder.remote != listed.remote:
        return False
    if folder.remote:
        base = folder.path.rstrip("/")
        scheme, _, key = listed.path.partition("://")
        normal = f"{scheme}://{posixpath.normpath(key)}" if key else listed.path
        return normal.startswith(base + "/") and listed.fs is folder.fs
    # Symbolic links resolved: a link inside the folder may lead anywhere.
    base = os.path.realpath(folder.path)
    full = os.path.realpath(listed.path)
    return full != base and os.path.commonpath([base, full]) == base


def _check_kind(manifest: Location, entry: str, listed: Location) -> None:
    """Refuse a listed path that is not a regular file (or a dataset directory)."""
    if listed.remote:
        if listed.isfile() or (entry == "flow_data" and listed.child("zarr.json").isfile()):
            return
        raise CorruptStoreError(manifest.path, f"the manifest lists {entry} {listed}, not a file")
    try:
        mode = os.stat(listed.path).st_mode
    except OSError as exc:
        raise CorruptStoreError(
            manifest.path, f"the manifest lists {entry} {listed}: {os_problem(exc)}"
        ) from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode) and entry == "flow_data":
        if os.path.isfile(os.path.join(listed.path, "zarr.json")):
            return
        raise CorruptStoreError(
            manifest.path,
            f"the manifest lists flow_data {listed}, a directory that is not a dataset",
        )
    raise CorruptStoreError(
        manifest.path, f"the manifest lists {entry} {listed}, which is not a regular file"
    )


def _listed(
    manifest: Location,
    entry: str,
    value: object,
    trust_paths: bool,
    dataset: Location | None = None,
) -> Location | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise CorruptStoreError(manifest.path, f"{entry} is {value!r}, not a path")
    if "\0" in value or len(value) > 4096:
        raise CorruptStoreError(manifest.path, f"{entry} is not a usable path")
    listed = resolve_relative(manifest, value)
    if not trust_paths and not _inside(manifest.parent, listed):
        raise CorruptStoreError(
            manifest.path,
            f"the manifest lists {entry} {value!r}, outside its folder "
            f"{manifest.parent.path}; pass trust_paths=True (--trust-manifest) to follow "
            "it if you trust this manifest",
        )
    if not listed.exists():
        # A table copy gone beside its dataset, which carries the tables: repair makes it.
        remedy = (
            ""
            if dataset is None
            else f"; a cadstore dataset carries its tables: 'cadstore repair {dataset.path}' "
            "(cadstore.lifecycle.repair) publishes the copy again from it"
        )
        raise CorruptStoreError(
            manifest.path,
            f"the manifest lists {entry} {value!r}, but {listed} does not exist{remedy}",
        )
    _check_kind(manifest, entry, listed)
    return listed


def read_manifest(location: Location, *, trust_paths: bool = False) -> Manifest:
    """Read the manifest at ``location`` and resolve the files it lists.

    Parameters
    ----------
    location
        The ``.flow`` file.
    trust_paths
        Follow paths outside the manifest's folder (see the module docstring).

    Raises
    ------
    CorruptStoreError
        If the manifest is missing, not a regular file, not a JSON object, has no
        ``flow_data``, or lists a file outside its folder (unless trusted), that does not
        exist, or that is not a regular file (the message names the entry and the file).
    """
    doc = _manifest_document(location)
    dataset = _listed_dataset(location, doc, trust_paths)
    infoset, attribset = (
        _listed(location, entry, doc.get(entry), trust_paths, dataset)
        for entry in MANIFEST_ENTRIES[1:]
    )
    return Manifest(location, doc, dataset, infoset, attribset)


def _manifest_document(location: Location) -> dict[str, Any]:
    """The JSON object of the manifest at ``location``: a :class:`CorruptStoreError`
    naming it when it is missing, not a regular file (never opened: a FIFO would block),
    too large, or not a JSON object (torn, or another file given for it)."""
    local = not location.remote and os.path.exists(location.path)
    if local and not stat.S_ISREG(os.stat(location.path).st_mode):
        raise CorruptStoreError(location.path, "not a .flow manifest (not a regular file)")
    try:
        with location.open_read() as fh:
            raw = fh.read(_MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise CorruptStoreError(location.path, "no such .flow manifest") from None
    except IsADirectoryError:
        raise CorruptStoreError(location.path, "not a .flow manifest (a directory)") from None
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise CorruptStoreError(
            location.path, f"not a .flow manifest (larger than {_MAX_MANIFEST_BYTES} bytes)"
        )
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        kind = _other_kind(location, raw)
        if kind is not None:
            raise CorruptStoreError(location.path, f"not a .flow manifest but {kind}") from None
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise CorruptStoreError(
            location.path, f"not a .flow manifest (invalid JSON: {reason})"
        ) from None
    if not isinstance(doc, dict):
        raise CorruptStoreError(location.path, "not a .flow manifest (not a JSON object)")
    return doc


def _listed_dataset(location: Location, doc: Mapping[str, Any], trust_paths: bool) -> Location:
    """The dataset manifest document ``doc`` lists (see :func:`_listed`)."""
    dataset = _listed(location, MANIFEST_ENTRIES[0], doc.get(MANIFEST_ENTRIES[0]), trust_paths)
    if dataset is None:
        raise CorruptStoreError(location.path, "the manifest names no dataset (flow_data)")
    return dataset


def manifest_dataset(
    location: Location, beside: Location, *, trust_paths: bool = False
) -> Location:
    """The dataset that the manifest at ``location`` stands for, as a repair sees it.

    A repair mends a dataset's manifest and table copies from the tables the dataset
    carries, so what it must not need is exactly what it mends: the table copies the
    manifest lists are not checked (one that is gone is published again), and a manifest
    that is no JSON object (torn, or not a regular file) stands for ``beside``, the
    ``.dataset`` of the same stem, when that is there.

    Parameters
    ----------
    location
        The ``.flow`` file (it exists).
    beside
        The ``.dataset`` of the same stem.
    trust_paths
        Follow a path outside the manifest's folder.

    Raises
    ------
    CorruptStoreError
        As :func:`read_manifest` for a manifest that parses (one naming no dataset, or
        one outside its folder when not trusted), and for a torn one with no ``beside``.
    """
    try:
        doc = _manifest_document(location)
    except CorruptStoreError:
        if beside.exists():
            return beside
        raise
    return _listed_dataset(location, doc, trust_paths)


def _other_kind(location: Location, raw: bytes) -> str | None:
    """What a file given for a manifest is instead, when cadstore writes such files beside
    a dataset, with the manifest beside it when there is one; ``None`` if neither.

    ``parts.dataset`` (a zip) and ``parts.infoset`` (Parquet) are easily given where
    ``parts.flow`` is meant.
    """
    kind = other_kind(raw[:4], "json")
    if kind is None:
        return None
    manifest = file_beside(location.path, location.fs.isfile, ".flow")
    return kind + (f"; the manifest beside it is {manifest}" if manifest else "")


def manifests_in(folder: Location) -> list[str]:
    """The ``.flow`` manifests in ``folder``, for a message refusing the folder where a
    dataset or an item is expected: the output folder of ``cadstore encode --merge``, of
    a merge or of a flow holds its dataset's manifest, and is easily given for it.

    Parameters
    ----------
    folder
        A directory (or an object store prefix).

    Returns
    -------
    list of str
        Their paths, sorted; empty when there is none or the folder cannot be listed.
    """
    try:
        names = folder.listdir()
    except Exception:  # a hint only: the refusal does not depend on it
        return []
    return sorted(folder.child(n).path for n in names if n.endswith(".flow"))


def folder_hint(folder: Location) -> str:
    """The end of a message refusing ``folder`` that names the manifests it holds (see
    :func:`manifests_in`), or ``""``.

    Examples
    --------
    ``"it is the output folder of a merge or a flow: pass its manifest out/parts.flow (or
    the dataset beside it)"``
    """
    found = manifests_in(folder)
    if not found:
        return ""
    listed = " or ".join(found[:3]) + (f" (or {len(found) - 3} more)" if len(found) > 3 else "")
    return (
        "it is the output folder of a merge or a flow: pass its manifest "
        f"{listed} (or the dataset beside it)"
    )


def resolve_flow_paths(
    flow_output_file: str | os.PathLike[str] | Location,
    storage_options: Mapping[str, Any] | None = None,
    *,
    trust_paths: bool = False,
) -> dict[str, str | None]:
    """Read a ``.flow`` manifest and return the absolute paths (or URLs) it lists.

    Parameters
    ----------
    flow_output_file
        The manifest, a local path or a URL.
    storage_options
        fsspec options for a URL (ignored for a local path); they also serve the files
        the manifest lists when those are URLs.
    trust_paths
        Follow paths outside the manifest's folder.

    Returns
    -------
    dict
        ``{"flow_data": ..., "flow_info": ..., "flow_attributes": ...}``; an entry the
        manifest leaves out (or sets to null) is ``None``.
    """
    where = resolve(flow_output_file, storage_options, shared=True)
    manifest = read_manifest(where, trust_paths=trust_paths)
    listed = (manifest.dataset, manifest.infoset, manifest.attribset)
    return {
        entry: None if where is None else where.path
        for entry, where in zip(MANIFEST_ENTRIES, listed, strict=True)
    }


def _relative(manifest: Location, listed: Location | None) -> str | None:
    if listed is None:
        return None
    if manifest.remote:
        base = manifest.parent.path + "/"
        return listed.path[len(base) :] if listed.path.startswith(base) else listed.path
    base = os.path.dirname(os.path.abspath(manifest.path))
    full = os.path.abspath(listed.path)
    return os.path.relpath(full, base) if full.startswith(base + os.sep) else full


def manifest_stem(location: Location) -> str:
    """The flow's name: the file name without ``.flow``, ``.dataset`` or ``.zarr``."""
    base = location.name
    for suffix in (".flow", ".dataset", ".zarr"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


def write_manifest(
    location: Location,
    *,
    dataset: Location,
    infoset: Location | None,
    attribset: Location | None,
    fields: Mapping[str, Any],
) -> Location:
    """Publish the manifest atomically; its presence marks a finished merge.

    Parameters
    ----------
    location
        The ``.flow`` file (one upload on an object store).
    dataset, infoset, attribset
        The files it names, stored relative to its folder when they lie below it.
    fields
        The rest of the document (counts, durations, errors, ...).
    """
    doc = {
        "format": FLOW_FORMAT,
        "flow_name": manifest_stem(location),
        "flow_data": _relative(location, dataset),
        "flow_info": _relative(location, infoset),
        "flow_attributes": _relative(location, attribset),
        **fields,
    }
    write_bytes_atomic(location, jsoncodec.dumps(doc, indent=1).encode("utf-8"))
    return location
