"""`tendril bill`: one site's monthly OAT bill, shadow bill and rebate; printed, and written as CSV and JSON.

Two sources of a site's data:

* Green Button (default): the site's Green Button file is both its history (shaping the
  subscription) and, when it does not cover the billed month itself, the stand-in meter: its real
  days are laid onto the billed month by day type (see cloud.billing.subscription.replay_history).
* A registered site (`--registry`): the subscription is the registry's kWh per local hour, the
  metered usage is the meter's energy register in the store (`--store-file` or `--influx-url`),
  forward transactions and the market service's settlements come from the ledger.

Forward transactions come from the ledger when one is given, and the ledger's hash chain is
verified first: a ledger that fails verification is refused (exit 1), never billed from.
`--record` appends the settlement intervals and the bill to it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from tendril_transactive.cloud.billing import energy_grid
from tendril_transactive.cloud.billing.bill import MonthlyBill, monthly_bill
from tendril_transactive.cloud.billing.settlement import SettlementError
from tendril_transactive.cloud.billing.subscription import (
    Profile,
    Subscription,
    replay_history,
    replay_months,
    subscribe,
)
from tendril_transactive.cloud.billing.tariff import DAY_TYPES, DEFAULT_TARIFF, Tariff, load_tariff
from tendril_transactive.cloud.devices.registry import Registry, RegistryError
from tendril_transactive.cloud.ledger.chain import Ledger
from tendril_transactive.cloud.market.meters import LineProtocolFileReader, MeterReader, meter_reader
from tendril_transactive.cloud.market.settle import register_at
from tendril_transactive.cloud.market.tenders import TenderConfig
from tendril_transactive.cloud.market.transactions import KIND_TRANSACTION, Transaction
from tendril_transactive.cloud.settings import ENV_INFLUX_URL, ENV_LEDGER_URL, check_http_url
from tendril_transactive.cloud.sources.greenbutton import UsageInterval, load_feed
from tendril_transactive.cloud.sources.prices import (
    BUNDLED_MONTH,
    DEFAULT_FILES,
    PriceInterval,
    default_prices,
    load_caiso_csv,
)
from tendril_transactive.edge.resources import DATA_DIR

DATA = DATA_DIR / "greenbutton"
KIND_SETTLEMENT = "settlement"
KIND_BILL = "bill"
BUNDLED_DATA = (
    f"Bundled data bills {BUNDLED_MONTH} only: the Green Button files (data/greenbutton) hold March 2011, "
    "laid onto March of the billed year, and the CAISO SP-15 prices (data/caiso) cover "
    f"{BUNDLED_MONTH}. To bill another month, pass --greenbutton FILE with a history that covers "
    "that calendar month (any year) and --rt-prices / --da-prices CAISO CSVs that cover the billed "
    "month (columns in data/caiso/README.md). A month that only the --da-prices file covers is "
    "settled at day-ahead hourly prices, and the bill says so in its 'ex-post priced at' line.")


def _month(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if not match:
        raise argparse.ArgumentTypeError(f"--month must be YYYY-MM, got {text!r}")
    if not 1 <= int(match[2]) <= 12:
        raise argparse.ArgumentTypeError(f"month {match[2]} is not 01-12 (in {text!r})")
    return int(match[1]), int(match[2])


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--feeder-load must be a number, got {text!r}") from None
    if not 0 <= value < 10:
        raise argparse.ArgumentTypeError(f"--feeder-load must be in [0, 10), got {text}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bill", help="a site's monthly OAT bill, shadow bill and rebate (prints, writes CSV and JSON)",
        description="Bill one site for one month: OAT bill on metered usage, shadow bill = subscription at "
                    "the OAT + forward buys - sells + ex-post settlement at real-time tender prices, "
                    "rebate = max(0, OAT - shadow).",
        epilog=BUNDLED_DATA)
    p.add_argument("--site", required=True,
                   help="site id; its Green Button file defaults to data/greenbutton/SITE_*.xml "
                        "(bundled: coastal, inland)")
    p.add_argument("--month", required=True, type=_month,
                   help=f"local calendar month to bill, YYYY-MM (bundled data: {BUNDLED_MONTH} only; see below)")
    p.add_argument("--greenbutton", type=Path, default=None,
                   help="Green Button ESPI file with the site's usage (default: the bundled one for --site)")
    p.add_argument("--tariff", type=Path, default=DEFAULT_TARIFF,
                   help=f"OAT tariff TOML (default data/tariffs/{DEFAULT_TARIFF.name})")
    p.add_argument("--rt-prices", type=Path, default=None,
                   help="real-time CAISO price CSV for ex-post settlement "
                        f"(default: bundled RTM 5-minute, {BUNDLED_MONTH})")
    p.add_argument("--da-prices", type=Path, default=None,
                   help="price CSV that fills gaps in the real-time one, or prices a month it does not "
                        f"cover (default: bundled DAM hourly, {BUNDLED_MONTH})")
    p.add_argument("--feeder-load", type=_ratio, default=0.0,
                   help="feeder forecast load / limit for the distribution adder (default 0: uncongested)")
    p.add_argument("--ledger", default=os.environ.get(ENV_LEDGER_URL),
                   help="ledger URL (sqlite:///FILE or postgresql+psycopg://...) with the site's "
                        "transactions (env TENDRIL_LEDGER_URL; default: none, no forward transactions)")
    p.add_argument("--record", action="store_true",
                   help="append the settlement intervals and the bill to --ledger (once per site and month)")
    p.add_argument("--registry", type=Path, default=None,
                   help="bill a REGISTERED site: its subscription from this registry, its metered usage from "
                        "the store (--store-file or --influx-url), its transactions and settlements from --ledger")
    store = p.add_mutually_exclusive_group()
    store.add_argument("--store-file", type=Path, default=None,
                       help="line-protocol file written by `tendril ingest --store-file` (with --registry)")
    store.add_argument("--influx-url", default=None,
                       help="telemetry store read through the VictoriaMetrics export API (with --registry; "
                            f"env {ENV_INFLUX_URL})")
    p.add_argument("--out", type=Path, default=Path("out/bills"),
                   help="folder for SITE_MONTH.csv and SITE_MONTH.json (default out/bills)")
    p.set_defaults(func=main)


def _greenbutton_file(site: str, given: Path | None) -> Path:
    if given is not None:
        return given
    found = sorted(DATA.glob(f"{site}_*.xml"))
    if not found:
        have = sorted({f.name.split("_")[0] for f in DATA.glob("*.xml")})
        raise FileNotFoundError(f"no bundled Green Button file for site {site!r} (have {', '.join(have)}); "
                                "pass --greenbutton FILE")
    return found[0]


def _prices(given: Path | None, market: str) -> list[PriceInterval]:
    return load_caiso_csv(given) if given is not None else default_prices("RTM" if market == "RTM" else "DAM")


def _price_files(args: argparse.Namespace) -> str:
    def name(given: Path | None, market: str) -> str:
        return given.name if given is not None else f"{Path(DEFAULT_FILES[market]).name} (bundled)"
    return f"--rt-prices {name(args.rt_prices, 'RTM')}, --da-prices {name(args.da_prices, 'DAM')}"


def _no_price_hint(args: argparse.Namespace) -> str:
    year, month = args.month
    bundled = f"bundled prices cover {BUNDLED_MONTH} only; " if None in (args.rt_prices, args.da_prices) else ""
    return (f"price files: {_price_files(args)}; {bundled}for {year:04d}-{month:02d} pass --rt-prices "
            "and/or --da-prices CAISO CSVs that cover it")


def _metered(history: list[UsageInterval], start: int, end: int,
             replay: list[UsageInterval]) -> tuple[list[UsageInterval], bool]:
    """The file's own readings if they cover the month, else the history replayed onto it."""
    covered = energy_grid.clip(history, start, end)
    if sum(iv.duration_s for iv in covered) == end - start:
        return covered, False
    return replay, True


