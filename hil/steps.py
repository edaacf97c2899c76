"""The verbs of the scenario language. Each action takes the bench and the step's `with:` arguments
and returns the values it measured (name -> number); the runner judges them against the limits
the scenario declares. Durations named *_s in arguments are device seconds unless named
timeout_s (real seconds: how long the bench waits before calling it a failure)."""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import tendril_wire as tw

from tendril_transactive.hil.agent import RT_S, BenchAgent
from tendril_transactive.hil.bench import Bench
from tendril_transactive.hil.broker import Received

Values = dict[str, float]
Action = Callable[[Bench, dict[str, Any], dict[str, Any]], Values]


def _num(args: dict[str, Any], name: str, default: float | None = None) -> float:
    value = args.get(name, default)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"argument {name!r} must be a finite number, got {value!r}")
    return float(value)


def _relay_arg(args: dict[str, Any]) -> int:
    value = args.get("relay")
    if value not in (0, 1) or isinstance(value, bool):
        raise ValueError(f"argument 'relay' must be 0 or 1, got {value!r}")
    return int(value)


def wait_online(bench: Bench, args: dict[str, Any], details: dict[str, Any]) -> Values:
    t0 = time.monotonic()
    bench.wait_online(_num(args, "timeout_s", 20.0))
    return {"online_s": time.monotonic() - t0}


def set_input(bench: Bench, args: dict[str, Any], details: dict[str, Any]) -> Values:
    bench.dut.link.set_inputs(**args)
    return {}


def advance(bench: Bench, args: dict[str, Any], details: dict[str, Any]) -> Values:
    sample = bench.advance(_num(args, "seconds"))
    return {"t_in_c": sample.t_in_c, "relay": float(sample.relay), "power_w": sample.power_w}


def network(bench: Bench, args: dict[str, Any], details: dict[str, Any]) -> Values:
    up = bool(args.get("up"))
    if not up:
        bench.boot_mark = bench.broker.mark()  # "online" from now on means: came back
    bench.dut.link.set_network(up)
    bench.notes["net_up_at" if up else "net_cut_at"] = bench.now()
    return {}


def command(bench: Bench, args: dict[str, Any], details: dict[str, Any]) -> Values:
    """One signed command; measures the ack and, if the relay should switch, the switch."""
    relay = _relay_arg(args)
    before = bench.relay()
    sent = bench.command(relay, _num(args, "ttl_s", 600.0))
    ack = bench.wait_ack(sent, _num(args, "timeout_s", 10.0))
    details.update(id=sent.out.cmd["id"], reason=ack.msg["reason"], ack_relay=ack.msg["relay"])
    values = {"ack_latency_s": ack.received - sent.published, "accepted": 1.0 if ack.msg["ok"] else 0.0}
    if ack.msg["ok"] and relay != before:
        event = bench.wait_relay(relay, sent.published, _num(args, "timeout_s", 10.0))
        values["switch_latency_s"] = event.received - sent.published
    values["relay"] = float(bench.relay())
    bench.tick()
    return values


def burst(bench: Bench, args: dict[str, Any], details: dict[str, Any]) -> Values:
    """`count` alternating commands `interval_s` apart; measures the shortest completed on and off
    periods the relay went through (the device's own relay events, on its clock; boot counts as
    switching into the safe default). No completed period = not measured, which fails."""
    count = int(_num(args, "count", 20))
    interval = _num(args, "interval_s", 20.0)
    ttl = _num(args, "ttl_s", 3600.0)
    target = 1 - bench.relay()
    sent = []
    for _ in range(count):
        sent.append(bench.command(target, ttl))
        target = 1 - target
        bench.advance(interval)
    acks = [bench.wait_ack(s, _num(args, "timeout_s", 10.0)) for s in sent]
    reasons: dict[str, int] = {}
    for ack in acks:
        reasons[ack.msg["reason"]] = reasons.get(ack.msg["reason"], 0) + 1
    details["reasons"] = reasons
    events = bench.relay_events()
    periods: dict[int, list[float]] = {0: [], 1: []}
    for prev, nxt in itertools.pairwise(events):
        if prev.msg["relay"] != nxt.msg["relay"]:
            periods[int(prev.msg["relay"])].append(float(nxt.msg["t"]) - float(prev.msg["t"]))
    details["periods"] = periods
    switches = sum(1 for a, b in itertools.pairwise(events) if a.msg["relay"] != b.msg["relay"])
    return {"commands": float(count), "accepted": float(sum(1 for a in acks if a.msg["ok"])),
            "switches": float(switches), "shortest_off_s": min(periods[0], default=math.nan),
            "shortest_on_s": min(periods[1], default=math.nan)}


