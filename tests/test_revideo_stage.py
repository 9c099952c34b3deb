"""The ``revideo`` editing stage on tiny SVD + ReVideo models loaded through from_pretrained: rows with
boxes and trajectories, tracks from the trajectory stage, an edited first frame, the sgm conditioning
ids, determinism, memory options, preflight, and one clear error per bad field."""

from __future__ import annotations

import dataclasses
import json
import os

import cv2
import numpy as np
import pytest
import torch

from pipeline.config import ConfigError
from pipeline.stage import RunContext, run_stage
from stages.edit import get_method
from stages.edit.revideo import ReVideoConfig, ReVideoStage
from tests.revideo_fixtures import TINY_REVIDEO, one_thread, save_tiny_revideo, save_tiny_svd  # noqa: F401 - autouse

BOX = [8, 8, 32, 32]  # source pixels of the 40 x 40 video
MOVE = [[[12, 12], [24, 20]], [[20, 28], [20, 16]]]  # two points, start -> end


def _video(frames: int = 5, size: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([np.stack([(xx * 6 + t * 9) % 256, yy * 6, np.full_like(xx, 100)], -1)
                     for t in range(frames)]).astype(np.uint8)


def _row(**extra) -> dict:
    row = {"job_id": "job-1", "video_id": "vid/1", "method": "revideo", "status": "pending", "frames": _video(),
           "fps": 12.0, "edit_box": json.dumps(BOX), "trajectories": json.dumps(MOVE)}
    row.update(extra)
    return row


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("revideo-models")
    return save_tiny_svd(root / "svd"), save_tiny_revideo(root / "revideo")


@pytest.fixture(scope="module")
def stage(models, tmp_path_factory) -> ReVideoStage:
    out = str(tmp_path_factory.mktemp("out"))
    config = ReVideoConfig(model=models[0], checkpoint=models[1], **TINY_REVIDEO)
    s = ReVideoStage(config, RunContext(output_url=out, cache_url=os.path.join(out, "cache")))
    s.preflight()
    s.setup()
    yield s
    s.close()


def test_registered_and_release_defaults():
    assert get_method("revideo") is ReVideoStage
    c = ReVideoConfig()
    assert (c.model, c.num_frames, c.width, c.height, c.seed) == ("stabilityai/stable-video-diffusion-img2vid", 14,
                                                                 512, 320, 23)
    assert (c.num_inference_steps, c.min_guidance_scale, c.guidance_scale) == (25, 1.0, 4.0)
    assert (c.fps_id, c.motion_bucket_id, c.cond_aug) == (None, 127, 0.02)
    assert (c.sigma_min, c.sigma_max, c.rho, c.kernel_size, c.kernel_sigma) == (0.002, 700.0, 7.0, 51, 10.0)
    assert dataclasses.replace(c, max_area=1024 * 1024).clip_size(720, 1280) == (1344, 768)
    with pytest.raises(ConfigError, match="multiples of size_multiple=64"):
        ReVideoConfig(width=520)


def test_preflight_names_the_missing_model_folder(models, tmp_path):
    context = RunContext(output_url=str(tmp_path), cache_url=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="unet: no source configured: set 'checkpoint'"):
        ReVideoStage(ReVideoConfig(model=models[0]), context).preflight()
    with pytest.raises(ConfigError, match="unet: local model path .* does not exist"):
        ReVideoStage(ReVideoConfig(model=models[0], checkpoint=str(tmp_path / "nope")), context).preflight()
    with pytest.raises(ConfigError, match="controlnet: .* is not a diffusers folder"):
        ReVideoStage(ReVideoConfig(model=models[0], checkpoint=models[1], controlnet=str(tmp_path)),
                     context).preflight()


def test_row_edit_is_deterministic_with_previews_and_sgm_ids(stage):
    seen = []
    hook = stage.models["unet"].add_time_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].tolist()))
    try:
        out = run_stage(stage, _row())
    finally:
        hook.remove()
    assert out["status"] == "pending", out.get("error")
    edited = out["edited_frames"]
    assert edited.shape == (4, 32, 32, 3) and edited.dtype == np.uint8 and out["frames"].shape == (4, 32, 32, 3)
    assert seen and all(np.allclose(ids, [10, 127, 0.02] * 2) for ids in seen)  # uncond + cond, fps_id unchanged
    for name in ("revideo_overlay", "c_mot_preview"):
        assert os.path.getsize(out["outputs"][name]) > 0
    assert np.array_equal(run_stage(stage, _row())["edited_frames"], edited)
    assert not np.array_equal(run_stage(stage, _row(params={"seed": 5}))["edited_frames"], edited)
    moved = run_stage(stage, _row(trajectories=json.dumps([[[12, 12], [12, 30]]])))["edited_frames"]
    assert not np.array_equal(moved, edited)  # the motion reaches the output


