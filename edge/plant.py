"""The physical side of a simulated site, as seen by the unix-port firmware's "pins".

Two small files are the whole interface: the relay firmware writes `relay_file` ("0"/"1",
atomically) and the meter firmware reads `power_file` (watts as decimal text). `step` closes the
loop once: read the relay, compute site power, publish it. Writes go through a temporary file and
os.replace so the firmware never reads a half-written number.
"""

from __future__ import annotations

import os
from pathlib import Path

from tendril_transactive.edge.site import SiteModel


class FilePlant:
    def __init__(self, model: SiteModel, power_file: Path, relay_file: Path) -> None:
        self.model = model
        self.power_file = Path(power_file)
        self.relay_file = Path(relay_file)
        self.relay_on = False
        self.garbage_reads = 0  # relay file contents that were neither "0" nor "1"
        self.last_power_w = 0.0

    def read_relay(self) -> bool:
        """The relay pin: missing file = off (firmware not started); garbage keeps the last state."""
        try:
            raw = self.relay_file.read_bytes()
        except FileNotFoundError:
            self.relay_on = False
            return False
        text = raw.strip()
        if text in (b"0", b"1"):
            self.relay_on = text == b"1"
        else:
            self.garbage_reads += 1
        return self.relay_on

    def write_power(self, power_w: float) -> None:
        tmp = self.power_file.with_name(f".{self.power_file.name}.tmp")
        # Fixed-point: never scientific notation, which a minimal firmware parser might reject.
        tmp.write_text(f"{power_w:.3f}")
        os.replace(tmp, self.power_file)

    def step(self, now: float) -> float:
        """Read the relay, compute site power at `now`, write it for the meter; returns watts."""
        power = self.model.power_w(now, self.read_relay())
        self.write_power(power)
        self.last_power_w = power
        return power
