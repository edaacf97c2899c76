"""One command, `tendril`: every subcommand documents itself and refuses bad arguments clearly."""

from __future__ import annotations

import subprocess

import pytest

from tendril_transactive.cloud import command
from tendril_transactive.cloud.cli.main import ORDER, build_parser, subcommand_modules

pytestmark = pytest.mark.unit


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    choices = action.choices
    assert isinstance(choices, dict)
    return sorted(choices)


def test_every_registered_module_adds_a_subcommand() -> None:
    assert sorted(name for name, _ in subcommand_modules()) == sorted(_subcommands())
    assert set(_subcommands()) <= set(ORDER)
    assert {"demo", "ingest"} <= set(_subcommands())


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"tendril {command}" in out and len(out.splitlines()) > 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--sites", "0"], "--sites must be a whole number > 0"),
        (["demo", "--speed", "fast"], "--speed must be a number > 0"),
        (["nonsense"], "invalid choice"),
        (["market", "--rt-spread-s", "-1"], "--rt-spread-s must be a number >= 0"),
        (["market", "--rt-lead-s", "30", "--rt-spread-s", "30"], "--rt-spread-s (30) must be below --rt-lead-s (30)"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(argv: list[str], message: str) -> None:
    proc = subprocess.run(command.argv(*argv), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_demo_outside_the_bundled_prices_is_a_clear_error() -> None:
    proc = subprocess.run(command.argv("demo", "--start", "2019-01-01", "--hours", "1"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "March 2024" in proc.stderr
