# A small MQTT 3.1.1 client over asyncio streams, for MicroPython and CPython alike.
#
# One connection per instance: `connect()`, then `publish`/`subscribe`; when the
# connection dies (EOF, socket error, missing PINGRESP or PUBACK) the instance closes
# itself and `wait_closed()` raises MQTTError with the reason, so the owner reconnects
# with a fresh instance. Timeouts here are real seconds (the broker's clock), not the
# device clock. Incoming PUBLISH goes to a synchronous callback; anything slow must be
# scheduled by the callback, because awaiting a PUBACK inside the reader would deadlock.

import asyncio

from tendril_fw import mqtt_packets as mp

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

IPPROTO_TCP = 6
TCP_NODELAY = 1


class MQTTError(Exception):
    pass


def set_nodelay(writer):
    # type: (Any) -> bool
    """Disable Nagle on the stream's socket; True if that worked."""
    sock = getattr(writer, "s", None)  # MicroPython: the Stream keeps its socket in .s
    if sock is None:
        try:
            sock = writer.get_extra_info("socket")  # CPython
        except (KeyError, AttributeError):
            sock = None
    if sock is None:
        return False
    try:
        sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
    except (OSError, AttributeError):
        return False
    return True


class _Waiter:
    def __init__(self):
        # type: () -> None
        self.event = asyncio.Event()
        self.value = None  # type: Any


