"""Every Python block of the README and of ``docs/`` runs as written.

A page's ```` ```python ```` blocks are joined in order into one script, which runs in a
fresh empty folder in a child process, as a reader following the page would run them.
Other blocks (``bash``, ``text``) are not run. A page that begins with
``<!-- docs-test: s3 -->`` talks to S3 through the environment: the test starts a real
SeaweedFS server on loopback, exports its endpoint and credentials as the ``AWS_*``
variables and creates the bucket ``bucket`` before running it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_S3_MARKER = "<!-- docs-test: s3 -->"


def python_blocks(text: str) -> list[str]:
    """Return the page's Python blocks, in order."""
    return [match.group(1) for match in _BLOCK.finditer(text)]


def test_every_page_is_found_and_has_code() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "format.md", "object-storage.md", "benchmarks.md"} <= names
    assert {page.name for page in WITH_CODE} >= {
        "README.md",
        "format.md",
        "object-storage.md",
        "architecture.md",
    }
    assert len(python_blocks((ROOT / "README.md").read_text())) >= 5


#: The pages with Python blocks to run (others hold only shell commands and tables).
WITH_CODE = [page for page in PAGES if python_blocks(page.read_text())]


def test_block_extraction_keeps_order_and_skips_other_languages() -> None:
    text = "a\n```python\nx = 1\n```\n```bash\nrm -rf /\n```\n```python\nprint(x)\n```\n"
    assert python_blocks(text) == ["x = 1\n", "print(x)\n"]


def _run(page: Path, workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = workdir / f"{page.stem}_blocks.py"
    script.write_text("\n".join(python_blocks(page.read_text())))
    return subprocess.run(
        [sys.executable, script.name],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize("page", WITH_CODE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_code_runs_as_written(page: Path, tmp_path: Path) -> None:
    text = page.read_text()
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "error::ResourceWarning"}
    workdir = tmp_path / "work"
    workdir.mkdir()
    if text.startswith(_S3_MARKER):
        done = _run_against_s3(page, tmp_path, workdir, env)
    else:
        done = _run(page, workdir, env)
    assert done.returncode == 0, f"{page.name}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-6000:]
    # A warning is a step the reader is told to take, or a slow path taken (xarray's
    # "Failed to open Zarr store with consolidated metadata"): the pages show none.
    assert "Warning" not in done.stderr, done.stderr[-6000:]


def _run_against_s3(
    page: Path, tmp_path: Path, workdir: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("s3fs")
    sys.path.insert(0, str(Path(__file__).parent))
    from s3server import WeedUnavailableError, start_weed

    data_dir = tmp_path / "weed"
    try:
        server = start_weed(data_dir)
    except WeedUnavailableError as exc:
        pytest.skip(f"SeaweedFS cannot run on this machine: {exc}")
    try:
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options()).mkdir("bucket")
        env = {
            **env,
            "AWS_ENDPOINT_URL": server.endpoint,
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        return _run(page, workdir, env)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_the_ways_to_feed_a_model_are_counted_and_run_as_shown(tmp_path: Path) -> None:
    """docs/training.md said "three ways" over a table of four, and showed
    ``DataLoader(*subset.to_torch_with_collate())``, which passes the collate function
    as ``batch_size`` (a ``ValueError``). The count matches the rows, and each way's code
    in the table's first column runs as written: assignments first, then each expression
    gives a batch."""
    torch_data = pytest.importorskip("torch.utils.data")
    import cadstore
    from cadstore.dataset import DatasetLoader
    from cadstore.synthetic import iter_items, write_item

    text = (ROOT / "docs" / "training.md").read_text()
    intro = re.search(r"cadstore gives\s+(\w+) ways to feed a model", text)
    assert intro is not None
    rows = re.findall(r"^\| (`.*?) \| .* \| .* \|$", text, re.MULTILINE)
    words = {"two": 2, "three": 3, "four": 4, "five": 5}
    assert words[intro.group(1)] == len(rows), rows
    items = [
        write_item(str(tmp_path / f"{name}.zarr"), item, meta) for name, item, meta in iter_items(4)
    ]
    cadstore.merge(items, str(tmp_path / "p.dataset"))
    with DatasetLoader(flow_output_file=tmp_path / "p.flow") as loader:
        loader.split("random", train=0.5, validation=0.25, test=0.25, random_state=0)
        scope: dict[str, object] = {
            "subset": loader.get_dataset("train"),
            "batch_size": 2,
            "DataLoader": torch_data.DataLoader,
        }
        for row in rows:
            spans = re.findall(r"`([^`]+)`", row)
            for span in (s for s in spans if " = " in s):
                exec(span, scope)  # noqa: S102 - the page's own code, as test_page_code_runs_as_written runs it
            for span in (s for s in spans if " = " not in s):
                ways = eval(span, scope)  # noqa: S307 - likewise
                try:
                    assert next(iter(ways)) is not None, span
                finally:
                    getattr(ways, "close", lambda: None)()
