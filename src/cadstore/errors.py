"""Every exception and warning cadstore raises, in one place.

The hierarchy::

    CadstoreError                          base of everything raised on purpose
    ├── KeyNotFoundError      (KeyError)   a data or metadata key that is not stored
    ├── InvalidKeyError       (ValueError) a key that breaks the key grammar
    ├── KeyConflictError      (ValueError) a key that would clash with a stored one
    ├── UnsupportedTypeError  (TypeError)  a value the storage cannot represent
    ├── InvalidDataError      (ValueError) a representable value that is refused (NaN, ...)
    ├── SchemaError           (ValueError) a schema dict or builder call of the wrong shape
    │   └── SchemaValidationError          data that contradicts the schema (strict mode)
    ├── StorageClosedError    (ValueError) use of a storage after ``close()``
    ├── ReadOnlyStorageError  (PermissionError) a write to a read-only storage
    ├── StorageError          (OSError)    a store could not be read or written, naming it
    │   ├── CorruptStoreError              the data is at fault: not a readable store
    │   │   └── LimitExceededError         declared sizes exceed a safety limit
    │   ├── StorageNotFoundError (FileNotFoundError)  nothing is at the path
    │   ├── StorageAccessError (PermissionError)  the store refused the credentials
    │   ├── StorageUnavailableError (ConnectionError)  the store cannot be reached
    │   └── DatasetLockedError (BlockingIOError)  another process is writing the dataset
    ├── UnknownFormatError    (ValueError) a path holding none of the files cadstore reads
    ├── OutputExistsError     (FileExistsError) an output that would overwrite something
    ├── MergeError            (ValueError) a merge that cannot go on (see the message)
    ├── FlowError             (ValueError) a flow that cannot run as defined (its tasks)
    ├── DatasetError          (ValueError) a dataset query naming an unknown thing
    └── UnavailableFeatureError (NotImplementedError) a specified feature that needs the
                                           specified system's proprietary kernel or viewer

    CadstoreWarning (UserWarning)

Each error class derives from the built-in exception a caller would naturally catch, so
``except KeyError`` keeps working for a missing key and ``except ValueError`` for a bad
schema. Messages name the key, file or field and say what to do about it.

The three kinds of :class:`StorageError` call for different actions: a
:class:`CorruptStoreError` means this file is bad (skip it, list it, replace it), while a
:class:`StorageAccessError` or :class:`StorageUnavailableError` means the store failed and
the same file may be fine (fix the credentials or wait, then run again). Code that skips
bad items catches ``CorruptStoreError``; the other two pass through it untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "CadstoreError",
    "CadstoreWarning",
    "CorruptStoreError",
    "DatasetError",
    "DatasetLockedError",
    "FlowError",
    "InvalidDataError",
    "InvalidKeyError",
    "KeyConflictError",
    "KeyNotFoundError",
    "LimitExceededError",
    "MergeError",
    "OutputExistsError",
    "ReadOnlyStorageError",
    "SchemaError",
    "SchemaValidationError",
    "StorageAccessError",
    "StorageClosedError",
    "StorageError",
    "StorageNotFoundError",
    "StorageUnavailableError",
    "UnavailableFeatureError",
    "UnknownFormatError",
    "UnsupportedTypeError",
    "os_error_message",
    "os_problem",
    "os_storage_error",
]


_E = TypeVar("_E", bound="CadstoreError")

#: An option that would resolve an error, and what it does: ``("overwrite", "replace it")``.
Remedy = tuple[str, str]


def _python_option(name: str) -> str:
    return f"{name}=True"


def _cli_option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _with_remedies(problem: str, remedies: tuple[Remedy, ...], spell: Callable[[str], str]) -> str:
    said = [f"{spell(name)} to {effect}" for name, effect in remedies]
    return f"{problem}; pass " + ", or ".join(said) if said else problem


class CadstoreError(Exception):
    """Base class of every error cadstore raises deliberately.

    Attributes
    ----------
    remedies
        For an error raised with :meth:`suggesting`: options that would resolve it, each
        ``(option, what it does)``. The message spells an option as the Python keyword
        (``overwrite=True``); the command line spells it as its flag (``--overwrite``)
        through :meth:`cli_message`.
    """

    remedies: tuple[Remedy, ...] = ()
    _unremedied: str = ""

    @classmethod
    def suggesting(cls: type[_E], problem: str, *remedies: Remedy) -> _E:
        """Return an error whose message offers options that would resolve it.

        Parameters
        ----------
        problem
            What is wrong, naming the file or key.
        *remedies
            ``(option, what it does)`` pairs, e.g. ``("overwrite", "replace it")``.

        Examples
        --------
        >>> str(MergeError.suggesting("x.dataset exists", ("overwrite", "replace it")))
        'x.dataset exists; pass overwrite=True to replace it'
        """
        error = cls(_with_remedies(problem, remedies, _python_option))
        error._unremedied = problem
        error.remedies = tuple(remedies)
        return error

    def cli_message(self) -> str:
        """Return the message with remedies spelt as command-line flags (``--overwrite``)."""
        if not self.remedies:
            return str(self)
        return _with_remedies(self._unremedied, self.remedies, _cli_option)


class CadstoreWarning(UserWarning):
    """Base class of cadstore's warnings, so they can be filtered precisely."""


