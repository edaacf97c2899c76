"""The agent's decisions for one site, without I/O: tenders, telemetry and confirms in, planning
jobs, transactions and relay set-points out. `now` is always passed in.

One real-time round (the BUY + SELL tenders of the next 5-minute interval are known):
  1. `rt_job(now, start)`: the site's state from telemetry and a 288-step forecast whose first
     step is priced by the real-time tenders, later steps by the day-ahead tenders (or the
     real-time price held), position per step from the book;
  2. a Planner solves it (cloud.agent.planner);
  3. `decide(now, start, result)`: the plan's trade in the first step (already net of the
     position, which the forecast carried) becomes a transaction on that tender, the plan's
     first-step device duties become relay on/off through a DutyRounder per relay.

Day-ahead tenders (hourly) make the site `da_dirty`: `da_job` / `apply_da` plan the next 24
hours with the pump decided, send the hourly trades and fix the pump's hours for the
real-time rounds.

Degraded modes, each noted in the Decision for the log:
  * the solve failed or timed out: keep executing the last real-time plan (its trade and
    duties for this interval);
  * no real-time tender by the interval's start (`due_without_tender`): subscription only, no
    transaction; the pump runs its day-ahead (or cheapest-hours, or timer) schedule, the HVAC
    its last plan or a thermostat rule, the EV charges while plugged until its need is met;
  * stale telemetry: conservative state (cloud.agent.telemetry).

Two hooks for a harness that knows more than the wire carries (`tendril simulate` steps the
house itself; a HIL bench reads its plant): `observe_state` gives measured indoor temperature,
battery charge, car charge and pump state/run time, which then replace the wire-derived
estimates while fresh; `base_load` (optional) forecasts the uncontrolled load per step instead
of holding the meter's current value. A production agent uses neither.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from tendril_transactive.cloud.agent.book import DA_MARKET, RT_MARKET, Book, Rejected
from tendril_transactive.cloud.agent.config import LOCAL, SiteConfig, clock_hours
from tendril_transactive.cloud.agent.planner import Job, JobResult
from tendril_transactive.cloud.agent.plans import schedule_from_json, schedule_json_text, schedule_to_json
from tendril_transactive.cloud.agent.telemetry import SiteTelemetry
from tendril_transactive.cloud.optimizer.devices import FloatArray, SiteForecast, SiteState
from tendril_transactive.cloud.optimizer.horizon import DAY_AHEAD, REAL_TIME
from tendril_transactive.cloud.optimizer.schedule import DutyRounder, SiteSchedule
from tendril_transactive.cloud.timefmt import utc_time

RT_STEP_S = int(REAL_TIME.step_s)
PUMP_TIMER_START_H = 10  # the pump's fallback timer when no day-ahead price is known
# What `observe_state` may set, and the prefix of the telemetry note each one makes obsolete.
MEASURABLE = {"t_in_c": "indoor temperature", "soc_kwh": "battery charge", "ev_stored_kwh": "EV relay",
              "pump_on": "pump relay", "pump_done_h": "pump relay"}


class Outdoor(Protocol):
    def series(self, start: float, steps: int, step_s: float) -> tuple[FloatArray, FloatArray]:
        """(outdoor temperature C, GHI W/m2) per step."""
        ...


class BaseLoad(Protocol):
    def series(self, start: float, steps: int, step_s: float) -> FloatArray:
        """Forecast uncontrolled load, mean kW per step."""
        ...


class SharedOutdoor:
    """An Outdoor that computes each window once: every site of a worker asks for the same
    interval's 288-step weather (bench/loop.py: ~10 ms a site each round otherwise). Returns
    copies, so no caller can change another's forecast."""

    def __init__(self, inner: Outdoor, keep: int = 8) -> None:
        self.inner = inner
        self._keep = keep
        self._cache: dict[tuple[float, int, float], tuple[FloatArray, FloatArray]] = {}

    def series(self, start: float, steps: int, step_s: float) -> tuple[FloatArray, FloatArray]:
        key = (start, steps, step_s)
        hit = self._cache.get(key)
        if hit is None:
            t_out, ghi = self.inner.series(start, steps, step_s)
            hit = (np.asarray(t_out, float), np.asarray(ghi, float))
            if len(self._cache) >= self._keep:
                del self._cache[next(iter(self._cache))]  # the oldest window
            self._cache[key] = hit
        return hit[0].copy(), hit[1].copy()


