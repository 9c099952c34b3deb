"""What every job shares: CLI basics, resume, preflight, running, and the closing summary.

A job builds its rows and stages, then calls :func:`execute`. Rows already ``ok`` (or
``skipped``) in the output manifest are left alone; the others run again with ``attempt``
incremented. Manifest parts are written as rows finish; at the end the parts are compacted
into one row per ``job_id`` and ``summary.json`` and ``report.html`` are written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pipeline import report, runner, storage
from pipeline.config import ConfigError
from pipeline.manifest import ManifestStore, now_utc, ok_job_ids
from pipeline.stage import STATUS_ERROR, STATUS_PENDING, STATUS_SKIPPED, RunContext, Stage, run_stage

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ROW_FAILURES = 1
EXIT_PREFLIGHT = 2


class PreflightError(RuntimeError):
    """The job cannot start: bad config, unwritable output, missing codec or GPU."""


@dataclass(frozen=True)
class RunConfig:
    """Settings of a run as a whole."""

    method: str = "reencode"  # the method of rows that name none
    max_failure_fraction: float = 0.5  # exit 1 when more rows than this fail
    flush_rows: int = 8  # write a manifest part after this many finished rows ...
    flush_seconds: float = 30.0  # ... or this many seconds
    num_cpus: int | None = None  # CPUs of a local Ray started by the job (None: all)
    cache_url: str | None = None  # artifact cache; default {output}/cache

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_failure_fraction <= 1.0:
            raise ConfigError(f"run.max_failure_fraction must be in [0, 1], got {self.max_failure_fraction}")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", help="input manifest URL (.parquet/.csv/.jsonl) or a glob of video URLs")
    parser.add_argument("--output", required=True, help="output URL (local path, s3://, gs://, memory://)")
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set decode.max_frames=32 (repeatable)")
    parser.add_argument("--limit", type=int, help="process at most the first N input rows")
    parser.add_argument("--dry-run", action="store_true", help="preflight and plan only; process nothing")
    parser.add_argument("--verbose", action="store_true")


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def check_output(output_url: str, options) -> None:
    try:
        storage.check_writable(output_url, options)
    except OSError as exc:
        raise PreflightError(str(exc)) from exc


def check_gpus(stages: list[Stage], available: float) -> None:
    """Raise PreflightError when the stages' minimum GPU need exceeds the cluster's GPUs."""
    need = max((s.resources.num_gpus * s.resources.min_actors for s in stages), default=0.0)
    if need > available:
        names = ", ".join(s.name for s in stages if s.resources.num_gpus > 0)
        raise PreflightError(f"stages {names} need {need:g} GPU(s) but the cluster has {available:g}")


def preflight_stages(stages: list[Stage]) -> None:
    for stage in stages:
        try:
            stage.preflight()
        except Exception as exc:  # noqa: BLE001 - any preflight failure stops the job
            raise PreflightError(f"preflight of stage {stage.name!r} failed: {type(exc).__name__}: {exc}") from exc


def execute(rows: list[dict], inline: list[Stage], specs: list[runner.StageSpec], context: RunContext,
            store: ManifestStore, run_cfg: RunConfig, *, dry_run: bool = False, title: str = "vidflow run",
            ray_init: Callable[[], None] | None = None, keep_arrays: tuple[str, ...] = ()) -> int:
    """Run a job over ``rows``; returns the process exit code.

    ``inline`` stages (cheap checks such as validation) run in the driver before Ray;
    ``specs`` run on Ray Data; array row values named in ``keep_arrays`` reach ``store``.
    Raises PreflightError before any work when the set-up is bad.
    """
    built = [spec.build(context) for spec in specs]
    preflight_stages(inline + built)
    previous = store.previous()
    done = ok_job_ids(previous)
    todo, already = [], 0
    for row in rows:
        if row["job_id"] in done:
            already += 1
            continue
        row["attempt"] = previous.get(row["job_id"], {}).get("attempt", 0) + 1
        row["run_id"] = context.run_id
        row["config_hash"] = context.config_hash
        todo.append(row)
    for stage in inline:
        todo = [run_stage(stage, row) for row in todo]
    direct = [r for r in todo if r.get("status") in (STATUS_ERROR, STATUS_SKIPPED)]
    work = [r for r in todo if r.get("status") == STATUS_PENDING]
    log.info("%d input rows: %d already done, %d to process, %d finished by checks (errors/duplicates)",
             len(rows), already, len(work), len(direct))
    if dry_run:
        for stage in built:
            log.info("plan: stage %-24s %s", stage.name, stage.resources)
        return EXIT_OK

    if ray_init is not None:
        ray_init()
    else:
        runner.init_ray(run_cfg.num_cpus)
    check_gpus(built, runner.cluster_gpus() if work else float("inf"))

    def finish(batch: list[dict]) -> None:
        for row in batch:
            if row.get("status") == STATUS_PENDING:
                row["status"] = "ok"
            row["finished_at"] = now_utc()
        store.write_part(batch)
        log.info("manifest: %d more rows written", len(batch))

    if direct:
        finish(direct)
    result = runner.run(work, specs, context, finish, flush_rows=run_cfg.flush_rows,
                        flush_seconds=run_cfg.flush_seconds, keep_arrays=keep_arrays)
    store.compact()
    all_rows = store.records()
    summary = report.summarize(all_rows, result.wall_seconds, run_id=context.run_id,
                               config_hash=context.config_hash)
    _, report_url = report.write_report(all_rows, summary, context.output_url, context.storage, title=title)
    log.info("summary: %s", summary["counts"])
    log.info("report: %s", report.local_path_hint(report_url))
    processed = direct + result.rows
    failed = sum(1 for r in processed if r.get("status") == STATUS_ERROR)
    if processed and failed / len(processed) > run_cfg.max_failure_fraction:
        log.error("%d of %d rows failed (> max_failure_fraction=%s)", failed, len(processed),
                  run_cfg.max_failure_fraction)
        return EXIT_ROW_FAILURES
    return EXIT_OK
