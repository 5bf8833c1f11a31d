"""The file systems cadstore reads through: local disk, and object stores through fsspec.

A :class:`FileSystem` serves the small set of operations cadstore needs on one kind of
storage: queries (``exists``, ``isfile``, ``isdir``, ``listdir``, ``size``,
``file_sizes``), reads (``read_bytes``, ``open_read``, ``read_ranges``,
``read_object_ranges``), and the changes that are not publication (``makedirs``,
``remove``, ``rmtree``, ``upload``). :class:`LocalFileSystem` serves local paths;
:class:`FsspecFileSystem` serves URLs such as ``s3://bucket/key`` through fsspec (s3fs for
S3, gcsfs, adlfs, ...; install ``cadstore[cloud]``), translating its clients' errors into
cadstore's. Publishing a file so that it is never seen partially written is
:mod:`cadstore.io.publish`'s job, and which file system serves a path is decided once, by
:func:`cadstore.io.location.resolve`.

Credentials and endpoints come from ``storage_options`` or from the usual fsspec and
environment configuration (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ``FSSPEC_S3_*``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import shutil
import stat
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from cadstore.errors import (
    CadstoreError,
    CorruptStoreError,
    StorageAccessError,
    StorageUnavailableError,
)

__all__ = [
    "FileSystem",
    "FsspecFileSystem",
    "LocalFileSystem",
    "filesystem_for",
    "is_url",
    "local_path",
]


def is_url(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` is a URL (``scheme://...``) rather than a local path."""
    text = os.fspath(path)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme != "file"


def local_path(path: str | os.PathLike[str], what: str, instead: str) -> str:
    """Return ``path`` as an absolute local path, refusing a URL.

    For what only works on local disk (the encoder's inputs and output folder, a flow's
    output folder): given ``s3://bucket/out``, ``os.path.abspath`` would make a local
    folder named ``s3:`` and report success.

    Parameters
    ----------
    path
        The path a caller gave.
    what
        What the path is, for the message (``"the encode output folder"``).
    instead
        What to do instead, for the message.

    Returns
    -------
    str
        The absolute local path.

    Raises
    ------
    ValueError
        If ``path`` is a URL; the message names it, says that ``what`` must be local and
        gives ``instead``.
    """
    text = os.fspath(path)
    if is_url(text):
        raise ValueError(f"{what} must be a local path, not the URL {text!r}: {instead}")
    return os.path.abspath(text)


