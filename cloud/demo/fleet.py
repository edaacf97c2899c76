"""The demo's simulated sites: a house model plus two real firmware processes each."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge.firmware_process import FirmwareConfig, FirmwareProcess
from edge.plant import FilePlant
from edge.site import SiteModel

# Feeders the demo sites hang off; the second runs hot, so its congestion adder shows.
FEEDERS = (("feeder-a", 0.55), ("feeder-b", 0.95))


@dataclass
class DemoSite:
    site: str
    feeder: str
    feeder_load_ratio: float
    workdir: Path
    model: SiteModel
    plant: FilePlant
    meter_device: str = "meter"
    relay_device: str = "pump"
    schedule: list[int] = field(default_factory=list)
    da_buy: list[float] = field(default_factory=list)
    processes: list[FirmwareProcess] = field(default_factory=list)

    def start_firmware(self, host: str, port: int, keys: dict[tuple[str, str], bytes], clock_env: str,
                       telemetry_s: int) -> None:
        common = {
            "site": self.site,
            "broker_host": host,
            "broker_port": port,
            "telemetry_s": telemetry_s,
            "state_s": 10 * telemetry_s,
            "power_file": str(self.plant.power_file),
            "relay_file": str(self.plant.relay_file),
            "relay_load_w": self.model.relay_load_w,
        }
        meter = FirmwareConfig(device=self.meter_device, type="meter",
                               key=keys[(self.site, self.meter_device)], **common)  # type: ignore[arg-type]
        relay = FirmwareConfig(device=self.relay_device, type="relay",
                               key=keys[(self.site, self.relay_device)],
                               min_on_s=300, min_off_s=300, **common)  # type: ignore[arg-type]
        for cfg in (meter, relay):
            proc = FirmwareProcess(cfg, self.workdir / cfg.device, clock_env=clock_env)
            proc.start()
            self.processes.append(proc)

    def stop_firmware(self) -> None:
        for proc in self.processes:
            proc.stop()


def make_sites(count: int, out: Path, start: float, relay_load_w: float) -> list[DemoSite]:
    if count < 1:
        raise ValueError("the demo needs at least one site")
    sites = []
    for i in range(count):
        name = f"site-{i + 1}"
        feeder, ratio = FEEDERS[i % len(FEEDERS)]
        workdir = out / "sites" / name
        workdir.mkdir(parents=True)
        model = SiteModel(name, seed=i, relay_load_w=relay_load_w)
        plant = FilePlant(model, workdir / "power_w", workdir / "relay")
        plant.step(start)
        sites.append(DemoSite(name, feeder, ratio, workdir, model, plant))
    return sites
