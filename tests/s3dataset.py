"""A merged dataset on a real S3 server (SeaweedFS), for the dataset and CLI tests on S3.

The dataset is merged on local disk and its four files (``.dataset``, ``.infoset``,
``.attribset``, ``.flow``) uploaded under one prefix, so the read side is tested whatever
the state of the merge layer's own URL support; the local copy is the reference every
result on S3 is compared with.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import s3fs

import cadstore
from conftest import write_items
from s3server import WeedServer, WeedUnavailableError, start_weed

BUCKET = "cadstore-read"
SUFFIXES = (".dataset", ".infoset", ".attribset", ".flow")
# A refused request must fail in seconds, not after botocore's retries.
FAST_FAIL = {"retries": {"max_attempts": 1}, "connect_timeout": 5, "read_timeout": 20}


@dataclass(frozen=True)
class S3Dataset:
    """One merged dataset, on local disk and uploaded to the server.

    Attributes
    ----------
    server
        The running server.
    local
        The local ``.flow`` manifest (its siblings share the stem).
    prefix
        ``s3://<bucket>/<run>``: the uploaded files are ``<prefix>/<stem><suffix>``.
    """

    server: WeedServer
    local: Path
    prefix: str

    def options(self, **extra: Any) -> dict[str, Any]:
        """Storage options with valid credentials (a fresh s3fs client each time)."""
        return self.server.storage_options(skip_instance_cache=True, **extra)

    def client(self) -> s3fs.S3FileSystem:
        """An s3fs client of its own, to look at the bucket behind cadstore's back."""
        return s3fs.S3FileSystem(**self.options())

    def url(self, suffix: str = ".dataset", prefix: str | None = None) -> str:
        """URL of one of the dataset's files."""
        return f"{prefix or self.prefix}/{self.local.stem}{suffix}"

    def local_path(self, suffix: str = ".dataset") -> str:
        """Local path of one of the dataset's files."""
        return str(self.local.with_suffix(suffix))

    def copy_to(self, name: str) -> str:
        """Copy the four files to a new prefix (for tests that change them); return it."""
        prefix = f"s3://{BUCKET}/{name}-{secrets.token_hex(3)}"
        client = self.client()
        for suffix in SUFFIXES:
            client.copy(self.url(suffix), self.url(suffix, prefix))
        return prefix


def start_or_skip(data_dir: Path) -> WeedServer:
    """Start ``weed mini``, or skip with the reason when the binary cannot run here."""
    try:
        return start_weed(data_dir)
    except WeedUnavailableError as exc:
        pytest.skip(f"SeaweedFS cannot run on this machine: {exc}")


def s3_dataset(tmp: Path, n_items: int, seed: int) -> Iterator[S3Dataset]:
    """Start a server, merge ``n_items`` realistic items, upload them; stop at the end."""
    server = start_or_skip(tmp / "weed")
    try:
        items = write_items(tmp / "encoded", n_items, seed=seed)
        out = tmp / "parts.dataset"
        cadstore.merge([str(p) for p, _, _ in items], str(out))
        client = s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options())
        client.mkdir(BUCKET)
        prefix = f"s3://{BUCKET}/{secrets.token_hex(4)}"
        for suffix in SUFFIXES:
            client.put_file(str(out.with_suffix(suffix)), f"{prefix}/parts{suffix}")
        yield S3Dataset(server, out.with_suffix(".flow"), prefix)
    finally:
        server.stop()
        shutil.rmtree(tmp / "weed", ignore_errors=True)
