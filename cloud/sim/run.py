"""`tendril simulate`: N simulated homes for D days on real prices and weather, with the optimizer
and without it, on the same houses, weather, base load and EV habits.

Optimized run, as in production: at each local midnight a day-ahead solve per home on the
hourly tenders (its hourly forward transactions are accepted, the pool pump is scheduled);
every 5 minutes a real-time re-solve per home (fleet process pool) with the house's state,
whose first step becomes relay commands (signed, clamped to safety limits, through a lossy
link to the firmware relay logic, retried) and a forward transaction on that step's tender.
The houses then move by the shared edge/ physics. Accounting is in cloud.sim.report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from cloud.billing.subscription import Subscription
from cloud.billing.tariff import default_tariff
from cloud.market.tenders import TenderConfig
from cloud.market.transactions import Transaction
from cloud.optimizer.devices import FloatArray, SiteForecast, SiteState
from cloud.optimizer.fleet import FleetPool, Job
from cloud.optimizer.horizon import DAY_AHEAD, REAL_TIME
from cloud.optimizer.schedule import DutyRounder, SiteSchedule
from cloud.sim.fleet import LIMITS, LOCAL, HouseState, SimHome, baseline_decisions, fresh_state, make_homes, step_house
from cloud.sim.inputs import LOOKAHEAD_STEPS, STEP_S, PriceSeries, base_load_kw, price_series, weather_series
from cloud.sim.relays import RelayBank
from cloud.sim.report import RunTotals, render, subscriptions, totals
from cloud.sim.trades import TradeDesk

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SimConfig:
    sites: int = 20
    days: int = 7
    start: str = "2024-03-01"  # local date; the bundled prices cover March 2024
    workers: int = 2
    time_limit_s: float = 5.0  # per site and solve
    loss: float = 0.01  # share of commands and acks lost in transit (exercises retries)

    def start_ts(self) -> float:
        try:
            day = datetime.strptime(self.start, "%Y-%m-%d")
        except ValueError:
            raise ValueError(f"start must be YYYY-MM-DD, got {self.start!r}") from None
        return day.replace(tzinfo=LOCAL).timestamp()

    def steps(self) -> int:
        end = (datetime.fromtimestamp(self.start_ts(), LOCAL) + timedelta(days=self.days)).timestamp()
        return round((end - self.start_ts()) / STEP_S)


@dataclass
class RunLog:
    """What happened to every home at every step of one run."""

    grid_kwh: FloatArray  # homes x steps
    temp_c: FloatArray  # at the end of each step
    states: list[HouseState]
    pump_h: FloatArray  # per home: hours the pump ran
    trades: TradeDesk | None = None
    solves: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    last_failure: dict[str, str] = field(default_factory=dict)
    solve_s: list[float] = field(default_factory=list)
    planned_violation_ch: float = 0.0
    relays: RelayBank | None = None
    restarts: int = 0


@dataclass(frozen=True)
class World:
    start: float
    steps: int
    homes: list[SimHome]
    prices: PriceSeries
    t_out: FloatArray  # steps + lookahead
    ghi: FloatArray
    base: list[FloatArray]  # per home, steps + lookahead


def make_world(cfg: SimConfig, tconf: TenderConfig) -> World:
    start, steps = cfg.start_ts(), cfg.steps()
    total = steps + LOOKAHEAD_STEPS
    homes = make_homes(cfg.sites, start, cfg.days)
    prices = price_series(start, total, tconf)
    t_out, ghi = weather_series(start, total)
    return World(start, steps, homes, prices, t_out, ghi, [base_load_kw(h.load, start, total) for h in homes])


def _day_starts(w: World) -> list[int]:
    """Step indices of each local midnight in the window (DST days have 276 or 300 steps)."""
    out = []
    for k in range(w.steps):
        t = datetime.fromtimestamp(w.start + k * STEP_S, LOCAL)
        if t.hour == 0 and t.minute == 0:
            out.append(k)
    return out


def run_baseline(w: World, progress: Progress) -> RunLog:
    n = len(w.homes)
    log = RunLog(np.zeros((n, w.steps)), np.zeros((n, w.steps)), [fresh_state(h) for h in w.homes], np.zeros(n))
    for k in range(w.steps):
        t = w.start + k * STEP_S
        for i, home in enumerate(w.homes):
            st = log.states[i]
            hvac, heat, pump, ev_on, bat = baseline_decisions(home, st, t, STEP_S, w.ghi[k])
            res = step_house(home, st, t, STEP_S, w.t_out[k], w.ghi[k], hvac, heat, pump, ev_on, bat)
            log.grid_kwh[i, k] = res.grid_kwh
            log.temp_c[i, k] = st.t_in_c
            log.pump_h[i] += pump * STEP_S / 3600
    progress(f"  baseline: {n} homes x {w.steps} steps done")
    return log


def _da_forecast(w: World, i: int, k0: int, desk: TradeDesk) -> SiteForecast:
    home = w.homes[i]
    n = DAY_AHEAD.steps * 12
    sl = slice(k0, k0 + n)
    t_start = w.start + k0 * STEP_S

    def hourly(a: FloatArray) -> FloatArray:
        out: FloatArray = a[sl].reshape(-1, 12).mean(axis=1)
        return out

    return SiteForecast(
        start=t_start, buy=hourly(w.prices.da_buy), sell=hourly(w.prices.da_sell),
        position_kwh=desk.position_kwh(home.site, k0, n).reshape(-1, 12).sum(axis=1),
        base_kw=hourly(w.base[i]), t_out_c=hourly(w.t_out), ghi_w_m2=hourly(w.ghi),
        ev_sessions=tuple(s for s in home.sessions if s.depart > t_start and s.arrive < t_start + 86400),
        pump_need_h=home.spec.pump.hours_per_day if home.spec.pump else 0.0)


def _rt_forecast(w: World, i: int, k: int, desk: TradeDesk, pump_plan: FloatArray) -> SiteForecast:
    home = w.homes[i]
    n = REAL_TIME.steps
    t = w.start + k * STEP_S
    buy, sell = w.prices.realtime_forecast(k, n)
    return SiteForecast(
        start=t, buy=buy, sell=sell, position_kwh=desk.position_kwh(home.site, k, n),
        base_kw=w.base[i][k:k + n], t_out_c=w.t_out[k:k + n], ghi_w_m2=w.ghi[k:k + n],
        ev_sessions=tuple(s for s in home.sessions if s.depart > t and s.arrive < t + 86400),
        pump_plan=pump_plan[k:k + n] if home.spec.pump else None)


def _state(home: SimHome, st: HouseState, relays: RelayBank) -> SiteState:
    pump_on = bool(relays.state(home.site, "pump")) if home.spec.pump else False
    return SiteState(t_in_c=st.t_in_c, soc_kwh=st.soc_kwh, ev_stored_kwh=st.ev_stored_kwh, pump_on=pump_on)


def run_optimized(w: World, desk: TradeDesk, cfg: SimConfig, progress: Progress) -> RunLog:
    n = len(w.homes)
    log = RunLog(np.zeros((n, w.steps)), np.zeros((n, w.steps)), [fresh_state(h) for h in w.homes], np.zeros(n),
                 trades=desk)
    devices = {(h.site, r): LIMITS[r] for h in w.homes for r in h.relays()}
    relays = RelayBank(devices, w.start, loss=cfg.loss, seed=7)
    log.relays = relays
    rounders = {dev: DutyRounder() for dev in devices}
    pump_plan = [np.zeros(w.steps + LOOKAHEAD_STEPS) for _ in w.homes]
    days = set(_day_starts(w))
    report_every = max(1, w.steps // 20)
    with FleetPool([h.spec for h in w.homes], workers=cfg.workers, time_limit_s=cfg.time_limit_s) as pool:
        pool.build()
        progress(f"  optimizer: {n} homes' models built in {cfg.workers} worker processes")
        for k in range(w.steps):
            t = w.start + k * STEP_S
            if k in days or k == 0:
                _day_ahead(w, k, pool, desk, pump_plan, log, relays)
            jobs = [Job(h.site, "rt", _state(h, log.states[i], relays), _rt_forecast(w, i, k, desk, pump_plan[i]))
                    for i, h in enumerate(w.homes)]
            report = pool.solve(jobs)
            log.restarts += report.restarts
            log.solves += len(report.fresh)
            log.solve_s.extend(report.solve_s)
            for site, why in report.failed.items():
                log.failures[site] = log.failures.get(site, 0) + 1
                log.last_failure[site] = why
            wanted: list[tuple[str, str, int]] = []
            plans: list[tuple[int, SiteSchedule | None, int | None]] = []
            for i, h in enumerate(w.homes):
                sched = report.schedules.get(h.site)
                idx = sched.index_at(t) if sched is not None else None
                plans.append((i, sched, idx))
                if sched is None or idx is None:
                    continue  # no plan at all yet: the devices run on their own this step
                if h.spec.hvac is not None:  # comfort the plan gives up in the step it executes
                    temp = sched.temp_c[idx]
                    gap = max(0.0, h.spec.hvac.t_min_c - temp) + max(0.0, temp - h.spec.hvac.t_max_c)
                    log.planned_violation_ch += gap * STEP_S / 3600
                for r in h.relays():
                    duty = _duty(h, r, sched, idx)
                    wanted.append((h.site, r, rounders[(h.site, r)].propose(duty)))
            relays.set(wanted, t, STEP_S + 60)
            relays.tick(t)
            for i, sched, idx in plans:
                _apply(w, k, i, sched, idx, log, relays, rounders, desk)
            if (k + 1) % report_every == 0 or k + 1 == w.steps:
                local = datetime.fromtimestamp(t + STEP_S, LOCAL).strftime("%m-%d %H:%M")
                med = np.median(log.solve_s) * 1000 if log.solve_s else float("nan")
                progress(f"  optimized: {100 * (k + 1) / w.steps:5.1f}%  sim {local}  re-solves {log.solves}  "
                         f"median HiGHS {med:.1f} ms  failures {sum(log.failures.values())}"
                         + (f" (last: {next(reversed(log.last_failure.values()))[:80]})" if log.last_failure else ""))
    return log


def _duty(h: SimHome, relay: str, sched: SiteSchedule, idx: int) -> float:
    if relay == "hvac":
        return float(sched.hvac_heat[idx] + sched.hvac_cool[idx])
    if relay == "pump":
        return float(sched.pump_on[idx])
    assert h.spec.ev is not None
    return float(sched.ev_kw[idx] / h.spec.ev.params.max_kw)


def _apply(w: World, k: int, i: int, sched: SiteSchedule | None, idx: int | None, log: RunLog,
           relays: RelayBank, rounders: dict[tuple[str, str], DutyRounder], desk: TradeDesk) -> None:
    home, st = w.homes[i], log.states[i]
    t = w.start + k * STEP_S
    if sched is None or idx is None:
        hvac, heat, pump, ev_on, bat = baseline_decisions(home, st, t, STEP_S, w.ghi[k])
    else:
        on = {r: relays.state(home.site, r) for r in home.relays()}
        for r in home.relays():
            rounders[(home.site, r)].settle(_duty(home, r, sched, idx), on[r])
        hvac, pump, ev_on = on.get("hvac", 0), on.get("pump", 0), on.get("ev", 0)
        heat = bool(sched.hvac_heat[idx] >= sched.hvac_cool[idx])
        bat = float(sched.battery_kw[idx])
        desk.real_time(home.site, k, float(sched.buy_kwh[idx]), float(sched.sell_kwh[idx]))
    res = step_house(home, st, t, STEP_S, w.t_out[k], w.ghi[k], hvac, heat, pump, ev_on, bat)
    log.grid_kwh[i, k] = res.grid_kwh
    log.temp_c[i, k] = st.t_in_c
    log.pump_h[i] += pump * STEP_S / 3600


def _day_ahead(w: World, k0: int, pool: FleetPool, desk: TradeDesk, pump_plan: list[FloatArray],
               log: RunLog, relays: RelayBank) -> None:
    """Day-ahead solve at local midnight: hourly forward trades and the day's pump schedule."""
    jobs = [Job(h.site, "da", _state(h, log.states[i], relays), _da_forecast(w, i, k0, desk))
            for i, h in enumerate(w.homes)]
    report = pool.solve(jobs)
    log.restarts += report.restarts
    for site, why in report.failed.items():
        log.failures[site] = log.failures.get(site, 0) + 1
        log.last_failure[site] = f"day-ahead: {why}"
    day_end = next((d for d in _day_starts(w) if d > k0), w.steps)
    for i, h in enumerate(w.homes):
        sched = report.schedules.get(h.site)
        if sched is None:
            continue
        desk.day_ahead(h.site, k0, day_end, sched)
        if h.spec.pump is not None:
            plan = np.repeat(np.round(sched.pump_on), 12)
            # today's plan, and the same again as tomorrow's forecast until tomorrow is planned
            span = min(len(plan), len(pump_plan[i]) - k0)
            pump_plan[i][k0:k0 + span] = plan[:span]
            nxt = min(len(pump_plan[i]) - (k0 + span), span)
            pump_plan[i][k0 + span:k0 + span + nxt] = plan[:nxt]


