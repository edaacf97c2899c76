"""`tendril simulate`: N simulated homes for D days on real prices and weather, with the optimizer
and without it, on the same houses, weather, base load and EV habits.

Optimized run: every home is answered by the agent core `tendril agent` runs per site
(cloud.agent.core.SiteAgent), the simulated house in place of firmware. At each local midnight
the market side (cloud.sim.trades) offers the next day's hourly tenders: the agent plans the day
ahead, transacts its hours (accepted by the market's TenderBook, confirmed back) and fixes the
pool pump's hours. Ten seconds before every 5-minute interval it offers the real-time tenders:
the agent re-solves (through the Planner seam: PoolPlanner over --workers processes) and
decides the interval's transaction and relay set-points; those become signed commands through
a lossy link to the firmware relay logic (cloud.sim.relays), and the houses move by the shared
edge/ physics with whatever the relays did. Accounting is in cloud.sim.report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from tendril_transactive.cloud.agent.core import Decision, SiteAgent
from tendril_transactive.cloud.agent.planner import Job, JobResult, Planner, PoolPlanner
from tendril_transactive.cloud.billing.subscription import Subscription
from tendril_transactive.cloud.billing.tariff import default_tariff
from tendril_transactive.cloud.market.tenders import TenderConfig
from tendril_transactive.cloud.market.transactions import Transaction
from tendril_transactive.cloud.optimizer.devices import FloatArray
from tendril_transactive.cloud.sim.agents import Weather, home_agent, measured
from tendril_transactive.cloud.sim.fleet import (
    LIMITS,
    LOCAL,
    HouseState,
    SimHome,
    baseline_decisions,
    fresh_state,
    make_homes,
    step_house,
)
from tendril_transactive.cloud.sim.inputs import (
    LOOKAHEAD_STEPS,
    STEP_S,
    PriceSeries,
    base_load_kw,
    price_series,
    weather_series,
)
from tendril_transactive.cloud.sim.relays import RelayBank
from tendril_transactive.cloud.sim.report import RunTotals, render, subscriptions, totals
from tendril_transactive.cloud.sim.trades import DA_LEAD_S, RT_LEAD_S, SimMarket

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
    solves: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    last_failure: dict[str, str] = field(default_factory=dict)
    solve_s: list[float] = field(default_factory=list)
    planned_violation_ch: float = 0.0
    relays: RelayBank | None = None


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


Trace = Callable[[str, str, Any], None]  # (site, event, payload): every input a home's agent got


def _next_midnight(t: float) -> float:
    day = datetime.fromtimestamp(t, LOCAL).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day + timedelta(days=1)).timestamp()


def _day_hours(w: World, midnight: float) -> list[int]:
    """The local day's hours from `midnight` (23, 24 or 25), those the price data covers."""
    end = _next_midnight(midnight + 1)
    limit = w.start + (w.steps + LOOKAHEAD_STEPS) * STEP_S
    return [int(h) for h in np.arange(midnight, end, 3600) if h + 3600 <= limit]


@dataclass
class _Home:
    """One home in the optimized run: the plant's house and the agent that answers for it."""

    home: SimHome
    agent: SiteAgent
    state: HouseState
    pump_today_h: float = 0.0


def _observe(h: _Home, relays: RelayBank, now: float, trace: Trace | None) -> None:
    pump_on = relays.state(h.home.site, "pump") if h.home.spec.pump else 0
    values = measured(h.home, h.state, pump_on, h.pump_today_h)
    h.agent.observe_state(now, **values)
    if trace is not None:
        trace(h.home.site, "state", (now, values))


def _offer(h: _Home, tenders: list[dict[str, Any]], now: float, trace: Trace | None) -> float | None:
    ready = None
    for msg in tenders:
        if trace is not None:
            trace(h.home.site, "tender", (msg, now))
        ready = h.agent.on_tender(msg, now) or ready
    return ready


def _transact(h: _Home, txs: Sequence[dict[str, Any]], market: SimMarket, now: float, trace: Trace | None) -> None:
    """Each transaction to the market; its confirm back to the agent, as the wire would carry it."""
    for tx in txs:
        confirm = market.transact(h.home.site, tx, now)
        if trace is not None:
            trace(h.home.site, "confirm", confirm)
        h.agent.on_confirm(confirm)


def _solve(planner: Planner, jobs: list[Job], log: RunLog) -> dict[str, JobResult]:
    results = {r.site: r for r in planner.plan(jobs)} if jobs else {}
    for r in results.values():
        if r.schedule is None:
            log.failures[r.site] = log.failures.get(r.site, 0) + 1
            log.last_failure[r.site] = f"{'day-ahead: ' if r.mode == 'da' else ''}{r.error}"
        elif r.mode == "rt":
            log.solves += 1
            log.solve_s.append(r.schedule.solve_s)
    return results


