"""End to end: ``jobs.edit_videos --method stablevideo`` on the sample inside the Ray pipeline
(decode -> atlas -> edit -> encode) with tiny models, and the bad rows: no prompt, keyframes outside
the clip, a clip beyond the atlas stage's frame limit."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml

from jobs import edit_videos
from pipeline import media
from tests.stablevideo_fixtures import TINY_STABLEVIDEO, save_tiny_stablevideo
from tests.test_atlas import TEST_ATLAS

pytestmark = pytest.mark.slow


def test_edit_job_runs_stablevideo_on_ray(ray_local, sample_dir, tmp_path):
    models = save_tiny_stablevideo(tmp_path / "models")
    video = pd.read_csv(os.path.join(sample_dir, "manifest.csv")).to_dict(orient="records")[0]
    rows = [
        {**video, "video_id": "good", "prompt": "a red ball", "bg_prompt": "a snowy field", "keyframes": ""},
        {**video, "video_id": "no_prompt", "prompt": "", "bg_prompt": "", "keyframes": ""},
        {**video, "video_id": "outside", "prompt": "a red ball", "bg_prompt": "", "keyframes": "[0, 40]"},
        {**video, "video_id": "long", "prompt": "a red ball", "bg_prompt": "", "keyframes": "",
         "params": json.dumps({"decode.max_frames": 12})},
    ]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([{**r, "method": ""} for r in rows]).to_csv(manifest, index=False)  # --method decides
    half = {"num_cpus": 0.5, "min_actors": 1, "max_actors": 1}
    config = {
        "run": {"method": "stablevideo", "max_failure_fraction": 1.0, "flush_rows": 1},
        "decode": {"max_frames": 8, "stride": 3, "width": 64, "height": 64, "resources": half},
        "encode": {"preset": "ultrafast", "resources": half},
        "stages": {"atlas": {**TEST_ATLAS, "iterations": 300, "previews": False, "max_frames": 8,
                             "long_clips": "refuse", "resources": half}},
        "methods": {"stablevideo": {**models, **TINY_STABLEVIDEO, "resources": half}},
    }
    config_path = tmp_path / "stablevideo.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = str(tmp_path / "out")
    code = edit_videos.main(["--manifest", str(manifest), "--output", out, "--config", str(config_path),
                             "--method", "stablevideo"])
    assert code == 0
    result = pd.read_parquet(os.path.join(out, "manifest")).set_index("video_id")
    good = result.loc["good"]
    assert good.status == "ok", good.error
    frames, _, _ = media.decode(good.output_uri)
    assert frames.shape == (8, 64, 64, 3)
    outputs = json.loads(good.outputs)
    for name in ("edited_fg_atlas", "edited_bg_atlas", "atlas_fg_atlas"):
        assert os.path.getsize(outputs[name]) > 0, name
    assert len([k for k in outputs if k.startswith("keyframe_")]) == 3
    assert os.path.getsize(good.preview_uri) > 0  # before | after
    assert (result.loc["no_prompt", "error_stage"], result.loc["no_prompt", "error"]) == (
        "edit:stablevideo", "RowFieldError: method 'stablevideo' needs row field 'prompt' (the foreground edit)")
    assert (result.loc["outside", "error_stage"], result.loc["outside", "error"]) == (
        "edit:stablevideo", "RowFieldError: keyframes: frame 40 is outside the clip's 8 frames (0..7)")
    assert "atlas" not in json.loads(result.loc["outside", "stage_seconds"])  # refused before any fit
    assert result.loc["long", "error_stage"] == "atlas"
    assert result.loc["long", "error"].startswith("AtlasLimitError: video has 12 frames, more than atlas.max_frames=8")