def write_outputs(bill: MonthlyBill, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{bill.site}_{bill.month}"
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["section", "label", "kwh", "rate_usd_per_kwh", "amount_usd"])
        writer.writeheader()
        writer.writerows(line.as_dict() for line in bill.lines)
    json_path.write_text(json.dumps(bill.summary(), indent=2) + "\n")
    return csv_path, json_path


def _record(ledger: Ledger, bill: MonthlyBill, now: float) -> str:
    for rec in ledger.records(kind=KIND_BILL, site=bill.site):
        if rec.body.get("month") == bill.month:
            return (f"bill for {bill.site} {bill.month} already in the ledger (record {rec.seq}); "
                    "not recorded again")
    items = [(KIND_SETTLEMENT, bill.site, {"month": bill.month, **s.to_record()}) for s in bill.settled]
    items.append((KIND_BILL, bill.site, {k: v for k, v in bill.summary().items() if k != "lines"}))
    written = ledger.append_many(items, now)
    return f"recorded {len(written)} ledger records ({len(bill.settled)} settlement intervals + the bill)"


HOUR = 3600


def registry_subscription(site: str, by_hour: tuple[float, ...], tariff: Tariff) -> Subscription:
    """A registered site's subscription (kWh per local hour, every day) as a billing Subscription."""
    if not by_hour:
        by_hour = (0.0,) * 24
    keys = [(m, d, h) for m in range(1, 13) for d in DAY_TYPES for h in range(24)]
    return Subscription(site, tariff, Profile({k: by_hour[k[2]] for k in keys}, {k: 1 for k in keys}))