def test_two_boxes_use_fps_id_6_and_cfg_batch_off_gives_the_same_video(stage):
    seen = []
    hook = stage.models["unet"].add_time_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].tolist()))
    try:
        row = _row(edit_box=json.dumps([[0, 0, 16, 16], [20, 20, 40, 40]]))
        batched = run_stage(stage, row)
        single = run_stage(stage, {**row, "params": {"cfg_batch": False}})
    finally:
        hook.remove()
    assert batched["status"] == single["status"] == "pending", (batched.get("error"), single.get("error"))
    assert all(ids[0] == 6 for ids in seen)
    assert np.abs(batched["edited_frames"].astype(int) - single["edited_frames"].astype(int)).max() <= 1


def test_edited_first_frame_and_tracks_from_the_trajectory_stage(stage, tmp_path):
    base = run_stage(stage, _row())["edited_frames"]
    ref = _video(1)[0].copy()
    ref[8:32, 8:32] = (250, 30, 30)
    path = tmp_path / "edited.png"
    cv2.imwrite(str(path), cv2.cvtColor(ref, cv2.COLOR_RGB2BGR))
    with_ref = run_stage(stage, _row(edited_first_frame_uri=str(path)))
    assert with_ref["status"] == "pending", with_ref.get("error")
    assert not np.array_equal(with_ref["edited_frames"], base)
    xs, ys = np.meshgrid(np.arange(4, 40, 8), np.arange(4, 40, 8))
    start = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32)  # 25 points, 9 inside the box
    tracks = np.stack([start + [2.0 * t, 0.5 * t * (i % 3)] for t in range(5) for i in [0]])
    tracks = tracks + np.arange(25)[None, :, None] * 0.01 * np.arange(5)[:, None, None]  # unequal lengths
    row = _row(motion_source="track", tracks=tracks.astype(np.float32), visibility=np.ones((5, 25), bool))
    del row["trajectories"]
    tracked = run_stage(stage, row)
    assert tracked["status"] == "pending", tracked.get("error")
    assert tracked["edited_frames"].shape == (4, 32, 32, 3)


