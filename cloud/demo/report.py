"""OUT/report.html: what a demo run did, as plots read back from its store.

Everything plotted comes from the store the run wrote (device points from ingestion, market
points from cloud.demo.market), so the report shows what the dashboards would. PNGs are embedded
as base64: the report is one file that opens anywhere.
"""

from __future__ import annotations

import base64
import bisect
import html
import io
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")  # no display: render to memory only
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tendril_transactive.cloud.demo.summary import DemoSummary
from tendril_transactive.cloud.reports import market_lines as mk
from tendril_transactive.cloud.store.line_protocol import (
    FIELD_LOAD_W,
    FIELD_POWER_W,
    FIELD_RELAY,
    MEASUREMENT_METER,
    MEASUREMENT_RELAY,
    TAG_SITE,
)
from tendril_transactive.cloud.store.sinks import EmbeddedStore, StoredPoint

LOCAL = ZoneInfo("America/Los_Angeles")
GRID_S = 60
REPORT_NAME = "report.html"
Series = list[tuple[float, float]]


class ReportError(ValueError):
    """The store lacks what the report plots; the message names what is missing."""


def _series(points: Sequence[StoredPoint], field: str) -> Series:
    return [(p.ts_ns / 1e9, float(p.fields[field])) for p in points if field in p.fields]


def _step_to_end(series: Series, points: Sequence[StoredPoint]) -> Series:
    """`series` with its last value repeated where its last interval ends.

    A post-step plot draws each value from its own time to the next sample's, so the last
    interval (the day-ahead 23:00-24:00 hour) would not be drawn at all. Its end is the point's
    `duration_s` where stored (tenders); LMP points carry none, so the series' own spacing.
    """
    if not series:
        return series
    t, v = series[-1]
    last = points[-1].fields.get(mk.FIELD_DURATION_S) if points else None
    if isinstance(last, int | float) and not isinstance(last, bool) and last > 0:
        duration = float(last)
    elif len(series) > 1:
        duration = t - series[-2][0]
    else:
        return series
    return [*series, (t + duration, v)]


def _step_at(series: Series, times: Sequence[float]) -> list[float]:
    """Value in force at each time: the last sample at or before it (the first sample before that;
    0 for an empty series)."""
    stamps = [t for t, _ in series]
    out = []
    for t in times:
        i = bisect.bisect_right(stamps, t) - 1
        out.append(series[max(i, 0)][1] if series else 0.0)
    return out


