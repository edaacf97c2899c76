"""`tendril ingest --workers N`: N ingestion processes sharing one MQTT subscription.

Each worker is its own process (its own CPU, GIL and event loop) with its own MQTT client id,
persistent session, spool and dedup window, subscribed through the shared subscription
`$share/<group>/...`: the broker hands each message to one member of the group. This
supervisor starts them, restarts one that dies (its persistent session kept its messages
meanwhile), and on SIGINT/SIGTERM stops them all and waits for each to commit and exit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("tendril.ingest")

RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
STOP_TIMEOUT_S = 60.0


class Supervisor:
    def __init__(self, count: int, argv_for: Callable[[int], list[str]], env: dict[str, str]) -> None:
        self.count = count
        self._argv_for = argv_for
        self._env = env
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._restart_at: dict[int, float] = {}
        self._delay: dict[int, float] = {}
        self._started: dict[int, float] = {}
        self._stopping = False
        self.restarts = 0

    def _start(self, index: int) -> None:
        self._procs[index] = subprocess.Popen(self._argv_for(index), env=self._env)
        self._started[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, self._procs[index].pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self._stopping:
            log.info("stopping %d workers (%s)", self.count, signal.Signals(signum).name)
        self._stopping = True

    def run(self) -> int:
        """Run until a signal; returns 0 if every worker stopped cleanly."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for index in range(self.count):
                self._start(index)
            while not self._stopping:
                time.sleep(0.2)
                self._watch()
            return self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _watch(self) -> None:
        now = time.monotonic()
        for index, proc in list(self._procs.items()):
            code = proc.poll()
            if code is None:
                continue
            due = self._restart_at.get(index)
            if due is None:
                if now - self._started[index] > RESTART_MAX_S:
                    self._delay[index] = RESTART_MIN_S  # it had been running fine: restart quickly
                delay = self._delay.get(index, RESTART_MIN_S)
                log.error("worker %d (pid %d) exited with %s; restarting in %.0f s", index, proc.pid, code, delay)
                self._restart_at[index] = now + delay
                self._delay[index] = min(delay * 2, RESTART_MAX_S)
            elif now >= due:
                del self._restart_at[index]
                self.restarts += 1
                self._start(index)

    def _stop_all(self) -> int:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        worst = 0
        for index, proc in self._procs.items():
            try:
                code = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %.0f s; killing it", index, STOP_TIMEOUT_S)
                proc.kill()
                code = proc.wait()
            if index in self._restart_at:
                code = 0  # it had died and was waiting for its restart; that was reported then
            worst = worst or code
        return 0 if worst == 0 else 1


def worker_env(secrets: dict[str, str | None]) -> dict[str, str]:
    """The environment for workers: secrets travel here, never on their command lines."""
    env = dict(os.environ)
    env.update({name: value for name, value in secrets.items() if value})
    return env
