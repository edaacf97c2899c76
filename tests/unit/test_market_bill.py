"""`tendril bill` for a registered site: registry subscription, metered usage from the store's
meter energy register, transactions from a verified ledger; and a tampered ledger refused."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from tendril_transactive.cloud.cli import bill as bill_cli
from tendril_transactive.cloud.devices.registry import Registry, SiteRecord
from tendril_transactive.cloud.ledger import schema
from tendril_transactive.cloud.ledger.chain import Ledger
from tendril_transactive.cloud.market.tenders import LOCAL_TZ
from tendril_transactive.cloud.market.transactions import Transaction

pytestmark = pytest.mark.unit

MARCH = dt.datetime(2024, 3, 1, tzinfo=LOCAL_TZ).timestamp()
HOURS = 72  # three days of meter data


@pytest.fixture()
def setup(tmp_path: Path) -> dict[str, Path | str]:
    registry = tmp_path / "registry"
    Registry(registry).set_site(SiteRecord("site-1", subscription_kwh_by_hour=tuple([0.5] * 24)))
    store = tmp_path / "telemetry.lp"
    # a reading every 15 minutes at 600 W: 0.6 kWh in each hour
    store.write_text("".join(
        f"meter,site=site-1,device=meter-1 energy_wh={1000 + 150 * i:.1f},power_w=600 {int((MARCH + 900 * i) * 1e9)}\n"
        for i in range(HOURS * 4 + 1)))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger(url) as ledger:
        t = int(MARCH) + 10 * 3600
        tx = Transaction("agent-tx-1", f"DAM-{t}-B-0123456789", "site-1", "BUY", t, 3600, 1.0, 0.25, "DAM",
                         t - 86400, "agent-0")
        ledger.append("transaction", "site-1", tx.to_record(), t - 86400)
        ledger.append("settlement", "site-1", {"site": "site-1", "intervalStart": t, "amountUsd": 0.01}, t + 900)
    return {"registry": registry, "store": store, "url": url, "out": tmp_path / "bills"}


def main(argv: list[str]) -> int:
    """`tendril ARGV` with only the bill subcommand registered (the others are not under test)."""
    import argparse

    parser = argparse.ArgumentParser(prog="tendril")
    bill_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def bill(setup: dict[str, Path | str]) -> list[str]:
    return ["bill", "--site", "site-1", "--month", "2024-03", "--registry", str(setup["registry"]),
            "--store-file", str(setup["store"]), "--ledger", str(setup["url"]), "--out", str(setup["out"])]


def test_bill_of_a_registered_site(setup: dict[str, Path | str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(bill(setup)) == 0
    printed = capsys.readouterr().out
    summary = json.loads((Path(setup["out"]) / "site-1_2024-03.json").read_text())
    assert Decimal(summary["metered_kwh"]) == Decimal("43.200")  # 72 h x 0.6 kWh
    assert Decimal(summary["subscribed_kwh"]) == Decimal("371.500")  # 743 h (spring forward) x 0.5
    lines = {line["label"]: line for line in summary["lines"]}
    assert lines["forward buys (accepted tenders)"]["kwh"] == "1.000"
    assert lines["forward buys (accepted tenders)"]["amount_usd"] == "0.25"
    assert "1 forward transactions in the ledger" in printed and "1 intervals, +0.01 $" in printed
    assert "72 hours with data, 671 without" in printed


def test_unknown_site_and_missing_store_are_usage_errors(setup: dict[str, Path | str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = bill(setup)
    assert main([*args[:2], "site-9", *args[3:]]) == 2
    assert "not in the registry" in capsys.readouterr().err
    no_store = [a for a in args if a not in ("--store-file", str(setup["store"]))]
    assert main(no_store) == 2
    assert "--store-file or --influx-url" in capsys.readouterr().err


def test_a_tampered_ledger_is_refused(setup: dict[str, Path | str], capsys: pytest.CaptureFixture[str]) -> None:
    with Ledger(str(setup["url"])) as ledger, ledger.engine.begin() as conn:
        for stmt in [*schema.DROP_GUARDS["sqlite"],
                     "UPDATE ledger_records SET body = replace(body, '\"quantity_kwh\":1.0', "
                     "'\"quantity_kwh\":0.1') WHERE seq = 1"]:
            conn.exec_driver_sql(stmt)
    with Ledger(str(setup["url"])) as ledger:
        assert next(iter(ledger.records())).body["quantity_kwh"] == 0.1  # the edit really happened
    assert main(bill(setup)) == 1
    err = capsys.readouterr().err
    assert "fails verification" in err and "record 1: contents do not match its hash" in err
    assert not (Path(setup["out"]) / "site-1_2024-03.json").exists()  # no bill from a tampered ledger
