"""Rows that kill or hang their worker, and stages whose setup fails, on a real local Ray."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from jobs.common import Job, RunConfig, execute
from pipeline import manifest
from pipeline.input_source import describe_input
from pipeline.manifest import ManifestStore, output_schema
from pipeline.runner import StageSpec
from pipeline.stage import RunContext
from tests.crash_stages import BrokenSetupStage, CrashConfig, CrashingStage

pytestmark = pytest.mark.slow


def _job(tmp_path, uris: list[str], stage_cls) -> tuple[Job, str]:
    path = tmp_path / "m.csv"
    pd.DataFrame({"video_uri": uris}).to_csv(path, index=False)
    out = str(tmp_path / "out")
    info = describe_input(str(path))
    context = RunContext(output_url=out, cache_url=out + "/cache", run_id="crash-run", config_hash="c")
    store = ManifestStore(out, context.run_id, output_schema(list(info.columns)),
                          lambda r: manifest.to_output_record(r, list(info.columns)))
    run = RunConfig(flush_rows=1, flush_seconds=1.0, max_row_attempts=2, setup_attempts=2)
    return Job(info=info, checks=[], specs=[StageSpec(stage_cls, CrashConfig())], context=context, store=store,
               run=run), out


def test_a_row_that_kills_its_worker_and_one_that_hangs_end_as_error_rows(ray_local, tmp_path):
    uris = [f"good{i}.mp4" for i in range(6)] + ["exit.mp4", "hang.mp4"]
    job, out = _job(tmp_path, uris, CrashingStage)
    assert execute(job) == 0  # 2 of 8 failed: under max_failure_fraction 0.5
    frame = pd.read_parquet(os.path.join(out, "manifest")).set_index("video_uri")
    assert len(frame) == 8 and frame.job_id.is_unique
    assert (frame.loc[[f"good{i}.mp4" for i in range(6)], "status"] == "ok").all()
    crashed, hung = frame.loc["exit.mp4"], frame.loc["hang.mp4"]
    assert (crashed.status, crashed.error_stage) == ("error", "crashy")
    assert crashed.error.startswith("WorkerCrashedError: the worker died 2 time(s)")
    assert (hung.status, hung.error_stage) == ("error", "crashy") and hung.error.startswith("TimeoutError")


def test_a_stage_whose_setup_fails_fails_its_rows_with_the_setup_error(ray_local, tmp_path):
    job, out = _job(tmp_path, ["a.mp4", "b.mp4"], BrokenSetupStage)
    assert execute(job) == 1  # every row failed
    frame = pd.read_parquet(os.path.join(out, "manifest"))
    assert (frame.status == "error").all() and (frame.error_stage == "broken").all()
    assert frame.error.str.startswith("setup failed: OSError: weights not found").all()