@dataclass(frozen=True)
class AgentOptions:
    stale_after_s: float = 900.0  # telemetry older than this is not trusted
    time_limit_s: float | None = 2.0  # per solve
    tx_resend_s: float = 30.0  # re-send an unconfirmed transaction after this long
    command_grace_s: float = 60.0  # a command stays valid this long past its interval's end
    cmd_retry_s: float = 20.0  # re-send an unacknowledged command after this long

    def __post_init__(self) -> None:
        for name in ("stale_after_s", "tx_resend_s", "command_grace_s", "cmd_retry_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0, got {self.time_limit_s}")


@dataclass(frozen=True)
class Decision:
    site: str
    interval_start: float
    interval_end: float
    source: str  # "plan", "last_plan" (the solve failed) or "subscription" (no tender / no plan)
    transactions: tuple[dict[str, Any], ...]
    relays: dict[str, int]  # relay device -> 0/1 for the interval
    duties: dict[str, float]  # the share of the interval each relay should run, before rounding
    valid_until: float  # commands for this interval expire then
    notes: tuple[str, ...] = ()


@dataclass
class SiteAgent:
    cfg: SiteConfig
    options: AgentOptions
    outdoor: Outdoor
    book: Book = field(init=False)
    telemetry: SiteTelemetry = field(init=False)
    last_rt: SiteSchedule | None = None
    last_da: SiteSchedule | None = None
    da_dirty: bool = False
    decided: dict[float, str] = field(default_factory=dict)  # interval start -> source
    rounders: dict[str, DutyRounder] = field(default_factory=dict)
    _proposed: dict[str, int] = field(default_factory=dict)
    _plan_text_cache: dict[int, tuple[SiteSchedule, str]] = field(default_factory=dict)
    base_load: BaseLoad | None = None  # a harness's base-load forecast (see the module doc)
    _measured: tuple[float, dict[str, float | bool]] | None = None

    def __post_init__(self) -> None:
        self.book = Book(self.cfg)
        self.telemetry = SiteTelemetry(self.cfg, self.options.stale_after_s)
        self.rounders = {d: DutyRounder() for d in self.cfg.relays}

    @property
    def site(self) -> str:
        return self.cfg.site

    # ------------------------------------------------------------------ inputs

    def on_tender(self, msg: dict[str, Any], now: float) -> float | None:
        """A validated TENDER for this site; returns the real-time interval now ready to plan
        (both sides known, not decided yet), else None. Rejected for a foreign or odd tender."""
        if msg["marketId"] == RT_MARKET and msg["durationS"] != RT_STEP_S:
            raise Rejected("bad_interval", f"real-time tender of {msg['durationS']} s, expected {RT_STEP_S}")
        if msg["marketId"] == DA_MARKET and msg["durationS"] != 3600:
            raise Rejected("bad_interval", f"day-ahead tender of {msg['durationS']} s, expected 3600")
        slot = self.book.add_tender(msg, now)
        if slot is None:
            return None
        market, start = slot
        if market == DA_MARKET:
            self.da_dirty = True
            return None
        if self.book.pair(RT_MARKET, start) is not None and start not in self.decided:
            return start
        return None

    def on_confirm(self, msg: dict[str, Any]) -> str:
        return self.book.on_confirm(msg)

    def observe(self, device: str, kind: str, msg: dict[str, Any], now: float) -> None:
        self.telemetry.observe(device, kind, msg, now)

    def observe_state(self, now: float, **values: float | bool) -> None:
        """State measured directly (names in MEASURABLE): used instead of the estimates from
        telemetry and the last plan until it is `stale_after_s` old. ValueError for a name the
        optimizer's state does not have or a value that is not finite."""
        for name, value in values.items():
            if name not in MEASURABLE:
                raise ValueError(f"observe_state: unknown quantity {name!r} (known: {', '.join(MEASURABLE)})")
            if not math.isfinite(float(value)):
                raise ValueError(f"observe_state: {name} must be finite, got {value!r}")
        if "pump_done_h" in values:  # the pump-hours logic reads the telemetry's day count
            self.telemetry.pump_done_h = float(values["pump_done_h"])
            self.telemetry.pump_day = datetime.fromtimestamp(now, LOCAL).strftime("%Y-%m-%d")
        if "ev_stored_kwh" in values:
            self.telemetry.ev_stored_kwh = float(values["ev_stored_kwh"])
        self._measured = (now, dict(values))

    def _state(self, now: float, at: float | None = None) -> tuple[SiteState, list[str]]:
        state, notes = self.telemetry.state(now, self.last_rt, at)
        if self._measured is None or not (0 <= now - self._measured[0] <= self.options.stale_after_s):
            return state, notes
        values = self._measured[1]
        stale = tuple(MEASURABLE[k] for k in values)
        notes = [n for n in notes if not n.startswith(stale)]
        return dataclasses.replace(state, **values), notes  # type: ignore[arg-type]

    # ------------------------------------------------------------------ forecasts

    def _prices(self, start: float, steps: int, step_s: float, first: tuple[float, float] | None
                ) -> tuple[FloatArray, FloatArray]:
        """Per step the day-ahead tender prices of its hour, carried forward over hours without
        tenders (from `first`, the real-time tender's, at step 0). Looked up once per clock hour,
        not once per step: this runs for every site at every real-time tender (bench/loop.py)."""
        hours, inv = clock_hours(start, steps, step_s)
        known = [self.book.da_prices(float(h)) for h in hours]
        last = first or next((p for p in known if p is not None), None) or (0.25, 0.23)
        filled = []
        for j, p in enumerate(known):
            if j == 0 and first is not None:
                # step 0 is the real-time tender's; the first hour's other steps (if any) its own
                last = p if p is not None and steps > 1 and inv[1] == 0 else first
            elif p is not None:
                last = p
            filled.append(last)
        per_hour = np.asarray(filled, dtype=float).reshape(len(filled), 2)
        buy, sell = per_hour[inv, 0], per_hour[inv, 1]
        if first is not None:
            buy[0], sell[0] = first
        return buy, np.minimum(sell, buy)

    def _pump_plan(self, start: float, steps: int, step_s: float, now: float) -> FloatArray:
        """Per step the day-ahead plan's pump state (tomorrow as today until it is planned), else
        the default hours of `_default_pump_hours`."""
        t = start + np.arange(steps) * step_s
        out = np.zeros(steps)
        have = np.zeros(steps, dtype=bool)
        da = self.last_da
        if da is not None:
            pump = np.round(np.asarray(da.pump_on, dtype=float))
            for shift in (0.0, 86400.0):
                k = ((t - shift - da.start) // da.step_s).astype(int)
                ok = ~have & (k >= 0) & (k < da.steps)
                out[ok] = pump[k[ok]]
                have |= ok
        if have.all():
            return out
        hours, inv = clock_hours(start, steps, step_s)
        missing = ~have
        default: dict[float, float] = {}
        per_hour = np.zeros(len(hours))
        for j in np.unique(inv[missing]):
            hour = float(hours[j])
            if hour not in default:
                default.update(self._default_pump_hours(hour, now))
            per_hour[j] = default.get(hour, 0.0)
        out[missing] = per_hour[inv[missing]]
        return out

    def _default_pump_hours(self, hour: float, now: float) -> dict[float, float]:
        """Without a day-ahead plan: the day's remaining need in its cheapest known hours (a
        fixed timer from 10:00 where no price is known). Covers the local day of `hour`."""
        spec = self.cfg.spec.pump
        assert spec is not None
        local = datetime.fromtimestamp(hour, LOCAL)
        day0 = hour - local.hour * 3600
        today = datetime.fromtimestamp(now, LOCAL).date() == local.date()
        need = spec.hours_per_day - (self.telemetry.pump_done(now) if today else 0.0)
        first = max(day0, now - now % 3600) if today else day0
        hours = [day0 + h * 3600 for h in range(24) if day0 + h * 3600 >= first]

        def cost(t: float) -> float:
            p = self.book.da_prices(t)
            return p[0] if p is not None else 1e3 + (datetime.fromtimestamp(t, LOCAL).hour - PUMP_TIMER_START_H) % 24

        chosen = sorted(hours, key=cost)[: max(0, math.ceil(need - 1e-9))]
        return {h: (1.0 if h in chosen else 0.0) for h in [day0 + i * 3600 for i in range(24)]}

    def _forecast(self, start: float, steps: int, step_s: float, now: float,
                  first: tuple[float, float] | None, notes: list[str]) -> SiteForecast:
        buy, sell = self._prices(start, steps, step_s, first)
        if self.base_load is not None:
            base_kw = np.asarray(self.base_load.series(start, steps, step_s), float)
        else:
            base, why = self.telemetry.base_kw(now)
            if why:
                notes.append(why)
            base_kw = np.full(steps, base)
        t_out, ghi = self.outdoor.series(start, steps, step_s)
        spec = self.cfg.spec
        sessions = self.cfg.ev_plan.sessions(start, start + steps * step_s) if spec.ev and self.cfg.ev_plan else ()
        pump_need = 0.0
        if spec.pump is not None:
            same_day = datetime.fromtimestamp(start, LOCAL).date() == datetime.fromtimestamp(now, LOCAL).date()
            pump_need = max(0.0, spec.pump.hours_per_day - (self.telemetry.pump_done(now) if same_day else 0.0))
        return SiteForecast(
            start=start, buy=buy, sell=sell,
            position_kwh=self.book.position_series(start, steps, step_s),
            base_kw=base_kw, t_out_c=np.asarray(t_out, float), ghi_w_m2=np.asarray(ghi, float),
            ev_sessions=sessions, pump_need_h=pump_need,
            pump_plan=self._pump_plan(start, steps, step_s, now) if spec.pump is not None else None)

    # ------------------------------------------------------------------ day-ahead

    def da_job(self, now: float) -> Job | None:
        """The day-ahead plan to make, when new hourly tenders arrived; from the first hour
        whose tenders are still open."""
        if not self.da_dirty:
            return None
        self.da_dirty = False
        open_hours = [s for s in self.book.da_slots() if s + 3600 > now]
        if not open_hours:
            return None
        notes: list[str] = []
        state, _ = self._state(now)
        fc = self._forecast(open_hours[0], DAY_AHEAD.steps, DAY_AHEAD.step_s, now, None, notes)
        return Job(self.site, "da", state, fc, self.options.time_limit_s)

    def apply_da(self, now: float, result: JobResult) -> tuple[list[dict[str, Any]], str | None]:
        """Keep a day-ahead plan and take its hourly trades; (transactions, failure note)."""
        if result.schedule is None:
            return [], f"day-ahead solve failed ({result.error}): pump keeps its previous hours"
        sched = self.last_da = result.schedule
        out = []
        for h in range(sched.steps):
            pair = self.book.pair(DA_MARKET, sched.start + h * 3600)
            if pair is None:
                continue
            tx = self._trade(pair, float(sched.buy_kwh[h]), float(sched.sell_kwh[h]), now)
            if tx is not None:
                out.append(tx)
        return out, None

    # ------------------------------------------------------------------ real time

    def rt_job(self, now: float, start: float) -> tuple[Job, list[str]]:
        pair = self.book.pair(RT_MARKET, start)
        first = (float(pair[0]["price"]), float(pair[1]["price"])) if pair else None
        notes: list[str] = []
        state, why = self._state(now, start)
        notes += why
        fc = self._forecast(start, REAL_TIME.steps, REAL_TIME.step_s, now, first, notes)
        return Job(self.site, "rt", state, fc, self.options.time_limit_s), notes

    def _trade(self, pair: tuple[dict[str, Any], dict[str, Any]], buy: float, sell: float,
               now: float) -> dict[str, Any] | None:
        if buy >= sell:
            return self.book.transact(pair[0], buy, now)
        return self.book.transact(pair[1], sell, now)

    def _duties(self, sched: SiteSchedule, k: int) -> dict[str, float]:
        out = {}
        spec = self.cfg.spec
        for device, load in self.cfg.relays.items():
            if load == "hvac":
                out[device] = float(sched.hvac_heat[k] + sched.hvac_cool[k])
            elif load == "pump":
                out[device] = float(sched.pump_on[k])
            elif load == "ev" and spec.ev is not None:
                out[device] = float(sched.ev_kw[k]) / spec.ev.params.max_kw
            elif load == "battery" and spec.battery is not None:  # the relay enables charging
                out[device] = max(0.0, float(sched.battery_kw[k])) / spec.battery.params.max_charge_kw
        return {d: min(1.0, max(0.0, v)) for d, v in out.items()}

    def _finish(self, start: float, source: str, txs: list[dict[str, Any]], duties: dict[str, float],
                notes: list[str]) -> Decision:
        relays = {d: self.rounders[d].propose(v) for d, v in duties.items()}
        self._proposed = dict(relays)
        for d, v in relays.items():
            self.rounders[d].settle(duties[d], v)  # corrected by `settle` if a limit held the relay
        self.decided[start] = source
        for old in [s for s in self.decided if s < start - 86400]:
            del self.decided[old]
        end = start + RT_STEP_S
        return Decision(self.site, start, end, source, tuple(txs), relays, duties,
                        end + self.options.command_grace_s, tuple(notes))

    def decide(self, now: float, start: float, result: JobResult | None, notes: Sequence[str] = ()
               ) -> Decision:
        """The interval's transactions and relay set-points from a real-time solve (or, when it
        failed, the last plan)."""
        notes = list(notes)
        sched: SiteSchedule | None = None
        source = "plan"
        if result is not None and result.schedule is not None:
            sched = self.last_rt = result.schedule
        else:
            why = result.error if result is not None else "no result"
            source = "last_plan"
            if self.last_rt is not None and self.last_rt.index_at(start) is not None:
                sched = self.last_rt
                notes.append(f"solve failed ({why}): executing the last plan")
            else:
                notes.append(f"solve failed ({why}) and no earlier plan covers the interval")
        if sched is None:
            return self._default(now, start, notes)
        k = sched.index_at(start)
        assert k is not None
        txs = []
        pair = self.book.pair(RT_MARKET, start)
        if pair is not None:
            tx = self._trade(pair, float(sched.buy_kwh[k]), float(sched.sell_kwh[k]), now)
            if tx is not None:
                txs.append(tx)
        return self._finish(start, source, txs, self._duties(sched, k), notes)

    def due_without_tender(self, now: float) -> float | None:
        """The interval under way that got no real-time tender in time (None if decided)."""
        start = now - now % RT_STEP_S
        if start in self.decided:
            return None
        return start

    def decide_without_tender(self, now: float, start: float) -> Decision:
        return self._default(now, start, [f"no real-time tender for {utc_time(start)}: subscription only"])

    def _default(self, now: float, start: float, notes: list[str]) -> Decision:
        spec = self.cfg.spec
        duties: dict[str, float] = {}
        plan = self.last_rt if self.last_rt is not None and self.last_rt.index_at(start) is not None else None
        for device, load in self.cfg.relays.items():
            if load == "pump":
                duties[device] = float(self._pump_plan(start, 1, RT_STEP_S, now)[0])
            elif load == "hvac" and spec.hvac is not None:
                if plan is not None:
                    duties[device] = self._duties(plan, plan.index_at(start) or 0)[device]
                else:  # thermostat on the estimated temperature
                    state, _ = self._state(now)
                    lo, hi = spec.hvac.t_min_c + spec.hvac.plan_margin_c, spec.hvac.t_max_c - spec.hvac.plan_margin_c
                    duties[device] = 1.0 if (state.t_in_c < lo and spec.hvac.can_heat) or \
                        (state.t_in_c > hi and spec.hvac.can_cool) else 0.0
            elif load == "ev" and spec.ev is not None and self.cfg.ev_plan is not None:
                plan_ev = self.cfg.ev_plan
                plugged = any(s.plugged(start, start + RT_STEP_S) > 0 for s in plan_ev.sessions(start, start + 1))
                duties[device] = 1.0 if plugged and self.telemetry.ev_stored_kwh < plan_ev.need_kwh else 0.0
            else:
                duties[device] = 0.0
        return self._finish(start, "subscription", [], duties, notes)

    def settle(self, device: str, actual: int) -> None:
        """What the dispatcher actually commanded (a safety limit may have held the relay): the
        rounder carries the difference into the next interval."""
        proposed = self._proposed.pop(device, None)
        if proposed is not None and device in self.rounders and actual != proposed:
            r = self.rounders[device]
            r.error = max(-1.0, min(1.0, r.error + proposed - actual))

    # ------------------------------------------------------------------ persistence

    def _plan_text(self, sched: SiteSchedule | None) -> str:
        """A plan's JSON text, made once per plan: it goes into every state write but changes only
        with a solve (a SiteSchedule is not changed after the solve that made it). Encoding the
        288-step arrays again for every write was the largest part of the agent's event loop at
        1,000 sites (py-spy, docs/loop-bench.md)."""
        if sched is None:
            return "null"
        hit = self._plan_text_cache.get(id(sched))
        if hit is None or hit[0] is not sched:
            hit = (sched, schedule_json_text(sched))
            self._plan_text_cache = {id(s): v for s in (self.last_rt, self.last_da) if s is not None
                                     and (v := self._plan_text_cache.get(id(s))) is not None}
            self._plan_text_cache[id(sched)] = hit
        return hit[1]

    def _head_json(self) -> dict[str, Any]:
        return {"site": self.site, "book": self.book.to_json(), "telemetry": self.telemetry.to_json(),
                "decided": {repr(k): v for k, v in self.decided.items()},
                "rounders": {d: r.error for d, r in self.rounders.items()}}

    def to_json(self) -> dict[str, Any]:
        return dict(self._head_json(), last_rt=schedule_to_json(self.last_rt), last_da=schedule_to_json(self.last_da))

    def state_text(self, extra: dict[str, Any] | None = None) -> str:
        """`to_json()` (with `extra` keys) as compact JSON text, the plans spliced in from their cache."""
        head = json.dumps(dict(self._head_json(), **(extra or {})), separators=(",", ":"))
        return f'{head[:-1]},"last_rt":{self._plan_text(self.last_rt)},"last_da":{self._plan_text(self.last_da)}}}'

    def load_json(self, data: dict[str, Any], now: float) -> None:
        if data.get("site") != self.site:
            raise ValueError(f"state file is for site {data.get('site')!r}, not {self.site!r}")
        self.book.load_json(data.get("book", {}), now)
        self.telemetry.load_json(data.get("telemetry", {}))
        self.last_rt = schedule_from_json(self.site, data.get("last_rt"))
        self.last_da = schedule_from_json(self.site, data.get("last_da"))
        self.decided = {float(k): str(v) for k, v in data.get("decided", {}).items()}
        for d, err in data.get("rounders", {}).items():
            if d in self.rounders:
                self.rounders[d].error = float(err)


__all__ = ["AgentOptions", "Decision", "Outdoor", "Rejected", "SharedOutdoor", "SiteAgent"]
