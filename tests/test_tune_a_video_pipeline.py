"""End to end: Tune-A-Video edits a sample video inside the Ray pipeline (decode -> edit -> encode),
on the tiny SD stack, writing an MP4, the tuned weights, and clear errors for bad rows."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml

from jobs import edit_videos
from pipeline import media
from tests.diffusion_fixtures import save_tiny_sd

pytestmark = pytest.mark.slow


def test_edit_job_runs_tune_a_video_on_ray(ray_local, sample_dir, tmp_path):
    model = str(save_tiny_sd(tmp_path / "tiny-sd"))
    video = pd.read_csv(os.path.join(sample_dir, "manifest.csv")).to_dict(orient="records")[0]
    rows = [
        {**video, "video_id": "good", "method": "tune_a_video"},
        {**video, "video_id": "no_prompt", "method": "tune_a_video", "prompt": ""},
        {**video, "video_id": "short", "method": "tune_a_video", "params": json.dumps({"num_frames": 40})},
    ]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    half = {"num_cpus": 0.5, "min_actors": 1, "max_actors": 1}
    config = {
        "run": {"method": "tune_a_video", "max_failure_fraction": 1.0, "flush_rows": 1},
        "decode": {"max_frames": 8, "width": 48, "height": 48, "resize": "crop", "resources": half},
        "encode": {"preset": "ultrafast", "resources": half},
        "methods": {"tune_a_video": {"model": model, "width": 32, "height": 32, "num_frames": 3, "frame_stride": 2,
                                     "train_steps": 2, "num_inference_steps": 2, "gradient_checkpointing": False,
                                     "save_weights": True, "resources": half}},
    }
    config_path = tmp_path / "tav.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = str(tmp_path / "out")
    code = edit_videos.main(["--manifest", str(manifest), "--output", out, "--config", str(config_path)])
    assert code == 0
    result = pd.read_parquet(os.path.join(out, "manifest")).set_index("video_id")
    good = result.loc["good"]
    assert good.status == "ok", good.error
    frames, fps, _ = media.decode(good.output_uri)
    assert frames.shape == (3, 32, 32, 3) and fps == pytest.approx(video_fps(sample_dir) / 2, rel=0.05)
    weights = json.loads(good.outputs)["tuned_weights"]
    assert weights == os.path.join(out, "weights", "good", f"{good.job_id}.safetensors") and os.path.exists(weights)
    assert (result.loc["no_prompt", "error_stage"], result.loc["no_prompt", "error"]) == (
        "edit:tune_a_video", "RowFieldError: method 'tune_a_video' needs row field 'prompt'")
    assert result.loc["short", "error"].startswith("VideoTooShortError: video has 8 frames; tune_a_video needs 79")


def video_fps(sample_dir: str) -> float:
    uri = pd.read_csv(os.path.join(sample_dir, "manifest.csv")).video_uri[0]
    return media.probe(uri).fps