class KeyNotFoundError(CadstoreError, KeyError):
    """A data or metadata key that is not present.

    Parameters
    ----------
    key
        The key that was asked for.
    message
        The full message; by default it names the key.
    """

    def __init__(self, key: str, message: str | None = None) -> None:
        self.key = key
        super().__init__(message or f"key {key!r} does not exist")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.args[0]), self.__dict__)

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0])


class InvalidKeyError(CadstoreError, ValueError):
    """A key that is empty, absolute, escapes its root or holds forbidden characters."""

    def __init__(self, key: object, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"invalid key {key!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.reason), self.__dict__)


class KeyConflictError(CadstoreError, ValueError):
    """A key that would silently overwrite or shadow a different stored key."""


class UnsupportedTypeError(CadstoreError, TypeError):
    """A value of a type the storage cannot represent (objects, sets, functions, ...)."""


class InvalidDataError(CadstoreError, ValueError):
    """A value of a supported type that the storage refuses, such as NaN in OptStorage."""


class SchemaError(CadstoreError, ValueError):
    """A schema dictionary or builder call of the wrong shape."""


class SchemaValidationError(SchemaError):
    """Data that does not satisfy the schema, raised by ``save_data`` in strict mode.

    Attributes
    ----------
    key, expected, actual
        The offending key, what the schema asks for and what was given.
    """

    def __init__(self, key: str, expected: str, actual: str) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"data for {key!r} does not match the schema: expected {expected}, got {actual}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.expected, self.actual), self.__dict__)


class StorageClosedError(CadstoreError, ValueError):
    """An operation on a storage after ``close()``."""


class ReadOnlyStorageError(CadstoreError, PermissionError):
    """A write to a storage that was opened read-only."""


class StorageError(CadstoreError, OSError):
    """A store, file or object that could not be read or written.

    Parameters
    ----------
    path
        The file, directory or URL.
    problem
        What went wrong.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        # OSError's own (errno, strerror) unpacking is avoided by passing one argument.
        super().__init__(f"{self.path}: {problem}")

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from (path, problem), not from the formatted message, so the error
        # crosses process boundaries (Dask workers, DataLoader workers) intact.
        return (type(self), (self.path, self.problem), self.__dict__)


class CorruptStoreError(StorageError):
    """A file or directory that is not a readable store: the data itself is at fault."""


class LimitExceededError(CorruptStoreError):
    """A file whose declared sizes exceed a safety limit (a possible decompression bomb)."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """Nothing is at the path (or URL) cadstore was asked to open."""


class StorageAccessError(StorageError, PermissionError):
    """An object store refused the request: wrong or missing credentials, or no permission.

    A :class:`StorageError` naming the URL, and a ``PermissionError``; not a
    :class:`CorruptStoreError`, since the data may be fine.
    """


class StorageUnavailableError(StorageError, ConnectionError):
    """An object store could not be reached, or went away during a request.

    A :class:`StorageError` naming the URL, and a ``ConnectionError``: the operation can be
    retried once the store is back.
    """


class DatasetLockedError(StorageError, BlockingIOError):
    """Another process is changing the dataset (a merge, an append or a split).

    A :class:`StorageError` naming the dataset, and a ``BlockingIOError``; the message says
    who holds the dataset's lock and since when. Nothing was changed: run the operation
    again once the other writer has finished.
    """


class UnknownFormatError(CadstoreError, ValueError):
    """A path that holds none of the artefacts cadstore reads, or not the kind asked for.

    The message says what was found and what was expected (an item, a dataset, a JSON
    store, a manifest).
    """


class OutputExistsError(CadstoreError, FileExistsError):
    """An output path where something is in the way: not what was expected, or not empty."""


class MergeError(CadstoreError, ValueError):
    """A merge that cannot proceed: conflicting dtypes, a different dataset at the output, ..."""


class FlowError(CadstoreError, ValueError):
    """A flow that cannot run as defined: a task without its decorator, inputs no task
    produces, or a task function workers cannot import (the message names it)."""


class DatasetError(CadstoreError, ValueError):
    """A dataset query that names an unknown group, array, code or table."""


class UnavailableFeatureError(CadstoreError, NotImplementedError):
    """A specified feature that only the specified system's proprietary software provides.

    Raised, for example, by ``HOOPSTools.exportStreamCache`` (the proprietary viewer's
    format) and ``HOOPSTools.extract_holes`` (feature trees of proprietary CAD formats);
    the message names the feature and what cadstore offers instead.
    """


def os_problem(exc: OSError) -> str:
    """What went wrong in ``exc``, in the system's words, without its errno or file name.

    ``str(exc)`` of an ``OSError`` reads ``[Errno 2] No such file or directory: 'x.data'``;
    a message that names the file itself wants only the problem.

    Parameters
    ----------
    exc
        The error.

    Returns
    -------
    str
        Its ``strerror`` (or ``os.strerror`` of its ``errno``) with a capitalised first
        word in lower case, e.g. ``"no such file or directory"``; ``str(exc)`` for an
        error that carries neither.

    Examples
    --------
    >>> os_problem(FileNotFoundError(2, "No such file or directory", "x.data"))
    'no such file or directory'
    """
    text = exc.strerror or (os.strerror(exc.errno) if exc.errno else "")
    if not text:
        return str(exc)
    first = text.split(" ", 1)[0]
    # "No such ..." reads as the rest of a sentence; "I/O error" keeps its spelling.
    if first[:1].isupper() and first[1:].islower():
        return text[:1].lower() + text[1:]
    return text


def os_error_message(exc: OSError) -> str:
    """``exc`` as ``FILE: problem``, for a person: the file(s) it names, then
    :func:`os_problem`.

    Parameters
    ----------
    exc
        The error.

    Returns
    -------
    str
        ``"x.data: no such file or directory"``; ``"a -> b: ..."`` for an error naming
        two files (a rename); the problem alone when it names none; ``str(exc)`` for an
        error that carries no errno.

    Examples
    --------
    >>> os_error_message(PermissionError(13, "Permission denied", "parts/x.data"))
    'parts/x.data: permission denied'
    """
    problem = os_problem(exc)
    if not (exc.strerror or exc.errno):
        return problem
    names = [
        os.fsdecode(name) if isinstance(name, str | bytes | os.PathLike) else str(name)
        for name in (exc.filename, exc.filename2)
        if name is not None
    ]
    return f"{' -> '.join(names)}: {problem}" if names else problem


def os_storage_error(path: object, exc: OSError, doing: str = "") -> StorageError:
    """The :class:`StorageError` reporting ``exc``, an OSError raised working on ``path``.

    An OSError the system raises may name no file (EIO from a read of a shared disk), or
    name a member of the store rather than the store the caller was asked to read; this
    one names ``path``, says the problem in words (:func:`os_problem`) and keeps the kind,
    so that ``except PermissionError`` still catches a refused read.

    Parameters
    ----------
    path
        The file, directory or URL being worked on (an item, a dataset).
    exc
        The error.
    doing
        What was being done, put before the problem (``"reading it"``); none when empty.

    Returns
    -------
    StorageError
        :class:`StorageAccessError` for a ``PermissionError``,
        :class:`StorageNotFoundError` for a ``FileNotFoundError``,
        :class:`StorageUnavailableError` for a ``ConnectionError``, else
        :class:`StorageError`.

    Examples
    --------
    >>> str(os_storage_error("x.data", OSError(5, "Input/output error"), "reading it"))
    'x.data: reading it: input/output error'
    """
    kind: type[StorageError] = StorageError
    if isinstance(exc, PermissionError):
        kind = StorageAccessError
    elif isinstance(exc, FileNotFoundError):
        kind = StorageNotFoundError
    elif isinstance(exc, ConnectionError):
        kind = StorageUnavailableError
    problem = os_problem(exc)
    return kind(path, f"{doing}: {problem}" if doing else problem)
