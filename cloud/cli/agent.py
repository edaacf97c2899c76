"""`tendril agent`: the customer side of the transactive loop, as a service (one worker, or a
supervisor of N worker processes) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

import tendril_wire as wire

from tendril_transactive.cloud import command
from tendril_transactive.cloud.cli.args import positive_float, positive_int
from tendril_transactive.cloud.cli.service_log import progress_logging
from tendril_transactive.cloud.settings import (
    DEFAULT_BROKER,
    DEFAULT_DATA_DIR,
    DEFAULT_REGISTRY,
    ENV_CLOCK,
    ENV_MQTT_PASSWORD,
    ENV_REGISTRY,
    BrokerSettings,
    UsageError,
    clock_from_env,
    env,
)
from tendril_transactive.edge.clock import Clock

log = logging.getLogger("tendril.agent")

_EPILOG = f"""\
For every site it owns, the agent answers each real-time tender (the BUY + SELL pair for the
next 5-minute interval) by re-solving the site's plan (Pyomo model, HiGHS), sends what the plan
buys or sells beyond the site's position as a transaction on tendril/v1/<site>/transaction
(re-sent with the same transactionId until confirmed or the tender expires), and commands the
site's relays for the interval with signed, expiring commands (re-sent until acknowledged).
Day-ahead tenders plan the next 24 hours and the pool pump's hours. Without a tender it runs
the subscription only; if a solve fails it keeps executing its last plan; stale telemetry
means a conservative state. Malformed tenders and confirms go to tendril/v1/_dead/<reason>.

Sites, their settings (hvac, pump, ev, battery, pv) and subscriptions, and each relay's
command key come from the registry (--registry or ${ENV_REGISTRY}; `tendril device site`).

Scale-out: --workers N runs N worker processes (restarted if one dies); --worker-id ID runs one
worker (e.g. one per host). Workers announce themselves on {wire.agent_filter()} (retained, cleared
by their MQTT last will) and each owns the sites that rendezvous hashing over the live workers
gives it; a killed worker's sites move to the others within one interval. See docs/agent.md.

State (pending transactions, position, last plans, command seq) is kept per site in
--state-dir, so a restart or a site moving between workers on one host carries on.

The clock: ${ENV_CLOCK}=real_origin,sim_origin,speed for a simulated run; unset = wall time.
The MQTT password: ${ENV_MQTT_PASSWORD}.

Examples:
  tendril agent --registry tendril-registry --broker mqtt://127.0.0.1:1883 --username tendril-agent
  tendril agent --workers 2 --state-dir /var/lib/tendril/agent