def expect_safe_default(bench: Bench, args: dict[str, Any], details: dict[str, Any]) -> Values:
    """After the last command expires, the relay must return to its safe default on its own."""
    if not bench.commands:
        raise ValueError("expect_safe_default needs a command before it")
    last = bench.commands[-1]
    safe = bench.safe_default
    mark = len(bench.dut.link.history)

    def fell_back() -> bool:
        return any(e.kind == "relay" and e.msg.get("relay") == safe for e in bench.dut.link.history[mark:])

    bench.advance(max(0.0, last.expires - bench.now()) + _num(args, "within_s", 120.0), until=fell_back)
    event = next((e for e in bench.dut.link.history[mark:] if e.kind == "relay" and e.msg.get("relay") == safe), None)
    details["expires"] = last.expires
    if event is None:
        return {"relay": float(bench.relay())}
    return {"relay": float(bench.relay()), "fallback_after_expiry_s": float(event.msg["t"]) - last.expires}


def expect_telemetry(bench: Bench, args: dict[str, Any], details: dict[str, Any]) -> Values:
    """Every telemetry seq from the first one seen to the last one must have reached the broker,
    including those produced while the network was cut (store and forward)."""
    cut = bench.notes.get("net_cut_at")
    restored = bench.notes.get("net_up_at")
    timeout = _num(args, "timeout_s", 30.0)
    deadline = time.monotonic() + timeout
    while True:
        tele = bench.broker.of_kind(tw.TELEMETRY)
        seqs = [int(m.msg["seq"]) for m in tele]
        live = restored is not None and any(float(m.msg["ts"]) > restored for m in tele)
        missing = (max(seqs) - min(seqs) + 1 - len(set(seqs))) if seqs else -1
        if (seqs and missing == 0 and live) or time.monotonic() > deadline:
            break
        bench.tick()
        time.sleep(0.1)
    during = {int(m.msg["seq"]) for m in tele
              if cut is not None and restored is not None and cut <= float(m.msg["ts"]) <= restored}
    details.update(first_seq=min(seqs, default=None), last_seq=max(seqs, default=None))
    return {"missing_seqs": float(missing), "delivered_from_cut": float(len(during)),
            "duplicates": float(len(seqs) - len(set(seqs)))}


def _plant_energy_wh(bench: Bench, t0: float, t1: float) -> float:
    """Energy the plant delivered over [t0, t1): each sample's power holds until the next sample."""
    samples = bench.plant.samples
    total = 0.0
    for cur, nxt in itertools.pairwise(samples):
        lo, hi = max(t0, cur.t), min(t1, nxt.t)
        if hi > lo:
            total += cur.power_w * (hi - lo) / 3600.0
    return total


def expect_energy(bench: Bench, args: dict[str, Any], details: dict[str, Any]) -> Values:
    """A meter: run the house for `seconds` and compare the energy register's increase with the
    energy the plant drew over the same telemetry interval."""
    mark = bench.broker.mark()
    bench.advance(_num(args, "seconds", 1200.0))
    end = bench.now()
    got = bench.broker.wait_for("meter telemetry after the run", lambda m: m.kind == tw.TELEMETRY
                                and float(m.msg["ts"]) >= end, _num(args, "timeout_s", 10.0), mark)
    tele = [m.msg for m in bench.broker.of_kind(tw.TELEMETRY)[mark:] if m.msg.get("type") == tw.DEVICE_METER]
    tele = [m for m in tele if float(m["ts"]) <= float(got.msg["ts"])]
    if len(tele) < 2:
        raise ValueError(f"need two meter records to compare energy, got {len(tele)}")
    first, last = tele[0], tele[-1]
    device_wh = float(last["energy_wh"]) - float(first["energy_wh"])
    plant_wh = _plant_energy_wh(bench, float(first["ts"]), float(last["ts"]))
    details.update(device_wh=device_wh, plant_wh=plant_wh, window_s=float(last["ts"]) - float(first["ts"]))
    return {"energy_wh": device_wh, "energy_error_pct": 100.0 * abs(device_wh - plant_wh) / max(plant_wh, 1e-9)}


def power_cycle(bench: Bench, args: dict[str, Any], details: dict[str, Any]) -> Values:
    t0 = time.monotonic()
    bench.dut.link.drain_events()
    mark = bench.broker.mark()
    bench.dut.power_cycle()
    boot = bench.dut.link.wait_event("boot", _num(args, "timeout_s", 10.0))
    bench.rebooted(boot, mark)
    details["boot"] = boot.msg.get("boot")
    return {"boot_s": boot.received - t0}


