"""Real servers for tests, benches and benchmarks, started on free 127.0.0.1 ports.

Each server runs as a child process in its own temporary directory and is stopped
(and its directory removed) on exit. Nothing here assumes a service is already
running, and nothing listens anywhere but loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ServerUnavailable(RuntimeError):
    """The server's binary is not installed; the message names the Debian package."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary(name: str, package: str, extra_dirs: tuple[str, ...] = ("/usr/sbin", "/usr/bin")) -> str:
    found = shutil.which(name)
    if found:
        return found
    for folder in extra_dirs:
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    raise ServerUnavailable(f"{name} not found: install the Debian package '{package}' (apt-get install {package})")


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout} s")


@dataclass
class Server:
    """A running child server. `stop()` then `start()` restarts it on the same port and data."""

    name: str
    port: int
    workdir: Path
    argv: list[str]
    ready_port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        wait_for_port(self.ready_port, self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Mosquitto(Server):
    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"


@dataclass
class VictoriaMetrics(Server):
    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def export(self, match: str) -> list[dict[str, object]]:
        """Read series back through /api/v1/export (one JSON object per line)."""
        self.flush()
        query = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=30) as resp:
            body = resp.read().decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def flush(self) -> None:
        """Make just-written points visible to queries (VictoriaMetrics buffers them)."""
        with contextlib.suppress(urllib.error.URLError):
            urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=30).read()


def start_mosquitto(workdir: Path, extra_conf: str = "") -> Mosquitto:
    binary = find_binary("mosquitto", "mosquitto")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {LOOPBACK}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 100000\n"
        "max_inflight_messages 100\n"
        f"{extra_conf}"
    )
    server = Mosquitto("mosquitto", port, workdir, [binary, "-c", str(conf)], port)
    server.start()
    return server


def start_victoria_metrics(workdir: Path) -> VictoriaMetrics:
    binary = find_binary("victoria-metrics", "victoria-metrics")
    port = free_port()
    data = workdir / "vmdata"
    data.mkdir(exist_ok=True)
    argv = [
        binary,
        f"-httpListenAddr={LOOPBACK}:{port}",
        f"-storageDataPath={data}",
        "-retentionPeriod=100y",
        # Demo and test data is stamped in 2024; don't reject it as too old.
        "-search.disableCache",
        "-loggerLevel=WARN",
    ]
    server = VictoriaMetrics("victoria-metrics", port, workdir, argv, port)
    server.start()
    return server


@contextlib.contextmanager
def running(kind: str) -> Iterator[Server]:
    """Context manager: a fresh server of `kind` ('mosquitto' or 'victoria-metrics')."""
    workdir = Path(tempfile.mkdtemp(prefix=f"tendril-{kind}-"))
    server: Server | None = None
    try:
        if kind == "mosquitto":
            server = start_mosquitto(workdir)
        elif kind == "victoria-metrics":
            server = start_victoria_metrics(workdir)
        else:
            raise ValueError(f"unknown server kind {kind!r}")
        yield server
    finally:
        if server is not None:
            server.stop()
        if os.environ.get("TENDRIL_KEEP_SERVER_DIRS") != "1":
            shutil.rmtree(workdir, ignore_errors=True)

