"""`tendril ingest` option handling: URLs, defaults, clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tendril_transactive.cloud.cli.ingest import (
    DEFAULT_STORE_FILE,
    UsageError,
    check_http_url,
    register,
    run_ingest,
)
from tendril_transactive.cloud.settings import parse_broker_url

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("mqtt://broker.example:8883/", ("broker.example", 8883)),
        ("mqtt://localhost", ("localhost", 1883)),
        ("mqtt://[::1]:1884", ("::1", 1884)),
    ],
)
def test_good_broker_urls(url: str, expected: tuple[str, int]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("127.0.0.1:1883", "mqtt://host:port"),
        ("mqtts://h:8883", "TLS"),
        ("mqtt://h:port", "bad port"),
        ("mqtt://h:70000", "bad port"),
        ("mqtt://:1883", "no host"),
        ("mqtt://user:pw@h:1883", "credentials"),
        ("mqtt://h:1883/topic", "only host and port"),
    ],
)
def test_bad_broker_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_broker_url(url)


@pytest.mark.parametrize("url", ["ftp://h", "http://", "h:8086", "http://h:x"])
def test_bad_influx_urls(url: str) -> None:
    with pytest.raises(UsageError, match="influx-url"):
        check_http_url(url)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tendril")
    register(p.add_subparsers(dest="command"))
    return p


def test_defaults() -> None:
    args = parser().parse_args(["ingest"])
    assert args.broker == "mqtt://127.0.0.1:1883"
    assert args.store_file == DEFAULT_STORE_FILE == Path("tendril-data/telemetry.lp")
    assert (args.influx_org, args.influx_bucket, args.batch_max, args.flush_interval) == (
        "tendril",
        "tendril",
        1000,
        0.1,
    )
    assert (args.workers, args.share_group, args.accept_any_device, args.registry) == (1, None, False, None)
    assert args.func is run_ingest


def test_bad_url_is_an_error_exit_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["ingest", "--broker", "tcp://h:1"])
    assert args.func(args) == 2
    assert "error: --broker must look like mqtt://host:port" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option",
    [
        ["--batch-max", "0"],
        ["--flush-interval", "-1"],
        ["--stats-interval", "0"],
        ["--workers", "0"],
        ["--health-interval", "-1"],
        ["--share-group", "a/b"],
        ["--share-group", "#"],
    ],
)
def test_non_positive_tuning_is_refused(option: list[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["ingest", *option])


def test_several_workers_need_a_real_store(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["ingest", "--workers", "2", "--accept-any-device"])
    assert args.func(args) == 2
    assert "--workers > 1 needs --influx-url" in capsys.readouterr().err


def test_a_missing_registry_is_an_error_that_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parser().parse_args(["ingest", "--registry", str(tmp_path / "nowhere")])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "no device registry" in err and "tendril device add" in err and "--accept-any-device" in err


def test_worker_command_lines_carry_every_option_but_no_secret() -> None:
    from tendril_transactive.cloud.ingest.serve import worker_argv

    args = parser().parse_args(
        ["ingest", "--workers", "3", "--influx-url", "http://127.0.0.1:8086", "--password", "pw-secret",
         "--influx-token", "tok-secret", "--registry", "reg", "--no-fsync", "--batch-max", "7"]
    )  # fmt: skip
    argv = worker_argv(args, 2)
    assert "pw-secret" not in argv and "tok-secret" not in argv
    again = parser().parse_args(argv[argv.index("ingest") :])
    assert (again.worker_index, again.workers, again.batch_max, again.no_fsync) == (2, 3, 7, True)
    assert (again.influx_url, str(again.registry)) == ("http://127.0.0.1:8086", "reg")
    assert again.password is None and again.influx_token is None
