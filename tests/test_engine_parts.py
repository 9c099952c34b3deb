"""The streaming engine's pure parts: dedupe, resume scan, preparation, row guard, writers, stats, compaction."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline import compaction, manifest, storage
from pipeline.config import Resources
from pipeline.dedupe import InputRegistry, job_key, job_keys, occurrence_in_batch
from pipeline.manifest import ManifestStore, output_schema
from pipeline.prepare import PREVIEW_KEY, PREVIOUS_STATUS_KEY, PrepSpec, prepare_rows, wants_previews
from pipeline.resume import STATUS_CODE, reduce_latest, scan_previous
from pipeline.row_guard import RowLedger, guarded_run
from pipeline.run_stats import RunStats, histogram_percentile, seconds_bin, small_record
from pipeline.runner import fit_cpus
from pipeline.stage import RunContext, Stage
from pipeline.writers import PartWriter


def _store(tmp_path, run_id="r1") -> ManifestStore:
    return ManifestStore(str(tmp_path), run_id, output_schema(["lang"]),
                         lambda r: manifest.to_output_record(r, ["lang"]))


def _row(job, status, when, attempt=1, run_id="r0", video=None):
    return {"job_id": job, "video_id": video or job, "status": status, "attempt": attempt, "lang": "en",
            "run_id": run_id, "finished_at": pd.Timestamp(when, tz="UTC").to_pydatetime()}


# --- dedupe -------------------------------------------------------------------------------------

def test_occurrence_in_batch_counts_earlier_equal_keys():
    assert occurrence_in_batch(np.array([7, 3, 7, 7, 3, 9], np.uint64)).tolist() == [0, 0, 1, 2, 1, 0]


def test_registry_numbers_repeats_across_blocks_and_merges():
    registry = InputRegistry()
    prior, seq = registry.claim(np.array([1, 2, 1], np.uint64))
    assert prior.tolist() == [0, 0, 1] and seq.tolist() == [0, 1, 2]
    registry._merge()  # the sorted array and the recent buffer must agree
    prior, seq = registry.claim(np.array([2, 1, 3, 3], np.uint64))
    assert prior.tolist() == [1, 2, 0, 1] and seq.tolist() == [3, 4, 5, 6]
    assert registry.stats()["distinct"] == 3


def test_job_keys_are_stable_and_distinct():
    keys = job_keys(["a", "b", "a-dup1"])
    assert keys.dtype == np.uint64 and len(set(keys.tolist())) == 3 and int(keys[0]) == job_key("a")


# --- preparation --------------------------------------------------------------------------------

def test_prepare_marks_duplicates_drops_done_and_counts_attempts():
    rows = [{"video_uri": "a.mp4"}, {"video_uri": "b.mp4"}, {"video_uri": "a.mp4"}]
    base = [manifest.make_job_id(dict(r, method="reencode")) for r in rows]
    previous = reduce_latest(job_keys([base[1], base[0]]), np.array([STATUS_CODE["ok"], STATUS_CODE["error"]]),
                             np.array([1, 3]), np.array([1, 1]))
    spec = PrepSpec(run_id="r", config_hash="c", method="reencode", preview_first=1, preview_every=0)
    out, done = prepare_rows([dict(r) for r in rows], spec, previous, InputRegistry().claim)
    assert done == 1  # b was ok before
    assert [r["job_id"] for r in out] == [base[0], base[0] + "-dup1"]
    assert out[0]["attempt"] == 4 and out[0][PREVIOUS_STATUS_KEY] == "error" and out[0]["status"] == "pending"
    assert out[1]["status"] == "skipped" and "duplicate" in out[1]["error"]
    assert [r[PREVIEW_KEY] for r in out] == [True, False]


def test_preview_sampling_first_n_then_one_in_k():
    picked = [s for s in range(100) if wants_previews(s, 5, 20)]
    assert picked == [0, 1, 2, 3, 4, 5, 25, 45, 65, 85]


# --- resume -------------------------------------------------------------------------------------

def test_scan_reads_latest_status_per_job_and_skips_torn_parts(tmp_path):
    store = _store(tmp_path)
    store.write_part([_row("a", "error", "2026-01-01"), _row("b", "ok", "2026-01-01")])
    store.write_part([_row("a", "ok", "2026-01-02", attempt=2)])
    storage.write_bytes(storage.join_url(store.url, "part-torn-00001.parquet"), b"PAR1 torn")
    prev = scan_previous(store)
    status, attempt = prev.lookup(job_keys(["a", "b", "c"]))
    assert status.tolist() == [STATUS_CODE["ok"], STATUS_CODE["ok"], 0] and attempt.tolist() == [2, 1, 0]
    assert prev.counts() == {"ok": 2} and len(prev.unreadable) == 1
    assert prev.nbytes == len(prev) * 13


# --- row guard ----------------------------------------------------------------------------------

class _Sleepy(Stage):
    name = "sleepy"

    def process(self, row):
        if row.get("hang"):
            time.sleep(30)
        row["done"] = True
        return row


class _Exit(Exception):
    pass


def _raise_exit():
    raise _Exit()


def test_guard_turns_repeated_crashes_into_worker_crashed_error():
    ledger, stage = RowLedger(), _Sleepy(None, None)
    row = {"job_id": "j", "status": "pending"}
    ledger.begin("sleepy", "j")
    ledger.begin("sleepy", "j")  # two attempts that never ended: the worker died twice
    out = guarded_run(stage, dict(row), ledger, max_row_attempts=2, row_timeout_s=None)
    assert out["status"] == "error" and out["error"].startswith("WorkerCrashedError") and "done" not in out
    assert ledger.in_flight() == 0
    ok = guarded_run(stage, {"job_id": "k", "status": "pending"}, ledger, max_row_attempts=2, row_timeout_s=None)
    assert ok["done"] and ledger.in_flight() == 0


def test_guard_times_out_a_hung_row_then_reports_it_on_retry():
    ledger, stage = RowLedger(), _Sleepy(None, None)
    row = {"job_id": "h", "status": "pending", "hang": True}
    with pytest.raises(_Exit):
        guarded_run(stage, dict(row), ledger, max_row_attempts=3, row_timeout_s=0.2, exit_worker=_raise_exit)
    out = guarded_run(stage, dict(row), ledger, max_row_attempts=3, row_timeout_s=0.2, exit_worker=_raise_exit)
    assert out["status"] == "error" and out["error"].startswith("TimeoutError") and out["error_stage"] == "sleepy"


# --- writers ------------------------------------------------------------------------------------

def test_writer_flushes_by_time_without_further_rows(tmp_path):
    from pipeline.stage import pack_row

    store = _store(tmp_path)
    writer = PartWriter(store, "w0", flush_rows=100, flush_seconds=0.3, tick_seconds=0.05)
    writer.add([pack_row(_row("a", "ok", "2026-01-01") | {"finished_at": None})])
    deadline = time.monotonic() + 5
    while not store.part_urls() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(store.part_urls()) == 1 and "-w0-" in store.part_urls()[0]
    assert writer.close() == {"rows": 1, "parts": 1}


def test_writer_keeps_rows_when_a_write_fails_and_close_says_so(tmp_path):
    from pipeline.stage import pack_row

    class Broken:
        def write_part(self, rows, tag=""):
            raise OSError("S3 unavailable")

    writer = PartWriter(Broken(), "w0", flush_rows=1, flush_seconds=100)
    writer.add([pack_row({"job_id": "a", "status": "ok"})])
    with pytest.raises(OSError, match="could not write 1 finished rows"):
        writer.close()


# --- stats and report ---------------------------------------------------------------------------

def test_histogram_percentiles_are_close_to_exact():
    rng = np.random.default_rng(0)
    values = rng.lognormal(0, 1, 5000)
    counts = np.zeros(400, np.int64)
    for v in values:
        counts[seconds_bin(v)] += 1
    for q in (50, 90, 99):
        assert abs(histogram_percentile(counts, q) / np.percentile(values, q) - 1) < 0.06


def test_run_stats_are_bounded_and_count_the_whole_output():
    stats = RunStats({"ok": 10, "error": 4}, sample_size=2, error_examples=2)
    for i in range(50):
        stats.add(small_record({"job_id": f"e{i}", "status": "error", "error_stage": "decode",
                                "error": "VideoDecodeError: empty file", "stage_seconds": {"decode": 0.01},
                                PREVIOUS_STATUS_KEY: "error" if i < 3 else None}))
    for i in range(20):
        stats.add(small_record({"job_id": f"o{i}", "status": "ok", "preview_uri": f"/o/previews/{i}.webp",
                                "stage_seconds": {"decode": 0.5}}))
    summary = stats.summary(60.0)
    assert summary["counts"] == {"ok": 30, "error": 51, "skipped": 0}  # 3 earlier errors were retried
    assert summary["failures_by_type"] == {"VideoDecodeError": 50} and len(stats.examples["VideoDecodeError"]) == 2
    assert len(stats.sample) == 2 and len(stats.retried_keys) == 3
    assert summary["stage_seconds"]["decode"]["rows"] == 70 and summary["videos_per_minute"] == 20.0


def test_report_is_bounded_errors_first_with_plain_labels(tmp_path):
    from pipeline import report

    stats = RunStats(sample_size=3)
    for i in range(500):
        stats.add(small_record({"job_id": f"o{i}", "video_id": f"v{i}", "status": "ok",
                                "preview_uri": str(tmp_path / "out" / "previews" / f"{i}.webp"),
                                "outputs": {"atlas_bg_atlas": "/elsewhere/cache/bg.png"}}))
    stats.add(small_record({"job_id": "x", "video_id": "<b>bad</b>", "status": "error", "error_stage": "decode",
                            "error": "VideoTooLargeError: 4k"}))
    page = report.render_html(stats.summary(1.0), stats.examples, stats.sample, str(tmp_path / "out"))
    assert page.count("<img") == 6 and "background atlas" in page and "atlas_bg_atlas" not in page
    assert page.index("VideoTooLargeError") < page.index("<img") and "&lt;b&gt;bad" in page
    assert "href='previews/0.webp'" in page and "file:///elsewhere/cache/bg.png" in page


# --- compaction ---------------------------------------------------------------------------------

def test_compaction_merges_drops_superseded_and_keeps_unreadable_parts(tmp_path):
    store = _store(tmp_path, run_id="r2")
    store.write_part([_row("a", "error", "2026-01-01", run_id="r1"), _row("b", "ok", "2026-01-01", run_id="r1")])
    store.write_part([_row("a", "ok", "2026-01-02", attempt=2, run_id="r2")])
    torn = storage.join_url(store.url, "part-torn-00001.parquet")
    storage.write_bytes(torn, b"PAR1 torn")
    totals = compaction.compact(store, job_keys(["a"]), "r2", max_rows=1000)
    assert totals["rows_out"] == 2
    parts = store.part_urls()
    assert torn in parts and len(parts) == 2
    table = pq.read_table([p for p in parts if p != torn][0])
    assert table.column("job_id").to_pylist() == ["a", "b"] and table.column("status").to_pylist() == ["ok", "ok"]


def test_compaction_killed_after_writing_loses_nothing(tmp_path, monkeypatch):
    store = _store(tmp_path, run_id="r1")
    store.write_part([_row("a", "ok", "2026-01-01", run_id="r1")])
    store.write_part([_row("b", "ok", "2026-01-01", run_id="r1")])

    def killed(url, options=None):
        raise KeyboardInterrupt  # the process dies before the old parts are removed

    monkeypatch.setattr(storage, "remove", killed)
    with pytest.raises(KeyboardInterrupt):
        compaction.compact(store, np.zeros(0, np.uint64), "r1")
    monkeypatch.undo()
    assert sorted(store.read()["job_id"]) == ["a", "b"]  # old parts and the new one: nothing lost
    assert scan_previous(store).counts() == {"ok": 2}
    compaction.compact(store, np.zeros(0, np.uint64), "r1")
    assert len(store.part_urls()) == 1 and sorted(store.read()["job_id"]) == ["a", "b"]


# --- scheduling ---------------------------------------------------------------------------------

def test_fit_cpus_leaves_room_for_light_tasks_on_two_cpus():
    plan = [Resources(num_cpus=1, compute="tasks"), Resources(num_cpus=1), Resources(num_cpus=1),
            Resources(num_cpus=1, compute="tasks")]
    cpus, light = fit_cpus(plan, 2.0)
    heavy = cpus[1] + cpus[2]
    assert heavy + max(cpus[0], cpus[3]) + light <= 2.0 + 1e-9 and min(cpus) > 0
    big, _ = fit_cpus(plan, 64.0)
    assert big == [1.0, 1.0, 1.0, 1.0]


def test_small_record_is_json_and_small():
    rec = small_record({"job_id": "j", "status": "ok", "frames": np.zeros((10, 64, 64, 3)), "outputs": {"a": "b"}})
    assert json.loads(json.dumps(rec))["outputs"] == '{"a": "b"}' and "frames" not in rec
    assert len(json.dumps(rec)) < 400


def test_run_context_urls_are_absolute(tmp_path, monkeypatch):
    from jobs.common import absolute_url

    monkeypatch.chdir(tmp_path)
    assert absolute_url("out/") == os.path.join(str(tmp_path), "out")
    assert absolute_url("s3://b/out/") == "s3://b/out"
    assert RunContext(absolute_url("x"), "c").output_url.startswith("/")


def test_gpu_preflight_sums_the_stages_live_at_once():
    from jobs.common import PreflightError, check_gpus

    class Gpu(Stage):
        def __init__(self, name, gpus, actors=1):
            super().__init__(type("C", (), {"resources": Resources(num_gpus=gpus, min_actors=actors,
                                                                     max_actors=actors)})(), None)
            self.name = name

        def process(self, row):
            return row

    check_gpus([Gpu("depth", 1), Gpu("decode", 0)], available=1)
    with pytest.raises(PreflightError, match="need 2 GPU"):
        check_gpus([Gpu("depth", 1), Gpu("edit:tune_a_video", 1)], available=1)  # both pools are live at once
    with pytest.raises(PreflightError, match="need 1.5 GPU"):
        check_gpus([Gpu("atlas", 0.5, actors=3)], available=1)


def test_watchdog_reports_a_cluster_that_stops_answering():
    from pipeline.runner import ClusterWatchdog

    answers = iter([True, True])
    lost: list[str] = []

    def probe():
        if not next(answers, False):
            raise ConnectionError("GCS gone")

    with ClusterWatchdog(lost.append, interval=0.05, timeout=1.0, misses=2, probe=probe):
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.02)
    assert lost and "2 health checks in a row failed" in lost[0]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_distinct_values_read_one_column_streaming(tmp_path, fmt):
    from pipeline.input_source import describe_input, distinct_values

    frame = pd.DataFrame({"video_uri": [f"v{i}.mp4" for i in range(7)],
                          "method": ["reencode", None, "atlas_edit", "reencode", None, None, "revideo"]})
    path = str(tmp_path / f"m.{fmt}")
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)
    info = describe_input(path)
    assert distinct_values(info, None, "method") == ["atlas_edit", "reencode", "revideo"]
    assert distinct_values(info, None, "method", limit=2) == ["reencode"]
    assert distinct_values(info, None, "prompt") == []


def test_progress_lines_come_on_a_timer_even_when_no_row_finishes(caplog):
    import logging

    from pipeline.progress import InputCount, ProgressTicker, progress_line

    stats = RunStats()
    stats.add(small_record({"job_id": "a", "status": "ok", "stage_seconds": {"atlas": 90.0, "decode": 0.5}}))
    line = progress_line(stats, now=stats.started + 120)
    assert line.startswith("progress: 1 rows finished (1 ok, 0 error, 0 skipped) in 2.0 min, 0.5 rows/min")
    # busy fraction: row seconds over elapsed x workers (atlas has 1 worker, decode 2)
    assert line.endswith("busy: atlas 75%, decode 0%")
    assert progress_line(stats, now=stats.started + 120, workers={"atlas": 3}).endswith("busy: atlas 25%, decode 0%")
    # a known total (less rows an earlier run finished) gives the share and an ETA at the current rate
    known = progress_line(stats, now=stats.started + 120, count=InputCount(total=12, already_done=1))
    assert known.startswith("progress: 1 of 11 rows (9.1%; 1 ok, 0 error, 0 skipped) in 2.0 min, 0.5 rows/min, "
                            "ETA 20 min;")
    # unknown total: the rows prepared so far are a lower bound, and no ETA
    partial = progress_line(stats, now=stats.started + 120, count=InputCount(prepared=40))
    assert "1 of >=40 rows" in partial and "ETA" not in partial
    counts = iter([InputCount(prepared=5), InputCount(prepared=7)])
    with caplog.at_level(logging.INFO, logger="pipeline.progress"), \
            ProgressTicker(stats, 0.05, count=lambda: next(counts, InputCount(prepared=9))):
        time.sleep(0.3)  # no record arrives meanwhile
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: 1 of >=")]
    assert len(lines) >= 2 and "1 of >=5 rows" in lines[0] and "1 of >=7 rows" in lines[1]


def test_the_stage_log_stamps_records_with_stage_and_row_and_caps_a_flood(tmp_path):
    import logging

    from pipeline.stage_log import LogSink, RowLogHandler, row_context

    sink = LogSink(str(tmp_path / "out"), "run-1", flush_seconds=3600)

    class Direct:  # the actor handle's .add.remote, called in process
        class add:  # noqa: N801
            remote = staticmethod(sink.add)

    handler = RowLogHandler(Direct(), max_lines_per_row=3)
    logger = logging.getLogger("vidflow.test.stage_log")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("before any row")
        with row_context("atlas", "job-7"):
            for i in range(10):
                logger.info("iteration %d", i)
        logger.debug("below the level")
        assert handler.ship() == 5 and handler.ship() == 0
    finally:
        logger.removeHandler(handler)
    closed = sink.close()
    text = open(tmp_path / "out" / "logs" / "run-1-stages.log").read()
    assert closed == {"lines": 5, "url": str(tmp_path / "out" / "logs" / "run-1-stages.log"), "parts": 1}
    assert "[- -] vidflow.test.stage_log: before any row" in text
    assert [ln.split("] ", 1)[1] for ln in text.splitlines() if "[atlas job-7]" in ln] == [
        "vidflow.test.stage_log: iteration 0", "vidflow.test.stage_log: iteration 1",
        "vidflow.test.stage_log: iteration 2", "vidflow: more than 3 log lines for this row; the rest are dropped"]
    assert "below the level" not in text


def test_the_stage_log_starts_a_new_part_past_its_size_bound(tmp_path):
    from pipeline.stage_log import LogSink

    sink = LogSink(str(tmp_path), "r", flush_seconds=3600, part_bytes=100)
    sink.add(["x" * 80, "y" * 30])  # 112 bytes: part 0 is copied and closed
    sink.add(["z"])
    assert sink.close()["parts"] == 2
    assert open(tmp_path / "logs" / "r-stages.log").read() == "x" * 80 + "\n" + "y" * 30 + "\n"
    assert open(tmp_path / "logs" / "r-stages-001.log").read() == "z\n"


def test_a_bad_jsonl_line_is_an_error_row_not_a_failed_run():
    from pipeline.prepare import rows_from_jsonl

    raw = rows_from_jsonl(['{"video_uri": "a.mp4"}', "{not json", "", "[1, 2]"])
    out, _ = prepare_rows(raw, PrepSpec(run_id="r", config_hash="c"), reduce_latest(*[np.zeros(0)] * 4),
                          InputRegistry().claim)
    assert [r["status"] for r in out] == ["pending", "error", "error"]
    assert out[1]["error_stage"] == "input" and out[1]["error"].startswith("ManifestLineError:")
    assert "'{not json'" in out[1]["error"] and "must be an object, got list" in out[2]["error"]
    assert out[1]["job_id"] != out[2]["job_id"]


def test_dashboard_flag_starts_the_local_ray_with_its_dashboard(monkeypatch):
    import argparse
    import types

    import ray

    from jobs.common import add_common_args, run_overrides
    from pipeline import runner

    parser = argparse.ArgumentParser()
    add_common_args(parser)
    args = parser.parse_args(["--output", "o", "--set", "a=1", "--dashboard"])
    assert run_overrides(args) == ["a=1", "run.dashboard=true"]
    assert run_overrides(parser.parse_args(["--output", "o"])) == []
    seen = {}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw) or types.SimpleNamespace(dashboard_url="h:8265"))
    runner.init_ray(2, dashboard=True)
    assert seen["include_dashboard"] is True and seen["num_cpus"] == 2
    runner.init_ray(2)
    assert seen["include_dashboard"] is False
