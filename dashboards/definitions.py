"""Tendril's operator dashboards, as code.

Every measurement, tag and field name comes from the module that writes it
(cloud.store.line_protocol for device points, cloud.reports.market_lines for prices, tenders, schedules,
settlement and feeders), so a rename there changes the queries here -- and the committed
JSON goes stale, which tests/unit/test_dashboards.py reports.
"""

from __future__ import annotations

from tendril_transactive.cloud.reports import market_lines as mk
from tendril_transactive.cloud.store import line_protocol as lp
from tendril_transactive.dashboards.model import Dashboard, Panel, Target, Variable, match, q, where

T = "$__interval"
SITE_VAR = Variable("site", "Site", f"SHOW TAG VALUES FROM {q(lp.MEASUREMENT_METER)} WITH KEY = {q(lp.TAG_SITE)}")
DEVICE_VAR = Variable(
    "device", "Device",
    f"SHOW TAG VALUES FROM {q(lp.MEASUREMENT_STATE)} WITH KEY = {q(lp.TAG_DEVICE)} WHERE {match(lp.TAG_SITE, 'site')}",
    include_all=True,
)
FEEDER_VAR = Variable("feeder", "Feeder",
                      f"SHOW TAG VALUES FROM {q(mk.MEASUREMENT_FEEDER)} WITH KEY = {q(mk.TAG_FEEDER)}",
                      include_all=True)
SITE = match(lp.TAG_SITE, "site")
DEVICE = match(lp.TAG_DEVICE, "device")
FEEDER = match(mk.TAG_FEEDER, "feeder")


def _by_time(*tags: str, fill: str = "null") -> str:
    return " GROUP BY " + ", ".join([f"time({T})", *(q(t) for t in tags)]) + f" fill({fill})"


def _sel(fn: str, fld: str, measurement: str, conditions: tuple[str, ...], alias: str = "") -> str:
    name = f" AS {q(alias)}" if alias else ""
    return f"SELECT {fn}({q(fld)}){name} FROM {q(measurement)} WHERE {where(*conditions)}"


def fleet_overview() -> Dashboard:
    per_site_kw = (f"SELECT mean({q(lp.FIELD_POWER_W)}) / 1000 AS {q('kw')} FROM {q(lp.MEASUREMENT_METER)} "
                   f"WHERE {where()}{_by_time(lp.TAG_SITE, fill='none')}")
    flex_kw = (f"SELECT mean({q(lp.FIELD_LOAD_W)}) / 1000 AS {q('kw')} FROM {q(lp.MEASUREMENT_RELAY)} "
               f"WHERE {where()}{_by_time(lp.TAG_SITE, lp.TAG_DEVICE, fill='none')}")
    # Status is retained and sent only on change: a device online for a week has no status point
    # in the last hour, so "online now" is the last status ever, not the last in the window.
    online = (f"SELECT last({q(lp.FIELD_ONLINE)}) AS {q('online')} FROM {q(lp.MEASUREMENT_STATUS)} "
              f"GROUP BY {q(lp.TAG_SITE)}, {q(lp.TAG_DEVICE)}")
    return Dashboard(
        "tendril-fleet", "Tendril / Fleet overview", "Every site at a glance: who is online, how much load, how "
        "much of it Tendril can move, and how close each feeder runs to its limit.",
        (
            Panel("Devices online", "stat", (Target(f"SELECT sum({q('online')}) AS {q('online')} FROM ({online})",
                                                    ("online",)),), width=6, height=6,
                  description="Devices whose last status message was 'online' (status is sent on change)."),
            Panel("Total metered load", "timeseries",
                  (Target(f"SELECT sum({q('kw')}) AS {q('total_kw')} FROM ({per_site_kw}) WHERE {where()}"
                          f"{_by_time(fill='none')}", ("total_kw",), alias="total"),),
                  unit="kwatt", width=18, height=6),
            Panel("Metered load by site", "timeseries", (Target(per_site_kw, ("kw",), alias="$tag_site"),),
                  unit="kwatt"),
            Panel("Flexible (relay-switched) load by device", "timeseries",
                  (Target(f"SELECT sum({q('kw')}) AS {q('flex_kw')} FROM ({flex_kw}) WHERE {where()}"
                          f"{_by_time(lp.TAG_DEVICE, fill='none')}", ("flex_kw",), alias="$tag_device"),),
                  unit="kwatt", description="Relay load reported by relay nodes, summed over sites per device."),
            Panel("Feeder forecast load vs limit", "timeseries",
                  (Target(_sel("mean", mk.FIELD_LOAD_RATIO, mk.MEASUREMENT_FEEDER, (FEEDER,), "load_ratio")
                          + _by_time(mk.TAG_FEEDER, fill="previous"), ("load_ratio",), alias="$tag_feeder"),),
                  unit="percentunit", width=24,
                  thresholds=(("green", None), ("orange", 0.8), ("red", 1.0)),
                  description="Forecast feeder load / limit the tenders were priced with; above 80 % the "
                              "distribution adder rises (congestion pricing), 100 % is the limit."),
        ),
        (FEEDER_VAR,),
    )


