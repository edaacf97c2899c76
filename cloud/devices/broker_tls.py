"""The TLS files of a generated broker config: where the CA lives, which files the broker reads.

The registry keeps the CA (`mqtt-ca.crt`, public; `ca-private/mqtt-ca.key`, 0600, in a 0700
folder apart from `secrets/`), made on first use and reused after, because every device carries
that CA on its flash. The broker's folder (`--out`) gets `ca.crt`, `server.crt` and `server.key`,
secured like the password files (root:mosquitto 0640, broker_conf.secure). An operator's own CA
and server certificate are checked (tls_certs.check_server) and copied there instead; then the
registry's CA is not used.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from tendril_transactive.cloud.devices import tls_certs
from tendril_transactive.cloud.devices.tls_certs import CertError, Pem

CA_CERT = "mqtt-ca.crt"
# Not under secrets/: that folder is what the agent's container mounts (the devices' command
# keys), and the agent must not be able to sign a server or device certificate.
CA_KEY = "ca-private/mqtt-ca.key"
_OLD_CA_KEY = "secrets/mqtt-ca.key"  # where registries made before 2026-12-07 keep it
OUT_CA, OUT_CERT, OUT_KEY = "ca.crt", "server.crt", "server.key"
_WILDCARD_BINDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class OwnFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)  # made anew: an older, wider-open copy never keeps its mode
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def registry_ca(root: Path, now: datetime.datetime) -> Pem:
    """The registry's CA, made the first time (the devices keep trusting it afterwards)."""
    cert, key = root / CA_CERT, root / CA_KEY
    old = root / _OLD_CA_KEY
    if old.exists() and not key.exists():
        key.parent.mkdir(exist_ok=True, mode=0o700)
        os.replace(old, key)  # same file system: the key moves, it is never copied
    if cert.exists() and key.exists():
        return Pem(cert.read_bytes(), key.read_bytes())
    if cert.exists() or key.exists():
        raise CertError(f"{cert} and {key} come as a pair: one is missing (restore it, or delete both to make "
                        "a new CA and redeploy it to every device)")
    ca = tls_certs.make_ca(now)
    _write(key, ca.key, 0o600)
    _write(cert, ca.cert, 0o644)
    return ca


def default_hostnames(bind: str) -> list[str]:
    """Names clients may dial: this host's name, localhost, loopback, and the bound address."""
    names = [socket.getfqdn(), socket.gethostname(), "localhost", "127.0.0.1"]
    if bind not in _WILDCARD_BINDS:
        names.append(bind)
    return list(dict.fromkeys(n for n in names if n))


def write_tls_files(root: Path, out: Path, now: datetime.datetime, hostnames: list[str],
                    own: OwnFiles | None) -> tuple[list[Path], list[str]]:
    """Write ca.crt, server.crt, server.key into `out`; returns (files, the names the server
    certificate covers). Raises CertError (operator's files) or OSError."""
    if own is not None:
        try:
            ca_pem, cert_pem, key_pem = (own.ca_cert.read_bytes(), own.server_cert.read_bytes(),
                                         own.server_key.read_bytes())
        except OSError as exc:
            raise CertError(f"cannot read {exc.filename}: {exc.strerror}") from None
        names = tls_certs.check_server(ca_pem, cert_pem, key_pem)
    else:
        ca = registry_ca(root, now)
        server = tls_certs.make_server(ca, now, hostnames)
        ca_pem, cert_pem, key_pem, names = ca.cert, server.cert, server.key, hostnames
    files = [out / OUT_CA, out / OUT_CERT, out / OUT_KEY]
    for path, data in zip(files, (ca_pem, cert_pem, key_pem), strict=True):
        _write(path, data, 0o600)  # broker_conf.secure opens them to the broker's group
    return files, names


def write_client_cert(root: Path, out_dir: Path, now: datetime.datetime, client_id: str) -> tuple[Path, Path]:
    """Mutual TLS: a certificate whose CN is `client_id`, signed by the registry's CA, as
    `out_dir/<client_id>.crt` and `.key` (0600: the device's own secret)."""
    ca = registry_ca(root, now)
    pem = tls_certs.make_client(ca, now, client_id)
    cert, key = out_dir / f"{client_id}.crt", out_dir / f"{client_id}.key"
    _write(cert, pem.cert, 0o644)
    _write(key, pem.key, 0o600)
    return cert, key
