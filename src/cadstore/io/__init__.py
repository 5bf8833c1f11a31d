"""Where bytes live: locations, file systems, publication and key sources.

==========================  ===========================================================
module                      owns
==========================  ===========================================================
:mod:`~.location`           :class:`Location`: a path or URL resolved once, with its
                            file system and options (:func:`resolve`)
:mod:`~.filesystems`        reading, listing and removing on local disk and, through
                            fsspec, object stores; their errors translated
:mod:`~.publish`            every atomic publication: files, objects, dataset zips,
                            directories and prefixes; fsyncs; temporary files
:mod:`~.sources`            key-value views of a store (zip, directory, prefix) and
                            :func:`open_source`, the one way to open one
:mod:`~.zipwriter`          the zip container writer
:mod:`~.parquet`            the Parquet tables beside a dataset
:mod:`~.native`             the C library calls Python lacks (syncfs, renameat2, madvise)
==========================  ===========================================================

Nothing else in cadstore touches files directly.
"""

from __future__ import annotations

from cadstore.io.location import Location, is_url, resolve

__all__ = ["Location", "is_url", "resolve"]
