# Meter node logic: integrate sampled site power into an energy register over device time.
#
# Power is held between samples (zero-order hold), so the energy added from one sample
# to the next is exactly held_power * elapsed. energy_wh is the import register: it
# never decreases (the wire contract forbids negative energy); export is not counted.

import tendril_wire as tw

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class MeterNode:
    def __init__(self):
        # type: () -> None
        self.power_w = 0.0
        self.energy_wh = 0.0
        self.last_t = None  # type: float | None
        self.seq = 0

    def sample(self, now, power_w):
        # type: (float, float) -> None
        """Record a power reading taken at `now`; it holds until the next sample."""
        self._advance(now)
        self.power_w = float(power_w)

    def telemetry(self, now):
        # type: (float) -> dict[str, Any]
        """A telemetry record for `now` with the next sequence number."""
        self._advance(now)
        msg = tw.telemetry_meter(self.seq, now, self.power_w, self.energy_wh)
        self.seq += 1
        return msg

    def _advance(self, now):
        # type: (float) -> None
        if self.last_t is not None and now > self.last_t and self.power_w > 0:
            self.energy_wh += self.power_w * (now - self.last_t) / 3600.0
        # A clock stepped backwards (NTP correction) restarts the interval rather than
        # subtracting energy.
        self.last_t = now
