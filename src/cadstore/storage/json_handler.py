"""``JsonStorageHandler``: one human-readable JSON file per key, for debugging and export.

Layout of a storage directory::

    json_output/
    ├── face_areas.json        data saved under "face_areas"
    ├── graph.json             data saved under "graph" (a dict, kept in one file)
    ├── face_normals.json      data saved under "face/normals" (sanitised name)
    ├── metadata.data.json     data saved under "metadata" (see below)
    └── metadata.json          the storage's own metadata

Each data file is a small self-describing envelope, so that dtypes, shapes, NaN and
complex values survive the round trip (see :mod:`cadstore.format.jsoncodec`)::

    {"key": "face_areas",
     "value": {"__numpy__": "<f4", "shape": [3], "data": [1.5, 2.3, 4.1]}}

File names are the key with every character other than ``A-Z a-z 0-9 _ -`` replaced by
``_``. Two keys that sanitise to the same name are refused with a
:class:`~cadstore.errors.KeyConflictError` instead of silently sharing a file. Because
sanitised names never contain a dot, the data key ``metadata`` is stored as
``metadata.data.json`` and can never collide with the storage's ``metadata.json``.

Plain JSON files written by other tools (no envelope) are read too: their key is the file
stem, lists of numbers load as arrays.

Saving a key writes its file, then removes the files of the keys below it; a writer
killed in between leaves them (leftovers) behind the newer file. They are never read, and
opening a storage removes nothing, writable or not: the first change that writes or
removes the newer file (a save or delete at or inside its key, or above it) removes them.
A store that is never changed again keeps them: :meth:`JsonStorageHandler.repair` removes
them (and writes the sizes corrected below), for a user who wants the store clean
(``cadstore repair FOLDER`` calls it).

Every file is written atomically (temporary file, fsync, rename). Each is read with one
request on an object store (no size query first) unless it is larger than a few MiB; a
file over :data:`MAX_JSON_BYTES` is refused, and never read past one byte beyond it
(locally, not read at all).

``metadata.json`` records the size of each key's file (``file_sizes_KB``), written after
the file: the number of bytes written, with no size query. Saving a key into a dict file
(or deleting one from it) rewrites the file, and the size recorded for each key the file
holds becomes the file's new size (a delete writes ``metadata.json`` once, before the
file). A writer killed between writing a file and ``metadata.json`` left it claiming the
old size, or none.
The sizes are therefore checked against the files when the storage reads its metadata
(with no size query: each file is read whole at open, which gives its size): each size
recorded for a key held in a file is that file's size, and each key saved to a file has
one. Sizes recorded for keys with no file are left as they are (they may be the user's
own metadata). The corrected sizes are what the storage reports; opening it writes
nothing, writable or not. A writable storage writes them with the next ``metadata.json``
it writes for a change of the user's (``save_data``, ``save_metadata``, ``set_schema``,
a ``delete_data`` that drops a size): an open, or an open and a close, with no change
leaves ``metadata.json`` as it was, so that it never replaces a newer one another writer
published meanwhile. The next storage to open it finds the same sizes to correct, until
a change or :meth:`JsonStorageHandler.repair` writes them.

``json_dir_path`` may be a URL such as ``s3://bucket/debug/part_001`` (see
:func:`cadstore.io.resolve`): each file is then an object under that prefix,
published with a single upload. An object store has no empty directories, so a storage
without files cannot be opened read-only there.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Collection, Iterator
from typing import Any

import numpy as np

from cadstore.errors import (
    CadstoreWarning,
    CorruptStoreError,
    KeyConflictError,
    ReadOnlyStorageError,
)
from cadstore.format import jsoncodec
from cadstore.io.location import Location, resolve
from cadstore.io.publish import TEMP_PREFIX, write_bytes_atomic
from cadstore.storage.base import (
    SIZES_METADATA_KEY,
    NodeKind,
    NodeStorage,
    is_size,
    is_size_section,
    set_nested_size,
    size_in_kb,
    sizes_section,
)
from cadstore.storage.values import Node

__all__ = ["JsonStorageHandler", "is_json_store", "is_zarr_hierarchy", "sanitize_key"]

METADATA_FILE = "metadata.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
#: Largest JSON file the handler will parse, against memory exhaustion by hostile files.
MAX_JSON_BYTES = 256 * 1024 * 1024


def sanitize_key(key: str) -> str:
    """Return the file stem for ``key``: unsafe characters become ``_``."""
    return _UNSAFE.sub("_", key)


def _file_name(key: str) -> str:
    stem = sanitize_key(key)
    return f"{stem}.data.json" if stem == "metadata" else f"{stem}.json"


class JsonStorageHandler(NodeStorage):
    """Store each key as a JSON file in ``json_dir_path``.

    Parameters
    ----------
    json_dir_path
        The directory; created if missing. An existing directory is reopened with its data.
    read_only
        Refuse writes.
    storage_options
        Options for a URL ``json_dir_path``, passed to fsspec: for S3, e.g.
        ``{"key": ..., "secret": ..., "client_kwargs": {"endpoint_url": ...}}``. Without
        them, credentials and endpoint come from fsspec's configuration and the
        environment.

    Raises
    ------
    CorruptStoreError
        If a file in the directory claims to be a cadstore data file but cannot be parsed,
        if the path exists and is not a directory, or if the bucket of a URL does not
        exist.
    cadstore.errors.StorageAccessError
        If an object store refuses the credentials.
    cadstore.errors.StorageUnavailableError
        If an object store cannot be reached.
    """

    format_name = "json"
    # Every file is written when its key is saved: as specified, close() is a no-op and
    # the handler stays usable after it.
    close_is_final = False

    def __init__(
        self,
        json_dir_path: str | os.PathLike[str] | Location,
        *,
        read_only: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(read_only=read_only)
        self._location = resolve(json_dir_path, storage_options)
        self._fs, self._dir = self._location.fs, self._location.path
        if self._location.exists() and not self._location.isdir():
            raise CorruptStoreError(self._dir, "exists and is not a directory")
        if not read_only:
            self._location.makedirs()
        elif not self._location.isdir():
            raise CorruptStoreError(self._dir, "no such storage directory")
        # key -> (file name, whether the file holds a dict)
        self._index: dict[str, tuple[str, bool]] = {}
        # Names of plain JSON files of other tools (no envelope): not this storage's.
        self._foreign: set[str] = set()
        # key -> file name of each leftover: a file of a key below another stored file
        # (see _scan), unread, until a change at or above that file's key removes it.
        self._leftovers: dict[str, str] = {}
        # Bytes of each file as this storage last read it whole (the scan) or wrote it:
        # the sizes the check of the recorded sizes (see _true_sizes) and each save record,
        # with no size query (a HEAD request each on an object store). Dropped for a file
        # this storage removes.
        self._file_bytes: dict[str, int] = {}
        # File name -> the value read from it, during one change (see _each_file_read_once).
        self._read_values: dict[str, Node] | None = None
        # Whether the sizes read from metadata.json were corrected and not yet written.
        self._sizes_corrected = False
        self._scan()
        # Read on first use; the sizes a killed writer left are corrected then, in memory,
        # and written with the first change (see _true_sizes): opening writes nothing.
        self._open_metadata()

    @property
    def json_dir_path(self) -> str:
        """The storage directory."""
        return self._dir

    # ------------------------------------------------------------------ files
    def _path(self, name: str) -> str:
        return self._fs.join(self._dir, name)

    def _read_json(self, name: str, *, sizes: dict[str, int] | None = None) -> Any:
        """Parse the JSON file ``name``; record its size in ``sizes`` if given.

        One read (one request on an object store for a file of up to a few MiB), with no
        size query first; a file over :data:`MAX_JSON_BYTES` is refused, unread where its
        size is known first (see :meth:`~cadstore.io.filesystems.FileSystem.read_limited`).
        """
        path = self._path(name)
        data = self._fs.read_limited(path, MAX_JSON_BYTES)
        if data is None:
            raise CorruptStoreError(
                path,
                f"file exceeds the {MAX_JSON_BYTES} byte limit for JSON storage files",
            )
        if sizes is not None:
            sizes[name] = len(data)
        try:
            return jsoncodec.loads(data)
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            raise CorruptStoreError(path, f"not valid JSON: {exc}") from exc

    def _write_json(self, name: str, obj: Any) -> int:
        """Write ``obj`` to the file ``name``, atomically; return the bytes written."""
        return self._write_bytes(name, _json_bytes(obj))

    def _write_bytes(self, name: str, data: bytes) -> int:
        """Write ``data`` to the file ``name``, atomically; return the bytes written."""
        self._file_bytes.pop(name, None)  # unknown until the file is published
        if self._read_values is not None:
            self._read_values.pop(name, None)
        write_bytes_atomic(self._location.child(name), data)
        self._file_bytes[name] = len(data)
        return len(data)

    def _file_size(self, name: str) -> int:
        """The size of the file ``name``: as this storage last read or wrote it, else
        queried (see ``_file_bytes``).

        Raises
        ------
        FileNotFoundError
            If the size is not known and the file does not exist.
        """
        known = self._file_bytes.get(name)
        return self._fs.size(self._path(name)) if known is None else known

    def _scan(self) -> None:
        if not self._fs.isdir(self._dir):
            return
        foreign = self._foreign
        for name in sorted(self._fs.listdir(self._dir)):
            if not name.endswith(".json") or name == METADATA_FILE or name.startswith(TEMP_PREFIX):
                continue
            doc = self._read_json(name, sizes=self._file_bytes)
            if _is_envelope(doc):
                key = doc["key"]
                if not isinstance(key, str):
                    raise CorruptStoreError(self._path(name), "envelope 'key' is not a string")
                is_group = isinstance(doc["value"], dict) and not _is_tagged_leaf(doc["value"])
            else:
                # A plain JSON file from another tool: its stem is the key.
                key = name[: -len(".json")]
                is_group = isinstance(doc, dict) and not _is_tagged_leaf(doc)
                foreign.add(name)
            earlier = self._index.get(key)
            if earlier is not None:
                # Two files hold one key (a copy of a file made by hand, a file of another
                # tool): the one this storage writes the key to is the key's; any other
                # choice would read a value the storage never saved last.
                own = _file_name(key)
                if own not in (earlier[0], name):
                    raise CorruptStoreError(
                        self._path(name),
                        f"holds key {key!r}, as does {earlier[0]!r}, and neither is the key's "
                        f"own file ({own!r}); remove one of them",
                    )
                other = name if earlier[0] == own else earlier[0]
                warnings.warn(
                    f"{self._path(other)} holds key {key!r} too; read from {own!r}, the key's "
                    "own file",
                    CadstoreWarning,
                    stacklevel=4,
                )
                if earlier[0] == own:
                    continue
            self._index[key] = (name, is_group)
        # A file of a key below another stored key is a leftover: saving a key writes its
        # file, then removes those of the keys below it, and a writer killed in between
        # leaves them behind the key's own (newer) file. Read, they would give the old
        # values of keys the new one replaced; they are ignored. Opening removes nothing,
        # writable or not: a change that writes or removes the newer file removes them
        # (see _drop_leftovers). Only below a file this storage wrote: a plain JSON file
        # of another tool dropped in the folder says nothing of the keys saved there.
        stale = [
            key
            for key in self._index
            if (owner := self._file_ancestor(key)) is not None
            and self._index[owner][0] not in foreign
        ]
        for key in stale:
            self._leftovers[key] = self._index.pop(key)[0]

    def _drop_leftovers(self, key: str) -> None:
        """Remove the leftover files (see :meth:`_scan`) of the keys below ``key``.

        Called by a change that writes or removes the file of ``key``, or of a key above
        the leftovers' newer file: before a file that shadows them is removed, so that
        they never come back as the values of their keys.
        """
        prefix = key + "/"
        for below in [k for k in self._leftovers if k.startswith(prefix)]:
            self._remove(self._leftovers.pop(below))

    def _load_file_value(self, key: str) -> Node:
        name, _ = self._index[key]
        if self._read_values is not None and name in self._read_values:
            return self._read_values[name]
        doc = self._read_json(name)
        try:
            if _is_envelope(doc):
                value: Node = jsoncodec.decode(doc["value"])
            else:
                value = _decode_foreign(doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(self._path(name), f"cannot decode value: {exc}") from exc
        if self._read_values is not None:
            self._read_values[name] = value
        return value

    @contextlib.contextmanager
    def _each_file_read_once(self) -> Iterator[None]:
        """Hold the storage's lock, and read each file at most once until the end.

        A change of a key inside a dict file looks the file up (is the key there? is a
        key above it a group?) before rewriting it: without this, each look read the
        file again, one GET more on an object store. The value read is the one the
        change then edits and writes; a file written or removed is read again if needed.
        """
        with self._lock:
            if self._read_values is not None:  # already within a change
                yield
                return
            self._read_values = {}
            try:
                yield
            finally:
                self._read_values = None

    def save_data(self, data_key: str, data: Any) -> None:
        """Store ``data`` under ``data_key`` (see :meth:`NodeStorage.save_data`), reading
        the dict file it goes into once."""
        with self._each_file_read_once():
            super().save_data(data_key, data)

    def delete_data(self, data_key: str) -> None:
        """Remove ``data_key`` (see :meth:`NodeStorage.delete_data`), reading the dict
        file it is in once."""
        with self._each_file_read_once():
            super().delete_data(data_key)

    def _file_content(self, key: str, node: Node) -> tuple[str, bytes]:
        """The name and the bytes of the file that stores ``node`` at ``key``, unwritten.

        Raises
        ------
        KeyConflictError
            If another stored key's file has that name (the keys sanitise alike).
        """
        name = _file_name(key)
        owner = next((k for k, (n, _) in self._index.items() if n == name and k != key), None)
        if owner is not None:
            raise KeyConflictError(
                f"key {key!r} and the stored key {owner!r} both map to the file {name!r}; "
                "rename one of them"
            )
        return name, _json_bytes({"key": key, "value": jsoncodec.encode(node)})

    def _store_file(self, key: str, node: Node, content: tuple[str, bytes] | None = None) -> int:
        """Write ``node`` to the file of ``key``; return the bytes written.

        ``content`` is the file's name and bytes if :meth:`_file_content` already gave
        them (to size the file before it is written).
        """
        name, data = self._file_content(key, node) if content is None else content
        written = self._write_bytes(name, data)
        self._index[key] = (name, isinstance(node, dict))
        # A leftover of the same name (a key that sanitises alike) was just replaced.
        for left in [k for k, n in self._leftovers.items() if n == name]:
            del self._leftovers[left]
        return written

    def _remove(self, name: str) -> None:
        """Delete the file ``name`` of the storage's directory."""
        self._file_bytes.pop(name, None)
        if self._read_values is not None:
            self._read_values.pop(name, None)
        self._fs.remove(self._path(name))

    def _file_ancestor(self, key: str) -> str | None:
        """Return the stored key of a file holding a dict that contains ``key``."""
        parts = key.split("/")
        for i in range(len(parts) - 1, 0, -1):
            prefix = "/".join(parts[:i])
            if prefix in self._index:
                return prefix
        return None

    def _descendants(self, key: str) -> list[str]:
        prefix = key + "/"
        return [k for k in self._index if k.startswith(prefix)]

    # ------------------------------------------------------------------ primitives
    def _get_node(self, key: str) -> Node:
        if key in self._index:
            return self._load_file_value(key)
        owner = self._file_ancestor(key)
        if owner is not None:
            node: Node = self._load_file_value(owner)
            for part in key[len(owner) + 1 :].split("/"):
                if not isinstance(node, dict) or part not in node:
                    raise KeyError(key)
                node = node[part]
            return node
        children = self._descendants(key)
        if not children:
            raise KeyError(key)
        tree: dict[str, Any] = {}
        for child in sorted(children):
            parts = child[len(key) + 1 :].split("/")
            parent = tree
            for part in parts[:-1]:
                parent = parent.setdefault(part, {})
            parent[parts[-1]] = self._load_file_value(child)
        return tree

    def _put_node(self, key: str, node: Node) -> None:
        owner = self._file_ancestor(key)
        if owner is not None:
            # The key lives inside a dict saved earlier as one file: rewrite that file.
            value = self._load_file_value(owner)
            assert isinstance(value, dict)
            parent = value
            parts = key[len(owner) + 1 :].split("/")
            for part in parts[:-1]:
                parent = parent.setdefault(part, {})
            parent[parts[-1]] = node
            self._store_file(owner, value)
            self._drop_leftovers(owner)
            return
        stale = self._descendants(key)
        self._store_file(key, node)
        self._drop_leftovers(key)
        for child in stale:
            self._remove(self._index.pop(child)[0])

    def _delete_node(self, key: str) -> None:
        # First: the files that shadow the leftovers below the key may go next.
        owner = self._file_ancestor(key)
        self._drop_leftovers(key if owner is None else owner)
        if key in self._index:
            self._remove(self._index.pop(key)[0])
            for child in self._descendants(key):
                self._remove(self._index.pop(child)[0])
            return
        if owner is not None:
            value = self._load_file_value(owner)
            parent: Any = value
            parts = key[len(owner) + 1 :].split("/")
            for part in parts[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if not isinstance(parent, dict) or parts[-1] not in parent:
                raise KeyError(key)
            del parent[parts[-1]]
            content = self._file_content(owner, value)
            # One metadata.json, ahead of the file as for any delete: without the key's
            # size (dropped by delete_data, see _delete_writes_metadata) and with the
            # file's new size for its other entries. A writer killed before the file is
            # written leaves those sizes for the check on open to correct, and no size
            # for data that is gone.
            self._size_dict_file(owner, size_in_kb(len(content[1])))
            self._write_metadata_document(self._metadata)
            self._store_file(owner, value, content)
            return
        children = self._descendants(key)
        if not children:
            raise KeyError(key)
        for child in children:
            self._remove(self._index.pop(child)[0])

    def _delete_writes_metadata(self, key: str) -> bool:  # docstring inherited
        # A key inside a dict file: its deletion changes the sizes of the file's other
        # entries, written with the dropped one (see _delete_node).
        return key not in self._index and self._file_ancestor(key) is not None

    def _node_kind(self, key: str) -> NodeKind | None:
        if key in self._index:
            return "group" if self._index[key][1] else "leaf"
        owner = self._file_ancestor(key)
        if owner is not None:
            if not self._index[owner][1]:
                return None
            try:
                node = self._get_node(key)
            except KeyError:
                return None
            return "group" if isinstance(node, dict) else "leaf"
        return "group" if self._descendants(key) else None

    def _top_level_keys(self) -> list[str]:
        return list(dict.fromkeys(k.split("/")[0] for k in sorted(self._index)))

    def _stored_nbytes(self, key: str) -> int:
        owner = key if key in self._index else self._file_ancestor(key)
        keys = [owner] if owner is not None else self._descendants(key)
        # The files a save just wrote: their sizes are known, no query needed.
        return sum(self._file_size(self._index[k][0]) for k in keys)

    def _read_metadata_document(self) -> dict[str, Any]:
        path = self._path(METADATA_FILE)
        doc: dict[str, Any] = {}
        try:  # one read, not a query whether it exists first
            stored = self._read_json(METADATA_FILE)
        except FileNotFoundError:
            pass
        else:
            if not isinstance(stored, dict):
                raise CorruptStoreError(path, "metadata document is not a JSON object")
            doc = stored
        # Corrected in memory only: written with the next change (or repair), never by
        # an open.
        self._sizes_corrected = self._true_sizes(doc)
        return doc

    def _true_sizes(self, doc: dict[str, Any]) -> bool:
        """Make the sizes ``doc`` records (``file_sizes_KB``) those of the files on disk;
        return whether any changed.

        Every size recorded at a key held in a file (the key's own, or the dict file of a
        key above it) becomes that file's size; a size below the key of a file holding no
        dict (the file replaced a group), and a missing size of a key saved to its own
        file, become one size at the file's key. Sizes of keys with no file are kept.
        A size record that is neither a number nor a section (a tagged value, other
        damage) is replaced, never written into (see
        :func:`~cadstore.storage.base.set_nested_size`).
        """
        if not self._index:
            return False
        on_disk: dict[str, float | None] = {}

        def size_of(key: str) -> float | None:
            name = self._index[key][0]
            if name not in on_disk:
                try:
                    on_disk[name] = size_in_kb(self._file_size(name))
                except FileNotFoundError:  # removed since the storage opened
                    on_disk[name] = None
            return on_disk[name]

        sizes = doc.get(SIZES_METADATA_KEY)
        changed = False
        if is_size_section(sizes):
            pending: list[tuple[dict[str, Any], str]] = [(sizes, "")]
            while pending:
                node, prefix = pending.pop()
                for part, value in node.items():
                    key = prefix + part
                    if is_size_section(value):
                        pending.append((value, key + "/"))
                        continue
                    owner = key if key in self._index else self._file_ancestor(key)
                    if not is_size(value) or owner is None:
                        continue
                    if owner == key or self._index[owner][1]:
                        want = size_of(owner)
                        if want is not None and value != want:
                            node[part] = want
                            changed = True
        for key, (name, holds_dict) in self._index.items():
            if name in self._foreign:
                continue
            recorded = _nested(sizes, key)
            if is_size(recorded) or (holds_dict and is_size_section(recorded) and recorded):
                continue
            want = size_of(key)
            if want is None:
                continue
            sizes = sizes_section(doc)
            set_nested_size(sizes, key, want)
            changed = True
        return changed

    def _record_size(self, key: str, nbytes: int) -> None:
        # A key saved into a dict file changed that file: each entry it holds has the
        # file's new size, not only the key saved (as the check on open would find).
        owner = self._file_ancestor(key)
        if owner is not None:
            self._size_dict_file(owner, size_in_kb(nbytes))
        super()._record_size(key, nbytes)

    def _size_dict_file(self, owner: str, kb: float) -> bool:
        """Record ``kb``, the size of the dict file of ``owner``, for every key it holds;
        return whether any record changed.

        Each size recorded at or below ``owner`` becomes ``kb``; with none recorded
        there, ``kb`` is recorded at ``owner``: the sizes :meth:`_true_sizes` gives,
        so that a storage opened after the change has none to correct.
        """
        doc = self._metadata
        recorded = _nested(doc.get(SIZES_METADATA_KEY), owner)
        if is_size_section(recorded) and recorded:
            changed = False
            pending = [recorded]
            while pending:
                node = pending.pop()
                for part, value in node.items():
                    if is_size_section(value):
                        pending.append(value)
                    elif is_size(value) and value != kb:
                        node[part] = kb
                        changed = True
            return changed
        if is_size(recorded) and recorded == kb:
            return False
        set_nested_size(sizes_section(doc), owner, kb)
        return True

    def _write_metadata_document(self, doc: dict[str, Any]) -> None:
        if self._read_only:
            raise ReadOnlyStorageError(f"{self!r} is read-only")
        self._write_json(METADATA_FILE, doc)
        self._sizes_corrected = False

    def repair(self) -> list[str]:
        """Write out what opening the store found stale; return what was done.

        Opening a store changes nothing (see the module's notes): the leftover files of
        keys below another stored file (a save killed before removing them) are ignored
        until a change supersedes them, and the sizes ``metadata.json`` records wrongly
        (a writer killed before writing it, or an older cadstore that recorded a dict
        file's entries otherwise) are corrected in memory only, until the next change
        writes the metadata. A store that is never changed again keeps both on disk;
        this removes the leftovers and writes the corrected sizes, leaving the store as a
        change would. Every value reads the same before and after.

        Call it while no other process writes the store: what it removes and writes is
        what this storage found when it opened the store.

        Returns
        -------
        list of str
            What was done, as sentences (the files removed, the sizes written): empty
            when there was nothing to do, and then nothing was written.

        Raises
        ------
        ReadOnlyStorageError
            If the storage was opened read-only.
        """
        with self._lock:
            self._check_writable()
            done = []
            below: dict[str, list[str]] = {}
            for key, name in sorted(self._leftovers.items()):
                owner = self._file_ancestor(key)
                below.setdefault(owner or key, []).append(name)
            for owner, names in below.items():
                for name in names:
                    self._remove(name)
                self._leftovers = {k: n for k, n in self._leftovers.items() if n not in names}
                newer = self._index[owner][0] if owner in self._index else "a newer file"
                done.append(
                    f"removed {', '.join(names)}: files of keys below {owner!r} that "
                    f"{newer} replaced (a save interrupted before removing them)"
                )
            self._metadata  # noqa: B018 - reading it corrects its sizes
            if self._sizes_corrected:
                self._write_metadata_document(self._metadata)
                done.append(f"{METADATA_FILE}: the sizes recorded corrected to the files' sizes")
            return done

    # ------------------------------------------------------------------ public
    def get_file_path(self, data_key: str) -> str:
        """Return the JSON file that holds (or would hold) ``data_key``.

        Parameters
        ----------
        data_key
            The data key; a key stored inside a dict file returns that file.
        """
        self._check_open()
        if data_key in self._index:
            return self._path(self._index[data_key][0])
        owner = self._file_ancestor(data_key) if data_key else None
        if owner is not None:
            return self._path(self._index[owner][0])
        return self._path(_file_name(data_key)) if data_key else self._dir

    def _describe(self) -> str:
        return repr(self._dir)


#: Files at the top of a Zarr store: a folder holding one is an item or a dataset (an
#: ``OptStorage`` folder has a ``metadata.json`` too), never a JSON store. A JSON store's
#: file names end in ``.json`` after a stem without dots, so only ``zarr.json`` can be
#: one of its files too: the file of key ``zarr`` (see :func:`is_zarr_hierarchy`).
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")


def _is_envelope(doc: Any) -> bool:
    """Whether ``doc`` has the shape of a file a :class:`JsonStorageHandler` writes for a
    key, exactly ``{"key": ..., "value": ...}``; any other document is another tool's."""
    return isinstance(doc, dict) and set(doc) == {"key", "value"}


def is_zarr_hierarchy(location: Location, names: Collection[str] | None = None) -> bool:
    """Whether the folder ``location`` is a Zarr store (an item or a dataset): a
    :data:`_ZARR_MARKERS` file is at its top, and a ``zarr.json`` is not the file of a
    JSON store's key ``zarr``.

    A Zarr store's ``zarr.json`` is a metadata document (``zarr_format``, ``node_type``);
    the file of key ``zarr`` is the store's envelope (``{"key": "zarr", "value": ...}``),
    which no Zarr document is. A ``zarr.json`` that does not read, or reads as anything
    else, is taken for a Zarr store's, so that a tool writing to a JSON store never takes
    an item's folder for one. The one rule for ``cadstore repair``
    (:func:`is_json_store`) and for opening a folder (:func:`cadstore.artefacts.open_artefact`).

    Parameters
    ----------
    location
        The folder.
    names
        The names in it, when the caller has listed it: the markers are then looked up
        there, not asked of the file system one by one.

    Raises
    ------
    OSError
        If the file system fails to list or read the folder (the caller decides).
    """

    def there(name: str) -> bool:
        return name in names if names is not None else location.child(name).exists()

    if any(there(m) for m in _ZARR_MARKERS[1:]):
        return True
    marker = location.child(_ZARR_MARKERS[0])
    if not there(_ZARR_MARKERS[0]):
        return False
    if not marker.isfile():  # a folder, or a pipe, which would block the read
        return True
    data = location.fs.read_limited(marker.path, MAX_JSON_BYTES)
    try:
        doc = None if data is None else jsoncodec.loads(data)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return True
    return not _is_envelope(doc)


def is_json_store(location: Location) -> bool:
    """Whether ``location`` is a folder a :class:`JsonStorageHandler` wrote data into.

    For a tool that writes, given a path that may be a JSON store or something else
    (``cadstore repair``). :func:`cadstore.open` reads any folder of ``.json`` files as a
    store, which changes nothing; a writing tool takes only a store marked by a save, so
    that it never writes sizes into a ``metadata.json`` of another tool's folder. That
    is a folder that is no Zarr store and whose ``metadata.json``, a regular file of at
    most :data:`MAX_JSON_BYTES`, is a JSON object recording the sizes of the files saved
    (``file_sizes_KB``, written with every save; damaged or not). A ``zarr.json`` in it
    may be the file of the store's key ``zarr``, not a Zarr store's metadata (see
    :func:`is_zarr_hierarchy`). A store without a save has nothing to repair; anything
    unreadable is no JSON store, left to the tool's own checks.
    """
    try:
        if not location.isdir():
            return False
        metadata = location.child(METADATA_FILE)
        if not metadata.isfile():  # a pipe would block the read
            return False
        data = location.fs.read_limited(metadata.path, MAX_JSON_BYTES)
        doc = None if data is None else jsoncodec.loads(data)
        if not (isinstance(doc, dict) and SIZES_METADATA_KEY in doc):
            return False
        return not is_zarr_hierarchy(location)  # last: it may read a key's whole file
    except (OSError, ValueError, RecursionError, UnicodeDecodeError):
        return False


def _json_bytes(obj: Any) -> bytes:
    """The bytes of a file of the storage holding ``obj`` (indented, UTF-8)."""
    return jsoncodec.dumps(obj, indent=1).encode("utf-8")


def _is_tagged_leaf(obj: dict[str, Any]) -> bool:
    return "__numpy__" in obj or "__float__" in obj or obj.get("_numpy_complex") is True


def _nested(doc: Any, key: str) -> Any:
    """The value at the ``/``-separated ``key`` of nested dicts ``doc``, or ``None``."""
    for part in key.split("/"):
        if not is_size_section(doc):
            return None
        doc = doc.get(part)
    return doc


def _decode_foreign(doc: Any) -> Node:
    """Decode a plain JSON file written by another tool (numbers lists become arrays)."""
    node: Node = _arrays_from_lists(jsoncodec.decode(doc))
    return node


def _arrays_from_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _arrays_from_lists(v) for k, v in value.items()}
    if isinstance(value, list) and not all(isinstance(x, str) for x in value):
        if value and all(isinstance(x, complex) for x in value):
            return np.array(value, dtype=np.complex128)
        return np.asarray(value)
    return value
