"""Loopback addresses and free ports for the servers Tendril starts on this machine (the demo's
embedded broker, the test and bench harnesses): bound to 127.0.0.1 only, never to all interfaces."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port
