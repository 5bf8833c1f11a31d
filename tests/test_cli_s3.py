"""The command line on S3 URLs (a real SeaweedFS server): same output as on local files.

``--storage-option KEY=VALUE`` (before or after the command) carries credentials and the
endpoint; the environment (``AWS_*``) works too. Wrong credentials, a missing bucket and a
malformed option are one-line errors with exit status 2.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from cadstore.cli import main
from cadstore.cli._common import CommandError, parse_storage_options
from s3dataset import BUCKET, S3Dataset, s3_dataset

N_ITEMS = 24


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Dataset]:
    """The module's server, its uploaded dataset, and one item uploaded next to it."""
    tmp = tmp_path_factory.mktemp("clis3")
    for env in s3_dataset(tmp, N_ITEMS, seed=9):
        item = sorted((tmp / "encoded").glob("*.data"))[0]
        env.client().put_file(str(item), f"{env.prefix}/item.zarr.data")
        yield env


def _flags(data: S3Dataset, secret: str | None = None) -> list[str]:
    options = data.server.storage_options()
    return [
        "--storage-option",
        f"key={options['key']}",
        "--storage-option",
        f"secret={secret or options['secret']}",
        "--storage-option",
        f"client_kwargs.endpoint_url={data.server.endpoint}",
        "--storage-option",
        "client_kwargs.region_name=us-east-1",
        # One attempt: a refused request fails at once instead of being retried.
        "--storage-option",
        'config_kwargs={"retries": {"max_attempts": 1}}',
        "--storage-option",
        "skip_instance_cache=true",
    ]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _local_item(data: S3Dataset) -> str:
    return str(sorted((data.local.parent / "encoded").glob("*.data"))[0])


def test_parse_storage_options() -> None:
    assert parse_storage_options(None) is None
    assert parse_storage_options(
        [
            "key=abc",
            "anon=false",
            "client_kwargs.endpoint_url=http://127.0.0.1:1",
            "client_kwargs.region_name=us-east-1",
            'config_kwargs={"retries": {"max_attempts": 2}}',
            "default_block_size=1024",
            "token=",
        ]
    ) == {
        "key": "abc",
        "anon": False,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:1", "region_name": "us-east-1"},
        "config_kwargs": {"retries": {"max_attempts": 2}},
        "default_block_size": 1024,
        "token": "",
    }
    for bad in (["novalue"], ["=x"], ["a..b=1"], ["a=1", "a.b=2"]):
        with pytest.raises(CommandError, match="--storage-option"):
            parse_storage_options(bad)


