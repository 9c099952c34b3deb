"""End to end: ReVideo edits the sample inside the Ray pipeline (decode -> trajectories -> edit -> encode)
with tiny SVD + ReVideo models, writing MP4s and previews, and clear errors for rows missing a field."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml

from jobs import edit_videos
from pipeline import media
from tests.revideo_fixtures import TINY_REVIDEO, save_tiny_revideo, save_tiny_svd

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_production_yaml_validates():
    from pipeline.config import from_dict, load_config
    from stages.edit.revideo import ReVideoConfig
    from stages.trajectories import TrajectoryConfig

    path = os.path.join(ROOT, "jobs", "configs", "revideo.yaml")
    config = load_config(edit_videos.EditJobConfig, path)
    rv = edit_videos.method_configs(config, path)["revideo"]
    assert isinstance(rv, ReVideoConfig) and rv.dtype == "float16" and rv.resources.num_gpus == 1
    assert (rv.max_area, rv.num_inference_steps, rv.seed, rv.frames_needed) == (1024 * 1024, 25, 23, 14)
    assert rv.frames_needed <= config.decode.max_frames
    section = {k: v for k, v in config.stages["trajectories"].items() if k != "enabled"}
    assert from_dict(TrajectoryConfig, section).channel_order == "dy,dx"


def test_edit_job_runs_revideo_on_ray(ray_local, sample_dir, tmp_path):
    svd, ckpt = save_tiny_svd(tmp_path / "svd"), save_tiny_revideo(tmp_path / "revideo")
    video = pd.read_csv(os.path.join(sample_dir, "manifest.csv")).to_dict(orient="records")[0]  # 256 x 256
    move = json.dumps([[[100, 100], [160, 120]]])
    rows = [
        {**video, "video_id": "box", "edit_box": json.dumps([64, 64, 192, 192]), "trajectories": move},
        {**video, "video_id": "mask", "trajectories": move},
        {**video, "video_id": "track", "motion_source": "track"},
        {**video, "video_id": "no_motion", "mask_uri": "", "edit_box": json.dumps([64, 64, 192, 192])},
        {**video, "video_id": "outside", "edit_box": json.dumps([0, 0, 300, 10]), "trajectories": move},
    ]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([{**r, "method": ""} for r in rows]).to_csv(manifest, index=False)  # --method decides
    half = {"num_cpus": 0.5, "min_actors": 1, "max_actors": 1}
    config = {
        "run": {"method": "revideo", "max_failure_fraction": 1.0, "flush_rows": 1},
        "decode": {"max_frames": 6, "resources": half},
        "encode": {"preset": "ultrafast", "resources": half},
        "stages": {"trajectories": {"enabled": True, "channel_order": "dy,dx", "store_grid_tracks": True,
                                    "grid_size": 8, "previews": False, "resources": half}},
        "methods": {"revideo": {"model": svd, "checkpoint": ckpt, **TINY_REVIDEO, "resources": half}},
    }
    config_path = tmp_path / "revideo.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = str(tmp_path / "out")
    code = edit_videos.main(["--manifest", str(manifest), "--output", out, "--config", str(config_path),
                             "--method", "revideo"])
    assert code == 0
    result = pd.read_parquet(os.path.join(out, "manifest")).set_index("video_id")
    for name in ("box", "mask", "track"):
        row = result.loc[name]
        assert row.status == "ok", (name, row.error)
        frames, _, _ = media.decode(row.output_uri)
        assert frames.shape == (4, 32, 32, 3)
        outputs = json.loads(row.outputs)
        assert os.path.getsize(outputs["revideo_overlay"]) > 0 and os.path.getsize(outputs["c_mot_preview"]) > 0
    assert (result.loc["no_motion", "error_stage"], result.loc["no_motion", "error"].split(" (")[0]) == (
        "edit:revideo", "RowFieldError: method 'revideo' needs row field 'trajectories'")
    assert result.loc["outside", "error"].startswith(
        "RowFieldError: edit_box[0] [0, 0, 300, 10] is outside the 256x256 frame")
