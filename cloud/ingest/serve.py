"""Running `tendril ingest`: one worker's event loop, or the supervisor of N worker processes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from tendril_transactive.cloud import command
from tendril_transactive.cloud.ingest.dedup import write_atomic
from tendril_transactive.cloud.ingest.ingestor import Ingestor, StateDirInUse
from tendril_transactive.cloud.ingest.known_devices import KnownDevices
from tendril_transactive.cloud.ingest.retire import Identity, existing, plan, retire, wanted, write_identity
from tendril_transactive.cloud.ingest.validation import Limits
from tendril_transactive.cloud.ingest.workers import Supervisor, worker_env
from tendril_transactive.cloud.mqtt.codec import V5, V311
from tendril_transactive.cloud.settings import (
    DEFAULT_SHARE_GROUP,
    ENV_INFLUX_TOKEN,
    ENV_MQTT_PASSWORD,
    broker_tls,
    clock_from_env,
    parse_broker,
    tls_args,
    tls_argv,
)
from tendril_transactive.cloud.store.sinks import EmbeddedStore, InfluxSink, Sink

log = logging.getLogger("tendril.ingest")

_MIB = 1024 * 1024
_PROTOCOLS = {"auto": None, "5": V5, "3.1.1": V311}


# ------------------------------------------------------------------ supervisor


def worker_argv(args: argparse.Namespace, index: int) -> list[str]:
    """The command line of worker `index`: the same options, minus secrets (they go by env)."""
    argv = command.argv("ingest",
        "--broker", args.broker, "--client-id", args.client_id, "--mqtt-version", args.mqtt_version,
        "--influx-org", args.influx_org, "--influx-bucket", args.influx_bucket,
        "--store-file", str(args.store_file), "--state-dir", str(args.state_dir),
        "--spool-max-mb", str(args.spool_max_mb), "--dedup-window", str(args.dedup_window),
        "--workers", str(args.workers), "--worker-index", str(index),
        "--batch-max", str(args.batch_max), "--flush-interval", repr(args.flush_interval),
        "--receive-maximum", str(args.receive_maximum), "--stats-interval", repr(args.stats_interval),
        "--health-interval", repr(args.health_interval),
        "--max-age", repr(args.max_age), "--max-skew", repr(args.max_skew),
    )  # fmt: skip
    optional = {
        "--username": args.username, "--influx-url": args.influx_url, "--share-group": args.share_group,
        "--stats-file": args.stats_file, "--registry": str(args.registry) if args.registry else None,
    }  # fmt: skip
    for flag, value in optional.items():
        if value:
            argv += [flag, value]
    argv += tls_argv(args)
    for flag, on in (("--accept-any-device", args.accept_any_device), ("--no-fsync", args.no_fsync)):
        if on:
            argv.append(flag)
    return argv


def supervise(args: argparse.Namespace, host: str, port: int, influx_url: str | None,
              devices: KnownDevices | None) -> int:
    if not retire_stale(args, host, port, influx_url, devices):
        return 1
    env = worker_env({ENV_MQTT_PASSWORD: args.password, ENV_INFLUX_TOKEN: args.influx_token})
    group = args.share_group or DEFAULT_SHARE_GROUP
    log.info("starting %d ingestion workers in shared subscription group %s", args.workers, group)
    return Supervisor(args.workers, lambda i: worker_argv(args, i), env).run()


# ------------------------------------------------------------------ one worker


def _identities(args: argparse.Namespace) -> dict[str, Identity]:
    member = args.workers > 1 or args.worker_index is not None
    group = args.share_group or (DEFAULT_SHARE_GROUP if member else None)
    return wanted(args.client_id, args.workers, member, group)


def _sink(args: argparse.Namespace, influx_url: str | None) -> tuple[Sink, str]:
    if influx_url:
        token = args.influx_token or os.environ.get(ENV_INFLUX_TOKEN)
        sink = InfluxSink(influx_url, token, args.influx_org, args.influx_bucket)
        return sink, f"{influx_url} org={args.influx_org} bucket={args.influx_bucket}"
    # Nobody queries this process: keep the file only, so memory stays flat.
    return EmbeddedStore(args.store_file, memory=False), f"embedded store, appending to {args.store_file}"


def retire_stale(
    args: argparse.Namespace, host: str, port: int, influx_url: str | None, devices: KnownDevices | None
) -> bool:
    """Before the workers start: drain and remove what workers of an earlier, larger (or
    differently named) run left behind (cloud/ingest/retire.py). False if one could not be."""
    want = _identities(args)
    found = existing(args.state_dir)
    for name, ident in found.items():
        if ident is None and name not in want:
            log.warning("%s has no identity record (written since 0.1.0 by every worker): not retired; if it "
                        "holds a spool, start a worker with that folder to drain it", args.state_dir / name)
    todo = plan(found, want)
    if not todo:
        return True

    def drain(folder: Path, ident: Identity) -> tuple[bool, int, int]:
        async def go() -> tuple[bool, int, int]:
            sink, _where = _sink(args, influx_url)
            try:
                ingestor = _ingestor(args, host, port, sink, devices, ident, folder, retire=True)
                drained = await ingestor.drain()
                return drained, ingestor.stats.received, ingestor.stats.replayed
            finally:
                await sink.close()

        return asyncio.run(go())

    try:
        results = retire(args.state_dir, todo, want, drain)
    except StateDirInUse as exc:
        print(f"tendril ingest: error: cannot retire an old worker's folder: {exc}", file=sys.stderr)
        return False
    if all(r.drained for r in results):
        return True
    print("tendril ingest: error: could not drain every retired worker's session and spool (is the store "
          "reachable?); nothing was deleted, start again to retry", file=sys.stderr)
    return False


def serve_worker(
    args: argparse.Namespace, host: str, port: int, influx_url: str | None, devices: KnownDevices | None
) -> int:
    member = args.worker_index is not None
    index = args.worker_index if member else 0
    if not member and not retire_stale(args, host, port, influx_url, devices):
        return 1
    sink, where = _sink(args, influx_url)
    if devices is None:
        log.warning("accepting messages from any device id (--accept-any-device)")
    name = f"w{index}"
    identity = _identities(args)[name]
    try:
        ingestor = _ingestor(args, host, port, sink, devices, identity, args.state_dir / name)
    except StateDirInUse as exc:
        print(f"tendril ingest: error: {exc}", file=sys.stderr)
        return 2
    write_identity(args.state_dir / name, identity)  # so a later, smaller run can retire this one
    log.info("worker %d ingesting from mqtt://%s:%d into %s", index, host, port, where)
    stats_path = Path(args.stats_file.replace("{worker}", str(index))) if args.stats_file else None
    asyncio.run(_serve(ingestor, sink, args.stats_interval, stats_path))
    return 0


def _ingestor(
    args: argparse.Namespace, host: str, port: int, sink: Sink, devices: KnownDevices | None, identity: Identity,
    state_dir: Path, retire: bool = False,
) -> Ingestor:
    return Ingestor(
        host,
        port,
        sink,
        # the simulated clock a demo or test runs on ($TENDRIL_CLOCK), as the market and agent do:
        # --max-age and --max-skew judge a reading against the time the fleet lives in
        clock=clock_from_env(),
        client_id=identity.client_id,
        username=args.username,
        password=args.password or os.environ.get(ENV_MQTT_PASSWORD),
        batch_max=args.batch_max,
        flush_interval_s=args.flush_interval,
        devices=devices,
        state_dir=state_dir,
        share_group=identity.share_group,
        worker=state_dir.name[1:],
        health_interval_s=None if retire else (args.health_interval or None),
        dedup_window=args.dedup_window,
        protocol=_PROTOCOLS[args.mqtt_version],
        receive_maximum=args.receive_maximum,
        spool_max_bytes=args.spool_max_mb * _MIB,
        spool_fsync=not args.no_fsync,
        retire=retire,
        limits=Limits(args.max_age or None, args.max_skew),
        tls=broker_tls(parse_broker(args.broker), **tls_args(args)),
    )


async def _serve(ingestor: Ingestor, sink: Sink, stats_interval: float, stats_path: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if isinstance(sink, InfluxSink):
        await sink.open()
    # Everything made so far (modules, registry, the ingestor) lives as long as the process:
    # moved out of the collector's generations, it is not re-scanned by every full collection
    # (one was ~90 ms of CPU per worker over ~190k objects, ~150k of them from start-up).
    gc.collect()
    gc.freeze()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers off the main thread
            loop.add_signal_handler(sig, stop.set)
    reporter = asyncio.create_task(_report(ingestor, stop, stats_interval, stats_path))
    try:
        await ingestor.run(stop)
    finally:
        stop.set()
        await reporter
        await sink.close()
    stats = ingestor.stats
    if stats_path is not None:
        write_stats(stats_path, ingestor)
    log.info(
        "stopped: %d received, %d written, %d rejected %s, %d lost to store errors, %d duplicates, "
        "%d spooled, %d replayed",
        stats.received, stats.written, sum(stats.rejected.values()), dict(stats.rejected), stats.lost,
        stats.duplicates, stats.spooled, stats.replayed,
    )  # fmt: skip


def stats_json(ingestor: Ingestor) -> dict[str, object]:
    stats = ingestor.stats
    spool = ingestor.spool
    return {
        "worker": ingestor.worker,
        "pid": os.getpid(),
        "received": stats.received,
        "written": stats.written,
        "duplicates": stats.duplicates,
        "rejected": dict(stats.rejected),
        "by_kind": dict(stats.by_kind),
        "spooled": stats.spooled,
        "replayed": stats.replayed,
        "spool_lines": spool.depth_lines if spool else 0,
        "write_failures": stats.write_failures,
        "lost": stats.lost,
        "dead_letters": stats.dead_letters,
        "dead_letters_dropped": stats.dead_letters_dropped,
        "session_takeovers": stats.session_takeovers,
        "sessions_lost": stats.sessions_lost,
        "connects": stats.connects,
        "pending": ingestor.pending,
        "first_received_at": stats.first_received_at,
        "last_written_at": stats.last_written_at,
        "cpu_at_first_received": stats.cpu_at_first_received,
        "cpu_at_last_written": stats.cpu_at_last_written,
        "cpu_now": time.process_time(),
        "lag": ingestor.lag_total.to_json(),
    }


def write_stats(path: Path, ingestor: Ingestor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(stats_json(ingestor)).encode(), fsync=False)


async def _report(ingestor: Ingestor, stop: asyncio.Event, interval: float, stats_path: Path | None) -> None:
    last_received, last_t = 0, time.monotonic()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        if stop.is_set():
            return
        now = time.monotonic()
        stats = ingestor.stats
        rate = (stats.received - last_received) / (now - last_t)
        last_received, last_t = stats.received, now
        if stats_path is not None:
            write_stats(stats_path, ingestor)
        spool = ingestor.spool
        log.info(
            "%.0f msg/s; %d received, %d written, %d rejected, %d duplicates, %d lost; spool %d lines; broker %s",
            rate, stats.received, stats.written, sum(stats.rejected.values()), stats.duplicates, stats.lost,
            spool.depth_lines if spool else 0, "connected" if ingestor.ready.is_set() else "DISCONNECTED",
        )  # fmt: skip
