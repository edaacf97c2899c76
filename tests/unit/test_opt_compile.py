"""The matrix path: input maps reproduce Pyomo's own compilation at any inputs."""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
import pytest
from pyomo.repn.plugins.standard_form import LinearStandardFormCompiler

from tendril_transactive.cloud.optimizer.compile import CompileError, compile_model
from tendril_transactive.cloud.optimizer.devices import SiteState
from tendril_transactive.cloud.optimizer.devices.battery import BatterySpec
from tendril_transactive.cloud.optimizer.devices.ev import EvSpec
from tendril_transactive.cloud.optimizer.devices.hvac import HvacSpec
from tendril_transactive.cloud.optimizer.devices.pump import PumpSpec
from tendril_transactive.cloud.optimizer.devices.pv import PvSpec
from tendril_transactive.cloud.optimizer.horizon import DAY_AHEAD
from tendril_transactive.cloud.optimizer.model import SiteSpec, build_model, model_inputs, set_inputs
from tendril_transactive.cloud.optimizer.solve import HighsRunner, SolveState
from tendril_transactive.edge.ev import EvSession
from tests.unit.opt_fixtures import START, forecast

pytestmark = pytest.mark.unit
FULL = SiteSpec("h", hvac=HvacSpec(), pump=PumpSpec(), ev=EvSpec(), battery=BatterySpec(), pv=PvSpec())


def test_input_maps_match_a_fresh_compile_at_new_inputs() -> None:
    h = DAY_AHEAD
    m = build_model(FULL, h, decide_pump=True)
    compiled = compile_model(m)
    fc = forecast(h, sessions=(EvSession(START - 3600, START + 8 * 3600, 15.0),), pump_need_h=5.0,
                  position_kwh=0.7)
    values = model_inputs(FULL, SiteState(t_in_c=19.0, soc_kwh=9.0, ev_stored_kwh=3.0, pump_on=True), fc, h,
                          decide_pump=True)
    p = compiled.pack(values)
    set_inputs(m, values)
    info = LinearStandardFormCompiler().write(m, mixed_form=True)
    assert compiled.n_cols == len(info.columns) and compiled.n_rows == len(info.rows)
    assert np.allclose(compiled.cost(p), np.asarray(info.c.todense()).ravel())
    senses = np.array([s for _, s in info.rows])
    rhs = np.where(senses == -1, compiled.row_lo(p), compiled.row_up(p))
    assert np.allclose(rhs, info.rhs)
    lo = np.array([-np.inf if v.lb is None else v.lb for v in info.columns])
    up = np.array([np.inf if v.ub is None else v.ub for v in info.columns])
    assert np.allclose(compiled.col_lo(p), lo) and np.allclose(compiled.col_up(p), up)


def test_matrix_solve_equals_pyomo_highs_solve() -> None:
    h = DAY_AHEAD
    spec = SiteSpec("h", hvac=HvacSpec(), battery=BatterySpec(), pv=PvSpec())
    fc = forecast(h)
    values = model_inputs(spec, SiteState(), fc, h)
    m = build_model(spec, h)
    set_inputs(m, values)
    result = pyo.SolverFactory("highs").solve(m)
    assert result.solver.termination_condition == pyo.TerminationCondition.optimal
    compiled = compile_model(build_model(spec, h))
    sol = HighsRunner().solve(SolveState(compiled), compiled.pack(values))
    assert sol.objective == pytest.approx(pyo.value(m.cost), rel=1e-7, abs=1e-7)


def test_an_input_inside_the_matrix_is_refused() -> None:
    m = pyo.ConcreteModel()
    m.p = pyo.Param(mutable=True, initialize=2.0)
    m.x = pyo.Var(bounds=(0, 10))
    m.c = pyo.Constraint(expr=m.p * m.x >= 1)
    m.o = pyo.Objective(expr=m.x)
    with pytest.raises(CompileError, match="an input multiplies a variable"):
        compile_model(m)


def test_pack_names_missing_and_wrong_inputs() -> None:
    compiled = compile_model(build_model(SiteSpec("h", hvac=HvacSpec()), DAY_AHEAD))
    values = model_inputs(SiteSpec("h", hvac=HvacSpec()), SiteState(), forecast(DAY_AHEAD), DAY_AHEAD)
    with pytest.raises(ValueError, match="inputs missing for buy"):
        compiled.pack({k: v for k, v in values.items() if k != "buy"})
    with pytest.raises(ValueError, match="has 3 values, the model needs 24"):
        compiled.pack({**values, "sell": np.zeros(3)})
    with pytest.raises(ValueError, match="does not have: bogus"):
        compiled.pack({**values, "bogus": 1.0})
