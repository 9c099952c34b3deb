"""A run's summary, computed incrementally from small status records, in bounded memory.

The driver never holds the rows of a run: for each finished row it receives a
:func:`small_record` (ids, status, error, stage seconds, preview links) and folds it into
:class:`RunStats`: counts, failures by stage and by error type, a few examples of every error
type, per-stage seconds as log-spaced histograms (percentiles to ~6 %), and a bounded sample
of ok rows with previews for the report. Memory does not grow with the number of rows, except
the 8-byte keys of retried jobs (needed to compact their superseded rows).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter

import numpy as np

from pipeline.dedupe import job_key
from pipeline.prepare import PREVIOUS_STATUS_KEY

SMALL_FIELDS = ("job_id", "video_id", "video_uri", "method", "prompt", "status", "error_stage", "error",
                "output_uri", "preview_uri", "outputs", "stage_seconds", PREVIOUS_STATUS_KEY)
HIST_MIN_S = 1e-4  # first histogram edge, seconds
HIST_BINS_PER_DECADE = 40
HIST_DECADES = 9  # 1e-4 s .. 1e5 s
IMAGE_EXTENSIONS = (".gif", ".webp", ".png", ".jpg", ".jpeg")


def small_record(row: dict) -> dict:
    """The few fields of a finished row the driver needs (JSON-able scalars and strings)."""
    rec = {}
    for name in SMALL_FIELDS:
        value = row.get(name)
        if name in ("outputs", "stage_seconds") and not isinstance(value, str):
            value = json.dumps(value or {}, sort_keys=True, default=str)
        rec[name] = None if value is None else (value if isinstance(value, str) else str(value))
    return rec


def error_type(error: str | None) -> str:
    """``"VideoDecodeError: empty file"`` -> ``"VideoDecodeError"``."""
    if not error:
        return "unknown"
    return error.split(":", 1)[0].strip() or "unknown"


def seconds_bin(seconds: float) -> int:
    """Histogram bin of a duration: 40 log-spaced bins per decade from 1e-4 s (clamped)."""
    if seconds <= HIST_MIN_S:
        return 0
    index = int(math.log10(seconds / HIST_MIN_S) * HIST_BINS_PER_DECADE) + 1
    return min(index, HIST_BINS_PER_DECADE * HIST_DECADES + 1)


def histogram_percentile(counts: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0..100) of durations binned by :func:`seconds_bin`, as its bin's
    geometric centre, in seconds (0 for an empty histogram)."""
    total = counts.sum()
    if total == 0:
        return 0.0
    index = int(np.searchsorted(np.cumsum(counts), max(1.0, q / 100.0 * total)))
    if index == 0:
        return HIST_MIN_S
    return HIST_MIN_S * 10 ** ((index - 0.5) / HIST_BINS_PER_DECADE)


def preview_links(rec: dict) -> list[tuple[str, str]]:
    """``(name, url)`` of a record's image previews: before|after first, then its outputs by name."""
    links = []
    if rec.get("preview_uri"):
        links.append(("before | after", rec["preview_uri"]))
    outputs = rec.get("outputs") or "{}"
    outputs = json.loads(outputs) if isinstance(outputs, str) else outputs
    for name, url in sorted(outputs.items()):
        if str(url).lower().endswith(IMAGE_EXTENSIONS):
            links.append((name, url))
    return links


class RunStats:
    """Incremental counts and samples of a run (see the module docstring)."""

    def __init__(self, previous_counts: dict[str, int] | None = None, *, sample_size: int = 50,
                 error_examples: int = 3, max_error_types: int = 200):
        self.previous_counts = Counter(previous_counts or {})
        self.sample_size = sample_size
        self.error_examples = error_examples
        self.max_error_types = max_error_types
        self.counts: Counter = Counter()
        self.failures_by_stage: Counter = Counter()
        self.failures_by_type: Counter = Counter()
        self.examples: dict[str, list[dict]] = {}
        self.histograms: dict[str, np.ndarray] = {}
        self.stage_totals: Counter = Counter()
        self.sample: list[dict] = []
        self.retried_keys: list[int] = []
        self.started = time.monotonic()

    @property
    def processed(self) -> int:
        return sum(self.counts.values())

    def add(self, rec: dict) -> None:
        status = rec.get("status") or "unknown"
        self.counts[status] += 1
        if rec.get(PREVIOUS_STATUS_KEY):
            self.previous_counts[rec[PREVIOUS_STATUS_KEY]] -= 1
            self.retried_keys.append(job_key(rec["job_id"]))
        if status == "error":
            kind = error_type(rec.get("error"))
            self.failures_by_stage[rec.get("error_stage") or "unknown"] += 1
            self.failures_by_type[kind] += 1
            examples = self.examples.get(kind)
            if examples is None and len(self.examples) < self.max_error_types:
                examples = self.examples[kind] = []
            if examples is not None and len(examples) < self.error_examples:
                examples.append(rec)
        elif status == "ok" and len(self.sample) < self.sample_size and preview_links(rec):
            self.sample.append(rec)
        seconds = rec.get("stage_seconds") or "{}"
        for stage, secs in (json.loads(seconds) if isinstance(seconds, str) else seconds).items():
            hist = self.histograms.setdefault(stage, np.zeros(HIST_BINS_PER_DECADE * HIST_DECADES + 2, np.int64))
            hist[seconds_bin(float(secs))] += 1
            self.stage_totals[stage] += float(secs)

    def output_counts(self) -> dict[str, int]:
        """Rows of the whole output by status: earlier runs' rows not redone plus this run's."""
        total = self.previous_counts + self.counts
        return {k: int(total.get(k, 0)) for k in ("ok", "error", "skipped")}

    def summary(self, wall_seconds: float, *, run_id: str = "", config_hash: str = "",
                already_done: int = 0) -> dict:
        """``summary.json``: output counts, this run's failures, per-stage seconds, throughput."""
        minutes = wall_seconds / 60.0
        counts = self.output_counts()
        return {
            "run_id": run_id,
            "config_hash": config_hash,
            "rows": sum(counts.values()),
            "counts": counts,
            "processed_this_run": self.processed,
            "this_run": {k: int(self.counts.get(k, 0)) for k in ("ok", "error", "skipped")},
            "already_done": already_done,
            "failures_by_stage": dict(self.failures_by_stage.most_common()),
            "failures_by_type": dict(self.failures_by_type.most_common()),
            "stage_seconds": {
                stage: {"rows": int(hist.sum()), "total": round(self.stage_totals[stage], 3),
                        "mean": round(self.stage_totals[stage] / max(1, int(hist.sum())), 4),
                        **{f"p{q}": round(histogram_percentile(hist, q), 4) for q in (50, 90, 99)}}
                for stage, hist in sorted(self.histograms.items())},
            "wall_seconds": round(wall_seconds, 3),
            "videos_per_minute": round(self.counts.get("ok", 0) / minutes, 3) if minutes > 0 else 0.0,
        }