def site_detail() -> Dashboard:
    sched = (_sel("last", mk.FIELD_PLANNED_RELAY, mk.MEASUREMENT_SCHEDULE,
                  (SITE, f"{q(mk.TAG_PLAN)} = '{mk.PLAN_OPTIMIZED}'"), "scheduled")
             + _by_time(lp.TAG_DEVICE, fill="previous"))
    return Dashboard(
        "tendril-site", "Tendril / Site detail", "One site: its meter, its relays, and what the optimizer "
        "planned against what the relays did.",
        (
            Panel("Meter power", "timeseries",
                  (Target(_sel("mean", lp.FIELD_POWER_W, lp.MEASUREMENT_METER, (SITE,), "power_w")
                          + _by_time(lp.TAG_DEVICE), ("power_w",), alias="$tag_device"),), unit="watt"),
            Panel("Relay state", "state-timeline",
                  (Target(_sel("last", lp.FIELD_RELAY, lp.MEASUREMENT_RELAY, (SITE, DEVICE), "relay")
                          + _by_time(lp.TAG_DEVICE, fill="previous"), ("relay",), alias="$tag_device"),)),
            Panel("Relay load", "timeseries",
                  (Target(_sel("mean", lp.FIELD_LOAD_W, lp.MEASUREMENT_RELAY, (SITE, DEVICE), "load_w")
                          + _by_time(lp.TAG_DEVICE), ("load_w",), alias="$tag_device"),), unit="watt"),
            Panel("Schedule vs actual", "timeseries",
                  (Target(sched, ("scheduled",), alias="scheduled $tag_device"),
                   Target(_sel("mean", lp.FIELD_RELAY, lp.MEASUREMENT_RELAY, (SITE,), "actual")
                          + _by_time(lp.TAG_DEVICE, fill="none"), ("actual",), alias="actual $tag_device")),
                  description="Relay on/off the optimizer scheduled (hourly) against the relay telemetry."),
            Panel("Command acknowledgements", "table",
                  (Target(f"SELECT count({q(lp.FIELD_SEQ)}) AS {q('acks')} FROM {q(lp.MEASUREMENT_ACK)} "
                          f"WHERE {where(SITE)} GROUP BY {q(lp.TAG_DEVICE)}", ("acks",), result_format="table"),
                   Target(f"SELECT count({q(lp.FIELD_SEQ)}) AS {q('accepted')} FROM {q(lp.MEASUREMENT_ACK)} "
                          f"WHERE {where(SITE, q(lp.FIELD_OK) + ' = true')} GROUP BY {q(lp.TAG_DEVICE)}",
                          ("accepted",), result_format="table")),
                  width=24, height=6, description="Acks per device, and how many accepted the command."),
        ),
        (SITE_VAR, DEVICE_VAR),
    )


def prices_and_tenders() -> Dashboard:
    return Dashboard(
        "tendril-prices", "Tendril / Prices and tenders", "CAISO LMPs and the retail buy/sell tenders each "
        "site was offered (day-ahead hourly, real-time 5-minute).",
        (
            Panel("CAISO LMP", "timeseries",
                  (Target(_sel("mean", mk.FIELD_LMP, mk.MEASUREMENT_LMP, (), "lmp")
                          + _by_time(mk.TAG_MARKET, fill="none"), ("lmp",), alias="$tag_market"),),
                  unit="currencyUSD", width=24, description="$/MWh at the pricing node."),
            Panel("Tenders offered to the site", "timeseries",
                  (Target(_sel("mean", mk.FIELD_PRICE, mk.MEASUREMENT_TENDER, (SITE,), "price")
                          + _by_time(mk.TAG_MARKET, mk.TAG_SIDE, fill="none"), ("price",),
                          alias="$tag_market $tag_side"),),
                  unit="currencyUSD", width=24, description="$/kWh: buy = LMP x (1+loss) + adders; sell = buy - "
                                                            "spread."),
            Panel("Buy tender by feeder", "timeseries",
                  (Target(_sel("mean", mk.FIELD_PRICE, mk.MEASUREMENT_TENDER, (FEEDER, f"{q(mk.TAG_SIDE)} = 'BUY'"),
                               "buy") + _by_time(mk.TAG_FEEDER, mk.TAG_MARKET, fill="none"), ("buy",),
                          alias="$tag_feeder $tag_market"),),
                  unit="currencyUSD", width=24, description="A congested feeder pays a higher distribution adder."),
        ),
        (SITE_VAR, FEEDER_VAR),
    )


