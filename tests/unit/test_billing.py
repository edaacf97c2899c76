"""Monthly bills on the Coastal and Inland Green Button homes with March 2024 CAISO prices.

The Green Button data is from 2011; each home's subscription is its 2011 history shaped by
month x day type x local hour and laid onto the 2024 calendar (see cloud.billing.subscription).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import tendril_wire as wire

from tendril_transactive.cloud.billing.bill import MonthlyBill, monthly_bill
from tendril_transactive.cloud.billing.subscription import Subscription, subscribe
from tendril_transactive.cloud.billing.tariff import default_tariff
from tendril_transactive.cloud.cli import bill as bill_cli
from tendril_transactive.cloud.market.tenders import TenderConfig, build_tenders, tender_prices
from tendril_transactive.cloud.market.transactions import TenderBook, Transaction
from tendril_transactive.cloud.sources.greenbutton import UsageInterval, load_usage
from tendril_transactive.cloud.sources.prices import PriceInterval, default_prices

pytestmark = pytest.mark.unit

LA = ZoneInfo("America/Los_Angeles")
# whole years: every month is billed below (tests/data/greenbutton/README.md)
GB = Path(__file__).resolve().parents[2] / "tests" / "data" / "greenbutton"
HOMES = {"coastal": "Coastal_Single_Family_Jan_1_2011_to_Jan_1_2012.xml.gz",
         "inland": "Inland_Single_Family_Jan_1_2011_to_Jan_1_2012.xml.gz"}
RTM_CSV = Path(__file__).resolve().parents[2] / "data" / "caiso" / "sp15_rtm_5min_2024-03.csv"
# Stated here rather than taken from the defaults, so the hand computation below stays true.
def by_hour(overnight: float, daytime: float, peak: float) -> tuple[float, ...]:
    """Overnight 21-8 h, daytime 8-16 h, peak 16-21 h."""
    return tuple(peak if 16 <= h < 21 else daytime if 8 <= h < 16 else overnight for h in range(24))


CONFIG = TenderConfig(loss_factor=0.06, distribution_adder_by_hour=by_hour(0.11, 0.09, 0.21),
                      generation_adder_by_hour=by_hour(0.04, 0.02, 0.14), spread=0.02)


@pytest.fixture(scope="module", params=sorted(HOMES))
def home(request: pytest.FixtureRequest) -> Subscription:
    return subscribe(request.param, load_usage(GB / HOMES[request.param]), default_tariff())


def layers() -> list[list[PriceInterval]]:
    return [default_prices("RTM"), default_prices("DAM")]


def bill(sub: Subscription, metered: Sequence[UsageInterval], month: int = 3,
         transactions: Sequence[Transaction] = ()) -> MonthlyBill:
    return monthly_bill(sub.site, 2024, month, sub.tariff, metered, sub, transactions, layers(), CONFIG)


def line(b: MonthlyBill, label: str, section: str = "") -> Decimal:
    (found,) = [x.amount_usd for x in b.lines if x.label == label and section in ("", x.section)]
    return found


def local(t: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, LA)


def test_usage_equal_to_subscription_pays_the_oat_every_month(home: Subscription) -> None:
    for month in range(1, 13):
        b = bill(home, home.month(2024, month), month)
        assert b.shadow_usd == b.oat_usd, month
        assert b.rebate_usd == Decimal("0.00") and b.net_credit_usd == Decimal("0.00"), month
        oat = [(x.label, x.kwh, x.amount_usd) for x in b.lines if x.section == "oat"]
        assert oat == [(x.label, x.kwh, x.amount_usd) for x in b.lines if x.section == "subscription"]
        assert b.oat_usd > 100  # a real bill, not an empty one
    march = bill(home, home.month(2024, 3))
    assert march.price_markets == {"RTM": 8902, "DAM": 2}  # settled on real prices, nothing to trade
    assert line(march, "ex-post buys (metered above position)") == Decimal("0.00")


def shift(sub: Subscription, kwh_per_day: float = 2.0) -> list[UsageInterval]:
    out = []
    for iv in sub.month(2024, 3):
        hour = local(iv.start).hour
        delta = kwh_per_day / 3 if 11 <= hour < 14 else -kwh_per_day / 3 if 17 <= hour < 20 else 0.0
        out.append(UsageInterval(iv.start, iv.duration_s, iv.kwh + delta))
    return out


def test_shifting_evening_use_to_midday_lowers_the_shadow_bill(home: Subscription) -> None:
    """Shift 2 kWh a day from 5-8 pm to 11 am-2 pm on every day of March 2024.

    Metered = subscription, except that each day 2/3 kWh leaves each clock hour 17, 18, 19 and
    2/3 kWh is added to each of 11, 12, 13. Settled on the 5-minute grid that is 1/18 kWh per
    interval, 31 days x 3 h x 12 = 1,116 intervals on each side (March's RTM gaps fall at 23:50
    and 14:00 local, outside both windows). The result is the same for both homes.

    Tender prices (CONFIG): buy = LMP x 1.06 / 1000 + distribution + generation adders; 11-14 h
    are daytime, 0.09 + 0.02 = 0.11 $/kWh; 17-20 h are peak, 0.21 + 0.14 = 0.35; sell = buy - 0.02.
    Sums of the 1,116 RTM LMPs in data/caiso/sp15_rtm_5min_2024-03.csv (checked below):
    11-14 h: -31,036.79301 $/MWh (midday prices were mostly negative); 17-20 h: 34,540.43034 $/MWh.

      ex-post buys  = (1/18) x (1,116 x 0.11 + 0.00106 x -31,036.79301)
                    = (1/18) x (122.76 - 32.89900) = 4.99228          -> $4.99
      ex-post sells = (1/18) x (1,116 x 0.33 + 0.00106 x 34,540.43034)
                    = (1/18) x (368.28 + 36.61286) = 22.49405         -> $22.49 revenue
      shadow bill falls by 22.49 - 4.99                               =  $17.50

    The OAT bill moves 62 kWh from winter mid-peak ($0.52) to super-off-peak ($0.32):
    it falls by 62 x 0.20 = $12.40. Rebate = max(0, OAT - shadow): from $0.00 to $5.10.
    """
    base = bill(home, home.month(2024, 3))
    shifted = bill(home, shift(home))
    assert line(shifted, "ex-post buys (metered above position)") == Decimal("4.99")
    assert line(shifted, "ex-post sells (metered below position)") == Decimal("-22.49")
    assert base.shadow_usd - shifted.shadow_usd == Decimal("17.50")
    assert base.oat_usd - shifted.oat_usd == Decimal("12.40")
    assert (base.rebate_usd, shifted.rebate_usd) == (Decimal("0.00"), Decimal("5.10"))
    assert shifted.pays_usd == shifted.shadow_usd == base.oat_usd - Decimal("17.50")


def test_hand_computation_inputs_match_the_price_file() -> None:
    mid, eve = [], []
    with RTM_CSV.open() as fh:
        for row in csv.DictReader(fh):
            t = local(int(dt.datetime.fromisoformat(row["interval_start_utc"]).timestamp()))
            if t.month == 3 and 11 <= t.hour < 14:
                mid.append(float(row["lmp_usd_per_mwh"]))
            elif t.month == 3 and 17 <= t.hour < 20:
                eve.append(float(row["lmp_usd_per_mwh"]))
    assert (len(mid), len(eve)) == (1116, 1116)
    assert round(sum(mid), 5) == -31036.79301
    assert round(sum(eve), 5) == 34540.43034


def test_spring_forward_peak_is_billed_on_the_local_clock(home: Subscription) -> None:
    """1 kWh more at 23:00 UTC on Sunday 2024-03-10: that is 16:00 PDT, mid-peak ($0.52). Had the
    offset of the day before (PST) been used it would be 15:00, super-off-peak ($0.32)."""
    extra = int(dt.datetime(2024, 3, 10, 23, tzinfo=dt.UTC).timestamp())
    metered = [UsageInterval(iv.start, iv.duration_s, iv.kwh + (1.0 if iv.start == extra else 0.0))
               for iv in home.month(2024, 3)]
    base, more = bill(home, home.month(2024, 3)), bill(home, metered)
    assert more.oat_usd - base.oat_usd == Decimal("0.52")
    assert line(more, "winter mid-peak", "oat") - line(base, "winter mid-peak", "oat") == Decimal("0.52")


def test_forward_buy_changes_the_shadow_bill_by_its_price(home: Subscription) -> None:
    """Buy 1 kWh day-ahead for 12-1 pm on 2024-03-12 and use exactly the subscription: the
    position exceeds use by 1 kWh, which settles ex post as 1/12 kWh sold in each 5-minute
    interval of that hour. Shadow = OAT + forward price - ex-post sell revenue."""
    start = int(dt.datetime(2024, 3, 12, 12, tzinfo=LA).timestamp())
    dam = [p for p in default_prices("DAM") if p.start == start]
    book = TenderBook()
    offers = build_tenders(home.site, "feeder-1", dam, "DAM", now=start - 86400, config=CONFIG,
                           expires_after_s=3600)
    for t in offers:
        book.offer(t)
    buy_id = next(t["tenderId"] for t in offers if t["side"] == wire.SIDE_BUY)
    tx = book.accept(buy_id, home.site, 1.0, now=start - 86400 + 10)
    b = bill(home, home.month(2024, 3), transactions=[tx])
    rt = [p for p in default_prices("RTM") if start <= p.start < start + 3600]
    revenue = sum(tender_prices(p.lmp_usd_per_mwh, p.start, CONFIG)[1] for p in rt) / 12
    forward = tender_prices(dam[0].lmp_usd_per_mwh, start, CONFIG)[0]
    assert line(b, "forward buys (accepted tenders)") == Decimal(f"{forward:.2f}")
    assert line(b, "ex-post sells (metered below position)") == -Decimal(f"{revenue:.2f}")
    assert b.shadow_usd - b.oat_usd == Decimal(f"{forward:.2f}") - Decimal(f"{revenue:.2f}")
    assert b.rebate_usd == max(Decimal("0.00"), b.oat_usd - b.shadow_usd)


# ---------------------------------------------------------------------------------- the CLI


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tendril")
    bill_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_bill_command_prints_and_writes_csv_and_json(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["bill", "--site", "coastal", "--month", "2024-03", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "coastal_2024-03.json").read_text())
    with (tmp_path / "coastal_2024-03.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    oat = sum(Decimal(r["amount_usd"]) for r in rows if r["section"] == "oat")
    assert Decimal(summary["oat_bill_usd"]) == oat
    assert Decimal(summary["customer_pays_usd"]) == oat - Decimal(summary["rebate_usd"])
    assert Decimal(summary["shadow_bill_usd"]) == sum(
        Decimal(r["amount_usd"]) for r in rows if r["section"] in ("subscription", "transactive"))
    assert f"{Decimal(summary['shadow_bill_usd']):,.2f}" in printed
    assert "laid onto 2024-03" in printed and "written:" in printed


@pytest.mark.parametrize(("argv", "words"), [
    (["--site", "nowhere", "--month", "2024-03"], "no bundled Green Button file for site 'nowhere'"),
    (["--site", "coastal", "--month", "2024-04"], "history for month(s) 3 only"),
    (["--site", "coastal", "--month", "2024-03", "--record"], "--record needs --ledger"),
])
def test_bill_command_bad_input(argv: list[str], words: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["bill", *argv, "--out", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err