"""


def _worker_id(text: str) -> str:
    try:
        return wire.check_id(text, "worker")
    except wire.ContractError:
        raise argparse.ArgumentTypeError(f"--worker-id is 1..32 of [a-z0-9_-], got {text!r}") from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="answer tenders with transactions and command relays (optimizer service)",
                       description="The Tendril agent: tenders -> plan -> transactions and relay commands.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path, metavar="DIR",
                   help=f"device registry folder (env {ENV_REGISTRY}, default {DEFAULT_REGISTRY})")
    p.add_argument("--broker", default=env("TENDRIL_BROKER") or DEFAULT_BROKER, metavar="URL",
                   help=f"MQTT broker as mqtt://host:port (env TENDRIL_BROKER, default {DEFAULT_BROKER})")
    p.add_argument("--username", help=f"MQTT user name (password from ${ENV_MQTT_PASSWORD})")
    p.add_argument("--workers", type=positive_int("--workers"), default=1,
                   help="worker processes to run and supervise (default %(default)s)")
    p.add_argument("--worker-id", type=_worker_id, metavar="ID",
                   help="run exactly one worker with this id (stable: it names the MQTT session and the "
                        "presence topic); default w0, or w0..wN-1 with --workers")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_DATA_DIR / "agent", metavar="DIR",
                   help="per-site state files (default %(default)s)")
    p.add_argument("--time-limit-s", type=positive_float("--time-limit-s"), default=2.0, metavar="S",
                   help="solver time limit per site and solve; past it the last plan is kept (default %(default)s)")
    p.add_argument("--solver-processes", type=int, default=0, metavar="N",
                   help="solve in N processes of their own (each site's warm model stays in one), not in a "
                        "thread of the worker: the worker's event loop then never waits for the solver's "
                        "GIL (docs/loop-bench.md); 0 = in-process (default %(default)s)")
    p.add_argument("--stale-after-s", type=positive_float("--stale-after-s"), default=900.0, metavar="S",
                   help="telemetry older than this (simulated seconds) counts as unknown (default %(default)s)")
    p.add_argument("--tx-resend-s", type=positive_float("--tx-resend-s"), default=30.0, metavar="S",
                   help="re-send an unconfirmed transaction after this many clock seconds (default %(default)s)")
    p.add_argument("--cmd-retry-s", type=positive_float("--cmd-retry-s"), default=20.0, metavar="S",
                   help="re-send an unacknowledged command after this many clock seconds (default %(default)s)")
    p.add_argument("--command-grace-s", type=positive_float("--command-grace-s"), default=60.0, metavar="S",
                   help="a command stays valid this many clock seconds past its interval's end "
                        "(default %(default)s)")
    p.add_argument("--progress-s", type=positive_float("--progress-s"), default=10.0, metavar="S",
                   help="log a progress line this often, wall seconds (default %(default)s)")
    p.add_argument("--stats-file", metavar="PATH",
                   help="rewrite this JSON file with the worker's counters and owned sites; {worker} in the "
                        "name becomes the worker id")
    p.set_defaults(func=run_agent)


def _argv(args: argparse.Namespace, worker: str) -> list[str]:
    argv = command.argv("agent", "--broker", args.broker, "--worker-id", worker,
            "--state-dir", str(args.state_dir), "--time-limit-s", repr(args.time_limit_s),
            "--stale-after-s", repr(args.stale_after_s), "--progress-s", repr(args.progress_s),
            "--tx-resend-s", repr(args.tx_resend_s), "--cmd-retry-s", repr(args.cmd_retry_s),
            "--command-grace-s", repr(args.command_grace_s), "--solver-processes", str(args.solver_processes))
    for flag, value in (("--registry", args.registry), ("--username", args.username),
                        ("--stats-file", args.stats_file)):
        if value:
            argv += [flag, str(value)]
    return argv


def run_agent(args: argparse.Namespace) -> int:
    progress_logging(log)
    try:
        broker = BrokerSettings.from_args(args.broker, args.username)
        clock = clock_from_env()
        if args.workers > 1 and args.worker_id is not None:
            raise UsageError("--worker-id runs one worker; leave out --workers (or --worker-id)")
        if not 0 <= args.solver_processes <= 64:
            raise UsageError(f"--solver-processes must be 0..64, got {args.solver_processes}")
    except UsageError as exc:
        print(f"tendril agent: error: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:
        from tendril_transactive.cloud.ingest.workers import Supervisor, worker_env

        log.info("starting %d agent workers", args.workers)
        env_ = worker_env({ENV_MQTT_PASSWORD: broker.password})
        return Supervisor(args.workers, lambda i: _argv(args, f"w{i}"), env_).run()
    return _serve(args, broker, clock)


def _serve(args: argparse.Namespace, broker: BrokerSettings, clock: Clock) -> int:
    from tendril_transactive.cloud.agent.config import ConfigError
    from tendril_transactive.cloud.agent.core import AgentOptions
    from tendril_transactive.cloud.agent.service import AgentService, ServiceOptions
    from tendril_transactive.cloud.devices.registry import RegistryError
    from tendril_transactive.cloud.settings import registry_dir
    worker = args.worker_id or "w0"
    stats = Path(args.stats_file.replace("{worker}", worker)) if args.stats_file else None
    options = ServiceOptions(worker_id=worker, state_dir=args.state_dir, progress_s=args.progress_s,
                             stats_file=stats, solver_processes=args.solver_processes,
                             agent=AgentOptions(stale_after_s=args.stale_after_s, time_limit_s=args.time_limit_s,
                                                tx_resend_s=args.tx_resend_s, cmd_retry_s=args.cmd_retry_s,
                                                command_grace_s=args.command_grace_s))
    try:
        service = AgentService.from_registry(args.registry or registry_dir(), broker, clock,
                                             options=options)
    except (ConfigError, RegistryError) as exc:
        print(f"tendril agent: error: {exc}", file=sys.stderr)
        return 2
    if not service.sites:
        print("tendril agent: error: the registry has no sites (tendril device add / tendril device site)",
              file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await service.run(stop)
        log.info("worker %s: final: %s", worker, service.progress_line())

    asyncio.run(main())
    return 0
