"""The command path of a simulation: dispatcher -> (lossy link) -> firmware relay logic -> ack.

Each relay is the real firmware decision code (tendril_fw.relay.RelayNode) with the device's
safety limits; commands are signed and verified for real. A seeded share of messages (commands
and acks alike) is lost, so retries with the same id and site flags happen as they would.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from tendril_fw.relay import RelayNode

from tendril_transactive.cloud.agent.dispatch import Dispatcher, OutgoingCommand, SafetyLimits

RETRY_AFTER_S = 20.0


@dataclass
class RelayBank:
    devices: dict[tuple[str, str], SafetyLimits]
    now: float
    loss: float = 0.0
    seed: int = 0
    dispatcher: Dispatcher = field(init=False)
    nodes: dict[tuple[str, str], RelayNode] = field(init=False)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.loss < 1:
            raise ValueError(f"loss must be in [0, 1), got {self.loss}")
        keys = {dev: secrets.token_bytes(32) for dev in self.devices}  # per run: no key in the repo
        self.dispatcher = Dispatcher(keys, limits=self.devices)
        self.nodes = {dev: RelayNode(keys[dev], self.now - 3600, safe_default=0, min_on_s=lim.min_on_s,
                                     min_off_s=lim.min_off_s) for dev, lim in self.devices.items()}
        self._rng = random.Random(self.seed)

    def _deliver(self, out: OutgoingCommand, at: float) -> None:
        if self._rng.random() < self.loss:
            return  # the command is lost
        ack = self.nodes[(out.site, out.device)].handle_payload(at, out.site, out.device, out.payload)
        if self._rng.random() < self.loss:
            return  # the ack is lost
        self.dispatcher.on_ack(out.site, out.device, ack)

    def set(self, wanted: Iterable[tuple[str, str, int]], now: float, valid_s: float) -> None:
        """Command each (site, device) to a state for `valid_s`, then retry what went unacked."""
        for site, device, relay in wanted:
            out = self.dispatcher.command(site, device, relay, now + valid_s, now)
            self._deliver(out, now + 0.1)
        for attempt in range(1, 3):
            at = now + attempt * RETRY_AFTER_S
            for out in self.dispatcher.retries(at, RETRY_AFTER_S):
                self._deliver(out, at + 0.1)
        self.dispatcher.retries(now + 3 * RETRY_AFTER_S, RETRY_AFTER_S)  # give up: flag the site

    def tick(self, now: float) -> None:
        """The firmware's expiry fallback: a relay whose command expired returns to safe."""
        for node in self.nodes.values():
            node.tick(now)

    def state(self, site: str, device: str) -> int:
        return int(self.nodes[(site, device)].relay)
