"""Settlement and bills read meters back over InfluxQL (InfluxDB 1.x here; 2.x through DBRP, 3.x)."""

from __future__ import annotations

import pytest

from tendril_transactive.cloud.market.meters import InfluxQLMeterReader, VictoriaMeterReader, meter_reader
from tendril_transactive.hil.servers import InfluxDB1, VictoriaMetrics

pytestmark = pytest.mark.integration

DB = "tendril"
T0 = 1710486000


def test_influxql_reader_returns_each_meters_register_in_time_order(influxdb1: InfluxDB1) -> None:
    influxdb1.query(f"CREATE DATABASE {DB}", post=True)
    lines = [f"meter,device=meter,site=s1 power_w=100.0,energy_wh={1000 + 10 * i}.0 {(T0 + 60 * i) * 10**9}"
             for i in range(10)]
    lines += [f"meter,device=sub,site=s1 power_w=1.0,energy_wh=5.0 {T0 * 10**9}",
              f"meter,device=meter,site=s2 power_w=1.0,energy_wh=7.0 {T0 * 10**9}",  # another site
              f"relay,device=pump,site=s1 relay=1i,load_w=1500.0 {T0 * 10**9}"]  # not a meter
    influxdb1.write(DB, lines[::-1])  # out of order on purpose
    reader = meter_reader(influxdb1.url, DB)
    assert isinstance(reader, InfluxQLMeterReader)
    got = reader.readings("s1", T0 + 60, T0 + 300)
    assert got == {"meter": [(float(T0 + 60 * i), 1000.0 + 10 * i) for i in range(1, 6)]}
    assert set(reader.readings("s1", T0, T0 + 600)) == {"meter", "sub"}
    assert reader.readings("s3", T0, T0 + 600) == {}


def test_victoria_metrics_is_read_through_its_export_api(victoria: VictoriaMetrics) -> None:
    assert isinstance(meter_reader(victoria.url, DB), VictoriaMeterReader)
