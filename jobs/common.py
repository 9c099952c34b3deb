"""What every job shares: CLI basics, preflight, the run itself, and the closing summary.

A job describes its input (:func:`pipeline.input_source.describe_input`), builds its stages
and store, then calls :func:`execute`: preflight, the resume scan (only ``job_id``/``status``
columns of the previous output), the streaming plan on Ray (:mod:`pipeline.runner`), a
bounded compaction of the output parts, ``summary.json`` and ``report.html``. Rows already
``ok`` (or ``skipped``) are left alone; the others run again with ``attempt`` incremented.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline import compaction, model_staging, report, runner, storage
from pipeline.config import ConfigError
from pipeline.input_source import InputInfo
from pipeline.prepare import PrepSpec
from pipeline.progress import ProgressTicker
from pipeline.resume import scan_previous
from pipeline.run_log import RunLog
from pipeline.run_stats import RunStats
from pipeline.stage import RunContext, Stage

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ROW_FAILURES = 1
EXIT_PREFLIGHT = 2
EXIT_CLUSTER_LOST = 3


class PreflightError(RuntimeError):
    """The job cannot start: bad config, unwritable output, missing codec or GPU."""


@dataclass(frozen=True)
class RunConfig:
    """Settings of a run as a whole."""

    method: str = "reencode"  # the method of rows that name none
    max_failure_fraction: float = 0.5  # exit 1 when more of this run's rows than this fail
    flush_rows: int = 256  # a writer writes a manifest part after this many finished rows ...
    flush_seconds: float = 10.0  # ... or when its oldest row has waited this long
    writers: int = 1  # manifest writer actors
    num_cpus: int | None = None  # CPUs of a local Ray started by the job (None: all)
    cache_url: str | None = None  # artifact cache; default {output}/cache
    max_row_attempts: int = 2  # a row that crashes its worker this many times becomes WorkerCrashedError
    setup_attempts: int = 2  # actor restarts after a failed setup() before rows get the setup error
    max_actor_restarts: int = 16  # Ray restarts of one stage actor (crashes, timeouts), then the run stops
    prepare_block_rows: int = 1000  # input rows per preparation task
    rows_per_block: int = 1  # rows per block after preparation: 1 lets a slow row hold up no other; more
    # amortises Ray's per-call cost when rows take milliseconds (the trajectory job uses 8)
    preview_first: int = 20  # rows that always get previews ...
    preview_every: int = 50  # ... then one in this many (0: none)
    report_sample: int = 50  # ok rows shown in report.html
    compact_rows: int = 100_000  # rows per compacted manifest part
    progress_seconds: float = 30.0  # a progress line this often
    model_cache_url: str | None = None  # a `vidflow models download --to` cache copied onto every node before work
    dashboard: bool = False  # a local Ray started by the job serves its dashboard (--dashboard); its URL is logged

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_failure_fraction <= 1.0:
            raise ConfigError(f"run.max_failure_fraction must be in [0, 1], got {self.max_failure_fraction}")
        for name in ("flush_rows", "writers", "max_row_attempts", "setup_attempts", "prepare_block_rows",
                     "compact_rows", "rows_per_block"):
            if getattr(self, name) < 1:
                raise ConfigError(f"run.{name} must be >= 1, got {getattr(self, name)}")
        if self.flush_seconds <= 0 or self.progress_seconds <= 0:
            raise ConfigError("run.flush_seconds and run.progress_seconds must be > 0")
        if min(self.preview_first, self.preview_every, self.report_sample, self.max_actor_restarts) < 0:
            raise ConfigError("run.preview_first/preview_every/report_sample/max_actor_restarts must be >= 0")


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
    parser.add_argument("--dashboard", action="store_true",
                        help="serve the Ray dashboard of the local Ray the job starts (= --set run.dashboard=true)")
    parser.add_argument("--verbose", action="store_true")


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides with those of the flags that stand for config values (``--dashboard``)."""
    return [*args.overrides, *(["run.dashboard=true"] if getattr(args, "dashboard", False) else [])]


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def check_output(output_url: str, options) -> None:
    try:
        storage.check_writable(output_url, options)
    except OSError as exc:
        raise PreflightError(str(exc)) from exc


