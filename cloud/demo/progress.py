"""The demo's progress: a bar on a terminal, otherwise (CI, pipes) a line every 10 % of the run.

The run goes on after the simulated end: the last telemetry, acks, confirms and settlements are
drained, then the nodes and services stop and the ingest flushes what it holds. The summary
counts all of that, so a 100 % line printed when the clock reached the end showed fewer
messages than the summary below it. The 100 % line is therefore printed by `finish`, from the
summary itself, once the run is over.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

from tendril_transactive.cloud.demo.summary import DemoSummary


class Progress:
    def __init__(self, total_min: int, *, bar: bool, file: TextIO | None = None) -> None:
        self.total_min = max(total_min, 1)
        self._lines = not bar
        self._file = file if file is not None else sys.stdout
        self._tenth = 1  # the next 10 % line to print
        self._bar = tqdm(total=self.total_min, unit="sim-min", disable=not bar, dynamic_ncols=True,
                         file=file if file is not None else sys.stderr)
        self._closed = False

    def _line(self, share: float, sim: str, ingested: int, confirmed: int, acked: int, note: str = "") -> None:
        print(f"  {share:4.0%}  sim {sim}  ingested {ingested}  transactions confirmed {confirmed} (next day's too)  "
              f"commands acked {acked}{note}", file=self._file, flush=True)

    def update(self, done_min: int, sim: str, ingested: int, confirmed: int, acked: int) -> None:
        """Live counts at `done_min` simulated minutes; the 100 % line is left to `finish`."""
        done = min(self.total_min, max(0, done_min))
        self._bar.update(done - self._bar.n)
        self._bar.set_postfix(ingested=ingested, confirmed=confirmed, acked=acked, sim=sim)
        if not self._lines:
            return
        reached = min(9, done * 10 // self.total_min)
        if reached >= self._tenth:
            # a slow tick may pass several tenths at once: one line, for the tenth reached
            self._line(reached / 10, sim, ingested, confirmed, acked)
            self._tenth = reached + 1

    def finish(self, sim: str, summary: DemoSummary, confirmed: int) -> None:
        """The 100 % line (or the bar's last state) with the summary's own counts."""
        if self._closed:
            return
        self._bar.update(self.total_min - self._bar.n)
        self._bar.set_postfix(ingested=summary.messages_ingested, confirmed=confirmed,
                              acked=summary.commands_acked, sim=sim)
        if self._lines:
            self._line(1.0, sim, summary.messages_ingested, confirmed, summary.commands_acked,
                       "  (final, after the drain)")
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
