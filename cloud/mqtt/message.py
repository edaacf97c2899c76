"""The one received-message type: a message off the broker, checked against the wire contract.

Every consumer that acts on whole messages (the agent, the HIL bench, the demo's status watch)
takes a `Received` from `receive(topic, payload)`; a contract violation raises
`tendril_wire.ContractError` with its reason, for the caller to dead-letter. Ingestion's hot path
is the exception by design: it classifies raw bytes straight into line protocol without building
this object (cloud.ingest.classify, measured in docs/ingest.md), and the market decides on the
raw payload so it can still answer a malformed transaction with its id (cloud.market.core).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import tendril_wire as wire


@dataclass(frozen=True)
class Received:
    topic: str
    site: str
    device: str  # "" on site topics (tender, transaction, confirm)
    kind: str  # a tendril_wire kind
    msg: dict[str, Any]
    retained: bool = False
    received: float = 0.0  # time.monotonic() on arrival


def receive(topic: str, payload: bytes, retained: bool = False, received: float | None = None) -> Received:
    """Parse the topic and decode the payload; ContractError (with its reason) if either is bad."""
    site, device, kind = wire.parse_topic(topic)
    msg = wire.decode(kind, payload)
    return Received(topic, site, device, kind, msg, retained, time.monotonic() if received is None else received)