def _day_ahead(w: World, k: int, homes: list[_Home], market: SimMarket, planner: Planner, log: RunLog,
               relays: RelayBank, trace: Trace | None) -> None:
    """At local midnight: the next day's hourly tenders (the first midnight also today's); each
    agent plans the day ahead, trades its hours and fixes its pump's hours."""
    t = w.start + k * STEP_S
    days = ([t] if k == 0 else []) + [_next_midnight(t)]
    jobs = []
    for h in homes:
        for day in days:
            _offer(h, market.day_ahead(h.home.site, _day_hours(w, day), t - DA_LEAD_S), t, trace)
        _observe(h, relays, t, trace)
        if trace is not None:
            trace(h.home.site, "da", t)
        job = h.agent.da_job(t)
        if job is not None:
            jobs.append(job)
    results = _solve(planner, jobs, log)
    for h in homes:
        result = results.get(h.home.site)
        if result is not None:
            txs, _ = h.agent.apply_da(t, result)
            if trace is not None:
                trace(h.home.site, "da_done", txs)
            _transact(h, txs, market, t + 1, trace)


def _execute(w: World, k: int, i: int, h: _Home, decision: Decision, log: RunLog, relays: RelayBank,
             trace: Trace | None) -> None:
    """The house for one step: relays as the firmware left them, battery and heat/cool mode as
    the plan says (neither is a relay), then the edge/ physics."""
    home, st = h.home, h.state
    t = w.start + k * STEP_S
    on = {r: relays.state(home.site, r) for r in home.relays()}
    for r, v in on.items():
        h.agent.settle(r, v)
    if trace is not None:
        trace(home.site, "settle", on)
    sched = h.agent.last_rt if decision.source != "subscription" else None
    idx = sched.index_at(t) if sched is not None else None
    heat, bat = True, 0.0
    if sched is not None and idx is not None:
        heat = bool(sched.hvac_heat[idx] >= sched.hvac_cool[idx])
        bat = float(sched.battery_kw[idx])
        if home.spec.hvac is not None:  # comfort the plan gives up in the step it executes
            temp = sched.temp_c[idx]
            gap = max(0.0, home.spec.hvac.t_min_c - temp) + max(0.0, temp - home.spec.hvac.t_max_c)
            log.planned_violation_ch += gap * STEP_S / 3600
    pump = on.get("pump", 0)
    res = step_house(home, st, t, STEP_S, w.t_out[k], w.ghi[k], on.get("hvac", 0), heat, pump, on.get("ev", 0), bat)
    log.grid_kwh[i, k] = res.grid_kwh
    log.temp_c[i, k] = st.t_in_c
    log.pump_h[i] += pump * STEP_S / 3600
    h.pump_today_h += pump * STEP_S / 3600


def make_agents(w: World, subscribed: dict[str, FloatArray], time_limit_s: float | None) -> list[SiteAgent]:
    weather = Weather(w.start, (w.t_out, w.ghi))
    return [home_agent(home, w.start, subscribed[home.site], weather, w.base[i], time_limit_s)
            for i, home in enumerate(w.homes)]