class FileSystem(ABC):
    """The file operations cadstore needs, on one kind of storage.

    Attributes
    ----------
    remote
        Whether paths are URLs of a remote store, where a file appears by an upload, not
        by a rename, and every query is a request.
    """

    remote: bool

    def translate(self, path: str, exc: BaseException) -> BaseException:
        """Return the cadstore error that ``exc``, raised while using ``path``, stands for.

        Reads through a file object this file system opened (``open_read``) raise the
        underlying library's errors; callers hand them here. Errors that mean the store
        refused or could not be reached come back as
        :class:`~cadstore.errors.StorageAccessError` or
        :class:`~cadstore.errors.StorageUnavailableError`; any other is returned as is.
        """
        return exc

    @abstractmethod
    def exists(self, path: str) -> bool:
        """Return whether ``path`` exists."""

    @abstractmethod
    def isdir(self, path: str) -> bool:
        """Return whether ``path`` is a directory."""

    @abstractmethod
    def isfile(self, path: str) -> bool:
        """Return whether ``path`` is a regular file."""

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Return the names (not paths) in directory ``path``."""

    @abstractmethod
    def makedirs(self, path: str) -> None:
        """Create ``path`` and its parents; no error if it exists."""

    @abstractmethod
    def size(self, path: str) -> int:
        """Return the size of file ``path`` in bytes."""

    @abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """Return the contents of file ``path``."""

    def read_limited(self, path: str, limit: int) -> bytes | None:
        """Return the contents of file ``path`` if it holds at most ``limit`` bytes, else
        ``None``, having read no more than ``limit + 1`` bytes of it.

        For a caller with a limit on what it parses: a file over the limit is refused
        without being read where its size is known at no cost (an open local file), and a
        file within it costs one request on an object store (:class:`FsspecFileSystem`),
        no size query first.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        """
        with self.open_read(path) as fh:
            data = _read_up_to(fh, limit + 1)
        return data if len(data) <= limit else None

    @abstractmethod
    def open_read(self, path: str) -> IO[bytes]:
        """Open ``path`` for random-access binary reading."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Delete file ``path``; no error if it is already gone."""

    @abstractmethod
    def rmtree(self, path: str) -> None:
        """Delete directory ``path`` recursively; no error if it is already gone."""

    def join(self, *parts: str) -> str:
        """Join path components."""
        return os.path.join(*parts)

    def dirname(self, path: str) -> str:
        """Return the parent of ``path``."""
        return os.path.dirname(path)

    def basename(self, path: str) -> str:
        """Return the last component of ``path``."""
        return os.path.basename(path)

    def read_ranges(
        self, fh: IO[bytes], path: str, ranges: Sequence[tuple[int, int]]
    ) -> list[bytes] | None:
        """Read several ``(offset, length)`` ranges of ``fh`` (opened on ``path``) at once.

        Returns ``None`` when this file system reads them no faster together than one
        after another (local disk); the caller then reads them in turn. Object stores
        send the requests concurrently, so a batch costs about one round trip.
        """
        return None

    def read_object_ranges(self, requests: Sequence[tuple[str, int, int]]) -> list[bytes | None]:
        """Read a range of each of several files, one after another.

        Parameters
        ----------
        requests
            ``(path, start, length)`` of each range: bytes ``[start, start + length)`` of
            file ``path``. A length of 0 or less reads nothing.

        Returns
        -------
        list of bytes or None
            One entry per request, in order: the bytes (fewer where the file ends before
            the range does), or ``None`` where the file does not exist.

        Notes
        -----
        Object stores override this to send the requests concurrently.
        """
        out: list[bytes | None] = []
        for path, start, length in requests:
            try:
                fh = self.open_read(path)
            except FileNotFoundError:
                out.append(None)
                continue
            with fh:
                try:
                    fh.seek(start)
                    out.append(fh.read(max(0, length)))
                except Exception as exc:
                    translated = self.translate(path, exc)
                    if translated is exc:
                        raise
                    raise translated from exc
        return out

    def file_sizes(self, path: str) -> dict[str, int]:
        """Return ``{relative posix path: size}`` of every file below directory ``path``."""
        return {rel: self.size(full) for rel, full in self.walk_files(path)}

    @abstractmethod
    def walk_files(self, path: str) -> Iterator[tuple[str, str]]:
        """Yield ``(relative posix path, path)`` of every file below directory ``path``."""

    def upload(self, local_path: str, path: str, *, exclusive: bool = False) -> None:
        """Copy the finished local file ``local_path`` to ``path`` in one request.

        For remote file systems, where one upload is what makes an object appear whole;
        :mod:`cadstore.io.publish` uses it. ``exclusive`` makes it conditional: a
        ``FileExistsError`` if ``path`` exists.
        """
        raise NotImplementedError(f"{type(self).__name__} publishes with a rename, not an upload")


#: Opening a pipe without it blocks until a writer comes (POSIX; Windows has none).
_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)


