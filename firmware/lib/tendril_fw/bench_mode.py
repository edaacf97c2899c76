# Bench mode, the part every bench board shares (boards/bench on the unix port,
# boards/esp32_bench on a UART): the device side of the bench link (tendril_fw.bench_link)
# with the bench's sensor inputs, the relay output as events, the network cut and the
# device's link counters.
#
# No I/O of its own, so one implementation serves every board and runs in tests:
#   port  anything with write(bytes) (machine.UART on an ESP32, a pty file on the unix
#         port, a fake in tests; tendril_fw.bench_uart reads a UART into feed())
#   host  the board: now() (device clock), free_heap() -> int|None, log(text),
#         block(seconds) (stalls the event loop: the watchdog test's "hang")
# Received bytes come in through feed(); replies and events go out at once. A write the
# port refuses (OSError) is counted in tx_errors and the device goes on: the bench may be
# away. A request that finds the heap full is counted in no_memory; if it only asks
# (ping, get) it is kept in `pending`, and the board's link loop calls retry() every
# RETRY_S until it is answered or RETRIES have failed.

from tendril_fw import bench_link as bl

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any  # noqa: F401  (used in type comments)

INPUTS = ("power_w", "pulses", "temp_c", "ev_plugged", "button")
EHOSTUNREACH = 113
# Only requests that change nothing are answered late: a set kept back could land after a
# newer one from the same read and undo it.
RETRY_OPS = (bl.OP_PING, bl.OP_GET)
# A backlog replay after an outage fills an ESP32-sized heap for a moment (seen at 56wK on
# the unix port); 30 tries 0.1 s apart stay inside the bench's 5 s wait for a reply.
RETRY_S = 0.1
RETRIES = 30