def watchdog(bench: Bench, args: dict[str, Any], details: dict[str, Any]) -> Values:
    """Block the device's event loop; its watchdog must reset it and it must come back."""
    t0 = time.monotonic()
    resets = bench.dut.resets()
    bench.dut.link.drain_events()
    mark = bench.broker.mark()
    bench.dut.link.hang(_num(args, "hang_s", 30.0))
    boot = bench.dut.link.wait_event("boot", _num(args, "timeout_s", 20.0))
    bench.rebooted(boot, mark)
    details["boot"] = boot.msg.get("boot")
    return {"watchdog_boot": 1.0 if boot.msg.get("boot") == "watchdog" else 0.0,
            "recovery_s": boot.received - t0, "resets": float(bench.dut.resets() - resets)}


def _through_broker(bench: Bench, tenders: list[dict[str, Any]], timeout: float) -> tuple[float, list[Received]]:
    """Publish tenders on the site's tender topic; (publish time of the first, the tenders as the
    broker delivered them back)."""
    mark = bench.broker.mark()
    published = [bench.broker.publish(tw.tender_topic(bench.site), tw.encode(tw.TENDER, t)) for t in tenders]
    got = [bench.broker.wait_for(f"tender {t['tenderId']}", _is_tender(t["tenderId"]), timeout, mark)
           for t in tenders]
    return published[0], got


def _is_tender(tender_id: str) -> Callable[[Received], bool]:
    return lambda m: m.kind == tw.TENDER and m.msg["tenderId"] == tender_id


def tender_loop(bench: Bench, args: dict[str, Any], details: dict[str, Any]) -> Values:
    """Real-time tenders -> broker -> the site's agent (cloud.agent.core.SiteAgent, planning with
    an InProcessPlanner) -> its signed command -> broker -> relay switch, `count` times. LMPs
    alternate between `low_lmp` and `high_lmp` ($/MWh; the market's adders make the tender
    prices), against day-ahead tenders at `reference_lmp` for the hours after; the latency runs
    from publishing the tenders to the device reporting the switch on the link."""
    count = int(_num(args, "count", 100))
    low, high = _num(args, "low_lmp", -300.0), _num(args, "high_lmp", 600.0)
    reference = _num(args, "reference_lmp", 40.0)
    timeout = _num(args, "timeout_s", 10.0)
    agent = BenchAgent(bench.site, bench.device, bench.plant.config)
    try:
        now = bench.now()
        agent.warm_up(now, reference)
        _, day_ahead = _through_broker(bench, agent.day_ahead(now, 26, reference), timeout)
        agent.on_tenders([m.msg for m in day_ahead], bench.now())
        latencies: list[float] = []
        solves: list[float] = []
        sources: dict[str, int] = {}
        txs = 0
        start = 0
        lmp = low if bench.relay() == 0 else high
        for _ in range(count):
            start = max(math.floor(bench.now()), start + 1)  # the interval under way, one per tender
            tenders = agent.tenders("RTM", start, RT_S, lmp, bench.now())
            published, got = _through_broker(bench, tenders, timeout)
            now = bench.now()
            sample = bench.plant.samples[-1] if bench.plant.samples else None
            if sample is not None:
                agent.observe_plant(now, sample.t_in_c, sample.ev_stored_kwh)
            ready = agent.on_tenders([m.msg for m in got], now)
            if ready is None:
                raise ValueError(f"the agent did not take the tenders of interval {start} as a real-time pair")
            decision, solve_s = agent.decide(now, ready)
            solves.append(solve_s)
            sources[decision.source] = sources.get(decision.source, 0) + 1
            on = decision.relays[bench.device]
            sent = bench.command(on, decision.valid_until - bench.now())
            event = bench.wait_relay(on, published, timeout)
            latencies.append(event.received - published)
            ack = bench.wait_ack(sent, timeout)
            agent.agent.settle(bench.device, int(ack.msg["relay"]))
            for tx in decision.transactions:  # on the wire as the agent would send it
                bench.broker.publish(tw.site_topic(bench.site, tw.TRANSACTION), tw.encode(tw.TRANSACTION, tx))
                txs += 1
            bench.plant.price = float(got[0].msg["price"])
            bench.tick()
            lmp = high if lmp == low else low
    finally:
        agent.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)]
    details.update(solve_p50_s=statistics.median(solves), latency_max_s=latencies[-1], sources=sources,
                   transactions=txs)
    return {"commands": float(count), "latency_p50_s": statistics.median(latencies), "latency_p99_s": p99}


ACTIONS: dict[str, Action] = {
    "wait_online": wait_online,
    "set_input": set_input,
    "advance": advance,
    "network": network,
    "command": command,
    "burst": burst,
    "expect_safe_default": expect_safe_default,
    "expect_telemetry": expect_telemetry,
    "expect_energy": expect_energy,
    "power_cycle": power_cycle,
    "watchdog": watchdog,
    "tender_loop": tender_loop,
}
