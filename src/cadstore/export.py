"""Exporting an item into a JSON store: every key, the metadata and the schema.

Every top-level key of the item (an ``OptStorage`` item or another JSON store) is loaded
and saved into a :class:`~cadstore.storage.JsonStorageHandler`, followed by the metadata
and the schema. The JSON store records its own ``file_sizes_KB`` (the sizes of its JSON
files), so the item's are not copied.

JSON text is a costly form for arrays: ``json`` turns every number into a Python object
and then into text, about 150 bytes of memory per element, all of a key at once. An
export therefore refuses a key whose JSON would take more than ``max_json_bytes`` (see
:data:`MAX_JSON_BYTES`), rather than letting a small file that declares big arrays (or a big
item) take the machine's memory: a JSON store is for reading small items by eye, not for
bulk data.

The store is assembled in a temporary directory next to the destination and moved into
place when complete (:func:`cadstore.io.publish.move_into_place`), so a failed export
leaves the destination as it was. A store replaced (``overwrite``) is swapped for the new
one in one step where the file system can (Linux's ``renameat2``), else set aside by one
rename and the new one renamed in by another: an export killed between the two leaves no
store at the destination and both whole beside it, and the next export to that
destination puts the new one in place (:func:`cadstore.io.publish.recover_interrupted_move`).
A destination that is a link to a store is kept, and the folder it leads to replaced so,
as a whole (the new store is assembled beside that folder). Only an export run from
inside the folder it replaces (``-o .``) replaces its files one by one, keeping the
folder the shell stands in, and so does one through a link to a folder whose parent may
not be written (the new store assembled beside the link, else inside the folder, and its
files copied in; a failure midway leaves a mix, and the error names where the new
version is kept whole). A non-empty destination is refused unless
``overwrite``, and even then only when everything in it is a JSON store's file: nothing
else is ever deleted. A step the file system refuses (a folder that may not be written, a
name too long, a rename that fails, a write of the new store on a full disk) raises a
:class:`~cadstore.errors.StorageError` naming the destination and the step, not the
system's bare ``OSError`` or a temporary file; a name too long is refused before any key
is written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cadstore.artefacts import Artefact
from cadstore.errors import (
    CadstoreError,
    LimitExceededError,
    OutputExistsError,
    StorageError,
    UnknownFormatError,
    os_storage_error,
)
from cadstore.io.location import resolve
from cadstore.io.publish import (
    TEMP_PREFIX,
    check_output_folder,
    local_stat,
    move_into_place,
    recover_interrupted_move,
    set_aside_name,
    staging_name,
    sweep_dead_temporaries,
    temporary_name,
)
from cadstore.progress import progress
from cadstore.storage import JsonStorageHandler
from cadstore.storage.base import SIZES_METADATA_KEY
from cadstore.storage.convert import copy_storage
from cadstore.storage.json_handler import METADATA_FILE
from cadstore.tree import leaf_dtype_shape

__all__ = ["MAX_JSON_BYTES", "Export", "export_json", "json_cost"]

#: Default bound on the memory one exported key may take while it is turned into JSON
#: (estimated with :func:`json_cost`): about 800,000 numbers.
MAX_JSON_BYTES = 128 * 1024**2
# Memory per number of an array being written as JSON: its Python object, its place in the
# nested lists and its text (measured on float64 arrays, the costliest).
_JSON_BYTES_PER_NUMBER = 160
# Memory per string: the objects around it, then up to six bytes of text per character
# (\uXXXX escapes), held as text and as bytes.
_JSON_BYTES_PER_STRING = 100
_JSON_BYTES_PER_CHARACTER = 14
# What the staging folders of an export end with (see cadstore.io.publish.staging_name).
_STAGING_SUFFIX = "-export"


@dataclass
class Export:
    """What an export wrote.

    Attributes
    ----------
    output
        The JSON store directory.
    keys
        One entry per top-level key: ``key``, ``type``, ``dtype``, ``shape``, ``file``,
        ``bytes``.
    metadata_fields
        Top-level metadata fields copied.
    schema
        Whether a schema was copied.
    files
        Names of the files in the store.
    """

    output: str
    keys: list[dict[str, Any]] = field(default_factory=list)
    metadata_fields: list[str] = field(default_factory=list)
    schema: bool = False
    files: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Size of every file written."""
        return sum(
            os.path.getsize(os.path.join(self.output, name))
            for name in self.files
            if os.path.isfile(os.path.join(self.output, name))
        )


