"""The Planner seam: a batch of site jobs in, one result per job out.

The agent core builds `Job`s (site, mode "rt"/"da", state, forecast; cloud.optimizer.fleet) and
reads `JobResult`s (a schedule, or the reason there is none); it never calls a solver itself.
Two implementations:

  * `InProcessPlanner`: a SitePlanner per site in this process, built on the site's first job
    and kept, so every re-solve is warm (~3 ms for a 288-step home). What one agent worker with
    a few hundred sites needs.
  * `PoolPlanner`: cloud.optimizer.fleet.FleetPool, the sites spread over worker processes that
    survive a crashed or hung solve.

This is where Dask distributed (or any other scheduler) takes over planning many sites: a
`Planner` whose `plan` submits each job to the cluster, keyed by site so a site's warm model
stays on one Dask worker (e.g. `client.submit(solve, job, key=..., workers=[owner(site)])`, an
actor per worker holding its SitePlanners), and gathers the results. The agent's contract
stays the same: failures come back as results with `error`, never as exceptions.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Protocol

from tendril_transactive.cloud.optimizer.fleet import FleetPool, Job, JobResult
from tendril_transactive.cloud.optimizer.horizon import SitePlanner
from tendril_transactive.cloud.optimizer.model import SiteSpec
from tendril_transactive.cloud.optimizer.solve import HighsRunner, SolveError

__all__ = ["InProcessPlanner", "Job", "JobResult", "Planner", "PoolPlanner"]


class Planner(Protocol):
    def plan(self, jobs: Sequence[Job]) -> list[JobResult]:
        """Solve every job; one result per job, failures as results with `error` set."""
        ...

    def cancel(self) -> None:
        """Stop soon: a plan() under way answers its remaining jobs with an error (the service
        is stopping), so a SIGTERM does not wait out a chunk's time limits one after another."""
        ...

    def close(self) -> None:
        ...


class InProcessPlanner:
    """SitePlanners kept per site in this process; one HiGHS instance serves them in turn."""

    def __init__(self, specs: Mapping[str, SiteSpec], time_limit_s: float | None = 2.0) -> None:
        self._specs = dict(specs)
        self._runner = HighsRunner(time_limit_s=time_limit_s)
        self._planners: dict[str, SitePlanner] = {}
        self.time_limit_s = time_limit_s
        self._cancelled = threading.Event()

    def add(self, spec: SiteSpec) -> None:
        if self._specs.get(spec.site) != spec:
            self._planners.pop(spec.site, None)  # a changed spec needs a new model
        self._specs[spec.site] = spec

    def forget(self, site: str) -> None:
        """Drop a site's models (it moved to another worker); memory goes with them."""
        self._planners.pop(site, None)

    def plan(self, jobs: Sequence[Job]) -> list[JobResult]:
        out = []
        for job in jobs:
            t0 = time.perf_counter()
            if self._cancelled.is_set():
                out.append(JobResult(job.site, job.mode, None, "cancelled: the agent is stopping", 0.0))
                continue
            try:
                planner = self._planners.get(job.site)
                if planner is None:
                    spec = self._specs.get(job.site)
                    if spec is None:
                        raise ValueError(f"no spec for site {job.site}")
                    planner = self._planners[job.site] = SitePlanner(spec, self._runner)
                sched = planner.solve(job.mode, job.state, job.forecast, job.time_limit_s)
                out.append(JobResult(job.site, job.mode, sched, None, time.perf_counter() - t0))
            except (ValueError, SolveError) as exc:
                out.append(JobResult(job.site, job.mode, None, f"{type(exc).__name__}: {exc}",
                                     time.perf_counter() - t0))
            except Exception as exc:  # one site's broken model must not stop the others
                tb = traceback.format_exception_only(exc)[-1].strip()
                out.append(JobResult(job.site, job.mode, None, f"internal: {tb}", time.perf_counter() - t0))
        return out

    def cancel(self) -> None:
        self._cancelled.set()

    def close(self) -> None:
        self._planners.clear()


class PoolPlanner:
    """The same seam over FleetPool's worker processes (warm models per site, crash isolation)."""

    def __init__(self, specs: Sequence[SiteSpec], workers: int = 2, time_limit_s: float | None = 2.0) -> None:
        self._pool = FleetPool(specs, workers=workers, time_limit_s=time_limit_s)

    def plan(self, jobs: Sequence[Job]) -> list[JobResult]:
        results: list[JobResult] = []
        report = self._pool.solve(jobs, on_result=results.append)
        seen = {(r.site, r.mode) for r in results}
        for job in jobs:  # jobs lost with a dead or hung worker produced no JobResult
            if (job.site, job.mode) not in seen:
                results.append(JobResult(job.site, job.mode, None, report.failed.get(job.site, "no result"), 0.0))
        return results

    def cancel(self) -> None:
        """Nothing to do before close(), which ends the worker processes (and a solve under way)."""

    def close(self) -> None:
        self._pool.close()