@dataclass(frozen=True)
class SimResult:
    baseline: RunTotals
    optimized: RunTotals
    notes: list[str]

    def render(self) -> str:
        return render(self.baseline, self.optimized, self.notes)


def _subscribed_hours(sub: Subscription, start: float, steps: int, total: int) -> FloatArray:
    """Subscribed kWh per hour for the run, then repeating its last day over the lookahead."""
    s = int(start)
    hours = steps // 12
    q = np.array([iv.kwh for iv in sub.quantities(s, s + hours * 3600)])
    need = -(-total // 12)
    while len(q) < need:
        q = np.concatenate([q, q[-24:]])
    out: FloatArray = q[:need]
    return out


def simulate(cfg: SimConfig, progress: Progress = print) -> SimResult:
    """Run the baseline, then the optimizer, on the same homes; ValueError on a bad window."""
    if cfg.sites < 1 or cfg.days < 1:
        raise ValueError("need at least one site and one day")
    tconf = TenderConfig()
    w = make_world(cfg, tconf)
    progress(f"  {len(w.homes)} homes, {w.steps} five-minute steps, prices and weather ready")
    base = run_baseline(w, progress)
    tariff = default_tariff()
    sites = [h.site for h in w.homes]
    subs = subscriptions(sites, base.grid_kwh, w.start, tariff)
    total = w.steps + LOOKAHEAD_STEPS
    desk = TradeDesk(w.start, {site: _subscribed_hours(sub, w.start, w.steps, total) for site, sub in zip(
        sites, subs, strict=True)}, w.prices, tconf)
    opt = run_optimized(w, desk, cfg, progress)
    bands = [(h.spec.hvac.t_min_c, h.spec.hvac.t_max_c) if h.spec.hvac else None for h in w.homes]
    pump_need = sum(h.spec.pump.hours_per_day for h in w.homes if h.spec.pump) * cfg.days
    no_trades: list[list[Transaction]] = [[] for _ in w.homes]
    b = totals("baseline", base.grid_kwh, base.temp_c, bands, w.prices.rt_buy, w.prices.rt_sell, w.start, subs,
               no_trades, [st.ev_short_kwh for st in base.states], list(base.pump_h), pump_need, tconf)
    o = totals("optimized", opt.grid_kwh, opt.temp_c, bands, w.prices.rt_buy, w.prices.rt_sell, w.start, subs,
               [desk.transactions[s] for s in sites], [st.ev_short_kwh for st in opt.states], list(opt.pump_h),
               pump_need, tconf)
    assert opt.relays is not None
    d = opt.relays.dispatcher.stats
    n_tx = sum(len(v) for v in desk.transactions.values())
    med = float(np.median(opt.solve_s) * 1000) if opt.solve_s else float("nan")
    notes = [
        "",
        f"re-solves {opt.solves} (median HiGHS {med:.1f} ms), failed solves {sum(opt.failures.values())} "
        f"(kept last schedule), worker restarts {opt.restarts}",
        f"comfort the optimizer chose to give up (penalty paid): {opt.planned_violation_ch:.2f} deg-h",
        f"forward transactions accepted {n_tx}; commands sent {d.sent}, acked {d.acked_ok}, "
        f"retried {d.retried}, given up {d.given_up}, clamped by safety limits {sum(d.clamped.values())}, "
        f"refused by devices {sum(d.refused.values())}; sites flagged {len(opt.relays.dispatcher.flagged)}",
        "weather and base load are known exactly over the horizon (perfect forecast); real-time prices "
        "only for the current 5 minutes, day-ahead prices after it",
    ]
    if any(h.spec.battery for h in w.homes):
        notes.append(f"energy left in batteries at the end: baseline {sum(st.soc_kwh for st in base.states):.1f} "
                     f"kWh, optimized {sum(st.soc_kwh for st in opt.states):.1f} kWh (not valued above)")
    return SimResult(b, o, notes)