def _store_files(directory: str) -> list[str]:
    """Return the entries of ``directory`` if all belong to a JSON store, else refuse.

    A JSON store's files are its ``metadata.json``, one envelope per key (``{"key": ...,
    "value": ...}``, as :class:`~cadstore.storage.JsonStorageHandler` writes them) and
    the temporary files of interrupted writes. Any other file, a ``.json`` file of the
    user's own (``package.json``) included, is not ours to delete. An entry the file
    system fails to look up (an EIO) is the :class:`~cadstore.errors.StorageError` naming
    it (:func:`~cadstore.io.publish.local_stat`), not a file of the user's.
    """
    entries = sorted(os.listdir(directory))
    if METADATA_FILE not in entries:
        raise OutputExistsError(
            f"{directory} holds no JSON store (no {METADATA_FILE}); refusing to overwrite "
            "its files (choose an empty or new directory)"
        )
    for name in entries:
        full = os.path.join(directory, name)
        there = local_stat(
            full, "looking up what the store to replace holds", follow_symlinks=False
        )
        if there is None or not stat.S_ISREG(there.st_mode) or not _is_store_file(full, name):
            raise OutputExistsError(
                f"{directory} holds {name!r}, which is not a JSON store file; refusing to "
                "overwrite it (choose an empty or new directory)"
            )
    # A store's metadata.json records the size of every key it holds: a metadata.json
    # of the user's own alone is not a store.
    with open(os.path.join(directory, METADATA_FILE), "rb") as fh:
        document = json.load(fh)
    if SIZES_METADATA_KEY not in document:
        raise OutputExistsError(
            f"{directory} holds a {METADATA_FILE} that is not a JSON store's (no "
            f"{SIZES_METADATA_KEY}; a store of metadata alone has none either, so it "
            "cannot be told from a file of your own); refusing to overwrite it (choose an "
            "empty or new directory, or remove this one first)"
        )
    return entries


def _is_store_file(path: str, name: str) -> bool:
    """Whether the regular file ``path`` is one a JSON store writes."""
    if name.startswith(TEMP_PREFIX):
        return True
    if not name.endswith(".json"):
        return False
    try:
        with open(path, "rb") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return False
    if name == METADATA_FILE:
        return isinstance(doc, dict)
    return isinstance(doc, dict) and set(doc) == {"key", "value"}


@contextlib.contextmanager
def _step(output: str, doing: str) -> Iterator[None]:
    """Report an ``OSError`` of a step of an export to ``output`` as a ``StorageError``.

    The system's error names whatever path the failing call was given (a temporary
    folder, a rename's two paths) or none; a caller of :func:`export_json` wants the
    destination it asked for and what was being done to it
    (:func:`~cadstore.errors.os_storage_error`, which keeps the kind: a refused step is
    still a ``PermissionError``). cadstore's own errors pass through unchanged.

    Parameters
    ----------
    output
        The destination, as the caller gave it.
    doing
        What the step does, for the message (``"making the folder it goes in"``).

    Raises
    ------
    StorageError
        For an ``OSError`` of the step, naming ``output`` and ``doing``.
    """
    try:
        yield
    except CadstoreError:
        raise
    except OSError as exc:
        raise os_storage_error(output, exc, doing) from exc


def _check_output(output: str, overwrite: bool, target: Artefact) -> list[str]:
    """Return the files to replace in ``output`` (none if it is new or empty).

    What is there is looked up with :func:`~cadstore.io.publish.local_stat`: a path the
    file system fails to look up (an EIO) is the ``StorageError`` naming it, not a
    missing destination.
    """
    there = local_stat(output, "looking it up", follow_symlinks=False)
    if there is not None and stat.S_ISLNK(there.st_mode):
        there = local_stat(output, "looking up the folder it links to")
        if there is None:  # a link to nothing
            raise OutputExistsError(f"-o {output}: exists and is not a directory")
    if there is not None and not stat.S_ISDIR(there.st_mode):
        raise OutputExistsError(f"-o {output}: exists and is not a directory")
    if there is not None:
        if os.path.realpath(output) == os.path.realpath(target.location.path):
            raise UnknownFormatError(
                f"-o {output} is {target.path} itself; choose another directory"
            )
        if os.listdir(output):
            if overwrite:
                return _store_files(output)
            try:
                _store_files(output)
            except OutputExistsError as exc:
                # Not a JSON store: --overwrite would refuse it too, so it is not offered.
                raise OutputExistsError(f"-o {output} is not empty: {exc}") from None
            raise OutputExistsError.suggesting(
                f"-o {output} is not empty (choose an empty or new directory)",
                ("overwrite", "replace the JSON store there"),
            )
    return []


def _check_name(destination: str, parent: str) -> None:
    """Refuse a ``destination`` whose name is too long for the file system of ``parent``.

    The new store is staged under a temporary name of a fixed length, so a name too long
    (``ENAMETOOLONG``) would only fail its final rename, after every key was written.

    Raises
    ------
    OSError
        ``ENAMETOOLONG``, naming ``destination``; for the caller to report.
    """
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):  # a file system that does not say: the rename will
        return
    if 0 < limit < len(os.fsencode(os.path.basename(destination))):
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), destination)


