"""Price sources: the bundled replay, and live CAISO OASIS through gridstatus on recorded
responses (no network: gridstatus' HTTP fetch is replaced; its parsing all runs)."""

from __future__ import annotations

import io
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tendril_transactive.cloud.market.pricing import StaticFeederRatios, parse_feeder_ratios
from tendril_transactive.cloud.market.sources import OasisPrices, PriceSourceError, ReplayPrices, make_source
from tendril_transactive.cloud.sources.prices import default_prices, prices_between

pytestmark = pytest.mark.unit

RECORDED = Path(__file__).parent / "recorded"
DAY_START = 1710226800  # 2024-03-12T07:00Z = local midnight (PDT)
RT_START = 1710262800  # 2024-03-12T17:00Z


class FakeResponse:
    def __init__(self, csv_name: str) -> None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(csv_name.replace("oasis_", "").upper(), (RECORDED / csv_name).read_text())
        self.content = buf.getvalue()
        self.status_code = 200
        self.headers = {"Content-Disposition": f"attachment; filename={csv_name}.zip;"}


@pytest.fixture()
def oasis(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """Serve the recorded files for the queries gridstatus makes; record each query."""
    gridstatus_caiso: Any = pytest.importorskip("gridstatus.caiso.caiso")
    asked: list[dict[str, str]] = []

    def get(url: str, *args: object, **kwargs: object) -> FakeResponse:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        asked.append(query)
        name = {"PRC_LMP": "oasis_prc_lmp_dam_20240312.csv",
                "PRC_INTVL_LMP": "oasis_prc_intvl_lmp_rtm_20240312T17.csv"}[query["queryname"]]
        return FakeResponse(name)

    monkeypatch.setattr(gridstatus_caiso.requests, "get", get)
    return asked


def test_replay_serves_the_bundled_prices_by_window() -> None:
    got = ReplayPrices().prices("DAM", DAY_START, DAY_START + 86400)
    assert len(got) == 24 and got == prices_between(default_prices("DAM"), DAY_START, DAY_START + 86400)
    assert [p.start for p in ReplayPrices().prices("RTM", RT_START, RT_START + 600)] == [RT_START, RT_START + 300]
    with pytest.raises(ValueError, match="market"):
        ReplayPrices().prices("FMM", 0, 1)


def test_oasis_day_ahead_matches_the_real_prices(oasis: list[dict[str, str]]) -> None:
    source = OasisPrices("TH_SP15_GEN-APND")
    got = source.prices("DAM", DAY_START, DAY_START + 86400)
    expected = prices_between(default_prices("DAM"), DAY_START, DAY_START + 86400)
    assert [(p.start, p.duration_s, p.market) for p in got] == [(p.start, 3600, "DAM") for p in expected]
    assert [p.lmp_usd_per_mwh for p in got] == pytest.approx([p.lmp_usd_per_mwh for p in expected], abs=1e-9)
    (query,) = oasis
    assert (query["queryname"], query["market_run_id"], query["node"]) == ("PRC_LMP", "DAM", "TH_SP15_GEN-APND")
    assert query["startdatetime"].startswith("20240312T07:00")
    assert source.prices("DAM", DAY_START, DAY_START + 86400) == got
    assert len(oasis) == 1  # the second ask came from the cache


def test_oasis_real_time_five_minute(oasis: list[dict[str, str]]) -> None:
    got = OasisPrices().prices("RTM", RT_START, RT_START + 3600)
    expected = prices_between(default_prices("RTM"), RT_START, RT_START + 3600)
    assert len(got) == 12
    assert [(p.start, p.lmp_usd_per_mwh) for p in got] == [(p.start, pytest.approx(p.lmp_usd_per_mwh))
                                                           for p in expected]
    assert oasis[0]["queryname"] == "PRC_INTVL_LMP" and oasis[0]["market_run_id"] == "RTM"


def test_oasis_rows_of_other_nodes_are_no_prices_and_a_failed_fetch_is_an_error(
        oasis: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    assert OasisPrices("TH_NP15_GEN-APND").prices("DAM", DAY_START, DAY_START + 86400) == []
    import gridstatus.caiso.caiso as gc

    def refuse(url: str, *args: object, **kwargs: object) -> object:
        raise ConnectionError("no route to oasis.caiso.com")

    monkeypatch.setattr(gc.requests, "get", refuse)
    # gridstatus logs the connection error and then fails on an empty concat; either way the
    # source raises its own error naming market, node and window, never returns [] silently.
    with pytest.raises(PriceSourceError, match=r"OASIS RTM TH_SP15_GEN-APND \[2024-03-12 17:00"):
        OasisPrices().prices("RTM", RT_START, RT_START + 300)
    with pytest.raises(ValueError, match="node"):
        OasisPrices("TH SP15&x=1")
    with pytest.raises(ValueError, match="replay or caiso-oasis"):
        make_source("nyiso")


def test_static_feeder_ratios_are_the_pricing_seam() -> None:
    pricing = StaticFeederRatios(parse_feeder_ratios(["feeder-b=0.95"]), default=0.1)
    assert pricing.feeder_load_ratio("feeder-b", DAY_START) == 0.95
    assert pricing.feeder_load_ratio("feeder-a", DAY_START) == 0.1
    for bad in ("feeder-b", "feeder-b=x", "Feeder=0.5", "feeder-b=-1", "feeder-b=nan"):
        with pytest.raises(ValueError, match="--feeder-ratio"):
            parse_feeder_ratios([bad])
