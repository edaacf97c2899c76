"""What `tendril bill` and the billing and market code say to a person: times as local date-times
with their zone (never unix seconds), a month out of range told apart from a malformed one, and a
bill that names the prices its ex-post lines were settled at and the month of history it replayed.

Data: the bundled Green Button file (coastal, March 2011) and CAISO SP-15 prices (March 2024);
a month with no 5-minute prices is made by shifting the real day-ahead rows a year on.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tendril_transactive.cloud.billing.settlement import SettlementError, price_grid, settle
from tendril_transactive.cloud.billing.subscription import SubscriptionError, replay_months, subscribe
from tendril_transactive.cloud.billing.tariff import default_tariff
from tendril_transactive.cloud.cli import bill as bill_cli
from tendril_transactive.cloud.cli.main import main as tendril
from tendril_transactive.cloud.market.tenders import TenderConfig, build_tenders
from tendril_transactive.cloud.market.transactions import REFUSE_EXPIRED, TenderBook, TransactionRefused
from tendril_transactive.cloud.sources.greenbutton import UsageInterval, load_usage
from tendril_transactive.cloud.sources.prices import DEFAULT_FILES, default_prices, prices_between
from tendril_transactive.cloud.timefmt import local_span, local_time
from tendril_transactive.edge.resources import DATA_DIR

pytestmark = pytest.mark.unit

LA = ZoneInfo("America/Los_Angeles")
COASTAL = DATA_DIR / "greenbutton" / "coastal_2011-03.xml"
DAM_CSV = DATA_DIR / DEFAULT_FILES["DAM"]
EPOCH = re.compile(r"\b1\d{9}\b")  # unix seconds of 2001-2033: what no message may show
YEAR = dt.timedelta(days=365)  # 2024-03-01 + 365 days = 2025-03-01 (the leap day is before March)


def _at(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, tz: dt.tzinfo = LA) -> int:
    return int(dt.datetime(y, mo, d, h, mi, s, tzinfo=tz).timestamp())


def run(argv: list[str]) -> int:
    return tendril(argv)  # the real CLI's entry point, as `tendril bill ...` runs it


def _shifted_dam(tmp_path: Path, shift: dt.timedelta) -> Path:
    """The bundled day-ahead rows, verbatim but for their timestamps, moved by `shift`."""
    out = tmp_path / "dam_shifted.csv"
    with DAM_CSV.open(newline="") as src, out.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        assert reader.fieldnames is not None
        writer = csv.DictWriter(dst, fieldnames=reader.fieldnames)
        writer.writeheader()
        for row in reader:
            for key in ("interval_start_utc", "interval_end_utc"):
                stamp = dt.datetime.strptime(row[key], "%Y-%m-%dT%H:%M:%SZ") + shift
                row[key] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
            writer.writerow(row)
    return out


def _shifted_greenbutton(tmp_path: Path, shift_s: int) -> Path:
    """The bundled Green Button file with every <start> moved by `shift_s` seconds."""
    text = re.sub(r"<start>(\d+)</start>", lambda m: f"<start>{int(m[1]) + shift_s}</start>",
                  COASTAL.read_text())
    out = tmp_path / "coastal_shifted.xml"
    out.write_text(text)
    return out


# ------------------------------------------------------------------------- the one formatter


def test_local_time_names_the_zone_and_shows_seconds_only_when_there_are_some() -> None:
    assert local_time(_at(2024, 5, 1), LA) == "2024-05-01 00:00 PDT"
    assert local_time(_at(2024, 1, 15, 9, 30), LA) == "2024-01-15 09:30 PST"
    assert local_time(_at(2024, 1, 15, 9, 30, 7), LA) == "2024-01-15 09:30:07 PST"
    assert local_time(_at(2024, 1, 15, 9, 30, 7) + 0.25, LA) == "2024-01-15 09:30:07.250 PST"
    assert local_time(_at(2024, 3, 1, 8, tz=dt.UTC), dt.UTC) == "2024-03-01 08:00 UTC"


def test_local_span_repeats_only_what_changes() -> None:
    start = _at(2011, 3, 1)
    assert local_span(start, start + 3600, LA) == "2011-03-01 00:00 to 01:00 PST"
    # 2024-03-10 02:00 PST does not exist: 01:00 PST + 1 h is 03:00 PDT.
    spring = _at(2024, 3, 10, 1)
    assert local_span(spring, spring + 3600, LA) == "2024-03-10 01:00 PST to 03:00 PDT"
    night = _at(2024, 3, 31, 23)
    assert local_span(night, night + 3600, LA) == "2024-03-31 23:00 PDT to 2024-04-01 00:00 PDT"


# --------------------------------------------------------------------- errors that name times


def test_an_unpriced_deviation_is_named_in_the_tariffs_local_time() -> None:
    tariff = default_tariff()
    start, _ = tariff.month_window(2011, 3)
    metered = [UsageInterval(start, 3600, 0.5), UsageInterval(start + 3600, 3600, 0.5)]
    position = [UsageInterval(start, 3600, 0.4), UsageInterval(start + 3600, 3600, 0.5)]
    with pytest.raises(SettlementError) as err:
        settle(metered, position, price_grid(start, start + 7200, tz=tariff.tz), TenderConfig(), tz=tariff.tz)
    text = str(err.value)
    assert f"+0.1000 kWh to settle in {local_span(start, start + 3600, tariff.tz)} but no" in text
    assert not EPOCH.search(text)


def test_bill_of_a_month_without_prices_says_where_and_how_to_get_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # March 2011 is the Green Button file's own month; the bundled prices are March 2024's.
    assert run(["bill", "--site", "coastal", "--month", "2011-03", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    start, end = default_tariff().month_window(2011, 3)
    hours = (end - start) // 3600
    assert f"kWh to settle in {local_span(start, start + 3600, LA)} but no real-time" in err
    assert f"{hours} intervals in all, {hours:,.1f} h between {local_time(start, LA)} and " \
           f"{local_time(end, LA)}" in err
    assert "--da-prices" in err and "cover 2024-03 only" in err
    assert not EPOCH.search(err)


def test_a_window_that_is_not_whole_hours_is_named_in_local_time() -> None:
    tariff = default_tariff()
    sub = subscribe("coastal", load_usage(COASTAL), tariff)
    start = _at(2024, 3, 1, 0, 1)
    with pytest.raises(SubscriptionError, match="whole UTC hours") as err:
        sub.quantities(start, start + 7200)
    assert local_span(start, start + 7200, LA) in str(err.value)
    assert not EPOCH.search(str(err.value))


def test_a_backwards_price_window_is_named_in_utc() -> None:
    dam = default_prices("DAM")
    with pytest.raises(ValueError, match="before it starts") as err:
        prices_between(dam, dam[1].start, dam[0].start)
    assert f"({local_time(dam[0].start, dt.UTC)}) before it starts ({local_time(dam[1].start, dt.UTC)})" \
        in str(err.value)


def test_market_messages_name_local_times() -> None:
    dam = prices_between(default_prices("DAM"), _at(2024, 3, 15), _at(2024, 3, 15, 2))
    with pytest.raises(ValueError, match="given for a RTM tender") as err:
        build_tenders("site-1", "feeder-a", dam, "RTM", _at(2024, 3, 14), TenderConfig(), 60)
    assert f"DAM price at {local_time(dam[0].start, LA)}" in str(err.value)

    now = _at(2024, 3, 14, 12)
    tender = build_tenders("site-1", "feeder-a", dam[:1], "DAM", now, TenderConfig(), 600)[0]
    book = TenderBook()
    book.offer(tender)
    late = tender["expirationTime"] + 2.5
    with pytest.raises(TransactionRefused) as refused:
        book.check(tender["tenderId"], "site-1", 1.0, late)
    assert refused.value.reason == REFUSE_EXPIRED
    assert refused.value.detail.endswith(f"expired at {local_time(tender['expirationTime'], LA)}, "
                                         f"now is {local_time(late, LA)}")
    assert not EPOCH.search(refused.value.detail.replace(tender["tenderId"], ""))  # the id may hold one


def test_oasis_overlap_is_named_in_local_time() -> None:
    pd = pytest.importorskip("pandas")
    from tendril_transactive.cloud.market.sources import PriceSourceError, frame_to_intervals

    first, second = default_prices("DAM")[:2]
    starts = [pd.Timestamp(first.start, unit="s", tz="UTC")] * 2  # the same hour twice
    frame = pd.DataFrame({"Interval Start": starts, "Interval End": [s + pd.Timedelta(hours=1) for s in starts],
                          "Location": ["TH_SP15_GEN-APND"] * 2,
                          "LMP": [first.lmp_usd_per_mwh, second.lmp_usd_per_mwh]})
    with pytest.raises(PriceSourceError, match="overlap") as err:
        frame_to_intervals(frame, "DAM", "TH_SP15_GEN-APND")
    assert f"intervals at {local_time(first.start, LA)} and {local_time(first.start, LA)}" in str(err.value)


# ------------------------------------------------------------------------------- --month


def test_a_month_out_of_range_is_not_called_a_shape_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["bill", "--site", "coastal", "--month", "2031-13"])
    err = capsys.readouterr().err
    assert "month 13 is not 01-12" in err and "YYYY-MM" not in err
    with pytest.raises(SystemExit):
        run(["bill", "--site", "coastal", "--month", "2031-1"])
    err = capsys.readouterr().err
    assert "must be YYYY-MM, got '2031-1'" in err and "01-12" not in err


# ------------------------------------------------------------------- what the bill priced at


def test_a_month_without_5_minute_prices_says_it_was_priced_day_ahead(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    da = _shifted_dam(tmp_path, YEAR)
    start, end = default_tariff().month_window(2025, 3)
    hours = len(prices_between(bill_cli.load_caiso_csv(da), start, end))
    assert hours == (end - start) // 3600  # the shifted rows cover the month, DST day and all
    out = tmp_path / "bills"
    assert run(["bill", "--site", "coastal", "--month", "2025-03", "--da-prices", str(da),
                "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    line = (f"ex-post priced at: CAISO SP-15 day-ahead hourly ({hours} hours); "
            "no real-time 5-minute prices for 2025-03")
    assert line in printed.splitlines()
    assert f"--da-prices {da.name}" in printed
    summary = json.loads((out / "coastal_2025-03.json").read_text())
    assert summary["settlement_intervals_by_market"] == {"DAM": hours}
    assert summary["ex_post_priced_at"] == line
    assert {u["market"]: u["intervals"] for u in summary["ex_post_prices"]} == {"RTM": 0, "DAM": hours}


def test_the_bundled_month_names_5_minute_prices_and_the_hourly_ones_in_their_gaps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["bill", "--site", "coastal", "--month", "2024-03", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    start, end = default_tariff().month_window(2024, 3)
    rtm = prices_between(default_prices("RTM"), start, end)
    gap_h = (end - start - sum(p.duration_s for p in rtm)) / 3600
    summary = json.loads((tmp_path / "coastal_2024-03.json").read_text())
    dam_cells = summary["settlement_intervals_by_market"]["DAM"]
    assert (f"ex-post priced at: CAISO SP-15 real-time 5-minute ({len(rtm):,} intervals of 5 min); "
            f"CAISO SP-15 day-ahead hourly in the gaps of the real-time 5-minute prices "
            f"({dam_cells} intervals, {gap_h:,.1f} h)") in printed.splitlines()


def test_the_note_names_the_month_of_history_that_was_replayed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Three days earlier, the file starts in February 2011; its March days are what March replays.
    gb = _shifted_greenbutton(tmp_path, -3 * 86400)
    history = load_usage(gb)
    tariff = default_tariff()
    assert f"{tariff.local(history[0].start):%Y-%m}" == "2011-02"
    assert replay_months(history, tariff, 3) == ["2011-03"]
    assert run(["bill", "--site", "coastal", "--month", "2024-03", "--greenbutton", str(gb),
                "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"metered: {gb.name} days of 2011-03 laid onto 2024-03 by day type" in printed


def test_help_says_what_the_bundled_data_bills_and_how_to_bill_other_months(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["bill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Bundled data bills 2024-03 only" in text
    assert "pass --greenbutton FILE" in text and "--rt-prices / --da-prices" in text
