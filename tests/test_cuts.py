"""Shot-cut checks: the detector on synthetic clips with a hard cut at a known frame, both policies."""

from __future__ import annotations

import csv
import glob
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.sample_data import generate_sample
from pipeline import media
from pipeline.stage import RunContext, run_stage
from stages.cuts import CutsConfig, CutsStage, content_scores, find_cuts, find_cuts_adaptive, longest_span

CUT_AT = 10


@pytest.fixture(scope="module")
def clips():
    """(a 24-frame clip whose shot changes at frame 10, a 24-frame clip of one shot)."""
    one = generate_sample(128, 96, 24, seed=1).frames
    other = generate_sample(128, 96, 24, seed=7).frames
    return np.concatenate([one[:CUT_AT], other[CUT_AT:]]), one


def _row(frames):
    return {"job_id": "j", "video_id": "v", "status": "pending", "frames": frames, "num_frames": len(frames)}


def test_the_detector_finds_the_cut_and_nothing_in_smooth_motion(clips):
    cut, smooth = clips
    scores = content_scores(cut)
    assert scores.shape == (23,) and int(np.argmax(scores)) == CUT_AT - 1
    # two shots of similar colours (the sample's blue backgrounds): 22.6 at the cut, under 5 elsewhere
    assert find_cuts_adaptive(scores) == [CUT_AT]
    assert find_cuts_adaptive(content_scores(smooth)) == []
    assert content_scores(smooth).max() < 15.0 / 2  # a clear margin below min_score
    # a fast pan changes every frame as much: no spike above its neighbours, no cut
    pan = np.full(12, 40.0, np.float32)
    assert find_cuts(pan, 27.0) == [3, 6, 9, 12] and find_cuts_adaptive(pan) == []  # a fixed threshold fires
    assert find_cuts(np.array([30, 30, 0, 30], np.float32), 27.0, min_scene_frames=2) == [2, 4]
    assert find_cuts_adaptive(np.array([1, 1, 20, 1, 1, 1, 1, 20, 1], np.float32), min_scene_frames=3) == [3, 8]


def test_longest_span_picks_the_longest_earliest_gap():
    assert longest_span(24, [10]) == (10, 24)
    assert longest_span(20, [10]) == (0, 10)
    assert longest_span(24, []) == (0, 24)


def test_policy_skip_marks_the_row_skipped_with_the_cut_frame(clips):
    cut, smooth = clips
    stage = CutsStage(CutsConfig(policy="skip"), RunContext("o", "c"))
    row = run_stage(stage, _row(cut))
    assert row["status"] == "skipped" and row["error"].startswith(f"ShotCut: shot cut at frame {CUT_AT}")
    assert "frames" not in row and row["cuts"] == [CUT_AT]
    clean = run_stage(stage, _row(smooth))
    assert clean["status"] == "pending" and clean["cuts"] == [] and len(clean["frames"]) == 24


def test_policy_longest_moves_the_window_or_skips_a_short_one(clips):
    cut, _ = clips
    row = run_stage(CutsStage(CutsConfig(policy="longest"), RunContext("o", "c")), _row(cut))
    assert row["status"] == "pending" and row["cut_window"] == [CUT_AT, 24] and row["num_frames"] == 14
    assert np.array_equal(row["frames"], cut[CUT_AT:])
    short = run_stage(CutsStage(CutsConfig(policy="longest", min_frames=20), RunContext("o", "c")), _row(cut))
    assert short["status"] == "skipped" and "fewer than cuts.min_frames=20" in short["error"]


@pytest.mark.slow
def test_trajectory_job_skips_windows_with_a_cut(ray_local, clips, tmp_path):
    from jobs.preprocess_trajectories import main

    cut, smooth = clips
    rows = [("1", media.encode(cut, str(tmp_path / "cut.mp4"), 12.0)),
            ("2", media.encode(smooth, str(tmp_path / "smooth.mp4"), 12.0))]
    manifest = tmp_path / "webvid.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["videoid", "contentUrl", "name"])
        writer.writerows([(vid, url, "clip") for vid, url in rows])
    out = str(tmp_path / "out")
    sets = ["window.num_frames=24", "window.width=128", "window.height=96", "trajectories.grid_size=8",
            "cuts.policy=skip"]
    assert main(["--manifest", str(manifest), "--output", out, *[x for s in sets for x in ("--set", s)]]) == 0
    table = pq.read_table(glob.glob(os.path.join(out, "shards", "*.parquet")),
                          columns=["videoid", "status", "error"]).to_pylist()
    by_id = {r["videoid"]: r for r in table}
    assert by_id["1"]["status"] == "skipped" and f"frame {CUT_AT}" in by_id["1"]["error"]
    assert by_id["2"]["status"] == "ok"
