"""The bench side of the bench link (firmware/lib/tendril_fw/bench_link.py) over pyserial.

A reader thread decodes frames as they arrive: replies (`re` = the request's seq) go to the
waiting request, events (`ev`: boot, relay change) to a queue with the real time of arrival,
which is what latency measurements use. Every wait is bounded and fails with LinkTimeout.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from tendril_fw import bench_link as bl


class LinkTimeout(TimeoutError):
    """The device did not answer (or send the awaited event) in time."""


class LinkRefused(RuntimeError):
    """The device answered a request with ok=false; the message carries its reason."""


class SerialPort(Protocol):
    """What BenchLink needs of a pyserial `Serial` (read timeout set, so reads return)."""

    def read(self, size: int = 1) -> bytes: ...

    @property
    def in_waiting(self) -> int: ...

    def write(self, data: bytes, /) -> int | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Event:
    kind: str
    msg: dict[str, Any]
    received: float  # time.monotonic() at arrival on the bench


class BenchLink:
    def __init__(self, port: SerialPort) -> None:
        self.port = port
        self.endpoint = bl.Endpoint()
        self.events: queue.Queue[Event] = queue.Queue()
        self.history: list[Event] = []
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name="bench-link", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ requests

    def request(self, op: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; LinkTimeout / LinkRefused otherwise."""
        answer: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1)
        with self._write_lock:
            seq, frame = self.endpoint.encode({"op": op, **fields})
            with self._lock:
                self._replies[seq] = answer
            self.port.write(frame)
        try:
            reply = answer.get(timeout=timeout)
        except queue.Empty:
            raise LinkTimeout(f"no reply to {op!r} (seq {seq}) within {timeout} s") from None
        finally:
            with self._lock:
                self._replies.pop(seq, None)
        if not reply.get("ok"):
            raise LinkRefused(f"device refused {op!r}: {reply.get('error', '?')}")
        return reply

    def ping(self, timeout: float = 5.0) -> float:
        """Round trip in seconds."""
        t0 = time.perf_counter()
        self.request(bl.OP_PING, timeout=timeout)
        return time.perf_counter() - t0

    def set_inputs(self, timeout: float = 5.0, **inputs: Any) -> None:
        self.request(bl.OP_SET, timeout=timeout, **inputs)

    def get(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.request(bl.OP_GET, timeout=timeout)

    def set_network(self, up: bool, timeout: float = 5.0) -> None:
        self.request(bl.OP_NET, timeout=timeout, up=up)

    def hang(self, seconds: float) -> None:
        """Ask the device to block its event loop (no reply expected once its watchdog fires)."""
        with self._write_lock:
            _seq, frame = self.endpoint.encode({"op": bl.OP_HANG, "s": seconds})
            self.port.write(frame)

    def write_raw(self, data: bytes) -> None:
        """Bytes straight onto the link, for damage tests."""
        with self._write_lock:
            self.port.write(data)

    # ------------------------------------------------------------ events

    def wait_event(self, kind: str, timeout: float, match: dict[str, Any] | None = None) -> Event:
        """The next event of `kind` whose fields include `match`; earlier others are kept in history."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise LinkTimeout(f"no {kind!r} event matching {match} within {timeout} s") from None
            if event.kind == kind and all(event.msg.get(k) == v for k, v in (match or {}).items()):
                return event

    def drain_events(self) -> list[Event]:
        out: list[Event] = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.events.get_nowait())
        return out

    def counters(self) -> dict[str, int]:
        """The bench side's receive counters (frames, bad_crc, malformed, overrun, gaps, restarts)."""
        return self.endpoint.counters()

    # ------------------------------------------------------------ reader

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.port.read(1)  # blocks up to the port's timeout
                waiting = self.port.in_waiting if data else 0
                if waiting:
                    data += self.port.read(waiting)
            except (OSError, TypeError, ValueError):
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            if not data:
                continue
            now = time.monotonic()
            for _seq, msg in self.endpoint.feed(data):
                if "re" in msg:
                    with self._lock:
                        waiter = self._replies.get(msg["re"])
                    if waiter is not None:
                        with contextlib.suppress(queue.Full):
                            waiter.put_nowait(msg)
                elif "ev" in msg:
                    event = Event(str(msg["ev"]), msg, now)
                    self.history.append(event)
                    self.events.put(event)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.port.close()
        self._thread.join(timeout=2.0)
