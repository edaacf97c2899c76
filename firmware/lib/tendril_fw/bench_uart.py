# The bench link on a UART (the ESP32 bench board, boards/esp32_bench): its settings
# from the config's "board" object, and draining what the UART holds into bench mode.
# Kept apart from tendril_fw.bench_mode so the unix bench board does not load it (every
# KB of code counts in an ESP32-sized heap). No `machine` here: the UART is passed in.

from tendril_fw import bench_link as bl

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any  # noqa: F401  (used in type comments)

    from tendril_fw.bench_mode import BenchMode  # noqa: F401

# Defaults: UART1 on GPIO17/16, because UART0 is the console on most boards and the log goes there.
UART_DEFAULTS = (("bench_uart", "id", 1), ("bench_tx", "tx", 17), ("bench_rx", "rx", 16),
                 ("bench_baud", "baud", 115200))
BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


class BenchConfigError(ValueError):
    pass


def uart_settings(board_cfg):
    # type: (dict[str, Any]) -> dict[str, int]
    """{"id", "tx", "rx", "baud"} for the link's UART from the config's board object."""
    out = {}  # type: dict[str, int]
    for key, name, default in UART_DEFAULTS:
        value = board_cfg.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BenchConfigError("board.%s must be a non-negative integer, got %r" % (key, value))
        out[name] = value
    if out["baud"] not in BAUDS:
        raise BenchConfigError("board.bench_baud must be one of %s (the bench's pyserial rates), got %d"
                               % (", ".join([str(b) for b in BAUDS]), out["baud"]))
    if out["tx"] == out["rx"]:
        raise BenchConfigError("board.bench_tx and board.bench_rx must differ, both are %d" % out["tx"])
    return out


def poll(mode, uart, budget=bl.MAX_FRAME):
    # type: (BenchMode, Any, int) -> int
    """Feed what `uart` already holds (any()/read(n), as machine.UART with timeout=0) to `mode`,
    at most `budget` bytes so one call stays short; returns the requests handled."""
    handled = 0
    while budget > 0:
        waiting = uart.any()
        if not waiting:
            break
        data = uart.read(min(waiting, budget))
        if not data:
            break
        budget -= len(data)
        handled += mode.feed(data)
    return handled
