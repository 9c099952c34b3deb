"""StableVideo's pure parts: keyframes and crops, scatter/sample through UVs, the covered median, the
aggregation net, the depth hint and SDEdit's schedule. No models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, from_dict
from stages.edit.base import RowFieldError
from stages.edit.stablevideo.aggregate import KeyframeTarget, fit_aggregation_net
from stages.edit.stablevideo.atlas_ops import covered_median, sample_atlas, scatter
from stages.edit.stablevideo.background import depth_hint
from stages.edit.stablevideo.config import StableVideoConfig
from stages.edit.stablevideo.keyframes import (
    NoForegroundError,
    canvas_size,
    crop_box,
    default_keyframes,
    parse_keyframes,
)
from stages.edit.stablevideo.sampling import sdedit_timesteps
from tests.diffusion_fixtures import tiny_scheduler

R = 128


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(1.0 / mse)


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """float32 [h, w, 3] in [0, 1]: random colours at 1/6 resolution, upsampled (texture the UVs can carry)."""
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, h // 6), max(2, w // 6), 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def affine_tex(h: int, w: int, scale: float, angle: float, offset: tuple[float, float]) -> np.ndarray:
    """[h, w, 2] texture coordinates of a rotated, scaled crop placed at ``offset`` texels."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    u = offset[0] + scale * (c * xs - s * ys)
    v = offset[1] + scale * (s * xs + c * ys)
    return (np.stack([u, v], -1) + 0.5) / R


