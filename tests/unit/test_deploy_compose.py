"""deploy/docker-compose.yml: schema-valid, pinned, authenticated, loopback-only, no secrets.

Docker cannot run here, so the file is checked instead: against a JSON schema of the parts of
the Compose specification it uses (written for this test from the spec; unknown keys fail), and
for the properties that matter in production. Where Docker exists, `docker compose config`
is the full check.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dashboards import cli as dashboards_cli
from dashboards.checks import JSON_DIR

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"

_STR_LIST = {"type": "array", "items": {"type": "string"}}
_ENV = {"oneOf": [{"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}},
                  _STR_LIST]}
_DEPENDS = {"oneOf": [_STR_LIST, {"type": "object", "additionalProperties": {
    "type": "object", "properties": {"condition": {"enum": [
        "service_started", "service_healthy", "service_completed_successfully"]}},
    "required": ["condition"], "additionalProperties": False}}]}
SERVICE = {
    "type": "object",
    "properties": {
        "image": {"type": "string"},
        "build": {"type": "object", "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"}},
                  "required": ["context"], "additionalProperties": False},
        "command": {"oneOf": [{"type": "string"}, _STR_LIST]},
        "environment": _ENV,
        "ports": _STR_LIST,
        "volumes": _STR_LIST,
        "depends_on": _DEPENDS,
        "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
        "healthcheck": {"type": "object", "properties": {
            "test": {"oneOf": [{"type": "string"}, _STR_LIST]}, "interval": {"type": "string"},
            "timeout": {"type": "string"}, "retries": {"type": "integer"}}, "additionalProperties": False},
    },
    "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
    "additionalProperties": False,
}
COMPOSE_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
        "services": {"type": "object", "additionalProperties": SERVICE, "minProperties": 1},
        "volumes": {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
    },
    "required": ["services"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_file_matches_the_schema(compose: dict[str, Any]) -> None:
    jsonschema.validate(compose, COMPOSE_SCHEMA)


def test_schema_rejects_a_misspelt_key(compose: dict[str, Any]) -> None:
    broken = {**compose, "services": {**compose["services"], "grafana": {**compose["services"]["grafana"],
                                                                           "enviroment": {}}}}
    with pytest.raises(jsonschema.ValidationError, match="enviroment"):
        jsonschema.validate(broken, COMPOSE_SCHEMA)


def test_the_stack_has_broker_store_grafana_and_tendril(compose: dict[str, Any]) -> None:
    images = {name: svc.get("image", "") for name, svc in compose["services"].items()}
    assert images["mosquitto"].startswith("eclipse-mosquitto:2.")
    assert images["influxdb"].startswith("influxdb:2.")
    assert images["grafana"].startswith("grafana/grafana-oss:")
    assert "ingest" in compose["services"]["tendril-ingest"]["command"]


PINNED = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+(-[\w.-]+)?$")


def test_every_image_is_pinned_to_a_full_version(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert PINNED.match(svc["image"]), f"{name}: image {svc['image']!r} is not pinned to x.y.z"
    base = re.search(r"^FROM (\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert base and re.match(r"python:\d+\.\d+\.\d+-", base.group(1)), "Dockerfile base image not pinned"


def test_published_ports_listen_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} publishes on every interface"


def test_mosquitto_requires_authentication(compose: dict[str, Any]) -> None:
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line.strip() and not line.startswith("#"))
    assert settings["allow_anonymous"].strip() == "false"
    assert settings["password_file"].strip() == "/mosquitto/config/passwd"
    mounts = compose["services"]["mosquitto"]["volumes"]
    assert "./mosquitto/generated/passwd:/mosquitto/config/passwd:ro" in mounts
    assert "./mosquitto/generated/acl:/mosquitto/config/acl:ro" in mounts
    assert not (DEPLOY / "mosquitto" / "passwd").exists(), "a password file must never be committed"


def test_secrets_come_from_the_environment(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        env = svc.get("environment", {})
        for key, value in env.items():
            if re.search(r"PASSWORD|TOKEN|SECRET", key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}: {key} is not taken from the env"


def test_mounted_paths_exist_in_the_repository(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0]
            # made at setup by `tendril device` (secrets and per-site data), never committed
            generated = "/generated/" in source or source.startswith("./registry/")
            if source.startswith(".") and not generated:
                assert (DEPLOY / source).resolve().exists(), f"{name}: {source} does not exist"
    assert (DEPLOY / "../dashboards/json").resolve() == JSON_DIR


def test_grafana_provisioning_files_are_what_export_writes(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    dashboards_cli.register(parser.add_subparsers())
    args = parser.parse_args(["dashboards", "export-provisioning", "--out", str(tmp_path), "--skip-json",
                              "--influx-url", "http://influxdb:8086"])
    assert args.func(args) == 0
    for rel in ("datasources/tendril.yaml", "dashboards/tendril.yaml"):
        committed = DEPLOY / "grafana" / "provisioning" / rel
        assert committed.read_text() == (tmp_path / rel).read_text(), f"regenerate {committed}"
    ds = yaml.safe_load((tmp_path / "datasources/tendril.yaml").read_text())["datasources"][0]
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${INFLUX_TOKEN}"  # expanded by Grafana at start
