"""``summary.json`` and a bounded ``report.html`` of a run.

The page has a fixed size whatever the number of rows: totals first, then every distinct
error type with its count and a few example rows, then thumbnails (bounded size, plain labels,
each opening the full image) of a sample of at most ``run.report_sample`` ok rows, and
per-stage timings. The full per-row listing is the Parquet manifest, not the page. Links are
relative when the file lies under the output, ``file://`` URLs for other local paths (a
cache elsewhere), and the URL itself otherwise.
"""

from __future__ import annotations

import html
import json
import os
import re

from pipeline import storage
from pipeline.run_stats import preview_links
from pipeline.storage import StorageOptions

LABELS = {
    "before | after": "before | after",
    "tracks_overlay": "tracks",
    "c_mot_preview": "motion map (c_mot)",
    "depth_preview": "depth",
    "edited_atlas": "edited atlas",
    "atlas_fg_atlas": "foreground atlas",
    "atlas_bg_atlas": "background atlas",
    "atlas_preview_atlases": "atlases",
    "atlas_preview_alpha": "foreground alpha",
    "atlas_preview_reconstruction": "atlas reconstruction",
}
THUMBNAIL_PX = 240

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:13px}th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}
.ok{color:#17803d;font-weight:600}.error{color:#b42318;font-weight:600}.skipped{color:#777}
.totals span{display:inline-block;margin-right:24px;font-size:20px}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ddd;border-radius:6px;padding:8px;max-width:520px}
.thumbs{display:flex;flex-wrap:wrap;gap:6px}.thumb{font-size:11px;color:#555}
.thumb img{max-width:240px;max-height:240px;display:block;border:1px solid #eee}
.muted{color:#666;font-size:12px}code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
"""


def label(name: str) -> str:
    """A plain label for an output name (``atlas_bg_atlas`` -> ``background atlas``).

    A windowed atlas fit's per-window outputs end in ``_wNNN`` (``atlas_fg_atlas_w001`` ->
    ``foreground atlas, window 2``).
    """
    window = re.fullmatch(r"(.+)_w(\d{3})", name)
    if window:
        return f"{label(window.group(1))}, window {int(window.group(2)) + 1}"
    return LABELS.get(name, name.replace("_", " "))


def link_for(url: str | None, base: str) -> str | None:
    """A link usable from ``{base}/report.html`` (see the module docstring)."""
    if not url:
        return None
    prefix = base.rstrip("/") + "/"
    if url.startswith(prefix):
        return url[len(prefix):]
    if storage.protocol_of(url) == "file" and not url.startswith("file://"):
        return "file://" + os.path.abspath(url)
    return url


def _error_section(summary: dict, examples: dict[str, list[dict]]) -> str:
    esc = html.escape
    by_type = summary.get("failures_by_type") or {}
    if not by_type:
        return "<h2>Errors</h2><p>None in this run.</p>"
    parts = ["<h2>Errors</h2><p>By stage: " + ", ".join(
        f"{esc(k)} {v}" for k, v in (summary.get("failures_by_stage") or {}).items()) + "</p>"]
    for kind, count in by_type.items():
        rows = "".join(
            f"<tr><td>{esc(str(r.get('video_id')))}</td><td>{esc(str(r.get('error_stage') or ''))}</td>"
            f"<td>{esc(str(r.get('error') or ''))}</td><td class='muted'>{esc(str(r.get('job_id')))}</td></tr>"
            for r in examples.get(kind, []))
        parts.append(f"<h3><code>{esc(kind)}</code> &times; {count}</h3>"
                     f"<table><tr><th>video</th><th>stage</th><th>error</th><th>job</th></tr>{rows}</table>")
    return "".join(parts)


def _card(rec: dict, base: str) -> str:
    esc = html.escape
    thumbs = []
    for name, url in preview_links(rec):
        href = esc(link_for(url, base) or "")
        thumbs.append(f"<a class='thumb' href='{href}' target='_blank'>{esc(label(name))}"
                      f"<img loading='lazy' src='{href}' alt='{esc(label(name))}'></a>")
    video = link_for(rec.get("output_uri"), base)
    video_link = f" <a href='{esc(video)}'>video</a>" if video else ""
    return (f"<div class='card'><b>{esc(str(rec.get('video_id')))}</b>{video_link} "
            f"<span class='muted'>{esc(str(rec.get('method') or ''))} {esc(str(rec.get('prompt') or ''))}</span>"
            f"<div class='thumbs'>{''.join(thumbs)}</div></div>")


def render_html(summary: dict, examples: dict[str, list[dict]], sample: list[dict], base_url: str,
                title: str = "vidflow run") -> str:
    """The page (see the module docstring); its size depends on the sample and the error types only."""
    esc = html.escape
    counts = summary.get("counts", {})
    this_run = summary.get("this_run", {})
    totals = (f"<div class='totals'><span class='ok'>{counts.get('ok', 0)} ok</span>"
              f"<span class='error'>{counts.get('error', 0)} error</span>"
              f"<span class='skipped'>{counts.get('skipped', 0)} skipped</span></div>"
              f"<p>{summary.get('rows', 0)} rows in the output; this run processed "
              f"{summary.get('processed_this_run', 0)} ({this_run.get('ok', 0)} ok, {this_run.get('error', 0)} "
              f"error, {this_run.get('skipped', 0)} skipped), {summary.get('already_done', 0)} were already done; "
              f"{summary.get('videos_per_minute', 0)} videos/min; wall {summary.get('wall_seconds', 0)} s; config "
              f"<code>{esc(str(summary.get('config_hash', '')))}</code>. "
              "Every row: <code>manifest/*.parquet</code>.</p>")
    ordered = sorted(sample, key=lambda r: (str(r.get("video_id")), str(r.get("job_id"))))
    gallery = (f"<h2>Results (sample of {len(ordered)} ok rows)</h2><div class='cards'>"
               f"{''.join(_card(r, base_url) for r in ordered)}</div>") if ordered else ""
    timing_rows = "".join(
        f"<tr><td>{esc(stage)}</td><td>{s['rows']}</td><td>{s['mean']}</td><td>{s['p50']}</td><td>{s['p90']}</td>"
        f"<td>{s['p99']}</td></tr>" for stage, s in (summary.get("stage_seconds") or {}).items())
    timings = ("<h2>Seconds per row by stage</h2><table><tr><th>stage</th><th>rows</th><th>mean</th><th>p50</th>"
               f"<th>p90</th><th>p99</th></tr>{timing_rows}</table>") if timing_rows else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>{totals}"
            f"{_error_section(summary, examples)}{gallery}{timings}</body></html>")


def write_report(summary: dict, examples: dict[str, list[dict]], sample: list[dict], base_url: str,
                 options: StorageOptions | None = None, title: str = "vidflow run") -> tuple[str, str]:
    """Write ``summary.json`` and ``report.html`` under ``base_url``; returns both URLs."""
    summary_url = storage.join_url(base_url, "summary.json")
    report_url = storage.join_url(base_url, "report.html")
    storage.write_bytes(summary_url, json.dumps(summary, indent=2, default=str).encode(), options)
    page = render_html(summary, examples, sample, base_url, title)
    storage.write_bytes(report_url, page.encode(), options)
    return summary_url, report_url


def local_path_hint(url: str) -> str:
    return os.path.abspath(url) if storage.protocol_of(url) == "file" else url
