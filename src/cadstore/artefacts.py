"""Opening any cadstore artefact by what it is: :func:`open_artefact` (``cadstore.open``).

A user hands over a path and wants to look inside, whatever it is: an item (a ``.data``
file, its store path without ``.data``, or an uncompressed item directory), a merged
dataset (a ``.dataset`` zip or directory), a JSON store directory, or a ``.flow`` manifest
(which stands for the dataset it names), on local disk or at a URL. The kind is found the
way xarray's ``guess_engine`` picks a backend, from what is there: a zip or a directory,
then its root document (a dataset carries the ``cadstore-dataset/`` marker), and the
matching reader opens it, read-only, as an :class:`Artefact`.

The command line (``inspect``, ``cat``, ``validate``, ``schema``, ``export-json``) is built
on it; so can any program that receives paths it did not make.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from cadstore.errors import (
    CorruptStoreError,
    SchemaError,
    StorageError,
    StorageNotFoundError,
    UnknownFormatError,
    os_storage_error,
)
from cadstore.format.hierarchy import ReadHierarchy
from cadstore.format.jsoncodec import load_document
from cadstore.format.layout import DATASET_FORMAT, dataset_marker
from cadstore.format.limits import DEFAULT_LIMITS
from cadstore.format.manifest import FLOW_FORMAT, folder_hint, read_manifest
from cadstore.io.location import Location, resolve
from cadstore.io.publish import local_stat
from cadstore.io.sources import KeySource, open_source
from cadstore.storage.base import SCHEMA_METADATA_KEY

if TYPE_CHECKING:
    from cadstore.schema import Schema
    from cadstore.storage.base import NodeStorage

__all__ = ["DATASET", "EXPECTED", "ITEM", "JSON_STORE", "Artefact", "Kind", "open_artefact"]

Kind = Literal["item", "dataset", "json"]
ITEM: Kind = "item"
DATASET: Kind = "dataset"
JSON_STORE: Kind = "json"

#: What a path may be, for error messages.
EXPECTED = "an item (.data file or item directory), a dataset (.dataset) or a JSON store directory"


@dataclass
class Artefact:
    """An artefact cadstore reads, opened read-only.

    Attributes
    ----------
    kind
        ``"item"``, ``"dataset"`` or ``"json"``.
    path
        The path as the user gave it.
    location
        What was actually opened (the ``.data`` file of an item given by its store path,
        the dataset a ``.flow`` manifest names, ...).
    storage
        The item's ``OptStorage`` or the ``JsonStorageHandler``; ``None`` for a dataset.
    hierarchy
        The Zarr hierarchy of an item or dataset; ``None`` for a JSON store.
    source
        The key source under ``hierarchy``.
    """

    kind: Kind
    path: str
    location: Location
    storage: NodeStorage | None = None
    hierarchy: ReadHierarchy | None = None
    source: KeySource | None = None
    _dataset_metadata: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """What it is, in words (``"item"``, ``"dataset"``, ``"JSON store"``)."""
        return "JSON store" if self.kind == JSON_STORE else self.kind

    @property
    def a_label(self) -> str:
        """:attr:`label` with its article (``"an item"``, ``"a dataset"``)."""
        return f"an {self.label}" if self.kind == ITEM else f"a {self.label}"

    def require_storage(self, purpose: str) -> NodeStorage:
        """Return the storage of an item or JSON store.

        Parameters
        ----------
        purpose
            What needs it (a command name), for the message.

        Raises
        ------
        UnknownFormatError
            If the artefact is a dataset.
        """
        if self.storage is None:
            raise UnknownFormatError(
                f"{purpose} takes an item or a JSON store; {self.path} is {self.a_label}"
            )
        return self.storage

    def dataset_metadata(self) -> dict[str, Any]:
        """Return a dataset's ``metadata.json`` (``{}`` when it has none).

        Raises
        ------
        CorruptStoreError
            Naming the dataset and ``metadata.json``, if it is not a JSON object nested at
            most :data:`~cadstore.format.jsoncodec.MAX_NESTING` levels, or if its name was
            damaged (:meth:`~cadstore.format.hierarchy.ReadHierarchy.read_document`).
        """
        if self._dataset_metadata is None:
            hierarchy = self.hierarchy
            raw = hierarchy.read_document("metadata.json") if hierarchy is not None else None
            # The same checks as DatasetReader: an object, bounded in size and depth.
            self._dataset_metadata = (
                load_document(
                    raw,
                    path=self.location.path,
                    member="metadata.json",
                    max_bytes=DEFAULT_LIMITS.max_metadata_bytes,
                )
                if raw
                else {}
            )
        return self._dataset_metadata

    def metadata(self) -> dict[str, Any]:
        """Return the metadata document: the item's, or the dataset's ``metadata.json``."""
        if self.storage is not None:
            doc = self.storage.load_metadata()
            return doc if isinstance(doc, dict) else {}
        return dict(self.dataset_metadata())

    def schema(self) -> Schema | None:
        """Return the schema stored with the artefact, or ``None``."""
        if self.storage is not None:
            return self.storage.schema
        stored = self.dataset_metadata().get(SCHEMA_METADATA_KEY)
        if not isinstance(stored, Mapping) or not stored:
            return None
        from cadstore.schema import Schema

        try:
            return Schema.from_any(stored)
        except SchemaError:
            # A damaged schema must not stop a user from looking at the data.
            return None

    def close(self) -> None:
        """Release the open files. Idempotent."""
        try:
            if self.storage is not None:
                self.storage.close()
        finally:
            if self.source is not None:
                self.source.close()
                self.source = None

    def __enter__(self) -> Artefact:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _not_an_artefact(path: str, why: str) -> UnknownFormatError:
    return UnknownFormatError(f"{path} is not {EXPECTED}: {why}")


def open_artefact(
    path: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    trust_manifest: bool = False,
) -> Artefact:
    """Open ``path`` read-only, whatever kind of artefact it is.

    Parameters
    ----------
    path
        An item ``.data`` file, an item's store path without ``.data``, an uncompressed
        item directory, a ``.dataset`` zip or directory, a JSON store directory, or a
        ``.flow`` manifest (which opens the dataset it names); local or a URL.
    storage_options
        fsspec options for a URL (ignored for a local path).
    trust_manifest
        Follow the paths a ``.flow`` manifest lists outside its own folder (see
        :mod:`cadstore.format.manifest`).

    Returns
    -------
    Artefact
        Close it (or use it as a context manager) when done.

    Raises
    ------
    StorageNotFoundError
        If nothing is at ``path``.
    StorageError
        If the file system fails to say what is at ``path`` (an EIO), naming it.
    UnknownFormatError
        If ``path`` is none of the above; the message names it and says what was expected.
    CorruptStoreError
        If it is a store of a known kind that cannot be read.
    """
    given = os.fspath(path)
    # "dir/" and "dir" are the same store; a bare "/" must stay as it is.
    where = resolve(given.rstrip("/") or given, storage_options, shared=True)
    if where.isfile():
        if where.path.endswith(".flow"):
            return _open_manifest(given, where, trust_manifest)
        return _open_zip(given, where)
    published = where.with_suffix(".data")
    if published.isfile():
        # The item's store path, as OptStorage takes it.
        return _open_zip(given, published)
    if where.isdir():
        return _open_directory(given, where)
    # isfile and isdir say False when the disk fails to answer (an EIO): that is the
    # StorageError naming the path, not "no such file"; a dangling link is something.
    if not where.remote and any(
        local_stat(where.path, "reading it", follow_symlinks=follow) is not None
        for follow in (True, False)
    ):
        raise _not_an_artefact(given, "neither a regular file nor a directory")
    nothing = "no such object or prefix" if where.remote else "no such file or directory"
    raise StorageNotFoundError(given, f"{nothing}; expected {EXPECTED}")


def _open_zip(given: str, where: Location) -> Artefact:
    try:
        source = open_source(where, kind="zip")
    except CorruptStoreError as exc:
        raise _not_an_artefact(given, exc.problem) from exc
    return _open_hierarchy(given, where, source, is_zip=True)


def _open_directory(given: str, where: Location) -> Artefact:
    from cadstore.storage.json_handler import is_zarr_hierarchy

    names = set(where.listdir())
    try:
        # A zarr.json may be a JSON store's file of key "zarr", not a Zarr store's root:
        # the rule is cadstore repair's (is_zarr_hierarchy), read once here.
        zarr = bool(names & {".zgroup", ".zmetadata"}) or (
            "zarr.json" in names and is_zarr_hierarchy(where, names)
        )
    except StorageError:
        raise
    except OSError as exc:
        raise os_storage_error(where.child("zarr.json").path, exc, "reading it") from exc
    if zarr:
        return _open_hierarchy(given, where, open_source(where, kind="directory"), is_zip=False)
    if "metadata.json" not in names and any(n.endswith(".flow") for n in names):
        # Its JSON files (error_summary.json) would read as a JSON store of foreign keys.
        raise _not_an_artefact(given, folder_hint(where))
    if any(n.endswith(".json") for n in names):
        from cadstore.storage import JsonStorageHandler

        if not where.remote:
            check_json_files(where, names)
        storage = JsonStorageHandler(where, read_only=True)
        return Artefact(JSON_STORE, given, where, storage=storage)
    raise _no_artefact_in(given, where, names)


def _no_artefact_in(given: str, where: Location, names: set[str]) -> UnknownFormatError:
    """The error for a directory that is none of the artefacts: say what is (not) in it.

    An empty folder (``cadstore inspect .`` in a new one) is called empty; a folder of
    items or datasets names them, since one of them is what was meant.
    """
    shown = given
    if not where.remote and os.path.abspath(where.path) == os.getcwd():
        shown = f"{given} (the current directory)"
    if not names:
        return UnknownFormatError(
            f"{shown} is an empty directory: it holds no cadstore item, dataset or JSON store"
        )
    items = sorted(n for n in names if n.endswith(".data"))
    datasets = sorted(n for n in names if n.endswith(".dataset"))
    if datasets:
        listed = " and ".join(where.child(n).path for n in datasets[:2])
        more = f" (and {len(datasets) - 2} more)" if len(datasets) > 2 else ""
        noun = "the dataset" if len(datasets) == 1 else "the datasets"
        return UnknownFormatError(
            f"{shown} is a folder holding {noun} {listed}{more}, not {EXPECTED}: give "
            f"{'it' if len(datasets) == 1 else 'one of them'}"
        )
    if items:
        count = "1 item (a .data file)" if len(items) == 1 else f"{len(items)} items (.data files)"
        return UnknownFormatError(
            f"{shown} is a folder holding {count}, not {EXPECTED}: give one of them, "
            f"e.g. {where.child(items[0]).path}, or merge them into a dataset first"
        )
    return _not_an_artefact(
        shown,
        "it holds no cadstore item, dataset or JSON store (no .data file, .dataset, "
        "zarr.json, .zgroup or .json file)",
    )


def check_json_files(where: Location, names: set[str]) -> None:
    """Refuse a local JSON store whose ``.json`` entries (``names``: those of its folder)
    are not all regular files, before it is opened (here, and by ``cadstore repair``).

    The store reads every one of them when opened: a named pipe there would block it
    forever, a device feed it forever.

    Raises
    ------
    CorruptStoreError
        Naming the store and the first such entry.
    """
    for name in sorted(n for n in names if n.endswith(".json")):
        try:
            mode = os.stat(os.path.join(where.path, name)).st_mode
        except OSError:
            continue  # gone meanwhile, or a dangling link: the store reports it
        if not stat.S_ISREG(mode):
            raise CorruptStoreError(
                where.path,
                f"{name!r} is not a regular file, so not a JSON store file; not reading it",
            )


def _open_hierarchy(given: str, where: Location, source: KeySource, *, is_zip: bool) -> Artefact:
    try:
        try:
            hierarchy = ReadHierarchy(source)
        except CorruptStoreError as exc:
            raise _not_an_artefact(given, exc.problem) from exc
        marker = dataset_marker(hierarchy.group_attributes.get(""))
        if marker is not None:
            if marker != DATASET_FORMAT:
                raise UnknownFormatError(
                    f"{given} is a dataset of format {marker!r}; this cadstore reads "
                    f"{DATASET_FORMAT!r}"
                )
            hierarchy.item_layouts = False  # see ReadHierarchy: no item triangles here
            hierarchy.complete = True  # the merger stores every chunk holding values
            return Artefact(DATASET, given, where, hierarchy=hierarchy, source=source)
        if not is_zip and where.with_suffix(".data").isfile():
            # OptStorage reads a published .data in preference to the directory next to
            # it; show the same file, so the tree and the values agree.
            source.close()
            return _open_zip(given, where.with_suffix(".data"))
        storage = _open_item(given, where, is_zip=is_zip)
        return Artefact(ITEM, given, where, storage=storage, hierarchy=hierarchy, source=source)
    except BaseException:
        source.close()
        raise


def _open_item(given: str, where: Location, *, is_zip: bool) -> NodeStorage:
    from cadstore.storage.opt import OptStorage

    if not is_zip:
        return OptStorage(where, mode="r", summary_dir=False)
    stem, extension = os.path.splitext(where.path)
    if not extension or "/" in extension:
        raise _not_an_artefact(
            given, "an item file needs an extension (such as .data) after its store path"
        )
    return OptStorage(where.with_path(stem), extension, mode="r", summary_dir=False)


def _open_manifest(given: str, where: Location, trust: bool) -> Artefact:
    try:
        manifest = read_manifest(where, trust_paths=trust)
    except CorruptStoreError as exc:
        raise _not_an_artefact(given, f"the .flow manifest is unusable ({exc.problem})") from exc
    if not manifest.is_cadstore:
        raise _not_an_artefact(given, f"not a {FLOW_FORMAT!r} manifest")
    artefact = open_artefact(manifest.dataset.path, manifest.dataset.storage_options)
    if artefact.kind != DATASET:
        artefact.close()
        raise UnknownFormatError(
            f"manifest {given} lists {manifest.document.get('flow_data')!r}, which is "
            f"{artefact.a_label}"
        )
    artefact.path = given
    return artefact
