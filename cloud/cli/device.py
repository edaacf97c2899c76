"""`tendril device ...`: register devices, generate their broker credentials and ACLs, deploy firmware."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import sys
from pathlib import Path

from tendril_transactive.cloud.devices import broker_conf, broker_tls, ha_discovery
from tendril_transactive.cloud.devices import deploy as device_deploy
from tendril_transactive.cloud.devices.dynsec import dynsec_json
from tendril_transactive.cloud.devices.mosquitto import (
    AGENT_ROLE,
    SERVICE_ROLES,
    ServiceUser,
    acl_text,
    agent_sites,
    check_identities,
    device_client_id,
    ingest_users,
    password_text,
)
from tendril_transactive.cloud.devices.registry import (
    DEFAULT_AGENT,
    DEFAULT_FEEDER,
    RELAY_LOADS,
    Registry,
    RegistryError,
    SiteRecord,
)
from tendril_transactive.cloud.devices.tls_certs import CertError
from tendril_transactive.cloud.settings import (
    ENV_MQTT_PASSWORD,
    MQTTS_PORT,
    BrokerSettings,
    UsageError,
    add_tls_options,
    registry_dir,
    tls_args,
)
from tendril_transactive.edge.firmware_process import MpyCrossNotFound

DEFAULT_ROOT = registry_dir()
SERVICES_FILE = "secrets/_services.json"
DEFAULT_INGEST_WORKERS = 8
PLAIN_BIND = "127.0.0.1"  # cleartext only where no one else's traffic passes (--plain-listener)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("device", help="register devices; per-device MQTT credentials and ACLs; deploy firmware",
                       description="Manage the device registry (devices.json plus a 0600 secrets file per "
                                   "device) and generate Mosquitto password and ACL files from it.")
    p.add_argument("--registry", type=Path, default=DEFAULT_ROOT,
                   help=f"registry folder (env TENDRIL_REGISTRY, default {DEFAULT_ROOT})")
    dsub = p.add_subparsers(dest="device_command", metavar="ACTION")
    dsub.required = True

    add = dsub.add_parser("add", help="register a device and create its HMAC key and MQTT password",
                          description="Register a device; prints its firmware config secrets once.")
    add.add_argument("--site", required=True, help="site id ([a-z0-9_-], at most 32 characters)")
    add.add_argument("--device", required=True, help="device id, unique within the site")
    add.add_argument("--type", required=True, choices=("meter", "relay"), help="device type")
    add.add_argument("--load", choices=RELAY_LOADS,
                     help="relays: what it switches (the agent plans it with that device model)")
    add.add_argument("--rating-w", type=float, help="the largest power in W the device can report")
    add.set_defaults(func=_add)

    site = dsub.add_parser("site", help="set a site's feeder, agent and load settings",
                           description="Add or replace a site's record: the feeder it hangs off (its tenders' "
                                       "distribution adder), the agent that answers its tenders and commands its "
                                       "relays, and the settings of its loads for the agent's optimizer, a JSON "
                                       "object with sections hvac, pump, ev, battery, pv (see deploy/README.md).")
    site.add_argument("--site", required=True, help="site id")
    site.add_argument("--feeder", default=DEFAULT_FEEDER, help=f"feeder id (default {DEFAULT_FEEDER})")
    site.add_argument("--agent", default=DEFAULT_AGENT, help=f"agent MQTT user (default {DEFAULT_AGENT})")
    site.add_argument("--settings", type=Path, help="JSON file of the site's load settings")
    site.set_defaults(func=_site)

    ls = dsub.add_parser("list", help="list registered devices (no secrets)", description="List devices.")
    ls.set_defaults(func=_list)

    rm = dsub.add_parser("remove", help="remove a device and delete its secrets", description="Remove a device.")
    rm.add_argument("--site", required=True, help="site id")
    rm.add_argument("--device", required=True, help="device id")
    rm.set_defaults(func=_remove)

    dep = dsub.add_parser("deploy", help="copy the firmware and the device's config to a board with mpremote",
                          description="Compile the firmware library to .mpy (mpy-cross), build the device's "
                                      "config.json from the registry and --settings, and copy both plus the "
                                      "board's board.py and main.py to the board on --port with mpremote.")
    dep.add_argument("--site", required=True, help="site id")
    dep.add_argument("--device", required=True, help="device id")
    dep.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0")
    dep.add_argument("--board", choices=device_deploy.BOARDS, default="esp32",
                     help="board layer (default esp32); only esp32_bench gets the bench_* modules")
    dep.add_argument("--settings", type=Path,
                     help="JSON object of the device's other config keys: broker_host, broker_port, timers, "
                          "and `board` (wifi_ssid, wifi_password, pins); keep it out of the repository")
    dep.add_argument("--broker-host", help="MQTT broker the device connects to (overrides --settings)")
    dep.add_argument("--broker-port", type=int, help="its port (overrides --settings)")
    dep.add_argument("--build", type=Path, help="folder for the compiled files (default build/deploy/SITE.DEVICE)")
    dep.add_argument("--dry-run", action="store_true", help="check the config and print the mpremote command lines")
    dep.add_argument("--resume", action="store_true",
                     help="no soft reset on connect (mpremote resume); for the unix port's REPL")
    dep.add_argument("--no-reset", action="store_true", help="leave the board in the REPL instead of resetting it")
    dep.add_argument("--timeout", type=float, default=300.0, help="seconds each mpremote command may take")
    dep.set_defaults(func=_deploy)

    conf = dsub.add_parser("mosquitto-config", help="write the broker's users, rights and mosquitto.conf",
                           description="Write dynamic-security.json (the default: rights checked on subscribe, "
                                       "client ids bound to users), passwd and acl (for --auth file) and "
                                       "mosquitto.conf for every registered device, every site's agent user and "
                                       "the cloud's ingest, market, dispatch and homeassistant users (created on "
                                       "first use; passwords in the registry's secrets/_services.json). The files "
                                       "are made readable by the broker's group (0640); see docs/security.md.")
    conf.add_argument("--out", type=Path, required=True, help="folder for the generated files")
    conf.add_argument("--tls-port", type=int, default=MQTTS_PORT,
                      help="TLS listener port (default %(default)s; 0: none, needs --plain-listener)")
    conf.add_argument("--bind", default="127.0.0.1", help="TLS listener address (default 127.0.0.1)")
    conf.add_argument("--plain-listener", action="store_true",
                      help="also listen in cleartext on 127.0.0.1:--port (loopback only: same-host tools)")
    conf.add_argument("--port", type=int, default=1883, help="the cleartext listener's port (default 1883)")
    conf.add_argument("--tls-hostname", action="append", default=[], metavar="NAME",
                      help="a host name or address clients dial, put in the server certificate "
                           "(repeatable; default: this host's names, localhost, 127.0.0.1, --bind)")
    conf.add_argument("--ca-cert", type=Path, help="your own CA certificate (PEM) instead of the registry's CA")
    conf.add_argument("--server-cert", type=Path, help="your own server certificate (PEM), issued by --ca-cert")
    conf.add_argument("--server-key", type=Path, help="its private key (PEM, unencrypted)")
    conf.add_argument("--require-client-cert", action="store_true",
                      help="mutual TLS: clients must also show a certificate from the CA (`tendril device "
                           "client-cert`); passwords and rights stay as they are")
    conf.add_argument("--auth", choices=("dynsec", "file"), default="dynsec",
                      help="dynsec: the dynamic-security plugin (default); file: password_file + acl_file, which "
                           "cannot refuse a subscription (docs/security.md)")
    conf.add_argument("--persistence-dir", type=Path, default=Path("/var/lib/mosquitto"),
                      help="where the broker saves sessions and queued messages (default %(default)s)")
    conf.add_argument("--outage-minutes", type=float, default=broker_conf.DEFAULT_OUTAGE_MINUTES,
                      help="ingestion outage the broker's queues must bridge for the whole fleet "
                           "(default %(default)s)")
    conf.add_argument("--ingest-workers", type=int, default=DEFAULT_INGEST_WORKERS,
                      help="ingest worker users tendril-ingest-0..N-1, one per `tendril ingest --workers` "
                           "process (default %(default)s)")
    conf.add_argument("--broker-user", default=broker_conf.BROKER_USER,
                      help="the user the broker runs as, whose group reads the files (default %(default)s)")
    conf.add_argument("--dynsec-plugin", default="", help="path of mosquitto_dynamic_security.so (default: found)")
    conf.set_defaults(func=_mosquitto_config)

    cc = dsub.add_parser("client-cert", help="mutual TLS: a device's certificate (CN = its client id)",
                         description="Sign a client certificate for a device with the registry's MQTT CA; its "
                                     "CN is the device's MQTT client id. Writes CLIENT_ID.crt and .key (0600).")
    cc.add_argument("--site", required=True, help="site id")
    cc.add_argument("--device", required=True, help="device id")
    cc.add_argument("--out", type=Path, required=True, help="folder for the certificate and key")
    cc.set_defaults(func=_client_cert)

    ha = dsub.add_parser("ha-discovery", help="publish Home Assistant MQTT discovery configs for every device",
                         description="Publish (retained, QoS 1) a Home Assistant discovery config per reading of "
                                     "every registered device: meter power and energy, relay state and load, "
                                     "read from the devices' own topics and available while they are online. "
                                     "Read-only: relay commands need the cloud's signature. With the ACLs of "
                                     "`mosquitto-config`, publish and run HA as the tendril-homeassistant user.")
    ha.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL (default %(default)s)")
    ha.add_argument("--username", help=f"MQTT user; the password comes from ${ENV_MQTT_PASSWORD}")
    add_tls_options(ha)
    ha.add_argument("--remove", action="store_true", help="clear the configs instead (HA drops the entities)")
    ha.add_argument("--dry-run", action="store_true", help="print topics and payloads, publish nothing")
    ha.set_defaults(func=_ha_discovery)


def _fail(message: str) -> int:
    print(f"tendril device: {message}", file=sys.stderr)
    return 2


def _add(args: argparse.Namespace) -> int:
    try:
        made = Registry(args.registry).add(args.site, args.device, args.type, args.load, args.rating_w)
    except RegistryError as exc:
        return _fail(str(exc))
    # Printed once, for the device's config.json; afterwards only in the 0600 file.
    print(json.dumps({"site": args.site, "device": args.device, "type": args.type, "key_hex": made.key_hex,
                      "username": f"{args.site}.{args.device}", "password": made.mqtt_password}, indent=2))
    return 0


def _site(args: argparse.Namespace) -> int:
    settings: object = {}
    if args.settings is not None:
        try:
            settings = json.loads(args.settings.read_text())
        except (OSError, ValueError) as exc:
            return _fail(f"{args.settings}: not a readable JSON file ({exc})")
    try:
        record = SiteRecord(args.site, args.feeder, args.agent, settings)  # type: ignore[arg-type]
        Registry(args.registry).set_site(record)
    except RegistryError as exc:
        return _fail(str(exc))
    print(json.dumps(record.to_json(), indent=2))
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        devices = Registry(args.registry).devices
    except RegistryError as exc:
        return _fail(str(exc))
    for d in devices:
        print(f"{d.site:<20} {d.device:<20} {d.type:<6} {d.load or ''}")
    print(f"{len(devices)} device(s) in {args.registry}", file=sys.stderr)
    return 0


def _remove(args: argparse.Namespace) -> int:
    try:
        Registry(args.registry).remove(args.site, args.device)
    except RegistryError as exc:
        return _fail(str(exc))
    return 0


def _deploy(args: argparse.Namespace) -> int:
    try:
        settings = device_deploy.read_settings(args.settings)
        if args.broker_host is not None:
            settings["broker_host"] = args.broker_host
        if args.broker_port is not None:
            settings["broker_port"] = args.broker_port
        doc = device_deploy.device_config(Registry(args.registry), args.site, args.device, settings, args.board)
        build: Path = args.build or Path("build", "deploy", f"{args.site}.{args.device}")
        modules = device_deploy.library_sources(args.board)
        try:
            mpremote = device_deploy.find_mpremote()
        except device_deploy.DeployError:
            if not args.dry_run:
                raise
            mpremote = "mpremote"
        commands = device_deploy.mpremote_commands(mpremote, args.port, build.resolve(), modules,
                                                   resume=args.resume, reset=not args.no_reset)
        if args.dry_run:
            print(device_deploy.show(commands))
            return 0
        device_deploy.stage(build, args.board, doc)
        try:
            device_deploy.run(commands, args.timeout)
        finally:
            (build / "config.json").unlink(missing_ok=True)  # the secrets stay in the registry only
    except (device_deploy.DeployError, RegistryError, MpyCrossNotFound) as exc:
        return _fail(str(exc))
    print(f"deployed {args.site}/{args.device} ({doc['type']}, board {args.board}) to {args.port}")
    return 0


def _ha_discovery(args: argparse.Namespace) -> int:
    try:
        broker = BrokerSettings.from_args(args.broker, args.username, **tls_args(args))
        devices = Registry(args.registry).devices
    except (UsageError, RegistryError) as exc:
        return _fail(str(exc))
    messages = ha_discovery.discovery_messages(devices)
    if args.remove:
        messages = [(topic, b"") for topic, _ in messages]
    if args.dry_run:
        for topic, payload in messages:
            print(topic, payload.decode())
        return 0
    try:
        ha_discovery.publish(broker.host, broker.port, messages, broker.username, broker.password, tls=broker.tls)
    except ConnectionError as exc:
        return _fail(str(exc))
    print(f"{'cleared' if args.remove else 'published'} {len(messages)} Home Assistant discovery configs for "
          f"{len(devices)} device(s) on {broker.url}")
    return 0


def service_users(root: Path) -> list[ServiceUser]:
    """The cloud's own MQTT users, created with fresh passwords the first time they are needed:
    one per service role, and one per agent named by a site (SiteRecord.agent), with its sites."""
    path = root / SERVICES_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    agents = agent_sites({s.site: s.agent for s in Registry(root).sites})
    keys = list(SERVICE_ROLES) + [f"{AGENT_ROLE}:{name}" for name in agents]
    missing = [key for key in keys if key not in data]
    if missing:  # a registry made before a role (or a site's agent) existed gets it now
        data.update({key: secrets.token_urlsafe(24) for key in missing})
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
    users = [ServiceUser(f"tendril-{role}", str(data[role]), role) for role in sorted(SERVICE_ROLES)]
    users += [ServiceUser(name, str(data[f"{AGENT_ROLE}:{name}"]), AGENT_ROLE, sites)
              for name, sites in sorted(agents.items())]
    return users


def _tls_listener(args: argparse.Namespace, out: Path) -> tuple[broker_conf.TlsListener | None, list[Path]]:
    """Check the listener options, write the TLS files; (None, []) without a TLS listener."""
    own_given = [x is not None for x in (args.ca_cert, args.server_cert, args.server_key)]
    if any(own_given) and not all(own_given):
        raise UsageError("--ca-cert, --server-cert and --server-key come together")
    if args.tls_port == 0:
        if not args.plain_listener:
            raise UsageError("--tls-port 0 leaves no listener: add --plain-listener (loopback only)")
        if any(own_given) or args.require_client_cert:
            raise UsageError("TLS options given with --tls-port 0")
        return None, []
    if not 0 < args.tls_port < 65536 or (args.plain_listener and args.tls_port == args.port):
        raise UsageError(f"--tls-port must be 1..65535 and differ from --port, got {args.tls_port}")
    own = broker_tls.OwnFiles(args.ca_cert, args.server_cert, args.server_key) if all(own_given) else None
    names = args.tls_hostname or broker_tls.default_hostnames(args.bind)
    now = datetime.datetime.now(datetime.UTC)
    files, names = broker_tls.write_tls_files(args.registry, out, now, names, own)
    print(f"TLS listener {args.bind}:{args.tls_port}; clients verify with {out / broker_tls.OUT_CA} "
          f"(registry copy: {args.registry / broker_tls.CA_CERT}); server certificate for {', '.join(names)}",
          file=sys.stderr)
    ca, cert, key = (str(f.resolve()) for f in files)
    return broker_conf.TlsListener(args.tls_port, args.bind, ca, cert, key, args.require_client_cert), files


def _client_cert(args: argparse.Namespace) -> int:
    try:
        registry = Registry(args.registry)
        if (args.site, args.device) not in registry:
            raise RegistryError(f"no device {args.site}/{args.device} in {args.registry}")
        client_id = device_client_id(next(d for d in registry.site_devices(args.site) if d.device == args.device))
        now = datetime.datetime.now(datetime.UTC)
        cert, key = broker_tls.write_client_cert(args.registry, args.out, now, client_id)
    except (RegistryError, CertError, OSError) as exc:
        return _fail(str(exc))
    print(f"wrote {cert} and {key} (CN {client_id}); give the device both and set tls, ca, client_cert, "
          "client_key in its config (firmware/README.md)")
    return 0


def _mosquitto_config(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        return _fail(f"--port must be 1..65535, got {args.port}")
    if not 0 <= args.ingest_workers <= 64 or not args.outage_minutes > 0:
        return _fail("--ingest-workers must be 0..64 and --outage-minutes > 0")
    try:
        registry = Registry(args.registry)
        devices = [(d, registry.secrets_for(d.site, d.device).mqtt_password) for d in registry.devices]
        services: list[ServiceUser] = []
        for user in service_users(args.registry):
            services += ingest_users(user, args.ingest_workers) if user.role == "ingest" else [user]
        check_identities([d for d, _ in devices], services)
    except (RegistryError, ValueError) as exc:
        return _fail(str(exc))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True, mode=broker_conf.SECRET_DIR_MODE)
    try:
        tls, tls_files = _tls_listener(args, out)
    except (UsageError, CertError) as exc:
        return _fail(str(exc))
    files = {"passwd": password_text(devices, services), "acl": acl_text([d for d, _ in devices], services),
             "dynamic-security.json": dynsec_json(devices, services)}
    queued = broker_conf.queue_size(len(devices), args.outage_minutes)
    files["mosquitto.conf"] = broker_conf.mosquitto_conf(
        args.port, str((out / "passwd").resolve()), str((out / "acl").resolve()), PLAIN_BIND, auth=args.auth,
        dynsec_file=str((out / "dynamic-security.json").resolve()), plugin=args.dynsec_plugin,
        persistence_dir=str(args.persistence_dir.resolve()), max_queued_messages=queued, user=args.broker_user,
        tls=tls, plain=args.plain_listener)
    for name, text in files.items():
        broker_conf.write_private(out / name, text)
    notes = broker_conf.secure(out, [out / name for name in files] + tls_files, args.persistence_dir.resolve(),
                               args.broker_user)
    for note in notes:
        print(f"tendril device: note: {note}", file=sys.stderr)
    print(f"wrote {', '.join(f'{out}/{name}' for name in files)} for {len(devices)} device(s) and "
          f"{len(services)} service user(s); auth {args.auth}; queues hold {queued} messages per ingest "
          f"session = {broker_conf.fleet_minutes(len(devices), queued):.0f} fleet-minutes")
    return 0
