"""`tendril simulate` runs the agent core: every decision the optimized run executes for a home is
what a fresh cloud.agent.core.SiteAgent decides when fed the same wire messages (tenders,
confirms) and the same measured state, in the same order; and the hooks the simulation needs
(observe_state, base_load, position_series) behave."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from tendril_transactive.cloud.agent.core import Decision, SiteAgent
from tendril_transactive.cloud.agent.planner import InProcessPlanner
from tendril_transactive.cloud.billing.tariff import default_tariff
from tendril_transactive.cloud.market.tenders import TenderConfig
from tendril_transactive.cloud.sim.inputs import LOOKAHEAD_STEPS
from tendril_transactive.cloud.sim.report import subscriptions
from tendril_transactive.cloud.sim.run import (
    SimConfig,
    World,
    _subscribed_hours,
    make_agents,
    make_world,
    run_baseline,
    run_optimized,
)
from tendril_transactive.cloud.sim.trades import SimMarket

pytestmark = pytest.mark.unit

STEPS = 18  # midnight to 01:30: a day-ahead round and 18 real-time rounds


def _setup(sites: int) -> tuple[World, dict[str, Any]]:
    cfg = SimConfig(sites=sites, days=1, start="2024-03-12", loss=0.0)
    tconf = TenderConfig()
    w = make_world(cfg, tconf)
    base = run_baseline(w, lambda _: None)
    subs = subscriptions([h.site for h in w.homes], base.grid_kwh, w.start, default_tariff())
    total = w.steps + LOOKAHEAD_STEPS
    subscribed = {h.site: _subscribed_hours(s, w.start, w.steps, total) for h, s in zip(w.homes, subs, strict=True)}
    return dataclasses.replace(w, steps=STEPS), {"cfg": cfg, "tconf": tconf, "subscribed": subscribed}


def _fields(d: Decision) -> tuple[Any, ...]:
    return (d.interval_start, d.source, d.relays, d.duties, d.transactions, d.valid_until)


def test_the_simulated_home_decides_exactly_as_a_site_agent_fed_the_same_inputs() -> None:
    w, ctx = _setup(1)  # home-0001: heat pump, EV, battery, PV
    market = SimMarket([h.site for h in w.homes], w.start, w.prices, ctx["tconf"])
    agents = make_agents(w, ctx["subscribed"], 5.0)
    events: list[tuple[str, str, Any]] = []
    planner = InProcessPlanner({h.site: h.spec for h in w.homes}, 5.0)
    log = run_optimized(w, market, agents, planner, ctx["cfg"], lambda _: None,
                        trace=lambda site, kind, payload: events.append((site, kind, payload)))
    assert set(agents[0].cfg.relays) == {"hvac", "ev"} and agents[0].cfg.spec.battery is not None

    # The same inputs, in the same order, to a fresh agent that has never seen the simulation.
    fresh: SiteAgent = make_agents(w, ctx["subscribed"], 5.0)[0]
    replay = InProcessPlanner({h.site: h.spec for h in w.homes}, 5.0)
    decisions, rt, compared_da = [], None, 0
    for _site, kind, payload in events:
        if kind == "tender":
            fresh.on_tender(*payload)
        elif kind == "state":
            now, values = payload
            fresh.observe_state(now, **values)
        elif kind == "da":
            job = fresh.da_job(payload)
            assert job is not None
            da_txs, _ = fresh.apply_da(payload, replay.plan([job])[0])
        elif kind == "da_done":
            assert payload == da_txs and payload  # the same hourly trades, and some were made
            compared_da += 1
        elif kind == "rt":
            now, start = payload
            job, notes = fresh.rt_job(now, start)
            rt = (now, start, replay.plan([job])[0], notes)
        elif kind == "decision":
            assert rt is not None and rt[1] == payload.interval_start
            mine = fresh.decide(*rt)
            assert _fields(mine) == _fields(payload)
            decisions.append(payload)
            rt = None
        elif kind == "confirm":
            fresh.on_confirm(payload)
        elif kind == "settle":
            for device, actual in payload.items():
                fresh.settle(device, actual)
        elif kind == "prune":
            fresh.book.prune(payload)
    assert compared_da == 1 and len(decisions) == STEPS
    assert all(d.source == "plan" for d in decisions)
    assert any(d.transactions for d in decisions)
    # what the houses ran on is what the agent decided: one command per relay per step, every
    # relay's state at the end of the run the agent's last decision (no loss, no clamp here)
    assert log.relays is not None
    assert log.relays.dispatcher.stats.sent == STEPS * len(decisions[0].relays)
    for device, value in decisions[-1].relays.items():
        assert log.relays.state(w.homes[0].site, device) == value
    # and the market recorded each transaction the agent sent, under the agent's own id
    sent = {tx["transactionId"] for d in decisions for tx in d.transactions} | {tx["transactionId"] for tx in da_txs}
    assert {tx.transaction_id for tx in market.transactions[w.homes[0].site]} == sent


def test_observe_state_replaces_the_wire_estimates_and_refuses_unknown_names() -> None:
    w, ctx = _setup(2)  # home-0002 has the pool pump
    agent = make_agents(w, ctx["subscribed"], 5.0)[1]
    assert agent.cfg.spec.pump is not None
    now = w.start + 600
    state, notes = agent._state(now)
    assert any(n.startswith("indoor temperature") for n in notes)
    agent.observe_state(now, t_in_c=22.25, pump_on=True, pump_done_h=1.5, ev_stored_kwh=3.0)
    state, notes = agent._state(now + 60)
    assert (state.t_in_c, state.pump_on, state.pump_done_h, state.ev_stored_kwh) == (22.25, True, 1.5, 3.0)
    assert not any(n.startswith(("indoor temperature", "pump relay", "EV relay")) for n in notes)
    assert agent.telemetry.pump_done(now) == 1.5
    stale, _ = agent._state(now + agent.options.stale_after_s + 1)  # an old measurement is not used
    assert stale.t_in_c != 22.25
    with pytest.raises(ValueError, match="unknown quantity 'humidity'"):
        agent.observe_state(now, humidity=40.0)
    with pytest.raises(ValueError, match="must be finite"):
        agent.observe_state(now, t_in_c=float("nan"))


def test_position_series_equals_position_per_step_and_base_load_hook_is_used() -> None:
    w, ctx = _setup(1)
    market = SimMarket([h.site for h in w.homes], w.start, w.prices, ctx["tconf"])
    agents = make_agents(w, ctx["subscribed"], 5.0)
    planner = InProcessPlanner({h.site: h.spec for h in w.homes}, 5.0)
    run_optimized(dataclasses.replace(w, steps=4), market, agents, planner, ctx["cfg"], lambda _: None)
    book = agents[0].book
    assert book.confirmed, "the run made trades"
    for start, steps, step_s in ((w.start, 288, 300.0), (w.start + 150, 30, 300.0), (w.start, 24, 3600.0)):
        series = book.position_series(start, steps, step_s)
        each = [book.position_kwh(start + k * step_s, step_s) for k in range(steps)]
        assert series.tolist() == pytest.approx(each, rel=1e-12, abs=1e-12)
    job, _ = agents[0].rt_job(w.start + 4 * 300 - 10, w.start + 4 * 300)
    assert np.allclose(job.forecast.base_kw, w.base[0][4:4 + 288])  # the sim's forecast, not a held meter value
