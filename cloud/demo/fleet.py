"""The demo's simulated sites: a registered site with a house model and four real firmware nodes.

Each site is registered like a real one (cloud.devices.registry: feeder, agent, load settings,
subscription, per-device keys in 0600 files) in a registry folder of the run, so the market and
the agent read it exactly as they would in production. Each site has a meter and three relays
(pool pump, heat pump, EV charger), each a MicroPython unix-port process, behind edge.house.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tendril_transactive.cloud.devices.registry import Registry, SiteRecord
from tendril_transactive.edge.firmware_process import FirmwareConfig, FirmwareProcess
from tendril_transactive.edge.house import EvPlan, FileHouse
from tendril_transactive.edge.site import LOCAL_TZ, SiteModel

# Feeders the demo sites hang off; the second runs hot, so its congestion adder shows.
FEEDERS = (("feeder-a", 0.55), ("feeder-b", 0.95))
METER = "meter"
RELAYS = ("pump", "hvac", "ev")  # device id = the load it switches
PUMP_KW = 1.5
# The optimizer's settings per load (cloud.optimizer.devices specs); the house uses the same
# physics defaults (edge.thermal, edge.ev).
SETTINGS: dict[str, dict[str, float | bool]] = {
    "pump": {"kw": PUMP_KW, "hours_per_day": 6.0, "max_starts": 2},
    "hvac": {"t_min_c": 20.0, "t_max_c": 23.0, "can_cool": False},
    "ev": {},
}
MIN_ON_OFF_S = {"pump": 300, "hvac": 300, "ev": 300}


@dataclass
class DemoSite:
    site: str
    feeder: str
    feeder_load_ratio: float
    workdir: Path
    model: SiteModel
    house: FileHouse
    processes: list[FirmwareProcess] = field(default_factory=list)

    @property
    def devices(self) -> list[str]:
        return [METER, *RELAYS]

    def start_firmware(self, host: str, port: int, registry: Registry, clock_env: str, telemetry_s: int,
                       credentials: bool) -> None:
        def login(device: str) -> tuple[str | None, str | None]:
            if not credentials:
                return None, None
            return f"{self.site}.{device}", registry.secrets_for(self.site, device).mqtt_password

        user, password = login(METER)
        meter = FirmwareConfig(site=self.site, device=METER, type="meter", broker_host=host, broker_port=port,
                               key=registry.secrets_for(self.site, METER).key, telemetry_s=telemetry_s,
                               state_s=10 * telemetry_s, power_file=self.house.power_file, username=user,
                               password=password)
        configs = [meter]
        for load in RELAYS:
            user, password = login(load)
            configs.append(dataclasses.replace(
                meter, device=load, type="relay", key=registry.secrets_for(self.site, load).key,
                relay_file=self.house.relay_files[load], relay_load_w=1000.0 * self.house.load_kw(load, 0.0),
                min_on_s=MIN_ON_OFF_S[load], min_off_s=MIN_ON_OFF_S[load], username=user, password=password))
        for cfg in configs:
            proc = FirmwareProcess(cfg, self.workdir / cfg.device, clock_env=clock_env)
            proc.start()
            self.processes.append(proc)

    def stop_firmware(self) -> None:
        for proc in self.processes:
            proc.stop()


def subscription_by_hour(model: SiteModel, day_start: float) -> tuple[float, ...]:
    """The site's subscription: its own base load per local hour of the day before the run (its
    "history"), plus the pool pump's daily hours spread evenly, in kWh."""
    out = []
    pump_kwh = PUMP_KW * float(SETTINGS["pump"]["hours_per_day"]) / 24.0
    for hour in range(24):
        t0 = day_start - 86400 + hour * 3600
        kwh = model.energy_wh(t0, t0 + 3600, lambda _t: 0) / 1000.0 + pump_kwh
        out.append(round(kwh, 4))
    return tuple(out)


def make_sites(count: int, out: Path, start: float, registry: Registry) -> list[DemoSite]:
    """`count` sites, registered in `registry` (sites, devices, fresh keys) and with their houses."""
    if count < 1:
        raise ValueError("the demo needs at least one site")
    sites = []
    day = datetime.fromtimestamp(start, LOCAL_TZ).replace(hour=0, minute=0, second=0).timestamp()
    for i in range(count):
        name = f"site-{i + 1}"
        feeder, ratio = FEEDERS[i % len(FEEDERS)]
        workdir = out / "sites" / name
        workdir.mkdir(parents=True)
        model = SiteModel(name, seed=i, relay_load_w=0.0)
        registry.set_site(SiteRecord(name, feeder=feeder, settings=SETTINGS,
                                     subscription_kwh_by_hour=subscription_by_hour(model, day)))
        registry.add(name, METER, "meter", rating_w=25_000.0)
        for load in RELAYS:
            registry.add(name, load, "relay", load=load)
        house = FileHouse(model, workdir / "power_w", {load: workdir / f"relay_{load}" for load in RELAYS},
                          pump_kw=PUMP_KW, ev_plan=EvPlan(arrive_h=18.0 + i % 3, need_kwh=10.0 + 2 * i % 6))
        house.step(start)
        sites.append(DemoSite(name, feeder, ratio, workdir, model, house))
    return sites
