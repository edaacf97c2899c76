"""The HIL bench's site agent is the agent core: wire tenders built by the market's code go into a
cloud.agent.core.SiteAgent, which plans the plant's load through an InProcessPlanner and decides
the relay (no firmware here; tests/hil/test_hil_scenarios.py runs it against the device)."""

from __future__ import annotations

import pytest
import tendril_wire as tw

from tendril_transactive.cloud.agent.core import SiteAgent
from tendril_transactive.cloud.agent.planner import InProcessPlanner
from tendril_transactive.hil.agent import RT_S, BenchAgent
from tendril_transactive.hil.plant import PlantConfig
from tendril_transactive.hil.runner import SIM_ORIGIN

pytestmark = pytest.mark.unit


def test_the_bench_agent_answers_real_time_tenders_with_the_core() -> None:
    agent = BenchAgent("hil", "relay-1", PlantConfig(load="hvac", t_in_c=21.0, t_out_c=5.0))
    assert isinstance(agent.agent, SiteAgent) and isinstance(agent.planner, InProcessPlanner)
    assert dict(agent.cfg.relays) == {"relay-1": "hvac"}
    now = SIM_ORIGIN + 5
    day_ahead = agent.day_ahead(now, 26, 40.0)
    assert all(tw.validate(tw.TENDER, t) == t and t["marketId"] == "DAM" for t in day_ahead)
    assert agent.on_tenders(day_ahead, now) is None  # day-ahead tenders alone decide no interval
    relays, txs = [], []
    start = int(now)
    for i, lmp in enumerate((-300.0, 600.0, -300.0, 600.0)):
        agent.observe_plant(now, 21.0, 0.0)
        tenders = agent.tenders("RTM", start, RT_S, lmp, now)
        assert {t["side"] for t in tenders} == {tw.SIDE_BUY, tw.SIDE_SELL} and tenders[0]["counterPartyId"] == "hil"
        assert agent.on_tenders(tenders, now) == start
        decision, solve_s = agent.decide(now, start)
        assert decision.source == "plan" and solve_s >= 0, decision.notes
        assert not any("indoor temperature" in n for n in decision.notes)  # the plant's, not assumed
        relays.append(decision.relays["relay-1"])
        txs += [tw.validate(tw.TRANSACTION, tx) for tx in decision.transactions]
        assert agent.on_tenders(tenders, now) is None, "an interval is decided once"
        now += 3
        start += 1 + i
    # cheap now and dearer later: heat now; dear now: wait
    assert relays == [1, 0, 1, 0]
    assert txs and all(tx["partyId"] == "hil-agent" for tx in txs)
    agent.close()


def test_the_bench_agent_plans_every_plant_load() -> None:
    for load in ("hvac", "ev", "pump"):
        agent = BenchAgent("hil", "relay-1", PlantConfig(load=load))
        assert getattr(agent.cfg.spec, load) is not None and dict(agent.cfg.relays) == {"relay-1": load}
        agent.close()