class LocalFileSystem(FileSystem):
    """Local disk."""

    remote = False

    def exists(self, path: str) -> bool:  # docstring inherited
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def isfile(self, path: str) -> bool:
        return os.path.isfile(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def read_bytes(self, path: str) -> bytes:
        with self.open_read(path) as fh:
            return fh.read()

    def read_limited(self, path: str, limit: int) -> bytes | None:  # docstring inherited
        with self.open_read(path) as fh:
            # Sized first: a file over the limit is refused unread, and a small one is
            # not read into a buffer of ``limit`` bytes.
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                return None
            data = _read_up_to(fh, limit + 1, first=size + 1)
        return data if len(data) <= limit else None  # grown since: refused all the same

    def open_read(self, path: str) -> IO[bytes]:
        """Open regular file ``path`` for binary reading; never anything else.

        Opened without blocking, then checked: a FIFO would block the open or the read
        until a writer came, a device might never end.

        Raises
        ------
        IsADirectoryError
            If ``path`` is a directory (as ``open`` would).
        CorruptStoreError
            If ``path`` is a FIFO, a device or a socket, naming it.
        """
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags | _NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            if not stat.S_ISREG(mode):
                raise CorruptStoreError(path, "not a regular file (a pipe, device or socket)")
            if _NONBLOCK:
                os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def rmtree(self, path: str) -> None:
        if os.path.islink(path):
            # Never follow a symlink planted where a store directory should be.
            os.unlink(path)
            return
        try:
            # The directories cadstore removes are mostly empty: one rmdir, no walk.
            os.rmdir(path)
            return
        except OSError:
            pass
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)

    def walk_files(self, path: str, *, skip: Collection[str] = ()) -> Iterator[tuple[str, str]]:
        """Yield ``(relative posix path, absolute path)`` of every regular file below ``path``.

        Symlinks are skipped, so a planted link cannot pull outside files into a store.
        The folders of ``skip`` (relative posix paths) are not entered: a reader that
        knows what one holds (an array's chunks) need not list it.
        """
        for root, dirs, files in os.walk(path, followlinks=False):
            rel_root = os.path.relpath(root, path).replace(os.sep, "/")
            prefix = "" if rel_root == "." else f"{rel_root}/"
            dirs[:] = [
                d
                for d in dirs
                if not os.path.islink(os.path.join(root, d)) and f"{prefix}{d}" not in skip
            ]
            for name in files:
                full = os.path.join(root, name)
                if stat.S_ISREG(os.lstat(full).st_mode):
                    rel = os.path.relpath(full, path).replace(os.sep, "/")
                    yield rel, full


_LOCAL = LocalFileSystem()

# Object stores whose first path component is a bucket (or container) that cadstore must
# not create implicitly: s3fs's makedirs would create a missing bucket, hiding a typo.
_BUCKET_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
# Random reads (a zip's central directory, then members) fetch this much past what they
# ask for: enough for neighbouring small members, little waste on a large object. Reading
# 40 random items of a merged dataset from SeaweedFS: 256 KiB fetched 117 MB in 107 ms
# per item, 64 KiB 38 MB in 73 ms, 16 KiB 15 MB in 95 ms, none 7 MB in 107 ms.
_READ_BLOCK_BYTES = 64 * 1024

#: Range requests in flight at once for one batch (:meth:`FsspecFileSystem.read_ranges`).
RANGE_REQUESTS = 16
_RANGE_POOL: ThreadPoolExecutor | None = None
_RANGE_POOL_LOCK = threading.Lock()


def _range_pool() -> ThreadPoolExecutor:
    """The process's threads for concurrent range requests (each waits on fsspec's loop)."""
    global _RANGE_POOL
    with _RANGE_POOL_LOCK:
        if _RANGE_POOL is None:
            _RANGE_POOL = ThreadPoolExecutor(RANGE_REQUESTS, thread_name_prefix="cadstore-range")
        return _RANGE_POOL


def _forget_range_pool() -> None:
    # A forked child inherits the pool object but none of its threads: work submitted to
    # it would wait forever. The child starts a pool of its own when it needs one.
    global _RANGE_POOL, _RANGE_POOL_LOCK
    _RANGE_POOL = None
    _RANGE_POOL_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_range_pool)
_GLOB_MAGIC = re.compile(r"[*?[]")
_CLOUD_HINT = "install the cloud extra: pip install 'cadstore[cloud]'"


def _error_response(exc: BaseException) -> tuple[str, int]:
    """Return the S3-style ``(error code, HTTP status)`` found in ``exc``'s cause chain."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
            return str(error.get("Code", "")), int(status)
        seen = seen.__cause__ or seen.__context__
    return "", 0


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning "the store did not answer", from whichever clients exist."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        from botocore import exceptions as boto

        kinds += [boto.ConnectionError, boto.HTTPClientError]
    with contextlib.suppress(ImportError):
        import aiohttp

        kinds += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    with contextlib.suppress(ImportError):
        from fsspec.exceptions import FSTimeoutError

        kinds.append(FSTimeoutError)
    return tuple(kinds)


def _credential_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning "no credentials were found at all" (not a refusal)."""
    kinds: list[type[BaseException]] = []
    with contextlib.suppress(ImportError):
        from botocore import exceptions as boto

        kinds += [boto.NoCredentialsError, boto.PartialCredentialsError]
    return tuple(kinds)