def _grid(start: float, end: float) -> list[float]:
    return [start + i * GRID_S for i in range(int((end - start) // GRID_S) + 1)]


def _local(times: Sequence[float]) -> Any:
    """Matplotlib date numbers for unix times (shown on the local clock by `_time_axis`)."""
    date2num: Any = mdates.date2num  # unannotated in matplotlib
    return date2num([datetime.fromtimestamp(t, LOCAL) for t in times])


def _time_axis(fig: Figure, *axes: Axes) -> None:
    for ax in axes:
        ax.xaxis_date(tz=LOCAL)
        formatter: Any = mdates.DateFormatter
        ax.xaxis.set_major_formatter(formatter("%m-%d %H:%M", tz=LOCAL))
    fig.autofmt_xdate()


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _require(store: EmbeddedStore, measurement: str) -> list[StoredPoint]:
    points = store.points(measurement)
    if not points:
        raise ReportError(f"the store has no {measurement!r} points; the report needs them "
                          f"(market points come from cloud.demo.market.demo_market_lines)")
    return points


def _pump(store: EmbeddedStore, site: str) -> list[StoredPoint]:
    """The pool pump's relay telemetry: the relay the report sets against a fixed timer."""
    return [p for p in store.points(MEASUREMENT_RELAY, site=site) if p.tags.get("device") == "pump"]


def prices_figure(store: EmbeddedStore, site: str) -> Figure:
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for market in ("RTM", "DAM"):
        for side, style in (("BUY", "-"), ("SELL", "--")):
            pts = [p for p in store.points(mk.MEASUREMENT_TENDER, site=site)
                   if p.tags.get(mk.TAG_MARKET) == market and p.tags.get(mk.TAG_SIDE) == side]
            s = _step_to_end(_series(pts, mk.FIELD_PRICE), pts)
            if s:
                ax.step(_local([t for t, _ in s]), [v for _, v in s], style, where="post",
                        label=f"{market} {side.lower()} tender ($/kWh)")
    ax.set_ylabel("$/kWh")
    lmp_ax = ax.twinx()
    for market, color in (("RTM", "0.55"), ("DAM", "0.2")):
        pts = [p for p in store.points(mk.MEASUREMENT_LMP) if p.tags.get(mk.TAG_MARKET) == market]
        s = _step_to_end(_series(pts, mk.FIELD_LMP), pts)
        if s:
            lmp_ax.step(_local([t for t, _ in s]), [v for _, v in s], color=color, lw=0.8, where="post",
                        label=f"{market} LMP ($/MWh)")
    lmp_ax.set_ylabel("LMP $/MWh")
    lines = ax.get_legend_handles_labels()
    lmp_lines = lmp_ax.get_legend_handles_labels()
    ax.legend(lines[0] + lmp_lines[0], lines[1] + lmp_lines[1], fontsize=7, loc="upper left", ncol=3,
              bbox_to_anchor=(0.0, -0.28))
    ax.set_title(f"CAISO prices and the tenders offered to {site}")
    _time_axis(fig, ax)
    return fig


def fleet_load(store: EmbeddedStore, sites: Sequence[str], times: Sequence[float]) -> tuple[list[float], list[float]]:
    """(optimized kW, baseline kW) on `times`: metered load, and metered load with the relay load
    the optimizer placed swapped for the timer baseline's."""
    optimized = [0.0] * len(times)
    baseline = [0.0] * len(times)
    for site in sites:
        meter = _step_at(_series(store.points(MEASUREMENT_METER, site=site), FIELD_POWER_W), times)
        relay = _step_at(_series(_pump(store, site), FIELD_LOAD_W), times)
        base_plan = [p for p in store.points(mk.MEASUREMENT_SCHEDULE, site=site)
                     if p.tags.get(mk.TAG_PLAN) == mk.PLAN_BASELINE]
        timer_kw = _step_at(_series(base_plan, mk.FIELD_PLANNED_KW), times)
        for i in range(len(times)):
            optimized[i] += meter[i] / 1000.0
            # Meter and relay report at different instants, so around a switch the difference can
            # dip below zero for a sample; a house never exports through a pump.
            baseline[i] += max(0.0, meter[i] - relay[i]) / 1000.0 + timer_kw[i]
    return optimized, baseline


def fleet_figure(store: EmbeddedStore, sites: Sequence[str], start: float, end: float) -> Figure:
    times = _grid(start, end)
    optimized, baseline = fleet_load(store, sites, times)
    fig, ax = plt.subplots(figsize=(10, 3.4))
    x = _local(times)
    ax.plot(x, baseline, color="tab:gray", lw=2.5, ls="--", label="without optimization (pump on a timer)")
    ax.plot(x, optimized, color="tab:green", lw=1.4, label="with Tendril (metered)")
    ax.set_ylabel("fleet kW")
    ax.set_title(f"Fleet load, {len(sites)} sites")
    ax.legend(fontsize=8, loc="upper left")
    _time_axis(fig, ax)
    return fig


def site_figure(store: EmbeddedStore, site: str, start: float, end: float) -> Figure:
    times = _grid(start, end)
    x = _local(times)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.6), sharex=True, height_ratios=(2, 1))
    meter = _series(store.points(MEASUREMENT_METER, site=site), FIELD_POWER_W)
    top.plot(x, [v / 1000.0 for v in _step_at(meter, times)], color="tab:blue", lw=1.0, label="meter kW")
    top.set_ylabel("kW")
    top.legend(fontsize=8, loc="upper left")
    top.set_title(f"{site}: meter and pool pump relay")
    relay = _series(_pump(store, site), FIELD_RELAY)
    planned = _series([p for p in store.points(mk.MEASUREMENT_SCHEDULE, site=site)
                       if p.tags.get(mk.TAG_PLAN) == mk.PLAN_OPTIMIZED], mk.FIELD_PLANNED_RELAY)
    bottom.step(x, _step_at(planned, times), where="post", color="tab:orange", lw=2.5, alpha=0.5,
                label="scheduled")
    bottom.step(x, _step_at(relay, times), where="post", color="black", lw=1.0, label="relay (telemetry)")
    bottom.set_yticks([0, 1], ["off", "on"])
    bottom.set_ylim(-0.2, 1.2)
    bottom.legend(fontsize=8, loc="upper left")
    _time_axis(fig, top, bottom)
    return fig


def bills_figure(store: EmbeddedStore, summary: DemoSummary | None = None) -> Figure:
    """The summary's ledger bills when the run has a market (the figures its table prints, so the
    report does not show two shadow bills for one site); else the store's bill points."""
    if summary is not None and summary.market:
        names = [m.site for m in summary.market]
        oat = [m.oat_usd for m in summary.market]
        shadow = [m.shadow_usd for m in summary.market]
        rebate = [m.rebate_usd for m in summary.market]
        source = "from the ledger"
    else:
        bills = {p.tags[TAG_SITE]: p for p in _require(store, mk.MEASUREMENT_BILL)}
        names = sorted(bills)
        shadow = [float(bills[n].fields[mk.FIELD_SHADOW_USD]) for n in names]
        oat = [float(bills[n].fields[mk.FIELD_OAT_USD]) for n in names]
        rebate = [float(bills[n].fields[mk.FIELD_REBATE_USD]) for n in names]
        source = "metered energy at the buy tender"
    fig, ax = plt.subplots(figsize=(8.5, 3.2))
    idx = range(len(names))
    width = 0.27
    ax.bar([i - width for i in idx], oat, width, label="OAT (time-of-use tariff)", color="tab:gray")
    ax.bar(list(idx), shadow, width, label="shadow bill (tenders)", color="tab:green")
    ax.bar([i + width for i in idx], rebate, width, label="rebate", color="tab:orange")
    ax.set_xticks(list(idx), names)
    ax.set_ylabel("$")
    ax.set_title(f"Bills for the run ({source})")
    # Beside the axes, not inside: when the sites' bills are about even there is no free corner,
    # and "best" put the legend over the last site's bars.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def render_html(summary: DemoSummary, images: Sequence[tuple[str, str]], note: str) -> str:
    figures = "".join(f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" '
                      f'src="data:image/png;base64,{data}">' for title, data in images)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Tendril demo report</title>"
        "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto}img{max-width:100%}</style>"
        "</head><body><h1>Tendril demo report</h1>"
        # The summary once, as the terminal prints it: its per-site table is already in there.
        f"<pre>{html.escape(summary.render())}</pre>{figures}"
        f"<p><small>{html.escape(note)}</small></p></body></html>"
    )


