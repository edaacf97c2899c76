"""`tendril dashboards`: provision Grafana through its API, or export file-provisioning YAML."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tendril_transactive.cloud.settings import (
    DEFAULT_INFLUX_BUCKET,
    DEFAULT_INFLUX_ORG,
    ENV_INFLUX_BUCKET,
    ENV_INFLUX_ORG,
    ENV_INFLUX_TOKEN,
    ENV_INFLUX_URL,
)
from tendril_transactive.dashboards.checks import JSON_DIR, load_dir, problems

DEFAULT_DASHBOARDS_PATH = "/var/lib/grafana/dashboards/tendril"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dashboards", help="Grafana dashboards: provision through the API or export YAML",
                       description="Tendril's Grafana dashboards (InfluxQL on an InfluxDB datasource).")
    dsub = p.add_subparsers(dest="dashboards_command", metavar="ACTION")
    dsub.required = True

    prov = dsub.add_parser("provision", help="create or update datasource, folder and dashboards (idempotent)")
    prov.add_argument("--grafana", default=None,
                      help="Grafana URL, e.g. http://127.0.0.1:3000; absent: only the DBRP mapping is made "
                           "(for Grafana provisioned from files)")
    prov.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN"),
                      help="Grafana service-account token (env GRAFANA_TOKEN)")
    _influx_args(prov)
    prov.add_argument("--influx-org", default=os.environ.get(ENV_INFLUX_ORG, DEFAULT_INFLUX_ORG),
                      help="InfluxDB 2 org, for the DBRP mapping (env TENDRIL_INFLUX_ORG)")
    prov.add_argument("--influx-bucket", default=os.environ.get(ENV_INFLUX_BUCKET, DEFAULT_INFLUX_BUCKET),
                      help="InfluxDB 2 bucket the InfluxQL database maps to (env TENDRIL_INFLUX_BUCKET)")
    prov.add_argument("--no-dbrp", action="store_true",
                      help="skip the DBRP mapping (InfluxDB 1.x, or 3.x which maps databases itself)")
    prov.add_argument("--dashboards", type=Path, default=JSON_DIR, help="folder of dashboard JSON")
    prov.set_defaults(func=provision_main)

    exp = dsub.add_parser("export-provisioning", help="write Grafana file-provisioning YAML and dashboard JSON")
    exp.add_argument("--out", type=Path, required=True, help="Grafana provisioning folder to write into")
    _influx_args(exp)
    exp.add_argument("--dashboards-path", default=DEFAULT_DASHBOARDS_PATH,
                     help=f"where Grafana will find the dashboard JSON (default {DEFAULT_DASHBOARDS_PATH})")
    exp.add_argument("--dashboards", type=Path, default=JSON_DIR, help="folder of dashboard JSON")
    exp.add_argument("--skip-json", action="store_true",
                     help="write only the YAML (mount the dashboard JSON folder at --dashboards-path yourself)")
    exp.set_defaults(func=export_main)


def _influx_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--influx-url", default=os.environ.get(ENV_INFLUX_URL, "http://influxdb:8086"),
                   help="InfluxDB URL as Grafana reaches it (env TENDRIL_INFLUX_URL)")
    p.add_argument("--influx-database", default="tendril", help="InfluxQL database name (default tendril)")


def _checked_dashboards(folder: Path) -> dict[str, dict[str, object]] | None:
    if not folder.is_dir():
        print(f"tendril dashboards: no dashboard folder {folder}", file=sys.stderr)
        return None
    dashes = load_dir(folder)
    found = [p for d in dashes.values() for p in problems(d)]
    if not dashes or found:
        print("tendril dashboards: refusing invalid dashboards:\n  " + "\n  ".join(found or ["none found"]),
              file=sys.stderr)
        return None
    return dashes


def provision_main(args: argparse.Namespace) -> int:
    from grafana_client.api import GrafanaApi

    from tendril_transactive.dashboards.provision import InfluxTarget, ProvisionError, ensure_dbrp, provision

    if args.grafana and not args.token:
        print("tendril dashboards provision: --token or GRAFANA_TOKEN is required", file=sys.stderr)
        return 2
    if not args.grafana and args.no_dbrp:
        print("tendril dashboards provision: nothing to do (no --grafana and --no-dbrp)", file=sys.stderr)
        return 2
    dashes = _checked_dashboards(args.dashboards)
    if dashes is None:
        return 2
    influx_token = os.environ.get(ENV_INFLUX_TOKEN, "")
    target = InfluxTarget(args.influx_url, args.influx_database, token=influx_token)
    try:
        if not args.no_dbrp:
            if not influx_token:
                print("tendril dashboards provision: TENDRIL_INFLUX_TOKEN is required for the DBRP mapping "
                      "(or pass --no-dbrp)", file=sys.stderr)
                return 2
            state = ensure_dbrp(args.influx_url, influx_token, args.influx_org, args.influx_bucket,
                                args.influx_database)
            print(f"dbrp {args.influx_database}/autogen -> {args.influx_bucket}: {state}")
        if args.grafana:
            print(provision(GrafanaApi.from_url(args.grafana, credential=args.token), target, dashes).render())
    except (ProvisionError, OSError) as exc:
        print(f"tendril dashboards provision: {exc}", file=sys.stderr)
        return 1
    return 0


def export_main(args: argparse.Namespace) -> int:
    from tendril_transactive.dashboards.provision import InfluxTarget, provisioning_files

    dashes = _checked_dashboards(args.dashboards)
    if dashes is None:
        return 2
    out: Path = args.out
    for rel, text in provisioning_files(InfluxTarget(args.influx_url, args.influx_database),
                                        args.dashboards_path).items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if args.skip_json:
        return 0
    json_out = out / "dashboards" / "tendril"
    json_out.mkdir(parents=True, exist_ok=True)
    for name in dashes:
        shutil.copyfile(args.dashboards / name, json_out / name)
    print(f"wrote {len(dashes)} dashboards to {json_out} (mount it at {args.dashboards_path})")
    return 0
