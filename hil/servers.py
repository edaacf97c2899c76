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

from tendril_transactive.cloud.net import LOOPBACK, free_port

__all__ = ["LOOPBACK", "free_port"]


class ServerUnavailable(RuntimeError):
    """The server's binary is not installed; the message names the Debian package."""


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
    tls_port: int | None = None  # start_mosquitto(tls=True): the TLS listener
    ca_file: Path | None = None  # the CA that signed its certificate (for localhost and 127.0.0.1)

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://{LOOPBACK}:{self.tls_port}"


@dataclass
class VictoriaMetrics(Server):
    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def export(
        self, match: str, start: float | None = None, end: float | None = None
    ) -> list[dict[str, object]]:
        """Read series back through /api/v1/export (one JSON object per line); `start`/`end`
        (unix seconds, inclusive) limit the samples."""
        self.flush()
        params: dict[str, str] = {"match[]": match}
        if start is not None:
            params["start"] = repr(float(start))
        if end is not None:
            params["end"] = repr(float(end))
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=30) as resp:
            body = resp.read().decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def flush(self) -> None:
        """Make just-written points visible to queries (VictoriaMetrics buffers them)."""
        with contextlib.suppress(urllib.error.URLError):
            urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=30).read()


def make_test_pki(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost/127.0.0.1: (ca, cert, key) PEM files."""
    import datetime

    from tendril_transactive.cloud.devices import tls_certs

    now = datetime.datetime.now(datetime.UTC)
    ca = tls_certs.make_ca(now, "Tendril test CA")
    server = tls_certs.make_server(ca, now, ["localhost", LOOPBACK])
    paths = (workdir / "ca.crt", workdir / "server.crt", workdir / "server.key")
    for path, data in zip(paths, (ca.cert, server.cert, server.key), strict=True):
        path.write_bytes(data)
        path.chmod(0o644)
    paths[2].chmod(0o600)
    # Started as root, Mosquitto drops to its `mosquitto` user before it reads these files.
    if os.geteuid() == 0:
        import pwd

        with contextlib.suppress(KeyError):
            os.chown(paths[2], pwd.getpwnam("mosquitto").pw_uid, -1)
            workdir.chmod(0o711)
    return paths


def start_mosquitto(
    workdir: Path, extra_conf: str = "", *, max_queued_messages: int = 100_000, max_inflight_messages: int = 100,
    tls: bool = False,
) -> Mosquitto:
    """`max_queued_messages` per offline or slow client (0: no limit; past it Mosquitto drops
    QoS 1 messages); `max_inflight_messages` unacknowledged per MQTT 3.1.1 client. `tls`: also a
    TLS listener (`tls_port`, certificate for localhost/127.0.0.1 signed by `ca_file`)."""
    binary = find_binary("mosquitto", "mosquitto")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    tls_port = free_port() if tls else None
    tls_conf, ca_file = "", None
    if tls:
        ca_file, cert, key = make_test_pki(workdir)
        tls_conf = f"listener {tls_port} {LOOPBACK}\ncafile {ca_file}\ncertfile {cert}\nkeyfile {key}\n"
    conf.write_text(
        "per_listener_settings false\n"
        f"listener {port} {LOOPBACK}\n"
        f"{tls_conf}"
        "allow_anonymous true\n"
        "persistence false\n"
        f"max_queued_messages {max_queued_messages}\n"
        f"max_inflight_messages {max_inflight_messages}\n"
        f"{extra_conf}"
    )
    server = Mosquitto("mosquitto", port, workdir, [binary, "-c", str(conf)], port, tls_port=tls_port,
                       ca_file=ca_file)
    server.start()
    if tls_port is not None:
        wait_for_port(tls_port, server.proc)  # type: ignore[arg-type]
    return server


def start_victoria_metrics(workdir: Path, *, dedup_ms: int | None = None) -> VictoriaMetrics:
    """`dedup_ms`: keep one sample per series per that many ms, which makes a repeated write of
    the same series and timestamp an overwrite, as in InfluxDB (VictoriaMetrics keeps both)."""
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
    if dedup_ms is not None:
        argv.append(f"-dedup.minScrapeInterval={dedup_ms}ms")
    server = VictoriaMetrics("victoria-metrics", port, workdir, argv, port)
    server.start()
    return server


@dataclass
class InfluxDB1(Server):
    """InfluxDB 1.x: line protocol on `/write?db=`, InfluxQL on `/query` (no auth, loopback only)."""

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def query(self, q: str, db: str | None = None, *, epoch: str = "s", post: bool = False) -> dict[str, object]:
        """Run InfluxQL on /query (GET reads; `post=True` for CREATE/DROP); returns the decoded JSON body,
        in which errors are reported per statement."""
        params = {"q": q, "epoch": epoch}
        if db is not None:
            params["db"] = db
        encoded = urllib.parse.urlencode(params)
        req = (urllib.request.Request(f"{self.url}/query", data=encoded.encode(), method="POST") if post
               else urllib.request.Request(f"{self.url}/query?{encoded}"))
        with urllib.request.urlopen(req, timeout=30) as resp:
            body: dict[str, object] = json.loads(resp.read().decode())
        return body

    def write(self, db: str, lines: list[str], precision: str = "ns") -> None:
        """POST line protocol to /write; raises urllib.error.HTTPError with the server's reason."""
        url = f"{self.url}/write?{urllib.parse.urlencode({'db': db, 'precision': precision})}"
        body = "".join(line + "\n" for line in lines).encode()
        req = urllib.request.Request(url, data=body, method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()


def start_influxdb1(workdir: Path) -> InfluxDB1:
    """Debian's `influxdb` 1.6: HTTP on a free loopback port, every other listener and reporting off."""
    binary = find_binary("influxd", "influxdb")
    port = free_port()
    rpc_port = free_port()  # the backup/restore RPC service cannot be turned off; keep it on loopback
    root = workdir / "influxdb"
    for sub in ("meta", "data", "wal"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = workdir / "influxdb.conf"
    conf.write_text(
        "reporting-disabled = true\n"
        f'bind-address = "{LOOPBACK}:{rpc_port}"\n'
        f'[meta]\n  dir = "{root / "meta"}"\n'
        f'[data]\n  dir = "{root / "data"}"\n  wal-dir = "{root / "wal"}"\n'
        '  query-log-enabled = false\n  wal-fsync-delay = "0s"\n'
        "[monitor]\n  store-enabled = false\n"
        "[subscriber]\n  enabled = false\n"
        "[continuous_queries]\n  enabled = false\n"
        "[ifql]\n  enabled = false\n"
        f'[http]\n  enabled = true\n  bind-address = "{LOOPBACK}:{port}"\n  auth-enabled = false\n'
        "  log-enabled = false\n"
        '[logging]\n  level = "warn"\n'
    )
    server = InfluxDB1("influxdb", port, workdir, [binary, "-config", str(conf)], port)
    server.start()
    return server


@contextlib.contextmanager
def running(kind: str) -> Iterator[Server]:
    """Context manager: a fresh server of `kind` ('mosquitto', 'victoria-metrics' or 'influxdb')."""
    workdir = Path(tempfile.mkdtemp(prefix=f"tendril-{kind}-"))
    server: Server | None = None
    try:
        if kind == "mosquitto":
            server = start_mosquitto(workdir)
        elif kind == "victoria-metrics":
            server = start_victoria_metrics(workdir)
        elif kind == "influxdb":
            server = start_influxdb1(workdir)
        else:
            raise ValueError(f"unknown server kind {kind!r}")
        yield server
    finally:
        if server is not None:
            server.stop()
        if os.environ.get("TENDRIL_KEEP_SERVER_DIRS") != "1":
            shutil.rmtree(workdir, ignore_errors=True)



# ------------------------------------------------------------------------------------ PostgreSQL

PG_USER = "tendril"
PG_DATABASE = "tendril"


def _postgres_bin_dir() -> Path:
    """Newest Debian PostgreSQL server install (postgresql-NN puts binaries outside PATH)."""
    found = shutil.which("postgres")
    if found and (Path(found).resolve().parent / "initdb").exists():
        return Path(found).resolve().parent  # /usr/local/bin links point into the versioned folder
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not versions:
        raise ServerUnavailable("postgres not found: install the Debian package 'postgresql' "
                                "(apt-get install postgresql)")
    return versions[-1].parent


def _as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; as root, drop to the `postgres` system user (setpriv execs,
    so signals reach the server itself)."""
    if os.geteuid() != 0:
        return argv
    setpriv = find_binary("setpriv", "util-linux")
    return [setpriv, "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]


@dataclass
class Postgres(Server):
    user: str = PG_USER
    database: str = PG_DATABASE

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver); trust auth, loopback only."""
        return f"postgresql+psycopg://{self.user}@{LOOPBACK}:{self.port}/{self.database}"

    def stop(self, sig: int = signal.SIGINT) -> None:
        # SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client to leave;
        # SIGINT is "fast": roll back open sessions and stop.
        super().stop(sig)


def start_postgres(workdir: Path) -> Postgres:
    """A throwaway PostgreSQL cluster in `workdir` on a free loopback port, database `tendril`."""
    bindir = _postgres_bin_dir()
    port = free_port()
    pgroot = workdir / "pg"
    pgroot.mkdir(exist_ok=True)
    data, sockets = pgroot / "data", pgroot / "sock"
    sockets.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerUnavailable("no 'postgres' system user to run the server as: install the Debian "
                                    "package 'postgresql' (it creates the user)") from None
        workdir.chmod(0o711)  # the server user must reach its own folders, nothing else
        for path in (pgroot, sockets):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust",
              "--encoding=UTF8", "--locale=C", "--no-sync"]
    done = subprocess.run(_as_postgres_user(initdb), capture_output=True, text=True, timeout=120, cwd=pgroot)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    argv = _as_postgres_user([
        str(bindir / "postgres"), "-D", str(data), "-p", str(port),
        "-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={sockets}",
        # a test database: durability is not what is under test, speed of setup is
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
    ])
    server = Postgres("postgres", port, workdir, argv, port)
    server.start()
    try:
        _create_database(bindir, port, server)
    except BaseException:
        server.stop()
        raise
    return server


def _create_database(bindir: Path, port: int, server: Postgres, timeout: float = 30.0) -> None:
    # The port opens before the server accepts sessions; retry until createdb gets through.
    deadline = time.monotonic() + timeout
    argv = [str(bindir / "createdb"), "-h", LOOPBACK, "-p", str(port), "-U", PG_USER, PG_DATABASE]
    while True:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"createdb failed: {done.stderr.strip()[-300:]}\n{server.log_tail()}")
        time.sleep(0.1)


# ------------------------------------------------------------------ Mosquitto with a generated config


def start_mosquitto_generated(conf: Path, port: int, workdir: Path) -> Mosquitto:
    """Mosquitto started with a config written by `tendril device mosquitto-config` (its
    listener on `port`); the log goes to `workdir`. Started as root, the broker drops to the
    config's `user` (mosquitto), which must be able to reach and read every file it names."""
    binary = find_binary("mosquitto", "mosquitto")
    server = Mosquitto("mosquitto", port, workdir, [binary, "-c", str(conf)], port)
    server.start()
    return server