def write_report(out_dir: Path, store: EmbeddedStore, summary: DemoSummary, *, start: float, end: float,
                 site: str | None = None) -> Path:
    """Render OUT/report.html from the run's store; `site` picks the site traced (default: the first)."""
    sites = sorted({p.tags[TAG_SITE] for p in _require(store, MEASUREMENT_METER)})
    for needed in (mk.MEASUREMENT_TENDER, mk.MEASUREMENT_LMP, mk.MEASUREMENT_SCHEDULE, MEASUREMENT_RELAY):
        _require(store, needed)
    traced = site or sites[0]
    if traced not in sites:
        raise ReportError(f"no meter points for site {traced!r}; sites: {', '.join(sites)}")
    images = [
        ("Prices and tenders", _png(prices_figure(store, traced))),
        ("Fleet load with and without optimization", _png(fleet_figure(store, sites, start, end))),
        (f"{traced}: meter and relay", _png(site_figure(store, traced, start, end))),
        ("Bills", _png(bills_figure(store, summary))),
    ]
    note = ("Without optimization = the metered load with each relay's load replaced by the same number of "
            "pump hours run by a timer from the start of the window. The demo's houses have no HVAC model, "
            "so there is no indoor temperature trace.")
    path = out_dir / REPORT_NAME
    path.write_text(render_html(summary, images, note), encoding="utf-8")
    return path