class FsspecFileSystem(FileSystem):
    """An object store or remote file system reached through fsspec.

    Paths are full URLs (``s3://bucket/parts/p1.zarr``), so that every path a storage
    reports or puts in an error message can be opened again as it is.

    * :meth:`upload` publishes a finished local file with a single request (one PUT, or a
      multipart upload that becomes visible only when it completes), so the object is
      never seen partially written; ``exclusive=True`` sends ``If-None-Match: *`` (S3
      conditional writes).
    * :meth:`open_read` returns a seekable file whose reads are HTTP range requests with
      a small read-ahead; the object's ETag is pinned, so a read never mixes two versions
      of an object replaced meanwhile (it fails instead). :meth:`read_ranges` sends many
      such requests at once, under the same condition.
    * :meth:`makedirs` creates nothing (object stores have no directories) but checks the
      bucket exists, so a misspelt bucket fails at once with a clear message.
    * Errors are translated: refused credentials raise :class:`StorageAccessError`, an
      unreachable store :class:`StorageUnavailableError`, a missing bucket
      :class:`~cadstore.errors.CorruptStoreError`; each names the URL.

    Parameters
    ----------
    fs
        The fsspec file system (e.g. an ``s3fs.S3FileSystem``).
    """

    remote = True

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol: str = protocol
        self._buckets: set[str] = set()
        self._conditional: dict[str, bool] = {}
        self._transport = _transport_errors()
        self._no_credentials = _credential_errors()
        # s3fs: a few queries go straight to the S3 API, one request each.
        self._s3 = self.protocol in ("s3", "s3a") and hasattr(fs, "call_s3")

    # ------------------------------------------------------------------ errors
    def _endpoint(self) -> str:
        client_kwargs = getattr(self.fs, "client_kwargs", None) or {}
        endpoint = client_kwargs.get("endpoint_url") or getattr(self.fs, "endpoint_url", None)
        return str(endpoint) if endpoint else f"the default {self.protocol} endpoint"

    def translate(self, path: str, exc: BaseException) -> BaseException:
        """Return the cadstore error for ``exc``, or ``exc`` itself when it is fine as is."""
        if isinstance(exc, CadstoreError | FileNotFoundError | FileExistsError):
            return exc
        if isinstance(exc, self._no_credentials):
            return StorageAccessError(
                path,
                f"no credentials for {self._endpoint()} ({exc}); give storage_options "
                "key/secret, set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile, "
                "or anon=True for a public bucket",
            )
        if isinstance(exc, PermissionError):
            return StorageAccessError(
                path,
                f"access denied by {self._endpoint()} ({exc}); check the credentials "
                "(storage_options key/secret, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                "the AWS profile) and that they may use this bucket",
            )
        if isinstance(exc, self._transport):
            return StorageUnavailableError(
                path,
                f"cannot reach the object store at {self._endpoint()} ({exc}); check the "
                "endpoint and retry once the store is back",
            )
        return exc

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            new = self.translate(path, exc)
            if new is exc:
                raise
            raise new from exc

    def _bucket(self, path: str) -> str | None:
        if self.protocol not in _BUCKET_PROTOCOLS:
            return None
        key = self.fs._strip_protocol(path)
        return key.split("/", 1)[0] or None

    def _check_bucket(self, path: str) -> None:
        """Raise a clear error if ``path``'s bucket does not exist (checked once)."""
        bucket = self._bucket(path)
        if bucket is None or bucket in self._buckets:
            return
        with self._errors(path):
            try:
                self.fs.info(f"{self.protocol}://{bucket}")
            except FileNotFoundError:
                raise CorruptStoreError(
                    path,
                    f"bucket {bucket!r} does not exist at {self._endpoint()}; create it "
                    "first or correct the URL",
                ) from None
        self._buckets.add(bucket)

    def _split(self, path: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(path)
        return bucket, key

    def _file_info(self, path: str) -> dict[str, Any] | None:
        """Return the details of the object at ``path``, or ``None`` if there is none."""
        with self._errors(path):
            try:
                if not self._s3:
                    info = dict(self.fs.info(path))
                    return info if info.get("type") == "file" else None
                # One HEAD; s3fs's info() would follow a miss with a listing.
                bucket, key = self._split(path)
                if not key or key.endswith("/"):
                    return None
                head = self.fs.call_s3("head_object", Bucket=bucket, Key=key)
                if head.get("ContentType") == "application/x-directory":
                    return None  # a directory marker some servers keep, not a file
                self._buckets.add(bucket)
                return {"type": "file", "size": int(head["ContentLength"])}
            except FileNotFoundError:
                self._check_bucket(path)
                return None

    def _has_objects_below(self, path: str) -> bool:
        """Return whether any object has a key below ``path/`` (an object store's "dir")."""
        if not self._s3:
            with self._errors(path):
                found = bool(self.fs.isdir(path))
            if not found:
                self._check_bucket(path)
            return found
        with self._errors(path):
            try:
                bucket, key = self._split(path)
                if not key:
                    self._check_bucket(path)
                    return True
                # At most one key, and no delimiter: s3fs's isdir() would list every child,
                # and a delimited listing shows the empty "directories" SeaweedFS keeps.
                out = self.fs.call_s3(
                    "list_objects_v2", Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1
                )
            except FileNotFoundError:
                self._check_bucket(path)
                return False
        self._buckets.add(bucket)
        return bool(out.get("KeyCount") or out.get("Contents"))

    # ------------------------------------------------------------------ queries
    def exists(self, path: str) -> bool:  # docstring inherited
        return self._file_info(path) is not None or self._has_objects_below(path)

    def isdir(self, path: str) -> bool:
        return self._has_objects_below(path)

    def isfile(self, path: str) -> bool:
        return self._file_info(path) is not None

    def listdir(self, path: str) -> list[str]:
        with self._errors(path):
            try:
                entries = self.fs.ls(path, detail=False)
            except FileNotFoundError:
                self._check_bucket(path)
                raise
        prefix = self.fs._strip_protocol(path).rstrip("/") + "/"
        return [e[len(prefix) :].rstrip("/") for e in entries if e.startswith(prefix)]

    def size(self, path: str) -> int:
        info = self._file_info(path)
        if info is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", path)
        return int(info["size"])

    def read_bytes(self, path: str) -> bytes:
        with self._errors(path):
            try:
                return bytes(self.fs.cat_file(path))
            except FileNotFoundError:
                self._check_bucket(path)
                raise

    def read_limited(self, path: str, limit: int) -> bytes | None:
        """The object at ``path`` if it holds at most ``limit`` bytes, else ``None`` (see
        :meth:`FileSystem.read_limited`).

        One ranged GET of the first :data:`_PROBE_BYTES` and one more: an object shorter
        than that (the usual JSON file) is read whole by it. A longer one is sized (a
        HEAD) before anything more is fetched, so that an object far over the limit
        costs two small requests, not a download of ``limit`` bytes.
        """
        probe = min(limit, _PROBE_BYTES)
        data = self._read_range(path, probe + 1)
        if len(data) <= probe:
            return data
        if len(data) > limit or self.size(path) > limit:
            return None
        data = self._read_range(path, limit + 1)
        return data if len(data) <= limit else None

    def _read_range(self, path: str, nbytes: int) -> bytes:
        """The first ``nbytes`` bytes of the object at ``path`` (all, if it is shorter)."""
        with self._errors(path):
            try:
                return bytes(self.fs.cat_file(path, start=0, end=nbytes))
            except FileNotFoundError:
                self._check_bucket(path)
                raise
            except OSError as exc:
                if _error_response(exc)[1] == 416:
                    return b""  # an empty object has no first byte for a range to start at
                raise

    def open_read(self, path: str) -> IO[bytes]:
        with self._errors(path):
            try:
                return self.fs.open(  # type: ignore[no-any-return]
                    path, "rb", block_size=_READ_BLOCK_BYTES, cache_type="readahead"
                )
            except FileNotFoundError:
                self._check_bucket(path)
                raise

    def read_ranges(
        self, fh: IO[bytes], path: str, ranges: Sequence[tuple[int, int]]
    ) -> list[bytes] | None:
        """Fetch the ranges concurrently through ``fh``'s own range requests.

        Each request goes through the file's ``_fetch_range`` (fsspec's hook for buffered
        files), so it carries the same ETag condition as the file's other reads and never
        mixes two versions of a replaced object; it bypasses the file's position and
        read-ahead cache, which concurrent requests must not share.
        """
        fetch = getattr(fh, "_fetch_range", None)
        if fetch is None or len(ranges) < 2:
            return None

        def one(span: tuple[int, int]) -> bytes:
            start, length = span
            return bytes(fetch(start, start + length)) if length > 0 else b""

        with self._errors(path):
            return list(_range_pool().map(one, ranges))

    def read_object_ranges(self, requests: Sequence[tuple[str, int, int]]) -> list[bytes | None]:
        """Bytes ``[start, start + length)`` of each ``(path, start, length)``, concurrently.

        One ranged GET per request, all in flight together (fsspec's ``cat_ranges``); a
        missing object gives ``None``. For objects each read whole or in part once, such
        as the shards of a dataset stored as a directory.

        As on local disk (see :meth:`FileSystem.read_object_ranges`), a range that starts
        at or after the object's end, an empty object's included, gives ``b""``: the
        server refuses it (HTTP 416, no byte there to start at). A length of 0 or less
        gives ``b""`` too, after a request of one byte that tells whether the object
        exists: an empty HTTP range cannot be asked for, and an end equal to the start
        would fetch the whole object.
        """
        if not requests:
            return []
        paths = [path for path, _, _ in requests]
        starts = [start for _, start, _ in requests]
        ends = [start + max(1, length) for _, start, length in requests]
        with self._errors(paths[0]):
            got = self.fs.cat_ranges(paths, starts, ends, on_error="return")
        out: list[bytes | None] = []
        for (path, _, length), data in zip(requests, got, strict=True):
            if isinstance(data, FileNotFoundError):
                out.append(None)
            elif isinstance(data, BaseException):
                if _error_response(data)[1] == 416:
                    out.append(b"")  # the range starts at or after the object's end
                    continue
                translated = self.translate(path, data)
                if translated is data:
                    raise data
                raise translated from data
            else:
                out.append(bytes(data) if length > 0 else b"")
        return out

    def file_sizes(self, path: str) -> dict[str, int]:
        """Return ``{relative posix path: size}`` for every object below ``path``.

        One listing, however many objects: what a directory store needs to open.
        """
        prefix = self.fs._strip_protocol(path).rstrip("/") + "/"
        with self._errors(path):
            try:
                found = self.fs.find(prefix, detail=True)
            except FileNotFoundError:
                found = {}
        # find() also matches "<path>.data" next to "<path>/"; keep only what is below.
        return {
            key[len(prefix) :]: int(info.get("size") or 0)
            for key, info in sorted(found.items())
            if key.startswith(prefix) and len(key) > len(prefix) and info.get("type") == "file"
        }

    def walk_files(self, path: str) -> Iterator[tuple[str, str]]:
        """Yield ``(relative posix path, URL)`` of every object below ``path``."""
        for rel in self.file_sizes(path):
            yield rel, self.join(path, rel)

    # ------------------------------------------------------------------ changes
    def makedirs(self, path: str) -> None:
        if self.protocol in _BUCKET_PROTOCOLS:
            # "Directories" exist only as key prefixes; only the bucket must be there.
            self._check_bucket(path)
            return
        with self._errors(path):
            self.fs.makedirs(path, exist_ok=True)

    def upload(self, local_path: str, path: str, *, exclusive: bool = False) -> None:
        """Upload ``local_path`` to ``path`` in one PUT (or one multipart upload).

        The object appears only when the upload completes, whole. ``exclusive`` sends
        ``If-None-Match: *`` (S3 conditional writes): ``FileExistsError`` if ``path``
        exists, where the store enforces it (:func:`cadstore.io.publish.
        conditional_writes_supported` tells).
        """
        options: dict[str, Any] = {}
        if exclusive:
            if self.protocol not in ("s3", "s3a"):
                raise NotImplementedError(
                    f"exclusive (conditional) writes are not supported for {self.protocol}://"
                )
            options["mode"] = "create"
        with self._errors(path):
            try:
                self.fs.put_file(local_path, path, **options)
            except FileNotFoundError:
                self._check_bucket(path)
                raise
            except OSError as exc:
                if exclusive and _error_response(exc)[1] == 412:
                    raise FileExistsError(errno.EEXIST, "object exists", path) from exc
                raise

    def server_copy(self, src: str, dst: str) -> None:
        """Copy object ``src`` to ``dst`` on the server: the destination appears in one step."""
        with self._errors(dst):
            self.fs.cp_file(src, dst)

    def remove(self, path: str) -> None:
        with self._errors(path), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)

    def rmtree(self, path: str) -> None:
        # Deleting listed keys, not a prefix, spares "<path>.data" next to "<path>/".
        keys = [self.fs._strip_protocol(url) for _, url in self.walk_files(path)]
        with self._errors(path):
            if any(_GLOB_MAGIC.search(k) for k in keys):
                # fsspec's bulk rm() would expand these characters as glob patterns.
                for key in keys:
                    self.fs.rm_file(key)
            elif keys:
                self.fs.rm(keys)

    # ------------------------------------------------------------------ paths
    def join(self, *parts: str) -> str:
        return posixpath.join(*parts)

    def dirname(self, path: str) -> str:
        scheme, sep, rest = path.partition("://")
        if not sep:
            return posixpath.dirname(path)
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"

    def basename(self, path: str) -> str:
        return posixpath.basename(path.rstrip("/"))


