"""The cloud's side of the bench: a paho-mqtt client on the real broker that publishes tenders and
commands and records everything the device publishes, each message stamped on arrival."""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho
import tendril_wire as tw
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud.mqtt.message import Received, receive
from tendril_transactive.hil.servers import LOOPBACK

__all__ = ["BrokerSide", "BrokerTimeout", "Received"]


class BrokerTimeout(TimeoutError):
    """Nothing matching arrived in time; the message says what was awaited."""


class BrokerSide:
    _ids = itertools.count()

    def __init__(self, host: str, port: int, site: str, device: str, timeout: float = 10.0) -> None:
        self.site = site
        self.device = device
        self.messages: list[Received] = []
        self.invalid: list[tuple[str, str]] = []  # (topic, reason) of payloads the contract refused
        self._cond = threading.Condition()
        subscribed: queue.Queue[bool] = queue.Queue()
        topics = [tw.device_filter(kind, site, device) for kind in tw.DEVICE_KINDS if kind != tw.CMD]
        topics.append(tw.tender_filter(site))
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hil-bench-{next(self._ids)}")
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda _c, _u, _mid, _rc, _p: subscribed.put(True)
        self.client.on_message = self._on_message
        self.client.connect(host or LOOPBACK, port, keepalive=60)
        self.client.loop_start()
        try:
            subscribed.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise BrokerTimeout(f"no SUBACK from the broker on {host}:{port} within {timeout} s") from None

    def _on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        now = time.monotonic()
        try:
            got = receive(message.topic, bytes(message.payload), bool(message.retain), now)
        except tw.ContractError as exc:
            self.invalid.append((message.topic, exc.reason))
            return
        with self._cond:
            self.messages.append(got)
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes, timeout: float = 10.0) -> float:
        """QoS 1 publish, waits for the broker's PUBACK; returns time.monotonic() just before sending."""
        t0 = time.monotonic()
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=timeout)
        if not info.is_published():
            raise BrokerTimeout(f"the broker did not PUBACK our publish to {topic} within {timeout} s")
        return t0

    def wait_for(self, what: str, match: Callable[[Received], bool], timeout: float, since: int = 0) -> Received:
        """The first message at index >= `since` that matches; BrokerTimeout otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for got in self.messages[since:]:
                    if match(got):
                        return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = "\n".join(f"  {m.kind} {json.dumps(m.msg)[:160]}" for m in self.messages[-8:])
                    raise BrokerTimeout(f"no {what} within {timeout} s; last messages:\n{tail}")
                self._cond.wait(remaining)

    def mark(self) -> int:
        """Index to pass as `since` for messages after now."""
        with self._cond:
            return len(self.messages)

    def of_kind(self, kind: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.kind == kind]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