class MQTTClient:
    def __init__(self, client_id, host, port, keepalive=30, clean_session=True, username=None,
                 password=None, will=None, on_message=None, ack_timeout=5.0, retries=2,
                 connect_timeout=10.0, ssl=None, server_hostname=None):
        # type: (str, str, int, int, bool, str | None, bytes | str | None, tuple[str, bytes, int, bool] | None, Callable[[str, bytes, int, bool], None] | None, float, int, float, Any, str | None) -> None
        self.client_id = client_id
        # TLS: an SSLContext made by the board (tendril_fw/tlsconf.py); the broker's certificate
        # must name server_hostname. None: cleartext.
        self.ssl = ssl
        self.server_hostname = server_hostname or host
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.username = username
        self.password = password
        self.will = will
        self.on_message = on_message
        self.ack_timeout = ack_timeout
        self.retries = retries
        self.connect_timeout = connect_timeout
        self.nodelay = False
        self.session_present = False
        self.error = None  # type: str | None
        self.retransmits = 0
        self._reader = None  # type: Any
        self._writer = None  # type: Any
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._connected = False
        self._tasks = []  # type: list[Any]
        self._waiting = {}  # type: dict[int, _Waiter]
        self._pid = 0
        self._ping_outstanding = False

    @property
    def connected(self):
        # type: () -> bool
        return self._connected

    # ------------------------------------------------------------ connection

    async def connect(self):
        # type: () -> bool
        """Open the TCP connection and complete CONNECT/CONNACK; returns session-present."""
        if self._writer is not None:
            raise MQTTError("client instances are single-use: make a new one to reconnect")
        try:
            if self.ssl is None:  # the benches swap in a two-argument open_connection
                opening = asyncio.open_connection(self.host, self.port)
            else:  # handshake and certificate check happen here, before CONNECT is written
                opening = asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                                  server_hostname=self.server_hostname)
            self._reader, self._writer = await asyncio.wait_for(opening, self.connect_timeout)
            self.nodelay = set_nodelay(self._writer)
            await self._write(mp.connect(self.client_id, self.keepalive, self.clean_session,
                                         self.username, self.password, self.will))
            kind, _flags, body = await asyncio.wait_for(self._read_packet(), self.connect_timeout)
        except asyncio.TimeoutError:
            self._close_socket()
            raise MQTTError("timed out connecting to %s:%d" % (self.host, self.port))
        except (OSError, EOFError, ValueError, mp.MQTTProtocolError) as exc:
            # ValueError: MicroPython's TLS refusing the broker's certificate (chain or name)
            self._close_socket()
            raise MQTTError("cannot connect to %s:%d: %r" % (self.host, self.port, exc))
        if kind != mp.CONNACK:
            self._close_socket()
            raise MQTTError("expected CONNACK, got packet type %d" % kind)
        self.session_present, code = mp.decode_connack(body)
        if code != 0:
            self._close_socket()
            raise MQTTError("broker refused connection: %s" % mp.CONNACK_REASONS.get(code, str(code)))
        self._connected = True
        self._tasks.append(asyncio.create_task(self._read_loop()))
        if self.keepalive:
            self._tasks.append(asyncio.create_task(self._ping_loop()))
        return self.session_present

    async def wait_closed(self):
        # type: () -> None
        """Return only by raising MQTTError with the reason the connection ended."""
        await self._closed.wait()
        raise MQTTError(self.error or "closed")

    async def disconnect(self):
        # type: () -> None
        """Graceful close: the broker discards the last will."""
        if self._connected:
            try:
                await self._write(mp.disconnect())
            except (OSError, MQTTError):
                pass
        self.abort("disconnected")

    def abort(self, reason):
        # type: (str) -> None
        """Mark the connection dead, wake everyone waiting on it, close the socket."""
        if self._closed.is_set():
            return
        self.error = reason
        self._connected = False
        self._closed.set()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._tasks = []
        for waiter in self._waiting.values():
            waiter.event.set()
        self._waiting = {}
        self._close_socket()

    def _close_socket(self):
        # type: () -> None
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass

    # ------------------------------------------------------------ operations

    async def publish(self, topic, payload, qos=0, retain=False):
        # type: (str, bytes, int, bool) -> None
        """QoS 0: written. QoS 1: returns once PUBACKed, retransmitting with dup on timeout."""
        self._check_open()
        if qos == 0:
            await self._write(mp.publish(topic, payload, 0, retain))
            return
        pid = self._next_pid()
        waiter = _Waiter()
        self._waiting[pid] = waiter
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.retransmits += 1
                await self._write(mp.publish(topic, payload, qos, retain, attempt > 0, pid))
                if await self._wait(waiter):
                    return
        finally:
            self._waiting.pop(pid, None)
        self.abort("no PUBACK for packet %d after %d tries" % (pid, self.retries + 1))
        raise MQTTError(self.error or "closed")

    async def subscribe(self, topic, qos=1):
        # type: (str, int) -> int
        """Subscribe one filter; returns the granted QoS, raises if the broker refused it."""
        self._check_open()
        pid = self._next_pid()
        waiter = _Waiter()
        self._waiting[pid] = waiter
        try:
            await self._write(mp.subscribe(pid, [(topic, qos)]))
            if not await self._wait(waiter):
                self.abort("no SUBACK for %s" % topic)
                raise MQTTError(self.error or "closed")
        finally:
            self._waiting.pop(pid, None)
        granted = waiter.value[0]
        if granted == mp.SUBACK_FAILURE:
            raise MQTTError("broker refused subscription to %s" % topic)
        return int(granted)

    async def _wait(self, waiter):
        # type: (_Waiter) -> bool
        """True when answered, False on timeout; raises if the connection died meanwhile."""
        try:
            await asyncio.wait_for(waiter.event.wait(), self.ack_timeout)
        except asyncio.TimeoutError:
            return False
        self._check_open()
        return True

    def _check_open(self):
        # type: () -> None
        if not self._connected:
            raise MQTTError(self.error or "not connected")

    def _next_pid(self):
        # type: () -> int
        for _ in range(65535):
            self._pid = self._pid % 65535 + 1
            if self._pid not in self._waiting:
                return self._pid
        raise MQTTError("no free packet id")

    # ------------------------------------------------------------ wire

    async def _write(self, packet):
        # type: (bytes) -> None
        # One write per packet (one TCP segment with NODELAY); the lock keeps
        # concurrent writers (sender, reader's PUBACK, pinger) from interleaving.
        async with self._lock:
            if self._writer is None:
                raise MQTTError("not connected")
            try:
                self._writer.write(packet)
                await self._writer.drain()
            except OSError as exc:
                self.abort("write failed: %r" % (exc,))
                raise MQTTError(self.error or "write failed")

    async def _read_packet(self):
        # type: () -> tuple[int, int, bytes]
        first = (await self._reader.readexactly(1))[0]
        header = b""
        while True:
            header += await self._reader.readexactly(1)
            found = mp.decode_varint(header)
            if found is not None:
                break
        length = found[0]
        body = await self._reader.readexactly(length) if length else b""
        return first >> 4, first & 0x0F, body

    async def _read_loop(self):
        # type: () -> None
        try:
            while True:
                kind, flags, body = await self._read_packet()
                await self._dispatch(kind, flags, body)
        except asyncio.CancelledError:
            raise
        except EOFError:
            self.abort("connection closed by broker")
        except (OSError, MemoryError, mp.MQTTProtocolError, MQTTError) as exc:
            # MemoryError too: a session that cannot read is dead; the node reconnects.
            self.abort("read failed: %r" % (exc,))

    async def _dispatch(self, kind, flags, body):
        # type: (int, int, bytes) -> None
        if kind == mp.PUBLISH:
            topic, payload, qos, retain, _dup, pid = mp.decode_publish(flags, body)
            if self.on_message is not None:
                try:
                    self.on_message(topic, payload, qos, retain)
                except Exception as exc:  # a handler bug must not kill the connection
                    print("mqtt: on_message failed:", repr(exc))
            if qos == 1:
                await self._write(mp.puback(pid))
        elif kind == mp.PUBACK:
            self._answer(mp.decode_pid(body), True)
        elif kind == mp.SUBACK:
            pid, granted = mp.decode_suback(body)
            self._answer(pid, granted)
        elif kind == mp.PINGRESP:
            self._ping_outstanding = False
        else:
            raise mp.MQTTProtocolError("unexpected packet type %d" % kind)

    def _answer(self, pid, value):
        # type: (int, Any) -> None
        waiter = self._waiting.get(pid)
        if waiter is not None:  # a late answer to a retransmitted packet is harmless
            waiter.value = value
            waiter.event.set()

    async def _ping_loop(self):
        # type: () -> None
        # Ping every half keepalive; an unanswered ping by the next one means the
        # link is dead even if TCP has not noticed (e.g. Wi-Fi dropped silently).
        try:
            while True:
                await asyncio.sleep(self.keepalive / 2)
                if self._ping_outstanding:
                    self.abort("no PINGRESP within %s s" % (self.keepalive / 2,))
                    return
                self._ping_outstanding = True
                await self._write(mp.pingreq())
        except asyncio.CancelledError:
            raise
        except (OSError, MemoryError, MQTTError) as exc:
            self.abort("ping failed: %r" % (exc,))
