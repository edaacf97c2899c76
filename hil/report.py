"""`tendril hil report RECORD`: a readable HTML page from a run's JSON record: outcome, device and
firmware, each step with its measurements and limits, link counters, and a plot of the house's
indoor temperature, the relay output and the tender price over the run (device clock)."""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never a display
import matplotlib.pyplot as plt

from tendril_transactive.hil.record import NOT_CONTACTED, load_record

_COLORS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "ERROR": "#9a6700", "SKIPPED": "#6e7781"}


def plot_trace(trace: list[dict[str, Any]]) -> bytes | None:
    """PNG of temperature, relay and price against device minutes; None when there is no trace."""
    if not trace:
        return None
    t0 = trace[0]["t"]
    minutes = [(s["t"] - t0) / 60.0 for s in trace]
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(9, 6.5))
    axes[0].plot(minutes, [s["t_in_c"] for s in trace], color="#d1242f")
    axes[0].set_ylabel("indoor °C")
    axes[1].step(minutes, [s["relay"] for s in trace], where="post", color="#0969da")
    axes[1].set_ylabel("relay")
    axes[1].set_yticks([0, 1])
    priced = [(m, s["price"]) for m, s in zip(minutes, trace, strict=True) if s.get("price") is not None]
    if priced:
        axes[2].step([p[0] for p in priced], [p[1] for p in priced], where="post", color="#8250df")
    else:
        axes[2].text(0.5, 0.5, "no tender in this run", ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set_ylabel("price $/kWh")
    axes[2].set_xlabel("device time since start of run (min)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _badge(outcome: str) -> str:
    color = _COLORS.get(outcome, "#000")
    return f'<b style="color:{color}">{html.escape(outcome)}</b>'


def _fmt(value: Any) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_html(doc: dict[str, Any]) -> str:
    esc = html.escape
    started = datetime.fromtimestamp(float(doc.get("started_unix", 0)), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = []
    for step in doc["steps"]:
        ms = step.get("measurements", [])
        meas = "<br>".join(
            f"{esc(m['name'])} = {_fmt(m['value'])} {esc(m['unit'])} "
            f"[{_fmt(m['low']) if m['low'] is not None else '-inf'}, "
            f"{_fmt(m['high']) if m['high'] is not None else '+inf'}] {_badge(m['outcome'])}" for m in ms) or "—"
        error = f"<br><code>{esc(step['error'])}</code>" if step.get("error") else ""
        rows.append(f"<tr><td>{esc(step['name'])}</td><td><code>{esc(step['action'])}</code></td>"
                    f"<td>{_badge(step['outcome'])}{error}</td><td>{step['duration_s']:.2f}</td><td>{meas}</td></tr>")
    png = plot_trace(doc.get("trace", []))
    plot = "<p>No plant trace in this record.</p>"
    if png:
        data = base64.b64encode(png).decode()
        plot = f'<img alt="plant temperature, relay and price" src="data:image/png;base64,{data}">'

    link = "".join(f"<tr><td>{esc(side)}</td><td>{esc(', '.join(f'{k}={v}' for k, v in counts.items()))}</td></tr>"
                   for side, counts in doc.get("link", {}).items())
    run_error = f"<p><code>{esc(doc['error'])}</code></p>" if doc.get("error") else ""
    # null: the device never answered, so nothing is known of what it runs
    fw = NOT_CONTACTED if doc.get("fw_version") is None else str(doc["fw_version"])
    ident = NOT_CONTACTED if doc.get("device_id") is None else f"id {doc['device_id']}"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>HIL {esc(doc['scenario'])}: {esc(doc['outcome'])}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{border-bottom:1px solid #ddd;
padding:4px 8px;vertical-align:top;text-align:left}}table{{border-collapse:collapse}}</style></head><body>
<h1>HIL scenario <code>{esc(doc['scenario'])}</code>: {_badge(doc['outcome'])}</h1>
<p>{esc(doc.get('description', ''))}</p>
<table><tr><th>device</th><td>{esc(doc.get('device', ''))} ({esc(ident)})</td></tr>
<tr><th>firmware</th><td>{esc(fw)}</td></tr>
<tr><th>started</th><td>{started}</td></tr><tr><th>duration</th><td>{doc.get('duration_s', 0):.1f} s</td></tr></table>
{run_error}
<h2>Steps</h2>
<table><tr><th>step</th><th>action</th><th>outcome</th><th>s</th><th>measurements [low, high]</th></tr>
{''.join(rows)}</table>
<h2>House, relay and price</h2>
{plot}
<h2>Serial link counters</h2>
<table>{link}</table>
</body></html>
"""


def write_report(record_path: Path, out: Path | None = None) -> Path:
    """Render `record_path` (record.json) to HTML beside it, or at `out`; returns the path written."""
    doc = load_record(record_path)
    target = out or Path(record_path).with_name("report.html")
    target.write_text(render_html(doc))
    return target