#: What a folder answers when it may not be written.
_REFUSED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def _make_staging(output: str, where: str) -> str:
    """Make the staging folder of the new store for ``output``; return its path.

    It is made beside ``where`` (the destination, or the folder a link leads to), so that
    :func:`~cadstore.io.publish.move_into_place` replaces that folder as a whole. A link
    whose folder's parent may not be written (``~/out`` leading to
    ``/shared/team/store``) has it made beside the link, else inside that folder; the
    folder's files are then replaced one by one.

    Raises
    ------
    OSError
        The refusal of the place beside ``where``, when no other place serves either.
    """
    scratch = staging_name(where, _STAGING_SUFFIX)
    try:
        os.mkdir(scratch)
        return scratch
    except OSError as exc:
        if where == output or exc.errno not in _REFUSED:
            raise
        refused = exc
    for elsewhere in (
        staging_name(output, _STAGING_SUFFIX),
        temporary_name(where, _STAGING_SUFFIX),
    ):
        try:
            os.mkdir(elsewhere)
            return elsewhere
        except OSError as exc:
            if exc.errno not in _REFUSED:
                raise
    raise refused


def _in_staging(exc: StorageError, scratch: str) -> bool:
    """Whether ``exc`` names a file of the staging folder ``scratch``.

    A write of the new store that fails (a full disk) names a temporary file of the
    staging folder, which is removed by the time the caller reads it: such an error is
    re-named for the destination (:func:`_named_for`). Any other ``StorageError`` (the
    item that cannot be read, a key too big) is reported as it is.
    """
    inside = os.path.abspath(scratch) + os.sep
    return (os.path.abspath(exc.path) + os.sep).startswith(inside)


def _named_for(output: str, exc: StorageError) -> StorageError:
    """``exc``, of a write into the staging folder, naming ``output`` and the step, of
    its kind and ``errno``."""
    renamed = type(exc)(output, f"writing the new store: {exc.problem}")
    renamed.errno, renamed.strerror = exc.errno, exc.strerror
    return renamed


