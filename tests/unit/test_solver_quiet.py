"""Solving prints nothing: HiGHS's banner and log stay off stdout and stderr (issue 14, item 8).

The solves run in a fresh interpreter. HiGHS writes its banner once per process, so in the
pytest process any earlier test that touched HiGHS would already have used it up, and this test
would pass whether or not the solver is silenced.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

# The agent's path (SitePlanner -> HighsRunner): a day-ahead MILP (the pump decided) and a
# real-time LP, then the Pyomo path (cloud.optimizer.relay). Each prints a result line, so an
# empty output cannot come from a solve that never ran.
CHILD = textwrap.dedent("""
    from tendril_transactive.cloud.optimizer.devices import SiteState
    from tendril_transactive.cloud.optimizer.devices.battery import BatterySpec
    from tendril_transactive.cloud.optimizer.devices.hvac import HvacSpec
    from tendril_transactive.cloud.optimizer.devices.pump import PumpSpec
    from tendril_transactive.cloud.optimizer.horizon import DAY_AHEAD, REAL_TIME, SitePlanner
    from tendril_transactive.cloud.optimizer.model import SiteSpec
    from tendril_transactive.cloud.optimizer.relay import schedule_relay
    from tests.unit.opt_fixtures import forecast

    planner = SitePlanner(SiteSpec("h", hvac=HvacSpec(), pump=PumpSpec(), battery=BatterySpec()))
    da = planner.solve("da", SiteState(), forecast(DAY_AHEAD, pump_need_h=5.0))
    rt = planner.solve("rt", SiteState(), forecast(REAL_TIME))
    relay = schedule_relay([0.5, 0.1, 0.4, 0.2], 3600, 1.5, 2)
    print("solved", da.objective_usd, rt.objective_usd, relay.on)
""")


def test_solves_print_no_highs_banner_or_log() -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert out.startswith("solved ") and "[0, 1, 0, 1]" in out, out
    assert out.count("\n") == 1, out
    assert "HiGHS" not in out and "Copyright" not in out, out
