"""Schedule one relay load (e.g. a pool pump) against tender buy prices: a small Pyomo MILP on HiGHS.

Decision: on/off per interval (binary). Minimise energy cost subject to exactly the required number
of run intervals, an optional mask of allowed intervals and an optional cap on starts (each start
wears the motor and contactor). Exactly, not at least: extra run time is wear the owner did not ask
for, and a tender price low enough to pay for it should be a separate, explicit offer.

Infeasible requests are rejected before the solver runs, with the reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pyomo.environ as pyo

# The pyomo.contrib.solver HiGHS interface (what "highs" names in Pyomo 6.10). Measured against
# "appsi_highs" on this machine: the same speed within noise; this one is Pyomo's maintained path.
SOLVER = "highs"


class OptimizerError(RuntimeError):
    """The solver did not prove optimality on a problem that was checked to be feasible."""


@dataclass(frozen=True)
class RelaySchedule:
    on: list[int]  # 0/1 per interval
    cost_usd: float
    status: str
    solve_s: float

    @property
    def starts(self) -> int:
        return sum(1 for i, v in enumerate(self.on) if v and (i == 0 or not self.on[i - 1]))


def _allowed_runs(allowed: Sequence[bool]) -> list[int]:
    runs: list[int] = []
    length = 0
    for ok in [*allowed, False]:
        if ok:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def _check(
    buy: Sequence[float],
    interval_s: float,
    load_kw: float,
    required: int,
    allowed: Sequence[bool],
    max_starts: int | None,
) -> None:
    n = len(buy)
    if n == 0:
        raise ValueError("no intervals to schedule (empty price list)")
    bad = [i for i, p in enumerate(buy) if not math.isfinite(p)]
    if bad:
        raise ValueError(f"buy prices must be finite; interval(s) {bad[:5]} are not")
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    if not (math.isfinite(load_kw) and load_kw > 0):
        raise ValueError(f"load_kw must be > 0, got {load_kw}")
    if len(allowed) != n:
        raise ValueError(f"allowed mask has {len(allowed)} entries for {n} intervals")
    if required < 0:
        raise ValueError(f"required run intervals must be >= 0, got {required}")
    runs = _allowed_runs(allowed)
    if required > sum(runs):
        raise ValueError(f"infeasible: {required} run intervals required but only {sum(runs)} of {n} allowed")
    if max_starts is not None:
        if max_starts < 0:
            raise ValueError(f"max_starts must be >= 0, got {max_starts}")
        # With k starts the longest possible run time is the k longest allowed stretches together.
        reachable = sum(sorted(runs, reverse=True)[:max_starts])
        if required > reachable:
            raise ValueError(
                f"infeasible: {required} run intervals required but at most {reachable} fit in "
                f"{max_starts} start(s) within the allowed intervals"
            )


def _model(
    buy: Sequence[float], energy_kwh: float, required: int, allowed: Sequence[bool], max_starts: int | None
) -> pyo.ConcreteModel:
    n = len(buy)
    m = pyo.ConcreteModel(name="relay_schedule")
    m.T = pyo.RangeSet(0, n - 1)
    m.on = pyo.Var(m.T, domain=pyo.Binary)
    for t in range(n):
        if not allowed[t]:
            m.on[t].fix(0)
    m.cost = pyo.Objective(expr=sum(buy[t] * energy_kwh * m.on[t] for t in range(n)), sense=pyo.minimize)
    m.runtime = pyo.Constraint(expr=sum(m.on[t] for t in range(n)) == required)
    if max_starts is not None:
        # start[t] >= on[t] - on[t-1] (off before the horizon); continuous is enough because the
        # cap only pushes it down to that bound, which is 0 or 1 whenever `on` is integral.
        m.start = pyo.Var(m.T, bounds=(0, 1))
        m.start_def = pyo.Constraint(
            m.T, rule=lambda m, t: m.start[t] >= m.on[t] - (m.on[t - 1] if t > 0 else 0)
        )
        m.start_cap = pyo.Constraint(expr=sum(m.start[t] for t in range(n)) <= max_starts)
    return m


def schedule_relay(
    buy_usd_per_kwh: Sequence[float],
    interval_s: float,
    load_kw: float,
    required_intervals: int,
    allowed: Sequence[bool] | None = None,
    max_starts: int | None = None,
) -> RelaySchedule:
    """Cheapest on/off schedule for one relay load; raises ValueError on infeasible input."""
    mask = [True] * len(buy_usd_per_kwh) if allowed is None else [bool(a) for a in allowed]
    _check(buy_usd_per_kwh, interval_s, load_kw, required_intervals, mask, max_starts)
    energy_kwh = load_kw * interval_s / 3600.0
    n = len(buy_usd_per_kwh)
    if required_intervals == 0:
        return RelaySchedule([0] * n, 0.0, "optimal", 0.0)
    model = _model(buy_usd_per_kwh, energy_kwh, required_intervals, mask, max_starts)
    t0 = time.perf_counter()
    # A zero gap: schedules are small, and "optimal" should mean optimal, not within 0.01 %.
    result = pyo.SolverFactory(SOLVER).solve(model, options={"mip_rel_gap": 0.0})
    solve_s = time.perf_counter() - t0
    condition = result.solver.termination_condition
    if condition != pyo.TerminationCondition.optimal:
        raise OptimizerError(f"HiGHS stopped with {condition} on a feasible relay schedule")
    on = [round(pyo.value(model.on[t])) for t in range(n)]
    cost = sum(p * energy_kwh for p, v in zip(buy_usd_per_kwh, on, strict=True) if v)
    return RelaySchedule(on, cost, str(condition), solve_s)