def check_gpus(stages: list[Stage], available: float) -> None:
    """Raise PreflightError when the stages' GPU need exceeds the cluster's GPUs.

    In a streaming plan every stage's actor pool is live at once, so the need is the *sum* of
    each GPU stage's ``num_gpus * min_actors`` (not the largest of them).
    """
    users = [s for s in stages if s.resources.num_gpus > 0]
    need = sum(s.resources.num_gpus * s.resources.min_actors for s in users)
    if need > available:
        names = ", ".join(f"{s.name} ({s.resources.num_gpus:g} x {s.resources.min_actors})" for s in users)
        raise PreflightError(f"stages {names} are live at once and need {need:g} GPU(s); the cluster has "
                             f"{available:g}")


def preflight_stages(stages: list[Stage]) -> None:
    for stage in stages:
        try:
            stage.preflight()
        except Exception as exc:  # noqa: BLE001 - any preflight failure stops the job
            raise PreflightError(f"preflight of stage {stage.name!r} failed: {type(exc).__name__}: {exc}") from exc


def absolute_url(url: str) -> str:
    """``url`` with a local path made absolute (manifest URLs must work from anywhere)."""
    url = url.rstrip("/")
    return os.path.abspath(url) if storage.protocol_of(url) == "file" and not url.startswith("file://") else url


@dataclass
class Job:
    """What a job hands to :func:`execute`."""

    info: InputInfo
    checks: list[Stage]  # cheap stages run while preparing (validation)
    specs: list[runner.StageSpec]
    context: RunContext
    store: object  # ManifestStore / ShardStore
    run: RunConfig
    title: str = "vidflow run"
    method: str | None = None
    row_mapper: Callable[[dict], dict] | None = None
    keep_arrays: tuple[str, ...] = ()
    merge_parts: bool = True  # compaction merges parts (False: bounded trajectory shards)
    limit: int | None = None


ROWS_LOGGED = 100  # failed rows named one by one in the log; the rest are counted in the summary


def _progress(stats: RunStats, every: float) -> Callable[[dict], None]:
    """What the run calls with each finished row's small record (the ticker logs the lines)."""

    def on_record(rec: dict) -> None:
        stats.add(rec)
        if rec.get("status") == "error" and stats.counts["error"] <= ROWS_LOGGED:
            log.info("row %s (%s) failed in %s: %s%s", rec.get("job_id"), rec.get("video_id"), rec.get("error_stage"),
                     rec.get("error"), " (later failures: summary.json)" if stats.counts["error"] == ROWS_LOGGED
                     else "")
    return on_record


def execute(job: Job, *, dry_run: bool = False, ray_init: Callable[[], None] | None = None) -> int:
    """Run a job; returns the process exit code. Raises PreflightError before any work when the set-up is bad."""
    if job.run.model_cache_url:  # before preflight, which checks the models against this node's cache
        (ray_init or (lambda: runner.init_ray(job.run.num_cpus, dashboard=job.run.dashboard)))()
        try:
            model_staging.stage_model_cache(job.run.model_cache_url, job.context.storage)
        except Exception as exc:  # noqa: BLE001 - any staging failure stops the job before work starts
            raise PreflightError(f"could not stage run.model_cache_url {job.run.model_cache_url!r}: "
                                 f"{type(exc).__name__}: {exc}") from exc
    built = [spec.build(job.context) for spec in job.specs]
    preflight_stages(list(job.checks) + built)
    previous = scan_previous(job.store)
    cfg = job.run
    plan = runner.Plan(
        info=job.info, previous=previous, stages=job.specs, context=job.context, store=job.store,
        prep=PrepSpec(run_id=job.context.run_id, config_hash=job.context.config_hash, method=job.method,
                      row_mapper=job.row_mapper, checks=tuple(job.checks), preview_first=cfg.preview_first,
                      preview_every=cfg.preview_every),
        guard=runner.Guard(max_row_attempts=cfg.max_row_attempts, setup_attempts=cfg.setup_attempts,
                           max_actor_restarts=cfg.max_actor_restarts),
        writers=cfg.writers, flush_rows=cfg.flush_rows, flush_seconds=cfg.flush_seconds,
        keep_arrays=job.keep_arrays, limit=job.limit, prepare_block_rows=cfg.prepare_block_rows,
        rows_per_block=cfg.rows_per_block)
    (ray_init or (lambda: runner.init_ray(cfg.num_cpus, dashboard=cfg.dashboard)))()
    if dry_run:
        counts = runner.count_prepared(plan)
        log.info("dry run: %s rows would run, %s already done, %s finished by checks (%s errors, %s duplicates)",
                 counts["to_process"], counts["already_done"], counts["error"] + counts["skipped"], counts["error"],
                 counts["skipped"])
        for stage in built:
            log.info("plan: stage %-24s %s", stage.name, stage.resources)
        return EXIT_OK
    check_gpus(built, runner.cluster_gpus())
    with RunLog(job.context.output_url, job.context.run_id, job.context.storage) as run_log:
        return _run(job, plan, built, previous, run_log)