def store_usage(reader: MeterReader, site: str, start: int, end: int) -> tuple[list[UsageInterval], int]:
    """Hourly kWh from the site's meters' energy registers; (intervals, hours without data)."""
    readings = reader.readings(site, start - HOUR, end + HOUR)
    out, missing = [], 0
    for t in range(start, end, HOUR):
        total: float | None = 0.0 if readings else None
        for series in readings.values():
            a, b = register_at(series, t), register_at(series, t + HOUR)
            if a is None or b is None or b < a or total is None:
                total = None
                continue
            total += (b - a) / 1000.0
        if total is None:
            missing += 1
        else:
            out.append(UsageInterval(t, HOUR, total))
    return out, missing


def verified_ledger(url: str) -> Ledger:
    """The ledger, once its hash chain verifies; LedgerTampered otherwise."""
    ledger = Ledger(url)
    report = ledger.verify()
    if not report.ok:
        ledger.close()
        raise LedgerTampered(f"the ledger at {url} fails verification ({len(report.problems)} problem(s): "
                             f"{report.problems[0]}); refusing to bill from it "
                             "(see `tendril ledger verify`)")
    return ledger


class LedgerTampered(RuntimeError):
    """The ledger's hash chain does not verify."""


def registered_bill(args: argparse.Namespace, ledger: Ledger | None) -> MonthlyBill:
    year, month = args.month
    registry = Registry(args.registry)
    names = [s.site for s in registry.sites]
    if args.site not in names:
        raise ValueError(f"site {args.site!r} is not in the registry at {args.registry} "
                         f"(have {', '.join(names) or 'none'})")
    record = registry.site(args.site)
    tariff = load_tariff(args.tariff)
    start, end = tariff.month_window(year, month)
    influx_url = args.influx_url or (None if args.store_file else os.environ.get(ENV_INFLUX_URL))
    reader: MeterReader
    if args.store_file:
        reader = LineProtocolFileReader(args.store_file)
    elif influx_url:
        reader = meter_reader(check_http_url(influx_url), "tendril")  # InfluxQL db, as the dashboards
    else:
        raise ValueError("a registered site's metered usage comes from the store: pass --store-file or "
                         "--influx-url")
    metered, missing = store_usage(reader, args.site, start, end)
    transactions: list[Transaction] = []
    settled_usd, settled_n = 0.0, 0
    if ledger is not None:
        transactions = [Transaction.from_record(r.body)
                        for r in ledger.records(kind=KIND_TRANSACTION, site=args.site)]
        for r in ledger.records(kind=KIND_SETTLEMENT, site=args.site):
            if "intervalStart" in r.body and start <= r.body["intervalStart"] < end:
                settled_usd += float(r.body["amountUsd"])
                settled_n += 1
    layers = [_prices(args.rt_prices, "RTM"), _prices(args.da_prices, "DAM")]
    bill = monthly_bill(args.site, year, month, tariff, metered,
                        registry_subscription(args.site, record.subscription_kwh_by_hour, tariff),
                        transactions, layers, TenderConfig(), args.feeder_load)
    bill.notes.append(f"metered: site {args.site}'s meter energy register in the store, {len(metered)} hours "
                      f"with data, {missing} without (those count as no usage)")
    bill.notes.append(f"subscription: the registry's kWh per local hour for {args.site}; "
                      f"{len(transactions)} forward transactions in the ledger" if ledger is not None
                      else f"subscription: the registry's kWh per local hour for {args.site}; no ledger given")
    if ledger is not None:
        bill.notes.append(f"market service settlements in the ledger for the month: {settled_n} intervals, "
                          f"{settled_usd:+.2f} $ (5-minute, as they happened; the ex-post lines above are "
                          "re-settled from the month's meter data)")
    return bill


