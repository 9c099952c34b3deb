"""End to end: DreamMotion edits the sample inside the Ray pipeline (decode -> edit -> encode) with a tiny
text-to-video stack, masked by an npz or on the whole frame, and each bad-mask row is a clear error."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import yaml

from jobs import edit_videos
from pipeline import media
from tests.dreammotion_fixtures import TINY_DREAMMOTION, save_tiny_zeroscope

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_production_yaml_validates():
    from stages.edit.dreammotion import DreamMotionConfig

    path = os.path.join(ROOT, "jobs", "configs", "dreammotion.yaml")
    config = edit_videos.load_config(edit_videos.EditJobConfig, path)
    dm = edit_videos.method_configs(config, path)["dreammotion"]
    assert isinstance(dm, DreamMotionConfig) and dm.resources.num_gpus == 1
    assert (dm.model, dm.num_frames, dm.width, dm.height) == ("cerspense/zeroscope_v2_576w", 16, 576, 320)
    assert (dm.iterations, dm.learning_rate, dm.loss_scale, dm.guidance_scale) == (200, 0.1, 2000.0, 7.5)
    assert dm.key_layers == ("up_blocks.2.attentions",) and dm.frames_needed <= config.decode.max_frames


def _npz(path, masks) -> str:
    np.savez(path, masks=masks)
    return str(path)


def test_edit_job_runs_dreammotion_on_ray(ray_local, sample_dir, tmp_path):
    model = save_tiny_zeroscope(tmp_path / "t2v")
    video = pd.read_csv(os.path.join(sample_dir, "manifest.csv")).to_dict(orient="records")[0]
    frames, _, _ = media.decode(video["video_uri"], media.DecodeOptions(max_frames=4))
    t, h, w = frames.shape[:3]
    good = np.zeros((t, h // 4, w // 4), bool)  # the same aspect at a quarter of the size
    good[:, h // 16:h // 8, w // 16:w // 8] = True
    prompts = {"prompt": "a golden star", "source_prompt": "an orange disc"}
    rows = [
        {**video, **prompts, "video_id": "masked", "masks_uri": _npz(tmp_path / "good.npz", good)},
        {**video, **prompts, "video_id": "whole_frame"},
        {**video, **prompts, "video_id": "few_masks", "masks_uri": _npz(tmp_path / "few.npz", good[:2])},
        {**video, **prompts, "video_id": "wrong_size",
         "masks_uri": _npz(tmp_path / "wide.npz", np.ones((t, h // 4, w // 2), bool))},
        {**video, **prompts, "video_id": "missing_masks", "masks_uri": str(tmp_path / "absent.npz")},
        {**video, "prompt": "a golden star", "source_prompt": "", "video_id": "no_source_prompt"},
    ]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([{**r, "method": ""} for r in rows]).to_csv(manifest, index=False)  # --method decides
    half = {"num_cpus": 0.5, "min_actors": 1, "max_actors": 1}
    config = {
        "run": {"method": "dreammotion", "max_failure_fraction": 1.0, "flush_rows": 1},
        "decode": {"max_frames": 4, "resources": half},
        "encode": {"preset": "ultrafast", "resources": half},
        "stages": {"atlas": {"enabled": False, "resources": half}},  # pulled in for mask_source: atlas rows only
        "methods": {"dreammotion": {"model": str(model), **TINY_DREAMMOTION, "resources": half}},
    }
    config_path = tmp_path / "dreammotion.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = str(tmp_path / "out")
    code = edit_videos.main(["--manifest", str(manifest), "--output", out, "--config", str(config_path),
                             "--method", "dreammotion"])
    assert code == 0
    result = pd.read_parquet(os.path.join(out, "manifest")).set_index("video_id")
    for name in ("masked", "whole_frame"):
        row = result.loc[name]
        assert row.status == "ok", (name, row.error)
        edited, _, _ = media.decode(row.output_uri)
        assert edited.shape == (3, 32, 32, 3)
    errors = {name: (result.loc[name, "error_stage"], result.loc[name, "error"])
              for name in ("few_masks", "wrong_size", "missing_masks", "no_source_prompt")}
    assert all(stage == "edit:dreammotion" for stage, _ in errors.values()), errors
    assert errors["few_masks"][1].startswith("RowFieldError: masks_uri ") and \
        f"has 2 frames, the decoded video {t}" in errors["few_masks"][1]
    assert f"but the frames are {w}x{h} (aspect ratios differ)" in errors["wrong_size"][1]
    assert errors["missing_masks"][1].endswith("absent.npz' not found")
    assert errors["no_source_prompt"][1] == "RowFieldError: method 'dreammotion' needs row field 'source_prompt'"