def _read_up_to(fh: IO[bytes], nbytes: int, *, first: int | None = None) -> bytes:
    """Read ``fh`` from its position until ``nbytes`` bytes or its end, whichever first.

    ``first`` is the size of the first read (the file's size and one, where known):
    what is left is read in pieces, so that no read allocates ``nbytes`` at once.
    """
    chunks: list[bytes] = []
    left = nbytes
    step = _READ_STEP_BYTES if first is None else first
    while left > 0:
        chunk = fh.read(min(step, left))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
        step = _READ_STEP_BYTES
    return b"".join(chunks)


#: What :func:`_read_up_to` reads at a time past its first read.
_READ_STEP_BYTES = 1024 * 1024

#: What :meth:`FsspecFileSystem.read_limited` fetches before it asks an object's size.
_PROBE_BYTES = 4 * 1024 * 1024

# One FsspecFileSystem per fsspec instance, so a bucket is checked once per process.
_REMOTE: weakref.WeakKeyDictionary[Any, FsspecFileSystem] = weakref.WeakKeyDictionary()
_REMOTE_LOCK = threading.Lock()


def _remote_filesystem(url: str, storage_options: dict[str, Any] | None) -> FsspecFileSystem:
    try:
        import fsspec
    except ImportError as exc:
        raise ImportError(f"opening {url!r} needs fsspec; {_CLOUD_HINT}") from exc
    protocol = url.partition("://")[0]
    # A listing cached by fsspec goes stale as soon as another process writes (a Dask
    # worker, another merge): every query asks the store unless the caller opts in.
    options = {"use_listings_cache": False, **(storage_options or {})}
    try:
        fs = fsspec.filesystem(protocol, **options)
    except ImportError as exc:
        raise ImportError(f"opening {url!r} needs the {protocol}:// driver; {_CLOUD_HINT}") from exc
    with _REMOTE_LOCK:
        remote = _REMOTE.get(fs)
        if remote is None:
            remote = _REMOTE[fs] = FsspecFileSystem(fs)
        return remote


def filesystem_for(
    path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> tuple[FileSystem, str]:
    """Return the file system that serves ``path`` and the path as that file system sees it.

    Parameters
    ----------
    path
        A local path or a URL such as ``s3://bucket/parts/p1.zarr``; a URL is returned
        unchanged and is what the returned file system expects.
    storage_options
        Options for a remote file system, passed to fsspec: for S3 (s3fs) for example
        ``{"key": ..., "secret": ..., "client_kwargs": {"endpoint_url": ...}}``. Without
        them, credentials and endpoint come from fsspec's configuration and the
        environment. Not allowed with a local path.

    Raises
    ------
    ImportError
        For a URL when fsspec or the protocol's driver (s3fs, ...) is not installed.
    ValueError
        For ``storage_options`` with a local path.
    """
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if is_url(text):
        return _remote_filesystem(text, storage_options), text
    if storage_options:
        raise ValueError("storage_options only apply to remote URLs such as s3://...")
    return _LOCAL, text
