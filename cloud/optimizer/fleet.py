"""Solve a fleet of sites in worker processes; one site's failure never costs another its plan.

Each site lives in one worker (round-robin by registration order), which builds its planner
once and keeps it, so re-solves are warm. A round sends every worker its jobs and collects one
result per job. A site whose solve fails (bad input, HiGHS time limit, infeasible) keeps its
last valid schedule and is listed in the round's `failed`. A worker that dies or stops
answering within its deadline is killed and restarted; the job it was on fails, the rest of
its jobs are sent to the new worker in the same round (which rebuilds those sites' models).

The last valid schedules live here, in the coordinating process, so a crashed worker loses
no plans. A job that fails or hangs fails alone; so does a worker (see _lost).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from tendril_transactive.cloud.optimizer.devices import SiteForecast, SiteState
from tendril_transactive.cloud.optimizer.horizon import SitePlanner
from tendril_transactive.cloud.optimizer.model import SiteSpec
from tendril_transactive.cloud.optimizer.schedule import SiteSchedule
from tendril_transactive.cloud.optimizer.solve import HighsRunner, SolveError

# Time a worker may take beyond the solver's own limit before it is presumed hung: covers a
# first-time model build (~0.1 s per site) and a loaded machine.
DEFAULT_GRACE_S = 20.0


@dataclass(frozen=True)
class Job:
    site: str
    mode: str  # "rt" or "da" (cloud.optimizer.horizon)
    state: SiteState
    forecast: SiteForecast
    time_limit_s: float | None = None  # overrides the pool's per-site limit


@dataclass(frozen=True)
class JobResult:
    site: str
    mode: str
    schedule: SiteSchedule | None
    error: str | None
    wall_s: float


@dataclass
class RoundReport:
    schedules: dict[str, SiteSchedule]  # per site: this round's plan, or its last valid one
    fresh: set[str]  # sites solved this round
    failed: dict[str, str]  # site -> reason; they kept their last schedule (if any)
    wall_s: float
    restarts: int = 0
    solve_s: list[float] = field(default_factory=list)


def _worker(conn: Connection, specs: list[SiteSpec], time_limit_s: float | None) -> None:
    planners: dict[str, SitePlanner] = {}
    by_site = {s.site: s for s in specs}
    runner = HighsRunner(time_limit_s=time_limit_s)

    def planner(site: str) -> SitePlanner:
        if site not in planners:
            planners[site] = SitePlanner(by_site[site], runner)
        return planners[site]

    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:
            return
        if kind == "stop":
            return
        if kind == "build":
            for site in payload:
                planner(site)
            conn.send(("built", len(planners)))
            continue
        for job in payload:  # kind == "jobs"
            t0 = time.perf_counter()
            try:
                sched = planner(job.site).solve(job.mode, job.state, job.forecast, job.time_limit_s)
                result = JobResult(job.site, job.mode, sched, None, time.perf_counter() - t0)
            except (ValueError, SolveError) as exc:
                result = JobResult(job.site, job.mode, None, f"{type(exc).__name__}: {exc}",
                                   time.perf_counter() - t0)
            except Exception as exc:  # a bug in one site's model must not take the worker down
                tb = traceback.format_exception_only(exc)[-1].strip()
                result = JobResult(job.site, job.mode, None, f"internal: {tb}", time.perf_counter() - t0)
            conn.send(("result", result))


@dataclass
class _Worker:
    index: int
    specs: list[SiteSpec]
    process: Any = None
    conn: Connection | None = None


class FleetPool:
    def __init__(self, specs: Sequence[SiteSpec], workers: int = 2, time_limit_s: float | None = 5.0,
                 grace_s: float = DEFAULT_GRACE_S) -> None:
        names = [s.site for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("site names must be unique")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        # Not "fork": HiGHS keeps a process-wide thread pool, and a child forked from a process
        # whose HiGHS already started threads inherits the pool without its threads, so its MIP
        # solves hang. A fork server is a fresh process that forks clean workers quickly.
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(["tendril_transactive.cloud.optimizer.fleet"])
        self.time_limit_s = time_limit_s
        self.grace_s = grace_s
        self._owner: dict[str, int] = {}
        self._workers = [_Worker(i, []) for i in range(min(workers, max(1, len(specs))))]
        for i, spec in enumerate(specs):
            w = self._workers[i % len(self._workers)]
            w.specs.append(spec)
            self._owner[spec.site] = w.index
        self.last: dict[tuple[str, str], SiteSchedule] = {}
        for w in self._workers:
            self._start(w)

    # ------------------------------------------------------------------ processes

    def _start(self, w: _Worker) -> None:
        parent, child = self._ctx.Pipe()
        w.process = self._ctx.Process(target=_worker, args=(child, w.specs, self.time_limit_s),
                                      name=f"tendril-opt-{w.index}", daemon=True)
        w.process.start()
        child.close()
        w.conn = parent

    def _kill(self, w: _Worker) -> None:
        if w.process is not None and w.process.is_alive():
            w.process.kill()
        if w.process is not None:
            w.process.join(timeout=5)
        if w.conn is not None:
            w.conn.close()
        w.conn = None

    def workers_alive(self) -> list[bool]:
        return [w.process is not None and w.process.is_alive() for w in self._workers]

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]

    def close(self) -> None:
        for w in self._workers:
            if w.conn is not None:
                with contextlib.suppress(OSError):
                    w.conn.send(("stop", None))
            if w.process is not None:
                w.process.join(timeout=5)
            self._kill(w)

    def __enter__(self) -> FleetPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ work

    def build(self, timeout_s: float = 600.0) -> None:
        """Build every site's models now (otherwise each is built on its first job)."""
        for w in self._workers:
            assert w.conn is not None
            w.conn.send(("build", [s.site for s in w.specs]))
        for w in self._workers:
            assert w.conn is not None
            if not w.conn.poll(timeout_s):
                raise TimeoutError(f"worker {w.index} did not build its {len(w.specs)} sites in {timeout_s} s")
            w.conn.recv()

    def solve(self, jobs: Sequence[Job], on_result: Callable[[JobResult], None] | None = None) -> RoundReport:
        """Run one round of jobs (at most one per site and mode)."""
        t0 = time.perf_counter()
        queues: dict[int, list[Job]] = {w.index: [] for w in self._workers}
        report = RoundReport({}, set(), {}, 0.0)
        for job in jobs:
            owner = self._owner.get(job.site)
            if owner is None:
                report.failed[job.site] = "unknown site"
                continue
            queues[owner].append(job)
        pending: dict[int, list[Job]] = {}
        deadline: dict[int, float] = {}
        for w in self._workers:
            if queues[w.index]:
                self._send(w, queues[w.index], report)
                pending[w.index] = list(queues[w.index])
                deadline[w.index] = time.monotonic() + self._job_budget(pending[w.index][0])
        while pending:
            conns: dict[Any, int] = {}
            for i in pending:
                conn = self._workers[i].conn
                if conn is not None:
                    conns[conn] = i
            timeout = max(0.0, min(deadline[i] for i in pending) - time.monotonic())
            ready: list[Any] = wait(list(conns), timeout=timeout)
            for ready_conn in ready:
                i = conns[ready_conn]
                try:
                    _, result = ready_conn.recv()
                except (EOFError, OSError):
                    self._lost(i, pending, deadline, report, "worker died")
                    continue
                self._record(result, report)
                if on_result is not None:
                    on_result(result)
                pending[i] = [j for j in pending[i] if not (j.site == result.site and j.mode == result.mode)]
                if pending[i]:
                    deadline[i] = time.monotonic() + self._job_budget(pending[i][0])
                else:
                    del pending[i], deadline[i]
            now = time.monotonic()
            for i in [i for i in pending if deadline[i] <= now]:
                self._lost(i, pending, deadline, report, "worker timed out")
        for job in jobs:
            if job.site not in report.schedules and (job.site, job.mode) in self.last:
                report.schedules[job.site] = self.last[(job.site, job.mode)]
        report.wall_s = time.perf_counter() - t0
        return report

    def _job_budget(self, job: Job) -> float:
        limit = job.time_limit_s if job.time_limit_s is not None else self.time_limit_s
        return (limit or 0.0) + self.grace_s

    def _send(self, w: _Worker, jobs: list[Job], report: RoundReport) -> None:
        if w.process is None or not w.process.is_alive():  # died between rounds: replace it first
            self._kill(w)
            self._start(w)
            report.restarts += 1
        try:
            assert w.conn is not None
            w.conn.send(("jobs", jobs))
        except (OSError, AssertionError):
            self._kill(w)
            self._start(w)
            report.restarts += 1
            assert w.conn is not None
            w.conn.send(("jobs", jobs))

    def _lost(self, i: int, pending: dict[int, list[Job]], deadline: dict[int, float],
              report: RoundReport, why: str) -> None:
        """Worker i died or hung: its current job fails, the rest go to a fresh worker."""
        w = self._workers[i]
        self._kill(w)
        self._start(w)
        report.restarts += 1
        current, *rest = pending[i]
        report.failed[current.site] = why
        if rest:
            self._send(w, rest, report)
            pending[i] = rest
            deadline[i] = time.monotonic() + self._job_budget(rest[0])
        else:
            del pending[i], deadline[i]

    def _record(self, result: JobResult, report: RoundReport) -> None:
        if result.schedule is not None:
            self.last[(result.site, result.mode)] = result.schedule
            report.schedules[result.site] = result.schedule
            report.fresh.add(result.site)
            report.solve_s.append(result.schedule.solve_s)
        else:
            report.failed[result.site] = result.error or "failed"
