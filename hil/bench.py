"""One bench session: the device under test, the broker side, the house, the shared clock and the
cloud's dispatcher, with the operations scenario steps are made of.

Lock-step: while time advances the bench wakes every `plant_step_s` device seconds, reads the
relay output over the link, steps the house with it (edge physics) and writes the sensors back,
so the device always sees the house its own output produced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tendril_wire as tw

from tendril_transactive.cloud.agent.dispatch import Dispatcher, OutgoingCommand
from tendril_transactive.edge.clock import SimClock
from tendril_transactive.hil.broker import BrokerSide, Received
from tendril_transactive.hil.dut import DeviceUnderTest
from tendril_transactive.hil.link import Event
from tendril_transactive.hil.plant import HousePlant, PlantSample


@dataclass
class CommandSent:
    out: OutgoingCommand
    published: float  # time.monotonic() just before the publish
    relay: int
    expires: float  # device clock


@dataclass
class Bench:
    dut: DeviceUnderTest
    broker: BrokerSide
    plant: HousePlant
    clock: SimClock
    dispatcher: Dispatcher
    site: str
    device: str
    plant_step_s: float
    safe_default: int = 0
    commands: list[CommandSent] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # facts steps leave for later steps
    boot_mark: int = 0  # broker message index when the device last went away (boot, cut): wait_online looks after it
    boot_event_index: int = 0  # link history index at that boot

    # ------------------------------------------------------------ time and plant

    def now(self) -> float:
        return self.clock.now()

    def sleep_device(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) / self.clock.speed)

    def relay(self) -> int:
        state = self.dut.link.get().get("relay")
        return 1 if state else 0

    def tick(self) -> PlantSample:
        """One lock-step exchange: relay out of the device, house forward, sensors into the device."""
        sample = self.plant.step(self.now(), self.relay())
        self.dut.link.set_inputs(**self.plant.inputs(sample))
        return sample

    def advance(self, seconds: float, until: Callable[[], bool] | None = None) -> PlantSample:
        """Let `seconds` of device time pass in plant steps; stops early when `until()` is true."""
        end = self.now() + seconds
        sample = self.tick()
        while self.now() < end:
            if until is not None and until():
                break
            self.sleep_device(min(self.plant_step_s, end - self.now()))
            sample = self.tick()
        return sample

    # ------------------------------------------------------------ the cloud's side

    def command(self, relay: int, ttl_s: float) -> CommandSent:
        """Sign (cloud.agent.dispatch) and publish one command through the broker."""
        now = self.now()
        out = self.dispatcher.command(self.site, self.device, relay, now + ttl_s, now)
        published = self.broker.publish(out.topic, out.payload)
        sent = CommandSent(out, published, relay, float(out.cmd["expires"]))
        self.commands.append(sent)
        return sent

    def wait_ack(self, sent: CommandSent, timeout: float) -> Received:
        cmd_id = sent.out.cmd["id"]
        got = self.broker.wait_for(f"ack of command {cmd_id}",
                                   lambda m: m.kind == tw.ACK and m.msg.get("id") == cmd_id, timeout)
        self.dispatcher.on_ack(self.site, self.device, got.msg)
        return got

    def wait_online(self, timeout: float) -> Received:
        return self.broker.wait_for(
            f"online status of {self.device}",
            lambda m: m.kind == tw.STATUS and m.msg.get("state") == tw.ONLINE, timeout, since=self.boot_mark)

    def relay_events(self) -> list[Event]:
        """Relay changes the device reported since the bench's last known boot, in order."""
        return [e for e in self.dut.link.history[self.boot_event_index:] if e.kind == "relay"]

    def wait_relay(self, state: int, after: float, timeout: float) -> Event:
        """The first relay event to `state` received after time.monotonic() `after`."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.dut.link.history[self.boot_event_index:]:
                if event.kind == "relay" and event.msg.get("relay") == state and event.received >= after:
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"relay did not go to {state} within {timeout} s")
            time.sleep(0.0005)

    def rebooted(self, boot: Event, broker_mark: int) -> None:
        """Forget the link events from before a (re)boot, and broker messages before `broker_mark`
        (taken before the device could have restarted)."""
        history = self.dut.link.history
        self.boot_event_index = history.index(boot) if boot in history else len(history)
        self.boot_mark = broker_mark
