"""`tendril market`: the utility side of the transactive loop, as a long-running service.

Publishes day-ahead and real-time tenders to every registered site, answers every transaction
with a confirm, records all of it in the hash-chained ledger and settles each 5-minute interval
ex post from the meters' data in the store. See docs/market.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from tendril_transactive.cloud.cli.args import non_negative_float, positive_float
from tendril_transactive.cloud.cli.service_log import progress_logging
from tendril_transactive.cloud.settings import (
    DEFAULT_BROKER,
    DEFAULT_RT_SPREAD_S,
    ENV_BROKER,
    ENV_CLOCK,
    ENV_INFLUX_URL,
    ENV_LEDGER_URL,
    ENV_MQTT_PASSWORD,
    BrokerSettings,
    UsageError,
    add_tls_options,
    check_http_url,
    clock_from_env,
    env,
    ledger_url,
    registry_dir,
    tls_args,
)

log = logging.getLogger("tendril.market")


def _hour(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 23:
        raise argparse.ArgumentTypeError(f"--da-hour must be a local hour 0..23, got {text!r}")
    return int(text)


def _intervals(text: str) -> int:
    if not text.isdigit() or int(text) > 288:
        raise argparse.ArgumentTypeError(f"--settle-delay-intervals must be 0..288, got {text!r}")
    return int(text)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "market", help="the market service: tenders, confirms, ledger, ex-post settlement",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Publish day-ahead hourly tenders (BUY+SELL per hour of the next local day, at --da-hour) "
                    "and real-time 5-minute tenders (--rt-lead-s before each interval, expiring at its start) "
                    "to every site in the registry on tendril/v1/{site}/tender; answer every transaction on "
                    "tendril/v1/+/transaction with a confirm on tendril/v1/{site}/confirm (accepted, or "
                    "refused with a reason code); record every tender, transaction and refusal in the "
                    "ledger; settle each 5-minute interval from the meters' energy register once it is "
                    "--settle-delay-intervals old. Restart-safe: the state is rebuilt from the ledger. "
                    f"Simulated time from ${ENV_CLOCK}; SIGTERM/SIGINT stop it.")
    p.add_argument("--registry", type=Path, default=None,
                   help="registry folder (sites, feeders, subscriptions; re-read when it changes) "
                        "(env TENDRIL_REGISTRY, default tendril-registry)")
    p.add_argument("--broker", default=env(ENV_BROKER, DEFAULT_BROKER),
                   help=f"MQTT broker mqtt://host:port (env {ENV_BROKER})")
    p.add_argument("--username", default=None,
                   help=f"MQTT user name; the password comes from ${ENV_MQTT_PASSWORD}")
    add_tls_options(p)
    p.add_argument("--client-id", default="tendril-market",
                   help="stable MQTT client id: the broker keeps this session's queued transactions "
                        "while the service is down")
    p.add_argument("--ledger", default=None,
                   help="ledger URL: sqlite:///FILE or postgresql+psycopg://USER@HOST:PORT/DB "
                        f"(env {ENV_LEDGER_URL}, default sqlite:///tendril-ledger.db)")
    store = p.add_mutually_exclusive_group()
    store.add_argument("--influx-url", default=None,
                       help="telemetry store to settle from: InfluxDB (1.x, 2.x with the DBRP mapping, 3.x) "
                            "over InfluxQL, or VictoriaMetrics through /api/v1/export; told apart by /ping "
                            f"(env {ENV_INFLUX_URL})")
    p.add_argument("--influx-database", default="tendril",
                   help="InfluxQL database of the meter data on InfluxDB (2.x: the DBRP-mapped name; default tendril)")
    store.add_argument("--store-file", type=Path, default=None,
                       help="line-protocol file written by `tendril ingest --store-file`, to settle from")
    p.add_argument("--prices", choices=("replay", "caiso-oasis"), default="replay",
                   help="wholesale prices: bundled CAISO SP-15 March 2024 replay, or live CAISO OASIS "
                        "LMPs through gridstatus")
    p.add_argument("--node", default="TH_SP15_GEN-APND", help="OASIS pricing node for --prices caiso-oasis")
    p.add_argument("--da-hour", type=_hour, default=10,
                   help="local hour (America/Los_Angeles) at which the next day's day-ahead tenders go out")
    p.add_argument("--rt-lead-s", type=positive_float("--rt-lead-s"), default=60.0,
                   help="publish each real-time tender this many clock seconds before its interval")
    p.add_argument("--rt-spread-s", type=non_negative_float("--rt-spread-s"), default=DEFAULT_RT_SPREAD_S,
                   help="spread a real-time batch over this many clock seconds after it opens, each site "
                        "at a fixed offset from its id, so agents answer a steady stream, not one burst "
                        "(0: every site at once; must be below --rt-lead-s)")
    p.add_argument("--settle-delay-intervals", type=_intervals, default=2,
                   help="settle an interval this many 5-minute steps after it ends (late telemetry)")
    p.add_argument("--da-quantity-kwh", type=positive_float("--da-quantity-kwh"), default=20.0,
                   help="most kWh a site may take of one day-ahead tender")
    p.add_argument("--rt-quantity-kwh", type=positive_float("--rt-quantity-kwh"), default=2.0,
                   help="most kWh a site may take of one real-time tender")
    p.add_argument("--feeder-ratio", action="append", default=[], metavar="FEEDER=RATIO",
                   help="forecast load / limit of a feeder for its distribution adder, e.g. feeder-b=0.95 "
                        "(repeatable; the pricing step a power flow will replace)")
    p.add_argument("--default-feeder-ratio", type=float, default=0.0,
                   help="load ratio of every feeder not named by --feeder-ratio")
    p.add_argument("--state-dir", type=Path, default=None,
                   help=f"folder for {'market-stats.json'}, the service's health counters (default: none)")
    p.add_argument("--health-s", type=positive_float("--health-s"), default=30.0,
                   help="wall seconds between health log lines (and stats file writes)")
    p.set_defaults(func=run_market)


def run_market(args: argparse.Namespace) -> int:
    from tendril_transactive.cloud.market.pricing import StaticFeederRatios, parse_feeder_ratios
    from tendril_transactive.cloud.market.schedule import MarketConfig
    from tendril_transactive.cloud.market.sources import make_source

    try:
        broker = BrokerSettings.from_args(args.broker, args.username, **tls_args(args))
        influx_url = args.influx_url or (None if args.store_file else env(ENV_INFLUX_URL))
        if influx_url:
            check_http_url(influx_url)
        pricing = StaticFeederRatios(parse_feeder_ratios(args.feeder_ratio), args.default_feeder_ratio)
        if args.rt_spread_s >= args.rt_lead_s:
            raise UsageError(f"--rt-spread-s ({args.rt_spread_s:g}) must be below --rt-lead-s ({args.rt_lead_s:g}): "
                             "the last site's real-time tenders must go out before they expire")
        config = MarketConfig(da_hour=args.da_hour, rt_lead_s=args.rt_lead_s, rt_spread_s=args.rt_spread_s,
                              settle_delay_intervals=args.settle_delay_intervals,
                              da_quantity_kwh=args.da_quantity_kwh, rt_quantity_kwh=args.rt_quantity_kwh)
        source = make_source(args.prices, args.node)
        clock = clock_from_env()
    except (UsageError, ValueError) as exc:
        print(f"tendril market: error: {exc}", file=sys.stderr)
        return 2
    progress_logging(log)
    from sqlalchemy.exc import SQLAlchemyError

    from tendril_transactive.cloud.ledger.chain import Ledger
    from tendril_transactive.cloud.market.meters import (
        LineProtocolFileReader,
        MeterReader,
        MeterReadError,
        VictoriaMeterReader,
        meter_reader,
    )
    from tendril_transactive.cloud.market.service import MarketService, registry_sites

    url = args.ledger or ledger_url()
    try:
        ledger = Ledger(url)
    except SQLAlchemyError as exc:
        print(f"tendril market: cannot open ledger {url}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    meters: MeterReader | None = None
    if influx_url:
        try:  # InfluxDB (1.x, 2.x with DBRP, 3.x) over InfluxQL, VictoriaMetrics over its export API
            meters = meter_reader(influx_url, args.influx_database)
        except MeterReadError as exc:
            log.warning("market: %s unreachable now (%s); reading it as VictoriaMetrics", influx_url, exc)
            meters = VictoriaMeterReader(influx_url)
    elif args.store_file:
        meters = LineProtocolFileReader(args.store_file)
    else:
        log.warning("market: no --influx-url or --store-file: tenders and confirms only, no settlement")
    root = args.registry or registry_dir()
    service = MarketService(registry_sites(root), broker, ledger, meters, source, pricing, clock, config,
                            client_id=args.client_id, state_dir=args.state_dir, health_s=args.health_s)
    log.info("market: registry %s, ledger %s, broker %s:%d as %s, prices %s, clock %s", root,
             _safe(url), broker.host, broker.port, args.client_id, source.name,
             "simulated" if os.environ.get(ENV_CLOCK) else "wall")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.run(stop)

    try:
        asyncio.run(main())
    except SQLAlchemyError as exc:
        log.error("market: ledger %s failed: %s", _safe(url), str(exc).splitlines()[0])
        return 1
    finally:
        ledger.close()
    return 0


def _safe(url: str) -> str:
    """A ledger URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL the ledger accepted but this cannot render: say nothing of it
        return "(ledger)"