def _finish(args: argparse.Namespace, bill: MonthlyBill, ledger: Ledger | None) -> int:
    bill.notes.append(f"price files: {_price_files(args)}")
    print(bill.render())
    csv_path, json_path = write_outputs(bill, args.out)
    print()
    for note in bill.notes:
        print(note)
    print(f"written: {csv_path}, {json_path}")
    if args.record and ledger is not None:
        print(_record(ledger, bill, time.time()))
    return 0


def main(args: argparse.Namespace) -> int:
    year, month = args.month
    if args.record and not args.ledger:
        print("tendril bill: --record needs --ledger URL (or TENDRIL_LEDGER_URL)", file=sys.stderr)
        return 2
    ledger: Ledger | None = None
    try:
        if args.ledger:
            ledger = verified_ledger(args.ledger)
        if args.registry is not None:
            bill = registered_bill(args, ledger)
            return _finish(args, bill, ledger)
        tariff = load_tariff(args.tariff)
        gb_path = _greenbutton_file(args.site, args.greenbutton)
        feed = load_feed(gb_path)
        history = feed.electricity_usage()
        subscription = subscribe(args.site, history, tariff)
        start, end = tariff.month_window(year, month)
        if month not in subscription.profile.months():
            have = ", ".join(str(m) for m in subscription.profile.months())
            raise ValueError(f"{gb_path.name} has history for month(s) {have} only; a subscription for "
                             f"month {month} needs that month's history")
        replay = replay_history(history, tariff, year, month, subscription.profile)
        metered, replayed = _metered(history, start, end, replay)
        layers = [_prices(args.rt_prices, "RTM"), _prices(args.da_prices, "DAM")]
        transactions: list[Transaction] = []
        if ledger is not None:
            transactions = [Transaction.from_record(r.body)
                            for r in ledger.records(kind=KIND_TRANSACTION, site=args.site)]
        bill = monthly_bill(args.site, year, month, tariff, metered, subscription, transactions, layers,
                            TenderConfig(), args.feeder_load)
        days_of = ", ".join(replay_months(history, tariff, month))
        bill.notes.append(
            f"metered: {gb_path.name} days of {days_of} laid onto {bill.month} by day type and "
            "clock hour (stand-in meter)" if replayed else f"metered: {gb_path.name} readings")
        trades = f"{len(transactions)} forward transactions in the ledger" if args.ledger \
            else "no ledger given, so no forward transactions"
        bill.notes.append(f"subscription: mean by month x day type x hour of {len(history)} readings "
                          f"in {gb_path.name}; {trades}")
        bill.notes.extend(f"data warning: {w.replace(str(gb_path), gb_path.name)}" for w in feed.warnings)
        return _finish(args, bill, ledger)
    except LedgerTampered as exc:
        print(f"tendril bill: {exc}", file=sys.stderr)
        return 1
    except SettlementError as exc:
        print(f"tendril bill: {exc} ({_no_price_hint(args)})", file=sys.stderr)
        return 2
    except (ValueError, OSError, RegistryError) as exc:  # every data error of the modules used is a ValueError
        print(f"tendril bill: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"tendril bill: ledger {args.ledger}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 2
    finally:
        if ledger is not None:
            ledger.close()
