"""A site's solved plan: forward transactions to request and a per-step device schedule."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tendril_transactive.cloud.optimizer.compile import CompiledSite
from tendril_transactive.cloud.optimizer.devices import FloatArray, Horizon
from tendril_transactive.cloud.optimizer.devices.hvac import violation_ch
from tendril_transactive.cloud.optimizer.model import SiteSpec
from tendril_transactive.cloud.optimizer.solve import Solution

# Below this a forward transaction is not worth a ledger record (1 Wh).
MIN_TRADE_KWH = 1e-3


@dataclass(frozen=True)
class Trade:
    step: int
    start: float
    side: str  # BUY or SELL, the customer's side
    kwh: float


@dataclass(frozen=True)
class SiteSchedule:
    site: str
    start: float
    step_s: float
    objective_usd: float
    buy_kwh: FloatArray  # forward transactions to request, per step
    sell_kwh: FloatArray
    hvac_heat: FloatArray  # share of the step the heat pump heats / cools
    hvac_cool: FloatArray
    temp_c: FloatArray  # planned indoor temperature at the end of each step
    pump_on: FloatArray
    ev_kw: FloatArray
    battery_kw: FloatArray  # + charge, - discharge
    soc_kwh: FloatArray  # at the end of each step
    comfort_violation_ch: float  # degree-hours outside the band the plan accepts (penalty paid)
    ev_short_kwh: float
    pump_short_h: float
    solve_s: float
    warm: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def steps(self) -> int:
        return len(self.buy_kwh)

    def index_at(self, t: float) -> int | None:
        """The step containing unix time `t`, or None outside the plan."""
        k = int((t - self.start) // self.step_s)
        return k if 0 <= k < self.steps else None

    def trades(self) -> list[Trade]:
        out = []
        for k in range(self.steps):
            if self.buy_kwh[k] >= MIN_TRADE_KWH:
                out.append(Trade(k, self.start + k * self.step_s, "BUY", float(self.buy_kwh[k])))
            elif self.sell_kwh[k] >= MIN_TRADE_KWH:
                out.append(Trade(k, self.start + k * self.step_s, "SELL", float(self.sell_kwh[k])))
        return out


def extract(spec: SiteSpec, c: CompiledSite, sol: Solution, h: Horizon, start: float) -> SiteSchedule:
    x = sol.x
    zeros = np.zeros(h.steps)

    def get(name: str, n: int = h.steps) -> FloatArray:
        return c.values(x, name) if name in c.columns else np.zeros(n)

    temp = get("hvac_temp", h.steps + 1)[1:] if spec.hvac else zeros
    violation = 0.0
    if spec.hvac is not None:
        violation = violation_ch(temp, spec.hvac.t_min_c, spec.hvac.t_max_c, h.dt_h)
    soc = get("bat_soc", h.steps + 1)[1:] if spec.battery else zeros
    return SiteSchedule(
        site=spec.site, start=start, step_s=h.step_s, objective_usd=sol.objective,
        buy_kwh=np.clip(get("buy_kwh"), 0, None), sell_kwh=np.clip(get("sell_kwh"), 0, None),
        hvac_heat=np.clip(get("hvac_heat"), 0, 1), hvac_cool=np.clip(get("hvac_cool"), 0, 1), temp_c=temp,
        pump_on=np.clip(get("pump_on"), 0, 1), ev_kw=np.clip(get("ev_kw"), 0, None),
        battery_kw=get("bat_charge") - get("bat_discharge"), soc_kwh=soc,
        comfort_violation_ch=violation,
        ev_short_kwh=float(get("ev_short", 1)[0]) if "ev_short" in c.columns else 0.0,
        pump_short_h=float(get("pump_short", 1)[0]) if "pump_short" in c.columns else 0.0,
        solve_s=sol.solve_s, warm=sol.warm)


@dataclass
class DutyRounder:
    """Turn a share of a step (0..1) into relay on/off per step, carrying the rounding error so
    the energy over many steps matches the plan (first-order sigma-delta)."""

    error: float = 0.0

    def propose(self, duty: float) -> int:
        return 1 if min(1.0, max(0.0, duty)) + self.error >= 0.5 else 0

    def settle(self, duty: float, actual: int) -> None:
        """Carry what the relay actually did (it may have been clamped) into the next step."""
        self.error = max(-1.0, min(1.0, min(1.0, max(0.0, duty)) + self.error - actual))
