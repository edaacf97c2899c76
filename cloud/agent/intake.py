"""The agent's intake of device readings (telemetry and status): a connection of its own.

A worker reads every reading of every site it may serve: at 1,000 sites that is 60 of the 64
messages per site and real-time interval it receives. Through the aiomqtt client that carries
tenders, confirms and acks, each reading was its own hand-over (a paho callback, a queue, a task
woken per message): ~200 us of the worker's event loop per reading, the bulk of its 13.7 ms per
site and interval, and the real-time round's answers waited behind it (bench/loop.py,
docs/loop-bench.md). Here readings arrive on a second MQTT connection through the subscriber
ingestion uses (cloud.mqtt.link): PUBLISH packets parsed in bulk, one call per socket read,
QoS 0 (the agent wants the latest state, not every reading, and the broker queues nothing for it
while it is away). Tenders, confirms and acks stay on the QoS 1 session, where losing one matters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import tendril_wire as wire

from tendril_transactive.cloud.mqtt.codec import V311, RawPublish
from tendril_transactive.cloud.mqtt.link import BrokerLink
from tendril_transactive.cloud.mqtt.message import Received, receive
from tendril_transactive.cloud.mqtt.session import SessionOptions
from tendril_transactive.cloud.settings import BrokerSettings

log = logging.getLogger("tendril.agent")

KINDS = (wire.TELEMETRY, wire.STATUS)
CLIENT_ID_SUFFIX = "-readings"


@dataclass
class IntakeStats:
    connects: int = 0
    session_takeovers: int = 0
    sessions_lost: int = 0
    last_error: str | None = None
    readings: int = 0  # decoded and handed to a site this worker owns
    not_owned: int = 0  # another worker's site: skipped before decoding
    malformed: int = 0  # ingestion dead-letters these; the agent just does not use them


def reading_filters(sites: Iterable[str]) -> list[str]:
    """Per site, not `+`: the broker grants an agent user its own sites' topics only."""
    return [wire.device_filter(kind, site) for site in sorted(sites) for kind in KINDS]


class DeviceIntake:
    def __init__(self, broker: BrokerSettings, client_id: str, sites: Iterable[str],
                 owns: Callable[[str], bool], sink: Callable[[Received], None], *,
                 keepalive_s: int = 15, reconnect_max_s: float = 10.0) -> None:
        """`owns(site)`: whether this worker serves the site now (others are skipped undecoded);
        `sink`: takes each reading of an owned site, in arrival order."""
        self.stats = IntakeStats()
        self._owns, self._sink = owns, sink
        # MQTT 3.1.1 as the QoS 1 session (aiomqtt's default): QoS 0 needs nothing of 5, and
        # probing for 5 costs a broker that does not answer it (amqtt) seconds per connect.
        options = SessionOptions(client_id + CLIENT_ID_SUFFIX, keepalive_s=keepalive_s, clean_start=True,
                                 username=broker.username, password=broker.password, session_expiry_s=0,
                                 protocol=V311, tls=broker.tls)
        self.link = BrokerLink(broker.host, broker.port, options, reading_filters(sites), self._on_publishes,
                               self.stats, reconnect_min_s=0.5, reconnect_max_s=reconnect_max_s,
                               label=", device readings", qos=0, strict=False, logger=log)

    @property
    def ready(self) -> asyncio.Event:
        return self.link.ready

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected and subscribed until `stop`, then disconnect."""
        try:
            await self.link.run(stop)
        finally:
            self.link.close()

    def _on_publishes(self, publishes: list[RawPublish]) -> None:
        for topic, payload, _packet_id, _qos in publishes:
            try:
                site, _device, kind = wire.parse_topic(topic)
                if kind not in KINDS:
                    continue
                if not self._owns(site):
                    self.stats.not_owned += 1
                    continue
                message = receive(topic, payload)
            except wire.ContractError:
                self.stats.malformed += 1
                continue
            self.stats.readings += 1
            self._sink(message)
