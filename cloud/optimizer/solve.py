"""Solve compiled site models with HiGHS (highspy), warm-started from the last solve.

One `HighsRunner` holds one HiGHS instance and may serve many sites in turn (a fleet worker
cannot keep a HiGHS instance per site: ~5.5 MB each, docs/measured.md). Each site keeps a
`SolveState`: its last vectors and last optimal basis. When the site is still loaded, a
re-solve only changes the vectors that moved (costs after a price change, bounds after a state
change); when another site was in between, its model is passed again and its basis restored.
Either way the simplex restarts from the previous optimum instead of from scratch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import highspy
import numpy as np

from tendril_transactive.cloud.optimizer.compile import CompiledSite
from tendril_transactive.cloud.optimizer.devices import FloatArray

OPTIMAL = "optimal"


class SolveError(RuntimeError):
    """HiGHS did not return an optimal solution; `status` says why (time limit, infeasible, ...)."""

    def __init__(self, status: str, detail: str = "") -> None:
        super().__init__(f"{status}{': ' + detail if detail else ''}")
        self.status = status


@dataclass
class SolveState:
    """One site's memory between solves, kept by whoever owns the site."""

    compiled: CompiledSite
    cost: FloatArray | None = None
    col_lo: FloatArray | None = None
    col_up: FloatArray | None = None
    row_lo: FloatArray | None = None
    row_up: FloatArray | None = None
    basis: Any = None  # highspy.HighsBasis of the last optimal LP solve
    solves: int = 0


@dataclass(frozen=True)
class Solution:
    x: FloatArray
    objective: float
    status: str
    solve_s: float  # HiGHS run time, wall
    warm: bool  # started from a previous basis
    simplex_iterations: int = 0


def _changed(new: FloatArray, old: FloatArray | None) -> Any:
    if old is None:
        return None
    # inf == inf is True in numpy, so unchanged infinite bounds are not "changed"
    return np.flatnonzero(new != old).astype(np.int32)


class _QuietHighs(highspy.Highs):
    """highspy.Highs that never prints HiGHS's banner.

    highspy's constructor (1.16) registers its callbacks, and that first call into HiGHS writes the
    "Running HiGHS ... Copyright" banner to stdout (once per process) before any option can be
    set: `output_flag` set after construction comes too late. Registering the callbacks is the
    hook that runs before it, so the flag goes in there.
    """

    def enableCallbacks(self) -> None:
        self.setOptionValue("output_flag", False)
        super().enableCallbacks()  # type: ignore[no-untyped-call]


@dataclass
class HighsRunner:
    time_limit_s: float | None = None
    presolve: bool = False  # off: presolve would discard the warm basis
    _highs: Any = field(init=False, repr=False)
    _loaded: SolveState | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._highs = _QuietHighs()  # type: ignore[no-untyped-call]
        self._highs.setOptionValue("presolve", "on" if self.presolve else "off")
        # No "threads" option: HiGHS has one scheduler per process, and setting it here fails every
        # later run if anything else in the process (a Pyomo solve) started HiGHS first. The dual
        # simplex on these LPs runs on one thread anyway.
        self._highs.setOptionValue("mip_rel_gap", 1e-6)

    def _pass(self, st: SolveState, cost: FloatArray, clo: FloatArray, cup: FloatArray,
              rlo: FloatArray, rup: FloatArray) -> bool:
        c = st.compiled
        integrality = c.integer.astype(np.int32)
        status = self._highs.passModel(
            c.n_cols, c.n_rows, len(c.a_value), 1, 1, 0.0, cost, clo, cup, rlo, rup,
            c.a_start, c.a_index, c.a_value, integrality)
        if status == highspy.HighsStatus.kError:
            raise SolveError("bad_model", "HiGHS refused the model")
        self._loaded = st
        if st.basis is not None and not c.integer.any():
            self._highs.setBasis(st.basis)
            return True
        return False

    def _update(self, st: SolveState, cost: FloatArray, clo: FloatArray, cup: FloatArray,
                rlo: FloatArray, rup: FloatArray) -> None:
        h = self._highs
        idx = _changed(cost, st.cost)
        if len(idx):
            h.changeColsCost(len(idx), idx, cost[idx])
        idx = np.union1d(_changed(clo, st.col_lo), _changed(cup, st.col_up)).astype(np.int32)
        if len(idx):
            h.changeColsBounds(len(idx), idx, clo[idx], cup[idx])
        idx = np.union1d(_changed(rlo, st.row_lo), _changed(rup, st.row_up)).astype(np.int32)
        if len(idx):
            h.changeRowsBounds(len(idx), idx, rlo[idx], rup[idx])

    def solve(self, st: SolveState, p: FloatArray, time_limit_s: float | None = None) -> Solution:
        """Solve site `st` at parameter vector `p` (CompiledSite.pack); SolveError unless optimal."""
        c = st.compiled
        cost, clo, cup = c.cost(p), c.col_lo(p), c.col_up(p)
        rlo, rup = c.row_lo(p), c.row_up(p)
        if np.any(clo > cup + 1e-9):
            j = int(np.flatnonzero(clo > cup + 1e-9)[0])
            raise SolveError("infeasible", f"column {j} has lower bound {clo[j]} above upper {cup[j]}")
        limit = time_limit_s if time_limit_s is not None else self.time_limit_s
        # HiGHS compares time_limit with its run clock, which adds up over every run of this
        # instance: the limit for this solve is the clock now plus the budget.
        budget = math.inf if limit is None else self._highs.getRunTime() + max(limit, 0.0)
        self._highs.setOptionValue("time_limit", budget)
        warm = False
        if self._loaded is st and st.cost is not None:
            self._update(st, cost, clo, cup, rlo, rup)
            warm = st.basis is not None
        else:
            warm = self._pass(st, cost, clo, cup, rlo, rup)
        st.cost, st.col_lo, st.col_up, st.row_lo, st.row_up = cost, clo, cup, rlo, rup
        t0 = time.perf_counter()
        self._highs.run()
        elapsed = time.perf_counter() - t0
        status = self._highs.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            text = self._highs.modelStatusToString(status)
            # a failed run leaves no basis worth restarting from
            st.basis = None
            self._loaded = None
            raise SolveError("time_limit" if status == highspy.HighsModelStatus.kTimeLimit else text.lower())
        x = np.asarray(self._highs.getSolution().col_value, dtype=float)
        if not c.integer.any():
            st.basis = self._highs.getBasis()
        st.solves += 1
        info = self._highs.getInfo()
        return Solution(x, float(self._highs.getInfo().objective_function_value), OPTIMAL, elapsed, warm,
                        int(info.simplex_iteration_count))

    def forget(self, st: SolveState) -> None:
        """Drop `st`'s warm start (e.g. after its model was rebuilt)."""
        st.basis = None
        st.cost = None
        if self._loaded is st:
            self._loaded = None
