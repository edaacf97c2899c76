# Node configuration: the JSON object a board loads (config.json on flash, or the file
# named by TENDRIL_FW_CONFIG on the unix port), checked once at boot with clear errors.

import binascii
import json

import tendril_wire as tw

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

REQUIRED = ("site", "device", "type", "broker_host", "broker_port", "key_hex")

# Optional keys and their defaults. Durations in *_s are device seconds except
# keepalive_s, ack_timeout_s and reconnect_max_s, which are real (network) seconds.
DEFAULTS = {
    "telemetry_s": 10.0,
    "state_s": 60.0,
    "sample_s": None,  # meter sampling period; None = once per telemetry
    "keepalive_s": 30,
    "ack_timeout_s": 5.0,
    "reconnect_max_s": 30.0,
    "queue_max": 2048,  # telemetry records held while offline (RAM + flash)
    "ram_queue_max": 32,  # of which in RAM; the rest goes to flash when state_dir is set
    "replay_per_s": 5.0,  # backlog records per real second after an outage
    "state_dir": None,  # flash directory for the outbox and seq counters; None = RAM only
    "wdt_s": 0,  # watchdog timeout, real seconds; 0 = no watchdog
    "max_switches_per_hour": 0,  # relay; 0 = no limit
    "override_file": None,  # unix board: the local button ("0", "1", absent = released)
    "link_file": None,  # unix board: the Wi-Fi link ("down" = cut), for benches and tests
    "power_file": None,
    "relay_file": None,
    "relay_load_w": 0.0,
    "min_on_s": 0.0,
    "min_off_s": 0.0,
    "safe_default": 0,
    "fw_version": "0.0.0",
    "username": None,
    "password": None,
    "board": {},  # board-specific settings (Wi-Fi, pins), checked by the board itself
    # MQTT over TLS (tendril_fw/tlsconf.py): `ca` is a PEM file on flash or the PEM text itself;
    # the broker's certificate must name `server_hostname` (default broker_host).
    "tls": False,
    "ca": None,
    "server_hostname": None,
    "client_cert": None,  # mutual TLS: this device's certificate and key (PEM file or text)
    "client_key": None,
}  # type: dict[str, Any]

_NUMBERS = ("telemetry_s", "state_s", "ack_timeout_s", "reconnect_max_s", "relay_load_w",
            "min_on_s", "min_off_s", "replay_per_s", "wdt_s")
_POSITIVE = ("telemetry_s", "state_s", "ack_timeout_s", "reconnect_max_s", "replay_per_s")
_INTS = ("broker_port", "keepalive_s", "queue_max", "ram_queue_max", "safe_default", "max_switches_per_hour")
_STRINGS = ("broker_host", "key_hex", "fw_version")


class ConfigError(ValueError):
    pass


def _is_num(value):
    # type: (Any) -> bool
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse(raw):
    # type: (Any) -> dict[str, Any]
    """Checked config with defaults filled in and `key` (bytes) decoded from key_hex."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    for name in raw:
        if name not in REQUIRED and name not in DEFAULTS:
            raise ConfigError("unknown config key %r" % (name,))
    for name in REQUIRED:
        if name not in raw:
            raise ConfigError("missing config key %r" % (name,))
    cfg = dict(DEFAULTS)
    cfg.update(raw)
    for name in _NUMBERS:
        if not _is_num(cfg[name]) or cfg[name] < 0:
            raise ConfigError("%s must be a number >= 0, got %r" % (name, cfg[name]))
    for name in _POSITIVE:
        if not cfg[name] > 0:
            raise ConfigError("%s must be > 0" % name)
    for name in _INTS:
        if not isinstance(cfg[name], int) or isinstance(cfg[name], bool) or cfg[name] < 0:
            raise ConfigError("%s must be an integer >= 0, got %r" % (name, cfg[name]))
    for name in _STRINGS:
        if not isinstance(cfg[name], str) or not cfg[name]:
            raise ConfigError("%s must be a non-empty string" % name)
    try:
        tw.check_id(cfg["site"], "site")
        tw.check_id(cfg["device"], "device")
    except tw.ContractError as exc:
        raise ConfigError("bad site/device id: %s" % exc)
    if cfg["type"] not in tw.DEVICE_TYPES:
        raise ConfigError("type must be one of %r" % (tw.DEVICE_TYPES,))
    if cfg["safe_default"] not in (0, 1):
        raise ConfigError("safe_default must be 0 or 1")
    if cfg["sample_s"] is not None and (not _is_num(cfg["sample_s"]) or cfg["sample_s"] <= 0):
        raise ConfigError("sample_s must be a number > 0")
    if cfg["keepalive_s"] > 65535 or not 0 < cfg["broker_port"] < 65536 or cfg["queue_max"] < 1:
        raise ConfigError("keepalive_s, broker_port or queue_max out of range")
    for name in ("state_dir", "override_file", "link_file"):
        if cfg[name] is not None and (not isinstance(cfg[name], str) or not cfg[name]):
            raise ConfigError("%s must be a non-empty string or null" % name)
    if cfg["ram_queue_max"] < 1:
        raise ConfigError("ram_queue_max must be >= 1")
    if not isinstance(cfg["board"], dict):
        raise ConfigError("board must be a JSON object")
    if cfg["tls"] not in (True, False):
        raise ConfigError("tls must be true or false")
    for name in ("ca", "server_hostname", "client_cert", "client_key"):
        if cfg[name] is not None and (not isinstance(cfg[name], str) or not cfg[name]):
            raise ConfigError("%s must be a non-empty string or null" % name)
    if cfg["tls"] and cfg["ca"] is None:
        raise ConfigError("tls needs ca: the board has no CA store, and an unverified broker is no TLS")
    if (cfg["client_cert"] is None) != (cfg["client_key"] is None):
        raise ConfigError("client_cert and client_key come together")
    try:
        cfg["key"] = binascii.unhexlify(cfg["key_hex"])
    except ValueError:
        raise ConfigError("key_hex is not hexadecimal")
    if len(cfg["key"]) < 16:
        raise ConfigError("key must be at least 16 bytes")
    return cfg


def load(path):
    # type: (str) -> dict[str, Any]
    """Read and check the config file at `path`; ConfigError says what is wrong with it."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as exc:
        raise ConfigError("cannot read config %s: %r" % (path, exc))
    except ValueError as exc:
        raise ConfigError("config %s is not JSON: %r" % (path, exc))
    return parse(raw)


def parse_clock(value):
    # type: (str | None) -> tuple[float, float, float]
    """TENDRIL_CLOCK of the host boards: (real_origin, sim_origin, speed); wall clock when unset."""
    if not value:
        return 0.0, 0.0, 1.0
    try:
        real_origin, sim_origin, speed = [float(part) for part in value.split(",")]
    except ValueError:
        raise ConfigError("TENDRIL_CLOCK must be 'real_origin,sim_origin,speed', got %r" % value)
    if not speed > 0:
        raise ConfigError("TENDRIL_CLOCK speed must be > 0")
    return real_origin, sim_origin, speed