def settlement() -> Dashboard:
    hourly = (f"SELECT sum({q(mk.FIELD_COST_USD)}) AS {q('shadow_usd')}, sum({q(mk.FIELD_OAT_USD)}) AS "
              f"{q('oat_usd')} FROM {q(mk.MEASUREMENT_SETTLEMENT)} WHERE {where(SITE)} GROUP BY time(1h) fill(none)")
    bills = (f"SELECT last({q(mk.FIELD_SHADOW_USD)}) AS {q('shadow_usd')}, last({q(mk.FIELD_OAT_USD)}) AS "
             f"{q('oat_usd')}, last({q(mk.FIELD_REBATE_USD)}) AS {q('rebate_usd')} FROM {q(mk.MEASUREMENT_BILL)} "
             f"WHERE {where()} GROUP BY {q(lp.TAG_SITE)}")
    return Dashboard(
        "tendril-settlement", "Tendril / Settlement", "What each site's energy cost at the tenders (shadow bill) "
        "against its otherwise applicable tariff, and the rebate that keeps it from paying more.",
        (
            Panel("Hourly cost: shadow vs OAT", "timeseries", (Target(hourly, ("shadow_usd", "oat_usd")),),
                  unit="currencyUSD"),
            Panel("Hourly energy", "timeseries",
                  (Target(f"SELECT sum({q(mk.FIELD_ENERGY_KWH)}) AS {q('kwh')} FROM {q(mk.MEASUREMENT_SETTLEMENT)} "
                          f"WHERE {where(SITE)} GROUP BY time(1h) fill(none)", ("kwh",)),), unit="kwatth"),
            Panel("Bills by site", "table", (Target(bills, ("shadow_usd", "oat_usd", "rebate_usd"),
                                                    result_format="table"),),
                  unit="currencyUSD", width=24, description="Rebate = max(0, OAT bill - shadow bill)."),
        ),
        (SITE_VAR,),
    )


def device_health() -> Dashboard:
    def health(fn: str, fld: str, title: str, unit: str = "short", desc: str = "") -> Panel:
        return Panel(title, "timeseries",
                     (Target(_sel(fn, fld, lp.MEASUREMENT_STATE, (SITE, DEVICE), fld)
                             + _by_time(lp.TAG_DEVICE, fill="none"), (fld,), alias="$tag_device"),),
                     unit=unit, width=8, description=desc)

    return Dashboard(
        "tendril-devices", "Tendril / Device health", "Firmware health reported by each node.",
        (
            Panel("Status now", "table",
                  (Target(f"SELECT last({q(lp.FIELD_ONLINE)}) AS {q('online')} FROM {q(lp.MEASUREMENT_STATUS)} "
                          f"WHERE {SITE} AND {DEVICE} GROUP BY {q(lp.TAG_DEVICE)}", ("online",),
                          result_format="table"),),
                  width=8, height=6, description="Last status each device announced (1 online, 0 offline); "
                                                 "status is sent on change, so this ignores the time range."),
            Panel("Health reports", "timeseries",
                  (Target(_sel("count", lp.FIELD_SEQ, lp.MEASUREMENT_STATE, (SITE, DEVICE), "reports")
                          + _by_time(lp.TAG_DEVICE, fill="0"), ("reports",), alias="$tag_device"),),
                  width=16, height=6, description="State messages per interval: a silent device shows 0."),
            health("max", lp.FIELD_RECONNECTS, "Reconnects", desc="MQTT reconnects since boot."),
            health("max", lp.FIELD_QUEUE, "Queue depth", desc="Messages waiting in store-and-forward."),
            health("max", lp.FIELD_DROPPED, "Dropped", desc="Messages the node had to drop."),
            health("min", lp.FIELD_FREE_HEAP, "Free heap", unit="bytes"),
            health("last", lp.FIELD_UPTIME_S, "Uptime", unit="s"),
            Panel("Firmware", "table",
                  (Target(f"SELECT last({q(lp.FIELD_FW)}) AS {q('fw')}, last({q(lp.FIELD_BOOT)}) AS {q('boot')} "
                          f"FROM {q(lp.MEASUREMENT_STATE)} WHERE {where(SITE, DEVICE)} GROUP BY {q(lp.TAG_DEVICE)}",
                          ("fw", "boot"), result_format="table"),), width=8),
        ),
        (SITE_VAR, DEVICE_VAR),
    )


def ingestion_health() -> Dashboard:
    stored = [(lp.MEASUREMENT_METER, "meter"), (lp.MEASUREMENT_RELAY, "relay"), (lp.MEASUREMENT_STATE, "state")]
    return Dashboard(
        "tendril-ingestion", "Tendril / Ingestion health", "What reached the store, per minute and per kind.",
        (
            Panel("Points stored per minute", "timeseries",
                  tuple(Target(f"SELECT count({q(lp.FIELD_SEQ)}) AS {q(col)} FROM {q(m)} WHERE {where()} "
                               f"GROUP BY time(1m) fill(0)", (col,), alias=col) for m, col in stored),
                  width=24, description="Stored device messages by kind (device timestamp)."),
            Panel("Command acks per minute", "timeseries",
                  (Target(f"SELECT count({q(lp.FIELD_SEQ)}) AS {q('acks')} FROM {q(lp.MEASUREMENT_ACK)} "
                          f"WHERE {where()} GROUP BY time(1m) fill(none)", ("acks",)),),
                  width=24),
        ),
    )


def all_dashboards() -> list[Dashboard]:
    return [fleet_overview(), site_detail(), prices_and_tenders(), settlement(), device_health(),
            ingestion_health()]
