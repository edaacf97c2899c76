"""A subscriber's side of the broker: one MQTT session at a time, reconnecting with backoff.

Used by ingestion (QoS 1, acknowledged once durable) and by the agent's device-reading intake
(QoS 0, cloud.agent.intake): both take PUBLISH packets in bulk, one call per socket read.

Packet ids belong to the connection that delivered them, so every connection gets a number
(`conn`) and acknowledgements are sent only to the connection they belong to; those of a lost
connection are dropped, and the broker redelivers the messages to the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Protocol

from tendril_transactive.cloud.mqtt.session import MqttError, MqttSession, PublishHandler, SessionOptions, open_session

log = logging.getLogger("tendril.mqtt")

SUBSCRIBE_BATCH = 100  # filters per SUBSCRIBE packet (a broker may limit a packet's size)


class LinkStats(Protocol):
    """The counters a link keeps up to date (ingestion's IngestStats is one)."""

    connects: int
    session_takeovers: int
    sessions_lost: int
    last_error: str | None

# MQTT 5 DISCONNECT reason 0x8E "Session taken over": another connection used our client id
# (cloud/mqtt/session.py reports the reason in its error text).
TAKEN_OVER = "reason 0x8e"


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` of real time unless `event` fires first; True if it fired."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=max(seconds, 0.0))
    return event.is_set()


class BrokerLink:
    def __init__(
        self,
        host: str,
        port: int,
        options: SessionOptions,
        filters: list[str],
        on_publishes: PublishHandler,
        stats: LinkStats,
        *,
        reconnect_min_s: float,
        reconnect_max_s: float,
        label: str = "",
        retire: bool = False,
        qos: int = 1,
        strict: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        """`qos`: of the subscription; `strict`: a refused filter is an error (reconnect and try
        again) rather than logged and left out; `logger`: the owning service's (its operators and
        tests read "subscribed on ..." and the ALARMs in that service's log)."""
        self._log = logger or log
        self.host, self.port, self.options, self.filters = host, port, options, filters
        self.qos, self.strict = qos, strict
        self.refused: list[str] = []  # filters the broker refused on the last subscribe (not strict)
        self._on_publishes = on_publishes
        self._stats = stats
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._label = label
        # Retiring: unsubscribe instead of subscribing, so the broker stops routing new messages
        # to this (persistent) session while what it already queued for us still arrives.
        self.retire = retire
        self.unsubscribed = asyncio.Event()
        self.ready = asyncio.Event()
        self.session: MqttSession | None = None
        self.conn = 0  # number of the current connection

    # ------------------------------------------------------------ used per message / batch

    def publish(self, topic: str, payload: bytes) -> bool:
        session = self.session
        return session is not None and session.is_open and session.publish(topic, payload, qos=1)

    def ack(self, conn: int, packet_ids: list[int]) -> None:
        session = self.session
        if packet_ids and conn == self.conn and session is not None and session.is_open:
            session.ack(packet_ids)

    def pause(self) -> None:
        if self.session is not None:
            self.session.pause_reading()

    def resume(self) -> None:
        if self.session is not None and self.session.paused:
            self.session.resume_reading()

    def close(self) -> None:
        self.ready.clear()
        if self.session is not None:
            self.session.close()
            self.session = None

    # ------------------------------------------------------------ the session loop

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected and subscribed until `stop`; the last session is left open so the final
        batches can still be acknowledged (then call `close`)."""
        delay = self._reconnect_min_s
        while not stop.is_set():
            session: MqttSession | None = None
            keepalive: asyncio.Task[None] | None = None
            try:
                session = await open_session(self.host, self.port, self.options, self._on_publishes)
                self.conn += 1
                self.session = session
                if self.conn > 1 and not session.session_present and not self.options.clean_start:
                    # The broker forgot us (restarted without persistence, expired, or another
                    # client's clean start took our id): whatever it queued for us is gone.
                    self._stats.sessions_lost += 1
                    self._log.error("ALARM: broker %s:%d has no session for %s any more: messages queued for it "
                              "while it was away are lost", self.host, self.port, self.options.client_id)
                keepalive = asyncio.create_task(session.keepalive())
                if self.retire:
                    await session.unsubscribe(self.filters)
                    self.unsubscribed.set()
                else:
                    await self._subscribe(session)
                self._stats.connects += 1
                self.ready.set()
                delay = self._reconnect_min_s
                self._log.info("%s on %s:%d as %s (MQTT %s%s)",
                               "unsubscribed, draining" if self.retire else "subscribed", self.host, self.port,
                               self.options.client_id, "5" if session.protocol == 5 else "3.1.1", self._label)
                closed = asyncio.create_task(session.wait_closed())
                stopped = asyncio.create_task(stop.wait())
                await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if stop.is_set():
                    closed.cancel()
                    return
                closed.result()
                raise MqttError("connection closed")
            except MqttError as exc:
                self.ready.clear()
                self.unsubscribed.clear()
                self._stats.last_error = f"mqtt: {exc}"[:300]
                if TAKEN_OVER in str(exc):
                    self._stats.session_takeovers += 1
                    self._log.error("ALARM: another client connected with our client id %s and took over the session "
                              "(check the broker's client-id binding, docs/security.md)", self.options.client_id)
                if session is not None:
                    session.close()
                self.session = None
                self._log.warning("broker %s:%d: %s; reconnecting in %.1f s", self.host, self.port, exc, delay)
                if await wait_event(stop, delay):
                    return
                delay = min(delay * 2, self._reconnect_max_s)
            finally:
                if keepalive is not None:
                    keepalive.cancel()

    async def _subscribe(self, session: MqttSession) -> None:
        refused: list[str] = []
        for i in range(0, len(self.filters), SUBSCRIBE_BATCH):
            refused += await session.subscribe(self.filters[i:i + SUBSCRIBE_BATCH], qos=self.qos, strict=self.strict)
        if refused and refused != self.refused:
            self._log.error("broker %s:%d refused %d subscription(s) of %s, e.g. %s", self.host, self.port,
                            len(refused), self.options.client_id, ", ".join(refused[:3]))
        self.refused = refused

    async def forget_session(self) -> None:
        """Make the broker drop this client id's session: connect with a clean start and an
        expiry of 0 (v5), which discards the old one, then disconnect."""
        options = dataclasses.replace(self.options, clean_start=True, session_expiry_s=0)
        session = await open_session(self.host, self.port, options, lambda _publishes: None)
        session.close()