def json_cost(value: Any) -> int:
    """Estimate the memory turning ``value`` (a loaded node) into JSON text takes at once.

    Numbers cost about 160 bytes each (a Python object, a list slot and their text) and
    strings 100 bytes plus 14 per character; an upper estimate, so that what passes fits.
    """
    if isinstance(value, dict):
        return sum(json_cost(v) for v in value.values())
    if isinstance(value, str):
        return _JSON_BYTES_PER_STRING + _JSON_BYTES_PER_CHARACTER * len(value)
    if isinstance(value, list):
        return sum(json_cost(v) for v in value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return sum(json_cost(str(v)) for v in value.ravel().tolist())
    if isinstance(value, np.ndarray):
        return _JSON_BYTES_PER_NUMBER * int(value.size)
    return _JSON_BYTES_PER_NUMBER


def _describe(value: Any) -> tuple[str, str | None, list[int] | None]:
    if isinstance(value, dict):
        return "group", None, None
    dtype, shape = leaf_dtype_shape(value)
    return "array", dtype, list(shape)


def _copy(target: Artefact, scratch: str, max_json_bytes: int) -> Export:
    source = target.require_storage("export-json")
    result = Export(scratch)
    destination = JsonStorageHandler(scratch)

    def check(key: str, value: Any) -> None:
        cost = json_cost(value)
        if cost > max_json_bytes:
            raise LimitExceededError(
                target.location.path,
                f"key {key!r} would take about {cost} bytes of memory as JSON, more than "
                f"export-json's max_json_bytes={max_json_bytes}; a JSON store is for "
                "small items (read this one with cadstore.OptStorage, or pass a larger "
                "max_json_bytes to cadstore.export.export_json)",
            )

    def saved(key: str, value: Any) -> None:
        kind, dtype, shape = _describe(value)
        file = destination.get_file_path(key)
        result.keys.append(
            {
                "key": key,
                "type": kind,
                "dtype": dtype,
                "shape": shape,
                "file": os.path.basename(file),
                "bytes": os.path.getsize(file) if os.path.isfile(file) else None,
            }
        )

    try:
        keys = source.get_keys()
        copied = copy_storage(
            source,
            destination,
            keys=progress(keys, total=len(keys), desc="exporting", unit="key"),
            check=check,
            saved=saved,
        )
    finally:
        destination.close()
    result.schema = copied.schema
    result.metadata_fields = copied.metadata_fields
    return result


def export_json(
    target: Artefact,
    output: str,
    *,
    overwrite: bool = False,
    max_json_bytes: int = MAX_JSON_BYTES,
) -> Export:
    """Copy an item or JSON store into a JSON store at ``output``.

    Parameters
    ----------
    target
        From :func:`~cadstore.artefacts.open_artefact`; not a dataset.
    output
        The JSON store directory.
    overwrite
        Replace the JSON store already in ``output``.
    max_json_bytes
        The most memory one key may take while it is written as JSON (see
        :func:`json_cost`); a bigger key is refused before it is written.

    Returns
    -------
    Export
        What was written.

    Raises
    ------
    UnknownFormatError
        If ``target`` is a dataset, or ``output`` is ``target`` itself or a URL.
    OutputExistsError
        If ``output`` is a file, or is non-empty without ``overwrite``, or holds files that
        are not a JSON store's, or lies below a file (``notes.txt/x``).
    LimitExceededError
        If a key is too big for JSON (``max_json_bytes``), or the item declares more than
        its decode budget (see :mod:`cadstore.format.limits`); nothing is written then.
    StorageError
        If the file system refuses a step (a folder that may not be written, a name too
        long, a rename, a write of the new store): naming ``output`` and the step, of
        the failure's kind (:func:`~cadstore.errors.os_storage_error`: a refused step is
        a :class:`~cadstore.errors.StorageAccessError`); a file of the store to replace
        that cannot be looked up is named itself. A step failing before the new store is
        in place leaves the destination (through a link, the folder it leads to) as it
        was, and no temporary of this export beside it, with two exceptions: an old
        store set aside that cannot be put back (the message says where both versions
        are, and the next export puts the new one in place), and an export run inside the
        folder it replaces, or through a link to a folder whose parent may not be
        written, whose files are replaced one by one (a failure midway names the link,
        the folder and the temporary folder keeping the new version whole).
    """
    target.require_storage("export-json")
    output = output.rstrip("/") or output
    if resolve(output).remote:
        # The store is built beside the destination and moved into place in one rename;
        # object stores have no rename, so the output stays local (the input may be a URL).
        raise UnknownFormatError(
            f"-o {output}: export-json writes a local directory; export there and upload it"
        )
    # notes.txt/x: the folders are made below, and one cannot be made where a file is.
    check_output_folder(resolve(output))
    # A link to a folder is kept and the folder it leads to replaced as a whole
    # (move_into_place): the new store is staged beside that folder, and a recovery looks
    # for what a killed export left there.
    where = output
    there = local_stat(output, "looking it up", follow_symlinks=False)
    if there is not None and stat.S_ISLNK(there.st_mode):
        where = os.path.realpath(output)
    # An export killed between the two renames of a replacement (file systems that cannot
    # swap two folders) left no store at output, and both whole beside it.
    with _step(output, "putting in place the store an interrupted export left beside it"):
        recover_interrupted_move(where, _STAGING_SUFFIX)
    if where != output:
        # What an export staged elsewhere, when the folder's parent may not be written
        # (_make_staging), and its process is gone.
        sweep_dead_temporaries(resolve(os.path.dirname(os.path.abspath(output))))
        if os.path.isdir(where):
            sweep_dead_temporaries(resolve(where))
    with _step(output, "reading what is there"):
        replaced = _check_output(output, overwrite, target)
    parent = os.path.dirname(os.path.abspath(where))
    with _step(output, "making the folder it goes in"):
        os.makedirs(parent, exist_ok=True)
    with _step(output, "checking its name"):
        _check_name(where, parent)
    # Built beside the destination, so the final move stays on one file system; named
    # as every temporary, so that what a killed export leaves is swept (as here).
    sweep_dead_temporaries(resolve(parent))
    with _step(output, "making the temporary folder of the new store beside it"):
        scratch = _make_staging(output, where)
    try:
        try:
            result = _copy(target, scratch, max_json_bytes)
        except StorageError as exc:
            if not _in_staging(exc, scratch):
                raise
            # Raised unbound: a local naming the error would make a cycle through its
            # traceback (this frame), keeping every frame of the failed copy (the values
            # it decoded) until the collector runs.
            raise _named_for(output, exc) from (exc.__cause__ or exc)
        # move_into_place leaves the old store in place when a rename fails (and says
        # where both versions are, as a StorageError, when it cannot put it back).
        with _step(output, "moving the new store into place"):
            move_into_place(scratch, output, replaced)
    except BaseException as exc:
        # Kept when it is the only whole copy of the new version: the old one set aside
        # and not put back, or the folder partly replaced (move_into_place says so).
        kept = os.path.lexists(set_aside_name(scratch)) or (
            isinstance(exc, OSError) and exc.filename2 == scratch
        )
        if not kept:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    result.output = output
    with _step(output, "listing the new store"):
        result.files = sorted(os.listdir(output))
    return result
