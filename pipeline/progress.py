"""The run's progress line, logged on a timer: readable in ``ray job logs`` where bars are noise.

    progress: 120 of 1000 rows (12.0%; 118 ok, 2 error, 0 skipped) in 4.0 min, 30.0 rows/min,
    ETA 29 min; busy: atlas 97%, decode 12%, encode 8%

``of N`` is the input's row count when it is known without reading the input (a Parquet
footer, a listing of videos), less the rows an earlier run finished; otherwise ``of >=M`` with
M the rows prepared so far (the input is read as the run goes), and the ETA waits for the count.
A stage's busy fraction is its summed row seconds over the elapsed time times its workers
(``resources.max_actors``): near 100% the stage is the bottleneck, and more workers (or GPUs)
for it shorten the run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipeline.run_stats import RunStats

log = logging.getLogger(__name__)


@dataclass
class InputCount:
    """What the driver knows of how many rows the run has: ``total`` input rows when known,
    ``prepared`` and ``already_done`` as counted so far by the run's registry."""

    total: int | None = None
    prepared: int = 0
    already_done: int = 0


def format_minutes(minutes: float) -> str:
    """``"42 s"``, ``"17 min"``, ``"3.2 h"`` or ``"2.5 d"`` for a duration in minutes."""
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    if minutes < 90:
        return f"{minutes:.0f} min"
    if minutes < 48 * 60:
        return f"{minutes / 60:.1f} h"
    return f"{minutes / 1440:.1f} d"


def busy_fractions(stage_seconds: Mapping[str, float], workers: Mapping[str, int], elapsed_s: float) -> dict:
    """Per stage: summed row seconds / (elapsed seconds x workers), in [0, 1], busiest first."""
    out = {name: min(1.0, secs / max(1e-9, elapsed_s * max(1, workers.get(name, 1))))
           for name, secs in stage_seconds.items()}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def progress_line(stats: RunStats, now: float | None = None, count: InputCount | None = None,
                  workers: Mapping[str, int] | None = None) -> str:
    """One readable progress line (see the module docstring); ``now`` is a ``time.monotonic()`` value."""
    elapsed = max(1e-9, (now if now is not None else time.monotonic()) - stats.started)
    rate = stats.processed / elapsed * 60  # rows per minute
    count = count or InputCount()
    counts = f"{stats.counts['ok']} ok, {stats.counts['error']} error, {stats.counts['skipped']} skipped"
    eta = ""
    if count.total is not None:
        todo = max(stats.processed, count.total - count.already_done)
        share = f"{stats.processed / todo * 100:.1f}%; " if todo else ""
        head = f"{stats.processed} of {todo} rows ({share}{counts})"
        if rate > 0:
            eta = f", ETA {format_minutes((todo - stats.processed) / rate)}"
    elif count.prepared:
        todo = max(stats.processed, count.prepared - count.already_done)
        head = f"{stats.processed} of >={todo} rows ({counts})"
    else:
        head = f"{stats.processed} rows finished ({counts})"
    line = f"progress: {head} in {elapsed / 60:.1f} min, {rate:.1f} rows/min{eta}"
    busy = busy_fractions(stats.stage_totals, workers or {}, elapsed)
    if busy:
        line += "; busy: " + ", ".join(f"{name} {frac * 100:.0f}%" for name, frac in list(busy.items())[:4])
    return line


class ProgressTicker:
    """Logs :func:`progress_line` every ``every`` seconds while a run executes, rows finishing or not.

    ``count`` is called on each tick for the current :class:`InputCount` (it asks the run's
    registry); a failing call keeps the last count."""

    def __init__(self, stats: RunStats, every: float, *, count: Callable[[], InputCount] | None = None,
                 workers: Mapping[str, int] | None = None):
        self.stats, self.every, self.count_fn, self.workers = stats, every, count, dict(workers or {})
        self.count = InputCount()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="vidflow-progress")

    def line(self) -> str:
        if self.count_fn is not None:
            try:
                self.count = self.count_fn()
            except Exception:  # noqa: BLE001 - progress must never end a run
                log.debug("progress count failed", exc_info=True)
        return progress_line(self.stats, count=self.count, workers=self.workers)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            log.info("%s", self.line())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