class BenchMode:
    def __init__(self, port, host, cfg, boot_reason):
        # type: (Any, Any, dict[str, Any], str) -> None
        self.port = port
        self.host = host
        self.site = cfg["site"]
        self.device = cfg["device"]
        self.fw = cfg["fw_version"]
        self.pulses_per_kwh = cfg["board"].get("pulses_per_kwh", 1000)
        self.boot_reason = boot_reason
        self.endpoint = bl.Endpoint()
        self.inputs = {"power_w": 0.0, "pulses": None, "temp_c": None, "ev_plugged": None,
                       "button": None}  # type: dict[str, Any]
        self._pulses_at = None  # type: tuple[int, float] | None
        self._power = 0.0
        self.relay = None  # type: int | None
        self.net_up = True
        self.net_cuts = 0
        self.tx_errors = 0
        self.no_memory = 0
        self.pending = None  # type: tuple[int, dict[str, Any], int] | None
        self.send({"ev": bl.EV_BOOT, "device": self.device, "fw": self.fw, "boot": boot_reason,
                   "now": host.now()})

    # ------------------------------------------------------------ link

    def send(self, msg):
        # type: (dict[str, Any]) -> None
        _seq, frame = self.endpoint.encode(msg)
        try:
            self.port.write(frame)
        except OSError:
            self.tx_errors += 1

    def feed(self, data):
        # type: (bytes) -> int
        """Handle the requests completed by `data` (each gets its reply); returns how many were answered."""
        handled = 0
        for seq, msg in self.endpoint.feed(data):
            handled += self._answer(seq, msg, 0)
        return handled

    def retry(self):
        # type: () -> None
        """Answer the request a full heap left pending, if any."""
        pending = self.pending
        if pending is not None:
            self.pending = None
            self._answer(*pending)

    def _answer(self, seq, msg, tries):
        # type: (int, dict[str, Any], int) -> int
        try:
            try:
                reply = self.handle(msg)
            except (ValueError, TypeError, KeyError) as exc:
                reply = {"ok": False, "error": repr(exc)[:120]}
            reply["re"] = seq
            self.send(reply)
            return 1
        except MemoryError:
            # a tight heap costs a request its reply at worst (the bench times out), never the link
            self.no_memory += 1
            if msg.get("op") in RETRY_OPS and tries < RETRIES:
                self.pending = (seq, msg, tries + 1)
            return 0

    def handle(self, msg):
        # type: (dict[str, Any]) -> dict[str, Any]
        """Apply one bench request; returns the reply (without "re")."""
        op = msg.get("op")
        if op == bl.OP_PING:
            return {"ok": True}
        if op == bl.OP_SET:
            for name in msg:
                if name != "op" and name not in INPUTS:
                    return {"ok": False, "error": "unknown input %r" % (name,)}
            for name in msg:
                if name != "op":
                    self.inputs[name] = msg[name]
            return {"ok": True}
        if op == bl.OP_GET:
            counters = self.endpoint.counters()
            counters["tx_errors"] = self.tx_errors
            counters["net_cuts"] = self.net_cuts
            counters["no_memory"] = self.no_memory
            return {"ok": True, "relay": self.relay, "inputs": self.inputs, "now": self.host.now(),
                    "net_up": self.net_up, "boot": self.boot_reason, "site": self.site,
                    "device": self.device, "fw": self.fw, "counters": counters,
                    "free_heap": self.host.free_heap()}
        if op == bl.OP_NET:
            self.set_network(bool(msg.get("up")))
            return {"ok": True, "net_up": self.net_up}
        if op == bl.OP_HANG:
            seconds = float(msg.get("s", 0))
            self.host.log("bench: blocking the event loop for %s s" % (seconds,))
            self.host.block(seconds)
            return {"ok": True}
        return {"ok": False, "error": "unknown op %r" % (op,)}

    # ------------------------------------------------------------ what the board asks

    def set_network(self, up):
        # type: (bool) -> None
        if up == self.net_up:
            return
        self.net_up = up
        if up:
            self.host.log("bench: network restored")
            return
        self.net_cuts += 1
        self.host.log("bench: network cut")

    def read_override(self):
        # type: () -> int | None
        button = self.inputs["button"]
        return button if button in (0, 1) else None

    def read_power(self, now):
        # type: (float) -> float
        """Site power: the bench's power_w, or the average since the last read from its pulse count.
        `now` is any clock in seconds that does not step (the board's choice)."""
        pulses = self.inputs["pulses"]
        if not isinstance(pulses, int) or isinstance(pulses, bool):
            self._pulses_at = None
            self._power = float(self.inputs["power_w"] or 0.0)
            return self._power
        if self._pulses_at is not None and now > self._pulses_at[1]:
            count = pulses - self._pulses_at[0]
            self._power = count / self.pulses_per_kwh * 1000.0 * 3600.0 / (now - self._pulses_at[1])
        self._pulses_at = (pulses, now)
        return self._power

    def set_relay(self, state):
        # type: (int) -> None
        self.relay = 1 if state else 0
        self.send({"ev": bl.EV_RELAY, "relay": self.relay, "t": self.host.now()})


class CutStream:
    """A TCP stream that fails, as a dropped Wi-Fi link does, while the bench has the network cut:
    writes raise, and data that arrives after the cut is never handed to the firmware."""

    def __init__(self, stream, bench):
        # type: (Any, BenchMode) -> None
        self._stream = stream
        self._bench = bench

    def __getattr__(self, name):
        # type: (str) -> Any
        return getattr(self._stream, name)

    def _check(self):
        # type: () -> None
        if not self._bench.net_up:
            raise OSError(EHOSTUNREACH)

    def write(self, data):
        # type: (bytes) -> Any
        self._check()
        return self._stream.write(data)

    async def drain(self):
        # type: () -> None
        self._check()
        await self._stream.drain()

    async def readexactly(self, n):
        # type: (int) -> bytes
        data = await self._stream.readexactly(n)  # type: bytes
        self._check()
        return data


def gate_connections(open_connection, bench):
    # type: (Any, BenchMode) -> Any
    """An asyncio.open_connection whose connections fail while bench.net_up is false (install it
    as asyncio.open_connection: the MQTT client looks it up there at each connect)."""

    async def cuttable_open_connection(host, port):
        # type: (str, int) -> tuple[Any, Any]
        if not bench.net_up:
            raise OSError(EHOSTUNREACH)
        reader, writer = await open_connection(host, port)
        return CutStream(reader, bench), CutStream(writer, bench)

    return cuttable_open_connection
