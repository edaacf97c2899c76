"""The zero-install demo broker: amqtt running inside the demo's own event loop.

Only for `tendril demo` without `--broker`. It is ~10x slower than Mosquitto and does
not queue QoS 1 messages for offline sessions (MEASURED.md), so no delivery guarantee
is ever demonstrated on it: the tests use a real Mosquitto.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from cloud.net import LOOPBACK, free_port


@dataclass
class EmbeddedBroker:
    host: str
    port: int
    _broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        from amqtt.broker import Broker

        # amqtt logs every connection at INFO; the demo has its own progress display.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        await self._broker.start()

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None


def embedded_broker() -> EmbeddedBroker:
    return EmbeddedBroker(LOOPBACK, free_port())