def run_optimized(w: World, market: SimMarket, agents: list[SiteAgent], planner: Planner, cfg: SimConfig,
                  progress: Progress, trace: Trace | None = None) -> RunLog:
    n = len(w.homes)
    homes = [_Home(home, agent, fresh_state(home)) for home, agent in zip(w.homes, agents, strict=True)]
    log = RunLog(np.zeros((n, w.steps)), np.zeros((n, w.steps)), [h.state for h in homes], np.zeros(n))
    devices = {(h.site, r): LIMITS[r] for h in w.homes for r in h.relays()}
    relays = RelayBank(devices, w.start, loss=cfg.loss, seed=7)
    log.relays = relays
    days = set(_day_starts(w))
    report_every = max(1, w.steps // 20)
    for k in range(w.steps):
        t = w.start + k * STEP_S
        if k in days or k == 0:
            for h in homes:
                h.pump_today_h = 0.0
            _day_ahead(w, k, homes, market, planner, log, relays, trace)
        now = t - RT_LEAD_S  # the real-time tenders arrive, the agents answer before the interval
        jobs, notes = [], {}
        for h in homes:
            _observe(h, relays, now, trace)
            if _offer(h, market.real_time(h.home.site, k), now, trace) == t:
                if trace is not None:
                    trace(h.home.site, "rt", (now, t))
                job, notes[h.home.site] = h.agent.rt_job(now, t)
                jobs.append(job)
        results = _solve(planner, jobs, log)
        decisions: list[Decision] = []
        for h in homes:
            site = h.home.site
            if site in notes:
                decision = h.agent.decide(now, t, results.get(site), notes[site])
            else:  # no tender pair in time (not in this simulation): what the agent does then
                decision = h.agent.decide_without_tender(t, t)
            if trace is not None:
                trace(site, "decision", decision)
            _transact(h, decision.transactions, market, now + 1, trace)
            decisions.append(decision)
        valid_s = max((d.valid_until for d in decisions), default=t + STEP_S) - t
        relays.set([(d.site, dev, v) for d in decisions for dev, v in sorted(d.relays.items())], t, valid_s)
        relays.tick(t)
        for i, (h, decision) in enumerate(zip(homes, decisions, strict=True)):
            _execute(w, k, i, h, decision, log, relays, trace)
            if k % 12 == 11:  # hourly, as the agent service does
                h.agent.book.prune(t)
                if trace is not None:
                    trace(h.home.site, "prune", t)
        if (k + 1) % report_every == 0 or k + 1 == w.steps:
            local = datetime.fromtimestamp(t + STEP_S, LOCAL).strftime("%m-%d %H:%M")
            med = np.median(log.solve_s) * 1000 if log.solve_s else float("nan")
            progress(f"  optimized: {100 * (k + 1) / w.steps:5.1f}%  sim {local}  re-solves {log.solves}  "
                     f"median HiGHS {med:.1f} ms  failures {sum(log.failures.values())}"
                     + (f" (last: {next(reversed(log.last_failure.values()))[:80]})" if log.last_failure else ""))
    return log


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
    subscribed = {site: _subscribed_hours(sub, w.start, w.steps, total) for site, sub in zip(sites, subs, strict=True)}
    market = SimMarket(sites, w.start, w.prices, tconf)
    agents = make_agents(w, subscribed, cfg.time_limit_s)
    planner = PoolPlanner([h.spec for h in w.homes], workers=cfg.workers, time_limit_s=cfg.time_limit_s)
    progress(f"  optimizer: {len(w.homes)} homes' agents, planning in {cfg.workers} worker processes")
    try:
        opt = run_optimized(w, market, agents, planner, cfg, progress)
    finally:
        planner.close()
    bands = [(h.spec.hvac.t_min_c, h.spec.hvac.t_max_c) if h.spec.hvac else None for h in w.homes]
    pump_need = sum(h.spec.pump.hours_per_day for h in w.homes if h.spec.pump) * cfg.days
    no_trades: list[list[Transaction]] = [[] for _ in w.homes]
    b = totals("baseline", base.grid_kwh, base.temp_c, bands, w.prices.rt_buy, w.prices.rt_sell, w.start, subs,
               no_trades, [st.ev_short_kwh for st in base.states], list(base.pump_h), pump_need, tconf)
    o = totals("optimized", opt.grid_kwh, opt.temp_c, bands, w.prices.rt_buy, w.prices.rt_sell, w.start, subs,
               [market.transactions[s] for s in sites], [st.ev_short_kwh for st in opt.states], list(opt.pump_h),
               pump_need, tconf)
    assert opt.relays is not None
    d = opt.relays.dispatcher.stats
    n_tx = sum(len(v) for v in market.transactions.values())
    refused = sum(market.refused.values())
    med = float(np.median(opt.solve_s) * 1000) if opt.solve_s else float("nan")
    notes = [
        "",
        f"re-solves {opt.solves} (median HiGHS {med:.1f} ms), failed solves {sum(opt.failures.values())} "
        f"(the agent kept its last plan)",
        f"comfort the optimizer chose to give up (penalty paid): {opt.planned_violation_ch:.2f} deg-h",
        f"forward transactions accepted {n_tx}, refused {refused}; commands sent {d.sent}, acked {d.acked_ok}, "
        f"retried {d.retried}, given up {d.given_up}, clamped by safety limits {sum(d.clamped.values())}, "
        f"refused by devices {sum(d.refused.values())}; sites flagged {len(opt.relays.dispatcher.flagged)}",
        "weather and base load are known exactly over the horizon (perfect forecast); real-time prices "
        "only for the current 5 minutes, day-ahead prices after it",
    ]
    if any(h.spec.battery for h in w.homes):
        notes.append(f"energy left in batteries at the end: baseline {sum(st.soc_kwh for st in base.states):.1f} "
                     f"kWh, optimized {sum(st.soc_kwh for st in opt.states):.1f} kWh (not valued above)")
    return SimResult(b, o, notes)