def _run(job: Job, plan, built: list[Stage], previous, run_log: RunLog) -> int:
    cfg = job.run
    stats = RunStats(previous.counts(), sample_size=cfg.report_sample)
    start = time.perf_counter()

    def stopped(reason: str) -> None:
        _write_summary(job, stats, time.perf_counter() - start, interrupted=reason)
        log.error("the run stopped: %s. %d rows finished in this run (%d ok, %d error); those handed to the "
                  "manifest writers are in %s; a rerun with the same --output resumes where it stopped.", reason,
                  stats.processed, stats.counts["ok"], stats.counts["error"], job.store.url)
        run_log.flush()

    def lost(reason: str) -> None:  # from the watchdog thread: Ray would end the process anyway
        stopped(reason)
        logging.shutdown()
        os._exit(EXIT_CLUSTER_LOST)

    try:
        workers = {stage.name: stage.resources.max_actors for stage in built}
        with ProgressTicker(stats, cfg.progress_seconds, workers=workers) as ticker:
            totals = runner.execute_plan(plan, _progress(stats, cfg.progress_seconds), on_lost=lost, ticker=ticker)
    except runner.ClusterLostError as exc:
        stopped(str(exc))
        return EXIT_CLUSTER_LOST
    wall = time.perf_counter() - start
    log.info("run: %d rows finished, %d written by the writers, %d already done", stats.processed,
             totals["rows_written"], totals["already_done"])
    compaction.compact(job.store, np.asarray(stats.retried_keys, dtype=np.uint64), job.context.run_id,
                       max_rows=cfg.compact_rows, merge=job.merge_parts, map_fn=runner.ray_map)
    summary = _write_summary(job, stats, wall, already_done=totals["already_done"])
    log.info("summary: %s", summary["counts"])
    failed = stats.counts["error"]
    if stats.processed and failed / stats.processed > cfg.max_failure_fraction:
        log.error("%d of %d rows failed (> max_failure_fraction=%s)", failed, stats.processed,
                  cfg.max_failure_fraction)
        return EXIT_ROW_FAILURES
    return EXIT_OK


def _write_summary(job: Job, stats: RunStats, wall: float, *, already_done: int = 0,
                   interrupted: str | None = None) -> dict:
    summary = stats.summary(wall, run_id=job.context.run_id, config_hash=job.context.config_hash,
                            already_done=already_done)
    if interrupted:
        summary["interrupted"] = interrupted
    try:
        _, report_url = report.write_report(summary, stats.examples, stats.sample, job.context.output_url,
                                            job.context.storage, title=job.title)
        log.info("report: %s", report.local_path_hint(report_url))
    except Exception as exc:  # noqa: BLE001 - the manifest is what matters; say the report failed
        log.error("could not write summary/report: %s: %s", type(exc).__name__, exc)
    return summary
