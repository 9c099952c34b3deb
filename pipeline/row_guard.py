"""Rows that crash or hang their worker become error rows; the run goes on.

The per-row error capture of :func:`pipeline.stage.run_stage` cannot catch a segfault, an
out-of-memory kill, ``os._exit`` or a row that never returns. For those, every worker
records in a run-wide :class:`RowLedger` (a Ray actor in a run) that it *begins* a row in a
stage, and that it *ended* it. When a worker dies, Ray restarts it and retries the call
(bounded by the stage's retry settings); the retried call finds in the ledger how often the
row was begun and never ended:

- after ``max_row_attempts`` such attempts the row is not run again but becomes
  ``WorkerCrashedError`` on that stage;
- a row that ran past the stage's ``row_timeout_s`` was recorded as timed out before its
  worker exited on purpose (a hung thread cannot be stopped otherwise); the retry turns it
  into ``TimeoutError``.

A stage whose ``setup()`` fails counts the failure here too; the runner restarts its actor a
bounded number of times before it fails rows with the setup error.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from typing import Protocol

from pipeline.stage import STATUS_PENDING, Stage, mark_error, run_stage

log = logging.getLogger(__name__)

TIMED_OUT = "timeout"


class WorkerCrashedError(RuntimeError):
    """The worker process died (segfault, OOM kill, exit) while running a stage on this row."""


class RowLedger:
    """Rows begun and not yet ended, per stage; setup failures per stage. Holds only rows in flight."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], list] = {}  # (stage, job_id) -> [begun count, failure or None]
        self._setup_failures: dict[str, int] = {}

    def begin(self, stage: str, job_id: str) -> tuple[int, str | None]:
        """Record an attempt; returns (attempts begun before this one and never ended, recorded failure)."""
        entry = self._open.setdefault((stage, job_id), [0, None])
        before, failure = entry[0], entry[1]
        entry[0] += 1
        return before, failure

    def fail(self, stage: str, job_id: str, reason: str) -> None:
        self._open.setdefault((stage, job_id), [1, None])[1] = reason

    def end(self, stage: str, job_id: str) -> None:
        self._open.pop((stage, job_id), None)

    def setup_failed(self, stage: str) -> int:
        """Count a failed ``setup()`` of ``stage``; returns the failures so far."""
        self._setup_failures[stage] = self._setup_failures.get(stage, 0) + 1
        return self._setup_failures[stage]

    def in_flight(self) -> int:
        return len(self._open)


class LedgerClient(Protocol):
    def begin(self, stage: str, job_id: str) -> tuple[int, str | None]: ...
    def fail(self, stage: str, job_id: str, reason: str) -> None: ...
    def end(self, stage: str, job_id: str) -> None: ...


def _exit_worker() -> None:  # pragma: no cover - replaced in tests
    os._exit(70)


def guarded_run(stage: Stage, row: dict, ledger: LedgerClient | None, *, max_row_attempts: int,
                row_timeout_s: float | None, exit_worker=_exit_worker) -> dict:
    """:func:`run_stage` with crash and time-limit accounting (see the module docstring)."""
    if ledger is None or row.get("status") != STATUS_PENDING or not stage.applies_to(row):
        return run_stage(stage, row)
    job_id = str(row.get("job_id"))
    before, failure = ledger.begin(stage.name, job_id)
    if failure == TIMED_OUT:
        ledger.end(stage.name, job_id)
        return mark_error(dict(row), stage.name,
                          f"TimeoutError: stage {stage.name!r} ran longer than row_timeout_s={row_timeout_s:g} s "
                          "on this row")
    if before >= max_row_attempts:
        ledger.end(stage.name, job_id)
        return mark_error(dict(row), stage.name,
                          f"WorkerCrashedError: the worker died {before} time(s) while running stage "
                          f"{stage.name!r} on this row (segfault, out-of-memory kill or exit); not retried "
                          f"after run.max_row_attempts={max_row_attempts}")
    if not row_timeout_s:
        out = run_stage(stage, row)
    else:
        result: list[dict] = []
        context = contextvars.copy_context()  # the row's log context (pipeline.stage_log) goes with it
        worker = threading.Thread(target=lambda: result.append(context.run(run_stage, stage, row)), daemon=True,
                                  name=f"vidflow-{stage.name}")
        worker.start()
        worker.join(row_timeout_s)
        if worker.is_alive():
            log.error("row %s exceeded %s s in stage %s: restarting the worker", job_id, row_timeout_s, stage.name)
            ledger.fail(stage.name, job_id, TIMED_OUT)
            exit_worker()
            raise TimeoutError(f"stage {stage.name!r} exceeded {row_timeout_s} s")  # only when exit is stubbed
        out = result[0]
    ledger.end(stage.name, job_id)
    return out