@pytest.mark.parametrize("change, error", [
    ({"edit_box": None}, "RowFieldError: method 'revideo' needs row field 'edit_box'"),
    ({"trajectories": " "}, "RowFieldError: method 'revideo' needs row field 'trajectories'"),
    ({"edit_box": "[1, 2, 3"}, "RowFieldError: edit_box is not valid JSON"),
    ({"edit_box": "[[0, 0, 50, 20]]"}, "RowFieldError: edit_box[0] [0, 0, 50, 20] is outside the 40x40 frame"),
    ({"edit_box": "[10, 10, 5, 20]"}, "RowFieldError: edit_box[0] [10, 10, 5, 20] is empty"),
    ({"edit_box": "[0, 0, 6, 6]"}, "RowFieldError: edit_box[0] is 4x4 px in the 32x32 clip; the model needs at "
                                   "least 8x8"),
    ({"trajectories": "[[[1, 2], [3, 4], [5, 6]]]"}, "RowFieldError: trajectories[0] must be 4 [x, y] positions"),
    ({"trajectories": "[[[1, 2], [3, 4]], [[1, 2], [3, 4], [5, 6], [7, 8]]]"},
     "RowFieldError: trajectories: every point needs the same number of positions"),
    ({"trajectories": "[[[41, 2], [3, 4]]]"}, "RowFieldError: trajectories[0] starts at (41, 2), outside"),
    ({"motion_source": "flow"}, "RowFieldError: motion_source must be one of"),
    ({"motion_source": "track"}, "RowFieldError: motion_source 'track' needs the trajectory stage's tracks"),
    ({"edited_first_frame_uri": "/nonexistent/ref.png"}, "RowFieldError: edited_first_frame_uri '/nonexistent/ref.png'"
                                                         " cannot be read"),
    ({"mask_uri": "/nonexistent/mask.png", "edit_box": None}, "RowFieldError: mask_uri '/nonexistent/mask.png'"),
    ({"frames": _video(3)}, "VideoTooShortError: video has 3 frames; revideo needs 4"),
    ({"params": {"checkpoint": "/elsewhere"}}, "RowFieldError: params may not override 'checkpoint'"),
])
def test_bad_rows_are_errors_that_name_the_field(stage, change, error):
    out = run_stage(stage, _row(**change))
    assert out["status"] == "error" and out["error_stage"] == "edit:revideo"
    assert out["error"].startswith(error), out["error"]
    assert "edited_frames" not in out


def test_mask_uri_gives_the_box_and_tracks_outside_it_are_an_error(stage, tmp_path):
    mask = np.zeros((20, 20), np.uint8)  # half the video's resolution: the box scales with it
    mask[4:16, 4:16] = 255
    path = tmp_path / "mask.png"
    cv2.imwrite(str(path), mask)
    out = run_stage(stage, _row(edit_box=None, mask_uri=str(path)))
    assert out["status"] == "pending", out.get("error")
    far = np.zeros((5, 1, 2), np.float32)  # one tracked point, at the corner, outside the box
    row = _row(motion_source="track", tracks=far, visibility=np.ones((5, 1), bool))
    bad = run_stage(stage, row)
    assert bad["error"].startswith("RowFieldError: motion_source 'track': no tracked point starts inside edit_box")



def test_converted_folder_loads_from_an_fsspec_url(models, tmp_path):
    import fsspec

    from stages.edit.diffusion.loading import check_sources, load_components
    from stages.edit.revideo.config import COMPONENTS

    fs = fsspec.filesystem("memory")
    fs.put(models[1], "/revideo-ckpt", recursive=True)
    config = ReVideoConfig(model=models[0], checkpoint="memory://revideo-ckpt")
    check_sources(config, COMPONENTS)
    loaded = load_components(config, {k: COMPONENTS[k] for k in ("unet", "controlnet")})
    assert type(loaded["controlnet"]).__name__ == "ReVideoControlModel" and loaded["unet"].config.in_channels == 8
    with pytest.raises(ConfigError, match="unet: 'memory://nothing-here/unet' is not a diffusers folder"):
        check_sources(ReVideoConfig(model=models[0], checkpoint="memory://nothing-here"), COMPONENTS)


def test_float16_models_give_the_float32_video_up_to_rounding(stage):
    half = ReVideoStage(dataclasses.replace(stage.config, dtype="float16"), stage.context)
    half.setup()
    try:
        assert next(half.models["controlnet"].parameters()).dtype == torch.float16
        vae = half.models["vae"]  # stays float32 (vae_float32), loaded without a round trip through fp16
        assert vae.dtype == torch.float32
        assert all(torch.equal(a, b) for a, b in zip(vae.parameters(), stage.models["vae"].parameters()))
        out = run_stage(half, _row())
    finally:
        half.close()
    assert out["status"] == "pending", out.get("error")
    diff = np.abs(out["edited_frames"].astype(int) - run_stage(stage, _row())["edited_frames"].astype(int))
    assert diff.mean() < 1.0 and diff.max() < 16, (diff.mean(), diff.max())
