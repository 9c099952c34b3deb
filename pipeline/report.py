"""summary.json and an HTML report of a run.

:func:`summarize` is pure: counts by status, a failure histogram by stage and by error type,
per-stage seconds and throughput. :func:`render_html` makes a self-contained page: a table of
every row with its status and error, and the before|after previews of successful rows.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable

from pipeline import storage
from pipeline.storage import StorageOptions


def _error_type(error: str | None) -> str:
    if not error:
        return "unknown"
    return error.split(":", 1)[0].strip() or "unknown"


def _seconds(row: dict) -> dict:
    value = row.get("stage_seconds") or {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = {}
    return value


def summarize(rows: Iterable[dict], wall_seconds: float, *, run_id: str = "", config_hash: str = "",
              processed_this_run: int | None = None) -> dict:
    """Counts, failure histogram, per-stage seconds and videos/minute of a run.

    ``rows`` are all manifest rows (this run and earlier ones); ``wall_seconds`` is this run's
    wall time; throughput counts the ok rows finished by this run (``run_id``).
    """
    rows = list(rows)
    status = Counter(r.get("status") for r in rows)
    by_stage = Counter(r.get("error_stage") or "unknown" for r in rows if r.get("status") == "error")
    by_type = Counter(_error_type(r.get("error")) for r in rows if r.get("status") == "error")
    stage_totals: dict[str, float] = defaultdict(float)
    stage_counts: Counter = Counter()
    this_run = [r for r in rows if not run_id or r.get("run_id") == run_id]
    for row in this_run:
        for stage, secs in _seconds(row).items():
            stage_totals[stage] += float(secs)
            stage_counts[stage] += 1
    ok_this_run = sum(1 for r in this_run if r.get("status") == "ok")
    minutes = wall_seconds / 60.0
    return {
        "run_id": run_id,
        "config_hash": config_hash,
        "rows": len(rows),
        "counts": {k: status.get(k, 0) for k in ("ok", "error", "skipped")},
        "processed_this_run": len(this_run) if processed_this_run is None else processed_this_run,
        "failures_by_stage": dict(by_stage.most_common()),
        "failures_by_type": dict(by_type.most_common()),
        "stage_seconds": {
            s: {"total": round(t, 3), "mean": round(t / stage_counts[s], 3), "rows": stage_counts[s]}
            for s, t in sorted(stage_totals.items())},
        "wall_seconds": round(wall_seconds, 3),
        "videos_per_minute": round(ok_this_run / minutes, 3) if minutes > 0 else 0.0,
    }


def _relative(url: str | None, base: str) -> str | None:
    """A link usable from report.html: relative when under the output, else the URL itself."""
    if not url:
        return None
    prefix = base.rstrip("/") + "/"
    return url[len(prefix):] if url.startswith(prefix) else url


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #ddd;padding:6px 8px;text-align:left;vertical-align:top}
.ok{color:#17803d;font-weight:600}.error{color:#b42318;font-weight:600}.skipped{color:#777}
.cards{display:flex;flex-wrap:wrap;gap:16px}.card{border:1px solid #ddd;border-radius:6px;padding:8px}
.card img{max-width:520px;display:block}.muted{color:#666;font-size:12px}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
"""


def render_html(rows: list[dict], summary: dict, base_url: str, title: str = "vidflow run") -> str:
    """A self-contained HTML page for a run (links relative to ``base_url``)."""
    esc = html.escape
    counts = summary.get("counts", {})
    head = (f"<h1>{esc(title)}</h1><p>{counts.get('ok', 0)} ok, {counts.get('error', 0)} error, "
            f"{counts.get('skipped', 0)} skipped of {summary.get('rows', 0)} rows; "
            f"{summary.get('videos_per_minute', 0)} videos/min; wall {summary.get('wall_seconds', 0)} s; "
            f"config <code>{esc(str(summary.get('config_hash', '')))}</code></p>")
    failures = ""
    if summary.get("failures_by_type"):
        items = "".join(f"<li><code>{esc(k)}</code>: {v}</li>" for k, v in summary["failures_by_type"].items())
        stages = "".join(f"<li>{esc(k)}: {v}</li>" for k, v in summary["failures_by_stage"].items())
        failures = f"<h2>Failures</h2><p>By type:</p><ul>{items}</ul><p>By stage:</p><ul>{stages}</ul>"
    cards = []
    for row in rows:
        if row.get("status") != "ok":
            continue
        previews = []
        if row.get("preview_uri"):
            previews.append(("before | after", row["preview_uri"]))
        outputs = row.get("outputs") or {}
        if isinstance(outputs, str):
            outputs = json.loads(outputs or "{}")
        for name, url in sorted(outputs.items()):
            if str(url).lower().endswith((".gif", ".webp", ".png", ".jpg")):
                previews.append((name, url))
        if not previews:
            continue
        imgs = "".join(f"<div class='muted'>{esc(n)}</div><img loading='lazy' src='{esc(_relative(u, base_url))}'>"
                       for n, u in previews)
        cards.append(f"<div class='card'><b>{esc(str(row.get('video_id')))}</b> "
                     f"<span class='muted'>{esc(str(row.get('method')))} {esc(str(row.get('prompt') or ''))}"
                     f"</span>{imgs}</div>")
    gallery = f"<h2>Results</h2><div class='cards'>{''.join(cards)}</div>" if cards else ""
    body_rows = []
    for row in sorted(rows, key=lambda r: (r.get("status") != "error", str(r.get("video_id")))):
        status = str(row.get("status"))
        out = _relative(row.get("output_uri"), base_url)
        link = f"<a href='{esc(out)}'>video</a>" if out else ""
        body_rows.append(
            f"<tr><td>{esc(str(row.get('video_id')))}</td><td>{esc(str(row.get('method')))}</td>"
            f"<td class='{esc(status)}'>{esc(status)}</td><td>{esc(str(row.get('error_stage') or ''))}</td>"
            f"<td>{esc(str(row.get('error') or ''))}</td><td>{link}</td>"
            f"<td class='muted'>{esc(str(row.get('job_id')))}</td></tr>")
    table = ("<h2>Rows</h2><table><tr><th>video</th><th>method</th><th>status</th><th>stage</th>"
             f"<th>error</th><th>output</th><th>job</th></tr>{''.join(body_rows)}</table>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{head}{failures}{gallery}{table}</body></html>")


def write_report(rows: list[dict], summary: dict, base_url: str, options: StorageOptions | None = None,
                 title: str = "vidflow run") -> tuple[str, str]:
    """Write ``summary.json`` and ``report.html`` under ``base_url``; returns both URLs."""
    summary_url = storage.join_url(base_url, "summary.json")
    report_url = storage.join_url(base_url, "report.html")
    storage.write_bytes(summary_url, json.dumps(summary, indent=2, default=str).encode(), options)
    storage.write_bytes(report_url, render_html(rows, summary, base_url, title).encode(), options)
    return summary_url, report_url


def local_path_hint(url: str) -> str:
    return os.path.abspath(url) if storage.protocol_of(url) == "file" else url