def ellipse(h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return ((xs - w / 2) / (0.45 * w)) ** 2 + ((ys - h / 2) / (0.45 * h)) ** 2 <= 1


@pytest.mark.parametrize("scale", [0.8, 1.6])
def test_scatter_then_sample_through_the_same_uvs_reproduces_the_keyframe(scale):
    h, w = 40, 36
    image, tex, keep = smooth_image(h, w), affine_tex(h, w, scale, 0.3, (40.0, 20.0)), ellipse(h, w)
    atlas, covered = scatter(image, tex, keep, R)
    assert covered.any() and not covered.all()
    back = sample_atlas(atlas, tex)
    inner = cv2.erode(keep.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # the rim's footprint leaves the hull
    assert psnr(back[inner], image[inner]) > 30.0
    # texels far from every kept pixel stay empty: the corner of the atlas, and the crop's own cut-off corners
    assert not covered[:10, :10].any() and np.all(atlas[~covered] == 0)


def test_scatter_leaves_concave_gaps_uncovered():
    h, w = 40, 40
    keep = np.zeros((h, w), bool)
    keep[:, :8] = keep[:, -8:] = keep[-8:, :] = True  # a U shape: its hull spans the empty middle
    tex = affine_tex(h, w, 1.0, 0.0, (20.0, 20.0))
    _, covered = scatter(np.ones((h, w, 3), np.float32), tex, keep, R)
    assert covered[20 + 5, 20 + 4] and not covered[20 + 10, 20 + 20]


def test_median_of_identical_atlases_is_that_atlas_and_uncovered_texels_do_not_vote():
    rng = np.random.default_rng(0)
    atlas = rng.random((16, 16, 3)).astype(np.float32)
    cover = np.zeros((16, 16), bool)
    cover[2:12, 3:14] = True
    med, any_cover = covered_median(np.stack([atlas] * 3), np.stack([cover] * 3))
    assert np.array_equal(med[cover], atlas[cover]) and np.array_equal(any_cover, cover)
    assert np.all(med[~cover] == 0)
    # texel covered by keyframe 0 only: its value, not the median of (value, 0, 0) as the release
    only0 = np.zeros((3, 16, 16), bool)
    only0[0, 5, 5] = True
    stack = np.zeros((3, 16, 16, 3), np.float32)
    stack[0, 5, 5] = [0.2, 0.5, 0.9]
    med, _ = covered_median(stack, only0)
    assert np.allclose(med[5, 5], [0.2, 0.5, 0.9])
    assert np.allclose(np.median(stack[:, 5, 5], axis=0), 0.0)  # what counting the zeros would give
    # two votes: their mean; three: the middle one
    two = np.zeros((3, 16, 16), bool)
    two[:2, 1, 1] = True
    stack[:2, 1, 1] = [[0.2, 0.2, 0.2], [0.6, 0.6, 0.6]]
    stack[2, 1, 1] = 0.9  # not covered: ignored
    assert np.allclose(covered_median(stack, two)[0][1, 1], 0.4)


def test_aggregation_net_loss_falls_in_20_steps():
    truth = smooth_image(R, R, seed=1)
    rng = np.random.default_rng(2)
    noisy = np.clip(truth + rng.normal(0, 0.08, truth.shape), 0, 1).astype(np.float32)
    targets = []
    for off, angle in [((30.0, 30.0), 0.1), ((40.0, 35.0), -0.2)]:
        tex = affine_tex(40, 40, 1.0, angle, off)
        targets.append(KeyframeTarget(sample_atlas(truth, tex), tex, ellipse(40, 40)))
    refined, losses = fit_aggregation_net(noisy, targets, (20, 20, 90, 90), 20, 1e-3, 0.9, torch.device("cpu"))
    assert len(losses) == 20 and losses[-1] < 0.9 * losses[0]
    assert np.array_equal(refined[:20], noisy[:20])  # outside the box: unchanged
    assert refined.shape == noisy.shape and refined.min() >= 0 and refined.max() <= 1


def test_keyframes_field_parsing_and_errors():
    assert parse_keyframes(None, 10) is None and parse_keyframes("  ", 10) is None
    assert parse_keyframes("[2, 5, 9]", 10) == [2, 5, 9] and parse_keyframes("3, 1", 10) == [3, 1]
    assert parse_keyframes([0, 4.0], 10) == [0, 4]
    with pytest.raises(RowFieldError, match=r"keyframes: frame 12 is outside the clip's 10 frames"):
        parse_keyframes("[1, 12]", 10)
    with pytest.raises(RowFieldError, match="keyframes: frame -1"):
        parse_keyframes([-1], 10)
    with pytest.raises(RowFieldError, match="not a JSON list"):
        parse_keyframes("[1, 2", 10)
    with pytest.raises(RowFieldError, match="integer"):
        parse_keyframes("[1.5]", 10)
    with pytest.raises(RowFieldError, match="repeat"):
        parse_keyframes("[3, 3]", 10)


def test_default_keyframes_spread_over_the_clip_favouring_large_foreground():
    alpha = np.zeros((9, 20, 20), np.float32)
    for t, size in enumerate([2, 6, 3, 0, 0, 0, 4, 9, 1]):
        alpha[t, :size, :size] = 1.0
    assert default_keyframes(alpha, 3, 0.99) == [1, 7]  # the middle third has no foreground
    assert default_keyframes(alpha, 1, 0.99) == [7]
    with pytest.raises(NoForegroundError, match="no foreground"):
        default_keyframes(np.full((4, 8, 8), 0.5, np.float32), 3, 0.99)


def test_crop_box_border_minimum_size_and_frame_edges():
    alpha = np.zeros((100, 200), np.float32)
    alpha[40:50, 60:70] = 1.0
    assert crop_box(alpha, 0.99, 5, 1) == (35, 55, 55, 75)
    y0, x0, y1, x1 = crop_box(alpha, 0.99, 5, 40)
    assert (y1 - y0, x1 - x0) == (40, 40) and y0 == 35 and x0 == 55  # grown towards the far side
    alpha[:] = 0
    alpha[95:, 190:] = 1.0  # at the corner: grown backwards, clipped to the frame
    y0, x0, y1, x1 = crop_box(alpha, 0.99, 30, 129)
    assert (y1, x1) == (100, 200) and y0 == 0 and x1 - x0 == 129
    with pytest.raises(NoForegroundError):
        crop_box(np.zeros((10, 10), np.float32), 0.99, 5, 10)


def test_canvas_size_is_the_releases_resize_image_rule():
    assert canvas_size(432, 768, 512, 64) == (512, 896)  # 512 x 910.2 -> 896
    assert canvas_size(300, 200, 512, 64) == (768, 512)
    assert canvas_size(10, 10, 32, 32) == (32, 32)


def test_depth_hint_is_normalised_quantised_and_three_channel():
    inv = np.linspace(3.0, 7.0, 20 * 30, dtype=np.float32).reshape(20, 30)
    hint = depth_hint(inv, 40, 60)
    assert hint.shape == (40, 60, 3) and hint.dtype == np.float32
    assert hint.min() == 0.0 and hint.max() == 1.0 and np.array_equal(hint[..., 0], hint[..., 2])
    assert np.allclose(hint * 255, np.rint(hint * 255))  # 8-bit steps, as the release's annotator
    assert not depth_hint(np.ones((5, 5), np.float32), 8, 8).any()


def test_sdedit_schedule_follows_diffusers_img2img():
    scheduler = tiny_scheduler()
    steps, gap = sdedit_timesteps(scheduler, 20, 0.9)
    assert (steps[0], steps[-1], len(steps), gap) == (851, 1, 18, 50)
    assert sdedit_timesteps(scheduler, 20, 0.0)[0] == [] and len(sdedit_timesteps(scheduler, 20, 1.0)[0]) == 20


def test_config_defaults_are_the_releases_and_bad_values_are_refused():
    c = StableVideoConfig()
    assert (c.num_inference_steps, c.guidance_scale, c.strength, c.canny_low, c.canny_high) == (20, 9.0, 0.9, 100, 200)
    assert (c.image_resolution, c.alpha_threshold, c.crop_border, c.crop_min_size) == (512, 0.99, 30, 129)
    assert (c.aggregate, c.net_iterations, c.net_lr, c.net_momentum) == ("median", 500, 1e-3, 0.9)
    assert c.n_prompt.startswith("longbody, lowres") and c.a_prompt == "best quality, extremely detailed"
    for bad in ({"strength": 1.5}, {"size_multiple": 12}, {"canny_low": 300}, {"aggregate": "mean"},
                {"unknown_key": 1}):
        with pytest.raises(ConfigError):
            from_dict(StableVideoConfig, bad)


def test_production_yaml_validates_with_the_releases_settings():
    import os

    from jobs import edit_videos
    from pipeline.config import load_config

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs", "configs",
                        "stablevideo.yaml")
    config = load_config(edit_videos.EditJobConfig, path)
    sv = edit_videos.method_configs(config, path)["stablevideo"]
    assert isinstance(sv, StableVideoConfig) and sv.dtype == "float16" and sv.resources.num_gpus == 1
    assert (sv.num_inference_steps, sv.guidance_scale, sv.strength) == (20, 9.0, 0.9)
    assert sv.n_prompt == StableVideoConfig().n_prompt
    assert (sv.controlnet_canny, sv.controlnet_depth, sv.depth_model) == (
        "lllyasviel/sd-controlnet-canny", "lllyasviel/sd-controlnet-depth", "Intel/dpt-hybrid-midas")
    specs = edit_videos.build_specs(config, {"stablevideo"}, {"stablevideo": sv}, path)
    assert [s.stage_cls.__name__ for s in specs] == ["DecodeStage", "AtlasStage", "StableVideoStage", "EncodeStage"]
    assert config.decode.max_frames == specs[1].config.max_frames == 70
    assert specs[1].config.long_clips == "refuse"  # one atlas per clip: no windows StableVideo would refuse
    # `vidflow models download` fetches every model the method loads, the DPT included
    from jobs.models import collect_models

    refs = {r.ref: r for r in collect_models("edit", config)}
    for ref in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "lllyasviel/sd-controlnet-canny",
                "lllyasviel/sd-controlnet-depth", "Intel/dpt-hybrid-midas"):
        assert refs[ref].kind == "hf", ref
    assert refs["Intel/dpt-hybrid-midas"].used_by == ("methods.stablevideo.depth_model",)
