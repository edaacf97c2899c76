"""The zero-install demo broker: amqtt running inside the demo's own event loop.

Only for `tendril demo` without `--broker`. It is 7-10x slower than Mosquitto and did not
queue QoS 1 messages for offline sessions (docs/measured.md: measured with anonymous clients,
before this broker required logins), so no delivery guarantee is ever demonstrated on it: the
tests use a real Mosquitto.

Not anonymous: every client logs in with a user and password made for this run (the devices'
from the run's registry, the services' drawn here), checked against an argon2 password file only
the owner can read. So another local user can neither read the signed commands nor publish to a
command topic (issue 13, finding 8). Topic rights are the production broker's job (Mosquitto with
the registry's dynamic-security config); amqtt only authenticates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tendril_transactive.cloud.net import LOOPBACK, free_port


class _SnapshotKeys(dict[str, Any]):
    """amqtt 0.12's subscription table, iterated over a snapshot of its keys.

    amqtt walks `Broker._subscriptions` with an `await` inside the loop (retained messages for a
    new session); a client subscribing meanwhile adds a key and the walk raises "dictionary
    changed size during iteration", which ends that client's session. Seen in `tendril demo` on
    a loaded machine: 7 sessions lost at start-up, almost no command acked.
    """

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.keys()))


@dataclass
class EmbeddedBroker:
    host: str
    port: int
    password_file: Path | None = None  # user:argon2 hash lines; None = anonymous (unit tests only)
    _broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        from amqtt.broker import Broker

        # amqtt logs every connection at INFO; the demo has its own progress display.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        auth: dict[str, Any] = (
            {"amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(self.password_file)}}
            if self.password_file is not None
            else {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}})
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": auth,
        }
        self._broker = Broker(config)
        self._broker._subscriptions = _SnapshotKeys()
        await self._broker.start()

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """`users` (name -> password) as amqtt's password file, created 0600 (never readable by others)."""
    from pwdlib.hashers.argon2 import Argon2Hasher  # amqtt's own hasher (a dependency of amqtt)

    # Light argon2 parameters: the passwords are random and live for one run; the default
    # (64 MiB, 3 passes) would cost the demo a second per client at start.
    hasher = Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        for name, password in sorted(users.items()):
            fh.write(f"{name}:{hasher.hash(password)}\n")
    return path


def embedded_broker(password_file: Path | None = None) -> EmbeddedBroker:
    return EmbeddedBroker(LOOPBACK, free_port(), password_file)
