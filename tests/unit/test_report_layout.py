"""report.html's layout (issue 14, item 8): the summary once, the bills legend clear of the bars,
price lines drawn to the end of the window."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
import pytest

from tendril_transactive.cloud.demo.ledger_summary import SiteMarket
from tendril_transactive.cloud.demo.report import LOCAL, bills_figure, prices_figure, render_html
from tendril_transactive.cloud.demo.summary import DemoSummary, SiteResult
from tendril_transactive.cloud.market.tenders import TenderConfig
from tendril_transactive.cloud.reports.market_lines import SitePlan, lmp_lines, tender_lines
from tendril_transactive.cloud.sources.prices import default_prices, prices_between
from tendril_transactive.cloud.store.line_protocol import LinePoint, format_line, seconds_to_ns
from tendril_transactive.cloud.store.sinks import EmbeddedStore

pytestmark = pytest.mark.unit

START = 1710486000.0  # 2024-03-15 00:00 America/Los_Angeles, the demo's default day
END = START + 24 * 3600
PLAN = SitePlan("site-1", "feeder-a", 0.55, "pump", 1.5, [0] * 24)


SECOND = 1 / 86400  # matplotlib dates count days; pytest.approx's default 1e-6 of them is ~30 min


def _num(t: float) -> float:
    date2num: Any = mdates.date2num
    return float(date2num(datetime.fromtimestamp(t, LOCAL)))


def test_the_summary_appears_once(tmp_path: Path) -> None:
    summary = DemoSummary(24.0, 80.0, 9938, 0, 600, 700, 690, 0, 12, 12,
                          [SiteResult(f"site-{i}", 1440, 20.0, 4.0, 6.0, 4) for i in (1, 2, 3)])
    page = render_html(summary, [], "note")
    text = summary.render()
    # Each site's row and each headline figure as often as the summary itself has them (once).
    for needle in ("site-2", "site-3", "9938", "messages ingested"):
        assert page.count(needle) == text.count(needle) == 1, needle


def _bills(values: list[tuple[float, float]]) -> EmbeddedStore:
    store = EmbeddedStore()
    store.add_lines(format_line(LinePoint("bill", {"site": f"site-{i + 1}", "feeder": "feeder-a"},
                                          {"oat_usd": oat, "shadow_usd": shadow,
                                           "rebate_usd": max(0.0, oat - shadow)}, seconds_to_ns(END)))
                    for i, (oat, shadow) in enumerate(values))
    return store


@pytest.mark.parametrize("values", [
    [(6.0, 5.0), (6.0, 5.0), (6.0, 5.0)],  # even bills: no free corner inside the axes
    [(2.3, 2.0), (1.4, 1.3), (2.6, 2.1)],
    [(0.9, 0.8), (3.1, 2.2), (2.9, 2.5)],
])
def test_the_bills_legend_covers_no_bar(values: list[tuple[float, float]]) -> None:
    fig = bills_figure(_bills(values))
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None
    box = legend.get_window_extent()
    assert len(ax.patches) == 3 * len(values)
    covered = [i for i, bar in enumerate(ax.patches) if bar.get_window_extent().overlaps(box)]
    assert covered == []


def test_price_lines_reach_the_end_of_the_day() -> None:
    store = EmbeddedStore()
    da = prices_between(default_prices("DAM"), START, END)
    rt = prices_between(default_prices("RTM"), START, END)
    assert (len(da), len(rt)) == (24, 288)  # the last hour starts at 23:00, the last 5 minutes at 23:55
    store.add_lines(lmp_lines([*da, *rt]))
    store.add_lines(tender_lines(PLAN, [*da, *rt], TenderConfig()))
    fig = prices_figure(store, "site-1")
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    expected = {f"{m} {side} tender ($/kWh)" for m in ("RTM", "DAM") for side in ("buy", "sell")}
    expected |= {"RTM LMP ($/MWh)", "DAM LMP ($/MWh)"}
    assert expected <= set(lines)
    for label in expected:
        x = [float(v) for v in lines[label].get_xdata()]
        y = [float(v) for v in lines[label].get_ydata()]
        assert x[0] == pytest.approx(_num(START), rel=0, abs=SECOND), label
        assert x[-1] == pytest.approx(_num(END), rel=0, abs=SECOND), label  # the last interval drawn to 24:00
        assert y[-1] == y[-2], label  # ... at its own price


def test_the_bills_chart_shows_the_ledger_bills_the_summary_prints() -> None:
    """With a market, the chart's bars are the summary table's OAT / shadow / rebate (read from the
    ledger), not the store's at-the-tender estimate: one shadow bill per site in the report."""
    market = [SiteMarket(f"site-{i}", 10, 1, 2.0, 0.5, 0.4, 288, 20.0, 1.5, 0.3, 3.0 + i, 5.0)
              for i in (1, 2, 3)]
    summary = DemoSummary(24.0, 80.0, 9938, 0, 600, 700, 690, 0, 12, 12, market=market)
    store = _bills([(1.0, 0.5), (1.0, 0.5), (1.0, 0.5)])  # different figures: must not be drawn
    ax = bills_figure(store, summary).axes[0]
    heights = [round(bar.get_height(), 6) for bar in ax.patches]
    want = ([m.oat_usd for m in market] + [m.shadow_usd for m in market] + [m.rebate_usd for m in market])
    assert heights == [round(v, 6) for v in want]
    assert "ledger" in ax.get_title()