def test_inspect_dataset_and_item_urls_equal_local(
    data: S3Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    for url, local in (
        (data.url(".dataset"), data.local_path(".dataset")),
        (data.url(".flow"), data.local_path(".flow")),
        (f"{data.prefix}/item.zarr.data", _local_item(data)),
        # An item named by its store path, as OptStorage takes it.
        (f"{data.prefix}/item.zarr", _local_item(data)),
    ):
        code, out, err = _run(capsys, "inspect", url, "--json", *_flags(data))
        assert code == 0, err
        remote = json.loads(out)
        expected = json.loads(_inspect_json(capsys, local))
        for doc in (remote, expected):
            doc.pop("path")
            doc.pop("location")
        assert remote == expected, url


def _inspect_json(capsys: pytest.CaptureFixture[str], path: str) -> str:
    code, out, err = _run(capsys, "inspect", path, "--json")
    assert code == 0, err
    return out


def test_info_on_a_manifest_url(data: S3Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    # Options may also come before the command.
    code, out, err = _run(capsys, *_flags(data), "info", data.url(".flow"))
    assert code == 0, err
    assert out == _run(capsys, "info", data.local_path(".flow"))[1]
    code, out, err = _run(capsys, "info", data.url(".dataset"), "--json", *_flags(data))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["items"] == N_ITEMS and "face_areas" in summary["groups"]["faces"]


def test_cat_on_urls(data: S3Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    cases = (
        (
            [f"{data.prefix}/item.zarr.data", "face_areas"],
            [_local_item(data), "face_areas"],
        ),
        (
            [data.url(".dataset"), "faces/face_areas", "--item", "7"],
            [data.local_path(".dataset"), "faces/face_areas", "--item", "7"],
        ),
    )
    for remote, local in cases:
        code, out, err = _run(capsys, "cat", *remote, "--json", *_flags(data))
        assert code == 0, err
        got = json.loads(out)
        want = json.loads(_run(capsys, "cat", *local, "--json")[1])
        assert got.pop("path") != want.pop("path")
        assert got == want
        np.testing.assert_array_equal(np.asarray(got["value"]), np.asarray(want["value"]))


def test_split_and_report_on_s3(data: S3Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = data.copy_to("clisplit")
    code, out, err = _run(
        capsys, "split", data.url(".flow", prefix), "--key", "file_label", "--json", *_flags(data)
    )
    assert code == 0, err
    counts = json.loads(out)
    assert sum(counts.values()) == N_ITEMS
    # The split is in the infoset on S3, as a later loader sees it.
    from cadstore.dataset.explorer import DatasetExplorer

    with DatasetExplorer(data.url(".flow", prefix), storage_options=data.options()) as ex:
        recorded = ex.get_file_info_all()["subset"].value_counts().to_dict()
    assert recorded == {k: v for k, v in counts.items() if v}
    pytest.importorskip("matplotlib")
    report = f"{prefix}/report.html"
    code, out, err = _run(
        capsys, "report", data.url(".dataset", prefix), "-o", report, *_flags(data)
    )
    assert code == 0, err
    page = data.client().cat_file(report).decode("utf-8")
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page


def test_credentials_from_the_environment(data: S3Dataset) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    env.update(
        AWS_ACCESS_KEY_ID=data.server.access_key,
        AWS_SECRET_ACCESS_KEY=data.server.secret_key,
        AWS_ENDPOINT_URL=data.server.endpoint,
        AWS_DEFAULT_REGION="us-east-1",
    )
    done = subprocess.run(
        [sys.executable, "-m", "cadstore", "info", data.url(".flow"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["items"] == N_ITEMS


def test_wrong_credentials_missing_bucket_and_bad_options(
    data: S3Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = _flags(data, secret=secrets.token_hex(16))
    failures: list[tuple[list[str], str]] = [
        (["info", data.url(".flow"), *wrong], "access denied"),
        (["inspect", data.url(".dataset"), *wrong], "access denied"),
        (["cat", f"{data.prefix}/item.zarr.data", "face_areas", *wrong], "access denied"),
        (
            ["info", "s3://no-such-bucket-here/parts.dataset", *_flags(data)],
            "bucket 'no-such-bucket-here' does not exist",
        ),
        (
            ["inspect", "s3://no-such-bucket-here/parts.dataset", *_flags(data)],
            "bucket 'no-such-bucket-here' does not exist",
        ),
        (["inspect", f"s3://{BUCKET}/nothing/here.dataset", *_flags(data)], "no such object"),
        (["info", data.url(".flow"), "--storage-option", "novalue"], "expected KEY=VALUE"),
    ]
    for argv, message in failures:
        code, out, err = _run(capsys, *argv)
        assert code == 2, (argv, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cadstore: error: "), err
        assert message in lines[0], (argv, err)


def test_merge_to_s3_then_info(data: S3Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    items = sorted(str(p) for p in (data.local.parent / "encoded").glob("*.data"))
    output = f"{data.prefix}/merged/parts"
    code, out, err = _run(capsys, "merge", *items, "-o", output, "--json", *_flags(data))
    assert code == 0, err
    code, out, err = _run(capsys, "info", output + ".flow", "--json", *_flags(data))
    assert code == 0, err
    assert json.loads(out) == json.loads(
        _run(capsys, "info", data.local_path(".flow"), "--json")[1]
    )
