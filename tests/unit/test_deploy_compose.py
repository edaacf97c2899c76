"""deploy/docker-compose.yml: schema-valid, pinned, authenticated, TLS to the broker, only the
broker's TLS port published beyond loopback, no secrets.

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
from cryptography import x509

from tendril_transactive.cloud.cli import device as device_cli
from tendril_transactive.cloud.devices import broker_tls
from tendril_transactive.cloud.settings import ENV_MQTT_CA, BrokerAddress, parse_broker
from tendril_transactive.dashboards import cli as dashboards_cli
from tendril_transactive.dashboards.checks import JSON_DIR

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
# where the Tendril services find the broker's CA: the registry's copy, mounted read-only
CA_IN_CONTAINER = f"/registry/{broker_tls.CA_CERT}"

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
    assert _pinned(images["postgres"]) and images["postgres"].startswith("postgres:")


def _flag(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def test_postgres_holds_the_ledger_unpublished_with_a_volume(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    assert all(port.startswith("127.0.0.1:") for port in pg.get("ports", []))
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert any(v.split(":")[0] in compose["volumes"] and v.endswith(":/var/lib/postgresql/data")
               for v in pg["volumes"]), "the ledger database must live on a named volume"
    assert "pg_isready" in pg["healthcheck"]["test"]


def test_market_runs_against_broker_registry_and_postgres_ledger(compose: dict[str, Any]) -> None:
    market = compose["services"]["tendril-market"]
    cmd = market["command"]
    assert cmd[:2] == ["tendril", "market"]
    assert _flag(cmd, "--registry") == "/registry"
    assert _flag(cmd, "--username") == "tendril-market"
    state = _flag(cmd, "--state-dir")
    assert any(v.split(":")[0] in compose["volumes"] and v.split(":")[1] == state for v in market["volumes"])
    # the ledger URL holds the database password: from the environment only, never in argv or here
    assert "--ledger" not in cmd
    assert market["environment"]["TENDRIL_LEDGER_URL"].startswith("${TENDRIL_LEDGER_URL:?")
    assert compose["services"]["tendril-market"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    # the market needs the sites, never the device keys
    assert not any("secrets" in v for v in market["volumes"]), "the market must not see the registry's secrets"


def test_agent_gets_the_device_keys_read_only(compose: dict[str, Any]) -> None:
    agent = compose["services"]["tendril-agent"]
    cmd = agent["command"]
    assert cmd[:2] == ["tendril", "agent"]
    assert _flag(cmd, "--registry") == "/registry"
    assert _flag(cmd, "--username") == "tendril-agent"
    assert int(_flag(cmd, "--workers")) >= 1
    state = _flag(cmd, "--state-dir")
    assert any(v.split(":")[0] in compose["volumes"] and v.split(":")[1] == state for v in agent["volumes"])
    assert "./registry/secrets:/registry/secrets:ro" in agent["volumes"]
    assert agent["environment"]["TENDRIL_MQTT_PASSWORD"].startswith("${TENDRIL_AGENT_MQTT_PASSWORD:?")


def test_only_the_agent_sees_the_registry_secrets(compose: dict[str, Any]) -> None:
    seeing = {name for name, svc in compose["services"].items()
              if any("secrets" in v.split(":")[0] for v in svc.get("volumes", []))}
    assert seeing == {"tendril-agent"}
    for name, svc in compose["services"].items():
        for mount in svc.get("volumes", []):
            if mount.startswith("./registry") or "/generated/" in mount:
                assert mount.endswith(":ro"), f"{name}: {mount} must be mounted read-only"


def test_each_service_has_its_own_broker_password(compose: dict[str, Any]) -> None:
    env_vars = {name: svc["environment"]["TENDRIL_MQTT_PASSWORD"] for name, svc in compose["services"].items()
                if "TENDRIL_MQTT_PASSWORD" in svc.get("environment", {})}
    assert set(env_vars) == {"tendril-ingest", "tendril-market", "tendril-agent"}
    assert len(set(env_vars.values())) == 3, "ingest, market and agent are distinct broker users"


PINNED = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+(-[\w.-]+)?$")
# PostgreSQL numbers releases major.minor since 10 (15.10 is a full version); pin the OS too
PINNED_POSTGRES = re.compile(r"^postgres:\d+\.\d+-[a-z]+$")


def _pinned(image: str) -> bool:
    return bool(PINNED.match(image) or PINNED_POSTGRES.match(image))


def test_every_image_is_pinned_to_a_full_version(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert _pinned(svc["image"]), f"{name}: image {svc['image']!r} is not pinned to x.y.z"
    base = re.search(r"^FROM (\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert base and re.match(r"python:\d+\.\d+\.\d+-", base.group(1)), "Dockerfile base image not pinned"


def test_the_pin_rule_refuses_floating_tags() -> None:
    # floating versions, and a PostgreSQL tag without its OS (the base image would move)
    for floating in ("postgres:15", "postgres:latest", "postgres:15.10", "influxdb:2.7", "grafana/grafana-oss"):
        assert not _pinned(floating), floating


def test_dockerfile_copies_what_the_install_needs() -> None:
    copied = {word for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")
              for word in line.split()[1:-1]}
    # pyproject's build hook (hatch_build.py) is loaded even by `pip install -e .`
    for needed in ("pyproject.toml", "hatch_build.py", "tendril_transactive", "cloud", "edge", "hil", "dashboards",
                   "firmware", "data"):
        assert needed in copied, f"Dockerfile does not COPY {needed}"


# Compose's short port syntax: [IP:][HOST:]CONTAINER[/PROTO] (ranges allowed, IPv6 in brackets)
_PORT = re.compile(r"^(?:(?P<ip>\[[^\]]+\]|[\d.]+):)?(?:(?P<host>\d+(?:-\d+)?):)?(?P<container>\d+(?:-\d+)?)"
                   r"(?:/(?:tcp|udp))?$")


def _port_refusal(service: str, spec: str, tls_port: str) -> str | None:
    """Why `spec` may not be published by `service` (None: it may). Only the broker's TLS
    listener may be reachable beyond this host (the devices in the field dial it); everything
    else publishes on 127.0.0.1 or not at all."""
    match = _PORT.match(spec)
    if match is None:
        return f"{spec}: not a port mapping this test understands"
    if match["ip"] == "127.0.0.1":
        return None
    if service == "mosquitto" and match["container"] == tls_port:
        return None
    return f"{spec} publishes beyond 127.0.0.1 and is not the broker's TLS listener"


def test_the_port_rule_allows_only_the_broker_tls_port_beyond_loopback() -> None:
    for service, spec in (("mosquitto", "8883:8883"), ("mosquitto", "0.0.0.0:8883:8883"),
                          ("mosquitto", "[::]:8883:8883/tcp"), ("grafana", "127.0.0.1:3000:3000"),
                          ("influxdb", "127.0.0.1:8086:8086")):
        assert _port_refusal(service, spec, "8883") is None, (service, spec)
    # cleartext MQTT, another service on every interface, another service on the TLS port's
    # number, the public port mapped to the broker's cleartext port, a range, junk
    for service, spec in (("mosquitto", "1883:1883"), ("mosquitto", "0.0.0.0:1883:1883"), ("mosquitto", "1883"),
                          ("grafana", "3000:3000"), ("influxdb", "8883:8883"), ("mosquitto", "8883:1883"),
                          ("mosquitto", "8000-9000:8000-9000"), ("postgres", "5432"), ("mosquitto", "localhost:8883")):
        assert _port_refusal(service, spec, "8883") is not None, (service, spec)


def test_only_the_broker_tls_port_is_published_beyond_loopback(compose: dict[str, Any]) -> None:
    tls_port = _tls_listener_port()
    for name, svc in compose["services"].items():
        for spec in svc.get("ports", []):
            refusal = _port_refusal(name, spec, tls_port)
            assert refusal is None, f"{name}: {refusal}"
    # and the devices can reach it: published on every interface, on its own number
    assert compose["services"]["mosquitto"]["ports"] == [f"{tls_port}:{tls_port}"]


def _conf_lines(text: str) -> list[tuple[str, str]]:
    pairs = [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [(key, rest.strip()) for key, rest in pairs]


def _conf(text: str) -> dict[str, str]:
    lines = _conf_lines(text)
    keys = [key for key, _ in lines]
    # a second listener (or plugin) would vanish in a dict: say so instead
    assert len(keys) == len(set(keys)), f"repeated directives: {sorted({k for k in keys if keys.count(k) > 1})}"
    return dict(lines)


def _tls_listener_port() -> str:
    listeners = [value for key, value in _conf_lines(MOSQUITTO_CONF.read_text()) if key == "listener"]
    assert len(listeners) == 1, f"the compose broker has exactly one listener (TLS), not {listeners}"
    return listeners[0]


def test_the_broker_listens_only_with_tls_on_the_container_interfaces(compose: dict[str, Any]) -> None:
    settings = _conf(MOSQUITTO_CONF.read_text())
    # no address: every interface of the container, which the other services and the published
    # port reach (127.0.0.1 there would be the container's own loopback, reachable by nothing)
    assert _tls_listener_port() == "8883"
    mounts = compose["services"]["mosquitto"]["volumes"]
    for key, name in (("cafile", broker_tls.OUT_CA), ("certfile", broker_tls.OUT_CERT),
                      ("keyfile", broker_tls.OUT_KEY)):
        # the file mosquitto-config writes into --out, mounted read-only where the conf reads it
        assert settings[key] == f"/mosquitto/config/{name}", key
        assert f"./mosquitto/generated/{name}:{settings[key]}:ro" in mounts, f"{name} is not mounted"
    assert settings["tls_version"] == "tlsv1.2"
    for name in (broker_tls.OUT_CERT, broker_tls.OUT_KEY, broker_tls.OUT_CA):
        assert not (DEPLOY / "mosquitto" / name).exists(), f"{name} must never be committed"


def test_tendril_services_dial_the_broker_over_tls_with_the_registry_ca(compose: dict[str, Any]) -> None:
    tls_port = int(_tls_listener_port())
    dialing = {name: svc for name, svc in compose["services"].items() if "--broker" in svc.get("command", [])}
    assert set(dialing) == {"tendril-ingest", "tendril-market", "tendril-agent"}
    for name, svc in dialing.items():
        # the compose service name is the host name in the server certificate (README step 3)
        assert parse_broker(_flag(svc["command"], "--broker")) == BrokerAddress("mosquitto", tls_port, True), name
        # the agent has no --ca-file: it and its workers read the CA from the environment
        assert svc["environment"][ENV_MQTT_CA] == CA_IN_CONTAINER, name
        assert f"./registry/{broker_tls.CA_CERT}:{CA_IN_CONTAINER}:ro" in svc["volumes"], name


def test_mosquitto_requires_authentication(compose: dict[str, Any]) -> None:
    settings = _conf(MOSQUITTO_CONF.read_text())
    assert settings["allow_anonymous"].strip() == "false"
    # rights from the dynamic-security plugin: acl_file grants every SUBSCRIBE (docs/security.md)
    assert settings["plugin"].strip() == "/usr/lib/mosquitto_dynamic_security.so"  # eclipse-mosquitto image
    assert settings["plugin_opt_config_file"].strip() == "/mosquitto/config/dynamic-security.json"
    assert "acl_file" not in settings and "password_file" not in settings
    mounts = compose["services"]["mosquitto"]["volumes"]
    assert "./mosquitto/generated/dynamic-security.json:/mosquitto/config/dynamic-security.json:ro" in mounts
    for name in ("passwd", "dynamic-security.json"):
        assert not (DEPLOY / "mosquitto" / name).exists(), f"a {name} must never be committed"


def test_mosquitto_conf_follows_what_the_generator_writes(tmp_path: Path) -> None:
    """The compose broker config is the generated one (README step 3) with the container's paths:
    the same directives, TLS included, and a server certificate for the names clients dial."""
    from tendril_transactive.cloud.devices.registry import Registry

    reg = Registry(tmp_path / "reg")
    reg.add("site-1", "meter", "meter")
    parser = argparse.ArgumentParser()
    device_cli.register(parser.add_subparsers())
    args = parser.parse_args(["device", "--registry", str(tmp_path / "reg"), "mosquitto-config",
                              "--out", str(tmp_path / "gen"), "--broker-user", "root",
                              "--persistence-dir", str(tmp_path / "data"),
                              "--dynsec-plugin", "/usr/lib/mosquitto_dynamic_security.so",
                              "--tls-hostname", "mosquitto", "--tls-hostname", "broker.example.net"])
    assert args.func(args) == 0
    generated = _conf((tmp_path / "gen" / "mosquitto.conf").read_text())
    ours = _conf(MOSQUITTO_CONF.read_text())
    # the image runs as mosquitto (no `user`); the container logs to stdout for `docker compose logs`
    assert set(generated) - {"user"} == set(ours) - {"log_dest"}
    # host-specific: the listener's address (its port is compared), paths, the user to drop to
    host_only = {"listener", "cafile", "certfile", "keyfile", "plugin_opt_config_file", "persistence_location",
                 "user"}
    for key in set(generated) - host_only:
        assert ours[key] == generated[key], f"deploy mosquitto.conf: {key} differs"
    assert generated["listener"].split()[0] == ours["listener"], "the TLS port differs"
    for key in ("cafile", "certfile", "keyfile"):  # the same files, at the container's path
        assert Path(generated[key]).name == Path(ours[key]).name, key
    # the CA the services mount (the registry's) is the one the broker presents
    assert (tmp_path / "reg" / broker_tls.CA_CERT).read_bytes() == Path(generated["cafile"]).read_bytes()
    cert = x509.load_pem_x509_certificate(Path(generated["certfile"]).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mosquitto", "broker.example.net"]


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


def test_no_service_mounts_the_ca_key(compose: dict[str, Any]) -> None:
    """The CA key signs server and device certificates: no container gets it, the agent's secrets
    mount included (the key lives in the registry's ca-private/, not in secrets/)."""
    key = Path("./registry") / broker_tls.CA_KEY
    assert not broker_tls.CA_KEY.startswith("secrets/")
    for name, svc in compose["services"].items():
        for mount in svc.get("volumes", []):
            source = Path(mount.split(":")[0])
            assert not (key == source or source in key.parents), f"{name} mounts {mount}, which holds the CA key"


def test_an_older_registrys_ca_key_moves_out_of_secrets(tmp_path: Path) -> None:
    import datetime

    now = datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)
    first = broker_tls.registry_ca(tmp_path, now)
    (tmp_path / "secrets").mkdir(mode=0o700)
    (tmp_path / broker_tls.CA_KEY).rename(tmp_path / "secrets" / "mqtt-ca.key")  # as registries kept it
    again = broker_tls.registry_ca(tmp_path, now)
    assert again == first, "the same CA: the devices keep trusting it"
    assert not (tmp_path / "secrets" / "mqtt-ca.key").exists()
    assert (tmp_path / broker_tls.CA_KEY).stat().st_mode & 0o777 == 0o600
