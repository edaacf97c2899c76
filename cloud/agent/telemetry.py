"""What a site's devices last said, and the optimizer state the agent derives from it.

The wire carries meter power and relay states (with the load each relay switched), not indoor
temperature, battery charge or the car's charge. The agent therefore
  * estimates indoor temperature and battery charge from its own last plan (the plan's
    trajectory at the current step, valid while the relays followed it) and otherwise assumes
    a conservative default (the middle of the comfort band, the battery at its reserve);
  * integrates the EV relay's reported load over the current plug-in session, and the pump
    relay's on-time over the local day;
  * treats a device silent for longer than `stale_after_s` as unknown: pump off, car empty,
    base load at its default. Each fallback is returned as a note for the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import tendril_wire as wire

from tendril_transactive.cloud.agent.config import LOCAL, SiteConfig
from tendril_transactive.cloud.optimizer.devices import SiteState
from tendril_transactive.cloud.optimizer.schedule import SiteSchedule

DEFAULT_BASE_KW = 0.5  # a household's typical uncontrolled load when the meter is silent


@dataclass
class RelayReading:
    ts: float
    relay: int
    load_w: float


@dataclass
class SiteTelemetry:
    cfg: SiteConfig
    stale_after_s: float = 900.0
    meter: dict[str, tuple[float, float]] = field(default_factory=dict)  # device -> (ts, power_w)
    relays: dict[str, RelayReading] = field(default_factory=dict)
    ev_stored_kwh: float = 0.0
    ev_session: float | None = None  # arrival of the session ev_stored_kwh belongs to
    pump_done_h: float = 0.0
    pump_day: str = ""
    online: dict[str, bool] = field(default_factory=dict)

    def observe(self, device: str, kind: str, msg: dict[str, Any], received_at: float) -> None:
        """Take one validated device message (telemetry or status)."""
        if kind == wire.STATUS:
            self.online[device] = msg["state"] == wire.ONLINE
            return
        if kind != wire.TELEMETRY:
            return
        ts = received_at if msg.get("unsynced") else float(msg["ts"])
        if msg["type"] == wire.DEVICE_METER:
            last = self.meter.get(device)
            if last is None or ts >= last[0]:
                self.meter[device] = (ts, float(msg["power_w"]))
            return
        prev = self.relays.get(device)
        if prev is not None and ts < prev.ts:
            return  # an old reading replayed from the device's backlog
        load = self.cfg.relays.get(device)
        if prev is not None and prev.relay:
            self._accumulate(load, prev, ts)
        self.relays[device] = RelayReading(ts, int(msg["relay"]), float(msg["load_w"]))

    def _accumulate(self, load: str | None, prev: RelayReading, ts: float) -> None:
        dt_h = max(0.0, min(ts - prev.ts, self.stale_after_s)) / 3600.0
        if load == "pump":
            day = datetime.fromtimestamp(ts, LOCAL).strftime("%Y-%m-%d")
            if day != self.pump_day:
                self.pump_day, self.pump_done_h = day, 0.0
            self.pump_done_h += dt_h
        elif load == "ev" and self.cfg.spec.ev is not None and self.cfg.ev_plan is not None:
            sessions = self.cfg.ev_plan.sessions(ts - 1, ts)
            arrive = sessions[0].arrive if sessions else None
            if arrive != self.ev_session:
                self.ev_session, self.ev_stored_kwh = arrive, 0.0
            self.ev_stored_kwh += prev.load_w / 1000.0 * dt_h * self.cfg.spec.ev.params.eta

    def fresh(self, device: str, now: float) -> bool:
        if device in self.relays:
            return now - self.relays[device].ts <= self.stale_after_s
        if device in self.meter:
            return now - self.meter[device][0] <= self.stale_after_s
        return False

    def base_kw(self, now: float) -> tuple[float, str | None]:
        """Uncontrolled load now: the meters minus what the relays report switching."""
        meters = [p for d, (ts, p) in self.meter.items() if now - ts <= self.stale_after_s]
        if not self.cfg.meters or len(meters) < len(self.cfg.meters):
            return DEFAULT_BASE_KW, f"meter silent > {self.stale_after_s:.0f} s: base load {DEFAULT_BASE_KW} kW assumed"
        switched = sum(r.load_w for d, r in self.relays.items() if now - r.ts <= self.stale_after_s)
        return max(0.0, (sum(meters) - switched) / 1000.0), None

    def pump_done(self, now: float) -> float:
        day = datetime.fromtimestamp(now, LOCAL).strftime("%Y-%m-%d")
        return self.pump_done_h if day == self.pump_day else 0.0

    def state(self, now: float, last_plan: SiteSchedule | None, at: float | None = None
              ) -> tuple[SiteState, list[str]]:
        """The optimizer's SiteState for a plan starting at `at` (default `now`), judged at `now`,
        with a note for every conservative assumption.

        What the wire does not carry (indoor temperature, battery charge) comes from the last plan's
        trajectory at the end of the step before `at`. A real-time plan starts at the next interval,
        which is step 1 of the plan made a tender earlier; judging at `now` (step 0) found no earlier
        step, so every real-time solve restarted from the comfort band's middle."""
        spec = self.cfg.spec
        notes: list[str] = []
        kw: dict[str, Any] = {}
        k = last_plan.index_at(now if at is None else at) if last_plan is not None else None
        if spec.hvac is not None:
            hvac_dev = self.cfg.relay_for("hvac")
            followed = hvac_dev is None or self.fresh(hvac_dev, now)
            if last_plan is not None and k is not None and k > 0 and followed:
                kw["t_in_c"] = float(last_plan.temp_c[k - 1])
            else:
                kw["t_in_c"] = (spec.hvac.t_min_c + spec.hvac.t_max_c) / 2
                notes.append(f"indoor temperature is not on the wire and no current plan: "
                             f"{kw['t_in_c']:.1f} C assumed")
        if spec.battery is not None:
            p = spec.battery.params
            if last_plan is not None and k is not None and k > 0:
                kw["soc_kwh"] = float(last_plan.soc_kwh[k - 1])
            else:
                kw["soc_kwh"] = p.soc_min_kwh
                notes.append(f"battery charge unknown: reserve {p.soc_min_kwh:.1f} kWh assumed")
        pump_dev = self.cfg.relay_for("pump")
        if pump_dev is not None:
            if self.fresh(pump_dev, now):
                kw["pump_on"] = bool(self.relays[pump_dev].relay)
            else:
                kw["pump_on"] = False
                notes.append(f"pump relay {pump_dev} silent > {self.stale_after_s:.0f} s: assumed off")
            kw["pump_done_h"] = self.pump_done(now)
        ev_dev = self.cfg.relay_for("ev")
        if ev_dev is not None:
            if self.fresh(ev_dev, now):
                kw["ev_stored_kwh"] = self.ev_stored_kwh
            else:
                kw["ev_stored_kwh"] = 0.0
                notes.append(f"EV relay {ev_dev} silent > {self.stale_after_s:.0f} s: car assumed uncharged")
        return SiteState(**kw), notes

    def to_json(self) -> dict[str, Any]:
        return {"ev_stored_kwh": self.ev_stored_kwh, "ev_session": self.ev_session,
                "pump_done_h": self.pump_done_h, "pump_day": self.pump_day}

    def load_json(self, data: dict[str, Any]) -> None:
        self.ev_stored_kwh = float(data.get("ev_stored_kwh", 0.0))
        self.ev_session = data.get("ev_session")
        self.pump_done_h = float(data.get("pump_done_h", 0.0))
        self.pump_day = str(data.get("pump_day", ""))
